//! `tidelog produce`: lines from stdin or a file become messages.
//!
//! A reader thread turns lines into messages; a feeder task hands them, in order, to
//! tidelog-client's [`Producer`] (the one client code path: batching by
//! `--batch-messages` / `--batch-bytes`, batches in the log's own format, a window of
//! `--in-flight` batches on one `PublishStream`, reconnects and resends when the
//! broker restarts, message ids that make those resends harmless on topics with a
//! dedup window). The printer awaits each message's [`DeliveryFuture`] in input
//! order and prints its ack; at the first message that fails, nothing more is sent,
//! what was sent is waited for, and the error names the lines that failed and how
//! many messages were stored before (and after) them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::ProgressBar;
use serde_json::json;
use tidelog_client::{
    Ack, Delivered, DeliveryFuture, Error as ClientError, Producer, ProducerConfig, Record,
};
use tidelog_proto::v1::{Header, Message};
use tokio::sync::mpsc;

use tidelog_storage::msgid;

use crate::args::{AckArg, InputFormat, ProduceArgs};
use crate::client::Broker;
use crate::error::{CliError, CliResult};
use crate::output::{Stdout, base64_decode, note};
use crate::terms::range;
use crate::units::{format_bytes, format_rate};

/// Messages read ahead of the batcher.
const READ_AHEAD_MESSAGES: usize = 16 * 1024;
/// Batches in flight without --in-flight.
const IN_FLIGHT_DEFAULT: usize = 8;
/// Messages handed to the producer whose acks the printer has not taken yet, at most.
const ACKS_AHEAD_MESSAGES: usize = 64 * 1024;
/// Largest line accepted: over the broker's 16 MiB message limit anyway.
const LINE_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// What the reader thread hands the batcher.
type Line = Result<(Message, u64), CliError>;

/// Lines per hand-over from the reader thread, and messages per hand-over from the
/// feeder to the printer: a channel message (and a wake-up) per line cost more than
/// the rest of the CLI's work on it.
const CHUNK_LINES: usize = 1024;

/// Gathers lines into chunks for the channel.
struct Chunker<'a> {
    sender: &'a mpsc::Sender<Vec<Line>>,
    chunk: Vec<Line>,
}

impl<'a> Chunker<'a> {
    fn new(sender: &'a mpsc::Sender<Vec<Line>>) -> Self {
        Chunker {
            sender,
            chunk: Vec::new(),
        }
    }

    /// Adds `item`; sends the chunk when it is full or `now` (the input has nothing
    /// more buffered, so a person typing sees each line go at once). False when the
    /// receiver went away.
    fn push(&mut self, item: Line, now: bool) -> bool {
        self.chunk.push(item);
        if now || self.chunk.len() >= CHUNK_LINES {
            return self.flush();
        }
        true
    }

    fn flush(&mut self) -> bool {
        if self.chunk.is_empty() {
            return true;
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_LINES));
        self.sender.blocking_send(chunk).is_ok()
    }
}

/// How lines become messages.
#[derive(Debug, Clone)]
pub struct LineFormat {
    pub key: Option<Bytes>,
    pub key_separator: Option<Vec<u8>>,
    pub headers: Vec<Header>,
    pub ttl_ms: Option<u64>,
    pub partition: Option<u32>,
    /// Key and value are written in base64 in the input (`--format base64`).
    pub base64: bool,
    /// `--id`: the id of the one message.
    pub id: Option<Bytes>,
    /// `--id-separator`: each line starts with its message's id and this.
    pub id_separator: Option<Vec<u8>>,
}

