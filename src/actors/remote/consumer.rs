//! The worker side of the remote pool: the threads of a `holistream worker`
//! process, each a consumer of the jobs stream, for gateways started with
//! `serve --pool redis`. Owns taking, leasing, running (through
//! [`run_frame`], as the in-process workers do) and answering jobs; the
//! encodings are `wire`'s, the command line and signals `commands::worker`'s.
//!
//! One process runs `--workers N` pipeline threads. Each thread owns its
//! model instance and a blocking Redis connection, and is one consumer
//! (`<worker name>-<i>`) of the group `workers` on `holistream:jobs`:
//!
//! 1. `XREADGROUP … COUNT 1 BLOCK` takes one job (so a thread holds at most
//!    one job: a killed process loses at most N frames);
//! 2. a job past its deadline (entry timestamp + `ttl_ms`, on Redis's clock)
//!    is not run: answered `expired`;
//! 3. otherwise decode, pipeline, serialise ([`run_frame`], as the
//!    in-process pool), then `XADD` the result to the gateway's result stream, `EXPIRE`
//!    it and `XACK` the job, in one `MULTI`;
//! 4. every second, `XGROUP CREATECONSUMER` keeps the thread listed in the
//!    group even while no job comes (Redis adds a consumer only when a read
//!    returns entries), and `XAUTOCLAIM` takes jobs left pending longer than
//!    `--claim-idle-ms` (a worker that died holding them): still within their
//!    deadline they are run, otherwise answered `lost`.
//!
//! A job's idle time in the group counts from its delivery, so a forward
//! pass slower than `--claim-idle-ms` would look like a dead worker's job
//! and be taken over (and answered `lost`) while its worker is still on it.
//! A lease thread per process therefore renews the jobs its threads hold
//! (`XCLAIM <own consumer> 0 <id> JUSTID`, every quarter of
//! `--claim-idle-ms`), so only the jobs of a process that stopped renewing
//! (killed, frozen, cut off from Redis) are ever taken over.
//!
//! The wire format is documented in [`super::wire`].
//!
//! Threads and not async tasks: the work is CPU-bound and each thread owns a
//! `Holistic`, which is `Send` but not `Sync`; a blocking connection per
//! thread keeps one job per consumer with no executor in between. Stopping:
//! ctrl-c or SIGTERM cancels a `CancellationToken`; each thread finishes the
//! job it holds, sees the token within `--block-ms`, and leaves the group.
//!
//! Must not know of sessions or HTTP: a job carries everything a thread needs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use tokio_util::sync::CancellationToken;

use super::wire::{EntryId, WireJob, WireOutcome, WireResult};
use super::{
    JOBS_STREAM, RESULTS_MAXLEN, RESULTS_TTL_S, WORKERS_GROUP, create_group_cmd, group_exists,
    results_stream,
};
use crate::actors::job::{FrameFailure, run_frame};
use crate::config::{DecodeLimits, Fault, ModelConfig, WorkerConfig};
use crate::model::{Holistic, ModelError};

/// Errors of starting the worker threads.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("the Redis URL is not valid: {0}")]
    RedisUrl(#[source] redis::RedisError),
    #[error("the worker configuration has no Redis URL")]
    NoRedisUrl,
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("loading the model for thread {thread} failed: {source}")]
    Model { thread: usize, source: ModelError },
    #[error("cannot spawn a worker thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// What each thread counts; logged when the process stops.
#[derive(Debug, Default)]
pub struct ConsumerCounters {
    pub done: AtomicU64,
    pub expired: AtomicU64,
    pub lost: AtomicU64,
    pub failed: AtomicU64,
    pub claimed: AtomicU64,
    pub malformed: AtomicU64,
}

/// Settings shared by the threads.
struct ConsumerContext {
    client: redis::Client,
    name: String,
    claim_idle: Duration,
    block: Duration,
    shutdown: CancellationToken,
    counters: ConsumerCounters,
    decode_limits: DecodeLimits,
    /// The nets and branch policy of every thread's model.
    model: ModelConfig,
    /// `(consumer, entry id)` of every job a thread of this process holds;
    /// renewed by [`lease_thread`].
    held: Mutex<BTreeSet<(String, String)>>,
}

