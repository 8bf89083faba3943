//! A queue with a filter: only matching messages are delivered, the others are passed
//! over as settled (acked), and the filter survives an alter, a reopen (state-log
//! replay) and a compaction.

use std::sync::Arc;

use bytes::Bytes;
use tidelog_storage::queue::admin::{self, queue_status};
use tidelog_storage::queue::{
    QueueConfig, QueueEngine, QueueOp, SettleAction, SettleRequest, StartAt,
};
use tidelog_storage::statelog::LogOp;
use tidelog_storage::{FsyncPolicy, Header, NewRecord, Store, StoreOptions, TopicConfig};

fn open(dir: &std::path::Path) -> Arc<Store> {
    Arc::new(
        Store::open(
            dir,
            StoreOptions {
                flush_threads: 1,
                retention_interval: None,
                ..StoreOptions::default()
            },
        )
        .unwrap(),
    )
}

/// Message `i`: header `kind` = "order" for every tenth, "other" otherwise; values
/// JSON for even `i`, plain text for odd.
fn message(i: u64) -> NewRecord {
    let kind = if i % 10 == 3 { "order" } else { "other" };
    let value = if i.is_multiple_of(2) {
        format!(r#"{{"n": {i}}}"#)
    } else {
        format!("text {i}")
    };
    NewRecord {
        value: Bytes::from(value),
        headers: vec![Header {
            key: "kind".into(),
            value: Bytes::from_static(kind.as_bytes()),
        }],
        ..NewRecord::default()
    }
}

/// A topic whose appends readers see at once (no wait for the group commit).
fn visible_at_once() -> TopicConfig {
    TopicConfig {
        fsync: FsyncPolicy::Never,
        ..TopicConfig::default()
    }
}

fn filtered_config(filter: &str) -> QueueConfig {
    QueueConfig {
        filter: Some(filter.into()),
        ..QueueConfig::defaults_for("jobs")
    }
}

#[test]
fn only_matching_messages_are_delivered_and_the_rest_are_settled() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let topic = store.create_topic("jobs", 1, visible_at_once()).unwrap();
    let records: Vec<NewRecord> = (0..100).map(message).collect();
    topic.partition(0).unwrap().append(&records).unwrap();
    admin::create_queue(
        &*store,
        "orders",
        "jobs",
        StartAt::Earliest,
        filtered_config(r#"header.kind == "order""#),
    )
    .unwrap();
    let mut engine = QueueEngine::open(store.clone(), "orders").unwrap();
    engine.member_joined("m");
    let mut delivered = Vec::new();
    for _ in 0..10 {
        for (_, batch) in engine.deliver(&[("m".into(), 100)]).unwrap() {
            delivered.extend(batch.iter().map(|d| d.record.offset));
        }
    }
    let expected: Vec<u64> = (0..100).filter(|i| i % 10 == 3).collect();
    assert_eq!(delivered, expected);
    assert_eq!(engine.counters.filtered, 90);
    assert_eq!(engine.counters.filtered_not_json, 0);
    for offset in &delivered {
        engine
            .settle(
                Some("m"),
                &[SettleRequest {
                    partition: 0,
                    offset: *offset,
                    attempt: 0,
                    action: SettleAction::Ack { through: None },
                }],
            )
            .unwrap();
    }
    // Every message is settled: the skipped ones count as acked.
    let status = queue_status(&*store, "orders", store.clock().now_ms()).unwrap();
    let p = &status.partitions[0];
    assert_eq!(
        (
            status.partitions.len(),
            p.partition,
            p.settled_below,
            p.end_offset
        ),
        (1, 0, 100, 100)
    );
    assert_eq!(status.ready, 0);
    assert_eq!(status.unacked, 0);
}

#[test]
fn a_json_filter_skips_values_that_are_not_json_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let topic = store.create_topic("jobs", 1, visible_at_once()).unwrap();
    let records: Vec<NewRecord> = (0..20).map(message).collect();
    topic.partition(0).unwrap().append(&records).unwrap();
    admin::create_queue(
        &*store,
        "big",
        "jobs",
        StartAt::Earliest,
        filtered_config("json.n >= 10"),
    )
    .unwrap();
    let mut engine = QueueEngine::open(store.clone(), "big").unwrap();
    engine.member_joined("m");
    let delivered: Vec<u64> = engine
        .deliver(&[("m".into(), 100)])
        .unwrap()
        .into_iter()
        .flat_map(|(_, batch)| batch.into_iter().map(|d| d.record.offset))
        .collect();
    assert_eq!(delivered, vec![10, 12, 14, 16, 18]);
    assert_eq!(engine.counters.filtered, 15);
    assert_eq!(engine.counters.filtered_not_json, 10);
}

