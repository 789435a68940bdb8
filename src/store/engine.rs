//! The store's storage engine: an ordered map from byte keys to byte values, which is all the
//! store logic above it uses. sled is the embedded one; PostgreSQL (`postgres.rs`, cluster
//! mode) the shared one, behind the same calls, so every rule of the store is written once.
//!
//! Two kinds of write: single rows written one after another (the message path, where order
//! gives crash safety, see the module doc of `store`), and [`Tx`]: rows read and written as one
//! atomic change under named locks (verifications, whose rows guard codes and limits).

use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::MutexGuard;

use super::StoreError;
use super::locks::Locks;
use super::postgres::{PgTx, Postgres};

/// A storage engine.
pub(super) enum Engine {
    Sled(sled::Db),
    Postgres(Box<Postgres>),
}

/// Rows in key order.
pub(super) type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Rows to mark with the next flush: each goes from an empty value to `mark`, if it is still
/// there and still empty then. For a mark a caller waits for anyway (it waits for the flush),
/// at no cost of its own: on a database, no round trip of its own.
#[derive(Clone)]
pub(super) struct Marks {
    mark: &'static [u8],
    keys: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Marks {
    pub(super) fn new(mark: &'static [u8]) -> Marks {
        Marks { mark, keys: Default::default() }
    }

    pub(super) fn add(&self, key: Vec<u8>) {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).push(key);
    }

    pub(super) fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.keys.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(super) fn mark(&self) -> &'static [u8] {
        self.mark
    }
}

/// Rows to write in order: a value, or `None` to delete the row.
pub(super) type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Rows read per page when a walk covers a whole kind of row.
pub(super) const PAGE: usize = 1024;

/// A walk over every row under a prefix, a page at a time, yielding to other tasks between
/// pages (a sweep may cover a day of traffic). Rows the caller deletes meanwhile are fine.
pub(super) struct Pages<'a> {
    engine: &'a Engine,
    prefix: Vec<u8>,
    after: Option<Vec<u8>>,
}

impl Pages<'_> {
    /// The next page, or `None` at the end.
    pub(super) async fn next(&mut self) -> Result<Option<Rows>, StoreError> {
        if self.after.is_some() {
            tokio::task::yield_now().await;
        }
        let rows = self.engine.scan(&self.prefix, self.after.as_deref(), PAGE).await?;
        let Some((last, _)) = rows.last() else { return Ok(None) };
        self.after = Some(last.clone());
        Ok(Some(rows))
    }
}

