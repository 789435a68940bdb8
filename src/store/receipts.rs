//! Receipt correlation: the index from (carrier, SMSC id) to message, and receipts held for a
//! submit_sm_resp still to come. The store takes ids already read into their canonical form
//! ([`crate::smsc_id`]); how a receipt's id is read is the SMPP side's business.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::codec::Stored;
use super::messages::entered;
use super::record::{self, MessageId, MessageRecord, MessageStatus, ReceiptSummary};
use super::{Change, Changes, Store, StoreError, encode, keys};

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

/// A receipt's ids, as the store looks them up.
struct Reading<R> {
    /// Every (reading, response id) the receipt may stand for; `None`: the exact id.
    ids: Vec<(Option<R>, String)>,
    summary: ReceiptSummary,
    final_status: Option<MessageStatus>,
}

impl<R> Reading<R> {
    fn new(receipt: IncomingReceipt<R>, now_ms: u64) -> Reading<R> {
        let IncomingReceipt { exact_id, read_ids, stat, err, final_status } = receipt;
        let mut ids: Vec<(Option<R>, String)> = exact_id.map(|k| (None, k)).into_iter().collect();
        ids.extend(read_ids.into_iter().map(|(r, k)| (Some(r), k)));
        ids.retain(|(_, k)| !k.is_empty());
        Reading { ids, summary: ReceiptSummary { stat, err, at_ms: now_ms, is_final: final_status.is_some() }, final_status }
    }
}

/// A message an index row names: the reading that found it, the message, its part.
type Named<R> = (Option<R>, MessageId, Option<u8>);

/// Which message (and part of it) a receipt goes to.
enum Choice {
    Message(MessageId, Option<u8>),
    /// None known (yet).
    None,
    /// More than one could be meant.
    Ambiguous,
}

/// Of the messages a receipt's ids name (all present in `records`): the exact id's, else the
/// one still waiting for its receipt if only one is (no guessing), else any when none waits.
fn choose<R>(named: &[Named<R>], records: &HashMap<MessageId, Option<MessageRecord>>) -> Choice {
    let Some(&(_, first, first_part)) = named.first() else { return Choice::None };
    if let Some(&(_, exact, part)) = named.iter().find(|(reading, ..)| reading.is_none()) {
        return Choice::Message(exact, part);
    }
    let mut waiting: Vec<(MessageId, Option<u8>)> = named
        .iter()
        .map(|&(_, id, part)| (id, part))
        .filter(|(id, part)| records.get(id).is_some_and(|r| r.as_ref().is_some_and(|r| takes_receipt(r, *part))))
        .collect();
    waiting.sort_unstable_by_key(|(id, part)| (id.0, *part));
    waiting.dedup();
    match waiting.as_slice() {
        [] => Choice::Message(first, first_part),
        [(only, part)] => Choice::Message(*only, *part),
        _ => Choice::Ambiguous,
    }
}

/// A receipt held for its submit_sm_resp: one row per candidate id, the same value in each.
#[derive(Serialize, Deserialize)]
struct HeldReceipt {
    candidates: Vec<String>,
    summary: ReceiptSummary,
    final_status: Option<MessageStatus>,
}

super::codec::stored_as_json!(HeldReceipt);

impl Store {
    /// Held receipts now (counted once at open: each by its first row).
    pub(super) async fn count_held(&self) -> Result<usize, StoreError> {
        let (mut held, mut pages) = (0, self.engine.pages(&[keys::HELD_RECEIPT]));
        while let Some(rows) = pages.next().await? {
            held += rows.iter().filter(|(k, v)| is_first_row(k, v)).count();
        }
        Ok(held)
    }

