//! The delivery task behind one group member's Subscribe stream.
//!
//! One tokio task per stream. It owns the member's read positions and the leases of
//! the partitions it reads (see [`super::coordinator`]), and it is the only writer to
//! the stream, so events reach the client in the order the task decides:
//!
//! 1. An `Assign` from the coordinator first stops the revoked partitions (auto-commits
//!    their positions, then releases their leases), then queues the Assignment event,
//!    then starts waiting for the leases of the partitions gained. With a handover
//!    window (client commits and `handover_timeout_ms`), a revoked partition is
//!    stopped but its lease kept until the client commits in the new generation
//!    (`HandOver`), the window ends, or the stream ends; the client may commit it
//!    meanwhile, and its next owner starts from that commit. Assigned back to this
//!    member within the window, it starts again from the committed offset too (the
//!    client dropped what it held of it), unless the Assignment that took it away
//!    never went out.
//! 2. Queued events (Assignment, PositionReset) always go out before more messages,
//!    so a member never sees messages of a generation before that generation's
//!    Assignment, nor a partition's messages before the PositionReset that moved it.
//! 3. Messages are read only when the stream has room for another event (a bounded
//!    channel that tonic drains as HTTP/2 flow control allows), so a slow consumer
//!    holds at most [`SUBSCRIBE_QUEUE_EVENTS`] batches in memory and a rebalance is
//!    never stuck behind a full stream. The owned partitions are read by
//!    [`read_round`], the loop every Subscribe uses: partitions take turns, a batch
//!    fills from several of them within the byte and message budget (only a batch's
//!    first message may be over it), and a position moves only past what was sent.
//!
//! A member of `SubscribeBatches` ([`Settings::batches`]) is the same task: its events
//! go out as `SubscribeBatchesResponse`s ([`Out::Batches`]), and its data as the stored
//! batches of one partition at a time, partitions taking turns, as a plain
//! SubscribeBatches reads them ([`crate::read::batches::read_partition`]); the position moves
//! past the batches sent.
//!
//! Partitions are keyed by `(topic, partition)`: a member subscribed by pattern owns
//! partitions of several topics, and each Assign names the topics (their current
//! incarnations). A partition whose topic went (deleted, or deleted and created
//! again) is dropped without a commit, so no commit brings back offsets DeleteTopic
//! removed; for a pattern member the task asks the coordinator to rescan at once and
//! reads on (the topic drops out of the next Assignment).
//!
//! When the stream ends (the client went away, another stream took over the member,
//! its one topic was deleted, the broker shuts down, or an error), the task commits
//! its positions (with auto-commit), releases its leases, tells the coordinator, and
//! finally sends the ending status if there is one.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    Assignment, PositionReset, ResetPolicy, ResetReason, SubscribeBatchesResponse,
    SubscribeResponse, TopicPartitions, subscribe_batches_response,
};
use tidelog_storage::{Error, Filter, Topic, WaitForAnyData};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{Interval, MissedTickBehavior};
use tonic::Status;

use super::coordinator::{Control, GroupCoordinator, Joined, TopicPartition};
use crate::AppState;
use crate::convert;
use crate::read::{
    Batching, Cursor, ReadLimits, Round, SUBSCRIBE_QUEUE_EVENTS, batch_goes_out, read_round,
};

/// Pause before looking again at a poisoned partition that woke a reader without data.
pub const IDLE_BACKOFF: Duration = Duration::from_millis(100);
/// How long an ending member stream waits for room to send its final status.
pub const FINAL_STATUS_WAIT: Duration = Duration::from_secs(5);

/// How a member reads, from its SubscribeRequest (validated by the caller).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// EARLIEST, LATEST or ERROR (UNSPECIFIED already mapped to EARLIEST).
    pub reset_policy: ResetPolicy,
    /// `None` = the client commits.
    pub auto_commit: Option<Duration>,
    /// With client commits: how long a revoked partition is kept for the client's
    /// commit. `None` = released at once.
    pub handover: Option<Duration>,
    pub limits: ReadLimits,
    /// Only messages it matches are sent; the position (and so the commit) still
    /// moves past those it skips.
    pub filter: Option<Arc<Filter>>,
    /// The stream is a SubscribeBatches: data goes out as stored batches.
    pub batches: bool,
}

