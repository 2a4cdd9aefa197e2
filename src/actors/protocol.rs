//! The WebSocket wire protocol between a client and its session actor.
//!
//! # Client → server
//!
//! **Binary message = one frame**: a fixed 13-byte header followed by one JPEG.
//!
//! | offset | size | field        | meaning                                                  |
//! |--------|------|--------------|----------------------------------------------------------|
//! | 0      | 1    | `version`    | always [`FRAME_VERSION`] (`0xA1`); anything else is refused |
//! | 1      | 4    | `seq`        | `u32`, little endian: the client's frame number, echoed back |
//! | 5      | 8    | `capture_ts` | `f64`, little endian: capture time in ms (client clock), echoed back |
//! | 13     | …    | JPEG         | the frame, baseline or progressive JPEG (`FF D8 …`)       |
//!
//! **Text message = JSON control**, e.g.
//! `{"type":"config","fps":20,"parts":["pose","face","hands"],"people":3}`
//! (every field optional). `fps` must be in `1..=max_fps`; `parts` lists what
//! to compute; `people` (default 1) is the most people to find and track, in
//! `1..=max_people` (`session.max_people`). A value out of range is refused
//! with `bad_control` and changes nothing. `people` may change mid-stream.
//!
//! # Server → client (all text, JSON)
//!
//! - `{"type":"hello","session":"<tag: 12 hex digits, a hash of the cookie, not the cookie>","config":{"fps":20,"max_fps":30,"parts":[…],"people":1,"max_people":6,"max_message_bytes":…}}` once on connect;
//! - `{"type":"result","seq","capture_ts","timings":{"queue_ms","decode_ms","infer_ms","serialize_ms","total_ms"},
//!   "pose":[{x,y,z,visibility}…33],"face":[{x,y,z}…468],"left_hand":[…21],"right_hand":[…21]}`
//!   (an empty list for a part that is off or not found). With `people` above
//!   1 the result also carries `"people":[{"id":7,"pose":[…],"face":[…],"left_hand":[…],"right_hand":[…]}…]`,
//!   everyone found (at most `people`, possibly none), each with an id that
//!   stays with that person while the session tracks them and is never
//!   reused; the top-level parts are then the first person's. A session at
//!   `people` = 1 gets no `people` key: single-person results are unchanged;
//! - `{"type":"error","seq":<u32 or null>,"code":"bad_frame"|"bad_control"|"worker_failed"|"overloaded"|"expired"|"lost"|"unsupported"|"unavailable","message":"…"}`;
//! - `{"type":"stats","received","processed","dropped_stale","dropped_fps","dropped_overload","dropped_expired","errors"}`
//!   every `stats_interval_ms`.
//!
//! An oversized message closes the connection with code 1009 (message too big).
//!
//! Owns the client's wire format and its parsing; nothing here touches a
//! socket, the pool or the pipeline (the session actor does).

use serde::{Deserialize, Serialize};

use crate::metrics::{DropReason, Metrics};
use crate::model::Parts;
use crate::session_id::SessionTag;

/// First byte of every binary frame: protocol version 1.
pub const FRAME_VERSION: u8 = 0xA1;
/// Length of the fixed binary header.
pub const FRAME_HEADER_LEN: usize = 13;

/// The fixed header of a binary frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameHeader {
    /// Client's frame number, echoed in the result.
    pub seq: u32,
    /// Client's capture time in ms, echoed in the result.
    pub capture_ts: f64,
}

/// Why a binary message is not a frame. Sent to the client as `bad_frame`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("message shorter than the {FRAME_HEADER_LEN}-byte frame header ({0} bytes)")]
    ShortHeader(usize),
    #[error("unknown frame version byte 0x{0:02x} (expected 0xa1)")]
    Version(u8),
    #[error("capture_ts is not a finite number")]
    CaptureTs,
    #[error("frame header without an image")]
    NoImage,
    #[error("payload is not a JPEG (missing FF D8 start marker)")]
    NotJpeg,
}

impl FrameHeader {
    /// Encodes the header followed by `jpeg` into one binary message.
    pub fn encode(&self, jpeg: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAME_HEADER_LEN + jpeg.len());
        out.push(FRAME_VERSION);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.capture_ts.to_le_bytes());
        out.extend_from_slice(jpeg);
        out
    }
}

