//! Turning an SMS we want to send into submit_sm PDUs: one, or one per part of a long text.
//!
//! The text is encoded as `crate::sms` decides (GSM 03.38 written in the carrier's idea of
//! data_coding 0, else UTF-16) and, when longer than one SMS, cut into parts the handset joins
//! as the carrier's `long_sms` says: a user data header with an 8- or 16-bit reference, SAR
//! TLVs, or the whole text in message_payload for the SMSC to cut. The validity period is
//! *relative* and computed at the moment of submission, so the SMSC drops the message when the
//! code it carries has expired, whatever its clock says.

use std::time::{Duration, SystemTime};

use rusmpp::pdus::SubmitSm;
use rusmpp::tlvs::MessageSubmissionRequestTlvValue as Tlv;
use rusmpp::tlvs::TlvTag;
use rusmpp::types::{AnyOctetString, COctetString, EmptyOrFullCOctetString, OctetString};
use rusmpp::values::{DataCoding, EsmClass, MessagePayload, PriorityFlag, RegisteredDelivery, ReplaceIfPresentFlag, ServiceType};

use super::address::{Address, AddressError};
use super::settings::{CarrierConfig, LongSms};
use super::tlv::Registration;
use crate::sms::{Encoding, Text, TextError};

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
    /// The encoding the client asked for, if it asked.
    pub encoding: Option<Encoding>,
    /// The reference that ties a long text's parts together (its low 8 bits with `udh`); a
    /// new one for each send, so a handset never mixes the parts of two sends.
    pub reference: u16,
    /// The ids the carrier's vendor TLVs may ask for.
    pub registration: Registration,
}

impl OutboundSms {
    /// An SMS to `to` from the carrier's sender, in the cheapest encoding.
    pub fn new(to: &str, text: String, deadline: Option<SystemTime>) -> OutboundSms {
        OutboundSms { to: to.to_string(), from: None, text, deadline, encoding: None, reference: 0, registration: Registration::default() }
    }
}

