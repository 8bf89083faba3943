//! The `tidelog.v1.Consumer` service: `Fetch` (unary, long poll) and `Subscribe`
//! (server stream; a plain subscription runs a [`PartitionReader`], a group member's
//! stream is handed to [`crate::groups`]).
//!
//! Reads come straight from the segment mappings: the `Bytes` of keys and values
//! point into the mapping and go to the encoder as they are. Waiting for new data
//! uses the storage engine's `wait_for_data` futures (woken by the append or the
//! group commit that makes data visible), never a poll loop.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidelog_proto::v1::consumer_server::Consumer;
use tidelog_proto::v1::{
    FetchBatchesResponse, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    ListedOffset, SubscribeBatchesResponse, SubscribeRequest, SubscribeResponse,
    list_offsets_request, start_position::Position,
};
use tidelog_storage::{Filter, Partition, ReadResult, Topic};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::auth::rpcs::{self, Rpc};
use crate::auth::{Caller, Target};
use crate::convert;
use crate::read::{
    LaterStart, PartitionReader, ReadLimits, Recreated, TopicAccess, spawn_events,
    spawn_subscription,
};
use tidelog_storage::access::ResourceKind;

/// Longest long poll of a Fetch, whatever the client asks.
pub const FETCH_WAIT_MAX: Duration = Duration::from_secs(30);

/// The Consumer service.
#[derive(Debug, Clone)]
pub struct ConsumerService {
    state: Arc<AppState>,
}

impl ConsumerService {
    pub fn new(state: Arc<AppState>) -> Self {
        ConsumerService { state }
    }

    async fn fetch(&self, request: &Request<FetchRequest>) -> Result<FetchResponse, Status> {
        let wait = fetch_wait(request);
        let request = request.get_ref();
        let topic = convert::or_status(self.state.store.topic(&request.topic))?;
        convert::check_topic_id(&topic, request.topic_id, "nothing was read")?;
        let partition = convert::or_status(topic.partition(request.partition))?.clone();
        let limits = ReadLimits::from_request(request.max_messages, request.max_bytes);
        let filter = convert::filter(&request.filter)?;
        let filter = filter.as_deref();
        let started = Instant::now();
        let mut result = read(&partition, request.offset, limits, filter)?;
        let mut filtered = result.filtered;
        // Caught up with nothing to return: wait for data. With a filter, again while
        // what arrives is skipped, as long as the wait lasts and each read moves on
        // (a poisoned partition's wait resolves at once: never spin on it).
        while result.records.is_empty() && result.next_offset == result.end_offset {
            let left = wait.saturating_sub(started.elapsed());
            if left.is_zero() || self.state.shutdown.is_triggered() {
                break;
            }
            tokio::select! {
                _ = tokio::time::timeout(left, partition.wait_for_data(result.next_offset)) => {}
                _ = self.state.shutdown.wait() => {}
            }
            let from = result.next_offset;
            result = read(&partition, from, limits, filter)?;
            filtered.skipped += result.filtered.skipped;
            filtered.not_json += result.filtered.not_json;
            if filter.is_none() || result.next_offset == from {
                break;
            }
        }
        self.state.metrics.filtered("fetch", filtered);
        let bytes = result
            .records
            .iter()
            .map(tidelog_storage::Record::payload_bytes)
            .sum();
        self.state
            .metrics
            .fetched(topic.name(), result.records.len() as u64, bytes);
        let id = partition.id();
        Ok(FetchResponse {
            topic_id: topic.id().get(),
            next_offset: result.next_offset,
            log_start_offset: result.log_start,
            end_offset: result.end_offset,
            messages: result
                .records
                .into_iter()
                .map(|r| convert::consumed_message(id, r))
                .collect(),
        })
    }
}

impl ConsumerService {
    /// A long poll checks the caller's access again before it answers: a token revoked
    /// or expired, or a rule changed, while it waited refuses the answer, as an open
    /// stream ends within a second of it (what came meanwhile is not sent).
    fn recheck_after_wait<T>(
        &self,
        request: &Request<FetchRequest>,
        answer: T,
    ) -> Result<T, Status> {
        if request.get_ref().max_wait_ms > 0 {
            self.state
                .auth
                .authorize(request, &[Target::topic(&request.get_ref().topic)])?;
        }
        Ok(answer)
    }
}

/// How long a fetch may wait: its max_wait_ms, capped, and short of its deadline.
fn fetch_wait(request: &Request<FetchRequest>) -> Duration {
    crate::deadline::long_poll(
        request.metadata(),
        request.get_ref().max_wait_ms,
        FETCH_WAIT_MAX,
    )
}

