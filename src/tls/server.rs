//! The server side: a listener's certificate, swappable while connections stay open (SIGHUP
//! after a renewal), and optionally client certificates required (the simulator's mutual TLS).

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use super::{CertFile, Identity, TlsError, VERSIONS};

/// A listener's TLS: cheap to clone; every clone sees a reload.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
}

/// The certificate handed to each new handshake. A handshake under way keeps the one it took.
#[derive(Debug)]
struct Current(RwLock<(Arc<CertifiedKey>, CertFile)>);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("cert", &self.chain().path).finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).0.clone())
    }
}

impl ServerTls {
    /// Serves `cert` with `key`; with `client_ca`, only clients with a certificate it signed
    /// get through.
    pub fn new(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTls, TlsError> {
        let identity = Identity::read(cert, key, SystemTime::now())?;
        let current = Arc::new(Current(RwLock::new((identity.key, identity.chain))));
        let builder = rustls::ServerConfig::builder_with_protocol_versions(VERSIONS);
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let cas = CertFile::read(path, SystemTime::now())?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in cas.certs {
                    roots.add(cert).map_err(|e| TlsError::BadCertificate { path: path.to_path_buf(), reason: e.to_string() })?;
                }
                let verifier = WebPkiClientVerifier::builder(Arc::new(roots)).build().map_err(|e| TlsError::Setup(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_cert_resolver(current.clone());
        Ok(ServerTls { acceptor: TlsAcceptor::from(Arc::new(config)), current })
    }

    /// Swaps in a new certificate and key for the handshakes to come; on any problem the one
    /// in use stays.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let identity = Identity::read(cert, key, SystemTime::now())?;
        *self.current.0.write().unwrap_or_else(|p| p.into_inner()) = (identity.key, identity.chain);
        Ok(())
    }

    /// The certificate file in use.
    pub fn chain(&self) -> CertFile {
        self.current.0.read().unwrap_or_else(|p| p.into_inner()).1.clone()
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}
