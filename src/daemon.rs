//! The running gateway: store, dispatch duties (carriers, dispatcher, receipt tracking, recovery:
//! `duties`) and the HTTP intake, started together and shut down in the order that loses nothing.
//!
//! Start: open the store (fails if another process holds a sled store), check the OTP key
//! against the store's, start the duties (a single node: at once; a cluster node: whenever it
//! leads a term, see `cluster`), then listen for HTTP.
//! Shutdown: answer new requests 503, stop the duties (submits under way finish, every session
//! unbinds, the last receipts are applied), release the lease, then close the HTTP listener and
//! flush the store.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::cluster::{self, lease::Term};
use crate::config::{Config, WebhookConfig};
use crate::dispatch::Dispatch;
use crate::duties::{self, Crew, Duties};
use crate::http::{self, AppState};
use crate::otp::Otp;
use crate::route::Network;
use crate::smpp::{Carrier, SubmitGate};
use crate::store::settings::Backend;
use crate::store::{Store, StoreError};
use crate::tasks::TaskGroup;
use crate::{gauges, telemetry};

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
    #[error("server.tls_cert: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// The running gateway.
pub struct Daemon {
    crew: Crew,
    /// The config now in force (reload diffs against it).
    running: Arc<Mutex<Config>>,
    /// The dispatch duties while this process has them: always on a single node; during its
    /// terms as leader in a cluster.
    duties: Arc<Mutex<Option<Duties>>>,
    metrics_addr: SocketAddr,
    state: Arc<AppState>,
    http_addr: SocketAddr,
    /// The listeners' TLS (a reload swaps its certificate).
    tls: Option<crate::tls::ServerTls>,
    /// Cluster mode: the task that starts and stops the duties with each term ...
    leading: TaskGroup,
    /// ... and this node's part in the election (stopped after it: the lease is released only
    /// once the duties have stopped, so two nodes never hold the carriers' binds at once).
    campaign: TaskGroup,
    /// Background tasks by shutdown stage (see [`Daemon::shutdown`]): the HTTP intake; the
    /// metrics server and gauge sampler.
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
        let options = config.store.options(&config.cluster.node_name())?;
        let store = Store::open(&config.server.data_dir, &options).await?;
        let key_file = config.otp.hmac_key_file.clone().unwrap_or_else(|| config.server.data_dir.join("otp-hmac.key"));
        let key = crate::otp::load_or_create_key(&key_file)?;
        let ours = key.fingerprint();
        let theirs = store.shared_setting("otp_key_fingerprint", &ours).await?;
        if theirs != ours {
            return Err(DaemonError::KeyMismatch { path: key_file.display().to_string(), ours, theirs });
        }
        store.subscribe(config.webhooks.iter().map(WebhookConfig::subscription).collect());
        let tls = config.server.tls()?;
        let (listener, http_addr) = listen(config.server.http_listen).await?;
        let (metrics_listener, metrics_addr) = listen(config.server.metrics_listen).await?;
        telemetry::handle();
        if let Some(tls) = &tls {
            tls.chain().export_expiry("https");
        }
        metrics::gauge!(telemetry::SPILL_AFTER_SECONDS).set(config.messages.spill_after.as_secs_f64());
        metrics::counter!(telemetry::RESEND_LIMIT_TOTAL).increment(0);

