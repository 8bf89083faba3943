//! A consumer-group member: `SubscribeBatches` with a group (the broker sends stored
//! batches, decoded here as a [`super::Subscription`] decodes them), `CommitOffsets`,
//! and the `Assignment` events of rebalances. A member reads one topic
//! ([`GroupMember::join`]) or every topic a pattern matches, now and later
//! ([`GroupMember::join_pattern`]); either way its positions are kept per (topic,
//! partition).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tidelog_proto::GROUP_GENERATION_METADATA;
use tidelog_proto::v1::{
    CommitOffsetsRequest, FetchOffsetsRequest, GroupMembership, SubscribeBatchesResponse,
    SubscribeRequest, TopicPartitionOffset, subscribe_batches_response,
};
use tonic::Code;

use tidelog_storage::pattern::TopicPattern;

use super::damage::{Damaged, probe};
use super::delivery::{Delivery, open_delivery};
use super::start::Reset;
use super::subscription::{PartitionProgress, PositionReset, ResetReason};
use super::views::Views;
use crate::backoff::Backoff;
use crate::connection::Client;
use crate::error::{Error, Result, retryable_status};
use crate::record::{Message, Messages};

/// When a member's positions are committed. Either way the member commits what
/// [`GroupMember::next`] (or `next_event`) returned, never what it only received: the
/// broker sends ahead of the reader (up to the stream's flow-control window, several
/// MiB), and a message it sent but the member never returned is read again by the
/// partition's next owner. Either way a rebalance waits (up to
/// [`GroupOptions::handover_timeout`]) for the member's commit of the partitions it
/// takes away, so they move without a message lost or returned twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The member commits by itself, as Kafka's `enable.auto.commit` does: within
    /// [`GroupMember::next`] or `next_event`, once `interval` has passed since its last
    /// commit (also while it waits there for messages), the positions after what it
    /// returned, if they moved (one `CommitOffsets` call per interval while messages
    /// flow, none while idle; with a zero interval, at every call, what the calls before
    /// it returned); at every rebalance, what it returned of the partitions
    /// taken away; and at [`GroupMember::close`] (or drop). **At-least-once** for what
    /// the caller handles before it asks for the next message: after a crash (of the
    /// member or the broker) what was returned since the last automatic commit comes
    /// again; nothing that was not returned is skipped. A commit the broker refuses
    /// for a rebalance, or loses with the connection, is handled as with
    /// [`GroupMember::commit`]; any other failure (PERMISSION_DENIED without
    /// `group-commit` on the group under `--auth`) is returned by the `next` or
    /// `next_event` that tried it, and tried again an interval later. (The broker's own
    /// auto-commit, `GroupMembership.auto_commit_interval_ms`, which commits what it
    /// sent, is at-most-once; this client does not use it.)
    Auto { interval: Duration },
    /// The application calls [`GroupMember::commit`]: **at-least-once** (what was
    /// processed and not committed when a member dies is delivered again). At a
    /// rebalance the member commits what [`GroupMember::next`] returned so far (within
    /// the broker's handover window), so partitions move without a message delivered
    /// twice.
    Explicit,
}

/// How a [`GroupMember`] joins.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    pub group: String,
    pub commit: Commit,
    /// How long the broker keeps this member's partitions after its stream breaks,
    /// for a reconnect that keeps them without a rebalance. Default 10 s; zero = the
    /// broker's default.
    pub session_timeout: Duration,
    /// How long a revoked partition waits for this member's commit before its next
    /// owner reads it. Default 5 s.
    pub handover_timeout: Duration,
    /// Shown by `Groups.DescribeGroup`.
    pub client_id: String,
    /// Where to start a partition the group has no commit for.
    pub reset: Reset,
    /// A server-side filter; empty = none.
    pub filter: String,
    /// Messages per delivered batch; 0 = the broker's default.
    pub max_batch_messages: u32,
    /// Deliveries come as [`GroupEvent::Views`] (read in place, no allocation a
    /// message) instead of [`GroupEvent::Messages`]; as on a
    /// [`crate::SubscribeOptions::views`] subscription. [`GroupMember::next`] returns
    /// messages either way.
    pub views: bool,
}

impl GroupOptions {
    /// Options for `group` with explicit commits.
    pub fn new(group: impl Into<String>) -> GroupOptions {
        GroupOptions {
            group: group.into(),
            commit: Commit::Explicit,
            session_timeout: Duration::from_secs(10),
            handover_timeout: Duration::from_secs(5),
            client_id: "tidelog-client".into(),
            reset: Reset::Earliest,
            filter: String::new(),
            max_batch_messages: 0,
            views: false,
        }
    }
}

/// One thing a [`GroupMember`] tells its reader ([`GroupMember::next_event`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum GroupEvent {
    /// The messages of one delivery from an assigned partition, in offset order (the
    /// next of that partition; never empty). Returning them counts them all as
    /// returned for [`GroupMember::commit`].
    Messages(Messages),
    /// The same delivery read in place, when [`GroupOptions::views`] is set (see
    /// [`Views`]). Returning it counts it all as returned, up to the end of its last
    /// batch (records there that are never delivered, expired or filtered, included).
    Views(Views),
    /// Every message of one delivery from a partition has been returned: where the
    /// partition stands now and its end offset when it was read. Also comes for a
    /// delivery without messages (a filter refused them, or they expired). A good
    /// moment to flush output and commit what was handled.
    Progress(PartitionProgress),
    /// The group's assignment changed (the first one is in
    /// [`GroupMember::assignment`] already, so this comes for later ones). With
    /// revoked partitions this is the moment to commit what was handled of them
    /// ([`GroupMember::commit`] or [`GroupMember::commit_offsets`], within
    /// [`GroupOptions::handover_timeout`]); without such a commit the member commits
    /// what `next`/`next_event` returned at the next call. It comes before anything of
    /// the assignment's generation: what was received before it of the partitions
    /// still assigned (a read ahead after a refused commit holds such) comes after it,
    /// and what was received of the revoked ones is dropped.
    Assigned(AssignmentChange),
    /// The reset policy ([`Reset`]) moved a position that was outside the log.
    PositionReset(PositionReset),
    /// The stream broke (the broker restarted or stopped, the connection dropped, a
    /// rebalance ended the membership), or a commit found it broken (the broker did
    /// not know the member, or the connection broke): the member rejoins with backoff
    /// from the group's committed offsets. Messages received but not yet returned are
    /// dropped (they come again). `error` says why; [`Error::Closed`] when the broker
    /// ended the stream without an error.
    Disconnected { error: Error },
    /// The member rejoined after [`GroupEvent::Disconnected`].
    Reconnected,
}

