//! The `tidelog.v1.Groups` service: committed offsets and group administration.
//!
//! Validation and the proto shapes live here; the rules that depend on membership
//! live in the coordinator, the reset arithmetic in [`super::reset`]. Every write goes
//! through `OffsetStore::commit` / `delete_group`, which return once the change is
//! fsynced; they run on the blocking pool.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tidelog_proto::v1::groups_server::Groups;
use tidelog_proto::v1::reset_offsets_request::{Scope, Spec};
use tidelog_proto::v1::{
    CommitOffsetsRequest, CommitOffsetsResponse, CommittedOffset, DeleteGroupRequest,
    DeleteGroupResponse, DeleteOffsetsRequest, DeleteOffsetsResponse, DescribeGroupRequest,
    DescribeGroupResponse, FetchOffsetsRequest, FetchOffsetsResponse, GroupDescription,
    GroupMember, GroupState, GroupSummary, ListGroupsRequest, ListGroupsResponse, OffsetChange,
    PartitionLag, ResetOffsetsRequest, ResetOffsetsResponse, TopicPartitions,
};
use tidelog_storage::limits::COMMIT_METADATA_BYTES_MAX;
use tidelog_storage::{Partition, Store, Topic};
use tonic::{Request, Response, Status};

use super::coordinator::{GroupStatus, GroupView, validate_group_id};
use super::reset::{self, PartitionState, Target};
use crate::AppState;
use crate::auth::{Caller, Target as Resource};
use crate::convert;

/// `(topic, partition, offset, metadata)`, as `OffsetStore::commit` takes them.
type Commit = (Arc<Topic>, u32, u64, String);

/// The `tidelog.v1.Groups` service.
#[derive(Debug, Clone)]
pub struct GroupsService {
    state: Arc<AppState>,
}

impl GroupsService {
    pub fn new(state: Arc<AppState>) -> Self {
        GroupsService { state }
    }
}

fn group_state(status: GroupStatus) -> GroupState {
    match status {
        GroupStatus::Empty => GroupState::Empty,
        GroupStatus::Rebalancing => GroupState::Rebalancing,
        GroupStatus::Stable => GroupState::Stable,
    }
}

fn group_description(view: GroupView) -> GroupDescription {
    GroupDescription {
        group_id: view.group_id,
        state: group_state(view.status) as i32,
        generation: view.generation,
        members: view
            .members
            .into_iter()
            .map(|m| GroupMember {
                disconnected: m.session_expires_in_ms.is_some(),
                session_expires_in_ms: m.session_expires_in_ms,
                member_id: m.member_id,
                client_id: m.client_id,
                client_address: m.client_address,
                // A member of one topic lists its partitions; a pattern member lists
                // every matched topic with its partitions.
                partitions: if m.topic_pattern.is_empty() {
                    m.partitions.iter().map(|(_, p)| *p).collect()
                } else {
                    Vec::new()
                },
                topics: if m.topic_pattern.is_empty() {
                    Vec::new()
                } else {
                    m.topics
                        .into_iter()
                        .map(|(topic, partitions)| TopicPartitions { topic, partitions })
                        .collect()
                },
                topic: m.topic,
                topic_pattern: m.topic_pattern,
                filter: m.filter,
            })
            .collect(),
        lags: view
            .partitions
            .into_iter()
            .map(|p| PartitionLag {
                topic: p.topic,
                partition: p.partition,
                committed_offset: p.committed,
                log_start_offset: p.log_start,
                end_offset: p.end,
                lag: p.lag,
                lag_from_log_start: p.lag_from_log_start,
                unavailable: p.unavailable.is_some(),
                unavailable_reason: p.unavailable.unwrap_or_default(),
            })
            .collect(),
    }
}

