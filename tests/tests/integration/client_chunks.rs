//! tidelog-client's consumers hand each delivery's messages over together
//! (`Event::Messages`, `GroupEvent::Messages`), and `next` returns them one at a time
//! from the same chunks. A seeded property test through the real broker mixes the
//! three ways to read (`next`, `try_next_event`, `next_event`) at random, with values
//! of 0 B to 1 MiB and random delivery limits, and checks after every step that each
//! offset comes exactly once and in order, whole, that a delivery's `Progress` comes
//! only after all its messages were returned, and that the positions a reader saves or
//! commits are right (a member that rejoins starts at its last commit).
//!
//! `TIDELOG_CHUNK_SEEDS` sets how many seeds run (default 3).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tidelog_client::proto::TopicConfig;
use tidelog_client::{
    Client, Commit, Event, GroupEvent, GroupMember, GroupOptions, Message, Producer,
    ProducerConfig, Record, StartAt, SubscribeOptions, Subscription,
};
use tidelog_tests::TestBroker;
use tokio::time::timeout;

use crate::support::{Rng, env_u64};

/// Bound on any one wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

/// Value sizes: mostly small, some up to 64 KiB, a few up to 1 MiB.
fn sizes(rng: &mut Rng) -> Vec<usize> {
    let count = 40 + rng.below(80) as usize;
    (0..count)
        .map(|_| match rng.below(20) {
            0 => rng.below((1 << 20) + 1) as usize,
            1 | 2 => rng.below(64 << 10) as usize,
            _ => rng.below(300) as usize,
        })
        .collect()
}

/// Creates `topic` (one partition) and publishes one value per size, in order: value
/// `i` is `size` bytes of `i as u8`.
async fn publish(client: &Client, topic: &str, sizes: &[usize]) {
    client
        .create_topic(
            topic,
            1,
            TopicConfig {
                max_message_bytes: 2 << 20,
                ..TopicConfig::default()
            },
        )
        .await
        .expect("create");
    let producer = Producer::new(client, ProducerConfig::default());
    let mut acks = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let value = Bytes::from(vec![i as u8; *size]);
        acks.push(
            producer
                .send(Record::new(topic, value).partition(0))
                .await
                .expect("send"),
        );
    }
    for ack in acks {
        timeout(WAIT, ack).await.expect("in time").expect("acked");
    }
    producer.close().await.expect("close");
}

/// What a reader has been handed so far, checked message by message.
struct Returned<'a> {
    sizes: &'a [usize],
    /// One past the last offset returned.
    next: u64,
}

impl Returned<'_> {
    fn message(&mut self, seed: u64, m: &Message) {
        assert_eq!(
            m.offset, self.next,
            "seed {seed:#x}: out of order or repeated"
        );
        assert_eq!(m.partition, 0);
        let size = self.sizes[m.offset as usize];
        assert_eq!(m.value.len(), size, "seed {seed:#x}: offset {}", m.offset);
        assert!(
            m.value.iter().all(|&b| b == m.offset as u8),
            "seed {seed:#x}: offset {} arrived changed",
            m.offset
        );
        self.next += 1;
    }

    fn done(&self) -> bool {
        self.next == self.sizes.len() as u64
    }
}

