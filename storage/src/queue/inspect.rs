//! What happened to a message: its delivery status in a queue or a consumer group, its
//! delivery history in a queue, and a queue's deliveries listed newest first with
//! filters. Read-only; blocking (it reads segments and history files).
//!
//! # Where each answer comes from
//!
//! Nothing is stored twice. A queue's status is derived from its durable state
//! ([`super::state`]): a pending message is `unacked` (leased, with member, attempt and
//! deadline), `waiting` (nacked or given up, redelivered at a due time) or `delayed`
//! (deliver-at ahead); a message at or past its level's cursor is not taken yet:
//! `ready`, `delayed`, or `expired`. Only a message the queue settled needs the
//! history ([`super::history`]) to say how: `acked` or `dead-lettered` with the
//! reason; with no history of it (purged, or its history is past the age limit, or a
//! crash took the last record) it is `settled`, and if it has expired meanwhile,
//! `expired`. A message below the log's start (retention deleted it) is `deleted`,
//! unless its history says the queue acked or dead-lettered it first: whatever the
//! queue still holds of it is gone (`QueuePartition::deleted_pending`). A consumer
//! group's status is its committed offset against the message's.

use std::sync::Arc;

use crate::batch::Record;
use crate::error::{Error, Result};
use crate::queue::QueueHost;
use crate::topic::Topic;

use super::history::query::{
    EventPage, LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, ListRequest, list_events, message_attempts,
};
use super::history::{AttemptRecord, CursorError, HistoryEvent, ListCursor, Outcome, queue_tag};
use super::state::{Hold, Queue};

/// Slack before a message's timestamp where its history is looked for: a producer may
/// set a timestamp ahead of the broker's clock (the broker's own append times need
/// none). A message stamped more than this ahead of its append has its history found
/// only from its timestamp on.
pub const HISTORY_TIMESTAMP_SLACK_MS: i64 = 5 * 60 * 1000;

/// A message of a topic as a reader finds it at (partition, offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageAt {
    /// Stored and visible.
    Stored(Record),
    /// In the log's range but hidden from readers: its TTL passed.
    Expired,
    /// Below the log start: it was stored, and retention deleted it (its segment went
    /// whole: by retention_ms or retention_bytes, or every message in it expired).
    Deleted { log_start: u64 },
    /// At or past the end: never stored (yet).
    Missing { log_start: u64, end_offset: u64 },
}

/// The message at `offset` of `partition` of `topic`.
pub fn message_at(topic: &Topic, partition: u32, offset: u64) -> Result<MessageAt> {
    let part = topic.partition(partition)?;
    let (log_start, end_offset) = part.bounds()?;
    if offset < log_start {
        return Ok(MessageAt::Deleted { log_start });
    }
    if offset >= end_offset {
        return Ok(MessageAt::Missing {
            log_start,
            end_offset,
        });
    }
    let read = part.read(offset, 1, 0)?;
    Ok(
        match read.records.into_iter().find(|r| r.offset == offset) {
            Some(record) => MessageAt::Stored(record),
            None => MessageAt::Expired,
        },
    )
}

/// Where a message stands in a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueState {
    /// Not delivered yet; deliverable now.
    Ready,
    /// Not delivered until `deliver_at_ms`.
    Delayed { deliver_at_ms: i64 },
    /// Held by `member` for attempt `attempt` until `deadline_ms`.
    Unacked {
        member: String,
        attempt: u32,
        deadline_ms: i64,
        delivered_ms: i64,
    },
    /// An attempt failed (nacked: `reason`, or given up); delivered again at `due_ms`.
    Waiting {
        due_ms: i64,
        attempts: u32,
        reason: String,
    },
    /// Acked after `attempts` deliveries at `at_ms`.
    Acked { at_ms: i64, attempts: u32 },
    /// Appended to the dead-letter topic at `at_ms` because of `reason`.
    DeadLettered {
        at_ms: i64,
        reason: String,
        attempts: u32,
    },
    /// Its TTL passed before the queue settled it (never delivered after that), after
    /// `attempts` deliveries (as far as its history goes back).
    Expired {
        expires_at_ms: Option<i64>,
        attempts: u32,
    },
    /// The queue settled it and no history says how: purged, or its history is past
    /// the queue's `history_retention` (or a crash took the last record); `attempts`
    /// deliveries as far as its history goes back.
    Settled { attempts: u32 },
    /// The queue's filter does not match it: passed over as settled, never delivered.
    Filtered,
    /// Retention deleted it (it is below the partition's log start, `log_start` now)
    /// and no history says the queue acked or dead-lettered it first: never delivered,
    /// held by a member (the queue drops that delivery), waiting, or settled with no
    /// history saying how; after `attempts` deliveries (as far as its history goes
    /// back).
    Deleted { log_start: u64, attempts: u32 },
}

