//! The session store mirrored in a real `redis-server`: two server instances
//! sharing sessions, logout honoured across instances, and a Redis outage
//! (fail closed for what cannot be verified, verified sessions and open
//! streams go on, recovery when Redis returns).
//!
//! "Within a second" is a property of the configuration (an instance
//! re-checks a cached session every `redis.recheck_ms`, which `validate`
//! keeps at or under 1 s; the config tests check that), not something a test
//! on a shared machine can time: these tests poll for outcomes with generous
//! deadlines ([`OUTCOME`]) and print how long they took.

mod support;

use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use futures_util::SinkExt;
use holistream::actors::protocol::FrameHeader;
use holistream::http::store::{SessionStatus, SessionStore, StoreError, StoreSettings};
use holistream::metrics::Metrics;
use support::fixtures::test_jpeg;
use support::http::*;
use support::poll::eventually;
use support::redis_server::RedisServer;
use support::server::*;
use support::ws::*;

const CODE: &str = "mirror-code";

/// How long a test waits for an outcome that takes one re-check interval
/// (at most 1 s) on an idle machine: far more, so a loaded CI machine does
/// not fail it, while a logout that is never honoured still does.
const OUTCOME: Duration = Duration::from_secs(15);

fn mirrored_config(redis: &RedisServer) -> holistream::config::Config {
    let mut c = test_config(CODE);
    c.redis.url = Some(redis.url());
    c
}

