//! How delivery status, attempts and events read at the command line and in JSON:
//! shared by `tidelog message status | history` and `tidelog queue deliveries`.
//! Imports neither of them.

use serde_json::{Value, json};
use tidelog_proto::v1::{
    DeliveryAttempt, DeliveryEvent, DeliveryOutcome, GroupDeliveryStatus, QueueDeliveryState,
    QueueDeliveryStatus,
};
use tidelog_storage::msgid;

use crate::time::format_datetime_ms;

/// An outcome in the CLI's words.
pub fn outcome_name(outcome: i32) -> &'static str {
    match DeliveryOutcome::try_from(outcome) {
        Ok(DeliveryOutcome::Delivered) => "delivered",
        Ok(DeliveryOutcome::Extended) => "extended",
        Ok(DeliveryOutcome::Acked) => "acked",
        Ok(DeliveryOutcome::Nacked) => "nacked",
        Ok(DeliveryOutcome::DeadlinePassed) => "deadline-passed",
        Ok(DeliveryOutcome::MemberLeft) => "member-left",
        Ok(DeliveryOutcome::Terminated) => "terminated",
        Ok(DeliveryOutcome::DeadLettered) => "dead-lettered",
        Ok(DeliveryOutcome::Released) => "released",
        Ok(DeliveryOutcome::Unspecified) => "in-progress",
        Err(_) => "unknown",
    }
}

/// A queue state in the CLI's words.
pub fn state_name(state: i32) -> &'static str {
    match QueueDeliveryState::try_from(state) {
        Ok(QueueDeliveryState::Ready) => "ready",
        Ok(QueueDeliveryState::Delayed) => "delayed",
        Ok(QueueDeliveryState::Unacked) => "unacked",
        Ok(QueueDeliveryState::Waiting) => "waiting",
        Ok(QueueDeliveryState::Acked) => "acked",
        Ok(QueueDeliveryState::DeadLettered) => "dead-lettered",
        Ok(QueueDeliveryState::Expired) => "expired",
        Ok(QueueDeliveryState::Settled) => "settled",
        Ok(QueueDeliveryState::Filtered) => "filtered",
        Ok(QueueDeliveryState::Deleted) => "deleted",
        _ => "unknown",
    }
}

/// A time as `2026-11-23T10:15:00.000Z (1763892900000)`.
pub fn when(ms: i64) -> String {
    format!("{} ({ms})", format_datetime_ms(ms))
}

/// A short time for table cells.
pub fn when_short(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".into(), format_datetime_ms)
}

/// The table rows of a queue status.
pub fn queue_status_pairs(status: &QueueDeliveryStatus) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("queue", status.queue.clone()),
        ("state", state_name(status.state).to_string()),
        ("attempts", status.attempts.to_string()),
    ];
    if !status.member.is_empty() {
        rows.push(("member", status.member.clone()));
    }
    if let Some(at) = status.delivered_at_ms {
        rows.push(("delivered", when(at)));
    }
    if let Some(at) = status.deadline_ms {
        rows.push(("deadline", when(at)));
    }
    if let Some(at) = status.due_ms {
        let label = if status.state == QueueDeliveryState::Delayed as i32 {
            "deliver-at"
        } else {
            "redelivery at"
        };
        rows.push((label, when(at)));
    }
    if let Some(at) = status.settled_at_ms {
        rows.push(("settled", when(at)));
    }
    if let Some(at) = status.expires_at_ms {
        rows.push(("expired", when(at)));
    }
    if !status.reason.is_empty() {
        rows.push(("reason", status.reason.clone()));
    }
    if status.state == QueueDeliveryState::Settled as i32 {
        rows.push((
            "note",
            "settled; no history says how (purged, or older than the queue's history retention)"
                .into(),
        ));
    }
    rows
}

pub fn queue_status_json(status: &QueueDeliveryStatus) -> Value {
    json!({
        "queue": status.queue,
        "state": state_name(status.state),
        "attempts": status.attempts,
        "member": (!status.member.is_empty()).then_some(&status.member),
        "delivered_at_ms": status.delivered_at_ms,
        "deadline_ms": status.deadline_ms,
        "due_ms": status.due_ms,
        "settled_at_ms": status.settled_at_ms,
        "expires_at_ms": status.expires_at_ms,
        "reason": (!status.reason.is_empty()).then_some(&status.reason),
    })
}

