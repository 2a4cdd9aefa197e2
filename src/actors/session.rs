//! Session actors: one actix actor per WebSocket connection.
//!
//! A session receives frames, enforces its fps cap, keeps at most one frame in
//! the pool and one waiting (a newer frame replaces the waiting one: latest
//! wins), owns the client's tracking state and passes it with each job, and
//! turns the pool's answers into `result`/`error` messages. Everything it
//! drops is counted, both in its own `stats` message and in `/metrics`.
//!
//! Must not decode or run frames (the pool's workers do, off the async threads)
//! nor reach into the pool's queue: it talks to [`InferencePool`] only.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws;
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use parking_lot::Mutex;
use uuid::Uuid;

use super::job::{FrameDone, FrameJob};
use super::pool::InferencePool;
use super::protocol::{
    ControlLimits, ControlMessage, ErrorCode, ServerMessage, SessionStats, SessionView, frame_seq,
    parse_control, parse_frame,
};
use crate::config::SessionConfig;
use crate::metrics::{DropReason, Metrics};
use crate::model::{Mode, Parts, TrackingState};
use crate::session_id::SessionTag;

/// Frame-rate cap: a token bucket refilled at `fps` tokens per second.
///
/// A burst of two tokens absorbs the jitter of a client that sends at exactly
/// the cap (one frame a little late, the next a little early) without
/// letting the long-run rate exceed `fps`.
#[derive(Debug, Clone)]
pub struct FpsLimiter {
    interval: Duration,
    tokens: f64,
    last: Instant,
}

impl FpsLimiter {
    const BURST: f64 = 2.0;

    /// A full bucket for `fps` frames per second.
    pub fn new(fps: u32, now: Instant) -> FpsLimiter {
        FpsLimiter {
            interval: Duration::from_secs_f64(1.0 / f64::from(fps.max(1))),
            tokens: Self::BURST,
            last: now,
        }
    }

    /// Changes the rate (the bucket keeps its tokens).
    pub fn set_fps(&mut self, fps: u32) {
        self.interval = Duration::from_secs_f64(1.0 / f64::from(fps.max(1)));
    }

