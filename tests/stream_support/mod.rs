//! Helpers of the streaming tests (streaming, faults, backpressure), on top
//! of the shared harness in `tests/common`: real JPEG frames from the
//! fixtures, the binary frame header, reading typed server messages, and
//! scraping `/metrics`.

#![allow(dead_code)] // each test binary uses a different part

use std::io::Cursor;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use awc::ws;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use holistream::actors::protocol::FrameHeader;
use serde_json::Value;

use crate::common::{TestServer, WsConn, http_client};

/// A fixture photo (public domain, `tests/fixtures/`) re-encoded as a
/// 640x480 JPEG, the size the web demo sends.
pub fn jpeg_640x480(name: &str) -> Bytes {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let image = image::open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
        .to_rgb8();
    let resized = image::imageops::resize(&image, 640, 480, image::imageops::FilterType::Triangle);
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&resized)
        .expect("encoding a JPEG");
    Bytes::from(out.into_inner())
}

/// One binary frame message.
pub fn frame(seq: u32, capture_ts: f64, jpeg: &[u8]) -> ws::Message {
    ws::Message::Binary(FrameHeader { seq, capture_ts }.encode(jpeg).into())
}

/// Sends a message.
pub async fn send(conn: &mut WsConn, msg: ws::Message) {
    conn.send(msg).await.expect("sending on the WebSocket");
}

/// What came from the server.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    Closed(Option<ws::CloseReason>),
}

/// The next text message (as JSON) or the close, within `timeout`; answers
/// pings on the way.
pub async fn next_incoming(conn: &mut WsConn, timeout: Duration) -> Incoming {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let item = actix_web::rt::time::timeout(left, conn.next())
            .await
            .unwrap_or_else(|_| panic!("no WebSocket message within {timeout:?}"));
        match item {
            None => return Incoming::Closed(None),
            Some(Ok(ws::Frame::Close(reason))) => return Incoming::Closed(reason),
            Some(Ok(ws::Frame::Text(t))) => {
                return Incoming::Json(serde_json::from_slice(&t).expect("server text is JSON"));
            }
            Some(Ok(ws::Frame::Ping(p))) => {
                let _ = conn.send(ws::Message::Pong(p)).await;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("WebSocket protocol error: {e}"),
        }
    }
}

/// The next message whose `type` is not `stats` (results, errors, hello).
pub async fn next_answer(conn: &mut WsConn, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_incoming(conn, left).await {
            Incoming::Json(v) if v["type"] == "stats" => continue,
            Incoming::Json(v) => return v,
            Incoming::Closed(reason) => panic!("connection closed while waiting: {reason:?}"),
        }
    }
}

/// Opens an authorised WebSocket and consumes its `hello`.
pub async fn open_session(server: &TestServer, cookie: &str) -> WsConn {
    let mut conn = crate::common::ws_connect(server, Some(cookie), Some(&server.origin()))
        .await
        .expect("WebSocket refused");
    let hello = next_answer(&mut conn, Duration::from_secs(10)).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    conn
}

/// `/metrics` as text.
pub async fn metrics_text(server: &TestServer) -> String {
    let mut resp = http_client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    let body = resp.body().limit(8 << 20).await.expect("metrics body");
    String::from_utf8(body.to_vec()).expect("metrics are UTF-8")
}

/// The value of one series, e.g. `holistream_drops_total{reason="stale"}`;
/// 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().expect("metric value"))
        .unwrap_or(0.0)
}

/// Sum of every series of a metric family name whose labels contain `label`
/// (e.g. the per-thread task gauge).
pub fn metric_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(family) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Posts a fault plan through the admin endpoint (enabled with
/// [`crate::common::ADMIN_TOKEN`] by [`crate::common::test_config`]).
pub async fn set_faults(server: &TestServer, plan: &str) {
    let resp = http_client()
        .post(server.url("/admin/faults"))
        .insert_header((
            "Authorization",
            format!("Bearer {}", crate::common::ADMIN_TOKEN),
        ))
        .send_json(&serde_json::json!({ "faults": plan }))
        .await
        .expect("POST /admin/faults");
    assert_eq!(resp.status(), 200, "setting faults {plan:?}");
}

/// Nearest-rank percentile of `v` (sorted in place): the definition the
/// bench and `loadgen` report, [`holistream::stats::percentile`]; panics when
/// there are no samples, so a test cannot assert on a NaN.
pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    assert!(!v.is_empty(), "no samples");
    holistream::stats::percentile(v, q)
}

/// Seconds from the env variable `name`, else `default`.
pub fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
