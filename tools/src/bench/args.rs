//! The `tidelog bench` command line.

use clap::{Args, Subcommand};

use super::payload::{FillerKind, HEADER_BYTES};
use crate::args::{AckArg, CompressionArg, Fsync, duration as parse_duration_ms, fsync};
use crate::error::{CliError, CliResult};
use crate::units::parse_size;

const PRODUCE_EXAMPLES: &str = "\
Examples:
  tidelog bench produce                                   # 1M x 100 B, 1 producer, durable
  tidelog bench produce --producers 8 --stream --messages 10M
  tidelog bench produce --fsync never --ack written --producers 2 --stream
  tidelog bench produce --stream --rate 200k --duration 30s   # latency at a fixed load
  tidelog bench produce --partitions 1000 --producers 8 --stream --json

Creates its own topic (deleted at the end unless --keep; --topic reuses or names one),
publishes, and reports messages/s and MB/s (payload, 1 MB = 10^6 B) per producer and in
total (total messages / slowest producer's time), with publish -> ack latency
percentiles per request. Exit 1 when the broker's acks do not add up.";

const CONSUME_EXAMPLES: &str = "\
Examples:
  tidelog bench consume --messages 5M                     # fill a new topic, then read it
  tidelog bench consume --topic orders-bench --consumers 8 --fanout
  tidelog bench consume --partitions 8 --consumers 4 --group
  tidelog bench consume --partitions 4 --consumers 2 --fetch

On a topic it creates, it first publishes --messages (not timed), then reads them back;
with --topic of an existing topic it reads what is there (written by `tidelog bench`,
e.g. `bench produce --topic NAME --keep`). Every message is validated: count, order per
partition and producer, checksum. Exit 1 on any validation error.";

const E2E_EXAMPLES: &str = "\
Examples:
  tidelog bench e2e                                       # 1 producer, 1 consumer
  tidelog bench e2e --producers 2 --consumers 2 --partitions 2 --stream
  tidelog bench e2e --stream --rate 100k --duration 20s   # publish -> receive latency
  tidelog bench e2e --partitions 4 --consumers 4 --group

Producers and consumers run at once; reports both sides and publish -> receive latency
per message (from the send time in each payload). Validates as `bench consume` does.";

/// `tidelog bench`: load generators with validation.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Publish as fast as possible (or at --rate) and measure publish -> ack.
    #[command(after_help = PRODUCE_EXAMPLES)]
    Produce(BenchArgs),

    /// Read a topic back (filling it first when the bench creates it) and validate it.
    #[command(after_help = CONSUME_EXAMPLES)]
    Consume(BenchArgs),

    /// Produce and consume at once; measure publish -> receive.
    #[command(after_help = E2E_EXAMPLES)]
    E2e(BenchArgs),

    /// Work off a queue with N workers: deliver + durable ack throughput, with validation.
    Queue(super::queue::QueueBenchArgs),
}

/// Which benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Produce,
    Consume,
    E2e,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Produce => "produce",
            Kind::Consume => "consume",
            Kind::E2e => "e2e",
        }
    }

    pub fn produces(self) -> bool {
        self != Kind::Consume
    }

    pub fn consumes(self) -> bool {
        self != Kind::Produce
    }
}

impl BenchCommand {
    pub fn split(self) -> (Kind, BenchArgs) {
        match self {
            BenchCommand::Produce(args) => (Kind::Produce, args),
            BenchCommand::Consume(args) => (Kind::Consume, args),
            BenchCommand::E2e(args) => (Kind::E2e, args),
            BenchCommand::Queue(_) => unreachable!("bench::run runs bench queue on its own"),
        }
    }
}

/// A count with an optional k/M/G suffix (`250k`, `10M`).
pub fn count(text: &str) -> Result<u64, String> {
    let text = text.trim().replace('_', "");
    let (digits, factor) = match text.chars().last() {
        Some('k' | 'K') => (&text[..text.len() - 1], 1e3),
        Some('m' | 'M') => (&text[..text.len() - 1], 1e6),
        Some('g' | 'G') => (&text[..text.len() - 1], 1e9),
        _ => (text.as_str(), 1.0),
    };
    let value: f64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a count (e.g. 1000, 250k, 10M)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{text:?} is not a count (e.g. 1000, 250k, 10M)"));
    }
    Ok((value * factor).round() as u64)
}

