//! The shipped weights load, and every net, run through `BurnNets` and
//! through `FusedNets` (on every instruction set this CPU has) on its fixture
//! input (a real crop of obama.jpg, see `fixtures/<net>/meta.json`), matches
//! the TFLite interpreter's outputs on the same input; the fused kernels also
//! match the generated burn code.

use std::path::{Path, PathBuf};

use holistream_nets::{Backend, BurnNets, FusedNets, Isa, Net, NetError, NetRunner};
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

fn read_meta(net: Net) -> Value {
    let meta: Value =
        serde_json::from_slice(&std::fs::read(fixture_dir(net).join("meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["net"], net.name());
    meta
}

/// Runs `nets` on every fixture and checks each output against TFLite's.
fn check_against_tflite(nets: &dyn NetRunner, label: &str) {
    for net in Net::ALL {
        let dir = fixture_dir(net);
        let meta = read_meta(net);
        let outputs = nets.run(net, &fixture_input(net, &meta)).unwrap();
        let expected_outputs = meta["outputs"].as_array().unwrap();
        assert_eq!(
            outputs.len(),
            expected_outputs.len(),
            "{label} {net:?} output count"
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
            assert_eq!(got.len(), expected.len(), "{label} {net:?}/{name} length");

            let max_ref = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
            let tolerance = ABS_TOL + REL_TOL * max_ref;
            let (worst, diff) = max_diff(got, &expected);
            assert!(
                got.iter().all(|v| v.is_finite()),
                "{label} {net:?}/{name}: non-finite output"
            );
            eprintln!(
                "{label} {net:?}/{name}: max |ours - tflite| = {diff:.2e} (tolerance {tolerance:.2e})"
            );
            assert!(
                diff <= tolerance,
                "{label} {net:?}/{name}: max |ours - tflite| = {diff} at {worst} \
                 (ours {}, tflite {}) > {tolerance}",
                got[worst],
                expected[worst]
            );
        }
    }
}

/// `(index, value)` of the largest `|a - b|`; NaN counts as largest.
fn max_diff(a: &[f32], b: &[f32]) -> (usize, f32) {
    a.iter()
        .zip(b)
        .map(|(g, e)| (g - e).abs())
        .enumerate()
        .fold((0, 0f32), |acc, (i, d)| {
            if d > acc.1 || d.is_nan() { (i, d) } else { acc }
        })
}

#[test]
fn every_net_matches_tflite_on_its_fixture() {
    let nets = BurnNets::load().expect("shipped weights load");
    check_against_tflite(&nets, "burn");
}

#[test]
fn fused_kernels_match_tflite_on_every_isa() {
    let fused = FusedNets::load().expect("shipped nets lower");
    for isa in Isa::under_test() {
        check_against_tflite(&fused.with_isa(isa), isa.name());
    }
}

/// The fused kernels against the generated burn code on the same real
/// inputs: max abs difference at most 1e-4 of each output's magnitude
/// (at least 1; landmark outputs are in pixels, up to a few hundred).
#[test]
fn fused_kernels_match_the_generated_burn_code() {
    let burn = BurnNets::load().unwrap();
    let fused = FusedNets::load().unwrap();
    for net in Net::ALL {
        let input = fixture_input(net, &read_meta(net));
        let want = burn.run(net, &input).unwrap();
        let got = fused.run(net, &input).unwrap();
        assert_eq!(got.len(), want.len(), "{net:?} output count");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.len(), w.len(), "{net:?} output {i} length");
            let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
            let (worst, diff) = max_diff(g, w);
            eprintln!("{net:?} output {i}: max |fused - burn| = {diff:.2e} (scale {scale:.1})");
            assert!(
                diff <= 1e-4 * scale,
                "{net:?} output {i}: |fused - burn| = {diff} at {worst} (fused {}, burn {})",
                g[worst],
                w[worst]
            );
        }
    }
}

#[test]
fn backend_names_parse_and_unknown_ones_are_errors() {
    assert_eq!("fused".parse::<Backend>(), Ok(Backend::Fused));
    assert_eq!("burn".parse::<Backend>(), Ok(Backend::Burn));
    assert_eq!(
        "fused-portable".parse::<Backend>(),
        Ok(Backend::FusedPortable)
    );
    assert_eq!("flex".parse::<Backend>(), Ok(Backend::Burn));
    assert!("tflite".parse::<Backend>().is_err());
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    assert_eq!(Backend::default_for_build(), Backend::Fused);
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

    let fused = FusedNets::load().unwrap();
    let (h, w) = Net::FaceDetection.input_size();
    let err = fused
        .run(Net::FaceDetection, &vec![0.0; h * w * 3 + 1])
        .unwrap_err();
    assert!(
        matches!(err, NetError::InputSize { net: Net::FaceDetection, expected, got }
            if expected == h * w * 3 && got == expected + 1),
        "{err}"
    );
    assert!(fused.run(Net::HandLandmark, &[]).is_err());
}

/// The fused kernels as a burn operation (`burn_ext`): a flex tensor in, flex
/// tensors out, equal to the slice path; a strided view (an NCHW tensor
/// permuted to NHWC, as a burn caller holding NCHW would pass) gives the
/// same outputs; a wrong shape is an error, not a panic.
#[test]
fn the_fused_burn_operation_takes_flex_tensors() {
    use burn::tensor::{Device, Tensor, TensorData};
    use holistream_nets::burn_ext::{FusedForwardError, fused_forward};

    let fused = FusedNets::load().unwrap();
    let net = Net::FaceDetection;
    let input = fixture_input(net, &read_meta(net));
    let want = fused.run(net, &input).unwrap();
    let (h, w) = net.input_size();
    let device = Device::flex();

    let nhwc = Tensor::<4>::from_data(TensorData::new(input.clone(), [1, h, w, 3]), &device);
    let nchw = nhwc.clone().permute([0, 3, 1, 2]);
    for (what, tensor) in [
        ("contiguous", nhwc),
        ("strided", nchw.permute([0, 2, 3, 1])),
    ] {
        let got: Vec<Vec<f32>> = fused_forward(fused.net(net), tensor, false)
            .unwrap()
            .into_iter()
            .map(|t| t.into_data().try_into_vec::<f32>().unwrap())
            .collect();
        assert_eq!(got, want, "{what} input");
    }

    let wrong = Tensor::<4>::from_data(TensorData::new(input, [1, w, 3, h]), &device);
    assert!(matches!(
        fused_forward(fused.net(net), wrong, false),
        Err(FusedForwardError::Shape { .. })
    ));
}
