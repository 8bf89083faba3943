//! The consumer offsets store through its public API: commits, deletes and reopen;
//! torn tails and corruption of `offsets.log`; compaction; validation; concurrent
//! committers. (Its unit tests, beside the code, cover the record codec and a model of
//! the map; `faults.rs` and `statelog.rs` cover power cuts and I/O errors.)

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tidelog_storage::fsutil::temp_path;
use tidelog_storage::limits::{
    COMMIT_METADATA_BYTES_MAX, GROUP_ID_BYTES_MAX, TOPIC_NAME_BYTES_MAX,
};
use tidelog_storage::offsets::{
    LOG_FILE_NAME, OffsetOp, OffsetRecord, RECORD_HEADER_BYTES, RECORD_VERSION, decode_record,
    encode_record,
};
use tidelog_storage::{Clock, CommittedOffset, Error, ManualClock, OffsetStore, OsFs, Result};

fn new_clock() -> Arc<ManualClock> {
    ManualClock::new(1_700_000_000_000)
}

fn open(dir: &Path, clock: &Arc<ManualClock>) -> OffsetStore {
    OffsetStore::open(Arc::new(OsFs), dir, clock.clone()).unwrap()
}

fn entry(topic: &str, partition: u32, offset: u64, metadata: &str) -> (String, u32, u64, String) {
    (topic.to_string(), partition, offset, metadata.to_string())
}

fn log_of(dir: &Path) -> PathBuf {
    dir.join(LOG_FILE_NAME)
}

fn offset_of(store: &OffsetStore, group: &str, topic: &str, partition: u32) -> Option<u64> {
    store
        .fetch(group, topic, partition)
        .map(|value| value.offset)
}

/// Everything in the store, for comparing two stores or a store with a model.
fn dump(store: &OffsetStore) -> Vec<(String, String, u32, CommittedOffset)> {
    let mut all = Vec::new();
    for group in store.list_groups() {
        for (topic, partition, value) in store.fetch_group(&group) {
            all.push((group.clone(), topic, partition, value));
        }
    }
    all
}

fn assert_corrupt_at(result: Result<OffsetStore>, file: &Path, at: u64) {
    match result {
        Err(Error::Corrupt {
            file: f,
            position,
            reason,
        }) => {
            assert_eq!(f, file);
            assert_eq!(position, at, "reason: {reason}");
        }
        other => panic!("expected Error::Corrupt at {at}, got {other:?}"),
    }
}

#[test]
fn commit_fetch_and_reopen_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let clock = new_clock();
    let store = open(dir.path(), &clock);
    assert!(store.list_groups().is_empty());
    assert_eq!(store.fetch("g", "t", 0), None);

    store
        .commit("g", &[entry("t", 1, 42, "m1"), entry("a-topic", 0, 7, "")])
        .unwrap();
    let at = clock.now_ms();
    assert_eq!(
        store.fetch("g", "t", 1),
        Some(CommittedOffset {
            offset: 42,
            metadata: "m1".to_string(),
            commit_timestamp_ms: at,
        })
    );
    assert_eq!(store.fetch("g", "t", 0), None);
    assert_eq!(store.fetch("other", "t", 1), None);
    let group = store.fetch_group("g");
    let keys: Vec<_> = group
        .iter()
        .map(|(t, p, v)| (t.as_str(), *p, v.offset))
        .collect();
    assert_eq!(keys, [("a-topic", 0, 7), ("t", 1, 42)]);
    assert_eq!(store.list_groups(), ["g"]);
    let before = dump(&store);
    drop(store);

    let store = open(dir.path(), &clock);
    assert_eq!(dump(&store), before);
}

#[test]
fn empty_commit_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &new_clock());
    store.commit("g", &[]).unwrap();
    assert_eq!(store.log_bytes(), 0);
    assert!(store.list_groups().is_empty());
}

