//! One simulated SMSC connection: the bind, submits answered (or refused, throttled, dropped,
//! garbled as the fault switches say), receipts sent, and the accept loop that starts each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rusmpp::pdus::{BindReceiverResp, BindTransceiverResp, BindTransmitterResp, DeliverSm, SubmitSm, SubmitSmResp};
use rusmpp::tlvs::MessageDeliveryRequestTlvValue;
use rusmpp::tokio_codec::CommandCodec;
use rusmpp::types::OctetString;
use rusmpp::values::{EsmClass, MessageState};
use rusmpp::{Command, CommandStatus, Pdu};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::smpp::message::c_octet;

use super::{Behaviour, BindAttempt, Outgoing, ReceivedSms, State, lock, parts};

pub(super) async fn accept_loop(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let token = lock(&state.connections).child_token();
                match state.config.tls.clone() {
                    None => drop(tokio::spawn(Connection::serve(stream, state.clone(), token))),
                    Some(tls) => drop(tokio::spawn(serve_tls(tls, stream, state.clone(), token))),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "smsc-sim accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The TLS handshake first (bounded: a client that says nothing is dropped), then SMPP.
async fn serve_tls(tls: crate::tls::ServerTls, stream: TcpStream, state: Arc<State>, token: CancellationToken) {
    match tokio::time::timeout(Duration::from_secs(10), tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => {
            let version = stream.get_ref().1.protocol_version().map(|v| format!("{v:?}"));
            state.update(|s| s.tls_protocol = version);
            Connection::serve(stream, state, token).await
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "smsc-sim: TLS handshake failed");
            state.update(|s| s.tls_failures += 1);
        }
        Err(_) => {
            tracing::warn!("smsc-sim: no TLS handshake within 10s");
            state.update(|s| s.tls_failures += 1);
        }
    }
}

struct Connection {
    id: u64,
    state: Arc<State>,
    bound: Option<&'static str>,
    /// The system_id it bound as (tells apart the ESMEs sharing one simulator).
    system_id: String,
    next_sequence: AtomicU32,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    /// deliver_sm sent and not yet answered, by sequence number.
    unanswered: std::collections::HashMap<u32, Pdu>,
}

enum Event {
    Incoming(Option<Result<Command, rusmpp::tokio_codec::DecodeError>>),
    Outgoing(Outgoing),
    Stop,
}

impl Connection {
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S, state: Arc<State>, token: CancellationToken) {
        let id = state.next_connection.fetch_add(1, Ordering::Relaxed);
        state.update(|s| s.connections += 1);
        let (outgoing, mut outgoing_rx) = mpsc::unbounded_channel();
        let mut connection = Connection {
            id,
            state: state.clone(),
            bound: None,
            system_id: String::new(),
            next_sequence: AtomicU32::new(1),
            outgoing,
            unanswered: std::collections::HashMap::new(),
        };
        let mut framed = Framed::new(stream, CommandCodec::new().with_max_length(64 * 1024));
        loop {
            let event = tokio::select! {
                _ = token.cancelled() => Event::Stop,
                item = framed.next() => Event::Incoming(item),
                Some(out) = outgoing_rx.recv() => Event::Outgoing(out),
            };
            let keep_going = match event {
                Event::Stop | Event::Incoming(None) => false,
                Event::Incoming(Some(Err(e))) => {
                    tracing::warn!(error = %e, "smsc-sim: bad PDU from client");
                    false
                }
                Event::Incoming(Some(Ok(command))) => connection.handle(command),
                Event::Outgoing(out) => write(&mut framed, out, &connection.next_sequence, &mut connection.unanswered).await,
            };
            if !keep_going {
                break;
            }
        }
        // Nothing new comes here from now on; flush whatever was answered last (unbind_resp).
        // Receipts still queued for this connection go back to the SMSC's queue, as a real SMSC
        // keeps them, whether or not this connection can still be written to.
        state.remove_receiver(id);
        let mut writable = true;
        while let Ok(out) = outgoing_rx.try_recv() {
            match out {
                Outgoing::Request(pdu) if matches!(pdu, Pdu::DeliverSm(_)) => state.deliver(pdu),
                out if writable => writable = write(&mut framed, out, &connection.next_sequence, &mut connection.unanswered).await,
                _ => {}
            }
        }
        // Receipts never answered are kept for the next bind, as a real SMSC keeps them.
        for (_, pdu) in connection.unanswered.drain() {
            state.deliver(pdu);
        }
    }

    /// Handles one PDU; returns false to close the connection.
    fn handle(&mut self, command: Command) -> bool {
        let behaviour = self.state.behaviour();
        if behaviour == Behaviour::Hang {
            if let Some(Pdu::SubmitSm(_)) = command.pdu() {
                self.state.update(|s| {
                    s.outstanding += 1;
                    s.max_outstanding = s.max_outstanding.max(s.outstanding);
                });
            }
            return true;
        }
        let sequence = command.sequence_number();
        let outgoing = self.outgoing.clone();
        let respond = |status: CommandStatus, pdu: Pdu| {
            let _ = outgoing.send(Outgoing::Response(Command::new(status, sequence, pdu)));
        };
        match command.pdu() {
            Some(Pdu::BindTransceiver(b)) => {
                let status = self.bind("transceiver", b.system_id.as_str(), b.password.as_str(), behaviour);
                respond(status, BindTransceiverResp::new(c_octet("otpgate-sim"), None).into());
                self.receive_after_bind(status);
            }
            Some(Pdu::BindTransmitter(b)) => {
                let status = self.bind("transmitter", b.system_id.as_str(), b.password.as_str(), behaviour);
                respond(status, BindTransmitterResp::new(c_octet("otpgate-sim"), None).into());
                self.receive_after_bind(status);
            }
            Some(Pdu::BindReceiver(b)) => {
                let status = self.bind("receiver", b.system_id.as_str(), b.password.as_str(), behaviour);
                respond(status, BindReceiverResp::new(c_octet("otpgate-sim"), None).into());
                self.receive_after_bind(status);
            }
            Some(Pdu::SubmitSm(sm)) => match self.bound {
                Some("transmitter" | "transceiver") => {
                    let seen = self.state.submits_seen.fetch_add(1, Ordering::SeqCst) + 1;
                    let drop_every = self.state.drop_every.load(Ordering::SeqCst);
                    if drop_every > 0 && seen % drop_every == 0 {
                        self.state.update(|s| s.dropped += 1);
                        return false;
                    }
                    self.submit(seen, sequence, sm);
                }
                _ => respond(CommandStatus::EsmeRinvbndsts, Pdu::GenericNack),
            },
            Some(Pdu::EnquireLink) => {
                self.state.update(|s| s.enquire_links += 1);
                respond(CommandStatus::EsmeRok, Pdu::EnquireLinkResp);
            }
            Some(Pdu::Unbind) => {
                self.state.update(|s| s.unbinds += 1);
                respond(CommandStatus::EsmeRok, Pdu::UnbindResp);
                return false;
            }
            Some(Pdu::DeliverSmResp(_)) => self.receipt_answered(sequence, command.status()),
            Some(Pdu::GenericNack) => self.state.update(|s| s.generic_nacks += 1),
            Some(Pdu::EnquireLinkResp | Pdu::UnbindResp) => {}
            _ => respond(CommandStatus::EsmeRinvcmdid, Pdu::GenericNack),
        }
        true
    }

    fn receipt_answered(&mut self, sequence: u32, status: CommandStatus) {
        let Some(pdu) = self.unanswered.remove(&sequence) else {
            self.state.update(|s| s.deliver_sm_resps += 1);
            return;
        };
        if status == CommandStatus::EsmeRok {
            let id = receipted_id(&pdu);
            self.state.update(|s| {
                s.deliver_sm_resps += 1;
                s.acked_receipts.extend(id);
            });
            return;
        }
        self.state.update(|s| {
            s.deliver_sm_resps += 1;
            s.receipts_refused += 1;
        });
        let state = self.state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            state.deliver(pdu);
        });
    }

    /// A session bound to receive gets receipts (those kept for it first) only after its
    /// bind_resp: a real SMSC sends nothing to a session before it is bound.
    fn receive_after_bind(&self, status: CommandStatus) {
        if status == CommandStatus::EsmeRok && self.bound != Some("transmitter") {
            self.state.add_receiver(self.id, self.outgoing.clone());
        }
    }

    fn bind(&mut self, mode: &'static str, system_id: &str, password: &str, behaviour: Behaviour) -> CommandStatus {
        let config = &self.state.config;
        let status = if self.bound.is_some() {
            CommandStatus::EsmeRalybnd
        } else if behaviour == Behaviour::RefuseBinds {
            CommandStatus::EsmeRbindfail
        } else if config.system_id.as_deref().is_some_and(|id| id != system_id) {
            CommandStatus::EsmeRinvsysid
        } else if config.password.as_deref().is_some_and(|p| p != password) {
            CommandStatus::EsmeRinvpaswd
        } else {
            CommandStatus::EsmeRok
        };
        let accepted = status == CommandStatus::EsmeRok;
        if accepted {
            self.bound = Some(mode);
            self.system_id = system_id.to_string();
        }
        let attempt = BindAttempt { at: Instant::now(), system_id: system_id.to_string(), mode, accepted };
        self.state.update(|s| s.binds.push(attempt));
        status
    }

    fn over_rate(&self) -> bool {
        let tps = self.state.max_tps.load(Ordering::SeqCst);
        if tps == 0 {
            return false;
        }
        let mut bucket = lock(&self.state.tps_bucket);
        let now = Instant::now();
        let refilled = (bucket.0 + now.duration_since(bucket.1).as_secs_f64() * tps as f64).min(tps as f64);
        *bucket = if refilled >= 1.0 { (refilled - 1.0, now) } else { (refilled, now) };
        refilled < 1.0
    }

    fn submit(&self, seen: u64, sequence: u32, sm: &SubmitSm) {
        let (part, octets, header) = parts::read(sm);
        let octets = match self.state.config.gsm7_packed && u8::from(sm.data_coding) == 0 {
            true => crate::sms::unpack(&octets, ((7 - header * 8 % 7) % 7) as u8),
            false => octets,
        };
        let mut forced = self.state.submit_status.load(Ordering::SeqCst);
        let every = self.state.status_every.load(Ordering::SeqCst).max(1);
        let failed_part = part.and_then(|p| lock(&self.state.fail_part).filter(|(seq, _)| *seq == p.seq));
        let vendor_tlvs: Vec<(u16, Vec<u8>)> = sm
            .tlvs()
            .iter()
            .filter_map(|tlv| {
                let tag = u16::from(tlv.tag());
                let value = tlv.value()?;
                (0x1400..=0x3FFF).contains(&tag).then(|| {
                    let mut bytes = vec![0; rusmpp::encode::Length::length(value)];
                    rusmpp::encode::Encode::encode(value, &mut bytes);
                    (tag, bytes)
                })
            })
            .collect();
        let missing_tlv =
            self.state.config.require_tlvs.as_ref().filter(|(tags, _)| tags.iter().any(|t| !vendor_tlvs.iter().any(|(tag, _)| tag == t)));
        // Message-type bits (§5.2.12) have no place in a submit_sm: a strict SMSC refuses it.
        if u8::from(sm.esm_class) & 0x3C != 0 {
            forced = u32::from(CommandStatus::EsmeRinvesmclass);
        } else if let Some((_, status)) = failed_part {
            forced = u32::from(status);
        } else if let Some((_, status)) = missing_tlv {
            forced = *status;
        } else if self.over_rate() {
            forced = u32::from(CommandStatus::EsmeRthrottled);
        } else if seen % every != 0 {
            forced = 0;
        }
        if forced != 0 {
            self.state.update(|s| s.refused += 1);
            let response = Command::new(CommandStatus::from(forced), sequence, SubmitSmResp::default());
            let _ = self.outgoing.send(Outgoing::Response(response));
            return;
        }
        let number = match self.state.config.random_ids {
            true => rand::random::<u64>() >> 1,
            false => self.state.next_message_id.fetch_add(1, Ordering::Relaxed),
        };
        // Hex in submit_sm_resp and the receipt TLV, decimal in the receipt text: the mismatch
        // real carriers produce, so matching is always exercised.
        let message_id = format!("{number:X}");
        let received = ReceivedSms {
            at: Instant::now(),
            carrier: self.state.config.name.clone(),
            system_id: self.system_id.clone(),
            message_id: message_id.clone(),
            from: sm.source_addr.as_str().to_string(),
            to: sm.destination_addr.as_str().to_string(),
            text: crate::sms::decode(u8::from(sm.data_coding), &octets),
            data_coding: u8::from(sm.data_coding),
            esm_class: u8::from(sm.esm_class),
            validity_period: sm.validity_period.as_str().to_string(),
            part,
            vendor_tlvs,
        };
        // A long message is printed once, whole, when its last part is in.
        let joined = part.and_then(|p| lock(&self.state.joiner).add(&received.to, p, received.text.clone(), message_id.clone()));
        match (&joined, part) {
            (Some(joined), _) => {
                let whole =
                    ReceivedSms { text: joined.text.clone(), message_id: joined.message_ids.join(","), part: None, ..received.clone() };
                let _ = self.state.printed.send(whole);
            }
            (None, None) => drop(self.state.printed.send(received.clone())),
            (None, Some(_)) => {}
        }
        self.state.update(|s| {
            s.outstanding += 1;
            s.max_outstanding = s.max_outstanding.max(s.outstanding);
            s.submits.push(received);
            s.joined.extend(joined);
        });
        let wants_receipt = u8::from(sm.registered_delivery) & 0x03 != 0;
        let state = self.state.clone();
        let outgoing = self.outgoing.clone();
        if self.state.garbled_responses.load(Ordering::SeqCst) {
            let mut raw = Vec::with_capacity(87);
            raw.extend_from_slice(&87u32.to_be_bytes());
            raw.extend_from_slice(&0x8000_0004u32.to_be_bytes());
            raw.extend_from_slice(&0u32.to_be_bytes());
            raw.extend_from_slice(&sequence.to_be_bytes());
            raw.extend_from_slice(&[0x01; 70]);
            raw.push(0);
            let _ = self.outgoing.send(Outgoing::Raw(Bytes::from(raw)));
            return;
        }
        let response = Command::new(CommandStatus::EsmeRok, sequence, SubmitSmResp::new(c_octet(&message_id), Vec::new()));
        let receipt = (wants_receipt && state.config.receipts).then(|| receipt(&message_id, number, sm, state.config.receipt_stat));
        if let Some(p) = part.filter(|_| state.reverse_parts.load(Ordering::SeqCst)) {
            // Held until the message's last part is in, then answered last part first.
            let key = (sm.destination_addr.as_str().to_string(), p.reference);
            let mut held = lock(&state.held_parts);
            let answers = held.entry(key.clone()).or_default();
            answers.push((response, receipt));
            if answers.len() < usize::from(p.total) {
                return;
            }
            let answers = held.remove(&key).unwrap_or_default();
            drop(held);
            tokio::spawn(async move {
                let mut receipts = Vec::new();
                for (response, receipt) in answers.into_iter().rev() {
                    state.update(|s| s.outstanding = s.outstanding.saturating_sub(1));
                    let _ = outgoing.send(Outgoing::Response(response));
                    receipts.extend(receipt);
                }
                tokio::time::sleep(state.config.receipt_delay).await;
                for receipt in receipts {
                    state.deliver(receipt);
                }
            });
            return;
        }
        tokio::spawn(async move {
            let receipt_first = state.config.receipt_first;
            if receipt_first {
                if let Some(receipt) = receipt.clone() {
                    state.deliver(receipt);
                }
            }
            if !state.config.response_delay.is_zero() {
                tokio::time::sleep(state.config.response_delay).await;
            }
            state.update(|s| s.outstanding = s.outstanding.saturating_sub(1));
            let _ = outgoing.send(Outgoing::Response(response));
            if let (false, Some(receipt)) = (receipt_first, receipt) {
                tokio::time::sleep(state.config.receipt_delay).await;
                if state.duplicate_receipts.load(Ordering::SeqCst) {
                    state.deliver(receipt.clone());
                }
                state.deliver(receipt);
            }
        });
    }
}