    /// True if a frame arriving at `now` is within the cap (and takes a token).
    pub fn admit(&mut self, now: Instant) -> bool {
        let refill =
            now.saturating_duration_since(self.last).as_secs_f64() / self.interval.as_secs_f64();
        self.tokens = (self.tokens + refill).min(Self::BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A frame accepted by the session, not yet handed to the pool.
#[derive(Debug, Clone)]
pub struct WaitingFrame {
    pub seq: u32,
    pub capture_ts: f64,
    pub arrived: Instant,
    pub jpeg: Bytes,
}

/// The one frame waiting while another is in the pool. Latest wins.
#[derive(Debug, Default)]
pub struct FrameSlot(Option<WaitingFrame>);

impl FrameSlot {
    /// Puts `frame` in the slot; returns the frame it replaced (now stale).
    pub fn replace(&mut self, frame: WaitingFrame) -> Option<WaitingFrame> {
        self.0.replace(frame)
    }

    /// Takes the waiting frame, if any.
    pub fn take(&mut self) -> Option<WaitingFrame> {
        self.0.take()
    }

    /// True if a frame is waiting.
    pub fn is_occupied(&self) -> bool {
        self.0.is_some()
    }
}

/// Asks a session to close (server shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseSession;

/// Refusal of a new WebSocket.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionsFull {
    /// The server holds `server.max_sessions` WebSockets.
    #[error("server is at its limit of {max} sessions")]
    Server { max: usize },
    /// This login session already holds `server.max_sockets_per_session`:
    /// one cookie must not take every slot.
    #[error("this session already holds {max} connections")]
    PerSession { max: usize },
}

struct RegistryInner {
    max: usize,
    max_per_session: usize,
    next_conn: AtomicU64,
    /// Open connections: their login session and, once running, their actor.
    open: Mutex<HashMap<u64, (Uuid, Option<Recipient<CloseSession>>)>>,
    metrics: Metrics,
}

/// The open sessions: bounds their number, keeps `sessions_active` exact and
/// closes them all at shutdown. Cheap to clone.
#[derive(Clone)]
pub struct SessionRegistry {
    inner: Arc<RegistryInner>,
}

/// A reserved session slot; dropping it (when its actor is dropped, or when
/// the handshake fails) frees the slot.
pub struct SessionTicket {
    conn: u64,
    registry: SessionRegistry,
}

impl SessionRegistry {
    /// A registry for at most `max` concurrent connections, and at most
    /// `max_per_session` of one login session.
    pub fn new(max: usize, max_per_session: usize, metrics: Metrics) -> SessionRegistry {
        SessionRegistry {
            inner: Arc::new(RegistryInner {
                max,
                max_per_session,
                next_conn: AtomicU64::new(1),
                open: Mutex::new(HashMap::new()),
                metrics,
            }),
        }
    }

    /// Reserves a slot for a new connection of login session `session`.
    pub fn try_open(&self, session: Uuid) -> Result<SessionTicket, SessionsFull> {
        let mut open = self.inner.open.lock();
        if open.len() >= self.inner.max {
            return Err(SessionsFull::Server {
                max: self.inner.max,
            });
        }
        // A scan, not a second map: `max` is small (64 by default) and this
        // runs once per WebSocket open.
        let held = open.values().filter(|(s, _)| *s == session).count();
        if held >= self.inner.max_per_session {
            return Err(SessionsFull::PerSession {
                max: self.inner.max_per_session,
            });
        }
        let conn = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        open.insert(conn, (session, None));
        self.inner.metrics.sessions_active.set(open.len() as i64);
        drop(open);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let thread = std::thread::current();
            self.inner
                .metrics
                .http_runtime_alive_tasks
                .with_label_values(&[thread.name().unwrap_or("unnamed")])
                .set(rt.metrics().num_alive_tasks() as i64);
        }
        Ok(SessionTicket {
            conn,
            registry: self.clone(),
        })
    }

    /// Number of open sessions.
    pub fn active(&self) -> usize {
        self.inner.open.lock().len()
    }

    /// Registers the running actor of connection `conn`, so `close_all`
    /// reaches it. Does nothing if that session already ended.
    pub fn attach(&self, conn: u64, recipient: Recipient<CloseSession>) {
        if let Some((_, slot)) = self.inner.open.lock().get_mut(&conn) {
            *slot = Some(recipient);
        }
    }

    /// Asks every open session to close with a close frame (going away).
    pub fn close_all(&self) {
        let recipients: Vec<_> = self
            .inner
            .open
            .lock()
            .values()
            .filter_map(|(_, r)| r.clone())
            .collect();
        for r in recipients {
            r.do_send(CloseSession);
        }
    }
}

impl SessionTicket {
    /// The connection id (unique per process).
    pub fn conn(&self) -> u64 {
        self.conn
    }
}

impl Drop for SessionTicket {
    fn drop(&mut self) {
        let mut open = self.registry.inner.open.lock();
        open.remove(&self.conn);
        self.registry
            .inner
            .metrics
            .sessions_active
            .set(open.len() as i64);
    }
}

/// One WebSocket connection's actor.
pub struct SessionActor {
    session: Uuid,
    /// The session's public name: logs and `hello` carry this, never the
    /// cookie's uuid.
    tag: SessionTag,
    ticket: SessionTicket,
    cfg: Arc<SessionConfig>,
    pool: InferencePool,
    metrics: Metrics,
    limiter: FpsLimiter,
    fps: u32,
    parts: Parts,
    /// Most people to find per frame (the client's `people`, 1 until set).
    people: usize,
    slot: FrameSlot,
    in_flight: bool,
    /// The client's tracking state; `None` while a job carries it.
    tracking: Option<TrackingState>,
    stats: SessionStats,
    /// Last time anything (message, ping, pong) came from the client.
    last_seen: Instant,
    /// Last pong (or the start). A client that sends but never reads answers
    /// no pings: this is how its unread results are kept from piling up.
    last_pong: Instant,
    /// Last result (or the start): how starved the session is, for the
    /// pool's priority.
    last_result: Instant,
    started: Instant,
    last_timestamp_us: i64,
    /// Conditions that end the session with a close frame (server shutdown,
    /// session revoked); watched from `started`.
    closers: Vec<(LocalBoxFuture<'static, ()>, ws::CloseCode, &'static str)>,
}

impl SessionActor {
    /// A session for the client `session`, in the slot `ticket`.
    pub fn new(
        session: Uuid,
        ticket: SessionTicket,
        cfg: Arc<SessionConfig>,
        pool: InferencePool,
        metrics: Metrics,
    ) -> SessionActor {
        let now = Instant::now();
        SessionActor {
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
            last_seen: now,
            last_pong: now,
            last_result: now,
            started: now,
            last_timestamp_us: -1,
            closers: Vec::new(),
        }
    }

