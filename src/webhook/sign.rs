//! Standard Webhooks 1.0 signatures: `webhook-signature: v1,<base64 HMAC-SHA256(key,
//! "id.timestamp.body")>`, the key being the base64 after `whsec_` (not the string itself), one
//! signature per secret while a secret is being rotated.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{KeyInit, Mac};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

/// Why a configured secret cannot sign. Never quotes the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("is required: `secret` or `secret_file` (one of them), holding whsec_<base64>")]
    Missing,
    #[error("secret number {0} does not start with whsec_ (the Standard Webhooks secret form)")]
    Prefix(usize),
    #[error("secret number {0} is not base64 after whsec_")]
    Base64(usize),
    #[error("secret number {0} is too short: at least 16 bytes (24 base64 characters) after whsec_")]
    Short(usize),
    #[error("cannot read it: {0}")]
    File(String),
}

/// The keys requests are signed with, newest first.
#[derive(Clone)]
pub struct Signer {
    keys: Vec<Vec<u8>>,
}

/// Decodes one `whsec_` secret to its HMAC key; `n` numbers it in errors (1-based).
fn key_of(secret: &str, n: usize) -> Result<Vec<u8>, SecretError> {
    let encoded = secret.strip_prefix(PREFIX).ok_or(SecretError::Prefix(n))?;
    let key = STANDARD.decode(encoded).or_else(|_| STANDARD_NO_PAD.decode(encoded)).map_err(|_| SecretError::Base64(n))?;
    if key.len() < 16 {
        return Err(SecretError::Short(n));
    }
    Ok(key)
}

impl Signer {
    /// From whitespace-separated `whsec_` secrets.
    pub fn from_secrets(text: &str) -> Result<Signer, SecretError> {
        let keys = text.split_whitespace().enumerate().map(|(i, s)| key_of(s, i + 1)).collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(SecretError::Missing);
        }
        Ok(Signer { keys })
    }

    /// How many secrets sign (more than one while rotating).
    pub fn secrets(&self) -> usize {
        self.keys.len()
    }

    /// The `webhook-signature` header value for one attempt.
    pub fn signature(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let signatures: Vec<String> =
            self.keys.iter().map(|key| format!("v1,{}", STANDARD.encode(hmac(key, id, timestamp, body)))).collect();
        signatures.join(" ")
    }
}

fn hmac(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length.
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// Why a request does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("a webhook-id, webhook-timestamp or webhook-signature header is missing")]
    MissingHeader,
    #[error("webhook-timestamp is not unix seconds")]
    Timestamp,
    #[error("webhook-timestamp is more than the tolerance away from now")]
    Stale,
    #[error("no v1 signature matches")]
    NoMatch,
}

/// A receiver's check, as the specification describes it: the timestamp within `tolerance_s`
/// of `now_s`, and any `v1` signature of the space-separated list equal (in constant time) to
/// the HMAC of `id.timestamp.body` under the decoded `secret`. For our tests and the bench.
pub fn verify(
    secret: &str,
    id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<(), VerifyError> {
    let (Some(id), Some(timestamp), Some(signature)) = (id, timestamp, signature) else {
        return Err(VerifyError::MissingHeader);
    };
    let at: u64 = timestamp.parse().map_err(|_| VerifyError::Timestamp)?;
    if at.abs_diff(now_s) > tolerance_s {
        return Err(VerifyError::Stale);
    }
    let key = key_of(secret, 1).map_err(|_| VerifyError::NoMatch)?;
    let expected = hmac(&key, id, at, body);
    let matches = signature.split(' ').filter_map(|s| s.strip_prefix("v1,")).filter_map(|b64| STANDARD.decode(b64).ok());
    for candidate in matches {
        if subtle::ConstantTimeEq::ct_eq(candidate.as_slice(), expected.as_slice()).into() {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed by Python's `hmac` alone, independently of this code:
    /// `base64.b64encode(hmac.new(base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
    /// b'msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}', hashlib.sha256).digest())`
    /// (the example of the Standard Webhooks specification's repository).
    const PINNED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn the_signature_matches_one_computed_independently() {
        let signer = Signer::from_secrets("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(signer.signature("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body), PINNED);
    }

    #[test]
    fn while_rotating_each_secret_signs_and_a_receiver_with_either_accepts() {
        let (old, new) = ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2VjcmV0LWtleS1vZi0yNC1ieXRlcy1sb25n");
        let signer = Signer::from_secrets(&format!("{new}  {old}\n")).unwrap();
        assert_eq!(signer.secrets(), 2);
        let (id, at, body) = ("evt_1", 1_700_000_000, b"{}".as_slice());
        let header = signer.signature(id, at, body);
        assert_eq!(header.split(' ').count(), 2, "{header}");
        let ts = at.to_string();
        for secret in [old, new] {
            assert_eq!(verify(secret, Some(id), Some(&ts), Some(&header), body, at, 300), Ok(()));
        }
        let other = "whsec_b3RoZXItc2VjcmV0LW9mLTI0LWJ5dGVzLWxvbmc=";
        assert_eq!(verify(other, Some(id), Some(&ts), Some(&header), body, at, 300), Err(VerifyError::NoMatch));
        assert_eq!(verify(old, Some(id), Some(&ts), Some(&header), b"{ }", at, 300), Err(VerifyError::NoMatch), "body tampered");
        assert_eq!(verify(old, Some("evt_2"), Some(&ts), Some(&header), body, at, 300), Err(VerifyError::NoMatch), "id swapped");
        assert_eq!(verify(old, Some(id), Some(&ts), Some(&header), body, at + 301, 300), Err(VerifyError::Stale));
        assert_eq!(verify(old, None, Some(&ts), Some(&header), body, at, 300), Err(VerifyError::MissingHeader));
    }

    #[test]
    fn secrets_must_be_whsec_base64_of_enough_bytes_and_errors_never_quote_them() {
        assert_eq!(Signer::from_secrets("").err(), Some(SecretError::Missing));
        assert_eq!(Signer::from_secrets("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").err(), Some(SecretError::Prefix(1)));
        assert_eq!(Signer::from_secrets("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_***").err(), Some(SecretError::Base64(2)));
        assert_eq!(Signer::from_secrets("whsec_c2hvcnQ=").err(), Some(SecretError::Short(1)));
        assert!(Signer::from_secrets("whsec_c2VjcmV0LWtleS1vZi0yNC1ieXRlcy1sb25n").is_ok(), "unpadded base64 is fine");
    }
}
