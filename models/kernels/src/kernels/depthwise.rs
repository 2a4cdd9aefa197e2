//! Depthwise convolution: [`PackedDepthwise`] (the weights, packed once),
//! the whole layer ([`depthwise`]) and one output row of it
//! ([`depthwise_row`], which fused blocks and split runs call with their own
//! row buffers), portable and with AVX2 row and pixel loops. It owns the
//! per-tap bookkeeping at the padded edges; it knows nothing of the GEMMs.

use super::activation::act_avx2;
use super::{Activation, LANES, Window, fmadd, lane_mask, round_up};
use crate::multiversion;

/// Depthwise weights packed once: `w[(ky * kw + kx) * c_pad + ch]`, bias
/// `[c_pad]`, with `c_pad` the channels rounded up to [`LANES`], zero past `c`.
#[derive(Debug, Clone)]
pub struct PackedDepthwise {
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    w: Vec<f32>,
    bias: Vec<f32>,
}

impl PackedDepthwise {
    /// Packs `weight(ch, ky, kx)` and `bias` (length `c`).
    pub fn pack(
        c: usize,
        kh: usize,
        kw: usize,
        weight: impl Fn(usize, usize, usize) -> f32,
        bias: &[f32],
    ) -> Self {
        assert_eq!(bias.len(), c, "bias length");
        let c_pad = round_up(c, LANES);
        let mut w = vec![0.0; kh * kw * c_pad];
        for ky in 0..kh {
            for kx in 0..kw {
                for ch in 0..c {
                    w[(ky * kw + kx) * c_pad + ch] = weight(ch, ky, kx);
                }
            }
        }
        let mut padded_bias = bias.to_vec();
        padded_bias.resize(c_pad, 0.0);
        Self {
            c,
            kh,
            kw,
            w,
            bias: padded_bias,
        }
    }

    fn c_pad(&self) -> usize {
        self.bias.len()
    }
}

multiversion! {
    /// Depthwise convolution, `out = act(dwconv(input) + bias)`, NHWC with
    /// `p.c` channels in and out.
    pub fn depthwise(
        input: &[f32],
        win: &Window,
        p: &PackedDepthwise,
        act: &Activation,
        out: &mut [f32],
    ) {
        let c = p.c;
        let (oh, ow) = win.output_size().expect("depthwise: window does not fit");
        assert!(win.kh == p.kh && win.kw == p.kw, "depthwise: kernel size");
        assert!(input.len() >= win.h * win.w * c, "depthwise: input too short");
        assert!(out.len() >= oh * ow * c, "depthwise: out too short");
        assert!(act.covers(p.c_pad()), "depthwise: activation too short");
        if win.kh == 1 && win.kw == 1 && win.stride_h == 1 && win.stride_w == 1 && win.pads == [0; 4] {
            // A per-channel scale (`hand_recrop`'s 1x1 depthwise convs): the
            // same `fma(x, w, bias)` per element as the general path, without
            // its per-pixel tap bookkeeping.
            let (w, bias) = (&p.w[..c], &p.bias[..c]);
            for (o, x) in out.chunks_exact_mut(c).zip(input.chunks_exact(c)).take(oh * ow) {
                for ch in 0..c {
                    o[ch] = fmadd::<FMA>(x[ch], w[ch], bias[ch]);
                }
                act.apply_pixel(o);
            }
            return;
        }
        let mut taps = vec![(0usize, 0usize); win.kh * win.kw];
        let mut rows = vec![0usize; win.kh];
        for oy in 0..oh {
            let (iy0, ky_range) = win.rows(oy);
            for (i, ky) in ky_range.clone().enumerate() {
                rows[i] = (iy0 + ky as isize) as usize * win.w * c;
            }
            let out_row = &mut out[oy * ow * c..(oy + 1) * ow * c];
            depthwise_row_impl::<FMA>(input, &rows[..ky_range.len()], oy, win, p, act, out_row, &mut taps);
        }
    }
}

