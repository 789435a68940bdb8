//! What became of one submit_sm, in the classes the dispatcher acts on.
//!
//! SMPP has dozens of command_status values; the rest of otpgate only needs to know whether to keep
//! the message id, wait and retry on the same carrier, try another carrier now, or give up.

use std::fmt;

use rusmpp::CommandStatus;

use super::message::MessageError;

/// The result of submitting one message over one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// The SMSC took the message; receipts will name this id. It may be empty when an SMSC
    /// answers ESME_ROK without a body.
    Accepted { message_id: String },
    /// The carrier is busy (ESME_RTHROTTLED, ESME_RMSGQFUL): retry on the same carrier, slower.
    RetryLater { status: CommandStatus },
    /// This carrier cannot take it now: retry at once elsewhere.
    RetryElsewhere { reason: NotSubmitted },
    /// Retrying will not help.
    Permanent { reason: Permanent },
}

/// Why a submit did not reach a verdict on this carrier. The message was *not* accepted (or, for a
/// response timeout, its fate is unknown), so it must be retried, never dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotSubmitted {
    /// The SMSC answered with a fault that another route may not have (ESME_RSYSERR and friends).
    Smsc(CommandStatus),
    /// The connection dropped while the submit was queued or in flight.
    ConnectionLost,
    /// No submit_sm_resp within `response_timeout`; the session is torn down.
    ResponseTimeout,
    /// The submit_sm_resp could not be read: accepted or not, nobody knows.
    Undecodable,
    /// No session of the carrier is bound.
    NoSession,
    /// This node's term as dispatch leader ended (cluster mode): it may not submit.
    Fenced,
    /// The carrier's circuit breaker is open: it has been failing.
    CircuitOpen,
    /// The carrier had no room (rate cap or window) within the time the message may wait on
    /// one carrier: it spills over to the next.
    Busy,
}

/// Why a message can never be sent as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permanent {
    /// The SMSC refused it for good (bad destination, bad sender, bad TLV ...).
    Smsc(CommandStatus),
    /// It could not be encoded or its validity passed before it was sent.
    Message(MessageError),
}

impl fmt::Display for NotSubmitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotSubmitted::Smsc(status) => write!(f, "SMSC error {}", status_name(*status)),
            NotSubmitted::ConnectionLost => f.write_str("connection lost"),
            NotSubmitted::ResponseTimeout => f.write_str("response timeout"),
            NotSubmitted::Undecodable => f.write_str("unreadable submit_sm_resp"),
            NotSubmitted::NoSession => f.write_str("no bound session"),
            NotSubmitted::Fenced => f.write_str("this node no longer leads the cluster's dispatch"),
            NotSubmitted::CircuitOpen => f.write_str("circuit open"),
            NotSubmitted::Busy => f.write_str("no room on this carrier in time"),
        }
    }
}

impl NotSubmitted {
    /// Whether the submit may have reached the SMSC all the same (it went out and no readable
    /// answer came back): sending it again may put a second SMS on the handset.
    pub fn unconfirmed(&self) -> bool {
        matches!(self, NotSubmitted::ConnectionLost | NotSubmitted::ResponseTimeout | NotSubmitted::Undecodable)
    }
}

impl fmt::Display for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Permanent::Smsc(status) => write!(f, "SMSC refused: {}", status_name(*status)),
            Permanent::Message(e) => write!(f, "{e}"),
        }
    }
}

impl SubmitOutcome {
    /// Classifies a submit_sm_resp (or generic_nack) status; `message_id` is the response's id.
    pub fn from_status(status: CommandStatus, message_id: String) -> SubmitOutcome {
        use CommandStatus::*;
        match status {
            EsmeRok => SubmitOutcome::Accepted { message_id },
            EsmeRthrottled | EsmeRmsgqful => SubmitOutcome::RetryLater { status },
            // SMSC-side faults, bind-state trouble and "temporary application error": another
            // carrier may well take the message (smpp-notes, "command_status").
            EsmeRsyserr | EsmeRsubmitfail | EsmeRunknownerr | EsmeRxTAppn | EsmeRinvbndsts | EsmeRalybnd | EsmeRbindfail
            | EsmeRinvpaswd | EsmeRinvsysid | EsmeRinvsystyp | EsmeRinvcmdlen | EsmeRinvcmdid => {
                SubmitOutcome::RetryElsewhere { reason: NotSubmitted::Smsc(status) }
            }
            _ => SubmitOutcome::Permanent { reason: Permanent::Smsc(status) },
        }
    }

    /// A short, bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            SubmitOutcome::Accepted { .. } => "ok",
            SubmitOutcome::RetryLater { .. } => "retry_later",
            SubmitOutcome::RetryElsewhere { reason } if reason.unconfirmed() => "unconfirmed",
            SubmitOutcome::RetryElsewhere { .. } => "retry_elsewhere",
            SubmitOutcome::Permanent { .. } => "permanent",
        }
    }
}

/// `ESME_RTHROTTLED (0x00000058)`: the name operators search for, and the number carriers quote.
pub fn status_name(status: CommandStatus) -> String {
    let code = u32::from(status);
    match status {
        CommandStatus::Other(_) => format!("0x{code:08X}"),
        known => {
            let debug = format!("{known:?}"); // "EsmeRthrottled"
            let name = debug.strip_prefix("Esme").unwrap_or(&debug).to_uppercase();
            format!("ESME_{name} (0x{code:08X})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_fall_into_the_documented_classes() {
        let class = |code: u32| SubmitOutcome::from_status(CommandStatus::from(code), "x".into());
        assert_eq!(class(0x00), SubmitOutcome::Accepted { message_id: "x".into() });
        for code in [0x58, 0x14] {
            assert_eq!(class(code).label(), "retry_later", "{code:#x}");
        }
        for code in [0x08, 0x45, 0xFF, 0x64] {
            assert_eq!(class(code).label(), "retry_elsewhere", "{code:#x}");
        }
        for code in [0x0B, 0x0A, 0x01, 0x62, 0x61, 0xC4, 0x48, 0x65, 0x1234] {
            assert_eq!(class(code).label(), "permanent", "{code:#x}");
        }
    }

    #[test]
    fn status_names_read_like_the_spec() {
        assert_eq!(status_name(CommandStatus::EsmeRthrottled), "ESME_RTHROTTLED (0x00000058)");
        assert_eq!(status_name(CommandStatus::from(0x400)), "0x00000400");
    }
}
