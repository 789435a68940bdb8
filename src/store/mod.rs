//! The message store: sled 0.34 on disk, or PostgreSQL shared by a cluster, behind an API that
//! knows nothing of either engine's types and nothing of SMPP's.
//!
//! One ordered key space, with a one-byte prefix per kind of row (`keys.rs` has the table), kept
//! by a storage engine (`engine.rs`; `postgres.rs` for the database). One file per concept: `messages` (intake,
//! queue, submits), [`receipts`] (the correlation index and receipts held for their submit),
//! `window` (recent submits' correlation, before it needs an index row),
//! `idempotency`, [`verification`], `sweep` (retention), `commit` (group commit), `locks`
//! (striped write locks) and `settings` (`[store]`).
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
//! written as `Change`: new index rows first, then the record, then removals; every prefix of
//! that is a state the readers tolerate (a queue row whose record is missing or no longer
//! queued is dropped by recovery; a done row the record has moved past is dropped by the sweep;
//! an index row pointing at a message that never got its record is never reached). An intake
//! writes its Idempotency-Key row last, so a replayed key always finds its message. On
//! PostgreSQL a change is one statement (a round trip per row cost 2.4x the throughput), which
//! is atomic, so the order holds trivially; receipts are applied a batch at a time for the same
//! reason ([`Store::apply_receipts`]).
//! Verifications keep sled's atomic batches: their rows guard codes, and they are fewer.

mod codec;
mod commit;
mod engine;
pub mod events;
pub mod fraud;
mod idempotency;
mod keys;
pub mod listing;
mod locks;
mod messages;
mod postgres;
pub mod receipts;
pub mod record;
pub(crate) mod settings;
mod sweep;
pub mod verification;
pub mod view;
mod window;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use codec::Stored;
pub use commit::FlushError;
use commit::GroupCommit;
use engine::{Engine, Writes};
pub use idempotency::{IDEMPOTENCY_WINDOW, Idempotency};
pub use messages::NewMessage;
pub use receipts::{IncomingReceipt, ReceiptMatch};
pub use record::{Attempt, MessageId, MessageRecord, MessageStatus, ReceiptSummary, VerificationId};

/// Why the store could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
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
    #[error("database: {0}")]
    Database(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Which engine keeps the rows.
    pub backend: settings::Backend,
    /// sled's page cache; its default of 1 GiB is more than most hosts want to give.
    pub cache_capacity_bytes: u64,
    /// How often sled compacts its log (its background thread's interval).
    pub compact_every: Duration,
    /// Receipts held for a submit_sm_resp still to come, at most; more are dropped and counted.
    pub max_held_receipts: usize,
    /// How long a receipt is looked for in the receipt window (sled only, `window.rs`) before
    /// a message still waiting for it gets its receipt index row.
    pub receipt_window: Duration,
    /// Submits held in the receipt window at most; older ones move out early.
    pub receipt_window_max: usize,
    /// How long a held receipt waits for its submit before it is dropped as unmatched.
    pub hold_receipts_for: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            backend: settings::Backend::Sled,
            cache_capacity_bytes: 2 << 20,
            compact_every: Duration::from_millis(20),
            max_held_receipts: 10_000,
            receipt_window: Duration::from_secs(60),
            receipt_window_max: 10_000,
            hold_receipts_for: Duration::from_secs(600),
        }
    }
}

/// The open store. Cheap to share behind an `Arc`.
pub struct Store {
    engine: Engine,
    commit: Arc<GroupCommit>,
    /// Serialise read-modify-write of records and receipt correlation (sled has no row locks).
    locks: locks::Locks,
    stop: CancellationToken,
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Recent submits' receipt correlation (sled only), and the task moving it out.
    window: Option<window::Window>,
    mover: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Queue rows to mark in flight with the next flush.
    in_flight: engine::Marks,
    /// Accepted submits being recorded a batch at a time.
    submits: messages::Submits,
    /// Messages with a queue row, kept in step with it (read or counted at open; the flusher
    /// records it with every group commit).
    queued: Arc<AtomicI64>,
    /// The order part of the last id handed out (microseconds since the epoch).
    last_id: AtomicU64,
    /// Receipts held for their submit_sm_resp (counted once at open).
    held: AtomicUsize,
    max_held: usize,
    hold_for: Duration,
    /// Who hears of events, and their backlogs.
    outbox: events::Outbox,
    /// An intake write failed (disk full, I/O error). sled 0.34 keeps failing after its first
    /// I/O error even once space returns, so this never clears: the process must restart.
    broken: AtomicBool,
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

/// How many times (50 ms apart) opening waits for a data_dir lock that is being released.
const LOCK_WAITS: u32 = 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One record's change as ordered writes (see the module doc): `add` rows are written before
/// the record, `remove` rows after it. A change that emits events is written all at once.
#[derive(Default)]
struct Change {
    adds: Vec<(Vec<u8>, Vec<u8>)>,
    removes: Vec<Vec<u8>>,
    events: events::Emitted,
    /// When the record could be swept before this change: where its done row is.
    sweepable_before: Option<u64>,
}

impl Change {
    /// A change of `record` as it is now.
    fn of(record: &MessageRecord) -> Change {
        Change { adds: Vec::new(), removes: Vec::new(), events: events::Emitted::default(), sweepable_before: record.sweepable_from_ms() }
    }

    fn add(&mut self, k: Vec<u8>, v: impl Into<Vec<u8>>) {
        self.adds.push((k, v.into()));
    }

    fn remove(&mut self, k: Vec<u8>) {
        self.removes.push(k);
    }

    /// The change with `id`'s record row = `record`, as writes in the safe order, and the
    /// events it emits. The done row follows the record: every change that moves when the
    /// record may be swept moves it, so no code path can forget it. Its new place goes to
    /// `moved`, for [`with_done_rows`] to write before the record.
    fn into_writes(mut self, id: &MessageId, record: &MessageRecord, moved: &mut Vec<(u64, MessageId)>) -> (Writes, events::Emitted) {
        let sweepable = record.sweepable_from_ms();
        if sweepable != self.sweepable_before {
            moved.extend(sweepable.map(|at| (at, *id)));
            // Removals run after the adds and the record: a crash in between leaves a stale
            // done row, which the sweep recognises (`sweep.rs`), never a record without one.
            self.removes.extend(self.sweepable_before.map(|at| keys::done(keys::MESSAGE_DONE, at, id)));
        }
        let adds = self.adds.into_iter().chain([(keys::message(id), encode(record))]).map(|(k, v)| (k, Some(v)));
        (adds.chain(self.removes.into_iter().map(|k| (k, None))).collect(), self.events)
    }
}

/// `writes` behind the done rows of the records they move (`moved`): a record's own row, or
/// for several (a batch of submits) one row at the latest of their times listing them all. One
/// write instead of one per message (measured without the rows at all: 8-15 % less daemon CPU
/// per message); the sweep reads each record for when it may go, so a shared row visited a
/// few milliseconds after some of its records could have gone keeps nothing longer than that.
fn with_done_rows(moved: Vec<(u64, MessageId)>, writes: Writes) -> Writes {
    let row = match moved.as_slice() {
        [] => None,
        [(at, id)] => Some((keys::done(keys::MESSAGE_DONE, *at, id), Vec::new())),
        [(_, first), rest @ ..] => {
            let latest = moved.iter().map(|(at, _)| *at).max().unwrap_or_default();
            Some((keys::done_batch(latest, first), rest.iter().flat_map(|(_, id)| id.0).collect()))
        }
    };
    row.map(|(k, v)| (k, Some(v))).into_iter().chain(writes).collect()
}

/// The changes of a batch (receipts, submits), one [`Change`] per message, in the order each
/// message was first changed.
#[derive(Default)]
struct Changes(Vec<(MessageId, Change)>);

impl Changes {
    /// `id`'s change, begun on first use from `record` as it was then.
    fn of(&mut self, id: MessageId, record: &MessageRecord) -> &mut Change {
        let at = match self.0.iter().position(|(changed, _)| *changed == id) {
            Some(at) => at,
            None => {
                self.0.push((id, Change::of(record)));
                self.0.len() - 1
            }
        };
        &mut self.0[at].1
    }

