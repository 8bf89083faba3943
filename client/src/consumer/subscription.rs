//! [`Subscription`]: a plain subscription (no group) to one topic or to every topic a
//! pattern matches, in batch form (`SubscribeBatches`), and the [`Event`]s it yields.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use tidelog_proto::v1::start_position::{Earliest, Latest, Position as ProtoPosition};
use tidelog_proto::v1::subscribe_request::PartitionStart;
use tidelog_proto::v1::{
    PartitionPosition, ResetReason as ProtoResetReason, StartPosition, SubscribeBatchesResponse,
    SubscribeRequest, subscribe_batches_response,
};

use super::damage::{Damaged, probe};
use super::delivery::{Delivery, open_delivery};
use super::start::{Reset, StartAt};
use super::views::Views;
use crate::backoff::Backoff;
use crate::connection::Client;
use crate::error::{Error, Result, retryable_status};
use crate::record::{Message, Messages};

/// How a [`Subscription`] reads.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Partitions to read; empty = all, as the topic grows: a partition
    /// CreatePartitions adds while the subscription runs (or while it reconnects) is
    /// read from its log start (from the time with [`StartAt::Timestamp`]). One topic
    /// only: a pattern reads every partition of every topic it matches.
    pub partitions: Vec<u32>,
    pub start: StartAt,
    pub reset: Reset,
    /// A server-side filter (the proto's "Filters" grammar); empty = none.
    pub filter: String,
    /// Records per delivered set of batches; 0 = the broker's default.
    pub max_batch_messages: u32,
    /// Bytes of batches per delivery; 0 = the broker's default.
    pub max_batch_bytes: u32,
    /// Deliveries come as [`Event::Views`] (read in place, no allocation a message)
    /// instead of [`Event::Messages`]. [`Subscription::next`] returns messages either
    /// way.
    pub views: bool,
}

/// One thing a [`Subscription`] tells its reader ([`Subscription::next_event`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The messages of one delivery from one partition, in offset order (the next of
    /// that partition; never empty). A delivery holds up to
    /// [`SubscribeOptions::max_batch_messages`] messages.
    Messages(Messages),
    /// The same delivery read in place, when [`SubscribeOptions::views`] is set: its
    /// batches' CRCs checked, its records not decoded into [`Message`]s.
    Views(Views),
    /// Every message of one delivery from a partition has been returned: the
    /// partition's position now. It also comes when a delivery held no message (a
    /// filter refused them, or they expired) but the position moved past them. A
    /// good moment to flush output, check an end offset, or save positions.
    Progress(PartitionProgress),
    /// The reset policy ([`Reset`]) moved a position that was outside the log.
    PositionReset(PositionReset),
    /// A pattern subscription's set of topics changed: first once at the start (every
    /// topic matched then, possibly none), then whenever a matching topic is created or
    /// deleted (the broker looks within a second). After a reconnect only what changed
    /// meanwhile is told.
    TopicsChanged(TopicsChanged),
    /// The stream broke (the broker restarted, the connection dropped): the
    /// subscription opens it again with backoff from where every partition stood.
    /// `error` says why.
    Disconnected { error: Error },
    /// A stream opened after [`Event::Disconnected`] delivered its first event.
    Reconnected,
}

/// Where a partition stands after a delivery ([`Event::Progress`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProgress {
    pub topic: Arc<str>,
    pub partition: u32,
    /// Where the next read starts: past every message returned and every record
    /// skipped (expired, refused by the filter).
    pub next_offset: u64,
    /// The partition's end (high watermark) when it was read; `end_offset -
    /// next_offset` is how far behind the subscription is.
    pub end_offset: u64,
}

/// A position the reset policy moved ([`Event::PositionReset`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionReset {
    pub topic: Arc<str>,
    pub partition: u32,
    /// The position that was outside the log.
    pub from_offset: Option<u64>,
    /// Where reading goes on.
    pub to_offset: u64,
    pub reason: ResetReason,
}

