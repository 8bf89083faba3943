//! `tidelog bench queue`: deliver-plus-ack throughput of a work queue.
//!
//! A run creates its own topic and a queue on it (from earliest), publishes
//! `--messages` bench payloads with the `bench produce` producers (first, or during the
//! run with `--live`), then `--workers` members each consume on their own connection
//! and `Consume` stream: every Deliveries event is checked (payload checksum, run id,
//! partition) and acked at once in one Settle, consecutive offsets of a partition as
//! one range (`through_offset`); credit comes back as the acks are confirmed, so each
//! worker holds at most `--credit` unsettled deliveries (and the queue's
//! `--max-unacked`). Acks are durable when answered: the queue's state log fsyncs them.
//!
//! Figures: acked messages per second (all acks / the time from the first worker's
//! start to the last confirmed ack), delivery -> ack latency (a Deliveries event's
//! arrival to its Settled answer, per message), publish -> delivery with `--live`,
//! deliveries per event (the engine's per-round batch as members see it), and the
//! client's and the broker's CPU per acked message. The broker's CPU is read from
//! /proc/<pid>/stat: `--broker-pid`, or found by the listening port on loopback.
//!
//! Validation (exit 1 on any error): every offset the producers wrote is acked
//! exactly once (per-offset counts over all workers), every payload is intact and of
//! this run, and at the end the queue has nothing ready, unacked or waiting.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tidelog_proto::v1::{
    CreateQueueRequest, DeleteQueueRequest, DeleteTopicRequest, DescribeQueueRequest, QueueConfig,
    StartPosition, start_position,
};
use tokio::sync::{oneshot, watch};

use super::args::{BenchArgs, count};
use super::payload::HEADER_BYTES;
use super::validate::Errors;
use super::{Clock, connect, open_topic, produce, run_id, written_ends};
use crate::args::fsync;
use crate::client::Broker;
use crate::error::{CliError, CliResult};
use crate::output::Stdout;
use crate::units::{format_rate, parse_size};

mod report;
mod worker;

use report::{QueueOutcome, document, human};
use worker::{Shared, WorkerPlan, worker};

const EXAMPLES: &str = "\
Examples:
  tidelog bench queue                                    # 1M x 100 B, 4 workers, published first
  tidelog bench queue --workers 8 --messages 5M --partitions 8
  tidelog bench queue --live --messages 2M               # publish and work at once
  tidelog bench queue --max-unacked 10000 --credit 10000 --json

Creates a topic and a queue (both deleted at the end unless --keep), publishes
--messages, and has --workers members consume it on Consume streams, acking every
delivery event at once (ranges of consecutive offsets). Reports acked messages/s,
delivery -> ack latency, deliveries per event, and client and broker CPU per message
(the broker's from /proc: --broker-pid, or found by its port on loopback). Acks are
always durable. Exit 1 unless every message was acked exactly once.";

fn message_size(text: &str) -> Result<usize, String> {
    let size = parse_size(text)?;
    if size < HEADER_BYTES as u64 {
        return Err(format!(
            "messages need at least {HEADER_BYTES} bytes (the bench header)"
        ));
    }
    if size > 1 << 20 {
        return Err("bench queue sends messages of at most 1 MiB".into());
    }
    Ok(size as usize)
}

fn fsync_text(text: &str) -> Result<String, String> {
    fsync(text).map(|_| text.trim().to_string())
}

fn history_retention(text: &str) -> Result<u64, String> {
    tidelog_storage::duration::parse_duration_ms(text).map_err(|e| e.to_string())
}

fn nonzero_duration(text: &str) -> Result<u64, String> {
    match crate::args::duration(text)? {
        0 => Err("give a duration above 0 (e.g. 10s)".into()),
        ms => Ok(ms),
    }
}

/// `tidelog bench queue`.
#[derive(Debug, Clone, Args)]
#[command(after_help = EXAMPLES)]
pub struct QueueBenchArgs {
    /// Queue members, each on its own connection and Consume stream.
    #[arg(short, long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,

    /// Messages to publish and work off (250k, 10M, ...).
    #[arg(short = 'n', long, default_value = "1M", value_name = "N", value_parser = count)]
    pub messages: u64,

    /// Bytes per message (value), at least 32.
    #[arg(short, long, visible_alias = "message-size", default_value = "100", value_name = "SIZE", value_parser = message_size)]
    pub size: usize,

    /// Partitions of the topic.
    #[arg(short = 'P', long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub partitions: u32,

    /// Publish while the workers work (default: publish everything first, untimed).
    #[arg(long)]
    pub live: bool,

    /// Publish each message with this delay: measures how late after its deliver-at time
    /// each is delivered (with --live and --rate, at that many due messages a second).
    /// Keep it below --idle-timeout.
    #[arg(long, value_name = "DURATION", value_parser = nonzero_duration)]
    pub delay: Option<u64>,

    /// Publish at this many messages a second over all producers (default: as fast as
    /// the broker takes them).
    #[arg(long, value_name = "N", value_parser = count)]
    pub rate: Option<u64>,

    /// Producers (pipelined PublishStreams, durable acks).
    #[arg(short, long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub producers: u32,

    /// Messages per publish request.
    #[arg(short, long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,

    /// Deliveries a worker may hold unsettled (its credit window).
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub credit: u32,

    /// The queue's max unacked per member.
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_unacked: u32,

    /// The queue's delivery history retention (`0` records none: what the history
    /// costs); default: the broker's.
    #[arg(long, value_name = "DURATION", value_parser = history_retention)]
    pub history_retention: Option<u64>,

    /// The queue's ack deadline.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = nonzero_duration)]
    pub ack_deadline: u64,

    /// fsync policy of the topic: always, interval:<duration>, never [default: always]
    /// (the queue's acks are durable whatever it is).
    #[arg(long, value_name = "POLICY", value_parser = fsync_text)]
    pub fsync: Option<String>,

    /// Keep the topic and the queue.
    #[arg(long)]
    pub keep: bool,

    /// A worker that gets nothing for this long while messages are still expected gives
    /// up (a validation error).
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = nonzero_duration)]
    pub idle_timeout: u64,

    /// tidelogd's process id, for its CPU time (default: found by its port on loopback).
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,

    /// Worker threads of the bench's own runtime [default: the number of CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub client_threads: Option<u32>,
}

