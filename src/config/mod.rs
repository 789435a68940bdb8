//! The daemon's configuration: a TOML file, parsed with serde and then validated.
//!
//! Parsing (`deny_unknown_fields`, typed values) catches typos and wrong types; [`Config::validate`]
//! catches what types cannot express (SMPP field limits, unique names, sane timers). Every error
//! names the file and the key, so an operator can fix the file without reading our source.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod builder;

pub use crate::cluster::settings::ClusterConfig;
use crate::echo::shown;
pub use crate::fraud::FraudConfig;
pub use crate::http::settings::{ApiKeyConfig, MessagesConfig};
pub use crate::otp::settings::OtpConfig;
pub use crate::route::{RouteConfig, Strategy};
pub use crate::smpp::settings::{BindType, CarrierConfig};
pub use crate::store::settings::StoreConfig;
pub use crate::webhook::WebhookConfig;
use crate::webhook::settings::DlrFetchConfig;
pub use builder::ConfigBuilder;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    /// TOML syntax, an unknown key or a wrong type; toml's message names the key and the line.
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: {key}: {message}")]
    Invalid { file: PathBuf, key: String, message: String },
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub messages: MessagesConfig,
    #[serde(default)]
    pub otp: OtpConfig,
    #[serde(default)]
    pub carriers: Vec<CarrierConfig>,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    #[serde(default)]
    pub kannel_dlr: DlrFetchConfig,
    #[serde(default)]
    pub fraud: FraudConfig,
}

impl Config {
    /// Every endpoint events go out to: the configured webhooks, and the built-in one of Kannel
    /// delivery reports when a Kannel user is configured.
    pub(crate) fn event_endpoints(&self) -> Vec<WebhookConfig> {
        let mut endpoints = self.webhooks.clone();
        if self.api_keys.iter().any(|k| k.kannel.is_some()) {
            endpoints.push(self.kannel_dlr.endpoint());
        }
        endpoints
    }
}

/// Listeners and the data directory.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub http_listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub data_dir: PathBuf,
    /// How long a graceful shutdown may take before in-flight work is abandoned.
    #[serde(deserialize_with = "crate::duration::human")]
    pub shutdown_timeout: Duration,
    /// HTTP connections open at once, at most; more are answered 503 and closed.
    pub http_max_connections: usize,
    /// A request's head (request line and headers) must arrive within this, on a new
    /// connection or after the previous response: an idle kept-alive connection is closed
    /// after it too.
    #[serde(deserialize_with = "crate::duration::human")]
    pub http_header_timeout: Duration,
    /// A request's body must arrive within this once its head has.
    #[serde(deserialize_with = "crate::duration::human")]
    pub http_body_timeout: Duration,
    /// Both set: `http_listen` serves HTTPS only, with this certificate chain (PEM) ...
    pub tls_cert: Option<PathBuf>,
    /// ... and its private key (PEM). SIGHUP reads both again (after a renewal).
    pub tls_key: Option<PathBuf>,
    /// The metrics listener serves HTTPS too, with the same certificate.
    pub metrics_tls: bool,
}

impl ServerConfig {
    /// The listeners' TLS, its files read and checked (`None`: plain HTTP).
    pub fn tls(&self) -> Result<Option<crate::tls::ServerTls>, crate::tls::TlsError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => crate::tls::ServerTls::new(cert, key, None).map(Some),
            _ => Ok(None),
        }
    }

    /// Whether `other` differs only in what a reload applies live: the certificate files.
    pub(crate) fn same_listeners(&self, other: &ServerConfig) -> bool {
        let both_tls = self.tls_cert.is_some() && other.tls_cert.is_some();
        let other = match both_tls {
            true => ServerConfig { tls_cert: self.tls_cert.clone(), tls_key: self.tls_key.clone(), ..other.clone() },
            false => other.clone(),
        };
        *self == other
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9898)),
            data_dir: PathBuf::from("/var/lib/otpgate"),
            shutdown_timeout: Duration::from_secs(10),
            http_max_connections: 1024,
            http_header_timeout: Duration::from_secs(10),
            http_body_timeout: Duration::from_secs(10),
            tls_cert: None,
            tls_key: None,
            metrics_tls: false,
        }
    }
}

/// Keys whose values are secrets: never echoed, whatever the error.
const SECRET_KEYS: &[&str] = &["password", "secret"];

