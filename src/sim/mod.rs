//! An SMSC simulator that speaks real SMPP 3.4 over TCP (`otpgate smsc-sim`).
//!
//! It is what the demo's "carriers" are and what every integration test binds to: it accepts
//! binds (checking credentials when configured), answers submit_sm with a message id after an
//! optional delay, sends a delivery receipt for each submit that asks for one (TLVs plus the
//! Appendix B text, with the id in *decimal* in the text and hex in the TLV, as real SMSCs do),
//! answers enquire_link and unbind, and records everything it saw.
//!
//! Fault switches ([`Behaviour`]) make it hang or refuse binds; [`SmscSim::send_raw`] writes
//! arbitrary bytes for malformed-PDU tests. It is a test peer, not a production SMSC: it keeps
//! what it receives in memory.

pub mod accounting;
pub mod fuzz;
pub mod text;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rusmpp::pdus::{BindReceiverResp, BindTransceiverResp, BindTransmitterResp, DeliverSm, SubmitSm, SubmitSmResp};
use rusmpp::tlvs::MessageDeliveryRequestTlvValue;
use rusmpp::tokio_codec::CommandCodec;
use rusmpp::types::OctetString;
use rusmpp::values::{EsmClass, MessageState};
use rusmpp::{Command, CommandStatus, Pdu};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::smpp::message::c_octet;

/// How the simulator treats clients.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Shown in printouts.
    pub name: String,
    /// Required system_id; any is accepted when `None`.
    pub system_id: Option<String>,
    /// Required password; any is accepted when `None`.
    pub password: Option<String>,
    /// How long before each submit_sm_resp goes out.
    pub response_delay: Duration,
    /// Send a DELIVRD receipt for each submit asking for one, after `receipt_delay`.
    pub receipts: bool,
    pub receipt_delay: Duration,
    /// Send the receipt *before* the submit_sm_resp (it happens with real SMSCs).
    pub receipt_first: bool,
    /// The receipts' final state: "DELIVRD", "UNDELIV", "REJECTD" or "EXPIRED".
    pub receipt_stat: &'static str,
    /// Random message ids (as some carriers hand out) instead of a counter.
    pub random_ids: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            name: "smsc-sim".into(),
            system_id: None,
            password: None,
            response_delay: Duration::ZERO,
            receipts: true,
            receipt_delay: Duration::from_millis(20),
            receipt_first: false,
            receipt_stat: "DELIVRD",
            random_ids: false,
        }
    }
}

/// Fault switches, settable while running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Behaviour {
    Normal = 0,
    /// Read everything, answer nothing (a hung SMSC with the socket open).
    Hang = 1,
    /// Answer every bind with ESME_RBINDFAIL.
    RefuseBinds = 2,
}

/// A bind the simulator saw.
#[derive(Debug, Clone)]
pub struct BindAttempt {
    pub at: Instant,
    pub system_id: String,
    pub mode: &'static str,
    pub accepted: bool,
}

/// A submit_sm the simulator accepted.
#[derive(Debug, Clone)]
pub struct ReceivedSms {
    pub at: Instant,
    pub carrier: String,
    pub message_id: String,
    pub from: String,
    pub to: String,
    pub text: String,
    pub data_coding: u8,
    pub esm_class: u8,
    pub validity_period: String,
}

/// What the simulator has seen so far.
#[derive(Debug, Clone, Default)]
pub struct SimStats {
    pub connections: u64,
    pub binds: Vec<BindAttempt>,
    pub submits: Vec<ReceivedSms>,
    /// submit_sm received and not yet answered, now and at the most.
    pub outstanding: usize,
    pub max_outstanding: usize,
    pub enquire_links: u64,
    pub unbinds: u64,
    pub deliver_sm_resps: u64,
    /// The message ids of receipts answered with ESME_ROK: the SMSC has forgotten them.
    pub acked_receipts: Vec<String>,
    /// Receipts answered with an error status (sent again shortly, as SMSCs do).
    pub receipts_refused: u64,
    pub generic_nacks: u64,
    /// submit_sm answered with an error status (forced or over `max_tps`).
    pub refused: u64,
    /// submit_sm whose connection was closed unanswered (`set_drop_every`).
    pub dropped: u64,
}

enum Outgoing {
    Response(Command),
    /// A request; the connection numbers it.
    Request(Pdu),
    Raw(Bytes),
}

