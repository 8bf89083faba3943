//! The bench payload: a fixed 32-byte header that makes every message checkable,
//! followed by filler taken from a pool (random bytes or JSON-like text).
//!
//! | bytes | field | |
//! |---|---|---|
//! | 0..4 | checksum of the fields below and the body ([`checksum`]) | |
//! | 4..8 | run id (u32 LE) | one per `tidelog bench` run |
//! | 8..12 | producer id (u32 LE) | 0-based within the run |
//! | 12..16 | partition (u32 LE) | the partition the producer sent it to |
//! | 16..24 | sequence (u64 LE) | per producer per partition, from 0, +1 per message |
//! | 24..32 | send time (u64 LE) | ns since the Unix epoch |
//!
//! A consumer checks the checksum (so a corrupted or truncated value is caught), the
//! partition, and that each producer's sequence in a partition goes up by exactly
//! one (so loss, duplication and reordering are caught); the send time gives
//! publish -> receive latency.

use std::fmt;

use tidelog_storage::rng::SeededRng;

/// Bytes of the header; the smallest message the bench sends.
pub const HEADER_BYTES: usize = 32;
/// Bytes of the filler pool a producer's messages take their body from.
const POOL_BYTES: usize = 1 << 20;

/// The checkable fields of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub run: u32,
    pub producer: u32,
    pub partition: u32,
    pub sequence: u64,
    pub sent_ns: u64,
}

/// Why a payload is not one the bench wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    TooShort { len: usize },
    Checksum { stored: u32, computed: u32 },
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::TooShort { len } => write!(
                f,
                "payload of {len} bytes is shorter than the {HEADER_BYTES}-byte bench header"
            ),
            PayloadError::Checksum { stored, computed } => write!(
                f,
                "payload checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
        }
    }
}

/// Writes `header` into the first [`HEADER_BYTES`] of `message` and seals it with
/// the checksum of the header and the rest of the message.
pub fn seal(message: &mut [u8], header: &Header) {
    debug_assert!(message.len() >= HEADER_BYTES);
    message[4..8].copy_from_slice(&header.run.to_le_bytes());
    message[8..12].copy_from_slice(&header.producer.to_le_bytes());
    message[12..16].copy_from_slice(&header.partition.to_le_bytes());
    message[16..24].copy_from_slice(&header.sequence.to_le_bytes());
    message[24..32].copy_from_slice(&header.sent_ns.to_le_bytes());
    let sum = checksum(header, &message[HEADER_BYTES..]);
    message[0..4].copy_from_slice(&sum.to_le_bytes());
}

/// The payload checksum: a 32-bit multiply-rotate hash of the header's fields and of
/// `body` (the bytes after the header) with its length, the body read 8 bytes at a time
/// in four independent lanes. Not the CRC-32 the batches carry: that one covers the
/// bytes on disk and on the wire, and the client library checks it; this one is the
/// bench's own check that a value arrives as the producer wrote it, paid per message on
/// both sides. crc32fast takes its table path below 128 bytes (about 40 ns for a
/// 100-byte message, a fifth of the consuming bench's CPU); this takes a few ns. The
/// header enters as its fields, not as the bytes [`seal`] just wrote (reading those
/// back in 8-byte words that straddle its 4-byte stores stalled the producer). Any
/// single changed bit, a truncation, and two words swapped change it.
pub fn checksum(header: &Header, body: &[u8]) -> u32 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mix = |lane: u64, word: u64| (lane ^ word).wrapping_mul(K).rotate_left(31);
    // A short last chunk is gathered in a register: copied into an 8-byte array in
    // memory and read back whole, its load waited for the stores before it.
    let word = |chunk: &[u8]| match <[u8; 8]>::try_from(chunk) {
        Ok(word) => u64::from_le_bytes(word),
        Err(_) => chunk
            .iter()
            .rev()
            .fold(0u64, |word, &byte| word << 8 | u64::from(byte)),
    };
    let mut lanes = [
        mix(K, u64::from(header.run) | u64::from(header.producer) << 32),
        mix(
            K.rotate_left(16),
            u64::from(header.partition) | (body.len() as u64) << 32,
        ),
        mix(K.rotate_left(32), header.sequence),
        mix(K.rotate_left(48), header.sent_ns),
    ];
    let mut rounds = body.chunks_exact(32);
    for round in &mut rounds {
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane = mix(*lane, word(&round[i * 8..i * 8 + 8]));
        }
    }
    let mut sum = body.len() as u64;
    for chunk in rounds.remainder().chunks(8) {
        sum = mix(sum, word(chunk));
    }
    for lane in lanes {
        sum = mix(sum, lane);
    }
    let sum = (sum ^ (sum >> 29)).wrapping_mul(K);
    (sum >> 32) as u32
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The header of `message` after checking its checksum.
pub fn open(message: &[u8]) -> Result<Header, PayloadError> {
    if message.len() < HEADER_BYTES {
        return Err(PayloadError::TooShort { len: message.len() });
    }
    let header = Header {
        run: u32_at(message, 4),
        producer: u32_at(message, 8),
        partition: u32_at(message, 12),
        sequence: u64_at(message, 16),
        sent_ns: u64_at(message, 24),
    };
    let stored = u32_at(message, 0);
    let computed = checksum(&header, &message[HEADER_BYTES..]);
    if stored != computed {
        return Err(PayloadError::Checksum { stored, computed });
    }
    Ok(header)
}

