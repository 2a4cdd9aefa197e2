//! Scale-out figures: what the Redis hop costs per frame, and what a second
//! worker process buys.
//!
//! Runs in the dev profile (the one CI builds; no second, release build of
//! the nets) as well as under `cargo bench`:
//!
//! ```sh
//! RAYON_NUM_THREADS=1 nice -n 10 cargo test --workspace --bench scaleout   # dev profile
//! RAYON_NUM_THREADS=1 cargo bench --bench scaleout                         # release profile
//! SCALEOUT_SECONDS=15 SCALEOUT_CLIENTS=4 SCALEOUT_ROUNDS=3 SCALEOUT_FRAMES=40 …
//! ```
//!
//! `SCALEOUT_SMOKE=1` is CI's short run (tens of seconds, no figures worth
//! quoting): 3 warm-up and 5 measured frames, one round of 2 clients for
//! 3 s per phase. Whatever the mode, the run fails unless every frame got a
//! result (none lost, expired, trimmed or refused: the TTLs are a minute and
//! the submitters far fewer than the backlog, so any error is a bug), the
//! remote pool's counters add up (every job submitted was answered by a
//! result, none is still waiting, no result came for a job already
//! answered), nothing is left pending in the workers' group, and the second
//! worker process left the group when stopped:
//!
//! ```sh
//! SCALEOUT_SMOKE=1 cargo test --workspace --locked --bench scaleout
//! ```
//!
//! Needs `redis-server` on `PATH`. `RAYON_NUM_THREADS=1` gives every
//! pipeline (this process's and each worker process's) one core, the unit
//! that scale-out adds; the children inherit the environment.
//!
//! 1. **Hop cost**: `SCALEOUT_FRAMES` frames one at a time (no queueing), the
//!    same JPEG, alternately through the in-process pool (one worker thread)
//!    and the remote pool (one `holistream worker` process of one thread), in
//!    the same run. Per frame, the pool's overhead is the total time the
//!    submitter waited minus what the worker measured itself (decode +
//!    pipeline + serialise); the hop is the difference of the medians.
//! 2. **Throughput**: `SCALEOUT_CLIENTS` closed-loop submitters (each sends its
//!    next frame when the previous is answered) for `SCALEOUT_SECONDS`, against
//!    one worker process, then two (one thread each), `SCALEOUT_ROUNDS` times
//!    (the second process is started and stopped each round); results per
//!    second and latency p50/p99 of answered frames, each the median over the
//!    rounds, plus frames answered with an error.
//!
//! Real parts only: a `redis-server` spawned on a free port, the binary under
//! test as worker processes, the shipped models, a real photo.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use holistream::actors::remote::RemotePool;
use holistream::actors::{FrameJob, InferencePool};
use holistream::config::{ModelConfig, PoolConfig, RemotePoolConfig};
use holistream::metrics::Metrics;
use holistream::model::{Mode, Parts, TrackingState};
use holistream::stats::{median, percentile};

use support::fixtures::{env_or, test_jpeg};
use support::poll::wait_blocking;
use support::redis_server::{RedisServer, consumers, pending};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

impl Killed {
    /// SIGTERM and wait: a worker finishes its job and leaves the group, so
    /// the next phase starts with no job pending on a dead consumer.
    fn stop(mut self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { kill(self.0.id() as i32, 15) };
        wait_blocking(
            Duration::from_secs(30),
            "the worker to stop on SIGTERM",
            || self.0.try_wait().ok().flatten().is_some(),
        );
    }
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
    wait_blocking(Duration::from_secs(180), "worker ready", || {
        consumers(url).contains(&consumer)
    });
    Killed(child)
}