fn read(
    partition: &Partition,
    offset: u64,
    limits: ReadLimits,
    filter: Option<&Filter>,
) -> Result<ReadResult, Status> {
    convert::or_status(partition.read_filtered(
        offset,
        limits.max_messages,
        limits.max_bytes,
        filter,
    ))
}

/// Where a plain (group-less) subscription starts in `partition`.
/// A partition recovery refused to open fails it (UNAVAILABLE naming the partition).
fn start_offset(partition: &Partition, position: Option<Position>) -> Result<u64, Status> {
    let (log_start, end) = convert::or_status(partition.bounds())?;
    Ok(match position {
        Some(Position::Earliest(_)) => log_start,
        None | Some(Position::Latest(_)) => end,
        Some(Position::Offset(offset)) => offset,
        Some(Position::TimestampMs(timestamp)) => {
            convert::or_status(partition.offset_for_timestamp(timestamp))?.unwrap_or(end)
        }
    })
}

/// The partitions a request names: `partitions`, each once, or all of the topic's.
fn chosen_partitions(topic: &Topic, partitions: &[u32]) -> Result<Vec<u32>, Status> {
    if partitions.is_empty() {
        return Ok((0..topic.partitions().len() as u32).collect());
    }
    let mut seen = HashSet::new();
    if let Some(duplicate) = partitions.iter().find(|p| !seen.insert(**p)) {
        return Err(Status::invalid_argument(format!(
            "partition {duplicate} is listed twice in partitions; list each once"
        )));
    }
    Ok(partitions.to_vec())
}

/// Under `--auth`, the topics a pattern subscription (plain or group) may match: those
/// the caller may consume, Subscribe's operation on a topic (see "Topic patterns" in
/// the .proto: others are left out silently). `None` with auth off.
fn topic_access(state: &Arc<AppState>, caller: Option<&Caller>) -> Option<TopicAccess> {
    if !state.auth.is_enabled() {
        return None;
    }
    let auth = state.auth.clone();
    let caller = caller.cloned();
    Some(TopicAccess::new(move |topic| {
        auth.may_caller(caller.as_ref(), Target::topic(topic))
    }))
}

/// A plain subscription by topic pattern: every partition of every matching topic
/// from `start`; topics that appear later from their start (or the timestamp).
fn pattern_subscription(
    state: &Arc<AppState>,
    request: SubscribeRequest,
    access: Option<TopicAccess>,
) -> Result<PartitionReader, Status> {
    if !request.partitions.is_empty() {
        return Err(Status::invalid_argument(
            "topic_pattern reads every partition of every matching topic: leave partitions empty (resume with partition_starts naming their topics)",
        ));
    }
    if request.follow_partitions_from.is_some() {
        return Err(Status::invalid_argument(
            "topic_pattern reads every partition of every matching topic, those added later too: leave follow_partitions_from unset (it is for a topic)",
        ));
    }
    let pattern = convert::topic_pattern("topic_pattern", &request.topic_pattern)?;
    // A resume: where listed partitions stood (and the id of the topic they stood
    // in); the rest are new to the stream.
    let mut resume: HashMap<(&str, u32), (u64, u64)> = HashMap::new();
    if !request.partition_starts.is_empty() {
        if request.start.is_some() {
            return Err(Status::invalid_argument(
                "partition_starts names where the pattern stream resumes: leave start empty",
            ));
        }
        for start in &request.partition_starts {
            if start.topic.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "partition_starts entry for partition {} names no topic: with topic_pattern each names its topic",
                    start.partition
                )));
            }
            if !pattern.matches(&start.topic) {
                return Err(Status::invalid_argument(format!(
                    "partition_starts names {}/{}, but topic_pattern {:?} does not match topic {:?}: list only the partitions of topics the pattern reads (from this stream's positions)",
                    start.topic, start.partition, request.topic_pattern, start.topic
                )));
            }
            if resume
                .insert(
                    (start.topic.as_str(), start.partition),
                    (start.offset, start.topic_id),
                )
                .is_some()
            {
                return Err(Status::invalid_argument(format!(
                    "partition {}/{} is listed twice in partition_starts; list each once",
                    start.topic, start.partition
                )));
            }
        }
    }
    let reset_policy = convert::reset_policy(request.reset_policy)?;
    let limits = ReadLimits::from_request(request.max_batch_messages, request.max_batch_bytes);
    let filter = convert::filter(&request.filter)?;
    let position = request.start.and_then(|s| s.position);
    let mut initial = Vec::new();
    let mut recreated = Vec::new();
    for topic in state.store.topics() {
        if !pattern.matches(topic.name())
            || access.as_ref().is_some_and(|a| !a.allows(topic.name()))
        {
            continue;
        }
        let mut starts = Vec::with_capacity(topic.partitions().len());
        for partition in topic.partitions() {
            starts.push(if resume.is_empty() {
                start_offset(partition, position)?
            } else {
                match resume.get(&(topic.name(), partition.id())) {
                    Some(&(offset, sent_id)) if topic.id().accepts_wire(sent_id) => offset,
                    Some(&(offset, _)) => {
                        let start = convert::or_status(partition.log_start())?;
                        recreated.push(Recreated {
                            topic: topic.name().to_string(),
                            topic_id: topic.id(),
                            partition: partition.id(),
                            from_offset: offset,
                            to_offset: start,
                        });
                        start
                    }
                    None => convert::or_status(partition.log_start())?,
                }
            });
        }
        initial.push((topic, starts));
    }
    let later = LaterStart::for_start(position.as_ref());
    let reader = PartitionReader::with_pattern(
        state.clone(),
        pattern,
        access,
        initial,
        later,
        reset_policy,
        limits,
        filter,
    );
    let reader = if request.send_positioned {
        reader.announce_positions()?
    } else {
        reader
    };
    Ok(reader.tell_recreated(recreated))
}

