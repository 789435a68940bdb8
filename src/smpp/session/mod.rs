//! One bound SMPP connection to an SMSC.
//!
//! Built directly on rusmpp's `CommandCodec`: after the bind, the framed socket is split between a
//! writer task (drains a channel, flushes once per batch) and a reader task (matches responses to
//! requests by sequence number, answers the SMSC's requests). Every request we send waits on a
//! oneshot in the `pending` table with its own `response_timeout`; submits additionally hold one of
//! `window` semaphore permits, so at most `window` submit_sm are ever unanswered.
//!
//! A session never heals itself: on a response timeout, a missed enquire_link, a malformed PDU or
//! a dropped socket it closes, fails everything in flight back to the callers as "not submitted",
//! and the carrier's supervisor (see `carrier.rs`) opens a new one after a backoff.
//!
//! Files: `bind.rs` (the bind exchange), `io.rs` (writer, reader and keepalive tasks),
//! `inbound.rs` (what the SMSC sends: responses, its requests, receipts answered once on disk).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use rusmpp::pdus::SubmitSm;
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_util::codec::Framed;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod bind;
mod inbound;
mod io;

use super::codec::FrameCodec;
use super::outcome::{NotSubmitted, SubmitOutcome};
use super::receipt::{IdRelation, ReceiptFormat};
use crate::tls::client::HandshakeFailure;
use inbound::{AwaitedAnswer, LogEvery, answer_when_recorded};
pub use inbound::{ReceiptEvent, ReceiptSender};
use io::{keepalive_loop, read_loop, write_loop};

/// PDUs larger than this close the session. SMPP PDUs are small (a submit_sm is < 500 octets; a
/// message_payload may reach 64 KiB): anything bigger is garbage, not a message.
pub const MAX_PDU_LENGTH: usize = 64 * 1024;

/// Answers to the SMSC's requests waiting to be written, at most. An SMSC keeps at most its
/// window of requests unanswered; one that sends on while reading nothing would otherwise grow
/// this queue without bound (1,000,000 enquire_links took 190 MB).
pub const MAX_QUEUED_REPLIES: usize = 4096;

/// How the connection is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    Transceiver,
    Transmitter,
    Receiver,
}

impl BindMode {
    pub fn can_submit(self) -> bool {
        self != BindMode::Receiver
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BindMode::Transceiver => "transceiver",
            BindMode::Transmitter => "transmitter",
            BindMode::Receiver => "receiver",
        }
    }
}

/// Everything needed to open one session.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub carrier: Arc<str>,
    /// Names this link in logs and attempt records: `carrier#slot/mode`.
    pub label: Arc<str>,
    pub endpoint: String,
    pub system_id: String,
    pub password: String,
    pub system_type: String,
    pub mode: BindMode,
    pub window: usize,
    pub response_timeout: Duration,
    pub enquire_link_interval: Duration,
    /// How this carrier writes receipt texts ...
    pub receipt_format: Arc<ReceiptFormat>,
    /// ... and how its receipt ids relate to its submit_sm_resp ids.
    pub receipt_ids: IdRelation,
    /// Checked right before each submit_sm is written.
    pub gate: super::SubmitGate,
    /// SMPP over TLS: the client, or why it could not be set up (every bind then fails with
    /// that reason; the config check makes this rare: a file changed since).
    pub(crate) tls: Option<Result<Arc<crate::tls::Connector>, Arc<str>>>,
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect to {endpoint}: {source}")]
    Connect { endpoint: String, source: std::io::Error },
    #[error("connecting to {endpoint} timed out")]
    ConnectTimeout { endpoint: String },
    #[error("TLS handshake with {endpoint} failed: {}", failure.reason)]
    Tls { endpoint: String, failure: HandshakeFailure },
    #[error("TLS cannot be set up: {0}")]
    TlsSetup(Arc<str>),
    #[error("bind refused by the SMSC: {}", super::outcome::status_name(*status))]
    BindRefused { status: CommandStatus },
    #[error("no bind response within {0:?}")]
    BindTimeout(Duration),
    #[error("the SMSC closed the connection during bind")]
    ClosedDuringBind,
    #[error("protocol error during bind: {0}")]
    Protocol(String),
}

