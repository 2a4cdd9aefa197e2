//! The session store: which login sessions (cookie uuids) are valid.
//!
//! Sessions live in a local map (uuid → expiry). With a Redis URL the map is a
//! cache in front of Redis, which is the source of truth shared by every
//! server instance:
//!
//! - `create` and `revoke` write through to Redis first (`SET
//!   holistream:session:<uuid> 1 EX ttl`, `DEL`), and change the local map only
//!   once Redis has acknowledged, so a failed write never leaves the instances
//!   disagreeing.
//! - `verify` answers from the local map while its last confirmation by Redis
//!   is younger than `recheck` (default 500 ms), and asks Redis (`PTTL`)
//!   otherwise. That is how a logout on another instance is honoured here
//!   within a second, without a pub/sub subscription whose messages would be
//!   lost while a connection is down: re-verification heals by itself, a missed
//!   revocation message would not.
//! - Redis unreachable: a session this instance has verified before keeps
//!   being accepted until its own expiry (streaming goes on), a session it has
//!   never seen cannot be verified and new sessions cannot be created: both are
//!   [`StoreError::Unavailable`], which HTTP maps to 503 (fail closed). A
//!   revocation made elsewhere during the outage is learned when Redis returns.
//!
//! - Redis restarted empty (no persistence, as compose runs it): every
//!   session key is gone, which would read as "logged out everywhere". To
//!   tell the two apart, Redis holds an epoch marker (`<prefix>:epoch`, a
//!   random value set only when absent) read with every check; each local
//!   entry remembers the epoch it was last confirmed under. A session missing
//!   under a *new* epoch was lost with Redis's data, not revoked: this
//!   instance writes it back with its remaining lifetime and streaming goes
//!   on. The price: a logout made elsewhere in the last `recheck` before the
//!   data loss is undone.
//!
//! Every Redis call is bounded by `redis.timeout_ms`, so a dead Redis never
//! hangs a request; the `ConnectionManager` reconnects by itself in the
//! background, and the next call after Redis is back simply succeeds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::Metrics;

/// Errors of the session store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis did not answer in time or refused the command; the session state
    /// cannot be read or written.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// The Redis URL could not be parsed.
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(String),
}

/// Settings of the store, taken from `Config` by the server.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Lifetime of a session from its creation.
    pub ttl: Duration,
    /// Redis URL; `None` keeps sessions in this process only.
    pub redis_url: Option<String>,
    /// Upper bound of one Redis round trip, connection attempts included.
    pub redis_timeout: Duration,
    /// Age after which a cached verification is re-checked against Redis.
    pub recheck: Duration,
    /// Key prefix in Redis: keys are `<prefix>:session:<uuid>`.
    pub key_prefix: String,
}

/// A freshly created session.
#[derive(Debug, Clone, Copy)]
pub struct NewSession {
    pub id: Uuid,
    pub ttl: Duration,
}

/// Verdict of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
    Valid,
    /// Unknown, expired or revoked.
    Invalid,
}

/// What the local map knows of one session.
#[derive(Debug, Clone)]
struct LocalEntry {
    expires: Instant,
    /// When Redis last confirmed the session (creation counts); unused
    /// without Redis.
    confirmed: Instant,
    /// Redis's epoch marker at that confirmation (empty without Redis).
    epoch: Epoch,
}

/// The value of the epoch marker: shared, since every entry holds one.
type Epoch = Arc<str>;

/// The Redis side of the store.
struct RedisMirror {
    conn: ConnectionManager,
    timeout: Duration,
    prefix: String,
}

impl RedisMirror {
    fn key(&self, id: Uuid) -> String {
        format!("{}:session:{}", self.prefix, id)
    }