/// Runs the worker threads until `shutdown` is cancelled (or every thread
/// ended), then waits for them to finish the jobs they hold.
pub fn serve_jobs(
    cfg: &WorkerConfig,
    model: &ModelConfig,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    let threads = cfg.threads;
    let name = cfg.name.clone().unwrap_or_else(default_name);
    let decode_limits = cfg.decode_limits()?;
    let url = cfg.redis_url.as_deref().ok_or(ConsumerError::NoRedisUrl)?;
    let client = redis::Client::open(url).map_err(ConsumerError::RedisUrl)?;
    let ctx = Arc::new(ConsumerContext {
        decode_limits,
        model: *model,
        client,
        name,
        claim_idle: cfg.claim_idle(),
        block: cfg.block(),
        shutdown,
        counters: ConsumerCounters::default(),
        held: Mutex::new(BTreeSet::new()),
    });

    // Load every model before taking the first job, so a broken build fails
    // at start instead of answering every job `failed`.
    let mut handles = Vec::with_capacity(threads);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(usize, Result<(), ModelError>)>();
    for i in 0..threads {
        let ctx = ctx.clone();
        let ready = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("remote-worker-{i}"))
            .spawn(move || worker_thread(ctx, i, ready))
            .map_err(ConsumerError::Spawn)?;
        handles.push(handle);
    }
    drop(ready_tx);
    let lease = {
        let ctx = ctx.clone();
        std::thread::Builder::new()
            .name("remote-worker-lease".into())
            .spawn(move || lease_thread(&ctx))
            .map_err(ConsumerError::Spawn)?
    };
    let mut first_error = None;
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((thread, Err(source))) => {
                first_error.get_or_insert(ConsumerError::Model { thread, source });
            }
            Err(_) => break,
        }
    }
    if first_error.is_some() {
        ctx.shutdown.cancel();
    } else {
        tracing::info!(name = %ctx.name, threads, stream = JOBS_STREAM, "worker ready");
    }
    for h in handles {
        // A panic outside the per-job guard is a bug; the others go on.
        if h.join().is_err() {
            tracing::error!("a worker thread panicked outside a job");
        }
    }
    // The threads hold no job any more; the lease thread sees the token.
    ctx.shutdown.cancel();
    if lease.join().is_err() {
        tracing::error!("the lease thread panicked");
    }
    let c = &ctx.counters;
    tracing::info!(
        done = c.done.load(Ordering::Relaxed),
        expired = c.expired.load(Ordering::Relaxed),
        lost = c.lost.load(Ordering::Relaxed),
        failed = c.failed.load(Ordering::Relaxed),
        claimed = c.claimed.load(Ordering::Relaxed),
        malformed = c.malformed.load(Ordering::Relaxed),
        "worker stopped"
    );
    first_error.map_or(Ok(()), Err)
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..6])
}

/// Offset between this machine's clock and Redis's, so deadlines (set on
/// Redis's clock by the entry ids) are judged on Redis's clock.
struct RedisClock {
    offset_ms: i64,
}

impl RedisClock {
    fn sync(con: &mut redis::Connection) -> redis::RedisResult<RedisClock> {
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query(con)?;
        let redis_ms = secs * 1000 + micros / 1000;
        Ok(RedisClock {
            offset_ms: redis_ms - local_ms(),
        })
    }

    fn now_ms(&self) -> i64 {
        local_ms() + self.offset_ms
    }
}

fn local_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How often a thread looks for jobs of dead consumers and resyncs its clock.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// A consumer without pending jobs that has not read for this long is
/// removed from the group (a worker that died between jobs).
const FORGET_IDLE_CONSUMER: Duration = Duration::from_secs(60);