/// The `seq` of a binary message whose header got that far (version byte
/// and seq present), whether or not the rest is a valid frame: so that an
/// error can name the frame it is about.
pub fn frame_seq(msg: &[u8]) -> Option<u32> {
    match msg {
        [FRAME_VERSION, a, b, c, d, ..] => Some(u32::from_le_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Splits a binary message into its header and the JPEG bytes.
///
/// Only the cheap checks happen here (on the session's async thread); the JPEG
/// itself is decoded by an inference worker, off the executor.
pub fn parse_frame(msg: &[u8]) -> Result<(FrameHeader, &[u8]), FrameError> {
    if msg.len() < FRAME_HEADER_LEN {
        return Err(FrameError::ShortHeader(msg.len()));
    }
    if msg[0] != FRAME_VERSION {
        return Err(FrameError::Version(msg[0]));
    }
    // unwrap: the header is complete (checked above).
    let seq = frame_seq(msg).unwrap();
    // unwrap: the slice has the exact length of the array (checked above).
    let capture_ts = f64::from_le_bytes(msg[5..13].try_into().unwrap());
    if !capture_ts.is_finite() {
        return Err(FrameError::CaptureTs);
    }
    let jpeg = &msg[FRAME_HEADER_LEN..];
    if jpeg.is_empty() {
        return Err(FrameError::NoImage);
    }
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        return Err(FrameError::NotJpeg);
    }
    Ok((FrameHeader { seq, capture_ts }, jpeg))
}

/// A part of the Holistic result a client can ask for, by its wire name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PartName {
    Pose,
    Face,
    Hands,
}

/// `parts` on the WebSocket: a list of names (`["pose","hands"]`) on the
/// wire, the pipeline's [`Parts`] in memory. The one place the two meet
/// (serde adapters for the fields that carry parts).
mod part_names {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::PartName;
    use crate::model::Parts;

    const NAMED: [(PartName, fn(&Parts) -> bool); 3] = [
        (PartName::Pose, |p| p.pose),
        (PartName::Face, |p| p.face),
        (PartName::Hands, |p| p.hands),
    ];

    pub fn serialize<S: Serializer>(parts: &Parts, s: S) -> Result<S::Ok, S::Error> {
        let names: Vec<PartName> = NAMED
            .iter()
            .filter(|(_, on)| on(parts))
            .map(|(name, _)| *name)
            .collect();
        names.serialize(s)
    }

    pub fn deserialize_some<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Parts>, D::Error> {
        let names = Vec::<PartName>::deserialize(d)?;
        Ok(Some(Parts {
            pose: names.contains(&PartName::Pose),
            face: names.contains(&PartName::Face),
            hands: names.contains(&PartName::Hands),
        }))
    }
}

/// A text message from the client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlMessage {
    /// Changes the session's frame rate cap and/or the parts computed.
    Config {
        #[serde(default)]
        fps: Option<u32>,
        #[serde(default, deserialize_with = "part_names::deserialize_some")]
        parts: Option<Parts>,
        /// Most people to find (1: single-person Holistic).
        #[serde(default)]
        people: Option<usize>,
    },
}

/// Why a text message was refused. Sent to the client as `bad_control`.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control message is not valid JSON of a known type: {0}")]
    Json(#[from] serde_json::Error),
    #[error("fps must be between 1 and {max}, got {got}")]
    Fps { got: u32, max: u32 },
    #[error("people must be between 1 and {max}, got {got}")]
    People { got: usize, max: usize },
}

/// The session limits a control message is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlLimits {
    /// `session.max_fps`.
    pub max_fps: u32,
    /// `session.max_people`.
    pub max_people: usize,
}

/// Parses a control message and checks its values against the session limits.
/// A message with any value out of range is refused whole.
pub fn parse_control(text: &str, limits: ControlLimits) -> Result<ControlMessage, ControlError> {
    let msg: ControlMessage = serde_json::from_str(text)?;
    let ControlMessage::Config { fps, people, .. } = &msg;
    if let Some(fps) = *fps
        && (fps == 0 || fps > limits.max_fps)
    {
        return Err(ControlError::Fps {
            got: fps,
            max: limits.max_fps,
        });
    }
    if let Some(people) = *people
        && (people == 0 || people > limits.max_people)
    {
        return Err(ControlError::People {
            got: people,
            max: limits.max_people,
        });
    }
    Ok(msg)
}

