//! How rows are kept as bytes: [`Stored`] for every kind of row, a compact versioned binary
//! layout for the message record, JSON for the rest.
//!
//! The message record is written three times in its life (taken in, submitted, receipt), and in
//! sled every write copies the leaf it lands in (up to 16 rows) and, every tenth, writes that
//! leaf to the log again; so the record's size is the daemon's CPU and disk per message. As JSON
//! it took about 520 bytes; this layout takes about a third (measured in the README's
//! Performance section). Rows written before it (JSON, which starts with `{`) still read.
//!
//! Layout, version 1: the byte [`RECORD_V1`], then the fields in declaration order. Integers are
//! LEB128 varints; times after `created_ms` are stored as the difference from it (zigzag: a
//! clock stepped back must still round-trip); strings are a varint length and UTF-8; an
//! optional value is a 0 byte, or 1 and the value; a list is its length, then its items.
//! A change of layout takes a new version byte and keeps the old reader.

use super::record::{
    Attempt, DlrRequest, MessageId, MessageRecord, MessageStatus, PartRecord, ReceiptSummary, SendOptions, VerificationId,
};
use crate::sms::Encoding;

/// A kind of row the store keeps: its bytes, and back (`None` for bytes it did not write).
pub(super) trait Stored: Sized {
    fn to_row(&self) -> Vec<u8>;
    fn from_row(bytes: &[u8]) -> Option<Self>;
}

/// Rows kept as JSON: few per message, or read by people debugging a store.
macro_rules! stored_as_json {
    ($($kind:ty),* $(,)?) => {$(
        impl $crate::store::codec::Stored for $kind {
            fn to_row(&self) -> Vec<u8> {
                // Our own plain structs: serialisation cannot fail.
                serde_json::to_vec(self).unwrap_or_default()
            }
            fn from_row(bytes: &[u8]) -> Option<Self> {
                serde_json::from_slice(bytes).ok()
            }
        }
    )*};
}
pub(super) use stored_as_json;

/// The first byte of a message record in layout version 1.
const RECORD_V1: u8 = 1;

impl Stored for MessageRecord {
    fn to_row(&self) -> Vec<u8> {
        let mut out = Writer(Vec::with_capacity(160 + self.text.len()));
        out.byte(RECORD_V1);
        out.record(self);
        out.0
    }

