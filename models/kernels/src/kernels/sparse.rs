//! The GEMM of a pointwise convolution whose weights are mostly zero:
//! [`SparseMatrix`] (the non-zeros, packed once) and [`sparse_gemm`], which
//! transposes blocks of pixels so each non-zero weight is one broadcast and
//! a few FMAs. Its block size fixes where a split run may cut the rows
//! (`program`'s `GEMM_ALIGN`); it knows nothing of the dense GEMM's panels.

use super::activation::act_avx2;
use super::{Activation, LANES, Residual, fmadd, lane_mask};
use crate::multiversion;

/// Pixels per block of [`sparse_gemm`]: four AVX2 vectors, so each
/// non-zero's index and broadcast are shared by four FMAs.
const SP: usize = 32;

/// Rows of the sparse right-hand side handled per pass: a block's transposed
/// input for one pass (`SP * KC` floats, 16 KiB) stays in L1.
const KC: usize = 128;

/// The right-hand matrix of a GEMM (`k x n`) with most weights zero
/// (`pose_detection` is pruned to 25% non-zero weights, unstructured): per
/// pass of [`KC`] rows, per output column, the rows and values of its
/// non-zero weights.
#[derive(Debug, Clone)]
pub struct SparseMatrix {
    pub k: usize,
    pub n: usize,
    /// Pass `c`, column `j`: non-zeros `rows[starts[c * n + j]..starts[c * n
    /// + j + 1]]` (rows relative to the pass's first row).
    starts: Vec<u32>,
    rows: Vec<u32>,
    values: Vec<f32>,
    bias: Vec<f32>,
}

impl SparseMatrix {
    /// Keeps the non-zero `b(kk, j)`, `kk < k`, `j < n`; `bias` has `n`.
    pub fn pack(k: usize, n: usize, b: impl Fn(usize, usize) -> f32, bias: &[f32]) -> Self {
        assert_eq!(bias.len(), n, "bias length");
        let (mut starts, mut rows, mut values) = (vec![0u32], Vec::new(), Vec::new());
        for k0 in (0..k.max(1)).step_by(KC) {
            for j in 0..n {
                for kk in k0..(k0 + KC).min(k) {
                    let v = b(kk, j);
                    if v != 0.0 {
                        rows.push((kk - k0) as u32);
                        values.push(v);
                    }
                }
                starts.push(rows.len() as u32);
            }
        }
        Self {
            k,
            n,
            starts,
            rows,
            values,
            bias: bias.to_vec(),
        }
    }

    /// Share of non-zero weights.
    pub fn density(&self) -> f32 {
        self.values.len() as f32 / (self.k * self.n).max(1) as f32
    }

    /// Number of passes over the rows.
    fn passes(&self) -> usize {
        self.k.div_ceil(KC).max(1)
    }
}

multiversion! {
    /// [`gemm`] with a sparse right-hand side: `out = act(a * b + bias +
    /// residual)`. Blocks of 32 pixels are transposed (`scratch`) so each
    /// non-zero weight multiplies 32 pixels at once, vectorized over pixels
    /// as XNNPACK's sparse inference does in NCHW.
    ///
    /// [`gemm`]: fn@super::gemm
    pub fn sparse_gemm(
        a: &[f32],
        m: usize,
        lda: usize,
        b: &SparseMatrix,
        act: &Activation,
        residual: Option<Residual<'_>>,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let (k, n) = (b.k, b.n);
        assert!(lda >= k && (m == 0 || a.len() >= (m - 1) * lda + k), "sparse_gemm: a too short");
        assert!(out.len() >= m * n, "sparse_gemm: out too short");
        assert!(act.covers(n), "sparse_gemm: activation too short");
        if let Some(r) = residual {
            assert!(r.channels <= n && r.data.len() >= m * r.channels, "sparse_gemm: residual");
        }
        if scratch.len() < (KC + n) * SP {
            scratch.resize((KC + n) * SP, 0.0);
        }
        let (at, ot) = scratch.split_at_mut(KC * SP);
        let ot = &mut ot[..n * SP];
        for p0 in (0..m).step_by(SP) {
            let rows = SP.min(m - p0);
            #[cfg(target_arch = "x86_64")]
            if FMA {
                // SAFETY: `FMA` is true only in the instances compiled with
                // avx2 and fma, run only on CPUs that have them; the lengths
                // `sparse_block_avx2` relies on were checked above.
                unsafe { sparse_block_avx2::<WIDE>(a, p0, rows, lda, b, act, residual, out, at, ot) };
                continue;
            }
            for c in 0..b.passes() {
                let k0 = c * KC;
                let k1 = (k0 + KC).min(k);
                // at[kk - k0][q] = a[p0 + q][kk]; rows past `m` are zero.
                for q in 0..SP {
                    for kk in k0..k1 {
                        at[(kk - k0) * SP + q] = if q < rows { a[(p0 + q) * lda + kk] } else { 0.0 };
                    }
                }
                for j in 0..n {
                    let mut acc = [b.bias[j]; SP];
                    if c > 0 {
                        acc.copy_from_slice(&ot[j * SP..j * SP + SP]);
                    }
                    let (s, e) = (b.starts[c * n + j] as usize, b.starts[c * n + j + 1] as usize);
                    for (&kk, &w) in b.rows[s..e].iter().zip(&b.values[s..e]) {
                        let x: &[f32; SP] = at[kk as usize * SP..kk as usize * SP + SP].try_into().unwrap();
                        for q in 0..SP {
                            acc[q] = fmadd::<FMA>(w, x[q], acc[q]);
                        }
                    }
                    ot[j * SP..j * SP + SP].copy_from_slice(&acc);
                }
            }
            for q in 0..rows {
                let pixel = p0 + q;
                let dst = &mut out[pixel * n..(pixel + 1) * n];
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = ot[j * SP + q];
                }
                if let Some(res) = residual {
                    let r = &res.data[pixel * res.channels..(pixel + 1) * res.channels];
                    for (d, r) in dst.iter_mut().zip(r) {
                        *d += r;
                    }
                }
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = act.apply_one(*d, j);
                }
            }
        }
    }
}

