//! The one configuration of the process: every section's type, from the
//! HTTP listener to the model, and how they are assembled.
//!
//! Loaded in this order, later sources overriding earlier ones: defaults, the
//! TOML file given by `--config`, environment variables, command-line flags
//! ([`args`]); then validated. Secrets come from the environment only
//! (`HOLISTREAM_PASSWORD`, `REDIS_URL`, `HOLISTREAM_ADMIN_TOKEN`; the Redis
//! URL may also be a flag): a config file gets committed, a flag shows in
//! `ps`. Environment variables are read here and nowhere else (the kernels'
//! `HOLISTREAM_ISA` aside, see [`model`]).
//!
//! Plumbing below every layer: this module imports nothing from `actors`,
//! `http`, `model` or `commands`; each of them imports its section from here.
//!
//! Map: [`pool`] (`[pool]`, `[pool.remote]`), [`session`] (`[session]`),
//! [`model`] (`[model]`), [`rtc`] (`[rtc]`), [`worker`] (`[worker]`), [`faults`] (the
//! fault-injection plan of `pool.faults`), [`limits`] (frame size limits),
//! [`args`] (the flags of `serve` and `worker`); `[server]`, `[auth]`,
//! `[redis]` and `[admin]` are below.

pub mod args;
pub mod faults;
pub mod limits;
pub mod model;
pub mod pool;
pub mod rtc;
pub mod session;
pub mod worker;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use args::{ServeArgs, WorkerArgs};
pub use faults::{Fault, FaultPlan, FaultPlanError};
pub use limits::{DecodeLimits, DecodeLimitsError};
pub use model::{Branches, ModelConfig, Nets};
pub use pool::{FaultPastDeadline, PoolConfig, PoolKind, RemotePoolConfig};
pub use rtc::RtcConfig;
pub use session::SessionConfig;
pub use worker::WorkerConfig;

/// Environment variable holding the entry code.
pub const PASSWORD_ENV: &str = "HOLISTREAM_PASSWORD";
/// Environment variable holding the Redis URL.
pub const REDIS_URL_ENV: &str = "REDIS_URL";
/// Environment variable holding the admin token (with `[admin] enabled`).
pub const ADMIN_TOKEN_ENV: &str = "HOLISTREAM_ADMIN_TOKEN";
/// Shortest admin token accepted: 128 bits as hex. The token guards fault
/// injection, which can take the service down; it must not be guessable.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// Errors of loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A [`ConfigError::Invalid`] with this message (which names the setting).
pub(crate) fn invalid(message: String) -> ConfigError {
    ConfigError::Invalid(message)
}

/// An environment variable's value, when set to something other than
/// blanks.
pub(crate) fn env_setting(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Everything `serve` needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub redis: RedisConfig,
    pub pool: PoolConfig,
    pub session: SessionConfig,
    pub admin: AdminConfig,
    pub model: ModelConfig,
    pub rtc: RtcConfig,
    /// Read by `holistream worker` only.
    pub worker: WorkerConfig,
}

/// Operator-only routes (`/admin/...`, fault injection). Off by default:
/// anything that can hurt the service must be turned on by the operator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve `/admin/...`; otherwise those paths answer 404.
    pub enabled: bool,
    /// The bearer token of `/admin/...`, separate from the entry code. From
    /// `HOLISTREAM_ADMIN_TOKEN` only, never from a file.
    #[serde(skip)]
    pub token: Option<String>,
}

