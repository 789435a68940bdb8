//! Delivery receipts: recognising them in a deliver_sm/data_sm and reading what they say.
//!
//! SMPP 3.4 only *suggests* a text layout (Appendix B, `id:… sub:… dlvrd:… submit date:… done date:…
//! stat:… err:… text:…`), and real SMSCs bend it every way: key case, missing keys, `submit_date`
//! spellings, 10/12/14-digit dates, ids in hex or decimal with or without leading zeros, raw bytes in
//! `text:`. The TLVs (`receipted_message_id`, `message_state`, `network_error_code`) are exact, so they
//! win when present; the text fills the rest. The parser works on bytes and never fails on what
//! follows `text:`, which it does not keep at all: it echoes the start of *our* message, an OTP code
//! included.
//!
//! A few SMSCs write no keys at all (one large UK carrier: `00,2102101543,2102101500,,447...`):
//! a carrier's `receipt_text = "csv:…"` names the columns, and `receipt_states` maps its own
//! state codes to Appendix B ones ([`ReceiptFormat`]).

use std::collections::BTreeMap;
use std::fmt;

use rusmpp::pdus::{DataSm, DeliverSm};
use rusmpp::tlvs::{Tlv, TlvValue};

use crate::smsc_id::canonical;

/// What the receipt says happened to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Enroute,
    Delivered,
    Expired,
    Deleted,
    Undeliverable,
    Accepted,
    Unknown,
    Rejected,
    /// A status outside SMPP 3.4 that we could not map (`stat:0` from one Ugandan SMSC, ...).
    Unrecognised,
}

impl DeliveryState {
    /// SMPP message_state values (§5.2.28).
    fn from_message_state(value: u8) -> DeliveryState {
        match value {
            1 => DeliveryState::Enroute,
            2 => DeliveryState::Delivered,
            3 => DeliveryState::Expired,
            4 => DeliveryState::Deleted,
            5 => DeliveryState::Undeliverable,
            6 => DeliveryState::Accepted,
            7 => DeliveryState::Unknown,
            8 => DeliveryState::Rejected,
            _ => DeliveryState::Unrecognised,
        }
    }

    /// Appendix B stat codes, plus the off-spec spellings seen in the wild (smpp-notes).
    fn from_stat(stat: &str) -> DeliveryState {
        match stat.to_ascii_uppercase().as_str() {
            "DELIVRD" | "DELIVERED" => DeliveryState::Delivered,
            "EXPIRED" => DeliveryState::Expired,
            "DELETED" => DeliveryState::Deleted,
            "UNDELIV" | "UNDELIVERABLE" | "FAILED" => DeliveryState::Undeliverable,
            "ACCEPTD" | "ACCEPTED" | "ACKED" => DeliveryState::Accepted,
            "UNKNOWN" => DeliveryState::Unknown,
            "REJECTD" | "REJECTED" => DeliveryState::Rejected,
            "ENROUTE" | "BUFFRED" | "BUFFERD" | "BUFFERED" => DeliveryState::Enroute,
            _ => DeliveryState::Unrecognised,
        }
    }

    /// Final states end the message's life; the others are progress reports.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeliveryState::Delivered
                | DeliveryState::Expired
                | DeliveryState::Deleted
                | DeliveryState::Undeliverable
                | DeliveryState::Rejected
        )
    }

    /// The Appendix B code, used as a bounded metric label and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Enroute => "ENROUTE",
            DeliveryState::Delivered => "DELIVRD",
            DeliveryState::Expired => "EXPIRED",
            DeliveryState::Deleted => "DELETED",
            DeliveryState::Undeliverable => "UNDELIV",
            DeliveryState::Accepted => "ACCEPTD",
            DeliveryState::Unknown => "UNKNOWN",
            DeliveryState::Rejected => "REJECTD",
            DeliveryState::Unrecognised => "OTHER",
        }
    }
}

/// A receipt timestamp as the SMSC wrote it: its own clock, zone unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiptTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl fmt::Display for ReceiptTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", self.year, self.month, self.day, self.hour, self.minute, self.second)
    }
}