impl QueueState {
    /// Lower-case words, as the CLI prints them.
    pub fn name(&self) -> &'static str {
        match self {
            QueueState::Ready => "ready",
            QueueState::Delayed { .. } => "delayed",
            QueueState::Unacked { .. } => "unacked",
            QueueState::Waiting { .. } => "waiting",
            QueueState::Acked { .. } => "acked",
            QueueState::DeadLettered { .. } => "dead-lettered",
            QueueState::Expired { .. } => "expired",
            QueueState::Settled { .. } => "settled",
            QueueState::Filtered => "filtered",
            QueueState::Deleted { .. } => "deleted",
        }
    }
}

fn queue_of(store: &dyn QueueHost, name: &str) -> Result<Queue> {
    store
        .queues()
        .read(|q| q.get(name).map(Queue::without_pending))
        .ok_or_else(|| Error::not_found(format!("queue {name:?}")))
}

/// Where message (`partition`, `offset`) of queue `name`'s topic stands in the queue,
/// at `now_ms`. `message` is what [`message_at`] found (not `Missing`). What the queue
/// holds wins; a settled message is acked or dead-lettered as its history says (even
/// if it expired since), expired if it expired without either, else `Settled`. A
/// message retention deleted is acked or dead-lettered as its history says, else
/// `Deleted`, whatever the queue holds of it (the engine drops that:
/// `QueuePartition::deleted_pending`).
pub fn queue_state(
    store: &dyn QueueHost,
    name: &str,
    partition: u32,
    offset: u64,
    message: &MessageAt,
    now_ms: i64,
) -> Result<QueueState> {
    let queue = queue_of(store, name)?;
    if let MessageAt::Deleted { log_start } = *message {
        // Its history, looked for over the whole of it (its timestamp is gone).
        let attempts = message_history(store, name, partition, offset, i64::MIN, now_ms)?;
        return Ok(
            settled_by_history(&attempts).unwrap_or(QueueState::Deleted {
                log_start,
                attempts: attempts.iter().map(|a| a.attempt).max().unwrap_or(0),
            }),
        );
    }
    let record = match message {
        MessageAt::Stored(record) => Some(record),
        _ => None,
    };
    let level = record.map(|r| queue.level_of(r.priority));
    // The cursor of the message's level; when the message is hidden (expired) and its
    // level unknown, the lowest and the highest cursor bound it.
    let (pending, cursors) = store.queues().read(|q| {
        let part = q.get(name).and_then(|q| q.partitions.get(&partition));
        (
            part.and_then(|p| p.pending.get(offset).map(std::borrow::Cow::into_owned)),
            part.map(|p| p.cursors.clone()).unwrap_or_default(),
        )
    });
    if let Some(pending) = pending {
        return Ok(match pending.hold {
            Hold::Leased {
                member,
                deadline_ms,
            } => QueueState::Unacked {
                member: member.to_string(),
                attempt: pending.attempts,
                deadline_ms,
                delivered_ms: pending.last_delivery_ms,
            },
            Hold::Waiting { due_ms } => QueueState::Waiting {
                due_ms,
                attempts: pending.attempts,
                reason: pending.reason,
            },
            Hold::Delayed { due_ms } => QueueState::Delayed {
                deliver_at_ms: due_ms,
            },
        });
    }
    let cursor_of = |level: u8| cursors.get(usize::from(level)).copied().unwrap_or(0);
    let highest_cursor = cursors.iter().copied().max().unwrap_or(0);
    let taken = match level {
        Some(level) => offset < cursor_of(level),
        // Past every cursor: not taken whatever its level; else maybe.
        None => offset < highest_cursor,
    };
    let expired = match record {
        None => true,
        // Or it will be before it comes due: never delivered.
        Some(record) => {
            record.expires_at_ms.is_some_and(|at| at <= now_ms) || record.expires_before_due()
        }
    };
    let expired_state = |attempts| QueueState::Expired {
        expires_at_ms: record.and_then(|r| r.expires_at_ms),
        attempts,
    };
    // A message the queue's filter skips is never delivered (nor has a history).
    if let (Some(record), Some(text)) = (record, queue.config.filter.as_deref())
        && !expired
        && crate::filter::Filter::parse(text)
            .is_ok_and(|filter| filter.evaluate_record(record) != crate::filter::Verdict::Match)
    {
        return Ok(QueueState::Filtered);
    }
    if !taken {
        if expired {
            return Ok(expired_state(0));
        }
        return Ok(match record.and_then(|r| r.deliver_at_ms) {
            Some(at) if at > now_ms => QueueState::Delayed { deliver_at_ms: at },
            _ => QueueState::Ready,
        });
    }
    // Settled (or, for a hidden message, perhaps never taken): the history says how.
    // An expired message's timestamp is unknown: its history is looked for over the
    // whole retention (found only by position, so rarely asked).
    let timestamp_ms = record.map_or(i64::MIN, |r| r.timestamp_ms);
    let attempts = message_history(store, name, partition, offset, timestamp_ms, now_ms)?;
    if let Some(settled) = settled_by_history(&attempts) {
        return Ok(settled);
    }
    let tried = attempts.iter().map(|a| a.attempt).max().unwrap_or(0);
    Ok(if expired {
        expired_state(tried)
    } else {
        QueueState::Settled { attempts: tried }
    })
}

