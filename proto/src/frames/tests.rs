use super::*;

use tokio_stream::StreamExt as _;

use crate::v1::{Assignment, PartitionPosition, PositionReset};
use proptest::prelude::*;

/// The frame's bytes: the pieces joined.
fn joined(pieces: &Pieces) -> Vec<u8> {
    pieces
        .0
        .iter()
        .flat_map(|piece| piece.iter().copied())
        .collect()
}

/// The message inside a frame, checking the frame's header against its length.
fn message_of(frame: &[u8]) -> &[u8] {
    assert!(frame.len() >= 5, "a frame has a 5-byte header");
    assert_eq!(frame[0], 0, "not compressed");
    let len = u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 5, "the header's length is the message's");
    &frame[5..]
}

/// Every batch of at least `COPY_BELOW` bytes is a piece of its own that points into
/// the batch's memory (not copied); shorter ones are not pieces.
fn assert_not_copied(pieces: &Pieces, batches: &[Bytes]) {
    for batch in batches {
        let own_piece = pieces
            .0
            .iter()
            .any(|piece| piece.as_ptr() == batch.as_ptr() && piece.len() == batch.len());
        assert_eq!(
            own_piece,
            batch.len() >= COPY_BELOW,
            "a batch of {} bytes",
            batch.len()
        );
    }
}

fn stored_batch(len: usize, fill: u8, skip: Vec<u32>) -> StoredRecordBatch {
    StoredRecordBatch {
        batch: Bytes::from(vec![fill; len]),
        base_offset: u64::from(fill) * 1_000_003,
        record_count: len as u32 / 7,
        skip_front: u32::from(fill % 3),
        skip,
    }
}

fn batches_strategy() -> impl Strategy<Value = Vec<StoredRecordBatch>> {
    // Empty, tiny, around the copy threshold, typical (100 KB) and large (1 MiB+).
    let len = prop_oneof![
        Just(0usize),
        1usize..64,
        (COPY_BELOW - 2)..(COPY_BELOW + 2),
        1usize..200_000,
        Just(1 << 20),
    ];
    proptest::collection::vec(
        (
            len,
            any::<u8>(),
            proptest::collection::vec(any::<u32>(), 0..4),
        ),
        0..6,
    )
    .prop_map(|batches| {
        batches
            .into_iter()
            .map(|(len, fill, skip)| stored_batch(len, fill, skip))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn fetch_batches_pieces_decode_to_the_message(
        batches in batches_strategy(),
        next_offset in any::<u64>(),
        end_offset in any::<u64>(),
        now_ms in any::<i64>(),
    ) {
        let message = FetchBatchesResponse {
            batches,
            next_offset,
            log_start_offset: next_offset / 2,
            end_offset,
            now_ms,
            topic_id: end_offset ^ next_offset,
        };
        let bytes: Vec<Bytes> = message.batches.iter().map(|b| b.batch.clone()).collect();
        let pieces = Pieces::fetch_batches(message.clone());
        let frame = joined(&pieces);
        let decoded = FetchBatchesResponse::decode(message_of(&frame)).unwrap();
        prop_assert_eq!(decoded, message);
        assert_not_copied(&pieces, &bytes);
    }

    #[test]
    fn subscribe_batches_pieces_decode_to_the_message(
        batches in batches_strategy(),
        partition in any::<u32>(),
        next_offset in any::<u64>(),
        topic in "[a-z]{0,12}",
        now_ms in any::<i64>(),
    ) {
        let message = SubscribeBatchesResponse {
            event: Some(Event::Batches(RecordBatches {
                partition,
                batches,
                position: Some(PartitionPosition {
                    partition,
                    next_offset,
                    end_offset: next_offset.saturating_add(5),
                    topic,
                    topic_id: next_offset.rotate_left(7),
                }),
                now_ms,
            })),
        };
        let bytes: Vec<Bytes> = match &message.event {
            Some(Event::Batches(b)) => b.batches.iter().map(|b| b.batch.clone()).collect(),
            _ => unreachable!(),
        };
        let pieces = Pieces::subscribe_batches(message.clone());
        let frame = joined(&pieces);
        let decoded = SubscribeBatchesResponse::decode(message_of(&frame)).unwrap();
        prop_assert_eq!(decoded, message);
        assert_not_copied(&pieces, &bytes);
    }
}

#[test]
fn events_without_batches_are_prost_s_encoding() {
    let events = [
        SubscribeBatchesResponse { event: None },
        SubscribeBatchesResponse {
            event: Some(Event::Assignment(Assignment {
                member_id: "m-1".into(),
                generation: 7,
                partitions: vec![0, 2, 5],
                ..Assignment::default()
            })),
        },
        SubscribeBatchesResponse {
            event: Some(Event::PositionReset(PositionReset {
                partition: 3,
                from_offset: Some(10),
                to_offset: 42,
                reason: 1,
                topic: "orders".into(),
                topic_id: 0x0123_4567_89ab_cdef,
            })),
        },
        // Batches, but all of them short: one piece, byte for byte prost's when the
        // batches are the message's last field.
        SubscribeBatchesResponse {
            event: Some(Event::Batches(RecordBatches {
                partition: 0,
                batches: vec![stored_batch(10, 1, vec![]), stored_batch(0, 2, vec![3])],
                position: None,
                now_ms: 0,
            })),
        },
    ];
    for event in events {
        let pieces = Pieces::subscribe_batches(event.clone());
        assert_eq!(pieces.0.len(), 1, "{event:?}");
        let frame = joined(&pieces);
        assert_eq!(message_of(&frame), event.encode_to_vec(), "{event:?}");
    }
}

#[test]
fn an_empty_fetch_is_one_piece() {
    let message = FetchBatchesResponse {
        next_offset: 9,
        end_offset: 9,
        ..FetchBatchesResponse::default()
    };
    let pieces = Pieces::fetch_batches(message.clone());
    assert_eq!(pieces.0.len(), 1);
    assert_eq!(message_of(&joined(&pieces)), message.encode_to_vec());
}

/// A request body of given chunks (and then, optionally, an error).
struct Chunks {
    frames: VecDeque<Result<Frame<Bytes>, Status>>,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(self.frames.pop_front())
    }
}

fn body(chunks: Vec<Bytes>, error: Option<Status>) -> Body {
    let mut frames: VecDeque<_> = chunks.into_iter().map(|c| Ok(Frame::data(c))).collect();
    frames.extend(error.map(Err));
    Body::new(Chunks { frames })
}

/// A gRPC frame of `message`.
fn framed(message: &impl Message) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
    message.encode(&mut out).unwrap();
    out
}

