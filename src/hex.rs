//! Lower-case hex for hashes and HMACs (API key hashes in config, code HMACs in the store).

/// `bytes` as lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// 16 bytes as 32 hex digits on the stack (ids are shown everywhere: no allocation).
pub fn encode16(bytes: &[u8; 16]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
    out
}

/// 64 hex digits as 32 bytes; digits that are not hex read as zero (callers validate first).
pub fn decode32(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = text.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).unwrap_or(0);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 7) as u8);
        assert_eq!(super::decode32(&super::encode(&bytes)), bytes);
        assert_eq!(super::encode(&[0, 255]), "00ff");
    }
}
