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

use std::collections::HashMap;
use std::ops::Range;

use crate::Isa;
use crate::kernels::{
    self, Activation, NR, PackedDepthwise, PackedMatrix, Residual, SparseMatrix, Window, round_up,
};

/// Pointwise convolutions with at most this share of non-zero weights run on
/// [`kernels::sparse_gemm`].
const SPARSE_MAX_DENSITY: f32 = 0.4;

/// Inverted-residual blocks whose depthwise input is at least this big run
/// fused, row by row ([`Layer::Block`]). 1 MiB takes in the 56x56x144 blocks
/// of `pose_detection` and `hand_landmark_full` (1.8 MB: fused 0.8 ms
/// against 1.1 ms as three layers on a Zen 3 core, 512 KiB L2).
const FUSE_MIN_BYTES: usize = 1024 * 1024;

/// Whether [`pointwise_before_upsample`] runs. Off: it makes
/// `pose_detection` about 0.9 ms faster (its two upsample + pointwise
/// pairs: 1.26 ms -> 0.37 ms; fixture error vs TFLite unchanged, 1.1e-3 at
/// scale 754), but the rounding change moves `model_parity`'s faceapi4 left
/// hand, a case that amplifies any perturbation through the ROI loop, from
/// 1.67% to 2.04% mean error, past the 2% limit.
const POINTWISE_BEFORE_UPSAMPLE: bool = false;
use crate::onnx::{Graph, Node, OnnxError, Tensor};

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

fn unsupported<T>(node: &Node, what: impl std::fmt::Display) -> Result<T, LowerError> {
    Err(LowerError(format!(
        "{} node {:?}: {what}",
        node.op_type, node.name
    )))
}

/// A tensor's shape as this runtime stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// An NCHW tensor `[1, c, h, w]` of the graph, stored NHWC.
    Nhwc { h: usize, w: usize, c: usize },
    /// Any other tensor, stored row-major in its logical shape.
    Flat(Vec<usize>),
}

impl Shape {
    fn len(&self) -> usize {
        match self {
            Shape::Nhwc { h, w, c } => h * w * c,
            Shape::Flat(dims) => dims.iter().product(),
        }
    }

    /// The innermost dimension (channels, for per-channel activations).
    fn channels(&self) -> usize {
        match self {
            Shape::Nhwc { c, .. } => *c,
            Shape::Flat(dims) => dims.last().copied().unwrap_or(1).max(1),
        }
    }
}

/// One tensor of the lowered graph: the buffer it lives in (views share
/// their source's) and its shape.
#[derive(Debug, Clone)]
struct Value {
    storage: usize,
    shape: Shape,
}

/// A value id (index into `Lowering::values`).
type V = usize;

/// The weights of a pointwise convolution inside a fused block.
#[derive(Debug, Clone)]
enum Pointwise {
    Dense(PackedMatrix),
    Sparse(SparseMatrix),
}

impl Pointwise {
    fn n(&self) -> usize {
        match self {
            Pointwise::Dense(w) => w.n,
            Pointwise::Sparse(w) => w.n,
        }
    }

    /// `out = act(a * w + bias + residual)` for `m` rows of `a` (dense).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        isa: Isa,
        a: &[f32],
        m: usize,
        act: &Activation,
        residual: Option<Residual<'_>>,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        match self {
            Pointwise::Dense(w) => kernels::gemm(isa, a, m, w.k, w, act, residual, out),
            Pointwise::Sparse(w) => {
                kernels::sparse_gemm(isa, a, m, w.k, w, act, residual, out, scratch)
            }
        }
    }
}

/// One fused NHWC layer.
#[derive(Debug, Clone)]
enum Layer {
    /// An inverted-residual block, run one output row at a time so its wide
    /// intermediate tensors stay in cache: optional pointwise expansion into
    /// a ring of `kh` rows, depthwise, pointwise projection (+ residual).
    Block {
        src: V,
        dst: V,
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
        dst: V,
        m: usize,
        w: PackedMatrix,
        act: Activation,
        residual: Option<(V, usize)>,
    },
    /// Pointwise convolution with mostly zero weights.
    SparseGemm {
        src: V,
        dst: V,
        m: usize,
        w: SparseMatrix,
        act: Activation,
        residual: Option<(V, usize)>,
    },
    /// Any other dense (group 1) convolution: im2col, then the GEMM.
    Dense {
        src: V,
        dst: V,
        win: Window,
        c_in: usize,
        w: PackedMatrix,
        act: Activation,
        residual: Option<(V, usize)>,
    },
    Depthwise {
        src: V,
        dst: V,
        win: Window,
        w: PackedDepthwise,
        act: Activation,
    },
    MaxPool {
        src: V,
        dst: V,
        win: Window,
        c: usize,
    },
    /// Bilinear resize, then `act` (only where a pointwise layer with that
    /// activation was moved before the resize).
    Resize {
        src: V,
        dst: V,
        oh: usize,
        ow: usize,
        act: Activation,
    },
    DepthToSpace {
        src: V,
        dst: V,
        bs: usize,
    },
    Remap {
        src: V,
        dst: V,
        start: isize,
    },
    Add {
        a: V,
        b: V,
        dst: V,
        act: Activation,
    },
    Activate {
        src: V,
        dst: V,
        act: Activation,
    },
    Mean {
        src: V,
        dst: V,
    },
    Concat {
        srcs: Vec<V>,
        dst: V,
    },
}

impl Layer {
    fn dst(&self) -> V {
        match self {
            Layer::Block { dst, .. }
            | Layer::Gemm { dst, .. }
            | Layer::SparseGemm { dst, .. }
            | Layer::Dense { dst, .. }
            | Layer::Depthwise { dst, .. }
            | Layer::MaxPool { dst, .. }
            | Layer::Resize { dst, .. }
            | Layer::DepthToSpace { dst, .. }
            | Layer::Remap { dst, .. }
            | Layer::Add { dst, .. }
            | Layer::Activate { dst, .. }
            | Layer::Mean { dst, .. }
            | Layer::Concat { dst, .. } => *dst,
        }
    }

    fn srcs(&self) -> Vec<V> {
        match self {
            Layer::Block { src, residual, .. }
            | Layer::Gemm { src, residual, .. }
            | Layer::SparseGemm { src, residual, .. }
            | Layer::Dense { src, residual, .. } => {
                std::iter::once(*src).chain(residual.map(|r| r.0)).collect()
            }
            Layer::Depthwise { src, .. }
            | Layer::MaxPool { src, .. }
            | Layer::Resize { src, .. }
            | Layer::DepthToSpace { src, .. }
            | Layer::Remap { src, .. }
            | Layer::Activate { src, .. }
            | Layer::Mean { src, .. } => vec![*src],
            Layer::Add { a, b, .. } => vec![*a, *b],
            Layer::Concat { srcs, .. } => srcs.clone(),
        }
    }

    /// The fused activation, for layers that have one.
    fn act_mut(&mut self) -> Option<&mut Activation> {
        match self {
            Layer::Gemm { act, .. }
            | Layer::SparseGemm { act, .. }
            | Layer::Dense { act, .. }
            | Layer::Depthwise { act, .. }
            | Layer::Add { act, .. } => Some(act),
            _ => None,
        }
    }

    fn set_dst(&mut self, v: V) {
        match self {
            Layer::Block { dst, .. }
            | Layer::Gemm { dst, .. }
            | Layer::SparseGemm { dst, .. }
            | Layer::Dense { dst, .. }
            | Layer::Depthwise { dst, .. }
            | Layer::MaxPool { dst, .. }
            | Layer::Resize { dst, .. }
            | Layer::DepthToSpace { dst, .. }
            | Layer::Remap { dst, .. }
            | Layer::Add { dst, .. }
            | Layer::Activate { dst, .. }
            | Layer::Mean { dst, .. }
            | Layer::Concat { dst, .. } => *dst = v,
        }
    }
}