/// A plain subscription: checks the request, resolves the start of every partition.
fn plain_subscription(
    state: &Arc<AppState>,
    request: SubscribeRequest,
    access: Option<TopicAccess>,
) -> Result<PartitionReader, Status> {
    match (request.topic.is_empty(), request.topic_pattern.is_empty()) {
        (true, false) => return pattern_subscription(state, request, access),
        (false, false) => {
            return Err(Status::invalid_argument(
                "set one of topic and topic_pattern, not both",
            ));
        }
        (true, true) => {
            return Err(Status::invalid_argument(
                "topic is empty: set topic (a topic's name) or topic_pattern (a pattern of names)",
            ));
        }
        (false, true) => {}
    }
    let topic = convert::or_status(state.store.topic(&request.topic))?;
    let reset_policy = convert::reset_policy(request.reset_policy)?;
    let limits = ReadLimits::from_request(request.max_batch_messages, request.max_batch_bytes);
    let filter = convert::filter(&request.filter)?;
    if !request.partition_starts.is_empty() {
        if !request.partitions.is_empty() || request.start.is_some() {
            return Err(Status::invalid_argument(
                "partition_starts names the partitions and their starts: leave partitions and start empty",
            ));
        }
        let mut seen = HashSet::new();
        let mut starts = Vec::with_capacity(request.partition_starts.len());
        let mut recreated = Vec::new();
        // Listed partitions of a topic deleted since that the new topic lacks.
        let mut missing = std::collections::BTreeSet::new();
        for start in &request.partition_starts {
            if !seen.insert(start.partition) {
                return Err(Status::invalid_argument(format!(
                    "partition {} is listed twice in partition_starts; list each once",
                    start.partition
                )));
            }
            if topic.id().accepts_wire(start.topic_id) {
                starts.push((start.partition, start.offset));
                continue;
            }
            // A position in a topic deleted since: the new topic's partition of that
            // number is new to the stream, read from its start (now, or when
            // CreatePartitions adds it).
            let Ok(partition) = topic.partition(start.partition) else {
                missing.insert(start.partition);
                continue;
            };
            let log_start = convert::or_status(partition.log_start())?;
            starts.push((start.partition, log_start));
            recreated.push(Recreated {
                topic: topic.name().to_string(),
                topic_id: topic.id(),
                partition: start.partition,
                from_offset: start.offset,
                to_offset: log_start,
            });
        }
        if starts.is_empty() && request.follow_partitions_from.is_none() {
            return Err(Status::not_found(format!(
                "topic {:?} was deleted and created again since the offsets in partition_starts were read, and the new topic (id {}) has none of their partitions (it has {}): subscribe again without partition_starts",
                topic.name(),
                topic.id(),
                topic.partitions().len(),
            )));
        }
        let mut reader =
            PartitionReader::new(state.clone(), topic, &starts, reset_policy, limits, filter)?;
        if let Some(from) = request.follow_partitions_from {
            reader = reader.following(from, LaterStart::Earliest);
        }
        let reader = reader.awaiting(missing);
        let reader = if request.send_positioned {
            reader.announce_positions()?
        } else {
            reader
        };
        return Ok(reader.tell_recreated(recreated));
    }
    if request.follow_partitions_from.is_some() {
        return Err(Status::invalid_argument(
            "follow_partitions_from goes with partition_starts (a resume): to read every partition of the topic as it grows, leave partitions empty",
        ));
    }
    let every_partition = request.partitions.is_empty();
    let ids = chosen_partitions(&topic, &request.partitions)?;
    let position = request.start.and_then(|s| s.position);
    let mut starts = Vec::with_capacity(ids.len());
    for id in ids {
        let partition = convert::or_status(topic.partition(id))?;
        starts.push((id, start_offset(partition, position)?));
    }
    let mut reader =
        PartitionReader::new(state.clone(), topic, &starts, reset_policy, limits, filter)?;
    if every_partition {
        // Empty = all: partitions added while it runs are read too.
        reader = reader.following(0, LaterStart::for_start(position.as_ref()));
    }
    Ok(if request.send_positioned {
        reader.announce_positions()?
    } else {
        reader
    })
}