/// Why an open session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// A submit_sm went unanswered for `response_timeout`.
    ResponseTimeout,
    /// An enquire_link went unanswered for `response_timeout`.
    EnquireLinkTimeout,
    /// The SMSC sent unbind.
    PeerUnbind,
    /// The SMSC closed the TCP connection.
    PeerClosed,
    Io(String),
    /// The SMSC sent bytes that are not a valid PDU (bad length, truncated or garbled body).
    Malformed(String),
    /// The SMSC stopped reading: a write took longer than `response_timeout`, or our answers
    /// to its requests piled up beyond [`MAX_QUEUED_REPLIES`].
    NotReading,
    /// We unbound (shutdown or reconfiguration).
    Unbound,
    /// This node's term as the cluster's dispatch leader ended with a submit_sm about to be
    /// written: it was not written, and the session closes.
    Fenced,
}

impl CloseReason {
    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::ResponseTimeout => "response_timeout",
            CloseReason::EnquireLinkTimeout => "enquire_link_timeout",
            CloseReason::PeerUnbind => "peer_unbind",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Io(_) => "io_error",
            CloseReason::Malformed(_) => "malformed_pdu",
            CloseReason::NotReading => "smsc_not_reading",
            CloseReason::Unbound => "unbound",
            CloseReason::Fenced => "fenced",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Io(e) => write!(f, "I/O error: {e}"),
            CloseReason::Malformed(e) => write!(f, "malformed PDU: {e}"),
            other => f.write_str(other.label()),
        }
    }
}

#[derive(Debug)]
enum RequestError {
    Timeout,
    /// The session closed with the request sent (or queued to be): its fate is unknown.
    Closed,
    /// The session closed before the request could be queued: it never went out.
    NotSent,
}

/// The connection under the PDUs: plain TCP or TLS over it.
type Transport = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;
type FramedSmpp = Framed<Transport, FrameCodec>;

/// A request queued to be written, its response still to come.
struct Sent {
    sequence: u32,
    answer: oneshot::Receiver<Answer>,
}

impl Sent {
    /// Waits up to `response_timeout` for the response.
    async fn answer(self, inner: &Inner) -> Result<Answer, RequestError> {
        match timeout(inner.response_timeout, self.answer).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(RequestError::Closed),
            Err(_) => {
                lock(&inner.pending).remove(&self.sequence);
                Err(RequestError::Timeout)
            }
        }
    }
}

/// A submit_sm on its way (its window slot reserved by the caller); [`PendingSubmit::verdict`]
/// waits for the SMSC's answer.
pub struct PendingSubmit {
    inner: Arc<Inner>,
    request: Sent,
}

impl PendingSubmit {
    /// The SMSC's verdict (within `response_timeout`).
    pub async fn verdict(self) -> SubmitOutcome {
        let not_submitted = |reason| SubmitOutcome::RetryElsewhere { reason };
        match self.request.answer(&self.inner).await {
            Ok(answer) => {
                if answer.undecodable {
                    // Accepted or not, nobody can tell: a carrier fault, and a possible duplicate.
                    not_submitted(NotSubmitted::Undecodable)
                } else if answer.id == CommandId::GenericNack {
                    // The SMSC could not read our PDU: not this message's fault, nor final.
                    not_submitted(NotSubmitted::Smsc(answer.status))
                } else {
                    SubmitOutcome::from_status(answer.status, answer.message_id)
                }
            }
            Err(RequestError::Timeout) => {
                self.inner.close(CloseReason::ResponseTimeout);
                not_submitted(NotSubmitted::ResponseTimeout)
            }
            Err(RequestError::Closed) => not_submitted(NotSubmitted::ConnectionLost),
            Err(RequestError::NotSent) => not_submitted(NotSubmitted::NoSession),
        }
    }
}

