//! The dispatcher: takes queued messages in order and sees each one to a verdict.
//!
//! Each message is routed when it is *sent*, not when it was taken in: every attempt asks its
//! route for an order of carriers and takes the first usable one (bound, circuit closed) it has
//! not just failed on, preferring one with room for it now. "Retry elsewhere" answers
//! (connection lost, response timeout, SMSC fault) move on to the next carrier at once; "retry
//! later" (throttling) waits with backoff on the same carrier (which also slows the whole
//! carrier, see `smpp/health.rs`); permanent errors fail the message.
//!
//! Spill-over: a message never waits on one carrier (for its rate cap, its window or its
//! throttling) longer than its spill bound ([`Policy`]) while the route has another usable
//! carrier: it moves on to the next one with room, so a slow carrier delays codes by seconds at
//! most while the others sit idle. Nothing is ever submitted after the message's deadline: it is marked
//! `expired` instead. While no carrier is usable it waits on the carriers' bind watches.
//!
//! Messages to the same destination go one at a time, in order: a retry never lets a later
//! code overtake an earlier one.
//!
//! Back-pressure: a client's message waits at the door ([`Dispatch::admit`]) while the
//! dispatcher holds its whole backlog and is moving, so a daemon short of CPU sends what it took
//! before it takes more, instead of queueing codes for seconds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::route::Network;
use crate::smpp::message::MessageError;
use crate::smpp::settings::LongSms;
use crate::smpp::{Carrier, NotSubmitted, OutboundSms, Permanent, Submission, SubmitOutcome};
use crate::store::{Attempt, MessageId, MessageRecord, MessageStatus, Store, VerificationId, record::to_ms};
use crate::telemetry;

/// A message to send.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: MessageId,
    pub sms: OutboundSms,
    /// Carriers not to use (a receipt failover avoids the carriers that already failed).
    pub avoid: Vec<String>,
    /// The one carrier that may send it (the client pinned it), whatever its route says.
    pub only: Option<String>,
    /// Set for OTP messages: their submits are reported for receipt failover.
    pub verification: Option<VerificationId>,
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
                encoding: record.encoding,
                reference: 0,
                registration: crate::smpp::tlv::Registration {
                    template_id: record.options.template_id.clone(),
                    entity_id: record.options.entity_id.clone(),
                },
            },
            avoid: Vec::new(),
            only: record.options.pinned_carrier.clone(),
            verification: None,
        }
    }
}

/// Hands jobs to the dispatcher, for as long as this process has one: from start to shutdown on a
/// single node; during its terms as dispatch leader in a cluster. Without one, the job is
/// dropped and the message, durable in the store, is announced to whichever node dispatches.
///
/// At most [`Policy::backlog`] jobs are held in memory: past it, intake leaves messages in the
/// store (they are durable there already) and recovery's feeder hands them over, oldest first,
/// as the dispatcher drains ([`Dispatch::overflowing`]).
#[derive(Clone)]
pub struct Dispatch {
    store: Arc<Store>,
    link: Arc<std::sync::Mutex<Option<Link>>>,
    /// Set when intake left a message in the store for want of room; cleared once the feeder has
    /// handed over everything queued. While set, intake leaves every message there, so none
    /// overtakes an earlier one to the same destination.
    overflow: Arc<AtomicBool>,
}

/// The running dispatcher's end of a [`Dispatch`].
#[derive(Clone)]
struct Link {
    jobs: mpsc::UnboundedSender<Job>,
    handed: Handed,
    /// Jobs held in memory at most (`messages.dispatch_backlog`).
    backlog: usize,
    /// How long a client's message may wait for room (`messages.backlog_wait`).
    wait: Duration,
    progress: Arc<Progress>,
}

