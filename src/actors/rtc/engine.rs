//! The engine thread: one UDP socket, every peer's str0m `Rtc`, the
//! commands of [`super::RtcEngine`]. A current-thread tokio runtime of its
//! own waits on the socket, the command queue and the earliest peer timer;
//! nothing here blocks (decoding is on the peers' decoder threads).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::Recipient;
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaData, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::decode::{DecoderHandle, EncodedFrame};
use super::video::VideoCodec;
use super::{CHANNEL_LABEL, CloseReason, Command, OpenError, PeerEvent};
use crate::config::{DecodeLimits, RtcConfig};
use crate::metrics::Metrics;

/// Largest UDP datagram read: WebRTC keeps packets under the path MTU
/// (str0m sends at most 1150 bytes; browsers ~1200); the rest is room.
const DATAGRAM_MAX: usize = 2048;

/// How often the engine looks for peers to reap when no timer is due.
const REAP_EVERY: Duration = Duration::from_millis(500);

/// Fewest time between two keyframe requests to one peer: a keyframe takes
/// about a round trip plus an encode to arrive, and each one costs the
/// sender 5–10x a normal frame's bits.
const PLI_MIN_INTERVAL: Duration = Duration::from_millis(500);

/// Longest a video frame waits for a missing packet (a NACKed
/// retransmission) before str0m gives up on it and the engine asks for a
/// keyframe. str0m's default, 2 s, suits recording; live inference wants the
/// newest picture: 300 ms covers two or three retransmission round trips
/// on a continental path (RTT up to ~100 ms). Measured with
/// tests/rtc.rs's lossy relay (200 ms of loss every 2 s, retransmissions
/// lost too): with the default, results stalled in 5 of 7 runs (fewer than
/// three between keyframe requests for 60 s); with 300 ms, 4 of 4 runs got
/// results after every burst.
const REORDER_TIMEOUT: Duration = Duration::from_millis(300);

/// Bytes queued on a data channel past which results are dropped (and
/// counted) rather than buffered: ~100 results of one person.
const CHANNEL_MAX_BUFFERED: usize = 256 * 1024;

/// Longest data-channel text passed on to the session: `config` is under
/// 200 bytes; anything longer is refused before it is parsed.
const CHANNEL_MAX_TEXT: usize = 4096;

struct Peer {
    rtc: Rtc,
    sink: Recipient<PeerEvent>,
    decoder: DecoderHandle,
    /// The `holistream` channel, once open.
    channel: Option<ChannelId>,
    video: Option<Mid>,
    /// Waiting for a keyframe: after a loss, a dropped frame or a decode
    /// error, and at the start; frames that depend on others are skipped.
    awaiting_keyframe: bool,
    last_pli: Option<Instant>,
    /// The last RTP sequence number received (str0m's, unwrapped).
    last_seq: Option<u64>,
    last_rx: Instant,
    next_timeout: Instant,
}

pub struct Engine {
    local: SocketAddr,
    cfg: RtcConfig,
    limits: DecodeLimits,
    metrics: Metrics,
    commands: mpsc::Sender<Command>,
    peers: HashMap<Uuid, Peer>,
    /// Which peer a source address last belonged to (the lookup is then one
    /// `accepts` call instead of one per peer).
    sources: HashMap<SocketAddr, Uuid>,
}

impl Engine {
    pub fn new(
        local: SocketAddr,
        cfg: RtcConfig,
        limits: DecodeLimits,
        metrics: Metrics,
        commands: mpsc::Sender<Command>,
    ) -> Engine {
        Engine {
            local,
            cfg,
            limits,
            metrics,
            commands,
            peers: HashMap::new(),
            sources: HashMap::new(),
        }
    }

