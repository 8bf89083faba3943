//! The caller's side of the producer: what [`super::Producer::send`] does in the
//! calling task, under one short lock per record, and the outcome each record's
//! [`super::DeliveryFuture`] waits on.
//!
//! `send` picks the partition, checks the record, gives it an id when the topic wants
//! one, reserves its bytes in the buffer and adds it to its open batch, all in the
//! caller's task: no message to the producer's task, no channel and no allocation per
//! record beyond the record itself. The producer's task is woken once per batch (when
//! one opens, for its linger, and when one is sealed full) and takes the sealed
//! batches from here to encode and send them. Every record of a batch shares the
//! batch's [`Slot`]; when the broker answers, the task fills the slot once and wakes
//! the records' futures, each of which works out its own [`Delivered`] from the answer
//! and its index in the batch (`base_offset + index`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use tidelog_proto::v1::TopicDescription;
use tidelog_storage::NewRecord;
use tidelog_storage::limits::{MESSAGE_ID_BYTES_MAX, RECORD_HEADERS_MAX};
use tidelog_storage::msgid::IdGenerator;
use tokio::sync::Notify;

use super::accumulator::{Accumulator, BatchKey, Limits, Sealed};
use super::config::IdMode;
use crate::error::{Error, Result};
use crate::record::{Delivered, Record};

/// A sealed batch of `send`'s records, as the task takes it.
pub(crate) type SealedBatch = Sealed<NewRecord, Arc<Slot>>;

/// Bytes a record holds in the buffer beyond its payload (its share of framing).
pub(crate) const RECORD_OVERHEAD_BYTES: usize = 64;

/// Encode buffers of answered batches a producer keeps for the next encodes.
pub(crate) const SPARE_BUFFERS_MAX: usize = 4;

/// Ids given between two reads of the clock (see [`Front::id_time`]).
const ID_CLOCK_READS_EVERY: u32 = 64;

/// A record for a partition past the topic's known count makes `send` describe the
/// topic again (partitions may have been added) when its description is older than
/// this; else the record is refused. At most one such describe a topic this often.
pub(crate) const REDESCRIBE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// What the producer knows of a topic (from DescribeTopic), and its sticky partition.
#[derive(Debug)]
pub(crate) struct TopicState {
    pub name: Arc<str>,
    pub partitions: u32,
    pub max_message_bytes: u64,
    pub default_ttl_ms: Option<u64>,
    pub priority_levels: u8,
    pub attach_ids: bool,
    /// The topic's dedup window, when it has one.
    pub dedup_window: Option<std::time::Duration>,
    /// When the description was read.
    pub described_at: Instant,
    sticky: u32,
}

impl TopicState {
    pub fn new(description: &TopicDescription, ids: IdMode) -> TopicState {
        let config = description.config.unwrap_or_default();
        let dedup_window = config
            .dedup_window_ms
            .filter(|&ms| ms > 0)
            .map(std::time::Duration::from_millis);
        let dedups = dedup_window.is_some() || config.assign_ids;
        let partitions = u32::try_from(description.partitions.len())
            .unwrap_or(u32::MAX)
            .max(1);
        TopicState {
            name: Arc::from(description.name.as_str()),
            partitions,
            max_message_bytes: if config.max_message_bytes == 0 {
                tidelog_storage::limits::MESSAGE_BYTES_DEFAULT
            } else {
                config.max_message_bytes
            },
            default_ttl_ms: config.default_ttl_ms.filter(|&ttl| ttl > 0),
            priority_levels: u8::try_from(config.priority_levels).unwrap_or(u8::MAX),
            attach_ids: match ids {
                IdMode::Auto => dedups,
                IdMode::Always => true,
                IdMode::Never => false,
            },
            dedup_window,
            described_at: Instant::now(),
            sticky: tidelog_storage::msgid::process_seed() as u32 % partitions,
        }
    }

    /// The record's partition, or why it cannot go anywhere.
    fn partition(&self, record: &Record) -> Result<u32> {
        match (record.partition, &record.inner.key) {
            (Some(p), _) if p >= self.partitions => Err(Error::InvalidRecord {
                reason: tidelog_storage::topic::no_such_partition(
                    &record.topic,
                    self.partitions as usize,
                    p,
                ),
            }),
            (Some(p), _) => Ok(p),
            (None, Some(key)) => Ok(tidelog_storage::partitioner::partition_for_key(
                key,
                self.partitions,
            )),
            (None, None) => Ok(self.sticky),
        }
    }