    /// Closes the session with `code` and `reason` once `signal` resolves
    /// (e.g. the server's shutdown token, or the login being revoked).
    pub fn close_when(
        mut self,
        signal: impl Future<Output = ()> + 'static,
        code: ws::CloseCode,
        reason: &'static str,
    ) -> SessionActor {
        self.closers.push((Box::pin(signal), code, reason));
        self
    }

    fn send_error(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        seq: Option<u32>,
        code: ErrorCode,
        message: &str,
    ) {
        self.metrics
            .ws_errors_total
            .with_label_values(&[code.as_str()])
            .inc();
        ctx.text(ServerMessage::Error { seq, code, message }.to_json());
    }

    fn on_frame(&mut self, msg: Bytes, ctx: &mut ws::WebsocketContext<Self>) {
        let arrived = Instant::now();
        self.stats.received += 1;
        self.metrics
            .frames_total
            .with_label_values(&["received"])
            .inc();
        let (header, jpeg) = match parse_frame(&msg) {
            Ok(parsed) => parsed,
            Err(e) => {
                // Echo the seq when the header got that far, so the client can
                // match the error to its frame.
                let seq = frame_seq(&msg);
                self.stats.errors += 1;
                self.metrics
                    .frames_total
                    .with_label_values(&["error"])
                    .inc();
                self.send_error(ctx, seq, ErrorCode::BadFrame, &e.to_string());
                return;
            }
        };
        if !self.limiter.admit(arrived) {
            self.stats.count_drop(DropReason::Fps, &self.metrics);
            return;
        }
        let frame = WaitingFrame {
            seq: header.seq,
            capture_ts: header.capture_ts,
            arrived,
            jpeg: msg.slice_ref(jpeg),
        };
        if self.in_flight {
            if self.slot.replace(frame).is_some() {
                self.stats.count_drop(DropReason::Stale, &self.metrics);
            }
        } else {
            self.dispatch(frame, ctx);
        }
    }

    fn dispatch(&mut self, frame: WaitingFrame, ctx: &mut ws::WebsocketContext<Self>) {
        // Pipeline timestamps must increase strictly within a session.
        let ts = i64::try_from(frame.arrived.duration_since(self.started).as_micros())
            .unwrap_or(i64::MAX);
        let timestamp_us = ts.max(self.last_timestamp_us + 1);
        self.last_timestamp_us = timestamp_us;
        let job = FrameJob {
            session: self.session,
            conn: self.ticket.conn(),
            seq: frame.seq,
            capture_ts: frame.capture_ts,
            arrived: frame.arrived,
            jpeg: frame.jpeg,
            parts: self.parts,
            mode: Mode::Tracking,
            timestamp_us,
            people: self.people,
            tracking: self.tracking.take().unwrap_or_default(),
            starved: self.last_result.elapsed(),
        };
        self.in_flight = true;
        let answer = self.pool.submit(job);
        ctx.spawn(
            answer
                .into_actor(self)
                .map(|done, act, ctx| act.on_done(done, ctx)),
        );
    }

    fn on_done(&mut self, done: FrameDone, ctx: &mut ws::WebsocketContext<Self>) {
        self.in_flight = false;
        self.tracking = Some(done.tracking.unwrap_or_default());
        match done.outcome {
            Ok(output) => {
                self.last_result = Instant::now();
                self.stats.processed += 1;
                self.metrics
                    .frames_total
                    .with_label_values(&["processed"])
                    .inc();
                ctx.text(output.json);
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
                self.send_error(ctx, Some(done.seq), failure.code(), &failure.to_string());
            }
        }
        if let Some(next) = self.slot.take() {
            self.dispatch(next, ctx);
        }
    }

