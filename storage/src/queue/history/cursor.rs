//! The listing cursor: where the next page of a delivery listing begins, as opaque text
//! for the client to hand back. Nothing is stored for it on the broker.
//!
//! The text is 58 lower-case hex digits: 29 bytes, all integers little-endian.
//!
//! | at | size | field | rule |
//! |---:|---:|---|---|
//! | 0 | 1 | `version` u8 | `1` |
//! | 1 | 4 | `queue` u32 | CRC-32 of the queue's name, a 0 byte and its `created_ms` (a cursor of another queue, or of a deleted queue of the same name, is refused) |
//! | 5 | 8 | `file_start_ms` i64 | the history file the next page continues in |
//! | 13 | 8 | `position` u64 | events strictly before (`position`, `index`) in that file come next |
//! | 21 | 4 | `index` u32 | |
//! | 25 | 4 | `crc` u32 | CRC-32 of bytes 0..25 (a changed or truncated cursor is refused) |
//!
//! [`ListCursor::decode`] is a fuzz entry point: any text is refused with a reason or
//! accepted, never a panic, and it allocates nothing sized by its input.

use std::fmt;

/// Text length of a cursor.
pub const CURSOR_TEXT_LEN: usize = 2 * CURSOR_BYTES;
const CURSOR_BYTES: usize = 29;
const CURSOR_VERSION: u8 = 1;

/// Where the next page of a listing begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    /// Names the queue (and its incarnation) the cursor belongs to.
    pub queue_tag: u32,
    pub file_start_ms: i64,
    pub position: u64,
    pub index: u32,
}

/// Why a cursor was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorError {
    /// Not a cursor at all, or one cut short or changed.
    Malformed(String),
    /// A cursor of another queue (or of an earlier queue of the same name).
    OtherQueue,
}

impl fmt::Display for CursorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CursorError::Malformed(reason) => write!(f, "{reason}"),
            CursorError::OtherQueue => write!(f, "the cursor belongs to another queue"),
        }
    }
}

/// The tag of queue `name` created at `created_ms`.
pub fn queue_tag(name: &str, created_ms: i64) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(name.as_bytes());
    hasher.update(&[0]);
    hasher.update(&created_ms.to_le_bytes());
    hasher.finalize()
}

impl ListCursor {
    /// The cursor's text.
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; CURSOR_BYTES];
        bytes[0] = CURSOR_VERSION;
        bytes[1..5].copy_from_slice(&self.queue_tag.to_le_bytes());
        bytes[5..13].copy_from_slice(&self.file_start_ms.to_le_bytes());
        bytes[13..21].copy_from_slice(&self.position.to_le_bytes());
        bytes[21..25].copy_from_slice(&self.index.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..25]);
        bytes[25..29].copy_from_slice(&crc.to_le_bytes());
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads a cursor's text, checking it belongs to the queue tagged `queue_tag`.
    pub fn decode(text: &str, queue_tag: u32) -> Result<ListCursor, CursorError> {
        if text.len() != CURSOR_TEXT_LEN {
            return Err(CursorError::Malformed(format!(
                "a cursor is {CURSOR_TEXT_LEN} characters, this one {} (cut short or not a cursor)",
                text.len()
            )));
        }
        let mut bytes = [0u8; CURSOR_BYTES];
        for (i, pair) in text.as_bytes().chunks_exact(2).enumerate() {
            let (Some(high), Some(low)) = (hex(pair[0]), hex(pair[1])) else {
                return Err(CursorError::Malformed(
                    "a cursor holds only the hex digits 0-9 and a-f".into(),
                ));
            };
            if let Some(byte) = bytes.get_mut(i) {
                *byte = high << 4 | low;
            }
        }
        let stored = u32::from_le_bytes([bytes[25], bytes[26], bytes[27], bytes[28]]);
        if crc32fast::hash(&bytes[..25]) != stored {
            return Err(CursorError::Malformed(
                "the cursor's checksum does not match (changed or not a cursor)".into(),
            ));
        }
        if bytes[0] != CURSOR_VERSION {
            return Err(CursorError::Malformed(format!(
                "cursor version {} is not {CURSOR_VERSION}",
                bytes[0]
            )));
        }
        let tag = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        if tag != queue_tag {
            return Err(CursorError::OtherQueue);
        }
        let mut i64_at = [0u8; 8];
        i64_at.copy_from_slice(&bytes[5..13]);
        let file_start_ms = i64::from_le_bytes(i64_at);
        i64_at.copy_from_slice(&bytes[13..21]);
        let position = u64::from_le_bytes(i64_at);
        let index = u32::from_le_bytes([bytes[21], bytes[22], bytes[23], bytes[24]]);
        Ok(ListCursor {
            queue_tag: tag,
            file_start_ms,
            position,
            index,
        })
    }
}

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bad_cursors_say_what_is_wrong() {
        let tag = queue_tag("q", 1);
        let cursor = ListCursor {
            queue_tag: tag,
            file_start_ms: 1_700_000_000_000,
            position: 4096,
            index: 3,
        };
        let text = cursor.encode();
        assert_eq!(text.len(), CURSOR_TEXT_LEN);
        assert_eq!(ListCursor::decode(&text, tag), Ok(cursor));
        let reason = |text: &str| ListCursor::decode(text, tag).unwrap_err().to_string();
        assert!(reason(&text[..20]).contains("cut short"));
        assert!(reason("").contains("cut short"));
        assert!(reason(&"zz".repeat(29)).contains("hex"));
        assert!(reason(&"é".repeat(29)).contains("hex"));
        let mut changed = text.clone().into_bytes();
        changed[40] = if changed[40] == b'0' { b'1' } else { b'0' };
        assert!(reason(&String::from_utf8(changed).unwrap()).contains("checksum"));
        assert_eq!(
            ListCursor::decode(&text, queue_tag("q", 2)),
            Err(CursorError::OtherQueue),
            "a queue deleted and created again refuses the old queue's cursors"
        );
        assert_eq!(
            ListCursor::decode(&text, queue_tag("other", 1)),
            Err(CursorError::OtherQueue)
        );
    }

    proptest! {
        #[test]
        fn cursors_round_trip(file in any::<i64>(), position in any::<u64>(), index in any::<u32>(), tag in any::<u32>()) {
            let cursor = ListCursor { queue_tag: tag, file_start_ms: file, position, index };
            prop_assert_eq!(ListCursor::decode(&cursor.encode(), tag), Ok(cursor));
        }

        #[test]
        fn any_text_is_refused_or_read_never_a_panic(text in "\\PC{0,70}", tag in any::<u32>()) {
            let _ = ListCursor::decode(&text, tag);
        }
    }
}
