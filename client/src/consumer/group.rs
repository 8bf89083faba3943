//! A consumer-group member: `SubscribeBatches` with a group (the broker sends stored
//! batches, decoded here as a [`super::Subscription`] decodes them), `CommitOffsets`,
//! and the `Assignment` events of rebalances. A member reads one topic
//! ([`GroupMember::join`]) or every topic a pattern matches, now and later
//! ([`GroupMember::join_pattern`]); either way its positions are kept per (topic,
//! partition).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tidelog_proto::v1::{
    CommitOffsetsRequest, GroupMembership, SubscribeBatchesResponse, SubscribeRequest,
    TopicPartitionOffset, subscribe_batches_response,
};
use tonic::Code;

use tidelog_storage::pattern::TopicPattern;

use super::decode::decode_into;
use super::start::Reset;
use crate::backoff::Backoff;
use crate::connection::Client;
use crate::error::{Error, Result, retryable_status};
use crate::record::Message;

/// Who commits a member's positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The broker commits, every `interval` and at every handover, the position after
    /// the last message it sent: **at-most-once** (a message sent but not processed
    /// when the consumer crashes is not delivered again).
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
    /// for a reconnect that keeps them without a rebalance. Default 10 s.
    pub session_timeout: Duration,
    /// With [`Commit::Explicit`]: how long a revoked partition waits for this member's
    /// commit before its next owner reads it. Default 5 s.
    pub handover_timeout: Duration,
    /// Shown by `Groups.DescribeGroup`.
    pub client_id: String,
    /// Where to start a partition the group has no commit for.
    pub reset: Reset,
    /// A server-side filter; empty = none.
    pub filter: String,
    /// Messages per delivered batch; 0 = the broker's default.
    pub max_batch_messages: u32,
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
        }
    }
}

/// A member of a consumer group reading one topic, or every topic a pattern matches:
/// the broker assigns it partitions and moves them when members join or leave (and, on
/// a pattern, when matching topics are created or deleted).
///
/// Reconnects with backoff when the broker goes away: it rejoins with its member id
/// (keeping its partitions if the broker still holds it) and continues from the
/// group's committed offsets; messages buffered but not yet returned are dropped and
/// come again.
///
/// ```no_run
/// # async fn example() -> Result<(), tidelog_client::Error> {
/// use tidelog_client::{Client, GroupMember, GroupOptions};
/// let client = Client::connect("http://127.0.0.1:7420").await?;
/// let mut member = GroupMember::join(&client, "orders", GroupOptions::new("billing")).await?;
/// loop {
///     let message = member.next().await?;
///     // ... process it ...
///     member.commit().await?; // or every N messages
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
    stream: Option<tonic::Streaming<SubscribeBatchesResponse>>,
    /// Messages received, each with its partition's position after it.
    buffer: VecDeque<(Message, u64)>,
    /// Per (topic, partition), the position after the last message `next` returned.
    consumed: BTreeMap<TopicPartition, u64>,
    /// Per (topic, partition), the position last committed by this member.
    committed: BTreeMap<TopicPartition, u64>,
    /// A rebalance took partitions away: what to commit in the new generation.
    handover: Option<BTreeMap<TopicPartition, u64>>,
    backoff: Backoff,
}

