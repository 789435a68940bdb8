//! `otpgate bench`: the load tool behind the README's performance table.
//!
//! One command starts simulated carrier SMSCs (tasks in this process), the daemon itself as a
//! child process (this binary, `otpgate run`, with a fresh data_dir), and drives its HTTP intake:
//! closed-loop to saturation, open-loop at a fixed rate, verification round trips, then a restart
//! with a large queue. It reads the SMSC side's timestamps for intake → submit latency, the
//! child's `/proc` for CPU and peak RSS, and its `/metrics` for receipts matched. Every run ends
//! with an accounting line and fails (exit 1) if any acknowledged message was lost. With
//! `--webhook` it runs only the comparison in `webhook.rs`: the closed loop without a webhook
//! endpoint and with one; with `--tls` only the one in `tls.rs`: plain links, then every link
//! encrypted; with `--long` only one-SMS messages against three-part ones.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use crate::config::ConfigBuilder;
use crate::http::client::Client;
use crate::sim::accounting::Accounting;
use crate::sim::{SimConfig, SmscSim};
use crate::store::{NewMessage, Store, StoreOptions};
use crate::telemetry;
use crate::throwaway_pg::ThrowawayPostgres;

mod plot;
mod progress;
mod tls;
mod webhook;

/// Where the load generator connects: the intake, and the authority to trust when it serves
/// HTTPS (its certificate names "localhost").
#[derive(Debug, Clone)]
struct Intake {
    addr: SocketAddr,
    ca_file: Option<PathBuf>,
}

impl From<SocketAddr> for Intake {
    fn from(addr: SocketAddr) -> Intake {
        Intake { addr, ca_file: None }
    }
}

impl Intake {
    async fn connect(&self) -> Result<Client, crate::http::client::ClientError> {
        match &self.ca_file {
            None => Client::connect(self.addr).await,
            Some(ca) => Client::connect_tls(self.addr, ca, "localhost").await,
        }
    }
}

/// One closed-loop phase: its end-to-end rate (until the last receipt is matched), the daemon's
/// CPU per message, and this process's (the load generator, the simulated SMSCs and whatever
/// else the phase runs here, such as a webhook receiver).
struct Phase {
    rate: f64,
    cpu_ms_per_message: f64,
    own_cpu_ms_per_message: f64,
    accepted: usize,
    /// The machine's idle share over the phase: near 0, the two cores were the limit.
    idle: f64,
}

/// A closed loop of `count` messages against the daemon `pid`.
async fn phase(http: Intake, metrics: SocketAddr, pid: u32, count: usize, concurrency: usize, tag: &str) -> Phase {
    let delivered_before = messages_in_state(metrics, "delivered").await;
    let (cpu0, _) = usage(pid);
    let (own0, _) = usage(std::process::id());
    let machine = progress::Machine::now();
    let started = Instant::now();
    let load = drive(http, count, concurrency, None, tag).await;
    let target = delivered_before + load.accepted.len() as u64;
    let until = Instant::now() + Duration::from_secs(120);
    while messages_in_state(metrics, "delivered").await < target && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let (cpu1, _) = usage(pid);
    let (own1, _) = usage(std::process::id());
    let accepted = load.accepted.len();
    let per_message = |seconds: f64| seconds * 1000.0 / accepted.max(1) as f64;
    Phase {
        rate: accepted as f64 / elapsed.as_secs_f64(),
        cpu_ms_per_message: per_message(cpu1 - cpu0),
        own_cpu_ms_per_message: per_message(own1 - own0),
        accepted,
        idle: machine.idle_since(),
    }
}

fn percent(share: f64) -> String {
    format!("{:.0} %", share * 100.0)
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub carriers: usize,
    /// Messages in the closed-loop phase.
    pub messages: usize,
    /// Concurrent HTTP connections in the closed-loop phase.
    pub concurrency: usize,
    /// Offered rate of the open-loop phase, per second.
    pub rate: u32,
    pub open_loop_seconds: u64,
    pub verifications: usize,
    /// Queued messages for the restart-recovery phase (0 skips it).
    pub recovery_messages: usize,
    /// The simulated SMSCs hand out random message ids instead of counting up, so receipt
    /// lookups land all over the store's index instead of on its newest pages.
    pub random_ids: bool,
    pub store: BenchStore,
    /// Only the webhook comparison: the closed loop without an endpoint, then with one.
    pub webhook: bool,
    /// Only the TLS comparison: the closed loop over plain links, then over encrypted ones.
    pub tls: bool,
    /// Only the long-message run: the closed loop with one-SMS messages, then three-part ones.
    pub long: bool,
    /// Draw each phase's rate and latency over time to this SVG file.
    pub plot: Option<PathBuf>,
}

/// The store the daemon runs on.
#[derive(Debug, Clone, PartialEq)]
pub enum BenchStore {
    Sled,
    /// PostgreSQL at this URL, or a throwaway server started for the run (`None`). Adds a
    /// takeover phase: a second node, the leader killed under load.
    Postgres(Option<String>),
}

/// A PostgreSQL store shared by the bench's nodes.
struct Database {
    url: String,
    /// One OTP key file for every node, as an operator would copy it.
    key_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench setup failed: {0}")]
    Setup(String),
    #[error("{0}")]
    Lost(String),
}

const API_KEY: &str = "bench-key-0123456789abcdef";

fn free_addr() -> Result<SocketAddr, BenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| BenchError::Setup(e.to_string()))?;
    listener.local_addr().map_err(|e| BenchError::Setup(e.to_string()))
}

