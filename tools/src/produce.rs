//! `tidelog produce`: lines from stdin or a file become messages.
//!
//! A reader thread turns lines into messages; a batcher collects whatever is ready
//! (up to `--batch-messages` / `--batch-bytes`) into one publish request, so a file
//! goes out in large batches while a person typing sees each line sent at once.
//! Requests are pipelined on one `PublishStream`; the broker answers them in order.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::time::Instant;

use bytes::Bytes;
use indicatif::ProgressBar;
use serde_json::json;
use tidelog_proto::v1::{
    AckLevel, Header, Message, MessageAck, PublishRequest, PublishStreamRequest,
    publish_stream_response,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use tidelog_storage::msgid;

use crate::args::{AckArg, InputFormat, ProduceArgs};
use crate::client::Broker;
use crate::error::{CliError, CliResult, code_name};
use crate::output::{Stdout, base64_decode, note};
use crate::terms::range;
use crate::units::{format_bytes, format_rate};

/// Messages read ahead of the batcher.
const READ_AHEAD_MESSAGES: usize = 16 * 1024;
/// Largest line accepted: over the broker's 16 MiB message limit anyway.
const LINE_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// What the reader thread hands the batcher.
type Line = Result<(Message, u64), CliError>;

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
    sender: &mpsc::Sender<Line>,
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
    let _ = sender.blocking_send(item);
}

/// Reads records ended by the splitter's delimiter (or the end of the input) and
/// sends messages until the input ends or the receiver goes away.
fn read_lines(
    input: Box<dyn Read + Send>,
    format: &LineFormat,
    splitter: &mut Splitter,
    sender: &mpsc::Sender<Line>,
    progress: &ProgressBar,
) {
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
            Ok(0) => return,
            Ok(n) => {
                progress.inc(n as u64);
                line_number += 1;
                if line.ends_with(&delimiter) {
                    line.truncate(line.len() - delimiter.len());
                    splitter.check(&line, line_number);
                } else if line.len() as u64 > LINE_BYTES_MAX {
                    let _ = sender.blocking_send(Err(CliError::failure(
                        format!(
                            "line {line_number} is longer than {}",
                            format_bytes(LINE_BYTES_MAX)
                        ),
                        "messages are limited to 16 MiB; split the input",
                    )));
                    return;
                } else {
                    splitter.check(&line, line_number);
                }
                format.message(&line, line_number).map(|m| (m, line_number))
            }
            Err(e) => Err(CliError::io("reading the input", &e)),
        };
        let stop = item.is_err();
        if sender.blocking_send(item).is_err() || stop {
            return;
        }
    }
}

