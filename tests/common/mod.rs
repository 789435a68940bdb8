//! Shared helpers for the integration tests: simulators on loopback port 0, carriers built from
//! real TOML, and the receipt fixtures.
#![allow(dead_code)] // each test binary uses a different subset

pub mod receiver;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use otpgate::config::{CarrierConfig, ConfigBuilder};
use otpgate::sim::{SimConfig, SmscSim};
use otpgate::smpp::{Carrier, OutboundSms, ReceiptEvent};
use otpgate::throwaway_pg::ThrowawayPostgres;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const LOOPBACK: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

/// A loopback address nothing listens on (yet): for carriers that are down, and that a test may
/// bring up later. Taken below the kernel's ephemeral range: a port from that range (port 0) can
/// go to another test's outgoing connection before the simulator binds it (seen in CI).
pub fn free_addr() -> SocketAddr {
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_from > 11_000 {
        for _ in 0..100 {
            let port = rand::random_range(10_000..ephemeral_from);
            if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                return listener.local_addr().expect("local addr");
            }
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

pub async fn sim(config: SimConfig) -> SmscSim {
    SmscSim::start(SocketAddr::from(LOOPBACK), config).await.expect("simulator listens on loopback")
}

/// Carrier keys every test carrier gets: credentials the simulator takes, and fast timers.
const TEST_CARRIER: &str = "system_id = \"otpgate\"\npassword = \"secret\"\nsource_addr = \"Acme\"\nresponse_timeout = \"1s\"\n\
                            reconnect_min = \"50ms\"\nreconnect_max = \"500ms\"";

/// A carrier section pointing at `addr`, with fast timers; `extra` lines override the defaults.
pub fn carrier_config(addr: SocketAddr, extra: &str) -> CarrierConfig {
    let config = ConfigBuilder::new(Path::new("/nonexistent")).carrier_defaults(TEST_CARRIER).carrier("alpha", addr, extra);
    config.build().expect("test config is valid").carriers.remove(0)
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
    Running { carrier, receipts, shutdown }
}

pub async fn start_bound(config: CarrierConfig) -> Running {
    let sessions = config.sessions;
    let running = start(config);
    assert!(running.carrier.wait_bound(sessions, Duration::from_secs(5)).await, "carrier did not bind");
    running
}

pub fn sms(text: &str) -> OutboundSms {
    OutboundSms::new("+447700900123", text.into(), None)
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

pub const API_KEY: &str = "test-key-0123456789";
pub const OTHER_KEY: &str = "other-key-0123456789";

/// Carriers named alpha, beta, ... in order.
pub fn named(carriers: &[SocketAddr]) -> Vec<(&'static str, SocketAddr)> {
    ["alpha", "beta", "gamma", "delta"].into_iter().zip(carriers.iter().copied()).collect()
}

/// Whether the integration suites run on PostgreSQL (`OTPGATE_TEST_STORE=postgres`; `tests/run`
/// runs them once on each store) instead of sled.
pub fn on_postgres() -> bool {
    std::env::var("OTPGATE_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// This test process's PostgreSQL server, started on first use and stopped when the process exits.
static POSTGRES: tokio::sync::Mutex<Option<ThrowawayPostgres>> = tokio::sync::Mutex::const_new(None);

extern "C" fn stop_postgres() {
    let server = POSTGRES.try_lock().map(|mut s| s.take()).unwrap_or_default();
    drop(server);
}

/// Runs `work` with this process's PostgreSQL server (started on first use) on a thread of its
/// own: the callers are sync code inside tests' runtimes.
fn with_postgres<T: Send + 'static>(work: impl AsyncFnOnce(&ThrowawayPostgres) -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let mut server = POSTGRES.lock().await;
            if server.is_none() {
                *server = Some(ThrowawayPostgres::start().await.expect("OTPGATE_TEST_STORE=postgres needs PostgreSQL installed"));
                // SAFETY: registers a plain function to run at process exit.
                unsafe { libc::atexit(stop_postgres) };
            }
            work(server.as_ref().expect("started above")).await
        })
    })
    .join()
    .expect("the PostgreSQL thread")
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connects");
    tokio::spawn(connection);
    client
}

/// The database of the gateway whose data lives in `data_dir`, named after it so that a restart
/// (or a second node given the same directory) finds the same rows.
fn database_of(data_dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    data_dir.hash(&mut hasher);
    format!("gw_{:016x}", hasher.finish())
}