/// The first key after every key that starts with `prefix` (`None`: no such key).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Engine {
    pub(super) async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Engine::Sled(db) => Ok(db.get(key)?.map(|v| v.to_vec())),
            Engine::Postgres(pg) => pg.get(key).await,
        }
    }

    pub(super) async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        match self {
            Engine::Sled(db) => {
                db.insert(key, value)?;
                Ok(())
            }
            Engine::Postgres(pg) => pg.put(key, value).await,
        }
    }

    /// Writes rows in order. sled writes them one by one: a crash keeps a prefix of them,
    /// which the store's write order makes safe. PostgreSQL writes them in one statement (one
    /// round trip instead of one per row), all or nothing, which is safe under any order.
    pub(super) async fn write(&self, writes: Writes) -> Result<(), StoreError> {
        match self {
            Engine::Sled(db) => {
                for (key, value) in writes {
                    match value {
                        Some(value) => drop(db.insert(key, value)?),
                        None => drop(db.remove(key)?),
                    }
                }
                Ok(())
            }
            Engine::Postgres(pg) => pg.write(writes).await,
        }
    }

    /// Writes rows all or nothing: a change that carries events (sled's batch costs two disk
    /// writes of its own, so only then; a database's single statement is atomic anyway).
    pub(super) async fn write_atomically(&self, writes: Writes) -> Result<(), StoreError> {
        match self {
            Engine::Sled(db) => {
                let mut batch = sled::Batch::default();
                for (key, value) in writes {
                    match value {
                        Some(value) => batch.insert(key, value),
                        None => batch.remove(key),
                    }
                }
                Ok(db.apply_batch(batch)?)
            }
            Engine::Postgres(pg) => pg.write(writes).await,
        }
    }

    /// The values of `keys` (`None` where there is no row), in the order asked.
    pub(super) async fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        match self {
            Engine::Sled(db) => keys.iter().map(|key| Ok(db.get(key)?.map(|v| v.to_vec()))).collect(),
            Engine::Postgres(pg) => {
                let found: std::collections::HashMap<Vec<u8>, Vec<u8>> = pg.get_many(keys).await?.into_iter().collect();
                Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
            }
        }
    }

    /// The first row under each of `prefixes`, in one read (one round trip on a database: the
    /// receipts held for a batch of submits).
    pub(super) async fn first_under_each(&self, prefixes: &[Vec<u8>]) -> Result<Vec<Option<(Vec<u8>, Vec<u8>)>>, StoreError> {
        let ends: Option<Vec<Vec<u8>>> = prefixes.iter().map(|p| prefix_end(p)).collect();
        match (self, ends) {
            (Engine::Postgres(pg), Some(ends)) => pg.first_under_each(prefixes, &ends).await,
            _ => {
                let mut firsts = Vec::with_capacity(prefixes.len());
                for prefix in prefixes {
                    firsts.push(self.scan(prefix, None, 1).await?.into_iter().next());
                }
                Ok(firsts)
            }
        }
    }

    /// Removes a row; returns its value if it was there.
    pub(super) async fn delete(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Engine::Sled(db) => Ok(db.remove(key)?.map(|v| v.to_vec())),
            Engine::Postgres(pg) => pg.delete(key).await,
        }
    }

    /// Sets `key` to `new` only if it holds `old` now (`None`: absent); whether it did.
    pub(super) async fn swap(&self, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) -> Result<bool, StoreError> {
        match self {
            Engine::Sled(db) => Ok(db.compare_and_swap(key, old, new)?.is_ok()),
            Engine::Postgres(pg) => pg.swap(key, old, new).await,
        }
    }

    /// Up to `limit` rows from `start` (inclusive) to `end`, in key order.
    pub(super) async fn range(&self, start: &[u8], end: Bound<&[u8]>, limit: usize) -> Result<Rows, StoreError> {
        match self {
            Engine::Sled(db) => {
                let rows = db.range::<&[u8], _>((Bound::Included(start), end)).take(limit);
                rows.map(|row| row.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::from)).collect()
            }
            Engine::Postgres(pg) => match end {
                Bound::Unbounded => pg.range(start, None, false, limit).await,
                Bound::Excluded(end) => pg.range(start, Some(end), false, limit).await,
                Bound::Included(end) => pg.range(start, Some(end), true, limit).await,
            },
        }
    }

    /// Up to `limit` rows from `start` (inclusive) to `end` (exclusive), last key first: a
    /// listing's newest records.
    pub(super) async fn range_back(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Rows, StoreError> {
        match self {
            Engine::Sled(db) => {
                let rows = db.range::<&[u8], _>(start..end).rev().take(limit);
                rows.map(|row| row.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::from)).collect()
            }
            Engine::Postgres(pg) => pg.range_back(start, end, limit).await,
        }
    }

    /// Up to `limit` rows whose key starts with `prefix`, from `after` (exclusive) if given.
    pub(super) async fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Rows, StoreError> {
        let start = match after {
            Some(key) => [key, &[0]].concat(),
            None => prefix.to_vec(),
        };
        let end = prefix_end(prefix);
        self.range(&start, end.as_deref().map_or(Bound::Unbounded, Bound::Excluded), limit).await
    }

    /// Every row whose key starts with `prefix`, page by page.
    pub(super) fn pages(&self, prefix: &[u8]) -> Pages<'_> {
        Pages { engine: self, prefix: prefix.to_vec(), after: None }
    }

    /// The last key that starts with `prefix`.
    pub(super) async fn last_key(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Engine::Sled(db) => Ok(db.scan_prefix(prefix).next_back().transpose()?.map(|(k, _)| k.to_vec())),
            Engine::Postgres(pg) => pg.last_key(prefix, prefix_end(prefix).as_deref()).await,
        }
    }

    /// How many keys start with `prefix` (walks them all: start-up and tests only).
    pub(super) async fn count(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        match self {
            Engine::Sled(db) => Ok(db.scan_prefix(prefix).count()),
            Engine::Postgres(pg) => pg.count(prefix, prefix_end(prefix).as_deref()).await,
        }
    }

    /// A number never handed out before by this store.
    pub(super) async fn unique(&self) -> Result<u64, StoreError> {
        match self {
            Engine::Sled(db) => Ok(db.generate_id()?),
            Engine::Postgres(pg) => pg.unique().await,
        }
    }

    /// What the group commit calls to make every write so far durable. It first marks the rows
    /// `marks` has collected (each set from empty to `mark` if still empty), as part of the
    /// same flush: on a database, in the same round trip. On sled it also writes `depth` (the
    /// queue's, as the store counts it) to `depth_key`, so that an open after a crash reads
    /// it instead of counting the queue (a database counts its index instead), and syncs
    /// `sled_log`, sled's log file.
    ///
    /// sled's flush ends with `sync_file_range`: the log's pages reach the device, but neither
    /// the device's volatile cache nor the file's new length is made durable, so a power cut
    /// could lose writes already answered (a kill -9 cannot: the kernel holds them). sled's own
    /// thread fsyncs only every `compact_every`. `fdatasync` on our descriptor of the same file
    /// (a sync covers the file, not the descriptor) closes that gap; measured here at 0.1-0.2 ms
    /// after sled's flush (README, Delivery guarantees).
    pub(super) fn flusher(
        &self,
        marks: Marks,
        depth: Arc<AtomicI64>,
        depth_key: &'static [u8],
        sled_log: Option<std::fs::File>,
    ) -> impl Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync + 'static {
        let flush: Box<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync> = match self {
            Engine::Sled(db) => {
                let (db, log) = (db.clone(), sled_log.map(Arc::new));
                Box::new(move || {
                    let (db, log, marks, depth) = (db.clone(), log.clone(), marks.clone(), depth.clone());
                    Box::pin(async move {
                        let flushed = tokio::task::spawn_blocking(move || {
                            for key in marks.take() {
                                db.compare_and_swap(key, Some(&[]), Some(marks.mark)).map_err(|e| e.to_string())?.ok();
                            }
                            let depth = depth.load(Ordering::Relaxed).max(0) as u64;
                            db.insert(depth_key, &depth.to_be_bytes()).map_err(|e| e.to_string())?;
                            db.flush().map_err(|e| e.to_string())?;
                            match log {
                                Some(log) => log.sync_data().map_err(|e| format!("syncing sled's log file: {e}")),
                                None => Ok(()),
                            }
                        });
                        flushed.await.unwrap_or_else(|e| Err(format!("flush task failed: {e}")))
                    })
                })
            }
            Engine::Postgres(pg) => Box::new(pg.flusher(marks)),
        };
        flush
    }

    /// Tells other processes on this store that `id` is queued; nothing to tell on sled.
    pub(super) async fn announce(&self, id: &str) -> Result<(), StoreError> {
        match self {
            Engine::Sled(_) => Ok(()),
            Engine::Postgres(pg) => pg.announce(id).await,
        }
    }

    /// What other processes announce; `None` on sled, where no other process writes.
    pub(super) fn listen(&self, stop: tokio_util::sync::CancellationToken) -> Option<tokio::sync::mpsc::Receiver<String>> {
        match self {
            Engine::Sled(_) => None,
            Engine::Postgres(pg) => Some(pg.listen(stop)),
        }
    }

    /// Whether the engine answers now (a database may be down; sled is in-process).
    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Engine::Sled(_) => Ok(()),
            Engine::Postgres(pg) => pg.ping().await,
        }
    }

    /// Whether other processes write to this engine too.
    pub(super) fn shared(&self) -> bool {
        matches!(self, Engine::Postgres(_))
    }

    /// Whether a failed write leaves the engine failing for good. sled 0.34 does after its first
    /// I/O error (a full disk); a database comes back by itself.
    pub(super) fn failures_stick(&self) -> bool {
        matches!(self, Engine::Sled(_))
    }
}

