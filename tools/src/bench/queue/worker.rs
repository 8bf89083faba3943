//! One bench worker: a queue member on its own connection and `Consume` stream
//! (tidelog-client's `QueueConsumer`, as every other queue consumer) that checks every
//! delivery and acks each event's deliveries at once in one Settle
//! (`Delivery::ack_all`), and what it measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tidelog_client::{Delivery, QueueConsumer, QueueConsumerOptions, RangeAck};
use tokio::sync::{mpsc, oneshot, watch};

use super::wall_clock_ms;
use crate::bench::Clock;
use crate::bench::payload::open;
use crate::bench::stats::Latency;
use crate::bench::validate::Errors;

/// State the workers share.
#[derive(Debug)]
pub(super) struct Shared {
    /// Acks confirmed so far, over all workers.
    pub(super) acked: AtomicU64,
    /// Set once everything expected was acked, or a worker gave up.
    pub(super) finished: watch::Sender<bool>,
}

/// One worker's plan.
#[derive(Debug, Clone)]
pub(super) struct WorkerPlan {
    pub(super) id: u32,
    pub(super) queue: String,
    pub(super) run: u32,
    pub(super) credit: u32,
    pub(super) clock: Clock,
    pub(super) live: bool,
    pub(super) idle_timeout: Duration,
    /// Messages expected in all, once known (after publishing).
    pub(super) expected: watch::Receiver<Option<u64>>,
    pub(super) shared: Arc<Shared>,
}

/// What one worker did.
#[derive(Debug, Default)]
pub(super) struct WorkerOutcome {
    pub(super) id: u32,
    pub(super) delivered: u64,
    pub(super) acked: u64,
    pub(super) redelivered: u64,
    pub(super) bytes: u64,
    pub(super) events: u64,
    pub(super) largest_event: u64,
    pub(super) settles: u64,
    /// Delivery event arrival -> its Settled answer, per message.
    pub(super) ack_latency: Latency,
    /// Publish -> delivery, per message (--live).
    pub(super) publish_latency: Latency,
    /// Deliver-at time -> delivery (wall clock, ms resolution), per first delivery of a
    /// delayed message (--delay).
    pub(super) due_lateness: Latency,
    /// Acks confirmed per offset, per partition.
    pub(super) acks: Vec<Vec<u8>>,
    pub(super) first_delivery: Option<Instant>,
    pub(super) last_ack: Option<Instant>,
    pub(super) errors: Errors,
}

impl WorkerOutcome {
    pub(super) fn mark_acked(&mut self, partition: u32, first: u64, last: u64) {
        let p = partition as usize;
        if self.acks.len() <= p {
            self.acks.resize_with(p + 1, Vec::new);
        }
        let slots = &mut self.acks[p];
        if slots.len() <= last as usize {
            slots.resize(last as usize + 1, 0);
        }
        for slot in &mut slots[first as usize..=last as usize] {
            *slot = slot.saturating_add(1);
        }
    }
}

/// A Settle in flight: when its deliveries arrived, and how many it acks.
pub(super) struct InFlight {
    pub(super) arrived: Instant,
    pub(super) count: u64,
}

/// The answer to one event's acks.
type Answer = (InFlight, Result<Vec<RangeAck>, tidelog_client::Error>);

