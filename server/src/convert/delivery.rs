//! Delivery status, history and listings ([`tidelog_storage::queue::inspect`],
//! [`tidelog_storage::queue::history`]) between the API and the storage engine.

use bytes::Bytes;
use tidelog_proto::v1 as pb;
use tidelog_storage::queue::QueueConfig;
use tidelog_storage::queue::history::{AttemptRecord, HistoryEvent, Outcome};
use tidelog_storage::queue::inspect::{DeliveryFilter, GroupState, ListedDelivery, QueueState};
use tonic::Status;

/// A message named in a request: by id, or by partition and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageRef {
    Id(Bytes),
    Position { partition: u32, offset: u64 },
}

fn message_ref(
    id: Option<Bytes>,
    position: Option<pb::MessagePosition>,
) -> Result<MessageRef, Status> {
    match (id, position) {
        (Some(id), None) => Ok(MessageRef::Id(id)),
        (None, Some(p)) => Ok(MessageRef::Position {
            partition: p.partition,
            offset: p.offset,
        }),
        _ => Err(Status::invalid_argument(
            "name the message by its id or by its position (partition and offset): exactly one of `id` and `position`",
        )),
    }
}

/// The message a GetDeliveryStatus names.
pub fn status_message_ref(
    message: Option<pb::get_delivery_status_request::Message>,
) -> Result<MessageRef, Status> {
    use pb::get_delivery_status_request::Message;
    match message {
        Some(Message::Id(id)) => message_ref(Some(id), None),
        Some(Message::Position(p)) => message_ref(None, Some(p)),
        None => message_ref(None, None),
    }
}

/// The message a GetDeliveryHistory names.
pub fn history_message_ref(
    message: Option<pb::get_delivery_history_request::Message>,
) -> Result<MessageRef, Status> {
    use pb::get_delivery_history_request::Message;
    match message {
        Some(Message::Id(id)) => message_ref(Some(id), None),
        Some(Message::Position(p)) => message_ref(None, Some(p)),
        None => message_ref(None, None),
    }
}

/// NOT_FOUND for a position with no stored message, naming the range there is.
pub fn position_not_found(
    topic: &str,
    partition: u32,
    offset: u64,
    log_start: u64,
    end_offset: u64,
) -> Status {
    Status::not_found(format!(
        "no message at partition {partition} offset {offset} of topic {topic:?}: the partition holds offsets {log_start}..{end_offset} (start inclusive, end exclusive); retention removed older ones"
    ))
}

/// NOT_FOUND for a message retention deleted (at `offset`, below `log_start`), where
/// the answer needs the message itself (a consumer group's view of it).
pub fn position_deleted(topic: &str, partition: u32, offset: u64, log_start: u64) -> Status {
    Status::not_found(format!(
        "partition {partition} offset {offset} of topic {topic:?} was deleted by retention: the partition's log now starts at {log_start}"
    ))
}

/// INVALID_ARGUMENT for a request that names queue `queue` and topic `topic` when the
/// queue consumes another topic, `queue_topic`: `None` when the caller may not
/// describe it, which the answer then does not name (see [`super::status_seen_by`]).
pub fn queue_of_other_topic(queue: &str, queue_topic: Option<&str>, topic: &str) -> Status {
    Status::invalid_argument(match queue_topic {
        Some(queue_topic) => format!(
            "queue {queue:?} consumes topic {queue_topic:?}, not {topic:?}; name a queue on \
             topic {topic:?}, or topic {queue_topic:?}"
        ),
        None => format!(
            "queue {queue:?} does not consume topic {topic:?}; name a queue on topic {topic:?}"
        ),
    })
}

pub fn outcome_to_proto(outcome: Outcome) -> pb::DeliveryOutcome {
    match outcome {
        Outcome::Delivered => pb::DeliveryOutcome::Delivered,
        Outcome::Extended => pb::DeliveryOutcome::Extended,
        Outcome::Acked => pb::DeliveryOutcome::Acked,
        Outcome::Nacked => pb::DeliveryOutcome::Nacked,
        Outcome::DeadlinePassed => pb::DeliveryOutcome::DeadlinePassed,
        Outcome::MemberLeft => pb::DeliveryOutcome::MemberLeft,
        Outcome::Terminated => pb::DeliveryOutcome::Terminated,
        Outcome::DeadLettered => pb::DeliveryOutcome::DeadLettered,
        Outcome::Released => pb::DeliveryOutcome::Released,
    }
}

