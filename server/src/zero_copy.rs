//! The `Consumer` and `Publisher` services' hot methods without tonic's copies.
//!
//! tonic's server copies every byte it decodes into its receive buffer (growing it as a
//! message arrives) and every byte it encodes into its send buffer. For record batches
//! those copies were much of the broker's own work (BENCHMARKS.md, 2026-12-06
//! "Without tonic's copies"): in a batch-form consume the encoder's copy was a fifth of
//! the broker's CPU. [`Routes`] stands where tonic's generated server stood: it answers
//! `FetchBatches` and `SubscribeBatches` (responses sent as [`Pieces`], the stored
//! batches slices of the mapped segments), and `Publish`, `PublishBatch` and
//! `PublishStream` (requests decoded by [`Messages`] from the HTTP/2 chunks they came
//! in), and hands every other call to the generated server. The handlers are the same
//! ([`ConsumerService`]'s and [`PublisherService`]'s, with their authorization, metrics
//! and throttling); only the framing is [`tidelog_proto::frames`]'.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::Message;
use tidelog_proto::frames::{Messages, Pieces, PiecesBody, Trailers};
use tidelog_proto::v1::SubscribeRequest;
use tidelog_proto::v1::consumer_server::{Consumer, ConsumerServer};
use tidelog_proto::v1::publisher_server::{Publisher, PublisherServer};
use tokio_stream::{Stream, StreamExt as _};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::GRPC_CONTENT_TYPE;
use tonic::server::NamedService;
use tonic::{Request, Status};

use crate::consume::ConsumerService;
use crate::publish::PublisherService;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A handler some of whose methods this module answers.
pub trait Answers: Send + Sync + 'static {
    /// The methods answered here.
    type Method: Copy;

    /// The method of a request's path, if it is one answered here.
    fn method(path: &str) -> Option<Self::Method>;

    /// The answer to a request for `method`.
    fn answer(
        self: Arc<Self>,
        method: Self::Method,
        request: http::Request<Body>,
        max_request_bytes: usize,
    ) -> BoxFuture<http::Response<Body>>;
}

/// A service as the server adds it: tonic's generated server `S`, with the methods
/// `H` [`Answers`] answered here.
pub struct Routes<S, H> {
    server: S,
    handler: Arc<H>,
    max_request_bytes: usize,
}

impl<S: Clone, H> Clone for Routes<S, H> {
    fn clone(&self) -> Self {
        Routes {
            server: self.server.clone(),
            handler: self.handler.clone(),
            max_request_bytes: self.max_request_bytes,
        }
    }
}

/// The `Consumer` service: `FetchBatches` and `SubscribeBatches` answered here.
pub type ConsumerRoutes = Routes<ConsumerServer<ConsumerService>, ConsumerService>;
/// The `Publisher` service: `Publish`, `PublishBatch` and `PublishStream` answered
/// here.
pub type PublisherRoutes = Routes<PublisherServer<PublisherService>, PublisherService>;

impl ConsumerRoutes {
    pub fn consumer(service: ConsumerService, max_request_bytes: usize) -> Self {
        let handler = Arc::new(service);
        Routes {
            server: ConsumerServer::from_arc(handler.clone())
                .max_decoding_message_size(max_request_bytes),
            handler,
            max_request_bytes,
        }
    }
}

impl PublisherRoutes {
    pub fn publisher(service: PublisherService, max_request_bytes: usize) -> Self {
        let handler = Arc::new(service);
        Routes {
            server: PublisherServer::from_arc(handler.clone())
                .max_decoding_message_size(max_request_bytes),
            handler,
            max_request_bytes,
        }
    }
}

impl<S: NamedService, H> NamedService for Routes<S, H> {
    const NAME: &'static str = S::NAME;
}

impl<S, H> tower_service::Service<http::Request<Body>> for Routes<S, H>
where
    S: tower_service::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        >,
    S::Future: Send + 'static,
    H: Answers,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.server.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match H::method(request.uri().path()) {
            Some(method) => {
                let answer = self
                    .handler
                    .clone()
                    .answer(method, request, self.max_request_bytes);
                Box::pin(async move { Ok(answer.await) })
            }
            None => Box::pin(self.server.call(request)),
        }
    }
}

/// The `Consumer` methods answered here.
#[derive(Debug, Clone, Copy)]
pub enum ConsumerMethod {
    FetchBatches,
    SubscribeBatches,
}

impl Answers for ConsumerService {
    type Method = ConsumerMethod;

    fn method(path: &str) -> Option<ConsumerMethod> {
        match path {
            "/tidelog.v1.Consumer/FetchBatches" => Some(ConsumerMethod::FetchBatches),
            "/tidelog.v1.Consumer/SubscribeBatches" => Some(ConsumerMethod::SubscribeBatches),
            _ => None,
        }
    }

