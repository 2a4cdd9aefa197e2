//! `[pool]` and `[pool.remote]`: the inference pool's settings, for the
//! in-process pool (`actors::pool`, `actors::inference`) and the gateway side
//! of the remote one (`actors::remote::gateway`). Types and their checks
//! only: nothing here starts a thread or touches Redis.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::faults::FaultPlan;
use super::limits::DecodeLimits;
use super::{ConfigError, invalid};

/// Settings of the inference pool (`[pool]` in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Number of inference workers, each with its own model instance and OS
    /// thread. Default: the number of CPU cores.
    pub workers: usize,
    /// Jobs that may wait in the pool's queue; beyond that the oldest waiting
    /// job is dropped (and its session told `overloaded`).
    pub queue_capacity: usize,
    /// A job that waited this long in the queue is dropped (`expired`):
    /// about one frame interval, since a newer frame is on its way by then.
    pub job_ttl_ms: u64,
    /// A worker whose forward pass takes longer than this is declared
    /// stalled: its job fails, its thread is abandoned and it is replaced.
    pub stall_deadline_ms: u64,
    /// Stalled threads that may be abandoned and still running at once. Each
    /// holds a model (a few hundred MB with its buffers) until its pass ends;
    /// past this many the pool stops replacing stalled workers and reports
    /// not ready, instead of growing.
    pub max_abandoned_threads: usize,
    /// Largest frame a worker decodes, in either orientation; a bigger one is
    /// answered `bad_frame` from its header, before any pixel is decoded.
    /// At most 4096 per side. What a camera sends: Full HD by default.
    pub max_frame_width: u32,
    /// See `max_frame_width`.
    pub max_frame_height: u32,
    /// Frames one model thread runs together, from different sessions, each
    /// net once for all of them (a GPU runs a batch for about the price of
    /// one frame). Workers are grouped by this many around one model
    /// thread. Unset: as many as the workers where the nets batch (burn on
    /// a GPU device: a `wgpu` or `cuda` build with `model.nets = "burn"`),
    /// else 1. Above 1 only where the nets batch: the CPU kernels run frames
    /// one by one and gain nothing from waiting for company.
    pub max_batch: Option<usize>,
    /// How long the first frame of a batch waits for company, at most.
    pub max_batch_wait_ms: u64,
    /// Fault injection, for tests (`panic=0.05,stall=0.01:2s,slow=0.1:50ms`).
    pub faults: FaultPlan,
    /// `local` (the settings above) or `redis` (remote workers, below).
    pub kind: PoolKind,
    /// Settings of the remote pool, used when `kind = "redis"`.
    pub remote: RemotePoolConfig,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            queue_capacity: 16,
            job_ttl_ms: 100,
            stall_deadline_ms: 1500,
            max_abandoned_threads: 2,
            max_frame_width: DecodeLimits::CAMERA.max_width(),
            max_frame_height: DecodeLimits::CAMERA.max_height(),
            max_batch: None,
            max_batch_wait_ms: Self::DEFAULT_BATCH_WAIT_MS,
            faults: FaultPlan::none(),
            kind: PoolKind::Local,
            remote: RemotePoolConfig::default(),
        }
    }
}

impl PoolConfig {
    /// `max_batch_wait_ms` by default: a small part of a GPU batch's time,
    /// so that a lone frame is not held long.
    pub const DEFAULT_BATCH_WAIT_MS: u64 = 3;

    /// Frames per batch for nets that batch (`nets_batch`) or not: the
    /// setting, or its default; an error for a batch above 1 the nets would
    /// run one by one.
    pub fn batch_size(&self, nets_batch: bool) -> Result<usize, ConfigError> {
        match self.max_batch {
            None if nets_batch => Ok(self.workers),
            None => Ok(1),
            Some(n) if n == 0 || n > 256 => Err(invalid(format!(
                "pool.max_batch must be in 1..=256, got {n}"
            ))),
            Some(n) if n > 1 && !nets_batch => Err(invalid(format!(
                "pool.max_batch = {n} needs nets that run a batch at once: a build with the \
                 `wgpu` or `cuda` feature and model.nets = \"burn\""
            ))),
            Some(n) => Ok(n),
        }
    }

