//! A crash that tears the last batch of a partition, at every byte, seen through the
//! broker: it comes back serving exactly the intact prefix (issue 6).

use bytes::Bytes;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::{AckLevel, Header, Message, PublishRequest, TopicConfig};
use tidelog_storage::batch::{self as storage_batch, EncodeOptions};
use tidelog_storage::{Compression, NewRecord};
use tidelog_tests::{TestBroker, create_topic, describe_topic};

use crate::support::{
    assert_no_panic, assert_same, batch_positions, fetch, fetch_range, never, segment_logs,
};

const TORN_TOPIC: &str = "torn";
const TORN_BATCHES: usize = 3;
const TORN_PER_BATCH: usize = 2;
const TORN_TS: i64 = 1_700_000_000_000;

/// Message `index` of batch `batch` of `partition`: the same sizes and timestamps in
/// every partition, so every partition's log has the same layout.
fn torn_message(partition: u32, batch: usize, index: usize) -> Message {
    Message {
        key: Bytes::from(format!("k{batch}{index}")),
        value: Bytes::from(format!("p{partition:05}-b{batch}-m{index}-").repeat(3)),
        headers: vec![Header {
            key: "h".into(),
            value: Bytes::from_static(b"\x00\xff"),
        }],
        timestamp_ms: Some(TORN_TS + (batch * TORN_PER_BATCH + index) as i64),
        partition: Some(partition),
        ..Default::default()
    }
}

fn new_record(message: &Message) -> NewRecord {
    NewRecord {
        key: (!message.key.is_empty()).then(|| message.key.clone()),
        value: message.value.clone(),
        headers: message
            .headers
            .iter()
            .map(|h| tidelog_storage::Header {
                key: h.key.clone(),
                value: h.value.clone(),
            })
            .collect(),
        timestamp_ms: message.timestamp_ms,
        ttl_ms: message.ttl_ms,
        ..NewRecord::default()
    }
}

/// A crash tears the last batch of a partition at every possible byte (one partition
/// per cut, so one restart covers them all): the broker comes back serving exactly
/// the intact batches before it, byte for byte, and new messages continue from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_last_batch_at_every_byte_serves_exactly_the_intact_prefix() {
    // The last batch's length, from the engine's own encoder.
    let last: Vec<NewRecord> = (0..TORN_PER_BATCH)
        .map(|i| new_record(&torn_message(0, TORN_BATCHES - 1, i)))
        .collect();
    let options = EncodeOptions {
        now_ms: TORN_TS,
        default_ttl_ms: None,
        compression: Compression::None,
        max_message_bytes: 1 << 20,
        priority_levels: 0,
    };
    let last_len = storage_batch::encode_batch(&last, &options)
        .unwrap()
        .bytes
        .len();
    // Partition p keeps the first p bytes of its last batch: p = 0 cuts it whole,
    // p = last_len - 1 leaves all but its last byte; header bytes included.
    let partitions = last_len as u32;

    let mut broker = TestBroker::start();
    let channel = broker.channel().await;
    // fsync=never and ack WRITTEN: nothing is flushed, so the checkpoint stays where
    // the topic was created and the whole log is unsynced tail, which a crash may tear.
    create_topic(
        &channel,
        TORN_TOPIC,
        partitions,
        TopicConfig {
            fsync: never(),
            ..Default::default()
        },
    )
    .await;
    let mut publisher = PublisherClient::new(channel.clone());
    for batch in 0..TORN_BATCHES {
        let messages = (0..partitions)
            .flat_map(|p| (0..TORN_PER_BATCH).map(move |i| torn_message(p, batch, i)))
            .collect();
        publisher
            .publish(PublishRequest {
                topic: TORN_TOPIC.into(),
                messages,
                ack: AckLevel::Written as i32,
            })
            .await
            .unwrap();
    }
    broker.kill9();

    let data = broker.data_dir();
    for p in 0..partitions {
        let logs = segment_logs(&data, TORN_TOPIC, p);
        assert_eq!(logs.len(), 1, "partition {p}: {logs:?}");
        let batches = batch_positions(&std::fs::read(&logs[0]).unwrap());
        assert_eq!(batches.len(), TORN_BATCHES, "partition {p}");
        let (start, length) = batches[TORN_BATCHES - 1];
        assert_eq!(length, last_len, "partition {p}: the last batch's length");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&logs[0])
            .unwrap()
            .set_len((start + p as usize) as u64)
            .unwrap();
    }

    tokio::task::block_in_place(|| broker.restart());
    let channel = broker.channel().await;
    let prefix = ((TORN_BATCHES - 1) * TORN_PER_BATCH) as u64;
    let description = describe_topic(&channel, TORN_TOPIC).await;
    for p in 0..partitions {
        let what = format!("partition {p} (torn {p} bytes into its last batch)");
        assert_eq!(
            description.partitions[p as usize].end_offset, prefix,
            "{what}"
        );
        let messages = fetch_range(&channel, TORN_TOPIC, p, 0, prefix)
            .await
            .unwrap_or_else(|s| panic!("{what}: {s}"));
        assert_eq!(messages.len() as u64, prefix, "{what}");
        for (offset, got) in messages.iter().enumerate() {
            assert_eq!(got.offset, offset as u64, "{what}");
            let sent = torn_message(p, offset / TORN_PER_BATCH, offset % TORN_PER_BATCH);
            assert_same(got, &sent, &format!("{what} offset {offset}"));
        }
        let beyond = fetch(&channel, TORN_TOPIC, p, prefix, 100).await.unwrap();
        assert!(beyond.messages.is_empty(), "{what}: {beyond:?}");
        if p > 0 {
            // FORMAT.md: the cut bytes are kept as <segment>.log.torn-at-<position>.
            let dir = data.join("topics").join(TORN_TOPIC).join(p.to_string());
            let kept = std::fs::read_dir(&dir).unwrap().any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".torn-at-")
            });
            assert!(kept, "{what}: no .torn-at- file in {}", dir.display());
        }
    }

    // New messages continue from the end of the intact prefix, and read back.
    let messages: Vec<Message> = (0..partitions)
        .map(|p| Message {
            value: Bytes::from(format!("after-{p}")),
            partition: Some(p),
            ..Default::default()
        })
        .collect();
    let acks = PublisherClient::new(channel.clone())
        .publish(PublishRequest {
            topic: TORN_TOPIC.into(),
            messages: messages.clone(),
            ack: AckLevel::Durable as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .acks;
    for (ack, sent) in acks.iter().zip(&messages) {
        assert_eq!(ack.offset, prefix, "partition {}", ack.partition);
        let got = fetch(&channel, TORN_TOPIC, ack.partition, prefix, 10)
            .await
            .unwrap();
        assert_eq!(got.messages.len(), 1);
        assert_same(&got.messages[0], sent, "after the restart");
    }
    broker.stop();
    assert_no_panic(&broker);
}