/// Why a position was reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResetReason {
    /// It was below the log start: retention or TTL removed those messages.
    BelowLogStart,
    /// It was past the end (a bad start offset, or a log that lost its unsynced tail).
    AboveEndOffset,
    /// A group member's partition had no committed offset: it starts by the policy.
    NoCommittedOffset,
    /// The position was read in a topic that was deleted, and a topic of the same
    /// name created, while the subscription was away: the new topic is read from its
    /// log start (every message in it is new), whatever the reset policy.
    TopicRecreated,
    /// A reason this client does not know (a newer broker).
    Other,
}

impl ResetReason {
    /// The reason a `PositionReset` event's `reason` field names.
    pub(crate) fn from_wire(reason: i32) -> ResetReason {
        match ProtoResetReason::try_from(reason) {
            Ok(ProtoResetReason::BelowLogStart) => ResetReason::BelowLogStart,
            Ok(ProtoResetReason::AboveEndOffset) => ResetReason::AboveEndOffset,
            Ok(ProtoResetReason::NoCommittedOffset) => ResetReason::NoCommittedOffset,
            Ok(ProtoResetReason::TopicRecreated) => ResetReason::TopicRecreated,
            _ => ResetReason::Other,
        }
    }
}

/// A change of a pattern subscription's topics ([`Event::TopicsChanged`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicsChanged {
    /// Topics now read (sorted), each from its log start when it appeared after the
    /// subscription started.
    pub added: Vec<String>,
    /// Topics no longer read (deleted; sorted).
    pub removed: Vec<String>,
    /// Every topic read now (sorted).
    pub topics: Vec<String>,
}

/// What a subscription reads.
#[derive(Debug, Clone)]
enum Source {
    Topic(Arc<str>),
    Pattern(String),
}

