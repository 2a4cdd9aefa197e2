//! What every session does, whatever carries its frames: the fps cap, the
//! latest-wins slot, one frame in the pool at a time, the client's tracking
//! state and settings, and the counting of every frame. A plain state
//! machine, with no socket and no actor context: the WebSocket actor
//! ([`super::ws`]) and the WebRTC one ([`super::rtc`]) feed it frames and
//! send what it returns.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::{FpsLimiter, FrameSlot, SessionTicket, WaitingFrame};
use crate::actors::job::{FrameDone, FrameFailure, FrameJob, FrameOutput};
use crate::actors::pool::InferencePool;
use crate::actors::protocol::{
    ControlError, ControlLimits, ControlMessage, ErrorCode, ServerMessage, SessionStats,
    SessionView, parse_control,
};
use crate::config::SessionConfig;
use crate::metrics::{DropReason, Metrics};
use crate::model::{Mode, Parts, TrackingState};
use crate::session_id::SessionTag;

/// One client's session state, shared by both transports.
pub struct SessionCore {
    session: Uuid,
    /// The session's public name: logs and `hello` carry this, never the
    /// cookie's uuid.
    pub(super) tag: SessionTag,
    pub(super) ticket: SessionTicket,
    pub(super) cfg: Arc<SessionConfig>,
    pool: InferencePool,
    pub(super) metrics: Metrics,
    limiter: FpsLimiter,
    fps: u32,
    parts: Parts,
    /// Most people to find per frame (the client's `people`, 1 until set).
    people: usize,
    slot: FrameSlot,
    in_flight: bool,
    /// The client's tracking state; `None` while a job carries it.
    tracking: Option<TrackingState>,
    pub(super) stats: SessionStats,
    /// Last result (or the start): how starved the session is, for the
    /// pool's priority.
    last_result: Instant,
    started: Instant,
    last_timestamp_us: i64,
}

/// What became of a finished frame, for the transport to tell the client.
pub enum Finished {
    /// The `result` message.
    Result(FrameOutput),
    /// The `error` message of frame `seq`.
    Failed { seq: u32, failure: FrameFailure },
}

impl SessionCore {
    /// A session for the client `session`, in the slot `ticket`.
    pub fn new(
        session: Uuid,
        ticket: SessionTicket,
        cfg: Arc<SessionConfig>,
        pool: InferencePool,
        metrics: Metrics,
    ) -> SessionCore {
        let now = Instant::now();
        SessionCore {
            session,
            tag: SessionTag::of(session),
            ticket,
            limiter: FpsLimiter::new(cfg.default_fps, now),
            fps: cfg.default_fps,
            cfg,
            pool,
            metrics,
            parts: Parts {
                pose: true,
                face: true,
                hands: true,
            },
            people: 1,
            slot: FrameSlot::default(),
            in_flight: false,
            tracking: Some(TrackingState::default()),
            stats: SessionStats::default(),
            last_result: now,
            started: now,
            last_timestamp_us: -1,
        }
    }

    /// The connection id (unique per process).
    pub fn conn(&self) -> u64 {
        self.ticket.conn()
    }

    /// Counts a frame that arrived (before any check).
    pub fn count_received(&mut self) {
        self.stats.received += 1;
        self.metrics
            .frames_total
            .with_label_values(&["received"])
            .inc();
    }

    /// Counts a frame refused as malformed.
    pub fn count_error(&mut self) {
        self.stats.errors += 1;
        self.metrics
            .frames_total
            .with_label_values(&["error"])
            .inc();
    }

    /// Takes an accepted frame through the fps cap and the slot: the job to
    /// hand the pool now, if the pool holds none of this session's (else
    /// the frame waits in the slot, replacing, and counting, a staler one).
    pub fn offer(&mut self, frame: WaitingFrame) -> Option<FrameJob> {
        if !self.limiter.admit(frame.arrived) {
            self.stats.count_drop(DropReason::Fps, &self.metrics);
            return None;
        }
        if self.in_flight {
            if self.slot.replace(frame).is_some() {
                self.stats.count_drop(DropReason::Stale, &self.metrics);
            }
            None
        } else {
            Some(self.job(frame))
        }
    }

