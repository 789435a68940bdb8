//! The message store: sled 0.34 on disk, behind an API that knows nothing of sled's types.
//!
//! One tree, with a one-byte prefix per kind of row:
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `m` | message id | the [`MessageRecord`] (JSON) |
//! | `q` | message id | the message waits for a submit: empty, or [`IN_FLIGHT`] while one is under way |
//! | `r` | carrier, NUL, canonical SMSC id | message id: receipt correlation |
//! | `e` | carrier, NUL, id candidate, NUL, sequence | an early receipt waiting for its submit_sm_resp |
//! | `k` | SHA-256 of (owner, NUL, Idempotency-Key) | the first answer's body hash and message id |
//! | `d` | done time (ms, BE), message id | empty: finished messages, oldest first, for the sweep |
//! | `c` | (none) | the queue depth, written by a clean close and consumed by the next open |
//!
//! Durability: [`Store::insert_message`] returns only after a group commit covered it, so an
//! HTTP 2xx means "on disk". Later transitions (submitted, delivered) are flushed by the same
//! flusher or sled's own 500 ms timer; losing one in a crash only means the message is sent
//! again (at-least-once), never lost.
//!
//! Ordered writes, not batches, on the message path: sled 0.34's `apply_batch` seals and writes
//! its log buffer before and after every batch (`pin_log`), one `pwrite` + `sync_file_range`
//! each; with three batches per message that was six disk writes per message and the largest
//! cost of the whole daemon. sled recovers its log as a prefix in write order, so rows written
//! one after another survive a crash as a prefix of that order. Each change is therefore
//! written as [`Change`]: new index rows first, then the record, then removals; every prefix of
//! that is a state the readers tolerate (a queue row whose record is missing or no longer
//! queued is dropped by recovery; a done row whose record is not final is skipped by the sweep;
//! an index row pointing at a message that never got its record is never reached). An intake
//! writes its Idempotency-Key row last, so a replayed key always finds its message.
//! Verifications keep sled's atomic batches: their rows guard codes, and they are fewer.

mod commit;
pub mod record;
pub mod verification;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub use commit::FlushError;
use commit::GroupCommit;
pub use record::{Attempt, MessageId, MessageRecord, MessageStatus, ReceiptSummary};

use crate::smpp::Receipt;
use crate::smpp::receipt::{IdReading, canonical_id};

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data_dir {path} is in use by another otpgate process (its lock is held)")]
    Locked { path: String },
    #[error("cannot open the store in {path}: {message}")]
    Open { path: String, message: String },
    #[error("store I/O error: {0}")]
    Io(String),
    #[error(transparent)]
    Flush(#[from] FlushError),
    #[error("stored record {0} is corrupt")]
    Corrupt(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled's page cache; its default of 1 GiB is more than most hosts want to give.
    pub cache_capacity_bytes: u64,
    /// Receipts held for a submit_sm_resp still to come, at most; more are dropped and counted.
    pub max_held_receipts: usize,
    /// How long a held receipt waits for its submit before it is dropped as unmatched.
    pub hold_receipts_for: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { cache_capacity_bytes: 4 << 20, max_held_receipts: 10_000, hold_receipts_for: Duration::from_secs(600) }
    }
}

/// A message about to be taken in.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub owner: String,
    pub to: String,
    pub from: Option<String>,
    pub text: String,
    pub deadline: SystemTime,
}

/// What an Idempotency-Key lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idempotency {
    /// Not seen: go ahead.
    New,
    /// Seen with the same body: answer as the first time (the id, and the stored answer when
    /// one was kept).
    Replay(MessageId, Option<String>),
    /// Seen with another body.
    Conflict,
}

#[derive(Serialize, Deserialize)]
struct IdempotencyEntry {
    body_sha256: String,
    id: String,
    created_ms: u64,
    #[serde(default)]
    response: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct EarlyReceipt {
    candidates: Vec<String>,
    summary: ReceiptSummary,
    final_status: Option<MessageStatus>,
}

/// What applying a receipt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptMatch {
    /// Matched a message; its status now. `finished`: this receipt made it final. `reading`:
    /// the one reading under which the receipt's text id matched, when only one did (what
    /// `receipt_id = "auto"` learns from).
    Matched { id: MessageId, status: MessageStatus, latency: Option<Duration>, finished: bool, reading: Option<IdReading> },
    /// The message already had a final receipt: counted, not applied.
    Late { id: MessageId },
    /// Its id names different messages under different readings: not applied (no guessing).
    Ambiguous,
    /// No message yet: kept until its submit_sm_resp is recorded (or the sweep gives up on it).
    Held,
    /// No message, and [`StoreOptions::max_held_receipts`] are held already: not kept.
    Dropped,
}

/// How long an Idempotency-Key is remembered.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The open store. Cheap to share behind an `Arc`.
pub struct Store {
    db: sled::Db,
    commit: Arc<GroupCommit>,
    /// Serialises read-modify-write of records and receipt correlation (sled has no row locks).
    writes: Mutex<()>,
    stop: CancellationToken,
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Messages with a queue row, kept in step with it (counted once at open).
    queued: std::sync::atomic::AtomicI64,
    /// The order part of the last id handed out (microseconds since the epoch).
    last_id: std::sync::atomic::AtomicU64,
    /// Receipts held for their submit_sm_resp (counted once at open).
    held: std::sync::atomic::AtomicUsize,
    max_held: usize,
    hold_for: Duration,
    /// An intake write failed (disk full, I/O error). sled 0.34 keeps failing after its first
    /// I/O error even once space returns, so this never clears: the process must restart.
    broken: std::sync::atomic::AtomicBool,
}

/// Makes `path` readable by its owner only: directories 0700 (recursively), files 0600. The
/// store holds phone numbers and message texts.
fn private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(path)? {
            private(&entry?.path())?;
        }
    } else if meta.is_file() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len() + 1).sum::<usize>());
    k.push(prefix);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(part);
    }
    k
}

fn message_key(id: &MessageId) -> Vec<u8> {
    key(b'm', &[&id.0])
}

