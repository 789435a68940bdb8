//! Events out: every message and verification state change pushed to the clients' endpoints
//! as Standard Webhooks 1.0 requests (`sign`), one sender per endpoint (`sender`), configured
//! by `[[webhooks]]` (`settings`). The events themselves are rows the store writes with each
//! change (`store::events`); this module only takes them out.
//!
//! Senders are a dispatch duty: one process sends (a single node; a cluster's leader), so each
//! endpoint sees one ordered stream.

mod sender;
pub mod settings;
pub mod sign;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::store::Store;
use crate::tasks::TaskGroup;
pub use settings::WebhookConfig;

/// How long a sender a reload stopped may take to finish its attempts under way.
const RETIRE_WITHIN: Duration = Duration::from_secs(30);

/// The senders under way, one per endpoint.
pub(crate) struct Senders {
    store: Arc<Store>,
    /// Each endpoint's config, whether it answered 410 Gone (its sender then ended), its sender.
    running: HashMap<String, (WebhookConfig, Arc<AtomicBool>, TaskGroup)>,
    /// Senders a reload stopped, and the start-up check: awaited at stop.
    retiring: TaskGroup,
}

impl Senders {
    /// Starts a sender for each endpoint, and notes rows left for endpoints no longer configured.
    pub(crate) fn start(store: Arc<Store>, configs: &[WebhookConfig]) -> Senders {
        let mut senders = Senders { store, running: HashMap::new(), retiring: TaskGroup::new() };
        senders.reload(configs);
        let store = senders.store.clone();
        let configured: Vec<String> = configs.iter().map(|c| c.name.clone()).collect();
        senders.retiring.spawn(|_| async move {
            if let Ok(names) = store.event_endpoints().await {
                for orphan in names.iter().filter(|n| !configured.contains(n)) {
                    tracing::warn!(webhook = %orphan, "events wait for a webhook no longer configured: kept until it is configured again");
                }
            }
        });
        senders
    }

    /// Starts endpoints added, restarts those changed or stopped by a 410 Gone, stops those
    /// removed. Their rows stay in the store either way.
    pub(crate) fn reload(&mut self, configs: &[WebhookConfig]) {
        let unchanged = |name: &String, config: &WebhookConfig, gone: &AtomicBool| {
            !gone.load(Ordering::Acquire) && configs.iter().any(|c| c.name == *name && c == config)
        };
        let (keep, retire): (HashMap<_, _>, HashMap<_, _>) =
            std::mem::take(&mut self.running).into_iter().partition(|(name, (config, gone, _))| unchanged(name, config, gone));
        self.running = keep;
        for (name, (_, _, tasks)) in retire {
            tracing::info!(webhook = %name, "webhook endpoint stopped (reload)");
            tasks.cancel();
            self.retiring.spawn(|_| async move {
                tasks.drain(RETIRE_WITHIN).await;
            });
        }
        let added: Vec<&WebhookConfig> = configs.iter().filter(|c| !self.running.contains_key(&c.name)).collect();
        for config in added {
            match sender::Endpoint::new(config.clone()) {
                Ok(endpoint) => {
                    let (tasks, gone) = (TaskGroup::new(), Arc::new(AtomicBool::new(false)));
                    let (store, flag) = (self.store.clone(), gone.clone());
                    tasks.spawn(|stop| sender::run(Arc::new(endpoint), store, flag, stop));
                    self.running.insert(config.name.clone(), (config.clone(), gone, tasks));
                }
                // The config was validated: only a secret file that changed since can fail here.
                Err(e) => tracing::error!(webhook = %config.name, error = %e, "webhook endpoint not started"),
            }
        }
    }

    /// Stops every sender, within `within`; false if one did not stop in time. Nothing is lost:
    /// what was not sent waits in the store.
    pub(crate) async fn stop(self, within: Duration) -> bool {
        let stops = self.running.into_values().map(|(_, _, tasks)| async move { tasks.stop(within).await });
        let clean = futures::future::join_all(stops).await.into_iter().all(|clean| clean);
        clean & self.retiring.drain(within).await
    }
}