#[test]
fn many_commits_then_reopen_gives_latest_values() {
    let dir = tempfile::tempdir().unwrap();
    let clock = new_clock();
    let store = open(dir.path(), &clock);
    let mut model = BTreeMap::new();
    for i in 0..300u64 {
        clock.advance_ms(3);
        let group = format!("group-{}", i % 3);
        let partition = (i % 4) as u32;
        let metadata = format!("commit {i}");
        store
            .commit(&group, &[entry("orders", partition, i * 10, &metadata)])
            .unwrap();
        model.insert((group, partition), (i * 10, metadata, clock.now_ms()));
    }
    drop(store);

    let store = open(dir.path(), &clock);
    for ((group, partition), (offset, metadata, at)) in &model {
        let value = store.fetch(group, "orders", *partition).unwrap();
        assert_eq!(value.offset, *offset);
        assert_eq!(&value.metadata, metadata);
        assert_eq!(value.commit_timestamp_ms, *at);
    }
    assert_eq!(store.list_groups(), ["group-0", "group-1", "group-2"]);
}

#[test]
fn later_entry_for_the_same_partition_in_one_commit_wins() {
    let dir = tempfile::tempdir().unwrap();
    let clock = new_clock();
    let store = open(dir.path(), &clock);
    store
        .commit(
            "g",
            &[entry("t", 0, 1, "first"), entry("t", 0, 2, "second")],
        )
        .unwrap();
    assert_eq!(offset_of(&store, "g", "t", 0), Some(2));
    drop(store);
    let store = open(dir.path(), &clock);
    assert_eq!(store.fetch("g", "t", 0).unwrap().metadata, "second");
}

#[test]
fn delete_group_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = new_clock();
    let store = open(dir.path(), &clock);
    store.commit("g1", &[entry("t", 0, 5, "")]).unwrap();
    store.commit("g2", &[entry("t", 0, 6, "")]).unwrap();
    assert!(store.delete_group("g1").unwrap());
    assert!(!store.delete_group("g1").unwrap());
    assert!(!store.delete_group("never-existed").unwrap());
    assert_eq!(store.fetch("g1", "t", 0), None);
    assert_eq!(store.list_groups(), ["g2"]);
    drop(store);

    let store = open(dir.path(), &clock);
    assert_eq!(store.fetch("g1", "t", 0), None);
    assert!(store.fetch_group("g1").is_empty());
    assert_eq!(store.list_groups(), ["g2"]);
    assert_eq!(offset_of(&store, "g2", "t", 0), Some(6));

    // A deleted group can come back with fresh offsets.
    store.commit("g1", &[entry("t", 0, 9, "")]).unwrap();
    drop(store);
    let store = open(dir.path(), &clock);
    assert_eq!(offset_of(&store, "g1", "t", 0), Some(9));
}

#[test]
fn delete_topic_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = new_clock();
    let store = open(dir.path(), &clock);
    store
        .commit(
            "g1",
            &[
                entry("t1", 0, 1, ""),
                entry("t1", 1, 2, ""),
                entry("t2", 0, 3, ""),
            ],
        )
        .unwrap();
    store.commit("g2", &[entry("t1", 0, 4, "")]).unwrap();
    store.delete_topic("t1").unwrap();
    store.delete_topic("no-such-topic").unwrap();

    let check = |store: &OffsetStore| {
        assert_eq!(store.fetch("g1", "t1", 0), None);
        assert_eq!(store.fetch("g1", "t1", 1), None);
        assert_eq!(offset_of(store, "g1", "t2", 0), Some(3));
        // g2 had only t1: it is gone.
        assert_eq!(store.list_groups(), ["g1"]);
    };
    check(&store);
    drop(store);
    check(&open(dir.path(), &clock));
}

