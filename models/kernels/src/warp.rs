//! Image → tensor: OpenCV's 8-bit `warpPerspective` with `INTER_LINEAR`,
//! bit for bit, on an interleaved RGB image, writing floats through a lookup
//! table (the tensor's value range). The pipeline (`src/model/warp.rs` of the
//! server) builds the matrix the way MediaPipe's CPU path does and calls this
//! for every net's input on every frame, about 400 000 pixels a static frame.
//!
//! Two passes per output row, so the arithmetic vectorizes: the source
//! coordinates of the whole row in f64 (IEEE operations in the same order as
//! OpenCV's `WarpPerspectiveInvoker`; Rust never contracts them into FMAs,
//! so every instruction set gives the same bits), then the bilinear samples
//! with OpenCV's integer weights.

use crate::multiversion;

/// OpenCV's INTER_BITS: source coordinates are quantised to 1/32 px.
pub const INTER_BITS: u32 = 5;
const INTER_TAB_SIZE: i32 = 1 << INTER_BITS;
/// OpenCV's INTER_REMAP_COEF_BITS: bilinear weights are integers summing to
/// 2^15.
const COEF_BITS: u32 = 15;

/// What samples outside the image are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarpBorder {
    /// 0 (`BORDER_CONSTANT` with 0).
    Zero,
    /// The nearest edge pixel (`BORDER_REPLICATE`).
    Replicate,
}

/// The source image: interleaved RGB, `width * 3` bytes a row.
#[derive(Debug, Clone, Copy)]
pub struct RgbSource<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub height: usize,
}

/// One warp: `out` (`size x size x 3`) samples the source at `matrix` (the
/// source-from-destination homography, row-major) applied to each output
/// pixel, coordinates restarting every `block` columns as OpenCV's
/// blocks do; each u8 result `v` is written as `lut[v]`.
#[derive(Debug, Clone, Copy)]
pub struct Warp<'a> {
    pub matrix: &'a [f64; 9],
    pub size: usize,
    pub block: usize,
    pub border: WarpBorder,
    pub lut: &'a [f32; 256],
}

/// `std::max(INT_MIN, std::min(INT_MAX, v))` as `WarpPerspectiveInvoker`
/// writes it (a NaN becomes INT_MAX, as there), then `cvRound` (half to
/// even: adding and subtracting 1.5 * 2^52 makes the FPU round in its
/// default nearest-even mode; exact for the clamped range).
#[inline(always)]
fn clamp_round(v: f64) -> i32 {
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    let v = if v.is_nan() || v > i32::MAX as f64 {
        i32::MAX as f64
    } else {
        v
    };
    let v = if v < i32::MIN as f64 {
        i32::MIN as f64
    } else {
        v
    };
    ((v + MAGIC) - MAGIC) as i32
}

