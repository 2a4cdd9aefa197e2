//! The shipped deploy path end to end: Debian's nginx running the shipped
//! `docker/nginx.conf` and `docker/nginx/` (the site picked by the shipped
//! `docker/nginx-site.sh`, as the image's entrypoint does) in front of two
//! real gateways (`holistream serve --pool redis`), two real workers
//! (`holistream worker`) and one real Redis with a password, all on loopback;
//! the real web demo in a real Chromium.
//!
//! The test rewrites only what a container's network decides: the upstream
//! addresses, the listen ports, the pid file and nginx's scratch folders.
//! Each rewrite must match the shipped text exactly once, so a change to the
//! shipped files that this test no longer covers fails here.
//!
//! One test, its phases in order (each loads the machine's cores; none may
//! run beside another):
//! 1. plain HTTP on a non-default port: Chromium logs in and streams through
//!    nginx and gets results (the page's transport, WebRTC by default: its
//!    WHIP offer goes through nginx, its media straight to the gateway's UDP
//!    port); the gateway holding the page's session is SIGKILLed and the
//!    page reconnects through nginx to the other one, with the same cookie,
//!    and results resume;
//! 2. the login limiter per client address behind nginx: wrong codes from
//!    127.0.0.21 lock that address out on both gateways and not 127.0.0.22,
//!    and neither address can choose its key with its own `X-Forwarded-For` or
//!    `X-Real-IP`;
//! 3. `/admin/` and `/metrics` refused by nginx itself (a gateway's own
//!    listener still serves `/metrics`);
//! 4. WHIP through nginx: offers balanced over both gateways, each session's
//!    `DELETE` routed to the gateway named in its `Location`;
//! 5. TLS with a self-signed certificate the test makes: TLS 1.2 and 1.3
//!    only; Chromium logs in and streams over `https://`, the cookie is
//!    `Secure`, HSTS is sent, plain HTTP is redirected to the HTTPS port.
//!
//! Needs `nginx` (Debian's `nginx-light`; `NGINX` overrides the path),
//! `redis-server`, `openssl`, `chromium` and `chromium-driver`. Every process
//! is killed on every way out; every wait polls a condition with a deadline.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::Client;
use serde_json::Value;
use support::browser::{
    ChromeDriver, PAGE_STATE, PAGE_TIMEOUT, landmark_counts_ok, poll_js, results,
    results_after_reconnect,
};
use support::fixtures::repo_file;
use support::http::{http_from, metric_value};
use support::poll::{eventually_some, wait_for};
use support::port::FreePort;
use support::process::{Proc, Served, spawn_worker, start_serve, worker_ready};
use support::redis_server::RedisServer;

const PASSWORD: &str = "nginx-entry-code-51c2";
const REDIS_PASSWORD: &str = "redis-secret-0b7e41";
const GATEWAY_START: Duration = Duration::from_secs(60);
const NGINX_START: Duration = Duration::from_secs(20);
/// Generous: the first results wait for the browser's camera and the workers.
const RESULTS_TIMEOUT: Duration = Duration::from_secs(120);
/// The gateways' `auth.max_failures` (the default).
const MAX_FAILURES: usize = 5;

// ------------------------------------------------------------ processes

/// A `redis-server` with a password and protected mode, as compose runs it;
/// its URL has compose's `REDIS_URL` shape.
fn start_redis() -> RedisServer {
    let redis = RedisServer::spawn_with_password(REDIS_PASSWORD);
    // Without the password it refuses: the credentials in the URL are what
    // the gateways and workers below get in.
    let anonymous = redis::Client::open(format!("redis://127.0.0.1:{}/0", redis.port())).unwrap();
    let refused = anonymous
        .get_connection_with_timeout(Duration::from_secs(2))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    assert!(refused.is_err(), "Redis answered without its password");
    redis
}

/// A gateway: `holistream serve --pool redis` on loopback, trusting the
/// forwarding headers of the proxy on 127.0.0.1 only (compose trusts its
/// network, where only nginx sends HTTP).
type Gateway = Served;

