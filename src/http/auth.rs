//! Entry-code login, session cookies, the wrong-code rate limiter and the
//! WebSocket origin check.
//!
//! `POST /auth/code {"code": "..."}` compares the code in constant time and
//! sets `holistream_session=<uuid>` (HttpOnly, SameSite=Strict, Path=/,
//! Max-Age, `Secure` when configured); `GET /auth/code` says whether the
//! cookie is valid; `POST /auth/logout` revokes the session and clears the
//! cookie.
//!
//! Must not hold sessions itself (the store does) nor put the cookie's token in
//! a log line or a page (only its [`SessionTag`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use parking_lot::Mutex;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::error::Error;
use super::{AppState, store::SessionStatus};
use crate::net::{TrustedProxies, limiter_key};
use crate::session_id::SessionTag;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "holistream_session";

/// Body of `POST /auth/code`.
#[derive(Debug, Deserialize)]
pub struct LoginRequest {
    pub code: String,
}

/// The entry code and cookie settings, fixed at start-up.
pub struct Auth {
    password: String,
    secure_cookie: bool,
    limiter: LoginLimiter,
    proxies: TrustedProxies,
}

impl Auth {
    /// `password` is the entry code (already resolved: from the environment
    /// or generated); `proxies` may name the client behind them.
    pub fn new(
        password: String,
        secure_cookie: bool,
        limiter: LoginLimiter,
        proxies: TrustedProxies,
    ) -> Auth {
        Auth {
            password,
            secure_cookie,
            limiter,
            proxies,
        }
    }

    /// The client's address: the socket peer, or what a trusted proxy says.
    pub fn client_ip(&self, req: &HttpRequest) -> IpAddr {
        let peer = req
            .peer_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let headers = req.headers();
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .collect();
        let real_ip = headers.get("x-real-ip").and_then(|v| v.to_str().ok());
        self.proxies.client_ip(peer, &forwarded, real_ip)
    }

    /// The cookie that carries a session.
    pub fn session_cookie(&self, id: Uuid, ttl: Duration) -> Cookie<'static> {
        Cookie::build(SESSION_COOKIE, id.to_string())
            .http_only(true)
            .same_site(SameSite::Strict)
            .path("/")
            .max_age(actix_web::cookie::time::Duration::seconds(
                ttl.as_secs().min(i64::MAX as u64) as i64,
            ))
            .secure(self.secure_cookie)
            .finish()
    }

    /// The cookie that makes the browser forget the session.
    pub fn removal_cookie(&self) -> Cookie<'static> {
        let mut c = self.session_cookie(Uuid::nil(), Duration::ZERO);
        c.make_removal();
        c
    }
}

/// Compares the entry code in time that depends only on the expected code's
/// length, never on where the given one first differs.
pub fn password_matches(expected: &str, given: &str) -> bool {
    let (expected, given) = (expected.as_bytes(), given.as_bytes());
    let same_len = (expected.len() as u64).ct_eq(&(given.len() as u64));
    let mut same_bytes = subtle::Choice::from(1u8);
    for (i, e) in expected.iter().enumerate() {
        same_bytes &= e.ct_eq(given.get(i).unwrap_or(&0));
    }
    (same_len & same_bytes).into()
}

/// The session uuid in the request's cookie, if any parses.
pub fn session_id(req: &HttpRequest) -> Option<Uuid> {
    req.cookie(SESSION_COOKIE)
        .and_then(|c| Uuid::parse_str(c.value()).ok())
}

/// Whether a WebSocket upgrade may come from the request's `Origin`.
///
/// Allowed: no `Origin` at all (not a browser: cross-site WebSocket
/// hijacking needs one), an origin whose host matches the request's `Host`
/// (the demo page served by this server), or one listed in `allowed`.
pub fn origin_allowed(req: &HttpRequest, allowed: &[String]) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// Counts wrong codes per client address in fixed windows and refuses an
/// address that reached the limit until its window ends.
///
/// Bounded: at most `max_clients` addresses are tracked. When full, windows
/// that ended are pruned first, then the address with the oldest window is
/// forgotten: an attacker who owns that many addresses gains nothing a
/// single-address limit could have stopped.
pub struct LoginLimiter {
    max_failures: u32,
    window: Duration,
    max_clients: usize,
    clients: Mutex<HashMap<IpAddr, FailureWindow>>,
    /// Wrong codes from everyone in the current minute, against
    /// `global_alert_per_min`.
    global: Mutex<FailureWindow>,
    global_alert_per_min: u32,
}