    fn answer(
        self: Arc<Self>,
        method: ConsumerMethod,
        request: http::Request<Body>,
        max: usize,
    ) -> BoxFuture<http::Response<Body>> {
        match method {
            ConsumerMethod::FetchBatches => Box::pin(unary(
                request,
                max,
                move |request| async move { self.fetch_batches(request).await },
                Pieces::fetch_batches,
            )),
            ConsumerMethod::SubscribeBatches => Box::pin(async move {
                let answer = match unary_request::<SubscribeRequest>(request, max).await {
                    Ok(request) => self.subscribe_batches(request).await,
                    Err(status) => Err(status),
                };
                respond(answer.map(|response| {
                    response.map(|events| events.map(|event| event.map(Pieces::subscribe_batches)))
                }))
            }),
        }
    }
}

/// The `Publisher` methods answered here.
#[derive(Debug, Clone, Copy)]
pub enum PublisherMethod {
    Publish,
    PublishBatch,
    PublishStream,
}

impl Answers for PublisherService {
    type Method = PublisherMethod;

    fn method(path: &str) -> Option<PublisherMethod> {
        match path {
            "/tidelog.v1.Publisher/Publish" => Some(PublisherMethod::Publish),
            "/tidelog.v1.Publisher/PublishBatch" => Some(PublisherMethod::PublishBatch),
            "/tidelog.v1.Publisher/PublishStream" => Some(PublisherMethod::PublishStream),
            _ => None,
        }
    }

    fn answer(
        self: Arc<Self>,
        method: PublisherMethod,
        request: http::Request<Body>,
        max: usize,
    ) -> BoxFuture<http::Response<Body>> {
        match method {
            PublisherMethod::Publish => Box::pin(unary(
                request,
                max,
                move |request| async move { self.publish(request).await },
                |answer| Pieces::message(&answer),
            )),
            PublisherMethod::PublishBatch => Box::pin(unary(
                request,
                max,
                move |request| async move { self.publish_batch(request).await },
                |answer| Pieces::message(&answer),
            )),
            PublisherMethod::PublishStream => Box::pin(async move {
                let answer = streaming_request(request, max).map(|request| {
                    self.publish_stream_from(request).map(|responses| {
                        responses.map(|response| response.map(|message| Pieces::message(&message)))
                    })
                });
                respond(answer)
            }),
        }
    }
}

/// A request whose `grpc-encoding` is not identity is refused UNIMPLEMENTED, as tonic
/// refuses it for a service that accepts no compression.
fn refuse_compressed(request: &http::Request<Body>) -> Result<(), Status> {
    match request.headers().get("grpc-encoding") {
        Some(encoding) if encoding.as_bytes() != b"identity" => {
            Err(Status::unimplemented(format!(
                "Content is compressed with `{}` which isn't supported",
                String::from_utf8_lossy(encoding.as_bytes())
            )))
        }
        _ => Ok(()),
    }
}

/// A client-streaming or bidirectional call's request: its messages decoded as they
/// arrive.
fn streaming_request<M: Message + Default>(
    request: http::Request<Body>,
    max: usize,
) -> Result<Request<Messages<M>>, Status> {
    refuse_compressed(&request)?;
    Ok(Request::from_http(
        request.map(|body| Messages::new(body, Trailers::Ignore, max)),
    ))
}

/// A unary call answered here: its request decoded, `handler` called with it, its
/// answer encoded by `encode`.
async fn unary<Req, Resp, Fut>(
    request: http::Request<Body>,
    max: usize,
    handler: impl FnOnce(Request<Req>) -> Fut,
    encode: fn(Resp) -> Pieces,
) -> http::Response<Body>
where
    Req: Message + Default,
    Resp: Send + 'static,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let answer = match unary_request::<Req>(request, max).await {
        Ok(request) => handler(request).await,
        Err(status) => Err(status),
    };
    respond(answer.map(|response| response.map(|answer| tokio_stream::once(Ok(encode(answer))))))
}

/// The one request message of a unary or server-streaming call. The body's trailers,
/// which no client sends on a request, are not read.
async fn unary_request<M: Message + Default>(
    request: http::Request<Body>,
    max: usize,
) -> Result<Request<M>, Status> {
    let mut request = streaming_request::<M>(request, max)?;
    let message = request
        .get_mut()
        .next()
        .await
        .ok_or_else(|| Status::internal("Missing request message."))??;
    let (metadata, extensions, _) = request.into_parts();
    Ok(Request::from_parts(metadata, extensions, message))
}

/// The HTTP response for a handler's answer: a refusal as a trailers-only response (as
/// tonic sends it), or the messages' pieces and then the status trailers.
fn respond<S>(answer: Result<tonic::Response<S>, Status>) -> http::Response<Body>
where
    S: Stream<Item = Result<Pieces, Status>> + Send + 'static,
{
    match answer {
        Err(status) => status.into_http(),
        Ok(response) => {
            let (metadata, messages, _extensions) = response.into_parts();
            let mut headers = metadata.into_headers();
            headers.insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
            let mut response = http::Response::new(Body::new(PiecesBody::response(messages)));
            *response.headers_mut() = headers;
            response
        }
    }
}

#[cfg(test)]
mod tests;
