//! The running gateway: every configured carrier kept bound, receipts collected, and a graceful
//! shutdown that unbinds every session within a deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::smpp::{Carrier, ReceiptEvent};

/// Receipts wait here when their consumer is slow; the sessions then slow down too, since a
/// deliver_sm is answered only once its receipt is handed over.
const RECEIPT_QUEUE: usize = 4096;

/// The gateway's carriers and their lifetime.
pub struct Daemon {
    carriers: Vec<Arc<Carrier>>,
    shutdown: CancellationToken,
}

impl Daemon {
    /// Starts binding every carrier. Receipts from all of them arrive on the returned receiver.
    pub fn start(config: &Config) -> (Daemon, mpsc::Receiver<ReceiptEvent>) {
        let (receipts, receipts_rx) = mpsc::channel(RECEIPT_QUEUE);
        let shutdown = CancellationToken::new();
        let carriers = config
            .carriers
            .iter()
            .map(|c| Carrier::start(c.clone(), receipts.clone(), shutdown.clone()))
            .collect();
        (Daemon { carriers, shutdown }, receipts_rx)
    }

    pub fn carriers(&self) -> &[Arc<Carrier>] {
        &self.carriers
    }

    pub fn carrier(&self, name: &str) -> Option<&Arc<Carrier>> {
        self.carriers.iter().find(|c| c.name() == name)
    }

    /// Unbinds every session and waits for them, at most `limit`. Returns false if it ran out
    /// of time (sessions still open are then dropped with their sockets).
    pub async fn shutdown(self, limit: Duration) -> bool {
        self.shutdown.cancel();
        let all_stopped = futures::future::join_all(self.carriers.iter().map(|c| c.stopped()));
        tokio::time::timeout(limit, all_stopped).await.is_ok()
    }
}
