//! The `Consumer` and `Publisher` services' hot methods without tonic's copies.
//!
//! tonic's server copies every byte it decodes into its receive buffer (growing it as a
//! message arrives) and every byte it encodes into its send buffer. For record batches
//! those copies were most of the broker's own work (BENCHMARKS.md, 2026-12-06
//! "Without tonic's copies"): in a batch-form consume, the encoder's copy was a fifth of
//! the broker's CPU; in a publish, the decoder's copy and its buffer's growth an eighth.
//! Here:
//! - responses of `FetchBatches` and `SubscribeBatches` go out as pieces, small encoded
//!   parts and the stored batches' bytes (slices of the mapped segments) between them,
//!   each piece one HTTP/2 body chunk (h2 writes a large chunk to the socket without
//!   copying it);
//! - requests of `Publish`, `PublishBatch` and `PublishStream` are decoded from the
//!   HTTP/2 body's chunks by [`RequestMessages`]: a message inside one chunk (one DATA
//!   frame: the server allows frames of [`MAX_FRAME_BYTES`]) is a slice of it, and
//!   one spread over several is copied once into a buffer of its exact size.
//!
//! [`Routes`] stands where tonic's generated server stood: it answers those methods
//! itself and hands every other call to the generated server. The handlers are the
//! same ([`ConsumerService`]'s and [`PublisherService`]'s, with their authorization,
//! metrics and throttling); only decoding requests and encoding responses are here, to
//! the same wire format: gRPC frames (flag byte 0, 32-bit big-endian length) of protobuf
//! messages. A response's fields go out in another order than prost's (a message's
//! batches after its other fields), which protobuf allows and every decoder accepts;
//! the tests decode the pieces with prost and compare.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::{Body as _, Frame};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tidelog_proto::v1::consumer_server::{Consumer, ConsumerServer};
use tidelog_proto::v1::publisher_server::{Publisher, PublisherServer};
use tidelog_proto::v1::{
    FetchBatchesResponse, FetchRequest, PublishBatchRequest, PublishRequest, RecordBatches,
    StoredRecordBatch, SubscribeBatchesResponse, SubscribeRequest,
    subscribe_batches_response::Event,
};
use tokio_stream::{Stream, StreamExt as _};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::GRPC_CONTENT_TYPE;
use tonic::server::NamedService;
use tonic::{Request, Status};

use crate::consume::ConsumerService;
use crate::publish::PublisherService;

/// The largest HTTP/2 DATA frame the server accepts (SETTINGS_MAX_FRAME_SIZE; the
/// protocol's default is 16 KiB): a client can send a publish of up to this many bytes
/// in one frame, which [`RequestMessages`] then takes without a copy.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// A stored batch shorter than this is copied into the piece around it: a chunk of its
/// own costs h2 a frame header and the writer a vector entry, more than copying a few
/// hundred bytes.
const COPY_BELOW: usize = 1024;