/// What the bodies of messages are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FillerKind {
    /// Pseudo-random bytes: incompressible.
    Random,
    /// JSON-like event documents (compressible, as real application payloads are).
    Json,
}

/// A producer's source of message bodies: a pool read at varying offsets, so that
/// messages differ (no accidental compressibility) without generating bytes per
/// message.
#[derive(Debug, Clone)]
pub struct Pool {
    bytes: Vec<u8>,
}

impl Pool {
    pub fn new(kind: FillerKind, seed: u64) -> Pool {
        let mut rng = SeededRng::new(seed);
        let mut bytes = Vec::with_capacity(POOL_BYTES + 4096);
        match kind {
            FillerKind::Random => {
                while bytes.len() < POOL_BYTES {
                    bytes.extend_from_slice(&rng.next().to_le_bytes());
                }
            }
            FillerKind::Json => {
                const EVENTS: [&str; 6] = [
                    "page_view",
                    "add_to_cart",
                    "checkout",
                    "login",
                    "search",
                    "logout",
                ];
                const PATHS: [&str; 5] = [
                    "/products",
                    "/cart",
                    "/account/settings",
                    "/search",
                    "/checkout/payment",
                ];
                const AGENTS: [&str; 3] = [
                    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
                    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
                    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
                ];
                let mut n = 0u64;
                while bytes.len() < POOL_BYTES {
                    let r = rng.next();
                    n += 1;
                    let line = format!(
                        "{{\"id\":\"evt-{n:010}\",\"ts\":\"2026-11-23T{:02}:{:02}:{:02}.{:03}Z\",\"user\":\"user-{:05}\",\"session\":\"{:016x}\",\"event\":\"{}\",\"path\":\"{}/{}\",\"status\":{},\"duration_ms\":{},\"ua\":\"{}\",\"tags\":[\"web\",\"{}\"],\"amount\":{}.{:02}}}\n",
                        r % 24,
                        (r >> 5) % 60,
                        (r >> 11) % 60,
                        (r >> 17) % 1000,
                        (r >> 27) % 50_000,
                        rng.next(),
                        EVENTS[(r >> 33) as usize % EVENTS.len()],
                        PATHS[(r >> 36) as usize % PATHS.len()],
                        (r >> 40) % 10_000,
                        if (r >> 50).is_multiple_of(20) {
                            500
                        } else {
                            200
                        },
                        (r >> 52) % 2_000,
                        AGENTS[(r >> 58) as usize % AGENTS.len()],
                        if (r >> 61).is_multiple_of(2) {
                            "eu"
                        } else {
                            "us"
                        },
                        (r >> 20) % 500,
                        (r >> 44) % 100,
                    );
                    bytes.extend_from_slice(line.as_bytes());
                }
            }
        }
        Pool { bytes }
    }

    /// `len` bytes of body for the message with this number; consecutive numbers
    /// give consecutive, non-overlapping windows of the pool (read sequentially, so
    /// they come from the cache, and random bytes stay incompressible).
    pub fn body(&self, number: u64, len: usize) -> &[u8] {
        let span = self.bytes.len().saturating_sub(len).max(1) as u64;
        let stride = len as u64 + 13;
        let start = (number.wrapping_mul(stride) % span) as usize;
        &self.bytes[start..start + len.min(self.bytes.len())]
    }
}

