//! What the SMSC sends us: responses matched to our requests, its own requests answered, and
//! receipts handed to the tracker and answered only once they are on disk.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusmpp::pdus::{DataSmResp, DeliverSmResp};
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Answer, CloseReason, Inner, MAX_QUEUED_REPLIES, lock};
use crate::smpp::codec::Frame;
use crate::smpp::receipt::{IdRelation, Receipt, ReceiptError, ReceiptFields};
use crate::telemetry;

/// A delivery receipt read off a session, for whoever tracks messages.
///
/// The SMSC forgets a receipt once we answer its deliver_sm, so the answer waits for
/// [`ReceiptEvent::recorded`]: whoever takes the event says when the receipt is on disk.
#[derive(Debug)]
pub struct ReceiptEvent {
    pub carrier: Arc<str>,
    pub receipt: Result<Receipt, ReceiptError>,
    /// The carrier's `receipt_id` setting.
    pub id_relation: IdRelation,
    recorded: Option<oneshot::Sender<bool>>,
}

impl ReceiptEvent {
    /// Answers the SMSC: ESME_ROK once `durable` (the receipt is on disk, or there was nothing
    /// worth keeping), else ESME_RX_T_APPN so that it sends the receipt again later. An event
    /// dropped unanswered counts as not durable.
    pub fn recorded(&mut self, durable: bool) {
        if let Some(answer) = self.recorded.take() {
            let _ = answer.send(durable);
        }
    }
}

/// A deliver_sm/data_sm answered once its receipt is recorded.
pub(super) struct AwaitedAnswer {
    sequence: u32,
    response: Pdu,
    recorded: oneshot::Receiver<bool>,
}

pub type ReceiptSender = mpsc::Sender<ReceiptEvent>;

impl Inner {
    fn reply(&self, sequence: u32, status: CommandStatus, pdu: Pdu) {
        if self.queued_replies.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED_REPLIES {
            tracing::warn!(carrier = %self.carrier, queued = MAX_QUEUED_REPLIES, "the SMSC sends requests but reads none of our answers; closing");
            self.close(CloseReason::NotReading);
            return;
        }
        // Fails only once the writer is gone, i.e. the session is closing anyway.
        let _ = self.replies.send(Command::new(status, sequence, pdu));
    }

    /// Hands a response to the request waiting on it.
    fn answer(&self, sequence: u32, answer: Answer) {
        match lock(&self.pending).remove(&sequence) {
            Some((_, waiter)) => {
                let _ = waiter.send(answer);
            }
            None => tracing::debug!(
                carrier = %self.carrier, sequence, command_id = ?answer.id,
                "response to no pending request (late after a timeout?)"
            ),
        }
    }

    /// Handles one PDU from the SMSC. Returns a reason when the session must end.
    pub(super) async fn handle(&self, frame: Frame, receipts: &ReceiptSender) -> Option<CloseReason> {
        let command = match frame {
            Frame::Command(command) => command,
            Frame::LongSubmitSmResp { sequence, status, message_id } => {
                tracing::warn!(carrier = %self.carrier, length = message_id.len(), "submit_sm_resp with a message_id longer than SMPP allows; kept as sent");
                metrics::counter!(telemetry::LONG_MESSAGE_IDS_TOTAL, "carrier" => self.carrier.to_string()).increment(1);
                let answer = Answer { id: CommandId::SubmitSmResp, status, message_id, undecodable: false };
                self.answer(sequence, answer);
                return None;
            }
            Frame::LenientDeliverSm { sequence, pdu } => {
                let response = DeliverSmResp::default().into();
                self.deliver(sequence, ReceiptFields::from(&pdu), response, receipts).await;
                return None;
            }
            Frame::Undecodable { command_id, sequence, status, error } => {
                if command_id & 0x8000_0000 != 0 {
                    let answer = Answer { id: CommandId::from(command_id), status, message_id: String::new(), undecodable: true };
                    self.answer(sequence, answer);
                }
                return Some(CloseReason::Malformed(error));
            }
        };
        let sequence = command.sequence_number();
        if command.id().is_response() {
            // Includes generic_nack, which answers whichever request it names.
            self.answer(sequence, Answer::from(&command));
            return None;
        }
        match command.pdu() {
            Some(Pdu::EnquireLink) => self.reply(sequence, CommandStatus::EsmeRok, Pdu::EnquireLinkResp),
            Some(Pdu::Unbind) => {
                self.reply(sequence, CommandStatus::EsmeRok, Pdu::UnbindResp);
                return Some(CloseReason::PeerUnbind);
            }
            Some(Pdu::DeliverSm(pdu)) => {
                self.deliver(sequence, ReceiptFields::from(pdu), DeliverSmResp::default().into(), receipts).await;
            }
            Some(Pdu::DataSm(pdu)) => {
                self.deliver(sequence, ReceiptFields::from(pdu), DataSmResp::default().into(), receipts).await;
            }
            // No response exists for these (§4.12.1, §4.1.7); we are already bound.
            Some(Pdu::AlertNotification(_) | Pdu::Outbind(_)) => {
                tracing::debug!(carrier = %self.carrier, command_id = ?command.id(), "ignored");
            }
            // rusmpp leaves the PDU empty when the body does not fit the command (a body on an
            // enquire_link, none on a bind ...).
            None => {
                tracing::warn!(carrier = %self.carrier, command_id = ?command.id(), "request with an invalid body; answered generic_nack");
                self.reply(sequence, CommandStatus::EsmeRinvcmdlen, Pdu::GenericNack);
            }
            Some(_) => {
                tracing::warn!(carrier = %self.carrier, command_id = ?command.id(), "unsupported request from SMSC; answered generic_nack");
                self.reply(sequence, CommandStatus::EsmeRinvcmdid, Pdu::GenericNack);
            }
        }
        None
    }

