//! The store's storage engine: an ordered map from byte keys to byte values, which is all the
//! store logic above it uses. sled is the embedded one; PostgreSQL (cluster mode, issue 14) is
//! to be the second, behind the same calls, so every rule of the store is written once.
//!
//! Two kinds of write: single rows written one after another (the message path, where order
//! gives crash safety, see the module doc of `store`), and [`Tx`]: rows read and written as one
//! atomic change under named locks (verifications, whose rows guard codes and limits).

use std::ops::Bound;

use tokio::sync::{Mutex, MutexGuard};

use super::StoreError;

/// A storage engine.
pub(super) enum Engine {
    Sled(sled::Db),
}

/// Rows in key order.
pub(super) type Rows = Vec<(Vec<u8>, Vec<u8>)>;

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
        }
    }

    pub(super) async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        match self {
            Engine::Sled(db) => {
                db.insert(key, value)?;
                Ok(())
            }
        }
    }

    /// Removes a row; returns its value if it was there.
    pub(super) async fn delete(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Engine::Sled(db) => Ok(db.remove(key)?.map(|v| v.to_vec())),
        }
    }

    /// Sets `key` to `new` only if it holds `old` now (`None`: absent); whether it did.
    pub(super) async fn swap(&self, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) -> Result<bool, StoreError> {
        match self {
            Engine::Sled(db) => Ok(db.compare_and_swap(key, old, new)?.is_ok()),
        }
    }

    /// Up to `limit` rows from `start` (inclusive) to `end`, in key order.
    pub(super) async fn range(&self, start: &[u8], end: Bound<&[u8]>, limit: usize) -> Result<Rows, StoreError> {
        match self {
            Engine::Sled(db) => {
                let rows = db.range::<&[u8], _>((Bound::Included(start), end)).take(limit);
                rows.map(|row| row.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::from)).collect()
            }
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
        }
    }

    /// How many keys start with `prefix` (walks them all: start-up and tests only).
    pub(super) async fn count(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        match self {
            Engine::Sled(db) => Ok(db.scan_prefix(prefix).count()),
        }
    }

    /// A number never handed out before by this store.
    pub(super) async fn unique(&self) -> Result<u64, StoreError> {
        match self {
            Engine::Sled(db) => Ok(db.generate_id()?),
        }
    }

    /// What the group commit calls to make every write so far durable.
    pub(super) fn flusher(&self) -> impl Fn() -> Result<(), String> + Send + 'static {
        match self {
            Engine::Sled(db) => {
                let db = db.clone();
                move || db.flush().map(|_| ()).map_err(|e| e.to_string())
            }
        }
    }
}

/// An atomic change under a lock: reads see the rows as they are, writes land all at once on
/// [`Tx::commit`] (or not at all).
pub(super) struct Tx<'a> {
    engine: &'a Engine,
    /// sled runs in one process: one lock serialises every transaction.
    _locked: MutexGuard<'a, ()>,
    writes: sled::Batch,
}

impl<'a> Tx<'a> {
    /// Starts a change. `lock` serialises changes in this process; the keys a change reads and
    /// writes are those of one number, which a cluster engine will lock by name.
    pub(super) async fn begin(engine: &'a Engine, lock: &'a Mutex<()>) -> Tx<'a> {
        Tx { engine, _locked: lock.lock().await, writes: sled::Batch::default() }
    }

    pub(super) async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.engine.get(key).await
    }

    pub(super) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, value);
    }

    pub(super) fn delete(&mut self, key: Vec<u8>) {
        self.writes.remove(key);
    }

    pub(super) async fn commit(self) -> Result<(), StoreError> {
        match self.engine {
            Engine::Sled(db) => Ok(db.apply_batch(self.writes)?),
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
