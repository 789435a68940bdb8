//! Events out: what happened to a message or a verification, kept as one row per webhook
//! endpoint that wants it until that endpoint has taken it.
//!
//! An event's rows are written in the same write as the change it reports, and before it: on
//! PostgreSQL that is one statement or transaction, so a crash keeps both or neither; sled keeps
//! a prefix of its writes, so an event may outlive a change cut short, and the next open drops
//! it (a row names the message state its change brought). No event is lost whose change
//! survived; none is sent whose change did not. Rows are keyed endpoint,
//! subject, event id, where the subject is the verification an SMS belongs to (else the message
//! itself) and ids grow with time: walking an endpoint's rows in key order meets each subject's
//! events in the order they happened, which is how the sender keeps them in order.
//!
//! A row leaves when its endpoint answered 2xx; one that kept failing past its retry time moves
//! under the dead prefix, where an operator lists and re-sends it and retention sweeps it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use super::record::{self, MessageId, MessageRecord, MessageStatus, VerificationId};
use super::verification::{VerificationRecord, VerificationStatus};
use super::{Store, StoreError, keys, lock, view};

/// The built-in endpoint whose rows are Kannel delivery reports: each row's body is the URL to
/// fetch (`webhook::settings` starts its sender when a Kannel user is configured).
pub const DLR_ENDPOINT: &str = "kannel-dlr";
const DLR_KIND: &str = "kannel.dlr";

/// A receipt as Kannel's `%A` shows it, in the receipt's own words.
fn receipt_words(message: &MessageRecord) -> String {
    let id = message.smsc_message_id.as_deref().unwrap_or_default();
    match &message.receipt {
        Some(r) => format!("id:{id} stat:{} err:{}", r.stat, r.err.as_deref().unwrap_or("000")),
        None => format!("id:{id} stat:{}", message.error.as_deref().unwrap_or("UNKNOWN")),
    }
}

/// Every kind of event, as its `type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    MessageSubmitted,
    MessageDelivered,
    MessageUndeliverable,
    MessageExpired,
    MessageRejected,
    MessageFailed,
    VerificationSent,
    VerificationDeliveryFailed,
    VerificationApproved,
    VerificationExpired,
    VerificationCanceled,
    VerificationMaxAttemptsReached,
    /// The fraud guard suspended a destination prefix (no API key's: sent to endpoints that
    /// hear every key).
    FraudPrefixSuspended,
}

impl EventType {
    pub const ALL: [EventType; 13] = [
        EventType::MessageSubmitted,
        EventType::MessageDelivered,
        EventType::MessageUndeliverable,
        EventType::MessageExpired,
        EventType::MessageRejected,
        EventType::MessageFailed,
        EventType::VerificationSent,
        EventType::VerificationDeliveryFailed,
        EventType::VerificationApproved,
        EventType::VerificationExpired,
        EventType::VerificationCanceled,
        EventType::VerificationMaxAttemptsReached,
        EventType::FraudPrefixSuspended,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventType::MessageSubmitted => "message.submitted",
            EventType::MessageDelivered => "message.delivered",
            EventType::MessageUndeliverable => "message.undeliverable",
            EventType::MessageExpired => "message.expired",
            EventType::MessageRejected => "message.rejected",
            EventType::MessageFailed => "message.failed",
            EventType::VerificationSent => "verification.sent",
            EventType::VerificationDeliveryFailed => "verification.delivery_failed",
            EventType::VerificationApproved => "verification.approved",
            EventType::VerificationExpired => "verification.expired",
            EventType::VerificationCanceled => "verification.canceled",
            EventType::VerificationMaxAttemptsReached => "verification.max_attempts_reached",
            EventType::FraudPrefixSuspended => "fraud.prefix_suspended",
        }
    }

    /// The event of a message entering `status` (none for queued).
    fn of_message(status: MessageStatus) -> Option<EventType> {
        Some(match status {
            MessageStatus::Queued => return None,
            MessageStatus::Submitted => EventType::MessageSubmitted,
            MessageStatus::Delivered => EventType::MessageDelivered,
            MessageStatus::Undeliverable => EventType::MessageUndeliverable,
            MessageStatus::Expired => EventType::MessageExpired,
            MessageStatus::Rejected => EventType::MessageRejected,
            MessageStatus::Failed => EventType::MessageFailed,
        })
    }

    /// The event of a verification ending in `status` (none for pending).
    fn of_verification(status: VerificationStatus) -> Option<EventType> {
        Some(match status {
            VerificationStatus::Pending => return None,
            VerificationStatus::Approved => EventType::VerificationApproved,
            VerificationStatus::Expired => EventType::VerificationExpired,
            VerificationStatus::Canceled => EventType::VerificationCanceled,
            VerificationStatus::MaxAttemptsReached => EventType::VerificationMaxAttemptsReached,
        })
    }
}

