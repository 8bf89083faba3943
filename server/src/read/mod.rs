//! Reading partitions for subscribers: the read limits every reader applies,
//! [`read_round`] (the one loop that reads a set of partitions under a batch budget,
//! for the plain Subscribe and for group members alike), [`PartitionReader`] (follows
//! partitions of one topic, or of every topic a pattern matches, and yields Subscribe
//! events, or in [`BatchForm`] SubscribeBatches events), [`batches`] (the batch-form
//! read of one partition) and [`spawn_subscription`] (runs one into a bounded queue).
//!
//! Memory per Subscribe stream is bounded by [`SUBSCRIBE_QUEUE_EVENTS`] events of at
//! most `max_batch_bytes` each (one message can exceed it, up to the topic's
//! `max_message_bytes`): the reader task only reads the next batch once the queue has
//! room, and the queue only drains as fast as HTTP/2 flow control lets the client
//! receive. A slow subscriber therefore slows its own reader and nothing else.
//!
//! This module imports neither [`crate::consume`] nor [`crate::groups`]; both import it.

use std::borrow::BorrowMut;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidelog_proto::v1::{MessageBatch, PartitionPosition};
use tidelog_storage::filter::Filtered;
use tidelog_storage::{Error, Filter, Partition, ReadResult};

use crate::convert;

/// Messages per Fetch or batch when the client leaves it at 0.
pub const READ_MESSAGES_DEFAULT: u32 = 500;
/// Most messages per Fetch or batch, whatever the client asks.
pub const READ_MESSAGES_MAX: u32 = 10_000;
/// Bytes per Fetch or batch (soft) when the client leaves it at 0.
pub const READ_BYTES_DEFAULT: u64 = 1024 * 1024;
/// Largest byte budget per Fetch or batch (soft: one message may be larger).
pub const READ_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Largest encoded response message of queue deliveries: a Receive response, or one
/// Deliveries event of a Consume stream (soft: one delivery alone may be larger, up to
/// its topic's `max_message_bytes` plus framing, and then goes out alone). Under the
/// 4 MiB receive limit gRPC clients have by default (grpcio, grpc-java, grpc-go), with
/// room to spare, so a client with default settings takes every response of a queue
/// whose messages fit in it. Smaller than [`READ_BYTES_MAX`], which applies to
/// Fetch, where the client chooses its budget.
pub const QUEUE_RESPONSE_BYTES_MAX: u64 = 3 * 1024 * 1024;
/// The receive limit gRPC clients have by default.
const GRPC_CLIENT_RECEIVE_BYTES_DEFAULT: u64 = 4 * 1024 * 1024;
const _: () = assert!(QUEUE_RESPONSE_BYTES_MAX < GRPC_CLIENT_RECEIVE_BYTES_DEFAULT);
const _: () = assert!(QUEUE_RESPONSE_BYTES_MAX <= READ_BYTES_MAX);
/// Events (message batches, resets) queued per Subscribe stream ahead of the client.
pub const SUBSCRIBE_QUEUE_EVENTS: usize = 4;
/// Reads in a row that only skip expired messages before a reader yields.
const EXPIRED_SKIPS_MAX: u32 = 64;
/// How often at most a stream sends a batch without messages, only positions, while
/// its reads move past messages none of which it delivers (the filter skips them, or
/// they expired), and at once when that reached the end of the partitions it names
/// ([`batch_goes_out`]): so a consumer learns (and can commit, or resume from) how far
/// the broker read for it, without an event per skipped read. At the end it is at once, not later, since
/// nothing may come to carry it: a stream then sends one event per append it skips, as
/// many as it would send without a filter.
pub const SKIP_PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// How often a topic-pattern stream looks at the topic list for topics that appeared,
/// grew or went (at once, too, when a read finds its topic deleted): the "within 1
/// second" of the API's promise.
pub const TOPIC_RESCAN_INTERVAL: Duration = Duration::from_millis(500);
/// How long a pattern stream waits before reading again when a read found its topic
/// deleted but the topic list still holds it (the delete is under way).
const IDLE_RESCAN_BACKOFF: Duration = Duration::from_millis(50);

/// Tells open plain subscriptions that the topic list or a topic's partition count
/// changed (CreateTopic, DeleteTopic, CreatePartitions), so a stream on every partition
/// of a topic reads a partition added while it runs at once, and a pattern stream
/// looks at the topic list at once instead of at its next [`TOPIC_RESCAN_INTERVAL`].
/// Only a wake-up: each reader looks at the store itself to learn what changed.
#[derive(Debug, Clone)]
pub struct TopicChanges(Arc<tokio::sync::watch::Sender<()>>);

