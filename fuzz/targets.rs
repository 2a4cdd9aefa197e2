//! What each fuzz target checks on one input, in one file that both the
//! cargo-fuzz binaries (`fuzz_targets/`, nightly) and the stable regression
//! test over the committed corpora (`tests/fuzz_corpus.rs`, CI) include, so
//! CI runs exactly what the fuzzer ran.
//!
//! Each returns on any input; a panic is a finding. Besides not panicking,
//! each checks what the server relies on from the function.

#![allow(dead_code)] // each fuzz binary uses one target

use holistream::actors::protocol::{ControlLimits, ControlMessage, parse_control, parse_frame};
use holistream::model::image_input::{DecodeLimits, ImageInputError, decode_image};

/// The targets by name: the folders of `fuzz/corpus/` and `fuzz/regressions/`.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("frame_header", frame_header),
    ("control_json", control_json),
    ("jpeg_decode", jpeg_decode),
];

/// The binary frame header (`parse_frame`): an accepted message has a finite
/// capture time and a payload that starts like a JPEG, and re-encodes to the
/// same bytes (nothing is lost or invented between the client's header and
/// the one echoed back).
pub fn frame_header(data: &[u8]) {
    if let Ok((header, jpeg)) = parse_frame(data) {
        assert!(header.capture_ts.is_finite());
        assert!(jpeg.starts_with(&[0xFF, 0xD8]));
        assert_eq!(header.encode(jpeg), data);
    }
}

/// The limits the control target parses against (the server's defaults).
const LIMITS: ControlLimits = ControlLimits {
    max_fps: 30,
    max_people: 6,
};

/// A client's control text (`parse_control`): an accepted fps is within
/// 1..=cap and an accepted people within 1..=max_people. Text frames reach
/// it as UTF-8 (the WebSocket layer checks).
pub fn control_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ControlMessage::Config { fps, people, .. }) = parse_control(text, LIMITS) {
        if let Some(fps) = fps {
            assert!((1..=LIMITS.max_fps).contains(&fps), "accepted fps {fps}");
        }
        if let Some(people) = people {
            assert!(
                (1..=LIMITS.max_people).contains(&people),
                "accepted people {people}"
            );
        }
    }
}

/// A frame's image (`decode_image`, what an inference worker runs): an
/// accepted image is within the default limits, and no decoder panicked
/// (`decode_image` catches panics so that the worker lives, and says so).
pub fn jpeg_decode(data: &[u8]) {
    match decode_image(data) {
        Ok(image) => {
            let (w, h) = image.dimensions();
            assert!(
                w > 0 && h > 0 && DecodeLimits::default().admits(w, h),
                "{w}x{h}"
            );
        }
        Err(ImageInputError::DecoderPanicked) => panic!("a decoder panicked (caught)"),
        Err(_) => {}
    }
}
