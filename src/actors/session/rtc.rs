//! The WebRTC session actor: decoded pictures from the peer's track in,
//! results and `config` over its `holistream` data channel. The same
//! [`SessionCore`] as the WebSocket: fps cap, latest-wins slot, tracking.
//!
//! A result's `seq` is the server's count of decoded pictures (a video
//! track carries no client sequence number), and it carries the frame's
//! RTP timestamp (`rtp_ts`, 90 kHz) so the page can match it to the frame
//! it shows (`requestVideoFrameCallback`'s `rtpTimestamp`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::LocalBoxFuture;
use uuid::Uuid;

use super::core::{Finished, SessionCore};
use super::{CloseSession, WaitingFrame};
use crate::actors::job::{FrameDone, FrameJob};
use crate::actors::protocol::{ErrorCode, with_rtp_ts};
use crate::actors::rtc::{CloseReason, PeerEvent, RtcEngine};
use crate::model::FrameData;

/// RTP's video clock: ticks per millisecond.
const RTP_TICKS_PER_MS: f64 = 90.0;

/// RTP timestamps remembered for pictures not yet answered: one in the
/// pool and one in the slot are all that can be answered; the rest is
/// slack for pictures the fps cap drops.
const PENDING_TIMESTAMPS: usize = 64;

/// One WebRTC peer's session.
pub struct RtcSession {
    core: SessionCore,
    peer: Uuid,
    engine: RtcEngine,
    /// Pictures decoded so far: the next result's `seq`.
    pictures: u32,
    /// `(seq, rtp_ts)` of the latest pictures, oldest first.
    pending: VecDeque<(u32, u32)>,
    channel_open: bool,
    /// The engine already dropped the peer (no `close` to send it back).
    peer_gone: bool,
    closers: Vec<LocalBoxFuture<'static, ()>>,
}

/// What [`RtcSession`] takes besides [`PeerEvent`]s.
#[derive(Message)]
#[rtype(result = "()")]
pub enum RtcSessionMsg {
    /// The offer got no answer: end without telling the engine.
    OpenFailed,
}

impl RtcSession {
    /// The WebRTC actor of the session `core`, for the engine's peer `peer`.
    pub fn new(core: SessionCore, peer: Uuid, engine: RtcEngine) -> RtcSession {
        RtcSession {
            core,
            peer,
            engine,
            pictures: 0,
            pending: VecDeque::with_capacity(PENDING_TIMESTAMPS),
            channel_open: false,
            peer_gone: false,
            closers: Vec::new(),
        }
    }

    /// Ends the session once `signal` resolves (server shutdown, login
    /// revoked).
    pub fn close_when(mut self, signal: impl Future<Output = ()> + 'static) -> RtcSession {
        self.closers.push(Box::pin(signal));
        self
    }

    fn send(&mut self, text: String) {
        if self.channel_open {
            self.engine.send(self.peer, text);
        } else {
            // A stock WHIP encoder opens no channel: the result has no
            // one to go to.
            self.core.metrics.rtc.results_undelivered_total.inc();
        }
    }

    fn on_picture(
        &mut self,
        rtp_ts: u32,
        picture: crate::model::I420Picture,
        arrived: Instant,
        ctx: &mut Context<Self>,
    ) {
        self.core.count_received();
        let seq = self.pictures;
        self.pictures = self.pictures.wrapping_add(1);
        if self.pending.len() == PENDING_TIMESTAMPS {
            self.pending.pop_front();
        }
        self.pending.push_back((seq, rtp_ts));
        let frame = WaitingFrame {
            seq,
            capture_ts: f64::from(rtp_ts) / RTP_TICKS_PER_MS,
            arrived,
            frame: FrameData::I420(picture),
        };
        if let Some(job) = self.core.offer(frame) {
            self.dispatch(job, ctx);
        }
    }

    fn dispatch(&mut self, job: FrameJob, ctx: &mut Context<Self>) {
        ctx.spawn(
            self.core
                .submit(job)
                .into_actor(self)
                .map(|done, act, ctx| act.on_done(done, ctx)),
        );
    }

    fn on_done(&mut self, done: FrameDone, ctx: &mut Context<Self>) {
        let rtp_ts = self
            .pending
            .iter()
            .find(|(seq, _)| *seq == done.seq)
            .map(|&(_, ts)| ts);
        // Older pictures can no longer be answered (the slot holds newer).
        while self
            .pending
            .front()
            .is_some_and(|&(seq, _)| seq <= done.seq)
        {
            self.pending.pop_front();
        }
        let (finished, next) = self.core.finish(done);
        let text = match finished {
            Finished::Result(output) => match rtp_ts {
                Some(ts) => with_rtp_ts(&output.json, ts),
                None => output.json,
            },
            Finished::Failed { seq, failure } => {
                self.core
                    .error_message(Some(seq), failure.code(), &failure.to_string())
            }
        };
        self.send(text);
        if let Some(job) = next {
            self.dispatch(job, ctx);
        }
    }
}

impl Actor for RtcSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::debug!(session = %self.core.tag, conn = self.core.conn(), "WebRTC session started");
        for signal in std::mem::take(&mut self.closers) {
            ctx.spawn(signal.into_actor(self).map(|(), act, ctx| {
                tracing::info!(session = %act.core.tag, "closing WebRTC session");
                ctx.stop();
            }));
        }
        ctx.run_interval(
            Duration::from_millis(self.core.cfg.stats_interval_ms),
            |act, _| {
                if act.channel_open {
                    let stats = act.core.stats_message();
                    act.engine.send(act.peer, stats);
                }
            },
        );
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if !self.peer_gone {
            self.engine.close_now(self.peer, CloseReason::SessionEnded);
        }
        tracing::debug!(session = %self.core.tag, conn = self.core.conn(), stats = ?self.core.stats, "WebRTC session stopped");
    }
}

impl Handler<PeerEvent> for RtcSession {
    type Result = ();

    fn handle(&mut self, event: PeerEvent, ctx: &mut Self::Context) {
        match event {
            PeerEvent::ChannelOpen => {
                self.channel_open = true;
                let hello = self.core.hello();
                self.send(hello);
            }
            PeerEvent::ChannelText(text) => {
                if let Err(e) = self.core.configure(&text) {
                    self.core.stats.errors += 1;
                    let msg = self
                        .core
                        .error_message(None, ErrorCode::BadControl, &e.to_string());
                    self.send(msg);
                }
            }
            PeerEvent::ChannelRefused(why) => {
                self.core.stats.errors += 1;
                let msg = self.core.error_message(None, ErrorCode::Unsupported, why);
                self.send(msg);
            }
            PeerEvent::Picture {
                rtp_ts,
                picture,
                arrived,
            } => self.on_picture(rtp_ts, picture, arrived, ctx),
            PeerEvent::Closed(_) => {
                self.peer_gone = true;
                ctx.stop();
            }
        }
    }
}

impl Handler<RtcSessionMsg> for RtcSession {
    type Result = ();

    fn handle(&mut self, msg: RtcSessionMsg, ctx: &mut Self::Context) {
        match msg {
            RtcSessionMsg::OpenFailed => {
                self.peer_gone = true;
                ctx.stop();
            }
        }
    }
}

impl Handler<CloseSession> for RtcSession {
    type Result = ();

    fn handle(&mut self, _: CloseSession, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
