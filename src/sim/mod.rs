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
mod connection;
pub mod fuzz;
mod parts;

pub use parts::{JoinedSms, PartOf};

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusmpp::pdus::DeliverSm;
use rusmpp::{Command, CommandStatus, Pdu};
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

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
    /// Serve SMPP over TLS (and, when it was built with a client CA, require client certificates).
    pub tls: Option<crate::tls::ServerTls>,
    /// Read GSM 03.38 (data_coding 0) packed, eight septets to seven octets.
    pub gsm7_packed: bool,
    /// Refuse a submit_sm without each of these vendor TLVs with this command_status, as an
    /// SMSC enforcing India's DLT does (a vendor status: a permanent refusal).
    pub require_tlvs: Option<(Vec<u16>, u32)>,
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
            tls: None,
            gsm7_packed: false,
            require_tlvs: None,
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
    /// The system_id of the session it came over.
    pub system_id: String,
    pub message_id: String,
    pub from: String,
    pub to: String,
    pub text: String,
    pub data_coding: u8,
    pub esm_class: u8,
    pub validity_period: String,
    /// Which part of a long message it is.
    pub part: Option<PartOf>,
    /// Vendor TLVs (tags 0x1400-0x3FFF) it carried: tag and value.
    pub vendor_tlvs: Vec<(u16, Vec<u8>)>,
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
    /// TLS handshakes that failed (no client certificate, one we do not trust, not TLS...).
    pub tls_failures: u64,
    /// The TLS version the last TLS client negotiated ("TLSv1_3").
    pub tls_protocol: Option<String>,
    /// Long messages joined from their parts.
    pub joined: Vec<JoinedSms>,
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
    /// Parts of long messages waiting for the rest.
    joiner: Mutex<parts::Joiner>,
    /// Answer part n of every long message with this status.
    fail_part: Mutex<Option<(u8, CommandStatus)>>,
    /// Hold the answers (and receipts) to a long message's parts until its last part is in,
    /// then send them last part first.
    reverse_parts: std::sync::atomic::AtomicBool,
    held_parts: Mutex<std::collections::HashMap<(String, u16), HeldAnswers>>,
}

/// Answers held for a long message's parts: each submit_sm_resp with its receipt.
type HeldAnswers = Vec<(Command, Option<Pdu>)>;

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
            joiner: Mutex::default(),
            fail_part: Mutex::new(None),
            reverse_parts: std::sync::atomic::AtomicBool::new(false),
            held_parts: Mutex::default(),
        });
        let shutdown = CancellationToken::new();
        tokio::spawn(connection::accept_loop(listener, state.clone(), shutdown.clone()));
        Ok(SmscSim { addr, state, shutdown })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn serves_tls(&self) -> bool {
        self.state.config.tls.is_some()
    }

    pub fn config(&self) -> &SimConfig {
        &self.state.config
    }

    /// The TLS version the last TLS client negotiated.
    pub fn tls_protocol(&self) -> Option<String> {
        self.with_stats(|s| s.tls_protocol.clone())
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

    /// Answers part `seq` of every long message with `status` (or none again with `None`).
    pub fn set_fail_part(&self, part: Option<(u8, CommandStatus)>) {
        *lock(&self.state.fail_part) = part;
    }

    /// Holds the answers and receipts of a long message's parts until its last part is in, then
    /// sends them in reverse order.
    pub fn set_reverse_parts(&self, on: bool) {
        self.state.reverse_parts.store(on, Ordering::SeqCst);
    }

    /// Every accepted submit (a long message once, when all its parts are in), as it arrives
    /// (for printing).
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