/// Transposes the 8x8 block `r` (rows) in place.
///
/// # Safety
/// The CPU must support avx.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose8(r: &mut [std::arch::x86_64::__m256; 8]) {
    use std::arch::x86_64::*;
    // SAFETY: avx per the caller; register operations only.
    unsafe {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        r[0] = _mm256_permute2f128_ps::<0x20>(u0, u4);
        r[1] = _mm256_permute2f128_ps::<0x20>(u1, u5);
        r[2] = _mm256_permute2f128_ps::<0x20>(u2, u6);
        r[3] = _mm256_permute2f128_ps::<0x20>(u3, u7);
        r[4] = _mm256_permute2f128_ps::<0x31>(u0, u4);
        r[5] = _mm256_permute2f128_ps::<0x31>(u1, u5);
        r[6] = _mm256_permute2f128_ps::<0x31>(u2, u6);
        r[7] = _mm256_permute2f128_ps::<0x31>(u3, u7);
    }
}

/// One block of [`sparse_gemm`] (pixels `p0..p0 + rows`, `rows <= 32`) with
/// AVX2: 8x8 transposes in and out, four vectors of pixels per non-zero
/// (two AVX-512 vectors when `WIDE`: the same FMAs lane by lane, so the same
/// results).
///
/// # Safety
/// The CPU must support avx2 and fma, and avx512f when `WIDE`; the lengths
/// `sparse_gemm` asserts must hold; `at` holds `32 * KC` floats, `ot` `32 *
/// b.n`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn sparse_block_avx2<const WIDE: bool>(
    a: &[f32],
    p0: usize,
    rows: usize,
    lda: usize,
    b: &SparseMatrix,
    act: &Activation,
    residual: Option<Residual<'_>>,
    out: &mut [f32],
    at: &mut [f32],
    ot: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (k, n) = (b.k, b.n);
    // SAFETY: reads of `a` stay in rows `p0..p0 + rows` (checked by the
    // caller), columns `< k`; `at`/`ot` indices stay below `32 * KC` /
    // `32 * n` (pass-relative rows are `< KC`); writes to `out` only for rows `< rows`, columns `< n`;
    // residual reads within its rows and channels (masked at the edge).
    unsafe {
        let (ap, atp, otp) = (a.as_ptr(), at.as_mut_ptr(), ot.as_mut_ptr());
        for c in 0..b.passes() {
            let k0 = c * KC;
            let kc = (k0 + KC).min(k) - k0;
            // In: at[kk][q] = a[p0 + q][k0 + kk], rows past `rows` zero.
            let k8 = kc / LANES * LANES;
            for qb in (0..SP).step_by(LANES) {
                for kb in (0..k8).step_by(LANES) {
                    let mut r = [_mm256_setzero_ps(); 8];
                    for (i, v) in r.iter_mut().enumerate() {
                        if qb + i < rows {
                            *v = _mm256_loadu_ps(ap.add((p0 + qb + i) * lda + k0 + kb));
                        }
                    }
                    transpose8(&mut r);
                    for (i, v) in r.iter().enumerate() {
                        _mm256_storeu_ps(atp.add((kb + i) * SP + qb), *v);
                    }
                }
            }
            for kk in k8..kc {
                for q in 0..SP {
                    *atp.add(kk * SP + q) = if q < rows {
                        *ap.add((p0 + q) * lda + k0 + kk)
                    } else {
                        0.0
                    };
                }
            }
            // Per output channel: (bias or the previous passes) + this
            // pass's non-zeros times 32 pixels.
            if WIDE {
                sparse_pass_avx512(b, c, atp, otp);
                continue;
            }
            for j in 0..n {
                let mut acc = [_mm256_set1_ps(b.bias[j]); SP / LANES];
                if c > 0 {
                    for (v, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm256_loadu_ps(otp.add(j * SP + v * LANES));
                    }
                }
                let (s, e) = (
                    b.starts[c * n + j] as usize,
                    b.starts[c * n + j + 1] as usize,
                );
                for i in s..e {
                    let kk = *b.rows.get_unchecked(i) as usize;
                    let w = _mm256_set1_ps(*b.values.get_unchecked(i));
                    for (v, acc) in acc.iter_mut().enumerate() {
                        *acc =
                            _mm256_fmadd_ps(w, _mm256_loadu_ps(atp.add(kk * SP + v * LANES)), *acc);
                    }
                }
                for (v, acc) in acc.iter().enumerate() {
                    _mm256_storeu_ps(otp.add(j * SP + v * LANES), *acc);
                }
            }
        }
        // Out: out[p0 + q][j] = act(ot[j][q] + residual), by 8x8 blocks.
        let n8 = n / LANES * LANES;
        let op = out.as_mut_ptr();
        for qb in (0..rows).step_by(LANES) {
            for jb in (0..n8).step_by(LANES) {
                let mut r = [_mm256_setzero_ps(); 8];
                for (i, v) in r.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(otp.add((jb + i) * SP + qb));
                }
                transpose8(&mut r);
                for (i, v) in r.iter().enumerate() {
                    let q = qb + i;
                    if q >= rows {
                        break;
                    }
                    let mut x = *v;
                    if let Some(res) = residual {
                        let src = res.data.as_ptr().add((p0 + q) * res.channels + jb);
                        if jb + LANES <= res.channels {
                            x = _mm256_add_ps(x, _mm256_loadu_ps(src));
                        } else if jb < res.channels {
                            x = _mm256_add_ps(
                                x,
                                _mm256_maskload_ps(src, lane_mask(res.channels - jb)),
                            );
                        }
                    }
                    _mm256_storeu_ps(op.add((p0 + q) * n + jb), act_avx2(act, x, jb));
                }
            }
        }
        for q in 0..rows {
            for j in n8..n {
                let mut x = *otp.add(j * SP + q);
                if let Some(res) = residual
                    && j < res.channels
                {
                    x += res.data[(p0 + q) * res.channels + j];
                }
                *op.add((p0 + q) * n + j) = act.apply_one(x, j);
            }
        }
    }
}