async fn start_gateway(
    redis: &RedisServer,
    name: &str,
    port: Option<u16>,
    secure_cookie: bool,
    dir: &Path,
) -> Gateway {
    let env = [
        ("REDIS_URL", redis.url()),
        ("HOLISTREAM_PASSWORD", PASSWORD.into()),
        ("HOLISTREAM_GATEWAY_ID", name.into()),
        ("HOLISTREAM_TRUSTED_PROXIES", "127.0.0.1/32".into()),
        ("HOLISTREAM_SECURE_COOKIE", secure_cookie.to_string()),
    ];
    start_serve(name, port, &["--pool", "redis"], &env, dir, GATEWAY_START).await
}

/// One sample of a gateway's own `/metrics` (its listener, not through nginx).
async fn gateway_metric(g: &Gateway, name: &str) -> f64 {
    let resp = http_from(Ipv4Addr::LOCALHOST, g.addr(), "GET", "/metrics", &[], "").await;
    assert_eq!(resp.status, 200, "/metrics on the gateway's own port");
    metric_value(&resp.body, name).unwrap_or_else(|| panic!("{name} not in the gateway's /metrics"))
}

// ------------------------------------------------------------ nginx

/// `text` with `from` replaced by `to`, where `from` occurs exactly once.
fn rewrite(file: &str, text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "the shipped {file} no longer has `{from}` once: update tests/nginx.rs"
    );
    text.replacen(from, to, 1)
}

/// Debian's nginx running the shipped configuration.
struct Nginx {
    proc: Proc,
    /// Plain HTTP: the site, or the redirect to HTTPS.
    http: SocketAddr,
    /// HTTPS, with a certificate.
    https: SocketAddr,
}