    /// Runs one command under the store's timeout, mapping every failure to
    /// `Unavailable`.
    async fn bounded<T>(
        &self,
        what: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("{what}: {e}"))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "{what}: no answer within {:?}",
                self.timeout
            ))),
        }
    }

    fn epoch_key(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// Adds "set the epoch marker if absent, read it" to a pipeline; a fresh
    /// random value only wins on an empty Redis.
    fn with_epoch<'p>(&self, pipe: &'p mut redis::Pipeline) -> &'p mut redis::Pipeline {
        let key = self.epoch_key();
        let fresh = Uuid::new_v4().simple().to_string();
        pipe.cmd("SET")
            .arg(&key)
            .arg(fresh)
            .arg("NX")
            .ignore()
            .get(key)
    }

    /// Writes the session with `ttl`; returns the epoch it was written under.
    async fn put(&self, id: Uuid, ttl: Duration) -> Result<Epoch, StoreError> {
        let mut conn = self.conn.clone();
        let key = self.key(id);
        let ttl_ms = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(key)
            .arg(1)
            .arg("PX")
            .arg(ttl_ms)
            .ignore();
        let (epoch,): (String,) = self
            .bounded("SET", self.with_epoch(&mut pipe).query_async(&mut conn))
            .await?;
        Ok(epoch.into())
    }

    async fn delete(&self, id: Uuid) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let key = self.key(id);
        self.bounded("DEL", conn.del::<_, ()>(key)).await
    }

    /// Remaining lifetime of the session in Redis, `None` when absent, and
    /// the epoch marker.
    async fn remaining(&self, id: Uuid) -> Result<(Option<Duration>, Epoch), StoreError> {
        let mut conn = self.conn.clone();
        let key = self.key(id);
        let mut pipe = redis::pipe();
        pipe.pttl(key);
        let (pttl, epoch): (i64, String) = self
            .bounded("PTTL", self.with_epoch(&mut pipe).query_async(&mut conn))
            .await?;
        let left = match pttl {
            // -2: no such key. -1: a key without expiry, which this store
            // never writes; refuse it rather than accept a session forever.
            ms if ms <= 0 => None,
            ms => Some(Duration::from_millis(ms as u64)),
        };
        Ok((left, epoch.into()))
    }

    fn failures_key(&self, client: &str) -> String {
        format!("{}:login_failures:{}", self.prefix, client)
    }

    /// Wrong codes counted for `client` in its current window, and the time
    /// left in that window.
    async fn failures(&self, client: &str) -> Result<(u32, Duration), StoreError> {
        let mut conn = self.conn.clone();
        let key = self.failures_key(client);
        let (count, pttl): (Option<u32>, i64) = self
            .bounded(
                "GET/PTTL",
                redis::pipe().get(&key).pttl(&key).query_async(&mut conn),
            )
            .await?;
        Ok((
            count.unwrap_or(0),
            Duration::from_millis(pttl.max(0) as u64),
        ))
    }

    /// Counts one wrong code: a fixed window that starts with the first
    /// failure (`PEXPIRE .. NX` sets the expiry only on a fresh key).
    async fn add_failure(&self, client: &str, window: Duration) -> Result<u32, StoreError> {
        let mut conn = self.conn.clone();
        let key = self.failures_key(client);
        let window_ms = window.as_millis().max(1) as u64;
        let (count, _): (u32, i64) = self
            .bounded(
                "INCR/PEXPIRE",
                redis::pipe()
                    .atomic()
                    .incr(&key, 1)
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(window_ms)
                    .arg("NX")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(count)
    }

    async fn clear_failures(&self, client: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let key = self.failures_key(client);
        self.bounded("DEL", conn.del::<_, ()>(key)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.bounded("PING", redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .map(|_| ())
    }
}

struct Inner {
    /// std-style mutex (parking_lot): held only for map operations, never
    /// across an await, so an async mutex would only add overhead.
    local: Mutex<HashMap<Uuid, LocalEntry>>,
    redis: Option<RedisMirror>,
    ttl: Duration,
    recheck: Duration,
    metrics: Metrics,
}

/// Cloneable handle to the session store.
#[derive(Clone)]
pub struct SessionStore {
    inner: Arc<Inner>,
}

impl SessionStore {
    /// Builds the store. With a Redis URL the connection is opened lazily:
    /// the server starts even while Redis is down (readiness reports it).
    /// Must be called inside a tokio runtime that outlives the store: the
    /// connection's background tasks are spawned there.
    pub fn new(settings: StoreSettings, metrics: Metrics) -> Result<SessionStore, StoreError> {
        let redis = match &settings.redis_url {
            None => None,
            Some(url) => {
                let client = redis::Client::open(url.as_str())
                    .map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
                // Few, fast retries: the caller's timeout bounds each call
                // anyway, and the manager starts a fresh reconnect on the next
                // call after the retries are used up.
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(settings.redis_timeout))
                    .set_response_timeout(Some(settings.redis_timeout))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                let conn = ConnectionManager::new_lazy_with_config(client, cfg)
                    .map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
                Some(RedisMirror {
                    conn,
                    timeout: settings.redis_timeout,
                    prefix: settings.key_prefix.clone(),
                })
            }
        };
        Ok(SessionStore {
            inner: Arc::new(Inner {
                local: Mutex::new(HashMap::new()),
                redis,
                ttl: settings.ttl,
                recheck: settings.recheck,
                metrics,
            }),
        })
    }

    /// Whether sessions are mirrored in Redis.
    pub fn is_mirrored(&self) -> bool {
        self.inner.redis.is_some()
    }

    /// Session lifetime.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Creates a session with a fresh random uuid, written to Redis first when
    /// mirrored.
    pub async fn create(&self) -> Result<NewSession, StoreError> {
        let id = Uuid::new_v4();
        let ttl = self.inner.ttl;
        let epoch = match &self.inner.redis {
            Some(redis) => redis
                .put(id, ttl)
                .await
                .inspect_err(|_| self.redis_failed())?,
            None => Epoch::from(""),
        };
        let now = Instant::now();
        self.insert_local(
            id,
            LocalEntry {
                expires: now + ttl,
                confirmed: now,
                epoch,
            },
        );
        Ok(NewSession { id, ttl })
    }

    /// Revokes a session everywhere. With Redis, nothing changes unless Redis
    /// acknowledged the delete: otherwise this instance would refuse a session
    /// that the others still accept.
    pub async fn revoke(&self, id: Uuid) -> Result<(), StoreError> {
        if let Some(redis) = &self.inner.redis {
            redis
                .delete(id)
                .await
                .inspect_err(|_| self.redis_failed())?;
        }
        self.remove_local(id);
        Ok(())
    }

    /// Checks a session. `Err(Unavailable)` means it cannot be told: Redis is
    /// unreachable and this instance has never verified the session.
    pub async fn verify(&self, id: Uuid) -> Result<SessionStatus, StoreError> {
        let now = Instant::now();
        let cached = self.inner.local.lock().get(&id).cloned();
        if let Some(entry) = &cached
            && entry.expires <= now
        {
            self.remove_local(id);
            return Ok(SessionStatus::Invalid);
        }
        let Some(redis) = &self.inner.redis else {
            return Ok(match cached {
                Some(_) => SessionStatus::Valid,
                None => SessionStatus::Invalid,
            });
        };
        if let Some(entry) = &cached
            && now.duration_since(entry.confirmed) < self.inner.recheck
        {
            return Ok(SessionStatus::Valid);
        }
        match redis.remaining(id).await {
            Ok((Some(left), epoch)) => {
                let now = Instant::now();
                self.insert_local(
                    id,
                    LocalEntry {
                        expires: now + left,
                        confirmed: now,
                        epoch,
                    },
                );
                Ok(SessionStatus::Valid)
            }
            Ok((None, epoch)) => match cached {
                // Confirmed under another epoch: Redis lost its data since
                // (restarted empty), the session was not revoked. Written
                // back with the lifetime it had left.
                Some(entry) if entry.epoch != epoch => {
                    let left = entry.expires.saturating_duration_since(Instant::now());
                    let epoch = redis
                        .put(id, left)
                        .await
                        .inspect_err(|_| self.redis_failed())?;
                    tracing::info!(
                        session = %crate::session_id::SessionTag::of(id),
                        "Redis lost its data (new epoch): session written back"
                    );
                    self.insert_local(
                        id,
                        LocalEntry {
                            expires: entry.expires,
                            confirmed: Instant::now(),
                            epoch,
                        },
                    );
                    Ok(SessionStatus::Valid)
                }
                _ => {
                    self.remove_local(id);
                    Ok(SessionStatus::Invalid)
                }
            },
            Err(e) => {
                self.redis_failed();
                // Known and unexpired here: keep accepting it through the
                // outage (see the module doc).
                if cached.is_some() {
                    tracing::debug!(session = %crate::session_id::SessionTag::of(id), error = %e, "Redis unreachable, accepting a session verified before");
                    Ok(SessionStatus::Valid)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Resolves once the session is no longer valid (revoked here or on another
    /// instance, or expired), checking every `recheck` interval. An
    /// unreachable Redis does not end it. For live connections: select on it
    /// beside the connection's own work, drop it to stop watching.
    pub async fn wait_until_invalid(&self, id: Uuid) {
        let mut tick = tokio::time::interval(self.inner.recheck.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Ok(SessionStatus::Invalid) = self.verify(id).await {
                return;
            }
        }
    }

    /// Readiness: Redis answers (always true without Redis).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.inner.redis {
            Some(redis) => redis.ping().await.inspect_err(|_| self.redis_failed()),
            None => Ok(()),
        }
    }

    /// Removes expired sessions from the local map; returns how many. Redis
    /// expires its copies by itself.
    pub fn sweep_expired(&self) -> usize {
        let now = Instant::now();
        let mut local = self.inner.local.lock();
        let before = local.len();
        local.retain(|_, e| e.expires > now);
        let swept = before - local.len();
        self.inner.metrics.store_sessions.set(local.len() as i64);
        swept
    }

    /// Sessions in the local map (expired ones not yet swept included).
    pub fn local_len(&self) -> usize {
        self.inner.local.lock().len()
    }

    /// Sweeps expired sessions every `every` until `shutdown` is cancelled.
    pub fn spawn_sweeper(
        &self,
        every: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        let swept = store.sweep_expired();
                        if swept > 0 {
                            tracing::debug!(swept, "expired sessions swept");
                        }
                    }
                }
            }
        })
    }

    /// Wrong entry codes of one client key shared by every server on this
    /// Redis: `(count, time left in its window)`. `None` without Redis (the
    /// caller's in-memory limiter is then the only one).
    pub async fn login_failures(
        &self,
        client: &str,
    ) -> Result<Option<(u32, Duration)>, StoreError> {
        let Some(redis) = &self.inner.redis else {
            return Ok(None);
        };
        let got = redis.failures(client).await;
        if got.is_err() {
            self.redis_failed();
        }
        got.map(Some)
    }

    /// Counts a wrong code for `client` in Redis (no-op without Redis).
    pub async fn add_login_failure(
        &self,
        client: &str,
        window: Duration,
    ) -> Result<Option<u32>, StoreError> {
        let Some(redis) = &self.inner.redis else {
            return Ok(None);
        };
        let got = redis.add_failure(client, window).await;
        if got.is_err() {
            self.redis_failed();
        }
        got.map(Some)
    }

    /// Forgets `client`'s wrong codes in Redis after a correct one.
    pub async fn clear_login_failures(&self, client: &str) -> Result<(), StoreError> {
        let Some(redis) = &self.inner.redis else {
            return Ok(());
        };
        let got = redis.clear_failures(client).await;
        if got.is_err() {
            self.redis_failed();
        }
        got
    }

    fn insert_local(&self, id: Uuid, entry: LocalEntry) {
        let mut local = self.inner.local.lock();
        local.insert(id, entry);
        self.inner.metrics.store_sessions.set(local.len() as i64);
    }

    fn remove_local(&self, id: Uuid) {
        let mut local = self.inner.local.lock();
        local.remove(&id);
        self.inner.metrics.store_sessions.set(local.len() as i64);
    }

    fn redis_failed(&self) {
        self.inner.metrics.store_redis_errors_total.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ttl: Duration) -> StoreSettings {
        StoreSettings {
            ttl,
            redis_url: None,
            redis_timeout: Duration::from_millis(200),
            recheck: Duration::from_millis(500),
            key_prefix: "holistream-test".into(),
        }
    }

    #[tokio::test]
    async fn in_memory_create_verify_revoke() {
        let store = SessionStore::new(settings(Duration::from_secs(60)), Metrics::new()).unwrap();
        let s = store.create().await.unwrap();
        assert_eq!(store.verify(s.id).await.unwrap(), SessionStatus::Valid);
        assert_eq!(
            store.verify(Uuid::new_v4()).await.unwrap(),
            SessionStatus::Invalid
        );
        store.revoke(s.id).await.unwrap();
        assert_eq!(store.verify(s.id).await.unwrap(), SessionStatus::Invalid);
    }

    #[tokio::test]
    async fn sessions_expire_and_are_swept() {
        let store =
            SessionStore::new(settings(Duration::from_millis(150)), Metrics::new()).unwrap();
        let a = store.create().await.unwrap();
        assert_eq!(store.verify(a.id).await.unwrap(), SessionStatus::Valid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.verify(a.id).await.unwrap() == SessionStatus::Valid {
            assert!(Instant::now() < deadline, "session never expired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // verify dropped the expired entry itself; the sweeper catches the
        // ones nobody asks about.
        let b = store.create().await.unwrap();
        while store.sweep_expired() == 0 {
            assert!(Instant::now() < deadline, "session never swept");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(store.local_len(), 0);
        assert_eq!(store.verify(b.id).await.unwrap(), SessionStatus::Invalid);
    }

    #[tokio::test]
    async fn unreachable_redis_fails_closed_for_new_sessions() {
        // Port 1 on loopback: nothing listens there, connections are refused.
        let mut s = settings(Duration::from_secs(60));
        s.redis_url = Some("redis://127.0.0.1:1/".into());
        let store = SessionStore::new(s, Metrics::new()).unwrap();
        assert!(matches!(
            store.create().await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            store.verify(Uuid::new_v4()).await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(store.ping().await.is_err());
    }

    #[test]
    fn invalid_url_is_refused() {
        let mut s = settings(Duration::from_secs(60));
        s.redis_url = Some("not a url".into());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        assert!(matches!(
            SessionStore::new(s, Metrics::new()),
            Err(StoreError::InvalidUrl(_))
        ));
    }
}