/// Machine-readable code of an `error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The binary message is not a valid frame (header or JPEG).
    BadFrame,
    /// The text message is not a valid control message.
    BadControl,
    /// The worker processing the frame panicked, stalled or failed.
    WorkerFailed,
    /// The pool's queue was full and the frame was shed.
    Overloaded,
    /// The frame waited longer than its time to live in the pool's queue.
    Expired,
    /// The frame's job vanished (its worker was killed); should be rare.
    Lost,
    /// A WebSocket message kind the protocol does not use (e.g. continuation).
    Unsupported,
    /// The inference pool is shutting down.
    Unavailable,
}

impl ErrorCode {
    /// Every code, for exporters and tests that list them all.
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::BadFrame,
        ErrorCode::BadControl,
        ErrorCode::WorkerFailed,
        ErrorCode::Overloaded,
        ErrorCode::Expired,
        ErrorCode::Lost,
        ErrorCode::Unsupported,
        ErrorCode::Unavailable,
    ];

    /// The label used in `ws_errors_total{code=…}`.
    pub fn as_str(self) -> &'static str {
        // Exhaustive: a new code fails to compile here; add it to `ALL` too
        // (`all_lists_every_code_once_with_its_wire_name` checks the list).
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::BadControl => "bad_control",
            ErrorCode::WorkerFailed => "worker_failed",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Expired => "expired",
            ErrorCode::Lost => "lost",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// Per-stage times of one frame, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FrameTimings {
    /// From submission to the pool until a worker started it.
    pub queue_ms: f64,
    /// JPEG decode.
    pub decode_ms: f64,
    /// Holistic pipeline (all forward passes and pre/post-processing).
    pub infer_ms: f64,
    /// Serialising the landmarks to JSON.
    pub serialize_ms: f64,
    /// From the frame's arrival at the session until the result was ready.
    /// (Absent from a remote worker's timings, which cannot know it.)
    #[serde(default)]
    pub total_ms: f64,
}

/// A message from the server.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    Hello {
        /// The session's public tag (a hash prefix), never its cookie.
        session: SessionTag,
        config: SessionView,
    },
    Error {
        seq: Option<u32>,
        code: ErrorCode,
        message: &'a str,
    },
    Stats(SessionStats),
}

/// The session settings shown to the client in `hello`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub fps: u32,
    pub max_fps: u32,
    #[serde(serialize_with = "part_names::serialize")]
    pub parts: Parts,
    /// Most people found per frame (1 until the client asks for more).
    pub people: usize,
    /// The most `people` may be set to.
    pub max_people: usize,
    pub max_message_bytes: usize,
}

/// Counters of one session, sent as a `stats` message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionStats {
    pub received: u64,
    pub processed: u64,
    pub dropped_stale: u64,
    pub dropped_fps: u64,
    pub dropped_overload: u64,
    pub dropped_expired: u64,
    pub errors: u64,
}

impl SessionStats {
    /// Counts a dropped frame here and in `/metrics` (`drops_total`) at
    /// once, so the two never disagree. A lost frame counts among `errors`:
    /// the client saw an `error` message for it.
    pub fn count_drop(&mut self, reason: DropReason, metrics: &Metrics) {
        let field = match reason {
            DropReason::Stale => &mut self.dropped_stale,
            DropReason::Fps => &mut self.dropped_fps,
            DropReason::Overload => &mut self.dropped_overload,
            DropReason::Expired => &mut self.dropped_expired,
            DropReason::Lost => &mut self.errors,
        };
        *field += 1;
        metrics.count_drop(reason);
    }
}

impl ServerMessage<'_> {
    /// The JSON text of this message.
    pub fn to_json(&self) -> String {
        // unwrap: these types serialise to JSON without fallible parts
        // (no maps with non-string keys; non-finite floats become null).
        serde_json::to_string(self).unwrap()
    }
}

