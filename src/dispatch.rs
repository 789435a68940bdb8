//! The dispatcher: takes queued messages in order and sees each one to a verdict.
//!
//! Each message gets its own task (bounded by the total window of all carriers), which submits
//! over the first carrier that has a bound session *now*, retries "retry later" answers with
//! backoff, tries again at once on "retry elsewhere", fails on permanent errors, and never
//! submits after the message's deadline: it is marked `expired` instead. While no carrier is
//! bound it waits on the carriers' bind watches, not in a polling loop.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::smpp::message::MessageError;
use crate::smpp::{Carrier, NotSubmitted, OutboundSms, Permanent, SubmitOutcome};
use crate::store::{Attempt, MessageId, MessageRecord, MessageStatus, Store, record::to_ms};

/// A message to send.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: MessageId,
    pub sms: OutboundSms,
}

impl Job {
    pub fn from_record(id: MessageId, record: &MessageRecord) -> Job {
        Job {
            id,
            sms: OutboundSms {
                to: record.to.clone(),
                from: record.from.clone(),
                text: record.text.clone(),
                deadline: Some(record.deadline()),
            },
        }
    }
}

/// Hands jobs to the dispatcher.
#[derive(Clone)]
pub struct Dispatch {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Dispatch {
    /// Queues a job; jobs are started in the order they are queued.
    pub fn enqueue(&self, job: Job) {
        // Fails only after shutdown; the message stays queued in the store for the next start.
        let _ = self.jobs.send(job);
    }
}

/// Retry-later backoff on the same carrier: 100 ms doubling to 5 s.
const RETRY_LATER_FIRST: Duration = Duration::from_millis(100);
const RETRY_LATER_MAX: Duration = Duration::from_secs(5);
/// A pause before retrying after an SMSC-side fault, so a carrier that answers ESME_RSYSERR to
/// everything is not hammered.
const RETRY_ELSEWHERE_PAUSE: Duration = Duration::from_millis(50);

struct Shared {
    store: Arc<Store>,
    carriers: Vec<Arc<Carrier>>,
    /// Cancelled at shutdown: no new attempts start; attempts under way finish.
    stop: CancellationToken,
}

/// The running dispatcher.
pub struct Dispatcher {
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Dispatcher {
    /// Starts dispatching; jobs arrive through the returned [`Dispatch`].
    pub fn start(store: Arc<Store>, carriers: Vec<Arc<Carrier>>) -> (Dispatcher, Dispatch) {
        let (jobs, mut receiver) = mpsc::unbounded_channel::<Job>();
        let stop = CancellationToken::new();
        let concurrency: usize = carriers
            .iter()
            .map(|c| c.config().window * c.config().sessions)
            .sum::<usize>()
            .max(1);
        let shared = Arc::new(Shared {
            store,
            carriers,
            stop: stop.clone(),
        });
        let tasks = TaskTracker::new();
        let spawner = tasks.clone();
        tasks.spawn(async move {
            let permits = Arc::new(Semaphore::new(concurrency));
            loop {
                let job = tokio::select! {
                    job = receiver.recv() => match job { Some(job) => job, None => break },
                    _ = shared.stop.cancelled() => break,
                };
                let permit = tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
                    _ = shared.stop.cancelled() => break,
                };
                let shared = shared.clone();
                spawner.spawn(async move {
                    shared.deliver(job).await;
                    drop(permit);
                });
            }
        });
        (Dispatcher { tasks, stop }, Dispatch { jobs })
    }

    /// Stops starting attempts and waits (at most `limit`) for those under way.
    pub async fn shutdown(self, limit: Duration) -> bool {
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout(limit, self.tasks.wait()).await.is_ok()
    }
}

fn attempt(carrier: &str, session: Option<&str>, outcome: &SubmitOutcome) -> Attempt {
    let detail = match outcome {
        SubmitOutcome::Accepted { message_id } => format!("message_id {message_id}"),
        SubmitOutcome::RetryLater { status } => crate::smpp::outcome::status_name(*status),
        SubmitOutcome::RetryElsewhere { reason } => reason.to_string(),
        SubmitOutcome::Permanent { reason } => reason.to_string(),
    };
    Attempt {
        at_ms: to_ms(SystemTime::now()),
        carrier: carrier.to_string(),
        session: session.map(str::to_string),
        result: outcome.label().to_string(),
        detail,
    }
}

impl Shared {
    fn first_bound(&self) -> Option<&Arc<Carrier>> {
        self.carriers.iter().find(|c| c.bound_sessions() > 0)
    }

