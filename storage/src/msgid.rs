//! Message ids: the broker-assigned form and the one text rule every tool shows ids by.
//!
//! A message id is opaque bytes (1 to [`MESSAGE_ID_BYTES_MAX`]) chosen by the producer,
//! or, on a topic that asks for it, assigned by the broker: 16 bytes, a big-endian
//! 48-bit millisecond timestamp then 80 bits that start random and count up within the
//! millisecond (the ULID layout), so assigned ids sort by time. Their text form is 26
//! characters of Crockford's base32 (`0-9A-Z` without `I L O U`).
//!
//! Text form of any id ([`display`] / [`parse`]): an id that is 16 bytes and not printable
//! text is written in base32 (the assigned form); printable UTF-8 is written as itself;
//! anything else is `0x` and hex. [`parse`] reverses it: `0x`+hex, 26 base32
//! characters, or the text's own bytes.

use std::sync::Mutex;

use crate::limits::MESSAGE_ID_BYTES_MAX;

/// Length of a broker-assigned id.
pub const ASSIGNED_ID_BYTES: usize = 16;
/// Length of an assigned id's base32 text form.
pub const ASSIGNED_ID_TEXT_CHARS: usize = 26;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Writes 16 bytes as 26 Crockford base32 characters (the top two bits of the first
/// character are always zero).
pub fn encode_base32(id: &[u8; ASSIGNED_ID_BYTES]) -> String {
    let value = u128::from_be_bytes(*id);
    (0..ASSIGNED_ID_TEXT_CHARS)
        .rev()
        .map(|i| char::from(CROCKFORD[((value >> (5 * i)) & 31) as usize]))
        .collect()
}

/// Reads 26 Crockford base32 characters (either case; `I`/`L` read as 1, `O` as 0) back
/// into 16 bytes; `None` when the text is not that.
pub fn decode_base32(text: &str) -> Option<[u8; ASSIGNED_ID_BYTES]> {
    if text.len() != ASSIGNED_ID_TEXT_CHARS {
        return None;
    }
    let mut value: u128 = 0;
    for (i, byte) in text.bytes().enumerate() {
        let digit = match byte.to_ascii_uppercase() {
            b'O' => 0,
            b'I' | b'L' => 1,
            b'U' => return None,
            c => CROCKFORD.iter().position(|&d| d == c)? as u128,
        };
        // 26 digits hold 130 bits: the first may only use its low 3.
        if i == 0 && digit > 7 {
            return None;
        }
        value = (value << 5) | digit;
    }
    Some(value.to_be_bytes())
}

/// The text form of an id (see the module docs).
pub fn display(id: &[u8]) -> String {
    let printable = std::str::from_utf8(id)
        .ok()
        .filter(|text| !text.is_empty() && !text.chars().any(char::is_control));
    match (printable, <&[u8; ASSIGNED_ID_BYTES]>::try_from(id)) {
        (Some(text), _) if decode_base32(text).is_none() && !text.starts_with("0x") => {
            text.to_string()
        }
        (None, Ok(assigned)) => encode_base32(assigned),
        _ => {
            let mut hex = String::with_capacity(2 + 2 * id.len());
            hex.push_str("0x");
            for byte in id {
                hex.push_str(&format!("{byte:02x}"));
            }
            hex
        }
    }
}

/// Checks that `id` can be a message id: 1 to [`MESSAGE_ID_BYTES_MAX`] bytes (what a
/// lookup by id is given; the batch encoder checks each record's own).
pub fn check(id: &[u8]) -> crate::Result<()> {
    if id.is_empty() || id.len() > MESSAGE_ID_BYTES_MAX {
        return Err(crate::Error::invalid(format!(
            "a message id is 1 to {MESSAGE_ID_BYTES_MAX} bytes, not {}",
            id.len()
        )));
    }
    Ok(())
}

/// Why a text is not an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseIdError(pub String);

impl std::fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseIdError {}

/// Reads an id from its text form: `0x` and hex digits, 26 base32 characters (an
/// assigned id), or otherwise the text's own bytes.
pub fn parse(text: &str) -> Result<Vec<u8>, ParseIdError> {
    let id = if let Some(hex) = text.strip_prefix("0x") {
        if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseIdError(format!(
                "message id {text:?} starts with 0x but is not an even number of hex digits"
            )));
        }
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0))
            .collect()
    } else if let Some(assigned) = decode_base32(text) {
        assigned.to_vec()
    } else {
        text.as_bytes().to_vec()
    };
    if id.is_empty() || id.len() > MESSAGE_ID_BYTES_MAX {
        return Err(ParseIdError(format!(
            "a message id is 1-{MESSAGE_ID_BYTES_MAX} bytes; {text:?} is {} bytes",
            id.len()
        )));
    }
    Ok(id)
}

