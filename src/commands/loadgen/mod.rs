//! `holistream loadgen`: real clients against a running server, over the
//! WebSocket (JPEG frames, the default) or WebRTC (`--transport rtc`: the
//! images as an H.264 or VP8 video track, [`rtc`]).
//!
//! Each WebSocket client logs in (`POST /auth/code`), opens `/ws` with its cookie and a
//! matching `Origin`, and sends real JPEG frames with the binary header at the
//! given rate, never more than `--max-outstanding` unanswered frames at once
//! (like the web demo, which waits for answers instead of piling frames up).
//! The report gives end-to-end latency (capture → result received)
//! percentiles, result fps per client, the server's per-stage times, drops by
//! reason (from the server's `stats` messages) and errors by code. With
//! `--people N` (N > 1) each client asks for N people (`{"type":"config",
//! "people":N}`) and the report adds how many people the results carried.

use std::collections::{BTreeMap, VecDeque};
use std::io::Cursor;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use awc::ws;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};

use crate::actors::protocol::{FrameHeader, FrameTimings, SessionStats};
use crate::actors::rtc::VideoCodec;

mod rtc;

/// How frames reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// JPEG frames in WebSocket messages.
    Ws,
    /// A WebRTC video track (WHIP), results on a data channel.
    Rtc,
}

/// The codec of `--transport rtc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CodecArg {
    H264,
    Vp8,
}

impl From<CodecArg> for VideoCodec {
    fn from(c: CodecArg) -> VideoCodec {
        match c {
            CodecArg::H264 => VideoCodec::H264,
            CodecArg::Vp8 => VideoCodec::Vp8,
        }
    }
}

/// Arguments of `holistream loadgen`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The entry code.
    #[arg(long, env = "HOLISTREAM_PASSWORD", hide_env_values = true)]
    pub password: String,
    /// Concurrent clients, each with its own login and WebSocket.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Frames per second sent by each client.
    #[arg(long, default_value_t = 20.0)]
    pub fps: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Images to send (JPEG, PNG), cycled through.
    #[arg(long = "image", required = true, num_args = 1..)]
    pub images: Vec<PathBuf>,
    /// Re-encode every image as a JPEG of this size (`WxH`), or `original`
    /// to send JPEG files as they are.
    #[arg(long, default_value = "640x480")]
    pub size: String,
    /// Most frames a client leaves unanswered before it skips a tick.
    #[arg(long, default_value_t = 2)]
    pub max_outstanding: usize,
    /// Most people to find per frame (the session's `people`; at most the
    /// server's `session.max_people`). 1 sends no `people` at all: plain
    /// single-person Holistic.
    #[arg(long, default_value_t = 1)]
    pub people: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// `ws`: JPEG frames over the WebSocket; `rtc`: a video track over
    /// WebRTC (WHIP with the entry code as bearer token), every frame sent
    /// at the rate (a camera does not wait for answers).
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// The video codec of `--transport rtc`.
    #[arg(long, value_enum, default_value_t = CodecArg::H264)]
    pub codec: CodecArg,
    /// The encoder's target bitrate for `--transport rtc`, kbit/s (browsers
    /// send 640x480 at 0.5–1.5 Mbit/s).
    #[arg(long, default_value_t = 1000)]
    pub bitrate_kbps: u32,
}

/// Percentiles of a latency sample, ms.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub count: usize,
}

impl Percentiles {
    /// Percentiles of `samples` (sorted in place) by
    /// [`crate::stats::percentile`] (nearest rank); all zero when empty.
    pub fn of(samples: &mut [f64]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        let mut at = |q: f64| crate::stats::percentile(samples, q);
        Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
            count: samples.len(),
        }
    }
}

