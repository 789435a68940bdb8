//! Reading the text of a received submit_sm, as a handset would show it.
//!
//! rusmpp ships encoders only; the simulator needs the other direction to print what it received
//! and to let tests read a code out of an SMS.

/// GSM 03.38 default alphabet, by septet value.
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\u{1b}ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The extension table, reached through ESC (0x1B).
fn gsm_extension(septet: u8) -> Option<char> {
    Some(match septet {
        0x0A => '\u{c}',
        0x14 => '^',
        0x28 => '{',
        0x29 => '}',
        0x2F => '\\',
        0x3C => '[',
        0x3D => '~',
        0x3E => ']',
        0x40 => '|',
        0x65 => '€',
        _ => return None,
    })
}

/// Decodes unpacked GSM 03.38 (one septet per octet).
pub fn decode_gsm7(bytes: &[u8]) -> String {
    let table: Vec<char> = GSM_BASIC.chars().collect();
    let mut out = String::with_capacity(bytes.len());
    let mut iter = bytes.iter().copied();
    while let Some(b) = iter.next() {
        if b == 0x1B {
            match iter.next().and_then(gsm_extension) {
                Some(c) => out.push(c),
                None => out.push('\u{fffd}'),
            }
        } else {
            out.push(table.get(usize::from(b)).copied().unwrap_or('\u{fffd}'));
        }
    }
    out
}

/// Decodes a short_message by its data_coding.
pub fn decode(data_coding: u8, bytes: &[u8]) -> String {
    match data_coding {
        0 => decode_gsm7(bytes),
        8 => {
            let units: Vec<u16> = bytes.chunks(2).map(|pair| u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])).collect();
            String::from_utf16_lossy(&units)
        }
        // Latin-1 maps byte for byte onto the first 256 code points; IA5 is a subset.
        1 | 3 => bytes.iter().map(|&b| char::from(b)).collect(),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smpp::message::encode_text;

    #[test]
    fn gsm_and_ucs2_round_trip_through_our_encoder() {
        for text in ["123456 is your Acme code. Never share it.", "@£$_ {}[]~|€^\\ äöü", "Код 123456"] {
            let (bytes, coding) = encode_text(text).unwrap();
            assert_eq!(decode(u8::from(coding), &bytes), text);
        }
    }

    #[test]
    fn garbage_does_not_panic() {
        assert_eq!(decode_gsm7(&[0x1B]), "\u{fffd}");
        assert_eq!(decode_gsm7(&[0xFF]), "\u{fffd}");
        assert_eq!(decode(8, &[0x00]), "\u{0}");
    }
}