/// A lowered layer with its values resolved to buffer slots.
#[derive(Debug, Clone)]
struct Step {
    layer: Layer,
    /// Large enough to halve across two threads ([`SPLIT_MIN_WORK`]).
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
        lower(&graph)
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

    /// Runs the net on one NHWC image; returns the outputs in graph order,
    /// each flattened (NHWC for 4-D ones). `scratch` is resized if it was
    /// made for another program.
    ///
    /// # Shapes
    /// - `input_nhwc`: `[H * W * C]` with `(H, W, C) = self.input_shape()`
    pub fn run(
        &self,
        input_nhwc: &[f32],
        scratch: &mut Scratch,
    ) -> Result<Vec<Vec<f32>>, InputSizeError> {
        self.run_on(input_nhwc, scratch, None)
    }

    /// [`Program::run`], with each large layer split in two halves of its
    /// output rows, run on two threads of `pool` (`None`: on the calling
    /// thread). Every output element is computed by the same operations as
    /// in [`Program::run`], so the results are the same bit for bit. A small
    /// net (under [`NET_SPLIT_MIN_WORK`] in such layers) runs on one thread:
    /// there the threads' hand-offs cost what the second core gains.
    ///
    /// One frame's latency is what this buys, where a core would otherwise
    /// sit idle (the pose nets run before the face and hands can start); a
    /// server that already runs a frame per core gains nothing from it.
    pub fn run_on(
        &self,
        input_nhwc: &[f32],
        scratch: &mut Scratch,
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<Vec<Vec<f32>>, InputSizeError> {
        let (h, w, c) = self.input_shape;
        if input_nhwc.len() != h * w * c {
            return Err(InputSizeError {
                expected: h * w * c,
                got: input_nhwc.len(),
            });
        }
        if scratch.slots.len() != self.slot_sizes.len()
            || scratch
                .slots
                .iter()
                .zip(&self.slot_sizes)
                .any(|(s, &n)| s.len() < n)
            || scratch.main.im2col.len() < self.im2col_size
            || scratch.main.block.len() < self.block_size
            || scratch.helper.block.len() < self.block_size
        {
            *scratch = self.scratch();
        }
        scratch.slots[self.input_slot][..input_nhwc.len()].copy_from_slice(input_nhwc);
        let worth_it = self.split_work >= NET_SPLIT_MIN_WORK;
        match pool.filter(|p| worth_it && p.current_num_threads() >= 2) {
            // Inside the pool, `rayon::join` hands the second half to the
            // pool's other thread when it is free, else runs it here.
            Some(pool) => pool.install(|| {
                for step in &self.steps {
                    self.run_step(&step.layer, scratch, step.split);
                }
            }),
            None => {
                for step in &self.steps {
                    self.run_step(&step.layer, scratch, false);
                }
            }
        }
        Ok(self
            .outputs
            .iter()
            .map(|o| scratch.slots[o.slot][..o.len].to_vec())
            .collect())
    }

    /// Runs the net once like [`Program::run`] and returns the wall time of
    /// each layer with a short description (kind and shape), in run order:
    /// where the time goes, for `holistream bench`.
    pub fn profile(
        &self,
        input_nhwc: &[f32],
        scratch: &mut Scratch,
    ) -> Result<Vec<(String, std::time::Duration)>, InputSizeError> {
        self.run(input_nhwc, scratch)?;
        Ok(self
            .steps
            .iter()
            .map(|step| {
                let start = std::time::Instant::now();
                self.run_step(&step.layer, scratch, false);
                (self.describe(&step.layer), start.elapsed())
            })
            .collect())
    }

    /// `kind out-shape` of a layer, e.g. `depthwise 3x3/2 64x64x24`.
    fn describe(&self, layer: &Layer) -> String {
        let shape = match &self.shapes[layer.dst()] {
            Shape::Nhwc { h, w, c } => format!("{h}x{w}x{c}"),
            Shape::Flat(d) => format!("{d:?}"),
        };
        let kind = match layer {
            Layer::Block {
                expand, win, dw, ..
            } => format!(
                "block{} dw{}x{}/{} c={}",
                if expand.is_some() { " expand" } else { "" },
                win.kh,
                win.kw,
                win.stride_h,
                dw.c
            ),
            Layer::Gemm { w, residual, .. } => {
                format!(
                    "pointwise k={}{}",
                    w.k,
                    if residual.is_some() { "+res" } else { "" }
                )
            }
            Layer::SparseGemm { w, residual, .. } => format!(
                "sparse pointwise k={} d={:.2}{}",
                w.k,
                w.density(),
                if residual.is_some() { "+res" } else { "" }
            ),
            Layer::Dense { win, .. } => format!("conv {}x{}/{}", win.kh, win.kw, win.stride_h),
            Layer::Depthwise { win, .. } => {
                format!("depthwise {}x{}/{}", win.kh, win.kw, win.stride_h)
            }
            Layer::MaxPool { .. } => "maxpool".into(),
            Layer::Resize { .. } => "resize".into(),
            Layer::DepthToSpace { .. } => "depth_to_space".into(),
            Layer::Remap { .. } => "channel remap".into(),
            Layer::Add { .. } => "add".into(),
            Layer::Activate { .. } => "activation".into(),
            Layer::Mean { .. } => "mean".into(),
            Layer::Concat { .. } => "concat".into(),
        };
        format!("{kind} {shape}")
    }

    fn run_step(&self, layer: &Layer, scratch: &mut Scratch, split: bool) {
        let isa = self.isa;
        let dst_slot = self.slot_of[layer.dst()];
        // Lowering never gives a layer's output the slot of one of its
        // inputs, so the output buffer can be taken out while inputs are read.
        let mut out = std::mem::take(&mut scratch.slots[dst_slot]);
        let Scratch {
            slots,
            main,
            helper,
        } = &mut *scratch;
        let slots = &*slots;
        let buf = |v: V| -> &[f32] { &slots[self.slot_of[v]][..self.shapes[v].len()] };
        // The residual rows `rows` of a layer's output.
        let res = |r: &Option<(V, usize)>, rows: &Range<usize>| {
            r.map(|(v, channels)| Residual {
                data: &buf(v)[rows.start * channels..rows.end * channels],
                channels,
            })
        };
        match layer {
            Layer::Block {
                src,
                expand,
                win,
                dw,
                dw_act,
                project,
                act,
                residual,
                ..
            } => {
                let (oh, ow) = win.output_size().unwrap_or((0, 0));
                let co = project.n();
                let x = buf(*src);
                let rows = |oys: Range<usize>, out: &mut [f32], local: &mut Local| {
                    // Rows of pixels: the residual's rows are pixels.
                    let r = res(residual, &(oys.start * ow..oys.end * ow));
                    let block = BlockLayer {
                        expand: expand.as_ref(),
                        win,
                        dw,
                        dw_act,
                        project,
                        act,
                    };
                    block.run_rows(isa, x, oys, r, out, local);
                };
                halves(split, oh, ow * co, 1, &mut out, main, helper, rows);
            }
            Layer::Gemm {
                src,
                m,
                w,
                act,
                residual,
                ..
            } => {
                let a = buf(*src);
                let rows = |r: Range<usize>, out: &mut [f32], _: &mut Local| {
                    let a = &a[r.start * w.k..];
                    kernels::gemm(isa, a, r.len(), w.k, w, act, res(residual, &r), out)
                };
                halves(split, *m, w.n, GEMM_ALIGN, &mut out, main, helper, rows);
            }
            Layer::SparseGemm {
                src,
                m,
                w,
                act,
                residual,
                ..
            } => {
                let a = buf(*src);
                let rows = |r: Range<usize>, out: &mut [f32], local: &mut Local| {
                    let a = &a[r.start * w.k..];
                    let r_res = res(residual, &r);
                    kernels::sparse_gemm(
                        isa,
                        a,
                        r.len(),
                        w.k,
                        w,
                        act,
                        r_res,
                        out,
                        &mut local.im2col,
                    )
                };
                halves(split, *m, w.n, GEMM_ALIGN, &mut out, main, helper, rows);
            }
            Layer::Dense {
                src,
                win,
                c_in,
                w,
                act,
                residual,
                ..
            } => {
                let (oh, ow) = win.output_size().unwrap_or((0, 0));
                // The matrix is built once, on this thread; both halves of
                // the GEMM read it.
                let mut cols = std::mem::take(&mut main.im2col);
                kernels::im2col(buf(*src), win, *c_in, &mut cols);
                let a = &cols[..];
                let rows = |r: Range<usize>, out: &mut [f32], _: &mut Local| {
                    let a = &a[r.start * w.k..];
                    kernels::gemm(isa, a, r.len(), w.k, w, act, res(residual, &r), out)
                };
                halves(
                    split,
                    oh * ow,
                    w.n,
                    GEMM_ALIGN,
                    &mut out,
                    main,
                    helper,
                    rows,
                );
                main.im2col = cols;
            }
            Layer::Depthwise {
                src, win, w, act, ..
            } => {
                let (oh, ow) = win.output_size().unwrap_or((0, 0));
                if split {
                    let x = buf(*src);
                    let rows = |oys: Range<usize>, out: &mut [f32], local: &mut Local| {
                        let mut offsets = Vec::with_capacity(win.kh);
                        for (i, oy) in oys.enumerate() {
                            let (iy0, ky_range) = win.rows(oy);
                            offsets.clear();
                            offsets.extend(
                                ky_range.map(|ky| (iy0 + ky as isize) as usize * win.w * w.c),
                            );
                            let out_row = &mut out[i * ow * w.c..(i + 1) * ow * w.c];
                            kernels::depthwise_row(
                                isa,
                                x,
                                &offsets,
                                oy,
                                win,
                                w,
                                act,
                                out_row,
                                &mut local.taps,
                            );
                        }
                    };
                    halves(true, oh, ow * w.c, 1, &mut out, main, helper, rows);
                } else {
                    kernels::depthwise(isa, buf(*src), win, w, act, &mut out)
                }
            }
            Layer::MaxPool { src, win, c, .. } => {
                kernels::max_pool(isa, buf(*src), win, *c, &mut out)
            }
            Layer::Resize {
                src, oh, ow, act, ..
            } => {
                let Shape::Nhwc { h, w, c } = self.shapes[*src] else {
                    unreachable!("lowering checked: resize of an NHWC tensor")
                };
                kernels::resize_bilinear(isa, buf(*src), h, w, c, *oh, *ow, act, &mut out)
            }
            Layer::DepthToSpace { src, dst, bs } => {
                let (Shape::Nhwc { h, w, .. }, Shape::Nhwc { c, .. }) =
                    (&self.shapes[*src], &self.shapes[*dst])
                else {
                    unreachable!("lowering checked: depth-to-space of an NHWC tensor")
                };
                kernels::depth_to_space(buf(*src), *h, *w, *c, *bs, &mut out)
            }
            Layer::Remap { src, dst, start } => {
                let (s, d) = (&self.shapes[*src], &self.shapes[*dst]);
                let pixels = s.len() / s.channels();
                kernels::remap_channels(
                    buf(*src),
                    pixels,
                    s.channels(),
                    *start,
                    d.channels(),
                    &mut out,
                )
            }
            Layer::Add { a, b, dst, act } => {
                let n = self.shapes[*dst].len();
                kernels::add(
                    isa,
                    buf(*a),
                    buf(*b),
                    self.shapes[*dst].channels(),
                    act,
                    &mut out[..n],
                )
            }
            Layer::Activate { src, dst, act } => {
                kernels::activate(isa, buf(*src), self.shapes[*dst].channels(), act, &mut out)
            }
            Layer::Mean { src, .. } => {
                let s = &self.shapes[*src];
                kernels::global_mean(buf(*src), s.len() / s.channels(), s.channels(), &mut out)
            }
            Layer::Concat { srcs, .. } => {
                let mut at = 0;
                for v in srcs {
                    let b = buf(*v);
                    out[at..at + b.len()].copy_from_slice(b);
                    at += b.len();
                }
            }
        }
        scratch.slots[dst_slot] = out;
    }
}

/// Multiply-adds of a layer, roughly: whether splitting it across two
/// threads pays for the hand-off.
fn work(layer: &Layer) -> usize {
    let rows_of = |win: &Window| {
        let (oh, ow) = win.output_size().unwrap_or((0, 0));
        oh * ow
    };
    let pointwise = |pw: &Pointwise| match pw {
        Pointwise::Dense(w) => w.k * w.n,
        Pointwise::Sparse(w) => (w.density() * (w.k * w.n) as f32) as usize,
    };
    match layer {
        Layer::Block {
            expand,
            win,
            dw,
            project,
            ..
        } => {
            rows_of(win)
                * (dw.c * win.kh * win.kw
                    + pointwise(project)
                    + expand.as_ref().map_or(0, |(pw, _)| pointwise(pw)))
        }
        Layer::Gemm { m, w, .. } => m * w.k * w.n,
        Layer::SparseGemm { m, w, .. } => (w.density() * (m * w.k * w.n) as f32) as usize,
        Layer::Dense { win, w, .. } => rows_of(win) * w.k * w.n,
        Layer::Depthwise { win, w, .. } => rows_of(win) * w.c * win.kh * win.kw,
        _ => 0,
    }
}

/// Layers with fewer multiply-adds than this run on one thread even when
/// split (about 30 µs of work: below it the hand-off costs more than the
/// second thread gains).
const SPLIT_MIN_WORK: usize = 1 << 19;

/// Nets with fewer multiply-adds than this in their large layers
/// ([`Program::split_work`]) are not split: the face and hand re-crop nets
/// (8–32 M) ran no faster on two threads, the pose and hand landmark nets
/// (130–320 M) a quarter to a third faster.
pub const NET_SPLIT_MIN_WORK: usize = 64_000_000;

/// Split GEMMs at a multiple of this many rows: the sparse GEMM's pixel
/// block, so each half's blocks are whole ones of the unsplit GEMM.
const GEMM_ALIGN: usize = 32;

/// Runs `f` on output rows `0..rows` of `out` (`row_len` floats each), as
/// two halves split at a multiple of `align` rows, on two threads of the
/// current rayon pool when `split` (the second half with `helper`'s
/// buffers), else whole on this thread. `f` gets the rows, their part of
/// `out` and the buffers to use.
#[allow(clippy::too_many_arguments)]
fn halves<F>(
    split: bool,
    rows: usize,
    row_len: usize,
    align: usize,
    out: &mut [f32],
    main: &mut Local,
    helper: &mut Local,
    f: F,
) where
    F: Fn(Range<usize>, &mut [f32], &mut Local) + Sync,
{
    let out = &mut out[..rows * row_len];
    let mid = (rows / 2).div_ceil(align) * align;
    if !split || mid == 0 || mid >= rows {
        f(0..rows, out, main);
        return;
    }
    let (first, second) = out.split_at_mut(mid * row_len);
    rayon::join(|| f(0..mid, first, main), || f(mid..rows, second, helper));
}

/// The parts of a [`Layer::Block`] its rows are computed from.
struct BlockLayer<'a> {
    expand: Option<&'a (Pointwise, Activation)>,
    win: &'a Window,
    dw: &'a PackedDepthwise,
    dw_act: &'a Activation,
    project: &'a Pointwise,
    act: &'a Activation,
}

