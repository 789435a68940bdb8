//! The `otpgate` command: the daemon, its config checker, the demo and the SMSC simulator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use otpgate::config::Config;
use otpgate::daemon::Daemon;
use otpgate::sim::{SimConfig, SmscSim};

/// glibc's malloc took a fifth of the daemon's CPU under load, much of it in arena lock
/// contention between the runtime's threads (measured with perf; see the README). jemalloc costs
/// the same CPU as mimalloc did and keeps far less memory resident around sled's churn of page
/// table entries and node copies (draining a million queued messages: 180 MB with mimalloc, 123
/// MB with this; README, Performance).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: freed pages go back to the system after a second
/// unused (not ten), straight away rather than through a lazy `MADV_FREE` stage that still
/// counts as resident, and never as transparent huge pages (which doubled the RSS under
/// mimalloc). `_RJEM_MALLOC_CONF` in the environment still overrides them.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 47] = b"dirty_decay_ms:1000,muzzy_decay_ms:0,thp:never\0";

#[derive(Parser)]
#[command(name = "otpgate", version, about = "Self-hosted OTP SMS gateway over SMPP")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and print a summary; exit 1 on any error.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the daemon against two simulated carriers on loopback: nothing external needed.
    Demo {
        /// Where the demo's HTTP intake listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// Send one message over HTTP, wait for its receipt and exit (for scripts and tests).
        #[arg(long, hide = true)]
        once: bool,
        /// Encrypt every link: carriers over SMPP/TLS, the intake and metrics over HTTPS, with a
        /// throwaway certificate authority (its file is printed for curl --cacert).
        #[arg(long)]
        tls: bool,
    },
    /// Print the SHA-256 of an API key read from stdin, for `[[api_keys]] key_sha256`.
    HashKey,
    /// Print the man page (roff), generated from this command line's own help.
    #[command(hide = true)]
    Man,
    /// Measure throughput, latency and resources against simulated carriers (use --release).
    Bench(BenchArgs),
    /// Run the SMSC simulator on its own, printing every SMS it receives.
    SmscSim {
        #[arg(long, default_value = "127.0.0.1:2775")]
        listen: SocketAddr,
        /// Require this system_id (any is accepted when unset).
        #[arg(long)]
        system_id: Option<String>,
        /// Require this password (any is accepted when unset).
        #[arg(long)]
        password: Option<String>,
        /// Delay before each submit_sm_resp, e.g. "50ms".
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        response_delay: Duration,
        /// Do not send delivery receipts.
        #[arg(long)]
        no_receipts: bool,
        /// Serve SMPP over TLS with this certificate chain (PEM) ...
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// ... and its private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require client certificates signed by this authority (mutual TLS).
        #[arg(long, requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
    },
}

