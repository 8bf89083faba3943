//! `tidelog consume`: print messages.
//!
//! Three ways to read, chosen by the flags:
//! - no group, no `--follow`: unary `Fetch` per partition, from the start position up
//!   to the end offsets seen at the start; exact and finite.
//! - no group, `--follow`: one `Subscribe` stream from the start position.
//! - `--group`: `Subscribe` as a group member; the broker assigns partitions and starts
//!   at the committed offsets. What is printed is committed with the member's
//!   generation after each printed batch (so a stream the broker ends with an error,
//!   or a crash, repeats nothing that was committed), when a rebalance takes partitions
//!   away (inside the broker's handover window, before the next owner starts), and
//!   before leaving. Without `--follow` reading stops when every assigned partition
//!   reached its end offset, or after a quiet spell.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tidelog_proto::v1::{
    CommitOffsetsRequest, ConsumedMessage, FetchOffsetsRequest, FetchRequest, GroupMembership,
    ResetOffsetsRequest, ResetPolicy, ResetReason, StartPosition, SubscribeRequest,
    TopicDescription, TopicPartitionOffset, reset_offsets_request, start_position,
    subscribe_request, subscribe_response,
};
use tidelog_storage::msgid;
use tonic::Streaming;

use crate::cli::{ConsumeArgs, Format, ResetPolicyArg, StartAt, Until};
use crate::client::Broker;
use crate::error::{CliError, CliResult};
use crate::output::{Stdout, bytes_json, note};
use crate::terms::{half_open, to_cli};
use crate::time::format_datetime_ms;
use crate::topic::describe;

/// Group id used for dry-run offset lookups by time; a dry run never commits, so
/// the group is never created.
const LOOKUP_GROUP: &str = "tidelog-cli.offset-lookup";
/// Most messages asked for per fetch.
const FETCH_MESSAGES_MAX: u32 = 10_000;
/// Without `--follow`, a group member stops after this long without any event even
/// if positions could not prove it caught up (expired messages at the end of a
/// partition leave gaps no message fills).
const QUIET_SPELL: Duration = Duration::from_secs(2);
/// How long the broker keeps a partition a rebalance takes from this member, waiting
/// for the commit of what was printed, before its next owner starts anyway.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// Shown to the broker as the member's client id.
const CLIENT_ID: &str = "tidelog-cli";

/// Prints messages in the chosen format.
struct Printer {
    out: Stdout,
    format: Format,
    print_key: bool,
    print_meta: bool,
    print_headers: bool,
    key_separator: Vec<u8>,
    /// What follows each message in the text and base64 formats.
    delimiter: Vec<u8>,
    printed: u64,
    limit: Option<u64>,
    until: Option<Until>,
}

impl Printer {
    fn done(&self) -> bool {
        self.limit.is_some_and(|limit| self.printed >= limit)
    }

    /// Whether `m` is at or past `--until` (not printed; its partition is done).
    fn past_until(&self, m: &ConsumedMessage) -> bool {
        match self.until {
            None => false,
            Some(Until::Offset(offset)) => m.offset >= offset,
            Some(Until::TimestampMs(ms)) => m.timestamp_ms >= ms,
        }
    }

    /// Whether a partition whose next offset is `next` has reached `--until OFFSET`.
    fn reached_until(&self, next: u64) -> bool {
        matches!(self.until, Some(Until::Offset(offset)) if next >= offset)
    }

    fn print(&mut self, m: &ConsumedMessage) -> CliResult<()> {
        match self.format {
            Format::Json => self.out.json(&message_json(m))?,
            Format::Text | Format::Base64 => {
                let base64 = self.format == Format::Base64;
                let bytes = |b: &[u8]| -> Vec<u8> {
                    if base64 {
                        crate::output::base64(b).into_bytes()
                    } else {
                        b.to_vec()
                    }
                };
                let mut line = Vec::with_capacity(m.value.len() + m.key.len() + 48);
                if self.print_meta {
                    line.extend_from_slice(
                        format!(
                            "{}:{} {}",
                            m.partition,
                            m.offset,
                            format_datetime_ms(m.timestamp_ms)
                        )
                        .as_bytes(),
                    );
                    if !m.id.is_empty() {
                        line.extend_from_slice(b" id=");
                        line.extend_from_slice(msgid::display(&m.id).as_bytes());
                    }
                    line.push(b'\t');
                }
                if self.print_key {
                    line.extend_from_slice(&bytes(&m.key));
                    line.extend_from_slice(&self.key_separator);
                }
                if self.print_headers {
                    line.extend_from_slice(headers_text(&m.headers).as_bytes());
                    line.push(b'\t');
                }
                line.extend_from_slice(&bytes(&m.value));
                line.extend_from_slice(&self.delimiter);
                self.out.write(&line)?;
            }
        }
        self.printed += 1;
        Ok(())
    }
}

/// Headers as one text field: `key=value` pairs joined by `,`, `-` for none. Bytes
/// that are not UTF-8 become `\xNN`; `\`, `,`, `=`, tab and newline are escaped, so
/// the field never splits a line or a pair.
pub fn headers_text(headers: &[tidelog_proto::v1::Header]) -> String {
    if headers.is_empty() {
        return "-".into();
    }
    fn escape(bytes: &[u8], out: &mut String) {
        for chunk in bytes.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    ',' => out.push_str("\\,"),
                    '=' => out.push_str("\\="),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            for b in chunk.invalid() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    let mut out = String::new();
    for (i, h) in headers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        escape(h.key.as_bytes(), &mut out);
        out.push('=');
        escape(&h.value, &mut out);
    }
    out
}