impl BlockLayer<'_> {
    /// Output rows `oys` into `out` (those rows only), one row at a time:
    /// the expanded input rows it needs into `local`'s ring (each computed
    /// once per call), the depthwise row, its projection.
    fn run_rows(
        &self,
        isa: Isa,
        x: &[f32],
        oys: Range<usize>,
        residual: Option<Residual<'_>>,
        out: &mut [f32],
        local: &mut Local,
    ) {
        let win = self.win;
        let (_, ow) = win.output_size().unwrap_or((0, 0));
        let (w, ce, co) = (win.w, self.dw.c, self.project.n());
        let (ring, dw_row) = local.block.split_at_mut(win.kh * w * ce);
        let k_in = x.len() / (win.h * w).max(1);
        // Input row each ring slot holds (slot = row % kh).
        let mut held = vec![usize::MAX; win.kh];
        let mut rows = Vec::with_capacity(win.kh);
        let first = oys.start;
        for oy in oys {
            let (iy0, ky_range) = win.rows(oy);
            rows.clear();
            for ky in ky_range {
                let iy = (iy0 + ky as isize) as usize;
                match self.expand {
                    Some((pw, pw_act)) => {
                        let slot = iy % win.kh;
                        if held[slot] != iy {
                            pw.run(
                                isa,
                                &x[iy * w * k_in..(iy + 1) * w * k_in],
                                w,
                                pw_act,
                                None,
                                &mut ring[slot * w * ce..(slot + 1) * w * ce],
                                &mut local.im2col,
                            );
                            held[slot] = iy;
                        }
                        rows.push(slot * w * ce);
                    }
                    None => rows.push(iy * w * ce),
                }
            }
            let input = if self.expand.is_some() { &*ring } else { x };
            let dw_out = &mut dw_row[..ow * ce];
            kernels::depthwise_row(
                isa,
                input,
                &rows,
                oy,
                win,
                self.dw,
                self.dw_act,
                dw_out,
                &mut local.taps,
            );
            let i = oy - first;
            let r = residual.map(|r| Residual {
                data: &r.data[i * ow * r.channels..(i + 1) * ow * r.channels],
                channels: r.channels,
            });
            self.project.run(
                isa,
                dw_out,
                ow,
                self.act,
                r,
                &mut out[i * ow * co..(i + 1) * ow * co],
                &mut local.im2col,
            );
        }
    }
}