/// Field numbers the encoding below writes by hand (tidelog/v1/consumer.proto); the
/// tests check them against prost's own encoding.
const STORED_BATCH_BYTES: u32 = 1; // StoredRecordBatch.batch
const FETCH_BATCHES_BATCHES: u32 = 1; // FetchBatchesResponse.batches
const RECORD_BATCHES_BATCHES: u32 = 2; // RecordBatches.batches
const EVENT_BATCHES: u32 = 1; // SubscribeBatchesResponse.event.batches

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
            ConsumerMethod::FetchBatches => Box::pin(async move {
                let answer = match unary_request::<FetchRequest>(request, max).await {
                    Ok(request) => self.fetch_batches(request).await,
                    Err(status) => Err(status),
                };
                respond(answer.map(|response| {
                    response.map(|message| tokio_stream::once(Ok(Pieces::fetch_batches(message))))
                }))
            }),
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
            PublisherMethod::Publish => Box::pin(async move {
                let answer = match unary_request::<PublishRequest>(request, max).await {
                    Ok(request) => self.publish(request).await,
                    Err(status) => Err(status),
                };
                respond(answer.map(|response| {
                    response.map(|message| tokio_stream::once(Ok(Pieces::message(&message))))
                }))
            }),
            PublisherMethod::PublishBatch => Box::pin(async move {
                let answer = match unary_request::<PublishBatchRequest>(request, max).await {
                    Ok(request) => self.publish_batch(request).await,
                    Err(status) => Err(status),
                };
                respond(answer.map(|response| {
                    response.map(|message| tokio_stream::once(Ok(Pieces::message(&message))))
                }))
            }),
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
) -> Result<Request<RequestMessages<M>>, Status> {
    refuse_compressed(&request)?;
    Ok(Request::from_http(
        request.map(|body| RequestMessages::new(body, max)),
    ))
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

/// A request body's gRPC messages, each decoded from one [`Bytes`]: a slice of the
/// HTTP/2 chunk it arrived in when it fits in one, else its chunks copied once into a
/// buffer of its exact length. A message longer than the limit is refused from its
/// header, before its bytes are buffered.
pub struct RequestMessages<M> {
    body: Body,
    chunks: VecDeque<Bytes>,
    buffered: usize,
    max: usize,
    ended: bool,
    _message: PhantomData<fn() -> M>,
}

impl<M> RequestMessages<M> {
    pub fn new(body: Body, max: usize) -> Self {
        RequestMessages {
            body,
            chunks: VecDeque::new(),
            buffered: 0,
            max,
            ended: false,
            _message: PhantomData,
        }
    }

    /// The next whole message's bytes, if they are all buffered.
    fn take_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buffered < 5 {
            return Ok(None);
        }
        let mut header = [0u8; 5];
        let mut filled = 0;
        for chunk in &self.chunks {
            let n = chunk.len().min(5 - filled);
            header[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == 5 {
                break;
            }
        }
        if header[0] != 0 {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > self.max {
            return Err(crate::request_limit::too_large(self.max));
        }
        if self.buffered - 5 < len {
            return Ok(None);
        }
        self.advance(5);
        self.buffered -= 5 + len;
        let front = self.chunks.front_mut().map_or(0, |chunk| chunk.len());
        if front >= len {
            let message = self.chunks[0].split_to(len);
            if self.chunks[0].is_empty() {
                self.chunks.pop_front();
            }
            return Ok(Some(message));
        }
        let mut message = BytesMut::with_capacity(len);
        while message.len() < len {
            let Some(chunk) = self.chunks.front_mut() else {
                break;
            };
            let n = chunk.len().min(len - message.len());
            message.extend_from_slice(&chunk[..n]);
            chunk.advance(n);
            if chunk.is_empty() {
                self.chunks.pop_front();
            }
        }
        Ok(Some(message.freeze()))
    }

    /// Drops `n` buffered bytes from the front (the caller keeps `buffered`).
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(chunk) = self.chunks.front_mut() else {
                return;
            };
            let step = chunk.len().min(n);
            chunk.advance(step);
            n -= step;
            if chunk.is_empty() {
                self.chunks.pop_front();
            }
        }
    }
}

impl<M: Message + Default> Stream for RequestMessages<M> {
    type Item = Result<M, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.take_message() {
                Ok(Some(bytes)) => {
                    // INTERNAL for a message that does not parse, as tonic's prost
                    // codec has it.
                    let message = M::decode(bytes).map_err(|e| Status::internal(e.to_string()));
                    return Poll::Ready(Some(message));
                }
                Ok(None) => {}
                Err(status) => {
                    self.ended = true;
                    self.chunks.clear();
                    self.buffered = 0;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            if self.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    // Request trailers (which clients do not send) are dropped.
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        self.buffered += data.len();
                        self.chunks.push_back(data);
                    }
                }
                Poll::Ready(Some(Err(status))) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(None) => {
                    self.ended = true;
                    if self.buffered > 0 {
                        self.chunks.clear();
                        self.buffered = 0;
                        return Poll::Ready(Some(Err(Status::internal(
                            "Unexpected EOF decoding stream.",
                        ))));
                    }
                }
            }
        }
    }
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
            let mut response = http::Response::new(Body::new(PiecesBody {
                messages: Some(Box::pin(messages)),
                pieces: VecDeque::new(),
            }));
            *response.headers_mut() = headers;
            response
        }
    }
}

type Messages = Pin<Box<dyn Stream<Item = Result<Pieces, Status>> + Send>>;

/// A response body: each message's pieces in order, then trailers with the status
/// (OK when the messages end, the error a stream ends with otherwise).
struct PiecesBody {
    messages: Option<Messages>,
    pieces: VecDeque<Bytes>,
}