/// Consumer.ListOffsets: the offset of a position in each asked partition.
fn list_offsets(
    state: &AppState,
    request: &ListOffsetsRequest,
) -> Result<ListOffsetsResponse, Status> {
    let topic = convert::or_status(state.store.topic(&request.topic))?;
    let Some(position) = request.position else {
        return Err(Status::invalid_argument(
            "set one of earliest, latest or timestamp_ms",
        ));
    };
    let ids = chosen_partitions(&topic, &request.partitions)?;
    let mut offsets = Vec::with_capacity(ids.len());
    for id in ids {
        let partition = convert::or_status(topic.partition(id))?;
        let (log_start, end) = convert::or_status(partition.bounds())?;
        let (offset, found) = match position {
            list_offsets_request::Position::Earliest(_) => (log_start, true),
            list_offsets_request::Position::Latest(_) => (end, true),
            list_offsets_request::Position::TimestampMs(ms) => {
                match convert::or_status(partition.offset_for_timestamp(ms))? {
                    Some(offset) => (offset, true),
                    None => (end, false),
                }
            }
        };
        offsets.push(ListedOffset {
            partition: id,
            offset,
            found,
            log_start_offset: log_start,
            end_offset: end,
        });
    }
    Ok(ListOffsetsResponse { offsets })
}

/// What a Subscribe or SubscribeBatches stream re-checks every 250 ms while it is open
/// (see [`crate::auth::Auth::guard_with`]).
struct StreamAccess {
    targets: Vec<(ResourceKind, String)>,
    stricter: Option<(&'static Rpc, Vec<(ResourceKind, String)>)>,
}

/// Checks a Subscribe or SubscribeBatches request: the topic and, for a member, its
/// group, and group-commit on the group for a member that asks for auto-commit (it
/// moves the group's offsets as CommitOffsets does), before it joins. Returns them
/// too, for the stream's re-checks. A pattern names no topic: each topic it matches is
/// checked when it is matched (see `topic_access`).
fn authorize_stream(
    state: &AppState,
    request: &Request<SubscribeRequest>,
) -> (StreamAccess, Result<(), Status>) {
    let mut targets = Vec::new();
    if request.get_ref().topic_pattern.is_empty() {
        targets.push((ResourceKind::Topic, request.get_ref().topic.clone()));
    }
    let mut stricter = None;
    if let Some(group) = &request.get_ref().group {
        targets.push((ResourceKind::Group, group.group_id.clone()));
        if group.auto_commit_interval_ms > 0 {
            let caller = request.extensions().get::<Caller>();
            let row = rpcs::auto_commit_row(caller.and_then(|c| c.rpc));
            stricter = Some((row, vec![(ResourceKind::Group, group.group_id.clone())]));
        }
    }
    fn as_targets(targets: &[(ResourceKind, String)]) -> Vec<Target<'_>> {
        targets
            .iter()
            .map(|(kind, name)| Target { kind: *kind, name })
            .collect()
    }
    let checked = state
        .auth
        .authorize(request, &as_targets(&targets))
        .and_then(|()| match &stricter {
            None => Ok(()),
            Some((row, group)) => state
                .auth
                .check_as(
                    request.extensions().get::<Caller>(),
                    row,
                    &as_targets(group),
                )
                .map_err(|status| {
                    Status::permission_denied(format!(
                        "{}; a member with auto_commit_interval_ms > 0 commits the group's \
                         offsets, which needs group-commit on the group as CommitOffsets \
                         does (or join with auto_commit_interval_ms = 0)",
                        status.message()
                    ))
                }),
        });
    (StreamAccess { targets, stricter }, checked)
}

