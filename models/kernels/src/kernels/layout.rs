//! The layers without weights that move or reduce pixels: max-pool, bilinear
//! resize, depth-to-space, channel remap (slice or pad) and the global mean.
//! None is hot enough for hand-written SIMD; the multiversioned ones are
//! compiled per instruction set like the rest. Nothing here touches packed
//! weights or the GEMMs.

use super::{Activation, Window, fmadd};
use crate::multiversion;

multiversion! {
    /// Max-pool over `c` channels. Padded taps are skipped (never the max).
    pub fn max_pool(input: &[f32], win: &Window, c: usize, out: &mut [f32]) {
        let (oh, ow) = win.output_size().expect("max_pool: window does not fit");
        assert!(input.len() >= win.h * win.w * c, "max_pool: input too short");
        assert!(out.len() >= oh * ow * c, "max_pool: out too short");
        for oy in 0..oh {
            let (iy0, ky_range) = win.rows(oy);
            for ox in 0..ow {
                let (ix0, kx_range) = win.cols(ox);
                let o = &mut out[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
                o.fill(f32::NEG_INFINITY);
                for ky in ky_range.clone() {
                    let iy = (iy0 + ky as isize) as usize;
                    for kx in kx_range.clone() {
                        let ix = (ix0 + kx as isize) as usize;
                        let i = &input[(iy * win.w + ix) * c..(iy * win.w + ix + 1) * c];
                        for (o, i) in o.iter_mut().zip(i) {
                            *o = o.max(*i);
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    /// Bilinear resize, `half_pixel` coordinates (TFLite `half_pixel_centers`,
    /// ONNX `Resize` mode `linear`): source coordinate
    /// `(dst + 0.5) * in / out - 0.5`, clamped to the image; then `act`.
    pub fn resize_bilinear(
        input: &[f32],
        h: usize,
        w: usize,
        c: usize,
        oh: usize,
        ow: usize,
        act: &Activation,
        out: &mut [f32],
    ) {
        assert!(input.len() >= h * w * c && out.len() >= oh * ow * c, "resize: sizes");
        assert!(act.covers(c), "resize: activation too short");
        let taps = |dst: usize, n_in: usize, n_out: usize| {
            let src = ((dst as f32 + 0.5) * (n_in as f32 / n_out as f32) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(n_in - 1);
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, src - i0 as f32)
        };
        for oy in 0..oh {
            let (y0, y1, fy) = taps(oy, h, oh);
            for ox in 0..ow {
                let (x0, x1, fx) = taps(ox, w, ow);
                let p = |y: usize, x: usize| &input[(y * w + x) * c..(y * w + x + 1) * c];
                let (a, b, cc, d) = (p(y0, x0), p(y0, x1), p(y1, x0), p(y1, x1));
                let o = &mut out[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
                for ch in 0..c {
                    let top = fmadd::<FMA>(b[ch] - a[ch], fx, a[ch]);
                    let bottom = fmadd::<FMA>(d[ch] - cc[ch], fx, cc[ch]);
                    o[ch] = fmadd::<FMA>(bottom - top, fy, top);
                }
                act.apply_pixel(o);
            }
        }
    }
}

/// ONNX `DepthToSpace`, mode `DCR`, NHWC: input channel `(i * bs + j) * c_out +
/// ch` of pixel `(y, x)` goes to channel `ch` of pixel `(y * bs + i, x * bs + j)`.
pub fn depth_to_space(input: &[f32], h: usize, w: usize, c_out: usize, bs: usize, out: &mut [f32]) {
    let c_in = c_out * bs * bs;
    assert!(
        input.len() >= h * w * c_in,
        "depth_to_space: input too short"
    );
    assert!(out.len() >= h * w * c_in, "depth_to_space: out too short");
    let ow = w * bs;
    for y in 0..h {
        for x in 0..w {
            let px = &input[(y * w + x) * c_in..(y * w + x + 1) * c_in];
            for i in 0..bs {
                for j in 0..bs {
                    let o = ((y * bs + i) * ow + x * bs + j) * c_out;
                    let s = (i * bs + j) * c_out;
                    out[o..o + c_out].copy_from_slice(&px[s..s + c_out]);
                }
            }
        }
    }
}

/// Copies channels `[start, start + c_out)` of each pixel of `input`
/// (`c_in` channels) into a tensor of `c_out` channels, filling the ones
/// outside `input` with zeros: a channel slice (`start >= 0`) or a channel
/// pad (`start < 0` pads in front, `c_out > c_in - start` pads behind).
pub fn remap_channels(
    input: &[f32],
    pixels: usize,
    c_in: usize,
    start: isize,
    c_out: usize,
    out: &mut [f32],
) {
    assert!(
        input.len() >= pixels * c_in,
        "remap_channels: input too short"
    );
    assert!(out.len() >= pixels * c_out, "remap_channels: out too short");
    for p in 0..pixels {
        let src = &input[p * c_in..(p + 1) * c_in];
        let dst = &mut out[p * c_out..(p + 1) * c_out];
        for (o, d) in dst.iter_mut().enumerate() {
            let s = start + o as isize;
            *d = if s >= 0 && (s as usize) < c_in {
                src[s as usize]
            } else {
                0.0
            };
        }
    }
}

/// Mean over all pixels of each of `c` channels (ONNX `ReduceMean` over H, W).
pub fn global_mean(input: &[f32], pixels: usize, c: usize, out: &mut [f32]) {
    assert!(
        input.len() >= pixels * c && out.len() >= c,
        "global_mean: sizes"
    );
    let sums = &mut out[..c];
    sums.fill(0.0);
    for px in input[..pixels * c].chunks_exact(c) {
        for (s, v) in sums.iter_mut().zip(px) {
            *s += v;
        }
    }
    for s in sums {
        *s /= pixels as f32;
    }
}