    /// Checks the values, with a message that names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kind == PoolKind::Redis {
            self.remote.validate()?;
            if self.remote.redis_url.is_none() {
                return Err(invalid(
                    "pool.kind = \"redis\" needs a Redis URL (REDIS_URL or --redis-url)".into(),
                ));
            }
        }
        if self.workers == 0 || self.workers > 256 {
            return Err(invalid(format!(
                "pool.workers must be in 1..=256, got {}",
                self.workers
            )));
        }
        if self.queue_capacity == 0 {
            return Err(invalid("pool.queue_capacity must be at least 1".into()));
        }
        if self.job_ttl_ms == 0 {
            return Err(invalid("pool.job_ttl_ms must be at least 1".into()));
        }
        if self.max_batch_wait_ms > 1000 {
            return Err(invalid(format!(
                "pool.max_batch_wait_ms must be at most 1000, got {}",
                self.max_batch_wait_ms
            )));
        }
        if self.stall_deadline_ms < 10 {
            return Err(invalid(format!(
                "pool.stall_deadline_ms must be at least 10, got {}",
                self.stall_deadline_ms
            )));
        }
        self.check_faults(&self.faults)
            .map_err(|e| invalid(e.to_string()))?;
        self.decode_limits()?;
        Ok(())
    }

    /// The frame size limits of the workers.
    pub fn decode_limits(&self) -> Result<DecodeLimits, ConfigError> {
        DecodeLimits::new(self.max_frame_width, self.max_frame_height)
            .map_err(|e| invalid(format!("pool.max_frame_width/max_frame_height: {e}")))
    }

    /// A fault plan this pool may run: an injected stall never outlasts
    /// `stall_deadline_ms` (the pass after it does, so the worker is still
    /// abandoned, but the abandoned thread ends soon after), nor does an
    /// injected slowdown.
    pub fn check_faults(&self, plan: &FaultPlan) -> Result<(), FaultPastDeadline> {
        let deadline = Duration::from_millis(self.stall_deadline_ms);
        let deadline_ms = self.stall_deadline_ms;
        if plan.stall > 0.0 && plan.stall_for > deadline {
            return Err(FaultPastDeadline::Stall {
                stall: plan.stall_for,
                deadline_ms,
            });
        }
        if plan.slow > 0.0 && plan.slow_by > deadline {
            return Err(FaultPastDeadline::Slow {
                slow: plan.slow_by,
                deadline_ms,
            });
        }
        Ok(())
    }
}

/// A fault plan whose injected delay outlasts `pool.stall_deadline_ms`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultPastDeadline {
    #[error("a stall of {stall:?} exceeds pool.stall_deadline_ms ({deadline_ms} ms)")]
    Stall { stall: Duration, deadline_ms: u64 },
    #[error("a slowdown of {slow:?} exceeds pool.stall_deadline_ms ({deadline_ms} ms)")]
    Slow { slow: Duration, deadline_ms: u64 },
}

/// Which pool a gateway's sessions use (`pool.kind`, `--pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Inference threads in this process.
    #[default]
    Local,
    /// `holistream worker` processes, over Redis Streams.
    Redis,
}

/// Settings of the remote pool (`[pool.remote]` in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemotePoolConfig {
    /// The Redis holding the streams: never from a file; `serve` copies the
    /// `[redis]` URL (`REDIS_URL`, `--redis-url`) here.
    #[serde(skip)]
    pub redis_url: Option<String>,
    /// This gateway's id, naming its result stream. Must be unique among the
    /// gateways sharing a Redis; default: a fresh uuid at each start.
    pub gateway_id: Option<String>,
    /// Jobs the shared jobs stream keeps (`XADD MAXLEN ~`); older ones are
    /// trimmed, so a backlog drops the oldest frames.
    pub max_backlog: usize,
    /// Jobs of this gateway waiting for an answer; more are refused as
    /// overloaded without touching Redis.
    pub max_in_flight: usize,
    /// A job no worker took within this time is skipped (`expired`).
    pub job_ttl_ms: u64,
    /// How long past its deadline a job taken by a worker may take before it
    /// is answered `lost`. Longer than the slowest forward pass.
    pub reply_timeout_ms: u64,
    /// How often the gateway checks its waiting jobs against the stream
    /// (trimmed, expired, lost).
    pub sweep_interval_ms: u64,
}