impl ReceiptTime {
    /// Reads `YYMMDDhhmm`, `YYMMDDhhmmss`, `YYYYMMDDhhmm` or `YYYYMMDDhhmmss`. Twelve digits are
    /// ambiguous; the layout that gives a valid date wins, seconds first. All zeros means "none".
    pub fn parse(digits: &str) -> Option<ReceiptTime> {
        if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.bytes().all(|b| b == b'0') {
            return None;
        }
        let n = |range: std::ops::Range<usize>| -> u16 { digits[range].parse().unwrap_or(u16::MAX) };
        let short_year = |yy: u16| 2000 + yy;
        let candidates: Vec<[u16; 6]> = match digits.len() {
            10 => vec![[short_year(n(0..2)), n(2..4), n(4..6), n(6..8), n(8..10), 0]],
            12 => vec![
                [short_year(n(0..2)), n(2..4), n(4..6), n(6..8), n(8..10), n(10..12)],
                [n(0..4), n(4..6), n(6..8), n(8..10), n(10..12), 0],
            ],
            14 => vec![[n(0..4), n(4..6), n(6..8), n(8..10), n(10..12), n(12..14)]],
            _ => vec![],
        };
        candidates.into_iter().find_map(|[year, month, day, hour, minute, second]| {
            let valid = (1..=12).contains(&month) && (1..=31).contains(&day) && hour < 24 && minute < 60 && second < 60;
            valid.then_some(ReceiptTime {
                year,
                month: month as u8,
                day: day as u8,
                hour: hour as u8,
                minute: minute as u8,
                second: second as u8,
            })
        })
    }
}

/// The network_error_code TLV: which network family, and its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkError {
    pub network_type: u8,
    pub code: u16,
}

/// A parsed delivery receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The id to match against submit_sm_resp: the TLV's when present, else the text's.
    pub message_id: String,
    /// The text's id when it differs from `message_id` (often the same number in another base).
    pub alternate_id: Option<String>,
    /// `message_id` came from the receipted_message_id TLV, which SMPP defines as the
    /// submit_sm_resp's id itself; a text id may be written in another base.
    pub id_from_tlv: bool,
    pub state: DeliveryState,
    /// The text's `stat:` as sent (upper-cased), when there was one.
    pub stat: Option<String>,
    /// The text's `err:` as sent; SMSC-specific, so kept as text.
    pub err: Option<String>,
    pub submitted: Option<u32>,
    pub delivered: Option<u32>,
    pub submit_date: Option<ReceiptTime>,
    pub done_date: Option<ReceiptTime>,
    pub network_error: Option<NetworkError>,
}

/// Why a receipt could not be read. It is still acknowledged to the SMSC, and counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("receipt carries no message id (no receipted_message_id TLV and no id: in the text)")]
    NoMessageId,
    #[error("receipt carries no state (no message_state TLV and no stat: in the text)")]
    NoState,
}

/// The key:value pairs of an Appendix B text, as borrowed slices.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReceiptText<'a> {
    pub id: Option<&'a str>,
    pub sub: Option<&'a str>,
    pub dlvrd: Option<&'a str>,
    pub submit_date: Option<&'a str>,
    pub done_date: Option<&'a str>,
    pub stat: Option<&'a str>,
    pub err: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Id,
    Sub,
    Dlvrd,
    SubmitDate,
    DoneDate,
    Stat,
    Err,
    Text,
}

/// Spellings seen in the wild, lower-case; longer ones first where one is a prefix of another.
const KEYS: &[(&[u8], Key)] = &[
    (b"submit date:", Key::SubmitDate),
    (b"submit_date:", Key::SubmitDate),
    (b"submitdate:", Key::SubmitDate),
    (b"done date:", Key::DoneDate),
    (b"done_date:", Key::DoneDate),
    (b"donedate:", Key::DoneDate),
    (b"id:", Key::Id),
    (b"sub:", Key::Sub),
    (b"dlvrd:", Key::Dlvrd),
    (b"stat:", Key::Stat),
    (b"err:", Key::Err),
    (b"text:", Key::Text),
    (b"txt:", Key::Text),
];