/// Writes two commits to the same key, then cuts the file at every byte of the last
/// record: reopening gives the first value (or, uncut, the second), never garbage,
/// and truncates the file back to the end of the first record.
#[test]
fn torn_tail_at_every_byte_of_last_record_keeps_previous_value() {
    let dir = tempfile::tempdir().unwrap();
    let clock = new_clock();
    let store = open(dir.path(), &clock);
    store.commit("g", &[entry("t", 0, 10, "old")]).unwrap();
    let first_end = store.log_bytes();
    store
        .commit("g", &[entry("t", 0, 20, "new"), entry("t", 1, 5, "new")])
        .unwrap();
    drop(store);
    let full = fs::read(log_of(dir.path())).unwrap();
    assert!(full.len() as u64 > first_end);

    for cut in first_end as usize..=full.len() {
        let case = tempfile::tempdir().unwrap();
        fs::write(log_of(case.path()), &full[..cut]).unwrap();
        let store = open(case.path(), &clock);
        if cut == full.len() {
            assert_eq!(offset_of(&store, "g", "t", 0), Some(20));
            assert_eq!(offset_of(&store, "g", "t", 1), Some(5));
            continue;
        }
        assert_eq!(offset_of(&store, "g", "t", 0), Some(10), "cut at {cut}");
        // The torn commit is gone as a unit.
        assert_eq!(offset_of(&store, "g", "t", 1), None, "cut at {cut}");
        assert_eq!(
            fs::metadata(log_of(case.path())).unwrap().len(),
            first_end,
            "cut at {cut}"
        );
        // The log accepts appends after the truncation and replays cleanly.
        store.commit("g", &[entry("t", 0, 30, "")]).unwrap();
        drop(store);
        let store = open(case.path(), &clock);
        assert_eq!(offset_of(&store, "g", "t", 0), Some(30), "cut at {cut}");
    }
}

/// A crash can leave the last record with wrong bytes rather than missing ones
/// (a page written, another not): any damage confined to the last record, or a
/// zero-filled extension, is a torn tail.
#[test]
fn damaged_last_record_is_truncated_as_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let clock = new_clock();
    let store = open(dir.path(), &clock);
    store.commit("g", &[entry("t", 0, 10, "old")]).unwrap();
    let first_end = store.log_bytes() as usize;
    store.commit("g", &[entry("t", 0, 20, "new")]).unwrap();
    drop(store);
    let full = fs::read(log_of(dir.path())).unwrap();

    let mut damaged_images = Vec::new();
    for at in first_end..full.len() {
        let mut image = full.clone();
        image[at] ^= 0xFF;
        damaged_images.push(image);
    }
    let mut zero_extended = full[..first_end].to_vec();
    zero_extended.extend_from_slice(&[0; 4096]);
    damaged_images.push(zero_extended);
    let mut zeroed_last = full.clone();
    zeroed_last[first_end..].fill(0);
    damaged_images.push(zeroed_last);

    for (case_number, image) in damaged_images.iter().enumerate() {
        let case = tempfile::tempdir().unwrap();
        fs::write(log_of(case.path()), image).unwrap();
        let store = open(case.path(), &clock);
        assert_eq!(
            offset_of(&store, "g", "t", 0),
            Some(10),
            "case {case_number}"
        );
        assert_eq!(
            fs::metadata(log_of(case.path())).unwrap().len(),
            first_end as u64,
            "case {case_number}"
        );
    }
}

