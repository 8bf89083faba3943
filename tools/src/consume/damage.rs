//! Damaged batches: the broker never serves them (DATA_LOSS). Which partition stopped
//! where, the offset past the damaged batch, and the error that names them all.

use crate::error::{CliError, CliResult};
use crate::output::note;
use crate::terms::to_cli;

/// A partition that could not be read past a damaged batch (DATA_LOSS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Damage {
    pub(super) partition: u32,
    /// The offset whose read failed: the damaged batch holds it (or the first
    /// message after it).
    pub(super) offset: u64,
    /// What the broker found, without its advice in API terms.
    pub(super) cause: String,
}

/// The offset after the damaged batch, when the broker's message (in the CLI's terms)
/// names the batch's offsets ("... in the batch holding offsets 97-127").
pub(super) fn past_damaged_batch(cause: &str) -> Option<u64> {
    let (_, rest) = cause.split_once("holding offsets ")?;
    let digits = |s: &str| -> Option<(u64, usize)> {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        Some((s[..n].parse().ok()?, n))
    };
    let (first, used) = digits(rest)?;
    let last = match rest[used..].strip_prefix('-') {
        Some(after) => digits(after)?.0,
        None => first,
    };
    last.checked_add(1)
}

impl Damage {
    pub(super) fn new(partition: u32, offset: u64, status: &tonic::Status) -> Self {
        Damage {
            partition,
            offset,
            cause: to_cli(
                status
                    .message()
                    .split("; ")
                    .next()
                    .unwrap_or_default()
                    .trim(),
            ),
        }
    }

    /// Said at once, so the order of the output shows where reading stopped.
    pub(super) fn warn(&self, topic: &str) {
        note(&format!(
            "warning: {topic}/{}: a damaged batch at offset {} (DATA_LOSS: {}); the messages \
             before it were printed, reading goes on with the other partitions",
            self.partition, self.offset, self.cause
        ));
    }
}

/// What to do about damaged batches: the broker never serves them.
pub(super) const DAMAGE_TODO: &str = "stop tidelogd and run `tidelog segment verify` on its data directory \
     to see the damage (then `tidelog segment repair`)";

/// Exit 1 naming every partition that stopped at a damaged batch, or `Ok`.
pub(super) fn damage_error(topic: &str, damaged: &[Damage]) -> CliResult<()> {
    match damaged {
        [] => Ok(()),
        [one] => Err(CliError::failure(
            format!(
                "partition {} of topic {topic:?} could not be read past offset {}: the batch \
                 there is damaged (DATA_LOSS: {})",
                one.partition, one.offset, one.cause
            ),
            match past_damaged_batch(&one.cause) {
                Some(next) => format!(
                    "{DAMAGE_TODO}; to read on past it: `tidelog consume {topic} -p {} --from {next}`",
                    one.partition
                ),
                None => format!("{DAMAGE_TODO}; to read on, --from an offset past the batch"),
            },
        )
        .with_code(tonic::Code::DataLoss)),
        several => Err(CliError::failure(
            format!(
                "{} partitions of topic {topic:?} could not be read past a damaged batch \
                 (DATA_LOSS): {}",
                several.len(),
                several
                    .iter()
                    .map(|d| format!("partition {} at offset {}", d.partition, d.offset))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            DAMAGE_TODO,
        )
        .with_code(tonic::Code::DataLoss)),
    }
}

/// A partition recovery refused to open (`PartitionDescription.unavailable`): the
/// broker refuses every read of it until an operator repairs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unavailable {
    pub(super) partition: u32,
    /// Why recovery refused it and what to do (the broker's reason, in the CLI's
    /// terms).
    pub(super) reason: String,
}

impl Unavailable {
    pub(super) fn new(partition: u32, reason: &str) -> Self {
        Unavailable {
            partition,
            reason: to_cli(reason),
        }
    }

    /// Said at once, where its messages would have come (the error at the end says
    /// why and what to do).
    pub(super) fn warn(&self, topic: &str) {
        note(&format!(
            "warning: {topic}/{}: the partition is unavailable (recovery refused to open \
             it), nothing of it was read; reading goes on with the other partitions",
            self.partition
        ));
    }
}

/// Exit 1 (UNAVAILABLE) naming every partition that was skipped as unavailable, with
/// the broker's reason and advice, or `Ok`.
pub(super) fn unavailable_error(topic: &str, unavailable: &[Unavailable]) -> CliResult<()> {
    let Some(first) = unavailable.first() else {
        return Ok(());
    };
    let names: Vec<String> = unavailable
        .iter()
        .map(|u| u.partition.to_string())
        .collect();
    let more = if unavailable.len() > 1 {
        " (the others' reasons: `tidelog topic describe`)"
    } else {
        ""
    };
    Err(CliError::plain(format!(
        "partition{} {} of topic {topic:?} {} not read: {}{more}",
        if names.len() == 1 { "" } else { "s" },
        names.join(", "),
        if names.len() == 1 { "was" } else { "were" },
        first.reason,
    ))
    .with_code(tonic::Code::Unavailable))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_past_a_damaged_batch_comes_from_the_brokers_message() {
        assert_eq!(
            past_damaged_batch(
                "corrupt data in /d/topics/o/1/0.log at byte 1224: CRC mismatch in the batch \
                 holding offsets 97-127"
            ),
            Some(128)
        );
        assert_eq!(past_damaged_batch("holding offsets 5"), Some(6));
        assert_eq!(
            past_damaged_batch("corrupt data in x at byte 0: bad length"),
            None
        );
        assert_eq!(past_damaged_batch("holding offsets x"), None);
    }
}