multiversion! {
    /// Output row `oy` of [`depthwise`], reading input row `iy` at offset
    /// `rows[iy - first]` of `input`, for the in-bounds kernel rows only
    /// (`first` the first of them): the rows may live anywhere, e.g. in the
    /// ring buffer of a fused block. `taps` is scratch.
    pub fn depthwise_row(
        input: &[f32],
        rows: &[usize],
        oy: usize,
        win: &Window,
        p: &PackedDepthwise,
        act: &Activation,
        out_row: &mut [f32],
        taps: &mut Vec<(usize, usize)>,
    ) {
        let c = p.c;
        let (_, ow) = win.output_size().expect("depthwise_row: window does not fit");
        assert!(win.kh == p.kh && win.kw == p.kw, "depthwise_row: kernel size");
        assert_eq!(rows.len(), win.rows(oy).1.len(), "depthwise_row: row count");
        assert!(rows.iter().all(|&r| r + win.w * c <= input.len()), "depthwise_row: rows");
        assert!(out_row.len() >= ow * c, "depthwise_row: out too short");
        assert!(act.covers(p.c_pad()), "depthwise_row: activation too short");
        taps.resize(win.kh * win.kw, (0, 0));
        depthwise_row_impl::<FMA>(input, rows, oy, win, p, act, out_row, taps);
    }
}

