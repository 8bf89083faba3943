//! Reading partitions for subscribers: the read limits every reader applies,
//! [`read_round`] (the one loop that reads a set of partitions under a batch budget,
//! for the plain Subscribe and for group members alike), [`PartitionReader`] (follows
//! partitions of one topic, or of every topic a pattern matches, and yields Subscribe
//! events) and [`spawn_subscription`] (runs one into a bounded queue).
//!
//! Memory per Subscribe stream is bounded by [`SUBSCRIBE_QUEUE_EVENTS`] events of at
//! most `max_batch_bytes` each (one message can exceed it, up to the topic's
//! `max_message_bytes`): the reader task only reads the next batch once the queue has
//! room, and the queue only drains as fast as HTTP/2 flow control lets the client
//! receive. A slow subscriber therefore slows its own reader and nothing else.
//!
//! This module imports neither [`crate::consume`] nor [`crate::groups`]; both import it.

use std::borrow::BorrowMut;
use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tidelog_proto::v1::{
    MessageBatch, PartitionPosition, PositionReset, Positioned, ResetPolicy, ResetReason,
    SubscribeResponse, TopicsChanged, subscribe_response::Event,
};
use tidelog_storage::filter::Filtered;
use tidelog_storage::{Error, Filter, Partition, ReadResult, Topic, TopicPattern};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::AppState;
use crate::convert;

/// Messages per Fetch or batch when the client leaves it at 0.
pub const READ_MESSAGES_DEFAULT: u32 = 500;
/// Most messages per Fetch or batch, whatever the client asks.
pub const READ_MESSAGES_MAX: u32 = 10_000;
/// Bytes per Fetch or batch (soft) when the client leaves it at 0.
pub const READ_BYTES_DEFAULT: u64 = 1024 * 1024;
/// Largest byte budget per Fetch or batch (soft: one message may be larger).
pub const READ_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Events (message batches, resets) queued per Subscribe stream ahead of the client.
pub const SUBSCRIBE_QUEUE_EVENTS: usize = 4;
/// Reads in a row that only skip expired messages before a reader yields.
const EXPIRED_SKIPS_MAX: u32 = 64;
/// How often at most a filtered stream sends a batch without messages, only positions,
/// while its filter skips messages and none match (and at once when skipping reached
/// the end of the partitions read): so a consumer learns (and can commit, or resume
/// from) how far the broker read for it, without an event per skipped read. At the
/// end it is at once, not later, since nothing may come to carry it: a stream then
/// sends one event per append it skips, as many as it would send without a filter.
pub const FILTER_PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// How often a topic-pattern stream looks at the topic list for topics that appeared,
/// grew or went (at once, too, when a read finds its topic deleted): the "within 1
/// second" of the API's promise.
pub const TOPIC_RESCAN_INTERVAL: Duration = Duration::from_millis(500);
/// How long a pattern stream waits before reading again when a read found its topic
/// deleted but the topic list still holds it (the delete is under way).
const IDLE_RESCAN_BACKOFF: Duration = Duration::from_millis(50);

