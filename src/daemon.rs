//! The running gateway: store, carriers, dispatcher, receipt tracking and the HTTP intake, started
//! together and shut down in the order that loses nothing.
//!
//! Start: open the store (fails if another process holds it), bind carriers, re-queue every
//! message the last process left queued or mid-submit, then listen for HTTP.
//! Shutdown: answer new requests 503, let submits under way finish, unbind every session, apply
//! the last receipts, then close the HTTP listener and flush the store.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::dispatch::{Dispatch, Dispatcher, Job, Policy};
use crate::http::{self, AppState};
use crate::otp::Otp;
use crate::route::Network;
use crate::smpp::{Carrier, ReceiptEvent};
use crate::store::{MessageId, MessageStatus, Store, StoreError, StoreOptions};
use crate::{telemetry, track};

/// Recovery reads the queue this many messages at a time ...
const RECOVERY_PAGE: usize = 1024;
/// ... while the dispatcher holds fewer than this many unfinished jobs.
const RECOVERY_BACKLOG: usize = 8192;

/// How often the retention sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    KeyFile(#[from] crate::otp::KeyFileError),
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// The running gateway.
pub struct Daemon {
    network: Arc<Network>,
    /// The config now in force (reload diffs against it).
    running: Mutex<Config>,
    /// One stop token per carrier, so a reload can retire a single carrier.
    carrier_stops: Mutex<HashMap<String, CancellationToken>>,
    /// Carriers a reload removed, still draining; shutdown waits for them too.
    retiring: Mutex<Vec<Arc<Carrier>>>,
    /// Held for carriers started by a reload; dropped at shutdown so the receipt channel closes.
    receipts: Mutex<Option<mpsc::Sender<ReceiptEvent>>>,
    store: Arc<Store>,
    metrics_addr: SocketAddr,
    /// Stops the metrics server and the gauge sampler.
    telemetry_stop: CancellationToken,
    state: Arc<AppState>,
    dispatcher: Dispatcher,
    http_addr: SocketAddr,
    http_stop: CancellationToken,
    http_task: JoinHandle<()>,
    carriers_stop: CancellationToken,
    receipts_task: JoinHandle<()>,
    sweep_task: JoinHandle<()>,
    failover_stop: CancellationToken,
    failover_task: JoinHandle<()>,
    recovery_stop: CancellationToken,
}

