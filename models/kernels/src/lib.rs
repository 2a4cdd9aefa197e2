//! Fused NHWC f32 CPU kernels for MediaPipe Holistic's nets, and the lowering
//! of their ONNX graphs onto those kernels.
//!
//! - [`onnx`]: a minimal reader of the ONNX protobuf (only what the converted
//!   nets use), so the nets come from the committed `.onnx` files.
//! - [`program`]: lowers one ONNX graph to a list of fused NHWC layers with
//!   weights packed once ([`Program`]), and runs it on reused buffers
//!   ([`Scratch`]).
//! - [`kernels`]: the layers themselves: pointwise/dense convolution as a
//!   register-blocked GEMM with bias, residual add and activation fused;
//!   depthwise KxK; max-pool; bilinear resize; depth-to-space; global average.
//! - [`warp`]: the nets' input crops, OpenCV's `warpPerspective` bit for bit.
//!
//! Every kernel is written once as plain Rust over fixed-size lanes that LLVM
//! vectorizes, and compiled several times: portable, AVX2+FMA and AVX-512
//! (x86-64), picked at run time by [`Isa`]. Kernels are single-threaded: the
//! server runs one model instance per core; [`Program::run_on`] halves a
//! net's large layers across two threads for one frame's latency.

pub mod kernels;
pub mod onnx;
pub mod program;
pub mod warp;

pub use program::{LowerError, Program, Scratch};

/// The two threads a split net's layers run on, shared by every worker in
/// the process: a frame is split only while a core is free (the pipeline
/// decides), so more threads would only compete.
pub fn split_pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .thread_name(|i| format!("holistream-split-{i}"))
            .build()
            .expect("the split pool's two threads start")
    })
}

/// The instruction set a kernel call runs on.
///
/// Only [`Isa::detect`] and [`Isa::available`] construct the SIMD variants, and
/// they check the CPU first: holding an `Isa` proves its features are present,
/// which is what makes the `unsafe` calls of the `#[target_feature]` kernel
/// instances sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isa(IsaKind);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IsaKind {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// Plain Rust, no CPU feature beyond the target's baseline (LLVM still
    /// vectorizes it with SSE2 on x86-64 or NEON on aarch64).
    pub const PORTABLE: Isa = Isa(IsaKind::Portable);

    /// The fastest instruction set this CPU supports (detected once: the
    /// crops ask on every call).
    pub fn detect() -> Isa {
        static DETECTED: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| *Self::available().last().unwrap_or(&Self::PORTABLE))
    }

    /// Every instruction set this CPU supports, slowest first; always starts
    /// with [`Isa::PORTABLE`]. Tests run each against the portable one.
    pub fn available() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut isas = vec![Self::PORTABLE];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                isas.push(Isa(IsaKind::Avx2Fma));
                if is_x86_feature_detected!("avx512f") {
                    isas.push(Isa(IsaKind::Avx512));
                }
            }
        }
        isas
    }

    /// A short name for reports: `portable`, `avx2+fma` or `avx512`.
    pub fn name(self) -> &'static str {
        match self.0 {
            IsaKind::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            IsaKind::Avx2Fma => "avx2+fma",
            #[cfg(target_arch = "x86_64")]
            IsaKind::Avx512 => "avx512",
        }
    }
}

/// Defines `pub fn $name(isa: Isa, args...)` that runs `$body` compiled for the
/// instruction set `isa` names. The body is generic over `const FMA: bool`
/// (pass it on to [`kernels::fmadd`] and the `#[inline(always)]` helpers, so
/// they are compiled inside each instance's target features) and `const
/// WIDE: bool`, true in the AVX-512 instance only (kernels with a 512-bit
/// variant branch on it; the others ignore it).
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block
    ) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(isa: $crate::Isa, $($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body<const FMA: bool, const WIDE: bool>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx2($($arg: $ty),*) {
                body::<true, false>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            fn avx512($($arg: $ty),*) {
                body::<true, true>($($arg),*)
            }
            match isa.0 {
                $crate::IsaKind::Portable => body::<false, false>($($arg),*),
                #[cfg(target_arch = "x86_64")]
                // SAFETY: an `Isa` holding `Avx2Fma` is only built by
                // `Isa::available` after detecting avx2 and fma on this CPU.
                $crate::IsaKind::Avx2Fma => unsafe { avx2($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above, `Avx512` is only built after detecting
                // avx512f, avx2 and fma.
                $crate::IsaKind::Avx512 => unsafe { avx512($($arg),*) },
            }
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_is_always_available_and_first() {
        let isas = Isa::available();
        assert_eq!(isas[0], Isa::PORTABLE);
        assert_eq!(Isa::detect(), *isas.last().unwrap());
    }
}
