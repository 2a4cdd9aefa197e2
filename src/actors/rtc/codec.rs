//! The two video codecs WebRTC ingest takes: H.264 (Cisco's openh264, built
//! from source by the `openh264` crate) and VP8 (Debian's libvpx,
//! [`super::vp8`]). Decoders for the server, encoders for the Rust client.

use openh264::decoder::Decoder as H264Decoder;
use openh264::encoder::{BitRate, Encoder as H264Encoder, EncoderConfig, FrameRate};
use openh264::formats::{YUVSlices, YUVSource};

use super::video::{CodecError, VideoCodec};
use super::vp8::{Vp8Decoder, Vp8Encoder};
use crate::config::DecodeLimits;
use crate::model::I420Picture;

/// One peer's decoder, created for the codec of its first frame (a peer
/// whose sender switches codec gets a new one).
pub enum VideoDecoder {
    H264(Box<H264Decoder>),
    Vp8(Vp8Decoder),
}

impl VideoDecoder {
    pub fn new(codec: VideoCodec) -> Result<VideoDecoder, CodecError> {
        Ok(match codec {
            VideoCodec::H264 => VideoDecoder::H264(Box::new(
                H264Decoder::new().map_err(|e| CodecError::H264(e.to_string()))?,
            )),
            VideoCodec::Vp8 => VideoDecoder::Vp8(Vp8Decoder::new()?),
        })
    }

    pub fn codec(&self) -> VideoCodec {
        match self {
            VideoDecoder::H264(_) => VideoCodec::H264,
            VideoDecoder::Vp8(_) => VideoCodec::Vp8,
        }
    }

    /// Decodes one depacketised frame (H.264: Annex B access unit, as str0m
    /// hands it out); the picture it completes, if any.
    pub fn decode(
        &mut self,
        data: &[u8],
        limits: &DecodeLimits,
    ) -> Result<Option<I420Picture>, CodecError> {
        match self {
            VideoDecoder::Vp8(d) => d.decode(data, limits),
            VideoDecoder::H264(d) => {
                // Coded sizes are whole macroblocks (1080 lines are coded as
                // 1088): 15 pixels of slack, the cropped picture is checked
                // exactly once decoded.
                if let Some((w, h)) = super::h264::declared_size(data)
                    && !limits.admits(w.saturating_sub(15), h.saturating_sub(15))
                {
                    return Err(CodecError::Picture(format!(
                        "H.264 stream of {w}x{h} is above the decode limits"
                    )));
                }
                let Some(yuv) = d
                    .decode(data)
                    .map_err(|e| CodecError::H264(e.to_string()))?
                else {
                    return Ok(None);
                };
                let (w, h) = yuv.dimensions();
                let (sy, su, sv) = yuv.strides();
                let (w, h) = (
                    u32::try_from(w).map_err(|_| CodecError::H264("width".into()))?,
                    u32::try_from(h).map_err(|_| CodecError::H264("height".into()))?,
                );
                I420Picture::from_strided(w, h, (yuv.y(), sy), (yuv.u(), su), (yuv.v(), sv), limits)
                    .map(Some)
                    .map_err(|e| CodecError::Picture(e.to_string()))
            }
        }
    }
}

/// A realtime encoder for the Rust client: what a browser's would send.
pub enum VideoEncoder {
    H264(Box<H264Encoder>),
    Vp8(Vp8Encoder),
}

impl VideoEncoder {
    /// An encoder for `width` x `height` pictures at about `bitrate_kbps`
    /// and `fps`.
    pub fn new(
        codec: VideoCodec,
        width: u32,
        height: u32,
        bitrate_kbps: u32,
        fps: u32,
    ) -> Result<VideoEncoder, CodecError> {
        Ok(match codec {
            VideoCodec::H264 => {
                let config = EncoderConfig::new()
                    .bitrate(BitRate::from_bps(bitrate_kbps.saturating_mul(1000)))
                    .max_frame_rate(FrameRate::from_hz(fps.max(1) as f32));
                let api = openh264::OpenH264API::from_source();
                VideoEncoder::H264(Box::new(
                    H264Encoder::with_api_config(api, config)
                        .map_err(|e| CodecError::H264(e.to_string()))?,
                ))
            }
            // A keyframe every 10 s, as Chromium sends without loss.
            VideoCodec::Vp8 => VideoEncoder::Vp8(Vp8Encoder::new(
                width,
                height,
                bitrate_kbps,
                fps.max(1) * 10,
            )?),
        })
    }

