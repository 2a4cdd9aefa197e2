//! The in-process inference workers: a ractor actor per worker, in front of
//! a model thread (`model_thread`: one per worker, or per group of
//! `pool.max_batch` workers on a GPU) that does all the CPU work. The queue
//! and its discards are the pool's (`pool`), the job's types are `job`'s.
//!
//! The actor side stays async: it hands the job to its thread and awaits the
//! answer with the stall deadline, so the async executor never runs decode,
//! forward passes or serialisation.
//!
//! Supervision: when the pipeline panics on a worker's frame (caught; the
//! thread then retires, since its model may be half-updated, unless it
//! batches: the panic was in that frame's own pipeline) or its thread passes
//! the deadline, the worker answers the job, counts
//! `worker_restarts_total{reason}` and fails; the factory, its supervisor,
//! replaces it through [`InferenceWorkerBuilder`]. A worker killed by the
//! factory's dead-man's switch is counted as a stall when its state is
//! dropped. A worker that would need a new thread past
//! `pool.max_abandoned_threads` stays unstaffed: it answers its jobs
//! `unavailable` (no restart, no new thread) and the pool reports not ready,
//! until an abandoned thread has ended and the next job staffs it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ractor::factory::{FactoryMessage, Job, Worker, WorkerId};
use ractor::{ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use super::job::{FrameFailure, FrameKey, PoolJob};
use super::model_thread::{InferenceShared, ModelThread, ThreadAnswer, ThreadJob};
use crate::metrics::Metrics;

/// The ractor worker: the actor side of one inference worker.
pub struct InferenceWorker {
    shared: Arc<InferenceShared>,
}

/// State of an [`InferenceWorker`].
pub struct InferenceWorkerState {
    wid: WorkerId,
    thread: Option<Arc<ModelThread>>,
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
    /// Workers find their model thread in `InferenceShared::threads`.
    type Arguments = ();
    type State = InferenceWorkerState;

    async fn pre_start(
        &self,
        wid: WorkerId,
        _factory: &ActorRef<FactoryMessage<FrameKey, PoolJob>>,
        _args: (),
    ) -> Result<InferenceWorkerState, ActorProcessingErr> {
        // The group's thread, loaded by `InferencePool::start`; for a
        // replacement whose thread is gone, a new one, whose model loads
        // while the factory goes on (the first job waits for it in
        // `handle`). Past the cap on abandoned threads it starts without one.
        let thread = self.shared.thread_for(wid);
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
        if state.thread.as_ref().is_some_and(|t| !t.alive()) {
            // Another worker of the group abandoned or retired it.
            state.thread = None;
        }
        if state.thread.is_none() {
            let Some(thread) = self.shared.thread_for(wid) else {
                // Degraded, not failed: no restart (it would only spin), the
                // job answered at once.
                job.msg.frame = Some(frame);
                job.msg.fail(FrameFailure::Unavailable);
                return Ok(key);
            };
            if state.unstaffed {
                tracing::info!(
                    worker = wid,
                    "abandoned threads ended; the worker has a model thread again"
                );
            }
            state.thread = Some(thread);
            state.set_unstaffed(false);
        }
        // unwrap: staffed just above.
        let thread = state.thread.as_ref().unwrap();
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
                    tracing::debug!(worker = wid, group = t.group, "model thread abandoned");
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

/// Builds workers for the factory, the first ones and replacements alike.
pub(crate) struct InferenceWorkerBuilder {
    shared: Arc<InferenceShared>,
}

impl InferenceWorkerBuilder {
    pub(crate) fn new(shared: Arc<InferenceShared>) -> Self {
        InferenceWorkerBuilder { shared }
    }
}

impl ractor::factory::WorkerBuilder<InferenceWorker, ()> for InferenceWorkerBuilder {
    fn build(&mut self, _wid: WorkerId) -> (InferenceWorker, ()) {
        (
            InferenceWorker {
                shared: self.shared.clone(),
            },
            (),
        )
    }
}
