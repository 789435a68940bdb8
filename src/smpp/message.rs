//! Turning an SMS we want to send into a submit_sm PDU.
//!
//! Text goes out as GSM 03.38 (unpacked, data_coding 0) when every character has a GSM code, else as
//! UCS-2; a message must fit one segment. The validity period is *relative* and computed at the
//! moment of submission, so the SMSC drops the message when the code it carries has expired, whatever
//! its clock says.

use std::time::{Duration, SystemTime};

use rusmpp::extra::encoding::{Encoder, gsm7bit::Gsm7BitUnpacked, ucs2::Ucs2};
use rusmpp::pdus::SubmitSm;
use rusmpp::types::{COctetString, EmptyOrFullCOctetString, OctetString};
use rusmpp::values::{DataCoding, EsmClass, PriorityFlag, RegisteredDelivery, ReplaceIfPresentFlag, ServiceType};

use super::address::{Address, AddressError};

/// One SMS to submit.
#[derive(Debug, Clone)]
pub struct OutboundSms {
    /// E.164 with `+`.
    pub to: String,
    /// Sender (alphanumeric, short code or E.164); the carrier's `source_addr` when `None`.
    pub from: Option<String>,
    pub text: String,
    /// After this instant the message must not be delivered.
    pub deadline: Option<SystemTime>,
}

/// Why an SMS cannot be turned into a submit_sm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("destination: {0}")]
    Destination(AddressError),
    #[error("sender: {0}")]
    Source(AddressError),
    #[error("text is {octets} octets as {coding}; one SMS segment holds {max}")]
    TooLong { coding: &'static str, octets: usize, max: usize },
    #[error("the validity deadline has passed")]
    Expired,
}

/// esm_class of an ordinary message: default messaging mode, normal message type, no UDH.
const NORMAL_MESSAGE: u8 = 0x00;

/// One segment: 160 GSM septets (one octet each, unpacked) or 140 octets of UCS-2.
const MAX_GSM_SEPTETS: usize = 160;
const MAX_UCS2_OCTETS: usize = 140;

/// Encodes text for one segment: GSM 03.38 when possible, else UCS-2.
pub fn encode_text(text: &str) -> Result<(Vec<u8>, DataCoding), MessageError> {
    let (bytes, coding, name, max) = match Gsm7BitUnpacked::new().encode(text) {
        Ok((bytes, _)) => (bytes, DataCoding::McSpecific, "GSM 03.38", MAX_GSM_SEPTETS),
        Err(_) => match Ucs2::new().encode(text) {
            Ok((bytes, coding)) => (bytes, coding, "UCS-2", MAX_UCS2_OCTETS),
            // UCS-2 cannot carry characters outside the BMP (most emoji).
            Err(_) => {
                return Err(MessageError::TooLong {
                    coding: "UCS-2 (characters outside the BMP cannot be sent)",
                    octets: text.len() * 2,
                    max: MAX_UCS2_OCTETS,
                });
            }
        },
    };
    if bytes.len() > max {
        return Err(MessageError::TooLong { coding: name, octets: bytes.len(), max });
    }
    Ok((bytes, coding))
}

/// SMPP 3.4 §7.1.1 relative time: `YYMMDDhhmmss000R`, here with years and months left at zero.
pub fn relative_validity(remaining: Duration) -> String {
    let secs = remaining.as_secs().max(1);
    let days = (secs / 86_400).min(99);
    let hours = secs % 86_400 / 3600;
    let minutes = secs % 3600 / 60;
    let seconds = secs % 60;
    format!("0000{days:02}{hours:02}{minutes:02}{seconds:02}000R")
}

