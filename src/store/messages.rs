//! Message rows: intake, the queue (with its in-flight mark), submit results and endings.

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::record::{self, Attempt, MessageId, MessageRecord, MessageStatus, PartRecord, VerificationId};
use super::{Change, Changes, Store, StoreError, decode, encode, idempotency, keys, lock};
use tokio::sync::oneshot;

use crate::telemetry;

/// A message about to be taken in.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub owner: String,
    pub to: String,
    pub from: Option<String>,
    pub text: String,
    pub deadline: SystemTime,
    /// The encoding the client asked for, if it did.
    pub encoding: Option<crate::sms::Encoding>,
    /// How many SMS the text takes, as counted at intake.
    pub segments: u16,
    pub options: super::record::SendOptions,
}

/// The rows that queue a message, record first: the one way every intake (API message,
/// verification, failover resend) writes a queued message, whether row by row or in a batch.
pub(super) fn queued_rows(id: &MessageId, record: &MessageRecord) -> [(Vec<u8>, Vec<u8>); 2] {
    [(keys::message(id), encode(record)), (keys::queue(id), Vec::new())]
}

impl Store {
    pub async fn message(&self, id: &MessageId) -> Result<Option<MessageRecord>, StoreError> {
        self.read(&keys::message(id), || format!("message {id}")).await
    }

    /// Several messages in one read, in the order asked.
    pub async fn messages(&self, ids: &[MessageId]) -> Result<Vec<Option<MessageRecord>>, StoreError> {
        let rows = self.engine.get_many(&ids.iter().map(keys::message).collect::<Vec<_>>()).await?;
        ids.iter().zip(rows).map(|(id, row)| decode(row, || format!("message {id}"))).collect()
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
        let replay = idempotency.map(|(key, body_sha256)| idempotency::row(&record.owner, key, body_sha256, &id, record.created_ms, None));
        self.write_queued(&id, &record, replay).await?;
        self.commit.durable().await?;
        entered(MessageStatus::Queued);
        Ok((id, record))
    }

    /// Takes in a message under a given id for a verification (receipt failover), durably.
    pub async fn insert_otp_message(
        &self,
        id: MessageId,
        message: NewMessage,
        verification: VerificationId,
        now: SystemTime,
    ) -> Result<MessageRecord, StoreError> {
        let record = MessageRecord::queued(message, record::to_ms(now), Some(verification));
        self.write_queued(&id, &record, None).await?;
        self.commit.durable().await?;
        entered(MessageStatus::Queued);
        Ok(record)
    }

    /// Writes a queued message's rows in order, then `after` (its idempotency row), and counts it.
    async fn write_queued(&self, id: &MessageId, record: &MessageRecord, after: Option<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        let rows = queued_rows(id, record).into_iter().chain(after).map(|(k, v)| (k, Some(v)));
        self.engine.write(rows.collect()).await?;
        self.queue_changed(1);
        Ok(())
    }

    /// Counts queue rows written (`by` > 0: call after writing them) or about to be removed
    /// (`by` < 0: call before removing them, so that an empty queue never meets a count that
    /// still has to go down, see [`Store::queue_stats`]).
    pub(super) fn queue_changed(&self, by: i64) {
        self.queued.fetch_add(by, Ordering::Relaxed);
    }

    /// How many messages wait to be submitted, and how long the oldest has waited.
    pub async fn queue_stats(&self, now: SystemTime) -> (u64, Duration) {
        let known = self.queued.load(Ordering::Relaxed);
        let first = self.engine.scan(&[keys::QUEUE], None, 1).await.map(|rows| rows.into_iter().next());
        let depth = match (self.engine.shared(), &first) {
            // A shared store's queue also grows through other nodes: count it (an index range).
            (true, _) => self.engine.count(&[keys::QUEUE]).await.unwrap_or_default() as u64,
            // The depth an open read after a crash is off by the changes the crash cut short:
            // an empty queue sets it right (unless it changed meanwhile).
            (false, Ok(None)) if known != 0 => {
                if self.queued.compare_exchange(known, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                    tracing::info!(was = known, "queue depth set to 0: the queue is empty");
                }
                0
            }
            (false, _) => known.max(0) as u64,
        };
        let first = first.ok().flatten();
        let record = match first.and_then(|(k, _)| keys::id_from(&k[1..])) {
            Some(id) => self.message(&id).await.ok().flatten(),
            None => None,
        };
        let oldest = record.map(|r| now.duration_since(record::from_ms(r.created_ms)).unwrap_or_default()).unwrap_or_default();
        (depth, oldest)
    }

