//! The trust boundary of the real server, one regression test per finding of
//! the open-internet review: admin routes off by default and behind their own
//! token, injected stalls capped, the client address behind trusted proxies
//! only, the wrong-code budget shared through Redis, the session token kept
//! in its cookie, security headers, and the per-session WebSocket cap.

mod support;

use std::time::Duration;

use actix_web::http::StatusCode;
use support::http::*;
use support::poll::eventually;
use support::redis_server::RedisServer;
use support::server::*;
use support::ws::*;

const CODE: &str = "trust-boundary-entry-code";

async fn post_faults(server: &TestServer, auth: Option<(&str, &str)>, plan: &str) -> StatusCode {
    let mut req = http_client().post(server.url("/admin/faults"));
    if let Some(header) = auth {
        req = req.insert_header(header);
    }
    req.send_json(&serde_json::json!({ "faults": plan }))
        .await
        .expect("POST /admin/faults")
        .status()
}

/// A server built from `Config::default()`'s admin section has no admin
/// routes at all: 404, with or without a login, for any method or subpath.
#[actix_web::test]
async fn admin_routes_are_404_unless_enabled() {
    let mut c = test_config(CODE);
    c.admin = holistream::config::AdminConfig::default();
    assert!(!c.admin.enabled, "admin must be off by default");
    let server = TestServer::start(c).await;
    let cookie = login(&server, CODE).await;
    assert_eq!(
        post_faults(&server, Some(("Cookie", cookie.as_str())), "panic=1").await,
        StatusCode::NOT_FOUND
    );
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    assert_eq!(
        post_faults(&server, Some(("Authorization", bearer.as_str())), "panic=1").await,
        StatusCode::NOT_FOUND
    );
    for path in ["/admin", "/admin/", "/admin/anything/else"] {
        let status = http_client()
            .get(server.url(path))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
}

/// Enabled, the admin route wants its own token: a login cookie (which anyone
/// given the demo has) or a wrong token is 401; an injected stall longer
/// than the stall deadline is refused with a reason.
#[actix_web::test]
async fn admin_needs_its_token_and_stalls_are_capped() {
    let mut c = test_config(CODE);
    c.pool.stall_deadline_ms = 1_500;
    let server = TestServer::start(c).await;
    let cookie = login(&server, CODE).await;
    assert_eq!(
        post_faults(&server, None, "panic=1").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post_faults(&server, Some(("Cookie", cookie.as_str())), "panic=1").await,
        StatusCode::UNAUTHORIZED
    );
    let wrong = format!("Bearer {}x", ADMIN_TOKEN);
    assert_eq!(
        post_faults(&server, Some(("Authorization", wrong.as_str())), "panic=1").await,
        StatusCode::UNAUTHORIZED
    );
    let entry_code = format!("Bearer {CODE}");
    assert_eq!(
        post_faults(
            &server,
            Some(("Authorization", entry_code.as_str())),
            "panic=1"
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "the entry code is not the admin token"
    );
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let mut resp = http_client()
        .post(server.url("/admin/faults"))
        .insert_header(("Authorization", bearer.as_str()))
        .send_json(&serde_json::json!({ "faults": "stall=1:3600s" }))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let why = json_body(&mut resp).await["error"].to_string();
    assert!(why.contains("stall_deadline_ms"), "{why}");
    assert_eq!(
        post_faults(
            &server,
            Some(("Authorization", bearer.as_str())),
            "stall=0.5:1500ms"
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        post_faults(&server, Some(("Authorization", bearer.as_str())), "none").await,
        StatusCode::OK
    );
}

/// The same cap holds for a plan given at start-up, and an enabled admin
/// without a (long enough) token is a configuration error.
#[test]
fn config_refuses_long_stalls_and_tokenless_admin() {
    let mut c = holistream::config::Config::default();
    c.pool.faults = "stall=1:3600s".parse().unwrap();
    let msg = c.validate().unwrap_err().to_string();
    assert!(msg.contains("stall_deadline_ms"), "{msg}");

    let mut c = holistream::config::Config::default();
    c.admin.enabled = true;
    let msg = c.validate().unwrap_err().to_string();
    assert!(msg.contains("HOLISTREAM_ADMIN_TOKEN"), "{msg}");
    c.admin.token = Some("short".into());
    assert!(c.validate().is_err());
    c.admin.token = Some(ADMIN_TOKEN.into());
    c.validate().unwrap();
}

async fn login_from(server: &TestServer, code: &str, forwarded_for: Option<&str>) -> StatusCode {
    let mut req = http_client().post(server.url("/auth/code"));
    if let Some(xff) = forwarded_for {
        req = req.insert_header(("X-Forwarded-For", xff));
    }
    req.send_json(&serde_json::json!({ "code": code }))
        .await
        .expect("POST /auth/code")
        .status()
}

/// Behind a trusted proxy (here: the test itself on 127.0.0.1), the limiter
/// keys on the address the proxy saw, the rightmost hop: one client's wrong
/// codes do not lock out another, and what a client prepends itself is not
/// read.
#[actix_web::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_budget() {
    let mut c = test_config(CODE);
    c.auth.max_failures = 3;
    c.server.trusted_proxies = vec!["127.0.0.1/32".into()];
    let server = TestServer::start(c).await;
    for _ in 0..3 {
        assert_eq!(
            login_from(&server, "guess", Some("198.51.100.21")).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login_from(&server, CODE, Some("198.51.100.21")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The locked-out client claims to be someone else: its proxy appended
    // the address it really came from.
    assert_eq!(
        login_from(&server, CODE, Some("203.0.113.77, 198.51.100.21")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client behind the same proxy still gets in.
    assert_eq!(
        login_from(&server, CODE, Some("198.51.100.22")).await,
        StatusCode::OK
    );
    // IPv6 clients are keyed by their /64: a fresh address there is no
    // fresh budget.
    for i in 0..3 {
        let addr = format!("2001:db8:7:7::{:x}", i + 1);
        assert_eq!(
            login_from(&server, "guess", Some(&addr)).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login_from(&server, CODE, Some("2001:db8:7:7:ffff::9")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Without trusted proxies, forwarding headers are ignored: a client cannot
/// pick a fresh key per request.
#[actix_web::test]
async fn forwarding_headers_from_untrusted_peers_are_ignored() {
    let mut c = test_config(CODE);
    c.auth.max_failures = 2;
    let server = TestServer::start(c).await;
    for i in 0..2 {
        let xff = format!("198.51.100.{i}");
        assert_eq!(
            login_from(&server, "guess", Some(&xff)).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login_from(&server, CODE, Some("198.51.100.99")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Two gateways sharing one Redis share each client's wrong-code budget, so
/// round robin behind a proxy does not double it; a global ceiling on wrong
/// codes per minute raises the alert gauge.
#[actix_web::test]
async fn the_wrong_code_budget_is_shared_through_redis() {
    let redis = RedisServer::spawn();
    let config = || {
        let mut c = test_config(CODE);
        c.redis.url = Some(redis.url());
        c.auth.max_failures = 4;
        c.auth.global_failures_alert_per_min = 3;
        c
    };
    let a = TestServer::start(config()).await;
    let b = TestServer::start(config()).await;
    for server in [&a, &b, &a, &b] {
        assert_eq!(
            login_from(server, "guess", None).await,
            StatusCode::UNAUTHORIZED
        );
    }
    // a saw 2 failures, b saw 2: only the shared count reaches 4.
    assert_eq!(
        login_from(&a, CODE, None).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        login_from(&b, CODE, None).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let metrics = metrics_text(&b).await;
    assert!(
        metrics.contains("holistream_login_failures_alert 0"),
        "2 failures here are under the ceiling of 3: {metrics}"
    );
    let metrics = metrics_text(&a).await;
    assert!(
        metrics.contains("holistream_login_failures_alert 0"),
        "{metrics}"
    );

    // Four more failures on one gateway from a third server's view: the
    // per-server global count passes 3.
    let mut c = config();
    c.auth.max_failures = 100;
    c.redis.key_prefix = "other".into();
    let lone = TestServer::start(c).await;
    for _ in 0..4 {
        assert_eq!(
            login_from(&lone, "guess", None).await,
            StatusCode::UNAUTHORIZED
        );
    }
    let metrics = metrics_text(&lone).await;
    assert!(
        metrics.contains("holistream_login_failures_alert 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("holistream_login_failure_alerts_total 1"),
        "{metrics}"
    );
}

/// The session token is a bearer secret: the WebSocket `hello` carries a
/// tag that is not it (nor contains it).
#[actix_web::test]
async fn hello_does_not_carry_the_session_cookie() {
    let server = TestServer::start(test_config(CODE)).await;
    let cookie = login(&server, CODE).await;
    let token = cookie.split_once('=').unwrap().1.to_string();
    let mut conn = ws_connect(&server, Some(&cookie), Some(&server.origin()))
        .await
        .expect("upgrade");
    let hello = next_text(&mut conn, Duration::from_secs(10))
        .await
        .expect("hello");
    let msg: serde_json::Value = serde_json::from_str(&hello).unwrap();
    assert_eq!(msg["type"], "hello", "{hello}");
    let tag = msg["session"].as_str().expect("a session tag").to_string();
    assert_eq!(tag.len(), 12, "{hello}");
    let simple = token.replace('-', "");
    assert!(
        !hello.contains(&token) && !hello.contains(&simple),
        "hello leaks the cookie: {hello}"
    );
    assert!(!simple.contains(&tag));
}

/// Every response carries the security headers; HSTS only when the server is
/// told it sits behind HTTPS (`secure_cookie`), and then the cookie is
/// `Secure` too.
#[actix_web::test]
async fn security_headers_on_every_response() {
    let server = TestServer::start(test_config(CODE)).await;
    for path in [
        "/",
        "/stream.html",
        "/app.js",
        "/healthz",
        "/auth/code",
        "/nowhere",
    ] {
        let resp = http_client().get(server.url(path)).send().await.unwrap();
        let h = resp.headers();
        let get = |name: &str| {
            h.get(name)
                .unwrap_or_else(|| panic!("{name} missing on {path}"))
                .to_str()
                .unwrap()
                .to_string()
        };
        let csp = get("content-security-policy");
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ] {
            assert!(csp.contains(directive), "{directive} missing in {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(get("x-content-type-options"), "nosniff");
        assert_eq!(get("x-frame-options"), "DENY");
        assert_eq!(get("referrer-policy"), "no-referrer");
        assert!(h.get("strict-transport-security").is_none(), "{path}");
    }

    let mut c = test_config(CODE);
    c.server.secure_cookie = true;
    let secure = TestServer::start(c).await;
    let resp = http_client()
        .post(secure.url("/auth/code"))
        .send_json(&serde_json::json!({ "code": CODE }))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let hsts = resp
        .headers()
        .get("strict-transport-security")
        .expect("HSTS behind HTTPS")
        .to_str()
        .unwrap();
    assert!(hsts.starts_with("max-age="), "{hsts}");
    let set_cookie = resp.headers().get("set-cookie").unwrap().to_str().unwrap();
    assert!(set_cookie.contains("Secure"), "{set_cookie}");
}

/// The page loads no inline script, so the CSP above cannot break it.
#[test]
fn the_demo_has_no_inline_script_or_style() {
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    for entry in std::fs::read_dir(&web).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "html") {
            let html = std::fs::read_to_string(&path).unwrap();
            for tag in html.split("<script").skip(1) {
                let open = &tag[..tag.find('>').expect("closed tag")];
                assert!(open.contains("src="), "inline script in {path:?}");
            }
            assert!(!html.contains("<style"), "inline style in {path:?}");
            assert!(!html.contains(" style="), "style attribute in {path:?}");
            // ` onclick=`, ` onload=`, …: an attribute name `on` + letters.
            let handler = html.match_indices(" on").any(|(i, _)| {
                let rest = &html[i + 3..];
                let name_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
                name_len > 0 && rest[name_len..].starts_with('=')
            });
            assert!(!handler, "event handler attribute in {path:?}");
        }
    }
}

/// One cookie may hold at most `max_sockets_per_session` (2) WebSockets: a
/// third is refused with 429, others are not affected, and closing one
/// frees its place.
#[actix_web::test]
async fn one_cookie_cannot_open_a_third_websocket() {
    let mut c = test_config(CODE);
    c.server.max_sockets_per_session = holistream::config::Config::default()
        .server
        .max_sockets_per_session;
    assert_eq!(c.server.max_sockets_per_session, 2);
    let server = TestServer::start(c).await;
    let cookie = login(&server, CODE).await;
    let origin = server.origin();
    let first = ws_connect(&server, Some(&cookie), Some(&origin))
        .await
        .expect("first");
    let _second = ws_connect(&server, Some(&cookie), Some(&origin))
        .await
        .expect("second");
    assert_eq!(
        ws_connect(&server, Some(&cookie), Some(&origin))
            .await
            .err(),
        Some(StatusCode::TOO_MANY_REQUESTS)
    );
    let other = login(&server, CODE).await;
    let _third_of_another = ws_connect(&server, Some(&other), Some(&origin))
        .await
        .expect("another session is not affected");
    drop(first);
    eventually(
        Duration::from_secs(10),
        "a closed socket frees its place",
        || {
            let (server, cookie, origin) = (&server, &cookie, &origin);
            async move { ws_connect(server, Some(cookie), Some(origin)).await.is_ok() }
        },
    )
    .await;
}

/// Frames larger than `pool.max_frame_width` x `max_frame_height` are
/// answered `bad_frame`, and the worker lives on.
#[actix_web::test]
async fn frames_above_the_configured_size_are_bad_frames() {
    use support::fixtures::jpeg_640x480;
    let mut c = test_config(CODE);
    c.pool.max_frame_width = 320;
    c.pool.max_frame_height = 240;
    let server = TestServer::start(c).await;
    let cookie = login(&server, CODE).await;
    let mut conn = open_session(&server, &cookie).await;
    send(&mut conn, frame(1, 0.0, &jpeg_640x480("obama.jpg"))).await;
    let a = next_answer(&mut conn, Duration::from_secs(30)).await;
    assert_eq!(
        (a["type"].as_str(), a["code"].as_str(), a["seq"].as_u64()),
        (Some("error"), Some("bad_frame"), Some(1)),
        "{a}"
    );
    let m = metrics_text(&server).await;
    assert_eq!(
        metric(&m, r#"holistream_worker_restarts_total{reason="panic"}"#),
        0.0
    );
}