/// The dispatcher's progress, as the clients waiting for room see it.
struct Progress {
    /// One waiting client woken per delivery finished: one job's room.
    room: Notify,
    since: Instant,
    /// When the dispatcher last took a job or finished one, in ms from `since` (`u64::MAX`:
    /// never).
    last_ms: AtomicU64,
}

/// A client waits for room only while the dispatcher has taken or finished a job within this:
/// otherwise the carriers hold it up (an outage), and the store holds the queue.
const STALLED_AFTER: Duration = Duration::from_millis(500);

impl Progress {
    fn new() -> Progress {
        Progress { room: Notify::new(), since: Instant::now(), last_ms: AtomicU64::new(u64::MAX) }
    }

    fn moved(&self) {
        self.last_ms.store(self.since.elapsed().as_millis() as u64, Ordering::Release);
    }

    fn finished(&self) {
        self.moved();
        self.room.notify_one();
    }

    /// Whether the dispatcher is moving: it took or finished a job within [`STALLED_AFTER`].
    fn moving(&self) -> bool {
        let last = self.last_ms.load(Ordering::Acquire);
        last != u64::MAX && (self.since.elapsed().as_millis() as u64).saturating_sub(last) <= STALLED_AFTER.as_millis() as u64
    }
}

/// The messages handed over and not finished. Recovery feeds the dispatcher only while they are
/// few (a million queued messages are never all in memory at once), a message handed over twice
/// is started once, and what is queued in the store but not here has been lost on the way.
type Handed = Arc<std::sync::Mutex<HashSet<MessageId>>>;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Dispatch {
    /// A handle with no dispatcher behind it yet.
    pub fn new(store: Arc<Store>) -> Dispatch {
        Dispatch { store, link: Arc::default(), overflow: Arc::default() }
    }

    fn link(&self) -> Option<Link> {
        lock(&self.link).clone()
    }

    /// Queues a job; jobs are started in the order they are queued. A message already handed
    /// over and not finished is not queued again.
    pub fn enqueue(&self, job: Job) {
        if self.link().is_none() {
            // Another node dispatches (or this one is shutting down): the message is in the store.
            let (store, id) = (self.store.clone(), job.id);
            tokio::spawn(async move {
                if let Err(e) = store.announce(&id).await {
                    tracing::warn!(message_id = %id, error = %e, "queued message not announced; the dispatching node's scan finds it");
                }
            });
            return;
        }
        if self.overflowing() || self.backlog() >= self.backlog_limit() {
            // Durable in the store already: the feeder hands it over as the dispatcher drains.
            if !self.overflow.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    backlog = self.backlog(),
                    "the dispatcher holds messages.dispatch_backlog; newer messages wait in the store"
                );
            }
            metrics::counter!(telemetry::DISPATCH_DEFERRED_TOTAL).increment(1);
            return;
        }
        if self.claim(&job.id) {
            self.enqueue_claimed(job);
        }
    }

    /// Queues a client's job, first waiting (at most `messages.backlog_wait`) while the
    /// dispatcher holds its backlog (or the store holds more) and is moving. Without it a daemon
    /// short of CPU took messages in 5 % faster than it sent them, and over a million messages
    /// half waited more than 3.8 s for their submit_sm (README, Performance). A dispatcher held
    /// up by its carriers is not waited for: the message waits in the store, as
    /// [`Dispatch::enqueue`] leaves it.
    pub async fn admit(&self, job: Job) {
        if let Some(link) = self.link() {
            let until = Instant::now() + link.wait;
            // Overflowing: the store holds messages the dispatcher has not taken yet.
            while (self.overflowing() || lock(&link.handed).len() >= link.backlog) && link.progress.moving() {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let _ = tokio::time::timeout(left.min(STALLED_AFTER), link.progress.room.notified()).await;
            }
        }
        self.enqueue(job);
    }

    /// Whether intake is leaving messages in the store for the feeder to hand over.
    pub fn overflowing(&self) -> bool {
        self.overflow.load(Ordering::Acquire)
    }

    /// The feeder has handed over everything intake left in the store: intake hands over
    /// directly again.
    pub fn end_overflow(&self) {
        self.overflow.store(false, Ordering::Release);
    }

    /// Jobs held in memory at most (`messages.dispatch_backlog`; 0 without a dispatcher).
    pub fn backlog_limit(&self) -> usize {
        self.link().map_or(0, |link| link.backlog)
    }

    /// Marks a message as handed over before its job exists (recovery checks the store and may
    /// issue a fresh code first): false if it already is, or if no dispatcher runs here.
    pub fn claim(&self, id: &MessageId) -> bool {
        self.link().is_some_and(|link| lock(&link.handed).insert(*id))
    }

    /// Gives up a claim that led to no job.
    pub fn release(&self, id: &MessageId) {
        if let Some(link) = self.link() {
            lock(&link.handed).remove(id);
        }
    }

    /// Queues the job of a claimed message.
    pub fn enqueue_claimed(&self, job: Job) {
        let id = job.id;
        // Fails only after shutdown; the message stays queued in the store for the next start.
        if let Some(link) = self.link()
            && link.jobs.send(job).is_err()
        {
            lock(&link.handed).remove(&id);
        }
    }

    /// Jobs handed over and not yet finished.
    pub fn backlog(&self) -> usize {
        self.link().map_or(0, |link| lock(&link.handed).len())
    }

    /// Whether this message is handed over and not finished.
    pub fn knows(&self, id: &MessageId) -> bool {
        self.link().is_some_and(|link| lock(&link.handed).contains(id))
    }
}

