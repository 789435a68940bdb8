//! Prometheus metrics: the recorder, the `/metrics` endpoint and the gauges sampled each second.
//!
//! Names follow Prometheus conventions (`otpgate_` prefix, `_total` counters, `_seconds`
//! histograms). No label ever carries user input: labels are carrier names (from config),
//! route templates, status classes and fixed outcome names, so cardinality stays bounded.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::smpp::Carrier;
use crate::store::Store;

/// Latency buckets in seconds: sub-millisecond HTTP up to minute-long receipts.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// The process-wide recorder, installed on first use (tests start several daemons in one
/// process; they share it).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new().set_buckets(BUCKETS).unwrap_or_else(|_| PrometheusBuilder::new());
        let handle = match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed (an embedding program's): render ours unattached.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        };
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("otpgate_http_requests_total", "HTTP requests by route template and status code");
    describe_histogram!("otpgate_http_request_duration_seconds", "HTTP request latency by route template");
    describe_counter!("otpgate_messages_total", "Messages entering each state");
    describe_gauge!("otpgate_queue_depth", "Messages waiting to be submitted");
    describe_gauge!("otpgate_queue_oldest_age_seconds", "Age of the oldest message waiting to be submitted");
    describe_counter!(
        "otpgate_resubmits_total",
        "Sends of a message whose earlier submit went out without a readable answer (connection lost, response timeout, unreadable response, crash mid-submit): possible duplicates"
    );
    describe_counter!(
        "otpgate_resend_limit_total",
        "Messages failed because their submits kept going out unanswered (messages.max_unconfirmed_resends)"
    );
    describe_counter!("otpgate_spillovers_total", "Messages moved off a carrier that could not take them within the spill bound");
    describe_gauge!("otpgate_spill_after_seconds", "messages.spill_after: the longest a message should wait on one carrier");
    describe_counter!("otpgate_recovered_total", "Queued messages re-queued at start-up from the store");
    describe_gauge!("otpgate_carrier_up", "1 while at least one session of the carrier is bound");
    describe_gauge!("otpgate_carrier_circuit_open", "1 while the carrier's circuit breaker keeps traffic away");
    describe_gauge!("otpgate_carrier_taking_traffic", "1 while the carrier is bound, its circuit closed and its sessions answering");
    describe_gauge!("otpgate_carrier_rate_limit", "The carrier's submit rate cap now, after throttling (0 = unpaced)");
    describe_gauge!("otpgate_sessions_bound", "Bound submit sessions per carrier");
    describe_counter!("otpgate_submit_total", "submit_sm results per carrier and class");
    describe_histogram!("otpgate_submit_response_seconds", "submit_sm to submit_sm_resp time per carrier");
    describe_gauge!("otpgate_window_in_use", "submit_sm awaiting a response per carrier");
    describe_counter!("otpgate_reconnects_total", "Sessions lost or binds failed, by reason");
    describe_counter!("otpgate_receipts_total", "Delivery receipts per carrier and state");
    describe_histogram!("otpgate_receipt_latency_seconds", "Submit to receipt time per carrier");
    describe_counter!("otpgate_receipts_unmatched_total", "Receipts that matched no message (or could not be read)");
    describe_counter!("otpgate_receipts_late_total", "Receipts for a message that already had its final receipt: counted, not applied");
    describe_counter!(
        "otpgate_receipts_ambiguous_total",
        "Receipts whose id names different waiting messages under different readings: not applied"
    );
    describe_counter!(
        "otpgate_receipts_dropped_total",
        "Receipts not kept: held_full (max_held_receipts reached) or unmatched (held past hold_receipts_for)"
    );
    describe_counter!("otpgate_mobile_originated_total", "Mobile-originated SMS received and ignored (otpgate takes no inbound SMS)");
    describe_counter!("otpgate_long_message_ids_total", "submit_sm_resp with a message_id longer than SMPP allows, read anyway");
    describe_counter!("otpgate_verifications_total", "Verification events by outcome");
    describe_counter!("otpgate_otp_sent_total", "OTP SMS accepted by each carrier");
    describe_counter!("otpgate_otp_approved_total", "Verifications approved, by the carrier of their last SMS");
}

/// Serves `/metrics` until `stop`.
pub async fn serve(listener: TcpListener, stop: CancellationToken) {
    let app = axum::Router::new().route(
        "/metrics",
        get(|| async {
            let h = handle();
            h.run_upkeep();
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response()
        }),
    );
    let served = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
    if let Err(e) = served {
        tracing::error!(error = %e, "metrics server failed");
    }
}

/// Samples the gauges every second until `stop`.
pub async fn sample_gauges(carriers: Arc<dyn Fn() -> Vec<Arc<Carrier>> + Send + Sync>, store: Arc<Store>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        for carrier in carriers() {
            let name = carrier.name().to_string();
            let bound = carrier.bound_sessions();
            metrics::gauge!("otpgate_carrier_up", "carrier" => name.clone()).set(if bound > 0 { 1.0 } else { 0.0 });
            metrics::gauge!("otpgate_sessions_bound", "carrier" => name.clone()).set(bound as f64);
            metrics::gauge!("otpgate_window_in_use", "carrier" => name.clone()).set(carrier.in_flight() as f64);
            metrics::gauge!("otpgate_carrier_circuit_open", "carrier" => name.clone()).set(f64::from(u8::from(carrier.circuit_open())));
            metrics::gauge!("otpgate_carrier_taking_traffic", "carrier" => name.clone()).set(f64::from(u8::from(carrier.taking_traffic())));
            metrics::gauge!("otpgate_carrier_rate_limit", "carrier" => name.clone()).set(carrier.limits().1.unwrap_or(0.0));
            // Counters an alert or panel reads exist from the start, not from their first event.
            metrics::counter!("otpgate_spillovers_total", "carrier" => name.clone()).increment(0);
            metrics::counter!("otpgate_receipts_ambiguous_total", "carrier" => name.clone()).increment(0);
            metrics::counter!("otpgate_receipts_late_total", "carrier" => name.clone()).increment(0);
            for reason in ["held_full", "unmatched"] {
                metrics::counter!("otpgate_receipts_dropped_total", "carrier" => name.clone(), "reason" => reason).increment(0);
            }
        }
        let (depth, oldest) = store.queue_stats(std::time::SystemTime::now());
        metrics::gauge!("otpgate_queue_depth").set(depth as f64);
        metrics::gauge!("otpgate_queue_oldest_age_seconds").set(oldest.as_secs_f64());
        handle().run_upkeep();
    }
}

/// axum middleware: counts requests and times them by route template (never the raw path,
/// which holds ids).
pub async fn track_http(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("otpgate_http_requests_total", "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("otpgate_http_request_duration_seconds", "route" => route).record(started.elapsed().as_secs_f64());
    response
}
