//! The remote inference pool: sessions' frames go to `holistream worker`
//! processes over Redis Streams instead of threads of this process.
//!
//! # Topology
//!
//! ```text
//! gateway (serve --pool redis)                         worker process (holistream worker)
//!   RemotePool::submit ── XADD MAXLEN ~ N ──▶ holistream:jobs ──▶ XREADGROUP workers <consumer>
//!   result reader ◀── XREAD BLOCK ── holistream:results:<gateway> ◀── XADD + XACK
//! ```
//!
//! - One jobs stream `holistream:jobs`, one consumer group `workers`: each job
//!   goes to exactly one worker thread (a consumer).
//! - One result stream per gateway, `holistream:results:<gateway id>`, read by
//!   that gateway only. Workers trim it (`MAXLEN ~ 1000`) and give it a TTL
//!   (60 s), so the stream of a gateway that left disappears by itself.
//!
//! # What happens to a job
//!
//! Every [`FrameJob`] submitted is answered exactly once, like with the local
//! pool:
//! - **result**: a worker ran it and the gateway read the answer;
//! - **overloaded**: the jobs stream held `max_backlog` jobs and trimmed this
//!   one (the oldest) before any worker took it (counted as
//!   `remote_jobs_total{outcome="trimmed"}`; the session counts it in
//!   `drops_total{reason="overload"}`), or this gateway already had
//!   `max_in_flight` jobs waiting;
//! - **expired**: no worker took it within `job_ttl_ms` (all busy, or none
//!   running), or a worker took it too late and skipped it;
//! - **lost**: a worker took it and then nothing came back within
//!   `reply_timeout_ms` past its deadline (the worker was killed), or a
//!   surviving worker found it pending on a dead consumer (`XAUTOCLAIM`,
//!   once the dead process stopped renewing its lease, see
//!   [`crate::worker`]) and answered it `lost`;
//! - **unavailable**: Redis could not be reached, or the pool is shutting down.
//!
//! Deadlines are on Redis's clock: a job's deadline is the millisecond part
//! of its stream entry id plus its `ttl_ms`, so gateway and worker clocks need
//! not agree.
//!
//! # Wire format, version 1
//!
//! A job is a stream entry with these fields:
//!
//! | field   | value                                                                 |
//! |---------|-----------------------------------------------------------------------|
//! | `v`     | `1` (the version; a worker answers `unsupported` to any other)          |
//! | `gw`    | the asking gateway's id (results go to `holistream:results:<gw>`)       |
//! | `job`   | the gateway's job number, decimal `u64`, echoed in the result           |
//! | `ttl_ms`| time to live in ms after the entry id's timestamp                       |
//! | `opts`  | JSON `{"mode":"static"\|"tracking","parts":{"pose","face","hands"},"timestamp_us"}` |
//! | `state` | JSON of the session's `TrackingState`                                  |
//! | `jpeg`  | the JPEG, raw bytes                                                    |
//!
//! A result is an entry of the gateway's result stream:
//!
//! | field      | value                                                                  |
//! |------------|------------------------------------------------------------------------|
//! | `v`        | `1`                                                                    |
//! | `job`      | the job number                                                         |
//! | `worker`   | the consumer name of the worker thread                                 |
//! | `status`   | `ok`, `expired`, `lost`, `bad_frame`, `failed`, `unsupported`            |
//! | `landmarks`| (`ok`) the landmark members of the result message, JSON without braces  |
//! | `state`    | (`ok`) JSON of the new `TrackingState`                                 |
//! | `timings`  | (`ok`) JSON `{"queue_ms","decode_ms","infer_ms","serialize_ms"}`        |
//! | `error`    | (`bad_frame`, `failed`, `unsupported`) a message for logs and clients   |

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use prometheus::{IntCounterVec, Opts};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamReadOptions, StreamReadReply};
use redis::{AsyncConnectionConfig, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::pool::{FrameDone, FrameFailure, FrameJob, FrameOutput};
use super::protocol::{FrameTimings, result_json};
use crate::http::Metrics;
use crate::model::{Mode, Parts, TrackingState};

/// Version of the job and result encodings written by this build.
pub const WIRE_VERSION: u32 = 1;
/// The stream all gateways add jobs to.
pub const JOBS_STREAM: &str = "holistream:jobs";
/// The consumer group of the workers on [`JOBS_STREAM`].
pub const WORKERS_GROUP: &str = "workers";
/// Entries kept in a gateway's result stream (approximate trim).
pub const RESULTS_MAXLEN: usize = 1000;
/// Seconds a result stream lives after the last result written to it.
pub const RESULTS_TTL_S: i64 = 60;

/// The result stream of a gateway.
pub fn results_stream(gateway: &str) -> String {
    format!("holistream:results:{gateway}")
}

/// Which pool a gateway's sessions use (`pool.kind`, `--pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Inference threads in this process.
    #[default]
    Local,
    /// `holistream worker` processes, over Redis Streams.
    Redis,
}

