//! Receipt failover: the SMS of a pending verification failed (an UNDELIV/REJECTD receipt, or
//! none within `receipt_timeout`), so a fresh code goes out through another carrier of its
//! route. The watch lives in memory and is re-armed from the store after a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::{Otp, OtpError, Wording, code, template};
use crate::dispatch::{Job, OtpSubmitted};
use crate::store::record::{from_ms, to_ms};
use crate::store::verification::{Failover, NumberStats, VerificationRecord, VerificationStatus};
use crate::store::view::shown_status;
use crate::store::{MessageId, MessageStatus, NewMessage};
use crate::telemetry;

/// OTP SMS sent before a restart whose receipt the watch must still act on.
struct Unsettled {
    /// Submitted, no final receipt yet: with the instant their `receipt_timeout` runs out (now,
    /// if it already has).
    waiting: Vec<(MessageId, Instant)>,
    /// Failed by a receipt whose failover had not happened yet.
    failed: Vec<MessageId>,
}

impl Otp {
    /// Receipt failover: the SMS of a pending verification failed (`timed_out` false: an
    /// UNDELIV/REJECTD receipt; true: no receipt within `receipt_timeout`). While the code's
    /// life lasts, a fresh code goes out through a carrier of the route not yet used for this
    /// verification (at most once per carrier). Returns whether a resend was queued.
    pub async fn failover(&self, message_id: MessageId, timed_out: bool) -> Result<bool, OtpError> {
        let Some(message) = self.store.message(&message_id).await? else { return Ok(false) };
        let still_failing = match timed_out {
            true => message.status == MessageStatus::Submitted,
            false => matches!(message.status, MessageStatus::Undeliverable | MessageStatus::Rejected),
        };
        let Some(vid) = message.verification else {
            return Ok(false);
        };
        let Some(verification) = self.store.verification(&vid).await? else { return Ok(false) };
        let now = self.now();
        let latest = verification.message_ids.last() == Some(&message_id);
        let reported = verification.failovers.iter().any(|f| f.message_id == Some(message_id));
        if !still_failing || !latest || reported || shown_status(&verification, now) != VerificationStatus::Pending {
            return Ok(false);
        }
        let from_carrier = message.carrier.clone().unwrap_or_default();
        let reason = if timed_out { "no receipt in time".to_string() } else { format!("receipt {}", message.status.as_str()) };
        let failed = |resent_as: Option<MessageId>| Failover {
            at_ms: to_ms(now),
            from_carrier: from_carrier.clone(),
            reason: reason.clone(),
            message_id: Some(message_id),
            resent_as,
            resent: resent_as.is_some(),
        };
        let fabric = self.network.current();
        let mut used: Vec<String> = Vec::new();
        for mid in &verification.message_ids {
            if let Some(carrier) = self.store.message(mid).await?.and_then(|m| m.carrier) {
                used.push(carrier);
            }
        }
        let route = fabric.routes.route(&verification.to);
        if route.is_none_or(|route| route.carriers().iter().all(|c| used.iter().any(|u| u == c.name()))) {
            tracing::info!(verification = %vid, "receipt failover: every carrier of the route was tried");
            if !timed_out {
                // The carrier said it failed and no resend follows: on record, and reported
                // (verification.delivery_failed) once.
                let record = |r: &mut VerificationRecord, _: &mut NumberStats| {
                    if r.message_ids.last() == Some(&message_id) && !r.failovers.iter().any(|f| f.message_id == Some(message_id)) {
                        r.failovers.push(failed(None));
                    }
                };
                self.store.update_verification(&vid, record).await?;
            }
            return Ok(false);
        }
        let code = code::generate(verification.code_length)?;
        let text = self.render(&Wording::of(&verification), code.expose());
        let new_id = self.store.new_id();
        let deadline = from_ms(verification.expires_ms);
        let (encoding, segments) = super::measured(&text);
        let new_message = NewMessage {
            owner: verification.owner.clone(),
            to: verification.to.clone(),
            from: None,
            text: template::mask(&text, code.expose()),
            deadline,
            encoding,
            segments,
            options: Default::default(),
        };
        // The message first: a crash before the verification points at it leaves a message the
        // recovery recognises as stale (it is not the verification's latest) and drops.
        self.store.insert_otp_message(new_id, new_message, vid, now).await?;
        let sealed = self.sealed(&vid, &verification.context, &code);
        let change = |r: &mut VerificationRecord, _: &mut NumberStats| {
            let still = shown_status(r, now) == VerificationStatus::Pending && r.message_ids.last() == Some(&message_id);
            if still {
                r.code_hmac = sealed.clone();
                r.message_ids.push(new_id);
                r.failovers.push(failed(Some(new_id)));
            }
            still
        };
        if !matches!(self.store.update_verification(&vid, change).await?, Some((_, true))) {
            self.store.finish(&new_id, MessageStatus::Expired, Some("its verification moved on".into()), None, now).await?;
            return Ok(false);
        }
        tracing::info!(verification = %vid, from = %from_carrier, %reason, "OTP resent through another carrier");
        metrics::counter!(telemetry::VERIFICATIONS_TOTAL, "outcome" => "failover").increment(1);
        self.dispatch.enqueue(Job {
            id: new_id,
            sms: self.outbound(&verification.to, text, deadline, &verification.locale),
            avoid: used,
            only: None,
            verification: Some(vid),
        });
        Ok(true)
    }

