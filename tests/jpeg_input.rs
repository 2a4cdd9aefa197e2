//! JPEG input bounded by what a camera sends: the attack files of
//! `tests/fixtures/attack` (see its README) are refused from their headers,
//! before any decoder exists, with a typed error that says why; every real
//! photo and camera frame the project has still decodes; and over the
//! WebSocket the CMYK frame that used to kill an inference worker is
//! answered `bad_frame` by a worker that lives.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use holistream::commands::parity::split_mjpeg;
use holistream::model::image_input::{DecodeLimits, ImageInputError, decode_image_with};
use support::fixtures::*;
use support::http::*;
use support::server::{TestServer, test_config};
use support::ws::*;

fn attack(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/attack")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Both the camera limits (what the server uses) and the photo limits (the
/// hard cap, what `infer` uses).
const LIMITS: [DecodeLimits; 2] = [DecodeLimits::CAMERA, DecodeLimits::PHOTO];

// TooLarge, ImplausiblySmall, TooManyScans and UnsupportedColorSpace{4}
// come only from the marker walk, which runs before libjpeg is called: the
// error kind is the proof that nothing of the declared size was allocated.

#[test]
fn the_bombs_declaring_8192x4880_are_refused_as_too_large() {
    for name in ["baseline_8192x4880.jpg", "progressive_8192x4880.jpg"] {
        let bytes = attack(name);
        assert!(bytes.len() < 800, "{name}: {} bytes", bytes.len());
        for limits in LIMITS {
            let refused = decode_image_with(&bytes, &limits);
            assert!(
                matches!(
                    refused,
                    Err(ImageInputError::TooLarge {
                        width: 8192,
                        height: 4880
                    })
                ),
                "{name} under {limits:?}: {refused:?}"
            );
        }
    }
}

#[test]
fn the_same_bytes_declaring_1920x1080_are_refused_as_implausibly_small() {
    for (name, max_bytes) in [
        ("baseline_1920x1080.jpg", 200),
        ("progressive_1920x1080.jpg", 200),
    ] {
        let bytes = attack(name);
        for limits in LIMITS {
            match decode_image_with(&bytes, &limits) {
                Err(ImageInputError::ImplausiblySmall {
                    bytes,
                    min_bytes,
                    width: 1920,
                    height: 1080,
                }) => {
                    assert!(bytes < max_bytes, "{name}: {bytes} bytes of scan data");
                    // Both are 4:2:0: 48,600 blocks, at least 1 bit each.
                    assert!(min_bytes >= 48_600 / 8, "{name}: floor {min_bytes}");
                }
                other => panic!("{name} under {limits:?}: {other:?}"),
            }
        }
    }
}

#[test]
fn cmyk_is_a_typed_error_not_a_panic() {
    let bytes = attack("cmyk_8x8.jpg");
    for limits in LIMITS {
        let refused = decode_image_with(&bytes, &limits);
        assert!(
            matches!(
                refused,
                Err(ImageInputError::UnsupportedColorSpace { components: 4 })
            ),
            "{refused:?}"
        );
    }
}

/// Every JPEG and PNG file directly in `dir`, sorted; none when `dir` is
/// absent.
fn images_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "jpg" || e == "jpeg" || e == "png")
        })
        .collect();
    v.sort();
    v
}

fn mjpegs_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "mjpeg"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_real_photo_decodes_within_the_photo_limits() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut photos = images_in(&fixtures);
    assert!(photos.len() >= 2, "the in-repo photos: {photos:?}");
    // The shared test photos (up to 1920x1448) when the checkout has them.
    photos.extend(images_in(&shared_testdata().join("images")));
    for path in &photos {
        let bytes = std::fs::read(path).unwrap();
        let image = decode_image_with(&bytes, &DecodeLimits::PHOTO)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(image.width() > 0, "{}", path.display());
    }
    println!("{} photos decoded", photos.len());
}

#[test]
fn every_camera_frame_decodes_within_the_camera_limits() {
    // The frames the streaming tests and the load generator send.
    for name in ["obama.jpg", "grace_hopper.jpg"] {
        let jpeg = jpeg_640x480(name);
        let image = decode_image_with(&jpeg, &DecodeLimits::CAMERA).unwrap();
        assert_eq!(image.dimensions(), (640, 480), "{name}");
    }
    // MJPEG clips, camera frames all: in the repository, and the shared ones
    // when the checkout has them.
    let mut clips = mjpegs_in(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip"));
    clips.extend(mjpegs_in(&shared_testdata().join("video")));
    clips.extend(mjpegs_in(&shared_testdata().join("multi/video")));
    let mut frames = 0;
    for clip in &clips {
        let bytes = std::fs::read(clip).unwrap();
        for (i, jpeg) in split_mjpeg(&bytes).into_iter().enumerate() {
            decode_image_with(jpeg, &DecodeLimits::CAMERA)
                .unwrap_or_else(|e| panic!("{} frame {i}: {e}", clip.display()));
            frames += 1;
        }
    }
    println!("{frames} frames of {} clips decoded", clips.len());
}

const PASSWORD: &str = "jpeg-input-test-code";
const ANSWER: Duration = Duration::from_secs(30);
const FPS: u32 = 60;

#[actix_web::test]
async fn hostile_frames_are_answered_bad_frame_and_the_worker_lives() {
    let mut config = test_config(PASSWORD);
    config.session.max_fps = FPS;
    config.session.default_fps = FPS;
    config.pool.job_ttl_ms = 10_000;
    let server = TestServer::start(config).await;
    let cookie = login(&server, PASSWORD).await;
    let mut conn = open_session(&server, &cookie).await;

    let good = jpeg_640x480("obama.jpg");
    let frames: [(&str, Vec<u8>); 4] = [
        ("cmyk_8x8.jpg", attack("cmyk_8x8.jpg")),
        ("baseline_8192x4880.jpg", attack("baseline_8192x4880.jpg")),
        (
            "progressive_1920x1080.jpg",
            attack("progressive_1920x1080.jpg"),
        ),
        // The worker that answered them answers a real frame.
        ("a 640x480 frame", good.to_vec()),
    ];
    // One frame at a time, each at least one fps interval after the last:
    // the session's token bucket has refilled a token by then, so none is
    // dropped by the cap (which is not what this tests).
    let interval = Duration::from_secs_f64(1.0 / f64::from(FPS));
    let mut last_sent: Option<Instant> = None;
    for (seq, (what, jpeg)) in frames.iter().enumerate() {
        let seq = seq as u32 + 1;
        if let Some(t) = last_sent {
            actix_web::rt::time::sleep((t + interval).saturating_duration_since(Instant::now()))
                .await;
        }
        send(&mut conn, frame(seq, f64::from(seq), jpeg)).await;
        last_sent = Some(Instant::now());
        let answer = next_answer(&mut conn, ANSWER).await;
        let expected = if seq < 4 {
            ("error", Some("bad_frame"))
        } else {
            ("result", None)
        };
        assert_eq!(
            (
                answer["type"].as_str(),
                answer["code"].as_str(),
                answer["seq"].as_u64()
            ),
            (Some(expected.0), expected.1, Some(u64::from(seq))),
            "{what}: {answer}"
        );
    }

    let m = metrics_text(&server).await;
    assert_eq!(
        metric_sum(&m, "holistream_worker_restarts_total"),
        0.0,
        "{m}"
    );
    assert!(
        metric(&m, r#"holistream_ws_errors_total{code="bad_frame"}"#) >= 3.0,
        "{m}"
    );
}