/// Leaves out of `description` every topic the caller may not describe (a member's
/// topic, its partitions and matched topics, the lag of the topic's partitions): they
/// come from the group's state, not from the request, so they are left out silently.
fn leave_out_hidden_topics(description: &mut GroupDescription, visible: impl Fn(&str) -> bool) {
    for member in &mut description.members {
        if !member.topic.is_empty() && !visible(&member.topic) {
            member.topic.clear();
            member.partitions.clear();
        }
        member.topics.retain(|t| visible(&t.topic));
    }
    description.lags.retain(|lag| visible(&lag.topic));
}

/// The resources of a request on `group` that names `topics` (each once, for the
/// check and the audit line).
fn group_and_topics<'a>(
    group: &'a str,
    topics: impl Iterator<Item = &'a str>,
) -> Vec<Resource<'a>> {
    let topics: BTreeSet<&str> = topics.collect();
    std::iter::once(Resource::group(group))
        .chain(topics.into_iter().map(Resource::topic))
        .collect()
}

/// The topic, or NOT_FOUND.
fn topic(store: &Store, name: &str) -> Result<Arc<Topic>, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("topic is required"));
    }
    convert::or_status(store.topic(name))
}

/// The partition, or INVALID_ARGUMENT naming the topic's partitions (the API's rule
/// for a partition number beyond the partition count, worded by
/// `tidelog_storage::topic::no_such_partition`).
fn partition(topic: &Topic, id: u32) -> Result<Arc<Partition>, Status> {
    convert::or_status(topic.partition(id)).cloned()
}

/// ` partition 9` or ` partitions 0-3,7`: runs of consecutive partitions as `A-B`
/// (both ends included), as the README writes ranges.
fn partition_list(partitions: &[u32]) -> String {
    let mut sorted = partitions.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let noun = if sorted.len() == 1 {
        "partition"
    } else {
        "partitions"
    };
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for p in sorted {
        match runs.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(p) => *last = p,
            _ => runs.push((p, p)),
        }
    }
    let text: Vec<String> = runs
        .iter()
        .map(|&(first, last)| match first == last {
            true => first.to_string(),
            false => format!("{first}-{last}"),
        })
        .collect();
    format!(" {noun} {}", text.join(","))
}

fn check_metadata(metadata: &str, topic: &str, partition: u32) -> Result<(), Status> {
    if metadata.len() > COMMIT_METADATA_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "metadata for {topic}/{partition} is {} bytes, over the limit of {COMMIT_METADATA_BYTES_MAX} bytes",
            metadata.len()
        )));
    }
    Ok(())
}

/// Commits durably (all or nothing) on the blocking pool, each on the topic it was
/// checked against (NOT_FOUND if that topic was deleted meanwhile).
async fn commit_durably(
    store: &Arc<Store>,
    group_id: &str,
    commits: Vec<Commit>,
) -> Result<(), Status> {
    let store = store.clone();
    let group_id = group_id.to_string();
    let written = tokio::task::spawn_blocking(move || store.commit_offsets(&group_id, &commits))
        .await
        .map_err(|e| Status::internal(format!("the commit task failed: {e}")))?;
    convert::or_status(written)
}

