//! The clap types of every command's arguments, and their value parsers: shared by
//! the command tree (`cli`) and the commands that run them, so neither imports the
//! other. Values are parsed here, with the pure parsers of `units`, `time` and `spec`,
//! so a bad value is a usage error (exit 2) naming the flag before anything touches
//! the network or the disk.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::time::parse_datetime_ms;
use crate::units::{format_bytes, parse_size};
use tidelog_storage::duration::parse_duration_ms;
use tidelog_storage::limits::{
    MESSAGE_BYTES_MAX, PRIORITY_LEVELS_MAX, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
};

mod group;
mod segment;

pub use group::*;
pub use segment::*;

// ---------------------------------------------------------------------------------
// topic
// ---------------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    #[command(
        after_help = "Examples:\n  tidelog topic create orders\n  tidelog topic create orders --if-not-exists   # exit 0 when it exists\n  tidelog topic create orders --partitions 6 --retention 7d --retention-bytes 10GiB \\\n      --ttl 1h --fsync interval:10ms --segment-bytes 256MiB --compression zstd\n\nDurations need a unit: 500ms, 30s, 5m, 1h30m, 7d, 2w or ISO-8601 PT30M, P1D; `0` alone (or\n`off`) means no limit. Sizes: 4096 (bytes), 256MiB, 10GiB, 1GB."
    )]
    Create(TopicCreateArgs),

    /// List topics with their partition counts and sizes.
    #[command(
        after_help = "Examples:\n  tidelog topic list\n  tidelog topic list --internal --json"
    )]
    List(TopicListArgs),

    /// Show a topic's configuration and the state of each partition.
    #[command(
        after_help = "Examples:\n  tidelog topic describe orders\n  tidelog topic describe orders --json"
    )]
    Describe(TopicNameArg),

    /// Change a topic's configuration, or raise its partition count.
    #[command(
        after_help = "Examples:\n  tidelog topic alter orders --retention 30d\n  tidelog topic alter orders --ttl off --fsync always\n  tidelog topic alter orders --partitions 12\n\n`off` (or `0`) switches a limit off (--retention, --retention-bytes, --ttl, --segment-age).\nDurations need a unit: 500ms, 30s, 5m, 1h30m, 7d, 2w or ISO-8601 PT30M, P1D.\n\n--partitions only raises the count. KEYS MOVE: a keyed message goes to partition\nhash(key) % count, so most keys map to another partition afterwards; per-key order\nholds among messages published before and among those published after, not across."
    )]
    Alter(TopicAlterArgs),

    /// Delete a topic, its data and the offsets groups committed for it.
    #[command(
        after_help = "Examples:\n  tidelog topic delete orders\n  tidelog topic delete orders --if-exists   # exit 0 when there is no such topic"
    )]
    Delete(TopicDeleteArgs),
}

#[derive(Debug, Args)]
pub struct TopicNameArg {
    /// Topic name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct TopicDeleteArgs {
    /// Topic name.
    pub name: String,

    /// Succeed (saying so on stderr) when there is no such topic.
    #[arg(long)]
    pub if_exists: bool,
}

#[derive(Debug, Args)]
pub struct TopicListArgs {
    /// Also list internal topics (names starting with "__").
    #[arg(long)]
    pub internal: bool,
}

/// A limit that can be switched off: `off` (also `none`, `unlimited`, `forever`, `0`,
/// and Kafka's `-1`) or a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Off,
    Value(u64),
}

fn is_off(text: &str) -> bool {
    matches!(
        text.trim().to_ascii_lowercase().as_str(),
        "off" | "none" | "unlimited" | "forever" | "never" | "0" | "-1"
    )
}

fn duration_limit(text: &str) -> Result<Limit, String> {
    if is_off(text) {
        return Ok(Limit::Off);
    }
    duration(text).map(Limit::Value)
}

fn count_limit(text: &str) -> Result<Limit, String> {
    if is_off(text) {
        return Ok(Limit::Off);
    }
    text.trim()
        .replace('_', "")
        .parse()
        .map(Limit::Value)
        .map_err(|_| format!("{text:?} is not a count; give a whole number or `off`"))
}

fn size_limit(text: &str) -> Result<Limit, String> {
    if is_off(text) {
        return Ok(Limit::Off);
    }
    parse_size(text).map(Limit::Value)
}