/// Settings of the remote pool (`[pool.remote]` in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemotePoolConfig {
    /// The Redis holding the streams: never from a file; `serve` copies the
    /// `[redis]` URL (`REDIS_URL`, `--redis-url`) here.
    #[serde(skip)]
    pub redis_url: Option<String>,
    /// This gateway's id, naming its result stream. Must be unique among the
    /// gateways sharing a Redis; default: a fresh uuid at each start.
    pub gateway_id: Option<String>,
    /// Jobs the shared jobs stream keeps (`XADD MAXLEN ~`); older ones are
    /// trimmed, so a backlog drops the oldest frames.
    pub max_backlog: usize,
    /// Jobs of this gateway waiting for an answer; more are refused as
    /// overloaded without touching Redis.
    pub max_in_flight: usize,
    /// A job no worker took within this time is skipped (`expired`).
    pub job_ttl_ms: u64,
    /// How long past its deadline a job taken by a worker may take before it
    /// is answered `lost`. Longer than the slowest forward pass.
    pub reply_timeout_ms: u64,
    /// How often the gateway checks its waiting jobs against the stream
    /// (trimmed, expired, lost).
    pub sweep_interval_ms: u64,
}

impl Default for RemotePoolConfig {
    fn default() -> Self {
        RemotePoolConfig {
            redis_url: None,
            gateway_id: None,
            max_backlog: 64,
            max_in_flight: 256,
            job_ttl_ms: 500,
            reply_timeout_ms: 3000,
            sweep_interval_ms: 50,
        }
    }
}

