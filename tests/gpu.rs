//! The GPU path (`--features wgpu`): the Holistic pipeline on burn's wgpu
//! device against MediaPipe's goldens, and a served pool batching frames
//! across sessions. Compiled only into a wgpu build: `.ci/run` builds one
//! and runs this file (with `tests/batching.rs`) on Mesa's lavapipe, a CPU
//! implementation of Vulkan; a machine with a GPU runs the same (see
//! `benches/gpu_check.sh`).
#![cfg(feature = "wgpu")]

mod support;

use std::time::Duration;

use holistream::commands::parity::{Thresholds, check_goldens};
use holistream::model::{Backend, Holistic};
use holistream_nets::BurnNets;
use support::fixtures::{jpeg_640x480, shared_testdata};
use support::http::{login, metric_value, metrics_text};
use support::server::{TestServer, test_config};
use support::ws::{frame, next_answer, open_session, send};

/// The nets of a wgpu build are on the wgpu device, not burn's CPU backend.
#[test]
fn the_nets_run_on_the_wgpu_device() {
    let nets = BurnNets::load_default_device().expect("nets load on the wgpu device");
    let device = format!("{:?}", nets.device());
    assert!(device.to_lowercase().contains("wgpu"), "device {device}");
    assert_eq!(Backend::default_for_build(), Backend::Burn);
    assert!(Backend::Burn.batches());
}

/// The ten photos of `../shared/testdata` through the pipeline on the GPU
/// device: presence as MediaPipe's, each part's mean error at most 2% of its
/// diagonal (the CPU path's thresholds, `holistream parity`).
#[test]
fn photos_on_the_gpu_match_mediapipe() {
    let dir = shared_testdata();
    let holistic = Holistic::load(Backend::Burn).expect("nets load on the wgpu device");
    let report = check_goldens(
        &holistic,
        &dir.join("images"),
        &dir.join("golden"),
        Thresholds { max_mean_err: 0.02 },
    )
    .expect("parity run");
    println!("{report}");
    assert_eq!(report.images.len(), 10, "the photos of ../shared/testdata");
    let failures = report.failures();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Four sessions at once into a pool of four workers batching by four: every
/// frame answered with landmarks, and `/metrics` shows batches of more than
/// one frame.
#[actix_web::test]
async fn a_served_pool_batches_frames_across_sessions() {
    const PASSWORD: &str = "gpu-batching-test";
    const SESSIONS: usize = 4;
    const FRAMES: u32 = 2;
    let mut c = test_config(PASSWORD);
    c.pool.workers = SESSIONS;
    c.pool.max_batch = Some(SESSIONS);
    // Company for the first frame of a batch: the four clients send at
    // about the same time, not within a GPU's few ms.
    c.pool.max_batch_wait_ms = 200;
    // A software GPU takes seconds a batch.
    c.pool.stall_deadline_ms = 120_000;
    c.pool.job_ttl_ms = 120_000;
    let server = TestServer::start(c).await;
    let cookie = login(&server, PASSWORD).await;
    let jpegs = [
        "obama.jpg",
        "grace_hopper.jpg",
        "astronaut.png",
        "obama.jpg",
    ];
    let mut conns = Vec::new();
    for _ in 0..SESSIONS {
        conns.push(open_session(&server, &cookie).await);
    }
    for seq in 0..FRAMES {
        for (conn, name) in conns.iter_mut().zip(jpegs) {
            send(conn, frame(seq, seq as f64, &jpeg_640x480(name))).await;
        }
        // Every connection read at once: one left unread misses the
        // server's pings and is closed.
        let answers = futures_util::future::join_all(
            conns
                .iter_mut()
                .map(|conn| next_answer(conn, Duration::from_secs(300))),
        )
        .await;
        for r in answers {
            assert_eq!(r["type"], "result", "{r}");
            assert_eq!(r["seq"], seq, "{r}");
            assert_eq!(r["pose"].as_array().map(Vec::len), Some(33), "{r}");
        }
    }
    let text = metrics_text(&server).await;
    let batches = metric_value(&text, "holistream_inference_batch_frames_count").unwrap_or(0.0);
    let frames = metric_value(&text, "holistream_inference_batch_frames_sum").unwrap_or(0.0);
    eprintln!("{frames} frames in {batches} batches");
    assert_eq!(
        frames,
        f64::from(FRAMES) * SESSIONS as f64,
        "every frame in a batch"
    );
    assert!(
        batches < frames,
        "no batch held more than one frame ({frames} frames in {batches} batches)"
    );
}
