//! Property tests: each kernel, on every instruction set this CPU has,
//! against a naive reference on random shapes and data (seeded, so a failure
//! repeats), and the SIMD instances against the portable one.

use holistream_kernels::Isa;
use holistream_kernels::kernels::{
    self, Activation, NR, PackedDepthwise, PackedMatrix, Residual, SparseMatrix, Window, round_up,
};

/// xorshift64*: small, seeded, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    /// Uniform in `[-1, 1)`.
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }

    fn act(&mut self, channels: usize) -> Activation {
        match self.int(0, 4) {
            0 => Activation::Identity,
            1 => Activation::Clamp {
                lo: 0.0,
                hi: f32::INFINITY,
            },
            2 => Activation::Clamp { lo: 0.0, hi: 6.0 },
            3 => {
                let mut s = self.vec(channels);
                s.resize(round_up(channels, NR), 0.0);
                Activation::PRelu(s)
            }
            _ => Activation::Sigmoid,
        }
    }
}

fn reference_act(act: &Activation, x: f32, ch: usize) -> f32 {
    match act {
        Activation::Identity => x,
        Activation::Clamp { lo, hi } => x.max(*lo).min(*hi),
        Activation::PRelu(s) => {
            if x < 0.0 {
                x * s[ch]
            } else {
                x
            }
        }
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
    }
}

/// Asserts `got` is within `tol` of `want` (relative to magnitude >= 1).
fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}: [{i}] got {g}, want {w}"
        );
    }
}

/// Naive `a (m x k, row stride lda) * b (k x n) + bias`, plus the first
/// `res_c` channels of `res`, then the activation.
fn naive_gemm(
    a: &[f32],
    lda: usize,
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    bias: &[f32],
    (res, res_c): (&[f32], usize),
    act: &Activation,
) -> Vec<f32> {
    let mut want = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = bias[j];
            for kk in 0..k {
                s += a[i * lda + kk] * b[kk * n + j];
            }
            if j < res_c {
                s += res[i * res_c + j];
            }
            want[i * n + j] = reference_act(act, s, j);
        }
    }
    want
}

const CASES: usize = 60;

/// The FMA instruction sets (AVX2, and AVX-512 with its wider tiles) add the
/// same products in the same order, so they must agree bit for bit: a
/// model's results then do not depend on which of them the CPU has.
#[derive(Default)]
struct FmaResult(Option<Vec<f32>>);

impl FmaResult {
    fn check(&mut self, isa: Isa, got: Vec<f32>, what: &str) {
        if isa == Isa::PORTABLE {
            return;
        }
        match &self.0 {
            Some(first) => assert!(
                got.iter()
                    .zip(first)
                    .all(|(g, f)| g.to_bits() == f.to_bits()),
                "{what}: differs from the other FMA instruction set"
            ),
            None => self.0 = Some(got),
        }
    }
}

/// CI declares the instruction sets its machines have
/// (`HOLISTREAM_EXPECT_ISA`); one that is missing fails here, by name,
/// rather than being skipped by every per-ISA loop below.
#[test]
fn every_expected_instruction_set_is_tested() {
    let tested = Isa::under_test();
    for isa in Isa::expected().unwrap_or_else(|e| panic!("{e}")) {
        assert!(
            tested.contains(&isa),
            "{} expected but not tested",
            isa.name()
        );
    }
}

#[test]
fn gemm_matches_naive_with_bias_residual_and_activation() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..CASES {
        let (m, k, n) = (rng.int(1, 40), rng.int(1, 70), rng.int(1, 50));
        let lda = k + rng.int(0, 3);
        let a = rng.vec((m - 1) * lda + k);
        let mut b = rng.vec(k * n);
        // Pruned weights (whole rows zero) take the sparse panel path.
        if rng.int(0, 1) == 0 {
            for kk in 0..k {
                if rng.int(0, 2) > 0 {
                    b[kk * n..(kk + 1) * n].fill(0.0);
                }
            }
        }
        let bias = rng.vec(n);
        let act = rng.act(n);
        let res_c = if rng.int(0, 1) == 0 { 0 } else { rng.int(1, n) };
        let res = rng.vec(m * res_c);
        let packed = PackedMatrix::pack(k, n, |kk, j| b[kk * n + j], &bias);
        let want = naive_gemm(&a, lda, &b, (m, k, n), &bias, (&res, res_c), &act);
        let residual = (res_c > 0).then_some(Residual {
            data: &res,
            channels: res_c,
        });
        let mut portable = vec![f32::NAN; m * n];
        kernels::gemm(
            Isa::PORTABLE,
            &a,
            m,
            lda,
            &packed,
            &act,
            residual,
            &mut portable,
        );
        let mut fma_result = FmaResult::default();
        for isa in Isa::under_test() {
            let mut got = vec![f32::NAN; m * n];
            kernels::gemm(isa, &a, m, lda, &packed, &act, residual, &mut got);
            let what = format!("gemm case {case} m={m} k={k} n={n} [{}]", isa.name());
            assert_close(&got, &want, 1e-4, &what);
            assert_close(&got, &portable, 1e-5, &what);
            fma_result.check(isa, got, &what);
        }
    }
}