/// A duration in milliseconds, in the one grammar of `tidelog_storage::duration`
/// (`250ms`, `10s`, `1h30m`, `7d`, `PT30M`; a bare number other than 0 is refused).
/// clap names the flag in front of the error.
pub(crate) fn duration(text: &str) -> Result<u64, String> {
    parse_duration_ms(text).map_err(|e| e.to_string())
}

/// A size in bytes (`4096`, `256MiB`, `10GiB`).
fn size(text: &str) -> Result<u64, String> {
    parse_size(text)
}

/// A size within `min..=max`, said in the flag's help terms when outside (so `0`,
/// which the API takes as "the default", is refused rather than silently reset).
fn size_in(text: &str, min: u64, max: u64) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if (min..=max).contains(&bytes) {
        return Ok(bytes);
    }
    // As the flags take them: 4KiB, not "4 KiB".
    let compact = |bytes: u64| format_bytes(bytes).replace(' ', "");
    Err(format!(
        "{} is outside {} to {}; give a size in that range (leave the flag out for the default)",
        text.trim(),
        compact(min),
        compact(max)
    ))
}

/// `--segment-bytes`: 4KiB to 1GiB.
fn segment_size(text: &str) -> Result<u64, String> {
    size_in(text, SEGMENT_BYTES_MIN, SEGMENT_BYTES_MAX)
}

/// `--max-message-bytes`: 1 byte to 16MiB.
fn message_size(text: &str) -> Result<u64, String> {
    size_in(text, 1, MESSAGE_BYTES_MAX)
}

/// `--priority-levels`: 1 to 10.
fn priority_levels(text: &str) -> Result<u32, String> {
    let max = u32::from(PRIORITY_LEVELS_MAX);
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?} is not a number of levels; give 1 to {max} (1 = no priorities)"
        )),
    }
}

/// How a topic's writes are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    Always,
    IntervalMs(u64),
    Never,
}