/// What one client saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientReport {
    pub sent: u64,
    /// Bytes of frames sent (JPEGs with their headers, or the encoded video).
    pub sent_bytes: u64,
    pub results: u64,
    /// Ticks skipped because `max_outstanding` frames were unanswered.
    pub skipped: u64,
    pub result_fps: f64,
    pub errors: BTreeMap<String, u64>,
    /// The last `stats` message of the server for this session.
    pub server_stats: SessionStats,
    /// Results by the number of people they carried (only results with a
    /// `people` list, i.e. with `--people` above 1).
    pub people_per_result: BTreeMap<usize, u64>,
    #[serde(skip)]
    pub latencies_ms: Vec<f64>,
    #[serde(skip)]
    pub timings: Vec<FrameTimings>,
}

/// Mean server-side times per processed frame, ms.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ServerTimes {
    pub queue_ms: f64,
    pub decode_ms: f64,
    pub infer_ms: f64,
    pub serialize_ms: f64,
    pub total_ms: f64,
    /// `queue + decode + serialize`: the server's own work around the
    /// forward passes.
    pub overhead_ms: f64,
    /// `total - (queue + decode + infer + serialize)`: time the frame waited
    /// in its session's slot for the session's previous frame (latest wins),
    /// plus message passing.
    pub slot_wait_ms: f64,
}

/// Drops by reason, summed over clients (server counts).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Drops {
    pub stale: u64,
    pub fps: u64,
    pub overload: u64,
    pub expired: u64,
}

/// How many people the results carried (`--people` above 1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeopleCounts {
    /// The `people` each client asked for.
    pub asked: usize,
    /// Mean people per result with a `people` list.
    pub mean: f64,
    /// Results by the number of people they carried.
    pub histogram: BTreeMap<usize, u64>,
}

impl PeopleCounts {
    /// The counts of `histogram`, for clients that asked for `asked` people.
    pub fn of(asked: usize, histogram: BTreeMap<usize, u64>) -> PeopleCounts {
        let results: u64 = histogram.values().sum();
        let people: u64 = histogram.iter().map(|(n, r)| *n as u64 * r).sum();
        PeopleCounts {
            asked,
            mean: people as f64 / results.max(1) as f64,
            histogram,
        }
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    pub transport: String,
    /// Upstream bitrate per client, Mbit/s: frame bytes sent over the
    /// sending time.
    pub upstream_mbps: f64,
    pub clients: usize,
    pub fps: f64,
    pub duration_s: f64,
    pub frame_bytes: usize,
    pub sent: u64,
    pub results: u64,
    pub skipped: u64,
    pub result_fps_per_client: Vec<f64>,
    pub result_fps_mean: f64,
    pub latency_ms: Percentiles,
    pub server_ms: ServerTimes,
    pub drops: Drops,
    pub errors: BTreeMap<String, u64>,
    /// Absent at `--people 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub people: Option<PeopleCounts>,
}

impl LoadReport {
    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let per_client: Vec<String> = self
            .result_fps_per_client
            .iter()
            .map(|f| format!("{f:.1}"))
            .collect();
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let people = match &self.people {
            None => String::new(),
            Some(p) => {
                let histogram: Vec<String> = p
                    .histogram
                    .iter()
                    .map(|(n, r)| format!("{n}:{r}"))
                    .collect();
                format!(
                    "\npeople per result (asked {}): mean {:.2} [{}]",
                    p.asked,
                    p.mean,
                    histogram.join(" ")
                )
            }
        };
        format!(
            "transport {}: upstream {:.2} Mbit/s per client\n\
             clients {} at {} fps for {} s, frames of {} bytes\n\
             sent {}  results {}  skipped (outstanding) {}\n\
             result fps per client: mean {:.1} [{}]\n\
             end-to-end latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}\n\
             server ms per frame: queue {:.1}  decode {:.1}  infer {:.1}  serialize {:.2}  total {:.1}\n\
             server overhead (queue+decode+serialize) {:.1} ms vs infer {:.1} ms; waiting in the session slot {:.1} ms\n\
             drops: stale {}  fps {}  overload {}  expired {}\n\
             errors: {}{}",
            self.transport,
            self.upstream_mbps,
            self.clients,
            self.fps,
            self.duration_s,
            self.frame_bytes,
            self.sent,
            self.results,
            self.skipped,
            self.result_fps_mean,
            per_client.join(" "),
            self.latency_ms.p50,
            self.latency_ms.p90,
            self.latency_ms.p99,
            self.latency_ms.max,
            self.server_ms.queue_ms,
            self.server_ms.decode_ms,
            self.server_ms.infer_ms,
            self.server_ms.serialize_ms,
            self.server_ms.total_ms,
            self.server_ms.overhead_ms,
            self.server_ms.infer_ms,
            self.server_ms.slot_wait_ms,
            self.drops.stale,
            self.drops.fps,
            self.drops.overload,
            self.drops.expired,
            errors,
            people
        )
    }
}

