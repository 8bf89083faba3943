//! The `tidelog queue` command line. Every value is parsed and range-checked here, so
//! a bad flag is a usage error (exit 2) naming the flag before anything is sent.

use std::ffi::OsString;

use clap::{Args, Subcommand};
use tidelog_storage::queue::state::{
    ACK_DEADLINE_MS_MIN, HISTORY_ATTEMPTS_MAX, HISTORY_RETENTION_MS_MAX,
    MAX_UNACKED_PER_MEMBER_MAX, QUEUE_DELAY_MS_MAX,
};

use crate::args::{Format, duration, header, separator};
use crate::error::{CliError, CliResult};
use crate::time::parse_datetime_ms;

/// `tidelog queue ...`.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Create a work queue on a topic.
    #[command(after_help = CREATE_EXAMPLES)]
    Create(QueueCreateArgs),

    /// List queues with their backlog and members.
    #[command(
        after_help = "Examples:\n  tidelog queue list\n  tidelog queue list --topic orders --json"
    )]
    List(QueueListArgs),

    /// Show a queue's settings, counts, members and partitions.
    #[command(
        after_help = "Examples:\n  tidelog queue describe billing\n  tidelog queue describe billing --json\n\nready: stored and not delivered yet (or due for a redelivery); delayed: waiting for\ntheir deliver-at time; unacked: delivered, not settled yet; waiting: nacked or timed\nout, waiting for their backoff before the next delivery."
    )]
    Describe(QueueNameArg),

    /// Change a queue's settings (deliveries already made keep their deadline).
    #[command(
        after_help = "Examples:\n  tidelog queue alter billing --ack-deadline 2m\n  tidelog queue alter billing --max-deliveries unlimited --backoff 5s..10m"
    )]
    Alter(QueueAlterArgs),

    /// Delete a queue and its delivery state (not its topic, not its dead letters).
    #[command(after_help = "Examples:\n  tidelog queue delete billing")]
    Delete(QueueNameArg),

    /// Settle every message the queue has not settled, without delivering it.
    #[command(
        after_help = "Examples:\n  tidelog queue purge billing\n\nThe messages stay in the topic (consumer groups and other queues still see them);\nthis queue skips them. Deliveries in progress are settled too: their acks then fail."
    )]
    Purge(QueueNameArg),

    /// Publish a queue's dead letters back to its topic, until none is left.
    #[command(
        after_help = "Examples:\n  tidelog queue redrive billing\n  tidelog queue redrive billing --batch 100 --json\n\nEach dead letter goes back to the partition it came from, without the tidelog-dlq-*\nheaders, as a new message (a new offset, attempt 1 again)."
    )]
    Redrive(QueueRedriveArgs),

    /// Print a queue's messages and ack each once it is printed.
    #[command(after_help = CONSUME_EXAMPLES)]
    Consume(QueueConsumeArgs),

    /// Run a command once per message: ack on exit 0, nack with its stderr otherwise.
    #[command(after_help = WORK_EXAMPLES)]
    Work(QueueWorkArgs),

    /// List a queue's delivery events newest first: deliveries, acks, nacks, deadlines
    /// passed, terms, dead letters, filtered by kind, time and header.
    #[command(after_help = DELIVERIES_EXAMPLES)]
    Deliveries(QueueDeliveriesArgs),
}

const DELIVERIES_EXAMPLES: &str = "\
Examples:
  tidelog queue deliveries billing --state dead-lettered --since 1h
  tidelog queue deliveries billing --state failed --header tenant=acme --limit 20
  tidelog queue deliveries billing --since 2026-11-23T10:00:00Z --until 2026-11-23T11:00:00Z --json

--since and --until take a duration back from now (1h, 30m, 7d) or a date-time.
A page holds at most --limit events (default 100, at most 1000); when there are more,
the last line gives the --cursor for the next page. Only events within the queue's
--history-retention are kept.";

/// Which delivery events `queue deliveries` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeliveryState {
    /// Every event.
    All,
    /// Deliveries (attempts begun).
    Delivered,
    /// Deliveries still held by their member now.
    Unacked,
    /// Acks.
    Acked,
    /// Failed attempts: nacked, deadline passed, member left.
    Failed,
    /// Nacks.
    Nacked,
    /// Deadlines passed and members left.
    TimedOut,
    /// Terms.
    Terminated,
    /// Dead letters.
    DeadLettered,
    /// In-progress extensions.
    Extended,
}

