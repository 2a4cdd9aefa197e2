//! Inference workers: a ractor actor per worker, in front of one OS thread
//! that owns the worker's model instance and does all the CPU work.
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

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use ractor::factory::{FactoryMessage, Job, Worker, WorkerId};
use ractor::{ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use super::faults::{Fault, FaultPlan};
use super::pool::{FrameDone, FrameFailure, FrameJob, FrameKey, FrameOutput, PoolJob};
use super::protocol::{FrameTimings, result_json};
use crate::http::Metrics;
use crate::model::{Holistic, HolisticResult, ProcessOptions, TrackingState, decode_image};

/// What all workers of a pool share.
pub(crate) struct WorkerShared {
    pub(crate) metrics: Metrics,
    pub(crate) faults: Arc<RwLock<FaultPlan>>,
    pub(crate) stall_deadline: Duration,
}

/// One job handed to a worker thread.
struct ThreadJob {
    frame: FrameJob,
    queued: Duration,
    answer: oneshot::Sender<ThreadAnswer>,
}

enum ThreadAnswer {
    Done(FrameDone),
    Panicked(String),
}

enum Readiness {
    Loading(oneshot::Receiver<Result<(), String>>),
    Ready,
    Failed(String),
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
}

impl ModelThread {
    /// Starts the thread; it loads its model right away.
    pub(crate) fn spawn(wid: usize, shared: Arc<WorkerShared>) -> ModelThread {
        // Capacity 1: the worker sends one job and waits for its answer.
        let (jobs, rx) = mpsc::sync_channel::<ThreadJob>(1);
        let (ready_tx, ready_rx) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("inference-{wid}"))
            .spawn(move || model_thread(shared, rx, ready_tx));
        let ready = match spawned {
            Ok(_detached) => Readiness::Loading(ready_rx),
            Err(e) => Readiness::Failed(format!("cannot spawn thread: {e}")),
        };
        ModelThread { wid, jobs, ready }
    }

    /// Waits until the model is loaded.
    pub(crate) async fn wait_ready(&mut self) -> Result<(), String> {
        if let Readiness::Loading(rx) = &mut self.ready {
            self.ready = match rx.await {
                Ok(Ok(())) => Readiness::Ready,
                Ok(Err(message)) => Readiness::Failed(message),
                Err(_) => Readiness::Failed("model thread died while loading".into()),
            };
        }
        match &self.ready {
            Readiness::Ready => Ok(()),
            Readiness::Failed(message) => Err(message.clone()),
            Readiness::Loading(_) => unreachable!("resolved above"),
        }
    }
}

fn model_thread(
    shared: Arc<WorkerShared>,
    jobs: mpsc::Receiver<ThreadJob>,
    ready: oneshot::Sender<Result<(), String>>,
) {
    let started = Instant::now();
    let holistic = match Holistic::load_default() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "loading the Holistic model failed");
            let _ = ready.send(Err(e.to_string()));
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
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            process_frame(&holistic, &shared.metrics, frame, queued, fault)
        }));
        match outcome {
            Ok(done) => {
                let _ = answer.send(ThreadAnswer::Done(done));
            }
            Err(payload) => {
                let message = panic_message(&*payload);
                let _ = answer.send(ThreadAnswer::Panicked(message));
                // The model may be half-way through a mutation; this thread
                // and its model retire with the worker.
                return;
            }
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".into()
    }
}

/// Decode, run the pipeline and serialise one frame (on the worker thread).
fn process_frame(
    holistic: &Holistic,
    metrics: &Metrics,
    frame: FrameJob,
    queued: Duration,
    fault: Fault,
) -> FrameDone {
    match fault {
        Fault::None => {}
        Fault::Panic => panic!("injected fault: inference worker panic"),
        Fault::Stall(d) | Fault::Slow(d) => std::thread::sleep(d),
    }
    let FrameJob {
        seq,
        capture_ts,
        arrived,
        jpeg,
        parts,
        mode,
        timestamp_us,
        mut tracking,
        ..
    } = frame;

    let t_decode = Instant::now();
    let image = match decode_image(&jpeg) {
        Ok(image) => image,
        Err(e) => {
            return FrameDone {
                seq,
                tracking: Some(tracking),
                outcome: Err(FrameFailure::BadFrame(e.to_string())),
            };
        }
    };
    let decode = t_decode.elapsed();

    let t_infer = Instant::now();
    let opts = ProcessOptions {
        mode,
        parts,
        timestamp_us,
    };
    let result = holistic.process(&image, &opts, &mut tracking);
    let infer = t_infer.elapsed();
    metrics.inference_seconds.observe(infer.as_secs_f64());
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(seq, error = %e, "pipeline failed on a frame");
            return FrameDone {
                seq,
                // The state may describe a half-processed frame: start over.
                tracking: Some(TrackingState::default()),
                outcome: Err(FrameFailure::Inference),
            };
        }
    };

    let t_ser = Instant::now();
    let body = landmarks_json(&result);
    let serialize = t_ser.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let timings = FrameTimings {
        queue_ms: ms(queued),
        decode_ms: ms(decode),
        infer_ms: ms(infer),
        serialize_ms: ms(serialize),
        total_ms: ms(arrived.elapsed()),
    };
    FrameDone {
        seq,
        tracking: Some(tracking),
        outcome: Ok(FrameOutput {
            json: result_json(seq, capture_ts, &timings, &body),
            timings,
        }),
    }
}

/// The landmark fields of a result as JSON object members (no braces).
pub(crate) fn landmarks_json(result: &HolisticResult) -> String {
    // unwrap: landmarks are plain structs of f32 (non-finite values become null).
    let object = serde_json::to_string(result).unwrap();
    object
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or_default()
        .to_string()
}

/// The ractor worker: the actor side of one inference worker.
pub struct InferenceWorker {
    shared: Arc<WorkerShared>,
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
}

impl Drop for InferenceWorkerState {
    fn drop(&mut self) {
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
        // the first job waits for it in `handle`.
        let thread = prepared.unwrap_or_else(|| ModelThread::spawn(wid, self.shared.clone()));
        Ok(InferenceWorkerState {
            wid,
            thread: Some(thread),
            metrics: self.shared.metrics.clone(),
            exit_counted: false,
        })
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
        let Some(thread) = state.thread.as_mut() else {
            job.msg.frame = Some(frame);
            job.msg.fail(FrameFailure::WorkerPanicked);
            state.exit_counted = true;
            return Err(format!("worker {wid} has no model thread").into());
        };
        if let Err(message) = thread.wait_ready().await {
            job.msg.frame = Some(frame);
            job.msg.fail(FrameFailure::Inference);
            state.exit_counted = true;
            return Err(format!("worker {wid}: model unavailable: {message}").into());
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
            Ok(Ok(ThreadAnswer::Done(done))) => {
                job.msg.answer(done);
                Ok(key)
            }
            Ok(Ok(ThreadAnswer::Panicked(message))) => {
                tracing::warn!(worker = wid, seq, panic = %message, "inference thread panicked; replacing worker");
                self.count_restart(state, "panic");
                job.msg.fail(FrameFailure::WorkerPanicked);
                Err(format!("worker {wid} panicked: {message}").into())
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
                // pass ends.
                if let Some(t) = state.thread.take() {
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
    shared: Arc<WorkerShared>,
    prepared: Vec<Option<ModelThread>>,
}

impl InferenceWorkerBuilder {
    pub(crate) fn new(shared: Arc<WorkerShared>, prepared: Vec<ModelThread>) -> Self {
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
