//! [`PartitionReader`]: the plain Subscribe (one topic or a pattern's topics) around
//! [`super::read_round`], the plain SubscribeBatches as its [`BatchForm`] (the same
//! reader, reading stored batches with [`super::batches::read_partition`]), and
//! [`spawn_subscription`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use tidelog_proto::v1::{
    PartitionPosition, PositionReset, Positioned, ResetPolicy, ResetReason,
    SubscribeBatchesResponse, SubscribeResponse, TopicsChanged, start_position,
    subscribe_batches_response, subscribe_response::Event,
};
use tidelog_storage::{Error, Filter, Partition, Topic, TopicId, TopicPattern, WaitForAnyData};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::AppState;
use crate::convert;

use super::batches::{delivered, goes_out, read_partition, record_batches};
use super::{
    Batching, Cursor, IDLE_RESCAN_BACKOFF, ReadLimits, Round, SUBSCRIBE_QUEUE_EVENTS,
    TOPIC_RESCAN_INTERVAL, TopicAccess, batch_goes_out, read_round,
};

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
    /// Under `--auth`: only topics the caller may consume match.
    access: Option<TopicAccess>,
    /// Read topics by name, with the number of their partitions read.
    topics: BTreeMap<String, (Arc<Topic>, usize)>,
    /// Topics the caller's rights stopped matching (`--auth`), with their cursors as
    /// they were and the number of partitions read: when the rights come back, the
    /// stream goes on where it stood (never twice on one stream). Dropped when the
    /// topic is deleted or stops matching.
    withheld: BTreeMap<String, (Arc<Topic>, usize, Vec<Cursor>)>,
    /// Where partitions that appear after the start begin.
    later: LaterStart,
    /// When to look at the topic list next.
    next_scan: tokio::time::Instant,
}

/// A one-topic stream that reads every partition of its topic, as the count grows
/// (Subscribe with `partitions` empty, or a resume with `follow_partitions_from`).
#[derive(Debug)]
struct Follow {
    /// Partitions numbered below it that the stream does not read stay unread (a
    /// resume that left them out); 0 when it reads them all.
    from: u32,
    /// Partitions numbered below `from` read too once they appear: a resume listed
    /// them in a topic deleted since, and the topic of the name now has none of that
    /// number yet ([`PartitionReader::awaiting`]).
    also: std::collections::BTreeSet<u32>,
    /// The partition count the stream has looked at: partitions numbered from it on
    /// are new to the stream.
    known: usize,
    /// Where a new partition begins.
    later: LaterStart,
}

/// Where a stream starts reading a topic (or partition) that appeared after the
/// stream started: every message in it is new to the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaterStart {
    /// The log start.
    Earliest,
    /// The first message at or after this timestamp (ms), the end if none.
    Timestamp(i64),
}

impl LaterStart {
    /// Where partitions new to a stream begin, for a stream whose `start` is
    /// `position`: from that time with a timestamp start, else from the log start
    /// (everything in them was published after the stream started, so a `latest` or
    /// offset start skips nothing of them).
    pub fn for_start(position: Option<&start_position::Position>) -> Self {
        match position {
            Some(start_position::Position::TimestampMs(ms)) => LaterStart::Timestamp(*ms),
            _ => LaterStart::Earliest,
        }
    }

