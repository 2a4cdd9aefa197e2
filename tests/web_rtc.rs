//! The web demo over WebRTC (issue 14), in a real headless Chromium driven
//! over WebDriver, against the real server and models: the page's default
//! transport where the browser has `RTCPeerConnection`.
//!
//! - WebRTC by default: the camera goes up as a video track (WHIP `POST
//!   /whip`), results come back on the `holistream` data channel with MediaPipe's
//!   landmark counts and are drawn; the server decoded the track
//!   (`holistream_rtc_frames_decoded_total`) for one peer
//!   (`holistream_rtc_sessions_active`); the HUD shows the transport, an
//!   upstream bitrate that is a video encoder's (under 3 Mbit/s; the JPEG
//!   stream of the same clip, printed beside it, is 5-6 Mbit/s) and a
//!   latency taken from the encoder's own RTP timestamps (not an estimate).
//! - The control switches to the WebSocket (the WebRTC session is deleted:
//!   the gauge back to 0) and back; leaving the page deletes the session.
//! - With `rtc.enabled = false` the server answers `POST /whip` 404 and the
//!   page falls back to the WebSocket by itself.
//! - The page's `rtpclock.js` (which picture a result's RTP timestamp
//!   belongs to) on a synthetic jittery camera.
//!
//! Chromium on loopback: see the flags in [`support::browser::ChromeDriver::browser`].
//! Needs `chromium`, `chromedriver` (see tests/web_e2e.rs).

mod support;

use std::time::Duration;

use fantoccini::{Client, Locator};
use serde_json::{Value, json};
use support::browser::{
    ChromeDriver, PAGE_STATE, PAGE_TIMEOUT, artifacts_dir, build_clip, choose_transport,
    landmark_counts_ok, login_through_page, poll_js, results,
};
use support::http::{metric, metrics_text};
use support::poll::eventually_some;
use support::server::{TestServer, test_config};

const PASSWORD: &str = "web-rtc-entry-code-4b1d";
/// Generous: the first results wait for the model worker and the camera.
const FIRST_RESULT_TIMEOUT: Duration = Duration::from_secs(120);
/// A video encoder at 640x480 sends 0.3–2 Mbit/s; the JPEG stream of a
/// webcam at 20 fps ~10 (of this clip's letterboxed photos, 5-6).
const MAX_RTC_UPSTREAM_KBPS: f64 = 3000.0;
/// Results over a transport before its HUD figures are read: the rates are
/// over the last 2 s, so they have settled by then (at ~15 results/s).
const SETTLED_RESULTS: u64 = 40;

/// The HUD's transport, upstream bitrate and latency figures as shown.
const HUD: &str = r#"
    const t = (id) => document.getElementById(id).textContent;
    return {
        transport: t('hud-transport'),
        upstreamKbps: t('hud-upstream'),
        sentFps: t('hud-sent-fps'),
        resultFps: t('hud-result-fps'),
        p50: t('hud-p50'),
        p95: t('hud-p95'),
        latencyEstimate: !document.getElementById('hud-p50-note').hidden,
        received: t('hud-received'),
        droppedFps: t('hud-dropped-fps'),
        stats: window.holistream.stats,
    };
"#;

/// The page's RtpClock on a synthetic camera as regular as a real one (30 fps,
/// ±0.2 ms), a third of its pictures not kept (the `<video>` skips some),
/// every third frame left out by the encoder, encode delays from 5 to 40 ms
/// (more than a frame). Once lined up, every RTP timestamp maps to its
/// picture's capture time.
const RTP_CLOCK_CHECK: &str = r#"
    const done = arguments[arguments.length - 1];
    import('/rtpclock.js').then(({ RtpClock }) => {
        let seed = 7;
        const rand = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
        const offset = 123456789.0;
        const clock = new RtpClock();
        const pictures = [];
        let t = 1000, checked = 0, wrong = 0;
        for (let i = 0; i < 150; i++) {
            t += 33.3 + (rand() - 0.5) * 0.4;
            const captured = Math.round(t * 10) / 10;
            if (rand() < 0.67) pictures.push({ time: captured });
            if (pictures.length > 45) pictures.shift();
            if (i % 3 === 2) continue;
            const rtp = (Math.round(captured + offset) * 90) >>> 0;
            clock.add(rtp, captured + 5 + rand() * 35, pictures);
            if (clock.lined) {
                checked++;
                if (Math.abs(clock.captureTime(rtp) - captured) > 1.5) wrong++;
            }
        }
        done({ lined: clock.lined, checked, wrong });
    }).catch((e) => done(String(e)));
"#;

