//! The patch matrix of a dense convolution ([`im2col`]): every window of the
//! input laid out as one row, so the convolution is a [`gemm`] of it with the
//! packed weights. Plain copies, no arithmetic and no instruction set of its
//! own; it must not know the weights' packing.
//!
//! [`gemm`]: fn@super::gemm

use super::Window;

/// Lays out every convolution window of `input` (`c` channels) as one row of
/// `out`: `out[(oy * ow + ox) * K + (ky * kw + kx) * c + ch]`, zeros where the
/// window hangs over the padding, `K = kh * kw * c`. A dense convolution is
/// then a [`gemm`](fn@super::gemm) of this matrix with the packed weights.
pub fn im2col(input: &[f32], win: &Window, c: usize, out: &mut [f32]) {
    let (oh, ow) = win.output_size().expect("im2col: window does not fit");
    let k = win.kh * win.kw * c;
    assert!(input.len() >= win.h * win.w * c, "im2col: input too short");
    assert!(out.len() >= oh * ow * k, "im2col: out too short");
    // Output columns whose windows lie inside the image horizontally: there
    // each kernel row is one contiguous run of `kw * c` floats at a fixed
    // stride, copied without per-pixel window arithmetic (a stem
    // convolution has tens of thousands of such pixels).
    let first = win.pads[1].div_ceil(win.stride_w).min(ow);
    let last = if win.w + win.pads[1] >= win.kw {
        ((win.w + win.pads[1] - win.kw) / win.stride_w + 1).clamp(first, ow)
    } else {
        first
    };
    let run = win.kw * c;
    for oy in 0..oh {
        let (iy0, ky_range) = win.rows(oy);
        for ox in (0..first).chain(last..ow) {
            im2col_pixel(input, win, c, k, oy, ow, ox, out);
        }
        for ky in 0..win.kh {
            let dst_rows = (first..last).map(|ox| (oy * ow + ox) * k + ky * run);
            if ky_range.contains(&ky) {
                let iy = (iy0 + ky as isize) as usize;
                let x0 = first * win.stride_w - win.pads[1];
                for (i, d) in dst_rows.enumerate() {
                    let src = (iy * win.w + x0 + i * win.stride_w) * c;
                    out[d..d + run].copy_from_slice(&input[src..src + run]);
                }
            } else {
                for d in dst_rows {
                    out[d..d + run].fill(0.0);
                }
            }
        }
    }
}

/// One row of [`im2col`] for output pixel `(oy, ox)`, any window position.
#[allow(clippy::too_many_arguments)]
fn im2col_pixel(
    input: &[f32],
    win: &Window,
    c: usize,
    k: usize,
    oy: usize,
    ow: usize,
    ox: usize,
    out: &mut [f32],
) {
    let (iy0, ky_range) = win.rows(oy);
    let (ix0, kx_range) = win.cols(ox);
    let row = &mut out[(oy * ow + ox) * k..(oy * ow + ox + 1) * k];
    // Windows inside the image write every element below.
    if !(ky_range.len() == win.kh && kx_range.len() == win.kw) {
        row.fill(0.0);
    }
    let (kx0, kx1) = (kx_range.start, kx_range.end);
    if kx0 == kx1 {
        return;
    }
    for ky in ky_range {
        let iy = (iy0 + ky as isize) as usize;
        // The in-bounds taps of one kernel row are contiguous in both the
        // input row and the patch row.
        let ix = (ix0 + kx0 as isize) as usize;
        let src = &input[(iy * win.w + ix) * c..(iy * win.w + ix + kx1 - kx0) * c];
        row[(ky * win.kw + kx0) * c..(ky * win.kw + kx1) * c].copy_from_slice(src);
    }
}
