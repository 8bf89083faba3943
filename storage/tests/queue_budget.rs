//! A delivery round's byte budget per member (`QueueEngine::deliver_bounded`): a
//! member's deliveries add up to at most its budget, its first delivery goes whatever
//! its size, what does not fit is not leased (it stays ready, and is delivered next,
//! in order), a member without a budget takes what another's budget left, and due
//! redeliveries follow the same rule. Sizes from a few bytes to 16 MiB.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use tidelog_storage::batch::Record;
use tidelog_storage::queue::admin::{self, queue_status};
use tidelog_storage::queue::{
    Delivery, QueueConfig, QueueEngine, SettleAction, SettleRequest, StartAt, Want,
};
use tidelog_storage::rng::SeededRng as Rng;
use tidelog_storage::{ManualClock, NewRecord, Store, StoreOptions, TopicConfig};

const START_MS: i64 = 1_700_000_000_000;

fn size(record: &Record) -> u64 {
    record.payload_bytes()
}

fn want(member: &str, messages: u32, bytes: u64) -> Want {
    Want {
        member: member.into(),
        messages,
        bytes,
    }
}

fn setup(sizes: &[usize], partitions: u32) -> (Arc<Store>, QueueEngine) {
    let dir = tempfile::tempdir().unwrap().keep();
    let clock = ManualClock::new(START_MS);
    let store = Arc::new(
        Store::open(
            &dir,
            StoreOptions {
                clock: clock.clone(),
                flush_threads: 1,
                retention_interval: None,
                ..StoreOptions::default()
            },
        )
        .unwrap(),
    );
    let topic = store
        .create_topic(
            "jobs",
            partitions,
            TopicConfig {
                max_message_bytes: 16 << 20,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    for (i, &bytes) in sizes.iter().enumerate() {
        topic
            .partition(i as u32 % partitions)
            .unwrap()
            .append_durable(&[NewRecord {
                value: Bytes::from(vec![b'v'; bytes]),
                ..NewRecord::default()
            }])
            .unwrap();
    }
    admin::create_queue(
        &*store,
        "work",
        "jobs",
        StartAt::Earliest,
        QueueConfig {
            max_unacked_per_member: 100_000,
            backoff_initial_ms: 0,
            ..QueueConfig::defaults_for("jobs")
        },
    )
    .unwrap();
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("a");
    engine.member_joined("b");
    (store, engine)
}

fn bytes_of(deliveries: &[Delivery]) -> u64 {
    deliveries.iter().map(|d| size(&d.record)).sum()
}

fn ready(store: &Store) -> u64 {
    queue_status(store, "work", store.clock().now_ms())
        .unwrap()
        .ready
}

#[test]
fn a_member_takes_what_fits_its_budget_and_the_rest_stays_ready_in_order() {
    let mib = 1 << 20;
    // Three of 1 MiB, one of 16 MiB, then small ones.
    let mut sizes = vec![mib, mib, mib, 16 * mib - 1024];
    sizes.extend(std::iter::repeat_n(100, 50));
    let (store, mut engine) = setup(&sizes, 1);
    let budget = 2 * mib as u64 + 500;
    let mut next = 0u64;
    let mut rounds = Vec::new();
    while next < sizes.len() as u64 {
        let out = engine
            .deliver_bounded(&[want("a", 1000, budget)], &size)
            .unwrap();
        assert_eq!(out.len(), 1, "round {}: something is ready", rounds.len());
        let (member, deliveries) = &out[0];
        assert_eq!(member, "a");
        assert!(
            bytes_of(deliveries) <= budget || deliveries.len() == 1,
            "{} bytes in {} deliveries",
            bytes_of(deliveries),
            deliveries.len()
        );
        for d in deliveries {
            assert_eq!(d.record.offset, next, "in order, nothing skipped");
            assert_eq!(d.attempt, 1);
            next += 1;
        }
        // What was not delivered was not leased.
        assert_eq!(ready(&store), sizes.len() as u64 - next);
        assert_eq!(engine.unacked("a"), next);
        rounds.push(deliveries.len());
    }
    // 2 MiB, the third 1 MiB alone (the 16 MiB does not fit after it), the 16 MiB
    // alone, then every small one.
    assert_eq!(rounds, vec![2, 1, 1, 50]);
}

#[test]
fn a_member_without_a_budget_takes_what_another_leaves() {
    let sizes = vec![3000; 20];
    let (_store, mut engine) = setup(&sizes, 2);
    let out = engine
        .deliver_bounded(&[want("a", 10, 7000), want("b", 10, u64::MAX)], &size)
        .unwrap();
    let a: Vec<_> = out
        .iter()
        .filter(|o| o.0 == "a")
        .flat_map(|o| &o.1)
        .collect();
    let b: Vec<_> = out
        .iter()
        .filter(|o| o.0 == "b")
        .flat_map(|o| &o.1)
        .collect();
    assert_eq!(a.len(), 2, "two of 3000 fit 7000");
    assert_eq!(b.len(), 10, "b's credit");
}

#[test]
fn due_redeliveries_follow_the_budget_and_random_sizes_all_arrive_once() {
    let mut rng = Rng::new(7);
    let sizes: Vec<usize> = (0..200)
        .map(|_| match rng.below(10) {
            0 => (1 << 20) + rng.below(3 << 20) as usize,
            _ => 1 + rng.below(20_000) as usize,
        })
        .collect();
    let (store, mut engine) = setup(&sizes, 3);
    let budget = 3 << 20;
    // Every message twice: its first delivery nacked at once (due again), its second
    // acked. Due redeliveries go before new messages, under the same budget.
    let mut first = BTreeSet::new();
    let mut second = BTreeSet::new();
    let mut rounds = 0;
    while second.len() < sizes.len() {
        rounds += 1;
        assert!(rounds < 10_000);
        engine.tick().unwrap();
        let out = engine
            .deliver_bounded(&[want("a", 1000, budget)], &size)
            .unwrap();
        let deliveries = &out.first().expect("ready or due messages remain").1;
        assert!(bytes_of(deliveries) <= budget || deliveries.len() == 1);
        let settlements: Vec<_> = deliveries
            .iter()
            .map(|d| {
                let at = (d.partition, d.record.offset);
                let action = match d.attempt {
                    1 => {
                        assert!(first.insert(at), "{at:?} first delivered twice");
                        SettleAction::Nack {
                            delay_ms: Some(0),
                            reason: "again".into(),
                        }
                    }
                    2 => {
                        assert!(first.contains(&at));
                        assert!(second.insert(at), "{at:?} redelivered twice");
                        SettleAction::Ack { through: None }
                    }
                    n => panic!("attempt {n} of {at:?}"),
                };
                SettleRequest {
                    partition: d.partition,
                    offset: d.record.offset,
                    attempt: d.attempt,
                    action,
                }
            })
            .collect();
        engine.settle(Some("a"), &settlements).unwrap();
        assert_eq!(engine.unacked("a"), 0);
    }
    assert_eq!(first.len(), sizes.len());
    assert_eq!(ready(&store), 0);
}
