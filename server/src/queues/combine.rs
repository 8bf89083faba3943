//! The group commit of a queue part's settlements ("flat combining").
//!
//! Every settlement of a part (from every Consume stream, each of a stream's pipelined
//! Settle messages, and unary `Queues.Settle`) is queued here. The first to find no
//! leader running starts one on the blocking pool; the leader takes everything queued,
//! settles it in one [`QueueEngine::settle_combined`] call (one append to the queue
//! state log, so one fsync), and answers each caller. Settlements queued while it
//! runs go to the next leader, in one call again. So one consumer settling deliveries
//! one by one, or many consumers, pay one fsync per round, not one per settlement.
//!
//! Each caller's outcomes are exactly those of settling it alone, in the order the
//! callers were queued (the engine's promise). An answer is sent only once the call's
//! queue state and history are durable; an error (a failed fsync poisons the state
//! log; it is never retried) fails every caller of that call, and none is answered OK.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};

use tidelog_storage::queue::{QueueEngine, SettleOutcome, SettleRequest};
use tokio::sync::oneshot;
use tonic::Status;

use crate::convert;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One caller's answer.
#[derive(Debug)]
pub struct Settled {
    pub outcomes: Vec<SettleOutcome>,
    /// Delivery-to-ack times of the whole combined call (given to its first caller
    /// only, so each is counted once), for the ack-latency metric.
    pub ack_latencies_ms: Vec<u64>,
}

/// A caller waiting for its settlements.
#[derive(Debug)]
struct Waiting {
    member: Option<String>,
    requests: Vec<SettleRequest>,
    answer: oneshot::Sender<Result<Settled, Status>>,
}

#[derive(Debug, Default)]
struct Queued {
    waiting: Vec<Waiting>,
    /// A leader is running: whoever queues now is taken by it or by the leader it
    /// hands on to. Cleared by the last leader, under the lock, only when nothing is
    /// queued, so no caller is left without a leader.
    leading: bool,
}

/// The combiner of one part's settlements.
#[derive(Debug, Default)]
pub struct Combiner {
    queued: Arc<Mutex<Queued>>,
}

impl Combiner {
    /// Queues `member`'s settlements (None: whoever holds the deliveries) for
    /// `engine` and returns where the answer comes. The order of `submit` calls is
    /// the order the settlements are judged in. Needs a tokio runtime (the leader runs
    /// on its blocking pool).
    pub fn submit(
        &self,
        engine: &Arc<Mutex<QueueEngine>>,
        member: Option<String>,
        requests: Vec<SettleRequest>,
    ) -> oneshot::Receiver<Result<Settled, Status>> {
        let (answer, answered) = oneshot::channel();
        let lead = {
            let mut queued = lock(&self.queued);
            queued.waiting.push(Waiting {
                member,
                requests,
                answer,
            });
            !std::mem::replace(&mut queued.leading, true)
        };
        if lead {
            let (engine, queued) = (engine.clone(), self.queued.clone());
            let runtime = tokio::runtime::Handle::current();
            runtime
                .clone()
                .spawn_blocking(move || lead_rounds(&runtime, &engine, &queued));
        }
        answered
    }
}

/// A leader: settles what is queued in one engine call, until nothing is. When more
/// was queued while the engine ran, the lead passes to a new leader at once, so the
/// next call's state fsync overlaps this call's history fsync (as `Part::with_engine`
/// does for one call after another).
fn lead_rounds(
    runtime: &tokio::runtime::Handle,
    engine: &Arc<Mutex<QueueEngine>>,
    queued: &Arc<Mutex<Queued>>,
) {
    loop {
        let round = {
            let mut q = lock(queued);
            if q.waiting.is_empty() {
                q.leading = false;
                return;
            }
            std::mem::take(&mut q.waiting)
        };
        let (result, history) = {
            let mut engine = lock(engine);
            let batches: Vec<(Option<&str>, &[SettleRequest])> = round
                .iter()
                .map(|w| (w.member.as_deref(), w.requests.as_slice()))
                .collect();
            // A panic fails this round's callers, not every later one (the lead would
            // never be given up).
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                engine
                    .settle_combined(&batches)
                    .map_err(|e| convert::status(&e))
            }))
            .unwrap_or_else(|_| {
                Err(Status::internal(
                    "settling panicked; the settlements were not answered: send them again",
                ))
            });
            let latencies = engine.take_ack_latencies();
            (
                result.map(|outcomes| (outcomes, latencies)),
                engine.take_history(),
            )
        };
        let handed_on = !lock(queued).waiting.is_empty();
        if handed_on {
            let (engine, queued, next) = (engine.clone(), queued.clone(), runtime.clone());
            runtime.spawn_blocking(move || lead_rounds(&next, &engine, &queued));
        }
        // Answered only once the history is written too (the crash rule: an event
        // follows its state). One that could not be written is counted and logged by
        // it; the settlements stand (see `QueueEngine::record`).
        let _ = history.wait();
        answer(round, result);
        if handed_on {
            return;
        }
    }
}

