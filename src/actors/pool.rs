//! The inference pool: a typed handle in front of a ractor factory of
//! inference workers.
//!
//! Guarantees the session actors rely on:
//! - **bounded**: jobs wait in one factory queue of `queue_capacity`; when it
//!   is full the *oldest* waiting job is dropped (`DiscardMode::Oldest`), and a
//!   job that waited longer than `job_ttl_ms` is dropped as expired;
//! - **every job is answered exactly once**: with a result, or with the reason
//!   it was not processed (overloaded, expired, worker panicked or stalled,
//!   lost). A [`PoolJob`] that is dropped without an answer — its worker was
//!   killed, the factory stopped — answers `Lost` from its `Drop`, so a
//!   session can never wait forever;
//! - the session's tracking state comes back with the answer whenever the
//!   job did not reach a worker thread (discarded jobs return it untouched).
//!
//! [`InferencePool`] is an enum so a second implementation (remote workers
//! over Redis Streams) can be added as another variant without the sessions
//! knowing which one they talk to.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use ractor::concurrency::JoinHandle;
use ractor::factory::queues::StandardPriority;
use ractor::factory::{
    DeadMansSwitchConfiguration, DiscardHandler, DiscardMode, DiscardReason, DiscardSettings,
    Factory, FactoryArguments, FactoryMessage, FactoryStatsLayer, Job, JobOptions, queues, routing,
};
use ractor::{Actor, ActorRef};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::PoolConfig;
use super::faults::FaultPlan;
use super::protocol::{ErrorCode, FrameTimings};
use super::remote::{PoolKind, RemotePool, RemotePoolError};
use super::worker::{
    InferenceWorker, InferenceWorkerBuilder, ModelThread, ThreadCensus, WorkerShared,
};
use crate::http::Metrics;
use crate::model::{Mode, Parts, TrackingState};

/// One frame for the pool: the JPEG, what to compute, and the session's
/// tracking state, which comes back in the [`FrameDone`].
#[derive(Debug)]
pub struct FrameJob {
    /// The session (cookie uuid) the frame belongs to, for logs.
    pub session: Uuid,
    /// The connection id, unique per WebSocket (a session may have several).
    pub conn: u64,
    /// Client frame number.
    pub seq: u32,
    /// Client capture time in ms, echoed back.
    pub capture_ts: f64,
    /// When the frame arrived at the session; `total_ms` counts from here.
    pub arrived: Instant,
    /// The JPEG bytes (decoded by the worker, off the async threads).
    pub jpeg: Bytes,
    /// Parts to compute.
    pub parts: Parts,
    /// Static images or a live stream (tracking between frames).
    pub mode: Mode,
    /// Frame time in µs, monotonic per session (for the pipeline's filters).
    pub timestamp_us: i64,
    /// The session's tracking state, handed to the pipeline for this frame.
    pub tracking: TrackingState,
    /// How long the session has gone without a result when it sends this
    /// frame. Under overload the local pool serves the most starved sessions
    /// first (see [`FramePriority`]), so every client keeps getting results
    /// instead of a lucky few.
    pub starved: Duration,
}

/// A processed frame: the text of the `result` message and its timings.
#[derive(Debug, Clone)]
pub struct FrameOutput {
    /// The complete `{"type":"result",…}` message.
    pub json: String,
    /// Per-stage times (also inside `json`).
    pub timings: FrameTimings,
}

/// Why a frame produced no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameFailure {
    /// The JPEG could not be decoded (truncated, corrupt, too large).
    #[error("bad frame: {0}")]
    BadFrame(String),
    /// The pipeline returned an error for this image.
    #[error("inference failed")]
    Inference,
    /// The worker thread panicked on this frame; the worker was replaced.
    #[error("inference worker failed (panic) and was replaced")]
    WorkerPanicked,
    /// The worker thread passed its deadline on this frame; it was abandoned
    /// and the worker replaced.
    #[error("inference worker stalled past its deadline and was replaced")]
    WorkerStalled,
    /// The pool's queue was full; this (oldest) job was shed.
    #[error("inference pool overloaded, frame dropped")]
    Overloaded,
    /// The job waited longer than its time to live.
    #[error("frame expired in the inference queue")]
    Expired,
    /// The job vanished without an answer (its worker was killed).
    #[error("frame lost by the inference pool")]
    Lost,
    /// The pool is shutting down or stopped.
    #[error("inference pool unavailable")]
    Unavailable,
}

