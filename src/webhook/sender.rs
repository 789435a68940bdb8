//! One endpoint's sender: walks the endpoint's event rows in key order, sends each subject's
//! oldest event (never two of one subject at once, so each message's events arrive in order),
//! deletes what was taken, and backs off what was not.
//!
//! A wave whose every attempt failed means the endpoint is down: the sender stops walking,
//! waits (`backoff_min` doubling to `backoff_max`, with jitter) and then probes with a single event before sending
//! waves again. An event that keeps failing backs off on its own schedule and, once older than
//! `retry_for`, is given up on (dead). A 410 Gone stops the endpoint until the config is
//! reloaded. Other endpoints have their own sender: a slow one delays no one else.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use super::settings::WebhookConfig;
use super::sign::Signer;
use crate::store::events::PendingEvent;
use crate::store::record::{to_ms, to_us};
use crate::store::{MessageId, Store, StoreError};
use crate::telemetry;

/// Rows read per step of a walk: at most one wave.
const PAGE: usize = 256;
/// Rows one walk reads at most, so the subjects it remembers stay bounded however long the
/// backlog (after an outage): the next walk starts again from the oldest.
const WALK_ROWS: usize = 65_536;
/// The pause between walks that found little to send: events arriving meanwhile go in one
/// walk, not one walk each (a walk reads the endpoint's rows from the start).
const GATHER: Duration = Duration::from_millis(10);
/// A walk starts this far before the oldest event the last one saw (events whose write was
/// still on its way then land there) ...
const LOOKBACK: Duration = Duration::from_secs(2);
/// ... and every this often from the very start of the endpoint's rows.
const FULL_WALK_EVERY: Duration = Duration::from_secs(30);
/// How often the backlog gauges are refreshed, at most.
const GAUGES_EVERY: Duration = Duration::from_secs(1);
/// How often an idle sender looks for rows other processes wrote (a cluster's other nodes).
const POLL: Duration = Duration::from_secs(1);
/// On a store other processes write too, events younger than this wait: an earlier event of
/// the same verification written by another node may still be on its way (in this process
/// the store knows, see `Store::unwritten`).
const SETTLE: Duration = Duration::from_millis(500);
/// An answer's body is read (so the connection can be reused) up to this, then dropped.
const MAX_ANSWER: usize = 64 * 1024;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// 410: the receiver wants no more.
    Gone,
    /// Another status, a timeout or no connection: `result` is the metric label.
    Failed {
        result: &'static str,
        reason: String,
    },
}

/// An endpoint as its sender uses it.
pub(crate) struct Endpoint {
    pub(crate) config: WebhookConfig,
    target: Target,
    client: HttpsClient,
}

/// Where an endpoint's events go.
enum Target {
    /// Each event's body POSTed to one URL, signed.
    Signed { uri: hyper::Uri, signer: Signer },
    /// A GET of the URL each event's body is (Kannel's `dlr-url`), as Kannel sends it: unsigned.
    UrlInEvent,
}

