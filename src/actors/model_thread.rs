//! The model threads of the in-process pool: one OS thread per inference
//! worker (per group of `pool.max_batch` workers when batching) that owns
//! the nets and does all the CPU work of a frame (through [`run_frame`], as
//! the remote workers do), the census of abandoned ones, and what a worker
//! and its thread share. The worker actors in front of them are
//! `inference`'s.
//!
//! Why a dedicated thread rather than `spawn_blocking`:
//! - the model (`Holistic`, burn modules) is `Send` but not `Sync` and is
//!   loaded once per thread; a thread that owns it for its whole life needs
//!   no locking and never moves the model between threads;
//! - a thread stuck in a forward pass cannot be killed. With an owned thread
//!   a worker can *abandon* it — answer the job as failed and be replaced —
//!   and the thread exits after its pass, freeing its model, without taking
//!   a slot of tokio's blocking pool hostage.
//!
//! Abandoned threads are bounded: each still holds its model until its pass
//! ends, so at most `pool.max_abandoned_threads` may be alive at once
//! ([`ThreadCensus`]).
//!
//! Batching (`pool.max_batch` above 1, nets on a GPU): workers are grouped
//! by `max_batch` around one model thread, which takes the jobs its group
//! has waiting (the first waits at most `pool.max_batch_wait_ms` for
//! company) and runs them together through [`Batched`]. Each worker still
//! hands over one job and waits for its answer with the same deadline; a
//! stall abandons the group's thread and whichever worker comes next starts
//! the group a new one. With batches of 1 (the CPU) every worker has its
//! own thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch};

use super::job::{FrameDone, FrameFailure, FrameJob, FrameOutput, run_frame};
use crate::config::{DecodeLimits, FaultPlan, ModelConfig};
use crate::metrics::Metrics;
use crate::model::{Batched, Holistic};

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
    /// Frames a model thread runs together (1: one worker, one thread).
    pub(crate) batch: usize,
    /// How long the first frame of a batch waits for company.
    pub(crate) batch_wait: Duration,
    /// The model thread of each group of `batch` workers (worker `wid` is in
    /// group `wid / batch`), once started.
    pub(crate) threads: Vec<Mutex<Option<Arc<ModelThread>>>>,
}

impl InferenceShared {
    /// Empty thread slots for `workers` workers in batches of `batch`.
    pub(crate) fn thread_slots(
        workers: usize,
        batch: usize,
    ) -> Vec<Mutex<Option<Arc<ModelThread>>>> {
        (0..workers.div_ceil(batch.max(1)))
            .map(|_| Mutex::new(None))
            .collect()
    }

    /// The live model thread of `wid`'s group, started if there is none;
    /// `None` past the cap on abandoned threads.
    pub(crate) fn thread_for(self: &Arc<Self>, wid: usize) -> Option<Arc<ModelThread>> {
        let group = (wid / self.batch.max(1)).min(self.threads.len().saturating_sub(1));
        let mut slot = self.threads.get(group)?.lock();
        if let Some(thread) = slot.as_ref().filter(|t| t.alive()) {
            return Some(thread.clone());
        }
        // Abandoned or retired: not handed out again.
        slot.take();
        if !self.census.may_spawn() {
            return None;
        }
        let thread = Arc::new(ModelThread::spawn(group, self.clone()));
        *slot = Some(thread.clone());
        Some(thread)
    }

    /// Lets every model thread go (each exits after its pass): on shutdown,
    /// once the workers are gone.
    pub(crate) fn release_threads(&self) {
        for slot in &self.threads {
            slot.lock().take();
        }
    }
}

