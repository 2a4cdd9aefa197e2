//! Shared harness of the integration tests: a real `redis-server` on a free
//! port, the real server (`holistream::http::run`) on `127.0.0.1:0` in its own
//! actix system, and real HTTP / WebSocket clients (awc).
//!
//! Tests using it run under `#[actix_web::test]` (awc needs an actix
//! runtime). Every wait polls a condition with a deadline; none sleeps a
//! fixed time and hopes.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use awc::ws;
use holistream::config::Config;
use tokio_util::sync::CancellationToken;

/// How long a server may take to come up: each pool worker loads real models.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Polls `cond` every 20 ms until it is true; panics with `what` after
/// `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port nobody listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    // unwrap: binding port 0 on loopback only fails if the host has no
    // loopback, and then no test can run anyway.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The folder of the shared test data (`../shared/testdata` from the repo
/// root).
pub fn shared_testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata")
}

/// A real JPEG photo for frames (public domain, in `tests/fixtures/` when
/// present, else from the shared test data).
pub fn test_jpeg() -> Vec<u8> {
    let candidates = [
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grace_hopper.jpg"),
        shared_testdata().join("images/grace_hopper.jpg"),
    ];
    for c in &candidates {
        if let Ok(bytes) = std::fs::read(c) {
            return bytes;
        }
    }
    panic!("no test JPEG found at {candidates:?}");
}

/// A `redis-server` child process on a free loopback port, without
/// persistence; killed on drop.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one and waits until it answers PING.
    pub fn spawn() -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            child: None,
        };
        r.start();
        r
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (an outage) and waits until the port refuses
    /// connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: no persistence) and waits
    /// until it answers.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    fn start(&mut self) {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| {
            if std::path::Path::new("/usr/bin/redis-server").exists() {
                "/usr/bin/redis-server".into()
            } else {
                "redis-server".into()
            }
        });
        let child = Command::new(&bin)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (install redis-server)"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("redis-server exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        matches!(s.read_exact(&mut buf), Ok(()) if &buf == b"+PONG\r\n")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The admin token of [`test_config`].
#[allow(dead_code)]
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// A configuration for tests: a fixed entry code, one inference worker, one
/// HTTP worker, short shutdown bound, the repository's `web/` folder, the
/// admin routes on with [`ADMIN_TOKEN`] (off by default in a real server:
/// tests of that default turn them off again), and no per-cookie socket cap.
pub fn test_config(password: &str) -> Config {
    let mut c = Config::default();
    c.server.host = "127.0.0.1".into();
    c.server.port = 0;
    c.server.http_workers = 1;
    c.server.shutdown_timeout_ms = 5_000;
    c.server.web_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web");
    c.auth.password = Some(password.into());
    c.pool.workers = 1;
    c.admin.enabled = true;
    c.admin.token = Some(ADMIN_TOKEN.into());
    // Many tests stand for several clients with one login; the default cap
    // of 2 sockets per cookie is tested on its own (tests/trust_boundary.rs).
    c.server.max_sockets_per_session = c.server.max_sessions;
    c
}

