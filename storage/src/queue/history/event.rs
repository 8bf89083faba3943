//! [`HistoryEvent`]: one thing that happened to one delivery attempt of a queue, and
//! its bytes as a state-log operation (the history files are state-log files; see
//! [`super`] for the layout and `storage/FORMAT.md` for the table).
//!
//! | at | size | field | rule |
//! |---:|---:|---|---|
//! | 0 | 1 | `kind` u8 | `1` (event) |
//! | 1 | 4 | `partition` u32 | |
//! | 5 | 8 | `offset` u64 | |
//! | 13 | 4 | `attempt` u32 | 1 for the first delivery; 0 for a dead letter of a message never delivered (overflow) |
//! | 17 | 8 | `at_ms` i64 | when it happened (the broker's clock, ms since the epoch) |
//! | 25 | 1 | `outcome` u8 | 1 delivered, 2 extended, 3 acked, 4 nacked, 5 deadline passed, 6 member left, 7 terminated, 8 dead-lettered, 9 released (handed to no one: given back unseen, the attempt taken back; the next delivery has the same attempt number) |
//! | 26 | 8 | `deadline_ms` i64 | delivered, extended: the lease's deadline; else 0 |
//! | 34 | 2 + n | `member` str16 | at most 255 bytes: who held the attempt (empty for an overflow dead letter) |
//! | .. | 2 + n | `reason` str16 | at most 1024 bytes: a nack's, term's or dead letter's reason, else empty |

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::statelog::{DecodeError, LogOp, OpReader, put_str16};

use super::super::state::{MEMBER_BYTES_MAX, REASON_BYTES_MAX, truncate_utf8};

const KIND_EVENT: u8 = 1;

/// The fixed part of an event: every field but the two strings' bytes.
pub const EVENT_BYTES_MIN: usize = 1 + 4 + 8 + 4 + 8 + 1 + 8 + 2 + 2;

/// What happened to an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// Handed to a member (the attempt begins).
    Delivered,
    /// The member said it is still working: the deadline moved.
    Extended,
    /// The member acked it: settled.
    Acked,
    /// The member nacked it (with a reason); it is delivered again after a wait.
    Nacked,
    /// The deadline passed without a settlement.
    DeadlinePassed,
    /// The member holding it left (its stream closed) without settling it.
    MemberLeft,
    /// The member terminated it (with a reason): dead-lettered at once.
    Terminated,
    /// Appended to the dead-letter topic (with the reason): settled.
    DeadLettered,
    /// Never handed to the member (its Receive was cancelled, its stream's connection
    /// dropped before the delivery went out): given back unseen, the attempt taken
    /// back. The message's next delivery has the same attempt number.
    Released,
}

impl Outcome {
    /// Every outcome, in code order.
    pub const ALL: [Outcome; 9] = [
        Outcome::Delivered,
        Outcome::Extended,
        Outcome::Acked,
        Outcome::Nacked,
        Outcome::DeadlinePassed,
        Outcome::MemberLeft,
        Outcome::Terminated,
        Outcome::DeadLettered,
        Outcome::Released,
    ];

    /// Its byte on disk.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Delivered => 1,
            Outcome::Extended => 2,
            Outcome::Acked => 3,
            Outcome::Nacked => 4,
            Outcome::DeadlinePassed => 5,
            Outcome::MemberLeft => 6,
            Outcome::Terminated => 7,
            Outcome::DeadLettered => 8,
            Outcome::Released => 9,
        }
    }

    /// The outcome of a byte on disk, `None` for a byte no build wrote.
    pub fn from_code(code: u8) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.code() == code)
    }

    /// Lower-case words, as the CLI and logs print it.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Extended => "extended",
            Outcome::Acked => "acked",
            Outcome::Nacked => "nacked",
            Outcome::DeadlinePassed => "deadline passed",
            Outcome::MemberLeft => "member left",
            Outcome::Terminated => "terminated",
            Outcome::DeadLettered => "dead-lettered",
            Outcome::Released => "released",
        }
    }

    /// Whether the attempt failed: nacked, or given up (deadline passed, member left).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::Nacked | Outcome::DeadlinePassed | Outcome::MemberLeft
        )
    }
}

/// One thing that happened to one delivery attempt of one message of a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEvent {
    pub partition: u32,
    pub offset: u64,
    /// 1 for the first delivery; 0 for a dead letter of a message never delivered.
    pub attempt: u32,
    /// When it happened, ms since the epoch (the broker's clock).
    pub at_ms: i64,
    pub outcome: Outcome,
    /// The lease's deadline for `Delivered` and `Extended`, else 0.
    pub deadline_ms: i64,
    /// The member that held the attempt (empty for an overflow dead letter).
    pub member: Arc<str>,
    /// The reason of a nack, a term or a dead letter, else empty.
    pub reason: String,
}

