//! Fault injection for the inference workers (testing only).
//!
//! A [`FaultPlan`] such as `panic=0.05,stall=0.01:2s,slow=0.1:50ms` gives, per
//! job, the probability that the worker thread panics, hangs for a while, or is
//! slowed down before its forward pass. It is set at start-up (`--faults`) and
//! can be replaced at run time (`POST /admin/faults`).
//!
//! The plan and its parsing only; the workers apply it
//! (`actors::job::run_frame`), `/admin/faults` replaces it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Per-job fault probabilities. The default injects nothing.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultPlan {
    /// Probability that the worker thread panics on a job.
    pub panic: f64,
    /// Probability that the worker thread hangs for `stall_for` on a job.
    pub stall: f64,
    /// How long a stalled job hangs.
    pub stall_for: Duration,
    /// Probability that a job is delayed by `slow_by`.
    pub slow: f64,
    /// How much a slowed job is delayed.
    pub slow_by: Duration,
}

/// What to do to one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Run normally.
    None,
    /// Panic before the forward pass.
    Panic,
    /// Hang for this long, then run.
    Stall(Duration),
    /// Sleep this long, then run.
    Slow(Duration),
}

/// Why a fault plan string was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FaultPlanError {
    #[error("fault `{0}` is not of the form kind=rate[:duration]")]
    Syntax(String),
    #[error("unknown fault kind `{0}` (expected panic, stall or slow)")]
    Kind(String),
    #[error("fault rate `{0}` is not a number between 0 and 1")]
    Rate(String),
    #[error("fault duration `{0}` is not a duration like 50ms or 2s")]
    Duration(String),
    #[error("`{0}` takes no duration")]
    UnexpectedDuration(String),
    #[error("fault rates add up to {0}, more than 1")]
    Total(f64),
}

impl FaultPlan {
    /// A plan that injects nothing.
    pub fn none() -> FaultPlan {
        FaultPlan::default()
    }

    /// True when no fault can happen.
    pub fn is_none(&self) -> bool {
        self.panic == 0.0 && self.stall == 0.0 && self.slow == 0.0
    }

    /// Picks the fault for one job from a uniform sample `u` in `[0, 1)`.
    ///
    /// The three rates partition `[0, 1)`: `[0, panic)` panics, the next
    /// `stall` stalls, the next `slow` slows, the rest runs normally.
    pub fn pick(&self, u: f64) -> Fault {
        if u < self.panic {
            Fault::Panic
        } else if u < self.panic + self.stall {
            Fault::Stall(self.stall_for)
        } else if u < self.panic + self.stall + self.slow {
            Fault::Slow(self.slow_by)
        } else {
            Fault::None
        }
    }

    /// Draws the fault for one job.
    pub fn draw(&self) -> Fault {
        if self.is_none() {
            return Fault::None;
        }
        self.pick(rand::random::<f64>())
    }
}

fn parse_duration(s: &str) -> Result<Duration, FaultPlanError> {
    let bad = || FaultPlanError::Duration(s.to_string());
    let (num, unit) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(bad());
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    if !v.is_finite() || v < 0.0 || v * unit > 3600.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(v * unit))
}

fn format_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

impl FromStr for FaultPlan {
    type Err = FaultPlanError;

    /// Parses `panic=0.05,stall=0.01:2s,slow=0.1:50ms`; any subset, in any
    /// order; `none` or an empty string is the empty plan. A stall without a
    /// duration hangs 2 s, a slow-down without one adds 50 ms.
    fn from_str(s: &str) -> Result<FaultPlan, FaultPlanError> {
        let mut plan = FaultPlan {
            stall_for: Duration::from_secs(2),
            slow_by: Duration::from_millis(50),
            ..FaultPlan::default()
        };
        let s = s.trim();
        if s.is_empty() || s == "none" {
            return Ok(plan);
        }
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (kind, rest) = item
                .split_once('=')
                .ok_or_else(|| FaultPlanError::Syntax(item.to_string()))?;
            let (rate, duration) = match rest.split_once(':') {
                Some((r, d)) => (r, Some(d)),
                None => (rest, None),
            };
            let rate_value: f64 = rate
                .trim()
                .parse()
                .map_err(|_| FaultPlanError::Rate(rate.to_string()))?;
            if !(0.0..=1.0).contains(&rate_value) {
                return Err(FaultPlanError::Rate(rate.to_string()));
            }
            let duration = duration.map(parse_duration).transpose()?;
            match kind.trim() {
                "panic" => {
                    if duration.is_some() {
                        return Err(FaultPlanError::UnexpectedDuration(item.to_string()));
                    }
                    plan.panic = rate_value;
                }
                "stall" => {
                    plan.stall = rate_value;
                    if let Some(d) = duration {
                        plan.stall_for = d;
                    }
                }
                "slow" => {
                    plan.slow = rate_value;
                    if let Some(d) = duration {
                        plan.slow_by = d;
                    }
                }
                other => return Err(FaultPlanError::Kind(other.to_string())),
            }
        }
        let total = plan.panic + plan.stall + plan.slow;
        if total > 1.0 + 1e-9 {
            return Err(FaultPlanError::Total(total));
        }
        Ok(plan)
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            return f.write_str("none");
        }
        let mut parts = Vec::new();
        if self.panic > 0.0 {
            parts.push(format!("panic={}", self.panic));
        }
        if self.stall > 0.0 {
            parts.push(format!(
                "stall={}:{}",
                self.stall,
                format_duration(self.stall_for)
            ));
        }
        if self.slow > 0.0 {
            parts.push(format!(
                "slow={}:{}",
                self.slow,
                format_duration(self.slow_by)
            ));
        }
        f.write_str(&parts.join(","))
    }
}