/// One request on the stream, for matching its answer.
#[derive(Debug, Clone, Copy)]
struct Sent {
    request_id: u64,
    messages: u64,
    first_line: u64,
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
    let ack = match args.ack {
        AckArg::None => AckLevel::None,
        AckArg::Written => AckLevel::Written,
        AckArg::Durable => AckLevel::Durable,
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

    let (line_tx, mut line_rx) = mpsc::channel::<Line>(READ_AHEAD_MESSAGES);
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

    // The batcher: lines -> requests on the stream, and what was sent, in order.
    let (request_tx, request_rx) = mpsc::channel::<PublishStreamRequest>(args.in_flight as usize);
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<Sent>();
    let topic = args.topic.clone();
    let (batch_messages, batch_bytes) = (args.batch_messages as usize, args.batch_bytes);
    let batcher = tokio::spawn(async move {
        let mut request_id = 0u64;
        let mut failure = None;
        let mut bytes_total = 0u64;
        while let Some(first) = line_rx.recv().await {
            let mut batch = Vec::new();
            let mut first_line = 0;
            let mut bytes = 0u64;
            let mut next = Some(first);
            while let Some(item) = next.take() {
                match item {
                    Ok((message, line)) => {
                        if batch.is_empty() {
                            first_line = line;
                        }
                        bytes += (message.key.len() + message.value.len()) as u64;
                        batch.push(message);
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
                if batch.len() < batch_messages && bytes < batch_bytes {
                    next = line_rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                request_id += 1;
                bytes_total += bytes;
                let sent = Sent {
                    request_id,
                    messages: batch.len() as u64,
                    first_line,
                };
                let request = PublishStreamRequest {
                    batch: None,
                    request_id,
                    request: Some(PublishRequest {
                        topic: topic.clone(),
                        messages: batch,
                        ack: ack as i32,
                    }),
                };
                if sent_tx.send(sent).is_err() || request_tx.send(request).await.is_err() {
                    break;
                }
            }
            if failure.is_some() {
                break;
            }
        }
        (failure, bytes_total)
    });

    let context = format!("publishing to topic {:?}", args.topic);
    let started = Instant::now();
    let mut responses = broker
        .publisher()
        .publish_stream(ReceiverStream::new(request_rx))
        .await
        .map_err(|s| broker.error(&context, &s))?
        .into_inner();

    let mut out = Stdout::new();
    let mut summary = Summary::default();
    let mut pending: VecDeque<Sent> = VecDeque::new();
    loop {
        let response = match responses.message().await {
            Ok(Some(response)) => response,
            Ok(None) => break,
            Err(status) => {
                progress.abandon();
                let error = broker.error(&context, &status);
                return Err(after(error, summary.messages));
            }
        };
        while let Ok(sent) = sent_rx.try_recv() {
            pending.push_back(sent);
        }
        let sent = match pending.pop_front() {
            Some(sent) if sent.request_id == response.request_id => sent,
            _ => {
                return Err(CliError::failure(
                    format!(
                        "{context} failed: the broker answered request {} out of order",
                        response.request_id
                    ),
                    "check that tidelogd and tidelog are the same version",
                ));
            }
        };
        match response.outcome {
            Some(publish_stream_response::Outcome::Response(acks)) => {
                summary.messages += sent.messages;
                for a in &acks.acks {
                    summary.ack(a.partition, a.offset);
                    summary.duplicates += u64::from(a.duplicate);
                    if !args.quiet {
                        print_ack(&mut out, a, json)?;
                    }
                }
            }
            Some(publish_stream_response::Outcome::Error(error)) => {
                progress.abandon();
                let status = tonic::Status::new(tonic::Code::from(error.code), error.message);
                let lines = format!(
                    "{context} (lines {})",
                    range(sent.first_line, sent.first_line + sent.messages - 1)
                );
                return Err(after(broker.error(&lines, &status), summary.messages));
            }
            None | Some(publish_stream_response::Outcome::BatchResponse(_)) => {
                return Err(CliError::failure(
                    format!(
                        "{context} failed: the broker's answer to request {} is empty ({})",
                        response.request_id,
                        code_name(tonic::Code::Unknown)
                    ),
                    "check that tidelogd and tidelog are the same version",
                ));
            }
        }
    }
    progress.finish_and_clear();
    let (failure, bytes_total) = batcher
        .await
        .map_err(|e| CliError::plain(format!("the batcher stopped: {e}")))?;
    summary.payload_bytes = bytes_total;
    if let Some(error) = failure {
        return Err(after(error, summary.messages));
    }
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
/// id (the offset is the stored message's) and ` id ID` when the broker assigned one.
fn print_ack(out: &mut Stdout, a: &MessageAck, json: bool) -> CliResult<()> {
    let id = (!a.id.is_empty()).then(|| msgid::display(&a.id));
    if json {
        let mut value = json!({"partition": a.partition, "offset": a.offset});
        if a.duplicate {
            value["duplicate"] = json!(true);
        }
        if let Some(id) = id {
            value["id"] = json!(id);
        }
        return out.json(&value);
    }
    let mut line = format!("partition {} offset {}", a.partition, a.offset);
    if a.duplicate {
        line.push_str(" duplicate");
    }
    if let Some(id) = id {
        line.push_str(" id ");
        line.push_str(&id);
    }
    out.line(&line)
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
        while let Ok(Ok((m, _))) = rx.try_recv() {
            got.push(m.value.to_vec());
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
        while let Ok(Ok((m, line))) = rx.try_recv() {
            got.push((String::from_utf8_lossy(&m.value).to_string(), line));
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
