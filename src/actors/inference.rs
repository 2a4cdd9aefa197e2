//! The in-process inference workers: a ractor actor per worker, in front of
//! one OS thread that owns the worker's model instance and does all the CPU
//! work (through [`run_frame`], as the remote workers do). Owns the model
//! threads, their supervision and the census of abandoned ones; the queue and
//! its discards are the pool's (`pool`), the job's types are `job`'s.
//!
//! Why a dedicated thread per worker rather than `spawn_blocking`:
//! - the model (`Holistic`, burn modules) is `Send` but not `Sync` and is
//!   loaded once per worker; a thread that owns it for its whole life needs no
//!   locking and never moves the model between threads;
//! - a thread stuck in a forward pass cannot be killed. With an owned thread
//!   the worker can *abandon* it — answer the job as failed, drop the channel
//!   to it (the thread exits after the pass, freeing its model) and be
//!   replaced by a fresh worker with a fresh thread — without taking a slot
//!   of tokio's blocking pool hostage.
//!
//! The actor side stays async: it hands the job to its thread and awaits the
//! answer with the stall deadline, so the async executor never runs decode,
//! forward passes or serialisation.
//!
//! Supervision: when the thread panics (caught, and the thread then exits
//! since its model may be half-updated) or passes the deadline, the worker
//! answers the job, counts `worker_restarts_total{reason}` and fails; the
//! factory, its supervisor, replaces it through [`InferenceWorkerBuilder`].
//! A worker killed by the factory's dead-man's switch is counted as a stall
//! when its state is dropped.
//!
//! Abandoned threads are bounded: each still holds its model until its pass
//! ends, so at most `pool.max_abandoned_threads` may be alive at once. A
//! worker that would need a new thread past that stays unstaffed: it answers
//! its jobs `unavailable` (no restart, no new thread) and the pool reports
//! not ready, until an abandoned thread has ended and the next job staffs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use ractor::factory::{FactoryMessage, Job, Worker, WorkerId};
use ractor::{ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use super::job::{FrameDone, FrameFailure, FrameJob, FrameKey, FrameOutput, PoolJob, run_frame};
use crate::config::{DecodeLimits, FaultPlan, ModelConfig};
use crate::metrics::Metrics;
use crate::model::Holistic;

/// What all workers of a pool share.
pub(crate) struct InferenceShared {
    pub(crate) metrics: Metrics,
    pub(crate) faults: Arc<RwLock<FaultPlan>>,
    pub(crate) stall_deadline: Duration,
    pub(crate) census: ThreadCensus,
    /// Largest frame decoded (`pool.max_frame_width` x `max_frame_height`).
    pub(crate) decode_limits: DecodeLimits,
    /// The nets and the branch policy of every model thread.
    pub(crate) model: ModelConfig,
}

/// Counts abandoned model threads still alive, and workers left without a
/// thread because of them.
#[derive(Default)]
pub(crate) struct ThreadCensus {
    abandoned: AtomicUsize,
    unstaffed: AtomicUsize,
    max_abandoned: usize,
}

impl ThreadCensus {
    pub(crate) fn new(max_abandoned: usize) -> ThreadCensus {
        ThreadCensus {
            max_abandoned,
            ..ThreadCensus::default()
        }
    }

    /// Whether a replacement thread may start now.
    ///
    /// At the cap itself replacing is still allowed: the cap bounds threads
    /// abandoned, and the next abandonment, which would pass it, is what
    /// must not be followed by a new thread.
    fn may_spawn(&self) -> bool {
        self.abandoned.load(Ordering::Acquire) <= self.max_abandoned
    }

    /// Workers without a thread (the pool is degraded while any).
    pub(crate) fn unstaffed(&self) -> usize {
        self.unstaffed.load(Ordering::Acquire)
    }

    /// Abandoned threads still running.
    pub(crate) fn abandoned(&self) -> usize {
        self.abandoned.load(Ordering::Acquire)
    }
}

/// Where a model thread is in its life; decides who decrements the census
/// when abandonment and exit race.
const RUNNING: u8 = 0;
const ABANDONED: u8 = 1;
const EXITED: u8 = 2;

/// Shared between a model thread and its handle.
struct ThreadFate {
    state: AtomicU8,
    shared: Arc<InferenceShared>,
}

impl ThreadFate {
    /// The worker gives up on the thread: counted until the thread exits.
    fn abandon(&self) {
        if self
            .state
            .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let n = self.shared.census.abandoned.fetch_add(1, Ordering::AcqRel) + 1;
            self.shared.metrics.abandoned_threads.set(n as i64);
        }
    }
}