fn config_text(sims: &[SocketAddr], http: SocketAddr, metrics: SocketAddr, data_dir: &Path, db: Option<(&Database, &str)>) -> String {
    bench_config(sims, http, metrics, data_dir, db).to_toml()
}

fn bench_config(
    sims: &[SocketAddr],
    http: SocketAddr,
    metrics: SocketAddr,
    data_dir: &Path,
    db: Option<(&Database, &str)>,
) -> ConfigBuilder {
    let mut config = ConfigBuilder::new(data_dir);
    if let Some((db, node)) = db {
        config = config
            .store(&format!("backend = \"postgres\"\npostgres_url = {:?}", db.url))
            .sections(&format!("[cluster]\nnode_name = \"{node}\"\n\n[otp]\nhmac_key_file = {:?}\n", db.key_file.display().to_string()));
    } else {
        config = config.sections("[otp]\n");
    }
    let mut config = config
        .server(&format!("http_listen = \"{http}\"\nmetrics_listen = \"{metrics}\"\nshutdown_timeout = \"30s\""))
        .api_key("bench", API_KEY)
        .sections(
            "brand = \"Bench\"\ncreates_per_minute_per_key = 0\ncreates_per_minute_per_ip = 0\n\
             checks_per_minute_per_key = 0\nchecks_per_minute_per_ip = 0\nchecks_per_minute_per_number = 0\n\
             max_sends_per_number = 1000\nresend_cooldown = \"0s\"",
        )
        .carrier_defaults(
            "system_id = \"bench\"\npassword = \"bench\"\nsource_addr = \"Bench\"\nwindow = 64\nsessions = 2\n\
             reconnect_min = \"100ms\"\nreconnect_max = \"1s\"",
        );
    if let Some((_, node)) = db {
        // Tells apart at the SMSCs what each node submitted.
        config = config.carrier_defaults(&format!("system_id = {node:?}"));
    }
    let names: Vec<String> = (0..sims.len()).map(|i| format!("smsc{i}")).collect();
    for (addr, name) in sims.iter().zip(&names) {
        config = config.carrier(name, *addr, "");
    }
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    config.sections(&format!("[[routes]]\nprefixes = [\"*\"]\ncarriers = [{}]\nstrategy = \"round_robin\"", quoted.join(", ")))
}

fn spawn(config: &Path) -> Result<Child, BenchError> {
    let exe = std::env::current_exe().map_err(|e| BenchError::Setup(e.to_string()))?;
    Command::new(exe)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Setup(format!("cannot start otpgate run: {e}")))
}

/// Starts `otpgate run` on `data_dir` (and, given one, a PostgreSQL store as node `name`) with
/// these carriers, its config written to `work/name`. Returns the child and its HTTP and
/// metrics addresses.
fn start_daemon(
    work: &Path,
    name: &str,
    carriers: &[SocketAddr],
    data_dir: &Path,
    db: Option<&Database>,
) -> Result<(Child, SocketAddr, SocketAddr), BenchError> {
    let (http, metrics) = (free_addr()?, free_addr()?);
    let config = work.join(name);
    let node = name.trim_end_matches(".toml");
    std::fs::write(&config, config_text(carriers, http, metrics, data_dir, db.map(|db| (db, node))))
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    Ok((spawn(&config)?, http, metrics))
}

async fn wait_http(addr: SocketAddr, path: &str, limit: Duration) -> Result<Duration, BenchError> {
    wait_role(addr, path, None, limit).await
}

