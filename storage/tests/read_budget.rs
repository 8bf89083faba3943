//! Property test of `Partition::read`'s budget: over random message sizes (0 B to the
//! largest allowed), random count and byte budgets, compressed and uncompressed batches,
//! expired records and segment boundaries, following `next_offset` from the log start
//! yields every live offset exactly once and in order, never stalls, and every read
//! keeps to its budget (a message larger than the budget comes alone).
//! `PROPTEST_CASES=N` runs more cases.

use bytes::Bytes;
use proptest::prelude::*;
use tidelog_storage::limits::{MESSAGE_BYTES_MAX, SEGMENT_BYTES_MIN};
use tidelog_storage::{
    Compression, FsyncPolicy, ManualClock, NewRecord, Store, StoreOptions, TopicConfig,
};

const START_MS: i64 = 1_700_000_000_000;
/// Messages with a TTL live this long; the clock moves past it before the reads.
const TTL_MS: u64 = 1_000;

/// One message to append: its value size and whether it has expired by read time.
#[derive(Debug, Clone)]
struct Message {
    bytes: usize,
    expires: bool,
}

/// A message size: mostly small, some of a few KiB (the size that exposed the bug),
/// a few up to the largest a topic may allow.
fn message_bytes() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..64,
        4 => 64usize..4096,
        2 => 4096usize..256 * 1024,
        1 => 256 * 1024..=MESSAGE_BYTES_MAX as usize,
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (message_bytes(), prop::bool::weighted(0.2))
        .prop_map(|(bytes, expires)| Message { bytes, expires })
}

/// Batches of 1 to 12 messages, at most about 40 MiB in all so a case stays quick.
fn batches() -> impl Strategy<Value = Vec<Vec<Message>>> {
    prop::collection::vec(prop::collection::vec(message(), 1..12), 1..24).prop_map(|batches| {
        let mut total = 0usize;
        batches
            .into_iter()
            .take_while(|batch| {
                total += batch.iter().map(|m| m.bytes).sum::<usize>();
                total <= 40 << 20
            })
            .collect()
    })
}

/// A read budget: a count (sometimes 1, sometimes more than any read returns) and a
/// byte budget from 0 to a few MiB.
fn budget() -> impl Strategy<Value = (u32, u64)> {
    (
        prop_oneof![1 => Just(1u32), 4 => 1u32..40, 1 => Just(u32::MAX)],
        prop_oneof![
            1 => Just(0u64),
            3 => 1u64..8192,
            2 => 8192u64..(4 << 20),
        ],
    )
}

/// The value of the message at `offset`: the offset first, so a read of the wrong
/// message shows, then filler that zstd compresses.
fn value(offset: u64, bytes: usize) -> Bytes {
    let mut value = offset.to_le_bytes().to_vec();
    value.resize(bytes, b'a' + (offset % 26) as u8);
    value.truncate(bytes);
    Bytes::from(value)
}

