//! The wire format of the remote pool, version 2 (see [`WIRE_VERSION`]): how a job and a result
//! are written as Redis stream entries. Owns the encodings; knows nothing of
//! connections, sessions or the pipeline (the types it carries are the
//! model's and the job's own).
//!
//! A job is a stream entry with these fields:
//!
//! | field   | value                                                                 |
//! |---------|-----------------------------------------------------------------------|
//! | `v`     | `2` (the version; a worker answers `unsupported` to any other)          |
//! | `gw`    | the asking gateway's id (results go to `holistream:results:<gw>`)       |
//! | `job`   | the gateway's job number, decimal `u64`, echoed in the result           |
//! | `ttl_ms`| time to live in ms after the entry id's timestamp                       |
//! | `opts`  | JSON `{"mode":"static"\|"tracking","parts":{"pose","face","hands"},"timestamp_us","people"}` (`people` absent: 1) |
//! | `state` | JSON of the session's `TrackingState`                                  |
//! | `jpeg`  | the JPEG, raw bytes (version 2)                                        |
//! | `i420`  | instead of `jpeg`, a decoded video picture (WebRTC): packed I420 planes (version 3) |
//! | `size`  | with `i420`: `<width>x<height>`                                          |
//!
//! A job with a JPEG is written as version 2, byte for byte what workers of
//! the previous release read; only a job with a picture is version 3, so an
//! older worker in a mixed deployment answers `unsupported` to WebRTC frames
//! alone and keeps serving WebSocket ones.
//!
//! A result is an entry of the gateway's result stream:
//!
//! | field      | value                                                                  |
//! |------------|------------------------------------------------------------------------|
//! | `v`        | `2`                                                                    |
//! | `job`      | the job number                                                         |
//! | `worker`   | the consumer name of the worker thread                                 |
//! | `status`   | `ok`, `expired`, `lost`, `bad_frame`, `failed`, `unsupported`            |
//! | `landmarks`| (`ok`) the landmark members of the result message, JSON without braces  |
//! | `state`    | (`ok`) JSON of the new `TrackingState`                                 |
//! | `timings`  | (`ok`) JSON `{"queue_ms","decode_ms","infer_ms","serialize_ms","total_ms"}`; `total_ms` is 0 (the gateway's to measure) and may be absent (older workers) |
//! | `error`    | (`bad_frame`, `failed`, `unsupported`) a message for logs and clients   |

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use redis::Value;
use redis::streams::StreamId;

use super::{PICTURE_WIRE_VERSION, WIRE_VERSION};
use crate::actors::protocol::FrameTimings;
use crate::config::DecodeLimits;
use crate::model::{FrameData, I420Picture, ProcessOptions, TrackingState};

/// A stream entry id, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryId {
    /// Redis server time in ms when the entry was added.
    pub ms: u64,
    /// Sequence within that millisecond.
    pub seq: u64,
}

