//! Twilio Verify v2 compatibility, driven by Twilio's official Python SDK (`twilio` from PyPI,
//! tests/python/twilio_driver.py) pointed at a live gateway by its documented `base_url`, with
//! codes read out of the SMS the simulated carrier received.

mod common;

use std::path::Path;

use common::{Gateway, code_sent, sim};
use otpgate::sim::SimConfig;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "a-twilio-auth-token-for-tests";
const SERVICE: &str = "VA00112233445566778899aabbccddeeff";

/// The SDK in a Python process, one command per line.
struct Sdk {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Sdk {
    /// `None` when the SDK is not installed on a developer's machine (under CI it must be).
    fn start(base_url: &str, account: &str, token: &str, service: &str) -> Option<Sdk> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python");
        let python = dir.join(".venv/bin/python");
        if !python.exists() {
            assert!(std::env::var_os("CI").is_none(), "the twilio SDK is required under CI (tests/python/setup)");
            eprintln!("skipped: the twilio SDK is not installed (tests/python/setup)");
            return None;
        }
        let mut child = tokio::process::Command::new(python)
            .arg(dir.join("twilio_driver.py"))
            .args([base_url, account, token, service])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python starts");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Some(Sdk { _child: child, stdin, lines })
    }

    async fn run(&mut self, command: Value) -> Value {
        self.stdin.write_all(format!("{command}\n").as_bytes()).await.unwrap();
        let line = self.lines.next_line().await.unwrap().expect("the driver answers");
        serde_json::from_str(&line).unwrap()
    }

    async fn create(&mut self, to: &str) -> Value {
        self.run(json!({"op": "create", "params": {"to": to, "channel": "sms"}})).await
    }

    async fn check(&mut self, params: Value) -> Value {
        self.run(json!({"op": "check", "params": params})).await
    }
}

fn twilio_key(service: &str) -> String {
    format!(
        "[[api_keys]]\nname = \"twilio-app\"\nkey_sha256 = \"{}\"\n[api_keys.twilio]\naccount_sid = \"{ACCOUNT}\"\nauth_token_sha256 = \"{}\"\nservice_sid = \"{service}\"\n",
        otpgate::http::sha256_hex(b"unused bearer key"),
        otpgate::http::sha256_hex(TOKEN.as_bytes()),
    )
}

async fn gateway(otp: &str) -> (otpgate::sim::SmscSim, Gateway, Option<Sdk>) {
    let sim = sim(SimConfig::default()).await;
    let sections = format!("{}\n[otp]\nbrand = \"Acme\"\nresend_cooldown = \"1s\"\n{otp}\n", twilio_key(SERVICE));
    let (gw, _) = Gateway::setup(&[sim.addr()], "").sections(&sections).bound().await;
    let sdk = Sdk::start(&format!("http://{}", gw.daemon.http_addr()), ACCOUNT, TOKEN, SERVICE);
    (sim, gw, sdk)
}

fn error_of(answer: &Value) -> (u64, u64) {
    let e = &answer["error"];
    (e["status"].as_u64().unwrap_or_else(|| panic!("no error in {answer}")), e["code"].as_u64().unwrap_or(0))
}

#[tokio::test]
async fn start_fetch_wrong_check_right_check() {
    let (sim, gw, sdk) = gateway("").await;
    let Some(mut sdk) = sdk else { return };
    let number = "+447700900501";
    let started = sdk.create(number).await;
    let sid = started["sid"].as_str().unwrap_or_else(|| panic!("{started}")).to_string();
    assert!(sid.starts_with("VE") && sid.len() == 34, "{started}");
    assert_eq!(started["service_sid"], SERVICE);
    assert_eq!(started["account_sid"], ACCOUNT);
    assert_eq!((started["to"].as_str(), started["channel"].as_str()), (Some(number), Some("sms")));
    assert_eq!((started["status"].as_str(), started["valid"].as_bool()), (Some("pending"), Some(false)));
    assert_eq!(started["send_code_attempts"].as_array().map(Vec::len), Some(1), "{started}");
    assert!(started["date_created"].as_str().is_some_and(|d| d.starts_with("20")), "the SDK parsed the date: {started}");
    let code = code_sent(&sim, number, 1).await;
    assert!(sim.stats().submits[0].text.contains("Acme"));

    let fetched = sdk.run(json!({"op": "fetch", "sid": sid})).await;
    assert_eq!((fetched["sid"].as_str(), fetched["status"].as_str()), (Some(sid.as_str()), Some("pending")));

    let wrong = if code == "000000" { "111111" } else { "000000" };
    let checked = sdk.check(json!({"to": number, "code": wrong})).await;
    assert_eq!((checked["status"].as_str(), checked["valid"].as_bool()), (Some("pending"), Some(false)), "a wrong code: {checked}");
    let approved = sdk.check(json!({"verification_sid": sid, "code": code})).await;
    assert_eq!((approved["status"].as_str(), approved["valid"].as_bool()), (Some("approved"), Some(true)), "{approved}");
    assert_eq!(approved["sid"], sid);
    // Approved: Twilio forgets it, so a second check is 20404.
    assert_eq!(error_of(&sdk.check(json!({"to": number, "code": code})).await), (404, 20404));
    let fetched = sdk.run(json!({"op": "fetch", "sid": sid})).await;
    assert_eq!(fetched["status"], "approved");

    // The auth token never reaches the store (tests/secrets.rs covers codes).
    let Gateway { daemon, dir } = gw;
    assert!(daemon.shutdown(std::time::Duration::from_secs(5)).await);
    for (place, bytes) in common::stored(dir.path()) {
        assert!(!bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()), "the auth token is in {place}");
    }
}

