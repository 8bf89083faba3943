//! Long polls under `--auth`: a Fetch, FetchBatches or Receive waiting for a message
//! checks the caller's access again before it answers, so a token revoked or a rule
//! removed while it waits refuses the answer (as an open stream ends within a second
//! of it), and a Receive gives back what it was handed: the next member gets it at
//! the same attempt.

use std::time::Duration;

use tidelog_proto::v1::access_client::AccessClient;
use tidelog_proto::v1::admin_client::AdminClient;
use tidelog_proto::v1::consumer_client::ConsumerClient;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::{
    AclRule, CreateQueueRequest, CreateTopicRequest, FetchRequest, Message, PublishRequest,
    ReceiveRequest, RemoveAclRequest, RevokeTokenRequest, TopicConfig,
};
use tidelog_tests::TestBroker;
use tonic::Code;

use crate::auth::{allow, bootstrap_token, create_token, with_token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_nothing_to_a_caller_revoked_or_denied_while_it_waited() {
    let broker = TestBroker::start_with(&["--auth"]);
    let channel = broker.channel().await;
    let admin = with_token(&channel, Some(&bootstrap_token(&broker)));
    AdminClient::new(admin.clone())
        .create_topic(CreateTopicRequest {
            name: "orders".into(),
            partitions: 1,
            config: Some(TopicConfig::default()),
        })
        .await
        .unwrap();
    QueuesClient::new(admin.clone())
        .create_queue(CreateQueueRequest {
            name: "work".into(),
            topic: "orders".into(),
            ..CreateQueueRequest::default()
        })
        .await
        .unwrap();
    let rules = [("topic:orders", "consume"), ("queue:work", "consume")];
    for (round, ending) in ["revoke", "remove the rules"].into_iter().enumerate() {
        for (resource, operation) in rules {
            allow(&admin, "reader", resource, operation).await;
        }
        let reader = with_token(&channel, Some(&create_token(&admin, "reader", 0).await));
        let offset = round as u64;
        let fetch = |batches: bool| {
            let reader = reader.clone();
            tokio::spawn(async move {
                let request = FetchRequest {
                    topic: "orders".into(),
                    offset,
                    max_wait_ms: 10_000,
                    ..FetchRequest::default()
                };
                let mut consumer = ConsumerClient::new(reader);
                if batches {
                    consumer.fetch_batches(request).await.map(drop)
                } else {
                    consumer.fetch(request).await.map(drop)
                }
            })
        };
        let fetching = [fetch(false), fetch(true)];
        let receiving = {
            let reader = reader.clone();
            tokio::spawn(async move {
                QueuesClient::new(reader)
                    .receive(ReceiveRequest {
                        queue: "work".into(),
                        member: "reader".into(),
                        max_messages: 1,
                        max_wait_ms: 10_000,
                    })
                    .await
                    .map(|r| r.into_inner().deliveries.len())
            })
        };
        // The calls wait; then access goes, then a message comes.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut access = AccessClient::new(admin.clone());
        let expected = if ending == "revoke" {
            let tokens = access
                .list_tokens(tidelog_proto::v1::ListTokensRequest::default())
                .await
                .unwrap()
                .into_inner()
                .tokens;
            for token in tokens.iter().filter(|t| t.principal == "reader") {
                access
                    .revoke_token(RevokeTokenRequest {
                        id: token.id.clone(),
                    })
                    .await
                    .unwrap();
            }
            Code::Unauthenticated
        } else {
            for (resource, operation) in rules {
                access
                    .remove_acl(RemoveAclRequest {
                        rule: Some(AclRule {
                            principal: "reader".into(),
                            resource: resource.into(),
                            operation: operation.into(),
                            effect: "allow".into(),
                        }),
                    })
                    .await
                    .unwrap();
            }
            Code::PermissionDenied
        };
        PublisherClient::new(admin.clone())
            .publish(PublishRequest {
                topic: "orders".into(),
                messages: vec![Message {
                    value: format!("after {ending}").into(),
                    ..Message::default()
                }],
                ..PublishRequest::default()
            })
            .await
            .unwrap();
        for (what, call) in ["Fetch", "FetchBatches"].into_iter().zip(fetching) {
            let answer = tokio::time::timeout(Duration::from_secs(15), call)
                .await
                .expect("answered")
                .unwrap();
            let status = answer.expect_err(&format!("{what} after {ending}: refused"));
            assert_eq!(status.code(), expected, "{what} after {ending}: {status:?}");
        }
        let answer = tokio::time::timeout(Duration::from_secs(15), receiving)
            .await
            .expect("answered")
            .unwrap();
        let status = answer.expect_err(&format!("Receive after {ending}: refused"));
        assert_eq!(
            status.code(),
            expected,
            "Receive after {ending}: {status:?}"
        );
        // What the refused Receive was handed is given back: the next member gets it
        // at once, at its first attempt.
        let next = QueuesClient::new(admin.clone())
            .receive(ReceiveRequest {
                queue: "work".into(),
                member: "admin".into(),
                max_messages: 10,
                max_wait_ms: 5_000,
            })
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        assert_eq!(next.len(), 1, "after {ending}: {next:?}");
        let delivery = &next[0];
        let message = delivery.message.as_ref().expect("a message");
        assert_eq!(
            (message.offset, delivery.attempt),
            (offset, 1),
            "after {ending}"
        );
        QueuesClient::new(admin.clone())
            .settle(tidelog_proto::v1::SettleRequest {
                queue: "work".into(),
                settlements: vec![tidelog_proto::v1::Settlement {
                    partition: message.partition,
                    offset: message.offset,
                    attempt: delivery.attempt,
                    receipt: delivery.receipt.clone(),
                    action: Some(tidelog_proto::v1::settlement::Action::Ack(
                        Default::default(),
                    )),
                    ..Default::default()
                }],
            })
            .await
            .unwrap();
    }
}
