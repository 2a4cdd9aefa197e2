//! Lowering proper: turns each ONNX node into [`Layer`]s on NHWC tensors
//! (one function per operator family), folds spatial zero `Pad`s into the
//! convolutions that read them, makes `Transpose`/`Reshape` views and channel
//! `Pad`/`Slice` a channel remap, and packs the weights once. It knows
//! nothing of fusion, buffers, threads or instruction sets.

use std::collections::HashMap;

use super::LowerError;
use super::ir::{Layer, Op, Shape, V, Value};
use crate::kernels::{
    Activation, NR, PackedDepthwise, PackedMatrix, SparseMatrix, Window, round_up,
};
use crate::onnx::{Graph, Node, Tensor};

/// Pointwise convolutions with at most this share of non-zero weights run on
/// [`crate::kernels::sparse_gemm`].
const SPARSE_MAX_DENSITY: f32 = 0.4;

fn unsupported<T>(node: &Node, what: impl std::fmt::Display) -> Result<T, LowerError> {
    Err(LowerError(format!(
        "{} node {:?}: {what}",
        node.op_type, node.name
    )))
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

    fn define(&mut self, node: &Node, shape: Shape, op: Op) -> Result<(), LowerError> {
        let Some(name) = node.outputs.first() else {
            return unsupported(node, "no output");
        };
        let dst = self.new_value(shape);
        self.layers.push(Layer { dst, op });
        self.names.insert(name.clone(), dst);
        Ok(())
    }

    /// One node: its operator's function, grouped by family below.
    fn lower_node(&mut self, node: &Node) -> Result<(), LowerError> {
        match node.op_type.as_str() {
            // Convolutions, dense layers and pooling.
            "Conv" => self.conv(node),
            "Gemm" => self.fully_connected(node),
            "MaxPool" => self.max_pool(node),
            // Activations and the elementwise add (fusion folds them into
            // their producer).
            "Relu" => self.activation(
                node,
                Activation::Clamp {
                    lo: 0.0,
                    hi: f32::INFINITY,
                },
            ),
            "Clip" => self.clip(node),
            "PRelu" => self.prelu(node),
            "Sigmoid" => self.activation(node, Activation::Sigmoid),
            "Add" => self.add(node),
            // Spatial resampling and reduction.
            "Resize" => self.resize(node),
            "DepthToSpace" => self.depth_to_space(node),
            "ReduceMean" => self.reduce_mean(node),
            // Channel moves and views: no arithmetic.
            "Pad" => self.pad(node),
            "Slice" => self.slice(node),
            "Transpose" => self.transpose(node),
            "Reshape" => self.reshape(node),
            "Concat" => self.concat(node),
            other => unsupported(node, format!("operator {other} not supported")),
        }
    }

    // Convolutions, dense layers and pooling.

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
                    return self.define(
                        node,
                        shape,
                        Op::SparseGemm {
                            src,
                            m: h * w,
                            w: sparse,
                            act: Activation::Identity,
                            residual: None,
                        },
                    );
                }
                let packed = PackedMatrix::pack(c_in, c_out, |ci, co| at(co, ci, 0, 0), bias);
                return self.define(
                    node,
                    shape,
                    Op::Gemm {
                        src,
                        m: h * w,
                        w: packed,
                        act: Activation::Identity,
                        residual: None,
                    },
                );
            }
            // im2col rows are (ky, kx, ci), ci innermost.
            let w = PackedMatrix::pack(
                kh * kw * c_in,
                c_out,
                |k, co| at(co, k % c_in, k / c_in / kw, k / c_in % kw),
                bias,
            );
            return self.define(
                node,
                shape,
                Op::Dense {
                    src,
                    win,
                    c_in,
                    w,
                    act: Activation::Identity,
                    residual: None,
                },
            );
        }
        if group as usize == c_in && c_out == c_in && c_per_group == 1 {
            let w = PackedDepthwise::pack(c_in, kh, kw, |ch, ky, kx| at(ch, 0, ky, kx), bias);
            return self.define(
                node,
                shape,
                Op::Depthwise {
                    src,
                    win,
                    w,
                    act: Activation::Identity,
                },
            );
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
        self.define(
            node,
            Shape::Flat(vec![1, n]),
            Op::Gemm {
                src,
                m: 1,
                w,
                act: Activation::Identity,
                residual: None,
            },
        )
    }

    /// `MaxPool` without ceil mode, dilations or auto padding.
    fn max_pool(&mut self, node: &Node) -> Result<(), LowerError> {
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
        self.define(
            node,
            Shape::Nhwc { h: oh, w: ow, c },
            Op::MaxPool { src, win, c },
        )
    }

    // Activations and the elementwise add (fusion folds them into their
    // producer).

    fn activation(&mut self, node: &Node, act: Activation) -> Result<(), LowerError> {
        let src = self.value(node, &node.inputs[0])?;
        let shape = self.values[src].shape.clone();
        if let Activation::PRelu(s) = &act
            && s.len() < shape.channels()
        {
            return unsupported(node, "slopes");
        }
        self.define(node, shape, Op::Activate { src, act })
    }

    /// `Clip`: a clamp with constant bounds (either may be absent).
    fn clip(&mut self, node: &Node) -> Result<(), LowerError> {
        let lo = self
            .floats(node, 1)?
            .map_or(Ok(f32::NEG_INFINITY), |v| scalar(node, v))?;
        let hi = self
            .floats(node, 2)?
            .map_or(Ok(f32::INFINITY), |v| scalar(node, v))?;
        self.activation(node, Activation::Clamp { lo, hi })
    }

    /// `PRelu`: one slope, or one per channel, padded to whole panels.
    fn prelu(&mut self, node: &Node) -> Result<(), LowerError> {
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

    /// `Add` of two same-shaped tensors (fusion may turn it into a residual).
    fn add(&mut self, node: &Node) -> Result<(), LowerError> {
        let a = self.value(node, &node.inputs[0])?;
        let b = self.value(node, node.inputs.get(1).map_or("", String::as_str))?;
        let shape = self.values[a].shape.clone();
        if self.values[b].shape != shape {
            return unsupported(node, "operands of different shapes (no broadcasting)");
        }
        self.define(
            node,
            shape,
            Op::Add {
                a,
                b,
                act: Activation::Identity,
            },
        )
    }

    // Spatial resampling and reduction.

    /// `Resize`, bilinear with half-pixel coordinates, spatial only.
    fn resize(&mut self, node: &Node) -> Result<(), LowerError> {
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
        self.define(
            node,
            Shape::Nhwc { h: oh, w: ow, c },
            Op::Resize {
                src,
                oh,
                ow,
                act: Activation::Identity,
            },
        )
    }

    /// `DepthToSpace` in DCR mode.
    fn depth_to_space(&mut self, node: &Node) -> Result<(), LowerError> {
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
        self.define(node, shape, Op::DepthToSpace { src, bs })
    }

    /// `ReduceMean` over H and W.
    fn reduce_mean(&mut self, node: &Node) -> Result<(), LowerError> {
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
        self.define(node, shape, Op::Mean { src })
    }

    // Channel moves and views: no arithmetic.

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
                self.define(node, shape, Op::Remap { src, start })
            }
            _ => unsupported(node, "padding both channels and space, or the batch"),
        }
    }

    /// `Slice` of the channel axis with unit step: a channel remap.
    fn slice(&mut self, node: &Node) -> Result<(), LowerError> {
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
        self.define(
            node,
            Shape::Nhwc { h, w, c: e - s },
            Op::Remap {
                src,
                start: s as isize,
            },
        )
    }

    /// `Transpose(0, 2, 3, 1)`: a view, NCHW -> NHWC is our layout.
    fn transpose(&mut self, node: &Node) -> Result<(), LowerError> {
        let src = self.value(node, &node.inputs[0])?;
        let (h, w, c) = self.nhwc(node, src)?;
        if node.ints("perm") != Some(&[0, 2, 3, 1]) {
            return unsupported(node, "only the NCHW -> NHWC permutation");
        }
        let v = self.view(src, Shape::Flat(vec![1, h, w, c]));
        self.names.insert(node.outputs[0].clone(), v);
        Ok(())
    }

    /// `Reshape` of a flat (or 1x1 NCHW) tensor: a view.
    fn reshape(&mut self, node: &Node) -> Result<(), LowerError> {
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
        let dims = reshape_dims(spec, len)
            .ok_or_else(|| LowerError(format!("Reshape {:?}: bad shape {spec:?}", node.name)))?;
        let v = self.view(src, Shape::Flat(dims));
        self.names.insert(node.outputs[0].clone(), v);
        Ok(())
    }

    /// `Concat` of flat tensors along the outermost non-unit axis.
    fn concat(&mut self, node: &Node) -> Result<(), LowerError> {
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
        self.define(node, Shape::Flat(dims), Op::Concat { srcs })
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

/// A graph lowered node by node, before fusion: its layers in graph order,
/// every value, and which values are the input and the outputs.
pub(super) struct Lowered {
    pub(super) layers: Vec<Layer>,
    pub(super) values: Vec<Value>,
    pub(super) input: V,
    pub(super) outputs: Vec<V>,
    /// `(height, width, channels)` of the input.
    pub(super) input_shape: (usize, usize, usize),
}

/// Lowers every node of `graph`, in order.
pub(super) fn lower_graph(graph: &Graph) -> Result<Lowered, LowerError> {
    let [input] = &graph.inputs[..] else {
        return Err(LowerError(format!(
            "{} graph inputs, expected 1",
            graph.inputs.len()
        )));
    };
    // The batch may be free (0: the converter's `N`); these kernels run one
    // image at a time.
    let &[0 | 1, c, h, w] = &input.shape[..] else {
        return Err(LowerError(format!(
            "input shape {:?}, expected [N, C, H, W] with N free or 1",
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
    Ok(Lowered {
        layers: l.layers,
        values: l.values,
        input: input_value,
        outputs: output_values,
        input_shape: (h, w, c),
    })
}