#[test]
fn sparse_gemm_matches_naive() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut scratch = Vec::new();
    for case in 0..CASES / 2 {
        // k past 128 takes several passes; m not a multiple of 32 leaves a
        // partial block.
        let (m, k, n) = (rng.int(1, 80), rng.int(1, 300), rng.int(1, 40));
        let lda = k + rng.int(0, 3);
        let a = rng.vec((m - 1) * lda + k);
        let mut b = rng.vec(k * n);
        for v in b.iter_mut() {
            if rng.int(0, 3) > 0 {
                *v = 0.0;
            }
        }
        let bias = rng.vec(n);
        let act = rng.act(n);
        let res_c = if rng.int(0, 1) == 0 { 0 } else { rng.int(1, n) };
        let res = rng.vec(m * res_c);
        let sparse = SparseMatrix::pack(k, n, |kk, j| b[kk * n + j], &bias);
        let want = naive_gemm(&a, lda, &b, (m, k, n), &bias, (&res, res_c), &act);
        let residual = (res_c > 0).then_some(Residual {
            data: &res,
            channels: res_c,
        });
        let mut portable = vec![f32::NAN; m * n];
        kernels::sparse_gemm(
            Isa::PORTABLE,
            &a,
            m,
            lda,
            &sparse,
            &act,
            residual,
            &mut portable,
            &mut scratch,
        );
        let mut fma_result = FmaResult::default();
        for isa in Isa::under_test() {
            let mut got = vec![f32::NAN; m * n];
            kernels::sparse_gemm(
                isa,
                &a,
                m,
                lda,
                &sparse,
                &act,
                residual,
                &mut got,
                &mut scratch,
            );
            let what = format!("sparse_gemm case {case} m={m} k={k} n={n} [{}]", isa.name());
            assert_close(&got, &want, 1e-4, &what);
            assert_close(&got, &portable, 1e-5, &what);
            fma_result.check(isa, got, &what);
        }
    }
}

/// Naive NHWC convolution (dense when `depthwise` is false).
#[allow(clippy::too_many_arguments)]
fn naive_conv(
    input: &[f32],
    win: &Window,
    c_in: usize,
    c_out: usize,
    depthwise: bool,
    weight: impl Fn(usize, usize, usize, usize) -> f32,
    bias: &[f32],
    act: &Activation,
) -> Vec<f32> {
    let (oh, ow) = win.output_size().unwrap();
    let mut out = vec![0.0; oh * ow * c_out];
    for oy in 0..oh {
        for ox in 0..ow {
            for co in 0..c_out {
                let mut s = bias[co];
                for ky in 0..win.kh {
                    for kx in 0..win.kw {
                        let iy = (oy * win.stride_h + ky) as isize - win.pads[0] as isize;
                        let ix = (ox * win.stride_w + kx) as isize - win.pads[1] as isize;
                        if iy < 0 || ix < 0 || iy >= win.h as isize || ix >= win.w as isize {
                            continue;
                        }
                        let px = (iy as usize * win.w + ix as usize) * c_in;
                        if depthwise {
                            s += input[px + co] * weight(co, 0, ky, kx);
                        } else {
                            for ci in 0..c_in {
                                s += input[px + ci] * weight(co, ci, ky, kx);
                            }
                        }
                    }
                }
                out[(oy * ow + ox) * c_out + co] = reference_act(act, s, co);
            }
        }
    }
    out
}

fn random_window(rng: &mut Rng, max_hw: usize) -> Window {
    loop {
        let k = [1, 2, 3, 5][rng.int(0, 3)];
        let win = Window {
            h: rng.int(1, max_hw),
            w: rng.int(1, max_hw),
            kh: k,
            kw: k,
            stride_h: rng.int(1, 3),
            stride_w: rng.int(1, 3),
            pads: [rng.int(0, 2), rng.int(0, 2), rng.int(0, 2), rng.int(0, 2)],
        };
        if win.output_size().is_some() {
            return win;
        }
    }
}

