//! `otpgate demo`: the whole gateway on one machine with nothing external.
//!
//! Two simulated carrier SMSCs ("alpha" checks credentials, "beta" accepts any) listen on loopback;
//! the daemon binds to both with a built-in config; every SMS the carriers receive is printed.
//! It prints the curl commands that send a message through the HTTP intake and read its receipt.
//! With `--tls`, a throwaway authority signs a certificate for loopback: the carriers serve SMPP
//! over TLS, the intake and the metrics HTTPS, and the curl commands trust that authority.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::ConfigBuilder;
use crate::daemon::Daemon;
use crate::http::client::Client;
use crate::sim::{SimConfig, SmscSim};

/// Credentials the "alpha" simulator insists on, written into the demo config.
const ALPHA_SYSTEM_ID: &str = "otpgate";
const ALPHA_PASSWORD: &str = "demo1234";

/// The demo's API key. Not a secret: the demo config only ever listens where you tell it to.
pub const DEMO_API_KEY: &str = "otpgate-demo-key";

/// The demo's config, with the simulators' ports and the HTTP address filled in.
fn demo_config(alpha: SocketAddr, beta: SocketAddr, http: SocketAddr, data_dir: &Path) -> ConfigBuilder {
    ConfigBuilder::new(data_dir)
        .server(&format!("http_listen = \"{http}\""))
        .api_key("demo", DEMO_API_KEY)
        .carrier(
            "alpha",
            alpha,
            &format!(
                "system_id = \"{ALPHA_SYSTEM_ID}\"\npassword = \"{ALPHA_PASSWORD}\"\nwindow = 64\nenquire_link_interval = \"30s\"\n\
                 response_timeout = \"5s\"\nreconnect_min = \"500ms\"\nreconnect_max = \"10s\"\nsource_addr = \"Acme\""
            ),
        )
        .carrier(
            "beta",
            beta,
            "system_id = \"otpgate\"\npassword = \"beta\"\nbind = \"transmitter_receiver\"\nsessions = 2\nsource_addr = \"12345\"",
        )
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start a simulated carrier: {0}")]
    Simulator(std::io::Error),
    #[error("built-in demo config is invalid: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    #[error("carriers did not bind within {0:?}")]
    BindTimeout(Duration),
    #[error("demo message round trip failed: {0}")]
    RoundTrip(String),
    #[error("cannot make the demo's certificates: {0}")]
    Certificates(String),
}