    /// Runs until `shutdown` (or every handle is dropped), then closes every
    /// peer.
    pub fn run(
        mut self,
        socket: std::net::UdpSocket,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "WebRTC engine: no runtime; ingest is down");
                return;
            }
        };
        runtime.block_on(async move {
            let socket = match UdpSocket::from_std(socket) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "WebRTC engine: socket unusable; ingest is down");
                    return;
                }
            };
            let mut buf = vec![0u8; DATAGRAM_MAX];
            loop {
                let deadline = self
                    .peers
                    .values()
                    .map(|p| p.next_timeout)
                    .min()
                    .unwrap_or_else(Instant::now)
                    .min(Instant::now() + REAP_EVERY);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    cmd = commands.recv() => match cmd {
                        Some(cmd) => self.command(cmd, &socket),
                        None => break,
                    },
                    got = socket.recv_from(&mut buf) => match got {
                        Ok((n, source)) => self.receive(&buf[..n], source, &socket),
                        // ICMP errors surface here on Linux (a peer's port
                        // closed); the peer's timeout handles it.
                        Err(e) => tracing::debug!(error = %e, "WebRTC socket receive error"),
                    },
                    () = tokio::time::sleep_until(deadline.into()) => {}
                }
                self.tick(Instant::now(), &socket);
            }
            let ids: Vec<Uuid> = self.peers.keys().copied().collect();
            for id in ids {
                self.close(id, CloseReason::Shutdown);
            }
        });
    }

    fn command(&mut self, cmd: Command, socket: &UdpSocket) {
        match cmd {
            Command::Open {
                id,
                offer,
                codecs,
                sink,
                reply,
            } => {
                let answer = self.open(id, offer, &codecs, sink);
                if answer.is_ok() {
                    self.drive(id, socket);
                }
                let _ = reply.send(answer);
            }
            Command::Close { id, reason, reply } => {
                let found = self.close(id, reason);
                if let Some(reply) = reply {
                    let _ = reply.send(found);
                }
            }
            Command::Send { id, text } => {
                if self.send(id, &text) {
                    self.drive(id, socket);
                } else {
                    self.metrics.rtc.results_undelivered_total.inc();
                }
            }
            Command::DecodeFailed { id } => {
                if let Some(peer) = self.peers.get_mut(&id) {
                    peer.awaiting_keyframe = true;
                    request_keyframe(peer, "decode_error", &self.metrics);
                    self.drive(id, socket);
                }
            }
        }
    }

    fn open(
        &mut self,
        id: Uuid,
        offer: str0m::change::SdpOffer,
        codecs: &[VideoCodec],
        sink: Recipient<PeerEvent>,
    ) -> Result<String, OpenError> {
        let now = Instant::now();
        // str0m answers in the order of its own codec list: enabled in the
        // offer's order, the sender's first choice is what it sends.
        let config = codecs.iter().fold(
            Rtc::builder()
                .set_ice_lite(true)
                .set_reordering_timeout_video(Some(REORDER_TIMEOUT))
                .clear_codecs(),
            |config, codec| match codec {
                VideoCodec::H264 => config.enable_h264(true),
                VideoCodec::Vp8 => config.enable_vp8(true),
            },
        );
        let mut rtc = config.build(now);
        let candidate = Candidate::host(self.local, "udp")
            .map_err(|e| OpenError::BadOffer(format!("local candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| OpenError::BadOffer(e.to_string()))?;
        let decoder = DecoderHandle::spawn(
            id,
            sink.clone(),
            self.commands.clone(),
            self.limits,
            self.cfg.max_encoded_frame_bytes,
            self.metrics.clone(),
        )
        .map_err(|e| {
            tracing::error!(error = %e, "no decoder thread for a WebRTC peer");
            OpenError::Unavailable
        })?;
        self.peers.insert(
            id,
            Peer {
                rtc,
                sink,
                decoder,
                channel: None,
                video: None,
                awaiting_keyframe: true,
                last_pli: None,
                last_seq: None,
                last_rx: now,
                next_timeout: now,
            },
        );
        self.metrics
            .rtc
            .sessions_active
            .set(self.peers.len() as i64);
        Ok(answer.to_sdp_string())
    }

    /// Removes peer `id` and tells its session; false if there was none.
    fn close(&mut self, id: Uuid, reason: CloseReason) -> bool {
        let Some(mut peer) = self.peers.remove(&id) else {
            return false;
        };
        peer.rtc.disconnect();
        self.sources.retain(|_, p| *p != id);
        self.metrics
            .rtc
            .closed_total
            .with_label_values(&[reason.label()])
            .inc();
        self.metrics
            .rtc
            .sessions_active
            .set(self.peers.len() as i64);
        if reason != CloseReason::SessionEnded {
            peer.sink.do_send(PeerEvent::Closed(reason));
        }
        tracing::info!(peer = %short(id), reason = reason.label(), "WebRTC peer closed");
        true
    }

    /// Writes `text` on the peer's channel; false if it cannot take it.
    fn send(&mut self, id: Uuid, text: &str) -> bool {
        let Some(peer) = self.peers.get_mut(&id) else {
            return false;
        };
        let Some(mut channel) = peer.channel.and_then(|c| peer.rtc.channel(c)) else {
            return false;
        };
        if channel.buffered_amount() > CHANNEL_MAX_BUFFERED {
            return false;
        }
        channel.write(false, text.as_bytes()).unwrap_or(false)
    }

    fn receive(&mut self, data: &[u8], source: SocketAddr, socket: &UdpSocket) {
        let now = Instant::now();
        let Ok(contents) = data.try_into() else {
            self.metrics.rtc.udp_unmatched_total.inc();
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        );
        let cached = self
            .sources
            .get(&source)
            .copied()
            .filter(|id| self.peers.get(id).is_some_and(|p| p.rtc.accepts(&input)));
        let id = cached.or_else(|| {
            self.peers
                .iter()
                .find(|(_, p)| p.rtc.accepts(&input))
                .map(|(id, _)| *id)
        });
        let Some(id) = id else {
            self.metrics.rtc.udp_unmatched_total.inc();
            return;
        };
        self.sources.insert(source, id);
        // unwrap: found just above.
        let peer = self.peers.get_mut(&id).unwrap();
        peer.last_rx = now;
        if let Err(e) = peer.rtc.handle_input(input) {
            tracing::debug!(peer = %short(id), error = %e, "WebRTC input refused");
            self.close(id, CloseReason::Failed);
            return;
        }
        self.drive(id, socket);
    }

    /// Timers due, and peers to reap.
    fn tick(&mut self, now: Instant, socket: &UdpSocket) {
        let timeout = Duration::from_millis(self.cfg.ice_timeout_ms);
        let mut reap = Vec::new();
        let mut due = Vec::new();
        for (id, peer) in &self.peers {
            if !peer.rtc.is_alive() {
                reap.push((*id, CloseReason::Failed));
            } else if now.duration_since(peer.last_rx) > timeout {
                reap.push((*id, CloseReason::Timeout));
            } else if peer.next_timeout <= now {
                due.push(*id);
            }
        }
        for (id, reason) in reap {
            self.close(id, reason);
        }
        for id in due {
            if let Some(peer) = self.peers.get_mut(&id) {
                if peer.rtc.handle_input(Input::Timeout(now)).is_err() {
                    self.close(id, CloseReason::Failed);
                    continue;
                }
                self.drive(id, socket);
            }
        }
    }

    /// Polls peer `id` until it waits on a timer: sends what it has to
    /// send, handles its events.
    fn drive(&mut self, id: Uuid, socket: &UdpSocket) {
        let mut closing = None;
        {
            let Some(peer) = self.peers.get_mut(&id) else {
                return;
            };
            loop {
                match peer.rtc.poll_output() {
                    Ok(Output::Timeout(t)) => {
                        peer.next_timeout = t;
                        break;
                    }
                    Ok(Output::Transmit(t)) => {
                        // UDP: a full send buffer drops the datagram, as
                        // the network may; str0m retransmits what matters.
                        let _ = socket.try_send_to(&t.contents, t.destination);
                    }
                    Ok(Output::Event(event)) => {
                        if let Some(reason) = on_event(id, peer, event, &self.cfg, &self.metrics) {
                            closing = Some(reason);
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(peer = %short(id), error = %e, "WebRTC peer failed");
                        closing = Some(CloseReason::Failed);
                        break;
                    }
                }
            }
        }
        if let Some(reason) = closing {
            self.close(id, reason);
        }
    }
}

/// One str0m event of peer `id`; the reason to close it, if any.
fn on_event(
    id: Uuid,
    peer: &mut Peer,
    event: Event,
    cfg: &RtcConfig,
    metrics: &Metrics,
) -> Option<CloseReason> {
    match event {
        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
            return Some(CloseReason::Failed);
        }
        Event::MediaAdded(added) if added.kind == MediaKind::Video => {
            peer.video = Some(added.mid);
        }
        Event::MediaData(data) => on_media(peer, data, cfg, metrics),
        Event::ChannelOpen(channel, label) => {
            if label == CHANNEL_LABEL && peer.channel.is_none() {
                peer.channel = Some(channel);
                peer.sink.do_send(PeerEvent::ChannelOpen);
            } else {
                tracing::debug!(peer = %short(id), label, "ignoring a data channel");
            }
        }
        Event::ChannelData(data) if Some(data.id) == peer.channel => {
            let event = if data.binary {
                PeerEvent::ChannelRefused("binary messages are not supported on the channel")
            } else if data.data.len() > CHANNEL_MAX_TEXT {
                PeerEvent::ChannelRefused("message too long for the channel")
            } else {
                match String::from_utf8(data.data) {
                    Ok(text) => PeerEvent::ChannelText(text),
                    Err(_) => PeerEvent::ChannelRefused("text message is not UTF-8"),
                }
            };
            peer.sink.do_send(event);
        }
        Event::ChannelClose(channel) if Some(channel) == peer.channel => {
            peer.channel = None;
        }
        _ => {}
    }
    None
}

/// A depacketised frame: loss accounting, keyframe gating, then the
/// decoder's queue.
fn on_media(peer: &mut Peer, data: MediaData, cfg: &RtcConfig, metrics: &Metrics) {
    let codec = match data.params.spec().codec {
        Codec::H264 => VideoCodec::H264,
        Codec::Vp8 => VideoCodec::Vp8,
        // Only these two are negotiated.
        _ => return,
    };
    let (first, last) = (**data.seq_range.start(), **data.seq_range.end());
    tracing::trace!(
        first,
        last,
        contiguous = data.contiguous,
        keyframe = data.is_keyframe(),
        awaiting = peer.awaiting_keyframe,
        bytes = data.data.len(),
        "media"
    );
    if let Some(prev) = peer.last_seq
        && first > prev + 1
    {
        metrics.rtc.packets_lost_total.inc_by(first - prev - 1);
    }
    peer.last_seq = Some(peer.last_seq.map_or(last, |p| p.max(last)));
    if !data.contiguous && !data.is_keyframe() {
        peer.awaiting_keyframe = true;
        request_keyframe(peer, "loss", metrics);
    }
    if data.data.len() > cfg.max_encoded_frame_bytes {
        drop_frame(peer, "too_big", metrics);
        return;
    }
    if data.is_keyframe() {
        peer.awaiting_keyframe = false;
    } else if peer.awaiting_keyframe {
        // A frame that refers to one the decoder never got: skip it until
        // the keyframe asked for arrives.
        metrics
            .rtc
            .frames_dropped_total
            .with_label_values(&["awaiting_keyframe"])
            .inc();
        let reason = if peer.last_pli.is_none() {
            "start"
        } else {
            "loss"
        };
        request_keyframe(peer, reason, metrics);
        return;
    }
    let frame = EncodedFrame {
        codec,
        data: data.data,
        rtp_ts: data.time.numer() as u32,
        // Now, not the first packet's `network_time`: a frame held for a
        // retransmission arrives when it is complete, and the session's fps
        // cap and the pool's TTL count from its arrival.
        arrived: Instant::now(),
    };
    if !peer.decoder.push(frame) {
        drop_frame(peer, "queue_full", metrics);
    }
}

fn drop_frame(peer: &mut Peer, reason: &'static str, metrics: &Metrics) {
    metrics
        .rtc
        .frames_dropped_total
        .with_label_values(&[reason])
        .inc();
    peer.awaiting_keyframe = true;
    request_keyframe(peer, "dropped", metrics);
}

/// Sends a PLI, at most one per [`PLI_MIN_INTERVAL`].
fn request_keyframe(peer: &mut Peer, reason: &'static str, metrics: &Metrics) {
    let now = Instant::now();
    if peer
        .last_pli
        .is_some_and(|t| now.duration_since(t) < PLI_MIN_INTERVAL)
    {
        return;
    }
    let Some(mut writer) = peer.video.and_then(|mid| peer.rtc.writer(mid)) else {
        return;
    };
    if writer
        .request_keyframe(None, KeyframeRequestKind::Pli)
        .is_ok()
    {
        peer.last_pli = Some(now);
        metrics
            .rtc
            .keyframe_requests_total
            .with_label_values(&[reason])
            .inc();
    }
}

/// The first 8 hex digits of a peer id: enough to follow one in the logs,
/// not the capability its full id is (the `Location` of its resource).
fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}