/// The HTTP listener and what it serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Most WebSocket sessions open at once; more are refused with 503.
    pub max_sessions: usize,
    /// Adds `Secure` to the session cookie and sends HSTS (set it behind
    /// HTTPS; `HOLISTREAM_SECURE_COOKIE`).
    pub secure_cookie: bool,
    /// Origins allowed to open the WebSocket besides the server's own
    /// (exact match, e.g. `https://demo.example`; `HOLISTREAM_ALLOWED_ORIGINS`,
    /// comma-separated): the public origins when a proxy rewrites `Host`.
    pub allowed_origins: Vec<String>,
    /// Proxies (CIDRs, e.g. `10.0.0.0/8`, `::1/128`) whose forwarding headers
    /// (`X-Forwarded-For`, `X-Real-IP`) name the client; any other peer is
    /// the client itself. Empty: no proxy is trusted. `HOLISTREAM_TRUSTED_PROXIES`.
    pub trusted_proxies: Vec<String>,
    /// WebSockets one session (one cookie) may hold open at once on this
    /// server; more are refused with 429, so one cookie cannot take every slot.
    pub max_sockets_per_session: usize,
    /// Folder of the web demo, served at `/`.
    pub web_dir: PathBuf,
    /// Bound on the whole graceful shutdown, milliseconds.
    pub shutdown_timeout_ms: u64,
    /// actix-web worker threads (async I/O only; inference runs on the pool's
    /// own threads).
    pub http_workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            max_sessions: 64,
            secure_cookie: false,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            max_sockets_per_session: 2,
            web_dir: PathBuf::from("web"),
            shutdown_timeout_ms: 10_000,
            http_workers: 2,
        }
    }
}

/// Login and sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The entry code. Never read from or written to a file: set from
    /// `HOLISTREAM_PASSWORD`, or generated and logged once at start-up.
    #[serde(skip)]
    pub password: Option<String>,
    /// Session lifetime, seconds.
    pub session_ttl_s: u64,
    /// Wrong codes allowed per client address per window.
    pub max_failures: u32,
    /// Rate-limit window, seconds.
    pub failure_window_s: u64,
    /// Most client addresses the rate limiter remembers.
    pub max_tracked_clients: usize,
    /// How often expired sessions are swept from memory, milliseconds.
    pub sweep_interval_ms: u64,
    /// Wrong codes per minute, from all addresses together, above which the
    /// `holistream_login_failures_alert` gauge is raised (a distributed
    /// guessing attempt that no per-address limit sees).
    pub global_failures_alert_per_min: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            password: None,
            session_ttl_s: 12 * 3600,
            max_failures: 5,
            failure_window_s: 60,
            max_tracked_clients: 10_000,
            sweep_interval_ms: 30_000,
            global_failures_alert_per_min: 100,
        }
    }
}

/// The optional Redis mirror of the session store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`; from `REDIS_URL` or `--redis-url` only.
    #[serde(skip)]
    pub url: Option<String>,
    /// Bound on one Redis round trip, milliseconds.
    pub timeout_ms: u64,
    /// Age after which a cached session is re-checked against Redis,
    /// milliseconds; bounds how long a logout elsewhere goes unnoticed.
    pub recheck_ms: u64,
    /// Prefix of the keys (`<prefix>:session:<uuid>`).
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            timeout_ms: 250,
            recheck_ms: 500,
            key_prefix: "holistream".into(),
        }
    }
}

impl Config {
    /// Reads a TOML file; missing sections and keys keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Takes the secrets from the environment (an empty value counts as
    /// unset).
    pub fn apply_env(&mut self) {
        let non_empty = |name: &str| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        if let Some(p) = non_empty(PASSWORD_ENV) {
            self.auth.password = Some(p);
        }
        if let Some(u) = non_empty(REDIS_URL_ENV) {
            self.redis.url = Some(u);
        }
        if let Some(t) = non_empty(ADMIN_TOKEN_ENV) {
            self.admin.token = Some(t);
        }
    }

