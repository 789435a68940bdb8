//! PDU framing: rusmpp's codec per PDU, plus the leniency real SMSCs need.
//!
//! Frames are cut here by `command_length`, and each is decoded by rusmpp on its own, so a PDU
//! rusmpp refuses never desynchronises the stream: it becomes [`Frame::Undecodable`] with its
//! header, and the session decides (a response fails its request as a carrier fault).
//!
//! SMPP 3.4 caps a message_id at 65 octets with its NUL (§4.4.2, §5.3.2.12), and rusmpp refuses
//! a longer one. One SMSC that accepted a submit and answered with a 65-character id thus made
//! the session reset with the submit "lost", and the same SMS went out again after every
//! reconnect. An id that is readable text is the SMSC's name for a message it accepted, so it
//! is read here whatever its length up to [`MAX_MESSAGE_ID`]: in a submit_sm_resp, and in the
//! receipted_message_id of the receipts that follow (a deliver_sm read by hand).

use bytes::BytesMut;
use rusmpp::tokio_codec::{CommandCodec, DecodeError, EncodeError};
use rusmpp::{Command, CommandStatus};
use tokio_util::codec::{Decoder, Encoder};

use super::receipt::{NetworkError, ReceiptFields};

/// The longest message_id read; longer is garbage, not an id.
pub const MAX_MESSAGE_ID: usize = 254;

const SUBMIT_SM_RESP: u32 = 0x8000_0004;
const DELIVER_SM: u32 = 0x0000_0005;
const HEADER: usize = 16;

/// A PDU as read off the wire.
#[derive(Debug)]
pub enum Frame {
    Command(Command),
    /// A submit_sm_resp whose message_id is longer than SMPP allows, read anyway.
    LongSubmitSmResp {
        sequence: u32,
        status: CommandStatus,
        message_id: String,
    },
    /// A deliver_sm rusmpp refused (an over-long receipted_message_id), read by hand.
    LenientDeliverSm {
        sequence: u32,
        pdu: LenientDeliverSm,
    },
    /// A whole PDU whose body could not be read.
    Undecodable {
        command_id: u32,
        sequence: u32,
        status: CommandStatus,
        error: String,
    },
}

/// The receipt-related fields of a deliver_sm, owned.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LenientDeliverSm {
    pub esm_class: u8,
    pub short_message: Vec<u8>,
    pub receipted_message_id: Option<String>,
    pub message_state: Option<u8>,
    pub network_error: Option<NetworkError>,
    pub message_payload: Option<Vec<u8>>,
}

impl<'a> From<&'a LenientDeliverSm> for ReceiptFields<'a> {
    fn from(pdu: &'a LenientDeliverSm) -> Self {
        let text = match (&pdu.message_payload, pdu.short_message.is_empty()) {
            (Some(payload), true) => payload,
            _ => &pdu.short_message,
        };
        ReceiptFields {
            esm_class: pdu.esm_class,
            text,
            receipted_message_id: pdu.receipted_message_id.clone(),
            message_state: pdu.message_state,
            network_error: pdu.network_error,
        }
    }
}

/// Cuts frames and decodes them (module doc).
pub struct FrameCodec {
    max_length: usize,
}

impl FrameCodec {
    pub fn new(max_length: usize) -> FrameCodec {
        FrameCodec { max_length }
    }
}

fn word(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// An over-long but readable message_id: printable ASCII, at most [`MAX_MESSAGE_ID`].
fn readable_id(id: &[u8]) -> Option<String> {
    let ok = id.len() <= MAX_MESSAGE_ID && id.iter().all(|b| b.is_ascii_graphic());
    ok.then(|| String::from_utf8_lossy(id).into_owned())
}

/// A submit_sm_resp body whose id does not fit SMPP but reads as an id.
fn long_submit_sm_resp(body: &[u8]) -> Option<String> {
    let end = body.iter().position(|&b| b == 0)?;
    if end < 65 {
        return None;
    }
    readable_id(&body[..end])
}

/// Reads a deliver_sm body field by field (§4.6.1), keeping what a receipt needs.
fn lenient_deliver_sm(body: &[u8]) -> Option<LenientDeliverSm> {
    let mut at = 0;
    let c_string = |at: &mut usize| -> Option<()> {
        let end = body.get(*at..)?.iter().position(|&b| b == 0)?;
        *at += end + 1;
        Some(())
    };
    let octet = |at: &mut usize| -> Option<u8> {
        let b = *body.get(*at)?;
        *at += 1;
        Some(b)
    };
    c_string(&mut at)?; // service_type
    at += 2; // source TON, NPI
    c_string(&mut at)?;
    at += 2; // destination TON, NPI
    c_string(&mut at)?;
    let esm_class = octet(&mut at)?;
    at += 2; // protocol_id, priority_flag
    c_string(&mut at)?; // schedule_delivery_time
    c_string(&mut at)?; // validity_period
    at += 4; // registered_delivery, replace_if_present_flag, data_coding, sm_default_msg_id
    let length = usize::from(octet(&mut at)?);
    let short_message = body.get(at..at + length)?.to_vec();
    at += length;
    let mut pdu = LenientDeliverSm { esm_class, short_message, ..Default::default() };
    while at < body.len() {
        let tag = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        let length = usize::from(u16::from_be_bytes([*body.get(at + 2)?, *body.get(at + 3)?]));
        let value = body.get(at + 4..at + 4 + length)?;
        at += 4 + length;
        match tag {
            0x001E => {
                let id = value.split(|&b| b == 0).next().unwrap_or_default();
                pdu.receipted_message_id = Some(readable_id(id)?);
            }
            0x0427 => pdu.message_state = value.first().copied(),
            0x0423 if value.len() == 3 => {
                pdu.network_error = Some(NetworkError { network_type: value[0], code: u16::from_be_bytes([value[1], value[2]]) })
            }
            0x0424 => pdu.message_payload = Some(value.to_vec()),
            _ => {}
        }
    }
    Some(pdu)
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let length = word(src, 0) as usize;
        if length < HEADER {
            return Err(DecodeError::MinLength { actual: length, min: HEADER });
        }
        if length > self.max_length {
            return Err(DecodeError::MaxLength { actual: length, max: self.max_length });
        }
        if src.len() < length {
            src.reserve(length - src.len());
            return Ok(None);
        }
        let mut frame = src.split_to(length);
        let (command_id, status, sequence) = (word(&frame, 4), CommandStatus::from(word(&frame, 8)), word(&frame, 12));
        if command_id == SUBMIT_SM_RESP {
            if let Some(message_id) = long_submit_sm_resp(&frame[HEADER..]) {
                return Ok(Some(Frame::LongSubmitSmResp { sequence, status, message_id }));
            }
        }
        let kept = (command_id == DELIVER_SM).then(|| frame.clone());
        // A fresh codec per frame: it is handed exactly one whole PDU, so no state carries over.
        match CommandCodec::new().without_max_length().decode(&mut frame) {
            Ok(Some(command)) => Ok(Some(Frame::Command(command))),
            Ok(None) => Err(DecodeError::MinLength { actual: length, min: HEADER }),
            Err(DecodeError::Io(e)) => Err(DecodeError::Io(e)),
            Err(error) => {
                if let Some(pdu) = kept.as_deref().and_then(|f| lenient_deliver_sm(&f[HEADER..])) {
                    return Ok(Some(Frame::LenientDeliverSm { sequence, pdu }));
                }
                let error = error.to_string();
                Ok(Some(Frame::Undecodable { command_id, sequence, status, error }))
            }
        }
    }
}

