//! The types every codec file shares: which codec, and how one fails.

/// A codec failure; the peer asks for a keyframe and goes on.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("H.264: {0}")]
    H264(String),
    #[error("VP8: {0}")]
    Vp8(String),
    #[error("decoded picture refused: {0}")]
    Picture(String),
}

/// A video codec as negotiated in SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    H264,
    Vp8,
}

impl VideoCodec {
    /// The `codec` label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::Vp8 => "vp8",
        }
    }

    /// The codec an SDP `rtpmap` encoding name stands for (`H264/90000`,
    /// `VP8/90000`), case-insensitive as SDP is.
    pub fn from_encoding_name(name: &str) -> Option<VideoCodec> {
        if name.eq_ignore_ascii_case("H264") {
            Some(VideoCodec::H264)
        } else if name.eq_ignore_ascii_case("VP8") {
            Some(VideoCodec::Vp8)
        } else {
            None
        }
    }
}
