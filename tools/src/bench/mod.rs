//! `tidelog bench produce | consume | e2e`: load against a running tidelogd, with
//! the figures operators size hardware by and validation that a fast but wrong
//! broker cannot pass.
//!
//! | module | what |
//! |---|---|
//! | [`args`] | the command line |
//! | [`payload`] | the 32-byte checkable header and the filler pools |
//! | [`producer`] | unary or pipelined-stream publishing, publish -> ack latency |
//! | [`consumer`] | subscribe, group member or fetch reading, publish -> receive latency |
//! | [`validate`] | per-partition checks and their merge: count, order, checksum |
//! | [`stats`] | HDR latency histograms, rates, totals |
//! | [`report`] | the human table and the JSON document |
//! | [`queue`] | `bench queue`: work queue deliver + ack throughput, on its own |
//!
//! A run: open (or create) the topic; for `consume` on a topic it created, fill it
//! first; start the consumers and wait until each is subscribed (group members: until
//! the group settled); start the producers, each on its own HTTP/2 connection; when
//! they are done, tell the consumers the end offsets to read up to; validate; delete
//! the topic it created unless `--keep`. The bench runs on its own multi-threaded
//! runtime so it can use the cores it shares with the broker.

mod args;
mod consumer;
mod payload;
mod producer;
mod queue;
mod report;
mod stats;
mod validate;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use args::BenchCommand;
use args::{BenchArgs, Kind};
use consumer::{ConsumerOutcome, ConsumerPlan, ReadMode, Shared};
use indicatif::{ProgressBar, ProgressStyle};
use payload::Pool;
use producer::{Budget, ProducerOutcome, ProducerPlan};
use tidelog_proto::v1::{
    AckLevel, CommitOffsetsRequest, CreateTopicRequest, DeleteGroupRequest, DeleteTopicRequest,
    StartPosition, TopicDescription, TopicPartitionOffset, start_position,
};
use tokio::sync::{oneshot, watch};
use tonic::Code;

use validate::{Errors, Expectation, merge};

use crate::args::{AckArg, TopicConfigArgs};
use crate::client::Broker;
use crate::error::{CliError, CliResult};
use crate::topic::{create_config, describe};

/// How long group members may take to settle before producers start anyway.
const GROUP_SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Wall clock in ns since the Unix epoch, read from a monotonic clock after one
/// look at the system clock, so that send and receive times of one run compare.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_unix_ns: u64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    pub fn new() -> Clock {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Clock {
            base: Instant::now(),
            base_unix_ns: u64::try_from(unix.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    pub fn unix_ns(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.base);
        self.base_unix_ns
            .saturating_add(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }

    pub fn now_ns(&self) -> u64 {
        self.unix_ns(Instant::now())
    }
}

/// Which sequence numbers mod 100 `filter` matches on a bench message (key none,
/// header `bench-pct`, a value that is not JSON).
fn filter_matches(filter: &str) -> CliResult<Arc<validate::Matches>> {
    let filter = tidelog_storage::Filter::parse(filter).map_err(|error| {
        CliError::usage(
            format!("--filter {error}"),
            "see `tidelog consume --help` and the README (Filters) for the grammar",
        )
    })?;
    let mut matches = [false; 100];
    for (pct, slot) in matches.iter_mut().enumerate() {
        let headers = [tidelog_storage::Header {
            key: producer::PCT_HEADER.into(),
            value: bytes::Bytes::from(pct.to_string()),
        }];
        *slot = filter.evaluate(None, &headers, b"\0bench").matches();
    }
    Ok(Arc::new(matches))
}

/// A run id: distinguishes this run's messages from earlier runs' in a reused topic.
fn run_id() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ (u64::from(std::process::id()) << 32);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x as u32).max(1)
}

