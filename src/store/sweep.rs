//! Retention: finished messages (and sent ones past their validity, receipt or not) and
//! verifications go after `retention`, through their "finished at" indexes, oldest first; stale idempotency keys and held receipts go too. Work is done a
//! page at a time, yielding between pages, so a large sweep never holds a worker thread.

use std::time::{Duration, SystemTime};

use super::engine::PAGE;
use super::record::{self, MessageId};
use super::{Store, StoreError, keys};

impl Store {
    /// Deletes messages `retention` past the time they may go from (when they finished, and for
    /// a message a carrier took, not before its validity ended, receipt or not: see
    /// `MessageRecord::sweepable_from_ms`), their receipt index rows,
    /// expired idempotency keys, webhook events given up on more than `retention` ago, and held
    /// receipts older than [`StoreOptions::hold_receipts_for`](super::StoreOptions).
    /// Returns (messages deleted, the carrier of each held receipt dropped unmatched).
    pub async fn sweep(&self, retention: Duration, now: SystemTime) -> Result<(usize, Vec<String>), StoreError> {
        let mut deleted = 0;
        let cutoff_ms = cutoff(retention, now);
        loop {
            let page = self.finished_by(keys::MESSAGE_DONE, cutoff_ms).await?;
            for (k, ids) in &page {
                for id in ids {
                    // The record's correlation stripes (its index rows go too), then its own.
                    let smsc = self.message(id).await?.and_then(|r| {
                        let ids = super::receipts::indexed_ids(&r).map(|(smsc_id, _)| smsc_id).collect::<Vec<String>>();
                        Some((r.carrier.clone()?, ids))
                    });
                    let _locked = match &smsc {
                        Some((carrier, smsc_ids)) => {
                            let stripes: Vec<&str> = smsc_ids.iter().map(String::as_str).collect();
                            self.locks.take(carrier, &stripes, Some(id)).await
                        }
                        None => self.locks.message(id).await,
                    };
                    // Index rows, then the record, then the done row: a sweep cut short finds the
                    // done row again next time. The record says when it may go, not the row: a
                    // crash between a change's writes can leave a row the record has moved past,
                    // and stores of earlier versions keep a sent message's row at its receipt.
                    let record = self.message(id).await?;
                    match record.as_ref().map(|r| (r, r.sweepable_from_ms())) {
                        Some((record, Some(sweepable))) if sweepable <= cutoff_ms => {
                            self.unindex(id, record).await?;
                            self.engine.delete(&keys::message(id)).await?;
                            deleted += 1;
                        }
                        // Not yet: its own row, written before this one goes.
                        Some((_, Some(sweepable))) => self.engine.put(&keys::done(keys::MESSAGE_DONE, sweepable, id), &[]).await?,
                        // Queued (a change a crash cut short), or gone.
                        _ => {}
                    }
                }
                self.engine.delete(k).await?;
                // A batch's row lists up to a few hundred messages: yield after each such row
                // too, not only after each page of rows.
                if ids.len() > 1 {
                    tokio::task::yield_now().await;
                }
            }
            if page.len() < PAGE {
                break;
            }
            tokio::task::yield_now().await;
        }
        self.sweep_idempotency(now).await?;
        self.sweep_references(now).await?;
        self.sweep_dead_events(retention, now).await?;
        let unmatched = self.drop_stale_held(now).await?;
        Ok((deleted, unmatched))
    }

    /// Forgets the long-message references of numbers that got none for a day: a handset
    /// joins parts within minutes, so a reference may come round again after that.
    async fn sweep_references(&self, now: SystemTime) -> Result<(), StoreError> {
        const KEPT: Duration = Duration::from_secs(24 * 3600);
        let stale_before = cutoff(KEPT, now);
        let mut pages = self.engine.pages(&[keys::REFERENCE]);
        while let Some(rows) = pages.next().await? {
            for (k, v) in rows {
                let at_ms = v.get(2..10).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
                if at_ms < stale_before {
                    self.engine.delete(&k).await?;
                }
            }
        }
        Ok(())
    }

    /// Up to a page of the rows of a "finished at" index done at or before `cutoff_ms`, oldest
    /// first, each with its ids (one, or a batch's, [`keys::done_batch`]). The caller deletes
    /// them, so the next call reads the next page.
    pub(super) async fn finished_by(&self, prefix: u8, cutoff_ms: u64) -> Result<Vec<(Vec<u8>, Vec<MessageId>)>, StoreError> {
        let parse = |k: &[u8], v: &[u8]| {
            let first = keys::id_from(k.get(9..25)?)?;
            let others = match k.get(25..)? {
                [] if v.is_empty() => Vec::new(),
                [1] if v.len() % 16 == 0 => v.chunks(16).map(keys::id_from).collect::<Option<Vec<_>>>()?,
                _ => return None,
            };
            Some([first].into_iter().chain(others).collect())
        };
        let mut end = vec![prefix];
        end.extend_from_slice(&cutoff_ms.saturating_add(1).to_be_bytes());
        let rows = self.engine.range(&[prefix], std::ops::Bound::Excluded(&end), PAGE).await?;
        // A row that does not parse is skipped (and stays).
        Ok(rows.into_iter().filter_map(|(k, v)| Some((parse(&k, &v)?, k))).map(|(ids, k)| (k, ids)).collect())
    }
}

/// The time in ms before which rows kept for `window` are stale at `now`.
pub(super) fn cutoff(window: Duration, now: SystemTime) -> u64 {
    record::to_ms(now.checked_sub(window).unwrap_or(std::time::UNIX_EPOCH))
}
