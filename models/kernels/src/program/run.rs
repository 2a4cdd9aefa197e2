//! Execution: runs a [`Program`]'s steps on a [`Scratch`] — each step's
//! output buffer taken out while its inputs are read, large layers halved
//! across two threads ([`halves`]), fused blocks row by row
//! ([`BlockLayer`]) — and times them for `profile`. It only calls the
//! kernels; it must not change what a layer computes or in which order the
//! rows are summed (split and whole runs are bit-identical), and it knows
//! nothing of ONNX.

use std::ops::Range;

use super::ir::{Layer, Op, Pointwise, Shape, V};
use super::{InputSizeError, Local, NET_SPLIT_MIN_WORK, Program, Scratch};
use crate::Isa;
use crate::kernels::{self, Activation, PackedDepthwise, Residual, Window};

impl Pointwise {
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

impl Program {
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
        let shape = match &self.shapes[layer.dst] {
            Shape::Nhwc { h, w, c } => format!("{h}x{w}x{c}"),
            Shape::Flat(d) => format!("{d:?}"),
        };
        let kind = match &layer.op {
            Op::Block {
                expand, win, dw, ..
            } => format!(
                "block{} dw{}x{}/{} c={}",
                if expand.is_some() { " expand" } else { "" },
                win.kh,
                win.kw,
                win.stride_h,
                dw.c
            ),
            Op::Gemm { w, residual, .. } => {
                format!(
                    "pointwise k={}{}",
                    w.k,
                    if residual.is_some() { "+res" } else { "" }
                )
            }
            Op::SparseGemm { w, residual, .. } => format!(
                "sparse pointwise k={} d={:.2}{}",
                w.k,
                w.density(),
                if residual.is_some() { "+res" } else { "" }
            ),
            Op::Dense { win, .. } => format!("conv {}x{}/{}", win.kh, win.kw, win.stride_h),
            Op::Depthwise { win, .. } => {
                format!("depthwise {}x{}/{}", win.kh, win.kw, win.stride_h)
            }
            Op::MaxPool { .. } => "maxpool".into(),
            Op::Resize { .. } => "resize".into(),
            Op::DepthToSpace { .. } => "depth_to_space".into(),
            Op::Remap { .. } => "channel remap".into(),
            Op::Add { .. } => "add".into(),
            Op::Activate { .. } => "activation".into(),
            Op::Mean { .. } => "mean".into(),
            Op::Concat { .. } => "concat".into(),
        };
        format!("{kind} {shape}")
    }

    /// Runs one layer: its output buffer is taken out of `scratch` while its
    /// inputs are read, then put back. Layers that halve their rows across
    /// two threads go to [`Program::run_rows`], the others to
    /// [`Program::run_whole`].
    fn run_step(&self, layer: &Layer, scratch: &mut Scratch, split: bool) {
        let dst_slot = self.slot_of[layer.dst];
        // Lowering never gives a layer's output the slot of one of its
        // inputs, so the output buffer can be taken out while inputs are read.
        let mut out = std::mem::take(&mut scratch.slots[dst_slot]);
        let Scratch {
            slots,
            main,
            helper,
        } = &mut *scratch;
        let inputs = Inputs {
            program: self,
            slots,
        };
        match &layer.op {
            op @ (Op::Block { .. }
            | Op::Gemm { .. }
            | Op::SparseGemm { .. }
            | Op::Dense { .. }
            | Op::Depthwise { .. }) => self.run_rows(op, &inputs, &mut out, main, helper, split),
            op => self.run_whole(op, layer.dst, &inputs, &mut out),
        }
        scratch.slots[dst_slot] = out;
    }