    fn job(&mut self, frame: WaitingFrame) -> FrameJob {
        // Pipeline timestamps must increase strictly within a session.
        let ts = i64::try_from(frame.arrived.duration_since(self.started).as_micros())
            .unwrap_or(i64::MAX);
        let timestamp_us = ts.max(self.last_timestamp_us + 1);
        self.last_timestamp_us = timestamp_us;
        self.in_flight = true;
        FrameJob {
            session: self.session,
            conn: self.ticket.conn(),
            seq: frame.seq,
            capture_ts: frame.capture_ts,
            arrived: frame.arrived,
            frame: frame.frame,
            parts: self.parts,
            mode: Mode::Tracking,
            timestamp_us,
            people: self.people,
            tracking: self.tracking.take().unwrap_or_default(),
            starved: self.last_result.elapsed(),
        }
    }

    /// Hands `job` to the pool; the answer comes back exactly once.
    pub fn submit(&self, job: FrameJob) -> BoxFuture<'static, FrameDone> {
        self.pool.submit(job)
    }

    /// Takes the pool's answer: what to tell the client, and the waiting
    /// frame's job to submit next, if one waits.
    pub fn finish(&mut self, done: FrameDone) -> (Finished, Option<FrameJob>) {
        self.in_flight = false;
        self.tracking = Some(done.tracking.unwrap_or_default());
        let finished = match done.outcome {
            Ok(output) => {
                self.last_result = Instant::now();
                self.stats.processed += 1;
                self.metrics
                    .frames_total
                    .with_label_values(&["processed"])
                    .inc();
                Finished::Result(output)
            }
            Err(failure) => {
                match failure.drop_reason() {
                    Some(reason) => self.stats.count_drop(reason, &self.metrics),
                    None => {
                        self.stats.errors += 1;
                        self.metrics
                            .frames_total
                            .with_label_values(&["error"])
                            .inc();
                    }
                }
                Finished::Failed {
                    seq: done.seq,
                    failure,
                }
            }
        };
        let next = self.slot.take().map(|frame| self.job(frame));
        (finished, next)
    }

    /// Applies a client's `config` message.
    pub fn configure(&mut self, text: &str) -> Result<(), ControlError> {
        let limits = ControlLimits {
            max_fps: self.cfg.max_fps,
            max_people: self.cfg.max_people,
        };
        let ControlMessage::Config { fps, parts, people } = parse_control(text, limits)?;
        if let Some(fps) = fps {
            self.fps = fps;
            self.limiter.set_fps(fps);
        }
        if let Some(parts) = parts {
            self.parts = parts;
        }
        // The tracking state is kept as it is: the pipeline takes a state of
        // any shape (tracked people beyond a lower `people` are dropped, a
        // higher one detects the rest).
        if let Some(people) = people {
            self.people = people;
        }
        Ok(())
    }

    /// The `error` message (counted by code in `ws_errors_total`).
    pub fn error_message(&self, seq: Option<u32>, code: ErrorCode, message: &str) -> String {
        self.metrics
            .ws_errors_total
            .with_label_values(&[code.as_str()])
            .inc();
        ServerMessage::Error { seq, code, message }.to_json()
    }

    /// The `hello` message.
    pub fn hello(&self) -> String {
        ServerMessage::Hello {
            session: self.tag,
            config: self.view(),
        }
        .to_json()
    }

    /// The `stats` message.
    pub fn stats_message(&self) -> String {
        ServerMessage::Stats(self.stats).to_json()
    }

    fn view(&self) -> SessionView {
        SessionView {
            fps: self.fps,
            max_fps: self.cfg.max_fps,
            parts: self.parts,
            people: self.people,
            max_people: self.cfg.max_people,
            max_message_bytes: self.cfg.max_message_bytes,
        }
    }
}