/// Lays the shipped files out as the container has them (`nginx.conf`,
/// `holistream/`, `certs/` in one folder), rewrites the upstreams, listen
/// ports, pid file and scratch folders, lets `docker/nginx-site.sh` pick the
/// site, checks it with `nginx -t` and starts nginx in the foreground.
async fn start_nginx(root: &Path, gateways: [&Gateway; 2], tls: bool) -> Nginx {
    let bin = std::env::var("NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into());
    assert!(
        Path::new(&bin).exists(),
        "{bin} not found: install Debian's nginx-light (or set NGINX)"
    );
    let conf = root.join("conf");
    std::fs::create_dir_all(conf.join("holistream")).unwrap();
    // Both reserved at once (so they differ) until nginx is started.
    let reserved = (FreePort::new(), FreePort::new());
    let (http, https) = (reserved.0.port(), reserved.1.port());

    // The main file: the gateways' addresses (compose's host names resolve
    // on its network only), the pid file, and nginx's scratch folders (by
    // default in /var/lib/nginx, which a test must not touch).
    let mut main = repo_file("docker/nginx.conf");
    for (i, g) in gateways.iter().enumerate() {
        main = rewrite(
            "nginx.conf",
            &main,
            &format!("server gateway{}:8080 ", i + 1),
            &format!("server 127.0.0.1:{} ", g.port),
        );
        // The gateway's own upstream (WHIP's DELETE is routed to it).
        main = rewrite(
            "nginx.conf",
            &main,
            &format!("server gateway{}:8080;", i + 1),
            &format!("server 127.0.0.1:{};", g.port),
        );
    }
    main = rewrite(
        "nginx.conf",
        &main,
        "pid /tmp/nginx.pid;",
        &format!("pid {}/nginx.pid;", root.display()),
    );
    let temp = root.join("temp");
    let scratch: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|t| format!("    {t}_temp_path {}/{t};\n", temp.display()))
        .collect();
    main = rewrite(
        "nginx.conf",
        &main,
        "http {\n",
        &format!("http {{\n{scratch}"),
    );
    std::fs::write(conf.join("nginx.conf"), main).unwrap();

    // The sites: only the listen ports (loopback, free ports).
    const SITE_FILES: [&str; 3] = ["http.conf", "https.conf", "locations.conf"];
    let mut shipped: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/nginx"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
    shipped.sort();
    assert_eq!(
        shipped, SITE_FILES,
        "docker/nginx/ changed: update tests/nginx.rs"
    );
    for name in SITE_FILES {
        let mut text = repo_file(&format!("docker/nginx/{name}"));
        if name != "locations.conf" {
            text = rewrite(
                name,
                &text,
                "listen 80 default_server;",
                &format!("listen 127.0.0.1:{http} default_server;"),
            );
        }
        if name == "https.conf" {
            text = rewrite(
                name,
                &text,
                "listen 443 ssl default_server;",
                &format!("listen 127.0.0.1:{https} ssl default_server;"),
            );
        }
        std::fs::write(conf.join("holistream").join(name), text).unwrap();
    }

    // The certificate, as an operator would mount it.
    if tls {
        let certs = conf.join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-days", "1", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .arg("-keyout")
            .arg(certs.join("privkey.pem"))
            .arg("-out")
            .arg(certs.join("fullchain.pem"))
            .output()
            .expect("running openssl (install openssl)");
        assert!(
            out.status.success(),
            "openssl req: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The shipped entrypoint script picks the site, as in the container.
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/nginx-site.sh"))
        .arg(&conf)
        .env("HOLISTREAM_HTTPS_PORT", https.to_string())
        .output()
        .expect("running docker/nginx-site.sh");
    assert!(
        out.status.success(),
        "nginx-site.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let site = std::fs::read_to_string(conf.join("holistream-site.conf")).unwrap();
    let expected = if tls { "https.conf" } else { "http.conf" };
    assert!(
        site.contains(&format!("include holistream/{expected};")),
        "nginx-site.sh picked the wrong site:\n{site}"
    );

    // nginx, when started as root, hands its workers to `nobody`, who must
    // reach the scratch folders.
    for dir in [root.to_path_buf(), temp.clone()] {
        std::fs::create_dir_all(&dir).unwrap();
        let mut perms = std::fs::metadata(&dir).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&dir, perms).unwrap();
    }
    let nginx_cmd = |extra: &[&str]| {
        let mut cmd = Command::new(&bin);
        cmd.arg("-p")
            .arg(root)
            .arg("-c")
            .arg(conf.join("nginx.conf"))
            .args(["-e", "stderr"])
            .args(extra);
        cmd
    };
    let test = nginx_cmd(&["-t", "-q"]).output().expect("nginx -t");
    assert!(
        test.status.success(),
        "nginx -t on the shipped files: {}",
        String::from_utf8_lossy(&test.stderr)
    );

    let name = if tls { "nginx-tls" } else { "nginx" };
    drop(reserved);
    let mut proc = Proc::spawn(name, nginx_cmd(&["-g", "daemon off;"]), true, root);
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, http));
    let https = SocketAddr::from((Ipv4Addr::LOCALHOST, https));
    let listening = if tls { https } else { http };
    wait_for(NGINX_START, "nginx listening", || {
        proc.assert_running();
        std::net::TcpStream::connect(listening).is_ok()
    })
    .await;
    Nginx { proc, http, https }
}

// ------------------------------------------------------------ raw HTTP

/// `POST /auth/code` with `code` from `from` through `to`, as a browser on the
/// page would send it, plus `headers`; the status.
async fn login_from(from: Ipv4Addr, to: SocketAddr, code: &str, headers: &[(&str, &str)]) -> u16 {
    let origin = format!("http://{to}");
    let mut all = vec![("Origin", origin.as_str())];
    all.extend_from_slice(headers);
    let body = serde_json::json!({ "code": code }).to_string();
    http_from(from, to, "POST", "/auth/code", &all, &body)
        .await
        .status
}

// ------------------------------------------------------------ the test

/// Everything the test started; dropped (killed) on every way out, the
/// folder of their logs last.
struct Deployment {
    redis: RedisServer,
    workers: Vec<Proc>,
    gateways: [Gateway; 2],
    nginx: Option<Nginx>,
    dir: tempfile::TempDir,
}