    /// Every change as writes in the safe order, each with its record as `records` holds it
    /// now, and the events they emit.
    fn into_writes(self, records: &HashMap<MessageId, Option<MessageRecord>>) -> (Writes, events::Emitted) {
        let (mut writes, mut events, mut moved) = (Vec::new(), events::Emitted::default(), Vec::new());
        for (id, change) in self.0 {
            if let Some(Some(record)) = records.get(&id) {
                let (rows, emitted) = change.into_writes(&id, record, &mut moved);
                writes.extend(rows);
                events.absorb(emitted);
            }
        }
        (with_done_rows(moved, writes), events)
    }
}

impl Store {
    /// Writes `change` around `id`'s record row = `record` in the safe order.
    async fn apply(&self, change: Change, id: &MessageId, record: &MessageRecord) -> Result<(), StoreError> {
        let mut moved = Vec::new();
        let (writes, events) = change.into_writes(id, record, &mut moved);
        self.write_with_events(with_done_rows(moved, writes), events).await
    }

    /// Writes rows in order, the rows of the events they report first. A crash keeps a prefix
    /// (sled), so an event may survive without its change, never the change without its event;
    /// such an event names the message state its change brought, and the next open drops it
    /// (`drop_orphan_events`). Meanwhile the event counts as on its way, so no sender takes it
    /// before its change is written. (sled's atomic batch would do it too, at two extra disk
    /// writes per batch: the message path ran 11 points slower with it, README: Webhooks.)
    async fn write_with_events(&self, writes: Writes, events: events::Emitted) -> Result<(), StoreError> {
        if events.rows.is_empty() {
            return self.engine.write(writes).await;
        }
        let mut all: Writes = events.rows.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
        all.extend(writes);
        match self.engine.write(all).await {
            Ok(()) => {
                self.events_written(&events.rows);
                Ok(())
            }
            Err(e) => {
                events.hold();
                Err(e)
            }
        }
    }

    /// Opens (or creates) the store, in `dir` for sled or in the database for PostgreSQL, and
    /// starts its flusher.
    pub async fn open(dir: &Path, options: &StoreOptions) -> Result<Arc<Store>, StoreError> {
        let (engine, sled_log) = match &options.backend {
            settings::Backend::Sled => {
                let (db, log) = Self::open_sled(dir, options).await?;
                (Engine::Sled(db), Some(log))
            }
            settings::Backend::Postgres(pg) => (Engine::Postgres(Box::new(postgres::Postgres::connect(pg).await?)), None),
        };
        let windowed = !engine.shared();
        let store = Arc::new(Store {
            engine,
            commit: GroupCommit::new(),
            locks: locks::Locks::new(),
            stop: CancellationToken::new(),
            flusher: Mutex::new(None),
            window: windowed.then(|| window::Window::new(options.receipt_window, options.receipt_window_max)),
            mover: Mutex::new(None),
            in_flight: engine::Marks::new(keys::IN_FLIGHT),
            submits: messages::Submits::default(),
            queued: Arc::new(AtomicI64::new(0)),
            held: AtomicUsize::new(0),
            last_id: AtomicU64::new(0),
            max_held: options.max_held_receipts,
            hold_for: options.hold_receipts_for,
            broken: AtomicBool::new(false),
            outbox: events::Outbox::default(),
        });
        // The depth is on record as of the last group commit (exact after a clean close; after a
        // crash off by the changes the crash cut short, until the queue is next empty, see
        // `queue_stats`). Counting instead walks every queue row through sled's cache: at a
        // million queued messages that took a second and 30 MB more resident memory. A store
        // without the row (new, or left by a crash of a version before the row) is counted.
        // On PostgreSQL other nodes write too: always count (an index range, no cache to fill).
        let on_record = match store.engine.shared() {
            false => store.engine.get(keys::QUEUE_DEPTH).await?,
            true => None,
        };
        let queued = match on_record {
            Some(depth) if depth.len() == 8 => u64::from_be_bytes(depth.as_slice().try_into().unwrap_or_default()) as i64,
            _ => store.engine.count(&[keys::QUEUE]).await? as i64,
        };
        store.queued.store(queued, Ordering::Relaxed);
        let held = store.count_held().await?;
        store.held.store(held, Ordering::Relaxed);
        store.load_window().await?;
        if !store.engine.shared() {
            let orphans = store.drop_orphan_events().await?;
            if orphans > 0 {
                tracing::info!(orphans, "dropped webhook events whose change a crash cut short");
            }
        }
        let flusher = tokio::spawn(
            store
                .commit
                .clone()
                .run(store.engine.flusher(store.in_flight.clone(), store.queued.clone(), keys::QUEUE_DEPTH, sled_log), store.stop.clone()),
        );
        *lock(&store.flusher) = Some(flusher);
        if store.window.is_some() {
            *lock(&store.mover) = Some(tokio::spawn(Self::run_mover(Arc::downgrade(&store), store.stop.clone())));
        }
        Ok(store)
    }

