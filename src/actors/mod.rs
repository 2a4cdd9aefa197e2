//! Session actors and the supervised inference pool.
//!
//! Map of this module:
//! - [`protocol`]: the WebSocket wire format (binary frame header, JSON control
//!   and server messages).
//! - [`session`]: one actix [`session::SessionActor`] per WebSocket connection:
//!   fps cap, latest-wins frame slot, the client's tracking state, stats, and
//!   the [`SessionRegistry`] that bounds and closes sessions.
//! - [`pool`]: the [`InferencePool`] handle in front of a ractor factory of
//!   inference workers: bounded queue with oldest-dropped discards, job TTL,
//!   and an answer for every job, whatever happens to it.
//! - [`worker`]: one inference worker = one ractor actor + one OS thread that
//!   owns a model instance and does the CPU work (decode, forward passes,
//!   serialisation); panics and stalls are detected and the worker replaced.
//! - [`faults`]: the fault-injection plan (`panic=0.05,stall=0.01:2s,…`).
//!
//! Data flow: WebSocket frame → session (header check, fps cap, slot) →
//! `InferencePool::submit` → factory queue → worker actor → worker thread →
//! reply (result JSON + new tracking state) → session → WebSocket.

pub mod faults;
pub mod pool;
pub mod protocol;
pub mod remote;
pub mod session;
pub mod worker;

use serde::{Deserialize, Serialize};

use crate::model::image_input::DecodeLimits;

pub use faults::{Fault, FaultPlan, FaultPlanError};
pub use pool::{FrameDone, FrameFailure, FrameJob, FrameOutput, InferencePool, PoolError};
pub use session::{SessionActor, SessionRegistry, SessionsFull};

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
    /// Fault injection, for tests (`panic=0.05,stall=0.01:2s,slow=0.1:50ms`).
    pub faults: FaultPlan,
    /// `local` (the settings above) or `redis` (remote workers, below).
    pub kind: remote::PoolKind,
    /// Settings of the remote pool, used when `kind = "redis"`.
    pub remote: remote::RemotePoolConfig,
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
            faults: FaultPlan::none(),
            kind: remote::PoolKind::Local,
            remote: remote::RemotePoolConfig::default(),
        }
    }
}

impl PoolConfig {
    /// Checks the values, with a message that names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.kind == remote::PoolKind::Redis {
            self.remote.validate()?;
            if self.remote.redis_url.is_none() {
                return Err(
                    "pool.kind = \"redis\" needs a Redis URL (REDIS_URL or --redis-url)".into(),
                );
            }
        }
        if self.workers == 0 || self.workers > 256 {
            return Err(format!(
                "pool.workers must be in 1..=256, got {}",
                self.workers
            ));
        }
        if self.queue_capacity == 0 {
            return Err("pool.queue_capacity must be at least 1".into());
        }
        if self.job_ttl_ms == 0 {
            return Err("pool.job_ttl_ms must be at least 1".into());
        }
        if self.stall_deadline_ms < 10 {
            return Err(format!(
                "pool.stall_deadline_ms must be at least 10, got {}",
                self.stall_deadline_ms
            ));
        }
        self.check_faults(&self.faults)?;
        self.decode_limits()?;
        Ok(())
    }

    /// The frame size limits of the workers.
    pub fn decode_limits(&self) -> Result<DecodeLimits, String> {
        DecodeLimits::new(self.max_frame_width, self.max_frame_height)
            .map_err(|e| format!("pool.max_frame_width/max_frame_height: {e}"))
    }

    /// A fault plan this pool may run: an injected stall never outlasts
    /// `stall_deadline_ms` (the pass after it does, so the worker is still
    /// abandoned, but the abandoned thread ends soon after), nor does an
    /// injected slowdown.
    pub fn check_faults(&self, plan: &FaultPlan) -> Result<(), String> {
        let deadline = std::time::Duration::from_millis(self.stall_deadline_ms);
        if plan.stall > 0.0 && plan.stall_for > deadline {
            return Err(format!(
                "a stall of {:?} exceeds pool.stall_deadline_ms ({} ms)",
                plan.stall_for, self.stall_deadline_ms
            ));
        }
        if plan.slow > 0.0 && plan.slow_by > deadline {
            return Err(format!(
                "a slowdown of {:?} exceeds pool.stall_deadline_ms ({} ms)",
                plan.slow_by, self.stall_deadline_ms
            ));
        }
        Ok(())
    }
}

/// Settings of each WebSocket session (`[session]` in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Frame rate cap of a new session (frames above it are dropped, counted
    /// as `dropped_fps`). The seed's default was 20.
    pub default_fps: u32,
    /// Highest fps a client may ask for with a `config` message.
    pub max_fps: u32,
    /// Interval of the `stats` message.
    pub stats_interval_ms: u64,
    /// Interval of server pings.
    pub heartbeat_interval_ms: u64,
    /// A client silent (no message at all) for this long is disconnected, and
    /// so is one that has not answered a ping for this long (it stopped
    /// reading: its results would only pile up in the socket).
    pub client_timeout_ms: u64,
    /// Largest WebSocket message accepted; a bigger one closes the
    /// connection with code 1009.
    pub max_message_bytes: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            default_fps: 20,
            max_fps: 60,
            stats_interval_ms: 1000,
            heartbeat_interval_ms: 5000,
            client_timeout_ms: 15000,
            max_message_bytes: 1 << 20,
        }
    }
}

impl SessionConfig {
    /// Checks the values, with a message that names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_fps == 0 || self.max_fps > 1000 {
            return Err(format!(
                "session.max_fps must be in 1..=1000, got {}",
                self.max_fps
            ));
        }
        if self.default_fps == 0 || self.default_fps > self.max_fps {
            return Err(format!(
                "session.default_fps must be in 1..=max_fps ({}), got {}",
                self.max_fps, self.default_fps
            ));
        }
        if self.stats_interval_ms == 0 || self.heartbeat_interval_ms == 0 {
            return Err(
                "session.stats_interval_ms and heartbeat_interval_ms must be positive".into(),
            );
        }
        if self.client_timeout_ms <= self.heartbeat_interval_ms {
            return Err(format!(
                "session.client_timeout_ms ({}) must exceed heartbeat_interval_ms ({})",
                self.client_timeout_ms, self.heartbeat_interval_ms
            ));
        }
        if self.max_message_bytes < 1024 {
            return Err(format!(
                "session.max_message_bytes must be at least 1024, got {}",
                self.max_message_bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(p.validate().unwrap_err().contains("pool.workers"));
        let p = PoolConfig {
            stall_deadline_ms: 1000,
            faults: "stall=1:3600s".parse().unwrap(),
            ..Default::default()
        };
        assert!(p.validate().unwrap_err().contains("pool.stall_deadline_ms"));
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
        assert!(p.validate().unwrap_err().contains("pool.max_frame_width"));
        assert_eq!(
            PoolConfig::default().decode_limits().unwrap(),
            DecodeLimits::CAMERA
        );
        let s = SessionConfig {
            default_fps: 100,
            max_fps: 30,
            ..Default::default()
        };
        assert!(s.validate().unwrap_err().contains("session.default_fps"));
    }
}
