//! A message's id, deliver-at time and priority through the real broker: stored with
//! it, delivered with it by Fetch and Subscribe (which read in log order and do not
//! wait for the time), and the topic's priority levels in describe and alter.

use tidelog_proto::v1::start_position::{Earliest, Position};
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    AckLevel, AlterTopicConfigRequest, FetchRequest, Message, PublishRequest, StartPosition,
    SubscribeRequest, TopicConfig, TopicConfigUpdate,
};
use tidelog_tests::{TestBroker, now_ms};

#[tokio::test]
async fn ids_deliver_at_times_and_priorities_are_stored_and_delivered() {
    let broker = TestBroker::start();
    broker
        .create_topic(
            "jobs",
            1,
            TopicConfig {
                priority_levels: 4,
                ..Default::default()
            },
        )
        .await;
    let later = now_ms() + 3_600_000;
    let messages = vec![
        Message {
            value: "plain".into(),
            ..Default::default()
        },
        Message {
            value: "urgent".into(),
            id: "job-7".into(),
            priority: 3,
            ..Default::default()
        },
        Message {
            value: "at".into(),
            deliver_at_ms: Some(later),
            ..Default::default()
        },
        Message {
            value: "delayed".into(),
            delay_ms: Some(60_000),
            ..Default::default()
        },
    ];
    let before = now_ms();
    broker
        .publisher()
        .await
        .publish(PublishRequest {
            topic: "jobs".into(),
            messages,
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publish");
    let after = now_ms();

    let fetched = broker
        .consumer()
        .await
        .fetch(FetchRequest {
            topic: "jobs".into(),
            ..Default::default()
        })
        .await
        .expect("fetch")
        .into_inner()
        .messages;
    assert_eq!(
        fetched.len(),
        4,
        "log readers do not wait for deliver-at times"
    );
    assert_eq!(
        (
            fetched[0].id.is_empty(),
            fetched[0].deliver_at_ms,
            fetched[0].priority
        ),
        (true, None, 0)
    );
    assert_eq!(
        (&fetched[1].id[..], fetched[1].priority),
        (&b"job-7"[..], 3)
    );
    assert_eq!(fetched[2].deliver_at_ms, Some(later));
    let delayed = fetched[3]
        .deliver_at_ms
        .expect("a delay becomes a deliver-at time");
    assert!(
        (before + 60_000..=after + 60_000).contains(&delayed),
        "{delayed} is not 60 s after the append"
    );

    let mut stream = broker
        .consumer()
        .await
        .subscribe(SubscribeRequest {
            topic: "jobs".into(),
            start: Some(StartPosition {
                position: Some(Position::Earliest(Earliest {})),
            }),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let Some(Event::Batch(batch)) = stream.message().await.unwrap().unwrap().event else {
        panic!("expected a batch");
    };
    assert_eq!(batch.messages[1].priority, 3);
    assert_eq!(&batch.messages[1].id[..], b"job-7");

    let described = broker.describe_topic("jobs").await;
    assert_eq!(described.config.unwrap().priority_levels, 4);
    let altered = broker
        .admin()
        .await
        .alter_topic_config(AlterTopicConfigRequest {
            name: "jobs".into(),
            update: Some(TopicConfigUpdate {
                priority_levels: Some(6),
                ..Default::default()
            }),
        })
        .await
        .expect("alter")
        .into_inner();
    assert_eq!(altered.topic.unwrap().config.unwrap().priority_levels, 6);
}

/// A queue keeps the priority levels its topic had when it was created: raising the
/// topic's levels while a queue (here a plain one and a pattern queue) reads it with
/// fewer is refused, naming the queues, and nothing changes; lowering is allowed, and
/// so is raising once the queues are gone.
#[tokio::test]
async fn raising_priority_levels_under_queues_that_have_fewer_is_refused() {
    use tidelog_proto::v1::queues_client::QueuesClient;
    use tidelog_proto::v1::{CreateQueueRequest, DeleteQueueRequest, QueueConfig};
    let broker = TestBroker::start();
    broker
        .create_topic(
            "jobs",
            1,
            TopicConfig {
                priority_levels: 2,
                ..TopicConfig::default()
            },
        )
        .await;
    let mut queues = QueuesClient::new(broker.channel().await);
    for (name, topic, pattern) in [("plain", "jobs", ""), ("every", "", "jo.*")] {
        queues
            .create_queue(CreateQueueRequest {
                name: name.into(),
                topic: topic.into(),
                topic_pattern: pattern.into(),
                config: Some(QueueConfig::default()),
                ..Default::default()
            })
            .await
            .expect("create the queue");
    }
    let alter = |levels: u32| AlterTopicConfigRequest {
        name: "jobs".into(),
        update: Some(TopicConfigUpdate {
            priority_levels: Some(levels),
            ..Default::default()
        }),
    };
    let status = broker
        .admin()
        .await
        .alter_topic_config(alter(6))
        .await
        .expect_err("raised under queues with 2 levels");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    for part in ["cannot be raised to 6", "every, plain", "create them again"] {
        assert!(status.message().contains(part), "{part:?}: {status:?}");
    }
    let described = broker.describe_topic("jobs").await;
    assert_eq!(
        described.config.unwrap().priority_levels,
        2,
        "nothing changed"
    );

    // Lowering is allowed; so is raising back to what the queues have.
    for levels in [1, 2] {
        broker
            .admin()
            .await
            .alter_topic_config(alter(levels))
            .await
            .expect("not above the queues' levels");
    }
    for name in ["plain", "every"] {
        queues
            .delete_queue(DeleteQueueRequest { name: name.into() })
            .await
            .expect("delete the queue");
    }
    broker
        .admin()
        .await
        .alter_topic_config(alter(6))
        .await
        .expect("no queue reads the topic any more");
}
