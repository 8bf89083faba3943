//! The `tidelog.v1.Messages` service: `GetMessage`, a message of a topic by its id;
//! `GetDeliveryStatus` and `GetDeliveryHistory`, what a queue or group did with a
//! message named by id or position.
//!
//! The lookups may map, validate and (when missing or damaged) rebuild a segment's id
//! index, and read history files, so the storage calls run on the blocking pool, never
//! inline in async code.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tidelog_proto::v1::messages_server::Messages;
use tidelog_proto::v1::{
    GetDeliveryHistoryRequest, GetDeliveryHistoryResponse, GetDeliveryStatusRequest,
    GetDeliveryStatusResponse, GetMessageRequest, GetMessageResponse, get_delivery_status_request,
    get_delivery_status_response,
};
use tidelog_storage::queue::QueueConfig;
use tidelog_storage::queue::admin;
use tidelog_storage::queue::inspect::{self, MessageAt};
use tidelog_storage::{Store, Topic};
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::auth::{Caller, Target};
use crate::convert;

/// The Messages service.
#[derive(Debug, Clone)]
pub struct MessagesService {
    state: Arc<AppState>,
}

impl MessagesService {
    pub fn new(state: Arc<AppState>) -> Self {
        MessagesService { state }
    }

    async fn get_message(&self, request: GetMessageRequest) -> Result<GetMessageResponse, Status> {
        let GetMessageRequest {
            topic: name,
            id,
            include_value,
        } = request;
        let topic = convert::or_status(self.state.store.topic(&name))?;
        let lookup_id = id.clone();
        let found = tokio::task::spawn_blocking(move || topic.find_by_id(&lookup_id))
            .await
            .map_err(|e| Status::internal(format!("the lookup task failed: {e}")))?;
        let found = convert::or_status(found)?;
        self.state.metrics.message_lookup(&name, found.is_some());
        match found {
            Some(found) => Ok(convert::get_message_response(found, include_value)),
            None => Err(convert::message_not_found(&name, &id)),
        }
    }
}

/// Finds the message `message` names in `topic`: (partition, offset, what is there:
/// perhaps `Deleted`, by retention; an offset at or past the end is NOT_FOUND).
fn locate(topic: &Topic, message: &convert::MessageRef) -> Result<(u32, u64, MessageAt), Status> {
    match message {
        convert::MessageRef::Id(id) => {
            match topic.find_by_id(id).map_err(|e| convert::status(&e))? {
                Some(found) => Ok((
                    found.partition,
                    found.record.offset,
                    MessageAt::Stored(found.record),
                )),
                None => Err(convert::message_not_found(topic.name(), id)),
            }
        }
        convert::MessageRef::Position { partition, offset } => {
            match inspect::message_at(topic, *partition, *offset)
                .map_err(|e| convert::status(&e))?
            {
                MessageAt::Missing {
                    log_start,
                    end_offset,
                } => Err(convert::position_not_found(
                    topic.name(),
                    *partition,
                    *offset,
                    log_start,
                    end_offset,
                )),
                at => Ok((*partition, *offset, at)),
            }
        }
    }
}

/// The storage queue holding queue `queue`'s state for `topic` (a pattern queue's
/// queue of that topic) and its config. A queue on another topic is refused without
/// naming that topic unless `may_describe` it ([`convert::status_seen_by`]).
fn queue_on(
    store: &Store,
    queue: &str,
    topic: &str,
    may_describe: impl Fn(&str) -> bool,
) -> Result<(String, QueueConfig), Status> {
    let known = store.queues().read(|q| {
        q.pattern(queue).is_some() || (q.get(queue).is_some() && admin::public_name(queue) == queue)
    });
    if !known {
        return Err(convert::status(&tidelog_storage::Error::not_found(
            format!("queue {queue:?} (Queues.ListQueues lists the queues)"),
        )));
    }
    let held = admin::queue_for_topic(store, queue, topic)
        .map_err(|e| convert::status_seen_by(&e, may_describe))?;
    let config = store
        .queues()
        .read(|q| q.get(&held).map(|q| q.config.clone()))
        .ok_or_else(|| {
            convert::status(&tidelog_storage::Error::not_found(format!(
                "topic {topic:?} in queue {queue:?}"
            )))
        })?;
    Ok((held, config))
}