impl FrameFailure {
    /// The wire code of the `error` message for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameFailure::BadFrame(_) => ErrorCode::BadFrame,
            FrameFailure::Inference
            | FrameFailure::WorkerPanicked
            | FrameFailure::WorkerStalled => ErrorCode::WorkerFailed,
            FrameFailure::Overloaded => ErrorCode::Overloaded,
            FrameFailure::Expired => ErrorCode::Expired,
            FrameFailure::Lost => ErrorCode::Lost,
            FrameFailure::Unavailable => ErrorCode::Unavailable,
        }
    }
}

/// The pool's answer to one [`FrameJob`].
#[derive(Debug)]
pub struct FrameDone {
    /// The frame's `seq`.
    pub seq: u32,
    /// The new tracking state; `None` when it was lost with the job (the
    /// session then starts over with a fresh one).
    pub tracking: Option<TrackingState>,
    /// The result, or why there is none.
    pub outcome: Result<FrameOutput, FrameFailure>,
}

/// Errors of the pool's boundary.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("invalid pool configuration: {0}")]
    Config(String),
    #[error("loading the model for worker {worker} failed: {message}")]
    Model { worker: usize, message: String },
    #[error("starting the worker factory failed: {0}")]
    Spawn(String),
    #[error(transparent)]
    Remote(#[from] RemotePoolError),
}

/// Routing key of a job in the factory: unique per in-flight frame, with
/// the frame's queue priority.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FrameKey {
    pub conn: u64,
    pub seq: u32,
    pub priority: StandardPriority,
}

/// Queue priority from starvation, so that under overload the pool goes
/// round the sessions instead of serving whichever frames happen to arrive
/// when a worker frees up.
///
/// Each session has at most one job in the queue, and a job that waits past
/// the TTL expires; with plain FIFO and a TTL of about one frame interval,
/// which session gets a worker is a lottery, and some clients got no result
/// for seconds while others got several a second (16 clients on 2 workers:
/// 0.0 to 1.1 results/s). Starved sessions jump the queue, and a session
/// starved past [`FramePriority::STARVED`] also gets a longer TTL, so its
/// frame waits for its turn instead of expiring again.
#[derive(Debug, Clone, Copy, Default)]
pub struct FramePriority;

impl FramePriority {
    /// Past this without a result a session's frame waits its turn
    /// (TTL [`FramePriority::STARVED_TTL`]).
    pub const STARVED: Duration = Duration::from_millis(1000);
    /// TTL of a starved session's frame.
    pub const STARVED_TTL: Duration = Duration::from_millis(2000);

    /// Priority of a frame whose session has gone `starved` without a result.
    pub fn of(starved: Duration) -> StandardPriority {
        match starved.as_millis() {
            0..250 => StandardPriority::Normal,
            250..500 => StandardPriority::Important,
            500..1000 => StandardPriority::High,
            _ => StandardPriority::Highest,
        }
    }

    /// TTL of a frame: the pool's, or longer for a starved session.
    pub fn ttl(starved: Duration, job_ttl: Duration) -> Duration {
        if starved >= Self::STARVED {
            job_ttl.max(Self::STARVED_TTL)
        } else {
            job_ttl
        }
    }
}

impl queues::PriorityManager<FrameKey, StandardPriority> for FramePriority {
    fn is_discardable(&self, _key: &FrameKey) -> bool {
        // Every frame may be shed when the queue is full: the session just
        // sends its next one.
        true
    }

    fn get_priority(&self, key: &FrameKey) -> Option<StandardPriority> {
        Some(key.priority)
    }
}

