//! The six nets on our own fused NHWC CPU kernels (`holistream-kernels`),
//! lowered at load time from the same committed ONNX files the generated burn
//! code comes from (embedded in the binary, so no model path is needed), and
//! run as burn operations on the `flex` device ([`crate::burn_ext`]).
//!
//! The kernels work in TFLite's NHWC layout throughout, so unlike
//! [`crate::BurnNets`] there is no layout change at the edges: the input is
//! used as given and the outputs come back NHWC-flattened.

use std::sync::Arc;
use std::time::Duration;

use burn::tensor::{Device, Tensor, TensorData};
use holistream_kernels::{Isa, Program};

use crate::burn_ext::{FusedNet, fused_forward};
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
    nets: [FusedNet; 6],
    device: Device,
}

impl Clone for FusedNets {
    fn clone(&self) -> Self {
        Self::with_programs(std::array::from_fn(|i| self.nets[i].program().clone()))
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
            programs.push(Arc::new(program));
        }
        let programs: [Arc<Program>; 6] = programs.try_into().map_err(|_| NetError::Load {
            net: Net::PoseDetection,
            message: "six programs expected".into(),
        })?;
        Ok(Self::with_programs(programs))
    }

    fn with_programs(programs: [Arc<Program>; 6]) -> Self {
        Self {
            nets: programs.map(FusedNet::new),
            device: Device::flex(),
        }
    }

    /// The same nets on instruction set `isa` (tests compare them).
    pub fn with_isa(&self, isa: Isa) -> Self {
        Self::with_programs(std::array::from_fn(|i| {
            Arc::new(self.nets[i].program().as_ref().clone().with_isa(isa))
        }))
    }

    /// The instruction set the kernels run on.
    pub fn isa(&self) -> Isa {
        self.nets[0].program().isa()
    }

    /// One net, for burn callers: [`crate::burn_ext::fused_forward`] runs it
    /// on a flex tensor.
    pub fn net(&self, net: Net) -> &FusedNet {
        &self.nets[index(net)]
    }

    /// Per-layer wall times of one forward pass (see [`Program::profile`]).
    pub fn profile(
        &self,
        net: Net,
        input_nhwc: &[f32],
    ) -> Result<Vec<(String, Duration)>, NetError> {
        let fused = self.net(net);
        check_len(net, fused, input_nhwc)?;
        let mut scratch = fused.scratch();
        fused
            .program()
            .profile(input_nhwc, &mut scratch)
            .map_err(|e| NetError::InputSize {
                net,
                expected: e.expected,
                got: e.got,
            })
    }
}

fn check_len(net: Net, fused: &FusedNet, input: &[f32]) -> Result<(), NetError> {
    if input.len() == fused.input_len() {
        Ok(())
    } else {
        Err(NetError::InputSize {
            net,
            expected: fused.input_len(),
            got: input.len(),
        })
    }
}

impl FusedNets {
    /// Through burn: the input becomes a flex tensor, the net one burn
    /// operation ([`fused_forward`]), the outputs flex tensors read back.
    fn run_through_burn(
        &self,
        net: Net,
        input_nhwc: &[f32],
        split: bool,
    ) -> Result<Vec<Vec<f32>>, NetError> {
        let fused = self.net(net);
        check_len(net, fused, input_nhwc)?;
        let (h, w, c) = fused.program().input_shape();
        let input = Tensor::<4>::from_data(
            TensorData::new(input_nhwc.to_vec(), [1, h, w, c]),
            &self.device,
        );
        let outputs =
            fused_forward(fused, input, split).map_err(|e| NetError::Backend(e.to_string()))?;
        outputs
            .into_iter()
            .map(|t| {
                t.into_data()
                    .try_into_vec::<f32>()
                    .map_err(|e| NetError::Output {
                        net,
                        message: format!("{e:?}"),
                    })
            })
            .collect()
    }
}

impl NetRunner for FusedNets {
    fn run(&self, net: Net, input_nhwc: &[f32]) -> Result<Vec<Vec<f32>>, NetError> {
        self.run_through_burn(net, input_nhwc, false)
    }

    /// The large layers halved across [`holistream_kernels::split_pool`]'s two
    /// threads; the same outputs bit for bit.
    fn run_split(&self, net: Net, input_nhwc: &[f32]) -> Result<Vec<Vec<f32>>, NetError> {
        self.run_through_burn(net, input_nhwc, true)
    }

    fn fork(&self) -> Option<Box<dyn NetRunner>> {
        Some(Box::new(self.clone()))
    }
}