    /// The latest SMS of each pending verification that the receipt watch must still follow:
    /// the watch lives in memory, so after a restart it is re-armed from the store.
    async fn unsettled(&self) -> Result<Unsettled, OtpError> {
        let now = self.now();
        let (mut waiting, mut failed) = (Vec::new(), Vec::new());
        for vid in self.store.pending_verifications().await? {
            let Some(verification) = self.store.verification(&vid).await? else { continue };
            if shown_status(&verification, now) != VerificationStatus::Pending {
                continue;
            }
            let Some(&mid) = verification.message_ids.last() else { continue };
            let Some(message) = self.store.message(&mid).await? else { continue };
            match message.status {
                MessageStatus::Submitted => {
                    let submitted = from_ms(message.submitted_ms.unwrap_or(message.created_ms));
                    let due = submitted + self.policy.receipt_timeout;
                    waiting.push((mid, Instant::now() + due.duration_since(now).unwrap_or_default()));
                }
                MessageStatus::Undeliverable | MessageStatus::Rejected => failed.push(mid),
                _ => {}
            }
        }
        Ok(Unsettled { waiting, failed })
    }

    /// Watches submitted OTP SMS for their receipts: `failed` carries messages whose receipt
    /// came back UNDELIV/REJECTD; those with no receipt within `receipt_timeout` count too.
    pub async fn watch_receipts(
        self: Arc<Self>,
        mut submitted: UnboundedReceiver<OtpSubmitted>,
        mut failed: UnboundedReceiver<MessageId>,
        stop: CancellationToken,
    ) {
        let mut deadlines: HashMap<MessageId, Instant> = HashMap::new();
        match self.unsettled().await {
            Ok(Unsettled { waiting, failed }) => {
                if !waiting.is_empty() || !failed.is_empty() {
                    tracing::info!(
                        waiting = waiting.len(),
                        failed = failed.len(),
                        "receipt watch re-armed for OTP SMS sent before the restart"
                    );
                }
                deadlines.extend(waiting);
                for id in failed {
                    if let Err(e) = self.failover(id, false).await {
                        tracing::error!(message_id = %id, error = %e, "receipt failover failed");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot re-arm the receipt watch after a restart"),
        }
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                Some(s) = submitted.recv() => {
                    deadlines.insert(s.message, Instant::now() + self.policy.receipt_timeout);
                }
                Some(id) = failed.recv() => {
                    deadlines.remove(&id);
                    if let Err(e) = self.failover(id, false).await {
                        tracing::error!(message_id = %id, error = %e, "receipt failover failed");
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    let due: Vec<MessageId> = deadlines.iter().filter(|(_, at)| **at <= now).map(|(id, _)| *id).collect();
                    for id in due {
                        deadlines.remove(&id);
                        if let Err(e) = self.failover(id, true).await {
                            tracing::error!(message_id = %id, error = %e, "receipt-timeout failover failed");
                        }
                    }
                }
                _ = stop.cancelled() => break,
            }
        }
    }
}