/// A receipt in the common real-world shape: TLVs plus Appendix B text.
fn receipt(message_id: &str, number: u64, sm: &SubmitSm, stat: &str) -> Pdu {
    let (state, delivered, err) = match stat {
        "UNDELIV" => (MessageState::Undeliverable, 0, "001"),
        "REJECTD" => (MessageState::Rejected, 0, "002"),
        "EXPIRED" => (MessageState::Expired, 0, "003"),
        _ => (MessageState::Delivered, 1, "000"),
    };
    let text =
        format!("id:{number:010} sub:001 dlvrd:{delivered:03} submit date:2601010000 done date:2601010000 stat:{stat} err:{err} text:");
    let mut pdu = DeliverSm::builder()
        .source_addr_ton(sm.dest_addr_ton)
        .source_addr_npi(sm.dest_addr_npi)
        .source_addr(sm.destination_addr.clone())
        .dest_addr_ton(sm.source_addr_ton)
        .dest_addr_npi(sm.source_addr_npi)
        .destination_addr(sm.source_addr.clone())
        .esm_class(EsmClass::from(0x04))
        .short_message(OctetString::from_vec(text.into_bytes()).unwrap_or_default())
        .build();
    pdu.push_tlv(MessageDeliveryRequestTlvValue::ReceiptedMessageId(c_octet(message_id)));
    pdu.push_tlv(MessageDeliveryRequestTlvValue::MessageState(state));
    Pdu::DeliverSm(pdu)
}

/// The receipted_message_id of a receipt we sent.
fn receipted_id(pdu: &Pdu) -> Option<String> {
    let Pdu::DeliverSm(sm) = pdu else { return None };
    crate::smpp::receipt::ReceiptFields::from(sm).receipted_message_id
}

async fn write(
    framed: &mut Framed<impl AsyncRead + AsyncWrite + Unpin, CommandCodec>,
    out: Outgoing,
    sequence: &AtomicU32,
    unanswered: &mut std::collections::HashMap<u32, Pdu>,
) -> bool {
    let result = match out {
        Outgoing::Response(command) => framed.send(command).await.map_err(|e| e.to_string()),
        Outgoing::Request(pdu) => {
            let number = sequence.fetch_add(1, Ordering::Relaxed);
            if matches!(pdu, Pdu::DeliverSm(_)) {
                unanswered.insert(number, pdu.clone());
            }
            framed.send(Command::new(CommandStatus::EsmeRok, number, pdu)).await.map_err(|e| e.to_string())
        }
        Outgoing::Raw(bytes) => {
            let stream = framed.get_mut();
            async {
                stream.write_all(&bytes).await?;
                stream.flush().await
            }
            .await
            .map_err(|e| e.to_string())
        }
    };
    result.is_ok()
}
