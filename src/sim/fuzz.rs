//! PDUs an SMSC should never send: random bytes, and real PDUs with bytes flipped, lengths lied
//! about, bodies cut short or padded. The simulator writes them to bound sessions (under load, in
//! the fault suite) to show that nothing an SMSC sends can make otpgate panic, hang, grow without
//! bound or lose an accepted message.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Real PDUs to start mutations from: enquire_link, unbind, a deliver_sm receipt, a
/// submit_sm_resp, a generic_nack, a data_sm.
const SEEDS: &[&[u8]] = &[
    &[0, 0, 0, 16, 0, 0, 0, 0x15, 0, 0, 0, 0, 0, 0, 0, 9],
    &[0, 0, 0, 16, 0, 0, 0, 0x06, 0, 0, 0, 0, 0, 0, 0, 9],
    b"\x00\x00\x00\x5c\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x09\x00\x01\x01447700900123\x00\x05\x00Acme\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x2bid:1 sub:001 dlvrd:001 stat:DELIVRD err:000\x04\x27\x00\x01\x02",
    b"\x00\x00\x00\x15\x80\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x02\x31\x41\x00\x00\x00",
    &[0, 0, 0, 16, 0x80, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0],
    b"\x00\x00\x00\x2c\x00\x00\x01\x03\x00\x00\x00\x00\x00\x00\x00\x0a\x00\x01\x01447700900123\x00\x05\x00Acme\x00\x04\x00\x00",
];

/// Deterministic PDU noise from a seed.
pub struct Fuzzer {
    rng: StdRng,
}

impl Fuzzer {
    pub fn new(seed: u64) -> Fuzzer {
        Fuzzer { rng: StdRng::seed_from_u64(seed) }
    }

    /// The next PDU-shaped (or not) run of bytes.
    pub fn next_pdu(&mut self) -> Vec<u8> {
        let rng = &mut self.rng;
        let mut pdu = SEEDS[rng.random_range(0..SEEDS.len())].to_vec();
        match rng.random_range(0..6) {
            // Bytes flipped anywhere, the header included.
            0 => {
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..pdu.len());
                    pdu[at] = rng.random();
                }
            }
            // A body cut short, the length left as it was: the next PDU's bytes fill the gap.
            1 => pdu.truncate(rng.random_range(16..pdu.len().max(17))),
            // Garbage padded on, the length told to cover it.
            2 => {
                let extra = rng.random_range(1..64);
                pdu.extend((0..extra).map(|_| rng.random::<u8>()));
                let length = (pdu.len() as u32).to_be_bytes();
                pdu[..4].copy_from_slice(&length);
            }
            // A command id nobody defined.
            3 => pdu[4..8].copy_from_slice(&rng.random::<u32>().to_be_bytes()),
            // A length that lies (too small, or huge).
            4 => {
                let lie: u32 = if rng.random() { rng.random_range(0..16) } else { rng.random_range(64 * 1024..u32::MAX) };
                pdu[..4].copy_from_slice(&lie.to_be_bytes());
            }
            // Pure noise.
            _ => {
                let length = rng.random_range(1..80);
                pdu = (0..length).map(|_| rng.random::<u8>()).collect();
            }
        }
        pdu
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_noise() {
        let (mut a, mut b) = (Fuzzer::new(7), Fuzzer::new(7));
        for _ in 0..100 {
            assert_eq!(a.next_pdu(), b.next_pdu());
        }
    }
}