fn is_separator(b: u8) -> bool {
    b.is_ascii_whitespace() || b == 0
}

impl<'a> ReceiptText<'a> {
    /// Reads the key:value pairs of a receipt text. Keys match case-insensitively at the start of
    /// a word; a value runs to the next blank; reading stops at `text:`. Values that are not ASCII
    /// are ignored (ids and dates always are).
    pub fn parse(bytes: &'a [u8]) -> ReceiptText<'a> {
        let mut out = ReceiptText::default();
        let mut pos = 0;
        while pos < bytes.len() {
            let at_word_start = pos == 0 || is_separator(bytes[pos - 1]);
            let matched = at_word_start
                .then(|| {
                    KEYS.iter().find(|(key, _)| bytes.len() - pos >= key.len() && bytes[pos..pos + key.len()].eq_ignore_ascii_case(key))
                })
                .flatten();
            let Some(&(key, kind)) = matched else {
                pos += 1;
                continue;
            };
            if let Key::Text = kind {
                break;
            }
            let start = pos + key.len();
            let end = bytes[start..].iter().position(|&b| is_separator(b)).map_or(bytes.len(), |n| start + n);
            let value = std::str::from_utf8(&bytes[start..end]).ok().filter(|v| !v.is_empty() && v.is_ascii());
            out.fill(kind, value);
            pos = end;
        }
        out
    }

    /// Reads a keyless comma-separated text whose columns are `columns` (`None`: ignored);
    /// reading stops at a `text` column, a NUL or the end.
    fn parse_columns(bytes: &'a [u8], columns: &[Option<Key>]) -> ReceiptText<'a> {
        let mut out = ReceiptText::default();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        for (column, value) in columns.iter().zip(bytes[..end].split(|&b| b == b',')) {
            let Some(kind) = *column else { continue };
            if kind == Key::Text {
                break;
            }
            let value = std::str::from_utf8(value).ok().map(str::trim).filter(|v| !v.is_empty() && v.is_ascii());
            out.fill(kind, value);
        }
        out
    }

    /// Keeps the first value seen for `kind`.
    fn fill(&mut self, kind: Key, value: Option<&'a str>) {
        let slot = match kind {
            Key::Id => &mut self.id,
            Key::Sub => &mut self.sub,
            Key::Dlvrd => &mut self.dlvrd,
            Key::SubmitDate => &mut self.submit_date,
            Key::DoneDate => &mut self.done_date,
            Key::Stat => &mut self.stat,
            Key::Err => &mut self.err,
            Key::Text => return,
        };
        if slot.is_none() {
            *slot = value;
        }
    }
}

/// How one carrier writes its receipt text: config `receipt_text` and `receipt_states`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiptFormat {
    /// `None`: Appendix B `key:value` text. `Some`: keyless comma-separated columns.
    columns: Option<Vec<Option<Key>>>,
    /// The SMSC's own state codes (upper-cased) and what each means.
    states: BTreeMap<String, DeliveryState>,
}

/// What is wrong with a carrier's receipt format settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptFormatError {
    /// In `receipt_text`.
    #[error("{0}")]
    Layout(String),
    /// In `receipt_states`.
    #[error("{0}")]
    States(String),
}

/// Column names of `receipt_text = "csv:…"`; `-` (or nothing) skips a column.
const COLUMNS: &[(&str, Key)] = &[
    ("id", Key::Id),
    ("sub", Key::Sub),
    ("dlvrd", Key::Dlvrd),
    ("submit", Key::SubmitDate),
    ("done", Key::DoneDate),
    ("stat", Key::Stat),
    ("err", Key::Err),
    ("text", Key::Text),
];

