//! Creating, changing and looking at queues, and moving dead letters back.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::state::{Hold, Queue, QueueConfig, QueueOp, validate_queue_name};
use crate::batch::NewRecord;
use crate::error::{Error, Result};
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

/// Dead letters moved back by one redrive call when the caller does not say.
pub const REDRIVE_DEFAULT_MESSAGES: u32 = 1000;

/// Where a new queue starts in every partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
    /// The first message at or after this time (the end where there is none).
    TimestampMs(i64),
}

/// A queue as it stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStatus {
    pub name: String,
    pub topic: String,
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
    /// (partition, settled below, end offset).
    pub partitions: Vec<(u32, u64, u64)>,
}

fn not_found(name: &str) -> Error {
    Error::not_found(format!("queue {name:?}"))
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
    validate_queue_name(name)?;
    config.validate()?;
    let topic_handle = store.topic(topic)?;
    if store.queues().read(|q| q.get(name).is_some()) {
        return Err(Error::AlreadyExists {
            what: format!("queue {name:?}"),
        });
    }
    let levels = topic_handle.config().priority_levels.max(1);
    let mut cursors = Vec::with_capacity(topic_handle.partitions().len());
    for partition in topic_handle.partitions() {
        let at = match start {
            StartAt::Earliest => partition.log_start(),
            StartAt::Latest => partition.end_offset(),
            StartAt::TimestampMs(ms) => partition
                .offset_for_timestamp(ms)?
                .unwrap_or_else(|| partition.end_offset()),
        };
        cursors.push((partition.id(), vec![at; usize::from(levels)]));
    }
    let created = store.queues().append_one(QueueOp::Create {
        name: name.to_string(),
        topic: topic.to_string(),
        config,
        levels,
        created_ms: store.clock().now_ms(),
        cursors,
    })?;
    if created == 0 {
        return Err(Error::AlreadyExists {
            what: format!("queue {name:?}"),
        });
    }
    store
        .queues()
        .read(|q| q.get(name).cloned())
        .ok_or_else(|| not_found(name))
}

/// Changes queue `name`'s config with `change`, checked before it is stored.
pub fn alter_queue(
    store: &dyn QueueHost,
    name: &str,
    change: impl FnOnce(&mut QueueConfig),
) -> Result<Queue> {
    let mut config = store
        .queues()
        .read(|q| q.get(name).map(|q| q.config.clone()))
        .ok_or_else(|| not_found(name))?;
    change(&mut config);
    config.validate()?;
    store.queues().append_one(QueueOp::Alter {
        name: name.to_string(),
        config,
    })?;
    store
        .queues()
        .read(|q| q.get(name).cloned())
        .ok_or_else(|| not_found(name))
}

/// Deletes queue `name` and its state.
pub fn delete_queue(store: &dyn QueueHost, name: &str) -> Result<()> {
    match store.queues().append_one(QueueOp::Delete {
        name: name.to_string(),
    })? {
        0 => Err(not_found(name)),
        _ => store.remove_queue_history(name),
    }
}

/// Settles everything queue `name` has not settled, up to each partition's end now.
/// Returns about how many messages that settled (the unsettled span of each partition).
pub fn purge_queue(store: &dyn QueueHost, name: &str) -> Result<u64> {
    let queue = store
        .queues()
        .read(|q| q.get(name).cloned())
        .ok_or_else(|| not_found(name))?;
    let topic = store.topic(&queue.topic)?;
    let mut ends = Vec::new();
    let mut purged = 0;
    for partition in topic.partitions() {
        let end = partition.end_offset();
        let settled_below = queue
            .partitions
            .get(&partition.id())
            .map_or(0, |p| p.settled_below());
        purged += end.saturating_sub(settled_below);
        ends.push((partition.id(), end));
    }
    store.queues().append_one(QueueOp::Purge {
        name: name.to_string(),
        ends,
    })?;
    Ok(purged)
}

/// Every queue (of `topic` if given), by name.
pub fn list_queues(store: &dyn QueueHost, topic: Option<&str>) -> Vec<Queue> {
    store.queues().read(|q| {
        q.iter()
            .filter(|q| topic.is_none_or(|t| q.topic == t))
            .cloned()
            .collect()
    })
}