/// An atomic change under a lock: reads see the rows as they are, writes land all at once on
/// [`Tx::commit`] (or not at all).
pub(super) enum Tx<'a> {
    /// sled runs in one process: one lock serialises every change.
    Sled { db: &'a sled::Db, _locked: MutexGuard<'a, ()>, writes: sled::Batch },
    /// A database transaction holding an advisory lock: serialises the change across nodes.
    Postgres { tx: PgTx, writes: Writes },
}

impl<'a> Tx<'a> {
    /// Starts a change to the rows of `name` (a phone number): changes to one name never
    /// overlap, in this process or (on PostgreSQL) anywhere in the cluster.
    pub(super) async fn begin(engine: &'a Engine, locks: &'a Locks, name: &str) -> Result<Tx<'a>, StoreError> {
        Ok(match engine {
            Engine::Sled(db) => Tx::Sled { db, _locked: locks.verifications.lock().await, writes: sled::Batch::default() },
            Engine::Postgres(pg) => Tx::Postgres { tx: pg.begin(name).await?, writes: Vec::new() },
        })
    }

    pub(super) async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Tx::Sled { db, .. } => Ok(db.get(key)?.map(|v| v.to_vec())),
            Tx::Postgres { tx, .. } => tx.get(key).await,
        }
    }

    pub(super) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        match self {
            Tx::Sled { writes, .. } => writes.insert(key, value),
            Tx::Postgres { writes, .. } => writes.push((key, Some(value))),
        }
    }

    pub(super) fn delete(&mut self, key: Vec<u8>) {
        match self {
            Tx::Sled { writes, .. } => writes.remove(key),
            Tx::Postgres { writes, .. } => writes.push((key, None)),
        }
    }

    pub(super) async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sled { db, writes, .. } => Ok(db.apply_batch(writes)?),
            Tx::Postgres { tx, writes } => tx.commit(writes).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_step_past_every_longer_key() {
        assert_eq!(prefix_end(b"q"), Some(b"r".to_vec()));
        assert_eq!(prefix_end(&[b'e', 0xff]), Some(vec![b'f']));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
