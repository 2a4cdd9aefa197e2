//! The client side of WebRTC ingest, in Rust: what `holistream loadgen
//! --transport rtc` and the tests send with, so neither needs a browser.
//!
//! The same str0m, as the controlling (full ICE) side, on a UDP socket of
//! its own, driven by a thread of its own that also encodes (H.264 with
//! openh264 or VP8 with libvpx, [`super::codec`]). The caller does the WHIP
//! POST: [`RtcClient::offer`] gives the offer, [`PendingClient::accept`]
//! takes the answer.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::mpsc as tokio_mpsc;

use super::CHANNEL_LABEL;
use super::codec::VideoEncoder;
use super::video::VideoCodec;
use crate::model::I420Picture;

/// How long the client thread waits on its socket before it looks at its
/// commands again: a frame at 30 fps is 33 ms, so sending stays on time.
const POLL: Duration = Duration::from_millis(2);

/// What the client sends.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub codec: VideoCodec,
    /// Target bitrate of the encoder.
    pub bitrate_kbps: u32,
    /// Frames per second the caller sends (sets the encoder's rate control).
    pub fps: u32,
    /// Open the `holistream` data channel (results come back on it); a
    /// stock WHIP encoder opens none.
    pub data_channel: bool,
    pub width: u32,
    pub height: u32,
}

/// What the client thread reports.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// ICE connected (DTLS follows; media flows once it is done).
    Connected,
    /// The data channel opened.
    ChannelOpen,
    /// A text message from the server (hello, result, stats, error).
    Text(String),
    /// The server asked for a keyframe (the next picture is one).
    KeyframeRequested,
    /// The peer connection ended; `why` in words.
    Closed(String),
}

/// A client error.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("client socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("WebRTC: {0}")]
    Rtc(String),
    #[error("the server's answer: {0}")]
    Answer(String),
    #[error(transparent)]
    Codec(#[from] super::CodecError),
}

/// An offer made, waiting for the server's answer.
pub struct PendingClient {
    rtc: Rtc,
    pending: SdpPendingOffer,
    socket: UdpSocket,
    local: SocketAddr,
    video: Mid,
    opts: ClientOptions,
}

/// The client and its offer.
pub struct RtcClient;

impl RtcClient {
    /// Binds a socket on the interface that reaches `server` and makes an
    /// offer: one send-only video track of `opts.codec`, and the data
    /// channel if asked.
    pub fn offer(
        server: IpAddr,
        opts: ClientOptions,
    ) -> Result<(PendingClient, String), ClientError> {
        let socket = UdpSocket::bind(SocketAddr::new(unspecified_like(server), 0))?;
        // The local address a packet to the server leaves from: the one
        // candidate worth announcing.
        let probe = UdpSocket::bind(SocketAddr::new(unspecified_like(server), 0))?;
        probe.connect(SocketAddr::new(server, 9))?;
        let local = SocketAddr::new(probe.local_addr()?.ip(), socket.local_addr()?.port());
        socket.set_read_timeout(Some(POLL))?;
        let config = Rtc::builder().clear_codecs();
        let config = match opts.codec {
            VideoCodec::H264 => config.enable_h264(true),
            VideoCodec::Vp8 => config.enable_vp8(true),
        };
        let mut rtc = config.build(Instant::now());
        let candidate =
            Candidate::host(local, "udp").map_err(|e| ClientError::Rtc(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        let mut api = rtc.sdp_api();
        let video = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        if opts.data_channel {
            api.add_channel(CHANNEL_LABEL.into());
        }
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| ClientError::Rtc("nothing to offer".into()))?;
        let sdp = offer.to_sdp_string();
        Ok((
            PendingClient {
                rtc,
                pending,
                socket,
                local,
                video,
                opts,
            },
            sdp,
        ))
    }
}

fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::from([0u8; 4]),
        IpAddr::V6(_) => IpAddr::from([0u16; 8]),
    }
}