impl Deployment {
    fn print_logs(&self) {
        let procs = [&self.workers[0], &self.workers[1]];
        let gateways = self.gateways.iter().map(|g| &g.proc);
        let nginx = self.nginx.iter().map(|n| &n.proc);
        for p in procs.into_iter().chain(gateways).chain(nginx) {
            p.print_log();
        }
    }
}

#[actix_web::test]
async fn the_shipped_nginx_serves_the_demo_plain_and_over_tls() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // nginx's workers run as `nobody` when the test runs as root.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let redis = start_redis();
    // The workers load their models meanwhile.
    let workers = vec![
        spawn_worker(&redis.url(), "w1", dir.path()),
        spawn_worker(&redis.url(), "w2", dir.path()),
    ];
    let g1 = start_gateway(&redis, "gateway1", None, false, dir.path()).await;
    let g2 = start_gateway(&redis, "gateway2", None, false, dir.path()).await;
    let nginx = start_nginx(&dir.path().join("nginx-plain"), [&g1, &g2], false).await;
    let mut d = Deployment {
        redis,
        workers,
        gateways: [g1, g2],
        nginx: Some(nginx),
        dir,
    };
    for worker in &mut d.workers {
        worker_ready(worker, &d.redis.url()).await;
    }
    // The browser last, once nothing else can fail at start: from here on a
    // failure closes it before the processes go.
    let clip = support::browser::build_clip(d.dir.path());
    let driver = ChromeDriver::spawn();
    // The certificate of phase 4 is self-signed.
    let client = driver
        .browser(&clip, &["--ignore-certificate-errors"])
        .await;
    eprintln!(
        "[{:?}] started: redis, 2 workers, 2 gateways, nginx, chromium",
        started.elapsed()
    );

    // Run the phases, then close the browser whatever happened, so a failed
    // phase does not leave a Chromium behind.
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(phases(
        &client, &mut d, started,
    )))
    .await;
    let _ = client.close().await;
    drop(driver);
    if outcome.is_err() {
        d.print_logs();
    }
    drop(d);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    eprintln!("[{:?}] done", started.elapsed());
}

async fn phases(client: &Client, d: &mut Deployment, started: Instant) {
    streams_and_survives_a_gateway_kill(client, d).await;
    eprintln!(
        "[{:?}] 1. streamed through nginx, survived a gateway kill",
        started.elapsed()
    );
    limits_logins_per_client_address(d).await;
    eprintln!(
        "[{:?}] 2. login limiter per client address",
        started.elapsed()
    );
    refuses_operator_routes(d).await;
    eprintln!("[{:?}] 3. /admin/ and /metrics refused", started.elapsed());
    // Plain HTTP still (phase 5 turns the redirect to HTTPS on).
    routes_whip_deletes_to_their_gateway(d).await;
    eprintln!(
        "[{:?}] 4. WHIP through nginx, each DELETE to its gateway",
        started.elapsed()
    );
    streams_over_tls(client, d).await;
    eprintln!("[{:?}] 5. TLS", started.elapsed());
}