/// What a response said, as far as the request waiting on it cares.
#[derive(Debug)]
struct Answer {
    id: CommandId,
    status: CommandStatus,
    /// A submit_sm_resp's message_id (empty for other responses).
    message_id: String,
    /// The body could not be read: the SMSC's verdict is unknown.
    undecodable: bool,
}

impl From<&Command> for Answer {
    fn from(command: &Command) -> Answer {
        let message_id = match command.pdu() {
            Some(Pdu::SubmitSmResp(resp)) => resp.message_id().as_str().to_string(),
            _ => String::new(),
        };
        Answer { id: command.id(), status: command.status(), message_id, undecodable: false }
    }
}

/// A handle on one bound session; cheap to clone.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    carrier: Arc<str>,
    gate: super::SubmitGate,
    label: Arc<str>,
    mode: BindMode,
    window_size: usize,
    response_timeout: Duration,
    enquire_link_interval: Duration,
    receipt_format: Arc<ReceiptFormat>,
    receipt_ids: IdRelation,
    /// Mobile-originated SMS are logged as a count, not one line each.
    mobile_originated: LogEvery,
    /// Requests awaiting a response, by sequence number.
    pending: Mutex<HashMap<u32, (Instant, oneshot::Sender<Answer>)>>,
    next_sequence: AtomicU32,
    /// Our requests (bounded: submit callers wait when the socket is slow).
    outbound: mpsc::Sender<Command>,
    /// Our answers to the SMSC's requests. Unbounded so the reader never waits on the writer
    /// (which could deadlock against an SMSC that is itself blocked writing to us); the SMSC's
    /// own window bounds it in practice.
    replies: mpsc::UnboundedSender<Command>,
    /// Replies queued and not yet taken by the writer.
    queued_replies: AtomicUsize,
    /// Receipts waiting to be recorded, in arrival order; bounded in practice by the receipt
    /// channel, on which the reader waits when the store is slow.
    awaited: mpsc::UnboundedSender<AwaitedAnswer>,
    window: Arc<Semaphore>,
    /// Set once the session is closing: no new submits.
    draining: AtomicBool,
    closed: CancellationToken,
    close_reason: Mutex<Option<CloseReason>>,
    last_received: Mutex<Instant>,
    /// The session's reader, writer, keepalive and answerer: [`Session::closed`] waits for them.
    tasks: TaskTracker,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short locks leaves consistent data; keep going.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Session {
    /// Connects and binds. Receipts read off this session are sent to `receipts`.
    pub async fn open(settings: &SessionSettings, receipts: ReceiptSender) -> Result<Session, SessionError> {
        let endpoint = settings.endpoint.clone();
        let stream = match timeout(settings.response_timeout, TcpStream::connect(&endpoint)).await {
            Err(_) => return Err(SessionError::ConnectTimeout { endpoint }),
            Ok(Err(source)) => return Err(SessionError::Connect { endpoint, source }),
            Ok(Ok(stream)) => stream,
        };
        // Submits are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let stream = match &settings.tls {
            None => Either::Left(stream),
            Some(Err(why)) => return Err(SessionError::TlsSetup(why.clone())),
            Some(Ok(connector)) => match timeout(settings.response_timeout, connector.connect(stream)).await {
                Err(_) => return Err(SessionError::Tls { endpoint, failure: HandshakeFailure::timeout() }),
                Ok(Err(failure)) => return Err(SessionError::Tls { endpoint, failure }),
                Ok(Ok(tls)) => Either::Right(tls),
            },
        };
        let mut framed = Framed::new(stream, FrameCodec::new(MAX_PDU_LENGTH));
        bind::bind(&mut framed, settings).await?;

        let (outbound, outbound_rx) = mpsc::channel(settings.window + 64);
        let (replies, replies_rx) = mpsc::unbounded_channel();
        let (awaited, awaited_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            carrier: settings.carrier.clone(),
            label: settings.label.clone(),
            mode: settings.mode,
            window_size: settings.window,
            response_timeout: settings.response_timeout,
            enquire_link_interval: settings.enquire_link_interval,
            receipt_format: settings.receipt_format.clone(),
            receipt_ids: settings.receipt_ids,
            gate: settings.gate.clone(),
            mobile_originated: LogEvery::new(Duration::from_secs(10)),
            pending: Mutex::new(HashMap::new()),
            // The bind used sequence number 1.
            next_sequence: AtomicU32::new(1),
            outbound,
            replies,
            queued_replies: AtomicUsize::new(0),
            awaited,
            window: Arc::new(Semaphore::new(settings.window)),
            draining: AtomicBool::new(false),
            closed: CancellationToken::new(),
            close_reason: Mutex::new(None),
            last_received: Mutex::new(Instant::now()),
            tasks: TaskTracker::new(),
        });
        let (sink, stream) = framed.split();
        inner.tasks.spawn(write_loop(sink, outbound_rx, replies_rx, inner.clone()));
        inner.tasks.spawn(read_loop(stream, inner.clone(), receipts));
        inner.tasks.spawn(keepalive_loop(inner.clone()));
        inner.tasks.spawn(answer_when_recorded(awaited_rx, inner.clone()));
        inner.tasks.close();
        Ok(Session { inner })
    }

    pub fn label(&self) -> &Arc<str> {
        &self.inner.label
    }

    /// Submits one message and waits for the SMSC's verdict (at most `response_timeout` once sent;
    /// waiting for a free window slot comes first and is not bounded here). Returns the window
    /// slot it took, if it took one: the caller frees it by dropping it (see `carrier::WindowSlot`).
    pub async fn submit(&self, pdu: SubmitSm) -> (SubmitOutcome, Option<OwnedSemaphorePermit>) {
        let slot = match self.reserve(1).await {
            Ok(slot) => slot,
            Err(refused) => return (refused, None),
        };
        match self.send_reserved(pdu).await {
            Ok(sent) => (sent.verdict().await, Some(slot)),
            Err(refused) => (refused, Some(slot)),
        }
    }

    /// Takes `n` window slots at once: a long message's parts take theirs all together, so two
    /// long messages never each hold part of the window waiting for the rest. At most the
    /// window; the error is the verdict on a submit that cannot go out here.
    pub async fn reserve(&self, n: usize) -> Result<OwnedSemaphorePermit, SubmitOutcome> {
        let inner = &self.inner;
        let no_session = SubmitOutcome::RetryElsewhere { reason: NotSubmitted::NoSession };
        if !inner.mode.can_submit() || inner.draining.load(Ordering::Acquire) {
            return Err(no_session);
        }
        let n = u32::try_from(n.clamp(1, inner.window_size)).unwrap_or(1);
        let slots = tokio::select! {
            slots = inner.window.clone().acquire_many_owned(n) => slots.map_err(|_| no_session.clone())?,
            _ = inner.closed.cancelled() => return Err(no_session),
        };
        if inner.draining.load(Ordering::Acquire) {
            return Err(no_session);
        }
        Ok(slots)
    }

    /// Queues a submit_sm under a window slot already reserved, without waiting for its answer:
    /// the parts of a long message go out in order this way, one after the other. The error is
    /// the verdict on a submit that never went out.
    pub async fn send_reserved(&self, pdu: SubmitSm) -> Result<PendingSubmit, SubmitOutcome> {
        let inner = &self.inner;
        if !inner.gate.allows() {
            return Err(SubmitOutcome::RetryElsewhere { reason: NotSubmitted::Fenced });
        }
        match inner.send(Pdu::SubmitSm(pdu)).await {
            Ok(request) => Ok(PendingSubmit { inner: self.inner.clone(), request }),
            Err(_) => Err(SubmitOutcome::RetryElsewhere { reason: NotSubmitted::NoSession }),
        }
    }

    /// How long the oldest request still unanswered has waited: a session that has stopped
    /// answering shows it seconds before its response timeout closes it.
    pub fn oldest_unanswered(&self) -> Option<Duration> {
        lock(&self.inner.pending).values().map(|(sent, _)| sent.elapsed()).max()
    }

    /// Submits now outstanding on this session.
    pub fn in_flight(&self) -> usize {
        self.inner.window_size - self.inner.window.available_permits()
    }

    /// Free window slots; the carrier sends to the session with the most.
    pub fn free_window(&self) -> usize {
        if self.is_closed() || self.inner.draining.load(Ordering::Acquire) { 0 } else { self.inner.window.available_permits() }
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// Waits until the session has closed and its tasks have ended, and says why.
    pub async fn closed(&self) -> CloseReason {
        self.inner.closed.cancelled().await;
        self.inner.tasks.wait().await;
        lock(&self.inner.close_reason).clone().unwrap_or(CloseReason::Unbound)
    }

    /// Unbinds cleanly: no new submits, in-flight ones get up to `grace` to be answered, then
    /// unbind and wait for unbind_resp (at most `response_timeout`), then close.
    pub async fn unbind(&self, grace: Duration) {
        let inner = &self.inner;
        inner.draining.store(true, Ordering::Release);
        let all = u32::try_from(inner.window_size).unwrap_or(u32::MAX);
        let _ = timeout(grace, inner.window.acquire_many(all)).await;
        if !self.is_closed() {
            if let Err(e) = inner.request(Pdu::Unbind).await {
                tracing::debug!(carrier = %inner.carrier, error = ?e, "no unbind_resp");
            }
        }
        inner.close(CloseReason::Unbound);
    }
}