/// A new assignment ([`GroupEvent::Assigned`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AssignmentChange {
    pub member_id: String,
    pub generation: u64,
    /// Every (topic, partition) assigned now, sorted.
    pub assigned: Vec<(Arc<str>, u32)>,
    /// Assigned now and not before, sorted.
    pub added: Vec<(Arc<str>, u32)>,
    /// Assigned before and not now (moved to another member, or of a deleted topic),
    /// sorted.
    pub revoked: Vec<(Arc<str>, u32)>,
    /// On a pattern member: every topic the pattern matches now, sorted (empty on a
    /// one-topic member).
    pub topics: Vec<String>,
}

/// A member of a consumer group reading one topic, or every topic a pattern matches:
/// the broker assigns it partitions and moves them when members join or leave (and, on
/// a pattern, when matching topics are created or deleted).
///
/// Reconnects with backoff when the broker goes away: it rejoins with its member id
/// (keeping its partitions if the broker still holds it) and continues from the
/// group's committed offsets; messages buffered but not yet returned are dropped and
/// come again. The member learns of it from its stream, or sooner from a commit: one
/// that failed because the connection broke drops what was buffered at once, and
/// after one refused because the broker does not know the member (it restarted) the
/// next call reads the dead stream to its end without returning what it held (see
/// [`GroupMember::commit`]); then the member rejoins. So a member that commits after
/// each message handles again only what it handled and had not committed (the
/// message whose commit failed).
///
/// Two ways to read: [`GroupMember::next`] returns one message at a time;
/// [`GroupMember::next_event`] returns each delivery's messages together
/// ([`GroupEvent::Messages`], walked in place: the cheap way to read many) and also
/// tells what a tool needs to act on ([`GroupEvent`]): each delivery's position and
/// end offset, assignment changes with the revoked and added partitions, position
/// resets, lost and regained connections. The two mix: what `next` has not returned
/// of a delivery comes first from `next_event`. Either way [`GroupMember::commit`] commits what was returned, and
/// [`GroupMember::commit_offsets`] commits exactly the positions the caller names
/// (what it handled, when that is less than what it received). With [`Commit::Auto`]
/// the member commits what was returned by itself, every interval and at rebalances.
///
/// Stop a member with [`GroupMember::close`]: it commits what was returned (with
/// [`Commit::Auto`]) and leaves the group, so its partitions move at once. Dropping
/// it does the same in a task spawned on the current tokio runtime, best effort;
/// without a runtime (or if the runtime stops first) the broker lets its partitions
/// go after [`GroupOptions::session_timeout`], and what was returned and not
/// committed comes again to their next owner.
///
/// ```no_run
/// # async fn example() -> Result<(), tidelog_client::Error> {
/// use tidelog_client::{Client, Error, GroupMember, GroupOptions};
/// let client = Client::connect("http://127.0.0.1:7420").await?;
/// let mut member = GroupMember::join(&client, "orders", GroupOptions::new("billing")).await?;
/// loop {
///     let message = member.next().await?;
///     // ... process it ...
///     match member.commit().await { // or every N messages
///         Ok(()) => {}
///         // The broker went away or restarted, or the group rebalanced: the next call
///         // rejoins (or reads on to the new Assignment); what was not committed comes
///         // again.
///         Err(e) if e.is_retryable() || matches!(e, Error::Rebalanced { .. }) => {}
///         Err(e) => return Err(e),
///     }
/// }
/// # }
/// ```
///
/// With events, committing after each delivery and at rebalances:
///
/// ```no_run
/// # async fn example() -> Result<(), tidelog_client::Error> {
/// use tidelog_client::{Client, Error, GroupEvent, GroupMember, GroupOptions};
/// let client = Client::connect("http://127.0.0.1:7420").await?;
/// let mut member = GroupMember::join(&client, "orders", GroupOptions::new("billing")).await?;
/// loop {
///     let commit = match member.next_event().await? {
///         GroupEvent::Messages(messages) => {
///             for m in &messages {
///                 println!("{} {}: {:?}", m.partition, m.offset, m.value);
///             }
///             false
///         }
///         GroupEvent::Progress(p) => {
///             eprintln!("{}/{} at {} of {}", p.topic, p.partition, p.next_offset, p.end_offset);
///             true
///         }
///         GroupEvent::Assigned(change) => {
///             eprintln!("revoked {:?}, added {:?}", change.revoked, change.added);
///             true // hands the revoked partitions over
///         }
///         GroupEvent::Disconnected { error } => {
///             eprintln!("lost the broker ({error})");
///             false
///         }
///         _ => false,
///     };
///     if commit {
///         match member.commit().await {
///             Ok(()) => {}
///             Err(e) if e.is_retryable() || matches!(e, Error::Rebalanced { .. }) => {}
///             Err(e) => return Err(e),
///         }
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct GroupMember {
    client: Client,
    source: Source,
    options: GroupOptions,
    member_id: String,
    generation: u64,
    /// The assigned partitions of a one-topic member (empty on a pattern).
    partitions: Vec<u32>,
    /// Every assigned (topic, partition), on either kind of member.
    owned: BTreeSet<TopicPartition>,
    /// A pattern member's topics as the latest Assignment listed them (every topic
    /// the pattern matches, each with the partitions this member owns).
    topics: Vec<(Arc<str>, Vec<u32>)>,
    stream: Option<tidelog_proto::frames::Messages<SubscribeBatchesResponse>>,
    /// Events received and not yet returned.
    events: VecDeque<GroupEvent>,
    /// The rest of the [`GroupEvent::Messages`] that [`GroupMember::next`] is returning
    /// one by one (one partition's; empty when none).
    pending: std::vec::IntoIter<Message>,
    /// Per (topic, partition), the position after the last message (or delivery)
    /// returned, or as the caller last committed it.
    consumed: BTreeMap<TopicPartition, u64>,
    /// Per (topic, partition), the position last committed by this member.
    committed: BTreeMap<TopicPartition, u64>,
    /// Per assigned (topic, partition), where the stream reads next as far as the
    /// member knows (after what was received, or where a reset moved it); kept when
    /// the membership ends, for [`GroupMember::damaged`].
    read_at: BTreeMap<TopicPartition, u64>,
    /// A rebalance took these partitions away: they are committed (with the owned
    /// ones) in the new generation by the next call unless the caller commits first.
    handover: Option<BTreeSet<TopicPartition>>,
    /// The [`GroupEvent::Assigned`] of that rebalance was returned: the caller had its
    /// chance to commit, so the next call hands over.
    handover_due: bool,
    /// A commit in this generation was refused (the group moved on): the next call
    /// reads the stream ahead to the new Assignment before it returns anything, so
    /// messages of partitions it took away, received before it, are dropped instead
    /// of returned (and the handover is not held up by them).
    behind: bool,
    /// A commit was refused because the broker does not know this member (it
    /// restarted, or the member's session ended): its stream is dead or ending, so the
    /// next call reads it to its end before it returns anything. One that broke drops
    /// all of it ([`GroupMember::lost`]); one that failed for good (`DATA_LOSS`)
    /// returns what came before the failure, then the failure; one that does not end
    /// within [`GroupOptions::handover_timeout`] is dropped as broken. The refusal.
    gone: Option<Error>,
    /// What the read ahead met that ends the stream for good (an error the member
    /// does not rejoin after, a delivery that does not decode): taken once the events
    /// received before it are returned, so none of them is lost to it. (A stream that
    /// broke drops them instead: [`GroupMember::lost`].)
    held: Option<Held>,
    /// The stream broke; [`GroupEvent::Reconnected`] is due with the next event.
    reconnecting: bool,
    backoff: Backoff,
    /// With [`Commit::Auto`]: when the member next commits what was returned.
    auto_commit_at: Option<tokio::time::Instant>,
    /// Nothing is left for [`Drop`] to do: the member closed ([`GroupMember::close`]),
    /// or never joined.
    closed: bool,
}

