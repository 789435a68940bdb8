//! Which country a phone number is in, by its E.164 country calling code: the table
//! (`country_codes.txt`: the ITU-T E.164 assignments as Google's libphonenumber lists them,
//! generated from PyPI `phonenumbers`) and the lookup. Metrics per country use it as their label,
//! which stays bounded (some 215 codes) whatever the traffic.

use std::collections::HashMap;
use std::sync::LazyLock;

/// Calling code → region (ISO 3166-1 alpha-2; `001` for non-geographic services).
static CODES: LazyLock<HashMap<u16, &'static str>> = LazyLock::new(|| {
    include_str!("country_codes.txt")
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (code, region) = line.split_once(' ')?;
            Some((code.parse().ok()?, region.trim()))
        })
        .collect()
});

/// The country calling code and region of an E.164 number (`+` and digits), when its code is
/// assigned. Calling codes are prefix-free, so the first (shortest) match is the one.
pub fn of(number: &str) -> Option<(u16, &'static str)> {
    let digits = number.strip_prefix('+')?;
    (1..=3).filter_map(|n| digits.get(..n)?.parse::<u16>().ok()).find_map(|code| CODES.get(&code).map(|region| (code, *region)))
}

/// A number's region as a metric label: `unknown` when its code is not assigned.
pub fn label(number: &str) -> &'static str {
    of(number).map_or("unknown", |(_, region)| region)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_map_to_their_country() {
        for (number, expected) in [
            ("+447700900123", Some((44, "GB"))),
            ("+14155550123", Some((1, "US"))),
            ("+79161234567", Some((7, "RU"))),
            ("+8613800138000", Some((86, "CN"))),
            ("+353851234567", Some((353, "IE"))),
            ("+2348031234567", Some((234, "NG"))),
            ("+88212345678", Some((882, "001"))),
            ("+999123456789", None),
            ("447700900123", None),
        ] {
            assert_eq!(of(number), expected, "{number}");
        }
        assert_eq!(label("+999123456789"), "unknown");
    }

    #[test]
    fn the_table_is_complete_and_prefix_free() {
        assert!(CODES.len() >= 210, "{} codes", CODES.len());
        let codes: Vec<String> = CODES.keys().map(u16::to_string).collect();
        for a in &codes {
            assert!(!codes.iter().any(|b| b != a && b.starts_with(a.as_str())), "{a} is a prefix of another code");
        }
        assert!(CODES.values().all(|r| r.len() == 2 || *r == "001"));
    }
}
