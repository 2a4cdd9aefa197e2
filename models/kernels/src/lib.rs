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

/// The environment variable that restricts the fused kernels to one
/// instruction set for the whole process: `portable`, `avx2` (or `avx2+fma`)
/// or `avx512`. Unset, they run on the fastest this CPU has. Read once, by the
/// first [`Isa::detect`] (or [`Isa::selected`]); naming an instruction set the
/// CPU lacks is an error, never a silent fallback, so a CI step that asks for
/// AVX2 runs on AVX2 or fails.
pub const ISA_ENV: &str = "HOLISTREAM_ISA";

/// The environment variable in which CI declares the instruction sets its
/// machines must have, comma separated (names as for [`ISA_ENV`]): the tests
/// that run every instruction set ([`Isa::under_test`]) fail when one of them
/// is missing instead of skipping it.
pub const EXPECT_ISA_ENV: &str = "HOLISTREAM_EXPECT_ISA";

/// Why an instruction set named in the environment cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IsaError {
    /// Not a name this crate knows.
    Unknown { var: &'static str, name: String },
    /// A known instruction set this CPU (or this build's target) lacks.
    Missing {
        var: &'static str,
        name: String,
        available: Vec<&'static str>,
    },
}

impl std::fmt::Display for IsaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IsaError::Unknown { var, name } => write!(
                f,
                "{var}={name:?}: not an instruction set (portable, avx2, avx2+fma, avx512)"
            ),
            IsaError::Missing {
                var,
                name,
                available,
            } => write!(
                f,
                "{var}={name}: this CPU lacks it (it has {})",
                available.join(", ")
            ),
        }
    }
}

impl std::error::Error for IsaError {}

impl Isa {
    /// Plain Rust, no CPU feature beyond the target's baseline (LLVM still
    /// vectorizes it with SSE2 on x86-64 or NEON on aarch64).
    pub const PORTABLE: Isa = Isa(IsaKind::Portable);

    /// The instruction set the kernels run on: the one [`ISA_ENV`] names, or
    /// else the fastest this CPU supports (decided once: the crops ask on
    /// every call).
    ///
    /// # Panics
    /// When [`ISA_ENV`] names an instruction set this CPU lacks (or none at
    /// all). A program checks [`Isa::selected`] at start-up to report that as
    /// an error before anything runs.
    pub fn detect() -> Isa {
        Self::selected().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Isa::detect`]'s answer, or why [`ISA_ENV`] cannot be honoured;
    /// reads the environment once per process.
    pub fn selected() -> Result<Isa, IsaError> {
        static SELECTED: std::sync::OnceLock<Result<Isa, IsaError>> = std::sync::OnceLock::new();
        SELECTED
            .get_or_init(|| match std::env::var(ISA_ENV) {
                Ok(name) if !name.trim().is_empty() => Self::by_name(ISA_ENV, name.trim()),
                Ok(_) | Err(std::env::VarError::NotPresent) => Ok(Self::fastest()),
                Err(std::env::VarError::NotUnicode(name)) => Err(IsaError::Unknown {
                    var: ISA_ENV,
                    name: name.to_string_lossy().into_owned(),
                }),
            })
            .clone()
    }

    /// The fastest instruction set this CPU supports.
    pub fn fastest() -> Isa {
        *Self::available().last().unwrap_or(&Self::PORTABLE)
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

    /// The instruction set called `name` (`portable`, `avx2` or `avx2+fma`,
    /// `avx512`), if this CPU has it; `var` names where the name came from,
    /// for the error.
    pub fn by_name(var: &'static str, name: &str) -> Result<Isa, IsaError> {
        let canonical = match name.to_ascii_lowercase().as_str() {
            "portable" => "portable",
            "avx2" | "avx2+fma" => "avx2+fma",
            "avx512" | "avx-512" | "avx512f" => "avx512",
            _ => {
                return Err(IsaError::Unknown {
                    var,
                    name: name.to_owned(),
                });
            }
        };
        let available = Self::available();
        available
            .iter()
            .copied()
            .find(|isa| isa.name() == canonical)
            .ok_or_else(|| IsaError::Missing {
                var,
                name: name.to_owned(),
                available: available.iter().map(|isa| isa.name()).collect(),
            })
    }

    /// The instruction sets CI declared in [`EXPECT_ISA_ENV`] (empty when
    /// unset), or the first one this CPU lacks.
    pub fn expected() -> Result<Vec<Isa>, IsaError> {
        let declared = std::env::var(EXPECT_ISA_ENV).unwrap_or_default();
        declared
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(|name| Self::by_name(EXPECT_ISA_ENV, name))
            .collect()
    }

    /// For tests that run every instruction set: [`Isa::available`], after
    /// checking that it covers every one CI declared in [`EXPECT_ISA_ENV`].
    /// Says once per process, on stderr (past the test harness's capture, so
    /// CI logs show it), which instruction sets the tests run on.
    ///
    /// # Panics
    /// When an expected instruction set is missing: a test that would
    /// otherwise skip it silently fails instead.
    pub fn under_test() -> Vec<Isa> {
        static ANNOUNCED: std::sync::Once = std::sync::Once::new();
        let expected = Self::expected().unwrap_or_else(|e| panic!("{e}"));
        let available = Self::available();
        ANNOUNCED.call_once(|| {
            use std::io::Write;
            let names = |isas: &[Isa]| isas.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ");
            let _ = writeln!(
                std::io::stderr(),
                "holistream-kernels: testing instruction sets {} ({EXPECT_ISA_ENV}: {})",
                names(&available),
                if expected.is_empty() {
                    "unset, nothing required".to_string()
                } else {
                    names(&expected)
                }
            );
        });
        available
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
        assert_eq!(Isa::fastest(), *isas.last().unwrap());
        // Under `HOLISTREAM_ISA` (CI's restricted runs) `detect` is that one.
        match std::env::var(ISA_ENV) {
            Ok(name) => assert_eq!(Some(Isa::detect()), Isa::by_name(ISA_ENV, &name).ok()),
            Err(_) => assert_eq!(Isa::detect(), Isa::fastest()),
        }
    }

    #[test]
    fn instruction_sets_are_named_and_missing_ones_are_errors() {
        assert_eq!(Isa::by_name(ISA_ENV, "portable"), Ok(Isa::PORTABLE));
        assert!(matches!(
            Isa::by_name(ISA_ENV, "sse9"),
            Err(IsaError::Unknown { .. })
        ));
        for isa in Isa::available() {
            assert_eq!(Isa::by_name(ISA_ENV, isa.name()), Ok(isa));
        }
        #[cfg(target_arch = "x86_64")]
        if Isa::available().len() < 3 {
            let err = Isa::by_name(ISA_ENV, "avx512").unwrap_err();
            assert!(matches!(err, IsaError::Missing { .. }), "{err}");
            assert!(err.to_string().contains("lacks"), "{err}");
        }
    }
}
