//! Parity with MediaPipe Holistic 0.10.14 on the shared test photos: what CI
//! runs. It fails when any image misses a threshold (presence disagrees, or a
//! part's mean error exceeds 2% of its diagonal); see `holistream parity`.

use holistream::model::Holistic;
use holistream::model::parity::{Thresholds, check_clip, check_dir};
use std::path::Path;

const TESTDATA: &str = "../shared/testdata";

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

/// The right hand on its own thread gives exactly the landmarks of the
/// one-thread pipeline, in static and tracking mode, on the photos and on a
/// stream of all of them.
#[test]
fn parallel_branches_give_the_same_landmarks() {
    use holistream::model::pipeline::Branches;
    use holistream::model::{Backend, Mode, Parts, ProcessOptions, TrackingState, decode_image};
    let parallel = Holistic::load(Backend::Fused)
        .unwrap()
        .with_branches(Branches::Always);
    let serial = Holistic::load(Backend::Fused)
        .unwrap()
        .with_branches(Branches::Off);
    let mut paths: Vec<_> = std::fs::read_dir(Path::new(TESTDATA).join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    let images: Vec<_> = paths
        .iter()
        .map(|p| decode_image(&std::fs::read(p).unwrap()).unwrap())
        .collect();
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