/// What one wrong code did to the global count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalFailures {
    /// Under the per-minute ceiling.
    Normal,
    /// This failure crossed the ceiling (once per minute).
    Crossed,
    /// Still over the ceiling.
    Over,
}

/// The window of the global ceiling.
const GLOBAL_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct FailureWindow {
    started: Instant,
    failures: u32,
}

impl LoginLimiter {
    /// `max_failures` wrong codes per `window` per address.
    pub fn new(max_failures: u32, window: Duration, max_clients: usize) -> LoginLimiter {
        LoginLimiter {
            max_failures,
            window,
            max_clients: max_clients.max(1),
            clients: Mutex::new(HashMap::new()),
            global: Mutex::new(FailureWindow {
                started: Instant::now(),
                failures: 0,
            }),
            global_alert_per_min: u32::MAX,
        }
    }

    /// Raise the alert above `per_min` wrong codes a minute from everyone.
    pub fn with_global_alert(mut self, per_min: u32) -> LoginLimiter {
        self.global_alert_per_min = per_min.max(1);
        self
    }

    /// Counts a wrong code against the global ceiling.
    pub fn record_global_failure(&self) -> GlobalFailures {
        let now = Instant::now();
        let mut g = self.global.lock();
        if now.duration_since(g.started) >= GLOBAL_WINDOW {
            *g = FailureWindow {
                started: now,
                failures: 0,
            };
        }
        g.failures = g.failures.saturating_add(1);
        match g.failures.cmp(&self.global_alert_per_min.saturating_add(1)) {
            std::cmp::Ordering::Less => GlobalFailures::Normal,
            std::cmp::Ordering::Equal => GlobalFailures::Crossed,
            std::cmp::Ordering::Greater => GlobalFailures::Over,
        }
    }

    /// Whether the global ceiling is exceeded in the current minute.
    pub fn global_alert(&self) -> bool {
        let g = self.global.lock();
        Instant::now().duration_since(g.started) < GLOBAL_WINDOW
            && g.failures > self.global_alert_per_min
    }

    /// Wrong codes allowed per window.
    pub fn max_failures(&self) -> u32 {
        self.max_failures
    }

    /// The length of a client's window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// `Err(retry_after)` when the address has used up its attempts.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut clients = self.clients.lock();
        match clients.get(&ip) {
            Some(w) if now.duration_since(w.started) >= self.window => {
                clients.remove(&ip);
                Ok(())
            }
            Some(w) if w.failures >= self.max_failures => {
                Err(self.window - now.duration_since(w.started))
            }
            _ => Ok(()),
        }
    }

    /// Records a wrong code.
    pub fn record_failure(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut clients = self.clients.lock();
        if !clients.contains_key(&ip) && clients.len() >= self.max_clients {
            let window = self.window;
            clients.retain(|_, w| now.duration_since(w.started) < window);
            if clients.len() >= self.max_clients
                && let Some(oldest) = clients
                    .iter()
                    .min_by_key(|(_, w)| w.started)
                    .map(|(ip, _)| *ip)
            {
                clients.remove(&oldest);
            }
        }
        let w = clients.entry(ip).or_insert(FailureWindow {
            started: now,
            failures: 0,
        });
        if now.duration_since(w.started) >= self.window {
            *w = FailureWindow {
                started: now,
                failures: 0,
            };
        }
        w.failures += 1;
    }

    /// Forgets the address's failures (after a correct code).
    pub fn record_success(&self, ip: IpAddr) {
        self.clients.lock().remove(&ip);
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.clients.lock().len()
    }
}

