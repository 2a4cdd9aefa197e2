//! `[rtc]`: WebRTC ingest (WHIP) — the one UDP port every peer shares, the
//! address announced to them, the ingest tokens and the reaper's timeout.
//! Types and their checks only (`actors::rtc` runs the media, `http::whip`
//! the signalling).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{ConfigError, env_setting, invalid};

/// Environment variable holding the ingest tokens (comma-separated): the
/// bearer tokens a stock WHIP encoder may use instead of the entry code.
pub const RTC_INGEST_TOKENS_ENV: &str = "HOLISTREAM_RTC_INGEST_TOKENS";
/// Shortest ingest token accepted: a bearer token is a password that
/// travels with every WHIP request; 16 characters keep it off any guessing
/// list (and the login limiter slows the rest).
pub const MIN_INGEST_TOKEN_LEN: usize = 16;

/// WebRTC ingest settings (`[rtc]` in the config file).
///
/// ICE-lite with one host candidate and no TURN: a client reaches the
/// server's UDP port directly. Behind a symmetric NAT that still works (the
/// client sends first, the server answers to wherever the packets came
/// from); a client whose network blocks outbound UDP must use the WebSocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RtcConfig {
    /// Serve `POST /whip` and its UDP port; off, `/whip` answers 404.
    pub enabled: bool,
    /// Address the UDP socket binds (default: `server.host`).
    pub host: Option<String>,
    /// The UDP port every peer shares; 0 picks a free one (the answer
    /// announces the port actually bound).
    pub port: u16,
    /// Address announced in the answer's candidate (default: the bound
    /// address, which must then be a concrete one, not 0.0.0.0 or ::).
    pub public_ip: Option<IpAddr>,
    /// Bearer tokens accepted on `/whip` besides the entry code. From
    /// `HOLISTREAM_RTC_INGEST_TOKENS` only, never from a file.
    #[serde(skip)]
    pub ingest_tokens: Vec<String>,
    /// A peer from which nothing arrived for this long (no media, no STUN
    /// consent check, no DTLS) is torn down as if it had sent `DELETE`.
    pub ice_timeout_ms: u64,
    /// Largest SDP offer accepted (413 above).
    pub max_offer_bytes: usize,
    /// Largest encoded frame (depacketised) handed to a decoder; a bigger
    /// one is dropped and a keyframe asked for. A 640x480 keyframe from
    /// Chromium at 1 Mbit/s is ~30 KB, a 1080p one at 8 Mbit/s under
    /// 500 KB: 1 MiB leaves room, and bounds what a peer's decoder queue
    /// holds.
    pub max_encoded_frame_bytes: usize,
}

impl Default for RtcConfig {
    fn default() -> Self {
        RtcConfig {
            enabled: true,
            host: None,
            port: 8189,
            public_ip: None,
            ingest_tokens: Vec::new(),
            ice_timeout_ms: 10_000,
            max_offer_bytes: 32 * 1024,
            max_encoded_frame_bytes: 1 << 20,
        }
    }
}

impl RtcConfig {
    /// `HOLISTREAM_RTC_*` (booleans `true`/`false`/`1`/`0`); the tokens are
    /// secrets and come from here only.
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        if let Some(v) = env_setting("HOLISTREAM_RTC_ENABLED") {
            self.enabled = super::parse_bool("HOLISTREAM_RTC_ENABLED", &v)?;
        }
        if let Some(v) = env_setting("HOLISTREAM_RTC_HOST") {
            self.host = Some(v.trim().to_string());
        }
        if let Some(v) = env_setting("HOLISTREAM_RTC_PORT") {
            self.port = v.trim().parse().map_err(|_| {
                invalid(format!(
                    "HOLISTREAM_RTC_PORT must be a port number, got {v:?}"
                ))
            })?;
        }
        if let Some(v) = env_setting("HOLISTREAM_RTC_PUBLIC_IP") {
            self.public_ip = Some(v.trim().parse().map_err(|_| {
                invalid(format!(
                    "HOLISTREAM_RTC_PUBLIC_IP must be an IP address, got {v:?}"
                ))
            })?);
        }
        if let Some(v) = env_setting(RTC_INGEST_TOKENS_ENV) {
            self.ingest_tokens = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        Ok(())
    }

