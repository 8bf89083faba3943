//! Behaviour of the storage engine through its public API: appends, reads, reopen,
//! crash recovery, corruption, index rebuilds, retention and TTL.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tidelog_storage::batch::{BatchHeader, HEADER_BYTES};
use tidelog_storage::{
    Error, FsyncPolicy, Header, ManualClock, NewRecord, Partition, Store, StoreOptions, TopicConfig,
};

const START_MS: i64 = 1_700_000_000_000;

fn options(clock: &Arc<ManualClock>) -> StoreOptions {
    StoreOptions {
        clock: clock.clone(),
        flush_threads: 2,
        retention_interval: None,
        flush_observer: None,
        ..StoreOptions::default()
    }
}

fn small_segments() -> TopicConfig {
    TopicConfig {
        segment_bytes: 16 * 1024,
        retention_ms: None,
        segment_ms: None,
        ..TopicConfig::default()
    }
}

fn value(i: u64) -> Bytes {
    Bytes::from(format!("message-{i:06}-{}", "x".repeat((i % 50) as usize)))
}

fn records(from: u64, count: u64) -> Vec<NewRecord> {
    (from..from + count)
        .map(|i| NewRecord {
            key: (i % 3 == 0).then(|| Bytes::from(format!("key-{i}"))),
            value: value(i),
            headers: if i % 5 == 0 {
                vec![Header {
                    key: "n".into(),
                    value: Bytes::from(i.to_string()),
                }]
            } else {
                Vec::new()
            },
            timestamp_ms: Some(START_MS + i as i64),
            ttl_ms: None,
            ..NewRecord::default()
        })
        .collect()
}

/// Creates topic `name` with one partition and returns it.
fn create_partition(store: &Store, name: &str, config: TopicConfig) -> Arc<Partition> {
    store
        .create_topic(name, 1, config)
        .unwrap()
        .partition(0)
        .unwrap()
        .clone()
}

/// Partition 0 of an existing topic.
fn partition_of(store: &Store, name: &str) -> Arc<Partition> {
    store.topic(name).unwrap().partition(0).unwrap().clone()
}

/// Reads everything from `from` to the end, checking each record's value.
fn read_all(store: &Store, topic: &str, from: u64) -> Vec<u64> {
    let partition = partition_of(store, topic);
    let mut offsets = Vec::new();
    let mut next = from;
    loop {
        let result = partition.read(next, 97, 64 * 1024).unwrap();
        for record in &result.records {
            assert_eq!(
                record.value,
                value(record.offset),
                "offset {}",
                record.offset
            );
            offsets.push(record.offset);
        }
        if result.next_offset == result.end_offset {
            return offsets;
        }
        assert!(result.next_offset > next, "read made no progress");
        next = result.next_offset;
    }
}

fn segment_logs(dir: &Path, topic: &str) -> Vec<PathBuf> {
    let mut logs: Vec<_> = fs::read_dir(dir.join("topics").join(topic).join("0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

#[test]
fn append_read_round_trip_across_segments_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    {
        let store = Store::open(dir.path(), options(&clock)).unwrap();
        let config = TopicConfig {
            segment_bytes: 4096,
            ..small_segments()
        };
        let topic = store.create_topic("orders", 1, config).unwrap();
        let partition = topic.partition(0).unwrap();
        let mut next = 0;
        for count in [1, 10, 100, 7, 250, 3] {
            let appended = partition.append_durable(&records(next, count)).unwrap();
            assert_eq!(appended.base_offset, next);
            assert_eq!(appended.last_offset, next + count - 1);
            next += count;
        }
        assert!(
            partition.info().segment_count > 3,
            "segments should have rolled"
        );
        let read = partition.read(0, 5, u64::MAX).unwrap();
        assert_eq!(read.records[3].key.as_deref(), Some(&b"key-3"[..]));
        assert_eq!(read.records[0].headers[0].value, Bytes::from_static(b"0"));
        assert_eq!(read_all(&store, "orders", 0), (0..next).collect::<Vec<_>>());
        store.close().unwrap();
    }
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    assert_eq!(read_all(&store, "orders", 0).len(), 371);
    assert_eq!(
        read_all(&store, "orders", 200),
        (200..371).collect::<Vec<_>>()
    );
    let partition = partition_of(&store, "orders");
    assert_eq!(partition.append(&records(371, 1)).unwrap().base_offset, 371);
}

#[test]
fn reads_outside_the_log_are_out_of_range_with_both_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    let partition = create_partition(&store, "t", small_segments());
    partition.append_durable(&records(0, 10)).unwrap();
    assert!(partition.read(10, 10, 1000).unwrap().records.is_empty());
    match partition.read(11, 10, 1000) {
        Err(Error::OffsetOutOfRange {
            requested: 11,
            log_start: 0,
            end: 10,
            ..
        }) => {}
        other => panic!("expected OffsetOutOfRange, got {other:?}"),
    }
    // What a reader checks before it reads (to apply its reset policy first).
    partition.check_offset(0).unwrap();
    partition.check_offset(10).unwrap();
    assert!(matches!(
        partition.check_offset(11),
        Err(Error::OffsetOutOfRange {
            requested: 11,
            log_start: 0,
            end: 10,
            ..
        })
    ));
}

#[test]
fn max_bytes_limits_a_read_but_one_record_always_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    let partition = create_partition(&store, "t", small_segments());
    partition
        .append_durable(&[
            NewRecord::value(vec![1u8; 5000]),
            NewRecord::value(vec![2u8; 10]),
        ])
        .unwrap();
    let read = partition.read(0, 100, 100).unwrap();
    assert_eq!(read.records.len(), 1);
    assert_eq!(read.next_offset, 1);
    let read = partition.read(1, 100, 100).unwrap();
    assert_eq!(read.records.len(), 1);
    assert_eq!(read.next_offset, 2);
}