    /// Whether `partition`, past the known count, may exist by now: the description
    /// is older than [`REDESCRIBE_AFTER`], so the topic is described again before the
    /// record is refused.
    pub fn may_have_grown_to(&self, partition: u32) -> bool {
        partition >= self.partitions && self.described_at.elapsed() >= REDESCRIBE_AFTER
    }

    /// Checks the rules the broker would check on one record, so a bad record fails
    /// alone at once instead of failing the batch it would have joined.
    pub fn check(&self, record: &NewRecord) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidRecord { reason });
        // The id the producer attaches (for retries without duplicates) counts like any
        // other: the broker checks the record as it arrives.
        let attached = if self.attach_ids && record.id.is_none() {
            tidelog_storage::msgid::ASSIGNED_ID_BYTES as u64
        } else {
            0
        };
        let size = record.payload_bytes() + attached;
        if size > self.max_message_bytes {
            let id = if attached > 0 {
                format!(
                    " (with the {attached}-byte id the producer attaches to it on a topic that deduplicates)"
                )
            } else {
                String::new()
            };
            return invalid(format!(
                "{size} bytes of id, key, value and headers{id}, over topic {:?}'s max_message_bytes {}",
                self.name, self.max_message_bytes
            ));
        }
        if record.headers.len() > RECORD_HEADERS_MAX as usize {
            return invalid(format!(
                "{} headers, over the limit of {RECORD_HEADERS_MAX}",
                record.headers.len()
            ));
        }
        if let Some(id) = &record.id
            && !(1..=MESSAGE_ID_BYTES_MAX).contains(&id.len())
        {
            return invalid(format!(
                "an id of {} bytes; ids are 1 to {MESSAGE_ID_BYTES_MAX} bytes",
                id.len()
            ));
        }
        if record.timestamp_ms.is_some_and(|t| t < 0) {
            return invalid("a negative timestamp_ms".into());
        }
        if record.priority > 0 && record.priority >= self.priority_levels.max(1) {
            return invalid(format!(
                "priority {} but topic {:?} has {} priority levels",
                record.priority, self.name, self.priority_levels
            ));
        }
        Ok(())
    }
}

/// How a batch's records were answered.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Stored: record `i` at `base_offset + i` (no offsets with `Ack::None`).
    Stored {
        partition: u32,
        base_offset: Option<u64>,
    },
    /// Per record (a batch answered as a duplicate: each record's original).
    Each(Vec<Result<Delivered>>),
    /// Every record failed with this.
    Failed(Error),
}

/// A batch's outcome, shared by its records' futures; filled once.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// Buffer bytes the batch's records reserved: given back when it is answered.
    reserved: AtomicUsize,
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    outcome: Option<Outcome>,
    wakers: Vec<Waker>,
}