struct Receiver {
    connection: u64,
    outgoing: mpsc::UnboundedSender<Outgoing>,
}

struct State {
    config: SimConfig,
    behaviour: AtomicU8,
    /// When non-zero, submit_sm are answered with this command_status instead of ESME_ROK ...
    submit_status: AtomicU32,
    /// ... every one of them (0 or 1), or only every n-th.
    status_every: AtomicU64,
    /// When non-zero, every n-th submit_sm closes its connection unanswered.
    drop_every: AtomicU64,
    /// When non-zero, submit_sm beyond this rate get ESME_RTHROTTLED (a token bucket of one
    /// second's worth, as carriers police an agreed TPS).
    max_tps: AtomicU64,
    tps_bucket: Mutex<(f64, Instant)>,
    /// Send every receipt twice.
    duplicate_receipts: std::sync::atomic::AtomicBool,
    /// Answer submits with a submit_sm_resp whose message_id is unreadable bytes.
    garbled_responses: std::sync::atomic::AtomicBool,
    submits_seen: AtomicU64,
    next_message_id: AtomicU64,
    next_connection: AtomicU64,
    stats: Mutex<SimStats>,
    changed: Notify,
    /// Connections bound as receiver or transceiver, for receipts.
    receivers: Mutex<Vec<Receiver>>,
    /// Receipts waiting for a receiver to bind, as a real SMSC keeps them.
    queued_receipts: Mutex<VecDeque<Pdu>>,
    printed: broadcast::Sender<ReceivedSms>,
    /// Cancelled to drop every current connection (the listener stays).
    connections: Mutex<CancellationToken>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running simulator. Dropping it stops it.
pub struct SmscSim {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
}

impl Drop for SmscSim {
    fn drop(&mut self) {
        self.shutdown.cancel();
        lock(&self.state.connections).cancel();
    }
}

impl SmscSim {
    /// Listens on `listen` (port 0 for any) and serves until dropped.
    pub async fn start(listen: SocketAddr, config: SimConfig) -> std::io::Result<SmscSim> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            config,
            behaviour: AtomicU8::new(Behaviour::Normal as u8),
            submit_status: AtomicU32::new(0),
            status_every: AtomicU64::new(0),
            drop_every: AtomicU64::new(0),
            max_tps: AtomicU64::new(0),
            tps_bucket: Mutex::new((0.0, Instant::now())),
            duplicate_receipts: std::sync::atomic::AtomicBool::new(false),
            garbled_responses: std::sync::atomic::AtomicBool::new(false),
            submits_seen: AtomicU64::new(0),
            next_message_id: AtomicU64::new(0x1000_0000),
            next_connection: AtomicU64::new(0),
            stats: Mutex::new(SimStats::default()),
            changed: Notify::new(),
            receivers: Mutex::new(Vec::new()),
            queued_receipts: Mutex::new(VecDeque::new()),
            printed: broadcast::channel(1 << 16).0,
            connections: Mutex::new(CancellationToken::new()),
        });
        let shutdown = CancellationToken::new();
        tokio::spawn(accept_loop(listener, state.clone(), shutdown.clone()));
        Ok(SmscSim { addr, state, shutdown })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> SimStats {
        lock(&self.state.stats).clone()
    }

    /// Reads the stats in place (a copy of a million submits is not cheap).
    pub fn with_stats<T>(&self, read: impl FnOnce(&SimStats) -> T) -> T {
        read(&lock(&self.state.stats))
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.state.behaviour.store(behaviour as u8, Ordering::SeqCst);
    }

    /// Answers every following submit_sm with `status` (ESME_RTHROTTLED, ESME_RSYSERR ...), or
    /// normally again with `None`.
    pub fn set_submit_status(&self, status: Option<CommandStatus>) {
        let code = status.map_or(0, u32::from);
        self.state.submit_status.store(code, Ordering::SeqCst);
    }

    /// Answers only every `n`-th submit_sm with the status set by [`SmscSim::set_submit_status`]
    /// (the others normally); 0 or 1 means all of them.
    pub fn set_status_every(&self, n: u64) {
        self.state.status_every.store(n, Ordering::SeqCst);
    }

    /// Throttles (ESME_RTHROTTLED) submits beyond `tps` per second; 0 turns it off.
    pub fn set_max_tps(&self, tps: u64) {
        *lock(&self.state.tps_bucket) = (tps as f64, Instant::now());
        self.state.max_tps.store(tps, Ordering::SeqCst);
    }

    /// Closes the connection, unanswered, on every `n`-th submit_sm (0 turns it off).
    pub fn set_drop_every(&self, n: u64) {
        self.state.drop_every.store(n, Ordering::SeqCst);
    }

    /// The number the next message id is made of (ids are its hex form), e.g. to make two
    /// messages' ids collide across bases.
    pub fn set_next_message_id(&self, number: u64) {
        self.state.next_message_id.store(number, Ordering::SeqCst);
    }

    /// Sends each receipt twice (as SMSCs do after a lost deliver_sm_resp).
    pub fn set_duplicate_receipts(&self, on: bool) {
        self.state.duplicate_receipts.store(on, Ordering::SeqCst);
    }

    /// Accepts each submit but answers it with a submit_sm_resp no decoder can read (a
    /// message_id of control bytes, longer than SMPP allows).
    pub fn set_garbled_responses(&self, on: bool) {
        self.state.garbled_responses.store(on, Ordering::SeqCst);
    }

    /// Every accepted submit, as it arrives (for printing).
    pub fn subscribe(&self) -> broadcast::Receiver<ReceivedSms> {
        self.state.printed.subscribe()
    }

    /// Waits until `condition` holds for the stats, or `limit` passes; returns whether it held.
    pub async fn wait_until(&self, limit: Duration, condition: impl Fn(&SimStats) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.state.changed.notified();
            if condition(&lock(&self.state.stats)) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return condition(&lock(&self.state.stats));
            }
        }
    }

    /// Closes every current connection without unbind, as a crashing SMSC or a cut cable would.
    pub fn drop_connections(&self) {
        let old = std::mem::take(&mut *lock(&self.state.connections));
        old.cancel();
    }

    /// Sends a deliver_sm (e.g. a receipt) to a bound receiver, or keeps it until one binds.
    pub fn deliver(&self, pdu: DeliverSm) {
        self.state.deliver(Pdu::DeliverSm(pdu));
    }

    /// Writes raw bytes to every bound receiver connection (malformed-PDU tests). Returns how many
    /// connections got them.
    pub fn send_raw(&self, bytes: &[u8]) -> usize {
        let receivers = lock(&self.state.receivers);
        receivers.iter().filter(|r| r.outgoing.send(Outgoing::Raw(Bytes::copy_from_slice(bytes))).is_ok()).count()
    }
}