/// What one endpoint wants: event types by glob (`*` matches any run of characters) and the
/// API keys whose records it hears of (empty: all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub name: String,
    pub types: Vec<String>,
    pub api_keys: Vec<String>,
}

impl Subscription {
    fn wants(&self, kind: EventType, owner: &str) -> bool {
        self.types.iter().any(|pattern| glob(pattern, kind.name()))
            && (self.api_keys.is_empty() || self.api_keys.iter().any(|k| k == owner))
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
pub fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else { return false };
            (0..=tail.len()).any(|at| tail.is_char_boundary(at) && glob(rest, &tail[at..]))
        }
    }
}

/// An event row: the body is rendered once, when the change happens, so every attempt (and
/// every endpoint) sends the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// `webhook-id`: the same on every attempt.
    pub id: String,
    pub kind: String,
    /// The API key (by name) whose record it is about.
    pub owner: String,
    pub created_ms: u64,
    /// `{"type", "timestamp", "data"}` as JSON.
    pub body: String,
    pub attempts: u32,
    /// Not before this (unix ms): the backoff after a failed attempt.
    pub next_ms: u64,
    pub last_error: Option<String>,
    /// When it was given up on.
    pub dead_ms: Option<u64>,
    /// The message state the change it reports brought (sled writes the row before the
    /// message's record: a row whose message never reached that state was left by a crash).
    pub requires: Option<(MessageId, MessageStatus)>,
}

/// The first byte of an encoded [`EventRow`]: its layout's version.
const ROW_VERSION: u8 = 1;