#[derive(Debug, Args)]
pub struct QueueDeliveriesArgs {
    /// Queue name.
    pub name: String,

    /// Which events.
    #[arg(long, value_enum, default_value = "all")]
    pub state: DeliveryState,

    /// Events at or after this: a duration back from now (1h) or a date-time.
    #[arg(long, value_name = "WHEN", value_parser = moment)]
    pub since: Option<Moment>,

    /// Events at or before this: a duration back from now or a date-time.
    #[arg(long, value_name = "WHEN", value_parser = moment)]
    pub until: Option<Moment>,

    /// Events of messages with this header only.
    #[arg(long, value_name = "KEY=VALUE", value_parser = header)]
    pub header: Option<(String, String)>,

    /// The topic whose deliveries to list: required for a queue on a topic pattern
    /// (each topic keeps its own history).
    #[arg(long, value_name = "TOPIC")]
    pub topic: Option<String>,

    /// Events per page (1 to 1000).
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,

    /// Where to go on: the cursor the previous page printed.
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
}

/// A point in time as given: a duration back from now, or a date-time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    Ago(u64),
    At(i64),
}

impl Moment {
    /// Milliseconds since the Unix epoch, `now_ms` being now.
    pub fn at_ms(self, now_ms: i64) -> i64 {
        match self {
            Moment::Ago(ms) => now_ms.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX)),
            Moment::At(ms) => ms,
        }
    }
}

fn moment(text: &str) -> Result<Moment, String> {
    if let Ok(ms) = duration(text) {
        return Ok(Moment::Ago(ms));
    }
    parse_datetime_ms(text)
        .map(Moment::At)
        .map_err(|e| format!("{e}; or give a duration back from now such as 1h or 30m"))
}

const CREATE_EXAMPLES: &str = "\
Examples:
  tidelog queue create billing --topic orders
  tidelog queue create billing --topic orders --from earliest --ack-deadline 2m \\
      --max-deliveries 10 --backoff 1s..10m --dead-letter-topic orders.failed --max-unacked 500

A queue starts at --from in every partition: latest (the default: only messages
published from now on), earliest, or a date-time (the first message at or after it).
Defaults: --ack-deadline 30s, --max-deliveries 5, --backoff 1s..5m (doubling each
attempt), --dead-letter-topic <topic>.dlq (created with the first dead letter),
--max-unacked 1000, --history-attempts 10, --history-retention 7d. Durations need a unit: 500ms, 30s, 5m, 1h30m or PT30M.";

const CONSUME_EXAMPLES: &str = "\
Examples:
  tidelog queue consume billing                  # what is ready now, then exit
  tidelog queue consume billing -n 10 --json
  tidelog queue consume billing --follow --print-meta

Each message is acked once it is printed (and the output flushed), so the next reader
of the queue does not get it again. Without --follow it stops when the queue has had
nothing to deliver for a second. --print-meta prefixes a line with
`partition:offset timestamp attempt N`; JSON lines carry the fields of `tidelog
consume --json` plus attempt and deadline (ms).";

const WORK_EXAMPLES: &str = "\
Examples:
  tidelog queue work billing -- ./charge.sh
  tidelog queue work thumbnails --concurrency 4 -- python3 resize.py
  tidelog queue work billing --stop-when-idle 5s --json -- sh -c 'jq .amount'

The command gets the message value on stdin and, in its environment, TIDELOG_QUEUE,
TIDELOG_TOPIC, TIDELOG_PARTITION, TIDELOG_OFFSET, TIDELOG_ATTEMPT (1 for the first
delivery), TIDELOG_TIMESTAMP_MS, TIDELOG_MESSAGE_ID and TIDELOG_KEY (when set), and
TIDELOG_HEADER_<KEY> per header (the key upper-cased, other characters than letters and
digits as _). Ids, keys and header values that are not UTF-8 (or hold a NUL byte) are
given in hex. Exit 0 acks the message; any other exit nacks it with the last 1 KiB of
the command's stderr as the reason, and the queue delivers it again after its backoff
until --max-deliveries, then dead-letters it. While a command runs past half the ack
deadline, its deadline is extended. Its stdout is the worker's (stderr with --json);
its stderr is echoed to the worker's stderr.