/// Everything a run measured, for the report.
#[derive(Debug)]
pub struct Outcome {
    pub kind: Kind,
    pub args: BenchArgs,
    pub server: String,
    pub run: u32,
    pub topic: TopicDescription,
    pub topic_created: bool,
    pub topic_deleted: bool,
    pub group: Option<String>,
    pub prefill: Option<stats::Totals>,
    pub producers: Vec<stats::ActorResult>,
    pub consumers: Vec<stats::ActorResult>,
    /// Messages the consumers checked.
    pub checked: u64,
    /// Messages of the log the consumers went through (read or skipped by a filter):
    /// every partition's start to its target, once per consumer with --fanout.
    pub log_messages: u64,
    pub validation: Errors,
    pub wall: Duration,
    pub client_cpu_seconds: Option<f64>,
}

/// The bench client's runtime: `client_threads` workers (default one per core).
fn runtime(client_threads: Option<u32>) -> CliResult<tokio::runtime::Runtime> {
    let threads = client_threads.map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()),
        |n| n as usize,
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("tidelog-bench")
        .enable_all()
        .build()
        .map_err(|e| {
            CliError::failure(
                format!("cannot start the async runtime: {e}"),
                "check the system's limits",
            )
        })
}

pub fn run(command: BenchCommand, server: &str, json: bool) -> CliResult<()> {
    if let BenchCommand::Queue(args) = command {
        return queue::run(args, server, json);
    }
    let (kind, args) = command.split();
    args.check(kind)?;
    let runtime = runtime(args.client_threads)?;
    let outcome = runtime.block_on(bench(kind, args, server))?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    report::print(&outcome, json)?;
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

/// A new HTTP/2 connection for one actor: tidelog-client's `Client`, whose HTTP/2
/// windows (8 MiB a stream, 16 MiB the connection) keep a subscriber from being
/// throttled by its own receive window on loopback.
async fn connect(server: &str) -> CliResult<tidelog_client::Client> {
    crate::client::connect(server).await
}

fn ack_level(ack: AckArg) -> AckLevel {
    match ack {
        AckArg::None => AckLevel::None,
        AckArg::Written => AckLevel::Written,
        AckArg::Durable => AckLevel::Durable,
    }
}

/// The topic to use and whether this run created it.
async fn open_topic(
    broker: &Broker,
    name: &str,
    args: &BenchArgs,
) -> CliResult<(TopicDescription, bool)> {
    let context = format!("describing topic {name:?}");
    let existing = broker
        .admin()
        .describe_topic(tidelog_proto::v1::DescribeTopicRequest { name: name.into() })
        .await;
    match existing {
        Ok(response) => {
            if let Some(topic) = response.into_inner().topic {
                return Ok((topic, false));
            }
            return Err(CliError::failure(
                format!("{context} failed: empty answer"),
                "check that tidelogd and tidelog are the same version",
            ));
        }
        Err(status) if status.code() == Code::NotFound => {}
        Err(status) => return Err(broker.error(&context, &status)),
    }
    let config = TopicConfigArgs {
        fsync: args.fsync,
        compression: Some(args.compression),
        max_message_bytes: Some((args.message_size as u64).max(1 << 20)),
        ..TopicConfigArgs::default()
    };
    let context = format!("creating topic {name:?}");
    let topic = broker
        .admin()
        .create_topic(CreateTopicRequest {
            name: name.into(),
            partitions: args.partitions,
            config: Some(create_config(&config)),
        })
        .await
        .map_err(|s| broker.error(&context, &s))?
        .into_inner()
        .topic
        .ok_or_else(|| {
            CliError::failure(
                format!("{context} failed: empty answer"),
                "check that tidelogd and tidelog are the same version",
            )
        })?;
    Ok((topic, true))
}

async fn describe_topic(broker: &Broker, name: &str) -> CliResult<TopicDescription> {
    describe(broker, name).await?.ok_or_else(|| {
        CliError::failure(
            format!("describing topic {name:?} failed: empty answer"),
            "check that tidelogd and tidelog are the same version",
        )
    })
}

/// Runs the producers to completion.
async fn produce(
    server: &str,
    args: &BenchArgs,
    run: u32,
    topic: &str,
    partitions: u32,
    clock: Clock,
    progress: &Arc<AtomicU64>,
) -> CliResult<Vec<ProducerOutcome>> {
    let producers = args.producers;
    let mut channels = Vec::with_capacity(producers as usize);
    for _ in 0..producers {
        channels.push(connect(server).await?);
    }
    let interval = args.rate.map(|rate| {
        let per_producer = rate as f64 / f64::from(producers);
        Duration::from_secs_f64(f64::from(args.batch) / per_producer)
    });
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(producers as usize);
    for (id, channel) in (0..producers).zip(channels) {
        let share = args.messages / u64::from(producers)
            + u64::from(u64::from(id) < args.messages % u64::from(producers));
        let budget = match args.duration {
            Some(ms) => Budget::Until(started + Duration::from_millis(ms)),
            None => Budget::Messages(share),
        };
        let plan = ProducerPlan {
            id,
            run,
            topic: topic.to_string(),
            partitions,
            message_size: args.message_size,
            batch: args.batch as usize,
            ack: ack_level(args.ack),
            stream: args.stream,
            pin: args.pin,
            ids: args.ids,
            delay_ms: args.delay,
            in_flight: args.in_flight as usize,
            budget,
            interval,
            pool: Arc::new(Pool::new(
                args.payload,
                u64::from(run) << 16 | u64::from(id),
            )),
            clock,
            tag: args.filter.is_some(),
            batch_wire: args.batch_wire.then_some(match args.compression {
                crate::args::CompressionArg::None => tidelog_storage::Compression::None,
                crate::args::CompressionArg::Zstd => tidelog_storage::Compression::Zstd,
            }),
        };
        tasks.push(tokio::spawn(producer::run(plan, channel, progress.clone())));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(
            task.await
                .map_err(|e| CliError::plain(format!("error: a producer stopped: {e}")))?,
        );
    }
    Ok(outcomes)
}

/// Messages acked per partition per producer.
fn sent_by_partition(outcomes: &[ProducerOutcome], partitions: u32) -> Vec<BTreeMap<u32, u64>> {
    let mut sent = vec![BTreeMap::new(); partitions as usize];
    for outcome in outcomes {
        for (p, &count) in outcome.sent.iter().enumerate() {
            if count > 0 {
                sent[p].insert(outcome.result.id, count);
            }
        }
    }
    sent
}

/// Once producers are done: the offset after the last written message per
/// partition, after waiting (briefly) for it to become visible to readers.
async fn written_ends(broker: &Broker, topic: &str) -> CliResult<Vec<u64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let description = describe_topic(broker, topic).await?;
        let visible = description
            .partitions
            .iter()
            .all(|p| p.end_offset >= p.written_offset);
        if visible || Instant::now() >= deadline {
            return Ok(description
                .partitions
                .iter()
                .map(|p| p.written_offset)
                .collect());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Which counters a progress line shows: only what the run does (a produce run
/// consumes nothing, and "consumed 0 (0/s)" beside it reads like a fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shows {
    produced: bool,
    consumed: bool,
}

impl Shows {
    fn of(kind: Kind) -> Shows {
        Shows {
            produced: kind.produces(),
            consumed: kind.consumes(),
        }
    }
}

/// `label: produced N (rate), consumed N (rate)`, with only the counters `shows` asks for.
fn progress_message(
    label: &str,
    shows: Shows,
    produced: (u64, f64),
    consumed: (u64, f64),
) -> String {
    let mut parts = Vec::new();
    if shows.produced {
        parts.push(format!(
            "produced {} ({})",
            produced.0,
            crate::units::format_rate(produced.1)
        ));
    }
    if shows.consumed {
        parts.push(format!(
            "consumed {} ({})",
            consumed.0,
            crate::units::format_rate(consumed.1)
        ));
    }
    format!("{label}: {}", parts.join(", "))
}

fn progress_bar(kind: Kind) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(format!("bench {} starting", kind.name()));
    bar
}

/// Updates the progress line every 200 ms until dropped.
fn spawn_ticker(
    bar: ProgressBar,
    produced: Arc<AtomicU64>,
    shared: Arc<Shared>,
    label: &'static str,
    shows: Shows,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if bar.is_hidden() {
            return;
        }
        let started = Instant::now();
        let mut last = (0u64, 0u64, Instant::now());
        let mut interval = tokio::time::interval(Duration::from_millis(200));
        loop {
            interval.tick().await;
            let (p, c) = (
                produced.load(Ordering::Relaxed),
                shared.consumed.load(Ordering::Relaxed),
            );
            let dt = last.2.elapsed().as_secs_f64().max(1e-3);
            let (pr, cr) = ((p - last.0) as f64 / dt, (c - last.1) as f64 / dt);
            last = (p, c, Instant::now());
            bar.set_message(progress_message(label, shows, (p, pr), (c, cr)));
            bar.tick();
            let _ = started;
        }
    })
}