impl PendingClient {
    /// Takes the server's SDP answer and starts the client thread.
    pub fn accept(mut self, answer: &str) -> Result<ClientHandle, ClientError> {
        let answer =
            SdpAnswer::from_sdp_string(answer).map_err(|e| ClientError::Answer(e.to_string()))?;
        self.rtc
            .sdp_api()
            .accept_answer(self.pending, answer)
            .map_err(|e| ClientError::Answer(e.to_string()))?;
        let encoder = VideoEncoder::new(
            self.opts.codec,
            self.opts.width,
            self.opts.height,
            self.opts.bitrate_kbps,
            self.opts.fps,
        )?;
        let (commands, rx) = mpsc::channel();
        let (events_tx, events) = tokio_mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let worker = ClientThread {
            rtc: self.rtc,
            socket: self.socket,
            local: self.local,
            video: self.video,
            codec: self.opts.codec,
            encoder,
            frame_ticks: 90_000 / self.opts.fps.max(1),
            channel: None,
            connected: false,
            keyframe: true,
            events: events_tx,
            sent_bytes: 0,
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("rtc-client".into())
            .spawn(move || worker.run(rx))?;
        Ok(ClientHandle {
            sender: ClientSender(commands),
            stop,
            events,
            thread: Some(thread),
        })
    }
}

enum ClientCommand {
    Picture {
        picture: I420Picture,
        rtp_ts: u32,
    },
    /// Bytes sent as a frame as they are (tests: a corrupt frame).
    Encoded {
        data: Vec<u8>,
        rtp_ts: u32,
    },
    Text(String),
}

/// A running client. Dropping it closes the connection (the caller sends
/// the WHIP `DELETE`).
pub struct ClientHandle {
    sender: ClientSender,
    stop: Arc<AtomicBool>,
    /// What the client thread reports, in order.
    pub events: tokio_mpsc::UnboundedReceiver<ClientEvent>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

/// Sends into a running client from any thread (a camera loop).
#[derive(Clone)]
pub struct ClientSender(mpsc::Sender<ClientCommand>);

impl ClientSender {
    /// Encodes and sends `picture` with RTP timestamp `rtp_ts` (90 kHz);
    /// dropped (as a camera's frame would be) before the connection is up.
    pub fn send_picture(&self, picture: I420Picture, rtp_ts: u32) {
        let _ = self.0.send(ClientCommand::Picture { picture, rtp_ts });
    }

    /// Sends a text message on the data channel (e.g. `config`).
    pub fn send_text(&self, text: String) {
        let _ = self.0.send(ClientCommand::Text(text));
    }

    /// Sends `data` as one encoded frame, not encoding anything: what a
    /// broken or hostile encoder would send.
    pub fn send_encoded(&self, data: Vec<u8>, rtp_ts: u32) {
        let _ = self.0.send(ClientCommand::Encoded { data, rtp_ts });
    }
}

impl ClientHandle {
    /// A sender for another thread.
    pub fn sender(&self) -> ClientSender {
        self.sender.clone()
    }

    /// See [`ClientSender::send_picture`].
    pub fn send_picture(&self, picture: I420Picture, rtp_ts: u32) {
        self.sender.send_picture(picture, rtp_ts);
    }

    /// See [`ClientSender::send_text`].
    pub fn send_text(&self, text: String) {
        self.sender.send_text(text);
    }

    /// Ends the connection; the encoded bytes sent over its life.
    pub fn close(mut self) -> u64 {
        self.stop()
    }

    fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map_or(0, |t| t.join().unwrap_or_default())
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

struct ClientThread {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    video: Mid,
    codec: VideoCodec,
    encoder: VideoEncoder,
    /// One frame's duration at the client's rate, in RTP ticks (90 kHz).
    frame_ticks: u32,
    channel: Option<ChannelId>,
    connected: bool,
    /// The next picture goes out as a keyframe (the first, and after PLI).
    keyframe: bool,
    events: tokio_mpsc::UnboundedSender<ClientEvent>,
    sent_bytes: u64,
    /// Set by the handle: end now.
    stop: Arc<AtomicBool>,
}

impl ClientThread {
    /// Runs until the handle goes or the connection ends; the encoded bytes
    /// sent.
    fn run(mut self, commands: mpsc::Receiver<ClientCommand>) -> u64 {
        let why = loop {
            if self.stop.load(Ordering::Relaxed) {
                self.rtc.disconnect();
                return self.sent_bytes;
            }
            loop {
                match commands.try_recv() {
                    Ok(cmd) => {
                        if let Err(e) = self.command(cmd) {
                            let _ = self.events.send(ClientEvent::Closed(e.to_string()));
                            return self.sent_bytes;
                        }
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.rtc.disconnect();
                        return self.sent_bytes;
                    }
                }
            }
            if let Err(why) = self.drive() {
                break why;
            }
            let mut buf = [0u8; 2048];
            let input = match self.socket.recv_from(&mut buf) {
                Ok((n, source)) => match Receive::new(Protocol::Udp, source, self.local, &buf[..n])
                {
                    Ok(r) => Input::Receive(Instant::now(), r),
                    Err(_) => continue,
                },
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    Input::Timeout(Instant::now())
                }
                Err(e) => break e.to_string(),
            };
            if let Err(e) = self.rtc.handle_input(input) {
                break e.to_string();
            }
        };
        let _ = self.events.send(ClientEvent::Closed(why));
        self.sent_bytes
    }

    fn command(&mut self, cmd: ClientCommand) -> Result<(), ClientError> {
        match cmd {
            ClientCommand::Picture { picture, rtp_ts } => {
                if !self.connected {
                    return Ok(());
                }
                let keyframe = std::mem::take(&mut self.keyframe);
                let data = self.encoder.encode(&picture, self.frame_ticks, keyframe)?;
                self.write(data, rtp_ts)
            }
            ClientCommand::Encoded { data, rtp_ts } => {
                if !self.connected {
                    return Ok(());
                }
                self.write(data, rtp_ts)
            }
            ClientCommand::Text(text) => {
                if let Some(mut ch) = self.channel.and_then(|c| self.rtc.channel(c)) {
                    ch.write(false, text.as_bytes())
                        .map_err(|e| ClientError::Rtc(e.to_string()))?;
                }
                Ok(())
            }
        }
    }

    /// Writes one encoded frame on the video track.
    fn write(&mut self, data: Vec<u8>, rtp_ts: u32) -> Result<(), ClientError> {
        if data.is_empty() {
            return Ok(());
        }
        let want = match self.codec {
            VideoCodec::H264 => Codec::H264,
            VideoCodec::Vp8 => Codec::Vp8,
        };
        let Some(writer) = self.rtc.writer(self.video) else {
            return Ok(());
        };
        let Some(pt) = writer
            .payload_params()
            .find(|p| p.spec().codec == want)
            .map(|p| p.pt())
        else {
            return Err(ClientError::Rtc("the answer took no video codec".into()));
        };
        self.sent_bytes += data.len() as u64;
        writer
            .write(
                pt,
                Instant::now(),
                MediaTime::new(u64::from(rtp_ts), Frequency::NINETY_KHZ),
                data,
            )
            .map_err(|e| ClientError::Rtc(e.to_string()))
    }

    /// Sends what str0m has to send and reports its events; the reason to
    /// stop, if any.
    fn drive(&mut self) -> Result<(), String> {
        loop {
            match self.rtc.poll_output().map_err(|e| e.to_string())? {
                Output::Timeout(_) => return Ok(()),
                Output::Transmit(t) => {
                    // UDP: a failed send is a lost packet.
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                Output::Event(event) => match event {
                    Event::Connected => {
                        self.connected = true;
                        let _ = self.events.send(ClientEvent::Connected);
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        return Err("ICE disconnected".into());
                    }
                    Event::ChannelOpen(id, _) => {
                        self.channel = Some(id);
                        let _ = self.events.send(ClientEvent::ChannelOpen);
                    }
                    Event::ChannelData(d) if !d.binary => {
                        let text = String::from_utf8_lossy(&d.data).into_owned();
                        let _ = self.events.send(ClientEvent::Text(text));
                    }
                    Event::KeyframeRequest(_) => {
                        self.keyframe = true;
                        let _ = self.events.send(ClientEvent::KeyframeRequested);
                    }
                    _ => {}
                },
            }
        }
    }
}
