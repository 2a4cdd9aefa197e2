//! HTTP as the tests speak it: an awc client, logging in, `/metrics` read and
//! parsed, the admin fault route; and a raw HTTP/1.1 request from a chosen
//! loopback source address ([`http_from`]), for what awc cannot do here
//! (pick the client's address, talk TLS-less to a proxy by hand).
//!
//! The functions that take a `base` (`http://127.0.0.1:<port>`) serve a
//! server in this process ([`super::server::TestServer::base`]) and a child
//! process alike.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use actix_web::http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::server::{ADMIN_TOKEN, TestServer};

/// An HTTP client with a short timeout.
pub fn http_client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish()
}

/// `POST <base>/auth/code`; the response status and, on success, the
/// `Cookie` header value (`holistream_session=<uuid>`).
pub async fn try_login_at(base: &str, code: &str) -> (StatusCode, Option<String>) {
    let resp = http_client()
        .post(format!("{base}/auth/code"))
        .send_json(&serde_json::json!({ "code": code }))
        .await
        .expect("POST /auth/code");
    let cookie = resp
        .cookie(holistream::http::SESSION_COOKIE)
        .map(|c| format!("{}={}", c.name(), c.value()));
    (resp.status(), cookie)
}

/// Logs in on `base` and returns the `Cookie` header value; panics unless it
/// worked (200 and a session cookie).
pub async fn login_at(base: &str, code: &str) -> String {
    match try_login_at(base, code).await {
        (StatusCode::OK, Some(cookie)) => cookie,
        other => panic!("login failed: {other:?}"),
    }
}

/// [`try_login_at`] on an in-process server.
pub async fn try_login(server: &TestServer, code: &str) -> (StatusCode, Option<String>) {
    try_login_at(&server.base(), code).await
}

/// [`login_at`] on an in-process server.
pub async fn login(server: &TestServer, code: &str) -> String {
    login_at(&server.base(), code).await
}

/// `GET /auth/code` with the cookie; the status.
pub async fn session_status(server: &TestServer, cookie: &str) -> StatusCode {
    http_client()
        .get(server.url("/auth/code"))
        .insert_header(("Cookie", cookie))
        .send()
        .await
        .expect("GET /auth/code")
        .status()
}

/// The status of the server's `/readyz`.
pub async fn readyz(server: &TestServer) -> StatusCode {
    http_client()
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
}

/// A response body parsed as JSON (panics, showing the text, if it is not).
pub async fn json_body<S>(resp: &mut awc::ClientResponse<S>) -> serde_json::Value
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>>,
{
    let body = resp.body().await.expect("reading the body");
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&body)))
}

/// `GET <base>/metrics` as text; panics unless it is a 200.
pub async fn metrics_at(base: &str) -> String {
    let mut resp = http_client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200, "GET {base}/metrics");
    let body = resp.body().limit(8 << 20).await.expect("metrics body");
    String::from_utf8(body.to_vec()).expect("metrics are UTF-8")
}

/// `/metrics` of an in-process server as text.
pub async fn metrics_text(server: &TestServer) -> String {
    metrics_at(&server.base()).await
}

/// The value of one series (`name{labels}` exactly as rendered), e.g.
/// `holistream_drops_total{reason="stale"}`, if present.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The value of one series; 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    metric_value(text, series).unwrap_or(0.0)
}

/// Sum of every series of a metric family (e.g. the per-thread task gauge).
pub fn metric_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(family) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Every series of a counter family with one label: label value → value.
pub fn metric_family(
    text: &str,
    name: &str,
    label: &str,
) -> std::collections::BTreeMap<String, u64> {
    let prefix = format!("{name}{{{label}=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (value_of_label, rest) = rest.split_once("\"} ")?;
            Some((value_of_label.to_string(), rest.trim().parse().ok()?))
        })
        .collect()
}

/// Posts a fault plan through the admin endpoint (enabled with
/// [`ADMIN_TOKEN`] by [`super::server::test_config`]).
pub async fn set_faults(server: &TestServer, plan: &str) {
    let resp = http_client()
        .post(server.url("/admin/faults"))
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
        .send_json(&serde_json::json!({ "faults": plan }))
        .await
        .expect("POST /admin/faults");
    assert_eq!(resp.status(), 200, "setting faults {plan:?}");
}

// ------------------------------------------------------------ raw HTTP

/// Bound on connecting to and reading from a server in [`http_from`].
pub const RAW_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP response's status, head and body.
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// The head and the body's start: enough to see who answered.
impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body: String = self.body.chars().take(300).collect();
        write!(f, "{}\n\n{body}", self.head)
    }
}

impl Response {
    /// The value of header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.1 request on a fresh connection from the loopback address
/// `from`: a proxy sees each such address as a different client. Written by
/// hand because the client's source address must be chosen (and awc has no
/// TLS here); the bodies are small, read until the server closes.
pub async fn http_from(
    from: Ipv4Addr,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .unwrap_or_else(|e| panic!("binding {from}: {e}"));
    let mut stream = actix_web::rt::time::timeout(RAW_HTTP_TIMEOUT, socket.connect(to))
        .await
        .unwrap_or_else(|_| panic!("connecting to {to} timed out"))
        .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let typed = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    if !body.is_empty() && !typed {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    actix_web::rt::time::timeout(RAW_HTTP_TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("{method} {path} on {to}: no complete answer"))
        .unwrap_or_else(|e| panic!("{method} {path} on {to}: {e}"));
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path} on {to}: not HTTP: {text:?}"));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Response {
        status,
        head: head.to_string(),
        body: if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    }
}

/// The payload of a chunked body (`<hex size>\r\n<data>\r\n`..., `0\r\n\r\n`).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size:?}"));
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}
