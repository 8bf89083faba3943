//! One bench worker: a queue member on its own connection and `Consume` stream that
//! checks every delivery and acks it at once, and what it measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::wall_clock_ms;
use crate::bench::Clock;
use crate::bench::payload::open;
use crate::bench::stats::Latency;
use crate::bench::validate::Errors;
use crate::queue::session::{Session, SessionError, SessionEvent, ack_ranges, position};

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

/// A Settle in flight: when its deliveries arrived, and what it acks.
pub(super) struct InFlight {
    pub(super) arrived: Instant,
    pub(super) count: u64,
    pub(super) ranges: Vec<(u32, u64, u64)>,
}

pub(super) async fn worker(
    plan: WorkerPlan,
    client: tidelog_client::Client,
    ready: oneshot::Sender<()>,
) -> WorkerOutcome {
    let mut outcome = WorkerOutcome {
        id: plan.id,
        ..WorkerOutcome::default()
    };
    let client = client.queues();
    let mut session = match Session::open(
        client,
        &plan.queue,
        &format!("tidelog-bench-{}", plan.id),
        plan.credit,
    )
    .await
    {
        Ok(session) => session,
        Err(error) => {
            outcome
                .errors
                .push(|| format!("worker {}: opening the stream failed: {error:?}", plan.id));
            let _ = ready.send(());
            plan.shared.finished.send_replace(true);
            return outcome;
        }
    };
    let _ = ready.send(());
    let mut in_flight: std::collections::HashMap<u64, InFlight> = Default::default();
    let mut finished = plan.shared.finished.subscribe();
    let mut expected = plan.expected.clone();
    let mut progress_at = Instant::now();
    enum Step {
        Event(Result<Option<SessionEvent>, SessionError>),
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
            event = session.next() => Step::Event(event),
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
                    .push(|| format!("worker {id}: the stream failed: {error:?}"));
                plan.shared.finished.send_replace(true);
                break;
            }
            Step::Event(Ok(None)) => {
                let id = plan.id;
                outcome
                    .errors
                    .push(|| format!("worker {id}: the broker ended the stream"));
                plan.shared.finished.send_replace(true);
                break;
            }
            Step::Event(Ok(Some(SessionEvent::Deliveries(batch)))) => {
                let arrived = Instant::now();
                progress_at = arrived;
                outcome.first_delivery.get_or_insert(arrived);
                let now_ns = plan.clock.now_ns();
                let wall_ms = wall_clock_ms();
                let count = batch.deliveries.len() as u64;
                outcome.events += 1;
                outcome.largest_event = outcome.largest_event.max(count);
                outcome.delivered += count;
                let mut offsets = Vec::with_capacity(batch.deliveries.len());
                for d in &batch.deliveries {
                    let Some(m) = d.message.as_ref() else {
                        continue;
                    };
                    if d.attempt > 1 {
                        outcome.redelivered += 1;
                    } else if let Some(due_ms) = m.deliver_at_ms {
                        // The broker decides with the same wall clock: a delivery
                        // before the time is an error, not a fast delivery.
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
                            outcome.errors.push(|| {
                                format!("{p}/{o}: sent to partition {}", header.partition)
                            });
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
                    offsets.push(position(d));
                }
                let settlements = ack_ranges(&mut offsets);
                let ranges = settlements
                    .iter()
                    .map(|s| (s.partition, s.offset, s.through_offset.unwrap_or(s.offset)))
                    .collect();
                match session.settle(settlements).await {
                    Ok(request) => {
                        outcome.settles += 1;
                        in_flight.insert(
                            request,
                            InFlight {
                                arrived,
                                count,
                                ranges,
                            },
                        );
                    }
                    Err(error) => {
                        let id = plan.id;
                        outcome
                            .errors
                            .push(|| format!("worker {id}: sending acks failed: {error:?}"));
                        plan.shared.finished.send_replace(true);
                        break;
                    }
                }
            }
            Step::Event(Ok(Some(SessionEvent::Settled(settled)))) => {
                let Some(sent) = in_flight.remove(&settled.request_id) else {
                    continue;
                };
                let now = Instant::now();
                progress_at = now;
                outcome.last_ack = Some(now);
                let mut acked = 0;
                for (result, &(partition, first, last)) in settled.outcomes.iter().zip(&sent.ranges)
                {
                    let want = last - first + 1;
                    if result.code == 0 && result.settled == want {
                        outcome.mark_acked(partition, first, last);
                        acked += want;
                    } else {
                        let message = result.message.clone();
                        let (code, settled) = (result.code, result.settled);
                        outcome.errors.push(|| {
                            format!(
                                "ack of {partition}/{first}..={last} answered code {code}, {settled} of {want} settled: {message}"
                            )
                        });
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
                if let Err(error) = session.credit(sent.count as u32).await {
                    let id = plan.id;
                    outcome
                        .errors
                        .push(|| format!("worker {id}: sending credit failed: {error:?}"));
                    plan.shared.finished.send_replace(true);
                    break;
                }
            }
        }
    }
    outcome
}