    /// Opens sled's files in `dir`, private to this user, and sled's log file once more for the
    /// group commit's `fdatasync` ([`Engine::flusher`]).
    async fn open_sled(dir: &Path, options: &StoreOptions) -> Result<(sled::Db, std::fs::File), StoreError> {
        let path = dir.display().to_string();
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open { path: path.clone(), message: e.to_string() })?;
        private(dir).map_err(|e| StoreError::Open { path: path.clone(), message: format!("cannot make it private (0700): {e}") })?;
        // A store closed a moment ago (a restart in the same process) may still hold its file
        // lock while sled's own threads wind down: wait a little before calling it taken.
        let mut lock_waits = 0;
        let compact_every_ms = options.compact_every.as_millis().max(1) as u64;
        let config =
            sled::Config::new().path(dir.join("db")).cache_capacity(options.cache_capacity_bytes).flush_every_ms(Some(compact_every_ms));
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    if lock_waits == LOCK_WAITS {
                        return Err(StoreError::Locked { path });
                    }
                    lock_waits += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(StoreError::Open { path, message: e.to_string() }),
            }
        };
        // sled's own files, including those an earlier version created with the umask's modes.
        private(&dir.join("db"))
            .map_err(|e| StoreError::Open { path: path.clone(), message: format!("cannot make its files private (0600): {e}") })?;
        let log = std::fs::File::open(dir.join("db").join("db"))
            .map_err(|e| StoreError::Open { path, message: format!("cannot open sled's log file to sync it: {e}") })?;
        Ok((db, log))
    }

    /// Flushes everything (the queue depth with it) and stops the flusher (which holds a handle
    /// on the database: once it has finished and the last `Arc<Store>` is dropped, the data_dir
    /// lock is released).
    pub async fn close(&self) -> Result<(), StoreError> {
        let result = self.commit.durable().await;
        self.stop.cancel();
        let tasks = [lock(&self.flusher).take(), lock(&self.mover).take()];
        for task in tasks.into_iter().flatten() {
            let _ = task.await;
        }
        Ok(result?)
    }

    /// Tells the process that dispatches (in a cluster, the leader) that `id` is queued. Not
    /// durable: a missed announcement is found by the dispatcher's queue scan.
    pub async fn announce(&self, id: &MessageId) -> Result<(), StoreError> {
        self.engine.announce(&id.to_string()).await
    }

    /// Ids other processes announce (until `stop`); `None` where no other process writes.
    pub fn announcements(&self, stop: CancellationToken) -> Option<tokio::sync::mpsc::Receiver<MessageId>> {
        let mut payloads = self.engine.listen(stop)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        tokio::spawn(async move {
            while let Some(payload) = payloads.recv().await {
                if let Ok(id) = payload.parse()
                    && tx.send(id).await.is_err()
                {
                    break;
                }
            }
        });
        Some(rx)
    }

    /// Whether the store answers now: a database that is down makes this node unready.
    pub async fn reachable(&self) -> bool {
        matches!(tokio::time::timeout(Duration::from_secs(2), self.engine.ping()).await, Ok(Ok(())))
    }

    /// Records `value` as the setting `name` unless one is on record already; returns the one
    /// on record. For what every process using this store must agree on.
    pub async fn shared_setting(&self, name: &str, value: &str) -> Result<String, StoreError> {
        let key = keys::key(keys::SHARED_SETTING, &[name.as_bytes()]);
        if self.engine.swap(&key, None, Some(value.as_bytes())).await? {
            self.durable().await?;
            return Ok(value.to_string());
        }
        let on_record = self.engine.get(&key).await?.unwrap_or_default();
        String::from_utf8(on_record).map_err(|_| StoreError::Corrupt(format!("setting {name}")))
    }

    /// Reads and decodes one row.
    async fn read<T: Stored>(&self, k: &[u8], what: impl FnOnce() -> String) -> Result<Option<T>, StoreError> {
        decode(self.engine.get(k).await?, what)
    }

    /// Whether the store can still write. False after an I/O failure (a full disk): answer 503,
    /// report unready and stop feeding the systemd watchdog, so the service is restarted, which
    /// reopens the store once space is back.
    pub fn healthy(&self) -> bool {
        !self.broken.load(Ordering::Relaxed) && !self.commit.failing()
    }

    /// Marks the store broken when `result` is an I/O failure (see [`Store::healthy`]).
    fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Io(_) | StoreError::Flush(_)) = &result
            && self.engine.failures_stick()
        {
            self.broken.store(true, Ordering::Relaxed);
        }
        result
    }

    /// Waits until every row written before this call is on disk: one group commit shared with
    /// every other writer waiting.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let result = self.commit.durable().await.map_err(StoreError::from);
        self.note(result)
    }

    /// A new id for a message or verification: time-ordered (the microsecond now, or one past
    /// the last id when two come in the same microsecond), never a count.
    pub fn new_id(&self) -> MessageId {
        let now = record::to_us(SystemTime::now());
        let previous = self.last_id.fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| Some(now.max(last + 1)));
        let last = previous.unwrap_or_else(|last| last);
        MessageId::new(now.max(last + 1))
    }

    /// Counts rows by kind, for tests: (messages, queued, held receipt rows).
    #[cfg(any(test, feature = "test-util"))]
    pub async fn counts(&self) -> Result<(usize, usize, usize), StoreError> {
        let e = &self.engine;
        Ok((e.count(&[keys::MESSAGE]).await?, e.count(&[keys::QUEUE]).await?, e.count(&[keys::HELD_RECEIPT]).await?))
    }
}

/// Decodes a row; `what` names it in the error if it does not decode.
fn decode<T: Stored>(row: Option<Vec<u8>>, what: impl FnOnce() -> String) -> Result<Option<T>, StoreError> {
    match row {
        None => Ok(None),
        Some(bytes) => T::from_row(&bytes).map(Some).ok_or_else(|| StoreError::Corrupt(what())),
    }
}

