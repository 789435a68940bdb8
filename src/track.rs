//! Receipt tracking: receipts from every carrier session to their messages in the store, a
//! batch per group commit, each answered to its SMSC only once it is on disk. Reads each
//! receipt's ids the ways its carrier allows (learning the one way under `receipt_id = "auto"`),
//! counts what matched and reports failed OTP messages for receipt failover.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::smpp::receipt::{IdReading, IdRelation};
use crate::smpp::{DeliveryState, Receipt, ReceiptEvent};
use crate::smsc_id;
use crate::store::{IncomingReceipt, MessageId, MessageStatus, ReceiptMatch, Store};
use crate::telemetry;

/// Receipts wait here when the store is slow; sessions then slow down too, since a deliver_sm
/// is answered only once its receipt is on disk.
pub(crate) const RECEIPT_QUEUE: usize = 4096;

/// Receipts applied (per carrier, with one store change) before one group commit covers them all.
const RECEIPT_BATCH: usize = 256;

/// Applies receipts to their messages, a batch at a time, and answers the SMSC for each only
/// once the batch is on disk (one group commit per batch, so the receipt rate does not fall).
/// Failed ones are reported for OTP receipt failover.
pub(crate) async fn track_receipts(
    store: Arc<Store>,
    mut receipts: mpsc::Receiver<ReceiptEvent>,
    failed: mpsc::UnboundedSender<MessageId>,
) {
    let mut batch = Vec::with_capacity(RECEIPT_BATCH);
    let mut learned: HashMap<Arc<str>, IdLearner> = HashMap::new();
    while receipts.recv_many(&mut batch, RECEIPT_BATCH).await > 0 {
        // The store's part one change per carrier; what follows from each result (id
        // learning, metrics) in arrival order.
        let stored = store_receipts(&store, &batch, &learned).await;
        let mut applied = Vec::with_capacity(batch.len());
        for (event, stored) in batch.iter().zip(stored) {
            applied.push(account(event, stored, learned.entry(event.carrier.clone()).or_default(), &failed));
        }
        let durable = match store.durable().await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "receipts not flushed; the SMSC is asked to send them again");
                false
            }
        };
        for (mut event, applied) in batch.drain(..).zip(applied) {
            event.recorded(applied && durable);
        }
    }
}

/// What `receipt_id = "auto"` has learned of one carrier's receipt ids.
#[derive(Default)]
struct IdLearner {
    learned: Option<IdReading>,
    /// The reading of the last unambiguous matches, and how many in a row.
    streak: Option<(IdReading, u32)>,
}

/// Unambiguous matches in a row under one reading before `auto` settles on it.
const LEARN_AFTER: u32 = 5;

impl IdLearner {
    fn observe(&mut self, carrier: &str, reading: IdReading) {
        if self.learned.is_some() {
            return;
        }
        let run = match self.streak {
            Some((r, n)) if r == reading => n + 1,
            _ => 1,
        };
        self.streak = Some((reading, run));
        if run >= LEARN_AFTER {
            tracing::info!(carrier, reading = reading.as_str(), "receipt ids learned: matched this way {LEARN_AFTER} times in a row");
            self.learned = Some(reading);
        }
    }
}

/// What storing one receipt came to: `None` for a receipt with nothing in it to store.
type Stored = Option<Result<ReceiptMatch<IdReading>, crate::store::StoreError>>;

