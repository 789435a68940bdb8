//! `[[webhooks]]`: where events go, which ones, signed with which secret, and how hard to try.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::sign::{SecretError, Signer};
use crate::echo::shown;
use crate::store::events::{DLR_ENDPOINT, EventType, Subscription, glob};

/// One endpoint.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Its name in metrics, logs and the dead-event listing.
    pub name: String,
    /// `https://...` (the system's root certificates) or `http://...` (internal endpoints).
    pub url: String,
    /// `whsec_<base64>`; several, space-separated, while a secret is being rotated (each
    /// request then carries a signature by each).
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the secret(s) instead (kept out of the config file).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Event types to send, by glob on the type (`message.*`); all by default.
    #[serde(default = "every_event")]
    pub events: Vec<String>,
    /// Only events of these API keys' records; all by default.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// One attempt's limit (connect, send, answer).
    #[serde(default = "ten_seconds", deserialize_with = "crate::duration::human")]
    pub timeout: Duration,
    /// How long an event is retried before it is given up on (listed as dead).
    #[serde(default = "a_day", deserialize_with = "crate::duration::human")]
    pub retry_for: Duration,
    /// Requests to this endpoint at once, at most (events of one message are never concurrent).
    #[serde(default = "in_flight")]
    pub max_in_flight: usize,
    /// The wait after a first failure (of an event, or of the whole endpoint), doubling with
    /// each further failure up to `backoff_max`; ±20 % jitter.
    #[serde(default = "five_seconds", deserialize_with = "crate::duration::human")]
    pub backoff_min: Duration,
    #[serde(default = "an_hour", deserialize_with = "crate::duration::human")]
    pub backoff_max: Duration,
    /// The built-in endpoint of Kannel delivery reports: each event's body is the URL to GET
    /// (no body, no signature) instead of a body to POST to `url`.
    #[serde(skip)]
    pub(crate) url_in_event: bool,
}

/// `[kannel_dlr]`: how Kannel delivery-report URLs (`dlr-url`) are fetched: from the durable
/// outbox like webhook events, retried with backoff, kept as dead events past `retry_for`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DlrFetchConfig {
    #[serde(deserialize_with = "crate::duration::human")]
    pub timeout: Duration,
    #[serde(deserialize_with = "crate::duration::human")]
    pub retry_for: Duration,
    pub max_in_flight: usize,
    #[serde(deserialize_with = "crate::duration::human")]
    pub backoff_min: Duration,
    #[serde(deserialize_with = "crate::duration::human")]
    pub backoff_max: Duration,
}

impl Default for DlrFetchConfig {
    fn default() -> Self {
        DlrFetchConfig {
            timeout: ten_seconds(),
            retry_for: a_day(),
            max_in_flight: in_flight(),
            backoff_min: five_seconds(),
            backoff_max: an_hour(),
        }
    }
}

impl DlrFetchConfig {
    /// The built-in endpoint that fetches delivery-report URLs.
    pub(crate) fn endpoint(&self) -> WebhookConfig {
        WebhookConfig {
            name: DLR_ENDPOINT.to_string(),
            url: String::new(),
            secret: None,
            secret_file: None,
            events: Vec::new(),
            api_keys: Vec::new(),
            timeout: self.timeout,
            retry_for: self.retry_for,
            max_in_flight: self.max_in_flight,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
            url_in_event: true,
        }
    }
}

fn every_event() -> Vec<String> {
    vec!["*".into()]
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

fn a_day() -> Duration {
    crate::duration::DAY
}

fn in_flight() -> usize {
    32
}

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}

fn an_hour() -> Duration {
    crate::duration::HOUR
}

/// The secret never shows, not even in `Debug`.
impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("events", &self.events)
            .field("api_keys", &self.api_keys)
            .field("timeout", &self.timeout)
            .field("retry_for", &self.retry_for)
            .field("max_in_flight", &self.max_in_flight)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("url_in_event", &self.url_in_event)
            .finish()
    }
}

