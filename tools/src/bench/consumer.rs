//! A consumer: reads the bench topic by `Subscribe` (plain or as a group member) or
//! by unary `Fetch` long polls, validates every message (see `validate`) and, in an
//! e2e run, measures publish -> receive per message.
//!
//! It stops once it has read up to the target end offsets: known at the start for
//! `consume`, sent by the orchestrator once the producers are done for `e2e`.
//! Group members share their progress, since the broker decides who reads what.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidelog_client::{Client, Conn};
use tidelog_proto::v1::consumer_client::ConsumerClient;
use tidelog_proto::v1::{
    ConsumedMessage, FetchRequest, FetchResponse, GroupMembership, MessageBatch, ResetPolicy,
    StartPosition, StoredRecordBatch, SubscribeBatchesResponse, SubscribeRequest,
    SubscribeResponse, subscribe_batches_response::Event as BatchesEvent,
    subscribe_response::Event,
};
use tidelog_storage::client_batch::for_each_delivered;
use tokio::sync::{oneshot, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::Clock;
use super::stats::{ActorResult, Role};
use super::validate::{Errors, Matches, PartitionCheck};

/// Bytes per subscribe batch or fetch asked for (the broker caps it at 8 MiB).
const READ_BYTES: u32 = 8 << 20;
/// Long-poll wait of a fetch at the head of a partition.
const FETCH_WAIT_MS: u64 = 200;
/// How often the broker commits a group member's position (so a partition handed
/// over in a rebalance continues where the previous owner stopped).
const AUTO_COMMIT_MS: u64 = 1000;

/// Target end offsets per partition (index = partition), once known.
pub type Targets = watch::Receiver<Option<Arc<Vec<u64>>>>;

#[derive(Debug, Clone)]
pub enum ReadMode {
    /// `Subscribe` from `start` on the plan's partitions.
    Subscribe(StartPosition),
    /// `Subscribe` as a member of this group: the broker assigns partitions.
    Group(String),
    /// Unary `Fetch` per partition.
    Fetch,
}

/// State shared by the consumers of one run.
#[derive(Debug)]
pub struct Shared {
    /// Per partition, one past the highest offset any consumer delivered.
    pub delivered: Vec<AtomicU64>,
    /// Set when every partition reached its target (group mode).
    pub finished: watch::Sender<bool>,
    /// Per consumer, the generation of its latest group assignment.
    pub generations: Mutex<Vec<Option<u64>>>,
    /// Messages consumed so far, for the progress line.
    pub consumed: AtomicU64,
}

impl Shared {
    pub fn new(partitions: u32, starts: &[u64], consumers: usize) -> Shared {
        Shared {
            delivered: (0..partitions as usize)
                .map(|p| AtomicU64::new(starts.get(p).copied().unwrap_or(0)))
                .collect(),
            finished: watch::channel(false).0,
            generations: Mutex::new(vec![None; consumers]),
            consumed: AtomicU64::new(0),
        }
    }

    fn all_delivered(&self, targets: &[u64]) -> bool {
        self.delivered
            .iter()
            .zip(targets)
            .all(|(d, &t)| d.load(Ordering::Acquire) >= t)
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerPlan {
    pub id: u32,
    pub topic: String,
    /// Partitions this consumer reads (ignored in group mode: the broker assigns).
    pub partitions: Vec<u32>,
    pub partition_count: u32,
    /// First offset to read per partition (index = partition).
    pub starts: Arc<Vec<u64>>,
    pub mode: ReadMode,
    /// Only this bench run's messages are valid; `None` accepts any.
    pub run_filter: Option<u32>,
    /// Record publish -> receive latency (e2e).
    pub latency: bool,
    pub read_batch: u32,
    /// A server-side filter (empty = none).
    pub filter: String,
    /// With a filter on the bench's own run: the sequences it matches (validation).
    pub matches: Option<Arc<Matches>>,
    pub idle_timeout: Duration,
    pub clock: Clock,
    pub targets: Targets,
    pub shared: Arc<Shared>,
    /// Read whole stored batches (FetchBatches / SubscribeBatches) and decode them.
    pub batch_wire: bool,
}

#[derive(Debug)]
pub struct ConsumerOutcome {
    pub result: ActorResult,
    /// What it saw, per partition it read.
    pub checks: Vec<PartitionCheck>,
    /// Failures of the read itself (stream errors, stalls).
    pub errors: Errors,
}

/// What a consumer (or one fetch loop of it) accumulates.
struct Reader {
    checks: Vec<Option<Box<PartitionCheck>>>,
    positions: Vec<u64>,
    result: ActorResult,
    errors: Errors,
    started: Instant,
    last_message: Option<Instant>,
    /// When the position last moved (by a message, or past messages a filter skipped).
    last_progress: Option<Instant>,
    /// Reading with a filter: the time taken is up to the last progress, not the last
    /// message.
    filtered: bool,
}

impl Reader {
    fn new(plan: &ConsumerPlan) -> Reader {
        Reader {
            checks: (0..plan.partition_count).map(|_| None).collect(),
            positions: plan.starts.as_ref().clone(),
            result: ActorResult::new(Role::Consumer, plan.id),
            errors: Errors::default(),
            started: Instant::now(),
            last_message: None,
            last_progress: None,
            filtered: !plan.filter.is_empty(),
        }
    }

    /// The broker says `partition` stands at `next_offset` (past what a filter skipped).
    fn position(&mut self, plan: &ConsumerPlan, partition: u32, next_offset: u64) {
        let p = partition as usize;
        let Some(position) = self.positions.get_mut(p) else {
            return;
        };
        if next_offset > *position {
            *position = next_offset;
            self.last_progress = Some(Instant::now());
        }
        if let ReadMode::Group(_) = plan.mode
            && let Some(delivered) = plan.shared.delivered.get(p)
        {
            delivered.fetch_max(next_offset, Ordering::AcqRel);
        }
    }

    /// Validates and counts a batch; messages at or past the target are not the
    /// bench's (another writer) and are skipped.
    fn batch(
        &mut self,
        plan: &ConsumerPlan,
        messages: &[ConsumedMessage],
        targets: Option<&[u64]>,
    ) {
        let now_ns = plan.clock.now_ns();
        let mut counted = 0u64;
        for m in messages {
            let p = m.partition as usize;
            if p >= self.checks.len() {
                let partition = m.partition;
                self.errors
                    .push(|| format!("consumer {}: message from partition {partition}, which the topic does not have", plan.id));
                continue;
            }
            if targets.is_some_and(|t| m.offset >= t[p]) {
                continue;
            }
            let check = self.checks[p].get_or_insert_with(|| {
                Box::new(
                    PartitionCheck::new(m.partition, plan.run_filter)
                        .filtered(plan.matches.clone()),
                )
            });
            if let Some(header) = check.message(m.offset, &m.value)
                && plan.latency
            {
                self.result
                    .latency
                    .record_us_n(now_ns.saturating_sub(header.sent_ns) / 1_000, 1);
            }
            self.positions[p] = self.positions[p].max(m.offset + 1);
            self.result.bytes += m.value.len() as u64;
            counted += 1;
            if let ReadMode::Group(_) = plan.mode {
                plan.shared.delivered[p].fetch_max(m.offset + 1, Ordering::AcqRel);
            }
        }
        if counted > 0 {
            self.result.messages += counted;
            self.last_message = Some(Instant::now());
            self.last_progress = self.last_message;
            plan.shared.consumed.fetch_add(counted, Ordering::Relaxed);
        }
    }

    fn caught_up(&self, partitions: &[u32], targets: &[u64]) -> bool {
        partitions
            .iter()
            .all(|&p| self.positions[p as usize] >= targets[p as usize])
    }

    fn finish(mut self) -> ConsumerOutcome {
        let last = if self.filtered {
            self.last_progress.max(self.last_message)
        } else {
            self.last_message
        };
        self.result.elapsed = last.map_or(Duration::ZERO, |last| last - self.started);
        ConsumerOutcome {
            result: self.result,
            checks: self.checks.into_iter().flatten().map(|c| *c).collect(),
            errors: self.errors,
        }
    }
}

/// Runs one consumer on its own connection; `ready` fires once it is subscribed.
pub async fn run(
    plan: ConsumerPlan,
    client: Client,
    ready: oneshot::Sender<()>,
) -> ConsumerOutcome {
    let client = client.consumer();
    match plan.mode {
        ReadMode::Fetch => run_fetch(plan, client, ready).await,
        _ => run_subscribe(plan, client, ready).await,
    }
}

fn current(targets: &Targets) -> Option<Arc<Vec<u64>>> {
    targets.borrow().clone()
}

async fn run_subscribe(
    plan: ConsumerPlan,
    mut client: ConsumerClient<Conn>,
    ready: oneshot::Sender<()>,
) -> ConsumerOutcome {
    let mut reader = Reader::new(&plan);
    let (partitions, start, group) = match &plan.mode {
        ReadMode::Subscribe(start) => (plan.partitions.clone(), Some(*start), None),
        ReadMode::Group(group) => (
            Vec::new(),
            None,
            Some(GroupMembership {
                group_id: group.clone(),
                member_id: String::new(),
                session_timeout_ms: 0,
                auto_commit_interval_ms: AUTO_COMMIT_MS,
                client_id: format!("tidelog-bench-{}", plan.id),
                handover_timeout_ms: 0,
            }),
        ),
        ReadMode::Fetch => unreachable!("fetch consumers do not subscribe"),
    };
    let grouped = group.is_some();
    let request = SubscribeRequest {
        topic: plan.topic.clone(),
        partitions,
        start,
        group,
        reset_policy: ResetPolicy::Earliest as i32,
        max_batch_messages: plan.read_batch,
        max_batch_bytes: READ_BYTES,
        filter: plan.filter.clone(),
        ..SubscribeRequest::default()
    };
    let opened = if plan.batch_wire {
        client.subscribe_batches(request).await.map(|response| {
            Box::pin(
                response
                    .into_inner()
                    .map(|event| event.and_then(batches_event)),
            ) as EventStream
        })
    } else {
        client
            .subscribe(request)
            .await
            .map(|response| Box::pin(response.into_inner()) as EventStream)
    };
    let mut stream = match opened {
        Ok(stream) => stream,
        Err(status) => {
            reader.errors.push(|| {
                format!(
                    "consumer {}: subscribe failed: {} ({:?})",
                    plan.id,
                    status.message(),
                    status.code()
                )
            });
            let _ = ready.send(());
            return reader.finish();
        }
    };
    reader.started = Instant::now();
    let _ = ready.send(());
    let mut targets_rx = plan.targets.clone();
    let mut finished_rx = plan.shared.finished.subscribe();
    let (mut targets_open, mut finished_open) = (true, true);
    let mut progress_at = Instant::now();
    loop {
        let targets = current(&targets_rx);
        if let Some(t) = &targets {
            let done = if grouped {
                plan.shared.all_delivered(t)
            } else {
                reader.caught_up(&plan.partitions, t)
            };
            if done {
                if grouped {
                    plan.shared.finished.send_replace(true);
                }
                break;
            }
        }
        if *finished_rx.borrow() {
            break;
        }
        let idle_deadline = progress_at + plan.idle_timeout;
        tokio::select! {
            biased;
            event = stream.next() => match event.transpose() {
                Ok(Some(response)) => match response.event {
                    Some(Event::Batch(batch)) => {
                        reader.batch(&plan, &batch.messages, targets.as_deref().map(Vec::as_slice));
                        for position in &batch.positions {
                            reader.position(&plan, position.partition, position.next_offset);
                        }
                        progress_at = Instant::now();
                    }
                    Some(Event::Assignment(assignment)) => {
                        if let Ok(mut generations) = plan.shared.generations.lock()
                            && let Some(slot) = generations.get_mut(plan.id as usize)
                        {
                            *slot = Some(assignment.generation);
                        }
                        progress_at = Instant::now();
                    }
                    // A reset moves past missing data; the merge reports the gap.
                    Some(Event::PositionReset(_) | Event::Positioned(_) | Event::TopicsChanged(_)) | None => {}
                },
                Ok(None) => {
                    reader.errors.push(|| format!("consumer {}: the broker ended the subscription", plan.id));
                    break;
                }
                Err(status) => {
                    reader.errors.push(|| {
                        format!(
                            "consumer {}: subscription failed: {} ({:?})",
                            plan.id,
                            status.message(),
                            status.code()
                        )
                    });
                    break;
                }
            },
            changed = targets_rx.changed(), if targets_open => {
                targets_open = changed.is_ok();
                progress_at = Instant::now();
            }
            changed = finished_rx.changed(), if finished_open => finished_open = changed.is_ok(),
            _ = tokio::time::sleep_until(idle_deadline.into()), if targets.is_some() => {
                reader.errors.push(|| {
                    format!(
                        "consumer {}: no message for {:?} while messages were still expected",
                        plan.id, plan.idle_timeout
                    )
                });
                // Group members stop together: one stalled member ends the run.
                plan.shared.finished.send_replace(true);
                break;
            }
        }
    }
    reader.finish()
}

/// Subscribe events, from either Subscribe or SubscribeBatches (decoded).
type EventStream = std::pin::Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

/// The messages of stored batches as a client decodes them (FORMAT.md): skipping what
/// the broker marked and what expired by its clock.
fn decode_batches(
    partition: u32,
    batches: &[StoredRecordBatch],
    now_ms: i64,
) -> Result<Vec<ConsumedMessage>, Status> {
    let mut messages = Vec::new();
    for batch in batches {
        for_each_delivered(&batch.batch, batch.skip_front, &batch.skip, now_ms, |r| {
            messages.push(ConsumedMessage {
                partition,
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                value: r.value,
                ..ConsumedMessage::default()
            })
        })
        .map_err(|e| Status::data_loss(format!("a stored batch does not decode: {e}")))?;
    }
    Ok(messages)
}

/// A SubscribeBatches event as the Subscribe event it stands for.
fn batches_event(event: SubscribeBatchesResponse) -> Result<SubscribeResponse, Status> {
    let event = match event.event {
        Some(BatchesEvent::Batches(batches)) => {
            let messages = decode_batches(batches.partition, &batches.batches, batches.now_ms)?;
            Some(Event::Batch(MessageBatch {
                messages,
                positions: batches.position.into_iter().collect(),
            }))
        }
        Some(BatchesEvent::PositionReset(reset)) => Some(Event::PositionReset(reset)),
        Some(BatchesEvent::Positioned(positioned)) => Some(Event::Positioned(positioned)),
        Some(BatchesEvent::Assignment(assignment)) => Some(Event::Assignment(assignment)),
        Some(BatchesEvent::TopicsChanged(changed)) => Some(Event::TopicsChanged(changed)),
        None => None,
    };
    Ok(SubscribeResponse { event })
}

/// FetchBatches, decoded into a FetchResponse.
async fn fetch_batches(
    client: &mut ConsumerClient<Conn>,
    request: FetchRequest,
) -> Result<FetchResponse, Status> {
    let partition = request.partition;
    let response = client.fetch_batches(request).await?.into_inner();
    Ok(FetchResponse {
        messages: decode_batches(partition, &response.batches, response.now_ms)?,
        next_offset: response.next_offset,
        log_start_offset: response.log_start_offset,
        end_offset: response.end_offset,
    })
}

/// Fetch mode: one long-poll loop per partition, all on this consumer's connection.
async fn run_fetch(
    plan: ConsumerPlan,
    client: ConsumerClient<Conn>,
    ready: oneshot::Sender<()>,
) -> ConsumerOutcome {
    let started = Instant::now();
    let _ = ready.send(());
    let mut loops = tokio::task::JoinSet::new();
    for &partition in &plan.partitions {
        loops.spawn(fetch_partition(plan.clone(), client.clone(), partition));
    }
    let mut reader = Reader::new(&plan);
    reader.started = started;
    while let Some(joined) = loops.join_next().await {
        match joined {
            Ok(part) => {
                reader.result.messages += part.result.messages;
                reader.result.bytes += part.result.bytes;
                reader.result.latency.add(&part.result.latency);
                reader.errors.extend(part.errors);
                reader.last_message = reader.last_message.max(part.last_message);
                reader.last_progress = reader.last_progress.max(part.last_progress);
                for (slot, check) in reader.checks.iter_mut().zip(part.checks) {
                    if check.is_some() {
                        *slot = check;
                    }
                }
            }
            Err(error) => reader
                .errors
                .push(|| format!("consumer {}: a fetch loop failed: {error}", plan.id)),
        }
    }
    reader.finish()
}

async fn fetch_partition(
    plan: ConsumerPlan,
    mut client: ConsumerClient<Conn>,
    partition: u32,
) -> Reader {
    let mut reader = Reader::new(&plan);
    let mut offset = plan.starts[partition as usize];
    let targets_rx = plan.targets.clone();
    let mut progress_at = Instant::now();
    let mut had_targets = false;
    loop {
        let targets = current(&targets_rx);
        if let Some(t) = &targets {
            if !had_targets {
                had_targets = true;
                progress_at = Instant::now();
            }
            if offset >= t[partition as usize] {
                break;
            }
            if progress_at.elapsed() > plan.idle_timeout {
                reader.errors.push(|| {
                    format!(
                        "consumer {} partition {partition}: no message for {:?} at offset {offset} while messages were still expected",
                        plan.id, plan.idle_timeout
                    )
                });
                break;
            }
        }
        let request = FetchRequest {
            topic: plan.topic.clone(),
            partition,
            offset,
            max_messages: plan.read_batch,
            max_bytes: READ_BYTES,
            max_wait_ms: FETCH_WAIT_MS,
            filter: plan.filter.clone(),
        };
        let fetched = if plan.batch_wire {
            fetch_batches(&mut client, request).await
        } else {
            client.fetch(request).await.map(tonic::Response::into_inner)
        };
        match fetched {
            Ok(response) => {
                // A filtered fetch may move on without a message.
                if !response.messages.is_empty() || response.next_offset > offset {
                    progress_at = Instant::now();
                }
                reader.batch(
                    &plan,
                    &response.messages,
                    targets.as_deref().map(Vec::as_slice),
                );
                if response.next_offset < offset {
                    let next = response.next_offset;
                    reader.errors.push(|| {
                        format!("consumer {} partition {partition}: fetch at {offset} answered next_offset {next}", plan.id)
                    });
                    break;
                }
                reader.position(&plan, partition, response.next_offset);
                offset = response.next_offset;
            }
            Err(status) => {
                reader.errors.push(|| {
                    format!(
                        "consumer {} partition {partition}: fetch at offset {offset} failed: {} ({:?})",
                        plan.id,
                        status.message(),
                        status.code()
                    )
                });
                break;
            }
        }
    }
    reader
}