/// Applies a batch of receipts to the store, each carrier's as one change (their ids read each
/// way their carrier allows); one result per event, in order.
async fn store_receipts(store: &Store, batch: &[ReceiptEvent], learned: &HashMap<Arc<str>, IdLearner>) -> Vec<Stored> {
    let mut by_carrier: Vec<(Arc<str>, Vec<usize>)> = Vec::new();
    for (i, event) in batch.iter().enumerate() {
        if event.receipt.is_err() {
            continue;
        }
        match by_carrier.iter_mut().find(|(carrier, _)| *carrier == event.carrier) {
            Some((_, events)) => events.push(i),
            None => by_carrier.push((event.carrier.clone(), vec![i])),
        }
    }
    let changes = by_carrier.iter().map(|(carrier, events)| {
        let readings = batch[events[0]].id_relation.readings(learned.get(carrier).and_then(|l| l.learned));
        let receipts = events.iter().filter_map(|&i| batch[i].receipt.as_ref().ok()).map(|r| incoming(r, readings)).collect();
        store.apply_receipts(carrier, receipts, SystemTime::now())
    });
    let mut stored: Vec<Stored> = batch.iter().map(|_| None).collect();
    for ((_, events), applied) in by_carrier.iter().zip(futures::future::join_all(changes).await) {
        match applied {
            Ok(matches) => {
                for (&i, matched) in events.iter().zip(matches) {
                    stored[i] = Some(Ok(matched));
                }
            }
            Err(e) => {
                for &i in events {
                    stored[i] = Some(Err(e.clone()));
                }
            }
        }
    }
    stored
}

/// Counts and follows up one stored receipt; false when the store could not record it.
fn account(event: &ReceiptEvent, stored: Stored, ids: &mut IdLearner, failed: &mpsc::UnboundedSender<MessageId>) -> bool {
    let carrier = event.carrier.to_string();
    let (receipt, stored) = match (&event.receipt, stored) {
        (Ok(receipt), Some(stored)) => (receipt, stored),
        (Err(e), _) => {
            // Nothing in it to keep: counted, and answered like any other.
            tracing::warn!(%carrier, error = %e, "unreadable receipt counted as unmatched");
            metrics::counter!(telemetry::RECEIPTS_UNMATCHED_TOTAL, "carrier" => carrier).increment(1);
            return true;
        }
        (Ok(_), None) => return true,
    };
    metrics::counter!(telemetry::RECEIPTS_TOTAL, "carrier" => carrier.clone(), "stat" => receipt.state.as_str()).increment(1);
    match stored {
        Ok(ReceiptMatch::Matched { id, status, latency, finished, reading }) => {
            tracing::debug!(%carrier, message_id = %id, status = status.as_str(), "receipt matched");
            if let (IdRelation::Auto, Some(reading)) = (event.id_relation, reading) {
                ids.observe(&carrier, reading);
            }
            if let Some(latency) = latency {
                metrics::histogram!(telemetry::RECEIPT_LATENCY_SECONDS, "carrier" => carrier.clone()).record(latency.as_secs_f64());
            }
            if finished && matches!(status, MessageStatus::Undeliverable | MessageStatus::Rejected) {
                let _ = failed.send(id);
            }
            true
        }
        Ok(ReceiptMatch::Late { id }) => {
            tracing::debug!(%carrier, message_id = %id, "receipt after the final one; counted, not applied");
            metrics::counter!(telemetry::RECEIPTS_LATE_TOTAL, "carrier" => carrier).increment(1);
            true
        }
        Ok(ReceiptMatch::Ambiguous) => {
            tracing::warn!(%carrier, smsc_id = %receipt.message_id, "receipt id names different messages under different readings; not applied (set receipt_id for this carrier)");
            metrics::counter!(telemetry::RECEIPTS_AMBIGUOUS_TOTAL, "carrier" => carrier).increment(1);
            true
        }
        Ok(ReceiptMatch::Held) => {
            tracing::debug!(%carrier, smsc_id = %receipt.message_id, "receipt arrived before its submit_sm_resp; held");
            metrics::counter!(telemetry::RECEIPTS_HELD_TOTAL, "carrier" => carrier).increment(1);
            true
        }
        Ok(ReceiptMatch::Dropped) => {
            // Logged by count, not per receipt: a flood of them is the case this guards.
            metrics::counter!(telemetry::RECEIPTS_DROPPED_TOTAL, "carrier" => carrier, "reason" => "held_full").increment(1);
            true
        }
        Err(e) => {
            tracing::error!(%carrier, error = %e, "could not record receipt");
            false
        }
    }
}

