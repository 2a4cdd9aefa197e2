//! WebRTC ingest end to end: the real server, the project's Rust WebRTC
//! client (str0m, the same crate the server runs, as the controlling side)
//! sending real H.264 and VP8 over loopback UDP, WHIP signalling over
//! HTTP, results over the data channel.
//!
//! - every codec: results carry the frame's RTP timestamp and land within
//!   MediaPipe's envelope of its golden on a real photo; decode metrics;
//!   `DELETE` ends the session;
//! - every refusal WHIP documents (401, 403, 404, 405, 413, 415, 422, 429);
//! - loss on the path (a UDP proxy that drops bursts): keyframe requests,
//!   lost packets counted, results again after;
//! - garbage datagrams, a client that vanishes (reaped), a stock encoder
//!   without a data channel (results counted as undelivered).

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use holistream::actors::rtc::VideoCodec;
use holistream::actors::rtc::client::{
    ClientEvent, ClientHandle, ClientOptions, ClientSender, RtcClient,
};
use holistream::commands::parity::landmark_errors;
use holistream::model::I420Picture;
use serde_json::Value;

use support::fixtures::fixtures;
use support::http::{http_client, login, metric, metrics_text};
use support::server::{TestServer, test_config};

const PASSWORD: &str = "rtc-test-code-1";

/// How long a test waits for results: a dev build on two shared cores
/// runs a frame in 50–300 ms, and the server loads its models first.
const RESULTS_WITHIN: Duration = Duration::from_secs(60);

/// MediaPipe's own spread in tracking mode on a clip (`../shared`'s README:
/// ~2% of the part's size between runs): the bar for a still photo sent
/// as video, where the codec's artefacts are the only new error.
const VIDEO_ENVELOPE: f64 = 0.02;

/// Frames a second the client sends (the server's default cap is higher).
const SEND_FPS: u32 = 15;

/// The WHIP endpoint's answer.
struct Whip {
    status: StatusCode,
    location: Option<String>,
    body: String,
}