/// Damage to any byte of a record that intact records follow is corruption: the
/// open fails, naming the file and the damaged record, and the file is left as is.
#[test]
fn corrupted_byte_in_middle_record_is_reported_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let clock = new_clock();
    let store = open(dir.path(), &clock);
    store.commit("g", &[entry("t", 0, 1, "one")]).unwrap();
    let middle_start = store.log_bytes() as usize;
    store.commit("g", &[entry("t", 0, 2, "two")]).unwrap();
    let middle_end = store.log_bytes() as usize;
    store.commit("g", &[entry("t", 0, 3, "three")]).unwrap();
    drop(store);
    let full = fs::read(log_of(dir.path())).unwrap();

    for at in middle_start..middle_end {
        for flip in [0xFF_u8, 0x01, 0x80] {
            let case = tempfile::tempdir().unwrap();
            let path = log_of(case.path());
            let mut image = full.clone();
            image[at] ^= flip;
            fs::write(&path, &image).unwrap();
            assert_corrupt_at(
                OffsetStore::open(Arc::new(OsFs), case.path(), clock.clone()),
                &path,
                middle_start as u64,
            );
            assert_eq!(fs::read(&path).unwrap(), image, "byte {at} flip {flip:#x}");
        }
    }
}

/// A record whose checksum matches but whose version is newer than this build's was
/// written whole by a newer build: refused as such (not as corruption), never
/// truncated, even at the tail.
#[test]
fn newer_version_with_valid_checksum_is_refused_as_newer_even_at_tail() {
    let dir = tempfile::tempdir().unwrap();
    let clock = new_clock();
    let store = open(dir.path(), &clock);
    store.commit("g", &[entry("t", 0, 1, "")]).unwrap();
    let good_len = store.log_bytes();
    drop(store);

    let mut record = encode_record(&OffsetRecord {
        written_at_ms: 0,
        ops: vec![OffsetOp::DeleteTopic {
            topic: "t".to_string(),
        }],
    })
    .unwrap();
    record[RECORD_HEADER_BYTES] = RECORD_VERSION + 1; // the body starts with the version
    let crc = crc32fast::hash(&record[RECORD_HEADER_BYTES..]);
    record[4..RECORD_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    let path = log_of(dir.path());
    let mut image = fs::read(&path).unwrap();
    image.extend_from_slice(&record);
    fs::write(&path, &image).unwrap();

    match OffsetStore::open(Arc::new(OsFs), dir.path(), clock.clone()) {
        Err(tidelog_storage::Error::WrittenByNewer { file, what }) => {
            assert_eq!(file, path);
            assert!(what.contains(&format!("at byte {good_len}")), "{what}");
        }
        other => panic!("expected a refusal as written by a newer build, got {other:?}"),
    }
    assert_eq!(fs::read(&path).unwrap(), image);
}

#[test]
fn compaction_preserves_all_values() {
    let dir = tempfile::tempdir().unwrap();
    let clock = new_clock();
    let store = open(dir.path(), &clock);
    for round in 0..20u64 {
        for group in 0..5 {
            clock.advance_ms(1);
            let entries: Vec<_> = (0..6)
                .map(|p| {
                    entry(
                        &format!("topic-{}", p % 3),
                        p,
                        round * 100 + p as u64,
                        &format!("r{round}"),
                    )
                })
                .collect();
            store.commit(&format!("g{group}"), &entries).unwrap();
        }
    }
    store.delete_group("g4").unwrap();
    store.delete_topic("topic-2").unwrap();
    let before = dump(&store);
    let bytes_before = store.log_bytes();

    store.compact().unwrap();
    assert!(
        store.log_bytes() < bytes_before / 10,
        "{} -> {}",
        bytes_before,
        store.log_bytes()
    );
    assert_eq!(
        store.log_bytes(),
        fs::metadata(log_of(dir.path())).unwrap().len()
    );
    assert_eq!(dump(&store), before);
    assert!(!temp_path(&log_of(dir.path())).exists());

    // Appends after compaction go to the new file.
    store
        .commit("g0", &[entry("topic-0", 0, 999_999, "after")])
        .unwrap();
    let mut expected = dump(&store);
    drop(store);
    let store = open(dir.path(), &clock);
    assert_eq!(dump(&store), expected);

    // Compacting twice and an empty store are fine too.
    store.compact().unwrap();
    store.compact().unwrap();
    for group in store.list_groups() {
        assert!(store.delete_group(&group).unwrap());
    }
    store.compact().unwrap();
    assert_eq!(store.log_bytes(), 0);
    drop(store);
    expected.clear();
    assert_eq!(dump(&open(dir.path(), &clock)), expected);
}

#[test]
fn invalid_group_topic_and_metadata_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &new_clock());
    let invalid = |result: Result<()>| {
        assert!(
            matches!(result, Err(Error::InvalidArgument(_))),
            "{result:?}"
        );
    };
    let long_group = "g".repeat(GROUP_ID_BYTES_MAX + 1);
    let long_topic = "t".repeat(TOPIC_NAME_BYTES_MAX + 1);
    let long_metadata = "m".repeat(COMMIT_METADATA_BYTES_MAX + 1);
    invalid(store.commit("", &[entry("t", 0, 1, "")]));
    invalid(store.commit("", &[]));
    invalid(store.commit(&long_group, &[entry("t", 0, 1, "")]));
    invalid(store.commit("g", &[entry("", 0, 1, "")]));
    invalid(store.commit("g", &[entry(&long_topic, 0, 1, "")]));
    invalid(store.commit("g", &[entry("t", 0, 1, &long_metadata)]));
    // One bad entry rejects the whole call.
    invalid(store.commit(
        "g",
        &[entry("t", 0, 1, ""), entry("t", 1, 1, &long_metadata)],
    ));
    invalid(store.delete_group("").map(|_| ()));
    invalid(store.delete_group(&long_group).map(|_| ()));
    invalid(store.delete_topic(""));
    assert_eq!(store.log_bytes(), 0, "nothing was written");
    assert!(store.list_groups().is_empty());

    // The limits themselves are accepted.
    let group = "g".repeat(GROUP_ID_BYTES_MAX);
    let topic = "t".repeat(TOPIC_NAME_BYTES_MAX);
    let metadata = "m".repeat(COMMIT_METADATA_BYTES_MAX);
    store
        .commit(&group, &[entry(&topic, 0, 1, &metadata)])
        .unwrap();
    assert_eq!(store.fetch(&group, &topic, 0).unwrap().metadata, metadata);
}

