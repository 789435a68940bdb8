//! Verification rows: the verification itself, the "pending for this number" index and the
//! per-number counters that rate rules need (`keys.rs`: `v`, `o`, `n`, `w`). Policy
//! lives in `otp`; this file only makes each change atomic and durable.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::codec::Stored;
use super::engine::PAGE;
use super::engine::Tx;
use super::events::{Emitted, EventType};
use super::messages::queued_rows;
use super::record::{MessageId, VerificationId};
use super::sweep::cutoff;
use super::{NewMessage, Store, StoreError, decode, encode, idempotency, keys};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerificationStatus {
    Pending,
    Approved,
    Expired,
    Canceled,
    MaxAttemptsReached,
}

impl VerificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationStatus::Pending => "pending",
            VerificationStatus::Approved => "approved",
            VerificationStatus::Expired => "expired",
            VerificationStatus::Canceled => "canceled",
            VerificationStatus::MaxAttemptsReached => "max_attempts_reached",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationRecord {
    pub owner: String,
    pub to: String,
    pub status: VerificationStatus,
    /// HMAC-SHA256 of (id, context, code), hex. Never the code.
    pub code_hmac: String,
    pub context: String,
    pub locale: String,
    pub code_length: usize,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub checks_left: u32,
    pub sends: u32,
    pub last_send_ms: u64,
    /// Messages sent for it, oldest first.
    pub message_ids: Vec<MessageId>,
    pub done_ms: Option<u64>,
    /// Resends through another carrier after a failed or missing receipt.
    #[serde(default)]
    pub failovers: Vec<Failover>,
    /// The brand its SMS name instead of `[otp] brand`, if the request set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    /// The Android SMS Retriever hash its SMS end with, if the request set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_hash: Option<String>,
}

super::codec::stored_as_json!(VerificationRecord, NumberStats);

/// One failed SMS of a verification, and the resend through another carrier if one followed
/// (receipt failover).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    pub at_ms: u64,
    /// The carrier whose SMS failed.
    pub from_carrier: String,
    pub reason: String,
    /// The SMS that failed.
    #[serde(default)]
    pub message_id: Option<MessageId>,
    /// The SMS sent instead through another carrier; `None` when every carrier of the route was
    /// tried. (Records from before this field all had one: their `resent` defaults to true.)
    #[serde(default)]
    pub resent_as: Option<MessageId>,
    #[serde(default = "resent_before_it_was_recorded")]
    pub resent: bool,
}

fn resent_before_it_was_recorded() -> bool {
    true
}

impl Failover {
    /// What `verification.delivery_failed` says of it.
    fn event_view(&self) -> serde_json::Value {
        serde_json::json!({
            "failed_message_id": self.message_id,
            "failed_carrier": self.from_carrier,
            "reason": self.reason,
            "failover": self.resent,
            "failover_message_id": self.resent_as,
        })
    }
}

/// What the rules need to know about a number, kept for the longest window: across all API
/// keys (the number's ceiling) and per API key (each client's own limits).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberStats {
    pub sends_ms: Vec<u64>,
    pub failed_checks_ms: Vec<u64>,
    /// The same, per API key (by name); bounded by the configured keys.
    #[serde(default)]
    pub by_owner: std::collections::BTreeMap<String, Recent>,
}

/// How long a key's last approval for a number is kept: the fraud guard lets such returning
/// users through a suspended prefix.
pub const APPROVALS_KEPT: Duration = Duration::from_secs(90 * 86_400);

/// Recent sends and failed checks, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recent {
    pub sends_ms: Vec<u64>,
    pub failed_checks_ms: Vec<u64>,
    /// When this key's last verification for the number was approved: a new one may start at
    /// once (the resend cooldown guards unfinished ones).
    #[serde(default)]
    pub approved_ms: Option<u64>,
}