#[tonic::async_trait]
impl Groups for GroupsService {
    async fn commit_offsets(
        &self,
        request: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        // Every topic it commits to, before any is looked up.
        let named = request.get_ref();
        let targets = group_and_topics(
            &named.group_id,
            named.offsets.iter().map(|o| o.topic.as_str()),
        );
        self.state.auth.authorize(&request, &targets)?;
        let request = request.into_inner();
        validate_group_id(&request.group_id)?;
        // A member may send no offsets to end its handover window.
        if request.offsets.is_empty() && request.member_id.is_empty() {
            return Err(Status::invalid_argument(
                "offsets is empty: commit at least one (topic, partition, offset)",
            ));
        }
        let generation = match (request.member_id.is_empty(), request.generation) {
            (false, None) => {
                return Err(Status::invalid_argument(
                    "generation is required with member_id: pass the generation of the member's latest Assignment",
                ));
            }
            (_, generation) => generation,
        };
        let store = &self.state.store;
        let mut commits = Vec::with_capacity(request.offsets.len());
        for entry in request.offsets {
            check_metadata(&entry.metadata, &entry.topic, entry.partition)?;
            let checked = topic(store, &entry.topic)?;
            convert::check_topic_id(&checked, entry.topic_id, "nothing was committed")?;
            let log = partition(&checked, entry.partition)?;
            // A partition recovery refused to open takes no commit: where its log ends
            // is unknown until it is repaired.
            let (log_start, end) = convert::or_status(log.bounds())?;
            if entry.offset > end {
                return Err(Status::out_of_range(format!(
                    "offset {} for {}/{} is above the partition's end_offset {end} (it holds offsets {log_start}..{end}); commit the offset of the next message to read, at most end_offset",
                    entry.offset, entry.topic, entry.partition
                )));
            }
            commits.push((checked, entry.partition, entry.offset, entry.metadata));
        }
        let coordinator = &self.state.groups;
        if request.member_id.is_empty() {
            // Held across the check and the write: no member can join in between.
            let _gate = coordinator.admin_gate.write().await;
            coordinator.require_no_live_members(&request.group_id, "a commit without member_id")?;
            commit_durably(store, &request.group_id, commits).await?;
        } else {
            let owned: Vec<(String, u32)> = commits
                .iter()
                .map(|(t, p, _, _)| (t.name().to_string(), *p))
                .collect();
            let generation = generation.unwrap_or_default();
            coordinator.authorize_member_commit(
                &request.group_id,
                &request.member_id,
                generation,
                &owned,
            )?;
            if !commits.is_empty() {
                commit_durably(store, &request.group_id, commits).await?;
            }
            // Durable first: the next owner of a handed-over partition reads this commit.
            coordinator.member_committed(&request.group_id, &request.member_id, generation);
        }
        Ok(Response::new(CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<FetchOffsetsRequest>,
    ) -> Result<Response<FetchOffsetsResponse>, Status> {
        let auth = &self.state.auth;
        // A topic the request names is checked; the others it holds offsets for are
        // left out when the caller may not describe them.
        match &request.get_ref().topic {
            Some(topic) => auth.authorize(
                &request,
                &[
                    Resource::group(&request.get_ref().group_id),
                    Resource::topic(topic),
                ],
            )?,
            None => auth.authorize(&request, &[Resource::group(&request.get_ref().group_id)])?,
        }
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        validate_group_id(&request.group_id)?;
        let offsets = self
            .state
            .store
            .offsets()
            .fetch_group(&request.group_id)
            .into_iter()
            .filter(|(topic, _, _)| request.topic.as_ref().is_none_or(|t| t == topic))
            .filter(|(topic, _, _)| auth.may_see_topic(caller.as_ref(), topic))
            .map(|(topic, partition, committed)| CommittedOffset {
                topic,
                partition,
                offset: committed.offset,
                metadata: committed.metadata,
                commit_timestamp_ms: committed.commit_timestamp_ms,
            })
            .collect();
        Ok(Response::new(FetchOffsetsResponse { offsets }))
    }

    async fn list_groups(
        &self,
        request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        let auth = &self.state.auth;
        let groups = self
            .state
            .groups
            .list_groups()
            .into_iter()
            .filter(|g| auth.may(&request, Resource::group(&g.group_id)))
            .map(|g| GroupSummary {
                group_id: g.group_id,
                state: group_state(g.status) as i32,
                member_count: g.member_count,
            })
            .collect();
        Ok(Response::new(ListGroupsResponse { groups }))
    }

    async fn describe_group(
        &self,
        request: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        let auth = &self.state.auth;
        auth.authorize(&request, &[Resource::group(&request.get_ref().group_id)])?;
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        validate_group_id(&request.group_id)?;
        let view = self
            .state
            .groups
            .describe_group(&request.group_id)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "group {:?} not found: it has no live members and no committed offsets (Groups.ListGroups lists the groups)",
                    request.group_id
                ))
            })?;
        let mut group = group_description(view);
        leave_out_hidden_topics(&mut group, |t| auth.may_see_topic(caller.as_ref(), t));
        Ok(Response::new(DescribeGroupResponse { group: Some(group) }))
    }

    async fn delete_group(
        &self,
        request: Request<DeleteGroupRequest>,
    ) -> Result<Response<DeleteGroupResponse>, Status> {
        self.state
            .auth
            .authorize(&request, &[Resource::group(&request.get_ref().group_id)])?;
        let request = request.into_inner();
        validate_group_id(&request.group_id)?;
        let coordinator = &self.state.groups;
        let _gate = coordinator.admin_gate.write().await;
        coordinator.require_no_live_members(&request.group_id, "Groups.DeleteGroup")?;
        let store = self.state.store.clone();
        let group_id = request.group_id.clone();
        let existed = tokio::task::spawn_blocking(move || store.offsets().delete_group(&group_id))
            .await
            .map_err(|e| Status::internal(format!("the delete task failed: {e}")))?;
        let existed = convert::or_status(existed)?;
        coordinator.forget_group(&request.group_id);
        if !existed {
            return Err(Status::not_found(format!(
                "group {:?} not found: it has no committed offsets",
                request.group_id
            )));
        }
        tracing::info!(group = %request.group_id, "deleted group");
        Ok(Response::new(DeleteGroupResponse {}))
    }

    async fn delete_offsets(
        &self,
        request: Request<DeleteOffsetsRequest>,
    ) -> Result<Response<DeleteOffsetsResponse>, Status> {
        self.state.auth.authorize(
            &request,
            &[
                Resource::group(&request.get_ref().group_id),
                Resource::topic(&request.get_ref().topic),
            ],
        )?;
        let request = request.into_inner();
        validate_group_id(&request.group_id)?;
        let coordinator = &self.state.groups;
        let _gate = coordinator.admin_gate.write().await;
        coordinator.require_no_live_members(&request.group_id, "Groups.DeleteOffsets")?;
        let store = self.state.store.clone();
        let (group, topic, partitions) = (
            request.group_id.clone(),
            request.topic.clone(),
            request.partitions.clone(),
        );
        let existed = tokio::task::spawn_blocking(move || {
            store
                .offsets()
                .delete_group_offsets(&group, &topic, &partitions)
        })
        .await
        .map_err(|e| Status::internal(format!("the delete task failed: {e}")))?;
        if !convert::or_status(existed)? {
            return Err(Status::not_found(format!(
                "group {:?} has no committed offsets for topic {:?}{}",
                request.group_id,
                request.topic,
                if request.partitions.is_empty() {
                    String::new()
                } else {
                    partition_list(&request.partitions)
                }
            )));
        }
        tracing::info!(group = %request.group_id, topic = %request.topic, partitions = ?request.partitions, "deleted group offsets");
        Ok(Response::new(DeleteOffsetsResponse {}))
    }

    async fn reset_offsets(
        &self,
        request: Request<ResetOffsetsRequest>,
    ) -> Result<Response<ResetOffsetsResponse>, Status> {
        let auth = &self.state.auth;
        // The topics the request names are checked with the group, before any is
        // looked up; those a pattern or the group's offsets bring are left out when the
        // caller may not consume them (see `plan`).
        let named = request.get_ref();
        let targets = match (&named.scope, &named.spec) {
            (_, Some(Spec::Explicit(explicit))) => group_and_topics(
                &named.group_id,
                explicit.offsets.iter().map(|o| o.topic.as_str()),
            ),
            (Some(Scope::Topic(scope)), _) => {
                group_and_topics(&named.group_id, std::iter::once(scope.topic.as_str()))
            }
            _ => group_and_topics(&named.group_id, std::iter::empty()),
        };
        auth.authorize(&request, &targets)?;
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        validate_group_id(&request.group_id)?;
        let coordinator = &self.state.groups;
        let store = &self.state.store;
        // Taken before reading the current offsets so an execute computes from, and
        // writes over, a state no member can change meanwhile.
        let _gate = if request.execute {
            let gate = coordinator.admin_gate.write().await;
            coordinator
                .require_no_live_members(&request.group_id, "Groups.ResetOffsets with execute")?;
            Some(gate)
        } else {
            None
        };
        let committed: BTreeMap<(String, u32), tidelog_storage::CommittedOffset> = store
            .offsets()
            .fetch_group(&request.group_id)
            .into_iter()
            .map(|(t, p, c)| ((t, p), c))
            .collect();
        let visible = |topic: &str| auth.may_see_topic(caller.as_ref(), topic);
        let plan = plan(store, &request, &committed, coordinator.now_ms(), &visible)?;

        let mut changes = Vec::with_capacity(plan.len());
        let mut commits = Vec::with_capacity(plan.len());
        for item in plan {
            let current = committed.get(&(item.topic.name().to_string(), item.partition));
            // All or nothing: a partition recovery refused to open refuses the whole
            // reset (nothing is written, the dry run shows nothing), as where its log
            // starts and ends is unknown until it is repaired.
            let (log_start, end) = item.log.bounds().map_err(|error| {
                Status::unavailable(format!("the reset changed nothing: {error}"))
            })?;
            let state = PartitionState {
                committed: current.map(|c| c.offset),
                log_start,
                end,
                offset_for_timestamp: match item.target.lookup_timestamp() {
                    Some(ms) => convert::or_status(item.log.offset_for_timestamp(ms))?,
                    None => None,
                },
            };
            let Some(moved) = reset::new_offset(item.target, &state) else {
                continue;
            };
            // Explicit offsets carry their own metadata; computed ones keep the
            // commit's (a reset moves offsets, it does not rewrite annotations).
            let metadata = item
                .metadata
                .or_else(|| current.map(|c| c.metadata.clone()))
                .unwrap_or_default();
            changes.push(OffsetChange {
                topic: item.topic.name().to_string(),
                partition: item.partition,
                current_offset: state.committed,
                new_offset: moved.offset,
                clamped_from: moved.clamped_from,
                topic_id: item.topic.id().get(),
            });
            commits.push((item.topic, item.partition, moved.offset, metadata));
        }
        changes.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        if request.execute && !commits.is_empty() {
            commit_durably(store, &request.group_id, commits).await?;
            tracing::info!(group = %request.group_id, partitions = changes.len(), "reset offsets");
        }
        Ok(Response::new(ResetOffsetsResponse {
            changes,
            executed: request.execute,
        }))
    }
}

