//! The HTTP server: actix-web in front of the session actors and the
//! inference pool.
//!
//! Map of this module:
//! - [`auth`]: entry-code login, session cookies, wrong-code rate limiter,
//!   WebSocket admission ([`AppState::authorize_ws`]).
//! - [`store`]: which sessions are valid; in memory, mirrored in Redis.
//! - [`ws`]: the `/ws` upgrade into a session actor; [`whip`]: `POST
//!   /whip` (WebRTC ingest, RFC 9725) into a WebRTC session; [`admin`]: run-time
//!   fault injection, off unless the operator enables it (404 otherwise).
//! - [`error`]: the one HTTP error type. `/metrics` renders the root
//!   [`crate::metrics`].
//!
//! [`run`] wires them together and is what `holistream serve`
//! (`commands::serve`) and the integration tests call, on a listener they
//! bound themselves. Imports `actors` and the root plumbing; nothing from
//! `commands`.

pub mod admin;
pub mod auth;
pub mod error;
pub mod store;
pub mod whip;
pub mod ws;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::ContentType;
use actix_web::middleware::DefaultHeaders;
use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::actors::{InferencePool, RtcEngine, SessionRegistry};
use crate::config::{Config, PASSWORD_ENV};

use crate::metrics::Metrics;
pub use auth::{Auth, LoginLimiter, SESSION_COOKIE};
pub use error::Error;
pub use store::{SessionStore, StoreSettings};

/// Largest JSON body accepted by the auth and admin endpoints.
const JSON_LIMIT_BYTES: usize = 4 * 1024;

/// What every handler shares. Built once by [`run`].
pub struct AppState {
    pub config: Arc<Config>,
    pub store: SessionStore,
    pub pool: InferencePool,
    pub sessions: SessionRegistry,
    pub metrics: Metrics,
    /// Cancelled when the server shuts down; session actors close on it.
    pub shutdown: CancellationToken,
    pub auth: Auth,
    /// WebRTC ingest; `None` when `rtc.enabled` is off (`/whip` is 404).
    pub rtc: Option<RtcEngine>,
}

/// The Content-Security-Policy of every response: the demo's own scripts,
/// styles and connections only, no inline script, never framed. `blob:` and
/// `data:` for the camera's video and the overlay's images.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// HSTS when the server sits behind HTTPS (`server.secure_cookie`): a year,
/// subdomains left alone (the operator's other hosts are not ours to pin).
const STRICT_TRANSPORT_SECURITY: &str = "max-age=31536000";

/// Security headers added to every response (handlers' own win).
fn security_headers(secure: bool) -> DefaultHeaders {
    let headers = DefaultHeaders::new()
        .add(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "no-referrer"))
        .add(("Cross-Origin-Opener-Policy", "same-origin"));
    if secure {
        headers.add(("Strict-Transport-Security", STRICT_TRANSPORT_SECURITY))
    } else {
        headers
    }
}

/// Registers every route. The static web demo comes last: it answers every
/// path the API does not.
fn routes(cfg: &mut web::ServiceConfig, web_dir: &std::path::Path, admin_enabled: bool) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(JSON_LIMIT_BYTES)
            .error_handler(|err, _req| {
                Error::BadRequest(format!("invalid JSON body: {err}")).into()
            }),
    )
    .service(
        web::resource("/auth/code")
            .route(web::get().to(auth::status))
            .route(web::post().to(auth::login)),
    )
    .route("/auth/logout", web::post().to(auth::logout))
    .route("/ws", web::get().to(ws::ws_route))
    .route("/whip", web::post().to(whip::post))
    .service(
        web::resource("/whip/{id}")
            .route(web::delete().to(whip::delete))
            .route(web::patch().to(whip::patch)),
    )
    .service(
        web::resource("/whip/{gateway}/{id}")
            .route(web::delete().to(whip::delete_on))
            .route(web::patch().to(whip::patch)),
    )
    .configure(|cfg| admin::routes(cfg, admin_enabled))
    .route("/metrics", web::get().to(metrics_route))
    .route("/healthz", web::get().to(healthz))
    .route("/readyz", web::get().to(readyz));
    if web_dir.is_dir() {
        cfg.service(actix_files::Files::new("/", web_dir).index_file("index.html"));
    }
}

async fn metrics_route(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

/// Liveness: the process answers HTTP.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(r#"{"status":"ok"}"#)
}

/// Readiness: the pool is started (it is, once `run` serves requests), the
/// server is not shutting down, and Redis answers when configured.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.shutdown.is_cancelled() {
        return HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"ready": false, "reason": "shutting down"}));
    }
    if let Err(e) = state.store.ping().await {
        tracing::debug!(error = %e, "not ready: Redis unreachable");
        return HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"ready": false, "reason": "session store unreachable"}));
    }
    if let Some(why) = state.pool.degraded() {
        tracing::debug!(%why, "not ready: inference pool degraded");
        return HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"ready": false, "reason": "inference pool degraded"}));
    }
    HttpResponse::Ok().json(serde_json::json!({"ready": true}))
}