/// The body of [`depthwise_row`], its bounds checked by the callers: each of
/// `rows` starts a full input row within `input`, `out_row` holds `ow * c`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn depthwise_row_impl<const FMA: bool>(
    input: &[f32],
    rows: &[usize],
    oy: usize,
    win: &Window,
    p: &PackedDepthwise,
    act: &Activation,
    out_row: &mut [f32],
    taps: &mut [(usize, usize)],
) {
    let c = p.c;
    let ow = (win.w + win.pads[1] + win.pads[3] - win.kw) / win.stride_w + 1;
    let ky0 = win.rows(oy).1.start;
    let mut ox = 0;
    while ox < ow {
        // Stride 1, eight pixels whose windows are all inside the row: each
        // input column is loaded once for the (up to) kw pixels it feeds.
        #[cfg(target_arch = "x86_64")]
        if FMA
            && win.stride_w == 1
            && (win.kw == 3 || win.kw == 5)
            && ox + ROW_PIXELS <= ow
            && ox >= win.pads[1]
            && ox + ROW_PIXELS - 1 - win.pads[1] + win.kw <= win.w
        {
            let ix0 = ox - win.pads[1];
            let out_px = &mut out_row[ox * c..(ox + ROW_PIXELS) * c];
            // SAFETY: `FMA` instances run only on CPUs with avx2 and fma;
            // input columns `ix0..ix0 + 8 + kw - 1` are inside the row
            // (checked just above), each of `rows` starts a full input row
            // within `input` (checked by the callers), `out_px` holds the
            // eight pixels.
            unsafe {
                if win.kw == 3 {
                    depthwise_row8_avx2::<3>(input, rows, ky0, ix0, p, act, out_px);
                } else {
                    depthwise_row8_avx2::<5>(input, rows, ky0, ix0, p, act, out_px);
                }
            }
            ox += ROW_PIXELS;
            continue;
        }
        // The in-bounds taps of this output pixel: (input offset, weight
        // offset) of channel 0. Computed once per pixel, reused per channel.
        let (ix0, kx_range) = win.cols(ox);
        let mut n = 0;
        for (i, &row) in rows.iter().enumerate() {
            let ky = ky0 + i;
            for kx in kx_range.clone() {
                let ix = (ix0 + kx as isize) as usize;
                taps[n] = (row + ix * c, (ky * p.kw + kx) * p.c_pad());
                n += 1;
            }
        }
        let o = ox * c;
        // Two neighbours with the same in-bounds taps (the interior) are done
        // together: twice the independent FMA chains.
        let pair = ox + 1 < ow && win.cols(ox + 1).1 == kx_range;
        if FMA {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `FMA` is true only in the instances compiled with avx2
            // and fma, run only on CPUs that have them. Every tap offset
            // (plus `stride_w * c` for the second pixel of a pair, whose taps
            // are the same columns shifted by one stride, still in the row)
            // plus `c` is within `input`: rows start full input rows (checked
            // by the callers) and columns are in bounds; every weight offset
            // plus `c_pad` is within `p.w`; `out_row` holds the pixels.
            unsafe {
                let out_px = &mut out_row[o..o + if pair { 2 * c } else { c }];
                if pair {
                    depthwise_avx2::<2>(input, &taps[..n], win.stride_w * c, p, act, out_px);
                } else {
                    depthwise_avx2::<1>(input, &taps[..n], 0, p, act, out_px);
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            depthwise_pixel::<FMA>(input, &taps[..n], p, act, &mut out_row[o..o + c]);
        } else {
            depthwise_pixel::<FMA>(input, &taps[..n], p, act, &mut out_row[o..o + c]);
        }
        ox += if FMA && cfg!(target_arch = "x86_64") && pair {
            2
        } else {
            1
        };
    }
}

/// Output pixels per call of [`depthwise_row8_avx2`].
#[cfg(target_arch = "x86_64")]
const ROW_PIXELS: usize = 8;

/// Eight neighbouring output pixels of a stride-1 depthwise convolution
/// whose windows lie inside the input row, AVX2: per kernel row, each of the
/// `8 + KW - 1` input columns is loaded once and multiplied into every pixel
/// it feeds (eight accumulators, the `KW` weights of the row in registers),
/// instead of `KW` loads per pixel.
///
/// # Safety
/// The CPU must support avx2 and fma; every row offset in `rows` plus
/// `(ix0 + 8 + KW - 1) * p.c` must be within `input`; `out` must hold
/// `8 * p.c` floats; PReLU slopes must cover the padded channels.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn depthwise_row8_avx2<const KW: usize>(
    input: &[f32],
    rows: &[usize],
    ky0: usize,
    ix0: usize,
    p: &PackedDepthwise,
    act: &Activation,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (c, c_pad) = (p.c, p.c_pad());
    let (x, w, b, o) = (
        input.as_ptr(),
        p.w.as_ptr(),
        p.bias.as_ptr(),
        out.as_mut_ptr(),
    );
    let mut cb = 0;
    // SAFETY: the caller's contract; channel blocks stay below `c` (masked
    // at the tail) for the input and output, below `c_pad` for the padded
    // weights and bias.
    unsafe {
        while cb < c {
            let lanes = (c - cb).min(LANES);
            let mask = lane_mask(lanes);
            // A macro, not a closure: see `tile_avx2`.
            macro_rules! load {
                ($ptr:expr) => {
                    if lanes == LANES {
                        _mm256_loadu_ps($ptr)
                    } else {
                        _mm256_maskload_ps($ptr, mask)
                    }
                };
            }
            let mut acc = [_mm256_loadu_ps(b.add(cb)); ROW_PIXELS];
            for (i, &row) in rows.iter().enumerate() {
                let ky = ky0 + i;
                let mut wk = [_mm256_setzero_ps(); KW];
                for (kx, wv) in wk.iter_mut().enumerate() {
                    *wv = _mm256_loadu_ps(w.add((ky * KW + kx) * c_pad + cb));
                }
                for col in 0..ROW_PIXELS + KW - 1 {
                    let xv = load!(x.add(row + (ix0 + col) * c + cb));
                    for q in 0..ROW_PIXELS {
                        // Pixel `q` reads column `col` through tap `col - q`.
                        if col >= q && col - q < KW {
                            acc[q] = _mm256_fmadd_ps(xv, wk[col - q], acc[q]);
                        }
                    }
                }
            }
            for (q, a) in acc.iter().enumerate() {
                let y = act_avx2(act, *a, cb);
                let dst = o.add(q * c + cb);
                if lanes == LANES {
                    _mm256_storeu_ps(dst, y);
                } else {
                    _mm256_maskstore_ps(dst, mask, y);
                }
            }
            cb += LANES;
        }
    }
}

/// One output pixel of [`depthwise`], plain Rust.
#[inline(always)]
fn depthwise_pixel<const FMA: bool>(
    input: &[f32],
    taps: &[(usize, usize)],
    p: &PackedDepthwise,
    act: &Activation,
    out: &mut [f32],
) {
    let c = p.c;
    let full = c / LANES * LANES;
    let mut cb = 0;
    while cb < full {
        let mut acc: [f32; LANES] = p.bias[cb..cb + LANES].try_into().unwrap();
        for &(i, wi) in taps {
            let x: &[f32; LANES] = input[i + cb..i + cb + LANES].try_into().unwrap();
            let wv: &[f32; LANES] = p.w[wi + cb..wi + cb + LANES].try_into().unwrap();
            for j in 0..LANES {
                acc[j] = fmadd::<FMA>(x[j], wv[j], acc[j]);
            }
        }
        act.apply(&mut acc, cb);
        out[cb..cb + LANES].copy_from_slice(&acc);
        cb += LANES;
    }
    for ch in full..c {
        let mut acc = p.bias[ch];
        for &(i, wi) in taps {
            acc = fmadd::<FMA>(input[i + ch], p.w[wi + ch], acc);
        }
        out[ch] = act.apply_one(acc, ch);
    }
}

/// `P` neighbouring output pixels of [`depthwise`] (the second one's input
/// `pixel_step` floats after the first's), AVX2: up to four channel vectors
/// per pixel at a time, so `4 * P` independent FMA chains hide the FMA
/// latency; the last `c % 8` channels through masked loads and stores.
///
/// # Safety
/// The CPU must support avx2 and fma; for every tap `(i, wi)` and pixel
/// `q < P`, `input[i + q * pixel_step..][..p.c]` and `p.w[wi..wi + c_pad]`
/// must be in bounds, and `out` must hold `P * p.c` floats.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn depthwise_avx2<const P: usize>(
    input: &[f32],
    taps: &[(usize, usize)],
    pixel_step: usize,
    p: &PackedDepthwise,
    act: &Activation,
    out: &mut [f32],
) {
    let c = p.c;
    let mut cb = 0;
    // SAFETY (all calls): the caller's contract, with `cb + 8 * V <= c`
    // for full blocks and the mask covering `c - cb < 8` lanes for the tail.
    unsafe {
        while cb + 4 * LANES <= c {
            depthwise_block_avx2::<P, 4>(input, taps, pixel_step, p, act, out, cb, LANES);
            cb += 4 * LANES;
        }
        match (c - cb) / LANES {
            3 => depthwise_block_avx2::<P, 3>(input, taps, pixel_step, p, act, out, cb, LANES),
            2 => depthwise_block_avx2::<P, 2>(input, taps, pixel_step, p, act, out, cb, LANES),
            1 => depthwise_block_avx2::<P, 1>(input, taps, pixel_step, p, act, out, cb, LANES),
            _ => {}
        }
        cb += (c - cb) / LANES * LANES;
        if cb < c {
            depthwise_block_avx2::<P, 1>(input, taps, pixel_step, p, act, out, cb, c - cb);
        }
    }
}

