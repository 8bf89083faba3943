//! A consumer-group member: `SubscribeBatches` with a group (the broker sends stored
//! batches, decoded here as a [`super::Subscription`] decodes them), `CommitOffsets`,
//! and the `Assignment` events of rebalances.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tidelog_proto::v1::{
    CommitOffsetsRequest, GroupMembership, SubscribeBatchesResponse, SubscribeRequest,
    TopicPartitionOffset, subscribe_batches_response,
};
use tonic::Code;

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

/// A member of a consumer group reading one topic: the broker assigns it partitions
/// and moves them when members join or leave.
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
    topic: Arc<str>,
    options: GroupOptions,
    member_id: String,
    generation: u64,
    partitions: Vec<u32>,
    stream: Option<tonic::Streaming<SubscribeBatchesResponse>>,
    /// Messages received, each with its partition's position after it.
    buffer: VecDeque<(Message, u64)>,
    /// Per partition, the position after the last message `next` returned.
    consumed: BTreeMap<u32, u64>,
    /// Per partition, the position last committed by this member.
    committed: BTreeMap<u32, u64>,
    /// A rebalance took partitions away: what to commit in the new generation.
    handover: Option<BTreeMap<u32, u64>>,
    backoff: Backoff,
}

impl GroupMember {
    /// Joins `options.group` on `topic`; returns after the first Assignment.
    pub async fn join(client: &Client, topic: &str, options: GroupOptions) -> Result<GroupMember> {
        let mut member = GroupMember {
            client: client.clone(),
            topic: Arc::from(topic),
            options,
            member_id: String::new(),
            generation: 0,
            partitions: Vec::new(),
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
                    return Err(Error::from_status("SubscribeBatches", Some(topic), &status));
                }
            }
        }
        Ok(member)
    }

    /// The member id, the generation and the partitions of the latest Assignment.
    pub fn assignment(&self) -> (&str, u64, &[u32]) {
        (&self.member_id, self.generation, &self.partitions)
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
                self.consumed.insert(message.partition, position);
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
                        Some(&self.topic),
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
        let offsets: BTreeMap<u32, u64> = self
            .consumed
            .iter()
            .filter(|(p, offset)| {
                self.partitions.contains(p) && self.committed.get(p) != Some(offset)
            })
            .map(|(&p, &o)| (p, o))
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        self.commit_offsets(&offsets).await
    }

    async fn commit_offsets(&mut self, offsets: &BTreeMap<u32, u64>) -> Result<()> {
        let request = CommitOffsetsRequest {
            group_id: self.options.group.clone(),
            member_id: self.member_id.clone(),
            generation: Some(self.generation),
            offsets: offsets
                .iter()
                .map(|(&partition, &offset)| TopicPartitionOffset {
                    topic: self.topic.to_string(),
                    partition,
                    offset,
                    metadata: String::new(),
                })
                .collect(),
        };
        match self.client.groups().commit_offsets(request).await {
            Ok(_) => {
                self.committed.extend(offsets);
                Ok(())
            }
            Err(status) if status.code() == Code::FailedPrecondition => Err(Error::Rebalanced {
                message: status.message().to_string(),
            }),
            Err(status) => Err(Error::from_status(
                "CommitOffsets",
                Some(&self.topic),
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
        let request = SubscribeRequest {
            topic: self.topic.to_string(),
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
                Some(&self.topic),
                &status,
            )),
        }
    }

    fn event(&mut self, event: SubscribeBatchesResponse) -> Result<()> {
        match event.event {
            Some(subscribe_batches_response::Event::Batches(batches)) => {
                let partition = batches.partition;
                let mut messages = VecDeque::new();
                for batch in &batches.batches {
                    decode_into(&self.topic, partition, batch, batches.now_ms, &mut messages)?;
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
                if self.buffer.is_empty()
                    && let Some(offset) = after
                    && self.partitions.contains(&partition)
                {
                    self.consumed.insert(partition, offset);
                }
            }
            Some(subscribe_batches_response::Event::Assignment(assignment)) => {
                let revoked: Vec<u32> = self
                    .partitions
                    .iter()
                    .copied()
                    .filter(|p| !assignment.partitions.contains(p))
                    .collect();
                tracing::debug!(
                    group = self.options.group,
                    generation = assignment.generation,
                    partitions = ?assignment.partitions,
                    ?revoked,
                    "assignment"
                );
                self.member_id = assignment.member_id;
                self.generation = assignment.generation;
                self.partitions = assignment.partitions;
                let owned = &self.partitions;
                self.buffer.retain(|(m, _)| owned.contains(&m.partition));
                if self.options.commit == Commit::Explicit && !revoked.is_empty() {
                    // Hand the revoked partitions over at what was returned, in the new
                    // generation (which also ends the broker's handover window). Done
                    // by `next` before it returns another message, so a `next`
                    // cancelled mid-commit (a select!, a timeout) commits on its
                    // next call instead of leaving the handover undone.
                    let handover: BTreeMap<u32, u64> = self
                        .consumed
                        .iter()
                        .filter(|(p, offset)| self.committed.get(p) != Some(offset))
                        .map(|(&p, &o)| (p, o))
                        .collect();
                    self.handover = Some(handover);
                }
                let owned = &self.partitions;
                self.consumed.retain(|p, _| owned.contains(p));
                self.committed.retain(|p, _| owned.contains(p));
            }
            Some(subscribe_batches_response::Event::PositionReset(reset)) => {
                tracing::info!(
                    group = self.options.group,
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
            .map_err(|status| Error::from_status("CommitOffsets", Some(&self.topic), &status))
    }
}