impl RemotePoolConfig {
    /// Checks the values, with a message that names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(id) = &self.gateway_id
            && (id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(format!(
                "pool.remote.gateway_id must be 1 to 64 of [A-Za-z0-9_-], got {id:?}"
            ));
        }
        if self.max_backlog == 0 || self.max_in_flight == 0 {
            return Err("pool.remote.max_backlog and max_in_flight must be at least 1".into());
        }
        if self.job_ttl_ms == 0 || self.reply_timeout_ms == 0 || self.sweep_interval_ms == 0 {
            return Err(
                "pool.remote.job_ttl_ms, reply_timeout_ms and sweep_interval_ms must be positive"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Errors of starting the remote pool.
#[derive(Debug, thiserror::Error)]
pub enum RemotePoolError {
    #[error("invalid remote pool configuration: {0}")]
    Config(String),
    #[error("the remote pool needs a Redis URL (REDIS_URL or --redis-url)")]
    NoRedisUrl,
    #[error("connecting to Redis for the remote pool failed: {0}")]
    Redis(#[from] redis::RedisError),
}

// ---------------------------------------------------------------------------
// Wire format
// ---------------------------------------------------------------------------

/// A stream entry id, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryId {
    /// Redis server time in ms when the entry was added.
    pub ms: u64,
    /// Sequence within that millisecond.
    pub seq: u64,
}

impl FromStr for EntryId {
    type Err = WireError;
    fn from_str(s: &str) -> Result<EntryId, WireError> {
        let bad = || WireError::EntryId(s.to_string());
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(EntryId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a stream entry is not a valid job or result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("entry has no field {0:?}")]
    Missing(&'static str),
    #[error("field {0:?} is malformed: {1}")]
    Malformed(&'static str, String),
    #[error("wire version {0} is not supported (this build speaks {WIRE_VERSION})")]
    Version(String),
    #[error("not a stream entry id: {0:?}")]
    EntryId(String),
}

/// Processing options as they travel in a job's `opts` field.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct WireOptions {
    mode: WireMode,
    parts: Parts,
    timestamp_us: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireMode {
    Static,
    Tracking,
}

/// A job as it travels in [`JOBS_STREAM`].
#[derive(Debug, Clone)]
pub struct WireJob {
    /// The asking gateway.
    pub gateway: String,
    /// The gateway's job number.
    pub job: u64,
    /// Time to live after the entry's timestamp.
    pub ttl_ms: u64,
    /// Static images or a stream.
    pub mode: Mode,
    /// Parts to compute.
    pub parts: Parts,
    /// Frame time for the pipeline's filters.
    pub timestamp_us: i64,
    /// The session's tracking state.
    pub tracking: TrackingState,
    /// The frame.
    pub jpeg: Bytes,
}

fn field<'a>(entry: &'a StreamId, name: &'static str) -> Result<&'a Value, WireError> {
    entry.map.get(name).ok_or(WireError::Missing(name))
}

fn field_bytes(entry: &StreamId, name: &'static str) -> Result<Vec<u8>, WireError> {
    redis::from_redis_value_ref::<Vec<u8>>(field(entry, name)?)
        .map_err(|e| WireError::Malformed(name, e.to_string()))
}

fn field_string(entry: &StreamId, name: &'static str) -> Result<String, WireError> {
    String::from_utf8(field_bytes(entry, name)?)
        .map_err(|_| WireError::Malformed(name, "not UTF-8".into()))
}

fn field_parse<T: FromStr>(entry: &StreamId, name: &'static str) -> Result<T, WireError> {
    let s = field_string(entry, name)?;
    s.parse()
        .map_err(|_| WireError::Malformed(name, format!("cannot parse {s:?}")))
}

fn field_json<T: serde::de::DeserializeOwned>(
    entry: &StreamId,
    name: &'static str,
) -> Result<T, WireError> {
    serde_json::from_slice(&field_bytes(entry, name)?)
        .map_err(|e| WireError::Malformed(name, e.to_string()))
}

fn check_version(entry: &StreamId) -> Result<(), WireError> {
    let v = field_string(entry, "v")?;
    if v == WIRE_VERSION.to_string() {
        Ok(())
    } else {
        Err(WireError::Version(v))
    }
}

/// Stream fields in order: name and raw value.
pub type Fields = Vec<(&'static str, Vec<u8>)>;

impl WireJob {
    /// The fields of the `XADD`.
    pub fn to_fields(&self) -> Fields {
        let opts = WireOptions {
            mode: match self.mode {
                Mode::Static => WireMode::Static,
                Mode::Tracking => WireMode::Tracking,
            },
            parts: self.parts,
            timestamp_us: self.timestamp_us,
        };
        vec![
            ("v", WIRE_VERSION.to_string().into_bytes()),
            ("gw", self.gateway.clone().into_bytes()),
            ("job", self.job.to_string().into_bytes()),
            ("ttl_ms", self.ttl_ms.to_string().into_bytes()),
            // unwrap: plain structs of numbers and bools always serialise.
            ("opts", serde_json::to_vec(&opts).unwrap()),
            ("state", serde_json::to_vec(&self.tracking).unwrap()),
            ("jpeg", self.jpeg.to_vec()),
        ]
    }

    /// Reads a job from a stream entry. The gateway and job number are read
    /// first, so that even a job of another version can be answered
    /// ([`WireJob::reply_address`]).
    pub fn from_entry(entry: &StreamId) -> Result<WireJob, WireError> {
        check_version(entry)?;
        let opts: WireOptions = field_json(entry, "opts")?;
        Ok(WireJob {
            gateway: field_string(entry, "gw")?,
            job: field_parse(entry, "job")?,
            ttl_ms: field_parse(entry, "ttl_ms")?,
            mode: match opts.mode {
                WireMode::Static => Mode::Static,
                WireMode::Tracking => Mode::Tracking,
            },
            parts: opts.parts,
            timestamp_us: opts.timestamp_us,
            tracking: field_json(entry, "state")?,
            jpeg: Bytes::from(field_bytes(entry, "jpeg")?),
        })
    }

    /// Where to answer an entry that is not a valid job, when it says.
    pub fn reply_address(entry: &StreamId) -> Option<(String, u64)> {
        Some((
            field_string(entry, "gw").ok().filter(|g| !g.is_empty())?,
            field_parse(entry, "job").ok()?,
        ))
    }
}

/// Per-stage times measured by the worker, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerTimings {
    /// From the job's entry timestamp to the worker starting it (Redis clock).
    pub queue_ms: f64,
    pub decode_ms: f64,
    pub infer_ms: f64,
    pub serialize_ms: f64,
}

/// What a worker made of a job.
#[derive(Debug, Clone)]
pub enum WireOutcome {
    /// Landmarks (JSON members), the new tracking state and the timings.
    Ok {
        landmarks: String,
        tracking: TrackingState,
        timings: WorkerTimings,
    },
    /// Taken after its deadline; not run.
    Expired,
    /// Found pending on a dead worker after its deadline.
    Lost,
    /// The JPEG could not be decoded.
    BadFrame(String),
    /// The pipeline failed or panicked.
    Failed(String),
    /// The job's encoding is not one this worker reads.
    Unsupported(String),
}

/// A result as it travels in a gateway's result stream.
#[derive(Debug, Clone)]
pub struct WireResult {
    pub job: u64,
    pub worker: String,
    pub outcome: WireOutcome,
}

impl WireResult {
    /// The fields of the `XADD`.
    pub fn to_fields(&self) -> Fields {
        let mut f: Fields = vec![
            ("v", WIRE_VERSION.to_string().into_bytes()),
            ("job", self.job.to_string().into_bytes()),
            ("worker", self.worker.clone().into_bytes()),
        ];
        let status = |s: &str| s.as_bytes().to_vec();
        match &self.outcome {
            WireOutcome::Ok {
                landmarks,
                tracking,
                timings,
            } => {
                f.push(("status", status("ok")));
                f.push(("landmarks", landmarks.clone().into_bytes()));
                // unwrap: plain structs of numbers always serialise.
                f.push(("state", serde_json::to_vec(tracking).unwrap()));
                f.push(("timings", serde_json::to_vec(timings).unwrap()));
            }
            WireOutcome::Expired => f.push(("status", status("expired"))),
            WireOutcome::Lost => f.push(("status", status("lost"))),
            WireOutcome::BadFrame(m) => {
                f.push(("status", status("bad_frame")));
                f.push(("error", m.clone().into_bytes()));
            }
            WireOutcome::Failed(m) => {
                f.push(("status", status("failed")));
                f.push(("error", m.clone().into_bytes()));
            }
            WireOutcome::Unsupported(m) => {
                f.push(("status", status("unsupported")));
                f.push(("error", m.clone().into_bytes()));
            }
        }
        f
    }

    /// Reads a result from a stream entry.
    pub fn from_entry(entry: &StreamId) -> Result<WireResult, WireError> {
        check_version(entry)?;
        let error = || field_string(entry, "error");
        let status = field_string(entry, "status")?;
        let outcome = match status.as_str() {
            "ok" => WireOutcome::Ok {
                landmarks: field_string(entry, "landmarks")?,
                tracking: field_json(entry, "state")?,
                timings: field_json(entry, "timings")?,
            },
            "expired" => WireOutcome::Expired,
            "lost" => WireOutcome::Lost,
            "bad_frame" => WireOutcome::BadFrame(error()?),
            "failed" => WireOutcome::Failed(error()?),
            "unsupported" => WireOutcome::Unsupported(error()?),
            other => return Err(WireError::Malformed("status", format!("unknown {other:?}"))),
        };
        Ok(WireResult {
            job: field_parse(entry, "job")?,
            worker: field_string(entry, "worker").unwrap_or_default(),
            outcome,
        })
    }
}

/// `XGROUP CREATE` of the workers' group (and of the jobs stream). Gateways
/// and workers both send it at start, whichever comes first; `BUSYGROUP`
/// means it exists ([`group_exists`]).
pub fn create_group_cmd() -> redis::Cmd {
    // From id 0: jobs added before the first worker came are still taken
    // (expired ones are then skipped).
    let mut cmd = redis::cmd("XGROUP");
    cmd.arg("CREATE")
        .arg(JOBS_STREAM)
        .arg(WORKERS_GROUP)
        .arg("0")
        .arg("MKSTREAM");
    cmd
}

/// Whether a [`create_group_cmd`] result means the group is there.
pub fn group_exists(created: redis::RedisResult<()>) -> redis::RedisResult<()> {
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

// ---------------------------------------------------------------------------
// Gateway side
// ---------------------------------------------------------------------------

/// A job of this gateway waiting for its answer.
struct WaitingJob {
    seq: u32,
    capture_ts: f64,
    arrived: Instant,
    /// When the job's time to live ends (local clock).
    deadline: Instant,
    /// Set once `XADD` returned.
    entry: Option<EntryId>,
    /// A copy of the session's state, handed back when the job fails.
    tracking: TrackingState,
    reply: oneshot::Sender<FrameDone>,
    /// When a sweep first found the entry behind the workers' read position,
    /// gone from the stream and held by no worker (see [`judge`]).
    unheld_since: Option<Instant>,
}

impl WaitingJob {
    fn answer_failure(self, failure: FrameFailure) {
        let tracking = match failure {
            // Mirrors the local pool: after a failed pass the state may
            // describe a half-processed frame.
            FrameFailure::Inference => TrackingState::default(),
            _ => self.tracking,
        };
        let _ = self.reply.send(FrameDone {
            seq: self.seq,
            tracking: Some(tracking),
            outcome: Err(failure),
        });
    }
}

/// Counters of the remote pool (also in `/metrics` as
/// `holistream_remote_jobs_total{outcome}`; the sessions count their own
/// `drops_total` from the answers).
#[derive(Debug, Default)]
pub struct RemoteCounters {
    pub submitted: AtomicU64,
    pub results: AtomicU64,
    pub trimmed: AtomicU64,
    pub expired: AtomicU64,
    pub lost: AtomicU64,
    pub refused: AtomicU64,
    /// Results that arrived for a job already answered (late, or unknown).
    pub late: AtomicU64,
}

/// A snapshot of [`RemoteCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct RemoteStats {
    pub submitted: u64,
    pub results: u64,
    pub trimmed: u64,
    pub expired: u64,
    pub lost: u64,
    pub refused: u64,
    pub late: u64,
    pub in_flight: u64,
}

/// What the gateway's background tasks share with the handle.
struct Shared {
    gateway: String,
    results_key: String,
    cfg: RemotePoolConfig,
    waiting: Mutex<HashMap<u64, WaitingJob>>,
    next_job: AtomicU64,
    counters: RemoteCounters,
    metrics: Metrics,
    /// `remote_jobs_total{outcome}`.
    jobs_total: IntCounterVec,
}

impl Shared {
    fn take(&self, job: u64) -> Option<WaitingJob> {
        let taken = self.waiting.lock().remove(&job);
        self.metrics
            .queue_depth
            .set(self.waiting.lock().len() as i64);
        taken
    }

    fn count(&self, counter: &AtomicU64, outcome: &str) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.jobs_total.with_label_values(&[outcome]).inc();
    }

    fn drop_reason(&self, failure: &FrameFailure) {
        let c = &self.counters;
        match failure {
            FrameFailure::Overloaded => self.count(&c.trimmed, "trimmed"),
            FrameFailure::Expired => self.count(&c.expired, "expired"),
            FrameFailure::Lost => self.count(&c.lost, "lost"),
            _ => {}
        }
    }

    fn fail(&self, job: u64, failure: FrameFailure) {
        if let Some(w) = self.take(job) {
            self.drop_reason(&failure);
            w.answer_failure(failure);
        }
    }
}

/// The gateway side of the remote pool: adds jobs to the jobs stream and
/// answers sessions from this gateway's result stream.
pub struct RemotePool {
    shared: Arc<Shared>,
    redis: ConnectionManager,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl RemotePool {
    /// Connects to Redis, creates the workers' group if needed and starts the
    /// result reader and the sweeper. Does not wait for any worker: gateways
    /// and workers may start in any order.
    pub async fn start(
        cfg: &RemotePoolConfig,
        redis_url: Option<&str>,
        metrics: Metrics,
    ) -> Result<RemotePool, RemotePoolError> {
        cfg.validate().map_err(RemotePoolError::Config)?;
        let url = redis_url.ok_or(RemotePoolError::NoRedisUrl)?;
        let client = redis::Client::open(url)?;
        let mut redis = client
            .get_connection_manager_with_config(
                ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(1)))
                    .set_number_of_retries(2),
            )
            .await?;
        group_exists(create_group_cmd().query_async(&mut redis).await)?;

        let gateway = cfg
            .gateway_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let jobs_total = IntCounterVec::new(
            Opts::new("remote_jobs_total", "Jobs of the remote pool, by outcome"),
            &["outcome"],
        )
        .expect("metric options");
        if let Err(e) = metrics.registry().register(Box::new(jobs_total.clone())) {
            // Only a second remote pool on the same registry (tests) gets
            // here; its counts stay out of /metrics but in `stats()`.
            tracing::debug!(error = %e, "remote_jobs_total already registered");
        }
        for outcome in [
            "submitted",
            "result",
            "trimmed",
            "expired",
            "lost",
            "refused",
            "late",
        ] {
            jobs_total.with_label_values(&[outcome]);
        }
        let shared = Arc::new(Shared {
            results_key: results_stream(&gateway),
            gateway,
            cfg: cfg.clone(),
            waiting: Mutex::new(HashMap::new()),
            next_job: AtomicU64::new(1),
            counters: RemoteCounters::default(),
            metrics,
            jobs_total,
        });
        tracing::info!(gateway = %shared.gateway, stream = JOBS_STREAM, "remote inference pool started");

        let shutdown = CancellationToken::new();
        let reader = tokio::spawn(read_results(
            shared.clone(),
            client.clone(),
            shutdown.child_token(),
        ));
        let sweeper = tokio::spawn(sweep(shared.clone(), redis.clone(), shutdown.child_token()));
        Ok(RemotePool {
            shared,
            redis,
            shutdown,
            tasks: Mutex::new(vec![reader, sweeper]),
        })
    }

    /// This gateway's id (its result stream is [`results_stream`] of it).
    pub fn gateway_id(&self) -> &str {
        &self.shared.gateway
    }

    /// Counters so far.
    pub fn stats(&self) -> RemoteStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RemoteStats {
            submitted: l(&c.submitted),
            results: l(&c.results),
            trimmed: l(&c.trimmed),
            expired: l(&c.expired),
            lost: l(&c.lost),
            refused: l(&c.refused),
            late: l(&c.late),
            in_flight: self.shared.waiting.lock().len() as u64,
        }
    }

    /// Sends a frame to the workers. The returned future always resolves,
    /// with a result or the reason there is none.
    pub fn submit(&self, frame: FrameJob) -> BoxFuture<'static, FrameDone> {
        let shared = self.shared.clone();
        let mut redis = self.redis.clone();
        let cancelled = self.shutdown.is_cancelled();
        Box::pin(async move {
            let seq = frame.seq;
            let (tx, rx) = oneshot::channel();
            let job = shared.next_job.fetch_add(1, Ordering::Relaxed);
            let wire = WireJob {
                gateway: shared.gateway.clone(),
                job,
                ttl_ms: shared.cfg.job_ttl_ms,
                mode: frame.mode,
                parts: frame.parts,
                timestamp_us: frame.timestamp_us,
                tracking: frame.tracking.clone(),
                jpeg: frame.jpeg,
            };
            let waiting = WaitingJob {
                seq,
                capture_ts: frame.capture_ts,
                arrived: frame.arrived,
                deadline: Instant::now() + Duration::from_millis(shared.cfg.job_ttl_ms),
                entry: None,
                tracking: frame.tracking,
                reply: tx,
                unheld_since: None,
            };
            if cancelled {
                waiting.answer_failure(FrameFailure::Unavailable);
            } else {
                // Registered before the XADD, so a result can never arrive for
                // a job the reader does not know yet.
                let refused = {
                    let mut map = shared.waiting.lock();
                    if map.len() >= shared.cfg.max_in_flight {
                        Some(waiting)
                    } else {
                        map.insert(job, waiting);
                        shared.metrics.queue_depth.set(map.len() as i64);
                        None
                    }
                };
                if let Some(waiting) = refused {
                    shared.count(&shared.counters.refused, "refused");
                    waiting.answer_failure(FrameFailure::Overloaded);
                } else {
                    shared.count(&shared.counters.submitted, "submitted");
                    let added: redis::RedisResult<String> = redis::cmd("XADD")
                        .arg(JOBS_STREAM)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(shared.cfg.max_backlog)
                        .arg("*")
                        .arg(wire.to_fields())
                        .query_async(&mut redis)
                        .await;
                    match added
                        .map_err(|e| e.to_string())
                        .and_then(|id| id.parse::<EntryId>().map_err(|e| e.to_string()))
                    {
                        Ok(id) => {
                            if let Some(w) = shared.waiting.lock().get_mut(&job) {
                                w.entry = Some(id);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "adding a job to the jobs stream failed");
                            if let Some(w) = shared.take(job) {
                                w.answer_failure(FrameFailure::Unavailable);
                            }
                        }
                    }
                }
            }
            rx.await.unwrap_or(FrameDone {
                seq,
                tracking: None,
                outcome: Err(FrameFailure::Lost),
            })
        })
    }

    /// Stops the reader and the sweeper, answers every waiting job
    /// `unavailable` and deletes this gateway's result stream. Idempotent.
    pub async fn shutdown(&self) {
        if self.shutdown.is_cancelled() {
            return;
        }
        self.shutdown.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
        let waiting: Vec<WaitingJob> = self.shared.waiting.lock().drain().map(|(_, w)| w).collect();
        for w in waiting {
            w.answer_failure(FrameFailure::Unavailable);
        }
        self.shared.metrics.queue_depth.set(0);
        let mut redis = self.redis.clone();
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(&self.shared.results_key)
            .query_async(&mut redis)
            .await;
    }
}

impl Drop for RemotePool {
    fn drop(&mut self) {
        // The background tasks hold only `Shared`; stop them with the pool.
        self.shutdown.cancel();
    }
}

/// Longest `XREAD BLOCK` of the result reader; bounds how late it sees the
/// cancellation when no result comes.
const READ_BLOCK: Duration = Duration::from_millis(500);

/// Reads this gateway's result stream and answers the waiting sessions.
async fn read_results(shared: Arc<Shared>, client: redis::Client, shutdown: CancellationToken) {
    // Its own connection: a blocking XREAD would hold up the jobs' XADDs on
    // a shared multiplexed connection.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(READ_BLOCK + Duration::from_secs(2)));
    let mut con: Option<MultiplexedConnection> = None;
    let mut last = EntryId::default().to_string();
    let mut backoff = Duration::from_millis(100);
    loop {
        if con.is_none() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                c = client.get_multiplexed_async_connection_with_config(&config) => match c {
                    Ok(c) => { con = Some(c); backoff = Duration::from_millis(100); }
                    Err(e) => {
                        tracing::warn!(error = %e, "result reader cannot reach Redis; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
        }
        // unwrap: set just above.
        let c = con.as_mut().unwrap();
        let opts = StreamReadOptions::default()
            .block(READ_BLOCK.as_millis() as usize)
            .count(256);
        let keys = [&shared.results_key];
        let ids = [&last];
        let read: redis::RedisResult<Option<StreamReadReply>> = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = redis::AsyncCommands::xread_options(c, &keys, &ids, &opts) => r,
        };
        let reply = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading the result stream failed; reconnecting");
                con = None;
                continue;
            }
        };
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                last = entry.id.clone();
                deliver(&shared, &entry);
            }
        }
    }
}

