//! The web demo end to end, in a real headless Chromium driven over WebDriver
//! (`chromedriver` + fantoccini), against the real server with the real
//! models and a real Redis.
//!
//! The fake camera plays an MJPEG clip that this test builds from the
//! project's public-domain photos (`tests/fixtures/`), so it runs on a fresh
//! clone. Chromium's fake camera shows 4:4:4 JPEG frames as a plain green
//! picture without any error, hence the 4:2:0 encoder (`jpeg-encoder`; the
//! `image` crate's encoder writes 4:4:4) and the test of the clip itself.
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium`, `chromium-driver`;
//! `CHROMIUM` / `CHROMEDRIVER` override the paths) and `redis-server`. The
//! screenshot lands in `$HOLISTREAM_ARTIFACTS` or `target/artifacts/`.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use fantoccini::{Client, Locator};
use image::RgbImage;
use serde_json::json;
use support::browser::{
    CLIP_PHOTOS, CLIP_SIZE, ChromeDriver, FRAMES_PER_PHOTO, PAGE_STATE, PAGE_TIMEOUT,
    artifacts_dir, build_clip, choose_transport, landmark_counts_ok, letterbox, login_through_page,
    poll_js, results, results_after_reconnect, submit_code, wait_for_path,
};
use support::http::{http_client, json_body};
use support::port::FreePort;
use support::redis_server::RedisServer;
use support::server::{TestServer, test_config};

const PASSWORD: &str = "e2e-entry-code-7f3a";
/// Generous: the first results wait for the model workers and the browser's camera.
const FIRST_RESULT_TIMEOUT: Duration = Duration::from_secs(120);

// ------------------------------------------------------------ the clip

/// What the start-of-frame segment of one JPEG says.
#[derive(Debug, PartialEq)]
struct FrameInfo {
    /// SOF0: baseline DCT.
    baseline: bool,
    width: u16,
    height: u16,
    /// (horizontal, vertical) sampling factor per component.
    sampling: Vec<(u8, u8)>,
}

/// Splits an MJPEG stream at its SOI markers and reads each frame's SOF
/// segment (a small marker walk; the frames are our own encoder's output).
/// Returns each frame's byte range and what its SOF says.
fn clip_frames(clip: &[u8]) -> Vec<(std::ops::Range<usize>, FrameInfo)> {
    let mut frames = Vec::new();
    let mut i = 0;
    while i + 1 < clip.len() {
        let start = i;
        assert_eq!(
            &clip[i..i + 2],
            &[0xFF, 0xD8],
            "frame at byte {i} does not start with SOI"
        );
        i += 2;
        let mut info = None;
        loop {
            assert_eq!(clip[i], 0xFF, "expected a marker at byte {i}");
            let marker = clip[i + 1];
            let len = u16::from_be_bytes([clip[i + 2], clip[i + 3]]) as usize;
            let seg = &clip[i + 4..i + 2 + len];
            if matches!(marker, 0xC0..=0xC3) {
                let n = seg[5] as usize;
                info = Some(FrameInfo {
                    baseline: marker == 0xC0,
                    height: u16::from_be_bytes([seg[1], seg[2]]),
                    width: u16::from_be_bytes([seg[3], seg[4]]),
                    sampling: (0..n)
                        .map(|c| (seg[7 + 3 * c] >> 4, seg[7 + 3 * c] & 0x0F))
                        .collect(),
                });
            }
            i += 2 + len;
            if marker == 0xDA {
                break;
            }
        }
        // Entropy-coded data up to EOI (0xFF 0xD9); stuffed 0xFF 0x00 and
        // restart markers never look like EOI.
        while !(clip[i] == 0xFF && clip[i + 1] == 0xD9) {
            i += 1;
        }
        i += 2;
        frames.push((
            start..i,
            info.expect("frame without a start-of-frame segment"),
        ));
    }
    frames
}

#[test]
fn fake_camera_clip_is_baseline_420_at_640x480() {
    let dir = tempfile::tempdir().unwrap();
    let clip = std::fs::read(build_clip(dir.path())).unwrap();
    let frames = clip_frames(&clip);
    assert_eq!(frames.len(), CLIP_PHOTOS.len() * FRAMES_PER_PHOTO);
    for (_, f) in &frames {
        assert_eq!(
            *f,
            FrameInfo {
                baseline: true,
                width: 640,
                height: 480,
                // Y at 2x2, Cb and Cr at 1x1: 4:2:0.
                sampling: vec![(2, 2), (1, 1), (1, 1)],
            }
        );
    }
    // One picture per photo, each a JPEG that decodes to a 640x480 frame.
    let firsts: Vec<&[u8]> = (0..CLIP_PHOTOS.len())
        .map(|p| &clip[frames[p * FRAMES_PER_PHOTO].0.clone()])
        .collect();
    assert!(firsts[0] != firsts[1] && firsts[1] != firsts[2] && firsts[0] != firsts[2]);
    for jpeg in firsts {
        let frame = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg).unwrap();
        assert_eq!((frame.width(), frame.height()), CLIP_SIZE);
    }
}

#[test]
fn letterbox_keeps_the_aspect_ratio_on_black() {
    // A tall photo: bars left and right, content in the middle column.
    let tall = RgbImage::from_pixel(300, 600, image::Rgb([200, 100, 50]));
    let frame = letterbox(&tall);
    assert_eq!(frame.dimensions(), CLIP_SIZE);
    assert_eq!(frame.get_pixel(10, 240).0, [0, 0, 0]);
    assert_eq!(frame.get_pixel(629, 240).0, [0, 0, 0]);
    assert_eq!(frame.get_pixel(320, 240).0, [200, 100, 50]);
    // 300x600 scaled by 0.8 is 240 wide: the bars are 200 pixels each.
    assert_eq!(frame.get_pixel(201, 5).0, [200, 100, 50]);
    assert_eq!(frame.get_pixel(198, 5).0, [0, 0, 0]);
}

// ------------------------------------------------------------ the browser

/// Number of overlay pixels that are not fully transparent, and whether the
/// overlay differs from a blank canvas of its size.
const OVERLAY_PIXELS: &str = r#"
    const overlay = document.getElementById('overlay');
    const { width, height } = overlay;
    const data = overlay.getContext('2d').getImageData(0, 0, width, height).data;
    let drawn = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) drawn++;
    const blank = document.createElement('canvas');
    blank.width = width;
    blank.height = height;
    return { drawn, width, height, differsFromBlank: overlay.toDataURL() !== blank.toDataURL() };
"#;

async fn text_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} not on the page: {e}"))
        .text()
        .await
        .expect("reading an element's text")
}

/// The server, on a fixed address so a restart comes back where the page
/// reconnects, and sharing one Redis so the browser's session survives it.
async fn start_server(addr: Option<SocketAddr>, redis: &RedisServer) -> TestServer {
    let mut config = test_config(PASSWORD);
    config.redis.url = Some(redis.url());
    let listener = match addr {
        Some(addr) => TcpListener::bind(addr).unwrap_or_else(|e| panic!("rebinding {addr}: {e}")),
        None => FreePort::new().into_listener(),
    };
    TestServer::start_on(listener, config).await
}

#[actix_web::test]
async fn web_demo_logs_in_streams_draws_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clip = build_clip(dir.path());
    let redis = RedisServer::spawn();
    let mut server = start_server(None, &redis).await;
    let addr = server.addr;
    let driver = ChromeDriver::spawn();
    let client = driver.browser(&clip, &[]).await;

    // Run the steps, then close the browser whatever happened, so a failed
    // step does not leave a Chromium behind.
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(steps(
        &client,
        &mut server,
        addr,
        &redis,
    )))
    .await;
    let _ = client.close().await;
    drop(driver);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn steps(client: &Client, server: &mut TestServer, addr: SocketAddr, redis: &RedisServer) {
    // 1. The stream page without a session sends the visitor to the login page.
    client.goto(&server.url("/stream.html")).await.unwrap();
    wait_for_path(client, "/").await;
    // The new document may still be loading when its URL shows.
    client
        .wait()
        .at_most(PAGE_TIMEOUT)
        .for_element(Locator::Id("login-form"))
        .await
        .expect("the login form");

    // The page's frame encoder and the server's parser agree on the header.
    let bytes = client
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               import('/protocol.js')
                 .then((m) => done(Array.from(new Uint8Array(
                   m.encodeFrame(0xDEADBEEF, 1700000000123.5, new Uint8Array([0xFF, 0xD8, 7, 9]).buffer)))))
                 .catch((e) => done(String(e)));"#,
            vec![],
        )
        .await
        .expect("encoding a frame with the page's protocol.js");
    let bytes: Vec<u8> = serde_json::from_value(bytes.clone())
        .unwrap_or_else(|_| panic!("protocol.js failed: {bytes}"));
    let (header, jpeg) = holistream::actors::protocol::parse_frame(&bytes)
        .expect("the server parses the page's frame");
    assert_eq!(
        (header.seq, header.capture_ts, jpeg),
        (0xDEAD_BEEF, 1_700_000_000_123.5, &[0xFF, 0xD8, 7, 9][..])
    );

    // 2. A wrong password shows the server's own message (asked once here,
    // once through the page: two of the five failures the limiter allows).
    let mut resp = http_client()
        .post(server.url("/auth/code"))
        .send_json(&json!({ "code": "also-not-it" }))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let server_message = json_body(&mut resp).await["error"]
        .as_str()
        .expect("a 401 carries {\"error\": ...}")
        .to_string();
    let field = client.find(Locator::Id("code")).await.unwrap();
    submit_code(client, &field, "wrong-password").await;
    let shown = poll_js(
        client,
        PAGE_TIMEOUT,
        "the login error",
        "const e = document.getElementById('login-error'); return e.hidden ? null : e.textContent;",
        |v| v.is_string(),
    )
    .await;
    assert_eq!(shown, server_message.as_str());
    assert_eq!(client.current_url().await.unwrap().path(), "/");

    // 3. The right password leads to the stream page, which starts streaming.
    // Over the WebSocket, this test's transport (WebRTC, the page's default:
    // tests/web_rtc.rs).
    login_through_page(client, &server.url(""), PASSWORD).await;
    choose_transport(client, "websocket").await;

    // 4. Results arrive with MediaPipe's landmark counts.
    let state = poll_js(
        client,
        FIRST_RESULT_TIMEOUT,
        "results with 33 pose and 468 face landmarks",
        PAGE_STATE,
        |s| results(s) >= 5 && landmark_counts_ok(&s["lastResult"]),
    )
    .await;
    assert_eq!(state["camera"], "live", "{state}");
    assert_eq!(state["connection"], "open", "{state}");

    // 5. The HUD shows a result rate and a latency.
    let hud = poll_js(
        client,
        PAGE_TIMEOUT,
        "non-zero results/s and a latency on the HUD",
        r#"const t = (id) => document.getElementById(id).textContent;
           return { resultFps: t('hud-result-fps'), sentFps: t('hud-sent-fps'), p50: t('hud-p50'), p95: t('hud-p95'),
                    infer: t('hud-infer'), total: t('hud-total') };"#,
        |h| {
            let num = |k: &str| h[k].as_str().and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
            num("resultFps") > 0.0 && num("p50") > 0.0 && num("p95") >= num("p50")
        },
    )
    .await;
    println!(
        "HUD: sent {} fps, results {} fps, latency p50 {} ms, p95 {} ms, server infer {} ms, total {} ms",
        hud["sentFps"], hud["resultFps"], hud["p50"], hud["p95"], hud["infer"], hud["total"]
    );

    // 6. Landmarks are drawn: the overlay canvas is no longer blank.
    let overlay = client.execute(OVERLAY_PIXELS, vec![]).await.unwrap();
    assert!(
        overlay["differsFromBlank"] == true,
        "overlay is blank: {overlay}"
    );
    assert!(
        overlay["drawn"].as_u64().unwrap() > 1000,
        "too few overlay pixels: {overlay}"
    );

    // 7. The screenshot, kept as an artifact.
    let shot = client.screenshot().await.expect("taking a screenshot");
    let artifacts = artifacts_dir();
    std::fs::write(artifacts.join("web_e2e.png"), &shot).unwrap();
    std::fs::write(
        artifacts.join("web_e2e_hud.json"),
        serde_json::to_vec_pretty(&json!({ "hud": hud, "overlay": overlay })).unwrap(),
    )
    .unwrap();
    println!("screenshot: {}", artifacts.join("web_e2e.png").display());

    // 8. A server restart mid-stream: the page shows the disconnect,
    // reconnects with backoff, and results resume.
    let before = client.execute(PAGE_STATE, vec![]).await.unwrap();
    let results_before = before["stats"]["results"].as_u64().unwrap();
    let (outcome, _) = server.stop(Duration::from_secs(30));
    outcome.expect("the server shuts down cleanly");
    let down = poll_js(
        client,
        PAGE_TIMEOUT,
        "the page to show the disconnect",
        PAGE_STATE,
        |s| {
            s["connection"] != "open"
                && s["connText"]
                    .as_str()
                    .is_some_and(|t| t.contains("disconnected") || t.contains("connecting"))
        },
    )
    .await;
    println!("during the restart the page shows: {}", down["connText"]);
    *server = start_server(Some(addr), redis).await;
    let after = results_after_reconnect(
        client,
        FIRST_RESULT_TIMEOUT,
        "results after the restart",
        results_before,
    )
    .await;
    assert_eq!(
        client.current_url().await.unwrap().path(),
        "/stream.html",
        "the session survived the restart"
    );
    let shown_errors = after["errors"].as_array().unwrap();
    assert!(
        shown_errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("WebSocket closed")),
        "the disconnect is listed among the page's errors: {after}"
    );
    let shot = client.screenshot().await.expect("taking a screenshot");
    std::fs::write(artifacts.join("web_e2e_after_restart.png"), &shot).unwrap();
    let conn = text_of(client, "#conn-state").await;
    assert_eq!(conn, "connected");
}