    /// Every message waiting to be sent, oldest first (tests; recovery pages with
    /// [`Store::queued_page`]).
    #[cfg(test)]
    pub async fn queued(&self) -> Result<Vec<(MessageId, MessageRecord)>, StoreError> {
        let mut out = Vec::new();
        let Some(last) = self.last_queued().await? else { return Ok(out) };
        let mut after = None;
        loop {
            let page = self.queued_page(after.as_ref(), &last, 1024, &|_| false).await?;
            let Some((id, _)) = page.last() else { return Ok(out) };
            after = Some(*id);
            out.extend(page);
        }
    }

    /// Up to `limit` queued message ids after `after` (from the oldest when `None`), in order,
    /// read only: their records may have moved on meanwhile.
    pub async fn queued_ids_after(&self, after: Option<&MessageId>, limit: usize) -> Result<Vec<MessageId>, StoreError> {
        let after = after.map(keys::queue);
        let rows = self.engine.scan(&[keys::QUEUE], after.as_deref(), limit).await?;
        Ok(rows.iter().filter_map(|(k, _)| keys::id_from(&k[1..])).collect())
    }

    /// Up to `limit` of the oldest queued messages, read only (no recovery bookkeeping).
    pub async fn oldest_queued(&self, limit: usize) -> Result<Vec<(MessageId, MessageRecord)>, StoreError> {
        let mut out = Vec::new();
        for (k, _) in self.engine.scan(&[keys::QUEUE], None, limit).await? {
            let Some(id) = keys::id_from(&k[1..]) else { continue };
            if let Some(record) = self.message(&id).await?.filter(|r| r.status == MessageStatus::Queued) {
                out.push((id, record));
            }
        }
        Ok(out)
    }

    /// The newest queued message now: recovery stops there, so messages taken in while it runs
    /// are not queued twice.
    pub async fn last_queued(&self) -> Result<Option<MessageId>, StoreError> {
        Ok(self.engine.last_key(&[keys::QUEUE]).await?.and_then(|k| keys::id_from(&k[1..])))
    }