impl Slot {
    fn state(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fills the outcome (the first call wins) and wakes the records' futures.
    pub fn resolve(&self, outcome: Outcome) {
        let wakers = {
            let mut state = self.state();
            if state.outcome.is_some() {
                return;
            }
            state.outcome = Some(outcome);
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// The outcome of record `index` (whose id is `id`), or pending with the waker
    /// kept: `waker_at` is where this future's waker is, so a future polled again
    /// replaces its own waker instead of adding one.
    pub fn poll(
        &self,
        index: usize,
        id: &mut Option<Bytes>,
        waker_at: &mut Option<usize>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Delivered>> {
        let mut state = self.state();
        match &state.outcome {
            Some(Outcome::Stored {
                partition,
                base_offset,
            }) => Poll::Ready(Ok(Delivered {
                partition: *partition,
                offset: base_offset.map(|base| base + index as u64),
                id: id.take(),
                duplicate: false,
            })),
            Some(Outcome::Each(outcomes)) => {
                Poll::Ready(outcomes.get(index).cloned().unwrap_or(Err(Error::Broker {
                    rpc: "PublishBatch",
                    code: tonic::Code::Internal,
                    message: "a batch was answered for fewer records than it held".into(),
                })))
            }
            Some(Outcome::Failed(Error::OutcomeUnknown { what, reason, .. })) => {
                Poll::Ready(Err(Error::OutcomeUnknown {
                    what: what.clone(),
                    reason: reason.clone(),
                    ids: vec![id.take()],
                }))
            }
            Some(Outcome::Failed(error)) => Poll::Ready(Err(error.clone())),
            None => {
                match waker_at {
                    Some(at) if *at < state.wakers.len() => {
                        if !state.wakers[*at].will_wake(cx.waker()) {
                            state.wakers[*at] = cx.waker().clone();
                        }
                    }
                    _ => {
                        *waker_at = Some(state.wakers.len());
                        state.wakers.push(cx.waker().clone());
                    }
                }
                Poll::Pending
            }
        }
    }

    /// The buffer bytes the batch's records reserved.
    pub fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Relaxed)
    }
}

/// Where [`Front::push`] put a record.
pub(crate) enum Placed {
    /// In its batch: the batch's slot and the record's index in it; `wake` when the
    /// producer's task must look (a batch opened or was sealed).
    Added {
        slot: Arc<Slot>,
        index: usize,
        id: Option<Bytes>,
        wake: bool,
    },
    /// Refused at once (a bad partition, too large, ...).
    Refused(Error),
    /// The buffer is full: wait for answers, then push again.
    Full,
    /// The topic is not described yet (or a record names a partition past its count
    /// and the description is older than [`REDESCRIBE_AFTER`]): describe it, then
    /// push again.
    UnknownTopic,
}

/// The state `send` and the producer's task share.
pub(crate) struct Front {
    ids_mode: IdMode,
    buffer_bytes: usize,
    /// The topics described so far, and where each is in `topics`.
    topics: Vec<TopicState>,
    topic_index: HashMap<Arc<str>, usize>,
    /// Where the topic of the last record is in `topics` (most producers send to one
    /// topic, and a string compare is cheaper than a hash).
    last_topic: Option<usize>,
    /// The time new ids are given (see [`Front::id_time`]), and ids given since it was
    /// read.
    id_clock: (i64, u32),
    accumulator: Accumulator<NewRecord, Arc<Slot>>,
    /// Batches sealed by `send` (full), for the task to take.
    sealed: Vec<SealedBatch>,
    ids: IdGenerator,
    /// Bytes reserved by records not yet answered.
    buffered: usize,
    pub closed: bool,
}

impl Front {
    pub fn new(limits: Limits, ids_mode: IdMode, buffer_bytes: usize) -> Front {
        Front {
            ids_mode,
            buffer_bytes,
            topics: Vec::new(),
            topic_index: HashMap::new(),
            last_topic: None,
            id_clock: (0, 0),
            accumulator: Accumulator::new(limits),
            sealed: Vec::new(),
            ids: IdGenerator::new(tidelog_storage::msgid::process_seed()),
            buffered: 0,
            closed: false,
        }
    }

    /// Where the topic is in `topics`, if it is described already.
    fn topic_at(&self, name: &str) -> Option<usize> {
        if let Some(at) = self.last_topic
            && let Some(state) = self.topics.get(at)
            && *state.name == *name
        {
            return Some(at);
        }
        self.topic_index.get(name).copied()
    }

    /// The topic's key if it is described already.
    pub fn known_topic(&self, name: &str) -> Option<Arc<str>> {
        self.topic_at(name).map(|at| self.topics[at].name.clone())
    }

    pub fn topic(&self, name: &str) -> Option<&TopicState> {
        self.topic_at(name).map(|at| &self.topics[at])
    }

    /// Keeps what DescribeTopic said: a new topic, or a fresh description of a known
    /// one (its partition count may have grown: keys route by the new count from here
    /// on; the sticky partition stays where it is if it still exists).
    pub fn learn(&mut self, description: &TopicDescription) {
        let mut state = TopicState::new(description, self.ids_mode);
        match self.topic_index.get(description.name.as_str()) {
            Some(&at) => {
                let old = &self.topics[at];
                if old.partitions != state.partitions {
                    tracing::debug!(
                        topic = %state.name,
                        from = old.partitions,
                        to = state.partitions,
                        "producer: the topic's partition count changed"
                    );
                }
                state.sticky = old.sticky % state.partitions;
                state.name = old.name.clone();
                self.topics[at] = state;
            }
            None => {
                self.topic_index
                    .insert(state.name.clone(), self.topics.len());
                self.topics.push(state);
            }
        }
    }

    /// The names of the topics described so far (for the periodic describe).
    pub fn topic_names(&self) -> Vec<Arc<str>> {
        self.topics.iter().map(|state| state.name.clone()).collect()
    }

    /// Forgets a topic (after a NOT_FOUND): the next record for it describes it again.
    pub fn forget(&mut self, name: &str) {
        self.topics.retain(|state| *state.name != *name);
        self.topic_index = self
            .topics
            .iter()
            .enumerate()
            .map(|(at, state)| (state.name.clone(), at))
            .collect();
        self.last_topic = None;
    }

    /// The time for the next id: the clock is read once every
    /// [`ID_CLOCK_READS_EVERY`] ids, and again after the task took batches (so an idle
    /// producer's next id does not carry an old time). Ids within one millisecond count
    /// up, so an id given with a time a little behind is still unique and in order.
    fn id_time(&mut self) -> i64 {
        let (time, given) = &mut self.id_clock;
        if *given % ID_CLOCK_READS_EVERY == 0 {
            *time = now_ms();
        }
        *given = given.wrapping_add(1);
        *time
    }

    /// Whether `size` more bytes fit the buffer (a record larger than the whole buffer
    /// fits an empty one).
    fn fits(&self, size: usize) -> bool {
        self.buffered == 0 || self.buffered.saturating_add(size) <= self.buffer_bytes
    }

    /// Reserves `size` bytes if they fit.
    pub fn reserve(&mut self, size: usize) -> bool {
        let fits = self.fits(size);
        if fits {
            self.buffered += size;
        }
        fits
    }

    /// Gives back bytes of answered records.
    pub fn release(&mut self, size: usize) {
        self.buffered = self.buffered.saturating_sub(size);
    }

    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }

    /// Bytes a record reserves in the buffer.
    pub fn share(&self, record: &Record) -> usize {
        (record.size_bytes() as usize)
            .saturating_add(RECORD_OVERHEAD_BYTES)
            .min(self.buffer_bytes)
    }

    /// Adds `record` to its open batch (see [`Placed`]). `record` is taken only when
    /// the outcome is `Added` or `Refused`.
    pub fn push(&mut self, record: &mut Option<Record>) -> Placed {
        let Some(pending) = record.as_ref() else {
            return Placed::Refused(Error::Closed);
        };
        let Some(at) = self.topic_at(&pending.topic) else {
            return Placed::UnknownTopic;
        };
        let state = &self.topics[at];
        if pending
            .partition
            .is_some_and(|p| state.may_have_grown_to(p))
        {
            // Partitions may have been added since the topic was described.
            return Placed::UnknownTopic;
        }
        let partition = match state
            .partition(pending)
            .and_then(|p| state.check(&pending.inner).map(|()| p))
        {
            Ok(partition) => partition,
            Err(error) => {
                record.take();
                return Placed::Refused(error);
            }
        };
        let attach_id = state.attach_ids;
        let topic = state.name.clone();
        let share = self.share(pending);
        if !self.reserve(share) {
            return Placed::Full;
        }
        let Some(Record { inner, ack, .. }) = record.take() else {
            return Placed::Refused(Error::Closed);
        };
        let mut inner = inner;
        if inner.id.is_none() && attach_id {
            let time = self.id_time();
            inner.id = Some(Bytes::copy_from_slice(&self.ids.next(time)));
        }
        let id = inner.id.clone();
        let size = inner.payload_bytes() as usize;
        let key = BatchKey {
            topic: topic.clone(),
            partition,
            ack,
        };
        self.last_topic = Some(at);
        let sealed_before = self.sealed.len();
        let pushed = self
            .accumulator
            .push(&key, inner, size, Instant::now, &mut self.sealed);
        pushed.handle.reserved.fetch_add(share, Ordering::Relaxed);
        let sealed_any = self.sealed.len() > sealed_before;
        self.moved_on(sealed_before);
        Placed::Added {
            slot: pushed.handle,
            index: pushed.index,
            id,
            wake: pushed.opened || sealed_any,
        }
    }

    /// Moves each topic's sticky partition on past batches sealed since `from`.
    fn moved_on(&mut self, from: usize) {
        for at in from..self.sealed.len() {
            let batch = &self.sealed[at];
            if let Some(at) = self.topic_at(&batch.key.topic)
                && self.topics[at].sticky == batch.key.partition
            {
                let state = &mut self.topics[at];
                state.sticky = (state.sticky + 1) % state.partitions;
            }
        }
    }

    /// Batches `send` sealed, and with `expire_at` those whose linger ended, oldest
    /// first.
    pub fn take_sealed(&mut self, expire_at: Option<Instant>) -> Vec<SealedBatch> {
        self.id_clock.1 = 0;
        if let Some(now) = expire_at {
            let from = self.sealed.len();
            self.accumulator.expire(now, &mut self.sealed);
            self.moved_on(from);
        }
        std::mem::take(&mut self.sealed)
    }

    /// Seals the open batch of `key` (a caller's own batch goes after it).
    pub fn seal(&mut self, key: &BatchKey) -> Vec<SealedBatch> {
        let from = self.sealed.len();
        self.accumulator.seal(key, &mut self.sealed);
        self.moved_on(from);
        std::mem::take(&mut self.sealed)
    }

    /// Seals every open batch (flush, close).
    pub fn drain(&mut self) -> Vec<SealedBatch> {
        let from = self.sealed.len();
        self.accumulator.drain(&mut self.sealed);
        self.moved_on(from);
        std::mem::take(&mut self.sealed)
    }

    /// When the oldest open batch's linger ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.accumulator.next_deadline()
    }