/// A TOML parser message made safe to print: the parser quotes the offending line, which on a
/// secret key's line is the secret itself. Such lines, and every fragment of their value, are
/// replaced; long quoted lines are cut.
fn redacted(message: &str, source: &str) -> String {
    let secrets: Vec<&str> = source
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(key, _)| SECRET_KEYS.contains(&key.trim().trim_matches('"')))
        .map(|(_, value)| value.trim().trim_matches('"').trim())
        .filter(|value| value.len() >= 3)
        .collect();
    let lines = message.trim_end().lines().map(|line| {
        let secret_line =
            secrets.iter().any(|secret| line.contains(secret)) || SECRET_KEYS.iter().any(|key| line.contains(key) && line.contains('='));
        if secret_line {
            let keep = line.find('|').map_or(0, |bar| bar + 1);
            format!("{} <secret line not shown>", &line[..keep])
        } else if line.chars().count() > 2 * crate::echo::MAX_ECHO {
            let cut = line.char_indices().nth(2 * crate::echo::MAX_ECHO).map_or(line.len(), |(i, _)| i);
            format!("{}... (line cut)", &line[..cut])
        } else {
            line.to_string()
        }
    });
    lines.collect::<Vec<_>>().join("\n")
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: path.to_path_buf(), source })?;
        Config::from_toml(&text, path)
    }

    /// Parses and validates TOML text; `file` is only used in error messages.
    pub fn from_toml(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { file: file.to_path_buf(), message: redacted(&e.to_string(), text) })?;
        config.validate(file)?;
        Ok(config)
    }

    /// Checks what the types cannot: limits, uniqueness, timer sanity.
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid { file: file.to_path_buf(), key, message };
        if self.carriers.is_empty() {
            return Err(invalid("carriers".into(), "at least one [[carriers]] section is required".into()));
        }
        for (i, carrier) in self.carriers.iter().enumerate() {
            let key = |field: &str| format!("carriers[{i}].{field}");
            if let Some((field, message)) = carrier.problem() {
                return Err(invalid(key(field), message));
            }
            if self.carriers[..i].iter().any(|c| c.name == carrier.name) {
                return Err(invalid(key("name"), format!("carrier name {:?} is used twice; names must be unique", carrier.name)));
            }
        }
        for (i, api_key) in self.api_keys.iter().enumerate() {
            if let Some((field, message)) = api_key.problem() {
                return Err(invalid(format!("api_keys[{i}].{field}"), message));
            }
            if self.api_keys[..i].iter().any(|k| k.name == api_key.name) {
                return Err(invalid(format!("api_keys[{i}].name"), format!("{:?} is used twice", api_key.name)));
            }
            let sid = |k: &ApiKeyConfig| k.twilio.as_ref().map(|t| t.account_sid.to_ascii_lowercase());
            if sid(api_key).is_some() && self.api_keys[..i].iter().any(|k| sid(k) == sid(api_key)) {
                return Err(invalid(format!("api_keys[{i}].twilio.account_sid"), "is used by another key".into()));
            }
            let user = |k: &ApiKeyConfig| k.kannel.as_ref().map(|u| u.username.clone());
            if user(api_key).is_some() && self.api_keys[..i].iter().any(|k| user(k) == user(api_key)) {
                return Err(invalid(format!("api_keys[{i}].kannel.username"), "is used by another key".into()));
            }
        }
        if let Some((field, message)) = self.messages.problem() {
            return Err(invalid(format!("messages.{field}"), message));
        }
        // Each route on its own, then across sections: prefixes routed once, carriers that exist.
        let mut seen_prefixes: Vec<&str> = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            let key = |field: &str| format!("routes[{i}].{field}");
            if let Some((field, message)) = route.problem() {
                return Err(invalid(key(field), message));
            }
            for prefix in &route.prefixes {
                if seen_prefixes.contains(&prefix.as_str()) {
                    return Err(invalid(key("prefixes"), format!("{} is routed twice", shown(prefix))));
                }
                seen_prefixes.push(prefix);
            }
            for name in &route.carriers {
                if !self.carriers.iter().any(|c| &c.name == name) {
                    return Err(invalid(key("carriers"), format!("no carrier named {}", shown(name))));
                }
            }
        }
        let key_names: Vec<&str> = self.api_keys.iter().map(|k| k.name.as_str()).collect();
        for (i, webhook) in self.webhooks.iter().enumerate() {
            if let Some((field, message)) = webhook.problem(&key_names) {
                return Err(invalid(format!("webhooks[{i}].{field}"), message));
            }
            if self.webhooks[..i].iter().any(|w| w.name == webhook.name) {
                return Err(invalid(format!("webhooks[{i}].name"), format!("{:?} is used twice", webhook.name)));
            }
        }
        if let Some((field, message)) = self.kannel_dlr.endpoint().limits_problem() {
            return Err(invalid(format!("kannel_dlr.{field}"), message));
        }
        if let Some((key, message)) = self.otp.problem() {
            return Err(invalid(key, message));
        }
        if let Some((field, message)) = self.fraud.problem() {
            return Err(invalid(format!("fraud.{field}"), message));
        }
        if let Some((field, message)) = self.store.problem() {
            return Err(invalid(format!("store.{field}"), message));
        }
        if let Some((field, message)) = self.cluster.problem() {
            return Err(invalid(format!("cluster.{field}"), message));
        }
        let sv = &self.server;
        if sv.data_dir.as_os_str().len() > 4096 {
            return Err(invalid("server.data_dir".into(), "must be a path of at most 4096 bytes".into()));
        }
        if !(1..=1_000_000).contains(&sv.http_max_connections) {
            return Err(invalid("server.http_max_connections".into(), "must be 1-1000000".into()));
        }
        for (key, value) in [("server.http_header_timeout", sv.http_header_timeout), ("server.http_body_timeout", sv.http_body_timeout)] {
            if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&value) {
                return Err(invalid(key.into(), "must be between 100ms and 1h".into()));
            }
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&sv.shutdown_timeout) {
            return Err(invalid("server.shutdown_timeout".into(), "must be between 1s and 1h".into()));
        }
        if sv.tls_cert.is_some() != sv.tls_key.is_some() {
            return Err(invalid("server.tls_key".into(), "tls_cert and tls_key go together".into()));
        }
        if sv.metrics_tls && sv.tls_cert.is_none() {
            return Err(invalid("server.metrics_tls".into(), "needs server.tls_cert and server.tls_key".into()));
        }
        if let Err(e) = sv.tls() {
            return Err(invalid("server.tls_cert".into(), e.to_string()));
        }
        Ok(())
    }
}

