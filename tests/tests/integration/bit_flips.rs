//! A flipped bit in bytes the broker has already made durable, in every field of a
//! batch: reads of that batch are DATA_LOSS and nothing else breaks (issue 6).

use std::path::Path;

use bytes::Bytes;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::start_position::Position;
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    AckLevel, ConsumedMessage, Message, PublishRequest, ResetPolicy, StartPosition,
    SubscribeRequest, TopicConfig,
};
use tidelog_tests::{TestBroker, create_topic};
use tonic::{Code, Status};

use crate::support::{
    Rng, always, assert_no_panic, assert_same, batch_positions, consumer, fetch, fetch_range,
    next_event, segment_logs,
};

const FLIP_TOPIC: &str = "flip";
const FLIP_ROUNDS: u64 = 40;
/// The batch (= offset: one message per batch) whose bit is flipped in segment 0.
const FLIP_OFFSET: u64 = 5;

/// Which bit each damaged partition gets flipped, by byte position in its batch
/// (`usize::MAX` = the batch's last byte): every header field, those outside the CRC
/// too, and the records section.
const FLIPS: &[(usize, u8, &str)] = &[
    (0, 0x01, "batch_length"),
    (5, 0x01, "base_offset"),
    (12, 0x01, "crc"),
    (16, 0x01, "version"),
    (17, 0x01, "attributes (codec)"),
    (20, 0x01, "last_offset_delta"),
    (24, 0x02, "record_count"),
    (30, 0x10, "first_timestamp_ms"),
    (38, 0x01, "max_timestamp_ms"),
    (51, 0x80, "max_expiry_ms sign bit"),
    (52, 0x01, "records_length"),
    (56, 0x01, "uncompressed_length"),
    (60, 0x01, "first record's length"),
    (61, 0x02, "first record's attributes"),
    (100, 0x20, "inside the value"),
    (usize::MAX, 0x01, "the batch's last byte"),
];

fn flip_message(partition: u32, round: u64) -> Message {
    let mut rng = Rng::new(u64::from(partition) << 32 | round);
    Message {
        key: Bytes::from(format!("k{round}")),
        value: Bytes::from(rng.bytes(300)),
        partition: Some(partition),
        ..Default::default()
    }
}

/// Asserts a read of `partition` served only intact messages below `damaged` (or
/// failed with DATA_LOSS): the damaged record is never returned.
fn assert_never_damaged(
    result: Result<Vec<ConsumedMessage>, Status>,
    partition: u32,
    damaged: u64,
    what: &str,
) {
    match result {
        Ok(messages) => {
            for got in &messages {
                assert_ne!(got.offset, damaged, "{what}: the damaged record was served");
                assert_same(
                    got,
                    &flip_message(partition, got.offset),
                    &format!("{what}: offset {}", got.offset),
                );
            }
        }
        Err(status) => assert_eq!(status.code(), Code::DataLoss, "{what}: {status:?}"),
    }
}