/// A subscription without a group, in batch form (`SubscribeBatches`), to one topic
/// ([`Subscription::open`]) or to every topic a pattern matches, including topics
/// created later ([`Subscription::open_pattern`]). The broker sends stored record
/// batches as they lie in its segments and the client decodes them
/// (`tidelog_storage::client_batch::delivered_records`, dropping the records the
/// broker marks: the front ones before the requested offset, the ones the filter
/// refused, the expired ones).
///
/// Survives broker restarts: when the stream breaks it reconnects with backoff and
/// resumes every (topic, partition) at the position after the last batch it received
/// (the broker's `next_offset`), so nothing is skipped and nothing is delivered twice;
/// on a topic read whole, partitions added meanwhile are read from their log start.
///
/// Two ways to read: [`Subscription::next`] returns one message at a time;
/// [`Subscription::next_event`] returns each delivery's messages together
/// ([`Event::Messages`], walked in place: the cheap way to read many) and also tells
/// what a tool needs to report or act on ([`Event`]): each delivery's position,
/// position resets, a pattern's topic changes, lost and regained connections. The two
/// mix: what `next` has not returned of a delivery comes first from `next_event`. A `DATA_LOSS` error (a damaged batch the broker
/// never serves) can be got past: [`Subscription::damaged`] names the partition,
/// then [`Subscription::drop_partition`] leaves it out or [`Subscription::seek`] moves
/// past the batch, and reading goes on with the next call.
///
/// ```no_run
/// # async fn example() -> Result<(), tidelog_client::Error> {
/// use tidelog_client::{Client, StartAt, SubscribeOptions, Subscription};
/// let client = Client::connect("http://127.0.0.1:7420").await?;
/// let options = SubscribeOptions { start: StartAt::Earliest, ..SubscribeOptions::default() };
/// let mut subscription = Subscription::open(&client, "orders", options).await?;
/// loop {
///     let message = subscription.next().await?;
///     println!("{} {}: {:?}", message.partition, message.offset, message.value);
/// }
/// # }
/// ```
///
/// By pattern, with events:
///
/// ```no_run
/// # async fn example() -> Result<(), tidelog_client::Error> {
/// use tidelog_client::{Client, Event, SubscribeOptions, Subscription};
/// let client = Client::connect("http://127.0.0.1:7420").await?;
/// let mut subscription =
///     Subscription::open_pattern(&client, r"orders\..*", SubscribeOptions::default()).await?;
/// loop {
///     match subscription.next_event().await? {
///         Event::Messages(messages) => {
///             for m in &messages {
///                 println!("{}/{} {}: {:?}", m.topic, m.partition, m.offset, m.value);
///             }
///         }
///         Event::TopicsChanged(changed) => eprintln!("now reading {:?}", changed.topics),
///         Event::Disconnected { error } => eprintln!("lost the broker ({error}); reconnecting"),
///         _ => {}
///     }
/// }
/// # }
/// ```
///
/// Going on past damaged partitions (reading the others), then reporting them:
///
/// ```no_run
/// # async fn example(mut subscription: tidelog_client::Subscription) -> Result<(), tidelog_client::Error> {
/// let mut damaged = Vec::new();
/// while !subscription.positions().is_empty() {
///     match subscription.next().await {
///         Ok(message) => println!("{}: {:?}", message.offset, message.value),
///         Err(error) if error.is_data_loss() => {
///             let found = subscription.damaged().await?;
///             if found.is_empty() {
///                 return Err(error);
///             }
///             for partition in found {
///                 subscription.drop_partition(&partition.topic, partition.partition)?;
///                 damaged.push(partition);
///             }
///         }
///         Err(error) => return Err(error),
///     }
/// }
/// eprintln!("damaged: {damaged:?}");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Subscription {
    client: Client,
    source: Source,
    options: SubscribeOptions,
    /// Per (topic, partition), where the next read starts (after the last batch
    /// received).
    positions: BTreeMap<(Arc<str>, u32), u64>,
    /// Per (topic, partition), the id of the topic its position was read in (from
    /// the broker's positions and resets): sent back with the position on a
    /// reconnect, so a topic deleted and created again meanwhile is read from its
    /// start, not from a position in the old one.
    topic_ids: BTreeMap<(Arc<str>, u32), u64>,
    /// Names of the topics read, shared by their messages (no copy per message).
    names: BTreeMap<String, Arc<str>>,
    /// The topics a pattern reads, as the last TopicsChanged said (`None` before it).
    topics: Option<BTreeSet<String>>,
    stream: Option<tidelog_proto::frames::Messages<SubscribeBatchesResponse>>,
    /// The first stream fixed every start (its Positioned event came).
    positioned: bool,
    /// One more than the highest partition number seen (Positioned, batches,
    /// resets): on a topic read whole ([`SubscribeOptions::partitions`] empty) a
    /// reconnect asks the broker for every partition from there on that it does not
    /// list from its log start (`follow_partitions_from`), so a partition
    /// CreatePartitions added is read whole even when the stream broke before its
    /// first batch, and one [`Subscription::drop_partition`] left out stays out.
    partitions_seen: u32,
    /// The stream broke; [`Event::Reconnected`] is due with the next event.
    reconnecting: bool,
    /// The next reconnect comes without waiting (a partition was dropped or moved).
    reopen_now: bool,
    events: VecDeque<Event>,
    /// The rest of the [`Event::Messages`] that [`Subscription::next`] is returning one
    /// by one (one partition's; empty when none).
    pending: std::vec::IntoIter<Message>,
    backoff: Backoff,
}

impl Subscription {
    /// Subscribes to `topic`; returns once every partition's start is fixed (a message
    /// published after this returns is delivered even with [`StartAt::Latest`]).
    pub async fn open(
        client: &Client,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        Subscription::start(client, Source::Topic(Arc::from(topic)), options).await
    }

    /// Subscribes to every topic whose whole name matches `pattern` (the proto's
    /// "Topic patterns": a regular expression), all their partitions, including topics
    /// created later (read from their log start, or from the time with
    /// [`StartAt::Timestamp`]), within about a second of their creation. `start` applies
    /// to the topics matched now; [`SubscribeOptions::partitions`] must be empty. Each
    /// message names its topic; the first event is an [`Event::TopicsChanged`] naming
    /// the topics matched now (possibly none). Returns once every start is fixed.
    pub async fn open_pattern(
        client: &Client,
        pattern: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        if !options.partitions.is_empty() {
            return Err(Error::InvalidArgument {
                rpc: "SubscribeBatches",
                message: "a topic pattern reads every partition of every topic it matches: leave SubscribeOptions::partitions empty".into(),
            });
        }
        Subscription::start(client, Source::Pattern(pattern.to_string()), options).await
    }

