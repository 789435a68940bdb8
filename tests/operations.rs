//! What operators rely on: metrics and the dashboard/alerts built on them, signals (SIGTERM,
//! SIGHUP), systemd notifications and the unit file.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{API_KEY, DaemonFiles, bearer, post_message, signal, sim, spawn_daemon, wait_ready, wait_status};
use otpgate::http::client::Client;
use otpgate::sim::SimConfig;
use otpgate::sim::accounting::Accounting;

/// `# TYPE name kind` lines of a Prometheus text exposition.
fn metric_types(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

/// Every `otpgate_*` metric a file refers to, without histogram suffixes.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("otpgate_") {
        let name: String = text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
        out.insert(base.to_string());
    }
    out
}

#[tokio::test]
async fn metrics_are_exported_with_their_types_and_cover_the_dashboard_and_alerts() {
    // The carrier link runs over TLS, so the certificate expiry gauge is exported too.
    let (_certificates, serving, tls_lines) = common::smpp_tls();
    let sim = sim(SimConfig { tls: Some(serving), ..SimConfig::default() }).await;
    let receiver = common::receiver::Receiver::start(common::receiver::Mode::Answer(204)).await;
    let webhook =
        format!("[[webhooks]]\nname = \"backend\"\nurl = \"{}\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n", receiver.url());
    let (gw, mut client) = common::Gateway::setup(&[sim.addr()], &tls_lines).sections(&webhook).bound().await;
    // Traffic of every kind: a message, a verification approved, a reconnect, a bad receipt.
    let id = post_message(&mut client, API_KEY, r#"{"to": "+447700900123", "text": "hello"}"#, None).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_status(&mut client, &id, "delivered", Duration::from_secs(5)).await;
    let auth = bearer(API_KEY);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let created = client.request("POST", "/v1/verifications", &headers, Some(r#"{"to": "+447700900456"}"#)).await.unwrap();
    let vid = created.json()["id"].as_str().unwrap().to_string();
    assert!(sim.wait_until(Duration::from_secs(5), |s| s.submits.len() == 2).await);
    let code: String = sim.stats().submits[1].text.chars().take_while(char::is_ascii_digit).collect();
    // The user types the code after the carrier took the SMS: by then its carrier is on record.
    common::wait_sent_via(&mut client, API_KEY, &vid, "alpha").await;
    let body = format!(r#"{{"code": "{code}"}}"#);
    client.request("POST", &format!("/v1/verifications/{vid}/check"), &headers, Some(&body)).await.unwrap();
    sim.deliver(
        rusmpp::pdus::DeliverSm::builder()
            .esm_class(rusmpp::values::EsmClass::from(0x04))
            .short_message(rusmpp::types::OctetString::from_vec(b"stat:DELIVRD".to_vec()).unwrap())
            .build(),
    );
    sim.drop_connections();
    assert!(gw.daemon.carriers()[0].wait_sessions(Duration::from_secs(3), |n| n == 0).await);
    gw.wait_bound().await;
    tokio::time::sleep(Duration::from_millis(1200)).await; // one gauge sample

    let mut metrics = Client::connect(gw.daemon.metrics_addr()).await.unwrap();
    let reply = metrics.request("GET", "/metrics", &[], None).await.unwrap();
    assert_eq!(reply.status, 200);
    let types = metric_types(&reply.body);
    let expected = [
        ("otpgate_http_requests_total", "counter"),
        ("otpgate_http_request_duration_seconds", "histogram"),
        ("otpgate_messages_total", "counter"),
        ("otpgate_queue_depth", "gauge"),
        ("otpgate_queue_oldest_age_seconds", "gauge"),
        ("otpgate_receipt_window_entries", "gauge"),
        ("otpgate_store_flush_seconds", "histogram"),
        ("otpgate_store_flushed_writes_total", "counter"),
        ("otpgate_resubmits_total", "counter"),
        ("otpgate_carrier_up", "gauge"),
        ("otpgate_carrier_circuit_open", "gauge"),
        ("otpgate_carrier_taking_traffic", "gauge"),
        ("otpgate_carrier_rate_limit", "gauge"),
        ("otpgate_spill_after_seconds", "gauge"),
        ("otpgate_spillovers_total", "counter"),
        ("otpgate_resend_limit_total", "counter"),
        ("otpgate_receipts_late_total", "counter"),
        ("otpgate_receipts_ambiguous_total", "counter"),
        ("otpgate_receipts_dropped_total", "counter"),
        ("otpgate_receipts_held_total", "counter"),
        ("otpgate_sessions_bound", "gauge"),
        ("otpgate_submit_total", "counter"),
        ("otpgate_submit_response_seconds", "histogram"),
        ("otpgate_window_in_use", "gauge"),
        ("otpgate_reconnects_total", "counter"),
        ("otpgate_receipts_total", "counter"),
        ("otpgate_receipt_latency_seconds", "histogram"),
        ("otpgate_receipts_unmatched_total", "counter"),
        ("otpgate_verifications_total", "counter"),
        ("otpgate_otp_sent_total", "counter"),
        ("otpgate_otp_approved_total", "counter"),
        ("otpgate_webhook_deliveries_total", "counter"),
        ("otpgate_webhook_attempt_seconds", "histogram"),
        ("otpgate_webhook_backlog", "gauge"),
        ("otpgate_webhook_oldest_pending_seconds", "gauge"),
        ("otpgate_webhook_dead_total", "counter"),
        ("otpgate_webhook_disabled", "gauge"),
        ("otpgate_tls_certificate_expiry_timestamp_seconds", "gauge"),
        ("otpgate_segments_total", "counter"),
        ("otpgate_fraud_suspended_prefixes", "gauge"),
    ];
    for (name, kind) in expected {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name} missing or of the wrong type");
    }
    let body = &reply.body;
    for sample in [
        r#"otpgate_messages_total{state="delivered"}"#,
        r#"otpgate_verifications_total{outcome="approved"}"#,
        r#"otpgate_carrier_up{carrier="alpha"} 1"#,
        r#"otpgate_carrier_taking_traffic{carrier="alpha"} 1"#,
        r#"otpgate_carrier_circuit_open{carrier="alpha"} 0"#,
        r#"otpgate_http_requests_total{route="/v1/messages/{id}",status="200"}"#,
        r#"otpgate_reconnects_total{carrier="alpha",reason="peer_closed"}"#,
        r#"otpgate_otp_sent_total{carrier="alpha",country="GB"} 1"#,
        r#"otpgate_otp_approved_total{carrier="alpha",country="GB"} 1"#,
        // Group commits take fractions of a millisecond: their histogram has buckets for that.
        r#"otpgate_store_flush_seconds_bucket{le="0.0001"}"#,
    ] {
        assert!(body.contains(sample), "no sample {sample} in:\n{body}");
    }
    // No label value comes from user input: no phone number, no id, no code.
    for leak in ["447700900123", &id, &vid, &code] {
        assert!(!body.contains(leak), "{leak} appears in /metrics");
    }

    let dashboard = std::fs::read_to_string("dashboards/otpgate.json").unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() > 10));
    let alerts = std::fs::read_to_string("dashboards/alerts.yml").unwrap();
    let exported: HashSet<&String> = types.keys().collect();
    for file in [&dashboard, &alerts] {
        for name in referenced_metrics(file) {
            assert!(exported.contains(&name), "{name} is used by a dashboard or alert but not exported");
        }
    }
    for alert in [
        "OtpgateCarrierNotTakingTraffic",
        "OtpgateQueueStale",
        "OtpgateStoreFlushSlow",
        "OtpgateCarrierThrottling",
        "OtpgateResendLimit",
        "OtpgateDeliveryRateLow",
        "OtpgateOtpConversionCollapse",
        "OtpgateReceiptsUnmatched",
        "OtpgateWebhookBacklogStale",
        "OtpgateWebhookDisabled",
        "OtpgateCertificateExpiringSoon",
        "OtpgateCertificateExpiring",
    ] {
        assert!(alerts.contains(alert), "{alert} missing");
    }
    match std::process::Command::new("promtool").args(["check", "rules", "dashboards/alerts.yml"]).output() {
        Ok(out) => assert!(out.status.success(), "promtool: {}", String::from_utf8_lossy(&out.stdout)),
        Err(_) if std::env::var_os("CI").is_none() => eprintln!("promtool not installed: rules not checked"),
        Err(e) => panic!("CI must have promtool: {e}"),
    }
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_and_exits_0_in_time() {
    let sim = sim(SimConfig { response_delay: Duration::from_millis(20), ..SimConfig::default() }).await;
    let files = DaemonFiles::new(&[sim.addr()], "", "");
    let mut daemon = spawn_daemon(&files.config, None, &[]);
    wait_ready(files.http).await;
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (acknowledged, stop, http) = (acknowledged.clone(), stop.clone(), files.http);
            tokio::spawn(async move {
                let Ok(mut client) = Client::connect(http).await else { return };
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    let text = format!("term-{c}-{i}");
                    let body = format!(r#"{{"to": "+44770{c}{i:06}", "text": "{text}"}}"#);
                    match post_message_raw(&mut client, &body).await {
                        Some(202) => acknowledged.lock().unwrap().push(text),
                        // 503 shutting_down or a closed connection: not acknowledged.
                        _ => return,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let term_at = Instant::now();
    signal(&daemon, "TERM");
    let exit = tokio::task::spawn_blocking(move || daemon.wait()).await.unwrap().unwrap();
    let took = term_at.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        let _ = c.await;
    }
    assert!(exit.success(), "SIGTERM must exit 0, got {exit}");
    assert!(took < Duration::from_secs(6), "shutdown took {took:?} (shutdown_timeout is 5s)");
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 20, "the load did not run");

    // Whatever was acknowledged and not yet sent goes out after a restart.
    let daemon = spawn_daemon(&files.config, None, &[]);
    let accounting = Accounting::settle(&[&sim], &acknowledged, Duration::from_secs(20)).await;
    println!("{accounting}");
    assert!(accounting.nothing_lost(), "a message acknowledged before SIGTERM was lost: {accounting}");
    assert_eq!(accounting.duplicates, 0, "a graceful shutdown must not cause duplicates");
    signal(&daemon, "TERM");
    let mut daemon = daemon;
    tokio::task::spawn_blocking(move || daemon.wait()).await.unwrap().unwrap();
}

async fn post_message_raw(client: &mut Client, body: &str) -> Option<u16> {
    let auth = bearer(API_KEY);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    client.request("POST", "/v1/messages", &headers, Some(body)).await.ok().map(|r| r.status)
}

/// Reads datagrams from a fake NOTIFY_SOCKET in the background.
fn notify_listener(path: &std::path::Path) -> Arc<Mutex<Vec<String>>> {
    let socket = UnixDatagram::bind(path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Ok(n) = socket.recv(&mut buf) {
                out.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    });
    seen
}

async fn wait_for(seen: &Arc<Mutex<Vec<String>>>, what: &str, count: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if seen.lock().unwrap().iter().filter(|m| m.contains(what)).count() >= count {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_carriers_and_routes_and_refuses_a_bad_config_with_systemd_told_throughout() {
    let alpha = sim(SimConfig::default()).await;
    let beta = sim(SimConfig::default()).await;
    let only_uk = "[[routes]]\nprefixes = [\"+44\"]\ncarriers = [\"alpha\"]\n";
    let files = DaemonFiles::new(&[alpha.addr()], "", only_uk);
    let notify_path = files.dir.path().join("notify.sock");
    let seen = notify_listener(&notify_path);
    let log = files.dir.path().join("otpgate.log");
    let notify = notify_path.display().to_string();
    let mut daemon = spawn_daemon(&files.config, Some(&log), &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "200000")]);
    assert!(wait_for(&seen, "READY=1", 1).await, "no READY=1");
    assert!(wait_for(&seen, "WATCHDOG=1", 3).await, "the watchdog is not pinged");
    let mut client = Client::connect(files.http).await.unwrap();
    let france = r#"{"to": "+33612345678", "text": "bonjour"}"#;
    assert_eq!(post_message(&mut client, API_KEY, france, None).await.status, 503, "no route to France yet");

    // A broken file: refused, the running config stays, the service keeps answering.
    std::fs::write(&files.config, "[[carriers]]\nname = \"broken\"\n").unwrap();
    signal(&daemon, "HUP");
    assert!(wait_for(&seen, "RELOADING=1", 1).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let uk = r#"{"to": "+447700900123", "text": "still here"}"#;
    let reply = post_message(&mut client, API_KEY, uk, None).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("reload refused"), "{logs}");

    // Add beta with a route for France: it binds, and France is served without a restart.
    let with_beta = format!("{only_uk}[[routes]]\nprefixes = [\"+33\"]\ncarriers = [\"beta\"]\n");
    files.write(&[alpha.addr(), beta.addr()], "", &with_beta);
    signal(&daemon, "HUP");
    assert!(beta.wait_until(Duration::from_secs(5), |s| s.binds.iter().any(|b| b.accepted)).await, "beta never bound");
    assert!(wait_for(&seen, "READY=1", 3).await, "READY=1 after each reload");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = post_message(&mut client, API_KEY, france, None).await;
        if reply.status == 202 {
            break;
        }
        assert!(Instant::now() < deadline, "France still unrouted after reload: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(beta.wait_until(Duration::from_secs(5), |s| s.submits.iter().any(|m| m.text == "bonjour")).await);
    assert_eq!(alpha.stats().connections, 1, "alpha was not touched by the reload");

    // Remove alpha: it is unbound cleanly.
    files.write_named(&[("beta", beta.addr())], "", "[[routes]]\nprefixes = [\"*\"]\ncarriers = [\"beta\"]\n");
    signal(&daemon, "HUP");
    assert!(alpha.wait_until(Duration::from_secs(5), |s| s.unbinds == 1).await, "removed carrier not unbound");

    signal(&daemon, "TERM");
    assert!(wait_for(&seen, "STOPPING=1", 1).await);
    let exit = tokio::task::spawn_blocking(move || daemon.wait()).await.unwrap().unwrap();
    assert!(exit.success());
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string("systemd/otpgate.service").unwrap();
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=otpgate",
        "User=otpgate",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
        "ExecReload=",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::canonicalize("config/otpgate.toml").unwrap();
    let local =
        unit.replace("/usr/bin/otpgate", env!("CARGO_BIN_EXE_otpgate")).replace("/etc/otpgate/otpgate.toml", &config.display().to_string());
    let path = dir.path().join("otpgate.service");
    std::fs::write(&path, local).unwrap();
    match std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output() {
        Ok(out) => assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) if std::env::var_os("CI").is_none() => eprintln!("systemd-analyze not installed: unit not verified"),
        Err(e) => panic!("CI must have systemd-analyze: {e}"),
    }
}

/// While SIGTERM drains submits under way, new clients get 503 shutting_down (a clear answer to
/// retry elsewhere), not "connection refused".
#[tokio::test]
async fn during_the_shutdown_drain_new_requests_get_503_shutting_down() {
    let sim = sim(SimConfig { response_delay: Duration::from_millis(800), ..SimConfig::default() }).await;
    let files = DaemonFiles::new(&[sim.addr()], "", "");
    let mut daemon = spawn_daemon(&files.config, None, &[]);
    wait_ready(files.http).await;
    let mut client = Client::connect(files.http).await.unwrap();
    let reply = post_message(&mut client, API_KEY, r#"{"to": "+447700900123", "text": "slow"}"#, None).await;
    assert_eq!(reply.status, 202);
    assert!(sim.wait_until(Duration::from_secs(5), |s| s.outstanding == 1).await, "the submit is under way");
    signal(&daemon, "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut late = Client::connect(files.http).await.expect("the listener is still open during the drain");
    let reply = post_message(&mut late, API_KEY, r#"{"to": "+447700900124", "text": "late"}"#, None).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.json()["error"]["code"], "shutting_down", "{}", reply.body);
    // A connection answered during the drain is closed after its answer (graceful shutdown): a
    // balancer's health check comes on a connection of its own.
    let mut probe = Client::connect(files.http).await.expect("the listener is still open during the drain");
    let ready = probe.request("GET", "/readyz", &[], None).await.unwrap();
    assert_eq!(ready.status, 503);
    let exit = tokio::task::spawn_blocking(move || daemon.wait()).await.unwrap().unwrap();
    assert!(exit.success());
    assert_eq!(sim.stats().submits.len(), 1, "the drained submit finished; the late one was never taken");
}