/// Whether a round that delivered nothing but `filtered` skips sends its positions
/// alone: see [`FILTER_PROGRESS_INTERVAL`].
pub fn send_progress(batch: &MessageBatch, filtered: Filtered, last_sent: Instant) -> bool {
    filtered.skipped > 0
        && !batch.positions.is_empty()
        && (last_sent.elapsed() >= FILTER_PROGRESS_INTERVAL
            || batch
                .positions
                .iter()
                .all(|p| p.next_offset >= p.end_offset))
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
            topic: None,
        }
    }

    /// A cursor whose messages and positions name `topic`.
    pub fn in_topic(partition: Arc<Partition>, position: u64, topic: Arc<str>) -> Self {
        Cursor {
            partition,
            position,
            topic: Some(topic),
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
        Ok(CursorRead::CaughtUp(self.partition.end_offset()))
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
    /// messages skipped), and the position of every partition whose position moved.
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
    for step in 0..count {
        let index = (*turn + step) % count;
        let started = !batch.messages.is_empty();
        if started && (batching == Batching::OnePartition || messages_left == 0 || bytes_left == 0)
        {
            break;
        }
        let cursor = cursors[index].borrow_mut();
        let before = cursor.position;
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
            CursorRead::Refused => cursor.partition.end_offset(),
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
        if cursor.position != before {
            batch.positions.push(PartitionPosition {
                partition: id,
                next_offset: cursor.position,
                end_offset,
                topic: cursor.topic_name(),
            });
        }
        if refused {
            break;
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

/// What a [`PartitionReader`] reads: one topic, or every topic a pattern matches.
#[derive(Debug)]
enum Source {
    /// One topic; its deletion ends the stream with NOT_FOUND.
    Topic(Arc<Topic>),
    /// Every topic the pattern matches, as they come and go.
    Pattern(Box<PatternSource>),
}

/// The topics a pattern stream reads and when it looks for changes.
#[derive(Debug)]
struct PatternSource {
    pattern: Arc<TopicPattern>,
    /// Read topics by name, with the number of their partitions read.
    topics: BTreeMap<String, (Arc<Topic>, usize)>,
    /// Where partitions that appear after the start begin.
    later: LaterStart,
    /// When to look at the topic list next.
    next_scan: tokio::time::Instant,
}

/// Where a pattern stream starts reading a topic (or partition) that appeared after
/// the stream started: every message in it is new to the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaterStart {
    /// The log start.
    Earliest,
    /// The first message at or after this timestamp (ms), the end if none.
    Timestamp(i64),
}

impl LaterStart {
    fn offset(self, partition: &Partition) -> u64 {
        match self {
            LaterStart::Earliest => partition.log_start(),
            LaterStart::Timestamp(ms) => match partition.offset_for_timestamp(ms) {
                Ok(Some(offset)) => offset,
                // Nothing at or after it, or unreadable (the read reports it).
                Ok(None) => partition.end_offset(),
                Err(_) => partition.log_start(),
            },
        }
    }
}

/// Follows a set of partitions, of one topic or of every topic a pattern matches,
/// from given positions and yields their messages as [`SubscribeResponse`] events,
/// waiting (without spinning) when all are caught up. The plain Subscribe; a group
/// member runs its own task (it owns partitions that come and go) around the same
/// [`read_round`].
///
/// - Each [`PartitionReader::next_event`] returns one event: a [`MessageBatch`] from
///   one partition (partitions take turns, so a busy one does not starve the others),
///   or a [`PositionReset`] when a position fell outside the log and the reset
///   policy moved it (counted in the `tidelog_position_resets` metric). With
///   `RESET_POLICY_ERROR` it returns OUT_OF_RANGE instead.
/// - It is cancel-safe: dropping the future (e.g. in `tokio::select!` against a
///   rebalance signal) loses nothing; positions only move past messages an event
///   returned or that were skipped (expired, or by the filter: never to be sent).
/// - It ends with UNAVAILABLE when the broker shuts down, NOT_FOUND when its one topic
///   is deleted, DATA_LOSS on a corrupt batch.
/// - On a pattern ([`PartitionReader::with_pattern`]) it looks at the topic list every
///   [`TOPIC_RESCAN_INTERVAL`] (and at once when a read finds a topic deleted): a
///   matching topic that appeared (or grew partitions) is read from its
///   [`LaterStart`], a deleted one drops out, and each change is a [`TopicsChanged`]
///   event. Messages, positions and resets name their topic.
///
/// [`PartitionReader::positions`] gives the next offset of each partition after the
/// events returned so far (what an auto-commit would store).
#[derive(Debug)]
pub struct PartitionReader {
    state: Arc<AppState>,
    source: Source,
    cursors: Vec<Cursor>,
    /// Per cursor: poisoned, so nothing will be appended until a restart; stop waiting
    /// on it (its wait future resolves at once and would make the reader spin).
    parked: Vec<bool>,
    /// Index of the cursor that reads first next time (round robin).
    turn: usize,
    reset_policy: ResetPolicy,
    limits: ReadLimits,
    /// Only messages it matches are sent.
    filter: Option<Arc<Filter>>,
    /// When the last event went out: a batch of positions only is sent after
    /// [`FILTER_PROGRESS_INTERVAL`] without one.
    last_sent: Instant,
    /// Events to return before any read (TopicsChanged, Positioned).
    queued: VecDeque<SubscribeResponse>,
}

impl PartitionReader {
    /// A reader of `starts` (partition, first offset) of `topic`. A start outside a
    /// partition's log is handled by the reset policy on the first read, so callers
    /// can pass a remembered or committed offset as it is.
    pub fn new(
        state: Arc<AppState>,
        topic: Arc<Topic>,
        starts: &[(u32, u64)],
        reset_policy: ResetPolicy,
        limits: ReadLimits,
        filter: Option<Arc<Filter>>,
    ) -> Result<Self, Status> {
        let cursors = starts
            .iter()
            .map(|&(id, position)| {
                Ok(Cursor::new(
                    convert::or_status(topic.partition(id))?.clone(),
                    position,
                ))
            })
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(PartitionReader {
            state,
            source: Source::Topic(topic),
            parked: vec![false; cursors.len()],
            cursors,
            turn: 0,
            reset_policy,
            limits,
            filter,
            last_sent: Instant::now(),
            queued: VecDeque::new(),
        })
    }

    /// A reader of every topic `pattern` matches: `initial` are the topics matched at
    /// the start with the first offset of each of their partitions (all of them);
    /// topics and partitions that appear later start at `later`. The first event is a
    /// [`TopicsChanged`] naming the initial topics (possibly none).
    pub fn with_pattern(
        state: Arc<AppState>,
        pattern: Arc<TopicPattern>,
        initial: Vec<(Arc<Topic>, Vec<u64>)>,
        later: LaterStart,
        reset_policy: ResetPolicy,
        limits: ReadLimits,
        filter: Option<Arc<Filter>>,
    ) -> Self {
        let mut topics = BTreeMap::new();
        let mut cursors = Vec::new();
        for (topic, starts) in initial {
            let name: Arc<str> = Arc::from(topic.name());
            for (partition, start) in topic.partitions().iter().zip(&starts) {
                cursors.push(Cursor::in_topic(partition.clone(), *start, name.clone()));
            }
            topics.insert(topic.name().to_string(), (topic.clone(), starts.len()));
        }
        let names: Vec<String> = topics.keys().cloned().collect();
        let mut queued = VecDeque::new();
        queued.push_back(SubscribeResponse {
            event: Some(Event::TopicsChanged(TopicsChanged {
                added: names.clone(),
                removed: Vec::new(),
                topics: names,
            })),
        });
        PartitionReader {
            state,
            source: Source::Pattern(Box::new(PatternSource {
                pattern,
                topics,
                later,
                next_scan: tokio::time::Instant::now() + TOPIC_RESCAN_INTERVAL,
            })),
            parked: vec![false; cursors.len()],
            cursors,
            turn: 0,
            reset_policy,
            limits,
            filter,
            last_sent: Instant::now(),
            queued,
        }
    }

    /// Makes the first event (after a pattern stream's TopicsChanged) a [`Positioned`]
    /// naming every partition's start (a start out of range is then followed by its
    /// PositionReset).
    pub fn announce_positions(mut self) -> Self {
        let positions = self
            .cursors
            .iter()
            .map(|c| PartitionPosition {
                partition: c.partition.id(),
                next_offset: c.position,
                end_offset: c.partition.end_offset(),
                topic: c.topic_name(),
            })
            .collect();
        self.queued.push_back(SubscribeResponse {
            event: Some(Event::Positioned(Positioned { positions })),
        });
        self
    }

    /// (partition, next offset to deliver) for every partition read.
    pub fn positions(&self) -> Vec<(u32, u64)> {
        self.cursors
            .iter()
            .map(|c| (c.partition.id(), c.position))
            .collect()
    }

    /// Looks at the topic list (a pattern stream only): adds cursors for matching
    /// topics that appeared and partitions that were added, drops those of topics that
    /// went (deleted, or deleted and created again: then dropped and added back from
    /// its start). The change as a TopicsChanged event, `None` when nothing changed.
    fn rescan(&mut self) -> Option<SubscribeResponse> {
        let Source::Pattern(source) = &mut self.source else {
            return None;
        };
        source.next_scan = tokio::time::Instant::now() + TOPIC_RESCAN_INTERVAL;
        let now: BTreeMap<String, Arc<Topic>> = self
            .state
            .store
            .topics()
            .into_iter()
            .filter(|t| source.pattern.matches(t.name()))
            .map(|t| (t.name().to_string(), t))
            .collect();
        let removed: Vec<String> = source
            .topics
            .iter()
            .filter(|(name, (old, _))| !now.get(*name).is_some_and(|t| t.is_same_topic(old)))
            .map(|(name, _)| name.clone())
            .collect();
        let mut changed_cursors = false;
        for name in &removed {
            source.topics.remove(name);
            let before = self.cursors.len();
            self.cursors
                .retain(|c| c.topic.as_deref() != Some(name.as_str()));
            changed_cursors |= self.cursors.len() != before;
        }
        let mut added = Vec::new();
        for (name, topic) in now {
            let (read, first_new) = match source.topics.get(&name) {
                Some((_, read)) => (*read, *read),
                None => {
                    added.push(name.clone());
                    (0, 0)
                }
            };
            let count = topic.partitions().len();
            if count <= read && read > 0 {
                continue;
            }
            let label: Arc<str> = Arc::from(name.as_str());
            for partition in topic.partitions().iter().skip(first_new) {
                let start = source.later.offset(partition);
                self.cursors
                    .push(Cursor::in_topic(partition.clone(), start, label.clone()));
                changed_cursors = true;
            }
            source.topics.insert(name, (topic, count));
        }
        if changed_cursors {
            self.parked = vec![false; self.cursors.len()];
            self.turn = 0;
        }
        if added.is_empty() && removed.is_empty() {
            return None;
        }
        tracing::debug!(
            pattern = source.pattern.as_str(),
            ?added,
            ?removed,
            "pattern subscription's topics changed"
        );
        Some(SubscribeResponse {
            event: Some(Event::TopicsChanged(TopicsChanged {
                added,
                removed,
                topics: source.topics.keys().cloned().collect(),
            })),
        })
    }

    /// When a pattern stream looks at the topic list next; `None` for one topic.
    fn next_scan(&self) -> Option<tokio::time::Instant> {
        match &self.source {
            Source::Topic(_) => None,
            Source::Pattern(source) => Some(source.next_scan),
        }
    }

    /// Waits for and returns the next event. Cancel-safe (see the type's docs).
    pub async fn next_event(&mut self) -> Result<SubscribeResponse, Status> {
        if let Some(event) = self.queued.pop_front() {
            return Ok(event);
        }
        let mut woke_empty = false;
        loop {
            if self.state.shutdown.is_triggered() {
                return Err(Status::unavailable(
                    "the broker is shutting down; subscribe again once it is back",
                ));
            }
            match &self.source {
                Source::Topic(topic) => {
                    if !self.topic_still_exists(topic) {
                        return Err(Status::not_found(format!(
                            "topic {:?} was deleted",
                            topic.name()
                        )));
                    }
                }
                Source::Pattern(source) => {
                    if tokio::time::Instant::now() >= source.next_scan
                        && let Some(event) = self.rescan()
                    {
                        return Ok(event);
                    }
                }
            }
            if !self.cursors.is_empty() {
                let round = read_round(
                    &mut self.cursors,
                    &mut self.turn,
                    self.limits,
                    Batching::OnePartition,
                    self.filter.as_deref(),
                );
                let round = match round {
                    // A topic of a pattern went: look at the list now (it drops out).
                    Err(Error::TopicDeleted { .. })
                        if matches!(self.source, Source::Pattern(_)) =>
                    {
                        if let Some(event) = self.rescan() {
                            return Ok(event);
                        }
                        // Not in the list yet: look again after the interval.
                        tokio::time::sleep(IDLE_RESCAN_BACKOFF).await;
                        continue;
                    }
                    round => round,
                };
                match convert::or_status(round)? {
                    Round::Batch {
                        batch,
                        bytes,
                        filtered,
                    } => {
                        self.state.metrics.filtered("subscribe", filtered);
                        let progress = send_progress(&batch, filtered, self.last_sent);
                        if !batch.messages.is_empty() || progress {
                            let topic = match &self.source {
                                Source::Topic(topic) => topic.name(),
                                // One partition per batch: the first names them all.
                                Source::Pattern(_) => batch
                                    .messages
                                    .first()
                                    .map(|m| m.topic.as_str())
                                    .unwrap_or_default(),
                            };
                            if !batch.messages.is_empty() {
                                self.state.metrics.fetched(
                                    topic,
                                    batch.messages.len() as u64,
                                    bytes,
                                );
                            }
                            self.last_sent = Instant::now();
                            return Ok(SubscribeResponse {
                                event: Some(Event::Batch(batch)),
                            });
                        }
                        if filtered.skipped > 0 {
                            // The filter skipped messages and may have more to look
                            // at: read on, letting other tasks run first.
                            tokio::task::yield_now().await;
                            woke_empty = false;
                            continue;
                        }
                    }
                    Round::OutOfRange {
                        index,
                        partition,
                        requested,
                        log_start,
                        end,
                    } => return self.reset(index, partition, requested, log_start, end),
                }
            }
            if woke_empty {
                // Woken with nothing to read: a partition was poisoned (its wait
                // resolves at once from now on). Stop waiting on such partitions.
                let label = match &self.source {
                    Source::Topic(topic) => topic.name(),
                    Source::Pattern(_) => "",
                };
                for (cursor, parked) in self.cursors.iter().zip(&mut self.parked) {
                    if !*parked && cursor.partition.poisoned().is_some() {
                        tracing::warn!(
                            topic = cursor.topic.as_deref().unwrap_or(label),
                            partition = cursor.partition.id(),
                            "partition is poisoned: the subscription stops waiting for it"
                        );
                        *parked = true;
                    }
                }
            }
            let next_scan = self.next_scan();
            let mut waits: Vec<_> = self
                .cursors
                .iter()
                .zip(&self.parked)
                .filter(|(_, parked)| !**parked)
                .map(|(c, _)| c.partition.wait_for_data(c.position))
                .collect();
            let any_data = poll_fn(|cx| {
                for wait in &mut waits {
                    if Pin::new(wait).poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                }
                Poll::Pending
            });
            let rescan = async {
                match next_scan {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = any_data => { woke_empty = true; }
                _ = rescan => { woke_empty = false; }
                _ = self.state.shutdown.wait() => { woke_empty = true; }
            }
        }
    }

    /// The one topic's name; empty for a pattern.
    fn topic_label(&self) -> &str {
        match &self.source {
            Source::Topic(topic) => topic.name(),
            Source::Pattern(_) => "",
        }
    }

    fn topic_still_exists(&self, topic: &Arc<Topic>) -> bool {
        self.state
            .store
            .topic(topic.name())
            .is_ok_and(|t| t.is_same_topic(topic))
    }

    /// Applies the reset policy to the cursor at `index` (of `partition`), whose
    /// position `requested` is outside `log_start..=end`: the PositionReset event, or
    /// OUT_OF_RANGE with `RESET_POLICY_ERROR`.
    fn reset(
        &mut self,
        index: usize,
        partition: u32,
        requested: u64,
        log_start: u64,
        end: u64,
    ) -> Result<SubscribeResponse, Status> {
        let (reason, label) = if requested < log_start {
            (ResetReason::BelowLogStart, "below_log_start")
        } else {
            (ResetReason::AboveEndOffset, "above_end_offset")
        };
        let topic = match self.cursors.get(index).and_then(|c| c.topic.clone()) {
            Some(topic) => topic.to_string(),
            None => self.topic_label().to_string(),
        };
        let to_offset = match self.reset_policy {
            ResetPolicy::Latest => end,
            ResetPolicy::Error => {
                return Err(convert::status(&Error::OffsetOutOfRange {
                    partition: format!("{topic}/{partition}"),
                    requested,
                    log_start,
                    end,
                }));
            }
            ResetPolicy::Earliest | ResetPolicy::Unspecified => log_start,
        };
        if let Some(cursor) = self.cursors.get_mut(index) {
            cursor.position = to_offset;
        }
        self.state.metrics.position_reset(&topic, label);
        Ok(SubscribeResponse {
            event: Some(Event::PositionReset(PositionReset {
                partition,
                from_offset: Some(requested),
                to_offset,
                reason: reason as i32,
                topic: match self.source {
                    Source::Topic(_) => String::new(),
                    Source::Pattern(_) => topic,
                },
            })),
        })
    }
}

/// Runs `reader` into a bounded queue until the client goes away or the reader
/// ends, and returns the receiving side as the response stream.
pub fn spawn_subscription(
    state: &Arc<AppState>,
    mut reader: PartitionReader,
) -> ReceiverStream<Result<SubscribeResponse, Status>> {
    let (tx, rx) = mpsc::channel(SUBSCRIBE_QUEUE_EVENTS);
    let metrics = state.metrics.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let _guard = metrics.open_stream("subscribe");
        let mut final_error = None;
        loop {
            let event = tokio::select! {
                event = reader.next_event() => event,
                // The client went away while the reader waited for data.
                _ = tx.closed() => break,
            };
            if let Err(status) = &event {
                final_error = Some(status.code());
            }
            let end = event.is_err();
            if tx.send(event).await.is_err() || end {
                break;
            }
        }
        metrics.rpc_finished("Subscribe", started, final_error);
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use proptest::prelude::*;
    use proptest::test_runner::RngSeed;
    use tidelog_storage::{
        FsyncPolicy, ManualClock, NewRecord, Store, StoreOptions, TopicConfig, limits,
    };

    const START_MS: i64 = 1_700_000_000_000;
    /// Messages with a TTL live this long; the clock moves past it before reading.
    const TTL_MS: u64 = 1_000;

    #[test]
    fn read_limits_default_and_cap() {
        assert_eq!(
            ReadLimits::from_request(0, 0),
            ReadLimits {
                max_messages: READ_MESSAGES_DEFAULT,
                max_bytes: READ_BYTES_DEFAULT
            }
        );
        assert_eq!(
            ReadLimits::from_request(u32::MAX, u32::MAX),
            ReadLimits {
                max_messages: READ_MESSAGES_MAX,
                max_bytes: READ_BYTES_MAX
            }
        );
        assert_eq!(ReadLimits::from_request(3, 100).max_bytes, 100);
    }

    /// One message to append: its value size and whether it has expired by read time.
    #[derive(Debug, Clone, Copy)]
    struct Message {
        bytes: usize,
        expires: bool,
        /// The value of its `tag` header, for the filters.
        tag: u8,
    }

    fn live(bytes: usize) -> Message {
        Message {
            bytes,
            expires: false,
            tag: 0,
        }
    }

    fn tagged(bytes: usize, tag: u8) -> Message {
        Message {
            bytes,
            expires: false,
            tag,
        }
    }

    /// The value of `partition`'s message at `offset`: both first, so a wrong message
    /// shows, then filler.
    fn value(partition: u32, offset: u64, bytes: usize) -> Bytes {
        let mut value = format!("{partition}/{offset}/").into_bytes();
        value.resize(bytes.max(value.len()), b'x');
        value.truncate(bytes);
        Bytes::from(value)
    }

    /// A store (in a temporary directory) with one topic whose partitions hold
    /// `partitions`' messages, appended `per_batch` at a time, expired ones already past
    /// their TTL.
    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        topic: Arc<Topic>,
        /// Per partition: (offset, value bytes) of every message that has not expired.
        live: Vec<Vec<(u64, usize)>>,
        /// Per partition: the tag of each message of `live`.
        tags: Vec<Vec<u8>>,
    }

    impl Fixture {
        fn new(partitions: &[Vec<Message>], per_batch: usize) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let clock = ManualClock::new(START_MS);
            let store = Store::open(
                dir.path(),
                StoreOptions {
                    clock: clock.clone(),
                    flush_threads: 1,
                    retention_interval: None,
                    ..StoreOptions::default()
                },
            )
            .unwrap();
            let config = TopicConfig {
                fsync: FsyncPolicy::Never,
                max_message_bytes: limits::MESSAGE_BYTES_MAX,
                segment_bytes: 4 << 20,
                retention_ms: None,
                ..TopicConfig::default()
            };
            let topic = store
                .create_topic("t", partitions.len() as u32, config)
                .unwrap();
            let mut live = Vec::new();
            let mut tags = Vec::new();
            for (id, messages) in partitions.iter().enumerate() {
                let partition = topic.partition(id as u32).unwrap();
                let mut kept = Vec::new();
                let mut kept_tags = Vec::new();
                let mut offset = 0u64;
                for chunk in messages.chunks(per_batch.max(1)) {
                    let records: Vec<NewRecord> = chunk
                        .iter()
                        .zip(offset..)
                        .map(|(m, o)| NewRecord {
                            value: value(id as u32, o, m.bytes),
                            ttl_ms: Some(if m.expires { TTL_MS } else { 0 }),
                            // Tag 0 is no header.
                            headers: (m.tag > 0)
                                .then(|| tidelog_storage::Header {
                                    key: "tag".into(),
                                    value: Bytes::from(m.tag.to_string()),
                                })
                                .into_iter()
                                .collect(),
                            ..NewRecord::default()
                        })
                        .collect();
                    partition.append(&records).unwrap();
                    for m in chunk {
                        if !m.expires {
                            kept.push((offset, m.bytes));
                            kept_tags.push(m.tag);
                        }
                        offset += 1;
                    }
                }
                live.push(kept);
                tags.push(kept_tags);
            }
            clock.advance_ms(TTL_MS as i64 + 1);
            Fixture {
                _dir: dir,
                store,
                topic,
                live,
                tags,
            }
        }

        /// The live messages `matches` keeps, per partition.
        fn expected(&self, matches: Option<fn(u8) -> bool>) -> Vec<Vec<(u64, usize)>> {
            self.live
                .iter()
                .zip(&self.tags)
                .map(|(live, tags)| {
                    live.iter()
                        .zip(tags)
                        .filter(|(_, tag)| matches.is_none_or(|m| m(**tag)))
                        .map(|(message, _)| *message)
                        .collect()
                })
                .collect()
        }

        fn cursors(&self) -> Vec<Cursor> {
            self.topic
                .partitions()
                .iter()
                .map(|p| Cursor::new(p.clone(), 0))
                .collect()
        }
    }

    /// Runs [`read_round`] over every partition of `fixture` from offset 0 until all
    /// are at their end, checking every batch: within `limits` (a batch of one message
    /// may be over the bytes), one partition per batch with `OnePartition`, positions
    /// that match what was read, no partition with data passed over for more rounds
    /// than there are partitions, and no round without progress while data is left.
    /// Then every live message was delivered once, in order, and nothing else.
    fn drain(fixture: &Fixture, limits: ReadLimits, batching: Batching) -> Result<(), String> {
        drain_filtered(fixture, limits, batching, None)
    }

    /// [`drain`] with a filter, given as its text and the tags it matches: exactly the
    /// live messages it matches come, in order, and the positions pass the others.
    fn drain_filtered(
        fixture: &Fixture,
        limits: ReadLimits,
        batching: Batching,
        filter: Option<TagFilter>,
    ) -> Result<(), String> {
        let parsed = filter.map(|(text, _)| Filter::parse(text).unwrap());
        let expected = fixture.expected(filter.map(|(_, matches)| matches));
        let mut cursors = fixture.cursors();
        let count = cursors.len();
        let ends: Vec<u64> = cursors.iter().map(|c| c.partition.end_offset()).collect();
        let total: usize = fixture.live.iter().map(Vec::len).sum();
        let mut delivered: Vec<Vec<(u64, usize)>> = vec![Vec::new(); count];
        // Rounds in a row each partition had live data left and did not move.
        let mut passed_over = vec![0usize; count];
        let mut turn = 0;
        for round in 0.. {
            if cursors.iter().zip(&ends).all(|(c, end)| c.position == *end) {
                break;
            }
            if round > 2 * (total + count) + 2 {
                return Err(format!("stalled at {:?}", positions(&cursors)));
            }
            let before = positions(&cursors);
            let read = read_round(&mut cursors, &mut turn, limits, batching, parsed.as_ref())
                .map_err(|e| format!("round {round}: {e}"))?;
            let Round::Batch { batch, bytes, .. } = read else {
                return Err(format!("round {round}: {read:?}"));
            };
            let n = batch.messages.len();
            if n as u64 > u64::from(limits.max_messages.max(1)) {
                return Err(format!(
                    "{n} messages for a limit of {}",
                    limits.max_messages
                ));
            }
            let sum: u64 = batch
                .messages
                .iter()
                .map(|m| {
                    let headers: usize =
                        m.headers.iter().map(|h| h.key.len() + h.value.len()).sum();
                    (m.value.len() + headers) as u64
                })
                .sum();
            if sum != bytes {
                return Err(format!(
                    "the round says {bytes} B, its messages hold {sum} B"
                ));
            }
            if n > 1 && bytes > limits.max_bytes {
                return Err(format!(
                    "{n} messages of {bytes} B for a budget of {} B",
                    limits.max_bytes
                ));
            }
            if batching == Batching::OnePartition
                && batch
                    .messages
                    .iter()
                    .any(|m| m.partition != batch.messages[0].partition)
            {
                return Err("a OnePartition batch with several partitions".into());
            }
            for m in &batch.messages {
                let expected = value(m.partition, m.offset, m.value.len());
                if m.value != expected {
                    return Err(format!("{}/{} has the wrong value", m.partition, m.offset));
                }
                delivered[m.partition as usize].push((m.offset, m.value.len()));
            }
            let after = positions(&cursors);
            for p in &batch.positions {
                if after[p.partition as usize] != p.next_offset {
                    return Err(format!("position {p:?}, cursor at {after:?}"));
                }
            }
            for (index, cursor) in cursors.iter().enumerate() {
                let moved = after[index] != before[index];
                let had_data = expected[index].iter().any(|(o, _)| *o >= before[index]);
                let batch_has_it = batch
                    .positions
                    .iter()
                    .any(|p| p.partition as usize == index);
                if moved != batch_has_it {
                    return Err(format!(
                        "partition {index} moved {moved}, in positions {batch_has_it}"
                    ));
                }
                passed_over[index] = if had_data && !moved {
                    passed_over[index] + 1
                } else {
                    0
                };
                if passed_over[index] > count {
                    return Err(format!(
                        "partition {index} at {} passed over {} rounds in a row",
                        cursor.position, passed_over[index]
                    ));
                }
            }
            if n == 0
                && after == before
                && fixture
                    .live
                    .iter()
                    .zip(&after)
                    .any(|(l, p)| l.iter().any(|(o, _)| o >= p))
            {
                return Err(format!("round {round} made no progress at {after:?}"));
            }
        }
        if delivered != expected {
            return Err(format!(
                "delivered {:?}, expected {:?}",
                offsets(&delivered),
                offsets(&expected)
            ));
        }
        Ok(())
    }

    fn positions(cursors: &[Cursor]) -> Vec<u64> {
        cursors.iter().map(|c| c.position).collect()
    }

    fn offsets(messages: &[Vec<(u64, usize)>]) -> Vec<Vec<u64>> {
        messages
            .iter()
            .map(|p| p.iter().map(|(o, _)| *o).collect())
            .collect()
    }

    fn limits(max_messages: u32, max_bytes: u64) -> ReadLimits {
        ReadLimits {
            max_messages,
            max_bytes,
        }
    }

    const BOTH: [Batching; 2] = [Batching::OnePartition, Batching::Fill];

    /// A filter's text and the tags it matches.
    type TagFilter = (&'static str, fn(u8) -> bool);

    /// Filters on the `tag` header (absent for tag 0) and the tags each matches.
    const FILTERS: [TagFilter; 6] = [
        ("header.tag == 1", |t| t == 1),
        ("header.tag in (0, 2)", |t| t == 2),
        ("header.tag >= 2 && !exists(header.none)", |t| t >= 2),
        ("header.tag != 3", |t| t != 3),
        // The values are not JSON: nothing matches.
        ("json.x == 1 || header.tag == 9", |_| false),
        ("exists(header.tag)", |t| t != 0),
    ];

    #[test]
    fn one_percent_of_large_and_small_messages_match_and_every_one_comes() {
        // 3 KB and 600 KB messages, one in a hundred tagged 1; budgets around both.
        let partition = |bytes: usize, count: usize| -> Vec<Message> {
            (0..count)
                .map(|i| tagged(bytes, u8::from(i % 100 == 37)))
                .collect()
        };
        let fixture = Fixture::new(&[partition(3000, 2000), partition(600 * 1024, 200)], 20);
        let filter: Option<TagFilter> = Some(("header.tag == 1", |t| t == 1));
        for batching in BOTH {
            for (max_messages, max_bytes) in [(0, 0), (1, 1), (500, 1 << 20), (3, 700 * 1024)] {
                drain_filtered(
                    &fixture,
                    ReadLimits::from_request(max_messages, max_bytes),
                    batching,
                    filter,
                )
                .unwrap();
            }
        }
    }

    #[test]
    fn a_filter_that_skips_everything_moves_the_positions_to_the_end_in_bounded_reads() {
        let fixture = Fixture::new(&[vec![tagged(10, 2); 40_000]], 1000);
        let filter = Filter::parse("header.tag == 1").unwrap();
        let mut cursors = fixture.cursors();
        let mut rounds = 0;
        let mut skipped = 0;
        while cursors[0].position < 40_000 {
            let Round::Batch {
                batch, filtered, ..
            } = read_round(
                &mut cursors,
                &mut 0,
                limits(500, 1 << 20),
                Batching::Fill,
                Some(&filter),
            )
            .unwrap()
            else {
                panic!("a batch");
            };
            assert!(batch.messages.is_empty());
            assert_eq!(batch.positions[0].next_offset, cursors[0].position);
            skipped += filtered.skipped;
            rounds += 1;
        }
        assert_eq!(skipped, 40_000);
        // Each round scans at most the storage's limit.
        assert_eq!(
            rounds,
            40_000u32.div_ceil(tidelog_storage::limits::FILTER_SCAN_RECORDS_MAX)
        );
    }

    #[test]
    fn three_kb_messages_with_the_default_budget_come_whole_and_in_order() {
        let fixture = Fixture::new(&vec![vec![live(3000); 700]; 3], 50);
        for batching in BOTH {
            drain(&fixture, ReadLimits::from_request(0, 0), batching).unwrap();
            drain(&fixture, ReadLimits::from_request(0, 2500), batching).unwrap();
            drain(&fixture, ReadLimits::from_request(7, 10_000), batching).unwrap();
        }
    }

    #[test]
    fn a_message_over_the_budget_comes_alone_and_never_stalls_a_partition() {
        // 600 KB messages beside 1 B ones, budgets under, between and over them.
        let partitions = vec![
            vec![live(600 * 1024); 6],
            vec![live(1); 40],
            [
                live(1),
                live(600 * 1024),
                live(1),
                live(0),
                live(600 * 1024),
            ]
            .repeat(3),
        ];
        let fixture = Fixture::new(&partitions, 2);
        for batching in BOTH {
            for max_bytes in [0, 1, 2, 1000, 600 * 1024, 1 << 20, READ_BYTES_MAX] {
                for max_messages in [1, 3, READ_MESSAGES_DEFAULT] {
                    drain(&fixture, limits(max_messages, max_bytes), batching)
                        .map_err(|e| format!("{batching:?} {max_messages} {max_bytes}: {e}"))
                        .unwrap();
                }
            }
        }
    }

    #[test]
    fn a_filled_batch_stops_at_the_first_message_over_what_is_left() {
        // Two partitions of 1,000 B messages and 2,500 B per batch: the first partition
        // gives two, the second's first would take the batch to 3,000 B. It stays for
        // the next batch, which starts with it.
        let fixture = Fixture::new(&vec![vec![live(1000); 4]; 2], 4);
        let mut cursors = fixture.cursors();
        let mut turn = 0;
        let mut batches = Vec::new();
        for _ in 0..4 {
            match read_round(
                &mut cursors,
                &mut turn,
                limits(100, 2500),
                Batching::Fill,
                None,
            )
            .unwrap()
            {
                Round::Batch { batch, bytes, .. } => {
                    assert!(bytes <= 2500, "{bytes} B");
                    batches.push(
                        batch
                            .messages
                            .iter()
                            .map(|m| (m.partition, m.offset))
                            .collect::<Vec<_>>(),
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            batches,
            vec![
                vec![(0, 0), (0, 1)],
                vec![(1, 0), (1, 1)],
                vec![(0, 2), (0, 3)],
                vec![(1, 2), (1, 3)],
            ]
        );
        // One message of the first partition left room for the second's first.
        let mut cursors = fixture.cursors();
        let mut turn = 0;
        let Round::Batch { batch, .. } = read_round(
            &mut cursors,
            &mut turn,
            limits(100, 2000),
            Batching::Fill,
            None,
        )
        .unwrap() else {
            panic!("a batch")
        };
        assert_eq!(batch.messages.len(), 2);
        assert_eq!(positions(&cursors), vec![2, 0]);
        assert_eq!(turn, 1);
    }

    #[test]
    fn a_position_out_of_range_is_reported_unmoved_and_read_past_once_reset() {
        let fixture = Fixture::new(&vec![vec![live(10); 3]; 2], 3);
        let mut cursors = fixture.cursors();
        cursors[1].position = 9;
        let mut turn = 1;
        let round = read_round(
            &mut cursors,
            &mut turn,
            limits(100, 1000),
            Batching::Fill,
            None,
        );
        assert_eq!(
            round.unwrap(),
            Round::OutOfRange {
                index: 1,
                partition: 1,
                requested: 9,
                log_start: 0,
                end: 3
            }
        );
        assert_eq!(positions(&cursors), vec![0, 9]);
        assert_eq!(turn, 0);
        // Found after another partition's messages: the round ends with them, and the
        // out-of-range partition leads the next round.
        let Round::Batch { batch, .. } = read_round(
            &mut cursors,
            &mut turn,
            limits(100, 1000),
            Batching::Fill,
            None,
        )
        .unwrap() else {
            panic!("a batch")
        };
        assert_eq!(batch.messages.len(), 3);
        assert_eq!(turn, 1);
        assert!(matches!(
            read_round(
                &mut cursors,
                &mut turn,
                limits(100, 1000),
                Batching::Fill,
                None
            ),
            Ok(Round::OutOfRange { partition: 1, .. })
        ));
    }

    #[test]
    fn a_deleted_topic_fails_the_round() {
        let fixture = Fixture::new(&[vec![live(10); 3]], 3);
        let mut cursors = fixture.cursors();
        fixture.store.delete_topic("t").unwrap();
        for batching in BOTH {
            let round = read_round(&mut cursors, &mut 0, limits(100, 1000), batching, None);
            assert!(
                matches!(round, Err(Error::TopicDeleted { .. })),
                "{round:?}"
            );
        }
    }

    /// A message size: mostly small, some of a few KiB (the size that exposed issue
    /// 10), a few of hundreds of KiB.
    fn message() -> impl Strategy<Value = Message> {
        let bytes = prop_oneof![
            4 => 0usize..64,
            4 => 64usize..8192,
            1 => 8192usize..700 * 1024,
        ];
        (bytes, prop::bool::weighted(0.2), 0u8..4).prop_map(|(bytes, expires, tag)| Message {
            bytes,
            expires,
            tag,
        })
    }

    fn partitions() -> impl Strategy<Value = Vec<Vec<Message>>> {
        prop::collection::vec(prop::collection::vec(message(), 0..40), 1..5)
    }

    fn read_limits() -> impl Strategy<Value = ReadLimits> {
        (
            prop_oneof![1 => Just(1u32), 4 => 1u32..40, 1 => Just(READ_MESSAGES_MAX)],
            prop_oneof![
                1 => Just(0u64),
                3 => 1u64..8192,
                2 => 8192u64..(2 << 20),
            ],
        )
            .prop_map(|(max_messages, max_bytes)| limits(max_messages, max_bytes))
    }

    proptest! {
        // A fixed seed: the same cases every run.
        #![proptest_config(ProptestConfig {
            cases: 32,
            rng_seed: RngSeed::Fixed(11),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Random messages, filters and budgets: following the positions yields exactly
        /// the live messages the filter matches, in order, within the budget, and no
        /// partition stalls behind skipped messages.
        #[test]
        fn exactly_the_matching_messages_in_order_within_the_budget(
            partitions in partitions(),
            per_batch in 1usize..8,
            limits in read_limits(),
            filter in prop::sample::select(FILTERS.to_vec()),
        ) {
            let fixture = Fixture::new(&partitions, per_batch);
            for batching in BOTH {
                if let Err(error) = drain_filtered(&fixture, limits, batching, Some(filter)) {
                    prop_assert!(false, "{:?} {:?} {}: {}", batching, limits, filter.0, error);
                }
            }
        }

        /// Random message sizes, expired messages, partitions and budgets: both kinds
        /// of batch deliver every live message once and in order within the budget.
        #[test]
        fn every_live_message_once_in_order_within_the_budget(
            partitions in partitions(),
            per_batch in 1usize..8,
            limits in read_limits(),
        ) {
            let fixture = Fixture::new(&partitions, per_batch);
            for batching in BOTH {
                if let Err(error) = drain(&fixture, limits, batching) {
                    prop_assert!(false, "{:?} {:?}: {}", batching, limits, error);
                }
            }
        }
    }
}