/// Answers the session waiting for one result entry.
fn deliver(shared: &Shared, entry: &StreamId) {
    let result = match WireResult::from_entry(entry) {
        Ok(r) => r,
        Err(e) => {
            // Its job will be answered by the sweeper (lost); a newer worker
            // speaking another version should not take this gateway down.
            tracing::warn!(entry = %entry.id, error = %e, "unreadable result entry skipped");
            shared.count(&shared.counters.late, "late");
            return;
        }
    };
    let Some(waiting) = shared.take(result.job) else {
        shared.count(&shared.counters.late, "late");
        return;
    };
    let failure = match result.outcome {
        WireOutcome::Ok {
            landmarks,
            tracking,
            timings,
        } => {
            shared.count(&shared.counters.results, "result");
            let timings = FrameTimings {
                queue_ms: timings.queue_ms,
                decode_ms: timings.decode_ms,
                infer_ms: timings.infer_ms,
                serialize_ms: timings.serialize_ms,
                total_ms: waiting.arrived.elapsed().as_secs_f64() * 1e3,
            };
            shared
                .metrics
                .inference_seconds
                .observe(timings.infer_ms / 1e3);
            let json = result_json(waiting.seq, waiting.capture_ts, &timings, &landmarks);
            let _ = waiting.reply.send(FrameDone {
                seq: waiting.seq,
                tracking: Some(tracking),
                outcome: Ok(FrameOutput { json, timings }),
            });
            return;
        }
        WireOutcome::Expired => FrameFailure::Expired,
        WireOutcome::Lost => FrameFailure::Lost,
        WireOutcome::BadFrame(m) => FrameFailure::BadFrame(m),
        WireOutcome::Failed(m) | WireOutcome::Unsupported(m) => {
            tracing::warn!(worker = %result.worker, error = %m, "remote worker failed a frame");
            FrameFailure::Inference
        }
    };
    shared.drop_reason(&failure);
    waiting.answer_failure(failure);
}

