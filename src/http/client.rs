//! A minimal HTTP/1.1 client for the demo, the tests and the bench tool: one keep-alive
//! connection, requests in sequence, bodies framed by Content-Length (which our server always
//! sends), over TCP or TLS. Not a general-purpose client.

use std::net::SocketAddr;
use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::either::Either;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

pub struct Client {
    addr: SocketAddr,
    stream: BufReader<Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>>,
}

const MAX_RESPONSE_BODY: usize = 1 << 20;

impl Client {
    pub async fn connect(addr: SocketAddr) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Client { addr, stream: BufReader::new(Either::Left(stream)) })
    }

    /// Connects over TLS, trusting only the authorities in `ca_file`, to a server whose
    /// certificate names `server_name`.
    pub async fn connect_tls(addr: SocketAddr, ca_file: &Path, server_name: &str) -> Result<Client, ClientError> {
        let files = crate::tls::client::ClientFiles { ca_file: Some(ca_file), server_name, identity: None };
        let connector = crate::tls::Connector::new(&files).map_err(|e| ClientError::Tls(e.to_string()))?;
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let stream = connector.connect(stream).await.map_err(|e| ClientError::Tls(e.reason))?;
        Ok(Client { addr, stream: BufReader::new(Either::Right(stream)) })
    }

    /// Sends one request; `headers` are extra `(name, value)` pairs.
    pub async fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Result<Reply, ClientError> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.flush().await?;
        self.read_reply().await
    }

    async fn read_reply(&mut self) -> Result<Reply, ClientError> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            return Err(ClientError::Malformed("connection closed".into()));
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::Malformed(format!("status line {line:?}")))?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(ClientError::Malformed("headers cut short".into()));
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((name, value)) = trimmed.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().map_err(|_| ClientError::Malformed("content-length".into()))?;
                }
            }
        }
        if length > MAX_RESPONSE_BODY {
            return Err(ClientError::Malformed(format!("body of {length} bytes")));
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok(Reply { status, body: String::from_utf8_lossy(&body).into_owned() })
    }
}
