//! The offset-reset computation of `Groups.ResetOffsets`, kept pure: given what is
//! known about each partition (the group's committed offset, the log bounds and, for
//! the time-based modes, the result of the time-index lookup) and the requested
//! target, it returns the new committed offset. The RPC handler gathers the inputs
//! (reads the offsets store, asks the partitions) and commits the outputs; everything
//! in between is here, so each mode is unit-tested without a broker.
//!
//! The modes are those of Kafka's `kafka-consumer-groups --reset-offsets`:
//!
//! | mode | new offset | partitions without a committed offset |
//! |---|---|---|
//! | to-earliest | `log_start` | included |
//! | to-latest | `end` | included |
//! | to-offset N | `N` | included |
//! | to-datetime T | first offset whose timestamp is `>= T`, else `end` | included |
//! | by-duration D | like to-datetime with `T = now - D` (broker clock) | included |
//! | shift-by N | `committed + N` (N may be negative) | left out |
//! | to-current | `committed` | left out |
//! | explicit (from-file) | the listed offset | included |
//!
//! Every result is clamped to `[log_start, end]`, as Kafka does (and, as its tool warns,
//! the response says so: [`NewOffset::clamped_from`]): an offset below the
//! log start would only be reset again by the consumer's policy, one above the end
//! would skip messages not yet written.

/// Where a reset moves one partition, with time-based modes already turned into a
/// timestamp (see [`datetime_target`] and [`duration_target`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Earliest,
    Latest,
    Offset(u64),
    /// The first offset at or after this timestamp (ms since the Unix epoch); the
    /// caller looks it up and passes it as [`PartitionState::offset_for_timestamp`].
    Timestamp(i64),
    ShiftBy(i64),
    Current,
}

impl Target {
    /// The timestamp whose offset the caller must look up, if this target needs one.
    pub fn lookup_timestamp(self) -> Option<i64> {
        match self {
            Target::Timestamp(ms) => Some(ms),
            _ => None,
        }
    }
}

/// What is known about one partition when a reset is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionState {
    /// The group's committed offset, if any.
    pub committed: Option<u64>,
    /// The partition's log start offset.
    pub log_start: u64,
    /// The partition's end offset (high watermark).
    pub end: u64,
    /// For [`Target::Timestamp`]: the first offset whose timestamp is at or after the
    /// target, `None` when every visible message is older. Ignored by other targets.
    pub offset_for_timestamp: Option<u64>,
}

/// The to-datetime target.
pub fn datetime_target(timestamp_ms: i64) -> Target {
    Target::Timestamp(timestamp_ms)
}

/// The by-duration target: `now_ms - duration_ms`, saturating (a duration longer than
/// the epoch means "from the beginning").
pub fn duration_target(now_ms: i64, duration_ms: u64) -> Target {
    let duration = i64::try_from(duration_ms).unwrap_or(i64::MAX);
    Target::Timestamp(now_ms.saturating_sub(duration))
}

/// Clamps `offset` to `[log_start, end]`. Never panics, even if the bounds were read
/// in a moment when they crossed (`log_start > end` is not supposed to happen; then
/// `log_start` wins, since offsets below it are gone).
pub fn clamp(offset: u64, log_start: u64, end: u64) -> u64 {
    offset.min(end).max(log_start)
}

/// Where a reset moves one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewOffset {
    /// The new committed offset, within `[log_start, end]`.
    pub offset: u64,
    /// The offset the mode asked for, when it lay outside `[log_start, end]` and
    /// [`clamp`] moved it (Kafka's tool warns then; so does `tidelog`): negative when a
    /// shift-by went below 0, saturated at the ends of `i64`.
    pub clamped_from: Option<i64>,
}

