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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::telemetry;
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

/// Serves `router` on `listener` until `stop`, then lets the connections finish their requests.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, stop: CancellationToken) {
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!(telemetry::HTTP_CONNECTIONS_REFUSED_TOTAL).increment(1);
            connections.spawn(refuse(stream));
            continue;
        };
        let (router, stop) = (router.clone(), stop.clone());
        connections.spawn(async move {
            metrics::gauge!(telemetry::HTTP_CONNECTIONS).increment(1.0);
            connection(stream, peer, router, limits, stop).await;
            metrics::gauge!(telemetry::HTTP_CONNECTIONS).decrement(1.0);
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

async fn connection(stream: TcpStream, peer: SocketAddr, router: Router, limits: Limits, stop: CancellationToken) {
    let _ = stream.set_nodelay(true);
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
