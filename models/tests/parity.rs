//! The shipped weights load, and every net, run through `BurnNets` on its
//! fixture input (a real crop of obama.jpg, see `fixtures/<net>/meta.json`),
//! matches the TFLite interpreter's outputs on the same input.

use std::path::{Path, PathBuf};

use holistream_nets::{BurnNets, Net, NetError, NetRunner};
use serde_json::Value;

/// Same criterion as `convert.py`: `1e-3` absolute, plus `2e-5` of the
/// output's largest magnitude for outputs in pixel units (values in the
/// hundreds), where float32 rounding alone exceeds `1e-3` (README.md).
const ABS_TOL: f32 = 1e-3;
const REL_TOL: f32 = 2e-5;

fn fixture_dir(net: Net) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(net.name())
}

/// The fixture input, normalised exactly as the converter did:
/// `u8 as f32 * scale + offset`, NHWC.
fn fixture_input(net: Net, meta: &Value) -> Vec<f32> {
    let input = &meta["input"];
    let image = image::open(fixture_dir(net).join(input["file"].as_str().unwrap()))
        .unwrap()
        .to_rgb8();
    let (h, w) = net.input_size();
    assert_eq!(
        (image.height() as usize, image.width() as usize),
        (h, w),
        "{net:?} fixture size"
    );
    let scale = input["scale"].as_f64().unwrap() as f32;
    let offset = input["offset"].as_f64().unwrap() as f32;
    image
        .into_raw()
        .into_iter()
        .map(|v| v as f32 * scale + offset)
        .collect()
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.len() % 4, 0, "{}", path.display());
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn every_net_matches_tflite_on_its_fixture() {
    let nets = BurnNets::load().expect("shipped weights load");
    for net in Net::ALL {
        let dir = fixture_dir(net);
        let meta: Value =
            serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
        assert_eq!(meta["net"], net.name());
        let outputs = nets.run(net, &fixture_input(net, &meta)).unwrap();
        let expected_outputs = meta["outputs"].as_array().unwrap();
        assert_eq!(
            outputs.len(),
            expected_outputs.len(),
            "{net:?} output count"
        );

        for (got, spec) in outputs.iter().zip(expected_outputs) {
            let name = spec["name"].as_str().unwrap();
            let expected = read_f32(&dir.join(spec["file"].as_str().unwrap()));
            let numel: u64 = spec["shape_nhwc"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .product();
            assert_eq!(expected.len() as u64, numel, "{net:?}/{name} fixture size");
            assert_eq!(got.len(), expected.len(), "{net:?}/{name} length");

            let max_ref = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
            let tolerance = ABS_TOL + REL_TOL * max_ref;
            let (worst, diff) = got
                .iter()
                .zip(&expected)
                .map(|(g, e)| (g - e).abs())
                .enumerate()
                .fold(
                    (0, 0f32),
                    |acc, (i, d)| if d > acc.1 { (i, d) } else { acc },
                );
            assert!(
                got.iter().all(|v| v.is_finite()),
                "{net:?}/{name}: non-finite output"
            );
            eprintln!(
                "{net:?}/{name}: max |burn - tflite| = {diff:.2e} (tolerance {tolerance:.2e})"
            );
            assert!(
                diff <= tolerance,
                "{net:?}/{name}: max |burn - tflite| = {diff} at {worst} \
                 (burn {}, tflite {}) > {tolerance}",
                got[worst],
                expected[worst]
            );
        }
    }
}

#[test]
fn wrong_input_length_is_a_clear_error() {
    let nets = BurnNets::load().unwrap();
    let (h, w) = Net::FaceDetection.input_size();
    let err = nets
        .run(Net::FaceDetection, &vec![0.0; h * w * 3 - 1])
        .unwrap_err();
    assert!(
        matches!(err, NetError::InputSize { net: Net::FaceDetection, expected, got }
            if expected == h * w * 3 && got == expected - 1),
        "{err}"
    );
    // A right-sized input for another net is still the wrong size for this one.
    let (h, w) = Net::PoseLandmark.input_size();
    assert!(nets.run(Net::HandLandmark, &vec![0.0; h * w * 3]).is_err());
}
