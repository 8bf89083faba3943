//! The `tidelog.v1.Queues` RPCs.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidelog_proto::v1::queues_server::Queues;
use tidelog_proto::v1::{
    AlterQueueRequest, AlterQueueResponse, CreateQueueRequest, CreateQueueResponse,
    DeleteQueueRequest, DeleteQueueResponse, DescribeQueueRequest, DescribeQueueResponse,
    ListDeliveriesRequest, ListDeliveriesResponse, ListQueuesRequest, ListQueuesResponse,
    PurgeQueueRequest, PurgeQueueResponse, QueueConsumeRequest, QueueConsumeResponse,
    QueueDelivery, QueueDescription, ReceiveRequest, ReceiveResponse, RedriveQueueRequest,
    RedriveQueueResponse, SettleRequest, SettleResponse, queue_consume_request,
    queue_consume_response,
};
use tidelog_storage::Store;
use tidelog_storage::queue::inspect::{self, DeliveriesQuery};
use tidelog_storage::queue::{SettleOutcome, admin};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{QueueManager, Runtime, Sink, Unseen, lock};
use crate::AppState;
use crate::auth::quota::QuotaKind;
use crate::auth::{Caller, Target, rpcs};
use crate::convert;
use tidelog_storage::access::ResourceKind;

/// Most deliveries one Receive returns.
pub const RECEIVE_MESSAGES_MAX: u32 = 1000;
/// Longest wait of one Receive.
pub const RECEIVE_WAIT_MAX: Duration = Duration::from_secs(30);
/// Most settlements in one request.
pub const SETTLEMENTS_MAX: usize = 10_000;
/// Settle messages of one Consume stream read but not yet answered. Past this the
/// server stops reading the stream (until the oldest is answered) and HTTP/2 flow
/// control pushes back on the client.
/// Settles in flight are combined into one fsync per round (see `combine`); 64 keeps
/// a round full without holding much memory, as for a publish stream.
pub const CONSUME_SETTLES_IN_FLIGHT_MAX: usize = 64;

/// A Consume stream's Settle being settled: its outcomes once durable.
type SettleFuture = Pin<Box<dyn Future<Output = Result<Vec<SettleOutcome>, Status>> + Send>>;

/// The Settled event answering Settle `request_id`.
fn settled(request_id: u64, outcomes: Vec<SettleOutcome>) -> QueueConsumeResponse {
    QueueConsumeResponse {
        event: Some(queue_consume_response::Event::Settled(
            queue_consume_response::Settled {
                request_id,
                outcomes: outcomes
                    .into_iter()
                    .map(convert::settlement_outcome)
                    .collect(),
            },
        )),
    }
}

/// The Queues service.
#[derive(Debug, Clone)]
pub struct QueuesService {
    state: Arc<AppState>,
}

impl QueuesService {
    pub fn new(state: Arc<AppState>) -> Self {
        QueuesService { state }
    }

    fn manager(&self) -> &Arc<QueueManager> {
        &self.state.queues
    }