async fn bench(kind: Kind, args: BenchArgs, server: &str) -> CliResult<Outcome> {
    let wall = Instant::now();
    let cpu_before = stats::process_cpu_seconds();
    let broker = Broker::connect(server).await?;
    let clock = Clock::new();
    let run = run_id();
    let name = args
        .topic
        .clone()
        .unwrap_or_else(|| format!("tidelog-bench-{run:08x}"));
    let (mut topic, created) = open_topic(&broker, &name, &args).await?;
    let partitions = topic.partitions.len() as u32;
    let bar = progress_bar(kind);
    let produced = Arc::new(AtomicU64::new(0));
    let mut validation = Errors::default();

    // consume on a topic of its own: fill it first (not timed).
    let mut prefill = None;
    let mut own_sent = None;
    if kind == Kind::Consume && created {
        let shared = Arc::new(Shared::new(partitions, &[], 0));
        let ticker = spawn_ticker(
            bar.clone(),
            produced.clone(),
            shared,
            "filling",
            Shows {
                produced: true,
                consumed: false,
            },
        );
        let outcomes = produce(server, &args, run, &name, partitions, clock, &produced).await;
        ticker.abort();
        let outcomes = outcomes?;
        for outcome in &outcomes {
            validation.extend(outcome.errors.clone());
        }
        own_sent = Some(sent_by_partition(&outcomes, partitions));
        let results: Vec<_> = outcomes.into_iter().map(|o| o.result).collect();
        prefill = Some(stats::Totals::of(&results));
    }

    // Where reading starts and (for consume) ends.
    topic = describe_topic(&broker, &name).await?;
    let (starts, initial_targets): (Vec<u64>, Option<Vec<u64>>) = match kind {
        Kind::Consume => {
            let ends = if created {
                written_ends(&broker, &name).await?
            } else {
                topic.partitions.iter().map(|p| p.end_offset).collect()
            };
            (
                topic
                    .partitions
                    .iter()
                    .map(|p| p.log_start_offset)
                    .collect(),
                Some(ends),
            )
        }
        _ => (
            topic.partitions.iter().map(|p| p.end_offset).collect(),
            None,
        ),
    };
    let starts = Arc::new(starts);
    let (targets_tx, targets_rx) = watch::channel(initial_targets.clone().map(Arc::new));
    let shared = Arc::new(Shared::new(partitions, &starts, args.consumers as usize));
    let group = (kind.consumes() && args.group).then(|| format!("tidelog-bench-{run:08x}"));
    if let Some(group) = &group {
        // The group starts exactly at `starts`, whatever the reset policy would pick.
        let offsets = (0..partitions)
            .map(|p| TopicPartitionOffset {
                topic: name.clone(),
                partition: p,
                offset: starts[p as usize],
                metadata: String::new(),
                topic_id: 0,
            })
            .collect();
        let context = format!("committing the start offsets of group {group:?}");
        broker
            .groups()
            .commit_offsets(CommitOffsetsRequest {
                group_id: group.clone(),
                member_id: String::new(),
                generation: None,
                offsets,
            })
            .await
            .map_err(|s| broker.error(&context, &s))?;
    }

    // With a filter: which of this run's messages it matches (by their sequence mod
    // 100, the `bench-pct` header), for the validation.
    let matches = args.filter.as_deref().map(filter_matches).transpose()?;

    // Consumers first, so an e2e run measures from the first message.
    let mut consumer_tasks = Vec::new();
    if kind.consumes() {
        let mut readies = Vec::new();
        let start = StartPosition {
            position: Some(match kind {
                Kind::Consume => start_position::Position::Earliest(start_position::Earliest {}),
                _ => start_position::Position::Latest(start_position::Latest {}),
            }),
        };
        for id in 0..args.consumers {
            let channel = connect(server).await?;
            let assigned: Vec<u32> = if args.fanout || args.group {
                (0..partitions).collect()
            } else {
                (0..partitions)
                    .filter(|p| p % args.consumers == id)
                    .collect()
            };
            let mode = match (&group, args.fetch) {
                (Some(group), _) => ReadMode::Group(group.clone()),
                (None, true) => ReadMode::Fetch,
                (None, false) => ReadMode::Subscribe(start),
            };
            let own_run = kind == Kind::E2e || own_sent.is_some();
            let plan = ConsumerPlan {
                id,
                topic: name.clone(),
                partitions: assigned,
                partition_count: partitions,
                starts: starts.clone(),
                mode,
                run_filter: own_run.then_some(run),
                latency: kind == Kind::E2e,
                read_batch: args.read_batch,
                filter: args.filter.clone().unwrap_or_default(),
                matches: own_run.then(|| matches.clone()).flatten(),
                idle_timeout: Duration::from_millis(args.idle_timeout),
                clock,
                targets: targets_rx.clone(),
                shared: shared.clone(),
                batch_wire: args.batch_wire,
            };
            let (ready_tx, ready_rx) = oneshot::channel();
            readies.push(ready_rx);
            consumer_tasks.push(tokio::spawn(consumer::run(plan, channel, ready_tx)));
        }
        for ready in readies {
            let _ = ready.await;
        }
        if group.is_some() {
            settle_group(&shared).await;
        }
    }

    let ticker = spawn_ticker(
        bar.clone(),
        produced.clone(),
        shared.clone(),
        kind.name(),
        Shows::of(kind),
    );
    let mut producer_results = Vec::new();
    if kind.produces() {
        let outcomes = produce(server, &args, run, &name, partitions, clock, &produced).await?;
        for outcome in &outcomes {
            validation.extend(outcome.errors.clone());
        }
        own_sent = Some(sent_by_partition(&outcomes, partitions));
        producer_results = outcomes.into_iter().map(|o| o.result).collect();
        if kind == Kind::E2e {
            let ends = written_ends(&broker, &name).await?;
            targets_tx.send_replace(Some(Arc::new(ends)));
        }
    }

    let mut consumers: Vec<ConsumerOutcome> = Vec::new();
    for task in consumer_tasks {
        consumers.push(
            task.await
                .map_err(|e| CliError::plain(format!("error: a consumer stopped: {e}")))?,
        );
    }
    ticker.abort();
    bar.finish_and_clear();

    // Validation of what was read.
    let mut checked = 0;
    let mut log_messages = 0;
    if kind.consumes() {
        let targets = targets_tx.borrow().clone().unwrap_or_default();
        log_messages = (0..partitions as usize)
            .map(|p| {
                targets
                    .get(p)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(starts[p])
            })
            .sum::<u64>()
            * if args.fanout {
                u64::from(args.consumers)
            } else {
                1
            };
        let expectation = |p: usize| Expectation {
            start: starts[p],
            end: targets.get(p).copied().unwrap_or(starts[p]),
            own_run: own_sent.is_some().then_some(run),
            sent: own_sent.as_ref().map(|s| s[p].clone()).unwrap_or_default(),
            matches: own_sent.is_some().then(|| matches.clone()).flatten(),
        };
        for consumer in &consumers {
            validation.extend(consumer.errors.clone());
            for check in &consumer.checks {
                validation.extend(check.errors.clone());
            }
            checked += consumer.result.messages;
        }
        if args.fanout {
            for consumer in &consumers {
                for p in 0..partitions as usize {
                    let checks: Vec<_> = consumer
                        .checks
                        .iter()
                        .filter(|c| c.partition as usize == p)
                        .collect();
                    let mut errors = Errors::default();
                    merge(&checks, &expectation(p), &mut errors);
                    prefix(&mut errors, &format!("consumer {}: ", consumer.result.id));
                    validation.extend(errors);
                }
            }
        } else {
            for p in 0..partitions as usize {
                let checks: Vec<_> = consumers
                    .iter()
                    .flat_map(|c| c.checks.iter())
                    .filter(|c| c.partition as usize == p)
                    .collect();
                merge(&checks, &expectation(p), &mut validation);
            }
        }
    }

    // Clean up.
    let mut deleted = false;
    if created && !args.keep {
        let context = format!("deleting topic {name:?}");
        broker
            .admin()
            .delete_topic(DeleteTopicRequest { name: name.clone() })
            .await
            .map_err(|s| broker.error(&context, &s))?;
        deleted = true;
    } else if let Some(group) = &group {
        // Members leave as their streams close; give the broker a moment to notice.
        for _ in 0..50 {
            let result = broker
                .groups()
                .delete_group(DeleteGroupRequest {
                    group_id: group.clone(),
                })
                .await;
            match result {
                Ok(_) => break,
                Err(status) if status.code() == Code::FailedPrecondition => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => break,
            }
        }
    }

    let client_cpu_seconds = match (cpu_before, stats::process_cpu_seconds()) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    Ok(Outcome {
        kind,
        server: broker.server.clone(),
        run,
        topic,
        topic_created: created,
        topic_deleted: deleted,
        group,
        prefill,
        producers: producer_results,
        consumers: consumers.into_iter().map(|c| c.result).collect(),
        checked,
        log_messages,
        validation,
        wall: wall.elapsed(),
        client_cpu_seconds,
        args,
    })
}

