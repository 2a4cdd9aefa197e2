//! Scale-out figures: what the Redis hop costs per frame, and what a second
//! worker process buys.
//!
//! ```sh
//! cargo bench --bench scaleout            # needs redis-server on PATH
//! SCALEOUT_SECONDS=20 SCALEOUT_CLIENTS=4 cargo bench --bench scaleout
//! ```
//!
//! 1. **Hop cost**: one frame at a time (no queueing), the same JPEG, through
//!    the in-process pool with one worker thread, then through the remote pool
//!    with one `holistream worker` process of one thread. The difference of the
//!    medians is what Redis (XADD, XREADGROUP, result XADD, XREAD) adds.
//! 2. **Throughput**: `SCALEOUT_CLIENTS` closed-loop submitters (each sends its
//!    next frame when the previous is answered) for `SCALEOUT_SECONDS`, against
//!    one worker process, then two (one thread each): results per second and
//!    latency p50/p99 of answered frames, plus frames answered with an error.
//!
//! Real parts only: a `redis-server` spawned on a free port, the binary under
//! test as worker processes, the shipped models, a real photo.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use holistream::actors::remote::{JOBS_STREAM, RemotePool, RemotePoolConfig};
use holistream::actors::{FrameJob, InferencePool, PoolConfig};
use holistream::http::Metrics;
use holistream::model::{Mode, Parts, TrackingState};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn poll(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_redis() -> (Killed, String) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    let url = format!("redis://127.0.0.1:{port}/");
    let client = redis::Client::open(url.as_str()).unwrap();
    poll("redis", Duration::from_secs(10), || {
        client
            .get_connection_with_timeout(Duration::from_millis(200))
            .is_ok()
    });
    (Killed(child), url)
}

fn consumers(url: &str) -> Vec<String> {
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    let info: redis::RedisResult<redis::streams::StreamInfoConsumersReply> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(JOBS_STREAM)
        .arg("workers")
        .query(&mut con);
    info.map(|i| i.consumers.into_iter().map(|c| c.name).collect())
        .unwrap_or_default()
}