impl Daemon {
    /// Starts everything; returns once the store is open and the HTTP listener bound.
    pub async fn start(config: &Config) -> Result<Daemon, DaemonError> {
        Daemon::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// As [`Daemon::start`], with the clock the OTP rules read (tests move it forward).
    pub async fn start_with_clock(config: &Config, clock: Arc<dyn Clock>) -> Result<Daemon, DaemonError> {
        let options = StoreOptions {
            cache_capacity_bytes: config.store.cache_capacity_mb * 1024 * 1024,
            max_held_receipts: config.store.max_held_receipts,
            hold_receipts_for: config.store.hold_receipts_for,
        };
        let store = Store::open(&config.server.data_dir, &options)?;
        let (listener, http_addr) = listen(config.server.http_listen).await?;
        let (metrics_listener, metrics_addr) = listen(config.server.metrics_listen).await?;
        telemetry::handle();
        metrics::gauge!("otpgate_spill_after_seconds").set(config.messages.spill_after.as_secs_f64());
        metrics::counter!("otpgate_resend_limit_total").increment(0);

        let (receipts, receipts_rx) = mpsc::channel(track::RECEIPT_QUEUE);
        let carriers_stop = CancellationToken::new();
        let mut carrier_stops = HashMap::new();
        let carriers: Vec<Arc<Carrier>> = config
            .carriers
            .iter()
            .map(|c| {
                let stop = carriers_stop.child_token();
                carrier_stops.insert(c.name.clone(), stop.clone());
                Carrier::start(c.clone(), receipts.clone(), stop)
            })
            .collect();

        let network = Arc::new(Network::new(carriers, &config.routes));
        let (otp_submitted, otp_submitted_rx) = mpsc::unbounded_channel();
        let (otp_failed, otp_failed_rx) = mpsc::unbounded_channel();
        let (dispatcher, dispatch) = Dispatcher::start(
            store.clone(),
            network.clone(),
            Some(otp_submitted),
            Policy {
                spill_after: config.messages.spill_after,
                otp_spill_after: config.otp.spill_after,
                max_unconfirmed_resends: config.messages.max_unconfirmed_resends,
            },
        );
        let key_file = config.otp.hmac_key_file.clone().unwrap_or_else(|| config.server.data_dir.join("otp-hmac.key"));
        let key = crate::otp::load_or_create_key(&key_file)?;
        let otp = Arc::new(Otp::new(store.clone(), network.clone(), dispatch.clone(), clock, key, config.otp.clone()));
        let recovery_stop = CancellationToken::new();
        let max_resends = config.messages.max_unconfirmed_resends;
        tokio::spawn(recover(store.clone(), otp.clone(), dispatch.clone(), max_resends, recovery_stop.clone()));
        let failover_stop = CancellationToken::new();
        let failover_task = tokio::spawn(otp.clone().watch_receipts(otp_submitted_rx, otp_failed_rx, failover_stop.clone()));

        let receipts_task = tokio::spawn(track::track_receipts(store.clone(), receipts_rx, otp_failed));
        let sweep_task = tokio::spawn(sweep(store.clone(), otp.clone(), config.store.retention));

        let state = Arc::new(AppState::new(
            store.clone(),
            network.clone(),
            otp,
            dispatch,
            &config.api_keys,
            config.messages.clone(),
            config.server.http_body_timeout,
        ));
        let telemetry_stop = CancellationToken::new();
        tokio::spawn(telemetry::serve(metrics_listener, telemetry_stop.clone()));
        let sampled = network.clone();
        let carriers_now = Arc::new(move || sampled.current().carriers.clone());
        tokio::spawn(telemetry::sample_gauges(carriers_now, store.clone(), telemetry_stop.clone()));
        let http_stop = CancellationToken::new();
        let app = http::router(state.clone());
        let stop = http_stop.clone();
        let limits = http::serve::Limits {
            max_connections: http::serve::connections_that_fit(config.server.http_max_connections),
            header_timeout: config.server.http_header_timeout,
        };
        let http_task = tokio::spawn(http::serve::serve(listener, app, limits, stop));
        tracing::info!(%http_addr, %metrics_addr, "HTTP intake and metrics listening");
        if config.api_keys.is_empty() {
            tracing::warn!("no [[api_keys]] configured: every API request will be refused with 401");
        }
        Ok(Daemon {
            network,
            running: Mutex::new(config.clone()),
            carrier_stops: Mutex::new(carrier_stops),
            retiring: Mutex::new(Vec::new()),
            receipts: Mutex::new(Some(receipts)),
            store,
            metrics_addr,
            telemetry_stop,
            state,
            dispatcher,
            http_addr,
            http_stop,
            http_task,
            carriers_stop,
            receipts_task,
            sweep_task,
            failover_stop,
            failover_task,
            recovery_stop,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Deliveries that may start now: the carriers' total window less those under way.
    pub fn delivery_slots(&self) -> usize {
        self.dispatcher.available()
    }

    /// The carriers in force now.
    pub fn carriers(&self) -> Vec<Arc<Carrier>> {
        self.network.current().carriers.clone()
    }

    pub fn carrier(&self, name: &str) -> Option<Arc<Carrier>> {
        self.carriers().into_iter().find(|c| c.name() == name)
    }

    /// Applies a new, already validated config (SIGHUP): carriers added are bound, carriers
    /// removed or changed are drained (in-flight submits finish) and unbound, routes and API
    /// keys are swapped. Queued messages simply follow the new routes at their next attempt.
    /// Returns the settings that changed but need a restart.
    pub fn reload(&self, new: &Config) -> Vec<&'static str> {
        let mut running = lock(&self.running);
        let mut stops = lock(&self.carrier_stops);
        let old = self.network.current();
        let receipts = lock(&self.receipts).clone();
        let mut carriers = Vec::new();
        for config in &new.carriers {
            let unchanged = old.carriers.iter().find(|c| c.name() == config.name && c.config() == config);
            match (unchanged, &receipts) {
                (Some(carrier), _) => carriers.push(carrier.clone()),
                (None, Some(receipts)) => {
                    if let Some(stop) = stops.remove(&config.name) {
                        tracing::info!(carrier = %config.name, "carrier changed: draining its old sessions");
                        stop.cancel();
                        lock(&self.retiring).extend(old.carriers.iter().filter(|c| c.name() == config.name).cloned());
                    }
                    let stop = self.carriers_stop.child_token();
                    stops.insert(config.name.clone(), stop.clone());
                    tracing::info!(carrier = %config.name, "starting carrier");
                    carriers.push(Carrier::start(config.clone(), receipts.clone(), stop));
                }
                (None, None) => {}
            }
        }
        for gone in old.carriers.iter().filter(|c| !new.carriers.iter().any(|n| n.name == c.name())) {
            tracing::info!(carrier = %gone.name(), "carrier removed: draining and unbinding");
            if let Some(stop) = stops.remove(gone.name()) {
                stop.cancel();
            }
            lock(&self.retiring).push(gone.clone());
        }
        self.network.replace(carriers, &new.routes);
        self.dispatcher.fit(&self.network.current());
        self.state.set_api_keys(&new.api_keys);
        let mut restart = Vec::new();
        if running.server != new.server {
            restart.push("server");
        }
        if running.store != new.store {
            restart.push("store");
        }
        if running.messages != new.messages {
            restart.push("messages");
        }
        if running.otp != new.otp {
            restart.push("otp");
        }
        *running = new.clone();
        restart
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Whether the daemon can do its job: the store still writes. Drives the systemd watchdog.
    pub fn healthy(&self) -> bool {
        self.store.healthy()
    }

    /// Shuts down in order, within `limit` overall. Returns false if some step ran out of time
    /// (what was not finished stays queued in the store and is sent by the next start).
    pub async fn shutdown(self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut carriers = self.carriers();
        carriers.extend(lock(&self.retiring).drain(..));
        // New requests get 503 shutting_down from here on; the listener stays open until the
        // drain ends, so clients read a clear answer instead of "connection refused".
        self.state.accepting.store(false, Ordering::Release);
        self.recovery_stop.cancel();
        self.failover_stop.cancel();
        let mut clean = tokio::time::timeout(left(), self.failover_task).await.is_ok();
        clean &= self.dispatcher.shutdown(left()).await;
        self.carriers_stop.cancel();
        lock(&self.receipts).take();
        let unbound = futures::future::join_all(carriers.iter().map(|c| c.stopped()));
        clean &= tokio::time::timeout(left(), unbound).await.is_ok();
        // The sessions are gone, so the receipt channel closes once drained.
        clean &= tokio::time::timeout(left(), self.receipts_task).await.is_ok();
        self.http_stop.cancel();
        clean &= tokio::time::timeout(left(), self.http_task).await.is_ok();
        // Requests whose client hung up still finish (their hand-off to the dispatcher included).
        self.state.requests.close();
        clean &= tokio::time::timeout(left(), self.state.requests.wait()).await.is_ok();
        self.sweep_task.abort();
        let _ = self.sweep_task.await;
        self.telemetry_stop.cancel();
        match self.store.close().await {
            Ok(()) => clean,
            Err(e) => {
                tracing::error!(error = %e, "final flush failed");
                false
            }
        }
    }
}

/// Binds a listener and learns its address (port 0 picks one).
async fn listen(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), DaemonError> {
    let fail = |source| DaemonError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(fail)?;
    let local = listener.local_addr().map_err(fail)?;
    Ok((listener, local))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Re-queues what the previous run left: every queued message, in order, in the background and
/// only as fast as the dispatcher drains (a million queued messages never sit in memory at once).
/// OTP messages get a fresh code (the old one only ever existed in the dead process's memory).
/// Then it keeps looking: a message queued in the store but not handed to the dispatcher (a hand-off
/// lost on the way) is found within [`ORPHAN_SCAN_EVERY`] and handed over.
async fn recover(store: Arc<Store>, otp: Arc<Otp>, dispatch: Dispatch, max_resends: u32, stop: CancellationToken) {
    metrics::counter!("otpgate_resubmits_total").increment(0);
    metrics::counter!("otpgate_recovered_total").increment(0);
    metrics::counter!("otpgate_orphans_found_total").increment(0);
    let handover = Handover { store: &store, otp: &otp, dispatch: &dispatch, max_resends };
    if let Ok(Some(last)) = store.last_queued() {
        let started = std::time::Instant::now();
        let (mut requeued, mut resubmits) = (0usize, 0usize);
        let mut after = None;
        loop {
            // Feed the dispatcher only as fast as it drains.
            while dispatch.backlog() > RECOVERY_BACKLOG {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = stop.cancelled() => return,
                }
            }
            let page = match store.queued_page(after.as_ref(), &last, RECOVERY_PAGE) {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %e, "recovery could not read the queue; the rest waits for the next start");
                    return;
                }
            };
            let Some((id, _)) = page.last() else { break };
            after = Some(*id);
            for (id, record) in page {
                requeued += 1;
                resubmits += usize::from(record.in_flight);
                handover.hand(id, &record).await;
            }
            metrics::counter!("otpgate_recovered_total").absolute(requeued as u64);
        }
        metrics::counter!("otpgate_resubmits_total").increment(resubmits as u64);
        tracing::info!(requeued, resubmits, seconds = started.elapsed().as_secs_f64(), "re-queued every message left by the previous run");
    }
    let mut tick = tokio::time::interval(ORPHAN_SCAN_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let oldest = match store.oldest_queued(ORPHAN_SCAN_ROWS) {
            Ok(oldest) => oldest,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the queue to look for lost hand-offs");
                continue;
            }
        };
        let settled = crate::store::record::to_ms(SystemTime::now().checked_sub(ORPHAN_AFTER).unwrap_or(std::time::UNIX_EPOCH));
        for (id, record) in oldest {
            if record.created_ms > settled || dispatch.knows(&id) {
                continue;
            }
            tracing::warn!(message_id = %id, "queued but not known to the dispatcher; handed over");
            metrics::counter!("otpgate_orphans_found_total").increment(1);
            handover.hand(id, &record).await;
        }
    }
}

/// How often the queue's oldest messages are checked against what the dispatcher knows ...
const ORPHAN_SCAN_EVERY: Duration = Duration::from_secs(5);
/// ... how many of them ...
const ORPHAN_SCAN_ROWS: usize = 1024;
/// ... and how old a message must be before a missing hand-off is not just one still under way.
const ORPHAN_AFTER: Duration = Duration::from_secs(5);

/// Hands a queued message from the store to the dispatcher.
struct Handover<'a> {
    store: &'a Store,
    otp: &'a Otp,
    dispatch: &'a Dispatch,
    max_resends: u32,
}

