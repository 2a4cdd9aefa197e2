//! The activations fused into the end of a layer ([`Activation`]): applied to
//! lane arrays in the portable kernels, and in AVX2 / AVX-512 registers
//! (`act_avx2`, `act_avx512`) by the SIMD tiles, with the same operations
//! so every instruction set rounds alike; plus the elementwise layers made of
//! them ([`add`], [`activate`]). It owns no weights and no loop over a layer's
//! geometry: the GEMM, depthwise and resize kernels call in here per vector.

use super::{LANES, NR};
use crate::multiversion;

/// An activation fused into the end of a layer.
#[derive(Debug, Clone, PartialEq)]
pub enum Activation {
    Identity,
    /// `min(max(x, lo), hi)`: ReLU is `(0, inf)`, ReLU6 `(0, 6)`.
    Clamp {
        lo: f32,
        hi: f32,
    },
    /// `x < 0 ? x * slope[ch] : x`, one slope per channel (padded with zeros
    /// to the layer's padded channel count).
    PRelu(Vec<f32>),
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
}

impl Activation {
    /// Applies the activation to `v`, whose lane `j` is channel `ch0 + j`.
    #[inline(always)]
    pub(super) fn apply<const L: usize>(&self, v: &mut [f32; L], ch0: usize) {
        match self {
            Activation::Identity => {}
            Activation::Clamp { lo, hi } => {
                for x in v.iter_mut() {
                    *x = x.max(*lo).min(*hi);
                }
            }
            Activation::PRelu(slopes) => {
                let s: &[f32; L] = slopes[ch0..ch0 + L].try_into().unwrap();
                for (x, s) in v.iter_mut().zip(s) {
                    *x = if *x < 0.0 { *x * s } else { *x };
                }
            }
            Activation::Sigmoid => {
                for x in v.iter_mut() {
                    *x = 1.0 / (1.0 + (-*x).exp());
                }
            }
        }
    }

    /// [`Activation::apply`] on one value of channel `ch`.
    #[inline(always)]
    pub(super) fn apply_one(&self, x: f32, ch: usize) -> f32 {
        let mut v = [x];
        match self {
            Activation::PRelu(slopes) => {
                if x < 0.0 {
                    v[0] = x * slopes[ch];
                }
            }
            _ => self.apply(&mut v, ch),
        }
        v[0]
    }

    /// Applies the activation to one pixel's channels, `row[ch]` being
    /// channel `ch` (one match per pixel, loops that vectorize).
    #[inline(always)]
    pub(super) fn apply_pixel(&self, row: &mut [f32]) {
        match self {
            Activation::Identity => {}
            Activation::Clamp { lo, hi } => {
                for x in row.iter_mut() {
                    *x = x.max(*lo).min(*hi);
                }
            }
            Activation::PRelu(slopes) => {
                for (x, s) in row.iter_mut().zip(slopes) {
                    *x = if *x < 0.0 { *x * s } else { *x };
                }
            }
            Activation::Sigmoid => {
                for x in row.iter_mut() {
                    *x = 1.0 / (1.0 + (-*x).exp());
                }
            }
        }
    }

    /// Slopes must cover `channels` (rounded up to whole lane groups).
    pub(super) fn covers(&self, channels: usize) -> bool {
        match self {
            Activation::PRelu(slopes) => slopes.len() >= channels,
            _ => true,
        }
    }
}

/// [`Activation::apply`] on one AVX-512 vector of channels `ch0..ch0 + 16`,
/// with the same operations as [`act_avx2`] (so the same results).
///
/// # Safety
/// The CPU must support avx512f; PReLU slopes must cover `ch0 + 16`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn act_avx512(
    act: &Activation,
    v: std::arch::x86_64::__m512,
    ch0: usize,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: avx512f per the caller; the slope read is checked by slicing.
    unsafe {
        match act {
            Activation::Identity => v,
            Activation::Clamp { lo, hi } => {
                _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(*lo)), _mm512_set1_ps(*hi))
            }
            Activation::PRelu(slopes) => {
                let s = _mm512_loadu_ps(slopes[ch0..ch0 + NR].as_ptr());
                let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, _mm512_setzero_ps());
                _mm512_mask_mul_ps(v, neg, v, s)
            }
            Activation::Sigmoid => {
                let mut lanes = [0.0f32; NR];
                _mm512_storeu_ps(lanes.as_mut_ptr(), v);
                act.apply(&mut lanes, ch0);
                _mm512_loadu_ps(lanes.as_ptr())
            }
        }
    }
}

/// [`Activation::apply`] on one AVX2 vector, lane `j` being channel `ch0 + j`.
///
/// # Safety
/// The CPU must support avx2; PReLU slopes must cover `ch0 + 8`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn act_avx2(
    act: &Activation,
    v: std::arch::x86_64::__m256,
    ch0: usize,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: avx2 per the caller; the slope read is checked by slicing.
    unsafe {
        match act {
            Activation::Identity => v,
            Activation::Clamp { lo, hi } => {
                _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(*lo)), _mm256_set1_ps(*hi))
            }
            Activation::PRelu(slopes) => {
                let s = _mm256_loadu_ps(slopes[ch0..ch0 + LANES].as_ptr());
                let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(v, _mm256_setzero_ps());
                _mm256_blendv_ps(v, _mm256_mul_ps(v, s), neg)
            }
            Activation::Sigmoid => {
                let mut lanes = [0.0f32; LANES];
                _mm256_storeu_ps(lanes.as_mut_ptr(), v);
                act.apply(&mut lanes, ch0);
                _mm256_loadu_ps(lanes.as_ptr())
            }
        }
    }
}

multiversion! {
    /// `out = act(a + b)`, elementwise over `c`-channel pixels.
    pub fn add(a: &[f32], b: &[f32], c: usize, act: &Activation, out: &mut [f32]) {
        assert!(a.len() == b.len() && out.len() >= a.len() && c > 0, "add: sizes");
        assert!(a.len() % c == 0 && act.covers(c), "add: channels");
        for ((o, a), b) in out.chunks_exact_mut(c).zip(a.chunks_exact(c)).zip(b.chunks_exact(c)) {
            for ch in 0..c {
                o[ch] = a[ch] + b[ch];
            }
            act.apply_pixel(o);
        }
    }
}

multiversion! {
    /// `out = act(input)`, elementwise over `c`-channel pixels.
    pub fn activate(input: &[f32], c: usize, act: &Activation, out: &mut [f32]) {
        assert!(out.len() >= input.len() && c > 0, "activate: sizes");
        assert!(input.len() % c == 0 && act.covers(c), "activate: channels");
        for (o, i) in out.chunks_exact_mut(c).zip(input.chunks_exact(c)) {
            o.copy_from_slice(i);
            act.apply_pixel(o);
        }
    }
}