impl Encoder<Command> for FrameCodec {
    type Error = EncodeError;

    fn encode(&mut self, command: Command, dst: &mut BytesMut) -> Result<(), EncodeError> {
        CommandCodec::new().encode(command, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit_sm_resp(id: &[u8]) -> BytesMut {
        let mut pdu = BytesMut::new();
        pdu.extend_from_slice(&((HEADER + id.len() + 1) as u32).to_be_bytes());
        pdu.extend_from_slice(&SUBMIT_SM_RESP.to_be_bytes());
        pdu.extend_from_slice(&0u32.to_be_bytes());
        pdu.extend_from_slice(&7u32.to_be_bytes());
        pdu.extend_from_slice(id);
        pdu.extend_from_slice(&[0]);
        pdu
    }

    #[test]
    fn an_over_long_message_id_is_read_and_a_short_one_left_to_rusmpp() {
        let mut codec = FrameCodec::new(64 * 1024);
        let long = "A".repeat(65);
        let mut src = submit_sm_resp(long.as_bytes());
        match codec.decode(&mut src).unwrap() {
            Some(Frame::LongSubmitSmResp { sequence: 7, status: CommandStatus::EsmeRok, message_id }) => assert_eq!(message_id, long),
            other => panic!("{other:?}"),
        }
        assert!(src.is_empty());
        let mut src = submit_sm_resp(b"1A2B");
        assert!(matches!(codec.decode(&mut src).unwrap(), Some(Frame::Command(_))));
    }

    #[test]
    fn garbage_in_place_of_an_id_is_undecodable_and_the_stream_goes_on() {
        let mut codec = FrameCodec::new(64 * 1024);
        let mut src = submit_sm_resp(&[0x01; 70]);
        src.extend_from_slice(&submit_sm_resp("9".repeat(MAX_MESSAGE_ID + 1).as_bytes()));
        src.extend_from_slice(&submit_sm_resp(b"77"));
        for _ in 0..2 {
            assert!(matches!(codec.decode(&mut src).unwrap(), Some(Frame::Undecodable { command_id: SUBMIT_SM_RESP, sequence: 7, .. })));
        }
        assert!(matches!(codec.decode(&mut src).unwrap(), Some(Frame::Command(_))), "framing kept");
        assert!(src.is_empty());
    }

    #[test]
    fn a_receipt_naming_an_over_long_id_is_read_by_hand() {
        let id = "B".repeat(70);
        let mut body = Vec::new();
        body.extend_from_slice(b"\0\x01\x01447700900123\0\x05\x00Acme\0\x04\x00\x00\0\0\x00\x00\x00\x00");
        let text = b"id:1 stat:DELIVRD";
        body.push(text.len() as u8);
        body.extend_from_slice(text);
        body.extend_from_slice(&[0x00, 0x1E, 0, 71]);
        body.extend_from_slice(id.as_bytes());
        body.push(0);
        body.extend_from_slice(&[0x04, 0x27, 0, 1, 2]);
        let mut src = BytesMut::new();
        src.extend_from_slice(&((HEADER + body.len()) as u32).to_be_bytes());
        src.extend_from_slice(&DELIVER_SM.to_be_bytes());
        src.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9]);
        src.extend_from_slice(&body);
        match FrameCodec::new(64 * 1024).decode(&mut src).unwrap() {
            Some(Frame::LenientDeliverSm { sequence: 9, pdu }) => {
                assert_eq!(pdu.esm_class, 0x04);
                assert_eq!(pdu.short_message, text);
                assert_eq!(pdu.receipted_message_id, Some(id));
                assert_eq!(pdu.message_state, Some(2));
            }
            other => panic!("{other:?}"),
        }
    }
}
