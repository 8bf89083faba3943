//! Creating, changing and looking at queues, and moving dead letters back.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::state::{
    Hold, PATTERN_QUEUE_NAME_BYTES_MAX, PatternQueue, Queue, QueueConfig, QueueOp,
    REASON_BYTES_MAX, pattern_child_name, pattern_child_parent, truncate_utf8,
    validate_dead_letter_topic, validate_new_queue_name,
};
use crate::batch::NewRecord;
use crate::error::{Error, Result};
use crate::limits::TOPIC_NAME_BYTES_MAX;
use crate::pattern::TopicPattern;
use crate::queue::QueueHost;
use crate::topic::Topic;

/// Headers a dead letter carries, besides the original message's own.
pub const DLQ_HEADER_QUEUE: &str = "tidelog-dlq-queue";
pub const DLQ_HEADER_TOPIC: &str = "tidelog-dlq-topic";
pub const DLQ_HEADER_PARTITION: &str = "tidelog-dlq-partition";
pub const DLQ_HEADER_OFFSET: &str = "tidelog-dlq-offset";
pub const DLQ_HEADER_ATTEMPTS: &str = "tidelog-dlq-attempts";
pub const DLQ_HEADER_FIRST_DELIVERY: &str = "tidelog-dlq-first-delivery-ms";
pub const DLQ_HEADER_LAST_DELIVERY: &str = "tidelog-dlq-last-delivery-ms";
pub const DLQ_HEADER_REASON: &str = "tidelog-dlq-reason";
/// Every header a dead letter adds; redrive removes them.
pub const DLQ_HEADERS: [&str; 8] = [
    DLQ_HEADER_QUEUE,
    DLQ_HEADER_TOPIC,
    DLQ_HEADER_PARTITION,
    DLQ_HEADER_OFFSET,
    DLQ_HEADER_ATTEMPTS,
    DLQ_HEADER_FIRST_DELIVERY,
    DLQ_HEADER_LAST_DELIVERY,
    DLQ_HEADER_REASON,
];

/// The most bytes the dead-letter headers add to a message (what `max_message_bytes`
/// counts: keys and values): their keys, two names of at most
/// [`TOPIC_NAME_BYTES_MAX`] (the queue's public name and the topic's), five decimal
/// numbers of at most 20 digits and a sign, and a reason of at most
/// [`REASON_BYTES_MAX`]. A dead letter may pass its topic's `max_message_bytes` by
/// this much, so any message its topic accepted can be dead-lettered (a topic with
/// the same limit would refuse it otherwise); [`dead_letter_record`] keeps to it.
pub const DLQ_HEADERS_BYTES_MAX: u64 = {
    let mut keys = 0;
    let mut i = 0;
    while i < DLQ_HEADERS.len() {
        keys += DLQ_HEADERS[i].len();
        i += 1;
    }
    (keys + 2 * TOPIC_NAME_BYTES_MAX + 5 * DLQ_NUMBER_BYTES_MAX + REASON_BYTES_MAX) as u64
};

/// Longest decimal number in a dead-letter header (an i64 with its sign).
const DLQ_NUMBER_BYTES_MAX: usize = 20;

const _: () = assert!(PATTERN_QUEUE_NAME_BYTES_MAX <= TOPIC_NAME_BYTES_MAX);
// README's dead-letter section and the .proto's QueueConfig.dead_letter_topic say
// this number.
const _: () = assert!(DLQ_HEADERS_BYTES_MAX == 1790);
const _: () = assert!(
    crate::limits::MESSAGE_BYTES_MAX + DLQ_HEADERS_BYTES_MAX < crate::limits::BATCH_BYTES_MAX
);

/// Dead letters moved back by one redrive call when the caller does not say.
pub const REDRIVE_DEFAULT_MESSAGES: u32 = 1000;

pub use super::state::StartAt;

/// A queue as it stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStatus {
    pub name: String,
    /// Its topic (empty for a queue on a topic pattern).
    pub topic: String,
    /// The topic pattern of a queue on one.
    pub pattern: Option<String>,
    pub config: QueueConfig,
    pub levels: u8,
    /// Messages stored and not taken yet, plus taken ones whose (re)delivery is due.
    pub ready: u64,
    /// Waiting for their deliver-at time.
    pub delayed: u64,
    /// Held by members.
    pub unacked: u64,
    /// Waiting for a redelivery that is not due yet.
    pub waiting: u64,
    /// Age of the oldest unsettled delivery, 0 when there is none.
    pub oldest_unacked_age_ms: u64,
    /// By topic and partition.
    pub partitions: Vec<PartitionStatus>,
}

/// One partition of a queue as DescribeQueue lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: u32,
    /// Every offset below it is settled.
    pub settled_below: u64,
    /// The partition's end offset (0 when unavailable: unknown).
    pub end_offset: u64,
    /// Why recovery refused to open the partition, when it did: its messages are
    /// neither counted nor delivered until it is repaired.
    pub unavailable: Option<String>,
}

fn not_found(name: &str) -> Error {
    Error::not_found(format!("queue {name:?}"))
}

/// Holds [`QueueHost::queue_changes`] for one change of queue definitions.
fn changing(store: &dyn QueueHost) -> std::sync::MutexGuard<'_, ()> {
    store
        .queue_changes()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Refuses to raise topic `topic`'s `priority_levels` to `levels` while queues read it
