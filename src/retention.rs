//! The retention loop: every minute, expire verifications past their time, delete finished
//! messages and verifications past `retention`, and report receipts that never matched. A stop
//! lets a sweep under way finish (it is never aborted between two writes).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::otp::Otp;
use crate::store::Store;
use crate::telemetry;

/// How often the retention sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Deletes finished messages and verifications past retention, expires stale verifications and
/// reports receipts that never matched.
pub(crate) async fn sweep(store: Arc<Store>, otp: Arc<Otp>, retention: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = otp.expire_stale().await {
            tracing::error!(error = %e, "expiring verifications failed");
        }
        let now = otp.now();
        let swept = match store.sweep_verifications(retention, otp.stats_window(), now).await {
            Ok(_) => store.sweep(retention, now).await,
            Err(e) => Err(e),
        };
        match swept {
            Ok((deleted, unmatched)) => {
                if deleted > 0 {
                    tracing::info!(deleted, "retention sweep");
                }
                if !unmatched.is_empty() {
                    tracing::warn!(count = unmatched.len(), "receipts matched no message in time; dropped");
                }
                for carrier in unmatched {
                    metrics::counter!(telemetry::RECEIPTS_UNMATCHED_TOTAL, "carrier" => carrier.clone()).increment(1);
                    metrics::counter!(telemetry::RECEIPTS_DROPPED_TOTAL, "carrier" => carrier, "reason" => "unmatched").increment(1);
                }
            }
            Err(e) => tracing::error!(error = %e, "retention sweep failed"),
        }
    }
}