/// WHIP signalling through nginx: offers go round robin, and each
/// session's `DELETE` reaches the gateway that holds it (named in its
/// `Location`), never the other (which would answer 404 and leave the
/// session to its ICE timeout).
async fn routes_whip_deletes_to_their_gateway(d: &mut Deployment) {
    use holistream::actors::rtc::VideoCodec;
    use holistream::actors::rtc::client::{ClientOptions, RtcClient};
    let nginx = d.nginx.as_ref().unwrap().http;
    let from = Ipv4Addr::new(127, 0, 0, 31);
    let auth = format!("Bearer {PASSWORD}");
    // The page's own WebRTC session (phase 1) stays open throughout.
    let mut before = Vec::new();
    for g in &d.gateways {
        before.push(gateway_metric(g, "holistream_rtc_sessions_active").await);
    }
    let mut locations = Vec::new();
    for _ in 0..6 {
        let opts = ClientOptions {
            codec: VideoCodec::H264,
            bitrate_kbps: 500,
            fps: 10,
            data_channel: true,
            width: 640,
            height: 480,
        };
        let (_pending, offer) = RtcClient::offer(Ipv4Addr::LOCALHOST.into(), opts).unwrap();
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/sdp"),
        ];
        let resp = http_from(from, nginx, "POST", "/whip", &headers, &offer).await;
        assert_eq!(resp.status, 201, "POST /whip through nginx: {resp:?}");
        assert!(resp.body.contains("a=ice-lite"), "{resp:?}");
        locations.push(resp.header("Location").expect("Location").to_string());
    }
    for gateway in ["gateway1", "gateway2"] {
        assert!(
            locations
                .iter()
                .any(|l| l.starts_with(&format!("/whip/{gateway}/"))),
            "round robin never reached {gateway}: {locations:?}"
        );
    }
    for location in &locations {
        let headers = [("Authorization", auth.as_str())];
        let resp = http_from(from, nginx, "DELETE", location, &headers, "").await;
        assert_eq!(
            resp.status, 200,
            "DELETE {location} through nginx: {resp:?}"
        );
    }
    for (g, before) in d.gateways.iter().zip(before) {
        assert_eq!(
            gateway_metric(g, "holistream_rtc_sessions_active").await,
            before,
            "a WHIP session left open on a gateway"
        );
    }
}

/// Waits for `count` more results with MediaPipe's landmark counts than
/// `after`, on an open connection; returns the page's state.
async fn results_after(client: &Client, after: u64, count: u64, what: &str) -> Value {
    poll_js(client, RESULTS_TIMEOUT, what, PAGE_STATE, |s| {
        s["connection"] == "open"
            && results(s) >= after + count
            && landmark_counts_ok(&s["lastResult"])
    })
    .await
}

async fn session_cookie(client: &Client) -> fantoccini::cookies::Cookie<'static> {
    client
        .get_named_cookie(holistream::http::SESSION_COOKIE)
        .await
        .expect("the session cookie in the browser")
}

async fn screenshot(client: &Client, name: &str) {
    let shot = client.screenshot().await.expect("taking a screenshot");
    let path = support::browser::artifacts_dir().join(name);
    std::fs::write(&path, &shot).unwrap();
    println!("screenshot: {}", path.display());
}

/// Phase 1: the demo through nginx on a non-default port, and a gateway
/// SIGKILLed under it.
async fn streams_and_survives_a_gateway_kill(client: &Client, d: &mut Deployment) {
    let nginx = d.nginx.as_ref().unwrap().http;
    let base = format!("http://{nginx}");
    support::browser::login_through_page(client, &base, PASSWORD).await;
    let state = results_after(client, 0, 5, "results through nginx").await;
    assert_eq!(state["camera"], "live", "{state}");
    let cookie = session_cookie(client).await;
    screenshot(client, "nginx_plain.png").await;

    // The gateway that holds the page's WebSocket (sessions_active, read on
    // each gateway's own listener).
    let holder = eventually_some(
        PAGE_TIMEOUT,
        "the page's WebSocket on exactly one gateway",
        || async {
            let open = [
                gateway_metric(&d.gateways[0], "holistream_sessions_active").await,
                gateway_metric(&d.gateways[1], "holistream_sessions_active").await,
            ];
            match open {
                [1.0, 0.0] => Some(0),
                [0.0, 1.0] => Some(1),
                _ => None,
            }
        },
    )
    .await;
    let other = 1 - holder;

    let before = results(&client.execute(PAGE_STATE, vec![]).await.unwrap());
    d.gateways[holder].proc.kill();
    let after = results_after_reconnect(
        client,
        RESULTS_TIMEOUT,
        "results again after the gateway was killed",
        before,
    )
    .await;
    assert_eq!(
        client.current_url().await.unwrap().path(),
        "/stream.html",
        "the page stayed logged in: {after}"
    );
    assert_eq!(
        session_cookie(client).await.value(),
        cookie.value(),
        "the same cookie"
    );
    assert_eq!(
        gateway_metric(&d.gateways[other], "holistream_sessions_active").await,
        1.0,
        "the page reconnected to the other gateway"
    );

    // The killed gateway comes back where nginx expects it.
    let name = if holder == 0 { "gateway1" } else { "gateway2" };
    let port = d.gateways[holder].port;
    d.gateways[holder] = start_gateway(&d.redis, name, Some(port), false, d.dir.path()).await;
}