impl Default for RemotePoolConfig {
    fn default() -> Self {
        RemotePoolConfig {
            redis_url: None,
            gateway_id: None,
            max_backlog: 64,
            max_in_flight: 256,
            job_ttl_ms: 500,
            reply_timeout_ms: 3000,
            sweep_interval_ms: 50,
        }
    }
}

impl RemotePoolConfig {
    /// Checks the values, with a message that names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.gateway_id
            && (id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(invalid(format!(
                "pool.remote.gateway_id must be 1 to 64 of [A-Za-z0-9_-], got {id:?}"
            )));
        }
        if self.max_backlog == 0 || self.max_in_flight == 0 {
            return Err(invalid(
                "pool.remote.max_backlog and max_in_flight must be at least 1".into(),
            ));
        }
        if self.job_ttl_ms == 0 || self.reply_timeout_ms == 0 || self.sweep_interval_ms == 0 {
            return Err(invalid(
                "pool.remote.job_ttl_ms, reply_timeout_ms and sweep_interval_ms must be positive"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SessionConfig;

    #[test]
    fn defaults_are_valid() {
        PoolConfig::default().validate().unwrap();
        SessionConfig::default().validate().unwrap();
        assert_eq!(SessionConfig::default().default_fps, 20);
    }

    #[test]
    fn partial_toml_keeps_defaults_and_parses_faults() {
        let p: PoolConfig = toml::from_str("workers = 3\nfaults = \"panic=0.1\"").unwrap();
        assert_eq!(p.workers, 3);
        assert_eq!(p.faults.panic, 0.1);
        assert_eq!(p.queue_capacity, PoolConfig::default().queue_capacity);
        assert!(toml::from_str::<PoolConfig>("faults = \"panic=9\"").is_err());
        assert!(toml::from_str::<PoolConfig>("wrokers = 3").is_err());
    }

    #[test]
    fn validation_names_the_setting() {
        let p = PoolConfig {
            workers: 0,
            ..Default::default()
        };
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("pool.workers")
        );
        let p = PoolConfig {
            stall_deadline_ms: 1000,
            faults: "stall=1:3600s".parse().unwrap(),
            ..Default::default()
        };
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("pool.stall_deadline_ms")
        );
        let p = PoolConfig {
            stall_deadline_ms: 1000,
            faults: "stall=1:1s".parse().unwrap(),
            ..Default::default()
        };
        p.validate().unwrap();
        let p = PoolConfig {
            max_frame_width: 8192,
            ..Default::default()
        };
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("pool.max_frame_width")
        );
        assert_eq!(
            PoolConfig::default().decode_limits().unwrap(),
            DecodeLimits::CAMERA
        );
        let s = SessionConfig {
            default_fps: 100,
            max_fps: 30,
            ..Default::default()
        };
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("session.default_fps")
        );
    }

    #[test]
    fn batches_only_where_the_nets_batch() {
        let p = PoolConfig {
            workers: 6,
            ..Default::default()
        };
        assert_eq!(p.batch_size(false).unwrap(), 1);
        assert_eq!(p.batch_size(true).unwrap(), 6);
        let p = PoolConfig {
            max_batch: Some(4),
            ..Default::default()
        };
        assert_eq!(p.batch_size(true).unwrap(), 4);
        let e = p.batch_size(false).unwrap_err().to_string();
        assert!(
            e.contains("pool.max_batch = 4") && e.contains("wgpu"),
            "{e}"
        );
        let p = PoolConfig {
            max_batch: Some(1),
            ..Default::default()
        };
        assert_eq!(p.batch_size(false).unwrap(), 1);
        let p = PoolConfig {
            max_batch: Some(0),
            ..Default::default()
        };
        assert!(p.batch_size(true).is_err());
        let p: PoolConfig = toml::from_str("max_batch = 8\nmax_batch_wait_ms = 5").unwrap();
        assert_eq!((p.max_batch, p.max_batch_wait_ms), (Some(8), 5));
        let p = PoolConfig {
            max_batch_wait_ms: 5000,
            ..Default::default()
        };
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("max_batch_wait_ms")
        );
    }

    #[test]
    fn remote_validation_names_the_setting() {
        RemotePoolConfig::default().validate().unwrap();
        let c = RemotePoolConfig {
            gateway_id: Some("bad id".into()),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("gateway_id"));
        let c = RemotePoolConfig {
            max_backlog: 0,
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_backlog")
        );
    }
}
