use super::*;

use proptest::prelude::*;
use tidelog_proto::v1::{Assignment, PartitionPosition, PositionReset};

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
