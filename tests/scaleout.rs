//! Scale-out over Redis Streams with real processes on loopback: a real
//! `redis-server`, `holistream serve --pool redis` gateways and `holistream
//! worker` processes (the binary under test), real WebSocket clients sending
//! a real JPEG, real models in the workers.
//!
//! - `gateways_and_workers_join_fail_and_come_back`: two gateways, two
//!   workers; clients on both gateways get results; SIGKILL of one worker
//!   mid-stream loses at most the frame it held and the clients go on;
//!   stopping every worker gives the clients typed errors, and a new worker
//!   brings results back.
//! - `a_burst_is_trimmed_not_queued`: more jobs than the workers can take at
//!   once; the jobs stream stays at its `max_backlog` and the trimmed jobs
//!   are answered `overloaded` and counted, none waits unanswered.
//!
//! Every wait polls a condition with a deadline. The clients send frames at a
//! fixed camera rate (15 fps), which is the load, not a wait.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use holistream::actors::remote::{JOBS_STREAM, RemotePool};
use holistream::actors::{FrameFailure, FrameJob};
use holistream::config::RemotePoolConfig;
use holistream::metrics::Metrics;
use holistream::model::{Mode, Parts, TrackingState};
use parking_lot::Mutex;

use support::fixtures::test_jpeg;
use support::http::login_at;
use support::poll::wait_for;
use support::process::{Served, spawn_worker, start_serve, worker_ready};
use support::redis_server::{RedisServer, consumers, pending_of};
use support::ws::{Seen, StreamingClient};

const PASSWORD: &str = "scale-out-test-code";
const GATEWAY_START: Duration = Duration::from_secs(60);

/// The tests of this file run one at a time: each starts several processes
/// that load models, and the machine may have two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A gateway: `holistream serve --pool redis` on a free loopback port.
async fn start_gateway(redis: &RedisServer, name: &str, dir: &Path) -> Served {
    let env = [
        ("REDIS_URL", redis.url()),
        ("HOLISTREAM_PASSWORD", PASSWORD.into()),
        ("HOLISTREAM_GATEWAY_ID", name.into()),
    ];
    start_serve(name, None, &["--pool", "redis"], &env, dir, GATEWAY_START).await
}

/// A client logged in on `base`, streaming at 15 fps.
async fn stream_on(base: &str, jpeg: Bytes) -> StreamingClient {
    let cookie = login_at(base, PASSWORD).await;
    StreamingClient::open(base, &cookie, jpeg)
        .await
        .expect("WebSocket upgrade")
}

#[actix_web::test]
async fn gateways_and_workers_join_fail_and_come_back() {
    let _serial = ONE_AT_A_TIME.lock();
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::spawn();
    let jpeg = Bytes::from(test_jpeg());

    // The workers load their models while the gateways start (they need no
    // worker to start: jobs wait for one).
    let mut w1 = spawn_worker(&redis.url(), "w1", dir.path());
    let mut w2 = spawn_worker(&redis.url(), "w2", dir.path());
    let g1 = start_gateway(&redis, "gw1", dir.path()).await;
    let g2 = start_gateway(&redis, "gw2", dir.path()).await;
    worker_ready(&mut w1, &redis.url()).await;
    worker_ready(&mut w2, &redis.url()).await;

    // Clients on both gateways get results, with landmarks from the real model.
    let c1 = stream_on(&g1.base, jpeg.clone()).await;
    let c2 = stream_on(&g2.base, jpeg.clone()).await;
    let t0 = Instant::now();
    wait_for(Duration::from_secs(60), "6 results on each gateway", || {
        c1.results_since(t0) >= 6 && c2.results_since(t0) >= 6
    })
    .await;
    for c in [&c1, &c2] {
        for s in c.all() {
            if let Seen::Result { pose, .. } = s {
                assert_eq!(pose, 33, "grace_hopper.jpg has a pose: {:?}", c.all());
            }
        }
    }

    // SIGKILL one worker mid-job (its consumer holds a delivered, unanswered
    // job): it held at most one (one thread, COUNT 1), so at most one frame
    // is lost; both clients go on.
    wait_for(Duration::from_secs(30), "w1 holding a job", || {
        pending_of(&redis.url(), "w1-0") == 1
    })
    .await;
    // Until now both workers were alive: none of their jobs may have been
    // taken over and answered `lost`, however long a forward pass took.
    for c in [&c1, &c2] {
        let errors = c.errors_since(t0);
        assert!(
            !errors.iter().any(|e| e == "lost"),
            "a live worker's job was answered lost: {errors:?}"
        );
    }
    let killed = Instant::now();
    w1.kill();
    wait_for(
        Duration::from_secs(60),
        "5 results on each gateway after the kill",
        || c1.results_since(killed) >= 5 && c2.results_since(killed) >= 5,
    )
    .await;
    // The job the killed worker held was taken over by the survivor
    // (XAUTOCLAIM after --claim-idle-ms), not left pending for ever.
    wait_for(Duration::from_secs(20), "w1's job taken over by w2", || {
        pending_of(&redis.url(), "w1-0") == 0
    })
    .await;
    let errors: Vec<String> = [&c1, &c2]
        .iter()
        .flat_map(|c| c.errors_since(killed))
        .collect();
    let lost = errors.iter().filter(|c| *c == "lost").count();
    assert!(
        lost <= 1,
        "more frames lost than the killed worker held: {errors:?}"
    );
    assert!(
        errors.iter().all(|c| c == "lost" || c == "expired"),
        "unexpected errors after the kill: {errors:?}"
    );

    // Stop every worker: clients get typed errors, not silence.
    let w2_status = w2.terminate(Duration::from_secs(20)).await;
    assert!(
        w2_status.success(),
        "worker w2 did not stop cleanly: {w2_status}\n{}",
        w2.log_text()
    );
    let stopped = Instant::now();
    // Errors on both, and long enough without a worker for a result to show
    // if one could still come.
    wait_for(
        Duration::from_secs(30),
        "typed errors on each gateway with no worker",
        || {
            c1.errors_since(stopped).len() >= 2
                && c2.errors_since(stopped).len() >= 2
                && stopped.elapsed() > Duration::from_secs(3)
        },
    )
    .await;
    for c in [&c1, &c2] {
        let errors = c.errors_since(stopped);
        assert!(
            errors.iter().all(|e| e == "expired" || e == "lost"),
            "errors without workers must be expired/lost: {errors:?}"
        );
        // The stopped worker answered its last job before it exited; the
        // gateway reads that answer within a few ms of `stopped`.
        assert_eq!(
            c.results_since(stopped + Duration::from_millis(500)),
            0,
            "results with no worker?"
        );
    }
    // The clean stop removed its consumer; the killed one stays until swept.
    assert!(!consumers(&redis.url()).contains(&"w2-0".to_string()));

    // A new worker brings results back on both gateways.
    let mut w3 = spawn_worker(&redis.url(), "w3", dir.path());
    worker_ready(&mut w3, &redis.url()).await;
    let resumed = Instant::now();
    wait_for(
        Duration::from_secs(60),
        "results again after a worker came back",
        || c1.results_since(resumed) >= 3 && c2.results_since(resumed) >= 3,
    )
    .await;

    let seen1 = c1.finish().await;
    let seen2 = c2.finish().await;
    assert!(!seen1.is_empty() && !seen2.is_empty());
    drop((g1, g2, w3));
}