/// `holistream loadgen`: runs the clients in an actix system and prints the
/// report.
pub fn main(args: LoadgenArgs) -> anyhow::Result<()> {
    let report = actix_web::rt::System::new().block_on(run(&args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.to_text());
    }
    Ok(())
}

/// Parses `WxH`.
fn parse_size(s: &str) -> anyhow::Result<Option<(u32, u32)>> {
    if s == "original" {
        return Ok(None);
    }
    let (w, h) = s
        .split_once('x')
        .with_context(|| format!("--size {s:?}: expected WxH or original"))?;
    let (w, h): (u32, u32) = (w.parse()?, h.parse()?);
    if w == 0 || h == 0 || w > 8192 || h > 8192 {
        bail!("--size {s:?}: width and height must be in 1..=8192");
    }
    Ok(Some((w, h)))
}

/// Reads the images and encodes them as the JPEG frames to send.
pub fn prepare_frames(paths: &[PathBuf], size: &str) -> anyhow::Result<Vec<Bytes>> {
    let size = parse_size(size)?;
    let mut frames = Vec::with_capacity(paths.len());
    for path in paths {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let is_jpeg = bytes.starts_with(&[0xFF, 0xD8]);
        let Some((w, h)) = size else {
            if !is_jpeg {
                bail!(
                    "{} is not a JPEG; use --size WxH to re-encode it",
                    path.display()
                );
            }
            frames.push(Bytes::from(bytes));
            continue;
        };
        let image = image::load_from_memory(&bytes)
            .with_context(|| format!("decoding {}", path.display()))?
            .to_rgb8();
        let resized = image::imageops::resize(&image, w, h, image::imageops::FilterType::Triangle);
        let mut out = Cursor::new(Vec::new());
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
            .encode_image(&resized)
            .with_context(|| format!("encoding {} as JPEG", path.display()))?;
        frames.push(Bytes::from(out.into_inner()));
    }
    Ok(frames)
}

/// Runs the clients and gathers the report.
pub async fn run(args: &LoadgenArgs) -> anyhow::Result<LoadReport> {
    if args.clients == 0 || !(args.fps > 0.0) || !(args.duration > 0.0) || args.people == 0 {
        bail!("--clients, --fps, --duration and --people must be positive");
    }
    let base = args.url.trim_end_matches('/').to_string();
    if args.transport == Transport::Rtc {
        return rtc::run(args, &base).await;
    }
    let frames = prepare_frames(&args.images, &args.size)?;
    let epoch = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let args = args.clone();
        let frames = frames.clone();
        let base = base.clone();
        tasks.push(actix_web::rt::spawn(async move {
            run_client(i, &base, &args, &frames, epoch).await
        }));
    }
    let mut clients = Vec::with_capacity(tasks.len());
    for t in tasks {
        clients.push(t.await.context("client task panicked")??);
    }
    Ok(summarise(args, frames[0].len(), clients))
}