/// One event of a member stream: Subscribe's, or SubscribeBatches'.
#[derive(Debug)]
pub(crate) enum Out {
    Messages(SubscribeResponse),
    Batches(SubscribeBatchesResponse),
}

/// The sending half of a member stream.
pub(crate) type Sender = mpsc::Sender<Result<Out, Status>>;

/// A partition this member reads, with the lease that makes it the only reader.
#[derive(Debug)]
struct Owned {
    /// The partition's topic (this incarnation of it).
    topic: Arc<Topic>,
    /// The partition and the offset of the next message to send (naming its topic on
    /// a pattern member's stream).
    cursor: Cursor,
    /// What the offsets store holds for the group, as far as this task knows; an
    /// auto-commit writes only positions that differ.
    committed: Option<u64>,
    _lease: OwnedSemaphorePermit,
}

/// A revoked partition kept (lease and all, but no longer read) in a handover window.
#[derive(Debug)]
struct Revoking {
    /// Holds the lease; dropping it hands the partition over.
    owned: Owned,
    /// The generation of the Assign that revoked it: a commit in this generation or a
    /// later one shows the client saw that Assignment, and so every message before it.
    generation: u64,
    deadline: tokio::time::Instant,
}

/// Result of waiting for one partition's lease.
type LeaseOutcome = (TopicPartition, u64, Option<OwnedSemaphorePermit>);

pub(crate) struct MemberTask {
    app: Arc<AppState>,
    group_id: String,
    member_id: String,
    stream_id: u64,
    /// Subscribed by pattern: messages, positions and resets name their topic, the
    /// Assignment lists topics, and a deleted topic drops out instead of ending the
    /// stream.
    pattern: bool,
    /// The topics of the latest Assign, by name.
    topics: BTreeMap<String, Arc<Topic>>,
    settings: Settings,
    out: Sender,
    control: mpsc::UnboundedReceiver<Control>,
    /// Partitions of the latest Assign, read or waited for.
    owned: BTreeMap<TopicPartition, Owned>,
    /// Revoked partitions kept for the client's commit (handover window).
    revoking: BTreeMap<TopicPartition, Revoking>,
    /// Leases being waited for: partition -> (token, handle to cancel the wait).
    pending: HashMap<TopicPartition, (u64, AbortHandle)>,
    acquiring: JoinSet<LeaseOutcome>,
    next_token: u64,
    /// Events to send before any more messages.
    events: VecDeque<Event>,
    /// Some owned partition may have messages at its position.
    data_ready: bool,
    /// Woken without data (a poisoned partition): wait a moment before looking again.
    backoff: bool,
    /// The partition read first next time (an index into `owned`, see
    /// [`read_round`]), so a busy partition cannot starve others.
    turn: usize,
    /// When the last batch went out (see [`crate::read::SKIP_PROGRESS_INTERVAL`]).
    last_batch: Instant,
    /// The generation of the last Assignment handed to the stream (0 before the
    /// first): the client reads events in order, so it sees every partition that
    /// Assignment took away as revoked.
    sent_generation: u64,
}

impl MemberTask {
    pub(crate) fn new(
        app: Arc<AppState>,
        group_id: String,
        joined: Joined,
        pattern: bool,
        settings: Settings,
        out: Sender,
    ) -> Self {
        MemberTask {
            app,
            group_id,
            member_id: joined.member_id,
            stream_id: joined.stream_id,
            pattern,
            topics: BTreeMap::new(),
            settings,
            out,
            control: joined.control,
            owned: BTreeMap::new(),
            revoking: BTreeMap::new(),
            pending: HashMap::new(),
            acquiring: JoinSet::new(),
            next_token: 0,
            events: VecDeque::new(),
            data_ready: false,
            backoff: false,
            turn: 0,
            last_batch: Instant::now(),
            sent_generation: 0,
        }
    }

    fn coordinator(&self) -> &Arc<GroupCoordinator> {
        &self.app.groups
    }

