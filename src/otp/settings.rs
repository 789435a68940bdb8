//! The verification API's policy (`[otp]`), its defaults and its checks, next to the rules that
//! apply it; `config.rs` only composes the file.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::dispatch::{SPILL_MAX, SPILL_MIN};
use crate::duration::{DAY, HOUR, human as duration};
use crate::echo::shown;

/// The verification API's policy. Defaults are stricter than the paid Verify APIs'.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtpConfig {
    /// `{brand}` in templates.
    pub brand: String,
    /// How long a code works (at most 10 minutes).
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
    /// Digits per code unless the request asks otherwise (4-10).
    pub code_length: usize,
    /// Checks per verification before it locks (`max_attempts_reached`).
    pub max_checks: u32,
    #[serde(deserialize_with = "duration")]
    pub resend_cooldown: Duration,
    /// Sends to one number per `send_window`, per API key ...
    pub max_sends_per_number: u32,
    /// ... and across all API keys: one client cannot use up another's, but all together meet
    /// a ceiling (default three times the per-key limit).
    pub max_sends_per_number_all_keys: Option<u32>,
    #[serde(deserialize_with = "duration")]
    pub send_window: Duration,
    /// Failed checks per number across all its verifications (resends do not reset it), per
    /// API key ...
    pub max_failed_checks_per_number: u32,
    /// ... and across all API keys (default three times the per-key limit).
    pub max_failed_checks_per_number_all_keys: Option<u32>,
    #[serde(deserialize_with = "duration")]
    pub failed_checks_window: Duration,
    /// An OTP SMS with no receipt this long after its submit is resent via the next carrier of
    /// its route (as is one whose receipt says UNDELIV or REJECTD), while the code is valid.
    #[serde(deserialize_with = "duration")]
    pub receipt_timeout: Duration,
    /// As `messages.spill_after`, for OTP messages: a code waits on one carrier at most this
    /// long before it moves to the next carrier of its route.
    #[serde(deserialize_with = "duration")]
    pub spill_after: Duration,
    /// E.164 prefixes codes may be sent to; empty allows all.
    pub allowed_prefixes: Vec<String>,
    /// File holding the 32-byte HMAC key (created with mode 0600 when missing); default
    /// `<data_dir>/otp-hmac.key`.
    pub hmac_key_file: Option<PathBuf>,
    /// Ends each SMS with `@domain #code` (WebOTP, iOS autofill).
    pub webotp_domain: Option<String>,
    /// Ends each SMS with this 11-character Android SMS Retriever hash.
    pub android_app_hash: Option<String>,
    pub default_locale: String,
    /// Text per locale; placeholders `{code}` (required), `{brand}`, `{minutes}`, `{context}`.
    pub templates: std::collections::BTreeMap<String, String>,
    /// The most SMS one code may take (templates are checked against it at load): 1 keeps
    /// every code in one SMS; UCS-2 locales (Russian, Arabic, Chinese...) may need 2.
    pub max_segments: usize,
    /// Token-bucket limits per minute (0 = none).
    pub creates_per_minute_per_key: u32,
    pub creates_per_minute_per_ip: u32,
    pub checks_per_minute_per_key: u32,
    pub checks_per_minute_per_ip: u32,
    pub checks_per_minute_per_number: u32,
    /// Per locale, the template's registration with the carriers' regulator (India's DLT: the
    /// content template id and the principal entity id), sent in the carriers' vendor TLVs.
    pub registrations: std::collections::BTreeMap<String, TemplateRegistration>,
}

/// A template's registration ids.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRegistration {
    pub template_id: String,
    #[serde(default)]
    pub entity_id: Option<String>,
}