impl HistoryEvent {
    /// An event of attempt `attempt` of (`partition`, `offset`); `member` and `reason`
    /// are cut to their limits at a character boundary.
    #[allow(
        clippy::too_many_arguments,
        reason = "every field of the event, named at each call"
    )]
    pub fn new(
        partition: u32,
        offset: u64,
        attempt: u32,
        at_ms: i64,
        outcome: Outcome,
        deadline_ms: i64,
        member: &Arc<str>,
        reason: &str,
    ) -> HistoryEvent {
        HistoryEvent {
            partition,
            offset,
            attempt,
            at_ms,
            outcome,
            deadline_ms,
            member: if member.len() > MEMBER_BYTES_MAX {
                truncate_utf8(member, MEMBER_BYTES_MAX).into()
            } else {
                Arc::clone(member)
            },
            reason: truncate_utf8(reason, REASON_BYTES_MAX).to_string(),
        }
    }
}

impl LogOp for HistoryEvent {
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        if self.member.len() > MEMBER_BYTES_MAX {
            return Err(Error::invalid(format!(
                "member is over {MEMBER_BYTES_MAX} bytes"
            )));
        }
        if self.reason.len() > REASON_BYTES_MAX {
            return Err(Error::invalid(format!(
                "reason is over {REASON_BYTES_MAX} bytes"
            )));
        }
        out.push(KIND_EVENT);
        out.extend_from_slice(&self.partition.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.attempt.to_le_bytes());
        out.extend_from_slice(&self.at_ms.to_le_bytes());
        out.push(self.outcome.code());
        out.extend_from_slice(&self.deadline_ms.to_le_bytes());
        put_str16(out, &self.member);
        put_str16(out, &self.reason);
        Ok(())
    }

    fn decode(r: &mut OpReader<'_>) -> Result<Self, DecodeError> {
        let kind = r.u8("kind")?;
        if kind != KIND_EVENT {
            return Err(r.unknown_kind(kind));
        }
        let partition = r.u32("partition")?;
        let offset = r.u64("offset")?;
        let attempt = r.u32("attempt")?;
        let at_ms = r.i64("at_ms")?;
        let code = r.u8("outcome")?;
        let outcome = Outcome::from_code(code)
            .ok_or_else(|| r.malformed(format!("unknown outcome {code}")))?;
        Ok(HistoryEvent {
            partition,
            offset,
            attempt,
            at_ms,
            outcome,
            deadline_ms: r.i64("deadline_ms")?,
            member: r.str16("member", 0, MEMBER_BYTES_MAX)?.into(),
            reason: r.str16("reason", 0, REASON_BYTES_MAX)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn arb_event() -> impl Strategy<Value = HistoryEvent> {
        (
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<i64>(),
            0usize..8,
            any::<i64>(),
            "[a-z0-9-]{0,30}",
            "\\PC{0,40}",
        )
            .prop_map(
                |(partition, offset, attempt, at_ms, outcome, deadline_ms, member, reason)| {
                    HistoryEvent {
                        partition,
                        offset,
                        attempt,
                        at_ms,
                        outcome: Outcome::ALL[outcome],
                        deadline_ms,
                        member: member.into(),
                        reason,
                    }
                },
            )
    }

    #[test]
    fn codes_round_trip_and_unknown_ones_are_refused() {
        for outcome in Outcome::ALL {
            assert_eq!(Outcome::from_code(outcome.code()), Some(outcome));
        }
        assert_eq!(Outcome::from_code(0), None);
        assert_eq!(Outcome::from_code(10), None);
        let event = HistoryEvent {
            partition: 0,
            offset: 0,
            attempt: 1,
            at_ms: 0,
            outcome: Outcome::Acked,
            deadline_ms: 0,
            member: "".into(),
            reason: String::new(),
        };
        let mut bytes = Vec::new();
        event.encode(&mut bytes).unwrap();
        assert_eq!(bytes.len(), EVENT_BYTES_MIN);
        bytes[25] = 10;
        let error = HistoryEvent::decode(&mut OpReader::new(&bytes)).unwrap_err();
        assert!(error.to_string().contains("unknown outcome 10"), "{error}");
        bytes[0] = 2;
        assert!(HistoryEvent::decode(&mut OpReader::new(&bytes)).is_err());
    }

    #[test]
    fn an_event_over_its_limits_is_refused_before_anything_is_written() {
        let event = HistoryEvent {
            partition: 0,
            offset: 0,
            attempt: 1,
            at_ms: 0,
            outcome: Outcome::Nacked,
            deadline_ms: 0,
            member: "m".repeat(MEMBER_BYTES_MAX + 1).into(),
            reason: String::new(),
        };
        let mut bytes = Vec::new();
        assert!(event.encode(&mut bytes).is_err());
        assert!(bytes.is_empty());
    }

    proptest! {
        #[test]
        fn events_round_trip(event in arb_event()) {
            let mut bytes = Vec::new();
            event.encode(&mut bytes).unwrap();
            let mut reader = OpReader::new(&bytes);
            prop_assert_eq!(HistoryEvent::decode(&mut reader).unwrap(), event);
            prop_assert_eq!(reader.remaining(), 0);
        }

        #[test]
        fn decoding_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
            let _ = HistoryEvent::decode(&mut OpReader::new(&bytes));
        }
    }
}
