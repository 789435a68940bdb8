//! The gauges sampled each second: each carrier's sessions, window, circuit and pace, and the
//! queue's depth and oldest age. Counters that alerts read are created here at zero, so they
//! exist before their first event.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::smpp::Carrier;
use crate::store::Store;
use crate::telemetry;

/// Samples the gauges every second until `stop`.
pub(crate) async fn sample_gauges(carriers: Arc<dyn Fn() -> Vec<Arc<Carrier>> + Send + Sync>, store: Arc<Store>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        for carrier in carriers() {
            let name = carrier.name().to_string();
            let bound = carrier.bound_sessions();
            metrics::gauge!(telemetry::CARRIER_UP, "carrier" => name.clone()).set(if bound > 0 { 1.0 } else { 0.0 });
            metrics::gauge!(telemetry::SESSIONS_BOUND, "carrier" => name.clone()).set(bound as f64);
            metrics::gauge!(telemetry::WINDOW_IN_USE, "carrier" => name.clone()).set(carrier.in_flight() as f64);
            metrics::gauge!(telemetry::CARRIER_CIRCUIT_OPEN, "carrier" => name.clone()).set(f64::from(u8::from(carrier.circuit_open())));
            metrics::gauge!(telemetry::CARRIER_TAKING_TRAFFIC, "carrier" => name.clone())
                .set(f64::from(u8::from(carrier.taking_traffic())));
            metrics::gauge!(telemetry::CARRIER_RATE_LIMIT, "carrier" => name.clone()).set(carrier.limits().1.unwrap_or(0.0));
            // Counters an alert or panel reads exist from the start, not from their first event.
            metrics::counter!(telemetry::SPILLOVERS_TOTAL, "carrier" => name.clone()).increment(0);
            metrics::counter!(telemetry::RECEIPTS_AMBIGUOUS_TOTAL, "carrier" => name.clone()).increment(0);
            metrics::counter!(telemetry::RECEIPTS_LATE_TOTAL, "carrier" => name.clone()).increment(0);
            metrics::counter!(telemetry::RECEIPTS_HELD_TOTAL, "carrier" => name.clone()).increment(0);
            for reason in ["held_full", "unmatched"] {
                metrics::counter!(telemetry::RECEIPTS_DROPPED_TOTAL, "carrier" => name.clone(), "reason" => reason).increment(0);
            }
        }
        let (depth, oldest) = store.queue_stats(std::time::SystemTime::now()).await;
        metrics::gauge!(telemetry::QUEUE_DEPTH).set(depth as f64);
        metrics::gauge!(telemetry::QUEUE_OLDEST_AGE_SECONDS).set(oldest.as_secs_f64());
        metrics::gauge!(telemetry::RECEIPT_WINDOW_ENTRIES).set(store.receipt_window_entries() as f64);
        telemetry::handle().run_upkeep();
    }
}