/// Rounds up: a client that waits the advertised time must get through.
fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `POST /auth/code`: checks the entry code, sets the session cookie.
pub async fn login(
    req: HttpRequest,
    body: web::Json<LoginRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let ip = state.auth.client_ip(&req);
    let key = limiter_key(ip);
    let shared_key = key.to_string();
    let limiter = &state.auth.limiter;
    let count = |outcome: &str| state.count_login(outcome);
    state.check_limiter(key)?;
    // The budget shared by every server on this Redis. Unreachable: this
    // server's own limit above still holds, and the login itself needs
    // Redis, so it is answered 503 below.
    match state.store.login_failures(&shared_key).await {
        Ok(Some((failures, left))) if failures >= limiter.max_failures() => {
            count("rate_limited");
            return Err(Error::RateLimited {
                retry_after_s: retry_after_secs(left).max(1),
            });
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "shared login limiter unavailable"),
    }
    if !password_matches(&state.auth.password, &body.code) {
        limiter.record_failure(key);
        if let Err(e) = state
            .store
            .add_login_failure(&shared_key, limiter.window())
            .await
        {
            tracing::warn!(error = %e, "shared login limiter unavailable");
        }
        match limiter.record_global_failure() {
            GlobalFailures::Crossed => {
                state.metrics.login_failure_alerts_total.inc();
                state.metrics.login_failures_alert.set(1);
                tracing::warn!(
                    "wrong entry codes from all addresses passed the per-minute ceiling"
                );
            }
            GlobalFailures::Over => state.metrics.login_failures_alert.set(1),
            GlobalFailures::Normal => state.metrics.login_failures_alert.set(0),
        }
        count("wrong_password");
        tracing::info!(%ip, "wrong entry code");
        return Err(Error::WrongPassword);
    }
    limiter.record_success(key);
    if let Err(e) = state.store.clear_login_failures(&shared_key).await {
        tracing::warn!(error = %e, "shared login limiter unavailable");
    }
    state
        .metrics
        .login_failures_alert
        .set(i64::from(limiter.global_alert()));
    let session = state.store.create().await.map_err(|e| {
        count("unavailable");
        tracing::warn!(error = %e, "login refused: session store unavailable");
        Error::from(e)
    })?;
    count("ok");
    tracing::info!(%ip, session = %SessionTag::of(session.id), "logged in");
    Ok(HttpResponse::Ok()
        .cookie(state.auth.session_cookie(session.id, session.ttl))
        .json(serde_json::json!({ "valid": true, "expires_in_s": session.ttl.as_secs() })))
}

/// `GET /auth/code`: 200 `{"valid":true}` for a valid session cookie, 401
/// otherwise, 503 when it cannot be told.
pub async fn status(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    state.authorize(&req).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "valid": true })))
}

/// `POST /auth/logout`: revokes the session (on every instance sharing the
/// Redis) and clears the cookie. Without a session it only clears the cookie.
pub async fn logout(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    if let Some(id) = session_id(&req) {
        state.store.revoke(id).await.map_err(|e| {
            tracing::warn!(session = %SessionTag::of(id), error = %e, "logout failed: session store unavailable");
            Error::from(e)
        })?;
        state.metrics.logouts_total.inc();
        tracing::info!(session = %SessionTag::of(id), "logged out");
    }
    Ok(HttpResponse::Ok()
        .cookie(state.auth.removal_cookie())
        .json(serde_json::json!({ "valid": false })))
}

impl AppState {
    /// The session behind the request's cookie: 401 without a valid one, 503
    /// when the store cannot tell.
    pub async fn authorize(&self, req: &HttpRequest) -> Result<Uuid, Error> {
        let id = session_id(req).ok_or(Error::Unauthorized)?;
        match self.store.verify(id).await? {
            SessionStatus::Valid => Ok(id),
            SessionStatus::Invalid => Err(Error::Unauthorized),
        }
    }