pub(crate) fn fsync(text: &str) -> Result<Fsync, String> {
    match text.trim() {
        "always" => Ok(Fsync::Always),
        "never" => Ok(Fsync::Never),
        other => {
            let interval = other.strip_prefix("interval:").ok_or_else(|| {
                format!("{other:?} is not an fsync policy (use always, interval:10ms or never)")
            })?;
            match duration(interval)? {
                0 => Err("the fsync interval must be at least 1ms".into()),
                ms => Ok(Fsync::IntervalMs(ms)),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    None,
    Zstd,
}

/// Configuration flags shared by `topic create` and `topic alter`.
#[derive(Debug, Args, Default)]
pub struct TopicConfigArgs {
    /// Delete sealed segments older than this (e.g. 7d, 12h, 1h30m); `off` or `0` keeps
    /// data forever.
    #[arg(long, value_name = "DURATION", value_parser = duration_limit, allow_hyphen_values = true)]
    pub retention: Option<Limit>,

    /// Delete the oldest segments while a partition is larger than this (e.g. 10GiB);
    /// `off` or `0` = no limit.
    #[arg(long, value_name = "SIZE", value_parser = size_limit, allow_hyphen_values = true)]
    pub retention_bytes: Option<Limit>,

    /// Default time to live of messages published without one (e.g. 5m); `off` or `0` =
    /// never expire.
    #[arg(long, value_name = "DURATION", value_parser = duration_limit, allow_hyphen_values = true)]
    pub ttl: Option<Limit>,

    /// Roll to a new segment at this size (4KiB to 1GiB; default 256MiB).
    #[arg(long, value_name = "SIZE", value_parser = segment_size, allow_hyphen_values = true)]
    pub segment_bytes: Option<u64>,

    /// Roll to a new segment at this age even if it is small (e.g. 1d); `off` or `0` = by
    /// size only.
    #[arg(long, value_name = "DURATION", value_parser = duration_limit, allow_hyphen_values = true)]
    pub segment_age: Option<Limit>,

    /// When writes are made durable: always (group commit), interval:<duration> (e.g.
    /// interval:10ms, at least 1ms), never.
    #[arg(long, value_name = "POLICY", value_parser = fsync)]
    pub fsync: Option<Fsync>,

    /// Largest message (id + key + value + headers; on a topic with a dedup window
    /// the producer's own 16-byte id counts), 1B to 16MiB (default 1MiB).
    #[arg(long, value_name = "SIZE", value_parser = message_size, allow_hyphen_values = true)]
    pub max_message_bytes: Option<u64>,

    /// Compression of stored batches.
    #[arg(long, value_enum)]
    pub compression: Option<CompressionArg>,

    /// Priority levels queues honour (1 to 10): messages may then be published with
    /// priorities 0 to N-1.
    #[arg(long, value_name = "N", value_parser = priority_levels, allow_hyphen_values = true)]
    pub priority_levels: Option<u32>,

    /// Backpressure: most ready messages any queue of the topic may hold; `off` = no limit.
    #[arg(long, value_name = "N|off", value_parser = count_limit, allow_hyphen_values = true)]
    pub queue_max_ready: Option<Limit>,

    /// Backpressure: most ready bytes of log any queue of the topic may hold; `off` = no limit.
    #[arg(long, value_name = "SIZE|off", value_parser = size_limit, allow_hyphen_values = true)]
    pub queue_max_ready_bytes: Option<Limit>,

    /// Past a queue cap: `reject` new publishes (the default) or `dead-letter-oldest`.
    #[arg(long, value_name = "POLICY", value_parser = ["reject", "dead-letter-oldest"])]
    pub queue_overflow: Option<String>,

    /// Dedup window: a message whose id was stored within it is not stored again (its
    /// ack names the first). Default 2m, at most 7d; `off` or `0` switches it off.
    #[arg(long, value_name = "DURATION|off", value_parser = duration_limit, allow_hyphen_values = true)]
    pub dedup_window: Option<Limit>,

    /// The broker gives each message published without an id one of its own (26
    /// base32 characters, ordered by time).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub assign_ids: Option<bool>,
}

#[derive(Debug, Args)]
pub struct TopicCreateArgs {
    /// Topic name: letters, digits, '.', '_' and '-'.
    pub name: String,

    /// Number of partitions (1 to 10000); `topic alter --partitions` raises it later.
    #[arg(short, long, default_value_t = 1, value_name = "N")]
    pub partitions: u32,

    /// Succeed (saying so on stderr, leaving its configuration alone) when the topic
    /// exists already.
    #[arg(long)]
    pub if_not_exists: bool,

    #[command(flatten)]
    pub config: TopicConfigArgs,
}

#[derive(Debug, Args)]
pub struct TopicAlterArgs {
    /// Topic name.
    pub name: String,

    /// Raise the partition count to N (only up, at most 10000). Keys then map to
    /// different partitions.
    #[arg(short, long, value_name = "N")]
    pub partitions: Option<u32>,

    #[command(flatten)]
    pub config: TopicConfigArgs,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

// ---------------------------------------------------------------------------------
// broker
// ---------------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum BrokerCommand {
    /// Show the broker's version, addresses, data directory and the effective value
    /// of every setting (after flags, environment, config file and defaults).
    #[command(
        after_help = "Examples:\n  tidelog broker describe\n  tidelog broker describe --json"
    )]
    Describe,
}

// ---------------------------------------------------------------------------------
// message
// ---------------------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum MessageCommand {
    /// Show the message of a topic that has this id: partition, offset, timestamp,
    /// expiry, size, key and headers (and the value with --value), from anywhere in
    /// the topic's retention.
    #[command(
        after_help = "Examples:\n  tidelog message get orders order-17\n  tidelog message get orders order-17 --value\n  tidelog message get orders 0x00ff10 --json\n\nID is the id's text form, as consume and produce print it: text as itself, a\nbroker-assigned id as its 26 base32 characters, any other bytes as 0x and hex.\nWhen several messages carry the id, the newest is shown."
    )]
    Get(MessageGetArgs),

    /// Where a message stands in a queue (ready, delayed, unacked and by whom, waiting
    /// for a redelivery, acked, dead-lettered and why, expired) or a consumer group
    /// (committed past it or not).
    #[command(
        after_help = "Examples:\n  tidelog message status orders order-17 --queue billing\n  tidelog message status orders --partition 0 --offset 41 --group audit\n  tidelog message status orders order-17 --queue billing --json\n\nAn expired message is found only by --partition and --offset."
    )]
    Status(MessageStatusArgs),

    /// A message's delivery attempts in a queue: when, to which member, and how each
    /// ended (acked, nacked and why, deadline passed, member left, terminated,
    /// dead-lettered), oldest first.
    #[command(
        after_help = "Examples:\n  tidelog message history orders order-17 --queue billing\n  tidelog message history orders --partition 0 --offset 41 --queue billing --json\n\nAt most the queue's --history-attempts newest attempts, within its\n--history-retention (see `tidelog queue describe`)."
    )]
    History(MessageHistoryArgs),
}