/// Assigns time-ordered, unique ids: the ULID layout, monotonic within a process (a
/// clock that steps back keeps counting from the last id instead of going back).
#[derive(Debug)]
pub struct IdGenerator {
    last: Mutex<u128>,
}

impl IdGenerator {
    /// A generator whose random part starts from `seed` (the broker passes a value that
    /// differs per process: see [`process_seed`]).
    pub fn new(seed: u64) -> Self {
        IdGenerator {
            last: Mutex::new(u128::from(seed)),
        }
    }

    /// The next id for a message appended at `now_ms`.
    pub fn next(&self, now_ms: i64) -> [u8; ASSIGNED_ID_BYTES] {
        const RANDOM_BITS: u32 = 80;
        let time = u128::from(u64::try_from(now_ms).unwrap_or(0) & ((1 << 48) - 1));
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let random_mask = (1u128 << RANDOM_BITS) - 1;
        let next = if time > *last >> RANDOM_BITS {
            // A new millisecond: keep the random low bits, clear the top 16 so the
            // counter has room before it would carry into the time.
            (time << RANDOM_BITS) | (*last & random_mask & ((1u128 << 64) - 1))
        } else {
            *last + 1
        };
        *last = next;
        next.to_be_bytes()
    }
}

/// 64 bits that differ between processes and runs, for [`IdGenerator::new`] (std's
/// randomly keyed hasher; no extra crate).
pub fn process_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn base32_round_trips_and_sorts_like_the_bytes() {
        let zero = [0u8; 16];
        assert_eq!(encode_base32(&zero), "0".repeat(26));
        assert_eq!(encode_base32(&[0xff; 16]), format!("7{}", "Z".repeat(25)));
        assert_eq!(decode_base32(&format!("8{}", "0".repeat(25))), None);
        assert_eq!(
            decode_base32("0123456789abcdefghjkmnpqrs").unwrap(),
            decode_base32("0123456789ABCDEFGHJKMNPQRS").unwrap()
        );
    }

    #[test]
    fn assigned_ids_are_ordered_by_time_and_unique() {
        let generator = IdGenerator::new(u64::MAX);
        let mut previous = generator.next(1_700_000_000_000);
        for now in [
            1_700_000_000_000,
            1_700_000_000_000,
            1_700_000_000_001,
            1_699_999_999_999,
        ] {
            let id = generator.next(now);
            assert!(
                id > previous,
                "{} after {}",
                encode_base32(&id),
                encode_base32(&previous)
            );
            previous = id;
        }
        assert_eq!(
            u64::from_be_bytes(previous[..8].try_into().unwrap()) >> 16,
            1_700_000_000_001,
            "the clock stepping back keeps the last time"
        );
    }

    #[test]
    fn text_forms() {
        assert_eq!(display(b"order-17"), "order-17");
        assert_eq!(display(b"a\nb"), "0x610a62");
        let assigned = IdGenerator::new(7).next(1_700_000_000_000);
        assert_eq!(display(&assigned).len(), 26);
        // Text that would read back as something else is written in hex.
        assert_eq!(display(b"0x12"), "0x30783132");
        assert_eq!(parse("0x30783132").unwrap(), b"0x12");
        assert!(parse("0x123").is_err());
        assert!(parse("").is_err());
        assert!(parse(&"x".repeat(129)).is_err());
    }

    proptest! {
        #[test]
        fn every_id_reads_back_from_its_text(id in proptest::collection::vec(any::<u8>(), 1..=128)) {
            prop_assert_eq!(parse(&display(&id)).unwrap(), id);
        }

        #[test]
        fn base32_round_trips(bytes in any::<[u8; 16]>()) {
            prop_assert_eq!(decode_base32(&encode_base32(&bytes)), Some(bytes));
        }
    }
}