/// The factory's message: a frame plus the port its answer goes to.
///
/// Dropping a `PoolJob` that has not been answered answers it `Lost`.
pub struct PoolJob {
    pub(crate) frame: Option<FrameJob>,
    reply: Option<oneshot::Sender<FrameDone>>,
    seq: u32,
    /// When the job was handed to the pool (for `queue_ms`).
    pub(crate) submitted: Instant,
}

impl std::fmt::Debug for PoolJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolJob")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl PoolJob {
    pub(crate) fn seq(&self) -> u32 {
        self.seq
    }

    /// Sends the answer (once; later calls do nothing).
    pub(crate) fn answer(&mut self, done: FrameDone) {
        if let Some(tx) = self.reply.take() {
            // The session may be gone already; nothing to tell then.
            let _ = tx.send(done);
        }
    }

    /// Answers with a failure, returning the tracking state if the frame is
    /// still here (it never reached a worker thread).
    pub(crate) fn fail(&mut self, failure: FrameFailure) {
        let tracking = self.frame.take().map(|f| f.tracking);
        let seq = self.seq;
        self.answer(FrameDone {
            seq,
            tracking,
            outcome: Err(failure),
        });
    }
}

impl Drop for PoolJob {
    fn drop(&mut self) {
        if self.reply.is_some() {
            self.fail(FrameFailure::Lost);
        }
    }
}

pub(crate) type PoolFactoryMsg = FactoryMessage<FrameKey, PoolJob>;

/// Answers shed and expired jobs, so their sessions move on.
struct AnswerDiscarded;

impl DiscardHandler<FrameKey, PoolJob> for AnswerDiscarded {
    fn discard(&self, reason: DiscardReason, job: &mut Job<FrameKey, PoolJob>) {
        let failure = match reason {
            DiscardReason::TtlExpired => FrameFailure::Expired,
            DiscardReason::Loadshed | DiscardReason::RateLimited => FrameFailure::Overloaded,
            DiscardReason::Shutdown => FrameFailure::Unavailable,
        };
        job.msg.fail(failure);
    }
}

/// Mirrors the factory's queue depth (sampled every 100 ms) into `/metrics`.
struct QueueDepthGauge(Metrics);

impl FactoryStatsLayer for QueueDepthGauge {
    fn record_queue_depth(&self, _factory: &str, depth: usize) {
        self.0.queue_depth.set(depth as i64);
    }
}

/// The in-process pool: a ractor factory of [`InferenceWorker`]s.
pub struct LocalPool {
    factory: ActorRef<PoolFactoryMsg>,
    factory_task: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<WorkerShared>,
    faults: Arc<RwLock<FaultPlan>>,
    job_ttl: Duration,
    stall_deadline: Duration,
    workers: usize,
}

/// Cloneable handle to the inference pool used by the session actors.
#[derive(Clone)]
pub enum InferencePool {
    /// Workers in this process.
    Local(Arc<LocalPool>),
    /// `holistream worker` processes reached over Redis Streams
    /// (`pool.kind = "redis"`, see [`super::remote`]).
    Remote(Arc<RemotePool>),
}

type PoolFactory = Factory<
    FrameKey,
    PoolJob,
    Option<ModelThread>,
    InferenceWorker,
    routing::QueuerRouting<FrameKey, PoolJob>,
    FrameQueue,
>;

/// The factory's queue: one FIFO per [`StandardPriority`].
type FrameQueue = queues::PriorityQueue<
    FrameKey,
    PoolJob,
    StandardPriority,
    FramePriority,
    { StandardPriority::size() },
>;