impl ReceiptFormat {
    /// `layout` is `key_value` (Appendix B and its variants, the default) or `csv:` and the
    /// column names in order; `states` maps the SMSC's codes to Appendix B names (`DELIVRD`…).
    pub fn new(layout: &str, states: &BTreeMap<String, String>) -> Result<ReceiptFormat, ReceiptFormatError> {
        let columns = match layout.strip_prefix("csv:") {
            None if layout == "key_value" => None,
            None => {
                return Err(ReceiptFormatError::Layout(format!(
                    "{} is not a receipt layout: use \"key_value\" or \"csv:\" and column names",
                    crate::echo::shown(layout)
                )));
            }
            Some(names) => {
                let mut columns = Vec::new();
                for name in names.split(',').map(str::trim) {
                    let column = match name {
                        "" | "-" => None,
                        _ => match COLUMNS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                            Some(&(_, key)) => Some(key),
                            None => {
                                let known: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
                                return Err(ReceiptFormatError::Layout(format!(
                                    "unknown receipt column {}; columns are {} or -",
                                    crate::echo::shown(name),
                                    known.join(", ")
                                )));
                            }
                        },
                    };
                    if column.is_some() && columns.contains(&column) {
                        return Err(ReceiptFormatError::Layout(format!("receipt column {name:?} is named twice")));
                    }
                    columns.push(column);
                }
                Some(columns)
            }
        };
        let mut mapped = BTreeMap::new();
        for (code, meaning) in states {
            let state = DeliveryState::from_stat(meaning);
            if code.trim().is_empty() || state == DeliveryState::Unrecognised {
                return Err(ReceiptFormatError::States(format!(
                    "{code:?} = {meaning:?}: map a non-empty code to DELIVRD, UNDELIV, EXPIRED, DELETED, REJECTD, ACCEPTD, ENROUTE or UNKNOWN"
                )));
            }
            mapped.insert(code.trim().to_ascii_uppercase(), state);
        }
        Ok(ReceiptFormat { columns, states: mapped })
    }

    fn text<'a>(&self, bytes: &'a [u8]) -> ReceiptText<'a> {
        match &self.columns {
            None => ReceiptText::parse(bytes),
            Some(columns) => ReceiptText::parse_columns(bytes, columns),
        }
    }

    fn state(&self, stat: &str) -> DeliveryState {
        match self.states.get(&stat.to_ascii_uppercase()) {
            Some(state) => *state,
            None => DeliveryState::from_stat(stat),
        }
    }
}

/// The receipt-related parts of a deliver_sm or data_sm.
#[derive(Debug, Default)]
pub struct ReceiptFields<'a> {
    /// esm_class of the PDU (data_sm has one too).
    pub esm_class: u8,
    /// short_message, or message_payload when short_message is empty.
    pub text: &'a [u8],
    pub receipted_message_id: Option<String>,
    pub message_state: Option<u8>,
    pub network_error: Option<NetworkError>,
}

/// esm_class message-type bits (§5.2.12): SMSC delivery receipt 0x04, SME ack 0x08, manual ack
/// 0x10, intermediate notification 0x20. Test the bits, not equality.
const RECEIPT_TYPE_BITS: u8 = 0x3C;

