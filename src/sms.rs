//! The text of an SMS as the network carries it: in which alphabet, in how many parts, and the
//! octets of each part.
//!
//! A text goes as GSM 03.38 (3GPP TS 23.038) when every character has a code there, its
//! extension table included (`^{}\[~]|€` and form feed cost two septets: ESC, then the
//! character), else as UTF-16 (data_coding 8, "UCS-2" to SMPP 3.4; handsets read it as UTF-16),
//! characters outside the BMP (emoji) as surrogate pairs. A long text is cut into parts on
//! character boundaries: never between ESC and its character, never inside a surrogate pair.
//!
//! How many characters fit depends on what tells the handset that parts belong together: a user
//! data header takes 6 octets with an 8-bit reference (153 septets or 67 UTF-16 units left of
//! 160/70) and 7 with a 16-bit one (152/66). Which of those a carrier uses is its setting
//! (`smpp::settings::LongSms`); the octets per part are decided here.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

/// GSM 03.38 default alphabet, by septet value (0x1B is ESC, never a character of its own).
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\u{1b}ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The escape septet to the extension table.
pub const ESC: u8 = 0x1B;

/// The extension table: (septet after ESC, character).
const GSM_EXTENSION: [(u8, char); 10] =
    [(0x0A, '\u{c}'), (0x14, '^'), (0x28, '{'), (0x29, '}'), (0x2F, '\\'), (0x3C, '['), (0x3D, '~'), (0x3E, ']'), (0x40, '|'), (0x65, '€')];

/// Each GSM character's septets: one, or ESC and one.
static GSM_CODES: LazyLock<HashMap<char, (u8, Option<u8>)>> = LazyLock::new(|| {
    let basic =
        GSM_BASIC.chars().enumerate().filter(|&(septet, _)| septet != usize::from(ESC)).map(|(septet, c)| (c, (septet as u8, None)));
    basic.chain(GSM_EXTENSION.iter().map(|&(septet, c)| (c, (ESC, Some(septet))))).collect()
});

/// The character of a basic-table septet.
pub fn gsm_basic(septet: u8) -> Option<char> {
    GSM_BASIC.chars().nth(usize::from(septet)).filter(|_| septet != ESC)
}

/// The character of an extension-table septet (the one after ESC).
pub fn gsm_extension(septet: u8) -> Option<char> {
    GSM_EXTENSION.iter().find(|&&(s, _)| s == septet).map(|&(_, c)| c)
}

/// The alphabet a text travels in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// GSM 03.38, 7 bits a character.
    Gsm7,
    /// UTF-16 big-endian (data_coding 8).
    Ucs2,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "gsm7",
            Encoding::Ucs2 => "ucs2",
        }
    }
}

/// How data_coding 0 reads at one SMSC: as GSM 03.38 (SMPP's default), or as Latin-1 or ASCII
/// octets it converts to GSM itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAlphabet {
    #[default]
    Gsm7,
    Latin1,
    Ascii,
}

/// What tells the handset that parts belong together, as far as their room goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A user data header with an 8-bit reference (IE 0x00: 6 octets) ...
    Reference8,
    /// ... or with a 16-bit one (IE 0x08: 7 octets).
    Reference16,
}

/// Why a text cannot be sent as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("the text has a character GSM 03.38 cannot represent (U+{:04X}); send it as ucs2", u32::from(*.0))]
    NotGsm7(char),
}

/// A text encoded: its octets, and for each character where its octets end and what it costs
/// in a part (septets for GSM, octets for UTF-16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    encoding: Encoding,
    octets: Vec<u8>,
    chars: Vec<(usize, usize)>,
}

impl Text {
    /// `text` in the cheapest encoding that carries it, or in `asked`.
    pub fn encode(text: &str, asked: Option<Encoding>) -> Result<Text, TextError> {
        Text::encode_for(text, asked, DefaultAlphabet::Gsm7)
    }