/// Writes one whole message into `out` (which must be `size` bytes): the body from
/// the pool, then the sealed header.
#[cfg(test)]
pub fn fill(out: &mut [u8], pool: &Pool, number: u64, header: &Header) {
    fill_body(out, pool, number);
    seal(out, header);
}

/// Writes the body of message `number` into `out` (after its header's place):
/// [`fill`] without the header. A producer fills a request's bodies first and seals
/// them after, so the checksum reads bytes stored a while before, not ones still on
/// their way to the cache.
pub fn fill_body(out: &mut [u8], pool: &Pool, number: u64) {
    let mut at = HEADER_BYTES;
    let mut window = number;
    while at < out.len() {
        let len = (out.len() - at).min(pool.bytes.len());
        out[at..at + len].copy_from_slice(pool.body(window, len));
        at += len;
        window = window.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            run: 0xdead_beef,
            producer: 7,
            partition: 3,
            sequence: 1 << 40,
            sent_ns: 1_790_000_000_123_456_789,
        }
    }

    #[test]
    fn a_sealed_payload_opens_to_its_header() {
        for kind in [FillerKind::Random, FillerKind::Json] {
            let pool = Pool::new(kind, 1);
            for size in [HEADER_BYTES, 33, 100, 1024, 64 * 1024, 3 << 20] {
                let mut message = vec![0u8; size];
                fill(&mut message, &pool, 99, &header());
                assert_eq!(open(&message), Ok(header()), "{kind:?} {size}");
            }
        }
    }

    #[test]
    fn any_flipped_bit_is_caught() {
        let pool = Pool::new(FillerKind::Random, 2);
        let mut message = vec![0u8; 100];
        fill(&mut message, &pool, 5, &header());
        for byte in 0..message.len() {
            for bit in 0..8 {
                let mut bad = message.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    matches!(open(&bad), Err(PayloadError::Checksum { .. })),
                    "flip at {byte}:{bit} not caught"
                );
            }
        }
    }

    #[test]
    fn swapped_words_and_zeroed_tails_are_caught_at_every_size() {
        let pool = Pool::new(FillerKind::Random, 5);
        for size in (HEADER_BYTES..300).chain([4096, 65_537]) {
            let mut message = vec![0u8; size];
            fill(&mut message, &pool, size as u64, &header());
            assert_eq!(open(&message), Ok(header()), "{size}");
            // Two 8-byte words swapped, in one lane or across lanes.
            for (a, b) in [(4, 12), (4, 36), (12, 20), (size - 16, size - 8)] {
                let mut bad = message.clone();
                if a + 8 > b || b + 8 > size || bad[a..a + 8] == bad[b..b + 8] {
                    continue;
                }
                let (front, back) = bad.split_at_mut(b);
                front[a..a + 8].swap_with_slice(&mut back[..8]);
                assert!(open(&bad).is_err(), "{size}: words at {a} and {b} swapped");
            }
            // The last bytes zeroed (a value cut short and padded).
            let mut bad = message.clone();
            let tail = size - 3;
            if bad[tail..] != [0, 0, 0] {
                bad[tail..].fill(0);
                assert!(open(&bad).is_err(), "{size}: tail zeroed");
            }
        }
    }

    #[test]
    fn short_or_truncated_payloads_are_rejected() {
        assert_eq!(open(&[0u8; 31]), Err(PayloadError::TooShort { len: 31 }));
        let pool = Pool::new(FillerKind::Json, 3);
        let mut message = vec![0u8; 200];
        fill(&mut message, &pool, 1, &header());
        assert!(open(&message[..199]).is_err());
        assert!(
            open(&[0u8; 40]).is_err(),
            "all zeros has a nonzero checksum, so it fails"
        );
    }

    #[test]
    fn bodies_differ_between_messages_and_json_is_text() {
        let pool = Pool::new(FillerKind::Json, 4);
        assert_ne!(pool.body(1, 200), pool.body(2, 200));
        assert!(std::str::from_utf8(pool.body(3, 500)).is_ok());
        let random = Pool::new(FillerKind::Random, 4);
        assert_ne!(random.body(1, 64), random.body(2, 64));
        // Bodies larger than the pool are cut to it rather than panicking.
        assert_eq!(random.body(0, 4 << 20).len(), random.bytes.len());
    }
}