/// Builds the text of a `result` message around already-serialised landmarks.
///
/// `landmarks_json` is the JSON object body `"pose":[…],"face":[…],…` without
/// braces, serialised by the worker; the envelope is written by hand so the
/// timings (which include the serialisation) can go in last.
pub fn result_json(
    seq: u32,
    capture_ts: f64,
    timings: &FrameTimings,
    landmarks_json: &str,
) -> String {
    // unwrap: a struct of f64 always serialises.
    let timings = serde_json::to_string(timings).unwrap();
    let capture_ts = serde_json::Number::from_f64(capture_ts)
        .map(|n| n.to_string())
        .unwrap_or_else(|| "null".into());
    let sep = if landmarks_json.is_empty() { "" } else { "," };
    format!(
        r#"{{"type":"result","seq":{seq},"capture_ts":{capture_ts},"timings":{timings}{sep}{landmarks_json}}}"#
    )
}

/// A `result` message (from [`result_json`]) with the frame's RTP
/// timestamp added after its `type`: what a WebRTC client gets, to match the
/// result to the video frame it shows.
pub fn with_rtp_ts(result: &str, rtp_ts: u32) -> String {
    const HEAD: &str = r#"{"type":"result","#;
    match result.strip_prefix(HEAD) {
        Some(rest) => format!(r#"{HEAD}"rtp_ts":{rtp_ts},{rest}"#),
        // Not one of ours: passed on as it is rather than broken.
        None => result.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_ts_goes_into_a_result_as_a_number() {
        let r = result_json(7, 12.5, &FrameTimings::default(), r#""pose":[]"#);
        let v: serde_json::Value = serde_json::from_str(&with_rtp_ts(&r, 4_294_967_295)).unwrap();
        assert_eq!(v["rtp_ts"], 4_294_967_295u32);
        assert_eq!(v["seq"], 7);
        assert_eq!(v["type"], "result");
        assert_eq!(with_rtp_ts("{}", 1), "{}");
    }

    #[test]
    fn all_lists_every_code_once_with_its_wire_name() {
        let names: std::collections::BTreeSet<&str> =
            ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len(), "a code listed twice");
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
    }

    #[test]
    fn header_round_trips() {
        let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3];
        let h = FrameHeader {
            seq: 0xDEAD_BEEF,
            capture_ts: 1_700_000_000_123.5,
        };
        let msg = h.encode(&jpeg);
        assert_eq!(msg.len(), FRAME_HEADER_LEN + jpeg.len());
        let (parsed, body) = parse_frame(&msg).unwrap();
        assert_eq!(parsed, h);
        assert_eq!(body, &jpeg);
    }

    #[test]
    fn header_is_little_endian_at_documented_offsets() {
        let msg = FrameHeader {
            seq: 1,
            capture_ts: 2.0,
        }
        .encode(&[0xFF, 0xD8]);
        assert_eq!(&msg[0..5], &[0xA1, 1, 0, 0, 0]);
        assert_eq!(&msg[5..13], &2.0f64.to_le_bytes());
    }

    #[test]
    fn bad_frames_are_typed() {
        assert_eq!(
            parse_frame(&[0xA1, 0, 0]).unwrap_err(),
            FrameError::ShortHeader(3)
        );
        let mut msg = FrameHeader {
            seq: 1,
            capture_ts: 0.0,
        }
        .encode(&[0xFF, 0xD8]);
        msg[0] = 0x00;
        assert_eq!(parse_frame(&msg).unwrap_err(), FrameError::Version(0));
        let header_only = FrameHeader {
            seq: 1,
            capture_ts: 0.0,
        }
        .encode(&[]);
        assert_eq!(parse_frame(&header_only).unwrap_err(), FrameError::NoImage);
        let png = FrameHeader {
            seq: 1,
            capture_ts: 0.0,
        }
        .encode(b"\x89PNG");
        assert_eq!(parse_frame(&png).unwrap_err(), FrameError::NotJpeg);
        let nan = FrameHeader {
            seq: 1,
            capture_ts: f64::NAN,
        }
        .encode(&[0xFF, 0xD8]);
        assert_eq!(parse_frame(&nan).unwrap_err(), FrameError::CaptureTs);
    }

    const LIMITS: ControlLimits = ControlLimits {
        max_fps: 30,
        max_people: 6,
    };

    #[test]
    fn control_messages_parse_and_validate() {
        let msg = parse_control(
            r#"{"type":"config","fps":15,"parts":["pose","hands"]}"#,
            LIMITS,
        )
        .unwrap();
        let ControlMessage::Config { fps, parts, people } = msg;
        assert_eq!(fps, Some(15));
        assert_eq!(people, None, "people is left as it was unless sent");
        let parts = parts.unwrap();
        assert!(parts.pose && parts.hands && !parts.face);

        assert!(matches!(
            parse_control(r#"{"type":"config","fps":0}"#, LIMITS),
            Err(ControlError::Fps { got: 0, max: 30 })
        ));
        assert!(matches!(
            parse_control(r#"{"type":"config","fps":31}"#, LIMITS),
            Err(ControlError::Fps { .. })
        ));
        for bad in [
            "not json",
            "{\"type\":\"config\"",
            r#"{"type":"launch"}"#,
            r#"{"type":"config","parts":["tail"]}"#,
            r#"{"type":"config","fps":-1}"#,
            r#"{"type":"config","colour":"red"}"#,
            r#"{"type":"config","people":-1}"#,
            r#"{"type":"config","people":2.5}"#,
            r#"{"type":"config","people":"3"}"#,
        ] {
            assert!(
                matches!(parse_control(bad, LIMITS), Err(ControlError::Json(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn people_is_checked_against_max_people() {
        for n in [1, 3, 6] {
            let ControlMessage::Config { people, fps, parts } =
                parse_control(&format!(r#"{{"type":"config","people":{n}}}"#), LIMITS).unwrap();
            assert_eq!(people, Some(n));
            assert_eq!((fps, parts), (None, None));
        }
        for (n, text) in [
            (0, r#"{"type":"config","people":0}"#),
            (7, r#"{"type":"config","people":7}"#),
            // A good fps does not carry a bad people through.
            (7, r#"{"type":"config","fps":10,"people":7}"#),
        ] {
            let e = parse_control(text, LIMITS).unwrap_err();
            assert!(
                matches!(e, ControlError::People { got, max: 6 } if got == n),
                "{text}: {e:?}"
            );
            assert_eq!(
                e.to_string(),
                format!("people must be between 1 and 6, got {n}")
            );
        }
    }

    #[test]
    fn hello_shows_people_and_max_people() {
        let hello = ServerMessage::Hello {
            session: SessionTag::of(uuid::Uuid::nil()),
            config: SessionView {
                fps: 20,
                max_fps: 30,
                parts: Parts {
                    pose: true,
                    face: false,
                    hands: true,
                },
                people: 2,
                max_people: 6,
                max_message_bytes: 1024,
            },
        }
        .to_json();
        let v: serde_json::Value = serde_json::from_str(&hello).unwrap();
        assert_eq!(v["config"]["people"], 2);
        assert_eq!(v["config"]["max_people"], 6);
        assert_eq!(v["config"]["parts"], serde_json::json!(["pose", "hands"]));
    }

    #[test]
    fn result_json_is_valid_json_with_timings() {
        let t = FrameTimings {
            queue_ms: 1.0,
            decode_ms: 2.0,
            infer_ms: 3.0,
            serialize_ms: 0.5,
            total_ms: 7.0,
        };
        let s = result_json(
            7,
            123.25,
            &t,
            r#""pose":[],"face":[],"left_hand":[],"right_hand":[]"#,
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["type"], "result");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["capture_ts"], 123.25);
        assert_eq!(v["timings"]["infer_ms"], 3.0);
        assert!(v["face"].as_array().unwrap().is_empty());
    }

    #[test]
    fn server_messages_are_tagged() {
        let e = ServerMessage::Error {
            seq: Some(3),
            code: ErrorCode::BadFrame,
            message: "x",
        }
        .to_json();
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "bad_frame");
        let s = ServerMessage::Stats(SessionStats {
            received: 4,
            ..Default::default()
        })
        .to_json();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["type"], "stats");
        assert_eq!(v["received"], 4);
        assert_eq!(v["dropped_stale"], 0);
    }
}