    /// Applies `first_held`, a receipt held for the SMSC id of a message (or of one part of it)
    /// just submitted, if there is one, and drops its rows: its own, one per candidate id, by
    /// its sequence (the first row under a candidate may be another receipt's).
    pub(super) async fn apply_held(
        &self,
        record: &mut MessageRecord,
        (id, part): (&MessageId, Option<u8>),
        carrier: &str,
        first_held: Option<(Vec<u8>, Vec<u8>)>,
        now_ms: u64,
        rows: &mut Change,
    ) -> Result<(), StoreError> {
        let Some((key, value)) = first_held else { return Ok(()) };
        if let Some(held) = HeldReceipt::from_row(&value) {
            apply_receipt_to(record, id, part, &held.summary, held.final_status, now_ms, rows);
            let sequence = keys::held_sequence(&key);
            for (i, candidate) in held.candidates.iter().enumerate() {
                rows.remove(keys::held_row(carrier, candidate, sequence, i == 0));
            }
            self.held_changed(-1);
        }
        Ok(())
    }

    /// Applies a receipt from `carrier`: to its message when the correlation index knows one
    /// of its ids, else holds it for the submit_sm_resp still to come.
    pub async fn apply_receipt<R: Copy + PartialEq>(
        &self,
        carrier: &str,
        receipt: IncomingReceipt<R>,
        now: SystemTime,
    ) -> Result<ReceiptMatch<R>, StoreError> {
        let mut applied = self.apply_receipts(carrier, vec![receipt], now).await?;
        applied.pop().ok_or_else(|| StoreError::Corrupt("a receipt went unanswered".into()))
    }

    /// Applies receipts from `carrier` in order, as [`Store::apply_receipt`] would one by one,
    /// with one read of the index, one of the messages and one write for them all: on a
    /// database each is a round trip, and one per receipt could not keep up with the submits.
    pub async fn apply_receipts<R: Copy + PartialEq>(
        &self,
        carrier: &str,
        receipts: Vec<IncomingReceipt<R>>,
        now: SystemTime,
    ) -> Result<Vec<ReceiptMatch<R>>, StoreError> {
        let now_ms = record::to_ms(now);
        let receipts: Vec<Reading<R>> = receipts.into_iter().map(|r| Reading::new(r, now_ms)).collect();
        // Every id's stripe: a submit recording one of them waits, so a receipt is either
        // matched or held, never missed between the two.
        let stripes: Vec<&str> = receipts.iter().flat_map(|r| r.ids.iter().map(|(_, k)| k.as_str())).collect();
        let locked = self.locks.take(carrier, &stripes, None).await;
        let index_keys: Vec<Vec<u8>> = receipts.iter().flat_map(|r| r.ids.iter().map(|(_, k)| keys::receipt_index(carrier, k))).collect();
        let mut index = self.find_indexed(index_keys).await?.into_iter();
        let mut found: Vec<Vec<Named<R>>> = Vec::with_capacity(receipts.len());
        for receipt in &receipts {
            let mut named = Vec::new();
            for (reading, _) in &receipt.ids {
                if let Some((id, part)) = index.next().flatten().as_deref().and_then(keys::index_target) {
                    named.push((*reading, id, part));
                }
            }
            found.push(named);
        }
        // Every message named, read once under its own stripe (the dispatcher may be changing it).
        let mut named: Vec<MessageId> = found.iter().flatten().map(|(_, id, _)| *id).collect();
        named.sort_unstable_by_key(|id| id.0);
        named.dedup();
        let _locked = self.locks.and_messages(locked, &named).await;
        let mut records: HashMap<MessageId, Option<MessageRecord>> = named.iter().copied().zip(self.messages(&named).await?).collect();

        let mut outcome = Vec::with_capacity(receipts.len());
        let mut changes = Changes::default();
        let mut held_rows: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let (mut newly_held, mut dequeued, mut entering, mut answered) = (0, 0, Vec::new(), Vec::new());
        for (receipt, mut named) in receipts.into_iter().zip(found) {
            // Messages gone (swept, or never written) are no candidates.
            named.retain(|(_, id, _)| records.get(id).is_some_and(Option::is_some));
            let (chosen, part) = match choose(&named, &records) {
                Choice::Message(id, part) => (id, part),
                Choice::Ambiguous => {
                    outcome.push(ReceiptMatch::Ambiguous);
                    continue;
                }
                Choice::None => {
                    outcome.push(match self.held_receipts() + newly_held >= self.max_held {
                        true => ReceiptMatch::Dropped,
                        false => {
                            newly_held += 1;
                            held_rows.extend(self.held_rows(carrier, receipt).await?);
                            ReceiptMatch::Held
                        }
                    });
                    continue;
                }
            };
            let Some(Some(record)) = records.get_mut(&chosen) else { continue };
            if !takes_receipt(record, part) {
                outcome.push(ReceiptMatch::Late { id: chosen });
                continue;
            }
            // The text reading under which the id matched, when only one did.
            let reading = match named.iter().filter_map(|(r, ..)| *r).collect::<Vec<R>>().as_slice() {
                [only] => Some(*only),
                _ => None,
            };
            let change = changes.of(chosen, record);
            let was_queued = record.status == MessageStatus::Queued;
            let finished = apply_receipt_to(record, &chosen, part, &receipt.summary, receipt.final_status, now_ms, change);
            if finished {
                dequeued += i64::from(was_queued);
                entering.push(record.status);
                self.emit_message(&mut change.events, &chosen, record, now_ms);
            }
            if let Some(window) = self.window.as_ref().filter(|_| receipt.final_status.is_some()) {
                // Its window row goes with it, while its page is likely still in the cache.
                let value = keys::index_value(&chosen, part);
                for (_, k) in &receipt.ids {
                    let index_key = keys::receipt_index(carrier, k);
                    if let Some(row) = window.row_of(&index_key, &value) {
                        change.remove(row);
                        answered.push((index_key, value.clone()));
                    }
                }
            }
            let latency = record.submitted_ms.map(|s| Duration::from_millis(now_ms.saturating_sub(s)));
            outcome.push(ReceiptMatch::Matched { id: chosen, status: record.status, latency, finished, reading });
        }

        let mut writes = held_rows;
        let (changed, events) = changes.into_writes(&records);
        writes.extend(changed);
        self.queue_changed(-dequeued);
        if let Err(e) = self.write_with_events(writes, events).await {
            self.queue_changed(dequeued);
            return Err(e);
        }
        self.held_changed(newly_held as isize);
        if let Some(window) = &self.window {
            for (index_key, value) in answered {
                window.answered(&index_key, &value);
            }
        }
        for status in entering {
            entered(status);
        }
        Ok(outcome)
    }