/// The demo's TLS files: an authority and one certificate for loopback, signed by it.
struct DemoTls {
    ca_file: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl DemoTls {
    fn make(dir: &Path, http: SocketAddr) -> Result<DemoTls, DemoError> {
        let fail = |e: &dyn std::fmt::Display| DemoError::Certificates(e.to_string());
        std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        let authority = crate::tls::throwaway::Authority::new("otpgate demo CA").map_err(|e| fail(&e))?;
        let ca_file = dir.join("demo-ca.pem");
        authority.write_cert(&ca_file).map_err(|e| fail(&e))?;
        let ip = http.ip().to_string();
        let issued = authority.issue(&["localhost", "127.0.0.1", &ip], Duration::from_secs(30 * 86_400)).map_err(|e| fail(&e))?;
        let (cert, key) = issued.write(dir, "demo").map_err(|e| fail(&e))?;
        Ok(DemoTls { ca_file, cert, key })
    }

    fn serve(&self) -> Result<crate::tls::ServerTls, DemoError> {
        crate::tls::ServerTls::new(&self.cert, &self.key, None).map_err(|e| DemoError::Certificates(e.to_string()))
    }

    /// The config lines: carriers over TLS, HTTPS listeners.
    fn apply(&self, config: ConfigBuilder) -> ConfigBuilder {
        config
            .server(&format!(
                "tls_cert = {:?}\ntls_key = {:?}\nmetrics_tls = true",
                self.cert.display().to_string(),
                self.key.display().to_string()
            ))
            .carrier_defaults(&format!(
                "tls = true\ntls_ca_file = {:?}\ntls_server_name = \"localhost\"",
                self.ca_file.display().to_string()
            ))
    }
}

/// Where the demo's HTTP clients connect, and how.
struct Door {
    addr: SocketAddr,
    ca_file: Option<PathBuf>,
}

impl Door {
    async fn connect(&self) -> Result<Client, String> {
        let connected = match &self.ca_file {
            None => Client::connect(self.addr).await,
            Some(ca) => Client::connect_tls(self.addr, ca, "localhost").await,
        };
        connected.map_err(|e| e.to_string())
    }
}

async fn start_simulators(tls: Option<&DemoTls>) -> Result<(SmscSim, SmscSim), DemoError> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let tls = tls.map(DemoTls::serve).transpose()?;
    let alpha = SimConfig {
        name: "alpha".into(),
        system_id: Some(ALPHA_SYSTEM_ID.into()),
        password: Some(ALPHA_PASSWORD.into()),
        tls: tls.clone(),
        ..SimConfig::default()
    };
    let beta = SimConfig { name: "beta".into(), tls, ..SimConfig::default() };
    let alpha = SmscSim::start(loopback, alpha).await.map_err(DemoError::Simulator)?;
    let beta = SmscSim::start(loopback, beta).await.map_err(DemoError::Simulator)?;
    for sim in [&alpha, &beta] {
        let mut received = sim.subscribe();
        tokio::spawn(async move {
            while let Ok(sms) = received.recv().await {
                println!(
                    "[carrier {}] SMS to +{} from {:?}: {:?} (id {}, validity {:?})",
                    sms.carrier, sms.to, sms.from, sms.text, sms.message_id, sms.validity_period
                );
            }
        });
    }
    println!("simulated carrier alpha on {} (checks credentials)", alpha.addr());
    println!("simulated carrier beta  on {} (transmitter+receiver, 2 sessions)", beta.addr());
    Ok((alpha, beta))
}

/// Runs the demo until Ctrl-C; with `once`, sends one message over HTTP, waits for its receipt
/// and exits. With `tls`, every link is encrypted.
pub async fn run(once: bool, http: SocketAddr, tls: bool) -> Result<(), DemoError> {
    let data_dir = std::env::temp_dir().join(format!("otpgate-demo-{}", std::process::id()));
    let tls = match tls {
        true => Some(DemoTls::make(&data_dir.join("tls"), http)?),
        false => None,
    };
    let (alpha, beta) = start_simulators(tls.as_ref()).await?;
    let mut config = demo_config(alpha.addr(), beta.addr(), http, &data_dir);
    if let Some(tls) = &tls {
        config = tls.apply(config);
    }
    let config = config.build()?;
    print!("{}", config.summary());

    let daemon = Daemon::start(&config).await?;
    let door = Door { addr: daemon.http_addr(), ca_file: tls.map(|t| t.ca_file) };
    let result = demo(&daemon, &door, &alpha, once).await;
    let clean = daemon.shutdown(config.server.shutdown_timeout).await;
    let _ = std::fs::remove_dir_all(&data_dir);
    println!("stopped ({})", if clean { "all sessions unbound" } else { "shutdown timed out" });
    result
}