/// Answers the waiting jobs that will get no result: trimmed from the stream
/// before any worker took them, expired untaken, or taken and never answered.
async fn sweep(shared: Arc<Shared>, mut redis: ConnectionManager, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(shared.cfg.sweep_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reply_timeout = Duration::from_millis(shared.cfg.reply_timeout_ms);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Only jobs whose XADD returned before the stream is read are judged:
        // a job added after the read would look trimmed (not in the stream).
        let candidates: Vec<u64> = shared.waiting.lock().keys().copied().collect();
        if candidates.is_empty() {
            continue;
        }
        // Where the group stands: entries up to `last_delivered` went to a
        // worker or were skipped; undelivered entries older than the
        // stream's first one were trimmed. Without an answer from Redis only
        // the clock rules apply.
        let view = stream_view(&mut redis).await;
        let now = Instant::now();
        let verdicts: Vec<(u64, FrameFailure)> = {
            let mut waiting = shared.waiting.lock();
            candidates
                .into_iter()
                .filter_map(|job| {
                    let w = waiting.get_mut(&job)?;
                    judge(w, view.as_ref(), now, reply_timeout).map(|v| (job, v))
                })
                .collect()
        };
        for (job, failure) in verdicts {
            shared.fail(job, failure);
        }
    }
}