    /// The index row value under each of `index_keys`: from the receipt window where it holds
    /// one, else from the index rows, read at once.
    async fn find_indexed(&self, index_keys: Vec<Vec<u8>>) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let Some(window) = &self.window else { return self.engine.get_many(&index_keys).await };
        let mut found: Vec<Option<Vec<u8>>> = index_keys.iter().map(|k| window.get(k)).collect();
        let missing: Vec<Vec<u8>> = index_keys.into_iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(k, _)| k).collect();
        if missing.is_empty() {
            return Ok(found);
        }
        let mut read = self.engine.get_many(&missing).await?.into_iter();
        for slot in found.iter_mut().filter(|f| f.is_none()) {
            *slot = read.next().flatten();
        }
        Ok(found)
    }

    /// The rows that hold `receipt` for its submit_sm_resp: one per id it may stand for.
    async fn held_rows<R>(&self, carrier: &str, receipt: Reading<R>) -> Result<Vec<(Vec<u8>, Option<Vec<u8>>)>, StoreError> {
        let mut candidates: Vec<String> = Vec::new();
        for (_, k) in receipt.ids {
            if !candidates.contains(&k) {
                candidates.push(k);
            }
        }
        let sequence = self.engine.unique().await? & !keys::SECOND_READING;
        let value = encode(&HeldReceipt { candidates: candidates.clone(), summary: receipt.summary, final_status: receipt.final_status });
        Ok(candidates
            .iter()
            .enumerate()
            .map(|(i, candidate)| (keys::held_row(carrier, candidate, sequence, i == 0), Some(value.clone())))
            .collect())
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
                let at_ms = HeldReceipt::from_row(&v).map_or(0, |held| held.summary.at_ms);
                if at_ms > expire_before {
                    continue;
                }
                let text = |part: Option<&[u8]>| part.map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
                let (carrier, candidate) = (text(keys::held_carrier(&k)), text(keys::held_candidate(&k)));
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
        let Some(carrier) = &record.carrier else { return Ok(()) };
        for (smsc_id, part) in indexed_ids(record) {
            let (index, value) = (keys::receipt_index(carrier, &smsc_id), keys::index_value(id, part));
            if let Some(window) = &self.window {
                window.forget(&index, &value);
            }
            if self.engine.get(&index).await? == Some(value) {
                self.engine.delete(&index).await?;
            }
        }
        Ok(())
    }
}

