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

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use rusmpp::pdus::{BindReceiver, BindTransceiver, BindTransmitter, DataSmResp, DeliverSmResp, SubmitSm};
use rusmpp::values::{InterfaceVersion, Npi, Ton};
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::codec::{Frame, FrameCodec};
use super::message::c_octet;
use super::outcome::{NotSubmitted, SubmitOutcome};
use super::receipt::{IdRelation, Receipt, ReceiptError, ReceiptFields, ReceiptFormat};
use crate::telemetry;

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
}

/// A delivery receipt read off a session, for whoever tracks messages.
///
/// The SMSC forgets a receipt once we answer its deliver_sm, so the answer waits for
/// [`ReceiptEvent::recorded`]: whoever takes the event says when the receipt is on disk.
#[derive(Debug)]
pub struct ReceiptEvent {
    pub carrier: Arc<str>,
    pub receipt: Result<Receipt, ReceiptError>,
    /// The carrier's `receipt_id` setting.
    pub id_relation: IdRelation,
    recorded: Option<oneshot::Sender<bool>>,
}

impl ReceiptEvent {
    /// Answers the SMSC: ESME_ROK once `durable` (the receipt is on disk, or there was nothing
    /// worth keeping), else ESME_RX_T_APPN so that it sends the receipt again later. An event
    /// dropped unanswered counts as not durable.
    pub fn recorded(&mut self, durable: bool) {
        if let Some(answer) = self.recorded.take() {
            let _ = answer.send(durable);
        }
    }
}

/// A deliver_sm/data_sm answered once its receipt is recorded.
struct AwaitedAnswer {
    sequence: u32,
    response: Pdu,
    recorded: oneshot::Receiver<bool>,
}

pub type ReceiptSender = mpsc::Sender<ReceiptEvent>;

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect to {endpoint}: {source}")]
    Connect { endpoint: String, source: std::io::Error },
    #[error("connecting to {endpoint} timed out")]
    ConnectTimeout { endpoint: String },
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