#[test]
fn the_filter_is_kept_through_alter_reopen_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let filter = r#"header.kind in ("order", "refund") && !exists(header.test)"#;
    {
        let store = open(dir.path());
        store
            .create_topic("jobs", 2, TopicConfig::default())
            .unwrap();
        admin::create_queue(
            &*store,
            "q",
            "jobs",
            StartAt::Latest,
            filtered_config(filter),
        )
        .unwrap();
        admin::create_queue(
            &*store,
            "plain",
            "jobs",
            StartAt::Latest,
            QueueConfig::defaults_for("jobs"),
        )
        .unwrap();
        admin::alter_queue(&*store, "q", |c| c.max_deliveries = 9).unwrap();
        let config = store.queues().read(|q| q.get("q").unwrap().config.clone());
        assert_eq!(config.filter.as_deref(), Some(filter));
        assert_eq!(config.max_deliveries, 9);
        store.close().unwrap();
        drop(store);
    }
    let store = open(dir.path());
    let config = store.queues().read(|q| q.get("q").unwrap().config.clone());
    assert_eq!(config.filter.as_deref(), Some(filter), "after replay");
    assert_eq!(config.max_deliveries, 9);
    let plain = store
        .queues()
        .read(|q| q.get("plain").unwrap().config.clone());
    assert_eq!(plain.filter, None);
    store.queues().compact().unwrap();
    store.close().unwrap();
    drop(store);
    let store = open(dir.path());
    let config = store.queues().read(|q| q.get("q").unwrap().config.clone());
    assert_eq!(config.filter.as_deref(), Some(filter), "after compaction");
    store.close().unwrap();
    drop(store);
}

#[test]
fn a_create_without_a_filter_keeps_its_kind_and_one_with_a_filter_round_trips() {
    let create = |config: QueueConfig| QueueOp::Create {
        name: "q".into(),
        topic: "jobs".into(),
        config,
        levels: 1,
        created_ms: 5,
        cursors: vec![(0, vec![7])],
    };
    let plain = create(QueueConfig::defaults_for("jobs"));
    let mut bytes = Vec::new();
    plain.encode(&mut bytes).unwrap();
    assert_eq!(bytes[0], 12, "kind 12: create (v2), as before filters");
    let filtered = create(filtered_config("key ^= \"eu-\""));
    let mut bytes = Vec::new();
    filtered.encode(&mut bytes).unwrap();
    assert_eq!(bytes[0], 14, "kind 14: create with a filter");
    let mut reader = tidelog_storage::statelog::OpReader::new(&bytes);
    assert_eq!(QueueOp::decode(&mut reader).unwrap(), filtered);
    assert_eq!(reader.remaining(), 0);
}

#[test]
fn a_malformed_filter_is_refused_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.create_topic("jobs", 1, visible_at_once()).unwrap();
    let error = admin::create_queue(
        &*store,
        "q",
        "jobs",
        StartAt::Latest,
        filtered_config("header.kind = \"order\""),
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("filter at byte 12: expected an operator"),
        "{text}"
    );
    assert!(store.queues().read(|q| q.get("q").is_none()));
}

#[test]
fn overflow_passes_over_what_the_filter_skips_and_dead_letters_only_matches() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let topic = store
        .create_topic(
            "jobs",
            1,
            TopicConfig {
                queue_max_ready_messages: Some(5),
                queue_overflow: tidelog_storage::QueueOverflow::DeadLetterOldest,
                ..visible_at_once()
            },
        )
        .unwrap();
    let records: Vec<NewRecord> = (0..100).map(message).collect();
    topic.partition(0).unwrap().append(&records).unwrap();
    admin::create_queue(
        &*store,
        "orders",
        "jobs",
        StartAt::Earliest,
        filtered_config(r#"header.kind == "order""#),
    )
    .unwrap();
    let mut engine = QueueEngine::open(store.clone(), "orders").unwrap();
    // The caps count the backlog as stored (the filter has not looked at it yet):
    // 95 over. Passing over a skipped message settles it like a dead letter does.
    let dropped = engine.enforce_caps().unwrap();
    let matching_passed = (0..95u64).filter(|i| i % 10 == 3).count() as u64;
    assert_eq!(dropped, matching_passed);
    assert_eq!(engine.counters.filtered, 95 - matching_passed);
    let dlq = store.topic("jobs.dlq").unwrap();
    let letters = dlq.partition(0).unwrap().read(0, 1000, u64::MAX).unwrap();
    assert_eq!(letters.records.len() as u64, dropped);
    assert!(letters.records.iter().all(|r| {
        r.headers
            .iter()
            .any(|h| h.key == "kind" && &h.value[..] == b"order")
    }));
    let status = queue_status(&*store, "orders", 0).unwrap();
    assert_eq!(status.ready, 5);
}

#[test]
fn a_message_the_filter_skips_says_filtered_in_its_status() {
    use tidelog_storage::queue::inspect::{MessageAt, QueueState, message_at, queue_state};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let topic = store.create_topic("jobs", 1, visible_at_once()).unwrap();
    let records: Vec<NewRecord> = (0..20).map(message).collect();
    topic.partition(0).unwrap().append(&records).unwrap();
    admin::create_queue(
        &*store,
        "orders",
        "jobs",
        StartAt::Earliest,
        filtered_config(r#"header.kind == "order""#),
    )
    .unwrap();
    let state = |offset: u64| {
        let at = message_at(&topic, 0, offset).unwrap();
        assert!(matches!(at, MessageAt::Stored(_)));
        queue_state(&*store, "orders", 0, offset, &at, 0).unwrap()
    };
    // Before the queue scanned them: a match is ready, the others filtered.
    assert_eq!(state(3), QueueState::Ready);
    assert_eq!(state(4), QueueState::Filtered);
    // After: the match is held by the member, the others still filtered, not settled.
    let mut engine = QueueEngine::open(store.clone(), "orders").unwrap();
    engine.member_joined("m");
    let delivered = engine.deliver(&[("m".into(), 100)]).unwrap();
    assert_eq!(delivered[0].1[0].record.offset, 3);
    assert!(matches!(state(3), QueueState::Unacked { .. }));
    assert_eq!(state(4), QueueState::Filtered);
    assert_eq!(state(4).name(), "filtered");
}
