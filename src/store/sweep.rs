//! Retention: finished messages and verifications go after `retention`, through their "finished
//! at" indexes, oldest first; stale idempotency keys and held receipts go too.

use std::time::{Duration, SystemTime};

use super::record::{self, MessageId};
use super::{Store, StoreError, keys, lock};

impl Store {
    /// Deletes finished messages older than `retention`, their receipt index rows and expired
    /// idempotency keys, and held receipts older than [`StoreOptions::hold_receipts_for`](super::StoreOptions).
    /// Returns (messages deleted, the carrier of each held receipt dropped unmatched).
    pub async fn sweep(&self, retention: Duration, now: SystemTime) -> Result<(usize, Vec<String>), StoreError> {
        off_the_scheduler(|| self.sweep_now(retention, now))
    }

    fn sweep_now(&self, retention: Duration, now: SystemTime) -> Result<(usize, Vec<String>), StoreError> {
        let mut deleted = 0;
        for entry in self.finished_by(keys::MESSAGE_DONE, cutoff(retention, now)) {
            let (k, id) = entry?;
            let _guard = lock(&self.writes);
            // Index rows, then the record, then the done row: a sweep cut short finds the done
            // row again next time.
            match self.get_record(&id)? {
                Some(record) if record.status.is_final() => {
                    self.unindex(&id, &record)?;
                    self.db.remove(keys::message(&id))?;
                    deleted += 1;
                }
                // Not final: the done row of a change a crash cut short; the record's own
                // final change writes a fresh one.
                _ => {}
            }
            self.db.remove(k)?;
        }
        self.sweep_idempotency(now)?;
        let unmatched = self.drop_stale_held(now)?;
        Ok((deleted, unmatched))
    }

    /// Rows of a "finished at" index done at or before `cutoff_ms`, oldest first, with their ids.
    pub(super) fn finished_by(&self, prefix: u8, cutoff_ms: u64) -> impl Iterator<Item = Result<(sled::IVec, MessageId), StoreError>> + '_ {
        let parse = |k: &[u8]| {
            let done_ms = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
            Some((done_ms, keys::id_from(k.get(9..)?)?))
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
}

/// Runs a long stretch of blocking store work (a sweep may delete a minute's worth of traffic)
/// without stalling the tasks that share this worker thread: on a multi-threaded runtime the
/// thread hands its other tasks over first.
pub(super) fn off_the_scheduler<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// The time in ms before which rows kept for `window` are stale at `now`.
pub(super) fn cutoff(window: Duration, now: SystemTime) -> u64 {
    record::to_ms(now.checked_sub(window).unwrap_or(std::time::UNIX_EPOCH))
}
