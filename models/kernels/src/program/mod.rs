//! Lowers an ONNX graph (NCHW, as our converter writes it) to a list of fused
//! NHWC layers with weights packed once, and runs it on reused buffers.
//!
//! Lowering, in order:
//! 1. Each node becomes one [`Layer`] on NHWC tensors. Spatial zero `Pad`s are
//!    folded into the convolutions that read them; `Transpose(0, 2, 3, 1)` and
//!    `Reshape` are views (an NCHW tensor transposed to NHWC *is* our buffer);
//!    channel `Pad`/`Slice` become a channel remap.
//! 2. Fusion: an `Add` whose one operand is a convolution read by nothing else
//!    becomes that convolution's residual (a channel pad in front of the other
//!    operand folds into it), then an activation read only by one layer with
//!    no activation yet folds into that layer.
//! 3. Buffers: every tensor gets a slot, reused once the tensor's last reader
//!    has run (best fit), so a [`Scratch`] holds a handful of buffers that
//!    live across frames.
//!
//! By concern: `ir` holds the layers and values every pass shares, `lower`
//! does step 1, `fuse` step 2, `alloc` step 3, and `run` executes the
//! result. This file holds the public types ([`Program`], [`Scratch`],
//! [`OutputSpec`], the errors) and the pipeline that chains the steps
//! ([`Program::from_onnx`]); it lowers no node and runs no kernel.

mod alloc;
mod fuse;
mod ir;
mod lower;
mod run;

use crate::Isa;
use crate::onnx::{Graph, OnnxError};
use ir::{Layer, Shape};

/// A graph this lowering does not support, or a malformed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowerError(pub String);

impl std::fmt::Display for LowerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LowerError {}

impl From<OnnxError> for LowerError {
    fn from(e: OnnxError) -> Self {
        LowerError(e.to_string())
    }
}

/// A lowered layer with its values resolved to buffer slots.
#[derive(Debug, Clone)]
struct Step {
    layer: Layer,
    /// Large enough to halve across two threads
    /// ([`SPLIT_MIN_WORK`](alloc::SPLIT_MIN_WORK)).
    split: bool,
}

/// One graph output: where it ends up and its shape in TFLite (NHWC) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    pub name: String,
    /// NHWC for 4-D outputs, the ONNX shape otherwise.
    pub shape: Vec<usize>,
    slot: usize,
    len: usize,
}

/// A net lowered to fused NHWC layers, weights packed. Immutable; share it
/// between workers, each with its own [`Scratch`].
#[derive(Debug, Clone)]
pub struct Program {
    isa: Isa,
    /// `(height, width, channels)` of the input image.
    input_shape: (usize, usize, usize),
    input_slot: usize,
    steps: Vec<Step>,
    /// Slot of each value id.
    slot_of: Vec<usize>,
    /// Shape of each value id.
    shapes: Vec<Shape>,
    slot_sizes: Vec<usize>,
    im2col_size: usize,
    block_size: usize,
    outputs: Vec<OutputSpec>,
    /// Multiply-adds in the steps marked `split`.
    split_work: usize,
}

/// The buffers one worker runs a [`Program`] on, kept across frames.
#[derive(Debug, Clone, Default)]
pub struct Scratch {
    slots: Vec<Vec<f32>>,
    /// The buffers of the thread that runs the program.
    main: Local,
    /// The same for the second thread of a split layer ([`Program::run_on`]).
    helper: Local,
}

/// What one thread needs besides the layer's input and output.
#[derive(Debug, Clone, Default)]
struct Local {
    /// im2col matrices, and the transposed blocks of the sparse GEMM.
    im2col: Vec<f32>,
    /// A fused block's ring of expanded rows and its depthwise output row.
    block: Vec<f32>,
    taps: Vec<(usize, usize)>,
}

/// The wrong input length for a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSizeError {
    pub expected: usize,
    pub got: usize,
}

impl Program {
    /// Lowers the ONNX model in `onnx_bytes`; kernels run on [`Isa::detect`].
    pub fn from_onnx(onnx_bytes: &[u8]) -> Result<Program, LowerError> {
        let graph = Graph::parse(onnx_bytes)?;
        compile(&graph)
    }

    /// The same program, running its kernels on `isa` (tests compare them).
    pub fn with_isa(mut self, isa: Isa) -> Program {
        self.isa = isa;
        self
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `(height, width, channels)` of the input image.
    pub fn input_shape(&self) -> (usize, usize, usize) {
        self.input_shape
    }

    pub fn outputs(&self) -> &[OutputSpec] {
        &self.outputs
    }

    /// Number of fused layers (for reports).
    pub fn layer_count(&self) -> usize {
        self.steps.len()
    }

    /// Multiply-adds of the layers worth splitting ([`Program::run_on`]).
    pub fn split_work(&self) -> usize {
        self.split_work
    }

    /// Buffers sized for this program.
    pub fn scratch(&self) -> Scratch {
        Scratch {
            slots: self.slot_sizes.iter().map(|&n| vec![0.0; n]).collect(),
            main: Local {
                im2col: vec![0.0; self.im2col_size],
                block: vec![0.0; self.block_size],
                taps: Vec::new(),
            },
            // The helper never builds an im2col matrix (the main thread does,
            // before the split); the sparse GEMM sizes its part on first use.
            helper: Local {
                im2col: Vec::new(),
                block: vec![0.0; self.block_size],
                taps: Vec::new(),
            },
        }
    }
}

/// Nets with fewer multiply-adds than this in their large layers
/// ([`Program::split_work`]) are not split: the face and hand re-crop nets
/// (8–32 M) ran no faster on two threads, the pose and hand landmark nets
/// (130–320 M) a quarter to a third faster.
pub const NET_SPLIT_MIN_WORK: usize = 64_000_000;

/// Lowers, fuses and assigns buffers.
fn compile(graph: &Graph) -> Result<Program, LowerError> {
    let lowered = lower::lower_graph(graph)?;
    let mut values = lowered.values;
    let layers = fuse::fuse(lowered.layers, &mut values, &lowered.outputs);
    alloc::allocate(
        layers,
        values,
        lowered.input,
        &lowered.outputs,
        graph,
        lowered.input_shape,
    )
}