/// Held by the model thread; its drop (normal exit, panic, abandonment
/// ended) uncounts an abandoned thread.
struct ExitGuard(Arc<ThreadFate>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if self.0.state.swap(EXITED, Ordering::AcqRel) == ABANDONED {
            let census = &self.0.shared.census;
            let n = census.abandoned.fetch_sub(1, Ordering::AcqRel) - 1;
            self.0.shared.metrics.abandoned_threads.set(n as i64);
        }
    }
}

/// One job handed to a worker thread.
struct ThreadJob {
    frame: FrameJob,
    queued: Duration,
    answer: oneshot::Sender<ThreadAnswer>,
}

/// A thread's answer: the job's, and whether the thread retired after it
/// (the pipeline panicked: its model may be half-way through a mutation).
struct ThreadAnswer {
    done: FrameDone,
    retired: bool,
}

/// Why a model thread has no model.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelThreadError {
    #[error("loading the model failed: {0}")]
    Load(String),
    #[error("cannot spawn the model thread: {0}")]
    Spawn(String),
    #[error("the model thread died while loading")]
    Died,
}

enum Readiness {
    Loading(oneshot::Receiver<Result<(), ModelThreadError>>),
    Ready,
    Failed(ModelThreadError),
}

/// The OS thread of one worker, owning its model instance.
///
/// Dropping it closes the job channel: the thread finishes the pass it is in
/// (if any), drops its model and exits. Nobody joins it, which is what lets a
/// stalled thread be abandoned.
pub struct ModelThread {
    wid: usize,
    jobs: mpsc::SyncSender<ThreadJob>,
    ready: Readiness,
    fate: Arc<ThreadFate>,
}

impl ModelThread {
    /// Starts the thread; it loads its model right away.
    pub(crate) fn spawn(wid: usize, shared: Arc<InferenceShared>) -> ModelThread {
        // Capacity 1: the worker sends one job and waits for its answer.
        let (jobs, rx) = mpsc::sync_channel::<ThreadJob>(1);
        let (ready_tx, ready_rx) = oneshot::channel();
        let fate = Arc::new(ThreadFate {
            state: AtomicU8::new(RUNNING),
            shared: shared.clone(),
        });
        let guard = ExitGuard(fate.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("inference-{wid}"))
            .spawn(move || {
                let _guard = guard;
                model_thread(shared, rx, ready_tx)
            });
        let ready = match spawned {
            Ok(_detached) => Readiness::Loading(ready_rx),
            Err(e) => Readiness::Failed(ModelThreadError::Spawn(e.to_string())),
        };
        ModelThread {
            wid,
            jobs,
            ready,
            fate,
        }
    }

    /// Waits until the model is loaded.
    pub(crate) async fn wait_ready(&mut self) -> Result<(), ModelThreadError> {
        if let Readiness::Loading(rx) = &mut self.ready {
            self.ready = match rx.await {
                Ok(Ok(())) => Readiness::Ready,
                Ok(Err(e)) => Readiness::Failed(e),
                Err(_) => Readiness::Failed(ModelThreadError::Died),
            };
        }
        match &self.ready {
            Readiness::Ready => Ok(()),
            Readiness::Failed(e) => Err(e.clone()),
            Readiness::Loading(_) => unreachable!("resolved above"),
        }
    }
}

