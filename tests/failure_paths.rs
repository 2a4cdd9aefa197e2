//! The documented failure paths, with real processes: the binary under test
//! (`holistream serve`, `worker`, `loadgen`), a real `redis-server` on a free
//! port, real WebSocket clients sending a real JPEG, real models.
//!
//! - `redis_outage_frames_unavailable_then_streaming_resumes`: Redis killed
//!   under `serve --pool redis` + a worker: frames are answered
//!   `unavailable`, the socket stays open; Redis back on the same port (a
//!   fresh, empty process): the group is re-created and results come again
//!   within 5 s on the same socket (docs/deploy.md, the Redis row).
//! - `sigterm_with_frames_in_flight_closes_every_socket_within_the_timeout`:
//!   SIGTERM to `serve` while two clients stream: every answer is for a frame
//!   sent, at most once; every socket gets a close frame (1001); the process
//!   exits 0 within `server.shutdown_timeout_ms` + 1 s.
//! - `config_errors_exit_2_with_one_line`: malformed TOML, a missing file, an
//!   unknown key, an invalid value: one line on stderr, exit code 2; a
//!   failure that is not the configuration's (port taken) still exits 1.
//! - `loadgen_json_matches_the_server_metrics`: `loadgen --json` against a
//!   live `serve`: frames sent, results, errors by code and drops by reason
//!   equal the server's `/metrics` counters.
//! - `a_killed_gateway_s_client_streams_on_the_other_with_the_same_cookie`:
//!   two `serve --pool redis` sharing one Redis; login on A, SIGKILL A, the
//!   same cookie opens `/ws` on B and gets results (sessions mirrored in
//!   Redis).
//!
//! The tests that start servers run one at a time (`ONE_AT_A_TIME`): each
//! loads models in several processes and the machine may have two cores.
//! Every wait polls a condition with a deadline; a bound the docs promise (5 s,
//! the shutdown timeout) is measured with a longer deadline first, so that a
//! miss reports the time it took. Child processes are killed on every way out
//! (`Proc`'s drop); their logs are printed when a test fails.

mod common;
mod process_support;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use holistream::actors::protocol::{ErrorCode, FrameHeader};
use holistream::actors::remote::{JOBS_STREAM, WORKERS_GROUP};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use common::{RedisServer, free_port, test_jpeg};
use process_support::{
    Proc, hermetic_command, spawn_serve, spawn_worker, wait_for, wait_healthy, worker_ready,
};

const PASSWORD: &str = "failure-paths-test-code";
/// Model loading in a dev-profile process, with other processes busy.
const SERVER_START: Duration = Duration::from_secs(120);
/// A steady client's frame period (15 fps: a camera, not a wait).
const CAMERA: Duration = Duration::from_millis(66);

/// The tests that start servers and workers run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A `holistream serve` process on a free loopback port.
struct Server {
    proc: Proc,
    base: String,
}

/// Starts `holistream serve <args> --host 127.0.0.1 --port <free>` with the
/// test's entry code and waits until `/healthz` answers.
async fn start_serve(name: &str, args: &[&str], env: &[(&str, String)], dir: &Path) -> Server {
    let port = free_port();
    let mut all_env = vec![("HOLISTREAM_PASSWORD", PASSWORD.to_string())];
    all_env.extend(env.iter().cloned());
    let mut proc = spawn_serve(name, port, args, &all_env, dir);
    wait_healthy(&mut proc, port, SERVER_START).await;
    Server {
        proc,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// `serve --pool redis` with a fixed gateway id.
async fn start_gateway(redis: &RedisServer, name: &str, dir: &Path) -> Server {
    start_serve(
        name,
        &["--pool", "redis"],
        &[
            ("REDIS_URL", redis.url()),
            ("HOLISTREAM_GATEWAY_ID", name.into()),
        ],
        dir,
    )
    .await
}

fn redis_con(redis: &RedisServer) -> redis::Connection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("connecting to the test redis")
}

/// Whether the workers' consumer group exists on the jobs stream.
fn group_exists(redis: &RedisServer) -> bool {
    let info: redis::RedisResult<redis::streams::StreamInfoGroupsReply> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(JOBS_STREAM)
        .query(&mut redis_con(redis));
    info.is_ok_and(|i| i.groups.iter().any(|g| g.name == WORKERS_GROUP))
}

// ---------------------------------------------------------------------------
// HTTP and WebSocket clients
// ---------------------------------------------------------------------------

fn http() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish()
}