fn job(seq: u32, jpeg: &Bytes) -> FrameJob {
    FrameJob {
        session: uuid::Uuid::nil(),
        conn: 1,
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

/// One frame through `pool`: (what the submitter waited, what the pool added
/// to the worker's own decode + pipeline + serialise), ms.
async fn one_frame(pool: &InferencePool, jpeg: &Bytes, seq: u32) -> (f64, f64) {
    let t = Instant::now();
    let done = pool.submit(job(seq, jpeg)).await;
    let waited = t.elapsed().as_secs_f64() * 1e3;
    let out = done
        .outcome
        .unwrap_or_else(|e| panic!("frame {seq} failed: {e}"));
    let worked = out.timings.decode_ms + out.timings.infer_ms + out.timings.serialize_ms;
    (waited, waited - worked)
}

struct Load {
    results: usize,
    errors: usize,
    latencies: Vec<f64>,
    /// The workers' own pipeline time per frame: grows when the worker
    /// processes have fewer free cores than pipelines.
    infer_ms: Vec<f64>,
    seconds: f64,
}

/// `clients` closed-loop submitters for `seconds`.
async fn closed_loop(pool: &RemotePool, jpeg: &Bytes, clients: u32, seconds: f64) -> Load {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let runs = (0..clients).map(|c| async move {
        let (mut ok, mut err, mut lat, mut infer) = (0, 0, Vec::new(), Vec::new());
        let mut seq = c * 1_000_000;
        while Instant::now() < end {
            seq += 1;
            let t = Instant::now();
            let done = pool.submit(job(seq, jpeg)).await;
            match done.outcome {
                Ok(out) => {
                    ok += 1;
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    infer.push(out.timings.infer_ms);
                }
                Err(_) => err += 1,
            }
        }
        (ok, err, lat, infer)
    });
    let mut load = Load {
        results: 0,
        errors: 0,
        latencies: Vec::new(),
        infer_ms: Vec::new(),
        seconds: 0.0,
    };
    for (ok, err, lat, infer) in futures_util::future::join_all(runs).await {
        load.results += ok;
        load.errors += err;
        load.latencies.extend(lat);
        load.infer_ms.extend(infer);
    }
    load.seconds = started.elapsed().as_secs_f64();
    load.latencies.sort_by(f64::total_cmp);
    load
}

fn main() {
    let smoke = std::env::var("SCALEOUT_SMOKE").is_ok_and(|v| v == "1");
    let seconds: f64 = env_or("SCALEOUT_SECONDS", if smoke { 3.0 } else { 15.0 });
    let clients: u32 = env_or("SCALEOUT_CLIENTS", if smoke { 2 } else { 4 });
    let frames: u32 = env_or("SCALEOUT_FRAMES", if smoke { 5 } else { 40 });
    let rounds: u32 = env_or("SCALEOUT_ROUNDS", if smoke { 1 } else { 3 });
    let started = Instant::now();
    let profile = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    println!(
        "scaleout bench{}: {profile} profile, RAYON_NUM_THREADS={}, {} cores, load average {}",
        if smoke { " (smoke)" } else { "" },
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "(unset: one per core)".into()),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let jpeg = Bytes::from(test_jpeg());
    let redis = RedisServer::spawn();
    let url = redis.url();

    rt.block_on(async {
        // 1. Hop cost, one frame at a time, the two pools alternately.
        let local = InferencePool::start(
            &PoolConfig {
                workers: 1,
                job_ttl_ms: 60_000,
                stall_deadline_ms: 60_000,
                ..PoolConfig::default()
            },
            &ModelConfig::default(),
            Metrics::new(),
        )
        .await
        .expect("local pool");
        let w1 = spawn_worker(&url, "bench-w1");
        let remote_cfg = RemotePoolConfig {
            job_ttl_ms: 60_000,
            reply_timeout_ms: 60_000,
            ..RemotePoolConfig::default()
        };
        let mut cfg = PoolConfig {
            kind: holistream::config::PoolKind::Redis,
            remote: remote_cfg.clone(),
            ..PoolConfig::default()
        };
        cfg.remote.redis_url = Some(url.clone());
        let remote = InferencePool::start(&cfg, &ModelConfig::default(), Metrics::new())
            .await
            .expect("remote pool");
        for seq in 0..3 {
            // Warm-up: first passes allocate.
            one_frame(&local, &jpeg, seq).await;
            one_frame(&remote, &jpeg, seq).await;
        }
        let (mut local_total, mut local_over) = (Vec::new(), Vec::new());
        let (mut remote_total, mut remote_over) = (Vec::new(), Vec::new());
        for seq in 0..frames {
            let (t, o) = one_frame(&local, &jpeg, seq).await;
            local_total.push(t);
            local_over.push(o);
            let (t, o) = one_frame(&remote, &jpeg, seq).await;
            remote_total.push(t);
            remote_over.push(o);
        }
        local.shutdown().await;
        remote.shutdown().await;
        drop(local);
        let (lo, ro) = (median(&mut local_over), median(&mut remote_over));
        println!("hop cost, {frames} frames one at a time, alternating (medians, ms):");
        println!(
            "  in-process pool, 1 thread   total {:7.1}  beyond the worker's own work {lo:6.2}",
            median(&mut local_total)
        );
        println!(
            "  remote pool, 1 worker x 1   total {:7.1}  beyond the worker's own work {ro:6.2}",
            median(&mut remote_total)
        );
        println!("  Redis hop per frame         {:6.2}", ro - lo);

        // 2. Throughput with 1, then 2 worker processes, `rounds` times.
        let pool = RemotePool::start(&remote_cfg, Some(&url), Metrics::new())
            .await
            .expect("remote pool");
        let mut one = Vec::new();
        let mut two = Vec::new();
        for round in 0..rounds {
            one.push(closed_loop(&pool, &jpeg, clients, seconds).await);
            let name = format!("bench-w2-{round}");
            let w2 = spawn_worker(&url, &name);
            two.push(closed_loop(&pool, &jpeg, clients, seconds).await);
            w2.stop();
            // A clean stop finishes the job held and leaves the group.
            let left = consumers(&url);
            assert!(
                !left.contains(&format!("{name}-0")),
                "stopped worker {name} still in the group: {left:?}"
            );
        }
        // The invariants, in every mode: each frame of each phase got a
        // result, and the pool's books balance.
        let phases = one.iter().map(|l| ("1 worker", l));
        for (phase, load) in phases.chain(two.iter().map(|l| ("2 workers", l))) {
            let (errors, results) = (load.errors, load.results);
            assert_eq!(errors, 0, "{phase}: {errors} frames answered with an error");
            assert!(results > 0, "{phase}: no result in {:.1} s", load.seconds);
        }
        let stats = pool.stats();
        let failed = [stats.lost, stats.expired, stats.trimmed, stats.refused];
        assert_eq!(failed, [0; 4], "remote pool: {stats:?}");
        assert_eq!((stats.late, stats.in_flight), (0, 0), "remote pool: {stats:?}");
        assert_eq!(stats.submitted, stats.results, "remote pool: {stats:?}");
        let answered: usize = one.iter().chain(&two).map(|l| l.results).sum();
        assert_eq!(stats.results as usize, answered, "remote pool: {stats:?}");
        assert_eq!(pending(&url), 0, "jobs left pending in the workers' group");
        pool.shutdown().await;
        println!(
            "throughput, {clients} closed-loop clients, {seconds} s per phase, median of {rounds} rounds:"
        );
        for (name, loads) in [("1 worker process ", &one), ("2 worker processes", &two)] {
            let rate = median(&mut Vec::from_iter(
                loads.iter().map(|l| l.results as f64 / l.seconds),
            ));
            let p50 = median(&mut Vec::from_iter(
                loads.iter().map(|l| percentile(&mut l.latencies.clone(), 0.5)),
            ));
            let p99 = median(&mut Vec::from_iter(
                loads.iter().map(|l| percentile(&mut l.latencies.clone(), 0.99)),
            ));
            let errors: usize = loads.iter().map(|l| l.errors).sum();
            let infer = median(&mut Vec::from_iter(
                loads.iter().flat_map(|l| l.infer_ms.clone()),
            ));
            let each: Vec<String> = loads
                .iter()
                .map(|l| format!("{:.2}", l.results as f64 / l.seconds))
                .collect();
            println!(
                "  {name}  {rate:6.2} results/s  p50 {p50:7.1} ms  p99 {p99:7.1} ms  errors {errors}  pipeline {infer:5.1} ms/frame  (rounds: {})",
                each.join(", ")
            );
        }
        // Each round's two phases are adjacent in time, so their ratio is
        // the least disturbed by other work on a shared machine.
        let ratios: Vec<f64> = one
            .iter()
            .zip(&two)
            .map(|(a, b)| (b.results as f64 / b.seconds) / (a.results as f64 / a.seconds))
            .collect();
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "  2 vs 1 worker processes, same round: median {:.2}x  (rounds: {})",
            median(&mut ratios.clone()),
            each.join(", ")
        );
        drop(w1);
    });
    // The machine may be shared: its load says how many cores were free.
    println!(
        "load average at the end: {}; {:.1} s in all; no frame lost, expired or trimmed",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim(),
        started.elapsed().as_secs_f64()
    );
}
