//! One-time codes: generated from the OS CSPRNG without modulo bias, stored only as an HMAC.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// A freshly generated code. Deliberately has no `Debug`/`Display`: it must not be logged by
/// accident. Read it with [`Code::expose`] where it is put into the SMS.
pub struct Code(String);

impl Code {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomError(String);

/// `length` decimal digits (4-10), uniform: a random u64 is rejected when it falls in the last
/// partial block of 10^length, so every code is equally likely.
pub fn generate(length: usize) -> Result<Code, RandomError> {
    let length = length.clamp(4, 10);
    let modulus = 10u64.pow(length as u32);
    let limit = u64::MAX - (u64::MAX % modulus);
    loop {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| RandomError(e.to_string()))?;
        let value = u64::from_le_bytes(bytes);
        if value < limit {
            return Ok(Code(format!("{:0length$}", value % modulus)));
        }
    }
}

/// The HMAC key: 32 random bytes kept in a file (mode 0600) or given in config.
pub struct CodeKey([u8; 32]);

impl CodeKey {
    pub fn new(bytes: [u8; 32]) -> CodeKey {
        CodeKey(bytes)
    }

    /// HMAC-SHA256 over the verification id, the context and the code, NUL-separated: a code
    /// only ever matches the verification (and context) it was issued for.
    pub fn seal(&self, verification: &str, context: &str, code: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        for part in [verification.as_bytes(), &[0], context.as_bytes(), &[0], code.as_bytes()] {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// A short name for this key that reveals nothing of it: nodes sharing a store compare it,
    /// so a node with another key (which would fail every code the others sent) never starts.
    pub fn fingerprint(&self) -> String {
        crate::hex::encode(&self.seal("otpgate key fingerprint", "", "")[..8])
    }

    /// Whether `code` is the one sealed in `expected`, compared in constant time.
    pub fn verify(&self, verification: &str, context: &str, code: &str, expected: &[u8; 32]) -> bool {
        bool::from(self.seal(verification, context, code).ct_eq(expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_the_requested_length_and_are_digits() {
        for length in 4..=10 {
            let code = generate(length).unwrap();
            assert_eq!(code.expose().len(), length);
            assert!(code.expose().bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn digits_are_uniform() {
        // 20,000 codes of 6 digits = 120,000 digits; each digit value should be ~12,000.
        let mut counts = [0u32; 10];
        for _ in 0..20_000 {
            for b in generate(6).unwrap().expose().bytes() {
                counts[usize::from(b - b'0')] += 1;
            }
        }
        // Chi-squared with 9 degrees of freedom; 27.9 is the 0.001 critical value.
        let expected = 12_000.0;
        let chi2: f64 = counts.iter().map(|&c| (f64::from(c) - expected).powi(2) / expected).sum();
        assert!(chi2 < 27.9, "digit counts {counts:?} (chi2 {chi2:.1}) are not uniform");
    }

    #[test]
    fn a_seal_binds_verification_context_and_code() {
        let key = CodeKey::new([7; 32]);
        let sealed = key.seal("v1", "pay 25 EUR", "123456");
        assert!(key.verify("v1", "pay 25 EUR", "123456", &sealed));
        assert!(!key.verify("v1", "pay 25 EUR", "123457", &sealed));
        assert!(!key.verify("v2", "pay 25 EUR", "123456", &sealed), "code of A on B");
        assert!(!key.verify("v1", "pay 2500 EUR", "123456", &sealed), "other context");
        assert!(!CodeKey::new([8; 32]).verify("v1", "pay 25 EUR", "123456", &sealed));
    }
}