/// Which message: by id, or by --partition and --offset.
#[derive(Debug, Args)]
pub struct MessageRefArgs {
    /// Topic of the message.
    pub topic: String,

    /// The message id (as `message get` takes it); or give --partition and --offset.
    #[arg(value_parser = parse_message_id, required_unless_present = "offset", conflicts_with_all = ["partition", "offset"])]
    pub id: Option<MessageId>,

    /// The message's partition (with --offset, instead of ID).
    #[arg(long, value_name = "P", requires = "offset")]
    pub partition: Option<u32>,

    /// The message's offset in --partition (instead of ID).
    #[arg(long, value_name = "O", requires = "partition")]
    pub offset: Option<u64>,
}

#[derive(Debug, Args)]
pub struct MessageStatusArgs {
    #[command(flatten)]
    pub message: MessageRefArgs,

    /// The queue whose view to show.
    #[arg(
        long,
        value_name = "QUEUE",
        conflicts_with = "group",
        required_unless_present = "group"
    )]
    pub queue: Option<String>,

    /// The consumer group whose view to show.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
}

#[derive(Debug, Args)]
pub struct MessageHistoryArgs {
    #[command(flatten)]
    pub message: MessageRefArgs,

    /// The queue whose deliveries to show.
    #[arg(long, value_name = "QUEUE")]
    pub queue: String,
}

#[derive(Debug, Args)]
pub struct MessageGetArgs {
    /// Topic to look in.
    pub topic: String,

    /// The message id: text, 26 base32 characters (a broker-assigned id), or 0x and
    /// hex for other bytes; 1 to 128 bytes.
    #[arg(value_parser = parse_message_id)]
    pub id: MessageId,

    /// Print the value too (text as it is; other bytes in base64, or as a JSON object
    /// {"base64": ...} with --json).
    #[arg(long)]
    pub value: bool,
}

/// A message id as given on the command line: its bytes and its text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageId(pub Vec<u8>);

