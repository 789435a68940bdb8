//! Serving HTTP/1.1 connections with the limits a public listener needs.
//!
//! `axum::serve` has no timeouts and no connection cap: partial headers, unfinished bodies and
//! idle keep-alive connections were held forever (500 slowloris and 2,000 idle connections all
//! held), and at the descriptor limit new clients timed out and a carrier session could not
//! reconnect. Here each connection has a header-read timeout (hyper's: the head of every
//! request, the first or the next on a kept-alive connection, must arrive in time, so it is the
//! idle timeout too), a body timeout (in `read_json`), and the number of connections is capped:
//! past the cap a client gets an immediate 503 and the connection is closed, so descriptors stay
//! for carriers and the store.
//!
//! With TLS (`server.tls_cert`/`tls_key`) every connection is HTTPS: the handshake must end
//! within the header timeout, and a client that speaks plain HTTP to the port gets a plain 400
//! saying so instead of a dead socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::telemetry;
use crate::tls::ServerTls;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Limits of the HTTP listener (`[server]` keys `http_*`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// Whether its connections count in the intake's connection metrics (not the metrics
    /// listener's scrapes).
    pub metered: bool,
}

/// Descriptors kept free of HTTP connections: carrier sessions, the store's files, the metrics
/// listener, logs.
pub const DESCRIPTORS_IN_RESERVE: u64 = 256;

/// Raises the soft descriptor limit to the hard one and returns how many HTTP connections fit
/// beside [`DESCRIPTORS_IN_RESERVE`] (at most `wanted`).
pub fn connections_that_fit(wanted: usize) -> usize {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    let soft = unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return wanted;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    };
    let room = usize::try_from(soft.saturating_sub(DESCRIPTORS_IN_RESERVE)).unwrap_or(usize::MAX).max(1);
    if room < wanted {
        tracing::warn!(
            wanted,
            room,
            descriptors = soft,
            "server.http_max_connections lowered to keep descriptors for carriers and the store"
        );
    }
    wanted.min(room)
}

/// Serves `router` on `listener` (over TLS with `tls`) until `stop`, then lets the connections
/// finish their requests.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, tls: Option<ServerTls>, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if limits.metered {
                metrics::counter!(telemetry::HTTP_CONNECTIONS_REFUSED_TOTAL).increment(1);
            }
            // Over TLS a plain answer would be noise to the client: just close.
            if tls.is_none() {
                connections.spawn(refuse(stream));
            }
            continue;
        };
        let (router, stop, tls) = (router.clone(), stop.clone(), tls.clone());
        connections.spawn(async move {
            let open = limits.metered.then(|| metrics::gauge!(telemetry::HTTP_CONNECTIONS));
            open.iter().for_each(|g| g.increment(1.0));
            match tls {
                None => connection(stream, peer, router, limits, stop).await,
                Some(tls) => {
                    if let Some(stream) = handshake(&tls, stream, peer, limits.header_timeout).await {
                        connection(stream, peer, router, limits, stop).await;
                    }
                }
            }
            open.iter().for_each(|g| g.decrement(1.0));
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}

/// Past the cap: a short 503 and close, so a client learns why instead of waiting on a backlog.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"error": {"code": "too_many_connections", "message": "otpgate has too many open connections; retry shortly"}}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// The TLS handshake, within `limit`; `None` when it failed (logged without client data) or the
/// client spoke plain HTTP (answered 400).
async fn handshake(
    tls: &ServerTls,
    mut stream: TcpStream,
    peer: SocketAddr,
    limit: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(limit, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(1)) => {
            const BODY: &str = r#"{"error": {"code": "https_required", "message": "this port speaks HTTPS only: use an https:// URL"}}"#;
            let answer = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
                BODY.len()
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
            return None;
        }
        _ => return None,
    }
    match tokio::time::timeout(limit, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "no TLS handshake in time");
            None
        }
    }
}

async fn connection<S>(stream: S, peer: SocketAddr, router: Router, limits: Limits, stop: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
}
