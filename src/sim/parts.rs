//! Long messages at the simulator: which part of which message a submit_sm is (a user data
//! header with IE 0x00 or 0x08, or the SAR TLVs; message_payload carries a whole text), and
//! the parts joined once all have come, as a handset joins them.

use std::collections::HashMap;

use rusmpp::pdus::SubmitSm;
use rusmpp::tlvs::TlvValue;

/// UDHI: the short_message starts with a user data header (§5.2.12).
const UDHI: u8 = 0x40;

/// A part's place in its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartOf {
    pub reference: u16,
    pub total: u8,
    pub seq: u8,
}

/// A long message the simulator joined from its parts.
#[derive(Debug, Clone)]
pub struct JoinedSms {
    pub to: String,
    pub text: String,
    pub reference: u16,
    /// The message id each part was accepted with, in part order.
    pub message_ids: Vec<String>,
}

/// The part a submit_sm is, if it is one, the octets of its text (the header left out; the
/// whole text when it came in message_payload), and the header's length in octets (0: none).
pub(super) fn read(sm: &SubmitSm) -> (Option<PartOf>, Vec<u8>, usize) {
    let short = sm.short_message();
    if u8::from(sm.esm_class) & UDHI != 0 {
        let header_length = usize::from(short.first().copied().unwrap_or(0));
        let header = short.get(1..1 + header_length).unwrap_or_default();
        let text = short.get(1 + header_length..).unwrap_or_default().to_vec();
        return (concatenation_ie(header), text, 1 + header_length);
    }
    let (mut reference, mut total, mut seq, mut payload) = (None, None, None, None);
    for tlv in sm.tlvs() {
        match tlv.value() {
            Some(TlvValue::SarMsgRefNum(r)) => reference = Some(*r),
            Some(TlvValue::SarTotalSegments(t)) => total = Some(*t),
            Some(TlvValue::SarSegmentSeqnum(s)) => seq = Some(*s),
            Some(TlvValue::MessagePayload(p)) => payload = Some(p.value.as_ref().to_vec()),
            _ => {}
        }
    }
    let part = match (reference, total, seq) {
        (Some(reference), Some(total), Some(seq)) => Some(PartOf { reference, total, seq }),
        _ => None,
    };
    (part, payload.unwrap_or_else(|| short.to_vec()), 0)
}

/// The concatenation information element of a user data header (IE 0x00: 8-bit reference,
/// IE 0x08: 16-bit), if it has one.
fn concatenation_ie(mut header: &[u8]) -> Option<PartOf> {
    while let [id, length, rest @ ..] = header {
        let (value, after) = rest.split_at_checked(usize::from(*length))?;
        match (id, value) {
            (0x00, &[reference, total, seq]) => return Some(PartOf { reference: u16::from(reference), total, seq }),
            (0x08, &[high, low, total, seq]) => return Some(PartOf { reference: u16::from_be_bytes([high, low]), total, seq }),
            _ => header = after,
        }
    }
    None
}

/// A message's parts so far: (text, message id) of each part in, by part number.
type Slots = Vec<Option<(String, String)>>;

/// Parts waiting for the rest of their message, by destination, reference and count.
#[derive(Default)]
pub(super) struct Joiner {
    waiting: HashMap<(String, u16, u8), Slots>,
}

/// Incomplete messages kept at most (the oldest are forgotten first): a test peer, not a
/// handset, but its memory stays bounded.
const MAX_WAITING: usize = 10_000;

impl Joiner {
    /// Adds a part's text and message id; the whole message once its last part is in.
    pub(super) fn add(&mut self, to: &str, part: PartOf, text: String, message_id: String) -> Option<JoinedSms> {
        if part.seq == 0 || part.seq > part.total {
            return None;
        }
        if self.waiting.len() >= MAX_WAITING {
            self.waiting.clear();
        }
        let key = (to.to_string(), part.reference, part.total);
        let slots = self.waiting.entry(key.clone()).or_insert_with(|| vec![None; usize::from(part.total)]);
        slots[usize::from(part.seq) - 1] = Some((text, message_id));
        if slots.iter().any(Option::is_none) {
            return None;
        }
        let parts = self.waiting.remove(&key)?;
        let (texts, message_ids): (Vec<String>, Vec<String>) = parts.into_iter().flatten().unzip();
        Some(JoinedSms { to: to.to_string(), text: texts.concat(), reference: part.reference, message_ids })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_read_whatever_else_they_hold() {
        assert_eq!(concatenation_ie(&[0x00, 0x03, 0x2A, 3, 2]), Some(PartOf { reference: 0x2A, total: 3, seq: 2 }));
        assert_eq!(concatenation_ie(&[0x08, 0x04, 0x12, 0x34, 2, 1]), Some(PartOf { reference: 0x1234, total: 2, seq: 1 }));
        // Another IE first (a port address), then the concatenation one.
        assert_eq!(concatenation_ie(&[0x05, 0x04, 0, 1, 0, 2, 0x00, 0x03, 7, 2, 2]), Some(PartOf { reference: 7, total: 2, seq: 2 }));
        assert_eq!(concatenation_ie(&[0x00, 0x09, 1]), None, "cut short");
    }

    #[test]
    fn parts_join_in_any_order_and_two_messages_never_mix() {
        let mut joiner = Joiner::default();
        let part = |reference, seq| PartOf { reference, total: 2, seq };
        assert!(joiner.add("44", part(1, 2), "world".into(), "B".into()).is_none());
        assert!(joiner.add("44", part(2, 1), "other ".into(), "C".into()).is_none());
        let joined = joiner.add("44", part(1, 1), "hello ".into(), "A".into()).unwrap();
        assert_eq!((joined.text.as_str(), joined.message_ids), ("hello world", vec!["A".to_string(), "B".to_string()]));
        assert!(joiner.add("44", PartOf { reference: 3, total: 2, seq: 3 }, "x".into(), "D".into()).is_none());
    }
}
