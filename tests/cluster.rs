//! Cluster mode: several nodes on one PostgreSQL database (a real, throwaway server), one of
//! them dispatching. Any node serves the whole API, rules hold cluster-wide, a killed or stalled
//! leader is replaced within `cluster.takeover`, and nothing acknowledged is lost.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{API_KEY, bearer, code_sent, free_addr, signal, sim, spawn_daemon};
use otpgate::config::ConfigBuilder;
use otpgate::daemon::Daemon;
use otpgate::http::client::{Client, Reply};
use otpgate::sim::SimConfig;
use otpgate::sim::accounting::Accounting;
use otpgate::throwaway_pg::ThrowawayPostgres;

/// Short, so the takeover tests are quick: the lease is half of it.
const TAKEOVER: Duration = Duration::from_secs(4);
const WINDOW: usize = 16;

/// The shared database, and a directory for the nodes' files (each its own data_dir; one OTP
/// key file all of them read, as an operator would copy it to every node).
struct Db {
    server: ThrowawayPostgres,
    dir: tempfile::TempDir,
}

impl Db {
    async fn start() -> Option<Db> {
        let server = ThrowawayPostgres::for_tests().await.expect("a throwaway PostgreSQL server starts")?;
        Some(Db { server, dir: tempfile::tempdir().unwrap() })
    }

    /// Node `name`'s config; its carrier binds as system_id `name`, so the simulator tells
    /// apart what each node submitted.
    fn node(&self, name: &str, carrier: SocketAddr, otp: &str) -> ConfigBuilder {
        let key = self.dir.path().join("otp-hmac.key");
        common::gateway_config(
            &common::named(&[carrier]),
            &self.dir.path().join(name),
            &format!("window = {WINDOW}\nsystem_id = \"{name}\""),
        )
        .store(&format!("backend = \"postgres\"\npostgres_url = \"{}\"\npool_size = 8", self.server.url()))
        .sections(&format!(
            "[cluster]\nnode_name = \"{name}\"\ntakeover = \"{}s\"\n\n[otp]\nbrand = \"Acme\"\nhmac_key_file = {:?}\n{otp}\n",
            TAKEOVER.as_secs(),
            key.display().to_string()
        ))
    }

    /// Writes node `name`'s config file with fixed ports, for `otpgate run`.
    fn node_file(&self, name: &str, carrier: SocketAddr) -> NodeFile {
        let (http, metrics) = (free_addr(), free_addr());
        let text = self.node(name, carrier, "").server(&format!("http_listen = \"{http}\"\nmetrics_listen = \"{metrics}\"")).to_toml();
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        NodeFile { path, http, metrics }
    }
}