    /// Where a partition that joins the read starts; 0 for one recovery refused to
    /// open (no position is taken from it: its first read fails with UNAVAILABLE).
    fn offset(self, partition: &Partition) -> u64 {
        let Ok((log_start, end)) = partition.bounds() else {
            return 0;
        };
        match self {
            LaterStart::Earliest => log_start,
            LaterStart::Timestamp(ms) => match partition.offset_for_timestamp(ms) {
                Ok(Some(offset)) => offset,
                // Nothing at or after it, or unreadable (the read reports it).
                Ok(None) => end,
                Err(_) => log_start,
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
/// - On every partition of one topic ([`PartitionReader::following`]) it reads a
///   partition CreatePartitions adds from its [`LaterStart`], at once (woken through
///   [`super::TopicChanges`]); no event tells of it, its messages and positions do.
/// - On a pattern ([`PartitionReader::with_pattern`]) it looks at the topic list every
///   [`TOPIC_RESCAN_INTERVAL`] (and at once when a read finds a topic deleted, or
///   [`super::TopicChanges`] tells of a created, deleted or grown topic): a
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
    /// [`SKIP_PROGRESS_INTERVAL`] without one.
    last_sent: Instant,
    /// Events to return before any read (TopicsChanged, Positioned).
    queued: VecDeque<SubscribeResponse>,
    /// Reads stored batches, one partition's per event ([`BatchForm`]), instead of
    /// messages.
    batch_form: bool,
    /// Reads the partitions added to its one topic while it runs.
    follow: Option<Follow>,
    /// Wakes the reader when a topic is created, deleted or grows.
    topic_changes: watch::Receiver<()>,
}

/// A partition a resume named with the id of a topic deleted since: read from the
/// new topic's log start instead ([`PartitionReader::tell_recreated`]).
#[derive(Debug)]
pub struct Recreated {
    pub topic: String,
    /// The new topic's id.
    pub topic_id: TopicId,
    pub partition: u32,
    /// The offset the resume asked for (a position in the deleted topic).
    pub from_offset: u64,
    /// Where the new topic's partition is read from.
    pub to_offset: u64,
}

/// What the reader's next step produced.
enum Step {
    /// A Subscribe event: messages, or an event both forms share.
    Event(SubscribeResponse),
    /// Stored batches of one partition (batch form only).
    Batches(SubscribeBatchesResponse),
}

/// What one batch-form read of the partitions found.
enum BatchRead {
    Send(Step),
    /// Every partition is caught up.
    Idle,
    /// A pattern's topic went: look at the topic list.
    TopicGone,
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
        let topic_changes = state.topic_changes.watch();
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
            batch_form: false,
            follow: None,
            topic_changes,
        })
    }

    /// Makes a one-topic reader follow the topic's partition count: it also reads the
    /// partitions numbered `from` or more that exist now and it was not given
    /// (from their log start: none of their messages was delivered to this stream),
    /// and every partition added while it runs, from `later`. With `from` 0 and every
    /// partition given, it reads the whole topic as it grows.
    pub fn following(mut self, from: u32, later: LaterStart) -> Self {
        let Source::Topic(topic) = &self.source else {
            return self;
        };
        let read: std::collections::HashSet<u32> =
            self.cursors.iter().map(|c| c.partition.id()).collect();
        for partition in topic.partitions() {
            if partition.id() >= from && !read.contains(&partition.id()) {
                let start = LaterStart::Earliest.offset(partition);
                self.cursors.push(Cursor::new(partition.clone(), start));
                self.parked.push(false);
            }
        }
        self.follow = Some(Follow {
            from,
            also: std::collections::BTreeSet::new(),
            known: topic.partitions().len(),
            later,
        });
        self
    }

    /// Makes a one-topic reader also read `partitions` from their log start when
    /// CreatePartitions adds them: partitions a resume listed in a topic deleted
    /// since, which the new topic of the name does not have (yet). Every message they
    /// will hold is new to the stream, so they are read whatever the resume's
    /// `follow_partitions_from` says.
    pub fn awaiting(mut self, partitions: std::collections::BTreeSet<u32>) -> Self {
        if partitions.is_empty() {
            return self;
        }
        if self.follow.is_none() {
            // Only these: none numbered from u32::MAX on can exist.
            self = self.following(u32::MAX, LaterStart::Earliest);
        }
        if let Some(follow) = &mut self.follow {
            follow.also.extend(partitions);
        }
        self
    }

