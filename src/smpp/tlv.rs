//! Vendor TLVs a carrier wants on every submit_sm: India's DLT entity and template ids, a
//! principal entity, a telemarketer id... Tags come from the carrier's spec (they differ between
//! carriers), values are literal or filled from the message: `{template_id}`, `{entity_id}`,
//! `{sender}`. Checked at config load; a message lacking a field its carrier needs is refused at
//! intake, never sent without it.

use std::collections::BTreeMap;

/// Vendor-specific tags (SMPP 3.4 §5.3.2: 0x1400-0x3FFF are reserved for SMSC vendors).
const VENDOR_TAGS: std::ops::RangeInclusive<u16> = 0x1400..=0x3FFF;
/// The longest value one TLV carries here, once filled.
pub const MAX_VALUE: usize = 255;

/// A message field a TLV value may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    TemplateId,
    EntityId,
    Sender,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::TemplateId => "template_id",
            Field::EntityId => "entity_id",
            Field::Sender => "sender",
        }
    }
}

/// The registration a message carries (its template's, or what the client sent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registration {
    pub template_id: Option<String>,
    pub entity_id: Option<String>,
}

impl Registration {
    /// Whether it has `field` (the sender is always known at submit).
    pub fn has(&self, field: Field) -> bool {
        match field {
            Field::TemplateId => self.template_id.is_some(),
            Field::EntityId => self.entity_id.is_some(),
            Field::Sender => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// One vendor TLV: its tag and how its value is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorTlv {
    pub tag: u16,
    pieces: Vec<Piece>,
}

impl VendorTlv {
    /// The fields its value names.
    pub fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Field(f) => Some(*f),
            Piece::Text(_) => None,
        })
    }

    /// Its value for a message with `registration` sent as `sender`; `Err` names a missing field.
    pub fn fill(&self, registration: &Registration, sender: &str) -> Result<Vec<u8>, Field> {
        let mut value = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => value.push_str(text),
                Piece::Field(Field::TemplateId) => value.push_str(registration.template_id.as_deref().ok_or(Field::TemplateId)?),
                Piece::Field(Field::EntityId) => value.push_str(registration.entity_id.as_deref().ok_or(Field::EntityId)?),
                Piece::Field(Field::Sender) => value.push_str(sender),
            }
        }
        Ok(value.into_bytes())
    }
}

/// A carrier's `tlvs` table read: keys are tags (`"0x1400"` or decimal), values text with fields.
pub fn parse(table: &BTreeMap<String, String>) -> Result<Vec<VendorTlv>, String> {
    let mut tlvs = Vec::with_capacity(table.len());
    for (key, value) in table {
        let tag = match key.strip_prefix("0x").or_else(|| key.strip_prefix("0X")) {
            Some(hex) => u16::from_str_radix(hex, 16).ok(),
            None => key.parse().ok(),
        }
        .filter(|tag| VENDOR_TAGS.contains(tag))
        .ok_or_else(|| format!("{} is not a vendor TLV tag: use 0x1400-0x3FFF, as the carrier's spec gives it", crate::echo::shown(key)))?;
        if !value.is_ascii() || value.bytes().any(|b| b.is_ascii_control()) {
            return Err(format!("0x{tag:04X}: the value must be printable ASCII"));
        }
        let pieces = pieces(value).map_err(|e| format!("0x{tag:04X}: {e}"))?;
        let longest = pieces.iter().map(|p| if let Piece::Text(t) = p { t.len() } else { 64 }).sum::<usize>();
        if longest > MAX_VALUE {
            return Err(format!("0x{tag:04X}: the value can reach {longest} bytes; at most {MAX_VALUE}"));
        }
        if tlvs.iter().any(|t: &VendorTlv| t.tag == tag) {
            return Err(format!("0x{tag:04X} is set twice"));
        }
        tlvs.push(VendorTlv { tag, pieces });
    }
    // In tag order, however the keys were written.
    tlvs.sort_by_key(|t| t.tag);
    Ok(tlvs)
}

fn pieces(value: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_string()));
        }
        let close = rest[open..].find('}').ok_or("an unclosed '{'")? + open;
        let field = match &rest[open + 1..close] {
            "template_id" => Field::TemplateId,
            "entity_id" => Field::EntityId,
            "sender" => Field::Sender,
            other => return Err(format!("{{{other}}} is not a field: use {{template_id}}, {{entity_id}} or {{sender}}")),
        };
        pieces.push(Piece::Field(field));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Ok(pieces)
}

/// Whether `id` can be a registration id (a DLT template or entity id): 1-64 visible ASCII.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn tags_values_and_fields_are_read_and_filled() {
        let tlvs = parse(&table(&[("0x1400", "{entity_id}"), ("5121", "T-{template_id}"), ("0x3FFF", "fixed")])).unwrap();
        assert_eq!(tlvs.iter().map(|t| t.tag).collect::<Vec<_>>(), [0x1400, 0x1401, 0x3FFF]);
        let registration = Registration { template_id: Some("1107".into()), entity_id: Some("1101".into()) };
        assert_eq!(tlvs[0].fill(&registration, "ACME").unwrap(), b"1101");
        assert_eq!(tlvs[1].fill(&registration, "ACME").unwrap(), b"T-1107");
        assert_eq!(tlvs[2].fill(&Registration::default(), "ACME").unwrap(), b"fixed");
        assert_eq!(tlvs[1].fill(&Registration::default(), "ACME"), Err(Field::TemplateId));
        assert_eq!(tlvs[1].fields().collect::<Vec<_>>(), [Field::TemplateId]);
        let sender = parse(&table(&[("0x1402", "{sender}")])).unwrap();
        assert_eq!(sender[0].fill(&Registration::default(), "ACME").unwrap(), b"ACME");
    }

    #[test]
    fn bad_tables_are_refused_with_the_reason() {
        for (key, value, expected) in [
            ("0x0204", "x", "0x1400-0x3FFF"),
            ("0x4000", "x", "0x1400-0x3FFF"),
            ("tag", "x", "0x1400-0x3FFF"),
            ("0x1400", "{code}", "is not a field"),
            ("0x1400", "{template_id", "unclosed"),
            ("0x1400", "caf\u{e9}", "printable ASCII"),
        ] {
            let e = parse(&table(&[(key, value)])).unwrap_err();
            assert!(e.contains(expected), "{key} = {value}: {e}");
        }
        let long = "x".repeat(300);
        assert!(parse(&table(&[("0x1400", long.as_str())])).unwrap_err().contains("at most 255"));
        assert!(parse(&table(&[("0x1400", "a"), ("5120", "b")])).unwrap_err().contains("twice"));
    }
}
