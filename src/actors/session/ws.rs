//! The WebSocket session actor: JPEG frames in binary messages, `config` in
//! text ones, results and errors back as text; a heartbeat closes clients
//! that went silent or stopped reading.

use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws;
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;

use super::core::{Finished, SessionCore};
use super::{CloseSession, WaitingFrame};
use crate::actors::job::{FrameDone, FrameJob};
use crate::actors::protocol::{ErrorCode, frame_seq, parse_frame};
use crate::model::FrameData;

/// One WebSocket connection's actor.
pub struct SessionActor {
    core: SessionCore,
    /// Last time anything (message, ping, pong) came from the client.
    last_seen: Instant,
    /// Last pong (or the start). A client that sends but never reads answers
    /// no pings: this is how its unread results are kept from piling up.
    last_pong: Instant,
    /// Conditions that end the session with a close frame (server shutdown,
    /// session revoked); watched from `started`.
    closers: Vec<(LocalBoxFuture<'static, ()>, ws::CloseCode, &'static str)>,
}

impl SessionActor {
    /// The WebSocket actor of the session `core`.
    pub fn new(core: SessionCore) -> SessionActor {
        let now = Instant::now();
        SessionActor {
            core,
            last_seen: now,
            last_pong: now,
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
        ctx.text(self.core.error_message(seq, code, message));
    }

    fn on_frame(&mut self, msg: Bytes, ctx: &mut ws::WebsocketContext<Self>) {
        let arrived = Instant::now();
        self.core.count_received();
        let (header, jpeg) = match parse_frame(&msg) {
            Ok(parsed) => parsed,
            Err(e) => {
                // Echo the seq when the header got that far, so the client can
                // match the error to its frame.
                let seq = frame_seq(&msg);
                self.core.count_error();
                self.send_error(ctx, seq, ErrorCode::BadFrame, &e.to_string());
                return;
            }
        };
        let frame = WaitingFrame {
            seq: header.seq,
            capture_ts: header.capture_ts,
            arrived,
            frame: FrameData::Jpeg(msg.slice_ref(jpeg)),
        };
        if let Some(job) = self.core.offer(frame) {
            self.dispatch(job, ctx);
        }
    }

    fn dispatch(&mut self, job: FrameJob, ctx: &mut ws::WebsocketContext<Self>) {
        ctx.spawn(
            self.core
                .submit(job)
                .into_actor(self)
                .map(|done, act, ctx| act.on_done(done, ctx)),
        );
    }

    fn on_done(&mut self, done: FrameDone, ctx: &mut ws::WebsocketContext<Self>) {
        let (finished, next) = self.core.finish(done);
        match finished {
            Finished::Result(output) => ctx.text(output.json),
            Finished::Failed { seq, failure } => {
                self.send_error(ctx, Some(seq), failure.code(), &failure.to_string())
            }
        }
        if let Some(job) = next {
            self.dispatch(job, ctx);
        }
    }

    fn on_control(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        if let Err(e) = self.core.configure(text) {
            self.core.stats.errors += 1;
            self.send_error(ctx, None, ErrorCode::BadControl, &e.to_string());
        }
    }

    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, code: ws::CloseCode, why: String) {
        ctx.close(Some(ws::CloseReason {
            code,
            description: Some(why),
        }));
        ctx.stop();
    }
}

impl Actor for SessionActor {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::debug!(session = %self.core.tag, conn = self.core.conn(), "session started");
        ctx.text(self.core.hello());
        // Taken out first: `into_actor(self)` borrows the actor mutably.
        let closers = std::mem::take(&mut self.closers);
        for (signal, code, reason) in closers {
            ctx.spawn(signal.into_actor(self).map(move |(), act, ctx| {
                tracing::info!(session = %act.core.tag, reason, "closing session");
                act.close(ctx, code, reason.into());
            }));
        }
        let timeout = Duration::from_millis(self.core.cfg.client_timeout_ms);
        ctx.run_interval(
            Duration::from_millis(self.core.cfg.heartbeat_interval_ms),
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
                    tracing::info!(session = %act.core.tag, reason = label, "closing session");
                    act.core
                        .metrics
                        .ws_errors_total
                        .with_label_values(&[label])
                        .inc();
                    act.close(ctx, ws::CloseCode::Policy, description.into());
                } else {
                    ctx.ping(b"");
                }
            },
        );
        ctx.run_interval(
            Duration::from_millis(self.core.cfg.stats_interval_ms),
            |act, ctx| ctx.text(act.core.stats_message()),
        );
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        tracing::debug!(session = %self.core.tag, conn = self.core.conn(), stats = ?self.core.stats, "session stopped");
    }
}

impl Handler<CloseSession> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: CloseSession, ctx: &mut Self::Context) {
        self.close(ctx, ws::CloseCode::Away, "server shutting down".into());
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for SessionActor {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let msg = match msg {
            Ok(msg) => msg,
            Err(ws::ProtocolError::Overflow) => {
                tracing::info!(session = %self.core.tag, "message over the size limit; closing with 1009");
                self.core
                    .metrics
                    .ws_errors_total
                    .with_label_values(&["too_big"])
                    .inc();
                let why = format!(
                    "message larger than {} bytes",
                    self.core.cfg.max_message_bytes
                );
                self.close(ctx, ws::CloseCode::Size, why);
                return;
            }
            Err(e) => {
                tracing::info!(session = %self.core.tag, error = %e, "WebSocket protocol error; closing");
                self.core
                    .metrics
                    .ws_errors_total
                    .with_label_values(&["protocol"])
                    .inc();
                self.close(ctx, ws::CloseCode::Protocol, "protocol error".into());
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
                self.core.stats.errors += 1;
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
