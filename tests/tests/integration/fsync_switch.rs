//! AlterTopicConfig to fsync "always" takes back nothing readers saw: the end offset
//! stays, a Fetch at the end stays in range, a Subscribe stream and group members go on
//! from where they were (no reset, nothing delivered twice), and a kill -9 right after
//! the switch keeps every acknowledged message. (The switch used to drop the end
//! offset to the durable one, 0 on a `never` topic, and groups re-read everything.)

use std::time::Duration;

use tidelog_proto::v1::start_position::{Earliest, Position};
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    AckLevel, AlterTopicConfigRequest, CommitOffsetsRequest, GroupMembership, Message,
    PublishRequest, StartPosition, SubscribeRequest, SubscribeResponse, TopicConfig,
    TopicConfigUpdate, TopicPartitionOffset,
};
use tidelog_tests::TestBroker;
use tonic::Streaming;

use crate::support::{always, fetch, fetch_range, never, next_event};

const TOPIC: &str = "switch";

async fn publish(broker: &TestBroker, from: u64, count: u64, ack: AckLevel) {
    let mut publisher = broker.publisher().await;
    for first in (from..from + count).step_by(100) {
        publisher
            .publish(PublishRequest {
                topic: TOPIC.into(),
                messages: (first..(first + 100).min(from + count))
                    .map(|n| Message {
                        value: format!("m{n}").into_bytes().into(),
                        partition: Some(0),
                        ..Default::default()
                    })
                    .collect(),
                ack: ack as i32,
            })
            .await
            .expect("publish");
    }
}

async fn alter_fsync(broker: &TestBroker, fsync: Option<tidelog_proto::v1::FsyncPolicy>) {
    broker
        .admin()
        .await
        .alter_topic_config(AlterTopicConfigRequest {
            name: TOPIC.into(),
            update: Some(TopicConfigUpdate {
                fsync,
                ..Default::default()
            }),
        })
        .await
        .expect("AlterTopicConfig");
}

/// (end_offset, written_offset) of partition 0.
async fn ends(broker: &TestBroker) -> (u64, u64) {
    let topic = broker.describe_topic(TOPIC).await;
    let partition = &topic.partitions[0];
    (partition.end_offset, partition.written_offset)
}

async fn subscribe(broker: &TestBroker, group: Option<&str>) -> Streaming<SubscribeResponse> {
    broker
        .consumer()
        .await
        .subscribe(SubscribeRequest {
            topic: TOPIC.into(),
            start: group.is_none().then_some(StartPosition {
                position: Some(Position::Earliest(Earliest {})),
            }),
            group: group.map(|g| GroupMembership {
                group_id: g.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner()
}

/// The offsets the stream delivers until it has delivered `until` (exclusive), failing
/// on any position reset.
async fn read_until(stream: &mut Streaming<SubscribeResponse>, until: u64, what: &str) -> Vec<u64> {
    let mut offsets = Vec::new();
    while offsets.last().is_none_or(|last| last + 1 < until) {
        match next_event(stream).await.expect(what).expect(what) {
            Event::Batch(batch) => offsets.extend(batch.messages.iter().map(|m| m.offset)),
            Event::PositionReset(reset) => panic!("{what}: reset {reset:?}"),
            _ => {}
        }
    }
    offsets
}

async fn commit(broker: &TestBroker, group: &str, offset: u64) {
    broker
        .groups()
        .await
        .commit_offsets(CommitOffsetsRequest {
            group_id: group.into(),
            offsets: vec![TopicPartitionOffset {
                topic: TOPIC.into(),
                partition: 0,
                offset,
                metadata: String::new(),
                topic_id: 0,
            }],
            ..Default::default()
        })
        .await
        .expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_fsync_always_takes_back_nothing_readers_saw() {
    let mut broker = TestBroker::start();
    broker
        .create_topic(
            TOPIC,
            1,
            TopicConfig {
                fsync: never(),
                ..Default::default()
            },
        )
        .await;
    publish(&broker, 0, 1000, AckLevel::Written).await;
    assert_eq!(ends(&broker).await, (1000, 1000));
    // A group that read everything, with a member reading on; a group that read
    // everything and joins after the switch; a Subscribe stream that read everything.
    commit(&broker, "before", 1000).await;
    commit(&broker, "after", 1000).await;
    let mut member_before = subscribe(&broker, Some("before")).await;
    let mut plain = subscribe(&broker, None).await;
    let plain_offsets = read_until(&mut plain, 1000, "plain stream").await;
    assert_eq!(plain_offsets, (0..1000).collect::<Vec<_>>());

    alter_fsync(&broker, always()).await;
    assert_eq!(
        ends(&broker).await,
        (1000, 1000),
        "the end offset readers saw stays after the switch"
    );
    let at_end = fetch(&broker.channel().await, TOPIC, 0, 1000, 10)
        .await
        .expect("a Fetch at the end offset a reader reached stays in range");
    assert!(at_end.messages.is_empty());
    let mut member_after = subscribe(&broker, Some("after")).await;
    // Quiet for a moment: nothing is delivered again, nobody is reset.
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&broker, 1000, 1, AckLevel::Durable).await;
    for (stream, what) in [
        (&mut plain, "plain stream"),
        (&mut member_before, "member subscribed before the switch"),
        (&mut member_after, "member joining after the switch"),
    ] {
        assert_eq!(
            read_until(stream, 1001, what).await,
            vec![1000],
            "{what}: only the new message, once"
        );
    }
    drop((plain, member_before, member_after));

    // Back to never, more written-only messages, the switch again and at once kill -9:
    // every message readers saw before the switch is there after the restart.
    alter_fsync(&broker, never()).await;
    publish(&broker, 1001, 499, AckLevel::Written).await;
    assert_eq!(ends(&broker).await, (1500, 1500));
    alter_fsync(&broker, always()).await;
    assert_eq!(ends(&broker).await, (1500, 1500));
    broker.kill9();
    broker.restart();
    assert_eq!(ends(&broker).await, (1500, 1500));
    let messages = fetch_range(&broker.channel().await, TOPIC, 0, 0, 1500)
        .await
        .expect("fetch after the restart");
    for (n, message) in messages.iter().enumerate() {
        assert_eq!(message.offset, n as u64);
        assert_eq!(message.value, format!("m{n}").into_bytes());
    }
    assert_eq!(messages.len(), 1500);
}
