//! What the store keeps about one message.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A message's id: 8 bytes of a microsecond timestamp (so ids sort in arrival order without
/// telling anyone how many messages other clients sent: a counter did) and 8 random bytes (so ids
/// cannot be guessed). Shown as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    pub fn new(order: u64) -> MessageId {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&order.to_be_bytes());
        bytes[8..].copy_from_slice(&rand::random::<[u8; 8]>());
        MessageId(bytes)
    }

    /// When the id was made (ms since the epoch).
    pub fn made_ms(&self) -> u64 {
        let mut micros = [0u8; 8];
        micros.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(micros) / 1000
    }

    /// The smallest id made at `ms` (ids made then or later sort at or after it).
    pub fn first_at(ms: u64) -> MessageId {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&ms.saturating_mul(1000).to_be_bytes());
        MessageId(bytes)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = crate::hex::encode16(&self.0);
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&digits).unwrap_or_default())
    }
}

impl FromStr for MessageId {
    type Err = ();

    fn from_str(text: &str) -> Result<MessageId, ()> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(());
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| ())?;
        }
        Ok(MessageId(bytes))
    }
}

/// Ids are stored and shown as their 32 hex digits.
impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<MessageId, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(|()| serde::de::Error::custom("an id is 32 hex digits"))
    }
}

/// A verification's id: made like a message id, never mistaken for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VerificationId(pub MessageId);

impl fmt::Display for VerificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for VerificationId {
    type Err = ();

    fn from_str(text: &str) -> Result<VerificationId, ()> {
        text.parse().map(VerificationId)
    }
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Taken in, waiting for (or in the middle of) a submit.
    Queued,
    /// An SMSC accepted it; waiting for the receipt.
    Submitted,
    Delivered,
    Undeliverable,
    /// Its validity passed: before it could be sent, or (receipt EXPIRED) at the carrier.
    Expired,
    /// The carrier rejected it after accepting it (receipt REJECTD).
    Rejected,
    /// A permanent submit error.
    Failed,
}

/// Every status in the order of its one-byte code in binary rows (append only).
const STATUSES: [MessageStatus; 7] = [
    MessageStatus::Queued,
    MessageStatus::Submitted,
    MessageStatus::Delivered,
    MessageStatus::Undeliverable,
    MessageStatus::Expired,
    MessageStatus::Rejected,
    MessageStatus::Failed,
];

impl MessageStatus {
    /// Its one-byte code in binary rows.
    pub(crate) fn code(self) -> u8 {
        STATUSES.iter().position(|s| *s == self).unwrap_or_default() as u8
    }

    pub(crate) fn from_code(code: u8) -> Option<MessageStatus> {
        STATUSES.get(usize::from(code)).copied()
    }

    pub fn is_final(self) -> bool {
        !matches!(self, MessageStatus::Queued | MessageStatus::Submitted)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Queued => "queued",
            MessageStatus::Submitted => "submitted",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Undeliverable => "undeliverable",
            MessageStatus::Expired => "expired",
            MessageStatus::Rejected => "rejected",
            MessageStatus::Failed => "failed",
        }
    }
}

/// One try at submitting the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub at_ms: u64,
    pub carrier: String,
    /// The session that carried it (`carrier#slot/mode`), when one did.
    #[serde(default)]
    pub session: Option<String>,
    /// `ok`, `retry_later`, `retry_elsewhere` or `permanent`.
    pub result: String,
    pub detail: String,
}

/// What the receipt said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptSummary {
    pub stat: String,
    pub err: Option<String>,
    pub at_ms: u64,
    /// The receipt reported a final state: later receipts for the message are not applied.
    #[serde(default)]
    pub is_final: bool,
}

/// One part of a long message, as the carrier took it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    /// From 1.
    pub seq: u8,
    pub smsc_message_id: String,
    /// Submitted, then the final state its own receipt gave.
    pub status: MessageStatus,
    pub receipt: Option<ReceiptSummary>,
}

/// The stored record of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// The API key (by name) that sent it; others cannot read it.
    pub owner: String,
    pub to: String,
    pub from: Option<String>,
    pub text: String,
    pub status: MessageStatus,
    pub created_ms: u64,
    pub deadline_ms: u64,
    pub submitted_ms: Option<u64>,
    pub done_ms: Option<u64>,
    pub carrier: Option<String>,
    pub smsc_message_id: Option<String>,
    /// Most recent attempts, oldest first (bounded, see `MAX_ATTEMPTS_KEPT`).
    pub attempts: Vec<Attempt>,
    /// A submit was started and its result not yet recorded; seen at startup, it means the
    /// previous process died mid-submit and the message will be sent again. Kept in the queue
    /// row's value (set by `Store::queued_page`), not in the record.
    #[serde(skip)]
    pub in_flight: bool,
    pub receipt: Option<ReceiptSummary>,
    pub error: Option<String>,
    /// Submits that went out and got no readable answer (connection lost, response timeout,
    /// unreadable response, a crash mid-submit): each may have reached the handset.
    #[serde(default)]
    pub unconfirmed: u32,
    /// The verification this message carries a code for. Its `text` then has the code masked;
    /// the real text lives only in memory until submitted.
    #[serde(default)]
    pub verification: Option<VerificationId>,
    /// The encoding it was taken in with (chosen, or asked for: a carrier keeps it).
    #[serde(default)]
    pub encoding: Option<crate::sms::Encoding>,
    /// How many SMS it takes: counted at intake, then as the carrier that took it cut it.
    #[serde(default = "one")]
    pub segments: u16,
    /// A long message's parts as the carrier took them (empty for one SMS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartRecord>,
    /// The reference of its last send in parts: the next send takes another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<u16>,
    /// How the client asked for it to be sent and reported beyond the basics. (A nested
    /// field, not flattened: serde's flatten reads the whole record through a map.)
    #[serde(default, skip_serializing_if = "SendOptions::is_empty")]
    pub options: SendOptions,
}