    /// Nothing open and nothing sealed waiting for the task.
    pub fn is_empty(&self) -> bool {
        self.accumulator.is_empty() && self.sealed.is_empty()
    }

    /// Fresh ids for a caller's batch.
    pub fn next_id(&mut self) -> Bytes {
        let time = self.id_time();
        Bytes::copy_from_slice(&self.ids.next(time))
    }
}

/// The shared part of a producer: its front, and how `send` and the task wake each
/// other.
pub(crate) struct Core {
    front: Mutex<Front>,
    /// The encode buffers of answered batches, for the next encodes (at most
    /// [`SPARE_BUFFERS_MAX`]): a producer of ~100 KB batches otherwise asks the
    /// allocator for a fresh one per batch, and glibc hands each back to the kernel.
    spare: Mutex<Vec<Vec<u8>>>,
    /// Wakes the producer's task (a batch opened or was sealed, a caller waits).
    pub wake: Notify,
    /// Wakes callers waiting for buffer space.
    pub space: Notify,
    /// Asks for the topics to be described again now (the broker said a partition
    /// does not exist).
    pub refresh: Notify,
}

impl Core {
    pub fn new(front: Front) -> Core {
        Core {
            front: Mutex::new(front),
            spare: Mutex::new(Vec::new()),
            wake: Notify::new(),
            space: Notify::new(),
            refresh: Notify::new(),
        }
    }