impl WebhookConfig {
    /// The signing keys: from `secret`, else from `secret_file`.
    pub(crate) fn signer(&self) -> Result<Signer, SecretError> {
        match (&self.secret, &self.secret_file) {
            (Some(text), None) => Signer::from_secrets(text),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| SecretError::File(format!("{}: {e}", path.display())))?;
                Signer::from_secrets(&text)
            }
            _ => Err(SecretError::Missing),
        }
    }

    /// Whether requests go out unencrypted (allowed for internal endpoints; `check-config` says so).
    pub fn plain_http(&self) -> bool {
        self.url.starts_with("http://")
    }

    pub(crate) fn subscription(&self) -> Subscription {
        Subscription { name: self.name.clone(), types: self.events.clone(), api_keys: self.api_keys.clone() }
    }

    /// The first problem with this endpoint: (field, why). `api_keys` are the configured key names.
    pub(crate) fn problem(&self, api_keys: &[&str]) -> Option<(&'static str, String)> {
        let name_ok = (1..=64).contains(&self.name.len()) && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return Some(("name", "must be 1-64 characters of A-Z a-z 0-9 - _ .".into()));
        }
        if self.name == DLR_ENDPOINT {
            return Some(("name", format!("{DLR_ENDPOINT} is the name of the built-in endpoint of Kannel delivery reports")));
        }
        if let Some(problem) = url_problem(&self.url) {
            return Some(("url", problem));
        }
        if let Err(e) = self.signer() {
            let field = if self.secret_file.is_some() && self.secret.is_none() { "secret_file" } else { "secret" };
            return Some((field, e.to_string()));
        }
        if self.events.is_empty() {
            return Some(("events", "must name at least one event type (or leave it out for all)".into()));
        }
        for pattern in &self.events {
            if !EventType::ALL.iter().any(|t| glob(pattern, t.name())) {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.name()).collect();
                return Some(("events", format!("{} matches no event type; they are: {}", shown(pattern), known.join(", "))));
            }
        }
        if let Some(unknown) = self.api_keys.iter().find(|k| !api_keys.contains(&k.as_str())) {
            return Some(("api_keys", format!("no [[api_keys]] entry named {}", shown(unknown))));
        }
        self.limits_problem()
    }

    /// The first timing or concurrency setting out of bounds.
    pub(crate) fn limits_problem(&self) -> Option<(&'static str, String)> {
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&self.timeout) {
            return Some(("timeout", "must be between 100ms and 5m".into()));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(30 * 24 * 3600)).contains(&self.retry_for) {
            return Some(("retry_for", "must be between 1s and 30 days".into()));
        }
        if !(Duration::from_millis(100)..=crate::duration::HOUR).contains(&self.backoff_min) {
            return Some(("backoff_min", "must be between 100ms and 1h".into()));
        }
        if !(self.backoff_min..=crate::duration::DAY).contains(&self.backoff_max) {
            return Some(("backoff_max", "must be between backoff_min and 24h".into()));
        }
        if !(1..=1024).contains(&self.max_in_flight) {
            return Some(("max_in_flight", "must be 1-1024".into()));
        }
        None
    }
}

/// Why `url` cannot be an endpoint, if it cannot.
fn url_problem(url: &str) -> Option<String> {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return Some(format!("{} is not a URL", shown(url)));
    };
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Some("must not hold credentials (they would show wherever the URL does): the signature authenticates us".into());
    }
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => None,
        (Some("http" | "https"), _) => Some(format!("{} has no host", shown(url))),
        _ => Some(format!("{} must start with https:// (or http:// for an internal endpoint)", shown(url))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> WebhookConfig {
        WebhookConfig {
            name: "backend".into(),
            url: "https://backend.example/events".into(),
            secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            secret_file: None,
            events: every_event(),
            api_keys: Vec::new(),
            timeout: ten_seconds(),
            retry_for: a_day(),
            max_in_flight: 32,
            backoff_min: five_seconds(),
            backoff_max: an_hour(),
            url_in_event: false,
        }
    }

    #[test]
    fn each_field_is_checked_and_the_secret_never_shows() {
        let keys = ["backend"];
        assert_eq!(endpoint().problem(&keys), None);
        let field = |c: WebhookConfig| c.problem(&keys).map(|(f, _)| f);
        assert_eq!(field(WebhookConfig { name: "has space".into(), ..endpoint() }), Some("name"));
        assert_eq!(field(WebhookConfig { url: "ftp://x/".into(), ..endpoint() }), Some("url"));
        assert_eq!(field(WebhookConfig { url: "https:///path".into(), ..endpoint() }), Some("url"));
        let (_, message) = WebhookConfig { url: "https://user:hunter2@backend.example/".into(), ..endpoint() }.problem(&keys).unwrap();
        assert!(message.contains("credentials") && !message.contains("hunter2"), "{message}");
        assert_eq!(field(WebhookConfig { secret: None, ..endpoint() }), Some("secret"));
        assert_eq!(field(WebhookConfig { secret: Some("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()), ..endpoint() }), Some("secret"));
        assert_eq!(field(WebhookConfig { secret_file: Some("/nonexistent".into()), secret: None, ..endpoint() }), Some("secret_file"));
        assert_eq!(field(WebhookConfig { events: vec!["mesage.*".into()], ..endpoint() }), Some("events"));
        assert_eq!(field(WebhookConfig { api_keys: vec!["nobody".into()], ..endpoint() }), Some("api_keys"));
        assert_eq!(field(WebhookConfig { timeout: Duration::from_millis(10), ..endpoint() }), Some("timeout"));
        assert_eq!(field(WebhookConfig { max_in_flight: 0, ..endpoint() }), Some("max_in_flight"));
        assert_eq!(field(WebhookConfig { backoff_max: Duration::from_secs(1), ..endpoint() }), Some("backoff_max"), "below backoff_min");
        let bad = WebhookConfig { secret: Some("whsec_!!!notbase64 MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()), ..endpoint() };
        let (_, message) = bad.problem(&keys).unwrap();
        assert!(!message.contains("notbase64") && !message.contains("MfKQ9r8"), "{message}");
        assert!(!format!("{:?}", endpoint()).contains("MfKQ9r8"));
        assert!(field(WebhookConfig { events: vec!["verification.*".into(), "message.delivered".into()], ..endpoint() }).is_none());
    }
}
