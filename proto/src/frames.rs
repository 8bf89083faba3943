//! gRPC messages on HTTP/2 bodies without tonic's copies, for the broker's hot methods
//! and tidelog-client's calls of them (one implementation for both sides).
//!
//! tonic copies every byte it decodes into its receive buffer (growing it as a message
//! arrives) and every byte it encodes into its send buffer. Here:
//! - [`Pieces`] is one message's gRPC frame as body chunks: the frame header and the
//!   message's small fields encoded, and each large `bytes` field of a record batch (a
//!   stored batch, a published batch) left as the [`Bytes`] it is, a chunk of its own
//!   that h2 writes to the socket without copying;
//! - [`Messages`] decodes a body's frames (a request's, or a response's with the status
//!   in its trailers): a message inside one chunk (one DATA frame; tidelogd allows
//!   frames of [`MAX_FRAME_BYTES`]) is a slice of it, one spread over several is copied
//!   once into a buffer of its exact size;
//! - [`PiecesBody`] is a body made of messages' pieces, ending with status trailers
//!   (a response) or without (a request).
//!
//! The wire format is gRPC's (flag byte 0, 32-bit big-endian length, the protobuf
//! message). [`Pieces`] writes a message's record batches after its other fields,
//! another order than prost's, which protobuf allows and every decoder accepts; the
//! tests decode the pieces with prost and compare.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::{Body as _, Frame};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tokio_stream::Stream;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;

use crate::v1::{
    FetchBatchesResponse, PublishBatchRequest, PublishStreamRequest, RecordBatches,
    StoredRecordBatch, SubscribeBatchesResponse, subscribe_batches_response::Event,
};

/// The largest HTTP/2 DATA frame tidelogd accepts and tidelog-client asks for
/// (SETTINGS_MAX_FRAME_SIZE; the protocol's default is 16 KiB): a record batch of up
/// to this many bytes can come in one frame, which [`Messages`] then takes without a
/// copy.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// The HTTP/2 receive windows tidelogd announces: of one stream, and of a whole
/// connection (hyper's default, set explicitly so an upgrade cannot change it unseen).
/// h2 announces a window again once half of it has been read, so a publisher has about
/// half a window in flight. 8 / 16 MiB windows spared a batch-form publisher with eight
/// 107 KB batches in flight those waits (76 against 81 ns of broker CPU a message) but
/// cost rate with broker and client on two cores: 3-5% in batch form and 10% for
/// message-form PublishStreams, which the issue 16 API must not lose
/// (BENCHMARKS.md, "2026-12-06, 16:46-17:08" and "17:17-17:25").
pub const STREAM_WINDOW_BYTES: u32 = 1 << 20;
/// See [`STREAM_WINDOW_BYTES`].
pub const CONNECTION_WINDOW_BYTES: u32 = 1 << 20;

/// A record batch shorter than this is copied into the piece around it: a chunk of its
/// own costs h2 a frame header and the writer a vector entry, more than copying a few
/// hundred bytes.
pub const COPY_BELOW: usize = 1024;

/// Field numbers [`Pieces`] writes by hand (tidelog/v1/*.proto); the tests check them
/// against prost's own encoding.
const STORED_BATCH_BYTES: u32 = 1; // StoredRecordBatch.batch
const FETCH_BATCHES_BATCHES: u32 = 1; // FetchBatchesResponse.batches
const RECORD_BATCHES_BATCHES: u32 = 2; // RecordBatches.batches
const EVENT_BATCHES: u32 = 1; // SubscribeBatchesResponse.event.batches
const PUBLISH_BATCH_BYTES: u32 = 3; // PublishBatchRequest.batch
const STREAM_REQUEST_BATCH: u32 = 3; // PublishStreamRequest.batch

/// What a body's trailers are to [`Messages`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trailers {
    /// A request's: none are expected, any are dropped.
    Ignore,
    /// A response's: they carry the call's status; one other than OK is the stream's
    /// last item, and a body that ends without them ends with an error.
    Status,
}

