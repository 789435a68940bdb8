//! The one sled tree's row kinds: each key starts with one prefix byte, named here and nowhere
//! else.
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `m` | message id | the [`MessageRecord`](super::MessageRecord) (binary, `codec.rs`) |
//! | `q` | message id | the message waits for a submit: empty, or [`IN_FLIGHT`] while one is under way |
//! | `r` | carrier, NUL, canonical SMSC id | message id (and, for a part of a long message, its part number): receipt correlation |
//! | `t` | submit time (ms, BE), then what the `r` row's value would be | the `r` row's key: a recent submit's correlation, held in the receipt window (`window.rs`, sled only) |
//! | `f` | destination prefix | the fraud guard's suspension of it (its JSON) |
//! | `u` | number | the last reference a long message to it was sent with, and when (ms) |
//! | `e` | carrier, NUL, id candidate, NUL, sequence (top bit set under ids the receipt does not name first) | an early receipt waiting for its submit_sm_resp, one row per id it may stand for |
//! | `k` | SHA-256 of (owner, NUL, Idempotency-Key) | the first answer's body hash and message id |
//! | `d` | time (ms, BE), message id (and 1 for a batch's row) | empty, or a batch's other message ids: when each message may be swept from (it finished; a sent one not before its validity ended), oldest first |
//! | `c` | (none) | the queue depth as of the last group commit (exact after a clean close), read by the next open |
//! | `v` | verification id | the verification record (JSON; the code only as an HMAC) |
//! | `o` | owner, NUL, number | id of that owner's pending verification for the number |
//! | `n` | number | recent sends and failed checks of the number |
//! | `w` | done time (ms, BE), verification id | empty: finished verifications, for the sweep |
//! | `s` | name | a setting every process on this store must share (the OTP key's fingerprint) |
//! | `x` | webhook, NUL, subject id, event id | an event waiting for that endpoint (`events.rs`) |
//! | `y` | webhook, NUL, subject id, event id | an event given up on, kept for the operator |

use super::record::{MessageId, VerificationId};

pub(super) const MESSAGE: u8 = b'm';
pub(super) const QUEUE: u8 = b'q';
pub(super) const RECEIPT_INDEX: u8 = b'r';
pub(super) const WINDOW: u8 = b't';
pub(super) const HELD_RECEIPT: u8 = b'e';
pub(super) const IDEMPOTENCY: u8 = b'k';
pub(super) const MESSAGE_DONE: u8 = b'd';
pub(super) const VERIFICATION: u8 = b'v';
pub(super) const PENDING: u8 = b'o';
pub(super) const NUMBER: u8 = b'n';
pub(super) const VERIFICATION_DONE: u8 = b'w';
pub(super) const SHARED_SETTING: u8 = b's';
pub(super) const EVENT: u8 = b'x';
pub(super) const DEAD_EVENT: u8 = b'y';
pub(super) const REFERENCE: u8 = b'u';
pub(super) const FRAUD: u8 = b'f';

/// The queue depth as of the last group commit: a whole key of its own.
pub(super) const QUEUE_DEPTH: &[u8] = b"c";

/// A queue row's value while a submit of its message is under way (its result not recorded
/// yet): seen at startup, the previous process died mid-submit and the SMSC may have the message.
pub(super) const IN_FLIGHT: &[u8] = &[1];

/// `prefix`, then `parts` separated by NUL.
pub(super) fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len() + 1).sum::<usize>());
    k.push(prefix);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(part);
    }
    k
}

pub(super) fn message(id: &MessageId) -> Vec<u8> {
    key(MESSAGE, &[&id.0])
}

pub(super) fn queue(id: &MessageId) -> Vec<u8> {
    key(QUEUE, &[&id.0])
}

pub(super) fn receipt_index(carrier: &str, smsc_id: &str) -> Vec<u8> {
    key(RECEIPT_INDEX, &[carrier.as_bytes(), smsc_id.as_bytes()])
}

/// A receipt window row: the index row `index_value` of a submit at `at_ms`, in submit order.
pub(super) fn window(at_ms: u64, index_value: &[u8]) -> Vec<u8> {
    let mut k = vec![WINDOW];
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(index_value);
    k
}

/// A receipt window row's key read back: (submit ms, index row value).
pub(super) fn window_entry(key: &[u8]) -> Option<(u64, Vec<u8>)> {
    let at_ms = u64::from_be_bytes(key.get(1..9)?.try_into().ok()?);
    let value = key.get(9..)?;
    index_target(value).map(|_| (at_ms, value.to_vec()))
}

