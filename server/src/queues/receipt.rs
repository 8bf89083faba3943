//! Delivery receipts: what names one lease, so a settlement that echoes its delivery's
//! receipt settles that lease and no other.
//!
//! A message's partition, offset and attempt do not name a lease on their own: a queue
//! deleted and created again under its name, or a pattern queue's topic deleted and
//! created again, delivers its new messages at the same positions with the same
//! attempts. A receipt adds what tells them apart: the broker run, the engine that made
//! the delivery (each [`Part`](super::Part) opened in a run has its own number, and a
//! run opens a storage queue once: a new one is a queue or topic created again), and the
//! member it was leased to. Text: `<run ms, hex>.<part, decimal>.<member id>`; the
//! member id comes last, so it may hold any character.

use std::sync::atomic::{AtomicU64, Ordering};

/// Longest member id a receipt holds: `receive:` and a Receive's member name (at most
/// 255 bytes); a Consume member's id (`member-<hex>-<n>`) is shorter.
const HOLDER_BYTES_MAX: usize = "receive:".len() + 255;
/// Longest receipt: the run (16 hex digits), the part (20 digits), two dots, the
/// member id.
pub const RECEIPT_BYTES_MAX: usize = 16 + 1 + 20 + 1 + HOLDER_BYTES_MAX;

/// The number of the next part opened in this process.
static NEXT_PART: AtomicU64 = AtomicU64::new(1);

/// A number for a part opened now, never given to another in this process.
pub fn next_part() -> u64 {
    NEXT_PART.fetch_add(1, Ordering::Relaxed)
}

/// A lease as its receipt names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The broker run that delivered it (its start, ms since the epoch).
    pub run_ms: u64,
    /// The part (the engine of one incarnation of a storage queue) that delivered it.
    pub part: u64,
    /// The member id it was leased to.
    pub holder: String,
}

impl Receipt {
    /// The receipt's text.
    pub fn encode(run_ms: u64, part: u64, holder: &str) -> String {
        format!("{run_ms:x}.{part}.{holder}")
    }

    /// The receipt `text` names, or why it is not one this broker makes.
    pub fn parse(text: &str) -> Result<Receipt, String> {
        let bad = || {
            format!(
                "receipt {:?} is not one the broker made: send QueueDelivery.receipt as it came, or none",
                tidelog_storage::queue::state::truncate_utf8(text, 64)
            )
        };
        if text.len() > RECEIPT_BYTES_MAX {
            return Err(bad());
        }
        let mut fields = text.splitn(3, '.');
        let (Some(run), Some(part), Some(holder)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad());
        };
        let run_ms = u64::from_str_radix(run, 16).map_err(|_| bad())?;
        let part = part.parse::<u64>().map_err(|_| bad())?;
        if holder.is_empty() {
            return Err(bad());
        }
        Ok(Receipt {
            run_ms,
            part,
            holder: holder.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_reads_back_as_written_whatever_its_member_name_holds() {
        for holder in ["receive:A", "member-18c-7", "receive:a.b.c", "receive:é"] {
            let text = Receipt::encode(0x18c3_a0f2_11aa, 42, holder);
            assert_eq!(
                Receipt::parse(&text),
                Ok(Receipt {
                    run_ms: 0x18c3_a0f2_11aa,
                    part: 42,
                    holder: holder.to_string()
                })
            );
        }
        let longest = Receipt::encode(u64::MAX, u64::MAX, &"x".repeat(HOLDER_BYTES_MAX));
        assert_eq!(longest.len(), RECEIPT_BYTES_MAX);
        assert!(Receipt::parse(&longest).is_ok());
    }

    #[test]
    fn a_receipt_the_broker_did_not_make_is_refused() {
        for text in [
            "x",
            "1.2",
            "1.2.",
            "zz.2.receive:A",
            "1.-2.receive:A",
            ".2.a",
        ] {
            assert!(Receipt::parse(text).is_err(), "{text:?}");
        }
        assert!(Receipt::parse(&format!("1.2.{}", "x".repeat(RECEIPT_BYTES_MAX))).is_err());
    }
}