fn summarise(args: &LoadgenArgs, frame_bytes: usize, clients: Vec<ClientReport>) -> LoadReport {
    let sent_bytes: u64 = clients.iter().map(|c| c.sent_bytes).sum();
    let upstream_mbps = sent_bytes as f64 * 8.0 / 1e6 / args.duration / clients.len().max(1) as f64;
    let mut latencies: Vec<f64> = clients
        .iter()
        .flat_map(|c| c.latencies_ms.iter().copied())
        .collect();
    let timings: Vec<&FrameTimings> = clients.iter().flat_map(|c| c.timings.iter()).collect();
    let n = timings.len().max(1) as f64;
    let mean = |f: fn(&FrameTimings) -> f64| timings.iter().map(|t| f(t)).sum::<f64>() / n;
    let mut server_ms = ServerTimes {
        queue_ms: mean(|t| t.queue_ms),
        decode_ms: mean(|t| t.decode_ms),
        infer_ms: mean(|t| t.infer_ms),
        serialize_ms: mean(|t| t.serialize_ms),
        total_ms: mean(|t| t.total_ms),
        overhead_ms: 0.0,
        slot_wait_ms: 0.0,
    };
    server_ms.overhead_ms = server_ms.queue_ms + server_ms.decode_ms + server_ms.serialize_ms;
    server_ms.slot_wait_ms = server_ms.total_ms - server_ms.overhead_ms - server_ms.infer_ms;
    let mut drops = Drops::default();
    let mut errors = BTreeMap::new();
    let mut people_per_result = BTreeMap::new();
    for c in &clients {
        for (n, r) in &c.people_per_result {
            *people_per_result.entry(*n).or_insert(0) += r;
        }
        drops.stale += c.server_stats.dropped_stale;
        drops.fps += c.server_stats.dropped_fps;
        drops.overload += c.server_stats.dropped_overload;
        drops.expired += c.server_stats.dropped_expired;
        for (k, v) in &c.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
    }
    let per_client: Vec<f64> = clients.iter().map(|c| c.result_fps).collect();
    LoadReport {
        transport: match args.transport {
            Transport::Ws => "websocket".into(),
            Transport::Rtc => format!("webrtc ({:?})", args.codec).to_lowercase(),
        },
        upstream_mbps,
        clients: args.clients,
        fps: args.fps,
        duration_s: args.duration,
        frame_bytes,
        sent: clients.iter().map(|c| c.sent).sum(),
        results: clients.iter().map(|c| c.results).sum(),
        skipped: clients.iter().map(|c| c.skipped).sum(),
        result_fps_mean: per_client.iter().sum::<f64>() / per_client.len().max(1) as f64,
        result_fps_per_client: per_client,
        latency_ms: Percentiles::of(&mut latencies),
        server_ms,
        drops,
        errors,
        people: (args.people > 1).then(|| PeopleCounts::of(args.people, people_per_result)),
    }
}

/// The fields of server messages the load generator reads (the landmarks
/// are skipped).
#[derive(Debug, Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    seq: Option<u32>,
    capture_ts: Option<f64>,
    /// The frame's RTP timestamp (WebRTC results).
    rtp_ts: Option<u32>,
    timings: Option<FrameTimings>,
    code: Option<String>,
    /// Counted, not read: each person's landmarks are skipped.
    people: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(flatten)]
    stats: Option<SessionStats>,
}

/// What a server message meant for the client.
struct Seen {
    /// The frame it answered (a result or a frame's error).
    answered: Option<u32>,
    /// A `stats` message that counts every frame sent: the last one needed.
    final_stats: bool,
}

/// Counts `msg` in `report`; `latency_ms` of a result, when known;
/// `sending_done` once the client sent its last frame.
fn record(
    report: &mut ClientReport,
    msg: Incoming,
    latency_ms: Option<f64>,
    sending_done: bool,
) -> Seen {
    let mut seen = Seen {
        answered: None,
        final_stats: false,
    };
    match msg.kind.as_str() {
        "result" => {
            report.results += 1;
            report.latencies_ms.extend(latency_ms);
            report.timings.extend(msg.timings);
            if let Some(people) = &msg.people {
                *report.people_per_result.entry(people.len()).or_insert(0) += 1;
            }
            seen.answered = msg.seq;
        }
        "error" => {
            let code = msg.code.unwrap_or_else(|| "unknown".into());
            *report.errors.entry(code).or_insert(0) += 1;
            seen.answered = msg.seq;
        }
        "stats" => {
            if let Some(s) = msg.stats {
                // Final only once the server has counted every frame sent:
                // a stats message written before the last frames arrived
                // would under-report the drops.
                seen.final_stats = sending_done && s.received >= report.sent;
                report.server_stats = s;
            }
        }
        _ => {}
    }
    seen
}

