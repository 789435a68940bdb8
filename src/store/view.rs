//! What the API (and every event about a record) shows of a message or a verification: typed
//! views that HTTP and the webhooks turn into JSON. Never a code, never its HMAC, never the SMS
//! text.

use std::time::SystemTime;

use serde::Serialize;

use super::record::{MessageId, MessageRecord, ReceiptSummary, VerificationId, rfc3339, to_ms};
use super::verification::{VerificationRecord, VerificationStatus};

/// The fields every view of a verification shares.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub id: VerificationId,
    pub to: String,
    pub status: VerificationStatus,
    pub created_at: String,
    pub expires_at: String,
    pub checks_left: u32,
    pub sends: u32,
}

/// The answer to a create (and what an Idempotency-Key replays).
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    #[serde(flatten)]
    pub summary: Summary,
    /// The SMS just queued.
    pub message_id: Option<MessageId>,
}

/// The answer to a `GET`: the verification and how its latest SMS fared.
#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    #[serde(flatten)]
    pub summary: Summary,
    pub delivery: Delivery,
}

#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub message_id: Option<MessageId>,
    pub status: Option<&'static str>,
    pub carrier: Option<String>,
    pub receipt: Option<Receipt>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    pub stat: String,
    pub err: Option<String>,
}

/// The answer to a cancel.
#[derive(Debug, Clone, Serialize)]
pub struct Canceled {
    pub id: VerificationId,
    pub status: VerificationStatus,
}

impl Summary {
    pub(crate) fn of(id: VerificationId, r: &VerificationRecord, now: SystemTime) -> Summary {
        Summary {
            id,
            to: r.to.clone(),
            status: shown_status(r, now),
            created_at: rfc3339(r.created_ms),
            expires_at: rfc3339(r.expires_ms),
            checks_left: r.checks_left,
            sends: r.sends,
        }
    }
}

impl Delivery {
    pub(crate) fn of(message_id: Option<MessageId>, message: Option<&MessageRecord>) -> Delivery {
        Delivery {
            message_id,
            status: message.map(|m| m.status.as_str()),
            carrier: message.and_then(|m| m.carrier.clone()),
            receipt: message.and_then(|m| m.receipt.as_ref()).map(receipt),
        }
    }
}

/// A pending verification past its time reads as expired even before anything wrote that.
pub(crate) fn shown_status(r: &VerificationRecord, now: SystemTime) -> VerificationStatus {
    if r.status == VerificationStatus::Pending && to_ms(now) >= r.expires_ms { VerificationStatus::Expired } else { r.status }
}

/// A message as `GET /v1/messages/{id}` shows it (and every event about it).
#[derive(Debug, Serialize)]
pub struct Message<'a> {
    pub id: MessageId,
    pub to: &'a str,
    pub status: &'static str,
    pub carrier: Option<&'a str>,
    pub smsc_message_id: Option<&'a str>,
    pub created_at: String,
    pub submitted_at: Option<String>,
    pub done_at: Option<String>,
    pub expires_at: String,
    pub receipt: Option<Receipt>,
    pub error: Option<&'a str>,
    pub attempts: usize,
    pub session: Option<&'a str>,
    /// How many SMS it takes (what the carrier bills), and in which alphabet.
    pub segments: u16,
    pub encoding: Option<&'static str>,
    /// A long message's parts as the carrier took them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part<'a>>,
}

/// One part of a long message.
#[derive(Debug, Serialize)]
pub struct Part<'a> {
    pub seq: u8,
    pub smsc_message_id: &'a str,
    pub status: &'static str,
    pub receipt: Option<Receipt>,
}

fn receipt(r: &ReceiptSummary) -> Receipt {
    Receipt { stat: r.stat.clone(), err: r.err.clone() }
}

/// [`Message`] of the record `r`.
pub fn message<'a>(id: &MessageId, r: &'a MessageRecord) -> Message<'a> {
    Message {
        id: *id,
        to: &r.to,
        status: r.status.as_str(),
        carrier: r.carrier.as_deref(),
        smsc_message_id: r.smsc_message_id.as_deref(),
        created_at: rfc3339(r.created_ms),
        submitted_at: r.submitted_ms.map(rfc3339),
        done_at: r.done_ms.map(rfc3339),
        expires_at: rfc3339(r.deadline_ms),
        receipt: r.receipt.as_ref().map(receipt),
        error: r.error.as_deref(),
        attempts: r.attempts.len(),
        session: r.attempts.last().and_then(|a| a.session.as_deref()),
        segments: r.segments,
        encoding: r.encoding.map(crate::sms::Encoding::name),
        parts: r
            .parts
            .iter()
            .map(|p| Part {
                seq: p.seq,
                smsc_message_id: &p.smsc_message_id,
                status: p.status.as_str(),
                receipt: p.receipt.as_ref().map(receipt),
            })
            .collect(),
    }
}