async fn demo(daemon: &Daemon, door: &Door, alpha: &SmscSim, once: bool) -> Result<(), DemoError> {
    let bind_limit = Duration::from_secs(10);
    for carrier in daemon.carriers() {
        let wanted = carrier.config().sessions;
        if !carrier.wait_bound(wanted, bind_limit).await {
            return Err(DemoError::BindTimeout(bind_limit));
        }
        println!("carrier {}: {wanted} submit session(s) bound", carrier.name());
    }
    let (scheme, curl) = match &door.ca_file {
        None => ("http", "curl -s".to_string()),
        Some(ca) => ("https", format!("curl -s --cacert {}", ca.display())),
    };
    let base = format!("{scheme}://{}", daemon.http_addr());
    println!();
    println!("Send a message:");
    println!(
        "  {curl} -X POST {base}/v1/messages -H 'Authorization: Bearer {DEMO_API_KEY}' \\\n       -H 'Content-Type: application/json' -d '{{\"to\": \"+447700900123\", \"text\": \"Hello from otpgate\"}}'"
    );
    println!("See its status and receipt (use the id it returned):");
    println!("  {curl} {base}/v1/messages/ID -H 'Authorization: Bearer {DEMO_API_KEY}'");
    println!();
    println!("Prometheus metrics:");
    println!("  {curl} {scheme}://{}/metrics", daemon.metrics_addr());
    println!();
    println!("Verify a phone number (the simulated carrier prints the SMS with the code):");
    println!(
        "  {curl} -X POST {base}/v1/verifications -H 'Authorization: Bearer {DEMO_API_KEY}' \\\n       -H 'Content-Type: application/json' -d '{{\"to\": \"+447700900123\"}}'"
    );
    println!("Check the code the user typed (use the id it returned):");
    println!(
        "  {curl} -X POST {base}/v1/verifications/ID/check -H 'Authorization: Bearer {DEMO_API_KEY}' \\\n       -H 'Content-Type: application/json' -d '{{\"code\": \"123456\"}}'"
    );
    println!();
    if once {
        round_trip(door).await.map_err(DemoError::RoundTrip)?;
        return verify(door, alpha).await.map_err(DemoError::RoundTrip);
    }
    println!("running; press Ctrl-C to stop");
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}

/// The verification round trip, with the code read back from the simulated carrier.
async fn verify(door: &Door, carrier: &SmscSim) -> Result<(), String> {
    let auth = format!("Bearer {DEMO_API_KEY}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let mut client = door.connect().await?;
    let sent_before = carrier.stats().submits.len();
    let reply =
        client.request("POST", "/v1/verifications", &headers, Some(r#"{"to": "+447700900123"}"#)).await.map_err(|e| e.to_string())?;
    println!("POST /v1/verifications -> {} {}", reply.status, reply.body);
    let id = reply.json()["id"].as_str().map(str::to_string).ok_or("no id in the answer")?;
    if !carrier.wait_until(Duration::from_secs(10), |s| s.submits.len() > sent_before).await {
        return Err("the code never reached the carrier".into());
    }
    let sms = carrier.stats().submits.last().map(|m| m.text.clone()).unwrap_or_default();
    let code: String = sms.chars().take_while(char::is_ascii_digit).collect();
    let body = format!(r#"{{"code": "{code}"}}"#);
    let path = format!("/v1/verifications/{id}/check");
    let reply = client.request("POST", &path, &headers, Some(&body)).await.map_err(|e| e.to_string())?;
    println!("POST {path} (the code from the SMS) -> {} {}", reply.status, reply.body);
    if reply.json()["status"] != "approved" {
        return Err("the code was not approved".into());
    }
    Ok(())
}

/// What the curl commands above do, done here: send, then poll until the receipt is in.
async fn round_trip(door: &Door) -> Result<(), String> {
    let auth = format!("Bearer {DEMO_API_KEY}");
    let mut client = door.connect().await?;
    let body = r#"{"to": "+447700900123", "text": "Hello from otpgate"}"#;
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let reply = client.request("POST", "/v1/messages", &headers, Some(body)).await.map_err(|e| e.to_string())?;
    println!("POST /v1/messages -> {} {}", reply.status, reply.body);
    let id = reply.json()["id"].as_str().map(str::to_string).ok_or("no id in the answer")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply = client.request("GET", &format!("/v1/messages/{id}"), &headers[..1], None).await.map_err(|e| e.to_string())?;
        if reply.json()["status"] == "delivered" {
            println!("GET /v1/messages/{id} -> {} {}", reply.status, reply.body);
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("not delivered in time: {}", reply.body));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