    fn from_row(bytes: &[u8]) -> Option<MessageRecord> {
        match bytes.split_first()? {
            (&RECORD_V1, rest) => {
                let mut reader = Reader(rest);
                let record = reader.record()?;
                reader.0.is_empty().then_some(record)
            }
            // Written before version 1.
            (b'{', _) => serde_json::from_slice(bytes).ok(),
            _ => None,
        }
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn byte(&mut self, b: u8) {
        self.0.push(b);
    }

    fn varint(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.0.push(n as u8 | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
    }

    /// `ms` as its difference from `base`.
    fn time(&mut self, base: u64, ms: u64) {
        let delta = ms.wrapping_sub(base) as i64;
        self.varint(((delta << 1) ^ (delta >> 63)) as u64);
    }

    fn text(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }

    fn option<T>(&mut self, value: Option<T>, write: impl FnOnce(&mut Writer, T)) {
        match value {
            None => self.byte(0),
            Some(v) => {
                self.byte(1);
                write(self, v);
            }
        }
    }

    fn list<T>(&mut self, items: &[T], mut write: impl FnMut(&mut Writer, &T)) {
        self.varint(items.len() as u64);
        for item in items {
            write(self, item);
        }
    }

    fn opt_text(&mut self, s: Option<&str>) {
        self.option(s, Writer::text);
    }

    fn receipt(&mut self, base: u64, r: &ReceiptSummary) {
        self.text(&r.stat);
        self.opt_text(r.err.as_deref());
        self.time(base, r.at_ms);
        self.byte(u8::from(r.is_final));
    }

    fn record(&mut self, r: &MessageRecord) {
        let base = r.created_ms;
        self.text(&r.owner);
        self.text(&r.to);
        self.opt_text(r.from.as_deref());
        self.text(&r.text);
        self.byte(r.status.code());
        self.varint(base);
        self.time(base, r.deadline_ms);
        self.option(r.submitted_ms, |w, ms| w.time(base, ms));
        self.option(r.done_ms, |w, ms| w.time(base, ms));
        self.opt_text(r.carrier.as_deref());
        self.opt_text(r.smsc_message_id.as_deref());
        self.list(&r.attempts, |w, a| {
            w.time(base, a.at_ms);
            w.text(&a.carrier);
            w.opt_text(a.session.as_deref());
            w.text(&a.result);
            w.text(&a.detail);
        });
        self.option(r.receipt.as_ref(), |w, receipt| w.receipt(base, receipt));
        self.opt_text(r.error.as_deref());
        self.varint(u64::from(r.unconfirmed));
        self.option(r.verification, |w, v| w.0.extend_from_slice(&v.0.0));
        self.option(r.encoding, |w, e| w.byte(encoding_code(e)));
        self.varint(u64::from(r.segments));
        self.list(&r.parts, |w, p| {
            w.byte(p.seq);
            w.text(&p.smsc_message_id);
            w.byte(p.status.code());
            w.option(p.receipt.as_ref(), |w, receipt| w.receipt(base, receipt));
        });
        self.option(r.reference, |w, n| w.varint(u64::from(n)));
        let o = &r.options;
        self.opt_text(o.pinned_carrier.as_deref());
        self.option(o.dlr.as_ref(), |w, d| {
            w.text(&d.url);
            w.byte(d.mask);
            w.text(&d.user);
            w.text(&d.to);
            w.text(&d.from);
        });
        self.opt_text(o.template_id.as_deref());
        self.opt_text(o.entity_id.as_deref());
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b < 0x80 {
                return Some(n);
            }
        }
        None
    }

    fn small<T: TryFrom<u64>>(&mut self) -> Option<T> {
        T::try_from(self.varint()?).ok()
    }

    fn time(&mut self, base: u64) -> Option<u64> {
        let zigzag = self.varint()?;
        let delta = (zigzag >> 1) as i64 ^ -((zigzag & 1) as i64);
        Some(base.wrapping_add(delta as u64))
    }

    fn text(&mut self) -> Option<String> {
        let len = self.small::<usize>()?;
        std::str::from_utf8(self.take(len)?).ok().map(str::to_string)
    }

    /// `Some(None)` for an absent value, `None` for bytes that are not an option.
    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        match self.byte()? {
            0 => Some(None),
            1 => read(self).map(Some),
            _ => None,
        }
    }

    fn list<T>(&mut self, mut read: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let len = self.small::<usize>()?;
        // Every item takes at least a byte: a corrupt length cannot reserve more than the row.
        let mut items = Vec::with_capacity(len.min(self.0.len()));
        for _ in 0..len {
            items.push(read(self)?);
        }
        Some(items)
    }

    fn opt_text(&mut self) -> Option<Option<String>> {
        self.option(Reader::text)
    }

    fn status(&mut self) -> Option<MessageStatus> {
        MessageStatus::from_code(self.byte()?)
    }

    fn receipt(&mut self, base: u64) -> Option<ReceiptSummary> {
        Some(ReceiptSummary { stat: self.text()?, err: self.opt_text()?, at_ms: self.time(base)?, is_final: self.byte()? != 0 })
    }