impl Config {
    /// A one-screen summary for `otpgate check-config`. Passwords are never shown.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let s = &self.server;
        let now = std::time::SystemTime::now();
        match s.tls().ok().flatten() {
            None => {
                let _ = writeln!(out, "listeners: http {}  metrics {}", s.http_listen, s.metrics_listen);
            }
            Some(tls) => {
                let metrics = if s.metrics_tls { "https" } else { "http" };
                let _ = writeln!(out, "listeners: https {}  metrics {metrics} {}", s.http_listen, s.metrics_listen);
                let _ = writeln!(out, "https:     {}: {}", tls.chain().path.display(), tls.chain().describe(now));
            }
        }
        let st = &self.store;
        match (&st.backend, &st.postgres_url) {
            (crate::store::settings::BackendKind::Postgres, Some(url)) => {
                // The URL holds no password (validated).
                let _ = writeln!(
                    out,
                    "store:     postgres {url}  (pool {}, node {}, retention {})",
                    st.pool_size,
                    self.cluster.node_name(),
                    humantime::format_duration(st.retention)
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "data_dir:  {}  (retention {}, cache {} MiB)",
                    s.data_dir.display(),
                    humantime::format_duration(st.retention),
                    st.cache_capacity_mb
                );
            }
        }
        let names: Vec<&str> = self.api_keys.iter().map(|k| k.name.as_str()).collect();
        let _ = writeln!(out, "api keys:  {} {:?}", names.len(), names);
        let o = &self.otp;
        let allowed = if o.allowed_prefixes.is_empty() { "all".to_string() } else { o.allowed_prefixes.join(" ") };
        let locales: Vec<&str> = o.templates.keys().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "otp:       ttl {}  {} digits  {} checks  cooldown {}  destinations {allowed}  locales {}",
            humantime::format_duration(o.ttl),
            o.code_length,
            o.max_checks,
            humantime::format_duration(o.resend_cooldown),
            locales.join(",")
        );
        for (locale, registration) in &o.registrations {
            let _ = writeln!(
                out,
                "           registered {locale}: template {} entity {}: {:?}",
                registration.template_id,
                registration.entity_id.as_deref().unwrap_or("-"),
                o.sample(locale)
            );
        }
        if self.routes.is_empty() {
            let _ = writeln!(out, "routes:    none: every destination fails over through the carriers in order");
        }
        for r in &self.routes {
            let _ = writeln!(
                out,
                "route:     {} -> {} ({:?}{})",
                r.prefixes.join(" "),
                r.carriers.join(", "),
                r.strategy,
                if r.weights.is_empty() { String::new() } else { format!(" {:?}", r.weights) }
            );
            // The sender each carrier uses for this route's messages that name none.
            let senders: Vec<String> = r
                .carriers
                .iter()
                .map(|name| {
                    let carrier_default = self.carriers.iter().find(|c| &c.name == name).map_or("", |c| c.source_addr.as_str());
                    let from = r.from_by_carrier.get(name).or(r.from.as_ref()).map_or(carrier_default, String::as_str);
                    format!("{name} {from:?}")
                })
                .collect();
            let allowed = r.allowed_from.list().map_or("any".to_string(), |list| list.join(", "));
            let _ = writeln!(out, "           senders: {}  requests may name: {allowed}", senders.join(", "));
        }
        if self.webhooks.is_empty() {
            let _ = writeln!(out, "webhooks:  none: clients learn of state changes by GET only");
        }
        for w in &self.webhooks {
            let secrets = w.signer().map_or(0, |s| s.secrets());
            let _ = writeln!(
                out,
                "webhook:   {} -> {}  events {}  api keys {}  secrets {secrets}{}  timeout {}  retry for {}{}",
                w.name,
                w.url,
                w.events.join(","),
                if w.api_keys.is_empty() { "all".to_string() } else { w.api_keys.join(",") },
                if secrets > 1 { " (rotating: each signs)" } else { "" },
                humantime::format_duration(w.timeout),
                humantime::format_duration(w.retry_for),
                if w.plain_http() { "  WARNING: plain http, events travel unencrypted" } else { "" },
            );
        }
        let f = &self.fraud;
        let _ = writeln!(
            out,
            "fraud:     {:?}: prefix = country code + {} digits; suspend under {:.0} % conversion over {} (>= {} settled sends) or at {} sends a minute and {}x the day's average; {} then a probe every {}; pinned allow {} block {}",
            f.mode,
            f.prefix_digits,
            f.min_conversion * 100.0,
            humantime::format_duration(f.window),
            f.min_sends,
            f.spike_sends,
            f.spike_factor,
            humantime::format_duration(f.suspend_for),
            humantime::format_duration(f.probe_every),
            f.always_allow.len(),
            f.always_block.len(),
        );
        let _ = writeln!(out, "carriers:  {}", self.carriers.len());
        for c in &self.carriers {
            let bind = match c.bind {
                BindType::Transceiver => "transceiver",
                BindType::TransmitterReceiver => "transmitter+receiver",
            };
            let tps = if c.max_tps == 0 { "unlimited".to_string() } else { c.max_tps.to_string() };
            let _ = writeln!(
                out,
                "  {:<12} {:<24} {bind} x{}  window {}  max_tps {tps}  system_id {:?}  source {:?} ({})",
                c.name,
                c.endpoint(),
                c.sessions,
                c.window,
                c.system_id,
                c.source_addr,
                c.source_kind(),
            );
            let alphabet = match c.default_alphabet {
                crate::sms::DefaultAlphabet::Gsm7 => "",
                crate::sms::DefaultAlphabet::Latin1 => "  data_coding 0 read as Latin-1",
                crate::sms::DefaultAlphabet::Ascii => "  data_coding 0 read as ASCII",
            };
            let _ = writeln!(out, "  {:<12} long SMS: {}{alphabet}", "", c.long_sms.name());
            if !c.tlvs.is_empty() {
                let tlvs: Vec<String> = c.tlvs.iter().map(|(tag, value)| format!("{tag}={value:?}")).collect();
                let _ = writeln!(out, "  {:<12} vendor TLVs: {}", "", tlvs.join("  "));
            }
            let _ = writeln!(
                out,
                "  {:<12} timers: enquire_link {}  response {}  reconnect {}..{}",
                "",
                humantime::format_duration(c.enquire_link_interval),
                humantime::format_duration(c.response_timeout),
                humantime::format_duration(c.reconnect_min),
                humantime::format_duration(c.reconnect_max),
            );
            if let Ok(Some(tls)) = c.tls_connector() {
                let name = c.tls_server_name.as_deref().unwrap_or(&c.host);
                let trust = match &c.tls_ca_file {
                    None => "the system's root certificates".to_string(),
                    Some(path) => path.display().to_string(),
                };
                let _ = writeln!(out, "  {:<12} tls: 1.2/1.3, certificate must name {name:?}, trusting {trust}", "");
                for file in &tls.files {
                    let _ = writeln!(out, "  {:<12}   {}: {}", "", file.path.display(), file.describe(now));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[carriers]]
name = "alpha"
host = "127.0.0.1"
system_id = "otpgate"
password = "secret"
source_addr = "Acme"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"))
    }

    /// The PostgreSQL backend: its URL is required, checked, and must not carry the password,
    /// which is read from a file (or PGPASSWORD) and never shown.
    #[test]
    fn the_postgres_backend_needs_a_url_without_a_password() {
        let with = |store: &str| parse(&format!("{MINIMAL}\n[store]\n{store}\n"));
        let key_of = |r: Result<Config, ConfigError>| match r {
            Err(ConfigError::Invalid { key, message, .. }) => (key, message),
            other => panic!("expected an invalid key, got {other:?}"),
        };
        assert_eq!(key_of(with(r#"backend = "postgres""#)).0, "store.postgres_url");
        assert_eq!(key_of(with(r#"postgres_url = "postgres://a@db/otp""#)).0, "store.postgres_url", "set but unused");
        let (key, message) = key_of(with("backend = \"postgres\"\npostgres_url = \"postgres://otp:hunter2@db/otp\""));
        assert_eq!(key, "store.postgres_url");
        assert!(!message.contains("hunter2"), "never echoed: {message}");
        let (key, message) =
            key_of(with("backend = \"postgres\"\npostgres_url = \"postgres://otp@db/otp\"\npostgres_password_file = \"/nonexistent/pw\""));
        assert_eq!(key, "store.postgres_password_file", "{message}");
        assert!(parse(&format!("{MINIMAL}\n[store]\nbackend = \"mysql\"\n")).is_err());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret-pw\n").unwrap();
        let config = with(&format!(
            "backend = \"postgres\"\npostgres_url = \"postgres://otp@db/otp\"\npostgres_password_file = {:?}\npool_size = 4",
            file
        ))
        .unwrap();
        let options = config.store.options("gw-1").unwrap();
        let debug = format!("{options:?}");
        assert!(debug.contains("pool_size: 4") && debug.contains("gw-1"), "{debug}");
        assert!(!debug.contains("s3cret-pw"), "the password never shows: {debug}");
        match options.backend {
            crate::store::settings::Backend::Postgres(pg) => assert_eq!(pg.password.as_deref(), Some("s3cret-pw")),
            other => panic!("{other:?}"),
        }
        assert!(!config.summary().contains("s3cret-pw"));
        assert!(config.summary().contains("postgres postgres://otp@db/otp"), "{}", config.summary());
    }

    /// Every numeric key has a checked range: an absurd value is a config error naming the key,
    /// never a panic in `run` (`cache_capacity_mb = 2^44` once overflowed at start).
    #[test]
    fn every_numeric_key_is_range_checked() {
        let huge_int = "17592186044416";
        let huge_duration = "\"99999d\"";
        let keys: &[(&str, &str, &str)] = &[
            ("server", "shutdown_timeout", huge_duration),
            ("server", "http_max_connections", huge_int),
            ("server", "http_header_timeout", huge_duration),
            ("server", "http_body_timeout", "\"1ms\""),
            ("store", "retention", huge_duration),
            ("store", "cache_capacity_mb", huge_int),
            ("store", "cache_capacity_mb", "0"),
            ("store", "compact_every", huge_duration),
            ("store", "compact_every", "\"0s\""),
            ("store", "max_held_receipts", huge_int),
            ("store", "hold_receipts_for", huge_duration),
            ("store", "receipt_window", huge_duration),
            ("store", "receipt_window_max", huge_int),
            ("store", "receipt_window_max", "0"),
            ("store", "pool_size", huge_int),
            ("store", "pool_size", "0"),
            ("messages", "default_validity", huge_duration),
            ("messages", "max_validity", huge_duration),
            ("messages", "min_validity", "\"0s\""),
            ("messages", "spill_after", huge_duration),
            ("messages", "max_unconfirmed_resends", huge_int),
            ("messages", "backlog_wait", huge_duration),
            ("otp", "ttl", huge_duration),
            ("otp", "code_length", huge_int),
            ("otp", "max_checks", huge_int),
            ("otp", "resend_cooldown", huge_duration),
            ("otp", "max_sends_per_number", huge_int),
            ("otp", "send_window", huge_duration),
            ("otp", "max_failed_checks_per_number", huge_int),
            ("otp", "failed_checks_window", huge_duration),
            ("otp", "receipt_timeout", huge_duration),
            ("otp", "spill_after", huge_duration),
            ("otp", "creates_per_minute_per_key", huge_int),
            ("otp", "checks_per_minute_per_number", huge_int),
            ("carriers", "port", huge_int),
            ("carriers", "sessions", huge_int),
            ("carriers", "window", huge_int),
            ("carriers", "max_tps", huge_int),
            ("carriers", "enquire_link_interval", huge_duration),
            ("carriers", "response_timeout", huge_duration),
            ("carriers", "reconnect_min", huge_duration),
            ("carriers", "reconnect_max", huge_duration),
            ("carriers", "circuit_failures", huge_int),
            ("carriers", "circuit_open", huge_duration),
        ];
        for (section, key, value) in keys {
            let text = match *section {
                "carriers" => format!("{MINIMAL}{key} = {value}\n"),
                _ => format!("[{section}]\n{key} = {value}\n{MINIMAL}"),
            };
            let error = parse(&text).expect_err(&format!("{section}.{key} = {value} accepted")).to_string();
            assert!(error.contains(key), "{section}.{key} = {value}: the error does not name the key: {error}");
        }
    }

    #[test]
    fn defaults_fill_unset_keys() {
        let config = parse(MINIMAL).expect("minimal config is valid");
        let c = &config.carriers[0];
        assert_eq!(c.port, 2775);
        assert_eq!(c.bind, BindType::Transceiver);
        assert_eq!(c.sessions, 1);
        assert_eq!(c.window, 64);
        assert_eq!(c.max_tps, 0);
        assert_eq!(c.enquire_link_interval, Duration::from_secs(30));
        assert_eq!(c.response_timeout, Duration::from_secs(5));
        assert_eq!(c.reconnect_min, Duration::from_secs(1));
        assert_eq!(c.reconnect_max, Duration::from_secs(60));
        assert_eq!(c.system_type, "");
        assert_eq!(config.server.http_listen.port(), 8080);
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let text = include_str!("../../config/otpgate.toml");
        let config = parse(text).expect("config/otpgate.toml must stay valid");
        assert!(config.carriers.len() >= 2);
    }

    fn error_of(text: &str) -> String {
        parse(text).expect_err("config must be rejected").to_string()
    }

    #[test]
    fn long_password_is_rejected_without_echoing_it() {
        let text = MINIMAL.replace("\"secret\"", "\"much-too-long\"");
        let e = error_of(&text);
        assert!(e.contains("carriers[0].password"), "{e}");
        assert!(e.contains("at most 8"), "{e}");
        assert!(!e.contains("much-too-long"), "the password leaked: {e}");
    }

    #[test]
    fn templates_and_brands_with_invisible_characters_are_refused() {
        for (section, bad) in [
            ("[otp.templates]\nen = \"{code} is your code\u{202E}\"\n", "templates.en"),
            ("[otp]\nbrand = \"Ac\u{200B}me\"\n", "templates."),
        ] {
            let e = error_of(&format!("{section}{MINIMAL}"));
            assert!(e.contains(bad) && e.contains("U+20"), "{e}");
        }
    }

    /// The parser quotes the line it fails on: on a password's line that is the password.
    #[test]
    fn a_password_line_that_does_not_parse_is_not_echoed() {
        for broken in ["password = \"sup3rs3cret\nsource", "password = sup3rs3cret", "password = \"sup3rs3cret\" trailing"] {
            let text = MINIMAL.replace("password = \"secret\"", broken);
            let e = error_of(&text);
            assert!(!e.contains("sup3rs3cret"), "the password leaked: {e}");
            assert!(e.starts_with("test.toml:"), "{e}");
        }
    }

    #[test]
    fn long_values_are_cut_in_errors_and_refused() {
        let huge = "h".repeat(5_000_000);
        let e = error_of(&MINIMAL.replace("host = \"127.0.0.1\"", &format!("host = \"{huge}\"")));
        assert!(e.contains("host"), "{}", &e[..e.len().min(300)]);
        assert!(e.len() < 1000, "a {} byte error", e.len());
        let e = error_of(&format!("{MINIMAL}windw = \"{huge}\"\n"));
        assert!(e.len() < 1000, "a {} byte parse error", e.len());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = error_of(&format!("{MINIMAL}windw = 4\n"));
        assert!(e.contains("windw"), "{e}");
        assert!(e.starts_with("test.toml:"), "{e}");
    }

    #[test]
    fn bad_duration_is_explained() {
        let e = error_of(&format!("{MINIMAL}response_timeout = \"5 parsecs\"\n"));
        assert!(e.contains("invalid duration"), "{e}");
        assert!(e.contains("response_timeout"), "{e}");
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let e = error_of(&format!("{MINIMAL}{MINIMAL}"));
        assert!(e.contains("carriers[1].name"), "{e}");
        assert!(e.contains("used twice"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let cases = [
            ("window = 0", "carriers[0].window"),
            ("sessions = 0", "carriers[0].sessions"),
            ("reconnect_max = \"10ms\"", "carriers[0].reconnect_max"),
            ("system_type = \"thirteen-chars\"", "carriers[0].system_type"),
            ("bind = \"sideways\"", "bind"),
            ("receipt_text = \"csv:stat,colour\"", "carriers[0].receipt_text"),
            ("receipt_states = { \"00\" = \"GREAT\" }", "carriers[0].receipt_states"),
        ];
        for (line, key) in cases {
            let e = error_of(&format!("{MINIMAL}{line}\n"));
            assert!(e.contains(key), "{line}: {e}");
        }
        let e = error_of(&MINIMAL.replace("\"Acme\"", "\"Acme Corporation Ltd\""));
        assert!(e.contains("carriers[0].source_addr"), "{e}");
        let e = error_of(&MINIMAL.replace("\"alpha\"", "\"Alpha Carrier\""));
        assert!(e.contains("carriers[0].name"), "{e}");
    }

    #[test]
    fn summary_lists_carriers_and_hides_passwords() {
        let summary = parse(MINIMAL).unwrap().summary();
        assert!(summary.contains("alpha"), "{summary}");
        assert!(summary.contains("127.0.0.1:2775"), "{summary}");
        assert!(summary.contains("alphanumeric"), "{summary}");
        assert!(!summary.contains("secret"), "{summary}");
    }

    #[test]
    fn api_keys_must_be_hashes_with_unique_names() {
        let hash = "a".repeat(64);
        let ok = format!("{MINIMAL}\n[[api_keys]]\nname = \"backend\"\nkey_sha256 = \"{hash}\"\n");
        assert_eq!(parse(&ok).unwrap().api_keys[0].hash(), [0xaa; 32]);
        let plaintext = format!("{MINIMAL}\n[[api_keys]]\nname = \"backend\"\nkey_sha256 = \"my-secret-key\"\n");
        let e = error_of(&plaintext);
        assert!(e.contains("api_keys[0].key_sha256"), "{e}");
        assert!(!e.contains("my-secret-key"), "the key leaked into the error: {e}");
        let twice = format!("{ok}\n[[api_keys]]\nname = \"backend\"\nkey_sha256 = \"{hash}\"\n");
        assert!(error_of(&twice).contains("api_keys[1].name"));
    }

    #[test]
    fn twilio_and_kannel_credentials_are_hashes_used_once() {
        let hash = "bb".repeat(32);
        let key = |name: &str, extra: &str| format!("\n[[api_keys]]\nname = \"{name}\"\nkey_sha256 = \"{hash}\"\n{extra}");
        let twilio = |sid: &str, token: &str| {
            format!("[api_keys.twilio]\naccount_sid = \"{sid}\"\nauth_token_sha256 = \"{token}\"\nservice_sid = \"VA{}\"\n", "0".repeat(32))
        };
        let sid = format!("AC{}", "1".repeat(32));
        let ok = format!("{MINIMAL}{}", key("a", &twilio(&sid, &hash)));
        assert!(parse(&ok).unwrap().api_keys[0].twilio.is_some());
        let e = error_of(&format!("{MINIMAL}{}", key("a", &twilio("AC12", &hash))));
        assert!(e.contains("api_keys[0].twilio.account_sid"), "{e}");
        let e = error_of(&format!("{MINIMAL}{}", key("a", &twilio(&sid, "the-auth-token"))));
        assert!(e.contains("api_keys[0].twilio.auth_token_sha256") && !e.contains("the-auth-token"), "{e}");
        let e = error_of(&format!("{ok}{}", key("b", &twilio(&sid, &hash))));
        assert!(e.contains("api_keys[1].twilio.account_sid"), "{e}");

        let kannel = |user: &str, password: &str| format!("[api_keys.kannel]\nusername = \"{user}\"\npassword_sha256 = \"{password}\"\n");
        let ok = format!("{MINIMAL}{}", key("a", &kannel("tester", &hash)));
        let config = parse(&ok).unwrap();
        assert!(
            config.event_endpoints().iter().any(|e| e.name == crate::store::events::DLR_ENDPOINT),
            "a Kannel user starts the report sender"
        );
        let e = error_of(&format!("{MINIMAL}{}", key("a", &kannel("tester", "foobar"))));
        assert!(e.contains("api_keys[0].kannel.password_sha256") && !e.contains("foobar"), "{e}");
        let e = error_of(&format!("{ok}{}", key("b", &kannel("tester", &hash))));
        assert!(e.contains("api_keys[1].kannel.username"), "{e}");
        let e = error_of(&format!("[kannel_dlr]\ntimeout = \"1ms\"\n{ok}"));
        assert!(e.contains("kannel_dlr.timeout"), "{e}");
        assert!(parse(MINIMAL).unwrap().event_endpoints().is_empty(), "no Kannel user, no report sender");
    }

    #[test]
    fn message_validity_limits_are_checked() {
        let e = error_of(&format!("[messages]\ndefault_validity = \"5h\"\nmax_validity = \"1h\"\n{MINIMAL}"));
        assert!(e.contains("messages.default_validity"), "{e}");
        let e = error_of(&format!("[messages]\nmax_validity = \"200d\"\n{MINIMAL}"));
        assert!(e.contains("messages.max_validity"), "{e}");
    }

    #[test]
    fn routes_are_checked_against_carriers_and_each_other() {
        let two = format!("{MINIMAL}{}", MINIMAL.replace("\"alpha\"", "\"beta\""));
        let ok = format!(
            "{two}\n[[routes]]\nprefixes = [\"+44\"]\ncarriers = [\"alpha\", \"beta\"]\nstrategy = \"weighted\"\nweights = [3, 1]\n"
        );
        assert_eq!(parse(&ok).unwrap().routes[0].strategy, Strategy::Weighted);
        let cases = [
            ("prefixes = [\"+44\"]\ncarriers = [\"gamma\"]", "no carrier named \"gamma\""),
            ("prefixes = [\"+44\"]\ncarriers = [\"alpha\"]\nstrategy = \"weighted\"\nweights = [1, 2]", "2 weights for 1 carriers"),
            ("prefixes = [\"44\"]\ncarriers = [\"alpha\"]", "neither"),
            ("prefixes = [\"+44\"]\ncarriers = [\"alpha\"]\nweights = [1]", "only go with"),
        ];
        for (route, expected) in cases {
            let e = error_of(&format!("{two}\n[[routes]]\n{route}\n"));
            assert!(e.contains("routes[0]") && e.contains(expected), "{route}: {e}");
        }
        let twice = format!(
            "{two}\n[[routes]]\nprefixes = [\"+44\"]\ncarriers = [\"alpha\"]\n[[routes]]\nprefixes = [\"+44\"]\ncarriers = [\"beta\"]\n"
        );
        let e = error_of(&twice);
        assert!(e.contains("routes[1].prefixes") && e.contains("routed twice"), "{e}");
    }

    #[test]
    fn no_carriers_is_an_error() {
        let e = error_of("[server]\nhttp_listen = \"127.0.0.1:1\"\n");
        assert!(e.contains("carriers"), "{e}");
    }
}