Ctrl-C or SIGTERM: no new message is taken, the running commands finish and are
settled, then the worker exits; a second Ctrl-C stops the commands (they are nacked).
Commands run in their own process group, so a terminal's Ctrl-C does not reach them.";

#[derive(Debug, Args)]
pub struct QueueNameArg {
    /// Queue name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct QueueListArgs {
    /// Only the queues of this topic.
    #[arg(long, value_name = "TOPIC")]
    pub topic: Option<String>,
}

/// Where a new queue starts in every partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueStart {
    Earliest,
    Latest,
    TimestampMs(i64),
}

fn queue_start(text: &str) -> Result<QueueStart, String> {
    match text.trim() {
        "earliest" | "beginning" => Ok(QueueStart::Earliest),
        "latest" | "end" => Ok(QueueStart::Latest),
        t if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => Err(format!(
            "a queue starts at earliest, latest or a date-time in every partition, not at offset {t}"
        )),
        t => parse_datetime_ms(t)
            .map(QueueStart::TimestampMs)
            .map_err(|e| format!("{t:?} is not earliest, latest or a date-time ({e})")),
    }
}

/// `--ack-deadline`: 100ms to 12h.
fn ack_deadline(text: &str) -> Result<u64, String> {
    let ms = duration(text)?;
    if !(ACK_DEADLINE_MS_MIN..=QUEUE_DELAY_MS_MAX).contains(&ms) {
        return Err(format!(
            "{text} is outside {ACK_DEADLINE_MS_MIN}ms..12h (a member needs some time to settle a delivery)"
        ));
    }
    Ok(ms)
}

/// A backoff wait: 0 to 12h.
fn backoff_wait(text: &str) -> Result<u64, String> {
    let ms = duration(text)?;
    if ms > QUEUE_DELAY_MS_MAX {
        return Err(format!("{text} is over the longest wait, 12h"));
    }
    Ok(ms)
}

/// `--backoff INITIAL..MAX` (doubling from INITIAL up to MAX) or `--backoff WAIT`
/// (always the same wait).
fn backoff(text: &str) -> Result<(u64, u64), String> {
    let (initial, max) = match text.split_once("..") {
        Some((initial, max)) => (backoff_wait(initial)?, backoff_wait(max)?),
        None => {
            let wait = backoff_wait(text)?;
            (wait, wait)
        }
    };
    if max < initial {
        return Err(format!(
            "{text}: the longest wait is shorter than the first; write FIRST..LONGEST, e.g. 1s..5m"
        ));
    }
    Ok((initial, max))
}

/// `--max-deliveries N`, `unlimited` (or 0).
fn max_deliveries(text: &str) -> Result<u32, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "unlimited" | "none" | "off" | "0" => Ok(0),
        t => t
            .parse::<u32>()
            .map_err(|_| format!("{t:?} is not a count (e.g. 5, or unlimited)")),
    }
}

/// `--history-attempts N`: 1 to 1000.
fn history_attempts(text: &str) -> Result<u32, String> {
    let n: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a count"))?;
    if !(1..=HISTORY_ATTEMPTS_MAX).contains(&n) {
        return Err(format!(
            "{n} is outside 1..={HISTORY_ATTEMPTS_MAX} attempts per message"
        ));
    }
    Ok(n)
}

/// `--history-retention DURATION`: 0 to 90d.
fn history_retention(text: &str) -> Result<u64, String> {
    let ms = duration(text)?;
    if ms > HISTORY_RETENTION_MS_MAX {
        return Err(format!("{text} is over the longest history retention, 90d"));
    }
    Ok(ms)
}

/// `--max-unacked N`: 1 to 100000.
fn max_unacked(text: &str) -> Result<u32, String> {
    let n: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a count"))?;
    if !(1..=MAX_UNACKED_PER_MEMBER_MAX).contains(&n) {
        return Err(format!(
            "{n} is outside 1..={MAX_UNACKED_PER_MEMBER_MAX} unsettled deliveries per member"
        ));
    }
    Ok(n)
}

