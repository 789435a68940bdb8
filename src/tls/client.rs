//! The client side: a carrier link's TLS, and why a handshake failed in words an operator can
//! act on (and a bounded label for the metrics).

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::ServerName;
use rustls::sign::SingleCertAndKey;
use rustls::{AlertDescription, CertificateError, Error as RustlsError};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{CertFile, Identity, TlsError, VERSIONS};

/// Where a client's trust and identity come from.
pub(crate) struct ClientFiles<'a> {
    /// Trust only these authorities; `None`: the system's roots.
    pub(crate) ca_file: Option<&'a Path>,
    /// The name the server's certificate must carry (a host name or an IP address).
    pub(crate) server_name: &'a str,
    /// Mutual TLS: our certificate and key.
    pub(crate) identity: Option<(&'a Path, &'a Path)>,
}

/// Opens TLS sessions to one server.
pub(crate) struct Connector {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    /// The certificate files read, for the expiry gauges.
    pub(crate) files: Vec<CertFile>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl Connector {
    pub(crate) fn new(files: &ClientFiles<'_>) -> Result<Connector, TlsError> {
        let now = SystemTime::now();
        let server_name = ServerName::try_from(files.server_name.to_string())
            .map_err(|_| TlsError::Setup(format!("{:?} is not a host name or IP address", files.server_name)))?;
        let mut roots = rustls::RootCertStore::empty();
        let mut read = Vec::new();
        match files.ca_file {
            Some(path) => {
                let cas = CertFile::read(path, now)?;
                for cert in &cas.certs {
                    roots.add(cert.clone()).map_err(|e| TlsError::BadCertificate { path: path.to_path_buf(), reason: e.to_string() })?;
                }
                read.push(cas);
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(TlsError::Setup("no system root certificates found: set tls_ca_file".into()));
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_protocol_versions(VERSIONS).with_root_certificates(roots);
        let config = match files.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let identity = Identity::read(cert, key, now)?;
                read.push(identity.chain);
                builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity.key)))
            }
        };
        Ok(Connector { connector: TlsConnector::from(Arc::new(config)), server_name, files: read })
    }

    /// The handshake over `tcp`; the caller bounds its time.
    pub(crate) async fn connect(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, HandshakeFailure> {
        self.connector.connect(self.server_name.clone(), tcp).await.map_err(|e| HandshakeFailure::of(&e))
    }
}

/// Why a handshake failed: a bounded label and the reason in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeFailure {
    /// `tls_expired`, `tls_unknown_issuer`, `tls_name_mismatch`, `tls_protocol_version`...
    pub label: &'static str,
    pub reason: String,
}

impl HandshakeFailure {
    pub(crate) fn timeout() -> HandshakeFailure {
        HandshakeFailure { label: "tls_timeout", reason: "no TLS handshake answer in time (is the port speaking TLS?)".into() }
    }

    /// The server hung up without a word right after our side of the handshake: over TLS 1.3
    /// that is where a server that refuses our client certificate often leaves it.
    pub(crate) fn closed_after() -> HandshakeFailure {
        HandshakeFailure {
            label: "tls_client_certificate",
            reason: "the SMSC closed the TLS connection before answering the bind: it may refuse our client certificate (tls_client_cert)"
                .into(),
        }
    }

    /// A TLS failure carried by an I/O error, if it is one.
    pub(crate) fn of_tls(e: &std::io::Error) -> Option<HandshakeFailure> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<RustlsError>()).map(|_| HandshakeFailure::of(e))
    }

    fn of(e: &std::io::Error) -> HandshakeFailure {
        let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<RustlsError>()) else {
            return match e.kind() {
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => HandshakeFailure {
                    label: "tls_closed",
                    reason: "the peer closed the connection during the TLS handshake (a plain-TCP SMPP port?)".into(),
                },
                _ => HandshakeFailure { label: "tls_io", reason: format!("I/O error during the TLS handshake: {e}") },
            };
        };
        let (label, why) = match tls {
            RustlsError::InvalidCertificate(cert) => match cert {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => ("tls_expired", "its certificate has expired"),
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    ("tls_not_yet_valid", "its certificate is not valid yet (check the clocks)")
                }
                CertificateError::UnknownIssuer => {
                    ("tls_unknown_issuer", "its certificate is signed by an authority we do not trust (tls_ca_file)")
                }
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    ("tls_name_mismatch", "its certificate does not carry the expected name (tls_server_name)")
                }
                CertificateError::Revoked => ("tls_bad_certificate", "its certificate is revoked"),
                _ => ("tls_bad_certificate", "its certificate was refused"),
            },
            RustlsError::AlertReceived(AlertDescription::ProtocolVersion) | RustlsError::PeerIncompatible(_) => {
                ("tls_protocol_version", "it speaks no TLS version or cipher we accept (TLS 1.2 and 1.3 only)")
            }
            RustlsError::AlertReceived(
                AlertDescription::CertificateRequired | AlertDescription::BadCertificate | AlertDescription::UnknownCA,
            ) => ("tls_client_certificate", "it refused our client certificate, or wants one (tls_client_cert)"),
            RustlsError::AlertReceived(_) => ("tls_alert", "it ended the handshake with an alert"),
            RustlsError::InvalidMessage(_)
            | RustlsError::InappropriateMessage { .. }
            | RustlsError::InappropriateHandshakeMessage { .. } => {
                ("tls_not_tls", "it answered something that is not TLS (a plain-TCP SMPP port?)")
            }
            _ => ("tls_handshake", "the handshake failed"),
        };
        HandshakeFailure { label, reason: format!("{why}: {tls}") }
    }
}
