//! The dispatch duties: carriers bound, the dispatcher, receipt tracking, recovery, receipt
//! failover, the retention sweep and the webhook senders: the work only one process may do on a store. A single node
//! does it from start to shutdown; in a cluster, the node that leads a term does it for that
//! term (`cluster`), and hands over by stopping it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dispatch::{Dispatch, Dispatcher, Policy};
use crate::otp::Otp;
use crate::route::Network;
use crate::smpp::{Carrier, ReceiptEvent, SubmitGate};
use crate::store::Store;
use crate::tasks::TaskGroup;
use crate::webhook::Senders;
use crate::{recovery, retention, track};

/// What the duties work with; lives as long as the process.
#[derive(Clone)]
pub(crate) struct Crew {
    pub store: Arc<Store>,
    pub network: Arc<Network>,
    pub otp: Arc<Otp>,
    pub dispatch: Dispatch,
    /// Checked before every submit_sm (closed the instant a cluster term ends).
    pub gate: SubmitGate,
}

/// Duties under way.
pub(crate) struct Duties {
    /// One stop token per carrier, so a reload can retire a single carrier.
    carrier_stops: HashMap<String, CancellationToken>,
    carriers_stop: CancellationToken,
    /// Carriers a reload removed, still draining; stopping waits for them too.
    retiring: Vec<Arc<Carrier>>,
    /// Held for carriers started by a reload; dropped at stop so the receipt channel closes.
    receipts: Option<mpsc::Sender<ReceiptEvent>>,
    dispatcher: Dispatcher,
    /// What feeds the dispatcher (recovery and announcements, receipt failover) and the sweep.
    feeders: TaskGroup,
    receipt_tracking: TaskGroup,
    /// Events out, one sender per webhook endpoint.
    webhooks: Senders,
}

/// Carriers that route but never bind: what the network holds while this process has no duties.
pub(crate) fn dormant(config: &Config) -> Vec<Arc<Carrier>> {
    config.carriers.iter().map(|c| Carrier::dormant(c.clone())).collect()
}

impl Duties {
    /// Binds the carriers, starts dispatching and re-queues what the store holds queued.
    pub(crate) fn start(crew: &Crew, config: &Config) -> Duties {
        let (receipts, receipts_rx) = mpsc::channel(track::RECEIPT_QUEUE);
        let carriers_stop = CancellationToken::new();
        let mut carrier_stops = HashMap::new();
        let carriers: Vec<Arc<Carrier>> = config
            .carriers
            .iter()
            .map(|c| {
                let stop = carriers_stop.child_token();
                carrier_stops.insert(c.name.clone(), stop.clone());
                Carrier::start_gated(c.clone(), receipts.clone(), stop, crew.gate.clone())
            })
            .collect();
        crew.network.replace(carriers, &config.routes);
        let (otp_submitted, otp_submitted_rx) = mpsc::unbounded_channel();
        let (otp_failed, otp_failed_rx) = mpsc::unbounded_channel();
        let policy = Policy {
            spill_after: config.messages.spill_after,
            otp_spill_after: config.otp.spill_after,
            max_unconfirmed_resends: config.messages.max_unconfirmed_resends,
            backlog: config.messages.dispatch_backlog,
            backlog_wait: config.messages.backlog_wait,
            partial_failure: config.messages.partial_failure,
        };
        let dispatcher = Dispatcher::start(&crew.dispatch, crew.network.clone(), Some(otp_submitted), policy);
        let feeders = TaskGroup::new();
        let max_resends = config.messages.max_unconfirmed_resends;
        let (store, otp, dispatch) = (crew.store.clone(), crew.otp.clone(), crew.dispatch.clone());
        feeders.spawn(|stop| recovery::recover(store.clone(), otp.clone(), dispatch, max_resends, stop));
        feeders.spawn(|stop| otp.clone().watch_receipts(otp_submitted_rx, otp_failed_rx, stop));
        feeders.spawn(|stop| retention::sweep(store.clone(), otp.clone(), config.store.retention, stop));
        let receipt_tracking = TaskGroup::new();
        // Ends when every session is gone and the channel is drained, not on a stop.
        receipt_tracking.spawn(|_| track::track_receipts(store.clone(), receipts_rx, otp_failed));
        let webhooks = Senders::start(store.clone(), &config.event_endpoints());
        Duties {
            carrier_stops,
            carriers_stop,
            retiring: Vec::new(),
            receipts: Some(receipts),
            dispatcher,
            feeders,
            receipt_tracking,
            webhooks,
        }
    }