impl Default for TopicChanges {
    fn default() -> Self {
        TopicChanges(Arc::new(tokio::sync::watch::Sender::new(())))
    }
}

impl TopicChanges {
    /// Wakes every reader that watches (after the store holds the change).
    pub fn changed(&self) {
        self.0.send_replace(());
    }

    /// A watcher that sees the changes made from now on.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<()> {
        self.0.subscribe()
    }
}

/// Which topics a topic-pattern subscription (plain or group member) may match, on a
/// broker with `--auth`: those its caller may consume, asked each time the topics are
/// looked at, so a rule that changes takes effect within a rescan. Topics it refuses
/// are left out silently (as list RPCs leave out what the caller may not see).
#[derive(Clone)]
pub struct TopicAccess(Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl TopicAccess {
    pub fn new(allows: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        TopicAccess(Arc::new(allows))
    }

    pub fn allows(&self, topic: &str) -> bool {
        (self.0)(topic)
    }
}

impl std::fmt::Debug for TopicAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TopicAccess(..)")
    }
}

/// Whether the batch of a [`read_round`] over `cursors` goes out, at `now`, on a stream
/// whose last batch went out at `last_sent`: one with messages always; one with
/// positions alone (the reads moved past messages the filter skipped, or expired ones)
/// after [`SKIP_PROGRESS_INTERVAL`] without a batch, or at once when every partition
/// it names is at its end. A round names every partition whose position moved since
/// the last batch that went out, and reads every partition when it delivers nothing,
/// so that is every partition read. When it goes out, the cursors' positions count as
/// told (a later round names only what moves from there) and `last_sent` is `now`;
/// when it does not, its positions come again in the next round's batch.
pub fn batch_goes_out<C: BorrowMut<Cursor>>(
    cursors: &mut [C],
    batch: &MessageBatch,
    last_sent: &mut Instant,
    now: Instant,
) -> bool {
    let goes_out = !batch.messages.is_empty()
        || (!batch.positions.is_empty()
            && (now.saturating_duration_since(*last_sent) >= SKIP_PROGRESS_INTERVAL
                || batch
                    .positions
                    .iter()
                    .all(|p| p.next_offset >= p.end_offset)));
    if goes_out {
        for cursor in cursors {
            let cursor = cursor.borrow_mut();
            cursor.told = cursor.position;
        }
        *last_sent = now;
    }
    goes_out
}

/// How much one read may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    pub max_messages: u32,
    pub max_bytes: u64,
}

impl ReadLimits {
    /// The client's values (0 = default), capped at the server's maximums.
    pub fn from_request(max_messages: u32, max_bytes: u32) -> Self {
        ReadLimits {
            max_messages: match max_messages {
                0 => READ_MESSAGES_DEFAULT,
                n => n.min(READ_MESSAGES_MAX),
            },
            max_bytes: match max_bytes {
                0 => READ_BYTES_DEFAULT,
                n => u64::from(n).min(READ_BYTES_MAX),
            },
        }
    }
}

/// One partition a subscriber reads, and the next offset to deliver from it.
#[derive(Debug)]
pub struct Cursor {
    pub partition: Arc<Partition>,
    /// The next offset to deliver. [`read_round`] moves it past what it returns (and
    /// past expired messages it skips), never past a message it did not return.
    pub position: u64,
    /// The position the client was last told of (by a batch that went out, a
    /// PositionReset, or its start): [`read_round`] names the partition in its batch
    /// while `position` differs, so a move in a batch that did not go out is not lost.
    told: u64,
    /// The partition's topic, on streams that read several topics (a topic pattern):
    /// [`read_round`] names it in every message and position it returns. `None` on a
    /// single-topic stream (nothing to name, nothing to copy per message).
    pub topic: Option<Arc<str>>,
}

impl Cursor {
    pub fn new(partition: Arc<Partition>, position: u64) -> Self {
        Cursor {
            partition,
            position,
            told: position,
            topic: None,
        }
    }

    /// A cursor whose messages and positions name `topic`.
    pub fn in_topic(partition: Arc<Partition>, position: u64, topic: Arc<str>) -> Self {
        Cursor {
            partition,
            position,
            told: position,
            topic: Some(topic),
        }
    }

