//! A real headless Chromium driven over WebDriver (`chromedriver` +
//! fantoccini) with a fake camera that plays the project's public-domain
//! photos, for the tests that run the web demo end to end through something
//! (nginx, TLS) or not (`tests/web_e2e.rs`, which also tests the clip itself:
//! 4:2:0, 640x480).
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium`, `chromium-driver`;
//! `CHROMIUM` / `CHROMEDRIVER` override the paths).

use std::cell::RefCell;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use image::{RgbImage, imageops};
use serde_json::{Value, json};

use super::fixtures::fixtures;
use super::poll::{poll_within, wait_blocking};
use super::port::FreePort;

/// The fake camera's frame size, a webcam's.
pub const CLIP_SIZE: (u32, u32) = (640, 480);
/// Frames each photo stays on the fake camera (30 fps: one second each).
pub const FRAMES_PER_PHOTO: usize = 30;
/// The public-domain photos of the clip, each showing one person (pose and face).
pub const CLIP_PHOTOS: [&str; 3] = ["astronaut.png", "obama.jpg", "grace_hopper.jpg"];
/// Bound on a page load or a click's effect.
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------ the clip

/// Scales `photo` to fit 640x480 and centres it on black, as a webcam frame.
pub fn letterbox(photo: &RgbImage) -> RgbImage {
    let (w, h) = CLIP_SIZE;
    let scale = f64::min(
        w as f64 / photo.width() as f64,
        h as f64 / photo.height() as f64,
    );
    let sw = ((photo.width() as f64 * scale).round() as u32).clamp(1, w);
    let sh = ((photo.height() as f64 * scale).round() as u32).clamp(1, h);
    let scaled = imageops::resize(photo, sw, sh, imageops::FilterType::Triangle);
    let mut frame = RgbImage::new(w, h);
    imageops::replace(
        &mut frame,
        &scaled,
        ((w - sw) / 2) as i64,
        ((h - sh) / 2) as i64,
    );
    frame
}

/// One baseline JPEG with 4:2:0 chroma subsampling: Chromium's fake camera
/// shows 4:4:4 frames as a plain green picture without any error.
fn encode_420(frame: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, 90);
    // Set explicitly: the encoder picks 4:4:4 by itself at quality >= 90.
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    encoder
        .encode(
            frame.as_raw(),
            frame.width() as u16,
            frame.height() as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .expect("encoding a clip frame");
    out
}

/// Builds the fake camera's MJPEG clip (JPEG frames back to back) in `dir`.
pub fn build_clip(dir: &Path) -> PathBuf {
    let mut clip = Vec::new();
    for name in CLIP_PHOTOS {
        let path = fixtures().join(name);
        let photo = image::open(&path)
            .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
            .to_rgb8();
        let jpeg = encode_420(&letterbox(&photo));
        for _ in 0..FRAMES_PER_PHOTO {
            clip.extend_from_slice(&jpeg);
        }
    }
    let path = dir.join("fake_camera.mjpeg");
    std::fs::write(&path, &clip).expect("writing the clip");
    path
}

// ------------------------------------------------------------ the browser

fn tool(env: &str, default: &str) -> String {
    let path = std::env::var(env).unwrap_or_else(|_| default.to_string());
    assert!(
        Path::new(&path).exists(),
        "{path} not found: install Debian's chromium and chromium-driver (or set {env})"
    );
    path
}

/// A `chromedriver` child on a free port; killed on drop.
pub struct ChromeDriver {
    port: u16,
    child: Child,
}

impl ChromeDriver {
    pub fn spawn() -> ChromeDriver {
        let bin = tool("CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = FreePort::new().release();
        let child = Command::new(&bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let mut driver = ChromeDriver { port, child };
        let what = format!("chromedriver listening on port {port}");
        wait_blocking(Duration::from_secs(20), &what, || {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!("chromedriver exited at start: {status}");
            }
            TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_ok()
        });
        driver
    }

    /// A headless Chromium session whose camera plays `fake_camera`;
    /// `extra_args` are added to Chromium's command line.
    pub async fn browser(&self, fake_camera: &Path, extra_args: &[&str]) -> Client {
        let chromium = tool("CHROMIUM", "/usr/bin/chromium");
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,1000".into(),
            "--use-fake-ui-for-media-stream".into(),
            "--use-fake-device-for-media-stream".into(),
            format!(
                "--use-file-for-fake-video-capture={}",
                fake_camera.display()
            ),
            // WebRTC (the page's default transport) to the server's
            // 127.0.0.1 candidate. Chromium gathers no ICE candidates on
            // loopback interfaces: on a machine with another interface it
            // still gets there (the kernel routes a socket bound to eth0's
            // address to 127.0.0.1 over `lo`), but in a container whose only
            // interface is `lo` it gathers no candidate at all, ICE never
            // starts, and the page falls back to the WebSocket after 6 s
            // (seen under `unshare -rn`). This flag gathers on `lo` too.
            "--allow-loopback-in-peer-connection".into(),
        ];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chromium, "args": args }),
        );
        ClientBuilder::native()
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("starting a Chromium session over WebDriver")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Picks the stream page's transport (`"webrtc"` or `"websocket"`) in its
/// control, as a visitor would: the page closes the current connection and
/// opens one over the other.
pub async fn choose_transport(client: &Client, transport: &str) {
    client
        .find(Locator::Id("transport"))
        .await
        .expect("the transport control")
        .select_by_value(transport)
        .await
        .unwrap_or_else(|e| panic!("choosing the {transport} transport: {e}"));
}

/// Evaluates `script` (which must `return` a value) until `done` accepts the
/// value; returns it, or panics with `what` and the last value seen.
pub async fn poll_js(
    client: &Client,
    timeout: Duration,
    what: &str,
    script: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let last = RefCell::new(Value::Null);
    let value = poll_within(timeout, Duration::from_millis(100), || async {
        let value = client
            .execute(script, vec![])
            .await
            .expect("running a script in the page");
        if done(&value) {
            return Some(value);
        }
        *last.borrow_mut() = value;
        None
    })
    .await;
    value.unwrap_or_else(|| {
        panic!(
            "timed out after {timeout:?} waiting for {what}; last: {}",
            last.borrow()
        )
    })
}

/// Waits until the page's URL has `path`.
pub async fn wait_for_path(client: &Client, path: &str) {
    let last = RefCell::new(None);
    let reached = poll_within(PAGE_TIMEOUT, Duration::from_millis(50), || async {
        let url = client.current_url().await.expect("reading the URL");
        let at = url.path() == path;
        *last.borrow_mut() = Some(url);
        at.then_some(())
    })
    .await;
    if reached.is_none() {
        let url = last.borrow().clone().expect("the URL was read");
        panic!("page stayed at {url}, expected path {path}");
    }
}

/// Logs in through the page at `base` (`http://host:port`): the login form,
/// the code, the submit button; returns once the stream page is shown.
pub async fn login_through_page(client: &Client, base: &str, code: &str) {
    client
        .goto(&format!("{base}/"))
        .await
        .unwrap_or_else(|e| panic!("loading {base}/: {e}"));
    let field = client
        .wait()
        .at_most(PAGE_TIMEOUT)
        .for_element(Locator::Id("code"))
        .await
        .expect("the login form's code field");
    // The page's script attaches the form's handler once its session check
    // (`GET /auth/code`) is answered; a click before that would submit the
    // form natively.
    poll_js(
        client,
        PAGE_TIMEOUT,
        "the login page's session check",
        "return performance.getEntriesByName(new URL('/auth/code', location.href).href).length > 0;",
        |v| v == true,
    )
    .await;
    submit_code(client, &field, code).await;
    wait_for_path(client, "/stream.html").await;
}