/// Dropping a member that was not closed does what [`GroupMember::close`] does, on
/// the current tokio runtime if there is one (a spawned task, bounded by
/// [`GroupOptions::handover_timeout`] plus 5 s; best effort: it does not run if the
/// runtime shuts down first). Without a runtime only the stream
/// ends: the broker keeps the member's partitions for its session timeout, and with
/// [`Commit::Auto`] what was returned since the last automatic commit comes again to
/// their next owner.
impl Drop for GroupMember {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let member = self.take_for_close();
        let bound = member
            .options
            .handover_timeout
            .saturating_add(CLOSE_ON_DROP_EXTRA);
        runtime.spawn(async move {
            if let Ok(Err(error)) = tokio::time::timeout(bound, member.close()).await {
                tracing::debug!(%error, "closing a dropped group member failed");
            }
        });
    }
}

/// What a dropped member's close may take beyond its handover timeout (the commit
/// and the leave, each one call).
const CLOSE_ON_DROP_EXTRA: Duration = Duration::from_secs(5);

/// A topic and one of its partitions.
type TopicPartition = (Arc<str>, u32);

/// One read of the group stream.
type Received = std::result::Result<Option<SubscribeBatchesResponse>, tonic::Status>;

/// Whether a stream that failed with `status` is opened again (the broker went away,
/// the connection broke, the broker ended the membership with `ABORTED`) rather than
/// failing the member's reader.
fn rejoin_after(status: &tonic::Status) -> bool {
    retryable_status(status)
}

/// See [`GroupMember::held`].
#[derive(Debug)]
enum Held {
    Received(Received),
    Failed(Error),
}

/// Most events a member reads ahead for the Assignment after a refused commit
/// ([`GroupMember::read_ahead`]); beyond them it returns what it has in order.
const READ_AHEAD_EVENTS_MAX: usize = 256;

/// What a member reads.
#[derive(Debug, Clone)]
enum Source {
    Topic(Arc<str>),
    Pattern(String),
}

impl Source {
    /// The topic for [`Error::from_status`]'s NOT_FOUND (none on a pattern).
    fn topic(&self) -> Option<&str> {
        match self {
            Source::Topic(topic) => Some(topic),
            Source::Pattern(_) => None,
        }
    }
}

impl GroupMember {
    /// Joins `options.group` on `topic`; returns after the first Assignment.
    pub async fn join(client: &Client, topic: &str, options: GroupOptions) -> Result<GroupMember> {
        GroupMember::start(client, Source::Topic(Arc::from(topic)), options).await
    }

    /// Joins `options.group` on every topic whose whole name matches `pattern` (the
    /// proto's "Topic patterns" syntax), including topics created later: the broker
    /// adds their partitions to the group's assignment within a second of their
    /// creation and drops those of deleted topics. Each [`Message`] names its topic,
    /// and commits are per (topic, partition). Returns after the first Assignment
    /// (which may hold no topic: a pattern matching nothing yet waits for topics).
    /// Members of one group may subscribe differently (by name, by other patterns):
    /// the broker splits each topic's partitions among the members that include it.
    /// [`Error::InvalidArgument`] for a pattern the broker would refuse.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), tidelog_client::Error> {
    /// use tidelog_client::{Client, Error, GroupMember, GroupOptions};
    /// let client = Client::connect("http://127.0.0.1:7420").await?;
    /// let options = GroupOptions::new("audit");
    /// let mut member = GroupMember::join_pattern(&client, r"orders\..*", options).await?;
    /// loop {
    ///     let message = member.next().await?;
    ///     println!("{} {}/{}", message.topic, message.partition, message.offset);
    ///     match member.commit().await {
    ///         Ok(()) => {}
    ///         Err(e) if e.is_retryable() || matches!(e, Error::Rebalanced { .. }) => {}
    ///         Err(e) => return Err(e),
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn join_pattern(
        client: &Client,
        pattern: &str,
        options: GroupOptions,
    ) -> Result<GroupMember> {
        TopicPattern::parse(pattern).map_err(|error| Error::InvalidArgument {
            rpc: "SubscribeBatches",
            message: format!("topic_pattern {error}"),
        })?;
        GroupMember::start(client, Source::Pattern(pattern.to_string()), options).await
    }

    async fn start(client: &Client, source: Source, options: GroupOptions) -> Result<GroupMember> {
        let mut member = GroupMember {
            client: client.clone(),
            source,
            options,
            member_id: String::new(),
            generation: 0,
            partitions: Vec::new(),
            owned: BTreeSet::new(),
            topics: Vec::new(),
            stream: None,
            events: VecDeque::new(),
            pending: Vec::new().into_iter(),
            consumed: BTreeMap::new(),
            committed: BTreeMap::new(),
            read_at: BTreeMap::new(),
            handover: None,
            handover_due: false,
            behind: false,
            gone: None,
            held: None,
            reconnecting: false,
            backoff: Backoff::default(),
            auto_commit_at: None,
            closed: true,
        };
        member.connect().await?;
        while member.generation == 0 {
            let Some(stream) = member.stream.as_mut() else {
                return Err(Error::Closed);
            };
            match stream.message().await {
                Ok(Some(event)) => member.event(event)?,
                Ok(None) => return Err(Error::Closed),
                Err(status) => {
                    return Err(Error::from_status(
                        "SubscribeBatches",
                        member.source.topic(),
                        &status,
                    ));
                }
            }
        }
        // The first assignment is the one `assignment` reports, not a change.
        member
            .events
            .retain(|event| !matches!(event, GroupEvent::Assigned(_)));
        member.closed = false;
        if let Commit::Auto { interval } = member.options.commit {
            member.auto_commit_at = Some(tokio::time::Instant::now() + interval);
        }
        Ok(member)
    }

    /// The member id, the generation and the partitions of the latest Assignment. On
    /// a pattern member the partitions are empty: see [`GroupMember::assigned`].
    pub fn assignment(&self) -> (&str, u64, &[u32]) {
        (&self.member_id, self.generation, &self.partitions)
    }

