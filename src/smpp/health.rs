//! A carrier's health: a circuit breaker for sick SMSCs and rate control for throttling ones.
//!
//! Circuit breaker: `circuit_failures` submits in a row that time out or come back with an
//! SMSC-side fault (ESME_RSYSERR and friends) open the circuit: the carrier takes no traffic for
//! `circuit_open`, then lets one probe through (half-open). A good answer closes it; a bad one
//! opens it again for twice as long (at most a minute).
//!
//! Rate control: answers are tallied per second. A second in which the SMSC refused a share of
//! the submits (ESME_RTHROTTLED / ESME_RMSGQFUL) cuts the rate cap and the effective window by
//! that share: to what it demonstrably accepted, no lower. A halving per throttled second
//! (the old rule) took a carrier refusing 30 % from 100 to 1-6 msg/s in seconds. When a cut
//! did not change the share refused (the next second refuses about the same share), the
//! refusals are not caused by our rate, and cutting further would only starve the carrier: the
//! rate is held. Every clean second then grows rate and window by a quarter, up to the
//! configured limits (or, for an unlimited carrier, twice the rate it was cut from, where pacing
//! is dropped again). What a throttling carrier cannot take in time spills over to the next
//! carrier of the route (see `dispatch.rs`).

use std::time::{Duration, Instant};

use super::outcome::{NotSubmitted, SubmitOutcome};

const MAX_OPEN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Breaker {
    Closed,
    Open { until: Instant, cooldown: Duration },
    HalfOpen { probing: bool, cooldown: Duration },
}

#[derive(Debug)]
pub struct Health {
    failures_to_open: u32,
    base_cooldown: Duration,
    consecutive_failures: u32,
    breaker: Breaker,
    configured_window: usize,
    configured_tps: Option<f64>,
    /// Current effective window per session.
    window: usize,
    /// Current rate cap; `None` = unpaced.
    tps: Option<f64>,
    /// The rate when throttling began: an unlimited carrier is unpaced again at twice it.
    throttled_from: f64,
    /// This second's answers so far.
    tally_since: Instant,
    tally_accepted: u32,
    tally_throttled: u32,
    /// The share refused in the second that caused the last cut, while throttling lasts.
    cut_share: Option<f64>,
}

/// Answers are weighed a second at a time.
const TALLY: Duration = Duration::from_secs(1);
/// The rate cap never goes below this (msg/s).
const MIN_TPS: f64 = 1.0;
/// A clean second grows rate and window by this factor.
const GROWTH: f64 = 1.25;

/// Whether a submit may go ahead now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Yes,
    /// Half-open: this submit is the probe.
    Probe,
    No,
}

impl Health {
    pub fn new(window: usize, max_tps: u32, failures_to_open: u32, cooldown: Duration, now: Instant) -> Health {
        let configured_tps = (max_tps > 0).then(|| f64::from(max_tps));
        Health {
            failures_to_open: failures_to_open.max(1),
            base_cooldown: cooldown,
            consecutive_failures: 0,
            breaker: Breaker::Closed,
            configured_window: window,
            configured_tps,
            window,
            tps: configured_tps,
            throttled_from: 0.0,
            tally_since: now,
            tally_accepted: 0,
            tally_throttled: 0,
            cut_share: None,
        }
    }

    /// Whether the breaker lets traffic through (without taking the half-open probe slot).
    pub fn is_open(&self, now: Instant) -> bool {
        match self.breaker {
            Breaker::Closed => false,
            Breaker::Open { until, .. } => now < until,
            Breaker::HalfOpen { probing, .. } => probing,
        }
    }