/// Phase 2: the limiter keys on the client's address as nginx saw it, shared
/// by both gateways (in Redis), and a client cannot choose its key.
async fn limits_logins_per_client_address(d: &mut Deployment) {
    let nginx = d.nginx.as_ref().unwrap().http;
    let (a, b) = (Ipv4Addr::new(127, 0, 0, 21), Ipv4Addr::new(127, 0, 0, 22));
    for i in 0..MAX_FAILURES {
        let status = login_from(a, nginx, "not-the-code", &[]).await;
        // The last may already be refused, depending on whether the limiter
        // counts before or after the check; the first must be a plain 401.
        assert!(
            status == 401 || (i > 0 && status == 429),
            "wrong code #{} from {a}: {status}",
            i + 1
        );
    }
    assert_eq!(
        login_from(b, nginx, PASSWORD, &[]).await,
        200,
        "{b} is not locked out"
    );
    // nginx round-robins: twice, so both gateways answer.
    for _ in 0..2 {
        assert_eq!(
            login_from(a, nginx, PASSWORD, &[]).await,
            429,
            "{a} is locked out"
        );
    }
    // Its own forwarding headers do not make it someone else.
    for spoof in [("X-Forwarded-For", "1.2.3.4"), ("X-Real-IP", "1.2.3.5")] {
        assert_eq!(
            login_from(a, nginx, PASSWORD, &[spoof]).await,
            429,
            "{a} with {spoof:?} is still locked out"
        );
    }
    // Nor can another client borrow the locked-out address's key.
    assert_eq!(
        login_from(b, nginx, PASSWORD, &[("X-Forwarded-For", "127.0.0.21")]).await,
        200,
        "{b} claiming to be {a} is still {b}"
    );
    // The lock is in Redis: each gateway, asked directly by the proxy's
    // address on behalf of each client, says the same.
    for g in &d.gateways {
        let xff = |ip: &'static str| [("X-Forwarded-For", ip)];
        let from_proxy = Ipv4Addr::LOCALHOST;
        assert_eq!(
            login_from(from_proxy, g.addr(), PASSWORD, &xff("127.0.0.21")).await,
            429,
            "gateway on {} locks out 127.0.0.21",
            g.port
        );
        assert_eq!(
            login_from(from_proxy, g.addr(), PASSWORD, &xff("127.0.0.22")).await,
            200,
            "gateway on {} lets 127.0.0.22 in",
            g.port
        );
    }
}

/// Phase 3: operator routes end at nginx.
async fn refuses_operator_routes(d: &mut Deployment) {
    let nginx = d.nginx.as_ref().unwrap().http;
    let local = Ipv4Addr::LOCALHOST;
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/metrics/"),
        ("GET", "/metrics?format=text"),
        ("GET", "//metrics"),
        ("GET", "/%6detrics"),
        ("GET", "/web/../metrics"),
        ("GET", "/admin"),
        ("GET", "/admin/faults"),
        ("POST", "/admin/faults"),
        ("POST", "//admin/faults"),
        ("POST", "/%61dmin/faults"),
    ] {
        let body = if method == "POST" {
            r#"{"faults":"panic=1"}"#
        } else {
            ""
        };
        let resp = http_from(local, nginx, method, path, &[], body).await;
        assert_eq!(resp.status, 404, "{method} {path} through nginx: {resp:?}");
        // nginx's own page, not a gateway's answer.
        assert!(
            resp.body.contains("<center>nginx</center>"),
            "{method} {path} answered by a gateway: {resp:?}"
        );
    }
    // The proxy itself works, and each gateway's own listener still serves
    // /metrics for internal scraping.
    assert_eq!(
        http_from(local, nginx, "GET", "/healthz", &[], "")
            .await
            .status,
        200
    );
    for g in &d.gateways {
        assert!(
            gateway_metric(g, "holistream_sessions_active").await >= 0.0,
            "/metrics on the gateway's own port"
        );
    }
}