/// Why an SMS cannot be turned into submit_sm PDUs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("destination: {0}")]
    Destination(AddressError),
    #[error("sender: {0}")]
    Source(AddressError),
    #[error(transparent)]
    Text(#[from] TextError),
    #[error("the text takes {0} SMS; at most 255 can be joined")]
    TooLong(usize),
    #[error("the validity deadline has passed")]
    Expired,
    #[error("the carrier's TLV 0x{0:04X} needs the message's {1}, which it does not carry")]
    MissingField(u16, &'static str),
    #[error("the carrier's TLV 0x{0:04X} would be over 255 bytes")]
    TlvTooLong(u16),
}

/// esm_class of an ordinary message: default messaging mode, normal message type, no UDH ...
const NORMAL_MESSAGE: u8 = 0x00;
/// ... and of a part whose short_message starts with a user data header (UDHI, §5.2.12).
const WITH_UDH: u8 = 0x40;

/// The most parts a header can number.
pub const MAX_PARTS: usize = 255;

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
    /// Its text as `carrier` will be sent it.
    fn text_for(&self, carrier: &CarrierConfig) -> Result<Text, MessageError> {
        Ok(Text::encode_for(&self.text, self.encoding, carrier.default_alphabet)?)
    }

    /// How many SMS it takes on `carrier` (what the carrier bills).
    pub fn segments_on(&self, carrier: &CarrierConfig) -> Result<usize, MessageError> {
        Ok(self.text_for(carrier)?.segments(carrier.long_sms.header()))
    }

    /// Builds the submit_sm PDUs for `carrier`, each asking for a final delivery receipt: one
    /// for a text that fits one SMS (or goes whole in message_payload), else one per part, in
    /// order.
    ///
    /// Every mandatory field is set here, none left to the codec's defaults: rusmpp 0.4 follows
    /// SMPP 5.0 and defaults esm_class to 0x08 ("delivery acknowledgement", §5.2.12), which a
    /// carrier may reject or mis-route. An OTP is a plain store-and-forward message: esm_class
    /// 0x00 (0x40 when a part carries a user data header), protocol_id 0, priority 0, no
    /// schedule, no replace, no canned message.
    pub fn to_submit_sms(&self, carrier: &CarrierConfig, now: SystemTime) -> Result<Vec<SubmitSm>, MessageError> {
        let dest = Address::destination(&self.to).map_err(MessageError::Destination)?;
        let from = self.from.as_deref().unwrap_or(&carrier.source_addr);
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
        let text = self.text_for(carrier)?;
        let mut vendor = Vec::new();
        for tlv in carrier.vendor_tlvs() {
            let value = tlv.fill(&self.registration, from).map_err(|field| MessageError::MissingField(tlv.tag, field.name()))?;
            if value.len() > super::tlv::MAX_VALUE {
                return Err(MessageError::TlvTooLong(tlv.tag));
            }
            vendor.push(Tlv::Other { tag: TlvTag::Other(tlv.tag), value: AnyOctetString::from_vec(value) });
        }
        let base = SubmitSm::builder()
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
            // 0x01: a receipt on final success or failure (§5.2.17), for every part.
            .registered_delivery(RegisteredDelivery::from(0x01))
            .replace_if_present_flag(ReplaceIfPresentFlag::DoNotReplace)
            .data_coding(DataCoding::from(text.data_coding()))
            .sm_default_msg_id(0)
            .tlvs(vendor);
        let parts = text.parts(carrier.long_sms.header());
        if parts.len() > MAX_PARTS {
            return Err(MessageError::TooLong(parts.len()));
        }
        let octets = |bytes: Vec<u8>| OctetString::from_vec(bytes).map_err(|_| MessageError::TooLong(parts.len()));
        // Septets packed when the carrier wants them so, after the fill bits that put the first
        // one on a septet boundary past a header of `header` octets.
        let packed = carrier.gsm7_packed && text.encoding() == Encoding::Gsm7;
        let wire = |septets: &[u8], header: usize| match packed {
            true => crate::sms::pack(septets, ((7 - header * 8 % 7) % 7) as u8),
            false => septets.to_vec(),
        };
        if parts.len() == 1 {
            return Ok(vec![base.short_message(octets(wire(text.octets(), 0))?).build()]);
        }
        if carrier.long_sms == LongSms::Payload {
            let payload = MessagePayload::new(AnyOctetString::from_vec(wire(text.octets(), 0)));
            return Ok(vec![base.short_message(OctetString::empty()).push_tlv(Tlv::MessagePayload(payload)).build()]);
        }
        let (total, reference) = (parts.len() as u8, self.reference);
        let [high, low] = reference.to_be_bytes();
        let mut pdus = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let seq = i as u8 + 1;
            let pdu = match carrier.long_sms {
                LongSms::Udh | LongSms::Payload => {
                    let udh = [0x05, 0x00, 0x03, low, total, seq];
                    let user_data = [&udh[..], &wire(part, udh.len())].concat();
                    base.clone().esm_class(EsmClass::from(WITH_UDH)).short_message(octets(user_data)?).build()
                }
                LongSms::Udh16 => {
                    let udh = [0x06, 0x08, 0x04, high, low, total, seq];
                    let user_data = [&udh[..], &wire(part, udh.len())].concat();
                    base.clone().esm_class(EsmClass::from(WITH_UDH)).short_message(octets(user_data)?).build()
                }
                LongSms::Sar => base
                    .clone()
                    .short_message(octets(wire(part, 0))?)
                    .push_tlv(Tlv::SarMsgRefNum(reference))
                    .push_tlv(Tlv::SarTotalSegments(total))
                    .push_tlv(Tlv::SarSegmentSeqnum(seq))
                    .build(),
            };
            pdus.push(pdu);
        }
        Ok(pdus)
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
        OutboundSms {
            to: "+447700900123".into(),
            from: None,
            text: text.into(),
            deadline: None,
            encoding: None,
            reference: 0x1234,
            registration: Registration::default(),
        }
    }

    fn carrier(extra: &str) -> CarrierConfig {
        toml::from_str(&format!("name = \"a\"\nhost = \"h\"\nsystem_id = \"x\"\npassword = \"y\"\nsource_addr = \"Acme\"\n{extra}"))
            .unwrap()
    }

    fn one(text: &str) -> SubmitSm {
        let mut pdus = sms(text).to_submit_sms(&carrier(""), SystemTime::now()).unwrap();
        assert_eq!(pdus.len(), 1);
        pdus.remove(0)
    }

    #[test]
    fn gsm_text_is_sent_as_data_coding_zero() {
        let pdu = one("123456 is your code");
        assert_eq!(u8::from(pdu.data_coding), 0);
        assert_eq!(&pdu.short_message()[..], b"123456 is your code");
        assert_eq!(pdu.destination_addr.as_str(), "447700900123");
        assert_eq!(u8::from(pdu.registered_delivery), 1);
        assert_eq!(u8::from(pdu.esm_class), 0);
    }

    #[test]
    fn non_gsm_text_falls_back_to_ucs2() {
        let pdu = one("Код 123456");
        assert_eq!(u8::from(pdu.data_coding), 8);
        assert_eq!(pdu.short_message().len(), 20);
    }

    #[test]
    fn long_text_goes_in_parts_the_way_the_carrier_joins_them() {
        let text = "x".repeat(200);
        let now = SystemTime::now();
        let udh = sms(&text).to_submit_sms(&carrier(""), now).unwrap();
        assert_eq!(udh.len(), 2);
        assert_eq!(u8::from(udh[0].esm_class), 0x40);
        assert_eq!(&udh[0].short_message()[..6], &[0x05, 0x00, 0x03, 0x34, 2, 1]);
        assert_eq!(udh[0].short_message().len(), 6 + 153);
        assert_eq!(&udh[1].short_message()[..6], &[0x05, 0x00, 0x03, 0x34, 2, 2]);
        let udh16 = sms(&text).to_submit_sms(&carrier("long_sms = \"udh16\""), now).unwrap();
        assert_eq!(&udh16[1].short_message()[..7], &[0x06, 0x08, 0x04, 0x12, 0x34, 2, 2]);
        assert_eq!(udh16[0].short_message().len(), 7 + 152);
        let sar = sms(&text).to_submit_sms(&carrier("long_sms = \"sar\""), now).unwrap();
        assert_eq!((u8::from(sar[0].esm_class), sar[0].short_message().len(), sar[0].tlvs().len()), (0, 152, 3));
        let payload = sms(&text).to_submit_sms(&carrier("long_sms = \"payload\""), now).unwrap();
        assert_eq!((payload.len(), payload[0].short_message().len(), payload[0].tlvs().len()), (1, 0, 1));
        let e = sms(&"x".repeat(153 * 256)).to_submit_sms(&carrier(""), now).unwrap_err();
        assert_eq!(e, MessageError::TooLong(256));
    }

    #[test]
    fn validity_is_the_remaining_life_in_relative_form() {
        let now = SystemTime::now();
        let mut m = sms("hi");
        m.deadline = Some(now + Duration::from_secs(5 * 60 + 7));
        let pdu = m.to_submit_sms(&carrier(""), now).unwrap().remove(0);
        assert_eq!(pdu.validity_period.as_str(), "000000000507000R");
        m.deadline = Some(now - Duration::from_secs(1));
        assert_eq!(m.to_submit_sms(&carrier(""), now).unwrap_err(), MessageError::Expired);
        assert_eq!(relative_validity(Duration::from_secs(86_400 + 3661)), "000001010101000R");
    }
}