fn check(
    batches: &[Vec<Message>],
    budgets: &[(u32, u64)],
    compression: Compression,
    segment_bytes: u64,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(
        dir.path(),
        StoreOptions {
            clock: clock.clone(),
            flush_threads: 1,
            retention_interval: None,
            flush_observer: None,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let config = TopicConfig {
        segment_bytes,
        fsync: FsyncPolicy::Never,
        max_message_bytes: MESSAGE_BYTES_MAX,
        retention_ms: None,
        compression,
        ..TopicConfig::default()
    };
    let partition = store
        .create_topic("budget", 1, config)
        .unwrap()
        .partition(0)
        .unwrap()
        .clone();

    let mut sizes = Vec::new();
    let mut live = Vec::new();
    for batch in batches {
        let base = sizes.len() as u64;
        let records: Vec<NewRecord> = batch
            .iter()
            .enumerate()
            .map(|(i, m)| NewRecord {
                value: value(base + i as u64, m.bytes),
                ttl_ms: Some(if m.expires { TTL_MS } else { 0 }),
                ..NewRecord::default()
            })
            .collect();
        let appended = partition.append(&records).unwrap();
        prop_assert_eq!(appended.base_offset, base);
        for (i, m) in batch.iter().enumerate() {
            sizes.push(m.bytes as u64);
            if !m.expires {
                live.push(base + i as u64);
            }
        }
    }
    clock.advance_ms(TTL_MS as i64 + 1);

    let end = sizes.len() as u64;
    let mut seen = Vec::new();
    let mut next = 0u64;
    for (&(max_records, max_bytes), round) in budgets.iter().cycle().zip(0u64..) {
        prop_assert!(
            round <= 2 * end + 2,
            "no end after {round} reads: stalled at {next}"
        );
        let read = partition.read(next, max_records, max_bytes).unwrap();
        prop_assert_eq!(read.end_offset, end);
        prop_assert!(
            read.next_offset <= end,
            "next offset {} past the end",
            read.next_offset
        );
        prop_assert!(read.records.len() as u64 <= u64::from(max_records));
        let bytes: u64 = read.records.iter().map(|r| r.payload_bytes()).sum();
        prop_assert!(
            read.records.len() <= 1 || bytes <= max_bytes,
            "{} records of {bytes} B for a budget of {max_bytes} B",
            read.records.len()
        );
        let mut previous = next;
        for record in &read.records {
            prop_assert!(
                record.offset >= previous,
                "offset {} out of order",
                record.offset
            );
            prop_assert_eq!(
                &record.value,
                &value(record.offset, sizes[record.offset as usize] as usize)
            );
            previous = record.offset + 1;
            seen.push(record.offset);
        }
        prop_assert!(
            read.next_offset >= previous,
            "next offset {} before the last record returned",
            read.next_offset
        );
        // The records the read passed over without returning must all be expired: no
        // live record lies between the last returned and `next_offset`.
        if let Some(skipped) = live
            .iter()
            .find(|&&o| o >= previous && o < read.next_offset)
        {
            prop_assert!(
                false,
                "read from {next} with budget ({max_records}, {max_bytes}) skipped live offset {skipped} (next offset {})",
                read.next_offset
            );
        }
        if read.next_offset == end {
            break;
        }
        // A read that returned records and stopped short of the end stopped on its
        // budget: the message it stopped before would have gone over it (or was one
        // past the message count), never one that fits.
        if !read.records.is_empty() && (read.records.len() as u64) < u64::from(max_records) {
            let stopped_at = sizes[read.next_offset as usize];
            prop_assert!(
                bytes > max_bytes || bytes + stopped_at > max_bytes,
                "read from {next} with budget ({max_records}, {max_bytes}) took {bytes} B and stopped before offset {} of {stopped_at} B, which fits",
                read.next_offset
            );
        }
        prop_assert!(
            !read.records.is_empty() || read.next_offset > next,
            "read from {next} made no progress"
        );
        next = read.next_offset;
    }
    prop_assert_eq!(seen, live);
    store.close().unwrap();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    })]

    #[test]
    fn following_next_offset_yields_every_live_offset_once(
        batches in batches(),
        budgets in prop::collection::vec(budget(), 1..8),
        compressed in any::<bool>(),
        segment_bytes in prop_oneof![Just(SEGMENT_BYTES_MIN), Just(64 * 1024), Just(64u64 << 20)],
    ) {
        let compression = if compressed { Compression::Zstd } else { Compression::None };
        check(&batches, &budgets, compression, segment_bytes)?;
    }
}

/// The cases of the bug report, by name: 10 messages of 1,000 B read with byte budgets
/// that end between two messages, and 1,000 messages of 3,000 B with the broker's
/// default budget of 1 MiB.
#[test]
fn a_budget_ending_between_messages_reports_the_next_unread_offset() {
    let ten = vec![
        (0..10)
            .map(|_| Message {
                bytes: 1000,
                expires: false,
            })
            .collect::<Vec<_>>(),
    ];
    for max_bytes in [1500, 2000, 2001, 2500, 999, 0] {
        check(&ten, &[(100, max_bytes)], Compression::None, 64 << 20).unwrap();
    }
    // Bug hunt 2026-12-06: a budget used up exactly still takes an empty message (it
    // does not go over); one over the budget on its own ends the read.
    let sized = |sizes: &[usize]| -> Vec<Vec<Message>> {
        vec![
            sizes
                .iter()
                .map(|&bytes| Message {
                    bytes,
                    expires: false,
                })
                .collect(),
        ]
    };
    for (sizes, max_bytes) in [
        (&[1000, 0, 10][..], 1000),
        (&[400, 600, 0, 0, 1], 1000),
        (&[2000, 0, 0], 1000),
        (&[0, 0, 5], 0),
    ] {
        check(
            &sized(sizes),
            &[(100, max_bytes)],
            Compression::None,
            64 << 20,
        )
        .unwrap();
    }
    let thousand: Vec<Vec<Message>> = (0..1000)
        .map(|_| {
            vec![Message {
                bytes: 3000,
                expires: false,
            }]
        })
        .collect();
    check(&thousand, &[(500, 1 << 20)], Compression::None, 64 << 20).unwrap();
    check(&thousand, &[(500, 1 << 20)], Compression::Zstd, 64 << 20).unwrap();
}
