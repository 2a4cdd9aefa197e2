//! `[session]`: the settings of each WebSocket session (`actors::session`).
//! Types and their checks only.
//!
//! Must not import `actors`: the session imports its section from here.

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

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
    /// Most people a client may ask for with a `config` message
    /// (`"people":N`). Each person runs every stage of the pipeline, so a
    /// frame costs up to this many times a single-person one.
    pub max_people: usize,
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
            max_people: 6,
        }
    }
}

impl SessionConfig {
    /// Checks the values, with a message that names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_fps == 0 || self.max_fps > 1000 {
            return Err(invalid(format!(
                "session.max_fps must be in 1..=1000, got {}",
                self.max_fps
            )));
        }
        if self.default_fps == 0 || self.default_fps > self.max_fps {
            return Err(invalid(format!(
                "session.default_fps must be in 1..=max_fps ({}), got {}",
                self.max_fps, self.default_fps
            )));
        }
        if self.stats_interval_ms == 0 || self.heartbeat_interval_ms == 0 {
            return Err(invalid(
                "session.stats_interval_ms and heartbeat_interval_ms must be positive".into(),
            ));
        }
        if self.client_timeout_ms <= self.heartbeat_interval_ms {
            return Err(invalid(format!(
                "session.client_timeout_ms ({}) must exceed heartbeat_interval_ms ({})",
                self.client_timeout_ms, self.heartbeat_interval_ms
            )));
        }
        if self.max_message_bytes < 1024 {
            return Err(invalid(format!(
                "session.max_message_bytes must be at least 1024, got {}",
                self.max_message_bytes
            )));
        }
        if self.max_people == 0 || self.max_people > MAX_PEOPLE_LIMIT {
            return Err(invalid(format!(
                "session.max_people must be in 1..={MAX_PEOPLE_LIMIT}, got {}",
                self.max_people
            )));
        }
        Ok(())
    }
}

/// Upper bound of `session.max_people`: a frame of `max_people` persons costs
/// that many single-person frames, and 16 already takes a worker well past
/// any real-time budget.
const MAX_PEOPLE_LIMIT: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_people_defaults_to_six_and_is_bounded() {
        let c = SessionConfig::default();
        assert_eq!(c.max_people, 6);
        c.validate().unwrap();
        for bad in [0, 17] {
            let c = SessionConfig {
                max_people: bad,
                ..SessionConfig::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("session.max_people"), "{e}");
        }
        for good in [1, 16] {
            SessionConfig {
                max_people: good,
                ..SessionConfig::default()
            }
            .validate()
            .unwrap();
        }
    }
}