    /// Admission of a WebSocket upgrade: 403 from a foreign `Origin`, then as
    /// [`AppState::authorize`]; 503 while shutting down.
    ///
    /// Admission is checked once; a live connection should end when its
    /// session does (logout here or on another instance, expiry) by
    /// watching [`SessionStore::wait_until_invalid`](super::store::SessionStore::wait_until_invalid).
    pub async fn authorize_ws(&self, req: &HttpRequest) -> Result<Uuid, Error> {
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        if !origin_allowed(req, &self.config.server.allowed_origins) {
            tracing::info!(origin = ?req.headers().get(header::ORIGIN), "WebSocket from a foreign origin refused");
            return Err(Error::ForbiddenOrigin);
        }
        self.authorize(req).await
    }
}

/// Who opened a WHIP session ([`AppState::authorize_ingest`]).
pub enum Ingester {
    /// The page, with its login session (the WebRTC session ends with it).
    Login(Uuid),
    /// A bearer token (the entry code or an ingest token): a session of
    /// its own.
    Token,
}

impl AppState {
    /// Counts an entry-code attempt (a login or a WHIP bearer token) in
    /// `logins_total` by outcome.
    fn count_login(&self, outcome: &str) {
        self.metrics
            .logins_total
            .with_label_values(&[outcome])
            .inc()
    }

    /// 429 (counted) while `key` is locked out by the wrong-code limiter.
    fn check_limiter(&self, key: IpAddr) -> Result<(), Error> {
        self.auth.limiter.check(key).map_err(|retry_after| {
            self.count_login("rate_limited");
            Error::RateLimited {
                retry_after_s: retry_after_secs(retry_after),
            }
        })
    }