/// The status a final receipt puts a message in; `None` for progress reports.
pub(crate) fn final_status(state: DeliveryState) -> Option<MessageStatus> {
    Some(match state {
        DeliveryState::Delivered => MessageStatus::Delivered,
        DeliveryState::Undeliverable | DeliveryState::Deleted => MessageStatus::Undeliverable,
        DeliveryState::Expired => MessageStatus::Expired,
        DeliveryState::Rejected => MessageStatus::Rejected,
        _ => return None,
    })
}

/// A receipt as the store matches it: the TLV id as the response's id itself, the text id
/// under each of `readings`.
pub(crate) fn incoming(receipt: &Receipt, readings: &[IdReading]) -> IncomingReceipt<IdReading> {
    let read_ids = match receipt.text_id() {
        Some(text) => readings.iter().filter_map(|&r| r.response_id(text).map(|k| (r, k))).collect(),
        None => Vec::new(),
    };
    IncomingReceipt {
        exact_id: receipt.tlv_id().map(smsc_id::canonical),
        read_ids,
        stat: receipt.stat.clone().unwrap_or_else(|| receipt.state.as_str().to_string()),
        err: receipt.err.clone(),
        final_status: final_status(receipt.state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Attempt, NewMessage, StoreOptions};

    fn receipt(id: &str) -> Receipt {
        Receipt {
            message_id: id.into(),
            alternate_id: None,
            id_from_tlv: false,
            state: DeliveryState::Delivered,
            stat: Some("DELIVRD".into()),
            err: Some("000".into()),
            submitted: None,
            delivered: None,
            submit_date: None,
            done_date: None,
            network_error: None,
        }
    }

    /// Receipt ids in another base than their submit_sm_resp find their message, and the one
    /// reading that matched is reported for `receipt_id = "auto"` to learn.
    #[tokio::test]
    async fn receipts_match_their_submit_in_any_base() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).await.unwrap();
        let now = SystemTime::now();
        let pairs = [
            ("70BA8A69", "1891273321", Some(IdReading::HexToDec)),
            ("1891273321", "70ba8a69", Some(IdReading::DecToHex)),
            ("38601FA", "0059113978", Some(IdReading::HexToDec)),
            ("a29f6845", "A29F6845", Some(IdReading::Same)),
        ];
        for (i, (response, receipt_id, learned)) in pairs.into_iter().enumerate() {
            let message = NewMessage {
                owner: "t".into(),
                to: "+447700900123".into(),
                from: None,
                text: "hi".into(),
                deadline: now,
                encoding: None,
                segments: 1,
                options: Default::default(),
            };
            let (id, _) = store.insert_message(message, None, now).await.unwrap();
            let carrier = format!("c{i}");
            let attempt = Attempt { at_ms: 0, carrier: carrier.clone(), session: None, result: "ok".into(), detail: String::new() };
            store.mark_submitted(&id, &carrier, response, attempt, now).await.unwrap();
            match store.apply_receipt(&carrier, incoming(&receipt(receipt_id), &IdReading::ALL), now).await.unwrap() {
                ReceiptMatch::Matched { id: matched, reading, .. } => {
                    assert_eq!(matched, id, "{response} / {receipt_id}");
                    assert_eq!(reading, learned, "{response} / {receipt_id}");
                }
                other => panic!("{response} / {receipt_id}: {other:?}"),
            }
        }
        store.close().await.unwrap();
    }

    #[test]
    fn progress_reports_are_not_final() {
        assert_eq!(final_status(DeliveryState::Enroute), None);
        assert_eq!(final_status(DeliveryState::Deleted), Some(MessageStatus::Undeliverable));
    }
}