#[actix_web::test]
async fn two_instances_share_sessions_and_logouts() {
    let redis = RedisServer::spawn();
    let a = TestServer::start(mirrored_config(&redis)).await;
    let b = TestServer::start(mirrored_config(&redis)).await;

    let cookie = login(&a, CODE).await;
    // B never saw this login: it finds the session in Redis.
    assert_eq!(session_status(&b, &cookie).await, StatusCode::OK);
    if let Err(status) = ws_connect(&b, Some(&cookie), None).await {
        panic!("B refused A's session for the WebSocket: {status}");
    }

    // Logout on A: B refuses (it had the session cached) after its re-check.
    let resp = http_client()
        .post(a.url("/auth/logout"))
        .insert_header(("Cookie", cookie.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let revoked = Instant::now();
    eventually(OUTCOME, "B to refuse a session logged out on A", || {
        let (b, cookie) = (&b, &cookie);
        async move { session_status(b, cookie).await == StatusCode::UNAUTHORIZED }
    })
    .await;
    eprintln!("logout on A honoured by B after {:?}", revoked.elapsed());
    assert_eq!(
        ws_connect(&b, Some(&cookie), None).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );

    // And the other way round.
    let cookie = login(&b, CODE).await;
    assert_eq!(session_status(&a, &cookie).await, StatusCode::OK);
}

#[actix_web::test]
async fn redis_outage_fails_closed_and_recovers() {
    let mut redis = RedisServer::spawn();
    let server = TestServer::start(mirrored_config(&redis)).await;
    let client = http_client();

    let cookie = login(&server, CODE).await;
    assert_eq!(session_status(&server, &cookie).await, StatusCode::OK);
    let mut conn = ws_connect(&server, Some(&cookie), None)
        .await
        .expect("WebSocket upgrade");

    redis.stop();

    // A new login cannot be written: 503 with a clear JSON message.
    let mut resp = client
        .post(server.url("/auth/code"))
        .send_json(&serde_json::json!({ "code": CODE }))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.cookie(holistream::http::SESSION_COOKIE).is_none());
    let body = json_body(&mut resp).await;
    assert_eq!(
        body["error"],
        "session store unavailable, try again shortly"
    );

    // A session this instance never verified cannot be told: 503, not 200.
    let unknown = format!(
        "{}={}",
        holistream::http::SESSION_COOKIE,
        uuid::Uuid::new_v4()
    );
    assert_eq!(
        session_status(&server, &unknown).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        ws_connect(&server, Some(&unknown), None).await.err(),
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
    // The verified session goes on, past the re-check interval (at most
    // 1 s; twice that, so a re-check surely happened during the outage).
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_millis(2_000) {
        assert_eq!(session_status(&server, &cookie).await, StatusCode::OK);
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    // Not ready while Redis is away.
    assert_eq!(readyz(&server).await, StatusCode::SERVICE_UNAVAILABLE);
    // The open stream still gets results.
    let frame = FrameHeader {
        seq: 1,
        capture_ts: 0.0,
    }
    .encode(&test_jpeg());
    conn.send(awc::ws::Message::Binary(frame.into()))
        .await
        .unwrap();
    let mut got_result = false;
    for _ in 0..50 {
        let msg = next_text(&mut conn, Duration::from_secs(30))
            .await
            .expect("the stream was closed during the Redis outage");
        let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
        if v["type"] == "result" {
            assert_eq!(v["seq"], 1);
            got_result = true;
            break;
        }
        assert_ne!(v["type"], "error", "frame failed during the outage: {msg}");
    }
    assert!(got_result, "no result during the Redis outage");

    // Redis back (empty): logins work again by themselves.
    redis.restart();
    eventually(
        Duration::from_secs(10),
        "logins to work after Redis returned",
        || {
            let server = &server;
            async move { try_login(server, CODE).await.0 == StatusCode::OK }
        },
    )
    .await;
    let fresh = login(&server, CODE).await;
    assert_eq!(session_status(&server, &fresh).await, StatusCode::OK);
    eventually(
        Duration::from_secs(5),
        "readiness after Redis returned",
        || {
            let (client, url) = (&client, server.url("/readyz"));
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK)
            }
        },
    )
    .await;
}

#[actix_web::test]
async fn start_with_redis_down_then_recover() {
    let mut redis = RedisServer::spawn();
    redis.stop();
    let server = TestServer::start(mirrored_config(&redis)).await;
    assert_eq!(
        try_login(&server, CODE).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(readyz(&server).await, StatusCode::SERVICE_UNAVAILABLE);
    redis.restart();
    eventually(Duration::from_secs(10), "logins once Redis is up", || {
        let server = &server;
        async move { try_login(server, CODE).await.0 == StatusCode::OK }
    })
    .await;
}

fn store_settings(redis: &RedisServer) -> StoreSettings {
    StoreSettings {
        ttl: Duration::from_secs(60),
        redis_url: Some(redis.url()),
        redis_timeout: Duration::from_millis(250),
        recheck: Duration::from_millis(300),
        key_prefix: "holistream".into(),
    }
}

/// The store on its own: what live WebSocket sessions use to notice a logout
/// made on another instance.
#[actix_web::test]
async fn store_watch_ends_on_remote_revocation_and_not_on_outage() {
    let mut redis = RedisServer::spawn();
    let a = SessionStore::new(store_settings(&redis), Metrics::new()).unwrap();
    let b = SessionStore::new(store_settings(&redis), Metrics::new()).unwrap();

    let s = a.create().await.unwrap();
    assert_eq!(b.verify(s.id).await.unwrap(), SessionStatus::Valid);
    // The key carries the TTL in Redis.
    let ttl_left = redis_pttl(&redis, &format!("holistream:session:{}", s.id));
    assert!(ttl_left > 55_000 && ttl_left <= 60_000, "PTTL {ttl_left}");

    let watch = b.clone();
    let watcher = actix_web::rt::spawn(async move { watch.wait_until_invalid(s.id).await });
    a.revoke(s.id).await.unwrap();
    let revoked = Instant::now();
    actix_web::rt::time::timeout(OUTCOME, watcher)
        .await
        .expect("revocation on A never seen on B")
        .unwrap();
    eprintln!(
        "revocation on A seen by B's watch after {:?}",
        revoked.elapsed()
    );

    // During an outage the watch does not fire for a verified session.
    let s2 = a.create().await.unwrap();
    assert_eq!(b.verify(s2.id).await.unwrap(), SessionStatus::Valid);
    redis.stop();
    let watch = b.clone();
    // Five re-check intervals (300 ms here) without an answer from Redis.
    let outcome = actix_web::rt::time::timeout(
        Duration::from_millis(1_500),
        watch.wait_until_invalid(s2.id),
    )
    .await;
    assert!(outcome.is_err(), "an outage ended a verified session");
    assert_eq!(b.verify(s2.id).await.unwrap(), SessionStatus::Valid);
    assert!(matches!(a.create().await, Err(StoreError::Unavailable(_))));
    // Calls stay bounded by the timeout (250 ms) while Redis is away: a
    // session B never verified cannot be told, and says so instead of
    // hanging (the bound only catches a hang, not a slow machine).
    let t = Instant::now();
    let unknown = actix_web::rt::time::timeout(OUTCOME, b.verify(uuid::Uuid::new_v4()))
        .await
        .unwrap_or_else(|_| panic!("a dead Redis hung a call for {OUTCOME:?}"));
    assert!(
        matches!(unknown, Err(StoreError::Unavailable(_))),
        "{unknown:?}"
    );
    eprintln!("verify with Redis down answered after {:?}", t.elapsed());
}

/// PTTL through a raw RESP exchange, independent of the code under test.
fn redis_pttl(redis: &RedisServer, key: &str) -> i64 {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
    write!(s, "*2\r\n$4\r\nPTTL\r\n${}\r\n{}\r\n", key.len(), key).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.trim().trim_start_matches(':').parse().unwrap()
}