    fn on_control(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        let limits = ControlLimits {
            max_fps: self.cfg.max_fps,
            max_people: self.cfg.max_people,
        };
        match parse_control(text, limits) {
            Ok(ControlMessage::Config { fps, parts, people }) => {
                if let Some(fps) = fps {
                    self.fps = fps;
                    self.limiter.set_fps(fps);
                }
                if let Some(parts) = parts {
                    self.parts = parts;
                }
                // The tracking state is kept as it is: the pipeline takes a
                // state of any shape (tracked people beyond a lower `people`
                // are dropped, a higher one detects the rest).
                if let Some(people) = people {
                    self.people = people;
                }
            }
            Err(e) => {
                self.stats.errors += 1;
                self.send_error(ctx, None, ErrorCode::BadControl, &e.to_string());
            }
        }
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

impl Actor for SessionActor {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::debug!(session = %self.tag, conn = self.ticket.conn(), "session started");
        ctx.text(
            ServerMessage::Hello {
                session: self.tag,
                config: self.view(),
            }
            .to_json(),
        );
        // Taken out first: `into_actor(self)` borrows the actor mutably.
        let closers = std::mem::take(&mut self.closers);
        for (signal, code, reason) in closers {
            ctx.spawn(signal.into_actor(self).map(move |(), act, ctx| {
                tracing::info!(session = %act.tag, reason, "closing session");
                ctx.close(Some(ws::CloseReason {
                    code,
                    description: Some(reason.into()),
                }));
                ctx.stop();
            }));
        }
        let timeout = Duration::from_millis(self.cfg.client_timeout_ms);
        ctx.run_interval(
            Duration::from_millis(self.cfg.heartbeat_interval_ms),
            move |act, ctx| {
                // Two ways a client stops being served: it went silent, or it
                // keeps sending but stopped reading. The second shows only as
                // missing pongs; without this check its results would queue in
                // the socket until the write buffer fills and the actor freezes
                // with its session slot held.
                let reason = if act.last_seen.elapsed() > timeout {
                    Some(("client_timeout", "client timeout"))
                } else if act.last_pong.elapsed() > timeout {
                    Some(("not_reading", "client not reading (no pong)"))
                } else {
                    None
                };
                if let Some((label, description)) = reason {
                    tracing::info!(session = %act.tag, reason = label, "closing session");
                    act.metrics
                        .ws_errors_total
                        .with_label_values(&[label])
                        .inc();
                    ctx.close(Some(ws::CloseReason {
                        code: ws::CloseCode::Policy,
                        description: Some(description.into()),
                    }));
                    ctx.stop();
                } else {
                    ctx.ping(b"");
                }
            },
        );
        ctx.run_interval(
            Duration::from_millis(self.cfg.stats_interval_ms),
            |act, ctx| {
                ctx.text(ServerMessage::Stats(act.stats).to_json());
            },
        );
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        tracing::debug!(session = %self.tag, conn = self.ticket.conn(), stats = ?self.stats, "session stopped");
    }
}

impl Handler<CloseSession> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: CloseSession, ctx: &mut Self::Context) {
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::Away,
            description: Some("server shutting down".into()),
        }));
        ctx.stop();
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for SessionActor {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let msg = match msg {
            Ok(msg) => msg,
            Err(ws::ProtocolError::Overflow) => {
                tracing::info!(session = %self.tag, "message over the size limit; closing with 1009");
                self.metrics
                    .ws_errors_total
                    .with_label_values(&["too_big"])
                    .inc();
                ctx.close(Some(ws::CloseReason {
                    code: ws::CloseCode::Size,
                    description: Some(format!(
                        "message larger than {} bytes",
                        self.cfg.max_message_bytes
                    )),
                }));
                ctx.stop();
                return;
            }
            Err(e) => {
                tracing::info!(session = %self.tag, error = %e, "WebSocket protocol error; closing");
                self.metrics
                    .ws_errors_total
                    .with_label_values(&["protocol"])
                    .inc();
                ctx.close(Some(ws::CloseReason {
                    code: ws::CloseCode::Protocol,
                    description: Some("protocol error".into()),
                }));
                ctx.stop();
                return;
            }
        };
        self.last_seen = Instant::now();
        match msg {
            ws::Message::Binary(bytes) => self.on_frame(bytes, ctx),
            ws::Message::Text(text) => self.on_control(&text, ctx),
            ws::Message::Ping(payload) => ctx.pong(&payload),
            ws::Message::Pong(_) => self.last_pong = self.last_seen,
            ws::Message::Close(reason) => {
                ctx.close(reason);
                ctx.stop();
            }
            ws::Message::Continuation(_) => {
                self.stats.errors += 1;
                self.send_error(
                    ctx,
                    None,
                    ErrorCode::Unsupported,
                    "fragmented messages are not supported",
                );
            }
            ws::Message::Nop => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_caps_the_long_run_rate() {
        let t0 = Instant::now();
        let mut l = FpsLimiter::new(10, t0);
        // 60 fps for 10 s: at most 10 fps * 10 s + the burst get through.
        let admitted = (0..600)
            .filter(|i| l.admit(t0 + Duration::from_micros(i * 16_667)))
            .count();
        assert!((100..=102).contains(&admitted), "{admitted}");
    }

    #[test]
    fn limiter_admits_a_client_at_the_cap_despite_jitter() {
        let t0 = Instant::now();
        let mut l = FpsLimiter::new(20, t0);
        // 50 ms apart on average, alternating 40 ms and 60 ms.
        let mut t = t0;
        let mut admitted = 0;
        for i in 0..200 {
            t += Duration::from_millis(if i % 2 == 0 { 40 } else { 60 });
            admitted += usize::from(l.admit(t));
        }
        assert_eq!(admitted, 200);
    }

    #[test]
    fn limiter_follows_a_new_rate() {
        let t0 = Instant::now();
        let mut l = FpsLimiter::new(30, t0);
        l.set_fps(5);
        let admitted = (1..=100)
            .filter(|i| l.admit(t0 + Duration::from_millis(i * 33)))
            .count();
        // 3.3 s at 5 fps plus the burst.
        assert!((16..=19).contains(&admitted), "{admitted}");
    }

    fn frame(seq: u32) -> WaitingFrame {
        WaitingFrame {
            seq,
            capture_ts: 0.0,
            arrived: Instant::now(),
            jpeg: Bytes::new(),
        }
    }

    #[test]
    fn slot_keeps_the_latest_frame() {
        let mut slot = FrameSlot::default();
        assert!(slot.replace(frame(1)).is_none());
        assert_eq!(slot.replace(frame(2)).unwrap().seq, 1);
        assert_eq!(slot.replace(frame(3)).unwrap().seq, 2);
        assert!(slot.is_occupied());
        assert_eq!(slot.take().unwrap().seq, 3);
        assert!(slot.take().is_none());
    }

    #[test]
    fn registry_bounds_sessions_and_tracks_the_gauge() {
        let metrics = Metrics::new();
        let reg = SessionRegistry::new(2, 2, metrics.clone());
        let a = reg.try_open(Uuid::new_v4()).unwrap();
        let b = reg.try_open(Uuid::new_v4()).unwrap();
        assert_ne!(a.conn(), b.conn());
        assert_eq!(
            reg.try_open(Uuid::new_v4()).err(),
            Some(SessionsFull::Server { max: 2 })
        );
        assert_eq!(metrics.sessions_active.get(), 2);
        drop(a);
        assert_eq!(reg.active(), 1);
        assert_eq!(metrics.sessions_active.get(), 1);
        let _c = reg.try_open(Uuid::new_v4()).unwrap();
        drop(b);
        assert_eq!(metrics.sessions_active.get(), 1);
    }

    #[test]
    fn one_login_session_holds_at_most_its_share() {
        let reg = SessionRegistry::new(8, 2, Metrics::new());
        let me = Uuid::new_v4();
        let first = reg.try_open(me).unwrap();
        let _second = reg.try_open(me).unwrap();
        assert_eq!(
            reg.try_open(me).err(),
            Some(SessionsFull::PerSession { max: 2 })
        );
        // Others are not affected, and a closed socket frees its share.
        reg.try_open(Uuid::new_v4()).unwrap();
        drop(first);
        reg.try_open(me).unwrap();
    }
}
