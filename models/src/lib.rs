//! MediaPipe Holistic's nets on burn.
//!
//! `build.rs` generates one burn module per ONNX file in this folder (burn-onnx);
//! [`BurnNets`] wraps them behind [`NetRunner`], the one small interface the
//! pipeline sees. [`FusedNets`] runs the same ONNX files on our own fused NHWC
//! CPU kernels (`holistream-kernels`, several times faster than burn's `flex`
//! on these nets), each net one burn operation on the `flex` device
//! ([`burn_ext`], a backend extension); [`Backend`] picks one.
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
    #[error("{0}")]
    Backend(String),
}

/// Runs the nets. One instance per worker; `run` takes `&self` and is not
/// shared across threads (burn modules are `Send`, not necessarily `Sync`).
pub trait NetRunner: Send {
    fn run(&self, net: Net, input_nhwc: &[f32]) -> Result<Vec<Vec<f32>>, NetError>;

    /// [`NetRunner::run`] using a second core for this one call, for one
    /// frame's latency while a core would sit idle; the same outputs.
    /// Where the nets cannot split their work, the plain run.
    fn run_split(&self, net: Net, input_nhwc: &[f32]) -> Result<Vec<Vec<f32>>, NetError> {
        self.run(net, input_nhwc)
    }

    /// [`NetRunner::run`] on several inputs of the same net at once: one
    /// output list per input, in order, each what `run` gives for that input
    /// alone (to float rounding: a batched kernel may sum in another order).
    /// Where the nets have no batched forward (the fused CPU kernels, which
    /// gain nothing from it), one `run` per input.
    fn run_batch(&self, net: Net, inputs: &[&[f32]]) -> Result<Vec<Vec<Vec<f32>>>, NetError> {
        inputs.iter().map(|input| self.run(net, input)).collect()
    }

    /// Whether [`NetRunner::run_batch`] runs the inputs as one batch (a
    /// GPU device), so that waiting for company pays off.
    fn batches(&self) -> bool {
        false
    }

    /// A second instance sharing these weights, with its own buffers, for a
    /// second thread; `None` where that is not cheap (the generated burn
    /// modules are loaded per instance).
    fn fork(&self) -> Option<Box<dyn NetRunner>> {
        None
    }
}

/// Which implementation runs the nets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// [`FusedNets`]: our fused NHWC kernels, CPU, single-threaded, on the
    /// fastest instruction set this CPU has.
    Fused,
    /// The same kernels compiled for the baseline target only
    /// ([`Isa::PORTABLE`]): to measure what SIMD dispatch buys, and as a
    /// second rounding of the same arithmetic (how sensitive the pipeline is
    /// to float noise).
    FusedPortable,
    /// [`BurnNets`]: the burn-onnx generated code on the device the cargo
    /// features favour (`flex` on the CPU without a GPU feature); the
    /// reference path.
    Burn,
}

impl Backend {
    /// The environment variable that names a backend (read by the main
    /// crate's `config`, `[model] nets`; this crate reads no environment
    /// but the kernels' `HOLISTREAM_ISA`).
    pub const ENV: &'static str = "HOLISTREAM_NETS";

    /// The default: the fused kernels on a CPU build; burn when a GPU
    /// feature (`wgpu`, `cuda`) is enabled, so GPU builds keep their device.
    pub fn default_for_build() -> Backend {
        if cfg!(any(feature = "wgpu", feature = "cuda")) {
            Backend::Burn
        } else {
            Backend::Fused
        }
    }

    /// Loads the nets on this backend.
    pub fn load(self) -> Result<Box<dyn NetRunner>, NetError> {
        Ok(match self {
            Backend::Fused => Box::new(FusedNets::load()?),
            Backend::FusedPortable => Box::new(FusedNets::load()?.with_isa(Isa::PORTABLE)),
            Backend::Burn => Box::new(BurnNets::load_default_device()?),
        })
    }

    /// Whether these nets run a batch at once ([`NetRunner::batches`]):
    /// burn on a GPU device.
    pub fn batches(self) -> bool {
        self == Backend::Burn && cfg!(any(feature = "wgpu", feature = "cuda"))
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Fused => "fused",
            Backend::FusedPortable => "fused-portable",
            Backend::Burn => "burn",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "fused" => Ok(Backend::Fused),
            "fused-portable" => Ok(Backend::FusedPortable),
            "burn" | "flex" => Ok(Backend::Burn),
            other => Err(format!(
                "unknown nets backend {other:?} (expected fused, fused-portable or burn)"
            )),
        }
    }
}

pub mod burn_ext;
mod burn_nets;
mod fused_nets;
pub mod generated;

pub use burn_nets::{BurnNets, preferred_device};
pub use fused_nets::FusedNets;
pub use holistream_kernels::{Isa, warp};