impl ReceiptFields<'_> {
    /// Whether this PDU is a receipt at all. Some SMSCs send receipts with esm_class 0, so a
    /// receipt TLV or an `id:` text counts too.
    pub fn is_receipt(&self) -> bool {
        self.is_receipt_as(&ReceiptFormat::default())
    }

    /// As [`ReceiptFields::is_receipt`], for a carrier's own text layout.
    pub fn is_receipt_as(&self, format: &ReceiptFormat) -> bool {
        self.esm_class & RECEIPT_TYPE_BITS != 0
            || self.receipted_message_id.is_some()
            || self.message_state.is_some()
            || (format.columns.is_none() && ReceiptText::parse(self.text).id.is_some())
    }

    /// Builds the receipt from an Appendix B text: TLVs first, the text for the rest.
    pub fn parse(&self) -> Result<Receipt, ReceiptError> {
        self.parse_as(&ReceiptFormat::default())
    }

    /// Builds the receipt, reading the text in the carrier's `format`.
    pub fn parse_as(&self, format: &ReceiptFormat) -> Result<Receipt, ReceiptError> {
        let text = format.text(self.text);
        let text_id = text.id.map(str::to_string);
        let id_from_tlv = self.receipted_message_id.is_some();
        let (message_id, alternate_id) = match (self.receipted_message_id.clone(), text_id) {
            (Some(tlv), Some(t)) if t != tlv => (tlv, Some(t)),
            (Some(tlv), _) => (tlv, None),
            (None, Some(t)) => (t, None),
            (None, None) => return Err(ReceiptError::NoMessageId),
        };
        let state = match (self.message_state, text.stat) {
            (Some(value), _) => DeliveryState::from_message_state(value),
            (None, Some(stat)) => format.state(stat),
            (None, None) => return Err(ReceiptError::NoState),
        };
        // One source of truth: the text's stat is kept only where it says what the state says
        // (a TLV UNDELIV beside a text DELIVRD once showed a message undeliverable with "DELIVRD").
        let stat = text.stat.filter(|s| format.state(s) == state).map(str::to_ascii_uppercase);
        let number = |v: Option<&str>| v.and_then(|v| v.parse::<u32>().ok());
        let err = text.err.filter(|e| !e.eq_ignore_ascii_case("null")).map(str::to_string);
        Ok(Receipt {
            message_id,
            alternate_id,
            id_from_tlv,
            state,
            stat,
            err,
            submitted: number(text.sub),
            delivered: number(text.dlvrd),
            submit_date: text.submit_date.and_then(ReceiptTime::parse),
            done_date: text.done_date.and_then(ReceiptTime::parse),
            network_error: self.network_error,
        })
    }

    fn with_tlvs<'t>(mut self, tlvs: impl Iterator<Item = &'t Tlv>) -> Self {
        for value in tlvs.filter_map(Tlv::value) {
            match value {
                TlvValue::ReceiptedMessageId(id) => {
                    self.receipted_message_id = Some(id.as_str().to_string());
                }
                TlvValue::MessageState(state) => self.message_state = Some(u8::from(*state)),
                TlvValue::NetworkErrorCode(code) => {
                    self.network_error = Some(NetworkError { network_type: u8::from(code.network_type), code: code.error_code });
                }
                _ => {}
            }
        }
        self
    }
}

fn payload<'t>(tlvs: impl Iterator<Item = &'t Tlv>) -> Option<&'t [u8]> {
    tlvs.filter_map(Tlv::value).find_map(|v| match v {
        TlvValue::MessagePayload(p) => Some(&p.value[..]),
        _ => None,
    })
}

impl<'a> From<&'a DeliverSm> for ReceiptFields<'a> {
    fn from(pdu: &'a DeliverSm) -> Self {
        let short = &pdu.short_message()[..];
        let text = if short.is_empty() { payload(pdu.tlvs().iter()).unwrap_or(short) } else { short };
        ReceiptFields { esm_class: u8::from(pdu.esm_class), text, ..Default::default() }.with_tlvs(pdu.tlvs().iter())
    }
}

impl<'a> From<&'a DataSm> for ReceiptFields<'a> {
    fn from(pdu: &'a DataSm) -> Self {
        ReceiptFields { esm_class: u8::from(pdu.esm_class), text: payload(pdu.tlvs().iter()).unwrap_or(&[]), ..Default::default() }
            .with_tlvs(pdu.tlvs().iter())
    }
}

impl Receipt {
    /// The id the receipted_message_id TLV gave, if any.
    pub fn tlv_id(&self) -> Option<&str> {
        self.id_from_tlv.then_some(self.message_id.as_str())
    }

    /// The id the text gave, when it is not the TLV's.
    pub fn text_id(&self) -> Option<&str> {
        match self.id_from_tlv {
            true => self.alternate_id.as_deref(),
            false => Some(self.message_id.as_str()),
        }
    }
}

/// How a carrier's receipt ids relate to its submit_sm_resp ids (config `receipt_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdRelation {
    /// Learned from receipts that match under one reading only; until then every reading is
    /// tried, and a receipt that would match different messages under different readings is
    /// not applied (counted as ambiguous).
    #[default]
    Auto,
    /// The same id (letter case and leading zeros aside).
    Same,
    /// The receipt writes in decimal the id the response gave in hex (`70BA8A69` → `1891273321`).
    HexToDec,
    /// The receipt writes in hex the id the response gave in decimal.
    DecToHex,
}

