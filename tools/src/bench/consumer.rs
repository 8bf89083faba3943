//! A consumer: reads the bench topic by `Subscribe` (plain or as a group member) or
//! by unary `Fetch` long polls, validates every message (see `validate`) and, in an
//! e2e run, measures publish -> receive per message.
//!
//! With `--batch-wire` it reads whole stored batches through tidelog-client, as a
//! service would: a [`Subscription`] (SubscribeBatches), a [`GroupMember`] with
//! `--group`, [`Client::fetch`] (FetchBatches) with `--fetch`; the library decodes
//! them. The per-message forms (`Subscribe`, `Fetch`) measure the broker's
//! per-message API, which the library deliberately does not offer: they stay on the
//! generated `ConsumerClient`.
//!
//! It stops once it has read up to the target end offsets: known at the start for
//! `consume`, sent by the orchestrator once the producers are done for `e2e`.
//! Group members share their progress, since the broker decides who reads what.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidelog_client::{
    Client, Commit, Conn, Event as SubscriptionEvent, FetchOptions, GroupEvent, GroupMember,
    GroupOptions, Reset, StartAt, SubscribeOptions, Subscription, Views,
};
use tidelog_proto::v1::consumer_client::ConsumerClient;
use tidelog_proto::v1::{
    ConsumedMessage, FetchRequest, GroupMembership, ResetPolicy, StartPosition, SubscribeRequest,
    start_position, subscribe_response::Event,
};
use tokio::sync::{oneshot, watch};

use super::Clock;
use super::stats::{ActorResult, Role};
use super::validate::{Errors, Matches, PartitionCheck};

/// Bytes per subscribe batch or fetch asked for (the broker caps it at 8 MiB).
const READ_BYTES: u32 = 8 << 20;
/// Long-poll wait of a fetch at the head of a partition.
const FETCH_WAIT_MS: u64 = 200;
/// How often a group member's position is committed (so a partition handed over in
/// a rebalance continues where the previous owner stopped): by the broker for the
/// raw per-message member (`auto_commit_interval_ms`, what it sent), by
/// tidelog-client's `Commit::Auto` for the `--batch-wire` one (what it returned: one
/// CommitOffsets call an interval while messages flow, which the broker's own
/// auto-commit does not cost).
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

    /// Validates and counts a batch (see [`Reader::message`]).
    fn batch(
        &mut self,
        plan: &ConsumerPlan,
        messages: &[ConsumedMessage],
        targets: Option<&[u64]>,
    ) {
        let now_ns = plan.clock.now_ns();
        let mut counted = 0u64;
        for m in messages {
            counted +=
                u64::from(self.message(plan, m.partition, m.offset, &m.value, targets, now_ns));
        }
        self.counted(plan, counted);
    }

    /// Validates one message; true when it counts. Messages at or past the target are
    /// not the bench's (another writer) and are skipped. Call [`Reader::counted`] after
    /// a delivery's messages.
    fn message(
        &mut self,
        plan: &ConsumerPlan,
        partition: u32,
        offset: u64,
        value: &[u8],
        targets: Option<&[u64]>,
        now_ns: u64,
    ) -> bool {
        let p = partition as usize;
        if p >= self.checks.len() {
            self.errors.push(|| {
                format!(
                    "consumer {}: message from partition {partition}, which the topic does not have",
                    plan.id
                )
            });
            return false;
        }
        if targets.is_some_and(|t| offset >= t[p]) {
            return false;
        }
        let check = self.checks[p].get_or_insert_with(|| {
            Box::new(PartitionCheck::new(partition, plan.run_filter).filtered(plan.matches.clone()))
        });
        if let Some(header) = check.message(offset, value)
            && plan.latency
        {
            self.result
                .latency
                .record_us_n(now_ns.saturating_sub(header.sent_ns) / 1_000, 1);
        }
        self.positions[p] = self.positions[p].max(offset + 1);
        self.result.bytes += value.len() as u64;
        if let ReadMode::Group(_) = plan.mode {
            plan.shared.delivered[p].fetch_max(offset + 1, Ordering::AcqRel);
        }
        true
    }

    /// Counts `counted` messages of one delivery.
    fn counted(&mut self, plan: &ConsumerPlan, counted: u64) {
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
    match (plan.mode.clone(), plan.batch_wire) {
        (ReadMode::Fetch, _) => run_fetch(plan, client, ready).await,
        (ReadMode::Subscribe(start), true) => {
            run_subscription(plan, client, start_at(start), ready).await
        }
        (ReadMode::Group(group), true) => run_member(plan, client, group, ready).await,
        (_, false) => run_subscribe(plan, client.consumer(), ready).await,
    }
}