impl InferencePool {
    /// Starts `cfg.workers` workers, each loading its own model instance on
    /// its own thread, and returns once all of them are ready (or the first
    /// load failed), so a server never reports ready without a model.
    pub async fn start(cfg: &PoolConfig, metrics: Metrics) -> Result<InferencePool, PoolError> {
        cfg.validate().map_err(PoolError::Config)?;
        if cfg.kind == PoolKind::Redis {
            let url = cfg.remote.redis_url.as_deref();
            let remote = RemotePool::start(&cfg.remote, url, metrics).await?;
            return Ok(InferencePool::Remote(Arc::new(remote)));
        }
        let faults = Arc::new(RwLock::new(cfg.faults));
        let stall_deadline = Duration::from_millis(cfg.stall_deadline_ms);
        let shared = Arc::new(WorkerShared {
            metrics: metrics.clone(),
            faults: faults.clone(),
            stall_deadline,
            census: ThreadCensus::new(cfg.max_abandoned_threads),
            decode_limits: cfg.decode_limits().map_err(PoolError::Config)?,
        });

        // Load the models concurrently, one per worker thread.
        let mut threads = Vec::with_capacity(cfg.workers);
        for wid in 0..cfg.workers {
            threads.push(ModelThread::spawn(wid, shared.clone()));
        }
        for (wid, thread) in threads.iter_mut().enumerate() {
            thread
                .wait_ready()
                .await
                .map_err(|message| PoolError::Model {
                    worker: wid,
                    message,
                })?;
        }

        let worker_builder: Box<
            dyn ractor::factory::WorkerBuilder<InferenceWorker, Option<ModelThread>>,
        > = Box::new(InferenceWorkerBuilder::new(shared.clone(), threads));
        let args = FactoryArguments::builder()
            .worker_builder(worker_builder)
            .num_initial_workers(cfg.workers)
            .router(Default::default())
            .queue(FrameQueue::new(FramePriority))
            .discard_handler(Arc::new(AnswerDiscarded) as Arc<dyn DiscardHandler<_, _>>)
            .discard_settings(DiscardSettings::Static {
                limit: cfg.queue_capacity,
                mode: DiscardMode::Oldest,
            })
            // Backstop only: each worker enforces `stall_deadline` on its own
            // thread (see `worker`), which is what answers the job and
            // replaces the worker promptly. The factory pings workers only
            // every 10 s, so its switch catches a worker actor whose mailbox
            // stopped moving altogether, at twice the deadline.
            .dead_mans_switch(
                DeadMansSwitchConfiguration::builder()
                    .detection_timeout(stall_deadline * 2)
                    .kill_worker(true)
                    .build(),
            )
            .stats(Arc::new(QueueDepthGauge(metrics.clone())) as Arc<dyn FactoryStatsLayer>)
            .build();
        let (factory, factory_task) = Actor::spawn(None, PoolFactory::default(), args)
            .await
            .map_err(|e| PoolError::Spawn(e.to_string()))?;

        Ok(InferencePool::Local(Arc::new(LocalPool {
            factory,
            factory_task: Mutex::new(Some(factory_task)),
            shared,
            faults,
            job_ttl: Duration::from_millis(cfg.job_ttl_ms),
            stall_deadline,
            workers: cfg.workers,
        })))
    }

    /// Hands a frame to the pool. The returned future always resolves, with
    /// a result or the reason there is none.
    pub fn submit(&self, frame: FrameJob) -> BoxFuture<'static, FrameDone> {
        match self {
            InferencePool::Local(pool) => pool.submit(frame),
            InferencePool::Remote(pool) => pool.submit(frame),
        }
    }

    /// Replaces the fault-injection plan; workers use it from their next job.
    pub fn set_faults(&self, plan: FaultPlan) {
        match self {
            InferencePool::Local(pool) => *pool.faults.write() = plan,
            // Faults are injected by local workers only.
            InferencePool::Remote(_) => {
                tracing::warn!(?plan, "fault injection ignored: the pool is remote")
            }
        }
    }

    /// The fault-injection plan in force.
    pub fn faults(&self) -> FaultPlan {
        match self {
            InferencePool::Local(pool) => *pool.faults.read(),
            InferencePool::Remote(_) => FaultPlan::none(),
        }
    }

    /// Why the pool cannot serve as configured, if it cannot: workers left
    /// without a model thread because too many stalled threads are still
    /// running (`pool.max_abandoned_threads`).
    pub fn degraded(&self) -> Option<String> {
        match self {
            InferencePool::Local(pool) => {
                let unstaffed = pool.shared.census.unstaffed();
                (unstaffed > 0).then(|| {
                    format!(
                        "{unstaffed} inference worker(s) without a model thread: {} abandoned thread(s) still running",
                        pool.shared.census.abandoned()
                    )
                })
            }
            InferencePool::Remote(_) => None,
        }
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        match self {
            InferencePool::Local(pool) => pool.workers,
            // Remote workers come and go; this process runs none.
            InferencePool::Remote(_) => 0,
        }
    }

    /// Stops taking jobs, lets queued and running jobs finish, and stops the
    /// workers; after `stall_deadline + 1 s` whatever is left is killed (its
    /// jobs are answered `Lost`). Idempotent.
    pub async fn shutdown(&self) {
        match self {
            InferencePool::Local(pool) => pool.shutdown().await,
            InferencePool::Remote(pool) => pool.shutdown().await,
        }
    }
}