/// One partition a reset covers and where it should go.
struct PlanItem {
    /// The topic as planned: the reset is written on it or not at all.
    topic: Arc<Topic>,
    partition: u32,
    log: Arc<Partition>,
    target: Target,
    /// Set for explicit offsets only.
    metadata: Option<String>,
}

/// Resolves scope and spec to the partitions and their targets. Topics the request
/// names were authorized by the handler; those a pattern matches or the group has
/// offsets for are taken only when `visible` (the caller may consume them).
fn plan(
    store: &Store,
    request: &ResetOffsetsRequest,
    committed: &BTreeMap<(String, u32), tidelog_storage::CommittedOffset>,
    now_ms: i64,
    visible: &dyn Fn(&str) -> bool,
) -> Result<Vec<PlanItem>, Status> {
    let Some(spec) = &request.spec else {
        return Err(Status::invalid_argument(
            "spec is required: one of to_earliest, to_latest, to_offset, to_datetime_ms, by_duration_ms, shift_by, to_current, explicit",
        ));
    };
    let target = match spec {
        Spec::Explicit(explicit) => {
            if request.scope.is_some() {
                return Err(Status::invalid_argument(
                    "scope must be unset with spec explicit: the listed offsets name their partitions",
                ));
            }
            if explicit.offsets.is_empty() {
                return Err(Status::invalid_argument(
                    "explicit.offsets is empty: list at least one (topic, partition, offset)",
                ));
            }
            let mut seen = BTreeSet::new();
            let mut items = Vec::with_capacity(explicit.offsets.len());
            for entry in &explicit.offsets {
                if !seen.insert((entry.topic.as_str(), entry.partition)) {
                    return Err(Status::invalid_argument(format!(
                        "explicit.offsets lists {}/{} twice",
                        entry.topic, entry.partition
                    )));
                }
                check_metadata(&entry.metadata, &entry.topic, entry.partition)?;
                let checked = topic(store, &entry.topic)?;
                convert::check_topic_id(&checked, entry.topic_id, "nothing was reset")?;
                let log = partition(&checked, entry.partition)?;
                items.push(PlanItem {
                    topic: checked,
                    partition: entry.partition,
                    log,
                    target: Target::Offset(entry.offset),
                    metadata: Some(entry.metadata.clone()),
                });
            }
            return Ok(items);
        }
        Spec::ToEarliest(_) => Target::Earliest,
        Spec::ToLatest(_) => Target::Latest,
        Spec::ToOffset(offset) => Target::Offset(*offset),
        Spec::ToDatetimeMs(ms) => reset::datetime_target(*ms),
        Spec::ByDurationMs(ms) => reset::duration_target(now_ms, *ms),
        Spec::ShiftBy(delta) => Target::ShiftBy(*delta),
        Spec::ToCurrent(_) => Target::Current,
    };
    let mut items = Vec::new();
    match &request.scope {
        None => {
            return Err(Status::invalid_argument(
                "scope is required: a topic (optionally with partitions), topic_pattern or all_topics",
            ));
        }
        Some(Scope::Topic(scope)) => {
            let topic = topic(store, &scope.topic)?;
            let ids: BTreeSet<u32> = if scope.partitions.is_empty() {
                (0..topic.partitions().len() as u32).collect()
            } else {
                scope.partitions.iter().copied().collect()
            };
            for id in ids {
                items.push(PlanItem {
                    topic: topic.clone(),
                    partition: id,
                    log: partition(&topic, id)?,
                    target,
                    metadata: None,
                });
            }
        }
        Some(Scope::TopicPattern(scope)) => {
            // Every partition of every topic it matches now, as a pattern member
            // would read them.
            let pattern =
                convert::topic_pattern("topic_pattern.topic_pattern", &scope.topic_pattern)?;
            let mut topics = store.topics();
            topics.retain(|t| pattern.matches(t.name()) && visible(t.name()));
            topics.sort_by(|a, b| a.name().cmp(b.name()));
            for topic in topics {
                for log in topic.partitions() {
                    items.push(PlanItem {
                        topic: topic.clone(),
                        partition: log.id(),
                        log: log.clone(),
                        target,
                        metadata: None,
                    });
                }
            }
        }
        Some(Scope::AllTopics(_)) => {
            // As Kafka's --all-topics: the partitions the group has committed offsets
            // for. Offsets of a topic deleted a moment ago are skipped.
            for (topic_name, id) in committed.keys() {
                if !visible(topic_name) {
                    continue;
                }
                let Ok(topic) = store.topic(topic_name) else {
                    continue;
                };
                let Some(log) = topic.partitions().get(*id as usize).cloned() else {
                    continue;
                };
                items.push(PlanItem {
                    topic: topic.clone(),
                    partition: *id,
                    log,
                    target,
                    metadata: None,
                });
            }
        }
    }
    Ok(items)
}
