//! The real server in this process: [`test_config`] and [`TestServer`]
//! (`holistream::http::run` on a reserved loopback port, in its own thread
//! and actix system).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use holistream::config::Config;
use tokio_util::sync::CancellationToken;

use super::http::http_client;
use super::poll::{EVERY, poll_blocking_within, poll_within, wait_blocking};
use super::port::FreePort;

/// How long a server may take to come up: each pool worker loads real models.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The admin token of [`test_config`].
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// A configuration for tests: a fixed entry code, one inference worker, one
/// HTTP worker, short shutdown bound, the repository's `web/` folder, the
/// admin routes on with [`ADMIN_TOKEN`] (off by default in a real server:
/// tests of that default turn them off again), no per-cookie socket cap, and
/// WebRTC ingest on a free UDP port.
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
    // WebRTC ingest on a free UDP port: tests run servers side by side.
    c.rtc.port = 0;
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
    /// Starts the server on a free port and waits until `/healthz` answers.
    pub async fn start(config: Config) -> TestServer {
        TestServer::start_on(FreePort::new().into_listener(), config).await
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
        let client = http_client();
        let healthy = poll_within(START_TIMEOUT, Duration::from_millis(50), || {
            let exited = self.thread.as_ref().is_some_and(|t| t.is_finished());
            let health = client.get(self.url("/healthz")).send();
            async move {
                if exited {
                    return Some(false);
                }
                let ok = health.await.is_ok_and(|r| r.status() == StatusCode::OK);
                ok.then_some(true)
            }
        })
        .await;
        match healthy {
            Some(true) => {}
            Some(false) => {
                // unwrap: it was there when the probe saw it finished.
                let outcome = self.thread.take().unwrap().join();
                panic!("server exited during start-up: {outcome:?}");
            }
            None => panic!("server not healthy after {START_TIMEOUT:?}"),
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://127.0.0.1:<port>`: the server's own origin, as a browser on
    /// its page would send it.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:<port>/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The server's own origin, as a browser on its page would send it.
    pub fn origin(&self) -> String {
        self.base()
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
        wait_blocking(bound, "the server to shut down", || thread.is_finished());
        let outcome = thread.join().expect("server thread panicked");
        (outcome, started.elapsed())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            // Bounded: a server that does not stop must not hang the suite.
            let stopped =
                poll_blocking_within(Duration::from_secs(30), EVERY, || thread.is_finished());
            if stopped {
                let _ = thread.join();
            } else if !std::thread::panicking() {
                panic!("test server did not stop within 30 s of its token being cancelled");
            }
        }
    }
}