    pub fn front(&self) -> MutexGuard<'_, Front> {
        self.front.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer to encode a batch into (a spare one, or a new empty one).
    pub fn encode_buffer(&self) -> Vec<u8> {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        spare.pop().unwrap_or_default()
    }

    /// Takes an answered batch's bytes back as a spare buffer, when nothing else
    /// holds them and fewer than [`SPARE_BUFFERS_MAX`] are kept.
    pub fn keep_buffer(&self, bytes: Bytes) {
        let Ok(bytes) = bytes.try_into_mut() else {
            return;
        };
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARE_BUFFERS_MAX {
            spare.push(bytes.into());
        }
    }

    /// Fills a batch's slot and gives its buffer bytes back.
    pub fn finish(&self, slot: &Slot, outcome: Outcome) {
        slot.resolve(outcome);
        self.give_back(slot.reserved());
    }

    /// Gives buffer bytes back and wakes callers waiting for space.
    pub fn give_back(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.front().release(bytes);
        self.space.notify_waiters();
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use tidelog_proto::v1::{PartitionDescription, TopicConfig};

    use super::*;
    use crate::record::Ack;

    /// Counts its wake-ups.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        (counter.clone(), Waker::from(counter))
    }

    fn description(name: &str, partitions: usize, dedup: bool) -> TopicDescription {
        TopicDescription {
            name: name.into(),
            partitions: vec![PartitionDescription::default(); partitions],
            config: Some(TopicConfig {
                max_message_bytes: 1000,
                dedup_window_ms: dedup.then_some(60_000),
                ..TopicConfig::default()
            }),
            ..TopicDescription::default()
        }
    }

    fn front(max_records: usize, buffer_bytes: usize) -> Front {
        let limits = Limits {
            max_bytes: 1 << 20,
            max_records,
            linger: std::time::Duration::from_millis(5),
        };
        Front::new(limits, IdMode::Auto, buffer_bytes)
    }

    fn added(placed: Placed) -> (Arc<Slot>, usize, Option<Bytes>, bool) {
        match placed {
            Placed::Added {
                slot,
                index,
                id,
                wake,
            } => (slot, index, id, wake),
            _ => panic!("the record was not added"),
        }
    }

