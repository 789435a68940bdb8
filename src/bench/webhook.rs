//! `otpgate bench --webhook`: the message path's end-to-end rate without a webhook endpoint and
//! then, on the same warm daemon, with one taking every event (added by a SIGHUP reload), and
//! whether every event arrived signed. The receiver runs in this process, on the same cores.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{BenchError, BenchOptions, Phase, drive, phase};

const SECRET: &str = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQtMzJieXRlcw==";

/// What the receiver saw.
#[derive(Default)]
struct Received {
    ids: HashSet<String>,
    requests: usize,
    bad_signatures: usize,
    last: Option<Instant>,
    /// How long after its change each event was taken (its body's `timestamp` to now).
    lags: Vec<Duration>,
}

/// The comparison, for the table.
pub(super) struct Comparison {
    pub without: Phase,
    pub with: Phase,
    pub events: usize,
    pub expected: usize,
    pub requests: usize,
    pub bad_signatures: usize,
    /// From the last receipt matched to the last event taken.
    pub lag: Duration,
    /// The open loop at a fixed rate with the endpoint: the offered rate, HTTP latencies, and
    /// how long after its change each of its events was taken (both sorted).
    pub paced_rate: u32,
    pub paced_http: Vec<Duration>,
    pub paced_lags: Vec<Duration>,
}

async fn receive(listener: TcpListener, seen: Arc<Mutex<Received>>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
            _ = stop.cancelled() => return,
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let seen = seen.clone();
                async move {
                    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
                    let (id, timestamp, signature) = (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
                    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    let verified =
                        crate::webhook::sign::verify(SECRET, id.as_deref(), timestamp.as_deref(), signature.as_deref(), &body, now, 300);
                    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    seen.requests += 1;
                    seen.bad_signatures += usize::from(verified.is_err());
                    seen.ids.extend(id);
                    seen.last = Some(Instant::now());
                    let changed = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|b| humantime::parse_rfc3339(b["timestamp"].as_str()?).ok());
                    if let Some(lag) = changed.and_then(|at| SystemTime::now().duration_since(at).ok()) {
                        seen.lags.push(lag);
                    }
                    Ok::<_, Infallible>(hyper::Response::builder().status(204).body(Full::new(Bytes::new())).unwrap_or_default())
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Runs the phases against the daemon `pid` whose config file is `config`: `options.messages`
/// closed-loop without and with the endpoint, then `options.rate` for `options.open_loop_seconds`.
pub(super) async fn compare(
    http: SocketAddr,
    metrics: SocketAddr,
    pid: u32,
    config: &Path,
    options: &BenchOptions,
) -> Result<Comparison, BenchError> {
    let (count, concurrency, paced_rate) = (options.messages, options.concurrency, options.rate);
    let setup = |e: std::io::Error| BenchError::Setup(e.to_string());
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(setup)?;
    let url = format!("http://{}/events", listener.local_addr().map_err(setup)?);
    let seen = Arc::new(Mutex::new(Received::default()));
    let stop = CancellationToken::new();
    tokio::spawn(receive(listener, seen.clone(), stop.clone()));

    let without = phase(http.into(), metrics, pid, count, concurrency, "plain").await;
    let mut text = std::fs::read_to_string(config).map_err(setup)?;
    text.push_str(&format!("\n[[webhooks]]\nname = \"bench\"\nurl = {url:?}\nsecret = {SECRET:?}\n"));
    std::fs::write(config, text).map_err(setup)?;
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(pid as i32, libc::SIGHUP);
    }
    let until = Instant::now() + Duration::from_secs(10);
    // The sender exports its series as it starts.
    while !super::exported(metrics, "otpgate_webhook_dead_total{webhook=\"bench\"}").await {
        if Instant::now() > until {
            return Err(BenchError::Setup("the webhook endpoint did not start after SIGHUP".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let with = phase(http.into(), metrics, pid, count, concurrency, "hooked").await;
    let receipts_done = Instant::now();
    let expected = 2 * with.accepted;
    let until = Instant::now() + Duration::from_secs(300);
    while seen.lock().unwrap_or_else(|p| p.into_inner()).ids.len() < expected && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lag =
        seen.lock().unwrap_or_else(|p| p.into_inner()).last.map_or(Duration::ZERO, |last| last.saturating_duration_since(receipts_done));

    // Below saturation: a fixed offered rate, the endpoint taking every event.
    let before = seen.lock().unwrap_or_else(|p| p.into_inner()).lags.len();
    let paced = drive(http, paced_rate as usize * options.open_loop_seconds as usize, concurrency.max(64), Some(paced_rate), "paced").await;
    let expected = expected + 2 * paced.accepted.len();
    let until = Instant::now() + Duration::from_secs(120);
    while seen.lock().unwrap_or_else(|p| p.into_inner()).ids.len() < expected && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    let mut paced_lags = seen.lags[before.min(seen.lags.len())..].to_vec();
    paced_lags.sort();
    let mut paced_http = paced.latencies;
    paced_http.sort();
    Ok(Comparison {
        without,
        with,
        events: seen.ids.len(),
        expected,
        requests: seen.requests,
        bad_signatures: seen.bad_signatures,
        lag,
        paced_rate,
        paced_http,
        paced_lags,
    })
}