fn message_size(text: &str) -> Result<usize, String> {
    let size = parse_size(text)?;
    if size < HEADER_BYTES as u64 {
        return Err(format!(
            "messages need at least {HEADER_BYTES} bytes (the bench header: checksum, run, producer, partition, sequence, send time)"
        ));
    }
    if size > 16 << 20 {
        return Err("the broker's largest message is 16 MiB".into());
    }
    Ok(size as usize)
}

fn duration(text: &str) -> Result<u64, String> {
    match parse_duration_ms(text)? {
        0 => Err("give a duration above 0 (e.g. 10s)".into()),
        ms => Ok(ms),
    }
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Topic to use: created (with the flags below) if missing; an existing one is
    /// reused as it is. Default: a new `tidelog-bench-<run id>` topic.
    #[arg(long, value_name = "NAME")]
    pub topic: Option<String>,

    /// Keep the topic the bench created (default: delete it at the end).
    #[arg(long)]
    pub keep: bool,

    /// Partitions of the topic the bench creates.
    #[arg(short = 'P', long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub partitions: u32,

    /// Producers, each on its own connection.
    #[arg(short, long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub producers: u32,

    /// Consumers, each on its own connection (consume, e2e).
    #[arg(short, long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub consumers: u32,

    /// Bytes per message (value), at least 32.
    #[arg(short = 's', long, default_value = "100", value_name = "SIZE", value_parser = message_size)]
    pub message_size: usize,

    /// Messages per publish request.
    #[arg(short, long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch: u32,

    /// Publish on a bidirectional PublishStream with requests pipelined (default: unary
    /// Publish calls, one at a time per producer).
    #[arg(long)]
    pub stream: bool,

    /// Give every message a unique 16-byte message id, so the topic's dedup window
    /// checks and stores each one: what deduplicated publish costs (the bench fails on
    /// an ack that says duplicate).
    #[arg(long)]
    pub ids: bool,

    /// Each producer publishes to one partition only (its number mod --partitions), as
    /// Iggy's pinned producers do, so the broker can write a producer's batches that
    /// arrive together in one go (default: each producer goes round the partitions, one
    /// request each).
    #[arg(long)]
    pub pin: bool,

    /// Requests in flight per producer with --stream.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub in_flight: u32,

    /// When the broker answers a publish.
    #[arg(long, value_enum, default_value_t = AckArg::Durable)]
    pub ack: AckArg,

    /// fsync policy of the topic the bench creates: always, interval:<duration>, never
    /// [default: always].
    #[arg(long, value_name = "POLICY", value_parser = fsync)]
    pub fsync: Option<Fsync>,

    /// Compression of the topic the bench creates.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,

    /// What message bodies are made of (json: compressible JSON-like text).
    #[arg(long, value_enum, default_value_t = FillerKind::Random)]
    pub payload: FillerKind,

    /// Messages to publish in total, over all producers (250k, 10M, ...).
    #[arg(short = 'n', long, default_value = "1M", value_name = "N", value_parser = count, conflicts_with = "duration")]
    pub messages: u64,

    /// Publish for this long instead of a message count (e.g. 30s).
    #[arg(short, long, value_name = "DURATION", value_parser = duration)]
    pub duration: Option<u64>,

    /// Target rate in messages/s over all producers (latency at a fixed load).
    #[arg(long, value_name = "N", value_parser = count)]
    pub rate: Option<u64>,

    /// Publish every message with this delay (`Message.delay_ms`): queues hold it until
    /// then; log readers see it at once (see `bench queue --delay`).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub delay: Option<u64>,

    /// Consumers join a consumer group (a new one per run) and the broker assigns them
    /// partitions.
    #[arg(long, conflicts_with_all = ["fanout", "fetch"])]
    pub group: bool,

    /// Every consumer reads every partition (default: the partitions are divided among
    /// the consumers).
    #[arg(long)]
    pub fanout: bool,

    /// Consumers read with unary Fetch long polls instead of a Subscribe stream.
    #[arg(long)]
    pub fetch: bool,

    /// Most messages per subscribe batch or fetch (the broker caps it at 10000).
    #[arg(long, default_value_t = 10_000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub read_batch: u32,

    /// A consumer that gets nothing for this long while messages are still expected
    /// gives up (a validation error).
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = duration)]
    pub idle_timeout: u64,

    /// consume: read with this server-side filter (see `tidelog consume --help`). The
    /// messages a bench writes carry a header `bench-pct` = their sequence number mod
    /// 100, so 'header.bench-pct == 7' matches 1% of them (their values are not JSON).
    /// Validation then checks that exactly the matching messages arrive, and the
    /// report adds the rate at which consumers went through the log.
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,

    /// Worker threads of the bench's own runtime [default: the number of CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub client_threads: Option<u32>,

    /// Record batches on the wire, through tidelog-client (the path a service takes):
    /// producers send each request as one record batch with `Producer::send_batch`
    /// (PublishBatch on the publish stream; zstd with --compression zstd, the client's
    /// choice), consumers read whole stored batches with `Subscription`, `GroupMember`
    /// (--group) or `Client::fetch` (--fetch), which decode them. Without it the bench
    /// measures the per-message API on the generated clients.
    #[arg(long)]
    pub batch_wire: bool,
}