    #[test]
    fn each_record_of_a_batch_resolves_to_its_own_offset_and_id_once_woken() {
        let slot = Slot::default();
        let (counter, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        let mut ids = [None, Some(Bytes::from_static(b"b"))];
        let mut at = [None, None];
        for index in 0..2 {
            assert!(
                slot.poll(index, &mut ids[index], &mut at[index], &mut cx)
                    .is_pending()
            );
        }
        // Polled again with the same waker: its place is reused, nothing added.
        assert!(slot.poll(0, &mut ids[0], &mut at[0], &mut cx).is_pending());
        assert_eq!(slot.state().wakers.len(), 2);
        slot.resolve(Outcome::Stored {
            partition: 3,
            base_offset: Some(40),
        });
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            2,
            "each waiting future woken"
        );
        // A second outcome is ignored: the first answer stands.
        slot.resolve(Outcome::Failed(Error::Closed));
        let second = slot.poll(1, &mut ids[1], &mut at[1], &mut cx);
        let Poll::Ready(Ok(delivered)) = second else {
            panic!("not ready: {second:?}");
        };
        assert_eq!(
            delivered,
            Delivered {
                partition: 3,
                offset: Some(41),
                id: Some(Bytes::from_static(b"b")),
                duplicate: false,
            }
        );
        let first = slot.poll(0, &mut ids[0], &mut at[0], &mut cx);
        assert!(matches!(
            first,
            Poll::Ready(Ok(Delivered {
                offset: Some(40),
                id: None,
                ..
            }))
        ));
    }

    #[test]
    fn a_future_polled_with_a_new_waker_replaces_its_own() {
        let slot = Slot::default();
        let (first_counter, first) = waker();
        let (second_counter, second) = waker();
        let (mut id, mut at) = (None, None);
        assert!(
            slot.poll(0, &mut id, &mut at, &mut Context::from_waker(&first))
                .is_pending()
        );
        assert!(
            slot.poll(0, &mut id, &mut at, &mut Context::from_waker(&second))
                .is_pending()
        );
        assert_eq!(slot.state().wakers.len(), 1);
        slot.resolve(Outcome::Each(vec![Err(Error::Closed)]));
        assert_eq!(first_counter.0.load(Ordering::SeqCst), 0);
        assert_eq!(second_counter.0.load(Ordering::SeqCst), 1);
        let outcome = slot.poll(0, &mut id, &mut at, &mut Context::from_waker(&second));
        assert!(matches!(outcome, Poll::Ready(Err(Error::Closed))));
        // An index past the answer's records is an error, not a panic.
        let (mut id, mut at) = (None, None);
        let past = slot.poll(5, &mut id, &mut at, &mut Context::from_waker(&second));
        assert!(matches!(past, Poll::Ready(Err(Error::Broker { .. }))));
    }