/// The canonical SMSC ids a message's index rows are under, each with its part (`None`: the
/// one SMS).
pub(super) fn indexed_ids(record: &MessageRecord) -> impl Iterator<Item = (String, Option<u8>)> + '_ {
    let single = record.smsc_message_id.iter().map(|smsc_id| (smsc_id, None));
    let parts = record.parts.iter().map(|p| (&p.smsc_message_id, Some(p.seq)));
    single.chain(parts).map(|(smsc_id, part)| (crate::smsc_id::canonical(smsc_id), part))
}

/// Whether a message (or the part of it) still takes a receipt: it has no final one yet.
pub(super) fn takes_receipt(record: &MessageRecord, part: Option<u8>) -> bool {
    match part {
        None => record.awaiting_receipt(),
        Some(seq) => record.parts.iter().any(|p| p.seq == seq && !p.receipt.as_ref().is_some_and(|r| r.is_final)),
    }
}

/// Applies a receipt to its record (to the part it names, for a long message); returns whether
/// this made the message final. A final receipt is the network's word: it settles a status we
/// set ourselves (expired, failed). A long message is delivered once every part is, and ends
/// as the first part that ends otherwise (undeliverable, expired, rejected).
fn apply_receipt_to(
    record: &mut MessageRecord,
    id: &MessageId,
    part: Option<u8>,
    summary: &ReceiptSummary,
    final_status: Option<MessageStatus>,
    now_ms: u64,
    rows: &mut Change,
) -> bool {
    let status = match part.and_then(|seq| record.parts.iter_mut().find(|p| p.seq == seq)) {
        None => {
            record.receipt = Some(summary.clone());
            let Some(status) = final_status else { return false };
            status
        }
        Some(part) => {
            part.receipt = Some(summary.clone());
            let Some(status) = final_status else { return false };
            part.status = status;
            if record.status.is_final() {
                // Settled already (by an earlier part): this receipt adds to its part only.
                return false;
            }
            let failed = record.parts.iter().find(|p| p.status.is_final() && p.status != MessageStatus::Delivered);
            let status = match failed {
                Some(failed) => failed.status,
                None if record.parts.iter().all(|p| p.status == MessageStatus::Delivered) => MessageStatus::Delivered,
                None => return false,
            };
            record.receipt = Some(summary.clone());
            status
        }
    };
    let was_final = record.status.is_final();
    record.status = status;
    record.done_ms = Some(now_ms);
    rows.remove(keys::queue(id));
    !was_final
}

/// Whether a held-receipt row is the first of its receipt's rows (one per candidate id): the
/// one a receipt is counted by.
fn is_first_row(row_key: &[u8], value: &[u8]) -> bool {
    let Some(held) = HeldReceipt::from_row(value) else { return false };
    keys::held_candidate(row_key).is_some_and(|c| held.candidates.first().is_some_and(|f| f.as_bytes() == c))
}