    /// The layers computed row by row (the GEMMs, fused blocks, depthwise),
    /// halved across two threads when `split` ([`halves`]).
    fn run_rows(
        &self,
        op: &Op,
        inputs: &Inputs<'_>,
        out: &mut [f32],
        main: &mut Local,
        helper: &mut Local,
        split: bool,
    ) {
        let isa = self.isa;
        let buf = |v: V| inputs.buf(v);
        let res = |r: &Option<(V, usize)>, rows: &Range<usize>| inputs.res(r, rows);
        match op {
            Op::Block {
                src,
                expand,
                win,
                dw,
                dw_act,
                project,
                act,
                residual,
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
                halves(split, oh, ow * co, 1, out, main, helper, rows);
            }
            Op::Gemm {
                src,
                m,
                w,
                act,
                residual,
            } => {
                let a = buf(*src);
                let rows = |r: Range<usize>, out: &mut [f32], _: &mut Local| {
                    let a = &a[r.start * w.k..];
                    kernels::gemm(isa, a, r.len(), w.k, w, act, res(residual, &r), out)
                };
                halves(split, *m, w.n, GEMM_ALIGN, out, main, helper, rows);
            }
            Op::SparseGemm {
                src,
                m,
                w,
                act,
                residual,
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
                halves(split, *m, w.n, GEMM_ALIGN, out, main, helper, rows);
            }
            Op::Dense {
                src,
                win,
                c_in,
                w,
                act,
                residual,
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
                halves(split, oh * ow, w.n, GEMM_ALIGN, out, main, helper, rows);
                main.im2col = cols;
            }
            Op::Depthwise { src, win, w, act } => {
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
                    halves(true, oh, ow * w.c, 1, out, main, helper, rows);
                } else {
                    kernels::depthwise(isa, buf(*src), win, w, act, out)
                }
            }
            _ => unreachable!("run_step sends only row-split layers here"),
        }
    }

    /// The layers computed whole on this thread (pooling, resampling,
    /// channel moves, elementwise), writing value `dst` into `out`.
    fn run_whole(&self, op: &Op, dst: V, inputs: &Inputs<'_>, out: &mut [f32]) {
        let isa = self.isa;
        let buf = |v: V| inputs.buf(v);
        match op {
            Op::MaxPool { src, win, c } => kernels::max_pool(isa, buf(*src), win, *c, out),
            Op::Resize { src, oh, ow, act } => {
                let Shape::Nhwc { h, w, c } = self.shapes[*src] else {
                    unreachable!("lowering checked: resize of an NHWC tensor")
                };
                kernels::resize_bilinear(isa, buf(*src), h, w, c, *oh, *ow, act, out)
            }
            Op::DepthToSpace { src, bs } => {
                let (Shape::Nhwc { h, w, .. }, Shape::Nhwc { c, .. }) =
                    (&self.shapes[*src], &self.shapes[dst])
                else {
                    unreachable!("lowering checked: depth-to-space of an NHWC tensor")
                };
                kernels::depth_to_space(buf(*src), *h, *w, *c, *bs, out)
            }
            Op::Remap { src, start } => {
                let (s, d) = (&self.shapes[*src], &self.shapes[dst]);
                let pixels = s.len() / s.channels();
                kernels::remap_channels(buf(*src), pixels, s.channels(), *start, d.channels(), out)
            }
            Op::Add { a, b, act } => {
                let n = self.shapes[dst].len();
                kernels::add(
                    isa,
                    buf(*a),
                    buf(*b),
                    self.shapes[dst].channels(),
                    act,
                    &mut out[..n],
                )
            }
            Op::Activate { src, act } => {
                kernels::activate(isa, buf(*src), self.shapes[dst].channels(), act, out)
            }
            Op::Mean { src } => {
                let s = &self.shapes[*src];
                kernels::global_mean(buf(*src), s.len() / s.channels(), s.channels(), out)
            }
            Op::Concat { srcs } => {
                let mut at = 0;
                for v in srcs {
                    let b = buf(*v);
                    out[at..at + b.len()].copy_from_slice(b);
                    at += b.len();
                }
            }
            _ => unreachable!("run_step sends row-split layers to run_rows"),
        }
    }
}

/// What a step reads: the buffers of every value but its own output.
struct Inputs<'a> {
    program: &'a Program,
    slots: &'a [Vec<f32>],
}

impl<'a> Inputs<'a> {
    /// Value `v`'s tensor.
    fn buf(&self, v: V) -> &'a [f32] {
        &self.slots[self.program.slot_of[v]][..self.program.shapes[v].len()]
    }

    /// The residual rows `rows` of a layer's output.
    fn res(&self, r: &Option<(V, usize)>, rows: &Range<usize>) -> Option<Residual<'a>> {
        r.map(|(v, channels)| Residual {
            data: &self.buf(v)[rows.start * channels..rows.end * channels],
            channels,
        })
    }
}

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

/// The parts of a [`Op::Block`] its rows are computed from.
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