    #[test]
    fn push_describes_first_refuses_bad_records_and_waits_when_the_buffer_is_full() {
        let mut front = front(3, 1000);
        let mut record = Some(Record::new("t", vec![0u8; 100]));
        assert!(matches!(front.push(&mut record), Placed::UnknownTopic));
        assert!(record.is_some(), "kept for the retry after describing");
        front.learn(&description("t", 2, true));

        // Refused records are taken and fail alone.
        let mut bad = Some(Record::new("t", "x").partition(7));
        assert!(matches!(
            front.push(&mut bad),
            Placed::Refused(Error::InvalidRecord { .. })
        ));
        assert!(bad.is_none());
        let mut big = Some(Record::new("t", vec![0u8; 2000]));
        assert!(matches!(
            front.push(&mut big),
            Placed::Refused(Error::InvalidRecord { .. })
        ));

        // Keyless records stick to one partition; a dedup topic gives each an id.
        let (slot, index, id, wake) = added(front.push(&mut record));
        assert!(record.is_none());
        assert!(
            (index, wake) == (0, true),
            "the first record opens the batch"
        );
        assert_eq!(id.as_ref().map(Bytes::len), Some(16));
        let mut next = Some(Record::new("t", vec![1u8; 100]));
        let (same, index, other_id, wake) = added(front.push(&mut next));
        assert!(Arc::ptr_eq(&slot, &same) && index == 1 && !wake);
        assert!(other_id > id, "ids are time-ordered");

        // 164 bytes a record reserved: the seventh does not fit 1000.
        let mut pushed = 2;
        let full = loop {
            let mut record = Some(Record::new("t", vec![2u8; 100]).ack(Ack::Written));
            match front.push(&mut record) {
                Placed::Added { .. } => pushed += 1,
                Placed::Full => break record,
                _ => panic!("refused"),
            }
        };
        assert_eq!(pushed, 6);
        assert!(
            full.is_some(),
            "a record that does not fit is kept for the retry"
        );
        // The third record sealed the first batch (3 records): the task takes it,
        // and the sticky partition moved on.
        let sealed = front.take_sealed(None);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].items.len(), 3);
        assert_eq!(sealed[0].handle.reserved(), 3 * 164);
        front.release(sealed[0].handle.reserved());
        let mut record = full;
        let (_, _, _, _) = added(front.push(&mut record));
        // Left open: the two durable records, on the partition they started on, and
        // the later written ones, on the next partition.
        let drained = front.drain();
        let mut shape: Vec<(Ack, bool, usize)> = drained
            .iter()
            .map(|b| {
                let moved = b.key.partition != sealed[0].key.partition;
                (b.key.ack, moved, b.items.len())
            })
            .collect();
        shape.sort_by_key(|&(_, moved, _)| moved);
        assert_eq!(shape, [(Ack::Durable, false, 2), (Ack::Written, true, 2)]);
        assert!(front.is_empty());
    }

    #[test]
    fn a_forgotten_topic_is_described_again() {
        let mut front = front(10, 1 << 20);
        front.learn(&description("a", 1, false));
        front.learn(&description("b", 1, false));
        front.forget("a");
        assert!(front.known_topic("a").is_none());
        assert_eq!(front.known_topic("b").as_deref(), Some("b"));
        let mut record = Some(Record::new("b", "v"));
        let (_, _, id, _) = added(front.push(&mut record));
        assert!(id.is_none(), "no dedup window, no id");
    }

    #[test]
    fn a_fresh_description_routes_keys_by_the_new_partition_count() {
        let mut front = front(10, 1 << 20);
        front.learn(&description("t", 2, false));
        let key = (0..100u32)
            .map(|n| format!("key-{n}"))
            .find(|key| {
                tidelog_storage::partitioner::partition_for_key(key.as_bytes(), 2)
                    != tidelog_storage::partitioner::partition_for_key(key.as_bytes(), 8)
            })
            .expect("a key that moves");
        let mut record = Some(Record::new("t", "v").key(key.clone()));
        let before = added(front.push(&mut record));
        front.learn(&description("t", 8, false));
        assert_eq!(front.topic("t").map(|t| t.partitions), Some(8));
        let mut record = Some(Record::new("t", "v").key(key.clone()));
        let after = added(front.push(&mut record));
        let partitions: Vec<u32> = front.drain().iter().map(|b| b.key.partition).collect();
        assert!(
            !Arc::ptr_eq(&before.0, &after.0),
            "another partition's batch"
        );
        assert!(
            partitions.contains(&tidelog_storage::partitioner::partition_for_key(
                key.as_bytes(),
                8
            )),
            "{partitions:?}"
        );
        // A record for a partition past the known count describes the topic again
        // once the description is older than REDESCRIBE_AFTER, else is refused.
        let mut past = Some(Record::new("t", "v").partition(9));
        assert!(matches!(front.push(&mut past), Placed::Refused(_)));
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A record for topic `t0` or `t1`: its value size, key or partition, ack.
        Push {
            topic: bool,
            size: usize,
            key: Option<u8>,
            partition: Option<u32>,
            written: bool,
        },
        /// The task takes what was sealed (and, with `expire`, what lingered).
        Take {
            expire: bool,
        },
        /// The broker answers the oldest batch taken.
        Answer,
        Drain,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            8 => (any::<bool>(), prop_oneof![0usize..200, 0usize..3000, Just(5000usize)],
                  proptest::option::of(any::<u8>()), proptest::option::of(0u32..4), any::<bool>())
                .prop_map(|(topic, size, key, partition, written)| Op::Push { topic, size, key, partition, written }),
            2 => any::<bool>().prop_map(|expire| Op::Take { expire }),
            3 => Just(Op::Answer),
            1 => Just(Op::Drain),
        ]
    }

    proptest::proptest! {
        /// Against a model of the buffer and of each partition's order: the bytes
        /// reserved are what the records not yet answered hold, and within the buffer
        /// unless one record alone is larger; a push is `Full` exactly when the record
        /// does not fit; every record added comes out once, in its batch at the index
        /// `push` gave, in send order per (topic, partition, ack); and once every batch
        /// is answered the buffer is empty.
        #[test]
        fn the_buffer_and_the_batches_follow_the_model(
            ops in proptest::collection::vec(op(), 1..200),
            buffer_bytes in 500usize..20_000,
            max_records in 1usize..20,
            max_bytes in 100usize..8_000,
        ) {
            let limits = Limits { max_bytes, max_records, linger: std::time::Duration::ZERO };
            let mut front = Front::new(limits, IdMode::Never, buffer_bytes);
            for name in ["t0", "t1"] {
                front.learn(&description(name, 3, false));
            }
            let mut taken: std::collections::VecDeque<SealedBatch> = Default::default();
            // Per record added: its batch's slot and its index there, in send order.
            let mut added: Vec<(Arc<Slot>, usize)> = Vec::new();
            let mut outstanding = 0usize;
            let mut seen = 0usize;
            // The records that went into `batch`, in send order, must be its items
            // 0, 1, 2, ...: each at the index `push` gave it.
            let check_batch = |batch: &SealedBatch, added: &[(Arc<Slot>, usize)]| {
                let mine: Vec<usize> = added
                    .iter()
                    .filter(|(slot, _)| Arc::ptr_eq(slot, &batch.handle))
                    .map(|(_, index)| *index)
                    .collect();
                assert_eq!(mine, (0..batch.items.len()).collect::<Vec<_>>(), "indexes in send order");
                batch.items.len()
            };
            for op in ops {
                match op {
                    Op::Push { topic, size, key, partition, written } => {
                        let name = if topic { "t1" } else { "t0" };
                        let mut record = Record::new(name, vec![7u8; size]);
                        if let Some(key) = key {
                            record = record.key(vec![key]);
                        }
                        if let Some(partition) = partition {
                            record = record.partition(partition);
                        }
                        if written {
                            record = record.ack(Ack::Written);
                        }
                        let share = front.share(&record);
                        let fits = outstanding == 0 || outstanding + share <= buffer_bytes;
                        let mut slot = Some(record);
                        match front.push(&mut slot) {
                            Placed::Added { slot: batch, index, .. } => {
                                proptest::prop_assert!(fits);
                                outstanding += share;
                                added.push((batch, index));
                            }
                            Placed::Full => proptest::prop_assert!(!fits),
                            Placed::Refused(error) => {
                                // Partition 3 of 3, and payloads over max_message_bytes.
                                let payload = size + usize::from(key.is_some());
                                proptest::prop_assert!(partition == Some(3) || payload > 1000, "{}", error);
                            }
                            Placed::UnknownTopic => proptest::prop_assert!(false, "known topics"),
                        }
                    }
                    Op::Take { expire } => {
                        let now = expire.then(|| Instant::now() + std::time::Duration::from_millis(1));
                        for batch in front.take_sealed(now) {
                            seen += check_batch(&batch, &added);
                            taken.push_back(batch);
                        }
                    }
                    Op::Answer => {
                        if let Some(batch) = taken.pop_front() {
                            outstanding -= batch.handle.reserved();
                            front.release(batch.handle.reserved());
                        }
                    }
                    Op::Drain => {
                        for batch in front.drain() {
                            seen += check_batch(&batch, &added);
                            taken.push_back(batch);
                        }
                    }
                }
                proptest::prop_assert_eq!(front.buffered, outstanding);
                // A record's share is at most the whole buffer, so never past it.
                proptest::prop_assert!(outstanding <= buffer_bytes);
            }
            for batch in front.drain() {
                seen += check_batch(&batch, &added);
                taken.push_back(batch);
            }
            for batch in taken.drain(..) {
                front.release(batch.handle.reserved());
            }
            proptest::prop_assert_eq!(seen, added.len(), "every record once");
            proptest::prop_assert_eq!(front.buffered, 0);
        }
    }

    /// `Slot` is what a `DeliveryFuture` polls; check it is `Send` and the future
    /// machinery works through `Pin`.
    #[test]
    fn a_delivery_future_resolves_through_the_slot() {
        let slot = Arc::new(Slot::default());
        let mut future = crate::producer::DeliveryFuture::waiting(slot.clone(), 2, None);
        let (_, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
        slot.resolve(Outcome::Stored {
            partition: 0,
            base_offset: Some(7),
        });
        let Poll::Ready(Ok(delivered)) = Pin::new(&mut future).poll(&mut cx) else {
            panic!("not resolved");
        };
        assert_eq!(delivered.offset, Some(9));
    }
}