#[test]
fn depthwise_matches_naive() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for case in 0..CASES {
        // Up to 24 wide: rows with eight interior stride-1 pixels take the
        // row kernel, the others the per-pixel one.
        let mut win = random_window(&mut rng, 24);
        if case % 2 == 0 {
            win.stride_w = 1;
        }
        let c = rng.int(1, 37);
        let input = rng.vec(win.h * win.w * c);
        let w = rng.vec(c * win.kh * win.kw);
        let bias = rng.vec(c);
        let act = rng.act(c);
        let wt = |ch: usize, _: usize, ky: usize, kx: usize| w[(ch * win.kh + ky) * win.kw + kx];
        let want = naive_conv(&input, &win, c, c, true, wt, &bias, &act);
        let packed =
            PackedDepthwise::pack(c, win.kh, win.kw, |ch, ky, kx| wt(ch, 0, ky, kx), &bias);
        let mut portable = vec![f32::NAN; want.len()];
        kernels::depthwise(Isa::PORTABLE, &input, &win, &packed, &act, &mut portable);
        let mut fma_result = FmaResult::default();
        for isa in Isa::under_test() {
            let mut got = vec![f32::NAN; want.len()];
            kernels::depthwise(isa, &input, &win, &packed, &act, &mut got);
            let what = format!("depthwise case {case} {win:?} c={c} [{}]", isa.name());
            assert_close(&got, &want, 1e-4, &what);
            assert_close(&got, &portable, 1e-5, &what);
            fma_result.check(isa, got, &what);
        }
    }
}

#[test]
fn im2col_then_gemm_is_a_dense_convolution() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for case in 0..CASES / 2 {
        let win = random_window(&mut rng, 12);
        let (c_in, c_out) = (rng.int(1, 9), rng.int(1, 20));
        let input = rng.vec(win.h * win.w * c_in);
        let w = rng.vec(c_out * c_in * win.kh * win.kw);
        let bias = rng.vec(c_out);
        let act = rng.act(c_out);
        let wt = |co: usize, ci: usize, ky: usize, kx: usize| {
            w[((co * c_in + ci) * win.kh + ky) * win.kw + kx]
        };
        let want = naive_conv(&input, &win, c_in, c_out, false, wt, &bias, &act);
        let (oh, ow) = win.output_size().unwrap();
        let k = win.kh * win.kw * c_in;
        let packed = PackedMatrix::pack(
            k,
            c_out,
            |kk, co| wt(co, kk % c_in, kk / c_in / win.kw, kk / c_in % win.kw),
            &bias,
        );
        let mut cols = vec![f32::NAN; oh * ow * k];
        kernels::im2col(&input, &win, c_in, &mut cols);
        for isa in Isa::under_test() {
            let mut got = vec![f32::NAN; want.len()];
            kernels::gemm(isa, &cols, oh * ow, k, &packed, &act, None, &mut got);
            assert_close(
                &got,
                &want,
                1e-4,
                &format!("dense case {case} {win:?} [{}]", isa.name()),
            );
        }
    }
}

