//! `Partition::read_filtered`: the budget counts only matching records, skipped ones
//! move `next_offset`, and the skip limits end a read that matches nothing.

use bytes::Bytes;
use tidelog_storage::limits::{FILTER_SCAN_BYTES_MAX, FILTER_SCAN_RECORDS_MAX};
use tidelog_storage::{Filter, FsyncPolicy, NewRecord, Store, StoreOptions, TopicConfig};

fn store(dir: &std::path::Path) -> Store {
    Store::open(
        dir,
        StoreOptions {
            flush_threads: 1,
            retention_interval: None,
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

fn config() -> TopicConfig {
    TopicConfig {
        fsync: FsyncPolicy::Never,
        max_message_bytes: 2 << 20,
        ..TopicConfig::default()
    }
}

#[test]
fn the_budget_counts_only_matching_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let topic = store.create_topic("t", 1, config()).unwrap();
    let partition = topic.partition(0).unwrap();
    let records: Vec<NewRecord> = (0..100u64)
        .map(|i| NewRecord {
            key: Some(Bytes::from(if i.is_multiple_of(2) { "a" } else { "b" })),
            value: Bytes::from(vec![b'x'; 100]),
            ..NewRecord::default()
        })
        .collect();
    partition.append(&records).unwrap();
    let filter = Filter::parse(r#"key == "a""#).unwrap();
    let read = partition
        .read_filtered(0, 5, u64::MAX, Some(&filter))
        .unwrap();
    let offsets: Vec<u64> = read.records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, vec![0, 2, 4, 6, 8]);
    // Past the skipped record 9; the next matching one (10) comes next time.
    assert_eq!(read.next_offset, 10);
    assert_eq!(read.filtered.skipped, 5);
    // A byte budget of 250 holds two 101-byte records, not three.
    let read = partition
        .read_filtered(10, 100, 250, Some(&filter))
        .unwrap();
    let offsets: Vec<u64> = read.records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, vec![10, 12]);
    assert_eq!(read.next_offset, 14);
    // Without a filter: every record, as `read`.
    let plain = partition.read_filtered(0, 7, u64::MAX, None).unwrap();
    assert_eq!(plain, partition.read(0, 7, u64::MAX).unwrap());
    store.close().unwrap();
}

#[test]
fn a_read_that_matches_nothing_stops_at_the_skip_limits() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let filter = Filter::parse(r#"key == "none""#).unwrap();

    // Small records: the record limit.
    let topic = store.create_topic("small", 1, config()).unwrap();
    let partition = topic.partition(0).unwrap();
    let count = u64::from(FILTER_SCAN_RECORDS_MAX) + 100;
    let records: Vec<NewRecord> = (0..count)
        .map(|_| NewRecord {
            value: Bytes::from_static(b"v"),
            ..NewRecord::default()
        })
        .collect();
    partition.append(&records).unwrap();
    let read = partition
        .read_filtered(0, 500, u64::MAX, Some(&filter))
        .unwrap();
    assert!(read.records.is_empty());
    assert_eq!(read.next_offset, u64::from(FILTER_SCAN_RECORDS_MAX));
    assert_eq!(read.filtered.skipped, u64::from(FILTER_SCAN_RECORDS_MAX));
    let read = partition
        .read_filtered(read.next_offset, 500, u64::MAX, Some(&filter))
        .unwrap();
    assert_eq!(read.next_offset, count, "the rest, to the end");

    // 1 MiB records: the byte limit.
    let topic = store.create_topic("large", 1, config()).unwrap();
    let partition = topic.partition(0).unwrap();
    let per_record = 1u64 << 20;
    let count = FILTER_SCAN_BYTES_MAX / per_record + 4;
    for _ in 0..count {
        partition
            .append(&[NewRecord {
                value: Bytes::from(vec![0u8; per_record as usize]),
                ..NewRecord::default()
            }])
            .unwrap();
    }
    let read = partition
        .read_filtered(0, 500, u64::MAX, Some(&filter))
        .unwrap();
    assert!(read.records.is_empty());
    assert_eq!(read.next_offset, FILTER_SCAN_BYTES_MAX / per_record);
    store.close().unwrap();
}
