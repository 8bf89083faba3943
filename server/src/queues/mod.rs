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
//! deliveries left).

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use tidelog_proto::v1::{QueueConsumeResponse, QueueDelivery, queue_consume_response};
use tidelog_storage::filter::Filtered;
use tidelog_storage::queue::{QueueEngine, SettleOutcome, SettleRequest};
use tidelog_storage::{Error, Store};
use tokio::sync::{Notify, mpsc, oneshot};
use tonic::Status;

use crate::convert;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

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

#[derive(Debug)]
struct Member {
    client_id: String,
    /// Deliveries it may still be sent.
    credit: u64,
    sink: Sink,
}

/// One queue in use.
#[derive(Debug)]
pub struct Runtime {
    name: String,
    metrics: Arc<Metrics>,
    engine: Arc<Mutex<QueueEngine>>,
    members: Mutex<HashMap<String, Member>>,
    wake: Notify,
    stopped: AtomicBool,
}

impl Runtime {
    fn wake(&self) {
        self.wake.notify_one();
    }

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
            history.wait()?;
            result
        })
        .await
        .map_err(|e| Status::internal(format!("the queue engine task failed: {e}")))?
        .map_err(|e| convert::status(&e))
    }

    /// A member joins with `credit` deliveries allowed.
    fn join(&self, member: &str, client_id: &str, credit: u64, sink: Sink) {
        lock(&self.engine).member_joined(member);
        lock(&self.members).insert(
            member.to_string(),
            Member {
                client_id: client_id.to_string(),
                credit,
                sink,
            },
        );
        self.wake();
    }

    /// A stream member leaves: what it holds is delivered again to others.
    fn leave(&self, member: &str) {
        lock(&self.members).remove(member);
        lock(&self.engine).member_left(member);
        self.wake();
    }

    fn add_credit(&self, member: &str, credit: u64) {
        if let Some(m) = lock(&self.members).get_mut(member) {
            m.credit = m.credit.saturating_add(credit);
        }
        self.wake();
    }

    /// Settles for `member` (None: whoever holds the deliveries).
    async fn settle(
        &self,
        member: Option<String>,
        requests: Vec<SettleRequest>,
    ) -> Result<Vec<SettleOutcome>, Status> {
        let (outcomes, latencies) = self
            .with_engine(move |engine| {
                let outcomes = engine.settle(member.as_deref(), &requests)?;
                Ok((outcomes, engine.take_ack_latencies()))
            })
            .await?;
        self.metrics.queue_acked(&self.name, &latencies);
        self.wake();
        Ok(outcomes)
    }

    /// (member id, client id, unacked) of every member.
    fn member_list(&self) -> Vec<(String, String, u64)> {
        let engine = lock(&self.engine);
        let mut members: Vec<_> = lock(&self.members)
            .iter()
            .map(|(id, m)| (id.clone(), m.client_id.clone(), engine.unacked(id)))
            .collect();
        members.sort();
        members
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
    /// limit.
    fn wants(&self) -> Vec<(String, u32)> {
        let (max_unacked, unacked): (u64, HashMap<String, u64>) = {
            let engine = lock(&self.engine);
            let max = engine
                .config()
                .map_or(0, |c| u64::from(c.max_unacked_per_member));
            let members = lock(&self.members);
            let unacked = members
                .keys()
                .map(|id| (id.clone(), engine.unacked(id)))
                .collect();
            (max, unacked)
        };
        lock(&self.members)
            .iter()
            .filter(|(_, m)| match &m.sink {
                Sink::Stream(_) => true,
                Sink::Unary(waiting) => waiting.is_some(),
            })
            .filter_map(|(id, m)| {
                let room = max_unacked.saturating_sub(unacked.get(id).copied().unwrap_or(0));
                let want = m.credit.min(room).min(u64::from(u32::MAX)) as u32;
                (want > 0).then(|| (id.clone(), want))
            })
            .collect()
    }

    /// Hands deliveries to their members.
    fn dispatch(&self, batches: Vec<(String, Vec<tidelog_storage::queue::Delivery>)>) {
        let mut members = lock(&self.members);
        for (id, deliveries) in batches {
            let count = deliveries.len() as u64;
            let deliveries: Vec<QueueDelivery> = deliveries
                .into_iter()
                .map(convert::queue_delivery)
                .collect();
            let Some(member) = members.get_mut(&id) else {
                // Gone between the choice and now: the engine gives its leases up.
                drop(members);
                lock(&self.engine).member_left(&id);
                members = lock(&self.members);
                continue;
            };
            member.credit = member.credit.saturating_sub(count);
            match &mut member.sink {
                Sink::Stream(tx) => {
                    let event = QueueConsumeResponse {
                        event: Some(queue_consume_response::Event::Deliveries(
                            queue_consume_response::Deliveries { deliveries },
                        )),
                    };
                    let _ = tx.send(Ok(event));
                }
                Sink::Unary(waiting) => {
                    member.credit = 0;
                    if let Some(tx) = waiting.take() {
                        let _ = tx.send(deliveries);
                    }
                }
            }
        }
    }

    /// Adds what the queue's filter skipped since `reported` (the engine's counters
    /// then) to the `queue` kind of the filtered-messages metric.
    fn report_filtered(&self, reported: &mut Filtered) {
        let counters = lock(&self.engine).counters;
        let now = Filtered {
            skipped: counters.filtered,
            not_json: counters.filtered_not_json,
        };
        self.metrics.filtered(
            "queue",
            Filtered {
                skipped: now.skipped.saturating_sub(reported.skipped),
                not_json: now.not_json.saturating_sub(reported.not_json),
            },
        );
        *reported = now;
    }

    /// Delivers, runs timers and sleeps, until the queue is stopped or the broker
    /// shuts down.
    async fn drive(self: Arc<Self>, store: Arc<Store>, shutdown: Shutdown) {
        let mut filtered_reported = Filtered::default();
        while !self.stopped.load(Ordering::Acquire) && !shutdown.is_triggered() {
            let now = store.clock().now_ms();
            let due = lock(&self.engine).next_wakeup().is_some_and(|at| at <= now);
            if due && let Err(status) = self.with_engine(|e| e.tick()).await {
                self.failed(&status).await;
                continue;
            }
            let capped = self.with_engine(|e| e.enforce_caps()).await;
            self.report_filtered(&mut filtered_reported);
            if let Err(status) = capped {
                self.failed(&status).await;
                continue;
            }
            let wants = self.wants();
            if !wants.is_empty() {
                let delivered = self.with_engine(move |e| e.deliver(&wants)).await;
                self.report_filtered(&mut filtered_reported);
                match delivered {
                    Ok(batches) => {
                        let delivered = !batches.is_empty();
                        self.dispatch(batches);
                        if delivered || lock(&self.engine).behind() {
                            continue;
                        }
                    }
                    Err(status) => {
                        self.failed(&status).await;
                        continue;
                    }
                }
            }
            self.wait(&store, &shutdown, !self.wants().is_empty()).await;
        }
    }

    /// Logs an engine failure; a deleted queue stops the runtime.
    async fn failed(&self, status: &Status) {
        if status.code() == tonic::Code::NotFound {
            self.stop(status.clone());
            return;
        }
        tracing::warn!(queue = %self.name, %status, "queue engine failed; retrying");
        tokio::time::sleep(ERROR_BACKOFF).await;
    }

    /// Sleeps until a member asks, the next timer, new messages (when a member wants
    /// some) or the broker stops.
    async fn wait(&self, store: &Store, shutdown: &Shutdown, data_wanted: bool) {
        let notified = self.wake.notified();
        let next = lock(&self.engine).next_wakeup();
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
        let mut waits: Vec<Pin<Box<dyn Future<Output = ()> + Send>>> = Vec::new();
        if data_wanted
            && let Some(topic) = lock(&self.engine)
                .config()
                .ok()
                .and_then(|_| {
                    store
                        .queues()
                        .read(|q| q.get(&self.name).map(|q| q.topic.clone()))
                })
                .and_then(|name| store.topic(&name).ok())
        {
            for partition in topic.partitions() {
                waits.push(Box::pin(partition.wait_for_data(partition.end_offset())));
            }
        }
        let data = poll_fn(|cx| {
            for wait in &mut waits {
                if wait.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        });
        tokio::select! {
            _ = notified => {}
            _ = sleep => {}
            _ = data, if data_wanted => {}
            _ = shutdown.wait() => {}
        }
    }
}

/// Every queue runtime of the broker.
#[derive(Debug)]
pub struct QueueManager {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    runtimes: Mutex<HashMap<String, Arc<Runtime>>>,
    next_member: AtomicU64,
}

impl QueueManager {
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>, shutdown: Shutdown) -> Self {
        QueueManager {
            store,
            metrics,
            shutdown,
            runtimes: Mutex::new(HashMap::new()),
            next_member: AtomicU64::new(1),
        }
    }

    /// The runtime of queue `name`, started on first use.
    pub async fn runtime(&self, name: &str) -> Result<Arc<Runtime>, Status> {
        if let Some(runtime) = lock(&self.runtimes).get(name) {
            return Ok(runtime.clone());
        }
        let store = self.store.clone();
        let owned = name.to_string();
        let engine = tokio::task::spawn_blocking(move || {
            QueueEngine::open(store, &owned).map(|mut engine| {
                // Runtime::with_engine waits for the history after letting go of the
                // engine.
                engine.defer_history(true);
                engine
            })
        })
        .await
        .map_err(|e| Status::internal(format!("opening the queue engine failed: {e}")))?
        .map_err(|e| convert::status(&e))?;
        let mut runtimes = lock(&self.runtimes);
        if let Some(runtime) = runtimes.get(name) {
            return Ok(runtime.clone());
        }
        let runtime = Arc::new(Runtime {
            name: name.to_string(),
            metrics: self.metrics.clone(),
            engine: Arc::new(Mutex::new(engine)),
            members: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
        });
        runtimes.insert(name.to_string(), runtime.clone());
        tokio::spawn(
            runtime
                .clone()
                .drive(self.store.clone(), self.shutdown.clone()),
        );
        Ok(runtime)
    }

    /// Stops queue `name`'s runtime (it was deleted): its members' streams end with
    /// NOT_FOUND.
    pub fn queue_deleted(&self, name: &str) {
        if let Some(runtime) = lock(&self.runtimes).remove(name) {
            runtime.stop(convert::status(&Error::not_found(format!(
                "queue {name:?} (it was deleted)"
            ))));
        }
    }

    /// Stops the runtimes of queues that no longer exist (their topic was deleted).
    pub fn forget_missing(&self) {
        let names: Vec<String> = lock(&self.runtimes).keys().cloned().collect();
        for name in names {
            if self.store.queues().read(|q| q.get(&name).is_none()) {
                self.queue_deleted(&name);
            }
        }
    }

    /// New messages went to `topic`: when its queues dead-letter their oldest past the
    /// topic's caps, their runtimes (started if need be) look at once, consumers or not.
    pub fn topic_published(self: &Arc<Self>, topic: &tidelog_storage::Topic) {
        let config = topic.config();
        if config.queue_overflow != tidelog_storage::QueueOverflow::DeadLetterOldest
            || (config.queue_max_ready_messages.is_none() && config.queue_max_ready_bytes.is_none())
        {
            return;
        }
        let names: Vec<String> = self.store.queues().read(|q| {
            q.iter()
                .filter(|q| q.topic == topic.name())
                .map(|q| q.name.clone())
                .collect()
        });
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

    /// (member id, client id, unacked) of queue `name`'s members.
    pub fn members(&self, name: &str) -> Vec<(String, String, u64)> {
        lock(&self.runtimes)
            .get(name)
            .map(|r| r.member_list())
            .unwrap_or_default()
    }

    fn member_id(&self) -> String {
        format!(
            "member-{}",
            self.next_member.fetch_add(1, Ordering::Relaxed)
        )
    }

    pub fn engine_metrics(
        &self,
    ) -> Vec<(
        String,
        tidelog_storage::queue::engine::EngineCounters,
        Vec<u64>,
    )> {
        let runtimes: Vec<Arc<Runtime>> = lock(&self.runtimes).values().cloned().collect();
        runtimes
            .iter()
            .map(|r| {
                let mut engine = lock(&r.engine);
                (r.name.clone(), engine.counters, engine.take_ack_latencies())
            })
            .collect()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

impl crate::metrics::QueueMetricsSource for QueueManager {
    fn queue_metrics(&self) -> Vec<crate::metrics::QueueMetrics> {
        let now = self.store.clock().now_ms();
        let names: Vec<String> = self
            .store
            .queues()
            .read(|q| q.iter().map(|q| q.name.clone()).collect());
        let counters: HashMap<String, tidelog_storage::queue::engine::EngineCounters> =
            lock(&self.runtimes)
                .iter()
                .map(|(name, r)| (name.clone(), lock(&r.engine).counters))
                .collect();
        names
            .into_iter()
            .filter_map(|name| {
                let status =
                    tidelog_storage::queue::admin::queue_status(&*self.store, &name, now).ok()?;
                let c = counters.get(&name).copied().unwrap_or_default();
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
                    dead_lettered_max_deliveries: c.dead_lettered_max_deliveries,
                    dead_lettered_term: c.dead_lettered_term,
                    dead_lettered_overflow: c.dead_lettered_overflow,
                })
            })
            .collect()
    }
}