    /// Hands a receipt over and answers the SMSC once it is recorded; anything else at once.
    async fn deliver(&self, sequence: u32, fields: ReceiptFields<'_>, response: Pdu, receipts: &ReceiptSender) {
        if !fields.is_receipt_as(&self.receipt_format) {
            // Mobile-originated text; otpgate does not take inbound SMS. Its content is the
            // subscriber's business and is not logged.
            if let Some(count) = self.mobile_originated.due() {
                tracing::info!(carrier = %self.carrier, count, "mobile-originated SMS ignored (counted; one line per 10 s at most)");
            }
            metrics::counter!(telemetry::MOBILE_ORIGINATED_TOTAL, "carrier" => self.carrier.to_string()).increment(1);
            self.reply(sequence, CommandStatus::EsmeRok, response);
            return;
        }
        let receipt = fields.parse_as(&self.receipt_format);
        if let Err(e) = &receipt {
            tracing::warn!(carrier = %self.carrier, error = %e, "unreadable delivery receipt");
        }
        let (recorded, awaited) = oneshot::channel();
        let event = ReceiptEvent { carrier: self.carrier.clone(), receipt, id_relation: self.receipt_ids, recorded: Some(recorded) };
        match receipts.try_send(event) {
            Ok(()) => {}
            // The store is a full queue behind: the SMSC is asked to send this one again later
            // (answered in turn, ESME_RX_T_APPN). Waiting here instead stopped this session's
            // reading, and the submit_sm_resps behind the receipt timed out (measured on
            // PostgreSQL: sessions reset, submits failed as unconfirmed).
            Err(mpsc::error::TrySendError::Full(mut event)) => {
                metrics::counter!(telemetry::RECEIPTS_DEFERRED_TOTAL, "carrier" => self.carrier.to_string()).increment(1);
                event.recorded(false);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => tracing::debug!(carrier = %self.carrier, "receipt consumer gone"),
        }
        let _ = self.awaited.send(AwaitedAnswer { sequence, response, recorded: awaited });
    }
}

/// A log line that may repeat thousands of times a second, written at most once per `interval`
/// with the number of occurrences it stands for (20,000 mobile-originated SMS once wrote 20,000
/// lines in 2 s).
pub(super) struct LogEvery {
    interval: Duration,
    /// When the last line went out, and the occurrences since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogEvery {
    pub(super) fn new(interval: Duration) -> LogEvery {
        LogEvery { interval, state: Mutex::new((None, 0)) }
    }

    /// Counts one occurrence; `Some(count)` when a line is due now, for that many.
    fn due(&self) -> Option<u64> {
        let mut state = lock(&self.state);
        state.1 += 1;
        let due = state.0.is_none_or(|last| last.elapsed() >= self.interval);
        if !due {
            return None;
        }
        let count = state.1;
        *state = (Some(Instant::now()), 0);
        Some(count)
    }
}

/// Answers each receipt's deliver_sm once it is recorded, in arrival order (the tracker records
/// them in that order). A receipt that could not be recorded gets ESME_RX_T_APPN: the SMSC keeps
/// it and tries again, instead of forgetting a receipt we never stored.
pub(super) async fn answer_when_recorded(mut awaited: mpsc::UnboundedReceiver<AwaitedAnswer>, inner: Arc<Inner>) {
    loop {
        let next = tokio::select! {
            _ = inner.closed.cancelled() => break,
            next = awaited.recv() => next,
        };
        let Some(AwaitedAnswer { sequence, response, recorded }) = next else { break };
        let durable = tokio::select! {
            // Closed unanswered: the SMSC resends what it never saw answered.
            _ = inner.closed.cancelled() => break,
            durable = recorded => durable.unwrap_or(false),
        };
        let status = if durable { CommandStatus::EsmeRok } else { CommandStatus::EsmeRxTAppn };
        inner.reply(sequence, status, response);
    }
}