/// with fewer: a queue keeps the levels its topic had when it was created (its cursors,
/// one per level, are durable state), so it would deliver the new levels' messages as
/// its highest level, in offset order. As RabbitMQ's `x-max-priority`, which a queue
/// cannot change either. Lowering is allowed (see the .proto's AlterTopicConfig).
pub fn check_levels_raise(store: &dyn QueueHost, topic: &str, levels: u8) -> Result<()> {
    let readers: Vec<String> = store.queues().read(|q| {
        let mut names: Vec<String> = q
            .iter()
            .filter(|queue| queue.topic == topic && queue.levels < levels)
            .map(|queue| public_name(&queue.name).to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    });
    if readers.is_empty() {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "priority_levels of topic {topic:?} cannot be raised to {levels} while queues read it with fewer levels ({}): a queue keeps the levels its topic had when it was created. Delete those queues and create them again after the change (their unsettled messages are delivered again from where you start them), or create queues on a topic that has the levels from the start",
        readers.join(", ")
    )))
}

/// Per partition of `topic`, the cursor of each of `levels` where `start` puts it.
/// A partition recovery refused to open fails it ([`Error::PartitionUnavailable`]):
/// where its log starts and ends is unknown until it is repaired.
fn start_cursors(topic: &Topic, start: StartAt, levels: u8) -> Result<Vec<(u32, Vec<u64>)>> {
    let mut cursors = Vec::with_capacity(topic.partitions().len());
    for partition in topic.partitions() {
        let (log_start, end) = partition.bounds()?;
        let at = match start {
            StartAt::Earliest => log_start,
            StartAt::Latest => end,
            StartAt::TimestampMs(ms) => partition.offset_for_timestamp(ms)?.unwrap_or(end),
        };
        cursors.push((partition.id(), vec![at; usize::from(levels)]));
    }
    Ok(cursors)
}

/// The operation that creates queue `name` on `topic` as `start` puts it.
fn create_op(
    store: &dyn QueueHost,
    name: &str,
    topic: &Topic,
    start: StartAt,
    config: QueueConfig,
) -> Result<QueueOp> {
    let levels = topic.config().priority_levels.max(1);
    Ok(QueueOp::Create {
        name: name.to_string(),
        topic: topic.name().to_string(),
        config,
        levels,
        created_ms: store.clock().now_ms(),
        cursors: start_cursors(topic, start, levels)?,
    })
}

/// Refuses a queue on one topic whose dead-letter topic is that topic: each dead letter
/// would be a new message of the queue, so a poison message would come back for ever.
/// (A queue on a pattern never takes its dead-letter topic: [`takes_topic`].)
fn check_dead_letter_topic(topic: &str, config: &QueueConfig) -> Result<()> {
    if config.dead_letter_topic == topic {
        return Err(Error::invalid(format!(
            "dead_letter_topic {topic:?} is the queue's own topic, whose dead letters it \
             would deliver again for ever: name another topic (the default is {topic}.dlq)"
        )));
    }
    Ok(())
}

/// Creates queue `name` on `topic`, starting at `start` in every partition, with the
/// topic's priority levels.
pub fn create_queue(
    store: &dyn QueueHost,
    name: &str,
    topic: &str,
    start: StartAt,
    config: QueueConfig,
) -> Result<Queue> {
    validate_new_queue_name(name)?;
    config.validate()?;
    validate_dead_letter_topic(&config.dead_letter_topic)?;
    check_dead_letter_topic(topic, &config)?;
    let _changing = changing(store);
    let topic_handle = store.topic(topic)?;
    if store.queues().read(|q| q.exists(name)) {
        return Err(Error::AlreadyExists {
            what: format!("queue {name:?}"),
        });
    }
    let created =
        store.change_queues(vec![create_op(store, name, &topic_handle, start, config)?])?;
    if created.first() != Some(&1) {
        return Err(Error::AlreadyExists {
            what: format!("queue {name:?}"),
        });
    }
    store
        .queues()
        .read(|q| q.get(name).cloned())
        .ok_or_else(|| not_found(name))
}

/// Parses a pattern queue's topic pattern.
fn parse_pattern(text: &str) -> Result<TopicPattern> {
    TopicPattern::parse(text).map_err(|e| Error::invalid(format!("topic_pattern {e}")))
}

/// Whether pattern queue `queue` takes topic `name`: its pattern matches and it is
/// not the queue's own dead-letter topic (whose letters it would otherwise consume).
/// The one rule at create and at every [`sync_pattern_queue`] (so after an
/// [`alter_queue`] of the dead-letter topic too).
fn takes_topic(queue: &PatternQueue, pattern: &TopicPattern, name: &str) -> bool {
    pattern.matches(name) && name != queue.config.dead_letter_topic
}

/// Creates queue `name` on every topic `pattern` matches, now and later: the topics
/// matching now start at `start`, later ones as [`StartAt::for_later_topic`] says
/// (they are taken by [`sync_pattern_queue`]). Its dead letters go to one topic
/// (`config.dead_letter_topic`), which it never consumes itself.
pub fn create_pattern_queue(
    store: &dyn QueueHost,
    name: &str,
    pattern: &str,
    start: StartAt,
    config: QueueConfig,
) -> Result<PatternQueue> {
    validate_new_queue_name(name)?;
    if name.len() > PATTERN_QUEUE_NAME_BYTES_MAX {
        return Err(Error::invalid(format!(
            "queue name {name:?} is {} bytes; a queue on a topic pattern takes at most {PATTERN_QUEUE_NAME_BYTES_MAX}",
            name.len()
        )));
    }
    let parsed = parse_pattern(pattern)?;
    config.validate()?;
    validate_dead_letter_topic(&config.dead_letter_topic)?;
    let _changing = changing(store);
    if store.queues().read(|q| q.exists(name)) {
        return Err(Error::AlreadyExists {
            what: format!("queue {name:?}"),
        });
    }
    let mut queue = PatternQueue {
        name: name.to_string(),
        pattern: pattern.to_string(),
        config,
        start,
        created_ms: store.clock().now_ms(),
        next_child: 0,
    };
    // The definition and the queues of the topics matching now, in one append: a crash
    // leaves all of them or none.
    let mut ops = Vec::new();
    let mut topics = store.topics();
    topics.sort_by(|a, b| a.name().cmp(b.name()));
    for topic in topics {
        if takes_topic(&queue, &parsed, topic.name()) {
            let child = pattern_child_name(name, queue.next_child + ops.len() as u32);
            ops.push(create_op(
                store,
                &child,
                &topic,
                start,
                queue.config.clone(),
            )?);
        }
    }
    queue.next_child = ops.len() as u32;
    ops.insert(0, QueueOp::CreatePattern(queue.clone()));
    let outcomes = store.change_queues(ops)?;
    if outcomes.first() != Some(&1) {
        return Err(Error::AlreadyExists {
            what: format!("queue {name:?}"),
        });
    }
    store
        .queues()
        .read(|q| q.pattern(name).cloned())
        .ok_or_else(|| not_found(name))
}