    /// Runs a blocking storage call on the blocking pool; its own error as it came.
    async fn on_blocking_pool<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> tidelog_storage::Result<R> + Send + 'static,
    ) -> Result<tidelog_storage::Result<R>, Status> {
        let store = self.state.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("the call's task failed: {e}")))
    }

    /// Runs a blocking storage call on the blocking pool.
    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> tidelog_storage::Result<R> + Send + 'static,
    ) -> Result<R, Status> {
        self.on_blocking_pool(f)
            .await?
            .map_err(|e| convert::status(&e))
    }

    /// [`Self::blocking`] for a call whose errors may name a topic the request did not
    /// (the topic of a queue): worded for `caller` ([`convert::status_seen_by`]).
    async fn blocking_for<R: Send + 'static>(
        &self,
        caller: Option<&Caller>,
        f: impl FnOnce(&Store) -> tidelog_storage::Result<R> + Send + 'static,
    ) -> Result<R, Status> {
        self.on_blocking_pool(f)
            .await?
            .map_err(|e| convert::status_seen_by(&e, |t| self.state.auth.may_see_topic(caller, t)))
    }

    /// The queue's description as `caller` may see it (topics it may not describe left
    /// out).
    async fn describe(
        &self,
        name: &str,
        caller: Option<&Caller>,
    ) -> Result<QueueDescription, Status> {
        let owned = name.to_string();
        let (auth, held_by) = (self.state.auth.clone(), caller.cloned());
        let status = self
            .blocking(move |store| {
                let pattern = store.queues().read(|q| q.pattern(&owned).is_some());
                // A pattern queue takes the topics that match now before it is shown.
                if pattern {
                    admin::sync_pattern_queue(store, &owned)?;
                }
                // A pattern queue's counts add up the topics it shows, no others; a
                // queue on one topic's counts are the queue's, which the caller may
                // describe, shown with its topic or not.
                let counted = |t: &str| !pattern || auth.may_see_topic(held_by.as_ref(), t);
                admin::queue_status_of(store, &owned, store.clock().now_ms(), &counted)
            })
            .await?;
        let manager = self.manager();
        let mut queue =
            convert::queue_description(&status, manager.members(name), &manager.damaged(name));
        let auth = &self.state.auth;
        convert::leave_out_hidden_topics(&mut queue, |t| auth.may_see_topic(caller, t));
        Ok(queue)
    }

    /// Times an RPC into the metrics.
    fn finished<T>(&self, method: &'static str, started: Instant, result: &Result<T, Status>) {
        self.state
            .metrics
            .rpc_finished(method, started, result.as_ref().err().map(Status::code));
    }
}

/// The storage queue whose delivery history answers for `topic` in queue `name`: the
/// queue itself, or a pattern queue's queue of that topic (which must be named).
fn history_queue(store: &Store, name: &str, topic: &str) -> tidelog_storage::Result<String> {
    let pattern = store
        .queues()
        .read(|q| q.pattern(name).map(|p| p.pattern.clone()));
    match (pattern, topic.is_empty()) {
        (Some(pattern), true) => Err(tidelog_storage::Error::invalid(format!(
            "queue {name:?} is on topic pattern {pattern:?}: name the topic whose deliveries to list (`topic`)"
        ))),
        (None, true) => admin::queue_for_topic(
            store,
            name,
            &store
                .queues()
                .read(|q| q.get(name).map(|q| q.topic.clone()))
                .unwrap_or_default(),
        ),
        (_, false) => admin::queue_for_topic(store, name, topic),
    }
}

fn check_settlements(count: usize) -> Result<(), Status> {
    if count > SETTLEMENTS_MAX {
        return Err(Status::invalid_argument(format!(
            "{count} settlements in one request; send at most {SETTLEMENTS_MAX} (use through_offset to ack a range)"
        )));
    }
    Ok(())
}

/// How a Consume stream (or a Consume that has not opened yet) ends at shutdown.
fn shutting_down() -> Status {
    crate::shutdown::unavailable(
        "open Consume again once it is back; deliveries not settled are delivered again",
    )
}

type ConsumeStream = Pin<Box<dyn Stream<Item = Result<QueueConsumeResponse, Status>> + Send>>;

/// How long a Consume stream whose inbound side failed (its connection dropped, or
/// the client cancelled) waits for its response stream to be dropped before the
/// member leaves, so deliveries still queued on it are given back unseen (not given
/// up as `member left`, which counts the attempt).
const UNSENT_WAIT: Duration = Duration::from_secs(2);

/// Deliveries a Consume stream's response held, not yet sent, when it was dropped.
#[derive(Debug, Default)]
struct Unsent {
    deliveries: Vec<Unseen>,
    /// The member has left: a later drop gives its deliveries back itself.
    left: bool,
}

/// A Consume stream's responses, as tonic sends them. Dropped before they are all
/// sent (the connection dropped), it takes what is still queued, so those deliveries
/// are given back unseen (see [`Runtime::release`]): by the member's `leave`, or by
/// itself if the member has left already.
struct ConsumeOut {
    rx: mpsc::UnboundedReceiver<Result<QueueConsumeResponse, Status>>,
    unsent: Arc<std::sync::Mutex<Unsent>>,
    runtime: Arc<Runtime>,
    member: String,
}

