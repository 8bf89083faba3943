//! Queue types between the API and the storage engine.

use tidelog_proto::v1 as pb;
use tidelog_storage::queue::{self as q, Damage, QueueConfig, QueueStatus, StartAt};
use tonic::{Code, Status};

/// A create request's config: every absent field takes the default for `topic`.
pub fn queue_config_from_proto(topic: &str, config: Option<pb::QueueConfig>) -> QueueConfig {
    let mut result = QueueConfig::defaults_for(topic);
    if let Some(update) = config {
        apply_queue_config(&mut result, update);
    }
    result
}

/// Applies the fields that are set (AlterQueue, or the create defaults).
pub fn apply_queue_config(config: &mut QueueConfig, update: pb::QueueConfig) {
    if let Some(ms) = update.ack_deadline_ms {
        config.ack_deadline_ms = ms;
    }
    if let Some(max) = update.max_deliveries {
        config.max_deliveries = max;
    }
    if let Some(ms) = update.backoff_initial_ms {
        config.backoff_initial_ms = ms;
    }
    if let Some(ms) = update.backoff_max_ms {
        config.backoff_max_ms = ms;
    }
    if let Some(topic) = update.dead_letter_topic {
        config.dead_letter_topic = topic;
    }
    if let Some(max) = update.max_unacked_per_member {
        config.max_unacked_per_member = max;
    }
    if let Some(attempts) = update.history_attempts {
        config.history_attempts = attempts;
    }
    if let Some(ms) = update.history_retention_ms {
        config.history_retention_ms = ms;
    }
}

/// The effective config, every field set.
pub fn queue_config_to_proto(config: &QueueConfig) -> pb::QueueConfig {
    pb::QueueConfig {
        ack_deadline_ms: Some(config.ack_deadline_ms),
        max_deliveries: Some(config.max_deliveries),
        backoff_initial_ms: Some(config.backoff_initial_ms),
        backoff_max_ms: Some(config.backoff_max_ms),
        dead_letter_topic: Some(config.dead_letter_topic.clone()),
        max_unacked_per_member: Some(config.max_unacked_per_member),
        history_attempts: Some(config.history_attempts),
        history_retention_ms: Some(config.history_retention_ms),
    }
}

/// Where a new queue starts (absent = latest).
pub fn start_at(start: Option<pb::StartPosition>) -> Result<StartAt, Status> {
    use pb::start_position::Position;
    Ok(match start.and_then(|s| s.position) {
        None | Some(Position::Latest(_)) => StartAt::Latest,
        Some(Position::Earliest(_)) => StartAt::Earliest,
        Some(Position::TimestampMs(ms)) => StartAt::TimestampMs(ms),
        Some(Position::Offset(_)) => {
            return Err(Status::invalid_argument(
                "a queue starts at earliest, latest or a timestamp in every partition; an offset is not accepted",
            ));
        }
    })
}

/// A queue's description; `members` are (member id, client id, unacked), `damaged`
/// the (topic, damage) of each partition the queue stopped at a damaged batch.
pub fn queue_description(
    status: &QueueStatus,
    members: Vec<(String, String, u64)>,
    damaged: &[(String, Damage)],
) -> pb::QueueDescription {
    pb::QueueDescription {
        name: status.name.clone(),
        topic: status.topic.clone(),
        config: Some(queue_config_to_proto(&status.config)),
        ready: status.ready,
        delayed: status.delayed,
        unacked: status.unacked,
        waiting: status.waiting,
        oldest_unacked_age_ms: status.oldest_unacked_age_ms,
        members: members
            .into_iter()
            .map(|(member_id, client_id, unacked)| pb::QueueMember {
                member_id,
                client_id,
                unacked,
            })
            .collect(),
        filter: status.config.filter.clone().unwrap_or_default(),
        topic_pattern: status.pattern.clone().unwrap_or_default(),
        topics: match status.pattern {
            Some(_) => {
                let mut topics: Vec<String> =
                    status.partitions.iter().map(|p| p.topic.clone()).collect();
                topics.dedup();
                topics
            }
            None => Vec::new(),
        },
        partitions: status
            .partitions
            .iter()
            .map(|p| {
                let damage = damaged
                    .iter()
                    .find(|(t, d)| *t == p.topic && d.partition == p.partition)
                    .map(|(_, d)| d);
                pb::QueuePartition {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    settled_below: p.settled_below,
                    end_offset: p.end_offset,
                    damaged_at: damage.map(|d| d.offset),
                    damaged_reason: damage.map(|d| d.reason.clone()).unwrap_or_default(),
                    unavailable: p.unavailable.is_some(),
                    unavailable_reason: p.unavailable.clone().unwrap_or_default(),
                }
            })
            .collect(),
    }
}