/// A body's gRPC messages, decoded from the chunks they arrived in without joining
/// them: each `bytes` field (a record batch) that lies inside one chunk is a slice of
/// it, and only one that spans chunks is copied (by [`ChunkBuf::copy_to_bytes`]). A
/// message longer than the limit is refused from its header, before its bytes are
/// buffered.
pub struct Messages<M> {
    body: Body,
    trailers: Trailers,
    chunks: VecDeque<Bytes>,
    buffered: usize,
    max: usize,
    ended: bool,
    status_seen: bool,
    _message: PhantomData<fn() -> M>,
}

impl<M> std::fmt::Debug for Messages<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messages")
            .field("buffered", &self.buffered)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<M> Messages<M> {
    /// The messages of `body`, each at most `max` bytes.
    pub fn new(body: Body, trailers: Trailers, max: usize) -> Self {
        Messages {
            body,
            trailers,
            chunks: VecDeque::new(),
            buffered: 0,
            max,
            ended: false,
            status_seen: false,
            _message: PhantomData,
        }
    }

    /// The next whole message's bytes, if they are all buffered: the chunks they are
    /// in, the first and last cut to the message.
    fn take_message(&mut self) -> Result<Option<ChunkBuf>, Status> {
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
            return Err(too_large(self.max));
        }
        if self.buffered - 5 < len {
            return Ok(None);
        }
        self.advance(5);
        self.buffered -= 5 + len;
        let mut message = ChunkBuf {
            chunks: VecDeque::with_capacity(1),
            remaining: len,
        };
        let mut wanted = len;
        while wanted > 0 {
            let Some(chunk) = self.chunks.front_mut() else {
                break;
            };
            if chunk.len() <= wanted {
                wanted -= chunk.len();
                message.chunks.extend(self.chunks.pop_front());
            } else {
                message.chunks.push_back(chunk.split_to(wanted));
                wanted = 0;
            }
        }
        Ok(Some(message))
    }

    /// Drops `n` buffered bytes from the front (the caller keeps `buffered`).
    fn advance(&mut self, n: usize) {
        drop_front(&mut self.chunks, n);
    }
}

/// Drops the first `n` bytes of `chunks` (all of them if they hold fewer).
fn drop_front(chunks: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(chunk) = chunks.front_mut() else {
            return;
        };
        let step = chunk.len().min(n);
        chunk.advance(step);
        n -= step;
        if chunk.is_empty() {
            chunks.pop_front();
        }
    }
}

impl<M: Message + Default> Messages<M> {
    /// The next message, `None` at the end (as tonic's `Streaming::message`).
    pub async fn message(&mut self) -> Result<Option<M>, Status> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .transpose()
    }
}