    async fn start(
        client: &Client,
        source: Source,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let mut names = BTreeMap::new();
        if let Source::Topic(topic) = &source {
            names.insert(topic.to_string(), topic.clone());
        }
        let mut subscription = Subscription {
            client: client.clone(),
            source,
            options,
            positions: BTreeMap::new(),
            topic_ids: BTreeMap::new(),
            names,
            topics: None,
            stream: None,
            positioned: false,
            partitions_seen: 0,
            reconnecting: false,
            reopen_now: false,
            events: VecDeque::new(),
            pending: Vec::new().into_iter(),
            backoff: Backoff::default(),
        };
        subscription.connect().await?;
        // The first events (a pattern's TopicsChanged, then Positioned) fix every
        // partition's start.
        while !subscription.positioned {
            let Some(stream) = subscription.stream.as_mut() else {
                return Err(Error::Closed);
            };
            match stream.message().await {
                Ok(Some(event)) => subscription.event(event)?,
                Ok(None) => return Err(Error::Closed),
                Err(status) => return Err(subscription.error(&status)),
            }
        }
        Ok(subscription)
    }

    /// The next message, waiting for one to arrive. Reconnects when the broker goes
    /// away; fails only for what a retry cannot fix (the topic was deleted, a bad
    /// filter, a position out of range with [`Reset::Error`], a damaged batch: see
    /// [`Subscription::damaged`]). Cancel-safe: a `next` dropped before it returns
    /// loses no message.
    pub async fn next(&mut self) -> Result<Message> {
        loop {
            if let Some(message) = self.pending.next() {
                return Ok(message);
            }
            match self.next_event().await? {
                Event::Messages(messages) => self.pending = messages.into_iter(),
                Event::Views(views) => {
                    // As a delivery decoded into messages: those before a damage come
                    // after the error.
                    let mut messages = Vec::new();
                    let read = views.append_to(&mut messages);
                    self.pending = messages.into_iter();
                    read?;
                }
                _ => {}
            }
        }
    }

    /// The next event already received, without waiting (`None`: the next one is
    /// still to come, [`Subscription::next_event`] waits for it). A loop that awaits
    /// [`Subscription::next_event`] in a `select!` (against a shutdown signal, say)
    /// drains what was received with this first, so it sets up the select once per
    /// delivery rather than once per message.
    pub fn try_next_event(&mut self) -> Option<Event> {
        self.take_pending().or_else(|| self.events.pop_front())
    }

    /// What [`Subscription::next`] has not returned yet of the delivery it started on,
    /// as the event it came in.
    fn take_pending(&mut self) -> Option<Event> {
        let rest: Vec<Message> = std::mem::take(&mut self.pending).collect();
        let first = rest.first()?;
        let (topic, partition) = (first.topic.clone(), first.partition);
        Messages::new(topic, partition, rest).map(Event::Messages)
    }

    /// The next [`Event`]: a message, or something about the stream. Fails as
    /// [`Subscription::next`] does; after a failure the next call subscribes again
    /// from the positions (after [`Subscription::drop_partition`] or
    /// [`Subscription::seek`], without the damaged partition). Cancel-safe.
    pub async fn next_event(&mut self) -> Result<Event> {
        loop {
            if let Some(event) = self.try_next_event() {
                return Ok(event);
            }
            let Some(stream) = self.stream.as_mut() else {
                if !std::mem::take(&mut self.reopen_now) {
                    self.backoff.wait().await;
                }
                // Boxed: the connect future is large and rarely needed; inline it
                // would make every `next_event` future (created per call) as large.
                match Box::pin(self.connect()).await {
                    Ok(()) => {}
                    Err(error) if error.is_retryable() => {}
                    Err(error) => return Err(error),
                }
                continue;
            };
            match stream.message().await {
                Ok(Some(event)) => {
                    self.backoff.reset();
                    if std::mem::take(&mut self.reconnecting) {
                        self.events.push_back(Event::Reconnected);
                    }
                    self.event(event)?;
                }
                Ok(None) => {
                    self.lost(Error::Unavailable {
                        rpc: "SubscribeBatches",
                        message: "the broker ended the stream".into(),
                    });
                }
                Err(status) if retryable_status(&status) && !refused_for_good(&status) => {
                    tracing::debug!(%status, "subscription broke; reconnecting");
                    let error = self.error(&status);
                    self.lost(error);
                }
                Err(status) => {
                    self.stream = None;
                    return Err(self.error(&status));
                }
            }
        }
    }