impl http_body::Body for PiecesBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(piece) = self.pieces.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        let Some(messages) = self.messages.as_mut() else {
            return Poll::Ready(None);
        };
        let status = match messages.as_mut().poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(pieces))) => {
                self.pieces.extend(pieces.0);
                let first = self.pieces.pop_front().unwrap_or_default();
                return Poll::Ready(Some(Ok(Frame::data(first))));
            }
            Poll::Ready(Some(Err(status))) => status,
            Poll::Ready(None) => Status::ok(""),
        };
        self.messages = None;
        let mut trailers = http::HeaderMap::new();
        if let Err(error) = status.add_header(&mut trailers) {
            // Only a status whose message cannot be a header value: say so instead.
            trailers.clear();
            let _ = error.add_header(&mut trailers);
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.messages.is_none() && self.pieces.is_empty()
    }
}

/// One gRPC message frame as body chunks: the frame's header and the message's small
/// fields encoded, and the stored batches' bytes left where they are.
#[derive(Debug, Default)]
pub struct Pieces(Vec<Bytes>);

impl Pieces {
    /// A `FetchBatchesResponse`'s frame.
    pub fn fetch_batches(mut message: FetchBatchesResponse) -> Pieces {
        let mut out = Writer::frame(message.encoded_len());
        let batches = std::mem::take(&mut message.batches);
        out.message(&message);
        for batch in batches {
            out.stored_batch(FETCH_BATCHES_BATCHES, batch);
        }
        out.finish()
    }

    /// A `SubscribeBatchesResponse`'s frame.
    pub fn subscribe_batches(message: SubscribeBatchesResponse) -> Pieces {
        let mut out = Writer::frame(message.encoded_len());
        match message.event {
            Some(Event::Batches(batches)) => {
                out.length_delimited(EVENT_BATCHES, batches.encoded_len());
                out.record_batches(batches);
            }
            event => out.message(&SubscribeBatchesResponse { event }),
        }
        out.finish()
    }

    /// A message without batches: one piece.
    pub fn message(message: &impl Message) -> Pieces {
        let mut out = Writer::frame(message.encoded_len());
        out.message(message);
        out.finish()
    }

    /// The chunks, in order.
    pub fn into_chunks(self) -> Vec<Bytes> {
        self.0
    }
}

/// Writes a message frame's pieces: small parts into `current`, each large stored
/// batch as a piece of its own.
struct Writer {
    pieces: Vec<Bytes>,
    current: BytesMut,
}

impl Writer {
    /// Starts a frame whose message is `len` bytes long. A message over 4 GiB cannot be
    /// framed; a read's byte budget keeps every response far below that.
    fn frame(len: usize) -> Writer {
        let mut current = BytesMut::with_capacity(256);
        current.put_u8(0);
        current.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        Writer {
            pieces: Vec::with_capacity(4),
            current,
        }
    }

    fn message(&mut self, message: &impl Message) {
        // `current` grows as needed: encoding into it cannot run out of room.
        let _ = message.encode(&mut self.current);
    }

    fn length_delimited(&mut self, tag: u32, len: usize) {
        encode_key(tag, WireType::LengthDelimited, &mut self.current);
        encode_varint(len as u64, &mut self.current);
    }

    fn record_batches(&mut self, mut message: RecordBatches) {
        let batches = std::mem::take(&mut message.batches);
        self.message(&message);
        for batch in batches {
            self.stored_batch(RECORD_BATCHES_BATCHES, batch);
        }
    }

    /// A `StoredRecordBatch` as field `tag` of its parent: its batch bytes first (a
    /// piece of their own when large), then its other fields.
    fn stored_batch(&mut self, tag: u32, mut batch: StoredRecordBatch) {
        let bytes = std::mem::take(&mut batch.batch);
        let bytes_field = if bytes.is_empty() {
            0
        } else {
            key_len(STORED_BATCH_BYTES) + encoded_len_varint(bytes.len() as u64) + bytes.len()
        };
        self.length_delimited(tag, bytes_field + batch.encoded_len());
        if !bytes.is_empty() {
            self.length_delimited(STORED_BATCH_BYTES, bytes.len());
            if bytes.len() < COPY_BELOW {
                self.current.extend_from_slice(&bytes);
            } else {
                let small = self.current.split().freeze();
                self.pieces.push(small);
                self.pieces.push(bytes);
            }
        }
        self.message(&batch);
    }

    fn finish(mut self) -> Pieces {
        if !self.current.is_empty() {
            self.pieces.push(self.current.freeze());
        }
        Pieces(self.pieces)
    }
}

#[cfg(test)]
mod tests;
