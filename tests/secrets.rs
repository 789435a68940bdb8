//! After a real run of `otpgate run` (debug logging on), no code that was sent appears in the
//! data_dir, in the logs or in any API answer.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{API_KEY, DaemonFiles, bearer, sim};
use otpgate::http::client::Client;
use otpgate::sim::SimConfig;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_never_reach_the_store_the_logs_or_the_api() {
    let sim = sim(SimConfig::default()).await;
    let files = DaemonFiles::new(&[sim.addr()], "", "[otp]\nwebotp_domain = \"shop.example\"\n");
    let (http, config, data_dir) = (files.http, files.config.clone(), files.data_dir());
    let log_path = files.dir.path().join("otpgate.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_otpgate"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();

    let started = std::time::Instant::now();
    let mut client = loop {
        if let Ok(c) = Client::connect(http).await {
            break c;
        }
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!("otpgate exited with {status}: {}", std::fs::read_to_string(&log_path).unwrap_or_default());
        }
        assert!(started.elapsed() < Duration::from_secs(15), "otpgate did not start listening");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let auth = bearer(API_KEY);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let mut answers = String::new();
    let mut ids = Vec::new();
    for n in 0..5 {
        // Ten-digit codes: a chance match against other digits in the files is negligible.
        let body = format!(r#"{{"to": "+4477009002{n:02}", "code_length": 10}}"#);
        let reply = client.request("POST", "/v1/verifications", &headers, Some(&body)).await.unwrap();
        assert_eq!(reply.status, 201, "{}", reply.body);
        answers.push_str(&reply.body);
        ids.push(reply.json()["id"].as_str().unwrap().to_string());
    }
    assert!(sim.wait_until(Duration::from_secs(10), |s| s.submits.len() == 5).await, "SMS did not arrive");
    // In the order of the verifications: SMS to different numbers may reach the SMSC in any order.
    let submits = sim.stats().submits;
    let codes: Vec<String> = (0..5)
        .map(|n| {
            let sms =
                submits.iter().find(|m| m.to == format!("4477009002{n:02}")).unwrap_or_else(|| panic!("an SMS per number: {submits:?}"));
            let code: String = sms.text.chars().take_while(char::is_ascii_digit).collect();
            assert!(sms.text.ends_with(&format!("@shop.example #{code}")), "{}", sms.text);
            code
        })
        .collect();
    assert!(codes.iter().all(|c| c.len() == 10), "{codes:?}");
    // Approve two, fail one, read all.
    for (id, code) in ids.iter().zip(&codes).take(2) {
        let body = format!(r#"{{"code": "{code}"}}"#);
        let reply = client.request("POST", &format!("/v1/verifications/{id}/check"), &headers, Some(&body)).await.unwrap();
        assert_eq!(reply.json()["status"], "approved");
        answers.push_str(&reply.body);
    }
    let reply =
        client.request("POST", &format!("/v1/verifications/{}/check", ids[2]), &headers, Some(r#"{"code": "0000000001"}"#)).await.unwrap();
    answers.push_str(&reply.body);
    for id in &ids {
        let reply = client.request("GET", &format!("/v1/verifications/{id}"), &headers[..1], None).await.unwrap();
        answers.push_str(&reply.body);
    }

    let mut metrics = Client::connect(files.metrics).await.unwrap();
    let exposition = metrics.request("GET", "/metrics", &[], None).await.unwrap().body;
    assert!(exposition.contains("otpgate_verifications_total"), "metrics were served");
    common::signal(&daemon, "TERM");
    let exit = tokio::task::spawn_blocking(move || daemon.wait()).await.unwrap().unwrap();
    assert!(exit.success());

    let logs = std::fs::read(&log_path).unwrap();
    assert!(contains(&logs, b"DEBUG"), "debug logging was on");
    let stored = common::stored(&data_dir);
    assert!(stored.len() >= 2, "the store wrote: {}", stored.len());
    for code in &codes {
        assert!(!answers.contains(code.as_str()), "an API answer leaked a code");
        assert!(!exposition.contains(code.as_str()), "/metrics leaked a code");
        assert!(!contains(&logs, code.as_bytes()), "the log leaked a code");
        for (place, bytes) in &stored {
            assert!(!contains(bytes, code.as_bytes()), "{place} holds a code in plaintext");
        }
    }
    let key_file = data_dir.join("otp-hmac.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the HMAC key file must be private");
}