/// What [`sync_pattern_queue`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatternSync {
    /// Topics that got a queue.
    pub added: Vec<String>,
    /// Per-topic queues deleted (their topic was gone, or is no longer taken: it
    /// became the queue's dead-letter topic).
    pub removed: Vec<String>,
}

/// Gives pattern queue `name` a queue on every topic it takes ([`takes_topic`]) that
/// has none yet (starting as [`StartAt::for_later_topic`] says), and deletes the
/// queues of topics that are gone or no longer taken (the queue's dead-letter topic
/// since an [`alter_queue`]), with their state and history, as a deleted topic's.
/// Cheap when nothing changed (no write).
pub fn sync_pattern_queue(store: &dyn QueueHost, name: &str) -> Result<PatternSync> {
    let _changing = changing(store);
    sync_held(store, name)
}

/// [`sync_pattern_queue`] with [`QueueHost::queue_changes`] held.
fn sync_held(store: &dyn QueueHost, name: &str) -> Result<PatternSync> {
    let Some(queue) = store.queues().read(|q| q.pattern(name).cloned()) else {
        return Err(not_found(name));
    };
    let pattern = parse_pattern(&queue.pattern)?;
    let children: BTreeMap<String, String> = store.queues().read(|q| {
        q.children(name)
            .map(|c| (c.topic.clone(), c.name.clone()))
            .collect()
    });
    let mut topics = store.topics();
    topics.sort_by(|a, b| a.name().cmp(b.name()));
    let mut sync = PatternSync::default();
    let mut ops = Vec::new();
    let mut created = Vec::new();
    let mut next = queue.next_child;
    for topic in &topics {
        if children.contains_key(topic.name()) || !takes_topic(&queue, &pattern, topic.name()) {
            continue;
        }
        let child = pattern_child_name(name, next);
        let op = match create_op(
            store,
            &child,
            topic,
            queue.start.for_later_topic(),
            queue.config.clone(),
        ) {
            Ok(op) => op,
            // A partition recovery refused to open: the topic is taken by the first
            // sync after its repair (its start is unknown until then); the others are
            // taken now.
            Err(error @ Error::PartitionUnavailable { .. }) => {
                tracing::warn!(queue = name, topic = topic.name(), %error, "a pattern queue does not take this topic until its partition is repaired");
                continue;
            }
            Err(error) => return Err(error),
        };
        next += 1;
        ops.push(op);
        created.push((topic.clone(), child));
    }
    let live = |topic: &str| topics.iter().any(|t| t.name() == topic);
    for (topic, child) in &children {
        if !live(topic) || !takes_topic(&queue, &pattern, topic) {
            ops.push(QueueOp::Delete {
                name: child.clone(),
            });
            sync.removed.push(child.clone());
        }
    }
    if ops.is_empty() {
        return Ok(sync);
    }
    // Gone since the definition was read: nothing to give it.
    if !store.queues().read(|q| {
        q.pattern(name)
            .is_some_and(|p| p.created_ms == queue.created_ms)
    }) {
        return Err(not_found(name));
    }
    let outcomes = store.change_queues(ops)?;
    // A create that changed nothing lost a race with another sync (which made the
    // topic's queue, or took the number): the next sync looks again.
    let created: Vec<(std::sync::Arc<Topic>, String)> = created
        .into_iter()
        .zip(&outcomes)
        .filter(|(_, outcome)| **outcome == 1)
        .map(|(created, _)| created)
        .collect();
    sync.added = created.iter().map(|(t, _)| t.name().to_string()).collect();
    // A topic deleted (or deleted and created again) while its queue was being made
    // may have missed the deletion's sweep of its queues: sweep it here.
    let mut stale = Vec::new();
    for (topic, child) in created {
        let same = store
            .topic(topic.name())
            .is_ok_and(|now| std::sync::Arc::ptr_eq(&now, &topic));
        if !same {
            stale.push(QueueOp::Delete {
                name: child.clone(),
            });
            sync.removed.push(child);
        }
    }
    if !stale.is_empty() {
        store.change_queues(stale)?;
    }
    Ok(sync)
}

/// The queue that holds message state for topic `topic` in queue `name`: the queue
/// itself when it is on `topic`, its queue for `topic` when it is on a pattern.
/// NOT_FOUND names the queue and topic when it holds none (a pattern queue's topic
/// that it has not taken yet); a queue on another topic is
/// [`Error::QueueOfOtherTopic`].
pub fn queue_for_topic(store: &dyn QueueHost, name: &str, topic: &str) -> Result<String> {
    store.queues().read(|q| {
        if let Some(queue) = user_queue(q, name) {
            if queue.topic == topic {
                return Ok(queue.name.clone());
            }
            return Err(Error::QueueOfOtherTopic {
                queue: name.to_string(),
                queue_topic: queue.topic.clone(),
                topic: topic.to_string(),
            });
        }
        if let Some(pattern) = q.pattern(name) {
            return q
                .children(name)
                .find(|c| c.topic == topic)
                .map(|c| c.name.clone())
                .ok_or_else(|| {
                    Error::not_found(format!(
                        "topic {topic:?} in queue {name:?} (its pattern {:?} has not taken that topic)",
                        pattern.pattern
                    ))
                });
        }
        Err(not_found(name))
    })
}

