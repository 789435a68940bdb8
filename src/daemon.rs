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
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::dispatch::{Dispatcher, Policy};
use crate::http::{self, AppState};
use crate::otp::Otp;
use crate::route::Network;
use crate::smpp::{Carrier, ReceiptEvent};
use crate::store::{Store, StoreError};
use crate::tasks::TaskGroup;
use crate::{gauges, recovery, retention, telemetry, track};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    KeyFile(#[from] crate::otp::KeyFileError),
    #[error(
        "OTP HMAC key file {path} is not the key this store's codes are sealed with (fingerprint {ours}, the store's {theirs}): \
         every code sent with the other key would fail here. Give every node a copy of the same key file (otp.hmac_key_file)"
    )]
    KeyMismatch { path: String, ours: String, theirs: String },
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
    state: Arc<AppState>,
    dispatcher: Dispatcher,
    http_addr: SocketAddr,
    carriers_stop: CancellationToken,
    /// Background tasks by shutdown stage (see [`Daemon::shutdown`]): what feeds the dispatcher
    /// (recovery, receipt failover) and the retention sweep; receipt tracking; the HTTP
    /// intake; the metrics server and gauge sampler.
    feeders: TaskGroup,
    receipt_tracking: TaskGroup,
    intake: TaskGroup,
    telemetry: TaskGroup,
}

impl Daemon {
    /// Starts everything; returns once the store is open and the HTTP listener bound.
    pub async fn start(config: &Config) -> Result<Daemon, DaemonError> {
        Daemon::start_on(config, Arc::new(SystemClock)).await
    }

    /// As [`Daemon::start`], with the clock the OTP rules read (tests move it forward).
    #[cfg(feature = "test-util")]
    pub async fn start_with_clock(config: &Config, clock: Arc<dyn Clock>) -> Result<Daemon, DaemonError> {
        Daemon::start_on(config, clock).await
    }

    async fn start_on(config: &Config, clock: Arc<dyn Clock>) -> Result<Daemon, DaemonError> {
        let store = Store::open(&config.server.data_dir, &config.store.options(&config.cluster.node_name())?).await?;
        let (listener, http_addr) = listen(config.server.http_listen).await?;
        let (metrics_listener, metrics_addr) = listen(config.server.metrics_listen).await?;
        telemetry::handle();
        metrics::gauge!(telemetry::SPILL_AFTER_SECONDS).set(config.messages.spill_after.as_secs_f64());
        metrics::counter!(telemetry::RESEND_LIMIT_TOTAL).increment(0);

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
        let ours = key.fingerprint();
        let theirs = store.shared_setting("otp_key_fingerprint", &ours).await?;
        if theirs != ours {
            return Err(DaemonError::KeyMismatch { path: key_file.display().to_string(), ours, theirs });
        }
        let otp = Arc::new(Otp::new(store.clone(), network.clone(), dispatch.clone(), clock, key, config.otp.clone()));
        let feeders = TaskGroup::new();
        let max_resends = config.messages.max_unconfirmed_resends;
        feeders.spawn(|stop| recovery::recover(store.clone(), otp.clone(), dispatch.clone(), max_resends, stop));
        feeders.spawn(|stop| otp.clone().watch_receipts(otp_submitted_rx, otp_failed_rx, stop));
        feeders.spawn(|stop| retention::sweep(store.clone(), otp.clone(), config.store.retention, stop));
        let receipt_tracking = TaskGroup::new();
        // Ends when every session is gone and the channel is drained, not on a stop.
        receipt_tracking.spawn(|_| track::track_receipts(store.clone(), receipts_rx, otp_failed));

        let state = Arc::new(AppState::new(
            store.clone(),
            network.clone(),
            otp,
            dispatch,
            &config.api_keys,
            config.messages.clone(),
            config.server.http_body_timeout,
        ));
        let telemetry = TaskGroup::new();
        telemetry.spawn(|stop| telemetry::serve(metrics_listener, stop));
        let sampled = network.clone();
        let carriers_now = Arc::new(move || sampled.current().carriers.clone());
        telemetry.spawn(|stop| gauges::sample_gauges(carriers_now, store.clone(), stop));
        let intake = TaskGroup::new();
        let app = http::router(state.clone());
        let limits = http::serve::Limits {
            max_connections: http::serve::connections_that_fit(config.server.http_max_connections),
            header_timeout: config.server.http_header_timeout,
        };
        intake.spawn(|stop| http::serve::serve(listener, app, limits, stop));
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
            state,
            dispatcher,
            http_addr,
            carriers_stop,
            feeders,
            receipt_tracking,
            intake,
            telemetry,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Deliveries that may start now: the carriers' total window less those under way.
    #[cfg(feature = "test-util")]
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
        let mut clean = self.feeders.stop(left()).await;
        clean &= self.dispatcher.shutdown(left()).await;
        self.carriers_stop.cancel();
        lock(&self.receipts).take();
        let unbound = futures::future::join_all(carriers.iter().map(|c| c.stopped()));
        clean &= tokio::time::timeout(left(), unbound).await.is_ok();
        // The sessions are gone, so the receipt channel closes once drained.
        clean &= self.receipt_tracking.drain(left()).await;
        clean &= self.intake.stop(left()).await;
        // Requests whose client hung up still finish (their hand-off to the dispatcher included).
        self.state.requests.close();
        clean &= tokio::time::timeout(left(), self.state.requests.wait()).await.is_ok();
        clean &= self.telemetry.stop(left()).await;
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
