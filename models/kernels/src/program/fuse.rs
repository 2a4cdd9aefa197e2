//! Fusion, on the lowered layers before any buffer exists: an `Add` of a
//! convolution becomes its residual, an activation joins its producer, and
//! large inverted-residual blocks become one row-by-row [`Op::Block`]; then
//! layers no output needs are dropped. Each pass keeps the layer order
//! valid (a fused layer moves to where all its inputs are ready). It knows
//! nothing of ONNX, buffer slots or instruction sets.

use super::ir::{Layer, Op, Pointwise, Shape, V, Value};
use crate::kernels::Activation;

/// Inverted-residual blocks whose depthwise input is at least this big run
/// fused, row by row ([`Op::Block`]). 1 MiB takes in the 56x56x144 blocks
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

/// Every fusion pass in order, then the dead layers dropped: the layers to
/// run, in run order. `values` grows only where a pass makes a new tensor.
pub(super) fn fuse(layers: Vec<Layer>, values: &mut Vec<Value>, outputs: &[V]) -> Vec<Layer> {
    let mut layers: Vec<Option<Layer>> = layers.into_iter().map(Some).collect();
    fuse_residuals(&mut layers, values, outputs);
    fuse_activations(&mut layers, values, outputs);
    if POINTWISE_BEFORE_UPSAMPLE {
        pointwise_before_upsample(&mut layers, values, outputs);
    }
    fuse_blocks(&mut layers, values, outputs);
    live_layers(layers, values, outputs)
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
        .position(|l| l.as_ref().is_some_and(|l| l.dst == v))
}

/// `Add(conv, other)` -> conv with residual `other`; the conv moves to the
/// Add's place (where `other` is ready). A channel pad (behind) producing
/// `other`, read by nothing else, is dropped: the residual's channel count
/// says which channels it covers.
fn fuse_residuals(layers: &mut [Option<Layer>], values: &[Value], outputs: &[V]) {
    for i in 0..layers.len() {
        let Some(Layer {
            dst,
            op:
                Op::Add {
                    a,
                    b,
                    act: Activation::Identity,
                },
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
                    Some(Layer {
                        op: Op::Gemm {
                            residual: None,
                            act: Activation::Identity,
                            ..
                        } | Op::SparseGemm {
                            residual: None,
                            act: Activation::Identity,
                            ..
                        } | Op::Dense {
                            residual: None,
                            act: Activation::Identity,
                            ..
                        },
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
            && let Some(Layer {
                op: Op::Remap { src, start: 0 },
                ..
            }) = layers[q]
            && values[src].shape.channels() <= values[other].shape.channels()
            && values[src].shape.len() / values[src].shape.channels()
                == values[other].shape.len() / values[other].shape.channels()
        {
            residual = src;
            channels = values[src].shape.channels();
            layers[q] = None;
        }
        let mut conv = layers[p].take().expect("producer exists");
        match &mut conv.op {
            Op::Gemm { residual: r, .. }
            | Op::SparseGemm { residual: r, .. }
            | Op::Dense { residual: r, .. } => *r = Some((residual, channels)),
            _ => unreachable!("fusable checked the layer kind"),
        }
        conv.dst = dst;
        layers[i] = Some(conv);
    }
}

/// `act(x)` where `x` comes from a layer without an activation and is read by
/// nothing else -> that layer with the activation.
fn fuse_activations(layers: &mut [Option<Layer>], values: &[Value], outputs: &[V]) {
    for i in 0..layers.len() {
        let Some(Layer {
            dst,
            op: Op::Activate { src, act },
        }) = layers[i].clone()
        else {
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
            layer.dst = dst;
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
            Some(Layer {
                dst,
                op:
                    Op::Gemm {
                        src,
                        w,
                        residual: None,
                        ..
                    },
            }) => (*src, *dst, w.k, w.n),
            Some(Layer {
                dst,
                op:
                    Op::SparseGemm {
                        src,
                        w,
                        residual: None,
                        ..
                    },
            }) => (*src, *dst, w.k, w.n),
            _ => continue,
        };
        let counts = readers(layers, values, outputs);
        let Some(p) = producer(layers, src) else {
            continue;
        };
        let Some(Layer {
            dst: up,
            op:
                Op::Resize {
                    src: x,
                    oh,
                    ow,
                    act: Activation::Identity,
                },
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
            Layer {
                dst,
                op: Op::Gemm { src, m, act, .. } | Op::SparseGemm { src, m, act, .. },
            } => {
                (*src, *dst, *m) = (x, low, h * w);
                std::mem::replace(act, Activation::Identity)
            }
            _ => unreachable!("matched above"),
        };
        // The pointwise layer runs where the upsample did (its input is
        // ready there), the upsample where the pointwise layer did.
        layers[p] = Some(pointwise);
        layers[i] = Some(Layer {
            dst,
            op: Op::Resize {
                src: low,
                oh,
                ow,
                act,
            },
        });
    }
}

/// A pointwise layer's parts, if `layer` is one: (weights, activation,
/// residual, src).
fn as_pointwise(layer: &Layer) -> Option<(Pointwise, Activation, Option<(V, usize)>, V)> {
    match &layer.op {
        Op::Gemm {
            src,
            w,
            act,
            residual,
            ..
        } => Some((Pointwise::Dense(w.clone()), act.clone(), *residual, *src)),
        Op::SparseGemm {
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
/// nothing else, -> one [`Op::Block`] at the projection's place (where
/// its residual is ready).
fn fuse_blocks(layers: &mut [Option<Layer>], values: &[Value], outputs: &[V]) {
    for i in 0..layers.len() {
        let Some(Layer {
            dst: d,
            op:
                Op::Depthwise {
                    src: e,
                    win,
                    w: dw,
                    act: dw_act,
                },
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
        let dst = layers[ci].as_ref().map(|l| l.dst).expect("consumer exists");
        let src = expand.as_ref().map_or(e, |(_, _, _, x)| *x);
        if let Some((p, ..)) = &expand {
            layers[*p] = None;
        }
        layers[i] = None;
        layers[ci] = Some(Layer {
            dst,
            op: Op::Block {
                src,
                expand: expand.map(|(_, w, a, _)| (w, a)),
                win,
                dw,
                dw_act,
                project,
                act,
                residual,
            },
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
        if needed[layer.dst] {
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
