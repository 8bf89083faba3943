//! Work queues over the storage engine's [`QueueEngine`]: one [`Runtime`] per queue in
//! use (started by its first member, settlement or receive), and the `Queues` service.
//!
//! A runtime owns the queue's engine and its members (Consume streams, and unary
//! Receive callers by name). Its driver task delivers whenever a member has credit and
//! room under `max_unacked_per_member`, runs the engine's timers when they are due, and
//! otherwise sleeps until a member asks, a timer comes, new messages arrive in the
//! topic, or the broker stops. The engine blocks on fsync, so every call into it runs
//! on the blocking pool; it is behind a mutex, which also serializes deliveries and
//! settlements of one queue (a settlement is judged against exactly the state the
//! deliveries left). Settlements go through each part's [`combine::Combiner`]: those
//! that arrive while one engine call settles are settled together in the next, with
//! one fsync (a group commit), each answered as if settled alone.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tidelog_proto::v1::{QueueConsumeResponse, QueueDelivery, queue_consume_response};
use tidelog_storage::filter::Filtered;
use tidelog_storage::queue::{QueueEngine, SettleOutcome, SettleRequest, Want, admin};
use tidelog_storage::{Error, Partition, Store, Topic, WaitForAnyData};
use tokio::sync::{Notify, mpsc, oneshot};
use tonic::Status;

use crate::convert;
use crate::metrics::Metrics;
use crate::read::QUEUE_RESPONSE_BYTES_MAX;
use crate::shutdown::Shutdown;
use receipt::Receipt;

mod combine;
pub mod receipt;
pub mod service;

pub use service::QueuesService;

/// Wait after the engine failed (a poisoned state log, a deleted topic) before trying
/// again, so a broken queue does not spin.
const ERROR_BACKOFF: Duration = Duration::from_millis(200);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a member's deliveries go.
#[derive(Debug)]
enum Sink {
    /// A Consume stream.
    Stream(mpsc::UnboundedSender<Result<QueueConsumeResponse, Status>>),
    /// A Receive call waiting (or none waiting now).
    Unary(Option<oneshot::Sender<Vec<QueueDelivery>>>),
}

/// A delivery made to a member that may not have reached it, by what identifies its
/// lease: given back with [`Runtime::release`] when it did not go out.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unseen {
    topic: String,
    partition: u32,
    offset: u64,
    attempt: u32,
}

impl Unseen {
    fn of(delivery: &QueueDelivery) -> Option<Unseen> {
        let message = delivery.message.as_ref()?;
        Some(Unseen {
            topic: message.topic.clone(),
            partition: message.partition,
            offset: message.offset,
            attempt: delivery.attempt,
        })
    }

    fn all(deliveries: &[QueueDelivery]) -> Vec<Unseen> {
        deliveries.iter().filter_map(Unseen::of).collect()
    }
}

#[derive(Debug)]
struct Member {
    client_id: String,
    /// Deliveries it may still be sent.
    credit: u64,
    sink: Sink,
    /// A Receive member: when its last call stopped waiting (see
    /// [`RECEIVE_MEMBER_IDLE`]).
    idle_since: Option<Instant>,
}

/// A Receive member (a unary caller's name) that holds no deliveries and has not
/// called for this long is forgotten: it leaves the queue's member list (DescribeQueue)
/// and its memory goes, so callers that use a new name each call (a pod name, a UUID)
/// do not pile up. Its next Receive joins again.
const RECEIVE_MEMBER_IDLE: Duration = Duration::from_secs(60);
/// How often a Receive looks for such members (at most).
const RECEIVE_MEMBER_SWEEP: Duration = Duration::from_secs(1);

/// One topic of a runtime's queue, with the engine of the queue that holds its state:
/// the queue itself, or a pattern queue's queue for that topic.
#[derive(Debug)]
struct Part {
    topic: String,
    /// The storage queue (a pattern queue's per-topic queue has its own name).
    queue: String,
    /// This part's number in the process ([`receipt::next_part`]): in every receipt
    /// it gives, so a settlement of a delivery another part made (of a queue, or a
    /// pattern queue's topic, deleted and created again since) is told apart.
    number: u64,
    engine: Arc<Mutex<QueueEngine>>,
    /// Settlements waiting for the engine, settled together (see [`combine`]).
    combiner: combine::Combiner,
    /// The engine's filter counters already added to the metrics.
    filtered_reported: Mutex<Filtered>,
}

impl Part {
    /// Runs `f` on the engine on the blocking pool, and returns once the history
    /// events it recorded are durable too. The engine defers them (see
    /// `QueueEngine::defer_history`): they are waited for after the engine is let go,
    /// so the next call's queue-state fsync overlaps this call's history fsync, while
    /// nothing is handed out or answered before both are durable.
    async fn with_engine<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut QueueEngine) -> tidelog_storage::Result<R> + Send + 'static,
    ) -> Result<R, Status> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let (result, history) = {
                let mut engine = lock(&engine);
                let result = f(&mut engine);
                (result, engine.take_history())
            };
            // A history that could not be written is counted and logged by it; the
            // decision stands (see `QueueEngine::record`).
            let _ = history.wait();
            result
        })
        .await
        .map_err(|e| Status::internal(format!("the queue engine task failed: {e}")))?
        .map_err(|e| convert::status(&e))
    }

    /// Opens the engine of storage queue `queue` on `topic`.
    async fn open(store: &Arc<Store>, topic: String, queue: String) -> Result<Part, Status> {
        let store = store.clone();
        let name = queue.clone();
        let engine = tokio::task::spawn_blocking(move || {
            QueueEngine::open(store, &name).map(|mut engine| {
                // Part::with_engine waits for the history after letting go of the
                // engine.
                engine.defer_history(true);
                engine
            })
        })
        .await
        .map_err(|e| Status::internal(format!("opening the queue engine failed: {e}")))?
        .map_err(|e| convert::status(&e))?;
        Ok(Part {
            topic,
            queue,
            number: receipt::next_part(),
            engine: Arc::new(Mutex::new(engine)),
            combiner: combine::Combiner::default(),
            filtered_reported: Mutex::new(Filtered::default()),
        })
    }

    /// Adds what the queue's filter skipped since the last report to the `queue` kind
    /// of the filtered-messages metric.
    fn report_filtered(&self, metrics: &Metrics) {
        let counters = lock(&self.engine).counters;
        let now = Filtered {
            skipped: counters.filtered,
            not_json: counters.filtered_not_json,
        };
        let mut reported = lock(&self.filtered_reported);
        metrics.filtered(
            "queue",
            Filtered {
                skipped: now.skipped.saturating_sub(reported.skipped),
                not_json: now.not_json.saturating_sub(reported.not_json),
            },
        );
        *reported = now;
    }
}

/// Settlements of one part for one settling member, as [`Runtime::submit_settle`]
/// queues them with the part's combiner.
struct Batch {
    part: Arc<Part>,
    /// None: whoever holds the deliveries (a unary Settle without receipts).
    member: Option<String>,
    /// Where each request's outcome goes in the caller's answer.
    indexes: Vec<usize>,
    requests: Vec<SettleRequest>,
}

/// One queue in use: a queue on one topic (one part), or a queue on a topic pattern
/// (a part per topic it has taken, which come and go as topics are created and
/// deleted). Members belong to the runtime and are served by every part.
#[derive(Debug)]
pub struct Runtime {
    name: String,
    /// The broker run's start, ms since the epoch (`QueueManager::run_ms`): in every
    /// receipt, so one from before a restart is told apart.
    run_ms: u64,
    /// A queue on a topic pattern: its parts are synced with the topics.
    pattern: bool,
    metrics: Arc<Metrics>,
    parts: Mutex<Vec<Arc<Part>>>,
    members: Mutex<HashMap<String, Member>>,
    wake: Notify,
    stopped: AtomicBool,
    /// Rotates which part delivers first, so no topic starves the others.
    turn: AtomicU64,
    /// Topics were created or deleted: sync the parts now (a pattern queue).
    resync: AtomicBool,
    /// Held from choosing who gets deliveries until they are handed to their sinks
    /// ([`Runtime::deliver_all`]). A member stops taking deliveries (a stream leaves, a
    /// Receive stops waiting) only under it, so every delivery the engine makes has a
    /// sink to go to: none is leased to a member that is no longer there to be sent
    /// it (which would count an attempt nobody saw).
    delivering: tokio::sync::Mutex<()>,
    /// When [`Runtime::forget_idle_receivers`] last looked.
    receivers_swept: Mutex<Option<Instant>>,
}