/// The queues serving queue `name`: (topic, queue name) of itself, or of each topic of
/// a pattern queue. NOT_FOUND for an unknown name (or a pattern queue's own queue).
pub fn serving_queues(store: &dyn QueueHost, name: &str) -> Result<Vec<(String, String)>> {
    store.queues().read(|q| {
        if let Some(queue) = user_queue(q, name) {
            return Ok(vec![(queue.topic.clone(), queue.name.clone())]);
        }
        if q.pattern(name).is_some() {
            return Ok(q
                .children(name)
                .map(|c| (c.topic.clone(), c.name.clone()))
                .collect());
        }
        Err(not_found(name))
    })
}

/// Queue `name` as a client may name it: not one of a pattern queue's own queues.
fn user_queue<'a>(queues: &'a super::Queues, name: &str) -> Option<&'a Queue> {
    if pattern_child_parent(name).is_some() {
        return None;
    }
    queues.get(name)
}

/// The name a client knows queue `name` by: its pattern queue's for the queue of one
/// of its topics, else its own.
pub fn public_name(name: &str) -> &str {
    pattern_child_parent(name).map_or(name, |(parent, _)| parent)
}

/// Changes queue `name`'s config with `change`, checked before it is stored; a pattern
/// queue's topics' queues change with it, and it then takes its topics again by the
/// rule of [`takes_topic`] ([`sync_pattern_queue`]): a topic that became its
/// dead-letter topic is dropped, one that stopped being it is taken again. A new
/// dead-letter topic follows [`validate_dead_letter_topic`]. Returns the new config.
pub fn alter_queue(
    store: &dyn QueueHost,
    name: &str,
    change: impl FnOnce(&mut QueueConfig),
) -> Result<QueueConfig> {
    let checked = alter_queue_checked(store, name, change, |_, _| {
        Ok::<(), std::convert::Infallible>(())
    })?;
    Ok(checked.unwrap_or_else(|never| match never {}))
}

/// [`alter_queue`] with `check(before, after)` of the change, made once the new config
/// is valid, before anything is stored, and while no other change of queue definitions
/// can come between (so what it approves is what is stored): its refusal comes back as
/// the inner `Err`, nothing changed. The broker authorizes a new dead-letter topic so.
pub fn alter_queue_checked<R>(
    store: &dyn QueueHost,
    name: &str,
    change: impl FnOnce(&mut QueueConfig),
    check: impl FnOnce(&QueueConfig, &QueueConfig) -> std::result::Result<(), R>,
) -> Result<std::result::Result<QueueConfig, R>> {
    let _changing = changing(store);
    let (mut config, names, topic) = store
        .queues()
        .read(|q| {
            if let Some(queue) = user_queue(q, name) {
                return Some((
                    queue.config.clone(),
                    vec![name.to_string()],
                    Some(queue.topic.clone()),
                ));
            }
            let pattern = q.pattern(name)?;
            let mut names = vec![name.to_string()];
            names.extend(q.children(name).map(|c| c.name.clone()));
            Some((pattern.config.clone(), names, None))
        })
        .ok_or_else(|| not_found(name))?;
    let before = config.clone();
    change(&mut config);
    config.validate()?;
    // Only a new one: a queue stored before the rule may be altered otherwise.
    if config.dead_letter_topic != before.dead_letter_topic {
        validate_dead_letter_topic(&config.dead_letter_topic)?;
    }
    if let Some(topic) = &topic {
        check_dead_letter_topic(topic, &config)?;
    }
    if let Err(refused) = check(&before, &config) {
        return Ok(Err(refused));
    }
    // A pattern queue and its topics' queues change together (one append).
    store.queues().append(
        names
            .into_iter()
            .map(|name| QueueOp::Alter {
                name,
                config: config.clone(),
            })
            .collect(),
    )?;
    // The change stands once appended. A crash or a failure before this sync leaves
    // it to the next one (a queue's runtime syncs at its start and every 500 ms, and
    // DescribeQueue syncs first).
    if topic.is_none()
        && let Err(error) = sync_held(store, name)
    {
        tracing::warn!(queue = name, %error, "a queue's topics were not synced after its change; the next sync takes them");
    }
    Ok(Ok(config))
}

/// Deletes queue `name` and its state (a pattern queue with its topics' queues).
pub fn delete_queue(store: &dyn QueueHost, name: &str) -> Result<()> {
    let _changing = changing(store);
    let names = store
        .queues()
        .read(|q| {
            if user_queue(q, name).is_some() {
                return Some(vec![name.to_string()]);
            }
            q.pattern(name)?;
            let mut names: Vec<String> = q.children(name).map(|c| c.name.clone()).collect();
            // The definition last: a crash in between cannot happen (one append), and
            // an apply order that deleted it first would leave nothing wrong either.
            names.push(name.to_string());
            Some(names)
        })
        .ok_or_else(|| not_found(name))?;
    // Once this append is durable the delete stands: the histories go with it and
    // never fail it (see `Store::change_queues`).
    let outcomes = store.change_queues(
        names
            .iter()
            .map(|name| QueueOp::Delete { name: name.clone() })
            .collect(),
    )?;
    if outcomes.last() == Some(&0) {
        return Err(not_found(name));
    }
    Ok(())
}

