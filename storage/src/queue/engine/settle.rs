//! [`QueueEngine::settle`]: acks, nacks, deadline extensions and terminations, durable
//! when it returns; [`QueueEngine::settle_combined`]: several callers' settlements in
//! one call (one state-log append, so one fsync), each answered as if settled alone.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::{
    ACK_LATENCIES_KEPT_MAX, LetterFailure, QueueEngine, SettleAction, SettleOutcome, SettleRequest,
    Timer, dead_lettered_event,
};
use crate::error::Result;
use crate::queue::history::{HistoryEvent, Outcome};
use crate::queue::state::{Hold, QueueOp, truncate_utf8};

/// What an earlier request of a combined call did to a message, as the state will
/// have it once the call's operations are applied: later requests are judged
/// against that, not against the state before the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Earlier {
    /// Acked or dead-lettered: no longer pending.
    Settled,
    /// Nacked: pending, waiting for a redelivery (not leased).
    Nacked,
}

/// One caller's part of a combined settlement: the member settling (None: whoever
/// holds the deliveries, for the unary API) and its settlements, in order.
pub type SettleBatch<'a> = (Option<&'a str>, &'a [SettleRequest]);

impl QueueEngine {
    /// Settles deliveries for `member` (None: whoever holds them, for the unary API).
    /// Every outcome is durable when this returns.
    pub fn settle(
        &mut self,
        member: Option<&str>,
        requests: &[SettleRequest],
    ) -> Result<Vec<SettleOutcome>> {
        let mut outcomes = self.settle_combined(&[(member, requests)])?;
        Ok(outcomes.pop().unwrap_or_default())
    }

