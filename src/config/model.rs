//! `[model]`: which implementation runs the nets and when a frame may use a
//! second core, for every command that loads the pipeline (`serve`,
//! `worker`, `infer`, `parity`, `bench`). Types, parsing and the
//! environment variables; the pipeline (`model::pipeline`) only reads the
//! typed values.
//!
//! The kernels' instruction set (`HOLISTREAM_ISA`) is not here: it is a
//! process-wide choice of `holistream-kernels`, made once and checked by
//! `main` before anything runs.
//!
//! Must not load a net: `model::Holistic::load_with` does, from these values.

use serde::{Deserialize, Serialize};

use holistream_nets::Backend;

use super::{ConfigError, invalid};

/// The environment variable of `model.nets` (`fused`, `fused-portable`,
/// `burn`).
pub const NETS_ENV: &str = Backend::ENV;

/// The environment variable of `model.parallel_branches`: `1` (the
/// default), `0`, or `always`.
pub const PARALLEL_BRANCHES_ENV: &str = "HOLISTREAM_PARALLEL_BRANCHES";

/// When a frame uses a second core: the right hand on a second thread,
/// beside the face and the left hand (as MediaPipe's graph runs its
/// branches in parallel), and the nets that run alone (the pose's) with
/// their large layers halved across two threads ([`NetRunner::run_split`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Branches {
    /// Every stage on the calling thread.
    Off,
    /// While fewer pipelines are running in this process than it has
    /// cores: a frame takes about a third less time where a core is free,
    /// and a saturated server (a pipeline per core) does not pay for
    /// threads that would only compete.
    #[default]
    WhenCoreFree,
    /// On every frame (tests).
    Always,
}

impl std::str::FromStr for Branches {
    type Err = String;

    fn from_str(s: &str) -> Result<Branches, String> {
        match s {
            "0" | "off" => Ok(Branches::Off),
            "1" | "on" => Ok(Branches::WhenCoreFree),
            "always" => Ok(Branches::Always),
            other => Err(format!(
                "{other:?}: expected 1 (when a core is free), 0 or always"
            )),
        }
    }
}

impl From<Branches> for String {
    fn from(b: Branches) -> String {
        match b {
            Branches::Off => "0",
            Branches::WhenCoreFree => "1",
            Branches::Always => "always",
        }
        .to_string()
    }
}

impl TryFrom<String> for Branches {
    type Error = String;

    fn try_from(s: String) -> Result<Branches, String> {
        s.parse()
    }
}

/// The nets' implementation as it is written in config (`fused`,
/// `fused-portable`, `burn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Nets(pub Backend);

impl From<Nets> for String {
    fn from(n: Nets) -> String {
        n.0.name().to_string()
    }
}

impl TryFrom<String> for Nets {
    type Error = String;

    fn try_from(s: String) -> Result<Nets, String> {
        s.parse().map(Nets)
    }
}

/// Settings of the pipeline (`[model]` in the config file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The nets' implementation; default: our fused CPU kernels, or burn on
    /// the GPU a cargo feature (`wgpu`, `cuda`) selects.
    pub nets: Option<Nets>,
    /// When a frame uses a second core (`1`, `0` or `always`).
    pub parallel_branches: Branches,
}

impl ModelConfig {
    /// The defaults overridden by the environment: what the tools (`infer`,
    /// `parity`, `bench`) run with.
    pub fn from_env() -> Result<ModelConfig, ConfigError> {
        let mut config = ModelConfig::default();
        config.apply_env()?;
        Ok(config)
    }

    /// `HOLISTREAM_NETS` and `HOLISTREAM_PARALLEL_BRANCHES`, when set; an
    /// unknown value is an error, not a silent fallback.
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        if let Some(v) = super::env_setting(NETS_ENV) {
            self.nets = Some(Nets::try_from(v).map_err(|e| invalid(format!("{NETS_ENV}: {e}")))?);
        }
        if let Some(v) = super::env_setting(PARALLEL_BRANCHES_ENV) {
            self.parallel_branches = v
                .parse()
                .map_err(|e| invalid(format!("{PARALLEL_BRANCHES_ENV}={e}")))?;
        }
        Ok(())
    }

    /// The backend the nets run on.
    pub fn nets(&self) -> Backend {
        self.nets.map_or_else(Backend::default_for_build, |n| n.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_policies_parse_and_unknown_ones_are_errors() {
        assert_eq!("1".parse(), Ok(Branches::WhenCoreFree));
        assert_eq!("0".parse(), Ok(Branches::Off));
        assert_eq!("always".parse(), Ok(Branches::Always));
        assert!("2".parse::<Branches>().is_err());
    }

    #[test]
    fn model_section_parses_and_names_bad_values() {
        let m: ModelConfig =
            toml::from_str("nets = \"fused-portable\"\nparallel_branches = \"0\"").unwrap();
        assert_eq!(m.nets(), Backend::FusedPortable);
        assert_eq!(m.parallel_branches, Branches::Off);
        assert_eq!(ModelConfig::default().nets(), Backend::default_for_build());
        assert!(toml::from_str::<ModelConfig>("nets = \"gpu\"").is_err());
        assert!(toml::from_str::<ModelConfig>("parallel_branches = \"2\"").is_err());
    }
}