    /// Non-secret settings an operator (or compose) sets in the environment:
    /// lists are comma-separated, booleans `true`/`false`/`1`/`0`.
    pub fn apply_env_settings(&mut self) -> Result<(), ConfigError> {
        let non_empty = env_setting;
        let list = |v: String| -> Vec<String> {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        if let Some(v) = non_empty("HOLISTREAM_TRUSTED_PROXIES") {
            self.server.trusted_proxies = list(v);
        }
        if let Some(v) = non_empty("HOLISTREAM_ALLOWED_ORIGINS") {
            self.server.allowed_origins = list(v);
        }
        if let Some(v) = non_empty("HOLISTREAM_SECURE_COOKIE") {
            self.server.secure_cookie = parse_bool("HOLISTREAM_SECURE_COOKIE", &v)?;
        }
        if let Some(v) = non_empty("HOLISTREAM_ADMIN_ENABLED") {
            self.admin.enabled = parse_bool("HOLISTREAM_ADMIN_ENABLED", &v)?;
        }
        if let Some(v) = non_empty("HOLISTREAM_MAX_BATCH") {
            self.pool.max_batch = Some(parse_number("HOLISTREAM_MAX_BATCH", &v)?);
        }
        if let Some(v) = non_empty("HOLISTREAM_MAX_BATCH_WAIT_MS") {
            self.pool.max_batch_wait_ms = parse_number("HOLISTREAM_MAX_BATCH_WAIT_MS", &v)?;
        }
        self.model.apply_env()?;
        self.rtc.apply_env()?;
        Ok(())
    }

    /// Checks the values together; the message names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        if self.server.host.trim().is_empty() {
            return bad("server.host is empty".into());
        }
        if self.server.max_sessions == 0 {
            return bad("server.max_sessions must be at least 1".into());
        }
        if self.server.http_workers == 0 {
            return bad("server.http_workers must be at least 1".into());
        }
        if self.server.shutdown_timeout_ms == 0 {
            return bad("server.shutdown_timeout_ms must be positive".into());
        }
        if self.server.max_sockets_per_session == 0 {
            return bad("server.max_sockets_per_session must be at least 1".into());
        }
        if let Err(e) = crate::net::TrustedProxies::parse(&self.server.trusted_proxies) {
            return bad(format!("server.trusted_proxies: {e}"));
        }
        if self.admin.enabled {
            match &self.admin.token {
                None => {
                    return bad(format!(
                        "[admin] enabled = true needs a token in {ADMIN_TOKEN_ENV}"
                    ));
                }
                Some(t) if t.len() < MIN_ADMIN_TOKEN_LEN => {
                    return bad(format!(
                        "{ADMIN_TOKEN_ENV} must be at least {MIN_ADMIN_TOKEN_LEN} characters"
                    ));
                }
                Some(t) if Some(t) == self.auth.password.as_ref() => {
                    return bad(format!("{ADMIN_TOKEN_ENV} must differ from {PASSWORD_ENV}"));
                }
                Some(_) => {}
            }
        }
        if self.auth.global_failures_alert_per_min == 0 {
            return bad("auth.global_failures_alert_per_min must be at least 1".into());
        }
        for o in &self.server.allowed_origins {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                return bad(format!(
                    "server.allowed_origins: {o:?} is not an origin like \"https://host:port\""
                ));
            }
        }
        if self.auth.session_ttl_s == 0 {
            return bad("auth.session_ttl_s must be at least 1".into());
        }
        // The pool alone cannot tell whether its nets batch.
        self.pool.batch_size(self.model.nets().batches())?;
        if self.auth.max_failures == 0 {
            return bad("auth.max_failures must be at least 1".into());
        }
        if self.auth.failure_window_s == 0 {
            return bad("auth.failure_window_s must be at least 1".into());
        }
        if self.auth.max_tracked_clients == 0 {
            return bad("auth.max_tracked_clients must be at least 1".into());
        }
        if self.auth.sweep_interval_ms == 0 {
            return bad("auth.sweep_interval_ms must be positive".into());
        }
        if let Some(p) = &self.auth.password
            && p.is_empty()
        {
            return bad(format!("{PASSWORD_ENV} is set but empty"));
        }
        if let Some(url) = &self.redis.url
            && !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://")
                || url.starts_with("redis+unix://"))
        {
            // Do not echo the URL: it may hold a password.
            return bad("the Redis URL must start with redis://, rediss:// or unix://".into());
        }
        if self.redis.timeout_ms == 0 {
            return bad("redis.timeout_ms must be positive".into());
        }
        if self.redis.recheck_ms == 0 || self.redis.recheck_ms > 1_000 {
            return bad(
                "redis.recheck_ms must be in 1..=1000 (a logout elsewhere must be honoured within a second)"
                    .into(),
            );
        }
        self.pool.validate()?;
        self.session.validate()?;
        self.rtc.validate(&self.server.host)?;
        Ok(())
    }

    /// Session lifetime.
    pub fn session_ttl(&self) -> Duration {
        Duration::from_secs(self.auth.session_ttl_s)
    }

    /// Bound on the graceful shutdown.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.server.shutdown_timeout_ms)
    }
}

