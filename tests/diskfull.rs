//! The disk fills under load: the intake answers 503 instead of acknowledging what it cannot
//! store, nothing acknowledged is lost, and it recovers when space returns. Runs on a small
//! tmpfs; where this machine does not allow mounting one, the test says so and checks nothing.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{API_KEY, DaemonFiles, bearer, signal, sim, spawn_daemon, wait_ready};
use otpgate::http::client::Client;
use otpgate::sim::accounting::Accounting;
use otpgate::sim::{SimConfig, SmscSim};

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).ok()?;
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path).status().ok()?.success();
        ok.then(|| Tmpfs(path.to_path_buf()))
    }

    fn resize(&self, size: &str) -> bool {
        Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).status().is_ok_and(|s| s.success())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A daemon with one simulated carrier and a 6 MB tmpfs as its data_dir, ready; `None` on
/// PostgreSQL (the full disk here is sled's) or where no tmpfs can be mounted (said why).
struct SmallDisk {
    // Unmounted first (fields drop in order), then the directory it was mounted on goes.
    tmpfs: Tmpfs,
    sim: SmscSim,
    files: DaemonFiles,
    log: std::path::PathBuf,
    daemon: std::process::Child,
}

impl SmallDisk {
    async fn start() -> Option<SmallDisk> {
        if common::on_postgres() {
            eprintln!("SKIPPED on PostgreSQL: the full disk here is sled's data_dir (a database outage is store::postgres's test)");
            return None;
        }
        let sim = sim(SimConfig::default()).await;
        let files = DaemonFiles::new(&[sim.addr()], "", "[store]\ncache_capacity_mb = 8\n");
        let Some(tmpfs) = Tmpfs::mount(&files.data_dir(), "6m") else {
            eprintln!("cannot mount a tmpfs here: disk-full scenario not run (see README, Reliability)");
            return None;
        };
        let log = files.dir.path().join("otpgate.log");
        let daemon = spawn_daemon(&files.config, Some(&log), &[]);
        wait_ready(files.http).await;
        Some(SmallDisk { tmpfs, sim, files, log, daemon })
    }

    /// Sends messages until `refusals` of them got 503 store_unavailable: the texts acknowledged,
    /// and how many were refused.
    async fn fill(&self, client: &mut Client, refusals: usize) -> (Vec<String>, usize) {
        let auth = bearer(API_KEY);
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        let (mut acknowledged, mut refused) = (Vec::new(), 0);
        let filler = "x".repeat(150);
        for i in 0..60_000 {
            let text = format!("{i} {filler}");
            let body = format!(r#"{{"to": "+4477{:08}", "text": "{text}"}}"#, i);
            let reply = match client.request("POST", "/v1/messages", &headers, Some(&body)).await {
                Ok(reply) => reply,
                Err(_) => {
                    *client = Client::connect(self.files.http).await.expect("otpgate still answers");
                    continue;
                }
            };
            match reply.status {
                202 => acknowledged.push(text),
                503 => {
                    assert_eq!(reply.json()["error"]["code"], "store_unavailable", "{}", reply.body);
                    refused += 1;
                    if refused >= refusals {
                        break;
                    }
                }
                other => panic!("unexpected {other}: {}", reply.body),
            }
        }
        assert!(refused > 0, "the disk never filled ({} acknowledged)", acknowledged.len());
        (acknowledged, refused)
    }

    /// Space returns; sled 0.34 does not recover in place, so the service restarts (as systemd
    /// would) and the store reopens.
    async fn restart_with_space(&mut self) {
        assert!(self.tmpfs.resize("256m"));
        signal(&self.daemon, "TERM");
        let _ = tokio::task::block_in_place(|| self.daemon.wait());
        self.daemon = spawn_daemon(&self.files.config, Some(&self.log), &[]);
        wait_ready(self.files.http).await;
    }

    async fn stop(mut self) {
        signal(&self.daemon, "TERM");
        let exit = tokio::task::spawn_blocking(move || self.daemon.wait()).await.unwrap().unwrap();
        assert!(exit.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gets_503_loses_nothing_and_recovers() {
    let Some(mut disk) = SmallDisk::start().await else { return };
    let mut client = Client::connect(disk.files.http).await.unwrap();
    let (mut acknowledged, refused) = disk.fill(&mut client, 20).await;
    assert!(
        disk.daemon.try_wait().unwrap().is_none(),
        "otpgate died on a full disk: {}",
        std::fs::read_to_string(&disk.log).unwrap_or_default()
    );

    // Unready, so a load balancer moves on, and systemd (no more watchdog pings) restarts it.
    let ready = client.request("GET", "/readyz", &[], None).await.unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.json()["store_writable"], false);

    disk.restart_with_space().await;
    let mut client = Client::connect(disk.files.http).await.unwrap();
    let auth = bearer(API_KEY);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let body = r#"{"to": "+447900000001", "text": "after"}"#;
    let reply = client.request("POST", "/v1/messages", &headers, Some(body)).await.unwrap();
    assert_eq!(reply.status, 202, "the intake did not recover: {}", reply.body);
    acknowledged.push("after".to_string());
    let accounting = Accounting::settle(&[&disk.sim], &acknowledged, Duration::from_secs(60)).await;
    println!("{accounting}; refused {refused} while full");
    assert!(accounting.nothing_lost(), "an acknowledged message was lost on the full disk: {accounting}");
    disk.stop().await;
}

/// Messages queued while their carrier was down, then a full disk, then the carrier back: none
/// goes out while the store cannot put its in-flight mark on disk (sent anyway, a submit would
/// be on record nowhere and go again after the restart), and after the restart each goes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_mark_a_submit_holds_it_back() {
    let Some(mut disk) = SmallDisk::start().await else { return };
    let mut client = Client::connect(disk.files.http).await.unwrap();
    // The carrier goes down.
    disk.sim.set_behaviour(otpgate::sim::Behaviour::RefuseBinds);
    disk.sim.drop_connections();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while client.request("GET", "/readyz", &[], None).await.unwrap().json()["carriers_bound"] != serde_json::json!([]) {
        assert!(tokio::time::Instant::now() < deadline, "the carrier never went down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let binds_before = disk.sim.stats().binds.iter().filter(|b| b.accepted).count();
    let (acknowledged, _) = disk.fill(&mut client, 1).await;
    let ready = client.request("GET", "/readyz", &[], None).await.unwrap();
    assert_eq!(ready.json()["store_writable"], false, "{}", ready.body);

    // The carrier comes back while the store cannot write: it binds, and takes nothing.
    disk.sim.set_behaviour(otpgate::sim::Behaviour::Normal);
    let bound_again = disk.sim.wait_until(Duration::from_secs(10), |s| s.binds.iter().filter(|b| b.accepted).count() > binds_before).await;
    assert!(bound_again, "otpgate never bound again");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(disk.sim.stats().submits.len(), 0, "submits went out with their in-flight mark not on disk");

    // Space returns and the service restarts: every message goes, once.
    disk.restart_with_space().await;
    let accounting = Accounting::settle(&[&disk.sim], &acknowledged, Duration::from_secs(60)).await;
    println!("{accounting}");
    assert!(accounting.nothing_lost() && accounting.duplicates == 0, "{accounting}");
    disk.stop().await;
}