#[test]
fn torn_tail_is_cut_at_every_byte_of_the_last_batch() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let config = TopicConfig {
        segment_bytes: 1 << 20,
        ..small_segments()
    };
    {
        let store = Store::open(dir.path(), options(&clock)).unwrap();
        let partition = create_partition(&store, "t", config);
        partition.append_durable(&records(0, 20)).unwrap();
        partition.append_durable(&records(20, 5)).unwrap();
        store.close().unwrap();
    }
    let log = segment_logs(dir.path(), "t").pop().unwrap();
    let full = fs::read(&log).unwrap();
    let last_batch = {
        let first = BatchHeader::parse(&full).unwrap();
        first.batch_length as usize
    };
    // Remove the checkpoint so recovery must scan (as after a crash before any
    // checkpoint covered the last batch).
    let checkpoint = log.with_file_name("checkpoint");
    for cut in last_batch..full.len() {
        fs::write(&log, &full[..cut]).unwrap();
        let _ = fs::remove_file(&checkpoint);
        let store = Store::open(dir.path(), options(&clock)).unwrap();
        let offsets = read_all(&store, "t", 0);
        assert_eq!(offsets, (0..20).collect::<Vec<_>>(), "cut at byte {cut}");
        let partition = partition_of(&store, "t");
        // Appends continue right after the intact prefix.
        assert_eq!(
            partition
                .append_durable(&records(20, 1))
                .unwrap()
                .base_offset,
            20
        );
        drop(store);
    }
    // The cut bytes were kept beside the log, never silently destroyed.
    let side_files = fs::read_dir(log.parent().unwrap())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("torn-at")
        })
        .count();
    assert!(side_files > 0);
}

#[test]
fn a_flipped_bit_anywhere_never_yields_a_corrupted_record() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    {
        let store = Store::open(dir.path(), options(&clock)).unwrap();
        let partition = create_partition(&store, "t", small_segments());
        for i in 0..6 {
            partition.append_durable(&records(i * 10, 10)).unwrap();
        }
        store.close().unwrap();
    }
    let log = segment_logs(dir.path(), "t").remove(0);
    let pristine = fs::read(&log).unwrap();
    // Every byte of the first batches and a stride through the rest.
    let positions: Vec<usize> = (0..HEADER_BYTES + 200)
        .chain((0..pristine.len()).step_by(37))
        .collect();
    for position in positions {
        if position >= pristine.len() {
            continue;
        }
        let mut damaged = pristine.clone();
        damaged[position] ^= 0x10;
        fs::write(&log, &damaged).unwrap();
        let store = match Store::open(dir.path(), options(&clock)) {
            Ok(store) => store,
            Err(Error::Corrupt { .. }) => continue,
            Err(other) => panic!("unexpected error {other}"),
        };
        let partition = partition_of(&store, "t");
        let mut next = partition.log_start().unwrap();
        while next < partition.end_offset().unwrap() {
            match partition.read(next, 1, u64::MAX) {
                Ok(read) => {
                    for record in &read.records {
                        assert_eq!(
                            record.value,
                            value(record.offset),
                            "flip at {position} served a damaged record"
                        );
                    }
                    next = read.next_offset.max(next + 1);
                }
                Err(Error::Corrupt { .. }) => next += 1,
                Err(other) => panic!("flip at {position}: unexpected error {other}"),
            }
        }
    }
    fs::write(&log, &pristine).unwrap();
}