    /// Waits until some carrier is bound, the deadline passes or shutdown. True if bound.
    async fn wait_for_a_bind(&self, deadline: SystemTime) -> bool {
        let mut watches: Vec<_> = self.carriers.iter().map(|c| c.watch_bound()).collect();
        loop {
            if self.first_bound().is_some() {
                return true;
            }
            let remaining = deadline.duration_since(SystemTime::now()).unwrap_or_default();
            if remaining.is_zero() {
                return false;
            }
            let changes = futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
            tokio::select! {
                _ = changes => {}
                _ = tokio::time::sleep(remaining) => {}
                _ = self.stop.cancelled() => return false,
            }
        }
    }

    /// Pauses for `delay` (capped at the deadline); false on shutdown.
    async fn pause(&self, delay: Duration, deadline: SystemTime) -> bool {
        let remaining = deadline.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(delay.min(remaining)) => true,
            _ = self.stop.cancelled() => false,
        }
    }

    fn log_store_error(&self, id: &MessageId, result: Result<impl Sized, crate::store::StoreError>) {
        if let Err(e) = result {
            tracing::error!(message_id = %id, error = %e, "store update failed");
        }
    }

    async fn deliver(&self, job: Job) {
        let id = job.id;
        let deadline = job.sms.deadline.unwrap_or_else(SystemTime::now);
        let mut retry_later = RETRY_LATER_FIRST;
        loop {
            if self.stop.is_cancelled() {
                // Left queued in the store: the next start sends it.
                return;
            }
            if SystemTime::now() >= deadline {
                tracing::info!(message_id = %id, "validity passed before the message could be sent");
                metrics::counter!("otpgate_messages_total", "state" => "expired").increment(1);
                let r = self.store.finish(&id, MessageStatus::Expired, Some("validity passed before it could be sent".into()), None, SystemTime::now());
                self.log_store_error(&id, r);
                return;
            }
            let Some(carrier) = self.first_bound().cloned() else {
                if !self.wait_for_a_bind(deadline).await && self.stop.is_cancelled() {
                    return;
                }
                continue;
            };
            self.log_store_error(&id, self.store.mark_in_flight(&id));
            let (outcome, session) = carrier.submit_via(&job.sms).await;
            metrics::counter!("otpgate_submit_total", "carrier" => carrier.name().to_string(), "result" => outcome.label()).increment(1);
            let record = attempt(carrier.name(), session.as_deref(), &outcome);
            match outcome {
                SubmitOutcome::Accepted { message_id } => {
                    metrics::counter!("otpgate_messages_total", "state" => "submitted").increment(1);
                    let r = self.store.mark_submitted(&id, carrier.name(), &message_id, record, SystemTime::now());
                    self.log_store_error(&id, r);
                    return;
                }
                SubmitOutcome::RetryLater { .. } => {
                    self.log_store_error(&id, self.store.record_attempt(&id, record));
                    if !self.pause(retry_later, deadline).await {
                        return;
                    }
                    retry_later = (retry_later * 2).min(RETRY_LATER_MAX);
                }
                SubmitOutcome::RetryElsewhere { reason } => {
                    self.log_store_error(&id, self.store.record_attempt(&id, record));
                    let pause = match reason {
                        // The session is gone; its carrier's bind count catches up within
                        // moments, and the next pick then waits on the bind watches.
                        NotSubmitted::NoSession | NotSubmitted::ConnectionLost => Duration::from_millis(10),
                        NotSubmitted::ResponseTimeout | NotSubmitted::Smsc(_) => RETRY_ELSEWHERE_PAUSE,
                    };
                    if !self.pause(pause, deadline).await {
                        return;
                    }
                }
                SubmitOutcome::Permanent { reason } => {
                    let status = match reason {
                        Permanent::Message(MessageError::Expired) => MessageStatus::Expired,
                        _ => MessageStatus::Failed,
                    };
                    tracing::warn!(message_id = %id, carrier = carrier.name(), %reason, "message failed permanently");
                    metrics::counter!("otpgate_messages_total", "state" => status.as_str()).increment(1);
                    let r = self.store.finish(&id, status, Some(reason.to_string()), Some(record), SystemTime::now());
                    self.log_store_error(&id, r);
                    return;
                }
            }
        }
    }
}