/// Waits until `path` answers 200 (and, given `role`, names it: a cluster node's `/readyz`).
async fn wait_role(intake: impl Into<Intake>, path: &str, role: Option<&str>, limit: Duration) -> Result<Duration, BenchError> {
    let intake = intake.into();
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(mut client) = intake.connect().await {
            if let Ok(reply) = client.request("GET", path, &[], None).await {
                if reply.status == 200 && role.is_none_or(|role| reply.json()["role"] == role) {
                    return Ok(started.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(BenchError::Setup(format!("{path} not ready within {limit:?}")))
}

fn stop(mut child: Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

/// (CPU seconds, peak RSS in bytes) of a process.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
    (ticks / 100.0, hwm_kb * 1024)
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() { dir_size(&p) } else { e.metadata().map(|m| m.len()).unwrap_or(0) }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A sample of otpgate_messages_total{state="..."} from the daemon's /metrics.
async fn messages_in_state(metrics: SocketAddr, state: &str) -> u64 {
    counter(metrics, &format!("{}{{state=\"{state}\"}}", telemetry::MESSAGES_TOTAL)).await
}

/// Whether the daemon's /metrics has a series `sample` (by its full name with labels).
async fn exported(metrics: SocketAddr, sample: &str) -> bool {
    sample_in(&scrape(metrics).await, sample).is_some()
}

/// The sum of every series of the metric `name` (all its labels) on the daemon's /metrics.
async fn summed(metrics: SocketAddr, name: &str) -> f64 {
    let series = format!("{name}{{");
    scrape(metrics).await.lines().filter(|l| l.starts_with(&series)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// One sample (by its full name with labels) from the daemon's /metrics.
async fn counter(metrics: SocketAddr, sample: &str) -> u64 {
    sample_in(&scrape(metrics).await, sample).map_or(0, |v| v as u64)
}

/// The daemon's /metrics page (empty if it cannot be read: every sample then reads as absent).
async fn scrape(metrics: SocketAddr) -> String {
    let Ok(mut client) = Client::connect(metrics).await else { return String::new() };
    client.request("GET", "/metrics", &[], None).await.map(|reply| reply.body).unwrap_or_default()
}

/// The value of one sample (by its full name with labels) on a scraped /metrics page.
fn sample_in(page: &str, sample: &str) -> Option<f64> {
    let needle = format!("{sample} ");
    page.lines().find_map(|l| l.strip_prefix(&needle)).and_then(|v| v.trim().parse::<f64>().ok())
}

/// The daemon's group commits so far: how many, and how many writes they made durable.
#[derive(Clone, Copy)]
struct Commits {
    flushes: u64,
    writes: u64,
}

impl Commits {
    async fn now(metrics: SocketAddr) -> Commits {
        let page = scrape(metrics).await;
        let value = |sample: &str| sample_in(&page, sample).map_or(0, |v| v as u64);
        Commits {
            flushes: value(&format!("{}_count", telemetry::STORE_FLUSH_SECONDS)),
            writes: value(telemetry::STORE_FLUSHED_WRITES_TOTAL),
        }
    }

    fn since(self, before: Commits) -> Commits {
        Commits { flushes: self.flushes.saturating_sub(before.flushes), writes: self.writes.saturating_sub(before.writes) }
    }

    /// Per message, and writers per flush: a busy daemon batches more writers into each.
    fn describe(self, messages: usize) -> String {
        format!("{:.2}; {:.1}", self.flushes as f64 / messages.max(1) as f64, self.writes as f64 / self.flushes.max(1) as f64)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

struct LoadResult {
    /// Accepted message texts with the instant their POST was sent.
    accepted: Vec<(String, Instant)>,
    latencies: Vec<Duration>,
    /// Open loop: how far behind its due time each request was sent (the load generator's own
    /// delay, counted in its latency).
    behind: Vec<Duration>,
    elapsed: Duration,
    errors: usize,
}

/// The open loop's clock: a thread of its own hands out request numbers, each at its due time
/// (start + i/rate). tokio's timer fires on whole milliseconds, so `sleep_until` sent requests up
/// to a millisecond late (measured: 0.86 ms behind at the median, 1.9 ms at p99, at 2,000/s),
/// and a latency counted from the due time charged that to the daemon; a thread's `sleep` wakes
/// within tens of microseconds. A generator that falls behind still sends late, and is counted.
struct Pacer {
    due: mpsc::UnboundedReceiver<usize>,
}

impl Pacer {
    fn start(count: usize, rate: u32, started: Instant) -> Arc<tokio::sync::Mutex<Pacer>> {
        let (tx, due) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for i in 0..count {
                if let Some(wait) = due_time(started, i, rate).checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if tx.send(i).is_err() {
                    return;
                }
            }
        });
        Arc::new(tokio::sync::Mutex::new(Pacer { due }))
    }

    /// The next request due now; `None` once all are out.
    async fn next(this: &tokio::sync::Mutex<Pacer>) -> Option<usize> {
        this.lock().await.due.recv().await
    }
}

fn due_time(started: Instant, i: usize, rate: u32) -> Instant {
    started + Duration::from_secs_f64(i as f64 / f64::from(rate))
}

/// Closed loop: `concurrency` connections send back to back. Open loop (`rate` Some): request
/// i is due at start + i/rate ([`Pacer`]), and its latency counts from when it was due (no
/// coordinated omission).
async fn drive(http: impl Into<Intake>, count: usize, concurrency: usize, rate: Option<u32>, tag: &str) -> LoadResult {
    let http = http.into();
    let next = Arc::new(AtomicUsize::new(0));
    // The phase's name: its tag's first word (a long-message phase tags with its text).
    let name = tag.split_whitespace().next().unwrap_or("load").to_string();
    let progress = progress::Progress::start(&name, count);
    let started = Instant::now();
    let pacer = rate.map(|rate| (Pacer::start(count, rate, started), rate));
    let auth = format!("Bearer {API_KEY}");
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, auth, tag, http, done, pacer) =
                (next.clone(), auth.clone(), tag.to_string(), http.clone(), progress.counter(), pacer.clone());
            tokio::spawn(async move {
                let mut out = Sent::default();
                let Ok(mut client) = http.connect().await else {
                    return out;
                };
                let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                loop {
                    let (i, due) = match &pacer {
                        Some((pacer, rate)) => match Pacer::next(pacer).await {
                            Some(i) => (i, due_time(started, i, *rate)),
                            None => return out,
                        },
                        None => match next.fetch_add(1, Ordering::Relaxed) {
                            i if i < count => (i, Instant::now()),
                            _ => return out,
                        },
                    };
                    let text = format!("{tag} {i}");
                    // Distinct numbers: one number's messages are sent one at a time by design.
                    let body = format!(r#"{{"to": "+4477{:08}", "text": "{text}"}}"#, i % 100_000_000);
                    let sent = Instant::now();
                    match client.request("POST", "/v1/messages", &headers, Some(&body)).await {
                        Ok(reply) if reply.status == 202 => {
                            out.timed.push((due - started, due.elapsed()));
                            out.behind.push(sent.saturating_duration_since(due));
                            out.accepted.push((text, sent));
                        }
                        _ => out.errors += 1,
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut result = LoadResult { accepted: Vec::new(), latencies: Vec::new(), behind: Vec::new(), elapsed: Duration::ZERO, errors: 0 };
    let mut samples = Vec::with_capacity(count);
    for worker in workers {
        if let Ok(sent) = worker.await {
            result.accepted.extend(sent.accepted);
            result.latencies.extend(sent.timed.iter().map(|(_, latency)| *latency));
            result.behind.extend(sent.behind);
            samples.extend(sent.timed);
            result.errors += sent.errors;
        }
    }
    drop(progress);
    result.elapsed = started.elapsed();
    result.latencies.sort();
    result.behind.sort();
    progress::record(progress::Timeline { name, samples });
    result
}

/// What one connection of [`drive`] sent.
#[derive(Default)]
struct Sent {
    accepted: Vec<(String, Instant)>,
    /// (due since the start, latency from due) per accepted request.
    timed: Vec<(Duration, Duration)>,
    behind: Vec<Duration>,
    errors: usize,
}

/// Runs the whole benchmark and prints its table.
pub async fn run(options: BenchOptions) -> Result<(), BenchError> {
    let result = run_phases(&options).await;
    if let Some(path) = &options.plot {
        plot::draw(path, &progress::timelines()).map_err(BenchError::Setup)?;
        println!("\nplot: {}", path.display());
    }
    result
}

async fn run_phases(options: &BenchOptions) -> Result<(), BenchError> {
    let options = options.clone();
    let work = tempfile_dir()?;
    let data_dir = work.join("data");
    let mut sims = Vec::new();
    for i in 0..options.carriers.max(1) {
        let config = SimConfig {
            name: format!("smsc{i}"),
            receipt_delay: Duration::from_millis(5),
            random_ids: options.random_ids,
            ..SimConfig::default()
        };
        sims.push(SmscSim::start(SocketAddr::from(([127, 0, 0, 1], 0)), config).await.map_err(|e| BenchError::Setup(e.to_string()))?);
    }
    let sim_addrs: Vec<SocketAddr> = sims.iter().map(SmscSim::addr).collect();
    let throwaway = match &options.store {
        BenchStore::Postgres(None) => Some(ThrowawayPostgres::start().await.map_err(|e| BenchError::Setup(e.to_string()))?),
        _ => None,
    };
    let db = match &options.store {
        BenchStore::Sled => None,
        BenchStore::Postgres(url) => Some(Database {
            url: url.clone().or_else(|| throwaway.as_ref().map(ThrowawayPostgres::url)).unwrap_or_default(),
            key_file: work.join("otp-hmac.key"),
        }),
    };
    let (child, http, metrics) = start_daemon(&work, "otpgate.toml", &sim_addrs, &data_dir, db.as_ref())?;
    // A cluster node is ready as a follower first: wait until it leads.
    let role = db.as_ref().map(|_| "leader");
    wait_role(http, "/readyz", role, Duration::from_secs(20)).await?;
    let pid = child.id();
    let row = |k: &str, v: String| println!("| {k} | {v} |");
    let ids = if options.random_ids { "random" } else { "counting" };
    let store = match &options.store {
        BenchStore::Sled => "sled store".to_string(),
        BenchStore::Postgres(None) => {
            format!("PostgreSQL store ({}, throwaway server on this machine)", postgres_version(db.as_ref()).await)
        }
        BenchStore::Postgres(Some(_)) => format!("PostgreSQL store ({}, --postgres-url)", postgres_version(db.as_ref()).await),
    };
    println!(
        "otpgate bench: {} simulated carriers (2 sessions x window 64 each, {ids} message ids), {store}, {} cores, {}",
        sims.len(),
        cores(),
        cpu_model()
    );
    println!();
    println!("| measure | result |");
    println!("|---|---|");

    if options.tls {
        stop(child);
        let c = tls::compare(&work, &sims, &options).await?;
        row(
            &format!(
                "closed loop of {} (concurrency {}): end to end / s, plain / every link over TLS",
                options.messages, options.concurrency
            ),
            format!("{:.0} / {:.0} ({:+.1} %)", c.plain.rate, c.tls.rate, (c.tls.rate / c.plain.rate - 1.0) * 100.0),
        );
        row(
            "CPU ms per message (otpgate process), plain / TLS",
            format!("{:.3} / {:.3}", c.plain.cpu_ms_per_message, c.tls.cpu_ms_per_message),
        );
        row("machine idle, plain / TLS", format!("{} / {}", percent(c.plain.idle), percent(c.tls.idle)));
        row("TLS: protocol the SMSC links negotiated", c.protocol.clone());
        let _ = std::fs::remove_dir_all(&work);
        if c.tls.accepted < options.messages || c.plain.accepted < options.messages {
            return Err(BenchError::Lost(format!("only {} / {} of {} accepted", c.plain.accepted, c.tls.accepted, options.messages)));
        }
        return Ok(());
    }

    if options.long {
        // The same daemon and load, one SMS per message, then three parts (UDH, 8-bit reference).
        let single = phase(http.into(), metrics, pid, options.messages, options.concurrency, "single").await;
        let parts_before = summed(metrics, telemetry::SEGMENTS_TOTAL).await;
        let long_text = format!("long {}", "x".repeat(440));
        let long = phase(http.into(), metrics, pid, options.messages, options.concurrency, &long_text).await;
        let parts = summed(metrics, telemetry::SEGMENTS_TOTAL).await - parts_before;
        let seconds = long.accepted as f64 / long.rate.max(f64::MIN_POSITIVE);
        row(
            &format!(
                "closed loop of {} (concurrency {}): messages end to end / s, one SMS / three parts",
                options.messages, options.concurrency
            ),
            format!("{:.0} / {:.0}", single.rate, long.rate),
        );
        row(
            "three-part loop: parts (submit_sm) accepted / s, each with its receipt matched",
            format!("{:.0} ({parts:.0} parts)", parts / seconds),
        );
        row(
            "CPU ms per message (otpgate process), one SMS / three parts",
            format!("{:.3} / {:.3}", single.cpu_ms_per_message, long.cpu_ms_per_message),
        );
        row("machine idle, one SMS / three parts", format!("{} / {}", percent(single.idle), percent(long.idle)));
        stop(child);
        let _ = std::fs::remove_dir_all(&work);
        if long.accepted < options.messages || parts < 3.0 * long.accepted as f64 {
            return Err(BenchError::Lost(format!("{} of {} accepted, {parts} parts", long.accepted, options.messages)));
        }
        return Ok(());
    }

    if options.webhook {
        let config = work.join("otpgate.toml");
        let c = webhook::compare(http, metrics, pid, &config, &options).await?;
        row(
            &format!(
                "closed loop of {} (concurrency {}): end to end / s, without a webhook / with one taking every event",
                options.messages, options.concurrency
            ),
            format!("{:.0} / {:.0} ({:+.1} %)", c.without.rate, c.with.rate, (c.with.rate / c.without.rate - 1.0) * 100.0),
        );
        row(
            "CPU ms per message (otpgate process), without / with",
            format!("{:.3} / {:.3}", c.without.cpu_ms_per_message, c.with.cpu_ms_per_message),
        );
        row(
            "CPU ms per message, this process (load generator, simulated SMSCs, the receiver), without / with",
            format!("{:.3} / {:.3}", c.without.own_cpu_ms_per_message, c.with.own_cpu_ms_per_message),
        );
        row("machine idle, without / with", format!("{} / {}", percent(c.without.idle), percent(c.with.idle)));
        row("closed loop: the last event arrived after the last receipt was matched", format!("{:.2} s", c.lag.as_secs_f64()));
        row(
            &format!("open loop at {}/s with the endpoint: HTTP latency p50 / p99", c.paced_rate),
            format!("{} / {}", ms(percentile(&c.paced_http, 0.5)), ms(percentile(&c.paced_http, 0.99))),
        );
        row(
            &format!("open loop at {}/s: an event taken after its change, p50 / p99", c.paced_rate),
            format!("{} / {}", ms(percentile(&c.paced_lags, 0.5)), ms(percentile(&c.paced_lags, 0.99))),
        );
        row(
            "events taken by the endpoint / expected (2 per message, both loops); requests; bad signatures",
            format!("{} / {}; {}; {}", c.events, c.expected, c.requests, c.bad_signatures),
        );
        stop(child);
        let _ = std::fs::remove_dir_all(&work);
        if c.events < c.expected {
            return Err(BenchError::Lost(format!("LOST {} webhook events", c.expected - c.events)));
        }
        return Ok(());
    }

    // Closed loop to saturation.
    let (cpu0, _) = usage(pid);
    let (own0, _) = usage(std::process::id());
    let commits0 = Commits::now(metrics).await;
    let machine = progress::Machine::now();
    let closed = drive(http, options.messages, options.concurrency, None, "closed").await;
    let accepted = closed.accepted.len();
    let intake_rate = accepted as f64 / closed.elapsed.as_secs_f64();
    // Wait for every receipt to be matched.
    let e2e_started = Instant::now() - closed.elapsed;
    let mut delivered = 0;
    let wait_until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < wait_until {
        delivered = messages_in_state(metrics, "delivered").await;
        if delivered as usize >= accepted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e2e = e2e_started.elapsed();
    let (cpu1, _) = usage(pid);
    let (own1, _) = usage(std::process::id());
    let commits = Commits::now(metrics).await.since(commits0);
    let closed_idle = machine.idle_since();
    let all_submits: Vec<_> = sims.iter().flat_map(|s| s.stats().submits).collect();
    let submit_span = match (all_submits.iter().map(|s| s.at).min(), all_submits.iter().map(|s| s.at).max()) {
        (Some(a), Some(b)) if b > a => b - a,
        _ => Duration::from_millis(1),
    };
    row("closed loop: HTTP 202 accepted / s", format!("{intake_rate:.0} (concurrency {})", options.concurrency));
    row("closed loop: submit_sm reaching the SMSCs / s", format!("{:.0}", all_submits.len() as f64 / submit_span.as_secs_f64()));
    row("closed loop: end to end (202 → receipt matched) / s", format!("{:.0}", delivered as f64 / e2e.as_secs_f64()));
    row(
        "closed loop: HTTP latency p50 / p99 / p99.9",
        format!(
            "{} / {} / {}",
            ms(percentile(&closed.latencies, 0.5)),
            ms(percentile(&closed.latencies, 0.99)),
            ms(percentile(&closed.latencies, 0.999))
        ),
    );
    // Intake → submit latency from the SMSC side's timestamps.
    let sent_at: HashMap<&str, Instant> = closed.accepted.iter().map(|(t, at)| (t.as_str(), *at)).collect();
    let mut to_submit: Vec<Duration> =
        all_submits.iter().filter_map(|s| sent_at.get(s.text.as_str()).map(|at| s.at.saturating_duration_since(*at))).collect();
    to_submit.sort();
    row("closed loop: intake → submit_sm p50 / p99", format!("{} / {}", ms(percentile(&to_submit, 0.5)), ms(percentile(&to_submit, 0.99))));
    row(
        "closed loop: CPU ms per message, otpgate / this process (load generator, simulated SMSCs); machine idle",
        format!(
            "{:.3} / {:.3}; {}",
            (cpu1 - cpu0) / accepted.max(1) as f64 * 1000.0,
            (own1 - own0) / accepted.max(1) as f64 * 1000.0,
            percent(closed_idle)
        ),
    );
    row("closed loop: group commits per message; writers per group commit", commits.describe(accepted));

    // Open loop at a fixed offered rate.
    let open_count = options.rate as usize * options.open_loop_seconds as usize;
    let (cpu0, _) = usage(pid);
    let commits0 = Commits::now(metrics).await;
    let machine = progress::Machine::now();
    let open = drive(http, open_count, options.concurrency.max(64), Some(options.rate), "open").await;
    let (cpu1, _) = usage(pid);
    let commits = Commits::now(metrics).await.since(commits0);
    row(
        &format!("open loop at {}/s: HTTP latency p50 / p99 / p99.9", options.rate),
        format!(
            "{} / {} / {}",
            ms(percentile(&open.latencies, 0.5)),
            ms(percentile(&open.latencies, 0.99)),
            ms(percentile(&open.latencies, 0.999))
        ),
    );
    row(
        "open loop: requests sent behind their due time (load generator), p50 / p99",
        format!("{} / {}", ms(percentile(&open.behind, 0.5)), ms(percentile(&open.behind, 0.99))),
    );
    row(
        "open loop: CPU ms per message (otpgate); machine idle",
        format!("{:.3}; {}", (cpu1 - cpu0) / open.accepted.len().max(1) as f64 * 1000.0, percent(machine.idle_since())),
    );
    row("open loop: group commits per message; writers per group commit", commits.describe(open.accepted.len()));

    // Receipts for every plain message, before verifications add their own.
    let plain = (accepted + open.accepted.len()) as u64;
    let mut matched_plain = 0;
    let until = Instant::now() + Duration::from_secs(60);
    while matched_plain < plain && Instant::now() < until {
        matched_plain = messages_in_state(metrics, "delivered").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Receipts that beat their submit_sm_resp to the store take the held path (written, then
    // applied with the response): how many did is part of what a run measured.
    let held = summed(metrics, telemetry::RECEIPTS_HELD_TOTAL).await;

    // Verification round trips: create, read the code at the SMSC, check.
    let verification = verify(http, &sims, options.verifications, options.concurrency.min(64)).await;
    row("verifications: create + check round trips / s", format!("{:.0}", verification.0));
    if verification.1 > 0 {
        row("verifications: not approved", verification.1.to_string());
    }

    // Accounting over everything sent as plain messages.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acknowledged: Vec<String> = closed.accepted.iter().chain(open.accepted.iter()).map(|(t, _)| t.clone()).collect();
    // Over the plain messages only: verification texts differ by their code alone and may repeat.
    let plain: HashSet<&str> = acknowledged.iter().map(String::as_str).collect();
    let received: Vec<String> = sims.iter().flat_map(|s| s.stats().submits).map(|m| m.text).collect();
    let accounting = Accounting::of(plain.iter().copied(), received.iter().map(String::as_str).filter(|t| plain.contains(t)));
    let (_, peak_rss) = usage(pid);
    row("peak RSS of otpgate (after the runs above)", format!("{:.1} MB", peak_rss as f64 / 1e6));
    let stored = accepted + open.accepted.len() + 2 * options.verifications;
    let size = match &db {
        Some(db) => database_size(&db.url).await,
        None => dir_size(&data_dir),
    };
    row("store size on disk per 1 M messages", format!("{:.0} MB", size as f64 / stored.max(1) as f64 * 1e6 / 1e6));
    let mut lost_after_restart = 0;
    match &db {
        Some(db) => {
            let t = takeover(&work, &sims, db, child, options.rate).await?;
            row(
                &format!("cluster: follower intake → submit_sm p50 / p99 at {}/s", options.rate),
                format!("{} / {}", ms(percentile(&t.follower_to_submit, 0.5)), ms(percentile(&t.follower_to_submit, 0.99))),
            );
            row(
                &format!("cluster: kill -9 of the leader under {}/s through the follower: follower leads after", options.rate),
                format!(
                    "{:.2} s, its first submit after {:.2} s (cluster.takeover 10 s)",
                    t.leading.as_secs_f64(),
                    t.resumed.as_secs_f64()
                ),
            );
            row("cluster: acknowledged during the takeover", format!("{} (lost {}, duplicates {})", t.acknowledged, t.lost, t.duplicates));
            lost_after_restart += t.lost;
        }
        None => stop(child),
    }

    if options.recovery_messages > 0 && db.is_some() {
        row("restart recovery", "measured on the sled store only".into());
    } else if options.recovery_messages > 0 {
        let restarts = recovery(&work, &sim_addrs, options.recovery_messages).await?;
        for (how, r) in ["clean stop", "kill -9"].iter().zip(&restarts) {
            row(
                &format!("restart after {how} with {} queued, carriers down: serving after", options.recovery_messages),
                format!(
                    "{:.2} s (peak RSS {:.1} MB; {} handed to the dispatcher, the rest read as it drains)",
                    r.serving,
                    r.peak_rss as f64 / 1e6,
                    r.recovered
                ),
            );
        }
        let drained = drain(&work, &sims, options.recovery_messages).await?;
        row(
            &format!("restart with {} queued, carriers up: every one submitted and its receipt matched after", options.recovery_messages),
            format!(
                "{:.1} s ({:.0}/s; peak RSS {:.1} MB; reached the SMSCs {}, lost {})",
                drained.seconds,
                options.recovery_messages as f64 / drained.seconds.max(1e-9),
                drained.peak_rss as f64 / 1e6,
                drained.reached,
                options.recovery_messages - drained.reached
            ),
        );
        if drained.reached < options.recovery_messages {
            lost_after_restart = options.recovery_messages - drained.reached;
        }
    }

    println!();
    println!(
        "accounting: {accounting}; receipts matched {matched_plain} ({held} held for their submit_sm_resp){}",
        if closed.errors + open.errors > 0 { format!(" ({} requests refused)", closed.errors + open.errors) } else { String::new() }
    );
    let _ = std::fs::remove_dir_all(&work);
    if !accounting.nothing_lost() {
        return Err(BenchError::Lost(format!("LOST {} acknowledged messages", accounting.lost.len())));
    }
    if lost_after_restart > 0 {
        return Err(BenchError::Lost(format!("LOST {lost_after_restart} queued messages across the restarts or the takeover")));
    }
    Ok(())
}

/// What the takeover phase measured.
struct Takeover {
    /// POST to the follower → submit_sm at an SMSC, before the kill.
    follower_to_submit: Vec<Duration>,
    /// From the kill until the follower answers `/readyz` as leader ...
    leading: Duration,
    /// ... and until its first submit_sm reached an SMSC.
    resumed: Duration,
    acknowledged: usize,
    lost: usize,
    duplicates: usize,
}

/// Starts a second node (a follower), offers `rate` messages per second through it for 8 s,
/// and kills the leader (`leader`, the first node) with SIGKILL 3 s in.
async fn takeover(work: &Path, sims: &[SmscSim], db: &Database, leader: Child, rate: u32) -> Result<Takeover, BenchError> {
    let addrs: Vec<SocketAddr> = sims.iter().map(SmscSim::addr).collect();
    let (follower, http, _) = start_daemon(work, "follower.toml", &addrs, &work.join("data-follower"), Some(db))?;
    wait_role(http, "/readyz", Some("follower"), Duration::from_secs(20)).await?;
    let load = tokio::spawn(drive(http, rate as usize * 8, 64, Some(rate), "takeover"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut leader = leader;
    let _ = leader.kill();
    let killed = Instant::now();
    let _ = leader.wait();
    let leading = wait_role(http, "/readyz", Some("leader"), Duration::from_secs(60)).await?;
    let load = load.await.map_err(|e| BenchError::Setup(e.to_string()))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let submits: Vec<_> = sims.iter().flat_map(|s| s.stats().submits).filter(|m| m.text.starts_with("takeover ")).collect();
    let sent_at: HashMap<&str, Instant> = load.accepted.iter().map(|(t, at)| (t.as_str(), *at)).collect();
    let mut follower_to_submit: Vec<Duration> = submits
        .iter()
        .filter(|s| s.at < killed)
        .filter_map(|s| sent_at.get(s.text.as_str()).map(|at| s.at.saturating_duration_since(*at)))
        .collect();
    follower_to_submit.sort();
    let resumed = submits.iter().filter(|s| s.system_id == "follower").map(|s| s.at).min().map_or(Duration::ZERO, |at| at - killed);
    let acknowledged: Vec<String> = load.accepted.iter().map(|(t, _)| t.clone()).collect();
    let accounting = Accounting::settle(&sims.iter().collect::<Vec<_>>(), &acknowledged, Duration::from_secs(30)).await;
    stop(follower);
    Ok(Takeover {
        follower_to_submit,
        leading,
        resumed,
        acknowledged: acknowledged.len(),
        lost: accounting.lost.len(),
        duplicates: accounting.duplicates,
    })
}

/// The server's version, for the table's heading.
async fn postgres_version(db: Option<&Database>) -> String {
    let Some(db) = db else { return String::new() };
    query_one(&db.url, "SELECT 'PostgreSQL ' || current_setting('server_version')").await.unwrap_or_else(|| "PostgreSQL".into())
}

/// The database's size on disk.
async fn database_size(url: &str) -> u64 {
    query_one(url, "SELECT pg_database_size(current_database())::text").await.and_then(|size| size.parse().ok()).unwrap_or(0)
}

async fn query_one(url: &str, sql: &str) -> Option<String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.ok()?;
    tokio::spawn(connection);
    client.query_one(sql, &[]).await.ok().map(|row| row.get(0))
}

/// `count` verification round trips over `concurrency` connections; returns (per second,
/// failures).
async fn verify(http: SocketAddr, sims: &[SmscSim], count: usize, concurrency: usize) -> (f64, usize) {
    let codes: Arc<Mutex<HashMap<String, String>>> = Arc::new(Mutex::new(HashMap::new()));
    let collectors: Vec<_> = sims
        .iter()
        .map(|sim| {
            let (mut rx, codes) = (sim.subscribe(), codes.clone());
            tokio::spawn(async move {
                while let Ok(sms) = rx.recv().await {
                    if sms.text.contains("Bench code") {
                        let code: String = sms.text.chars().take_while(char::is_ascii_digit).collect();
                        codes.lock().unwrap_or_else(|p| p.into_inner()).insert(sms.to.clone(), code);
                    }
                }
            })
        })
        .collect();
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let auth = format!("Bearer {API_KEY}");
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, failures, codes, auth) = (next.clone(), failures.clone(), codes.clone(), auth.clone());
            tokio::spawn(async move {
                let Ok(mut client) = Client::connect(http).await else { return };
                let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    let number = format!("3361{:08}", i);
                    let body = format!(r#"{{"to": "+{number}"}}"#);
                    let Ok(created) = client.request("POST", "/v1/verifications", &headers, Some(&body)).await else { return };
                    let Some(id) = created.json()["id"].as_str().map(str::to_string) else {
                        failures.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let waited = Instant::now();
                    let code = loop {
                        if let Some(code) = codes.lock().unwrap_or_else(|p| p.into_inner()).remove(&number) {
                            break Some(code);
                        }
                        if waited.elapsed() > Duration::from_secs(10) {
                            break None;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    };
                    let approved = match code {
                        Some(code) => {
                            let body = format!(r#"{{"code": "{code}"}}"#);
                            client
                                .request("POST", &format!("/v1/verifications/{id}/check"), &headers, Some(&body))
                                .await
                                .is_ok_and(|r| r.json()["status"] == "approved")
                        }
                        None => false,
                    };
                    if !approved {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    for c in collectors {
        c.abort();
    }
    (rate, failures.load(Ordering::Relaxed))
}

/// One restart of the recovery phase.
struct Restart {
    /// Seconds from spawn to a 200 on /healthz.
    serving: f64,
    /// Messages handed to the dispatcher two seconds later.
    recovered: u64,
    peak_rss: u64,
}

/// Fills a store with `count` queued messages, then starts otpgate on it twice with carriers
/// that never answer (the queue stays as it is): after the filler's clean close, then again
/// after a kill -9 of the first (the open reads the queue depth its last group commit recorded). Each
/// start is timed until `/healthz` answers; its peak RSS is read after two seconds of recovery.
async fn recovery(work: &Path, sims: &[SocketAddr], count: usize) -> Result<[Restart; 2], BenchError> {
    let data_dir = work.join("recovery");
    {
        let store = Store::open(&data_dir, &StoreOptions { cache_capacity_bytes: 16 << 20, ..StoreOptions::default() })
            .await
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        let next = Arc::new(AtomicUsize::new(0));
        let now = SystemTime::now();
        let writers: Vec<_> = (0..64)
            .map(|_| {
                let (store, next) = (store.clone(), next.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return;
                        }
                        let message = NewMessage {
                            owner: "bench".into(),
                            to: format!("+4478{:08}", i),
                            from: None,
                            text: format!("recovery {i}"),
                            deadline: now + Duration::from_secs(3600),
                            encoding: None,
                            segments: 1,
                            options: Default::default(),
                        };
                        if store.insert_message(message, None, now).await.is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            let _ = w.await;
        }
        store.close().await.map_err(|e| BenchError::Setup(e.to_string()))?;
    }
    let dead: Vec<SocketAddr> = sims.iter().map(|_| free_addr()).collect::<Result<_, _>>()?;
    let start = |name: &str| start_daemon(work, name, &dead, &data_dir, None);
    let measure = |child: Child, http: SocketAddr, metrics: SocketAddr| async move {
        let started = Instant::now();
        let ready = wait_http(http, "/healthz", Duration::from_secs(300)).await;
        let serving = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let recovered = counter(metrics, telemetry::RECOVERED_TOTAL).await;
        let (_, peak_rss) = usage(child.id());
        (child, ready.map(|_| Restart { serving, recovered, peak_rss }))
    };
    let (child, http, metrics) = start("recovery.toml")?;
    let (mut child, clean) = measure(child, http, metrics).await;
    let _ = child.kill();
    let _ = child.wait();
    let clean = clean?;
    let (child, http, metrics) = start("recovery-crash.toml")?;
    let (child, crashed) = measure(child, http, metrics).await;
    stop(child);
    Ok([clean, crashed?])
}

/// The restart phase's end: the store [`recovery`] left (every message still queued), started
/// once more with the carriers up.
struct Drained {
    /// From spawn until every queued message had its receipt matched.
    seconds: f64,
    peak_rss: u64,
    /// Distinct queued messages that reached an SMSC.
    reached: usize,
}

async fn drain(work: &Path, sims: &[SmscSim], count: usize) -> Result<Drained, BenchError> {
    let addrs: Vec<SocketAddr> = sims.iter().map(SmscSim::addr).collect();
    let started = Instant::now();
    let (child, _, metrics) = start_daemon(work, "recovery-drain.toml", &addrs, &work.join("recovery"), None)?;
    let limit = Duration::from_secs(60 + count as u64 / 1000);
    while started.elapsed() < limit && (messages_in_state(metrics, "delivered").await as usize) < count {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (_, peak_rss) = usage(child.id());
    stop(child);
    let mut seen = HashSet::new();
    for sim in sims {
        sim.with_stats(|s| {
            for sms in s.submits.iter().filter(|m| m.text.starts_with("recovery ")) {
                seen.insert(sms.text.clone());
            }
        });
    }
    Ok(Drained { seconds, peak_rss, reached: seen.len() })
}

fn tempfile_dir() -> Result<PathBuf, BenchError> {
    let dir = std::env::temp_dir().join(format!("otpgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::Setup(e.to_string()))?;
    Ok(dir)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| l.strip_prefix("model name")).map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pacer_hands_out_every_request_in_order_and_none_before_it_is_due() {
        let (count, rate, started) = (40, 2_000, Instant::now());
        let pacer = Pacer::start(count, rate, started);
        let mut handed = Vec::new();
        while let Some(i) = Pacer::next(&pacer).await {
            assert!(Instant::now() >= due_time(started, i, rate), "request {i} handed out early");
            handed.push(i);
        }
        assert_eq!(handed, (0..count).collect::<Vec<_>>());
    }
}