impl Endpoint {
    pub(crate) fn new(config: WebhookConfig) -> Result<Endpoint, String> {
        let target = match config.url_in_event {
            true => Target::UrlInEvent,
            false => Target::Signed {
                uri: config.url.parse::<hyper::Uri>().map_err(|e| format!("url: {e}"))?,
                signer: config.signer().map_err(|e| e.to_string())?,
            },
        };
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        // No CA bundle on the host: https endpoints then fail verification, loudly, per attempt.
        let builder = match builder.with_native_roots() {
            Ok(builder) => builder,
            Err(e) => {
                tracing::warn!(webhook = %config.name, error = %e, "no system root certificates: https endpoints cannot be verified");
                let empty = rustls_config_without_roots();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(empty)
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(connector);
        Ok(Endpoint { config, target, client })
    }

    fn name(&self) -> &str {
        &self.config.name
    }

    fn backoff(&self, failures: u32) -> Duration {
        backoff(failures, self.config.backoff_min, self.config.backoff_max)
    }

    /// One attempt at `event` (a signed POST, or a GET of its URL), within the endpoint's timeout.
    async fn attempt(&self, event: &PendingEvent) -> Outcome {
        let body = event.row.body.as_bytes();
        let request = match &self.target {
            Target::Signed { uri, signer } => {
                let timestamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                hyper::Request::post(uri.clone())
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .header(hyper::header::USER_AGENT, concat!("otpgate/", env!("CARGO_PKG_VERSION")))
                    .header("webhook-id", &event.row.id)
                    .header("webhook-timestamp", timestamp.to_string())
                    .header("webhook-signature", signer.signature(&event.row.id, timestamp, body))
                    .body(Full::new(Bytes::copy_from_slice(body)))
            }
            Target::UrlInEvent => hyper::Request::get(event.row.body.as_str())
                .header(hyper::header::USER_AGENT, concat!("otpgate/", env!("CARGO_PKG_VERSION")))
                .body(Full::new(Bytes::new())),
        };
        let request = match request {
            Ok(request) => request,
            Err(e) => return Outcome::Failed { result: "unreachable", reason: format!("cannot build the request: {e}") },
        };
        let started = Instant::now();
        let exchange = async {
            let answer = self.client.request(request).await?;
            let status = answer.status();
            // Read (a bounded part of) the answer so the connection can serve the next request.
            let _ = Limited::new(answer.into_body(), MAX_ANSWER).collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        };
        let outcome = match tokio::time::timeout(self.config.timeout, exchange).await {
            Err(_) => Outcome::Failed {
                result: "timeout",
                reason: format!("no answer within {}", humantime::format_duration(self.config.timeout)),
            },
            Ok(Err(e)) => Outcome::Failed { result: "unreachable", reason: error_chain(&e) },
            Ok(Ok(status)) if status.is_success() => Outcome::Delivered,
            // One report URL's 410 is that URL's business, not the endpoint's: it is not asked again.
            Ok(Ok(hyper::StatusCode::GONE)) if self.config.url_in_event => Outcome::Delivered,
            Ok(Ok(hyper::StatusCode::GONE)) => Outcome::Gone,
            Ok(Ok(status)) => Outcome::Failed { result: "rejected", reason: format!("answered {status}") },
        };
        let result = match &outcome {
            Outcome::Delivered => "delivered",
            Outcome::Gone => "gone",
            Outcome::Failed { result, .. } => result,
        };
        let name = self.name().to_string();
        metrics::counter!(telemetry::WEBHOOK_DELIVERIES_TOTAL, "webhook" => name.clone(), "result" => result).increment(1);
        metrics::histogram!(telemetry::WEBHOOK_ATTEMPT_SECONDS, "webhook" => name).record(started.elapsed().as_secs_f64());
        outcome
    }
}

/// A TLS client config that trusts nothing (no roots found on the host).
fn rustls_config_without_roots() -> rustls::ClientConfig {
    rustls::ClientConfig::builder().with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth()
}

/// An error with its causes ("connection refused", "invalid peer certificate: Expired"...).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The wait after `failures` failures in a row: `first` doubling to `max`, ±20 % so many
/// events (or endpoints) do not retry in step.
fn backoff(failures: u32, first: Duration, max: Duration) -> Duration {
    let base = first.saturating_mul(1 << failures.saturating_sub(1).min(20)).min(max);
    base.mul_f64(rand::random_range(0.8..1.2))
}

/// What one walk over the rows did.
#[derive(Default)]
struct Walk {
    delivered: usize,
    /// A wave failed whole: the endpoint looks down.
    down: bool,
    gone: bool,
    /// The soonest an event backing off is due again (unix ms).
    next_due_ms: Option<u64>,
    /// The oldest event seen (unix ms).
    oldest_ms: Option<u64>,
    /// When the id of the first row seen was taken (unix µs).
    first_taken_us: Option<u64>,
}

impl Walk {
    /// Notes an event due again at `ms`.
    fn due_at(&mut self, ms: u64) {
        self.next_due_ms = Some(self.next_due_ms.map_or(ms, |due| due.min(ms)));
    }
}

/// Sends `endpoint`'s events until `stop`, or until it answers 410 Gone (then sets `gone`).
pub(crate) async fn run(endpoint: Arc<Endpoint>, store: Arc<Store>, gone: Arc<AtomicBool>, stop: CancellationToken) {
    let name = endpoint.name().to_string();
    if let Err(e) = store.count_event_backlog(&name).await {
        tracing::warn!(webhook = %name, error = %e, "cannot count the events waiting");
    }
    metrics::gauge!(telemetry::WEBHOOK_DISABLED, "webhook" => name.clone()).set(0.0);
    metrics::counter!(telemetry::WEBHOOK_DEAD_TOTAL, "webhook" => name.clone()).increment(0);
    let mut down_in_a_row = 0u32;
    let mut full_walk = Instant::now();
    let mut gauges_at = Instant::now() - GAUGES_EVERY;
    let mut start_us: Option<u64> = None;
    loop {
        // Armed before the walk, so rows written during it wake the next one.
        let written = store.events_signal().notified();
        tokio::pin!(written);
        written.as_mut().enable();
        let probe = down_in_a_row > 0;
        if full_walk.elapsed() >= FULL_WALK_EVERY {
            (start_us, full_walk) = (None, Instant::now());
        }
        let start = start_us.map(|us| store.event_position(&name, us));
        let walk = match walk(&endpoint, &store, start, probe, &stop).await {
            Ok(walk) => walk,
            Err(e) => {
                tracing::error!(webhook = %name, error = %e, "cannot read or update the events waiting");
                Walk { down: true, ..Walk::default() }
            }
        };
        let now_us = to_us(SystemTime::now());
        let lookback = LOOKBACK.as_micros() as u64;
        start_us = Some(walk.first_taken_us.unwrap_or(now_us).min(now_us).saturating_sub(lookback));
        // Gauges once a second: on a database the backlog is a count.
        let mut backlog = 0;
        if gauges_at.elapsed() >= GAUGES_EVERY || walk.down {
            gauges_at = Instant::now();
            backlog = store.event_backlog(&name).await.unwrap_or_default();
            metrics::gauge!(telemetry::WEBHOOK_BACKLOG, "webhook" => name.clone()).set(backlog as f64);
            let oldest = walk.oldest_ms.map_or(0, |ms| to_ms(SystemTime::now()).saturating_sub(ms));
            metrics::gauge!(telemetry::WEBHOOK_OLDEST_PENDING_SECONDS, "webhook" => name.clone()).set(oldest as f64 / 1000.0);
        }
        if walk.gone {
            tracing::error!(webhook = %name, "the endpoint answered 410 Gone: nothing more is sent to it until the config is reloaded");
            metrics::gauge!(telemetry::WEBHOOK_DISABLED, "webhook" => name.clone()).set(1.0);
            gone.store(true, Ordering::Release);
            return;
        }
        let wait = if walk.down {
            down_in_a_row += 1;
            let wait = endpoint.backoff(down_in_a_row);
            tracing::warn!(webhook = %name, backlog, retry_in = %humantime::format_duration(Duration::from_secs(wait.as_secs())), "webhook endpoint not taking events");
            wait
        } else {
            if down_in_a_row > 0 {
                tracing::info!(webhook = %name, "webhook endpoint taking events again");
            }
            down_in_a_row = 0;
            if walk.delivered >= PAGE / 2 {
                // A backlog: straight on.
                continue;
            }
            if walk.delivered > 0 {
                // More may wait behind what was just sent (a subject's next event); a moment
                // gathers what arrives meanwhile into the next walk instead of one walk each.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(GATHER) => continue,
                }
            }
            let due = walk.next_due_ms.map(|ms| Duration::from_millis(ms.saturating_sub(to_ms(SystemTime::now()))));
            due.map_or(POLL, |due| due.min(POLL))
        };
        let down = walk.down;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            // While the endpoint is down, new events wait for the backoff too.
            _ = &mut written, if !down => {}
        }
    }
}