    /// Settles several callers' requests in one call: one append to the queue state
    /// log (so one fsync) for all of them, one history submission. Each batch's
    /// outcomes are exactly what [`QueueEngine::settle`] would give it called alone,
    /// after the batches before it (an offset acked by one batch is NotFound to the
    /// next, one nacked is Stale to the next), and the state afterwards is the same.
    /// Every outcome is durable when this returns; an error (a failed fsync, which
    /// poisons the state log) fails every batch, and none of their settlements was
    /// answered.
    pub fn settle_combined(
        &mut self,
        batches: &[SettleBatch<'_>],
    ) -> Result<Vec<Vec<SettleOutcome>>> {
        let queue = self.queue()?;
        // What retention deleted is dropped first: its settlements are judged as of a
        // message gone, the same whether or not the engine had followed the log's start.
        let topic = self.store.topic(&queue.topic).ok();
        if let Some(topic) = &topic {
            self.drop_deleted(topic)?;
        }
        // None when the topic is gone: every settlement is then not pending.
        let partitions = topic.map(|topic| topic.partitions().len());
        let now = self.store.clock().now_ms();
        let mut ops = Vec::new();
        let mut events = Vec::new();
        let mut all = Vec::with_capacity(batches.len());
        // What the batches before the current one did, by (partition, offset).
        let mut earlier: HashMap<(u32, u64), Earlier> = HashMap::new();
        let mut released: HashMap<Arc<str>, u64> = HashMap::new();
        for &(member, requests) in batches {
            let mut outcomes = Vec::with_capacity(requests.len());
            // Offsets settled so far in this batch, so a duplicate is not counted twice,
            // and what each did (merged into `earlier` after the batch).
            let mut gone: BTreeSet<(u32, u64)> = BTreeSet::new();
            let mut nacked: BTreeSet<(u32, u64)> = BTreeSet::new();
            for request in requests {
                if let Some(why) = invalid_argument(request, &queue.topic, partitions) {
                    outcomes.push(SettleOutcome::Invalid(why));
                    continue;
                }
                if let SettleAction::Ack {
                    through: Some(through),
                } = request.action
                {
                    // A range: every offset in it this member holds.
                    let mut ranges: Vec<(u64, u64)> = Vec::new();
                    let mut settled = 0;
                    {
                        let held = self.pending_range(request.partition, request.offset, through);
                        for (offset, pending) in &held {
                            let offset = *offset;
                            let Hold::Leased { member: holder, .. } = &pending.hold else {
                                continue;
                            };
                            if member.is_some_and(|m| m != &**holder)
                                || self.restored(request.partition, offset, pending.attempts)
                                || earlier.contains_key(&(request.partition, offset))
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
                                self.ack_latencies_ms.push(
                                    now.saturating_sub(pending.last_delivery_ms).max(0) as u64,
                                );
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
                let key = (request.partition, request.offset);
                let before = earlier.get(&key).copied();
                let pending = match before {
                    Some(Earlier::Settled) => None,
                    _ => self.pending_of(request.partition, request.offset),
                };
                let Some(pending) = pending else {
                    let queue_name = crate::queue::admin::public_name(&self.name);
                    outcomes.push(SettleOutcome::NotFound(
                        match self.deleted_by_retention(request.partition, request.offset) {
                            Some(start) => format!(
                                "partition {} offset {} was deleted by retention (the partition's log now starts at {start}) and is not pending in queue {queue_name:?}: a delivery of it still held was dropped, so there is nothing to settle (if its work was not done, the message is lost)",
                                request.partition, request.offset
                            ),
                            None => format!(
                                "partition {} offset {} is not pending in queue {queue_name:?}: it was settled already, or never delivered",
                                request.partition, request.offset
                            ),
                        },
                    ));
                    continue;
                };
                if gone.contains(&(request.partition, request.offset)) {
                    outcomes.push(SettleOutcome::NotFound(format!(
                        "partition {} offset {} was settled earlier in this request",
                        request.partition, request.offset
                    )));
                    continue;
                }
                let leased = match (&pending.hold, before) {
                    (_, Some(Earlier::Nacked)) => None,
                    (Hold::Leased { member: holder, .. }, _) => Some(holder),
                    _ => None,
                };
                let Some(holder) = leased else {
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
                if self.restored(request.partition, request.offset, pending.attempts) {
                    outcomes.push(SettleOutcome::Stale(format!(
                        "partition {} offset {}: attempt {} was delivered before the broker restarted and ended with it; the message is delivered again after its backoff",
                        request.partition, request.offset, pending.attempts
                    )));
                    continue;
                }
                if stale_attempt || other_member {
                    outcomes.push(SettleOutcome::Stale(format!(
                        "partition {} offset {}: attempt {} is current, held by {holder:?}",
                        request.partition, request.offset, pending.attempts
                    )));
                    continue;
                }
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
                    SettleAction::Ack { through: Some(_) } => {
                        unreachable!("ranges are handled above")
                    }
                    SettleAction::InProgress { extend_ms } => {
                        // Checked by `invalid_argument`; the ack deadline is in range.
                        let extend = extend_ms.unwrap_or(queue.config.ack_deadline_ms);
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
                        let reason = truncate_utf8(reason, crate::queue::state::REASON_BYTES_MAX);
                        // On the last attempt, the dead letter first: a failure leaves
                        // this settlement's message as it was, not the others'.
                        let mut refused = None;
                        let mut letter = None;
                        if queue.config.exhausted(pending.attempts) {
                            // The delivery's own number: past max_deliveries for a
                            // message that had used it when an AlterQueue lowered it.
                            let why = format!(
                                "nacked on delivery {}, its last (max_deliveries {}): {reason}",
                                pending.attempts, queue.config.max_deliveries
                            );
                            match self.dead_letter(
                                &queue,
                                request.partition,
                                request.offset,
                                &pending,
                                &why,
                            ) {
                                Ok(op) => letter = Some(op),
                                Err(error) => match self.dead_letter_failed(
                                    request.partition,
                                    request.offset,
                                    &error,
                                ) {
                                    LetterFailure::ForGood(why) => refused = Some(why),
                                    LetterFailure::Passing => {
                                        outcomes.push(SettleOutcome::Unavailable(format!(
                                            "partition {} offset {}: its dead letter could not be written now ({error}); it is still delivered, settle it again",
                                            request.partition, request.offset
                                        )));
                                        continue;
                                    }
                                },
                            }
                        }
                        gone.insert(key);
                        *released.entry(holder.clone()).or_insert(0) += 1;
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
                        if let Some(op) = letter {
                            events.extend(dead_lettered_event(&op, pending.attempts, now, holder));
                            if self.letter_written(&op) {
                                self.counters.dead_lettered_max_deliveries += 1;
                            }
                            ops.push(op);
                            outcomes.push(SettleOutcome::Ok { settled: 1 });
                        } else {
                            let wait = delay_ms
                                .unwrap_or_else(|| queue.config.backoff_ms(pending.attempts));
                            let due = now.saturating_add(wait as i64);
                            ops.push(self.redeliver_at(
                                request.partition,
                                request.offset,
                                due,
                                refused.clone().unwrap_or_else(|| reason.to_string()),
                            ));
                            nacked.insert(key);
                            outcomes.push(match refused {
                                Some(why) => SettleOutcome::Refused(format!(
                                    "partition {} offset {}: {why}",
                                    request.partition, request.offset
                                )),
                                None => SettleOutcome::Ok { settled: 0 },
                            });
                        }
                    }
                    SettleAction::Term { reason } => {
                        let why = format!(
                            "terminated: {}",
                            truncate_utf8(reason, crate::queue::state::REASON_BYTES_MAX - 12)
                        );
                        let letter = match self.dead_letter(
                            &queue,
                            request.partition,
                            request.offset,
                            &pending,
                            &why,
                        ) {
                            Ok(op) => Ok(op),
                            Err(error) => match self.dead_letter_failed(
                                request.partition,
                                request.offset,
                                &error,
                            ) {
                                LetterFailure::ForGood(why) => Err(why),
                                LetterFailure::Passing => {
                                    outcomes.push(SettleOutcome::Unavailable(format!(
                                        "partition {} offset {}: its dead letter could not be written now ({error}); it is still delivered, settle it again",
                                        request.partition, request.offset
                                    )));
                                    continue;
                                }
                            },
                        };
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
                        match letter {
                            Ok(op) => {
                                events.extend(dead_lettered_event(
                                    &op,
                                    pending.attempts,
                                    now,
                                    holder,
                                ));
                                if self.letter_written(&op) {
                                    self.counters.dead_lettered_term += 1;
                                }
                                ops.push(op);
                                outcomes.push(SettleOutcome::Ok { settled: 1 });
                            }
                            Err(why) => {
                                // Delivered again after the backoff, like a nack.
                                let due = now.saturating_add(
                                    queue.config.backoff_ms(pending.attempts) as i64,
                                );
                                ops.push(self.redeliver_at(
                                    request.partition,
                                    request.offset,
                                    due,
                                    why.clone(),
                                ));
                                nacked.insert(key);
                                outcomes.push(SettleOutcome::Refused(format!(
                                    "partition {} offset {}: {why}",
                                    request.partition, request.offset
                                )));
                            }
                        }
                    }
                }
            }
            for key in gone {
                let what = match nacked.contains(&key) {
                    true => Earlier::Nacked,
                    false => Earlier::Settled,
                };
                earlier.insert(key, what);
            }
            all.push(outcomes);
        }
        if !ops.is_empty() {
            self.store.queues().append(ops)?;
        }
        self.record(&queue.config, events);
        for (holder, count) in released {
            if let Some(held) = self.members.get_mut(&holder) {
                *held = held.saturating_sub(count);
            }
        }
        Ok(all)
    }
}

impl QueueEngine {
    /// Releases a held message for a redelivery at `due_ms` (a nack, or a dead letter
    /// refused for good): its timer, and the state op to commit.
    fn redeliver_at(
        &mut self,
        partition: u32,
        offset: u64,
        due_ms: i64,
        reason: String,
    ) -> QueueOp {
        self.timers.insert((due_ms, Timer::Due, partition, offset));
        QueueOp::Nack {
            name: self.name.clone(),
            partition,
            offset,
            due_ms,
            reason,
        }
    }
}

/// What is wrong with `request`'s own arguments, if anything, for a queue on topic
/// `topic` of `partitions` partitions (None: not known, the topic is gone). Checked
/// before the queue's state, so a bad argument is INVALID_ARGUMENT whether the message
/// is held, waiting or settled, as everywhere else in the API.
fn invalid_argument(
    request: &SettleRequest,
    topic: &str,
    partitions: Option<usize>,
) -> Option<String> {
    use crate::queue::state::{ACK_DEADLINE_MS_MIN, QUEUE_DELAY_MS_MAX};
    let (partition, offset) = (request.partition, request.offset);
    if let Some(count) = partitions
        && partition as usize >= count
    {
        return Some(format!(
            "partition {partition} is out of range: topic {topic:?} has {count} partitions (0 to {}); settle the partition the delivery names",
            count.saturating_sub(1)
        ));
    }
    match request.action {
        SettleAction::Ack {
            through: Some(through),
        } if through < offset => Some(format!(
            "partition {partition} offset {offset}: through_offset {through} is below offset"
        )),
        SettleAction::Nack {
            delay_ms: Some(delay),
            ..
        } if delay > QUEUE_DELAY_MS_MAX => Some(format!(
            "partition {partition} offset {offset}: delay_ms {delay} is over the maximum of {QUEUE_DELAY_MS_MAX}"
        )),
        SettleAction::InProgress {
            extend_ms: Some(extend),
        } if !(ACK_DEADLINE_MS_MIN..=QUEUE_DELAY_MS_MAX).contains(&extend) => Some(format!(
            "partition {partition} offset {offset}: extend_ms {extend} is outside {ACK_DEADLINE_MS_MIN}..={QUEUE_DELAY_MS_MAX}"
        )),
        _ => None,
    }
}