/// The library's start for the bench's (earliest for `consume`, latest for `e2e`).
fn start_at(start: StartPosition) -> StartAt {
    match start.position {
        Some(start_position::Position::Latest(_)) => StartAt::Latest,
        _ => StartAt::Earliest,
    }
}

/// `--batch-wire` without a group: a [`Subscription`] on the plan's partitions.
async fn run_subscription(
    plan: ConsumerPlan,
    client: Client,
    start: StartAt,
    ready: oneshot::Sender<()>,
) -> ConsumerOutcome {
    let mut reader = Reader::new(&plan);
    let options = SubscribeOptions {
        partitions: plan.partitions.clone(),
        start,
        reset: Reset::Earliest,
        filter: plan.filter.clone(),
        max_batch_messages: plan.read_batch,
        max_batch_bytes: READ_BYTES,
        // Read in place: the bench checks bytes, it keeps no message.
        views: true,
    };
    let mut subscription = match Subscription::open(&client, &plan.topic, options).await {
        Ok(subscription) => subscription,
        Err(error) => {
            reader
                .errors
                .push(|| format!("consumer {}: subscribe failed: {error}", plan.id));
            let _ = ready.send(());
            return reader.finish();
        }
    };
    reader.started = Instant::now();
    let _ = ready.send(());
    let mut targets_rx = plan.targets.clone();
    let mut targets_open = true;
    let mut progress_at = Instant::now();
    loop {
        let targets = current(&targets_rx);
        if let Some(t) = &targets
            && reader.caught_up(&plan.partitions, t)
        {
            break;
        }
        let idle_deadline = progress_at + plan.idle_timeout;
        tokio::select! {
            biased;
            event = subscription.next_event() => {
                let t = targets.as_deref().map(Vec::as_slice);
                let now_ns = plan.clock.now_ns();
                let (counted, failed) = one_delivery(
                    event,
                    || subscription.try_next_event(),
                    |event| subscription_event(&mut reader, &plan, event, t, now_ns),
                );
                reader.counted(&plan, counted);
                progress_at = Instant::now();
                if let Some(error) = failed {
                    reader
                        .errors
                        .push(|| format!("consumer {}: subscription failed: {error}", plan.id));
                    break;
                }
            }
            changed = targets_rx.changed(), if targets_open => {
                targets_open = changed.is_ok();
                progress_at = Instant::now();
            }
            _ = tokio::time::sleep_until(idle_deadline.into()), if targets.is_some() => {
                reader.errors.push(|| {
                    format!(
                        "consumer {}: no message for {:?} while messages were still expected",
                        plan.id, plan.idle_timeout
                    )
                });
                break;
            }
        }
    }
    reader.finish()
}

/// One delivery's events, without a select per message: `first` (what `next_event`
/// returned), then whatever else was already received (`more`), each handed to
/// `count` in place (by reference: a delivery's messages are read where they lie, not
/// moved once more). Returns the messages counted, and the error `first` was.
fn one_delivery<E>(
    first: Result<E, tidelog_client::Error>,
    mut more: impl FnMut() -> Option<E>,
    mut count: impl FnMut(&E) -> u64,
) -> (u64, Option<tidelog_client::Error>) {
    let (mut counted, failed) = match first {
        Ok(event) => (count(&event), None),
        Err(error) => (0, Some(error)),
    };
    while let Some(event) = more() {
        counted += count(&event);
    }
    (counted, failed)
}