/// Counts abandoned model threads still alive, and workers left without a
/// thread because of them.
#[derive(Default)]
pub(crate) struct ThreadCensus {
    abandoned: AtomicUsize,
    pub(super) unstaffed: AtomicUsize,
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
    pub(super) fn may_spawn(&self) -> bool {
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
pub(super) struct ThreadFate {
    state: AtomicU8,
    shared: Arc<InferenceShared>,
}

impl ThreadFate {
    /// The worker gives up on the thread: counted until the thread exits.
    pub(super) fn abandon(&self) {
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
pub(super) struct ExitGuard(pub(super) Arc<ThreadFate>);

impl ExitGuard {
    /// A worker gave up on this thread during its pass: it exits after it,
    /// whoever still holds a handle (its group's idle workers may).
    fn abandoned(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == ABANDONED
    }

    /// The thread is about to exit (its nets may be broken): marked before
    /// its last answers go out, so no worker hands it another job.
    fn retire(&self) {
        let _ = self
            .0
            .state
            .compare_exchange(RUNNING, EXITED, Ordering::AcqRel, Ordering::Acquire);
    }
}

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
pub(super) struct ThreadJob {
    pub(super) frame: FrameJob,
    pub(super) queued: Duration,
    pub(super) answer: oneshot::Sender<ThreadAnswer>,
}

/// A thread's answer: the job's, and whether the thread retired after it
/// (the pipeline panicked: its model may be half-way through a mutation).
pub(super) struct ThreadAnswer {
    pub(super) done: FrameDone,
    pub(super) retired: bool,
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

/// Whether the model is loaded: `None` while loading.
type Ready = Option<Result<(), ModelThreadError>>;

/// The OS thread of one worker (of a group of `pool.max_batch` workers when
/// batching), owning its model instance.
///
/// Dropping the last handle closes the job channel: the thread finishes the
/// pass it is in (if any), drops its model and exits. Nobody joins it, which
/// is what lets a stalled thread be abandoned.
pub struct ModelThread {
    pub(super) group: usize,
    pub(super) jobs: mpsc::SyncSender<ThreadJob>,
    ready: watch::Receiver<Ready>,
    pub(super) fate: Arc<ThreadFate>,
}

impl ModelThread {
    /// Starts the thread of worker group `group`; it loads its model right
    /// away.
    pub(crate) fn spawn(group: usize, shared: Arc<InferenceShared>) -> ModelThread {
        // One job per worker of the group: each sends one and waits for its
        // answer.
        let (jobs, rx) = mpsc::sync_channel::<ThreadJob>(shared.batch.max(1));
        let (ready_tx, ready_rx) = watch::channel(None);
        let fate = Arc::new(ThreadFate {
            state: AtomicU8::new(RUNNING),
            shared: shared.clone(),
        });
        let guard = ExitGuard(fate.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("inference-{group}"))
            .spawn(move || model_thread(shared, rx, ready_tx, guard));
        if let Err(e) = spawned {
            // The guard went with the closure: this thread never ran.
            fate.state.store(EXITED, Ordering::Release);
            let (failed, ready_rx) =
                watch::channel(Some(Err(ModelThreadError::Spawn(e.to_string()))));
            drop(failed);
            return ModelThread {
                group,
                jobs,
                ready: ready_rx,
                fate,
            };
        }
        ModelThread {
            group,
            jobs,
            ready: ready_rx,
            fate,
        }
    }

    /// Waits until the model is loaded.
    pub(crate) async fn wait_ready(&self) -> Result<(), ModelThreadError> {
        let mut ready = self.ready.clone();
        match ready.wait_for(Option::is_some).await {
            Ok(state) => state.clone().unwrap_or(Err(ModelThreadError::Died)),
            Err(_) => Err(ModelThreadError::Died),
        }
    }

    /// Neither abandoned nor exited: it may take jobs.
    pub(super) fn alive(&self) -> bool {
        self.fate.state.load(Ordering::Acquire) == RUNNING
    }
}

/// A model thread's nets: its own pipeline (a batch of 1), or a device's
/// nets for its group's batches.
enum ThreadModel {
    One(Holistic),
    Batch(Batched),
}

fn load_model(shared: &InferenceShared) -> Result<ThreadModel, ModelThreadError> {
    let load = |e: crate::model::ModelError| ModelThreadError::Load(e.to_string());
    if shared.batch > 1 {
        let nets = shared.model.nets().load().map_err(|e| load(e.into()))?;
        Ok(ThreadModel::Batch(Batched::new(nets, shared.batch)))
    } else {
        Ok(ThreadModel::One(
            Holistic::load_with(&shared.model).map_err(load)?,
        ))
    }
}

fn model_thread(
    shared: Arc<InferenceShared>,
    jobs: mpsc::Receiver<ThreadJob>,
    ready: watch::Sender<Ready>,
    guard: ExitGuard,
) {
    let started = Instant::now();
    let model = match load_model(&shared) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "loading the Holistic model failed");
            guard.retire();
            let _ = ready.send(Some(Err(e)));
            return;
        }
    };
    tracing::debug!(elapsed = ?started.elapsed(), "model loaded");
    let _ = ready.send(Some(Ok(())));

    // Ends when the last worker drops its sender: on stop, or when the
    // thread was abandoned after a stall.
    match model {
        ThreadModel::One(holistic) => {
            while let Ok(ThreadJob {
                frame,
                queued,
                answer,
            }) = jobs.recv()
            {
                let fault = shared.faults.read().draw();
                let done = process_frame(&holistic, &shared, frame, queued, fault);
                let retired = matches!(done.outcome, Err(FrameFailure::WorkerPanicked));
                if retired {
                    // The model may be half-way through a mutation; this
                    // thread and its model retire with the worker.
                    guard.retire();
                }
                let _ = answer.send(ThreadAnswer { done, retired });
                if retired || guard.abandoned() {
                    return;
                }
            }
        }
        ThreadModel::Batch(mut batched) => {
            while let Some(batch) = next_batch(&jobs, shared.batch, shared.batch_wait) {
                if !run_batch(&mut batched, &shared, batch, &guard) || guard.abandoned() {
                    return;
                }
            }
        }
    }
}

/// The next job and whatever joins it within `wait` (or is already
/// waiting), up to `capacity`; `None` once every worker has let go.
fn next_batch(
    jobs: &mpsc::Receiver<ThreadJob>,
    capacity: usize,
    wait: Duration,
) -> Option<Vec<ThreadJob>> {
    let first = jobs.recv().ok()?;
    let until = Instant::now() + wait;
    let mut batch = vec![first];
    while batch.len() < capacity {
        let left = until.saturating_duration_since(Instant::now());
        let next = if left.is_zero() {
            jobs.try_recv().ok()
        } else {
            jobs.recv_timeout(left).ok()
        };
        match next {
            Some(job) => batch.push(job),
            None => break,
        }
    }
    Some(batch)
}

/// One batch through [`Batched`], every job answered; `false` when the
/// device failed and the thread retires.
fn run_batch(
    batched: &mut Batched,
    shared: &InferenceShared,
    batch: Vec<ThreadJob>,
    guard: &ExitGuard,
) -> bool {
    shared
        .metrics
        .inference_batch_frames
        .observe(batch.len() as f64);
    let mut answers = Vec::with_capacity(batch.len());
    let mut items = Vec::with_capacity(batch.len());
    for job in batch {
        answers.push((job.frame.seq, job.answer));
        items.push((job.frame, job.queued, shared.faults.read().draw()));
    }
    let dones = batched.run(items, |holistic, (frame, queued, fault)| {
        process_frame(holistic, shared, frame, queued, fault)
    });
    let broken = batched.broken();
    if broken {
        tracing::error!("a batched forward pass panicked; retiring the model thread");
        guard.retire();
    }
    for ((seq, answer), done) in answers.into_iter().zip(dones) {
        // `run_frame` catches the pipeline's panics; this is a thread that
        // could not start.
        let done = done.unwrap_or(FrameDone {
            seq,
            tracking: None,
            outcome: Err(FrameFailure::WorkerPanicked),
        });
        // A frame's panic was in its own pipeline (a crop buffer), not in
        // the device's nets: its worker is replaced, the thread goes on.
        let retired = broken || matches!(done.outcome, Err(FrameFailure::WorkerPanicked));
        let _ = answer.send(ThreadAnswer { done, retired });
    }
    !broken
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
            batch: 1,
            batch_wait: Duration::ZERO,
            threads: InferenceShared::thread_slots(1, 1),
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