/// The prefix of every held-receipt row of `carrier` for `candidate`.
pub(super) fn held_receipts(carrier: &str, candidate: &str) -> Vec<u8> {
    key(HELD_RECEIPT, &[carrier.as_bytes(), candidate.as_bytes(), b""])
}

/// Set in a held row's sequence when the receipt does not name that id first (its exact id, or
/// else its first reading): under one id, a submit then finds a receipt that names it first
/// before one that only may be read as it, whichever was held first.
pub(super) const SECOND_READING: u64 = 1 << 63;

/// A held receipt's row under `candidate`: carrier, candidate, then its sequence (big-endian, so
/// oldest first; [`SECOND_READING`] set unless `first`).
pub(super) fn held_row(carrier: &str, candidate: &str, sequence: u64, first: bool) -> Vec<u8> {
    let sequence = if first { sequence } else { sequence | SECOND_READING };
    key(HELD_RECEIPT, &[carrier.as_bytes(), candidate.as_bytes(), &sequence.to_be_bytes()])
}

/// The sequence all rows of one held receipt share, from any of their keys.
pub(super) fn held_sequence(key: &[u8]) -> u64 {
    let tail = key.get(key.len().saturating_sub(8)..).and_then(|t| <[u8; 8]>::try_from(t).ok()).unwrap_or_default();
    u64::from_be_bytes(tail) & !SECOND_READING
}

/// The carrier inside a held-receipt row key: prefix, carrier, NUL, ...
pub(super) fn held_carrier(row_key: &[u8]) -> Option<&[u8]> {
    row_key.get(1..row_key.iter().position(|&b| b == 0)?)
}

/// The candidate id inside a held-receipt row key: prefix, carrier, NUL, candidate, NUL,
/// 8-byte sequence.
pub(super) fn held_candidate(row_key: &[u8]) -> Option<&[u8]> {
    let body = row_key.get(1..row_key.len().checked_sub(9)?)?;
    let start = body.iter().position(|&b| b == 0)? + 1;
    body.get(start..)
}

pub(super) fn fraud(prefix: &str) -> Vec<u8> {
    key(FRAUD, &[prefix.as_bytes()])
}

pub(super) fn reference(to: &str) -> Vec<u8> {
    key(REFERENCE, &[to.as_bytes()])
}

pub(super) fn verification(id: &VerificationId) -> Vec<u8> {
    key(VERIFICATION, &[&id.0.0])
}

pub(super) fn pending(owner: &str, to: &str) -> Vec<u8> {
    key(PENDING, &[owner.as_bytes(), to.as_bytes()])
}

pub(super) fn number(to: &str) -> Vec<u8> {
    key(NUMBER, &[to.as_bytes()])
}

/// A row of a "finished at" index ([`MESSAGE_DONE`], [`VERIFICATION_DONE`]): prefix, done
/// time (ms, big-endian so rows sort oldest first), id.
pub(super) fn done(prefix: u8, done_ms: u64, id: &MessageId) -> Vec<u8> {
    let mut k = vec![prefix];
    k.extend_from_slice(&done_ms.to_be_bytes());
    k.extend_from_slice(&id.0);
    k
}

/// The done row of several messages a batch of submits moved at once: the first one's
/// [`done`] key with a trailing 1 (so it never meets that message's own row, which a later
/// change may remove), its value the other ids, 16 bytes each.
pub(super) fn done_batch(done_ms: u64, first: &MessageId) -> Vec<u8> {
    let mut k = done(MESSAGE_DONE, done_ms, first);
    k.push(1);
    k
}

/// A receipt index row's value: the message, and which part of it (`None`: the one SMS).
pub(super) fn index_value(id: &MessageId, part: Option<u8>) -> Vec<u8> {
    let mut value = id.0.to_vec();
    value.extend(part);
    value
}

/// What a receipt index row's value names.
pub(super) fn index_target(value: &[u8]) -> Option<(MessageId, Option<u8>)> {
    match value.len() {
        16 => id_from(value).map(|id| (id, None)),
        17 => id_from(&value[..16]).map(|id| (id, Some(value[16]))),
        _ => None,
    }
}

/// The id in a row key or value that is exactly one.
pub(super) fn id_from(bytes: &[u8]) -> Option<MessageId> {
    <[u8; 16]>::try_from(bytes).ok().map(MessageId)
}