fn spawn_worker(url: &str, name: &str) -> Killed {
    let child = Command::new(env!("CARGO_BIN_EXE_holistream"))
        .args(["worker", "--name", name, "--workers", "1"])
        .env("REDIS_URL", url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning a worker");
    let consumer = format!("{name}-0");
    poll("worker ready", Duration::from_secs(180), || {
        consumers(url).contains(&consumer)
    });
    Killed(child)
}

fn jpeg() -> Bytes {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for p in [
        root.join("tests/fixtures/grace_hopper.jpg"),
        root.join("../shared/testdata/images/grace_hopper.jpg"),
    ] {
        if let Ok(b) = std::fs::read(&p) {
            return Bytes::from(b);
        }
    }
    panic!("grace_hopper.jpg not found");
}

fn job(seq: u32, jpeg: &Bytes) -> FrameJob {
    FrameJob {
        session: uuid::Uuid::nil(),
        conn: 1,
        seq,
        capture_ts: 0.0,
        arrived: Instant::now(),
        jpeg: jpeg.clone(),
        parts: Parts::default(),
        mode: Mode::Static,
        timestamp_us: 0,
        tracking: TrackingState::default(),
        starved: Duration::ZERO,
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Submits `n` frames one after the other; latencies in ms.
async fn sequential(pool: &InferencePool, jpeg: &Bytes, n: u32) -> Vec<f64> {
    let mut lat = Vec::new();
    for seq in 0..n {
        let t = Instant::now();
        let done = pool.submit(job(seq, jpeg)).await;
        assert!(
            done.outcome.is_ok(),
            "frame failed: {:?}",
            done.outcome.err()
        );
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    lat
}

struct Load {
    results: usize,
    errors: usize,
    latencies: Vec<f64>,
    seconds: f64,
}

/// `clients` closed-loop submitters for `seconds`.
async fn closed_loop(pool: &RemotePool, jpeg: &Bytes, clients: u32, seconds: f64) -> Load {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let runs = (0..clients).map(|c| async move {
        let (mut ok, mut err, mut lat) = (0, 0, Vec::new());
        let mut seq = c * 1_000_000;
        while Instant::now() < end {
            seq += 1;
            let t = Instant::now();
            let done = pool.submit(job(seq, jpeg)).await;
            if done.outcome.is_ok() {
                ok += 1;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            } else {
                err += 1;
            }
        }
        (ok, err, lat)
    });
    let mut load = Load {
        results: 0,
        errors: 0,
        latencies: Vec::new(),
        seconds: 0.0,
    };
    for (ok, err, lat) in futures_util::future::join_all(runs).await {
        load.results += ok;
        load.errors += err;
        load.latencies.extend(lat);
    }
    load.seconds = started.elapsed().as_secs_f64();
    load.latencies.sort_by(f64::total_cmp);
    load
}

fn main() {
    let seconds: f64 = std::env::var("SCALEOUT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15.0);
    let clients: u32 = std::env::var("SCALEOUT_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let frames: u32 = std::env::var("SCALEOUT_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let jpeg = jpeg();
    let (_redis, url) = spawn_redis();

    rt.block_on(async {
        // 1. Hop cost, one frame at a time.
        let local = InferencePool::start(
            &PoolConfig {
                workers: 1,
                job_ttl_ms: 60_000,
                stall_deadline_ms: 60_000,
                ..PoolConfig::default()
            },
            Metrics::new(),
        )
        .await
        .expect("local pool");
        let _ = sequential(&local, &jpeg, 3).await; // warm-up
        let local_lat = sequential(&local, &jpeg, frames).await;
        local.shutdown().await;
        drop(local);

        let w1 = spawn_worker(&url, "bench-w1");
        let remote_cfg = RemotePoolConfig {
            job_ttl_ms: 60_000,
            ..RemotePoolConfig::default()
        };
        let mut cfg = PoolConfig {
            kind: holistream::actors::remote::PoolKind::Redis,
            remote: remote_cfg.clone(),
            ..PoolConfig::default()
        };
        cfg.remote.redis_url = Some(url.clone());
        let remote = InferencePool::start(&cfg, Metrics::new())
            .await
            .expect("remote pool");
        let _ = sequential(&remote, &jpeg, 3).await;
        let remote_lat = sequential(&remote, &jpeg, frames).await;
        remote.shutdown().await;

        println!("hop cost, {frames} frames one at a time (ms):");
        println!(
            "  in-process pool, 1 thread      p50 {:7.1}  p99 {:7.1}",
            pct(&local_lat, 0.5),
            pct(&local_lat, 0.99)
        );
        println!(
            "  remote pool, 1 worker x 1      p50 {:7.1}  p99 {:7.1}",
            pct(&remote_lat, 0.5),
            pct(&remote_lat, 0.99)
        );
        println!(
            "  Redis hop (difference of p50)  {:7.1}",
            pct(&remote_lat, 0.5) - pct(&local_lat, 0.5)
        );

        // 2. Throughput with 1, then 2 worker processes.
        let pool = RemotePool::start(&remote_cfg, Some(&url), Metrics::new())
            .await
            .expect("remote pool");
        let one = closed_loop(&pool, &jpeg, clients, seconds).await;
        let w2 = spawn_worker(&url, "bench-w2");
        let two = closed_loop(&pool, &jpeg, clients, seconds).await;
        pool.shutdown().await;
        println!("throughput, {clients} closed-loop clients, {seconds} s each:");
        for (name, l) in [("1 worker process ", &one), ("2 worker processes", &two)] {
            println!(
                "  {name}  {:6.2} results/s  p50 {:7.1} ms  p99 {:7.1} ms  errors {}",
                l.results as f64 / l.seconds,
                pct(&l.latencies, 0.5),
                pct(&l.latencies, 0.99),
                l.errors
            );
        }
        drop((w1, w2));
    });
}
