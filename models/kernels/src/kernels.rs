//! The NHWC f32 layers, batch 1. Tensors are flat slices: pixel-major, channels
//! innermost (`[(y * w + x) * c + ch]`).
//!
//! Each public kernel is a [`multiversion!`] function: the first argument is
//! the [`Isa`] to run on. The hot loops work on fixed-size lane arrays
//! (`[f32; NR]`, `[f32; LANES]`) that LLVM turns into vector registers.
//! Shape arguments are checked with `assert!` at the top of each kernel: they
//! come from [`crate::program`], which derives them from the graph, so a
//! failure is a bug there, not bad input.

use crate::multiversion;

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
    fn apply<const L: usize>(&self, v: &mut [f32; L], ch0: usize) {
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
    fn apply_one(&self, x: f32, ch: usize) -> f32 {
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
    fn apply_pixel(&self, row: &mut [f32]) {
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
    fn covers(&self, channels: usize) -> bool {
        match self {
            Activation::PRelu(slopes) => slopes.len() >= channels,
            _ => true,
        }
    }
}

/// Rounds `n` up to a multiple of `m`.
pub fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

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

/// A tensor added to a layer's output before its activation (a residual
/// connection), `rows x channels` with `channels <= n`: the channels past
/// its own count are taken as zero, which fuses a channel pad into the add.
#[derive(Debug, Clone, Copy)]
pub struct Residual<'a> {
    pub data: &'a [f32],
    pub channels: usize,
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
        match rows {
            None => {
                for kk in 0..k {
                    step!(kk, kk);
                }
            }
            Some(rows) => {
                for (i, &kk) in rows.iter().enumerate() {
                    step!(kk as usize, i);
                }
            }
        }
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
        match rows {
            None => {
                for kk in 0..k {
                    step!(kk, kk);
                }
            }
            Some(rows) => {
                for (i, &kk) in rows.iter().enumerate() {
                    step!(kk as usize, i);
                }
            }
        }
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

/// [`Activation::apply`] on one AVX-512 vector of channels `ch0..ch0 + 16`,
/// with the same operations as [`act_avx2`] (so the same results).
///
/// # Safety
/// The CPU must support avx512f; PReLU slopes must cover `ch0 + 16`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn act_avx512(
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

/// [`Activation::apply`] on one AVX2 vector, lane `j` being channel `ch0 + j`.
///
/// # Safety
/// The CPU must support avx2; PReLU slopes must cover `ch0 + 8`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn act_avx2(
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

/// Lays out every convolution window of `input` (`c` channels) as one row of
/// `out`: `out[(oy * ow + ox) * K + (ky * kw + kx) * c + ch]`, zeros where the
/// window hangs over the padding, `K = kh * kw * c`. A dense convolution is
/// then a [`gemm`] of this matrix with the packed weights.
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