fn decode_all(body: Body, max: usize) -> Vec<Result<PublishBatchRequest, Status>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(Messages::<PublishBatchRequest>::new(body, Trailers::Ignore, max).collect())
}

fn publish_batch(len: usize, fill: u8) -> PublishBatchRequest {
    PublishBatchRequest {
        topic: format!("t{fill}"),
        partition: u32::from(fill),
        batch: Bytes::from(vec![fill; len]),
        ack: i32::from(fill % 3),
        // Both ways, so the decoder is seen to read the field after the batch.
        relative_times: fill % 2 == 1,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Messages of random sizes, their bytes cut into chunks at random places, decode
    /// to themselves in order; a message inside one chunk is a slice of it.
    #[test]
    fn request_messages_decode_across_any_chunking(
        lens in proptest::collection::vec(prop_oneof![0usize..100, 0usize..300_000], 0..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let messages: Vec<_> = lens
            .iter()
            .enumerate()
            .map(|(i, len)| publish_batch(*len, i as u8))
            .collect();
        let stream: Vec<u8> = messages.iter().flat_map(framed).collect();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cuts.extend([0, stream.len()]);
        cuts.sort_unstable();
        cuts.dedup();
        let chunks: Vec<Bytes> = cuts
            .windows(2)
            .map(|w| Bytes::copy_from_slice(&stream[w[0]..w[1]]))
            .collect();
        let decoded = decode_all(body(chunks.clone(), None), 1 << 20);
        prop_assert_eq!(decoded.len(), messages.len());
        let mut start = 0;
        for (got, sent) in decoded.into_iter().zip(&messages) {
            let got = got.expect("decodes");
            prop_assert_eq!(&got, sent);
            // A batch inside one chunk is not copied, wherever the rest of its message
            // is. prost writes it after the topic and partition, behind its key and
            // length.
            let before = PublishBatchRequest {
                batch: Bytes::new(),
                ack: 0,
                relative_times: false,
                ..sent.clone()
            }
            .encoded_len();
            let batch_start =
                start + 5 + before + 1 + encoded_len_varint(sent.batch.len() as u64);
            let batch_end = batch_start + sent.batch.len();
            let chunk_ends: Vec<usize> = cuts[1..].to_vec();
            let first_chunk = chunk_ends.iter().position(|e| *e > batch_start);
            let last_chunk = chunk_ends.iter().position(|e| *e >= batch_end);
            if !got.batch.is_empty() && first_chunk == last_chunk {
                let chunk = &chunks[first_chunk.unwrap()];
                prop_assert!(chunk.as_ptr_range().contains(&got.batch.as_ptr()), "copied");
            }
            start += framed(sent).len();
        }
    }
}

#[test]
fn request_messages_refuse_what_they_cannot_take() {
    // Over the limit: refused from the header alone, with the limit named.
    let big = framed(&publish_batch(5_000, 1));
    let got = decode_all(body(vec![Bytes::copy_from_slice(&big[..5])], None), 4_000);
    assert_eq!(got.len(), 1);
    let status = got[0].as_ref().unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("4000 bytes"), "{status:?}");

    // A compressed message without an encoding.
    let mut compressed = framed(&publish_batch(10, 2));
    compressed[0] = 1;
    let got = decode_all(body(vec![Bytes::from(compressed)], None), 1 << 20);
    assert_eq!(got[0].as_ref().unwrap_err().code(), tonic::Code::Internal);

    // A body that ends inside a message.
    let whole = framed(&publish_batch(100, 3));
    let got = decode_all(
        body(vec![Bytes::copy_from_slice(&whole[..50])], None),
        1 << 20,
    );
    assert_eq!(got.len(), 1);
    let status = got[0].as_ref().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal);
    assert!(status.message().contains("EOF"), "{status:?}");

    // A message that does not parse ends the stream: what follows is not read.
    let mut garbage = vec![0, 0, 0, 0, 3, 0xff, 0xff, 0xff];
    garbage.extend(framed(&publish_batch(10, 4)));
    let got = decode_all(body(vec![Bytes::from(garbage)], None), 1 << 20);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].as_ref().unwrap_err().code(), tonic::Code::Internal);

    // The body's own error, after the messages before it.
    let got = decode_all(
        body(
            vec![Bytes::from(whole)],
            Some(Status::cancelled("connection reset")),
        ),
        1 << 20,
    );
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].as_ref().unwrap(), &publish_batch(100, 3));
    assert_eq!(got[1].as_ref().unwrap_err().code(), tonic::Code::Cancelled);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A publish's batch goes out as a piece of its own when large, and the pieces
    /// decode to the request, on the stream and unary.
    #[test]
    fn publish_pieces_decode_to_the_message(
        len in prop_oneof![0usize..64, (COPY_BELOW - 2)..(COPY_BELOW + 2), 0usize..300_000],
        request_id in any::<u64>(),
        fill in any::<u8>(),
    ) {
        let batch = publish_batch(len, fill);
        let pieces = Pieces::publish_batch(batch.clone());
        let frame = joined(&pieces);
        prop_assert_eq!(PublishBatchRequest::decode(message_of(&frame)).unwrap(), batch.clone());
        assert_not_copied(&pieces, std::slice::from_ref(&batch.batch));

        let request = PublishStreamRequest { request_id, request: None, batch: Some(batch.clone()) };
        let pieces = Pieces::publish_stream_request(request.clone());
        let frame = joined(&pieces);
        prop_assert_eq!(PublishStreamRequest::decode(message_of(&frame)).unwrap(), request);
        assert_not_copied(&pieces, std::slice::from_ref(&batch.batch));
    }
}