/// Answers each caller of a round: its outcomes, or the round's error.
fn answer(round: Vec<Waiting>, result: Result<(Vec<Vec<SettleOutcome>>, Vec<u64>), Status>) {
    match result {
        Ok((outcomes, latencies)) => {
            let mut latencies = Some(latencies);
            for (waiting, outcomes) in round.into_iter().zip(outcomes) {
                let _ = waiting.answer.send(Ok(Settled {
                    outcomes,
                    ack_latencies_ms: latencies.take().unwrap_or_default(),
                }));
            }
        }
        Err(status) => {
            for waiting in round {
                let _ = waiting.answer.send(Err(status.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The combiner against settling one caller at a time: callers submitted in a
    //! random order, with random pauses (waiting for some answers) between them so
    //! rounds form differently, get what settling each alone in submission order
    //! gives, and leave the same state.

    use std::sync::Arc;

    use bytes::Bytes;
    use proptest::prelude::*;
    use tidelog_storage::queue::{Queue, admin};
    use tidelog_storage::queue::{QueueConfig, QueueEngine, SettleAction, SettleRequest, StartAt};
    use tidelog_storage::{ManualClock, NewRecord, Store, StoreOptions, TopicConfig};

    use super::{Combiner, lock};

    const MEMBERS: [&str; 3] = ["m0", "m1", "m2"];

    /// A store with queue `work` on 2 x 6 messages, each member holding 3.
    fn setup(dir: &std::path::Path) -> (Arc<Store>, QueueEngine) {
        let store = Arc::new(
            Store::open(
                dir,
                StoreOptions {
                    clock: ManualClock::new(1_700_000_000_000),
                    flush_threads: 1,
                    retention_interval: None,
                    ..StoreOptions::default()
                },
            )
            .unwrap(),
        );
        let topic = store
            .create_topic("jobs", 2, TopicConfig::default())
            .unwrap();
        for partition in 0..2 {
            let records: Vec<NewRecord> = (0..6)
                .map(|i| NewRecord {
                    value: Bytes::from(format!("{partition}-{i}")),
                    ..NewRecord::default()
                })
                .collect();
            topic
                .partition(partition)
                .unwrap()
                .append_durable(&records)
                .unwrap();
        }
        let config = QueueConfig {
            max_deliveries: 1,
            ..QueueConfig::defaults_for("jobs")
        };
        admin::create_queue(&*store, "work", "jobs", StartAt::Earliest, config).unwrap();
        let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
        for member in MEMBERS {
            engine.member_joined(member);
        }
        let wants: Vec<(String, u32)> = MEMBERS.iter().map(|m| (m.to_string(), 3)).collect();
        engine.deliver(&wants).unwrap();
        (store, engine)
    }

    fn state(store: &Store) -> Queue {
        store.queues().read(|q| q.get("work").cloned()).unwrap()
    }

    /// (member index, 3 = None; settlements as (partition, offset, action); wait for
    /// the answers so far after submitting).
    type Caller = (usize, Vec<(u32, u64, u8)>, bool);

    fn request((partition, offset, action): (u32, u64, u8)) -> SettleRequest {
        SettleRequest {
            partition,
            offset,
            attempt: 0,
            action: match action {
                0 | 1 => SettleAction::Ack { through: None },
                2 => SettleAction::Ack {
                    through: Some(offset + 2),
                },
                3 => SettleAction::Nack {
                    delay_ms: None,
                    reason: "n".into(),
                },
                4 => SettleAction::InProgress {
                    extend_ms: Some(5_000),
                },
                _ => SettleAction::Term { reason: "t".into() },
            },
        }
    }

    fn callers() -> impl Strategy<Value = Vec<Caller>> {
        prop::collection::vec(
            (
                0usize..4,
                prop::collection::vec((0u32..2, 0u64..7, 0u8..6), 1..4),
                any::<bool>(),
            ),
            1..12,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn combined_callers_get_what_settling_each_alone_gives(callers in callers()) {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .build()
                .unwrap();
            let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (store_a, mut engine_a) = setup(dir_a.path());
            engine_a.defer_history(true);
            let engine_a = Arc::new(std::sync::Mutex::new(engine_a));
            let (store_b, mut alone) = setup(dir_b.path());
            prop_assert_eq!(state(&store_a), state(&store_b));
            let combiner = Combiner::default();
            let got = runtime.block_on(async {
                let mut answers = Vec::new();
                let mut got = Vec::new();
                for (member, settlements, wait) in &callers {
                    let requests = settlements.iter().copied().map(request).collect();
                    let member = MEMBERS.get(*member).map(|m| m.to_string());
                    answers.push(combiner.submit(&engine_a, member, requests));
                    if *wait {
                        for answer in answers.drain(..) {
                            got.push(answer.await.unwrap().unwrap().outcomes);
                        }
                    }
                }
                for answer in answers {
                    got.push(answer.await.unwrap().unwrap().outcomes);
                }
                got
            });
            let mut want = Vec::new();
            for (member, settlements, _) in &callers {
                let requests: Vec<SettleRequest> =
                    settlements.iter().copied().map(request).collect();
                want.push(alone.settle(MEMBERS.get(*member).copied(), &requests).unwrap());
            }
            prop_assert_eq!(got, want);
            prop_assert_eq!(state(&store_a), state(&store_b));
            let engine_a = lock(&engine_a);
            prop_assert_eq!(engine_a.counters, alone.counters);
            for member in MEMBERS {
                prop_assert_eq!(engine_a.unacked(member), alone.unacked(member));
            }
        }
    }
}