/// One way to read a receipt's id back into the submit_sm_resp id it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdReading {
    Same,
    HexToDec,
    DecToHex,
}

impl IdReading {
    pub const ALL: [IdReading; 3] = [IdReading::Same, IdReading::HexToDec, IdReading::DecToHex];

    pub fn as_str(self) -> &'static str {
        match self {
            IdReading::Same => "same",
            IdReading::HexToDec => "hex_to_dec",
            IdReading::DecToHex => "dec_to_hex",
        }
    }

    /// The canonical submit_sm_resp id (see [`canonical`]) that receipt id `id` names under
    /// this reading, if it can be read so.
    pub fn response_id(self, id: &str) -> Option<String> {
        let id = canonical(id);
        let digits = !id.is_empty() && id.len() <= 38;
        match self {
            IdReading::Same => Some(id),
            IdReading::HexToDec if digits && id.bytes().all(|b| b.is_ascii_digit()) => id.parse::<u128>().ok().map(|n| format!("{n:x}")),
            IdReading::DecToHex if digits && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
                u128::from_str_radix(&id, 16).ok().map(|n| n.to_string())
            }
            _ => None,
        }
    }
}

impl IdRelation {
    /// The readings to try, given what `auto` has learned so far.
    pub fn readings(self, learned: Option<IdReading>) -> &'static [IdReading] {
        let only = |r: IdReading| -> &'static [IdReading] {
            match r {
                IdReading::Same => &[IdReading::Same],
                IdReading::HexToDec => &[IdReading::HexToDec],
                IdReading::DecToHex => &[IdReading::DecToHex],
            }
        };
        match (self, learned) {
            (IdRelation::Same, _) => only(IdReading::Same),
            (IdRelation::HexToDec, _) => only(IdReading::HexToDec),
            (IdRelation::DecToHex, _) => only(IdReading::DecToHex),
            (IdRelation::Auto, Some(r)) => only(r),
            (IdRelation::Auto, None) => &IdReading::ALL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_every_layout() {
        let t = |s: &str| ReceiptTime::parse(s).map(|t| t.to_string());
        assert_eq!(t("1305050826").as_deref(), Some("2013-05-05T08:26:00"));
        assert_eq!(t("141023215253").as_deref(), Some("2014-10-23T21:52:53"));
        assert_eq!(t("201506201641").as_deref(), Some("2015-06-20T16:41:00"));
        assert_eq!(t("20110314181534").as_deref(), Some("2011-03-14T18:15:34"));
        assert_eq!(t("000000000000"), None);
        assert_eq!(t("99999999999"), None);
        assert_eq!(t("13050508xx"), None);
        assert_eq!(t(""), None);
    }

    #[test]
    fn keys_match_at_word_starts_only() {
        let r = ReceiptText::parse(b"id:1 sub:001 xstat:BAD stat:DELIVRD err:0 text:stat:UNDELIV id:9");
        assert_eq!(r.id, Some("1"));
        assert_eq!(r.stat, Some("DELIVRD"));
        assert_eq!(r.err, Some("0"));
    }

    #[test]
    fn text_after_text_key_is_never_read() {
        let fields = ReceiptFields { text: b"id:7 stat:DELIVRD err:000 text:123456 is your code", ..Default::default() };
        let receipt = fields.parse().unwrap();
        assert!(!format!("{receipt:?}").contains("123456"));
    }

    /// Sample 38 of fixtures/dlr-samples.txt: `<status>,<status time>,<accepted time>,<error>,
    /// <dest>,<origin>,<reserved>`, with the id only in the TLV.
    #[test]
    fn keyless_csv_receipts_read_with_the_carriers_layout_and_state_codes() {
        let states = BTreeMap::from([("00".to_string(), "DELIVRD".to_string()), ("01".to_string(), "ENROUTE".to_string())]);
        let format = ReceiptFormat::new("csv:stat,done,submit,err,-,-,-", &states).unwrap();
        let text = b"00,0210021543,0210021500,,447887123456,10110200000000,we2345678i9o03er45ty67u";
        let fields = ReceiptFields { esm_class: 0x04, text, receipted_message_id: Some("AB12".into()), ..Default::default() };
        let r = fields.parse_as(&format).unwrap();
        assert_eq!(
            (r.message_id.as_str(), r.state, r.stat.as_deref(), r.err.as_deref()),
            ("AB12", DeliveryState::Delivered, Some("00"), None)
        );
        assert_eq!(r.done_date.map(|t| t.to_string()).as_deref(), Some("2002-10-02T15:43:00"));
        assert_eq!(r.submit_date.map(|t| t.to_string()).as_deref(), Some("2002-10-02T15:00:00"));
        let retrying = ReceiptFields { text: b"01,0210021543,0210021500,30,4478", ..fields };
        let r = retrying.parse_as(&format).unwrap();
        assert_eq!((r.state, r.err.as_deref()), (DeliveryState::Enroute, Some("30")));
        // The Appendix B reader finds nothing in it; the TLV alone is not enough.
        assert_eq!(ReceiptFields { text, ..Default::default() }.parse(), Err(ReceiptError::NoMessageId));
        // A keyless text is no receipt by itself: it takes esm_class or a TLV.
        assert!(!ReceiptFields { text, ..Default::default() }.is_receipt_as(&format));
    }

    #[test]
    fn receipt_formats_refuse_what_they_cannot_read() {
        let none = BTreeMap::new();
        assert_eq!(ReceiptFormat::new("key_value", &none), Ok(ReceiptFormat::default()));
        assert!(matches!(ReceiptFormat::new("xml", &none), Err(ReceiptFormatError::Layout(_))));
        assert!(matches!(ReceiptFormat::new("csv:stat,colour", &none), Err(ReceiptFormatError::Layout(m)) if m.contains("colour")));
        assert!(matches!(ReceiptFormat::new("csv:stat,stat", &none), Err(ReceiptFormatError::Layout(_))));
        let bad = BTreeMap::from([("00".to_string(), "GREAT".to_string())]);
        assert!(matches!(ReceiptFormat::new("key_value", &bad), Err(ReceiptFormatError::States(m)) if m.contains("GREAT")));
        // States apply to key:value texts too (numeric stat: codes).
        let numeric = BTreeMap::from([("2".to_string(), "UNDELIV".to_string())]);
        let format = ReceiptFormat::new("key_value", &numeric).unwrap();
        let fields = ReceiptFields { text: b"id:77 stat:2 err:001", ..Default::default() };
        assert_eq!(fields.parse_as(&format).unwrap().state, DeliveryState::Undeliverable);
        assert_eq!(fields.parse().unwrap().state, DeliveryState::Unrecognised);
    }

    #[test]
    fn missing_id_or_state_is_an_error() {
        let no_id = ReceiptFields { text: b"stat:DELIVRD", ..Default::default() };
        assert_eq!(no_id.parse(), Err(ReceiptError::NoMessageId));
        let no_state = ReceiptFields { text: b"id:12", ..Default::default() };
        assert_eq!(no_state.parse(), Err(ReceiptError::NoState));
    }

    #[test]
    fn receipt_ids_read_back_into_response_ids() {
        let read = |r: IdReading, id: &str| r.response_id(id);
        assert_eq!(read(IdReading::Same, "0000AB12"), Some("ab12".into()));
        assert_eq!(read(IdReading::HexToDec, "1891273321"), Some("70ba8a69".into()));
        assert_eq!(read(IdReading::HexToDec, "0059113978"), Some("38601fa".into()));
        assert_eq!(read(IdReading::DecToHex, "38601FA"), Some("59113978".into()));
        assert_eq!(read(IdReading::HexToDec, "C87C2273-7EDB"), None, "not a number");
        assert_eq!(read(IdReading::Same, "64567564356765435676"), Some("64567564356765435676".into()));
        // The readings a carrier's setting allows.
        assert_eq!(IdRelation::Auto.readings(None), &IdReading::ALL);
        assert_eq!(IdRelation::Auto.readings(Some(IdReading::DecToHex)), &[IdReading::DecToHex]);
        assert_eq!(IdRelation::HexToDec.readings(Some(IdReading::Same)), &[IdReading::HexToDec]);
    }
}
