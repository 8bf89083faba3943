//! Where reading starts: the topic's partitions, offsets by time, a `--from` offset
//! outside the log under `--offset-reset`, and the note when the broker moved a
//! position.

use std::collections::BTreeMap;

use tidelog_proto::v1::{
    ResetOffsetsRequest, ResetReason, TopicDescription, reset_offsets_request,
};

use crate::args::{ConsumeArgs, ResetPolicyArg};
use crate::client::Broker;
use crate::error::{CliError, CliResult};
use crate::output::note;
use crate::terms::half_open;
use crate::topic::describe;

/// Group id used for dry-run offset lookups by time; a dry run never commits, so
/// the group is never created.
const LOOKUP_GROUP: &str = "tidelog-cli.offset-lookup";

/// The topic, and the chosen partitions checked against it.
pub(super) async fn topic_and_partitions(
    broker: &Broker,
    args: &ConsumeArgs,
) -> CliResult<(TopicDescription, Vec<u32>)> {
    let topic = describe(broker, &args.topic).await?.ok_or_else(|| {
        CliError::failure(
            format!("describing topic {:?} failed: empty answer", args.topic),
            "check that tidelogd and tidelog are the same version",
        )
    })?;
    let count = topic.partitions.len() as u32;
    let mut chosen = args.partition.clone();
    chosen.sort_unstable();
    chosen.dedup();
    if let Some(&bad) = chosen.iter().find(|&&p| p >= count) {
        return Err(CliError::failure(
            tidelog_storage::topic::no_such_partition(&args.topic, count as usize, bad),
            "pick an existing partition",
        ));
    }
    if chosen.is_empty() {
        chosen = (0..count).collect();
    }
    Ok((topic, chosen))
}

/// The first offset at or after `timestamp_ms` in each partition (or its end), by a
/// dry-run reset, which computes exactly that and commits nothing.
pub(super) async fn offsets_for_time(
    broker: &Broker,
    topic: &str,
    partitions: &[u32],
    timestamp_ms: i64,
) -> CliResult<BTreeMap<u32, u64>> {
    let context = format!("looking up offsets of topic {topic:?} by time");
    let changes = broker
        .groups()
        .reset_offsets(ResetOffsetsRequest {
            group_id: LOOKUP_GROUP.into(),
            scope: Some(reset_offsets_request::Scope::Topic(
                reset_offsets_request::TopicScope {
                    topic: topic.into(),
                    partitions: partitions.to_vec(),
                },
            )),
            spec: Some(reset_offsets_request::Spec::ToDatetimeMs(timestamp_ms)),
            execute: false,
        })
        .await
        .map_err(|s| broker.error(&context, &s))?
        .into_inner()
        .changes;
    Ok(changes
        .into_iter()
        .map(|c| (c.partition, c.new_offset))
        .collect())
}

/// Where a `--from <offset>` outside `log_start..=end` starts, by `--offset-reset`
/// (the same rule the broker applies with --follow): the log start with a note, the
/// end with a note, or an error naming the offsets and what to do.
pub(super) fn out_of_range_start(
    args: &ConsumeArgs,
    partition: u32,
    offset: u64,
    log_start: u64,
    end: u64,
) -> CliResult<u64> {
    let position = if offset < log_start {
        format!("below the log start {log_start}")
    } else {
        format!("past the end {end}")
    };
    let (to, whereto) = match args.offset_reset {
        ResetPolicyArg::Earliest => (log_start, format!("starting at the log start {log_start}")),
        ResetPolicyArg::Latest => (end, format!("starting at the end {end}")),
        ResetPolicyArg::Error => {
            return Err(CliError::failure(
                format!(
                    "offset {offset} of {}/{partition} is {position}: the partition holds offsets {}, and --offset-reset is error",
                    args.topic,
                    half_open(log_start, end)
                ),
                OUT_OF_RANGE_TODO,
            ));
        }
    };
    note(&format!(
        "note: partition {partition}: offset {offset} is {position}; {whereto} (--offset-reset {})",
        match args.offset_reset {
            ResetPolicyArg::Latest => "latest",
            _ => "earliest",
        }
    ));
    Ok(to)
}

/// What to do about a position out of range with `--offset-reset error`.
pub(super) const OUT_OF_RANGE_TODO: &str = "start inside that range (--from earliest, --from latest or an offset in it), or let --offset-reset earliest or latest move the position";

/// Tells the operator a position moved, unless it is the ordinary start of a group
/// that has not committed anything yet.
pub(super) fn reset_note(reset: &tidelog_proto::v1::PositionReset) {
    let why = match ResetReason::try_from(reset.reason) {
        Ok(ResetReason::BelowLogStart) => "was below the log start (retention or TTL removed it)",
        Ok(ResetReason::AboveEndOffset) => "was past the end",
        Ok(ResetReason::NoCommittedOffset) => return,
        Ok(ResetReason::TopicRecreated) => {
            "was read in a topic of this name that was deleted since (it was created again): the new topic is read from its start"
        }
        _ => "was out of range",
    };
    let from = reset.from_offset.map_or(String::new(), |o| format!(" {o}"));
    // A pattern stream's resets name their topic; a one-topic stream's do not.
    let topic = if reset.topic.is_empty() {
        String::new()
    } else {
        format!("{}/", reset.topic)
    };
    note(&format!(
        "note: partition {topic}{}: position{from} {why}; continuing at {}",
        reset.partition, reset.to_offset
    ));
}

/// [`reset_note`] for a position a tidelog-client `Subscription` reset.
pub(super) fn client_reset_note(reset: &tidelog_client::PositionReset) {
    use tidelog_client::ResetReason as Why;
    let reason = match reset.reason {
        Why::BelowLogStart => ResetReason::BelowLogStart,
        Why::AboveEndOffset => ResetReason::AboveEndOffset,
        Why::NoCommittedOffset => ResetReason::NoCommittedOffset,
        Why::TopicRecreated => ResetReason::TopicRecreated,
        _ => ResetReason::Unspecified,
    };
    reset_note(&tidelog_proto::v1::PositionReset {
        partition: reset.partition,
        from_offset: reset.from_offset,
        to_offset: reset.to_offset,
        reason: reason as i32,
        topic: reset.topic.to_string(),
        topic_id: 0,
    });
}