fn trailers(code: tonic::Code, message: &str) -> Frame<Bytes> {
    let mut map = http::HeaderMap::new();
    Status::new(code, message).add_header(&mut map).unwrap();
    Frame::trailers(map)
}

fn decode_response(frames: Vec<Frame<Bytes>>) -> Vec<Result<PublishBatchRequest, Status>> {
    let body = Body::new(Chunks {
        frames: frames.into_iter().map(Ok).collect(),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime
        .block_on(Messages::<PublishBatchRequest>::new(body, Trailers::Status, 1 << 20).collect())
}

/// A response's status comes from its trailers: OK ends the messages, another code is
/// the last item, and a body without trailers ends with an error, not quietly.
#[test]
fn a_response_ends_with_the_status_in_its_trailers() {
    let one = Frame::data(Bytes::from(framed(&publish_batch(2_000, 4))));
    let got = decode_response(vec![one, trailers(tonic::Code::Ok, "")]);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].as_ref().unwrap(), &publish_batch(2_000, 4));

    let got = decode_response(vec![
        Frame::data(Bytes::from(framed(&publish_batch(2_000, 4)))),
        trailers(tonic::Code::NotFound, "topic orders was deleted"),
    ]);
    assert_eq!(got.len(), 2);
    let status = got[1].as_ref().unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "topic orders was deleted");

    let got = decode_response(vec![Frame::data(Bytes::from(framed(&publish_batch(
        10, 5,
    ))))]);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].as_ref().unwrap_err().code(), tonic::Code::Internal);

    // A request's trailers (none expected) are dropped.
    let body = Body::new(Chunks {
        frames: [
            Ok(Frame::data(Bytes::from(framed(&publish_batch(10, 6))))),
            Ok(trailers(tonic::Code::Internal, "ignored")),
        ]
        .into_iter()
        .collect(),
    });
    let got = decode_all(body, 1 << 20);
    assert_eq!(got.len(), 1);
    assert!(got[0].is_ok());
}

/// A request body ends after its messages, without trailers; a response body ends
/// with the status.
#[test]
fn pieces_bodies_end_as_their_side_does() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let collect = |body: PiecesBody| {
        runtime.block_on(async move {
            let mut body = std::pin::pin!(body);
            let mut frames = Vec::new();
            while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                frames.push(frame.unwrap());
            }
            frames
        })
    };
    let message = publish_batch(5_000, 7);
    let request = collect(PiecesBody::request(tokio_stream::once(
        Pieces::publish_batch(message.clone()),
    )));
    assert!(request.iter().all(Frame::is_data));
    let data: Vec<u8> = request
        .into_iter()
        .flat_map(|f| f.into_data().unwrap().to_vec())
        .collect();
    assert_eq!(
        PublishBatchRequest::decode(message_of(&data)).unwrap(),
        message
    );

    let response = collect(PiecesBody::response(tokio_stream::iter([
        Ok(Pieces::message(&message)),
        Err(Status::permission_denied("token revoked")),
    ])));
    let last = response.last().unwrap().trailers_ref().unwrap();
    let status = Status::from_header_map(last).unwrap();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.message(), "token revoked");
}
