//! Parity of the pipeline on the in-repo public-domain data (`tests/fixtures`,
//! always present in a clone): the four photos against MediaPipe 0.10.14's
//! goldens, the clip in tracking mode against MediaPipe's tracking golden
//! (both made by `tests/fixtures/gen_golden.py`, the clip by `make_clip.py`),
//! and the fused kernels against the generated burn code (the reference) and
//! against themselves on two threads. They fail when any frame misses a
//! threshold (presence disagrees, or a part's mean error exceeds 2% of its
//! diagonal; see `holistream parity`).
//!
//! The extended parity over `../shared/testdata` (ten photos, hands among
//! them; a 150-frame clip with hard cuts) is `holistream parity
//! ../shared/testdata`, a step of `.ci/run` of its own: nothing here reads
//! outside the repository. CI runs this file again with the fused kernels
//! restricted to AVX2 and to the portable path (`HOLISTREAM_ISA`).

mod support;

use holistream::commands::parity::{
    BackendReport, Thresholds, check_clip, check_fused_against_burn, check_goldens, split_mjpeg,
};
use holistream::model::{Holistic, Mode};
use image::RgbImage;
use std::path::PathBuf;
use support::fixtures::fixtures;

/// MediaPipe's thresholds, as `holistream parity` applies them.
const THRESHOLDS: Thresholds = Thresholds { max_mean_err: 0.02 };

fn clip_path() -> PathBuf {
    fixtures().join("clip/obama_640x480.mjpeg")
}

fn clip_golden_path() -> PathBuf {
    fixtures().join("golden/clip/obama_640x480.json")
}

/// The photos beside the goldens (`tests/fixtures/*.jpg|png`, not the
/// subfolders), decoded, in name order.
fn photos() -> Vec<(String, RgbImage)> {
    let mut paths: Vec<_> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| e == "jpg" || e == "jpeg" || e == "png")
        })
        .collect();
    paths.sort();
    let photos: Vec<_> = paths
        .into_iter()
        .map(|p| {
            let image = holistream::model::decode_image(&std::fs::read(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_stem().unwrap().to_string_lossy().into_owned(), image)
        })
        .collect();
    assert_eq!(
        photos.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["astronaut", "camera", "grace_hopper", "obama"],
        "the public-domain photos of tests/fixtures"
    );
    photos
}

/// The clip's frames, decoded, named `clip#N`.
fn clip_frames() -> Vec<(String, RgbImage)> {
    let bytes = std::fs::read(clip_path()).unwrap();
    split_mjpeg(&bytes)
        .into_iter()
        .enumerate()
        .map(|(i, jpeg)| {
            let image = holistream::model::decode_image(jpeg).unwrap();
            (format!("clip#{i}"), image)
        })
        .collect()
}

#[test]
fn still_images_match_mediapipe() {
    let holistic = Holistic::load_default().expect("shipped weights load");
    let report = check_goldens(
        &holistic,
        &fixtures(),
        &fixtures().join("golden"),
        THRESHOLDS,
    )
    .expect("parity run");
    println!("{report}");
    assert_eq!(
        report.images.len(),
        4,
        "expected the four photos of tests/fixtures"
    );
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}

/// Tracking mode (ROI carried over, detection skipped, pose smoothing, face
/// and hand ROI tracking) over the whole clip: one scene without cuts, so
/// every frame is a regression check (see `check_clip` for why cuts are
/// not), decoded by libjpeg-turbo on MediaPipe's side, not by FFmpeg.
#[test]
fn tracking_mode_follows_mediapipe_on_the_clip() {
    let holistic = Holistic::load_default().expect("shipped weights load");
    let report = check_clip(
        &holistic,
        &clip_path(),
        &clip_golden_path(),
        THRESHOLDS,
        0.05,
        None,
    )
    .expect("clip parity run");
    println!("{report}");
    assert_eq!(report.frames, 45, "the clip's frames");
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "clip parity failures:\n{}",
        failures.join("\n")
    );
}

/// A frame on two cores (the right hand on its own thread, the nets that
/// run alone split across two threads) gives exactly the landmarks of the
/// one-thread pipeline, in static and tracking mode, on the photos and on
/// the clip (whose tracked right hand is the hands' part of the check).
#[test]
fn parallel_branches_give_the_same_landmarks() {
    use holistream::config::Branches;
    use holistream::model::{Backend, Parts, ProcessOptions, TrackingState};
    let parallel = Holistic::load(Backend::Fused)
        .unwrap()
        .with_branches(Branches::Always);
    let serial = Holistic::load(Backend::Fused)
        .unwrap()
        .with_branches(Branches::Off);
    let streams = [
        (Mode::Static, photos()),
        (Mode::Tracking, photos()),
        (Mode::Tracking, clip_frames()),
    ];
    let mut hands_seen = 0;
    for (mode, frames) in streams {
        let (mut states_p, mut states_s) = (TrackingState::default(), TrackingState::default());
        for (i, (name, image)) in frames.iter().enumerate() {
            let opts = ProcessOptions {
                people: 1,
                mode,
                parts: Parts::default(),
                timestamp_us: (i as i64 + 1) * 33_333,
            };
            let a = parallel.process(image, &opts, &mut states_p).unwrap();
            let b = serial.process(image, &opts, &mut states_s).unwrap();
            let what = format!("{name} {mode:?}");
            assert_eq!(a.pose, b.pose, "{what}: pose");
            assert_eq!(a.face, b.face, "{what}: face");
            assert_eq!(a.left_hand, b.left_hand, "{what}: left hand");
            assert_eq!(a.right_hand, b.right_hand, "{what}: right hand");
            hands_seen +=
                usize::from(!a.left_hand.is_empty()) + usize::from(!a.right_hand.is_empty());
        }
    }
    assert!(
        hands_seen >= 20,
        "the clip should show a tracked hand ({hands_seen})"
    );
}

fn assert_within_bounds(report: &BackendReport, min_compared: usize) {
    println!("{report}");
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{}:\n{}",
        report.label,
        failures.join("\n")
    );
    assert!(
        report.compared() >= min_compared,
        "{}: compared {} parts",
        report.label,
        report.compared()
    );
}

/// The fused kernels against the generated burn code (the reference path)
/// through the whole pipeline, on the instruction set this run has (CI runs
/// it again restricted to AVX2 and to portable, `HOLISTREAM_ISA`): on every
/// part of every photo the landmarks move by at most
/// `parity::FUSED_VS_BURN_MAX_MEAN` of the part's diagonal (mean), and on
/// the clip in tracking mode the pose and face by at most
/// `parity::FUSED_VS_BURN_TRACKING_MAX_MEAN`; presence agrees everywhere. Both
/// bounds are set from the spread measured between instruction sets (see
/// their comments).
#[test]
fn fused_kernels_move_the_landmarks_within_the_spread_between_instruction_sets() {
    // Pose and face of each photo.
    let stills = check_fused_against_burn(&photos(), Mode::Static).unwrap();
    assert_within_bounds(&stills, 8);
    // Pose and face of each frame, and the tracked right hand of most.
    let clip = check_fused_against_burn(&clip_frames(), Mode::Tracking).unwrap();
    assert_within_bounds(&clip, 2 * 45 + 20);
}