    /// Every (topic, partition) of the latest Assignment, in order; on a one-topic
    /// member, its topic with each of [`GroupMember::assignment`]'s partitions.
    pub fn assigned(&self) -> impl Iterator<Item = (&str, u32)> + '_ {
        self.owned
            .iter()
            .map(|(topic, partition)| (&**topic, *partition))
    }

    /// A pattern member's topics as the latest Assignment listed them: every topic the
    /// pattern matches, each with the partitions of it this member owns (possibly
    /// none). Empty on a one-topic member.
    pub fn topics(&self) -> &[(Arc<str>, Vec<u32>)] {
        &self.topics
    }

    /// Per (topic, partition), the position after what was returned (or as
    /// [`GroupMember::commit_offsets`] last set it): what [`GroupMember::commit`]
    /// would commit. Partitions nothing was returned of yet are absent.
    pub fn positions(&self) -> &BTreeMap<(Arc<str>, u32), u64> {
        &self.consumed
    }

    /// Sets where the caller's handling of a partition got to when it handled less
    /// of a delivery than was returned (it stopped in the middle): what
    /// [`GroupMember::commit`], and a handover commit the member makes by itself,
    /// commit for it. Does not move the stream.
    pub fn set_position(&mut self, topic: &str, partition: u32, offset: u64) {
        let key = (self.name(topic), partition);
        self.consumed.insert(key, offset);
    }

    /// A commit was refused because the group moved on to a generation whose
    /// Assignment this member has not returned yet (another member joined or left):
    /// the next [`GroupMember::next_event`] (or `next`) reads ahead to it and returns
    /// its [`GroupEvent::Assigned`] first, before any message. A caller handing
    /// partitions over commits them again then, in that generation, rather than
    /// taking them for lost.
    pub fn rebalance_pending(&self) -> bool {
        self.behind
    }

    /// The next message of an assigned partition, waiting for one.
    ///
    /// Cancel-safe: a `next` dropped before it returns loses no message and leaves no
    /// handover commit undone.
    pub async fn next(&mut self) -> Result<Message> {
        let mut auto_committed = false;
        loop {
            self.settle(&mut auto_committed).await?;
            // An Assignment received meanwhile comes first (`receive` returns it).
            if !self.assignment_first()
                && let Some(message) = self.pending.next()
            {
                let key = (message.topic.clone(), message.partition);
                self.consumed.insert(key, message.offset.saturating_add(1));
                return Ok(message);
            }
            match self.receive(&mut auto_committed).await? {
                GroupEvent::Messages(messages) => self.pending = messages.into_iter(),
                GroupEvent::Views(views) => {
                    let mut messages = Vec::new();
                    views.append_to(&mut messages)?;
                    self.pending = messages.into_iter();
                }
                event => self.returned(&event),
            }
        }
    }

    /// The next event already received, without waiting (`None`: the next one is
    /// still to come, or a handover commit is due: [`GroupMember::next_event`] does
    /// both). A loop that awaits `next_event` in a `select!` drains what was received
    /// with this first, so it sets up the select once per delivery.
    pub fn try_next_event(&mut self) -> Option<GroupEvent> {
        if self.handover_due || self.behind || self.gone.is_some() {
            return None;
        }
        let event = self.take_queued()?;
        self.returned(&event);
        Some(event)
    }

    /// An Assignment was received and not returned yet: it comes before anything
    /// else, what [`GroupMember::next`] has not returned of a delivery included.
    fn assignment_first(&self) -> bool {
        matches!(self.events.front(), Some(GroupEvent::Assigned(_)))
    }

    /// The next event received and not returned, in the order the caller gets them:
    /// an Assignment first ([`GroupMember::assignment_first`]), then the rest of the
    /// delivery `next` started on, then the queue.
    fn take_queued(&mut self) -> Option<GroupEvent> {
        if self.assignment_first() {
            return self.events.pop_front();
        }
        self.take_pending().or_else(|| self.events.pop_front())
    }

    /// What [`GroupMember::next`] has not returned yet of the delivery it started on,
    /// as the event it came in.
    fn take_pending(&mut self) -> Option<GroupEvent> {
        let rest: Vec<Message> = std::mem::take(&mut self.pending).collect();
        let first = rest.first()?;
        let (topic, partition) = (first.topic.clone(), first.partition);
        Messages::new(topic, partition, rest).map(GroupEvent::Messages)
    }

    /// The next [`GroupEvent`]: a message, or something about the group or the
    /// stream. Fails for what rejoining cannot fix (the topic was deleted, a bad
    /// filter, a position out of range with [`Reset::Error`], a damaged batch:
    /// [`Error::is_data_loss`], which also ends the membership; the next call joins
    /// again from the committed offsets). Cancel-safe.
    pub async fn next_event(&mut self) -> Result<GroupEvent> {
        let event = self.receive(&mut false).await?;
        self.returned(&event);
        Ok(event)
    }

    /// What is due before anything received is returned, in order: the handover
    /// commit of a rebalance, the read ahead after a refused commit, and with
    /// [`Commit::Auto`] the automatic commit, at most once per call of `next` or
    /// `next_event` (`auto_committed`, the caller's): each call commits what the calls
    /// before it returned, so a second commit in the same call would have nothing new
    /// to commit, and with an interval shorter than one round of the caller's loop
    /// (zero) the timer would be due again at every round, which would go round
    /// forever without awaiting. Leaves nothing due but the timer. Cancel-safe.
    async fn settle(&mut self, auto_committed: &mut bool) -> Result<()> {
        loop {
            if self.handover_due {
                self.hand_over().await;
            }
            if self.behind || self.gone.is_some() {
                self.read_ahead().await;
            }
            if !*auto_committed && self.auto_commit_due() {
                *auto_committed = true;
                self.auto_commit().await?;
                // A refusal may have set `behind` or `gone`.
                continue;
            }
            return Ok(());
        }
    }

    /// The next event, not yet counted as returned ([`GroupMember::returned`]);
    /// `auto_committed` as [`GroupMember::settle`] takes it. Cancel-safe.
    async fn receive(&mut self, auto_committed: &mut bool) -> Result<GroupEvent> {
        loop {
            self.settle(auto_committed).await?;
            if let Some(event) = self.take_queued() {
                return Ok(event);
            }
            match self.held.take() {
                Some(Held::Received(received)) => {
                    self.take(received)?;
                    continue;
                }
                Some(Held::Failed(error)) => return Err(error),
                None => {}
            }
            let Some(stream) = self.stream.as_mut() else {
                self.backoff.wait().await;
                match Box::pin(self.connect()).await {
                    Ok(()) => {}
                    Err(error) if error.is_retryable() => {}
                    Err(error) => return Err(error),
                }
                continue;
            };
            // With auto-commit, waiting for the stream ends in time for the next commit
            // (what was returned before a quiet spell is committed during it), unless
            // this call made it already.
            let received = match self.auto_commit_at.filter(|_| !*auto_committed) {
                Some(at) => match tokio::time::timeout_at(at, stream.message()).await {
                    Ok(received) => received,
                    Err(_) => continue,
                },
                None => stream.message().await,
            };
            self.take(received)?;
        }
    }

    /// With [`Commit::Auto`]: the interval since the last automatic commit has passed.
    fn auto_commit_due(&self) -> bool {
        self.auto_commit_at
            .is_some_and(|at| at <= tokio::time::Instant::now())
    }

    /// With [`Commit::Auto`], every interval: commits what was returned and not
    /// committed yet (nothing when nothing new was returned), as
    /// [`GroupMember::commit`] would. A commit refused for a rebalance, or lost with
    /// the connection, is left to the caller's loop (it reads ahead to the new
    /// Assignment, or rejoins: what was returned since the last accepted commit comes
    /// again); any other failure is the caller's (the next try is an interval later).
    async fn auto_commit(&mut self) -> Result<()> {
        if let Commit::Auto { interval } = self.options.commit {
            self.auto_commit_at = Some(tokio::time::Instant::now() + interval);
        }
        if self.behind || self.gone.is_some() || self.handover_due {
            return Ok(());
        }
        match self.commit_returned().await {
            Ok(()) => Ok(()),
            Err(Error::Rebalanced { .. }) => Ok(()),
            Err(error) if error.is_retryable() => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// After a refused commit: reads the stream on until the new Assignment (which
    /// drops what was received of the partitions it takes away), for at most
    /// [`GroupOptions::handover_timeout`] (after it those partitions moved on anyway)
    /// and [`READ_AHEAD_EVENTS_MAX`] events; or, when the broker did not know the
    /// member ([`GroupMember::gone`]), to the stream's end. What ends the stream for
    /// good is held ([`GroupMember::held`]); a stream that broke is lost, with all it
    /// read. Cancel-safe: what it read is queued.
    async fn read_ahead(&mut self) {
        let deadline = tokio::time::Instant::now() + self.options.handover_timeout;
        // To the end of a stream the broker no longer serves: it holds at most its
        // flow-control window, as nothing more comes on it.
        while (self.behind || self.gone.is_some())
            && self.held.is_none()
            && (self.gone.is_some() || self.events.len() < READ_AHEAD_EVENTS_MAX)
        {
            let Some(stream) = self.stream.as_mut() else {
                break;
            };
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(event))) => {
                    if let Err(error) = self.take(Ok(Some(event))) {
                        self.held = Some(Held::Failed(error));
                    }
                }
                // The stream failed for good: what came before it is returned first.
                Ok(Err(status)) if !rejoin_after(&status) => {
                    self.held = Some(Held::Received(Err(status)));
                }
                // It broke (or ended): what was read ahead is dropped with it.
                Ok(ended) => {
                    let _ = self.take(ended);
                }
                Err(_) => break,
            }
        }
        if let Some(refusal) = self.gone.take()
            && self.held.is_none()
        {
            // It did not end in time: rejoin anyway.
            self.lost(refusal);
        }
        self.behind = false;
    }

    /// One read of the stream: an event queued, or the stream lost (to rejoin) or
    /// failed for good.
    fn take(&mut self, received: Received) -> Result<()> {
        match received {
            Ok(Some(event)) => {
                self.backoff.reset();
                if std::mem::take(&mut self.reconnecting) {
                    self.events.push_back(GroupEvent::Reconnected);
                }
                self.event(event)
            }
            Ok(None) => {
                self.lost(Error::Closed);
                Ok(())
            }
            Err(status) if rejoin_after(&status) => {
                tracing::debug!(%status, group = self.options.group, "group stream broke; rejoining");
                let error = Error::from_status("SubscribeBatches", self.source.topic(), &status);
                self.lost(error);
                Ok(())
            }
            Err(status) => {
                self.stream = None;
                self.forget();
                Err(Error::from_status(
                    "SubscribeBatches",
                    self.source.topic(),
                    &status,
                ))
            }
        }
    }

    /// An event leaves the queue: what it tells moves the positions `commit` commits.
    fn returned(&mut self, event: &GroupEvent) {
        match event {
            GroupEvent::Messages(messages) => {
                let key = (messages.topic().clone(), messages.partition());
                self.consumed.insert(key, messages.next_offset());
            }
            GroupEvent::Views(views) => {
                let key = (views.topic().clone(), views.partition());
                self.consumed.insert(key, views.next_offset());
            }
            GroupEvent::Progress(progress) => {
                let key = (progress.topic.clone(), progress.partition);
                if self.owned.contains(&key) {
                    self.consumed.insert(key, progress.next_offset);
                }
            }
            GroupEvent::Assigned(_) => self.handover_due = self.handover.is_some(),
            _ => {}
        }
    }

    /// A rebalance took partitions away and the caller did not commit since: commit
    /// what was returned (owned and revoked partitions alike, in the new generation),
    /// or end the handover window with an empty commit.
    async fn hand_over(&mut self) {
        if self.handover.is_none() {
            return;
        }
        let offsets = self.uncommitted();
        match self.send_commit(&offsets).await {
            Ok(()) => self.end_handover(),
            // The group moved on again before this commit (a member joined or left):
            // the partitions are handed over with the next Assignment, in its
            // generation (the broker keeps a revoked partition for this member until
            // its window ends, across rebalances), or are this member's own again if
            // it gives them back. Forgetting them here would leave what was returned
            // of them uncommitted, to be delivered again.
            Err(Error::Rebalanced { .. }) if self.behind => self.handover_due = false,
            Err(error) => {
                tracing::warn!(%error, group = self.options.group, "handover commit failed: the next owner starts at the last commit");
                self.end_handover();
            }
        }
    }

    /// The positions returned and not committed yet, of the assigned partitions and,
    /// right after a rebalance, of the ones it took away.
    fn uncommitted(&self) -> BTreeMap<TopicPartition, u64> {
        let revoked = self.handover.as_ref();
        self.consumed
            .iter()
            .filter(|(p, offset)| {
                (self.owned.contains(*p) || revoked.is_some_and(|r| r.contains(*p)))
                    && self.committed.get(*p) != Some(offset)
            })
            .map(|(p, &o)| (p.clone(), o))
            .collect()
    }

    /// The handover is done (or moot): forget the revoked partitions.
    fn end_handover(&mut self) {
        self.handover = None;
        self.handover_due = false;
        let owned = &self.owned;
        self.consumed.retain(|p, _| owned.contains(p));
        self.committed.retain(|p, _| owned.contains(p));
    }

    /// Commits, for every assigned partition (and, right after a rebalance, the ones
    /// it took away), the position after the last message [`GroupMember::next`] or
    /// [`GroupMember::next_event`] returned (past a whole delivery once its
    /// [`GroupEvent::Progress`] was returned). [`Error::Rebalanced`] when the group
    /// moved on: the next call reads ahead to the new Assignment (for at most
    /// [`GroupOptions::handover_timeout`]) and drops what was received of the
    /// partitions it takes away, so none of them is returned after the refusal and
    /// their next owner starts after what was returned. (A refusal in the member's
    /// current generation, of a partition that is not its own, is also
    /// [`Error::Rebalanced`], but no Assignment is coming: the next call reads on at
    /// once.) When the broker does not know the member (it restarted, or the
    /// member's session ended) this is [`Error::Rebalanced`] too: the next call reads
    /// what the member's stream still holds to its end, drops it if the stream broke
    /// and rejoins ([`GroupEvent::Disconnected`]), or, if it failed for good
    /// (`DATA_LOSS`), returns what came before the failure and then the failure. When
    /// the connection broke (or the broker is going away) this is a retryable error
    /// ([`Error::is_retryable`]), what was received and not returned is dropped at
    /// once, and the next call rejoins. After a rejoin the member goes on from the
    /// committed offsets, so what was returned since the last accepted commit comes
    /// again. Keep reading after any of these: none needs more than that. With
    /// [`Commit::Auto`] the member also commits this by itself every interval; calling
    /// it commits now.
    pub async fn commit(&mut self) -> Result<()> {
        self.commit_returned().await
    }

    /// What [`GroupMember::commit`] does.
    async fn commit_returned(&mut self) -> Result<()> {
        let offsets = self.uncommitted();
        if offsets.is_empty() && self.handover.is_none() {
            return Ok(());
        }
        self.send_commit(&offsets).await?;
        if self.handover.is_some() {
            self.end_handover();
        }
        Ok(())
    }

    /// Stops the member: with [`Commit::Auto`] commits what [`GroupMember::next`] (or
    /// `next_event`) returned and was not committed yet (as [`GroupMember::commit`]
    /// does, reading ahead to a rebalance that refused it and committing again in its
    /// generation, so the partitions it took away are handed over at what was
    /// returned), then leaves the group, so its partitions move to the other members
    /// at once instead of after [`GroupOptions::session_timeout`]. With
    /// [`Commit::Explicit`] it commits nothing (commit what was handled first), and
    /// leaves. Messages received and not returned are dropped: their next owner reads
    /// them from the committed offsets. The broker has no leave call: the member
    /// takes over its own membership on a new stream with a session timeout of zero
    /// and ends that stream, which leaves the group at once (a member whose
    /// [`GroupOptions::session_timeout`] is zero only ends its stream).
    ///
    /// The error of the final commit (what was returned since the last accepted
    /// commit then comes again to the partition's next owner) or of the leave (the
    /// broker lets the member go after its session timeout); the member leaves or
    /// stops either way. Dropping a member does the same on the current tokio runtime
    /// if there is one, best effort (see [`GroupMember`]'s Drop).
    pub async fn close(mut self) -> Result<()> {
        // Set first: a close cancelled midway is not started again by Drop.
        self.closed = true;
        let committed = match self.options.commit {
            Commit::Auto { .. } => self.final_commit().await,
            Commit::Explicit => Ok(()),
        };
        let left = self.leave().await;
        committed.and(left)
    }

    /// [`GroupMember::close`]'s commit of what was returned: after a refusal for a
    /// rebalance it reads ahead to the new Assignment (which drops what was received of
    /// the partitions taken away) and commits again in its generation, a few times at
    /// most.
    async fn final_commit(&mut self) -> Result<()> {
        const TRIES_MAX: usize = 4;
        let mut result = Ok(());
        for _ in 0..TRIES_MAX {
            if self.behind || self.gone.is_some() {
                self.read_ahead().await;
            }
            result = self.commit_returned().await;
            match &result {
                Err(Error::Rebalanced { .. }) if self.behind => continue,
                _ => break,
            }
        }
        result
    }

    /// Leaves the group: a new stream takes the membership over with a session
    /// timeout of zero (the broker ends the member's stream), and ends at once: the
    /// broker then removes the member and rebalances. With a session timeout of zero
    /// ending the member's stream is enough. Taken over while the member's stream is
    /// still open, so the broker never sees the member gone in between (a join then
    /// would be a new member's, and rebalance twice more).
    async fn leave(&mut self) -> Result<()> {
        let stream = self.stream.take();
        self.forget();
        if self.member_id.is_empty() || self.options.session_timeout.is_zero() {
            return Ok(());
        }
        let taking_over = self.subscribe(Duration::ZERO).await;
        drop(stream);
        drop(taking_over?);
        tracing::debug!(
            group = self.options.group,
            member = self.member_id,
            "left the group"
        );
        Ok(())
    }

    /// Moves the member's state out into a member for [`GroupMember::close`] to run on
    /// (Drop's), leaving `self` empty.
    fn take_for_close(&mut self) -> GroupMember {
        GroupMember {
            client: self.client.clone(),
            source: self.source.clone(),
            options: self.options.clone(),
            member_id: std::mem::take(&mut self.member_id),
            generation: self.generation,
            partitions: std::mem::take(&mut self.partitions),
            owned: std::mem::take(&mut self.owned),
            topics: std::mem::take(&mut self.topics),
            stream: self.stream.take(),
            events: std::mem::take(&mut self.events),
            pending: std::mem::take(&mut self.pending),
            consumed: std::mem::take(&mut self.consumed),
            committed: std::mem::take(&mut self.committed),
            read_at: std::mem::take(&mut self.read_at),
            handover: self.handover.take(),
            handover_due: self.handover_due,
            behind: self.behind,
            gone: self.gone.take(),
            held: self.held.take(),
            reconnecting: self.reconnecting,
            backoff: std::mem::take(&mut self.backoff),
            auto_commit_at: self.auto_commit_at,
            // Its own drop (the runtime going away before it ran) does nothing.
            closed: true,
        }
    }

    /// Commits exactly these (topic, partition, position) in the member's generation:
    /// each position is where the group goes on (one past the last message handled).
    /// Also sets what [`GroupMember::commit`] would commit next for them. Right after
    /// a [`GroupEvent::Assigned`] that revoked partitions this may name them (within
    /// the handover window) and ends the window, even with no offsets at all (an
    /// empty commit says "nothing more to hand over"): so name them in the first
    /// commit after that event (none of the new generation comes before it). [`Error::Rebalanced`] when the
    /// group moved on, or as [`GroupMember::commit`] says; the offsets are then not
    /// committed, and what the caller holds of the delivery after them comes again.
    pub async fn commit_offsets(&mut self, offsets: &[(&str, u32, u64)]) -> Result<()> {
        let offsets: BTreeMap<TopicPartition, u64> = offsets
            .iter()
            .map(|&(topic, partition, offset)| ((self.name(topic), partition), offset))
            .collect();
        self.send_commit(&offsets).await?;
        self.consumed
            .extend(offsets.iter().map(|(p, &o)| (p.clone(), o)));
        if self.handover.is_some() {
            self.end_handover();
        }
        Ok(())
    }

    /// The assigned partitions whose next read fails with `DATA_LOSS`: a damaged
    /// batch the broker never serves. Ask after [`GroupMember::next`] (or
    /// `next_event`) failed with [`Error::is_data_loss`]: the broker then ended the
    /// membership, and the group reads on once its committed offset for the partition
    /// is past the batch (`CommitOffsets` from a tool, or `tidelog group reset-offsets
    /// --to-offset`). A partition is tried where this member's stream got to, else at
    /// the group's committed offset (`FetchOffsets`); one with neither is not tried.
    /// One `FetchBatches` of one message per partition tried.
    pub async fn damaged(&self) -> Result<Vec<Damaged>> {
        let mut at: BTreeMap<TopicPartition, u64> = self
            .owned
            .iter()
            .filter_map(|p| self.read_at.get(p).map(|&offset| (p.clone(), offset)))
            .collect();
        if at.len() < self.owned.len() {
            let request = FetchOffsetsRequest {
                group_id: self.options.group.clone(),
                topic: self.source.topic().map(str::to_string),
            };
            let committed = self
                .client
                .groups()
                .fetch_offsets(request)
                .await
                .map_err(|status| Error::from_status("FetchOffsets", self.source.topic(), &status))?
                .into_inner()
                .offsets;
            for c in committed {
                let key = (self.name(&c.topic), c.partition);
                if self.owned.contains(&key) {
                    at.entry(key).or_insert(c.offset);
                }
            }
        }
        probe(
            &self.client,
            at.into_iter()
                .map(|((topic, partition), offset)| (topic, partition, offset)),
        )
        .await
    }

    /// The shared name of `topic` when the member knows it.
    fn name(&self, topic: &str) -> Arc<str> {
        if let Source::Topic(name) = &self.source
            && &**name == topic
        {
            return name.clone();
        }
        self.owned
            .range((Arc::from(topic), 0)..)
            .next()
            .filter(|(name, _)| &**name == topic)
            .map_or_else(|| Arc::from(topic), |(name, _)| name.clone())
    }

    /// One CommitOffsets in the current generation (with no offsets: ends the
    /// handover window).
    async fn send_commit(&mut self, offsets: &BTreeMap<TopicPartition, u64>) -> Result<()> {
        let request = CommitOffsetsRequest {
            group_id: self.options.group.clone(),
            member_id: self.member_id.clone(),
            generation: Some(self.generation),
            offsets: offsets
                .iter()
                .map(|((topic, partition), &offset)| TopicPartitionOffset {
                    topic: topic.to_string(),
                    partition: *partition,
                    offset,
                    metadata: String::new(),
                    topic_id: 0,
                })
                .collect(),
        };
        match self.client.groups().commit_offsets(request).await {
            Ok(_) => {
                self.committed
                    .extend(offsets.iter().map(|(p, &o)| (p.clone(), o)));
                Ok(())
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                let error = Error::Rebalanced {
                    message: status.message().to_string(),
                };
                // A broker that knows the member names the group's current
                // generation: newer than ours, an Assignment is coming (read ahead to
                // it); ours, the commit named a partition that is not ours. One that
                // names none does not know the member (it restarted, or the session
                // ended), and one that names an older generation gave ours out in an
                // earlier run: the membership is gone.
                let current = status
                    .metadata()
                    .get(GROUP_GENERATION_METADATA)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                match current {
                    Some(current) if current >= self.generation => {
                        self.behind = current > self.generation;
                    }
                    _ => self.gone = Some(error.clone()),
                }
                Err(error)
            }
            Err(status) => {
                let error = Error::from_status("CommitOffsets", self.source.topic(), &status);
                // The connection the stream is on broke, or the broker is going away
                // or coming back: the stream is as good as gone.
                if error.is_retryable() {
                    self.lost(error.clone());
                }
                Err(error)
            }
        }
    }

    /// The stream broke for a reason worth rejoining for (or a commit found the
    /// connection broken, or the membership gone: [`GroupMember::gone`]): received
    /// events will come again from the committed offsets, so they are dropped. The one place where that news wins
    /// over what was received: HTTP/2 hands out the DATA a stream received before the
    /// error that ended it, so a stream whose broker went away goes on yielding what
    /// it had buffered (up to its flow-control window) before the error tells.
    fn lost(&mut self, error: Error) {
        self.stream = None;
        self.forget();
        if !self.reconnecting {
            self.reconnecting = true;
            self.events.push_back(GroupEvent::Disconnected { error });
        }
    }

    /// The membership is gone: nothing received or returned stands any more.
    fn forget(&mut self) {
        self.handover = None;
        self.handover_due = false;
        self.behind = false;
        self.gone = None;
        self.held = None;
        self.events.clear();
        self.pending = Vec::new().into_iter();
        self.consumed.clear();
        self.committed.clear();
    }

    async fn connect(&mut self) -> Result<()> {
        let session_timeout = self.options.session_timeout;
        self.stream = Some(self.subscribe(session_timeout).await?);
        Ok(())
    }

    /// Opens the member's stream with `session_timeout`. Both commit modes commit
    /// from here (`auto_commit_interval_ms` 0: [`Commit::Auto`] commits what was
    /// returned, not what the broker sent), so a rebalance waits for the member's
    /// handover commit either way.
    fn subscribe(
        &self,
        session_timeout: Duration,
    ) -> impl Future<Output = Result<tidelog_proto::frames::Messages<SubscribeBatchesResponse>>>
    + Send
    + 'static {
        let (topic, topic_pattern) = match &self.source {
            Source::Topic(topic) => (topic.to_string(), String::new()),
            Source::Pattern(pattern) => (String::new(), pattern.clone()),
        };
        let request = SubscribeRequest {
            topic,
            topic_pattern,
            group: Some(GroupMembership {
                group_id: self.options.group.clone(),
                member_id: self.member_id.clone(),
                session_timeout_ms: session_timeout.as_millis() as u64,
                auto_commit_interval_ms: 0,
                client_id: self.options.client_id.clone(),
                handover_timeout_ms: self.options.handover_timeout.as_millis() as u64,
            }),
            reset_policy: self.options.reset.policy() as i32,
            max_batch_messages: self.options.max_batch_messages,
            filter: self.options.filter.clone(),
            ..SubscribeRequest::default()
        };
        let conn = self.client.conn();
        let named = self.source.topic().map(str::to_string);
        async move {
            crate::wire::subscribe_batches(conn, request)
                .await
                .map_err(|status| Error::from_status("SubscribeBatches", named.as_deref(), &status))
        }
    }

    fn event(&mut self, event: SubscribeBatchesResponse) -> Result<()> {
        match event.event {
            Some(subscribe_batches_response::Event::Batches(mut batches)) => {
                let partition = batches.partition;
                let topic = self.batch_topic(batches.position.as_ref().map(|p| &*p.topic))?;
                // A damaged batch drops the whole delivery.
                let (delivery, opened) = open_delivery(
                    &topic,
                    &mut batches,
                    self.options.views,
                    self.options.max_batch_messages,
                );
                opened?;
                let delivery = delivery.map(|delivery| match delivery {
                    Delivery::Views(views) => GroupEvent::Views(views),
                    Delivery::Messages(messages) => GroupEvent::Messages(messages),
                });
                let next = match (&batches.position, &delivery) {
                    (Some(position), _) => Some(position.next_offset),
                    (None, Some(GroupEvent::Messages(messages))) => Some(messages.next_offset()),
                    (None, Some(GroupEvent::Views(views))) => Some(views.next_offset()),
                    (None, _) => None,
                };
                if let Some(next) = next {
                    self.read_at.insert((topic.clone(), partition), next);
                }
                if let Some(delivery) = delivery {
                    self.events.push_back(delivery);
                }
                if let Some(position) = batches.position {
                    self.events
                        .push_back(GroupEvent::Progress(PartitionProgress {
                            topic,
                            partition,
                            next_offset: position.next_offset,
                            end_offset: position.end_offset,
                        }));
                }
            }
            Some(subscribe_batches_response::Event::Assignment(assignment)) => {
                let owned: BTreeSet<TopicPartition> = match &self.source {
                    Source::Topic(topic) => assignment
                        .partitions
                        .iter()
                        .map(|&p| (topic.clone(), p))
                        .collect(),
                    Source::Pattern(_) => assignment
                        .topics
                        .iter()
                        .flat_map(|t| {
                            let topic = self.name(&t.topic);
                            t.partitions.iter().map(move |&p| (topic.clone(), p))
                        })
                        .collect(),
                };
                let revoked: Vec<TopicPartition> = self.owned.difference(&owned).cloned().collect();
                let added: Vec<TopicPartition> = owned.difference(&self.owned).cloned().collect();
                tracing::debug!(
                    group = self.options.group,
                    generation = assignment.generation,
                    assigned = ?owned,
                    ?revoked,
                    "assignment"
                );
                self.member_id = assignment.member_id;
                self.generation = assignment.generation;
                self.behind = false;
                self.partitions = assignment.partitions;
                self.topics = assignment
                    .topics
                    .into_iter()
                    .map(|t| (self.name(&t.topic), t.partitions))
                    .collect();
                self.owned = owned;
                let owned = &self.owned;
                self.read_at.retain(|p, _| owned.contains(p));
                if self
                    .pending
                    .as_slice()
                    .first()
                    .is_some_and(|m| !owned.contains(&(m.topic.clone(), m.partition)))
                {
                    self.pending = Vec::new().into_iter();
                }
                // What was received of the partitions it takes away, resets included
                // (the broker drops its unsent ones the same way), is not returned.
                self.events.retain(|event| match event {
                    GroupEvent::Messages(m) => owned.contains(&(m.topic().clone(), m.partition())),
                    GroupEvent::Views(v) => owned.contains(&(v.topic().clone(), v.partition())),
                    GroupEvent::Progress(p) => owned.contains(&(p.topic.clone(), p.partition)),
                    GroupEvent::PositionReset(r) => owned.contains(&(r.topic.clone(), r.partition)),
                    _ => true,
                });
                // A handover still due from an earlier rebalance goes with this one.
                let mut handover = self.handover.take().unwrap_or_default();
                handover.extend(revoked.iter().cloned());
                if !handover.is_empty() {
                    // Hand the revoked partitions over at what was returned (or what
                    // the caller commits first), in the new generation (which also
                    // ends the broker's handover window). Done by the next call after
                    // this event was returned, so a call cancelled mid-commit commits
                    // on the following one.
                    self.handover = Some(handover);
                } else {
                    let owned = &self.owned;
                    self.consumed.retain(|p, _| owned.contains(p));
                    self.committed.retain(|p, _| owned.contains(p));
                }
                let mut topics: Vec<String> =
                    self.topics.iter().map(|(t, _)| t.to_string()).collect();
                topics.sort();
                // Ahead of what was received before it of the partitions it keeps (a
                // read ahead after a refused commit queues them): the member is in
                // the new generation already, so a commit the caller makes after one
                // of them would end the handover window before the caller was told
                // which partitions to hand over. Behind the Assignments before it.
                let at = self
                    .events
                    .iter()
                    .position(|event| {
                        matches!(
                            event,
                            GroupEvent::Messages(_)
                                | GroupEvent::Views(_)
                                | GroupEvent::Progress(_)
                                | GroupEvent::PositionReset(_)
                        )
                    })
                    .unwrap_or(self.events.len());
                self.events.insert(
                    at,
                    GroupEvent::Assigned(AssignmentChange {
                        member_id: self.member_id.clone(),
                        generation: self.generation,
                        assigned: self.owned.iter().cloned().collect(),
                        added,
                        revoked,
                        topics,
                    }),
                );
            }
            Some(subscribe_batches_response::Event::PositionReset(reset)) => {
                tracing::info!(
                    group = self.options.group,
                    topic = reset.topic,
                    partition = reset.partition,
                    to = reset.to_offset,
                    "position reset"
                );
                let topic = match &self.source {
                    Source::Topic(topic) => topic.clone(),
                    Source::Pattern(_) => self.name(&reset.topic),
                };
                self.read_at
                    .insert((topic.clone(), reset.partition), reset.to_offset);
                let reason = ResetReason::from_wire(reset.reason);
                self.events
                    .push_back(GroupEvent::PositionReset(PositionReset {
                        topic,
                        partition: reset.partition,
                        from_offset: reset.from_offset,
                        to_offset: reset.to_offset,
                        reason,
                    }));
            }
            Some(
                subscribe_batches_response::Event::Positioned(_)
                | subscribe_batches_response::Event::TopicsChanged(_),
            )
            | None => {}
        }
        Ok(())
    }

    /// The topic of a RecordBatches event: the member's topic, or on a pattern the one
    /// its position names (a pattern stream without it is a broker fault).
    fn batch_topic(&self, named: Option<&str>) -> Result<Arc<str>> {
        match (&self.source, named) {
            (Source::Topic(topic), _) => Ok(topic.clone()),
            (Source::Pattern(_), Some(named)) if !named.is_empty() => Ok(self
                .owned
                .range((Arc::from(named), 0)..)
                .next()
                .filter(|(topic, _)| &**topic == named)
                .map_or_else(|| Arc::from(named), |(topic, _)| topic.clone())),
            (Source::Pattern(pattern), _) => Err(Error::Corrupt {
                reason: format!(
                    "the broker sent batches without their topic on the stream of pattern {pattern:?}"
                ),
            }),
        }
    }
}
