//! SMPP addresses: the digits or name on the wire plus the TON/NPI that tell the SMSC how to read them.
//!
//! Carriers reject a submit whose TON/NPI do not match the address (ESME_RINVSRCTON and friends), so
//! we infer them from the address itself instead of asking operators to get them right by hand.

use rusmpp::values::{Npi, Ton};

/// An address ready for a submit_sm field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub ton: Ton,
    pub npi: Npi,
    /// What goes on the wire: digits without `+`, or the alphanumeric name.
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("must not be empty")]
    Empty,
    #[error("an E.164 number is '+' and 8-15 digits")]
    BadE164,
    #[error("an alphanumeric sender is at most 11 characters of letters, digits, space, '-', '.' or '_'")]
    BadAlphanumeric,
    #[error("a numeric sender is at most 20 digits")]
    TooLong,
}

/// Short codes are at most 8 digits in every market we know of.
const MAX_SHORT_CODE_DIGITS: usize = 8;

impl Address {
    /// A sender: E.164 (`+447700900123` → 1/1), short code (`12345` → 3/0) or alphanumeric
    /// (`Acme` → 5/0).
    pub fn source(text: &str) -> Result<Address, AddressError> {
        if text.is_empty() {
            return Err(AddressError::Empty);
        }
        if text.starts_with('+') {
            return Address::e164(text);
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            if text.len() > 20 {
                return Err(AddressError::TooLong);
            }
            let (ton, npi) =
                if text.len() <= MAX_SHORT_CODE_DIGITS { (Ton::NetworkSpecific, Npi::Unknown) } else { (Ton::International, Npi::Isdn) };
            return Ok(Address { ton, npi, value: text.to_string() });
        }
        let alnum_ok = text.chars().count() <= 11 && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '.' | '_'));
        if !alnum_ok {
            return Err(AddressError::BadAlphanumeric);
        }
        Ok(Address { ton: Ton::Alphanumeric, npi: Npi::Unknown, value: text.to_string() })
    }

    /// A destination handset: always E.164 with a leading `+`.
    pub fn destination(text: &str) -> Result<Address, AddressError> {
        Address::e164(text)
    }

    fn e164(text: &str) -> Result<Address, AddressError> {
        let digits = text.strip_prefix('+').ok_or(AddressError::BadE164)?;
        let ok = (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
        if !ok {
            return Err(AddressError::BadE164);
        }
        Ok(Address { ton: Ton::International, npi: Npi::Isdn, value: digits.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_kinds_get_their_ton_npi() {
        let a = Address::source("Acme").unwrap();
        assert_eq!((a.ton, a.npi, a.value.as_str()), (Ton::Alphanumeric, Npi::Unknown, "Acme"));
        let s = Address::source("12345").unwrap();
        assert_eq!((s.ton, s.npi), (Ton::NetworkSpecific, Npi::Unknown));
        let e = Address::source("+447700900123").unwrap();
        assert_eq!((e.ton, e.npi, e.value.as_str()), (Ton::International, Npi::Isdn, "447700900123"));
    }

    #[test]
    fn bad_addresses_are_refused() {
        assert_eq!(Address::source(""), Err(AddressError::Empty));
        assert_eq!(Address::source("TwelveChars!"), Err(AddressError::BadAlphanumeric));
        assert_eq!(Address::source("Ácme"), Err(AddressError::BadAlphanumeric));
        assert_eq!(Address::destination("447700900123"), Err(AddressError::BadE164));
        assert_eq!(Address::destination("+4477"), Err(AddressError::BadE164));
        assert_eq!(Address::destination("+44770090012345678"), Err(AddressError::BadE164));
        assert_eq!(Address::destination("+44 7700 900123"), Err(AddressError::BadE164));
        assert_eq!(Address::destination("+0447700900123"), Err(AddressError::BadE164));
    }
}