/// A queue's status of a message.
pub fn queue_status_to_proto(queue: &str, state: QueueState) -> pb::QueueDeliveryStatus {
    use pb::QueueDeliveryState as S;
    let mut status = pb::QueueDeliveryStatus {
        queue: queue.to_string(),
        ..pb::QueueDeliveryStatus::default()
    };
    let kind = match state {
        QueueState::Ready => S::Ready,
        QueueState::Delayed { deliver_at_ms } => {
            status.due_ms = Some(deliver_at_ms);
            S::Delayed
        }
        QueueState::Unacked {
            member,
            attempt,
            deadline_ms,
            delivered_ms,
        } => {
            status.member = member;
            status.attempts = attempt;
            status.deadline_ms = Some(deadline_ms);
            status.delivered_at_ms = Some(delivered_ms);
            S::Unacked
        }
        QueueState::Waiting {
            due_ms,
            attempts,
            reason,
        } => {
            status.due_ms = Some(due_ms);
            status.attempts = attempts;
            status.reason = reason;
            S::Waiting
        }
        QueueState::Acked { at_ms, attempts } => {
            status.settled_at_ms = Some(at_ms);
            status.attempts = attempts;
            S::Acked
        }
        QueueState::DeadLettered {
            at_ms,
            reason,
            attempts,
        } => {
            status.settled_at_ms = Some(at_ms);
            status.reason = reason;
            status.attempts = attempts;
            S::DeadLettered
        }
        QueueState::Expired {
            expires_at_ms,
            attempts,
        } => {
            status.expires_at_ms = expires_at_ms;
            status.attempts = attempts;
            S::Expired
        }
        QueueState::Settled { attempts } => {
            status.attempts = attempts;
            S::Settled
        }
        QueueState::Filtered => S::Filtered,
        QueueState::Deleted {
            log_start,
            attempts,
        } => {
            status.attempts = attempts;
            status.reason =
                format!("deleted by retention: the partition's log now starts at {log_start}");
            S::Deleted
        }
    };
    status.state = kind as i32;
    status
}

pub fn group_status_to_proto(group: &str, state: GroupState) -> pb::GroupDeliveryStatus {
    pb::GroupDeliveryStatus {
        group: group.to_string(),
        committed_offset: state.committed,
        committed_past: state.past,
    }
}

pub fn attempt_to_proto(attempt: AttemptRecord) -> pb::DeliveryAttempt {
    let (outcome, outcome_at_ms, reason) = match attempt.outcome {
        Some((outcome, at, reason)) => (outcome_to_proto(outcome), Some(at), reason),
        None => (pb::DeliveryOutcome::Unspecified, None, String::new()),
    };
    let (dead_lettered_at_ms, dead_letter_reason) = match attempt.dead_lettered {
        Some((at, reason)) => (Some(at), reason),
        None => (None, String::new()),
    };
    pb::DeliveryAttempt {
        attempt: attempt.attempt,
        member: attempt.member,
        delivered_at_ms: attempt.delivered_ms,
        deadline_ms: attempt.deadline_ms,
        extensions: attempt.extensions,
        outcome: outcome as i32,
        outcome_at_ms,
        reason,
        dead_lettered_at_ms,
        dead_letter_reason,
    }
}

/// The history response's bounds.
pub fn history_bounds(config: &QueueConfig) -> (u32, u64) {
    (config.history_attempts, config.history_retention_ms)
}

pub fn delivery_filter(filter: i32) -> Result<DeliveryFilter, Status> {
    use pb::DeliveryFilter as F;
    Ok(match F::try_from(filter) {
        Ok(F::All) => DeliveryFilter::All,
        Ok(F::Delivered) => DeliveryFilter::Delivered,
        Ok(F::Unacked) => DeliveryFilter::Unacked,
        Ok(F::Acked) => DeliveryFilter::Acked,
        Ok(F::Failed) => DeliveryFilter::Failed,
        Ok(F::Nacked) => DeliveryFilter::Nacked,
        Ok(F::TimedOut) => DeliveryFilter::TimedOut,
        Ok(F::Terminated) => DeliveryFilter::Terminated,
        Ok(F::DeadLettered) => DeliveryFilter::DeadLettered,
        Ok(F::Extended) => DeliveryFilter::Extended,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "filter {filter} is not a DeliveryFilter value (0 to 9)"
            )));
        }
    })
}

pub fn delivery_event_to_proto(listed: ListedDelivery) -> pb::DeliveryEvent {
    let ListedDelivery { event, record } = listed;
    let HistoryEvent {
        partition,
        offset,
        attempt,
        at_ms,
        outcome,
        deadline_ms,
        member,
        reason,
    } = event;
    pb::DeliveryEvent {
        partition,
        offset,
        id: record.and_then(|r| r.id).unwrap_or_default(),
        attempt,
        at_ms,
        outcome: outcome_to_proto(outcome) as i32,
        member: member.to_string(),
        reason,
        deadline_ms: matches!(outcome, Outcome::Delivered | Outcome::Extended)
            .then_some(deadline_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_and_filter_has_its_proto_value() {
        for outcome in Outcome::ALL {
            assert_eq!(outcome_to_proto(outcome) as i32, i32::from(outcome.code()));
        }
        for value in 0..=9 {
            assert!(delivery_filter(value).is_ok());
        }
        let error = delivery_filter(10).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn a_message_is_named_exactly_once() {
        assert!(status_message_ref(None).is_err());
        assert_eq!(
            status_message_ref(Some(pb::get_delivery_status_request::Message::Position(
                pb::MessagePosition {
                    partition: 1,
                    offset: 2
                }
            )))
            .unwrap(),
            MessageRef::Position {
                partition: 1,
                offset: 2
            }
        );
    }
}