/// Reads one subscription event; returns the messages it counts.
fn subscription_event(
    reader: &mut Reader,
    plan: &ConsumerPlan,
    event: &SubscriptionEvent,
    targets: Option<&[u64]>,
    now_ns: u64,
) -> u64 {
    match event {
        SubscriptionEvent::Messages(messages) => messages
            .iter()
            .map(|m| {
                u64::from(reader.message(plan, m.partition, m.offset, &m.value, targets, now_ns))
            })
            .sum(),
        SubscriptionEvent::Views(views) => read_views(reader, plan, views, targets, now_ns),
        SubscriptionEvent::Progress(progress) => {
            reader.position(plan, progress.partition, progress.next_offset);
            0
        }
        SubscriptionEvent::Disconnected { error } => {
            // The library resumes where it stopped; a run with an outage in it is not a
            // measurement to trust.
            reader.errors.push(|| {
                format!(
                    "consumer {}: the subscription lost the broker ({error}) and resumed",
                    plan.id
                )
            });
            0
        }
        // A reset moves past missing data; the merge reports the gap.
        _ => 0,
    }
}

/// Reads a delivery in place ([`Views`]); returns the messages it counts.
fn read_views(
    reader: &mut Reader,
    plan: &ConsumerPlan,
    views: &Views,
    targets: Option<&[u64]>,
    now_ns: u64,
) -> u64 {
    let mut counted = 0;
    let read = views.for_each(|m| {
        counted +=
            u64::from(reader.message(plan, views.partition(), m.offset, m.value, targets, now_ns));
    });
    if let Err(error) = read {
        reader
            .errors
            .push(|| format!("consumer {}: {error}", plan.id));
    }
    counted
}

