//! A queue's bad arguments through the real broker (hunt 12a): a Receive over its
//! documented bounds is INVALID_ARGUMENT, not quietly capped; a settlement naming a
//! partition the topic does not have, a nack delay or an extension out of range is
//! INVALID_ARGUMENT whether or not the message is held (arguments are checked before
//! the state), and leaves a held message held.

use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::settlement::{Ack, Action, InProgress, Nack};
use tidelog_proto::v1::{QueueConfig, ReceiveRequest, SettleRequest, Settlement, TopicConfig};
use tidelog_tests::TestBroker;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{create_queue, publish_values};

async fn queues(broker: &TestBroker) -> QueuesClient<Channel> {
    QueuesClient::new(broker.channel().await)
}

async fn receive(
    broker: &TestBroker,
    max_messages: u32,
    max_wait_ms: u64,
) -> Result<usize, tonic::Status> {
    queues(broker)
        .await
        .receive(ReceiveRequest {
            queue: "q".into(),
            member: "m".into(),
            max_messages,
            max_wait_ms,
        })
        .await
        .map(|r| r.into_inner().deliveries.len())
}

/// The code and message of one settlement of queue `q`.
async fn settle(
    broker: &TestBroker,
    partition: u32,
    offset: u64,
    action: Action,
) -> (Code, String) {
    let outcome = queues(broker)
        .await
        .settle(SettleRequest {
            queue: "q".into(),
            settlements: vec![Settlement {
                partition,
                offset,
                action: Some(action),
                ..Default::default()
            }],
        })
        .await
        .expect("the Settle call itself succeeds")
        .into_inner()
        .outcomes
        .remove(0);
    (Code::from_i32(outcome.code), outcome.message)
}

#[tokio::test]
async fn out_of_range_receive_and_settle_arguments_are_invalid_whatever_the_state() {
    let broker = TestBroker::start();
    broker.create_topic("t", 1, TopicConfig::default()).await;
    publish_values(&broker, "t", vec![b"held".to_vec(), b"ready".to_vec()]).await;
    create_queue(&broker, "q", "t", QueueConfig::default()).await;

    for (max_messages, max_wait_ms, what) in [
        (1_001, 0, "max_messages 1001"),
        (1, 30_001, "max_wait_ms 30001"),
        (u32::MAX, 0, "max_messages 4294967295"),
    ] {
        let refused = receive(&broker, max_messages, max_wait_ms)
            .await
            .expect_err(what);
        assert_eq!(refused.code(), Code::InvalidArgument, "{what}: {refused:?}");
        assert!(refused.message().contains(what), "{refused:?}");
    }
    // At the bound: taken. Offset 0 is held from here on, offset 1 is not.
    assert_eq!(receive(&broker, 1, 30_000).await.unwrap(), 1);

    let ack = || Action::Ack(Ack {});
    let nack = || {
        Action::Nack(Nack {
            delay_ms: Some(43_200_001),
            reason: String::new(),
        })
    };
    let extend = || {
        Action::InProgress(InProgress {
            extend_ms: Some(99),
        })
    };
    for offset in [0, 1] {
        for (partition, action, what) in [
            (1, ack(), "partition 1 is out of range"),
            (7, nack(), "partition 7 is out of range"),
            (0, nack(), "delay_ms 43200001"),
            (0, extend(), "extend_ms 99"),
        ] {
            let (code, message) = settle(&broker, partition, offset, action).await;
            assert_eq!(code, Code::InvalidArgument, "offset {offset}: {message}");
            assert!(message.contains(what), "offset {offset}: {message}");
        }
    }
    // Nothing changed: the held message is acked, the other one is not pending.
    assert_eq!(settle(&broker, 0, 0, ack()).await.0, Code::Ok);
    assert_eq!(settle(&broker, 0, 1, ack()).await.0, Code::NotFound);
    assert_eq!(
        receive(&broker, 1_000, 0).await.unwrap(),
        1,
        "offset 1, at the bound"
    );
}
