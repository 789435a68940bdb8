//! A carrier: its configured number of sessions, each kept bound by a supervisor task.
//!
//! Each supervisor loops connect → bind → serve until closed → back off → again, until shutdown,
//! when it unbinds cleanly. Submits pass the carrier's circuit breaker and pacer (see
//! `health.rs`), then go to the bound session with the most free window within the effective
//! (AIMD) window.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, OwnedSemaphorePermit, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::SubmitGate;
use super::backoff::Backoff;
use super::health::{Admission, Health};
use super::message::OutboundSms;
use super::outcome::{NotSubmitted, Permanent, SubmitOutcome};
use super::session::{BindMode, ReceiptSender, Session, SessionError, SessionSettings};
use super::settings::{BindType, CarrierConfig};
use crate::telemetry;
use crate::tls::Connector;

/// A carrier SMSC and its sessions.
pub struct Carrier {
    name: Arc<str>,
    /// Every submit_sm is checked against it first (cluster fencing).
    gate: SubmitGate,
    config: CarrierConfig,
    /// One slot per configured session that can submit; `None` while that session is down.
    slots: Vec<Mutex<Option<Session>>>,
    /// How many slots hold a bound session.
    bound: watch::Sender<usize>,
    health: Mutex<Health>,
    /// When the next paced submit may go (pacing follows `health`'s rate).
    next_slot: tokio::sync::Mutex<Instant>,
    /// Signalled whenever a submit finishes and frees window.
    released: Arc<Notify>,
    next_pick: AtomicUsize,
    /// Submits waiting for a pacing slot or window room.
    waiting: AtomicUsize,
    tasks: TaskTracker,
    /// The links' TLS client, taken by each connection attempt (see `SessionSettings::tls`).
    tls: Mutex<Option<Result<Arc<Connector>, Arc<str>>>>,
    /// Why the last bind failed, until a bind succeeds (`/readyz` shows it).
    last_bind_error: Mutex<Option<String>>,
}

impl Carrier {
    /// Starts the carrier's supervisors; they run until `shutdown` is cancelled.
    pub fn start(config: CarrierConfig, receipts: ReceiptSender, shutdown: CancellationToken) -> Arc<Carrier> {
        Carrier::start_gated(config, receipts, shutdown, SubmitGate::default())
    }

    /// A carrier that never binds: what a cluster node that does not dispatch routes by (its
    /// intake checks destinations against routes; the leader's carriers send).
    pub fn dormant(config: CarrierConfig) -> Arc<Carrier> {
        let carrier = Carrier::new(config, SubmitGate::default());
        carrier.tasks.close();
        carrier
    }

    /// As [`Carrier::start`], every submit_sm first checked against `gate`.
    pub fn start_gated(config: CarrierConfig, receipts: ReceiptSender, shutdown: CancellationToken, gate: SubmitGate) -> Arc<Carrier> {
        let carrier = Carrier::new(config, gate);
        if let Err(e) = carrier.reload_tls() {
            tracing::error!(carrier = %carrier.name, error = %e, "TLS cannot be set up: every bind will fail until the files are fixed and the config reloaded");
            *lock(&carrier.tls) = Some(Err(Arc::from(e.to_string())));
        }
        let links: Vec<(usize, BindMode, bool)> = (0..carrier.config.sessions)
            .flat_map(|slot| match carrier.config.bind {
                BindType::Transceiver => vec![(slot, BindMode::Transceiver, true)],
                BindType::TransmitterReceiver => vec![(slot, BindMode::Transmitter, true), (slot, BindMode::Receiver, false)],
            })
            .collect();
        for (slot, mode, submits) in links {
            let label = format!("{}#{slot}/{}", carrier.name, mode.as_str());
            let link = Link { carrier: carrier.clone(), slot: submits.then_some(slot), settings: carrier.session_settings(mode, label) };
            carrier.tasks.spawn(link.supervise(receipts.clone(), shutdown.clone()));
        }
        carrier.tasks.close();
        carrier
    }