impl NumberStats {
    /// Drops entries older than their window before `now`, and keys with nothing left.
    pub fn prune(&mut self, sends_window: Duration, failures_window: Duration, now: SystemTime) {
        let (s, f) = (cutoff(sends_window, now), cutoff(failures_window, now));
        self.sends_ms.retain(|&t| t > s);
        self.failed_checks_ms.retain(|&t| t > f);
        for recent in self.by_owner.values_mut() {
            recent.sends_ms.retain(|&t| t > s);
            recent.failed_checks_ms.retain(|&t| t > f);
        }
        // A key's last approval stays longer: the fraud guard lets numbers that converted before
        // through a suspended prefix.
        let approved = cutoff(APPROVALS_KEPT, now);
        self.by_owner
            .retain(|_, r| !r.sends_ms.is_empty() || !r.failed_checks_ms.is_empty() || r.approved_ms.is_some_and(|t| t > approved));
    }

    /// One API key's share.
    pub fn of(&mut self, owner: &str) -> &mut Recent {
        self.by_owner.entry(owner.to_string()).or_default()
    }
}

/// A send (first or resend) decided by the policy, to be written atomically.
pub struct VerificationSend {
    pub id: VerificationId,
    pub record: VerificationRecord,
    pub message_id: MessageId,
    pub message: NewMessage,
    /// `(Idempotency-Key, body hash, response body)` to remember.
    pub idempotency: Option<(String, String, String)>,
}

impl Store {
    pub async fn verification(&self, id: &VerificationId) -> Result<Option<VerificationRecord>, StoreError> {
        self.read(&keys::verification(id), || format!("verification {id}")).await
    }

    /// Decides and writes a verification send in one step: `decide` sees the owner's pending
    /// verification for `to` (if any) and the number's stats, and returns the send to write or
    /// its own error. The verification, the index, the stats, the message, its queue entry and
    /// the idempotency entry go into one atomic change; returns after it is durable.
    pub async fn send_verification<E>(
        &self,
        owner: &str,
        to: &str,
        decide: impl FnOnce(Option<(VerificationId, VerificationRecord)>, &mut NumberStats) -> Result<VerificationSend, E>,
    ) -> Result<Result<VerificationSend, E>, StoreError> {
        let mut tx = Tx::begin(&self.engine, &self.locks, to).await?;
        let pending = match tx.get(&keys::pending(owner, to)).await?.and_then(|bytes| keys::id_from(&bytes)).map(VerificationId) {
            Some(id) => verification_in(&tx, &id).await?.map(|r| (id, r)),
            None => None,
        };
        let mut stats: NumberStats = decode(tx.get(&keys::number(to)).await?, || "number stats".to_string())?.unwrap_or_default();
        let previous = pending.as_ref().map(|(id, _)| *id);
        let send = match decide(pending, &mut stats) {
            Ok(send) => send,
            Err(e) => return Ok(Err(e)),
        };
        let mut events = Emitted::default();
        if let Some(previous) = previous.filter(|p| *p != send.id) {
            // A new verification replaced an expired pending one: finish that one.
            if let Some(mut old) = verification_in(&tx, &previous).await? {
                old.status = VerificationStatus::Expired;
                old.done_ms = Some(send.record.created_ms);
                self.emit_verification_end(&mut events, &previous, &old, send.record.created_ms).await?;
                tx.put(keys::done(keys::VERIFICATION_DONE, send.record.created_ms, &previous.0), Vec::new());
                tx.put(keys::verification(&previous), encode(&old));
            }
        }
        tx.put(keys::verification(&send.id), encode(&send.record));
        tx.put(keys::pending(owner, to), send.id.0.0.to_vec());
        tx.put(keys::number(to), encode(&stats));
        let message = super::record::MessageRecord::queued(send.message.clone(), send.record.last_send_ms, Some(send.id));
        for (k, v) in queued_rows(&send.message_id, &message) {
            tx.put(k, v);
        }
        if let Some((key, body_sha256, response)) = &send.idempotency {
            let (k, v) = idempotency::row(owner, key, body_sha256, &send.id.0, send.record.last_send_ms, Some(response));
            tx.put(k, v);
        }
        for (k, v) in &events.rows {
            tx.put(k.clone(), v.clone());
        }
        tx.commit().await?;
        self.events_written(&events.rows);
        self.queue_changed(1);
        self.commit.durable().await?;
        super::messages::entered(super::MessageStatus::Queued);
        Ok(Ok(send))
    }