impl Default for OtpConfig {
    fn default() -> Self {
        let templates = [
            ("en", "{code} is your {brand} code. It expires in {minutes} min. Never share it."),
            ("fr", "{code} est votre code {brand}. Il expire dans {minutes} min. Ne le partagez jamais."),
            ("de", "{code} ist Ihr {brand}-Code. Er läuft in {minutes} Min. ab. Geben Sie ihn nie weiter."),
            // Without accents: "ó" is not in GSM 03.38 and would force UCS-2 (70 characters).
            ("es", "{code} es tu codigo de {brand}. Caduca en {minutes} min. No lo compartas nunca."),
        ];
        OtpConfig {
            brand: "otpgate".into(),
            ttl: Duration::from_secs(300),
            code_length: 6,
            max_checks: 5,
            resend_cooldown: Duration::from_secs(30),
            max_sends_per_number: 5,
            max_sends_per_number_all_keys: None,
            send_window: Duration::from_secs(3600),
            max_failed_checks_per_number: 20,
            max_failed_checks_per_number_all_keys: None,
            failed_checks_window: Duration::from_secs(24 * 3600),
            receipt_timeout: Duration::from_secs(30),
            spill_after: Duration::from_secs(2),
            allowed_prefixes: Vec::new(),
            hmac_key_file: None,
            webotp_domain: None,
            android_app_hash: None,
            default_locale: "en".into(),
            templates: templates.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            max_segments: 1,
            creates_per_minute_per_key: 600,
            creates_per_minute_per_ip: 60,
            checks_per_minute_per_key: 1200,
            checks_per_minute_per_ip: 120,
            checks_per_minute_per_number: 10,
            registrations: Default::default(),
        }
    }
}

impl OtpConfig {
    /// A locale's SMS with the code 123456: what a registered template must match, but for the
    /// code (India's DLT refuses an SMS that differs from its registered template).
    pub fn sample(&self, locale: &str) -> String {
        let template = self.templates.get(locale).map_or("{code}", String::as_str);
        let fill = super::template::Fill { code: "123456", brand: &self.brand, minutes: self.ttl_minutes(), context: "" };
        super::template::render(template, &fill, &self.autofill())
    }

    /// The autofill lines every OTP text ends with.
    pub fn autofill(&self) -> super::template::Autofill {
        super::template::Autofill { webotp_domain: self.webotp_domain.clone(), android_app_hash: self.android_app_hash.clone() }
    }

    /// Sends to one number per `send_window` across all API keys.
    pub fn sends_ceiling(&self) -> u32 {
        self.max_sends_per_number_all_keys.unwrap_or(self.max_sends_per_number.saturating_mul(3))
    }

    /// Failed checks for one number per `failed_checks_window` across all API keys.
    pub fn failed_checks_ceiling(&self) -> u32 {
        self.max_failed_checks_per_number_all_keys.unwrap_or(self.max_failed_checks_per_number.saturating_mul(3))
    }

    /// Whole minutes of life a fresh code has, as `{minutes}` shows it.
    pub fn ttl_minutes(&self) -> u64 {
        self.ttl.as_secs().div_ceil(60)
    }

