//! A peer's decoder thread: every encoded frame the engine forwards is
//! decoded (inter-frame codecs need them all), each picture goes to the
//! session actor, whose latest-wins slot keeps only the newest.
//!
//! A thread per peer, not a task: decoding is CPU work (2–6 ms a 640x480
//! frame) that must stay off the engine's socket loop and the async
//! threads, and a codec context is stateful, so one peer's frames must be
//! decoded in order on one context.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Instant;

use actix::Recipient;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::codec::VideoDecoder;
use super::video::VideoCodec;
use super::{Command, PeerEvent};
use crate::config::DecodeLimits;
use crate::metrics::Metrics;

/// Encoded frames waiting for a peer's decoder: a second at 30 fps (after
/// a retransmission the receiver releases every frame it held at once). A
/// decoder that far behind drops the next frame, and the engine asks for a
/// keyframe to start again from.
const DECODE_QUEUE: usize = 32;

/// Bytes of encoded frames waiting for one peer's decoder (at least one
/// frame of `rtc.max_encoded_frame_bytes`): 32 frames of a 1 Mbit/s stream
/// are ~130 KB, so only a sender of huge frames meets this bound, which
/// keeps what one peer can make the server hold to a few MB.
const DECODE_QUEUE_BYTES: usize = 4 << 20;

/// One depacketised frame.
pub struct EncodedFrame {
    pub codec: VideoCodec,
    pub data: Arc<[u8]>,
    pub rtp_ts: u32,
    pub arrived: Instant,
}

/// The engine's end of a decoder thread; dropping it ends the thread.
pub struct DecoderHandle {
    frames: SyncSender<EncodedFrame>,
    /// Bytes queued and not yet taken by the decoder.
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl DecoderHandle {
    /// Starts the decoder thread of peer `id`.
    /// `max_frame_bytes` is the largest frame the engine forwards.
    pub fn spawn(
        id: Uuid,
        sink: Recipient<PeerEvent>,
        engine: mpsc::Sender<Command>,
        limits: DecodeLimits,
        max_frame_bytes: usize,
        metrics: Metrics,
    ) -> std::io::Result<DecoderHandle> {
        let (frames, rx) = sync_channel(DECODE_QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let taken = queued.clone();
        std::thread::Builder::new()
            .name("rtc-decode".into())
            .spawn(move || decode_loop(id, rx, taken, sink, engine, limits, metrics))?;
        Ok(DecoderHandle {
            frames,
            queued,
            max_bytes: DECODE_QUEUE_BYTES.max(max_frame_bytes),
        })
    }

    /// Queues `frame`; false (the frame dropped) when the decoder is
    /// [`DECODE_QUEUE`] frames or [`DECODE_QUEUE_BYTES`] behind, or gone.
    pub fn push(&self, frame: EncodedFrame) -> bool {
        let len = frame.data.len();
        if self.queued.load(Ordering::Acquire) + len > self.max_bytes {
            return false;
        }
        self.queued.fetch_add(len, Ordering::AcqRel);
        match self.frames.try_send(frame) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(len, Ordering::AcqRel);
                false
            }
        }
    }
}

fn decode_loop(
    id: Uuid,
    frames: Receiver<EncodedFrame>,
    queued: Arc<AtomicUsize>,
    sink: Recipient<PeerEvent>,
    engine: mpsc::Sender<Command>,
    limits: DecodeLimits,
    metrics: Metrics,
) {
    let mut decoder: Option<VideoDecoder> = None;
    let failed = || {
        // Full queue: the engine will see the next loss or error anyway.
        let _ = engine.try_send(Command::DecodeFailed { id });
    };
    while let Ok(frame) = frames.recv() {
        queued.fetch_sub(frame.data.len(), Ordering::AcqRel);
        if decoder.as_ref().map(VideoDecoder::codec) != Some(frame.codec) {
            match VideoDecoder::new(frame.codec) {
                Ok(d) => decoder = Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, "no decoder for the peer's codec");
                    failed();
                    continue;
                }
            }
        }
        // unwrap: set just above.
        let d = decoder.as_mut().unwrap();
        let label = frame.codec.label();
        let started = Instant::now();
        let decoded = d.decode(&frame.data, &limits);
        metrics
            .rtc
            .decode_seconds
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
        match decoded {
            Ok(Some(picture)) => {
                metrics
                    .rtc
                    .frames_decoded_total
                    .with_label_values(&[label])
                    .inc();
                sink.do_send(PeerEvent::Picture {
                    rtp_ts: frame.rtp_ts,
                    picture,
                    arrived: frame.arrived,
                });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(codec = label, error = %e, "decode failed; asking for a keyframe");
                // A codec context after an error may hold a broken
                // reference: start from the keyframe on a fresh one.
                decoder = None;
                failed();
            }
        }
    }
}