    /// A following reader ([`PartitionReader::following`]): adds cursors for the
    /// partitions its topic gained since it last looked.
    fn take_new_partitions(&mut self) {
        let (Source::Topic(topic), Some(follow)) = (&mut self.source, &mut self.follow) else {
            return;
        };
        let Ok(now) = self.state.store.topic(topic.name()) else {
            return;
        };
        if !now.is_same_topic(topic) || now.partitions().len() <= follow.known {
            return;
        }
        for partition in now.partitions().iter().skip(follow.known) {
            if partition.id() >= follow.from || follow.also.contains(&partition.id()) {
                let start = follow.later.offset(partition);
                tracing::debug!(
                    topic = now.name(),
                    partition = partition.id(),
                    start,
                    "subscription reads a new partition"
                );
                self.cursors.push(Cursor::new(partition.clone(), start));
                self.parked.push(false);
            }
        }
        follow.known = now.partitions().len();
        *topic = now;
    }

    /// A reader of every topic `pattern` matches (and `access`, if any, lets
    /// through): `initial` are the topics matched at the start with the first offset
    /// of each of their partitions (all of them); topics and partitions that appear
    /// later start at `later`. The first event is a [`TopicsChanged`] naming the
    /// initial topics (possibly none).
    #[allow(clippy::too_many_arguments)] // reason: each is one setting of the stream
    pub fn with_pattern(
        state: Arc<AppState>,
        pattern: Arc<TopicPattern>,
        access: Option<TopicAccess>,
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
        let topic_changes = state.topic_changes.watch();
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
                access,
                topics,
                withheld: BTreeMap::new(),
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
            batch_form: false,
            follow: None,
            topic_changes,
        }
    }

    /// Makes the first event (after a pattern stream's TopicsChanged) a [`Positioned`]
    /// naming where delivery starts in every partition: a start out of the log is
    /// moved by the reset policy first, and its PositionReset (from the start asked
    /// for) follows the Positioned event; with `RESET_POLICY_ERROR` it is OUT_OF_RANGE.
    pub fn announce_positions(mut self) -> Result<Self, Status> {
        let mut resets = Vec::new();
        for index in 0..self.cursors.len() {
            let cursor = &self.cursors[index];
            // Other errors come with the first read.
            if let Err(Error::OffsetOutOfRange {
                requested,
                log_start,
                end,
                ..
            }) = cursor.partition.check_offset(cursor.position)
            {
                let partition = cursor.partition.id();
                resets.push(self.reset(index, partition, requested, log_start, end)?);
            }
        }
        // A partition recovery refused to open fails the subscription (UNAVAILABLE
        // naming it), as its first read would: it has no end to announce.
        let positions = self
            .cursors
            .iter()
            .map(|c| {
                Ok(PartitionPosition {
                    partition: c.partition.id(),
                    next_offset: c.position,
                    end_offset: convert::or_status(c.partition.end_offset())?,
                    topic: c.topic_name(),
                    topic_id: c.partition.topic_id().get(),
                })
            })
            .collect::<Result<_, Status>>()?;
        self.queued.push_back(SubscribeResponse {
            event: Some(Event::Positioned(Positioned { positions })),
        });
        self.queued.extend(resets);
        Ok(self)
    }

    /// Tells, after the events queued so far, of each partition a resume named with
    /// the id of a topic deleted since (`PartitionStart.topic_id`): a PositionReset
    /// with [`ResetReason::TopicRecreated`] from the offset asked for to where the
    /// partition of the new topic starts (its log start, given to the reader as its
    /// start). Counted in the resets metric.
    pub fn tell_recreated(mut self, recreated: Vec<Recreated>) -> Self {
        for Recreated {
            topic,
            topic_id,
            partition,
            from_offset,
            to_offset,
        } in recreated
        {
            self.state
                .metrics
                .position_reset(&topic, ResetReason::TopicRecreated);
            self.queued.push_back(SubscribeResponse {
                event: Some(Event::PositionReset(PositionReset {
                    partition,
                    from_offset: Some(from_offset),
                    to_offset,
                    reason: ResetReason::TopicRecreated as i32,
                    topic: match self.source {
                        Source::Topic(_) => String::new(),
                        Source::Pattern(_) => topic,
                    },
                    topic_id: topic_id.get(),
                })),
            });
        }
        self
    }

    /// The reader in batch form, for `SubscribeBatches` without a group: each data
    /// event is the stored batches of one partition (partitions taking turns), as a
    /// RecordBatches whose position names its topic on a pattern stream; the other
    /// events are the same.
    pub fn in_batch_form(mut self) -> BatchForm {
        self.batch_form = true;
        BatchForm(self)
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
    /// its start). A topic the caller's rights no longer allow is set aside with its
    /// cursors and, allowed again, goes on from them (see `withheld`). The change as a
    /// TopicsChanged event, `None` when nothing changed.
    fn rescan(&mut self) -> Option<SubscribeResponse> {
        let Source::Pattern(source) = &mut self.source else {
            return None;
        };
        source.next_scan = tokio::time::Instant::now() + TOPIC_RESCAN_INTERVAL;
        let matching: BTreeMap<String, Arc<Topic>> = self
            .state
            .store
            .topics()
            .into_iter()
            .filter(|t| source.pattern.matches(t.name()))
            .map(|t| (t.name().to_string(), t))
            .collect();
        let allowed = |name: &str| source.access.as_ref().is_none_or(|a| a.allows(name));
        let still =
            |name: &str, old: &Arc<Topic>| matching.get(name).is_some_and(|t| t.is_same_topic(old));
        // A withheld topic that was deleted (or created again) starts afresh if it
        // comes back.
        source.withheld.retain(|name, (old, _, _)| still(name, old));
        let removed: Vec<String> = source
            .topics
            .iter()
            .filter(|(name, (old, _))| !(still(name, old) && allowed(name)))
            .map(|(name, _)| name.clone())
            .collect();
        let mut changed_cursors = false;
        for name in &removed {
            let Some((old, read)) = source.topics.remove(name) else {
                continue;
            };
            let before = self.cursors.len();
            let (gone, kept): (Vec<Cursor>, Vec<Cursor>) = std::mem::take(&mut self.cursors)
                .into_iter()
                .partition(|c| c.topic.as_deref() == Some(name.as_str()));
            self.cursors = kept;
            changed_cursors |= self.cursors.len() != before;
            if still(name, &old) {
                source.withheld.insert(name.clone(), (old, read, gone));
            }
        }
        let mut added = Vec::new();
        for (name, topic) in matching {
            if !allowed(&name) {
                continue;
            }
            let (read, first_new) = match source.topics.get(&name) {
                Some((_, read)) => (*read, *read),
                None => {
                    added.push(name.clone());
                    match source.withheld.remove(&name) {
                        // Allowed again: on from where it stood.
                        Some((_, read, cursors)) => {
                            changed_cursors |= !cursors.is_empty();
                            self.cursors.extend(cursors);
                            (read, read)
                        }
                        None => (0, 0),
                    }
                }
            };
            let count = topic.partitions().len();
            if count <= read && read > 0 {
                source.topics.insert(name, (topic, read));
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
        match self.next_step().await? {
            Step::Event(event) => Ok(event),
            Step::Batches(_) => Err(Status::internal(
                "a batch-form reader was read as a Subscribe stream",
            )),
        }
    }

    /// The next event of either form. Cancel-safe.
    async fn next_step(&mut self) -> Result<Step, Status> {
        if let Some(event) = self.queued.pop_front() {
            return Ok(Step::Event(event));
        }
        let mut woke_empty = false;
        let mut topics_changed = false;
        loop {
            if self.state.shutdown.is_triggered() {
                return Err(crate::shutdown::unavailable(
                    "subscribe again once it is back",
                ));
            }
            if std::mem::take(&mut topics_changed)
                || self.topic_changes.has_changed().unwrap_or(false)
            {
                self.topic_changes.mark_unchanged();
                match &mut self.source {
                    Source::Topic(_) => self.take_new_partitions(),
                    Source::Pattern(source) => source.next_scan = tokio::time::Instant::now(),
                }
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
                        return Ok(Step::Event(event));
                    }
                }
            }
            if self.batch_form && !self.cursors.is_empty() {
                match self.read_batches()? {
                    BatchRead::Send(step) => return Ok(step),
                    BatchRead::Idle => {}
                    BatchRead::TopicGone => {
                        if let Some(event) = self.rescan() {
                            return Ok(Step::Event(event));
                        }
                        tokio::time::sleep(IDLE_RESCAN_BACKOFF).await;
                        continue;
                    }
                }
            } else if !self.cursors.is_empty() {
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
                            return Ok(Step::Event(event));
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
                        if batch_goes_out(
                            &mut self.cursors,
                            &batch,
                            &mut self.last_sent,
                            Instant::now(),
                        ) {
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
                            return Ok(Step::Event(SubscribeResponse {
                                event: Some(Event::Batch(batch)),
                            }));
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
                    } => {
                        return self
                            .reset(index, partition, requested, log_start, end)
                            .map(Step::Event);
                    }
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
            let any_data = WaitForAnyData::new(
                self.cursors
                    .iter()
                    .zip(&self.parked)
                    .filter(|(_, parked)| !**parked)
                    .map(|(c, _)| c.partition.wait_for_data(c.position)),
            );
            let rescan = async {
                match next_scan {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let watch_topics = self.follow.is_some() || self.next_scan().is_some();
            let changes = &mut self.topic_changes;
            let topic_change = async {
                // The sender lives in AppState, which this reader holds: it never
                // closes, but if it did the reader would wait on the rest.
                if !watch_topics || changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = any_data => { woke_empty = true; }
                _ = rescan => { woke_empty = false; }
                _ = topic_change => { woke_empty = false; topics_changed = true; }
                _ = self.state.shutdown.wait() => { woke_empty = true; }
            }
        }
    }

    /// The batch form's data step: the stored batches of the next partition (in turn)
    /// that has any, or whose position moved past records it will never send (expired,
    /// or refused by the filter), as one RecordBatches.
    fn read_batches(&mut self) -> Result<BatchRead, Status> {
        let count = self.cursors.len();
        for step in 0..count {
            let index = (self.turn + step) % count;
            let cursor = &self.cursors[index];
            let from = cursor.position;
            let id = cursor.partition.id();
            let read = read_partition(&cursor.partition, from, self.limits, self.filter.as_deref());
            let result = match read {
                Ok(result) => result,
                Err(Error::OffsetOutOfRange {
                    requested,
                    log_start,
                    end,
                    ..
                }) => {
                    self.turn = (index + 1) % count;
                    return self
                        .reset(index, id, requested, log_start, end)
                        .map(|event| BatchRead::Send(Step::Event(event)));
                }
                Err(Error::TopicDeleted { .. }) if matches!(self.source, Source::Pattern(_)) => {
                    return Ok(BatchRead::TopicGone);
                }
                Err(error) => return Err(convert::status(&error)),
            };
            self.state.metrics.filtered("subscribe", result.filtered);
            self.cursors[index].position = result.next_offset;
            if !goes_out(&result, from) {
                continue;
            }
            self.turn = (index + 1) % count;
            let cursor = &self.cursors[index];
            let topic = match &cursor.topic {
                Some(topic) => topic.to_string(),
                None => String::new(),
            };
            let (records, bytes) = delivered(&result.batches);
            let label = if topic.is_empty() {
                self.topic_label()
            } else {
                &topic
            };
            self.state.metrics.fetched(label, records, bytes);
            self.last_sent = Instant::now();
            return Ok(BatchRead::Send(Step::Batches(record_batches(
                &self.cursors[index].partition,
                result,
                &topic,
            ))));
        }
        Ok(BatchRead::Idle)
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
        let reason = if requested < log_start {
            ResetReason::BelowLogStart
        } else {
            ResetReason::AboveEndOffset
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
        let mut topic_id = 0;
        if let Some(cursor) = self.cursors.get_mut(index) {
            cursor.reset_to(to_offset);
            topic_id = cursor.partition.topic_id().get();
        }
        self.state.metrics.position_reset(&topic, reason);
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
                topic_id,
            })),
        })
    }
}