/// Settles everything queue `name` has not settled, up to each partition's end now.
/// Returns how many messages that settled: those held, waiting or delayed, and those
/// not taken yet (by the rule of the ready count, `QueuePartition::untaken`), all
/// still in the log: what retention deleted is settled too, and not counted.
///
/// The deliveries members held are settled with the rest, so they no longer count
/// towards `max_unacked_per_member`: an engine open on the queue counts them until
/// its owner calls [`super::QueueEngine::recount_held`] after this returns.
pub fn purge_queue(store: &dyn QueueHost, name: &str) -> Result<u64> {
    let mut purged = 0;
    for (_, queue) in serving_queues(store, name)? {
        purged += purge_one(store, &queue)?;
    }
    Ok(purged)
}

fn purge_one(store: &dyn QueueHost, name: &str) -> Result<u64> {
    let topic_name = store
        .queues()
        .read(|q| q.get(name).map(|q| q.topic.clone()))
        .ok_or_else(|| not_found(name))?;
    let topic = store.topic(&topic_name)?;
    // A partition recovery refused to open refuses the purge (its end is unknown).
    let bounds: Vec<(u32, u64, u64)> = topic
        .partitions()
        .iter()
        .map(|p| {
            let (start, end) = p.bounds()?;
            Ok((p.id(), start, end))
        })
        .collect::<Result<_>>()?;
    // The state machine counts what the purge settles as it applies it. What retention
    // deleted is no longer in the queue's view (DescribeQueue counts none of it, the
    // engine drops it: `QueuePartition::deleted_pending`), so the purge does not count
    // it: in the same append (one fsync, applied together), a purge up to each log's
    // start settles it uncounted first, as the engine following the log's start would.
    let starts: Vec<(u32, u64)> = bounds
        .iter()
        .filter(|&&(_, start, _)| start > 0)
        .map(|&(id, start, _)| (id, start))
        .collect();
    let purge = QueueOp::Purge {
        name: name.to_string(),
        ends: bounds.iter().map(|&(id, _, end)| (id, end)).collect(),
    };
    if starts.is_empty() {
        return store.queues().append_one(purge);
    }
    let outcomes = store.queues().append(vec![
        QueueOp::Purge {
            name: name.to_string(),
            ends: starts,
        },
        purge,
    ])?;
    outcomes
        .last()
        .copied()
        .ok_or_else(|| Error::invalid("a purge's append reported no outcome"))
}

/// The name of every queue (consuming `topic` if given, a pattern queue when it has
/// taken `topic`), sorted.
pub fn list_queues(store: &dyn QueueHost, topic: Option<&str>) -> Vec<String> {
    store.queues().read(|q| {
        let mut names: Vec<String> = q
            .iter()
            .filter(|q| topic.is_none_or(|t| q.topic == t))
            .map(|q| public_name(&q.name).to_string())
            .collect();
        if topic.is_none() {
            names.extend(q.patterns().map(|p| p.name.clone()));
        }
        names.sort();
        names.dedup();
        names
    })
}