/// The `[store]` lines of a gateway whose data lives in `data_dir`: none on sled; on PostgreSQL,
/// a database of its own on this process's server.
pub fn store_lines(data_dir: &Path) -> String {
    if !on_postgres() {
        return String::new();
    }
    let database = database_of(data_dir);
    with_postgres(async move |server| {
        let client = connect(&server.url()).await;
        let exists = client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database]).await.expect("query");
        if exists.is_none() {
            client.batch_execute(&format!("CREATE DATABASE {database}")).await.expect("create database");
        }
        format!("backend = \"postgres\"\npostgres_url = \"{}\"\npool_size = 8", server.url_of(&database))
    })
}

/// Everything the store of the gateway in `data_dir` holds, as (where, bytes): sled's files, or
/// every row of its database.
pub fn stored(data_dir: &Path) -> Vec<(String, Vec<u8>)> {
    if !on_postgres() {
        return files_under(data_dir).into_iter().map(|f| (f.display().to_string(), std::fs::read(&f).expect("readable"))).collect();
    }
    let database = database_of(data_dir);
    with_postgres(async move |server| {
        let client = connect(&server.url_of(&database)).await;
        let rows = client.query("SELECT key, value FROM otpgate_kv", &[]).await.expect("query");
        rows.iter().map(|row| (format!("row {:?}", String::from_utf8_lossy(row.get(0))), row.get(1))).collect()
    })
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A whole gateway config: the named carriers, two API keys, HTTP and metrics on free loopback
/// ports, the store the suites run on. `carrier_extra` lines go into every carrier section.
pub fn gateway_config(carriers: &[(&str, SocketAddr)], data_dir: &Path, carrier_extra: &str) -> ConfigBuilder {
    let mut config = ConfigBuilder::new(data_dir)
        .store(&store_lines(data_dir))
        .server("shutdown_timeout = \"5s\"")
        .api_key("test", API_KEY)
        .api_key("other", OTHER_KEY)
        .carrier_defaults(TEST_CARRIER)
        .carrier_defaults(carrier_extra);
    for (name, addr) in carriers {
        config = config.carrier(name, *addr, "");
    }
    config
}

/// [`gateway_config`]'s text, carriers named alpha, beta, ...
pub fn gateway_toml(carriers: &[SocketAddr], data_dir: &Path, carrier_extra: &str) -> String {
    gateway_config(&named(carriers), data_dir, carrier_extra).to_toml()
}

pub struct Gateway {
    pub daemon: otpgate::daemon::Daemon,
    pub dir: tempfile::TempDir,
}

/// How a test gateway is set up, before it starts.
pub struct Setup {
    config: ConfigBuilder,
    clock: Arc<dyn otpgate::clock::Clock>,
    dir: tempfile::TempDir,
}

impl Setup {
    /// Extra top-level TOML (an `[otp]` section, `[[routes]]`...).
    pub fn sections(mut self, toml: &str) -> Setup {
        self.config = self.config.sections(toml);
        self
    }

    /// Extra `[store]` keys.
    pub fn store(mut self, lines: &str) -> Setup {
        self.config = self.config.store(lines);
        self
    }

    /// Extra `[server]` keys.
    pub fn server(mut self, lines: &str) -> Setup {
        self.config = self.config.server(lines);
        self
    }

    /// The clock the OTP rules read.
    pub fn clock(mut self, clock: Arc<dyn otpgate::clock::Clock>) -> Setup {
        self.clock = clock;
        self
    }

    pub async fn start(self) -> Gateway {
        let config = self.config.build().expect("valid config");
        let daemon = otpgate::daemon::Daemon::start_with_clock(&config, self.clock).await.expect("daemon starts");
        Gateway { daemon, dir: self.dir }
    }

    /// Started, every carrier bound, and a client connected.
    pub async fn bound(self) -> (Gateway, otpgate::http::client::Client) {
        let gw = self.start().await;
        gw.wait_bound().await;
        let client = gw.client().await;
        (gw, client)
    }
}

impl Gateway {
    /// A gateway on `carriers` (alpha, beta, ...), each with `carrier_extra`.
    pub fn setup(carriers: &[SocketAddr], carrier_extra: &str) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = gateway_config(&named(carriers), dir.path(), carrier_extra);
        Setup { config, clock: Arc::new(otpgate::clock::SystemClock), dir }
    }

    pub async fn start(carriers: &[SocketAddr], carrier_extra: &str) -> Gateway {
        Gateway::setup(carriers, carrier_extra).start().await
    }

    /// Started, every carrier bound, and a client connected.
    pub async fn bound(carriers: &[SocketAddr], carrier_extra: &str) -> (Gateway, otpgate::http::client::Client) {
        Gateway::setup(carriers, carrier_extra).bound().await
    }

    pub async fn client(&self) -> otpgate::http::client::Client {
        otpgate::http::client::Client::connect(self.daemon.http_addr()).await.expect("connects")
    }

    /// Shuts down cleanly and starts again on the same data_dir (carriers may have moved).
    pub async fn restart(self, carriers: &[SocketAddr]) -> Gateway {
        self.restart_with(carriers, "").await
    }

    pub async fn restart_with(self, carriers: &[SocketAddr], extra: &str) -> Gateway {
        let Gateway { daemon, dir } = self;
        assert!(daemon.shutdown(Duration::from_secs(5)).await, "clean shutdown");
        let config = gateway_config(&named(carriers), dir.path(), "").sections(extra).build().expect("valid config");
        let daemon = otpgate::daemon::Daemon::start(&config).await.expect("daemon restarts");
        Gateway { daemon, dir }
    }

    pub async fn wait_bound(&self) {
        // On PostgreSQL the daemon is a cluster node: it binds once it leads a term.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.daemon.dispatching() {
            assert!(tokio::time::Instant::now() < deadline, "the gateway never took up dispatching");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for carrier in self.daemon.carriers() {
            assert!(carrier.wait_bound(1, Duration::from_secs(5)).await, "{} not bound", carrier.name());
        }
    }
}

