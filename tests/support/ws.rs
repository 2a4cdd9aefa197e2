//! WebSocket clients of `/ws` (awc): opening one ([`ws_connect`],
//! [`open_session`]), frames and typed reads for tests that drive a socket
//! step by step, and the one streaming client ([`StreamingClient`]) for tests
//! that need a steady camera-like stream while something else happens.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use awc::ws;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use holistream::actors::protocol::FrameHeader;
use parking_lot::Mutex;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::server::TestServer;

/// An open WebSocket connection (awc framed codec).
pub type WsConn = actix_codec::Framed<awc::BoxedSocket, ws::Codec>;

/// A steady client's frame period (15 fps: a camera, not a wait).
pub const CAMERA: Duration = Duration::from_millis(66);

/// Opens the WebSocket at `url` (`ws://` or `http://`) with an optional
/// cookie and `Origin`.
pub async fn connect_ws(
    url: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
) -> Result<WsConn, awc::error::WsClientError> {
    let mut req = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish()
        .ws(url)
        .max_frame_size(8 << 20);
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    if let Some(o) = origin {
        req = req.origin(o);
    }
    req.connect().await.map(|(_resp, conn)| conn)
}

/// Opens `/ws` with an optional cookie and `Origin`. A refused upgrade comes
/// back as `Err(status)`.
pub async fn ws_connect(
    server: &TestServer,
    cookie: Option<&str>,
    origin: Option<&str>,
) -> Result<WsConn, StatusCode> {
    match connect_ws(&server.ws_url(), cookie, origin).await {
        Ok(conn) => Ok(conn),
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => Err(status),
        Err(e) => panic!("WebSocket handshake failed without a status: {e}"),
    }
}

/// One binary frame message.
pub fn frame(seq: u32, capture_ts: f64, jpeg: &[u8]) -> ws::Message {
    ws::Message::Binary(FrameHeader { seq, capture_ts }.encode(jpeg).into())
}

/// Sends a message.
pub async fn send(conn: &mut WsConn, msg: ws::Message) {
    conn.send(msg).await.expect("sending on the WebSocket");
}

/// What came from the server, as text.
#[derive(Debug)]
pub enum Message {
    Text(Bytes),
    Closed(Option<ws::CloseReason>),
}

/// The next text message or the close, within `timeout`; answers pings on
/// the way (as a browser does), skips pongs.
pub async fn next_message(conn: &mut WsConn, timeout: Duration) -> Message {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let item = actix_web::rt::time::timeout(left, conn.next())
            .await
            .unwrap_or_else(|_| panic!("no WebSocket message within {timeout:?}"));
        match item {
            None => return Message::Closed(None),
            Some(Ok(ws::Frame::Close(reason))) => return Message::Closed(reason),
            Some(Ok(ws::Frame::Text(t))) => return Message::Text(t),
            Some(Ok(ws::Frame::Ping(p))) => {
                let _ = conn.send(ws::Message::Pong(p)).await;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("WebSocket protocol error: {e}"),
        }
    }
}

/// The next text message, within `timeout`; `None` when the connection
/// closed.
pub async fn next_text(conn: &mut WsConn, timeout: Duration) -> Option<String> {
    match next_message(conn, timeout).await {
        Message::Text(t) => Some(String::from_utf8(t.to_vec()).expect("UTF-8 text frame")),
        Message::Closed(_) => None,
    }
}

/// What came from the server, parsed.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    Closed(Option<ws::CloseReason>),
}