impl Serialize for FaultPlan {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FaultPlan {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<FaultPlan, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let p: FaultPlan = "panic=0.05,stall=0.01:2s,slow=0.1:50ms".parse().unwrap();
        assert_eq!(p.panic, 0.05);
        assert_eq!(p.stall, 0.01);
        assert_eq!(p.stall_for, Duration::from_secs(2));
        assert_eq!(p.slow, 0.1);
        assert_eq!(p.slow_by, Duration::from_millis(50));
        assert_eq!(p.to_string(), "panic=0.05,stall=0.01:2s,slow=0.1:50ms");
        let again: FaultPlan = p.to_string().parse().unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn empty_and_none_inject_nothing() {
        for s in ["", "none", " "] {
            let p: FaultPlan = s.parse().unwrap();
            assert!(p.is_none());
            assert_eq!(p.draw(), Fault::None);
        }
    }

    #[test]
    fn refuses_bad_plans_with_a_reason() {
        assert_eq!(
            "panic".parse::<FaultPlan>().unwrap_err(),
            FaultPlanError::Syntax("panic".into())
        );
        assert_eq!(
            "boom=0.1".parse::<FaultPlan>().unwrap_err(),
            FaultPlanError::Kind("boom".into())
        );
        assert_eq!(
            "panic=2".parse::<FaultPlan>().unwrap_err(),
            FaultPlanError::Rate("2".into())
        );
        assert_eq!(
            "panic=x".parse::<FaultPlan>().unwrap_err(),
            FaultPlanError::Rate("x".into())
        );
        assert_eq!(
            "stall=0.1:2h".parse::<FaultPlan>().unwrap_err(),
            FaultPlanError::Duration("2h".into())
        );
        assert!(matches!(
            "panic=0.1:2s".parse::<FaultPlan>(),
            Err(FaultPlanError::UnexpectedDuration(_))
        ));
        assert!(matches!(
            "panic=0.6,slow=0.6".parse::<FaultPlan>(),
            Err(FaultPlanError::Total(_))
        ));
    }

    #[test]
    fn pick_partitions_the_unit_interval() {
        let p: FaultPlan = "panic=0.1,stall=0.2:1s,slow=0.3:10ms".parse().unwrap();
        assert_eq!(p.pick(0.0), Fault::Panic);
        assert_eq!(p.pick(0.099), Fault::Panic);
        assert_eq!(p.pick(0.1), Fault::Stall(Duration::from_secs(1)));
        assert_eq!(p.pick(0.299), Fault::Stall(Duration::from_secs(1)));
        // Just past the boundaries: 0.1 + 0.2 is not exactly 0.3 in f64.
        assert_eq!(p.pick(0.301), Fault::Slow(Duration::from_millis(10)));
        assert_eq!(p.pick(0.599), Fault::Slow(Duration::from_millis(10)));
        assert_eq!(p.pick(0.601), Fault::None);
    }

    #[test]
    fn draw_follows_the_rates() {
        let p: FaultPlan = "panic=0.25".parse().unwrap();
        let n = 20_000;
        let panics = (0..n).filter(|_| p.draw() == Fault::Panic).count();
        let rate = panics as f64 / n as f64;
        assert!((0.22..0.28).contains(&rate), "rate {rate}");
    }

    #[test]
    fn serde_uses_the_string_form() {
        #[derive(Serialize, Deserialize)]
        struct W {
            faults: FaultPlan,
        }
        let w: W = serde_json::from_str(r#"{"faults":"slow=0.5:20ms"}"#).unwrap();
        assert_eq!(w.faults.slow, 0.5);
        assert_eq!(
            serde_json::to_string(&w).unwrap(),
            r#"{"faults":"slow=0.5:20ms"}"#
        );
        assert!(serde_json::from_str::<W>(r#"{"faults":"slow=5"}"#).is_err());
    }
}