pub(super) async fn worker(
    plan: WorkerPlan,
    client: tidelog_client::Client,
    ready: oneshot::Sender<()>,
) -> WorkerOutcome {
    let mut outcome = WorkerOutcome {
        id: plan.id,
        ..WorkerOutcome::default()
    };
    // No reconnect: a broken stream is a failed run.
    let options = QueueConsumerOptions {
        client_id: format!("tidelog-bench-{}", plan.id),
        credit: plan.credit,
        limit: None,
        reconnect: false,
    };
    let mut consumer = match QueueConsumer::open(&client, &plan.queue, options).await {
        Ok(consumer) => consumer,
        Err(error) => {
            outcome
                .errors
                .push(|| format!("worker {}: opening the stream failed: {error}", plan.id));
            let _ = ready.send(());
            plan.shared.finished.send_replace(true);
            return outcome;
        }
    };
    let _ = ready.send(());
    // Each event's acks are awaited on their own task, so the worker reads the next
    // event while the broker makes them durable (as the stream allows).
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<Answer>();
    let mut finished = plan.shared.finished.subscribe();
    let mut expected = plan.expected.clone();
    let mut progress_at = Instant::now();
    enum Step {
        Event(Result<Vec<Delivery>, tidelog_client::Error>),
        Answer(Answer),
        Finished,
        Expected,
        Idle,
    }
    loop {
        if *finished.borrow() {
            break;
        }
        let idle_at = progress_at + plan.idle_timeout;
        let step = tokio::select! {
            event = consumer.next_batch() => Step::Event(event),
            Some(answer) = answers.recv() => Step::Answer(answer),
            _ = finished.changed() => Step::Finished,
            _ = expected.changed() => Step::Expected,
            _ = tokio::time::sleep_until(idle_at.into()), if expected.borrow().is_some() => Step::Idle,
        };
        match step {
            Step::Finished => {}
            Step::Expected => progress_at = Instant::now(),
            Step::Idle => {
                let acked = plan.shared.acked.load(Ordering::Acquire);
                let id = plan.id;
                let idle = plan.idle_timeout;
                outcome.errors.push(|| {
                    format!("worker {id}: nothing delivered for {idle:?} with {acked} acked and more expected")
                });
                plan.shared.finished.send_replace(true);
                break;
            }
            Step::Event(Err(error)) => {
                let id = plan.id;
                outcome
                    .errors
                    .push(|| format!("worker {id}: the stream failed: {error}"));
                plan.shared.finished.send_replace(true);
                break;
            }
            Step::Event(Ok(batch)) => {
                let arrived = Instant::now();
                progress_at = arrived;
                outcome.first_delivery.get_or_insert(arrived);
                let now_ns = plan.clock.now_ns();
                let wall_ms = wall_clock_ms();
                let count = batch.len() as u64;
                outcome.events += 1;
                outcome.largest_event = outcome.largest_event.max(count);
                outcome.delivered += count;
                for d in &batch {
                    check(&plan, &mut outcome, d, now_ns, wall_ms);
                }
                outcome.settles += 1;
                let answers = answers_tx.clone();
                tokio::spawn(async move {
                    let answer = Delivery::ack_all(&batch).await;
                    let _ = answers.send((InFlight { arrived, count }, answer));
                });
            }
            Step::Answer((sent, answer)) => {
                let now = Instant::now();
                progress_at = now;
                outcome.last_ack = Some(now);
                let ranges = match answer {
                    Ok(ranges) => ranges,
                    Err(error) => {
                        let id = plan.id;
                        outcome
                            .errors
                            .push(|| format!("worker {id}: sending acks failed: {error}"));
                        plan.shared.finished.send_replace(true);
                        break;
                    }
                };
                let mut acked = 0;
                for range in &ranges {
                    let (partition, first, last) = (range.partition, range.first, range.last);
                    let want = last - first + 1;
                    match &range.outcome {
                        Ok(settled) if *settled == want => {
                            outcome.mark_acked(partition, first, last);
                            acked += want;
                        }
                        result => {
                            let result = match result {
                                Ok(settled) => format!("{settled} of {want} settled"),
                                Err(error) => format!("refused: {error}"),
                            };
                            outcome.errors.push(|| {
                                format!("ack of {partition}/{first}..={last} answered {result}")
                            });
                        }
                    }
                }
                outcome.acked += acked;
                outcome.ack_latency.record_us_n(
                    u64::try_from(now.duration_since(sent.arrived).as_micros()).unwrap_or(u64::MAX),
                    sent.count,
                );
                let total = plan.shared.acked.fetch_add(acked, Ordering::AcqRel) + acked;
                if expected.borrow().is_some_and(|e| total >= e) {
                    plan.shared.finished.send_replace(true);
                    break;
                }
            }
        }
    }
    outcome
}

/// Checks one delivery's payload and records its latencies.
fn check(plan: &WorkerPlan, outcome: &mut WorkerOutcome, d: &Delivery, now_ns: u64, wall_ms: i64) {
    let m = d.message();
    if d.attempt() > 1 {
        outcome.redelivered += 1;
    } else if let Some(due_ms) = m.deliver_at_ms {
        // The broker decides with the same wall clock: a delivery before the time is
        // an error, not a fast delivery.
        if wall_ms < due_ms {
            let (p, o) = (m.partition, m.offset);
            outcome.errors.push(|| {
                format!(
                    "{p}/{o}: delivered {} ms before its deliver-at time",
                    due_ms - wall_ms
                )
            });
        }
        let late_ms = u64::try_from(wall_ms - due_ms).unwrap_or(0);
        outcome.due_lateness.record_us_n(late_ms * 1_000, 1);
    }
    outcome.bytes += m.value.len() as u64;
    match open(&m.value) {
        Ok(header) if header.run != plan.run => {
            let (p, o) = (m.partition, m.offset);
            outcome.errors.push(|| {
                format!(
                    "{p}/{o}: a message of run {:08x}, not of this run",
                    header.run
                )
            });
        }
        Ok(header) if header.partition != m.partition => {
            let (p, o) = (m.partition, m.offset);
            outcome
                .errors
                .push(|| format!("{p}/{o}: sent to partition {}", header.partition));
        }
        Ok(header) => {
            if plan.live {
                outcome
                    .publish_latency
                    .record_us_n(now_ns.saturating_sub(header.sent_ns) / 1_000, 1);
            }
        }
        Err(error) => {
            let (p, o) = (m.partition, m.offset);
            outcome.errors.push(|| format!("{p}/{o}: {error}"));
        }
    }
}
