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

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use holistream::actors::protocol::ErrorCode;
use parking_lot::Mutex;

use support::fixtures::test_jpeg;
use support::http::{login_at, metric_family, metric_value, metrics_at};
use support::poll::{eventually_some, poll_blocking_within, wait_for};
use support::process::{Served, hermetic_command, spawn_worker, start_serve, worker_ready};
use support::redis_server::{RedisServer, group_exists};
use support::ws::{Seen, StreamingClient};

const PASSWORD: &str = "failure-paths-test-code";
/// Model loading in a dev-profile process, with other processes busy.
const SERVER_START: Duration = Duration::from_secs(120);

/// The tests that start servers and workers run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Starts `holistream serve <args> --host 127.0.0.1 --port <free>` with the
/// test's entry code and waits until `/healthz` answers.
async fn serve(name: &str, args: &[&str], env: &[(&str, String)], dir: &Path) -> Served {
    let mut all_env = vec![("HOLISTREAM_PASSWORD", PASSWORD.to_string())];
    all_env.extend(env.iter().cloned());
    start_serve(name, None, args, &all_env, dir, SERVER_START).await
}

/// `serve --pool redis` with a fixed gateway id.
async fn start_gateway(redis: &RedisServer, name: &str, dir: &Path) -> Served {
    let env = [
        ("REDIS_URL", redis.url()),
        ("HOLISTREAM_GATEWAY_ID", name.into()),
    ];
    serve(name, &["--pool", "redis"], &env, dir).await
}

/// Logs in on `base` with the test's entry code; the `Cookie` header value.
async fn login(base: &str) -> String {
    login_at(base, PASSWORD).await
}

/// The codes of `error` messages (README, protocol.rs).
fn error_codes() -> [&'static str; 8] {
    ErrorCode::ALL.map(ErrorCode::as_str)
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
        group_exists(&redis.url()),
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
    let mut server = serve(
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
    let mut status = None;
    let exited = poll_blocking_within(Duration::from_secs(60), support::poll::EVERY, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("serve {args:?} still running after 60 s");
    }
    // unwrap: the poll ended on an exit status.
    let status = status.unwrap();
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
    let server = serve("loadgen-serve", &["--workers", "1"], &[], dir.path()).await;
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
    let status = support::poll::poll_within(Duration::from_secs(60), support::poll::EVERY, || {
        std::future::ready(loadgen.try_wait().unwrap())
    })
    .await;
    let Some(status) = status else {
        let _ = loadgen.kill();
        let _ = loadgen.wait();
        panic!("loadgen still running after 60 s");
    };
    let output = loadgen.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(status.success(), "loadgen: {status}\n{stdout}\n{stderr}");
    let report: holistream::commands::loadgen::LoadReport = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("loadgen --json printed no JSON report ({e}):\n{stdout}"));
    eprintln!(
        "loadgen report: {}",
        serde_json::to_string(&report).unwrap()
    );

    // The server's counters are final once every session is gone.
    let text = eventually_some(
        Duration::from_secs(20),
        "no session open after loadgen exited",
        || async {
            let text = metrics_at(&server.base).await;
            (metric_value(&text, "holistream_sessions_active") == Some(0.0)).then_some(text)
        },
    )
    .await;
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
