//! One frame's job, whoever runs it: what a session hands the pool
//! ([`FrameJob`]), what comes back ([`FrameDone`], [`FrameFailure`]), the
//! factory's message that answers exactly once ([`PoolJob`]), and
//! [`run_frame`], the one way a frame is decoded, run through the pipeline
//! and serialised, by the in-process workers (`inference`) and by the remote
//! ones (`remote::consumer`) alike.
//!
//! Imports the model and the client protocol below it; nothing here knows
//! of actors (of ractor, only the priority in a job's routing key), Redis
//! or a socket.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use ractor::factory::queues::StandardPriority;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::protocol::{ErrorCode, FrameTimings, result_json};
use crate::config::{DecodeLimits, Fault};
use crate::metrics::DropReason;
use crate::model::{
    FrameData, Holistic, HolisticResult, Mode, Parts, ProcessOptions, TrackingState,
};

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
    /// The frame: a JPEG or a decoded video picture, turned into RGB by the
    /// worker, off the async threads.
    pub frame: FrameData,
    /// Parts to compute.
    pub parts: Parts,
    /// Static images or a live stream (tracking between frames).
    pub mode: Mode,
    /// Frame time in µs, monotonic per session (for the pipeline's filters).
    pub timestamp_us: i64,
    /// Most people to find (1: single-person Holistic).
    pub people: usize,
    /// The session's tracking state, handed to the pipeline for this frame.
    pub tracking: TrackingState,
    /// How long the session has gone without a result when it sends this
    /// frame. Under overload the local pool serves the most starved sessions
    /// first (see [`super::pool::FramePriority`]), so every client keeps getting results
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
    /// The session's tracking state after this failure: a fresh one when
    /// the pipeline failed or its worker died mid-frame (the state may
    /// describe a half-processed frame), the state the frame came with
    /// otherwise. The one rule for both executors.
    pub fn tracking_after(&self, state: TrackingState) -> TrackingState {
        match self {
            FrameFailure::Inference
            | FrameFailure::WorkerPanicked
            | FrameFailure::WorkerStalled => TrackingState::default(),
            _ => state,
        }
    }

    /// The drop this failure counts as, if it is one (the others are
    /// errors).
    pub fn drop_reason(&self) -> Option<DropReason> {
        match self {
            FrameFailure::Overloaded => Some(DropReason::Overload),
            FrameFailure::Expired => Some(DropReason::Expired),
            FrameFailure::Lost => Some(DropReason::Lost),
            _ => None,
        }
    }

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

/// Routing key of a job in the factory: unique per in-flight frame, with
/// the frame's queue priority.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FrameKey {
    pub conn: u64,
    pub seq: u32,
    pub priority: StandardPriority,
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
    /// A job for `frame`, answered on `reply`.
    pub(crate) fn new(frame: FrameJob, reply: oneshot::Sender<FrameDone>) -> PoolJob {
        PoolJob {
            seq: frame.seq,
            frame: Some(frame),
            reply: Some(reply),
            submitted: Instant::now(),
        }
    }

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

impl FrameJob {
    /// What the pipeline is asked to do with this frame.
    pub fn options(&self) -> ProcessOptions {
        ProcessOptions {
            people: self.people,
            mode: self.mode,
            parts: self.parts,
            timestamp_us: self.timestamp_us,
        }
    }
}

impl FrameOutput {
    /// The `result` message of frame `seq` from its landmarks and its
    /// worker's timings; `total_ms` counts from the frame's arrival at the
    /// session to now.
    pub fn new(
        seq: u32,
        capture_ts: f64,
        arrived: Instant,
        landmarks: &str,
        mut timings: FrameTimings,
    ) -> FrameOutput {
        timings.total_ms = arrived.elapsed().as_secs_f64() * 1e3;
        FrameOutput {
            json: result_json(seq, capture_ts, &timings, landmarks),
            timings,
        }
    }
}

/// What a pipeline run made of one frame: the landmark members of its
/// `result` message and the worker's timings (`total_ms` is the session's
/// to set, [`FrameOutput::new`]).
#[derive(Debug, Clone)]
pub struct FrameRun {
    /// JSON object members `"pose":[…],"face":[…],…`, without braces.
    pub landmarks: String,
    pub timings: FrameTimings,
}

/// Decodes, runs and serialises one frame on the calling thread (a worker
/// thread, never an async one): the injected `fault` first, then the frame
/// to RGB within `limits`, the pipeline with the session's `tracking` state, and
/// the landmarks to JSON.
///
/// A panic is caught and answered [`FrameFailure::WorkerPanicked`]; the
/// caller retires its model, which may be half-way through a mutation.
/// On a failure, [`FrameFailure::tracking_after`] says what becomes of
/// `tracking`.
pub fn run_frame(
    holistic: &Holistic,
    limits: &DecodeLimits,
    frame: &FrameData,
    opts: &ProcessOptions,
    tracking: &mut TrackingState,
    queued: Duration,
    fault: Fault,
) -> Result<FrameRun, FrameFailure> {
    let run = catch_unwind(AssertUnwindSafe(|| {
        match fault {
            Fault::None => {}
            Fault::Panic => panic!("injected fault: inference worker panic"),
            Fault::Stall(d) | Fault::Slow(d) => std::thread::sleep(d),
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let t_decode = Instant::now();
        let image = frame
            .to_rgb(limits)
            .map_err(|e| FrameFailure::BadFrame(e.to_string()))?;
        let decode = t_decode.elapsed();

        let t_infer = Instant::now();
        let result = holistic.process(&image, opts, tracking).map_err(|e| {
            tracing::warn!(error = %e, "pipeline failed on a frame");
            FrameFailure::Inference
        })?;
        let infer = t_infer.elapsed();

        let t_ser = Instant::now();
        let landmarks = landmarks_json(&result);
        Ok(FrameRun {
            landmarks,
            timings: FrameTimings {
                queue_ms: ms(queued),
                decode_ms: ms(decode),
                infer_ms: ms(infer),
                serialize_ms: ms(t_ser.elapsed()),
                total_ms: 0.0,
            },
        })
    }));
    run.unwrap_or_else(|payload| {
        tracing::warn!(panic = %panic_message(&*payload), "the pipeline panicked on a frame");
        Err(FrameFailure::WorkerPanicked)
    })
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

/// The landmark fields of a result as JSON object members (no braces).
fn landmarks_json(result: &HolisticResult) -> String {
    // unwrap: landmarks are plain structs of f32 (non-finite values become null).
    let object = serde_json::to_string(result).unwrap();
    object
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or_default()
        .to_string()
}