multiversion! {
    /// Warps `src` into `out` as `warp` says. `coords` is scratch (resized).
    pub fn warp_perspective(
        src: &RgbSource<'_>,
        warp: &Warp<'_>,
        out: &mut [f32],
        coords: &mut Vec<[i32; 2]>,
    ) {
        let (t, bw, m) = (warp.size, warp.block.max(1), warp.matrix);
        let (iw, ih) = (src.width as i32, src.height as i32);
        assert!(src.data.len() >= src.width * src.height * 3, "warp: source too short");
        assert!(out.len() >= t * t * 3, "warp: out too short");
        assert!(src.width < i32::MAX as usize / 4 && src.height < i32::MAX as usize / 4, "warp: source too large");
        coords.resize(t, [0, 0]);
        let stride = src.width * 3;
        let zero = warp.border == WarpBorder::Zero;
        let lut = warp.lut;
        let mask = INTER_TAB_SIZE - 1;
        let half = 1i32 << (COEF_BITS - 1);
        for j in 0..t {
            // Pass 1: source coordinates in 1/32 px. Per block, X0/Y0/W0 at
            // its first column, then (X0 + M0·x1)·(32 / (W0 + M6·x1)).
            for b0 in (0..t).step_by(bw) {
                let (xb, y) = (b0 as f64, j as f64);
                let x0 = m[0] * xb + m[1] * y + m[2];
                let y0 = m[3] * xb + m[4] * y + m[5];
                let w0 = m[6] * xb + m[7] * y + m[8];
                let n = bw.min(t - b0);
                for (x1, c) in coords[b0..b0 + n].iter_mut().enumerate() {
                    let x1 = x1 as f64;
                    let wq = w0 + m[6] * x1;
                    let wq = if wq != 0.0 { INTER_TAB_SIZE as f64 / wq } else { 0.0 };
                    *c = [clamp_round((x0 + m[0] * x1) * wq), clamp_round((y0 + m[3] * x1) * wq)];
                }
            }
            // Pass 2: bilinear samples. The integer part is saturated to
            // i16 (OpenCV's XY map is CV_16SC2); the weights are products
            // of (32 - a) and a, times 2^15 / 2^10 = 32, exact.
            let out_row = &mut out[j * t * 3..(j + 1) * t * 3];
            for (px, &[xq, yq]) in out_row.chunks_exact_mut(3).zip(coords.iter()) {
                let sx = (xq >> INTER_BITS).clamp(i16::MIN as i32, i16::MAX as i32);
                let sy = (yq >> INTER_BITS).clamp(i16::MIN as i32, i16::MAX as i32);
                let (ax, ay) = (xq & mask, yq & mask);
                let w00 = (INTER_TAB_SIZE - ax) * (INTER_TAB_SIZE - ay) * 32;
                let w01 = ax * (INTER_TAB_SIZE - ay) * 32;
                let w10 = (INTER_TAB_SIZE - ax) * ay * 32;
                let w11 = ax * ay * 32;
                if sx >= 0 && sy >= 0 && sx + 1 < iw && sy + 1 < ih {
                    // All four neighbours inside.
                    let o = sy as usize * stride + sx as usize * 3;
                    let (r0, r1) = (&src.data[o..o + 6], &src.data[o + stride..o + stride + 6]);
                    for ch in 0..3 {
                        let v = r0[ch] as i32 * w00
                            + r0[3 + ch] as i32 * w01
                            + r1[ch] as i32 * w10
                            + r1[3 + ch] as i32 * w11;
                        px[ch] = lut[((v + half) >> COEF_BITS).clamp(0, 255) as usize];
                    }
                } else if zero && (sx >= iw || sy >= ih || sx + 1 < 0 || sy + 1 < 0) {
                    px.copy_from_slice(&[lut[0]; 3]);
                } else {
                    let fetch = |x: i32, y: i32| -> Option<usize> {
                        if zero {
                            (x >= 0 && y >= 0 && x < iw && y < ih)
                                .then(|| y as usize * stride + x as usize * 3)
                        } else {
                            Some(y.clamp(0, ih - 1) as usize * stride + x.clamp(0, iw - 1) as usize * 3)
                        }
                    };
                    let corners = [
                        (fetch(sx, sy), w00),
                        (fetch(sx + 1, sy), w01),
                        (fetch(sx, sy + 1), w10),
                        (fetch(sx + 1, sy + 1), w11),
                    ];
                    for ch in 0..3 {
                        let v: i32 = corners
                            .iter()
                            .map(|&(o, wt)| o.map_or(0, |o| src.data[o + ch] as i32) * wt)
                            .sum();
                        px[ch] = lut[((v + half) >> COEF_BITS).clamp(0, 255) as usize];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_to_even_and_saturating_like_opencv() {
        let r = clamp_round;
        assert_eq!(
            [r(0.5), r(1.5), r(2.5), r(-0.5), r(-1.5), r(2.4), r(-2.6)],
            [0, 2, 2, 0, -2, 2, -3]
        );
        assert_eq!(r(1e300), i32::MAX);
        assert_eq!(r(-1e300), i32::MIN);
        assert_eq!(r(f64::NAN), i32::MAX);
    }

    /// Every instruction set gives the same bytes: rotated, scaled,
    /// perspective crops inside the image (the AVX-512 groups) and hanging
    /// over its edges (pixel by pixel), both borders.
    #[test]
    fn every_instruction_set_warps_the_same() {
        let (w, h) = (211, 157);
        let data: Vec<u8> = (0..w * h * 3).map(|i| (i * 7919 % 251) as u8).collect();
        let src = RgbSource {
            data: &data,
            width: w,
            height: h,
        };
        let lut: [f32; 256] = std::array::from_fn(|v| v as f32 / 255.0);
        let (c, s) = (0.3f64.cos(), 0.3f64.sin());
        let inside = [
            1.3 * c,
            -1.3 * s,
            60.0,
            1.3 * s,
            1.3 * c,
            20.0,
            1e-4,
            -2e-4,
            1.0,
        ];
        let over = [
            2.9 * c,
            -2.9 * s,
            -40.0,
            2.9 * s,
            2.9 * c,
            -30.0,
            1e-4,
            -2e-4,
            1.0,
        ];
        for matrix in [inside, over] {
            for border in [WarpBorder::Zero, WarpBorder::Replicate] {
                let warp = Warp {
                    matrix: &matrix,
                    size: 90,
                    block: 32,
                    border,
                    lut: &lut,
                };
                let mut outs = Vec::new();
                for isa in crate::Isa::under_test() {
                    let mut out = vec![f32::NAN; 90 * 90 * 3];
                    warp_perspective(isa, &src, &warp, &mut out, &mut Vec::new());
                    assert!(
                        out.iter().all(|v| v.is_finite()),
                        "{border:?} [{}]",
                        isa.name()
                    );
                    outs.push((isa.name(), out));
                }
                for pair in outs.windows(2) {
                    assert!(
                        pair[0].1 == pair[1].1,
                        "{border:?}: {} and {} differ",
                        pair[0].0,
                        pair[1].0
                    );
                }
            }
        }
    }
}