    /// Per (topic, partition), the offset the next read starts at: one past what has
    /// been received (events not yet returned included). Save it to resume elsewhere
    /// ([`StartAt::Offset`] per partition, or `partition_starts` on the wire), with its
    /// [`Subscription::topic_id`]. A partition that a topic deleted and created again
    /// with fewer partitions lacks keeps its old position and id here: sent back, they
    /// make the broker read that partition from its start once `CreatePartitions` adds
    /// it, so keep them.
    pub fn positions(&self) -> &BTreeMap<(Arc<str>, u32), u64> {
        &self.positions
    }

    /// The id of the topic the position of `partition` of `topic`
    /// ([`Subscription::positions`]) was read in: the proto's
    /// `TopicDescription.topic_id`, once the broker told it (with the first positions;
    /// `None` from a broker without topic ids). Save it with the position and send it
    /// back with it (`PartitionStart.topic_id`) when resuming elsewhere: a topic
    /// deleted and created again meanwhile is then read from its start instead of from
    /// a position in the old one. The subscription does so itself when it reconnects.
    pub fn topic_id(&self, topic: &str, partition: u32) -> Option<u64> {
        self.topic_ids
            .iter()
            .find(|((t, p), _)| **t == *topic && *p == partition)
            .map(|(_, &id)| id)
    }

    /// Notes the id of the topic a position or reset of `key` was read in (0: a
    /// broker without ids).
    fn note_topic_id(&mut self, key: &(Arc<str>, u32), id: u64) {
        if id != 0 {
            self.topic_ids.insert(key.clone(), id);
        }
    }

    /// The partitions whose next read (at [`Subscription::positions`]) fails with
    /// `DATA_LOSS`: a damaged batch the broker never serves. Ask after
    /// [`Subscription::next`] failed with [`Error::is_data_loss`]; one `FetchBatches`
    /// of one message per partition.
    pub async fn damaged(&self) -> Result<Vec<Damaged>> {
        let positions = self.positions.iter();
        probe(
            &self.client,
            positions.map(|((topic, partition), &offset)| (topic.clone(), *partition, offset)),
        )
        .await
    }

    /// Stops reading `partition` of `topic` (one damaged beyond repair, say): the
    /// stream is opened again without it on the next call. True if it was read. On a
    /// pattern subscription a partition the resubscription leaves out starts over at
    /// its log start (the broker treats it as new), so there this refuses
    /// ([`Error::InvalidArgument`]): [`Subscription::seek`] past the damage instead.
    pub fn drop_partition(&mut self, topic: &str, partition: u32) -> Result<bool> {
        if let Source::Pattern(pattern) = &self.source {
            return Err(Error::InvalidArgument {
                rpc: "SubscribeBatches",
                message: format!(
                    "a subscription to pattern {pattern:?} cannot leave out {topic}/{partition}: seek past what cannot be read instead"
                ),
            });
        }
        let key = (self.name(topic), partition);
        let dropped = self.positions.remove(&key).is_some();
        self.topic_ids.remove(&key);
        if dropped {
            self.restart_stream();
        }
        Ok(dropped)
    }