    /// As [`Text::encode`], with GSM texts written the way an SMSC reading data_coding 0 as
    /// `alphabet` expects (each character still costs its GSM septets: the SMSC converts). A
    /// GSM text that alphabet cannot write goes as UTF-16.
    pub fn encode_for(text: &str, asked: Option<Encoding>, alphabet: DefaultAlphabet) -> Result<Text, TextError> {
        if asked != Some(Encoding::Ucs2) {
            match gsm(text, alphabet) {
                Ok(encoded) => return Ok(encoded),
                Err(c) if asked == Some(Encoding::Gsm7) && GSM_CODES.get(&c).is_none() => return Err(TextError::NotGsm7(c)),
                Err(_) => {}
            }
        }
        Ok(utf16(text))
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// data_coding for it: 0 (the SMSC's default alphabet) or 8 (UCS-2).
    pub fn data_coding(&self) -> u8 {
        match self.encoding {
            Encoding::Gsm7 => 0,
            Encoding::Ucs2 => 8,
        }
    }

    /// All its octets, for a carrier that splits long texts itself (message_payload).
    pub fn octets(&self) -> &[u8] {
        &self.octets
    }

    /// Its octets cut into parts that fit beside `header` (one part if the whole text fits a
    /// single SMS).
    pub fn parts(&self, header: Header) -> Vec<&[u8]> {
        self.ranges(header).into_iter().map(|r| &self.octets[r]).collect()
    }

    /// How many SMS it takes with `header`.
    pub fn segments(&self, header: Header) -> usize {
        self.ranges(header).len()
    }

    fn ranges(&self, header: Header) -> Vec<Range<usize>> {
        let (single, part) = room(self.encoding, header);
        let total: usize = self.chars.iter().map(|&(_, cost)| cost).sum();
        if total <= single {
            return std::iter::once(0..self.octets.len()).collect();
        }
        let (mut ranges, mut start, mut used, mut end) = (Vec::new(), 0, 0, 0);
        for &(char_end, cost) in &self.chars {
            if used + cost > part {
                ranges.push(start..end);
                (start, used) = (end, 0);
            }
            used += cost;
            end = char_end;
        }
        ranges.push(start..end);
        ranges
    }
}

/// (room of a single SMS, room of each part beside `header`), in the encoding's cost units.
fn room(encoding: Encoding, header: Header) -> (usize, usize) {
    let header_octets = match header {
        Header::Reference8 => 6,
        Header::Reference16 => 7,
    };
    let user_data = 140 - header_octets;
    match encoding {
        // Septets: the header is padded to a septet boundary.
        Encoding::Gsm7 => (160, user_data * 8 / 7),
        // Whole UTF-16 units.
        Encoding::Ucs2 => (140, user_data / 2 * 2),
    }
}

/// GSM 03.38 written for `alphabet`, or the first character it cannot carry.
fn gsm(text: &str, alphabet: DefaultAlphabet) -> Result<Text, char> {
    let mut encoded = Text { encoding: Encoding::Gsm7, octets: Vec::with_capacity(text.len()), chars: Vec::with_capacity(text.len()) };
    for c in text.chars() {
        let &(first, second) = GSM_CODES.get(&c).ok_or(c)?;
        let cost = 1 + usize::from(second.is_some());
        match alphabet {
            DefaultAlphabet::Gsm7 => encoded.octets.extend([first].into_iter().chain(second)),
            DefaultAlphabet::Latin1 => encoded.octets.push(u8::try_from(u32::from(c)).map_err(|_| c)?),
            DefaultAlphabet::Ascii if c.is_ascii() => encoded.octets.push(c as u8),
            DefaultAlphabet::Ascii => return Err(c),
        }
        encoded.chars.push((encoded.octets.len(), cost));
    }
    Ok(encoded)
}

/// UTF-16 big-endian; a character outside the BMP is one 4-octet unit of cost.
fn utf16(text: &str) -> Text {
    let mut encoded = Text { encoding: Encoding::Ucs2, octets: Vec::with_capacity(text.len() * 2), chars: Vec::with_capacity(text.len()) };
    let mut units = [0u16; 2];
    for c in text.chars() {
        let before = encoded.octets.len();
        for unit in c.encode_utf16(&mut units) {
            encoded.octets.extend(unit.to_be_bytes());
        }
        encoded.chars.push((encoded.octets.len(), encoded.octets.len() - before));
    }
    encoded
}

/// Packs GSM septets eight to seven octets (3GPP TS 23.038 §6.1.2.1.1), after `fill` zero bits
/// (what puts the first septet on a septet boundary after a user data header). Seven spare bits
/// at the end hold CR, not '@' (§6.1.2.3.1), and a text that ends in CR exactly on an octet
/// boundary gets a second CR, so the receiver can tell the two apart.
pub fn pack(septets: &[u8], fill: u8) -> Vec<u8> {
    const CR: u32 = 0x0D;
    let mut out = Vec::with_capacity((septets.len() * 7 + usize::from(fill)).div_ceil(8) + 1);
    let (mut bits, mut held) = (0u32, u32::from(fill));
    let ends_in_cr = septets.last() == Some(&(CR as u8));
    for &septet in septets {
        bits |= u32::from(septet & 0x7F) << held;
        held += 7;
        while held >= 8 {
            out.push(bits as u8);
            (bits, held) = (bits >> 8, held - 8);
        }
    }
    match held {
        0 if ends_in_cr => out.push(CR as u8),
        0 => {}
        // Seven bits to spare: a CR there is padding.
        1 => out.push((bits | CR << 1) as u8),
        _ => out.push(bits as u8),
    }
    out
}

/// The septets of packed GSM (see [`pack`]), the padding CR left out.
pub fn unpack(octets: &[u8], fill: u8) -> Vec<u8> {
    let total = (octets.len() * 8).saturating_sub(usize::from(fill));
    let mut septets: Vec<u8> = (0..total / 7)
        .map(|i| {
            let bit = usize::from(fill) + i * 7;
            let pair = u16::from(octets[bit / 8]) | u16::from(*octets.get(bit / 8 + 1).unwrap_or(&0)) << 8;
            (pair >> (bit % 8)) as u8 & 0x7F
        })
        .collect();
    // A CR in seven bits that end the octets exactly was padding (a text that truly ends in CR
    // there was given a second CR and a padding bit, so it never ends exactly).
    if total % 7 == 0 && septets.last() == Some(&0x0D) {
        septets.pop();
    }
    septets
}

/// A text read back from its octets (the simulator's side, and the tests').
pub fn decode(data_coding: u8, octets: &[u8]) -> String {
    match data_coding {
        0 => {
            let mut out = String::with_capacity(octets.len());
            let mut septets = octets.iter().copied();
            while let Some(septet) = septets.next() {
                let c = match septet {
                    ESC => septets.next().and_then(gsm_extension),
                    septet => gsm_basic(septet),
                };
                out.push(c.unwrap_or('\u{fffd}'));
            }
            out
        }
        8 => {
            let units: Vec<u16> = octets.chunks(2).map(|pair| u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])).collect();
            String::from_utf16_lossy(&units)
        }
        // Latin-1 maps byte for byte onto the first 256 code points; IA5 is a subset.
        1 | 3 => octets.iter().map(|&b| char::from(b)).collect(),
        _ => String::from_utf8_lossy(octets).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_cheapest_encoding_is_chosen_and_a_forced_one_is_checked() {
        let text = Text::encode("@£$_ {}[]~|€^\\ äöü 123456", None).unwrap();
        assert_eq!(text.encoding(), Encoding::Gsm7);
        assert_eq!(text.octets()[0], 0x00, "@ is septet 0x00, never '?'");
        assert_eq!(decode(0, text.octets()), "@£$_ {}[]~|€^\\ äöü 123456");
        assert_eq!(Text::encode("Код 123456", None).unwrap().encoding(), Encoding::Ucs2);
        assert_eq!(Text::encode("hi", Some(Encoding::Ucs2)).unwrap().octets(), &[0, b'h', 0, b'i']);
        assert_eq!(Text::encode("Код", Some(Encoding::Gsm7)), Err(TextError::NotGsm7('К')));
        let emoji = Text::encode("ok 👍", None).unwrap();
        assert_eq!((emoji.encoding(), emoji.octets().len()), (Encoding::Ucs2, 10));
        assert_eq!(decode(8, emoji.octets()), "ok 👍");
    }