/// The delivery settings, shared by `create` and `alter`; absent flags keep the
/// default (create) or the current value (alter).
#[derive(Debug, Args, Default, Clone)]
pub struct QueueConfigArgs {
    /// Time a member has to settle a delivery before it is delivered again (100ms to 12h).
    #[arg(long, value_name = "DURATION", value_parser = ack_deadline)]
    pub ack_deadline: Option<u64>,

    /// Deliveries of a message before it is dead-lettered; `unlimited` (or 0) = never.
    #[arg(long, value_name = "N", value_parser = max_deliveries)]
    pub max_deliveries: Option<u32>,

    /// Wait before a redelivery: FIRST..LONGEST, doubling each attempt (e.g. 1s..5m), or
    /// one WAIT for every attempt.
    #[arg(long, value_name = "FIRST..LONGEST", value_parser = backoff, conflicts_with_all = ["backoff_initial", "backoff_max"])]
    pub backoff: Option<(u64, u64)>,

    /// Wait before the first redelivery (doubles with every further attempt).
    #[arg(long, value_name = "DURATION", value_parser = backoff_wait)]
    pub backoff_initial: Option<u64>,

    /// Longest wait before a redelivery.
    #[arg(long, value_name = "DURATION", value_parser = backoff_wait)]
    pub backoff_max: Option<u64>,

    /// Topic dead letters go to (created with one partition when the first arrives).
    #[arg(long, value_name = "TOPIC")]
    pub dead_letter_topic: Option<String>,

    /// Most unsettled deliveries one member holds at a time (1 to 100000).
    #[arg(long, value_name = "N", value_parser = max_unacked)]
    pub max_unacked: Option<u32>,

    /// Delivery attempts of one message its history shows, the newest (1 to 1000).
    #[arg(long, value_name = "N", value_parser = history_attempts)]
    pub history_attempts: Option<u32>,

    /// How long the delivery history is kept (0 = keep none; at most 90d).
    #[arg(long, value_name = "DURATION", value_parser = history_retention)]
    pub history_retention: Option<u64>,
}

impl QueueConfigArgs {
    pub fn is_empty(&self) -> bool {
        self.ack_deadline.is_none()
            && self.max_deliveries.is_none()
            && self.backoff.is_none()
            && self.backoff_initial.is_none()
            && self.backoff_max.is_none()
            && self.dead_letter_topic.is_none()
            && self.max_unacked.is_none()
            && self.history_attempts.is_none()
            && self.history_retention.is_none()
    }

    /// (first, longest) backoff as given, either form.
    pub fn backoff_bounds(&self) -> (Option<u64>, Option<u64>) {
        match self.backoff {
            Some((initial, max)) => (Some(initial), Some(max)),
            None => (self.backoff_initial, self.backoff_max),
        }
    }

