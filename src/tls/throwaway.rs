//! Throwaway certificates: a private authority made on the spot and the certificates it signs,
//! for `otpgate demo --tls`, `otpgate bench --tls` and the tests. Never for production: the
//! authority's key lives only in memory and in the files the caller writes.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

use super::TlsError;

/// A certificate authority of our own.
pub struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes `<stem>.pem` and `<stem>.key` (mode 0600) into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let (cert, key) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
        std::fs::write(&cert, &self.cert_pem)?;
        write_private(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

fn setup(e: rcgen::Error) -> TlsError {
    TlsError::Setup(format!("cannot make a certificate: {e}"))
}

impl Authority {
    /// A new authority valid for ten years.
    pub fn new(name: &str) -> Result<Authority, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(setup)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 86_400)).into();
        let key = KeyPair::generate().map_err(setup)?;
        let cert = params.self_signed(&key).map_err(setup)?;
        Ok(Authority { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the authority's certificate (not its key) to `path`.
    pub fn write_cert(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.cert.pem())
    }

    /// A server certificate for `names` (host names or IP addresses), valid from an hour ago
    /// for `valid_for`.
    pub fn issue(&self, names: &[&str], valid_for: Duration) -> Result<Issued, TlsError> {
        let now = SystemTime::now();
        self.issue_between(names, Usage::Server, now - Duration::from_secs(3600), now + valid_for)
    }

    /// A certificate for `names` and `usage`, valid between the two times (an expired one for
    /// the tests, too).
    pub fn issue_between(&self, names: &[&str], usage: Usage, not_before: SystemTime, not_after: SystemTime) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).map_err(setup)?;
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("otpgate"));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let key = KeyPair::generate().map_err(setup)?;
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(setup)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}