/// Leaves out of `queue` every topic `visible` refuses (those the caller may not
/// describe): the topic of a queue on one topic, the topics a pattern queue has taken,
/// their partitions, and the dead-letter topic (`config.dead_letter_topic` absent).
/// They come from the queue's state, not from the request, so they are left out
/// silently. (A pattern queue's counts are those of the topics shown: see
/// `QueuesService::describe`.)
pub fn leave_out_hidden_topics(queue: &mut pb::QueueDescription, visible: impl Fn(&str) -> bool) {
    if !queue.topic.is_empty() && !visible(&queue.topic) {
        queue.topic.clear();
    }
    queue.topics.retain(|t| visible(t));
    queue.partitions.retain(|p| visible(&p.topic));
    if let Some(config) = &mut queue.config
        && config
            .dead_letter_topic
            .as_deref()
            .is_some_and(|t| !visible(t))
    {
        config.dead_letter_topic = None;
    }
}

/// A settlement from the API, with what names the delivery besides its position.
#[derive(Debug)]
pub struct Addressed {
    /// The topic it names (empty: none).
    pub topic: String,
    /// The delivery's receipt, as sent (empty: none); the queues module reads it.
    pub receipt: String,
    /// Err (the reason, for an INVALID_ARGUMENT outcome) for a through_offset on
    /// anything but an ack.
    pub request: Result<q::SettleRequest, String>,
}

/// A settlement from the API, with the topic and receipt it names.
pub fn settle_request(settlement: pb::Settlement) -> Addressed {
    use pb::settlement::Action;
    let action = match settlement.action {
        None | Some(Action::Ack(_)) => Ok(q::SettleAction::Ack {
            through: settlement.through_offset,
        }),
        Some(_) if settlement.through_offset.is_some() => Err(format!(
            "partition {} offset {}: through_offset is for an ack only",
            settlement.partition, settlement.offset
        )),
        Some(Action::Nack(nack)) => Ok(q::SettleAction::Nack {
            delay_ms: nack.delay_ms,
            reason: nack.reason,
        }),
        Some(Action::InProgress(progress)) => Ok(q::SettleAction::InProgress {
            extend_ms: progress.extend_ms,
        }),
        Some(Action::Term(term)) => Ok(q::SettleAction::Term {
            reason: term.reason,
        }),
    };
    Addressed {
        topic: settlement.topic,
        receipt: settlement.receipt,
        request: action.map(|action| q::SettleRequest {
            partition: settlement.partition,
            offset: settlement.offset,
            attempt: settlement.attempt,
            action,
        }),
    }
}

/// A settlement's outcome for the API.
pub fn settlement_outcome(outcome: q::SettleOutcome) -> pb::SettlementOutcome {
    let (code, message, settled) = match outcome {
        q::SettleOutcome::Ok { settled } => (Code::Ok, String::new(), settled),
        q::SettleOutcome::NotFound(message) => (Code::NotFound, message, 0),
        q::SettleOutcome::Stale(message) => (Code::FailedPrecondition, message, 0),
        q::SettleOutcome::Invalid(message) => (Code::InvalidArgument, message, 0),
        q::SettleOutcome::Refused(message) => (Code::FailedPrecondition, message, 0),
        q::SettleOutcome::Unavailable(message) => (Code::Unavailable, message, 0),
    };
    pb::SettlementOutcome {
        code: code as i32,
        message,
        settled,
    }
}