/// Counts for queue `name` at `now_ms`.
pub fn queue_status(store: &dyn QueueHost, name: &str, now_ms: i64) -> Result<QueueStatus> {
    let queue = store
        .queues()
        .read(|q| q.get(name).cloned())
        .ok_or_else(|| not_found(name))?;
    let ends: BTreeMap<u32, u64> = match store.topic(&queue.topic) {
        Ok(topic) => topic
            .partitions()
            .iter()
            .map(|p| (p.id(), p.end_offset()))
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    let mut status = QueueStatus {
        name: queue.name.clone(),
        topic: queue.topic.clone(),
        config: queue.config.clone(),
        levels: queue.levels,
        ready: 0,
        delayed: 0,
        unacked: 0,
        waiting: 0,
        oldest_unacked_age_ms: 0,
        partitions: Vec::new(),
    };
    let mut oldest_delivery = i64::MAX;
    for (&id, &end) in &ends {
        let part = queue.partitions.get(&id);
        let lowest_cursor = part.map_or(0, |p| p.cursors.iter().copied().min().unwrap_or(0));
        let mut pending_ahead = 0;
        if let Some(part) = part {
            for (offset, pending) in part.pending.iter() {
                if offset >= lowest_cursor {
                    pending_ahead += 1;
                }
                match &pending.hold {
                    Hold::Leased { .. } => {
                        status.unacked += 1;
                        oldest_delivery = oldest_delivery.min(pending.last_delivery_ms);
                    }
                    Hold::Waiting { due_ms } if *due_ms <= now_ms => status.ready += 1,
                    Hold::Waiting { .. } => status.waiting += 1,
                    Hold::Delayed { due_ms } if *due_ms <= now_ms => status.ready += 1,
                    Hold::Delayed { .. } => status.delayed += 1,
                }
            }
        }
        // Not taken yet (exact with one priority level; with several, messages that
        // a faster level already took are left out as far as they are pending).
        status.ready += end
            .saturating_sub(lowest_cursor)
            .saturating_sub(pending_ahead);
        let settled_below = part.map_or(0, |p| p.settled_below());
        status.partitions.push((id, settled_below, end));
    }
    if oldest_delivery != i64::MAX {
        status.oldest_unacked_age_ms = now_ms.saturating_sub(oldest_delivery).max(0) as u64;
    }
    Ok(status)
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

/// The ready backlog of `queue` on `topic`: messages (and bytes of log, about) from
/// where each partition is settled to its end.
pub fn backlog(queue: &Queue, topic: &Topic) -> Result<(u64, u64)> {
    let mut messages = 0;
    let mut bytes = 0;
    for partition in topic.partitions() {
        let from = queue
            .partitions
            .get(&partition.id())
            .map_or(0, |p| p.settled_below())
            .max(partition.log_start());
        messages += partition.end_offset().saturating_sub(from);
        bytes += partition.bytes_from(from)?;
    }
    Ok((messages, bytes))
}

/// The first queue of `topic` that `incoming` more messages of `incoming_bytes` would
/// put over the topic's caps, if any (None at once when the topic has no caps).
pub fn over_caps(
    store: &dyn QueueHost,
    topic: &Topic,
    incoming: u64,
    incoming_bytes: u64,
) -> Result<Option<OverCap>> {
    let config = topic.config();
    if config.queue_max_ready_messages.is_none() && config.queue_max_ready_bytes.is_none() {
        return Ok(None);
    }
    let queues: Vec<Queue> = store.queues().read(|q| {
        q.iter()
            .filter(|q| q.topic == topic.name())
            .cloned()
            .collect()
    });
    for queue in queues {
        let (messages, bytes) = backlog(&queue, topic)?;
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
            queue: queue.name,
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
/// it got. A crash between the two publishes them again on the next call
/// (at-least-once). Returns (moved, dead letters of any queue still after the
/// position).
pub fn redrive_queue(store: &dyn QueueHost, name: &str, max_messages: u32) -> Result<(u64, u64)> {
    let queue = store
        .queues()
        .read(|q| q.get(name).cloned())
        .ok_or_else(|| not_found(name))?;
    let Ok(dlq) = store.topic(&queue.config.dead_letter_topic) else {
        return Ok((0, 0));
    };
    let target = store.topic(&queue.topic)?;
    let group = redrive_group(name);
    let max_messages = if max_messages == 0 {
        REDRIVE_DEFAULT_MESSAGES
    } else {
        max_messages
    };
    let mut moved = 0u64;
    let mut remaining = 0u64;
    let mut commits = Vec::new();
    for partition in dlq.partitions() {
        let committed = store
            .offsets()
            .fetch(&group, dlq.name(), partition.id())
            .map(|c| c.offset);
        let mut position = committed
            .unwrap_or(0)
            .max(partition.log_start())
            .min(partition.end_offset());
        let mut batches: BTreeMap<u32, Vec<NewRecord>> = BTreeMap::new();
        while moved < u64::from(max_messages) && position < partition.end_offset() {
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
                let source_partition = header(DLQ_HEADER_PARTITION)
                    .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u32>().ok())
                    .filter(|p| (*p as usize) < target.partitions().len())
                    .unwrap_or(0);
                batches
                    .entry(source_partition)
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
        for (source, records) in batches {
            for chunk in records.chunks(1000) {
                target.partition(source)?.append_durable(chunk)?;
            }
        }
        remaining += partition.end_offset().saturating_sub(position);
        if committed != Some(position) {
            commits.push((
                dlq.name().to_string(),
                partition.id(),
                position,
                String::new(),
            ));
        }
    }
    store.offsets().commit(&group, &commits)?;
    Ok((moved, remaining))
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
    let mut headers = record.headers.clone();
    let mut add = |key: &str, value: String| {
        headers.push(crate::batch::Header {
            key: key.to_string(),
            value: Bytes::from(value),
        })
    };
    add(DLQ_HEADER_QUEUE, queue.to_string());
    add(DLQ_HEADER_TOPIC, topic.to_string());
    add(DLQ_HEADER_PARTITION, partition.to_string());
    add(DLQ_HEADER_OFFSET, record.offset.to_string());
    add(DLQ_HEADER_ATTEMPTS, attempts.to_string());
    add(DLQ_HEADER_FIRST_DELIVERY, first_delivery_ms.to_string());
    add(DLQ_HEADER_LAST_DELIVERY, last_delivery_ms.to_string());
    add(DLQ_HEADER_REASON, reason.to_string());
    NewRecord {
        key: record.key.clone(),
        value: record.value.clone(),
        headers,
        id: record.id.clone(),
        ..NewRecord::default()
    }
}
