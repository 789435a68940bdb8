//! Encrypted transport over real TLS on loopback, with certificates made at test time: SMPP over
//! TLS to our simulator and to node-smpp's server (Node's TLS, OpenSSL: a third-party stack),
//! mutual TLS, every refusal with its reason, HTTPS for the intake and the metrics (curl as the
//! client), a certificate swapped by SIGHUP under an open keep-alive connection, and what
//! `check-config` says about each file.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{API_KEY, Gateway, NodeSmsc, bearer, code_sent, gateway_config, post_message, wait_status};
use otpgate::sim::{SimConfig, SmscSim};
use otpgate::tls::ServerTls;
use otpgate::tls::throwaway::{Authority, Usage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DAY: Duration = Duration::from_secs(86_400);

/// An authority and the files it issued, in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: Authority,
    ca_file: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        Pki::named("otpgate test CA")
    }

    fn named(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::new(name).unwrap();
        let ca_file = dir.path().join("ca.pem");
        ca.write_cert(&ca_file).unwrap();
        Pki { dir, ca, ca_file }
    }

    /// A certificate for localhost and 127.0.0.1, valid between the two offsets from now.
    fn issue(&self, stem: &str, usage: Usage, from: i64, until: i64) -> (PathBuf, PathBuf) {
        let now = SystemTime::now();
        let at = |days: i64| match days >= 0 {
            true => now + DAY * days as u32,
            false => now - DAY * (-days) as u32,
        };
        let issued = self.ca.issue_between(&["localhost", "127.0.0.1"], usage, at(from), at(until)).unwrap();
        issued.write(self.dir.path(), stem).unwrap()
    }

    fn server(&self, stem: &str) -> (PathBuf, PathBuf) {
        self.issue(stem, Usage::Server, -1, 365)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A carrier's TLS keys trusting `pki`, checking the name `name`.
fn tls_lines(pki: &Pki, name: &str) -> String {
    format!("tls = true\ntls_ca_file = \"{}\"\ntls_server_name = \"{name}\"", pki.ca_file.display())
}

async fn tls_sim(cert: &Path, key: &Path, client_ca: Option<&Path>) -> SmscSim {
    let tls = ServerTls::new(cert, key, client_ca).expect("simulator certificate");
    common::sim(SimConfig { tls: Some(tls), ..SimConfig::default() }).await
}

/// The whole `/metrics` page.
async fn metrics_page(addr: SocketAddr) -> String {
    let mut client = otpgate::http::client::Client::connect(addr).await.expect("metrics listener");
    client.request("GET", "/metrics", &[], None).await.expect("metrics").body
}

/// The value of the series whose line contains every one of `parts`, or 0.
fn series(page: &str, parts: &[&str]) -> f64 {
    page.lines()
        .filter(|line| !line.starts_with('#') && parts.iter().all(|p| line.contains(p)))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn smpp_over_tls_to_our_simulator_submits_takes_receipts_keeps_alive_and_reconnects() {
    let pki = Pki::new();
    let (cert, key) = pki.server("smsc");
    let sim = tls_sim(&cert, &key, None).await;
    let extra = format!("{}\nwindow = 4\nenquire_link_interval = \"150ms\"", tls_lines(&pki, "localhost"));
    let (gw, mut client) = Gateway::bound(&[sim.addr()], &extra).await;

    let mut ids = Vec::new();
    for i in 0..24 {
        let reply = post_message(&mut client, API_KEY, &format!(r#"{{"to": "+4915100000{i:03}", "text": "over tls {i}"}}"#), None).await;
        assert_eq!(reply.status, 202, "{}", reply.body);
        ids.push(reply.json()["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        wait_status(&mut client, id, "delivered", Duration::from_secs(10)).await;
    }
    let stats = sim.stats();
    assert_eq!(stats.submits.len(), 24);
    assert!(stats.max_outstanding <= 4, "the window holds over TLS: {} unanswered at once", stats.max_outstanding);
    assert!(sim.wait_until(Duration::from_secs(3), |s| s.enquire_links >= 2).await, "enquire_link over TLS");
    assert_eq!(stats.tls_failures, 0);

    // The TLS peer drops every connection: the carrier binds again, over TLS, and sends on.
    let binds = stats.binds.len();
    sim.drop_connections();
    assert!(sim.wait_until(Duration::from_secs(5), |s| s.binds.len() > binds).await, "rebinds after the drop");
    gw.wait_bound().await;
    let reply = post_message(&mut client, API_KEY, r#"{"to": "+4915100000999", "text": "after the drop"}"#, None).await;
    wait_status(&mut client, reply.json()["id"].as_str().unwrap(), "delivered", Duration::from_secs(10)).await;

    // The trust anchor's expiry is exported for the alert rules.
    let page = metrics_page(gw.daemon.metrics_addr()).await;
    let expiry = series(&page, &["otpgate_tls_certificate_expiry_timestamp_seconds{", "use=\"carrier:alpha\"", "ca.pem"]);
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(expiry > now + 300.0 * 86_400.0, "CA expiry exported: {expiry}\n{page}");
}

#[tokio::test]
async fn node_smpp_over_openssl_tls_takes_our_submits_and_its_receipts_reach_us() {
    let pki = Pki::new();
    let (cert, key) = pki.server("node");
    let options = serde_json::json!({"tls_cert": cert, "tls_key": key}).to_string();
    let Some(node) = NodeSmsc::start(&options) else { return };
    let (_gw, mut client) = Gateway::bound(&[node.addr], &tls_lines(&pki, "localhost")).await;
    let reply = post_message(&mut client, API_KEY, r#"{"to": "+4915100000123", "text": "via node over tls"}"#, None).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    wait_status(&mut client, reply.json()["id"].as_str().unwrap(), "delivered", Duration::from_secs(10)).await;
    let connection = &node.events("tls_connection")[0];
    assert!(matches!(connection["protocol"].as_str(), Some("TLSv1.3" | "TLSv1.2")), "{connection}");
    assert_eq!(node.events("submit_sm")[0]["text"], "via node over tls");
    assert_eq!(node.wait_for("deliver_sm_resp", 1, Duration::from_secs(5)).await[0]["status"], 0);
}

#[tokio::test]
async fn mutual_tls_binds_with_our_client_certificate_and_is_refused_without_one() {
    let pki = Pki::new();
    let (cert, key) = pki.server("node");
    let (client_cert, client_key) = pki.issue("client", Usage::Client, -1, 90);
    let options = serde_json::json!({"tls_cert": cert, "tls_key": key, "tls_client_ca": pki.ca_file}).to_string();
    let Some(node) = NodeSmsc::start(&options) else { return };
    let identity = format!("tls_client_cert = \"{}\"\ntls_client_key = \"{}\"", client_cert.display(), client_key.display());
    let dir = tempfile::tempdir().unwrap();
    let config = gateway_config(&[("beta", node.addr)], dir.path(), &tls_lines(&pki, "localhost"))
        .carrier("alpha", node.addr, &identity)
        .build()
        .unwrap();
    let daemon = otpgate::daemon::Daemon::start(&config).await.unwrap();
    let alpha = daemon.carrier("alpha").unwrap();
    assert!(alpha.wait_bound(1, Duration::from_secs(5)).await, "binds with a client certificate");
    let seen = node.wait_for("tls_connection", 1, Duration::from_secs(5)).await;
    assert!(seen.iter().any(|c| c["authorized"] == true), "node-smpp verified our client certificate: {seen:?}");

    let beta = daemon.carrier("beta").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(beta.bound_sessions(), 0, "no client certificate, no bind");
    let why = beta.last_bind_error().expect("a reason");
    assert!(why.contains("TLS") && why.contains("client certificate"), "{why}");
    let page = metrics_page(daemon.metrics_addr()).await;
    assert!(series(&page, &["otpgate_reconnects_total{", "carrier=\"beta\"", "reason=\"tls_client_certificate\""]) >= 1.0, "{page}");
    assert!(daemon.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn every_tls_refusal_is_a_failed_bind_with_its_reason_and_the_backoff_holds() {
    let pki = Pki::new();
    let (good_cert, good_key) = pki.server("good");
    let (expired_cert, expired_key) = pki.issue("expired", Usage::Server, -30, -1);
    let stranger = Pki::named("someone else's CA");
    let (strange_cert, strange_key) = stranger.server("stranger");

    let wrong_name = tls_sim(&good_cert, &good_key, None).await;
    let unknown_ca = tls_sim(&strange_cert, &strange_key, None).await;
    // Our simulator refuses to load an expired certificate: node-smpp serves it.
    let expired_options = serde_json::json!({"tls_cert": expired_cert, "tls_key": expired_key}).to_string();
    let Some(expired) = NodeSmsc::start(&expired_options) else { return };
    let plain = common::sim(SimConfig::default()).await;
    let old_options = serde_json::json!({"tls_cert": good_cert, "tls_key": good_key, "tls_max_version": "TLSv1.1"}).to_string();
    let old_tls = NodeSmsc::start(&old_options);

    let mut carriers = vec![("issuer", unknown_ca.addr()), ("expired", expired.addr), ("plain", plain.addr())];
    if let Some(old) = &old_tls {
        carriers.push(("old", old.addr));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = gateway_config(&carriers, dir.path(), &tls_lines(&pki, "localhost"))
        .carrier("name", wrong_name.addr(), "tls_server_name = \"smsc.example.net\"")
        .build()
        .unwrap();
    let daemon = otpgate::daemon::Daemon::start(&config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let expected = [
        ("name", "tls_name_mismatch", "does not carry the expected name"),
        ("issuer", "tls_unknown_issuer", "authority we do not trust"),
        ("expired", "tls_expired", "has expired"),
        ("plain", "tls_closed", "plain-TCP"),
        ("old", "tls_protocol_version", "TLS 1.2 and 1.3 only"),
    ];
    let page = metrics_page(daemon.metrics_addr()).await;
    let mut ready = otpgate::http::client::Client::connect(daemon.http_addr()).await.unwrap();
    let readyz = ready.request("GET", "/readyz", &[], None).await.unwrap().json();
    for (carrier, label, words) in expected.iter().filter(|(c, ..)| *c == "name" || carriers.iter().any(|(n, _)| n == c)) {
        let handle = daemon.carrier(carrier).unwrap();
        assert_eq!(handle.bound_sessions(), 0, "{carrier}: never bound, never plain TCP");
        let why = handle.last_bind_error().unwrap_or_default();
        assert!(why.contains("TLS handshake") && why.contains(words), "{carrier}: {why}");
        assert_eq!(readyz["carriers_down"][carrier], why.as_str(), "/readyz tells operators why");
        let attempts = series(&page, &["otpgate_reconnects_total{", &format!("carrier=\"{carrier}\""), &format!("reason=\"{label}\"")]);
        // reconnect_min 50ms doubling to 500ms: a handful in 1.5 s, never a tight loop.
        assert!((2.0..=12.0).contains(&attempts), "{carrier}: {attempts} attempts labelled {label}\n{page}");
    }
    // The plain simulator saw a ClientHello, never a bind.
    assert!(plain.stats().binds.is_empty());
    assert!(wrong_name.stats().binds.is_empty() && expired.events("bind_transceiver").is_empty());
    assert!(daemon.shutdown(Duration::from_secs(5)).await);
}

/// One HTTP/1.1 request over an open TLS stream; the response's status and body.
async fn https_request<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S, path: &str) -> (u16, String) {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if body.len() >= length {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, body[..length].to_string());
            }
        }
    }
}

/// A TLS client trusting `ca`, connected to `addr` as "localhost": the stream and the
/// certificate the server presented.
async fn tls_connect(ca: &Path, addr: SocketAddr) -> (tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Vec<u8>) {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS handshake");
    let presented = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (stream, presented)
}

/// curl run without blocking the runtime the daemon under test shares.
async fn curl(args: &[&str]) -> std::process::Output {
    let run = tokio::process::Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output().await;
    run.expect("curl runs (.ci/run installs it)")
}

#[tokio::test]
async fn https_intake_and_metrics_serve_curl_and_plain_http_gets_a_clear_refusal() {
    let pki = Pki::new();
    let (cert, key) = pki.server("https");
    let sim = common::sim(SimConfig::default()).await;
    let server = format!("tls_cert = \"{}\"\ntls_key = \"{}\"\nmetrics_tls = true", cert.display(), key.display());
    let gw = Gateway::setup(&[sim.addr()], "").server(&server).start().await;
    gw.wait_bound().await;
    let port = gw.daemon.http_addr().port();
    let base = format!("https://localhost:{port}");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let auth = format!("Authorization: {}", bearer(API_KEY));
    let ca = pki.ca_file.to_str().unwrap();

    // curl (its own TLS stack) starts and checks a verification over HTTPS.
    let post = async |path: &str, body: &str| {
        let url = format!("{base}{path}");
        let out =
            curl(&["--cacert", ca, "--resolve", &resolve, "-H", &auth, "-H", "Content-Type: application/json", "-d", body, &url]).await;
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_else(|_| panic!("{out:?}"))
    };
    let created = post("/v1/verifications", r#"{"to": "+4915100000777"}"#).await;
    let id = created["id"].as_str().unwrap_or_else(|| panic!("{created}"));
    let code = code_sent(&sim, "+4915100000777", 1).await;
    let checked = post(&format!("/v1/verifications/{id}/check"), &format!(r#"{{"code": "{code}"}}"#)).await;
    assert_eq!(checked["status"], "approved", "{checked}");

    // Without the authority, curl refuses our certificate: nothing is sent in the clear instead.
    let out = curl(&["--resolve", &resolve, &format!("{base}/healthz")]).await;
    assert!(!out.status.success(), "an untrusted certificate must fail: {out:?}");

    // Plain HTTP to the HTTPS port: a plain 400 that says why, and the listener lives on.
    let mut plain = otpgate::http::client::Client::connect(gw.daemon.http_addr()).await.unwrap();
    let reply = plain.request("GET", "/healthz", &[], None).await.unwrap();
    assert_eq!((reply.status, reply.json()["error"]["code"].as_str()), (400, Some("https_required")), "{}", reply.body);
    // A client that connects and sends garbage that looks like TLS is just closed.
    let mut junk = tokio::net::TcpStream::connect(gw.daemon.http_addr()).await.unwrap();
    junk.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), junk.read_to_end(&mut rest)).await.expect("closed, not hung");

    // Prometheus scrapes over HTTPS too, and the certificate's expiry is on the page.
    let metrics_port = gw.daemon.metrics_addr().port();
    let out = curl(&[
        "--cacert",
        ca,
        "--resolve",
        &format!("localhost:{metrics_port}:127.0.0.1"),
        &format!("https://localhost:{metrics_port}/metrics"),
    ])
    .await;
    let page = String::from_utf8_lossy(&out.stdout);
    let expiry = series(&page, &["otpgate_tls_certificate_expiry_timestamp_seconds{", "use=\"https\""]);
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(expiry > now + 300.0 * 86_400.0 && expiry < now + 366.0 * 86_400.0, "{expiry}\n{page}");
    let out = curl(&["--cacert", ca, &format!("http://127.0.0.1:{metrics_port}/metrics")]).await;
    assert!(!String::from_utf8_lossy(&out.stdout).contains("otpgate_"), "metrics are not served in the clear");
}

#[tokio::test]
async fn sighup_swaps_the_https_certificate_under_an_open_keep_alive_connection_and_refuses_a_bad_pair() {
    let pki = Pki::new();
    let (cert, key) = pki.server("https");
    let sim = common::sim(SimConfig::default()).await;
    let server = format!("[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n", cert.display(), key.display());
    let files = common::DaemonFiles::new(&[sim.addr()], "", "");
    // The [server] keys DaemonFiles writes and ours, in one section.
    let toml = std::fs::read_to_string(&files.config).unwrap().replacen("[server]\n", &server, 1);
    std::fs::write(&files.config, toml).unwrap();
    let log = files.dir.path().join("otpgate.log");
    let mut child = common::spawn_daemon(&files.config, Some(&log), &[]);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (mut kept, first) = loop {
        if tokio::net::TcpStream::connect(files.http).await.is_ok() {
            break tls_connect(&pki.ca_file, files.http).await;
        }
        assert!(tokio::time::Instant::now() < deadline, "daemon never listened: {}", std::fs::read_to_string(&log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(https_request(&mut kept, "/healthz").await.0, 200);

    // A renewal replaces the files in place; SIGHUP reads them again.
    let renewed = pki.ca.issue(&["localhost"], 200 * DAY).unwrap();
    renewed.write(pki.dir.path(), "https").unwrap();
    common::signal(&child, "HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        let (_, presented) = tls_connect(&pki.ca_file, files.http).await;
        if presented != first {
            break presented;
        }
        assert!(tokio::time::Instant::now() < deadline, "the renewed certificate never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The connection opened before the reload is still served.
    assert_eq!(https_request(&mut kept, "/healthz").await.0, 200, "keep-alive connection survives the reload");

    // A key that belongs to another certificate: refused and logged, the renewed pair stays.
    std::fs::copy(pki.server("other").1, &key).unwrap();
    common::signal(&child, "HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut fresh, presented) = tls_connect(&pki.ca_file, files.http).await;
    assert_eq!(presented, second, "the pair in use stays after a bad one");
    assert_eq!(https_request(&mut fresh, "/readyz").await.0, 200);
    assert_eq!(https_request(&mut kept, "/healthz").await.0, 200);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("does not belong to the certificate"), "{logged}");
    assert!(!logged.contains("PRIVATE KEY"), "no key material in the log");

    common::signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}

/// `otpgate check-config` on `toml`: (succeeded, stdout and stderr).
fn check_config(dir: &Path, toml: &str) -> (bool, String) {
    let path = dir.join("check.toml");
    std::fs::write(&path, toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_otpgate")).args(["check-config", "--config"]).arg(&path).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn check_config_reads_every_tls_file_and_prints_what_it_found() {
    let pki = Pki::new();
    let (server_cert, server_key) = pki.server("https");
    let (client_cert, client_key) = pki.issue("client", Usage::Client, -1, 10);
    let (expired_cert, expired_key) = pki.issue("expired", Usage::Client, -30, -1);
    let data = pki.path("data");
    let addr: SocketAddr = "127.0.0.1:3550".parse().unwrap();
    let carrier = |cert: &Path, key: &Path| {
        format!(
            "{}\ntls_client_cert = \"{}\"\ntls_client_key = \"{}\"",
            tls_lines(&pki, "smpp.carrier.example"),
            cert.display(),
            key.display()
        )
    };
    let https = format!("tls_cert = \"{}\"\ntls_key = \"{}\"\nmetrics_tls = true", server_cert.display(), server_key.display());
    let good = gateway_config(&[("alpha", addr)], &data, &carrier(&client_cert, &client_key)).server(&https).to_toml();
    let (ok, out) = check_config(pki.dir.path(), &good);
    assert!(ok, "{out}");
    for expected in [
        "listeners: https",
        "metrics https",
        "tls: 1.2/1.3, certificate must name \"smpp.carrier.example\"",
        "ca.pem: CN=otpgate test CA expires",
        "client.pem: CN=localhost expires",
        "WARNING: expires within 30 days",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(!out.contains("BEGIN"), "no PEM in the output:\n{out}");

    let expired = gateway_config(&[("alpha", addr)], &data, &carrier(&expired_cert, &expired_key)).to_toml();
    let (ok, out) = check_config(pki.dir.path(), &expired);
    assert!(!ok && out.contains("carriers[0].tls") && out.contains("expired on"), "{out}");

    let mismatched = gateway_config(&[("alpha", addr)], &data, &carrier(&client_cert, &server_key)).to_toml();
    let (ok, out) = check_config(pki.dir.path(), &mismatched);
    assert!(!ok && out.contains("does not belong to the certificate"), "{out}");

    let missing = gateway_config(&[("alpha", addr)], &data, "")
        .server(&format!("tls_cert = \"{}\"\ntls_key = \"{}\"", pki.path("nope.pem").display(), server_key.display()))
        .to_toml();
    let (ok, out) = check_config(pki.dir.path(), &missing);
    assert!(!ok && out.contains("server.tls_cert") && out.contains("nope.pem: cannot read"), "{out}");

    let stray = gateway_config(&[("alpha", addr)], &data, &format!("tls_ca_file = \"{}\"", pki.ca_file.display())).to_toml();
    let (ok, out) = check_config(pki.dir.path(), &stray);
    assert!(!ok && out.contains("tls_ca_file") && out.contains("add tls = true"), "{out}");
}

#[test]
fn the_demo_runs_every_link_over_tls_with_its_own_authority() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_otpgate"))
        .args(["demo", "--once", "--tls", "--http", "127.0.0.1:0"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for expected in ["listeners: https", "tls: 1.2/1.3, certificate must name \"localhost\"", "--cacert ", "-X POST https://127.0.0.1:"] {
        assert!(stdout.contains(expected), "missing {expected:?}: {stdout}");
    }
    assert!(stdout.contains(r#""status":"delivered""#) && stdout.contains(r#""status":"approved"}"#), "{stdout}");
}

#[tokio::test]
async fn smsc_sim_command_serves_smpp_over_tls() {
    use std::io::BufRead;
    let pki = Pki::new();
    let (cert, key) = pki.server("sim");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_otpgate"))
        .args(["smsc-sim", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("smsc-sim listening on ")
        .and_then(|rest| rest.strip_suffix(" (SMPP over TLS)"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let running = common::start_bound(common::carrier_config(addr, &tls_lines(&pki, "localhost"))).await;
    let outcome = tokio::time::timeout(Duration::from_secs(5), running.carrier.submit(&common::sms("over tls"))).await;
    assert!(matches!(outcome, Ok(otpgate::smpp::SubmitOutcome::Accepted { .. })), "{outcome:?}");
    running.shutdown.cancel();
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn bench_tls_compares_plain_and_encrypted_links_on_fresh_daemons() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_otpgate"))
        .args(["bench", "--tls", "--messages", "400", "--concurrency", "8"])
        .env("RUST_LOG", "error")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| closed loop of 400 (concurrency 8): end to end / s, plain / every link over TLS |"), "{stdout}");
    assert!(stdout.contains("| TLS: protocol the SMSC links negotiated | TLSv1_3 |"), "{stdout}");
}

/// Runs openssl with `args` in `dir` (a third party's certificates: v1 when made by `x509 -req`).
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs (.ci/run installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn certificates_and_keys_made_by_openssl_are_read_and_paired() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(
        dir,
        &[&["req", "-x509"][..], &ec, &["-keyout", "ossl-ca.key", "-out", "ossl-ca.pem", "-days", "3650", "-subj", "/CN=Carrier Root CA"]]
            .concat(),
    );
    openssl(dir, &[&["req"][..], &ec, &["-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=otpgate.acme.example"]].concat());
    // x509 -req without extensions: an X.509 v1 certificate, as many carriers' CAs still issue.
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ossl-ca.pem",
            "-CAkey",
            "ossl-ca.key",
            "-CAcreateserial",
            "-out",
            "client.pem",
            "-days",
            "200",
        ],
    );
    let carrier = |key: &str| {
        format!(
            "tls = true\ntls_ca_file = \"{}\"\ntls_client_cert = \"{}\"\ntls_client_key = \"{}\"",
            dir.join("ossl-ca.pem").display(),
            dir.join("client.pem").display(),
            dir.join(key).display()
        )
    };
    let addr: SocketAddr = "127.0.0.1:3550".parse().unwrap();
    let (ok, out) = check_config(dir, &gateway_config(&[("alpha", addr)], &pki.path("data"), &carrier("client.key")).to_toml());
    assert!(ok && out.contains("client.pem: CN=otpgate.acme.example expires"), "{out}");
    let (ok, out) = check_config(dir, &gateway_config(&[("alpha", addr)], &pki.path("data"), &carrier("ossl-ca.key")).to_toml());
    assert!(!ok && out.contains("does not belong to the certificate"), "{out}");
}

#[tokio::test]
async fn a_reload_reads_a_carriers_renewed_client_certificate_for_its_next_connection() {
    let pki = Pki::new();
    let (cert, key) = pki.server("node");
    let options = serde_json::json!({"tls_cert": cert, "tls_key": key, "tls_client_ca": pki.ca_file}).to_string();
    let Some(node) = NodeSmsc::start(&options) else { return };
    // At first the client certificate is one node-smpp does not trust.
    let stranger = Pki::named("someone else's CA");
    let (client_cert, client_key) = stranger.issue("client", Usage::Client, -1, 90);
    let identity = format!("tls_client_cert = \"{}\"\ntls_client_key = \"{}\"", client_cert.display(), client_key.display());
    let dir = tempfile::tempdir().unwrap();
    let config =
        gateway_config(&[("alpha", node.addr)], dir.path(), &format!("{}\n{identity}", tls_lines(&pki, "localhost"))).build().unwrap();
    let daemon = otpgate::daemon::Daemon::start(&config).await.unwrap();
    let alpha = daemon.carrier("alpha").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alpha.bound_sessions(), 0);
    assert!(alpha.last_bind_error().unwrap_or_default().contains("client certificate"), "{:?}", alpha.last_bind_error());

    // The renewal lands in the same files; the config itself is unchanged.
    let renewed = pki.ca.issue_between(&["otpgate"], Usage::Client, SystemTime::now() - DAY, SystemTime::now() + 90 * DAY).unwrap();
    std::fs::write(&client_cert, renewed.cert_pem).unwrap();
    std::fs::write(&client_key, renewed.key_pem).unwrap();
    assert!(daemon.reload(&config).is_empty());
    assert!(alpha.wait_bound(1, Duration::from_secs(5)).await, "binds with the renewed certificate: {:?}", alpha.last_bind_error());
    assert!(daemon.shutdown(Duration::from_secs(5)).await);
}