/// How often a queue on a topic pattern looks for new and deleted topics (besides
/// when the broker's topic admin tells it).
const PATTERN_SYNC_INTERVAL: Duration = Duration::from_millis(500);

impl Runtime {
    fn wake(&self) {
        self.wake.notify_one();
    }

    fn parts(&self) -> Vec<Arc<Part>> {
        lock(&self.parts).clone()
    }

    /// The config deliveries follow (every part has the same).
    async fn config(
        &self,
        store: &Arc<Store>,
    ) -> Result<tidelog_storage::queue::QueueConfig, Status> {
        if let Some(part) = self.parts().first() {
            return part.with_engine(|engine| engine.config()).await;
        }
        let name = self.name.clone();
        store
            .queues()
            .read(|q| q.pattern(&name).map(|p| p.config.clone()))
            .ok_or_else(|| convert::status(&Error::not_found(format!("queue {:?}", self.name))))
    }

    /// A member joins with `credit` deliveries allowed.
    fn join(&self, member: &str, client_id: &str, credit: u64, sink: Sink) {
        // Listed first, then joined to the parts there are: a part added meanwhile
        // joins every listed member after it is in place (see `sync_parts`).
        lock(&self.members).insert(
            member.to_string(),
            Member {
                client_id: client_id.to_string(),
                credit,
                sink,
                idle_since: None,
            },
        );
        for part in self.parts() {
            lock(&part.engine).member_joined(member);
        }
        self.wake();
    }

    /// A stream member leaves: what it holds is delivered again to others. Between
    /// delivery rounds, so a round's deliveries to it were sent on its stream (or
    /// given back, when the stream was gone). `unsent`: deliveries that were sent on
    /// its stream but never left the broker (the response stream was dropped with
    /// them queued): given back unseen first, before its other leases are given up.
    async fn leave(&self, member: &str, unsent: Vec<Unseen>) {
        let _delivering = self.delivering.lock().await;
        lock(&self.members).remove(member);
        self.release(member, unsent).await;
        for part in self.parts() {
            lock(&part.engine).member_left(member);
        }
        self.wake();
    }

    /// Gives back deliveries made to `member` that never went out (its Receive was
    /// cancelled, its stream's connection dropped): ready again at once, their
    /// attempts taken back (`QueueEngine::release`), durably. A failure is logged:
    /// the leases then stand until their deadlines, as before this existed.
    async fn release(&self, member: &str, unseen: Vec<Unseen>) {
        if unseen.is_empty() {
            return;
        }
        let parts = self.parts();
        // Per part, its (partition, offset, attempt) leases to give back.
        type Leases = Vec<(u32, u64, u32)>;
        let mut by_part: Vec<(Arc<Part>, Leases)> = Vec::new();
        for u in unseen {
            let part = match self.pattern {
                true => parts.iter().find(|p| p.topic == u.topic),
                false => parts.first(),
            };
            let Some(part) = part else { continue };
            let item = (u.partition, u.offset, u.attempt);
            match by_part.iter_mut().find(|(p, _)| Arc::ptr_eq(p, part)) {
                Some((_, items)) => items.push(item),
                None => by_part.push((part.clone(), vec![item])),
            }
        }
        for (part, items) in by_part {
            let owned = member.to_string();
            let released = part
                .with_engine(move |engine| engine.release(&owned, &items))
                .await;
            if let Err(status) = released {
                tracing::warn!(
                    queue = %self.name,
                    member,
                    %status,
                    "deliveries that never went out could not be given back; they are delivered again after their deadline"
                );
            }
        }
        self.wake();
    }

    fn add_credit(&self, member: &str, credit: u64) {
        if let Some(m) = lock(&self.members).get_mut(member) {
            m.credit = m.credit.saturating_add(credit);
        }
        self.wake();
    }

