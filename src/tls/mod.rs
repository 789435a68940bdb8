//! TLS on rustls (no OpenSSL): certificate and key files read and checked the same way for every
//! use, the client side of a carrier's SMPP link (`client.rs`), the server side of the HTTP and
//! metrics listeners with a certificate SIGHUP can swap (`server.rs`), and throwaway
//! certificates for the demo and the bench (`throwaway.rs`).
//!
//! Files are checked when the config is loaded (`check-config` prints what it found), so a
//! missing file, a key that belongs to another certificate or an expired certificate stop the
//! daemon at start instead of failing every handshake later. Only TLS 1.2 and 1.3 are spoken,
//! and a peer's chain and name are always verified.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

pub(crate) mod client;
pub(crate) mod server;
pub mod throwaway;

pub(crate) use client::Connector;
pub use server::ServerTls;

/// A certificate expiring sooner than this gets a warning from `check-config` and the log.
pub const WARN_BEFORE_EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);

/// The protocol versions every link accepts.
pub(crate) static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Why a certificate or key file cannot be used. Never shows key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: not a readable PEM certificate file: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{}: no readable PEM private key in it (PKCS#8, PKCS#1 or SEC1)", path.display())]
    BadKey { path: PathBuf },
    #[error("{}: the key is of a kind rustls cannot sign with (RSA, ECDSA P-256/P-384 or Ed25519)", path.display())]
    UnsupportedKey { path: PathBuf },
    #[error("{}: this key does not belong to the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: the certificate {subject} expired on {}", path.display(), humantime::format_rfc3339_seconds(*not_after))]
    Expired { path: PathBuf, subject: String, not_after: SystemTime },
    #[error("{}: the certificate {subject} is not valid before {}", path.display(), humantime::format_rfc3339_seconds(*not_before))]
    NotYetValid { path: PathBuf, subject: String, not_before: SystemTime },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// What a certificate says about itself, for checks and for `check-config`.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub subject: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    /// "CN=... expires 2027-01-01T00:00:00Z (in 89 days)", with a warning when close.
    pub fn describe(&self, now: SystemTime) -> String {
        let left = self.not_after.duration_since(now).unwrap_or_default();
        let warning = if left < WARN_BEFORE_EXPIRY { "  WARNING: expires within 30 days" } else { "" };
        format!(
            "{} expires {} (in {} days){warning}",
            self.subject,
            humantime::format_rfc3339_seconds(self.not_after),
            left.as_secs() / 86_400
        )
    }
}

/// A certificate file read and checked: its certificates, and what each says.
#[derive(Debug, Clone)]
pub struct CertFile {
    pub path: PathBuf,
    pub certs: Vec<CertificateDer<'static>>,
    pub infos: Vec<CertInfo>,
}

impl CertFile {
    /// Reads every certificate in a PEM file and checks each is valid at `now`.
    pub fn read(path: &Path, now: SystemTime) -> Result<CertFile, TlsError> {
        let bytes = std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })?;
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadCertificate { path: path.to_path_buf(), reason: e.to_string() })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate { path: path.to_path_buf() });
        }
        let mut infos = Vec::with_capacity(certs.len());
        for der in &certs {
            let info = inspect(der).map_err(|reason| TlsError::BadCertificate { path: path.to_path_buf(), reason })?;
            if info.not_after < now {
                return Err(TlsError::Expired { path: path.to_path_buf(), subject: info.subject, not_after: info.not_after });
            }
            if info.not_before > now {
                return Err(TlsError::NotYetValid { path: path.to_path_buf(), subject: info.subject, not_before: info.not_before });
            }
            infos.push(info);
        }
        Ok(CertFile { path: path.to_path_buf(), certs, infos })
    }

    /// The soonest any certificate in the file expires.
    pub fn expires(&self) -> SystemTime {
        self.infos.iter().map(|i| i.not_after).min().unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// The first certificate (a chain's leaf), described.
    pub fn describe(&self, now: SystemTime) -> String {
        let first = self.infos.first().map(|i| i.describe(now)).unwrap_or_default();
        match self.infos.len() {
            1 => first,
            n => format!("{first} (+{} more in the file)", n - 1),
        }
    }

    /// Exports the file's expiry as a gauge, labelled with its use and path.
    pub fn export_expiry(&self, usage: &str) {
        let at = self.expires().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!(crate::telemetry::TLS_CERTIFICATE_EXPIRY, "use" => usage.to_string(), "file" => self.path.display().to_string())
            .set(at);
    }
}