    /// The address the UDP socket binds: `rtc.host`, else `server_host`.
    pub fn bind_ip(&self, server_host: &str) -> Result<IpAddr, ConfigError> {
        let host = self.host.as_deref().unwrap_or(server_host);
        match host {
            "localhost" => Ok(IpAddr::from([127, 0, 0, 1])),
            h => h.parse().map_err(|_| {
                invalid(format!(
                    "rtc.host (or server.host) must be an IP address for the UDP socket, got {h:?}"
                ))
            }),
        }
    }

    /// The address announced to peers.
    pub fn announced_ip(&self, server_host: &str) -> Result<IpAddr, ConfigError> {
        match self.public_ip {
            Some(ip) => Ok(ip),
            None => self.bind_ip(server_host),
        }
    }

    /// Checks the values, with a message that names the setting.
    pub fn validate(&self, server_host: &str) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let announced = self.announced_ip(server_host)?;
        if announced.is_unspecified() || announced.is_multicast() {
            return Err(invalid(format!(
                "rtc.public_ip (or HOLISTREAM_RTC_PUBLIC_IP) must be set to an address peers can reach when the UDP socket binds {announced}"
            )));
        }
        if let Some(short) = self
            .ingest_tokens
            .iter()
            .find(|t| t.chars().count() < MIN_INGEST_TOKEN_LEN)
        {
            return Err(invalid(format!(
                "every ingest token ({RTC_INGEST_TOKENS_ENV}) must be at least {MIN_INGEST_TOKEN_LEN} characters; one has {}",
                short.chars().count()
            )));
        }
        if !(1_000..=300_000).contains(&self.ice_timeout_ms) {
            return Err(invalid(format!(
                "rtc.ice_timeout_ms must be in 1000..=300000, got {}",
                self.ice_timeout_ms
            )));
        }
        if !(1024..=1 << 20).contains(&self.max_offer_bytes) {
            return Err(invalid(format!(
                "rtc.max_offer_bytes must be in 1024..=1048576, got {}",
                self.max_offer_bytes
            )));
        }
        if !(64 * 1024..=64 << 20).contains(&self.max_encoded_frame_bytes) {
            return Err(invalid(format!(
                "rtc.max_encoded_frame_bytes must be in 65536..=67108864, got {}",
                self.max_encoded_frame_bytes
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_on_loopback_and_need_a_public_ip_on_any() {
        let c = RtcConfig::default();
        c.validate("127.0.0.1").unwrap();
        let e = c.validate("0.0.0.0").unwrap_err().to_string();
        assert!(e.contains("rtc.public_ip"), "{e}");
        let c = RtcConfig {
            public_ip: Some("203.0.113.7".parse().unwrap()),
            ..RtcConfig::default()
        };
        c.validate("0.0.0.0").unwrap();
        assert_eq!(
            c.announced_ip("0.0.0.0").unwrap().to_string(),
            "203.0.113.7"
        );
        assert_eq!(c.bind_ip("0.0.0.0").unwrap().to_string(), "0.0.0.0");
    }

    #[test]
    fn short_tokens_and_odd_bounds_are_refused_by_name() {
        let c = RtcConfig {
            ingest_tokens: vec!["short".into()],
            ..RtcConfig::default()
        };
        let e = c.validate("127.0.0.1").unwrap_err().to_string();
        assert!(e.contains(RTC_INGEST_TOKENS_ENV), "{e}");
        assert!(
            !e.contains("short"),
            "the token leaked into the message: {e}"
        );
        let c = RtcConfig {
            ice_timeout_ms: 10,
            ..RtcConfig::default()
        };
        assert!(
            c.validate("127.0.0.1")
                .unwrap_err()
                .to_string()
                .contains("rtc.ice_timeout_ms")
        );
        let c = RtcConfig {
            host: Some("not-an-ip".into()),
            ..RtcConfig::default()
        };
        assert!(
            c.validate("127.0.0.1")
                .unwrap_err()
                .to_string()
                .contains("rtc.host")
        );
        // Disabled: nothing to check.
        RtcConfig {
            enabled: false,
            ..RtcConfig::default()
        }
        .validate("0.0.0.0")
        .unwrap();
    }
}