fn id_of(at: &MessageAt) -> Bytes {
    match at {
        MessageAt::Stored(record) => record.id.clone().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

fn timestamp_of(at: &MessageAt) -> i64 {
    match at {
        MessageAt::Stored(record) => record.timestamp_ms,
        // Unknown: look through the whole retained history.
        _ => i64::MIN,
    }
}

impl MessagesService {
    async fn delivery_status(
        &self,
        request: GetDeliveryStatusRequest,
        caller: Option<Caller>,
    ) -> Result<GetDeliveryStatusResponse, Status> {
        let message = convert::status_message_ref(request.message)?;
        let consumer = request.consumer.ok_or_else(|| {
            Status::invalid_argument(
                "name whose view to report: exactly one of `queue` and `group`",
            )
        })?;
        let store = self.state.store.clone();
        let topic = convert::or_status(store.topic(&request.topic))?;
        let name = request.topic;
        let auth = self.state.auth.clone();
        tokio::task::spawn_blocking(move || {
            let may_describe = |t: &str| auth.may_see_topic(caller.as_ref(), t);
            let state_queue = match &consumer {
                get_delivery_status_request::Consumer::Queue(queue) => {
                    Some(queue_on(&store, queue, &name, may_describe)?.0)
                }
                get_delivery_status_request::Consumer::Group(_) => None,
            };
            let (partition, offset, at) = locate(&topic, &message)?;
            let status = match consumer {
                get_delivery_status_request::Consumer::Queue(queue) => {
                    let now = store.clock().now_ms();
                    let held = state_queue.as_deref().unwrap_or(&queue);
                    let state = inspect::queue_state(&*store, held, partition, offset, &at, now)
                        .map_err(|e| convert::status(&e))?;
                    get_delivery_status_response::Status::Queue(convert::queue_status_to_proto(
                        &queue, state,
                    ))
                }
                get_delivery_status_request::Consumer::Group(_)
                    if let MessageAt::Deleted { log_start } = at =>
                {
                    return Err(convert::position_deleted(
                        &name, partition, offset, log_start,
                    ));
                }
                get_delivery_status_request::Consumer::Group(group) => {
                    let state = inspect::group_state(&*store, &group, &name, partition, offset);
                    get_delivery_status_response::Status::Group(convert::group_status_to_proto(
                        &group, state,
                    ))
                }
            };
            Ok(GetDeliveryStatusResponse {
                partition,
                offset,
                id: id_of(&at),
                status: Some(status),
            })
        })
        .await
        .map_err(|e| Status::internal(format!("the lookup task failed: {e}")))?
    }

    async fn delivery_history(
        &self,
        request: GetDeliveryHistoryRequest,
        caller: Option<Caller>,
    ) -> Result<GetDeliveryHistoryResponse, Status> {
        let message = convert::history_message_ref(request.message)?;
        if request.queue.is_empty() {
            return Err(Status::invalid_argument(
                "name the queue whose deliveries to report (`queue`); a consumer group keeps no delivery history",
            ));
        }
        let store = self.state.store.clone();
        let topic = convert::or_status(store.topic(&request.topic))?;
        let (name, queue) = (request.topic, request.queue);
        let auth = self.state.auth.clone();
        tokio::task::spawn_blocking(move || {
            let may_describe = |t: &str| auth.may_see_topic(caller.as_ref(), t);
            let (held, config) = queue_on(&store, &queue, &name, may_describe)?;
            let (partition, offset, at) = locate(&topic, &message)?;
            let now = store.clock().now_ms();
            let attempts =
                inspect::message_history(&*store, &held, partition, offset, timestamp_of(&at), now)
                    .map_err(|e| convert::status(&e))?;
            let state = inspect::queue_state(&*store, &held, partition, offset, &at, now)
                .map_err(|e| convert::status(&e))?;
            let (history_attempts, history_retention_ms) = convert::history_bounds(&config);
            Ok(GetDeliveryHistoryResponse {
                partition,
                offset,
                id: id_of(&at),
                attempts: attempts
                    .into_iter()
                    .map(convert::attempt_to_proto)
                    .collect(),
                status: Some(convert::queue_status_to_proto(&queue, state)),
                history_attempts,
                history_retention_ms,
            })
        })
        .await
        .map_err(|e| Status::internal(format!("the lookup task failed: {e}")))?
    }
}

#[tonic::async_trait]
impl Messages for MessagesService {
    async fn get_delivery_status(
        &self,
        request: Request<GetDeliveryStatusRequest>,
    ) -> Result<Response<GetDeliveryStatusResponse>, Status> {
        let started = Instant::now();
        let r = request.get_ref();
        let mut targets = vec![Target::topic(&r.topic)];
        use tidelog_proto::v1::get_delivery_status_request::Consumer;
        match &r.consumer {
            Some(Consumer::Queue(queue)) => targets.push(Target::queue(queue)),
            Some(Consumer::Group(group)) => targets.push(Target::group(group)),
            None => {}
        }
        let result = match self.state.auth.authorize(&request, &targets) {
            Ok(()) => {
                let caller = request.extensions().get::<Caller>().cloned();
                self.delivery_status(request.into_inner(), caller).await
            }
            Err(status) => Err(status),
        };
        let code = result.as_ref().err().map(Status::code);
        self.state.metrics.delivery_lookup("status", code);
        self.state.metrics.rpc_finished(
            "GetDeliveryStatus",
            started,
            result.as_ref().err().map(Status::code),
        );
        result.map(Response::new)
    }

    async fn get_delivery_history(
        &self,
        request: Request<GetDeliveryHistoryRequest>,
    ) -> Result<Response<GetDeliveryHistoryResponse>, Status> {
        let started = Instant::now();
        let r = request.get_ref();
        let mut targets = vec![Target::topic(&r.topic)];
        if !r.queue.is_empty() {
            targets.push(Target::queue(&r.queue));
        }
        let result = match self.state.auth.authorize(&request, &targets) {
            Ok(()) => {
                let caller = request.extensions().get::<Caller>().cloned();
                self.delivery_history(request.into_inner(), caller).await
            }
            Err(status) => Err(status),
        };
        let code = result.as_ref().err().map(Status::code);
        self.state.metrics.delivery_lookup("history", code);
        self.state.metrics.rpc_finished(
            "GetDeliveryHistory",
            started,
            result.as_ref().err().map(Status::code),
        );
        result.map(Response::new)
    }

    async fn get_message(
        &self,
        request: Request<GetMessageRequest>,
    ) -> Result<Response<GetMessageResponse>, Status> {
        let started = Instant::now();
        let result = match self
            .state
            .auth
            .authorize(&request, &[Target::topic(&request.get_ref().topic)])
        {
            Ok(()) => MessagesService::get_message(self, request.into_inner()).await,
            Err(status) => Err(status),
        };
        self.state.metrics.rpc_finished(
            "GetMessage",
            started,
            result.as_ref().err().map(Status::code),
        );
        result.map(Response::new)
    }
}
