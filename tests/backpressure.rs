//! Backpressure: a client sending 60 fps to a pool that manages about 10.
//!
//! Latest-wins means a frame waits for at most one frame in the pool, so the
//! latency of what comes back must not grow with time: the p99 of the last
//! 10 s stays within 1.5x of the first 10 s or within what latest-wins allows
//! for the measured service time, and what is not processed is counted as
//! dropped. `HOLISTREAM_BACKPRESSURE_SECS` sets the duration (default 30 s,
//! as in the issue; at least 20).
//!
//! The tests of this file load the same cores (one pool each, saturated on
//! purpose), so they take [`MACHINE`] in turn: a latency measured while the
//! sibling test overloads its own pool would say nothing about this one.

mod support;

use std::time::{Duration, Instant};

use holistream::stats::percentile;
use support::fixtures::*;
use support::http::*;
use support::server::{TestServer, test_config};
use support::ws::*;

const PASSWORD: &str = "backpressure-test-code";

/// Held for the whole of each test: they run one at a time (the harness
/// runs a binary's tests on parallel threads). A tokio mutex, as the guard
/// is held across awaits and each test has its own runtime.
static MACHINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[actix_web::test]
async fn latency_stays_flat_at_60_fps_into_a_10_fps_pool_and_drops_are_counted() {
    let _machine = MACHINE.lock().await;
    let mut c = test_config(PASSWORD);
    c.pool.workers = 1;
    c.session.max_fps = 60;
    let server = TestServer::start(c).await;
    let cookie = login(&server, PASSWORD).await;
    let mut conn = open_session(&server, &cookie).await;
    let jpeg = jpeg_640x480("obama.jpg");

    // Measure what one frame costs here, then slow the pool down to about
    // 10 frames/s with the fault injector (the model is faster or slower
    // depending on the machine; the test needs a pool slower than the
    // client, by a known factor).
    let mut service = Vec::new();
    for seq in 0..5 {
        // Paced at the session's cap: a fast machine answers a frame in less
        // than 1/60 s, and a frame sent sooner would be dropped by the cap
        // (counted, not answered).
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        let sent = Instant::now();
        send(&mut conn, frame(seq, 0.0, &jpeg)).await;
        let r = next_answer(&mut conn, Duration::from_secs(30)).await;
        assert_eq!(r["type"], "result", "{r}");
        service.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    let per_frame_ms = percentile(&mut service, 0.5);
    let pad_ms = (100.0 - per_frame_ms).max(0.0).round() as u64;
    if pad_ms > 0 {
        set_faults(&server, &format!("slow=1.0:{pad_ms}ms")).await;
    }

    send(
        &mut conn,
        awc::ws::Message::Text(r#"{"type":"config","fps":60}"#.into()),
    )
    .await;
    let secs = env_secs("HOLISTREAM_BACKPRESSURE_SECS", 30).max(20);
    let epoch = Instant::now();
    let until = epoch + Duration::from_secs(secs);
    let mut tick = actix_web::rt::time::interval(Duration::from_micros(16_667));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // (arrival time s, latency ms) of every result
    let mut results: Vec<(f64, f64)> = Vec::new();
    let mut last_stats = serde_json::Value::Null;
    let mut seq = 1000u32;
    let (mut sent, mut errors) = (0u64, 0u64);
    use futures_util::StreamExt;
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {
                let capture_ts = epoch.elapsed().as_secs_f64() * 1e3;
                send(&mut conn, frame(seq, capture_ts, &jpeg)).await;
                seq += 1;
                sent += 1;
            }
            item = conn.next() => {
                let Some(Ok(awc::ws::Frame::Text(t))) = item else {
                    match item {
                        // Unanswered pings would get this client closed as not reading.
                        Some(Ok(awc::ws::Frame::Ping(p))) => {
                            send(&mut conn, awc::ws::Message::Pong(p)).await;
                            continue;
                        }
                        Some(Ok(_)) => continue,
                        other => panic!("connection ended: {other:?}"),
                    }
                };
                let v: serde_json::Value = serde_json::from_slice(&t).unwrap();
                match v["type"].as_str() {
                    Some("result") => {
                        let at = epoch.elapsed().as_secs_f64();
                        results.push((at, at * 1e3 - v["capture_ts"].as_f64().unwrap()));
                    }
                    Some("stats") => last_stats = v,
                    Some("error") => errors += 1,
                    _ => panic!("unexpected {v}"),
                }
            }
        }
    }

    let window = |from: f64, to: f64| -> Vec<f64> {
        results
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, l)| *l)
            .collect()
    };
    let total = secs as f64;
    let mut first = window(0.0, 10.0);
    let mut last = window(total - 10.0, total);
    assert!(
        first.len() >= 20 && last.len() >= 20,
        "too few results: {} then {}",
        first.len(),
        last.len()
    );
    let (p99_first, p99_last) = (percentile(&mut first, 0.99), percentile(&mut last, 0.99));
    // What latest-wins allows: a result waited for at most the frame in the
    // pool and then took its own service time (the slowed one, ~100 ms, or
    // the measured one where that is slower), so about two service times;
    // twice that for a shared machine. A queue that grows at 60 fps into a
    // 10 fps pool would be seconds behind after 30 s, far past either bound.
    let service_ms = per_frame_ms.max(100.0);
    let latest_wins_ms = 4.0 * service_ms;
    eprintln!(
        "service {per_frame_ms:.1} ms (slowed to ~{service_ms:.0}); p99 {p99_first:.1} ms in \
         the first 10 s, {p99_last:.1} ms in the last ({} and {} results)",
        first.len(),
        last.len()
    );
    assert!(
        p99_last <= (1.5 * p99_first).max(latest_wins_ms),
        "latency grew: p99 {p99_first:.1} ms in the first 10 s, {p99_last:.1} ms in the last \
         10 s, beyond the {latest_wins_ms:.0} ms latest-wins allows for a {service_ms:.0} ms service"
    );
    assert_eq!(errors, 0, "no frame should fail here");

    // Most frames were dropped, and every drop is counted: by the session
    // (stats) and in /metrics.
    let stale = last_stats["dropped_stale"].as_u64().unwrap();
    let processed = last_stats["processed"].as_u64().unwrap();
    assert!(
        stale > processed,
        "60 fps into ~10: stale {stale}, processed {processed}"
    );
    let received = last_stats["received"].as_u64().unwrap();
    let accounted = processed
        + stale
        + last_stats["dropped_fps"].as_u64().unwrap()
        + last_stats["dropped_overload"].as_u64().unwrap()
        + last_stats["dropped_expired"].as_u64().unwrap()
        + last_stats["errors"].as_u64().unwrap();
    // The stats message is up to one interval old, and up to two frames are
    // in flight (one in the pool, one waiting).
    assert!(
        received <= sent + 5 && accounted + 2 >= received,
        "stats {last_stats} after {sent} sent"
    );
    let m = metrics_text(&server).await;
    assert!(
        metric(&m, r#"holistream_drops_total{reason="stale"}"#) >= stale as f64,
        "{m}"
    );
}