/// How long a job may stay unanswered once its entry is behind the
/// workers' read position, gone from the stream and held by no worker. Such
/// a job was either answered (the worker writes the result in the same
/// `MULTI` as its `XACK`, so the result is already in our stream and its
/// reader is about to see it) or trimmed before any worker reached it
/// (workers read on past it); past this it was the latter.
const UNHELD_GRACE: Duration = Duration::from_millis(250);

/// What a sweep makes of one waiting job, given the jobs stream's state.
fn judge(
    w: &mut WaitingJob,
    view: Option<&StreamView>,
    now: Instant,
    reply_timeout: Duration,
) -> Option<FrameFailure> {
    let trimmed = |v: &StreamView, id: EntryId| v.first.is_none_or(|first| id < first);
    match (w.entry, view) {
        (Some(id), Some(v)) if id > v.last_delivered => {
            if trimmed(v, id) {
                Some(FrameFailure::Overloaded)
            } else if now > w.deadline {
                Some(FrameFailure::Expired)
            } else {
                None
            }
        }
        (Some(id), Some(v)) if trimmed(v, id) && !v.pending.contains(&id) => {
            let since = *w.unheld_since.get_or_insert(now);
            (now.duration_since(since) >= UNHELD_GRACE).then_some(FrameFailure::Overloaded)
        }
        _ if now > w.deadline + reply_timeout => Some(FrameFailure::Lost),
        _ => None,
    }
}

