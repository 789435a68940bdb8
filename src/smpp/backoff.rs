//! Reconnect delays: exponential growth with full jitter.
//!
//! Kannel and Jasmin reconnect on a fixed 10 s timer: too slow when a carrier blips, too fast when
//! it is down for an hour, and every session of a gateway retries in lockstep. Here attempt `n`
//! waits a uniformly random time in `[min, min(max, min·2^(n+1))]`, so delays grow to `max` and
//! sessions spread out.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The ceiling for attempt `n` (0-based): `min·2^(n+1)`, capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_add(1).min(30));
        self.min.saturating_mul(factor).min(self.max).max(self.min)
    }

    /// A random delay for attempt `n`, never below `min` nor above `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let span = ceiling.saturating_sub(self.min).as_millis() as u64;
        let jitter = if span == 0 { 0 } else { rand::random_range(0..=span) };
        self.min + Duration::from_millis(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_bounds_and_grow() {
        let b = Backoff { min: Duration::from_millis(100), max: Duration::from_secs(5) };
        assert_eq!(b.ceiling(0), Duration::from_millis(200));
        assert_eq!(b.ceiling(3), Duration::from_millis(1600));
        assert_eq!(b.ceiling(10), Duration::from_secs(5));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(5));
        for attempt in 0..40 {
            for _ in 0..50 {
                let d = b.delay(attempt);
                assert!(d >= b.min && d <= b.ceiling(attempt), "attempt {attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn jitter_spreads_sessions_apart() {
        let b = Backoff { min: Duration::from_millis(100), max: Duration::from_secs(60) };
        let delays: std::collections::HashSet<_> = (0..20).map(|_| b.delay(4)).collect();
        assert!(delays.len() > 10, "20 draws gave only {} distinct delays", delays.len());
    }
}
