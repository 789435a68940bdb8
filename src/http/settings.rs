//! What the HTTP intake is configured with: `[[api_keys]]` and `[messages]` (the validity a
//! message may ask for; its dispatch bounds are read from the same section), with their checks.

use std::time::Duration;

use serde::Deserialize;

use crate::dispatch::{PartialFailure, SPILL_MAX, SPILL_MIN};

/// A client allowed to call the HTTP API. Only the key's SHA-256 is configured, never the key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub name: String,
    /// 64 hex digits: `echo -n KEY | otpgate hash-key`.
    pub key_sha256: String,
    /// An operator's key: sees every client's records where the API lists across clients
    /// (dead webhook events). Clients' own calls work as for any key.
    #[serde(default)]
    pub admin: bool,
    /// Twilio Verify v2 credentials that act as this key on `/v2/Services/...`.
    #[serde(default)]
    pub twilio: Option<TwilioAccount>,
    /// Kannel sendsms credentials that act as this key on `/cgi-bin/sendsms`.
    #[serde(default)]
    pub kannel: Option<KannelUser>,
}

/// What a Twilio SDK sends as Basic auth, and the one Verify service it may use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioAccount {
    /// `AC` and 32 hex digits: the Basic auth user name.
    pub account_sid: String,
    /// SHA-256 of the auth token (`echo -n TOKEN | otpgate hash-key`), never the token.
    pub auth_token_sha256: String,
    /// `VA` and 32 hex digits: the service in the URL.
    pub service_sid: String,
}

/// A Kannel sendsms user (`username`/`password` in the request).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KannelUser {
    pub username: String,
    /// SHA-256 of the password (`echo -n PASSWORD | otpgate hash-key`), never the password.
    pub password_sha256: String,
}

/// `prefix` and 32 hex digits: a Twilio SID.
pub(crate) fn is_sid(text: &str, prefix: &str) -> bool {
    text.len() == 34 && text.starts_with(prefix) && text[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ApiKeyConfig {
    /// The configured hash as bytes (validated at load).
    pub fn hash(&self) -> [u8; 32] {
        crate::hex::decode32(&self.key_sha256)
    }

    /// The first problem with this key: (field, why).
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        if self.name.is_empty() || self.name.len() > 64 {
            return Some(("name", "must be 1-64 characters".into()));
        }
        if !is_sha256_hex(&self.key_sha256) {
            return Some(("key_sha256", "must be the 64-hex-digit SHA-256 of the key (otpgate hash-key prints it), not the key".into()));
        }
        if let Some(twilio) = &self.twilio {
            if !is_sid(&twilio.account_sid, "AC") {
                return Some(("twilio.account_sid", "must be \"AC\" and 32 hex digits".into()));
            }
            if !is_sid(&twilio.service_sid, "VA") {
                return Some(("twilio.service_sid", "must be \"VA\" and 32 hex digits".into()));
            }
            if !is_sha256_hex(&twilio.auth_token_sha256) {
                return Some((
                    "twilio.auth_token_sha256",
                    "must be the SHA-256 of the auth token (otpgate hash-key prints it), not the token".into(),
                ));
            }
        }
        if let Some(kannel) = &self.kannel {
            if kannel.username.is_empty() || kannel.username.len() > 64 || kannel.username.chars().any(char::is_control) {
                return Some(("kannel.username", "must be 1-64 characters".into()));
            }
            if !is_sha256_hex(&kannel.password_sha256) {
                return Some((
                    "kannel.password_sha256",
                    "must be the SHA-256 of the password (otpgate hash-key prints it), not the password".into(),
                ));
            }
        }
        None
    }
}

/// Limits for messages taken in over HTTP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessagesConfig {
    /// Validity of a message whose request names none.
    #[serde(deserialize_with = "crate::duration::human")]
    pub default_validity: Duration,
    /// The longest validity a request may ask for ...
    #[serde(deserialize_with = "crate::duration::human")]
    pub max_validity: Duration,
    /// ... and the shortest: below it a message would mostly expire unsent.
    #[serde(deserialize_with = "crate::duration::human")]
    pub min_validity: Duration,
    /// The longest a message waits on one carrier (its rate cap, window or throttling) before
    /// it moves to the next carrier of its route that has room.
    #[serde(deserialize_with = "crate::duration::human")]
    pub spill_after: Duration,
    /// Sends again after a submit went out and got no readable answer (connection lost,
    /// response timeout, unreadable response, crash mid-submit); each may be a duplicate at the
    /// handset. Past it the message fails.
    pub max_unconfirmed_resends: u32,
    /// Queued messages held in memory for the dispatcher, at most. Past it, more wait in the
    /// store and are handed over as the dispatcher drains: memory stays bounded however far
    /// intake outruns the carriers (an outage, a throttled carrier).
    pub dispatch_backlog: usize,
    /// How long a request may wait for room while `dispatch_backlog` messages or more wait to
    /// be sent and the dispatcher is moving (0s: never): a daemon short of CPU then sends what
    /// it took before it takes more, rather than letting codes queue for seconds. Not waited
    /// while the dispatcher is held up (an outage): the store holds the queue.
    #[serde(deserialize_with = "crate::duration::human")]
    pub backlog_wait: Duration,
    /// The most SMS one message may take; a longer text is refused (422 text_too_long).
    pub max_segments: usize,
    /// When a carrier took some parts of a long message and refused a later one: send the whole
    /// message again (elsewhere, with a new reference) or fail it.
    pub partial_failure: PartialFailure,
}

impl Default for MessagesConfig {
    fn default() -> Self {
        MessagesConfig {
            default_validity: Duration::from_secs(3600),
            max_validity: Duration::from_secs(72 * 3600),
            min_validity: Duration::from_secs(30),
            spill_after: Duration::from_secs(5),
            max_unconfirmed_resends: 2,
            dispatch_backlog: 8192,
            backlog_wait: Duration::from_millis(250),
            max_segments: 6,
            partial_failure: PartialFailure::Resend,
        }
    }
}

impl MessagesConfig {
    /// The first setting out of bounds: (key under `messages.`, why).
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        if self.min_validity < Duration::from_secs(1) || self.min_validity > self.max_validity {
            return Some(("min_validity", "must be at least 1s and at most messages.max_validity".into()));
        }
        if self.default_validity < self.min_validity || self.max_validity < self.default_validity {
            return Some(("default_validity", "must be between messages.min_validity and messages.max_validity".into()));
        }
        if !(SPILL_MIN..=SPILL_MAX).contains(&self.spill_after) {
            return Some(("spill_after", "must be between 100ms and 10m".into()));
        }
        if self.max_unconfirmed_resends > 10 {
            return Some(("max_unconfirmed_resends", "must be 0-10: each resend may be a duplicate SMS".into()));
        }
        if !(1..=crate::smpp::message::MAX_PARTS).contains(&self.max_segments) {
            return Some(("max_segments", format!("must be 1-{}", crate::smpp::message::MAX_PARTS)));
        }
        if !(16..=1_000_000).contains(&self.dispatch_backlog) {
            return Some(("dispatch_backlog", "must be 16-1000000".into()));
        }
        if self.backlog_wait > Duration::from_secs(10) {
            return Some(("backlog_wait", "must be at most 10s".into()));
        }
        // SMPP relative validity counts at most 99 days in our encoding.
        if self.max_validity > Duration::from_secs(99 * 24 * 3600) {
            return Some(("max_validity", "must be at most 99 days".into()));
        }
        None
    }
}