impl<M: Message + Default> Stream for Messages<M> {
    type Item = Result<M, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.take_message() {
                Ok(Some(bytes)) => {
                    // INTERNAL for a message that does not parse, as tonic's prost
                    // codec has it; the stream ends there, as after any error.
                    let message = M::decode(bytes).map_err(|e| Status::internal(e.to_string()));
                    if message.is_err() {
                        self.ended = true;
                        self.chunks.clear();
                        self.buffered = 0;
                    }
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
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if !data.is_empty() {
                            self.buffered += data.len();
                            self.chunks.push_back(data);
                        }
                    }
                    Err(frame) => {
                        if self.trailers == Trailers::Status {
                            self.ended = true;
                            self.status_seen = true;
                            let status = frame
                                .trailers_ref()
                                .and_then(Status::from_header_map)
                                .filter(|status| status.code() != tonic::Code::Ok);
                            if let Some(status) = status {
                                self.chunks.clear();
                                self.buffered = 0;
                                return Poll::Ready(Some(Err(status)));
                            }
                        }
                    }
                },
                Poll::Ready(Some(Err(status))) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(None) => {
                    let ended = self.ended;
                    self.ended = true;
                    if self.trailers == Trailers::Status && !self.status_seen && !ended {
                        self.chunks.clear();
                        self.buffered = 0;
                        return Poll::Ready(Some(Err(Status::internal(
                            "the broker's response ended without a gRPC status",
                        ))));
                    }
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

type PiecesStream = Pin<Box<dyn Stream<Item = Result<Pieces, Status>> + Send>>;

/// A body made of messages' pieces, in order: a response's ends with trailers that
/// carry the status (OK when the messages end, the error a stream ends with
/// otherwise); a request's just ends (an error from its stream ends it early).
pub struct PiecesBody {
    messages: Option<PiecesStream>,
    pieces: VecDeque<Bytes>,
    trailers: bool,
}

impl PiecesBody {
    /// A response body: the messages, then the status trailers.
    pub fn response(messages: impl Stream<Item = Result<Pieces, Status>> + Send + 'static) -> Self {
        PiecesBody {
            messages: Some(Box::pin(messages)),
            pieces: VecDeque::new(),
            trailers: true,
        }
    }

    /// A request body: the messages, then the end of the stream.
    pub fn request(messages: impl Stream<Item = Pieces> + Send + 'static) -> Self {
        use tokio_stream::StreamExt as _;
        PiecesBody {
            messages: Some(Box::pin(messages.map(Ok))),
            pieces: VecDeque::new(),
            trailers: false,
        }
    }
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
        if !self.trailers {
            return Poll::Ready(None);
        }
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

    /// A `PublishStreamRequest`'s frame (its batch, if any, as a piece of its own).
    pub fn publish_stream_request(mut message: PublishStreamRequest) -> Pieces {
        let mut out = Writer::frame(message.encoded_len());
        let batch = message.batch.take();
        out.message(&message);
        if let Some(batch) = batch {
            out.length_delimited(STREAM_REQUEST_BATCH, batch.encoded_len());
            out.publish_batch(batch);
        }
        out.finish()
    }

    /// A `PublishBatchRequest`'s frame.
    pub fn publish_batch(message: PublishBatchRequest) -> Pieces {
        let mut out = Writer::frame(message.encoded_len());
        out.publish_batch(message);
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

    fn publish_batch(&mut self, mut message: PublishBatchRequest) {
        let batch = std::mem::take(&mut message.batch);
        self.message(&message);
        if !batch.is_empty() {
            self.length_delimited(PUBLISH_BATCH_BYTES, batch.len());
            self.bytes(batch);
        }
    }

    /// A record batch's bytes: copied when short, else a piece of their own.
    fn bytes(&mut self, bytes: Bytes) {
        if bytes.len() < COPY_BELOW {
            self.current.extend_from_slice(&bytes);
        } else {
            let small = self.current.split().freeze();
            self.pieces.push(small);
            self.pieces.push(bytes);
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
            self.bytes(bytes);
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

/// One message's bytes as the chunks they came in, read by prost as one [`Buf`]: a
/// `bytes` field inside one chunk is taken as a slice of it.
#[derive(Debug)]
pub struct ChunkBuf {
    chunks: VecDeque<Bytes>,
    remaining: usize,
}

impl Buf for ChunkBuf {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |chunk| &chunk[..])
    }

    fn advance(&mut self, n: usize) {
        // prost checks lengths against `remaining` before it advances; past the end
        // would only empty the buffer.
        let n = n.min(self.remaining);
        self.remaining -= n;
        drop_front(&mut self.chunks, n);
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        let len = len.min(self.remaining);
        match self.chunks.front_mut() {
            Some(chunk) if chunk.len() >= len => {
                let bytes = chunk.split_to(len);
                if chunk.is_empty() {
                    self.chunks.pop_front();
                }
                self.remaining -= len;
                bytes
            }
            _ => {
                let mut out = BytesMut::with_capacity(len);
                out.put((&mut *self).take(len));
                out.freeze()
            }
        }
    }
}

/// The status for a message over `limit` bytes (what tidelogd's `--max-request-bytes`
/// refuses a request with).
pub fn too_large(limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "the request is over the server's limit of {limit} bytes per gRPC message (tidelogd --max-request-bytes); send fewer or smaller messages per request, or have the operator raise the limit"
    ))
}

#[cfg(test)]
mod tests;