    /// Settles for `member` (None: whoever holds the deliveries). Each settlement
    /// names its topic; on a queue on one topic the topic is not looked at. One with a
    /// receipt settles only the lease the receipt names ([`Runtime::by_receipt`]).
    ///
    /// The settlements are queued with their parts' combiners now, before this
    /// returns: the order of the calls is the order they are judged in (a stream's
    /// Settle messages, read one after another, keep their order). The future
    /// answers once every part has settled its share, durably; it needs no polling to
    /// make progress.
    fn submit_settle(
        self: &Arc<Self>,
        member: Option<String>,
        requests: Vec<convert::Addressed>,
    ) -> impl Future<Output = Result<Vec<SettleOutcome>, Status>> + Send + 'static {
        let parts = self.parts();
        let mut outcomes: Vec<Option<SettleOutcome>> = vec![None; requests.len()];
        // Per part and settling member, the requests (and where their outcomes go), in
        // request order: a part's requests for another member than its last batch's
        // start a new batch, so the part judges them in request order.
        let mut by_part: Vec<Batch> = Vec::new();
        for (index, addressed) in requests.into_iter().enumerate() {
            let convert::Addressed {
                topic,
                receipt,
                request,
            } = addressed;
            let request = match request {
                Ok(request) => request,
                Err(reason) => {
                    outcomes[index] = Some(SettleOutcome::Invalid(reason));
                    continue;
                }
            };
            let part = if self.pattern {
                if topic.is_empty() {
                    outcomes[index] = Some(SettleOutcome::Invalid(format!(
                        "queue {:?} is on a topic pattern: name the delivery's topic (Settlement.topic, from ConsumedMessage.topic)",
                        self.name
                    )));
                    continue;
                }
                parts.iter().find(|p| p.topic == topic)
            } else {
                parts.first()
            };
            let Some(part) = part else {
                outcomes[index] = Some(SettleOutcome::NotFound(format!(
                    "topic {topic:?} in queue {:?} (not one of its topics now)",
                    self.name
                )));
                continue;
            };
            let settler = if receipt.is_empty() {
                member.clone()
            } else {
                match self.by_receipt(part, member.as_deref(), &receipt, &request) {
                    Ok(holder) => Some(holder),
                    Err(outcome) => {
                        outcomes[index] = Some(outcome);
                        continue;
                    }
                }
            };
            match by_part
                .iter_mut()
                .rev()
                .find(|b| Arc::ptr_eq(&b.part, part))
            {
                Some(batch) if batch.member == settler => {
                    batch.indexes.push(index);
                    batch.requests.push(request);
                }
                _ => by_part.push(Batch {
                    part: part.clone(),
                    member: settler,
                    indexes: vec![index],
                    requests: vec![request],
                }),
            }
        }
        let submitted: Vec<_> = by_part
            .into_iter()
            .map(|batch| {
                let part = batch.part;
                let answer = part
                    .combiner
                    .submit(&part.engine, batch.member, batch.requests);
                (part.topic.clone(), batch.indexes, answer)
            })
            .collect();
        let runtime = self.clone();
        async move {
            let mut failed = None;
            for (topic, indexes, answer) in submitted {
                // Every part's answer is waited for, even after one failed.
                let settled = match answer.await {
                    Ok(settled) => settled,
                    Err(_) => Err(Status::internal(
                        "the queue's settlement task ended without an answer; send the settlements again",
                    )),
                };
                match settled {
                    Ok(settled) => {
                        runtime.acked(&settled.ack_latencies_ms);
                        for (index, outcome) in indexes.into_iter().zip(settled.outcomes) {
                            outcomes[index] = Some(outcome);
                        }
                    }
                    // The part of a pattern queue's topic deleted since the parts
                    // were synced: its settlements are each NOT_FOUND, as for a
                    // topic the queue has not taken; the other topics' stand.
                    Err(status) if runtime.part_gone(&status) => {
                        for index in indexes {
                            outcomes[index] = Some(SettleOutcome::NotFound(format!(
                                "topic {topic:?} in queue {:?} (not one of its topics now)",
                                runtime.name
                            )));
                        }
                    }
                    // The pattern queue itself was deleted: said of it, not of the
                    // part (whose name is internal).
                    Err(status) if runtime.pattern && status.code() == tonic::Code::NotFound => {
                        failed = failed.or(Some(convert::status(&Error::not_found(format!(
                            "queue {:?} (it was deleted)",
                            runtime.name
                        )))));
                    }
                    Err(status) => failed = failed.or(Some(status)),
                }
            }
            runtime.wake();
            if let Some(status) = failed {
                return Err(status);
            }
            Ok(outcomes
                .into_iter()
                .map(|o| o.unwrap_or_else(|| SettleOutcome::Invalid("not settled".into())))
                .collect())
        }
    }

    /// Who settles `request`, sent with `receipt` by `member` (None: a unary
    /// Settle) to `part`: the member the receipt's lease went to. Err: the outcome
    /// instead, when the receipt names another lease than any `part` holds: one of
    /// another part (a queue, or a pattern queue's topic, deleted and perhaps created
    /// again since: NOT_FOUND, as for a topic the queue has not taken), of an earlier
    /// broker run (stale, as the engine says of a lease from before its start), or
    /// of another member than the stream settling it (stale).
    fn by_receipt(
        &self,
        part: &Part,
        member: Option<&str>,
        receipt: &str,
        request: &SettleRequest,
    ) -> Result<String, SettleOutcome> {
        let receipt = Receipt::parse(receipt).map_err(SettleOutcome::Invalid)?;
        let (partition, offset) = (request.partition, request.offset);
        if receipt.run_ms != self.run_ms {
            return Err(SettleOutcome::Stale(format!(
                "partition {partition} offset {offset}: this delivery was made before the broker restarted, and its lease ended with it; the message is delivered again after its backoff"
            )));
        }
        if receipt.part != part.number {
            let what = if self.pattern {
                format!(
                    "topic {:?} in queue {:?}: this delivery is of a topic of that name deleted since (the topic now under the name is another one",
                    part.topic, self.name
                )
            } else {
                format!(
                    "queue {:?}: this delivery is of a queue of that name deleted since (the queue now under the name is another one",
                    self.name
                )
            };
            return Err(SettleOutcome::NotFound(format!(
                "{what}, whose messages are settled by whoever holds them)"
            )));
        }
        match member {
            Some(member) if member != receipt.holder => Err(SettleOutcome::Stale(format!(
                "partition {partition} offset {offset}: this delivery went to member {:?}, not to this stream ({member:?})",
                receipt.holder
            ))),
            _ => Ok(receipt.holder),
        }
    }

    /// Deliveries `member` holds over every part.
    fn unacked(parts: &[Arc<Part>], member: &str) -> u64 {
        parts.iter().map(|p| lock(&p.engine).unacked(member)).sum()
    }

    /// (member id, client id, unacked) of every member.
    fn member_list(&self) -> Vec<(String, String, u64)> {
        let parts = self.parts();
        let ids: Vec<(String, String)> = lock(&self.members)
            .iter()
            .map(|(id, m)| (id.clone(), m.client_id.clone()))
            .collect();
        let mut members: Vec<_> = ids
            .into_iter()
            .map(|(id, client)| {
                let unacked = Self::unacked(&parts, &id);
                (id, client, unacked)
            })
            .collect();
        members.sort();
        members
    }

    /// Adds delivery-to-ack times to the queue's histogram, unless the runtime was
    /// stopped (the queue was deleted, and its series forgotten after the stop: see
    /// [`QueueManager::queue_deleted`]). Under the members lock, which `stop` takes
    /// after setting `stopped`, so no observation lands after the series was forgotten
    /// and brings it back.
    fn acked(&self, latencies_ms: &[u64]) {
        let _members = lock(&self.members);
        if !self.stopped.load(Ordering::Acquire) {
            self.metrics.queue_acked(&self.name, latencies_ms);
        }
    }

    /// Ends every member's stream with `status` and stops the driver.
    fn stop(&self, status: Status) {
        self.stopped.store(true, Ordering::Release);
        for (_, member) in lock(&self.members).drain() {
            if let Sink::Stream(tx) = member.sink {
                let _ = tx.send(Err(status.clone()));
            }
        }
        self.wake();
    }

    /// What each member can take now: credit, capped by its room under the unacked
    /// limit (over every part); a waiting Receive at most [`QUEUE_RESPONSE_BYTES_MAX`]
    /// (its one response), a stream any bytes (its deliveries are split into events
    /// under the bound, see [`Runtime::dispatch`]).
    fn wants(&self, parts: &[Arc<Part>]) -> Vec<Want> {
        // Every part has the same config; one whose queue went (a pattern queue's
        // deleted topic, until the next sync) has none.
        let max_unacked = parts
            .iter()
            .find_map(|p| lock(&p.engine).config().ok())
            .map_or(0, |c| u64::from(c.max_unacked_per_member));
        let ids: Vec<String> = lock(&self.members).keys().cloned().collect();
        let unacked: HashMap<String, u64> = ids
            .into_iter()
            .map(|id| {
                let n = Self::unacked(parts, &id);
                (id, n)
            })
            .collect();
        lock(&self.members)
            .iter()
            // Not to a sink whose receiver is gone (a stream's response dropped, a
            // Receive call cancelled): nothing would be there to take the deliveries.
            .filter(|(_, m)| match &m.sink {
                Sink::Stream(tx) => !tx.is_closed(),
                Sink::Unary(waiting) => waiting.as_ref().is_some_and(|tx| !tx.is_closed()),
            })
            .filter_map(|(id, m)| {
                let room = max_unacked.saturating_sub(unacked.get(id).copied().unwrap_or(0));
                let want = m.credit.min(room).min(u64::from(u32::MAX)) as u32;
                let bytes = match &m.sink {
                    Sink::Stream(_) => u64::MAX,
                    Sink::Unary(_) => QUEUE_RESPONSE_BYTES_MAX,
                };
                (want > 0).then(|| Want {
                    member: id.clone(),
                    messages: want,
                    bytes,
                })
            })
            .collect()
    }

    /// Hands a part's deliveries to their members. Returns those that could not be
    /// handed over (the member is gone, its stream's receiver or its Receive call is),
    /// by member, for [`Runtime::release`].
    fn dispatch(
        &self,
        part: &Part,
        batches: Vec<(String, Vec<tidelog_storage::queue::Delivery>)>,
    ) -> Vec<(String, Vec<Unseen>)> {
        let mut undelivered = Vec::new();
        let mut members = lock(&self.members);
        for (id, deliveries) in batches {
            let count = deliveries.len() as u64;
            let deliveries: Vec<QueueDelivery> = deliveries
                .into_iter()
                .map(|d| {
                    let receipt = Receipt::encode(self.run_ms, part.number, &id);
                    convert::queue_delivery(&part.topic, d, receipt)
                })
                .collect();
            let Some(member) = members.get_mut(&id) else {
                // Gone between the choice and now (not through `leave`, which waits
                // for the round): given back.
                undelivered.push((id, Unseen::all(&deliveries)));
                continue;
            };
            member.credit = member.credit.saturating_sub(count);
            let mut unsent = Vec::new();
            match &mut member.sink {
                Sink::Stream(tx) => {
                    for deliveries in split_deliveries(deliveries) {
                        if !unsent.is_empty() {
                            unsent.extend(Unseen::all(&deliveries));
                            continue;
                        }
                        let event = QueueConsumeResponse {
                            event: Some(queue_consume_response::Event::Deliveries(
                                queue_consume_response::Deliveries { deliveries },
                            )),
                        };
                        if let Err(refused) = tx.send(Ok(event)) {
                            // The stream's response is gone (its connection dropped).
                            if let Ok(event) = refused.0 {
                                unsent.extend(unseen_in(&event));
                            }
                        }
                    }
                }
                Sink::Unary(waiting) => {
                    member.credit = 0;
                    let sent = match waiting.take() {
                        Some(tx) => tx.send(deliveries),
                        None => Err(deliveries),
                    };
                    // The Receive call is gone (cancelled), or stopped waiting.
                    if let Err(deliveries) = sent {
                        unsent = Unseen::all(&deliveries);
                    }
                }
            }
            if !unsent.is_empty() {
                undelivered.push((id, unsent));
            }
        }
        undelivered
    }

    /// Brings a pattern queue's parts in line with the topics it has taken: takes
    /// new matching topics (storage decides), opens their engines (every member
    /// joined), and drops the parts of topics that are gone.
    async fn sync_parts(&self, store: &Arc<Store>) -> Result<(), Status> {
        let name = self.name.clone();
        let owned = store.clone();
        let serving = tokio::task::spawn_blocking(move || {
            admin::sync_pattern_queue(&*owned, &name)?;
            admin::serving_queues(&*owned, &name)
        })
        .await
        .map_err(|e| Status::internal(format!("the queue sync task failed: {e}")))?
        .map_err(|e| convert::status(&e))?;
        let current = self.parts();
        let mut next: Vec<Arc<Part>> = Vec::with_capacity(serving.len());
        let mut added = Vec::new();
        for (topic, queue) in serving {
            match current.iter().find(|p| p.queue == queue) {
                Some(part) => next.push(part.clone()),
                None => {
                    let part = Arc::new(Part::open(store, topic, queue).await?);
                    added.push(part.clone());
                    next.push(part);
                }
            }
        }
        if added.is_empty() && next.len() == current.len() {
            return Ok(());
        }
        tracing::info!(
            queue = %self.name,
            topics = ?next.iter().map(|p| p.topic.as_str()).collect::<Vec<_>>(),
            "queue on a topic pattern: topics changed"
        );
        *lock(&self.parts) = next;
        let ids: Vec<String> = lock(&self.members).keys().cloned().collect();
        for part in &added {
            let mut engine = lock(&part.engine);
            for id in &ids {
                engine.member_joined(id);
            }
        }
        Ok(())
    }

    /// Delivers, runs timers and sleeps, until the queue is stopped or the broker
    /// shuts down.
    async fn drive(self: Arc<Self>, store: Arc<Store>, shutdown: Shutdown) {
        let mut synced = tokio::time::Instant::now();
        while !self.stopped.load(Ordering::Acquire) && !shutdown.is_triggered() {
            let asked = self.resync.swap(false, Ordering::AcqRel);
            if self.pattern && (asked || synced.elapsed() >= PATTERN_SYNC_INTERVAL) {
                synced = tokio::time::Instant::now();
                if let Err(status) = self.sync_parts(&store).await {
                    self.failed(&status).await;
                    continue;
                }
            }
            let seen = match self.round(&store).await {
                Ok(Round { again: true, .. }) => continue,
                Ok(Round { seen, .. }) => seen,
                Err(status) => {
                    self.failed(&status).await;
                    continue;
                }
            };
            let parts = self.parts();
            // New data wakes the runtime when members want it, and when its topic has
            // caps (a cap to enforce, delayed messages to take before they count): a
            // publish notifies when it is written, and on an fsync = always topic its
            // messages become visible (and count) only after the fsync. Without this
            // the last publish's overflow waited for the next. The wait is for data
            // past what the round saw (`seen`), so an fsync that ended during the
            // round is not waited past.
            let watch = !self.wants(&parts).is_empty() || capped(&store, &parts);
            self.wait(&store, &shutdown, &parts, watch.then_some(&seen))
                .await;
        }
    }

    /// One round over the parts: timers, caps, then deliveries while members want
    /// them, starting with a different part each round.
    async fn round(&self, store: &Store) -> Result<Round, Status> {
        let mut parts = self.parts();
        // Before anything is read: what becomes visible from here on (an fsync may end
        // while the round runs) is past these ends, so the wait after the round is
        // over at once rather than waiting past it.
        let seen = visible_ends(store, &parts);
        if !parts.is_empty() {
            let turn = self.turn.fetch_add(1, Ordering::Relaxed) as usize % parts.len();
            parts.rotate_left(turn);
        }
        let now = store.clock().now_ms();
        // With no member asking, delayed messages are taken as they arrive, so they
        // count as delayed, not ready (the caps below count them so); a member's
        // delivery round takes them as it passes them.
        let idle = self.wants(&parts).is_empty();
        for part in &parts {
            let due = lock(&part.engine).next_wakeup().is_some_and(|at| at <= now);
            if due {
                part.with_engine(|e| e.tick()).await?;
            }
            if idle {
                part.with_engine(|e| e.take_delayed()).await?;
            }
            let capped = part.with_engine(|e| e.enforce_caps()).await;
            part.report_filtered(&self.metrics);
            capped?;
        }
        let again = self.deliver_all(&parts).await?;
        Ok(Round { again, seen })
    }

    /// Delivers to the members that want deliveries, part by part in `parts`' order,
    /// and hands each part's deliveries to their sinks before the next; under
    /// `delivering` (see there). Returns whether to go again at once (something was
    /// delivered, or a part is behind).
    async fn deliver_all(&self, parts: &[Arc<Part>]) -> Result<bool, Status> {
        let _delivering = self.delivering.lock().await;
        let mut again = false;
        for part in parts {
            let wants = self.wants(parts);
            if wants.is_empty() {
                break;
            }
            let topic = part.topic.clone();
            let delivered = part
                .with_engine(move |e| {
                    e.deliver_bounded(&wants, &|record| delivery_bytes_max(&topic, record))
                })
                .await;
            part.report_filtered(&self.metrics);
            let batches = match delivered {
                Ok(batches) => batches,
                // A pattern queue's topic deleted since the parts were synced: the
                // next sync drops its part; the other topics deliver on (a Receive
                // is not failed for it).
                Err(status) if self.part_gone(&status) => continue,
                Err(status) => return Err(status),
            };
            again |= !batches.is_empty() || lock(&part.engine).behind();
            for (member, unseen) in self.dispatch(part, batches) {
                self.release(&member, unseen).await;
                // A member gone from the runtime (not through `leave`, which waits for
                // the round) is gone from the engine too: its other leases are given up.
                if !lock(&self.members).contains_key(&member) {
                    lock(&part.engine).member_left(&member);
                }
            }
        }
        Ok(again)
    }

    /// A Receive of `member` stops waiting: what is ready now is delivered to it first
    /// (so a Receive that waits 0 ms still gets the messages that were ready), then
    /// nothing more goes to it until it asks again. Between delivery rounds, so a
    /// round's deliveries to it went to its call, never to nobody.
    async fn stop_waiting(&self, member: &str) -> Result<(), Status> {
        let waiting = matches!(
            lock(&self.members).get(member).map(|m| &m.sink),
            Some(Sink::Unary(Some(_)))
        );
        let delivered = match waiting {
            true => self.deliver_all(&self.parts()).await.map(drop),
            false => Ok(()),
        };
        let _delivering = self.delivering.lock().await;
        let now = Instant::now();
        if let Some(m) = lock(&self.members).get_mut(member) {
            m.credit = 0;
            m.sink = Sink::Unary(None);
            m.idle_since = Some(now);
        }
        self.forget_idle_receivers(now);
        drop(_delivering);
        self.wake();
        delivered
    }

    /// Forgets the Receive members idle for [`RECEIVE_MEMBER_IDLE`] that hold no
    /// deliveries (at most every [`RECEIVE_MEMBER_SWEEP`]). Under `delivering`, and
    /// with the member list locked while each leaves the engines, so no round chooses
    /// one and no Receive of the same name joins half-way. One holding deliveries
    /// stays: leaving would give them up.
    fn forget_idle_receivers(&self, now: Instant) {
        {
            let mut last = lock(&self.receivers_swept);
            if last.is_some_and(|at| now.duration_since(at) < RECEIVE_MEMBER_SWEEP) {
                return;
            }
            *last = Some(now);
        }
        let parts = self.parts();
        let mut members = lock(&self.members);
        let idle: Vec<String> = members
            .iter()
            .filter(|(_, m)| {
                matches!(m.sink, Sink::Unary(None))
                    && m.idle_since
                        .is_some_and(|at| now.duration_since(at) >= RECEIVE_MEMBER_IDLE)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in idle {
            if Self::unacked(&parts, &id) > 0 {
                continue;
            }
            members.remove(&id);
            for part in &parts {
                lock(&part.engine).member_left(&id);
            }
        }
    }

    /// Logs an engine failure; a deleted queue stops the runtime.
    async fn failed(&self, status: &Status) {
        if status.code() == tonic::Code::NotFound && self.gone() {
            self.stop(status.clone());
            return;
        }
        tracing::warn!(queue = %self.name, %status, "queue engine failed; retrying");
        tokio::time::sleep(ERROR_BACKOFF).await;
    }

    /// Whether `status`, from one part's engine, says that part's queue is gone
    /// while the runtime's is not: a pattern queue's topic deleted since the parts
    /// were synced. The next sync (asked for here) drops the part; the other topics
    /// go on, and no caller is failed for it (nor told the part's internal name).
    fn part_gone(&self, status: &Status) -> bool {
        let gone = status.code() == tonic::Code::NotFound && !self.gone();
        if gone {
            self.resync.store(true, Ordering::Release);
        }
        gone
    }

    /// Whether the queue is gone: for a queue on a pattern, a NOT_FOUND may be about
    /// one of its topics (deleted), which the next sync drops.
    fn gone(&self) -> bool {
        !self.pattern || self.stopped.load(Ordering::Acquire)
    }

    /// Sleeps until a member asks, the next timer, messages visible past `watch_data`
    /// (when given: a member wants some, or a cap must be enforced on them), the next
    /// topic sync (a pattern queue) or the broker stops.
    async fn wait(
        &self,
        store: &Store,
        shutdown: &Shutdown,
        parts: &[Arc<Part>],
        watch_data: Option<&[(Arc<Partition>, u64)]>,
    ) {
        let notified = self.wake.notified();
        let next = parts
            .iter()
            .filter_map(|p| lock(&p.engine).next_wakeup())
            .min();
        let sleep = async {
            match next {
                Some(at) => {
                    let now = store.clock().now_ms();
                    tokio::time::sleep(Duration::from_millis(at.saturating_sub(now).max(0) as u64))
                        .await
                }
                None => std::future::pending().await,
            }
        };
        let resync = async {
            if self.pattern {
                tokio::time::sleep(PATTERN_SYNC_INTERVAL).await
            } else {
                std::future::pending().await
            }
        };
        // Not watching is waiting on no partition: never over.
        let data = data_past(watch_data.unwrap_or_default());
        tokio::select! {
            _ = notified => {}
            _ = sleep => {}
            _ = resync => {}
            _ = data => {}
            _ = shutdown.wait() => {}
        }
    }
}

/// Bytes one delivery of `record` from `topic` takes at most in a response's
/// repeated deliveries field (tag, length and message; its partition, attempt,
/// deadline and receipt taken at their longest encodings): what a Receive's byte budget counts.
fn delivery_bytes_max(topic: &str, record: &tidelog_storage::Record) -> u64 {
    let delivery = convert::queue_delivery(
        topic,
        tidelog_storage::queue::Delivery {
            partition: u32::MAX,
            record: record.clone(),
            attempt: u32::MAX,
            deadline_ms: -1,
        },
        String::new(),
    );
    // The receipt is filled in when the delivery goes out: count the longest one
    // (an empty string field is not encoded, so this is its whole field).
    let receipt = 1
        + prost::encoding::encoded_len_varint(receipt::RECEIPT_BYTES_MAX as u64)
        + receipt::RECEIPT_BYTES_MAX;
    framed_bytes(prost::Message::encoded_len(&delivery) + receipt)
}

/// Bytes `delivery` takes in a response's repeated deliveries field.
fn delivery_bytes(delivery: &QueueDelivery) -> u64 {
    framed_bytes(prost::Message::encoded_len(delivery))
}

/// Bytes a delivery of `len` encoded bytes takes in a repeated field (tag, length).
fn framed_bytes(len: usize) -> u64 {
    (1 + prost::encoding::encoded_len_varint(len as u64) + len) as u64
}

/// The deliveries of a Consume response event (none for other events).
fn unseen_in(event: &QueueConsumeResponse) -> Vec<Unseen> {
    match &event.event {
        Some(queue_consume_response::Event::Deliveries(d)) => Unseen::all(&d.deliveries),
        _ => Vec::new(),
    }
}

/// Room a Deliveries event's framing takes in a Consume response (the event's tag and
/// length).
const DELIVERIES_EVENT_FRAMING_BYTES: u64 = 16;

/// `deliveries` in groups for Consume events, in order, each event's encoding at most
/// [`QUEUE_RESPONSE_BYTES_MAX`] (one delivery larger than that goes alone).
fn split_deliveries(deliveries: Vec<QueueDelivery>) -> Vec<Vec<QueueDelivery>> {
    let budget = QUEUE_RESPONSE_BYTES_MAX - DELIVERIES_EVENT_FRAMING_BYTES;
    let mut groups: Vec<Vec<QueueDelivery>> = Vec::new();
    let mut group: Vec<QueueDelivery> = Vec::new();
    let mut group_bytes = 0u64;
    for delivery in deliveries {
        let bytes = delivery_bytes(&delivery);
        if !group.is_empty() && group_bytes.saturating_add(bytes) > budget {
            groups.push(std::mem::take(&mut group));
            group_bytes = 0;
        }
        group_bytes = group_bytes.saturating_add(bytes);
        group.push(delivery);
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

/// What a round did.
struct Round {
    /// Go again at once: something was delivered, or a part is behind.
    again: bool,
    /// Each partition's visible end when the round began: the runtime waits for data
    /// past these.
    seen: Vec<(Arc<Partition>, u64)>,
}

/// Each partition of the topics of `parts`, with the end of what is visible in it
/// now.
fn visible_ends(store: &Store, parts: &[Arc<Part>]) -> Vec<(Arc<Partition>, u64)> {
    let mut ends = Vec::new();
    for part in parts {
        if let Ok(topic) = store.topic(&part.topic) {
            ends.extend(topic_ends(&topic));
        }
    }
    ends
}

/// Each partition of `topic` with the end of what is visible in it now. A partition
/// recovery refused to open is left out: no data comes to it until it is repaired
/// (with the broker stopped).
fn topic_ends(topic: &Topic) -> impl Iterator<Item = (Arc<Partition>, u64)> + '_ {
    topic
        .partitions()
        .iter()
        .filter_map(|partition| Some((partition.clone(), partition.end_offset().ok()?)))
}

/// Resolves once a partition of `ends` has a message visible at or past its end
/// there (at once if it has already).
fn data_past(ends: &[(Arc<Partition>, u64)]) -> WaitForAnyData {
    WaitForAnyData::new(
        ends.iter()
            .map(|(partition, end)| partition.wait_for_data(*end)),
    )
}

/// Whether a topic of `parts` caps its queues
/// ([`tidelog_storage::TopicConfig::has_queue_caps`]).
fn capped(store: &Store, parts: &[Arc<Part>]) -> bool {
    parts.iter().any(|part| {
        store
            .topic(&part.topic)
            .is_ok_and(|topic| topic.config().has_queue_caps())
    })
}

/// Every queue runtime of the broker.
#[derive(Debug)]
pub struct QueueManager {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    runtimes: Mutex<HashMap<String, Arc<Runtime>>>,
    /// This broker run's start (ms since the epoch), in hex in every member id it
    /// gives: leases outlive a restart, and a member of the next run must not take the
    /// id (and so the leases) of a member of this one.
    run_ms: u64,
    next_member: AtomicU64,
}

impl QueueManager {
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>, shutdown: Shutdown) -> Self {
        let run_ms = store.clock().now_ms().max(0) as u64;
        QueueManager {
            store,
            metrics,
            shutdown,
            runtimes: Mutex::new(HashMap::new()),
            run_ms,
            next_member: AtomicU64::new(1),
        }
    }

    /// The runtime of queue `name`, started on first use. NOT_FOUND for a queue that
    /// does not exist (or a name only a pattern queue's own queues have).
    pub async fn runtime(&self, name: &str) -> Result<Arc<Runtime>, Status> {
        if let Some(runtime) = lock(&self.runtimes).get(name) {
            return Ok(runtime.clone());
        }
        let pattern = self.store.queues().read(|q| q.pattern(name).is_some());
        let mut parts = Vec::new();
        if !pattern {
            let serving =
                admin::serving_queues(&*self.store, name).map_err(|e| convert::status(&e))?;
            for (topic, queue) in serving {
                parts.push(Arc::new(Part::open(&self.store, topic, queue).await?));
            }
        }
        let runtime = Arc::new(Runtime {
            name: name.to_string(),
            run_ms: self.run_ms,
            pattern,
            metrics: self.metrics.clone(),
            parts: Mutex::new(parts),
            members: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
            turn: AtomicU64::new(0),
            resync: AtomicBool::new(false),
            delivering: tokio::sync::Mutex::new(()),
            receivers_swept: Mutex::new(None),
        });
        if pattern {
            runtime.sync_parts(&self.store).await?;
        }
        // Leases restored from before this start are given up before the runtime is
        // handed out, not at its first round: no call sees them unacked.
        let now = self.store.clock().now_ms();
        for part in runtime.parts() {
            let due = lock(&part.engine).next_wakeup().is_some_and(|at| at <= now);
            if due {
                part.with_engine(|e| e.tick()).await?;
            }
        }
        let mut runtimes = lock(&self.runtimes);
        if let Some(runtime) = runtimes.get(name) {
            return Ok(runtime.clone());
        }
        runtimes.insert(name.to_string(), runtime.clone());
        tokio::spawn(
            runtime
                .clone()
                .drive(self.store.clone(), self.shutdown.clone()),
        );
        Ok(runtime)
    }

    /// Starts the runtime of every queue holding leases at the broker's start, before
    /// the broker serves: each lease is from before it and is given up as its runtime
    /// starts (delivered again after its backoff, `member-left` in the history), so no
    /// call (DescribeQueue, GetDeliveryStatus) sees it unacked and its backoff runs
    /// from the start, not from whenever a member of the queue first calls. A queue
    /// that fails to start is logged and started by its first call, as any other.
    pub async fn start_leased(&self) {
        for name in admin::queues_with_leases(&*self.store) {
            if let Err(status) = self.runtime(&name).await {
                tracing::warn!(
                    queue = %name,
                    error = %status.message(),
                    "could not start the queue to end the leases held before this start; \
                     they end when a member first calls"
                );
            }
        }
    }

    /// Topics were created or deleted: queues on a topic pattern look again now.
    pub fn topics_changed(&self) {
        for runtime in lock(&self.runtimes).values() {
            if runtime.pattern {
                runtime.resync.store(true, Ordering::Release);
                runtime.wake();
            }
        }
    }

    /// Stops queue `name`'s runtime (it was deleted): its members' streams end with
    /// NOT_FOUND, and its metric series are forgotten. Every deletion of a queue (by
    /// DeleteQueue or with its topic) comes here.
    pub fn queue_deleted(&self, name: &str) {
        if let Some(runtime) = lock(&self.runtimes).remove(name) {
            runtime.stop(convert::status(&Error::not_found(format!(
                "queue {name:?} (it was deleted)"
            ))));
        }
        self.metrics.forget_queue(name);
    }

    /// Stops the runtimes of queues that no longer exist (their topic was deleted).
    pub fn forget_missing(&self) {
        let names: Vec<String> = lock(&self.runtimes).keys().cloned().collect();
        for name in names {
            if self.store.queues().read(|q| !q.exists(&name)) {
                self.queue_deleted(&name);
            }
        }
    }

    /// Before a publish to topic `topic` of about `bytes()` bytes: when the topic rejects
    /// what would put a queue over its caps and one of its queues is there by the count
    /// (which counts a delayed message published a moment ago, or an expired one at a
    /// head, as ready until its runtime looks), each queue of the topic takes its
    /// delayed messages and passes its expired ones at the heads now
    /// ([`tidelog_storage::queue::QueueEngine::take_delayed`]), so that the publish is
    /// refused only for messages that are ready. Nothing to do (one topic lookup) on a
    /// topic without caps; a queue that fails this is left to its runtime.
    pub async fn make_room(self: &Arc<Self>, topic: &str, bytes: impl FnOnce() -> usize) {
        let Ok(topic) = self.store.topic(topic) else {
            return;
        };
        let config = topic.config();
        if !config.has_queue_caps()
            || config.queue_overflow != tidelog_storage::QueueOverflow::Reject
        {
            return;
        }
        let bytes = bytes() as u64;
        if !matches!(
            admin::over_caps(&*self.store, &topic, 1, bytes),
            Ok(Some(_))
        ) {
            return;
        }
        for name in admin::list_queues(&*self.store, Some(topic.name())) {
            let Ok(runtime) = self.runtime(&name).await else {
                continue;
            };
            for part in runtime.parts() {
                if part.topic == topic.name() {
                    let _ = part.with_engine(|e| e.take_delayed()).await;
                }
            }
        }
    }

    /// New messages went to `topic`: when the topic caps its queues, their runtimes
    /// (started if need be) look at once, consumers or not: to take delayed messages
    /// (so they count as delayed, not ready, against the caps) and, with
    /// dead-letter-oldest, to move the oldest past a cap.
    pub fn topic_published(self: &Arc<Self>, topic: &tidelog_storage::Topic) {
        if !topic.config().has_queue_caps() {
            return;
        }
        self.wake_queues_of(topic.name());
    }

    /// Retention deleted segments of `topic`: its queues' runtimes (started if need
    /// be) look at once, so each engine follows the new log start without waiting for
    /// a member, a publish or a lease's deadline: it drops the deliveries (and
    /// redeliveries) of messages retention deleted (`QueueEngine` follows retention),
    /// so their members' room under max_unacked_per_member comes back, and on a topic
    /// with priority levels it recounts what its faster levels took ahead past it, so
    /// DescribeQueue's ready count and the caps are exact again.
    pub fn topic_retained(self: &Arc<Self>, topic: &str) {
        self.wake_queues_of(topic);
    }

    /// Wakes the runtime of every queue reading `topic`, starting those not running.
    fn wake_queues_of(self: &Arc<Self>, topic: &str) {
        let names = admin::list_queues(&*self.store, Some(topic));
        for name in names {
            if let Some(runtime) = lock(&self.runtimes).get(&name) {
                runtime.wake();
                continue;
            }
            let manager = self.clone();
            tokio::spawn(async move {
                if let Ok(runtime) = manager.runtime(&name).await {
                    runtime.wake();
                }
            });
        }
    }

    /// An admin operation changed queue `name` behind its runtime, if it has one:
    /// PurgeQueue settled leases its engines counted for their members, AlterQueue
    /// may have raised `max_unacked_per_member`. Each engine counts its members'
    /// deliveries again from the durable state (`QueueEngine::recount_held`), so a
    /// purged member's room comes back at once, and the runtime delivers again now (a
    /// waiting Consume stream or Receive call gets what is ready). Call it after the
    /// operation is durable.
    pub async fn queue_changed(&self, name: &str) -> Result<(), Status> {
        let Some(runtime) = lock(&self.runtimes).get(name).cloned() else {
            return Ok(());
        };
        for part in runtime.parts() {
            part.with_engine(|engine| {
                engine.recount_held();
                Ok(())
            })
            .await?;
        }
        // A pattern queue's topics may have changed with it (a new dead-letter topic
        // is no longer taken): its parts follow before the next round.
        if runtime.pattern {
            runtime.resync.store(true, Ordering::Release);
        }
        runtime.wake();
        Ok(())
    }

    /// (member id, client id, unacked) of queue `name`'s members.
    pub fn members(&self, name: &str) -> Vec<(String, String, u64)> {
        lock(&self.runtimes)
            .get(name)
            .map(|r| r.member_list())
            .unwrap_or_default()
    }

    /// (topic, damage) of each partition whose deliveries queue `name` stopped at a
    /// damaged batch, as its engines found them (none before a delivery round reached
    /// one).
    pub fn damaged(&self, name: &str) -> Vec<(String, tidelog_storage::queue::Damage)> {
        let Some(runtime) = lock(&self.runtimes).get(name).cloned() else {
            return Vec::new();
        };
        runtime
            .parts()
            .iter()
            .flat_map(|part| {
                let damaged = lock(&part.engine).damaged();
                damaged.into_iter().map(|d| (part.topic.clone(), d))
            })
            .collect()
    }

    fn member_id(&self) -> String {
        format!(
            "member-{:x}-{}",
            self.run_ms,
            self.next_member.fetch_add(1, Ordering::Relaxed)
        )
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

impl crate::metrics::QueueMetricsSource for QueueManager {
    fn queue_metrics(&self) -> Vec<crate::metrics::QueueMetrics> {
        let now = self.store.clock().now_ms();
        let names = admin::list_queues(&*self.store, None);
        let counters: HashMap<String, tidelog_storage::queue::engine::EngineCounters> =
            lock(&self.runtimes)
                .iter()
                .map(|(name, r)| {
                    let mut sum = tidelog_storage::queue::engine::EngineCounters::default();
                    for part in r.parts() {
                        sum.add(&lock(&part.engine).counters);
                    }
                    (name.clone(), sum)
                })
                .collect();
        names
            .into_iter()
            .filter_map(|name| {
                let status =
                    tidelog_storage::queue::admin::queue_status(&*self.store, &name, now).ok()?;
                let c = counters.get(&name).copied().unwrap_or_default();
                let damaged_partitions = self.damaged(&name).len() as u64;
                Some(crate::metrics::QueueMetrics {
                    queue: name,
                    ready: status.ready,
                    delayed: status.delayed,
                    unacked: status.unacked,
                    waiting: status.waiting,
                    oldest_unacked_age_ms: status.oldest_unacked_age_ms,
                    delivered: c.delivered,
                    redelivered: c.redelivered,
                    acked: c.acked,
                    nacked: c.nacked,
                    timed_out: c.timed_out,
                    member_left: c.member_left,
                    dead_lettered_max_deliveries: c.dead_lettered_max_deliveries,
                    dead_lettered_term: c.dead_lettered_term,
                    dead_lettered_overflow: c.dead_lettered_overflow,
                    released: c.released,
                    lost_to_retention: c.lost_to_retention,
                    overflow_refused: c.overflow_refused,
                    history_failed_events: c.history_failed_events,
                    damaged_partitions,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Waker};

    use tidelog_proto::v1::ConsumedMessage;

    use bytes::Bytes;
    use tidelog_storage::{FsyncPolicy, NewRecord, StoreOptions, TopicConfig};

    use super::*;

    /// The budget a delivery is counted against before it goes out bounds what it
    /// takes once its receipt (the longest a holder may have) is filled in.
    #[test]
    fn a_deliverys_counted_size_bounds_its_size_with_the_longest_receipt() {
        for value in [0usize, 1, 127, 128, 16_383, 16_384, 1 << 20] {
            let record = tidelog_storage::Record {
                offset: u64::MAX,
                timestamp_ms: i64::MAX,
                expires_at_ms: Some(i64::MAX),
                key: Some(Bytes::from_static(b"key")),
                value: Bytes::from(vec![b'v'; value]),
                headers: Vec::new(),
                id: Some(Bytes::from(vec![b'i'; 128])),
                deliver_at_ms: Some(i64::MAX),
                priority: 9,
            };
            let counted = delivery_bytes_max("topic", &record);
            let holder = format!("receive:{}", "m".repeat(255));
            let receipt = receipt::Receipt::encode(u64::MAX, u64::MAX, &holder);
            assert_eq!(receipt.len(), receipt::RECEIPT_BYTES_MAX);
            let delivery = convert::queue_delivery(
                "topic",
                tidelog_storage::queue::Delivery {
                    partition: u32::MAX,
                    record: record.clone(),
                    attempt: u32::MAX,
                    deadline_ms: -1,
                },
                receipt,
            );
            let sent = delivery_bytes(&delivery);
            assert!(sent <= counted, "{value}-byte value: {sent} > {counted}");
            assert!(
                counted - sent <= 2,
                "{value}-byte value: {counted} vs {sent}"
            );
        }
    }

    /// The runtime's wait for data is for data past what its round saw. On an fsync =
    /// always topic a publish's messages become visible when the flusher's fsync ends,
    /// which may be while the round runs: a wait for data past the ends seen before the
    /// round is then over at once, where a wait past the ends when it starts (as
    /// before: CI saw a queue's overflow never dead-lettered) waits past them.
    #[test]
    fn data_that_became_visible_during_a_round_ends_the_wait_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).unwrap());
        let topic = store
            .create_topic(
                "late",
                2,
                TopicConfig {
                    fsync: FsyncPolicy::Always,
                    ..TopicConfig::default()
                },
            )
            .unwrap();
        let seen: Vec<_> = topic_ends(&topic).collect();
        let mut cx = Context::from_waker(Waker::noop());
        let mut waiting = Box::pin(data_past(&seen));
        assert!(
            waiting.as_mut().poll(&mut cx).is_pending(),
            "nothing new yet"
        );
        // During the round: written, then visible once fsynced.
        topic
            .partition(1)
            .unwrap()
            .append_durable(&[NewRecord {
                value: Bytes::from_static(b"m"),
                ..NewRecord::default()
            }])
            .unwrap();
        // After the round: waited for past what the round saw, it is there.
        assert!(Box::pin(data_past(&seen)).as_mut().poll(&mut cx).is_ready());
        assert!(waiting.as_mut().poll(&mut cx).is_ready());
        // Past the ends when the wait starts, it would wait on.
        let now: Vec<_> = topic_ends(&topic).collect();
        assert!(
            Box::pin(data_past(&now))
                .as_mut()
                .poll(&mut cx)
                .is_pending()
        );
    }

    /// Receive members that use a new name each call do not pile up: one idle for
    /// RECEIVE_MEMBER_IDLE with nothing held is forgotten, one holding a delivery or
    /// idle for less stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_receive_members_holding_nothing_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).unwrap());
        let topic = store
            .create_topic("jobs", 1, TopicConfig::default())
            .unwrap();
        topic
            .partition(0)
            .unwrap()
            .append_durable(&[NewRecord {
                value: Bytes::from_static(b"m"),
                ..NewRecord::default()
            }])
            .unwrap();
        admin::create_queue(
            &*store,
            "work",
            "jobs",
            tidelog_storage::queue::StartAt::Earliest,
            tidelog_storage::queue::QueueConfig::defaults_for("jobs"),
        )
        .unwrap();
        let manager = QueueManager::new(store.clone(), Arc::new(Metrics::new()), Shutdown::new());
        let runtime = manager.runtime("work").await.unwrap();
        // "receive:holder" gets the message (from the runtime's own round) and keeps
        // it; the others get nothing.
        let (tx, rx) = oneshot::channel();
        runtime.join("receive:holder", "holder", 1, Sink::Unary(Some(tx)));
        runtime.wake();
        let part = runtime.parts()[0].clone();
        let delivered = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("the runtime's round delivers to the waiting Receive")
            .unwrap();
        assert_eq!(delivered.len(), 1);
        for name in ["holder", "old", "new"] {
            let member = format!("receive:{name}");
            if name != "holder" {
                let (tx, _rx) = oneshot::channel();
                runtime.join(&member, name, 1, Sink::Unary(Some(tx)));
            }
            runtime.stop_waiting(&member).await.unwrap();
        }
        let names = |runtime: &Runtime| {
            let mut names: Vec<String> = runtime
                .member_list()
                .into_iter()
                .map(|(id, ..)| id)
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            names(&runtime),
            ["receive:holder", "receive:new", "receive:old"]
        );
        // "new" called again just now; "old" and "holder" a minute ago.
        let later = Instant::now() + RECEIVE_MEMBER_IDLE;
        lock(&runtime.members)
            .get_mut("receive:new")
            .unwrap()
            .idle_since = Some(later);
        *lock(&runtime.receivers_swept) = None;
        runtime.forget_idle_receivers(later);
        assert_eq!(names(&runtime), ["receive:holder", "receive:new"]);
        assert_eq!(Runtime::unacked(&runtime.parts(), "receive:holder"), 1);
        assert_eq!(lock(&part.engine).unacked("receive:old"), 0);
        // Once it settles, the holder goes too.
        let held = store.queues().read(|q| {
            q.get("work").unwrap().partitions[&0]
                .pending
                .iter()
                .map(|(o, p)| (o, p.attempts))
                .next()
                .unwrap()
        });
        let ack = SettleRequest {
            partition: 0,
            offset: held.0,
            attempt: held.1,
            action: tidelog_storage::queue::SettleAction::Ack { through: None },
        };
        let outcome = part
            .with_engine(move |e| e.settle(Some("receive:holder"), &[ack]))
            .await
            .unwrap();
        assert_eq!(outcome, [SettleOutcome::Ok { settled: 1 }]);
        *lock(&runtime.receivers_swept) = None;
        runtime.forget_idle_receivers(later);
        assert_eq!(names(&runtime), ["receive:new"]);
    }

    /// A round that chose a member whose sink went before its deliveries were handed
    /// over (a Receive cancelled, a stream's response dropped, mid-round): dispatch
    /// returns them, and the release leaves each message ready with its attempt
    /// taken back, so with max_deliveries 1 nothing is dead-lettered for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deliveries_for_a_sink_gone_mid_round_are_given_back_unseen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).unwrap());
        let topic = store
            .create_topic("jobs", 1, TopicConfig::default())
            .unwrap();
        for value in [&b"a"[..], b"b"] {
            topic
                .partition(0)
                .unwrap()
                .append_durable(&[NewRecord {
                    value: Bytes::copy_from_slice(value),
                    ..NewRecord::default()
                }])
                .unwrap();
        }
        let config = tidelog_storage::queue::QueueConfig {
            max_deliveries: 1,
            ..tidelog_storage::queue::QueueConfig::defaults_for("jobs")
        };
        admin::create_queue(
            &*store,
            "work",
            "jobs",
            tidelog_storage::queue::StartAt::Earliest,
            config,
        )
        .unwrap();
        let manager = QueueManager::new(store.clone(), Arc::new(Metrics::new()), Shutdown::new());
        let runtime = manager.runtime("work").await.unwrap();
        // Both sinks' receivers are gone: the driver's own rounds pass them over.
        let (unary, gone) = oneshot::channel();
        drop(gone);
        runtime.join("receive:a", "a", 1, Sink::Unary(Some(unary)));
        let (stream, gone) = mpsc::unbounded_channel();
        drop(gone);
        runtime.join("s", "s", 1, Sink::Stream(stream));
        // As if a round had chosen them just before: delivered, then dispatched.
        let part = runtime.parts()[0].clone();
        let batches = part
            .with_engine(|e| e.deliver(&[("receive:a".into(), 1), ("s".into(), 1)]))
            .await
            .unwrap();
        assert_eq!(batches.len(), 2);
        let undelivered = runtime.dispatch(&part, batches);
        let mut members: Vec<&str> = undelivered.iter().map(|(m, _)| m.as_str()).collect();
        members.sort();
        assert_eq!(members, vec!["receive:a", "s"]);
        for (member, unseen) in undelivered {
            assert_eq!(unseen.len(), 1);
            runtime.release(&member, unseen).await;
        }
        let now = store.clock().now_ms();
        let status = admin::queue_status(&*store, "work", now).unwrap();
        assert_eq!((status.ready, status.unacked), (2, 0), "{status:?}");
        let attempts: Vec<u32> = store.queues().read(|q| {
            q.get("work").unwrap().partitions[&0]
                .pending
                .iter()
                .map(|(_, p)| p.attempts)
                .collect()
        });
        assert_eq!(attempts, vec![0, 0], "no attempt used");
        assert_eq!(lock(&part.engine).counters.released, 2);
    }

    /// A pattern queue's topic deleted before the parts are synced again: a delivery
    /// round (a Receive's last one too) passes over its part and delivers the other
    /// topics' messages, instead of failing with NOT_FOUND naming an internal queue.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_passes_over_the_part_of_a_deleted_pattern_topic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).unwrap());
        for name in ["m.a", "m.b"] {
            store.create_topic(name, 1, TopicConfig::default()).unwrap();
        }
        admin::create_pattern_queue(
            &*store,
            "pq",
            r"m\..*",
            tidelog_storage::queue::StartAt::Earliest,
            tidelog_storage::queue::QueueConfig::defaults_for("pq"),
        )
        .unwrap();
        let manager = QueueManager::new(store.clone(), Arc::new(Metrics::new()), Shutdown::new());
        let runtime = manager.runtime("pq").await.unwrap();
        let parts = runtime.parts();
        assert_eq!(parts.len(), 2, "both topics are served");
        for name in ["m.a", "m.b"] {
            store
                .topic(name)
                .unwrap()
                .partition(0)
                .unwrap()
                .append_durable(&[NewRecord {
                    value: Bytes::from(name.to_string()),
                    ..NewRecord::default()
                }])
                .unwrap();
        }
        // m.a goes, with a message no member took, and its queue with it, while the
        // runtime's parts still hold it (as within a sync: the queues are synced
        // before the parts are).
        store.delete_topic("m.a").unwrap();
        admin::sync_pattern_queue(&*store, "pq").unwrap();
        // A stream with room for two, so it still wants one after m.b's message,
        // whichever round (this one or the driver's) delivers that: this round looks
        // at both parts.
        let (sink, mut got) = mpsc::unbounded_channel();
        runtime.join("s", "s", 2, Sink::Stream(sink));
        // The deleted topic's part (the first) has no config: the limits come from
        // another, so the member still wants deliveries.
        assert_eq!(runtime.wants(&parts).len(), 1, "the stream wants more");
        runtime
            .deliver_all(&parts)
            .await
            .expect("a round over a deleted topic's part");
        let deliveries = tokio::time::timeout(Duration::from_secs(10), got.recv())
            .await
            .expect("delivered in time")
            .expect("sent")
            .expect("deliveries");
        let Some(queue_consume_response::Event::Deliveries(deliveries)) = deliveries.event else {
            panic!("deliveries expected: {deliveries:?}");
        };
        let deliveries = deliveries.deliveries;
        assert_eq!(deliveries.len(), 1);
        assert_eq!(
            deliveries[0].message.as_ref().map(|m| m.value.as_ref()),
            Some(&b"m.b"[..])
        );
    }

    fn delivery(offset: u64, bytes: usize) -> QueueDelivery {
        QueueDelivery {
            message: Some(ConsumedMessage {
                offset,
                value: Bytes::from(vec![b'v'; bytes]),
                topic: "jobs".into(),
                ..ConsumedMessage::default()
            }),
            attempt: 1,
            deadline_ms: 1_700_000_000_000,
            receipt: String::new(),
        }
    }

    /// A Consume stream's deliveries go out in events of at most
    /// QUEUE_RESPONSE_BYTES_MAX encoded (one larger delivery alone), in order, none
    /// lost: small, 1 MiB - 4 KiB (the size that broke a client's 4 MiB limit as one
    /// 104 MB event), just under and over the bound, and 16 MiB.
    #[test]
    fn deliveries_are_split_into_events_under_the_bound() {
        let mib = 1 << 20;
        let bound = QUEUE_RESPONSE_BYTES_MAX as usize;
        let sizes: Vec<usize> = std::iter::repeat_n(mib - 4096, 100)
            .chain(std::iter::repeat_n(10, 5000))
            .chain([bound - 100, bound, 16 * mib, 0, bound / 2, bound / 2 + 1])
            .collect();
        let deliveries: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &bytes)| delivery(i as u64, bytes))
            .collect();
        let groups = split_deliveries(deliveries);
        let mut next = 0u64;
        for group in &groups {
            let event = QueueConsumeResponse {
                event: Some(queue_consume_response::Event::Deliveries(
                    queue_consume_response::Deliveries {
                        deliveries: group.clone(),
                    },
                )),
            };
            let bytes = prost::Message::encoded_len(&event);
            assert!(
                bytes <= bound || group.len() == 1,
                "{bytes} bytes in {} deliveries",
                group.len()
            );
            for d in group {
                assert_eq!(d.message.as_ref().unwrap().offset, next);
                next += 1;
            }
        }
        assert_eq!(next as usize, sizes.len());
        // 3 of 1 MiB - 4 KiB per event.
        assert_eq!(groups[0].len(), 3);
        assert!(split_deliveries(Vec::new()).is_empty());
    }
}
