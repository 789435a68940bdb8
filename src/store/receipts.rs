//! Receipt correlation: the index from (carrier, SMSC id) to message, and receipts held for a
//! submit_sm_resp still to come. The store takes ids already read into their canonical form
//! ([`crate::smsc_id`]); how a receipt's id is read is the SMPP side's business.

use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::messages::entered;
use super::record::{self, MessageId, MessageRecord, MessageStatus, ReceiptSummary};
use super::{Change, Store, StoreError, encode, keys};

/// A receipt as the store matches it.
#[derive(Debug, Clone)]
pub struct IncomingReceipt<R> {
    /// The canonical id of the receipted_message_id TLV, which SMPP defines as the response's
    /// id itself: an exact match.
    pub exact_id: Option<String>,
    /// The text id read each way the carrier allows: (reading, canonical response id).
    pub read_ids: Vec<(R, String)>,
    /// What the receipt said, as it said it.
    pub stat: String,
    pub err: Option<String>,
    /// The status a final receipt puts its message in; `None` for progress reports.
    pub final_status: Option<MessageStatus>,
}

/// What applying a receipt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptMatch<R> {
    /// Matched a message; its status now. `finished`: this receipt made it final. `reading`:
    /// the one reading under which the receipt's text id matched, when only one did (what
    /// `receipt_id = "auto"` learns from).
    Matched { id: MessageId, status: MessageStatus, latency: Option<Duration>, finished: bool, reading: Option<R> },
    /// The message already had a final receipt: counted, not applied.
    Late { id: MessageId },
    /// Its id names different messages under different readings: not applied (no guessing).
    Ambiguous,
    /// No message yet: kept until its submit_sm_resp is recorded (or the sweep gives up on it).
    Held,
    /// No message, and [`StoreOptions::max_held_receipts`](super::StoreOptions) are held
    /// already: not kept.
    Dropped,
}

/// A receipt held for its submit_sm_resp: one row per candidate id, the same value in each.
#[derive(Serialize, Deserialize)]
struct HeldReceipt {
    candidates: Vec<String>,
    summary: ReceiptSummary,
    final_status: Option<MessageStatus>,
}

impl Store {
    /// Held receipts now (counted once at open: each by its first row).
    pub(super) async fn count_held(&self) -> Result<usize, StoreError> {
        let (mut held, mut pages) = (0, self.engine.pages(&[keys::HELD_RECEIPT]));
        while let Some(rows) = pages.next().await? {
            held += rows.iter().filter(|(k, v)| is_first_row(k, v)).count();
        }
        Ok(held)
    }

    /// Adds the receipt index row of a message just submitted, and applies a receipt that beat
    /// the response here, if one is held.
    pub(super) async fn index_submit(
        &self,
        record: &mut MessageRecord,
        id: &MessageId,
        carrier: &str,
        smsc_id: &str,
        now_ms: u64,
        rows: &mut Change,
    ) -> Result<(), StoreError> {
        // One index row, under the canonical form; the receipt side reads its ids back into it.
        let canonical = crate::smsc_id::canonical(smsc_id);
        if canonical.is_empty() {
            return Ok(());
        }
        rows.add(keys::receipt_index(carrier, &canonical), &id.0[..]);
        let Some((_, value)) = self.first_held(carrier, &canonical).await? else { return Ok(()) };
        if let Ok(held) = serde_json::from_slice::<HeldReceipt>(&value) {
            apply_receipt_to(record, id, &held.summary, held.final_status, now_ms, rows);
            for candidate in &held.candidates {
                if let Some((key, _)) = self.first_held(carrier, candidate).await? {
                    rows.remove(key);
                }
            }
            self.held_changed(-1);
        }
        Ok(())
    }

    /// The first held-receipt row of `carrier` for `candidate`.
    async fn first_held(&self, carrier: &str, candidate: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        Ok(self.engine.scan(&keys::held_receipts(carrier, candidate), None, 1).await?.into_iter().next())
    }