/// The range of `spill_after`: below it messages bounce between carriers, above it a slow
/// carrier holds codes far past any user's patience.
pub const SPILL_MIN: Duration = Duration::from_millis(100);
pub const SPILL_MAX: Duration = Duration::from_secs(600);

/// What to do when a carrier took some parts of a long message and not the rest. The parts it
/// took may reach the handset either way: as an incomplete message the handset shows (or drops)
/// beside the complete one sent again, or alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartialFailure {
    /// Send it again whole, with a new reference; counts against `max_unconfirmed_resends`.
    #[default]
    Resend,
    /// Fail it, naming the parts taken.
    Fail,
}

/// What the dispatcher is told by the config.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// How long a message may wait on one carrier before it moves to the next carrier of its
    /// route (`messages.spill_after`) ...
    pub spill_after: Duration,
    /// ... and an OTP message (`otp.spill_after`).
    pub otp_spill_after: Duration,
    /// Sends again after a submit that went out without a readable answer (each may put a
    /// duplicate on the handset); past it the message fails (`messages.max_unconfirmed_resends`).
    pub max_unconfirmed_resends: u32,
    /// Jobs held in memory at most (`messages.dispatch_backlog`).
    pub backlog: usize,
    /// How long a client's message may wait for the dispatcher to make room
    /// (`messages.backlog_wait`).
    pub backlog_wait: Duration,
    /// A long message a carrier took only part of: sent again whole, or failed
    /// (`messages.partial_failure`).
    pub partial_failure: PartialFailure,
}

impl Policy {
    fn spill_after(&self, job: &Job) -> Duration {
        if job.verification.is_some() { self.otp_spill_after } else { self.spill_after }
    }
}

/// An OTP message the SMSC accepted: watched for its receipt.
#[derive(Debug, Clone, Copy)]
pub struct OtpSubmitted {
    pub message: MessageId,
}

/// Retry-later backoff on the same carrier: 100 ms doubling to 5 s.
const RETRY_LATER_FIRST: Duration = Duration::from_millis(100);
const RETRY_LATER_MAX: Duration = Duration::from_secs(5);
/// After every usable carrier failed once, pause before the next round (grows to a second).
const ROUND_PAUSE_FIRST: Duration = Duration::from_millis(50);
const ROUND_PAUSE_MAX: Duration = Duration::from_secs(1);
/// While carriers are bound but their circuits are open, look again this often.
const BREAKER_RECHECK: Duration = Duration::from_millis(250);