/// The queues (as clients name them, sorted) holding a lease: a message delivered
/// and not settled. Read at a broker's start, every such lease is from before it
/// (see [`crate::queue::engine`]) and is given up once the queue's engine runs.
pub fn queues_with_leases(store: &dyn QueueHost) -> Vec<String> {
    store.queues().read(|q| {
        let mut names: Vec<String> = q
            .iter()
            .filter(|queue| {
                queue.partitions.values().any(|part| {
                    part.pending
                        .iter_undelayed()
                        .any(|(_, pending)| matches!(pending.hold, Hold::Leased { .. }))
                })
            })
            .map(|queue| public_name(&queue.name).to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    })
}

/// Counts for queue `name` at `now_ms` (a pattern queue's summed over its topics).
pub fn queue_status(store: &dyn QueueHost, name: &str, now_ms: i64) -> Result<QueueStatus> {
    queue_status_of(store, name, now_ms, &|_| true)
}

/// [`queue_status`] with only the topics `counted` allows: their partitions are listed
/// and their counts summed, the others' left out (the server shows a pattern queue so
/// to a caller who may not describe some of its topics). A queue on one topic whose
/// topic is not counted lists no partition and counts nothing.
pub fn queue_status_of(
    store: &dyn QueueHost,
    name: &str,
    now_ms: i64,
    counted: &dyn Fn(&str) -> bool,
) -> Result<QueueStatus> {
    let (topic, pattern, config, levels) = store
        .queues()
        .read(|q| {
            if let Some(queue) = user_queue(q, name) {
                return Some((
                    queue.topic.clone(),
                    None,
                    queue.config.clone(),
                    queue.levels,
                ));
            }
            let pattern = q.pattern(name)?;
            let levels = q.children(name).map(|c| c.levels).max().unwrap_or(1);
            Some((
                String::new(),
                Some(pattern.pattern.clone()),
                pattern.config.clone(),
                levels,
            ))
        })
        .ok_or_else(|| not_found(name))?;
    let mut status = QueueStatus {
        name: name.to_string(),
        topic,
        pattern,
        config,
        levels,
        ready: 0,
        delayed: 0,
        unacked: 0,
        waiting: 0,
        oldest_unacked_age_ms: 0,
        partitions: Vec::new(),
    };
    let mut oldest_delivery = i64::MAX;
    for (topic, child) in serving_queues(store, name)? {
        if !counted(&topic) {
            continue;
        }
        // A topic's queue deleted since the listing counts nothing.
        let Some(queue) = store.queues().read(|q| q.get(&child).cloned()) else {
            continue;
        };
        add_status(store, &queue, now_ms, &mut status, &mut oldest_delivery);
    }
    status.partitions.sort();
    if oldest_delivery != i64::MAX {
        status.oldest_unacked_age_ms = now_ms.saturating_sub(oldest_delivery).max(0) as u64;
    }
    Ok(status)
}

/// Adds the counts of `queue` (on one topic) to `status`.
fn add_status(
    store: &dyn QueueHost,
    queue: &Queue,
    now_ms: i64,
    status: &mut QueueStatus,
    oldest_delivery: &mut i64,
) {
    // A partition recovery refused to open counts nothing (its log is unknown) and is
    // listed as unavailable.
    let bounds: BTreeMap<u32, std::result::Result<(u64, u64), String>> =
        match store.topic(&queue.topic) {
            Ok(topic) => topic
                .partitions()
                .iter()
                .map(|p| (p.id(), p.bounds().map_err(|e| e.to_string())))
                .collect(),
            Err(_) => BTreeMap::new(),
        };
    for (&id, bounds) in &bounds {
        let part = queue.partitions.get(&id);
        let settled_below = part.map_or(0, |p| p.settled_below());
        let &(start, end) = match bounds {
            Ok(bounds) => bounds,
            Err(reason) => {
                status.partitions.push(PartitionStatus {
                    topic: queue.topic.clone(),
                    partition: id,
                    settled_below,
                    end_offset: 0,
                    unavailable: Some(reason.clone()),
                });
                continue;
            }
        };
        let counts = partition_counts(part, start, end, now_ms);
        status.ready += counts.ready;
        status.delayed += counts.delayed;
        status.unacked += counts.unacked;
        status.waiting += counts.waiting;
        if let Some(at) = counts.oldest_delivery_ms {
            *oldest_delivery = (*oldest_delivery).min(at);
        }
        status.partitions.push(PartitionStatus {
            topic: queue.topic.clone(),
            partition: id,
            settled_below,
            end_offset: end,
            unavailable: None,
        });
    }
}

/// A queue's messages on one partition now, by the one rule of what is ready, which
/// DescribeQueue's counts, the backpressure caps and the overflow policy all use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionCounts {
    /// Stored, not settled, not held by a member, not waiting for a redelivery nor for
    /// its deliver-at time: not taken yet, or taken and due now. (A message not taken
    /// yet counts as ready even if its deliver-at time is ahead: only taking it reads
    /// that time.)
    pub ready: u64,
    /// Taken, waiting for their deliver-at time.
    pub delayed: u64,
    /// Held by members.
    pub unacked: u64,
    /// Waiting for a redelivery that is not due yet.
    pub waiting: u64,
    /// The offset from which nothing is taken yet (the slowest level's cursor, or the
    /// log's start if retention passed it).
    pub untaken_from: u64,
    /// Messages not taken yet (from `untaken_from` to the end, less those faster
    /// priority levels took there): part of `ready`.
    pub untaken: u64,
    /// The earliest last delivery of a message held.
    pub oldest_delivery_ms: Option<i64>,
}

/// The counts of a queue's partition state `part` (None: nothing taken yet) on a
/// partition whose log holds `start..end`, at `now_ms`. A pending message that
/// retention deleted (below `start`) counts nowhere, even one a member holds: the queue
/// drops it (`QueuePartition::deleted_pending`).
pub fn partition_counts(
    part: Option<&super::state::QueuePartition>,
    start: u64,
    end: u64,
    now_ms: i64,
) -> PartitionCounts {
    // Not taken yet: from the slowest cursor to the end, less what faster levels took
    // there (QueuePartition::untaken, the one rule).
    let (untaken_from, untaken) = match part {
        Some(part) => part.untaken(start, end),
        None => {
            let from = start.min(end);
            (from, end - from)
        }
    };
    let mut counts = PartitionCounts {
        untaken_from,
        untaken,
        ready: untaken,
        ..PartitionCounts::default()
    };
    if let Some(part) = part {
        // Those below `start` retention deleted: gone, whatever their hold
        // (`QueuePartition::deleted_pending`), so they count nowhere.
        for (_, pending) in part.pending.range(start..) {
            match &pending.hold {
                Hold::Leased { .. } => {
                    counts.unacked += 1;
                    counts.oldest_delivery_ms = Some(
                        counts
                            .oldest_delivery_ms
                            .map_or(pending.last_delivery_ms, |at| {
                                at.min(pending.last_delivery_ms)
                            }),
                    );
                }
                Hold::Waiting { due_ms } if *due_ms <= now_ms => counts.ready += 1,
                Hold::Waiting { .. } => counts.waiting += 1,
                Hold::Delayed { due_ms } if *due_ms <= now_ms => counts.ready += 1,
                Hold::Delayed { .. } => counts.delayed += 1,
            }
        }
    }
    counts
}

/// A queue over its topic's backpressure caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverCap {
    pub queue: String,
    pub ready_messages: u64,
    pub ready_bytes: u64,
    /// Which cap, e.g. `queue_max_ready_messages 1000`.
    pub cap: String,
}

