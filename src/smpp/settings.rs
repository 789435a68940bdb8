//! A carrier's settings (`[[carriers]]`), their defaults and their checks, next to the sessions
//! that use them; `config.rs` only composes the file.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::duration::{HOUR, human as duration};
use crate::echo::shown;

/// How a carrier link is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindType {
    /// One bind_transceiver connection carries submits and receipts.
    Transceiver,
    /// A bind_transmitter connection for submits plus a bind_receiver one for receipts.
    TransmitterReceiver,
}

/// How a long text is sent: in parts the handset joins (told by a user data header or by
/// TLVs), or whole for the SMSC to cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LongSms {
    /// A user data header (IE 0x00, 8-bit reference) in each part; esm_class 0x40.
    #[default]
    Udh,
    /// A user data header with a 16-bit reference (IE 0x08).
    Udh16,
    /// sar_msg_ref_num, sar_total_segments and sar_segment_seqnum TLVs; the SMSC writes the header.
    Sar,
    /// One submit_sm with the whole text in message_payload: the SMSC cuts it.
    Payload,
}

impl LongSms {
    /// The header the parts travel with on the air, which sets their room.
    pub fn header(self) -> crate::sms::Header {
        match self {
            // The SMSC writes SAR's 16-bit reference into a 16-bit header.
            LongSms::Udh16 | LongSms::Sar => crate::sms::Header::Reference16,
            LongSms::Udh | LongSms::Payload => crate::sms::Header::Reference8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LongSms::Udh => "udh",
            LongSms::Udh16 => "udh16",
            LongSms::Sar => "sar",
            LongSms::Payload => "payload",
        }
    }
}

/// One carrier SMSC and how we talk to it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarrierConfig {
    pub name: String,
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub system_id: String,
    pub password: String,
    #[serde(default)]
    pub system_type: String,
    #[serde(default = "default_bind")]
    pub bind: BindType,
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    #[serde(default = "default_window")]
    pub window: usize,
    #[serde(default)]
    pub max_tps: u32,
    #[serde(default = "default_enquire_link", deserialize_with = "duration")]
    pub enquire_link_interval: Duration,
    #[serde(default = "default_response_timeout", deserialize_with = "duration")]
    pub response_timeout: Duration,
    #[serde(default = "default_reconnect_min", deserialize_with = "duration")]
    pub reconnect_min: Duration,
    #[serde(default = "default_reconnect_max", deserialize_with = "duration")]
    pub reconnect_max: Duration,
    pub source_addr: String,
    /// Submits in a row that time out or get an SMSC fault before the carrier is taken out.
    #[serde(default = "default_circuit_failures")]
    pub circuit_failures: u32,
    /// How long it stays out before one probe submit is let through.
    #[serde(default = "default_circuit_open", deserialize_with = "duration")]
    pub circuit_open: Duration,
    /// The receipt text's layout: `key_value` (SMPP 3.4 Appendix B and its variants) or
    /// `csv:` and column names, for SMSCs that write keyless comma-separated receipts.
    #[serde(default = "default_receipt_text")]
    pub receipt_text: String,
    /// The SMSC's own receipt state codes and the Appendix B state each means.
    #[serde(default)]
    pub receipt_states: std::collections::BTreeMap<String, String>,
    /// How its receipt ids relate to its submit_sm_resp ids: `auto` (learned), `same`,
    /// `hex_to_dec` or `dec_to_hex`.
    #[serde(default)]
    pub receipt_id: super::receipt::IdRelation,
    /// How a text longer than one SMS goes to this carrier.
    #[serde(default)]
    pub long_sms: LongSms,
    /// How this SMSC reads data_coding 0.
    #[serde(default)]
    pub default_alphabet: crate::sms::DefaultAlphabet,
    /// GSM 03.38 packed eight septets to seven octets, for an SMSC that wants it so (most take
    /// one septet per octet).
    #[serde(default)]
    pub gsm7_packed: bool,
    /// Vendor TLVs added to every submit_sm: tag (`"0x1400"`) to value, literal or with
    /// `{template_id}`, `{entity_id}`, `{sender}` (see `tlv`).
    #[serde(default)]
    pub tlvs: std::collections::BTreeMap<String, String>,
    /// SMPP over TLS 1.2/1.3: the SMSC's chain and name are always verified, and a failed
    /// handshake is a failed bind (never a fallback to plain TCP).
    #[serde(default)]
    pub tls: bool,
    /// Trust only the authorities in this PEM file (default: the system's roots).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// The name the SMSC's certificate must carry (default: `host`).
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// Mutual TLS: our certificate chain and its key (PEM), when the carrier asks for one.
    #[serde(default)]
    pub tls_client_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_client_key: Option<PathBuf>,
}

