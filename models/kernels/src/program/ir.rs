//! The lowered graph's vocabulary: tensor shapes and values ([`Shape`],
//! [`Value`], [`V`]), pointwise weights ([`Pointwise`]) and the fused NHWC
//! layers ([`Layer`], whose output `dst` is stored once beside its [`Op`]).
//! Plain data and the questions every pass asks of it (which values a layer
//! reads, its fused activation, its work); it knows nothing of ONNX nodes,
//! buffer slots or instruction sets.

use crate::kernels::{Activation, PackedDepthwise, PackedMatrix, SparseMatrix, Window};

/// A tensor's shape as this runtime stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Shape {
    /// An NCHW tensor `[1, c, h, w]` of the graph, stored NHWC.
    Nhwc { h: usize, w: usize, c: usize },
    /// Any other tensor, stored row-major in its logical shape.
    Flat(Vec<usize>),
}

impl Shape {
    pub(super) fn len(&self) -> usize {
        match self {
            Shape::Nhwc { h, w, c } => h * w * c,
            Shape::Flat(dims) => dims.iter().product(),
        }
    }

    /// The innermost dimension (channels, for per-channel activations).
    pub(super) fn channels(&self) -> usize {
        match self {
            Shape::Nhwc { c, .. } => *c,
            Shape::Flat(dims) => dims.last().copied().unwrap_or(1).max(1),
        }
    }
}

/// One tensor of the lowered graph: the buffer it lives in (views share
/// their source's) and its shape.
#[derive(Debug, Clone)]
pub(super) struct Value {
    pub(super) storage: usize,
    pub(super) shape: Shape,
}

/// A value id (index into `Lowering::values`).
pub(super) type V = usize;

/// The weights of a pointwise convolution inside a fused block.
#[derive(Debug, Clone)]
pub(super) enum Pointwise {
    Dense(PackedMatrix),
    Sparse(SparseMatrix),
}

impl Pointwise {
    pub(super) fn n(&self) -> usize {
        match self {
            Pointwise::Dense(w) => w.n,
            Pointwise::Sparse(w) => w.n,
        }
    }
}

/// One fused NHWC layer: what it computes ([`Op`]) into value `dst`.
#[derive(Debug, Clone)]
pub(super) struct Layer {
    pub(super) dst: V,
    pub(super) op: Op,
}

/// What a [`Layer`] computes, from which values.
#[derive(Debug, Clone)]
pub(super) enum Op {
    /// An inverted-residual block, run one output row at a time so its wide
    /// intermediate tensors stay in cache: optional pointwise expansion into
    /// a ring of `kh` rows, depthwise, pointwise projection (+ residual).
    Block {
        src: V,
        expand: Option<(Pointwise, Activation)>,
        win: Window,
        dw: PackedDepthwise,
        dw_act: Activation,
        project: Pointwise,
        act: Activation,
        residual: Option<(V, usize)>,
    },
    /// Pointwise convolution or fully connected layer: `m` rows of `lda`.
    Gemm {
        src: V,
        m: usize,
        w: PackedMatrix,
        act: Activation,
        residual: Option<(V, usize)>,
    },
    /// Pointwise convolution with mostly zero weights.
    SparseGemm {
        src: V,
        m: usize,
        w: SparseMatrix,
        act: Activation,
        residual: Option<(V, usize)>,
    },
    /// Any other dense (group 1) convolution: im2col, then the GEMM.
    Dense {
        src: V,
        win: Window,
        c_in: usize,
        w: PackedMatrix,
        act: Activation,
        residual: Option<(V, usize)>,
    },
    Depthwise {
        src: V,
        win: Window,
        w: PackedDepthwise,
        act: Activation,
    },
    MaxPool {
        src: V,
        win: Window,
        c: usize,
    },
    /// Bilinear resize, then `act` (only where a pointwise layer with that
    /// activation was moved before the resize).
    Resize {
        src: V,
        oh: usize,
        ow: usize,
        act: Activation,
    },
    DepthToSpace {
        src: V,
        bs: usize,
    },
    Remap {
        src: V,
        start: isize,
    },
    Add {
        a: V,
        b: V,
        act: Activation,
    },
    Activate {
        src: V,
        act: Activation,
    },
    Mean {
        src: V,
    },
    Concat {
        srcs: Vec<V>,
    },
}

impl Layer {
    pub(super) fn srcs(&self) -> Vec<V> {
        match &self.op {
            Op::Block { src, residual, .. }
            | Op::Gemm { src, residual, .. }
            | Op::SparseGemm { src, residual, .. }
            | Op::Dense { src, residual, .. } => {
                std::iter::once(*src).chain(residual.map(|r| r.0)).collect()
            }
            Op::Depthwise { src, .. }
            | Op::MaxPool { src, .. }
            | Op::Resize { src, .. }
            | Op::DepthToSpace { src, .. }
            | Op::Remap { src, .. }
            | Op::Activate { src, .. }
            | Op::Mean { src, .. } => vec![*src],
            Op::Add { a, b, .. } => vec![*a, *b],
            Op::Concat { srcs } => srcs.clone(),
        }
    }

    /// The fused activation, for layers that have one.
    pub(super) fn act_mut(&mut self) -> Option<&mut Activation> {
        match &mut self.op {
            Op::Gemm { act, .. }
            | Op::SparseGemm { act, .. }
            | Op::Dense { act, .. }
            | Op::Depthwise { act, .. }
            | Op::Add { act, .. } => Some(act),
            _ => None,
        }
    }
}