struct Shared {
    store: Arc<Store>,
    network: Arc<Network>,
    /// Submitted OTP messages, for receipt failover.
    otp_submitted: Option<mpsc::UnboundedSender<OtpSubmitted>>,
    /// Cancelled at shutdown: no new attempts start; attempts under way finish.
    stop: CancellationToken,
    /// Bounds concurrent deliveries (see [`capacity_of`]).
    permits: Arc<Semaphore>,
    policy: Policy,
}

/// The running dispatcher.
pub struct Dispatcher {
    tasks: TaskTracker,
    stop: CancellationToken,
    permits: Arc<Semaphore>,
    /// The permits the semaphore stands for now (some may be out or being withdrawn).
    capacity: std::sync::Mutex<usize>,
    /// Detached at shutdown: jobs handed over after it are left to the store.
    dispatch: Dispatch,
}

/// Deliveries under way at most: the carriers' total window in flight, and three times as many
/// waiting for a paced carrier within their spill bound. With only the window, messages queued
/// here behind those waiting on a throttled carrier and missed the bound (measured: 1.8 s for a
/// 1 s bound at 300/s offered, alpha capped at 100/s; 1.0 s with the waiting room).
const WAITING_ROOM: usize = 4;

fn capacity_of(fabric: &crate::route::Fabric) -> usize {
    fabric.carriers.iter().map(|c| c.config().window * c.config().sessions).sum::<usize>().max(1) * WAITING_ROOM
}

impl Dispatcher {
    /// Starts dispatching the jobs handed to `dispatch`.
    pub fn start(
        dispatch: &Dispatch,
        network: Arc<Network>,
        otp_submitted: Option<mpsc::UnboundedSender<OtpSubmitted>>,
        policy: Policy,
    ) -> Dispatcher {
        let store = dispatch.store.clone();
        let (jobs, receiver) = mpsc::unbounded_channel::<Job>();
        let stop = CancellationToken::new();
        let capacity = capacity_of(&network.current());
        let permits = Arc::new(Semaphore::new(capacity));
        let shared = Arc::new(Shared { store, network, otp_submitted, stop: stop.clone(), permits: permits.clone(), policy });
        let tasks = TaskTracker::new();
        let handed: Handed = Arc::default();
        let progress = Arc::new(Progress::new());
        tasks.spawn(run(shared, receiver, tasks.clone(), handed.clone(), progress.clone()));
        *lock(&dispatch.link) = Some(Link { jobs, handed, backlog: policy.backlog, wait: policy.backlog_wait, progress });
        // A new term starts with recovery's full pass over the queue.
        dispatch.end_overflow();
        Dispatcher { tasks, stop, permits, capacity: std::sync::Mutex::new(capacity), dispatch: dispatch.clone() }
    }

    /// Follows a reload: deliveries under way at most follow the new carriers' total window.
    /// Growing adds permits at once; shrinking withdraws them as deliveries finish.
    pub fn fit(&self, fabric: &crate::route::Fabric) {
        let wanted = capacity_of(fabric);
        let mut capacity = lock(&self.capacity);
        if wanted > *capacity {
            self.permits.add_permits(wanted - *capacity);
        } else if wanted < *capacity {
            let excess = u32::try_from(*capacity - wanted).unwrap_or(u32::MAX);
            let (permits, stop) = (self.permits.clone(), self.stop.clone());
            self.tasks.spawn(async move {
                tokio::select! {
                    withdrawn = permits.acquire_many_owned(excess) => {
                        if let Ok(withdrawn) = withdrawn {
                            withdrawn.forget();
                        }
                    }
                    _ = stop.cancelled() => {}
                }
            });
        }
        *capacity = wanted;
    }

