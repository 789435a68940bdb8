//! Wall-clock time behind a trait, so expiry rules are tested by moving a clock, not by sleeping.

use std::time::SystemTime;

pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Real time plus an offset that tests move forward.
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Default)]
pub struct ShiftedClock {
    offset: std::sync::Mutex<std::time::Duration>,
}

#[cfg(any(test, feature = "test-util"))]
impl ShiftedClock {
    pub fn advance(&self, by: std::time::Duration) {
        let mut offset = self.offset.lock().unwrap_or_else(|p| p.into_inner());
        *offset += by;
    }
}

#[cfg(any(test, feature = "test-util"))]
impl Clock for ShiftedClock {
    fn now(&self) -> SystemTime {
        SystemTime::now() + *self.offset.lock().unwrap_or_else(|p| p.into_inner())
    }
}