/// Issue 12, bug 2: a read that reaches a damaged batch after intact records returns
/// those records and stops before the damage (next offset = the damaged batch's
/// base); only a read that starts at the damage fails, and reads past it work.
#[test]
fn intact_records_before_a_damaged_batch_are_served_then_the_damage_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    {
        let store = Store::open(dir.path(), options(&clock)).unwrap();
        let partition = create_partition(&store, "t", small_segments());
        for i in 0..4 {
            partition.append_durable(&records(i * 10, 10)).unwrap();
        }
        store.close().unwrap();
    }
    // Flip a bit in the last byte of the second batch (offsets 10..=19): its CRC fails.
    let log = segment_logs(dir.path(), "t").remove(0);
    let mut bytes = fs::read(&log).unwrap();
    let first = BatchHeader::parse(&bytes).unwrap().batch_length as usize;
    let second = BatchHeader::parse(&bytes[first..]).unwrap().batch_length as usize;
    bytes[first + second - 1] ^= 0x01;
    fs::write(&log, &bytes).unwrap();

    let store = Store::open(dir.path(), options(&clock)).unwrap();
    let partition = partition_of(&store, "t");
    for (from, max_records) in [(0, 100), (5, 100), (9, 3)] {
        let read = partition.read(from, max_records, u64::MAX).unwrap();
        let offsets: Vec<u64> = read.records.iter().map(|r| r.offset).collect();
        let expected: Vec<u64> = (from..10).take(max_records as usize).collect();
        assert_eq!(offsets, expected, "read from {from}");
        assert_eq!(
            read.next_offset,
            from + expected.len() as u64,
            "read from {from}"
        );
    }
    for from in [10, 15, 19] {
        let error = partition.read(from, 100, u64::MAX).unwrap_err();
        assert!(
            matches!(&error, Error::Corrupt { reason, .. } if reason.contains("10..=19")),
            "read from {from}: {error}"
        );
    }
    let read = partition.read(20, 100, u64::MAX).unwrap();
    assert_eq!(read.records.len(), 20);
    assert_eq!(read.next_offset, 40);
}

/// Regression (found through the broker by tests/ bit_flips::flipped_bit_...): a
/// flipped sign bit in a batch's max_expiry_ms made the batch look expired, so reads
/// skipped it in silence instead of reporting the damage. The CRC now vouches for the
/// header before its expiry is believed.
#[test]
fn a_flipped_expiry_bit_is_corruption_not_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    {
        let store = Store::open(dir.path(), options(&clock)).unwrap();
        let partition = create_partition(&store, "t", small_segments());
        for i in 0..3 {
            partition.append_durable(&records(i * 10, 10)).unwrap();
        }
        store.close().unwrap();
    }
    let log = segment_logs(dir.path(), "t").remove(0);
    let mut bytes = fs::read(&log).unwrap();
    let second = BatchHeader::parse(&bytes).unwrap().batch_length as usize;
    // max_expiry_ms is bytes 44..52 of the header: i64::MAX (never expires) becomes -1.
    bytes[second + 51] ^= 0x80;
    fs::write(&log, &bytes).unwrap();

    let store = Store::open(dir.path(), options(&clock)).unwrap();
    let partition = partition_of(&store, "t");
    assert!(matches!(
        partition.read(10, 10, u64::MAX),
        Err(Error::Corrupt { .. })
    ));
    // A read that starts before it stops at the damage too, never skips past it.
    match partition.read(0, 100, u64::MAX) {
        Ok(read) => assert!(read.records.iter().all(|r| r.offset < 10), "{read:?}"),
        Err(error) => assert!(matches!(error, Error::Corrupt { .. }), "{error}"),
    }
    let after = partition.read(20, 10, u64::MAX).unwrap();
    assert_eq!(after.records.first().map(|r| r.offset), Some(20));
}

