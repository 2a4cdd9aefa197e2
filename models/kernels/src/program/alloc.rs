//! Buffer allocation, once the layers are final: every storage gets a
//! slot, reused once its tensor's last reader has run (best fit), so a
//! [`super::Scratch`] holds a handful of buffers that live across frames;
//! and each layer's work decides whether a split run halves it. It knows
//! nothing of ONNX or of how the layers run.

use super::ir::{Layer, Op, Pointwise, Shape, V, Value};
use super::{LowerError, OutputSpec, Program, Step};
use crate::Isa;
use crate::kernels::Window;
use crate::onnx::Graph;

/// Gives every storage a slot, reusing slots whose tensor is dead (best fit).
pub(super) fn allocate(
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
        let d = values[layer.dst].storage;
        if slot_of_storage[d] != usize::MAX {
            return Err(LowerError(format!("tensor written twice (layer {i})")));
        }
        slot_of_storage[d] = take_slot(size[d], &mut slot_sizes, &mut free);
        if let Op::Dense { win, c_in, .. } = &layer.op {
            let (oh, ow) = win.output_size().unwrap_or((0, 0));
            im2col_size = im2col_size.max(oh * ow * win.kh * win.kw * c_in);
        }
        if let Op::Block { win, dw, .. } = &layer.op {
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
    match &layer.op {
        Op::Block {
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
        Op::Gemm { m, w, .. } => m * w.k * w.n,
        Op::SparseGemm { m, w, .. } => (w.density() * (m * w.k * w.n) as f32) as usize,
        Op::Dense { win, w, .. } => rows_of(win) * w.k * w.n,
        Op::Depthwise { win, w, .. } => rows_of(win) * w.c * win.kh * win.kw,
        _ => 0,
    }
}

/// Layers with fewer multiply-adds than this run on one thread even when
/// split (about 30 µs of work: below it the hand-off costs more than the
/// second thread gains).
pub(super) const SPLIT_MIN_WORK: usize = 1 << 19;
