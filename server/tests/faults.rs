//! The broker core over a storage engine whose fsync fails (storage's `FaultyFs`):
//! what publishers and subscribers of a poisoned partition see. In-process, because a
//! black-box test cannot make the disk fail.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{AckLevel, Message, PublishRequest, ResetPolicy};
use tidelog_server::config::Settings;
use tidelog_server::groups::GroupCoordinator;
use tidelog_server::metrics::Metrics;
use tidelog_server::partitioner::RoundRobin;
use tidelog_server::queues::QueueManager;
use tidelog_server::read::{PartitionReader, ReadLimits};
use tidelog_server::shutdown::Shutdown;
use tidelog_server::{AppState, convert, publish};
use tidelog_storage::fs::{SyncFault, SyncKind};
use tidelog_storage::{FaultyFs, Store, StoreOptions, TopicConfig};
use tonic::Code;

fn request(value: &'static str) -> PublishRequest {
    PublishRequest {
        topic: "disk".into(),
        messages: vec![Message {
            value: Bytes::from_static(value.as_bytes()),
            ..Default::default()
        }],
        ack: AckLevel::Durable as i32,
    }
}

#[tokio::test]
async fn a_failed_fsync_makes_the_partition_unavailable_without_losing_reads() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::new(dir.path(), 7).unwrap();
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(
        Store::open(
            dir.path().join("data"),
            StoreOptions {
                fs: Arc::new(fs.clone()),
                retention_interval: None,
                flush_observer: Some(metrics.flush_observer()),
                ..StoreOptions::default()
            },
        )
        .unwrap(),
    );
    let topic = store
        .create_topic("disk", 1, TopicConfig::default())
        .unwrap();
    let shutdown = Shutdown::new();
    let state = Arc::new(AppState {
        groups: Arc::new(GroupCoordinator::new(store.clone(), store.clock().clone())),
        queues: Arc::new(QueueManager::new(
            store.clone(),
            metrics.clone(),
            shutdown.clone(),
        )),
        store: store.clone(),
        metrics,
        config: Arc::new(Settings::default()),
        shutdown,
        auth: Arc::new(tidelog_server::auth::Auth::disabled()),
        round_robin: RoundRobin::default(),
        topic_changes: Default::default(),
    });

    let acks = publish::publish(&state, request("kept"))
        .await
        .unwrap()
        .acks;
    assert_eq!(acks[0].offset, 0);
    let mut reader = PartitionReader::new(
        state.clone(),
        topic.clone(),
        &[(0, 0)],
        ResetPolicy::Earliest,
        ReadLimits::from_request(0, 0),
        None,
    )
    .unwrap();
    match reader.next_event().await.unwrap().event.unwrap() {
        Event::Batch(batch) => assert_eq!(batch.messages[0].value, "kept"),
        other => panic!("unexpected {other:?}"),
    }

    // The next fdatasync fails: the publish waiting for it is not acknowledged.
    fs.fail_sync(SyncFault::nth(1).kinds(&[SyncKind::Data]));
    let failed = publish::publish(&state, request("lost")).await.unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert!(failed.message().contains("poisoned"), "{failed:?}");
    // Every later write is refused the same way, and the partition says why.
    let refused = publish::publish(&state, request("refused"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let description = convert::partition_description(&topic.partitions()[0].info());
    assert!(description.poisoned);
    assert!(!description.poison_reason.is_empty());

    // A subscriber at the end waits (its wake-up without data parks the poisoned
    // partition instead of spinning) and still ends cleanly at shutdown.
    let waited = tokio::time::timeout(Duration::from_millis(300), reader.next_event()).await;
    assert!(waited.is_err(), "no event expected, got {waited:?}");
    state.shutdown.trigger();
    let ended = reader.next_event().await.unwrap_err();
    assert_eq!(ended.code(), Code::Unavailable);

    // What was durable stays readable.
    let read = topic.partitions()[0].read(0, 10, 1 << 20).unwrap();
    assert_eq!(read.records.len(), 1);
    assert_eq!(read.records[0].value, "kept");
}
