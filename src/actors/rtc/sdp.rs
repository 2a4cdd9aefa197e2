//! What an offer must carry before str0m negotiates it: a video section
//! with a codec this server decodes. A plain scan of the SDP lines, after
//! str0m has parsed the offer (which refuses malformed SDP).

use str0m::change::SdpOffer;

use super::{OpenError, VideoCodec};

/// The codecs of the offer's video sections, in the order offered (the
/// sender's preference), each once; encoding names this server does not
/// decode are left out.
pub fn offered_video_codecs(sdp: &str) -> Vec<VideoCodec> {
    let mut in_video = false;
    let mut out = Vec::new();
    for line in sdp.lines().map(str::trim) {
        if let Some(media) = line.strip_prefix("m=") {
            in_video = media.starts_with("video ");
        } else if in_video && let Some(map) = line.strip_prefix("a=rtpmap:") {
            // a=rtpmap:<pt> <encoding name>/<clock rate>[/<params>]
            let name = map
                .split_once(' ')
                .and_then(|(_, enc)| enc.split('/').next())
                .unwrap_or("");
            if let Some(codec) = VideoCodec::from_encoding_name(name)
                && !out.contains(&codec)
            {
                out.push(codec);
            }
        }
    }
    out
}

/// str0m's parse error, for the client: its explanation lines, without the
/// parser's position (a memory address, which must not leave the server),
/// bounded.
fn parse_error(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    let why: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("PointerOffset") && !l.contains("0x"))
        .collect();
    let mut why = why.join("; ");
    if why.is_empty() {
        why = "not an SDP offer".into();
    }
    why.chars().take(200).collect()
}

/// Parses `sdp` as an offer and checks it has video this server decodes;
/// the offer and its codecs in the order offered (the answer keeps it).
pub fn check_offer(sdp: &str) -> Result<(SdpOffer, Vec<VideoCodec>), OpenError> {
    let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| OpenError::BadOffer(parse_error(&e)))?;
    if !sdp.lines().any(|l| l.trim().starts_with("m=video ")) {
        return Err(OpenError::Unsupported(
            "the offer has no video track".into(),
        ));
    }
    let codecs = offered_video_codecs(sdp);
    if codecs.is_empty() {
        return Err(OpenError::Unsupported(
            "the offer's video has no codec this server decodes: offer H.264 or VP8".into(),
        ));
    }
    Ok((offer, codecs))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::actors::rtc::client::{ClientOptions, RtcClient};

    fn offer() -> String {
        let opts = ClientOptions {
            codec: VideoCodec::Vp8,
            bitrate_kbps: 500,
            fps: 10,
            data_channel: true,
            width: 64,
            height: 64,
        };
        RtcClient::offer("127.0.0.1".parse().unwrap(), opts)
            .unwrap()
            .1
    }

    #[test]
    fn codecs_come_in_the_order_offered() {
        let sdp = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96 97 102\r\na=rtpmap:96 VP8/90000\r\n\
                   a=rtpmap:97 rtx/90000\r\na=rtpmap:102 H264/90000\r\na=rtpmap:103 h264/90000\r\n";
        assert_eq!(
            offered_video_codecs(sdp),
            vec![VideoCodec::Vp8, VideoCodec::H264]
        );
    }

    #[test]
    fn garbage_and_codecless_offers_are_refused_with_their_reason() {
        match check_offer("v=0\r\nm=audio 9 x\r\n") {
            Err(OpenError::BadOffer(m)) => {
                assert!(!m.contains("0x") && !m.is_empty() && m.len() <= 200, "{m}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        let good = offer();
        check_offer(&good).unwrap();
        let vp9 = good.replace("VP8/90000", "VP9/90000");
        match check_offer(&vp9) {
            Err(OpenError::Unsupported(m)) => assert!(m.contains("H.264 or VP8"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        let no_video = good.replace("m=video", "m=audio");
        match check_offer(&no_video) {
            Err(OpenError::Unsupported(m)) => assert!(m.contains("no video"), "{m}"),
            Err(OpenError::BadOffer(_)) => {}
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