/// Logs in on `base`; the `Cookie` header value.
async fn login(base: &str) -> String {
    let mut resp = http()
        .post(format!("{base}/auth/code"))
        .send_json(&serde_json::json!({ "code": PASSWORD }))
        .await
        .expect("POST /auth/code");
    assert_eq!(resp.status(), 200, "login: {:?}", resp.body().await);
    resp.cookie(holistream::http::SESSION_COOKIE)
        .map(|c| format!("{}={}", c.name(), c.value()))
        .expect("session cookie")
}

/// `GET /metrics` of `base`.
async fn metrics_text(base: &str) -> String {
    let mut resp = http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    String::from_utf8(resp.body().await.expect("metrics body").to_vec()).expect("UTF-8 metrics")
}

/// The value of one series (`name{labels}` exactly as rendered), if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Every series of a counter family with one label: label value → value.
fn metric_family(text: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let prefix = format!("{name}{{{label}=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (value_of_label, rest) = rest.split_once("\"} ")?;
            Some((value_of_label.to_string(), rest.trim().parse().ok()?))
        })
        .collect()
}

/// The codes of `error` messages (README, protocol.rs).
fn error_codes() -> [&'static str; 8] {
    ErrorCode::ALL.map(ErrorCode::as_str)
}

/// What a client saw, in order.
#[derive(Debug, Clone)]
enum Seen {
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

/// A WebSocket client streaming one JPEG at a camera's rate and recording
/// every frame sent and every `result`, `error` and close, until stopped or
/// closed by the server.
struct StreamingClient {
    seen: Arc<Mutex<Vec<Seen>>>,
    sent: Arc<Mutex<Vec<u32>>>,
    stop: CancellationToken,
    task: actix_web::rt::task::JoinHandle<()>,
}

impl StreamingClient {
    /// Opens `/ws` on `base` with `cookie` and the page's own `Origin`; the
    /// refusal's status, if any.
    async fn open(base: &str, cookie: &str, jpeg: Bytes) -> Result<StreamingClient, String> {
        let ws = format!("ws{}/ws", base.strip_prefix("http").expect("http:// base"));
        let (_, conn) = awc::Client::builder()
            .timeout(Duration::from_secs(10))
            .finish()
            .ws(ws)
            .origin(base)
            .header("Cookie", cookie)
            .max_frame_size(8 << 20)
            .connect()
            .await
            .map_err(|e| format!("WebSocket upgrade on {base}: {e}"))?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = actix_web::rt::spawn(stream_frames(
            conn,
            jpeg,
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

    fn results_since(&self, t: Instant) -> usize {
        self.seen
            .lock()
            .iter()
            .filter(|s| matches!(s, Seen::Result { at, .. } if *at >= t))
            .count()
    }

    fn errors_since(&self, t: Instant) -> Vec<String> {
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
    fn closed(&self) -> Option<(Instant, Option<u16>)> {
        self.seen.lock().iter().find_map(|s| match s {
            Seen::Closed { at, code } => Some((*at, *code)),
            _ => None,
        })
    }

    fn all(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    /// Frames sent after the newest one answered: in the pool or waiting in
    /// the session's slot.
    fn unanswered_tail(&self) -> usize {
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
    fn assert_answers_match_frames(&self, who: &str) {
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

    async fn finish(self) -> Vec<Seen> {
        self.stop.cancel();
        let _ = self.task.await;
        self.seen.lock().clone()
    }
}

async fn stream_frames(
    conn: actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>,
    jpeg: Bytes,
    seen: Arc<Mutex<Vec<Seen>>>,
    sent: Arc<Mutex<Vec<u32>>>,
    stop: CancellationToken,
) {
    let (mut tx, mut rx) = conn.split();
    let mut camera = actix_web::rt::time::interval(CAMERA);
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
                let _ = tx.send(awc::ws::Message::Close(None)).await;
                return;
            }
            _ = camera.tick() => {
                seq += 1;
                let frame = FrameHeader { seq, capture_ts: f64::from(seq) * 66.0 }.encode(&jpeg);
                if tx.send(awc::ws::Message::Binary(frame.into())).await.is_err() {
                    return closed(None);
                }
                sent.lock().push(seq);
            }
            msg = rx.next() => {
                let text = match msg {
                    Some(Ok(awc::ws::Frame::Text(text))) => text,
                    Some(Ok(awc::ws::Frame::Close(reason))) => {
                        return closed(reason.map(|r| u16::from(r.code)));
                    }
                    None | Some(Err(_)) => return closed(None),
                    // A client that answers no pings is closed as not reading.
                    Some(Ok(awc::ws::Frame::Ping(p))) => {
                        if tx.send(awc::ws::Message::Pong(p)).await.is_err() {
                            return closed(None);
                        }
                        continue;
                    }
                    Some(Ok(_)) => continue,
                };
                let v: serde_json::Value = serde_json::from_slice(&text).expect("server sent JSON");
                let at = Instant::now();
                let seq_of = |v: &serde_json::Value| v["seq"].as_u64().map(|s| s as u32);
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

// ---------------------------------------------------------------------------
// 1. Redis stopped and restarted under the remote pool
// ---------------------------------------------------------------------------

/// The Redis row of docs/deploy.md, under `serve --pool redis` and one
/// worker: frames answered `unavailable` during the outage, and once Redis
/// returns (empty) the same socket streams on within 5 s: the session store
/// tells the lost data from a logout by Redis's epoch marker.
#[actix_web::test]
async fn redis_outage_frames_unavailable_then_streaming_resumes() {
    let _serial = ONE_AT_A_TIME.lock();
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::spawn();
    let jpeg = Bytes::from(test_jpeg());

    let mut worker = spawn_worker(&redis.url(), "ro-w1", dir.path());
    let gw = start_gateway(&redis, "ro-gw1", dir.path()).await;
    worker_ready(&mut worker, &redis.url()).await;

    let cookie = login(&gw.base).await;
    let client = StreamingClient::open(&gw.base, &cookie, jpeg.clone())
        .await
        .unwrap();
    let t0 = Instant::now();
    wait_for(
        Duration::from_secs(60),
        "3 results before the outage",
        || client.results_since(t0) >= 3,
    )
    .await;

    // The outage: frames are answered `unavailable`; the socket stays open.
    redis.stop();
    let down = Instant::now();
    let took = wait_for(
        Duration::from_secs(30),
        "3 frames answered `unavailable` during the outage",
        || {
            client
                .errors_since(down)
                .iter()
                .filter(|c| *c == "unavailable")
                .count()
                >= 3
        },
    )
    .await;
    let outage_errors = client.errors_since(down);
    eprintln!("redis outage: within {took:?} of the kill the client got {outage_errors:?}");
    // The frame a worker held when Redis died cannot be answered through
    // Redis: the gateway's sweeper answers it `lost` (or `expired`).
    assert!(
        outage_errors
            .iter()
            .all(|c| c == "unavailable" || c == "lost" || c == "expired"),
        "errors during the outage: {outage_errors:?}"
    );
    // A result read just before the kill may still be on its way; none after.
    assert_eq!(
        client.results_since(down + Duration::from_millis(500)),
        0,
        "results with Redis down?"
    );
    assert_eq!(client.closed(), None, "the socket closed during the outage");

    // Redis back on the same port, empty: the workers' group is re-created
    // and streaming resumes by itself.
    redis.restart();
    let back = Instant::now();
    wait_for(
        Duration::from_secs(30),
        "a result on the same socket (or the socket closed) after Redis returned",
        || client.results_since(back) >= 1 || client.closed().is_some(),
    )
    .await;
    let streaming = client;
    if let Some((at, code)) = streaming.closed() {
        panic!(
            "the socket was closed {:?} after Redis returned (close code {code:?}) instead of \
             streaming on; errors since: {:?}; gateway log:\n{}",
            at.duration_since(back),
            streaming.errors_since(back),
            gw.proc.log_text()
        );
    }
    let resumed = wait_for(
        Duration::from_secs(30),
        "a result after Redis returned",
        || streaming.results_since(back) >= 1,
    )
    .await;
    eprintln!("redis outage: first result {resumed:?} after Redis answered PING again");
    assert!(
        resumed <= Duration::from_secs(5),
        "streaming resumed {resumed:?} after Redis returned (bound: 5 s)"
    );
    assert!(
        group_exists(&redis),
        "the workers' group was not re-created"
    );
    let steady = Instant::now();
    wait_for(Duration::from_secs(30), "3 more results", || {
        streaming.results_since(steady) >= 3
    })
    .await;
    streaming.assert_answers_match_frames("client");
    streaming.finish().await;
    drop((gw, worker));
}

// ---------------------------------------------------------------------------
// 2. SIGTERM to `serve` with frames in flight
// ---------------------------------------------------------------------------

#[actix_web::test]
async fn sigterm_with_frames_in_flight_closes_every_socket_within_the_timeout() {
    let _serial = ONE_AT_A_TIME.lock();
    let dir = tempfile::tempdir().unwrap();
    let jpeg = Bytes::from(test_jpeg());
    const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(2000);
    let config = dir.path().join("holistream.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nshutdown_timeout_ms = {}\n[pool]\nworkers = 1\n",
            SHUTDOWN_TIMEOUT.as_millis()
        ),
    )
    .unwrap();
    let mut server = start_serve(
        "sigterm-serve",
        &["--config", config.to_str().unwrap()],
        &[],
        dir.path(),
    )
    .await;

    // Two clients at 15 fps on one inference thread: a frame is always in
    // the pool and another waiting in a session slot.
    let mut clients = Vec::new();
    for _ in 0..2 {
        let cookie = login(&server.base).await;
        clients.push(
            StreamingClient::open(&server.base, &cookie, jpeg.clone())
                .await
                .unwrap(),
        );
    }
    let t0 = Instant::now();
    wait_for(Duration::from_secs(60), "3 results on each client", || {
        clients.iter().all(|c| c.results_since(t0) >= 3)
    })
    .await;

    // Frames in flight on both sockets at the signal (at 15 fps against
    // ~100 ms a frame, at once).
    wait_for(
        Duration::from_secs(10),
        "unanswered frames on both clients",
        || clients.iter().all(|c| c.unanswered_tail() >= 1),
    )
    .await;
    assert!(server.proc.exited().is_none(), "serve exited by itself");
    server.proc.sigterm();
    let term = Instant::now();
    let status = server.proc.wait_exit(Duration::from_secs(30)).await;
    let took = term.elapsed();
    let status = status.unwrap_or_else(|| panic!("serve still running 30 s after SIGTERM"));
    eprintln!("sigterm: serve exited ({status}) {took:?} after SIGTERM");
    assert!(
        took <= SHUTDOWN_TIMEOUT + Duration::from_secs(1),
        "serve exited {took:?} after SIGTERM (bound: shutdown_timeout_ms {SHUTDOWN_TIMEOUT:?} + 1 s)"
    );
    assert!(status.success(), "serve exited with {status}");
    let log = server.proc.log_text();
    assert!(
        log.contains("SIGTERM received") && log.contains("shut down"),
        "no graceful shutdown in the log:\n{log}"
    );

    // Each socket was closed by the server with a close frame (1001, going
    // away), not just dropped; every answer was for a frame sent, once; none
    // came after the close.
    for (i, c) in clients.iter().enumerate() {
        wait_for(
            Duration::from_secs(5),
            "the client saw its socket end",
            || c.closed().is_some(),
        )
        .await;
        let (at, code) = c.closed().unwrap();
        assert_eq!(
            code,
            Some(1001),
            "client {i}: the socket ended without a 1001 close frame: {:?}",
            c.all().last()
        );
        assert!(at >= term, "client {i} closed before SIGTERM");
        c.assert_answers_match_frames(&format!("client {i}"));
    }
    for c in clients {
        c.finish().await;
    }
}

// ---------------------------------------------------------------------------
// 3. Configuration errors
// ---------------------------------------------------------------------------

/// Runs `holistream serve <args>` to its end (bounded); exit status and
/// stderr.
fn serve_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let mut child = hermetic_command()
        .arg("serve")
        .args(args)
        .env("HOLISTREAM_PASSWORD", PASSWORD)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve {args:?} still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

#[test]
fn config_errors_exit_2_with_one_line() {
    let _serial = ONE_AT_A_TIME.lock();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let malformed = write("malformed.toml", "[server\nport = 8080\n");
    let unknown_key = write("typo.toml", "[server]\nprot = 8080\n");
    let invalid = write("invalid.toml", "[server]\nshutdown_timeout_ms = 0\n");
    let missing = dir.path().join("absent.toml").to_str().unwrap().to_string();
    let cases = [
        (&malformed, "line 1"),
        (&unknown_key, "prot"),
        (&invalid, "server.shutdown_timeout_ms"),
        (&missing, "absent.toml"),
    ];
    for (path, says) in cases {
        let (status, stderr) = serve_to_exit(&["--config", path, "--port", "0"]);
        assert_eq!(status.code(), Some(2), "{path}: {status}, stderr: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{path}: not one line: {stderr:?}");
        assert!(
            lines[0].contains(says) && lines[0].starts_with("error: "),
            "{path}: {:?} should say {says:?}",
            lines[0]
        );
        eprintln!("config error: {}", lines[0]);
    }

    // Not a configuration error: as before, exit 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (status, stderr) = serve_to_exit(&["--host", "127.0.0.1", "--port", &port]);
    assert_eq!(status.code(), Some(1), "port taken: {status}, {stderr}");
    assert!(stderr.contains("binding"), "{stderr}");
}

// ---------------------------------------------------------------------------
// 4. loadgen --json against a live server
// ---------------------------------------------------------------------------

#[actix_web::test]
async fn loadgen_json_matches_the_server_metrics() {
    let _serial = ONE_AT_A_TIME.lock();
    let dir = tempfile::tempdir().unwrap();
    let server = start_serve("loadgen-serve", &["--workers", "1"], &[], dir.path()).await;
    let image = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grace_hopper.jpg");

    // As an operator runs it: default logging, the report on stdout.
    let mut loadgen = hermetic_command()
        .args([
            "loadgen",
            "--url",
            &server.base,
            "--password",
            PASSWORD,
            "--clients",
            "2",
            "--fps",
            "4",
            "--duration",
            "3",
            "--image",
            image.to_str().unwrap(),
            "--json",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning loadgen");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = loadgen.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = loadgen.kill();
            let _ = loadgen.wait();
            panic!("loadgen still running after 60 s");
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    };
    let output = loadgen.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(status.success(), "loadgen: {status}\n{stdout}\n{stderr}");
    let report: holistream::loadgen::LoadReport = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("loadgen --json printed no JSON report ({e}):\n{stdout}"));
    eprintln!(
        "loadgen report: {}",
        serde_json::to_string(&report).unwrap()
    );

    // The server's counters are final once every session is gone.
    let mut text = String::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        text = metrics_text(&server.base).await;
        if metric(&text, "holistream_sessions_active") == Some(0.0) {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(&text, "holistream_sessions_active"),
        Some(0.0),
        "sessions still open 20 s after loadgen exited:\n{text}"
    );
    let frames = metric_family(&text, "holistream_frames_total", "outcome");
    let drops = metric_family(&text, "holistream_drops_total", "reason");
    let ws_errors = metric_family(&text, "holistream_ws_errors_total", "code");

    assert!(report.results > 0, "no results: {report:?}");
    assert_eq!(frames.get("received"), Some(&report.sent), "{text}");
    assert_eq!(frames.get("processed"), Some(&report.results), "{text}");
    for (reason, reported) in [
        ("stale", report.drops.stale),
        ("fps", report.drops.fps),
        ("overload", report.drops.overload),
        ("expired", report.drops.expired),
    ] {
        assert_eq!(
            drops.get(reason),
            Some(&reported),
            "drops_total{{reason={reason:?}}} against loadgen's {reported}:\n{text}"
        );
    }
    // `error` messages by code. `ws_errors_total` also counts closes by
    // reason (`protocol`, `too_big`, `client_timeout`, `not_reading`),
    // which are no `error` message and which loadgen does not report.
    for code in error_codes() {
        assert_eq!(
            ws_errors.get(code).copied().unwrap_or(0),
            report.errors.get(code).copied().unwrap_or(0),
            "errors with code {code:?}: server against loadgen:\n{text}"
        );
    }
    let unknown: Vec<&String> = report
        .errors
        .keys()
        .filter(|c| !error_codes().contains(&c.as_str()))
        .collect();
    assert!(unknown.is_empty(), "loadgen saw unknown codes {unknown:?}");
    let closes: BTreeMap<&String, &u64> = ws_errors
        .iter()
        .filter(|(c, n)| **n > 0 && !error_codes().contains(&c.as_str()))
        .collect();
    // loadgen closes its sockets with a close handshake: the server saw no
    // protocol error, no timeout.
    assert!(
        closes.is_empty(),
        "the server closed sockets for {closes:?}"
    );
    drop(server);
}

// ---------------------------------------------------------------------------
// 6. A gateway killed under the remote pool
// ---------------------------------------------------------------------------

#[actix_web::test]
async fn a_killed_gateway_s_client_streams_on_the_other_with_the_same_cookie() {
    let _serial = ONE_AT_A_TIME.lock();
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::spawn();
    let jpeg = Bytes::from(test_jpeg());

    let mut worker = spawn_worker(&redis.url(), "gk-w1", dir.path());
    let mut a = start_gateway(&redis, "gk-a", dir.path()).await;
    let b = start_gateway(&redis, "gk-b", dir.path()).await;
    worker_ready(&mut worker, &redis.url()).await;

    let cookie = login(&a.base).await;
    let on_a = StreamingClient::open(&a.base, &cookie, jpeg.clone())
        .await
        .unwrap();
    let t0 = Instant::now();
    wait_for(Duration::from_secs(60), "3 results through A", || {
        on_a.results_since(t0) >= 3
    })
    .await;

    a.proc.kill();
    wait_for(Duration::from_secs(10), "A's socket ended", || {
        on_a.closed().is_some()
    })
    .await;
    on_a.assert_answers_match_frames("client on A");
    on_a.finish().await;

    // The client reconnects to B with the cookie A issued: B never saw this
    // session; it finds it in Redis.
    let on_b = StreamingClient::open(&b.base, &cookie, jpeg)
        .await
        .unwrap_or_else(|e| panic!("B refused A's cookie: {e}\n{}", b.proc.log_text()));
    let t1 = Instant::now();
    wait_for(Duration::from_secs(30), "3 results through B", || {
        on_b.results_since(t1) >= 3
    })
    .await;
    let errors = on_b.errors_since(t1);
    assert!(errors.is_empty(), "errors through B: {errors:?}");
    for s in on_b.all() {
        if let Seen::Result { pose, .. } = s {
            assert_eq!(pose, 33, "grace_hopper.jpg has a pose");
        }
    }
    on_b.assert_answers_match_frames("client on B");
    on_b.finish().await;
    drop((a, b, worker));
}