/// The lowering state: values by id and by ONNX name, layers in order.
struct Lowering<'g> {
    graph: &'g Graph,
    values: Vec<Value>,
    names: HashMap<String, V>,
    /// Spatial zero pads not materialised: name -> (source value, pads
    /// top/left/bottom/right), folded into the convolutions that read them.
    pending_pads: HashMap<String, (V, [usize; 4])>,
    layers: Vec<Layer>,
    storages: usize,
}

impl<'g> Lowering<'g> {
    fn new_value(&mut self, shape: Shape) -> V {
        let storage = self.storages;
        self.storages += 1;
        self.values.push(Value { storage, shape });
        self.values.len() - 1
    }

    fn view(&mut self, of: V, shape: Shape) -> V {
        let storage = self.values[of].storage;
        self.values.push(Value { storage, shape });
        self.values.len() - 1
    }

    fn value(&self, node: &Node, name: &str) -> Result<V, LowerError> {
        if self.pending_pads.contains_key(name) {
            return unsupported(
                node,
                format!("reads {name:?}, a spatial Pad only a Conv may read"),
            );
        }
        self.names.get(name).copied().ok_or_else(|| {
            LowerError(format!(
                "{} node {:?}: unknown input {name:?}",
                node.op_type, node.name
            ))
        })
    }

    fn nhwc(&self, node: &Node, v: V) -> Result<(usize, usize, usize), LowerError> {
        match self.values[v].shape {
            Shape::Nhwc { h, w, c } => Ok((h, w, c)),
            ref s => unsupported(node, format!("expects a [1, C, H, W] input, got {s:?}")),
        }
    }

