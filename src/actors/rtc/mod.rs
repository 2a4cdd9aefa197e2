//! WebRTC ingest: one UDP socket for every peer, driven by str0m (sans-IO)
//! on a thread of its own, each peer's video decoded on another.
//!
//! Map: [`RtcEngine`] is the typed handle the HTTP layer and the session
//! actors hold; [`engine`] owns the socket and the peers; [`decode`] runs a
//! peer's decoder ([`codec`], [`vp8`]); [`client`] is the client side
//! (loadgen, tests). A peer's pictures, data-channel messages and end go to
//! its session actor as [`PeerEvent`]s; results come back through
//! [`RtcEngine::send`].

pub mod client;
pub mod codec;
mod decode;
mod engine;
mod h264;
pub mod sdp;
mod video;
pub mod vp8;

use std::net::SocketAddr;
use std::sync::Once;
use std::time::Instant;

use actix::prelude::*;
use str0m::change::SdpOffer;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{DecodeLimits, RtcConfig};
use crate::metrics::Metrics;
use crate::model::I420Picture;

pub use video::{CodecError, VideoCodec};

/// The data channel a client opens for results and `config`.
pub const CHANNEL_LABEL: &str = "holistream";

/// Commands queued to the engine. Enough for every session's results at
/// 30 fps with the engine a few hundred ms behind; past it a result is
/// dropped and counted, never waited for.
const COMMAND_QUEUE: usize = 1024;

/// What a peer tells its session actor.
#[derive(Message)]
#[rtype(result = "()")]
pub enum PeerEvent {
    /// The `holistream` data channel opened: send `hello`.
    ChannelOpen,
    /// A text message on the channel (the client's `config`).
    ChannelText(String),
    /// A message the protocol does not take (binary, or too long).
    ChannelRefused(&'static str),
    /// A decoded picture, with its RTP timestamp (90 kHz).
    Picture {
        rtp_ts: u32,
        picture: I420Picture,
        arrived: Instant,
    },
    /// The peer is gone; the session ends.
    Closed(CloseReason),
}

/// Why a peer ended (`rtc_closed_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent `DELETE` on its resource.
    Delete,
    /// Nothing arrived for `rtc.ice_timeout_ms`.
    Timeout,
    /// ICE or DTLS failed, or str0m refused the peer's input.
    Failed,
    /// The session actor ended (logout, session expiry).
    SessionEnded,
    /// The server is shutting down.
    Shutdown,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Delete => "delete",
            CloseReason::Timeout => "timeout",
            CloseReason::Failed => "ice_failed",
            CloseReason::SessionEnded => "session_ended",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Why an offer got no answer.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Not SDP, or SDP str0m cannot negotiate.
    #[error("bad SDP offer: {0}")]
    BadOffer(String),
    /// SDP without a video track this server can decode.
    #[error("{0}")]
    Unsupported(String),
    /// The engine is gone or its queue is full.
    #[error("WebRTC engine unavailable")]
    Unavailable,
}

/// Why the engine did not start.
#[derive(Debug, thiserror::Error)]
pub enum RtcStartError {
    #[error("rtc config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("binding the WebRTC UDP socket {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the WebRTC engine thread: {0}")]
    Thread(std::io::Error),
}

enum Command {
    Open {
        id: Uuid,
        offer: SdpOffer,
        /// The offer's codecs, in its order of preference.
        codecs: Vec<VideoCodec>,
        sink: Recipient<PeerEvent>,
        reply: oneshot::Sender<Result<String, OpenError>>,
    },
    Close {
        id: Uuid,
        reason: CloseReason,
        reply: Option<oneshot::Sender<bool>>,
    },
    Send {
        id: Uuid,
        text: String,
    },
    /// The decoder failed: ask the sender for a keyframe.
    DecodeFailed {
        id: Uuid,
    },
}

/// The typed handle in front of the engine thread. Cheap to clone; the
/// engine stops when the server's shutdown token is cancelled.
#[derive(Clone)]
pub struct RtcEngine {
    commands: mpsc::Sender<Command>,
    local: SocketAddr,
    metrics: Metrics,
}

impl RtcEngine {
    /// Binds the UDP socket and starts the engine thread; the thread ends
    /// (closing every peer) when `shutdown` is cancelled.
    pub fn start(
        cfg: &RtcConfig,
        server_host: &str,
        limits: DecodeLimits,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Result<RtcEngine, RtcStartError> {
        static CRYPTO: Once = Once::new();
        CRYPTO.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
        let bind = SocketAddr::new(cfg.bind_ip(server_host)?, cfg.port);
        let socket = std::net::UdpSocket::bind(bind)
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|source| RtcStartError::Bind { addr: bind, source })?;
        let bound = socket
            .local_addr()
            .map_err(|source| RtcStartError::Bind { addr: bind, source })?;
        let local = SocketAddr::new(cfg.announced_ip(server_host)?, bound.port());
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let engine = engine::Engine::new(local, cfg.clone(), limits, metrics.clone(), tx.clone());
        std::thread::Builder::new()
            .name("rtc-engine".into())
            .spawn(move || engine.run(socket, rx, shutdown))
            .map_err(RtcStartError::Thread)?;
        metrics.rtc.udp_port.set(i64::from(bound.port()));
        Ok(RtcEngine {
            commands: tx,
            local,
            metrics,
        })
    }

    /// The address announced in answers (the public IP, the bound port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Negotiates `offer` for the peer `id`, whose events go to `sink`: the
    /// SDP answer (ICE-lite, every candidate in it), its codecs in the order
    /// of `codecs` (the offer's: the sender's preference wins).
    pub async fn open(
        &self,
        id: Uuid,
        offer: SdpOffer,
        codecs: Vec<VideoCodec>,
        sink: Recipient<PeerEvent>,
    ) -> Result<String, OpenError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .try_send(Command::Open {
                id,
                offer,
                codecs,
                sink,
                reply,
            })
            .map_err(|_| OpenError::Unavailable)?;
        answer.await.map_err(|_| OpenError::Unavailable)?
    }

    /// Tears the peer `id` down; false if no such peer.
    pub async fn close(&self, id: Uuid, reason: CloseReason) -> bool {
        let (reply, closed) = oneshot::channel();
        let sent = self.commands.try_send(Command::Close {
            id,
            reason,
            reply: Some(reply),
        });
        sent.is_ok() && closed.await.unwrap_or(false)
    }

    /// Tears the peer `id` down without waiting (from an actor stopping).
    pub fn close_now(&self, id: Uuid, reason: CloseReason) {
        // A full queue here means the engine is far behind; the peer is then
        // reaped by its ICE timeout instead.
        let _ = self.commands.try_send(Command::Close {
            id,
            reason,
            reply: None,
        });
    }

    /// Sends `text` on the peer's data channel; dropped and counted in
    /// `rtc_results_undelivered_total` when the engine is behind.
    pub fn send(&self, id: Uuid, text: String) {
        if self.commands.try_send(Command::Send { id, text }).is_err() {
            self.metrics.rtc.results_undelivered_total.inc();
        }
    }
}