    /// Applies a receipt from `carrier`: to its message when the correlation index knows one
    /// of its ids, else holds it for the submit_sm_resp still to come.
    pub async fn apply_receipt<R: Copy + PartialEq>(
        &self,
        carrier: &str,
        receipt: IncomingReceipt<R>,
        now: SystemTime,
    ) -> Result<ReceiptMatch<R>, StoreError> {
        let now_ms = record::to_ms(now);
        let IncomingReceipt { exact_id, read_ids, stat, err, final_status } = receipt;
        let summary = ReceiptSummary { stat, err, at_ms: now_ms, is_final: final_status.is_some() };
        // Every (reading, response id) this receipt may stand for; `None`: the exact id.
        let mut ids: Vec<(Option<R>, String)> = exact_id.map(|k| (None, k)).into_iter().collect();
        ids.extend(read_ids.into_iter().map(|(r, k)| (Some(r), k)));
        ids.retain(|(_, k)| !k.is_empty());
        // Every id's stripe: a submit recording one of them waits, so a receipt is either
        // matched or held, never missed between the two.
        let stripes: Vec<&str> = ids.iter().map(|(_, k)| k.as_str()).collect();
        let locked = self.locks.take(carrier, &stripes, None).await;
        let mut found: Vec<(Option<R>, MessageId, MessageRecord)> = Vec::new();
        for (reading, k) in &ids {
            let Some(row) = self.engine.get(&keys::receipt_index(carrier, k)).await? else { continue };
            let Some(id) = keys::id_from(&row) else { continue };
            if let Some(record) = self.message(&id).await? {
                found.push((*reading, id, record));
            }
        }
        if !found.is_empty() {
            let awaiting = |r: &MessageRecord| !r.receipt.as_ref().is_some_and(|s| s.is_final);
            let exact_match = found.iter().position(|(reading, _, _)| reading.is_none());
            let text_readings: Vec<R> = found.iter().filter_map(|(r, _, _)| *r).collect();
            // The exact id wins; else a message still waiting for its receipt, if only one is.
            let chosen = match exact_match {
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
            let (_, id, _) = found.swap_remove(chosen);
            // Read again under the message's own stripe: the dispatcher may have changed it.
            let _locked = self.locks.and_message(locked, &id).await;
            let Some(mut record) = self.message(&id).await? else { return Ok(ReceiptMatch::Late { id }) };
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
            self.apply(rows, keys::message(&id), encode(&record)).await?;
            if was_queued && finished {
                self.queue_changed(-1);
            }
            if finished {
                entered(record.status);
            }
            let latency = record.submitted_ms.map(|s| Duration::from_millis(now_ms.saturating_sub(s)));
            return Ok(ReceiptMatch::Matched { id, status: record.status, latency, finished, reading });
        }
        let mut candidates: Vec<String> = Vec::new();
        for (_, k) in ids {
            if !candidates.contains(&k) {
                candidates.push(k);
            }
        }
        if self.held_receipts() >= self.max_held {
            return Ok(ReceiptMatch::Dropped);
        }
        self.held_changed(1);
        let held = HeldReceipt { candidates: candidates.clone(), summary, final_status };
        let sequence = self.engine.unique().await?.to_be_bytes();
        let value = encode(&held);
        for candidate in &candidates {
            self.engine.put(&keys::key(keys::HELD_RECEIPT, &[carrier.as_bytes(), candidate.as_bytes(), &sequence]), &value).await?;
        }
        Ok(ReceiptMatch::Held)
    }

    fn held_changed(&self, by: isize) {
        let _ = self.held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_add_signed(by)));
    }

    /// Receipts held now for a submit_sm_resp still to come.
    pub fn held_receipts(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Drops receipts held past [`StoreOptions::hold_receipts_for`](super::StoreOptions),
    /// each reported once (from its first row): the carrier of each.
    pub(super) async fn drop_stale_held(&self, now: SystemTime) -> Result<Vec<String>, StoreError> {
        let mut unmatched = Vec::new();
        let expire_before = record::to_ms(now.checked_sub(self.hold_for).unwrap_or(std::time::UNIX_EPOCH));
        let mut pages = self.engine.pages(&[keys::HELD_RECEIPT]);
        while let Some(rows) = pages.next().await? {
            for (k, v) in rows {
                let at_ms = serde_json::from_slice::<HeldReceipt>(&v).map_or(0, |held| held.summary.at_ms);
                if at_ms > expire_before {
                    continue;
                }
                let carrier = String::from_utf8_lossy(&k[1..k.iter().position(|&b| b == 0).unwrap_or(1)]).into_owned();
                let candidate = held_candidate(&k).map(|c| String::from_utf8_lossy(c).into_owned()).unwrap_or_default();
                let _locked = self.locks.take(&carrier, &[&candidate], None).await;
                if is_first_row(&k, &v) {
                    unmatched.push(carrier);
                    self.held_changed(-1);
                }
                self.engine.delete(&k).await?;
            }
        }
        Ok(unmatched)
    }

    /// Removes the index row of a message being deleted, if it still points there (a newer
    /// message may reuse the SMSC id).
    pub(super) async fn unindex(&self, id: &MessageId, record: &MessageRecord) -> Result<(), StoreError> {
        if let (Some(carrier), Some(smsc_id)) = (&record.carrier, &record.smsc_message_id) {
            let index = keys::receipt_index(carrier, &crate::smsc_id::canonical(smsc_id));
            if self.engine.get(&index).await?.as_deref() == Some(&id.0[..]) {
                self.engine.delete(&index).await?;
            }
        }
        Ok(())
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
    rows.add(keys::done(keys::MESSAGE_DONE, now_ms, id), []);
    // Removals run after the adds: never remove the row just added.
    if let Some(old_done) = record.done_ms.filter(|&old| old != now_ms) {
        rows.remove(keys::done(keys::MESSAGE_DONE, old_done, id));
    }
    record.status = status;
    record.done_ms = Some(now_ms);
    rows.remove(keys::queue(id));
    !was_final
}

/// Whether a held-receipt row is the first of its receipt's rows (one per candidate id): the
/// one a receipt is counted by.
fn is_first_row(row_key: &[u8], value: &[u8]) -> bool {
    let Ok(held) = serde_json::from_slice::<HeldReceipt>(value) else { return false };
    held_candidate(row_key).is_some_and(|c| held.candidates.first().is_some_and(|f| f.as_bytes() == c))
}

/// The candidate id inside a held-receipt row key: prefix, carrier, NUL, candidate, NUL,
/// 8-byte sequence.
fn held_candidate(row_key: &[u8]) -> Option<&[u8]> {
    let body = row_key.get(1..row_key.len().checked_sub(9)?)?;
    let start = body.iter().position(|&b| b == 0)? + 1;
    body.get(start..)
}