#[test]
fn missing_or_garbled_indexes_are_rebuilt_and_lookups_match_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let expected_by_time: Vec<(i64, Option<u64>)>;
    {
        let store = Store::open(dir.path(), options(&clock)).unwrap();
        let partition = create_partition(&store, "t", small_segments());
        for i in 0..40 {
            partition.append_durable(&records(i * 25, 25)).unwrap();
        }
        expected_by_time = [-5, 0, 1, 333, 999, 1000, 5000]
            .iter()
            .map(|&t| {
                (
                    START_MS + t,
                    partition.offset_for_timestamp(START_MS + t).unwrap(),
                )
            })
            .collect();
        assert_eq!(expected_by_time[3].1, Some(333));
        assert_eq!(expected_by_time[5].1, None);
        store.close().unwrap();
    }
    let partition_dir = dir.path().join("topics/t/0");
    for (n, entry) in fs::read_dir(&partition_dir).unwrap().enumerate() {
        let path = entry.unwrap().path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("index") if n % 2 == 0 => fs::remove_file(&path).unwrap(),
            Some("index") | Some("timeindex") => {
                let mut bytes = fs::read(&path).unwrap();
                let last = bytes.len() - 1;
                bytes[last] ^= 0xff;
                fs::write(&path, bytes).unwrap();
            }
            _ => {}
        }
    }
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    let partition = partition_of(&store, "t");
    for (timestamp, expected) in expected_by_time {
        assert_eq!(partition.offset_for_timestamp(timestamp).unwrap(), expected);
    }
    for from in [0, 1, 24, 25, 26, 499, 777, 998, 999] {
        let read = partition.read(from, 1, u64::MAX).unwrap();
        assert_eq!(read.records[0].offset, from);
    }
    assert_eq!(read_all(&store, "t", 0).len(), 1000);
}

#[test]
fn retention_by_time_and_size_deletes_whole_segments_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    let config = TopicConfig {
        retention_ms: Some(60_000),
        ..small_segments()
    };
    let partition = create_partition(&store, "t", config.clone());
    let old: Vec<_> = (0..200)
        .map(|i| NewRecord {
            timestamp_ms: Some(START_MS),
            ..NewRecord::value(value(i))
        })
        .collect();
    partition.append_durable(&old).unwrap();
    clock.advance_ms(50_000);
    let fresh: Vec<_> = (200..400)
        .map(|i| NewRecord {
            timestamp_ms: Some(START_MS + 50_000),
            ..NewRecord::value(value(i))
        })
        .collect();
    partition.append_durable(&fresh).unwrap();
    assert_eq!(partition.enforce_retention().unwrap().segments_deleted, 0);
    clock.advance_ms(20_000);
    let outcome = partition.enforce_retention().unwrap();
    assert_eq!(outcome.segments_deleted, 1);
    assert_eq!(outcome.segments_too_old, 1, "{outcome:?}");
    assert_eq!(outcome.log_start, 200);
    assert_eq!(partition.log_start().unwrap(), 200);
    assert!(matches!(
        partition.read(0, 1, 100),
        Err(Error::OffsetOutOfRange { log_start: 200, .. })
    ));
    assert!(matches!(
        partition.check_offset(199),
        Err(Error::OffsetOutOfRange {
            requested: 199,
            log_start: 200,
            ..
        })
    ));
    partition.check_offset(200).unwrap();
    assert_eq!(read_all(&store, "t", 200).len(), 200);

    // Size: keep under 20 KiB.
    let config = TopicConfig {
        retention_ms: None,
        retention_bytes: Some(20 * 1024),
        ..config
    };
    store.alter_topic("t", config).unwrap();
    for i in 0..30 {
        partition
            .append_durable(&records(400 + i * 50, 50))
            .unwrap();
    }
    let outcome = partition.enforce_retention().unwrap();
    assert!(outcome.segments_deleted > 0);
    assert_eq!(
        outcome.segments_over_size, outcome.segments_deleted,
        "{outcome:?}"
    );
    let info = partition.info();
    assert!(
        info.size_bytes < 20 * 1024 + 16 * 1024,
        "size {} after retention",
        info.size_bytes
    );
    assert!(info.log_start > 200);
    drop(store);
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    assert_eq!(
        partition_of(&store, "t").log_start().unwrap(),
        info.log_start
    );
}

