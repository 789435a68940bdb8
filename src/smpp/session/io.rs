//! The session's socket tasks: the writer (one flush per batch), the reader, and the keepalive
//! that notices an SMSC gone silent while TCP still looks open.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use rusmpp::{Command, Pdu};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use super::inbound::ReceiptSender;
use super::{CloseReason, FramedSmpp, Inner, RequestError, lock};

/// Drains replies (first) and requests into the socket, one flush per batch. A batch that
/// cannot be written within `response_timeout` means the SMSC has stopped reading: close.
pub(super) async fn write_loop(
    mut sink: SplitSink<FramedSmpp, Command>,
    mut outbound: mpsc::Receiver<Command>,
    mut replies: mpsc::UnboundedReceiver<Command>,
    inner: Arc<Inner>,
) {
    const MAX_BATCH: usize = 256;
    let take_reply = |reply: Command| {
        inner.queued_replies.fetch_sub(1, Ordering::AcqRel);
        reply
    };
    // The gate is checked again here, right before the bytes go out: a node stopped between
    // `send_reserved`'s check and this write (SIGSTOP, a long pause) wakes past its term with
    // the submit still queued, and must not write it (tests/cluster.rs caught one in CI).
    let fenced = |command: &Command| command.id() == rusmpp::CommandId::SubmitSm && !inner.gate.allows();
    loop {
        let first = tokio::select! {
            biased;
            reply = replies.recv() => match reply {
                Some(command) => take_reply(command),
                None => break,
            },
            command = outbound.recv() => match command {
                Some(command) => command,
                None => break,
            },
            _ = inner.closed.cancelled() => break,
        };
        let batch = async {
            if fenced(&first) {
                return Ok(Some(CloseReason::Fenced));
            }
            sink.feed(first).await?;
            let mut batched = 1;
            while batched < MAX_BATCH {
                let next = match replies.try_recv() {
                    Ok(command) => take_reply(command),
                    Err(_) => match outbound.try_recv() {
                        Ok(command) => command,
                        Err(_) => break,
                    },
                };
                if fenced(&next) {
                    // What was fed before it (answers, earlier submits) still goes out.
                    SinkExt::<Command>::flush(&mut sink).await?;
                    return Ok(Some(CloseReason::Fenced));
                }
                sink.feed(next).await?;
                batched += 1;
            }
            SinkExt::<Command>::flush(&mut sink).await.map(|()| None)
        };
        let reason = tokio::select! {
            written = timeout(inner.response_timeout, batch) => match written {
                Ok(Ok(None)) => continue,
                Ok(Ok(Some(reason))) => reason,
                Ok(Err(e)) => CloseReason::Io(e.to_string()),
                Err(_) => CloseReason::NotReading,
            },
            _ = inner.closed.cancelled() => break,
        };
        if reason == CloseReason::NotReading {
            tracing::warn!(carrier = %inner.carrier, timeout = ?inner.response_timeout, "writes to the SMSC stalled; closing");
        }
        inner.close(reason);
        break;
    }
}

/// Reads PDUs until the session closes.
pub(super) async fn read_loop(mut stream: SplitStream<FramedSmpp>, inner: Arc<Inner>, receipts: ReceiptSender) {
    use rusmpp::tokio_codec::DecodeError;
    loop {
        let item = tokio::select! {
            _ = inner.closed.cancelled() => break,
            item = stream.next() => item,
        };
        let reason = match item {
            None => Some(CloseReason::PeerClosed),
            // Over TLS a peer that hangs up without close_notify reads as an unexpected EOF: the
            // same hang-up as a TCP close (PDUs are length-framed, so no truncation goes unseen).
            Some(Err(DecodeError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => Some(CloseReason::PeerClosed),
            Some(Err(DecodeError::Io(e))) => Some(CloseReason::Io(e.to_string())),
            Some(Err(e)) => Some(CloseReason::Malformed(e.to_string())),
            Some(Ok(frame)) => {
                *lock(&inner.last_received) = Instant::now();
                inner.handle(frame, &receipts).await
            }
        };
        if let Some(reason) = reason {
            if matches!(reason, CloseReason::Malformed(_)) {
                tracing::warn!(carrier = %inner.carrier, %reason, "closing session");
            }
            inner.close(reason);
            break;
        }
    }
}

/// Sends enquire_link when the link has been quiet for `enquire_link_interval`; an unanswered
/// one means the SMSC (or a middlebox) is gone even though TCP looks open.
pub(super) async fn keepalive_loop(inner: Arc<Inner>) {
    let mut ticker = tokio::time::interval(inner.enquire_link_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = inner.closed.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let quiet_for = lock(&inner.last_received).elapsed();
        if quiet_for < inner.enquire_link_interval {
            continue;
        }
        match inner.request(Pdu::EnquireLink).await {
            Ok(_) => {}
            Err(RequestError::Timeout) => {
                inner.close(CloseReason::EnquireLinkTimeout);
                break;
            }
            Err(RequestError::Closed | RequestError::NotSent) => break,
        }
    }
}