/// Logs in; returns the `Cookie` header value.
pub async fn login(base: &str, password: &str) -> anyhow::Result<String> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let resp = client
        .post(format!("{base}/auth/code"))
        .send_json(&serde_json::json!({ "code": password }))
        .await
        .map_err(|e| anyhow::anyhow!("POST /auth/code: {e}"))?;
    if !resp.status().is_success() {
        bail!("login refused: {}", resp.status());
    }
    let cookie = resp
        .cookie(crate::http::SESSION_COOKIE)
        .context("login answered without a session cookie")?;
    Ok(format!("{}={}", cookie.name(), cookie.value()))
}

async fn run_client(
    index: usize,
    base: &str,
    args: &LoadgenArgs,
    frames: &[Bytes],
    epoch: Instant,
) -> anyhow::Result<ClientReport> {
    let cookie = login(base, &args.password).await?;
    let ws_url = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}/ws")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}/ws")
    } else {
        bail!("--url must start with http:// or https://");
    };
    let (_resp, mut conn) = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish()
        .ws(ws_url)
        .origin(base)
        .header("Cookie", cookie)
        .max_frame_size(8 << 20)
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("opening the WebSocket: {e}"))?;

    if args.people > 1 {
        let config = serde_json::json!({"type": "config", "people": args.people});
        conn.send(ws::Message::Text(config.to_string().into()))
            .await
            .map_err(|e| anyhow::anyhow!("sending the config: {e}"))?;
    }

    let mut report = ClientReport::default();
    // Unanswered frames: (seq, sent at). A frame the server dropped silently
    // (stale, over the fps cap) is answered implicitly by any later answer;
    // one older than `forget_after` is given up on.
    let mut outstanding: VecDeque<(u32, Instant)> = VecDeque::new();
    let forget_after = Duration::from_secs(2);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.fps));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let send_until = started + Duration::from_secs_f64(args.duration);
    // After sending stops: wait for the answers in flight and one more stats
    // message (the server sends one per `stats_interval_ms`).
    let drain_until = send_until + Duration::from_millis(2500);
    let mut seq: u32 = 0;
    let mut stats_after_stop = false;

    loop {
        let now = Instant::now();
        if now >= drain_until || (now >= send_until && outstanding.is_empty() && stats_after_stop) {
            break;
        }
        tokio::select! {
            _ = ticker.tick(), if now < send_until => {
                while outstanding.front().is_some_and(|(_, at)| at.elapsed() > forget_after) {
                    outstanding.pop_front();
                }
                if outstanding.len() >= args.max_outstanding {
                    report.skipped += 1;
                    continue;
                }
                let jpeg = &frames[(seq as usize + index) % frames.len()];
                let capture_ts = epoch.elapsed().as_secs_f64() * 1e3;
                let msg = FrameHeader { seq, capture_ts }.encode(jpeg);
                let msg_len = msg.len();
                conn.send(ws::Message::Binary(msg.into()))
                    .await
                    .map_err(|e| anyhow::anyhow!("sending a frame: {e}"))?;
                outstanding.push_back((seq, Instant::now()));
                report.sent += 1;
                report.sent_bytes += msg_len as u64;
                seq = seq.wrapping_add(1);
            }
            frame = conn.next() => {
                let Some(frame) = frame else { break };
                match frame.map_err(|e| anyhow::anyhow!("WebSocket: {e}"))? {
                    ws::Frame::Text(text) => {
                        let msg: Incoming = serde_json::from_slice(&text)
                            .with_context(|| "server message is not the expected JSON")?;
                        let latency = msg.capture_ts.map(|ts| epoch.elapsed().as_secs_f64() * 1e3 - ts);
                        let seen = record(&mut report, msg, latency, Instant::now() >= send_until);
                        stats_after_stop |= seen.final_stats;
                        if let Some(answered) = seen.answered {
                            while outstanding.front().is_some_and(|(s, _)| *s <= answered) {
                                outstanding.pop_front();
                            }
                        }
                    }
                    ws::Frame::Ping(p) => {
                        conn.send(ws::Message::Pong(p)).await.map_err(|e| anyhow::anyhow!("pong: {e}"))?;
                    }
                    ws::Frame::Close(reason) => {
                        bail!("server closed the WebSocket: {reason:?}");
                    }
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until((drain_until).into()) => {}
        }
    }
    // A clean close: send ours, then read until the server's close (or the
    // end), bounded; dropping the socket right away reads as a protocol
    // error on the server.
    if conn
        .send(ws::Message::Close(Some(ws::CloseCode::Normal.into())))
        .await
        .is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(frame)) = conn.next().await {
                if matches!(frame, ws::Frame::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    report.result_fps = report.results as f64 / args.duration;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!(
            (p.p50, p.p90, p.p99, p.max, p.count),
            (50.0, 90.0, 99.0, 100.0, 100)
        );
        assert_eq!(Percentiles::of(&mut []).count, 0);
        let mut one = [7.0];
        assert_eq!(Percentiles::of(&mut one).p99, 7.0);
    }

    #[test]
    fn size_parses() {
        assert_eq!(parse_size("640x480").unwrap(), Some((640, 480)));
        assert_eq!(parse_size("original").unwrap(), None);
        assert!(parse_size("640").is_err());
        assert!(parse_size("0x480").is_err());
    }

    #[test]
    fn frames_are_jpegs_of_the_asked_size() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/astronaut.png");
        let frames = prepare_frames(&[path], "320x240").unwrap();
        assert!(frames[0].starts_with(&[0xFF, 0xD8]));
        let img = image::load_from_memory(&frames[0]).unwrap();
        assert_eq!((img.width(), img.height()), (320, 240));
    }

    #[test]
    fn incoming_reads_results_and_stats() {
        let r: Incoming = serde_json::from_str(
            r#"{"type":"result","seq":3,"capture_ts":12.5,"timings":{"queue_ms":1,"decode_ms":2,"infer_ms":3,"serialize_ms":0.1,"total_ms":7},"pose":[]}"#,
        )
        .unwrap();
        assert_eq!(
            (r.kind.as_str(), r.seq, r.capture_ts),
            ("result", Some(3), Some(12.5))
        );
        assert_eq!(r.timings.unwrap().infer_ms, 3.0);
        let s: Incoming = serde_json::from_str(
            r#"{"type":"stats","received":5,"processed":4,"dropped_stale":1,"dropped_fps":0,"dropped_overload":0,"dropped_expired":0,"errors":0}"#,
        )
        .unwrap();
        assert_eq!(s.stats.unwrap().dropped_stale, 1);
    }

    #[test]
    fn people_per_result_is_counted() {
        let r: Incoming = serde_json::from_str(
            r#"{"type":"result","seq":3,"capture_ts":1,"pose":[],"people":[{"id":4,"pose":[{"x":0.5}],"face":[]},{"id":9}]}"#,
        )
        .unwrap();
        assert_eq!(r.people.map(|p| p.len()), Some(2));
        let plain: Incoming =
            serde_json::from_str(r#"{"type":"result","seq":3,"pose":[]}"#).unwrap();
        assert!(plain.people.is_none());

        let counts = PeopleCounts::of(3, BTreeMap::from([(1, 2), (3, 2)]));
        assert_eq!(counts.mean, 2.0);
        let counts = PeopleCounts::of(3, BTreeMap::new());
        assert_eq!(counts.mean, 0.0);
    }
}