/// Recovery after a crash rebuilds the active segment's summary from its bytes. It used
/// to hop over batch headers without checking their CRCs, so a flipped bit in a fsynced
/// batch's max_expiry_ms could make TTL expiry delete a segment whose records had a day
/// to live. A batch that fails its CRC must never shorten its segment's life.
#[test]
fn a_flipped_expiry_bit_found_by_recovery_never_expires_a_segment_early() {
    const DAY_MS: u64 = 86_400_000;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    {
        let store = Store::open(dir.path(), options(&clock)).unwrap();
        let partition = create_partition(&store, "t", small_segments());
        let with_ttl = |from, ttl_ms| {
            let mut batch = records(from, 10);
            batch.iter_mut().for_each(|r| r.ttl_ms = Some(ttl_ms));
            batch
        };
        partition.append_durable(&with_ttl(0, DAY_MS)).unwrap();
        partition.append_durable(&with_ttl(10, 60_000)).unwrap();
        store.simulate_crash();
    }
    let log = segment_logs(dir.path(), "t").remove(0);
    let mut bytes = fs::read(&log).unwrap();
    let header = BatchHeader::parse(&bytes).unwrap();
    let flipped = header.max_expiry_ms ^ (1 << 40);
    assert!(
        flipped < START_MS,
        "the flip must move expiry into the past"
    );
    // max_expiry_ms is bytes 44..52 of the header; bit 40 is bit 0 of byte 49.
    bytes[49] ^= 0x01;
    fs::write(&log, &bytes).unwrap();

    clock.advance_ms(120_000); // past the second batch's TTL, far from the first's
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    let partition = partition_of(&store, "t");
    let outcome = partition.enforce_retention().unwrap();
    assert_eq!(outcome.segments_deleted, 0, "{outcome:?}");
    assert_eq!(partition.log_start().unwrap(), 0);
    assert!(matches!(
        partition.read(0, 10, u64::MAX),
        Err(Error::Corrupt { .. })
    ));
}

/// A batch the checkpoint vouches for (fsynced, acknowledged) that fails its CRC is
/// corruption even when it is the last one: it is not a torn write, so the partition
/// opens, reads of it fail, and the rest keeps serving and taking appends. (Here the
/// index files are lost too, so recovery scans the segment.)
#[test]
fn a_damaged_last_batch_that_was_fsynced_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    {
        let store = Store::open(dir.path(), options(&clock)).unwrap();
        let partition = create_partition(&store, "t", small_segments());
        partition.append_durable(&records(0, 10)).unwrap();
        partition.append_durable(&records(10, 10)).unwrap();
        store.close().unwrap();
    }
    let log = segment_logs(dir.path(), "t").remove(0);
    for suffix in ["index", "timeindex"] {
        fs::remove_file(log.with_extension(suffix)).unwrap();
    }
    let mut bytes = fs::read(&log).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01; // the last value byte of the last batch
    fs::write(&log, &bytes).unwrap();

    let store = Store::open(dir.path(), options(&clock)).unwrap();
    let partition = partition_of(&store, "t");
    assert_eq!(partition.end_offset().unwrap(), 20);
    assert_eq!(
        partition
            .read(0, 10, u64::MAX)
            .unwrap()
            .records
            .iter()
            .map(|r| r.offset)
            .collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    assert!(matches!(
        partition.read(10, 10, u64::MAX),
        Err(Error::Corrupt { .. })
    ));
    assert_eq!(
        partition
            .append_durable(&records(20, 1))
            .unwrap()
            .base_offset,
        20
    );
    assert_eq!(
        fs::read(&log).unwrap()[..bytes.len()],
        bytes[..],
        "kept as it was"
    );
}

