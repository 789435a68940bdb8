//! `otpgate demo`: the whole gateway on one machine with nothing external.
//!
//! Two simulated carrier SMSCs ("alpha" checks credentials, "beta" accepts any) listen on loopback;
//! the daemon binds to both with a built-in config; every SMS the carriers receive is printed.
//! Until the HTTP intake exists, the demo sends one message through each carrier itself so the
//! full path (submit_sm → submit_sm_resp → delivery receipt) is visible.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::daemon::Daemon;
use crate::sim::{SimConfig, SmscSim};
use crate::smpp::{OutboundSms, SubmitOutcome};

/// Credentials the "alpha" simulator insists on, written into the demo config.
const ALPHA_SYSTEM_ID: &str = "otpgate";
const ALPHA_PASSWORD: &str = "demo1234";

/// The demo's config, with the simulators' ports filled in.
pub fn demo_config(alpha: SocketAddr, beta: SocketAddr, data_dir: &Path) -> String {
    format!(
        r#"
[server]
http_listen = "127.0.0.1:8080"
metrics_listen = "127.0.0.1:9898"
data_dir = {data_dir:?}

[[carriers]]
name = "alpha"
host = "{alpha_ip}"
port = {alpha_port}
system_id = "{ALPHA_SYSTEM_ID}"
password = "{ALPHA_PASSWORD}"
window = 64
enquire_link_interval = "30s"
response_timeout = "5s"
reconnect_min = "500ms"
reconnect_max = "10s"
source_addr = "Acme"

[[carriers]]
name = "beta"
host = "{beta_ip}"
port = {beta_port}
system_id = "otpgate"
password = "beta"
bind = "transmitter_receiver"
sessions = 2
source_addr = "12345"
"#,
        data_dir = data_dir.display().to_string(),
        alpha_ip = alpha.ip(),
        alpha_port = alpha.port(),
        beta_ip = beta.ip(),
        beta_port = beta.port(),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start a simulated carrier: {0}")]
    Simulator(std::io::Error),
    #[error("built-in demo config is invalid: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("carriers did not bind within {0:?}")]
    BindTimeout(Duration),
}

/// Runs the demo until Ctrl-C (or, with `once`, until the sample messages' receipts are in).
pub async fn run(once: bool) -> Result<(), DemoError> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let alpha_sim = SmscSim::start(
        loopback,
        SimConfig {
            name: "alpha".into(),
            system_id: Some(ALPHA_SYSTEM_ID.into()),
            password: Some(ALPHA_PASSWORD.into()),
            ..SimConfig::default()
        },
    )
    .await
    .map_err(DemoError::Simulator)?;
    let beta_sim = SmscSim::start(loopback, SimConfig { name: "beta".into(), ..SimConfig::default() })
        .await
        .map_err(DemoError::Simulator)?;
    for sim in [&alpha_sim, &beta_sim] {
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
    println!("simulated carrier alpha on {} (checks credentials)", alpha_sim.addr());
    println!("simulated carrier beta  on {} (transmitter+receiver, 2 sessions)", beta_sim.addr());

    let data_dir = std::env::temp_dir().join("otpgate-demo");
    let text = demo_config(alpha_sim.addr(), beta_sim.addr(), &data_dir);
    let config = Config::from_toml(&text, Path::new("<built-in demo config>"))?;
    print!("{}", config.summary());

    let (daemon, mut receipts) = Daemon::start(&config);
    let bind_limit = Duration::from_secs(10);
    for carrier in daemon.carriers() {
        let wanted = carrier.config().sessions;
        if !carrier.wait_bound(wanted, bind_limit).await {
            return Err(DemoError::BindTimeout(bind_limit));
        }
        println!("carrier {}: {wanted} submit session(s) bound", carrier.name());
    }

    for carrier in daemon.carriers() {
        let sms = OutboundSms {
            to: "+447700900123".into(),
            from: None,
            text: format!("Hello from otpgate via {}", carrier.name()),
            deadline: Some(std::time::SystemTime::now() + Duration::from_secs(300)),
        };
        match carrier.submit(&sms).await {
            SubmitOutcome::Accepted { message_id } => {
                println!("carrier {}: submit_sm accepted, message_id {message_id}", carrier.name())
            }
            other => println!("carrier {}: submit_sm not accepted: {other:?}", carrier.name()),
        }
    }
    let mut seen = 0;
    let wait_for_ctrl_c = async {
        if once {
            std::future::pending::<()>().await;
        }
        let _ = tokio::signal::ctrl_c().await;
    };
    tokio::pin!(wait_for_ctrl_c);
    if !once {
        println!("running; press Ctrl-C to stop");
    }
    loop {
        tokio::select! {
            event = receipts.recv() => match event {
                Some(event) => {
                    seen += 1;
                    match event.receipt {
                        Ok(r) => println!("receipt from {}: message_id {} state {}", event.carrier, r.message_id, r.state.as_str()),
                        Err(e) => println!("unreadable receipt from {}: {e}", event.carrier),
                    }
                    if once && seen == daemon.carriers().len() {
                        break;
                    }
                }
                None => break,
            },
            _ = &mut wait_for_ctrl_c => break,
            _ = tokio::time::sleep(Duration::from_secs(10)), if once => {
                println!("receipts did not arrive in time");
                break;
            }
        }
    }
    let clean = daemon.shutdown(config.server.shutdown_timeout).await;
    println!("stopped ({})", if clean { "all sessions unbound" } else { "shutdown timed out" });
    Ok(())
}
