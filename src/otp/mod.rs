//! Verifications: send a code, check it, read, cancel — with the rules of
//! `shared/reference/otp-security.md` (CSPRNG codes, HMAC-only storage, constant-time checks,
//! expiry, per-verification and per-number limits, resend cooldown, allow-list, rate limits).
//!
//! A code exists in plaintext only in memory: between generation and the submit_sm that carries
//! it. The store keeps its HMAC (bound to the verification id and context) and the SMS text with
//! the code masked. If the process dies before the SMS is sent, recovery issues a fresh code
//! ([`Otp::reissue`]) rather than losing the send.

pub mod code;
pub mod ratelimit;
pub mod settings;
pub mod template;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use serde_json::json;

use crate::clock::Clock;
use crate::dispatch::{Dispatch, Job, OtpSubmitted};
use crate::route::Network;
use crate::smpp::OutboundSms;
use crate::smpp::address::Address;
use crate::smpp::message::encode_text;
use crate::store::record::{rfc3339, to_ms};
use crate::store::verification::{Failover, NumberStats, VerificationRecord, VerificationSend, VerificationStatus};
use crate::store::{MessageId, MessageRecord, MessageStatus, NewMessage, Store, StoreError};
use code::CodeKey;
use ratelimit::RateLimiter;
pub use settings::OtpConfig;
use template::{Autofill, Fill};

/// Longest context a verification may be bound to.
pub const MAX_CONTEXT_CHARS: usize = 64;

/// Why a verification call was refused. Every variant maps to one HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum OtpError {
    #[error("'to' must be an E.164 number: '+' and 8-15 digits")]
    InvalidTo,
    #[error("'code_length' must be 4-10")]
    InvalidCodeLength,
    #[error("no template for locale {0:?}; configured: {1}")]
    InvalidLocale(String, String),
    #[error("'context' must be 1-{MAX_CONTEXT_CHARS} visible characters (no controls, bidi overrides or zero-width characters)")]
    InvalidContext,
    #[error("'code' must be 4-10 digits")]
    InvalidCode,
    #[error("the SMS with this context does not fit one segment: {0}")]
    TextTooLong(String),
    #[error("sending codes to this destination is not allowed")]
    DestinationBlocked,
    #[error("no carrier route serves this destination")]
    NoRoute,
    #[error("too many requests {0}; retry later")]
    RateLimited(&'static str, Duration),
    #[error("a code was sent to this number moments ago; wait before resending")]
    Cooldown(Duration),
    #[error("too many codes sent to this number; retry later")]
    SendLimit(Duration),
    #[error("too many failed checks for this number; retry later")]
    FailedCheckLimit(Duration),
    #[error("no such verification")]
    NotFound,
    #[error("the verification is {}", .0.as_str())]
    NotPending(VerificationStatus),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Random(#[from] code::RandomError),
}

/// A create request, as the API takes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub to: String,
    pub locale: Option<String>,
    pub code_length: Option<usize>,
    pub context: Option<String>,
}

/// The result of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    Approved,
    Wrong { checks_left: u32 },
    MaxAttemptsReached,
}

/// The verification service.
pub struct Otp {
    store: Arc<Store>,
    network: Arc<Network>,
    dispatch: Dispatch,
    clock: Arc<dyn Clock>,
    key: CodeKey,
    policy: OtpConfig,
    autofill: Autofill,
    creates_per_key: RateLimiter,
    creates_per_ip: RateLimiter,
    checks_per_key: RateLimiter,
    checks_per_ip: RateLimiter,
    checks_per_number: RateLimiter,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("OTP HMAC key file {path}: {message}")]
    Io { path: String, message: String },
}