/// A topic and one of its partitions.
type TopicPartition = (Arc<str>, u32);

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
    /// use tidelog_client::{Client, GroupMember, GroupOptions};
    /// let client = Client::connect("http://127.0.0.1:7420").await?;
    /// let options = GroupOptions::new("audit");
    /// let mut member = GroupMember::join_pattern(&client, r"orders\..*", options).await?;
    /// loop {
    ///     let message = member.next().await?;
    ///     println!("{} {}/{}", message.topic, message.partition, message.offset);
    ///     member.commit().await?;
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
            buffer: VecDeque::new(),
            consumed: BTreeMap::new(),
            committed: BTreeMap::new(),
            handover: None,
            backoff: Backoff::default(),
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

    /// The next message of an assigned partition, waiting for one.
    ///
    /// Cancel-safe: a `next` dropped before it returns loses no message and leaves no
    /// handover commit undone.
    pub async fn next(&mut self) -> Result<Message> {
        loop {
            if let Some(handover) = &self.handover {
                let handover = handover.clone();
                let result = if handover.is_empty() {
                    self.end_handover().await
                } else {
                    self.commit_offsets(&handover).await
                };
                if let Err(error) = result {
                    tracing::warn!(%error, group = self.options.group, "handover commit failed: the next owner starts at the last commit");
                }
                self.handover = None;
            }
            if let Some((message, position)) = self.buffer.pop_front() {
                self.consumed
                    .insert((message.topic.clone(), message.partition), position);
                return Ok(message);
            }
            let Some(stream) = self.stream.as_mut() else {
                self.backoff.wait().await;
                match self.connect().await {
                    Ok(()) => {}
                    Err(error) if error.is_retryable() => {}
                    Err(error) => return Err(error),
                }
                continue;
            };
            match stream.message().await {
                Ok(Some(event)) => {
                    self.backoff.reset();
                    self.event(event)?;
                }
                Ok(None) => self.lost(),
                Err(status) if retryable_status(&status) || status.code() == Code::Aborted => {
                    tracing::debug!(%status, group = self.options.group, "group stream broke; rejoining");
                    self.lost();
                }
                Err(status) => {
                    return Err(Error::from_status(
                        "SubscribeBatches",
                        self.source.topic(),
                        &status,
                    ));
                }
            }
        }
    }

    /// Commits, for every assigned partition, the position after the last message
    /// [`GroupMember::next`] returned. [`Error::Rebalanced`] when the group moved on
    /// (the next `next` brings the new Assignment). With [`Commit::Auto`] the broker
    /// commits by itself and this does nothing.
    pub async fn commit(&mut self) -> Result<()> {
        if matches!(self.options.commit, Commit::Auto { .. }) {
            return Ok(());
        }
        let offsets: BTreeMap<TopicPartition, u64> = self
            .consumed
            .iter()
            .filter(|(p, offset)| self.owned.contains(*p) && self.committed.get(*p) != Some(offset))
            .map(|(p, &o)| (p.clone(), o))
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        self.commit_offsets(&offsets).await
    }

    async fn commit_offsets(&mut self, offsets: &BTreeMap<TopicPartition, u64>) -> Result<()> {
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
                })
                .collect(),
        };
        match self.client.groups().commit_offsets(request).await {
            Ok(_) => {
                self.committed
                    .extend(offsets.iter().map(|(p, &o)| (p.clone(), o)));
                Ok(())
            }
            Err(status) if status.code() == Code::FailedPrecondition => Err(Error::Rebalanced {
                message: status.message().to_string(),
            }),
            Err(status) => Err(Error::from_status(
                "CommitOffsets",
                self.source.topic(),
                &status,
            )),
        }
    }

    /// The stream is gone: buffered messages will come again from the committed
    /// offsets, so they are dropped.
    fn lost(&mut self) {
        self.stream = None;
        self.handover = None;
        self.buffer.clear();
        self.consumed.clear();
        self.committed.clear();
    }

    async fn connect(&mut self) -> Result<()> {
        let auto_commit_interval_ms = match self.options.commit {
            Commit::Auto { interval } => (interval.as_millis() as u64).max(1),
            Commit::Explicit => 0,
        };
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
                session_timeout_ms: self.options.session_timeout.as_millis() as u64,
                auto_commit_interval_ms,
                client_id: self.options.client_id.clone(),
                handover_timeout_ms: self.options.handover_timeout.as_millis() as u64,
            }),
            reset_policy: self.options.reset.policy() as i32,
            max_batch_messages: self.options.max_batch_messages,
            filter: self.options.filter.clone(),
            ..SubscribeRequest::default()
        };
        match self.client.consumer().subscribe_batches(request).await {
            Ok(response) => {
                self.stream = Some(response.into_inner());
                Ok(())
            }
            Err(status) => Err(Error::from_status(
                "SubscribeBatches",
                self.source.topic(),
                &status,
            )),
        }
    }

    fn event(&mut self, event: SubscribeBatchesResponse) -> Result<()> {
        match event.event {
            Some(subscribe_batches_response::Event::Batches(batches)) => {
                let partition = batches.partition;
                let topic = self.batch_topic(batches.position.as_ref().map(|p| &*p.topic))?;
                let mut messages = VecDeque::new();
                for batch in &batches.batches {
                    decode_into(&topic, partition, batch, batches.now_ms, &mut messages)?;
                }
                let after = batches.position.map(|p| p.next_offset);
                // A message's position is the next delivered message's offset, or the
                // read's position for the last one (never "offset + 1": expired and
                // filtered records leave gaps).
                let mut messages = messages.into_iter().peekable();
                while let Some(message) = messages.next() {
                    let position = messages
                        .peek()
                        .map(|next| next.offset)
                        .or(after)
                        .unwrap_or(message.offset + 1);
                    self.buffer.push_back((message, position));
                }
                // A read without messages (a filter skipped them all) still moves the
                // position, so commits pass the skipped records.
                let key = (topic, partition);
                if self.buffer.is_empty()
                    && let Some(offset) = after
                    && self.owned.contains(&key)
                {
                    self.consumed.insert(key, offset);
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
                            let topic: Arc<str> = Arc::from(t.topic.as_str());
                            t.partitions.iter().map(move |&p| (topic.clone(), p))
                        })
                        .collect(),
                };
                let revoked: Vec<&TopicPartition> = self.owned.difference(&owned).collect();
                tracing::debug!(
                    group = self.options.group,
                    generation = assignment.generation,
                    assigned = ?owned,
                    ?revoked,
                    "assignment"
                );
                let revoked = !revoked.is_empty();
                self.member_id = assignment.member_id;
                self.generation = assignment.generation;
                self.partitions = assignment.partitions;
                self.topics = assignment
                    .topics
                    .into_iter()
                    .map(|t| (Arc::from(t.topic.as_str()), t.partitions))
                    .collect();
                self.owned = owned;
                let owned = &self.owned;
                self.buffer
                    .retain(|(m, _)| owned.contains(&(m.topic.clone(), m.partition)));
                if self.options.commit == Commit::Explicit && revoked {
                    // Hand the revoked partitions over at what was returned, in the new
                    // generation (which also ends the broker's handover window). Done
                    // by `next` before it returns another message, so a `next`
                    // cancelled mid-commit (a select!, a timeout) commits on its
                    // next call instead of leaving the handover undone.
                    let handover: BTreeMap<TopicPartition, u64> = self
                        .consumed
                        .iter()
                        .filter(|(p, offset)| self.committed.get(*p) != Some(offset))
                        .map(|(p, &o)| (p.clone(), o))
                        .collect();
                    self.handover = Some(handover);
                }
                let owned = &self.owned;
                self.consumed.retain(|p, _| owned.contains(p));
                self.committed.retain(|p, _| owned.contains(p));
            }
            Some(subscribe_batches_response::Event::PositionReset(reset)) => {
                tracing::info!(
                    group = self.options.group,
                    topic = reset.topic,
                    partition = reset.partition,
                    to = reset.to_offset,
                    "position reset"
                );
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

    /// A commit with no offsets: ends the handover window of this generation.
    async fn end_handover(&mut self) -> Result<()> {
        let request = CommitOffsetsRequest {
            group_id: self.options.group.clone(),
            member_id: self.member_id.clone(),
            generation: Some(self.generation),
            offsets: Vec::new(),
        };
        self.client
            .groups()
            .commit_offsets(request)
            .await
            .map(|_| ())
            .map_err(|status| Error::from_status("CommitOffsets", self.source.topic(), &status))
    }
}