/// Acked or dead-lettered, as the newest attempt of `attempts` (a message's history,
/// oldest first) that says either has it; None when none does.
fn settled_by_history(attempts: &[AttemptRecord]) -> Option<QueueState> {
    let tried = attempts.iter().map(|a| a.attempt).max().unwrap_or(0);
    attempts.iter().rev().find_map(|attempt| {
        if let Some((at_ms, reason)) = &attempt.dead_lettered {
            return Some(QueueState::DeadLettered {
                at_ms: *at_ms,
                reason: reason.clone(),
                attempts: tried,
            });
        }
        match &attempt.outcome {
            Some((Outcome::Acked, at_ms, _)) => Some(QueueState::Acked {
                at_ms: *at_ms,
                attempts: tried,
            }),
            _ => None,
        }
    })
}

/// The newest `history_attempts` delivery attempts of message (`partition`,
/// `offset`) in queue `name`, oldest first, within the queue's `history_retention`.
/// `timestamp_ms` is the message's (history is looked for from
/// [`HISTORY_TIMESTAMP_SLACK_MS`] before it).
pub fn message_history(
    store: &dyn QueueHost,
    name: &str,
    partition: u32,
    offset: u64,
    timestamp_ms: i64,
    now_ms: i64,
) -> Result<Vec<AttemptRecord>> {
    let queue = queue_of(store, name)?;
    let cutoff = retention_cutoff(&queue, now_ms);
    let since = timestamp_ms
        .min(now_ms)
        .saturating_sub(HISTORY_TIMESTAMP_SLACK_MS)
        .max(cutoff);
    message_attempts(
        &*store.queue_history(name)?,
        partition,
        offset,
        since,
        queue.config.history_attempts,
    )
}

fn retention_cutoff(queue: &Queue, now_ms: i64) -> i64 {
    now_ms.saturating_sub(i64::try_from(queue.config.history_retention_ms).unwrap_or(i64::MAX))
}

/// Which events a listing wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryFilter {
    /// Every event.
    #[default]
    All,
    /// Deliveries (attempts begun).
    Delivered,
    /// Deliveries still held by their member now (the attempt is the current one).
    Unacked,
    Acked,
    /// Failed attempts: nacked, deadline passed or member left.
    Failed,
    Nacked,
    /// Deadline passed or member left.
    TimedOut,
    Terminated,
    DeadLettered,
    Extended,
}

impl DeliveryFilter {
    fn cheap(self, event: &HistoryEvent) -> bool {
        match self {
            DeliveryFilter::All => true,
            DeliveryFilter::Delivered | DeliveryFilter::Unacked => {
                event.outcome == Outcome::Delivered
            }
            DeliveryFilter::Acked => event.outcome == Outcome::Acked,
            DeliveryFilter::Failed => event.outcome.is_failure(),
            DeliveryFilter::Nacked => event.outcome == Outcome::Nacked,
            DeliveryFilter::TimedOut => {
                matches!(event.outcome, Outcome::DeadlinePassed | Outcome::MemberLeft)
            }
            DeliveryFilter::Terminated => event.outcome == Outcome::Terminated,
            DeliveryFilter::DeadLettered => event.outcome == Outcome::DeadLettered,
            DeliveryFilter::Extended => event.outcome == Outcome::Extended,
        }
    }
}

/// A listing page's request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeliveriesQuery {
    pub filter: DeliveryFilter,
    /// Events at or after this time only.
    pub since_ms: Option<i64>,
    /// Events at or before this time only.
    pub until_ms: Option<i64>,
    /// Only messages with a header `key` whose value is these bytes.
    pub header: Option<(String, bytes::Bytes)>,
    /// 0 = [`LIST_LIMIT_DEFAULT`]; at most [`LIST_LIMIT_MAX`].
    pub limit: u32,
    /// A previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// One listed event, with the message when it is still stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedDelivery {
    pub event: HistoryEvent,
    /// The message (for its id and headers); `None` when retention removed it or it
    /// expired.
    pub record: Option<Record>,
}