fn parse_message_id(text: &str) -> Result<MessageId, String> {
    tidelog_storage::msgid::parse(text)
        .map(MessageId)
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------
// produce
// ---------------------------------------------------------------------------------

/// How produce reads each message's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// As they are.
    Raw,
    /// Base64 (RFC 4648): decoded before sending.
    Base64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckArg {
    /// Answer once the request is queued (no offsets are returned).
    None,
    /// Answer once the messages are written, before fsync.
    Written,
    /// Answer once the topic's fsync policy made them durable.
    Durable,
}

/// A `key=value` header.
pub fn header(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("header {text:?} has no '=' (use --header key=value)"))?;
    if key.is_empty() {
        return Err(format!("header {text:?} has an empty key"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Bytes given on the command line with C-style escapes: `\n`, `\r`, `\t`, `\0`,
/// `\\` and `\xNN` (so `-D '\0'` is a NUL byte).
pub fn escaped_bytes(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(b'0') => out.push(0),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                let byte = std::str::from_utf8(&hex)
                    .ok()
                    .filter(|h| h.len() == 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("{text:?}: \\x needs two hex digits"))?;
                out.push(byte);
            }
            other => {
                return Err(format!(
                    "{text:?}: unknown escape \\{} (use \\n \\r \\t \\0 \\\\ or \\xNN)",
                    other.map_or(String::new(), |b| char::from(b).to_string())
                ));
            }
        }
    }
    Ok(out)
}

/// What ends each message (`-D`): one or more bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delimiter(pub Vec<u8>);

/// A message delimiter (`-D`): escaped bytes, not empty.
fn delimiter(text: &str) -> Result<Delimiter, String> {
    let bytes = escaped_bytes(text)?;
    if bytes.is_empty() {
        return Err("the delimiter is empty".into());
    }
    Ok(Delimiter(bytes))
}

/// A separator; `\t` and `\n`-style escapes are understood.
pub(crate) fn separator(text: &str) -> Result<String, String> {
    let unescaped = text.replace("\\t", "\t").replace("\\n", "\n");
    if unescaped.is_empty() {
        return Err("the separator is empty".into());
    }
    Ok(unescaped)
}

const PRODUCE_EXAMPLES: &str = "\
Examples:
  echo hello | tidelog produce orders
  tidelog produce orders --file events.txt --quiet
  printf 'user1:signed up\\nuser2:paid\\n' | tidelog produce orders --key-separator :
  tidelog produce orders --key user1 --header source=cli --ack written --ttl 1h
  tidelog produce images --value-file photo.jpg --key photo-1
  find . -print0 | tidelog produce paths -D '\\0'
  base64 -w0 blob.bin | tidelog produce blobs --format base64

Each line is one message (the newline is not part of it); -D picks another delimiter
(NUL included), --value-file sends a whole file as one message. A line ending in \\r
(CRLF input) keeps the \\r, with a warning (-D '\\r\\n' splits at CRLF); input that is
not UTF-8 split at newlines gets a warning too.

Messages go through tidelog-client's producer: a batch waits at most 2 ms for more
lines once fewer than --in-flight batches await their answer (so a line typed is sent
at once); lines arriving meanwhile gather into the next batch. Each message's ack is
printed in input order as `partition <p> offset <o>`, with ` duplicate` when the
topic's dedup window had the id given by --id / --id-separator, and ` id <id>` on a
topic that assigns ids (--assign-ids). On topics with a dedup window (the default)
or assign_ids, the producer gives every message without an id one of its own, so a
resend after the broker restarts is not stored twice. If tidelogd goes away, the producer reconnects and
sends again for up to 2 minutes. At the first message that fails, nothing more is
sent and the error names its line and how many earlier messages were stored.";

#[derive(Debug, Args)]
#[command(after_help = PRODUCE_EXAMPLES)]
pub struct ProduceArgs {
    /// Topic to publish to.
    pub topic: String,

    /// Read lines (records split at --delimiter) from this file instead of stdin.
    #[arg(short, long, value_name = "FILE", conflicts_with = "value_file")]
    pub file: Option<PathBuf>,

    /// Send this whole file as one message (binary safe; `-` = all of stdin).
    #[arg(long, value_name = "FILE")]
    pub value_file: Option<PathBuf>,

    /// What ends each message in the input (escapes: \n \r \t \0 \\ \xNN), e.g. '\0'
    /// for NUL-separated input or '\r\n'. Default: a newline.
    #[arg(short = 'D', long, value_name = "BYTES", value_parser = delimiter, conflicts_with = "value_file")]
    pub delimiter: Option<Delimiter>,

    /// How each message (its key and value) is written in the input: raw bytes, or
    /// base64 (decoded before sending; for binary data in a text file).
    #[arg(long, value_enum, default_value_t = InputFormat::Raw)]
    pub format: InputFormat,

    /// Key of every message (decides the partition when --partition is not given).
    #[arg(short, long, conflicts_with = "key_separator")]
    pub key: Option<String>,

    /// Split each line at the first SEP into key and value (e.g. ':' or '\t').
    #[arg(long, value_name = "SEP", value_parser = separator)]
    pub key_separator: Option<String>,

    /// A header on every message; repeat for more.
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE", value_parser = header)]
    pub headers: Vec<(String, String)>,

    /// Partition to append to (default: by key hash; without a key, one partition per
    /// batch, the next partition for the next batch).
    #[arg(short, long, value_name = "N")]
    pub partition: Option<u32>,

    /// The message's id (1-128 bytes; `0x` + hex for binary ids): within the topic's
    /// dedup window a second message with the same id is not stored, and its ack says
    /// `duplicate` with the first one's offset. For one message (--value-file, or one
    /// line).
    #[arg(long, value_name = "ID", conflicts_with = "id_separator")]
    pub id: Option<String>,

    /// Each line starts with its message's id, then SEP (e.g. ':' or '\t'), before any
    /// key separator.
    #[arg(long, value_name = "SEP", value_parser = separator)]
    pub id_separator: Option<String>,

    /// Time to live of the messages (e.g. 5m, 1h30m), counted from when they are sent:
    /// one that expires before it reaches the broker is refused; `0` = never expire,
    /// even with a topic TTL.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub ttl: Option<u64>,

    /// When the broker answers (`none` prints no offsets; it waits for the write, as
    /// `written`).
    #[arg(long, value_enum, default_value_t = AckArg::Durable)]
    pub ack: AckArg,

    /// Print one summary line instead of every offset (the offsets of up to 4
    /// partitions; with --json, of every partition).
    #[arg(short, long)]
    pub quiet: bool,

    /// Most messages per batch.
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_messages: u32,

    /// A batch is sent once its messages' bytes reach this.
    #[arg(long, default_value = "1MiB", value_name = "SIZE", value_parser = size)]
    pub batch_bytes: u64,

    /// Batches sent and not yet answered, at most [default: 8].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub in_flight: Option<u32>,
}

// ---------------------------------------------------------------------------------
// consume
// ---------------------------------------------------------------------------------

/// Where reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
    Offset(u64),
    TimestampMs(i64),
}