    /// Moves the position where the reset policy put it: the PositionReset event that
    /// goes with it tells the client.
    pub fn reset_to(&mut self, offset: u64) {
        self.position = offset;
        self.told = offset;
    }

    /// The position to tell the client, with `end_offset`.
    fn told_position(&self, end_offset: u64) -> PartitionPosition {
        PartitionPosition {
            partition: self.partition.id(),
            next_offset: self.position,
            end_offset,
            topic: self.topic_name(),
            topic_id: self.partition.topic_id().get(),
        }
    }

    /// The topic to name in messages and positions (empty = the stream's one topic).
    fn topic_name(&self) -> String {
        self.topic
            .as_deref()
            .map(str::to_string)
            .unwrap_or_default()
    }

    /// Reads from the position under the budget that is left, only messages `filter`
    /// matches (all without one). Skips expired messages (moving the position past
    /// them) up to [`EXPIRED_SKIPS_MAX`] reads; a read in which the filter skipped
    /// messages and none matched ends at once (an empty `Records`, the position past
    /// them), so one call scans at most one storage scan limit. With `strict`, a
    /// first message over `bytes` is refused: the position moves only past what was
    /// skipped before it, so only the first message of a batch may be over the budget.
    /// What the filter skipped is added to `filtered`.
    fn read(
        &mut self,
        messages: u32,
        bytes: u64,
        strict: bool,
        filter: Option<&Filter>,
        filtered: &mut Filtered,
    ) -> Result<CursorRead, Error> {
        for _ in 0..EXPIRED_SKIPS_MAX {
            let read = self
                .partition
                .read_filtered(self.position, messages, bytes, filter)?;
            match read.records.first() {
                Some(first) if strict && first.payload_bytes() > bytes => {
                    // Everything before it was skipped (expired, or the filter's):
                    // the position passes those, and the next read starts with it.
                    if first.offset > self.position {
                        self.position = first.offset;
                        filtered.skipped += read.filtered.skipped;
                        filtered.not_json += read.filtered.not_json;
                    }
                    return Ok(CursorRead::Refused);
                }
                Some(_) => {
                    self.position = read.next_offset;
                    filtered.skipped += read.filtered.skipped;
                    filtered.not_json += read.filtered.not_json;
                    return Ok(CursorRead::Records(read));
                }
                None if read.next_offset > self.position => {
                    self.position = read.next_offset;
                    if read.filtered.skipped > 0 {
                        filtered.skipped += read.filtered.skipped;
                        filtered.not_json += read.filtered.not_json;
                        return Ok(CursorRead::Records(read));
                    }
                    // Only expired messages were skipped: look again from past them.
                }
                None => return Ok(CursorRead::CaughtUp(read.end_offset)),
            }
        }
        Ok(CursorRead::CaughtUp(self.partition.end_offset()?))
    }
}

/// What one [`Cursor::read`] found.
enum CursorRead {
    /// Messages, or none when a filter skipped every message the read looked at.
    Records(ReadResult),
    /// Nothing to deliver now (the end, or many expired messages in a row); the end
    /// offset.
    CaughtUp(u64),
    /// The next message is over what is left of the batch's budget.
    Refused,
}

/// How [`read_round`] fills a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// The messages of one partition per batch (the plain Subscribe).
    OnePartition,
    /// Go on to the next partitions while the budget lasts (a group member's batches).
    Fill,
}

/// What one [`read_round`] read.
#[derive(Debug, PartialEq)]
pub enum Round {
    /// The messages read, possibly none (every partition caught up, or only expired
    /// messages skipped), and the position of every partition whose position moved
    /// since the client was last told (see [`batch_goes_out`]).
    Batch {
        batch: MessageBatch,
        /// Id, key, value and header bytes of the messages (what the budget counts).
        bytes: u64,
        /// Messages the filter skipped in this round (their positions moved past them).
        filtered: Filtered,
    },
    /// The first partition read has its position outside the log; nothing was read.
    /// The cursor is left where it was: the caller applies its reset policy.
    OutOfRange {
        /// Index of the cursor in the slice passed to [`read_round`].
        index: usize,
        partition: u32,
        requested: u64,
        log_start: u64,
        end: u64,
    },
}