async fn whip_post(server: &TestServer, auth: Option<&str>, ctype: &str, body: String) -> Whip {
    let mut req = http_client()
        .post(server.url("/whip"))
        .insert_header(("Content-Type", ctype));
    if let Some(auth) = auth {
        req = req.insert_header(("Authorization", auth));
    }
    let mut resp = req.send_body(body).await.expect("POST /whip");
    let location = resp
        .headers()
        .get("Location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .body()
        .limit(1 << 20)
        .await
        .expect("reading the answer");
    Whip {
        status: resp.status(),
        location,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn whip_delete(server: &TestServer, location: &str) -> StatusCode {
    http_client()
        .delete(server.url(location))
        .insert_header(("Authorization", format!("Bearer {PASSWORD}")))
        .send()
        .await
        .expect("DELETE")
        .status()
}

fn bearer() -> String {
    format!("Bearer {PASSWORD}")
}

fn options(codec: VideoCodec, data_channel: bool, width: u32, height: u32) -> ClientOptions {
    ClientOptions {
        codec,
        bitrate_kbps: 1500,
        fps: SEND_FPS,
        data_channel,
        width,
        height,
    }
}

/// Offers, posts with the entry code as bearer token, accepts the answer
/// (through `rewrite`, e.g. to put a proxy in the path); the client and
/// its resource.
async fn connect(
    server: &TestServer,
    opts: ClientOptions,
    rewrite: impl FnOnce(String) -> String,
) -> (ClientHandle, String) {
    let (pending, offer) = RtcClient::offer(IpAddr::V4(Ipv4Addr::LOCALHOST), opts).unwrap();
    let whip = whip_post(server, Some(&bearer()), "application/sdp", offer).await;
    assert_eq!(whip.status, StatusCode::CREATED, "{}", whip.body);
    let location = whip.location.expect("a Location");
    assert!(location.starts_with("/whip/"), "{location}");
    assert!(whip.body.contains("a=ice-lite"), "{}", whip.body);
    let client = pending.accept(&rewrite(whip.body)).unwrap();
    (client, location)
}

/// The photo `name`, cropped to even sides (H.264 wants them), as I420,
/// and the crop's height over the original's (to map the golden).
fn photo(name: &str) -> (I420Picture, f64) {
    let rgb = image::open(fixtures().join(name)).unwrap().to_rgb8();
    let (w, h) = (rgb.width() & !1, rgb.height() & !1);
    let scale = f64::from(rgb.height()) / f64::from(h);
    let cropped = image::imageops::crop_imm(&rgb, 0, 0, w, h).to_image();
    (I420Picture::from_rgb(&cropped), scale)
}

/// Sends `picture` at [`SEND_FPS`] from a thread until `stop`; the RTP
/// timestamps sent go to `sent`.
fn send_loop(
    client: ClientSender,
    picture: I420Picture,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u32>> {
    std::thread::spawn(move || {
        let step = 90_000 / SEND_FPS;
        let mut sent = Vec::new();
        let mut ts: u32 = 0x1234_0000;
        let period = Duration::from_secs(1) / SEND_FPS;
        let start = Instant::now();
        let mut n = 0u32;
        while !stop.load(Ordering::Relaxed) {
            client.send_picture(picture.clone(), ts);
            sent.push(ts);
            ts = ts.wrapping_add(step);
            n += 1;
            let next = start + period * n;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        sent
    })
}

/// Waits for client events until `done` says so (or panics at the bound);
/// the text messages seen, parsed.
async fn messages_until(
    client: &mut ClientHandle,
    within: Duration,
    mut done: impl FnMut(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = actix_web::rt::time::timeout(left, client.events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out; messages so far: {seen:?}"))
            .expect("client thread gone");
        match event {
            ClientEvent::Text(t) => seen.push(serde_json::from_str(&t).unwrap()),
            ClientEvent::Closed(why) => panic!("connection closed: {why}; seen {seen:?}"),
            _ => {}
        }
        if done(&seen) {
            return seen;
        }
    }
}

fn results(msgs: &[Value]) -> Vec<&Value> {
    msgs.iter().filter(|m| m["type"] == "result").collect()
}

/// A result's part as `[x, y]` (landmarks are `{"x","y",…}` objects).
fn xy(part: &Value) -> Vec<[f32; 2]> {
    part.as_array()
        .map(|a| {
            a.iter()
                .map(|l| {
                    [
                        l["x"].as_f64().unwrap() as f32,
                        l["y"].as_f64().unwrap() as f32,
                    ]
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A golden's part as `[x, y]` (goldens are `[x, y, z, …]` lists).
fn golden_xy(part: &Value) -> Vec<[f32; 2]> {
    part.as_array()
        .map(|a| {
            a.iter()
                .map(|l| [l[0].as_f64().unwrap() as f32, l[1].as_f64().unwrap() as f32])
                .collect()
        })
        .unwrap_or_default()
}

/// One codec end to end on a real photo.
async fn codec_end_to_end(codec: VideoCodec) {
    let server = TestServer::start(test_config(PASSWORD)).await;
    let (picture, scale) = photo("obama.jpg");
    let (w, h) = (picture.width(), picture.height());
    let (client, location) = connect(&server, options(codec, true, w, h), |a| a).await;
    let mut client = client;
    let hello = messages_until(&mut client, RESULTS_WITHIN, |m| !m.is_empty()).await;
    assert_eq!(hello[0]["type"], "hello", "{hello:?}");

    // `config` goes over the channel as on the WebSocket: a bad one is an
    // error message, a good one applies (the pose alone, then the face too).
    let sent = Instant::now();
    client.send_text(r#"{"type":"config","fps":0}"#.into());
    let msgs = messages_until(&mut client, RESULTS_WITHIN, |m| {
        m.iter().any(|m| m["type"] == "error")
    })
    .await;
    // A figure, not a check: the data channel's round trip on loopback.
    println!(
        "{codec:?} data channel round trip (config -> error): {:.1} ms",
        sent.elapsed().as_secs_f64() * 1e3
    );
    let error = msgs.iter().find(|m| m["type"] == "error").unwrap();
    assert_eq!(error["code"], "bad_control", "{error}");
    client.send_text(r#"{"type":"config","parts":["pose"]}"#.into());
    let stop = Arc::new(AtomicBool::new(false));
    let sender = send_loop(client.sender(), picture, stop.clone());
    let msgs = messages_until(&mut client, RESULTS_WITHIN, |m| results(m).len() >= 3).await;
    let faceless = *results(&msgs).last().unwrap();
    let counts = |r: &Value| ["pose", "face", "left_hand", "right_hand"].map(|p| xy(&r[p]).len());
    assert_eq!(counts(faceless), [33, 0, 0, 0], "parts not switched off");
    client.send_text(r#"{"type":"config","parts":["pose","face"]}"#.into());
    // Tracking settles within a few frames; judge the tenth result.
    let msgs = messages_until(&mut client, RESULTS_WITHIN, |m| {
        results(m)
            .iter()
            .filter(|r| !xy(&r["face"]).is_empty())
            .count()
            >= 10
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let last = *results(&msgs).last().unwrap();
    let ts = last["rtp_ts"].as_u64().expect("rtp_ts") as u32;
    assert!(sent.contains(&ts), "rtp_ts {ts} was never sent");
    assert!(
        (last["capture_ts"].as_f64().unwrap() - f64::from(ts) / 90.0).abs() < 1e-6,
        "{last}"
    );

    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("golden/obama.json")).unwrap(),
    )
    .unwrap();
    for part in ["pose", "face"] {
        // The golden is normalised to the uncropped height.
        let want: Vec<[f32; 2]> = golden_xy(&golden[part])
            .into_iter()
            .map(|[x, y]| [x, (f64::from(y) * scale) as f32])
            .collect();
        let got = xy(&last[part]);
        let (mean, _) = landmark_errors(&want, &got, w, h);
        println!(
            "{codec:?} {part}: mean {:.3}% of the part's size",
            mean * 100.0
        );
        assert!(mean < VIDEO_ENVELOPE, "{codec:?} {part}: {mean}");
    }

    let text = metrics_text(&server).await;
    let label = codec.label();
    assert!(
        metric(
            &text,
            &format!("holistream_rtc_frames_decoded_total{{codec=\"{label}\"}}")
        ) >= 10.0,
        "{text}"
    );
    assert_eq!(metric(&text, "holistream_rtc_sessions_active"), 1.0);
    assert_eq!(whip_delete(&server, &location).await, StatusCode::OK);
    assert_eq!(whip_delete(&server, &location).await, StatusCode::NOT_FOUND);
    let text = metrics_text(&server).await;
    assert_eq!(metric(&text, "holistream_rtc_sessions_active"), 0.0);
    assert_eq!(
        metric(&text, "holistream_rtc_closed_total{reason=\"delete\"}"),
        1.0
    );
    drop(client);
}

#[actix_web::test]
async fn h264_results_come_back_on_the_data_channel_within_mediapipes_envelope() {
    codec_end_to_end(VideoCodec::H264).await;
}

#[actix_web::test]
async fn vp8_results_come_back_on_the_data_channel_within_mediapipes_envelope() {
    codec_end_to_end(VideoCodec::Vp8).await;
}

/// An offer this server decodes (VP8 video and the channel).
fn good_offer() -> String {
    let (_pending, offer) = RtcClient::offer(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        options(VideoCodec::Vp8, true, 640, 480),
    )
    .unwrap();
    offer
}

#[actix_web::test]
async fn whip_refusals_are_clear_and_leave_nothing_open() {
    let mut cfg = test_config(PASSWORD);
    cfg.rtc.ingest_tokens = vec!["ingest-token-0123456789".into()];
    cfg.auth.max_failures = 3;
    let server = TestServer::start(cfg).await;
    let sdp = "application/sdp";
    let offer = good_offer();

    // Auth: none, a wrong bearer, a cookie from a foreign page.
    let w = whip_post(&server, None, sdp, offer.clone()).await;
    assert_eq!(w.status, StatusCode::UNAUTHORIZED, "{}", w.body);
    let w = whip_post(&server, Some("Basic abc"), sdp, offer.clone()).await;
    assert_eq!(w.status, StatusCode::UNAUTHORIZED, "{}", w.body);
    let cookie = login(&server, PASSWORD).await;
    let resp = http_client()
        .post(server.url("/whip"))
        .insert_header(("Content-Type", sdp))
        .insert_header(("Cookie", cookie.clone()))
        .insert_header(("Origin", "https://evil.example"))
        .send_body(offer.clone())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // The page's way: its cookie and its own origin; the ingest token too.
    let mut resp = http_client()
        .post(server.url("/whip"))
        .insert_header(("Content-Type", sdp))
        .insert_header(("Cookie", cookie.clone()))
        .insert_header(("Origin", server.origin()))
        .send_body(offer.clone())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        resp.headers().get("Content-Type").unwrap(),
        "application/sdp"
    );
    let _ = resp.body().await;
    let w = whip_post(
        &server,
        Some("Bearer ingest-token-0123456789"),
        sdp,
        good_offer(),
    )
    .await;
    assert_eq!(w.status, StatusCode::CREATED, "{}", w.body);
    // No trickle ICE (ICE-lite, every candidate in the answer).
    let location = w.location.unwrap();
    let resp = http_client()
        .patch(server.url(&location))
        .insert_header(("Authorization", bearer()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers().get("Allow").unwrap(), "DELETE");
    assert_eq!(whip_delete(&server, &location).await, StatusCode::OK);
    assert_eq!(
        whip_delete(&server, "/whip/not-a-uuid").await,
        StatusCode::NOT_FOUND
    );

    // The body: its type, its size, its contents.
    let w = whip_post(&server, Some(&bearer()), "text/plain", offer.clone()).await;
    assert_eq!(w.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", w.body);
    let big = format!("{offer}{}", "a=x-padding\r\n".repeat(4000));
    let w = whip_post(&server, Some(&bearer()), sdp, big).await;
    assert_eq!(w.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", w.body);
    let w = whip_post(&server, Some(&bearer()), sdp, "v=0\r\nnonsense".into()).await;
    assert_eq!(w.status, StatusCode::BAD_REQUEST, "{}", w.body);
    let vp9 = offer
        .replace("VP8/90000", "VP9/90000")
        .replace("H264/90000", "VP9/90000");
    let w = whip_post(&server, Some(&bearer()), sdp, vp9).await;
    assert_eq!(w.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", w.body);
    assert!(w.body.contains("H.264 or VP8"), "{}", w.body);
    let text = metrics_text(&server).await;
    // The page's session (its peer never connected) is the one left open.
    assert_eq!(
        metric(&text, "holistream_rtc_sessions_active"),
        1.0,
        "{text}"
    );

    // Wrong tokens through the login limiter: 401s, then 429.
    for _ in 0..3 {
        let w = whip_post(&server, Some("Bearer wrong-token-wrong"), sdp, good_offer()).await;
        assert_eq!(w.status, StatusCode::UNAUTHORIZED);
    }
    let w = whip_post(&server, Some(&bearer()), sdp, good_offer()).await;
    assert_eq!(w.status, StatusCode::TOO_MANY_REQUESTS, "{}", w.body);

    // Off: 404, as any unknown route.
    let mut cfg = test_config(PASSWORD);
    cfg.rtc.enabled = false;
    let off = TestServer::start(cfg).await;
    let w = whip_post(&off, Some(&bearer()), sdp, good_offer()).await;
    assert_eq!(w.status, StatusCode::NOT_FOUND);
    assert_eq!(
        metric(&metrics_text(&off).await, "holistream_rtc_udp_port"),
        0.0
    );
}

/// A UDP relay between the client and the server that drops the video's
/// RTP packets during `drop_ms` of every `period_ms`, and every
/// retransmission: loss the receiver's NACKs cannot repair.
struct LossyRelay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

impl LossyRelay {
    fn start(server: SocketAddr, period_ms: u64, drop_ms: u64) -> LossyRelay {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        }
        let addr = front.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let client: Arc<parking_lot::Mutex<Option<SocketAddr>>> = Default::default();
        let started = Instant::now();
        {
            let (front, back) = (front.try_clone().unwrap(), back.try_clone().unwrap());
            let (stop, dropped, client) = (stop.clone(), dropped.clone(), client.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                // The video's SSRC: the first RTP seen. Any other is its
                // retransmissions (RTX), all dropped, so NACKs repair
                // nothing and a lost packet stays lost.
                let mut video_ssrc = None;
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    *client.lock() = Some(from);
                    // RTP, not RTCP (packet types 200–206 in the second byte).
                    let rtp =
                        n > 12 && (128..192).contains(&buf[0]) && !(192..=223).contains(&buf[1]);
                    if rtp {
                        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
                        let video = *video_ssrc.get_or_insert(ssrc) == ssrc;
                        let phase = started.elapsed().as_millis() as u64 % period_ms;
                        if !video || phase < drop_ms {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    let _ = back.send_to(&buf[..n], server);
                }
            });
        }
        {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, _)) = back.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(to) = *client.lock() {
                        let _ = front.send_to(&buf[..n], to);
                    }
                }
            });
        }
        LossyRelay {
            addr,
            stop,
            dropped,
        }
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The server's candidate in `answer` replaced by `relay`.
fn through(answer: &str, server: SocketAddr, relay: SocketAddr) -> String {
    let (from, to) = (
        format!(" {} {} typ host", server.ip(), server.port()),
        format!(" {} {} typ host", relay.ip(), relay.port()),
    );
    assert!(answer.contains(&from), "no candidate {from} in {answer}");
    answer.replace(&from, &to)
}

fn rtc_addr(text: &str) -> SocketAddr {
    let port = metric(text, "holistream_rtc_udp_port") as u16;
    assert_ne!(port, 0, "WebRTC is off");
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

#[actix_web::test]
async fn loss_brings_keyframe_requests_and_results_go_on() {
    let server = TestServer::start(test_config(PASSWORD)).await;
    let udp = rtc_addr(&metrics_text(&server).await);
    // 200 ms of every 2 s lost, for good: whole frames go missing, as on a
    // congested uplink.
    let relay = LossyRelay::start(udp, 2000, 200);
    let (picture, _) = photo("obama.jpg");
    let opts = options(VideoCodec::H264, true, picture.width(), picture.height());
    let (mut client, location) = connect(&server, opts, |a| through(&a, udp, relay.addr)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = send_loop(client.sender(), picture, stop.clone());
    // Through two loss bursts (at 2 s and 4 s), then results again after
    // the last keyframe the server asked for.
    let started = Instant::now();
    let mut keyframe_requests = 0;
    let mut results_since_request = 0;
    let deadline = Instant::now() + RESULTS_WITHIN;
    while started.elapsed() < Duration::from_millis(4500) || results_since_request < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        match actix_web::rt::time::timeout(left, client.events.recv()).await {
            Ok(Some(ClientEvent::KeyframeRequested)) => {
                keyframe_requests += 1;
                results_since_request = 0;
            }
            Ok(Some(ClientEvent::Text(t))) if t.contains("\"result\"") => {
                results_since_request += 1
            }
            Ok(Some(ClientEvent::Closed(why))) => panic!("closed: {why}"),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                let text = metrics_text(&server).await;
                let rtc: Vec<&str> = text
                    .lines()
                    .filter(|l| l.starts_with("holistream_rtc"))
                    .collect();
                panic!(
                    "{keyframe_requests} keyframe requests, {results_since_request} results after the last; {rtc:#?}"
                )
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    assert!(relay.dropped.load(Ordering::Relaxed) > 0);
    let text = metrics_text(&server).await;
    println!(
        "dropped by the relay {}, lost {}, keyframe requests {}",
        relay.dropped.load(Ordering::Relaxed),
        metric(&text, "holistream_rtc_packets_lost_total"),
        keyframe_requests
    );
    assert!(
        metric(&text, "holistream_rtc_packets_lost_total") > 0.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "holistream_rtc_keyframe_requests_total{reason=\"loss\"}"
        ) > 0.0,
        "{text}"
    );
    assert_eq!(whip_delete(&server, &location).await, StatusCode::OK);
}

#[actix_web::test]
async fn garbage_a_vanished_client_and_a_channelless_encoder_are_each_accounted_for() {
    let mut cfg = test_config(PASSWORD);
    cfg.rtc.ice_timeout_ms = 1500;
    let server = TestServer::start(cfg).await;
    let udp = rtc_addr(&metrics_text(&server).await);

    // Datagrams that are no peer's: counted, nothing else.
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    for len in [0usize, 1, 12, 100, 1500] {
        junk.send_to(&vec![0x80; len], udp).unwrap();
    }
    junk.send_to(b"\x00\x01\x00\x00garbage-stun", udp).unwrap();
    support::poll::eventually(
        Duration::from_secs(10),
        "unmatched datagrams counted",
        || async {
            metric(
                &metrics_text(&server).await,
                "holistream_rtc_udp_unmatched_total",
            ) >= 5.0
        },
    )
    .await;

    // A stock WHIP encoder: video, no channel. Its results have nowhere to
    // go and are counted; then it vanishes without DELETE and is reaped.
    let (picture, _) = photo("obama.jpg");
    let opts = options(VideoCodec::Vp8, false, picture.width(), picture.height());
    let (client, _location) = connect(&server, opts, |a| a).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = send_loop(client.sender(), picture, stop.clone());
    support::poll::eventually(RESULTS_WITHIN, "undelivered results counted", || async {
        metric(
            &metrics_text(&server).await,
            "holistream_rtc_results_undelivered_total",
        ) >= 3.0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    drop(client);
    support::poll::eventually(
        Duration::from_secs(20),
        "the vanished peer reaped",
        || async {
            let text = metrics_text(&server).await;
            metric(&text, "holistream_rtc_sessions_active") == 0.0
                && metric(&text, "holistream_sessions_active") == 0.0
        },
    )
    .await;
    let text = metrics_text(&server).await;
    assert_eq!(
        metric(&text, "holistream_rtc_closed_total{reason=\"timeout\"}"),
        1.0,
        "{text}"
    );
}

/// The codec the offer lists first is the answer's first: what the
/// sender then sends (Chromium lists VP8 first, Safari H.264).
#[actix_web::test]
async fn the_answer_prefers_the_codec_offered_first() {
    let server = TestServer::start(test_config(PASSWORD)).await;
    for (vp8_first, want) in [(true, "VP8"), (false, "H264")] {
        let mut config = str0m::Rtc::builder().clear_codecs();
        config = if vp8_first {
            config.enable_vp8(true).enable_h264(true)
        } else {
            config.enable_h264(true).enable_vp8(true)
        };
        let mut rtc = config.build(Instant::now());
        let mut api = rtc.sdp_api();
        api.add_media(
            str0m::media::MediaKind::Video,
            str0m::media::Direction::SendOnly,
            None,
            None,
            None,
        );
        let (offer, _pending) = api.apply().unwrap();
        let w = whip_post(
            &server,
            Some(&bearer()),
            "application/sdp",
            offer.to_sdp_string(),
        )
        .await;
        assert_eq!(w.status, StatusCode::CREATED, "{}", w.body);
        assert_eq!(
            first_video_codec(&w.body).as_deref(),
            Some(want),
            "answer:\n{}",
            w.body
        );
    }
}

/// The encoding name of the first payload type of the SDP's video line.
fn first_video_codec(sdp: &str) -> Option<String> {
    let line = sdp.lines().find(|l| l.starts_with("m=video "))?;
    let pt = line.split_whitespace().nth(3)?;
    let map = sdp
        .lines()
        .find_map(|l| l.strip_prefix(&format!("a=rtpmap:{pt} ")))?;
    Some(map.split('/').next()?.to_string())
}

/// Frames a decoder refuses (a hostile or broken sender): counted, a
/// keyframe asked for, the session goes on with results, nothing panics.
#[actix_web::test]
async fn corrupt_frames_bring_a_keyframe_request_and_the_stream_goes_on() {
    let server = TestServer::start(test_config(PASSWORD)).await;
    let (picture, _) = photo("obama.jpg");
    let opts = options(VideoCodec::Vp8, true, picture.width(), picture.height());
    let (mut client, location) = connect(&server, opts, |a| a).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = send_loop(client.sender(), picture, stop.clone());
    let first = messages_until(&mut client, RESULTS_WITHIN, |m| results(m).len() >= 2).await;
    let last_ts = |msgs: &[Value]| {
        results(msgs)
            .iter()
            .filter_map(|r| r["rtp_ts"].as_u64())
            .max()
            .unwrap_or(0)
    };
    let before_junk = last_ts(&first);
    // VP8 frame tags with version 7 (RFC 6386 knows 0 to 3), as inter
    // frames: libvpx refuses them.
    let inject = client.sender();
    for i in 0..5u32 {
        let mut junk = vec![0x0f, 0x42, 0x00];
        junk.extend((0..300u32).map(|j| (j.wrapping_mul(2654435761) >> (i % 8)) as u8));
        inject.send_encoded(junk, 0x7000_0000 + i * 6000);
    }
    support::poll::eventually(
        Duration::from_secs(20),
        "a keyframe asked for after the junk",
        || async {
            metric(
                &metrics_text(&server).await,
                "holistream_rtc_keyframe_requests_total{reason=\"decode_error\"}",
            ) >= 1.0
        },
    )
    .await;
    // Results again, of pictures sent well after the junk (the send loop's
    // timestamps grow by 6000 a frame, from far below the junk's).
    messages_until(&mut client, RESULTS_WITHIN, |m| {
        last_ts(m) > before_junk + 10 * 6000
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    assert_eq!(whip_delete(&server, &location).await, StatusCode::OK);
}
