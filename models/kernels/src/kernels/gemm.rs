//! The dense GEMM, `out = act(a * b + bias + residual)`: [`PackedMatrix`]
//! (the weights, packed once into column panels) and [`gemm`] with its three
//! micro-tiles, portable, AVX2+FMA and AVX-512. Pointwise and im2col
//! convolutions and fully connected layers all end here. It must not change
//! the order of the sums (bias, one FMA per `k` in order, residual,
//! activation): every instruction set's results are bit-identical to the
//! others' on FMA hardware, and the split runs rely on that.

use super::activation::act_avx2;
use super::activation::act_avx512;
use super::{Activation, LANES, MR, NR, Residual, fmadd, lane_mask, round_up};
use crate::multiversion;

/// The right-hand matrix of a GEMM (`k x n`), packed once at load time in
/// column panels of [`NR`]: panel `p` holds, for each of its rows `kk`,
/// `B[kk][p * NR..p * NR + NR]` (zero past `n`), contiguous. Bias padded the
/// same way.
///
/// Rows of a panel that are all zero are left out when that saves at least a
/// fifth of the panel (pruned weights: `hand_landmark_full`'s last blocks
/// have 40% of their input channels zeroed); the panel then keeps the list of
/// the rows it has.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    pub k: usize,
    pub n: usize,
    data: Vec<f32>,
    panels: Vec<Panel>,
    bias: Vec<f32>,
}

#[derive(Debug, Clone)]
struct Panel {
    /// Offset of the panel's first row in `data`.
    offset: usize,
    /// The rows present, when some were left out; `None`: all `k`, in order.
    rows: Option<Vec<u32>>,
}

impl PackedMatrix {
    /// Packs `b(kk, j)` for `kk < k`, `j < n`, and `bias` (length `n`).
    pub fn pack(k: usize, n: usize, b: impl Fn(usize, usize) -> f32, bias: &[f32]) -> Self {
        assert_eq!(bias.len(), n, "bias length");
        let n_pad = round_up(n, NR);
        let mut data = Vec::with_capacity(k * n_pad);
        let mut panels = Vec::with_capacity(n_pad / NR);
        for panel in 0..n_pad / NR {
            let row = |kk: usize| -> [f32; NR] {
                std::array::from_fn(|j| {
                    let col = panel * NR + j;
                    if col < n { b(kk, col) } else { 0.0 }
                })
            };
            let kept: Vec<u32> = (0..k)
                .filter(|&kk| row(kk).iter().any(|&v| v != 0.0))
                .map(|kk| kk as u32)
                .collect();
            let sparse = kept.len() * 5 <= k * 4;
            let offset = data.len();
            if sparse {
                for &kk in &kept {
                    data.extend_from_slice(&row(kk as usize));
                }
            } else {
                for kk in 0..k {
                    data.extend_from_slice(&row(kk));
                }
            }
            panels.push(Panel {
                offset,
                rows: sparse.then_some(kept),
            });
        }
        let mut padded_bias = bias.to_vec();
        padded_bias.resize(n_pad, 0.0);
        Self {
            k,
            n,
            data,
            panels,
            bias: padded_bias,
        }
    }

    /// Output channels rounded up to whole panels.
    pub fn n_padded(&self) -> usize {
        self.bias.len()
    }

    /// The packed rows of panel `p` and, when some were left out, which
    /// rows they are.
    pub(crate) fn panel(&self, p: usize) -> (&[f32], Option<&[u32]>) {
        let panel = &self.panels[p];
        let rows = panel.rows.as_ref().map_or(self.k, Vec::len);
        (
            &self.data[panel.offset..panel.offset + rows * NR],
            panel.rows.as_deref(),
        )
    }
}