#[tokio::test]
async fn resend_cancel_and_approve() {
    let (sim, _gw, sdk) = gateway("").await;
    let Some(mut sdk) = sdk else { return };
    let number = "+447700900502";
    let first = sdk.create(number).await;
    let old_code = code_sent(&sim, number, 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let again = sdk.create(number).await;
    assert_eq!(again["sid"], first["sid"], "a resend is the same verification");
    assert_eq!(again["send_code_attempts"].as_array().map(Vec::len), Some(2), "{again}");
    let new_code = code_sent(&sim, number, 2).await;
    if new_code != old_code {
        let checked = sdk.check(json!({"to": number, "code": old_code})).await;
        assert_eq!(checked["status"], "pending", "the old code stopped working: {checked}");
    }
    let sid = first["sid"].as_str().unwrap().to_string();
    let canceled = sdk.run(json!({"op": "update", "sid": sid, "params": {"status": "canceled"}})).await;
    assert_eq!(canceled["status"], "canceled", "{canceled}");
    assert_eq!(error_of(&sdk.check(json!({"verification_sid": sid, "code": new_code})).await), (404, 20404));
    assert_eq!(error_of(&sdk.run(json!({"op": "update", "sid": sid, "params": {"status": "canceled"}})).await), (404, 20404));

    let other = sdk.create("+447700900503").await;
    let approved = sdk.run(json!({"op": "update", "sid": other["sid"], "params": {"status": "approved"}})).await;
    assert_eq!((approved["status"].as_str(), approved["valid"].as_bool()), (Some("approved"), Some(true)), "{approved}");
    assert_eq!(error_of(&sdk.run(json!({"op": "fetch", "sid": "VE0000000000000000000000000000dead"})).await), (404, 20404));
}

#[tokio::test]
async fn every_error_code_a_client_depends_on() {
    let otp = "max_checks = 3\nmax_sends_per_number = 2\nchecks_per_minute_per_number = 6\ncreates_per_minute_per_key = 12";
    let (sim, gw, sdk) = gateway(otp).await;
    let Some(mut sdk) = sdk else { return };
    let base = format!("http://{}", gw.daemon.http_addr());

    // Credentials and service.
    let mut wrong_token = Sdk::start(&base, ACCOUNT, "not-the-token", SERVICE).unwrap();
    assert_eq!(error_of(&wrong_token.create("+447700900510").await), (401, 20003));
    let mut wrong_service = Sdk::start(&base, ACCOUNT, TOKEN, "VAffffffffffffffffffffffffffffffff").unwrap();
    assert_eq!(error_of(&wrong_service.create("+447700900510").await), (404, 20404));

    // Parameters.
    assert_eq!(error_of(&sdk.create("12345").await), (400, 60200));
    let call = sdk.run(json!({"op": "create", "params": {"to": "+447700900511", "channel": "call"}})).await;
    assert_eq!(error_of(&call), (400, 60223));
    let custom = sdk.run(json!({"op": "create", "params": {"to": "+447700900511", "channel": "sms", "custom_code": "123456"}})).await;
    assert_eq!(error_of(&custom), (400, 60200));
    assert_eq!(error_of(&sdk.check(json!({"code": "123456"})).await), (400, 60221));
    assert!(sim.stats().submits.is_empty(), "no refused request sent an SMS");

    // Max check attempts: the last wrong check says so, the next is 60202.
    let number = "+447700900512";
    sdk.create(number).await;
    let code = code_sent(&sim, number, 1).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..2 {
        assert_eq!(sdk.check(json!({"to": number, "code": wrong})).await["status"], "pending");
    }
    let last = sdk.check(json!({"to": number, "code": wrong})).await;
    assert_eq!(last["status"], "max_attempts_reached", "{last}");
    let sid = last["sid"].as_str().unwrap();
    assert_eq!(error_of(&sdk.check(json!({"verification_sid": sid, "code": code})).await), (429, 60202));

    // Max send attempts: two sends per number per window.
    let number = "+447700900513";
    sdk.create(number).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    sdk.create(number).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(error_of(&sdk.create(number).await), (429, 60203));

    // Too many checks for one number in a minute.
    let number = "+447700900514";
    let started = sdk.create(number).await;
    let sid = started["sid"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    for _ in 0..8 {
        let answer = sdk.check(json!({"verification_sid": sid, "code": "12345"})).await;
        seen.push(answer["error"]["code"].as_u64().unwrap_or(0));
    }
    assert!(seen.contains(&60212), "checks past the per-number limit: {seen:?}");

    // Too many creates for the key in a minute.
    let mut codes = Vec::new();
    for n in 0..10 {
        let answer = sdk.create(&format!("+4477009006{n:02}")).await;
        codes.push(answer["error"]["code"].as_u64().unwrap_or(0));
    }
    assert!(codes.contains(&20429), "creates past the per-key limit: {codes:?}");
}