impl OutboundSms {
    /// Builds the submit_sm, asking for a final delivery receipt.
    ///
    /// Every mandatory field is set here, none left to the codec's defaults: rusmpp 0.4 follows
    /// SMPP 5.0 and defaults esm_class to 0x08 ("delivery acknowledgement", §5.2.12), which a
    /// carrier may reject or mis-route. An OTP is a plain store-and-forward message: esm_class
    /// 0x00 (default mode, normal message, no UDH), protocol_id 0, priority 0, no schedule,
    /// no replace, no canned message.
    pub fn to_submit_sm(&self, default_from: &str, now: SystemTime) -> Result<SubmitSm, MessageError> {
        let dest = Address::destination(&self.to).map_err(MessageError::Destination)?;
        let from = self.from.as_deref().unwrap_or(default_from);
        let source = Address::source(from).map_err(MessageError::Source)?;
        let validity = match self.deadline {
            None => EmptyOrFullCOctetString::empty(),
            Some(deadline) => {
                let remaining = deadline.duration_since(now).map_err(|_| MessageError::Expired)?;
                if remaining < Duration::from_secs(1) {
                    return Err(MessageError::Expired);
                }
                c_string(&relative_validity(remaining))
            }
        };
        let (payload, coding) = encode_text(&self.text)?;
        let short_message = OctetString::from_vec(payload).map_err(|_| MessageError::TooLong {
            coding: "octets",
            octets: self.text.len(),
            max: MAX_UCS2_OCTETS,
        })?;
        Ok(SubmitSm::builder()
            .service_type(ServiceType::default())
            .source_addr_ton(source.ton)
            .source_addr_npi(source.npi)
            .source_addr(c_string(&source.value))
            .dest_addr_ton(dest.ton)
            .dest_addr_npi(dest.npi)
            .destination_addr(c_string(&dest.value))
            .esm_class(EsmClass::from(NORMAL_MESSAGE))
            .protocol_id(0)
            .priority_flag(PriorityFlag::from(0))
            .schedule_delivery_time(EmptyOrFullCOctetString::empty())
            .validity_period(validity)
            // 0x01: a receipt on final success or failure (§5.2.17).
            .registered_delivery(RegisteredDelivery::from(0x01))
            .replace_if_present_flag(ReplaceIfPresentFlag::DoNotReplace)
            .data_coding(coding)
            .sm_default_msg_id(0)
            .short_message(short_message)
            .build())
    }
}

/// Builds a C-octet string from text already checked to be short ASCII without NULs.
///
/// Addresses and validity strings pass through [`Address`] and [`relative_validity`] first, so the
/// fallback (an empty field, which the SMSC rejects with a clear status) is never reached in practice.
fn c_string<T: std::str::FromStr + Default>(text: &str) -> T {
    text.parse().unwrap_or_default()
}

/// A C-octet string for PDU fields we fill ourselves (ids, system ids); empty when it cannot be one.
pub fn c_octet<const MIN: usize, const MAX: usize>(text: &str) -> COctetString<MIN, MAX> {
    c_string(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sms(text: &str) -> OutboundSms {
        OutboundSms { to: "+447700900123".into(), from: None, text: text.into(), deadline: None }
    }

    #[test]
    fn gsm_text_is_sent_as_data_coding_zero() {
        let pdu = sms("123456 is your code").to_submit_sm("Acme", SystemTime::now()).unwrap();
        assert_eq!(u8::from(pdu.data_coding), 0);
        assert_eq!(&pdu.short_message()[..], b"123456 is your code");
        assert_eq!(pdu.destination_addr.as_str(), "447700900123");
        assert_eq!(u8::from(pdu.registered_delivery), 1);
    }

    #[test]
    fn non_gsm_text_falls_back_to_ucs2() {
        let pdu = sms("Код 123456").to_submit_sm("Acme", SystemTime::now()).unwrap();
        assert_eq!(u8::from(pdu.data_coding), 8);
        assert_eq!(pdu.short_message().len(), 20);
    }

    #[test]
    fn text_longer_than_one_segment_is_refused() {
        let e = sms(&"x".repeat(161)).to_submit_sm("Acme", SystemTime::now()).unwrap_err();
        assert!(matches!(e, MessageError::TooLong { octets: 161, max: 160, .. }), "{e}");
        assert!(sms(&"x".repeat(160)).to_submit_sm("Acme", SystemTime::now()).is_ok());
        let e = sms(&"ж".repeat(71)).to_submit_sm("Acme", SystemTime::now()).unwrap_err();
        assert!(matches!(e, MessageError::TooLong { max: 140, .. }), "{e}");
    }

    #[test]
    fn validity_is_the_remaining_life_in_relative_form() {
        let now = SystemTime::now();
        let mut m = sms("hi");
        m.deadline = Some(now + Duration::from_secs(5 * 60 + 7));
        let pdu = m.to_submit_sm("Acme", now).unwrap();
        assert_eq!(pdu.validity_period.as_str(), "000000000507000R");
        m.deadline = Some(now - Duration::from_secs(1));
        assert_eq!(m.to_submit_sm("Acme", now).unwrap_err(), MessageError::Expired);
        assert_eq!(relative_validity(Duration::from_secs(86_400 + 3661)), "000001010101000R");
    }
}