multiversion! {
    /// `out = act(a * b + bias + residual)`, where `a` is `m x b.k` with row
    /// stride `lda` (a pointwise convolution's input pixels, or an im2col
    /// matrix) and `out` is `m x b.n`, dense.
    pub fn gemm(
        a: &[f32],
        m: usize,
        lda: usize,
        b: &PackedMatrix,
        act: &Activation,
        residual: Option<Residual<'_>>,
        out: &mut [f32],
    ) {
        let (k, n) = (b.k, b.n);
        assert!(lda >= k && (m == 0 || a.len() >= (m - 1) * lda + k), "gemm: a too short");
        assert!(out.len() >= m * n, "gemm: out too short");
        assert!(act.covers(b.n_padded()), "gemm: activation too short");
        if let Some(r) = residual {
            assert!(r.channels <= n && r.data.len() >= m * r.channels, "gemm: residual");
        }
        #[cfg(target_arch = "x86_64")]
        if WIDE {
            // SAFETY: `WIDE` is true only in the instance `multiversion!`
            // compiles with avx512f, avx2 and fma enabled, which runs only on
            // CPUs that have them; the lengths `gemm_avx512` relies on were
            // checked just above.
            unsafe { gemm_avx512(a, m, lda, b, act, residual, out) };
            return;
        }
        let mut row = 0;
        while row + MR <= m {
            gemm_rows::<MR, FMA>(a, row, lda, b, act, residual, out);
            row += MR;
        }
        match m - row {
            0 => {}
            1 => gemm_rows::<1, FMA>(a, row, lda, b, act, residual, out),
            2 => gemm_rows::<2, FMA>(a, row, lda, b, act, residual, out),
            3 => gemm_rows::<3, FMA>(a, row, lda, b, act, residual, out),
            4 => gemm_rows::<4, FMA>(a, row, lda, b, act, residual, out),
            5 => gemm_rows::<5, FMA>(a, row, lda, b, act, residual, out),
            _ => unreachable!("fewer than MR rows remain"),
        }
    }
}

/// Rows `row..row + R` of [`gemm`], every column panel. Bounds were checked
/// by the caller.
#[inline(always)]
fn gemm_rows<const R: usize, const FMA: bool>(
    a: &[f32],
    row: usize,
    lda: usize,
    b: &PackedMatrix,
    act: &Activation,
    residual: Option<Residual<'_>>,
    out: &mut [f32],
) {
    let (k, n) = (b.k, b.n);
    let a_rows: [&[f32]; R] = std::array::from_fn(|r| &a[(row + r) * lda..(row + r) * lda + k]);
    for panel in 0..b.n_padded() / NR {
        let c0 = panel * NR;
        let (packed, rows) = b.panel(panel);
        let bias: &[f32; NR] = b.bias[c0..c0 + NR].try_into().unwrap();
        let valid = NR.min(n - c0);
        #[cfg(target_arch = "x86_64")]
        if FMA {
            // SAFETY: `FMA` is true only in the instances `multiversion!`
            // compiles with avx2 and fma enabled, which run only on CPUs that
            // have them. `gemm` checked the lengths `TileIo` relies on: `a`
            // rows hold `k` floats, `packed` a row of `NR` per row index
            // (`PackedMatrix::panel`, indices `< k`), `out` and the
            // residual hold rows `row..row + R`, activation slopes cover the
            // padded columns.
            unsafe {
                let io = TileIo {
                    act,
                    c0,
                    valid,
                    out: out.as_mut_ptr().add(row * n + c0),
                    ldo: n,
                    residual: residual.map(|r| (r.data.as_ptr().add(row * r.channels), r.channels)),
                };
                if valid <= LANES {
                    tile_avx2::<R, 1>(k, &a_rows, packed, rows, bias, &io);
                } else {
                    tile_avx2::<R, 2>(k, &a_rows, packed, rows, bias, &io);
                }
            }
            continue;
        }
        let mut acc = tile_portable::<R, FMA>(k, &a_rows, packed, rows, bias);
        for (r, v) in acc.iter_mut().enumerate() {
            let pixel = row + r;
            if let Some(res) = residual {
                let res_row = &res.data[pixel * res.channels..(pixel + 1) * res.channels];
                if c0 + NR <= res.channels {
                    let rv: &[f32; NR] = res_row[c0..c0 + NR].try_into().unwrap();
                    for j in 0..NR {
                        v[j] += rv[j];
                    }
                } else {
                    for j in 0..res.channels.saturating_sub(c0) {
                        v[j] += res_row[c0 + j];
                    }
                }
            }
            act.apply(v, c0);
            out[pixel * n + c0..pixel * n + c0 + valid].copy_from_slice(&v[..valid]);
        }
    }
}