type FramedSmpp = Framed<TcpStream, FrameCodec>;

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
        let mut framed = Framed::new(stream, FrameCodec::new(MAX_PDU_LENGTH));
        bind(&mut framed, settings).await?;

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
    /// waiting for a free window slot comes first and is not bounded here).
    pub async fn submit(&self, pdu: SubmitSm) -> SubmitOutcome {
        let inner = &self.inner;
        let not_submitted = |reason| SubmitOutcome::RetryElsewhere { reason };
        if !inner.mode.can_submit() || inner.draining.load(Ordering::Acquire) {
            return not_submitted(NotSubmitted::NoSession);
        }
        let permit = tokio::select! {
            permit = inner.window.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return not_submitted(NotSubmitted::NoSession),
            },
            _ = inner.closed.cancelled() => return not_submitted(NotSubmitted::NoSession),
        };
        if inner.draining.load(Ordering::Acquire) {
            return not_submitted(NotSubmitted::NoSession);
        }
        let outcome = match inner.request(Pdu::SubmitSm(pdu)).await {
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
                inner.close(CloseReason::ResponseTimeout);
                not_submitted(NotSubmitted::ResponseTimeout)
            }
            Err(RequestError::Closed) => not_submitted(NotSubmitted::ConnectionLost),
            Err(RequestError::NotSent) => not_submitted(NotSubmitted::NoSession),
        };
        drop(permit);
        outcome
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
        match timeout(self.response_timeout, rx).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(RequestError::Closed),
            Err(_) => {
                lock(&self.pending).remove(&sequence);
                Err(RequestError::Timeout)
            }
        }
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

    fn reply(&self, sequence: u32, status: CommandStatus, pdu: Pdu) {
        if self.queued_replies.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED_REPLIES {
            tracing::warn!(carrier = %self.carrier, queued = MAX_QUEUED_REPLIES, "the SMSC sends requests but reads none of our answers; closing");
            self.close(CloseReason::NotReading);
            return;
        }
        // Fails only once the writer is gone, i.e. the session is closing anyway.
        let _ = self.replies.send(Command::new(status, sequence, pdu));
    }

    /// Hands a response to the request waiting on it.
    fn answer(&self, sequence: u32, answer: Answer) {
        match lock(&self.pending).remove(&sequence) {
            Some((_, waiter)) => {
                let _ = waiter.send(answer);
            }
            None => tracing::debug!(
                carrier = %self.carrier, sequence, command_id = ?answer.id,
                "response to no pending request (late after a timeout?)"
            ),
        }
    }

    /// Handles one PDU from the SMSC. Returns a reason when the session must end.
    async fn handle(&self, frame: Frame, receipts: &ReceiptSender) -> Option<CloseReason> {
        let command = match frame {
            Frame::Command(command) => command,
            Frame::LongSubmitSmResp { sequence, status, message_id } => {
                tracing::warn!(carrier = %self.carrier, length = message_id.len(), "submit_sm_resp with a message_id longer than SMPP allows; kept as sent");
                metrics::counter!(telemetry::LONG_MESSAGE_IDS_TOTAL, "carrier" => self.carrier.to_string()).increment(1);
                let answer = Answer { id: CommandId::SubmitSmResp, status, message_id, undecodable: false };
                self.answer(sequence, answer);
                return None;
            }
            Frame::LenientDeliverSm { sequence, pdu } => {
                let response = DeliverSmResp::default().into();
                self.deliver(sequence, ReceiptFields::from(&pdu), response, receipts).await;
                return None;
            }
            Frame::Undecodable { command_id, sequence, status, error } => {
                if command_id & 0x8000_0000 != 0 {
                    let answer = Answer { id: CommandId::from(command_id), status, message_id: String::new(), undecodable: true };
                    self.answer(sequence, answer);
                }
                return Some(CloseReason::Malformed(error));
            }
        };
        let sequence = command.sequence_number();
        if command.id().is_response() {
            // Includes generic_nack, which answers whichever request it names.
            self.answer(sequence, Answer::from(&command));
            return None;
        }
        match command.pdu() {
            Some(Pdu::EnquireLink) => self.reply(sequence, CommandStatus::EsmeRok, Pdu::EnquireLinkResp),
            Some(Pdu::Unbind) => {
                self.reply(sequence, CommandStatus::EsmeRok, Pdu::UnbindResp);
                return Some(CloseReason::PeerUnbind);
            }
            Some(Pdu::DeliverSm(pdu)) => {
                self.deliver(sequence, ReceiptFields::from(pdu), DeliverSmResp::default().into(), receipts).await;
            }
            Some(Pdu::DataSm(pdu)) => {
                self.deliver(sequence, ReceiptFields::from(pdu), DataSmResp::default().into(), receipts).await;
            }
            // No response exists for these (§4.12.1, §4.1.7); we are already bound.
            Some(Pdu::AlertNotification(_) | Pdu::Outbind(_)) => {
                tracing::debug!(carrier = %self.carrier, command_id = ?command.id(), "ignored");
            }
            // rusmpp leaves the PDU empty when the body does not fit the command (a body on an
            // enquire_link, none on a bind ...).
            None => {
                tracing::warn!(carrier = %self.carrier, command_id = ?command.id(), "request with an invalid body; answered generic_nack");
                self.reply(sequence, CommandStatus::EsmeRinvcmdlen, Pdu::GenericNack);
            }
            Some(_) => {
                tracing::warn!(carrier = %self.carrier, command_id = ?command.id(), "unsupported request from SMSC; answered generic_nack");
                self.reply(sequence, CommandStatus::EsmeRinvcmdid, Pdu::GenericNack);
            }
        }
        None
    }

    /// Hands a receipt over and answers the SMSC once it is recorded; anything else at once.
    async fn deliver(&self, sequence: u32, fields: ReceiptFields<'_>, response: Pdu, receipts: &ReceiptSender) {
        if !fields.is_receipt_as(&self.receipt_format) {
            // Mobile-originated text; otpgate does not take inbound SMS. Its content is the
            // subscriber's business and is not logged.
            if let Some(count) = self.mobile_originated.due() {
                tracing::info!(carrier = %self.carrier, count, "mobile-originated SMS ignored (counted; one line per 10 s at most)");
            }
            metrics::counter!(telemetry::MOBILE_ORIGINATED_TOTAL, "carrier" => self.carrier.to_string()).increment(1);
            self.reply(sequence, CommandStatus::EsmeRok, response);
            return;
        }
        let receipt = fields.parse_as(&self.receipt_format);
        if let Err(e) = &receipt {
            tracing::warn!(carrier = %self.carrier, error = %e, "unreadable delivery receipt");
        }
        let (recorded, awaited) = oneshot::channel();
        let event = ReceiptEvent { carrier: self.carrier.clone(), receipt, id_relation: self.receipt_ids, recorded: Some(recorded) };
        // A full channel makes the reader wait: the store sets the pace.
        if receipts.send(event).await.is_err() {
            tracing::debug!(carrier = %self.carrier, "receipt consumer gone");
        }
        let _ = self.awaited.send(AwaitedAnswer { sequence, response, recorded: awaited });
    }
}

