//! Session actors: one actix actor per client connection, a WebSocket
//! ([`SessionActor`]) or a WebRTC peer ([`RtcSession`]), both on one
//! [`core::SessionCore`].
//!
//! A session receives frames, enforces its fps cap, keeps at most one frame in
//! the pool and one waiting (a newer frame replaces the waiting one: latest
//! wins), owns the client's tracking state and passes it with each job, and
//! turns the pool's answers into `result`/`error` messages. Everything it
//! drops is counted, both in its own `stats` message and in `/metrics`.
//!
//! Must not decode or run frames (the pool's workers do, off the async threads)
//! nor reach into the pool's queue: it talks to [`InferencePool`] only.

pub mod core;
mod rtc;
mod ws;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use parking_lot::Mutex;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::model::FrameData;

pub use core::SessionCore;
pub use rtc::{RtcSession, RtcSessionMsg};
pub use ws::SessionActor;

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
    pub frame: FrameData,
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

/// Refusal of a new session (WebSocket or WebRTC).
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
            frame: FrameData::Jpeg(bytes::Bytes::new()),
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