/// `--batch-wire --group`: a [`GroupMember`] with [`Commit::Auto`] (the member
/// commits what it returned every interval; the per-message group consumer asks the
/// broker to commit what it sent). Members share their progress: the run ends when
/// every partition reached its target, whoever read it. A member is dropped at the
/// end, which commits and leaves the group in a spawned task.
async fn run_member(
    plan: ConsumerPlan,
    client: Client,
    group: String,
    ready: oneshot::Sender<()>,
) -> ConsumerOutcome {
    let mut reader = Reader::new(&plan);
    let options = GroupOptions {
        commit: Commit::Auto {
            interval: Duration::from_millis(AUTO_COMMIT_MS),
        },
        client_id: format!("tidelog-bench-{}", plan.id),
        reset: Reset::Earliest,
        filter: plan.filter.clone(),
        max_batch_messages: plan.read_batch,
        // Read in place: the bench checks bytes, it keeps no message.
        views: true,
        ..GroupOptions::new(group)
    };
    let mut member = match GroupMember::join(&client, &plan.topic, options).await {
        Ok(member) => member,
        Err(error) => {
            reader
                .errors
                .push(|| format!("consumer {}: joining the group failed: {error}", plan.id));
            let _ = ready.send(());
            return reader.finish();
        }
    };
    note_generation(&plan, member.assignment().1);
    reader.started = Instant::now();
    let _ = ready.send(());
    let mut targets_rx = plan.targets.clone();
    let mut finished_rx = plan.shared.finished.subscribe();
    let (mut targets_open, mut finished_open) = (true, true);
    let mut progress_at = Instant::now();
    loop {
        let targets = current(&targets_rx);
        if let Some(t) = &targets
            && plan.shared.all_delivered(t)
        {
            plan.shared.finished.send_replace(true);
            break;
        }
        if *finished_rx.borrow() {
            break;
        }
        let idle_deadline = progress_at + plan.idle_timeout;
        tokio::select! {
            biased;
            event = member.next_event() => {
                let t = targets.as_deref().map(Vec::as_slice);
                let now_ns = plan.clock.now_ns();
                let (counted, failed) = one_delivery(
                    event,
                    || member.try_next_event(),
                    |event| member_event(&mut reader, &plan, event, t, now_ns),
                );
                reader.counted(&plan, counted);
                progress_at = Instant::now();
                if let Some(error) = failed {
                    reader
                        .errors
                        .push(|| format!("consumer {}: the group member failed: {error}", plan.id));
                    break;
                }
            }
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

/// Reads one group event; returns the messages it counts.
fn member_event(
    reader: &mut Reader,
    plan: &ConsumerPlan,
    event: &GroupEvent,
    targets: Option<&[u64]>,
    now_ns: u64,
) -> u64 {
    match event {
        GroupEvent::Messages(messages) => messages
            .iter()
            .map(|m| {
                u64::from(reader.message(plan, m.partition, m.offset, &m.value, targets, now_ns))
            })
            .sum(),
        GroupEvent::Views(views) => read_views(reader, plan, views, targets, now_ns),
        GroupEvent::Progress(progress) => {
            reader.position(plan, progress.partition, progress.next_offset);
            0
        }
        GroupEvent::Assigned(change) => {
            note_generation(plan, change.generation);
            0
        }
        GroupEvent::Disconnected { error } => {
            reader.errors.push(|| {
                format!(
                    "consumer {}: the group member lost the broker ({error}) and rejoined",
                    plan.id
                )
            });
            0
        }
        _ => 0,
    }
}

/// Tells the orchestrator this consumer's latest group generation (it waits until
/// every member is at the same one before it starts the clock).
fn note_generation(plan: &ConsumerPlan, generation: u64) {
    if let Ok(mut generations) = plan.shared.generations.lock()
        && let Some(slot) = generations.get_mut(plan.id as usize)
    {
        *slot = Some(generation);
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
    let opened = client
        .subscribe(request)
        .await
        .map(tonic::Response::into_inner);
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
            event = stream.message() => match event {
                Ok(Some(response)) => match response.event {
                    Some(Event::Batch(batch)) => {
                        reader.batch(&plan, &batch.messages, targets.as_deref().map(Vec::as_slice));
                        for position in &batch.positions {
                            reader.position(&plan, position.partition, position.next_offset);
                        }
                        progress_at = Instant::now();
                    }
                    Some(Event::Assignment(assignment)) => {
                        note_generation(&plan, assignment.generation);
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

/// Fetch mode: one long-poll loop per partition, all on this consumer's connection.
async fn run_fetch(
    plan: ConsumerPlan,
    client: Client,
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

/// Fetched messages as the bench reads them: (offset, value) in order.
struct Fetched {
    messages: Vec<(u64, bytes::Bytes)>,
    next_offset: u64,
}

/// One fetch: `FetchBatches` through the library (`--batch-wire`), else `Fetch`.
async fn fetch(
    plan: &ConsumerPlan,
    client: &Client,
    consumer: &mut ConsumerClient<Conn>,
    partition: u32,
    offset: u64,
) -> Result<Fetched, String> {
    if plan.batch_wire {
        let options = FetchOptions {
            max_messages: plan.read_batch,
            max_bytes: READ_BYTES,
            max_wait: Duration::from_millis(FETCH_WAIT_MS),
            filter: plan.filter.clone(),
            topic_id: 0,
        };
        let fetched = client
            .fetch(&plan.topic, partition, offset, &options)
            .await
            .map_err(|error| error.to_string())?;
        return Ok(Fetched {
            messages: fetched
                .messages
                .into_iter()
                .map(|m| (m.offset, m.value))
                .collect(),
            next_offset: fetched.next_offset,
        });
    }
    let request = FetchRequest {
        topic: plan.topic.clone(),
        partition,
        offset,
        max_messages: plan.read_batch,
        max_bytes: READ_BYTES,
        max_wait_ms: FETCH_WAIT_MS,
        filter: plan.filter.clone(),
        topic_id: 0,
    };
    let response = consumer
        .fetch(request)
        .await
        .map_err(|status| format!("{} ({:?})", status.message(), status.code()))?
        .into_inner();
    Ok(Fetched {
        messages: response
            .messages
            .into_iter()
            .map(|m| (m.offset, m.value))
            .collect(),
        next_offset: response.next_offset,
    })
}

async fn fetch_partition(plan: ConsumerPlan, client: Client, partition: u32) -> Reader {
    let mut consumer = client.consumer();
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
        match fetch(&plan, &client, &mut consumer, partition, offset).await {
            Ok(response) => {
                // A filtered fetch may move on without a message.
                if !response.messages.is_empty() || response.next_offset > offset {
                    progress_at = Instant::now();
                }
                let t = targets.as_deref().map(Vec::as_slice);
                let now_ns = plan.clock.now_ns();
                let mut counted = 0u64;
                for (offset, value) in &response.messages {
                    counted +=
                        u64::from(reader.message(&plan, partition, *offset, value, t, now_ns));
                }
                reader.counted(&plan, counted);
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
            Err(error) => {
                reader.errors.push(|| {
                    format!(
                        "consumer {} partition {partition}: fetch at offset {offset} failed: {error}",
                        plan.id
                    )
                });
                break;
            }
        }
    }
    reader
}