/// One message as a JSON object: partition, offset, timestamp (ms), key (null when
/// empty), value, headers (in order, keys may repeat), and the message id (its text
/// form, `tidelog_storage::msgid`), deliver-at time and priority when it has them.
pub fn message_json(m: &ConsumedMessage) -> Value {
    let headers: Vec<Value> = m
        .headers
        .iter()
        .map(|h| json!({"key": h.key, "value": bytes_json(&h.value)}))
        .collect();
    json!({
        "partition": m.partition,
        "offset": m.offset,
        "timestamp": m.timestamp_ms,
        "key": if m.key.is_empty() { Value::Null } else { bytes_json(&m.key) },
        "value": bytes_json(&m.value),
        "headers": headers,
        "id": (!m.id.is_empty()).then(|| msgid::display(&m.id)),
        "deliver_at_ms": m.deliver_at_ms,
        "priority": m.priority,
    })
}

fn reset_policy(arg: ResetPolicyArg) -> ResetPolicy {
    match arg {
        ResetPolicyArg::Earliest => ResetPolicy::Earliest,
        ResetPolicyArg::Latest => ResetPolicy::Latest,
        ResetPolicyArg::Error => ResetPolicy::Error,
    }
}

pub async fn run(broker: &Broker, args: ConsumeArgs, json: bool) -> CliResult<()> {
    let mut printer = Printer {
        out: Stdout::new(),
        format: if json { Format::Json } else { args.format },
        print_key: args.print_key,
        print_meta: args.print_meta,
        print_headers: args.print_headers,
        key_separator: args.key_separator.as_bytes().to_vec(),
        delimiter: args
            .delimiter
            .clone()
            .map_or_else(|| b"\n".to_vec(), |d| d.0),
        printed: 0,
        limit: args.count,
        until: args.until,
    };
    if args.count == Some(0) {
        return Ok(());
    }
    let result = match (&args.group, args.follow) {
        (Some(group), _) => consume_group(broker, &args, group, &mut printer).await,
        (None, false) => consume_fetch(broker, &args, &mut printer).await,
        (None, true) => consume_follow(broker, &args, &mut printer).await,
    };
    // Whatever was printed reaches the reader even when reading failed.
    let flushed = printer.out.flush();
    result.and(flushed)
}