impl Stream for ConsumeOut {
    type Item = Result<QueueConsumeResponse, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for ConsumeOut {
    fn drop(&mut self) {
        let mut unsent = lock(&self.unsent);
        // Closed first, so nothing is sent after what is drained; under the lock, so
        // the member's task (which sees the close) reads what is drained.
        self.rx.close();
        let mut deliveries = Vec::new();
        while let Ok(item) = self.rx.try_recv() {
            if let Ok(event) = item {
                deliveries.extend(super::unseen_in(&event));
            }
        }
        if deliveries.is_empty() {
            return;
        }
        if !unsent.left {
            unsent.deliveries.extend(deliveries);
            return;
        }
        drop(unsent);
        give_back(&self.runtime, &self.member, deliveries);
    }
}

/// Gives back `deliveries` of `member` on a task of its own (from a `Drop`).
fn give_back(runtime: &Arc<Runtime>, member: &str, deliveries: Vec<Unseen>) {
    if deliveries.is_empty() {
        return;
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let runtime = runtime.clone();
    let member = member.to_string();
    handle.spawn(async move { runtime.release(&member, deliveries).await });
}

/// The deliveries of one Receive call until its response is returned: dropped before
/// that (the call was cancelled), it gives them back unseen, and those still in the
/// channel too (closed first, so none arrives after).
struct ReceiveHeld {
    rx: oneshot::Receiver<Vec<QueueDelivery>>,
    /// Taken from `rx`.
    deliveries: Vec<QueueDelivery>,
    runtime: Arc<Runtime>,
    member: String,
    /// Returned to the caller: nothing to give back.
    returned: bool,
}

impl ReceiveHeld {
    /// Waits for deliveries (keeping them, should the call be cancelled).
    async fn wait(&mut self) {
        if let Ok(deliveries) = (&mut self.rx).await {
            self.deliveries = deliveries;
        }
    }

    /// What is in the channel now (after the call stopped waiting).
    fn take_ready(&mut self) {
        if self.deliveries.is_empty()
            && let Ok(deliveries) = self.rx.try_recv()
        {
            self.deliveries = deliveries;
        }
    }
}

impl Drop for ReceiveHeld {
    fn drop(&mut self) {
        if self.returned {
            return;
        }
        self.rx.close();
        if let Ok(deliveries) = self.rx.try_recv() {
            self.deliveries.extend(deliveries);
        }
        give_back(&self.runtime, &self.member, Unseen::all(&self.deliveries));
    }
}

#[tonic::async_trait]
impl Queues for QueuesService {
    async fn create_queue(
        &self,
        request: Request<CreateQueueRequest>,
    ) -> Result<Response<CreateQueueResponse>, Status> {
        let started = Instant::now();
        // A pattern queue takes topics that do not exist yet: it needs the permission
        // on every topic.
        let topic_target = match request.get_ref().topic_pattern.is_empty() {
            true => request.get_ref().topic.clone(),
            false => "*".to_string(),
        };
        let denied = self.state.auth.authorize(
            &request,
            &[
                Target::queue(&request.get_ref().name),
                Target::topic(&topic_target),
            ],
        );
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        let result = async {
            denied?;
            let start = convert::start_at(request.start)?;
            let pattern = match (request.topic.is_empty(), request.topic_pattern.is_empty()) {
                (false, true) => None,
                (true, false) => Some(request.topic_pattern.clone()),
                _ => {
                    return Err(Status::invalid_argument(
                        "set exactly one of topic and topic_pattern: the topic the queue consumes, or a pattern of topics",
                    ));
                }
            };
            // A pattern queue's dead letters default to "<name>.dlq" (one topic for all).
            let defaults_for = match &pattern {
                None => &request.topic,
                Some(_) => &request.name,
            };
            let mut config = convert::queue_config_from_proto(defaults_for, request.config);
            // Checked here for the error that names the position; stored as text.
            if convert::filter(&request.filter)?.is_some() {
                config.filter = Some(request.filter.clone());
            }
            // The broker will write there: the caller must be allowed to (named or the
            // default), checked before anything is stored.
            let dead_letters = config.dead_letter_topic.clone();
            tidelog_storage::queue::validate_dead_letter_topic(&dead_letters)
                .map_err(|e| convert::status(&e))?;
            let exists = self.state.store.topic(&dead_letters).is_ok();
            self.state
                .auth
                .check_dead_letter_topic(caller.as_ref(), &dead_letters, exists)?;
            let (name, topic) = (request.name.clone(), request.topic.clone());
            self.blocking(move |store| match pattern {
                None => admin::create_queue(store, &name, &topic, start, config).map(drop),
                Some(pattern) => {
                    admin::create_pattern_queue(store, &name, &pattern, start, config).map(drop)
                }
            })
            .await?;
            Ok(CreateQueueResponse {
                queue: Some(self.describe(&request.name, caller.as_ref()).await?),
            })
        }
        .await;
        self.finished("CreateQueue", started, &result);
        result.map(Response::new)
    }

    async fn alter_queue(
        &self,
        request: Request<AlterQueueRequest>,
    ) -> Result<Response<AlterQueueResponse>, Status> {
        let started = Instant::now();
        // A dead-letter topic the request names is checked with the queue, before it
        // is looked up, as any topic a request names: a refusal that compared it with
        // the queue's own topic would tell a caller who may not describe that topic
        // what it is.
        let named = request.get_ref();
        let dead_letter_topic = named
            .config
            .as_ref()
            .and_then(|c| c.dead_letter_topic.as_deref())
            .filter(|t| !t.is_empty());
        let denied = match dead_letter_topic {
            None => self
                .state
                .auth
                .authorize(&request, &[Target::queue(&named.name)]),
            Some(topic) => self.state.auth.authorize(
                &request,
                &[Target::queue(&named.name), Target::topic(topic)],
            ),
        };
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        let result = async {
            denied?;
            let name = request.name.clone();
            let update = request.config.unwrap_or_default();
            let (auth, alterer) = (self.state.auth.clone(), caller.clone());
            self.blocking(move |store| {
                admin::alter_queue_checked(
                    store,
                    &name,
                    |config| convert::apply_queue_config(config, update),
                    // A new dead-letter topic: the broker will write there, so the
                    // caller must be allowed to.
                    |before, after| {
                        let topic = &after.dead_letter_topic;
                        if *topic == before.dead_letter_topic {
                            return Ok(());
                        }
                        let exists = store.topic(topic).is_ok();
                        auth.check_dead_letter_topic(alterer.as_ref(), topic, exists)
                    },
                )
            })
            .await??;
            // A raised max_unacked_per_member makes room at once.
            self.manager().queue_changed(&request.name).await?;
            Ok(AlterQueueResponse {
                queue: Some(self.describe(&request.name, caller.as_ref()).await?),
            })
        }
        .await;
        self.finished("AlterQueue", started, &result);
        result.map(Response::new)
    }

    async fn delete_queue(
        &self,
        request: Request<DeleteQueueRequest>,
    ) -> Result<Response<DeleteQueueResponse>, Status> {
        let started = Instant::now();
        let denied = self
            .state
            .auth
            .authorize(&request, &[Target::queue(&request.get_ref().name)]);
        let name = request.into_inner().name;
        let owned = name.clone();
        let result = match denied {
            Ok(()) => {
                self.blocking(move |store| admin::delete_queue(store, &owned))
                    .await
            }
            Err(status) => Err(status),
        }
        .map(|()| {
            self.manager().queue_deleted(&name);
            DeleteQueueResponse {}
        });
        self.finished("DeleteQueue", started, &result);
        result.map(Response::new)
    }

    async fn list_queues(
        &self,
        request: Request<ListQueuesRequest>,
    ) -> Result<Response<ListQueuesResponse>, Status> {
        let started = Instant::now();
        let auth = self.state.auth.clone();
        let caller = request.extensions().get::<Caller>().cloned();
        // Listing the queues on a topic names it: checked, as a describe of it would be.
        let denied = match request.get_ref().topic.is_empty() {
            true => Ok(()),
            false => auth.authorize(&request, &[Target::topic(&request.get_ref().topic)]),
        };
        let topic = request.into_inner().topic;
        let result = async {
            denied?;
            let names: Vec<String> = admin::list_queues(
                &*self.state.store,
                (!topic.is_empty()).then_some(topic.as_str()),
            );
            let mut queues = Vec::with_capacity(names.len());
            for name in names {
                if !auth.may_caller(caller.as_ref(), Target::queue(&name)) {
                    continue;
                }
                match self.describe(&name, caller.as_ref()).await {
                    Ok(queue) => queues.push(queue),
                    // Deleted since the listing.
                    Err(status) if status.code() == tonic::Code::NotFound => {}
                    Err(status) => return Err(status),
                }
            }
            Ok(ListQueuesResponse { queues })
        }
        .await;
        self.finished("ListQueues", started, &result);
        result.map(Response::new)
    }

    async fn describe_queue(
        &self,
        request: Request<DescribeQueueRequest>,
    ) -> Result<Response<DescribeQueueResponse>, Status> {
        let started = Instant::now();
        let denied = self
            .state
            .auth
            .authorize(&request, &[Target::queue(&request.get_ref().name)]);
        let caller = request.extensions().get::<Caller>().cloned();
        let name = request.into_inner().name;
        let result = match denied {
            Ok(()) => self.describe(&name, caller.as_ref()).await,
            Err(status) => Err(status),
        }
        .map(|queue| DescribeQueueResponse { queue: Some(queue) });
        self.finished("DescribeQueue", started, &result);
        result.map(Response::new)
    }

    async fn purge_queue(
        &self,
        request: Request<PurgeQueueRequest>,
    ) -> Result<Response<PurgeQueueResponse>, Status> {
        let started = Instant::now();
        let denied = self
            .state
            .auth
            .authorize(&request, &[Target::queue(&request.get_ref().name)]);
        let name = request.into_inner().name;
        let result = async {
            denied?;
            let owned = name.clone();
            let purged = self
                .blocking(move |store| admin::purge_queue(store, &owned))
                .await?;
            // The purge settled the members' deliveries: their room under
            // max_unacked_per_member comes back now.
            self.manager().queue_changed(&name).await?;
            Ok(PurgeQueueResponse { purged })
        }
        .await;
        self.finished("PurgeQueue", started, &result);
        result.map(Response::new)
    }

    async fn redrive_queue(
        &self,
        request: Request<RedriveQueueRequest>,
    ) -> Result<Response<RedriveQueueResponse>, Status> {
        let started = Instant::now();
        let denied = self
            .state
            .auth
            .authorize(&request, &[Target::queue(&request.get_ref().name)]);
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        let auth = self.state.auth.clone();
        let result = match denied {
            Ok(()) => self
                .blocking(move |store| {
                    // It appends letters to the queue's topic(s): publish on every one
                    // it may write to, named only as the queue's (the caller may not
                    // describe them).
                    admin::redrive_queue_checked(
                        store,
                        &request.name,
                        request.max_messages,
                        |targets| {
                            let what = match targets.pattern {
                                false => format!("the topic of queue {}", request.name),
                                true => format!("a topic of queue {}", request.name),
                            };
                            targets.topics.iter().try_for_each(|topic| {
                                auth.check_found(caller.as_ref(), Target::topic(topic), &what)
                            })
                        },
                    )
                })
                .await
                .and_then(|checked| checked),
            Err(status) => Err(status),
        }
        .map(|(moved, remaining)| RedriveQueueResponse { moved, remaining });
        self.finished("RedriveQueue", started, &result);
        result.map(Response::new)
    }

    async fn list_deliveries(
        &self,
        request: Request<ListDeliveriesRequest>,
    ) -> Result<Response<ListDeliveriesResponse>, Status> {
        let started = Instant::now();
        let auth = &self.state.auth;
        // Describe on the topic too (its events carry message ids); a header filter
        // tests the messages' headers: consume on it (`LIST_DELIVERIES_BY_HEADER`).
        let named = request.get_ref();
        let denied = match named.topic.is_empty() {
            true => auth.authorize(&request, &[Target::queue(&named.queue)]),
            false => auth.authorize(
                &request,
                &[Target::queue(&named.queue), Target::topic(&named.topic)],
            ),
        };
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        let result = async {
            denied?;
            let topic = match request.topic.is_empty() {
                // The queue's own topic (none for a pattern queue or an unknown queue,
                // which `history_queue` refuses): found, not named, so a refusal does
                // not name it.
                true => {
                    let own = self
                        .state
                        .store
                        .queues()
                        .read(|q| q.get(&request.queue).map(|q| q.topic.clone()))
                        .unwrap_or_default();
                    if !own.is_empty() {
                        auth.check_found(
                            caller.as_ref(),
                            Target::topic(&own),
                            &format!("the topic of queue {:?}", request.queue),
                        )?;
                    }
                    own
                }
                false => request.topic.clone(),
            };
            if request.header.is_some() && !topic.is_empty() {
                auth.check_as(
                    caller.as_ref(),
                    &rpcs::LIST_DELIVERIES_BY_HEADER,
                    &[Target::queue(&request.queue), Target::topic(&topic)],
                )?;
            }
            let query = DeliveriesQuery {
                filter: convert::delivery_filter(request.filter)?,
                since_ms: request.since_ms,
                until_ms: request.until_ms,
                header: request.header.map(|h| (h.key, h.value)),
                limit: request.limit,
                cursor: (!request.cursor.is_empty()).then_some(request.cursor),
            };
            let (name, topic) = (request.queue, request.topic);
            let page = self
                .blocking_for(caller.as_ref(), move |store| {
                    let queue = history_queue(store, &name, &topic)?;
                    inspect::list_deliveries(store, &queue, &query, store.clock().now_ms())
                })
                .await?;
            Ok(ListDeliveriesResponse {
                deliveries: page
                    .deliveries
                    .into_iter()
                    .map(convert::delivery_event_to_proto)
                    .collect(),
                next_cursor: page.next_cursor.unwrap_or_default(),
            })
        }
        .await;
        self.state
            .metrics
            .delivery_lookup("list", result.as_ref().err().map(Status::code));
        self.finished("ListDeliveries", started, &result);
        result.map(Response::new)
    }

    type ConsumeStream = ConsumeStream;

    async fn consume(
        &self,
        request: Request<Streaming<QueueConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let started = Instant::now();
        let caller = request.extensions().get::<Caller>().cloned();
        let mut inbound = request.into_inner();
        let mut queue_name = String::new();
        let result: Result<ConsumeStream, Status> = async {
            // A stream that never sends its Open does not hold up a shutdown either.
            let first = tokio::select! {
                first = inbound.message() => first?,
                () = self.state.shutdown.wait() => return Err(shutting_down()),
            };
            let open = match first {
                Some(QueueConsumeRequest {
                    request: Some(queue_consume_request::Request::Open(open)),
                }) => open,
                _ => {
                    return Err(Status::invalid_argument(
                        "the first message of Queues.Consume must be an Open naming the queue",
                    ));
                }
            };
            self.state
                .auth
                .check(caller.as_ref(), &[Target::queue(&open.queue)])?;
            queue_name.clone_from(&open.queue);
            let runtime = self.manager().runtime(&open.queue).await?;
            let config = runtime.config(&self.state.store).await?;
            let member = self.manager().member_id();
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = tx.send(Ok(QueueConsumeResponse {
                event: Some(queue_consume_response::Event::Opened(
                    queue_consume_response::Opened {
                        member_id: member.clone(),
                        config: Some(convert::queue_config_to_proto(&config)),
                    },
                )),
            }));
            runtime.join(
                &member,
                &open.client_id,
                u64::from(open.credit),
                Sink::Stream(tx.clone()),
            );
            let guard = self.state.metrics.open_stream("queue");
            let unsent = Arc::new(std::sync::Mutex::new(Unsent::default()));
            let out = ConsumeOut {
                rx,
                unsent: unsent.clone(),
                runtime: runtime.clone(),
                member: member.clone(),
            };
            // One task reads the stream and answers it: a Settle goes to the queue's
            // combiner at once, without waiting for the answers of the ones before it
            // (so a client's pipelined Settles are settled together), and the answers
            // go out in the order the Settles came, each once durable.
            let shutdown = self.state.shutdown.clone();
            tokio::spawn(async move {
                let _guard = guard;
                let mut in_flight: VecDeque<(u64, SettleFuture)> = VecDeque::new();
                // Reading stops at the client's half-close or a message that ends the
                // stream; `end` is sent after the answers before it.
                let mut reading = true;
                // The inbound side failed (not a half-close): the connection dropped
                // or the client cancelled, and the response goes with it.
                let mut broken = false;
                let mut end: Option<Status> = None;
                loop {
                    if !reading && in_flight.is_empty() {
                        if let Some(status) = end.take() {
                            let _ = tx.send(Err(status));
                        }
                        break;
                    }
                    let room = reading && in_flight.len() < CONSUME_SETTLES_IN_FLIGHT_MAX;
                    let next_answer = async {
                        match in_flight.front_mut() {
                            Some((_, outcomes)) => outcomes.as_mut().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        outcomes = next_answer => {
                            let Some((request_id, _)) = in_flight.pop_front() else {
                                break;
                            };
                            let answer = outcomes.map(|outcomes| settled(request_id, outcomes));
                            let failed = answer.is_err();
                            let _ = tx.send(answer);
                            if failed {
                                break;
                            }
                        }
                        message = inbound.message(), if room =>
                        {
                            match message {
                                Ok(Some(QueueConsumeRequest {
                                    request: Some(queue_consume_request::Request::Credit(credit)),
                                })) => runtime.add_credit(&member, u64::from(credit.messages)),
                                Ok(Some(QueueConsumeRequest {
                                    request: Some(queue_consume_request::Request::Settle(settle)),
                                })) => match check_settlements(settle.settlements.len()) {
                                    Ok(()) => {
                                        let requests = settle
                                            .settlements
                                            .into_iter()
                                            .map(convert::settle_request)
                                            .collect();
                                        let outcomes =
                                            runtime.submit_settle(Some(member.clone()), requests);
                                        in_flight.push_back((settle.request_id, Box::pin(outcomes)));
                                    }
                                    Err(status) => {
                                        end = Some(status);
                                        reading = false;
                                    }
                                },
                                Ok(Some(_)) => {
                                    end = Some(Status::invalid_argument(
                                        "after the Open, send Credit or Settle messages",
                                    ));
                                    reading = false;
                                }
                                Ok(None) => reading = false,
                                Err(_) => {
                                    reading = false;
                                    broken = true;
                                }
                            }
                        }
                        _ = tx.closed() => break,
                        // The broker is shutting down: the stream ends (after the
                        // answers to the Settles read) and the member leaves, as at a
                        // half-close, so the gRPC server's graceful shutdown is not
                        // held up by it.
                        () = shutdown.wait(), if reading => {
                            end = Some(shutting_down());
                            reading = false;
                        }
                    }
                }
                // Every settlement read is settled (answered or not) before the member
                // leaves, so leaving never turns one of its acks into a redelivery.
                for (_, outcomes) in in_flight {
                    let _ = outcomes.await;
                }
                // The response stream is being dropped with the connection: let it
                // take what it still holds (see `ConsumeOut`) before leaving, so those
                // deliveries are given back unseen rather than given up.
                if broken {
                    let _ = tokio::time::timeout(UNSENT_WAIT, tx.closed()).await;
                }
                let unsent = {
                    let mut unsent = lock(&unsent);
                    unsent.left = true;
                    std::mem::take(&mut unsent.deliveries)
                };
                runtime.leave(&member, unsent).await;
            });
            Ok(Box::pin(out) as ConsumeStream)
        }
        .await;
        // Checked again every 250 ms while open: a revoked token or a changed rule
        // ends the stream.
        let result = result.map(|stream| {
            self.state
                .auth
                .guard(caller, vec![(ResourceKind::Queue, queue_name)], stream)
        });
        self.finished("Consume", started, &result);
        result.map(Response::new)
    }

    async fn receive(
        &self,
        request: Request<ReceiveRequest>,
    ) -> Result<Response<ReceiveResponse>, Status> {
        let started = Instant::now();
        let denied = self
            .state
            .auth
            .authorize(&request, &[Target::queue(&request.get_ref().queue)]);
        let caller = request.extensions().get::<Caller>().cloned();
        let wait = crate::deadline::long_poll(
            request.metadata(),
            request.get_ref().max_wait_ms,
            RECEIVE_WAIT_MAX,
        );
        let request = request.into_inner();
        let result = async {
            denied?;
            if request.member.is_empty() || request.member.len() > 255 {
                return Err(Status::invalid_argument(
                    "member must be 1 to 255 bytes: any name that identifies the caller",
                ));
            }
            // Out of range is refused, as every bound of the API is (INVALID_ARGUMENT),
            // not quietly capped.
            if request.max_messages > RECEIVE_MESSAGES_MAX {
                return Err(Status::invalid_argument(format!(
                    "max_messages {} is over the maximum of {RECEIVE_MESSAGES_MAX}: receive again for more",
                    request.max_messages
                )));
            }
            if Duration::from_millis(request.max_wait_ms) > RECEIVE_WAIT_MAX {
                return Err(Status::invalid_argument(format!(
                    "max_wait_ms {} is over the maximum of {}: receive again to wait longer",
                    request.max_wait_ms,
                    RECEIVE_WAIT_MAX.as_millis()
                )));
            }
            let max = request.max_messages.max(1);
            let runtime = self.manager().runtime(&request.queue).await?;
            let member = format!("receive:{}", request.member);
            let (tx, rx) = oneshot::channel();
            runtime.join(
                &member,
                &request.member,
                u64::from(max),
                Sink::Unary(Some(tx)),
            );
            // From here until the response is returned, a cancelled call gives back
            // what it was handed (see `ReceiveHeld`), and a round that finds it gone
            // gives back what it chose for it (`Runtime::dispatch`).
            let mut held = ReceiveHeld {
                rx,
                deliveries: Vec::new(),
                runtime: runtime.clone(),
                member: member.clone(),
                returned: false,
            };
            // The wait ends early when the broker shuts down: the call returns what it
            // has, as a Fetch long poll does, so it does not hold up the shutdown.
            let shutdown = self.state.shutdown.clone();
            tokio::select! {
                _ = tokio::time::timeout(wait, held.wait()) => {}
                () = shutdown.wait() => {}
            }
            // No longer waiting: what is ready now is delivered to this call, then
            // nothing more goes to it until it asks again. A delivery round that
            // chose this call has handed its deliveries over by the time this returns
            // (they are in `rx`). On a task of its own, so a cancelled call does not
            // stop a round half-way (its deliveries leased and handed to no one).
            let stopping = {
                let runtime = runtime.clone();
                let member = member.clone();
                tokio::spawn(async move { runtime.stop_waiting(&member).await })
            };
            let stopped = stopping.await.unwrap_or_else(|e| {
                Err(Status::internal(format!(
                    "the Receive's delivery task failed: {e}"
                )))
            });
            held.take_ready();
            // Access is checked again before the answer: a token revoked or expired, or
            // a rule changed, while the call waited refuses it, and what it was handed
            // is given back (`ReceiveHeld`), as an open stream ends within a second.
            self.state
                .auth
                .check(caller.as_ref(), &[Target::queue(&request.queue)])?;
            if held.deliveries.is_empty() {
                stopped?;
            }
            let response = ReceiveResponse {
                deliveries: held.deliveries.clone(),
            };
            self.state
                .auth
                .throttle(caller.as_ref(), QuotaKind::ConsumeBytes, || {
                    prost::Message::encoded_len(&response)
                })
                .await;
            held.returned = true;
            Ok(response)
        }
        .await;
        self.finished("Receive", started, &result);
        result.map(Response::new)
    }

    async fn settle(
        &self,
        request: Request<SettleRequest>,
    ) -> Result<Response<SettleResponse>, Status> {
        let started = Instant::now();
        let denied = self
            .state
            .auth
            .authorize(&request, &[Target::queue(&request.get_ref().queue)]);
        let request = request.into_inner();
        let result = async {
            denied?;
            check_settlements(request.settlements.len())?;
            let runtime = self.manager().runtime(&request.queue).await?;
            let requests = request
                .settlements
                .into_iter()
                .map(convert::settle_request)
                .collect();
            let outcomes = runtime.submit_settle(None, requests).await?;
            Ok(SettleResponse {
                outcomes: outcomes
                    .into_iter()
                    .map(convert::settlement_outcome)
                    .collect(),
            })
        }
        .await;
        self.finished("Settle", started, &result);
        result.map(Response::new)
    }
}