impl Handover<'_> {
    async fn hand(&self, id: MessageId, record: &crate::store::MessageRecord) {
        if record.unconfirmed > self.max_resends {
            tracing::warn!(message_id = %id, unconfirmed = record.unconfirmed, "submits went out without an answer; not sent again");
            metrics::counter!("otpgate_resend_limit_total").increment(1);
            let error = format!(
                "{} submits went out without an answer (the last cut short by a restart); not sent again, since each may already have reached the handset",
                record.unconfirmed
            );
            if let Err(e) = self.store.finish(&id, MessageStatus::Failed, Some(error), None, SystemTime::now()) {
                tracing::error!(message_id = %id, error = %e, "store update failed");
            }
            return;
        }
        if record.verification.is_none() {
            self.dispatch.enqueue(Job::from_record(id, record));
            return;
        }
        match self.otp.reissue(id, record).await {
            Ok(Some(job)) => self.dispatch.enqueue(job),
            Ok(None) => tracing::info!(message_id = %id, "OTP message dropped: its verification is over"),
            Err(e) => tracing::error!(message_id = %id, error = %e, "cannot reissue an OTP message"),
        }
    }
}

/// Deletes finished messages and verifications past retention, expires stale verifications and
/// reports receipts that never matched.
async fn sweep(store: Arc<Store>, otp: Arc<Otp>, retention: Duration) {
    let mut ticker = tokio::time::interval(SWEEP_EVERY);
    loop {
        ticker.tick().await;
        if let Err(e) = otp.expire_stale().await {
            tracing::error!(error = %e, "expiring verifications failed");
        }
        let store = store.clone();
        let stats_window = otp.stats_window();
        let now = otp.now();
        let swept = tokio::task::spawn_blocking(move || {
            store.sweep_verifications(retention, stats_window, now)?;
            store.sweep(retention, now)
        })
        .await;
        match swept {
            Ok(Ok((deleted, unmatched))) => {
                if deleted > 0 {
                    tracing::info!(deleted, "retention sweep");
                }
                if !unmatched.is_empty() {
                    tracing::warn!(count = unmatched.len(), "receipts matched no message in time; dropped");
                }
                for carrier in unmatched {
                    metrics::counter!("otpgate_receipts_unmatched_total", "carrier" => carrier.clone()).increment(1);
                    metrics::counter!("otpgate_receipts_dropped_total", "carrier" => carrier, "reason" => "unmatched").increment(1);
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "retention sweep failed"),
            Err(e) => tracing::error!(error = %e, "retention sweep panicked"),
        }
    }
}