fn queue_key(id: &MessageId) -> Vec<u8> {
    key(b'q', &[&id.0])
}

/// How many times (50 ms apart) opening waits for a data_dir lock that is being released.
const LOCK_WAITS: u32 = 20;

/// A queue row's value while a submit of its message is under way (its result not recorded
/// yet): seen at startup, the previous process died mid-submit and the SMSC may have the message.
const IN_FLIGHT: &[u8] = &[1];

/// A row of a "finished at" index (`d` messages, `w` verifications): prefix, done time (ms,
/// big-endian so rows sort oldest first), id.
fn done_key(prefix: u8, done_ms: u64, id: &MessageId) -> Vec<u8> {
    let mut k = vec![prefix];
    k.extend_from_slice(&done_ms.to_be_bytes());
    k.extend_from_slice(&id.0);
    k
}

/// The message index of finished messages.
const DONE: u8 = b'd';

/// The queue depth at the last clean close (module doc).
const CLEAN_CLOSE: &[u8] = b"c";

fn id_from(bytes: &[u8]) -> Option<MessageId> {
    <[u8; 16]>::try_from(bytes).ok().map(MessageId)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One record's change as ordered writes (see the module doc): `add` rows are written before
/// the record, `remove` rows after it.
#[derive(Default)]
struct Change {
    adds: Vec<(Vec<u8>, Vec<u8>)>,
    removes: Vec<Vec<u8>>,
}

impl Change {
    fn add(&mut self, k: Vec<u8>, v: impl Into<Vec<u8>>) {
        self.adds.push((k, v.into()));
    }

    fn remove(&mut self, k: Vec<u8>) {
        self.removes.push(k);
    }
}

impl Store {
    /// Writes `change` around the record row `record_key` = `record` in the safe order.
    fn apply(&self, change: Change, record_key: Vec<u8>, record: Vec<u8>) -> Result<(), StoreError> {
        for (k, v) in change.adds {
            self.db.insert(k, v)?;
        }
        self.db.insert(record_key, record)?;
        for k in change.removes {
            self.db.remove(k)?;
        }
        Ok(())
    }

    /// Opens (or creates) the store in `dir` and starts its flusher.
    pub fn open(dir: &Path, options: &StoreOptions) -> Result<Arc<Store>, StoreError> {
        let path = dir.display().to_string();
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open { path: path.clone(), message: e.to_string() })?;
        private(dir).map_err(|e| StoreError::Open { path: path.clone(), message: format!("cannot make it private (0700): {e}") })?;
        // A store closed a moment ago (a restart in the same process) may still hold its file
        // lock while sled's own threads wind down: wait a little before calling it taken.
        let mut lock_waits = 0;
        let db = loop {
            match sled::Config::new().path(dir.join("db")).cache_capacity(options.cache_capacity_bytes).open() {
                Ok(db) => break db,
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    if lock_waits == LOCK_WAITS {
                        return Err(StoreError::Locked { path });
                    }
                    lock_waits += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(StoreError::Open { path, message: e.to_string() }),
            }
        };
        // sled's own files, including those an earlier version created with the umask's modes.
        private(&dir.join("db"))
            .map_err(|e| StoreError::Open { path: path.clone(), message: format!("cannot make its files private (0600): {e}") })?;
        let store = Arc::new(Store {
            db,
            commit: GroupCommit::new(),
            writes: Mutex::new(()),
            stop: CancellationToken::new(),
            flusher: Mutex::new(None),
            queued: std::sync::atomic::AtomicI64::new(0),
            held: std::sync::atomic::AtomicUsize::new(0),
            last_id: std::sync::atomic::AtomicU64::new(0),
            max_held: options.max_held_receipts,
            hold_for: options.hold_receipts_for,
            broken: std::sync::atomic::AtomicBool::new(false),
        });
        // After a clean close the depth is on record; after a crash, count the queue. Counting
        // walks every queue row through sled's cache, which at a million queued messages costs
        // ~150 MB of resident memory for a while. The row goes at once: if this process
        // crashes, the next open must count (sled replays this removal before any later write).
        let queued = match store.db.remove(CLEAN_CLOSE)? {
            Some(depth) if depth.len() == 8 => u64::from_be_bytes(depth.as_ref().try_into().unwrap_or_default()) as i64,
            _ => store.db.scan_prefix([b'q']).count() as i64,
        };
        store.queued.store(queued, std::sync::atomic::Ordering::Relaxed);
        let held = store.db.scan_prefix([b'e']).filter_map(Result::ok).filter(|(k, v)| is_first_row(k, v)).count();
        store.held.store(held, std::sync::atomic::Ordering::Relaxed);
        let db = store.db.clone();
        let flush = move || db.flush().map(|_| ()).map_err(|e| e.to_string());
        let flusher = tokio::spawn(store.commit.clone().run(flush, store.stop.clone()));
        *lock(&store.flusher) = Some(flusher);
        Ok(store)
    }

    /// Flushes everything and stops the flusher (which holds a handle on the database: once it
    /// has finished and the last `Arc<Store>` is dropped, the data_dir lock is released).
    pub async fn close(&self) -> Result<(), StoreError> {
        if self.healthy() {
            let depth = self.queued.load(std::sync::atomic::Ordering::Relaxed).max(0) as u64;
            self.db.insert(CLEAN_CLOSE, &depth.to_be_bytes())?;
        }
        let result = self.commit.durable().await;
        self.stop.cancel();
        let flusher = lock(&self.flusher).take();
        if let Some(flusher) = flusher {
            let _ = flusher.await;
        }
        Ok(result?)
    }

    /// Reads and decodes one JSON row; `what` names it in the error if it does not decode.
    fn read<T: for<'de> Deserialize<'de>>(&self, k: &[u8], what: impl FnOnce() -> String) -> Result<Option<T>, StoreError> {
        match self.db.get(k)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|_| StoreError::Corrupt(what())),
        }
    }

    fn get_record(&self, id: &MessageId) -> Result<Option<MessageRecord>, StoreError> {
        self.read(&message_key(id), || format!("message {id}"))
    }

    pub fn message(&self, id: &MessageId) -> Result<Option<MessageRecord>, StoreError> {
        self.get_record(id)
    }

    fn idempotency_key(owner: &str, key: &str) -> Vec<u8> {
        let digest = Sha256::new().chain_update(owner.as_bytes()).chain_update([0]).chain_update(key.as_bytes()).finalize();
        let mut k = vec![b'k'];
        k.extend_from_slice(&digest);
        k
    }

    /// Looks up an Idempotency-Key of `owner`; `body_sha256` identifies the request body.
    pub fn check_idempotency(&self, owner: &str, key: &str, body_sha256: &str, now: SystemTime) -> Result<Idempotency, StoreError> {
        let Some(bytes) = self.db.get(Self::idempotency_key(owner, key))? else {
            return Ok(Idempotency::New);
        };
        let entry: IdempotencyEntry = serde_json::from_slice(&bytes).map_err(|_| StoreError::Corrupt("idempotency".into()))?;
        let expired = record::from_ms(entry.created_ms) + IDEMPOTENCY_WINDOW < now;
        if expired {
            return Ok(Idempotency::New);
        }
        if entry.body_sha256 != body_sha256 {
            return Ok(Idempotency::Conflict);
        }
        let id = entry.id.parse().map_err(|_| StoreError::Corrupt("idempotency".into()))?;
        Ok(Idempotency::Replay(id, entry.response))
    }

    /// Whether the store can still write. False after an I/O failure (a full disk): answer 503,
    /// report unready and stop feeding the systemd watchdog, so the service is restarted, which
    /// reopens the store once space is back.
    pub fn healthy(&self) -> bool {
        !self.broken.load(std::sync::atomic::Ordering::Relaxed) && !self.commit.failing()
    }

    fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Io(_) | StoreError::Flush(_)) = &result {
            self.broken.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// Takes a message in: record, queue entry and (optionally) idempotency entry, written in
    /// that order, then waits for the group commit. When this returns `Ok`, the message is on
    /// disk.
    pub async fn insert_message(
        &self,
        message: NewMessage,
        idempotency: Option<(&str, &str)>,
        now: SystemTime,
    ) -> Result<(MessageId, MessageRecord), StoreError> {
        let result = self.insert_message_unchecked(message, idempotency, now).await;
        self.note(result)
    }

    async fn insert_message_unchecked(
        &self,
        message: NewMessage,
        idempotency: Option<(&str, &str)>,
        now: SystemTime,
    ) -> Result<(MessageId, MessageRecord), StoreError> {
        let id = self.new_id();
        let record = MessageRecord::queued(message, record::to_ms(now), None);
        // Record, queue row, then the key that replays it: in this order (module doc).
        self.db.insert(message_key(&id), encode(&record))?;
        self.db.insert(queue_key(&id), &[][..])?;
        self.queue_changed(1);
        if let Some((key, body_sha256)) = idempotency {
            let entry = IdempotencyEntry {
                body_sha256: body_sha256.to_string(),
                id: id.to_string(),
                created_ms: record.created_ms,
                response: None,
            };
            self.db.insert(Self::idempotency_key(&record.owner, key), encode(&entry))?;
        }
        self.commit.durable().await?;
        Ok((id, record))
    }

    /// Waits until every row written before this call is on disk: one group commit shared with
    /// every other writer waiting.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let result = self.commit.durable().await.map_err(StoreError::from);
        self.note(result)
    }

    /// Takes in a message under a given id for a verification (receipt failover), durably.
    pub async fn insert_otp_message(
        &self,
        id: MessageId,
        message: NewMessage,
        verification: &MessageId,
        now: SystemTime,
    ) -> Result<MessageRecord, StoreError> {
        let record = MessageRecord::queued(message, record::to_ms(now), Some(verification.to_string()));
        self.db.insert(message_key(&id), encode(&record))?;
        self.db.insert(queue_key(&id), &[][..])?;
        self.queue_changed(1);
        self.commit.durable().await?;
        Ok(record)
    }

    /// A new id for a message or verification: time-ordered (the microsecond now, or one past
    /// the last id when two come in the same microsecond), never a count.
    pub fn new_id(&self) -> MessageId {
        let now = record::to_us(SystemTime::now());
        let previous = self
            .last_id
            .fetch_update(std::sync::atomic::Ordering::AcqRel, std::sync::atomic::Ordering::Acquire, |last| Some(now.max(last + 1)));
        let last = previous.unwrap_or_else(|last| last);
        MessageId::new(now.max(last + 1))
    }

    fn held_changed(&self, by: isize) {
        let _ = self.held.fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, |n| {
            Some(n.saturating_add_signed(by))
        });
    }

    /// Receipts held now for a submit_sm_resp still to come.
    pub fn held_receipts(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn queue_changed(&self, by: i64) {
        self.queued.fetch_add(by, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many messages wait to be submitted, and how long the oldest has waited.
    pub fn queue_stats(&self, now: SystemTime) -> (u64, Duration) {
        let depth = self.queued.load(std::sync::atomic::Ordering::Relaxed).max(0) as u64;
        let oldest = self
            .db
            .scan_prefix([b'q'])
            .next()
            .and_then(Result::ok)
            .and_then(|(k, _)| id_from(&k[1..]))
            .and_then(|id| self.get_record(&id).ok().flatten())
            .map(|r| now.duration_since(record::from_ms(r.created_ms)).unwrap_or_default())
            .unwrap_or_default();
        (depth, oldest)
    }

    /// Every message waiting to be sent, oldest first (tests; recovery pages with
    /// [`Store::queued_page`]).
    pub fn queued(&self) -> Result<Vec<(MessageId, MessageRecord)>, StoreError> {
        let mut out = Vec::new();
        let Some(last) = self.last_queued()? else { return Ok(out) };
        let mut after = None;
        loop {
            let page = self.queued_page(after.as_ref(), &last, 1024)?;
            let Some((id, _)) = page.last() else { return Ok(out) };
            after = Some(*id);
            out.extend(page);
        }
    }

    /// Up to `limit` of the oldest queued messages, read only (no recovery bookkeeping).
    pub fn oldest_queued(&self, limit: usize) -> Result<Vec<(MessageId, MessageRecord)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.db.scan_prefix([b'q']).take(limit) {
            let (k, _) = entry?;
            let Some(id) = id_from(&k[1..]) else { continue };
            if let Some(record) = self.get_record(&id)?.filter(|r| r.status == MessageStatus::Queued) {
                out.push((id, record));
            }
        }
        Ok(out)
    }

    /// The newest queued message now: recovery stops there, so messages taken in while it runs
    /// are not queued twice.
    pub fn last_queued(&self) -> Result<Option<MessageId>, StoreError> {
        match self.db.scan_prefix([b'q']).next_back() {
            Some(entry) => Ok(id_from(&entry?.0[1..])),
            None => Ok(None),
        }
    }

    /// Up to `limit` queued messages after `after` and up to `until`, oldest first; marks those
    /// that were mid-submit when the last process died (`in_flight`), for the resubmit count.
    pub fn queued_page(
        &self,
        after: Option<&MessageId>,
        until: &MessageId,
        limit: usize,
    ) -> Result<Vec<(MessageId, MessageRecord)>, StoreError> {
        let start = match after {
            Some(id) => {
                let mut k = queue_key(id);
                k.push(0);
                k
            }
            None => vec![b'q'],
        };
        let mut out = Vec::new();
        for entry in self.db.range(start..=queue_key(until)) {
            let (k, v) = entry?;
            let Some(id) = id_from(&k[1..]) else { continue };
            match self.get_record(&id)? {
                Some(mut record) if record.status == MessageStatus::Queued => {
                    record.in_flight = v.as_ref() == IN_FLIGHT;
                    if record.in_flight {
                        // The last process died mid-submit: counted once, on disk.
                        let _guard = lock(&self.writes);
                        record.unconfirmed += 1;
                        self.db.insert(message_key(&id), encode(&record))?;
                        self.db.insert(&k, &[][..])?;
                    }
                    out.push((id, record));
                }
                // Left by a change a crash cut short (module doc): the record moved on, or
                // never made it to disk (and was never acknowledged).
                _ => {
                    let _guard = lock(&self.writes);
                    if self.db.remove(&k)?.is_some() {
                        self.queue_changed(-1);
                    }
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Changes one record under the write lock. `change` returns false to leave it untouched.
    fn update(
        &self,
        id: &MessageId,
        change: impl FnOnce(&mut MessageRecord, &mut Change) -> bool,
    ) -> Result<Option<MessageRecord>, StoreError> {
        let _guard = lock(&self.writes);
        let Some(mut record) = self.get_record(id)? else {
            return Ok(None);
        };
        let mut rows = Change::default();
        if !change(&mut record, &mut rows) {
            return Ok(Some(record));
        }
        self.apply(rows, message_key(id), encode(&record))?;
        Ok(Some(record))
    }

    /// Notes that a submit is about to start (not flushed: it only feeds the resubmit count).
    pub fn mark_in_flight(&self, id: &MessageId) -> Result<(), StoreError> {
        // The queue row's value, not a record rewrite or a row of its own: this runs once per
        // submit, and the queue row goes anyway when the submit is recorded. Only a row that is
        // still there is marked (a message finished meanwhile is not queued again).
        let _ = self.db.compare_and_swap(queue_key(id), Some(&[][..]), Some(IN_FLIGHT))?;
        Ok(())
    }

    /// Takes the mark back when the submit never went out (no carrier had room in time).
    pub fn clear_in_flight(&self, id: &MessageId) -> Result<(), StoreError> {
        let _ = self.db.compare_and_swap(queue_key(id), Some(IN_FLIGHT), Some(&[][..]))?;
        Ok(())
    }

    /// Records a failed or deferred attempt; the message stays queued. `unconfirmed`: the
    /// submit went out and got no readable answer. Returns the unconfirmed submits so far.
    pub fn record_attempt(&self, id: &MessageId, attempt: Attempt, unconfirmed: bool) -> Result<u32, StoreError> {
        let record = self.update(id, |r, rows| {
            if r.status == MessageStatus::Queued {
                rows.add(queue_key(id), []);
            }
            r.unconfirmed += u32::from(unconfirmed);
            r.push_attempt(attempt);
            true
        })?;
        Ok(record.map_or(0, |r| r.unconfirmed))
    }

    /// Ends a message without a submit (expired, failed): leaves the queue.
    pub fn finish(
        &self,
        id: &MessageId,
        status: MessageStatus,
        error: Option<String>,
        attempt: Option<Attempt>,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let done = record::to_ms(now);
        self.update(id, |r, rows| {
            if r.status.is_final() {
                return false;
            }
            if r.status == MessageStatus::Queued {
                self.queue_changed(-1);
            }
            r.status = status;
            r.error = error;
            r.done_ms = Some(done);
            if let Some(a) = attempt {
                r.push_attempt(a);
            }
            rows.add(done_key(DONE, done, id), []);
            rows.remove(queue_key(id));
            true
        })?;
        Ok(())
    }

    /// Records an accepted submit: status, SMSC id and the receipt index in one change, then
    /// applies any receipt that arrived before this response. Returns the status afterwards.
    pub fn mark_submitted(
        &self,
        id: &MessageId,
        carrier: &str,
        smsc_id: &str,
        attempt: Attempt,
        now: SystemTime,
    ) -> Result<Option<MessageStatus>, StoreError> {
        let now_ms = record::to_ms(now);
        let _guard = lock(&self.writes);
        let Some(mut record) = self.get_record(id)? else {
            return Ok(None);
        };
        let mut rows = Change::default();
        record.push_attempt(attempt);
        if record.status.is_final() {
            // A late response for a message already finished (e.g. expired meanwhile).
            self.apply(rows, message_key(id), encode(&record))?;
            return Ok(Some(record.status));
        }
        if record.status == MessageStatus::Queued {
            self.queue_changed(-1);
        }
        record.status = MessageStatus::Submitted;
        record.submitted_ms = Some(now_ms);
        record.carrier = Some(carrier.to_string());
        record.smsc_message_id = Some(smsc_id.to_string());
        // One index row, under the canonical form; the receipt side reads its ids back into
        // this form (`IdReading`).
        let canonical = canonical_id(smsc_id);
        let mut early = None;
        if !canonical.is_empty() {
            rows.add(key(b'r', &[carrier.as_bytes(), canonical.as_bytes()]), &id.0[..]);
            // A receipt that beat the response here?
            let prefix = key(b'e', &[carrier.as_bytes(), canonical.as_bytes(), b""]);
            if let Some(entry) = self.db.scan_prefix(&prefix).next() {
                early = Some(entry?);
            }
        }
        if let Some((_, value)) = &early {
            if let Ok(held) = serde_json::from_slice::<EarlyReceipt>(value) {
                apply_receipt_to(&mut record, id, &held.summary, held.final_status, now_ms, &mut rows);
                remove_early(&held, carrier, &self.db, &mut rows)?;
                self.held_changed(-1);
            }
        }
        rows.remove(queue_key(id));
        self.apply(rows, message_key(id), encode(&record))?;
        Ok(Some(record.status))
    }

    /// Applies a receipt from `carrier`: to its message when the correlation index knows the
    /// id, else holds it for the submit_sm_resp still to come. The TLV id is read as the
    /// response's id itself; the text id under each of `readings`.
    pub fn apply_receipt(
        &self,
        carrier: &str,
        receipt: &Receipt,
        readings: &[IdReading],
        now: SystemTime,
    ) -> Result<ReceiptMatch, StoreError> {
        let now_ms = record::to_ms(now);
        let final_status = MessageStatus::from_receipt(receipt.state);
        let summary = ReceiptSummary {
            stat: receipt.stat.clone().unwrap_or_else(|| receipt.state.as_str().to_string()),
            err: receipt.err.clone(),
            at_ms: now_ms,
            is_final: final_status.is_some(),
        };
        // Every (reading, response id) this receipt may stand for; `None`: the TLV id, which
        // SMPP defines as the response's id itself.
        let mut keys: Vec<(Option<IdReading>, String)> = Vec::new();
        if let Some(tlv) = receipt.tlv_id() {
            keys.push((None, canonical_id(tlv)));
        }
        if let Some(text) = receipt.text_id() {
            keys.extend(readings.iter().filter_map(|&r| r.response_id(text).map(|k| (Some(r), k))));
        }
        keys.retain(|(_, k)| !k.is_empty());
        let _guard = lock(&self.writes);
        let mut found: Vec<(Option<IdReading>, MessageId, MessageRecord)> = Vec::new();
        for (reading, k) in &keys {
            let Some(row) = self.db.get(key(b'r', &[carrier.as_bytes(), k.as_bytes()]))? else { continue };
            let Some(id) = id_from(&row) else { continue };
            if let Some(record) = self.get_record(&id)? {
                found.push((*reading, id, record));
            }
        }
        if !found.is_empty() {
            let awaiting = |r: &MessageRecord| !r.receipt.as_ref().is_some_and(|s| s.is_final);
            let tlv_match = found.iter().position(|(reading, _, _)| reading.is_none());
            let text_readings: Vec<IdReading> = found.iter().filter_map(|(r, _, _)| *r).collect();
            // The TLV is exact; else a message still waiting for its receipt, if only one is.
            let chosen = match tlv_match {
                Some(i) => i,
                None => {
                    let waiting: Vec<usize> = (0..found.len()).filter(|&i| awaiting(&found[i].2)).collect();
                    let distinct: std::collections::HashSet<MessageId> = waiting.iter().map(|&i| found[i].1).collect();
                    match (distinct.len(), waiting.first()) {
                        (1, Some(&i)) => i,
                        (0, _) => 0,
                        _ => return Ok(ReceiptMatch::Ambiguous),
                    }
                }
            };
            let (_, id, mut record) = found.swap_remove(chosen);
            if !awaiting(&record) {
                return Ok(ReceiptMatch::Late { id });
            }
            let reading = match text_readings.as_slice() {
                [only] => Some(*only),
                _ => None,
            };
            let mut rows = Change::default();
            let was_queued = record.status == MessageStatus::Queued;
            let finished = apply_receipt_to(&mut record, &id, &summary, final_status, now_ms, &mut rows);
            self.apply(rows, message_key(&id), encode(&record))?;
            if was_queued && finished {
                self.queue_changed(-1);
            }
            let latency = record.submitted_ms.map(|s| Duration::from_millis(now_ms.saturating_sub(s)));
            return Ok(ReceiptMatch::Matched { id, status: record.status, latency, finished, reading });
        }
        let mut candidates: Vec<String> = Vec::new();
        for (_, k) in keys {
            if !candidates.contains(&k) {
                candidates.push(k);
            }
        }
        if self.held_receipts() >= self.max_held {
            return Ok(ReceiptMatch::Dropped);
        }
        self.held_changed(1);
        let held = EarlyReceipt { candidates: candidates.clone(), summary, final_status };
        let sequence = self.db.generate_id()?.to_be_bytes();
        let value = encode(&held);
        for candidate in &candidates {
            self.db.insert(key(b'e', &[carrier.as_bytes(), candidate.as_bytes(), &sequence]), value.clone())?;
        }
        Ok(ReceiptMatch::Held)
    }

    /// Deletes finished messages older than `retention`, their receipt index rows and expired
    /// idempotency keys, and held receipts older than [`StoreOptions::hold_receipts_for`].
    /// Returns (messages deleted, the carrier of each held receipt dropped unmatched).
    pub fn sweep(&self, retention: Duration, now: SystemTime) -> Result<(usize, Vec<String>), StoreError> {
        let cutoff = record::to_ms(now.checked_sub(retention).unwrap_or(std::time::UNIX_EPOCH));
        let mut deleted = 0;
        for entry in self.finished_by(DONE, cutoff) {
            let (k, id) = entry?;
            let _guard = lock(&self.writes);
            // Index rows, then the record, then the done row: a sweep cut short finds the done
            // row again next time.
            match self.get_record(&id)? {
                Some(record) if record.status.is_final() => {
                    if let (Some(carrier), Some(smsc_id)) = (&record.carrier, &record.smsc_message_id) {
                        let index = key(b'r', &[carrier.as_bytes(), canonical_id(smsc_id).as_bytes()]);
                        // Only if it still points here: a newer message may reuse the SMSC id.
                        if self.db.get(&index)?.as_deref() == Some(&id.0[..]) {
                            self.db.remove(index)?;
                        }
                    }
                    self.db.remove(message_key(&id))?;
                    deleted += 1;
                }
                // Not final: the done row of a change a crash cut short; the record's own
                // final change writes a fresh one.
                _ => {}
            }
            self.db.remove(k)?;
        }
        let idempotency_cutoff = now.checked_sub(IDEMPOTENCY_WINDOW).unwrap_or(std::time::UNIX_EPOCH);
        for entry in self.db.scan_prefix([b'k']) {
            let (k, v) = entry?;
            let stale =
                serde_json::from_slice::<IdempotencyEntry>(&v).map(|e| record::from_ms(e.created_ms) < idempotency_cutoff).unwrap_or(true);
            if stale {
                self.db.remove(k)?;
            }
        }
        // Receipts held past their time are dropped, each reported once (from its first row).
        let mut unmatched = Vec::new();
        let expire_before = record::to_ms(now.checked_sub(self.hold_for).unwrap_or(std::time::UNIX_EPOCH));
        for entry in self.db.scan_prefix([b'e']) {
            let (k, v) = entry?;
            let at_ms = serde_json::from_slice::<EarlyReceipt>(&v).map_or(0, |held| held.summary.at_ms);
            if at_ms > expire_before {
                continue;
            }
            let _guard = lock(&self.writes);
            if is_first_row(&k, &v) {
                let carrier = &k[1..k.iter().position(|&b| b == 0).unwrap_or(1)];
                unmatched.push(String::from_utf8_lossy(carrier).into_owned());
                self.held_changed(-1);
            }
            self.db.remove(k)?;
        }
        Ok((deleted, unmatched))
    }

    /// Rows of a "finished at" index done at or before `cutoff_ms`, oldest first, with their ids.
    fn finished_by(&self, prefix: u8, cutoff_ms: u64) -> impl Iterator<Item = Result<(sled::IVec, MessageId), StoreError>> + '_ {
        let parse = |k: &[u8]| {
            let done_ms = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
            Some((done_ms, id_from(k.get(9..)?)?))
        };
        self.db
            .scan_prefix([prefix])
            .map(move |entry| entry.map_err(StoreError::from).map(|(k, _)| (parse(&k), k)))
            .take_while(move |entry| !matches!(entry, Ok((Some((done_ms, _)), _)) if *done_ms > cutoff_ms))
            .filter_map(|entry| match entry {
                Ok((Some((_, id)), k)) => Some(Ok((k, id))),
                Ok((None, _)) => None,
                Err(e) => Some(Err(e)),
            })
    }

    /// Counts rows by prefix (tests and metrics): (messages, queued, held receipts).
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |p: u8| self.db.scan_prefix([p]).count();
        (count(b'm'), count(b'q'), count(b'e'))
    }
}

/// Applies a receipt to its record; returns whether this made the message final. A final
/// receipt is the network's word: it settles a status we set ourselves (expired, failed).
fn apply_receipt_to(
    record: &mut MessageRecord,
    id: &MessageId,
    summary: &ReceiptSummary,
    final_status: Option<MessageStatus>,
    now_ms: u64,
    rows: &mut Change,
) -> bool {
    record.receipt = Some(summary.clone());
    let Some(status) = final_status else { return false };
    let was_final = record.status.is_final();
    rows.add(done_key(DONE, now_ms, id), []);
    // Removals run after the adds: never remove the row just added.
    if let Some(old_done) = record.done_ms.filter(|&old| old != now_ms) {
        rows.remove(done_key(DONE, old_done, id));
    }
    record.status = status;
    record.done_ms = Some(now_ms);
    rows.remove(queue_key(id));
    !was_final
}

fn remove_early(held: &EarlyReceipt, carrier: &str, db: &sled::Db, rows: &mut Change) -> Result<(), StoreError> {
    for candidate in &held.candidates {
        let prefix = key(b'e', &[carrier.as_bytes(), candidate.as_bytes(), b""]);
        if let Some(entry) = db.scan_prefix(&prefix).next() {
            rows.remove(entry?.0.to_vec());
        }
    }
    Ok(())
}

/// Whether an `e` row is the first of its held receipt's rows (one per candidate id): the
/// one a receipt is counted by.
fn is_first_row(row_key: &[u8], value: &[u8]) -> bool {
    let Ok(held) = serde_json::from_slice::<EarlyReceipt>(value) else { return false };
    early_candidate(row_key).is_some_and(|c| held.candidates.first().is_some_and(|f| f.as_bytes() == c))
}

/// The candidate id inside an `e` row key: `e`, carrier, NUL, candidate, NUL, 8-byte sequence.
fn early_candidate(row_key: &[u8]) -> Option<&[u8]> {
    let body = row_key.get(1..row_key.len().checked_sub(9)?)?;
    let start = body.iter().position(|&b| b == 0)? + 1;
    body.get(start..)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Our own plain structs: serialisation cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smpp::DeliveryState;

    fn options() -> StoreOptions {
        StoreOptions { cache_capacity_bytes: 8 * 1024 * 1024, ..StoreOptions::default() }
    }

    fn new_message(now: SystemTime) -> NewMessage {
        NewMessage {
            owner: "test".into(),
            to: "+447700900123".into(),
            from: None,
            text: "hello".into(),
            deadline: now + Duration::from_secs(300),
        }
    }

    fn attempt() -> Attempt {
        Attempt {
            at_ms: 0,
            carrier: "alpha".into(),
            session: Some("alpha#0/transceiver".into()),
            result: "ok".into(),
            detail: String::new(),
        }
    }

    fn receipt(id: &str, state: DeliveryState) -> Receipt {
        Receipt {
            message_id: id.into(),
            alternate_id: None,
            id_from_tlv: false,
            state,
            stat: Some(state.as_str().into()),
            err: Some("000".into()),
            submitted: None,
            delivered: None,
            submit_date: None,
            done_date: None,
            network_error: None,
        }
    }

    const ALL: &[IdReading] = &IdReading::ALL;

    /// A store in a fresh directory (kept alive by the returned guard) and the time now.
    fn fresh() -> (tempfile::TempDir, Arc<Store>, SystemTime) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &options()).unwrap();
        (dir, store, SystemTime::now())
    }

    /// Ends a store as a crash would after its last flush: no clean close.
    async fn crash(store: Arc<Store>) {
        store.commit.durable().await.unwrap();
        store.stop.cancel();
        let flusher = lock(&store.flusher).take();
        flusher.unwrap().await.unwrap();
    }

    #[tokio::test]
    async fn retention_sweep_deletes_finished_messages_and_their_index() {
        let (_dir, store, now) = fresh();
        let (done_id, _) = store.insert_message(new_message(now), None, now).await.unwrap();
        let (queued_id, _) = store.insert_message(new_message(now), None, now).await.unwrap();
        store.mark_submitted(&done_id, "alpha", "AB12", attempt(), now).unwrap();
        let matched = store.apply_receipt("alpha", &receipt("ab12", DeliveryState::Delivered), ALL, now).unwrap();
        assert!(matches!(matched, ReceiptMatch::Matched { status: MessageStatus::Delivered, .. }));

        // Not old enough yet.
        assert_eq!(store.sweep(Duration::from_secs(3600), now).unwrap().0, 0);
        let later = now + Duration::from_secs(3601);
        assert_eq!(store.sweep(Duration::from_secs(3600), later).unwrap().0, 1);
        assert!(store.message(&done_id).unwrap().is_none());
        assert!(store.message(&queued_id).unwrap().is_some(), "queued messages are never swept");
        // Its receipt index went with it: a late duplicate receipt is held, not applied.
        let late = store.apply_receipt("alpha", &receipt("AB12", DeliveryState::Delivered), ALL, later).unwrap();
        assert_eq!(late, ReceiptMatch::Held);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn receipts_match_their_submit_in_any_base_through_one_index_row() {
        let (_dir, store, now) = fresh();
        let pairs = [
            ("70BA8A69", "1891273321"),
            ("1891273321", "70ba8a69"),
            ("0059113978", "38601fa"),
            ("38601FA", "0059113978"),
            ("a29f6845", "A29F6845"),
        ];
        for (i, (response, receipt_id)) in pairs.into_iter().enumerate() {
            let (id, _) = store.insert_message(new_message(now), None, now).await.unwrap();
            let carrier = format!("c{i}");
            store.mark_submitted(&id, &carrier, response, attempt(), now).unwrap();
            let rows = store.db.scan_prefix(key(b'r', &[carrier.as_bytes(), b""])).count();
            assert_eq!(rows, 1, "{response}: one index row");
            let matched = store.apply_receipt(&carrier, &receipt(receipt_id, DeliveryState::Delivered), ALL, now).unwrap();
            assert!(matches!(matched, ReceiptMatch::Matched { id: m, .. } if m == id), "{response} / {receipt_id}: {matched:?}");
        }
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn early_receipts_wait_for_their_submit_and_unmatched_ones_are_dropped_and_reported_once() {
        let (_dir, store, now) = fresh();
        let (id, _) = store.insert_message(new_message(now), None, now).await.unwrap();
        // Receipt in decimal before the submit_sm_resp names the id in hex.
        assert_eq!(store.apply_receipt("alpha", &receipt("1891273321", DeliveryState::Delivered), ALL, now).unwrap(), ReceiptMatch::Held);
        assert_eq!(store.mark_submitted(&id, "alpha", "70BA8A69", attempt(), now).unwrap(), Some(MessageStatus::Delivered));
        assert_eq!(store.counts().2, 0);

        // A receipt for nothing on another carrier: held, then dropped and reported once.
        store.apply_receipt("beta", &receipt("77", DeliveryState::Undeliverable), ALL, now).unwrap();
        assert_eq!(store.held_receipts(), 1);
        let retention = Duration::from_secs(7 * 24 * 3600);
        assert!(store.sweep(retention, now).unwrap().1.is_empty(), "too young to call unmatched");
        let later = now + StoreOptions::default().hold_receipts_for + Duration::from_secs(1);
        assert_eq!(store.sweep(retention, later).unwrap().1, vec!["beta".to_string()]);
        assert_eq!((store.counts().2, store.held_receipts()), (0, 0), "dropped, not kept for the retention");
        assert!(store.sweep(retention, later).unwrap().1.is_empty(), "reported once");
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn held_receipts_are_capped_and_their_count_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let capped = StoreOptions { max_held_receipts: 3, ..options() };
        {
            let store = Store::open(dir.path(), &capped).unwrap();
            for n in 0..5 {
                let expected = if n < 3 { ReceiptMatch::Held } else { ReceiptMatch::Dropped };
                assert_eq!(
                    store.apply_receipt("alpha", &receipt(&format!("{}", 100 + n), DeliveryState::Delivered), ALL, now).unwrap(),
                    expected
                );
            }
            store.close().await.unwrap();
        }
        let store = Store::open(dir.path(), &capped).unwrap();
        assert_eq!(store.held_receipts(), 3, "counted at open");
        assert_eq!(store.apply_receipt("alpha", &receipt("999", DeliveryState::Delivered), ALL, now).unwrap(), ReceiptMatch::Dropped);
        // One held receipt meets its submit: room for another.
        let (id, _) = store.insert_message(new_message(now), None, now).await.unwrap();
        store.mark_submitted(&id, "alpha", "100", attempt(), now).unwrap();
        assert_eq!(store.held_receipts(), 2);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn acknowledged_inserts_survive_reopening_and_are_queued_again() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let mut ids = Vec::new();
        {
            let store = Store::open(dir.path(), &options()).unwrap();
            for _ in 0..50 {
                ids.push(store.insert_message(new_message(now), None, now).await.unwrap().0);
            }
            store.mark_in_flight(&ids[0]).unwrap();
            // A submit that failed and was recorded is no longer in flight.
            store.mark_in_flight(&ids[1]).unwrap();
            store.record_attempt(&ids[1], attempt(), false).unwrap();
            store.close().await.unwrap();
        }
        let store = Store::open(dir.path(), &options()).unwrap();
        let queued = store.queued().unwrap();
        assert_eq!(queued.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids, "all of them, in order");
        assert!(queued[0].1.in_flight, "a submit cut short is visible for the resubmit count");
        assert!(!queued[1].1.in_flight);
        assert_eq!(queued[1].1.attempts.len(), 1);
        store.close().await.unwrap();
    }

    /// The states a crash can leave between the ordered writes of one change (module doc).
    #[tokio::test]
    async fn changes_cut_short_by_a_crash_are_tolerated() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let (submitted, queued);
        {
            let store = Store::open(dir.path(), &options()).unwrap();
            submitted = store.insert_message(new_message(now), None, now).await.unwrap().0;
            queued = store.insert_message(new_message(now), None, now).await.unwrap().0;
            store.mark_submitted(&submitted, "alpha", "AB12", attempt(), now).unwrap();
            // Cut short after the record: its queue row, marked in flight, is still there.
            store.db.insert(queue_key(&submitted), IN_FLIGHT).unwrap();
            // Cut short before the record: a queue row with no record behind it.
            store.db.insert(queue_key(&MessageId::new(u64::MAX)), &[][..]).unwrap();
            // A finished change's done row written, the record not yet final.
            store.db.insert(done_key(DONE, 1, &queued), &[][..]).unwrap();
            crash(store).await;
        }
        let store = Store::open(dir.path(), &options()).unwrap();
        let requeued: Vec<MessageId> = store.queued().unwrap().into_iter().map(|(id, _)| id).collect();
        assert_eq!(requeued, vec![queued], "only the message still waiting is sent again");
        assert_eq!(store.counts().1, 1, "stale queue rows are dropped");
        assert_eq!(store.queue_stats(now).0, 1);

        assert_eq!(store.sweep(Duration::from_secs(1), now).unwrap().0, 0, "a queued message is never swept");
        assert!(store.message(&queued).unwrap().is_some());
        assert!(store.db.scan_prefix([DONE]).next().is_none(), "the stray done row is gone");
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_clean_close_records_the_queue_depth_and_a_crash_makes_the_next_open_count() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        {
            let store = Store::open(dir.path(), &options()).unwrap();
            for _ in 0..3 {
                store.insert_message(new_message(now), None, now).await.unwrap();
            }
            // Rows the in-memory depth does not know of: a recount would find them.
            store.db.insert(queue_key(&MessageId::new(u64::MAX)), &[][..]).unwrap();
            store.close().await.unwrap();
        }
        {
            let store = Store::open(dir.path(), &options()).unwrap();
            assert_eq!(store.queue_stats(now).0, 3, "taken from the clean close, not counted");
            assert!(!store.db.contains_key(CLEAN_CLOSE).unwrap(), "consumed at open");
            crash(store).await;
        }
        let store = Store::open(dir.path(), &options()).unwrap();
        assert_eq!(store.queue_stats(now).0, 4, "counted");
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn the_data_dir_and_its_files_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = Store::open(&data, &options()).unwrap();
        let now = SystemTime::now();
        store.insert_message(new_message(now), None, now).await.unwrap();
        store.close().await.unwrap();
        drop(store);
        let mut checked = 0;
        let mut stack = vec![data];
        while let Some(path) = stack.pop() {
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!(meta.permissions().mode() & 0o077, 0, "{} is open to others: {:o}", path.display(), meta.permissions().mode());
            checked += 1;
            if meta.is_dir() {
                stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            }
        }
        assert!(checked >= 3, "the store's files were checked");
    }

    #[tokio::test]
    async fn ids_sort_in_arrival_order_and_count_nothing() {
        let (_dir, store, now) = fresh();
        let order = |id: &MessageId| u64::from_be_bytes(id.0[..8].try_into().unwrap());
        let ids: Vec<MessageId> = (0..1000).map(|_| store.new_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        let first = order(&ids[0]);
        let started = record::to_us(now);
        assert!(first >= started && first < started + 10_000_000, "the order part is the time now, not a count: {first}");
        std::thread::sleep(Duration::from_millis(20));
        let later = order(&store.new_id());
        assert!(later >= order(&ids[999]) + 15_000, "20 ms later is ~20,000 further, whatever was sent meanwhile");
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn concurrent_writers_share_flushes_without_deadlock() {
        let (_dir, store, now) = fresh();
        let writers = (0..64).map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    store.insert_message(new_message(now), None, now).await.unwrap();
                }
            })
        });
        let all = futures::future::join_all(writers);
        tokio::time::timeout(Duration::from_secs(30), all).await.expect("group commit must not hang");
        assert_eq!(store.counts().1, 64 * 20);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn idempotency_entries_replay_conflict_and_expire() {
        let (_dir, store, now) = fresh();
        assert_eq!(store.check_idempotency("test", "k1", "h1", now).unwrap(), Idempotency::New);
        let (id, _) = store.insert_message(new_message(now), Some(("k1", "h1")), now).await.unwrap();
        assert_eq!(store.check_idempotency("test", "k1", "h1", now).unwrap(), Idempotency::Replay(id, None));
        assert_eq!(store.check_idempotency("test", "k1", "h2", now).unwrap(), Idempotency::Conflict);
        assert_eq!(store.check_idempotency("other", "k1", "h1", now).unwrap(), Idempotency::New);
        let tomorrow = now + IDEMPOTENCY_WINDOW + Duration::from_secs(1);
        assert_eq!(store.check_idempotency("test", "k1", "h2", tomorrow).unwrap(), Idempotency::New);
        store.close().await.unwrap();
    }
}