    /// Up to `limit` queued messages after `after` and up to `until`, oldest first; marks those
    /// that were mid-submit when the last process died (`in_flight`), for the resubmit count.
    /// `ours` names messages this process is submitting now: their in-flight mark is its own,
    /// not a dead process's, and they are left out (its intake can hand a message over before
    /// recovery reads that far).
    pub async fn queued_page(
        &self,
        after: Option<&MessageId>,
        until: &MessageId,
        limit: usize,
        ours: &(dyn Fn(&MessageId) -> bool + Sync),
    ) -> Result<Vec<(MessageId, MessageRecord)>, StoreError> {
        let mut start = match after {
            Some(id) => {
                let mut k = keys::queue(id);
                k.push(0);
                k
            }
            None => vec![keys::QUEUE],
        };
        let until = keys::queue(until);
        let mut out = Vec::new();
        // Page by page: rows left stale by a crash are dropped on the way and do not count.
        while out.len() < limit {
            let rows = self.engine.range(&start, Bound::Included(&until), limit - out.len()).await?;
            let Some((last, _)) = rows.last() else { break };
            start = [last.as_slice(), &[0]].concat();
            for (k, v) in rows {
                let Some(id) = keys::id_from(&k[1..]) else { continue };
                match self.message(&id).await? {
                    Some(mut record) if record.status == MessageStatus::Queued => {
                        if v.as_slice() == keys::IN_FLIGHT {
                            if ours(&id) {
                                continue;
                            }
                            // The last process died mid-submit: counted once, on disk. Read again
                            // under the lock: the record read above may be stale by now.
                            let _locked = self.locks.message(&id).await;
                            let fresh = self.message(&id).await?;
                            let still = self.engine.get(&k).await?.is_some_and(|row| row.as_slice() == keys::IN_FLIGHT);
                            let Some(fresh) = fresh.filter(|r| still && r.status == MessageStatus::Queued) else { continue };
                            record = fresh;
                            record.in_flight = true;
                            record.unconfirmed += 1;
                            self.engine.put(&keys::message(&id), &encode(&record)).await?;
                            self.engine.put(&k, &[]).await?;
                        }
                        out.push((id, record));
                    }
                    // Left by a change a crash cut short (module doc): the record moved on, or
                    // never made it to disk (and was never acknowledged). Not in the depth on
                    // record, which counts a message out before its queue row goes (a count at
                    // open did find it: an empty queue sets that right, see `queue_stats`).
                    _ => {
                        let _locked = self.locks.message(&id).await;
                        self.engine.delete(&k).await?;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Changes one record under the write lock. `change` returns false to leave it untouched.
    async fn update(
        &self,
        id: &MessageId,
        change: impl FnOnce(&mut MessageRecord, &mut Change) -> bool,
    ) -> Result<Option<MessageRecord>, StoreError> {
        let _locked = self.locks.message(id).await;
        let Some(mut record) = self.message(id).await? else {
            return Ok(None);
        };
        let mut rows = Change::of(&record);
        if !change(&mut record, &mut rows) {
            return Ok(Some(record));
        }
        self.apply(rows, id, &record).await?;
        Ok(Some(record))
    }

    /// Notes that a submit is about to start; written by the next group commit, which the
    /// caller waits for before the submit goes out ([`Store::durable`]).
    pub async fn mark_in_flight(&self, id: &MessageId) -> Result<(), StoreError> {
        // The queue row's value, not a record rewrite or a row of its own: this runs once per
        // submit, and the queue row goes anyway when the submit is recorded. Only a row that is
        // still there is marked (a message finished meanwhile is not queued again). With the
        // flush, it costs a database no round trip of its own.
        self.in_flight.add(keys::queue(id));
        Ok(())
    }

    /// The reference for a send of `id` in parts to `to`: one past the last reference any long
    /// message to `to` went with (a random one for a number not seen within a day), so no two
    /// sends to one handset share one, across restarts too. Kept in the record and under the
    /// number; the caller's wait for the in-flight mark ([`Store::durable`]) puts both on disk
    /// before the parts go out.
    pub async fn take_reference(&self, id: &MessageId, to: &str, now: SystemTime) -> Result<u16, StoreError> {
        let row = keys::reference(to);
        let last = self.engine.get(&row).await?.and_then(|v| Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?)));
        let reference = last.map_or_else(rand::random, |last| last.wrapping_add(1));
        let value: Vec<u8> = reference.to_be_bytes().into_iter().chain(record::to_ms(now).to_be_bytes()).collect();
        self.update(id, |r, rows| {
            r.reference = Some(reference);
            rows.add(row, value);
            true
        })
        .await?;
        Ok(reference)
    }

    /// Takes the mark back when the submit never went out (no carrier had room in time).
    pub async fn clear_in_flight(&self, id: &MessageId) -> Result<(), StoreError> {
        self.engine.swap(&keys::queue(id), Some(keys::IN_FLIGHT), Some(&[])).await?;
        Ok(())
    }

    /// Records a failed or deferred attempt; the message stays queued. `unconfirmed`: the
    /// submit went out and got no readable answer. Returns the unconfirmed submits so far.
    pub async fn record_attempt(&self, id: &MessageId, attempt: Attempt, unconfirmed: bool) -> Result<u32, StoreError> {
        let record = self
            .update(id, |r, rows| {
                if r.status == MessageStatus::Queued {
                    rows.add(keys::queue(id), []);
                }
                r.unconfirmed += u32::from(unconfirmed);
                r.push_attempt(attempt);
                true
            })
            .await?;
        Ok(record.map_or(0, |r| r.unconfirmed))
    }

    /// Ends a message without a submit (expired, failed): leaves the queue.
    pub async fn finish(
        &self,
        id: &MessageId,
        status: MessageStatus,
        error: Option<String>,
        attempt: Option<Attempt>,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let done = record::to_ms(now);
        let mut changed = false;
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
            rows.remove(keys::queue(id));
            self.emit_message(&mut rows.events, id, r, done);
            changed = true;
            true
        })
        .await?;
        if changed {
            entered(status);
        }
        Ok(())
    }

    /// Records an accepted submit: status, SMSC id and the receipt index in one change, then
    /// applies any receipt that arrived before this response. Returns the status afterwards.
    ///
    /// Submits recorded at the same time go as one batch ([`Submits`]): one read of their
    /// records, one of receipts held for them, one write.
    pub async fn mark_submitted(
        &self,
        id: &MessageId,
        carrier: &str,
        smsc_id: &str,
        attempt: Attempt,
        now: SystemTime,
    ) -> Result<Option<MessageStatus>, StoreError> {
        self.mark_submitted_parts(id, carrier, &[smsc_id.to_string()], 1, attempt, now).await
    }

    /// As [`Store::mark_submitted`] for a message the carrier took in parts (`smsc_ids`, one per
    /// part in order) and bills as `segments` SMS; each part gets its index row and its receipt.
    pub async fn mark_submitted_parts(
        &self,
        id: &MessageId,
        carrier: &str,
        smsc_ids: &[String],
        segments: u16,
        attempt: Attempt,
        now: SystemTime,
    ) -> Result<Option<MessageStatus>, StoreError> {
        let (answer, mut answered) = oneshot::channel();
        let submit = Submitted {
            id: *id,
            carrier: carrier.to_string(),
            smsc_ids: smsc_ids.to_vec(),
            segments,
            attempt,
            now_ms: record::to_ms(now),
            answer,
        };
        lock(&self.submits.pending).push(submit);
        loop {
            // Whoever holds this records every submit pending, its own among them.
            let _recording = self.submits.recording.lock().await;
            match answered.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(StoreError::Io("the submit was not recorded: the task recording its batch was cancelled".into()));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let batch = std::mem::take(&mut *lock(&self.submits.pending));
            let recorded = self.record_submits(&batch).await;
            for (submit, result) in batch.into_iter().zip(recorded) {
                let _ = submit.answer.send(result);
            }
        }
    }

    /// Records a batch of accepted submits in order, as one by one.
    async fn record_submits(&self, batch: &[Submitted]) -> Vec<Result<Option<MessageStatus>, StoreError>> {
        match self.record_submits_at_once(batch).await {
            Ok(statuses) => statuses.into_iter().map(Ok).collect(),
            Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    async fn record_submits_at_once(&self, batch: &[Submitted]) -> Result<Vec<Option<MessageStatus>>, StoreError> {
        // Every SMS sent: (its submit in the batch, its part number for a long message, its
        // canonical SMSC id).
        let sent: Vec<(usize, Option<u8>, String)> = batch
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                let long = s.smsc_ids.len() > 1;
                s.smsc_ids.iter().enumerate().map(move |(p, smsc_id)| (i, long.then_some(p as u8 + 1), crate::smsc_id::canonical(smsc_id)))
            })
            .collect();
        let ids: Vec<MessageId> = batch.iter().map(|s| s.id).collect();
        let correlation: Vec<(&str, &str)> = sent.iter().map(|(i, _, c)| (batch[*i].carrier.as_str(), c.as_str())).collect();
        let _locked = self.locks.and_messages(self.locks.take_pairs(&correlation).await, &ids).await;
        // The records, and receipts that beat these responses, read side by side.
        let held_prefixes: Vec<Vec<u8>> = correlation.iter().map(|(carrier, c)| keys::held_receipts(carrier, c)).collect();
        let (read, held) = futures::try_join!(self.messages(&ids), self.engine.first_under_each(&held_prefixes))?;
        let mut records: HashMap<MessageId, Option<MessageRecord>> = ids.iter().copied().zip(read).collect();
        let verifications = self.sent_verifications(&records).await?;
        let (mut changes, mut applied_held, mut entering, mut dequeued) = (Changes::default(), HashSet::new(), Vec::new(), 0);
        let mut windowed = Vec::new();
        let mut held = sent.iter().zip(held).peekable();
        let mut statuses = Vec::with_capacity(batch.len());
        for (i, submit) in batch.iter().enumerate() {
            let id = submit.id;
            // This submit's SMS, with the receipt held for each.
            let mut own = Vec::new();
            while let Some(((_, part, canonical), first_held)) = held.next_if(|((at, ..), _)| *at == i) {
                own.push((*part, canonical, first_held));
            }
            let Some(Some(record)) = records.get_mut(&id) else {
                statuses.push(None);
                continue;
            };
            let rows = changes.of(id, record);
            record.push_attempt(submit.attempt.clone());
            if record.status.is_final() {
                // A late response for a message already finished (e.g. expired meanwhile).
                statuses.push(Some(record.status));
                continue;
            }
            dequeued += i64::from(record.status == MessageStatus::Queued);
            record.status = MessageStatus::Submitted;
            record.submitted_ms = Some(submit.now_ms);
            record.carrier = Some(submit.carrier.clone());
            record.segments = submit.segments;
            let long = submit.smsc_ids.len() > 1;
            record.smsc_message_id = (!long).then(|| submit.smsc_ids.first().cloned()).flatten();
            record.parts = match long {
                true => (1..)
                    .zip(&submit.smsc_ids)
                    .map(|(seq, smsc_id)| PartRecord {
                        seq,
                        smsc_message_id: smsc_id.clone(),
                        status: MessageStatus::Submitted,
                        receipt: None,
                    })
                    .collect(),
                false => Vec::new(),
            };
            self.emit_message(&mut rows.events, &id, record, submit.now_ms);
            if let Some((vid, verification)) = record.verification.and_then(|v| Some((v, verifications.get(&v)?))) {
                let sent = super::events::EventType::VerificationSent;
                self.emit_verification(&mut rows.events, sent, &vid, verification, Some((&id, record)), None, submit.now_ms);
            }
            let was_final = record.status.is_final();
            for (part, canonical, first_held) in own {
                if canonical.is_empty() {
                    continue;
                }
                // One index row, under the canonical form; the receipt side reads its ids back into it.
                let (index_key, value) = (keys::receipt_index(&submit.carrier, canonical), keys::index_value(&id, part));
                // A held receipt goes to one submit, even if two in this batch share one of its
                // ids (its rows, one per candidate id, share its sequence).
                let first_held = first_held.filter(|(key, _)| applied_held.insert(keys::held_sequence(key)));
                self.apply_held(record, (&id, part), &submit.carrier, first_held, submit.now_ms, rows).await?;
                match &self.window {
                    // Into the receipt window once written (`window.rs`), with its row in submit order.
                    Some(_) => {
                        // A receipt that came first settled it already: no row to keep.
                        let answered = !super::receipts::takes_receipt(record, part);
                        if !answered {
                            rows.add(keys::window(submit.now_ms, &value), index_key.clone());
                        }
                        windowed.push((submit.now_ms, index_key, value, answered));
                    }
                    None => rows.add(index_key, value),
                }
            }
            rows.remove(keys::queue(&id));
            entering.push(MessageStatus::Submitted);
            if record.status.is_final() && !was_final {
                // A receipt that beat this response was applied just now.
                entering.push(record.status);
                self.emit_message(&mut rows.events, &id, record, submit.now_ms);
            }
            statuses.push(Some(record.status));
        }
        let (writes, events) = changes.into_writes(&records);
        self.queue_changed(-dequeued);
        if let Err(e) = self.write_with_events(writes, events).await {
            self.queue_changed(dequeued);
            return Err(e);
        }
        // Still under the correlation locks: a receipt for one of these waits until it is held.
        if let Some(window) = &self.window {
            for (at_ms, index_key, value, answered) in windowed {
                window.insert(at_ms, index_key, value, answered);
            }
        }
        for status in entering {
            entered(status);
        }
        Ok(statuses)
    }
}

impl Store {
    /// The verifications of the OTP SMS among `records` whose submit an endpoint hears of.
    async fn sent_verifications(
        &self,
        records: &HashMap<MessageId, Option<MessageRecord>>,
    ) -> Result<HashMap<VerificationId, super::verification::VerificationRecord>, StoreError> {
        let mut out = HashMap::new();
        for record in records.values().flatten() {
            let Some(vid) = record.verification else { continue };
            if self.wanted(super::events::EventType::VerificationSent, &record.owner)
                && let Some(verification) = self.verification(&vid).await?
            {
                out.insert(vid, verification);
            }
        }
        Ok(out)
    }
}

/// Accepted submits waiting to be recorded, and the lock of whoever records them: submit_sm_resps
/// come in bursts, and on a database one read and one write per burst instead of per submit is
/// what lets the message path keep up (measured in the README's PostgreSQL table).
#[derive(Default)]
pub(super) struct Submits {
    pending: std::sync::Mutex<Vec<Submitted>>,
    pub(super) recording: tokio::sync::Mutex<()>,
}

/// One accepted submit to record, and where its outcome goes.
struct Submitted {
    id: MessageId,
    carrier: String,
    /// One per part (one for a single SMS).
    smsc_ids: Vec<String>,
    segments: u16,
    attempt: Attempt,
    now_ms: u64,
    answer: oneshot::Sender<Result<Option<MessageStatus>, StoreError>>,
}

/// Counts a message entering `status`: the one place `otpgate_messages_total` moves, called
/// once the change is written.
pub(super) fn entered(status: MessageStatus) {
    metrics::counter!(telemetry::MESSAGES_TOTAL, "state" => status.as_str()).increment(1);
}