    fn new(config: CarrierConfig, gate: SubmitGate) -> Arc<Carrier> {
        Arc::new(Carrier {
            gate,
            name: Arc::from(config.name.as_str()),
            slots: (0..config.sessions).map(|_| Mutex::new(None)).collect(),
            bound: watch::channel(0).0,
            health: Mutex::new(Health::new(
                config.window,
                config.max_tps,
                config.circuit_failures,
                config.circuit_open,
                std::time::Instant::now(),
            )),
            next_slot: tokio::sync::Mutex::new(Instant::now()),
            released: Arc::new(Notify::new()),
            next_pick: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            tasks: TaskTracker::new(),
            tls: Mutex::new(None),
            last_bind_error: Mutex::new(None),
            config,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &CarrierConfig {
        &self.config
    }

    fn session_settings(&self, mode: BindMode, label: String) -> SessionSettings {
        let c = &self.config;
        SessionSettings {
            carrier: self.name.clone(),
            label: Arc::from(label),
            endpoint: c.endpoint(),
            system_id: c.system_id.clone(),
            password: c.password.clone(),
            system_type: c.system_type.clone(),
            mode,
            window: c.window,
            response_timeout: c.response_timeout,
            enquire_link_interval: c.enquire_link_interval,
            receipt_format: Arc::new(c.receipt_format()),
            receipt_ids: c.receipt_id,
            gate: self.gate.clone(),
            tls: None,
        }
    }

    /// Reads the TLS files again (at start and on SIGHUP: a renewed client certificate or CA
    /// file is used from the next connection on; bound sessions carry on). On an error the
    /// client in use stays.
    pub(crate) fn reload_tls(&self) -> Result<(), crate::tls::TlsError> {
        let Some(connector) = self.config.tls_connector()? else { return Ok(()) };
        for file in &connector.files {
            file.export_expiry(&format!("carrier:{}", self.name));
        }
        *lock(&self.tls) = Some(Ok(Arc::new(connector)));
        Ok(())
    }

    /// Why the last bind failed, while no bind has succeeded since.
    pub fn last_bind_error(&self) -> Option<String> {
        lock(&self.last_bind_error).clone()
    }

    fn note_bind(&self, error: Option<&SessionError>) {
        *lock(&self.last_bind_error) = error.map(ToString::to_string);
    }

    /// Whether this process may submit at all now (see [`SubmitGate`]).
    pub fn may_submit(&self) -> bool {
        self.gate.allows()
    }

    /// Sessions that can submit right now.
    pub fn bound_sessions(&self) -> usize {
        *self.bound.borrow()
    }

    /// Watches the number of bound submit sessions (for the dispatcher: wait, don't poll).
    pub fn watch_bound(&self) -> watch::Receiver<usize> {
        self.bound.subscribe()
    }

    /// Waits until at least `n` sessions are bound, or `limit` passes. Returns whether they are.
    pub async fn wait_bound(&self, n: usize, limit: Duration) -> bool {
        self.wait_sessions(limit, |bound| bound >= n).await
    }

    /// Waits until the number of bound sessions satisfies `condition`, or `limit` passes.
    pub async fn wait_sessions(&self, limit: Duration, condition: impl Fn(usize) -> bool) -> bool {
        let mut watch = self.watch_bound();
        // The borrow `wait_for` returns must not outlive this call: it blocks `publish`.
        tokio::time::timeout(limit, watch.wait_for(|&bound| condition(bound))).await.is_ok_and(|r| r.is_ok())
    }

    /// Submits outstanding across all sessions.
    pub fn in_flight(&self) -> usize {
        self.sessions().iter().map(Session::in_flight).sum()
    }

    fn sessions(&self) -> Vec<Session> {
        self.slots.iter().filter_map(|slot| slot.lock().ok().and_then(|s| s.clone())).filter(|s| !s.is_closed()).collect()
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this carrier can take a submit now: a session is bound and the circuit is not
    /// open.
    pub fn usable(&self) -> bool {
        self.bound_sessions() > 0 && !self.health().is_open(std::time::Instant::now())
    }

    /// Whether a submit started now would likely go out within `within`: the submits already
    /// waiting fit the rate cap in that time, or (unpaced) within one effective window.
    pub fn has_room(&self, within: Duration) -> bool {
        let waiting = self.waiting.load(Ordering::Relaxed);
        let health = self.health();
        match health.tps() {
            Some(tps) => (waiting as f64 + 1.0) / tps <= within.as_secs_f64(),
            None => waiting < self.bound_sessions().max(1) * health.window(),
        }
    }

    /// Whether submits sent now would likely be answered: usable, and no session has left a
    /// request unanswered for a second (a hung SMSC shows here before its response timeout).
    pub fn taking_traffic(&self) -> bool {
        let stalled = Duration::from_secs(1).min(self.config.response_timeout);
        self.usable() && !self.sessions().iter().any(|s| s.oldest_unanswered().is_some_and(|waited| waited >= stalled))
    }

    /// Whether the circuit breaker keeps traffic away now.
    pub fn circuit_open(&self) -> bool {
        self.health().is_open(std::time::Instant::now())
    }

    /// The effective per-session window and rate cap now (after throttling).
    pub fn limits(&self) -> (usize, Option<f64>) {
        let health = self.health();
        (health.window(), health.tps())
    }

    /// The bound session with the most free window within the effective window; ties rotate.
    fn pick(&self, effective_window: usize) -> Option<Session> {
        let sessions = self.sessions();
        if sessions.is_empty() {
            return None;
        }
        let start = self.next_pick.fetch_add(1, Ordering::Relaxed) % sessions.len();
        (0..sessions.len())
            .map(|i| &sessions[(start + i) % sessions.len()])
            .filter(|s| s.in_flight() < effective_window && s.free_window() > 0)
            .max_by_key(|s| s.free_window())
            .cloned()
    }

    /// Waits for a session with room in the effective window; `None` when none is bound.
    async fn session_with_room(&self) -> Option<Session> {
        loop {
            let window = self.health().window();
            if let Some(session) = self.pick(window) {
                return Some(session);
            }
            if self.sessions().is_empty() {
                return None;
            }
            // A finished submit wakes us; the timeout covers a session closing meanwhile.
            let _ = tokio::time::timeout(Duration::from_millis(100), self.released.notified()).await;
        }
    }

    /// Spaces submits at the current rate cap, if there is one. Waiters queue on the lock and
    /// each computes its slot from the rate *at that moment*, so a rate that recovers takes
    /// effect at once instead of after slots reserved at the throttled rate.
    async fn pace(&self) {
        if self.health().tps().is_none() {
            return;
        }
        let mut next = self.next_slot.lock().await;
        tokio::time::sleep_until(*next).await;
        if let Some(tps) = self.health().tps() {
            *next = Instant::now() + Duration::from_secs_f64(1.0 / tps.max(0.1));
        }
    }

    /// Submits one SMS over this carrier, waiting as long as it takes for room.
    pub async fn submit(&self, sms: &OutboundSms) -> SubmitOutcome {
        self.submit_via(sms, Duration::MAX).await.outcome
    }

    /// Submits one SMS and says which session carried it (`None` when none did). Waits at most
    /// `max_wait` for a pacing slot and window room, else answers [`NotSubmitted::Busy`].
    pub async fn submit_via(&self, sms: &OutboundSms, max_wait: Duration) -> Submission {
        let not_sent = |outcome| Submission { outcome, accepted: Vec::new(), parts: 1, session: None, slot: None };
        if self.health().admit(std::time::Instant::now()) == Admission::No {
            return not_sent(SubmitOutcome::RetryElsewhere { reason: NotSubmitted::CircuitOpen });
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let room = async {
            self.pace().await;
            self.session_with_room().await
        };
        let room = match max_wait {
            Duration::MAX => Ok(room.await),
            limit => tokio::time::timeout(limit, room).await,
        };
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let session = match room {
            Ok(session) => session,
            Err(_) => {
                let outcome = SubmitOutcome::RetryElsewhere { reason: NotSubmitted::Busy };
                // Releases a half-open probe slot, if this was the probe.
                self.health().record(&outcome, std::time::Instant::now());
                return not_sent(outcome);
            }
        };
        let pdus = match sms.to_submit_sms(&self.config, SystemTime::now()) {
            Ok(pdus) => pdus,
            Err(e) => return not_sent(SubmitOutcome::Permanent { reason: Permanent::Message(e) }),
        };
        let parts = pdus.len();
        let Some(session) = session else {
            let outcome = SubmitOutcome::RetryElsewhere { reason: NotSubmitted::NoSession };
            self.health().record(&outcome, std::time::Instant::now());
            return Submission { parts, ..not_sent(outcome) };
        };
        let started = std::time::Instant::now();
        let (verdicts, permits) = self.send_parts(&session, pdus).await;
        let (mut first_refusal, mut accepted) = (None, Vec::new());
        for (i, outcome) in verdicts.into_iter().enumerate() {
            if matches!(outcome, SubmitOutcome::Accepted { .. } | SubmitOutcome::RetryLater { .. } | SubmitOutcome::Permanent { .. }) {
                metrics::histogram!(telemetry::SUBMIT_RESPONSE_SECONDS, "carrier" => self.name.to_string())
                    .record(started.elapsed().as_secs_f64());
            }
            if self.health().record(&outcome, std::time::Instant::now()) {
                tracing::warn!(carrier = %self.name, "circuit opened: submits keep failing; traffic goes elsewhere");
            }
            match outcome {
                SubmitOutcome::Accepted { message_id } => {
                    metrics::counter!(telemetry::SEGMENTS_TOTAL, "carrier" => self.name.to_string()).increment(1);
                    accepted.push((i as u8 + 1, message_id));
                }
                refused => {
                    first_refusal.get_or_insert(refused);
                }
            }
        }
        let outcome = match first_refusal {
            Some(refused) => refused,
            // Fewer verdicts than parts only when one could not be sent, which is a refusal.
            None if accepted.len() < parts => SubmitOutcome::RetryElsewhere { reason: NotSubmitted::NoSession },
            None => SubmitOutcome::Accepted { message_id: accepted.last().map(|(_, id)| id.clone()).unwrap_or_default() },
        };
        let slot = WindowSlot { permits, released: self.released.clone() };
        Submission { outcome, accepted, parts, session: Some(session.label().clone()), slot: Some(slot) }
    }

    /// Sends a message's PDUs over `session` in order and returns the verdict on each sent (a
    /// part that could not go out ends the list) with the window slots they hold. Parts that fit
    /// the window take their slots all at once and go out without waiting for each other's
    /// answers; a message with more parts than the window goes one part at a time, each slot
    /// freed with its answer. Every part takes its own pacing slot (max_tps counts submit_sm, as
    /// carriers do).
    async fn send_parts(&self, session: &Session, pdus: Vec<rusmpp::pdus::SubmitSm>) -> (Vec<SubmitOutcome>, Vec<OwnedSemaphorePermit>) {
        let mut verdicts = Vec::with_capacity(pdus.len());
        let single = pdus.len() == 1;
        if single || pdus.len() > self.config.window {
            let mut permits = Vec::new();
            for (i, pdu) in pdus.into_iter().enumerate() {
                if i > 0 {
                    self.pace().await;
                }
                let (outcome, permit) = session.submit(pdu).await;
                let accepted = matches!(outcome, SubmitOutcome::Accepted { .. });
                // One SMS keeps its slot until the store knows it; parts one by one cannot.
                permits.extend(permit.filter(|_| single));
                verdicts.push(outcome);
                if !accepted {
                    break;
                }
            }
            return (verdicts, permits);
        }
        let slots = match session.reserve(pdus.len()).await {
            Ok(slots) => slots,
            Err(refused) => return (vec![refused], Vec::new()),
        };
        let mut pending = Vec::with_capacity(pdus.len());
        for (i, pdu) in pdus.into_iter().enumerate() {
            if i > 0 {
                self.pace().await;
            }
            match session.send_reserved(pdu).await {
                Ok(sent) => pending.push(sent),
                Err(refused) => {
                    verdicts.push(refused);
                    break;
                }
            }
        }
        let mut answered = Vec::with_capacity(pending.len() + verdicts.len());
        for sent in pending {
            answered.push(sent.verdict().await);
        }
        answered.extend(verdicts);
        (answered, vec![slots])
    }

    /// Waits until every supervisor has finished (after shutdown: all sessions unbound).
    pub async fn stopped(&self) {
        self.tasks.wait().await;
    }

    fn publish(&self, slot: usize, session: Option<Session>) {
        if let Ok(mut guard) = self.slots[slot].lock() {
            *guard = session;
        }
        let bound = self.slots.iter().filter(|s| s.lock().map(|g| g.is_some()).unwrap_or(false)).count();
        self.bound.send_replace(bound);
    }
}

/// What a submit came to.
pub struct Submission {
    /// `Accepted` (with the last part's id) when the SMSC took every part; else the verdict on
    /// the first part it did not take.
    pub outcome: SubmitOutcome,
    /// The parts the SMSC took, in order: (part number from 1, its SMSC message id). With a
    /// refusal, parts taken may still reach the handset.
    pub accepted: Vec<(u8, String)>,
    /// How many parts the message went in on this carrier (1 unless it is long).
    pub parts: usize,
    /// The session that carried it, if one did.
    pub session: Option<Arc<str>>,
    /// Its window slot, taken until this is dropped.
    pub slot: Option<WindowSlot>,
}

/// A submit's place in its session's window. An accepted submit keeps it until the store has
/// recorded it: a crash then leaves at most a window per session of submits the SMSC has and the
/// store does not know of (each is sent again: the duplicate bound). Dropping it frees the slot
/// and wakes a submit waiting for room.
pub struct WindowSlot {
    permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    released: Arc<Notify>,
}

impl Drop for WindowSlot {
    fn drop(&mut self) {
        // Freed first, so whoever wakes finds the room.
        self.permits.clear();
        self.released.notify_one();
    }
}

/// One supervised connection of a carrier.
struct Link {
    carrier: Arc<Carrier>,
    /// The submit slot it fills, or `None` for a receive-only link.
    slot: Option<usize>,
    settings: SessionSettings,
}

impl Link {
    async fn supervise(self, receipts: ReceiptSender, shutdown: CancellationToken) {
        let config = &self.carrier.config;
        let backoff = Backoff { min: config.reconnect_min, max: config.reconnect_max };
        let mut attempt: u32 = 0;
        loop {
            let settings = SessionSettings { tls: lock(&self.carrier.tls).clone(), ..self.settings.clone() };
            let opened = tokio::select! {
                opened = Session::open(&settings, receipts.clone()) => opened,
                _ = shutdown.cancelled() => break,
            };
            match opened {
                Ok(session) => {
                    attempt = 0;
                    self.carrier.note_bind(None);
                    tracing::info!(carrier = %self.carrier.name, link = %self.settings.label, endpoint = %self.settings.endpoint, "bound");
                    self.fill(Some(session.clone()));
                    let ended = tokio::select! {
                        reason = session.closed() => Some(reason),
                        _ = shutdown.cancelled() => None,
                    };
                    self.fill(None);
                    match ended {
                        Some(reason) => {
                            tracing::warn!(carrier = %self.carrier.name, link = %self.settings.label, %reason, "session closed; will reconnect");
                            metrics::counter!(telemetry::RECONNECTS_TOTAL, "carrier" => self.carrier.name.to_string(), "reason" => reason.label())
                                .increment(1);
                        }
                        None => {
                            session.unbind(config.response_timeout).await;
                            tracing::info!(carrier = %self.carrier.name, link = %self.settings.label, "unbound");
                            break;
                        }
                    }
                }
                Err(error) => {
                    log_bind_failure(&self.carrier.name, &self.settings.label, attempt, &error);
                    self.carrier.note_bind(Some(&error));
                    let reason = match error {
                        SessionError::BindRefused { .. } => "bind_refused",
                        SessionError::Connect { .. } | SessionError::ConnectTimeout { .. } => "connect_failed",
                        SessionError::Tls { failure, .. } => failure.label,
                        SessionError::TlsSetup(_) => "tls_setup",
                        _ => "bind_failed",
                    };
                    metrics::counter!(telemetry::RECONNECTS_TOTAL, "carrier" => self.carrier.name.to_string(), "reason" => reason)
                        .increment(1);
                }
            }
            let delay = backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            tracing::debug!(link = %self.settings.label, delay_ms = delay.as_millis() as u64, "reconnect backoff");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => break,
            }
        }
    }

    fn fill(&self, session: Option<Session>) {
        if let Some(slot) = self.slot {
            self.carrier.publish(slot, session);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Short critical sections that leave consistent data even after a panic.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn log_bind_failure(carrier: &str, link: &str, attempt: u32, error: &SessionError) {
    match error {
        SessionError::BindRefused { .. } => {
            tracing::error!(carrier, link, attempt, %error, "bind refused; check system_id/password with the carrier")
        }
        _ => tracing::warn!(carrier, link, attempt, %error, "bind failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pacing_spaces_submits_at_max_tps() {
        let config: CarrierConfig = toml::from_str(
            "name = \"a\"\nhost = \"127.0.0.1\"\nport = 9\nsystem_id = \"x\"\npassword = \"y\"\nsource_addr = \"Acme\"\nmax_tps = 10\n",
        )
        .unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let stop = CancellationToken::new();
        let carrier = Carrier::start(config, tx, stop.clone());
        let start = Instant::now();
        for _ in 0..11 {
            carrier.pace().await;
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(1000), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1100), "{elapsed:?}");
        stop.cancel();
    }
}