    /// Deliveries that may start now (tests).
    #[cfg(feature = "test-util")]
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Stops starting attempts and waits (at most `limit`) for those under way.
    pub async fn shutdown(self, limit: Duration) -> bool {
        lock(&self.dispatch.link).take();
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout(limit, self.tasks.wait()).await.is_ok()
    }
}

/// The loop: one delivery task per destination at a time, the rest wait their turn in order.
async fn run(shared: Arc<Shared>, mut jobs: mpsc::UnboundedReceiver<Job>, tasks: TaskTracker, handed: Handed, progress: Arc<Progress>) {
    let (done_tx, mut done) = mpsc::unbounded_channel::<(String, MessageId)>();
    let mut waiting: HashMap<String, VecDeque<Job>> = HashMap::new();
    let start = |job: Job| {
        let shared = shared.clone();
        let done_tx = done_tx.clone();
        tasks.spawn(async move {
            let (to, id) = (job.sms.to.clone(), job.id);
            if let Ok(_permit) = shared.permits.clone().acquire_owned().await {
                // Boxed: inline, every task still waiting for its permit reserved the whole
                // delivery's state (measured: peak RSS 148 → 94 MB with the backlog full, and
                // 0.14 → 0.11 CPU ms per message, the big futures no longer moved around).
                Box::pin(shared.deliver(job)).await;
            }
            let _ = done_tx.send((to, id));
        });
    };
    loop {
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => {
                    progress.moved();
                    match waiting.get_mut(&job.sms.to) {
                        Some(queue) => queue.push_back(job),
                        None => {
                            waiting.insert(job.sms.to.clone(), VecDeque::new());
                            start(job);
                        }
                    }
                }
                None => break,
            },
            Some((to, id)) = done.recv() => {
                lock(&handed).remove(&id);
                progress.finished();
                match waiting.get_mut(&to).and_then(VecDeque::pop_front) {
                    Some(next) if !shared.stop.is_cancelled() => start(next),
                    _ => {
                        waiting.remove(&to);
                    }
                }
            }
            _ = shared.stop.cancelled() => break,
        }
    }
}