#[test]
fn open_creates_missing_directories() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a").join("b").join("offsets");
    let clock = new_clock();
    let store = open(&dir, &clock);
    store.commit("g", &[entry("t", 0, 1, "")]).unwrap();
    assert!(log_of(&dir).is_file());
    drop(store);
    assert_eq!(offset_of(&open(&dir, &clock), "g", "t", 0), Some(1));

    let file = root.path().join("not-a-dir");
    fs::write(&file, b"").unwrap();
    assert!(matches!(
        OffsetStore::open(Arc::new(OsFs), &file, clock.clone()),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn concurrent_commits_are_all_durable() {
    let dir = tempfile::tempdir().unwrap();
    let clock = new_clock();
    let store = Arc::new(open(dir.path(), &clock));
    let threads: Vec<_> = (0..8u32)
        .map(|thread| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..40u64 {
                    let group = format!("g{thread}");
                    store
                        .commit(&group, &[entry("t", 0, i, ""), entry("t", 1, i + 1, "")])
                        .unwrap();
                    // A reader never sees a value older than its own acked commit.
                    assert!(offset_of(&store, &group, "t", 0).unwrap() >= i);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let records = {
        let bytes = fs::read(log_of(dir.path())).unwrap();
        let mut at = 0;
        let mut count = 0;
        while let Ok(Some((_, used))) = decode_record(&bytes[at..]) {
            at += used;
            count += 1;
        }
        assert_eq!(at, bytes.len());
        count
    };
    assert!(records <= 8 * 40, "{records} records");
    drop(store);
    let store = open(dir.path(), &clock);
    for thread in 0..8 {
        let group = format!("g{thread}");
        assert_eq!(offset_of(&store, &group, "t", 0), Some(39));
        assert_eq!(offset_of(&store, &group, "t", 1), Some(40));
    }
}