    #[test]
    fn part_sizes_follow_the_header() {
        let gsm = |n: usize| Text::encode(&"x".repeat(n), None).unwrap();
        assert_eq!(gsm(160).segments(Header::Reference8), 1);
        assert_eq!(gsm(161).segments(Header::Reference8), 2);
        assert_eq!(gsm(306).segments(Header::Reference8), 2);
        assert_eq!(gsm(307).segments(Header::Reference8), 3);
        assert_eq!(gsm(304).segments(Header::Reference16), 2);
        assert_eq!(gsm(305).segments(Header::Reference16), 3);
        assert_eq!(gsm(161).parts(Header::Reference8).iter().map(|p| p.len()).collect::<Vec<_>>(), [153, 8]);
        let ucs2 = |n: usize| Text::encode(&"ж".repeat(n), None).unwrap();
        assert_eq!(ucs2(70).segments(Header::Reference8), 1);
        assert_eq!(ucs2(71).parts(Header::Reference8).iter().map(|p| p.len()).collect::<Vec<_>>(), [134, 8]);
        assert_eq!(ucs2(132).segments(Header::Reference16), 2);
        assert_eq!(ucs2(133).segments(Header::Reference16), 3);
        // Extension characters cost two septets, and ESC never ends a part.
        let braces = Text::encode(&format!("{}{{{}", "x".repeat(152), "x".repeat(10)), None).unwrap();
        assert_eq!(braces.parts(Header::Reference8).iter().map(|p| p.len()).collect::<Vec<_>>(), [152, 12]);
    }