/// The Subscribe stream type: a plain subscription or a group member's stream.
pub type SubscribeStream = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Consumer for ConsumerService {
    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let started = Instant::now();
        let result = match self
            .state
            .auth
            .authorize(&request, &[Target::topic(&request.get_ref().topic)])
        {
            Ok(()) => ConsumerService::fetch(self, &request)
                .await
                .and_then(|answer| self.recheck_after_wait(&request, answer)),
            Err(status) => Err(status),
        };
        self.state.auth.throttle_answer(&request, &result).await;
        self.state
            .metrics
            .rpc_finished("Fetch", started, result.as_ref().err().map(Status::code));
        result.map(Response::new)
    }

    type SubscribeStream = SubscribeStream;

    async fn fetch_batches(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchBatchesResponse>, Status> {
        let started = Instant::now();
        let wait = fetch_wait(&request);
        let result = match self
            .state
            .auth
            .authorize(&request, &[Target::topic(&request.get_ref().topic)])
        {
            Ok(()) => crate::batch::fetch(&self.state, request.get_ref(), wait)
                .await
                .and_then(|answer| self.recheck_after_wait(&request, answer)),
            Err(status) => Err(status),
        };
        self.state.auth.throttle_answer(&request, &result).await;
        self.state.metrics.rpc_finished(
            "FetchBatches",
            started,
            result.as_ref().err().map(Status::code),
        );
        result.map(Response::new)
    }

    type SubscribeBatchesStream =
        Pin<Box<dyn Stream<Item = Result<SubscribeBatchesResponse, Status>> + Send>>;

    async fn subscribe_batches(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeBatchesStream>, Status> {
        let started = Instant::now();
        let remote_addr = crate::listener::remote_addr(&request);
        let (rechecks, checked) = authorize_stream(&self.state, &request);
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        let result = if let Err(status) = checked {
            Err(status)
        } else if self.state.shutdown.is_triggered() {
            Err(crate::shutdown::unavailable(
                "subscribe again once it is back",
            ))
        } else if request.group.is_some() {
            let access = topic_access(&self.state, caller.as_ref());
            crate::groups::subscribe_member_batches(
                self.state.clone(),
                request,
                remote_addr,
                access,
            )
            .await
        } else {
            let access = topic_access(&self.state, caller.as_ref());
            plain_subscription(&self.state, request, access).map(|reader| {
                Box::pin(spawn_events(
                    &self.state,
                    "SubscribeBatches",
                    reader.in_batch_form(),
                )) as _
            })
        };
        let result = result.map(|stream| {
            self.state
                .auth
                .guard_with(caller, rechecks.targets, rechecks.stricter, stream)
        });
        if let Err(status) = &result {
            self.state
                .metrics
                .rpc_finished("SubscribeBatches", started, Some(status.code()));
        }
        result.map(Response::new)
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let started = Instant::now();
        let result = self
            .state
            .auth
            .authorize(&request, &[Target::topic(&request.get_ref().topic)])
            .and_then(|()| list_offsets(&self.state, request.get_ref()));
        self.state.metrics.rpc_finished(
            "ListOffsets",
            started,
            result.as_ref().err().map(Status::code),
        );
        result.map(Response::new)
    }

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let started = Instant::now();
        let remote_addr = crate::listener::remote_addr(&request);
        let (rechecks, checked) = authorize_stream(&self.state, &request);
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        let access = topic_access(&self.state, caller.as_ref());
        let result: Result<SubscribeStream, Status> = if let Err(status) = checked {
            Err(status)
        } else if self.state.shutdown.is_triggered() {
            Err(crate::shutdown::unavailable(
                "subscribe again once it is back",
            ))
        } else if request.group.is_some() {
            crate::groups::subscribe_member(self.state.clone(), request, remote_addr, access)
                .await
                .map(|stream| Box::pin(stream) as SubscribeStream)
        } else {
            plain_subscription(&self.state, request, access)
                .map(|reader| Box::pin(spawn_subscription(&self.state, reader)) as SubscribeStream)
        };
        let result = result.map(|stream| {
            self.state
                .auth
                .guard_with(caller, rechecks.targets, rechecks.stricter, stream)
        });
        if let Err(status) = &result {
            // Streams that start are counted when they end (in spawn_subscription).
            self.state
                .metrics
                .rpc_finished("Subscribe", started, Some(status.code()));
        }
        result.map(Response::new)
    }
}
