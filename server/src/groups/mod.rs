//! Consumer groups: the coordinator, group-mode Subscribe and the `Groups` service.
//!
//! - [`coordinator`]: membership, generations, the range assignment of each topic's
//!   partitions among live members, session timeouts, and the rules commits, resets
//!   and deletes must pass. Also the per-partition *leases* that make sure only one
//!   member reads a partition at a time.
//! - [`member`]: the task behind one member's Subscribe stream: Assignment and
//!   PositionReset events, messages, auto-commit.
//! - [`assignment`]: the range assignor (pure).
//! - [`reset`]: the offset-reset computation of every mode (pure).
//! - [`service`]: the `tidelog.v1.Groups` RPCs.
//!
//! Semantics follow Kafka's, adapted to a streaming API: the open Subscribe stream is
//! the member's heartbeat; each join, leave or session expiry rebalances and bumps the
//! generation; a commit from an older generation or for a partition the member does
//! not own is refused; offset resets and group deletion are refused while the group
//! has live members. A member that commits itself may ask for a *handover window*
//! (`handover_timeout_ms`): a partition a rebalance takes from it stays its own, unread,
//! until it commits in the new generation (or the window ends), so it can commit what
//! it processed before the next owner starts (Kafka's `onPartitionsRevoked`).
//!
//! Wiring (done by the broker core): keep one [`GroupCoordinator`] in
//! [`crate::AppState::groups`], serve [`GroupsService`], route a Subscribe with `group` set to
//! [`subscribe_member`], tell the coordinator about deleted topics with
//! [`GroupCoordinator::topic_deleted`], and at shutdown call
//! [`GroupCoordinator::shutdown`] so members make their final auto-commits.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tidelog_proto::v1::{SubscribeBatchesResponse, SubscribeRequest, SubscribeResponse};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::Status;

use crate::AppState;
use crate::convert;
use crate::metrics::{GroupLag, GroupMetricsSnapshot, GroupMetricsSource};
use crate::read::ReadLimits;

pub mod assignment;
pub mod coordinator;
mod member;
pub mod reset;
pub mod service;

pub use coordinator::{
    GroupCoordinator, GroupStatus, GroupSummaryView, GroupView, MemberView, PartitionLagView,
};
pub use service::GroupsService;

// The limits of groups. Those the coordinator and the member task apply are defined
// beside them (so neither imports this module back) and shown here.
pub use coordinator::{MEMBER_ID_BYTES_MAX, REAPER_TICK_MAX, SESSION_TIMEOUT_MS_MAX};
pub use member::{FINAL_STATUS_WAIT, IDLE_BACKOFF};
/// Longest handover window a member may ask for (`handover_timeout_ms`); longer
/// requests are capped. A member that stops reading keeps its revoked partitions from
/// their next owner this long.
pub const HANDOVER_TIMEOUT_MS_MAX: u64 = 60 * 1000;
/// Shortest auto-commit interval; shorter requests are raised to it, so one member
/// cannot turn the offsets log into an fsync loop.
pub const AUTO_COMMIT_INTERVAL_MS_MIN: u64 = 10;
/// Longest client_id a member may give.
pub const CLIENT_ID_BYTES_MAX: usize = 255;

/// The events of one group member's Subscribe stream.
pub type MemberStream = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

/// The events of one group member's SubscribeBatches stream.
pub type MemberBatchesStream =
    Pin<Box<dyn Stream<Item = Result<SubscribeBatchesResponse, Status>> + Send>>;

/// [`subscribe_member`] in batch form, for `Consumer.SubscribeBatches` with a group:
/// the same member, its data as stored batches.
pub async fn subscribe_member_batches(
    state: Arc<AppState>,
    request: SubscribeRequest,
    remote_addr: Option<SocketAddr>,
    access: Option<crate::read::TopicAccess>,
) -> Result<MemberBatchesStream, Status> {
    let events = start_member(state, request, remote_addr, access, true).await?;
    Ok(Box::pin(events.map(|event| match event? {
        member::Out::Batches(response) => Ok(response),
        member::Out::Messages(_) => Err(Status::internal(
            "a batch-form member stream made a message event",
        )),
    })))
}

/// Joins `request.group` and streams the member's assignments and messages. Called by
/// `Consumer.Subscribe` when the request has a group; `remote_addr` is shown as the
/// member's client_address.
///
/// A member subscribes to `request.topic` or, by `request.topic_pattern`, to every
/// topic the pattern matches; with `access` (under `--auth`) only to those it lets
/// through (see [`coordinator`]'s Patterns).
///
/// Errors before the stream starts: INVALID_ARGUMENT for `partitions` or `start` set
/// together with a group, both or neither of topic and topic_pattern, a bad pattern,
/// group id, client id or reset policy; NOT_FOUND for an unknown topic; UNAVAILABLE
/// while the broker shuts down.
pub async fn subscribe_member(
    state: Arc<AppState>,
    request: SubscribeRequest,
    remote_addr: Option<SocketAddr>,
    access: Option<crate::read::TopicAccess>,
) -> Result<MemberStream, Status> {
    let events = start_member(state, request, remote_addr, access, false).await?;
    Ok(Box::pin(events.map(|event| match event? {
        member::Out::Messages(response) => Ok(response),
        member::Out::Batches(_) => Err(Status::internal(
            "a message-form member stream made a batch event",
        )),
    })))
}