/// Types `code` into the login form's `field` (cleared first) and submits
/// the form.
pub async fn submit_code(client: &Client, field: &Element, code: &str) {
    field.clear().await.unwrap();
    field.send_keys(code).await.unwrap();
    client
        .find(Locator::Id("login-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// The page's counters and the last result, as `window.holistream` exposes them.
pub const PAGE_STATE: &str = r#"
    const h = window.holistream;
    if (!h) return null;
    return {
        connection: h.connection,
        transport: h.transport,
        fallback: h.fallback,
        camera: h.camera,
        stats: h.stats,
        lastResult: h.lastResult,
        connText: document.getElementById('conn-state').textContent,
        errors: h.errors.map((e) => `[${e.source}] ${e.text}`),
    };
"#;

/// The page's count of results so far (0 before the page is up).
pub fn results(state: &Value) -> u64 {
    state["stats"]["results"].as_u64().unwrap_or(0)
}

/// MediaPipe's landmark counts in the page's last result: 33 pose, 468
/// face, 0 or 21 per hand.
pub fn landmark_counts_ok(result: &Value) -> bool {
    let counts = &result["counts"];
    let hand_ok = |v: &Value| v == 0 || v == 21;
    counts["pose"] == 33
        && counts["face"] == 468
        && hand_ok(&counts["left_hand"])
        && hand_ok(&counts["right_hand"])
}

/// Polls the page until it is connected again after at least one reconnect
/// and shows 5 results more than `before`, the last with MediaPipe's
/// landmark counts; returns the page's state.
pub async fn results_after_reconnect(
    client: &Client,
    timeout: Duration,
    what: &str,
    before: u64,
) -> Value {
    poll_js(client, timeout, what, PAGE_STATE, |s| {
        s["connection"] == "open"
            && s["stats"]["reconnects"].as_u64().unwrap_or(0) >= 1
            && results(s) >= before + 5
            && landmark_counts_ok(&s["lastResult"])
    })
    .await
}

/// Where screenshots go: `$HOLISTREAM_ARTIFACTS`, or `target/artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    let dir = std::env::var_os("HOLISTREAM_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
                .join("artifacts")
        });
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}