impl State {
    fn behaviour(&self) -> Behaviour {
        match self.behaviour.load(Ordering::SeqCst) {
            1 => Behaviour::Hang,
            2 => Behaviour::RefuseBinds,
            _ => Behaviour::Normal,
        }
    }

    fn update(&self, f: impl FnOnce(&mut SimStats)) {
        f(&mut lock(&self.stats));
        self.changed.notify_waiters();
    }

    fn deliver(&self, pdu: Pdu) {
        let receivers = lock(&self.receivers);
        let sent = receivers.iter().any(|r| r.outgoing.send(Outgoing::Request(pdu.clone())).is_ok());
        if !sent {
            lock(&self.queued_receipts).push_back(pdu);
        }
    }

    fn add_receiver(&self, connection: u64, outgoing: mpsc::UnboundedSender<Outgoing>) {
        let queued: Vec<Pdu> = lock(&self.queued_receipts).drain(..).collect();
        for pdu in queued {
            let _ = outgoing.send(Outgoing::Request(pdu));
        }
        lock(&self.receivers).push(Receiver { connection, outgoing });
    }

    fn remove_receiver(&self, connection: u64) {
        lock(&self.receivers).retain(|r| r.connection != connection);
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let token = lock(&state.connections).child_token();
                tokio::spawn(Connection::serve(stream, state.clone(), token));
            }
            Err(e) => {
                tracing::warn!(error = %e, "smsc-sim accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

struct Connection {
    id: u64,
    state: Arc<State>,
    bound: Option<&'static str>,
    next_sequence: AtomicU32,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    /// deliver_sm sent and not yet answered, by sequence number.
    unanswered: std::collections::HashMap<u32, Pdu>,
}

enum Event {
    Incoming(Option<Result<Command, rusmpp::tokio_codec::DecodeError>>),
    Outgoing(Outgoing),
    Stop,
}

impl Connection {
    async fn serve(stream: TcpStream, state: Arc<State>, token: CancellationToken) {
        let id = state.next_connection.fetch_add(1, Ordering::Relaxed);
        state.update(|s| s.connections += 1);
        let (outgoing, mut outgoing_rx) = mpsc::unbounded_channel();
        let mut connection = Connection {
            id,
            state: state.clone(),
            bound: None,
            next_sequence: AtomicU32::new(1),
            outgoing,
            unanswered: std::collections::HashMap::new(),
        };
        let mut framed = Framed::new(stream, CommandCodec::new().with_max_length(64 * 1024));
        loop {
            let event = tokio::select! {
                _ = token.cancelled() => Event::Stop,
                item = framed.next() => Event::Incoming(item),
                Some(out) = outgoing_rx.recv() => Event::Outgoing(out),
            };
            let keep_going = match event {
                Event::Stop | Event::Incoming(None) => false,
                Event::Incoming(Some(Err(e))) => {
                    tracing::warn!(error = %e, "smsc-sim: bad PDU from client");
                    false
                }
                Event::Incoming(Some(Ok(command))) => connection.handle(command),
                Event::Outgoing(out) => write(&mut framed, out, &connection.next_sequence, &mut connection.unanswered).await,
            };
            if !keep_going {
                break;
            }
        }
        // Flush whatever was answered last (unbind_resp).
        while let Ok(out) = outgoing_rx.try_recv() {
            if !write(&mut framed, out, &connection.next_sequence, &mut connection.unanswered).await {
                break;
            }
        }
        state.remove_receiver(id);
        // Receipts never answered are kept for the next bind, as a real SMSC keeps them.
        for (_, pdu) in connection.unanswered.drain() {
            state.deliver(pdu);
        }
    }

    /// Handles one PDU; returns false to close the connection.
    fn handle(&mut self, command: Command) -> bool {
        let behaviour = self.state.behaviour();
        if behaviour == Behaviour::Hang {
            if let Some(Pdu::SubmitSm(_)) = command.pdu() {
                self.state.update(|s| {
                    s.outstanding += 1;
                    s.max_outstanding = s.max_outstanding.max(s.outstanding);
                });
            }
            return true;
        }
        let sequence = command.sequence_number();
        let outgoing = self.outgoing.clone();
        let respond = |status: CommandStatus, pdu: Pdu| {
            let _ = outgoing.send(Outgoing::Response(Command::new(status, sequence, pdu)));
        };
        match command.pdu() {
            Some(Pdu::BindTransceiver(b)) => {
                let status = self.bind("transceiver", b.system_id.as_str(), b.password.as_str(), behaviour);
                respond(status, BindTransceiverResp::new(c_octet("otpgate-sim"), None).into());
            }
            Some(Pdu::BindTransmitter(b)) => {
                let status = self.bind("transmitter", b.system_id.as_str(), b.password.as_str(), behaviour);
                respond(status, BindTransmitterResp::new(c_octet("otpgate-sim"), None).into());
            }
            Some(Pdu::BindReceiver(b)) => {
                let status = self.bind("receiver", b.system_id.as_str(), b.password.as_str(), behaviour);
                respond(status, BindReceiverResp::new(c_octet("otpgate-sim"), None).into());
            }
            Some(Pdu::SubmitSm(sm)) => match self.bound {
                Some("transmitter" | "transceiver") => {
                    let seen = self.state.submits_seen.fetch_add(1, Ordering::SeqCst) + 1;
                    let drop_every = self.state.drop_every.load(Ordering::SeqCst);
                    if drop_every > 0 && seen % drop_every == 0 {
                        self.state.update(|s| s.dropped += 1);
                        return false;
                    }
                    self.submit(seen, sequence, sm);
                }
                _ => respond(CommandStatus::EsmeRinvbndsts, Pdu::GenericNack),
            },
            Some(Pdu::EnquireLink) => {
                self.state.update(|s| s.enquire_links += 1);
                respond(CommandStatus::EsmeRok, Pdu::EnquireLinkResp);
            }
            Some(Pdu::Unbind) => {
                self.state.update(|s| s.unbinds += 1);
                respond(CommandStatus::EsmeRok, Pdu::UnbindResp);
                return false;
            }
            Some(Pdu::DeliverSmResp(_)) => self.receipt_answered(sequence, command.status()),
            Some(Pdu::GenericNack) => self.state.update(|s| s.generic_nacks += 1),
            Some(Pdu::EnquireLinkResp | Pdu::UnbindResp) => {}
            _ => respond(CommandStatus::EsmeRinvcmdid, Pdu::GenericNack),
        }
        true
    }

    fn receipt_answered(&mut self, sequence: u32, status: CommandStatus) {
        let Some(pdu) = self.unanswered.remove(&sequence) else {
            self.state.update(|s| s.deliver_sm_resps += 1);
            return;
        };
        if status == CommandStatus::EsmeRok {
            let id = receipted_id(&pdu);
            self.state.update(|s| {
                s.deliver_sm_resps += 1;
                s.acked_receipts.extend(id);
            });
            return;
        }
        self.state.update(|s| {
            s.deliver_sm_resps += 1;
            s.receipts_refused += 1;
        });
        let state = self.state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            state.deliver(pdu);
        });
    }

    fn bind(&mut self, mode: &'static str, system_id: &str, password: &str, behaviour: Behaviour) -> CommandStatus {
        let config = &self.state.config;
        let status = if self.bound.is_some() {
            CommandStatus::EsmeRalybnd
        } else if behaviour == Behaviour::RefuseBinds {
            CommandStatus::EsmeRbindfail
        } else if config.system_id.as_deref().is_some_and(|id| id != system_id) {
            CommandStatus::EsmeRinvsysid
        } else if config.password.as_deref().is_some_and(|p| p != password) {
            CommandStatus::EsmeRinvpaswd
        } else {
            CommandStatus::EsmeRok
        };
        let accepted = status == CommandStatus::EsmeRok;
        if accepted {
            self.bound = Some(mode);
            if mode != "transmitter" {
                self.state.add_receiver(self.id, self.outgoing.clone());
            }
        }
        let attempt = BindAttempt { at: Instant::now(), system_id: system_id.to_string(), mode, accepted };
        self.state.update(|s| s.binds.push(attempt));
        status
    }

    fn over_rate(&self) -> bool {
        let tps = self.state.max_tps.load(Ordering::SeqCst);
        if tps == 0 {
            return false;
        }
        let mut bucket = lock(&self.state.tps_bucket);
        let now = Instant::now();
        let refilled = (bucket.0 + now.duration_since(bucket.1).as_secs_f64() * tps as f64).min(tps as f64);
        *bucket = if refilled >= 1.0 { (refilled - 1.0, now) } else { (refilled, now) };
        refilled < 1.0
    }

    fn submit(&self, seen: u64, sequence: u32, sm: &SubmitSm) {
        let mut forced = self.state.submit_status.load(Ordering::SeqCst);
        let every = self.state.status_every.load(Ordering::SeqCst).max(1);
        // Message-type bits (§5.2.12) have no place in a submit_sm: a strict SMSC refuses it.
        if u8::from(sm.esm_class) & 0x3C != 0 {
            forced = u32::from(CommandStatus::EsmeRinvesmclass);
        } else if self.over_rate() {
            forced = u32::from(CommandStatus::EsmeRthrottled);
        } else if seen % every != 0 {
            forced = 0;
        }
        if forced != 0 {
            self.state.update(|s| s.refused += 1);
            let response = Command::new(CommandStatus::from(forced), sequence, SubmitSmResp::default());
            let _ = self.outgoing.send(Outgoing::Response(response));
            return;
        }
        let number = match self.state.config.random_ids {
            true => rand::random::<u64>() >> 1,
            false => self.state.next_message_id.fetch_add(1, Ordering::Relaxed),
        };
        // Hex in submit_sm_resp and the receipt TLV, decimal in the receipt text: the mismatch
        // real carriers produce, so matching is always exercised.
        let message_id = format!("{number:X}");
        let received = ReceivedSms {
            at: Instant::now(),
            carrier: self.state.config.name.clone(),
            message_id: message_id.clone(),
            from: sm.source_addr.as_str().to_string(),
            to: sm.destination_addr.as_str().to_string(),
            text: text::decode(u8::from(sm.data_coding), sm.short_message()),
            data_coding: u8::from(sm.data_coding),
            esm_class: u8::from(sm.esm_class),
            validity_period: sm.validity_period.as_str().to_string(),
        };
        let _ = self.state.printed.send(received.clone());
        self.state.update(|s| {
            s.outstanding += 1;
            s.max_outstanding = s.max_outstanding.max(s.outstanding);
            s.submits.push(received);
        });
        let wants_receipt = u8::from(sm.registered_delivery) & 0x03 != 0;
        let state = self.state.clone();
        let outgoing = self.outgoing.clone();
        if self.state.garbled_responses.load(Ordering::SeqCst) {
            let mut raw = Vec::with_capacity(87);
            raw.extend_from_slice(&87u32.to_be_bytes());
            raw.extend_from_slice(&0x8000_0004u32.to_be_bytes());
            raw.extend_from_slice(&0u32.to_be_bytes());
            raw.extend_from_slice(&sequence.to_be_bytes());
            raw.extend_from_slice(&[0x01; 70]);
            raw.push(0);
            let _ = self.outgoing.send(Outgoing::Raw(Bytes::from(raw)));
            return;
        }
        let response = Command::new(CommandStatus::EsmeRok, sequence, SubmitSmResp::new(c_octet(&message_id), Vec::new()));
        let receipt = (wants_receipt && state.config.receipts).then(|| receipt(&message_id, number, sm, state.config.receipt_stat));
        tokio::spawn(async move {
            let receipt_first = state.config.receipt_first;
            if receipt_first {
                if let Some(receipt) = receipt.clone() {
                    state.deliver(receipt);
                }
            }
            if !state.config.response_delay.is_zero() {
                tokio::time::sleep(state.config.response_delay).await;
            }
            state.update(|s| s.outstanding = s.outstanding.saturating_sub(1));
            let _ = outgoing.send(Outgoing::Response(response));
            if let (false, Some(receipt)) = (receipt_first, receipt) {
                tokio::time::sleep(state.config.receipt_delay).await;
                if state.duplicate_receipts.load(Ordering::SeqCst) {
                    state.deliver(receipt.clone());
                }
                state.deliver(receipt);
            }
        });
    }
}

/// A receipt in the common real-world shape: TLVs plus Appendix B text.
fn receipt(message_id: &str, number: u64, sm: &SubmitSm, stat: &str) -> Pdu {
    let (state, delivered, err) = match stat {
        "UNDELIV" => (MessageState::Undeliverable, 0, "001"),
        "REJECTD" => (MessageState::Rejected, 0, "002"),
        "EXPIRED" => (MessageState::Expired, 0, "003"),
        _ => (MessageState::Delivered, 1, "000"),
    };
    let text =
        format!("id:{number:010} sub:001 dlvrd:{delivered:03} submit date:2601010000 done date:2601010000 stat:{stat} err:{err} text:");
    let mut pdu = DeliverSm::builder()
        .source_addr_ton(sm.dest_addr_ton)
        .source_addr_npi(sm.dest_addr_npi)
        .source_addr(sm.destination_addr.clone())
        .dest_addr_ton(sm.source_addr_ton)
        .dest_addr_npi(sm.source_addr_npi)
        .destination_addr(sm.source_addr.clone())
        .esm_class(EsmClass::from(0x04))
        .short_message(OctetString::from_vec(text.into_bytes()).unwrap_or_default())
        .build();
    pdu.push_tlv(MessageDeliveryRequestTlvValue::ReceiptedMessageId(c_octet(message_id)));
    pdu.push_tlv(MessageDeliveryRequestTlvValue::MessageState(state));
    Pdu::DeliverSm(pdu)
}

/// The receipted_message_id of a receipt we sent.
fn receipted_id(pdu: &Pdu) -> Option<String> {
    let Pdu::DeliverSm(sm) = pdu else { return None };
    crate::smpp::receipt::ReceiptFields::from(sm).receipted_message_id
}

async fn write(
    framed: &mut Framed<TcpStream, CommandCodec>,
    out: Outgoing,
    sequence: &AtomicU32,
    unanswered: &mut std::collections::HashMap<u32, Pdu>,
) -> bool {
    let result = match out {
        Outgoing::Response(command) => framed.send(command).await.map_err(|e| e.to_string()),
        Outgoing::Request(pdu) => {
            let number = sequence.fetch_add(1, Ordering::Relaxed);
            if matches!(pdu, Pdu::DeliverSm(_)) {
                unanswered.insert(number, pdu.clone());
            }
            framed.send(Command::new(CommandStatus::EsmeRok, number, pdu)).await.map_err(|e| e.to_string())
        }
        Outgoing::Raw(bytes) => {
            let stream = framed.get_mut();
            async {
                stream.write_all(&bytes).await?;
                stream.flush().await
            }
            .await
            .map_err(|e| e.to_string())
        }
    };
    result.is_ok()
}