/// What a server stream reads its events from: the plain Subscribe's
/// [`PartitionReader`] and the batch form's reader.
pub trait EventSource: Send + 'static {
    type Event: Send + 'static;

    /// The next event, waiting for data; an error ends the stream.
    fn next_stream_event(
        &mut self,
    ) -> impl Future<Output = Result<Self::Event, Status>> + Send + '_;
}

impl EventSource for PartitionReader {
    type Event = SubscribeResponse;

    fn next_stream_event(
        &mut self,
    ) -> impl Future<Output = Result<SubscribeResponse, Status>> + Send + '_ {
        self.next_event()
    }
}

/// A [`PartitionReader`] in batch form ([`PartitionReader::in_batch_form`]): the plain
/// `SubscribeBatches` stream, of one topic or of a pattern's topics.
#[derive(Debug)]
pub struct BatchForm(PartitionReader);

impl BatchForm {
    /// Waits for and returns the next event. Cancel-safe (see [`PartitionReader`]).
    pub async fn next_event(&mut self) -> Result<SubscribeBatchesResponse, Status> {
        use subscribe_batches_response::Event as B;
        let event = match self.0.next_step().await? {
            Step::Batches(batches) => return Ok(batches),
            Step::Event(event) => event.event,
        };
        let event = match event {
            Some(Event::TopicsChanged(changed)) => Some(B::TopicsChanged(changed)),
            Some(Event::PositionReset(reset)) => Some(B::PositionReset(reset)),
            Some(Event::Positioned(positioned)) => Some(B::Positioned(positioned)),
            Some(Event::Assignment(assignment)) => Some(B::Assignment(assignment)),
            Some(Event::Batch(_)) => {
                return Err(Status::internal(
                    "a batch-form reader read messages; report this",
                ));
            }
            None => None,
        };
        Ok(SubscribeBatchesResponse { event })
    }
}

