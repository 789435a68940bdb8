//! Durations in config files, written as humans write them ("500ms", "30s", "5m", "1h"), and the
//! bounds most timer keys share.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::echo::shown;

/// The longest timer most keys take: longer is a typo, and timers added to "now" must not
/// overflow.
pub const HOUR: Duration = Duration::from_secs(3600);
pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// serde's `deserialize_with` for a human-written duration.
pub fn human<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!("invalid duration {} ({e}); write it like \"500ms\", \"30s\" or \"5m\"", shown(&text)))
    })
}
