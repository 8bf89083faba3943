//! Batch-form reads answered without copying the stored batches: `FetchBatches` and
//! `SubscribeBatches` responses leave as pieces, small encoded parts and the batches'
//! bytes (slices of the mapped segments) between them, each piece one HTTP/2 body
//! chunk. tonic's encoder writes every response into one buffer, a copy of every byte
//! fetched (a fifth of the broker's CPU in a batch-form consume; BENCHMARKS.md,
//! 2026-12-06 "A consume without the encoder's copy"), and h2 writes a large chunk to
//! the socket without copying it.
//!
//! [`ConsumerRoutes`] stands where tonic's `ConsumerServer` stood: it answers those two
//! methods itself and hands every other call to the `ConsumerServer`. The handlers are
//! the same ([`crate::consume::ConsumerService`]'s, with their authorization, metrics
//! and throttling); only decoding the request and encoding the response are here, to the
//! same wire format: a gRPC frame (flag byte 0, 32-bit big-endian length) whose bytes are
//! the protobuf message. Fields go out in another order than prost's (a message's
//! batches after its other fields), which protobuf allows and every decoder accepts;
//! the tests decode the pieces with prost and compare.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tidelog_proto::codec::BytesDecoder;
use tidelog_proto::v1::consumer_server::{Consumer, ConsumerServer};
use tidelog_proto::v1::{
    FetchBatchesResponse, FetchRequest, RecordBatches, StoredRecordBatch, SubscribeBatchesResponse,
    SubscribeRequest, subscribe_batches_response::Event,
};
use tokio_stream::{Stream, StreamExt as _};
use tonic::body::Body;
use tonic::codec::Streaming;
use tonic::codegen::http;
use tonic::metadata::{GRPC_CONTENT_TYPE, MetadataMap};
use tonic::server::NamedService;
use tonic::{Request, Status};

use crate::consume::ConsumerService;

const FETCH_BATCHES: &str = "/tidelog.v1.Consumer/FetchBatches";
const SUBSCRIBE_BATCHES: &str = "/tidelog.v1.Consumer/SubscribeBatches";

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

/// The `Consumer` service: tonic's `ConsumerServer`, with `FetchBatches` and
/// `SubscribeBatches` answered here without copying the batches.
#[derive(Clone)]
pub struct ConsumerRoutes {
    server: ConsumerServer<ConsumerService>,
    service: Arc<ConsumerService>,
    max_request_bytes: usize,
}

impl ConsumerRoutes {
    pub fn new(service: ConsumerService, max_request_bytes: usize) -> Self {
        let service = Arc::new(service);
        ConsumerRoutes {
            server: ConsumerServer::from_arc(service.clone())
                .max_decoding_message_size(max_request_bytes),
            service,
            max_request_bytes,
        }
    }
}

impl NamedService for ConsumerRoutes {
    const NAME: &'static str = <ConsumerServer<ConsumerService> as NamedService>::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl tower_service::Service<http::Request<Body>> for ConsumerRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let service = self.service.clone();
        let max = self.max_request_bytes;
        match request.uri().path() {
            FETCH_BATCHES => Box::pin(async move {
                let answer = match decode_request::<FetchRequest>(request, max).await {
                    Ok(request) => service.fetch_batches(request).await,
                    Err(status) => Err(status),
                };
                Ok(respond(answer.map(|response| {
                    response.map(|message| tokio_stream::once(Ok(Pieces::fetch_batches(message))))
                })))
            }),
            SUBSCRIBE_BATCHES => Box::pin(async move {
                let answer = match decode_request::<SubscribeRequest>(request, max).await {
                    Ok(request) => service.subscribe_batches(request).await,
                    Err(status) => Err(status),
                };
                Ok(respond(answer.map(|response| {
                    response.map(|events| events.map(|event| event.map(Pieces::subscribe_batches)))
                })))
            }),
            _ => {
                let future = tower_service::Service::call(&mut self.server, request);
                Box::pin(future)
            }
        }
    }
}

/// The one request message of a unary or server-streaming call, as tonic's server
/// decodes it (its frame, its size limit, trailers merged into the metadata). A
/// compressed request is refused UNIMPLEMENTED, as tonic does for a service that
/// accepts no compression.
async fn decode_request<M>(request: http::Request<Body>, max: usize) -> Result<Request<M>, Status>
where
    M: Message + Default + Send + 'static,
{
    if let Some(encoding) = request.headers().get("grpc-encoding")
        && encoding.as_bytes() != b"identity"
    {
        return Err(Status::unimplemented(format!(
            "Content is compressed with `{}` which isn't supported",
            String::from_utf8_lossy(encoding.as_bytes())
        )));
    }
    let (mut parts, body) = request.into_parts();
    let mut stream = Streaming::new_request(BytesDecoder::<M>::new(), body, None, Some(max));
    let message = stream
        .message()
        .await?
        .ok_or_else(|| Status::internal("Missing request message."))?;
    if let Some(trailers) = stream.trailers().await? {
        parts.headers.extend(trailers.into_headers());
    }
    Ok(Request::from_http(http::Request::from_parts(
        parts, message,
    )))
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
            let mut headers = MetadataMap::into_headers(metadata);
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