    /// Changes a verification and its number's stats atomically and durably. `change` returns
    /// a value for the caller; the pending index follows the status.
    pub async fn update_verification<T>(
        &self,
        id: &VerificationId,
        change: impl FnOnce(&mut VerificationRecord, &mut NumberStats) -> T,
    ) -> Result<Option<(VerificationRecord, T)>, StoreError> {
        // A verification's number never changes: read it to know which lock to take, then read
        // the record again under the lock.
        let Some(unlocked) = self.verification(id).await? else {
            return Ok(None);
        };
        let mut tx = Tx::begin(&self.engine, &self.locks, &unlocked.to).await?;
        let Some(mut record) = verification_in(&tx, id).await? else {
            return Ok(None);
        };
        let mut stats: NumberStats = decode(tx.get(&keys::number(&record.to)).await?, || "number stats".to_string())?.unwrap_or_default();
        let was_pending = record.status == VerificationStatus::Pending;
        let failovers = record.failovers.len();
        let out = change(&mut record, &mut stats);
        let now_ms = super::record::to_ms(SystemTime::now());
        let mut events = Emitted::default();
        if let Some(failed) = record.failovers.get(failovers..).and_then(<[Failover]>::last) {
            let failed_message = match failed.message_id {
                Some(mid) => self.message(&mid).await?.map(|m| (mid, m)),
                None => None,
            };
            let latest = failed_message.as_ref().map(|(m, r)| (m, r));
            let kind = EventType::VerificationDeliveryFailed;
            self.emit_verification(&mut events, kind, id, &record, latest, Some(("failover", failed.event_view())), now_ms);
        }
        if was_pending && record.status != VerificationStatus::Pending {
            self.emit_verification_end(&mut events, id, &record, now_ms).await?;
            let done = record.done_ms.unwrap_or(record.last_send_ms);
            record.done_ms = Some(done);
            tx.put(keys::done(keys::VERIFICATION_DONE, done, &id.0), Vec::new());
            // Only drop the index if it still points here.
            let index = keys::pending(&record.owner, &record.to);
            if tx.get(&index).await?.as_deref() == Some(&id.0.0[..]) {
                tx.delete(index);
            }
        }
        tx.put(keys::verification(id), encode(&record));
        tx.put(keys::number(&record.to), encode(&stats));
        for (k, v) in &events.rows {
            tx.put(k.clone(), v.clone());
        }
        tx.commit().await?;
        self.events_written(&events.rows);
        self.commit.durable().await?;
        Ok(Some((record, out)))
    }

    /// Deletes verifications finished more than `retention` ago and number stats with nothing
    /// recent. Returns how many verifications went.
    pub async fn sweep_verifications(&self, retention: Duration, stats_window: Duration, now: SystemTime) -> Result<usize, StoreError> {
        let mut deleted = 0;
        loop {
            let page = self.finished_by(keys::VERIFICATION_DONE, cutoff(retention, now)).await?;
            for (k, ids) in &page {
                for id in ids {
                    self.engine.delete(&keys::verification(&VerificationId(*id))).await?;
                    deleted += 1;
                }
                self.engine.delete(k).await?;
            }
            if page.len() < PAGE {
                break;
            }
            tokio::task::yield_now().await;
        }
        let stale_before = cutoff(stats_window, now);
        let mut pages = self.engine.pages(&[keys::NUMBER]);
        while let Some(rows) = pages.next().await? {
            for (k, v) in rows {
                let stale =
                    NumberStats::from_row(&v).is_none_or(|s| s.sends_ms.iter().chain(&s.failed_checks_ms).all(|&t| t <= stale_before));
                if stale {
                    // Only if no send or check changed it since it was read.
                    self.engine.swap(&k, Some(&v), None).await?;
                }
            }
        }
        Ok(deleted)
    }