impl EventRow {
    /// A compact binary row: the version, the numbers, length-prefixed strings, then the body
    /// as it goes on the wire. Half the size of the same row as JSON (whose body would be a
    /// JSON string inside JSON, every quote escaped): in sled every insert and delete copies
    /// the leaf it lands in, so row size is CPU on the message path (README: Webhooks).
    fn encode(&self) -> Vec<u8> {
        let texts = [self.id.as_str(), &self.kind, &self.owner, self.last_error.as_deref().unwrap_or_default()];
        let mut out = Vec::with_capacity(1 + 28 + texts.iter().map(|t| 2 + t.len()).sum::<usize>() + self.body.len());
        out.push(ROW_VERSION);
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        out.extend_from_slice(&self.attempts.to_be_bytes());
        out.extend_from_slice(&self.next_ms.to_be_bytes());
        out.extend_from_slice(&self.dead_ms.unwrap_or_default().to_be_bytes());
        match self.requires {
            Some((message, status)) => {
                out.push(1 + status.code());
                out.extend_from_slice(&message.0);
            }
            None => out.push(0),
        }
        for text in texts {
            // Ids, types and key names are short; an error text is cut to fit.
            let text = cut(text, usize::from(u16::MAX));
            out.extend_from_slice(&(text.len() as u16).to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out.extend_from_slice(self.body.as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<EventRow> {
        let (&version, mut rest) = bytes.split_first()?;
        if version != ROW_VERSION {
            return None;
        }
        let mut take = |n: usize| {
            let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
            rest = tail;
            Some(head)
        };
        let u64_at = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or_default());
        let created_ms = u64_at(take(8)?);
        let attempts = u32::from_be_bytes(take(4)?.try_into().ok()?);
        let next_ms = u64_at(take(8)?);
        let dead_ms = Some(u64_at(take(8)?)).filter(|ms| *ms > 0);
        let requires = match take(1)?[0] {
            0 => None,
            code => Some((keys::id_from(take(16)?)?, MessageStatus::from_code(code - 1)?)),
        };
        let mut texts = Vec::with_capacity(4);
        for _ in 0..4 {
            let len = u16::from_be_bytes(take(2)?.try_into().ok()?);
            texts.push(std::str::from_utf8(take(usize::from(len))?).ok()?.to_string());
        }
        let body = std::str::from_utf8(rest).ok()?.to_string();
        let [id, kind, owner, last_error] = <[String; 4]>::try_from(texts).ok()?;
        let last_error = Some(last_error).filter(|e| !e.is_empty());
        Some(EventRow { id, kind, owner, created_ms, body, attempts, next_ms, last_error, dead_ms, requires })
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether a message in `current` state has been through `required` (states only move
/// forward: queued, submitted, one final state).
fn reached(current: MessageStatus, required: MessageStatus) -> bool {
    match required {
        MessageStatus::Submitted => current != MessageStatus::Queued,
        required => current == required,
    }
}

/// A row waiting for its endpoint.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    pub key: Vec<u8>,
    pub subject: MessageId,
    pub event: MessageId,
    pub row: EventRow,
}

impl PendingEvent {
    /// When its id was taken (unix µs): ids grow with time.
    pub fn taken_us(&self) -> u64 {
        u64::from_be_bytes(self.event.0[..8].try_into().unwrap_or_default())
    }
}

/// A row given up on, as an operator lists it.
#[derive(Debug, Clone)]
pub struct DeadEvent {
    pub webhook: String,
    pub row: EventRow,
}

/// Events given ids but not written yet, by subject. Ids are taken before the write, and two
/// changes to one verification come through different paths (its SMS's submit, its check), so
/// a later id can be written first: a sender waits while an earlier id of the subject is still
/// on its way, which keeps each subject's events in order.
type Unwritten = Arc<std::sync::Mutex<HashMap<MessageId, Vec<MessageId>>>>;

/// Who hears of events, and how many each has waiting.
#[derive(Default)]
pub(super) struct Outbox {
    subscriptions: RwLock<Arc<Vec<Subscription>>>,
    unwritten: Unwritten,
    /// Rows waiting per endpoint (sled: counted once, then kept in step; a database counts).
    backlog: std::sync::Mutex<HashMap<String, i64>>,
    /// Wakes the senders when rows were written.
    written: tokio::sync::Notify,
}

/// Rows of events about to be written with a change. Their ids count as on their way until
/// this is dropped: after the write, or when the change is given up.
#[derive(Default)]
pub(super) struct Emitted {
    pub(super) rows: Vec<(Vec<u8>, Vec<u8>)>,
    ids: Vec<(MessageId, MessageId)>,
    unwritten: Option<Unwritten>,
}

impl Emitted {
    /// A write that failed part way may have left rows without their change: their ids stay
    /// "on their way" for this process's life (the store is broken; the next open drops them).
    pub(super) fn hold(mut self) {
        self.unwritten = None;
    }

    /// Takes `other`'s rows and ids (a batch's changes written as one).
    pub(super) fn absorb(&mut self, mut other: Emitted) {
        self.rows.append(&mut other.rows);
        self.ids.append(&mut other.ids);
        if self.unwritten.is_none() {
            self.unwritten = other.unwritten.take();
        }
    }
}

impl Drop for Emitted {
    fn drop(&mut self) {
        let Some(unwritten) = &self.unwritten else { return };
        let mut unwritten = lock(unwritten);
        for (subject, event) in &self.ids {
            if let Some(ids) = unwritten.get_mut(subject) {
                ids.retain(|id| id != event);
                if ids.is_empty() {
                    unwritten.remove(subject);
                }
            }
        }
    }
}

/// The key of an endpoint's row: `prefix`, endpoint, NUL, event id, subject. Ids grow with
/// time, so new rows go to the end and the rows sent (deleted) gather at the start, where a
/// sender that starts its walk a little before the oldest row it last saw never reads them
/// again (sled keeps the emptied leaves: walking them on every pass cost more than sending).
fn event_key(prefix: u8, endpoint: &str, subject: &MessageId, event: &MessageId) -> Vec<u8> {
    let mut k = keys::key(prefix, &[endpoint.as_bytes(), &event.0]);
    k.extend_from_slice(&subject.0);
    k
}

/// The endpoint and subject of a row key.
fn parse_key(key: &[u8]) -> Option<(String, MessageId)> {
    parse_ids(key).map(|(endpoint, subject, _)| (endpoint, subject))
}

/// The endpoint, subject and event id of a row key.
fn parse_ids(key: &[u8]) -> Option<(String, MessageId, MessageId)> {
    let rest = key.get(1..)?;
    let at = rest.iter().position(|b| *b == 0)?;
    let endpoint = std::str::from_utf8(&rest[..at]).ok()?.to_string();
    let ids = rest.get(at + 1..)?;
    if ids.len() != 32 {
        return None;
    }
    Some((endpoint, keys::id_from(&ids[16..])?, keys::id_from(&ids[..16])?))
}

fn endpoint_prefix(prefix: u8, endpoint: &str) -> Vec<u8> {
    keys::key(prefix, &[endpoint.as_bytes(), b""])
}

impl Store {
    /// Sets who hears of events from now on (at start and on reload).
    pub fn subscribe(&self, subscriptions: Vec<Subscription>) {
        *self.outbox.subscriptions.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(subscriptions);
    }

    /// Counts the rows `endpoint` has waiting, once (its sender, as it starts); later writes
    /// keep the count in step. On a database every read counts.
    pub async fn count_event_backlog(&self, endpoint: &str) -> Result<(), StoreError> {
        if self.engine.shared() || lock(&self.outbox.backlog).contains_key(endpoint) {
            return Ok(());
        }
        let n = self.engine.count(&endpoint_prefix(keys::EVENT, endpoint)).await? as i64;
        lock(&self.outbox.backlog).entry(endpoint.to_string()).or_insert(n);
        Ok(())
    }

    /// Who hears of events now.
    fn subscriptions(&self) -> Arc<Vec<Subscription>> {
        self.outbox.subscriptions.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds to `out` the rows of a `kind` event about `subject`, one per endpoint that wants
    /// it; `data` (the API's view of the record) is rendered only if one does.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit<D: serde::Serialize>(
        &self,
        out: &mut Emitted,
        kind: EventType,
        owner: &str,
        subject: &MessageId,
        requires: Option<(MessageId, MessageStatus)>,
        now_ms: u64,
        data: impl FnOnce() -> D,
    ) {
        let subscriptions = self.subscriptions();
        let wanted: Vec<&str> = subscriptions.iter().filter(|s| s.wants(kind, owner)).map(|s| s.name.as_str()).collect();
        if wanted.is_empty() {
            return;
        }
        #[derive(serde::Serialize)]
        struct Body<'a, D> {
            #[serde(rename = "type")]
            kind: &'a str,
            timestamp: String,
            data: D,
        }
        let body = Body { kind: kind.name(), timestamp: record::rfc3339(now_ms), data: data() };
        // Our own plain structs: serialisation cannot fail.
        let body = serde_json::to_string(&body).unwrap_or_default();
        self.push_rows(out, kind.name(), owner, subject, requires, now_ms, body, &wanted);
    }

    /// Adds one event's row for each of `endpoints` to `out`.
    #[allow(clippy::too_many_arguments)]
    fn push_rows(
        &self,
        out: &mut Emitted,
        kind: &str,
        owner: &str,
        subject: &MessageId,
        requires: Option<(MessageId, MessageStatus)>,
        now_ms: u64,
        body: String,
        endpoints: &[&str],
    ) {
        let event = self.new_id();
        lock(&self.outbox.unwritten).entry(*subject).or_default().push(event);
        out.ids.push((*subject, event));
        out.unwritten.get_or_insert_with(|| self.outbox.unwritten.clone());
        let row = EventRow {
            id: format!("evt_{event}"),
            kind: kind.to_string(),
            owner: owner.to_string(),
            created_ms: now_ms,
            body,
            attempts: 0,
            next_ms: 0,
            last_error: None,
            dead_ms: None,
            requires,
        };
        let value = row.encode();
        for endpoint in endpoints {
            out.rows.push((event_key(keys::EVENT, endpoint, subject, &event), value.clone()));
        }
    }

    /// The Kannel delivery report of `message` entering its status, if its client asked for
    /// that state: a row for [`DLR_ENDPOINT`] whose body is the URL to fetch.
    fn emit_dlr(&self, out: &mut Emitted, id: &MessageId, message: &MessageRecord, now_ms: u64) {
        let Some(dlr) = &message.options.dlr else { return };
        let submitted = message.smsc_message_id.is_some();
        let (kind, reply) = match message.status {
            MessageStatus::Queued => return,
            MessageStatus::Submitted => (8, "ACK/".to_string()),
            MessageStatus::Delivered | MessageStatus::Undeliverable | MessageStatus::Rejected => {
                let kind = if message.status == MessageStatus::Delivered { 1 } else { 2 };
                (kind, receipt_words(message))
            }
            MessageStatus::Expired | MessageStatus::Failed if submitted => (2, receipt_words(message)),
            MessageStatus::Expired | MessageStatus::Failed => (16, format!("NACK/{}", message.error.as_deref().unwrap_or_default())),
        };
        if dlr.mask & kind == 0 {
            return;
        }
        let report = crate::dlr_url::Report {
            kind,
            smsc_message_id: message.smsc_message_id.as_deref().unwrap_or_default(),
            handset: &dlr.to,
            sender: &dlr.from,
            at_unix: now_ms / 1000,
            reply: &reply,
            carrier: message.carrier.as_deref().unwrap_or_default(),
            user: &dlr.user,
            coding: if message.encoding == Some(crate::sms::Encoding::Ucs2) { 2 } else { 0 },
            message_id: &id.to_string(),
        };
        let url = crate::dlr_url::fill(&dlr.url, &report);
        self.push_rows(out, DLR_KIND, &message.owner, id, Some((*id, message.status)), now_ms, url, &[DLR_ENDPOINT]);
    }

    /// The event of `message` entering its status now, about its verification when it carries
    /// a code (so a verification's events keep one order).
    pub(super) fn emit_message(&self, out: &mut Emitted, id: &MessageId, message: &MessageRecord, now_ms: u64) {
        self.emit_dlr(out, id, message, now_ms);
        if let Some(kind) = EventType::of_message(message.status) {
            let subject = message.verification.map_or(*id, |v| v.0);
            self.emit(out, kind, &message.owner, &subject, Some((*id, message.status)), now_ms, || view::message(id, message));
        }
    }

    /// A verification's event, its data the API's view of it with `latest` as its SMS, and
    /// `extra` fields added.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit_verification(
        &self,
        out: &mut Emitted,
        kind: EventType,
        id: &VerificationId,
        verification: &VerificationRecord,
        latest: Option<(&MessageId, &MessageRecord)>,
        extra: Option<(&str, serde_json::Value)>,
        now_ms: u64,
    ) {
        // Written with its SMS's change (the submit): that change brought the SMS to `latest`'s state.
        let requires = match kind {
            EventType::VerificationSent => latest.map(|(m, r)| (*m, r.status)),
            _ => None,
        };
        self.emit(out, kind, &verification.owner, &id.0, requires, now_ms, || {
            let detail = view::Detail {
                summary: view::Summary::of(*id, verification, record::from_ms(now_ms)),
                delivery: view::Delivery::of(latest.map(|(m, _)| *m), latest.map(|(_, r)| r)),
            };
            let mut data = serde_json::to_value(detail).unwrap_or_default();
            if let (Some((name, value)), Some(fields)) = (extra, data.as_object_mut()) {
                fields.insert(name.to_string(), value);
            }
            data
        });
    }

    /// The event for a verification whose status just left pending.
    pub(super) async fn emit_verification_end(
        &self,
        out: &mut Emitted,
        id: &VerificationId,
        verification: &VerificationRecord,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let Some(kind) = EventType::of_verification(verification.status) else { return Ok(()) };
        if !self.wanted(kind, &verification.owner) {
            return Ok(());
        }
        let latest = match verification.message_ids.last() {
            Some(mid) => self.message(mid).await?.map(|m| (*mid, m)),
            None => None,
        };
        self.emit_verification(out, kind, id, verification, latest.as_ref().map(|(m, r)| (m, r)), None, now_ms);
        Ok(())
    }

    /// Whether an event of `kind` about a record of `owner` would be written now.
    pub(super) fn wanted(&self, kind: EventType, owner: &str) -> bool {
        self.subscriptions().iter().any(|s| s.wants(kind, owner))
    }

    /// Counts rows just written (or moved back) and wakes the senders.
    pub(super) fn events_written(&self, rows: &[(Vec<u8>, Vec<u8>)]) {
        if rows.is_empty() {
            return;
        }
        self.backlog_changed(rows.iter().map(|(k, _)| k.as_slice()), 1);
        self.outbox.written.notify_waiters();
    }

    fn backlog_changed<'a>(&self, keys: impl Iterator<Item = &'a [u8]>, by: i64) {
        let mut backlog = lock(&self.outbox.backlog);
        for key in keys {
            // Endpoints not counted yet are counted whole when their sender starts.
            if let Some(count) = parse_key(key).and_then(|(endpoint, _)| backlog.get_mut(&endpoint)) {
                *count += by;
            }
        }
    }

    /// Whether `event`, or an earlier one of its subject, is still on its way to the store with
    /// its change (this process's writers; see [`Unwritten`]): it is not sent until then.
    pub fn unwritten(&self, event: &PendingEvent) -> bool {
        lock(&self.outbox.unwritten).get(&event.subject).is_some_and(|ids| ids.iter().any(|id| *id <= event.event))
    }

    /// Drops event rows a crash left without their change (sled writes an event's row before
    /// the message record its change writes; see `write_with_events`). Run at open, before
    /// anything can change a message. Returns how many.
    pub(super) async fn drop_orphan_events(&self) -> Result<usize, StoreError> {
        let mut pages = self.engine.pages(&[keys::EVENT]);
        let mut orphans = Vec::new();
        while let Some(rows) = pages.next().await? {
            let required: Vec<(Vec<u8>, MessageId, MessageStatus)> = rows
                .into_iter()
                .filter_map(|(key, value)| EventRow::decode(&value)?.requires.map(|(message, status)| (key, message, status)))
                .collect();
            let ids: Vec<MessageId> = required.iter().map(|(_, message, _)| *message).collect();
            for ((key, _, status), record) in required.into_iter().zip(self.messages(&ids).await?) {
                // A record swept since (retention) had its change: only a record short of it tells.
                if record.is_some_and(|r| !reached(r.status, status)) {
                    orphans.push(key);
                }
            }
        }
        if !orphans.is_empty() {
            self.engine.write(orphans.iter().map(|k| (k.clone(), None)).collect()).await?;
        }
        Ok(orphans.len())
    }

    /// Whether other processes write to this store too (their events' writes are not seen
    /// coming: a sender lets events settle a moment).
    pub fn shared(&self) -> bool {
        self.engine.shared()
    }

    /// Notified whenever event rows are written (wakes the senders).
    pub fn events_signal(&self) -> &tokio::sync::Notify {
        &self.outbox.written
    }

    /// A position among `endpoint`'s rows (for [`Store::pending_events`]' `after`): every row
    /// whose id was taken at or after `at_us` (unix µs) follows it.
    pub fn event_position(&self, endpoint: &str, at_us: u64) -> Vec<u8> {
        keys::key(keys::EVENT, &[endpoint.as_bytes(), &at_us.saturating_sub(1).to_be_bytes(), &[0xff; 8]])
    }

    /// Up to `limit` rows waiting for `endpoint` after the key `after`, in key order (the
    /// order their ids were taken in).
    pub async fn pending_events(&self, endpoint: &str, after: Option<&[u8]>, limit: usize) -> Result<Vec<PendingEvent>, StoreError> {
        let rows = self.engine.scan(&endpoint_prefix(keys::EVENT, endpoint), after, limit).await?;
        let mut out = Vec::with_capacity(rows.len());
        for (key, value) in rows {
            let Some((_, subject, event)) = parse_ids(&key) else { continue };
            let row = EventRow::decode(&value).ok_or_else(|| StoreError::Corrupt("event row".into()))?;
            out.push(PendingEvent { key, subject, event, row });
        }
        Ok(out)
    }

    /// Rows their endpoint has taken: gone. Not waited for: after a crash that loses this,
    /// the event is sent again (at least once).
    pub async fn events_sent(&self, sent: &[Vec<u8>]) -> Result<(), StoreError> {
        if sent.is_empty() {
            return Ok(());
        }
        self.engine.write(sent.iter().map(|k| (k.clone(), None)).collect()).await?;
        self.backlog_changed(sent.iter().map(Vec::as_slice), -1);
        Ok(())
    }

    /// Records a failed attempt (its backoff and error) on the row.
    pub async fn event_failed(&self, event: &PendingEvent) -> Result<(), StoreError> {
        // Only if the row is still there: a resend or a sweep may have moved it meanwhile.
        if self.engine.get(&event.key).await?.is_some() {
            self.engine.put(&event.key, &event.row.encode()).await?;
        }
        Ok(())
    }

    /// Gives up on a row: it moves under the dead prefix, in one atomic write.
    pub async fn event_dead(&self, event: &PendingEvent, now: SystemTime) -> Result<(), StoreError> {
        let mut row = event.row.clone();
        row.dead_ms = Some(record::to_ms(now));
        let mut dead_key = event.key.clone();
        dead_key[0] = keys::DEAD_EVENT;
        self.engine.write_atomically(vec![(dead_key, Some(row.encode())), (event.key.clone(), None)]).await?;
        self.backlog_changed([event.key.as_slice()].into_iter(), -1);
        Ok(())
    }

    /// Rows waiting for `endpoint`.
    pub async fn event_backlog(&self, endpoint: &str) -> Result<u64, StoreError> {
        if self.engine.shared() {
            return Ok(self.engine.count(&endpoint_prefix(keys::EVENT, endpoint)).await? as u64);
        }
        Ok(lock(&self.outbox.backlog).get(endpoint).copied().unwrap_or_default().max(0) as u64)
    }

    /// Endpoints with rows waiting, whatever the config says now (rows of an endpoint no
    /// longer configured wait for it to come back).
    pub async fn event_endpoints(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let rows = self.engine.scan(&[keys::EVENT], after.as_deref(), 1).await?;
            let Some((key, _)) = rows.into_iter().next() else { return Ok(names) };
            let Some((endpoint, _)) = parse_key(&key) else { return Ok(names) };
            // Skip past every row of this endpoint.
            after = Some(keys::key(keys::EVENT, &[endpoint.as_bytes(), &[0xff; 33]]));
            names.push(endpoint);
        }
    }

    /// Dead rows, oldest subject first: of `owner`'s records (all when `None`), of one
    /// endpoint (all when `None`), at most `limit`.
    pub async fn dead_events(&self, owner: Option<&str>, webhook: Option<&str>, limit: usize) -> Result<Vec<DeadEvent>, StoreError> {
        let prefix = webhook.map_or_else(|| vec![keys::DEAD_EVENT], |w| endpoint_prefix(keys::DEAD_EVENT, w));
        let mut pages = self.engine.pages(&prefix);
        let mut out = Vec::new();
        while let Some(rows) = pages.next().await? {
            for (key, value) in rows {
                let (Some((webhook, _)), Some(row)) = (parse_key(&key), EventRow::decode(&value)) else { continue };
                if owner.is_none_or(|o| o == row.owner) {
                    out.push(DeadEvent { webhook, row });
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Sends dead rows again: those of `owner` (all when `None`), of one endpoint (all when
    /// `None`), with one of `ids` (all when `None`). Their attempts start over. Returns how many.
    pub async fn resend_dead_events(
        &self,
        owner: Option<&str>,
        webhook: Option<&str>,
        ids: Option<&[String]>,
    ) -> Result<usize, StoreError> {
        let prefix = webhook.map_or_else(|| vec![keys::DEAD_EVENT], |w| endpoint_prefix(keys::DEAD_EVENT, w));
        let mut pages = self.engine.pages(&prefix);
        let mut moved = 0;
        while let Some(rows) = pages.next().await? {
            let mut revived = Vec::new();
            let mut writes = Vec::new();
            for (key, value) in rows {
                let Some(mut row) = EventRow::decode(&value) else { continue };
                if owner.is_some_and(|o| o != row.owner) || ids.is_some_and(|ids| !ids.contains(&row.id)) {
                    continue;
                }
                (row.attempts, row.next_ms, row.dead_ms) = (0, 0, None);
                let mut pending = key.clone();
                pending[0] = keys::EVENT;
                let value = row.encode();
                writes.push((pending.clone(), Some(value.clone())));
                writes.push((key, None));
                revived.push((pending, value));
            }
            if !writes.is_empty() {
                self.engine.write_atomically(writes).await?;
                moved += revived.len();
                self.events_written(&revived);
            }
        }
        Ok(moved)
    }

    /// Deletes dead rows given up on more than `retention` ago. Returns how many.
    pub(super) async fn sweep_dead_events(&self, retention: Duration, now: SystemTime) -> Result<usize, StoreError> {
        let cutoff = super::sweep::cutoff(retention, now);
        let mut pages = self.engine.pages(&[keys::DEAD_EVENT]);
        let mut deleted = 0;
        while let Some(rows) = pages.next().await? {
            let old: Vec<Vec<u8>> = rows
                .into_iter()
                .filter(|(_, v)| EventRow::decode(v).is_none_or(|r| r.dead_ms.unwrap_or_default() <= cutoff))
                .map(|(k, _)| k)
                .collect();
            deleted += old.len();
            if !old.is_empty() {
                self.engine.write(old.into_iter().map(|k| (k, None)).collect()).await?;
            }
        }
        Ok(deleted)
    }
}

/// Event rows waiting and dead, over all endpoints (tests).
#[cfg(any(test, feature = "test-util"))]
impl Store {
    pub async fn event_rows(&self) -> Result<(usize, usize), StoreError> {
        Ok((self.engine.count(&[keys::EVENT]).await?, self.engine.count(&[keys::DEAD_EVENT]).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::settings::{self, BackendKind};
    use crate::store::tests::{Place, on_both};

    fn everything(name: &str) -> Subscription {
        Subscription { name: name.into(), types: vec!["*".into()], api_keys: Vec::new() }
    }

    #[test]
    fn rows_round_trip_through_their_binary_form_and_bad_bytes_do_not_decode() {
        let row = EventRow {
            id: "evt_0123".into(),
            kind: "message.delivered".into(),
            owner: "backend".into(),
            created_ms: 1_700_000_000_123,
            body: r#"{"type":"message.delivered","data":{"to":"+44 \"é\""}}"#.into(),
            attempts: 3,
            next_ms: 1_700_000_005_000,
            last_error: Some("answered 500 Internal Server Error".into()),
            dead_ms: None,
            requires: Some((MessageId::new(7), MessageStatus::Rejected)),
        };
        let bytes = row.encode();
        assert_eq!(EventRow::decode(&bytes), Some(row.clone()));
        let dead = EventRow { last_error: None, dead_ms: Some(9), requires: None, ..row };
        assert_eq!(EventRow::decode(&dead.encode()), Some(dead));
        assert!(bytes.len() < 200, "{}", bytes.len());
        for cut in 0..40 {
            assert_eq!(EventRow::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(EventRow::decode(&[2, 0, 0]), None, "an unknown version");
    }

    #[test]
    fn globs_match_whole_type_names() {
        assert!(glob("*", "message.delivered"));
        assert!(glob("message.*", "message.delivered"));
        assert!(glob("*.delivered", "message.delivered"));
        assert!(glob("message.deliv*d", "message.delivered"));
        assert!(!glob("message.*", "verification.sent"));
        assert!(!glob("message.delivered", "message.delivered.x"));
        assert!(!glob("verification", "verification.sent"));
    }

    /// An event whose id was taken first but whose write is still on its way holds back a
    /// later event of the same subject that was written already; other subjects go on.
    #[tokio::test]
    async fn a_later_event_waits_while_an_earlier_one_of_its_subject_is_unwritten() {
        let place = Place::new(BackendKind::Sled).await.unwrap();
        let store = place.open().await;
        store.subscribe(vec![everything("a")]);
        let (subject, other) = (store.new_id(), store.new_id());
        let (mut first, mut second, mut elsewhere) = (Emitted::default(), Emitted::default(), Emitted::default());
        let data = || serde_json::json!({});
        store.emit(&mut first, EventType::MessageSubmitted, "k", &subject, None, 1, data);
        store.emit(&mut second, EventType::MessageDelivered, "k", &subject, None, 2, data);
        store.emit(&mut elsewhere, EventType::MessageDelivered, "k", &other, None, 3, data);
        store.write_with_events(Vec::new(), second).await.unwrap();
        store.write_with_events(Vec::new(), elsewhere).await.unwrap();
        let pending = store.pending_events("a", None, 10).await.unwrap();
        assert_eq!(pending.len(), 2);
        let (later, unrelated) = (&pending[0], &pending[1]);
        assert_eq!((later.subject, later.row.kind.as_str()), (subject, "message.delivered"));
        assert!(store.unwritten(later), "its subject's first event is not written yet");
        assert!(!store.unwritten(unrelated));
        drop(first); // the change was given up: nothing holds the later one back any more
        assert!(!store.unwritten(later));
        store.close().await.unwrap();
    }

    /// A crash between an event's row and its message's record (sled keeps a prefix of its
    /// writes): the next open drops the event; one whose change was written stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_whose_change_a_crash_cut_short_is_dropped_at_open() {
        let place = Place::new(BackendKind::Sled).await.unwrap();
        let now = SystemTime::now();
        let message = |text: &str| crate::store::NewMessage {
            owner: "k".into(),
            to: "+447700900123".into(),
            from: None,
            text: text.into(),
            deadline: now + Duration::from_secs(300),
            encoding: None,
            segments: 1,
            options: Default::default(),
        };
        let (cut, whole);
        {
            let store = place.open().await;
            store.subscribe(vec![everything("a")]);
            cut = store.insert_message(message("cut"), None, now).await.unwrap().0;
            whole = store.insert_message(message("whole"), None, now).await.unwrap().0;
            let attempt =
                crate::store::Attempt { at_ms: 0, carrier: "c".into(), session: None, result: "ok".into(), detail: String::new() };
            store.mark_submitted(&whole, "c", "1", attempt, now).await.unwrap();
            // The submit of `cut` as far as its event row: the record was never written.
            let mut record = store.message(&cut).await.unwrap().unwrap();
            record.status = MessageStatus::Submitted;
            let mut out = Emitted::default();
            store.emit_message(&mut out, &cut, &record, 1);
            store.engine.write(out.rows.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect()).await.unwrap();
            assert_eq!(store.event_rows().await.unwrap(), (2, 0));
            crate::store::tests::crash(store).await;
        }
        let store = place.open().await;
        let left = store.pending_events("a", None, 10).await.unwrap();
        assert_eq!(left.len(), 1, "the orphan went");
        let body: serde_json::Value = serde_json::from_str(&left[0].row.body).unwrap();
        assert_eq!(body["data"]["status"], "submitted");
        assert_eq!(body["data"]["id"], whole.to_string());
        assert_eq!(store.message(&cut).await.unwrap().unwrap().status, MessageStatus::Queued, "its change never happened");
        store.close().await.unwrap();
    }

    on_both! {
        /// Rows are per endpoint; sent ones go, a dead one is listed to its owner only, sent
        /// again on request with its attempts started over, and swept after the retention.
        async fn rows_are_sent_buried_listed_resent_and_swept(place) {
            let store = place.open().await;
            store.subscribe(vec![everything("a"), Subscription { api_keys: vec!["other".into()], ..everything("b") }]);
            let now = SystemTime::now();
            let mut out = Emitted::default();
            let (one, two) = (store.new_id(), store.new_id());
            store.emit(&mut out, EventType::MessageSubmitted, "k", &one, None, 1, || serde_json::json!({"n": 1}));
            store.emit(&mut out, EventType::MessageDelivered, "k", &two, None, 2, || serde_json::json!({"n": 2}));
            store.write_with_events(Vec::new(), out).await.unwrap();
            assert_eq!(store.event_rows().await.unwrap(), (2, 0), "b hears only of the other key's records");
            store.count_event_backlog("a").await.unwrap();
            assert_eq!(store.event_backlog("a").await.unwrap(), 2);
            let pending = store.pending_events("a", None, 10).await.unwrap();
            assert_eq!(pending.iter().map(|e| e.subject).collect::<Vec<_>>(), vec![one, two]);
            let body: serde_json::Value = serde_json::from_str(&pending[0].row.body).unwrap();
            assert_eq!((body["type"].as_str(), body["data"]["n"].as_i64()), (Some("message.submitted"), Some(1)));
            store.events_sent(&[pending[0].key.clone()]).await.unwrap();
            let mut dead = pending[1].clone();
            dead.row.attempts = 3;
            store.event_dead(&dead, now).await.unwrap();
            assert_eq!(store.event_rows().await.unwrap(), (0, 1));
            assert_eq!(store.event_backlog("a").await.unwrap(), 0);
            let listed = store.dead_events(Some("k"), None, 10).await.unwrap();
            assert_eq!((listed.len(), listed[0].webhook.as_str(), listed[0].row.attempts), (1, "a", 3));
            assert!(store.dead_events(Some("someone else"), None, 10).await.unwrap().is_empty());
            assert_eq!(store.resend_dead_events(Some("k"), Some("a"), Some(&["evt_none".to_string()])).await.unwrap(), 0);
            assert_eq!(store.resend_dead_events(Some("k"), Some("a"), None).await.unwrap(), 1);
            let again = store.pending_events("a", None, 10).await.unwrap();
            assert_eq!((again.len(), again[0].row.attempts, again[0].row.id.clone()), (1, 0, pending[1].row.id.clone()));
            store.event_dead(&again[0], now).await.unwrap();
            let retention = Duration::from_secs(3600);
            assert_eq!(store.sweep_dead_events(retention, now).await.unwrap(), 0, "too young");
            assert_eq!(store.sweep_dead_events(retention, now + retention + Duration::from_secs(1)).await.unwrap(), 1);
            assert_eq!(store.event_rows().await.unwrap(), (0, 0));
            store.close().await.unwrap();
        }
    }
}