/// The real server, in-process, on `127.0.0.1:<free port>`, in its own thread
/// and actix system. Shut down (token cancelled, thread joined) on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts the server and waits until `/healthz` answers.
    pub async fn start(config: Config) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a test port");
        TestServer::start_on(listener, config).await
    }

    /// Starts the server on `listener` (e.g. the address of a stopped one, to
    /// restart it where clients reconnect) and waits until `/healthz` answers.
    pub async fn start_on(listener: TcpListener, config: Config) -> TestServer {
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name(format!("test-server-{}", addr.port()))
            .spawn(move || {
                actix_web::rt::System::new()
                    .block_on(holistream::http::run(listener, config, token))
            })
            .expect("spawning the server thread");
        let mut server = TestServer {
            addr,
            shutdown,
            thread: Some(thread),
        };
        server.wait_healthy().await;
        server
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let client = http_client();
        loop {
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                // unwrap: checked just above that it is there.
                let outcome = self.thread.take().unwrap().join();
                panic!("server exited during start-up: {outcome:?}");
            }
            if let Ok(resp) = client.get(self.url("/healthz")).send().await
                && resp.status() == StatusCode::OK
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server not healthy after {START_TIMEOUT:?}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `ws://127.0.0.1:<port>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The server's own origin, as a browser on its page would send it.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token whose cancellation shuts the server down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Cancels the token and waits (blocking, at most `bound`) for `run` to
    /// return; returns its outcome and how long it took.
    pub fn stop(&mut self, bound: Duration) -> (anyhow::Result<()>, Duration) {
        let started = Instant::now();
        self.shutdown.cancel();
        let thread = self.thread.take().expect("server already stopped");
        while !thread.is_finished() {
            assert!(
                started.elapsed() < bound,
                "server did not shut down within {bound:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let outcome = thread.join().expect("server thread panicked");
        (outcome, started.elapsed())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            // Bounded: a server that does not stop must not hang the suite.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else if !std::thread::panicking() {
                panic!("test server did not stop within 30 s of its token being cancelled");
            }
        }
    }
}

/// An HTTP client with a short timeout.
pub fn http_client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish()
}

/// Logs in; returns the response status and, on success, the `Cookie` header
/// value (`holistream_session=<uuid>`).
pub async fn try_login(server: &TestServer, password: &str) -> (StatusCode, Option<String>) {
    let resp = http_client()
        .post(server.url("/auth/code"))
        .send_json(&serde_json::json!({ "code": password }))
        .await
        .expect("POST /auth/code");
    let cookie = resp
        .cookie(holistream::http::SESSION_COOKIE)
        .map(|c| format!("{}={}", c.name(), c.value()));
    (resp.status(), cookie)
}

/// Logs in and returns the `Cookie` header value; panics unless it worked.
pub async fn login(server: &TestServer, password: &str) -> String {
    match try_login(server, password).await {
        (StatusCode::OK, Some(cookie)) => cookie,
        other => panic!("login failed: {other:?}"),
    }
}

/// `GET /auth/code` with the cookie; the status.
pub async fn session_status(server: &TestServer, cookie: &str) -> StatusCode {
    http_client()
        .get(server.url("/auth/code"))
        .insert_header(("Cookie", cookie))
        .send()
        .await
        .expect("GET /auth/code")
        .status()
}

/// An open WebSocket connection (awc framed codec).
pub type WsConn = actix_codec::Framed<awc::BoxedSocket, ws::Codec>;

/// Opens `/ws` with an optional cookie and `Origin`. A refused upgrade comes
/// back as `Err(status)`.
pub async fn ws_connect(
    server: &TestServer,
    cookie: Option<&str>,
    origin: Option<&str>,
) -> Result<WsConn, StatusCode> {
    let mut req = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish()
        .ws(server.ws_url())
        .max_frame_size(8 << 20);
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    if let Some(o) = origin {
        req = req.origin(o);
    }
    match req.connect().await {
        Ok((_resp, conn)) => Ok(conn),
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => Err(status),
        Err(e) => panic!("WebSocket handshake failed without a status: {e}"),
    }
}

/// The next text message of the connection (answering pings, as a browser
/// does, skipping pongs), within `timeout`; `None` when the connection closed.
pub async fn next_text(conn: &mut WsConn, timeout: Duration) -> Option<String> {
    use futures_util::{SinkExt, StreamExt};
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = actix_web::rt::time::timeout(left, conn.next())
            .await
            .unwrap_or_else(|_| panic!("no WebSocket message within {timeout:?}"));
        match frame {
            None | Some(Ok(ws::Frame::Close(_))) => return None,
            Some(Ok(ws::Frame::Text(t))) => {
                return Some(String::from_utf8(t.to_vec()).expect("UTF-8 text frame"));
            }
            Some(Ok(ws::Frame::Ping(p))) => {
                let _ = conn.send(ws::Message::Pong(p)).await;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("WebSocket protocol error: {e}"),
        }
    }
}

/// A response body parsed as JSON (panics, showing the text, if it is not).
pub async fn json_body<S>(resp: &mut awc::ClientResponse<S>) -> serde_json::Value
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>>,
{
    let body = resp.body().await.expect("reading the body");
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&body)))
}