/// Moves a message off a carrier that could not take it within its spill bound.
fn spill(carrier: &Carrier, tried: &mut HashSet<String>) {
    metrics::counter!(telemetry::SPILLOVERS_TOTAL, "carrier" => carrier.name().to_string()).increment(1);
    tried.insert(carrier.name().to_string());
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

/// What to do next, decided before each attempt.
enum Next {
    /// Submit here; `alone` when no other carrier of the route is usable (nowhere to spill to).
    Submit { carrier: Arc<Carrier>, alone: bool },
    /// No usable carrier right now.
    Wait,
    /// Every usable carrier failed this round.
    Pause,
}

impl Shared {
    fn choose(&self, job: &Job, tried: &HashSet<String>, spill_after: Duration) -> Option<Next> {
        let fabric = self.network.current();
        let order = match &job.only {
            // Gone from the config since (a reload): it waits, and expires if it stays gone.
            Some(name) => fabric.carriers.iter().filter(|c| c.name() == name).cloned().collect(),
            None => fabric.routes.route(&job.sms.to)?.order(),
        };
        let allowed: Vec<&Arc<Carrier>> = order.iter().filter(|c| !job.avoid.iter().any(|a| a == c.name())).collect();
        // A receipt failover that has run out of fresh carriers falls back to the whole route.
        let candidates = if allowed.is_empty() { order.iter().collect() } else { allowed };
        let usable: Vec<&Arc<Carrier>> = candidates.into_iter().filter(|c| c.usable()).collect();
        if usable.is_empty() {
            return Some(Next::Wait);
        }
        let alone = usable.len() == 1;
        let untried = || usable.iter().filter(|c| !tried.contains(c.name()));
        // The first with room now; else the first at all (it waits at most the spill bound).
        let pick = untried().find(|c| c.has_room(spill_after)).or_else(|| untried().next());
        Some(match pick {
            Some(carrier) => Next::Submit { carrier: (*carrier).clone(), alone },
            None => Next::Pause,
        })
    }

    /// Waits until a carrier's bind count changes, `limit` passes, or shutdown. False on shutdown.
    async fn wait_for_change(&self, limit: Duration) -> bool {
        let mut watches: Vec<_> = self.network.current().carriers.iter().map(|c| c.watch_bound()).collect();
        let changes = futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
        tokio::select! {
            _ = changes => true,
            _ = tokio::time::sleep(limit) => true,
            _ = self.stop.cancelled() => false,
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

    async fn finish(&self, id: &MessageId, status: MessageStatus, error: String, attempt: Option<Attempt>) {
        let r = self.store.finish(id, status, Some(error), attempt, SystemTime::now()).await;
        self.log_store_error(id, r);
    }

    /// Records a send that may have reached the handset without a verdict on the whole (no
    /// readable answer, or a long message taken in part); says whether it may go again (else it
    /// failed at `messages.max_unconfirmed_resends`).
    async fn may_send_again(&self, id: &MessageId, carrier: &str, attempt: Attempt) -> bool {
        let detail = attempt.detail.clone();
        let sent_blind = match self.store.record_attempt(id, attempt, true).await {
            Ok(unconfirmed) => unconfirmed,
            Err(e) => {
                tracing::error!(message_id = %id, error = %e, "store update failed");
                u32::MAX
            }
        };
        if sent_blind > self.policy.max_unconfirmed_resends {
            tracing::warn!(message_id = %id, carrier, unconfirmed = sent_blind, "submits went out without an answer; not sent again");
            metrics::counter!(telemetry::RESEND_LIMIT_TOTAL).increment(1);
            let error = format!(
                "{sent_blind} submits went out without an answer for the whole message (last: {detail}); not sent again, since each may already have reached the handset"
            );
            self.finish(id, MessageStatus::Failed, error, None).await;
            return false;
        }
        metrics::counter!(telemetry::RESUBMITS_TOTAL).increment(1);
        true
    }

    async fn deliver(&self, mut job: Job) {
        let id = job.id;
        let deadline = job.sms.deadline.unwrap_or_else(SystemTime::now);
        let spill_after = self.policy.spill_after(&job);
        let mut retry_later = RETRY_LATER_FIRST;
        let mut round_pause = ROUND_PAUSE_FIRST;
        // Logged once: the store could not put the in-flight mark on disk.
        let mut held_back = false;
        let mut tried: HashSet<String> = HashSet::new();
        let mut pinned: Option<(Arc<Carrier>, bool)> = None;
        // The carrier the message waits on, and since when.
        let mut waiting_on: Option<(String, Instant)> = None;
        loop {
            if self.stop.is_cancelled() {
                // Left queued in the store: the next start sends it.
                return;
            }
            if SystemTime::now() >= deadline {
                tracing::info!(message_id = %id, "validity passed before the message could be sent");
                self.finish(&id, MessageStatus::Expired, "validity passed before it could be sent".into(), None).await;
                return;
            }
            let next = match pinned.take() {
                Some((carrier, alone)) if carrier.usable() => Next::Submit { carrier, alone },
                _ => match self.choose(&job, &tried, spill_after) {
                    Some(next) => next,
                    None => {
                        self.finish(&id, MessageStatus::Failed, "no route for this destination".into(), None).await;
                        return;
                    }
                },
            };
            let (carrier, alone) = match next {
                Next::Submit { carrier, alone } => (carrier, alone),
                Next::Wait => {
                    let remaining = deadline.duration_since(SystemTime::now()).unwrap_or_default();
                    if !self.wait_for_change(remaining.min(BREAKER_RECHECK)).await {
                        return;
                    }
                    continue;
                }
                Next::Pause => {
                    tried.clear();
                    if !self.pause(round_pause, deadline).await {
                        return;
                    }
                    round_pause = (round_pause * 2).min(ROUND_PAUSE_MAX);
                    continue;
                }
            };
            let since = match &waiting_on {
                Some((name, since)) if name == carrier.name() => *since,
                _ => {
                    let now = Instant::now();
                    waiting_on = Some((carrier.name().to_string(), now));
                    now
                }
            };
            // With nowhere to spill to, waiting on this carrier is the best there is.
            let max_wait = match alone {
                true => deadline.duration_since(SystemTime::now()).unwrap_or_default(),
                false => spill_after.saturating_sub(since.elapsed()),
            };
            if !carrier.may_submit() {
                // This node's term as the cluster's dispatcher ended: the message is the next
                // leader's now; write nothing more about it.
                return;
            }
            // A long text goes in parts tied by a reference no earlier send to this number
            // used (nor this message's own last send: after a crash too), on disk with the
            // in-flight mark below.
            let segments = job.sms.segments_on(carrier.config()).unwrap_or(1);
            if segments > 1 && carrier.config().long_sms != LongSms::Payload {
                match self.store.take_reference(&id, &job.sms.to, SystemTime::now()).await {
                    Ok(reference) => job.sms.reference = reference,
                    Err(e) => {
                        // Not sent: the message stays queued for the next start (or the next
                        // attempt, once the store writes again).
                        tracing::error!(message_id = %id, error = %e, "store update failed; long message not sent");
                        if !self.pause(round_pause, deadline).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            // On disk before the submit goes out: after a crash, a submit that may have reached
            // the SMSC is known for what it is (a possible duplicate), never resent blind. A
            // store that cannot write (a full disk) holds the message back: sent anyway, its
            // submit would be on record nowhere and go again, uncounted, after the restart.
            let marked = match self.store.mark_in_flight(&id).await {
                Ok(()) => self.store.durable().await,
                Err(e) => Err(e),
            };
            if let Err(e) = marked {
                if !held_back {
                    tracing::error!(message_id = %id, error = %e, "in-flight mark not on disk; not sent until the store writes again");
                    held_back = true;
                }
                if !self.pause(round_pause, deadline).await {
                    return;
                }
                round_pause = (round_pause * 2).min(ROUND_PAUSE_MAX);
                continue;
            }
            // A message that names no sender goes from its route's sender on this carrier, if
            // the route sets one (else the carrier's source_addr).
            let route_sender = match job.sms.from {
                Some(_) => None,
                None => self.network.current().routes.route(&job.sms.to).and_then(|r| r.sender_on(carrier.name()).map(str::to_string)),
            };
            let sms = match route_sender {
                Some(from) => std::borrow::Cow::Owned(OutboundSms { from: Some(from), ..job.sms.clone() }),
                None => std::borrow::Cow::Borrowed(&job.sms),
            };
            let Submission { outcome, accepted, parts, session, slot } = carrier.submit_via(&sms, max_wait).await;
            // An accepted submit keeps its window slot until the store knows it (WindowSlot);
            // any other outcome frees it now.
            let accepted_slot = matches!(outcome, SubmitOutcome::Accepted { .. }).then_some(slot);
            if outcome == (SubmitOutcome::RetryElsewhere { reason: NotSubmitted::Fenced }) {
                return;
            }
            if outcome == (SubmitOutcome::RetryElsewhere { reason: NotSubmitted::Busy }) {
                // Nothing went out: not an attempt.
                self.log_store_error(&id, self.store.clear_in_flight(&id).await);
                spill(&carrier, &mut tried);
                continue;
            }
            if !matches!(outcome, SubmitOutcome::Permanent { reason: Permanent::Message(_) }) {
                // A message that could not be encoded, or expired while it waited, never went out.
                metrics::counter!(telemetry::SUBMIT_TOTAL, "carrier" => carrier.name().to_string(), "result" => outcome.label())
                    .increment(1);
            }
            let mut record = attempt(carrier.name(), session.as_deref(), &outcome);
            if !accepted.is_empty() && !matches!(outcome, SubmitOutcome::Accepted { .. }) {
                // The SMSC took some parts and not the rest: those it took may reach the handset.
                let taken: Vec<String> = accepted.iter().map(|(seq, smsc_id)| format!("{seq} ({smsc_id})")).collect();
                record.result = "partial".into();
                record.detail = format!("parts {} of {parts} taken, then {}: {}", taken.join(", "), outcome.label(), record.detail);
                let permanent = matches!(outcome, SubmitOutcome::Permanent { .. });
                if permanent || self.policy.partial_failure == PartialFailure::Fail {
                    tracing::warn!(message_id = %id, carrier = carrier.name(), detail = %record.detail, "long message failed part way");
                    let error = format!("{}; the parts taken may reach the handset as an incomplete message", record.detail);
                    self.finish(&id, MessageStatus::Failed, error, Some(record)).await;
                    return;
                }
                tracing::info!(message_id = %id, carrier = carrier.name(), detail = %record.detail, "long message taken in part; sending it again whole");
                if !self.may_send_again(&id, carrier.name(), record).await {
                    return;
                }
                tried.insert(carrier.name().to_string());
                continue;
            }
            match outcome {
                SubmitOutcome::Accepted { .. } => {
                    let smsc_ids: Vec<String> = accepted.into_iter().map(|(_, smsc_id)| smsc_id).collect();
                    let segments = u16::try_from(segments).unwrap_or(u16::MAX);
                    let marked = self.store.mark_submitted_parts(&id, carrier.name(), &smsc_ids, segments, record, SystemTime::now()).await;
                    drop(accepted_slot);
                    self.log_store_error(&id, marked);
                    if let (Some(_), Some(tx)) = (job.verification, &self.otp_submitted) {
                        let country = crate::country::label(&job.sms.to);
                        metrics::counter!(telemetry::OTP_SENT_TOTAL, "carrier" => carrier.name().to_string(), "country" => country)
                            .increment(1);
                        let _ = tx.send(OtpSubmitted { message: id });
                    }
                    return;
                }
                SubmitOutcome::RetryLater { .. } => {
                    self.log_store_error(&id, self.store.record_attempt(&id, record, false).await);
                    let waited = since.elapsed();
                    if !alone && waited + retry_later >= spill_after {
                        spill(&carrier, &mut tried);
                        continue;
                    }
                    if !self.pause(retry_later, deadline).await {
                        return;
                    }
                    retry_later = (retry_later * 2).min(RETRY_LATER_MAX);
                    pinned = Some((carrier, alone));
                }
                SubmitOutcome::RetryElsewhere { reason } if reason.unconfirmed() => {
                    if !self.may_send_again(&id, carrier.name(), record).await {
                        return;
                    }
                    tracing::info!(message_id = %id, carrier = carrier.name(), %reason, "submit unanswered; sending again (possible duplicate)");
                    tried.insert(carrier.name().to_string());
                }
                SubmitOutcome::RetryElsewhere { reason } => {
                    tracing::debug!(message_id = %id, carrier = carrier.name(), %reason, "trying elsewhere");
                    self.log_store_error(&id, self.store.record_attempt(&id, record, false).await);
                    tried.insert(carrier.name().to_string());
                }
                SubmitOutcome::Permanent { reason } => {
                    let status = match reason {
                        Permanent::Message(MessageError::Expired) => MessageStatus::Expired,
                        _ => MessageStatus::Failed,
                    };
                    tracing::warn!(message_id = %id, carrier = carrier.name(), %reason, "message failed permanently");
                    self.finish(&id, status, reason.to_string(), Some(record)).await;
                    return;
                }
            }
        }
    }
}