#[test]
fn expired_messages_are_never_read_and_expired_segments_go() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    let config = TopicConfig {
        default_ttl_ms: Some(10_000),
        ..small_segments()
    };
    let partition = create_partition(&store, "t", config);
    let mut batch = records(0, 4);
    batch[1].ttl_ms = Some(1_000);
    batch[2].ttl_ms = Some(0); // never expires
    partition.append_durable(&batch).unwrap();
    clock.advance_ms(1_000);
    let offsets: Vec<_> = partition
        .read(0, 10, u64::MAX)
        .unwrap()
        .records
        .iter()
        .map(|r| r.offset)
        .collect();
    assert_eq!(offsets, vec![0, 2, 3]);
    clock.advance_ms(9_000);
    let read = partition.read(0, 10, u64::MAX).unwrap();
    assert_eq!(
        read.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(read.next_offset, 4);

    // A segment whose every record expired is deleted, even the active one.
    partition.append_durable(&records(4, 3)).unwrap();
    assert_eq!(partition.enforce_retention().unwrap().segments_deleted, 0);
    clock.advance_ms(10_000);
    let outcome = partition.enforce_retention().unwrap();
    assert_eq!(
        outcome.segments_deleted, 0,
        "segment holding a never-expiring record stays"
    );
    let second = store
        .create_topic(
            "u",
            1,
            TopicConfig {
                default_ttl_ms: Some(10_000),
                ..small_segments()
            },
        )
        .unwrap();
    let p = second.partition(0).unwrap().clone();
    p.append_durable(&records(0, 30)).unwrap();
    clock.advance_ms(10_000);
    let outcome = p.enforce_retention().unwrap();
    assert_eq!(outcome.segments_deleted, 1);
    assert_eq!(outcome.segments_expired, 1, "{outcome:?}");
    assert_eq!(p.log_start().unwrap(), 30);
    assert_eq!(p.append_durable(&records(30, 1)).unwrap().base_offset, 30);
}

#[test]
fn concurrent_durable_appenders_share_fsyncs_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    let partition = create_partition(
        &store,
        "t",
        TopicConfig {
            segment_bytes: 64 * 1024,
            ..small_segments()
        },
    );
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let partition = partition.clone();
            std::thread::spawn(move || {
                let mut offsets = Vec::new();
                for _ in 0..50 {
                    let appended = partition
                        .append_durable(&[NewRecord::value("payload")])
                        .unwrap();
                    offsets.push(appended.base_offset);
                }
                offsets
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..400).collect::<Vec<_>>());
    assert_eq!(partition.end_offset().unwrap(), 400);
}

#[test]
fn waiting_for_data_wakes_on_append_without_polling() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    let partition = create_partition(&store, "t", small_segments());
    assert!(!partition.wait_for_data_blocking(0, Duration::from_millis(10)));
    let writer = {
        let partition = partition.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            partition.append_durable(&records(0, 1)).unwrap();
        })
    };
    assert!(partition.wait_for_data_blocking(0, Duration::from_secs(10)));
    writer.join().unwrap();
}

/// A call on a partition whose topic is deleted under it says so, instead of the
/// "storage engine closed" a shutdown gives: a client must not retry it.
#[test]
fn calls_on_a_deleted_topics_partition_say_it_was_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    let partition = create_partition(&store, "gone", small_segments());
    let kept = create_partition(&store, "kept", small_segments());
    partition.append_durable(&records(0, 1)).unwrap();
    let waiter = {
        let partition = partition.clone();
        // Offset 5 is never written: only the deletion ends this wait.
        std::thread::spawn(move || partition.wait_durable_blocking(5))
    };
    store.delete_topic("gone").unwrap();
    let deleted = |result: Result<(), Error>| match result {
        Err(Error::TopicDeleted { partition }) => assert_eq!(partition, "gone/0"),
        other => panic!("expected TopicDeleted, got {other:?}"),
    };
    deleted(waiter.join().unwrap());
    deleted(partition.append(&records(1, 1)).map(drop));
    kept.append_durable(&records(0, 1)).unwrap();

    store.close().unwrap();
    assert!(matches!(kept.append(&records(1, 1)), Err(Error::Closed)));
}