    #[test]
    fn a_carriers_default_alphabet_changes_the_octets_not_the_cost() {
        let latin1 = Text::encode_for("Ça coûte 5 € ou £4", None, DefaultAlphabet::Latin1).unwrap();
        assert_eq!(latin1.encoding(), Encoding::Ucs2, "€ is not Latin-1");
        let latin1 = Text::encode_for("Ça {marche}: £4, Ü", None, DefaultAlphabet::Latin1).unwrap();
        assert_eq!((latin1.encoding(), decode(3, latin1.octets())), (Encoding::Gsm7, "Ça {marche}: £4, Ü".to_string()));
        let ascii = Text::encode_for(&format!("{}{{{}", "x".repeat(152), "x".repeat(10)), None, DefaultAlphabet::Ascii).unwrap();
        assert_eq!(ascii.parts(Header::Reference8).iter().map(|p| p.len()).collect::<Vec<_>>(), [152, 11]);
        assert_eq!(Text::encode_for("é", None, DefaultAlphabet::Ascii).unwrap().encoding(), Encoding::Ucs2);
    }

    #[test]
    fn packing_follows_23_038() {
        let hello = Text::encode("hellohello", None).unwrap();
        assert_eq!(pack(hello.octets(), 0), [0xE8, 0x32, 0x9B, 0xFD, 0x46, 0x97, 0xD9, 0xEC, 0x37]);
        // Seven septets leave seven spare bits: CR, never an '@'.
        let seven = pack(&[0x31; 7], 0);
        assert_eq!((seven.len(), seven[6] >> 1), (7, 0x0D));
        assert_eq!(unpack(&seven, 0), [0x31; 7]);
        // After a 6-octet header one fill bit puts the first septet on a boundary.
        assert_eq!(unpack(&pack(b"\x31\x32", 1), 1), [0x31, 0x32]);
    }

    proptest! {
        #[test]
        fn packed_septets_unpack_to_themselves(septets in prop::collection::vec(0u8..0x80, 0..170), fill in 0u8..7) {
            let mut expected = septets.clone();
            // A final CR on an octet boundary reads as CR CR, which shows the same (§6.1.2.3.1).
            if septets.last() == Some(&0x0D) && (usize::from(fill) + 7 * septets.len()) % 8 == 0 {
                expected.push(0x0D);
            }
            prop_assert_eq!(unpack(&pack(&septets, fill), fill), expected);
        }
    }

    /// Characters from every corner: GSM basic, extension, Latin, Cyrillic, CJK, emoji.
    fn any_char() -> impl Strategy<Value = char> {
        prop_oneof![
            prop::sample::select(GSM_BASIC.chars().filter(|&c| c != '\u{1b}').collect::<Vec<_>>()),
            prop::sample::select(GSM_EXTENSION.iter().map(|&(_, c)| c).collect::<Vec<_>>()),
            prop::char::range('а', 'я'),
            prop::char::range('一', '龥'),
            prop::char::range('😀', '🙏'),
        ]
    }

    proptest! {
        #[test]
        fn parts_reassemble_fit_and_never_split_a_character(
            chars in prop::collection::vec(any_char(), 0..700),
            gsm_only in any::<bool>(),
            header in prop::sample::select(vec![Header::Reference8, Header::Reference16]),
        ) {
            let text: String = chars.into_iter().filter(|c| !gsm_only || GSM_CODES.contains_key(c)).collect();
            let encoded = Text::encode(&text, None).unwrap();
            let data_coding = encoded.data_coding();
            let parts = encoded.parts(header);
            let (single, room) = room(encoded.encoding(), header);
            // Each part is whole characters: it decodes on its own, and the parts make the text.
            let rebuilt: String = parts.iter().map(|p| decode(data_coding, p)).collect();
            prop_assert_eq!(&rebuilt, &text);
            for part in &parts {
                let limit = if parts.len() == 1 { single } else { room };
                prop_assert!(part.len() <= limit, "{} octets over {}", part.len(), limit);
                if data_coding == 0 {
                    prop_assert!(part.last() != Some(&ESC), "ESC ends a part");
                } else {
                    let last = part.len().checked_sub(2).map(|i| u16::from_be_bytes([part[i], part[i + 1]]));
                    prop_assert!(!last.is_some_and(|u| (0xD800..0xDC00).contains(&u)), "a high surrogate ends a part");
                }
            }
            prop_assert_eq!(parts.len(), encoded.segments(header));
            // GSM is chosen exactly when every character has a GSM code.
            prop_assert_eq!(data_coding == 0, text.chars().all(|c| GSM_CODES.contains_key(&c)));
        }
    }
}