/// `otpgate bench`'s flags.
#[derive(clap::Args)]
struct BenchArgs {
    #[arg(long, default_value_t = 2)]
    carriers: usize,
    /// Messages in the closed-loop (saturation) phase.
    #[arg(long, default_value_t = 1_000_000)]
    messages: usize,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Offered messages per second in the open-loop phase.
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    #[arg(long, default_value_t = 10)]
    open_loop_seconds: u64,
    #[arg(long, default_value_t = 10_000)]
    verifications: usize,
    /// Queued messages for the restart-recovery phase (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    recovery_messages: usize,
    /// Simulated SMSCs hand out random message ids (receipt lookups all over the index).
    #[arg(long)]
    random_ids: bool,
    /// The daemon's store: `sled`, or `postgres` (a throwaway server started for the run
    /// unless --postgres-url is given; adds a two-node takeover phase).
    #[arg(long, default_value = "sled", value_parser = ["sled", "postgres"])]
    store: String,
    /// An existing PostgreSQL database for --store postgres (its password from PGPASSWORD).
    #[arg(long)]
    postgres_url: Option<String>,
    /// Only compare the closed loop without a webhook endpoint and with one taking every event
    /// (a receiver in this process), on the same daemon.
    #[arg(long)]
    webhook: bool,
    /// Only compare the closed loop over plain links and with every link encrypted (HTTPS to
    /// the intake, SMPP over TLS to the carriers), each on a fresh daemon.
    #[arg(long, conflicts_with = "webhook")]
    tls: bool,
    /// Only compare the closed loop with one-SMS messages and with three-part ones (messages/s
    /// and parts/s), on the same daemon.
    #[arg(long, conflicts_with_all = ["webhook", "tls"])]
    long: bool,
    /// Draw each phase's rate and HTTP latency percentiles over time to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

impl BenchArgs {
    fn options(self) -> otpgate::bench::BenchOptions {
        let store = match self.store.as_str() {
            "postgres" => otpgate::bench::BenchStore::Postgres(self.postgres_url),
            _ => otpgate::bench::BenchStore::Sled,
        };
        otpgate::bench::BenchOptions {
            carriers: self.carriers,
            messages: self.messages,
            concurrency: self.concurrency,
            rate: self.rate,
            open_loop_seconds: self.open_loop_seconds,
            verifications: self.verifications,
            recovery_messages: self.recovery_messages,
            random_ids: self.random_ids,
            store,
            webhook: self.webhook,
            tls: self.tls,
            long: self.long,
            plot: self.plot,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Files otpgate creates (the store, the HMAC key) hold numbers, texts and key material: no
    // access for group or others, whatever umask the shell or unit left.
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("otpgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config } => run(config).await,
            Command::CheckConfig { config } => check_config(config),
            Command::Demo { once, http, tls } => otpgate::demo::run(once, http, tls).await.map_err(|e| e.to_string()),
            Command::HashKey => hash_key(),
            Command::Man => man_page(),
            Command::Bench(args) => otpgate::bench::run(args.options()).await.map_err(|e| e.to_string()),
            Command::SmscSim { listen, system_id, password, response_delay, no_receipts, tls_cert, tls_key, tls_client_ca } => {
                let tls = match tls_cert.zip(tls_key) {
                    None => None,
                    Some((cert, key)) => match otpgate::tls::ServerTls::new(&cert, &key, tls_client_ca.as_deref()) {
                        Ok(tls) => Some(tls),
                        Err(e) => return Err(e.to_string()),
                    },
                };
                let config = SimConfig {
                    tls,
                    name: listen.to_string(),
                    system_id,
                    password,
                    response_delay,
                    receipts: !no_receipts,
                    ..SimConfig::default()
                };
                smsc_sim(listen, config).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("otpgate: {message}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: PathBuf) -> Result<(), String> {
    let config = Config::load(&path).map_err(|e| e.to_string())?;
    println!("{}: OK", path.display());
    print!("{}", config.summary());
    Ok(())
}

async fn run(path: PathBuf) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let config = Config::load(&path).map_err(|e| e.to_string())?;
    tracing::info!(config = %path.display(), carriers = config.carriers.len(), "starting");
    let daemon = Daemon::start(&config).await.map_err(|e| e.to_string())?;
    let signals = |kind| signal(kind).map_err(|e| format!("cannot install signal handlers: {e}"));
    let (mut term, mut int, mut hup) =
        (signals(SignalKind::terminate())?, signals(SignalKind::interrupt())?, signals(SignalKind::hangup())?);
    otpgate::systemd::notify("READY=1\nSTATUS=serving");
    let watchdog = otpgate::systemd::watchdog_interval();
    let mut ping = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    // The main loop: signals, and the watchdog ping that proves this loop still turns.
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&daemon, &path),
            _ = ping.tick(), if watchdog.is_some() => {
                // A store that cannot write (disk full) is not recovered in place: withholding
                // the ping lets systemd restart us, which reopens the store once space is back.
                if daemon.healthy() {
                    otpgate::systemd::notify("WATCHDOG=1");
                } else {
                    tracing::error!("store cannot write: not feeding the watchdog");
                }
            }
        }
    }
    otpgate::systemd::notify("STOPPING=1");
    tracing::info!("shutting down");
    // [server] settings only change with a restart, so the start-up value still holds.
    let limit = config.server.shutdown_timeout;
    if daemon.shutdown(limit).await {
        tracing::info!("all sessions unbound, store flushed; bye");
        Ok(())
    } else {
        Err(format!(
            "shutdown did not finish within {}; unfinished messages stay queued for the next start",
            humantime::format_duration(limit)
        ))
    }
}

/// SIGHUP: re-read the file; keep the running config if the new one is invalid.
fn reload(daemon: &Daemon, path: &std::path::Path) {
    otpgate::systemd::notify("RELOADING=1");
    match Config::load(path) {
        Ok(config) => {
            let needs_restart = daemon.reload(&config);
            tracing::info!(carriers = config.carriers.len(), routes = config.routes.len(), "config reloaded");
            if !needs_restart.is_empty() {
                tracing::warn!(sections = ?needs_restart, "these settings changed but only apply after a restart");
            }
        }
        Err(e) => tracing::error!(error = %e, "reload refused; the running config stays in force"),
    }
    otpgate::systemd::notify("READY=1\nSTATUS=serving");
}

/// Reads a key from stdin (one line; surrounding whitespace ignored) and prints its SHA-256.
fn man_page() -> Result<(), String> {
    clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()).map_err(|e| format!("cannot write the man page: {e}"))
}

fn hash_key() -> Result<(), String> {
    let mut key = String::new();
    std::io::stdin().read_line(&mut key).map_err(|e| format!("cannot read stdin: {e}"))?;
    let key = key.trim();
    if key.len() < 16 {
        return Err("an API key must be at least 16 characters".into());
    }
    println!("{}", otpgate::http::sha256_hex(key.as_bytes()));
    Ok(())
}

async fn smsc_sim(listen: SocketAddr, config: SimConfig) -> Result<(), String> {
    let sim = SmscSim::start(listen, config).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let secure = if sim.serves_tls() { " (SMPP over TLS)" } else { "" };
    println!("smsc-sim listening on {}{secure}", sim.addr());
    let mut received = sim.subscribe();
    tokio::spawn(async move {
        while let Ok(sms) = received.recv().await {
            println!("SMS to +{} from {:?}: {:?} (id {})", sms.to, sms.from, sms.text, sms.message_id);
        }
    });
    wait_for_signal().await.map_err(|e| format!("cannot install signal handlers: {e}"))?;
    Ok(())
}

/// SIGTERM or SIGINT (Ctrl-C), for the simulator.
async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}