/// A message's requests beyond text and number: a carrier it must go through, a callback URL per
/// delivery state (Kannel's `smsc`, `dlr-mask` and `dlr-url`), and its registration ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendOptions {
    /// Only this carrier sends it, whatever its route says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_carrier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlr: Option<DlrRequest>,
    /// Registration ids a carrier's vendor TLVs may carry (India's DLT content template and
    /// principal entity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
}

impl SendOptions {
    fn is_empty(&self) -> bool {
        self.pinned_carrier.is_none() && self.dlr.is_none() && self.template_id.is_none() && self.entity_id.is_none()
    }
}

/// A Kannel-style delivery report request: `url` (with Kannel's escapes) is fetched for each
/// state whose bit is in `mask`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlrRequest {
    pub url: String,
    pub mask: u8,
    /// The sendsms user (`%n`).
    pub user: String,
    /// The receiver and sender as the client wrote them (`%p`, `%P`).
    pub to: String,
    pub from: String,
}

fn one() -> u16 {
    1
}

/// Attempts beyond this are dropped oldest first: a message retried for an hour must not grow
/// without bound.
pub const MAX_ATTEMPTS_KEPT: usize = 20;

impl MessageRecord {
    /// A message just taken in.
    pub fn queued(message: super::NewMessage, created_ms: u64, verification: Option<VerificationId>) -> MessageRecord {
        MessageRecord {
            owner: message.owner,
            to: message.to,
            from: message.from,
            text: message.text,
            status: MessageStatus::Queued,
            created_ms,
            deadline_ms: to_ms(message.deadline),
            submitted_ms: None,
            done_ms: None,
            carrier: None,
            smsc_message_id: None,
            attempts: Vec::new(),
            in_flight: false,
            receipt: None,
            error: None,
            unconfirmed: 0,
            verification,
            encoding: message.encoding,
            segments: message.segments,
            parts: Vec::new(),
            reference: None,
            options: message.options,
        }
    }

    /// Whether it still takes a receipt: for one SMS, until its final one; for a long message,
    /// while some part has had no final one.
    pub fn awaiting_receipt(&self) -> bool {
        match self.parts.is_empty() {
            true => !self.receipt.as_ref().is_some_and(|r| r.is_final),
            false => self.parts.iter().any(|p| !p.receipt.as_ref().is_some_and(|r| r.is_final)),
        }
    }

    /// From when the retention sweep may delete it: when it finished, and once a carrier took
    /// it, not before its validity ended either. Until then a receipt may still come; after it,
    /// a message whose carrier never sends one goes too instead of staying for ever. `None`:
    /// not sent and not finished (queued), kept.
    pub(crate) fn sweepable_from_ms(&self) -> Option<u64> {
        match self.submitted_ms {
            Some(_) => Some(self.deadline_ms.max(self.done_ms.unwrap_or(0))),
            None => self.done_ms,
        }
    }

    pub fn push_attempt(&mut self, attempt: Attempt) {
        if self.attempts.len() >= MAX_ATTEMPTS_KEPT {
            self.attempts.remove(0);
        }
        self.attempts.push(attempt);
    }

    pub fn deadline(&self) -> SystemTime {
        from_ms(self.deadline_ms)
    }
}

pub fn to_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub fn to_us(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

pub fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// RFC 3339 in UTC with milliseconds, as the API shows times.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(from_ms(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sort_by_sequence() {
        let a = MessageId::new(1);
        let b = MessageId::new(2);
        assert!(a < b);
        assert_eq!(a.to_string().parse::<MessageId>(), Ok(a));
        assert!("xyz".parse::<MessageId>().is_err());
        assert!("zz".repeat(16).parse::<MessageId>().is_err());
    }

    #[test]
    fn ids_are_stored_as_the_hex_they_are_shown_as() {
        let id = MessageId::new(7);
        let json = serde_json::to_string(&VerificationId(id)).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<MessageId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<MessageId>("\"not-an-id\"").is_err());
    }
}
