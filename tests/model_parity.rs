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