pub fn group_status_pairs(status: &GroupDeliveryStatus) -> Vec<(&'static str, String)> {
    vec![
        ("group", status.group.clone()),
        (
            "committed",
            status
                .committed_offset
                .map_or_else(|| "nothing in this partition".into(), |o| o.to_string()),
        ),
        (
            "state",
            if status.committed_past {
                "consumed (committed past it)".into()
            } else {
                "not consumed yet (not committed past it)".into()
            },
        ),
    ]
}

pub fn group_status_json(status: &GroupDeliveryStatus) -> Value {
    json!({
        "group": status.group,
        "committed_offset": status.committed_offset,
        "committed_past": status.committed_past,
    })
}

pub fn attempt_json(attempt: &DeliveryAttempt) -> Value {
    json!({
        "attempt": attempt.attempt,
        "member": attempt.member,
        "delivered_at_ms": attempt.delivered_at_ms,
        "deadline_ms": attempt.deadline_ms,
        "extensions": attempt.extensions,
        "outcome": outcome_name(attempt.outcome),
        "outcome_at_ms": attempt.outcome_at_ms,
        "reason": (!attempt.reason.is_empty()).then_some(&attempt.reason),
        "dead_lettered_at_ms": attempt.dead_lettered_at_ms,
        "dead_letter_reason": attempt.dead_lettered_at_ms.map(|_| &attempt.dead_letter_reason),
    })
}

/// One table row of an attempt: ATTEMPT MEMBER DELIVERED OUTCOME AT REASON.
pub fn attempt_row(attempt: &DeliveryAttempt) -> Vec<String> {
    let mut outcome = outcome_name(attempt.outcome).to_string();
    if attempt.extensions > 0 {
        outcome.push_str(&format!(" (extended x{})", attempt.extensions));
    }
    let mut reason = attempt.reason.clone();
    if attempt.dead_lettered_at_ms.is_some() {
        outcome.push_str(", dead-lettered");
        if reason.is_empty() || attempt.dead_letter_reason != reason {
            if !reason.is_empty() {
                reason.push_str("; ");
            }
            reason.push_str(&attempt.dead_letter_reason);
        }
    }
    vec![
        attempt.attempt.to_string(),
        if attempt.member.is_empty() {
            "-".into()
        } else {
            attempt.member.clone()
        },
        when_short(attempt.delivered_at_ms),
        outcome,
        when_short(attempt.outcome_at_ms.or(attempt.dead_lettered_at_ms)),
        if reason.is_empty() {
            "-".into()
        } else {
            reason
        },
    ]
}

pub fn event_json(event: &DeliveryEvent) -> Value {
    json!({
        "at_ms": event.at_ms,
        "partition": event.partition,
        "offset": event.offset,
        "id": (!event.id.is_empty()).then(|| msgid::display(&event.id)),
        "attempt": event.attempt,
        "outcome": outcome_name(event.outcome),
        "member": (!event.member.is_empty()).then_some(&event.member),
        "reason": (!event.reason.is_empty()).then_some(&event.reason),
        "deadline_ms": event.deadline_ms,
    })
}

/// One table row of an event: AT PARTITION OFFSET ID ATTEMPT OUTCOME MEMBER REASON.
pub fn event_row(event: &DeliveryEvent) -> Vec<String> {
    let dash = |text: &str| {
        if text.is_empty() {
            "-".to_string()
        } else {
            text.to_string()
        }
    };
    vec![
        format_datetime_ms(event.at_ms),
        event.partition.to_string(),
        event.offset.to_string(),
        if event.id.is_empty() {
            "-".into()
        } else {
            msgid::display(&event.id)
        },
        event.attempt.to_string(),
        outcome_name(event.outcome).to_string(),
        dash(&event.member),
        dash(&event.reason),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_and_state_has_a_name() {
        for value in 0..=8 {
            assert_ne!(outcome_name(value), "unknown");
        }
        for value in 1..=8 {
            assert_ne!(state_name(value), "unknown");
        }
        assert_eq!(outcome_name(99), "unknown");
    }
}
