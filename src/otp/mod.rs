//! Verifications: send a code, check it, read, cancel — with the rules of
//! `shared/reference/otp-security.md` (CSPRNG codes, HMAC-only storage, constant-time checks,
//! expiry, per-verification and per-number limits, resend cooldown, allow-list, rate limits).
//!
//! A code exists in plaintext only in memory: between generation and the submit_sm that carries
//! it. The store keeps its HMAC (bound to the verification id and context) and the SMS text with
//! the code masked. If the process dies before the SMS is sent, recovery issues a fresh code
//! ([`Otp::reissue`]) rather than losing the send.

pub mod code;
mod failover;
pub mod ratelimit;
pub(crate) mod settings;
pub mod template;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use crate::clock::Clock;
use crate::dispatch::{Dispatch, Job};
use crate::fraud::{Admission, Guard};
use crate::route::Network;
use crate::smpp::OutboundSms;
use crate::smpp::address::Address;
use crate::smpp::tlv::Registration;
use crate::store::record::{from_ms, to_ms};
use crate::store::verification::{NumberStats, VerificationRecord, VerificationSend, VerificationStatus};
use crate::store::view::{Canceled, Created, Delivery, Detail, Summary, shown_status};
use crate::store::{MessageId, MessageRecord, MessageStatus, NewMessage, Store, StoreError, VerificationId};
use crate::telemetry;
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
    #[error("'brand' must be 1-{MAX_BRAND_CHARS} visible characters")]
    InvalidBrand,
    #[error("'app_hash' must be the 11-character Android SMS Retriever hash (letters, digits, '+' and '/')")]
    InvalidAppHash,
    #[error("'code' must be 4-10 digits")]
    InvalidCode,
    #[error("the SMS with this context does not fit one segment: {0}")]
    TextTooLong(String),
    #[error("sending codes to this destination is not allowed")]
    DestinationBlocked,
    #[error("no carrier route serves this destination")]
    NoRoute,
    #[error("a carrier of this destination's route needs the template's registered {0}: set [otp.registrations]")]
    RegistrationRequired(&'static str),
    #[error("too many requests {0}; retry later")]
    RateLimited(&'static str, Duration),
    #[error("codes to this destination are paused: its traffic looks like SMS pumping; retry later")]
    SuspectedFraud(Duration),
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
    /// Replaces `[otp] brand` in this SMS (Twilio's CustomFriendlyName).
    pub brand: Option<String>,
    /// Ends this SMS with this Android SMS Retriever hash instead of the configured autofill line.
    pub app_hash: Option<String>,
}

/// How a verification's SMS reads, but for its code.
struct Wording {
    locale: String,
    context: String,
    brand: Option<String>,
    app_hash: Option<String>,
}

impl Wording {
    fn of(r: &VerificationRecord) -> Wording {
        Wording { locale: r.locale.clone(), context: r.context.clone(), brand: r.brand.clone(), app_hash: r.app_hash.clone() }
    }
}

/// The longest brand a request may set.
pub const MAX_BRAND_CHARS: usize = 30;

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
    guard: Arc<Guard>,
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

/// The answer to a create.
fn created(id: VerificationId, record: &VerificationRecord, now: SystemTime) -> Created {
    Created { summary: Summary::of(id, record, now), message_id: record.message_ids.last().copied() }
}

fn retry_after(oldest_ms: Option<u64>, window: Duration, now: SystemTime) -> Duration {
    oldest_ms.map(|t| from_ms(t) + window).and_then(|free| free.duration_since(now).ok()).unwrap_or(Duration::from_secs(1))
}

impl Otp {
    pub fn new(
        store: Arc<Store>,
        network: Arc<Network>,
        dispatch: Dispatch,
        clock: Arc<dyn Clock>,
        key: CodeKey,
        policy: OtpConfig,
        guard: Arc<Guard>,
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
            guard,
        }
    }

    /// The fraud guard the verifications go through.
    pub fn guard(&self) -> &Arc<Guard> {
        &self.guard
    }

    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// What the store keeps of a code: its HMAC, bound to the verification and context, in hex.
    fn sealed(&self, verification: &VerificationId, context: &str, code: &code::Code) -> String {
        crate::hex::encode(&self.key.seal(&verification.to_string(), context, code.expose()))
    }

    fn limit(limiter: &RateLimiter, scope: &'static str, key: &str) -> Result<(), OtpError> {
        limiter.take(key, Instant::now()).map_err(|wait| OtpError::RateLimited(scope, wait))
    }

    /// A code's SMS to `to`, with its locale's registration ids for the carriers' vendor TLVs.
    fn outbound(&self, to: &str, text: String, deadline: SystemTime, locale: &str) -> OutboundSms {
        let mut sms = OutboundSms::new(to, text, Some(deadline));
        sms.registration = self.registration(locale);
        sms
    }

    fn registration(&self, locale: &str) -> Registration {
        let registered = self.policy.registrations.get(locale);
        Registration { template_id: registered.map(|r| r.template_id.clone()), entity_id: registered.and_then(|r| r.entity_id.clone()) }
    }

    /// The SMS of `code` as `wording` asks for it.
    fn render(&self, wording: &Wording, code: &str) -> String {
        let template = self.policy.templates.get(&wording.locale).map_or("{code}", String::as_str);
        let brand = wording.brand.as_deref().unwrap_or(&self.policy.brand);
        let fill = Fill { code, brand, minutes: self.policy.ttl_minutes(), context: &wording.context };
        match &wording.app_hash {
            Some(hash) => template::render(template, &fill, &Autofill { webotp_domain: None, android_app_hash: Some(hash.clone()) }),
            None => template::render(template, &fill, &self.autofill),
        }
    }

    /// Sends a code: a new verification, or a resend when the key already has one pending for
    /// the number. `idempotency` = (scoped key, body hash) to remember with the answer.
    pub async fn create(
        &self,
        owner: &str,
        ip: IpAddr,
        request: CreateRequest,
        idempotency: Option<(String, String)>,
    ) -> Result<Created, OtpError> {
        Address::destination(&request.to).map_err(|_| OtpError::InvalidTo)?;
        let allowed =
            self.policy.allowed_prefixes.is_empty() || self.policy.allowed_prefixes.iter().any(|p| request.to.starts_with(p.as_str()));
        if !allowed {
            metrics::counter!(telemetry::VERIFICATIONS_TOTAL, "outcome" => "blocked").increment(1);
            return Err(OtpError::DestinationBlocked);
        }
        let locale = request.locale.clone().unwrap_or_else(|| self.policy.default_locale.clone());
        match self.network.current().routes.route(&request.to) {
            None => return Err(OtpError::NoRoute),
            Some(route) => {
                let registration = self.registration(&locale);
                if let Some(missing) = route.needs().into_iter().find(|field| !registration.has(*field)) {
                    return Err(OtpError::RegistrationRequired(missing.name()));
                }
            }
        }
        let limited = Self::limit(&self.creates_per_key, "for this API key", owner)
            .and_then(|_| Self::limit(&self.creates_per_ip, "from this address", &ip.to_string()));
        if let Err(e) = limited {
            metrics::counter!(telemetry::VERIFICATIONS_TOTAL, "outcome" => "rate_limited").increment(1);
            return Err(e);
        }
        let code_length = request.code_length.unwrap_or(self.policy.code_length);
        if !(4..=10).contains(&code_length) {
            return Err(OtpError::InvalidCodeLength);
        }
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
        if let Some(brand) = &request.brand {
            if brand.trim().is_empty() || brand.chars().count() > MAX_BRAND_CHARS || brand.chars().any(template::hidden) {
                return Err(OtpError::InvalidBrand);
            }
        }
        if let Some(hash) = &request.app_hash {
            if hash.len() != 11 || !hash.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/') {
                return Err(OtpError::InvalidAppHash);
            }
        }
        let wording =
            Wording { locale: locale.clone(), context: context.clone(), brand: request.brand.clone(), app_hash: request.app_hash.clone() };
        let code = code::generate(code_length)?;
        let text = self.render(&wording, code.expose());
        let (encoding, segments) = measured(&text);
        if usize::from(segments) > self.policy.max_segments {
            return Err(OtpError::TextTooLong(format!("the SMS takes {segments}; otp.max_segments allows {}", self.policy.max_segments)));
        }

        let now = self.now();
        let now_ms = to_ms(now);
        let fresh_id = VerificationId(self.store.new_id());
        let message_id = self.store.new_id();
        let policy = &self.policy;
        let decide = |pending: Option<(VerificationId, VerificationRecord)>, stats: &mut NumberStats| {
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
            // A suspended prefix refuses every number in it alike, but one that approved this
            // client's code before (the number's stats keep that for RETURNING_FOR).
            let returning = mine.approved_ms.is_some_and(|at| at + crate::fraud::RETURNING_FOR.as_millis() as u64 >= now_ms);
            if let Admission::Refuse { retry_after, .. } = self.guard.admit(&request.to, returning, now) {
                return Err(OtpError::SuspectedFraud(retry_after));
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
                        brand: None,
                        app_hash: None,
                    },
                ),
            };
            // A resend issues a new code (the old one stops working) with a full life.
            record.code_hmac = self.sealed(&id, &context, &code);
            record.context = context.clone();
            record.locale = locale.clone();
            record.brand = wording.brand.clone();
            record.app_hash = wording.app_hash.clone();
            record.code_length = code_length;
            record.expires_ms = expires_ms;
            record.sends += 1;
            record.last_send_ms = now_ms;
            record.message_ids.push(message_id);
            let response = serde_json::to_string(&created(id, &record, now)).unwrap_or_default();
            Ok(VerificationSend {
                id,
                message: NewMessage {
                    owner: owner.to_string(),
                    to: record.to.clone(),
                    from: None,
                    text: template::mask(&text, code.expose()),
                    deadline: from_ms(expires_ms),
                    encoding,
                    segments,
                    options: Default::default(),
                },
                record,
                message_id,
                idempotency: idempotency.map(|(key, hash)| (key, hash, response)),
            })
        };
        let send = match self.store.send_verification(owner, &request.to, decide).await? {
            Ok(send) => send,
            Err(e) => {
                if matches!(e, OtpError::Cooldown(_) | OtpError::SendLimit(_)) {
                    metrics::counter!(telemetry::VERIFICATIONS_TOTAL, "outcome" => "rate_limited").increment(1);
                }
                if matches!(e, OtpError::SuspectedFraud(_)) {
                    metrics::counter!(telemetry::VERIFICATIONS_TOTAL, "outcome" => "suspected_fraud").increment(1);
                }
                return Err(e);
            }
        };
        let outcome = if send.record.sends > 1 { "resent" } else { "created" };
        metrics::counter!(telemetry::VERIFICATIONS_TOTAL, "outcome" => outcome).increment(1);
        if let Some(change) = self.guard.sent(&send.record.to, now) {
            if let Err(e) = self.guard.record(change).await {
                tracing::error!(error = %e, "fraud guard: suspension not stored (it holds until a restart)");
            }
        }
        self.dispatch
            .admit(Job {
                id: send.message_id,
                sms: self.outbound(&send.record.to, text, from_ms(send.record.expires_ms), &locale),
                avoid: Vec::new(),
                only: None,
                verification: Some(send.id),
            })
            .await;
        Ok(created(send.id, &send.record, now))
    }

    async fn owned(&self, owner: &str, id: &str) -> Result<(VerificationId, VerificationRecord), OtpError> {
        let id: VerificationId = id.parse().map_err(|_| OtpError::NotFound)?;
        let record = self.store.verification(&id).await?.filter(|r| r.owner == owner).ok_or(OtpError::NotFound)?;
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
    ) -> Result<(VerificationId, CheckOutcome), OtpError> {
        Self::limit(&self.checks_per_key, "for this API key", owner)?;
        Self::limit(&self.checks_per_ip, "from this address", &ip.to_string())?;
        let (id, record) = self.owned(owner, id).await?;
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
                metrics::counter!(telemetry::VERIFICATIONS_TOTAL, "outcome" => "expired").increment(1);
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
                metrics::counter!(telemetry::VERIFICATIONS_TOTAL, "outcome" => "approved").increment(1);
                return Ok(CheckOutcome::Approved);
            }
            stats.failed_checks_ms.push(now_ms);
            stats.of(&r.owner).failed_checks_ms.push(now_ms);
            r.checks_left = r.checks_left.saturating_sub(1);
            if r.checks_left == 0 {
                r.status = VerificationStatus::MaxAttemptsReached;
                r.done_ms = Some(now_ms);
                metrics::counter!(telemetry::VERIFICATIONS_TOTAL, "outcome" => "max_attempts").increment(1);
                return Ok(CheckOutcome::MaxAttemptsReached);
            }
            Ok(CheckOutcome::Wrong { checks_left: r.checks_left })
        };
        let (record, outcome) = self.store.update_verification(&id, change).await?.ok_or(OtpError::NotFound)?;
        let outcome = outcome?;
        if outcome == CheckOutcome::Approved {
            if let Some(change) = self.guard.approved(&record.to, record.last_send_ms, self.now()) {
                if let Err(e) = self.guard.record(change).await {
                    tracing::error!(error = %e, "fraud guard: lifted suspension not stored");
                }
            }
            // Conversion per carrier: credit the carrier that delivered the last SMS.
            let latest = match record.message_ids.last() {
                Some(m) => self.store.message(m).await.ok().flatten(),
                None => None,
            };
            let carrier = latest.and_then(|m| m.carrier).unwrap_or_else(|| "unknown".into());
            let country = crate::country::label(&record.to);
            metrics::counter!(telemetry::OTP_APPROVED_TOTAL, "carrier" => carrier, "country" => country).increment(1);
        }
        Ok((id, outcome))
    }

    /// A verification with its latest message, for `GET`.
    pub async fn get(&self, owner: &str, id: &str) -> Result<Detail, OtpError> {
        let (id, record) = self.owned(owner, id).await?;
        let latest = record.message_ids.last().copied();
        let message = match &latest {
            Some(mid) => self.store.message(mid).await?,
            None => None,
        };
        Ok(Detail { summary: Summary::of(id, &record, self.now()), delivery: Delivery::of(latest, message.as_ref()) })
    }

    /// Cancels a pending verification: its code stops working.
    pub async fn cancel(&self, owner: &str, id: &str) -> Result<Canceled, OtpError> {
        self.close(owner, id, VerificationStatus::Canceled, "canceled").await
    }

    /// Marks a pending verification approved without a code: the client verified the user
    /// another way (Twilio's `Status=approved`).
    pub async fn approve(&self, owner: &str, id: &str) -> Result<Canceled, OtpError> {
        self.close(owner, id, VerificationStatus::Approved, "approved_by_client").await
    }

    /// Ends a pending verification as `status`.
    async fn close(&self, owner: &str, id: &str, status: VerificationStatus, outcome: &'static str) -> Result<Canceled, OtpError> {
        let (id, _) = self.owned(owner, id).await?;
        let now = self.now();
        let change = |r: &mut VerificationRecord, stats: &mut NumberStats| {
            if shown_status(r, now) != VerificationStatus::Pending {
                return Err(OtpError::NotPending(shown_status(r, now)));
            }
            r.status = status;
            r.done_ms = Some(to_ms(now));
            if status == VerificationStatus::Approved {
                stats.of(&r.owner).approved_ms = Some(to_ms(now));
            }
            Ok(())
        };
        let (record, result) = self.store.update_verification(&id, change).await?.ok_or(OtpError::NotFound)?;
        result?;
        metrics::counter!(telemetry::VERIFICATIONS_TOTAL, "outcome" => outcome).increment(1);
        Ok(Canceled { id, status: record.status })
    }

    /// A client's verification record, for views other than ours (Twilio's).
    pub async fn record(&self, owner: &str, id: &str) -> Result<(VerificationId, VerificationRecord), OtpError> {
        self.owned(owner, id).await
    }

    /// Marks pending verifications past their expiry as expired (the sweep calls this; reads
    /// already show them expired). Returns how many.
    pub async fn expire_stale(&self) -> Result<usize, OtpError> {
        let now = self.now();
        let mut expired = 0;
        for id in self.store.pending_verifications().await? {
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
                metrics::counter!(telemetry::VERIFICATIONS_TOTAL, "outcome" => "expired").increment(1);
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
        let Some(vid) = message.verification else {
            return Ok(None);
        };
        let now = self.now();
        let change = |r: &mut VerificationRecord, _: &mut NumberStats| {
            let is_latest = r.message_ids.last() == Some(&message_id);
            if shown_status(r, now) != VerificationStatus::Pending || !is_latest {
                return None;
            }
            let code = match code::generate(r.code_length) {
                Ok(code) => code,
                Err(e) => return Some(Err(e)),
            };
            r.code_hmac = self.sealed(&vid, &r.context, &code);
            Some(Ok((code, Wording::of(r))))
        };
        let reissued = self.store.update_verification(&vid, change).await?;
        let (record, (code, wording)) = match reissued {
            Some((record, Some(result))) => (record, result?),
            _ => {
                let reason = "its verification ended before it was sent".to_string();
                self.store.finish(&message_id, MessageStatus::Expired, Some(reason), None, now).await?;
                return Ok(None);
            }
        };
        Ok(Some(Job {
            id: message_id,
            sms: self.outbound(&record.to, self.render(&wording, code.expose()), from_ms(record.expires_ms), &wording.locale),
            avoid: Vec::new(),
            only: None,
            verification: Some(vid),
        }))
    }
}

/// An OTP text's encoding and how many SMS it takes (counted as for intake: 8-bit references).
pub(crate) fn measured(text: &str) -> (Option<crate::sms::Encoding>, u16) {
    match crate::sms::Text::encode(text, None) {
        Ok(t) => (Some(t.encoding()), t.segments(crate::sms::Header::Reference8) as u16),
        Err(_) => (None, 1),
    }
}
