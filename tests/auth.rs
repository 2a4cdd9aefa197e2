//! Auth, lifecycle and observability of the real server (in memory session
//! store): login / status / logout, the wrong-code rate limit, WebSocket
//! admission, session expiry, `/metrics`, `/healthz`, `/readyz`, graceful
//! shutdown.

mod support;

use std::time::Duration;

use actix_web::http::StatusCode;
use support::http::*;
use support::poll::{eventually, eventually_some};
use support::server::*;
use support::ws::*;

const CODE: &str = "correct horse battery staple";

#[actix_web::test]
async fn login_status_logout() {
    let server = TestServer::start(test_config(CODE)).await;
    let client = http_client();

    // Wrong code: 401 with a JSON reason and no cookie.
    let mut resp = client
        .post(server.url("/auth/code"))
        .send_json(&serde_json::json!({ "code": "wrong" }))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.cookie(holistream::http::SESSION_COOKIE).is_none());
    assert_eq!(json_body(&mut resp).await["error"], "wrong code");

    // Right code: a session cookie with the required attributes.
    let mut resp = client
        .post(server.url("/auth/code"))
        .send_json(&serde_json::json!({ "code": CODE }))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let set_cookie = resp
        .headers()
        .get("set-cookie")
        .expect("Set-Cookie")
        .to_str()
        .unwrap()
        .to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set_cookie.contains(attr), "{attr} missing in {set_cookie}");
    }
    assert!(
        !set_cookie.contains("Secure"),
        "Secure only when configured: {set_cookie}"
    );
    assert_eq!(json_body(&mut resp).await["valid"], true);
    let cookie = resp
        .cookie(holistream::http::SESSION_COOKIE)
        .map(|c| format!("{}={}", c.name(), c.value()))
        .unwrap();

    // GET /auth/code: valid with the cookie, 401 without or with a forged one.
    let mut resp = client
        .get(server.url("/auth/code"))
        .insert_header(("Cookie", cookie.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        json_body(&mut resp).await,
        serde_json::json!({ "valid": true })
    );
    let mut resp = client.get(server.url("/auth/code")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(json_body(&mut resp).await["error"].is_string());
    let forged = format!(
        "{}={}",
        holistream::http::SESSION_COOKIE,
        uuid::Uuid::new_v4()
    );
    assert_eq!(
        session_status(&server, &forged).await,
        StatusCode::UNAUTHORIZED
    );
    let garbage = format!("{}=not-a-uuid", holistream::http::SESSION_COOKIE);
    assert_eq!(
        session_status(&server, &garbage).await,
        StatusCode::UNAUTHORIZED
    );

    // Logout revokes the session and clears the cookie.
    let resp = client
        .post(server.url("/auth/logout"))
        .insert_header(("Cookie", cookie.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cleared = resp.headers().get("set-cookie").unwrap().to_str().unwrap();
    assert!(
        cleared.starts_with("holistream_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(
        session_status(&server, &cookie).await,
        StatusCode::UNAUTHORIZED
    );

    // The login outcomes are counted.
    let metrics = metrics_text(&server).await;
    assert!(
        metrics.contains("holistream_logins_total{outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("holistream_logins_total{outcome=\"wrong_password\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("holistream_logouts_total 1"), "{metrics}");
}

#[actix_web::test]
async fn malformed_login_bodies_get_400_json() {
    let server = TestServer::start(test_config(CODE)).await;
    let client = http_client();
    let bodies: [&[u8]; 3] = [b"{not json", b"{\"password\":\"x\"}", b"[]"];
    for body in bodies {
        let mut resp = client
            .post(server.url("/auth/code"))
            .content_type("application/json")
            .send_body(body.to_vec())
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(body)
        );
        let err = json_body(&mut resp).await;
        assert!(
            err["error"].as_str().unwrap().starts_with("bad request"),
            "{err}"
        );
    }
    // Oversized bodies are refused before they are read whole.
    let huge = serde_json::json!({ "code": "x".repeat(64 * 1024) });
    let resp = client
        .post(server.url("/auth/code"))
        .send_json(&huge)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[actix_web::test]
async fn wrong_codes_are_rate_limited_per_address() {
    let mut config = test_config(CODE);
    config.auth.max_failures = 3;
    config.auth.failure_window_s = 60;
    let server = TestServer::start(config).await;

    for attempt in 1..=3 {
        let (status, _) = try_login(&server, "guess").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    // Locked out: even the right code gets 429 with Retry-After.
    for code in ["guess", CODE] {
        let mut resp = http_client()
            .post(server.url("/auth/code"))
            .send_json(&serde_json::json!({ "code": code }))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = resp
            .headers()
            .get("retry-after")
            .expect("Retry-After")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
        assert!(
            json_body(&mut resp).await["error"]
                .as_str()
                .unwrap()
                .contains("retry in")
        );
    }
    let metrics = metrics_text(&server).await;
    assert!(
        metrics.contains("holistream_logins_total{outcome=\"rate_limited\"} 2"),
        "{metrics}"
    );
}

#[actix_web::test]
async fn rate_limit_window_ends() {
    let mut config = test_config(CODE);
    config.auth.max_failures = 1;
    config.auth.failure_window_s = 1;
    let server = TestServer::start(config).await;
    assert_eq!(
        try_login(&server, "guess").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        try_login(&server, CODE).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Poll until the 1 s window has passed; the code then gets through.
    let last = eventually_some(
        Duration::from_secs(5),
        "the rate-limit window to end",
        || async {
            let status = try_login(&server, CODE).await.0;
            (status != StatusCode::TOO_MANY_REQUESTS).then_some(status)
        },
    )
    .await;
    assert_eq!(last, StatusCode::OK);
}

#[actix_web::test]
async fn websocket_admission() {
    let server = TestServer::start(test_config(CODE)).await;
    let cookie = login(&server, CODE).await;

    // No cookie, or a cookie of no session: 401.
    assert_eq!(
        ws_connect(&server, None, None).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    let forged = format!(
        "{}={}",
        holistream::http::SESSION_COOKIE,
        uuid::Uuid::new_v4()
    );
    assert_eq!(
        ws_connect(&server, Some(&forged), None).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    // A page of another origin, even with a valid cookie: 403.
    assert_eq!(
        ws_connect(&server, Some(&cookie), Some("http://evil.example"))
            .await
            .err(),
        Some(StatusCode::FORBIDDEN)
    );
    assert_eq!(
        ws_connect(&server, Some(&cookie), Some("http://127.0.0.1:1"))
            .await
            .err(),
        Some(StatusCode::FORBIDDEN)
    );
    // The server's own page, and a non-browser client, get in.
    let own = server.origin();
    if let Err(status) = ws_connect(&server, Some(&cookie), Some(&own)).await {
        panic!("same-origin upgrade refused: {status}");
    }
    if let Err(status) = ws_connect(&server, Some(&cookie), None).await {
        panic!("upgrade without Origin refused: {status}");
    }
}

#[actix_web::test]
async fn sessions_expire() {
    let mut config = test_config(CODE);
    config.auth.session_ttl_s = 1;
    config.auth.sweep_interval_ms = 100;
    let server = TestServer::start(config).await;
    let cookie = login(&server, CODE).await;
    let started = std::time::Instant::now();
    assert_eq!(session_status(&server, &cookie).await, StatusCode::OK);
    eventually(Duration::from_secs(5), "the session to expire", || {
        let (server, cookie) = (&server, &cookie);
        async move { session_status(server, cookie).await == StatusCode::UNAUTHORIZED }
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "expired early: {:?}",
        started.elapsed()
    );
    assert_eq!(
        ws_connect(&server, Some(&cookie), None).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
}

#[actix_web::test]
async fn health_readiness_metrics_and_web_demo() {
    let server = TestServer::start(test_config(CODE)).await;
    let client = http_client();

    let mut resp = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_body(&mut resp).await["status"], "ok");

    let mut resp = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_body(&mut resp).await["ready"], true);

    let mut resp = client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(resp.body().await.unwrap().to_vec()).unwrap();
    for series in [
        "holistream_sessions_active 0",
        "holistream_frames_total{outcome=\"received\"}",
        "holistream_drops_total{reason=\"stale\"}",
        "holistream_queue_depth",
        "holistream_inference_seconds_bucket",
        "holistream_worker_restarts_total{reason=\"panic\"}",
    ] {
        assert!(
            text.contains(series),
            "{series} missing in /metrics:\n{text}"
        );
    }

    // The web demo is served at / when the folder has a page.
    if std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("web/index.html")
        .exists()
    {
        let resp = client.get(server.url("/")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}

#[actix_web::test]
async fn graceful_shutdown_is_bounded_and_closes_sessions() {
    let mut config = test_config(CODE);
    config.server.shutdown_timeout_ms = 4_000;
    let mut server = TestServer::start(config).await;
    let cookie = login(&server, CODE).await;
    let mut conn = ws_connect(&server, Some(&cookie), None)
        .await
        .expect("WebSocket upgrade");

    // Stop from another thread: `stop` blocks until `run` returns.
    let stopper = std::thread::spawn(move || {
        let outcome = server.stop(Duration::from_secs(8));
        (outcome.0.map_err(|e| e.to_string()), outcome.1)
    });

    // The open WebSocket is closed by the server (close frame or EOF), not
    // left hanging; messages before the close (hello, stats) are fine.
    let mut closed = false;
    for _ in 0..100 {
        if next_text(&mut conn, Duration::from_secs(8)).await.is_none() {
            closed = true;
            break;
        }
    }
    assert!(closed, "the WebSocket was not closed at shutdown");

    let (outcome, took) = actix_web::rt::task::spawn_blocking(move || stopper.join().unwrap())
        .await
        .unwrap();
    assert!(outcome.is_ok(), "run returned an error: {outcome:?}");
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
}