/// A simulator, a gateway bound to it, and a client of the gateway.
pub async fn bound_gateway(config: SimConfig) -> (SmscSim, Gateway, otpgate::http::client::Client) {
    let sim = sim(config).await;
    let (gw, client) = Gateway::bound(&[sim.addr()], "").await;
    (sim, gw, client)
}

pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// POST /v1/messages as `key`, optionally with an Idempotency-Key.
pub async fn post_message(
    client: &mut otpgate::http::client::Client,
    key: &str,
    body: &str,
    idempotency: Option<&str>,
) -> otpgate::http::client::Reply {
    let auth = bearer(key);
    let mut headers = vec![("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    if let Some(k) = idempotency {
        headers.push(("Idempotency-Key", k));
    }
    client.request("POST", "/v1/messages", &headers, Some(body)).await.expect("request succeeds")
}

/// A request as `key`, with a JSON body when there is one.
pub async fn call(
    client: &mut otpgate::http::client::Client,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&str>,
) -> otpgate::http::client::Reply {
    let auth = bearer(key);
    let mut headers = vec![("Authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    client.request(method, path, &headers, body).await.expect("request")
}

pub async fn get_message(client: &mut otpgate::http::client::Client, key: &str, id: &str) -> otpgate::http::client::Reply {
    let auth = bearer(key);
    client.request("GET", &format!("/v1/messages/{id}"), &[("Authorization", auth.as_str())], None).await.expect("request succeeds")
}

/// Polls a message until its status is `status`; panics with the last answer otherwise.
pub async fn wait_status(client: &mut otpgate::http::client::Client, id: &str, status: &str, limit: Duration) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let reply = get_message(client, API_KEY, id).await;
        let json = reply.json();
        if json["status"] == status {
            return json;
        }
        assert!(tokio::time::Instant::now() < deadline, "message {id} never became {status}: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until verification `id`'s latest SMS shows `carrier`: the SMSC took it and the store
/// recorded its response (the simulator sees a submit before the store has its response).
pub async fn wait_sent_via(client: &mut otpgate::http::client::Client, key: &str, id: &str, carrier: &str) {
    let auth = bearer(key);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got =
            client.request("GET", &format!("/v1/verifications/{id}"), &[("Authorization", auth.as_str())], None).await.unwrap().json();
        if got["delivery"]["carrier"] == carrier {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "verification {id}'s SMS never showed carrier {carrier}: {got}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the `nth` (1-based) SMS to `number` and returns the code at its start.
pub async fn code_sent(sim: &SmscSim, number: &str, nth: usize) -> String {
    let digits = number.trim_start_matches('+').to_string();
    let arrived = sim.wait_until(Duration::from_secs(5), |s| s.submits.iter().filter(|m| m.to == digits).count() >= nth).await;
    assert!(arrived, "SMS {nth} to {number} never reached the carrier");
    let text = sim.stats().submits.iter().filter(|m| m.to == digits).nth(nth - 1).unwrap().text.clone();
    text.chars().take_while(char::is_ascii_digit).collect()
}

/// A config file for the real binary: gateway_toml with fixed free HTTP and metrics ports.
pub struct DaemonFiles {
    pub dir: tempfile::TempDir,
    pub config: std::path::PathBuf,
    pub http: SocketAddr,
    pub metrics: SocketAddr,
}

impl DaemonFiles {
    pub fn new(carriers: &[SocketAddr], carrier_extra: &str, extra: &str) -> DaemonFiles {
        let dir = tempfile::tempdir().expect("temp dir");
        let (http, metrics) = (free_addr(), free_addr());
        let config = dir.path().join("otpgate.toml");
        let files = DaemonFiles { dir, config, http, metrics };
        files.write(carriers, carrier_extra, extra);
        files
    }

    /// Rewrites the config file (for reload tests); carriers are named alpha, beta, ... in order.
    pub fn write(&self, carriers: &[SocketAddr], carrier_extra: &str, extra: &str) {
        self.write_named(&named(carriers), carrier_extra, extra);
    }

    pub fn write_named(&self, carriers: &[(&str, SocketAddr)], carrier_extra: &str, extra: &str) {
        let config = gateway_config(carriers, &self.data_dir(), carrier_extra)
            .server(&format!("http_listen = \"{}\"\nmetrics_listen = \"{}\"", self.http, self.metrics))
            .sections(extra);
        std::fs::write(&self.config, config.to_toml()).expect("config written");
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }
}

/// Starts `otpgate run` on a config file; logs go to `log` (or nowhere).
pub fn spawn_daemon(config: &Path, log: Option<&Path>, env: &[(&str, &str)]) -> std::process::Child {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_otpgate"));
    command.args(["run", "--config"]).arg(config).env("RUST_LOG", "info");
    for (k, v) in env {
        command.env(k, v);
    }
    match log {
        Some(path) => {
            let file = std::fs::File::create(path).expect("log file");
            command.stdout(file.try_clone().expect("dup")).stderr(file);
        }
        None => {
            command.stdout(std::process::Stdio::null());
        }
    }
    command.spawn().expect("otpgate starts")
}

/// Waits until the daemon at `addr` is ready and dispatching (bound).
pub async fn wait_ready(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(mut client) = otpgate::http::client::Client::connect(addr).await {
            if let Ok(reply) = client.request("GET", "/readyz", &[], None).await {
                // A cluster node is ready as a follower; the tests want it dispatching.
                if reply.status == 200 && reply.json()["role"] != "follower" {
                    return;
                }
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "daemon never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a signal to a child process by name ("TERM", "HUP", ...).
pub fn signal(child: &std::process::Child, name: &str) {
    let status = std::process::Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success(), "kill -{name} failed");
}

/// node-smpp's SMSC (tests/node-smpp/server.js) in a child process: a third-party reading of
/// SMPP. Every event it prints is kept as JSON.
/// A third-party peer run as a script (node-smpp's SMSC, the Standard Webhooks project's Python
/// verifier): it prints one JSON object per line, the first `{"event": "listening", "port": N}`.
pub struct ScriptPeer {
    child: std::process::Child,
    pub addr: SocketAddr,
    events: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

/// node-smpp's server: the third-party SMSC of the conformance tests.
pub type NodeSmsc = ScriptPeer;

impl Drop for ScriptPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ScriptPeer {
    /// node-smpp's server with `options` (see tests/node-smpp/server.js).
    pub fn start(options: &str) -> Option<ScriptPeer> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node-smpp");
        let mut command = std::process::Command::new("node");
        command.arg(dir.join("server.js")).arg(options);
        ScriptPeer::spawn(dir.join("node_modules/smpp").is_dir().then_some(command), "node-smpp (npm ci --prefix tests/node-smpp)")
    }

    /// A webhook receiver that checks every request with the `standardwebhooks` library from
    /// PyPI under `secret` (see tests/python/receiver.py).
    pub fn webhook_verifier(secret: &str) -> Option<ScriptPeer> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python");
        let python = dir.join(".venv/bin/python");
        let mut command = std::process::Command::new(&python);
        command.arg(dir.join("receiver.py")).arg(secret);
        ScriptPeer::spawn(python.exists().then_some(command), "the standardwebhooks verifier (tests/python/setup)")
    }

    /// Runs `command` (`None` when its peer is not installed on a developer's machine; under CI,
    /// `CI` set, that is a failure, since `.ci/run` installs every peer).
    fn spawn(command: Option<std::process::Command>, what: &str) -> Option<ScriptPeer> {
        use std::io::BufRead;
        let spawned = command.and_then(|mut c| c.stdout(std::process::Stdio::piped()).spawn().ok());
        let Some(mut child) = spawned else {
            assert!(std::env::var_os("CI").is_none(), "{what} is required under CI (.ci/run installs it)");
            eprintln!("skipped: {what} is not installed");
            return None;
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                if event["event"] == "listening" {
                    let _ = port_tx.send(event["port"].as_u64().unwrap_or(0) as u16);
                }
                sink.lock().unwrap().push(event);
            }
        });
        let port = port_rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("{what} listens"));
        Some(ScriptPeer { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), events })
    }

    /// The events named `name` seen so far.
    pub fn events(&self, name: &str) -> Vec<serde_json::Value> {
        self.events.lock().unwrap().iter().filter(|e| e["event"] == name).cloned().collect()
    }

    /// Waits until at least `n` events named `name` were seen, or `limit` passes.
    pub async fn wait_for(&self, name: &str, n: usize, limit: Duration) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let seen = self.events(name);
            if seen.len() >= n || tokio::time::Instant::now() >= deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The value of one series on a `/metrics` page (`name{labels}` exactly as exported), or 0.
pub async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let mut client = otpgate::http::client::Client::connect(addr).await.expect("metrics listener");
    let page = client.request("GET", "/metrics", &[], None).await.expect("metrics").body;
    page.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Raw SMPP for hostile and hand-checked peers: no codec of ours or rusmpp's in between.
/// Reads one PDU: (command_id, sequence, body).
pub async fn read_pdu(stream: &mut tokio::net::TcpStream) -> (u32, u32, Vec<u8>) {
    let mut header = [0u8; 16];
    tokio::io::AsyncReadExt::read_exact(stream, &mut header).await.expect("PDU header");
    let word = |i: usize| u32::from_be_bytes(header[i..i + 4].try_into().unwrap());
    let (length, id, status, sequence) = (word(0), word(4), word(8), word(12));
    assert_eq!(status, 0, "command_status must be 0 in a request (§5.1.3)");
    let mut body = vec![0u8; length as usize - 16];
    tokio::io::AsyncReadExt::read_exact(stream, &mut body).await.expect("PDU body");
    (id, sequence, body)
}

pub async fn write_pdu(stream: &mut tokio::net::TcpStream, id: u32, sequence: u32, body: &[u8]) {
    let mut pdu = Vec::new();
    pdu.extend_from_slice(&(16 + body.len() as u32).to_be_bytes());
    pdu.extend_from_slice(&id.to_be_bytes());
    pdu.extend_from_slice(&0u32.to_be_bytes());
    pdu.extend_from_slice(&sequence.to_be_bytes());
    pdu.extend_from_slice(body);
    tokio::io::AsyncWriteExt::write_all(stream, &pdu).await.expect("write PDU");
}

/// SMPP over TLS for a simulator: a throwaway authority and a certificate for localhost (in the
/// returned dir), the simulator's side, and the carrier lines that trust it.
pub fn smpp_tls() -> (tempfile::TempDir, otpgate::tls::ServerTls, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let authority = otpgate::tls::throwaway::Authority::new("otpgate test CA").expect("authority");
    let ca = dir.path().join("ca.pem");
    authority.write_cert(&ca).expect("CA written");
    let issued = authority.issue(&["localhost"], Duration::from_secs(90 * 86_400)).expect("certificate");
    let (cert, key) = issued.write(dir.path(), "smsc").expect("certificate written");
    let serving = otpgate::tls::ServerTls::new(&cert, &key, None).expect("simulator TLS");
    let lines = format!("tls = true\ntls_ca_file = \"{}\"\ntls_server_name = \"localhost\"", ca.display());
    (dir, serving, lines)
}