    fn constant(&self, node: &Node, index: usize) -> Result<Option<&'g Tensor>, LowerError> {
        match node.inputs.get(index).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(name) => match self.graph.initializers.get(name) {
                Some(t) => Ok(Some(t)),
                None => unsupported(node, format!("input {index} ({name:?}) is not a constant")),
            },
        }
    }

    fn floats(&self, node: &Node, index: usize) -> Result<Option<&'g [f32]>, LowerError> {
        match self.constant(node, index)? {
            None => Ok(None),
            Some(t) => match t.as_f32() {
                Some(v) => Ok(Some(v)),
                None => unsupported(node, format!("input {index} is not float32")),
            },
        }
    }

    fn ints(&self, node: &Node, index: usize) -> Result<Option<&'g [i64]>, LowerError> {
        match self.constant(node, index)? {
            None => Ok(None),
            Some(t) => match t.as_i64() {
                Some(v) => Ok(Some(v)),
                None => unsupported(node, format!("input {index} is not int64")),
            },
        }
    }

    fn define(
        &mut self,
        node: &Node,
        shape: Shape,
        layer: impl FnOnce(V) -> Layer,
    ) -> Result<(), LowerError> {
        let Some(name) = node.outputs.first() else {
            return unsupported(node, "no output");
        };
        let dst = self.new_value(shape);
        self.layers.push(layer(dst));
        self.names.insert(name.clone(), dst);
        Ok(())
    }

    fn lower_node(&mut self, node: &Node) -> Result<(), LowerError> {
        match node.op_type.as_str() {
            "Conv" => self.conv(node),
            "Pad" => self.pad(node),
            "Relu" => self.activation(
                node,
                Activation::Clamp {
                    lo: 0.0,
                    hi: f32::INFINITY,
                },
            ),
            "Clip" => {
                let lo = self
                    .floats(node, 1)?
                    .map_or(Ok(f32::NEG_INFINITY), |v| scalar(node, v))?;
                let hi = self
                    .floats(node, 2)?
                    .map_or(Ok(f32::INFINITY), |v| scalar(node, v))?;
                self.activation(node, Activation::Clamp { lo, hi })
            }
            "PRelu" => {
                let src = self.value(node, &node.inputs[0])?;
                let c = self.values[src].shape.channels();
                let Some(slope) = self.floats(node, 1)? else {
                    return unsupported(node, "no slope");
                };
                let mut slopes = match slope.len() {
                    1 => vec![slope[0]; c],
                    n if n == c => slope.to_vec(),
                    n => return unsupported(node, format!("{n} slopes for {c} channels")),
                };
                slopes.resize(round_up(c, NR), 0.0);
                self.activation(node, Activation::PRelu(slopes))
            }
            "Sigmoid" => self.activation(node, Activation::Sigmoid),
            "Add" => {
                let a = self.value(node, &node.inputs[0])?;
                let b = self.value(node, node.inputs.get(1).map_or("", String::as_str))?;
                let shape = self.values[a].shape.clone();
                if self.values[b].shape != shape {
                    return unsupported(node, "operands of different shapes (no broadcasting)");
                }
                self.define(node, shape, |dst| Layer::Add {
                    a,
                    b,
                    dst,
                    act: Activation::Identity,
                })
            }
            "MaxPool" => {
                let src = self.value(node, &node.inputs[0])?;
                let (h, w, c) = self.nhwc(node, src)?;
                if node.int("ceil_mode").unwrap_or(0) != 0
                    || node
                        .ints("dilations")
                        .is_some_and(|d| d.iter().any(|&d| d != 1))
                    || node.string("auto_pad").is_some_and(|p| p != "NOTSET")
                {
                    return unsupported(node, "ceil_mode, dilations or auto_pad");
                }
                let win = window(node, h, w, [0; 4])?;
                let (oh, ow) = win
                    .output_size()
                    .ok_or_else(|| LowerError("MaxPool window too large".into()))?;
                self.define(node, Shape::Nhwc { h: oh, w: ow, c }, |dst| {
                    Layer::MaxPool { src, dst, win, c }
                })
            }
            "Resize" => {
                let src = self.value(node, &node.inputs[0])?;
                let (h, w, c) = self.nhwc(node, src)?;
                let mode = node.string("mode").unwrap_or("nearest");
                let coords = node
                    .string("coordinate_transformation_mode")
                    .unwrap_or("half_pixel");
                if mode != "linear" || !(coords == "half_pixel" || coords == "pytorch_half_pixel") {
                    return unsupported(node, format!("mode {mode:?}, coordinates {coords:?}"));
                }
                let (oh, ow) = match (self.floats(node, 2)?, self.ints(node, 3)?) {
                    (Some(s), _) if s.len() == 4 && s[0] == 1.0 && s[1] == 1.0 => (
                        (h as f32 * s[2]).floor() as usize,
                        (w as f32 * s[3]).floor() as usize,
                    ),
                    (_, Some(s)) if s.len() == 4 && s[0] == 1 && s[1] as usize == c => {
                        (s[2] as usize, s[3] as usize)
                    }
                    _ => return unsupported(node, "scales/sizes other than spatial"),
                };
                if oh == 0 || ow == 0 || (coords == "pytorch_half_pixel" && (oh == 1 || ow == 1)) {
                    return unsupported(node, "degenerate output size");
                }
                self.define(node, Shape::Nhwc { h: oh, w: ow, c }, |dst| Layer::Resize {
                    src,
                    dst,
                    oh,
                    ow,
                    act: Activation::Identity,
                })
            }
            "DepthToSpace" => {
                let src = self.value(node, &node.inputs[0])?;
                let (h, w, c) = self.nhwc(node, src)?;
                let bs = node.int("blocksize").unwrap_or(0).max(0) as usize;
                if node.string("mode").unwrap_or("DCR") != "DCR" || bs == 0 || c % (bs * bs) != 0 {
                    return unsupported(node, "mode other than DCR or bad block size");
                }
                let shape = Shape::Nhwc {
                    h: h * bs,
                    w: w * bs,
                    c: c / (bs * bs),
                };
                self.define(node, shape, |dst| Layer::DepthToSpace { src, dst, bs })
            }
            "Slice" => {
                let src = self.value(node, &node.inputs[0])?;
                let (h, w, c) = self.nhwc(node, src)?;
                let starts = self.ints(node, 1)?.unwrap_or(&[]);
                let ends = self.ints(node, 2)?.unwrap_or(&[]);
                let axes = self.ints(node, 3)?.unwrap_or(&[0]);
                let steps = self.ints(node, 4)?.unwrap_or(&[1]);
                if starts.len() != 1 || ends.len() != 1 || axes != [1] || steps != [1] {
                    return unsupported(node, "only a unit-step slice of the channel axis");
                }
                let clampc = |v: i64| if v < 0 { (v + c as i64).max(0) } else { v.min(c as i64) } as usize;
                let (s, e) = (clampc(starts[0]), clampc(ends[0]));
                if e <= s {
                    return unsupported(node, "empty slice");
                }
                self.define(node, Shape::Nhwc { h, w, c: e - s }, |dst| Layer::Remap {
                    src,
                    dst,
                    start: s as isize,
                })
            }
            "ReduceMean" => {
                let src = self.value(node, &node.inputs[0])?;
                let (_, _, c) = self.nhwc(node, src)?;
                let axes = node.ints("axes").unwrap_or(&[]);
                if axes != [2, 3] && axes != [-2, -1] {
                    return unsupported(node, "only the mean over H and W");
                }
                let shape = if node.int("keepdims").unwrap_or(1) != 0 {
                    Shape::Nhwc { h: 1, w: 1, c }
                } else {
                    Shape::Flat(vec![1, c])
                };
                self.define(node, shape, |dst| Layer::Mean { src, dst })
            }
            "Gemm" => self.fully_connected(node),
            "Transpose" => {
                let src = self.value(node, &node.inputs[0])?;
                let (h, w, c) = self.nhwc(node, src)?;
                if node.ints("perm") != Some(&[0, 2, 3, 1]) {
                    return unsupported(node, "only the NCHW -> NHWC permutation");
                }
                let v = self.view(src, Shape::Flat(vec![1, h, w, c]));
                self.names.insert(node.outputs[0].clone(), v);
                Ok(())
            }
            "Reshape" => {
                let src = self.value(node, &node.inputs[0])?;
                let len = self.values[src].shape.len();
                if let Shape::Nhwc { h, w, .. } = self.values[src].shape
                    && (h, w) != (1, 1)
                {
                    return unsupported(node, "reshape of an NCHW tensor with H, W > 1");
                }
                let Some(spec) = self.ints(node, 1)? else {
                    return unsupported(node, "no shape");
                };
                let dims = reshape_dims(spec, len).ok_or_else(|| {
                    LowerError(format!("Reshape {:?}: bad shape {spec:?}", node.name))
                })?;
                let v = self.view(src, Shape::Flat(dims));
                self.names.insert(node.outputs[0].clone(), v);
                Ok(())
            }
            "Concat" => {
                let srcs = node
                    .inputs
                    .iter()
                    .map(|n| self.value(node, n))
                    .collect::<Result<Vec<_>, _>>()?;
                let axis = node.int("axis").unwrap_or(0);
                let mut dims = match &self.values[srcs[0]].shape {
                    Shape::Flat(d) => d.clone(),
                    Shape::Nhwc { .. } => return unsupported(node, "concat of NCHW tensors"),
                };
                let axis = usize::try_from(if axis < 0 {
                    axis + dims.len() as i64
                } else {
                    axis
                })
                .ok()
                .filter(|&a| a < dims.len())
                .ok_or_else(|| LowerError(format!("Concat {:?}: bad axis", node.name)))?;
                if dims[..axis].iter().any(|&d| d != 1) {
                    return unsupported(node, "concat not along the outermost non-unit axis");
                }
                dims[axis] = 0;
                for &s in &srcs {
                    let Shape::Flat(d) = &self.values[s].shape else {
                        return unsupported(node, "concat of NCHW tensors");
                    };
                    if d.len() != dims.len()
                        || d[axis + 1..] != dims[axis + 1..]
                        || d[..axis] != dims[..axis]
                    {
                        return unsupported(node, "operand shapes differ");
                    }
                    dims[axis] += d[axis];
                }
                self.define(node, Shape::Flat(dims), |dst| Layer::Concat { srcs, dst })
            }
            other => unsupported(node, format!("operator {other} not supported")),
        }
    }

    fn activation(&mut self, node: &Node, act: Activation) -> Result<(), LowerError> {
        let src = self.value(node, &node.inputs[0])?;
        let shape = self.values[src].shape.clone();
        if let Activation::PRelu(s) = &act
            && s.len() < shape.channels()
        {
            return unsupported(node, "slopes");
        }
        self.define(node, shape, |dst| Layer::Activate { src, dst, act })
    }

    fn pad(&mut self, node: &Node) -> Result<(), LowerError> {
        let src = self.value(node, &node.inputs[0])?;
        let (h, w, c) = self.nhwc(node, src)?;
        let Some(pads) = self.ints(node, 1)? else {
            return unsupported(node, "no pads");
        };
        let value = self.floats(node, 2)?.map_or(Ok(0.0), |v| scalar(node, v))?;
        if node.string("mode").unwrap_or("constant") != "constant"
            || value != 0.0
            || pads.len() != 8
            || pads.iter().any(|&p| p < 0)
            || node.inputs.len() > 3
        {
            return unsupported(node, "only non-negative zero padding of a 4-D tensor");
        }
        let p: Vec<usize> = pads.iter().map(|&p| p as usize).collect();
        // [n_begin, c_begin, h_begin, w_begin, n_end, c_end, h_end, w_end]
        match (p[0], p[4], p[1] + p[5], p[2] + p[3] + p[6] + p[7]) {
            (0, 0, 0, _) => {
                self.pending_pads
                    .insert(node.outputs[0].clone(), (src, [p[2], p[3], p[6], p[7]]));
                Ok(())
            }
            (0, 0, _, 0) => {
                let shape = Shape::Nhwc {
                    h,
                    w,
                    c: c + p[1] + p[5],
                };
                let start = -(p[1] as isize);
                self.define(node, shape, |dst| Layer::Remap { src, dst, start })
            }
            _ => unsupported(node, "padding both channels and space, or the batch"),
        }
    }

    fn conv(&mut self, node: &Node) -> Result<(), LowerError> {
        let (src, extra) = match self.pending_pads.get(&node.inputs[0]) {
            Some(&(src, pads)) => (src, pads),
            None => (self.value(node, &node.inputs[0])?, [0; 4]),
        };
        let (h, w, c_in) = self.nhwc(node, src)?;
        let Some(weight) = self.constant(node, 1)? else {
            return unsupported(node, "no weight");
        };
        let Some(wv) = weight.as_f32() else {
            return unsupported(node, "weight not float32");
        };
        let [c_out, c_per_group, kh, kw] = weight.dims[..] else {
            return unsupported(node, "weight not 4-D");
        };
        let zero_bias = vec![0.0; c_out];
        let bias = self.floats(node, 2)?.unwrap_or(&zero_bias);
        if bias.len() != c_out {
            return unsupported(node, "bias length");
        }
        if node
            .ints("dilations")
            .is_some_and(|d| d.iter().any(|&d| d != 1))
            || node.string("auto_pad").is_some_and(|p| p != "NOTSET")
        {
            return unsupported(node, "dilations or auto_pad");
        }
        if node
            .ints("kernel_shape")
            .is_some_and(|k| k != [kh as i64, kw as i64])
        {
            return unsupported(node, "kernel_shape differs from the weight");
        }
        let win = window_from(node, h, w, kh, kw, extra)?;
        let (oh, ow) = win.output_size().ok_or_else(|| {
            LowerError(format!(
                "Conv {:?}: kernel larger than its input",
                node.name
            ))
        })?;
        let group = node.int("group").unwrap_or(1);
        let shape = Shape::Nhwc {
            h: oh,
            w: ow,
            c: c_out,
        };
        let at = |co: usize, ci: usize, ky: usize, kx: usize| {
            wv[((co * c_per_group + ci) * kh + ky) * kw + kx]
        };
        if group == 1 && c_per_group == c_in {
            let pointwise =
                kh == 1 && kw == 1 && win.stride_h == 1 && win.stride_w == 1 && win.pads == [0; 4];
            if pointwise {
                let sparse = SparseMatrix::pack(c_in, c_out, |ci, co| at(co, ci, 0, 0), bias);
                // Below this density the sparse kernel wins despite its
                // transposes (measured on pose_detection, 25% non-zero).
                if sparse.density() <= SPARSE_MAX_DENSITY {
                    return self.define(node, shape, |dst| Layer::SparseGemm {
                        src,
                        dst,
                        m: h * w,
                        w: sparse,
                        act: Activation::Identity,
                        residual: None,
                    });
                }
                let packed = PackedMatrix::pack(c_in, c_out, |ci, co| at(co, ci, 0, 0), bias);
                return self.define(node, shape, |dst| Layer::Gemm {
                    src,
                    dst,
                    m: h * w,
                    w: packed,
                    act: Activation::Identity,
                    residual: None,
                });
            }
            // im2col rows are (ky, kx, ci), ci innermost.
            let w = PackedMatrix::pack(
                kh * kw * c_in,
                c_out,
                |k, co| at(co, k % c_in, k / c_in / kw, k / c_in % kw),
                bias,
            );
            return self.define(node, shape, |dst| Layer::Dense {
                src,
                dst,
                win,
                c_in,
                w,
                act: Activation::Identity,
                residual: None,
            });
        }
        if group as usize == c_in && c_out == c_in && c_per_group == 1 {
            let w = PackedDepthwise::pack(c_in, kh, kw, |ch, ky, kx| at(ch, 0, ky, kx), bias);
            return self.define(node, shape, |dst| Layer::Depthwise {
                src,
                dst,
                win,
                w,
                act: Activation::Identity,
            });
        }
        unsupported(
            node,
            format!("group {group} with {c_in} -> {c_out} channels"),
        )
    }

    fn fully_connected(&mut self, node: &Node) -> Result<(), LowerError> {
        let src = self.value(node, &node.inputs[0])?;
        let Shape::Flat(ref dims) = self.values[src].shape else {
            return unsupported(node, "input not 2-D");
        };
        let &[1, k] = &dims[..] else {
            return unsupported(node, "input not [1, K]");
        };
        let Some(b) = self.constant(node, 1)? else {
            return unsupported(node, "B not constant");
        };
        let (Some(bv), &[d0, d1]) = (b.as_f32(), &b.dims[..]) else {
            return unsupported(node, "B not a float32 matrix");
        };
        if node.float("alpha").unwrap_or(1.0) != 1.0
            || node.float("beta").unwrap_or(1.0) != 1.0
            || node.int("transA").unwrap_or(0) != 0
        {
            return unsupported(node, "alpha, beta or transA");
        }
        let trans_b = node.int("transB").unwrap_or(0) != 0;
        let n = if trans_b { d0 } else { d1 };
        if (if trans_b { d1 } else { d0 }) != k {
            return unsupported(node, "B does not match A");
        }
        let zero_bias = vec![0.0; n];
        let bias = self.floats(node, 2)?.unwrap_or(&zero_bias);
        let bias: Vec<f32> = match bias.len() {
            1 => vec![bias[0]; n],
            l if l == n => bias.to_vec(),
            _ => return unsupported(node, "bias length"),
        };
        let w = PackedMatrix::pack(
            k,
            n,
            |kk, j| {
                if trans_b {
                    bv[j * k + kk]
                } else {
                    bv[kk * n + j]
                }
            },
            &bias,
        );
        self.define(node, Shape::Flat(vec![1, n]), |dst| Layer::Gemm {
            src,
            dst,
            m: 1,
            w,
            act: Activation::Identity,
            residual: None,
        })
    }
}