    /// Relations clap cannot check. `current` is the backoff in force (for alter) or
    /// the defaults (for create).
    pub fn check(&self, current: (u64, u64)) -> CliResult<()> {
        let (initial, max) = self.backoff_bounds();
        let (initial, max) = (initial.unwrap_or(current.0), max.unwrap_or(current.1));
        if max < initial {
            let shown = |ms| tidelog_storage::duration::format_duration_ms(ms);
            return Err(CliError::usage(
                format!(
                    "the backoff would start at {} and stop at {}, which is shorter",
                    shown(initial),
                    shown(max)
                ),
                "give --backoff-max at least --backoff-initial, or both as --backoff FIRST..LONGEST",
            ));
        }
        if let Some(topic) = &self.dead_letter_topic
            && topic.trim().is_empty()
        {
            return Err(CliError::usage(
                "--dead-letter-topic is empty",
                "give a topic name",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct QueueCreateArgs {
    /// Queue name: letters, digits, '.', '_' and '-'.
    pub name: String,

    /// The topic the queue consumes (all its partitions).
    #[arg(
        short,
        long,
        value_name = "TOPIC",
        required_unless_present = "topic_pattern"
    )]
    pub topic: Option<String>,

    /// Consume every topic this regular expression matches (as a whole name), now
    /// and created later (they start at their beginning), except the queue's own
    /// dead-letter topic (default NAME.dlq, shared by all its topics).
    #[arg(long, value_name = "REGEX", conflicts_with = "topic")]
    pub topic_pattern: Option<String>,

    /// Where it starts in every partition: latest, earliest, or a date-time
    /// (YYYY-MM-DDTHH:mm:SS[.sss][Z|+hh:mm]).
    #[arg(long, value_name = "POSITION", default_value = "latest", value_parser = queue_start)]
    pub from: QueueStart,

    /// Deliver only the messages this filter matches (fixed for the queue's life); the
    /// others are passed over as acked. Grammar as `tidelog consume --filter`, e.g.
    /// 'header.type == "order" && json.amount >= 100'.
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,

    #[command(flatten)]
    pub config: QueueConfigArgs,
}

#[derive(Debug, Args)]
pub struct QueueAlterArgs {
    /// Queue name.
    pub name: String,

    #[command(flatten)]
    pub config: QueueConfigArgs,
}

#[derive(Debug, Args)]
pub struct QueueRedriveArgs {
    /// Queue whose dead letters go back.
    pub name: String,

    /// Dead letters moved per request.
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
}

#[derive(Debug, Args)]
pub struct QueueConsumeArgs {
    /// Queue to consume.
    pub name: String,

    /// Stop after this many messages.
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,

    /// Keep waiting for messages (until Ctrl-C or --count).
    #[arg(short, long)]
    pub follow: bool,

    /// Output format (--json is the same as --format json).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Text format: print the key before the value.
    #[arg(long)]
    pub print_key: bool,

    /// Text format: separator between key and value.
    #[arg(long, value_name = "SEP", default_value = "\t", value_parser = separator, hide_default_value = true)]
    pub key_separator: String,

    /// Text format: prefix each line with partition:offset, timestamp, id and attempt.
    #[arg(long)]
    pub print_meta: bool,

    /// Text format: print the headers as key=value pairs joined by ',' (as `tidelog
    /// consume --print-headers`), then a tab; `-` when there are none.
    #[arg(long)]
    pub print_headers: bool,
}

#[derive(Debug, Args)]
pub struct QueueWorkArgs {
    /// Queue to work on.
    pub name: String,

    /// Commands run at once (each on its own message).
    #[arg(short, long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,

    /// Stop after this many messages were settled.
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,

    /// Stop once nothing was delivered for this long and no command runs (default:
    /// keep waiting until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub stop_when_idle: Option<u64>,

    /// Do not echo the commands' stderr (it is still kept as the nack reason).
    #[arg(short, long)]
    pub quiet: bool,

    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoffs_parse_in_both_forms() {
        assert_eq!(backoff("1s..5m"), Ok((1_000, 300_000)));
        assert_eq!(backoff("2s"), Ok((2_000, 2_000)));
        assert_eq!(backoff("0..1s"), Ok((0, 1_000)));
        assert!(backoff("5m..1s").unwrap_err().contains("shorter"));
        assert!(backoff("1..5m").unwrap_err().contains("no unit"));
        assert!(backoff("13h").is_err());
    }

    #[test]
    fn deadlines_counts_and_starts_are_range_checked() {
        assert_eq!(ack_deadline("30s"), Ok(30_000));
        assert!(ack_deadline("50ms").unwrap_err().contains("100ms..12h"));
        assert!(ack_deadline("30").is_err());
        assert_eq!(max_deliveries("unlimited"), Ok(0));
        assert_eq!(max_deliveries("7"), Ok(7));
        assert!(max_deliveries("-1").is_err());
        assert_eq!(max_unacked("1000"), Ok(1000));
        assert!(max_unacked("0").is_err());
        assert!(max_unacked("100001").is_err());
        assert_eq!(queue_start("earliest"), Ok(QueueStart::Earliest));
        assert_eq!(
            queue_start("1970-01-01T00:00:01Z"),
            Ok(QueueStart::TimestampMs(1000))
        );
        assert!(queue_start("42").unwrap_err().contains("not at offset"));
    }

    #[test]
    fn a_backoff_that_ends_before_it_starts_is_refused() {
        let args = QueueConfigArgs {
            backoff_max: Some(500),
            ..QueueConfigArgs::default()
        };
        assert!(args.check((1_000, 300_000)).is_err());
        assert!(args.check((0, 300_000)).is_ok());
    }
}