/// A certificate chain with its private key, checked to belong together.
pub(crate) struct Identity {
    pub(crate) chain: CertFile,
    pub(crate) key: Arc<CertifiedKey>,
}

impl Identity {
    pub(crate) fn read(cert: &Path, key: &Path, now: SystemTime) -> Result<Identity, TlsError> {
        let chain = CertFile::read(cert, now)?;
        let bytes = std::fs::read(key).map_err(|source| TlsError::Read { path: key.to_path_buf(), source })?;
        // The parser's message may quote the file: never shown for a key.
        let der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsError::BadKey { path: key.to_path_buf() })?;
        let signer = any_supported_type(&der).map_err(|_| TlsError::UnsupportedKey { path: key.to_path_buf() })?;
        // The public halves compared as DER (not `CertifiedKey::keys_match`, whose certificate
        // parser refuses X.509 v1 certificates, which OpenSSL still makes); a key that cannot
        // say its public half is let through: the handshake will tell.
        let leaf = x509_parser::parse_x509_certificate(chain.certs[0].as_ref()).map(|(_, c)| c.public_key().raw.to_vec()).ok();
        if let (Some(ours), Some(leaf)) = (signer.public_key(), leaf) {
            if ours.as_ref() != leaf.as_slice() {
                return Err(TlsError::KeyMismatch { cert: cert.to_path_buf(), key: key.to_path_buf() });
            }
        }
        Ok(Identity { chain: chain.clone(), key: Arc::new(CertifiedKey::new(chain.certs, signer)) })
    }
}

/// Reads a certificate's subject and validity.
fn inspect(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let time = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        match u64::try_from(secs) {
            Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            Err(_) => SystemTime::UNIX_EPOCH,
        }
    };
    let validity = cert.validity();
    let subject = cert.subject().to_string();
    Ok(CertInfo {
        subject: if subject.is_empty() { "(no subject)".into() } else { subject },
        not_before: time(validity.not_before),
        not_after: time(validity.not_after),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_pair_is_read_checked_and_described() {
        let dir = tempfile::tempdir().unwrap();
        let ca = throwaway::Authority::new("test CA").unwrap();
        let leaf = ca.issue(&["localhost"], Duration::from_secs(10 * 86_400)).unwrap();
        let (cert, key) = (write(dir.path(), "c.pem", &leaf.cert_pem), write(dir.path(), "k.pem", &leaf.key_pem));
        let now = SystemTime::now();
        let identity = Identity::read(&cert, &key, now).unwrap();
        let text = identity.chain.describe(now);
        assert!(text.contains("CN=localhost") && text.contains("WARNING: expires within 30 days"), "{text}");

        let other = ca.issue(&["localhost"], Duration::from_secs(400 * 86_400)).unwrap();
        let wrong_key = write(dir.path(), "other.key", &other.key_pem);
        let e = Identity::read(&cert, &wrong_key, now).err().unwrap();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
        assert!(
            !Identity::read(&write(dir.path(), "o.pem", &other.cert_pem), &wrong_key, now).unwrap().chain.describe(now).contains("WARNING")
        );

        let later = now + Duration::from_secs(11 * 86_400);
        let e = Identity::read(&cert, &key, later).err().unwrap();
        assert!(matches!(e, TlsError::Expired { .. }) && e.to_string().contains("expired on"), "{e}");
    }

    #[test]
    fn bad_files_are_named_and_keys_never_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = write(dir.path(), "g.pem", "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==!!\n-----END PRIVATE KEY-----\n");
        let empty = write(dir.path(), "e.pem", "nothing here\n");
        let now = SystemTime::now();
        assert!(matches!(CertFile::read(&empty, now), Err(TlsError::NoCertificate { .. })));
        assert!(matches!(CertFile::read(&dir.path().join("missing.pem"), now), Err(TlsError::Read { .. })));
        let e = Identity::read(&garbage, &garbage, now).err().unwrap();
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        let ca = throwaway::Authority::new("test CA").unwrap();
        let cert = write(dir.path(), "c.pem", &ca.cert_pem());
        let e = Identity::read(&cert, &garbage, now).err().unwrap();
        assert!(matches!(e, TlsError::BadKey { .. }) && !e.to_string().contains("c2VjcmV0"), "{e}");
    }
}