struct NodeFile {
    path: PathBuf,
    http: SocketAddr,
    metrics: SocketAddr,
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn call(client: &mut Client, method: &str, path: &str, body: Option<&str>) -> Reply {
    let auth = bearer(API_KEY);
    let mut headers = vec![("Authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    client.request(method, path, &headers, body).await.expect("request")
}

/// `/readyz` of the node at `http`: (status, role).
async fn readiness(http: SocketAddr) -> Option<(u16, String)> {
    let mut client = Client::connect(http).await.ok()?;
    let reply = client.request("GET", "/readyz", &[], None).await.ok()?;
    Some((reply.status, reply.json()["role"].as_str().unwrap_or_default().to_string()))
}

/// Waits until the node at `http` answers ready in `role`; returns how long it took.
async fn wait_role(http: SocketAddr, role: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if let Some((200, now)) = readiness(http).await
            && now == role
        {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{http} never became a ready {role}: {:?}", readiness(http).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (b) A verification created through one node is checked through another; a code races to
/// be approved through both at once and is approved once; per-number limits count every node's
/// sends; a message taken in by the follower is sent by the leader promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_serves_the_whole_api_and_its_rules_hold_cluster_wide() {
    let Some(db) = Db::start().await else { return };
    let sim = sim(SimConfig::default()).await;
    let otp = "resend_cooldown = \"0s\"\nmax_sends_per_number = 3";
    let a = Daemon::start(&db.node("gw-a", sim.addr(), otp).build().unwrap()).await.expect("node a starts");
    wait_for("a leads", Duration::from_secs(5), || a.dispatching()).await;
    let b = Daemon::start(&db.node("gw-b", sim.addr(), otp).build().unwrap()).await.expect("node b starts");
    assert_eq!(wait_role(a.http_addr(), "leader", Duration::from_secs(5)).await.as_secs(), 0);
    wait_role(b.http_addr(), "follower", Duration::from_secs(5)).await;
    assert!(!b.dispatching(), "one leader at a time");
    let (mut via_a, mut via_b) = (Client::connect(a.http_addr()).await.unwrap(), Client::connect(b.http_addr()).await.unwrap());

    // Created through the follower, sent by the leader, approved through the leader.
    let asked = Instant::now();
    let created = call(&mut via_b, "POST", "/v1/verifications", Some(r#"{"to": "+447700900111"}"#)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_str().unwrap().to_string();
    let code = code_sent(&sim, "+447700900111", 1).await;
    let latency = asked.elapsed();
    assert!(sim.stats().submits.iter().all(|m| m.system_id == "gw-a"), "only the leader submits");
    let checked = call(&mut via_a, "POST", &format!("/v1/verifications/{id}/check"), Some(&format!(r#"{{"code": "{code}"}}"#))).await;
    assert_eq!((checked.status, checked.json()["status"].clone()), (200, "approved".into()), "{}", checked.body);
    let seen_by_b = call(&mut via_b, "GET", &format!("/v1/verifications/{id}"), None).await;
    assert_eq!(seen_by_b.json()["status"], "approved");
    println!("follower intake -> code at the SMSC: {latency:?}");
    assert!(latency < Duration::from_secs(1), "a follower's message waited {latency:?} for the leader");

    // One code checked through both nodes at once: approved exactly once.
    let created = call(&mut via_a, "POST", "/v1/verifications", Some(r#"{"to": "+447700900222"}"#)).await;
    let id = created.json()["id"].as_str().unwrap().to_string();
    let code = code_sent(&sim, "+447700900222", 1).await;
    let checks = (0..8).map(|n| {
        let node = if n % 2 == 0 { a.http_addr() } else { b.http_addr() };
        let (path, body) = (format!("/v1/verifications/{id}/check"), format!(r#"{{"code": "{code}"}}"#));
        tokio::spawn(async move {
            let mut client = Client::connect(node).await.unwrap();
            let reply = call(&mut client, "POST", &path, Some(&body)).await;
            reply.status == 200 && reply.json()["status"] == "approved"
        })
    });
    let approvals = futures::future::join_all(checks).await.into_iter().filter(|approved| *approved.as_ref().unwrap()).count();
    assert_eq!(approvals, 1, "a code is accepted once, whichever nodes are asked");

    // Sends to one number are counted across nodes.
    let sends: Vec<u16> = {
        let mut out = Vec::new();
        for n in 0..5 {
            let client = if n % 2 == 0 { &mut via_a } else { &mut via_b };
            out.push(call(client, "POST", "/v1/verifications", Some(r#"{"to": "+447700900333"}"#)).await.status);
        }
        out
    };
    assert_eq!(sends, [201, 201, 201, 429, 429], "max_sends_per_number = 3 across both nodes");

    // A plain message through the follower is delivered, and both nodes show it.
    let reply = call(&mut via_b, "POST", "/v1/messages", Some(r#"{"to": "+447700900444", "text": "via b"}"#)).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let id = reply.json()["id"].as_str().unwrap().to_string();
    common::wait_status(&mut via_a, &id, "delivered", Duration::from_secs(5)).await;
    assert!(a.shutdown(Duration::from_secs(5)).await);
    // The leader left: the follower takes over at once (the lease was released) and binds.
    wait_for("b takes over after a clean shutdown", TAKEOVER, || b.dispatching()).await;
    assert!(b.shutdown(Duration::from_secs(5)).await);
}

/// Clients posting to `http` until `stop`: the ids and texts answered 202, and how many were.
fn load(
    http: SocketAddr,
    tag: &'static str,
    acked: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
    counter: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut client) = Client::connect(http).await else { return };
        while !stop.load(Ordering::SeqCst) {
            let i = counter.fetch_add(1, Ordering::SeqCst);
            let text = format!("{tag} {i}");
            let body = format!(r#"{{"to": "+4477009{:05}", "text": "{text}"}}"#, i % 100_000);
            let auth = bearer(API_KEY);
            let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
            match client.request("POST", "/v1/messages", &headers, Some(&body)).await {
                Ok(reply) if reply.status == 202 => {
                    let id = reply.json()["id"].as_str().unwrap().to_string();
                    acked.lock().unwrap().push((id, text));
                }
                // A node going away under us: nothing was acknowledged.
                _ => return,
            }
        }
    })
}

/// (a) kill -9 of the leader under load through both nodes: the follower takes over within
/// `cluster.takeover`, every acknowledged message reaches the SMSC, duplicates stay within the
/// dead leader's window, and receipts for what the dead leader submitted (they arrive after
/// it died) are matched by the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_load_loses_nothing_and_the_follower_takes_over() {
    let Some(db) = Db::start().await else { return };
    let sim =
        sim(SimConfig { response_delay: Duration::from_millis(5), receipt_delay: Duration::from_millis(1500), ..SimConfig::default() })
            .await;
    let (file_a, file_b) = (db.node_file("gw-a", sim.addr()), db.node_file("gw-b", sim.addr()));
    let mut a = spawn_daemon(&file_a.path, None, &[]);
    wait_role(file_a.http, "leader", Duration::from_secs(15)).await;
    let b = spawn_daemon(&file_b.path, None, &[]);
    wait_role(file_b.http, "follower", Duration::from_secs(15)).await;

    let acked = Arc::new(Mutex::new(Vec::new()));
    let (stop, counter) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(load(file_a.http, "via-a", acked.clone(), stop.clone(), counter.clone()));
        clients.push(load(file_b.http, "via-b", acked.clone(), stop.clone(), counter.clone()));
    }
    wait_for("load under way", Duration::from_secs(30), || acked.lock().unwrap().len() >= 300).await;
    a.kill().expect("SIGKILL");
    let killed = Instant::now();
    a.wait().unwrap();
    let submitted_by_a = sim.stats().submits.len();
    let took_over = wait_role(file_b.http, "leader", TAKEOVER * 2).await;
    println!("takeover after kill -9: {:?} (cluster.takeover {TAKEOVER:?})", killed.elapsed());
    assert!(took_over <= TAKEOVER, "the follower took {took_over:?} to lead");
    // Load goes on through the new leader for a moment, then stops.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let texts: Vec<String> = acked.iter().map(|(_, text)| text.clone()).collect();
    let accounting = Accounting::settle(&[&sim], &texts, Duration::from_secs(30)).await;
    println!("{accounting}; {submitted_by_a} submitted before the kill");
    assert!(accounting.nothing_lost(), "{accounting}");
    assert!(accounting.duplicates <= WINDOW, "{} duplicates: more than the dead leader's window", accounting.duplicates);
    assert!(sim.stats().submits.iter().any(|m| m.system_id == "gw-b"), "the new leader submitted");

    // Every message ends delivered, the dead leader's too: their receipts came after it died.
    let mut client = Client::connect(file_b.http).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut waiting: HashSet<String> = acked.iter().map(|(id, _)| id.clone()).collect();
    while !waiting.is_empty() {
        let mut still = HashSet::new();
        for id in waiting {
            if call(&mut client, "GET", &format!("/v1/messages/{id}"), None).await.json()["status"] != "delivered" {
                still.insert(id);
            }
        }
        waiting = still;
        if Instant::now() >= deadline && !waiting.is_empty() {
            let id = waiting.iter().next().unwrap();
            let example = call(&mut client, "GET", &format!("/v1/messages/{id}"), None).await.body;
            let acked = sim.stats().acked_receipts.len();
            panic!("{} messages never delivered, such as {example}; the SMSC saw {acked} receipts answered", waiting.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late = common::metric(file_b.metrics, "otpgate_cluster_takeovers_total").await;
    assert_eq!(late, 1.0, "the follower counts its takeover");
    signal(&b, "TERM");
    let mut b = b;
    let exit = tokio::task::spawn_blocking(move || b.wait()).await.unwrap().unwrap();
    assert!(exit.success());
}

/// (d) A leader stalled past its lease (SIGSTOP) is replaced; when it wakes (SIGCONT) it submits
/// nothing more and steps down to follower, while the new leader goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_wakes_after_its_term_submits_nothing_and_follows() {
    let Some(db) = Db::start().await else { return };
    let sim = sim(SimConfig { response_delay: Duration::from_millis(2), ..SimConfig::default() }).await;
    let (file_a, file_b) = (db.node_file("gw-a", sim.addr()), db.node_file("gw-b", sim.addr()));
    let mut a = spawn_daemon(&file_a.path, None, &[]);
    wait_role(file_a.http, "leader", Duration::from_secs(15)).await;
    let mut b = spawn_daemon(&file_b.path, None, &[]);
    wait_role(file_b.http, "follower", Duration::from_secs(15)).await;

    // Load through b (the follower) only, all along: a, while it leads, sends it.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (stop, counter) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let client = load(file_b.http, "load", acked.clone(), stop.clone(), counter.clone());
    wait_for("a sends b's messages", Duration::from_secs(10), || sim.stats().submits.iter().filter(|m| m.system_id == "gw-a").count() > 50)
        .await;
    signal(&a, "STOP");
    let stopped = Instant::now();
    wait_role(file_b.http, "leader", TAKEOVER * 2).await;
    let a_before_waking = sim.stats().submits.iter().filter(|m| m.system_id == "gw-a").count();
    signal(&a, "CONT");
    let woke = Instant::now();
    println!("b led {:?} after a stalled", woke - stopped);
    wait_role(file_a.http, "follower", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    client.await.unwrap();
    let a_after = sim.stats().submits.iter().filter(|m| m.system_id == "gw-a").count();
    assert_eq!(a_after, a_before_waking, "the deposed leader submitted after its term");
    assert!(sim.stats().submits.iter().any(|m| m.system_id == "gw-b" && m.at > woke), "the new leader goes on");
    let texts: Vec<String> = acked.lock().unwrap().iter().map(|(_, text)| text.clone()).collect();
    let accounting = Accounting::settle(&[&sim], &texts, Duration::from_secs(30)).await;
    assert!(accounting.nothing_lost(), "{accounting}");
    for node in [&mut a, &mut b] {
        let _ = node.kill();
        let _ = node.wait();
    }
}

/// (c) PostgreSQL restarted under load: while it is down the intake answers 503 (never a 2xx
/// without a commit), and once it is back the node leads again and sends every acknowledged
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_mid_load_gets_503_and_loses_nothing() {
    let Some(mut db) = Db::start().await else { return };
    let sim = sim(SimConfig::default()).await;
    let node = Daemon::start(&db.node("gw-a", sim.addr(), "").build().unwrap()).await.expect("node starts");
    wait_for("the node leads", Duration::from_secs(5), || node.dispatching()).await;
    let http = node.http_addr();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let (stop, counter) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (acked, refused, stop, counter) = (acked.clone(), refused.clone(), stop.clone(), counter.clone());
        tokio::spawn(async move {
            let mut client = Client::connect(http).await.unwrap();
            while !stop.load(Ordering::SeqCst) {
                let i = counter.fetch_add(1, Ordering::SeqCst);
                let text = format!("db {i}");
                let body = format!(r#"{{"to": "+4477009{i:05}", "text": "{text}"}}"#);
                let reply = call(&mut client, "POST", "/v1/messages", Some(&body)).await;
                match reply.status {
                    202 => acked.lock().unwrap().push(text),
                    503 => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => panic!("{other}: {}", reply.body),
                }
            }
        })
    };
    wait_for("load under way", Duration::from_secs(10), || acked.lock().unwrap().len() >= 100).await;
    db.server.stop();
    wait_for("503 while the database is down", Duration::from_secs(10), || refused.load(Ordering::SeqCst) >= 5).await;
    let (status, _) = readiness(http).await.unwrap();
    assert_eq!(status, 503, "unready while the database is down");
    db.server.resume().await.unwrap();
    wait_for("the node leads again", TAKEOVER * 3, || node.dispatching()).await;
    let before = acked.lock().unwrap().len();
    wait_for("acknowledged again", Duration::from_secs(10), || acked.lock().unwrap().len() > before + 50).await;
    stop.store(true, Ordering::SeqCst);
    client.await.unwrap();
    let texts = acked.lock().unwrap().clone();
    let accounting = Accounting::settle(&[&sim], &texts, Duration::from_secs(30)).await;
    println!("{accounting}; {} refused with 503", refused.load(Ordering::SeqCst));
    assert!(accounting.nothing_lost(), "{accounting}");
    assert!(node.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_one_node_suspends_is_refused_by_the_other_within_seconds() {
    let Some(db) = Db::start().await else { return };
    let sim = sim(SimConfig::default()).await;
    let fraud = "\n[fraud]\nmin_sends = 5\napproval_grace = \"0s\"\n";
    let a = Daemon::start(&db.node("gw-a", sim.addr(), "").sections(fraud).build().unwrap()).await.expect("node a starts");
    wait_for("a leads", Duration::from_secs(5), || a.dispatching()).await;
    let b = Daemon::start(&db.node("gw-b", sim.addr(), "").sections(fraud).build().unwrap()).await.expect("node b starts");
    let (mut via_a, mut via_b) = (Client::connect(a.http_addr()).await.unwrap(), Client::connect(b.http_addr()).await.unwrap());
    for i in 0..6 {
        call(&mut via_a, "POST", "/v1/verifications", Some(&format!(r#"{{"to": "+44798800000{i}"}}"#))).await;
    }
    let refused = call(&mut via_a, "POST", "/v1/verifications", Some(r#"{"to": "+447988000099"}"#)).await;
    assert_eq!(refused.status, 429, "node a suspended the prefix: {}", refused.body);
    // Node b saw none of those sends: it learns of the suspension from the database.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let reply = call(&mut via_b, "POST", "/v1/verifications", Some(r#"{"to": "+447988000098"}"#)).await;
        if reply.status == 429 {
            break;
        }
        assert!(Instant::now() < deadline, "node b never refused: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