#[tokio::test]
async fn a_subscription_returns_every_offset_once_in_order_however_it_is_read() {
    let broker = TestBroker::start();
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    for seed in 0..env_u64("TIDELOG_CHUNK_SEEDS", 3) {
        let mut rng = Rng::new(0x5eed_c4a7 ^ seed);
        let topic = format!("sub-{seed}");
        let sizes = sizes(&mut rng);
        publish(&client, &topic, &sizes).await;
        let options = SubscribeOptions {
            start: StartAt::Earliest,
            max_batch_messages: 1 + rng.below(30) as u32,
            max_batch_bytes: [0, 1, 4096, 300_000][rng.below(4) as usize],
            ..SubscribeOptions::default()
        };
        let mut subscription = Subscription::open(&client, &topic, options)
            .await
            .expect("open");
        let mut returned = Returned {
            sizes: &sizes,
            next: 0,
        };
        while !returned.done() {
            let event = match rng.below(3) {
                0 => {
                    let m = timeout(WAIT, subscription.next())
                        .await
                        .expect("in time")
                        .expect("next");
                    returned.message(seed, &m);
                    None
                }
                1 => subscription.try_next_event(),
                _ => Some(
                    timeout(WAIT, subscription.next_event())
                        .await
                        .expect("in time")
                        .expect("next_event"),
                ),
            };
            match event {
                Some(Event::Messages(messages)) => {
                    assert!(!messages.is_empty());
                    assert_eq!(&**messages.topic(), topic);
                    for m in &messages {
                        returned.message(seed, m);
                    }
                    assert_eq!(messages.next_offset(), returned.next);
                }
                // A delivery's position comes after all its messages were returned.
                Some(Event::Progress(progress)) => {
                    assert_eq!(progress.next_offset, returned.next, "seed {seed:#x}");
                }
                Some(other) => panic!("seed {seed:#x}: unexpected {other:?}"),
                None => {}
            }
            // Positions count what was received, returned or not.
            let key = (Arc::from(topic.as_str()), 0);
            let position = subscription.positions().get(&key).copied();
            assert!(
                position.is_some_and(|p| p >= returned.next && p <= sizes.len() as u64),
                "seed {seed:#x}: position {position:?} with {} returned",
                returned.next
            );
        }
    }
}

#[tokio::test]
async fn a_group_member_commits_what_was_returned_however_it_is_read() {
    let broker = TestBroker::start();
    let client = Client::connect(&broker.endpoint()).await.expect("connect");
    for seed in 0..env_u64("TIDELOG_CHUNK_SEEDS", 3) {
        let mut rng = Rng::new(0x9a0c_c4a7 ^ seed);
        let topic = format!("grp-{seed}");
        let sizes = sizes(&mut rng);
        publish(&client, &topic, &sizes).await;
        let options = GroupOptions {
            commit: Commit::Explicit,
            session_timeout: Duration::from_secs(1),
            max_batch_messages: 1 + rng.below(30) as u32,
            ..GroupOptions::new("g")
        };
        let mut member = GroupMember::join(&client, &topic, options.clone())
            .await
            .expect("join");
        let mut returned = Returned {
            sizes: &sizes,
            next: 0,
        };
        // The commit made at a random step: where a new member starts.
        let commit_at = rng.below(sizes.len() as u64);
        let mut committed = 0;
        let key = (Arc::from(topic.as_str()), 0);
        while !returned.done() {
            let event = match rng.below(3) {
                0 => {
                    let m = timeout(WAIT, member.next())
                        .await
                        .expect("in time")
                        .expect("next");
                    returned.message(seed, &m);
                    None
                }
                1 => member.try_next_event(),
                _ => Some(
                    timeout(WAIT, member.next_event())
                        .await
                        .expect("in time")
                        .expect("next_event"),
                ),
            };
            match event {
                Some(GroupEvent::Messages(messages)) => {
                    for m in &messages {
                        returned.message(seed, m);
                    }
                    assert_eq!(messages.next_offset(), returned.next);
                }
                Some(GroupEvent::Progress(progress)) => {
                    assert_eq!(progress.next_offset, returned.next, "seed {seed:#x}");
                }
                // A fresh group starts the partition by its reset policy.
                Some(GroupEvent::PositionReset(_)) | None => {}
                Some(other) => panic!("seed {seed:#x}: unexpected {other:?}"),
            }
            // What commit commits: exactly what was returned.
            let position = member.positions().get(&key).copied().unwrap_or(0);
            assert_eq!(position, returned.next, "seed {seed:#x}");
            if committed == 0 && returned.next >= commit_at.max(1) {
                member.commit().await.expect("commit");
                committed = returned.next;
            }
        }
        drop(member);
        if committed < sizes.len() as u64 {
            // The broker lets the dropped member's partition go after its session.
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let mut again = GroupMember::join(&client, &topic, options)
                .await
                .expect("rejoin");
            let first = timeout(WAIT, again.next())
                .await
                .expect("in time")
                .expect("next");
            assert_eq!(first.offset, committed, "seed {seed:#x}");
        }
    }
}
