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
use std::time::Duration;

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

use super::inference::{InferenceWorker, InferenceWorkerBuilder};
use super::job::{FrameDone, FrameFailure, FrameJob, FrameKey, PoolJob};
use super::model_thread::{InferenceShared, ModelThreadError, ThreadCensus};
use super::remote::gateway::{RemotePool, RemotePoolError};
use crate::config::{ConfigError, FaultPlan, ModelConfig, PoolConfig, PoolKind};
use crate::metrics::Metrics;

/// Errors of the pool's boundary.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("inference worker {worker}: {source}")]
    Model {
        worker: usize,
        source: ModelThreadError,
    },
    #[error("starting the worker factory failed: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    #[error(transparent)]
    Remote(#[from] RemotePoolError),
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
    shared: Arc<InferenceShared>,
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
    (),
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
    pub async fn start(
        cfg: &PoolConfig,
        model: &ModelConfig,
        metrics: Metrics,
    ) -> Result<InferencePool, PoolError> {
        cfg.validate()?;
        if cfg.kind == PoolKind::Redis {
            let url = cfg.remote.redis_url.as_deref();
            let remote = RemotePool::start(&cfg.remote, url, metrics).await?;
            return Ok(InferencePool::Remote(Arc::new(remote)));
        }
        let faults = Arc::new(RwLock::new(cfg.faults));
        let stall_deadline = Duration::from_millis(cfg.stall_deadline_ms);
        let batch = cfg.batch_size(model.nets().batches())?;
        let shared = Arc::new(InferenceShared {
            metrics: metrics.clone(),
            faults: faults.clone(),
            stall_deadline,
            census: ThreadCensus::new(cfg.max_abandoned_threads),
            decode_limits: cfg.decode_limits()?,
            model: *model,
            batch,
            batch_wait: Duration::from_millis(cfg.max_batch_wait_ms),
            threads: InferenceShared::thread_slots(cfg.workers, batch),
        });

        // Load the models concurrently: one thread per worker, or per group
        // of `batch` workers.
        let mut threads = Vec::new();
        for wid in (0..cfg.workers).step_by(batch) {
            let thread = shared.thread_for(wid).ok_or(PoolError::Model {
                worker: wid,
                source: ModelThreadError::Spawn("no thread slot".into()),
            })?;
            threads.push((wid, thread));
        }
        for (wid, thread) in &threads {
            if let Err(source) = thread.wait_ready().await {
                shared.release_threads();
                return Err(PoolError::Model {
                    worker: *wid,
                    source,
                });
            }
        }
        drop(threads);
        if batch > 1 {
            tracing::info!(
                batch,
                wait_ms = cfg.max_batch_wait_ms,
                "model threads batch frames across sessions"
            );
        }

        let worker_builder: Box<dyn ractor::factory::WorkerBuilder<InferenceWorker, ()>> =
            Box::new(InferenceWorkerBuilder::new(shared.clone()));
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
        let (factory, factory_task) = Actor::spawn(None, PoolFactory::default(), args).await?;

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

impl Drop for LocalPool {
    /// The thread slots and the threads' fates hold each other (a cycle of
    /// `Arc`s): broken here for a pool dropped without `shutdown`.
    fn drop(&mut self) {
        self.shared.release_threads();
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
        let job = PoolJob::new(frame, tx);
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
        self.shared.release_threads();
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