fn model_thread(
    shared: Arc<InferenceShared>,
    jobs: mpsc::Receiver<ThreadJob>,
    ready: oneshot::Sender<Result<(), ModelThreadError>>,
) {
    let started = Instant::now();
    let holistic = match Holistic::load_with(&shared.model) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "loading the Holistic model failed");
            let _ = ready.send(Err(ModelThreadError::Load(e.to_string())));
            return;
        }
    };
    tracing::debug!(elapsed = ?started.elapsed(), "model loaded");
    let _ = ready.send(Ok(()));

    // Ends when the worker drops its sender: on stop, or when it abandoned
    // this thread after a stall.
    while let Ok(ThreadJob {
        frame,
        queued,
        answer,
    }) = jobs.recv()
    {
        let fault = shared.faults.read().draw();
        let done = process_frame(&holistic, &shared, frame, queued, fault);
        let retired = matches!(done.outcome, Err(FrameFailure::WorkerPanicked));
        let _ = answer.send(ThreadAnswer { done, retired });
        if retired {
            // The model may be half-way through a mutation; this thread
            // and its model retire with the worker.
            return;
        }
    }
}

/// One frame on the worker thread: [`run_frame`], then the `result`
/// message or the failure with the state [`FrameFailure::tracking_after`]
/// leaves.
fn process_frame(
    holistic: &Holistic,
    shared: &InferenceShared,
    frame: FrameJob,
    queued: Duration,
    fault: crate::config::Fault,
) -> FrameDone {
    let opts = frame.options();
    let FrameJob {
        seq,
        capture_ts,
        arrived,
        frame: data,
        mut tracking,
        ..
    } = frame;
    let run = run_frame(
        holistic,
        &shared.decode_limits,
        &data,
        &opts,
        &mut tracking,
        queued,
        fault,
    );
    match run {
        Ok(run) => {
            shared
                .metrics
                .inference_seconds
                .observe(run.timings.infer_ms / 1e3);
            FrameDone {
                seq,
                tracking: Some(tracking),
                outcome: Ok(FrameOutput::new(
                    seq,
                    capture_ts,
                    arrived,
                    &run.landmarks,
                    run.timings,
                )),
            }
        }
        Err(failure) => FrameDone {
            seq,
            tracking: Some(failure.tracking_after(tracking)),
            outcome: Err(failure),
        },
    }
}

/// The ractor worker: the actor side of one inference worker.
pub struct InferenceWorker {
    shared: Arc<InferenceShared>,
}

/// State of an [`InferenceWorker`].
pub struct InferenceWorkerState {
    wid: WorkerId,
    thread: Option<ModelThread>,
    metrics: Metrics,
    /// Set once this worker's exit has been accounted for (normal stop, or a
    /// failure already counted); a drop without it means the factory killed
    /// the worker (dead-man's switch).
    exit_counted: bool,
    /// Counted in the census as a worker without a thread.
    unstaffed: bool,
    shared: Arc<InferenceShared>,
}

