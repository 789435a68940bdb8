//! The `otpgate` binary as operators run it.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{carrier_config, sms, start_bound};
use otpgate::smpp::SubmitOutcome;

fn otpgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_otpgate"))
}

#[test]
fn check_config_accepts_the_shipped_config_and_summarises_it() {
    let out = otpgate().args(["check-config", "--config", "config/otpgate.toml"]).output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("config/otpgate.toml: OK"), "{stdout}");
    assert!(stdout.contains("alpha") && stdout.contains("beta"), "{stdout}");
    assert!(stdout.contains("transmitter+receiver x2"), "{stdout}");
    assert!(!stdout.contains("secret"), "password printed: {stdout}");
}

#[test]
fn check_config_names_file_and_key_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = std::fs::read_to_string("config/otpgate.toml").unwrap().replacen("window = 64", "window = 0", 1);
    std::fs::write(&path, text).unwrap();
    let out = otpgate().args(["check-config", "--config"]).arg(&path).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml"), "{stderr}");
    assert!(stderr.contains("carriers[0].window"), "{stderr}");

    let out = otpgate().args(["check-config", "--config", "/nonexistent/otpgate.toml"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/otpgate.toml: cannot read"));
}

#[test]
fn demo_brings_up_both_carriers_and_shows_the_sms_and_receipts() {
    let out = otpgate().args(["demo", "--once", "--http", "127.0.0.1:0"]).env("RUST_LOG", "info").output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("carrier alpha: 1 submit session(s) bound"), "{stdout}");
    assert!(stdout.contains("carrier beta: 2 submit session(s) bound"), "{stdout}");
    assert!(stdout.contains("[carrier alpha] SMS to +447700900123"), "{stdout}");
    assert!(stdout.contains("curl -s -X POST http://127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("POST /v1/messages -> 202"), "{stdout}");
    assert!(stdout.contains(r#""status":"delivered""#), "{stdout}");
    assert!(stdout.contains("/v1/verifications/ID/check"), "{stdout}");
    assert!(stdout.contains(r#"{"id":"#) && stdout.contains(r#""status":"approved"}"#), "{stdout}");
    assert!(stdout.contains("is your otpgate code"), "the carrier printout shows the SMS: {stdout}");
    assert!(stdout.contains("stopped (all sessions unbound)"), "{stdout}");
}

#[tokio::test]
async fn smsc_sim_command_serves_real_binds() {
    let mut child =
        otpgate().args(["smsc-sim", "--listen", "127.0.0.1:0", "--password", "secret"]).stdout(Stdio::piped()).spawn().expect("starts");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("smsc-sim listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let running = start_bound(carrier_config(addr, "")).await;
    let outcome = tokio::time::timeout(Duration::from_secs(5), running.carrier.submit(&sms("hi"))).await;
    assert!(matches!(outcome, Ok(SubmitOutcome::Accepted { .. })), "{outcome:?}");
    running.shutdown.cancel();
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn hash_key_prints_the_sha256_of_the_key_on_stdin() {
    use std::io::Write;
    let mut child = otpgate().arg("hash-key").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"correct-horse-battery-staple\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    // sha256("correct-horse-battery-staple")
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), otpgate::http::sha256_hex(b"correct-horse-battery-staple"));
    assert_eq!(otpgate::http::sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

#[test]
fn bench_runs_end_to_end_and_accounts_for_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("run.svg");
    let out = otpgate()
        .args([
            "bench",
            "--messages",
            "300",
            "--concurrency",
            "8",
            "--rate",
            "100",
            "--open-loop-seconds",
            "1",
            "--verifications",
            "20",
            "--recovery-messages",
            "300",
            "--random-ids",
        ])
        .arg("--plot")
        .arg(&plot)
        .env("RUST_LOG", "error")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| closed loop: HTTP 202 accepted / s |"), "{stdout}");
    for how in ["clean stop", "kill -9"] {
        assert!(stdout.contains(&format!("| restart after {how} with 300 queued, carriers down: serving after |")), "{stdout}");
    }
    assert!(stdout.contains("| restart with 300 queued, carriers up: every one submitted and its receipt matched after |"), "{stdout}");
    assert!(stdout.contains("reached the SMSCs 300, lost 0)"), "{stdout}");
    assert!(stdout.contains("accounting: acknowledged 400, reached the SMSCs 400, duplicates 0, lost 0; receipts matched 400"), "{stdout}");
    // Beside the rates: CPU per message and the machine's idle share; progress on stderr; the plot.
    assert!(stdout.contains("CPU ms per message, otpgate / this process") && stdout.contains("machine idle"), "{stdout}");
    assert!(stdout.contains("| open loop: requests sent behind their due time (load generator), p50 / p99 |"), "{stdout}");
    // The group commits the daemon reported: some, each covering at least one writer.
    let commits = stdout.lines().find(|l| l.starts_with("| closed loop: group commits per message;")).expect("a group-commit row");
    let per_flush: f64 = commits.trim_end_matches(" |").rsplit("; ").next().and_then(|v| v.parse().ok()).expect("writers per flush");
    assert!(per_flush >= 1.0, "{commits}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bench: closed: 300/300 messages in") && stderr.contains("bench: open: 100/100 messages in"), "{stderr}");
    let svg = std::fs::read_to_string(&plot).expect("the plot is written");
    assert!(svg.starts_with("<svg") && svg.contains("closed") && svg.contains("open"));
}

#[test]
fn check_config_lists_webhooks_warns_of_plain_http_and_never_shows_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook.secret");
    std::fs::write(&secret_file, "whsec_c2VjcmV0LWtleS1vZi0yNC1ieXRlcy1sb25n\n").unwrap();
    let shipped = std::fs::read_to_string("config/otpgate.toml").unwrap();
    let webhooks = format!(
        "\n[[webhooks]]\nname = \"backend\"\nurl = \"https://backend.example/events\"\nsecret_file = {:?}\nevents = [\"message.*\"]\n\n\
         [[webhooks]]\nname = \"internal\"\nurl = \"http://10.0.0.5/hooks\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_c2VjcmV0LWtleS1vZi0yNC1ieXRlcy1sb25n\"\n",
        secret_file.display().to_string()
    );
    let path = dir.path().join("otpgate.toml");
    std::fs::write(&path, format!("{shipped}{webhooks}")).unwrap();
    let out = otpgate().args(["check-config", "--config"]).arg(&path).output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("webhook:")).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].contains("backend -> https://backend.example/events") && lines[0].contains("events message.*"), "{}", lines[0]);
    assert!(!lines[0].contains("WARNING"), "{}", lines[0]);
    assert!(lines[1].contains("secrets 2 (rotating") && lines[1].contains("WARNING: plain http"), "{}", lines[1]);
    assert!(!stdout.contains("MfKQ9r8") && !stdout.contains("c2VjcmV0"), "a secret was printed: {stdout}");

    // A broken secret: the file and key are named, the secret is not echoed.
    std::fs::write(
        &path,
        format!("{shipped}{}", webhooks.replace("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")),
    )
    .unwrap();
    let out = otpgate().args(["check-config", "--config"]).arg(&path).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("webhooks[1].secret") && stderr.contains("whsec_"), "{stderr}");
    assert!(!stderr.contains("MfKQ9r8"), "the secret was echoed: {stderr}");
}

/// The package's man page comes from the command line's own help (tests/deb installs it).
#[test]
fn man_prints_a_man_page_of_the_commands() {
    let out = otpgate().arg("man").output().expect("runs");
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH otpgate 1"), "{page}");
    for command in ["run", "check\\-config", "demo", "hash\\-key", "bench", "smsc\\-sim"] {
        assert!(page.contains(command), "the man page lacks {command}: {page}");
    }
}