/// One walk over the endpoint's rows after `start` (from the first when `None`), oldest first.
/// `probe`: after the endpoint was down, try one event before anything else.
async fn walk(
    endpoint: &Endpoint,
    store: &Store,
    start: Option<Vec<u8>>,
    probe: bool,
    stop: &CancellationToken,
) -> Result<Walk, StoreError> {
    let mut walk = Walk::default();
    let mut after = start;
    // Subjects with an earlier event still waiting: their later events wait too.
    let mut waiting: HashSet<MessageId> = HashSet::new();
    let now_ms = to_ms(SystemTime::now());
    let mut probing = probe;
    let mut read = 0;
    while !stop.is_cancelled() && read < WALK_ROWS {
        let page = store.pending_events(endpoint.name(), after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        read += page.len();
        walk.first_taken_us = walk.first_taken_us.or(page.first().map(PendingEvent::taken_us));
        walk.oldest_ms = walk.oldest_ms.into_iter().chain(page.iter().map(|e| e.row.created_ms)).min();
        let mut wave = Vec::new();
        for event in page {
            if !waiting.insert(event.subject) {
                continue;
            }
            // Its turn comes once it is due, and once every earlier event of its subject is written.
            let settled_ms = match store.shared() {
                true => event.taken_us() / 1000 + SETTLE.as_millis() as u64,
                false => 0,
            };
            let due_ms = event.row.next_ms.max(settled_ms);
            if due_ms > now_ms {
                walk.due_at(due_ms);
                continue;
            }
            if store.unwritten(&event) {
                // Its write (or an earlier one of its subject) wakes the sender.
                continue;
            }
            wave.push(event);
            if probing {
                break;
            }
        }
        if wave.is_empty() {
            continue;
        }
        let tried = wave.len();
        let outcomes: Vec<(PendingEvent, Outcome)> = futures::stream::iter(wave)
            .map(|event| async move {
                let outcome = endpoint.attempt(&event).await;
                (event, outcome)
            })
            .buffer_unordered(endpoint.config.max_in_flight)
            .collect()
            .await;
        let mut sent = Vec::new();
        let mut failed = 0;
        for (mut event, outcome) in outcomes {
            match outcome {
                Outcome::Delivered => sent.push(event.key),
                Outcome::Gone => walk.gone = true,
                Outcome::Failed { reason, .. } => {
                    failed += 1;
                    event.row.attempts += 1;
                    let age = Duration::from_millis(now_ms.saturating_sub(event.row.created_ms));
                    if age >= endpoint.config.retry_for {
                        tracing::warn!(webhook = %endpoint.name(), event = %event.row.id, attempts = event.row.attempts, %reason, "event given up on (dead)");
                        event.row.last_error = Some(reason);
                        store.event_dead(&event, SystemTime::now()).await?;
                        metrics::counter!(telemetry::WEBHOOK_DEAD_TOTAL, "webhook" => endpoint.name().to_string()).increment(1);
                    } else {
                        tracing::debug!(webhook = %endpoint.name(), event = %event.row.id, attempts = event.row.attempts, %reason, "event not taken");
                        event.row.last_error = Some(reason);
                        event.row.next_ms = to_ms(SystemTime::now()) + endpoint.backoff(event.row.attempts).as_millis() as u64;
                        walk.due_at(event.row.next_ms);
                        store.event_failed(&event).await?;
                    }
                }
            }
        }
        walk.delivered += sent.len();
        store.events_sent(&sent).await?;
        if walk.gone || failed == tried {
            walk.down = !walk.gone;
            break;
        }
        probing = false;
    }
    Ok(walk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_to_an_hour_with_jitter() {
        let (first, max) = (Duration::from_secs(5), Duration::from_secs(3600));
        for (failures, base) in [(1, 5), (2, 10), (3, 20), (10, 2560), (11, 3600), (40, 3600)] {
            let wait = backoff(failures, first, max).as_secs_f64();
            assert!((base as f64 * 0.8..=base as f64 * 1.2).contains(&wait), "{failures}: {wait}");
        }
    }
}
