//! `[worker]`: the settings of `holistream worker`, the remote inference
//! process (`actors::remote::consumer`). Types and their checks only; the
//! flags that override them are in `config::args`.
//!
//! Must not import `actors`: the consumer imports its section from here.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::limits::DecodeLimits;
use super::{ConfigError, invalid};

/// Settings of a worker process (`[worker]` in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// The Redis holding the jobs stream (the gateways' `REDIS_URL`): from
    /// the environment or `--redis-url` only, never from a file.
    #[serde(skip)]
    pub redis_url: Option<String>,
    /// Pipeline threads, each with its own model. Default: the number of
    /// CPU cores.
    pub threads: usize,
    /// Name of this process in the consumer group (default: host name, pid
    /// and a random suffix). Must be unique among running workers.
    pub name: Option<String>,
    /// A job pending this long on another consumer is taken over
    /// (`XAUTOCLAIM`); longer than the slowest forward pass.
    pub claim_idle_ms: u64,
    /// Longest wait of one `XREADGROUP`; bounds how late a stop is seen.
    pub block_ms: u64,
    /// Largest frame accepted, in either orientation (the gateways'
    /// `pool.max_frame_width`); bigger frames are answered `bad_frame`
    /// before any pixel is decoded. At most 4096.
    pub max_frame_width: u32,
    /// See `max_frame_width`.
    pub max_frame_height: u32,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            redis_url: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            name: None,
            claim_idle_ms: 2000,
            block_ms: 1000,
            max_frame_width: DecodeLimits::CAMERA.max_width(),
            max_frame_height: DecodeLimits::CAMERA.max_height(),
        }
    }
}

impl WorkerConfig {
    /// Checks the values, with a message that names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.redis_url.as_deref().is_none_or(str::is_empty) {
            return Err(invalid(
                "holistream worker needs a Redis URL (REDIS_URL or --redis-url)".into(),
            ));
        }
        if self.threads == 0 || self.threads > 256 {
            return Err(invalid(format!(
                "worker.threads (--workers) must be in 1..=256, got {}",
                self.threads
            )));
        }
        if self.block_ms == 0 || self.claim_idle_ms == 0 {
            return Err(invalid(
                "worker.block_ms and worker.claim_idle_ms (--block-ms, --claim-idle-ms) must be positive"
                    .into(),
            ));
        }
        if let Some(n) = &self.name
            && (n.is_empty() || n.contains(char::is_whitespace))
        {
            return Err(invalid(format!(
                "worker.name (--name) {n:?} is empty or has spaces"
            )));
        }
        self.decode_limits()?;
        Ok(())
    }

    /// The frame size limits of the threads.
    pub fn decode_limits(&self) -> Result<DecodeLimits, ConfigError> {
        DecodeLimits::new(self.max_frame_width, self.max_frame_height).map_err(|e| {
            invalid(format!(
                "worker.max_frame_width/max_frame_height (--max-frame-width/--max-frame-height): {e}"
            ))
        })
    }

    /// `claim_idle_ms` as a duration.
    pub fn claim_idle(&self) -> Duration {
        Duration::from_millis(self.claim_idle_ms)
    }

    /// `block_ms` as a duration.
    pub fn block(&self) -> Duration {
        Duration::from_millis(self.block_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_setting() {
        let ok = WorkerConfig {
            redis_url: Some("redis://127.0.0.1:6379".into()),
            ..WorkerConfig::default()
        };
        ok.validate().unwrap();
        let msg = WorkerConfig::default().validate().unwrap_err().to_string();
        assert!(msg.contains("Redis URL"), "{msg}");
        let bad = WorkerConfig {
            threads: 0,
            ..ok.clone()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("--workers")
        );
        let bad = WorkerConfig {
            name: Some("a b".into()),
            ..ok.clone()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("--name"));
        let bad = WorkerConfig {
            max_frame_width: 5000,
            ..ok
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("--max-frame-width")
        );
    }
}