/// Reads one batch from `cursors`, the one reading loop of every subscriber.
///
/// Partitions take turns: the round starts at `turn` and, once something was read,
/// sets `turn` just past the first partition that delivered, so every partition with
/// data comes first within `cursors.len()` rounds and none starves another.
///
/// The batch keeps to `limits`: it stops at the first message the budget refuses, and
/// that message's partition stays at its offset, so nothing is skipped. Only the
/// batch's first message may be over `max_bytes` (it then comes alone), so a large
/// message never stalls a reader. With [`Batching::Fill`] it goes on to the next
/// partitions while the budget lasts; with [`Batching::OnePartition`] it ends after
/// the first partition that delivered.
///
/// With a `filter`, only messages it matches are read; those it skips are passed over
/// (positions move past them and are reported in the batch even when nothing matched)
/// and counted in `Round::Batch::filtered`. Each partition's read scans at most the
/// storage's filter scan limits, so a round may deliver nothing while positions move.
///
/// The batch names every partition whose position moved since the client was last
/// told, read in this round or not: the caller passes it to [`batch_goes_out`], and a
/// batch that does not go out leaves its positions to the next.
///
/// An error (or a position out of range) after messages were read ends the round with
/// those messages; the partition is left where it was, so the error comes again on a
/// later round, first in its batch. Errors are storage errors: `TopicDeleted`,
/// `PartitionUnavailable`, `Corrupt`, ...
pub fn read_round<C: BorrowMut<Cursor>>(
    cursors: &mut [C],
    turn: &mut usize,
    limits: ReadLimits,
    batching: Batching,
    filter: Option<&Filter>,
) -> Result<Round, Error> {
    let count = cursors.len();
    let mut batch = MessageBatch::default();
    let mut filtered = Filtered::default();
    let mut bytes_read = 0u64;
    let mut messages_left = limits.max_messages.max(1);
    let mut bytes_left = limits.max_bytes;
    let mut first_delivered = None;
    // Steps whose partition's position the loop put in the batch (if it moved).
    let mut handled = 0;
    for step in 0..count {
        let index = (*turn + step) % count;
        let started = !batch.messages.is_empty();
        if started && (batching == Batching::OnePartition || messages_left == 0 || bytes_left == 0)
        {
            break;
        }
        let cursor = cursors[index].borrow_mut();
        let read = match cursor.read(messages_left, bytes_left, started, filter, &mut filtered) {
            Ok(read) => read,
            // Comes again on a later round, first in its batch.
            Err(_) if started => break,
            Err(Error::OffsetOutOfRange {
                requested,
                log_start,
                end,
                ..
            }) => {
                *turn = (index + 1) % count;
                return Ok(Round::OutOfRange {
                    index,
                    partition: cursor.partition.id(),
                    requested,
                    log_start,
                    end,
                });
            }
            Err(error) => return Err(error),
        };
        let id = cursor.partition.id();
        let refused = matches!(read, CursorRead::Refused);
        let end_offset = match read {
            CursorRead::Refused => cursor.partition.end_offset()?,
            CursorRead::CaughtUp(end) => end,
            CursorRead::Records(read) => {
                if !read.records.is_empty() {
                    first_delivered.get_or_insert(index);
                }
                for record in read.records {
                    let size = record.payload_bytes();
                    bytes_read += size;
                    bytes_left = bytes_left.saturating_sub(size);
                    messages_left = messages_left.saturating_sub(1);
                    let mut message = convert::consumed_message(id, record);
                    if let Some(topic) = &cursor.topic {
                        message.topic = topic.to_string();
                    }
                    batch.messages.push(message);
                }
                read.end_offset
            }
        };
        if cursor.position != cursor.told {
            batch.positions.push(cursor.told_position(end_offset));
        }
        handled = step + 1;
        if refused {
            break;
        }
    }
    // Partitions the round did not get to that moved since the client was told.
    for step in handled..count {
        let cursor = cursors[(*turn + step) % count].borrow_mut();
        if cursor.position != cursor.told {
            batch
                .positions
                .push(cursor.told_position(cursor.partition.end_offset()?));
        }
    }
    if let Some(index) = first_delivered {
        *turn = (index + 1) % count;
    }
    Ok(Round::Batch {
        batch,
        bytes: bytes_read,
        filtered,
    })
}

pub mod batches;
mod reader;
#[cfg(test)]
mod tests;

pub use reader::{
    BatchForm, EventSource, LaterStart, PartitionReader, Recreated, spawn_events,
    spawn_subscription,
};
