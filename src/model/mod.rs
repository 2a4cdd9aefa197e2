//! The MediaPipe Holistic pipeline: our own pre/post-processing around the
//! nets of `holistream-nets`, following `HOLISTIC_SPEC.md` stage by stage.
//!
//! The model worker is stateless: the caller (a session) owns the
//! [`TrackingState`] and passes it in with every frame.
//!
//! Map:
//! - [`image_input`]: bounded decoding of untrusted image bytes.
//! - [`geometry`]: MediaPipe's rect primitives (P1–P6).
//! - [`warp`]: image → tensor (rotated crop, letterbox, OpenCV-exact bilinear).
//! - [`anchors`], [`detection`]: SSD anchors, box decoding, weighted NMS.
//! - [`pose`], [`face`], [`hands`]: each part's ROIs and output decoding.
//! - [`tracking`]: ROI tracking between frames, pose smoothing, [`TrackingState`].
//! - [`pipeline`]: [`Holistic`], the graph that ties the stages together.
//! - [`batch`]: [`Batched`], several frames' graphs with their net calls
//!   batched, for a GPU.
//! - [`result`]: [`HolisticResult`], the wire format.
//! - [`people`]: more than one person: detection passes beyond MediaPipe's
//!   one, and which detection is which tracked person.
//!
//! The pipeline only: the commands that use it (`infer`, `parity`, `bench`)
//! are in `commands`. Imports the root plumbing (`config` for `[model]` and
//! the frame limits) and `holistream-nets`; nothing from `actors`, `http` or
//! `commands`.

pub mod anchors;
pub mod batch;
pub mod detection;
pub mod face;
pub mod geometry;
pub mod hands;
pub mod image_input;
pub mod nets;
pub mod people;
pub mod pipeline;
pub mod pose;
pub mod result;
pub mod tracking;
pub mod warp;

pub use batch::Batched;
pub use holistream_nets::{Backend, Net, NetError, NetRunner};
pub use image_input::{FrameData, I420Picture, ImageInputError, decode_image};
pub use pipeline::Holistic;
pub use result::{HolisticResult, Landmark, Person, PoseLandmark, StageTimings};
pub use tracking::TrackingState;

use serde::{Deserialize, Serialize};

/// Which parts of the body to compute. Face and hands are found from the
/// pose, so the pose runs whenever any part is on; `pose: false` only empties
/// the pose list of the result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parts {
    pub pose: bool,
    pub face: bool,
    pub hands: bool,
}

impl Default for Parts {
    fn default() -> Self {
        Parts {
            pose: true,
            face: true,
            hands: true,
        }
    }
}

impl std::str::FromStr for Parts {
    type Err = String;

    /// Parses a comma-separated list such as `pose,face` or `hands`.
    fn from_str(s: &str) -> Result<Parts, String> {
        let mut parts = Parts {
            pose: false,
            face: false,
            hands: false,
        };
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "pose" => parts.pose = true,
                "face" => parts.face = true,
                "hands" => parts.hands = true,
                other => {
                    return Err(format!(
                        "unknown part {other:?} (expected pose, face, hands)"
                    ));
                }
            }
        }
        Ok(parts)
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    /// `static` or `tracking`.
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "static" => Ok(Mode::Static),
            "tracking" => Ok(Mode::Tracking),
            other => Err(format!(
                "unknown mode {other:?} (expected static or tracking)"
            )),
        }
    }
}

/// Still images or a video stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every frame on its own (MediaPipe's `static_image_mode=True`).
    Static,
    /// Frames of one stream: the pose ROI is carried over, detection only
    /// re-runs when the pose is lost, and the pose is smoothed.
    Tracking,
}

/// Per-frame options.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessOptions {
    pub mode: Mode,
    pub parts: Parts,
    /// Frame time in microseconds; the pose filters need it increasing in
    /// tracking mode (MediaPipe's Python API uses 33 333 µs steps).
    pub timestamp_us: i64,
    /// Most people to find: 1 is MediaPipe's single-person Holistic, exactly;
    /// more runs the same per-person stages for every person found.
    #[serde(default = "one_person")]
    pub people: usize,
}

fn one_person() -> usize {
    1
}

/// Errors of the pipeline boundary.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("{net:?} returned unexpected outputs: {detail}")]
    NetOutput { net: Net, detail: String },
    #[error("image has zero size")]
    EmptyImage,
    #[error(transparent)]
    Image(#[from] ImageInputError),
    #[error("{0}")]
    Config(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_parse() {
        assert_eq!(
            "pose,face,hands".parse::<Parts>().unwrap(),
            Parts::default()
        );
        assert_eq!(
            "hands".parse::<Parts>().unwrap(),
            Parts {
                pose: false,
                face: false,
                hands: true
            }
        );
        assert!("pose,feet".parse::<Parts>().is_err());
    }
}