#[test]
fn max_pool_resize_and_layout_kernels_match_naive() {
    let mut rng = Rng(0x1234_5678_9abc_def0);
    for case in 0..CASES / 2 {
        let (h, w, c) = (rng.int(1, 9), rng.int(1, 9), rng.int(1, 19));
        let input = rng.vec(h * w * c);

        // Max-pool (padded taps never win).
        let win = random_window(&mut rng, 9);
        let win = Window { h, w, ..win };
        if let Some((oh, ow)) = win.output_size() {
            let mut want = vec![f32::NEG_INFINITY; oh * ow * c];
            for oy in 0..oh {
                for ox in 0..ow {
                    for ky in 0..win.kh {
                        for kx in 0..win.kw {
                            let iy = (oy * win.stride_h + ky) as isize - win.pads[0] as isize;
                            let ix = (ox * win.stride_w + kx) as isize - win.pads[1] as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            for ch in 0..c {
                                let o = &mut want[(oy * ow + ox) * c + ch];
                                *o = o.max(input[(iy as usize * w + ix as usize) * c + ch]);
                            }
                        }
                    }
                }
            }
            for isa in Isa::under_test() {
                let mut got = vec![f32::NAN; want.len()];
                kernels::max_pool(isa, &input, &win, c, &mut got);
                assert_eq!(got, want, "max_pool case {case} {win:?} [{}]", isa.name());
            }
        }

        // Bilinear resize, half-pixel centres, any output size.
        let (oh, ow) = (rng.int(1, 20), rng.int(1, 20));
        let mut want = vec![0.0; oh * ow * c];
        let src = |d: usize, n_in: usize, n_out: usize| {
            let s =
                ((d as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).clamp(0.0, (n_in - 1) as f64);
            let i0 = s.floor() as usize;
            (i0, (i0 + 1).min(n_in - 1), s - i0 as f64)
        };
        for oy in 0..oh {
            let (y0, y1, fy) = src(oy, h, oh);
            for ox in 0..ow {
                let (x0, x1, fx) = src(ox, w, ow);
                for ch in 0..c {
                    let p = |y: usize, x: usize| input[(y * w + x) * c + ch] as f64;
                    let v = p(y0, x0) * (1.0 - fy) * (1.0 - fx)
                        + p(y0, x1) * (1.0 - fy) * fx
                        + p(y1, x0) * fy * (1.0 - fx)
                        + p(y1, x1) * fy * fx;
                    // Odd cases with a clamp fused (a pointwise layer's
                    // activation moved behind the resize).
                    let v = if case % 2 == 1 { v.clamp(0.0, 0.5) } else { v };
                    want[(oy * ow + ox) * c + ch] = v as f32;
                }
            }
        }
        for isa in Isa::under_test() {
            let mut got = vec![f32::NAN; want.len()];
            let act = if case % 2 == 1 {
                Activation::Clamp { lo: 0.0, hi: 0.5 }
            } else {
                Activation::Identity
            };
            kernels::resize_bilinear(isa, &input, h, w, c, oh, ow, &act, &mut got);
            assert_close(
                &got,
                &want,
                1e-5,
                &format!("resize case {case} [{}]", isa.name()),
            );
        }

        // Depth-to-space (DCR) against the NCHW definition.
        let bs = rng.int(1, 3);
        let c_out = rng.int(1, 4);
        let c_in = c_out * bs * bs;
        let d_in = rng.vec(h * w * c_in);
        let mut got = vec![f32::NAN; d_in.len()];
        kernels::depth_to_space(&d_in, h, w, c_out, bs, &mut got);
        for y in 0..h * bs {
            for x in 0..w * bs {
                for ch in 0..c_out {
                    let (i, j) = (y % bs, x % bs);
                    let src = ((y / bs) * w + x / bs) * c_in + (i * bs + j) * c_out + ch;
                    assert_eq!(
                        got[(y * w * bs + x) * c_out + ch],
                        d_in[src],
                        "depth_to_space case {case}"
                    );
                }
            }
        }

        // Channel remap (slice / pad), add, activate, global mean.
        let start = rng.int(0, 2 * c) as isize - c as isize;
        let c_out = rng.int(1, 2 * c);
        let mut got = vec![f32::NAN; h * w * c_out];
        kernels::remap_channels(&input, h * w, c, start, c_out, &mut got);
        for p in 0..h * w {
            for o in 0..c_out {
                let s = start + o as isize;
                let want = if s >= 0 && (s as usize) < c {
                    input[p * c + s as usize]
                } else {
                    0.0
                };
                assert_eq!(got[p * c_out + o], want, "remap case {case}");
            }
        }
        let other = rng.vec(h * w * c);
        let act = rng.act(c);
        for isa in Isa::under_test() {
            let mut got = vec![f32::NAN; input.len()];
            kernels::add(isa, &input, &other, c, &act, &mut got);
            let want: Vec<f32> = (0..input.len())
                .map(|i| reference_act(&act, input[i] + other[i], i % c))
                .collect();
            assert_close(
                &got,
                &want,
                1e-6,
                &format!("add case {case} [{}]", isa.name()),
            );
            kernels::activate(isa, &input, c, &act, &mut got);
            let want: Vec<f32> = (0..input.len())
                .map(|i| reference_act(&act, input[i], i % c))
                .collect();
            assert_close(
                &got,
                &want,
                1e-6,
                &format!("activate case {case} [{}]", isa.name()),
            );
        }
        let mut got = vec![f32::NAN; c];
        kernels::global_mean(&input, h * w, c, &mut got);
        let want: Vec<f32> = (0..c)
            .map(|ch| (0..h * w).map(|p| input[p * c + ch]).sum::<f32>() / (h * w) as f32)
            .collect();
        assert_close(&got, &want, 1e-5, &format!("global_mean case {case}"));
    }
}