    /// Admission of a WHIP request: without `Authorization`, as
    /// [`AppState::authorize_ws`] (cookie and `Origin`); with `Bearer
    /// <token>`, the entry code or one of `rtc.ingest_tokens`, through the
    /// login rate limiter (401 when wrong, 429 after too many).
    pub async fn authorize_ingest(&self, req: &HttpRequest) -> Result<Ingester, Error> {
        let Some(value) = req.headers().get(header::AUTHORIZATION) else {
            return self.authorize_ws(req).await.map(Ingester::Login);
        };
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(Error::Unauthorized)?;
        let ip = self.auth.client_ip(req);
        let key = limiter_key(ip);
        let limiter = &self.auth.limiter;
        let count = |outcome: &str| self.count_login(outcome);
        self.check_limiter(key)?;
        // Every candidate compared, each in constant time: which one
        // matched must not show in the timing either.
        let matched = std::iter::once(self.auth.password.as_str())
            .chain(self.config.rtc.ingest_tokens.iter().map(String::as_str))
            .fold(false, |any, t| password_matches(t, token) | any);
        if matched {
            limiter.record_success(key);
            count("bearer_ok");
            Ok(Ingester::Token)
        } else {
            limiter.record_failure(key);
            count("wrong_token");
            tracing::info!(%ip, "wrong WHIP bearer token");
            Err(Error::Unauthorized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn password_compare() {
        assert!(password_matches("s3cret", "s3cret"));
        assert!(!password_matches("s3cret", "s3creT"));
        assert!(!password_matches("s3cret", "s3cre"));
        assert!(!password_matches("s3cret", "s3cret\0"));
        assert!(!password_matches("s3cret", ""));
        assert!(password_matches("", ""));
    }

    #[test]
    fn limiter_refuses_after_max_failures_in_window() {
        let l = LoginLimiter::new(3, Duration::from_secs(60), 100);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(ip).is_ok());
            l.record_failure(ip);
        }
        let retry = l.check(ip).unwrap_err();
        assert!(retry > Duration::from_secs(55) && retry <= Duration::from_secs(60));
        assert!(
            l.check(other).is_ok(),
            "one address must not lock out another"
        );
    }

    #[test]
    fn limiter_window_ends() {
        let l = LoginLimiter::new(1, Duration::from_millis(50), 100);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        l.record_failure(ip);
        assert!(l.check(ip).is_err());
        let deadline = Instant::now() + Duration::from_secs(5);
        while l.check(ip).is_err() {
            assert!(Instant::now() < deadline, "window never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn limiter_is_bounded() {
        let l = LoginLimiter::new(5, Duration::from_secs(60), 16);
        for i in 0..1000u32 {
            l.record_failure(IpAddr::V4(i.into()));
            assert!(l.tracked() <= 16);
        }
        // The most recent offender is still tracked.
        for _ in 0..4 {
            l.record_failure(IpAddr::V4(999u32.into()));
        }
        assert!(l.check(IpAddr::V4(999u32.into())).is_err());
    }

    #[test]
    fn global_ceiling_crosses_once_per_minute() {
        let l = LoginLimiter::new(5, Duration::from_secs(60), 100).with_global_alert(3);
        let seen: Vec<_> = (0..5).map(|_| l.record_global_failure()).collect();
        assert_eq!(
            seen,
            [
                GlobalFailures::Normal,
                GlobalFailures::Normal,
                GlobalFailures::Normal,
                GlobalFailures::Crossed,
                GlobalFailures::Over
            ]
        );
        assert!(l.global_alert());
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let proxied = Auth::new(
            "x".into(),
            false,
            LoginLimiter::new(5, Duration::from_secs(60), 10),
            TrustedProxies::parse(&["127.0.0.1/32".into()]).unwrap(),
        );
        let req = TestRequest::default()
            .peer_addr("127.0.0.1:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "6.6.6.6, 198.51.100.4"))
            .to_http_request();
        assert_eq!(
            proxied.client_ip(&req),
            "198.51.100.4".parse::<IpAddr>().unwrap()
        );
        let direct = TestRequest::default()
            .peer_addr("203.0.113.5:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "198.51.100.4"))
            .insert_header(("x-real-ip", "198.51.100.4"))
            .to_http_request();
        assert_eq!(
            proxied.client_ip(&direct),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn origin_rules() {
        let allowed = vec!["https://demo.example".to_string()];
        let req = TestRequest::default()
            .insert_header((header::HOST, "127.0.0.1:8080"))
            .to_http_request();
        assert!(origin_allowed(&req, &allowed), "no Origin: not a browser");
        let same = TestRequest::default()
            .insert_header((header::HOST, "127.0.0.1:8080"))
            .insert_header((header::ORIGIN, "http://127.0.0.1:8080"))
            .to_http_request();
        assert!(origin_allowed(&same, &allowed));
        let listed = TestRequest::default()
            .insert_header((header::HOST, "127.0.0.1:8080"))
            .insert_header((header::ORIGIN, "https://demo.example"))
            .to_http_request();
        assert!(origin_allowed(&listed, &allowed));
        let foreign = TestRequest::default()
            .insert_header((header::HOST, "127.0.0.1:8080"))
            .insert_header((header::ORIGIN, "https://evil.example"))
            .to_http_request();
        assert!(!origin_allowed(&foreign, &allowed));
        let other_port = TestRequest::default()
            .insert_header((header::HOST, "127.0.0.1:8080"))
            .insert_header((header::ORIGIN, "http://127.0.0.1:9999"))
            .to_http_request();
        assert!(!origin_allowed(&other_port, &allowed));
    }

    #[test]
    fn cookie_attributes() {
        let auth = Auth::new(
            "x".into(),
            true,
            LoginLimiter::new(5, Duration::from_secs(60), 10),
            TrustedProxies::default(),
        );
        let id = Uuid::new_v4();
        let c = auth
            .session_cookie(id, Duration::from_secs(3600))
            .to_string();
        assert!(c.starts_with(&format!("holistream_session={id}")), "{c}");
        for attr in [
            "HttpOnly",
            "SameSite=Strict",
            "Path=/",
            "Max-Age=3600",
            "Secure",
        ] {
            assert!(c.contains(attr), "{attr} missing in {c}");
        }
        let insecure = Auth::new(
            "x".into(),
            false,
            LoginLimiter::new(5, Duration::from_secs(60), 10),
            TrustedProxies::default(),
        );
        assert!(
            !insecure
                .session_cookie(id, Duration::from_secs(1))
                .to_string()
                .contains("Secure")
        );
    }
}