/// Renews the jobs the threads of this process hold, so that the other
/// workers' `XAUTOCLAIM` never takes a job from a live worker whose forward
/// pass is slow. Runs until the token is cancelled.
fn lease_thread(ctx: &ConsumerContext) {
    let every = (ctx.claim_idle / 4).max(Duration::from_millis(10));
    let mut con: Option<redis::Connection> = None;
    while !ctx.shutdown.is_cancelled() {
        wait_or_stop(&ctx.shutdown, every);
        let held: Vec<(String, String)> = ctx.held.lock().iter().cloned().collect();
        if held.is_empty() {
            continue;
        }
        if con.is_none() {
            match connect(ctx) {
                Ok(c) => con = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "lease thread cannot reach Redis; retrying");
                    continue;
                }
            }
        }
        // unwrap: set just above.
        let c = con.as_mut().unwrap();
        let mut pipe = redis::pipe();
        for (consumer, id) in &held {
            // Min idle 0 and the same consumer: resets the job's idle time.
            // An id acknowledged in the meantime is no longer pending and is
            // left alone (no FORCE).
            pipe.cmd("XCLAIM")
                .arg(JOBS_STREAM)
                .arg(WORKERS_GROUP)
                .arg(consumer)
                .arg(0)
                .arg(id)
                .arg("JUSTID")
                .ignore();
        }
        if let Err(e) = pipe.query::<()>(c) {
            tracing::warn!(error = %e, "renewing held jobs failed; reconnecting");
            con = None;
        }
    }
}

/// Marks a job as held by a thread of this process until dropped.
struct Holding<'a> {
    held: &'a Mutex<BTreeSet<(String, String)>>,
    key: (String, String),
}