    pub(crate) fn problem(&self) -> Option<(String, String)> {
        let p = |k: &str, m: String| Some((format!("otp.{k}"), m));
        if self.ttl < Duration::from_secs(30) || self.ttl > Duration::from_secs(600) {
            return p("ttl", "must be between 30s and 10m (NIST SP 800-63B)".into());
        }
        if !(4..=10).contains(&self.code_length) {
            return p("code_length", "must be 4-10".into());
        }
        if self.max_checks == 0 || self.max_checks > 10 {
            return p("max_checks", "must be 1-10".into());
        }
        if !(Duration::from_secs(1)..=HOUR).contains(&self.receipt_timeout) {
            return p("receipt_timeout", "must be between 1s and 1h".into());
        }
        for (key, value) in [
            ("resend_cooldown", self.resend_cooldown),
            ("send_window", self.send_window),
            ("failed_checks_window", self.failed_checks_window),
        ] {
            if value > 30 * DAY {
                return p(key, "must be at most 30d".into());
            }
        }
        if self.max_sends_per_number > 1000 || self.max_failed_checks_per_number > 10_000 {
            return p("max_sends_per_number", "limits must be at most 1000 sends / 10000 failed checks".into());
        }
        if self.max_sends_per_number_all_keys.is_some_and(|n| n < self.max_sends_per_number || n > 10_000) {
            return p("max_sends_per_number_all_keys", "must be between max_sends_per_number and 10000".into());
        }
        if self.max_failed_checks_per_number_all_keys.is_some_and(|n| n < self.max_failed_checks_per_number || n > 100_000) {
            return p("max_failed_checks_per_number_all_keys", "must be between max_failed_checks_per_number and 100000".into());
        }
        let per_minute = [
            self.creates_per_minute_per_key,
            self.creates_per_minute_per_ip,
            self.checks_per_minute_per_key,
            self.checks_per_minute_per_ip,
            self.checks_per_minute_per_number,
        ];
        if per_minute.iter().any(|&n| n > 10_000_000) {
            return p("creates_per_minute_per_key", "per-minute limits must be at most 10000000 (0 = none)".into());
        }
        if !(SPILL_MIN..=SPILL_MAX).contains(&self.spill_after) {
            return p("spill_after", "must be between 100ms and 10m".into());
        }
        if self.max_sends_per_number == 0 || self.max_failed_checks_per_number == 0 {
            return p("max_sends_per_number", "limits must be at least 1".into());
        }
        for (i, prefix) in self.allowed_prefixes.iter().enumerate() {
            let ok = prefix.len() >= 2 && prefix.starts_with('+') && prefix[1..].bytes().all(|b| b.is_ascii_digit());
            if !ok {
                return p(&format!("allowed_prefixes[{i}]"), format!("{} is not '+' followed by digits", shown(prefix)));
            }
        }
        if self.webotp_domain.is_some() && self.android_app_hash.is_some() {
            return p("android_app_hash", "set either webotp_domain or android_app_hash: both want to end the message".into());
        }
        if let Some(domain) = &self.webotp_domain {
            let ok =
                !domain.is_empty() && domain.contains('.') && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            if !ok {
                return p("webotp_domain", format!("{} is not a host name like \"example.com\"", shown(domain)));
            }
        }
        if let Some(hash) = &self.android_app_hash {
            if hash.chars().count() != 11 {
                return p("android_app_hash", "must be the 11-character hash Google's tools print".into());
            }
        }
        if self.brand.chars().count() > 64
            || self.default_locale.len() > 16
            || self.templates.len() > 64
            || self.allowed_prefixes.len() > 1000
        {
            return p("brand", "brand at most 64 characters, locales 16, at most 64 templates and 1000 allowed prefixes".into());
        }
        if let Some((locale, _)) = self.templates.iter().find(|(locale, template)| locale.len() > 16 || template.chars().count() > 1000) {
            return p(&format!("templates.{}", shown(locale)), "a locale is at most 16 characters and a template at most 1000".into());
        }
        if self.webotp_domain.as_ref().is_some_and(|d| d.len() > 253) {
            return p("webotp_domain", "must be at most 253 characters".into());
        }
        if !self.templates.contains_key(&self.default_locale) {
            return p("default_locale", format!("no template for {}", shown(&self.default_locale)));
        }
        if !(1..=crate::smpp::message::MAX_PARTS).contains(&self.max_segments) {
            return p("max_segments", format!("must be 1-{}", crate::smpp::message::MAX_PARTS));
        }
        for (locale, registration) in &self.registrations {
            let key = format!("registrations.{}", shown(locale));
            if !self.templates.contains_key(locale) {
                return p(&key, "no template of this locale to register".into());
            }
            let ids = std::iter::once(&registration.template_id).chain(registration.entity_id.as_ref());
            if !ids.into_iter().all(|id| crate::smpp::tlv::valid_id(id)) {
                return p(&key, "ids are 1-64 visible ASCII characters".into());
            }
        }
        let autofill = self.autofill();
        for (locale, template) in &self.templates {
            if let Err(m) = super::template::validate(template, &self.brand, self.ttl_minutes(), &autofill, self.max_segments) {
                return p(&format!("templates.{locale}"), m);
            }
        }
        None
    }
}