/// The next text message (as JSON) or the close, within `timeout`.
pub async fn next_incoming(conn: &mut WsConn, timeout: Duration) -> Incoming {
    match next_message(conn, timeout).await {
        Message::Text(t) => {
            Incoming::Json(serde_json::from_slice(&t).expect("server text is JSON"))
        }
        Message::Closed(reason) => Incoming::Closed(reason),
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
    let mut conn = ws_connect(server, Some(cookie), Some(&server.origin()))
        .await
        .expect("WebSocket refused");
    let hello = next_answer(&mut conn, Duration::from_secs(10)).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    conn
}

// ------------------------------------------------------------ streaming

/// What a [`StreamingClient`] saw, in order.
#[derive(Debug, Clone)]
pub enum Seen {
    Result {
        at: Instant,
        seq: u32,
        pose: usize,
    },
    Error {
        at: Instant,
        seq: Option<u32>,
        code: String,
    },
    /// The connection ended: a close frame with its code, or none (EOF, a
    /// reset, a protocol error).
    Closed {
        at: Instant,
        code: Option<u16>,
    },
}

/// A WebSocket client streaming one JPEG at a camera's rate ([`CAMERA`] unless
/// told otherwise) and
/// recording every frame sent and every `result`, `error` and close, until
/// stopped or closed by the server. It answers pings: a client that answers
/// none is closed as not reading.
pub struct StreamingClient {
    seen: Arc<Mutex<Vec<Seen>>>,
    sent: Arc<Mutex<Vec<u32>>>,
    stop: CancellationToken,
    task: actix_web::rt::task::JoinHandle<()>,
}

impl StreamingClient {
    /// Opens `/ws` on `base` (`http://host:port`) with `cookie` and the
    /// page's own `Origin`; the refusal, if any.
    pub async fn open(base: &str, cookie: &str, jpeg: Bytes) -> Result<StreamingClient, String> {
        StreamingClient::open_at(base, cookie, jpeg, CAMERA).await
    }

    /// [`StreamingClient::open`] sending a frame every `period`.
    pub async fn open_at(
        base: &str,
        cookie: &str,
        jpeg: Bytes,
        period: Duration,
    ) -> Result<StreamingClient, String> {
        let url = format!("ws{}/ws", base.strip_prefix("http").expect("http:// base"));
        let conn = connect_ws(&url, Some(cookie), Some(base))
            .await
            .map_err(|e| format!("WebSocket upgrade on {base}: {e}"))?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = actix_web::rt::spawn(stream_frames(
            conn,
            jpeg,
            period,
            seen.clone(),
            sent.clone(),
            stop.clone(),
        ));
        Ok(StreamingClient {
            seen,
            sent,
            stop,
            task,
        })
    }

    /// Results received at or after `t`.
    pub fn results_since(&self, t: Instant) -> usize {
        self.seen
            .lock()
            .iter()
            .filter(|s| matches!(s, Seen::Result { at, .. } if *at >= t))
            .count()
    }

    /// The codes of the errors received at or after `t`.
    pub fn errors_since(&self, t: Instant) -> Vec<String> {
        self.seen
            .lock()
            .iter()
            .filter_map(|s| match s {
                Seen::Error { at, code, .. } if *at >= t => Some(code.clone()),
                _ => None,
            })
            .collect()
    }

    /// When and how the connection ended, if it did.
    pub fn closed(&self) -> Option<(Instant, Option<u16>)> {
        self.seen.lock().iter().find_map(|s| match s {
            Seen::Closed { at, code } => Some((*at, *code)),
            _ => None,
        })
    }

    pub fn all(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    /// Frames sent after the newest one answered: in the pool or waiting in
    /// the session's slot.
    pub fn unanswered_tail(&self) -> usize {
        let newest_answer = self
            .all()
            .iter()
            .filter_map(|s| match s {
                Seen::Result { seq, .. } | Seen::Error { seq: Some(seq), .. } => Some(*seq),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        self.sent
            .lock()
            .iter()
            .filter(|s| **s > newest_answer)
            .count()
    }

    /// Every answer is for a frame this client sent, and no frame is
    /// answered twice.
    pub fn assert_answers_match_frames(&self, who: &str) {
        let sent: HashSet<u32> = self.sent.lock().iter().copied().collect();
        let mut answered = HashSet::new();
        for s in self.all() {
            let seq = match s {
                Seen::Result { seq, .. } | Seen::Error { seq: Some(seq), .. } => seq,
                _ => continue,
            };
            assert!(sent.contains(&seq), "{who}: answer for unsent frame {seq}");
            assert!(answered.insert(seq), "{who}: frame {seq} answered twice");
        }
    }

    /// Stops streaming (a close frame) and returns everything seen; a panic
    /// of the streaming task (the server sent something that is not its
    /// protocol) is the test's.
    pub async fn finish(self) -> Vec<Seen> {
        self.stop.cancel();
        if let Err(e) = self.task.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
        self.seen.lock().clone()
    }
}

async fn stream_frames(
    conn: WsConn,
    jpeg: Bytes,
    period: Duration,
    seen: Arc<Mutex<Vec<Seen>>>,
    sent: Arc<Mutex<Vec<u32>>>,
    stop: CancellationToken,
) {
    let (mut tx, mut rx) = conn.split();
    let mut camera = actix_web::rt::time::interval(period);
    let mut seq = 0u32;
    let closed = |code: Option<u16>| {
        seen.lock().push(Seen::Closed {
            at: Instant::now(),
            code,
        })
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = tx.send(ws::Message::Close(None)).await;
                return;
            }
            _ = camera.tick() => {
                seq += 1;
                let frame = FrameHeader { seq, capture_ts: f64::from(seq) * period.as_secs_f64() * 1e3 }.encode(&jpeg);
                if tx.send(ws::Message::Binary(frame.into())).await.is_err() {
                    return closed(None);
                }
                sent.lock().push(seq);
            }
            msg = rx.next() => {
                let text = match msg {
                    Some(Ok(ws::Frame::Text(text))) => text,
                    Some(Ok(ws::Frame::Close(reason))) => {
                        return closed(reason.map(|r| u16::from(r.code)));
                    }
                    None | Some(Err(_)) => return closed(None),
                    Some(Ok(ws::Frame::Ping(p))) => {
                        if tx.send(ws::Message::Pong(p)).await.is_err() {
                            return closed(None);
                        }
                        continue;
                    }
                    Some(Ok(_)) => continue,
                };
                let v: Value = serde_json::from_slice(&text).expect("server sent JSON");
                let at = Instant::now();
                let seq_of = |v: &Value| v["seq"].as_u64().map(|s| s as u32);
                match v["type"].as_str() {
                    Some("result") => {
                        let pose = v["pose"].as_array().map_or(0, |p| p.len());
                        let seq = seq_of(&v).expect("a result has a seq");
                        seen.lock().push(Seen::Result { at, seq, pose });
                    }
                    Some("error") => {
                        let code = v["code"].as_str().unwrap_or("?").to_string();
                        seen.lock().push(Seen::Error { at, seq: seq_of(&v), code });
                    }
                    _ => {}
                }
            }
        }
    }
}