fn encode<T: Stored>(value: &T) -> Vec<u8> {
    value.to_row()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::throwaway_pg::ThrowawayPostgres;

    /// Where a test's store lives: a directory for sled, a throwaway server for PostgreSQL.
    pub(super) struct Place {
        dir: tempfile::TempDir,
        backend: settings::Backend,
        _server: Option<ThrowawayPostgres>,
    }

    impl Place {
        /// `None` (with a loud note) when PostgreSQL is wanted but not installed outside CI.
        pub(super) async fn new(kind: settings::BackendKind) -> Option<Place> {
            let dir = tempfile::tempdir().unwrap();
            Some(match kind {
                settings::BackendKind::Sled => Place { dir, backend: settings::Backend::Sled, _server: None },
                settings::BackendKind::Postgres => {
                    let server = ThrowawayPostgres::for_tests().await.expect("a throwaway PostgreSQL server starts")?;
                    let pg = settings::PostgresSettings { url: server.url(), password: None, pool_size: 8, node: "test".into() };
                    Place { dir, backend: settings::Backend::Postgres(pg), _server: Some(server) }
                }
            })
        }

        pub(super) fn options(&self) -> StoreOptions {
            StoreOptions { backend: self.backend.clone(), cache_capacity_bytes: 8 * 1024 * 1024, ..StoreOptions::default() }
        }

        pub(super) async fn open(&self) -> Arc<Store> {
            self.open_with(self.options()).await
        }

        pub(super) async fn open_with(&self, options: StoreOptions) -> Arc<Store> {
            Store::open(self.dir.path(), &options).await.unwrap()
        }
    }

    /// A test run once on each engine: `$place` is where its store lives.
    macro_rules! on_both {
        ($(#[doc = $doc:literal])* async fn $name:ident($place:ident) $body:block) => {
            $(#[doc = $doc])*
            mod $name {
                use super::*;

                async fn case($place: Place) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sled() {
                    case(Place::new(settings::BackendKind::Sled).await.unwrap()).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(place) = Place::new(settings::BackendKind::Postgres).await {
                        case(place).await
                    }
                }
            }
        };
    }
    pub(super) use on_both;

    fn new_message(now: SystemTime) -> NewMessage {
        NewMessage {
            owner: "test".into(),
            to: "+447700900123".into(),
            from: None,
            text: "hello".into(),
            deadline: now + Duration::from_secs(300),
            encoding: None,
            segments: 1,
            options: Default::default(),
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

    /// A receipt whose text id reads as each of `ids` (the reading named by its position).
    fn received(ids: &[&str], status: MessageStatus) -> IncomingReceipt<usize> {
        IncomingReceipt {
            exact_id: None,
            read_ids: ids.iter().map(|id| crate::smsc_id::canonical(id)).enumerate().collect(),
            stat: status.as_str().to_ascii_uppercase(),
            err: Some("000".into()),
            final_status: Some(status),
        }
    }

    /// Ends a store as a crash would after its last flush: no clean close.
    pub(super) async fn crash(store: Arc<Store>) {
        store.commit.durable().await.unwrap();
        store.stop.cancel();
        let tasks = [lock(&store.flusher).take(), lock(&store.mover).take()];
        for task in tasks.into_iter().flatten() {
            task.await.unwrap();
        }
    }

    on_both! {
        /// A delivered message goes `retention` after its validity ended (a receipt may come
        /// until then), with its receipt index; a queued one stays.
        async fn retention_sweep_deletes_finished_messages_and_their_index(place) {
            let (store, now) = (place.open().await, SystemTime::now());
            let (done_id, _) = store.insert_message(new_message(now), None, now).await.unwrap();
            let (queued_id, _) = store.insert_message(new_message(now), None, now).await.unwrap();
            store.mark_submitted(&done_id, "alpha", "AB12", attempt(), now).await.unwrap();
            let matched = store.apply_receipt("alpha", received(&["ab12"], MessageStatus::Delivered), now).await.unwrap();
            assert!(matches!(matched, ReceiptMatch::Matched { status: MessageStatus::Delivered, .. }));

            // Not old enough yet: an hour after it finished, but not after its validity (5 min) ended.
            let retention = Duration::from_secs(3600);
            assert_eq!(store.sweep(retention, now + retention + Duration::from_secs(1)).await.unwrap().0, 0);
            assert!(store.message(&done_id).await.unwrap().is_some());
            let later = now + retention + Duration::from_secs(301);
            assert_eq!(store.sweep(retention, later).await.unwrap().0, 1);
            assert!(store.message(&done_id).await.unwrap().is_none());
            assert!(store.message(&queued_id).await.unwrap().is_some(), "queued messages are never swept");
            // Its receipt index went with it: a late duplicate receipt is held, not applied.
            let late = store.apply_receipt("alpha", received(&["AB12"], MessageStatus::Delivered), later).await.unwrap();
            assert_eq!(late, ReceiptMatch::Held);
            store.close().await.unwrap();
        }
    }

    on_both! {
        /// A carrier that never sends a receipt does not keep its messages for ever: a sent
        /// message goes `retention` after its validity ended, receipt or not.
        async fn a_sent_message_without_a_final_receipt_goes_retention_after_its_validity(place) {
            let (store, now) = (place.open().await, SystemTime::now());
            let (id, _) = store.insert_message(new_message(now), None, now).await.unwrap();
            store.mark_submitted(&id, "alpha", "AB12", attempt(), now).await.unwrap();
            let progress = IncomingReceipt { final_status: None, ..received(&["ab12"], MessageStatus::Delivered) };
            store.apply_receipt("alpha", progress, now).await.unwrap();
            let retention = Duration::from_secs(3600);
            let deadline = now + Duration::from_secs(300);
            assert_eq!(store.sweep(retention, deadline + retention - Duration::from_secs(1)).await.unwrap().0, 0);
            assert_eq!(store.message(&id).await.unwrap().unwrap().status, MessageStatus::Submitted);
            assert_eq!(store.sweep(retention, deadline + retention + Duration::from_secs(1)).await.unwrap().0, 1);
            assert!(store.message(&id).await.unwrap().is_none());
            assert_eq!(store.engine.count(&[keys::RECEIPT_INDEX]).await.unwrap(), 0, "its receipt index went too");
            assert_eq!(store.engine.count(&[keys::MESSAGE_DONE]).await.unwrap(), 0);
            store.close().await.unwrap();
        }
    }

    on_both! {
        /// Submits recorded at once move their messages' done rows with one row; the sweep
        /// reads each record, so one whose receipt came after its validity ended stays until
        /// its own time.
        async fn a_batch_of_submits_shares_one_done_row_and_each_message_goes_at_its_own_time(place) {
            let (store, now) = (place.open().await, SystemTime::now());
            let mut ids = Vec::new();
            for _ in 0..3 {
                ids.push(store.insert_message(new_message(now), None, now).await.unwrap().0);
            }
            let smsc_ids = ["AB10", "AB11", "AB12"];
            // Held while the three submits come in, so that one batch records them all.
            let recording = store.submits.recording.lock().await;
            let submits = ids.iter().zip(smsc_ids).map(|(id, smsc_id)| store.mark_submitted(id, "alpha", smsc_id, attempt(), now));
            let mut submits = std::pin::pin!(futures::future::join_all(submits));
            assert!(futures::poll!(&mut submits).is_pending());
            drop(recording);
            for recorded in submits.await {
                assert_eq!(recorded.unwrap(), Some(MessageStatus::Submitted));
            }
            let rows = store.engine.scan(&[keys::MESSAGE_DONE], None, 10).await.unwrap();
            assert_eq!(rows.len(), 1, "one row for the batch: {rows:?}");
            let late = now + Duration::from_secs(400);
            store.apply_receipt("alpha", received(&["ab12"], MessageStatus::Delivered), late).await.unwrap();

            let (retention, deadline) = (Duration::from_secs(3600), now + Duration::from_secs(300));
            assert_eq!(store.sweep(retention, deadline + retention - Duration::from_secs(1)).await.unwrap().0, 0, "validity not over");
            assert_eq!(store.sweep(retention, deadline + retention + Duration::from_secs(1)).await.unwrap().0, 2);
            assert!(store.message(&ids[0]).await.unwrap().is_none() && store.message(&ids[1]).await.unwrap().is_none());
            assert!(store.message(&ids[2]).await.unwrap().is_some(), "its receipt came later");
            assert_eq!(store.sweep(retention, late + retention + Duration::from_secs(1)).await.unwrap().0, 1);
            assert!(store.message(&ids[2]).await.unwrap().is_none());
            assert_eq!(store.engine.count(&[keys::MESSAGE_DONE]).await.unwrap(), 0);
            store.close().await.unwrap();
        }
    }

    on_both! {
        /// Stores of earlier versions keep a delivered message's done row at its receipt, not
        /// at its validity's end: the sweep moves the row on instead of losing the message.
        async fn a_done_row_of_an_earlier_version_is_moved_to_when_the_record_may_go(place) {
            let (store, now) = (place.open().await, SystemTime::now());
            let (id, _) = store.insert_message(new_message(now), None, now).await.unwrap();
            store.mark_submitted(&id, "alpha", "AB12", attempt(), now).await.unwrap();
            store.apply_receipt("alpha", received(&["ab12"], MessageStatus::Delivered), now).await.unwrap();
            let deadline = record::to_ms(now + Duration::from_secs(300));
            store.engine.delete(&keys::done(keys::MESSAGE_DONE, deadline, &id)).await.unwrap();
            store.engine.put(&keys::done(keys::MESSAGE_DONE, record::to_ms(now), &id), &[]).await.unwrap();

            let retention = Duration::from_secs(3600);
            assert_eq!(store.sweep(retention, now + retention + Duration::from_secs(1)).await.unwrap().0, 0);
            let rows: Vec<Vec<u8>> = store.engine.scan(&[keys::MESSAGE_DONE], None, 10).await.unwrap().into_iter().map(|(k, _)| k).collect();
            assert_eq!(rows, vec![keys::done(keys::MESSAGE_DONE, deadline, &id)], "moved to the end of its validity");
            assert_eq!(store.sweep(retention, now + retention + Duration::from_secs(301)).await.unwrap().0, 1);
            assert!(store.message(&id).await.unwrap().is_none());
            store.close().await.unwrap();
        }
    }

    on_both! {
        /// Receipts racing their submit_sm_resp from other threads are matched or held, never lost
        /// between the two: the correlation stripe orders each receipt against its submit.
        async fn receipts_racing_their_submits_all_end_matched(place) {
            let (store, now) = (place.open().await, SystemTime::now());
            let mut ids = Vec::new();
            for _ in 0..400 {
                ids.push(store.insert_message(new_message(now), None, now).await.unwrap().0);
            }
            let mut tasks = Vec::new();
            for (n, id) in ids.iter().copied().enumerate() {
                let smsc_id = format!("{:x}", 0x1000 + n);
                let (submits, receipts) = (store.clone(), store.clone());
                let receipt_id = smsc_id.clone();
                tasks.push(tokio::spawn(async move { submits.mark_submitted(&id, "alpha", &smsc_id, attempt(), now).await.unwrap() }));
                tasks.push(tokio::spawn(async move {
                    receipts.apply_receipt("alpha", received(&[&receipt_id], MessageStatus::Delivered), now).await.unwrap();
                    None
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
            for id in &ids {
                assert_eq!(store.message(id).await.unwrap().unwrap().status, MessageStatus::Delivered, "{id}");
            }
            assert_eq!((store.held_receipts(), store.counts().await.unwrap().2), (0, 0), "a receipt was left held");
            store.close().await.unwrap();
        }
    }

    /// `carrier`'s receipt index rows: `r` rows, and on sled the receipt window's `t` rows.
    async fn index_rows(store: &Store, carrier: &str) -> usize {
        let index_prefix = keys::key(keys::RECEIPT_INDEX, &[carrier.as_bytes(), b""]);
        let mut rows = store.engine.count(&index_prefix).await.unwrap();
        let mut pages = store.engine.pages(&[keys::WINDOW]);
        while let Some(page) = pages.next().await.unwrap() {
            rows += page.iter().filter(|(_, index_key)| index_key.starts_with(&index_prefix)).count();
        }
        rows
    }

    on_both! {
        async fn a_receipt_matches_through_the_one_index_row_of_its_submit(place) {
            let (store, now) = (place.open().await, SystemTime::now());
            // (submit_sm_resp id, the receipt's id as each reading reads it)
            let pairs: [(&str, &[&str]); 3] =
                [("70BA8A69", &["1891273321", "70ba8a69"]), ("0059113978", &["38601fa", "59113978"]), ("a29f6845", &["A29F6845"])];
            for (i, (response, read_as)) in pairs.into_iter().enumerate() {
                let (id, _) = store.insert_message(new_message(now), None, now).await.unwrap();
                let carrier = format!("c{i}");
                store.mark_submitted(&id, &carrier, response, attempt(), now).await.unwrap();
                assert_eq!(index_rows(&store, &carrier).await, 1, "{response}: one index row");
                let matched = store.apply_receipt(&carrier, received(read_as, MessageStatus::Delivered), now).await.unwrap();
                let reading = read_as.iter().position(|r| crate::smsc_id::canonical(r) == crate::smsc_id::canonical(response));
                assert_eq!(
                    matched,
                    ReceiptMatch::Matched { id, status: MessageStatus::Delivered, latency: Some(Duration::ZERO), finished: true, reading }
                );
            }
            store.close().await.unwrap();
        }
    }

    on_both! {
        /// Receipts applied as one batch end as they would one by one, in order: one message's
        /// progress report, final receipt and late duplicate; a choice between two messages
        /// made on the statuses the batch itself just changed; ambiguity; an early receipt.
        async fn a_batch_of_receipts_ends_as_the_same_receipts_one_by_one(place) {
            let (store, now) = (place.open().await, SystemTime::now());
            let mut ids = Vec::new();
            for smsc_id in ["a1", "b2", "c3", "d4"] {
                let (id, _) = store.insert_message(new_message(now), None, now).await.unwrap();
                store.mark_submitted(&id, "alpha", smsc_id, attempt(), now).await.unwrap();
                ids.push(id);
            }
            let progress = IncomingReceipt { final_status: None, stat: "ENROUTE".into(), ..received(&["a1"], MessageStatus::Delivered) };
            let batch = vec![
                progress,
                received(&["a1"], MessageStatus::Delivered),
                received(&["a1"], MessageStatus::Undeliverable),
                received(&["a1", "b2"], MessageStatus::Delivered),
                received(&["c3", "d4"], MessageStatus::Delivered),
                received(&["e5"], MessageStatus::Delivered),
            ];
            let applied = store.apply_receipts("alpha", batch, now).await.unwrap();
            let matched = |i: usize, status, finished, reading| ReceiptMatch::Matched { id: ids[i], status, latency: Some(Duration::ZERO), finished, reading };
            assert_eq!(
                applied,
                vec![
                    matched(0, MessageStatus::Submitted, false, Some(0)),
                    matched(0, MessageStatus::Delivered, true, Some(0)),
                    ReceiptMatch::Late { id: ids[0] },
                    // a1 is final by now (earlier in this batch): only b2 still waits.
                    matched(1, MessageStatus::Delivered, true, None),
                    ReceiptMatch::Ambiguous,
                    ReceiptMatch::Held,
                ]
            );
            let statuses: Vec<MessageStatus> = futures::future::join_all(ids.iter().map(|id| store.message(id))).await.into_iter().map(|r| r.unwrap().unwrap().status).collect();
            assert_eq!(statuses, [MessageStatus::Delivered, MessageStatus::Delivered, MessageStatus::Submitted, MessageStatus::Submitted]);
            let a1 = store.message(&ids[0]).await.unwrap().unwrap();
            assert_eq!(a1.receipt.map(|r| r.stat), Some("DELIVERED".to_string()), "the late receipt changed nothing");
            assert_eq!((store.held_receipts(), store.counts().await.unwrap().2), (1, 1));
            store.close().await.unwrap();
        }
    }

    on_both! {
        /// Two early receipts held under overlapping candidate ids (the carrier's TLV says 1a and
        /// 26; each text id also reads as another's): each submit takes the receipt that names
        /// its id first and removes only that receipt's rows, in either order of holding and of
        /// submits.
        async fn held_receipts_sharing_a_candidate_id_each_go_to_their_own_message(place) {
            let (store, now) = (place.open().await, SystemTime::now());
            let early = |exact: &str, other: &str, status: MessageStatus| IncomingReceipt {
                exact_id: Some(exact.into()),
                read_ids: vec![(0, exact.into()), (1, other.into())],
                ..received(&[], status)
            };
            let for_1a = || early("1a", "26", MessageStatus::Delivered);
            let for_26 = || early("26", "38", MessageStatus::Undeliverable);
            // (carrier, held in this order, submitted in this order)
            let cases = [("alpha", [for_26(), for_1a()], ["1A", "26"]), ("beta", [for_1a(), for_26()], ["26", "1A"])];
            for (carrier, held, submitted) in cases {
                for receipt in held {
                    assert_eq!(store.apply_receipt(carrier, receipt, now).await.unwrap(), ReceiptMatch::Held);
                }
                assert_eq!(store.counts().await.unwrap().2, 4);
                for (n, smsc_id) in submitted.into_iter().enumerate() {
                    let (id, _) = store.insert_message(new_message(now), None, now).await.unwrap();
                    let status = store.mark_submitted(&id, carrier, smsc_id, attempt(), now).await.unwrap();
                    let own = if smsc_id == "1A" { MessageStatus::Delivered } else { MessageStatus::Undeliverable };
                    assert_eq!(status, Some(own), "{smsc_id} got another message's receipt ({submitted:?})");
                    assert_eq!(store.counts().await.unwrap().2, 2 - 2 * n, "only the applied receipt's rows went ({carrier})");
                }
                assert_eq!(store.held_receipts(), 0);
            }
            store.close().await.unwrap();
        }
    }

    on_both! {
        /// Submits recorded at once (a batch on a database) end as one by one: a plain submit, a
        /// late response for a finished message, a message that is not there, and two messages
        /// whose responses share the SMSC id a receipt is held for: exactly one gets it.
        async fn submits_recorded_at_once_end_as_one_by_one(place) {
            let (store, now) = (place.open().await, SystemTime::now());
            let mut ids = Vec::new();
            for _ in 0..4 {
                ids.push(store.insert_message(new_message(now), None, now).await.unwrap().0);
            }
            store.finish(&ids[1], MessageStatus::Expired, None, None, now).await.unwrap();
            assert_eq!(store.apply_receipt("alpha", received(&["77"], MessageStatus::Delivered), now).await.unwrap(), ReceiptMatch::Held);
            let missing = MessageId::new(1);
            let submits = [(ids[0], "10"), (ids[1], "11"), (missing, "12"), (ids[2], "77"), (ids[3], "77")];
            let recorded = futures::future::join_all(submits.iter().map(|(id, smsc_id)| store.mark_submitted(id, "alpha", smsc_id, attempt(), now))).await;
            let recorded: Vec<Option<MessageStatus>> = recorded.into_iter().map(Result::unwrap).collect();
            assert_eq!(&recorded[..3], &[Some(MessageStatus::Submitted), Some(MessageStatus::Expired), None]);
            let mut shared = recorded[3..].to_vec();
            shared.sort_by_key(|s| s.map(|s| s.as_str()));
            assert_eq!(shared, [Some(MessageStatus::Delivered), Some(MessageStatus::Submitted)], "the held receipt went to one of them");
            assert_eq!(store.message(&ids[1]).await.unwrap().unwrap().attempts.len(), 1, "the late response is on record");
            assert_eq!((store.held_receipts(), store.counts().await.unwrap().2), (0, 0));
            for id in [ids[0], ids[2], ids[3]] {
                assert!(store.engine.get(&keys::queue(&id)).await.unwrap().is_none(), "left the queue");
            }
            store.close().await.unwrap();
        }
    }

    on_both! {
        /// The engine's batched calls: a write takes each key's last value and deletes in the
        /// same call; reads of many keys, and of the first row under each of many prefixes.
        async fn engine_writes_take_the_last_value_of_a_key_and_reads_answer_in_order(place) {
            let store = place.open().await;
            let key = |name: &str| [b"\xf0".as_slice(), name.as_bytes()].concat();
            store.engine.put(&key("one"), b"old").await.unwrap();
            store.engine.put(&key("three"), b"old").await.unwrap();
            let writes = vec![
                (key("one"), Some(b"first".to_vec())),
                (key("two"), Some(b"two".to_vec())),
                (key("one"), Some(b"last".to_vec())),
                (key("three"), None),
                (key("two"), None),
                (key("four"), Some(b"four".to_vec())),
            ];
            store.engine.write(writes).await.unwrap();
            let read = store.engine.get_many(&[key("two"), key("one"), key("three"), key("four"), key("one")]).await.unwrap();
            assert_eq!(read, vec![None, Some(b"last".to_vec()), None, Some(b"four".to_vec()), Some(b"last".to_vec())]);
            let firsts = store.engine.first_under_each(&[key("t"), key("o"), key("f"), key("on")]).await.unwrap();
            let first = |name: &str, value: &[u8]| Some((key(name), value.to_vec()));
            // Nothing under "t", whatever follows it; each answer in the order asked.
            assert_eq!(firsts, vec![None, first("one", b"last"), first("four", b"four"), first("one", b"last")]);
            store.close().await.unwrap();
        }
    }

    on_both! {
        async fn early_receipts_wait_for_their_submit_and_unmatched_ones_are_dropped_and_reported_once(place) {
            let (store, now) = (place.open().await, SystemTime::now());
            let (id, _) = store.insert_message(new_message(now), None, now).await.unwrap();
            // Receipt in decimal (read also as hex) before the submit_sm_resp names the id in hex.
            assert_eq!(
                store.apply_receipt("alpha", received(&["1891273321", "70ba8a69"], MessageStatus::Delivered), now).await.unwrap(),
                ReceiptMatch::Held
            );
            assert_eq!(store.mark_submitted(&id, "alpha", "70BA8A69", attempt(), now).await.unwrap(), Some(MessageStatus::Delivered));
            assert_eq!(store.counts().await.unwrap().2, 0);

            // A receipt for nothing on another carrier: held, then dropped and reported once.
            store.apply_receipt("beta", received(&["77"], MessageStatus::Undeliverable), now).await.unwrap();
            assert_eq!(store.held_receipts(), 1);
            let retention = Duration::from_secs(7 * 24 * 3600);
            assert!(store.sweep(retention, now).await.unwrap().1.is_empty(), "too young to call unmatched");
            let later = now + StoreOptions::default().hold_receipts_for + Duration::from_secs(1);
            assert_eq!(store.sweep(retention, later).await.unwrap().1, vec!["beta".to_string()]);
            assert_eq!((store.counts().await.unwrap().2, store.held_receipts()), (0, 0), "dropped, not kept for the retention");
            assert!(store.sweep(retention, later).await.unwrap().1.is_empty(), "reported once");
            store.close().await.unwrap();
        }
    }

    on_both! {
        async fn held_receipts_are_capped_and_their_count_survives_a_restart(place) {
            let now = SystemTime::now();
            let capped = StoreOptions { max_held_receipts: 3, ..place.options() };
            {
                let store = place.open_with(capped.clone()).await;
                for n in 0..5 {
                    let expected = if n < 3 { ReceiptMatch::Held } else { ReceiptMatch::Dropped };
                    assert_eq!(
                        store.apply_receipt("alpha", received(&[&format!("{}", 100 + n)], MessageStatus::Delivered), now).await.unwrap(),
                        expected
                    );
                }
                store.close().await.unwrap();
            }
            let store = place.open_with(capped.clone()).await;
            assert_eq!(store.held_receipts(), 3, "counted at open");
            assert_eq!(store.apply_receipt("alpha", received(&["999"], MessageStatus::Delivered), now).await.unwrap(), ReceiptMatch::Dropped);
            // One held receipt meets its submit: room for another.
            let (id, _) = store.insert_message(new_message(now), None, now).await.unwrap();
            store.mark_submitted(&id, "alpha", "100", attempt(), now).await.unwrap();
            assert_eq!(store.held_receipts(), 2);
            store.close().await.unwrap();
        }
    }

    on_both! {
        async fn acknowledged_inserts_survive_reopening_and_are_queued_again(place) {
            let now = SystemTime::now();
            let mut ids = Vec::new();
            {
                let store = place.open().await;
                for _ in 0..50 {
                    ids.push(store.insert_message(new_message(now), None, now).await.unwrap().0);
                }
                // As the dispatcher does: marked, and on disk before the submit goes out.
                store.mark_in_flight(&ids[0]).await.unwrap();
                store.durable().await.unwrap();
                assert_eq!(store.engine.get(&keys::queue(&ids[0])).await.unwrap().as_deref(), Some(keys::IN_FLIGHT));
                // A submit that failed and was recorded is no longer in flight.
                store.mark_in_flight(&ids[1]).await.unwrap();
                store.durable().await.unwrap();
                store.record_attempt(&ids[1], attempt(), false).await.unwrap();
                // A message finished meanwhile is not queued again by its mark.
                store.mark_in_flight(&ids[2]).await.unwrap();
                store.finish(&ids[2], MessageStatus::Failed, None, None, now).await.unwrap();
                store.durable().await.unwrap();
                assert!(store.engine.get(&keys::queue(&ids[2])).await.unwrap().is_none());
                store.close().await.unwrap();
            }
            let store = place.open().await;
            let queued = store.queued().await.unwrap();
            let expected: Vec<MessageId> = ids.iter().copied().filter(|id| *id != ids[2]).collect();
            assert_eq!(queued.iter().map(|(id, _)| *id).collect::<Vec<_>>(), expected, "all of them, in order");
            assert!(queued[0].1.in_flight, "a submit cut short is visible for the resubmit count");
            assert!(!queued[1].1.in_flight);
            assert_eq!(queued[1].1.attempts.len(), 1);
            store.close().await.unwrap();
        }
    }

    on_both! {
        /// Recovery reading the queue while this process submits a message: the in-flight mark
        /// is this process's own, so the message is neither counted unconfirmed nor handed again
        /// (a second hand-off of an OTP message would send a second code).
        async fn a_submit_under_way_in_this_process_is_left_to_it_by_recovery(place) {
            let (store, now) = (place.open().await, SystemTime::now());
            let (id, _) = store.insert_message(new_message(now), None, now).await.unwrap();
            store.mark_in_flight(&id).await.unwrap();
            store.durable().await.unwrap();
            let page = store.queued_page(None, &id, 10, &|_| true).await.unwrap();
            assert!(page.is_empty(), "ours: left out");
            assert_eq!(store.message(&id).await.unwrap().unwrap().unconfirmed, 0);
            assert_eq!(store.engine.get(&keys::queue(&id)).await.unwrap().as_deref(), Some(keys::IN_FLIGHT), "its mark stays");
            // A dead process's mark is counted once.
            let page = store.queued_page(None, &id, 10, &|_| false).await.unwrap();
            assert_eq!((page.len(), page[0].1.in_flight, page[0].1.unconfirmed), (1, true, 1));
            store.close().await.unwrap();
        }
    }

    on_both! {
        /// The states a crash can leave between the ordered writes of one change (module doc).
        async fn changes_cut_short_by_a_crash_are_tolerated(place) {
            let now = SystemTime::now();
            let (submitted, queued);
            {
                let store = place.open().await;
                submitted = store.insert_message(new_message(now), None, now).await.unwrap().0;
                queued = store.insert_message(new_message(now), None, now).await.unwrap().0;
                store.mark_submitted(&submitted, "alpha", "AB12", attempt(), now).await.unwrap();
                // Cut short after the record: its queue row, marked in flight, is still there.
                store.engine.put(&keys::queue(&submitted), keys::IN_FLIGHT).await.unwrap();
                // Cut short before the record: a queue row with no record behind it.
                store.engine.put(&keys::queue(&MessageId::new(u64::MAX)), &[]).await.unwrap();
                // A finished change's done row written, the record not yet final.
                store.engine.put(&keys::done(keys::MESSAGE_DONE, 1, &queued), &[]).await.unwrap();
                crash(store).await;
            }
            let store = place.open().await;
            let requeued: Vec<MessageId> = store.queued().await.unwrap().into_iter().map(|(id, _)| id).collect();
            assert_eq!(requeued, vec![queued], "only the message still waiting is sent again");
            assert_eq!(store.counts().await.unwrap().1, 1, "stale queue rows are dropped");
            assert_eq!(store.queue_stats(now).await.0, 1);

            assert_eq!(store.sweep(Duration::from_secs(1), now).await.unwrap().0, 0, "a queued message is never swept");
            assert!(store.message(&queued).await.unwrap().is_some());
            // The stray done row is gone; the submitted message keeps its own, at its validity's end.
            let rows: Vec<Vec<u8>> = store.engine.scan(&[keys::MESSAGE_DONE], None, 10).await.unwrap().into_iter().map(|(k, _)| k).collect();
            let deadline = record::to_ms(now + Duration::from_secs(300));
            assert_eq!(rows, vec![keys::done(keys::MESSAGE_DONE, deadline, &submitted)], "the stray done row is gone");
            store.close().await.unwrap();
        }
    }

    on_both! {
        /// A store written before the binary record layout: its queued JSON record is read,
        /// sent and finished, and its first rewrite moves it to the binary layout.
        async fn a_store_of_json_records_still_reads_and_moves_to_binary_on_rewrite(place) {
            let now = SystemTime::now();
            let store = place.open().await;
            let id = store.new_id();
            let record = MessageRecord::queued(new_message(now), record::to_ms(now), None);
            store.engine.put(&keys::message(&id), &serde_json::to_vec(&record).unwrap()).await.unwrap();
            store.engine.put(&keys::queue(&id), &[]).await.unwrap();
            assert_eq!(store.message(&id).await.unwrap(), Some(record.clone()));
            assert_eq!(store.queued().await.unwrap(), vec![(id, record)]);

            store.mark_submitted(&id, "alpha", "AB12", attempt(), now).await.unwrap();
            let row = store.engine.get(&keys::message(&id)).await.unwrap().unwrap();
            assert_eq!(row[0], 1, "rewritten in layout version 1");
            assert_eq!(store.message(&id).await.unwrap().unwrap().smsc_message_id.as_deref(), Some("AB12"));
            assert!(store.queued().await.unwrap().is_empty());
            store.close().await.unwrap();
        }
    }

    /// On sled a receipt that comes within the receipt window is matched without an index row
    /// ever being written; when the window moves on, only the message still waiting gets one,
    /// and its receipt is matched through it.
    #[tokio::test]
    async fn only_a_message_still_waiting_when_the_receipt_window_moves_on_gets_an_index_row() {
        let place = Place::new(settings::BackendKind::Sled).await.unwrap();
        let (store, now) = (place.open().await, SystemTime::now());
        let mut ids = Vec::new();
        for smsc_id in ["AA01", "AA02", "AA03"] {
            let (id, _) = store.insert_message(new_message(now), None, now).await.unwrap();
            ids.push(id);
            if smsc_id == "AA03" {
                // Its receipt beats its submit_sm_resp: held, then applied with the submit.
                assert_eq!(
                    store.apply_receipt("alpha", received(&["aa03"], MessageStatus::Delivered), now).await.unwrap(),
                    ReceiptMatch::Held
                );
            }
            store.mark_submitted(&id, "alpha", smsc_id, attempt(), now).await.unwrap();
        }
        let delivered = store.apply_receipt("alpha", received(&["aa01"], MessageStatus::Delivered), now).await.unwrap();
        assert!(matches!(delivered, ReceiptMatch::Matched { finished: true, .. }), "{delivered:?}");
        let again = store.apply_receipt("alpha", received(&["aa01"], MessageStatus::Delivered), now).await.unwrap();
        assert_eq!(again, ReceiptMatch::Late { id: ids[0] }, "a duplicate within the window is late");
        assert_eq!(store.engine.count(&[keys::RECEIPT_INDEX]).await.unwrap(), 0, "no index row while in the window");
        assert_eq!(index_rows(&store, "alpha").await, 1, "a window row for the one still waiting only");

        let window = StoreOptions::default().receipt_window;
        assert_eq!(store.move_window(now + window - Duration::from_secs(1)).await.unwrap(), 0, "not due yet");
        assert_eq!(store.move_window(now + window).await.unwrap(), 3);
        let rows = store.engine.scan(&[keys::RECEIPT_INDEX], None, 10).await.unwrap();
        assert_eq!(rows, [(keys::receipt_index("alpha", "aa02"), keys::index_value(&ids[1], None))], "only the waiting one");
        assert_eq!(store.engine.count(&[keys::WINDOW]).await.unwrap(), 0, "window rows gone");
        let later = now + window + Duration::from_secs(5);
        let delivered = store.apply_receipt("alpha", received(&["aa02"], MessageStatus::Delivered), later).await.unwrap();
        assert!(matches!(delivered, ReceiptMatch::Matched { finished: true, id, .. } if id == ids[1]), "{delivered:?}");
        store.close().await.unwrap();
    }

    /// The window's entries are rows too: after a crash the receipt of a message submitted
    /// just before still matches, and moving the window later gives it its index row.
    #[tokio::test]
    async fn the_receipt_window_survives_a_crash() {
        let place = Place::new(settings::BackendKind::Sled).await.unwrap();
        let now = SystemTime::now();
        let (first, second) = {
            let store = place.open().await;
            let (first, _) = store.insert_message(new_message(now), None, now).await.unwrap();
            let (second, _) = store.insert_message(new_message(now), None, now).await.unwrap();
            store.mark_submitted(&first, "alpha", "BB01", attempt(), now).await.unwrap();
            store.mark_submitted(&second, "alpha", "BB02", attempt(), now).await.unwrap();
            crash(store).await;
            (first, second)
        };
        let store = place.open().await;
        assert_eq!(store.engine.count(&[keys::RECEIPT_INDEX]).await.unwrap(), 0);
        let matched = store.apply_receipt("alpha", received(&["bb01"], MessageStatus::Delivered), now).await.unwrap();
        assert!(matches!(matched, ReceiptMatch::Matched { id, .. } if id == first), "{matched:?}");
        let window = StoreOptions::default().receipt_window;
        assert_eq!(store.move_window(now + window).await.unwrap(), 2);
        let rows = store.engine.scan(&[keys::RECEIPT_INDEX], None, 10).await.unwrap();
        assert_eq!(rows, [(keys::receipt_index("alpha", "bb02"), keys::index_value(&second, None))], "the one still waiting");
        let matched = store.apply_receipt("alpha", received(&["bb02"], MessageStatus::Delivered), now + window).await.unwrap();
        assert!(matches!(matched, ReceiptMatch::Matched { id, .. } if id == second), "{matched:?}");
        store.close().await.unwrap();
    }

    /// More submits than `receipt_window_max` move the oldest out early, whatever their age.
    #[tokio::test]
    async fn a_full_receipt_window_moves_its_oldest_out_early() {
        let place = Place::new(settings::BackendKind::Sled).await.unwrap();
        let store = place.open_with(StoreOptions { receipt_window_max: 2, ..place.options() }).await;
        let now = SystemTime::now();
        let mut ids = Vec::new();
        for smsc_id in ["CC01", "CC02", "CC03"] {
            let (id, _) = store.insert_message(new_message(now), None, now).await.unwrap();
            store.mark_submitted(&id, "alpha", smsc_id, attempt(), now).await.unwrap();
            ids.push(id);
        }
        assert_eq!(store.receipt_window_entries(), 3);
        assert_eq!(store.move_window(now).await.unwrap(), 1);
        assert_eq!(store.receipt_window_entries(), 2, "the gauge's count follows");
        let rows = store.engine.scan(&[keys::RECEIPT_INDEX], None, 10).await.unwrap();
        assert_eq!(rows, [(keys::receipt_index("alpha", "cc01"), keys::index_value(&ids[0], None))]);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn every_group_commit_records_the_queue_depth_and_an_open_after_a_crash_reads_it() {
        let place = Place::new(settings::BackendKind::Sled).await.unwrap();
        let now = SystemTime::now();
        let stray = MessageId::new(u64::MAX);
        {
            let store = place.open().await;
            for _ in 0..3 {
                store.insert_message(new_message(now), None, now).await.unwrap();
            }
            let depth = store.engine.get(keys::QUEUE_DEPTH).await.unwrap();
            assert_eq!(depth, Some(3u64.to_be_bytes().to_vec()), "written with the inserts' group commit");
            // A row the in-memory depth does not know of: a count would find it.
            store.engine.put(&keys::queue(&stray), &[]).await.unwrap();
            crash(store).await;
        }
        {
            let store = place.open().await;
            assert_eq!(store.queued.load(Ordering::Relaxed), 3, "read from the last group commit, not counted");
            let Engine::Sled(db) = &store.engine else { unreachable!() };
            // A crash of a version that kept no depth after the open: nothing on record.
            db.remove(keys::QUEUE_DEPTH).unwrap();
            db.flush().unwrap();
            store.stop.cancel();
            let flusher = lock(&store.flusher).take();
            flusher.unwrap().await.unwrap();
        }
        let store = place.open().await;
        assert_eq!(store.queued.load(Ordering::Relaxed), 4, "counted");
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn an_empty_queue_sets_right_a_depth_a_crash_left_wrong() {
        let place = Place::new(settings::BackendKind::Sled).await.unwrap();
        let now = SystemTime::now();
        let (id, _) = {
            let store = place.open().await;
            let queued = store.insert_message(new_message(now), None, now).await.unwrap();
            // Two messages the crash cut short: counted, but their rows never reached the disk.
            store.queue_changed(2);
            crash(store).await;
            queued
        };
        let store = place.open().await;
        assert_eq!(store.queue_stats(now).await.0, 3, "as recorded: the queue is not empty");
        store.mark_submitted(&id, "alpha", "AB12", attempt(), now).await.unwrap();
        assert_eq!(store.queue_stats(now).await.0, 0, "the queue is empty");
        store.insert_message(new_message(now), None, now).await.unwrap();
        assert_eq!(store.queue_stats(now).await.0, 1);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn the_data_dir_and_its_files_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = Store::open(&data, &StoreOptions::default()).await.unwrap();
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

    on_both! {
        async fn ids_sort_in_arrival_order_and_count_nothing(place) {
            let (store, now) = (place.open().await, SystemTime::now());
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
    }

    on_both! {
        async fn concurrent_writers_share_flushes_without_deadlock(place) {
            let (store, now) = (place.open().await, SystemTime::now());
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
            assert_eq!(store.counts().await.unwrap().1, 64 * 20);
            store.close().await.unwrap();
        }
    }

    on_both! {
        async fn idempotency_entries_replay_conflict_and_expire(place) {
            let (store, now) = (place.open().await, SystemTime::now());
            assert_eq!(store.check_idempotency("test", "k1", "h1", now).await.unwrap(), Idempotency::New);
            let (id, _) = store.insert_message(new_message(now), Some(("k1", "h1")), now).await.unwrap();
            assert_eq!(store.check_idempotency("test", "k1", "h1", now).await.unwrap(), Idempotency::Replay(id, None));
            assert_eq!(store.check_idempotency("test", "k1", "h2", now).await.unwrap(), Idempotency::Conflict);
            assert_eq!(store.check_idempotency("other", "k1", "h1", now).await.unwrap(), Idempotency::New);
            let tomorrow = now + IDEMPOTENCY_WINDOW + Duration::from_secs(1);
            assert_eq!(store.check_idempotency("test", "k1", "h2", tomorrow).await.unwrap(), Idempotency::New);
            store.close().await.unwrap();
        }
    }
}