    /// Deliveries that may start now (tests).
    #[cfg(feature = "test-util")]
    pub(crate) fn available(&self) -> usize {
        self.dispatcher.available()
    }

    /// Applies a reloaded config: carriers added are bound, carriers removed or changed are
    /// drained (in-flight submits finish) and unbound, routes are swapped.
    pub(crate) fn reload(&mut self, crew: &Crew, new: &Config) {
        let old = crew.network.current();
        let mut carriers = Vec::new();
        for config in &new.carriers {
            let unchanged = old.carriers.iter().find(|c| c.name() == config.name && c.config() == config);
            match (unchanged, &self.receipts) {
                (Some(carrier), _) => {
                    if let Err(e) = carrier.reload_tls() {
                        tracing::error!(carrier = %config.name, error = %e, "new TLS files refused; the ones in use stay");
                    }
                    carriers.push(carrier.clone());
                }
                (None, Some(receipts)) => {
                    if let Some(stop) = self.carrier_stops.remove(&config.name) {
                        tracing::info!(carrier = %config.name, "carrier changed: draining its old sessions");
                        stop.cancel();
                        self.retiring.extend(old.carriers.iter().filter(|c| c.name() == config.name).cloned());
                    }
                    let stop = self.carriers_stop.child_token();
                    self.carrier_stops.insert(config.name.clone(), stop.clone());
                    tracing::info!(carrier = %config.name, "starting carrier");
                    carriers.push(Carrier::start_gated(config.clone(), receipts.clone(), stop, crew.gate.clone()));
                }
                (None, None) => {}
            }
        }
        for gone in old.carriers.iter().filter(|c| !new.carriers.iter().any(|n| n.name == c.name())) {
            tracing::info!(carrier = %gone.name(), "carrier removed: draining and unbinding");
            if let Some(stop) = self.carrier_stops.remove(gone.name()) {
                stop.cancel();
            }
            self.retiring.push(gone.clone());
        }
        crew.network.replace(carriers, &new.routes);
        self.dispatcher.fit(&crew.network.current());
        self.webhooks.reload(&new.event_endpoints());
    }

    /// Stops in the order that loses nothing, within `limit`: no new attempts, submits under way
    /// finish, every session unbinds, the last receipts are applied. What was not sent stays
    /// queued in the store for whoever dispatches next. Leaves `dormant` carriers routing.
    /// Returns false if some step ran out of time.
    pub(crate) async fn stop(
        mut self,
        crew: &Crew,
        dormant: Vec<Arc<Carrier>>,
        routes: &[crate::config::RouteConfig],
        limit: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut carriers = crew.network.current().carriers.clone();
        carriers.append(&mut self.retiring);
        let mut clean = self.feeders.stop(left()).await;
        clean &= self.dispatcher.shutdown(left()).await;
        self.carriers_stop.cancel();
        self.receipts.take();
        let unbound = futures::future::join_all(carriers.iter().map(|c| c.stopped()));
        clean &= tokio::time::timeout(left(), unbound).await.is_ok();
        // The sessions are gone, so the receipt channel closes once drained.
        clean &= self.receipt_tracking.drain(left()).await;
        // Last: the final receipts' events are written by now (what is not sent waits in the store).
        clean &= self.webhooks.stop(left()).await;
        crew.network.replace(dormant, routes);
        clean
    }
}