/// Where reading stops (`--until`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Before this offset, in every partition.
    Offset(u64),
    /// Before the first message stamped at or after this time (ms since the epoch).
    TimestampMs(i64),
}

fn until(text: &str) -> Result<Until, String> {
    match text.trim() {
        t if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => t
            .parse()
            .map(Until::Offset)
            .map_err(|_| format!("offset {t:?} is too large")),
        t => parse_datetime_ms(t)
            .map(Until::TimestampMs)
            .map_err(|e| format!("{t:?} is not an offset or a date-time ({e})")),
    }
}

fn from(text: &str) -> Result<StartAt, String> {
    match text.trim() {
        "earliest" | "beginning" => Ok(StartAt::Earliest),
        "latest" | "end" => Ok(StartAt::Latest),
        t if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => t
            .parse()
            .map(StartAt::Offset)
            .map_err(|_| format!("offset {t:?} is too large")),
        t => parse_datetime_ms(t)
            .map(StartAt::TimestampMs)
            .map_err(|e| format!("{t:?} is not earliest, latest, an offset or a date-time ({e})")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The value of each message as stored (raw bytes), then the delimiter.
    #[value(alias = "raw")]
    Text,
    /// The value of each message in base64 (RFC 4648), then the delimiter.
    Base64,
    /// One JSON object per message and line.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResetPolicyArg {
    /// Go to the partition's log start (the oldest message still stored).
    Earliest,
    /// Go to the partition's end (only messages published from now on).
    Latest,
    /// Stop with an error naming the partition and its offsets.
    Error,
}

const CONSUME_EXAMPLES: &str = "\
Examples:
  tidelog consume orders                         # everything stored, then exit
  tidelog consume orders --from latest --follow  # wait for new messages
  tidelog consume orders --from 2026-11-23T08:00:00Z -n 100 --format json
  tidelog consume orders --partition 0,2 --from 1500 --until 2000
  tidelog consume orders --from 2026-11-23T08:00:00Z --until 2026-11-23T09:00:00Z
  tidelog consume orders --print-key --print-headers
  tidelog consume orders --group billing --follow
  tidelog consume --topic-pattern 'orders\\..*' --group billing --follow
  tidelog consume orders --follow --filter 'header.type == \"order\" && json.amount >= 100'

Without --follow, reading stops at the end offsets seen when it started. With --group
the broker assigns partitions and reading starts at the group's committed offsets
(--from says where partitions without one start, e.g. --from earliest for Kafka's
--from-beginning);
what was printed is committed after each batch, before a rebalance hands a partition
to another member, and at exit, so the group's next reader starts right after it.
JSON lines carry partition, offset, timestamp (ms), key, value and headers; bytes that
are not UTF-8 appear as {\"base64\": \"...\"}. --format base64 prints each value (and
key) in base64, as `produce --format base64` reads it; -D '\\0' ends each message with a
NUL instead of a newline (`tidelog consume t -D '\\0' | xargs -0 ...`).

A damaged batch on disk (DATA_LOSS) stops its partition only: every message before it
is printed, the other partitions are read on (--follow too), and the command then exits
1 naming the partition, the offset, `tidelog segment verify` and how to read past it. A
group member's stream ends at the damage; what it printed is committed.";

#[derive(Debug, Args)]
#[command(after_help = CONSUME_EXAMPLES)]
pub struct ConsumeArgs {
    /// Topic to read (or --topic-pattern).
    #[arg(
        default_value = "",
        hide_default_value = true,
        required_unless_present = "topic_pattern"
    )]
    pub topic: String,

    /// Read every topic whose whole name matches this regular expression (Rust regex
    /// syntax, e.g. 'orders\..*') instead of one TOPIC. Topics created later that
    /// match are read too (from their start, within a second), deleted ones drop out;
    /// stderr says when the set changes. Always follows (like --follow; stop with
    /// Ctrl-C or -n). Each message names its topic: `topic` in --json, `TOPIC/` before
    /// partition:offset with --print-meta. --from applies to the topics matched at the
    /// start. When the broker goes away, it reconnects and goes on where each topic's
    /// partitions stood. With --group, the member joins the group on every matching
    /// topic (the group rebalances as they come and go) and commits per topic and
    /// partition; it stops once caught up unless --follow (--from then takes earliest
    /// or latest). Not with --partition or --until.
    #[arg(long, value_name = "REGEX", conflicts_with_all = ["partition", "until"])]
    pub topic_pattern: Option<String>,

    /// Where to start: earliest, latest, an offset, or a date-time (YYYY-MM-DDTHH:mm:SS[.sss][Z|+hh:mm]).
    /// An offset outside a partition's offsets follows --offset-reset. With --group it
    /// applies to partitions the group has no committed offset for (Kafka's
    /// --from-beginning): earliest or latest is then the group's reset policy (over
    /// --offset-reset); an offset or a date-time is committed before joining, unless
    /// the group has live members.
    #[arg(long, value_name = "POSITION", value_parser = from)]
    pub from: Option<StartAt>,

    /// Only these partitions (repeat or separate with commas; default all).
    #[arg(
        short,
        long,
        value_name = "N",
        value_delimiter = ',',
        conflicts_with = "group"
    )]
    pub partition: Vec<u32>,

    /// Read as a member of this consumer group and commit what was printed.
    #[arg(short, long, value_name = "GROUP")]
    pub group: Option<String>,

    /// Stop after this many messages.
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,

    /// Keep waiting for new messages (until Ctrl-C, --count or --until). When the
    /// broker goes away (a restart), reconnect with backoff (0.1s doubling to 5s) and
    /// go on where each partition stood; a group member joins the group again.
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

    /// Text and base64 formats: what follows each message (escapes: \n \r \t \0 \\
    /// \xNN), e.g. '\0' for NUL-separated output. Default: a newline.
    #[arg(short = 'D', long, value_name = "BYTES", value_parser = delimiter)]
    pub delimiter: Option<Delimiter>,

    /// Text format: prefix each line with partition, offset and timestamp.
    #[arg(long)]
    pub print_meta: bool,

    /// Text format: print the headers before the value, as key=value pairs separated
    /// by ',' (with --print-key, after the key), then a tab; `-` when there are none.
    /// Bytes that are not UTF-8 and the characters ,=\t\n in a header are escaped.
    #[arg(long)]
    pub print_headers: bool,

    /// Stop each partition before this offset, or at its first message stamped at or
    /// after this date-time; with --follow, reading also ends once the clock passes
    /// the date-time. Together with --follow, an offset ends reading when every
    /// partition reached it.
    #[arg(long, value_name = "OFFSET|DATETIME", value_parser = until)]
    pub until: Option<Until>,

    /// Where to start when a position is outside the partition's offsets (a --from
    /// offset below the log start or past the end, a group's committed offset that
    /// retention passed) or a group has no committed offset: earliest = the log start,
    /// latest = the end (each with a note on stderr), error = stop with exit 1.
    #[arg(long, value_enum, default_value_t = ResetPolicyArg::Earliest, value_name = "POLICY")]
    pub offset_reset: ResetPolicyArg,

    /// Only messages this server-side filter matches are sent (the others never leave
    /// the broker; a group still commits past them). Conditions on `key`,
    /// `header.NAME` (or `header["NAME"]`) and, for JSON values, `json.a.b[0]`: ==
    /// != ^= (prefix) < <= > >= `in ("a","b")` `exists(FIELD)`, combined with && ||
    /// ! and parentheses; strings in double quotes, numbers, true false null. E.g.
    /// 'header.type == "order" && json.amount >= 100 && !exists(header.test)'. A json
    /// field on a value that is not JSON never matches. The full grammar is in the
    /// README (Filters).
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,
}

#[cfg(test)]
mod tests;
