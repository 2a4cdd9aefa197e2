//! Our fused kernels as a burn backend extension on `Flex`
//! (`#[backend_extension(Flex)]`, burn's `extension` feature): a lowered net
//! is one burn operation, taking and returning `Flex` tensors, so the fused
//! path is reached through burn's tensor API and dispatch like any other op,
//! and the kernels read the input tensor's buffer and write the outputs'
//! buffers in place.
//!
//! The operation spans a whole net rather than one ONNX node: the kernels'
//! gain comes from keeping NHWC through the net and fusing bias, activation,
//! residual add and channel pad into each convolution, which per-node hooks
//! in the generated NCHW code (burn-onnx's `register_op_override`) cannot
//! do: each overridden node would change layout twice and every clamp, pad,
//! add and resize between them would stay a separate `flex` pass.

use std::sync::{Arc, Mutex};

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{Device, Tensor, TensorData};
use holistream_kernels::{Program, Scratch, split_pool};

/// One net lowered to fused NHWC layers, with the buffers it runs on
/// (reused across frames): the argument of [`FusedKernels::fused_net`].
#[derive(Debug)]
pub struct FusedNet {
    /// Shared between the workers' instances (the packed weights).
    program: Arc<Program>,
    /// A mutex (uncontended: one worker per instance) rather than a
    /// `RefCell`, so the net is `Sync`. A panic while it is held cannot
    /// leave the buffers in a state that matters: every run overwrites what
    /// it reads, so a poisoned lock is still used.
    scratch: Mutex<Scratch>,
}

impl FusedNet {
    pub fn new(program: Arc<Program>) -> Self {
        let scratch = Mutex::new(program.scratch());
        Self { program, scratch }
    }

    pub fn program(&self) -> &Arc<Program> {
        &self.program
    }

    /// Input floats the net expects (`H * W * C`).
    pub fn input_len(&self) -> usize {
        let (h, w, c) = self.program.input_shape();
        h * w * c
    }

    /// Runs the program on a flat NHWC slice; `split`: its large layers
    /// halved across the two threads of [`split_pool`].
    pub(crate) fn run_slice(&self, input: &[f32], split: bool) -> Option<Vec<Vec<f32>>> {
        let pool = split.then(split_pool);
        self.program.run_on(input, &mut self.scratch(), pool).ok()
    }

    /// The buffers, locked.
    pub(crate) fn scratch(&self) -> std::sync::MutexGuard<'_, Scratch> {
        self.scratch.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fused kernels as a burn operation. Implemented for `Flex` (burn's CPU
/// backend); burn routes a call on another backend to a panic, so callers
/// check the device first ([`fused_forward`] does).
#[backend_extension(Flex)]
pub trait FusedKernels: Backend {
    /// Runs `net` on `input`, an f32 `[1, H, W, C]` NHWC image with `(H, W,
    /// C)` the net's input shape (checked by the caller). Returns the net's
    /// outputs in graph order, each flattened (NHWC for 4-D ones) as a 1-D
    /// tensor. `split`: the large layers are halved across two threads
    /// ([`Program::run_on`]); the outputs are the same bit for bit.
    fn fused_net(input: FloatTensor<Self>, net: &FusedNet, split: bool) -> Vec<FloatTensor<Self>>;
}

impl FusedKernels for Flex {
    fn fused_net(input: FlexTensor, net: &FusedNet, split: bool) -> Vec<FlexTensor> {
        // Zero-copy when the tensor is contiguous f32 (a fresh input is);
        // a strided view is made contiguous first.
        let contiguous;
        let data = match input.as_slice::<f32>() {
            Some(data) => data,
            None => {
                contiguous = input.to_contiguous();
                contiguous
                    .as_slice::<f32>()
                    .expect("fused_net takes an f32 tensor")
            }
        };
        let outputs = net
            .run_slice(data, split)
            .expect("fused_net: the caller checks the input size");
        outputs
            .into_iter()
            .map(|v| {
                let len = v.len();
                FlexTensor::from_data(TensorData::new(v, [len]))
            })
            .collect()
    }
}

/// Errors of [`fused_forward`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FusedForwardError {
    #[error("the fused kernels run on burn's flex (CPU) device, not {0}")]
    Device(String),
    #[error("input of shape {got:?}, expected [1, {h}, {w}, {c}]")]
    Shape {
        got: Vec<usize>,
        h: usize,
        w: usize,
        c: usize,
    },
}

/// Runs `net` on `input` (`[1, H, W, C]`, NHWC, on the flex device) through
/// burn's dispatch to [`FusedKernels::fused_net`]; returns the outputs in
/// graph order, each flattened as in the TFLite model. `split`: see
/// [`FusedKernels::fused_net`].
pub fn fused_forward(
    net: &FusedNet,
    input: Tensor<4>,
    split: bool,
) -> Result<Vec<Tensor<1>>, FusedForwardError> {
    if input.device() != Device::flex() {
        return Err(FusedForwardError::Device(format!("{:?}", input.device())));
    }
    let (h, w, c) = net.program.input_shape();
    let dims = input.dims();
    if dims != [1, h, w, c] {
        return Err(FusedForwardError::Shape {
            got: dims.to_vec(),
            h,
            w,
            c,
        });
    }
    let outputs = <Dispatch as FusedKernels>::fused_net(input.into_dispatch(), net, split);
    Ok(outputs
        .into_iter()
        .map(Tensor::<1>::from_dispatch)
        .collect())
}