fn scalar(node: &Node, v: &[f32]) -> Result<f32, LowerError> {
    match v {
        [x] => Ok(*x),
        _ => unsupported(node, "expected a scalar"),
    }
}

/// The window of a Conv/MaxPool node from its `kernel_shape`, `strides` and
/// `pads` attributes, plus `extra` padding folded in from a `Pad` node.
fn window(node: &Node, h: usize, w: usize, extra: [usize; 4]) -> Result<Window, LowerError> {
    let Some(&[kh, kw]) = node.ints("kernel_shape") else {
        return unsupported(node, "kernel_shape not 2-D");
    };
    if kh <= 0 || kw <= 0 {
        return unsupported(node, "kernel_shape");
    }
    window_from(node, h, w, kh as usize, kw as usize, extra)
}

fn window_from(
    node: &Node,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    extra: [usize; 4],
) -> Result<Window, LowerError> {
    let strides = node.ints("strides").unwrap_or(&[1, 1]);
    let pads = node.ints("pads").unwrap_or(&[0, 0, 0, 0]);
    if strides.len() != 2
        || pads.len() != 4
        || strides.iter().any(|&s| s <= 0)
        || pads.iter().any(|&p| p < 0)
    {
        return unsupported(node, "strides or pads");
    }
    // ONNX pads are [top, left, bottom, right].
    Ok(Window {
        h,
        w,
        kh,
        kw,
        stride_h: strides[0] as usize,
        stride_w: strides[1] as usize,
        pads: std::array::from_fn(|i| pads[i] as usize + extra[i]),
    })
}

/// ONNX `Reshape` semantics for a static shape: 0 copies... nothing here (no
/// input dims to copy from a flattened view), -1 is inferred.
fn reshape_dims(spec: &[i64], len: usize) -> Option<Vec<usize>> {
    let known: usize = spec
        .iter()
        .filter(|&&d| d > 0)
        .map(|&d| d as usize)
        .product();
    let inferred = spec.iter().filter(|&&d| d == -1).count();
    if spec.iter().any(|&d| d == 0 || d < -1) || inferred > 1 || known == 0 {
        return None;
    }
    let dims: Vec<usize> = spec
        .iter()
        .map(|&d| if d == -1 { len / known } else { d as usize })
        .collect();
    (dims.iter().product::<usize>() == len).then_some(dims)
}