#[test]
fn topics_are_validated_listed_described_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    assert!(matches!(
        store.create_topic("a/b", 1, TopicConfig::default()),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        store.create_topic("a", 0, TopicConfig::default()),
        Err(Error::InvalidArgument(_))
    ));
    store.create_topic("a", 3, TopicConfig::default()).unwrap();
    assert!(matches!(
        store.create_topic("a", 1, TopicConfig::default()),
        Err(Error::AlreadyExists { .. })
    ));
    store.create_topic("b", 1, TopicConfig::default()).unwrap();
    let names: Vec<_> = store
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let topic = store.topic("a").unwrap();
    topic
        .partition(2)
        .unwrap()
        .append_durable(&records(0, 2))
        .unwrap();
    assert!(matches!(topic.partition(3), Err(Error::InvalidArgument(_))));
    let info = topic.info();
    assert_eq!(info.partitions.len(), 3);
    assert_eq!(info.partitions[2].end_offset, 2);
    assert_eq!(info.partitions[2].segment_count, 1);
    store
        .offsets()
        .commit("g", &[("a".into(), 0, 5, String::new())])
        .unwrap();
    store.delete_topic("a").unwrap();
    assert!(matches!(store.topic("a"), Err(Error::NotFound { .. })));
    assert!(store.offsets().fetch("g", "a", 0).is_none());
    assert!(!dir.path().join("topics/a").exists());
    drop(store);
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    assert_eq!(store.topics().len(), 1);
}

#[test]
fn a_topic_s_owner_survives_reopen_and_growth_and_a_bad_owner_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    assert!(matches!(
        store.create_topic_owned("o", 1, TopicConfig::default(), Some("has space")),
        Err(Error::InvalidArgument(_))
    ));
    assert!(store.topic("o").is_err(), "nothing was created");
    store
        .create_topic_owned("o", 1, TopicConfig::default(), Some("svc-orders"))
        .unwrap();
    store
        .create_topic("plain", 1, TopicConfig::default())
        .unwrap();
    assert_eq!(
        store.create_partitions("o", 4).unwrap().owner(),
        Some("svc-orders")
    );
    drop(store);
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    assert_eq!(store.topic("o").unwrap().owner(), Some("svc-orders"));
    assert_eq!(store.topic("o").unwrap().partitions().len(), 4);
    assert_eq!(store.topic("plain").unwrap().owner(), None);
    drop(store);
    std::fs::write(dir.path().join("topics/o/topic.owner"), b"two\nlines").unwrap();
    let error = Store::open(dir.path(), options(&clock)).unwrap_err();
    assert!(error.to_string().contains("topic.owner"), "{error}");
}

#[test]
fn a_second_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let _store = Store::open(dir.path(), options(&clock)).unwrap();
    let error = Store::open(dir.path(), options(&clock)).unwrap_err();
    assert!(error.to_string().contains("in use"), "{error}");
}

#[test]
fn interval_and_never_policies_make_data_visible_at_once_and_durable_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    for (name, fsync) in [("i", FsyncPolicy::IntervalMs(5)), ("n", FsyncPolicy::Never)] {
        let partition = create_partition(
            &store,
            name,
            TopicConfig {
                fsync,
                ..small_segments()
            },
        );
        let appended = partition.append(&records(0, 3)).unwrap();
        assert_eq!(
            partition.end_offset().unwrap(),
            3,
            "{name}: written data is visible"
        );
        partition
            .wait_durable_blocking(appended.last_offset)
            .unwrap();
    }
}

#[test]
fn mapped_segments_stay_within_the_bound_and_reads_stay_correct() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(
        dir.path(),
        StoreOptions {
            mapped_segments_max: 2,
            ..options(&clock)
        },
    )
    .unwrap();
    let config = TopicConfig {
        segment_bytes: 4096,
        ..small_segments()
    };
    let partition = create_partition(&store, "t", config);
    for i in 0..20 {
        partition.append_durable(&records(i * 40, 40)).unwrap();
    }
    assert!(partition.info().segment_count > 5);
    // Twice over every segment: evicted mappings are mapped again on demand.
    for _ in 0..2 {
        assert_eq!(read_all(&store, "t", 0), (0..800).collect::<Vec<_>>());
        assert!(
            store.mapped_segments() <= 2,
            "{} mapped",
            store.mapped_segments()
        );
    }
}

