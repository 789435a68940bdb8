//! A webhook receiver over real HTTP on loopback: records every request it is sent and answers
//! as a test tells it (a status, a hang, a slow answer), and can stop listening and come back
//! on the same port, as a receiver that goes down and recovers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Answer(u16),
    /// Never answers (the sender's timeout ends the attempt).
    Hang,
    /// Answers 204 after this long.
    Slow(Duration),
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
    /// What the receiver answered (0: it hung).
    pub status: u16,
    pub method: String,
    /// The path and query asked for.
    pub target: String,
}

impl Seen {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// Verifies with our verifier (written from the specification's text) under `secret`.
    pub fn verifies(&self, secret: &str) -> bool {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        otpgate::webhook::sign::verify(secret, Some(&self.id), Some(&self.timestamp), Some(&self.signature), self.body.as_bytes(), now, 300)
            .is_ok()
    }
}

struct Shared {
    mode: Mutex<Mode>,
    seen: Mutex<Vec<Seen>>,
}

pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    /// Serves HTTPS with this config when set.
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Receiver {
    pub async fn start(mode: Mode) -> Receiver {
        Receiver::serving(mode, None).await
    }

    /// An HTTPS receiver presenting the certificate in `tls`.
    pub async fn start_tls(mode: Mode, tls: Arc<rustls::ServerConfig>) -> Receiver {
        Receiver::serving(mode, Some(tls)).await
    }

    async fn serving(mode: Mode, tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared { mode: Mutex::new(mode), seen: Mutex::new(Vec::new()) });
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, shared.clone(), tls.clone(), stop.clone()));
        Receiver { addr, shared, stop, tls }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/events", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Requests answered 2xx.
    pub fn taken(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| (200..300).contains(&s.status)).collect()
    }

    /// Waits until `n` requests were answered 2xx, or `limit` passes.
    pub async fn wait_taken(&self, n: usize, limit: Duration) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let taken = self.taken();
            if taken.len() >= n || tokio::time::Instant::now() >= deadline {
                return taken;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops listening and drops every connection: attempts meet "connection refused".
    pub fn down(&mut self) {
        self.stop.cancel();
    }

    /// Listens again on the same port.
    pub async fn up(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("the port is free again");
        self.stop = CancellationToken::new();
        tokio::spawn(serve(listener, self.shared.clone(), self.tls.clone(), self.stop.clone()));
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, tls: Option<Arc<rustls::ServerConfig>>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
            _ = stop.cancelled() => return,
        };
        let (shared, stop) = (shared.clone(), stop.clone());
        match tls.clone() {
            None => drop(tokio::spawn(connection(stream, shared, stop))),
            Some(config) => drop(tokio::spawn(async move {
                // A client that refuses our certificate ends the handshake: nothing to serve.
                if let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
                    connection(stream, shared, stop).await;
                }
            })),
        }
    }
}

/// Serves one connection's requests.
async fn connection<S>(stream: S, shared: Arc<Shared>, stop: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let shared = shared.clone();
        async move {
            let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let (id, timestamp, signature) = (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
            let method = request.method().to_string();
            let target = request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
            let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let mode = *shared.mode.lock().unwrap();
            let status = match mode {
                Mode::Answer(status) => status,
                Mode::Slow(_) => 204,
                Mode::Hang => 0,
            };
            let body = String::from_utf8_lossy(&body).into_owned();
            shared.seen.lock().unwrap().push(Seen { id, timestamp, signature, body, status, method, target });
            match mode {
                Mode::Hang => std::future::pending::<()>().await,
                Mode::Slow(delay) => tokio::time::sleep(delay).await,
                Mode::Answer(_) => {}
            }
            let answer = hyper::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap();
            Ok::<_, Infallible>(answer)
        }
    });
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        _ = stop.cancelled() => {}
    }
}

/// A certificate authority of its own and a server config presenting a certificate it issued
/// for localhost and 127.0.0.1: (the CA's PEM, the config).
pub fn tls_server() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Each authority its own name: another one is then an unknown issuer, not a bad signature.
    ca_params.distinguished_name.push(DnType::CommonName, format!("otpgate test CA {}", rand::random::<u64>()));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(vec![cert.der().clone()], private).unwrap();
    (ca.pem(), Arc::new(config))
}