/// Lowers, fuses and assigns buffers.
fn lower(graph: &Graph) -> Result<Program, LowerError> {
    let [input] = &graph.inputs[..] else {
        return Err(LowerError(format!(
            "{} graph inputs, expected 1",
            graph.inputs.len()
        )));
    };
    let &[1, c, h, w] = &input.shape[..] else {
        return Err(LowerError(format!(
            "input shape {:?}, expected [1, C, H, W]",
            input.shape
        )));
    };
    if c == 0 || h == 0 || w == 0 {
        return Err(LowerError("input with a dynamic or empty dimension".into()));
    }
    let mut l = Lowering {
        graph,
        values: Vec::new(),
        names: HashMap::new(),
        pending_pads: HashMap::new(),
        layers: Vec::new(),
        storages: 0,
    };
    let input_value = l.new_value(Shape::Nhwc { h, w, c });
    l.names.insert(input.name.clone(), input_value);
    for node in &graph.nodes {
        l.lower_node(node)?;
    }
    let output_values = graph
        .outputs
        .iter()
        .map(|o| {
            l.names
                .get(&o.name)
                .copied()
                .ok_or_else(|| LowerError(format!("output {:?} is not computed", o.name)))
        })
        .collect::<Result<Vec<V>, _>>()?;
    let mut layers: Vec<Option<Layer>> = l.layers.into_iter().map(Some).collect();
    let mut values = l.values;
    fuse_residuals(&mut layers, &values, &output_values);
    fuse_activations(&mut layers, &values, &output_values);
    if POINTWISE_BEFORE_UPSAMPLE {
        pointwise_before_upsample(&mut layers, &mut values, &output_values);
    }
    fuse_blocks(&mut layers, &values, &output_values);
    let layers = live_layers(layers, &values, &output_values);
    allocate(
        layers,
        values,
        input_value,
        &output_values,
        graph,
        (h, w, c),
    )
}

/// How many layers read each storage (graph outputs count as a reader).
fn readers(layers: &[Option<Layer>], values: &[Value], outputs: &[V]) -> Vec<usize> {
    let mut n = vec![0; values.len()];
    for layer in layers.iter().flatten() {
        for s in layer.srcs() {
            n[s] += 1;
        }
    }
    for &o in outputs {
        n[o] += 1;
    }
    // Views read their source's storage: count per storage, then map back.
    let storages = values.iter().map(|v| v.storage).max().map_or(0, |m| m + 1);
    let mut per_storage = vec![0; storages];
    for (v, &count) in n.iter().enumerate() {
        per_storage[values[v].storage] += count;
    }
    values.iter().map(|v| per_storage[v.storage]).collect()
}

/// The index of the layer writing value `v`.
fn producer(layers: &[Option<Layer>], v: V) -> Option<usize> {
    layers
        .iter()
        .position(|l| l.as_ref().is_some_and(|l| l.dst() == v))
}

/// `Add(conv, other)` -> conv with residual `other`; the conv moves to the
/// Add's place (where `other` is ready). A channel pad (behind) producing
/// `other`, read by nothing else, is dropped: the residual's channel count
/// says which channels it covers.
fn fuse_residuals(layers: &mut [Option<Layer>], values: &[Value], outputs: &[V]) {
    for i in 0..layers.len() {
        let Some(Layer::Add {
            a,
            b,
            dst,
            act: Activation::Identity,
        }) = layers[i].clone()
        else {
            continue;
        };
        let counts = readers(layers, values, outputs);
        let fusable = |v: V| {
            let p = producer(layers, v)?;
            let ok = counts[v] == 1
                && matches!(
                    layers[p],
                    Some(Layer::Gemm {
                        residual: None,
                        act: Activation::Identity,
                        ..
                    }) | Some(Layer::SparseGemm {
                        residual: None,
                        act: Activation::Identity,
                        ..
                    }) | Some(Layer::Dense {
                        residual: None,
                        act: Activation::Identity,
                        ..
                    })
                );
            ok.then_some(p)
        };
        let (p, other) = match (fusable(b), fusable(a)) {
            (Some(p), _) => (p, a),
            (None, Some(p)) => (p, b),
            (None, None) => continue,
        };
        let (mut residual, mut channels) = (other, values[other].shape.channels());
        if counts[other] == 1
            && let Some(q) = producer(layers, other)
            && let Some(Layer::Remap { src, start: 0, .. }) = layers[q]
            && values[src].shape.channels() <= values[other].shape.channels()
            && values[src].shape.len() / values[src].shape.channels()
                == values[other].shape.len() / values[other].shape.channels()
        {
            residual = src;
            channels = values[src].shape.channels();
            layers[q] = None;
        }
        let mut conv = layers[p].take().expect("producer exists");
        match &mut conv {
            Layer::Gemm { residual: r, .. }
            | Layer::SparseGemm { residual: r, .. }
            | Layer::Dense { residual: r, .. } => *r = Some((residual, channels)),
            _ => unreachable!("fusable checked the layer kind"),
        }
        conv.set_dst(dst);
        layers[i] = Some(conv);
    }
}

/// `act(x)` where `x` comes from a layer without an activation and is read by
/// nothing else -> that layer with the activation.
fn fuse_activations(layers: &mut [Option<Layer>], values: &[Value], outputs: &[V]) {
    for i in 0..layers.len() {
        let Some(Layer::Activate { src, dst, act }) = layers[i].clone() else {
            continue;
        };
        let counts = readers(layers, values, outputs);
        if counts[src] != 1 {
            continue;
        }
        let Some(p) = producer(layers, src) else {
            continue;
        };
        let Some(layer) = layers[p].as_mut() else {
            continue;
        };
        if layer.act_mut().is_some_and(|a| *a == Activation::Identity) {
            *layer.act_mut().expect("checked") = act;
            layer.set_dst(dst);
            layers[i] = None;
        }
    }
}

/// `act(pointwise(upsample(x)))` -> `act(upsample(pointwise(x)))`, for a
/// bilinear upsample read only by a pointwise layer without residual
/// (`pose_detection`'s feature pyramid: 1152 channels upsampled 7x7 ->
/// 14x14, then projected to 192 with ReLU6). Both are linear, per pixel and
/// per channel, and the bilinear weights of a pixel sum to one, so the bias
/// commutes too: the same result up to rounding, for a quarter of the GEMM
/// and a resize of the narrower tensor. The activation moves to the resize.
fn pointwise_before_upsample(layers: &mut [Option<Layer>], values: &mut Vec<Value>, outputs: &[V]) {
    for i in 0..layers.len() {
        let (src, dst, k, n) = match &layers[i] {
            Some(Layer::Gemm {
                src,
                dst,
                w,
                residual: None,
                ..
            }) => (*src, *dst, w.k, w.n),
            Some(Layer::SparseGemm {
                src,
                dst,
                w,
                residual: None,
                ..
            }) => (*src, *dst, w.k, w.n),
            _ => continue,
        };
        let counts = readers(layers, values, outputs);
        let Some(p) = producer(layers, src) else {
            continue;
        };
        let Some(Layer::Resize {
            src: x,
            dst: up,
            oh,
            ow,
            act: Activation::Identity,
        }) = layers[p].clone()
        else {
            continue;
        };
        let Shape::Nhwc { h, w, c } = values[x].shape else {
            continue;
        };
        if up != src || counts[src] != 1 || c != k || oh * ow <= h * w {
            continue;
        }
        if values[dst].shape != (Shape::Nhwc { h: oh, w: ow, c: n }) {
            continue;
        }
        let storage = values.iter().map(|v| v.storage).max().map_or(0, |m| m + 1);
        values.push(Value {
            storage,
            shape: Shape::Nhwc { h, w, c: n },
        });
        let low = values.len() - 1;
        let mut pointwise = layers[i].take().expect("matched above");
        let act = match &mut pointwise {
            Layer::Gemm {
                src, dst, m, act, ..
            }
            | Layer::SparseGemm {
                src, dst, m, act, ..
            } => {
                (*src, *dst, *m) = (x, low, h * w);
                std::mem::replace(act, Activation::Identity)
            }
            _ => unreachable!("matched above"),
        };
        // The pointwise layer runs where the upsample did (its input is
        // ready there), the upsample where the pointwise layer did.
        layers[p] = Some(pointwise);
        layers[i] = Some(Layer::Resize {
            src: low,
            dst,
            oh,
            ow,
            act,
        });
    }
}