async fn bind(framed: &mut FramedSmpp, settings: &SessionSettings) -> Result<(), SessionError> {
    let system_id = c_octet(&settings.system_id);
    let password = c_octet(&settings.password);
    let system_type = c_octet(&settings.system_type);
    let version = InterfaceVersion::Smpp3_4;
    let pdu: Pdu = match settings.mode {
        BindMode::Transceiver => {
            BindTransceiver::new(system_id, password, system_type, version, Ton::Unknown, Npi::Unknown, Default::default()).into()
        }
        BindMode::Transmitter => {
            BindTransmitter::new(system_id, password, system_type, version, Ton::Unknown, Npi::Unknown, Default::default()).into()
        }
        BindMode::Receiver => {
            BindReceiver::new(system_id, password, system_type, version, Ton::Unknown, Npi::Unknown, Default::default()).into()
        }
    };
    const BIND_SEQUENCE: u32 = 1;
    let deadline = Instant::now() + settings.response_timeout;
    let sent = timeout_at(deadline, framed.send(Command::new(CommandStatus::EsmeRok, BIND_SEQUENCE, pdu))).await;
    match sent {
        Err(_) => return Err(SessionError::BindTimeout(settings.response_timeout)),
        Ok(Err(e)) => return Err(SessionError::Protocol(e.to_string())),
        Ok(Ok(())) => {}
    }
    loop {
        let command = match timeout_at(deadline, framed.next()).await {
            Err(_) => return Err(SessionError::BindTimeout(settings.response_timeout)),
            Ok(None) => return Err(SessionError::ClosedDuringBind),
            Ok(Some(Err(e))) => return Err(SessionError::Protocol(e.to_string())),
            Ok(Some(Ok(Frame::Command(command)))) => command,
            Ok(Some(Ok(Frame::Undecodable { error, .. }))) => return Err(SessionError::Protocol(error)),
            // Nothing else is due before the bind is answered; a real SMSC sends none of it.
            Ok(Some(Ok(_))) => continue,
        };
        if command.sequence_number() == BIND_SEQUENCE && command.id().is_response() {
            return match command.status() {
                CommandStatus::EsmeRok if command.id() != CommandId::GenericNack => Ok(()),
                CommandStatus::EsmeRok => Err(SessionError::BindRefused { status: CommandStatus::EsmeRinvcmdid }),
                status => Err(SessionError::BindRefused { status }),
            };
        }
        if command.id() == CommandId::EnquireLink {
            let resp = Command::new(CommandStatus::EsmeRok, command.sequence_number(), Pdu::EnquireLinkResp);
            framed.send(resp).await.map_err(|e| SessionError::Protocol(e.to_string()))?;
        }
    }
}

/// Drains replies (first) and requests into the socket, one flush per batch. A batch that
/// cannot be written within `response_timeout` means the SMSC has stopped reading: close.
async fn write_loop(
    mut sink: SplitSink<FramedSmpp, Command>,
    mut outbound: mpsc::Receiver<Command>,
    mut replies: mpsc::UnboundedReceiver<Command>,
    inner: Arc<Inner>,
) {
    const MAX_BATCH: usize = 256;
    let take_reply = |reply: Command| {
        inner.queued_replies.fetch_sub(1, Ordering::AcqRel);
        reply
    };
    loop {
        let first = tokio::select! {
            biased;
            reply = replies.recv() => match reply {
                Some(command) => take_reply(command),
                None => break,
            },
            command = outbound.recv() => match command {
                Some(command) => command,
                None => break,
            },
            _ = inner.closed.cancelled() => break,
        };
        let batch = async {
            sink.feed(first).await?;
            let mut batched = 1;
            while batched < MAX_BATCH {
                let next = match replies.try_recv() {
                    Ok(command) => take_reply(command),
                    Err(_) => match outbound.try_recv() {
                        Ok(command) => command,
                        Err(_) => break,
                    },
                };
                sink.feed(next).await?;
                batched += 1;
            }
            SinkExt::<Command>::flush(&mut sink).await
        };
        let reason = tokio::select! {
            written = timeout(inner.response_timeout, batch) => match written {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => CloseReason::Io(e.to_string()),
                Err(_) => CloseReason::NotReading,
            },
            _ = inner.closed.cancelled() => break,
        };
        if reason == CloseReason::NotReading {
            tracing::warn!(carrier = %inner.carrier, timeout = ?inner.response_timeout, "writes to the SMSC stalled; closing");
        }
        inner.close(reason);
        break;
    }
}

