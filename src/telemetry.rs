//! Prometheus metrics: every metric's name (a constant here, nowhere spelled twice), the
//! recorder and the `/metrics` endpoint. A leaf: it imports nothing of the crate, so every module
//! may count.
//!
//! Names follow Prometheus conventions (`otpgate_` prefix, `_total` counters, `_seconds`
//! histograms). No label ever carries user input: labels are carrier names (from config),
//! route templates, status classes and fixed outcome names, so cardinality stays bounded.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

// Metric names.
pub const CARRIER_CIRCUIT_OPEN: &str = "otpgate_carrier_circuit_open";
pub const CARRIER_RATE_LIMIT: &str = "otpgate_carrier_rate_limit";
pub const CARRIER_TAKING_TRAFFIC: &str = "otpgate_carrier_taking_traffic";
pub const CARRIER_UP: &str = "otpgate_carrier_up";
pub const CLUSTER_LEADER: &str = "otpgate_cluster_leader";
pub const CLUSTER_TAKEOVERS_TOTAL: &str = "otpgate_cluster_takeovers_total";
pub const HTTP_CONNECTIONS: &str = "otpgate_http_connections";
pub const HTTP_CONNECTIONS_REFUSED_TOTAL: &str = "otpgate_http_connections_refused_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "otpgate_http_request_duration_seconds";
pub const HTTP_REQUESTS_TOTAL: &str = "otpgate_http_requests_total";
pub const LONG_MESSAGE_IDS_TOTAL: &str = "otpgate_long_message_ids_total";
pub const MESSAGES_TOTAL: &str = "otpgate_messages_total";
pub const MOBILE_ORIGINATED_TOTAL: &str = "otpgate_mobile_originated_total";
pub const ORPHANS_FOUND_TOTAL: &str = "otpgate_orphans_found_total";
pub const OTP_APPROVED_TOTAL: &str = "otpgate_otp_approved_total";
pub const OTP_SENT_TOTAL: &str = "otpgate_otp_sent_total";
pub const QUEUE_DEPTH: &str = "otpgate_queue_depth";
pub const QUEUE_OLDEST_AGE_SECONDS: &str = "otpgate_queue_oldest_age_seconds";
pub const RECEIPT_LATENCY_SECONDS: &str = "otpgate_receipt_latency_seconds";
pub const RECEIPT_WINDOW_ENTRIES: &str = "otpgate_receipt_window_entries";
pub const RECEIPTS_AMBIGUOUS_TOTAL: &str = "otpgate_receipts_ambiguous_total";
pub const RECEIPTS_DROPPED_TOTAL: &str = "otpgate_receipts_dropped_total";
pub const RECEIPTS_HELD_TOTAL: &str = "otpgate_receipts_held_total";
pub const RECEIPTS_LATE_TOTAL: &str = "otpgate_receipts_late_total";
pub const RECEIPTS_TOTAL: &str = "otpgate_receipts_total";
pub const RECEIPTS_UNMATCHED_TOTAL: &str = "otpgate_receipts_unmatched_total";
pub const RECEIPTS_DEFERRED_TOTAL: &str = "otpgate_receipts_deferred_total";
pub const DISPATCH_DEFERRED_TOTAL: &str = "otpgate_dispatch_deferred_total";
pub const RECONNECTS_TOTAL: &str = "otpgate_reconnects_total";
pub const SEGMENTS_TOTAL: &str = "otpgate_segments_total";
pub const FRAUD_SUSPENSIONS_TOTAL: &str = "otpgate_fraud_suspensions_total";
pub const FRAUD_REFUSED_TOTAL: &str = "otpgate_fraud_refused_total";
pub const FRAUD_SUSPENDED_PREFIXES: &str = "otpgate_fraud_suspended_prefixes";
pub const RECOVERED_TOTAL: &str = "otpgate_recovered_total";
pub const RESEND_LIMIT_TOTAL: &str = "otpgate_resend_limit_total";
pub const RESUBMITS_TOTAL: &str = "otpgate_resubmits_total";
pub const SESSIONS_BOUND: &str = "otpgate_sessions_bound";
pub const SPILL_AFTER_SECONDS: &str = "otpgate_spill_after_seconds";
pub const SPILLOVERS_TOTAL: &str = "otpgate_spillovers_total";
pub const STORE_FLUSH_SECONDS: &str = "otpgate_store_flush_seconds";
pub const STORE_FLUSHED_WRITES_TOTAL: &str = "otpgate_store_flushed_writes_total";
pub const SUBMIT_RESPONSE_SECONDS: &str = "otpgate_submit_response_seconds";
pub const SUBMIT_TOTAL: &str = "otpgate_submit_total";
pub const VERIFICATIONS_TOTAL: &str = "otpgate_verifications_total";
pub const WEBHOOK_ATTEMPT_SECONDS: &str = "otpgate_webhook_attempt_seconds";
pub const WEBHOOK_BACKLOG: &str = "otpgate_webhook_backlog";
pub const WEBHOOK_DEAD_TOTAL: &str = "otpgate_webhook_dead_total";
pub const WEBHOOK_DELIVERIES_TOTAL: &str = "otpgate_webhook_deliveries_total";
pub const TLS_CERTIFICATE_EXPIRY: &str = "otpgate_tls_certificate_expiry_timestamp_seconds";
pub const WEBHOOK_DISABLED: &str = "otpgate_webhook_disabled";
pub const WEBHOOK_OLDEST_PENDING_SECONDS: &str = "otpgate_webhook_oldest_pending_seconds";
pub const WINDOW_IN_USE: &str = "otpgate_window_in_use";