impl EventSource for BatchForm {
    type Event = SubscribeBatchesResponse;

    fn next_stream_event(
        &mut self,
    ) -> impl Future<Output = Result<SubscribeBatchesResponse, Status>> + Send + '_ {
        self.next_event()
    }
}

/// Runs `reader` into a bounded queue until the client goes away or the reader
/// ends, and returns the receiving side as the response stream: the one runner of
/// every subscription stream, counted as an open `subscribe` stream and, when it ends,
/// as an `rpc` call.
pub fn spawn_events<S: EventSource>(
    state: &Arc<AppState>,
    rpc: &'static str,
    mut reader: S,
) -> ReceiverStream<Result<S::Event, Status>> {
    let (tx, rx) = mpsc::channel(SUBSCRIBE_QUEUE_EVENTS);
    let metrics = state.metrics.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let _guard = metrics.open_stream("subscribe");
        let mut final_error = None;
        loop {
            let event = tokio::select! {
                event = reader.next_stream_event() => event,
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
        metrics.rpc_finished(rpc, started, final_error);
    });
    ReceiverStream::new(rx)
}

/// The plain Subscribe's stream ([`spawn_events`] of a [`PartitionReader`]).
pub fn spawn_subscription(
    state: &Arc<AppState>,
    reader: PartitionReader,
) -> ReceiverStream<Result<SubscribeResponse, Status>> {
    spawn_events(state, "Subscribe", reader)
}