/// A listing page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveriesPage {
    pub deliveries: Vec<ListedDelivery>,
    /// Hand back for the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// A page of queue `name`'s delivery events, newest first. A cursor that is not one
/// this queue's listing returned fails with [`Error::InvalidArgument`] saying so; the
/// page holds at most `limit` events (see [`list_events`] for its budgets).
pub fn list_deliveries(
    store: &dyn QueueHost,
    name: &str,
    query: &DeliveriesQuery,
    now_ms: i64,
) -> Result<DeliveriesPage> {
    let queue = queue_of(store, name)?;
    let tag = queue_tag(&queue.name, queue.created_ms);
    let cursor = match &query.cursor {
        None => None,
        Some(text) => Some(ListCursor::decode(text, tag).map_err(|e| {
            Error::invalid(match e {
                CursorError::OtherQueue => format!(
                    "cursor was returned by a listing of another queue (or of an earlier queue named {name:?}); start again without a cursor"
                ),
                CursorError::Malformed(reason) => format!(
                    "cursor is not one a listing of queue {name:?} returned: {reason}; pass next_cursor exactly as it came, or start again without a cursor"
                ),
            })
        })?),
    };
    let limit = match query.limit {
        0 => LIST_LIMIT_DEFAULT,
        n if n > LIST_LIMIT_MAX => {
            return Err(Error::invalid(format!(
                "limit {n} is over the maximum of {LIST_LIMIT_MAX}"
            )));
        }
        n => n,
    };
    if let (Some(since), Some(until)) = (query.since_ms, query.until_ms)
        && since > until
    {
        return Err(Error::invalid(format!(
            "since ({since} ms) is after until ({until} ms)"
        )));
    }
    let request = ListRequest {
        since_ms: query
            .since_ms
            .unwrap_or(i64::MIN)
            .max(retention_cutoff(&queue, now_ms)),
        until_ms: query.until_ms.unwrap_or(i64::MAX),
        limit,
        cursor,
        queue_tag: tag,
    };
    let topic: Option<Arc<Topic>> = store.topic(&queue.topic).ok();
    let filter = query.filter;
    let header = query.header.clone();
    let page: EventPage = list_events(
        &*store.queue_history(name)?,
        &request,
        |event| filter.cheap(event),
        |event| {
            if filter == DeliveryFilter::Unacked {
                let current = store.queues().read(|q| {
                    q.get(name)
                        .and_then(|q| q.partitions.get(&event.partition))
                        .and_then(|p| p.pending.get(event.offset))
                        .is_some_and(|p| {
                            // The lease of this very delivery: a delivery given back
                            // unseen (released) left its attempt number to the next.
                            matches!(p.hold, Hold::Leased { .. })
                                && p.attempts == event.attempt
                                && p.last_delivery_ms == event.at_ms
                        })
                });
                if !current {
                    return Ok(false);
                }
            }
            let Some((key, value)) = &header else {
                return Ok(true);
            };
            let Some(topic) = &topic else {
                return Ok(false);
            };
            Ok(match message_at(topic, event.partition, event.offset) {
                Ok(MessageAt::Stored(record)) => record
                    .headers
                    .iter()
                    .any(|h| &h.key == key && h.value == value),
                _ => false,
            })
        },
    )?;
    let mut deliveries = Vec::with_capacity(page.events.len());
    for event in page.events {
        let record = match &topic {
            Some(topic) => match message_at(topic, event.partition, event.offset) {
                Ok(MessageAt::Stored(record)) => Some(record),
                _ => None,
            },
            None => None,
        };
        deliveries.push(ListedDelivery { event, record });
    }
    Ok(DeliveriesPage {
        deliveries,
        next_cursor: page.next.map(|c| c.encode()),
    })
}

/// Where a message stands in a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// The group's committed offset for the partition (the next it reads); `None`
    /// when it committed none.
    pub committed: Option<u64>,
    /// Whether the committed offset is past the message.
    pub past: bool,
}

/// Whether `group` committed past message (`partition`, `offset`) of `topic`.
pub fn group_state(
    store: &dyn QueueHost,
    group: &str,
    topic: &str,
    partition: u32,
    offset: u64,
) -> GroupState {
    let committed = store
        .offsets()
        .fetch(group, topic, partition)
        .map(|c| c.offset);
    GroupState {
        committed,
        past: committed.is_some_and(|c| c > offset),
    }
}