/// What the gateway needs to know of the jobs stream.
struct StreamView {
    last_delivered: EntryId,
    first: Option<EntryId>,
    /// Entries delivered to a worker and not yet acknowledged.
    pending: std::collections::HashSet<EntryId>,
}

async fn stream_view(redis: &mut ConnectionManager) -> Option<StreamView> {
    let (groups, first, pending): (
        redis::streams::StreamInfoGroupsReply,
        redis::streams::StreamRangeReply,
        redis::streams::StreamPendingCountReply,
    ) = redis::pipe()
        .cmd("XINFO")
        .arg("GROUPS")
        .arg(JOBS_STREAM)
        .cmd("XRANGE")
        .arg(JOBS_STREAM)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        // Workers hold one job per thread: the whole list is short.
        .cmd("XPENDING")
        .arg(JOBS_STREAM)
        .arg(WORKERS_GROUP)
        .arg("-")
        .arg("+")
        .arg(MAX_PENDING_READ)
        .query_async(redis)
        .await
        .map_err(|e| tracing::debug!(error = %e, "reading the jobs stream's state failed"))
        .ok()?;
    let group = groups.groups.iter().find(|g| g.name == WORKERS_GROUP)?;
    Some(StreamView {
        last_delivered: group.last_delivered_id.parse().ok()?,
        first: first.ids.first().and_then(|e| e.id.parse().ok()),
        pending: pending
            .ids
            .iter()
            .filter_map(|p| p.id.parse().ok())
            .collect(),
    })
}