    fn record(&mut self) -> Option<MessageRecord> {
        let (owner, to, from, text, status) = (self.text()?, self.text()?, self.opt_text()?, self.text()?, self.status()?);
        let base = self.varint()?;
        Some(MessageRecord {
            owner,
            to,
            from,
            text,
            status,
            created_ms: base,
            deadline_ms: self.time(base)?,
            submitted_ms: self.option(|r| r.time(base))?,
            done_ms: self.option(|r| r.time(base))?,
            carrier: self.opt_text()?,
            smsc_message_id: self.opt_text()?,
            attempts: self.list(|r| {
                Some(Attempt { at_ms: r.time(base)?, carrier: r.text()?, session: r.opt_text()?, result: r.text()?, detail: r.text()? })
            })?,
            in_flight: false,
            receipt: self.option(|r| r.receipt(base))?,
            error: self.opt_text()?,
            unconfirmed: self.small()?,
            verification: self.option(|r| Some(VerificationId(MessageId(r.take(16)?.try_into().ok()?))))?,
            encoding: self.option(|r| encoding_of(r.byte()?))?,
            segments: self.small()?,
            parts: self.list(|r| {
                Some(PartRecord {
                    seq: r.byte()?,
                    smsc_message_id: r.text()?,
                    status: r.status()?,
                    receipt: r.option(|r| r.receipt(base))?,
                })
            })?,
            reference: self.option(Reader::small)?,
            options: SendOptions {
                pinned_carrier: self.opt_text()?,
                dlr: self
                    .option(|r| Some(DlrRequest { url: r.text()?, mask: r.byte()?, user: r.text()?, to: r.text()?, from: r.text()? }))?,
                template_id: self.opt_text()?,
                entity_id: self.opt_text()?,
            },
        })
    }
}

fn encoding_code(encoding: Encoding) -> u8 {
    match encoding {
        Encoding::Gsm7 => 0,
        Encoding::Ucs2 => 1,
    }
}

