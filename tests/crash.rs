//! kill -9 of the real `otpgate run` process under load: every message answered 202 reaches
//! the SMSC after a restart on the same data_dir. Duplicates are allowed (at-least-once) and
//! counted; losses are not.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{API_KEY, DaemonFiles, post_message, signal, sim, spawn_daemon, wait_ready};
use otpgate::http::client::Client;
use otpgate::sim::SimConfig;
use otpgate::sim::accounting::Accounting;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_kill_9_and_a_restart() {
    const MESSAGES: usize = 600;
    const KILL_AFTER: usize = 250;
    const CLIENTS: usize = 8;
    let sim = sim(SimConfig { response_delay: Duration::from_millis(30), ..SimConfig::default() }).await;
    let files = DaemonFiles::new(&[sim.addr()], "window = 16", "");
    let (http, config) = (files.http, files.config.clone());

    let mut daemon = spawn_daemon(&config, None, &[]);
    wait_ready(http).await;

    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let killed = Arc::new(tokio::sync::Notify::new());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let acknowledged = acknowledged.clone();
            let next = next.clone();
            let killed = killed.clone();
            tokio::spawn(async move {
                let Ok(mut client) = Client::connect(http).await else { return };
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= MESSAGES {
                        return;
                    }
                    let body = format!(r#"{{"to": "+4477009{i:05}", "text": "crash-test {i}"}}"#);
                    let auth = format!("Bearer {API_KEY}");
                    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                    match client.request("POST", "/v1/messages", &headers, Some(&body)).await {
                        Ok(reply) if reply.status == 202 => {
                            let mut acked = acknowledged.lock().unwrap();
                            acked.insert(format!("crash-test {i}"));
                            if acked.len() == KILL_AFTER {
                                killed.notify_one();
                            }
                        }
                        // The process died under us: this one was never acknowledged.
                        _ => return,
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(30), killed.notified()).await.expect("load reached the kill point");
    daemon.kill().expect("SIGKILL");
    daemon.wait().unwrap();
    for client in clients {
        let _ = client.await;
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= KILL_AFTER);
    let before_restart = sim.stats().submits.len();

    let daemon = spawn_daemon(&config, None, &[]);
    let acknowledged: Vec<String> = acknowledged.into_iter().collect();
    let accounting = Accounting::settle(&[&sim], &acknowledged, Duration::from_secs(30)).await;
    println!("{accounting}; submitted before the kill {before_restart}");
    assert!(accounting.nothing_lost(), "{accounting}");
    let duplicates = accounting.duplicates;
    // Duplicates are the submits in flight at the kill (at most the window of 16) plus accepted
    // ones whose new status was not yet flushed; under load the group commit flushes every few
    // milliseconds, so they stay a small multiple of the window.
    assert!(duplicates <= 64, "{duplicates} duplicates: far more than the window explains");

    // Every possible duplicate is known for what it is: its in-flight mark was on disk before
    // the submit went out.
    wait_ready(http).await;
    let resubmits = common::metric(files.metrics, "otpgate_resubmits_total").await;
    assert!(resubmits >= duplicates as f64, "{duplicates} sent twice, {resubmits} counted");
    // The restarted daemon still answers for a message taken in before the kill.
    let mut client = Client::connect(http).await.unwrap();
    let reply = post_message(&mut client, API_KEY, r#"{"to": "+447700900123", "text": "after"}"#, None).await;
    assert_eq!(reply.status, 202);

    // SIGTERM: a clean exit.
    signal(&daemon, "TERM");
    let mut daemon = daemon;
    let exit = tokio::task::spawn_blocking(move || daemon.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "SIGTERM must end in exit 0, got {exit}");
}

/// A receipt the SMSC saw answered is gone from the SMSC: it must be on our disk. Each kill comes
/// after the intake has gone quiet, so no HTTP group commit happens to cover the receipts' rows;
/// two rounds, since the kill may by chance fall just after sled's own flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_receipt_answered_before_kill_9_is_on_disk() {
    const ROUNDS: usize = 2;
    const MESSAGES: usize = 200;
    let sim = sim(SimConfig {
        // Receipts trickle in, one every ~10 ms, starting after the last request was answered.
        receipt_delay: Duration::from_millis(2500),
        ..SimConfig::default()
    })
    .await;
    let files = DaemonFiles::new(&[sim.addr()], "window = 16", "");
    let (http, config) = (files.http, files.config.clone());
    let mut ids = HashMap::new();
    for round in 0..ROUNDS {
        let mut daemon = spawn_daemon(&config, None, &[]);
        wait_ready(http).await;
        let mut client = Client::connect(http).await.unwrap();
        for i in 0..MESSAGES {
            let text = format!("receipt-test {round}-{i}");
            let body = format!(r#"{{"to": "+4477009{i:05}", "text": "{text}"}}"#);
            let reply = post_message(&mut client, API_KEY, &body, None).await;
            assert_eq!(reply.status, 202);
            ids.insert(text, reply.json()["id"].as_str().unwrap().to_string());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let target = round * MESSAGES + MESSAGES / 2;
        assert!(sim.wait_until(Duration::from_secs(20), |s| s.acked_receipts.len() >= target).await, "receipts never flowed");
        daemon.kill().expect("SIGKILL");
        daemon.wait().unwrap();
    }
    let stats = sim.stats();
    assert!(stats.acked_receipts.len() < ROUNDS * MESSAGES, "the kills came too late to test anything");
    let texts: HashMap<&str, &str> = stats.submits.iter().map(|m| (m.message_id.as_str(), m.text.as_str())).collect();

    let daemon = spawn_daemon(&config, None, &[]);
    wait_ready(http).await;
    let mut client = Client::connect(http).await.unwrap();
    let mut lost = Vec::new();
    for smsc_id in &stats.acked_receipts {
        let id = &ids[texts[smsc_id.as_str()]];
        let status = common::get_message(&mut client, API_KEY, id).await.json()["status"].clone();
        if status != "delivered" {
            lost.push(format!("{id} ({smsc_id}): {status}"));
        }
    }
    println!("receipts answered before the kills: {}, not on disk: {}", stats.acked_receipts.len(), lost.len());
    assert!(lost.is_empty(), "receipts answered to the SMSC but lost: {lost:?}");
    signal(&daemon, "TERM");
    let mut daemon = daemon;
    tokio::task::spawn_blocking(move || daemon.wait()).await.unwrap().unwrap();
}

/// "On disk" must hold through a power cut, not only a kill -9: sled's flush ends with
/// `sync_file_range`, which leaves the device's write cache and the log file's length unsynced.
/// Requests sent one after another each wait for a group commit of their own, so each must be
/// covered by an `fdatasync` of sled's log file (seen with strace; sled itself never calls it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_acknowledged_message_waits_for_an_fdatasync_of_the_log_file() {
    if common::on_postgres() {
        println!("on PostgreSQL the commit is the server's: nothing of ours to check");
        return;
    }
    const MESSAGES: usize = 20;
    let sim = sim(SimConfig::default()).await;
    let files = DaemonFiles::new(&[sim.addr()], "", "");
    let (trace, pid_file) = (files.dir.path().join("fdatasync.txt"), files.dir.path().join("daemon.pid"));
    // The shell execs the daemon, so its pid is the daemon's.
    let script =
        format!("echo $$ > '{}'; exec '{}' run --config '{}'", pid_file.display(), env!("CARGO_BIN_EXE_otpgate"), files.config.display());
    let spawned = std::process::Command::new("strace")
        .args(["-f", "-y", "-e", "trace=fdatasync", "-o"])
        .arg(&trace)
        .args(["sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let mut tracer = match spawned {
        Ok(child) => child,
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("strace not installed: the log file's sync not checked");
            return;
        }
        Err(e) => panic!("CI must have strace: {e}"),
    };
    wait_ready(files.http).await;
    let mut client = Client::connect(files.http).await.unwrap();
    for i in 0..MESSAGES {
        let body = format!(r#"{{"to": "+4477009{i:05}", "text": "synced {i}"}}"#);
        assert_eq!(post_message(&mut client, API_KEY, &body, None).await.status, 202);
    }
    let daemon = std::fs::read_to_string(&pid_file).expect("pid written").trim().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &daemon]).status().unwrap().success());
    let exit = tokio::task::spawn_blocking(move || tracer.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "the traced daemon must exit 0 on SIGTERM, got {exit}");
    let calls = std::fs::read_to_string(&trace).expect("strace wrote its trace");
    let log = files.data_dir().join("db").join("db");
    let synced =
        calls.lines().filter(|l| l.contains("fdatasync(") && l.contains(&format!("<{}>", log.display())) && l.ends_with("= 0")).count();
    assert!(synced >= MESSAGES, "{synced} fdatasync calls on {} for {MESSAGES} requests in a row:\n{calls}", log.display());
}