/// One `R x NR` GEMM tile, `bias + a_rows * packed`, in plain Rust; `rows`
/// as in [`PackedMatrix::panel`].
#[inline(always)]
fn tile_portable<const R: usize, const FMA: bool>(
    k: usize,
    a_rows: &[&[f32]; R],
    packed: &[f32],
    rows: Option<&[u32]>,
    bias: &[f32; NR],
) -> [[f32; NR]; R] {
    let mut acc = [*bias; R];
    // A macro, not a closure: see `tile_avx2`.
    macro_rules! step {
        ($kk:expr, $bv:expr) => {{
            let (kk, bv): (usize, &[f32]) = ($kk, $bv);
            for r in 0..R {
                let av = a_rows[r][kk];
                for j in 0..NR {
                    acc[r][j] = fmadd::<FMA>(av, bv[j], acc[r][j]);
                }
            }
        }};
    }
    match rows {
        None => {
            for (kk, bv) in packed[..k * NR].chunks_exact(NR).enumerate() {
                step!(kk, bv);
            }
        }
        Some(rows) => {
            for (&kk, bv) in rows.iter().zip(packed.chunks_exact(NR)) {
                step!(kk as usize, bv);
            }
        }
    }
    acc
}

/// `$step!(kk, i)` for each row `kk` of a packed panel, `i` being where the
/// row is stored: every `kk < $k` in order (`$rows` is `None`, `i == kk`),
/// or the rows a pruned panel kept (`$rows`, see [`PackedMatrix::panel`]).
/// The loop both SIMD tiles run their FMAs in, written once; each tile keeps
/// its own `step!` (its intrinsics and weight layout) and epilogue. A macro,
/// not a function taking a closure, for the reason given in `tile_avx2`: it
/// expands, token for token, to the `match` each tile had written out.
#[cfg(target_arch = "x86_64")]
macro_rules! for_each_row {
    ($k:expr, $rows:expr, $step:ident) => {
        match $rows {
            None => {
                for kk in 0..$k {
                    $step!(kk, kk);
                }
            }
            Some(rows) => {
                for (i, &kk) in rows.iter().enumerate() {
                    $step!(kk as usize, i);
                }
            }
        }
    };
}

/// Where a GEMM tile's results go, and what happens to them on the way.
#[cfg(target_arch = "x86_64")]
struct TileIo<'a> {
    act: &'a Activation,
    /// First output column of the tile.
    c0: usize,
    /// Columns of the tile that exist (`<= NR`).
    valid: usize,
    /// Row 0, column `c0` of the output; rows `ldo` apart.
    out: *mut f32,
    ldo: usize,
    /// Row 0, column 0 of the residual, and its channel count (= row stride).
    residual: Option<(*const f32, usize)>,
}

/// [`tile_portable`] with AVX2 intrinsics, `V` vectors (of the panel's two)
/// wide, and the epilogue (residual, activation, store) done in registers:
/// `V * R` accumulators stay in registers (LLVM did not manage that from the
/// plain version), and a partial tile costs masked loads and stores instead
/// of scalar loops.
///
/// # Safety
/// The CPU must support avx2 and fma; `packed` must hold `NR` floats per row
/// (`k` rows, or those `rows` lists, each `< k`), each `a_rows[r]` at least
/// `k`; `io.out` must be writable at rows `0..R`,
/// columns `0..io.valid`; the residual readable at rows `0..R`, columns
/// `0..channels`; PReLU slopes must cover `io.c0 + NR`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_avx2<const R: usize, const V: usize>(
    k: usize,
    a_rows: &[&[f32]; R],
    packed: &[f32],
    rows: Option<&[u32]>,
    bias: &[f32; NR],
    io: &TileIo<'_>,
) {
    use std::arch::x86_64::*;
    debug_assert!(packed.len() >= rows.map_or(k, <[u32]>::len) * NR);
    debug_assert!(
        a_rows.iter().all(|r| r.len() >= k)
            && rows.is_none_or(|r| r.iter().all(|&kk| (kk as usize) < k))
    );
    // SAFETY: the caller guarantees the CPU features and every range read or
    // written below: packed row `i` (`i < rows.len()`, or `k`) and
    // `a_rows[r][kk]` for `kk < k`; outputs and residuals only through masks clamped to
    // `io.valid` and the residual's channels.
    unsafe {
        let mut a = [std::ptr::null::<f32>(); R];
        for r in 0..R {
            a[r] = a_rows[r].as_ptr();
        }
        let p = packed.as_ptr();
        let mut b = [_mm256_setzero_ps(); V];
        for v in 0..V {
            b[v] = _mm256_loadu_ps(bias.as_ptr().add(v * LANES));
        }
        let mut acc: [[__m256; V]; R] = [b; R];
        // A macro, not a closure: closures are not `inline(always)`, and one
        // compiled outside this function's target features would call the
        // intrinsics out of line.
        macro_rules! step {
            ($kk:expr, $i:expr) => {{
                let (kk, i) = ($kk, $i);
                let mut w = [_mm256_setzero_ps(); V];
                for v in 0..V {
                    w[v] = _mm256_loadu_ps(p.add(i * NR + v * LANES));
                }
                for r in 0..R {
                    let av = _mm256_broadcast_ss(&*a[r].add(kk));
                    for v in 0..V {
                        acc[r][v] = _mm256_fmadd_ps(av, w[v], acc[r][v]);
                    }
                }
            }};
        }
        for_each_row!(k, rows, step);
        for r in 0..R {
            for v in 0..V {
                let col = io.c0 + v * LANES;
                let mut x = acc[r][v];
                if let Some((res, channels)) = io.residual {
                    let src = res.add(r * channels + col);
                    if col + LANES <= channels {
                        x = _mm256_add_ps(x, _mm256_loadu_ps(src));
                    } else if col < channels {
                        x = _mm256_add_ps(x, _mm256_maskload_ps(src, lane_mask(channels - col)));
                    }
                }
                x = act_avx2(io.act, x, col);
                let dst = io.out.add(r * io.ldo + v * LANES);
                if (v + 1) * LANES <= io.valid {
                    _mm256_storeu_ps(dst, x);
                } else if v * LANES < io.valid {
                    _mm256_maskstore_ps(dst, lane_mask(io.valid - v * LANES), x);
                }
            }
        }
    }
}