impl LocalPool {
    fn submit(&self, frame: FrameJob) -> BoxFuture<'static, FrameDone> {
        let (tx, rx) = oneshot::channel();
        let seq = frame.seq;
        let key = FrameKey {
            conn: frame.conn,
            seq,
            priority: FramePriority::of(frame.starved),
        };
        let ttl = FramePriority::ttl(frame.starved, self.job_ttl);
        let job = PoolJob {
            frame: Some(frame),
            reply: Some(tx),
            seq,
            submitted: Instant::now(),
        };
        if let Err(err) = self
            .factory
            .dispatch_with_options(key, job, JobOptions::new(Some(ttl)))
        {
            // The factory is gone: the job comes back inside the error; answer it.
            if let ractor::MessagingErr::SendErr(FactoryMessage::Dispatch(mut job)) = *err {
                job.msg.fail(FrameFailure::Unavailable);
            }
        }
        Box::pin(async move {
            // `PoolJob` answers on drop, so a closed channel means the answer
            // was dropped with the session's own future; treat it as lost.
            rx.await.unwrap_or(FrameDone {
                seq,
                tracking: None,
                outcome: Err(FrameFailure::Lost),
            })
        })
    }

    async fn shutdown(&self) {
        let Some(task) = self.factory_task.lock().take() else {
            return;
        };
        // Draining: the factory refuses new jobs (answered `Unavailable` by
        // the discard handler), finishes the queue, then stops its workers.
        let _ = self.factory.cast(FactoryMessage::DrainRequests);
        let budget = self.stall_deadline + Duration::from_secs(1);
        let mut task = task;
        if tokio::time::timeout(budget, &mut task).await.is_err() {
            tracing::warn!("inference pool did not drain within {budget:?}; killing it");
            self.factory.kill();
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }
}

#[cfg(test)]
mod priority_tests {
    use super::*;
    use ractor::factory::queues::Priority;

    #[test]
    fn starved_sessions_come_first_and_wait_longer() {
        let ms = Duration::from_millis;
        assert_eq!(FramePriority::of(ms(0)), StandardPriority::Normal);
        assert_eq!(FramePriority::of(ms(249)), StandardPriority::Normal);
        assert_eq!(FramePriority::of(ms(250)), StandardPriority::Important);
        assert_eq!(FramePriority::of(ms(700)), StandardPriority::High);
        assert_eq!(FramePriority::of(ms(1000)), StandardPriority::Highest);
        assert_eq!(FramePriority::of(ms(60_000)), StandardPriority::Highest);
        // Lower index = served first (ractor's `PriorityQueue`).
        assert!(StandardPriority::Highest.get_index() < StandardPriority::Normal.get_index());
        let ttl = ms(100);
        assert_eq!(FramePriority::ttl(ms(999), ttl), ttl);
        assert_eq!(FramePriority::ttl(ms(1000), ttl), ms(2000));
        // A pool configured with a longer TTL keeps it.
        assert_eq!(FramePriority::ttl(ms(5000), ms(5000)), ms(5000));
    }
}