impl FromStr for EntryId {
    type Err = WireError;
    fn from_str(s: &str) -> Result<EntryId, WireError> {
        let bad = || WireError::EntryId(s.to_string());
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(EntryId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a stream entry is not a valid job or result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("entry has no field {0:?}")]
    Missing(&'static str),
    #[error("field {0:?} is malformed: {1}")]
    Malformed(&'static str, String),
    #[error("wire version {0} is not supported (this build speaks {WIRE_VERSION})")]
    Version(String),
    #[error("not a stream entry id: {0:?}")]
    EntryId(String),
}

/// A job as it travels in [`super::JOBS_STREAM`].
#[derive(Debug, Clone)]
pub struct WireJob {
    /// The asking gateway.
    pub gateway: String,
    /// The gateway's job number.
    pub job: u64,
    /// Time to live after the entry's timestamp.
    pub ttl_ms: u64,
    /// Mode, parts and frame time, as the pipeline takes them (the `opts`
    /// field is their JSON).
    pub opts: ProcessOptions,
    /// The session's tracking state.
    pub tracking: TrackingState,
    /// The frame.
    pub frame: FrameData,
}

fn field<'a>(entry: &'a StreamId, name: &'static str) -> Result<&'a Value, WireError> {
    entry.map.get(name).ok_or(WireError::Missing(name))
}

fn field_bytes(entry: &StreamId, name: &'static str) -> Result<Vec<u8>, WireError> {
    redis::from_redis_value_ref::<Vec<u8>>(field(entry, name)?)
        .map_err(|e| WireError::Malformed(name, e.to_string()))
}

fn field_string(entry: &StreamId, name: &'static str) -> Result<String, WireError> {
    String::from_utf8(field_bytes(entry, name)?)
        .map_err(|_| WireError::Malformed(name, "not UTF-8".into()))
}

fn field_parse<T: FromStr>(entry: &StreamId, name: &'static str) -> Result<T, WireError> {
    let s = field_string(entry, name)?;
    s.parse()
        .map_err(|_| WireError::Malformed(name, format!("cannot parse {s:?}")))
}

fn field_json<T: serde::de::DeserializeOwned>(
    entry: &StreamId,
    name: &'static str,
) -> Result<T, WireError> {
    serde_json::from_slice(&field_bytes(entry, name)?)
        .map_err(|e| WireError::Malformed(name, e.to_string()))
}

fn check_version(entry: &StreamId) -> Result<(), WireError> {
    let v = field_string(entry, "v")?;
    if v == WIRE_VERSION.to_string() {
        Ok(())
    } else {
        Err(WireError::Version(v))
    }
}

/// Stream fields in order: name and raw value.
pub type Fields = Vec<(&'static str, Vec<u8>)>;

impl WireJob {
    /// The fields of the `XADD`.
    pub fn to_fields(&self) -> Fields {
        let version = match self.frame {
            FrameData::Jpeg(_) => WIRE_VERSION,
            FrameData::I420(_) => PICTURE_WIRE_VERSION,
        };
        let mut fields = vec![
            ("v", version.to_string().into_bytes()),
            ("gw", self.gateway.clone().into_bytes()),
            ("job", self.job.to_string().into_bytes()),
            ("ttl_ms", self.ttl_ms.to_string().into_bytes()),
            // unwrap: plain structs of numbers and bools always serialise.
            ("opts", serde_json::to_vec(&self.opts).unwrap()),
            ("state", serde_json::to_vec(&self.tracking).unwrap()),
        ];
        match &self.frame {
            FrameData::Jpeg(jpeg) => fields.push(("jpeg", jpeg.to_vec())),
            FrameData::I420(picture) => {
                fields.push(("i420", picture.planes().to_vec()));
                fields.push((
                    "size",
                    format!("{}x{}", picture.width(), picture.height()).into_bytes(),
                ));
            }
        }
        fields
    }

    /// Reads a job from a stream entry. The gateway and job number are read
    /// first, so that even a job of another version can be answered
    /// ([`WireJob::reply_address`]).
    pub fn from_entry(entry: &StreamId) -> Result<WireJob, WireError> {
        let v = field_string(entry, "v")?;
        let frame = if v == WIRE_VERSION.to_string() {
            FrameData::Jpeg(Bytes::from(field_bytes(entry, "jpeg")?))
        } else if v == PICTURE_WIRE_VERSION.to_string() {
            let size = field_string(entry, "size")?;
            let bad = |why: String| WireError::Malformed("size", why);
            let (w, h) = size
                .split_once('x')
                .ok_or_else(|| bad(format!("{size:?} is not WxH")))?;
            let (w, h) = (
                w.parse().map_err(|_| bad(format!("{size:?} is not WxH")))?,
                h.parse().map_err(|_| bad(format!("{size:?} is not WxH")))?,
            );
            // The hard cap here; the worker holds the picture to its own
            // limits when it converts it.
            let picture = I420Picture::new(
                w,
                h,
                Bytes::from(field_bytes(entry, "i420")?),
                &DecodeLimits::HARD_CAP,
            )
            .map_err(|e| WireError::Malformed("i420", e.to_string()))?;
            FrameData::I420(picture)
        } else {
            return Err(WireError::Version(v));
        };
        Ok(WireJob {
            gateway: field_string(entry, "gw")?,
            job: field_parse(entry, "job")?,
            ttl_ms: field_parse(entry, "ttl_ms")?,
            opts: field_json(entry, "opts")?,
            tracking: field_json(entry, "state")?,
            frame,
        })
    }

    /// Where to answer an entry that is not a valid job, when it says.
    pub fn reply_address(entry: &StreamId) -> Option<(String, u64)> {
        Some((
            field_string(entry, "gw").ok().filter(|g| !g.is_empty())?,
            field_parse(entry, "job").ok()?,
        ))
    }
}

/// What a worker made of a job.
#[derive(Debug, Clone)]
pub enum WireOutcome {
    /// Landmarks (JSON members), the new tracking state and the timings.
    Ok {
        landmarks: String,
        tracking: TrackingState,
        /// The worker's; `total_ms` is the gateway's to set (0 here).
        timings: FrameTimings,
    },
    /// Taken after its deadline; not run.
    Expired,
    /// Found pending on a dead worker after its deadline.
    Lost,
    /// The JPEG could not be decoded.
    BadFrame(String),
    /// The pipeline failed or panicked.
    Failed(String),
    /// The job's encoding is not one this worker reads.
    Unsupported(String),
}

/// A result as it travels in a gateway's result stream.
#[derive(Debug, Clone)]
pub struct WireResult {
    pub job: u64,
    pub worker: String,
    pub outcome: WireOutcome,
}

impl WireResult {
    /// The fields of the `XADD`.
    pub fn to_fields(&self) -> Fields {
        let mut f: Fields = vec![
            ("v", WIRE_VERSION.to_string().into_bytes()),
            ("job", self.job.to_string().into_bytes()),
            ("worker", self.worker.clone().into_bytes()),
        ];
        let status = |s: &str| s.as_bytes().to_vec();
        match &self.outcome {
            WireOutcome::Ok {
                landmarks,
                tracking,
                timings,
            } => {
                f.push(("status", status("ok")));
                f.push(("landmarks", landmarks.clone().into_bytes()));
                // unwrap: plain structs of numbers always serialise.
                f.push(("state", serde_json::to_vec(tracking).unwrap()));
                f.push(("timings", serde_json::to_vec(timings).unwrap()));
            }
            WireOutcome::Expired => f.push(("status", status("expired"))),
            WireOutcome::Lost => f.push(("status", status("lost"))),
            WireOutcome::BadFrame(m) => {
                f.push(("status", status("bad_frame")));
                f.push(("error", m.clone().into_bytes()));
            }
            WireOutcome::Failed(m) => {
                f.push(("status", status("failed")));
                f.push(("error", m.clone().into_bytes()));
            }
            WireOutcome::Unsupported(m) => {
                f.push(("status", status("unsupported")));
                f.push(("error", m.clone().into_bytes()));
            }
        }
        f
    }

    /// Reads a result from a stream entry.
    pub fn from_entry(entry: &StreamId) -> Result<WireResult, WireError> {
        check_version(entry)?;
        let error = || field_string(entry, "error");
        let status = field_string(entry, "status")?;
        let outcome = match status.as_str() {
            "ok" => WireOutcome::Ok {
                landmarks: field_string(entry, "landmarks")?,
                tracking: field_json(entry, "state")?,
                timings: field_json(entry, "timings")?,
            },
            "expired" => WireOutcome::Expired,
            "lost" => WireOutcome::Lost,
            "bad_frame" => WireOutcome::BadFrame(error()?),
            "failed" => WireOutcome::Failed(error()?),
            "unsupported" => WireOutcome::Unsupported(error()?),
            other => return Err(WireError::Malformed("status", format!("unknown {other:?}"))),
        };
        Ok(WireResult {
            job: field_parse(entry, "job")?,
            worker: field_string(entry, "worker").unwrap_or_default(),
            outcome,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mode, Parts};

    fn entry(fields: Fields) -> StreamId {
        StreamId {
            id: "1-0".into(),
            map: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), Value::BulkString(v)))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn entry_ids_order_like_redis() {
        let a: EntryId = "1700000000000-9".parse().unwrap();
        let b: EntryId = "1700000000001-0".parse().unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "1700000000000-9");
        assert!("17".parse::<EntryId>().is_err());
        assert!("a-b".parse::<EntryId>().is_err());
    }

    #[test]
    fn job_round_trips_with_raw_jpeg() {
        let job = WireJob {
            gateway: "gw1".into(),
            job: 42,
            ttl_ms: 300,
            opts: ProcessOptions {
                people: 1,
                mode: Mode::Tracking,
                parts: Parts {
                    pose: true,
                    face: false,
                    hands: true,
                },
                timestamp_us: 123_456,
            },
            tracking: TrackingState::default(),
            frame: FrameData::Jpeg(Bytes::from_static(&[0xFF, 0xD8, 0x00, 0xFF, 0xD9])),
        };
        let fields = job.to_fields();
        let jpeg = fields.iter().find(|(k, _)| *k == "jpeg").unwrap();
        assert_eq!(jpeg.1, vec![0xFF, 0xD8, 0x00, 0xFF, 0xD9]);
        let back = WireJob::from_entry(&entry(fields)).unwrap();
        assert_eq!(
            (back.gateway.as_str(), back.job, back.ttl_ms),
            ("gw1", 42, 300)
        );
        assert!(matches!(back.opts.mode, Mode::Tracking));
        assert!(back.opts.parts.pose && !back.opts.parts.face && back.opts.parts.hands);
        assert_eq!(back.opts.timestamp_us, 123_456);
        assert!(
            matches!((&back.frame, &job.frame), (FrameData::Jpeg(a), FrameData::Jpeg(b)) if a == b)
        );
        assert_eq!(fields_version(&job), WIRE_VERSION.to_string());
    }

    fn fields_version(job: &WireJob) -> String {
        String::from_utf8(job.to_fields()[0].1.clone()).unwrap()
    }

    #[test]
    fn a_picture_travels_as_version_3_and_is_checked() {
        let image = image::RgbImage::from_pixel(6, 4, image::Rgb([10, 200, 30]));
        let picture = I420Picture::from_rgb(&image);
        let job = WireJob {
            gateway: "gw1".into(),
            job: 5,
            ttl_ms: 300,
            opts: ProcessOptions {
                people: 1,
                mode: Mode::Tracking,
                parts: Parts::default(),
                timestamp_us: 1,
            },
            tracking: TrackingState::default(),
            frame: FrameData::I420(picture.clone()),
        };
        assert_eq!(fields_version(&job), PICTURE_WIRE_VERSION.to_string());
        let back = WireJob::from_entry(&entry(job.to_fields())).unwrap();
        assert!(matches!(&back.frame, FrameData::I420(p) if *p == picture));
        // A size that disagrees with the planes, or garbage, is refused.
        let mut fields = job.to_fields();
        let size = fields.iter_mut().find(|(k, _)| *k == "size").unwrap();
        size.1 = b"8x4".to_vec();
        assert!(matches!(
            WireJob::from_entry(&entry(fields.clone())),
            Err(WireError::Malformed("i420", _))
        ));
        let size = fields.iter_mut().find(|(k, _)| *k == "size").unwrap();
        size.1 = b"huge".to_vec();
        assert!(matches!(
            WireJob::from_entry(&entry(fields)),
            Err(WireError::Malformed("size", _))
        ));
    }

    #[test]
    fn other_versions_are_refused_but_answerable() {
        let mut fields = WireJob {
            gateway: "gw1".into(),
            job: 7,
            ttl_ms: 1,
            opts: ProcessOptions {
                people: 1,
                mode: Mode::Static,
                parts: Parts::default(),
                timestamp_us: 0,
            },
            tracking: TrackingState::default(),
            frame: FrameData::Jpeg(Bytes::new()),
        }
        .to_fields();
        let other = (PICTURE_WIRE_VERSION + 1).to_string();
        fields[0].1 = other.clone().into_bytes();
        let e = entry(fields);
        assert_eq!(
            WireJob::from_entry(&e).unwrap_err(),
            WireError::Version(other)
        );
        assert_eq!(WireJob::reply_address(&e), Some(("gw1".into(), 7)));
        let bare = entry(vec![("v", WIRE_VERSION.to_string().into_bytes())]);
        assert!(matches!(
            WireJob::from_entry(&bare),
            Err(WireError::Missing(_))
        ));
        assert_eq!(WireJob::reply_address(&bare), None);
    }

    #[test]
    fn results_round_trip_for_every_status() {
        let outcomes = [
            WireOutcome::Ok {
                landmarks: r#""pose":[],"face":[],"left_hand":[],"right_hand":[]"#.into(),
                tracking: TrackingState::default(),
                timings: FrameTimings {
                    queue_ms: 1.5,
                    decode_ms: 2.0,
                    infer_ms: 30.0,
                    serialize_ms: 0.25,
                    total_ms: 0.0,
                },
            },
            WireOutcome::Expired,
            WireOutcome::Lost,
            WireOutcome::BadFrame("truncated".into()),
            WireOutcome::Failed("panic".into()),
            WireOutcome::Unsupported("v9".into()),
        ];
        for outcome in outcomes {
            let r = WireResult {
                job: 9,
                worker: "w-0".into(),
                outcome,
            };
            let back = WireResult::from_entry(&entry(r.to_fields())).unwrap();
            assert_eq!(back.to_fields(), r.to_fields());
        }
        let unknown = entry(vec![
            ("v", WIRE_VERSION.to_string().into_bytes()),
            ("job", b"1".to_vec()),
            ("status", b"maybe".to_vec()),
        ]);
        assert!(matches!(
            WireResult::from_entry(&unknown),
            Err(WireError::Malformed("status", _))
        ));
    }
}