    /// Runs the stream to its end.
    pub(crate) async fn run(mut self) {
        let started = Instant::now();
        let _open = self.app.metrics.open_stream("subscribe");
        let outcome = self.deliver().await;
        self.acquiring.abort_all();
        self.pending.clear();
        let all: Vec<TopicPartition> = self.owned.keys().cloned().collect();
        self.commit_positions(&all).await;
        // Releases the leases: the partitions' next owners may start.
        self.owned.clear();
        self.revoking.clear();
        self.coordinator()
            .stream_ended(&self.group_id, &self.member_id, self.stream_id);
        match &outcome {
            Ok(()) => {
                tracing::debug!(group = %self.group_id, member = %self.member_id, "member stream closed by the client");
            }
            Err(status) => {
                tracing::info!(group = %self.group_id, member = %self.member_id, code = ?status.code(), message = status.message(), "member stream ended");
            }
        }
        self.app.metrics.rpc_finished(
            if self.settings.batches {
                "SubscribeBatches"
            } else {
                "Subscribe"
            },
            started,
            outcome.as_ref().err().map(Status::code),
        );
        if let Err(status) = outcome {
            // Best effort: the client may be gone or not reading.
            let send = self.out.send(Err(status));
            let _ = tokio::time::timeout(FINAL_STATUS_WAIT, send).await;
        }
    }