impl Inner {
    /// Sequence numbers run 1..=0x7FFFFFFF and wrap (§5.1.4).
    fn next_sequence(&self) -> u32 {
        self.next_sequence.fetch_add(1, Ordering::Relaxed) % 0x7FFF_FFFF + 1
    }

    /// Sends a request and waits up to `response_timeout` for its response.
    async fn request(&self, pdu: Pdu) -> Result<Answer, RequestError> {
        self.send(pdu).await?.answer(self).await
    }

    /// Queues a request to be written; its answer is awaited with [`Sent::answer`].
    async fn send(&self, pdu: Pdu) -> Result<Sent, RequestError> {
        let (tx, rx) = oneshot::channel();
        let sequence = {
            let mut pending = lock(&self.pending);
            // Checked under the lock that `close` drains: nothing inserted after it is stranded.
            if self.closed.is_cancelled() {
                return Err(RequestError::NotSent);
            }
            let mut sequence = self.next_sequence();
            while pending.contains_key(&sequence) {
                sequence = self.next_sequence();
            }
            pending.insert(sequence, (Instant::now(), tx));
            sequence
        };
        let command = Command::new(CommandStatus::EsmeRok, sequence, pdu);
        if self.outbound.send(command).await.is_err() {
            lock(&self.pending).remove(&sequence);
            return Err(RequestError::NotSent);
        }
        Ok(Sent { sequence, answer: rx })
    }

    /// Closes the session once; later calls keep the first reason.
    fn close(&self, reason: CloseReason) {
        {
            let mut current = lock(&self.close_reason);
            if current.is_some() {
                return;
            }
            *current = Some(reason);
        }
        self.draining.store(true, Ordering::Release);
        self.closed.cancel();
        self.window.close();
        // Dropping the senders wakes every waiting request with "closed".
        let stranded: Vec<_> = lock(&self.pending).drain().collect();
        drop(stranded);
    }
}