/// The accumulation of pass `c` of [`sparse_block_avx2`] on AVX-512: per
/// output channel, two vectors of 16 pixels per non-zero.
///
/// # Safety
/// The CPU must support avx512f; `at` must hold `32 * KC` floats and `ot`
/// `32 * b.n`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn sparse_pass_avx512(b: &SparseMatrix, c: usize, atp: *const f32, otp: *mut f32) {
    use std::arch::x86_64::*;
    const V: usize = SP / 16;
    let n = b.n;
    // SAFETY: as `sparse_block_avx2`: pass-relative rows are `< KC`, so
    // `at` reads stay below `32 * KC`; `ot` indices below `32 * n`.
    unsafe {
        for j in 0..n {
            let mut acc = [_mm512_set1_ps(b.bias[j]); V];
            if c > 0 {
                for (v, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_loadu_ps(otp.add(j * SP + v * 16));
                }
            }
            let (s, e) = (
                b.starts[c * n + j] as usize,
                b.starts[c * n + j + 1] as usize,
            );
            for i in s..e {
                let kk = *b.rows.get_unchecked(i) as usize;
                let w = _mm512_set1_ps(*b.values.get_unchecked(i));
                for (v, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(w, _mm512_loadu_ps(atp.add(kk * SP + v * 16)), *acc);
                }
            }
            for (v, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(otp.add(j * SP + v * 16), *acc);
            }
        }
    }
}
