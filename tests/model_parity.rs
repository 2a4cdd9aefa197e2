//! Parity with MediaPipe Holistic 0.10.14 on the shared test photos: what CI
//! runs. It fails when any image misses a threshold (presence disagrees, or a
//! part's mean error exceeds 2% of its diagonal); see `holistream parity`.

use holistream::model::Holistic;
use holistream::model::parity::{Thresholds, check_clip, check_dir};
use std::path::Path;

const TESTDATA: &str = "../shared/testdata";

/// The test photos, decoded, in name order.
fn photos() -> Vec<(std::path::PathBuf, image::RgbImage)> {
    let mut paths: Vec<_> = std::fs::read_dir(Path::new(TESTDATA).join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let image = holistream::model::decode_image(&std::fs::read(&p).unwrap()).unwrap();
            (p, image)
        })
        .collect()
}

#[test]
fn still_images_match_mediapipe() {
    let holistic = Holistic::load_default().expect("shipped weights load");
    let report = check_dir(
        &holistic,
        Path::new(TESTDATA),
        Thresholds { max_mean_err: 0.02 },
    )
    .expect("parity run");
    println!("{report}");
    assert_eq!(
        report.images.len(),
        10,
        "expected the ten photos of the testdata"
    );
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}

/// Tracking mode (ROI carried over, detection skipped, pose smoothing, face
/// and hand ROI tracking) over the clip's first scene, frames 0–49, before its
/// first hard cut; see `check_clip` for why the whole clip is only reported.
#[test]
fn tracking_mode_follows_mediapipe_on_the_clip() {
    let holistic = Holistic::load_default().expect("shipped weights load");
    let dir = Path::new(TESTDATA);
    let report = check_clip(
        &holistic,
        &dir.join("video/holistic_640x480.mjpeg"),
        &dir.join("golden_video/holistic_640x480.json"),
        Thresholds { max_mean_err: 0.02 },
        0.05,
        Some(50),
    )
    .expect("clip parity run");
    println!("{report}");
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "clip parity failures:\n{}",
        failures.join("\n")
    );
}

/// A frame on two cores (the right hand on its own thread, the nets that
/// run alone split across two threads) gives exactly the landmarks of the
/// one-thread pipeline, in static and tracking mode, on the photos and on a
/// stream of all of them.
#[test]
fn parallel_branches_give_the_same_landmarks() {
    use holistream::model::pipeline::Branches;
    use holistream::model::{Backend, Mode, Parts, ProcessOptions, TrackingState};
    let parallel = Holistic::load(Backend::Fused)
        .unwrap()
        .with_branches(Branches::Always);
    let serial = Holistic::load(Backend::Fused)
        .unwrap()
        .with_branches(Branches::Off);
    let (paths, images): (Vec<_>, Vec<_>) = photos().into_iter().unzip();
    let (mut states_p, mut states_s) = (TrackingState::default(), TrackingState::default());
    let mut hands_seen = 0;
    for mode in [Mode::Static, Mode::Tracking] {
        for (i, (image, path)) in images.iter().zip(&paths).enumerate() {
            let opts = ProcessOptions {
                mode,
                parts: Parts::default(),
                timestamp_us: (i as i64 + 1) * 33_333,
            };
            let a = parallel.process(image, &opts, &mut states_p).unwrap();
            let b = serial.process(image, &opts, &mut states_s).unwrap();
            let what = format!("{} {mode:?}", path.display());
            assert_eq!(a.pose, b.pose, "{what}: pose");
            assert_eq!(a.face, b.face, "{what}: face");
            assert_eq!(a.left_hand, b.left_hand, "{what}: left hand");
            assert_eq!(a.right_hand, b.right_hand, "{what}: right hand");
            hands_seen +=
                usize::from(!a.left_hand.is_empty()) + usize::from(!a.right_hand.is_empty());
        }
    }
    assert!(
        hands_seen >= 4,
        "the photos should show hands ({hands_seen})"
    );
}

/// The fused kernels against the generated burn code (the reference path)
/// through the whole pipeline: on every part of every photo the landmarks
/// move by at most 0.1% of the part's diagonal (mean), and presence agrees.
/// One part is held to 1% instead: faceapi4's left hand, whose crop is
/// decided by float rounding (the burn path is 1.8% from MediaPipe there,
/// ours 1.7%, and MediaPipe's own models move by 0.3–1.1% when the pose ROI
/// moves by one or two float steps); every other part is below 0.1%.
#[test]
fn fused_kernels_move_the_landmarks_by_under_a_tenth_of_a_percent() {
    use holistream::model::parity::{PARTS, landmark_errors};
    use holistream::model::pipeline::Branches;
    use holistream::model::{Backend, Mode, Parts, ProcessOptions, TrackingState};
    let fused = Holistic::load(Backend::Fused)
        .unwrap()
        .with_branches(Branches::Off);
    let burn = Holistic::load(Backend::Burn)
        .unwrap()
        .with_branches(Branches::Off);
    let mut compared = 0;
    for (path, image) in photos() {
        let opts = ProcessOptions {
            mode: Mode::Static,
            parts: Parts::default(),
            timestamp_us: 0,
        };
        let a = fused
            .process(&image, &opts, &mut TrackingState::default())
            .unwrap();
        let b = burn
            .process(&image, &opts, &mut TrackingState::default())
            .unwrap();
        let xy = |r: &holistream::model::HolisticResult| -> [Vec<[f32; 2]>; 4] {
            [
                r.pose.iter().map(|l| [l.x, l.y]).collect(),
                r.face.iter().map(|l| [l.x, l.y]).collect(),
                r.left_hand.iter().map(|l| [l.x, l.y]).collect(),
                r.right_hand.iter().map(|l| [l.x, l.y]).collect(),
            ]
        };
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        for ((part, f), r) in PARTS.iter().zip(xy(&a)).zip(xy(&b)) {
            assert_eq!(
                f.is_empty(),
                r.is_empty(),
                "{name} {part}: presence differs"
            );
            if r.is_empty() {
                continue;
            }
            let (mean, max) = landmark_errors(&r, &f, image.width(), image.height());
            let bound = if name == "faceapi4" && *part == "left_hand" {
                0.01
            } else {
                0.001
            };
            println!(
                "{name:14} {part:10} moved mean {:.4}% max {:.4}%",
                mean * 100.0,
                max * 100.0
            );
            assert!(
                mean <= bound,
                "{name} {part}: moved {:.4}% (bound {:.2}%)",
                mean * 100.0,
                bound * 100.0
            );
            compared += 1;
        }
    }
    assert!(compared >= 20, "compared {compared} parts");
}
