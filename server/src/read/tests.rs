use super::*;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use tidelog_storage::{
    FsyncPolicy, ManualClock, NewRecord, Store, StoreOptions, Topic, TopicConfig, limits,
};

const START_MS: i64 = 1_700_000_000_000;
/// Messages with a TTL live this long; the clock moves past it before reading.
const TTL_MS: u64 = 1_000;

#[test]
fn read_limits_default_and_cap() {
    assert_eq!(
        ReadLimits::from_request(0, 0),
        ReadLimits {
            max_messages: READ_MESSAGES_DEFAULT,
            max_bytes: READ_BYTES_DEFAULT
        }
    );
    assert_eq!(
        ReadLimits::from_request(u32::MAX, u32::MAX),
        ReadLimits {
            max_messages: READ_MESSAGES_MAX,
            max_bytes: READ_BYTES_MAX
        }
    );
    assert_eq!(ReadLimits::from_request(3, 100).max_bytes, 100);
}

/// One message to append: its value size and whether it has expired by read time.
#[derive(Debug, Clone, Copy)]
struct Message {
    bytes: usize,
    expires: bool,
    /// The value of its `tag` header, for the filters.
    tag: u8,
}

fn live(bytes: usize) -> Message {
    Message {
        bytes,
        expires: false,
        tag: 0,
    }
}

fn tagged(bytes: usize, tag: u8) -> Message {
    Message {
        bytes,
        expires: false,
        tag,
    }
}

/// The value of `partition`'s message at `offset`: both first, so a wrong message
/// shows, then filler.
fn value(partition: u32, offset: u64, bytes: usize) -> Bytes {
    let mut value = format!("{partition}/{offset}/").into_bytes();
    value.resize(bytes.max(value.len()), b'x');
    value.truncate(bytes);
    Bytes::from(value)
}

/// A store (in a temporary directory) with one topic whose partitions hold
/// `partitions`' messages, appended `per_batch` at a time, expired ones already past
/// their TTL.
struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    topic: Arc<Topic>,
    /// Per partition: (offset, value bytes) of every message that has not expired.
    live: Vec<Vec<(u64, usize)>>,
    /// Per partition: the tag of each message of `live`.
    tags: Vec<Vec<u8>>,
}

