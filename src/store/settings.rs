//! `[store]`: retention and sled's tuning, with their checks.

use std::time::Duration;

use serde::Deserialize;

use super::StoreOptions;
use crate::duration::DAY;

/// The sled store's tuning.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Finished messages are deleted this long after they finished.
    #[serde(deserialize_with = "crate::duration::human")]
    pub retention: Duration,
    /// sled's page cache in MiB (its own default, 1 GiB, is too much for most hosts).
    pub cache_capacity_mb: u64,
    /// Receipts kept while they wait for their submit_sm_resp, at most (more are dropped and
    /// counted): receipts for unknown ids must not fill the disk.
    pub max_held_receipts: usize,
    /// How long such a receipt waits before it is dropped as unmatched.
    #[serde(deserialize_with = "crate::duration::human")]
    pub hold_receipts_for: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            retention: Duration::from_secs(7 * 24 * 3600),
            cache_capacity_mb: 4,
            max_held_receipts: 10_000,
            hold_receipts_for: Duration::from_secs(600),
        }
    }
}

impl StoreConfig {
    /// What opening the store needs of these settings.
    pub fn options(&self) -> StoreOptions {
        StoreOptions {
            cache_capacity_bytes: self.cache_capacity_mb * 1024 * 1024,
            max_held_receipts: self.max_held_receipts,
            hold_receipts_for: self.hold_receipts_for,
        }
    }

    /// The first setting out of bounds: (key under `store.`, why).
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        if !(1..=1_048_576).contains(&self.cache_capacity_mb) {
            return Some(("cache_capacity_mb", "must be 1-1048576 (1 MiB to 1 TiB)".into()));
        }
        if !(Duration::from_secs(60)..=3650 * DAY).contains(&self.retention) {
            return Some(("retention", "must be between 1m and 3650d".into()));
        }
        if !(1..=1_000_000).contains(&self.max_held_receipts) {
            return Some(("max_held_receipts", "must be 1-1000000".into()));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&self.hold_receipts_for) {
            return Some(("hold_receipts_for", "must be between 1s and 24h".into()));
        }
        None
    }
}