/// Phase 4: the same deployment behind nginx with a certificate, the
/// gateways told the cookie is `Secure`.
async fn streams_over_tls(client: &Client, d: &mut Deployment) {
    // A fresh nginx, and gateways restarted with the Secure cookie (as
    // compose's HOLISTREAM_SECURE_COOKIE=true does).
    if let Some(mut old) = d.nginx.take() {
        old.proc.kill();
    }
    for (i, name) in ["gateway1", "gateway2"].into_iter().enumerate() {
        d.gateways[i].proc.kill();
        let port = d.gateways[i].port;
        d.gateways[i] = start_gateway(&d.redis, name, Some(port), true, d.dir.path()).await;
    }
    let root = d.dir.path().join("nginx-tls");
    let nginx = start_nginx(&root, [&d.gateways[0], &d.gateways[1]], true).await;
    let (http, https) = (nginx.http, nginx.https);
    d.nginx = Some(nginx);

    // Plain HTTP is redirected to the HTTPS port, path and query kept.
    let resp = http_from(
        Ipv4Addr::LOCALHOST,
        http,
        "GET",
        "/stream.html?x=1",
        &[],
        "",
    )
    .await;
    assert_eq!(resp.status, 301, "{resp:?}");
    assert_eq!(
        resp.header("location"),
        Some(format!("https://127.0.0.1:{}/stream.html?x=1", https.port()).as_str()),
        "{resp:?}"
    );

    // TLS 1.2 and 1.3 only. The client allows the old versions too
    // (`@SECLEVEL=0`), so a refusal is the server's.
    for (version, accepted) in [
        ("-tls1", false),
        ("-tls1_1", false),
        ("-tls1_2", true),
        ("-tls1_3", true),
    ] {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &https.to_string(), version])
            .args(["-cipher", "DEFAULT@SECLEVEL=0"])
            .stdin(Stdio::null())
            .output()
            .expect("running openssl s_client");
        assert_eq!(
            out.status.success(),
            accepted,
            "a {version} handshake: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The browser forgets the plain-HTTP session (cookies are not per port),
    // follows the redirect, logs in over HTTPS and streams.
    client.delete_all_cookies().await.unwrap();
    client.goto(&format!("http://{http}/")).await.unwrap();
    let url = client.current_url().await.unwrap();
    assert_eq!(
        (url.scheme(), url.port()),
        ("https", Some(https.port())),
        "the browser was sent to HTTPS: {url}"
    );
    let base = format!("https://{https}");
    support::browser::login_through_page(client, &base, PASSWORD).await;
    let state = results_after(client, 0, 5, "results over TLS").await;
    assert_eq!(state["camera"], "live", "{state}");
    screenshot(client, "nginx_tls.png").await;

    let cookie = session_cookie(client).await;
    assert_eq!(
        cookie.secure(),
        Some(true),
        "the cookie is Secure: {cookie}"
    );
    assert_eq!(cookie.http_only(), Some(true), "{cookie}");

    // HSTS on what the gateways answer and on nginx's own refusals.
    let headers = client
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               Promise.all(['/', '/metrics'].map((p) => fetch(p, { cache: 'no-store' })
                 .then((r) => ({ path: p, status: r.status,
                                 hsts: r.headers.get('strict-transport-security') }))))
                 .then(done, (e) => done(String(e)));"#,
            vec![],
        )
        .await
        .expect("fetching from the page");
    let headers = headers
        .as_array()
        .unwrap_or_else(|| panic!("fetch failed: {headers}"));
    for h in headers {
        let hsts = h["hsts"].as_str().unwrap_or_default();
        assert!(hsts.contains("max-age=63072000"), "HSTS on {h}");
        // One header: the gateways' own, if any, is not passed on twice.
        assert!(!hsts.contains(','), "one HSTS value on {h}");
    }
    assert_eq!(headers[0]["status"], 200);
    assert_eq!(headers[1]["status"], 404);
}