/// The request limit of a default tidelogd (its --max-request-bytes).
const REQUEST_BYTES_MAX: u64 = 32 << 20;

impl BenchArgs {
    /// Usage errors clap cannot express (exit 2).
    pub fn check(&self, kind: Kind) -> CliResult<()> {
        let request = u64::from(self.batch) * self.message_size as u64;
        if request > REQUEST_BYTES_MAX - (1 << 20) {
            return Err(CliError::usage(
                format!(
                    "--batch {} x --message-size {} makes {request} bytes per request, over tidelogd's 32 MiB request limit",
                    self.batch, self.message_size
                ),
                "lower --batch or --message-size",
            ));
        }
        if let Some(filter) = &self.filter {
            if kind != Kind::Consume {
                return Err(CliError::usage(
                    format!(
                        "--filter is for `bench consume`, not `bench {}`",
                        kind.name()
                    ),
                    "drop --filter, or run `tidelog bench consume --filter EXPR`",
                ));
            }
            if let Err(error) = tidelog_storage::Filter::parse(filter) {
                return Err(CliError::usage(
                    format!("--filter {error}"),
                    "see `tidelog consume --help` and the README (Filters) for the grammar",
                ));
            }
        }
        if self.batch_wire && kind.produces() && !self.stream {
            return Err(CliError::usage(
                "--batch-wire publishes on the publish stream",
                "add --stream",
            ));
        }
        if self.pin && kind.produces() && self.producers < self.partitions {
            return Err(CliError::usage(
                format!(
                    "--pin with {} producers leaves some of the {} partitions empty",
                    self.producers, self.partitions
                ),
                "give at least as many --producers as --partitions, or drop --pin",
            ));
        }
        if self.rate == Some(0) {
            return Err(CliError::usage(
                "--rate 0 sends nothing",
                "give a rate above 0, or drop --rate",
            ));
        }
        if self.messages == 0 && self.duration.is_none() && kind.produces() {
            return Err(CliError::usage(
                "--messages 0 sends nothing",
                "give a count above 0",
            ));
        }
        if kind.consumes()
            && !self.group
            && !self.fanout
            && self.consumers > self.partitions
            && self.topic.is_none()
        {
            return Err(CliError::usage(
                format!(
                    "{} consumers cannot divide {} partition{} among them",
                    self.consumers,
                    self.partitions,
                    if self.partitions == 1 { "" } else { "s" }
                ),
                "give --partitions >= --consumers, or --fanout (each reads everything) or --group",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_suffixes() {
        assert_eq!(count("1000"), Ok(1000));
        assert_eq!(count("250k"), Ok(250_000));
        assert_eq!(count("1.5M"), Ok(1_500_000));
        assert_eq!(count("10_000"), Ok(10_000));
        assert_eq!(count("2G"), Ok(2_000_000_000));
        assert!(count("lots").is_err());
        assert!(count("-5").is_err());
    }

    #[test]
    fn message_sizes_hold_the_header() {
        assert_eq!(message_size("100"), Ok(100));
        assert_eq!(message_size("1KiB"), Ok(1024));
        assert!(message_size("31").is_err());
        assert!(message_size("17MiB").is_err());
    }
}
