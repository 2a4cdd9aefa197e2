//! MediaPipe Holistic's nets on burn.
//!
//! `build.rs` generates one burn module per ONNX file in this folder (burn-onnx);
//! this crate wraps them behind [`NetRunner`], the one small interface the
//! pipeline sees, so faster kernels can replace the generated code later.
//!
//! Contract of [`NetRunner::run`]: the input is one image in NHWC layout
//! (`height * width * 3` floats, already normalised as the model expects), the
//! outputs come back in the TFLite model's output order, each flattened in the
//! TFLite (NHWC) layout, so the pipeline can follow MediaPipe's graphs literally.

/// The nets of the Holistic graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Net {
    PoseDetection,
    PoseLandmark,
    FaceDetection,
    FaceLandmark,
    HandRecrop,
    HandLandmark,
}

impl Net {
    pub const ALL: [Net; 6] = [
        Net::PoseDetection,
        Net::PoseLandmark,
        Net::FaceDetection,
        Net::FaceLandmark,
        Net::HandRecrop,
        Net::HandLandmark,
    ];

    /// (height, width) of the input tensor.
    pub fn input_size(self) -> (usize, usize) {
        match self {
            Net::PoseDetection => (224, 224),
            Net::PoseLandmark => (256, 256),
            Net::FaceDetection => (128, 128),
            Net::FaceLandmark => (192, 192),
            Net::HandRecrop => (256, 256),
            Net::HandLandmark => (224, 224),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Net::PoseDetection => "pose_detection",
            Net::PoseLandmark => "pose_landmark_full",
            Net::FaceDetection => "face_detection_short_range",
            Net::FaceLandmark => "face_landmark",
            Net::HandRecrop => "hand_recrop",
            Net::HandLandmark => "hand_landmark_full",
        }
    }
}

/// Errors of this boundary.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{net:?} expects {expected} input floats, got {got}")]
    InputSize {
        net: Net,
        expected: usize,
        got: usize,
    },
    #[error("loading {net:?} weights failed: {message}")]
    Load { net: Net, message: String },
    #[error("reading {net:?} outputs failed: {message}")]
    Output { net: Net, message: String },
}

/// Runs the nets. One instance per worker; `run` takes `&self` and is not
/// shared across threads (burn modules are `Send`, not necessarily `Sync`).
pub trait NetRunner: Send {
    fn run(&self, net: Net, input_nhwc: &[f32]) -> Result<Vec<Vec<f32>>, NetError>;
}

mod burn_nets;
pub mod generated;

pub use burn_nets::{BurnNets, preferred_device};
