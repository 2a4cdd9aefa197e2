//! The shipped weights load and run, and bad input gives a typed error, never
//! a panic, with bounded memory.

use holistream::model::{
    Holistic, ImageInputError, Mode, Parts, ProcessOptions, TrackingState, decode_image,
};
use image::RgbImage;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

#[test]
fn shipped_weights_load_and_find_a_person() {
    let holistic = Holistic::load_default().expect("shipped weights load");
    let image = decode_image(&fixture("obama.jpg")).unwrap();
    let opts = ProcessOptions {
        people: 1,
        mode: Mode::Static,
        parts: Parts::default(),
        timestamp_us: 0,
    };
    let r = holistic
        .process(&image, &opts, &mut TrackingState::default())
        .unwrap();
    assert_eq!(r.pose.len(), 33);
    assert_eq!(r.face.len(), 468);
    // The nose (pose 0) is inside the face's landmark box.
    let (xs, ys): (Vec<f32>, Vec<f32>) = r.face.iter().map(|l| (l.x, l.y)).unzip();
    let inside = |v: f32, s: &[f32]| {
        s.iter().cloned().fold(f32::MAX, f32::min) < v
            && v < s.iter().cloned().fold(f32::MIN, f32::max)
    };
    assert!(inside(r.pose[0].x, &xs) && inside(r.pose[0].y, &ys));
}

#[test]
fn parts_switched_off_are_not_computed() {
    let holistic = Holistic::load_default().expect("shipped weights load");
    let image = decode_image(&fixture("obama.jpg")).unwrap();
    let opts = ProcessOptions {
        people: 1,
        mode: Mode::Static,
        parts: Parts {
            pose: true,
            face: false,
            hands: false,
        },
        timestamp_us: 0,
    };
    let r = holistic
        .process(&image, &opts, &mut TrackingState::default())
        .unwrap();
    assert_eq!(r.pose.len(), 33);
    assert!(r.face.is_empty() && r.left_hand.is_empty() && r.right_hand.is_empty());
    assert_eq!(r.timings.face_detection, 0.0);
    assert_eq!(r.timings.face_landmark, 0.0);
    assert_eq!(r.timings.hand_recrop + r.timings.hand_landmark, 0.0);
    // Face only: the pose runs (it locates the face) but is not returned.
    let opts = ProcessOptions {
        people: 1,
        parts: Parts {
            pose: false,
            face: true,
            hands: false,
        },
        ..opts
    };
    let r = holistic
        .process(&image, &opts, &mut TrackingState::default())
        .unwrap();
    assert!(r.pose.is_empty());
    assert_eq!(r.face.len(), 468);
}

#[test]
fn tracking_mode_skips_detection_once_a_pose_is_found() {
    let holistic = Holistic::load_default().expect("shipped weights load");
    let image = decode_image(&fixture("obama.jpg")).unwrap();
    let mut state = TrackingState::default();
    let opts = |i: i64| ProcessOptions {
        people: 1,
        mode: Mode::Tracking,
        parts: Parts::default(),
        timestamp_us: i * 33_333,
    };
    let first = holistic.process(&image, &opts(0), &mut state).unwrap();
    assert!(first.timings.pose_detection > 0.0);
    assert!(state.is_tracking_pose());
    let second = holistic.process(&image, &opts(1), &mut state).unwrap();
    assert_eq!(second.timings.pose_detection, 0.0);
    assert_eq!(second.pose.len(), 33);
    // A blank frame loses the pose; the next frame detects again.
    let blank = RgbImage::new(320, 240);
    let lost = holistic.process(&blank, &opts(2), &mut state).unwrap();
    assert!(lost.pose.is_empty());
    assert!(!state.is_tracking_pose());
}

#[test]
fn bad_images_are_typed_errors() {
    assert!(matches!(
        decode_image(b"GIF89a not really"),
        Err(ImageInputError::UnknownFormat)
    ));
    assert!(matches!(
        decode_image(b"plain text"),
        Err(ImageInputError::UnknownFormat)
    ));
    let jpeg = fixture("grace_hopper.jpg");
    assert!(matches!(
        decode_image(&jpeg[..jpeg.len() / 3]),
        Err(ImageInputError::Truncated)
    ));
    assert!(matches!(
        decode_image(&jpeg[..200]),
        Err(ImageInputError::Truncated)
    ));
    assert!(matches!(decode_image(&[]), Err(ImageInputError::Empty)));
}

/// Patches the frame size in the SOF0 header of a real JPEG.
fn with_jpeg_size(mut jpeg: Vec<u8>, w: u16, h: u16) -> Vec<u8> {
    let sof = jpeg
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("baseline JPEG");
    jpeg[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    jpeg
}

/// Patches the IHDR size of a real PNG (the CRC is left stale: the size check
/// must happen before anything else looks at the chunk).
fn with_png_size(mut png: Vec<u8>, w: u32, h: u32) -> Vec<u8> {
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    png
}

#[test]
fn oversized_and_zero_sized_images_are_refused_before_decoding() {
    let jpeg = fixture("grace_hopper.jpg");
    assert!(matches!(
        decode_image(&with_jpeg_size(jpeg.clone(), 20000, 20000)),
        Err(ImageInputError::TooLarge {
            width: 20000,
            height: 20000
        })
    ));
    let zero = decode_image(&with_jpeg_size(jpeg, 0, 0));
    assert!(
        matches!(
            zero,
            Err(ImageInputError::ZeroSize { .. }) | Err(ImageInputError::Decode(_))
        ),
        "{zero:?}"
    );

    let png = fixture("astronaut.png");
    let huge = decode_image(&with_png_size(png.clone(), 20000, 20000));
    assert!(
        matches!(
            huge,
            Err(ImageInputError::TooLarge { .. }) | Err(ImageInputError::Decode(_))
        ),
        "{huge:?}"
    );
    let zero = decode_image(&with_png_size(png, 0, 0));
    assert!(
        matches!(
            zero,
            Err(ImageInputError::ZeroSize { .. }) | Err(ImageInputError::Decode(_))
        ),
        "{zero:?}"
    );
}

#[test]
fn process_refuses_an_empty_image() {
    let holistic = Holistic::load_default().expect("shipped weights load");
    let opts = ProcessOptions {
        people: 1,
        mode: Mode::Static,
        parts: Parts::default(),
        timestamp_us: 0,
    };
    let err = holistic.process(&RgbImage::new(0, 0), &opts, &mut TrackingState::default());
    assert!(err.is_err());
}