    /// Moves where `partition` of `topic` reads next (past a damaged batch, back to
    /// replay); the stream is opened again from there on the next call. Messages of
    /// the partition not yet returned are dropped. An offset outside the log follows
    /// the reset policy.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: u64) {
        let key = (self.name(topic), partition);
        let of_partition = |m: &Message| m.partition == partition && *m.topic == *topic;
        self.events.retain(|event| match event {
            Event::Messages(m) => !m.first().is_some_and(of_partition),
            _ => true,
        });
        if self.pending.as_slice().first().is_some_and(of_partition) {
            self.pending = Vec::new().into_iter();
        }
        self.positions.insert(key, offset);
        self.restart_stream();
    }

    fn restart_stream(&mut self) {
        self.stream = None;
        self.reopen_now = true;
    }

    /// The stream broke for a reason worth reconnecting for.
    fn lost(&mut self, error: Error) {
        self.stream = None;
        if !self.reconnecting {
            self.reconnecting = true;
            self.events.push_back(Event::Disconnected { error });
        }
    }

    fn error(&self, status: &tonic::Status) -> Error {
        let topic = match &self.source {
            Source::Topic(topic) => Some(&**topic),
            Source::Pattern(_) => None,
        };
        Error::from_status("SubscribeBatches", topic, status)
    }

    /// The shared name of `topic` (one allocation per topic, not per message).
    fn name(&mut self, topic: &str) -> Arc<str> {
        if let Some(name) = self.names.get(topic) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(topic);
        self.names.insert(topic.to_string(), name.clone());
        name
    }

    /// Counts `partition` as seen (see `partitions_seen`).
    fn seen(&mut self, partition: u32) {
        self.partitions_seen = self.partitions_seen.max(partition.saturating_add(1));
    }

    /// The (topic, partition) a position or reset names: its topic on a pattern
    /// stream, the one topic otherwise. `None` when a pattern stream names none.
    fn key(&mut self, topic: &str, partition: u32) -> Option<(Arc<str>, u32)> {
        match &self.source {
            Source::Topic(name) => Some((name.clone(), partition)),
            Source::Pattern(_) if topic.is_empty() => None,
            Source::Pattern(_) => Some((self.name(topic), partition)),
        }
    }

    async fn connect(&mut self) -> Result<()> {
        let mut request = SubscribeRequest {
            reset_policy: self.options.reset.policy() as i32,
            max_batch_messages: self.options.max_batch_messages,
            max_batch_bytes: self.options.max_batch_bytes,
            filter: self.options.filter.clone(),
            ..SubscribeRequest::default()
        };
        let pattern = match &self.source {
            Source::Topic(topic) => {
                request.topic = topic.to_string();
                false
            }
            Source::Pattern(pattern) => {
                request.topic_pattern = pattern.clone();
                true
            }
        };
        if !self.positioned {
            request.partitions = self.options.partitions.clone();
            request.start = Some(start_position(self.options.start));
            request.send_positioned = true;
        } else if self.positions.is_empty() {
            if !pattern {
                return Err(Error::Closed);
            }
            // Every topic the pattern matches now is new to this subscription.
            let start = match self.options.start {
                StartAt::Timestamp(ms) => StartAt::Timestamp(ms),
                _ => StartAt::Earliest,
            };
            request.start = Some(start_position(start));
        } else {
            request.partition_starts = self
                .positions
                .iter()
                .map(|((topic, partition), &offset)| PartitionStart {
                    partition: *partition,
                    offset,
                    topic_id: self
                        .topic_ids
                        .get(&(topic.clone(), *partition))
                        .copied()
                        .unwrap_or(0),
                    // One topic: the request's `topic` names it.
                    topic: if pattern {
                        topic.to_string()
                    } else {
                        String::new()
                    },
                })
                .collect();
            if !pattern && self.options.partitions.is_empty() {
                // Every partition of the topic: those not listed and numbered past
                // what this subscription has seen are new to it (added while the
                // stream was down, or since): read them from their start.
                request.follow_partitions_from = Some(self.partitions_seen);
            }
        }
        match crate::wire::subscribe_batches(self.client.conn(), request).await {
            Ok(stream) => {
                self.stream = Some(stream);
                Ok(())
            }
            Err(status) => Err(self.error(&status)),
        }
    }

    fn position(&mut self, position: &PartitionPosition) -> Option<PartitionProgress> {
        let (topic, partition) = self.key(&position.topic, position.partition)?;
        self.seen(partition);
        self.note_topic_id(&(topic.clone(), partition), position.topic_id);
        self.positions
            .insert((topic.clone(), partition), position.next_offset);
        Some(PartitionProgress {
            topic,
            partition,
            next_offset: position.next_offset,
            end_offset: position.end_offset,
        })
    }

    fn event(&mut self, event: SubscribeBatchesResponse) -> Result<()> {
        use subscribe_batches_response::Event as E;
        match event.event {
            Some(E::Batches(mut batches)) => {
                let partition = batches.partition;
                let topic = match (&self.source, &batches.position) {
                    (Source::Topic(topic), _) => topic.clone(),
                    (Source::Pattern(_), Some(p)) if !p.topic.is_empty() => self.name(&p.topic),
                    (Source::Pattern(pattern), _) => {
                        return Err(Error::Corrupt {
                            reason: format!(
                                "batches of partition {partition} on the stream of pattern {pattern:?} name no topic"
                            ),
                        });
                    }
                };
                // One event for the delivery's messages; on a damaged batch, the
                // messages of the batches before it still come, then the error.
                let (delivery, opened) = open_delivery(
                    &topic,
                    &mut batches,
                    self.options.views,
                    self.options.max_batch_messages,
                );
                match delivery {
                    Some(Delivery::Views(views)) => self.events.push_back(Event::Views(views)),
                    Some(Delivery::Messages(messages)) => {
                        self.events.push_back(Event::Messages(messages))
                    }
                    None => {}
                }
                opened?;
                if let Some(position) = &batches.position
                    && let Some(progress) = self.position(position)
                {
                    self.events.push_back(Event::Progress(progress));
                }
            }
            Some(E::PositionReset(reset)) => {
                let Some((topic, partition)) = self.key(&reset.topic, reset.partition) else {
                    return Ok(());
                };
                tracing::info!(
                    topic = &*topic,
                    partition,
                    to = reset.to_offset,
                    "position reset"
                );
                self.seen(partition);
                self.note_topic_id(&(topic.clone(), partition), reset.topic_id);
                self.positions
                    .insert((topic.clone(), partition), reset.to_offset);
                let reason = ResetReason::from_wire(reset.reason);
                self.events.push_back(Event::PositionReset(PositionReset {
                    topic,
                    partition,
                    from_offset: reset.from_offset,
                    to_offset: reset.to_offset,
                    reason,
                }));
            }
            Some(E::Positioned(positioned)) => {
                self.positioned = true;
                for position in &positioned.positions {
                    self.position(position);
                }
            }
            Some(E::TopicsChanged(changed)) => self.topics_changed(changed),
            // Group streams only; a Subscription has no group.
            Some(E::Assignment(_)) | None => {}
        }
        Ok(())
    }

    /// Keeps the set of topics read, forgets the positions of deleted topics (a topic
    /// created again under the name is new), and tells what changed.
    fn topics_changed(&mut self, changed: tidelog_proto::v1::TopicsChanged) {
        let now: BTreeSet<String> = changed.topics.iter().cloned().collect();
        self.positions
            .retain(|(topic, _), _| now.contains(&**topic));
        self.topic_ids
            .retain(|(topic, _), _| now.contains(&**topic));
        for removed in &changed.removed {
            self.names.remove(removed);
        }
        let event = match &self.topics {
            None => Some(TopicsChanged {
                added: changed.added,
                removed: changed.removed,
                topics: changed.topics,
            }),
            // A new stream starts with every topic in `added`: tell only what changed
            // since the last stream's view.
            Some(before) => {
                let added: Vec<String> = now.difference(before).cloned().collect();
                let removed: Vec<String> = before.difference(&now).cloned().collect();
                (!added.is_empty() || !removed.is_empty()).then_some(TopicsChanged {
                    added,
                    removed,
                    topics: changed.topics,
                })
            }
        };
        self.topics = Some(now);
        if let Some(event) = event {
            self.events.push_back(Event::TopicsChanged(event));
        }
    }
}

/// A status that says retrying cannot help though its code is a retryable one: a
/// partition recovery refused to open stays refused until an operator repairs it.
fn refused_for_good(status: &tonic::Status) -> bool {
    crate::error::partition_refused(status.code(), status.message())
}

fn start_position(start: StartAt) -> StartPosition {
    StartPosition {
        position: Some(match start {
            StartAt::Earliest => ProtoPosition::Earliest(Earliest {}),
            StartAt::Latest => ProtoPosition::Latest(Latest {}),
            StartAt::Offset(offset) => ProtoPosition::Offset(offset),
            StartAt::Timestamp(ms) => ProtoPosition::TimestampMs(ms),
        }),
    }
}