/// Overload shared fairly: more clients than the pool can serve, each at
/// 20 fps, with the short default job TTL. The pool goes round the starved
/// sessions first, so every client keeps getting results (with plain FIFO
/// and a TTL of one frame interval some clients got none for seconds).
#[actix_web::test]
async fn an_overloaded_pool_serves_every_client() {
    let _machine = MACHINE.lock().await;
    let mut c = test_config(PASSWORD);
    c.pool.workers = 1;
    let ttl_ms = c.pool.job_ttl_ms;
    let server = TestServer::start(c).await;
    let cookie = login(&server, PASSWORD).await;
    let jpeg = jpeg_640x480("obama.jpg");
    let clients = 6;
    let secs = 8;

    let mut streams = Vec::new();
    for _ in 0..clients {
        let stream = StreamingClient::open_at(
            &server.base(),
            &cookie,
            jpeg.clone(),
            Duration::from_millis(50),
        )
        .await
        .expect("WebSocket refused");
        streams.push(stream);
    }
    // The load runs for `secs`: a duration, not a wait for something.
    actix_web::rt::time::sleep(Duration::from_secs(secs)).await;
    let mut counts = Vec::new();
    for (client, stream) in streams.into_iter().enumerate() {
        let closed = stream.closed();
        let seen = stream.finish().await;
        assert_eq!(closed, None, "client {client}: connection ended: {seen:?}");
        let (mut results, mut expired) = (0u32, 0u32);
        for s in seen {
            match s {
                Seen::Result { .. } => results += 1,
                Seen::Error { code, .. } if code == "expired" || code == "overloaded" => {
                    expired += 1
                }
                Seen::Error { code, seq, .. } => panic!("client {client}: error {code} ({seq:?})"),
                Seen::Closed { .. } => {}
            }
        }
        counts.push((results, expired));
    }
    let results: Vec<u32> = counts.iter().map(|c| c.0).collect();
    let total: u32 = results.iter().sum();
    let dropped: u32 = counts.iter().map(|c| c.1).sum();
    eprintln!(
        "{clients} clients, 1 worker, TTL {ttl_ms} ms, {secs} s: results per client {results:?}, {dropped} frames shed"
    );
    // The pool really was overloaded (frames were shed), and every client
    // got a fair share of what it could do: at least a third of the mean.
    assert!(dropped > 0, "the pool was not overloaded: {counts:?}");
    let mean = f64::from(total) / f64::from(clients);
    let min = *results.iter().min().unwrap();
    assert!(
        min >= 1 && f64::from(min) >= mean / 3.0,
        "unfair share: results per client {results:?} (mean {mean:.1})"
    );
}
