//! [`QueueEngine::settle`]: acks, nacks, deadline extensions and terminations, durable
//! when it returns.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::{
    ACK_LATENCIES_KEPT_MAX, QueueEngine, SettleAction, SettleOutcome, SettleRequest, Timer,
};
use crate::error::Result;
use crate::queue::history::{HistoryEvent, Outcome};
use crate::queue::state::{Hold, QueueOp, truncate_utf8};

impl QueueEngine {
    /// Settles deliveries for `member` (None: whoever holds them, for the unary API).
    /// Every outcome is durable when this returns.
    pub fn settle(
        &mut self,
        member: Option<&str>,
        requests: &[SettleRequest],
    ) -> Result<Vec<SettleOutcome>> {
        let queue = self.queue()?;
        let now = self.store.clock().now_ms();
        let mut ops = Vec::new();
        let mut events = Vec::new();
        let mut outcomes = Vec::with_capacity(requests.len());
        // Offsets settled so far in this call, so a duplicate is not counted twice.
        let mut gone: BTreeSet<(u32, u64)> = BTreeSet::new();
        let mut released: HashMap<Arc<str>, u64> = HashMap::new();
        for request in requests {
            if let SettleAction::Ack {
                through: Some(through),
            } = request.action
            {
                // A range: every offset in it this member holds.
                let mut ranges: Vec<(u64, u64)> = Vec::new();
                let mut settled = 0;
                {
                    let held = self.pending_range(
                        request.partition,
                        request.offset,
                        through.max(request.offset),
                    );
                    for (offset, pending) in &held {
                        let offset = *offset;
                        let Hold::Leased { member: holder, .. } = &pending.hold else {
                            continue;
                        };
                        if member.is_some_and(|m| m != &**holder)
                            || !gone.insert((request.partition, offset))
                        {
                            continue;
                        }
                        match released.get_mut(holder) {
                            Some(count) => *count += 1,
                            None => {
                                released.insert(holder.clone(), 1);
                            }
                        }
                        if self.ack_latencies_ms.len() < ACK_LATENCIES_KEPT_MAX {
                            self.ack_latencies_ms
                                .push(now.saturating_sub(pending.last_delivery_ms).max(0) as u64);
                        }
                        match ranges.last_mut() {
                            Some(last) if last.1 + 1 == offset => last.1 = offset,
                            _ => ranges.push((offset, offset)),
                        }
                        events.push(HistoryEvent::new(
                            request.partition,
                            offset,
                            pending.attempts,
                            now,
                            Outcome::Acked,
                            0,
                            holder,
                            "",
                        ));
                        settled += 1;
                    }
                }
                if !ranges.is_empty() {
                    ops.push(QueueOp::Ack {
                        name: self.name.clone(),
                        partition: request.partition,
                        ranges,
                    });
                }
                self.counters.acked += settled;
                outcomes.push(SettleOutcome::Ok { settled });
                continue;
            }
            let Some(pending) = self.pending_of(request.partition, request.offset) else {
                outcomes.push(SettleOutcome::NotFound(format!(
                    "partition {} offset {} is not pending in queue {:?}: it was settled already, or never delivered",
                    request.partition, request.offset, self.name
                )));
                continue;
            };
            if gone.contains(&(request.partition, request.offset)) {
                outcomes.push(SettleOutcome::NotFound(format!(
                    "partition {} offset {} was settled earlier in this request",
                    request.partition, request.offset
                )));
                continue;
            }
            let Hold::Leased { member: holder, .. } = &pending.hold else {
                outcomes.push(SettleOutcome::Stale(format!(
                    "partition {} offset {} is not delivered now (attempt {} is over and the message waits for a redelivery)",
                    request.partition, request.offset, pending.attempts
                )));
                continue;
            };
            // A settlement after the deadline is still taken while the lease stands (the
            // next tick has not given it up): the work was done.
            let stale_attempt = request.attempt != 0 && request.attempt != pending.attempts;
            let other_member = member.is_some_and(|m| m != &**holder);
            if stale_attempt || other_member {
                outcomes.push(SettleOutcome::Stale(format!(
                    "partition {} offset {}: attempt {} is current, held by {holder:?}",
                    request.partition, request.offset, pending.attempts
                )));
                continue;
            }
            let key = (request.partition, request.offset);
            match &request.action {
                SettleAction::Ack { through: None } => {
                    gone.insert(key);
                    if self.ack_latencies_ms.len() < ACK_LATENCIES_KEPT_MAX {
                        self.ack_latencies_ms
                            .push(now.saturating_sub(pending.last_delivery_ms).max(0) as u64);
                    }
                    *released.entry(holder.clone()).or_insert(0) += 1;
                    ops.push(QueueOp::Ack {
                        name: self.name.clone(),
                        partition: request.partition,
                        ranges: vec![(request.offset, request.offset)],
                    });
                    events.push(HistoryEvent::new(
                        request.partition,
                        request.offset,
                        pending.attempts,
                        now,
                        Outcome::Acked,
                        0,
                        holder,
                        "",
                    ));
                    self.counters.acked += 1;
                    outcomes.push(SettleOutcome::Ok { settled: 1 });
                }
                SettleAction::Ack { through: Some(_) } => unreachable!("ranges are handled above"),
                SettleAction::InProgress { extend_ms } => {
                    let extend = extend_ms.unwrap_or(queue.config.ack_deadline_ms);
                    if !(crate::queue::state::ACK_DEADLINE_MS_MIN
                        ..=crate::queue::state::QUEUE_DELAY_MS_MAX)
                        .contains(&extend)
                    {
                        outcomes.push(SettleOutcome::Invalid(format!(
                            "extend_ms {extend} is outside {}..={}",
                            crate::queue::state::ACK_DEADLINE_MS_MIN,
                            crate::queue::state::QUEUE_DELAY_MS_MAX
                        )));
                        continue;
                    }
                    let deadline = now.saturating_add(extend as i64);
                    ops.push(QueueOp::Extend {
                        name: self.name.clone(),
                        partition: request.partition,
                        offset: request.offset,
                        deadline_ms: deadline,
                    });
                    events.push(HistoryEvent::new(
                        request.partition,
                        request.offset,
                        pending.attempts,
                        now,
                        Outcome::Extended,
                        deadline,
                        holder,
                        "",
                    ));
                    self.timers.insert((
                        deadline,
                        Timer::Deadline,
                        request.partition,
                        request.offset,
                    ));
                    outcomes.push(SettleOutcome::Ok { settled: 0 });
                }
                SettleAction::Nack { delay_ms, reason } => {
                    if delay_ms.is_some_and(|d| d > crate::queue::state::QUEUE_DELAY_MS_MAX) {
                        outcomes.push(SettleOutcome::Invalid(format!(
                            "delay_ms is over the maximum of {}",
                            crate::queue::state::QUEUE_DELAY_MS_MAX
                        )));
                        continue;
                    }
                    gone.insert(key);
                    *released.entry(holder.clone()).or_insert(0) += 1;
                    let reason = truncate_utf8(reason, crate::queue::state::REASON_BYTES_MAX);
                    self.counters.nacked += 1;
                    events.push(HistoryEvent::new(
                        request.partition,
                        request.offset,
                        pending.attempts,
                        now,
                        Outcome::Nacked,
                        0,
                        holder,
                        reason,
                    ));
                    if queue.config.exhausted(pending.attempts) {
                        let reason = format!(
                            "nacked on the last of {} deliveries: {reason}",
                            queue.config.max_deliveries
                        );
                        let op = self.dead_letter(
                            &queue,
                            request.partition,
                            request.offset,
                            &pending,
                            &reason,
                        )?;
                        if let QueueOp::DeadLetter { reason, .. } = &op {
                            events.push(HistoryEvent::new(
                                request.partition,
                                request.offset,
                                pending.attempts,
                                now,
                                Outcome::DeadLettered,
                                0,
                                holder,
                                reason,
                            ));
                        }
                        ops.push(op);
                        self.counters.dead_lettered_max_deliveries += 1;
                        outcomes.push(SettleOutcome::Ok { settled: 1 });
                    } else {
                        let wait =
                            delay_ms.unwrap_or_else(|| queue.config.backoff_ms(pending.attempts));
                        let due = now.saturating_add(wait as i64);
                        ops.push(QueueOp::Nack {
                            name: self.name.clone(),
                            partition: request.partition,
                            offset: request.offset,
                            due_ms: due,
                            reason: reason.to_string(),
                        });
                        self.timers
                            .insert((due, Timer::Due, request.partition, request.offset));
                        outcomes.push(SettleOutcome::Ok { settled: 0 });
                    }
                }
                SettleAction::Term { reason } => {
                    gone.insert(key);
                    *released.entry(holder.clone()).or_insert(0) += 1;
                    events.push(HistoryEvent::new(
                        request.partition,
                        request.offset,
                        pending.attempts,
                        now,
                        Outcome::Terminated,
                        0,
                        holder,
                        reason,
                    ));
                    let reason = format!(
                        "terminated: {}",
                        truncate_utf8(reason, crate::queue::state::REASON_BYTES_MAX - 12)
                    );
                    let op = self.dead_letter(
                        &queue,
                        request.partition,
                        request.offset,
                        &pending,
                        &reason,
                    )?;
                    if let QueueOp::DeadLetter { reason, .. } = &op {
                        events.push(HistoryEvent::new(
                            request.partition,
                            request.offset,
                            pending.attempts,
                            now,
                            Outcome::DeadLettered,
                            0,
                            holder,
                            reason,
                        ));
                    }
                    ops.push(op);
                    self.counters.dead_lettered_term += 1;
                    outcomes.push(SettleOutcome::Ok { settled: 1 });
                }
            }
        }
        if !ops.is_empty() {
            self.store.queues().append(ops)?;
        }
        self.record(&queue.config, events)?;
        for (holder, count) in released {
            if let Some(held) = self.members.get_mut(&holder) {
                *held = held.saturating_sub(count);
            }
        }
        Ok(outcomes)
    }
}
