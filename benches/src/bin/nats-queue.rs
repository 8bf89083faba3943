//! The anchor for `tidelog bench queue`: the same work-queue load on NATS JetStream.
//!
//! A work-queue stream (file storage), M messages of S bytes published first with
//! confirmed publishes (untimed), then N workers on one durable explicit-ack pull
//! consumer, each pulling batches and acking every message. Acks are either
//! confirmed (`--ack double`: `double_ack`, the server answers each ack, the closest to
//! tidelog's answered acks) or fire-and-forget (`--ack plain`: the NATS default; the
//! run ends when the stream is empty, i.e. when the server applied every ack).
//! Validation: every stream sequence acked exactly once (confirmed acks), and the
//! stream empty at the end.
//!
//! Note on durability: JetStream's file store writes to the page cache and fsyncs on
//! an interval (not per publish or ack); tidelog fsyncs every ack before answering it.
//!
//! ```sh
//! nats-server -js -sd /tmp/nats-bench -a 127.0.0.1 -p 4222 &
//! cargo run --release -p tidelog-benches --features nats --bin nats-queue -- \
//!     --workers 4 --messages 1000000 --size 100 --server-pid $(pgrep -n nats-server)
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

#[derive(Debug, Clone)]
struct Args {
    server: String,
    workers: usize,
    messages: u64,
    size: usize,
    /// Messages per pull request.
    batch: usize,
    max_ack_pending: i64,
    /// Confirmed acks in flight per worker (`--ack double`).
    acks_in_flight: usize,
    double_ack: bool,
    server_pid: Option<u32>,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        server: "127.0.0.1:4222".into(),
        workers: 4,
        messages: 1_000_000,
        size: 100,
        batch: 1000,
        max_ack_pending: 4000,
        acks_in_flight: 1000,
        double_ack: true,
        server_pid: None,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{v:?} is not a number"))
        };
        match flag.as_str() {
            "--server" => args.server = value()?,
            "--workers" => args.workers = number(value()?)? as usize,
            "--messages" => args.messages = number(value()?)?,
            "--size" => args.size = number(value()?)? as usize,
            "--batch" => args.batch = number(value()?)? as usize,
            "--max-ack-pending" => args.max_ack_pending = number(value()?)? as i64,
            "--acks-in-flight" => args.acks_in_flight = number(value()?)? as usize,
            "--ack" => {
                args.double_ack = match value()?.as_str() {
                    "double" => true,
                    "plain" => false,
                    other => return Err(format!("--ack {other}: use double or plain")),
                }
            }
            "--server-pid" => args.server_pid = Some(number(value()?)? as u32),
            "--json" => args.json = true,
            "--help" | "-h" => {
                return Err(
                    "usage: nats-queue [--server HOST:PORT] [--workers N] [--messages N] \
                     [--size BYTES] [--batch N] [--max-ack-pending N] [--acks-in-flight N] \
                     [--ack double|plain] [--server-pid PID] [--json]"
                        .into(),
                );
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

const STREAM: &str = "TIDELOG_BENCH_Q";
const SUBJECT: &str = "tidelog.bench.q";
const CONSUMER: &str = "workers";
/// Publishes awaiting their ack while publishing.
const PUBLISHES_IN_FLIGHT: usize = 2_000;

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn cpu(pid: Option<u32>) -> Option<f64> {
    match pid {
        Some(pid) => tidelog_storage::procstat::cpu_seconds(Some(pid)),
        None => tidelog_storage::procstat::cpu_seconds(None),
    }
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// What one worker did.
#[derive(Debug, Default)]
struct Worker {
    acked: u64,
    redelivered: u64,
    /// Stream sequences whose ack the server confirmed (or that were acked, plain).
    sequences: Vec<u64>,
    /// Receive -> confirmed ack, µs (double acks only).
    latencies_us: Vec<u64>,
    errors: Vec<String>,
}

async fn worker(
    consumer: jetstream::consumer::Consumer<pull::Config>,
    args: Args,
    acked: Arc<AtomicU64>,
    total: u64,
) -> Worker {
    let mut out = Worker::default();
    let mut messages = match consumer
        .stream()
        .max_messages_per_batch(args.batch)
        .messages()
        .await
    {
        Ok(messages) => messages,
        Err(error) => {
            out.errors.push(format!("pull: {error}"));
            return out;
        }
    };
    let mut confirming = FuturesUnordered::new();
    loop {
        if acked.load(Ordering::Acquire) >= total {
            break;
        }
        tokio::select! {
            Some(done) = confirming.next(), if !confirming.is_empty() => {
                let (sequence, received, result): (u64, Instant, Result<(), String>) = done;
                match result {
                    Ok(()) => {
                        out.acked += 1;
                        out.sequences.push(sequence);
                        out.latencies_us.push(received.elapsed().as_micros() as u64);
                        acked.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(error) => out.errors.push(format!("ack of {sequence}: {error}")),
                }
            }
            next = messages.next(), if confirming.len() < args.acks_in_flight => {
                let Some(message) = next else { break };
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        out.errors.push(format!("pull: {error}"));
                        continue;
                    }
                };
                let received = Instant::now();
                let (sequence, delivered) = match message.info() {
                    Ok(info) => (info.stream_sequence, info.delivered),
                    Err(error) => {
                        out.errors.push(format!("message info: {error}"));
                        continue;
                    }
                };
                if delivered > 1 {
                    out.redelivered += 1;
                }
                if message.payload.len() != args.size {
                    out.errors.push(format!("sequence {sequence}: {} bytes", message.payload.len()));
                }
                if args.double_ack {
                    confirming.push(async move {
                        let result = message.double_ack().await.map_err(|e| e.to_string());
                        (sequence, received, result)
                    });
                } else {
                    match message.ack().await {
                        Ok(()) => {
                            out.acked += 1;
                            out.sequences.push(sequence);
                            acked.fetch_add(1, Ordering::AcqRel);
                        }
                        Err(error) => out.errors.push(format!("ack of {sequence}: {error}")),
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    out
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    if let Err(message) = run(args).await {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let load_before = loadavg();
    let client = async_nats::connect(&args.server)
        .await
        .map_err(|e| format!("connecting to {}: {e}", args.server))?;
    let js = jetstream::new(client);
    let _ = js.delete_stream(STREAM).await;
    let stream = js
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec![SUBJECT.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("creating the stream: {e}"))?;

    // Publish, confirmed, pipelined (untimed for the figures).
    let publish_started = Instant::now();
    let payload = bytes::Bytes::from(vec![b'x'; args.size]);
    let mut pending = FuturesUnordered::new();
    for _ in 0..args.messages {
        let ack = js
            .publish(SUBJECT, payload.clone())
            .await
            .map_err(|e| format!("publish: {e}"))?;
        pending.push(ack.into_future());
        // Below the context's limit of unanswered publishes (5,000), which makes
        // `publish` wait for a permit that only answered (polled) acks give back.
        if pending.len() >= PUBLISHES_IN_FLIGHT {
            pending
                .next()
                .await
                .transpose()
                .map_err(|e| format!("publish ack: {e}"))?;
        }
    }
    while let Some(ack) = pending.next().await {
        ack.map_err(|e| format!("publish ack: {e}"))?;
    }
    let publish_seconds = publish_started.elapsed().as_secs_f64();
    eprintln!(
        "published {} messages in {publish_seconds:.2}s; working them off",
        args.messages
    );

    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(CONSUMER.into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: args.max_ack_pending,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("creating the consumer: {e}"))?;

    let server_cpu_before = args.server_pid.and_then(|p| cpu(Some(p)));
    let client_cpu_before = cpu(None);
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.workers {
        tasks.push(tokio::spawn(worker(
            consumer.clone(),
            args.clone(),
            acked.clone(),
            args.messages,
        )));
    }
    let mut workers = Vec::new();
    for task in tasks {
        workers.push(task.await.map_err(|e| format!("a worker failed: {e}"))?);
    }
    // Plain acks are not answered: the work is done when the stream is empty.
    let mut stream = stream;
    let drained = loop {
        let info = stream
            .info()
            .await
            .map_err(|e| format!("stream info: {e}"))?;
        if info.state.messages == 0 || started.elapsed() > Duration::from_secs(60) {
            break info.state.messages;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let server_cpu = match (
        server_cpu_before,
        args.server_pid.and_then(|p| cpu(Some(p))),
    ) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let client_cpu = match (client_cpu_before, cpu(None)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let load_after = loadavg();

    // Every sequence acked exactly once.
    let mut errors: Vec<String> = workers.iter().flat_map(|w| w.errors.clone()).collect();
    let mut sequences: Vec<u64> = workers.iter().flat_map(|w| w.sequences.clone()).collect();
    sequences.sort_unstable();
    let twice = sequences.windows(2).filter(|w| w[0] == w[1]).count();
    let acked_total = workers.iter().map(|w| w.acked).sum::<u64>();
    if twice > 0 {
        errors.push(format!("{twice} sequences acked more than once"));
    }
    if acked_total != args.messages {
        errors.push(format!("{acked_total} acked of {}", args.messages));
    }
    if drained != 0 {
        errors.push(format!("{drained} messages left in the stream"));
    }
    let mut latencies: Vec<u64> = workers
        .iter()
        .flat_map(|w| w.latencies_us.clone())
        .collect();
    latencies.sort_unstable();
    let rate = args.messages as f64 / seconds;
    let per_message = |s: Option<f64>| s.map(|s| s * 1e6 / args.messages as f64);
    let document = serde_json::json!({
        "command": "nats-queue",
        "server": args.server,
        "parameters": {
            "workers": args.workers,
            "messages": args.messages,
            "message_size": args.size,
            "pull_batch": args.batch,
            "max_ack_pending": args.max_ack_pending,
            "ack": if args.double_ack { "double (confirmed)" } else { "plain (fire and forget)" },
            "acks_in_flight": args.acks_in_flight,
        },
        "publish": { "messages": args.messages, "seconds": publish_seconds, "messages_per_s": (args.messages as f64 / publish_seconds).round() },
        "acked": acked_total,
        "seconds": seconds,
        "acked_per_s": rate.round(),
        "ack_latency_us": (!latencies.is_empty()).then(|| serde_json::json!({
            "p50": percentile(&latencies, 0.5),
            "p90": percentile(&latencies, 0.9),
            "p99": percentile(&latencies, 0.99),
            "p99_9": percentile(&latencies, 0.999),
            "max": latencies.last(),
        })),
        "redelivered": workers.iter().map(|w| w.redelivered).sum::<u64>(),
        "server_cpu_seconds": server_cpu,
        "client_cpu_seconds": client_cpu,
        "server_cpu_us_per_message": per_message(server_cpu),
        "client_cpu_us_per_message": per_message(client_cpu),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "validation": { "ok": errors.is_empty(), "errors": errors },
    });
    if args.json {
        println!("{document:#}");
    } else {
        println!(
            "nats-queue: {} workers, {} x {} B, ack {}: {acked_total} acked in {seconds:.2}s = {rate:.0}/s",
            args.workers,
            args.messages,
            args.size,
            if args.double_ack { "double" } else { "plain" }
        );
        println!(
            "publish (untimed): {:.0}/s; ack latency p50 {} us p99 {} us; server CPU {:?} us/msg, client {:?} us/msg",
            args.messages as f64 / publish_seconds,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            per_message(server_cpu).map(|v| (v * 100.0).round() / 100.0),
            per_message(client_cpu).map(|v| (v * 100.0).round() / 100.0),
        );
        println!("loadavg before {load_before}, after {load_after}");
        println!(
            "validation: {}",
            if errors.is_empty() {
                "ok".to_string()
            } else {
                errors.join("; ")
            }
        );
    }
    let _ = js.delete_stream(STREAM).await;
    if errors.is_empty() {
        Ok(())
    } else {
        Err("validation failed".into())
    }
}