impl Fixture {
    fn new(partitions: &[Vec<Message>], per_batch: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(START_MS);
        let store = Store::open(
            dir.path(),
            StoreOptions {
                clock: clock.clone(),
                flush_threads: 1,
                retention_interval: None,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let config = TopicConfig {
            fsync: FsyncPolicy::Never,
            max_message_bytes: limits::MESSAGE_BYTES_MAX,
            segment_bytes: 4 << 20,
            retention_ms: None,
            ..TopicConfig::default()
        };
        let topic = store
            .create_topic("t", partitions.len() as u32, config)
            .unwrap();
        let mut live = Vec::new();
        let mut tags = Vec::new();
        for (id, messages) in partitions.iter().enumerate() {
            let partition = topic.partition(id as u32).unwrap();
            let mut kept = Vec::new();
            let mut kept_tags = Vec::new();
            let mut offset = 0u64;
            for chunk in messages.chunks(per_batch.max(1)) {
                let records: Vec<NewRecord> = chunk
                    .iter()
                    .zip(offset..)
                    .map(|(m, o)| NewRecord {
                        value: value(id as u32, o, m.bytes),
                        ttl_ms: Some(if m.expires { TTL_MS } else { 0 }),
                        // Tag 0 is no header.
                        headers: (m.tag > 0)
                            .then(|| tidelog_storage::Header {
                                key: "tag".into(),
                                value: Bytes::from(m.tag.to_string()),
                            })
                            .into_iter()
                            .collect(),
                        ..NewRecord::default()
                    })
                    .collect();
                partition.append(&records).unwrap();
                for m in chunk {
                    if !m.expires {
                        kept.push((offset, m.bytes));
                        kept_tags.push(m.tag);
                    }
                    offset += 1;
                }
            }
            live.push(kept);
            tags.push(kept_tags);
        }
        clock.advance_ms(TTL_MS as i64 + 1);
        Fixture {
            _dir: dir,
            store,
            topic,
            live,
            tags,
        }
    }

    /// The live messages `matches` keeps, per partition.
    fn expected(&self, matches: Option<fn(u8) -> bool>) -> Vec<Vec<(u64, usize)>> {
        self.live
            .iter()
            .zip(&self.tags)
            .map(|(live, tags)| {
                live.iter()
                    .zip(tags)
                    .filter(|(_, tag)| matches.is_none_or(|m| m(**tag)))
                    .map(|(message, _)| *message)
                    .collect()
            })
            .collect()
    }

    fn cursors(&self) -> Vec<Cursor> {
        self.topic
            .partitions()
            .iter()
            .map(|p| Cursor::new(p.clone(), 0))
            .collect()
    }
}

/// Runs [`read_round`] over every partition of `fixture` from offset 0 until all
/// are at their end, checking every batch: within `limits` (a batch of one message
/// may be over the bytes), one partition per batch with `OnePartition`, positions
/// that match what was read, no partition with data passed over for more rounds
/// than there are partitions, and no round without progress while data is left.
/// Then every live message was delivered once, in order, and nothing else.
fn drain(fixture: &Fixture, limits: ReadLimits, batching: Batching) -> Result<(), String> {
    drain_filtered(fixture, limits, batching, None)
}

/// [`drain`] with a filter, given as its text and the tags it matches: exactly the
/// live messages it matches come, in order, and the positions pass the others.
fn drain_filtered(
    fixture: &Fixture,
    limits: ReadLimits,
    batching: Batching,
    filter: Option<TagFilter>,
) -> Result<(), String> {
    let parsed = filter.map(|(text, _)| Filter::parse(text).unwrap());
    let expected = fixture.expected(filter.map(|(_, matches)| matches));
    let mut cursors = fixture.cursors();
    let count = cursors.len();
    let ends: Vec<u64> = cursors
        .iter()
        .map(|c| c.partition.end_offset().unwrap())
        .collect();
    let total: usize = fixture.live.iter().map(Vec::len).sum();
    let mut delivered: Vec<Vec<(u64, usize)>> = vec![Vec::new(); count];
    // Rounds in a row each partition had live data left and did not move.
    let mut passed_over = vec![0usize; count];
    // What the client was told: the positions of the batches that went out.
    let mut told = vec![0u64; count];
    let mut turn = 0;
    for round in 0.. {
        if cursors.iter().zip(&ends).all(|(c, end)| c.position == *end) {
            break;
        }
        if round > 2 * (total + count) + 2 {
            return Err(format!("stalled at {:?}", positions(&cursors)));
        }
        let before = positions(&cursors);
        let read = read_round(&mut cursors, &mut turn, limits, batching, parsed.as_ref())
            .map_err(|e| format!("round {round}: {e}"))?;
        let Round::Batch { batch, bytes, .. } = read else {
            return Err(format!("round {round}: {read:?}"));
        };
        let n = batch.messages.len();
        if n as u64 > u64::from(limits.max_messages.max(1)) {
            return Err(format!(
                "{n} messages for a limit of {}",
                limits.max_messages
            ));
        }
        let sum: u64 = batch
            .messages
            .iter()
            .map(|m| {
                let headers: usize = m.headers.iter().map(|h| h.key.len() + h.value.len()).sum();
                (m.value.len() + headers) as u64
            })
            .sum();
        if sum != bytes {
            return Err(format!(
                "the round says {bytes} B, its messages hold {sum} B"
            ));
        }
        if n > 1 && bytes > limits.max_bytes {
            return Err(format!(
                "{n} messages of {bytes} B for a budget of {} B",
                limits.max_bytes
            ));
        }
        if batching == Batching::OnePartition
            && batch
                .messages
                .iter()
                .any(|m| m.partition != batch.messages[0].partition)
        {
            return Err("a OnePartition batch with several partitions".into());
        }
        for m in &batch.messages {
            let expected = value(m.partition, m.offset, m.value.len());
            if m.value != expected {
                return Err(format!("{}/{} has the wrong value", m.partition, m.offset));
            }
            delivered[m.partition as usize].push((m.offset, m.value.len()));
        }
        let after = positions(&cursors);
        for p in &batch.positions {
            if after[p.partition as usize] != p.next_offset {
                return Err(format!("position {p:?}, cursor at {after:?}"));
            }
        }
        for (index, cursor) in cursors.iter().enumerate() {
            let moved = after[index] != before[index];
            let had_data = expected[index].iter().any(|(o, _)| *o >= before[index]);
            let batch_has_it = batch
                .positions
                .iter()
                .any(|p| p.partition as usize == index);
            // Named while it moved since the client was told, in this round or not.
            let untold = after[index] != told[index];
            if untold != batch_has_it {
                return Err(format!(
                    "partition {index} moved {moved}, told {}, in positions {batch_has_it}",
                    told[index]
                ));
            }
            passed_over[index] = if had_data && !moved {
                passed_over[index] + 1
            } else {
                0
            };
            if passed_over[index] > count {
                return Err(format!(
                    "partition {index} at {} passed over {} rounds in a row",
                    cursor.position, passed_over[index]
                ));
            }
        }
        if goes_out(&mut cursors, &batch) {
            for p in &batch.positions {
                told[p.partition as usize] = p.next_offset;
            }
        }
        if n == 0
            && after == before
            && fixture
                .live
                .iter()
                .zip(&after)
                .any(|(l, p)| l.iter().any(|(o, _)| o >= p))
        {
            return Err(format!("round {round} made no progress at {after:?}"));
        }
    }
    if told != ends {
        return Err(format!(
            "the client was told {told:?}, the ends are {ends:?}"
        ));
    }
    if delivered != expected {
        return Err(format!(
            "delivered {:?}, expected {:?}",
            offsets(&delivered),
            offsets(&expected)
        ));
    }
    Ok(())
}

fn positions(cursors: &[Cursor]) -> Vec<u64> {
    cursors.iter().map(|c| c.position).collect()
}

fn offsets(messages: &[Vec<(u64, usize)>]) -> Vec<Vec<u64>> {
    messages
        .iter()
        .map(|p| p.iter().map(|(o, _)| *o).collect())
        .collect()
}

fn limits(max_messages: u32, max_bytes: u64) -> ReadLimits {
    ReadLimits {
        max_messages,
        max_bytes,
    }
}

const BOTH: [Batching; 2] = [Batching::OnePartition, Batching::Fill];

/// A filter's text and the tags it matches.
type TagFilter = (&'static str, fn(u8) -> bool);

/// Filters on the `tag` header (absent for tag 0) and the tags each matches.
const FILTERS: [TagFilter; 6] = [
    ("header.tag == 1", |t| t == 1),
    ("header.tag in (0, 2)", |t| t == 2),
    ("header.tag >= 2 && !exists(header.none)", |t| t >= 2),
    ("header.tag != 3", |t| t != 3),
    // The values are not JSON: nothing matches.
    ("json.x == 1 || header.tag == 9", |_| false),
    ("exists(header.tag)", |t| t != 0),
];

#[test]
fn one_percent_of_large_and_small_messages_match_and_every_one_comes() {
    // 3 KB and 600 KB messages, one in a hundred tagged 1; budgets around both.
    let partition = |bytes: usize, count: usize| -> Vec<Message> {
        (0..count)
            .map(|i| tagged(bytes, u8::from(i % 100 == 37)))
            .collect()
    };
    let fixture = Fixture::new(&[partition(3000, 2000), partition(600 * 1024, 200)], 20);
    let filter: Option<TagFilter> = Some(("header.tag == 1", |t| t == 1));
    for batching in BOTH {
        for (max_messages, max_bytes) in [(0, 0), (1, 1), (500, 1 << 20), (3, 700 * 1024)] {
            drain_filtered(
                &fixture,
                ReadLimits::from_request(max_messages, max_bytes),
                batching,
                filter,
            )
            .unwrap();
        }
    }
}

#[test]
fn a_filter_that_skips_everything_moves_the_positions_to_the_end_in_bounded_reads() {
    let fixture = Fixture::new(&[vec![tagged(10, 2); 40_000]], 1000);
    let filter = Filter::parse("header.tag == 1").unwrap();
    let mut cursors = fixture.cursors();
    let mut rounds = 0;
    let mut skipped = 0;
    while cursors[0].position < 40_000 {
        let Round::Batch {
            batch, filtered, ..
        } = read_round(
            &mut cursors,
            &mut 0,
            limits(500, 1 << 20),
            Batching::Fill,
            Some(&filter),
        )
        .unwrap()
        else {
            panic!("a batch");
        };
        assert!(batch.messages.is_empty());
        assert_eq!(batch.positions[0].next_offset, cursors[0].position);
        skipped += filtered.skipped;
        rounds += 1;
    }
    assert_eq!(skipped, 40_000);
    // Each round scans at most the storage's limit.
    assert_eq!(
        rounds,
        40_000u32.div_ceil(tidelog_storage::limits::FILTER_SCAN_RECORDS_MAX)
    );
}

/// Whether the stream sends `batch`, the batch of a round over `cursors`, when the
/// last batch went out just now (so never for the time that passed: the rule at the
/// end of the partitions decides).
fn goes_out(cursors: &mut [Cursor], batch: &MessageBatch) -> bool {
    let now = Instant::now();
    let mut last_sent = now;
    batch_goes_out(cursors, batch, &mut last_sent, now)
}

#[test]
fn a_filter_that_matches_nothing_tells_every_partitions_end() {
    // Partition 0 takes two scans, partition 1 one: the first round moves both and
    // reaches only partition 1's end, the second reaches partition 0's.
    let scan = tidelog_storage::limits::FILTER_SCAN_RECORDS_MAX as usize;
    let fixture = Fixture::new(
        &[vec![tagged(1, 2); scan + 600], vec![tagged(1, 2); 100]],
        1000,
    );
    let filter = Filter::parse("header.tag == 1").unwrap();
    for batching in BOTH {
        let mut cursors = fixture.cursors();
        // What the client was told: the positions of the batches that went out.
        let mut told = vec![0u64; 2];
        let mut turn = 0;
        for _ in 0..10 {
            let Round::Batch { batch, .. } = read_round(
                &mut cursors,
                &mut turn,
                limits(500, 1 << 20),
                batching,
                Some(&filter),
            )
            .unwrap() else {
                panic!("a batch");
            };
            assert!(batch.messages.is_empty());
            if goes_out(&mut cursors, &batch) {
                for p in &batch.positions {
                    told[p.partition as usize] = p.next_offset;
                }
            }
        }
        assert_eq!(positions(&cursors), vec![scan as u64 + 600, 100]);
        assert_eq!(told, vec![scan as u64 + 600, 100], "{batching:?}");
    }
}

#[test]
fn three_kb_messages_with_the_default_budget_come_whole_and_in_order() {
    let fixture = Fixture::new(&vec![vec![live(3000); 700]; 3], 50);
    for batching in BOTH {
        drain(&fixture, ReadLimits::from_request(0, 0), batching).unwrap();
        drain(&fixture, ReadLimits::from_request(0, 2500), batching).unwrap();
        drain(&fixture, ReadLimits::from_request(7, 10_000), batching).unwrap();
    }
}

#[test]
fn a_message_over_the_budget_comes_alone_and_never_stalls_a_partition() {
    // 600 KB messages beside 1 B ones, budgets under, between and over them.
    let partitions = vec![
        vec![live(600 * 1024); 6],
        vec![live(1); 40],
        [
            live(1),
            live(600 * 1024),
            live(1),
            live(0),
            live(600 * 1024),
        ]
        .repeat(3),
    ];
    let fixture = Fixture::new(&partitions, 2);
    for batching in BOTH {
        for max_bytes in [0, 1, 2, 1000, 600 * 1024, 1 << 20, READ_BYTES_MAX] {
            for max_messages in [1, 3, READ_MESSAGES_DEFAULT] {
                drain(&fixture, limits(max_messages, max_bytes), batching)
                    .map_err(|e| format!("{batching:?} {max_messages} {max_bytes}: {e}"))
                    .unwrap();
            }
        }
    }
}

#[test]
fn a_filled_batch_stops_at_the_first_message_over_what_is_left() {
    // Two partitions of 1,000 B messages and 2,500 B per batch: the first partition
    // gives two, the second's first would take the batch to 3,000 B. It stays for
    // the next batch, which starts with it.
    let fixture = Fixture::new(&vec![vec![live(1000); 4]; 2], 4);
    let mut cursors = fixture.cursors();
    let mut turn = 0;
    let mut batches = Vec::new();
    for _ in 0..4 {
        match read_round(
            &mut cursors,
            &mut turn,
            limits(100, 2500),
            Batching::Fill,
            None,
        )
        .unwrap()
        {
            Round::Batch { batch, bytes, .. } => {
                assert!(bytes <= 2500, "{bytes} B");
                batches.push(
                    batch
                        .messages
                        .iter()
                        .map(|m| (m.partition, m.offset))
                        .collect::<Vec<_>>(),
                );
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        batches,
        vec![
            vec![(0, 0), (0, 1)],
            vec![(1, 0), (1, 1)],
            vec![(0, 2), (0, 3)],
            vec![(1, 2), (1, 3)],
        ]
    );
    // One message of the first partition left room for the second's first.
    let mut cursors = fixture.cursors();
    let mut turn = 0;
    let Round::Batch { batch, .. } = read_round(
        &mut cursors,
        &mut turn,
        limits(100, 2000),
        Batching::Fill,
        None,
    )
    .unwrap() else {
        panic!("a batch")
    };
    assert_eq!(batch.messages.len(), 2);
    assert_eq!(positions(&cursors), vec![2, 0]);
    assert_eq!(turn, 1);
}

#[test]
fn a_position_out_of_range_is_reported_unmoved_and_read_past_once_reset() {
    let fixture = Fixture::new(&vec![vec![live(10); 3]; 2], 3);
    let mut cursors = fixture.cursors();
    cursors[1].position = 9;
    let mut turn = 1;
    let round = read_round(
        &mut cursors,
        &mut turn,
        limits(100, 1000),
        Batching::Fill,
        None,
    );
    assert_eq!(
        round.unwrap(),
        Round::OutOfRange {
            index: 1,
            partition: 1,
            requested: 9,
            log_start: 0,
            end: 3
        }
    );
    assert_eq!(positions(&cursors), vec![0, 9]);
    assert_eq!(turn, 0);
    // Found after another partition's messages: the round ends with them, and the
    // out-of-range partition leads the next round.
    let Round::Batch { batch, .. } = read_round(
        &mut cursors,
        &mut turn,
        limits(100, 1000),
        Batching::Fill,
        None,
    )
    .unwrap() else {
        panic!("a batch")
    };
    assert_eq!(batch.messages.len(), 3);
    assert_eq!(turn, 1);
    assert!(matches!(
        read_round(
            &mut cursors,
            &mut turn,
            limits(100, 1000),
            Batching::Fill,
            None
        ),
        Ok(Round::OutOfRange { partition: 1, .. })
    ));
}

#[test]
fn a_deleted_topic_fails_the_round() {
    let fixture = Fixture::new(&[vec![live(10); 3]], 3);
    let mut cursors = fixture.cursors();
    fixture.store.delete_topic("t").unwrap();
    for batching in BOTH {
        let round = read_round(&mut cursors, &mut 0, limits(100, 1000), batching, None);
        assert!(
            matches!(round, Err(Error::TopicDeleted { .. })),
            "{round:?}"
        );
    }
}

/// A message size: mostly small, some of a few KiB (the size that exposed issue
/// 10), a few of hundreds of KiB.
fn message() -> impl Strategy<Value = Message> {
    let bytes = prop_oneof![
        4 => 0usize..64,
        4 => 64usize..8192,
        1 => 8192usize..700 * 1024,
    ];
    (bytes, prop::bool::weighted(0.2), 0u8..4).prop_map(|(bytes, expires, tag)| Message {
        bytes,
        expires,
        tag,
    })
}

fn partitions() -> impl Strategy<Value = Vec<Vec<Message>>> {
    prop::collection::vec(prop::collection::vec(message(), 0..40), 1..5)
}

/// 1 to 3 partitions of 1 B messages tagged 2, a few tagged 1: short ones, and ones
/// a filter reads in two scans ([`limits::FILTER_SCAN_RECORDS_MAX`] each).
fn long_partitions() -> impl Strategy<Value = Vec<Vec<Message>>> {
    let scan = limits::FILTER_SCAN_RECORDS_MAX as usize;
    let length = prop_oneof![0usize..50, scan..scan + 3000];
    let partition = (
        length,
        prop::collection::vec(any::<prop::sample::Index>(), 0..3),
    )
        .prop_map(|(length, ones)| {
            let mut messages = vec![tagged(1, 2); length];
            for one in ones {
                if length > 0 {
                    messages[one.index(length)].tag = 1;
                }
            }
            messages
        });
    prop::collection::vec(partition, 1..4)
}

fn read_limits() -> impl Strategy<Value = ReadLimits> {
    (
        prop_oneof![1 => Just(1u32), 4 => 1u32..40, 1 => Just(READ_MESSAGES_MAX)],
        prop_oneof![
            1 => Just(0u64),
            3 => 1u64..8192,
            2 => 8192u64..(2 << 20),
        ],
    )
        .prop_map(|(max_messages, max_bytes)| limits(max_messages, max_bytes))
}

proptest! {
    // A fixed seed: the same cases every run.
    #![proptest_config(ProptestConfig {
        cases: 32,
        rng_seed: RngSeed::Fixed(11),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random messages, filters and budgets: following the positions yields exactly
    /// the live messages the filter matches, in order, within the budget, no
    /// partition stalls behind skipped messages, and the batches that go out tell
    /// every partition's end (also when the filter matches nothing).
    #[test]
    fn exactly_the_matching_messages_in_order_within_the_budget(
        partitions in partitions(),
        per_batch in 1usize..8,
        limits in read_limits(),
        filter in prop::sample::select(FILTERS.to_vec()),
    ) {
        let fixture = Fixture::new(&partitions, per_batch);
        for batching in BOTH {
            if let Err(error) = drain_filtered(&fixture, limits, batching, Some(filter)) {
                prop_assert!(false, "{:?} {:?} {}: {}", batching, limits, filter.0, error);
            }
        }
    }

    /// Partitions of a few messages beside ones longer than a filter scan, with a
    /// filter that matches a few messages or none: following the positions yields
    /// exactly the matches, and the batches that go out tell every partition's end,
    /// also when one round moves several partitions and reaches only some ends.
    #[test]
    fn every_partitions_end_is_told_across_filter_scans(
        partitions in long_partitions(),
        limits in read_limits(),
        filter in prop::sample::select(vec![FILTERS[0], FILTERS[4]]),
    ) {
        let fixture = Fixture::new(&partitions, 1000);
        for batching in BOTH {
            if let Err(error) = drain_filtered(&fixture, limits, batching, Some(filter)) {
                prop_assert!(false, "{:?} {:?} {}: {}", batching, limits, filter.0, error);
            }
        }
    }

    /// Random message sizes, expired messages, partitions and budgets: both kinds
    /// of batch deliver every live message once and in order within the budget.
    #[test]
    fn every_live_message_once_in_order_within_the_budget(
        partitions in partitions(),
        per_batch in 1usize..8,
        limits in read_limits(),
    ) {
        let fixture = Fixture::new(&partitions, per_batch);
        for batching in BOTH {
            if let Err(error) = drain(&fixture, limits, batching) {
                prop_assert!(false, "{:?} {:?}: {}", batching, limits, error);
            }
        }
    }
}