/// The topic, and the chosen partitions checked against it.
async fn topic_and_partitions(
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
            format!(
                "topic {:?} has {count} partition{} ({}), not partition {bad}",
                args.topic,
                if count == 1 { "" } else { "s" },
                half_open(0, u64::from(count))
            ),
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
async fn offsets_for_time(
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

async fn consume_fetch(
    broker: &Broker,
    args: &ConsumeArgs,
    printer: &mut Printer,
) -> CliResult<()> {
    let (topic, partitions) = topic_and_partitions(broker, args).await?;
    let by_time = match args.from {
        Some(StartAt::TimestampMs(ms)) => {
            Some(offsets_for_time(broker, &args.topic, &partitions, ms).await?)
        }
        _ => None,
    };
    let mut consumer = broker.consumer();
    let mut damaged = Vec::new();
    for &partition in &partitions {
        let Some(state) = topic.partitions.iter().find(|p| p.partition == partition) else {
            continue;
        };
        let (log_start, end) = (state.log_start_offset, state.end_offset);
        let mut offset = match args.from.unwrap_or(StartAt::Earliest) {
            StartAt::Earliest => log_start,
            StartAt::Latest => end,
            StartAt::Offset(o) if o < log_start || o > end => {
                out_of_range_start(args, partition, o, log_start, end)?
            }
            StartAt::Offset(o) => o,
            StartAt::TimestampMs(_) => by_time
                .as_ref()
                .and_then(|m| m.get(&partition).copied())
                .unwrap_or(end),
        };
        let context = format!("fetching from {}/{partition}", args.topic);
        while offset < end && !printer.done() {
            let left = printer
                .limit
                .map_or(u64::MAX, |limit| limit - printer.printed);
            let fetched = consumer
                .fetch(FetchRequest {
                    topic: args.topic.clone(),
                    partition,
                    offset,
                    max_messages: left.min(u64::from(FETCH_MESSAGES_MAX)) as u32,
                    max_bytes: 0,
                    max_wait_ms: 0,
                })
                .await;
            let response = match fetched {
                Ok(response) => response.into_inner(),
                // The messages before the damage were printed; the other partitions
                // are read on, and the damage is reported at the end.
                Err(status) if status.code() == tonic::Code::DataLoss => {
                    let damage = Damage::new(partition, offset, &status);
                    damage.warn(&args.topic);
                    damaged.push(damage);
                    break;
                }
                Err(status) => return Err(broker.error(&context, &status)),
            };
            let mut reached_until = false;
            for m in response.messages.iter().filter(|m| m.offset < end) {
                if printer.past_until(m) {
                    reached_until = true;
                    break;
                }
                printer.print(m)?;
                if printer.done() {
                    return damage_error(&args.topic, &damaged);
                }
            }
            if reached_until || printer.reached_until(response.next_offset) {
                break;
            }
            if response.next_offset <= offset {
                break; // nothing more is readable below `end`
            }
            offset = response.next_offset;
        }
        if printer.done() {
            break;
        }
    }
    damage_error(&args.topic, &damaged)
}

/// A partition that could not be read past a damaged batch (DATA_LOSS).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Damage {
    partition: u32,
    /// The offset whose read failed: the damaged batch holds it (or the first
    /// message after it).
    offset: u64,
    /// What the broker found, without its advice in API terms.
    cause: String,
}

/// The offset after the damaged batch, when the broker's message (in the CLI's terms)
/// names the batch's offsets ("... in the batch holding offsets 97-127").
fn past_damaged_batch(cause: &str) -> Option<u64> {
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
    fn new(partition: u32, offset: u64, status: &tonic::Status) -> Self {
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
    fn warn(&self, topic: &str) {
        note(&format!(
            "warning: {topic}/{}: a damaged batch at offset {} (DATA_LOSS: {}); the messages \
             before it were printed, reading goes on with the other partitions",
            self.partition, self.offset, self.cause
        ));
    }
}

/// What to do about damaged batches: the broker never serves them.
const DAMAGE_TODO: &str = "stop tidelogd and run `tidelog segment verify` on its data directory \
     to see the damage (then `tidelog segment repair`)";

/// Exit 1 naming every partition that stopped at a damaged batch, or `Ok`.
fn damage_error(topic: &str, damaged: &[Damage]) -> CliResult<()> {
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

/// Where a `--from <offset>` outside `log_start..=end` starts, by `--offset-reset`
/// (the same rule the broker applies with --follow): the log start with a note, the
/// end with a note, or an error naming the offsets and what to do.
fn out_of_range_start(
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
const OUT_OF_RANGE_TODO: &str = "start inside that range (--from earliest, --from latest or an offset in it), or let --offset-reset earliest or latest move the position";

/// The error for a stream the broker ended: an OUT_OF_RANGE under `--offset-reset
/// error` says what to do in the CLI's flags instead of the RPCs the broker names.
fn stream_error(broker: &Broker, context: &str, status: &tonic::Status, group: bool) -> CliError {
    if status.code() != tonic::Code::OutOfRange {
        return broker.error(context, status);
    }
    // The broker's message is "<what>; <what to do in RPC terms>": keep the first part.
    let what = to_cli(status.message().split("; ").next().unwrap_or_default());
    let what = what.trim_end_matches(" and --offset-reset is error");
    let todo = if group {
        "move the group's offsets with `tidelog group reset-offsets`, or let --offset-reset earliest or latest move the position"
    } else {
        OUT_OF_RANGE_TODO
    };
    CliError::failure(
        format!("{context} failed: {what}, and --offset-reset is error"),
        todo,
    )
    .with_code(tonic::Code::OutOfRange)
}

/// The next event of a stream, or the status that ended it; `Ok(None)` when it ended
/// without one.
async fn next_status_event(
    stream: &mut Streaming<tidelog_proto::v1::SubscribeResponse>,
) -> Result<Option<subscribe_response::Event>, tonic::Status> {
    loop {
        if let Some(response) = stream.message().await? {
            if let Some(event) = response.event {
                return Ok(Some(event));
            }
        } else {
            return Ok(None);
        }
    }
}

/// Tells the operator a position moved, unless it is the ordinary start of a group
/// that has not committed anything yet.
fn reset_note(reset: &tidelog_proto::v1::PositionReset) {
    let why = match ResetReason::try_from(reset.reason) {
        Ok(ResetReason::BelowLogStart) => "was below the log start (retention or TTL removed it)",
        Ok(ResetReason::AboveEndOffset) => "was past the end",
        Ok(ResetReason::NoCommittedOffset) => return,
        _ => "was out of range",
    };
    let from = reset.from_offset.map_or(String::new(), |o| format!(" {o}"));
    note(&format!(
        "note: partition {}: position{from} {why}; continuing at {}",
        reset.partition, reset.to_offset
    ));
}

async fn consume_follow(
    broker: &Broker,
    args: &ConsumeArgs,
    printer: &mut Printer,
) -> CliResult<()> {
    let position = match args.from.unwrap_or(StartAt::Earliest) {
        StartAt::Earliest => start_position::Position::Earliest(start_position::Earliest {}),
        StartAt::Latest => start_position::Position::Latest(start_position::Latest {}),
        StartAt::Offset(o) => start_position::Position::Offset(o),
        StartAt::TimestampMs(ms) => start_position::Position::TimestampMs(ms),
    };
    let context = format!("subscribing to topic {:?}", args.topic);
    let mut partitions = args.partition.clone();
    partitions.sort_unstable();
    partitions.dedup();
    // Where each partition stands: from the Positioned event, then every batch's
    // positions. A resubscription (after a damaged partition is dropped) starts each
    // remaining partition there.
    let mut positions: BTreeMap<u32, u64> = BTreeMap::new();
    let mut damaged: Vec<Damage> = Vec::new();
    // Partitions that reached --until: their later messages are not printed.
    let mut finished: std::collections::BTreeSet<u32> = std::collections::BTreeSet::new();
    let until_clock = until_deadline(printer.until);
    let mut stop = StopSignal::new();
    let mut backoff = Reconnect::default();
    loop {
        let request = if positions.is_empty() {
            SubscribeRequest {
                topic: args.topic.clone(),
                partitions: partitions.clone(),
                start: Some(StartPosition {
                    position: Some(position),
                }),
                ..SubscribeRequest::default()
            }
        } else {
            SubscribeRequest {
                topic: args.topic.clone(),
                partition_starts: positions
                    .iter()
                    .map(|(&partition, &offset)| subscribe_request::PartitionStart {
                        partition,
                        offset,
                    })
                    .collect(),
                ..SubscribeRequest::default()
            }
        };
        let subscribed = broker
            .consumer()
            .subscribe(SubscribeRequest {
                group: None,
                reset_policy: reset_policy(args.offset_reset) as i32,
                send_positioned: true,
                ..request
            })
            .await;
        let mut stream = match subscribed {
            Ok(stream) => stream.into_inner(),
            Err(status) if backoff.is_retrying() && reconnectable(&status) => {
                if !backoff.wait(&mut stop).await {
                    return damage_error(&args.topic, &damaged);
                }
                continue;
            }
            Err(status) => return Err(broker.error(&context, &status)),
        };
        let ended = loop {
            if !positions.is_empty() && positions.keys().all(|p| finished.contains(p)) {
                return damage_error(&args.topic, &damaged);
            }
            let event = tokio::select! {
                event = next_status_event(&mut stream) => event,
                _ = stop.recv() => return damage_error(&args.topic, &damaged),
                _ = sleep_until_opt(until_clock) => return damage_error(&args.topic, &damaged),
            };
            if event.is_ok() {
                backoff.connected();
            }
            match event {
                Err(status) => break status,
                Ok(None) => return damage_error(&args.topic, &damaged),
                Ok(Some(subscribe_response::Event::Batch(batch))) => {
                    for m in &batch.messages {
                        if finished.contains(&m.partition) {
                            continue;
                        }
                        if printer.past_until(m) {
                            finished.insert(m.partition);
                            continue;
                        }
                        printer.print(m)?;
                        positions.insert(m.partition, m.offset + 1);
                        if printer.done() {
                            return damage_error(&args.topic, &damaged);
                        }
                    }
                    for p in &batch.positions {
                        if !finished.contains(&p.partition) {
                            positions.insert(p.partition, p.next_offset);
                        }
                    }
                    finished.extend(
                        positions
                            .iter()
                            .filter(|(_, next)| printer.reached_until(**next))
                            .map(|(p, _)| *p),
                    );
                    // A pipe reader (`| grep`) sees each batch as it arrives.
                    printer.out.flush()?;
                }
                Ok(Some(subscribe_response::Event::PositionReset(reset))) => {
                    reset_note(&reset);
                    positions.insert(reset.partition, reset.to_offset);
                }
                Ok(Some(subscribe_response::Event::Positioned(positioned))) => {
                    for p in &positioned.positions {
                        positions.insert(p.partition, p.next_offset);
                        if printer.reached_until(p.next_offset) {
                            finished.insert(p.partition);
                        }
                    }
                }
                Ok(Some(subscribe_response::Event::Assignment(_))) => {}
            }
        };
        if reconnectable(&ended) {
            // The broker restarted (or is stopping): subscribe again from where every
            // partition stood, as kcat and `nats sub` do.
            printer.out.flush()?;
            backoff.lost(&ended);
            if !backoff.wait(&mut stop).await {
                return damage_error(&args.topic, &damaged);
            }
            continue;
        }
        if ended.code() != tonic::Code::DataLoss || positions.is_empty() {
            return Err(stream_error(broker, &context, &ended, false));
        }
        // Which partition is damaged: the one whose next read fails. Drop it and go on
        // with the others from where each stood.
        printer.out.flush()?;
        let found = probe_damage(broker, &args.topic, &positions).await;
        if found.is_empty() {
            return Err(stream_error(broker, &context, &ended, false));
        }
        for damage in found {
            damage.warn(&args.topic);
            positions.remove(&damage.partition);
            damaged.push(damage);
        }
        if positions.is_empty() {
            return damage_error(&args.topic, &damaged);
        }
    }
}

/// Whether a stream that ended with `status` is worth opening again after a pause:
/// the broker went away (a restart, a lost connection) or is stopping. A partition
/// recovery refused stays refused until an operator repairs it: not retried.
fn reconnectable(status: &tonic::Status) -> bool {
    let message = status.message().to_ascii_lowercase();
    let transport = [
        "transport error",
        "connection refused",
        "connection reset",
        "connection closed",
        "broken pipe",
        "error trying to connect",
        "h2 protocol error",
        "error reading a body",
        "stream closed",
    ]
    .iter()
    .any(|needle| message.contains(needle));
    match status.code() {
        tonic::Code::Unavailable => !message.contains("recovery refused"),
        tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled => transport,
        _ => false,
    }
}

/// Reconnecting with backoff after the broker went away (`--follow`).
#[derive(Debug, Default)]
struct Reconnect {
    /// The pause before the next attempt; zero while connected.
    delay: Duration,
}

impl Reconnect {
    /// First pause; doubled after every failed attempt up to [`RECONNECT_DELAY_MAX`].
    const FIRST: Duration = Duration::from_millis(100);

    fn is_retrying(&self) -> bool {
        !self.delay.is_zero()
    }

    /// The stream ended with `status`: say so once and start backing off.
    fn lost(&mut self, status: &tonic::Status) {
        if !self.is_retrying() {
            note(&format!(
                "warning: lost the broker ({}: {}); reconnecting with backoff (Ctrl-C stops)",
                crate::error::code_name(status.code()),
                to_cli(status.message())
            ));
            self.delay = Self::FIRST;
        }
    }

    /// A stream delivered an event: connected again.
    fn connected(&mut self) {
        if self.is_retrying() {
            note("note: reconnected to the broker; reading on");
            self.delay = Duration::ZERO;
        }
    }

    /// Pauses before the next attempt; false when a stop signal came first.
    async fn wait(&mut self, stop: &mut StopSignal) -> bool {
        let delay = self.delay.max(Self::FIRST);
        self.delay = (delay * 2).min(RECONNECT_DELAY_MAX);
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = stop.recv() => false,
        }
    }
}

/// The longest pause between two attempts to reach the broker again.
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(5);

/// With `--until TIME` and `--follow`: the moment the clock passes TIME.
fn until_deadline(until: Option<Until>) -> Option<tokio::time::Instant> {
    let Some(Until::TimestampMs(ms)) = until else {
        return None;
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let left = u64::try_from(ms.saturating_sub(now_ms)).unwrap_or(0);
    Some(tokio::time::Instant::now() + Duration::from_millis(left))
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The partitions whose next read (at `positions`) fails with DATA_LOSS.
async fn probe_damage(broker: &Broker, topic: &str, positions: &BTreeMap<u32, u64>) -> Vec<Damage> {
    let mut consumer = broker.consumer();
    let mut found = Vec::new();
    for (&partition, &offset) in positions {
        let probe = consumer
            .fetch(FetchRequest {
                topic: topic.to_string(),
                partition,
                offset,
                max_messages: 1,
                max_bytes: 0,
                max_wait_ms: 0,
            })
            .await;
        match probe {
            Err(status) if status.code() == tonic::Code::DataLoss => {
                found.push(Damage::new(partition, offset, &status));
            }
            // Anything else is that partition's own story, told when it is read.
            _ => {}
        }
    }
    found
}

/// Ctrl-C or SIGTERM: stop reading (a group member commits what it printed first).
/// Listening starts when it is created, so a signal that arrives while a batch is
/// being printed is not missed.
struct StopSignal {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignal {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        StopSignal {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }

    async fn recv(&mut self) {
        async fn on(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = on(&mut self.interrupt) => {}
            _ = on(&mut self.terminate) => {}
        }
    }
}

/// A group member's view of its partitions.
#[derive(Debug, Default)]
struct Member {
    member_id: String,
    generation: u64,
    assigned: Vec<u32>,
    /// Next offset per partition, as far as known (committed, reset, or printed).
    position: BTreeMap<u32, u64>,
    /// End offsets seen at the last assignment (the target without --follow).
    end: BTreeMap<u32, u64>,
    /// Offsets to commit: where reading goes on after what was printed (the batch's
    /// position, past expired messages, when the whole batch was printed).
    printed: BTreeMap<u32, u64>,
    committed: BTreeMap<u32, u64>,
    /// Partitions that reached `--until`: nothing more of them is printed.
    finished: std::collections::BTreeSet<u32>,
}

impl Member {
    fn caught_up(&self) -> bool {
        self.assigned.iter().all(|p| {
            matches!((self.position.get(p), self.end.get(p)), (Some(pos), Some(end)) if pos >= end)
        })
    }

    /// Every assigned partition reached `--until`.
    fn all_finished(&self) -> bool {
        !self.assigned.is_empty() && self.assigned.iter().all(|p| self.finished.contains(p))
    }
}

async fn consume_group(
    broker: &Broker,
    args: &ConsumeArgs,
    group: &str,
    printer: &mut Printer,
) -> CliResult<()> {
    let context = format!("consuming topic {:?} as group {group:?}", args.topic);
    let join = |member_id: String| SubscribeRequest {
        topic: args.topic.clone(),
        partitions: vec![],
        start: None,
        group: Some(GroupMembership {
            group_id: group.to_string(),
            member_id,
            session_timeout_ms: 0,
            auto_commit_interval_ms: 0,
            client_id: CLIENT_ID.into(),
            handover_timeout_ms: HANDOVER_TIMEOUT.as_millis() as u64,
        }),
        reset_policy: reset_policy(args.offset_reset) as i32,
        max_batch_messages: 0,
        max_batch_bytes: 0,
        ..SubscribeRequest::default()
    };
    // --from with a group: where partitions without a committed offset start
    // (kafka-console-consumer's --from-beginning), as the reset policy for earliest
    // and latest, or committed before joining for an offset or a time.
    let policy = match args.from {
        Some(StartAt::Earliest) => ResetPolicy::Earliest,
        Some(StartAt::Latest) => ResetPolicy::Latest,
        Some(start) => {
            seed_group_start(broker, group, &args.topic, start).await?;
            reset_policy(args.offset_reset)
        }
        None => reset_policy(args.offset_reset),
    };
    let join = |member_id: String| SubscribeRequest {
        reset_policy: policy as i32,
        ..join(member_id)
    };
    let mut stream = broker
        .consumer()
        .subscribe(join(String::new()))
        .await
        .map_err(|s| broker.error(&context, &s))?
        .into_inner();
    let mut member = Member::default();
    let mut stop = StopSignal::new();
    let mut backoff = Reconnect::default();
    let outcome = loop {
        if !args.follow && !member.member_id.is_empty() && member.caught_up() {
            break Ok(());
        }
        if member.all_finished() {
            break Ok(());
        }
        let event = tokio::select! {
            event = next_status_event(&mut stream) => event,
            _ = tokio::time::sleep(QUIET_SPELL), if !args.follow && !member.member_id.is_empty() => break Ok(()),
            _ = stop.recv() => break Ok(()),
        };
        match event {
            // The broker ended the stream (and the membership): every printed batch
            // was committed when it was printed.
            Err(status) if status.code() == tonic::Code::DataLoss => {
                break Err(group_damage_error(broker, group, &args.topic, &member, &status).await);
            }
            Err(status) if args.follow && reconnectable(&status) => {
                // The broker restarted: join again (the same member id, which the
                // broker keeps or treats as a first join) once it is back.
                printer.out.flush()?;
                backoff.lost(&status);
                let rejoined = loop {
                    if !backoff.wait(&mut stop).await {
                        break None;
                    }
                    match broker
                        .consumer()
                        .subscribe(join(member.member_id.clone()))
                        .await
                    {
                        Ok(stream) => break Some(stream.into_inner()),
                        Err(status) if reconnectable(&status) => {}
                        Err(status) => {
                            return Err(broker.error(&context, &status));
                        }
                    }
                };
                match rejoined {
                    Some(rejoined) => {
                        stream = rejoined;
                        continue;
                    }
                    None => break Ok(()),
                }
            }
            Err(status) => break Err(stream_error(broker, &context, &status, true)),
            Ok(None) => break Ok(()),
            Ok(Some(subscribe_response::Event::Assignment(assignment))) => {
                backoff.connected();
                hand_over(broker, group, &args.topic, &mut member, &assignment).await;
                if let Err(e) =
                    on_assignment(broker, group, &args.topic, &mut member, assignment).await
                {
                    break Err(e);
                }
            }
            Ok(Some(subscribe_response::Event::PositionReset(reset))) => {
                reset_note(&reset);
                member.position.insert(reset.partition, reset.to_offset);
                // Where the group reads next: committed with what is printed, so a
                // group that starts at `latest` goes on from there next time.
                member.printed.insert(reset.partition, reset.to_offset);
            }
            // Only plain streams that ask for it get one.
            Ok(Some(subscribe_response::Event::Positioned(_))) => {}
            Ok(Some(subscribe_response::Event::Batch(batch))) => {
                let mut stop = false;
                // Partitions of this batch not printed to their end (--until).
                let mut cut = std::collections::BTreeSet::new();
                for m in &batch.messages {
                    if member.finished.contains(&m.partition) {
                        cut.insert(m.partition);
                        continue;
                    }
                    if printer.past_until(m) {
                        member.finished.insert(m.partition);
                        cut.insert(m.partition);
                        continue;
                    }
                    if let Err(e) = printer.print(m) {
                        // Commit what did reach the reader, then report.
                        final_commit(broker, group, &args.topic, &mut member, printer).await;
                        return Err(e);
                    }
                    member.position.insert(m.partition, m.offset + 1);
                    member.printed.insert(m.partition, m.offset + 1);
                    if printer.done() {
                        stop = true;
                        break;
                    }
                }
                if stop {
                    break Ok(());
                }
                // Printed to the batch's end: go on (and commit) from where the broker
                // says the partition stands, past expired messages never delivered,
                // not from "last offset + 1".
                for position in &batch.positions {
                    if cut.contains(&position.partition)
                        || !member.assigned.contains(&position.partition)
                    {
                        continue;
                    }
                    member
                        .position
                        .insert(position.partition, position.next_offset);
                    member
                        .printed
                        .insert(position.partition, position.next_offset);
                    if printer.reached_until(position.next_offset) {
                        member.finished.insert(position.partition);
                    }
                }
                // Unknown how much of a failed flush reached the reader: leave it
                // uncommitted (delivered again rather than lost).
                printer.out.flush()?;
                // Printed: commit now, so an error, a crash or a rebalance a moment
                // later does not deliver these again.
                let assigned = member.assigned.clone();
                if let Err(refused) =
                    commit(broker, group, &args.topic, &mut member, &assigned).await
                {
                    // FAILED_PRECONDITION: a rebalance is under way; the commit made
                    // when its Assignment arrives covers these messages.
                    if refused.code != tonic::Code::FailedPrecondition {
                        commit_warning(&refused.error);
                    }
                }
            }
        }
    };
    final_commit(broker, group, &args.topic, &mut member, printer).await;
    outcome
}

/// `--from OFFSET|TIME` with a group: commits that start, as a tool, for the
/// partitions the group has no committed offset for, before joining. A group with
/// live members refuses a tool's commit: then --from does not apply (said on stderr)
/// and those partitions start by --offset-reset.
async fn seed_group_start(
    broker: &Broker,
    group: &str,
    topic: &str,
    start: StartAt,
) -> CliResult<()> {
    let context = format!("starting group {group:?} on topic {topic:?}");
    let committed: std::collections::BTreeSet<u32> = broker
        .groups()
        .fetch_offsets(FetchOffsetsRequest {
            group_id: group.to_string(),
            topic: Some(topic.to_string()),
        })
        .await
        .map_err(|s| broker.error(&context, &s))?
        .into_inner()
        .offsets
        .into_iter()
        .map(|c| c.partition)
        .collect();
    let description = describe(broker, topic).await?.unwrap_or_default();
    let fresh: Vec<u32> = description
        .partitions
        .iter()
        .map(|p| p.partition)
        .filter(|p| !committed.contains(p))
        .collect();
    if fresh.is_empty() {
        return Ok(());
    }
    let by_time = match start {
        StartAt::TimestampMs(ms) => Some(offsets_for_time(broker, topic, &fresh, ms).await?),
        _ => None,
    };
    let offsets: Vec<TopicPartitionOffset> = description
        .partitions
        .iter()
        .filter(|p| fresh.contains(&p.partition))
        .map(|p| {
            let offset = match start {
                StartAt::Offset(o) => o.clamp(p.log_start_offset, p.end_offset),
                _ => by_time
                    .as_ref()
                    .and_then(|m| m.get(&p.partition).copied())
                    .unwrap_or(p.end_offset),
            };
            TopicPartitionOffset {
                topic: topic.to_string(),
                partition: p.partition,
                offset,
                metadata: String::new(),
            }
        })
        .collect();
    let committed = broker
        .groups()
        .commit_offsets(CommitOffsetsRequest {
            group_id: group.to_string(),
            member_id: String::new(),
            generation: None,
            offsets,
        })
        .await;
    match committed {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            note(&format!(
                "note: group {group} has live members, so --from does not apply; partitions \
                 without a committed offset start by --offset-reset"
            ));
            Ok(())
        }
        Err(status) => Err(broker.error(&context, &status)),
    }
}

/// A group member's stream ended with DATA_LOSS: name the damaged partition and
/// offset, and how the group gets past it (the broker ends the whole membership, so
/// the other partitions wait for a group that no longer reads the damaged one).
async fn group_damage_error(
    broker: &Broker,
    group: &str,
    topic: &str,
    member: &Member,
    status: &tonic::Status,
) -> CliError {
    let positions: BTreeMap<u32, u64> = member
        .assigned
        .iter()
        .filter_map(|p| member.position.get(p).map(|&o| (*p, o)))
        .collect();
    let found = probe_damage(broker, topic, &positions).await;
    let Some(damage) = found.first() else {
        return broker.error(
            &format!("consuming topic {topic:?} as group {group:?}"),
            status,
        );
    };
    CliError::failure(
        format!(
            "partition {} of topic {topic:?} could not be read past offset {}: the batch there \
             is damaged (DATA_LOSS: {}); what was printed before it is committed",
            damage.partition, damage.offset, damage.cause
        ),
        format!(
            "{DAMAGE_TODO}; to skip it, move the group past the damaged batch: `tidelog group \
             reset-offsets --group {group} --topic {topic}:{} --to-offset {} --execute`",
            damage.partition,
            past_damaged_batch(&damage.cause).map_or("OFFSET".to_string(), |o| o.to_string())
        ),
    )
    .with_code(tonic::Code::DataLoss)
}

/// Before leaving the group: flush what was printed and commit it. A failure is a
/// warning (the messages will be delivered again).
async fn final_commit(
    broker: &Broker,
    group: &str,
    topic: &str,
    member: &mut Member,
    printer: &mut Printer,
) {
    // Only what reached the reader counts as printed.
    if printer.out.flush().is_err() {
        return;
    }
    let assigned = member.assigned.clone();
    match commit(broker, group, topic, member, &assigned).await {
        Ok(_) => {}
        // The broker ended the membership (a stream that ended with an error takes the
        // member with it, even when its last batch arrived just before): commit as a
        // tool, which the broker accepts only while the group has no live member.
        Err(refused) if refused.code == tonic::Code::FailedPrecondition => {
            if let Err(refused) = commit_as_tool(broker, group, topic, member).await {
                commit_warning(&refused.error);
            }
        }
        Err(refused) => commit_warning(&refused.error),
    }
}

/// Commits, without a member id, what this former member printed and did not commit,
/// where that moves the group's offset forward (another member that had the partition
/// since may have committed past it). The broker refuses it while the group has live
/// members: then their committed offsets stand.
async fn commit_as_tool(
    broker: &Broker,
    group: &str,
    topic: &str,
    member: &Member,
) -> Result<(), Refused> {
    let refused = |status: tonic::Status| Refused {
        code: status.code(),
        error: broker.error(&format!("committing offsets of group {group:?}"), &status),
    };
    let current: BTreeMap<u32, u64> = broker
        .groups()
        .fetch_offsets(FetchOffsetsRequest {
            group_id: group.to_string(),
            topic: Some(topic.to_string()),
        })
        .await
        .map_err(refused)?
        .into_inner()
        .offsets
        .into_iter()
        .map(|c| (c.partition, c.offset))
        .collect();
    let offsets: Vec<TopicPartitionOffset> = member
        .printed
        .iter()
        .filter(|(p, offset)| current.get(p).is_none_or(|c| c < offset))
        .map(|(&partition, &offset)| TopicPartitionOffset {
            topic: topic.to_string(),
            partition,
            offset,
            metadata: String::new(),
        })
        .collect();
    if offsets.is_empty() {
        return Ok(());
    }
    broker
        .groups()
        .commit_offsets(CommitOffsetsRequest {
            group_id: group.to_string(),
            member_id: String::new(),
            generation: None,
            offsets,
        })
        .await
        .map_err(refused)?;
    Ok(())
}

/// A new Assignment arrived: every message of the partitions it takes away came
/// before it and was printed. Commit them in the new generation while the broker
/// keeps them for this member (its handover window), which also hands them over, so
/// their next owner starts right after what was printed.
async fn hand_over(
    broker: &Broker,
    group: &str,
    topic: &str,
    member: &mut Member,
    assignment: &tidelog_proto::v1::Assignment,
) {
    let previous = std::mem::take(&mut member.assigned);
    let revoked: Vec<u32> = previous
        .iter()
        .filter(|p| !assignment.partitions.contains(p))
        .copied()
        .collect();
    member.generation = assignment.generation;
    if member.member_id.is_empty() || revoked.is_empty() {
        member.assigned = previous;
        return;
    }
    // Still assigned and revoked alike: one commit, all or nothing.
    let mut scope = previous.clone();
    scope.extend(assignment.partitions.iter().copied());
    scope.sort_unstable();
    scope.dedup();
    let outcome = match commit(broker, group, topic, member, &scope).await {
        Ok(0) => {
            // Nothing new to commit: an empty commit ends the window at once.
            empty_commit(broker, group, member).await
        }
        Ok(_) => Ok(0),
        Err(refused) if refused.code == tonic::Code::FailedPrecondition => {
            // The window has ended (or a newer rebalance happened): keep what is
            // still ours.
            note(&format!(
                "warning: partition{} {} moved to another member before the printed messages were committed; they will be delivered again",
                if revoked.len() == 1 { "" } else { "s" },
                revoked
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            match commit(broker, group, topic, member, &assignment.partitions).await {
                Ok(0) => empty_commit(broker, group, member).await,
                other => other,
            }
        }
        Err(refused) => Err(refused),
    };
    if let Err(refused) = outcome
        && refused.code != tonic::Code::FailedPrecondition
    {
        commit_warning(&refused.error);
    }
    // Another member owns them now: should one come back, start from the group's
    // committed offset, not from what this member printed long ago.
    for partition in &revoked {
        member.printed.remove(partition);
        member.position.remove(partition);
        member.committed.remove(partition);
    }
    member.assigned = previous;
}

/// A commit with no offsets: tells the broker this member saw its latest Assignment,
/// which ends its handover window.
async fn empty_commit(broker: &Broker, group: &str, member: &Member) -> Result<usize, Refused> {
    let request = CommitOffsetsRequest {
        group_id: group.to_string(),
        member_id: member.member_id.clone(),
        generation: Some(member.generation),
        offsets: Vec::new(),
    };
    match broker.groups().commit_offsets(request).await {
        Ok(_) => Ok(0),
        // A broker without handover windows has nothing to end.
        Err(status) if status.code() == tonic::Code::InvalidArgument => Ok(0),
        Err(status) => Err(Refused {
            code: status.code(),
            error: broker.error(&format!("committing offsets of group {group:?}"), &status),
        }),
    }
}

/// Takes a new assignment: where each partition stands and where it ends.
async fn on_assignment(
    broker: &Broker,
    group: &str,
    topic: &str,
    member: &mut Member,
    assignment: tidelog_proto::v1::Assignment,
) -> CliResult<()> {
    member.member_id = assignment.member_id;
    member.generation = assignment.generation;
    member.assigned = assignment.partitions;
    let description = describe(broker, topic).await?;
    member.end = description
        .map(|t| {
            t.partitions
                .iter()
                .map(|p| (p.partition, p.end_offset))
                .collect()
        })
        .unwrap_or_default();
    let context = format!("fetching the committed offsets of group {group:?}");
    let committed = broker
        .groups()
        .fetch_offsets(FetchOffsetsRequest {
            group_id: group.to_string(),
            topic: Some(topic.to_string()),
        })
        .await
        .map_err(|s| broker.error(&context, &s))?
        .into_inner()
        .offsets;
    for c in committed {
        if member.assigned.contains(&c.partition) {
            member.committed.insert(c.partition, c.offset);
            let position = member.position.entry(c.partition).or_insert(c.offset);
            *position = (*position).max(c.offset);
        }
    }
    Ok(())
}

/// A commit the broker refused, with its status code.
#[derive(Debug)]
struct Refused {
    code: tonic::Code,
    error: CliError,
}

fn commit_warning(error: &CliError) {
    note(&format!(
        "warning: {}; the uncommitted messages will be delivered again",
        error.message
    ));
}

/// Commits, with the member's current generation, what was printed on `partitions`
/// and not committed yet; returns how many partitions it committed.
async fn commit(
    broker: &Broker,
    group: &str,
    topic: &str,
    member: &mut Member,
    partitions: &[u32],
) -> Result<usize, Refused> {
    let offsets: Vec<TopicPartitionOffset> = member
        .printed
        .iter()
        .filter(|(p, offset)| partitions.contains(p) && member.committed.get(p) != Some(offset))
        .map(|(&partition, &offset)| TopicPartitionOffset {
            topic: topic.to_string(),
            partition,
            offset,
            metadata: String::new(),
        })
        .collect();
    if offsets.is_empty() || member.member_id.is_empty() {
        return Ok(0);
    }
    let request = CommitOffsetsRequest {
        group_id: group.to_string(),
        member_id: member.member_id.clone(),
        generation: Some(member.generation),
        offsets: offsets.clone(),
    };
    match broker.groups().commit_offsets(request).await {
        Ok(_) => {
            let count = offsets.len();
            for o in offsets {
                member.committed.insert(o.partition, o.offset);
            }
            Ok(count)
        }
        Err(status) => Err(Refused {
            code: status.code(),
            error: broker.error(&format!("committing offsets of group {group:?}"), &status),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tidelog_proto::v1::Header;

    #[test]
    fn messages_become_json_lines() {
        let m = ConsumedMessage {
            partition: 1,
            offset: 7,
            timestamp_ms: 1_700_000_000_000,
            expires_at_ms: None,
            key: Bytes::new(),
            value: Bytes::from_static(b"hello"),
            headers: vec![Header {
                key: "h".into(),
                value: Bytes::from_static(&[0xff]),
            }],
            ..ConsumedMessage::default()
        };
        assert_eq!(
            message_json(&m).to_string(),
            r#"{"partition":1,"offset":7,"timestamp":1700000000000,"key":null,"value":"hello","headers":[{"key":"h","value":{"base64":"/w=="}}]}"#
        );
    }

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

    #[test]
    fn headers_become_one_escaped_text_field() {
        let header = |key: &str, value: &[u8]| Header {
            key: key.into(),
            value: Bytes::copy_from_slice(value),
        };
        assert_eq!(headers_text(&[]), "-");
        assert_eq!(
            headers_text(&[header("a", b"1"), header("k=v", b"x,y\tz\n\xff\\")]),
            "a=1,k\\=v=x\\,y\\tz\\n\\xff\\\\"
        );
    }

    #[test]
    fn a_member_is_caught_up_when_every_partition_reached_its_end() {
        let mut member = Member {
            assigned: vec![0, 1],
            ..Member::default()
        };
        member.end.insert(0, 5);
        member.end.insert(1, 0);
        assert!(!member.caught_up());
        member.position.insert(0, 5);
        assert!(!member.caught_up(), "partition 1's position is unknown");
        member.position.insert(1, 0);
        assert!(member.caught_up());
        member.assigned.clear();
        assert!(member.caught_up());
    }
}