/// Rows (pixels) per AVX-512 GEMM tile. A tile spans two column panels (two
/// 16-lane vectors), so 16 accumulators of the 32 vector registers: enough
/// independent FMAs to keep both FMA pipes of a Zen 4/5 or Xeon core busy,
/// with the broadcasts folded into the FMAs as memory operands.
#[cfg(target_arch = "x86_64")]
const MR512: usize = 8;

/// [`gemm`] on AVX-512: the same sums in the same order as the AVX2 tiles
/// (bias, then one FMA per `k` in order, then residual and activation), so
/// results are bit-identical to them, on twice the vector width.
///
/// # Safety
/// The CPU must support avx512f; the lengths `gemm` asserts must hold.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn gemm_avx512(
    a: &[f32],
    m: usize,
    lda: usize,
    b: &PackedMatrix,
    act: &Activation,
    residual: Option<Residual<'_>>,
    out: &mut [f32],
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        let mut row = 0;
        while row + MR512 <= m {
            rows_avx512::<MR512>(a, row, lda, b, act, residual, out);
            row += MR512;
        }
        match m - row {
            0 => {}
            1 => rows_avx512::<1>(a, row, lda, b, act, residual, out),
            2 => rows_avx512::<2>(a, row, lda, b, act, residual, out),
            3 => rows_avx512::<3>(a, row, lda, b, act, residual, out),
            4 => rows_avx512::<4>(a, row, lda, b, act, residual, out),
            5 => rows_avx512::<5>(a, row, lda, b, act, residual, out),
            6 => rows_avx512::<6>(a, row, lda, b, act, residual, out),
            7 => rows_avx512::<7>(a, row, lda, b, act, residual, out),
            _ => unreachable!("fewer than MR512 rows remain"),
        }
    }
}