/// A pointwise layer's parts, if `layer` is one: (weights, activation,
/// residual, src).
fn as_pointwise(layer: &Layer) -> Option<(Pointwise, Activation, Option<(V, usize)>, V)> {
    match layer {
        Layer::Gemm {
            src,
            w,
            act,
            residual,
            ..
        } => Some((Pointwise::Dense(w.clone()), act.clone(), *residual, *src)),
        Layer::SparseGemm {
            src,
            w,
            act,
            residual,
            ..
        } => Some((Pointwise::Sparse(w.clone()), act.clone(), *residual, *src)),
        _ => None,
    }
}

/// `[pointwise] -> depthwise -> pointwise`, each intermediate read by
/// nothing else, -> one [`Layer::Block`] at the projection's place (where
/// its residual is ready).
fn fuse_blocks(layers: &mut [Option<Layer>], values: &[Value], outputs: &[V]) {
    for i in 0..layers.len() {
        let Some(Layer::Depthwise {
            src: e,
            dst: d,
            win,
            w: dw,
            act: dw_act,
        }) = layers[i].clone()
        else {
            continue;
        };
        // Only where the block's intermediate tensor outgrows the L2 cache
        // (512 KiB per core on the machines this was tuned on): smaller ones
        // stay cached anyway, and row-at-a-time GEMMs over narrow rows
        // (7 or 14 pixels) waste most of the 6-row register tile.
        if win.h * win.w * dw.c * 4 < FUSE_MIN_BYTES || win.w < 32 {
            continue;
        }
        let counts = readers(layers, values, outputs);
        if counts[d] != 1 {
            continue;
        }
        let Some(ci) = layers
            .iter()
            .position(|l| l.as_ref().is_some_and(|l| l.srcs().contains(&d)))
        else {
            continue;
        };
        let Some((project, act, residual, psrc)) = layers[ci].as_ref().and_then(as_pointwise)
        else {
            continue;
        };
        if psrc != d || residual.is_some_and(|(r, _)| r == d) {
            continue;
        }
        let expand = if counts[e] == 1 {
            producer(layers, e).and_then(|p| {
                let (w, a, r, x) = layers[p].as_ref().and_then(as_pointwise)?;
                r.is_none().then_some((p, w, a, x))
            })
        } else {
            None
        };
        let dst = layers[ci]
            .as_ref()
            .map(Layer::dst)
            .expect("consumer exists");
        let src = expand.as_ref().map_or(e, |(_, _, _, x)| *x);
        if let Some((p, ..)) = &expand {
            layers[*p] = None;
        }
        layers[i] = None;
        layers[ci] = Some(Layer::Block {
            src,
            dst,
            expand: expand.map(|(_, w, a, _)| (w, a)),
            win,
            dw,
            dw_act,
            project,
            act,
            residual,
        });
    }
}

/// Drops layers whose result no output needs, keeping the order.
fn live_layers(layers: Vec<Option<Layer>>, values: &[Value], outputs: &[V]) -> Vec<Layer> {
    let layers: Vec<Layer> = layers.into_iter().flatten().collect();
    let mut needed = vec![false; values.len()];
    let mark_storage = |needed: &mut Vec<bool>, v: V| {
        for (u, val) in values.iter().enumerate() {
            if val.storage == values[v].storage {
                needed[u] = true;
            }
        }
    };
    for &o in outputs {
        mark_storage(&mut needed, o);
    }
    let mut keep = vec![false; layers.len()];
    for (i, layer) in layers.iter().enumerate().rev() {
        if needed[layer.dst()] {
            keep[i] = true;
            for s in layer.srcs() {
                mark_storage(&mut needed, s);
            }
        }
    }
    layers
        .into_iter()
        .zip(keep)
        .filter_map(|(l, k)| k.then_some(l))
        .collect()
}

/// Gives every storage a slot, reusing slots whose tensor is dead (best fit).
fn allocate(
    layers: Vec<Layer>,
    values: Vec<Value>,
    input: V,
    outputs: &[V],
    graph: &Graph,
    input_shape: (usize, usize, usize),
) -> Result<Program, LowerError> {
    let storages = values.iter().map(|v| v.storage).max().map_or(0, |m| m + 1);
    let mut size = vec![0usize; storages];
    for v in &values {
        size[v.storage] = size[v.storage].max(v.shape.len());
    }
    // Last layer index reading each storage; outputs live to the end.
    let mut last_use = vec![None::<usize>; storages];
    for (i, layer) in layers.iter().enumerate() {
        for s in layer.srcs() {
            last_use[values[s].storage] = Some(i);
        }
    }
    for &o in outputs {
        last_use[values[o].storage] = Some(usize::MAX);
    }
    let mut slot_of_storage = vec![usize::MAX; storages];
    let mut slot_sizes: Vec<usize> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let take_slot = |len: usize, slot_sizes: &mut Vec<usize>, free: &mut Vec<usize>| {
        let best = free
            .iter()
            .enumerate()
            .filter(|&(_, &s)| slot_sizes[s] >= len)
            .min_by_key(|&(_, &s)| slot_sizes[s])
            .or_else(|| free.iter().enumerate().max_by_key(|&(_, &s)| slot_sizes[s]))
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let s = free.swap_remove(i);
                slot_sizes[s] = slot_sizes[s].max(len);
                s
            }
            None => {
                slot_sizes.push(len);
                slot_sizes.len() - 1
            }
        }
    };
    let input_storage = values[input].storage;
    slot_of_storage[input_storage] = take_slot(size[input_storage], &mut slot_sizes, &mut free);
    let mut im2col_size = 0;
    let mut block_size = 0;
    for (i, layer) in layers.iter().enumerate() {
        let d = values[layer.dst()].storage;
        if slot_of_storage[d] != usize::MAX {
            return Err(LowerError(format!("tensor written twice (layer {i})")));
        }
        slot_of_storage[d] = take_slot(size[d], &mut slot_sizes, &mut free);
        if let Layer::Dense { win, c_in, .. } = layer {
            let (oh, ow) = win.output_size().unwrap_or((0, 0));
            im2col_size = im2col_size.max(oh * ow * win.kh * win.kw * c_in);
        }
        if let Layer::Block { win, dw, .. } = layer {
            let (_, ow) = win.output_size().unwrap_or((0, 0));
            block_size = block_size.max((win.kh * win.w + ow) * dw.c);
        }
        let mut freed: Vec<usize> = layer.srcs().iter().map(|&s| values[s].storage).collect();
        freed.sort_unstable();
        freed.dedup();
        for s in freed {
            if last_use[s] == Some(i) {
                free.push(slot_of_storage[s]);
            }
        }
        // A tensor nobody reads (dead after fusion cannot happen; an output
        // is read at the end) would leak its slot; free it right away.
        if last_use[d].is_none() {
            free.push(slot_of_storage[d]);
        }
    }
    let slot_of: Vec<usize> = values.iter().map(|v| slot_of_storage[v.storage]).collect();
    let outputs = graph
        .outputs
        .iter()
        .zip(outputs)
        .map(|(o, &v)| OutputSpec {
            name: o.name.clone(),
            shape: match &values[v].shape {
                Shape::Nhwc { h, w, c } => vec![1, *h, *w, *c],
                Shape::Flat(d) => d.clone(),
            },
            slot: slot_of[v],
            len: values[v].shape.len(),
        })
        .collect();
    Ok(Program {
        isa: Isa::detect(),
        input_shape,
        input_slot: slot_of[input],
        split_work: layers
            .iter()
            .map(work)
            .filter(|&w| w >= SPLIT_MIN_WORK)
            .sum(),
        steps: layers
            .into_iter()
            .map(|layer| Step {
                split: work(&layer) >= SPLIT_MIN_WORK,
                layer,
            })
            .collect(),
        slot_of,
        shapes: values.into_iter().map(|v| v.shape).collect(),
        slot_sizes,
        im2col_size,
        block_size,
        outputs,
    })
}