fn parse_number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| ConfigError::Invalid(format!("{name} must be a whole number, got {v:?}")))
}

fn parse_bool(name: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::Invalid(format!(
            "{name} must be true or false, got {v:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(Config::default().server.port, 8080);
        assert_eq!(Config::default().server.host, "127.0.0.1");
    }

    #[test]
    fn file_overrides_defaults_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("holistream.toml");
        std::fs::write(
            &path,
            "[server]\nport = 9000\n[auth]\nsession_ttl_s = 60\n[redis]\nrecheck_ms = 250\n",
        )
        .unwrap();
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c.server.port, 9000);
        assert_eq!(c.server.host, "127.0.0.1");
        assert_eq!(c.auth.session_ttl_s, 60);
        assert_eq!(c.auth.max_failures, 5);
        assert_eq!(c.redis.recheck_ms, 250);
    }

    #[test]
    fn secrets_are_not_read_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[auth]\npassword = \"hunter2\"\n").unwrap();
        let err = Config::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("password"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("typo.toml");
        std::fs::write(&path, "[server]\nprot = 1\n").unwrap();
        let err = Config::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = Config::default();
        c.redis.recheck_ms = 5_000;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("redis.recheck_ms")
        );
        let mut c = Config::default();
        c.redis.url = Some("http://localhost:6379".into());
        let msg = c.validate().unwrap_err().to_string();
        assert!(
            msg.contains("Redis URL") && !msg.contains("localhost"),
            "{msg}"
        );
        let mut c = Config::default();
        c.server.allowed_origins = vec!["evil.example".into()];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("allowed_origins")
        );
    }

    #[test]
    fn trust_and_admin_settings_are_checked() {
        let mut c = Config::default();
        assert!(!c.admin.enabled, "admin off by default");
        assert!(
            c.server.trusted_proxies.is_empty(),
            "no proxy trusted by default"
        );
        assert_eq!(c.server.max_sockets_per_session, 2);
        c.server.trusted_proxies = vec!["10.0.0.0/8".into(), "::1".into()];
        c.validate().unwrap();
        c.server.trusted_proxies = vec!["10.0.0.0/40".into()];
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("server.trusted_proxies"), "{msg}");
        let mut c = Config::default();
        c.auth.password = Some("same-as-the-admin-token-0123456789".into());
        c.admin.enabled = true;
        c.admin.token = c.auth.password.clone();
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("differ"), "{msg}");
        assert!(parse_bool("X", "TRUE").unwrap());
        assert!(!parse_bool("X", "0").unwrap());
        assert!(
            parse_bool("X", "maybe")
                .unwrap_err()
                .to_string()
                .contains("X")
        );
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        // Bound to every address, WebRTC needs the one it announces.
        std::fs::write(
            &path,
            "[server]\nport = 9000\nhost = \"0.0.0.0\"\n[rtc]\npublic_ip = \"203.0.113.9\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            port: Some(0),
            redis_url: Some("redis://127.0.0.1:7777/".into()),
            ..ServeArgs::default()
        };
        let c = args.load().unwrap();
        assert_eq!(c.server.port, 0);
        assert_eq!(c.server.host, "0.0.0.0");
        assert_eq!(c.rtc.public_ip, Some("203.0.113.9".parse().unwrap()));
        assert_eq!(c.redis.url.as_deref(), Some("redis://127.0.0.1:7777/"));
    }
}