/// The publishing half of a run, as `bench produce` flags (parsed, so every other
/// publish setting keeps its `bench produce` default).
fn publish_args(args: &QueueBenchArgs) -> CliResult<BenchArgs> {
    #[derive(Debug, Parser)]
    struct Publish {
        #[command(flatten)]
        args: BenchArgs,
    }
    let mut argv: Vec<String> = [
        "bench-queue",
        "--messages",
        &args.messages.to_string(),
        "--message-size",
        &args.size.to_string(),
        "--partitions",
        &args.partitions.to_string(),
        "--producers",
        &args.producers.to_string(),
        "--batch",
        &args.batch.to_string(),
        "--stream",
        "--ack",
        "durable",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(policy) = &args.fsync {
        argv.push("--fsync".into());
        argv.push(policy.clone());
    }
    if let Some(delay_ms) = args.delay {
        argv.push("--delay".into());
        argv.push(format!("{delay_ms}ms"));
    }
    if let Some(rate) = args.rate {
        argv.push("--rate".into());
        argv.push(rate.to_string());
    }
    Publish::try_parse_from(argv)
        .map(|p| p.args)
        .map_err(|e| CliError::usage(format!("bench queue: {e}"), "check the flags"))
}

/// Milliseconds since the Unix epoch, as the broker's deliver-at times count.
fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// /proc/loadavg's first three fields and /proc/pressure/cpu's "some" avg10.
fn machine_load() -> Value {
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .filter_map(|f| f.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let pressure = std::fs::read_to_string("/proc/pressure/cpu")
        .ok()
        .and_then(|text| {
            let some = text.lines().find(|l| l.starts_with("some"))?;
            some.split_whitespace()
                .find_map(|f| f.strip_prefix("avg10="))?
                .parse::<f64>()
                .ok()
        });
    json!({ "loadavg": loadavg, "cpu_pressure_some_avg10": pressure })
}

/// The process listening on TCP `port` on this machine, by the socket's inode in
/// /proc/net/tcp{,6} and the process whose fd links to it.
fn listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let listening = *state == "0A";
            let port_hex = local.rsplit(':').next().unwrap_or_default();
            if listening && u16::from_str_radix(port_hex, 16).ok() == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| link.as_os_str() == i.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// The broker's pid: the flag, or the listener of the server's port when it is on
/// this machine.
fn broker_pid(args: &QueueBenchArgs, url: &str) -> Option<u32> {
    if args.broker_pid.is_some() {
        return args.broker_pid;
    }
    let authority = url.split("://").nth(1)?.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let local = matches!(
        host.trim_matches(['[', ']']),
        "127.0.0.1" | "localhost" | "::1" | "0.0.0.0"
    );
    if !local {
        return None;
    }
    listener_pid(port.parse().ok()?)
}

pub fn run(args: QueueBenchArgs, server: &str, json: bool) -> CliResult<()> {
    let runtime = super::runtime(args.client_threads)?;
    let outcome = runtime.block_on(bench(args, server))?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    let mut out = Stdout::new();
    if json {
        out.json_pretty(&document(&outcome))?;
    } else {
        out.text(&human(&outcome))?;
    }
    out.flush()?;
    if outcome.validation.is_empty() {
        Ok(())
    } else {
        Err(CliError::plain(format!(
            "error: validation failed with {} error{} (listed above); the broker's results cannot be trusted",
            outcome.validation.count,
            if outcome.validation.count == 1 {
                ""
            } else {
                "s"
            }
        )))
    }
}

fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

async fn bench(args: QueueBenchArgs, server: &str) -> CliResult<QueueOutcome> {
    let load_before = machine_load();
    let publish = publish_args(&args)?;
    let broker = Broker::connect(server).await?;
    let pid = broker_pid(&args, &broker.server);
    let clock = Clock::new();
    let run = run_id();
    let name = format!("tidelog-bench-q-{run:08x}");
    let (topic, _) = open_topic(&broker, &name, &publish).await?;
    let partitions = topic.partitions.len() as u32;
    let context = format!("creating queue {name:?}");
    broker
        .queues()
        .create_queue(CreateQueueRequest {
            name: name.clone(),
            topic: name.clone(),
            start: Some(StartPosition {
                position: Some(start_position::Position::Earliest(
                    start_position::Earliest {},
                )),
            }),
            config: Some(QueueConfig {
                ack_deadline_ms: Some(args.ack_deadline),
                max_unacked_per_member: Some(args.max_unacked),
                history_retention_ms: args.history_retention,
                ..QueueConfig::default()
            }),
            ..CreateQueueRequest::default()
        })
        .await
        .map_err(|s| crate::queue::queue_error(&broker, &context, &s))?;
    let bar = progress_bar();
    let produced = Arc::new(AtomicU64::new(0));
    let mut validation = Errors::default();
    let (expected_tx, expected_rx) = watch::channel(None);

    // Published first: not timed.
    let mut published = 0u64;
    let mut publish_seconds = 0.0;
    if !args.live {
        bar.set_message(format!(
            "bench queue: publishing {} messages",
            args.messages
        ));
        let started = Instant::now();
        let outcomes = produce(server, &publish, run, &name, partitions, clock, &produced).await?;
        publish_seconds = started.elapsed().as_secs_f64();
        for outcome in &outcomes {
            validation.extend(outcome.errors.clone());
            published += outcome.result.messages;
        }
        let ends = written_ends(&broker, &name).await?;
        expected_tx.send_replace(Some(ends.iter().sum::<u64>()));
    }

    let shared = Arc::new(Shared {
        acked: AtomicU64::new(0),
        finished: watch::channel(false).0,
    });
    let mut readies = Vec::new();
    let mut tasks = Vec::new();
    for id in 0..args.workers {
        let channel = connect(server).await?;
        let plan = WorkerPlan {
            id,
            queue: name.clone(),
            run,
            credit: args.credit,
            clock,
            live: args.live,
            idle_timeout: Duration::from_millis(args.idle_timeout),
            expected: expected_rx.clone(),
            shared: shared.clone(),
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        readies.push(ready_rx);
        tasks.push(tokio::spawn(worker(plan, channel, ready_tx)));
    }
    for ready in readies {
        let _ = ready.await;
    }
    let broker_cpu_before = pid.and_then(|p| tidelog_storage::procstat::cpu_seconds(Some(p)));
    let client_cpu_before = super::stats::process_cpu_seconds();
    let started = Instant::now();
    let ticker = {
        let (bar, shared) = (bar.clone(), shared.clone());
        let expected = expected_rx.clone();
        let produced = produced.clone();
        let live = args.live;
        tokio::spawn(async move {
            let mut last = (0u64, Instant::now());
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let acked = shared.acked.load(Ordering::Relaxed);
                let rate = (acked - last.0) as f64 / last.1.elapsed().as_secs_f64().max(1e-3);
                last = (acked, Instant::now());
                let of = expected
                    .borrow()
                    .map_or_else(|| "?".into(), |e| e.to_string());
                let published = if live {
                    format!("published {}, ", produced.load(Ordering::Relaxed))
                } else {
                    String::new()
                };
                bar.set_message(format!(
                    "bench queue: {published}acked {acked} of {of} ({})",
                    format_rate(rate)
                ));
            }
        })
    };
    if args.live {
        let outcomes = produce(server, &publish, run, &name, partitions, clock, &produced).await;
        publish_seconds = started.elapsed().as_secs_f64();
        match outcomes {
            Ok(outcomes) => {
                for outcome in &outcomes {
                    validation.extend(outcome.errors.clone());
                    published += outcome.result.messages;
                }
                let ends = written_ends(&broker, &name).await?;
                let expected = ends.iter().sum::<u64>();
                expected_tx.send_replace(Some(expected));
                if shared.acked.load(Ordering::Acquire) >= expected {
                    shared.finished.send_replace(true);
                }
            }
            Err(error) => {
                shared.finished.send_replace(true);
                return Err(error);
            }
        }
    }
    let mut workers = Vec::new();
    for task in tasks {
        workers.push(
            task.await
                .map_err(|e| CliError::plain(format!("error: a worker stopped: {e}")))?,
        );
    }
    ticker.abort();
    bar.finish_and_clear();
    let client_cpu = match (client_cpu_before, super::stats::process_cpu_seconds()) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let broker_cpu = match (
        broker_cpu_before,
        pid.and_then(|p| tidelog_storage::procstat::cpu_seconds(Some(p))),
    ) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let seconds = workers
        .iter()
        .filter_map(|w| w.last_ack)
        .max()
        .map_or(0.0, |last| last.duration_since(started).as_secs_f64());
    let load_after = machine_load();

    // Every written offset acked exactly once.
    let ends = written_ends(&broker, &name).await?;
    for w in &workers {
        validation.extend(w.errors.clone());
    }
    for (p, &end) in ends.iter().enumerate() {
        let (mut missing, mut twice) = (Vec::new(), Vec::new());
        for offset in 0..end {
            let count: u32 = workers
                .iter()
                .map(|w| {
                    w.acks
                        .get(p)
                        .and_then(|a| a.get(offset as usize))
                        .map_or(0, |&c| u32::from(c))
                })
                .sum();
            match count {
                1 => {}
                0 => missing.push(offset),
                _ => twice.push(offset),
            }
        }
        if !missing.is_empty() {
            validation.push(|| {
                format!(
                    "partition {p}: {} message(s) never acked, first at offset {}",
                    missing.len(),
                    missing[0]
                )
            });
        }
        if !twice.is_empty() {
            validation.push(|| {
                format!(
                    "partition {p}: {} message(s) acked more than once, first at offset {}",
                    twice.len(),
                    twice[0]
                )
            });
        }
    }
    let queue_after = broker
        .queues()
        .describe_queue(DescribeQueueRequest { name: name.clone() })
        .await
        .ok()
        .and_then(|r| r.into_inner().queue);
    if let Some(q) = &queue_after
        && (q.ready > 0 || q.unacked > 0 || q.waiting > 0 || q.delayed > 0)
    {
        let (ready, unacked, waiting) = (q.ready, q.unacked, q.waiting);
        validation.push(|| {
            format!("the queue still has {ready} ready, {unacked} unacked, {waiting} waiting after the run")
        });
    }

    let mut deleted = false;
    if !args.keep {
        let context = format!("deleting queue {name:?}");
        broker
            .queues()
            .delete_queue(DeleteQueueRequest { name: name.clone() })
            .await
            .map_err(|s| crate::queue::queue_error(&broker, &context, &s))?;
        let context = format!("deleting topic {name:?}");
        broker
            .admin()
            .delete_topic(DeleteTopicRequest { name: name.clone() })
            .await
            .map_err(|s| broker.error(&context, &s))?;
        deleted = true;
    }
    Ok(QueueOutcome {
        server: broker.server.clone(),
        run,
        topic: name.clone(),
        queue: name,
        deleted,
        published,
        publish_seconds,
        workers,
        seconds,
        client_cpu,
        broker_cpu,
        broker_pid: pid,
        load_before,
        load_after,
        queue_after,
        validation,
        args,
    })
}

#[cfg(test)]
mod tests {
    use super::worker::WorkerOutcome;
    use super::*;

    #[test]
    fn publish_flags_become_bench_produce_args() {
        let args = QueueBenchArgs::augment_args(clap::Command::new("q"))
            .try_get_matches_from(["q", "--messages", "5k", "--size", "64", "--fsync", "never"])
            .map(|m| <QueueBenchArgs as clap::FromArgMatches>::from_arg_matches(&m).unwrap())
            .unwrap();
        let publish = publish_args(&args).unwrap();
        assert_eq!(publish.messages, 5000);
        assert_eq!(publish.message_size, 64);
        assert_eq!(publish.partitions, 4);
        assert!(publish.stream);
        assert_eq!(publish.fsync, Some(crate::args::Fsync::Never));
    }

    #[test]
    fn acks_are_counted_per_offset() {
        let mut w = WorkerOutcome::default();
        w.mark_acked(1, 3, 5);
        w.mark_acked(1, 5, 5);
        assert_eq!(w.acks[1], vec![0, 0, 0, 1, 1, 2]);
        assert!(w.acks[0].is_empty());
    }
}