    /// The event loop. `Ok` when the client went away, `Err` with the status to end
    /// the stream with otherwise.
    async fn deliver(&mut self) -> Result<(), Status> {
        let mut ticker = self.settings.auto_commit.map(|period| {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticker
        });
        let shutdown = self.app.shutdown.clone();
        let shutdown = shutdown.wait();
        tokio::pin!(shutdown);
        // A handle of our own, so a reserved slot does not borrow `self`.
        let out = self.out.clone();
        loop {
            let want_send = !self.events.is_empty() || (self.data_ready && !self.owned.is_empty());
            let watch_data = !self.data_ready && !self.backoff && !self.owned.is_empty();
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    return Err(crate::shutdown::unavailable(
                        "reconnect with the same member_id to keep the partitions",
                    ));
                }
                control = self.control.recv() => match control {
                    Some(Control::Assign { generation, partitions, topics }) => {
                        self.on_assign(generation, partitions, topics).await?;
                    }
                    Some(Control::HandOver { generation }) => {
                        self.release_revoking(|r| r.generation <= generation);
                    }
                    Some(Control::End(status)) => return Err(status),
                    None => return Err(Status::unavailable("the group coordinator stopped")),
                },
                () = out.closed() => return Ok(()),
                Some(joined) = self.acquiring.join_next(), if !self.acquiring.is_empty() => {
                    // An Err is a wait cancelled by a revoke.
                    if let Ok((tp, token, Some(permit))) = joined {
                        self.on_lease(tp, token, permit)?;
                    }
                }
                () = handover_deadline(&self.revoking) => {
                    let now = tokio::time::Instant::now();
                    self.release_revoking(|r| r.deadline <= now);
                }
                () = tick(&mut ticker) => {
                    let all: Vec<TopicPartition> = self.owned.keys().cloned().collect();
                    self.commit_positions(&all).await;
                }
                permit = out.reserve(), if want_send => match permit {
                    Ok(permit) => self.send_next(permit)?,
                    Err(_) => return Ok(()),
                },
                () = any_data(&self.owned), if watch_data => self.on_data_signal()?,
                () = tokio::time::sleep(IDLE_BACKOFF), if self.backoff => {
                    self.backoff = false;
                    self.data_ready = true;
                }
            }
        }
    }

    /// Applies a new assignment (see the module docs for the order of steps).
    async fn on_assign(
        &mut self,
        generation: u64,
        partitions: Vec<TopicPartition>,
        topics: BTreeMap<String, Arc<Topic>>,
    ) -> Result<(), Status> {
        let assigned: BTreeSet<TopicPartition> = partitions.iter().cloned().collect();
        // Partitions of a topic that went (or came back as a new incarnation): their
        // positions and leases mean nothing now, and a commit would bring back
        // offsets DeleteTopic removed.
        let gone: Vec<TopicPartition> = self
            .owned
            .iter()
            .filter(|((name, _), owned)| {
                !topics
                    .get(name)
                    .is_some_and(|t| t.is_same_topic(&owned.topic))
            })
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in &gone {
            self.owned.remove(tp);
        }
        self.revoking.retain(|(name, _), kept| {
            topics
                .get(name)
                .is_some_and(|t| t.is_same_topic(&kept.owned.topic))
        });
        self.topics = topics;
        let revoked: Vec<TopicPartition> = self
            .owned
            .keys()
            .filter(|tp| !assigned.contains(*tp))
            .cloned()
            .collect();
        self.pending.retain(|tp, (_, handle)| {
            let keep = assigned.contains(tp);
            if !keep {
                handle.abort();
            }
            keep
        });
        self.commit_positions(&revoked).await;
        // Kept in a handover window and assigned again. If the Assignment that took it
        // away never went out (this one replaces it unsent), the client still reads
        // it: read it on from the same position, so nothing is skipped or repeated.
        // Otherwise the client saw it revoked and dropped what it had received of it
        // but not returned: it starts again at the group's committed offset, as any
        // grant does (below, after the Assignment is queued), with the lease kept.
        let back: Vec<TopicPartition> = self
            .revoking
            .keys()
            .filter(|tp| assigned.contains(*tp))
            .cloned()
            .collect();
        let mut granted_again = Vec::new();
        for tp in back {
            if let Some(kept) = self.revoking.remove(&tp) {
                if kept.generation > self.sent_generation {
                    self.owned.insert(tp, kept.owned);
                    self.data_ready = true;
                } else {
                    granted_again.push((tp, kept.owned));
                }
            }
        }
        for tp in &revoked {
            // Dropping the entry releases the lease, unless a handover window keeps it.
            let Some(owned) = self.owned.remove(tp) else {
                continue;
            };
            if let Some(window) = self.settings.handover {
                self.revoking.insert(
                    tp.clone(),
                    Revoking {
                        owned,
                        generation,
                        deadline: tokio::time::Instant::now() + window,
                    },
                );
            }
        }
        self.publish_revoking();
        let pattern = self.pattern;
        self.events.retain(|event| match event {
            Event::PositionReset(reset) => {
                // A pattern stream's resets name their topic; a one-topic stream's
                // partitions are all of its topic.
                assigned.iter().any(|(topic, partition)| {
                    *partition == reset.partition && (!pattern || *topic == reset.topic)
                })
            }
            _ => true,
        });
        let assignment = Event::Assignment(self.assignment_event(generation, &partitions));
        // A client that is not reading would otherwise collect one Assignment per
        // rebalance: replace an unsent one in place (what follows it concerns
        // partitions still assigned), so the queue stays bounded by the partitions.
        match self
            .events
            .iter_mut()
            .find(|event| matches!(event, Event::Assignment(_)))
        {
            Some(unsent) => *unsent = assignment,
            None => self.events.push_back(assignment),
        }
        for (tp, kept) in granted_again {
            self.start(tp, kept.topic, kept._lease)?;
        }
        for tp in assigned {
            if self.owned.contains_key(&tp) || self.pending.contains_key(&tp) {
                continue;
            }
            let lease = self.coordinator().lease(&self.group_id, &tp.0, tp.1);
            let token = self.next_token;
            self.next_token += 1;
            let key = tp.clone();
            let handle = self.acquiring.spawn(async move {
                // The semaphore is never closed; an Err would only mean "no lease".
                (key, token, lease.acquire_owned().await.ok())
            });
            self.pending.insert(tp, (token, handle));
        }
        if !revoked.is_empty() || !gone.is_empty() {
            tracing::debug!(group = %self.group_id, member = %self.member_id, generation, ?revoked, ?gone, "stopped revoked partitions");
        }
        Ok(())
    }

    /// The Assignment event of `partitions`: a list of partition numbers for a member
    /// of one topic, every matched topic with its partitions for a pattern member.
    fn assignment_event(&self, generation: u64, partitions: &[TopicPartition]) -> Assignment {
        if !self.pattern {
            return Assignment {
                member_id: self.member_id.clone(),
                generation,
                partitions: partitions.iter().map(|(_, p)| *p).collect(),
                topics: Vec::new(),
            };
        }
        let topics = self
            .topics
            .keys()
            .map(|name| TopicPartitions {
                topic: name.clone(),
                partitions: partitions
                    .iter()
                    .filter(|(t, _)| t == name)
                    .map(|(_, p)| *p)
                    .collect(),
            })
            .collect();
        Assignment {
            member_id: self.member_id.clone(),
            generation,
            partitions: Vec::new(),
            topics,
        }
    }

    /// Hands over the kept revoked partitions that `done` selects (their next owners
    /// may start) and tells the coordinator what is still kept.
    fn release_revoking(&mut self, done: impl Fn(&Revoking) -> bool) {
        let before = self.revoking.len();
        self.revoking.retain(|_, kept| !done(kept));
        if self.revoking.len() != before {
            self.publish_revoking();
        }
    }

    /// Tells the coordinator which revoked partitions this member may still commit.
    fn publish_revoking(&self) {
        self.coordinator().set_revoking(
            &self.group_id,
            &self.member_id,
            self.stream_id,
            self.revoking.keys().cloned().collect(),
        );
    }

    /// The lease of `tp` is ours: find where to start and begin reading.
    fn on_lease(
        &mut self,
        tp: TopicPartition,
        token: u64,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), Status> {
        match self.pending.get(&tp) {
            Some((current, _)) if *current == token => {
                self.pending.remove(&tp);
            }
            // Revoked (or re-requested) while the wait completed: give it back.
            _ => return Ok(()),
        }
        let (name, partition) = (tp.0.as_str(), tp.1);
        let Some(mut topic) = self.topics.get(name).cloned() else {
            return Ok(());
        };
        // Partitions added since the Assign are in the store's newer value.
        if topic.partitions().len() <= partition as usize
            && let Ok(current) = self.app.store.topic(name)
            && current.is_same_topic(&topic)
        {
            topic = current;
            self.topics.insert(name.to_string(), topic.clone());
        }
        self.start(tp, topic, permit)
    }

    /// Starts reading `tp`, whose lease `permit` is, at the group's committed offset
    /// (or where the reset policy puts it).
    fn start(
        &mut self,
        tp: TopicPartition,
        topic: Arc<Topic>,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), Status> {
        let (name, partition) = (tp.0.as_str(), tp.1);
        let Some(log) = topic.partitions().get(partition as usize).cloned() else {
            return Err(Status::not_found(format!(
                "topic {name:?} has no partition {partition}"
            )));
        };
        // Read only now, after the previous owner's final commit.
        let committed = self
            .app
            .store
            .offsets()
            .fetch(&self.group_id, name, partition)
            .map(|c| c.offset);
        // A partition recovery refused to open fails the member (UNAVAILABLE naming
        // it) before any reset: its commit stays as it is until the repair.
        let (log_start, end) = convert::or_status(log.bounds())?;
        let position = match committed {
            Some(offset) if offset < log_start => self.reset(
                &tp,
                Some(offset),
                log_start,
                end,
                ResetReason::BelowLogStart,
            )?,
            Some(offset) if offset > end => self.reset(
                &tp,
                Some(offset),
                log_start,
                end,
                ResetReason::AboveEndOffset,
            )?,
            Some(offset) => offset,
            None => self.reset(&tp, None, log_start, end, ResetReason::NoCommittedOffset)?,
        };
        let cursor = if self.pattern {
            Cursor::in_topic(log, position, Arc::from(name))
        } else {
            Cursor::new(log, position)
        };
        self.owned.insert(
            tp,
            Owned {
                topic,
                cursor,
                committed,
                _lease: permit,
            },
        );
        self.data_ready = true;
        Ok(())
    }

    /// Applies the reset policy to an unusable position, queues the PositionReset
    /// event and returns the new position; OUT_OF_RANGE with policy ERROR.
    fn reset(
        &mut self,
        tp: &TopicPartition,
        from: Option<u64>,
        log_start: u64,
        end: u64,
        reason: ResetReason,
    ) -> Result<u64, Status> {
        let (topic, partition) = (tp.0.as_str(), tp.1);
        let to = match self.settings.reset_policy {
            ResetPolicy::Latest => end,
            ResetPolicy::Error => {
                let what = match from {
                    Some(offset) => format!(
                        "position {offset} of group {:?} on {topic}/{partition} is outside the partition's offsets {log_start}..{end} (start inclusive, end exclusive)",
                        self.group_id
                    ),
                    None => format!(
                        "group {:?} has no committed offset for {topic}/{partition} (offsets {log_start}..{end})",
                        self.group_id
                    ),
                };
                return Err(Status::out_of_range(format!(
                    "{what} and reset_policy is ERROR; move the group with Groups.ResetOffsets or subscribe with reset_policy EARLIEST or LATEST"
                )));
            }
            ResetPolicy::Earliest | ResetPolicy::Unspecified => log_start,
        };
        self.app.metrics.position_reset(topic, reason);
        let topic_id = self.topics.get(topic).map_or(0, |t| t.id().get());
        self.events.push_back(Event::PositionReset(PositionReset {
            partition,
            from_offset: from,
            to_offset: to,
            reason: reason as i32,
            topic: if self.pattern {
                topic.to_string()
            } else {
                String::new()
            },
            topic_id,
        }));
        Ok(to)
    }

    /// `event` in the stream's form. A batch form stream queues only Assignment and
    /// PositionReset events.
    fn out(&self, event: Event) -> Out {
        if !self.settings.batches {
            return Out::Messages(SubscribeResponse { event: Some(event) });
        }
        use subscribe_batches_response::Event as B;
        let event = match event {
            Event::Assignment(a) => Some(B::Assignment(a)),
            Event::PositionReset(r) => Some(B::PositionReset(r)),
            Event::Positioned(p) => Some(B::Positioned(p)),
            Event::Batch(_) | Event::TopicsChanged(_) => None,
        };
        Out::Batches(SubscribeBatchesResponse { event })
    }

    /// Sends the next queued event, or a batch of messages if there is one.
    fn send_next(&mut self, permit: mpsc::Permit<'_, Result<Out, Status>>) -> Result<(), Status> {
        if let Some(event) = self.events.pop_front() {
            let delivered = match &event {
                Event::Assignment(a) => Some(a.generation),
                _ => None,
            };
            permit.send(Ok(self.out(event)));
            if let Some(generation) = delivered {
                self.sent_generation = generation;
                self.coordinator().assignment_delivered(
                    &self.group_id,
                    &self.member_id,
                    self.stream_id,
                    generation,
                );
            }
            return Ok(());
        }
        if self.settings.batches {
            return self.send_batches(permit);
        }
        let mut cursors: Vec<&mut Cursor> =
            self.owned.values_mut().map(|o| &mut o.cursor).collect();
        let round = read_round(
            &mut cursors,
            &mut self.turn,
            self.settings.limits,
            Batching::Fill,
            self.settings.filter.as_deref(),
        );
        let round = match round {
            // A pattern member reads on without the topic that went.
            Err(Error::TopicDeleted { .. }) if self.pattern => {
                self.drop_gone_topics();
                return Ok(());
            }
            round => round,
        };
        match round.map_err(|error| self.read_error(&error))? {
            Round::Batch {
                batch,
                bytes,
                filtered,
            } => {
                self.app.metrics.filtered("group", filtered);
                let delivered = !batch.messages.is_empty();
                // Without messages, now and then the positions alone go out, so a
                // client that commits itself can commit past what was skipped
                // (filtered or expired).
                let mut cursors: Vec<&mut Cursor> =
                    self.owned.values_mut().map(|o| &mut o.cursor).collect();
                if batch_goes_out(&mut cursors, &batch, &mut self.last_batch, Instant::now()) {
                    if delivered {
                        self.count_fetched(&batch, bytes);
                    }
                    permit.send(Ok(Out::Messages(SubscribeResponse {
                        event: Some(Event::Batch(batch)),
                    })));
                }
                // The filter may have more to look at: stay ready.
                if !delivered && filtered.skipped == 0 && self.events.is_empty() {
                    self.data_ready = false;
                }
            }
            Round::OutOfRange {
                index,
                requested,
                log_start,
                end,
                ..
            } => {
                let reason = if requested < log_start {
                    ResetReason::BelowLogStart
                } else {
                    ResetReason::AboveEndOffset
                };
                // The cursors were the owned partitions in key order.
                let Some(tp) = self.owned.keys().nth(index).cloned() else {
                    return Ok(());
                };
                let to = self.reset(&tp, Some(requested), log_start, end, reason)?;
                if let Some(owned) = self.owned.get_mut(&tp) {
                    owned.cursor.reset_to(to);
                }
                // Read it again after its PositionReset event has gone out.
            }
        }
        Ok(())
    }

    /// The batch form of the data step of [`MemberTask::send_next`]: the stored
    /// batches of the next owned partition (in turn) that has any, as one
    /// RecordBatches, or the position alone of one whose read moved past records it
    /// never sends (see [`crate::read::batches::goes_out`]).
    fn send_batches(
        &mut self,
        permit: mpsc::Permit<'_, Result<Out, Status>>,
    ) -> Result<(), Status> {
        let keys: Vec<TopicPartition> = self.owned.keys().cloned().collect();
        let count = keys.len();
        for step in 0..count {
            let index = (self.turn + step) % count;
            let tp = &keys[index];
            let Some(owned) = self.owned.get_mut(tp) else {
                continue;
            };
            let from = owned.cursor.position;
            let read = crate::read::batches::read_partition(
                &owned.cursor.partition,
                from,
                self.settings.limits,
                self.settings.filter.as_deref(),
            );
            let result = match read {
                Ok(result) => result,
                Err(Error::TopicDeleted { .. }) if self.pattern => {
                    self.drop_gone_topics();
                    return Ok(());
                }
                Err(Error::OffsetOutOfRange {
                    requested,
                    log_start,
                    end,
                    ..
                }) => {
                    let reason = if requested < log_start {
                        ResetReason::BelowLogStart
                    } else {
                        ResetReason::AboveEndOffset
                    };
                    let tp = tp.clone();
                    let to = self.reset(&tp, Some(requested), log_start, end, reason)?;
                    if let Some(owned) = self.owned.get_mut(&tp) {
                        owned.cursor.reset_to(to);
                    }
                    // Read it again after its PositionReset event has gone out.
                    return Ok(());
                }
                Err(error) => return Err(self.read_error(&error)),
            };
            owned.cursor.position = result.next_offset;
            self.app.metrics.filtered("group", result.filtered);
            if !crate::read::batches::goes_out(&result, from) {
                continue;
            }
            self.turn = (index + 1) % count;
            self.last_batch = Instant::now();
            let topic = if self.pattern { tp.0.as_str() } else { "" };
            let (records, bytes) = crate::read::batches::delivered(&result.batches);
            self.app.metrics.fetched(&tp.0, records, bytes);
            permit.send(Ok(Out::Batches(crate::read::batches::record_batches(
                &owned.cursor.partition,
                result,
                topic,
            ))));
            return Ok(());
        }
        if self.events.is_empty() {
            self.data_ready = false;
        }
        Ok(())
    }

    /// Counts a batch's messages and bytes per topic in the metrics.
    fn count_fetched(&self, batch: &tidelog_proto::v1::MessageBatch, bytes: u64) {
        if !self.pattern {
            let topic = self.topics.keys().next().map_or("", String::as_str);
            self.app
                .metrics
                .fetched(topic, batch.messages.len() as u64, bytes);
            return;
        }
        // A batch may hold several topics: count each topic's messages, and the
        // bytes by what each message weighs (its id, key, value and headers).
        let mut per_topic: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for m in &batch.messages {
            let weight = (m.id.len()
                + m.key.len()
                + m.value.len()
                + m.headers
                    .iter()
                    .map(|h| h.key.len() + h.value.len())
                    .sum::<usize>()) as u64;
            let entry = per_topic.entry(m.topic.as_str()).or_default();
            entry.0 += 1;
            entry.1 += weight;
        }
        for (topic, (messages, bytes)) in per_topic {
            self.app.metrics.fetched(topic, messages, bytes);
        }
    }

    /// The status that ends the stream after a failed read.
    fn read_error(&self, error: &Error) -> Status {
        match error {
            Error::TopicDeleted { .. } => self.topic_deleted(),
            error => convert::status(error),
        }
    }

    fn topic_deleted(&self) -> Status {
        Status::not_found(format!(
            "topic {:?} was deleted; group {:?} stopped reading it",
            self.topics.keys().next().map_or("", String::as_str),
            self.group_id
        ))
    }

    /// Whether `owned`'s topic is still the store's topic of that name.
    fn still_there(&self, owned: &Owned) -> bool {
        self.app
            .store
            .topic(owned.topic.name())
            .is_ok_and(|current| current.is_same_topic(&owned.topic))
    }

    /// A pattern member found a topic gone: stop reading its partitions (no commit:
    /// DeleteTopic removed its offsets) and have the coordinator rebalance now, so
    /// the topic leaves the Assignment.
    fn drop_gone_topics(&mut self) {
        let gone: Vec<TopicPartition> = self
            .owned
            .iter()
            .filter(|(_, owned)| !self.still_there(owned))
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in &gone {
            self.owned.remove(tp);
        }
        self.turn = 0;
        self.data_ready = !self.owned.is_empty();
        if gone.is_empty() {
            // The delete is under way (the list still holds the topic): look again in
            // a moment rather than spin on the failing read.
            self.backoff = true;
            self.data_ready = false;
        } else {
            tracing::debug!(group = %self.group_id, member = %self.member_id, ?gone, "a matched topic went; its partitions drop out");
        }
        self.coordinator().rescan_topics();
    }

    /// A partition woke the task. Either data arrived, or the partition ended
    /// (deleted topic, broker closing) or is poisoned: tell which.
    fn on_data_signal(&mut self) -> Result<(), Status> {
        let has_data = self.owned.values().any(|o| {
            let partition = &o.cursor.partition;
            partition.bounds().is_ok_and(|(log_start, end)| {
                o.cursor.position != end || o.cursor.position < log_start
            })
        });
        if has_data {
            self.data_ready = true;
            return Ok(());
        }
        if self.owned.values().any(|o| !self.still_there(o)) {
            if self.pattern {
                self.drop_gone_topics();
                return Ok(());
            }
            return Err(self.topic_deleted());
        }
        if self
            .owned
            .values()
            .any(|o| o.cursor.partition.poisoned().is_some())
        {
            // Durable data stays readable, but no new data will come until a restart;
            // look again now and then instead of spinning on the wake-up.
            self.backoff = true;
            return Ok(());
        }
        Err(crate::shutdown::unavailable(
            "reconnect with the same member_id to keep the partitions",
        ))
    }

    /// With auto-commit, durably commits the positions of `partitions` that moved.
    /// A failed commit is logged and retried at the next tick: the messages it
    /// covered are delivered again after a rebalance rather than lost.
    async fn commit_positions(&mut self, partitions: &[TopicPartition]) {
        if self.settings.auto_commit.is_none() {
            return;
        }
        // Each on the topic it read: not on one that went (that would bring back its
        // offsets), nor on a new topic of its name (the write checks that).
        let commits: Vec<(Arc<Topic>, u32, u64, String)> = partitions
            .iter()
            .filter_map(|tp| {
                let owned = self.owned.get(tp)?;
                (owned.committed != Some(owned.cursor.position) && self.still_there(owned)).then(
                    || {
                        (
                            owned.topic.clone(),
                            tp.1,
                            owned.cursor.position,
                            String::new(),
                        )
                    },
                )
            })
            .collect();
        if commits.is_empty() {
            return;
        }
        let store = self.app.store.clone();
        let group_id = self.group_id.clone();
        let to_write = commits.clone();
        let written =
            tokio::task::spawn_blocking(move || store.commit_offsets(&group_id, &to_write)).await;
        match written {
            Ok(Ok(())) => {
                for (topic, partition, offset, _) in commits {
                    if let Some(owned) = self.owned.get_mut(&(topic.name().to_string(), partition))
                    {
                        owned.committed = Some(offset);
                    }
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(group = %self.group_id, member = %self.member_id, %error, "auto-commit failed");
            }
            Err(error) => {
                tracing::warn!(group = %self.group_id, member = %self.member_id, %error, "auto-commit task failed");
            }
        }
    }
}

/// The next tick of the auto-commit timer; never, without auto-commit.
async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Resolves at the earliest end of a handover window; never without one.
async fn handover_deadline(revoking: &BTreeMap<TopicPartition, Revoking>) {
    match revoking.values().map(|r| r.deadline).min() {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending::<()>().await,
    }
}

/// Resolves when any owned partition has a message at its position, or ended.
fn any_data(owned: &BTreeMap<TopicPartition, Owned>) -> WaitForAnyData {
    WaitForAnyData::new(
        owned
            .values()
            .map(|o| o.cursor.partition.wait_for_data(o.cursor.position)),
    )
}

/// The buffer between a member task and tonic's encoder, in events.
pub(crate) fn channel() -> (Sender, mpsc::Receiver<Result<Out, Status>>) {
    mpsc::channel(SUBSCRIBE_QUEUE_EVENTS)
}
