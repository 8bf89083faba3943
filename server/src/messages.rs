//! The `tidelog.v1.Messages` service: `GetMessage`, a message of a topic by its id.
//!
//! The lookup may map, validate and (when missing or damaged) rebuild a segment's id
//! index, so the storage call runs on the blocking pool, never inline in async code.

use std::sync::Arc;
use std::time::Instant;

use tidelog_proto::v1::messages_server::Messages;
use tidelog_proto::v1::{GetMessageRequest, GetMessageResponse};
use tonic::{Request, Response, Status};

use crate::AppState;
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

#[tonic::async_trait]
impl Messages for MessagesService {
    async fn get_message(
        &self,
        request: Request<GetMessageRequest>,
    ) -> Result<Response<GetMessageResponse>, Status> {
        let started = Instant::now();
        let result = MessagesService::get_message(self, request.into_inner()).await;
        self.state.metrics.rpc_finished(
            "GetMessage",
            started,
            result.as_ref().err().map(Status::code),
        );
        result.map(Response::new)
    }
}