        // Routes hold carriers that never bind until this process dispatches.
        let network = Arc::new(Network::new(duties::dormant(config), &config.routes));
        let dispatch = Dispatch::new(store.clone());
        // The fraud guard's suspensions and windows, from the store (a day of verifications).
        let guard = Arc::new(crate::fraud::Guard::new(store.clone(), config.fraud.clone()));
        guard.load(clock.now()).await?;
        let otp = Arc::new(Otp::new(store.clone(), network.clone(), dispatch.clone(), clock, key, config.otp.clone(), guard.clone()));
        let (terms, elected) = watch::channel(None::<Term>);
        let clustered = matches!(options.backend, Backend::Postgres(_));
        let gate = match clustered {
            // Open only while a term holds, measured against its deadline at each submit.
            true => SubmitGate::new(move || elected.borrow().is_some_and(|term| term.holds())),
            false => SubmitGate::default(),
        };
        let crew = Crew { store: store.clone(), network: network.clone(), otp: otp.clone(), dispatch: dispatch.clone(), gate };
        let running = Arc::new(Mutex::new(config.clone()));
        let duties = Arc::new(Mutex::new(None));
        let role = http::Role::new(clustered);
        let (leading, campaign) = (TaskGroup::new(), TaskGroup::new());
        match &options.backend {
            Backend::Postgres(pg) => {
                metrics::gauge!(telemetry::CLUSTER_LEADER).set(0.0);
                metrics::counter!(telemetry::CLUSTER_TAKEOVERS_TOTAL).increment(0);
                let (pg, lease) = (pg.clone(), config.cluster.lease());
                let elected = terms.subscribe();
                campaign.spawn(|stop| cluster::campaign(pg, lease, terms, stop));
                let leader = Leader { crew: crew.clone(), running: running.clone(), duties: duties.clone(), role: role.clone() };
                let shutdown_timeout = config.server.shutdown_timeout;
                leading.spawn(|stop| leader.follow(elected, shutdown_timeout, stop));
            }
            Backend::Sled => {
                // A single node always dispatches: it shows as its own leader.
                metrics::gauge!(telemetry::CLUSTER_LEADER).set(1.0);
                metrics::counter!(telemetry::CLUSTER_TAKEOVERS_TOTAL).increment(0);
                *lock(&duties) = Some(Duties::start(&crew, config));
                role.set_leading(true);
            }
        }

        let mut state = AppState::new(
            store.clone(),
            network.clone(),
            otp,
            dispatch,
            &config.api_keys,
            config.messages.clone(),
            config.server.http_body_timeout,
        );
        state.role = role;
        let state = Arc::new(state);
        let telemetry = TaskGroup::new();
        let limits = http::serve::Limits {
            max_connections: http::serve::connections_that_fit(config.server.http_max_connections),
            header_timeout: config.server.http_header_timeout,
            metered: true,
        };
        let metrics_tls = tls.clone().filter(|_| config.server.metrics_tls);
        let scrapes = http::serve::Limits { metered: false, ..limits };
        telemetry.spawn(|stop| http::serve::serve(metrics_listener, telemetry::router(), scrapes, metrics_tls, stop));
        let sampled = network.clone();
        let carriers_now = Arc::new(move || sampled.current().carriers.clone());
        telemetry.spawn(|stop| gauges::sample_gauges(carriers_now, store.clone(), stop));
        let intake = TaskGroup::new();
        let app = http::router(state.clone());
        let intake_tls = tls.clone();
        intake.spawn(|stop| http::serve::serve(listener, app, limits, intake_tls, stop));
        intake.spawn(|stop| crate::fraud::keep_fresh(guard, stop));
        tracing::info!(%http_addr, %metrics_addr, "HTTP intake and metrics listening");
        if config.api_keys.is_empty() {
            tracing::warn!("no [[api_keys]] configured: every API request will be refused with 401");
        }
        Ok(Daemon { crew, running, duties, metrics_addr, state, http_addr, tls, leading, campaign, intake, telemetry })
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
        lock(&self.duties).as_ref().map_or(0, Duties::available)
    }

    /// Messages handed to the dispatcher and not finished (tests).
    #[cfg(feature = "test-util")]
    pub fn dispatch_backlog(&self) -> usize {
        self.crew.dispatch.backlog()
    }

    /// The carriers in force now (dormant ones while this node does not dispatch).
    pub fn carriers(&self) -> Vec<Arc<Carrier>> {
        self.crew.network.current().carriers.clone()
    }

    pub fn carrier(&self, name: &str) -> Option<Arc<Carrier>> {
        self.carriers().into_iter().find(|c| c.name() == name)
    }

    /// Whether this process dispatches now (always on a single node; the leader in a cluster).
    pub fn dispatching(&self) -> bool {
        lock(&self.duties).is_some()
    }

    /// Applies a new, already validated config (SIGHUP): carriers added are bound, carriers
    /// removed or changed are drained (in-flight submits finish) and unbound, routes and API
    /// keys are swapped. Queued messages simply follow the new routes at their next attempt.
    /// Returns the settings that changed but need a restart.
    pub fn reload(&self, new: &Config) -> Vec<&'static str> {
        let mut running = lock(&self.running);
        match lock(&self.duties).as_mut() {
            Some(duties) => duties.reload(&self.crew, new),
            None => self.crew.network.replace(duties::dormant(new), &new.routes),
        }
        self.state.set_api_keys(&new.api_keys);
        self.crew.otp.guard().reload(new.fraud.clone());
        self.crew.store.subscribe(new.webhooks.iter().map(WebhookConfig::subscription).collect());
        let mut restart = Vec::new();
        if !running.server.same_listeners(&new.server) {
            restart.push("server");
        }
        if let (Some(tls), Some(cert), Some(key)) = (&self.tls, &new.server.tls_cert, &new.server.tls_key) {
            // Read again even when the paths are the same: a renewal replaces the files.
            match tls.reload(cert, key) {
                Ok(()) => {
                    let chain = tls.chain();
                    chain.export_expiry("https");
                    tracing::info!(cert = %cert.display(), expires = %humantime::format_rfc3339_seconds(chain.expires()), "HTTPS certificate reloaded");
                }
                Err(e) => tracing::error!(error = %e, "new HTTPS certificate refused; the one in use stays"),
            }
        }
        if running.store != new.store {
            restart.push("store");
        }
        if running.cluster != new.cluster {
            restart.push("cluster");
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
        &self.crew.store
    }

    /// Whether the daemon can do its job: the store still writes. Drives the systemd watchdog.
    pub fn healthy(&self) -> bool {
        self.crew.store.healthy()
    }

    /// Shuts down in order, within `limit` overall. Returns false if some step ran out of time
    /// (what was not finished stays queued in the store and is sent by the next start, or by
    /// the next leader).
    pub async fn shutdown(self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        // New requests get 503 shutting_down from here on; the listener stays open until the
        // drain ends, so clients read a clear answer instead of "connection refused".
        self.state.accepting.store(false, Ordering::Release);
        // In a cluster this ends the term: its duties stop first, then the lease is released.
        let mut clean = self.leading.stop(left()).await;
        let duties = lock(&self.duties).take();
        if let Some(duties) = duties {
            let config = lock(&self.running).clone();
            clean &= duties.stop(&self.crew, duties::dormant(&config), &config.routes, left()).await;
        }
        clean &= self.campaign.stop(left()).await;
        clean &= self.intake.stop(left()).await;
        // Requests whose client hung up still finish (their hand-off to the dispatcher included).
        self.state.requests.close();
        clean &= tokio::time::timeout(left(), self.state.requests.wait()).await.is_ok();
        clean &= self.telemetry.stop(left()).await;
        match self.crew.store.close().await {
            Ok(()) => clean,
            Err(e) => {
                tracing::error!(error = %e, "final flush failed");
                false
            }
        }
    }
}