/// Latency buckets in seconds: sub-millisecond HTTP up to minute-long receipts.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// A group commit takes a fraction of a millisecond on a local disk: finer buckets.
const FLUSH_BUCKETS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// The process-wide recorder, installed on first use (tests start several daemons in one
/// process; they share it).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(STORE_FLUSH_SECONDS.into()), FLUSH_BUCKETS))
            .unwrap_or_else(|_| PrometheusBuilder::new());
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
    describe_counter!(HTTP_REQUESTS_TOTAL, "HTTP requests by route template and status code");
    describe_histogram!(HTTP_REQUEST_DURATION_SECONDS, "HTTP request latency by route template");
    describe_counter!(MESSAGES_TOTAL, "Messages entering each state");
    describe_gauge!(QUEUE_DEPTH, "Messages waiting to be submitted");
    describe_gauge!(QUEUE_OLDEST_AGE_SECONDS, "Age of the oldest message waiting to be submitted");
    describe_histogram!(
        STORE_FLUSH_SECONDS,
        "Group commits: time to make the waiting writes durable (sled's flush and fdatasync, or the database's synchronous commit)"
    );
    describe_counter!(
        STORE_FLUSHED_WRITES_TOTAL,
        "Writes made durable by group commits (requests, submits, receipt batches): divided by the flushes, writers per flush"
    );
    describe_gauge!(
        RECEIPT_WINDOW_ENTRIES,
        "Recent submits whose receipt correlation is held in memory (sled; store.receipt_window_max caps it)"
    );
    describe_counter!(
        RESUBMITS_TOTAL,
        "Sends of a message whose earlier submit went out without a readable answer (connection lost, response timeout, unreadable response, crash mid-submit): possible duplicates"
    );
    describe_gauge!(CLUSTER_LEADER, "1 while this node leads the cluster's dispatch (binds carriers, submits, tracks receipts), else 0");
    describe_counter!(CLUSTER_TAKEOVERS_TOTAL, "Terms this node began as the cluster's dispatch leader");
    describe_counter!(
        RESEND_LIMIT_TOTAL,
        "Messages failed because their submits kept going out unanswered (messages.max_unconfirmed_resends)"
    );
    describe_counter!(SPILLOVERS_TOTAL, "Messages moved off a carrier that could not take them within the spill bound");
    describe_gauge!(SPILL_AFTER_SECONDS, "messages.spill_after: the longest a message should wait on one carrier");
    describe_counter!(RECOVERED_TOTAL, "Queued messages re-queued at start-up from the store");
    describe_gauge!(CARRIER_UP, "1 while at least one session of the carrier is bound");
    describe_gauge!(CARRIER_CIRCUIT_OPEN, "1 while the carrier's circuit breaker keeps traffic away");
    describe_gauge!(CARRIER_TAKING_TRAFFIC, "1 while the carrier is bound, its circuit closed and its sessions answering");
    describe_gauge!(CARRIER_RATE_LIMIT, "The carrier's submit rate cap now, after throttling (0 = unpaced)");
    describe_gauge!(SESSIONS_BOUND, "Bound submit sessions per carrier");
    describe_counter!(SUBMIT_TOTAL, "submit_sm results per carrier and class");
    describe_histogram!(SUBMIT_RESPONSE_SECONDS, "submit_sm to submit_sm_resp time per carrier");
    describe_gauge!(WINDOW_IN_USE, "submit_sm awaiting a response per carrier");
    describe_counter!(RECONNECTS_TOTAL, "Sessions lost or binds failed, by reason");
    describe_counter!(FRAUD_SUSPENSIONS_TOTAL, "Destination prefixes suspended by the fraud guard, by country");
    describe_counter!(
        FRAUD_REFUSED_TOTAL,
        "New codes refused by the fraud guard (mode enforce) or that it would refuse (mode monitor), by country"
    );
    describe_gauge!(FRAUD_SUSPENDED_PREFIXES, "Destination prefixes suspended (or probed) now");
    describe_counter!(SEGMENTS_TOTAL, "SMS parts (submit_sm) a carrier accepted: what carriers bill");
    describe_counter!(RECEIPTS_TOTAL, "Delivery receipts per carrier and state");
    describe_histogram!(RECEIPT_LATENCY_SECONDS, "Submit to receipt time per carrier");
    describe_counter!(
        DISPATCH_DEFERRED_TOTAL,
        "Queued messages left in the store because the dispatcher held messages.dispatch_backlog already; handed over as it drains"
    );
    describe_counter!(RECEIPTS_DEFERRED_TOTAL, "Receipts the SMSC was asked to send again later because the store was a full queue behind");
    describe_counter!(RECEIPTS_UNMATCHED_TOTAL, "Receipts that matched no message (or could not be read)");
    describe_counter!(RECEIPTS_HELD_TOTAL, "Receipts that came before their submit_sm_resp was on record: held, applied when it is");
    describe_counter!(RECEIPTS_LATE_TOTAL, "Receipts for a message that already had its final receipt: counted, not applied");
    describe_counter!(RECEIPTS_AMBIGUOUS_TOTAL, "Receipts whose id names different waiting messages under different readings: not applied");
    describe_counter!(
        RECEIPTS_DROPPED_TOTAL,
        "Receipts not kept: held_full (max_held_receipts reached) or unmatched (held past hold_receipts_for)"
    );
    describe_counter!(MOBILE_ORIGINATED_TOTAL, "Mobile-originated SMS received and ignored (otpgate takes no inbound SMS)");
    describe_counter!(LONG_MESSAGE_IDS_TOTAL, "submit_sm_resp with a message_id longer than SMPP allows, read anyway");
    describe_counter!(VERIFICATIONS_TOTAL, "Verification events by outcome");
    describe_counter!(OTP_SENT_TOTAL, "OTP SMS accepted, by carrier and destination country");
    describe_counter!(OTP_APPROVED_TOTAL, "Verifications approved, by the carrier of their last SMS and the number's country");
    describe_counter!(
        WEBHOOK_DELIVERIES_TOTAL,
        "Webhook attempts per endpoint by result: delivered (2xx), rejected (other status), gone (410), timeout, unreachable"
    );
    describe_histogram!(WEBHOOK_ATTEMPT_SECONDS, "Webhook attempt time per endpoint, request sent to answer read");
    describe_gauge!(WEBHOOK_BACKLOG, "Events waiting for each webhook endpoint");
    describe_gauge!(WEBHOOK_OLDEST_PENDING_SECONDS, "Age of the oldest event waiting for each webhook endpoint");
    describe_counter!(WEBHOOK_DEAD_TOTAL, "Events given up on after webhooks.retry_for (listed and re-sent by an operator)");
    describe_gauge!(
        TLS_CERTIFICATE_EXPIRY,
        "When each configured certificate file expires (its soonest certificate), unix seconds, by use and file"
    );
    describe_gauge!(WEBHOOK_DISABLED, "1 while an endpoint answered 410 Gone: nothing is sent to it until the config is reloaded");
}

/// The metrics listener's routes: `/metrics`.
pub fn router() -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        get(|| async {
            let h = handle();
            h.run_upkeep();
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response()
        }),
    )
}

/// axum middleware: counts requests and times them by route template (never the raw path,
/// which holds ids).
pub async fn track_http(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route).record(started.elapsed().as_secs_f64());
    response
}