impl LineFormat {
    /// The message for one line (without its newline); `line_number` is 1-based.
    pub fn message(&self, line: &[u8], line_number: u64) -> CliResult<Message> {
        let (id, line) = match &self.id_separator {
            Some(separator) => {
                let at = find(line, separator).ok_or_else(|| {
                    CliError::failure(
                        format!(
                            "line {line_number} has no id separator {:?}",
                            String::from_utf8_lossy(separator)
                        ),
                        "give every line as ID<separator>VALUE, or drop --id-separator",
                    )
                })?;
                let text = String::from_utf8_lossy(&line[..at]);
                let id = msgid::parse(&text).map_err(|e| {
                    CliError::failure(
                        format!("line {line_number}: {e}"),
                        "give each line's id before the --id-separator (1-128 bytes)",
                    )
                })?;
                (Some(Bytes::from(id)), &line[at + separator.len()..])
            }
            None if self.id.is_some() && line_number > 1 => {
                return Err(CliError::failure(
                    format!("--id names one message, and line {line_number} is another"),
                    "give each line its own id with --id-separator, or send one message",
                ));
            }
            None => (self.id.clone(), line),
        };
        let decode = |bytes: &[u8], what: &str| -> CliResult<Bytes> {
            if !self.base64 {
                return Ok(Bytes::copy_from_slice(bytes));
            }
            base64_decode(bytes).map(Bytes::from).map_err(|e| {
                CliError::failure(
                    format!("the {what} of line {line_number} is not base64: {e}"),
                    "give base64 (RFC 4648), or drop --format base64",
                )
            })
        };
        let (key, value) = match &self.key_separator {
            Some(separator) => {
                let at = find(line, separator).ok_or_else(|| {
                    CliError::failure(
                        format!(
                            "line {line_number} has no key separator {:?}",
                            String::from_utf8_lossy(separator)
                        ),
                        "give every line as KEY<separator>VALUE, or drop --key-separator",
                    )
                })?;
                (
                    decode(&line[..at], "key")?,
                    decode(&line[at + separator.len()..], "value")?,
                )
            }
            None => (self.key.clone().unwrap_or_default(), decode(line, "value")?),
        };
        Ok(Message {
            key,
            value,
            headers: self.headers.clone(),
            timestamp_ms: None,
            ttl_ms: self.ttl_ms,
            partition: self.partition,
            id: id.unwrap_or_default(),
            ..Message::default()
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Where the input's messages end, and what to say about the input once.
struct Splitter {
    delimiter: Vec<u8>,
    /// The default (a newline): text is expected, so binary or CRLF input is named.
    lines: bool,
    warned_cr: bool,
    warned_binary: bool,
}

impl Splitter {
    fn new(delimiter: Option<Vec<u8>>) -> Self {
        Splitter {
            lines: delimiter.is_none(),
            delimiter: delimiter.unwrap_or_else(|| b"\n".to_vec()),
            warned_cr: false,
            warned_binary: false,
        }
    }

    /// Warns, once each, about input that line splitting is likely to mangle.
    fn check(&mut self, record: &[u8], number: u64) {
        if !self.lines {
            return;
        }
        if !self.warned_cr && record.last() == Some(&b'\r') {
            self.warned_cr = true;
            note(&format!(
                "warning: line {number} ends with \\r (CRLF input); the \\r is kept as part of \
                 the message: give -D '\\r\\n' to split at CRLF"
            ));
        }
        if !self.warned_binary && std::str::from_utf8(record).is_err() {
            self.warned_binary = true;
            note(&format!(
                "warning: line {number} is not UTF-8 text: binary input is split into a message \
                 at every newline byte; send a whole file as one message with --value-file, or \
                 pick a delimiter (-D) or --format base64"
            ));
        }
    }
}

/// Reads the whole input as one message (`--value-file`).
fn read_whole(
    input: Box<dyn Read + Send>,
    format: &LineFormat,
    sender: &mpsc::Sender<Vec<Line>>,
    progress: &ProgressBar,
) {
    let mut value = Vec::new();
    let read = input.take(LINE_BYTES_MAX + 1).read_to_end(&mut value);
    let item = match read {
        Ok(n) if n as u64 > LINE_BYTES_MAX => Err(CliError::failure(
            format!(
                "the value file is larger than {}",
                format_bytes(LINE_BYTES_MAX)
            ),
            "messages are limited to 16 MiB; split the file",
        )),
        Ok(n) => {
            progress.inc(n as u64);
            format.message(&value, 1).map(|m| (m, 1))
        }
        Err(e) => Err(CliError::io("reading the value file", &e)),
    };
    let _ = sender.blocking_send(vec![item]);
}

/// Reads records ended by the splitter's delimiter (or the end of the input) and
/// sends messages until the input ends or the receiver goes away.
fn read_lines(
    input: Box<dyn Read + Send>,
    format: &LineFormat,
    splitter: &mut Splitter,
    sender: &mpsc::Sender<Vec<Line>>,
    progress: &ProgressBar,
) {
    let mut chunker = Chunker::new(sender);
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let delimiter = splitter.delimiter.clone();
    let last = *delimiter.last().unwrap_or(&b'\n');
    let mut line = Vec::new();
    let mut line_number = 0u64;
    loop {
        line.clear();
        // Up to the delimiter's last byte, until the whole delimiter ends the record.
        let mut read = Ok(0);
        loop {
            let before = line.len();
            let left = (LINE_BYTES_MAX + delimiter.len() as u64).saturating_sub(before as u64);
            match (&mut reader).take(left).read_until(last, &mut line) {
                Ok(0) => break,
                Ok(n) => {
                    read = Ok(before + n);
                    if line.ends_with(&delimiter) || line.last() != Some(&last) {
                        break;
                    }
                }
                Err(e) => {
                    read = Err(e);
                    break;
                }
            }
        }
        let item = match read {
            Ok(0) => {
                chunker.flush();
                return;
            }
            Ok(n) => {
                progress.inc(n as u64);
                line_number += 1;
                if line.ends_with(&delimiter) {
                    line.truncate(line.len() - delimiter.len());
                    splitter.check(&line, line_number);
                } else if line.len() as u64 > LINE_BYTES_MAX {
                    let too_long = Err(CliError::failure(
                        format!(
                            "line {line_number} is longer than {}",
                            format_bytes(LINE_BYTES_MAX)
                        ),
                        "messages are limited to 16 MiB; split the input",
                    ));
                    chunker.push(too_long, true);
                    return;
                } else {
                    splitter.check(&line, line_number);
                }
                format.message(&line, line_number).map(|m| (m, line_number))
            }
            Err(e) => Err(CliError::io("reading the input", &e)),
        };
        let stop = item.is_err();
        let now = stop || reader.buffer().is_empty();
        if !chunker.push(item, now) || stop {
            return;
        }
    }
}

/// Offsets seen per partition, for the summary.
#[derive(Debug, Default)]
struct Summary {
    messages: u64,
    /// Messages whose id the dedup window had seen: not stored again.
    duplicates: u64,
    payload_bytes: u64,
    partitions: BTreeMap<u32, (u64, u64, u64)>,
}

/// Most partitions whose offsets the one-line summary of `--quiet` lists; past it,
/// only their number (`--json` lists every one).
const SUMMARY_PARTITIONS_MAX: usize = 4;

impl Summary {
    /// `; offsets 0:0-2 1:3-5` for a few partitions, `; 1000 partitions` for many.
    fn offsets_text(&self) -> String {
        match self.partitions.len() {
            0 => String::new(),
            n if n > SUMMARY_PARTITIONS_MAX => format!("; {n} partitions"),
            _ => {
                let ranges: Vec<String> = self
                    .partitions
                    .iter()
                    .map(|(p, (first, last, _))| format!("{p}:{}", range(*first, *last)))
                    .collect();
                format!("; offsets {}", ranges.join(" "))
            }
        }
    }

    fn ack(&mut self, partition: u32, offset: u64) {
        let entry = self
            .partitions
            .entry(partition)
            .or_insert((offset, offset, 0));
        entry.0 = entry.0.min(offset);
        entry.1 = entry.1.max(offset);
        entry.2 += 1;
    }
}

/// How long an open batch waits for more lines before it is sent (when the producer's
/// window, `--in-flight`, has room; while it is full, lines gather into the next batch
/// up to `--batch-messages` / `--batch-bytes` anyway). Short enough that a person
/// typing sees each line acknowledged at once; long enough that a file goes out in
/// full batches: with no linger the producer seals a batch every time its task wakes,
/// and a 1M-line file (100 B lines) cost the broker 540-680 ms of CPU instead of 290 ms
/// (release build, 2026-12-05).
const LINGER: Duration = Duration::from_millis(2);

/// What the feeder hands the printer, in input order.
enum Fed {
    /// A line handed to the producer; `user_id`: its id came from --id / --id-separator.
    Sent {
        line: u64,
        user_id: bool,
        bytes: u64,
        delivery: DeliveryFuture,
    },
    /// The line could not be handed over (the producer stopped).
    Refused { line: u64, error: ClientError },
    /// The input could not become a message; nothing after it is sent.
    Unreadable(CliError),
}

/// The record a line's message becomes.
fn record(topic: &str, message: Message, ack: Ack) -> Record {
    let mut record = Record::new(topic, message.value).ack(ack);
    if !message.key.is_empty() {
        record = record.key(message.key);
    }
    for header in message.headers {
        record = record.header(header.key, header.value);
    }
    if let Some(ttl_ms) = message.ttl_ms {
        record = record.ttl_ms(ttl_ms);
    }
    if let Some(partition) = message.partition {
        record = record.partition(partition);
    }
    if !message.id.is_empty() {
        record = record.id(message.id);
    }
    record
}

/// The first failure, in input order.
enum FirstFailure {
    /// The input (a line the reader could not turn into a message).
    Input(CliError),
    /// A message the producer or the broker refused, or could not deliver.
    Message(ClientError),
}

/// How the command ended when a message failed.
#[derive(Default)]
struct Failure {
    first: Option<FirstFailure>,
    /// Lines whose messages failed (the first and any sent before it was seen).
    failed_lines: Vec<u64>,
    /// Lines after the first failure that were sent before it was seen, and stored.
    stored_after: Vec<u64>,
}

pub async fn run(broker: &Broker, args: ProduceArgs, json: bool) -> CliResult<()> {
    let headers = args
        .headers
        .iter()
        .map(|(k, v)| Header {
            key: k.clone(),
            value: Bytes::copy_from_slice(v.as_bytes()),
        })
        .collect();
    let format = LineFormat {
        key: args
            .key
            .as_ref()
            .map(|k| Bytes::copy_from_slice(k.as_bytes())),
        key_separator: args.key_separator.as_ref().map(|s| s.as_bytes().to_vec()),
        headers,
        ttl_ms: args.ttl,
        partition: args.partition,
        base64: args.format == InputFormat::Base64,
        id: match &args.id {
            Some(text) => Some(Bytes::from(msgid::parse(text).map_err(|e| {
                CliError::usage(format!("--id: {e}"), "give 1-128 bytes of id")
            })?)),
            None => None,
        },
        id_separator: args.id_separator.as_ref().map(|s| s.as_bytes().to_vec()),
    };
    // `--ack none`: the broker answers once the batch is handed to the log, with no
    // offsets (errors still come back), so none are printed.
    let (ack, print_offsets) = match args.ack {
        AckArg::None => (Ack::None, false),
        AckArg::Written => (Ack::Written, true),
        AckArg::Durable => (Ack::Durable, true),
    };
    // Ids of the user's go in batches like any others: a batch mixing ids stored
    // before with new ones is refused whole by the broker, and the producer then sends
    // its messages again one per batch, each judged alone.
    let config = ProducerConfig {
        batch_records: args.batch_messages as usize,
        batch_bytes: usize::try_from(args.batch_bytes).unwrap_or(usize::MAX),
        in_flight: args.in_flight.map_or(IN_FLIGHT_DEFAULT, |n| n as usize),
        linger: LINGER,
        ..ProducerConfig::default()
    };

    let source = args.file.as_ref().or(args.value_file.as_ref());
    let (input, total_bytes): (Box<dyn Read + Send>, Option<u64>) = match source {
        Some(path) if path.as_os_str() == "-" => (Box::new(std::io::stdin()), None),
        Some(path) => {
            let file = File::open(path)
                .map_err(|e| CliError::io(format!("opening {}", path.display()), &e))?;
            let size = file.metadata().ok().map(|m| m.len());
            (Box::new(file), size)
        }
        None => (Box::new(std::io::stdin()), None),
    };
    let show_progress = total_bytes.is_some()
        && std::io::stderr().is_terminal()
        && (args.quiet || !std::io::stdout().is_terminal());
    let progress = match total_bytes {
        Some(total) if show_progress => {
            let bar = ProgressBar::new(total);
            bar.set_style(crate::output::byte_progress_style("{spinner} "));
            bar
        }
        _ => ProgressBar::hidden(),
    };

    let (line_tx, mut line_rx) = mpsc::channel::<Vec<Line>>(READ_AHEAD_MESSAGES / CHUNK_LINES);
    let reader_progress = progress.clone();
    let whole = args.value_file.is_some();
    let mut splitter = Splitter::new(args.delimiter.clone().map(|d| d.0));
    std::thread::spawn(move || {
        if whole {
            read_whole(input, &format, &line_tx, &reader_progress);
        } else {
            read_lines(input, &format, &mut splitter, &line_tx, &reader_progress);
        }
    });

    // Which ids the acks show: on a topic that assigns ids (assign_ids), the id each
    // message got, as the broker's own assigned ids were shown before the CLI went
    // through the producer (the producer now gives them, as the broker's layout). On a
    // topic with only a dedup window the producer's ids serve its retries, and the
    // acks read as they always did. The user's own ids are never repeated back.
    let context = format!("publishing to topic {:?}", args.topic);
    let description = broker
        .describe_topic(&args.topic)
        .await
        .map_err(|e| broker.client_error(&context, &e))?;
    let show_ids = description.config.is_some_and(|c| c.assign_ids);

    // The feeder: lines -> the producer, in order, until the input ends or a message
    // fails (`stop`). `send` waits while the producer's buffer is full, which holds
    // the reader back.
    let started = Instant::now();
    let producer = Producer::new(broker, config);
    let stop = Arc::new(AtomicBool::new(false));
    // Bounded, so a slow stdout holds the feeder (and the reader) back.
    let (fed_tx, mut fed_rx) = mpsc::channel::<Vec<Fed>>(ACKS_AHEAD_MESSAGES / CHUNK_LINES);
    let feeder = {
        let producer = producer.clone();
        let stop = stop.clone();
        let topic = args.topic.clone();
        tokio::spawn(async move {
            'lines: while let Some(chunk) = line_rx.recv().await {
                let mut fed_chunk = Vec::with_capacity(chunk.len());
                let mut last = false;
                for item in chunk {
                    if stop.load(Ordering::Relaxed) {
                        last = true;
                        break;
                    }
                    let fed = match item {
                        Ok((message, line)) => {
                            let user_id = !message.id.is_empty();
                            let bytes = (message.key.len() + message.value.len()) as u64;
                            match producer.send(record(&topic, message, ack)).await {
                                // Refused before it was sent: stop feeding now.
                                Ok(delivery) if delivery.refused().is_some() => Fed::Refused {
                                    line,
                                    error: delivery.await.err().unwrap_or(ClientError::Closed),
                                },
                                Ok(delivery) => Fed::Sent {
                                    line,
                                    user_id,
                                    bytes,
                                    delivery,
                                },
                                Err(error) => Fed::Refused { line, error },
                            }
                        }
                        Err(error) => Fed::Unreadable(error),
                    };
                    last = !matches!(fed, Fed::Sent { .. });
                    fed_chunk.push(fed);
                    if last {
                        break;
                    }
                }
                if fed_tx.send(fed_chunk).await.is_err() || last {
                    break 'lines;
                }
            }
        })
    };

    // The printer: each message's ack in input order.
    let mut out = Stdout::new();
    let mut summary = Summary::default();
    let mut failure = Failure::default();
    'acks: while let Some(chunk) = fed_rx.recv().await {
        for fed in chunk {
            let (line, error) = match fed {
                Fed::Sent {
                    line,
                    user_id,
                    bytes,
                    delivery,
                } => match delivery.await {
                    Ok(delivered) if failure.first.is_none() => {
                        summary.messages += 1;
                        summary.payload_bytes += bytes;
                        // `--ack none` (Ack::None): stored, no offsets to show.
                        let Some(offset) = delivered.offset.filter(|_| print_offsets) else {
                            continue;
                        };
                        // Only a user's id can have been stored before this run: the id
                        // the producer attached is new, and a `duplicate` answer to it
                        // means the broker had stored this very message before a
                        // reconnect made the producer send it again.
                        let duplicate = delivered.duplicate && user_id;
                        summary.ack(delivered.partition, offset);
                        summary.duplicates += u64::from(duplicate);
                        if !args.quiet {
                            let shown_id = delivered.id.as_ref().filter(|_| show_ids && !user_id);
                            print_ack(&mut out, &delivered, offset, duplicate, shown_id, json)?;
                        }
                        continue;
                    }
                    Ok(_) => {
                        failure.stored_after.push(line);
                        continue;
                    }
                    Err(error) => (line, error),
                },
                Fed::Refused { line, error } => (line, error),
                Fed::Unreadable(error) => {
                    if failure.first.is_none() {
                        failure.first = Some(FirstFailure::Input(error));
                    }
                    break 'acks;
                }
            };
            failure.failed_lines.push(line);
            if failure.first.is_none() {
                // Stop at the first failure: nothing more is handed to the producer; what
                // was sent already is waited for and counted.
                stop.store(true, Ordering::Relaxed);
                progress.abandon();
                failure.first = Some(FirstFailure::Message(error));
            }
        }
    }
    drop(fed_rx);
    let _ = feeder.await;
    // Every future is answered by now; closing ends the publish stream.
    let _ = producer.close().await;
    if failure.first.is_some() {
        return Err(failed(broker, &context, failure, summary.messages));
    }
    progress.finish_and_clear();
    if args.quiet {
        let elapsed = started.elapsed();
        if json {
            let partitions: Vec<_> = summary
                .partitions
                .iter()
                .map(|(p, (first, last, count))| {
                    json!({"partition": p, "first_offset": first, "last_offset": last, "messages": count})
                })
                .collect();
            out.json(&json!({
                "topic": args.topic,
                "messages": summary.messages,
                "duplicates": summary.duplicates,
                "payload_bytes": summary.payload_bytes,
                "elapsed_ms": elapsed.as_millis() as u64,
                "partitions": partitions,
            }))?;
        } else {
            let rate = summary.messages as f64 / elapsed.as_secs_f64().max(1e-6);
            let duplicates = match summary.duplicates {
                0 => String::new(),
                n => format!(
                    "; {n} duplicate{} not stored again",
                    if n == 1 { "" } else { "s" }
                ),
            };
            out.line(&format!(
                "produced {} message{} ({}) to {} in {:.2}s ({}){}{duplicates}",
                summary.messages,
                if summary.messages == 1 { "" } else { "s" },
                format_bytes(summary.payload_bytes),
                args.topic,
                elapsed.as_secs_f64(),
                format_rate(rate),
                summary.offsets_text()
            ))?;
        }
    }
    out.flush()
}

/// One ack: `partition P offset O`, then ` duplicate` when the dedup window had the
/// user's id (the offset is the stored message's) and ` id ID` for an id the user did
/// not give, on topics that assign ids.
fn print_ack(
    out: &mut Stdout,
    delivered: &Delivered,
    offset: u64,
    duplicate: bool,
    id: Option<&Bytes>,
    json: bool,
) -> CliResult<()> {
    let id = id.map(|id| msgid::display(id));
    if json {
        let mut value = json!({"partition": delivered.partition, "offset": offset});
        if duplicate {
            value["duplicate"] = json!(true);
        }
        if let Some(id) = id {
            value["id"] = json!(id);
        }
        return out.json(&value);
    }
    let mut line = format!("partition {} offset {offset}", delivered.partition);
    if duplicate {
        line.push_str(" duplicate");
    }
    if let Some(id) = id {
        line.push_str(" id ");
        line.push_str(&id);
    }
    out.line(&line)
}

/// `lines 5`, `lines 5-7 9`: the CLI's range notation, a few ranges at most.
fn lines_text(lines: &[u64]) -> String {
    const RANGES_MAX: usize = 4;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &line in lines {
        match ranges.last_mut() {
            Some((_, last)) if *last + 1 == line => *last = line,
            _ => ranges.push((line, line)),
        }
    }
    let mut text: Vec<String> = ranges
        .iter()
        .take(RANGES_MAX)
        .map(|(first, last)| range(*first, *last))
        .collect();
    if ranges.len() > RANGES_MAX {
        text.push("...".into());
    }
    format!("lines {}", text.join(" "))
}

/// A producer error in the CLI's terms: the broker's refusals read as they did when
/// the CLI published by itself (through [`Broker::error`]), the producer's own as
/// flags and commands.
fn client_error(broker: &Broker, context: &str, error: &ClientError) -> CliError {
    match error {
        ClientError::InvalidRecord { reason } => refused_record(context, reason),
        // The producer's batches go with relative times (`tidelog produce` sets no
        // timestamp or deliver-at), so the broker counts --ttl from its append time;
        // a broker that predates relative times takes the producer's clock and refuses
        // a batch holding a record that expired on the way.
        ClientError::InvalidArgument { message, .. }
            if message.contains("not after the append time") =>
        {
            CliError::failure(
                format!(
                    "{context} failed: the messages expired before tidelogd stored them (--ttl \
                     is shorter than their way to the broker)"
                ),
                "give a longer --ttl (a second or more)",
            )
            .with_code(tonic::Code::InvalidArgument)
        }
        ClientError::Timeout { after, .. } => CliError::failure(
            format!(
                "{context} failed: tidelogd at {} could not be reached for {}s",
                broker.server,
                after.as_secs()
            ),
            "is it running? (--server / TIDELOG_SERVER); messages not acknowledged may or \
             may not be stored",
        )
        .with_code(tonic::Code::Unavailable),
        // The broker answered: the partition is unavailable (recovery refused to open
        // it), so nothing of these messages was stored.
        ClientError::PartitionUnavailable { message, .. } => CliError::failure(
            format!(
                "{context} failed: the broker refused the messages, nothing was stored: {}",
                crate::terms::to_cli(message)
            ),
            "produce to another partition, or have the partition repaired first (as the \
             message says)",
        )
        .with_code(tonic::Code::Unavailable),
        ClientError::OutcomeUnknown { .. } => CliError::failure(
            format!("{context} failed: {error}"),
            "check with `tidelog consume` whether those messages are stored before producing \
             them again",
        )
        .with_code(tonic::Code::Unavailable),
        other => broker.client_error(context, other),
    }
}

/// A message the producer refused before sending it (too large for the topic, a
/// partition the topic does not have, ...): INVALID_ARGUMENT, as the broker would say.
fn refused_record(context: &str, reason: &str) -> CliError {
    let hint = match reason.split("max_message_bytes ").nth(1) {
        Some(limit) => {
            let limit: u64 = limit
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap_or(0);
            if limit >= tidelog_storage::limits::MESSAGE_BYTES_MAX {
                "send a smaller message: 16 MiB is the largest --max-message-bytes a topic can have"
                    .to_string()
            } else {
                "send a smaller message or raise the topic's limit (`tidelog topic alter TOPIC \
                 --max-message-bytes SIZE`, up to 16MiB)"
                    .to_string()
            }
        }
        None if reason.contains("partition") => {
            "give a --partition the topic has (`tidelog topic describe`)".to_string()
        }
        None => "fix the input or the flags (see --help)".to_string(),
    };
    CliError::failure(
        format!("{context} failed: {}", crate::terms::to_cli(reason)),
        hint,
    )
    .with_code(tonic::Code::InvalidArgument)
}

/// The first failure, naming the lines that failed and how much was stored around it.
fn failed(broker: &Broker, context: &str, failure: Failure, stored_before: u64) -> CliError {
    let error = match failure.first {
        Some(FirstFailure::Input(error)) => error,
        Some(FirstFailure::Message(error)) => {
            let context = format!("{context} ({})", lines_text(&failure.failed_lines));
            client_error(broker, &context, &error)
        }
        None => return CliError::plain(format!("{context} failed")),
    };
    let mut error = after(error, stored_before);
    if !failure.stored_after.is_empty() {
        let n = failure.stored_after.len();
        error.message = format!(
            "{} ({n} later message{} sent before the failure was seen {} stored too: {})",
            error.message,
            if n == 1 { "" } else { "s" },
            if n == 1 { "was" } else { "were" },
            lines_text(&failure.stored_after)
        );
    }
    error
}

/// Adds how much was stored before a failure.
fn after(error: CliError, acknowledged: u64) -> CliError {
    if acknowledged == 0 {
        return error;
    }
    CliError {
        message: format!(
            "{} ({acknowledged} earlier message{} were stored)",
            error.message,
            if acknowledged == 1 { "" } else { "s" }
        ),
        ..error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format() -> LineFormat {
        LineFormat {
            key: None,
            key_separator: None,
            headers: vec![],
            ttl_ms: None,
            partition: None,
            base64: false,
            id: None,
            id_separator: None,
        }
    }

    fn read(input: &'static [u8], delimiter: Option<&[u8]>, format: &LineFormat) -> Vec<Vec<u8>> {
        let (tx, mut rx) = mpsc::channel(64);
        let mut splitter = Splitter::new(delimiter.map(<[u8]>::to_vec));
        read_lines(
            Box::new(input),
            format,
            &mut splitter,
            &tx,
            &ProgressBar::hidden(),
        );
        drop(tx);
        let mut got = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            for line in chunk {
                let Ok((m, _)) = line else { break };
                got.push(m.value.to_vec());
            }
        }
        got
    }

    #[test]
    fn delimiters_split_binary_input() {
        assert_eq!(
            read(b"a\0b\nc\0\0last", Some(b"\0"), &format()),
            [&b"a"[..], b"b\nc", b"", b"last"]
        );
        assert_eq!(
            read(b"a\r\nb\rc\r\n", Some(b"\r\n"), &format()),
            [&b"a"[..], b"b\rc"]
        );
        // The default keeps a \r (with a warning on stderr).
        assert_eq!(read(b"a\r\nb\n", None, &format()), [&b"a\r"[..], b"b"]);
        let base64 = LineFormat {
            base64: true,
            ..format()
        };
        assert_eq!(
            read(b"/wA=\naGk=\n", None, &base64),
            [&[0xff, 0][..], b"hi"]
        );
    }

    #[test]
    fn lines_become_values_with_an_optional_fixed_key() {
        let m = format().message(b"hello", 1).unwrap();
        assert_eq!(&m.value[..], b"hello");
        assert!(m.key.is_empty());
        let f = LineFormat {
            key: Some(Bytes::from_static(b"k")),
            ttl_ms: Some(5),
            partition: Some(2),
            ..format()
        };
        let m = f.message(b"v", 1).unwrap();
        assert_eq!((&m.key[..], &m.value[..]), (&b"k"[..], &b"v"[..]));
        assert_eq!((m.ttl_ms, m.partition), (Some(5), Some(2)));
    }

    #[test]
    fn key_separator_splits_at_the_first_occurrence() {
        let f = LineFormat {
            key_separator: Some(b"::".to_vec()),
            ..format()
        };
        let m = f.message(b"user1::a::b", 1).unwrap();
        assert_eq!((&m.key[..], &m.value[..]), (&b"user1"[..], &b"a::b"[..]));
        let error = f.message(b"no separator", 7).unwrap_err();
        assert!(
            error.message.starts_with("line 7 has no key separator"),
            "{error}"
        );
    }

    #[test]
    fn the_quiet_summary_stays_one_short_line() {
        let mut summary = Summary::default();
        assert_eq!(summary.offsets_text(), "");
        summary.ack(0, 3);
        summary.ack(0, 4);
        summary.ack(1, 7);
        assert_eq!(summary.offsets_text(), "; offsets 0:3-4 1:7");
        for p in 0..1000 {
            summary.ack(p, 0);
        }
        assert_eq!(summary.offsets_text(), "; 1000 partitions");
    }

    #[test]
    fn failed_lines_are_named_as_ranges() {
        assert_eq!(lines_text(&[11]), "lines 11");
        assert_eq!(lines_text(&[4, 5, 6, 9]), "lines 4-6 9");
        let many: Vec<u64> = (0..20).map(|i| i * 2).collect();
        assert_eq!(lines_text(&many), "lines 0 2 4 6 ...");
    }

    #[test]
    fn a_refused_record_reads_in_cli_terms() {
        let e = refused_record(
            "publishing to topic \"t\" (lines 3)",
            "2000 bytes of id, key, value and headers, over topic \"t\"'s max_message_bytes 1024",
        );
        assert_eq!(e.code, Some(tonic::Code::InvalidArgument));
        assert!(e.message.contains("(lines 3) failed: 2000 bytes"), "{e}");
        assert!(e.message.contains("--max-message-bytes 1024"), "{e}");
        assert!(e.message.contains("raise the topic's limit"), "{e}");
        let e = refused_record(
            "p",
            "17000000 bytes of id, key, value and headers, over topic \"t\"'s max_message_bytes 16777216",
        );
        assert!(e.message.contains("16 MiB is the largest"), "{e}");
        assert!(!e.message.contains("raise"), "{e}");
        let e = refused_record(
            "p",
            "topic \"t\" has 1 partition (0); there is no partition 5",
        );
        assert!(e.message.contains("--partition"), "{e}");
        assert!(!e.message.contains(".."), "{e}");
    }

    #[test]
    fn reader_strips_newlines_and_counts_lines() {
        let (tx, mut rx) = mpsc::channel(16);
        let input: Box<dyn Read + Send> = Box::new(&b"a\nb\n\nlast"[..]);
        read_lines(
            input,
            &format(),
            &mut Splitter::new(None),
            &tx,
            &ProgressBar::hidden(),
        );
        drop(tx);
        let mut got = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            for item in chunk {
                let Ok((m, line)) = item else { break };
                got.push((String::from_utf8_lossy(&m.value).to_string(), line));
            }
        }
        assert_eq!(
            got,
            vec![
                ("a".into(), 1),
                ("b".into(), 2),
                (String::new(), 3),
                ("last".into(), 4)
            ]
        );
    }
}