    /// Ids of pending verifications (for the sweep to expire the ones past their time).
    pub async fn pending_verifications(&self) -> Result<Vec<VerificationId>, StoreError> {
        let (mut out, mut pages) = (Vec::new(), self.engine.pages(&[keys::PENDING]));
        while let Some(rows) = pages.next().await? {
            out.extend(rows.iter().filter_map(|(_, v)| keys::id_from(v)).map(VerificationId));
        }
        Ok(out)
    }
}

/// A verification as a change reads it.
async fn verification_in(tx: &Tx<'_>, id: &VerificationId) -> Result<Option<VerificationRecord>, StoreError> {
    decode(tx.get(&keys::verification(id)).await?, || format!("verification {id}"))
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::store::settings::BackendKind;
    use crate::store::tests::Place;

    fn send(store: &Store, to: &str, now: SystemTime) -> VerificationSend {
        let ms = crate::store::record::to_ms(now);
        let message = NewMessage {
            owner: "key".into(),
            to: to.into(),
            from: None,
            text: "code".into(),
            deadline: now + Duration::from_secs(300),
            encoding: None,
            segments: 1,
            options: Default::default(),
        };
        let record = VerificationRecord {
            owner: "key".into(),
            to: to.into(),
            status: VerificationStatus::Pending,
            code_hmac: "00".into(),
            context: String::new(),
            locale: "en".into(),
            code_length: 6,
            created_ms: ms,
            expires_ms: ms + 600_000,
            checks_left: 5,
            sends: 1,
            last_send_ms: ms,
            message_ids: Vec::new(),
            done_ms: None,
            failovers: Vec::new(),
            brand: None,
            app_hash: None,
        };
        VerificationSend { id: VerificationId(store.new_id()), record, message_id: store.new_id(), message, idempotency: None }
    }

    /// Two nodes on one database race to start and to approve verifications of one number: the
    /// number's lock makes each rule hold cluster-wide (one pending verification, one approval).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_racing_on_one_number_change_it_once() {
        let Some(place) = Place::new(BackendKind::Postgres).await else { return };
        let nodes = [place.open().await, place.open().await];
        let now = SystemTime::now();
        let to = "+447700900123";
        let wins = |tasks: Vec<tokio::task::JoinHandle<bool>>| async move {
            futures::future::join_all(tasks).await.into_iter().filter(|won| *won.as_ref().unwrap()).count()
        };
        let starts = (0..20).map(|n| {
            let store = nodes[n % 2].clone();
            tokio::spawn(async move {
                let decided = store.send_verification("key", to, |pending, _| match pending {
                    Some(_) => Err(()),
                    None => Ok(send(&store, to, now)),
                });
                decided.await.unwrap().is_ok()
            })
        });
        assert_eq!(wins(starts.collect()).await, 1, "one pending verification per number");
        let id = nodes[0].pending_verifications().await.unwrap()[0];
        let approvals = (0..20).map(|n| {
            let store = nodes[n % 2].clone();
            tokio::spawn(async move {
                let approve = |record: &mut VerificationRecord, _: &mut NumberStats| {
                    let pending = record.status == VerificationStatus::Pending;
                    record.status = VerificationStatus::Approved;
                    pending
                };
                store.update_verification(&id, approve).await.unwrap().unwrap().1
            })
        });
        assert_eq!(wins(approvals.collect()).await, 1, "approved once");
        for node in nodes {
            node.close().await.unwrap();
        }
    }
}