/// Pending entries a sweep reads (far more than all workers' threads).
const MAX_PENDING_READ: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: Fields) -> StreamId {
        StreamId {
            id: "1-0".into(),
            map: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), Value::BulkString(v)))
                .collect(),
            ..Default::default()
        }
    }

    fn waiting_job(deadline: Instant, entry: EntryId) -> WaitingJob {
        WaitingJob {
            seq: 1,
            capture_ts: 0.0,
            arrived: Instant::now(),
            deadline,
            entry: Some(entry),
            tracking: TrackingState::default(),
            reply: oneshot::channel().0,
            unheld_since: None,
        }
    }

    /// A burst: workers read past entries that were trimmed before any
    /// worker reached them. Such a job is answered overloaded (after the
    /// grace that lets a real answer arrive), not left to be declared lost
    /// at its deadline; a job a worker holds is left alone.
    #[test]
    fn a_trimmed_job_behind_the_read_position_is_overloaded_not_lost() {
        let id = |ms: u64| EntryId { ms, seq: 0 };
        let view = StreamView {
            last_delivered: id(40),
            first: Some(id(36)),
            pending: [id(35)].into_iter().collect(),
        };
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(20);
        let timeout = Duration::from_secs(5);

        let mut skipped = waiting_job(deadline, id(2));
        assert_eq!(judge(&mut skipped, Some(&view), t0, timeout), None);
        assert_eq!(
            judge(&mut skipped, Some(&view), t0 + UNHELD_GRACE, timeout),
            Some(FrameFailure::Overloaded)
        );

        let mut held = waiting_job(deadline, id(35));
        let later = t0 + Duration::from_secs(1);
        assert_eq!(judge(&mut held, Some(&view), later, timeout), None);
        assert_eq!(
            judge(&mut held, Some(&view), deadline + timeout * 2, timeout),
            Some(FrameFailure::Lost)
        );

        // Still in the stream and not yet read: trimmed only once gone.
        let mut queued = waiting_job(deadline, id(41));
        assert_eq!(judge(&mut queued, Some(&view), later, timeout), None);
        let trimmed_view = StreamView {
            first: Some(id(42)),
            ..view
        };
        assert_eq!(
            judge(&mut queued, Some(&trimmed_view), later, timeout),
            Some(FrameFailure::Overloaded)
        );
    }

    #[test]
    fn entry_ids_order_like_redis() {
        let a: EntryId = "1700000000000-9".parse().unwrap();
        let b: EntryId = "1700000000001-0".parse().unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "1700000000000-9");
        assert!("17".parse::<EntryId>().is_err());
        assert!("a-b".parse::<EntryId>().is_err());
    }

    #[test]
    fn job_round_trips_with_raw_jpeg() {
        let job = WireJob {
            gateway: "gw1".into(),
            job: 42,
            ttl_ms: 300,
            mode: Mode::Tracking,
            parts: Parts {
                pose: true,
                face: false,
                hands: true,
            },
            timestamp_us: 123_456,
            tracking: TrackingState::default(),
            jpeg: Bytes::from_static(&[0xFF, 0xD8, 0x00, 0xFF, 0xD9]),
        };
        let fields = job.to_fields();
        let jpeg = fields.iter().find(|(k, _)| *k == "jpeg").unwrap();
        assert_eq!(jpeg.1, vec![0xFF, 0xD8, 0x00, 0xFF, 0xD9]);
        let back = WireJob::from_entry(&entry(fields)).unwrap();
        assert_eq!(
            (back.gateway.as_str(), back.job, back.ttl_ms),
            ("gw1", 42, 300)
        );
        assert!(matches!(back.mode, Mode::Tracking));
        assert!(back.parts.pose && !back.parts.face && back.parts.hands);
        assert_eq!(back.timestamp_us, 123_456);
        assert_eq!(back.jpeg, job.jpeg);
    }

    #[test]
    fn other_versions_are_refused_but_answerable() {
        let mut fields = WireJob {
            gateway: "gw1".into(),
            job: 7,
            ttl_ms: 1,
            mode: Mode::Static,
            parts: Parts {
                pose: true,
                face: true,
                hands: true,
            },
            timestamp_us: 0,
            tracking: TrackingState::default(),
            jpeg: Bytes::new(),
        }
        .to_fields();
        fields[0].1 = b"2".to_vec();
        let e = entry(fields);
        assert_eq!(
            WireJob::from_entry(&e).unwrap_err(),
            WireError::Version("2".into())
        );
        assert_eq!(WireJob::reply_address(&e), Some(("gw1".into(), 7)));
        let bare = entry(vec![("v", b"1".to_vec())]);
        assert!(matches!(
            WireJob::from_entry(&bare),
            Err(WireError::Missing(_))
        ));
        assert_eq!(WireJob::reply_address(&bare), None);
    }

    #[test]
    fn results_round_trip_for_every_status() {
        let outcomes = [
            WireOutcome::Ok {
                landmarks: r#""pose":[],"face":[],"left_hand":[],"right_hand":[]"#.into(),
                tracking: TrackingState::default(),
                timings: WorkerTimings {
                    queue_ms: 1.5,
                    decode_ms: 2.0,
                    infer_ms: 30.0,
                    serialize_ms: 0.25,
                },
            },
            WireOutcome::Expired,
            WireOutcome::Lost,
            WireOutcome::BadFrame("truncated".into()),
            WireOutcome::Failed("panic".into()),
            WireOutcome::Unsupported("v9".into()),
        ];
        for outcome in outcomes {
            let r = WireResult {
                job: 9,
                worker: "w-0".into(),
                outcome,
            };
            let back = WireResult::from_entry(&entry(r.to_fields())).unwrap();
            assert_eq!(back.to_fields(), r.to_fields());
        }
        let unknown = entry(vec![
            ("v", b"1".to_vec()),
            ("job", b"1".to_vec()),
            ("status", b"maybe".to_vec()),
        ]);
        assert!(matches!(
            WireResult::from_entry(&unknown),
            Err(WireError::Malformed("status", _))
        ));
    }

    #[test]
    fn config_validation_names_the_setting() {
        RemotePoolConfig::default().validate().unwrap();
        let c = RemotePoolConfig {
            gateway_id: Some("bad id".into()),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("gateway_id"));
        let c = RemotePoolConfig {
            max_backlog: 0,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("max_backlog"));
    }
}
