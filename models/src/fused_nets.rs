//! The six nets on our own fused NHWC CPU kernels (`holistream-kernels`),
//! lowered at load time from the same committed ONNX files the generated burn
//! code comes from (embedded in the binary, so no model path is needed).
//!
//! The kernels work in TFLite's NHWC layout throughout, so unlike
//! [`crate::BurnNets`] there is no layout change at the edges: the input is
//! used as given and the outputs come back NHWC-flattened.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use holistream_kernels::program::InputSizeError;
use holistream_kernels::{Isa, Program, Scratch};

use crate::{Net, NetError, NetRunner};

/// The ONNX bytes of each net, in [`Net::ALL`] order.
const ONNX: [&[u8]; 6] = [
    include_bytes!("../pose_detection.onnx"),
    include_bytes!("../pose_landmark_full.onnx"),
    include_bytes!("../face_detection_short_range.onnx"),
    include_bytes!("../face_landmark.onnx"),
    include_bytes!("../hand_recrop.onnx"),
    include_bytes!("../hand_landmark_full.onnx"),
];

fn index(net: Net) -> usize {
    match net {
        Net::PoseDetection => 0,
        Net::PoseLandmark => 1,
        Net::FaceDetection => 2,
        Net::FaceLandmark => 3,
        Net::HandRecrop => 4,
        Net::HandLandmark => 5,
    }
}

/// The six nets lowered to fused NHWC layers, single-threaded: run one
/// instance per core. Cloning shares the packed weights and gives the clone
/// its own buffers.
#[derive(Debug)]
pub struct FusedNets {
    programs: Arc<[Program; 6]>,
    /// Per-net buffers, reused across frames. A mutex (uncontended: one
    /// worker per instance) rather than a `RefCell`, so the runner is `Sync`.
    scratch: Mutex<[Scratch; 6]>,
}

impl Clone for FusedNets {
    fn clone(&self) -> Self {
        Self::with_programs(self.programs.clone())
    }
}

impl FusedNets {
    /// Lowers the embedded nets; kernels use the fastest instruction set this
    /// CPU has ([`Isa::detect`]).
    pub fn load() -> Result<Self, NetError> {
        let mut programs = Vec::with_capacity(6);
        for net in Net::ALL {
            let program = Program::from_onnx(ONNX[index(net)]).map_err(|e| NetError::Load {
                net,
                message: e.to_string(),
            })?;
            let (h, w) = net.input_size();
            if program.input_shape() != (h, w, 3) {
                return Err(NetError::Load {
                    net,
                    message: format!("input {:?}, expected {h}x{w}x3", program.input_shape()),
                });
            }
            programs.push(program);
        }
        let programs: [Program; 6] = programs.try_into().map_err(|_| NetError::Load {
            net: Net::PoseDetection,
            message: "six programs expected".into(),
        })?;
        Ok(Self::with_programs(Arc::new(programs)))
    }

    fn with_programs(programs: Arc<[Program; 6]>) -> Self {
        let scratch = Mutex::new(std::array::from_fn(|i| programs[i].scratch()));
        Self { programs, scratch }
    }

    /// The same nets on instruction set `isa` (tests compare them).
    pub fn with_isa(&self, isa: Isa) -> Self {
        let programs = std::array::from_fn(|i| self.programs[i].clone().with_isa(isa));
        Self::with_programs(Arc::new(programs))
    }

    /// The instruction set the kernels run on.
    pub fn isa(&self) -> Isa {
        self.programs[0].isa()
    }

    /// Per-layer wall times of one forward pass (see [`Program::profile`]).
    pub fn profile(
        &self,
        net: Net,
        input_nhwc: &[f32],
    ) -> Result<Vec<(String, Duration)>, NetError> {
        let i = index(net);
        // A panic while holding the lock cannot leave the buffers in a state
        // that matters: every run overwrites what it reads.
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        self.programs[i]
            .profile(input_nhwc, &mut scratch[i])
            .map_err(|e| input_error(net, e))
    }
}

fn input_error(net: Net, e: InputSizeError) -> NetError {
    NetError::InputSize {
        net,
        expected: e.expected,
        got: e.got,
    }
}

impl NetRunner for FusedNets {
    fn run(&self, net: Net, input_nhwc: &[f32]) -> Result<Vec<Vec<f32>>, NetError> {
        let i = index(net);
        // See `profile` on why a poisoned lock is still usable.
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        self.programs[i]
            .run(input_nhwc, &mut scratch[i])
            .map_err(|e| input_error(net, e))
    }
}
