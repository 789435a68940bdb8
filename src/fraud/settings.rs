//! The fraud guard's settings (`[fraud]`), their defaults and why, and their checks.

use std::time::Duration;

use serde::Deserialize;

use crate::duration::{DAY, human as duration};

/// What the guard does with what it finds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Suspends prefixes and refuses new codes to them (429 suspected_fraud).
    #[default]
    Enforce,
    /// Decides the same, logs and counts what it would refuse, refuses nothing.
    Monitor,
    /// Watches nothing.
    Off,
}

/// `[fraud]`. The defaults come from what OTP traffic looks like: legitimate users approve
/// most codes (conversion well above half in every market the Verify vendors publish, and
/// within minutes), SMS pumping approves next to none and arrives in bursts to a few ranges.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FraudConfig {
    pub mode: Mode,
    /// Digits after the country code that make a prefix (+44 7700... with 3: `+44770`).
    pub prefix_digits: usize,
    /// The window conversion is judged over.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// Sends in the window (old enough to have been approved, see `approval_grace`) before a
    /// prefix's conversion is judged at all: with 30, a prefix that truly converts 60 % falls
    /// under 20 % by chance with a probability below one in a million (binomial).
    pub min_sends: u32,
    /// A prefix converting less than this over the window is suspended: pumping converts near
    /// 0 %, legitimate traffic far above 20 % even where delivery is poor.
    pub min_conversion: f64,
    /// Sends younger than this are not counted against conversion yet: users type codes within
    /// a minute or two.
    #[serde(deserialize_with = "duration")]
    pub approval_grace: Duration,
    /// A minute with at least this many sends to one prefix ...
    pub spike_sends: u32,
    /// ... and more than this many times its average minute over the last day is a spike: the
    /// prefix is suspended at once (pumping comes in bursts; conversion would tell only after
    /// `approval_grace`).
    pub spike_factor: f64,
    /// How long a suspension lasts before the prefix is probed.
    #[serde(deserialize_with = "duration")]
    pub suspend_for: Duration,
    /// While probed, one new code per this; an approved probe lifts the suspension.
    #[serde(deserialize_with = "duration")]
    pub probe_every: Duration,
    /// Prefixes (E.164 with `+`, any length) never suspended ...
    pub always_allow: Vec<String>,
    /// ... and always refused.
    pub always_block: Vec<String>,
}

impl Default for FraudConfig {
    fn default() -> Self {
        FraudConfig {
            mode: Mode::Enforce,
            prefix_digits: 3,
            window: Duration::from_secs(3600),
            min_sends: 30,
            min_conversion: 0.2,
            approval_grace: Duration::from_secs(120),
            spike_sends: 20,
            spike_factor: 10.0,
            suspend_for: Duration::from_secs(3600),
            probe_every: Duration::from_secs(60),
            always_allow: Vec::new(),
            always_block: Vec::new(),
        }
    }
}

impl FraudConfig {
    /// The first setting out of bounds: (key under `fraud.`, why).
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        if !(1..=8).contains(&self.prefix_digits) {
            return Some(("prefix_digits", "must be 1-8".into()));
        }
        if !(Duration::from_secs(60)..=DAY).contains(&self.window) {
            return Some(("window", "must be between 1m and 1d".into()));
        }
        if !(1..=1_000_000).contains(&self.min_sends) || !(1..=1_000_000).contains(&self.spike_sends) {
            return Some(("min_sends", "min_sends and spike_sends must be 1-1000000".into()));
        }
        if !(0.0..=1.0).contains(&self.min_conversion) {
            return Some(("min_conversion", "must be between 0 and 1".into()));
        }
        if !(1.0..=1_000_000.0).contains(&self.spike_factor) {
            return Some(("spike_factor", "must be between 1 and 1000000".into()));
        }
        if self.approval_grace >= self.window {
            return Some(("approval_grace", "must be shorter than fraud.window".into()));
        }
        if !(Duration::from_secs(1)..=DAY).contains(&self.suspend_for) || !(Duration::from_secs(1)..=DAY).contains(&self.probe_every) {
            return Some(("suspend_for", "suspend_for and probe_every must be between 1s and 1d".into()));
        }
        let bad = self
            .always_allow
            .iter()
            .chain(&self.always_block)
            .find(|p| p.len() < 2 || p.len() > 16 || !p.starts_with('+') || !p[1..].bytes().all(|b| b.is_ascii_digit()));
        if let Some(bad) = bad {
            return Some(("always_allow", format!("{} is not a prefix: '+' and 1-15 digits", crate::echo::shown(bad))));
        }
        if self.always_allow.len() + self.always_block.len() > 10_000 {
            return Some(("always_allow", "at most 10000 pinned prefixes".into()));
        }
        None
    }
}