/// Validates the request, joins the group and starts the member's task; its events.
async fn start_member(
    state: Arc<AppState>,
    request: SubscribeRequest,
    remote_addr: Option<SocketAddr>,
    access: Option<crate::read::TopicAccess>,
    batches: bool,
) -> Result<ReceiverStream<Result<member::Out, Status>>, Status> {
    let Some(membership) = request.group else {
        return Err(Status::invalid_argument(
            "subscribe_member needs a request with `group` set",
        ));
    };
    coordinator::validate_group_id(&membership.group_id)?;
    // One check for Subscribe and SubscribeBatches: with a group the broker picks the
    // partitions and where each starts.
    if !request.partitions.is_empty()
        || request.start.is_some()
        || !request.partition_starts.is_empty()
        || request.send_positioned
        || request.follow_partitions_from.is_some()
    {
        return Err(Status::invalid_argument(
            "partitions, start, partition_starts, send_positioned and follow_partitions_from must be unset with a group: the broker assigns the partitions among the group's members (announced by Assignment), starts at the group's committed offsets (move them with Groups.ResetOffsets) and gives members the partitions a topic gains by rebalancing",
        ));
    }
    if membership.client_id.len() > CLIENT_ID_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "client_id is {} bytes, over the limit of {CLIENT_ID_BYTES_MAX} bytes",
            membership.client_id.len()
        )));
    }
    let reset_policy = convert::reset_policy(request.reset_policy)?;
    let subscription = match (request.topic.is_empty(), request.topic_pattern.is_empty()) {
        (true, true) => {
            return Err(Status::invalid_argument(
                "topic or topic_pattern is required",
            ));
        }
        (false, false) => {
            return Err(Status::invalid_argument(
                "set one of topic and topic_pattern, not both",
            ));
        }
        (false, true) => {
            convert::or_status(state.store.topic(&request.topic))?;
            coordinator::Subscription::Topic(request.topic.clone())
        }
        (true, false) => coordinator::Subscription::Pattern {
            pattern: convert::topic_pattern("topic_pattern", &request.topic_pattern)?,
            allowed: access,
        },
    };
    let pattern = subscription.is_pattern();
    if state.shutdown.is_triggered() {
        return Err(crate::shutdown::unavailable(
            "reconnect to another broker or retry later",
        ));
    }
    let settings = member::Settings {
        reset_policy,
        auto_commit: (membership.auto_commit_interval_ms > 0).then(|| {
            Duration::from_millis(
                membership
                    .auto_commit_interval_ms
                    .max(AUTO_COMMIT_INTERVAL_MS_MIN),
            )
        }),
        // With auto-commit the broker commits at the handover itself.
        handover: (membership.auto_commit_interval_ms == 0 && membership.handover_timeout_ms > 0)
            .then(|| {
                Duration::from_millis(membership.handover_timeout_ms.min(HANDOVER_TIMEOUT_MS_MAX))
            }),
        // The same defaults and caps as a plain subscription.
        limits: ReadLimits::from_request(request.max_batch_messages, request.max_batch_bytes),
        filter: convert::filter(&request.filter)?,
        batches,
    };
    state.groups.spawn_session_reaper();
    let joined = state
        .groups
        .join(coordinator::JoinRequest {
            group_id: membership.group_id.clone(),
            member_id: membership.member_id,
            subscription,
            client_id: membership.client_id,
            client_address: remote_addr.map(|a| a.to_string()).unwrap_or_default(),
            session_timeout_ms: membership.session_timeout_ms,
            filter: request.filter,
        })
        .await?;
    let (sender, receiver) = member::channel();
    let task = member::MemberTask::new(
        state.clone(),
        membership.group_id,
        joined,
        pattern,
        settings,
        sender,
    );
    tokio::spawn(task.run());
    Ok(ReceiverStream::new(receiver))
}

impl GroupMetricsSource for GroupCoordinator {
    fn group_metrics(&self) -> GroupMetricsSnapshot {
        let mut snapshot = GroupMetricsSnapshot::default();
        for group in self.snapshot() {
            snapshot
                .members
                .push((group.group_id.clone(), group.members.len() as u64));
            for p in group.partitions {
                if let Some(lag) = p.lag {
                    snapshot.lags.push(GroupLag {
                        group: group.group_id.clone(),
                        topic: p.topic,
                        partition: p.partition,
                        lag,
                    });
                }
            }
        }
        snapshot
    }
}