fn prefix(errors: &mut Errors, text: &str) {
    for message in &mut errors.first {
        message.insert_str(0, text);
    }
}

/// Waits until every group member holds an assignment of the group's latest
/// generation (all joined, rebalance done), or the timeout.
async fn settle_group(shared: &Shared) {
    let deadline = Instant::now() + GROUP_SETTLE_TIMEOUT;
    while Instant::now() < deadline {
        let settled = shared.generations.lock().is_ok_and(|generations| {
            let max = generations.iter().flatten().max().copied();
            generations.iter().all(|g| g.is_some() && *g == max)
        });
        if settled {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_shows_only_what_the_run_does() {
        let produce = progress_message("produce", Shows::of(Kind::Produce), (5, 10.0), (0, 0.0));
        assert!(produce.starts_with("produce: produced 5 ("), "{produce}");
        assert!(!produce.contains("consumed"), "{produce}");
        let consume = progress_message("consume", Shows::of(Kind::Consume), (0, 0.0), (7, 1.0));
        assert!(consume.starts_with("consume: consumed 7 ("), "{consume}");
        assert!(!consume.contains("produced"), "{consume}");
        let e2e = progress_message("e2e", Shows::of(Kind::E2e), (1, 1.0), (1, 1.0));
        assert!(
            e2e.contains("produced 1") && e2e.contains("consumed 1"),
            "{e2e}"
        );
    }
}
