//! `otpgate bench --tls`: the closed loop on a daemon with plain links, then the same load on a
//! fresh daemon with every link encrypted: the load generator's HTTPS to the intake and SMPP
//! over TLS to the simulated carriers (the metrics listener stays plain: it is read to count
//! receipts, not measured). Both daemons start empty, so neither inherits the other's store.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use super::{BenchError, BenchOptions, Intake, Phase, bench_config, free_addr, phase, spawn, stop, wait_role};
use crate::sim::{SimConfig, SmscSim};
use crate::tls::ServerTls;
use crate::tls::throwaway::Authority;

/// The comparison, for the table.
pub(super) struct Comparison {
    pub plain: Phase,
    pub tls: Phase,
    /// The TLS version the daemon's SMPP links negotiated, as the carriers saw it.
    pub protocol: String,
}

/// Runs both phases with `options.carriers` simulated carriers each; `plain_sims` are the ones
/// the caller started (plain TCP).
pub(super) async fn compare(work: &Path, plain_sims: &[SmscSim], options: &BenchOptions) -> Result<Comparison, BenchError> {
    let setup = |e: &dyn std::fmt::Display| BenchError::Setup(e.to_string());
    let plain_addrs: Vec<_> = plain_sims.iter().map(SmscSim::addr).collect();
    let plain = run_phase(work, "plain", &plain_addrs, None, options).await?;

    let dir = work.join("tls");
    std::fs::create_dir_all(&dir).map_err(|e| setup(&e))?;
    let authority = Authority::new("otpgate bench CA").map_err(|e| setup(&e))?;
    let ca_file = dir.join("ca.pem");
    authority.write_cert(&ca_file).map_err(|e| setup(&e))?;
    let issued = authority.issue(&["localhost", "127.0.0.1"], Duration::from_secs(86_400)).map_err(|e| setup(&e))?;
    let (cert, key) = issued.write(&dir, "server").map_err(|e| setup(&e))?;
    let serving = ServerTls::new(&cert, &key, None).map_err(|e| setup(&e))?;
    let mut tls_sims = Vec::new();
    for (i, plain) in plain_sims.iter().enumerate() {
        let config = SimConfig { name: format!("tls{i}"), tls: Some(serving.clone()), ..plain.config().clone() };
        tls_sims.push(SmscSim::start("127.0.0.1:0".parse().map_err(|e| setup(&e))?, config).await.map_err(|e| setup(&e))?);
    }
    let tls_addrs: Vec<_> = tls_sims.iter().map(SmscSim::addr).collect();
    let files = TlsFiles { ca: &ca_file, cert: &cert, key: &key };
    let tls = run_phase(work, "tls", &tls_addrs, Some(files), options).await?;
    let protocol = tls_sims.first().and_then(SmscSim::tls_protocol).unwrap_or_else(|| "unknown".into());
    Ok(Comparison { plain, tls, protocol })
}

/// The files of the encrypted phase.
#[derive(Clone, Copy)]
struct TlsFiles<'a> {
    ca: &'a Path,
    cert: &'a Path,
    key: &'a Path,
}

/// A daemon of its own on `carriers`, the closed loop, and the daemon stopped.
async fn run_phase(
    work: &Path,
    name: &str,
    carriers: &[std::net::SocketAddr],
    tls: Option<TlsFiles<'_>>,
    options: &BenchOptions,
) -> Result<Phase, BenchError> {
    let (http, metrics) = (free_addr()?, free_addr()?);
    let mut config = bench_config(carriers, http, metrics, &work.join(format!("data-{name}")), None);
    if let Some(files) = tls {
        let path = |p: &Path| p.display().to_string();
        config = config
            .server(&format!("tls_cert = {:?}\ntls_key = {:?}", path(files.cert), path(files.key)))
            .carrier_defaults(&format!("tls = true\ntls_ca_file = {:?}\ntls_server_name = \"localhost\"", path(files.ca)));
    }
    let file = work.join(format!("{name}.toml"));
    std::fs::write(&file, config.to_toml()).map_err(|e| BenchError::Setup(e.to_string()))?;
    let child: Child = spawn(&file)?;
    let intake = Intake { addr: http, ca_file: tls.map(|f| f.ca.to_path_buf()) };
    wait_role(intake.clone(), "/readyz", None, Duration::from_secs(20)).await?;
    let result = phase(intake, metrics, child.id(), options.messages, options.concurrency, name).await;
    stop(child);
    Ok(result)
}