fn frame_job(seq: u32, jpeg: &Bytes) -> FrameJob {
    FrameJob {
        session: uuid::Uuid::new_v4(),
        conn: u64::from(seq),
        seq,
        capture_ts: 0.0,
        arrived: Instant::now(),
        frame: holistream::model::FrameData::Jpeg(jpeg.clone()),
        parts: Parts::default(),
        mode: Mode::Static,
        timestamp_us: 0,
        people: 1,
        tracking: TrackingState::default(),
        starved: Duration::ZERO,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_trimmed_not_queued() {
    let _serial = ONE_AT_A_TIME.lock();
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::spawn();
    let jpeg = Bytes::from(test_jpeg());
    let mut worker = spawn_worker(&redis.url(), "wb", dir.path());
    worker_ready(&mut worker, &redis.url()).await;

    const BACKLOG: usize = 4;
    const BURST: u32 = 40;
    let cfg = RemotePoolConfig {
        gateway_id: Some("burst".into()),
        max_backlog: BACKLOG,
        // Long enough that the kept jobs are run, not expired.
        job_ttl_ms: 20_000,
        reply_timeout_ms: 5_000,
        ..Default::default()
    };
    let metrics = Metrics::new();
    let pool = RemotePool::start(&cfg, Some(&redis.url()), metrics.clone())
        .await
        .expect("starting the remote pool");

    // The whole burst at once: one worker thread can hold one job; the stream
    // keeps BACKLOG; the rest must be trimmed and answered.
    let answers =
        futures_util::future::join_all((1..=BURST).map(|seq| pool.submit(frame_job(seq, &jpeg))));
    let mut con = redis.con();
    let answers = tokio::time::timeout(Duration::from_secs(120), answers)
        .await
        .expect("every job of the burst answered");

    let len: usize = redis::cmd("XLEN").arg(JOBS_STREAM).query(&mut con).unwrap();
    // `MAXLEN ~` trims whole stream nodes; a JPEG entry fills a node alone,
    // so the bound holds to within one node.
    assert!(
        len <= BACKLOG + 1,
        "jobs stream holds {len} entries, backlog is {BACKLOG}"
    );

    let mut results = 0;
    let mut trimmed = 0;
    for done in &answers {
        match &done.outcome {
            Ok(out) => {
                results += 1;
                let v: serde_json::Value = serde_json::from_str(&out.json).unwrap();
                assert_eq!(v["type"], "result");
                assert_eq!(v["seq"], done.seq);
                assert_eq!(v["pose"].as_array().map(Vec::len), Some(33));
            }
            Err(FrameFailure::Overloaded) => {
                trimmed += 1;
                assert!(
                    done.tracking.is_some(),
                    "a trimmed job gives its state back"
                );
            }
            Err(other) => panic!(
                "job {} answered {other:?}; worker log:\n{}",
                done.seq,
                worker.log_text()
            ),
        }
    }
    assert_eq!(results + trimmed, BURST as usize);
    assert!(results >= 1, "the worker ran none of the burst");
    // At most the backlog, the job the worker holds, and one node of slack
    // escape trimming.
    assert!(
        trimmed >= BURST as usize - BACKLOG - 2,
        "only {trimmed} of {BURST} trimmed (results {results})"
    );
    let stats = pool.stats();
    assert_eq!(stats.trimmed as usize, trimmed);
    assert_eq!(stats.in_flight, 0);
    let text = metrics.render();
    assert!(
        text.contains(&format!(
            "holistream_remote_jobs_total{{outcome=\"trimmed\"}} {trimmed}"
        )),
        "{text}"
    );
    pool.shutdown().await;
}