/// Rows `row..row + R` of [`gemm_avx512`]: column panels two at a time where
/// both are dense, one at a time otherwise (a panel with pruned rows has its
/// own row list).
///
/// # Safety
/// As [`gemm_avx512`], and `row + R <= m`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn rows_avx512<const R: usize>(
    a: &[f32],
    row: usize,
    lda: usize,
    b: &PackedMatrix,
    act: &Activation,
    residual: Option<Residual<'_>>,
    out: &mut [f32],
) {
    // SAFETY: `gemm` checked that rows `row..row + R` of `a` hold `k` floats,
    // that `out` and the residual hold those rows; panels come from
    // `PackedMatrix::panel` (a row of `NR` per row index) and the bias is
    // padded to whole panels.
    unsafe {
        let (k, n) = (b.k, b.n);
        let a_rows: [*const f32; R] = std::array::from_fn(|r| a.as_ptr().add((row + r) * lda));
        let out = out.as_mut_ptr().add(row * n);
        let residual = residual.map(|r| (r.data.as_ptr().add(row * r.channels), r.channels));
        let panels = b.n_padded() / NR;
        let mut p = 0;
        while p < panels {
            let (w0, rows0) = b.panel(p);
            let tile = Tile512 {
                act,
                c0: p * NR,
                n,
                out,
                residual,
                bias: b.bias.as_ptr().add(p * NR),
            };
            if p + 1 < panels && rows0.is_none() {
                let (w1, rows1) = b.panel(p + 1);
                if rows1.is_none() {
                    tile_avx512::<R, 2>(k, &a_rows, [w0.as_ptr(), w1.as_ptr()], None, &tile);
                    p += 2;
                    continue;
                }
            }
            tile_avx512::<R, 1>(k, &a_rows, [w0.as_ptr()], rows0, &tile);
            p += 1;
        }
    }
}

/// Where an AVX-512 GEMM tile's results go: as [`TileIo`], with the column
/// count instead of the tile's valid columns (a tile may span two panels).
#[cfg(target_arch = "x86_64")]
struct Tile512<'a> {
    act: &'a Activation,
    /// First output column of the tile.
    c0: usize,
    /// Output columns (= row stride of `out`).
    n: usize,
    /// Row 0, column 0 of the output rows this tile writes.
    out: *mut f32,
    /// Row 0, column 0 of the residual, and its channel count (= row stride).
    residual: Option<(*const f32, usize)>,
    /// The padded bias at column `c0`.
    bias: *const f32,
}

/// `R` rows by `V` panels (16 columns each) of the GEMM, accumulated in
/// registers, with residual, activation and a masked store at the edge.
///
/// # Safety
/// The CPU must support avx512f; each `w[v]` must hold a row of `NR` floats
/// per row index (`k` rows, or those `rows` lists, each `< k`); each
/// `a[r]` `k` floats; `tile.out` must be writable and the residual readable
/// at rows `0..R` up to their column counts; the bias and PReLU slopes must
/// cover `tile.c0 + V * NR`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_avx512<const R: usize, const V: usize>(
    k: usize,
    a: &[*const f32; R],
    w: [*const f32; V],
    rows: Option<&[u32]>,
    tile: &Tile512<'_>,
) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees the CPU feature and every range read or
    // written below; columns past `n` (or past the residual's channels) are
    // masked off.
    unsafe {
        let mut bias = [_mm512_setzero_ps(); V];
        for v in 0..V {
            bias[v] = _mm512_loadu_ps(tile.bias.add(v * NR));
        }
        let mut acc: [[__m512; V]; R] = [bias; R];
        // A macro, not a closure: see `tile_avx2`.
        macro_rules! step {
            ($kk:expr, $i:expr) => {{
                let (kk, i) = ($kk, $i);
                let mut wv = [_mm512_setzero_ps(); V];
                for v in 0..V {
                    wv[v] = _mm512_loadu_ps(w[v].add(i * NR));
                }
                for r in 0..R {
                    let av = _mm512_set1_ps(*a[r].add(kk));
                    for v in 0..V {
                        acc[r][v] = _mm512_fmadd_ps(av, wv[v], acc[r][v]);
                    }
                }
            }};
        }
        for_each_row!(k, rows, step);
        for r in 0..R {
            for v in 0..V {
                let col = tile.c0 + v * NR;
                let mut x = acc[r][v];
                if let Some((res, channels)) = tile.residual {
                    if col < channels {
                        let mask = lane_mask16(channels - col);
                        x = _mm512_add_ps(
                            x,
                            _mm512_maskz_loadu_ps(mask, res.add(r * channels + col)),
                        );
                    }
                }
                x = act_avx512(tile.act, x, col);
                if col < tile.n {
                    _mm512_mask_storeu_ps(
                        tile.out.add(r * tile.n + col),
                        lane_mask16(tile.n - col),
                        x,
                    );
                }
            }
        }
    }
}

/// Lanes `0..count` (clamped to 16) set, as an AVX-512 mask.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lane_mask16(count: usize) -> std::arch::x86_64::__mmask16 {
    if count >= 16 {
        0xffff
    } else {
        ((1u32 << count) - 1) as u16
    }
}