/// The ready backlog of queue `name` (a queue on one topic), on its `topic`, at
/// `now_ms`: its ready messages ([`PartitionCounts::ready`], the one rule both caps
/// and DescribeQueue use) and, about, their bytes of log (the bytes of the span not
/// taken yet, times the share of its messages not taken: a faster priority level's
/// messages taken there are assumed the average size; a message taken and due again
/// is not counted in bytes). None for a queue that
/// is gone. Counted under the state's read lock, without copying the pending.
pub fn backlog(
    store: &dyn QueueHost,
    name: &str,
    topic: &Topic,
    now_ms: i64,
) -> Result<Option<(u64, u64)>> {
    let logs: Vec<(u32, u64, u64)> = topic
        .partitions()
        .iter()
        // A partition recovery refused to open is left out: its log is unknown.
        .filter_map(|p| {
            let (log_start, end) = p.bounds().ok()?;
            Some((p.id(), log_start, end))
        })
        .collect();
    let counted = store.queues().read(|q| {
        let queue = q.get(name)?;
        let mut ready = 0;
        let mut untaken = Vec::with_capacity(logs.len());
        for &(id, start, end) in &logs {
            let counts = partition_counts(queue.partitions.get(&id), start, end, now_ms);
            ready += counts.ready;
            untaken.push((id, counts.untaken_from, end, counts.untaken));
        }
        Some((ready, untaken))
    });
    let Some((messages, untaken)) = counted else {
        return Ok(None);
    };
    let mut bytes = 0;
    for (id, from, end, count) in untaken {
        // The span's bytes, in the share of its messages not taken yet (those faster
        // levels took are spread over it like the rest, about).
        let span = topic.partition(id)?.bytes_from(from)?;
        let messages = end.saturating_sub(from);
        if messages > 0 {
            bytes +=
                (u128::from(span) * u128::from(count.min(messages)) / u128::from(messages)) as u64;
        }
    }
    Ok(Some((messages, bytes)))
}

/// Backpressure: refuses (`Error::QueueFull`) a publish of `incoming` ready messages
/// of `incoming_bytes` (those due at once: a delayed message waits, and adds nothing
/// ready now) that would put a queue of `topic` over the topic's caps on ready
/// messages ([`over_caps`]) when the topic's overflow policy is to reject new messages.
/// A publish that adds no ready message is never refused. The one rule for every
/// publish form.
pub fn admit(
    store: &dyn QueueHost,
    topic: &Topic,
    incoming: u64,
    incoming_bytes: u64,
) -> Result<()> {
    if topic.config().queue_overflow != crate::QueueOverflow::Reject || incoming == 0 {
        return Ok(());
    }
    match over_caps(store, topic, incoming, incoming_bytes)? {
        None => Ok(()),
        Some(over) => Err(crate::Error::QueueFull {
            queue: over.queue,
            topic: topic.name().to_string(),
            ready_messages: over.ready_messages,
            ready_bytes: over.ready_bytes,
            cap: over.cap,
        }),
    }
}

/// The first queue of `topic` that `incoming` more messages of `incoming_bytes` would
/// put over the topic's caps on ready messages ([`backlog`]), if any (None at once
/// when the topic has no caps).
pub fn over_caps(
    store: &dyn QueueHost,
    topic: &Topic,
    incoming: u64,
    incoming_bytes: u64,
) -> Result<Option<OverCap>> {
    let config = topic.config();
    if !config.has_queue_caps() {
        return Ok(None);
    }
    let now_ms = store.clock().now_ms();
    let names: Vec<String> = store.queues().read(|q| {
        q.iter()
            .filter(|q| q.topic == topic.name())
            .map(|q| q.name.clone())
            .collect()
    });
    for name in names {
        let Some((messages, bytes)) = backlog(store, &name, topic, now_ms)? else {
            continue;
        };
        let cap = match (
            config.queue_max_ready_messages,
            config.queue_max_ready_bytes,
        ) {
            (Some(max), _) if messages + incoming > max => {
                format!("queue_max_ready_messages {max}")
            }
            (_, Some(max)) if bytes + incoming_bytes > max => {
                format!("queue_max_ready_bytes {max}")
            }
            _ => continue,
        };
        return Ok(Some(OverCap {
            queue: public_name(&name).to_string(),
            ready_messages: messages,
            ready_bytes: bytes,
            cap,
        }));
    }
    Ok(None)
}

/// The consumer group whose committed offsets are a queue's redrive position in its
/// dead-letter topic.
pub fn redrive_group(queue: &str) -> String {
    format!("__rd.{queue}")
}

/// Publishes up to `max_messages` of queue `name`'s dead letters back to its topic
/// (their original partition, without the dead-letter headers), then records how far
/// it got. Redrives run one at a time (two at once both published every letter). A
/// crash between the publish and the commit publishes those letters again on the next
/// call (at-least-once: once more for each such crash). Returns (moved, dead letters of
/// any queue still after the position).
pub fn redrive_queue(store: &dyn QueueHost, name: &str, max_messages: u32) -> Result<(u64, u64)> {
    let checked = redrive_queue_checked(store, name, max_messages, |_| {
        Ok::<(), std::convert::Infallible>(())
    })?;
    Ok(checked.unwrap_or_else(|never| match never {}))
}

/// The topics a redrive may write letters back to, for [`redrive_queue_checked`]'s
/// check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedriveTargets {
    /// The queue's topic, or each topic a pattern queue has taken (that exists).
    pub topics: Vec<String>,
    /// Whether the queue is on a topic pattern.
    pub pattern: bool,
}

