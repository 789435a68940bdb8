//! SMSC message ids as otpgate compares them. A leaf: the SMPP side reads receipt ids into this
//! form, the store keys its receipt index by it, and neither needs the other for that.

/// An SMSC id as the receipt index keys it: trimmed, lower case, without leading zeros.
pub fn canonical(id: &str) -> String {
    let trimmed = id.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    let lower = trimmed.to_ascii_lowercase();
    let stripped = lower.trim_start_matches('0');
    if stripped.is_empty() && !lower.is_empty() { "0".to_string() } else { stripped.to_string() }
}

#[cfg(test)]
mod tests {
    #[test]
    fn case_padding_and_leading_zeros_do_not_count() {
        assert_eq!(super::canonical(" 00AB12\0"), "ab12");
        assert_eq!(super::canonical("000"), "0");
        assert_eq!(super::canonical(""), "");
    }
}