/// Channels `cb..cb + 8 * V` of [`depthwise_avx2`]'s pixels; with `lanes <
/// 8` (then `V == 1`) only `lanes` channels, through masked loads/stores.
///
/// # Safety
/// As [`depthwise_avx2`], and `cb + 8 * (V - 1) + lanes <= p.c`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn depthwise_block_avx2<const P: usize, const V: usize>(
    input: &[f32],
    taps: &[(usize, usize)],
    pixel_step: usize,
    p: &PackedDepthwise,
    act: &Activation,
    out: &mut [f32],
    cb: usize,
    lanes: usize,
) {
    use std::arch::x86_64::*;
    let (x, w, b, o) = (
        input.as_ptr(),
        p.w.as_ptr(),
        p.bias.as_ptr(),
        out.as_mut_ptr(),
    );
    let c = p.c;
    let partial = lanes < LANES;
    // SAFETY: the caller's contract; weights and bias are padded to
    // `c_pad >= cb + 8 * V`, so they are read unmasked.
    unsafe {
        let mask = lane_mask(lanes);
        let mut acc = [[_mm256_setzero_ps(); V]; P];
        for q in 0..P {
            for v in 0..V {
                acc[q][v] = _mm256_loadu_ps(b.add(cb + v * LANES));
            }
        }
        for &(i, wi) in taps {
            for v in 0..V {
                let wv = _mm256_loadu_ps(w.add(wi + cb + v * LANES));
                for q in 0..P {
                    let src = x.add(i + q * pixel_step + cb + v * LANES);
                    let xv = if partial {
                        _mm256_maskload_ps(src, mask)
                    } else {
                        _mm256_loadu_ps(src)
                    };
                    acc[q][v] = _mm256_fmadd_ps(xv, wv, acc[q][v]);
                }
            }
        }
        for q in 0..P {
            for v in 0..V {
                let y = act_avx2(act, acc[q][v], cb + v * LANES);
                let dst = o.add(q * c + cb + v * LANES);
                if partial {
                    _mm256_maskstore_ps(dst, mask, y);
                } else {
                    _mm256_storeu_ps(dst, y);
                }
            }
        }
    }
}