    /// Asks to submit; in half-open state only one probe is in flight at a time.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.breaker {
            Breaker::Closed => Admission::Yes,
            Breaker::Open { until, cooldown } if now >= until => {
                self.breaker = Breaker::HalfOpen { probing: true, cooldown };
                Admission::Probe
            }
            Breaker::Open { .. } => Admission::No,
            Breaker::HalfOpen { probing: false, cooldown } => {
                self.breaker = Breaker::HalfOpen { probing: true, cooldown };
                Admission::Probe
            }
            Breaker::HalfOpen { probing: true, .. } => Admission::No,
        }
    }

    /// Learns from one submit's outcome. Returns true when this opened the circuit.
    pub fn record(&mut self, outcome: &SubmitOutcome, now: Instant) -> bool {
        let sick = matches!(
            outcome,
            SubmitOutcome::RetryElsewhere { reason: NotSubmitted::ResponseTimeout | NotSubmitted::Undecodable | NotSubmitted::Smsc(_) }
        );
        let answered =
            matches!(outcome, SubmitOutcome::Accepted { .. } | SubmitOutcome::RetryLater { .. } | SubmitOutcome::Permanent { .. });
        let mut opened = false;
        if sick {
            self.consecutive_failures += 1;
            let reopen = match self.breaker {
                Breaker::HalfOpen { cooldown, .. } => Some((cooldown * 2).min(MAX_OPEN)),
                Breaker::Closed if self.consecutive_failures >= self.failures_to_open => Some(self.base_cooldown),
                _ => None,
            };
            if let Some(cooldown) = reopen {
                self.breaker = Breaker::Open { until: now + cooldown, cooldown };
                opened = true;
            }
        } else if answered {
            self.consecutive_failures = 0;
            self.breaker = Breaker::Closed;
        } else if let Breaker::HalfOpen { cooldown, .. } = self.breaker {
            // The probe never reached the SMSC (connection lost): let the next one try.
            self.breaker = Breaker::HalfOpen { probing: false, cooldown };
        }
        match outcome {
            SubmitOutcome::RetryLater { .. } => self.tally_throttled += 1,
            SubmitOutcome::Accepted { .. } => self.tally_accepted += 1,
            _ => {}
        }
        let elapsed = now.saturating_duration_since(self.tally_since);
        if elapsed >= TALLY {
            self.adjust(elapsed);
            self.tally_since = now;
            self.tally_accepted = 0;
            self.tally_throttled = 0;
        }
        opened
    }

    /// Weighs the last tally: cut by the share refused, hold, or grow.
    fn adjust(&mut self, elapsed: Duration) {
        let sent = self.tally_accepted + self.tally_throttled;
        if sent == 0 {
            return;
        }
        let share = f64::from(self.tally_throttled) / f64::from(sent);
        if self.tally_throttled == 0 {
            self.cut_share = None;
            self.window = ((self.window as f64 * GROWTH) as usize).max(self.window + 1).min(self.configured_window);
            if let Some(tps) = self.tps {
                let grown = (tps * GROWTH).max(tps + 1.0);
                self.tps = match self.configured_tps {
                    Some(limit) => Some(grown.min(limit)),
                    None if grown >= self.throttled_from * 2.0 => None,
                    None => Some(grown),
                };
            }
            return;
        }
        // About the same share as at the last cut: the cut changed nothing, so our rate is
        // not the cause. Hold.
        if self.cut_share.is_some_and(|at_cut| share >= at_cut * 0.5 && share <= at_cut * 1.5) {
            return;
        }
        let sent_rate = f64::from(sent) / elapsed.as_secs_f64();
        let current = self.tps.map_or(sent_rate, |tps| tps.min(sent_rate));
        if self.cut_share.is_none() {
            self.throttled_from = current;
        }
        self.cut_share = Some(share);
        self.tps = Some((current * (1.0 - share)).max(MIN_TPS));
        self.window = ((self.window as f64 * (1.0 - share)).round() as usize).max(1);
    }

    /// The effective window per session now.
    pub fn window(&self) -> usize {
        self.window
    }

    /// The current rate cap, if any.
    pub fn tps(&self) -> Option<f64> {
        self.tps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusmpp::CommandStatus;

    fn syserr() -> SubmitOutcome {
        SubmitOutcome::RetryElsewhere { reason: NotSubmitted::Smsc(CommandStatus::EsmeRsyserr) }
    }

    fn ok() -> SubmitOutcome {
        SubmitOutcome::Accepted { message_id: "1".into() }
    }

    #[test]
    fn the_breaker_opens_probes_and_closes() {
        let t0 = Instant::now();
        let mut h = Health::new(8, 0, 3, Duration::from_secs(2), t0);
        assert!(!h.record(&syserr(), t0));
        assert!(!h.record(&syserr(), t0));
        assert!(h.record(&syserr(), t0), "third failure in a row opens");
        assert_eq!(h.admit(t0), Admission::No);
        let later = t0 + Duration::from_secs(2);
        assert_eq!(h.admit(later), Admission::Probe);
        assert_eq!(h.admit(later), Admission::No, "one probe at a time");
        assert!(h.record(&syserr(), later), "a failed probe reopens");
        assert_eq!(h.admit(later + Duration::from_secs(3)), Admission::No, "for twice as long");
        let much_later = later + Duration::from_secs(4);
        assert_eq!(h.admit(much_later), Admission::Probe);
        h.record(&ok(), much_later);
        assert_eq!(h.admit(much_later), Admission::Yes);
    }

    /// The rate cap, rounded to the nearest 5 msg/s (a tally's edges move it by one or two).
    fn about(h: &Health) -> Option<f64> {
        h.tps().map(|r| (r / 5.0).round() * 5.0)
    }

    fn throttled() -> SubmitOutcome {
        SubmitOutcome::RetryLater { status: CommandStatus::EsmeRthrottled }
    }

    /// One second of answers at `rate` per second, `refused` of every 10 throttled.
    fn second(h: &mut Health, start: Instant, rate: u32, refused: u32) -> Instant {
        for i in 0..rate {
            let at = start + Duration::from_secs(1) * i / rate;
            let outcome = if i % 10 < refused { throttled() } else { ok() };
            h.record(&outcome, at);
        }
        start + Duration::from_secs(1)
    }

    #[test]
    fn a_carrier_at_capacity_is_cut_to_what_it_accepts_then_grows_back() {
        let t0 = Instant::now();
        let mut h = Health::new(64, 100, 5, Duration::from_secs(5), t0);
        // 100/s offered, the SMSC refuses 3 in 10: cut by that share, not halved.
        let t = second(&mut h, t0, 100, 3);
        h.record(&ok(), t);
        assert_eq!((about(&h), h.window()), (Some(70.0), 45));
        // A second without refusals grows both by a quarter, up to the configured limits.
        let mut t = second(&mut h, t, 70, 0);
        h.record(&ok(), t);
        assert_eq!(about(&h), Some(90.0));
        for _ in 0..3 {
            t = second(&mut h, t, 90, 0);
        }
        h.record(&ok(), t);
        assert_eq!((h.tps(), h.window()), (Some(100.0), 64), "back to the limits within seconds");
    }

    #[test]
    fn refusals_that_do_not_follow_our_rate_do_not_starve_the_carrier() {
        let t0 = Instant::now();
        let mut h = Health::new(64, 100, 5, Duration::from_secs(5), t0);
        let mut t = t0;
        // 30 % refused whatever the rate: one cut, then held, never a collapse.
        for _ in 0..10 {
            let rate = h.tps().map_or(100, |r| r as u32);
            t = second(&mut h, t, rate, 3);
        }
        h.record(&ok(), t);
        assert_eq!(about(&h), Some(70.0), "held after one cut");
        // A higher share refused than at the cut: cut again.
        let t = second(&mut h, t, 70, 8);
        h.record(&ok(), t);
        assert_eq!(about(&h), Some(15.0));
    }

    #[test]
    fn an_unlimited_carrier_drops_pacing_once_recovered() {
        let t0 = Instant::now();
        let mut h = Health::new(64, 0, 5, Duration::from_secs(5), t0);
        assert_eq!(h.tps(), None);
        let mut t = second(&mut h, t0, 200, 5);
        h.record(&ok(), t);
        assert_eq!(about(&h), Some(100.0));
        for _ in 0..8 {
            t = second(&mut h, t, 100, 0);
        }
        h.record(&ok(), t);
        assert_eq!(h.tps(), None, "unpaced again at twice the rate it was cut from");
    }
}