/// Starts the dispatch duties when this node's term begins and stops them when it ends.
struct Leader {
    crew: Crew,
    running: Arc<Mutex<Config>>,
    duties: Arc<Mutex<Option<Duties>>>,
    role: http::Role,
}

impl Leader {
    async fn follow(self, mut terms: watch::Receiver<Option<Term>>, stop_within: Duration, stop: CancellationToken) {
        loop {
            let term = *terms.borrow_and_update();
            let leading = term.is_some_and(|t| t.holds());
            let started = lock(&self.duties).is_some();
            if leading && !started {
                let config = lock(&self.running).clone();
                tracing::info!(token = term.map_or(0, |t| t.token), "leading the cluster's dispatch: binding carriers");
                metrics::counter!(telemetry::CLUSTER_TAKEOVERS_TOTAL).increment(1);
                metrics::gauge!(telemetry::CLUSTER_LEADER).set(1.0);
                *lock(&self.duties) = Some(Duties::start(&self.crew, &config));
                self.role.set_leading(true);
            } else if !leading && started {
                self.step_down(stop_within).await;
            }
            let until = term.map(|t| t.until);
            tokio::select! {
                changed = terms.changed() => if changed.is_err() { break },
                // A term ends at its deadline even when no renewal result comes (a stalled database).
                _ = sleep_until(until), if leading => {}
                _ = stop.cancelled() => break,
            }
        }
        self.step_down(stop_within).await;
    }

    async fn step_down(&self, within: Duration) {
        let duties = lock(&self.duties).take();
        if let Some(duties) = duties {
            tracing::info!("no longer leading the cluster's dispatch: unbinding carriers");
            self.role.set_leading(false);
            metrics::gauge!(telemetry::CLUSTER_LEADER).set(0.0);
            let config = lock(&self.running).clone();
            if !duties.stop(&self.crew, duties::dormant(&config), &config.routes, within).await {
                tracing::warn!("the dispatch duties did not stop in time");
            }
        }
    }
}

async fn sleep_until(until: Option<tokio::time::Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
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
