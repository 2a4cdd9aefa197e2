//! The NHWC f32 layers, batch 1. Tensors are flat slices: pixel-major, channels
//! innermost (`[(y * w + x) * c + ch]`).
//!
//! Each public kernel is a [`multiversion!`](crate::multiversion) function: the first argument is
//! the [`Isa`](crate::Isa) to run on. The hot loops work on fixed-size lane arrays
//! (`[f32; NR]`, `[f32; LANES]`) that LLVM turns into vector registers.
//! Shape arguments are checked with `assert!` at the top of each kernel: they
//! come from [`crate::program`], which derives them from the graph, so a
//! failure is a bug there, not bad input.
//!
//! By concern, each file owning its layers' packed weights and hot loops:
//! - [`activation`]: the fused activations (scalar, AVX2, AVX-512) and the
//!   elementwise layers built on them (`add`, `activate`);
//! - [`gemm`](mod@gemm): the dense GEMM (pointwise and im2col convolutions, fully
//!   connected) on three instruction sets, with [`PackedMatrix`];
//! - [`sparse`]: the GEMM of mostly zero pointwise weights, [`SparseMatrix`];
//! - [`depthwise`](mod@depthwise): depthwise convolution, whole and row by row;
//! - [`im2col`](mod@im2col): the patch matrix a dense convolution's GEMM reads;
//! - [`layout`]: the layers without weights that move or reduce pixels.
//!
//! This file holds only what several of them share (tile sizes, `fmadd`,
//! [`Residual`], [`Window`]) and the re-exports that keep every kernel at
//! `kernels::NAME`. Nothing here knows about the ONNX graph or buffers.

pub mod activation;
pub mod depthwise;
pub mod gemm;
pub mod im2col;
pub mod layout;
pub mod sparse;

pub use activation::{Activation, activate, add};
pub use depthwise::{PackedDepthwise, depthwise, depthwise_row};
pub use gemm::{PackedMatrix, gemm};
pub use im2col::im2col;
pub use layout::{depth_to_space, global_mean, max_pool, remap_channels, resize_bilinear};
pub use sparse::{SparseMatrix, sparse_gemm};

/// Columns (output channels) per GEMM micro-tile: two AVX2 vectors.
pub const NR: usize = 16;
/// Rows (pixels) per GEMM micro-tile: with `NR`, 12 AVX2 accumulators.
pub const MR: usize = 6;
/// Channels per depthwise step: one AVX2 vector.
pub const LANES: usize = 8;

/// `a * b + c`, fused (one rounding) where the instruction set has FMA;
/// without it `mul_add` would be a libm call, so the portable build rounds
/// twice. The two differ by far less than the 1e-4 the nets are held to.
#[inline(always)]
pub fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Rounds `n` up to a multiple of `m`.
pub fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

/// A tensor added to a layer's output before its activation (a residual
/// connection), `rows x channels` with `channels <= n`: the channels past
/// its own count are taken as zero, which fuses a channel pad into the add.
#[derive(Debug, Clone, Copy)]
pub struct Residual<'a> {
    pub data: &'a [f32],
    pub channels: usize,
}

/// The geometry of a convolution or pooling window over an NHWC input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    /// Zero padding: top, left, bottom, right.
    pub pads: [usize; 4],
}

impl Window {
    /// Output height and width; `None` when the window does not fit.
    pub fn output_size(&self) -> Option<(usize, usize)> {
        let ph = self.h + self.pads[0] + self.pads[2];
        let pw = self.w + self.pads[1] + self.pads[3];
        if self.kh == 0 || self.kw == 0 || self.stride_h == 0 || self.stride_w == 0 {
            return None;
        }
        if ph < self.kh || pw < self.kw {
            return None;
        }
        Some((
            (ph - self.kh) / self.stride_h + 1,
            (pw - self.kw) / self.stride_w + 1,
        ))
    }

    /// The kernel taps of output row `oy` that land inside the input:
    /// `(first input row, ky range)`.
    #[inline(always)]
    pub fn rows(&self, oy: usize) -> (isize, std::ops::Range<usize>) {
        let iy0 = (oy * self.stride_h) as isize - self.pads[0] as isize;
        let lo = (-iy0).max(0) as usize;
        let hi = (self.h as isize - iy0).clamp(0, self.kh as isize) as usize;
        (iy0, lo..hi.max(lo))
    }

    /// As [`Window::rows`], for output column `ox`.
    #[inline(always)]
    pub fn cols(&self, ox: usize) -> (isize, std::ops::Range<usize>) {
        let ix0 = (ox * self.stride_w) as isize - self.pads[1] as isize;
        let lo = (-ix0).max(0) as usize;
        let hi = (self.w as isize - ix0).clamp(0, self.kw as isize) as usize;
        (ix0, lo..hi.max(lo))
    }
}

/// Lanes `0..count` (clamped to 0..=8) set, as an AVX2 mask.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn lane_mask(count: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // SAFETY: avx2 per the caller.
    unsafe {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(count.min(LANES) as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }
}