fn encoding_of(code: u8) -> Option<Encoding> {
    match code {
        0 => Some(Encoding::Gsm7),
        1 => Some(Encoding::Ucs2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> MessageRecord {
        let receipt = |at_ms| ReceiptSummary { stat: "DELIVRD".into(), err: Some("000".into()), at_ms, is_final: true };
        MessageRecord {
            owner: "shop".into(),
            to: "+447700900123".into(),
            from: Some("Shop".into()),
            text: "Votre code : 123456 — ☺".into(),
            status: MessageStatus::Delivered,
            created_ms: 1_764_000_000_000,
            deadline_ms: 1_764_000_600_000,
            submitted_ms: Some(1_764_000_000_004),
            // A clock stepped back between intake and receipt still round-trips.
            done_ms: Some(1_763_999_999_000),
            carrier: Some("alpha".into()),
            smsc_message_id: Some("1f2e3d".into()),
            attempts: vec![
                Attempt {
                    at_ms: 1_764_000_000_001,
                    carrier: "beta".into(),
                    session: None,
                    result: "retry_elsewhere".into(),
                    detail: "0x58".into(),
                },
                Attempt {
                    at_ms: 1_764_000_000_004,
                    carrier: "alpha".into(),
                    session: Some("alpha#0/trx".into()),
                    result: "ok".into(),
                    detail: String::new(),
                },
            ],
            in_flight: false,
            receipt: Some(receipt(1_764_000_001_000)),
            error: Some("none".into()),
            unconfirmed: 2,
            verification: Some(VerificationId(MessageId([7; 16]))),
            encoding: Some(Encoding::Ucs2),
            segments: 2,
            parts: vec![
                PartRecord {
                    seq: 1,
                    smsc_message_id: "a1".into(),
                    status: MessageStatus::Delivered,
                    receipt: Some(receipt(1_764_000_001_000)),
                },
                PartRecord { seq: 2, smsc_message_id: "a2".into(), status: MessageStatus::Submitted, receipt: None },
            ],
            reference: Some(65_535),
            options: SendOptions {
                pinned_carrier: Some("alpha".into()),
                dlr: Some(DlrRequest { url: "http://x/%d".into(), mask: 31, user: "k".into(), to: "0044".into(), from: "Shop".into() }),
                template_id: Some("1107".into()),
                entity_id: Some("1201".into()),
            },
        }
    }

    fn bare() -> MessageRecord {
        let mut record = full();
        (record.from, record.submitted_ms, record.done_ms, record.carrier, record.smsc_message_id) = (None, None, None, None, None);
        (record.attempts, record.receipt, record.error, record.verification, record.encoding) = (vec![], None, None, None, None);
        (record.parts, record.reference, record.options, record.status) = (vec![], None, SendOptions::default(), MessageStatus::Queued);
        record
    }

    #[test]
    fn records_round_trip_through_the_binary_layout() {
        for record in [full(), bare()] {
            let row = record.to_row();
            assert_eq!(row[0], RECORD_V1);
            assert_eq!(MessageRecord::from_row(&row), Some(record));
        }
    }

    #[test]
    fn the_binary_layout_is_a_third_of_the_json() {
        let mut record = bare();
        record.status = MessageStatus::Delivered;
        (record.submitted_ms, record.done_ms) = (Some(record.created_ms + 3), Some(record.created_ms + 900));
        (record.carrier, record.smsc_message_id) = (Some("alpha".into()), Some("12345678".into()));
        record.attempts = vec![full().attempts[1].clone()];
        record.receipt = full().receipt;
        record.encoding = Some(Encoding::Gsm7);
        let (binary, json) = (record.to_row().len(), serde_json::to_vec(&record).unwrap().len());
        assert!(binary * 3 <= json, "{binary} bytes against {json} as JSON");
    }

    #[test]
    fn records_written_as_json_before_version_1_still_read() {
        // A delivered record exactly as the JSON versions wrote it (before `options`, `parts`
        // and `reference` existed, as the oldest stores have them).
        let old = br#"{"owner":"shop","to":"+447700900123","from":null,"text":"Your code is ******","status":"delivered","created_ms":1764000000000,"deadline_ms":1764000600000,"submitted_ms":1764000000004,"done_ms":1764000001000,"carrier":"alpha","smsc_message_id":"1f2e3d","attempts":[{"at_ms":1764000000004,"carrier":"alpha","session":"alpha#0/trx","result":"ok","detail":""}],"receipt":{"stat":"DELIVRD","err":"000","at_ms":1764000001000,"is_final":true},"error":null,"unconfirmed":0,"verification":"07070707070707070707070707070707","encoding":"gsm7","segments":1}"#;
        let record = MessageRecord::from_row(old).expect("an old JSON record reads");
        assert_eq!((record.status, record.text.as_str(), record.segments), (MessageStatus::Delivered, "Your code is ******", 1));
        assert_eq!(record.verification, Some(VerificationId(MessageId([7; 16]))));
        assert_eq!(record.receipt.as_ref().map(|r| r.stat.as_str()), Some("DELIVRD"));
        assert_eq!(record.attempts[0].session.as_deref(), Some("alpha#0/trx"));
        assert!(record.parts.is_empty() && record.options == SendOptions::default());
        // Rewritten, it moves to the binary layout and reads back the same.
        assert_eq!(MessageRecord::from_row(&record.to_row()), Some(record));
    }

    #[test]
    fn damaged_rows_are_refused_without_a_panic() {
        let row = full().to_row();
        for end in 0..row.len() {
            assert_eq!(MessageRecord::from_row(&row[..end]), None, "cut at {end}");
        }
        let mut longer = row.clone();
        longer.push(0);
        assert_eq!(MessageRecord::from_row(&longer), None);
        let mut version = row.clone();
        version[0] = 9;
        assert_eq!(MessageRecord::from_row(&version), None);
        // A huge list length or an endless varint is refused, not allocated or looped on.
        for bytes in [&[RECORD_V1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..], &[RECORD_V1; 3]] {
            assert_eq!(MessageRecord::from_row(bytes), None);
        }
        // Every single flipped byte gives a record or None, never a panic.
        for at in 0..row.len() {
            let mut flipped = row.clone();
            flipped[at] ^= 0xa5;
            let _ = MessageRecord::from_row(&flipped);
        }
    }
}
