//! The bind: the one request answered before the session's tasks exist.

use futures::{SinkExt, StreamExt};
use rusmpp::pdus::{BindReceiver, BindTransceiver, BindTransmitter};
use rusmpp::values::{InterfaceVersion, Npi, Ton};
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use tokio::time::{Instant, timeout_at};

use super::{BindMode, FramedSmpp, SessionError, SessionSettings};
use crate::smpp::codec::Frame;
use crate::smpp::message::c_octet;
use crate::tls::client::HandshakeFailure;
use rusmpp::tokio_codec::DecodeError;

/// Why reading the bind's answer failed. Over TLS 1.3 the server judges our client certificate
/// after our side of the handshake is done, so its refusal arrives here, as a TLS alert.
fn read_failure(e: DecodeError, settings: &SessionSettings) -> SessionError {
    if let DecodeError::Io(io) = &e {
        let failure = match HandshakeFailure::of_tls(io) {
            Some(failure) => Some(failure),
            None if settings.tls.is_some()
                && matches!(io.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset) =>
            {
                Some(HandshakeFailure::closed_after())
            }
            None => None,
        };
        if let Some(failure) = failure {
            return SessionError::Tls { endpoint: settings.endpoint.clone(), failure };
        }
    }
    SessionError::Protocol(e.to_string())
}

/// Sends the bind and waits for its answer, within `response_timeout`.
pub(super) async fn bind(framed: &mut FramedSmpp, settings: &SessionSettings) -> Result<(), SessionError> {
    let system_id = c_octet(&settings.system_id);
    let password = c_octet(&settings.password);
    let system_type = c_octet(&settings.system_type);
    let version = InterfaceVersion::Smpp3_4;
    let pdu: Pdu = match settings.mode {
        BindMode::Transceiver => {
            BindTransceiver::new(system_id, password, system_type, version, Ton::Unknown, Npi::Unknown, Default::default()).into()
        }
        BindMode::Transmitter => {
            BindTransmitter::new(system_id, password, system_type, version, Ton::Unknown, Npi::Unknown, Default::default()).into()
        }
        BindMode::Receiver => {
            BindReceiver::new(system_id, password, system_type, version, Ton::Unknown, Npi::Unknown, Default::default()).into()
        }
    };
    const BIND_SEQUENCE: u32 = 1;
    let deadline = Instant::now() + settings.response_timeout;
    let sent = timeout_at(deadline, framed.send(Command::new(CommandStatus::EsmeRok, BIND_SEQUENCE, pdu))).await;
    match sent {
        Err(_) => return Err(SessionError::BindTimeout(settings.response_timeout)),
        Ok(Err(e)) => return Err(SessionError::Protocol(e.to_string())),
        Ok(Ok(())) => {}
    }
    loop {
        let command = match timeout_at(deadline, framed.next()).await {
            Err(_) => return Err(SessionError::BindTimeout(settings.response_timeout)),
            Ok(None) => return Err(SessionError::ClosedDuringBind),
            Ok(Some(Err(e))) => return Err(read_failure(e, settings)),
            Ok(Some(Ok(Frame::Command(command)))) => command,
            Ok(Some(Ok(Frame::Undecodable { error, .. }))) => return Err(SessionError::Protocol(error)),
            // Nothing else is due before the bind is answered; a real SMSC sends none of it.
            Ok(Some(Ok(_))) => continue,
        };
        if command.sequence_number() == BIND_SEQUENCE && command.id().is_response() {
            return match command.status() {
                CommandStatus::EsmeRok if command.id() != CommandId::GenericNack => Ok(()),
                CommandStatus::EsmeRok => Err(SessionError::BindRefused { status: CommandStatus::EsmeRinvcmdid }),
                status => Err(SessionError::BindRefused { status }),
            };
        }
        if command.id() == CommandId::EnquireLink {
            let resp = Command::new(CommandStatus::EsmeRok, command.sequence_number(), Pdu::EnquireLinkResp);
            framed.send(resp).await.map_err(|e| SessionError::Protocol(e.to_string()))?;
        }
    }
}