fn default_receipt_text() -> String {
    "key_value".into()
}

impl CarrierConfig {
    /// How this carrier's receipts are read (validated at load, so never an error here).
    pub fn receipt_format(&self) -> super::receipt::ReceiptFormat {
        super::receipt::ReceiptFormat::new(&self.receipt_text, &self.receipt_states).unwrap_or_default()
    }
}

fn default_circuit_failures() -> u32 {
    5
}
fn default_circuit_open() -> Duration {
    Duration::from_secs(5)
}

fn default_port() -> u16 {
    2775
}
fn default_bind() -> BindType {
    BindType::Transceiver
}
fn default_sessions() -> usize {
    1
}
fn default_window() -> usize {
    64
}
fn default_enquire_link() -> Duration {
    Duration::from_secs(30)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_reconnect_min() -> Duration {
    Duration::from_secs(1)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(60)
}

/// SMPP 3.4 §4.1: the bind fields' maximum lengths, without the terminating NUL.
const MAX_SYSTEM_ID: usize = 15;
const MAX_PASSWORD: usize = 8;
const MAX_SYSTEM_TYPE: usize = 12;
/// Upper bounds that catch typos (a window of 64000 is never meant).
const MAX_WINDOW: usize = 10_000;
const MAX_TPS: u32 = 1_000_000;
const MAX_SESSIONS: usize = 64;

impl CarrierConfig {
    /// Its vendor TLVs (the table was checked at load: an unreadable one is none).
    pub fn vendor_tlvs(&self) -> Vec<super::tlv::VendorTlv> {
        super::tlv::parse(&self.tlvs).unwrap_or_default()
    }

    /// The registration fields a message must carry to go through this carrier.
    pub fn required_fields(&self) -> Vec<super::tlv::Field> {
        let mut fields: Vec<super::tlv::Field> = self.vendor_tlvs().iter().flat_map(|t| t.fields().collect::<Vec<_>>()).collect();
        fields.retain(|f| *f != super::tlv::Field::Sender);
        fields.sort();
        fields.dedup();
        fields
    }

    /// The first thing wrong with this carrier, as (field, message).
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 32
            && self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            // Names become metric labels and log fields: keep them short and plain.
            return Some(("name", format!("{} is not a valid carrier name: use 1-32 characters a-z, 0-9, '-' or '_'", shown(&self.name))));
        }
        if self.host.trim().is_empty() || self.host.len() > 253 {
            return Some(("host", "must be a host name or address of 1-253 characters".into()));
        }
        if self.receipt_text.len() > 256
            || self.receipt_states.len() > 64
            || self.receipt_states.iter().any(|(k, v)| k.len() > 32 || v.len() > 32)
        {
            return Some(("receipt_text", "receipt layouts hold at most 256 characters, 64 states of 32".into()));
        }
        if let Err(e) = super::tlv::parse(&self.tlvs) {
            return Some(("tlvs", e));
        }
        if self.source_addr.len() > 21 {
            return Some(("source_addr", "must be at most 21 characters (SMPP 3.4)".into()));
        }
        if self.port == 0 {
            return Some(("port", "must be 1-65535".into()));
        }
        let smpp_string = |value: &str, max: usize| -> Option<String> {
            if !value.is_ascii() || value.bytes().any(|b| b == 0) {
                Some("must be plain ASCII without NUL bytes".into())
            } else if value.len() > max {
                Some(format!("is {} characters; SMPP 3.4 allows at most {max}", value.len()))
            } else {
                None
            }
        };
        if self.system_id.is_empty() {
            return Some(("system_id", "must not be empty".into()));
        }
        if let Some(m) = smpp_string(&self.system_id, MAX_SYSTEM_ID) {
            return Some(("system_id", m));
        }
        if let Some(m) = smpp_string(&self.password, MAX_PASSWORD) {
            // Never echo the password itself.
            return Some(("password", m));
        }
        if let Some(m) = smpp_string(&self.system_type, MAX_SYSTEM_TYPE) {
            return Some(("system_type", m));
        }
        if let Err(e) = super::receipt::ReceiptFormat::new(&self.receipt_text, &self.receipt_states) {
            let key = match e {
                super::receipt::ReceiptFormatError::Layout(_) => "receipt_text",
                super::receipt::ReceiptFormatError::States(_) => "receipt_states",
            };
            return Some((key, e.to_string()));
        }
        if self.sessions == 0 || self.sessions > MAX_SESSIONS {
            return Some(("sessions", format!("must be 1-{MAX_SESSIONS}, got {}", self.sessions)));
        }
        if self.window == 0 || self.window > MAX_WINDOW {
            return Some(("window", format!("must be 1-{MAX_WINDOW}, got {}", self.window)));
        }
        if !(Duration::from_millis(100)..=HOUR).contains(&self.enquire_link_interval) {
            return Some(("enquire_link_interval", "must be between 100ms and 1h".into()));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(600)).contains(&self.response_timeout) {
            return Some(("response_timeout", "must be between 10ms and 10m".into()));
        }
        if !(Duration::from_millis(10)..=HOUR).contains(&self.reconnect_min) {
            return Some(("reconnect_min", "must be between 10ms and 1h".into()));
        }
        if self.reconnect_max > HOUR {
            return Some(("reconnect_max", "must be at most 1h".into()));
        }
        if self.max_tps > MAX_TPS {
            return Some(("max_tps", format!("must be 0-{MAX_TPS} (0 = unlimited)")));
        }
        if self.reconnect_max < self.reconnect_min {
            return Some((
                "reconnect_max",
                format!(
                    "{} is below reconnect_min {}",
                    humantime::format_duration(self.reconnect_max),
                    humantime::format_duration(self.reconnect_min)
                ),
            ));
        }
        if self.circuit_failures == 0 || self.circuit_failures > 1000 {
            return Some(("circuit_failures", "must be 1-1000".into()));
        }
        if self.circuit_open < Duration::from_millis(100) || self.circuit_open > Duration::from_secs(600) {
            return Some(("circuit_open", "must be between 100ms and 10m".into()));
        }
        if let Err(e) = super::address::Address::source(&self.source_addr) {
            return Some(("source_addr", e.to_string()));
        }
        if self.gsm7_packed && self.default_alphabet != crate::sms::DefaultAlphabet::Gsm7 {
            return Some(("gsm7_packed", "packs GSM 03.38 septets: it needs default_alphabet = \"gsm7\"".into()));
        }
        self.tls_problem()
    }

    /// How the sender address will be sent, for the summary.
    pub(crate) fn source_kind(&self) -> &'static str {
        match super::address::Address::source(&self.source_addr).map(|a| a.ton) {
            Ok(rusmpp::values::Ton::Alphanumeric) => "alphanumeric, TON 5/NPI 0",
            Ok(rusmpp::values::Ton::NetworkSpecific) => "short code, TON 3/NPI 0",
            Ok(_) => "E.164, TON 1/NPI 1",
            Err(_) => "invalid",
        }
    }

    /// The TLS client for this carrier's links (`None` without `tls`): its files read and
    /// checked (exist, parse, key matches certificate, not expired).
    pub(crate) fn tls_connector(&self) -> Result<Option<crate::tls::Connector>, crate::tls::TlsError> {
        if !self.tls {
            return Ok(None);
        }
        let identity = self.tls_client_cert.as_deref().zip(self.tls_client_key.as_deref());
        let files = crate::tls::client::ClientFiles {
            ca_file: self.tls_ca_file.as_deref(),
            server_name: self.tls_server_name.as_deref().unwrap_or(&self.host),
            identity,
        };
        crate::tls::Connector::new(&files).map(Some)
    }

    /// The first thing wrong with the TLS keys, as (field, message); reads the files.
    fn tls_problem(&self) -> Option<(&'static str, String)> {
        if !self.tls {
            let stray = [
                ("tls_ca_file", self.tls_ca_file.is_some()),
                ("tls_server_name", self.tls_server_name.is_some()),
                ("tls_client_cert", self.tls_client_cert.is_some()),
                ("tls_client_key", self.tls_client_key.is_some()),
            ];
            return stray.iter().find(|(_, set)| *set).map(|(key, _)| (*key, "is set but tls is not: add tls = true".to_string()));
        }
        if self.tls_client_cert.is_some() != self.tls_client_key.is_some() {
            return Some(("tls_client_key", "tls_client_cert and tls_client_key go together".into()));
        }
        self.tls_connector().err().map(|e| ("tls", e.to_string()))
    }

    /// `host:port`, as given to the resolver.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}