impl InferenceWorkerState {
    fn set_unstaffed(&mut self, unstaffed: bool) {
        if self.unstaffed != unstaffed {
            self.unstaffed = unstaffed;
            if unstaffed {
                self.shared.census.unstaffed.fetch_add(1, Ordering::AcqRel);
            } else {
                self.shared.census.unstaffed.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl Drop for InferenceWorkerState {
    fn drop(&mut self) {
        self.set_unstaffed(false);
        if !self.exit_counted {
            tracing::warn!(
                worker = self.wid,
                "inference worker killed by the dead-man's switch"
            );
            self.metrics
                .worker_restarts_total
                .with_label_values(&["stall"])
                .inc();
        }
    }
}

impl Worker for InferenceWorker {
    type Key = FrameKey;
    type Message = PoolJob;
    /// A thread already loaded by `InferencePool::start`, or `None` for a
    /// replacement, which starts its own.
    type Arguments = Option<ModelThread>;
    type State = InferenceWorkerState;

    async fn pre_start(
        &self,
        wid: WorkerId,
        _factory: &ActorRef<FactoryMessage<FrameKey, PoolJob>>,
        prepared: Option<ModelThread>,
    ) -> Result<InferenceWorkerState, ActorProcessingErr> {
        // A replacement's model loads on its thread while the factory goes on;
        // the first job waits for it in `handle`. Past the cap on abandoned
        // threads it starts without one.
        let thread = prepared.or_else(|| {
            self.shared
                .census
                .may_spawn()
                .then(|| ModelThread::spawn(wid, self.shared.clone()))
        });
        let mut state = InferenceWorkerState {
            wid,
            thread: None,
            metrics: self.shared.metrics.clone(),
            exit_counted: false,
            unstaffed: false,
            shared: self.shared.clone(),
        };
        match thread {
            Some(t) => state.thread = Some(t),
            None => {
                tracing::warn!(
                    worker = wid,
                    abandoned = self.shared.census.abandoned(),
                    "not replacing the model thread: too many abandoned threads alive"
                );
                state.set_unstaffed(true);
            }
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _wid: WorkerId,
        _factory: &ActorRef<FactoryMessage<FrameKey, PoolJob>>,
        state: &mut InferenceWorkerState,
    ) -> Result<(), ActorProcessingErr> {
        state.exit_counted = true;
        Ok(())
    }

    async fn handle(
        &self,
        wid: WorkerId,
        _factory: &ActorRef<FactoryMessage<FrameKey, PoolJob>>,
        mut job: Job<FrameKey, PoolJob>,
        state: &mut InferenceWorkerState,
    ) -> Result<FrameKey, ActorProcessingErr> {
        let key = job.key.clone();
        let Some(frame) = job.msg.frame.take() else {
            return Ok(key);
        };
        let queued = job.msg.submitted.elapsed();
        let seq = job.msg.seq();
        if state.thread.is_none() {
            if !self.shared.census.may_spawn() {
                // Degraded, not failed: no restart (it would only spin), the
                // job answered at once.
                job.msg.frame = Some(frame);
                job.msg.fail(FrameFailure::Unavailable);
                return Ok(key);
            }
            tracing::info!(
                worker = wid,
                "abandoned threads ended; starting a model thread"
            );
            state.thread = Some(ModelThread::spawn(wid, self.shared.clone()));
            state.set_unstaffed(false);
        }
        // unwrap: staffed just above.
        let thread = state.thread.as_mut().unwrap();
        if let Err(e) = thread.wait_ready().await {
            job.msg.frame = Some(frame);
            job.msg.fail(FrameFailure::Inference);
            state.exit_counted = true;
            return Err(format!("worker {wid}: model unavailable: {e}").into());
        }

        let (answer, answered) = oneshot::channel();
        if thread
            .jobs
            .try_send(ThreadJob {
                frame,
                queued,
                answer,
            })
            .is_err()
        {
            // The thread is gone (it exits only after a panic or when
            // abandoned); the frame went with the failed send.
            self.count_restart(state, "panic");
            job.msg.fail(FrameFailure::WorkerPanicked);
            return Err(format!("worker {wid}: model thread is gone").into());
        }

        match tokio::time::timeout(self.shared.stall_deadline, answered).await {
            Ok(Ok(ThreadAnswer {
                done,
                retired: false,
            })) => {
                job.msg.answer(done);
                Ok(key)
            }
            Ok(Ok(ThreadAnswer {
                done,
                retired: true,
            })) => {
                tracing::warn!(
                    worker = wid,
                    seq,
                    "inference thread panicked; replacing worker"
                );
                self.count_restart(state, "panic");
                job.msg.answer(done);
                Err(format!("worker {wid} panicked").into())
            }
            Ok(Err(_)) => {
                self.count_restart(state, "panic");
                job.msg.fail(FrameFailure::WorkerPanicked);
                Err(format!("worker {wid}: model thread died").into())
            }
            Err(_elapsed) => {
                tracing::warn!(
                    worker = wid,
                    seq,
                    deadline = ?self.shared.stall_deadline,
                    "inference thread stalled; abandoning it and replacing worker"
                );
                // Dropping the thread's handle detaches it; it exits when its
                // pass ends, and is counted until then.
                if let Some(t) = state.thread.take() {
                    t.fate.abandon();
                    tracing::debug!(worker = t.wid, "model thread abandoned");
                }
                self.count_restart(state, "stall");
                job.msg.fail(FrameFailure::WorkerStalled);
                Err(format!("worker {wid} stalled past {:?}", self.shared.stall_deadline).into())
            }
        }
    }
}

impl InferenceWorker {
    /// Counted before the job's error is answered: a client that sees the
    /// error and then reads the metrics must find the restart there.
    fn count_restart(&self, state: &mut InferenceWorkerState, reason: &str) {
        self.shared
            .metrics
            .worker_restarts_total
            .with_label_values(&[reason])
            .inc();
        state.exit_counted = true;
    }
}

/// Builds workers for the factory: first the pre-loaded ones, then fresh
/// replacements.
pub(crate) struct InferenceWorkerBuilder {
    shared: Arc<InferenceShared>,
    prepared: Vec<Option<ModelThread>>,
}

impl InferenceWorkerBuilder {
    pub(crate) fn new(shared: Arc<InferenceShared>, prepared: Vec<ModelThread>) -> Self {
        InferenceWorkerBuilder {
            shared,
            prepared: prepared.into_iter().map(Some).collect(),
        }
    }
}

impl ractor::factory::WorkerBuilder<InferenceWorker, Option<ModelThread>>
    for InferenceWorkerBuilder
{
    fn build(&mut self, wid: WorkerId) -> (InferenceWorker, Option<ModelThread>) {
        let prepared = self.prepared.get_mut(wid).and_then(Option::take);
        (
            InferenceWorker {
                shared: self.shared.clone(),
            },
            prepared,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(max_abandoned: usize) -> Arc<InferenceShared> {
        Arc::new(InferenceShared {
            metrics: Metrics::new(),
            faults: Arc::new(RwLock::new(FaultPlan::none())),
            stall_deadline: Duration::from_millis(100),
            census: ThreadCensus::new(max_abandoned),
            decode_limits: DecodeLimits::CAMERA,
            model: ModelConfig::default(),
        })
    }

    fn fate(shared: &Arc<InferenceShared>) -> Arc<ThreadFate> {
        Arc::new(ThreadFate {
            state: AtomicU8::new(RUNNING),
            shared: shared.clone(),
        })
    }

    #[test]
    fn an_abandoned_thread_is_counted_until_it_exits() {
        let s = shared(1);
        let a = fate(&s);
        a.abandon();
        a.abandon();
        assert_eq!(s.census.abandoned(), 1, "abandoning twice counts once");
        assert!(s.census.may_spawn(), "at the cap a replacement may start");
        let b = fate(&s);
        b.abandon();
        assert_eq!(s.census.abandoned(), 2);
        assert!(!s.census.may_spawn(), "past the cap: no new thread");
        assert_eq!(s.metrics.abandoned_threads.get(), 2);
        drop(ExitGuard(a));
        assert_eq!(s.census.abandoned(), 1);
        assert!(s.census.may_spawn());
        drop(ExitGuard(b));
        assert_eq!(s.census.abandoned(), 0);
        assert_eq!(s.metrics.abandoned_threads.get(), 0);
    }

    #[test]
    fn a_thread_that_exited_before_abandonment_is_not_counted() {
        let s = shared(0);
        let a = fate(&s);
        drop(ExitGuard(a.clone()));
        a.abandon();
        assert_eq!(s.census.abandoned(), 0);
        assert!(s.census.may_spawn());
    }
}