/// Damage that appears under an open partition (the disk returns other bytes than were
/// written, after recovery looked) is caught by the reads themselves: the per-message
/// read and the batch read each report the damaged batch as corruption and never serve
/// it, whether the flip is in a record, a header's CRC or its `max_expiry_ms` (which
/// would otherwise pass the batch off as expired), in a sealed segment or the active
/// one. Reads before and after the damaged batch still work.
#[test]
fn damage_under_an_open_partition_is_reported_by_both_reads_never_served() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    let partition = create_partition(&store, "t", small_segments());
    for i in 0..60 {
        partition.append_durable(&records(i * 10, 10)).unwrap();
    }
    let logs = segment_logs(dir.path(), "t");
    assert!(logs.len() > 2, "{logs:?}");
    // The active segment holds at least three batches: one before the damage, one after.
    let mut i = 60;
    while fs::metadata(logs.last().unwrap()).unwrap().len() < 3000 {
        partition.append_durable(&records(i * 10, 10)).unwrap();
        i += 1;
    }
    assert_eq!(segment_logs(dir.path(), "t").len(), logs.len());
    // In the second batch of the first (sealed) segment and of the active one: its last
    // byte (a record), its CRC (bytes 12..16) and the sign bit of its max_expiry_ms
    // (bytes 44..52).
    for log in [&logs[0], logs.last().unwrap()] {
        let bytes = fs::read(log).unwrap();
        let first = BatchHeader::parse(&bytes).unwrap();
        let at = first.batch_length as usize;
        let damaged = BatchHeader::parse(&bytes[at..]).unwrap();
        let last = at + damaged.batch_length as usize - 1;
        for position in [last, at + 13, at + 51] {
            let file = fs::OpenOptions::new().write(true).open(log).unwrap();
            file.write_all_at(&[bytes[position] ^ 0x80], position as u64)
                .unwrap();
            let range = damaged.base_offset..=damaged.last_offset();
            let what = format!("{} at {position}", log.display());
            let error = partition.read(*range.start(), 100, u64::MAX).unwrap_err();
            assert!(matches!(error, Error::Corrupt { .. }), "{what}: {error}");
            let error = partition
                .read_batches(*range.start(), 100, u64::MAX, None)
                .unwrap_err();
            assert!(matches!(error, Error::Corrupt { .. }), "{what}: {error}");
            // From the batch before: its records, then a stop before the damage.
            let from = first.base_offset;
            let read = partition.read(from, 1000, u64::MAX).unwrap();
            assert!(
                read.records.iter().all(|r| !range.contains(&r.offset)),
                "{what}"
            );
            assert!(
                read.records.iter().all(|r| r.value == value(r.offset)),
                "{what}"
            );
            assert_eq!(read.next_offset, *range.start(), "{what}");
            let read = partition.read_batches(from, 1000, u64::MAX, None).unwrap();
            assert_eq!(read.batches.len(), 1, "{what}");
            assert_eq!(read.batches[0].base_offset, from, "{what}");
            assert_eq!(read.next_offset, *range.start(), "{what}");
            // Past it, both serve.
            let after = range.end() + 1;
            let read = partition.read(after, 5, u64::MAX).unwrap();
            assert_eq!(
                read.records.first().map(|r| r.offset),
                Some(after),
                "{what}"
            );
            let read = partition.read_batches(after, 5, u64::MAX, None).unwrap();
            assert_eq!(read.batches.first().map(|b| b.base_offset), Some(after));
            assert_eq!(read.next_offset, after + 10, "{what}");
            file.write_all_at(&[bytes[position]], position as u64)
                .unwrap();
        }
    }
    let read = partition.read(0, 1000, u64::MAX).unwrap();
    assert!(read.records.iter().all(|r| r.value == value(r.offset)));
}

/// A topic created while the store closes is either refused (`Closed`) or closed with
/// the others: an append to it fails, never waits for a flush that will not come
/// (the broker's shutdown once hung on a dead-letter topic created that way).
#[test]
fn a_topic_created_while_the_store_closes_is_refused_or_closed_with_it() {
    for round in 0..200 {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), StoreOptions::default()).unwrap());
        let creator = {
            let store = store.clone();
            std::thread::spawn(move || store.create_topic("late", 1, TopicConfig::default()))
        };
        // Races the creation.
        store.close().unwrap();
        match creator.join().unwrap() {
            Err(Error::Closed) => {}
            Ok(topic) => {
                let partition = topic.partition(0).unwrap().clone();
                let (done, appended) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let _ = done.send(partition.append_durable(&records(0, 1)).is_err());
                });
                let refused = appended
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|_| {
                        panic!(
                            "round {round}: an append to a topic created during close waits forever"
                        )
                    });
                assert!(refused, "round {round}: an append after close succeeded");
            }
            Err(other) => panic!("round {round}: {other:?}"),
        }
        assert!(matches!(
            store.create_topic("later", 1, TopicConfig::default()),
            Err(Error::Closed)
        ));
    }
}
