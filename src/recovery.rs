//! Recovery: what the previous process (or the previous cluster leader) left queued or
//! mid-submit goes back to the dispatcher at start, only as fast as it drains; then messages other
//! nodes announce are handed over as they come, and a scan finds messages queued in the store
//! whose hand-off (or announcement) was lost.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::dispatch::{Dispatch, Job};
use crate::otp::Otp;
use crate::store::{MessageId, MessageRecord, MessageStatus, Store};
use crate::telemetry;

/// Recovery reads the queue this many messages at a time, while the dispatcher holds at most
/// half its backlog (`messages.dispatch_backlog`) of unfinished jobs.
const RECOVERY_PAGE: usize = 1024;

/// Re-queues what the previous run left: every queued message, in order, in the background and
/// only as fast as the dispatcher drains (a million queued messages never sit in memory at once).
/// OTP messages get a fresh code (the old one only ever existed in the dead process's memory).
/// Then it keeps looking: a message queued in the store but not handed to the dispatcher (a hand-off
/// lost on the way) is found within [`ORPHAN_SCAN_EVERY`] and handed over.
pub(crate) async fn recover(store: Arc<Store>, otp: Arc<Otp>, dispatch: Dispatch, max_resends: u32, stop: CancellationToken) {
    metrics::counter!(telemetry::RESUBMITS_TOTAL).increment(0);
    metrics::counter!(telemetry::RECOVERED_TOTAL).increment(0);
    metrics::counter!(telemetry::ORPHANS_FOUND_TOTAL).increment(0);
    metrics::counter!(telemetry::DISPATCH_DEFERRED_TOTAL).increment(0);
    let handover = Handover { store: &store, otp: &otp, dispatch: &dispatch, max_resends };
    // Listening before the first pass: nothing announced meanwhile is missed.
    let mut announced = store.announcements(stop.clone());
    if let Ok(Some(last)) = store.last_queued().await {
        let started = std::time::Instant::now();
        let (mut requeued, mut resubmits) = (0usize, 0usize);
        let mut after = None;
        loop {
            if !drained(&dispatch, &stop).await {
                return;
            }
            // A message this process's intake handed over already is being sent now.
            let ours = |id: &MessageId| dispatch.knows(id);
            let page = match store.queued_page(after.as_ref(), &last, RECOVERY_PAGE, &ours).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %e, "recovery could not read the queue; the rest waits for the next start");
                    return;
                }
            };
            let Some((id, _)) = page.last() else { break };
            after = Some(*id);
            for (id, record) in page {
                requeued += 1;
                resubmits += usize::from(record.in_flight);
                handover.hand(id).await;
            }
            metrics::counter!(telemetry::RECOVERED_TOTAL).absolute(requeued as u64);
        }
        metrics::counter!(telemetry::RESUBMITS_TOTAL).increment(resubmits as u64);
        tracing::info!(requeued, resubmits, seconds = started.elapsed().as_secs_f64(), "re-queued every message left by the previous run");
    }
    let mut tick = tokio::time::interval(ORPHAN_SCAN_EVERY);
    let mut overflow = tokio::time::interval(OVERFLOW_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = overflow.tick() => {
                if dispatch.overflowing() {
                    catch_up(&store, &handover, &dispatch, &stop).await;
                }
                continue;
            }
            Some(id) = next_announced(&mut announced) => {
                handover.hand(id).await;
                continue;
            }
            _ = stop.cancelled() => return,
        }
        let oldest = match store.oldest_queued(ORPHAN_SCAN_ROWS).await {
            Ok(oldest) => oldest,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the queue to look for lost hand-offs");
                continue;
            }
        };
        let settled = crate::store::record::to_ms(SystemTime::now().checked_sub(ORPHAN_AFTER).unwrap_or(std::time::UNIX_EPOCH));
        for (id, record) in oldest {
            if record.created_ms > settled || dispatch.knows(&id) {
                continue;
            }
            tracing::warn!(message_id = %id, "queued but not known to the dispatcher; handed over");
            metrics::counter!(telemetry::ORPHANS_FOUND_TOTAL).increment(1);
            handover.hand(id).await;
        }
    }
}

/// Waits until the dispatcher holds at most half its backlog: the feeder hands over only as fast
/// as it drains. False on `stop`.
async fn drained(dispatch: &Dispatch, stop: &CancellationToken) -> bool {
    while dispatch.backlog() > dispatch.backlog_limit() / 2 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = stop.cancelled() => return false,
        }
    }
    true
}

