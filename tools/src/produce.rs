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
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tidelog_proto::v1::{
    AckLevel, Header, Message, PublishRequest, PublishStreamRequest, publish_stream_response,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::cli::{AckArg, ProduceArgs};
use crate::client::Broker;
use crate::error::{CliError, CliResult, code_name};
use crate::output::Stdout;
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
}

impl LineFormat {
    /// The message for one line (without its newline); `line_number` is 1-based.
    pub fn message(&self, line: &[u8], line_number: u64) -> CliResult<Message> {
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
                    Bytes::copy_from_slice(&line[..at]),
                    Bytes::copy_from_slice(&line[at + separator.len()..]),
                )
            }
            None => (
                self.key.clone().unwrap_or_default(),
                Bytes::copy_from_slice(line),
            ),
        };
        Ok(Message {
            key,
            value,
            headers: self.headers.clone(),
            timestamp_ms: None,
            ttl_ms: self.ttl_ms,
            partition: self.partition,
            ..Message::default()
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Reads lines and sends messages until the input ends or the receiver goes away.
fn read_lines(
    input: Box<dyn Read + Send>,
    format: &LineFormat,
    sender: &mpsc::Sender<Line>,
    progress: &ProgressBar,
) {
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let mut line = Vec::new();
    let mut line_number = 0u64;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(LINE_BYTES_MAX + 1)
            .read_until(b'\n', &mut line);
        let item = match read {
            Ok(0) => return,
            Ok(n) => {
                progress.inc(n as u64);
                line_number += 1;
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                } else if line.len() as u64 > LINE_BYTES_MAX {
                    let _ = sender.blocking_send(Err(CliError::failure(
                        format!(
                            "line {line_number} is longer than {}",
                            format_bytes(LINE_BYTES_MAX)
                        ),
                        "messages are limited to 16 MiB; split the input",
                    )));
                    return;
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
    };
    let ack = match args.ack {
        AckArg::None => AckLevel::None,
        AckArg::Written => AckLevel::Written,
        AckArg::Durable => AckLevel::Durable,
    };

    let (input, total_bytes): (Box<dyn Read + Send>, Option<u64>) = match &args.file {
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
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        }
        _ => ProgressBar::hidden(),
    };

    let (line_tx, mut line_rx) = mpsc::channel::<Line>(READ_AHEAD_MESSAGES);
    let reader_progress = progress.clone();
    std::thread::spawn(move || read_lines(input, &format, &line_tx, &reader_progress));

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
                    if !args.quiet {
                        if json {
                            out.json(&json!({"partition": a.partition, "offset": a.offset}))?;
                        } else {
                            out.line(&format!("partition {} offset {}", a.partition, a.offset))?;
                        }
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
            None => {
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
                "payload_bytes": summary.payload_bytes,
                "elapsed_ms": elapsed.as_millis() as u64,
                "partitions": partitions,
            }))?;
        } else {
            let rate = summary.messages as f64 / elapsed.as_secs_f64().max(1e-6);
            out.line(&format!(
                "produced {} message{} ({}) to {} in {:.2}s ({}){}",
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
        }
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
        let input: Box<dyn Read + Send> = Box::new(&b"a\r\nb\n\nlast"[..]);
        read_lines(input, &format(), &tx, &ProgressBar::hidden());
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