/// A flipped bit in a batch the broker has already made durable (a sealed segment,
/// or the active one before its checkpoint): reads of that batch fail with DATA_LOSS,
/// the damaged record is never served, and the rest of the partition and the other
/// partitions keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bit_before_the_tail_is_data_loss_and_nothing_else_breaks() {
    // FLIPS in segment 0, then one flip in the active segment, then an intact control.
    let active_flip = FLIPS.len() as u32;
    let control = active_flip + 1;
    let partitions = control + 1;
    let mut broker = TestBroker::start();
    let channel = broker.channel().await;
    create_topic(
        &channel,
        FLIP_TOPIC,
        partitions,
        TopicConfig {
            segment_bytes: 4096,
            fsync: always(),
            ..Default::default()
        },
    )
    .await;
    let mut publisher = PublisherClient::new(channel.clone());
    for round in 0..FLIP_ROUNDS {
        publisher
            .publish(PublishRequest {
                topic: FLIP_TOPIC.into(),
                messages: (0..partitions).map(|p| flip_message(p, round)).collect(),
                ack: AckLevel::Durable as i32,
            })
            .await
            .unwrap();
    }
    // A clean stop: everything is checkpointed, so every batch is trusted at restart.
    broker.stop();

    let data = broker.data_dir();
    // Per partition: (damaged offset, first offset of the next segment or None).
    let mut damage = Vec::new();
    for p in 0..=active_flip {
        let logs = segment_logs(&data, FLIP_TOPIC, p);
        assert!(logs.len() >= 3, "partition {p} has {} segments", logs.len());
        let segment_base =
            |path: &Path| -> u64 { path.file_stem().unwrap().to_str().unwrap().parse().unwrap() };
        let (log, damaged, (at, bit)) = if p < active_flip {
            let (at, bit, _) = FLIPS[p as usize];
            (&logs[0], FLIP_OFFSET, (at, bit))
        } else {
            // The second-to-last batch of the active segment.
            let last = logs.last().unwrap();
            (last, FLIP_ROUNDS - 2, (100, 0x04))
        };
        let base = segment_base(log);
        let mut bytes = std::fs::read(log).unwrap();
        let (start, length) = batch_positions(&bytes)[(damaged - base) as usize];
        let at = if at == usize::MAX { length - 1 } else { at };
        bytes[start + at] ^= bit;
        std::fs::write(log, &bytes).unwrap();
        let next_segment = logs.iter().map(|l| segment_base(l)).find(|&b| b > damaged);
        damage.push((damaged, next_segment));
    }

    tokio::task::block_in_place(|| broker.restart());
    let channel = broker.channel().await;
    for p in 0..=active_flip {
        let (damaged, next_segment) = damage[p as usize];
        let what = if p < active_flip {
            format!("partition {p}, {} flipped", FLIPS[p as usize].2)
        } else {
            format!("partition {p}, value flipped in the active segment")
        };
        // The damaged batch itself: DATA_LOSS.
        let status = fetch(&channel, FLIP_TOPIC, p, damaged, 1)
            .await
            .expect_err(&format!("{what}: reading the damaged batch must fail"));
        assert_eq!(status.code(), Code::DataLoss, "{what}: {status:?}");
        // The segment's messages before it: intact.
        let first = if p < active_flip { 0 } else { damaged - 3 };
        let before = fetch(&channel, FLIP_TOPIC, p, first, (damaged - first) as u32)
            .await
            .unwrap_or_else(|s| panic!("{what}: reading before the damage: {s}"));
        assert_eq!(before.messages.len() as u64, damaged - first, "{what}");
        assert_never_damaged(Ok(before.messages), p, damaged, &what);
        // A large read that runs into it returns everything before it and stops there
        // (issue 12: one damaged batch must not hide the intact messages before it).
        let across = fetch(&channel, FLIP_TOPIC, p, first, 10_000)
            .await
            .unwrap_or_else(|s| panic!("{what}: a read across the damage: {s}"));
        assert_eq!(
            (
                across.messages.first().map(|m| m.offset),
                across.messages.len() as u64
            ),
            (Some(first), damaged - first),
            "{what}: a read across the damage returns what precedes it"
        );
        assert_eq!(across.next_offset, damaged, "{what}: and stops at it");
        assert_never_damaged(
            Ok(across.messages),
            p,
            damaged,
            &format!("{what}, a read across it"),
        );
        // Reads right after it.
        let result = fetch(&channel, FLIP_TOPIC, p, damaged + 1, 10_000)
            .await
            .map(|r| r.messages);
        assert_never_damaged(result, p, damaged, &format!("{what}, a read after it"));
        // A subscriber gets what precedes it, then DATA_LOSS.
        let mut stream = consumer(&channel)
            .subscribe(SubscribeRequest {
                topic: FLIP_TOPIC.into(),
                partitions: vec![p],
                start: Some(StartPosition {
                    position: Some(Position::Offset(first)),
                }),
                reset_policy: ResetPolicy::Error as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut received = Vec::new();
        let ended = loop {
            match next_event(&mut stream).await {
                Ok(Some(Event::Batch(batch))) => received.extend(batch.messages),
                Ok(other) => panic!("{what}: subscriber got {other:?}"),
                Err(status) => break status,
            }
        };
        assert_eq!(ended.code(), Code::DataLoss, "{what}: {ended:?}");
        assert_eq!(
            received.len() as u64,
            damaged - first,
            "{what}: the subscriber gets every message before the damage"
        );
        assert_never_damaged(Ok(received), p, damaged, &format!("{what}, subscriber"));
        // The segments after it serve everything, byte for byte.
        if let Some(next) = next_segment {
            let rest = fetch_range(&channel, FLIP_TOPIC, p, next, FLIP_ROUNDS)
                .await
                .unwrap_or_else(|s| panic!("{what}: reading from {next}: {s}"));
            assert_eq!(rest.len() as u64, FLIP_ROUNDS - next, "{what}");
            assert_never_damaged(Ok(rest), p, damaged, &what);
        }
    }
    // The untouched partition serves everything.
    let all = fetch_range(&channel, FLIP_TOPIC, control, 0, FLIP_ROUNDS)
        .await
        .unwrap();
    assert_eq!(all.len() as u64, FLIP_ROUNDS);
    assert_never_damaged(Ok(all), control, u64::MAX, "control partition");
    // Every partition still takes new messages, at the end.
    let acks = PublisherClient::new(channel.clone())
        .publish(PublishRequest {
            topic: FLIP_TOPIC.into(),
            messages: (0..partitions)
                .map(|p| flip_message(p, FLIP_ROUNDS))
                .collect(),
            ack: AckLevel::Durable as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .acks;
    assert!(acks.iter().all(|a| a.offset == FLIP_ROUNDS), "{acks:?}");
    broker.stop();
    assert_no_panic(&broker);
}