/// Hands over what intake left in the store while the dispatcher was full: the queue from its
/// oldest message, as fast as the dispatcher drains (messages already handed over are skipped by
/// their claim). Once a page comes back empty, intake hands over directly again, and one more
/// page picks up what it left meanwhile.
async fn catch_up(store: &Store, handover: &Handover<'_>, dispatch: &Dispatch, stop: &CancellationToken) {
    let (mut after, mut caught_up) = (None, false);
    loop {
        if !drained(dispatch, stop).await {
            return;
        }
        let ids = match store.queued_ids_after(after.as_ref(), RECOVERY_PAGE).await {
            Ok(ids) => ids,
            Err(e) => {
                // Still overflowing: the next check starts over.
                tracing::error!(error = %e, "cannot read the queue to hand over waiting messages");
                return;
            }
        };
        let Some(last) = ids.last() else {
            if caught_up {
                return;
            }
            dispatch.end_overflow();
            caught_up = true;
            continue;
        };
        after = Some(*last);
        handover.hand_all(ids).await;
    }
}

/// How often recovery looks whether intake left messages in the store for want of room.
const OVERFLOW_CHECK_EVERY: Duration = Duration::from_millis(50);

/// How often the queue's oldest messages are checked against what the dispatcher knows ...
const ORPHAN_SCAN_EVERY: Duration = Duration::from_secs(5);
/// ... how many of them ...
const ORPHAN_SCAN_ROWS: usize = 1024;
/// ... and how old a message must be before a missing hand-off is not just one still under way.
const ORPHAN_AFTER: Duration = Duration::from_secs(5);

/// Hands a queued message from the store to the dispatcher.
struct Handover<'a> {
    store: &'a Store,
    otp: &'a Otp,
    dispatch: &'a Dispatch,
    max_resends: u32,
}

/// The next announced id; pending forever where nobody announces.
async fn next_announced(announced: &mut Option<tokio::sync::mpsc::Receiver<MessageId>>) -> Option<MessageId> {
    match announced {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Handover<'_> {
    /// Hands a message over if it still waits in the store and is not handed over already: the
    /// claim comes first and the store is read after it, so a message that this process's
    /// intake handed over (and that may even have finished meanwhile) is never sent twice,
    /// nor an OTP message given a second fresh code.
    async fn hand(&self, id: MessageId) {
        if !self.dispatch.claim(&id) {
            return;
        }
        let record = match self.store.message(&id).await {
            Ok(Some(record)) if record.status == MessageStatus::Queued => record,
            Ok(_) => return self.dispatch.release(&id),
            Err(e) => {
                tracing::error!(message_id = %id, error = %e, "cannot read a queued message; the queue scan retries");
                return self.dispatch.release(&id);
            }
        };
        self.hand_claimed(id, &record).await;
    }

    /// [`Handover::hand`] for a page of ids, their records read at once.
    async fn hand_all(&self, ids: Vec<MessageId>) {
        let claimed: Vec<MessageId> = ids.into_iter().filter(|id| self.dispatch.claim(id)).collect();
        let records = match self.store.messages(&claimed).await {
            Ok(records) => records,
            Err(e) => {
                tracing::error!(error = %e, "cannot read queued messages; the queue scan retries");
                return claimed.iter().for_each(|id| self.dispatch.release(id));
            }
        };
        for (id, record) in claimed.into_iter().zip(records) {
            match record {
                Some(record) if record.status == MessageStatus::Queued => self.hand_claimed(id, &record).await,
                _ => self.dispatch.release(&id),
            }
        }
    }

    async fn hand_claimed(&self, id: MessageId, record: &MessageRecord) {
        if record.unconfirmed > self.max_resends {
            tracing::warn!(message_id = %id, unconfirmed = record.unconfirmed, "submits went out without an answer; not sent again");
            metrics::counter!(telemetry::RESEND_LIMIT_TOTAL).increment(1);
            let error = format!(
                "{} submits went out without an answer (the last cut short by a restart); not sent again, since each may already have reached the handset",
                record.unconfirmed
            );
            if let Err(e) = self.store.finish(&id, MessageStatus::Failed, Some(error), None, SystemTime::now()).await {
                tracing::error!(message_id = %id, error = %e, "store update failed");
            }
            return self.dispatch.release(&id);
        }
        if record.verification.is_none() {
            return self.dispatch.enqueue_claimed(Job::from_record(id, record));
        }
        match self.otp.reissue(id, record).await {
            Ok(Some(job)) => return self.dispatch.enqueue_claimed(job),
            Ok(None) => tracing::info!(message_id = %id, "OTP message dropped: its verification is over"),
            Err(e) => tracing::error!(message_id = %id, error = %e, "cannot reissue an OTP message"),
        }
        self.dispatch.release(&id);
    }
}
