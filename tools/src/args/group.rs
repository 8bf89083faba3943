//! `tidelog group ...`: listing, describing and deleting groups, and moving their
//! committed offsets.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::duration;
use crate::spec::{TopicSpec, parse_topic_spec};
use crate::time::parse_datetime_ms;

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer groups.
    #[command(after_help = "Examples:\n  tidelog group list\n  tidelog group list --json")]
    List,

    /// Show a group's members, assignment, committed offsets, end offsets, lag per
    /// partition and the total lag.
    #[command(
        after_help = "Examples:\n  tidelog group describe billing\n  tidelog group describe billing --json"
    )]
    Describe(GroupNameArg),

    /// Delete a group and its committed offsets (it must have no live members).
    #[command(after_help = "Examples:\n  tidelog group delete billing")]
    Delete(GroupNameArg),

    /// Delete a group's committed offsets for one topic (Kafka's --delete-offsets): the
    /// group then starts those partitions by its reset policy. It must have no live members.
    #[command(
        after_help = "Examples:\n  tidelog group delete-offsets --group billing --topic orders\n  tidelog group delete-offsets --group billing --topic orders:0,1"
    )]
    DeleteOffsets(DeleteOffsetsArgs),

    /// Move a group's committed offsets (Kafka's kafka-consumer-groups --reset-offsets).
    ResetOffsets(ResetOffsetsArgs),
}

#[derive(Debug, Args)]
pub struct DeleteOffsetsArgs {
    /// Group id.
    #[arg(short, long)]
    pub group: String,

    /// The topic, optionally with partitions: TOPIC, TOPIC:0,1 or TOPIC:0-3.
    #[arg(long, value_name = "TOPIC[:P,P..]", value_parser = topic_spec)]
    pub topic: TopicSpec,
}

#[derive(Debug, Args)]
pub struct GroupNameArg {
    /// Group id.
    pub group: String,
}

const RESET_EXAMPLES: &str = "\
Examples:
  tidelog group reset-offsets --group billing --topic orders --to-earliest
  tidelog group reset-offsets --group billing --topic orders:0,1 --shift-by -100 --execute
  tidelog group reset-offsets --group billing --all-topics --to-datetime 2026-11-23T08:00:00Z --execute
  tidelog group reset-offsets --group billing --all-topics --by-duration PT30M
  tidelog group reset-offsets --group billing --topic-pattern 'orders\\..*' --to-earliest
  tidelog group reset-offsets --group billing --all-topics --to-current --export > offsets.csv
  tidelog group reset-offsets --group billing --from-file offsets.csv --execute

A dry run (the default) prints the plan and commits nothing; --execute commits it, all
or nothing, and is refused while the group has live members. New offsets are clamped
to each partition's log start and end. --export prints the plan as the
topic,partition,offset,topic_id CSV that --from-file reads: a restore of offsets of a
topic deleted and created again since is refused (empty a row's topic_id to force it);
files of Kafka's three columns are restored unchecked.";

#[derive(Debug, Args)]
#[command(after_help = RESET_EXAMPLES)]
pub struct ResetOffsetsArgs {
    /// Group whose offsets to reset.
    #[arg(short, long, value_name = "GROUP")]
    pub group: String,

    /// A topic, optionally with partitions: TOPIC or TOPIC:0,1 or TOPIC:0-3 (repeatable).
    #[arg(long = "topic", value_name = "TOPIC[:P,P..]", value_parser = topic_spec, conflicts_with = "all_topics")]
    pub topics: Vec<TopicSpec>,

    /// Every topic the group has committed offsets for.
    #[arg(long)]
    pub all_topics: bool,

    /// Every partition of every topic this regular expression matches (whole names,
    /// as `consume --topic-pattern`): what a group on that pattern reads.
    #[arg(long, value_name = "REGEX", conflicts_with_all = ["topics", "all_topics"])]
    pub topic_pattern: Option<String>,

    #[command(flatten)]
    pub mode: ResetMode,

    /// Only show the new offsets (the default).
    #[arg(long, conflicts_with = "execute")]
    pub dry_run: bool,

    /// Commit the new offsets.
    #[arg(long)]
    pub execute: bool,

    /// Print the new offsets as topic,partition,offset,topic_id CSV (for --from-file).
    #[arg(long)]
    pub export: bool,
}

fn topic_spec(text: &str) -> Result<TopicSpec, String> {
    parse_topic_spec(text)
}

fn datetime(text: &str) -> Result<i64, String> {
    parse_datetime_ms(text)
}

/// Exactly one reset mode.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ResetMode {
    /// To each partition's log start.
    #[arg(long)]
    pub to_earliest: bool,

    /// To each partition's end.
    #[arg(long)]
    pub to_latest: bool,

    /// To this offset in every partition of the scope.
    #[arg(long, value_name = "N")]
    pub to_offset: Option<u64>,

    /// To the first message at or after YYYY-MM-DDTHH:mm:SS[.sss][Z|+hh:mm] (UTC without an offset).
    #[arg(long, value_name = "DATETIME", value_parser = datetime)]
    pub to_datetime: Option<i64>,

    /// To the first message at or after now minus this duration (e.g. 30m, 1d12h, or
    /// ISO-8601 PT30M, P1DT12H).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub by_duration: Option<u64>,

    /// Move the committed offsets by ±N (e.g. -100 to re-read the last 100).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub shift_by: Option<i64>,

    /// Keep the committed offsets (lists them; with --export saves them).
    #[arg(long)]
    pub to_current: bool,

    /// To the offsets in a topic,partition,offset[,topic_id] CSV file (as --export writes).
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,
}