/// The entry code from the config, or a random one logged once.
fn resolve_password(config: &Config) -> String {
    match &config.auth.password {
        Some(p) => p.clone(),
        None => {
            let p = uuid::Uuid::new_v4().simple().to_string();
            tracing::warn!(
                code = %p,
                "{PASSWORD_ENV} is not set: generated this entry code for this run"
            );
            p
        }
    }
}

/// Serves until `shutdown` is cancelled, then shuts down gracefully within
/// `server.shutdown_timeout_ms`: stop accepting, let session actors close
/// their WebSockets with a close frame (they watch the same token), drain the
/// pool.
///
/// Must run inside an actix system (`#[actix_web::main]`,
/// `actix_web::rt::System::new().block_on(..)`): session actors need one.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    let config = Arc::new(config);
    let metrics = Metrics::new();
    let password = resolve_password(&config);

    let store = SessionStore::new(
        StoreSettings {
            ttl: config.session_ttl(),
            redis_url: config.redis.url.clone(),
            redis_timeout: Duration::from_millis(config.redis.timeout_ms),
            recheck: Duration::from_millis(config.redis.recheck_ms),
            key_prefix: config.redis.key_prefix.clone(),
        },
        metrics.clone(),
    )
    .context("setting up the session store")?;
    if store.is_mirrored()
        && let Err(e) = store.ping().await
    {
        // Not fatal: readiness reports it and the store reconnects by itself.
        tracing::warn!(error = %e, "Redis unreachable at start-up; logins get 503 until it answers");
    }

    let pool = InferencePool::start(&config.pool, &config.model, metrics.clone())
        .await
        .context("starting the inference pool")?;
    let sessions = SessionRegistry::new(
        config.server.max_sessions,
        config.server.max_sockets_per_session,
        metrics.clone(),
    );
    let limiter = LoginLimiter::new(
        config.auth.max_failures,
        Duration::from_secs(config.auth.failure_window_s),
        config.auth.max_tracked_clients,
    )
    .with_global_alert(config.auth.global_failures_alert_per_min);
    let rtc = if config.rtc.enabled {
        let engine = RtcEngine::start(
            &config.rtc,
            &config.server.host,
            config.pool.decode_limits()?,
            metrics.clone(),
            shutdown.clone(),
        )
        .context("starting WebRTC ingest")?;
        tracing::info!(udp = %engine.local_addr(), "WebRTC ingest (WHIP) listening");
        Some(engine)
    } else {
        None
    };
    let proxies = crate::net::TrustedProxies::parse(&config.server.trusted_proxies)
        .context("server.trusted_proxies")?;
    let state = web::Data::new(AppState {
        config: config.clone(),
        store: store.clone(),
        pool: pool.clone(),
        sessions: sessions.clone(),
        metrics,
        shutdown: shutdown.clone(),
        auth: Auth::new(password, config.server.secure_cookie, limiter, proxies),
        rtc,
    });
    let sweeper = store.spawn_sweeper(
        Duration::from_millis(config.auth.sweep_interval_ms),
        shutdown.clone(),
    );

    if !config.server.web_dir.is_dir() {
        tracing::warn!(dir = %config.server.web_dir.display(), "web demo folder not found; serving the API only");
    }
    let web_dir = config.server.web_dir.clone();
    let (admin_enabled, secure) = (config.admin.enabled, config.server.secure_cookie);
    if admin_enabled {
        tracing::warn!("admin routes enabled (/admin/faults, bearer token)");
    }
    // actix's own graceful timeout gets half the budget; the pool drain the
    // rest.
    let http_grace_s = (config.shutdown_timeout().as_secs() / 2).max(1);
    let server = HttpServer::new(move || {
        App::new()
            .wrap(security_headers(secure))
            .app_data(state.clone())
            .configure(|cfg| routes(cfg, &web_dir, admin_enabled))
    })
    .workers(config.server.http_workers)
    .disable_signals()
    .shutdown_signal(shutdown.clone().cancelled_owned())
    .shutdown_timeout(http_grace_s)
    .listen(listener)
    .context("listening")?
    .run();
    tracing::info!(%addr, redis = store.is_mirrored(), workers = config.pool.workers, admin = admin_enabled, "serving");

    // actix's graceful stop waits for open connections, so the WebSocket
    // sessions must be told to close as soon as the token is cancelled, not
    // after the server future returns.
    let closer = {
        let (sessions, shutdown) = (sessions.clone(), shutdown.clone());
        actix_web::rt::spawn(async move {
            shutdown.cancelled().await;
            tracing::info!(open = sessions.active(), "shutting down: closing sessions");
            sessions.close_all();
        })
    };
    let served = server.await;
    // The server also ends when actix stops by itself; make sure every
    // background loop sees it.
    shutdown.cancel();
    let _ = closer.await;
    tracing::info!("HTTP server stopped; draining the pool");
    let budget = config
        .shutdown_timeout()
        .saturating_sub(Duration::from_secs(http_grace_s))
        .max(Duration::from_millis(100));
    if tokio::time::timeout(budget, pool.shutdown()).await.is_err() {
        tracing::warn!("inference pool did not drain within the shutdown timeout");
    }
    let _ = sweeper.await;
    tracing::info!("shut down");
    served.context("HTTP server failed")
}