/// Reads PDUs until the session closes.
async fn read_loop(mut stream: SplitStream<FramedSmpp>, inner: Arc<Inner>, receipts: ReceiptSender) {
    use rusmpp::tokio_codec::DecodeError;
    loop {
        let item = tokio::select! {
            _ = inner.closed.cancelled() => break,
            item = stream.next() => item,
        };
        let reason = match item {
            None => Some(CloseReason::PeerClosed),
            Some(Err(DecodeError::Io(e))) => Some(CloseReason::Io(e.to_string())),
            Some(Err(e)) => Some(CloseReason::Malformed(e.to_string())),
            Some(Ok(frame)) => {
                *lock(&inner.last_received) = Instant::now();
                inner.handle(frame, &receipts).await
            }
        };
        if let Some(reason) = reason {
            if matches!(reason, CloseReason::Malformed(_)) {
                tracing::warn!(carrier = %inner.carrier, %reason, "closing session");
            }
            inner.close(reason);
            break;
        }
    }
}

/// A log line that may repeat thousands of times a second, written at most once per `interval`
/// with the number of occurrences it stands for (20,000 mobile-originated SMS once wrote 20,000
/// lines in 2 s).
struct LogEvery {
    interval: Duration,
    /// When the last line went out, and the occurrences since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogEvery {
    fn new(interval: Duration) -> LogEvery {
        LogEvery { interval, state: Mutex::new((None, 0)) }
    }

    /// Counts one occurrence; `Some(count)` when a line is due now, for that many.
    fn due(&self) -> Option<u64> {
        let mut state = lock(&self.state);
        state.1 += 1;
        let due = state.0.is_none_or(|last| last.elapsed() >= self.interval);
        if !due {
            return None;
        }
        let count = state.1;
        *state = (Some(Instant::now()), 0);
        Some(count)
    }
}

/// Answers each receipt's deliver_sm once it is recorded, in arrival order (the tracker records
/// them in that order). A receipt that could not be recorded gets ESME_RX_T_APPN: the SMSC keeps
/// it and tries again, instead of forgetting a receipt we never stored.
async fn answer_when_recorded(mut awaited: mpsc::UnboundedReceiver<AwaitedAnswer>, inner: Arc<Inner>) {
    loop {
        let next = tokio::select! {
            _ = inner.closed.cancelled() => break,
            next = awaited.recv() => next,
        };
        let Some(AwaitedAnswer { sequence, response, recorded }) = next else { break };
        let durable = tokio::select! {
            // Closed unanswered: the SMSC resends what it never saw answered.
            _ = inner.closed.cancelled() => break,
            durable = recorded => durable.unwrap_or(false),
        };
        let status = if durable { CommandStatus::EsmeRok } else { CommandStatus::EsmeRxTAppn };
        inner.reply(sequence, status, response);
    }
}

/// Sends enquire_link when the link has been quiet for `enquire_link_interval`; an unanswered
/// one means the SMSC (or a middlebox) is gone even though TCP looks open.
async fn keepalive_loop(inner: Arc<Inner>) {
    let mut ticker = tokio::time::interval(inner.enquire_link_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = inner.closed.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let quiet_for = lock(&inner.last_received).elapsed();
        if quiet_for < inner.enquire_link_interval {
            continue;
        }
        match inner.request(Pdu::EnquireLink).await {
            Ok(_) => {}
            Err(RequestError::Timeout) => {
                inner.close(CloseReason::EnquireLinkTimeout);
                break;
            }
            Err(RequestError::Closed | RequestError::NotSent) => break,
        }
    }
}