/// The new committed offset for one partition, or `None` when the mode leaves the
/// partition out (shift-by and to-current without a committed offset).
pub fn new_offset(target: Target, state: &PartitionState) -> Option<NewOffset> {
    let PartitionState {
        committed,
        log_start,
        end,
        offset_for_timestamp,
    } = *state;
    // Wide enough for any u64 offset shifted by any i64.
    let raw: i128 = match target {
        Target::Earliest => log_start.into(),
        Target::Latest => end.into(),
        Target::Offset(offset) => offset.into(),
        Target::Timestamp(_) => offset_for_timestamp.unwrap_or(end).into(),
        Target::ShiftBy(delta) => i128::from(committed?) + i128::from(delta),
        Target::Current => committed?.into(),
    };
    let offset = clamp(
        u64::try_from(raw.max(0)).unwrap_or(u64::MAX),
        log_start,
        end,
    );
    let saturated = i64::try_from(raw).unwrap_or(if raw < 0 { i64::MIN } else { i64::MAX });
    Some(NewOffset {
        offset,
        clamped_from: (i128::from(offset) != raw).then_some(saturated),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Just the new offset of [`new_offset`].
    fn offset(target: Target, state: &PartitionState) -> Option<u64> {
        new_offset(target, state).map(|moved| moved.offset)
    }

    #[test]
    fn a_clamped_offset_says_what_was_asked() {
        let asked = |target| new_offset(target, &state()).and_then(|m| m.clamped_from);
        // Inside the log: nothing to say.
        assert_eq!(asked(Target::Offset(120)), None);
        assert_eq!(asked(Target::Offset(200)), None);
        assert_eq!(asked(Target::ShiftBy(10)), None);
        // Past the end, before the log start, or a commit retention overtook.
        assert_eq!(
            new_offset(Target::Offset(10_000), &state()),
            Some(NewOffset {
                offset: 200,
                clamped_from: Some(10_000)
            })
        );
        assert_eq!(asked(Target::Offset(5)), Some(5));
        assert_eq!(asked(Target::ShiftBy(-100)), Some(50));
        // Below offset 0: what was asked, not 0.
        assert_eq!(asked(Target::ShiftBy(-4_000)), Some(-3_850));
        let from_zero = PartitionState {
            log_start: 0,
            ..state()
        };
        assert_eq!(
            new_offset(Target::ShiftBy(-4_000), &from_zero),
            Some(NewOffset {
                offset: 0,
                clamped_from: Some(-3_850)
            })
        );
        // Past what i64 holds: saturated, and still clamped to the end.
        assert_eq!(asked(Target::Offset(u64::MAX)), Some(i64::MAX));
        assert_eq!(asked(Target::ShiftBy(i64::MIN)), Some(i64::MIN + 150));
        let behind = PartitionState {
            committed: Some(40),
            ..state()
        };
        assert_eq!(
            new_offset(Target::Current, &behind).and_then(|m| m.clamped_from),
            Some(40)
        );
        // The bounds themselves never clamp.
        assert_eq!(asked(Target::Earliest), None);
        assert_eq!(asked(Target::Latest), None);
        assert_eq!(asked(datetime_target(0)), None);
    }

    /// A partition holding offsets 100..200 with a commit at 150, where the first
    /// message at or after the looked-up timestamp is 170.
    fn state() -> PartitionState {
        PartitionState {
            committed: Some(150),
            log_start: 100,
            end: 200,
            offset_for_timestamp: Some(170),
        }
    }

    fn uncommitted() -> PartitionState {
        PartitionState {
            committed: None,
            ..state()
        }
    }

    #[test]
    fn to_earliest_is_log_start_with_or_without_commit() {
        assert_eq!(offset(Target::Earliest, &state()), Some(100));
        assert_eq!(offset(Target::Earliest, &uncommitted()), Some(100));
    }

    #[test]
    fn to_latest_is_end_with_or_without_commit() {
        assert_eq!(offset(Target::Latest, &state()), Some(200));
        assert_eq!(offset(Target::Latest, &uncommitted()), Some(200));
    }

    #[test]
    fn to_offset_is_clamped_to_the_log() {
        assert_eq!(offset(Target::Offset(120), &state()), Some(120));
        assert_eq!(offset(Target::Offset(5), &state()), Some(100));
        assert_eq!(offset(Target::Offset(10_000), &state()), Some(200));
        assert_eq!(offset(Target::Offset(200), &uncommitted()), Some(200));
        assert_eq!(offset(Target::Offset(u64::MAX), &state()), Some(200));
    }

    #[test]
    fn to_datetime_uses_the_time_lookup_or_the_end() {
        let target = datetime_target(1_700_000_000_000);
        assert_eq!(target.lookup_timestamp(), Some(1_700_000_000_000));
        assert_eq!(offset(target, &state()), Some(170));
        let none_newer = PartitionState {
            offset_for_timestamp: None,
            ..state()
        };
        assert_eq!(offset(target, &none_newer), Some(200));
        assert_eq!(offset(target, &uncommitted()), Some(170));
    }

    #[test]
    fn by_duration_looks_back_from_now() {
        assert_eq!(duration_target(10_000, 3_000), Target::Timestamp(7_000));
        assert_eq!(duration_target(10_000, 0), Target::Timestamp(10_000));
        // Longer than the epoch: from the beginning, no overflow.
        assert_eq!(
            duration_target(10_000, u64::MAX),
            Target::Timestamp(10_000 - i64::MAX)
        );
        assert_eq!(duration_target(i64::MIN, 5), Target::Timestamp(i64::MIN));
        assert_eq!(offset(duration_target(10_000, 3_000), &state()), Some(170));
    }

    #[test]
    fn shift_by_moves_from_the_commit_and_clamps() {
        assert_eq!(offset(Target::ShiftBy(10), &state()), Some(160));
        assert_eq!(offset(Target::ShiftBy(-10), &state()), Some(140));
        assert_eq!(offset(Target::ShiftBy(0), &state()), Some(150));
        assert_eq!(offset(Target::ShiftBy(-1_000), &state()), Some(100));
        assert_eq!(offset(Target::ShiftBy(1_000), &state()), Some(200));
        assert_eq!(offset(Target::ShiftBy(i64::MAX), &state()), Some(200));
        assert_eq!(offset(Target::ShiftBy(i64::MIN), &state()), Some(100));
    }

    #[test]
    fn shift_by_leaves_out_partitions_without_a_commit() {
        assert_eq!(offset(Target::ShiftBy(5), &uncommitted()), None);
    }

    #[test]
    fn to_current_keeps_the_commit_clamped_and_skips_uncommitted() {
        assert_eq!(offset(Target::Current, &state()), Some(150));
        assert_eq!(offset(Target::Current, &uncommitted()), None);
        // Retention moved the log start past the commit.
        let behind = PartitionState {
            committed: Some(40),
            ..state()
        };
        assert_eq!(offset(Target::Current, &behind), Some(100));
    }

    #[test]
    fn explicit_offsets_are_offset_targets() {
        // An explicit list is one Target::Offset per listed partition.
        assert_eq!(offset(Target::Offset(180), &uncommitted()), Some(180));
    }

    #[test]
    fn empty_partition_resets_to_zero() {
        let empty = PartitionState::default();
        for target in [
            Target::Earliest,
            Target::Latest,
            Target::Offset(7),
            Target::Timestamp(0),
        ] {
            assert_eq!(offset(target, &empty), Some(0), "{target:?}");
        }
    }

    #[test]
    fn crossed_bounds_never_panic() {
        assert_eq!(clamp(5, 10, 3), 10);
        let crossed = PartitionState {
            committed: Some(1),
            log_start: 10,
            end: 3,
            offset_for_timestamp: None,
        };
        assert_eq!(offset(Target::Current, &crossed), Some(10));
    }
}
