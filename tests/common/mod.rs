//! Shared helpers for the integration tests: simulators on loopback port 0, carriers built from
//! real TOML, and the receipt fixtures.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use otpgate::config::{CarrierConfig, Config};
use otpgate::sim::{SimConfig, SmscSim};
use otpgate::smpp::{Carrier, OutboundSms, ReceiptEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const LOOPBACK: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

pub async fn sim(config: SimConfig) -> SmscSim {
    SmscSim::start(SocketAddr::from(LOOPBACK), config)
        .await
        .expect("simulator listens on loopback")
}

/// A carrier section pointing at `addr`, with fast timers; `extra` lines override the defaults.
pub fn carrier_config(addr: SocketAddr, extra: &str) -> CarrierConfig {
    let defaults = [
        "name = \"alpha\"".to_string(),
        format!("host = \"{}\"", addr.ip()),
        format!("port = {}", addr.port()),
        "system_id = \"otpgate\"".to_string(),
        "password = \"secret\"".to_string(),
        "source_addr = \"Acme\"".to_string(),
        "response_timeout = \"1s\"".to_string(),
        "reconnect_min = \"50ms\"".to_string(),
        "reconnect_max = \"500ms\"".to_string(),
    ];
    let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
    let overridden: Vec<String> = extra.lines().map(key).collect();
    let kept = defaults.iter().filter(|line| !overridden.contains(&key(line)));
    let body: Vec<String> = kept.cloned().chain(extra.lines().map(str::to_string)).collect();
    let text = format!("[[carriers]]\n{}\n", body.join("\n"));
    let mut config = Config::from_toml(&text, Path::new("test.toml")).expect("test config is valid");
    config.carriers.remove(0)
}

pub struct Running {
    pub carrier: Arc<Carrier>,
    pub receipts: mpsc::Receiver<ReceiptEvent>,
    pub shutdown: CancellationToken,
}

pub fn start(config: CarrierConfig) -> Running {
    let (tx, receipts) = mpsc::channel(1024);
    let shutdown = CancellationToken::new();
    let carrier = Carrier::start(config, tx, shutdown.clone());
    Running {
        carrier,
        receipts,
        shutdown,
    }
}

pub async fn start_bound(config: CarrierConfig) -> Running {
    let sessions = config.sessions;
    let running = start(config);
    assert!(
        running.carrier.wait_bound(sessions, Duration::from_secs(5)).await,
        "carrier did not bind"
    );
    running
}

pub fn sms(text: &str) -> OutboundSms {
    OutboundSms {
        to: "+447700900123".into(),
        from: None,
        text: text.into(),
        deadline: None,
    }
}

/// One sample of `fixtures/dlr-samples.txt` with its line of `fixtures/dlr-expected.txt`.
pub struct ReceiptFixture {
    pub number: usize,
    pub text: Vec<u8>,
    pub expected: Vec<(String, String)>,
}

impl ReceiptFixture {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.expected.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// `\xNN` escapes as the sample file writes them.
fn unescape(line: &str) -> Vec<u8> {
    let bytes = line.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x') && i + 4 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 2..i + 4]).expect("ascii escape");
            out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fn data_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty())
}

pub fn receipt_fixtures() -> Vec<ReceiptFixture> {
    let samples = include_str!("../../fixtures/dlr-samples.txt");
    let expected = include_str!("../../fixtures/dlr-expected.txt");
    let samples: Vec<&str> = data_lines(samples).collect();
    let expected: Vec<&str> = data_lines(expected).collect();
    assert_eq!(samples.len(), 40, "dlr-samples.txt should hold 40 samples");
    assert_eq!(samples.len(), expected.len(), "one expectation line per sample");
    samples
        .iter()
        .zip(expected)
        .enumerate()
        .map(|(i, (sample, expect))| ReceiptFixture {
            number: i + 1,
            text: unescape(sample),
            expected: expect
                .split_whitespace()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("key=value");
                    (k.to_string(), v.to_string())
                })
                .collect(),
        })
        .collect()
}
