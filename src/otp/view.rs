//! What the API shows of a verification: typed views that HTTP turns into JSON. Never a code,
//! never its HMAC, never the SMS text.

use std::time::SystemTime;

use serde::Serialize;

use crate::store::record::{MessageRecord, rfc3339, to_ms};
use crate::store::verification::{VerificationRecord, VerificationStatus};
use crate::store::{MessageId, VerificationId};

/// The fields every view of a verification shares.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub id: VerificationId,
    pub to: String,
    pub status: VerificationStatus,
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
            receipt: message.and_then(|m| m.receipt.as_ref()).map(|r| Receipt { stat: r.stat.clone(), err: r.err.clone() }),
        }
    }
}

/// A pending verification past its time reads as expired even before anything wrote that.
pub(crate) fn shown_status(r: &VerificationRecord, now: SystemTime) -> VerificationStatus {
    if r.status == VerificationStatus::Pending && to_ms(now) >= r.expires_ms { VerificationStatus::Expired } else { r.status }
}