/// [`redrive_queue`] with `check` of every topic it may write letters back to, made
/// before it reads or writes anything: its refusal comes back as the inner `Err`,
/// nothing moved. Letters go to those topics only, so what it approves is all the
/// redrive writes. The broker authorizes publishing to them so.
pub fn redrive_queue_checked<R>(
    store: &dyn QueueHost,
    name: &str,
    max_messages: u32,
    check: impl FnOnce(&RedriveTargets) -> std::result::Result<(), R>,
) -> Result<std::result::Result<(u64, u64), R>> {
    let _one_at_a_time = store.redrives().lock().unwrap_or_else(|e| e.into_inner());
    let config = store
        .queues()
        .read(|q| {
            user_queue(q, name)
                .map(|q| q.config.clone())
                .or_else(|| q.pattern(name).map(|p| p.config.clone()))
        })
        .ok_or_else(|| not_found(name))?;
    // The topics its letters may go back to: its own, or each its pattern has taken (a
    // pattern queue's letter goes back to the topic it names; one whose topic is gone
    // is passed over).
    let mut targets: BTreeMap<String, std::sync::Arc<Topic>> = BTreeMap::new();
    for (topic, _) in serving_queues(store, name)? {
        if let Ok(handle) = store.topic(&topic) {
            targets.insert(topic, handle);
        }
    }
    let single = store.queues().read(|q| user_queue(q, name).is_some());
    if let Err(refused) = check(&RedriveTargets {
        topics: targets.keys().cloned().collect(),
        pattern: !single,
    }) {
        return Ok(Err(refused));
    }
    let Ok(dlq) = store.topic(&config.dead_letter_topic) else {
        return Ok(Ok((0, 0)));
    };
    let group = redrive_group(name);
    let max_messages = if max_messages == 0 {
        REDRIVE_DEFAULT_MESSAGES
    } else {
        max_messages
    };
    let mut moved = 0u64;
    let mut remaining = 0u64;
    let mut commits = Vec::new();
    // A dead-letter partition recovery refused to open refuses the redrive before
    // anything moves (its letters and the group's position there are unknown).
    for partition in dlq.partitions() {
        partition.bounds()?;
    }
    for partition in dlq.partitions() {
        let (log_start, end) = partition.bounds()?;
        let committed = store
            .offsets()
            .fetch(&group, dlq.name(), partition.id())
            .map(|c| c.offset);
        let mut position = committed.unwrap_or(0).max(log_start).min(end);
        let mut batches: BTreeMap<(String, u32), Vec<NewRecord>> = BTreeMap::new();
        while moved < u64::from(max_messages) && position < partition.end_offset()? {
            let want = (u64::from(max_messages) - moved).min(1000) as u32;
            let read = partition.read(position, want, 4 << 20)?;
            let mut next = read.next_offset;
            for record in read.records {
                if moved >= u64::from(max_messages) {
                    next = record.offset;
                    break;
                }
                let header = |key: &str| {
                    record
                        .headers
                        .iter()
                        .find(|h| h.key == key)
                        .map(|h| h.value.clone())
                };
                if header(DLQ_HEADER_QUEUE).as_deref() != Some(name.as_bytes()) {
                    continue;
                }
                let target = if single {
                    targets.values().next()
                } else {
                    header(DLQ_HEADER_TOPIC)
                        .and_then(|t| targets.get(std::str::from_utf8(&t).ok()?))
                };
                let Some(target) = target else {
                    continue;
                };
                let source_partition = header(DLQ_HEADER_PARTITION)
                    .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u32>().ok())
                    .filter(|p| (*p as usize) < target.partitions().len())
                    .unwrap_or(0);
                batches
                    .entry((target.name().to_string(), source_partition))
                    .or_default()
                    .push(NewRecord {
                        key: record.key.clone(),
                        value: record.value.clone(),
                        headers: record
                            .headers
                            .iter()
                            .filter(|h| !DLQ_HEADERS.contains(&h.key.as_str()))
                            .cloned()
                            .collect(),
                        id: record.id.clone(),
                        priority: record
                            .priority
                            .min(target.config().priority_levels.saturating_sub(1)),
                        ..NewRecord::default()
                    });
                moved += 1;
            }
            position = next;
            if read.next_offset == read.end_offset {
                break;
            }
        }
        for ((topic, source), records) in batches {
            let target = &targets[&topic];
            for chunk in records.chunks(1000) {
                target.partition(source)?.append_durable(chunk)?;
            }
        }
        remaining += partition.end_offset()?.saturating_sub(position);
        if committed != Some(position) {
            commits.push((dlq.clone(), partition.id(), position, String::new()));
        }
    }
    store.commit_offsets(&group, &commits)?;
    Ok(Ok((moved, remaining)))
}

/// The record a dead letter is: the message as it was, plus headers that say where it
/// came from and why it was given up.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site; the fields of a dead letter"
)]
pub(crate) fn dead_letter_record(
    queue: &str,
    topic: &str,
    partition: u32,
    record: &crate::batch::Record,
    attempts: u32,
    first_delivery_ms: i64,
    last_delivery_ms: i64,
    reason: &str,
) -> NewRecord {
    // The message's own headers with those names give way to the broker's, so the
    // bytes added stay within DLQ_HEADERS_BYTES_MAX.
    let mut headers: Vec<_> = record
        .headers
        .iter()
        .filter(|h| !DLQ_HEADERS.contains(&h.key.as_str()))
        .cloned()
        .collect();
    let mut add = |key: &str, value: String| {
        headers.push(crate::batch::Header {
            key: key.to_string(),
            value: Bytes::from(value),
        })
    };
    add(
        DLQ_HEADER_QUEUE,
        truncate_utf8(queue, TOPIC_NAME_BYTES_MAX).to_string(),
    );
    add(
        DLQ_HEADER_TOPIC,
        truncate_utf8(topic, TOPIC_NAME_BYTES_MAX).to_string(),
    );
    add(DLQ_HEADER_PARTITION, partition.to_string());
    add(DLQ_HEADER_OFFSET, record.offset.to_string());
    add(DLQ_HEADER_ATTEMPTS, attempts.to_string());
    add(DLQ_HEADER_FIRST_DELIVERY, first_delivery_ms.to_string());
    add(DLQ_HEADER_LAST_DELIVERY, last_delivery_ms.to_string());
    add(
        DLQ_HEADER_REASON,
        truncate_utf8(reason, REASON_BYTES_MAX).to_string(),
    );
    NewRecord {
        key: record.key.clone(),
        value: record.value.clone(),
        headers,
        id: record.id.clone(),
        ..NewRecord::default()
    }
}