/// Number of overlay pixels that are not fully transparent.
const OVERLAY_DRAWN: &str = r#"
    const overlay = document.getElementById('overlay');
    const data = overlay.getContext('2d').getImageData(0, 0, overlay.width, overlay.height).data;
    let drawn = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) drawn++;
    return drawn;
"#;

fn number(v: &Value) -> f64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0.0)
}

/// Decoded frames of every codec.
fn frames_decoded(metrics: &str) -> f64 {
    ["h264", "vp8"]
        .iter()
        .map(|c| {
            metric(
                metrics,
                &format!("holistream_rtc_frames_decoded_total{{codec=\"{c}\"}}"),
            )
        })
        .sum()
}

/// The `holistream_rtc_*` series, for failure messages.
fn rtc_metrics(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.starts_with("holistream_rtc"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls `/metrics` until `holistream_rtc_sessions_active` is `want`.
async fn rtc_sessions_become(server: &TestServer, want: f64, what: &str) -> String {
    eventually_some(PAGE_TIMEOUT, what, || async {
        let m = metrics_text(server).await;
        (metric(&m, "holistream_rtc_sessions_active") == want).then_some(m)
    })
    .await
}

/// Waits for `count` results more than `after` over `transport`, the last
/// with MediaPipe's landmark counts; returns the page's state.
async fn results_over(client: &Client, transport: &str, after: u64, count: u64) -> Value {
    poll_js(
        client,
        FIRST_RESULT_TIMEOUT,
        &format!("{count} results over {transport}"),
        PAGE_STATE,
        |s| {
            s["transport"] == transport
                && s["connection"] == "open"
                && results(s) >= after + count
                && landmark_counts_ok(&s["lastResult"])
        },
    )
    .await
}

/// Runs `steps` with a browser on `server`, then closes the browser whatever
/// happened, so a failed step does not leave a Chromium behind.
async fn with_browser<F, Fut>(steps: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let clip = build_clip(dir.path());
    let driver = ChromeDriver::spawn();
    let client = driver.browser(&clip, &[]).await;
    let outcome =
        futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(steps(client.clone())))
            .await;
    let _ = client.close().await;
    drop(driver);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[actix_web::test]
async fn web_demo_streams_over_webrtc_switches_and_falls_back() {
    // One browser and one server at a time: each runs the models.
    let server = TestServer::start(test_config(PASSWORD)).await;
    let on = &server;
    with_browser(|client| async move { streams_over_webrtc_and_switches(&client, on).await }).await;
    drop(server);

    let mut config = test_config(PASSWORD);
    config.rtc.enabled = false;
    let server = TestServer::start(config).await;
    let off = &server;
    with_browser(|client| async move { falls_back_to_the_websocket(&client, off).await }).await;
}

async fn streams_over_webrtc_and_switches(client: &Client, server: &TestServer) {
    login_through_page(client, &server.url(""), PASSWORD).await;

    // 0. The page finds which picture an RTP timestamp belongs to.
    let clock = client
        .execute_async(RTP_CLOCK_CHECK, vec![])
        .await
        .expect("running rtpclock.js");
    assert_eq!(clock["lined"], true, "{clock}");
    assert_eq!(clock["wrong"], 0, "{clock}");
    assert!(clock["checked"].as_u64().unwrap_or(0) > 80, "{clock}");

    // 1. WebRTC is the default; results arrive on the data channel, drawn.
    let state = results_over(client, "webrtc", 0, 5).await;
    assert_eq!(state["camera"], "live", "{state}");
    assert!(state["fallback"].is_null(), "{state}");
    let rtp_ts = &state["lastResult"]["rtpTs"];
    assert!(rtp_ts.is_u64(), "a WebRTC result carries rtp_ts: {state}");
    let drawn = poll_js(
        client,
        PAGE_TIMEOUT,
        "landmarks drawn",
        OVERLAY_DRAWN,
        |v| v.as_u64().unwrap_or(0) > 1000,
    )
    .await;
    println!("overlay pixels drawn over WebRTC: {drawn}");

    // 2. The server decoded the track, for one peer.
    let metrics = rtc_sessions_become(server, 1.0, "one WebRTC session in /metrics").await;
    assert!(
        frames_decoded(&metrics) > 0.0,
        "no frames decoded: {}",
        rtc_metrics(&metrics)
    );

    // 3. The HUD: transport, an encoder's bitrate, a measured latency.
    results_over(client, "webrtc", 0, SETTLED_RESULTS).await;
    let rtc_hud = poll_js(client, PAGE_TIMEOUT, "the HUD's WebRTC figures", HUD, |h| {
        h["transport"]
            .as_str()
            .is_some_and(|t| t.starts_with("WebRTC"))
            && number(&h["upstreamKbps"]) > 0.0
            && number(&h["resultFps"]) > 0.0
            && number(&h["p50"]) > 0.0
    })
    .await;
    let rtc_kbps = number(&rtc_hud["upstreamKbps"]);
    println!(
        "{} HUD: upstream {rtc_kbps} kbit/s, sent {} fps, results {} fps, latency p50 {} ms, p95 {} ms, estimate {}, drawn {} (nearest picture {})",
        rtc_hud["transport"],
        rtc_hud["sentFps"],
        rtc_hud["resultFps"],
        rtc_hud["p50"],
        rtc_hud["p95"],
        rtc_hud["latencyEstimate"],
        rtc_hud["stats"]["drawn"],
        rtc_hud["stats"]["nearestPicture"],
    );
    assert!(
        rtc_kbps < MAX_RTC_UPSTREAM_KBPS,
        "WebRTC upstream {rtc_kbps} kbit/s is no video encoder's: {rtc_hud}"
    );
    // Chromium shows the page its encoder's frames (insertable streams):
    // latencies rest on their RTP timestamps, not on an estimated clock.
    assert_eq!(rtc_hud["latencyEstimate"], false, "{rtc_hud}");
    let artifacts = artifacts_dir();
    let shot = client.screenshot().await.expect("taking a screenshot");
    std::fs::write(artifacts.join("web_rtc.png"), &shot).unwrap();

    // 4. The control switches to the WebSocket: the WebRTC session is
    // deleted, results keep coming over the socket.
    let before = results(&client.execute(PAGE_STATE, vec![]).await.unwrap());
    choose_transport(client, "websocket").await;
    let metrics = rtc_sessions_become(server, 0.0, "the WebRTC session deleted").await;
    assert!(
        metric(&metrics, "holistream_rtc_closed_total{reason=\"delete\"}") >= 1.0,
        "the switch ended the session by DELETE: {}",
        rtc_metrics(&metrics)
    );
    results_over(client, "websocket", before, SETTLED_RESULTS).await;
    let ws_hud = poll_js(
        client,
        PAGE_TIMEOUT,
        "the HUD's WebSocket figures",
        HUD,
        |h| h["transport"] == "WebSocket" && number(&h["upstreamKbps"]) > 0.0,
    )
    .await;
    let ws_kbps = number(&ws_hud["upstreamKbps"]);
    println!(
        "WebSocket HUD: upstream {ws_kbps} kbit/s, sent {} fps, results {} fps, latency p50 {} ms, p95 {} ms; WebRTC sends {:.0}% of its bytes",
        ws_hud["sentFps"],
        ws_hud["resultFps"],
        ws_hud["p50"],
        ws_hud["p95"],
        100.0 * rtc_kbps / ws_kbps,
    );

    // 5. And back to WebRTC, which the page remembers as the choice.
    let before = results(&client.execute(PAGE_STATE, vec![]).await.unwrap());
    choose_transport(client, "webrtc").await;
    results_over(client, "webrtc", before, 5).await;
    rtc_sessions_become(server, 1.0, "a WebRTC session again").await;

    // Pause stops the encoder (the connection stays up); Resume restarts it.
    let pause = client.find(Locator::Id("pause")).await.unwrap();
    pause.click().await.unwrap();
    poll_js(
        client,
        PAGE_TIMEOUT,
        "nothing sent while paused",
        HUD,
        |h| h["sentFps"] == "0.0",
    )
    .await;
    let before = results(&client.execute(PAGE_STATE, vec![]).await.unwrap());
    pause.click().await.unwrap();
    results_over(client, "webrtc", before, 5).await;

    // 6. Leaving the page deletes the session (pagehide), as does `stop`.
    client.goto("about:blank").await.unwrap();
    rtc_sessions_become(server, 0.0, "the WebRTC session deleted on pagehide").await;

    std::fs::write(
        artifacts.join("web_rtc_hud.json"),
        serde_json::to_vec_pretty(&json!({ "webrtc": rtc_hud, "websocket": ws_hud })).unwrap(),
    )
    .unwrap();
}

async fn falls_back_to_the_websocket(client: &Client, server: &TestServer) {
    login_through_page(client, &server.url(""), PASSWORD).await;
    let state = results_over(client, "websocket", 0, 3).await;
    let why = state["fallback"].as_str().unwrap_or_default();
    assert!(
        why.contains("404"),
        "the fallback names the server's 404: {state}"
    );
    let hud = poll_js(client, PAGE_TIMEOUT, "the HUD's transport", HUD, |h| {
        h["transport"]
            .as_str()
            .is_some_and(|t| t.starts_with("WebSocket"))
    })
    .await;
    println!("with WebRTC off the HUD shows: {}", hud["transport"]);
    let metrics = metrics_text(server).await;
    assert_eq!(metric(&metrics, "holistream_rtc_sessions_active"), 0.0);
}