    /// Encodes one picture of `duration_90k` ticks; `keyframe` forces an
    /// intra frame (after a PLI). Empty when the encoder skipped the frame.
    pub fn encode(
        &mut self,
        picture: &I420Picture,
        duration_90k: u32,
        keyframe: bool,
    ) -> Result<Vec<u8>, CodecError> {
        match self {
            VideoEncoder::Vp8(e) => e.encode(picture, duration_90k, keyframe),
            VideoEncoder::H264(e) => {
                let (w, h) = (picture.width() as usize, picture.height() as usize);
                if w % 2 != 0 || h % 2 != 0 {
                    return Err(CodecError::H264("odd picture sides".into()));
                }
                let planes = picture.planes();
                let (y, rest) = planes.split_at(w * h);
                let (u, v) = rest.split_at(w / 2 * (h / 2));
                let yuv = YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2));
                if keyframe {
                    e.force_intra_frame();
                }
                e.encode(&yuv)
                    .map(|bits| bits.to_vec())
                    .map_err(|err| CodecError::H264(err.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photo() -> I420Picture {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/astronaut.png");
        let rgb = image::open(path).unwrap().to_rgb8();
        let rgb = image::imageops::resize(&rgb, 640, 480, image::imageops::FilterType::Triangle);
        I420Picture::from_rgb(&rgb)
    }

    /// Mean absolute difference of the luma planes.
    fn luma_error(a: &I420Picture, b: &I420Picture) -> f64 {
        let n = (a.width() * a.height()) as usize;
        let (pa, pb) = (&a.planes()[..n], &b.planes()[..n]);
        pa.iter()
            .zip(pb)
            .map(|(x, y)| f64::from(x.abs_diff(*y)))
            .sum::<f64>()
            / n as f64
    }

    #[test]
    fn both_codecs_round_trip_a_photo_through_their_decoders() {
        let picture = photo();
        let limits = DecodeLimits::default();
        for codec in [VideoCodec::H264, VideoCodec::Vp8] {
            let mut enc = VideoEncoder::new(codec, 640, 480, 1000, 15).unwrap();
            let mut dec = VideoDecoder::new(codec).unwrap();
            let mut decoded = None;
            for i in 0..5 {
                let frame = enc.encode(&picture, 6000, i == 0).unwrap();
                if frame.is_empty() {
                    continue;
                }
                decoded = dec.decode(&frame, &limits).unwrap().or(decoded);
            }
            let decoded = decoded.expect("a picture");
            assert_eq!((decoded.width(), decoded.height()), (640, 480));
            let err = luma_error(&picture, &decoded);
            // 1 Mbit/s at 640x480 keeps a still photo within a few levels.
            assert!(err < 4.0, "{codec:?}: luma off by {err:.2} on average");
        }
    }

    #[test]
    fn the_sps_reader_reads_the_size_openh264_encodes() {
        for (w, h) in [(640, 480), (320, 240), (910, 1136)] {
            let picture = I420Picture::from_rgb(&image::RgbImage::new(w, h));
            let mut enc = VideoEncoder::new(VideoCodec::H264, w, h, 500, 15).unwrap();
            let frame = enc.encode(&picture, 6000, true).unwrap();
            let (cw, ch) = super::super::h264::declared_size(&frame).expect("an SPS in a keyframe");
            // Coded in whole macroblocks: the picture, rounded up to 16.
            assert_eq!((cw, ch), (w.div_ceil(16) * 16, h.div_ceil(16) * 16));
        }
    }

    #[test]
    fn garbage_frames_are_errors_not_panics() {
        let limits = DecodeLimits::default();
        for codec in [VideoCodec::H264, VideoCodec::Vp8] {
            let mut dec = VideoDecoder::new(codec).unwrap();
            for data in [
                &[][..],
                &[0u8; 3],
                &[0xff; 64],
                &[0, 0, 0, 1, 0x65, 1, 2, 3],
            ] {
                let _ = dec.decode(data, &limits);
            }
        }
    }

    #[test]
    fn oversized_streams_are_refused_before_decoding() {
        let limits = DecodeLimits::default();
        // A VP8 keyframe header declaring 16000x16000.
        let mut vp8 = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
        vp8.extend_from_slice(&16000u16.to_le_bytes());
        vp8.extend_from_slice(&16000u16.to_le_bytes());
        vp8.extend_from_slice(&[0; 32]);
        assert_eq!(super::super::vp8::keyframe_size(&vp8), Some((16000, 16000)));
        let err = VideoDecoder::new(VideoCodec::Vp8)
            .unwrap()
            .decode(&vp8, &limits)
            .unwrap_err();
        assert!(matches!(err, CodecError::Picture(_)), "{err}");
        // An H.264 keyframe of 2560x1440: above the camera limits.
        let big = I420Picture::from_rgb(&image::RgbImage::new(2560, 1440));
        let frame = VideoEncoder::new(VideoCodec::H264, 2560, 1440, 500, 5)
            .unwrap()
            .encode(&big, 6000, true)
            .unwrap();
        let err = VideoDecoder::new(VideoCodec::H264)
            .unwrap()
            .decode(&frame, &limits)
            .unwrap_err();
        assert!(matches!(err, CodecError::Picture(_)), "{err}");
    }
}
