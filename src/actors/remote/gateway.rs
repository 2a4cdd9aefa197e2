//! The gateway side of the remote pool: a `serve --pool redis` gateway adds
//! its sessions' jobs to the jobs stream and answers them from its own
//! result stream. Owns the waiting jobs and their verdicts; the encodings
//! are `wire`'s, the worker side is `consumer`'s.
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
//!   [`super::consumer`]) and answered it `lost`;
//! - **unavailable**: Redis could not be reached, or the pool is shutting down.
//!
//! Deadlines are on Redis's clock: a job's deadline is the millisecond part
//! of its stream entry id plus its `ttl_ms`, so gateway and worker clocks need
//! not agree.
//!

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use redis::AsyncConnectionConfig;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamReadOptions, StreamReadReply};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::wire::{EntryId, WireJob, WireOutcome, WireResult};
use super::{JOBS_STREAM, WORKERS_GROUP, create_group_cmd, group_exists, results_stream};
use crate::actors::job::{FrameDone, FrameFailure, FrameJob, FrameOutput};
use crate::config::{ConfigError, RemotePoolConfig};
use crate::metrics::{Metrics, REMOTE_JOB_OUTCOMES};
use crate::model::TrackingState;

/// Errors of starting the remote pool.
#[derive(Debug, thiserror::Error)]
pub enum RemotePoolError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the remote pool needs a Redis URL (REDIS_URL or --redis-url)")]
    NoRedisUrl,
    #[error("connecting to Redis for the remote pool failed: {0}")]
    Redis(#[from] redis::RedisError),
}

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
        let tracking = failure.tracking_after(self.tracking);
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
        self.metrics
            .remote_jobs_total
            .with_label_values(&[outcome])
            .inc();
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
        cfg.validate()?;
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
        // The series show zeros from the start (the counter has them only
        // on a gateway with a remote pool).
        for outcome in REMOTE_JOB_OUTCOMES {
            metrics.remote_jobs_total.with_label_values(&[outcome]);
        }
        let shared = Arc::new(Shared {
            results_key: results_stream(&gateway),
            gateway,
            cfg: cfg.clone(),
            waiting: Mutex::new(HashMap::new()),
            next_job: AtomicU64::new(1),
            counters: RemoteCounters::default(),
            metrics,
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
                opts: frame.options(),
                tracking: frame.tracking.clone(),
                frame: frame.frame,
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
            shared
                .metrics
                .inference_seconds
                .observe(timings.infer_ms / 1e3);
            let output = FrameOutput::new(
                waiting.seq,
                waiting.capture_ts,
                waiting.arrived,
                &landmarks,
                timings,
            );
            let _ = waiting.reply.send(FrameDone {
                seq: waiting.seq,
                tracking: Some(tracking),
                outcome: Ok(output),
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
}