/// Reads the 32-byte HMAC key, creating it (mode 0600, from the OS CSPRNG) when missing.
pub fn load_or_create_key(path: &Path) -> Result<CodeKey, KeyFileError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |message: String| KeyFileError::Io { path: path.display().to_string(), message };
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes: [u8; 32] =
                bytes.try_into().map_err(|b: Vec<u8>| err(format!("holds {} bytes; it must hold exactly 32", b.len())))?;
            Ok(CodeKey::new(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| err(e.to_string()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(format!("cannot create: {e}")))?;
            file.write_all(&bytes).and_then(|_| file.sync_all()).map_err(|e| err(e.to_string()))?;
            tracing::info!(path = %path.display(), "created a new OTP HMAC key");
            Ok(CodeKey::new(bytes))
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// OTP SMS sent before a restart whose receipt the watch must still act on.
struct Unsettled {
    /// Submitted, no final receipt yet: with the instant their `receipt_timeout` runs out (now,
    /// if it already has).
    waiting: Vec<(MessageId, Instant)>,
    /// Failed by a receipt whose failover had not happened yet.
    failed: Vec<MessageId>,
}

fn retry_after(oldest_ms: Option<u64>, window: Duration, now: SystemTime) -> Duration {
    oldest_ms
        .map(|t| crate::store::record::from_ms(t) + window)
        .and_then(|free| free.duration_since(now).ok())
        .unwrap_or(Duration::from_secs(1))
}

/// The JSON the API returns for a verification.
pub fn verification_json(id: &MessageId, r: &VerificationRecord, now: SystemTime) -> serde_json::Value {
    json!({
        "id": id.to_string(),
        "to": r.to,
        "status": shown_status(r, now).as_str(),
        "expires_at": rfc3339(r.expires_ms),
        "checks_left": r.checks_left,
        "sends": r.sends,
        "message_id": r.message_ids.last(),
    })
}

/// A pending verification past its time reads as expired even before anything wrote that.
fn shown_status(r: &VerificationRecord, now: SystemTime) -> VerificationStatus {
    if r.status == VerificationStatus::Pending && to_ms(now) >= r.expires_ms { VerificationStatus::Expired } else { r.status }
}

impl Otp {
    pub fn new(
        store: Arc<Store>,
        network: Arc<Network>,
        dispatch: Dispatch,
        clock: Arc<dyn Clock>,
        key: CodeKey,
        policy: OtpConfig,
    ) -> Otp {
        Otp {
            network,
            autofill: policy.autofill(),
            creates_per_key: RateLimiter::new(policy.creates_per_minute_per_key),
            creates_per_ip: RateLimiter::new(policy.creates_per_minute_per_ip),
            checks_per_key: RateLimiter::new(policy.checks_per_minute_per_key),
            checks_per_ip: RateLimiter::new(policy.checks_per_minute_per_ip),
            checks_per_number: RateLimiter::new(policy.checks_per_minute_per_number),
            store,
            dispatch,
            clock,
            key,
            policy,
        }
    }

    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// What the store keeps of a code: its HMAC, bound to the verification and context, in hex.
    fn sealed(&self, verification: &MessageId, context: &str, code: &code::Code) -> String {
        crate::hex::encode(&self.key.seal(&verification.to_string(), context, code.expose()))
    }

    fn limit(limiter: &RateLimiter, scope: &'static str, key: &str) -> Result<(), OtpError> {
        limiter.take(key, Instant::now()).map_err(|wait| OtpError::RateLimited(scope, wait))
    }

    fn render(&self, locale: &str, code: &str, context: &str) -> String {
        let template = self.policy.templates.get(locale).map_or("{code}", String::as_str);
        let fill = Fill { code, brand: &self.policy.brand, minutes: self.policy.ttl_minutes(), context };
        template::render(template, &fill, &self.autofill)
    }

    /// Sends a code: a new verification, or a resend when the key already has one pending for
    /// the number. `idempotency` = (scoped key, body hash) to remember with the answer.
    pub async fn create(
        &self,
        owner: &str,
        ip: IpAddr,
        request: CreateRequest,
        idempotency: Option<(String, String)>,
    ) -> Result<serde_json::Value, OtpError> {
        Address::destination(&request.to).map_err(|_| OtpError::InvalidTo)?;
        let allowed =
            self.policy.allowed_prefixes.is_empty() || self.policy.allowed_prefixes.iter().any(|p| request.to.starts_with(p.as_str()));
        if !allowed {
            metrics::counter!("otpgate_verifications_total", "outcome" => "blocked").increment(1);
            return Err(OtpError::DestinationBlocked);
        }
        if self.network.current().routes.route(&request.to).is_none() {
            return Err(OtpError::NoRoute);
        }
        let limited = Self::limit(&self.creates_per_key, "for this API key", owner)
            .and_then(|_| Self::limit(&self.creates_per_ip, "from this address", &ip.to_string()));
        if let Err(e) = limited {
            metrics::counter!("otpgate_verifications_total", "outcome" => "rate_limited").increment(1);
            return Err(e);
        }
        let code_length = request.code_length.unwrap_or(self.policy.code_length);
        if !(4..=10).contains(&code_length) {
            return Err(OtpError::InvalidCodeLength);
        }
        let locale = request.locale.clone().unwrap_or_else(|| self.policy.default_locale.clone());
        if !self.policy.templates.contains_key(&locale) {
            let known: Vec<&str> = self.policy.templates.keys().map(String::as_str).collect();
            return Err(OtpError::InvalidLocale(locale, known.join(", ")));
        }
        let context = request.context.clone().unwrap_or_default();
        if request.context.is_some()
            && (context.is_empty() || context.chars().count() > MAX_CONTEXT_CHARS || context.chars().any(template::hidden))
        {
            return Err(OtpError::InvalidContext);
        }
        let code = code::generate(code_length)?;
        let text = self.render(&locale, code.expose(), &context);
        encode_text(&text).map_err(|e| OtpError::TextTooLong(e.to_string()))?;

        let now = self.now();
        let now_ms = to_ms(now);
        let fresh_id = self.store.new_id();
        let message_id = self.store.new_id();
        let policy = &self.policy;
        let decide = |pending: Option<(MessageId, VerificationRecord)>, stats: &mut NumberStats| {
            stats.prune(policy.send_window, policy.failed_checks_window, now);
            let live = pending.filter(|(_, r)| r.status == VerificationStatus::Pending && r.expires_ms > now_ms);
            // The cooldown follows this key's last send to the number unless that verification
            // was approved: create, cancel, create no longer sends twice in a row.
            let mine = stats.of(owner);
            if let Some(&last) = mine.sends_ms.last().filter(|&&last| mine.approved_ms.is_none_or(|approved| approved < last)) {
                let since = Duration::from_millis(now_ms.saturating_sub(last));
                if since < policy.resend_cooldown {
                    return Err(OtpError::Cooldown(policy.resend_cooldown - since));
                }
            }
            if mine.sends_ms.len() >= policy.max_sends_per_number as usize {
                return Err(OtpError::SendLimit(retry_after(mine.sends_ms.first().copied(), policy.send_window, now)));
            }
            mine.sends_ms.push(now_ms);
            if stats.sends_ms.len() >= policy.sends_ceiling() as usize {
                return Err(OtpError::SendLimit(retry_after(stats.sends_ms.first().copied(), policy.send_window, now)));
            }
            stats.sends_ms.push(now_ms);
            let expires_ms = to_ms(now + policy.ttl);
            let (id, mut record) = match live {
                Some((id, record)) => (id, record),
                None => (
                    fresh_id,
                    VerificationRecord {
                        owner: owner.to_string(),
                        to: request.to.clone(),
                        status: VerificationStatus::Pending,
                        code_hmac: String::new(),
                        context: String::new(),
                        locale: String::new(),
                        code_length,
                        created_ms: now_ms,
                        expires_ms,
                        checks_left: policy.max_checks,
                        sends: 0,
                        last_send_ms: now_ms,
                        message_ids: Vec::new(),
                        done_ms: None,
                        failovers: Vec::new(),
                    },
                ),
            };
            // A resend issues a new code (the old one stops working) with a full life.
            record.code_hmac = self.sealed(&id, &context, &code);
            record.context = context.clone();
            record.locale = locale.clone();
            record.code_length = code_length;
            record.expires_ms = expires_ms;
            record.sends += 1;
            record.last_send_ms = now_ms;
            record.message_ids.push(message_id.to_string());
            let response = verification_json(&id, &record, now);
            Ok(VerificationSend {
                id,
                message: NewMessage {
                    owner: owner.to_string(),
                    to: record.to.clone(),
                    from: None,
                    text: template::mask(&text, code.expose()),
                    deadline: crate::store::record::from_ms(expires_ms),
                },
                record,
                message_id,
                idempotency: idempotency.map(|(key, hash)| (key, hash, response.to_string())),
            })
        };
        let send = match self.store.send_verification(owner, &request.to, decide).await? {
            Ok(send) => send,
            Err(e) => {
                if matches!(e, OtpError::Cooldown(_) | OtpError::SendLimit(_)) {
                    metrics::counter!("otpgate_verifications_total", "outcome" => "rate_limited").increment(1);
                }
                return Err(e);
            }
        };
        let outcome = if send.record.sends > 1 { "resent" } else { "created" };
        metrics::counter!("otpgate_verifications_total", "outcome" => outcome).increment(1);
        metrics::counter!("otpgate_messages_total", "state" => "queued").increment(1);
        self.dispatch.enqueue(Job {
            id: send.message_id,
            sms: OutboundSms {
                to: send.record.to.clone(),
                from: None,
                text,
                deadline: Some(crate::store::record::from_ms(send.record.expires_ms)),
            },
            avoid: Vec::new(),
            verification: Some(send.id),
        });
        Ok(verification_json(&send.id, &send.record, now))
    }

    fn owned(&self, owner: &str, id: &str) -> Result<(MessageId, VerificationRecord), OtpError> {
        let id: MessageId = id.parse().map_err(|_| OtpError::NotFound)?;
        let record = self.store.verification(&id)?.filter(|r| r.owner == owner).ok_or(OtpError::NotFound)?;
        Ok((id, record))
    }

    /// Checks a code. `context`, when given, must be the one the code was issued for.
    pub async fn check(
        &self,
        owner: &str,
        ip: IpAddr,
        id: &str,
        code: &str,
        context: Option<&str>,
    ) -> Result<(MessageId, CheckOutcome), OtpError> {
        Self::limit(&self.checks_per_key, "for this API key", owner)?;
        Self::limit(&self.checks_per_ip, "from this address", &ip.to_string())?;
        let (id, record) = self.owned(owner, id)?;
        if !(4..=10).contains(&code.len()) || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(OtpError::InvalidCode);
        }
        Self::limit(&self.checks_per_number, "for this number", &record.to)?;
        let now = self.now();
        let now_ms = to_ms(now);
        let policy = &self.policy;
        let key = &self.key;
        let id_text = id.to_string();
        let change = |r: &mut VerificationRecord, stats: &mut NumberStats| -> Result<CheckOutcome, OtpError> {
            stats.prune(policy.send_window, policy.failed_checks_window, now);
            if r.status == VerificationStatus::Pending && now_ms >= r.expires_ms {
                r.status = VerificationStatus::Expired;
                r.done_ms = Some(r.expires_ms);
                metrics::counter!("otpgate_verifications_total", "outcome" => "expired").increment(1);
            }
            if r.status != VerificationStatus::Pending {
                return Err(OtpError::NotPending(r.status));
            }
            let mine = stats.of(&r.owner).failed_checks_ms.clone();
            let limits = [(&mine, policy.max_failed_checks_per_number), (&stats.failed_checks_ms, policy.failed_checks_ceiling())];
            if let Some((failures, _)) = limits.iter().find(|(failures, limit)| failures.len() >= *limit as usize) {
                let wait = retry_after(failures.first().copied(), policy.failed_checks_window, now);
                return Err(OtpError::FailedCheckLimit(wait));
            }
            let expected = crate::hex::decode32(&r.code_hmac);
            let context = context.unwrap_or(&r.context);
            if key.verify(&id_text, context, code, &expected) {
                r.status = VerificationStatus::Approved;
                r.done_ms = Some(now_ms);
                stats.of(&r.owner).approved_ms = Some(now_ms);
                metrics::counter!("otpgate_verifications_total", "outcome" => "approved").increment(1);
                return Ok(CheckOutcome::Approved);
            }
            stats.failed_checks_ms.push(now_ms);
            stats.of(&r.owner).failed_checks_ms.push(now_ms);
            r.checks_left = r.checks_left.saturating_sub(1);
            if r.checks_left == 0 {
                r.status = VerificationStatus::MaxAttemptsReached;
                r.done_ms = Some(now_ms);
                metrics::counter!("otpgate_verifications_total", "outcome" => "max_attempts").increment(1);
                return Ok(CheckOutcome::MaxAttemptsReached);
            }
            Ok(CheckOutcome::Wrong { checks_left: r.checks_left })
        };
        let (record, outcome) = self.store.update_verification(&id, change).await?.ok_or(OtpError::NotFound)?;
        let outcome = outcome?;
        if outcome == CheckOutcome::Approved {
            // Conversion per carrier: credit the carrier that delivered the last SMS.
            let carrier = record
                .message_ids
                .last()
                .and_then(|m| m.parse::<MessageId>().ok())
                .and_then(|m| self.store.message(&m).ok().flatten())
                .and_then(|m| m.carrier)
                .unwrap_or_else(|| "unknown".into());
            metrics::counter!("otpgate_otp_approved_total", "carrier" => carrier).increment(1);
        }
        Ok((id, outcome))
    }

    /// A verification with its latest message, for `GET`.
    pub fn get(&self, owner: &str, id: &str) -> Result<serde_json::Value, OtpError> {
        let (id, record) = self.owned(owner, id)?;
        let message = match record.message_ids.last().and_then(|m| m.parse::<MessageId>().ok()) {
            Some(mid) => self.store.message(&mid)?,
            None => None,
        };
        let mut body = verification_json(&id, &record, self.now());
        body["delivery"] = json!({
            "message_id": record.message_ids.last(),
            "status": message.as_ref().map(|m| m.status.as_str()),
            "carrier": message.as_ref().and_then(|m| m.carrier.clone()),
            "receipt": message.as_ref().and_then(|m| m.receipt.as_ref()).map(|r| json!({"stat": r.stat, "err": r.err})),
        });
        if let Some(map) = body.as_object_mut() {
            map.remove("message_id");
        }
        Ok(body)
    }

    /// Cancels a pending verification: its code stops working.
    pub async fn cancel(&self, owner: &str, id: &str) -> Result<serde_json::Value, OtpError> {
        let (id, _) = self.owned(owner, id)?;
        let now = self.now();
        let change = |r: &mut VerificationRecord, _: &mut NumberStats| {
            if shown_status(r, now) != VerificationStatus::Pending {
                return Err(OtpError::NotPending(shown_status(r, now)));
            }
            r.status = VerificationStatus::Canceled;
            r.done_ms = Some(to_ms(now));
            Ok(())
        };
        let (record, result) = self.store.update_verification(&id, change).await?.ok_or(OtpError::NotFound)?;
        result?;
        metrics::counter!("otpgate_verifications_total", "outcome" => "canceled").increment(1);
        Ok(json!({"id": id.to_string(), "status": record.status.as_str()}))
    }

    /// Marks pending verifications past their expiry as expired (the sweep calls this; reads
    /// already show them expired). Returns how many.
    pub async fn expire_stale(&self) -> Result<usize, OtpError> {
        let now = self.now();
        let mut expired = 0;
        for id in self.store.pending_verifications()? {
            let change = |r: &mut VerificationRecord, _: &mut NumberStats| {
                let stale = r.status == VerificationStatus::Pending && to_ms(now) >= r.expires_ms;
                if stale {
                    r.status = VerificationStatus::Expired;
                    r.done_ms = Some(r.expires_ms);
                }
                stale
            };
            if let Some((_, true)) = self.store.update_verification(&id, change).await? {
                expired += 1;
                metrics::counter!("otpgate_verifications_total", "outcome" => "expired").increment(1);
            }
        }
        Ok(expired)
    }

    /// How long per-number counters must be kept.
    pub fn stats_window(&self) -> Duration {
        self.policy.send_window.max(self.policy.failed_checks_window)
    }

    /// Recovery of an OTP message the last process left unsent: its code existed only in that
    /// process's memory, so a fresh code replaces it (the old one stops working). Returns the
    /// job to dispatch, or `None` when the verification is over (the message is then finished).
    pub async fn reissue(&self, message_id: MessageId, message: &MessageRecord) -> Result<Option<Job>, OtpError> {
        let Some(vid) = message.verification.as_deref().and_then(|v| v.parse::<MessageId>().ok()) else {
            return Ok(None);
        };
        let now = self.now();
        let latest = message_id.to_string();
        let change = |r: &mut VerificationRecord, _: &mut NumberStats| {
            let is_latest = r.message_ids.last() == Some(&latest);
            if shown_status(r, now) != VerificationStatus::Pending || !is_latest {
                return None;
            }
            let code = match code::generate(r.code_length) {
                Ok(code) => code,
                Err(e) => return Some(Err(e)),
            };
            r.code_hmac = self.sealed(&vid, &r.context, &code);
            Some(Ok((code, r.locale.clone(), r.context.clone())))
        };
        let reissued = self.store.update_verification(&vid, change).await?;
        let (record, (code, locale, context)) = match reissued {
            Some((record, Some(result))) => (record, result?),
            _ => {
                let reason = "its verification ended before it was sent".to_string();
                self.store.finish(&message_id, MessageStatus::Expired, Some(reason), None, now)?;
                return Ok(None);
            }
        };
        Ok(Some(Job {
            id: message_id,
            sms: OutboundSms {
                to: record.to.clone(),
                from: None,
                text: self.render(&locale, code.expose(), &context),
                deadline: Some(crate::store::record::from_ms(record.expires_ms)),
            },
            avoid: Vec::new(),
            verification: Some(vid),
        }))
    }

    /// Receipt failover: the SMS of a pending verification failed (`timed_out` false: an
    /// UNDELIV/REJECTD receipt; true: no receipt within `receipt_timeout`). While the code's
    /// life lasts, a fresh code goes out through a carrier of the route not yet used for this
    /// verification (at most once per carrier). Returns whether a resend was queued.
    pub async fn failover(&self, message_id: MessageId, timed_out: bool) -> Result<bool, OtpError> {
        let Some(message) = self.store.message(&message_id)? else { return Ok(false) };
        let still_failing = match timed_out {
            true => message.status == MessageStatus::Submitted,
            false => matches!(message.status, MessageStatus::Undeliverable | MessageStatus::Rejected),
        };
        let Some(vid) = message.verification.as_deref().and_then(|v| v.parse::<MessageId>().ok()) else {
            return Ok(false);
        };
        let Some(verification) = self.store.verification(&vid)? else { return Ok(false) };
        let now = self.now();
        let latest = verification.message_ids.last() == Some(&message_id.to_string());
        if !still_failing || !latest || shown_status(&verification, now) != VerificationStatus::Pending {
            return Ok(false);
        }
        let fabric = self.network.current();
        let Some(route) = fabric.routes.route(&verification.to) else { return Ok(false) };
        let mut used: Vec<String> = Vec::new();
        for mid in verification.message_ids.iter().filter_map(|m| m.parse::<MessageId>().ok()) {
            if let Some(carrier) = self.store.message(&mid)?.and_then(|m| m.carrier) {
                used.push(carrier);
            }
        }
        if route.carriers().iter().all(|c| used.iter().any(|u| u == c.name())) {
            tracing::info!(verification = %vid, "receipt failover: every carrier of the route was tried");
            return Ok(false);
        }
        let from_carrier = message.carrier.clone().unwrap_or_default();
        let reason = if timed_out { "no receipt in time".to_string() } else { format!("receipt {}", message.status.as_str()) };
        let code = code::generate(verification.code_length)?;
        let text = self.render(&verification.locale, code.expose(), &verification.context);
        let new_id = self.store.new_id();
        let deadline = crate::store::record::from_ms(verification.expires_ms);
        let new_message = NewMessage {
            owner: verification.owner.clone(),
            to: verification.to.clone(),
            from: None,
            text: template::mask(&text, code.expose()),
            deadline,
        };
        // The message first: a crash before the verification points at it leaves a message the
        // recovery recognises as stale (it is not the verification's latest) and drops.
        self.store.insert_otp_message(new_id, new_message, &vid, now).await?;
        let sealed = self.sealed(&vid, &verification.context, &code);
        let expected_latest = message_id.to_string();
        let change = |r: &mut VerificationRecord, _: &mut NumberStats| {
            let still = shown_status(r, now) == VerificationStatus::Pending && r.message_ids.last() == Some(&expected_latest);
            if still {
                r.code_hmac = sealed.clone();
                r.message_ids.push(new_id.to_string());
                r.failovers.push(Failover { at_ms: to_ms(now), from_carrier: from_carrier.clone(), reason: reason.clone() });
            }
            still
        };
        if !matches!(self.store.update_verification(&vid, change).await?, Some((_, true))) {
            self.store.finish(&new_id, MessageStatus::Expired, Some("its verification moved on".into()), None, now)?;
            return Ok(false);
        }
        tracing::info!(verification = %vid, from = %from_carrier, %reason, "OTP resent through another carrier");
        metrics::counter!("otpgate_verifications_total", "outcome" => "failover").increment(1);
        self.dispatch.enqueue(Job {
            id: new_id,
            sms: OutboundSms { to: verification.to.clone(), from: None, text, deadline: Some(deadline) },
            avoid: used,
            verification: Some(vid),
        });
        Ok(true)
    }

    /// The latest SMS of each pending verification that the receipt watch must still follow:
    /// the watch lives in memory, so after a restart it is re-armed from the store.
    fn unsettled(&self) -> Result<Unsettled, OtpError> {
        let now = self.now();
        let (mut waiting, mut failed) = (Vec::new(), Vec::new());
        for vid in self.store.pending_verifications()? {
            let Some(verification) = self.store.verification(&vid)? else { continue };
            if shown_status(&verification, now) != VerificationStatus::Pending {
                continue;
            }
            let Some(mid) = verification.message_ids.last().and_then(|m| m.parse::<MessageId>().ok()) else { continue };
            let Some(message) = self.store.message(&mid)? else { continue };
            match message.status {
                MessageStatus::Submitted => {
                    let submitted = crate::store::record::from_ms(message.submitted_ms.unwrap_or(message.created_ms));
                    let due = submitted + self.policy.receipt_timeout;
                    waiting.push((mid, Instant::now() + due.duration_since(now).unwrap_or_default()));
                }
                MessageStatus::Undeliverable | MessageStatus::Rejected => failed.push(mid),
                _ => {}
            }
        }
        Ok(Unsettled { waiting, failed })
    }

    /// Watches submitted OTP SMS for their receipts: `failed` carries messages whose receipt
    /// came back UNDELIV/REJECTD; those with no receipt within `receipt_timeout` count too.
    pub async fn watch_receipts(
        self: Arc<Self>,
        mut submitted: tokio::sync::mpsc::UnboundedReceiver<OtpSubmitted>,
        mut failed: tokio::sync::mpsc::UnboundedReceiver<MessageId>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut deadlines: std::collections::HashMap<MessageId, Instant> = std::collections::HashMap::new();
        match self.unsettled() {
            Ok(Unsettled { waiting, failed }) => {
                if !waiting.is_empty() || !failed.is_empty() {
                    tracing::info!(
                        waiting = waiting.len(),
                        failed = failed.len(),
                        "receipt watch re-armed for OTP SMS sent before the restart"
                    );
                }
                deadlines.extend(waiting);
                for id in failed {
                    if let Err(e) = self.failover(id, false).await {
                        tracing::error!(message_id = %id, error = %e, "receipt failover failed");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot re-arm the receipt watch after a restart"),
        }
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                Some(s) = submitted.recv() => {
                    deadlines.insert(s.message, Instant::now() + self.policy.receipt_timeout);
                }
                Some(id) = failed.recv() => {
                    deadlines.remove(&id);
                    if let Err(e) = self.failover(id, false).await {
                        tracing::error!(message_id = %id, error = %e, "receipt failover failed");
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    let due: Vec<MessageId> = deadlines.iter().filter(|(_, at)| **at <= now).map(|(id, _)| *id).collect();
                    for id in due {
                        deadlines.remove(&id);
                        if let Err(e) = self.failover(id, true).await {
                            tracing::error!(message_id = %id, error = %e, "receipt-timeout failover failed");
                        }
                    }
                }
                _ = stop.cancelled() => break,
            }
        }
    }
}
