//! A carrier's health: a circuit breaker for sick SMSCs and AIMD pacing for throttling ones.
//!
//! Circuit breaker: `circuit_failures` submits in a row that time out or come back with an
//! SMSC-side fault (ESME_RSYSERR and friends) open the circuit: the carrier takes no traffic for
//! `circuit_open`, then lets one probe through (half-open). A good answer closes it; a bad one
//! opens it again for twice as long (at most a minute).
//!
//! AIMD: ESME_RTHROTTLED / ESME_RMSGQFUL halve the carrier's submit rate and its effective window
//! per session; every second with accepted submits then adds back a tenth of the rate it was
//! throttled from, and one window slot, until the configured limits (or, for an unlimited
//! carrier, twice the throttled-from rate, where pacing is dropped again).

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
    throttled_from: f64,
    last_increase: Instant,
    /// The last halving: one burst of throttled answers (a whole window's worth) counts once.
    last_decrease: Option<Instant>,
    /// Accepted submits counted since `rate_since`, for the rate estimate.
    accepted: u32,
    rate_since: Instant,
    recent_rate: f64,
}

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
            last_increase: now,
            last_decrease: None,
            accepted: 0,
            rate_since: now,
            recent_rate: 0.0,
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
            SubmitOutcome::RetryElsewhere {
                reason: NotSubmitted::ResponseTimeout | NotSubmitted::Smsc(_)
            }
        );
        let answered = matches!(
            outcome,
            SubmitOutcome::Accepted { .. } | SubmitOutcome::RetryLater { .. } | SubmitOutcome::Permanent { .. }
        );
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
            SubmitOutcome::RetryLater { .. } => self.throttled(now),
            SubmitOutcome::Accepted { .. } => self.accepted(now),
            _ => {}
        }
        opened
    }

    fn throttled(&mut self, now: Instant) {
        if self.last_decrease.is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1)) {
            return;
        }
        self.last_decrease = Some(now);
        let current = self.tps.unwrap_or(self.recent_rate.max(2.0));
        self.throttled_from = current;
        self.tps = Some((current / 2.0).max(1.0));
        self.window = (self.window / 2).max(1);
        self.last_increase = now;
    }

    fn accepted(&mut self, now: Instant) {
        self.accepted += 1;
        let span = now.saturating_duration_since(self.rate_since);
        if span >= Duration::from_secs(1) {
            self.recent_rate = f64::from(self.accepted) / span.as_secs_f64();
            self.accepted = 0;
            self.rate_since = now;
        }
        if now.saturating_duration_since(self.last_increase) < Duration::from_secs(1) {
            return;
        }
        self.last_increase = now;
        self.window = (self.window + 1).min(self.configured_window);
        if let Some(tps) = self.tps {
            let grown = tps + (self.throttled_from / 10.0).max(1.0);
            self.tps = match self.configured_tps {
                Some(limit) => Some(grown.min(limit)),
                None if grown >= self.throttled_from * 2.0 => None,
                None => Some(grown),
            };
        }
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
        SubmitOutcome::RetryElsewhere {
            reason: NotSubmitted::Smsc(CommandStatus::EsmeRsyserr),
        }
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

    #[test]
    fn throttling_halves_then_grows_back_additively() {
        let t0 = Instant::now();
        let mut h = Health::new(64, 100, 5, Duration::from_secs(5), t0);
        let throttled = SubmitOutcome::RetryLater {
            status: CommandStatus::EsmeRthrottled,
        };
        h.record(&throttled, t0);
        assert_eq!((h.tps(), h.window()), (Some(50.0), 32));
        h.record(&throttled, t0 + Duration::from_millis(10));
        assert_eq!((h.tps(), h.window()), (Some(50.0), 32), "one burst halves once");
        let t1 = t0 + Duration::from_secs(1);
        h.record(&throttled, t1);
        assert_eq!((h.tps(), h.window()), (Some(25.0), 16));
        // Successes within the same second change nothing; each later second adds a step.
        h.record(&ok(), t1 + Duration::from_millis(500));
        assert_eq!(h.tps(), Some(25.0));
        h.record(&ok(), t1 + Duration::from_secs(1));
        assert_eq!((h.tps(), h.window()), (Some(30.0), 17));
        for s in 3..40 {
            h.record(&ok(), t0 + Duration::from_secs(s));
        }
        assert_eq!(h.tps(), Some(100.0), "capped at max_tps");
    }

    #[test]
    fn an_unlimited_carrier_drops_pacing_once_recovered() {
        let t0 = Instant::now();
        let mut h = Health::new(64, 0, 5, Duration::from_secs(5), t0);
        assert_eq!(h.tps(), None);
        h.record(&SubmitOutcome::RetryLater { status: CommandStatus::EsmeRmsgqful }, t0);
        assert_eq!(h.tps(), Some(1.0));
        for s in 1..10 {
            h.record(&ok(), t0 + Duration::from_secs(s));
        }
        assert_eq!(h.tps(), None);
    }
}