impl<'a> Holding<'a> {
    fn new(ctx: &'a ConsumerContext, consumer: &str, id: &str) -> Holding<'a> {
        let key = (consumer.to_string(), id.to_string());
        ctx.held.lock().insert(key.clone());
        Holding {
            held: &ctx.held,
            key,
        }
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.held.lock().remove(&self.key);
    }
}

fn worker_thread(
    ctx: Arc<ConsumerContext>,
    index: usize,
    ready: std::sync::mpsc::Sender<(usize, Result<(), ModelError>)>,
) {
    let mut holistic = match Holistic::load_with(&ctx.model) {
        Ok(h) => h,
        Err(e) => {
            let _ = ready.send((index, Err(e)));
            return;
        }
    };
    let _ = ready.send((index, Ok(())));
    let consumer = format!("{}-{index}", ctx.name);
    let mut backoff = Duration::from_millis(100);

    // Outer loop: (re)connect; inner loop: take jobs until an error.
    while !ctx.shutdown.is_cancelled() {
        let mut con = match connect(&ctx) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(consumer = %consumer, error = %e, "cannot reach Redis; retrying");
                wait_or_stop(&ctx.shutdown, backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut worker = ThreadState {
            ctx: &ctx,
            consumer: &consumer,
            holistic: &mut holistic,
            clock: RedisClock { offset_ms: 0 },
            next_sweep: Instant::now(),
            sweeps: 0,
        };
        if let Err(e) = worker.serve(&mut con) {
            tracing::warn!(consumer = %consumer, error = %e, "Redis failed; reconnecting");
            wait_or_stop(&ctx.shutdown, backoff);
            continue;
        }
        // Stopped cleanly: holding no job, leave the group so nobody waits
        // for this consumer.
        let _: redis::RedisResult<i64> = redis::cmd("XGROUP")
            .arg("DELCONSUMER")
            .arg(JOBS_STREAM)
            .arg(WORKERS_GROUP)
            .arg(&consumer)
            .query(&mut con);
    }
}

fn connect(ctx: &ConsumerContext) -> redis::RedisResult<redis::Connection> {
    let mut con = ctx
        .client
        .get_connection_with_timeout(Duration::from_secs(2))?;
    // Above the longest BLOCK, so a blocked read is never cut short.
    con.set_read_timeout(Some(ctx.block + Duration::from_secs(5)))?;
    con.set_write_timeout(Some(Duration::from_secs(5)))?;
    group_exists(create_group_cmd().query(&mut con))?;
    Ok(con)
}

fn wait_or_stop(shutdown: &CancellationToken, d: Duration) {
    // A plain sleep in small steps: this thread has no executor to select on
    // the token with.
    let until = Instant::now() + d;
    while !shutdown.is_cancelled() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
}

struct ThreadState<'a> {
    ctx: &'a ConsumerContext,
    consumer: &'a str,
    holistic: &'a mut Holistic,
    clock: RedisClock,
    next_sweep: Instant,
    sweeps: u64,
}

impl ThreadState<'_> {
    /// Takes and answers jobs until the token is cancelled (`Ok`) or Redis
    /// fails (`Err`).
    fn serve(&mut self, con: &mut redis::Connection) -> redis::RedisResult<()> {
        while !self.ctx.shutdown.is_cancelled() {
            if Instant::now() >= self.next_sweep {
                self.sweep(con)?;
                self.next_sweep = Instant::now() + SWEEP_EVERY;
            }
            let read: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(WORKERS_GROUP)
                .arg(self.consumer)
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(self.ctx.block.as_millis() as u64)
                .arg("STREAMS")
                .arg(JOBS_STREAM)
                .arg(">")
                .query(con);
            let reply = match read {
                Ok(r) => r,
                // Redis restarted without persistence: the group is gone.
                Err(e) if e.code() == Some("NOGROUP") => {
                    group_exists(create_group_cmd().query(con))?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            for key in reply.map(|r| r.keys).unwrap_or_default() {
                for entry in key.ids {
                    self.handle(con, &entry, false)?;
                }
            }
        }
        Ok(())
    }

    /// Resyncs the clock, takes over jobs of dead consumers, and forgets
    /// consumers long gone.
    fn sweep(&mut self, con: &mut redis::Connection) -> redis::RedisResult<()> {
        self.clock = RedisClock::sync(con)?;
        // Redis (7.0) creates a consumer only when a read returns entries: an
        // idle worker blocked on an empty stream would not be listed. Created
        // here, every thread is in `XINFO CONSUMERS` from its first second
        // (how operators and the tests see that a worker is up), and again
        // after another worker forgot it as idle (0: it exists).
        let _: i64 = redis::cmd("XGROUP")
            .arg("CREATECONSUMER")
            .arg(JOBS_STREAM)
            .arg(WORKERS_GROUP)
            .arg(self.consumer)
            .query(con)?;
        self.sweeps += 1;
        let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(JOBS_STREAM)
            .arg(WORKERS_GROUP)
            .arg(self.consumer)
            .arg(self.ctx.claim_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(4)
            .query(con)?;
        // Held from now on: the claimed jobs wait their turn on this thread.
        let _holding: Vec<Holding<'_>> = claimed
            .claimed
            .iter()
            .map(|e| Holding::new(self.ctx, self.consumer, &e.id))
            .collect();
        for entry in &claimed.claimed {
            self.ctx.counters.claimed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(consumer = self.consumer, entry = %entry.id, "took over a job of a dead worker");
            self.handle(con, entry, true)?;
        }
        if self.sweeps % 10 == 0 {
            self.forget_dead_consumers(con)?;
        }
        Ok(())
    }

    fn forget_dead_consumers(&self, con: &mut redis::Connection) -> redis::RedisResult<()> {
        let info: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(JOBS_STREAM)
            .arg(WORKERS_GROUP)
            .query(con)?;
        for c in info.consumers {
            if c.pending == 0 && c.idle as u128 > FORGET_IDLE_CONSUMER.as_millis() {
                let _: i64 = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(JOBS_STREAM)
                    .arg(WORKERS_GROUP)
                    .arg(&c.name)
                    .query(con)?;
            }
        }
        Ok(())
    }

    /// Answers one job entry and acknowledges it.
    fn handle(
        &mut self,
        con: &mut redis::Connection,
        entry: &StreamId,
        claimed: bool,
    ) -> redis::RedisResult<()> {
        // A copy of the `&'a` context, so counting does not borrow `self`.
        let ctx = self.ctx;
        let counters = &ctx.counters;
        let _holding = Holding::new(ctx, self.consumer, &entry.id);
        let (job, outcome) = match (entry.id.parse::<EntryId>(), WireJob::from_entry(entry)) {
            (Ok(id), Ok(job)) => {
                let now = self.clock.now_ms();
                let deadline = id.ms as i64 + job.ttl_ms as i64;
                let outcome = if now > deadline {
                    // A job taken from a dead consumer was held past its
                    // deadline: from the session's view it was lost.
                    if claimed {
                        counters.lost.fetch_add(1, Ordering::Relaxed);
                        WireOutcome::Lost
                    } else {
                        counters.expired.fetch_add(1, Ordering::Relaxed);
                        WireOutcome::Expired
                    }
                } else {
                    let queue_ms = (now - id.ms as i64).max(0) as f64;
                    self.process(&job, queue_ms)
                };
                ((job.gateway, job.job), outcome)
            }
            (_, Err(e)) => {
                counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(entry = %entry.id, error = %e, "unreadable job");
                match WireJob::reply_address(entry) {
                    Some(addr) => (addr, WireOutcome::Unsupported(e.to_string())),
                    None => return ack(con, &entry.id),
                }
            }
            (Err(e), Ok(_)) => {
                tracing::warn!(entry = %entry.id, error = %e, "job with a bad entry id");
                return ack(con, &entry.id);
            }
        };
        let (gateway, job) = job;
        let result = WireResult {
            job,
            worker: self.consumer.to_string(),
            outcome,
        };
        let results = results_stream(&gateway);
        // One MULTI: a result is never written without its job acknowledged,
        // so a restart cannot answer a job twice.
        redis::pipe()
            .atomic()
            .cmd("XADD")
            .arg(&results)
            .arg("MAXLEN")
            .arg("~")
            .arg(RESULTS_MAXLEN)
            .arg("*")
            .arg(result.to_fields())
            .ignore()
            .cmd("EXPIRE")
            .arg(&results)
            .arg(RESULTS_TTL_S)
            .ignore()
            .cmd("XACK")
            .arg(JOBS_STREAM)
            .arg(WORKERS_GROUP)
            .arg(&entry.id)
            .ignore()
            .query::<()>(con)
    }

    /// Runs one frame ([`run_frame`], as the in-process pool does); after a
    /// panic the model is reloaded, since it may be half-way through a
    /// mutation.
    fn process(&mut self, job: &WireJob, queue_ms: f64) -> WireOutcome {
        // A copy of the `&'a` context, so counting does not borrow `self`.
        let ctx = self.ctx;
        let counters = &ctx.counters;
        let mut tracking = job.tracking.clone();
        let queued = Duration::from_secs_f64(queue_ms / 1e3);
        let run = run_frame(
            &*self.holistic,
            &ctx.decode_limits,
            &job.frame,
            &job.opts,
            &mut tracking,
            queued,
            Fault::None,
        );
        let outcome = match run {
            Ok(run) => {
                counters.done.fetch_add(1, Ordering::Relaxed);
                return WireOutcome::Ok {
                    landmarks: run.landmarks,
                    tracking,
                    timings: run.timings,
                };
            }
            Err(FrameFailure::BadFrame(m)) => WireOutcome::BadFrame(m),
            Err(FrameFailure::WorkerPanicked) => {
                tracing::error!(
                    consumer = self.consumer,
                    "pipeline panicked; reloading the model"
                );
                match Holistic::load_with(&ctx.model) {
                    Ok(h) => *self.holistic = h,
                    Err(e) => {
                        tracing::error!(error = %e, "reloading the model failed; stopping this worker");
                        self.ctx.shutdown.cancel();
                    }
                }
                WireOutcome::Failed("the pipeline panicked on this frame".into())
            }
            Err(failure) => WireOutcome::Failed(failure.to_string()),
        };
        counters.failed.fetch_add(1, Ordering::Relaxed);
        outcome
    }
}

fn ack(con: &mut redis::Connection, id: &str) -> redis::RedisResult<()> {
    redis::cmd("XACK")
        .arg(JOBS_STREAM)
        .arg(WORKERS_GROUP)
        .arg(id)
        .query::<i64>(con)
        .map(|_| ())
}
