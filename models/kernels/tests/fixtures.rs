//! Every net, lowered from its committed ONNX file and run on every
//! instruction set this CPU has, matches the TFLite interpreter's outputs on
//! its fixture input (a real crop, see `models/fixtures/<net>/meta.json`).

use std::path::{Path, PathBuf};

use holistream_kernels::{Isa, Program};
use serde_json::Value;

const NETS: [&str; 6] = [
    "pose_detection",
    "pose_landmark_full",
    "face_detection_short_range",
    "face_landmark",
    "hand_recrop",
    "hand_landmark_full",
];

/// Max abs difference allowed, relative to the output's largest magnitude
/// (at least 1): outputs in pixel units reach the hundreds, where float32
/// summation order alone moves the last digits.
const TOL: f32 = 1e-4;

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The fixture input, normalised as the converter did: `u8 * scale + offset`.
fn fixture_input(dir: &Path, meta: &Value) -> Vec<f32> {
    let input = &meta["input"];
    let image = image::open(dir.join(input["file"].as_str().unwrap()))
        .unwrap()
        .to_rgb8();
    let scale = input["scale"].as_f64().unwrap() as f32;
    let offset = input["offset"].as_f64().unwrap() as f32;
    image
        .into_raw()
        .into_iter()
        .map(|v| v as f32 * scale + offset)
        .collect()
}

#[test]
fn every_net_matches_tflite_on_every_isa() {
    for net in NETS {
        let program =
            Program::from_onnx(&std::fs::read(models_dir().join(format!("{net}.onnx"))).unwrap())
                .unwrap_or_else(|e| panic!("{net}: {e}"));
        let dir = models_dir().join("fixtures").join(net);
        let meta: Value =
            serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
        let input = fixture_input(&dir, &meta);
        let specs = meta["outputs"].as_array().unwrap();
        assert_eq!(program.outputs().len(), specs.len(), "{net}: output count");
        // The FMA instruction sets (AVX2, AVX-512) give the same bits for
        // the whole net, as for each kernel: only the portable path differs
        // (by rounding), so a model's answers depend on whether the CPU has
        // FMA, never on which FMA instruction set it has.
        let mut fma_outputs: Option<(Isa, Vec<Vec<f32>>)> = None;
        for isa in Isa::under_test() {
            let program = program.clone().with_isa(isa);
            let mut scratch = program.scratch();
            // Twice on the same scratch: buffers reused across frames must
            // not leak one frame into the next.
            let first = program.run(&input, &mut scratch).unwrap();
            let outputs = program.run(&input, &mut scratch).unwrap();
            assert_eq!(first, outputs, "{net}/{}: second run differs", isa.name());
            if isa != Isa::PORTABLE {
                match &fma_outputs {
                    Some((other, want)) => assert!(
                        outputs
                            .iter()
                            .flatten()
                            .map(|v| v.to_bits())
                            .eq(want.iter().flatten().map(|v| v.to_bits())),
                        "{net}: {} and {} differ",
                        isa.name(),
                        other.name()
                    ),
                    None => fma_outputs = Some((isa, outputs.clone())),
                }
            }
            for ((got, spec), out) in outputs.iter().zip(specs).zip(program.outputs()) {
                let name = spec["name"].as_str().unwrap();
                assert_eq!(out.name, name, "{net}: output order");
                let shape: Vec<usize> = spec["shape_nhwc"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                assert_eq!(out.shape, shape, "{net}/{name}: shape");
                let expected = read_f32(&dir.join(spec["file"].as_str().unwrap()));
                assert_eq!(got.len(), expected.len(), "{net}/{name}: length");
                let scale = expected.iter().fold(1f32, |m, v| m.max(v.abs()));
                let (worst, diff) = got
                    .iter()
                    .zip(&expected)
                    .map(|(g, e)| (g - e).abs())
                    .enumerate()
                    .fold((0, 0f32), |acc, (i, d)| {
                        if d > acc.1 || d.is_nan() { (i, d) } else { acc }
                    });
                eprintln!(
                    "{net}/{name} [{}]: max |fused - tflite| = {diff:.2e} (scale {scale:.1})",
                    isa.name()
                );
                assert!(
                    diff <= TOL * scale,
                    "{net}/{name} [{}]: {diff} at {worst} (fused {}, tflite {}) > {}",
                    isa.name(),
                    got[worst],
                    expected[worst],
                    TOL * scale
                );
            }
        }
    }
}

/// Each net with its large layers halved across two threads
/// (`Program::run_on`) gives the unsplit outputs bit for bit, on every
/// instruction set: the halves' row ranges, residual rows and the second
/// thread's buffers are exact, and a split run leaves nothing behind for
/// the next one on the same scratch.
#[test]
fn every_net_split_across_two_threads_is_bit_identical() {
    let pool = holistream_kernels::split_pool();
    for net in NETS {
        let program =
            Program::from_onnx(&std::fs::read(models_dir().join(format!("{net}.onnx"))).unwrap())
                .unwrap();
        let dir = models_dir().join("fixtures").join(net);
        let meta: Value =
            serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
        let input = fixture_input(&dir, &meta);
        for isa in Isa::under_test() {
            let program = program.clone().with_isa(isa);
            let mut scratch = program.scratch();
            let want = program.run(&input, &mut scratch).unwrap();
            for round in 0..3 {
                let got = program.run_on(&input, &mut scratch, Some(pool)).unwrap();
                assert!(
                    got == want,
                    "{net}/{} split run {round} differs from the single-thread run",
                    isa.name()
                );
            }
            assert_eq!(
                program.run(&input, &mut scratch).unwrap(),
                want,
                "{net}: after split runs"
            );
        }
    }
}
