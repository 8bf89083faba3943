//! Unit tests of [`StateLog`] with a small key-value machine. The fault tests (power cuts
//! at every step, EIO, ENOSPC) are in `storage/tests/statelog.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::record::tests::TestOp;
use super::*;
use crate::clock::ManualClock;
use crate::error::Error;
use crate::fs::OsFs;
use crate::fsutil::temp_path;

/// key -> value; `Put` reports the value it replaced, `Delete` whether the key existed.
#[derive(Debug, Default)]
struct Kv {
    map: BTreeMap<String, u64>,
}

impl StateMachine for Kv {
    type Op = TestOp;
    type Outcome = Option<u64>;
    const NAME: &'static str = "test kv";

    fn apply(&mut self, op: TestOp) -> Option<u64> {
        match op {
            TestOp::Put(key, value) => self.map.insert(key, value),
            TestOp::Delete(key) => self.map.remove(&key),
        }
    }

    fn snapshot(&self, out: &mut SnapshotWriter<'_>) -> Result<()> {
        for (key, value) in &self.map {
            out.push(&TestOp::Put(key.clone(), *value))?;
        }
        Ok(())
    }

    fn snapshot_bytes(&self) -> u64 {
        self.map.keys().map(|key| 11 + key.len() as u64).sum()
    }
}

fn open_with(path: &Path, options: StateLogOptions) -> StateLog<Kv> {
    StateLog::open(
        Arc::new(OsFs),
        path,
        Kv::default(),
        ManualClock::new(1_700_000_000_000),
        options,
    )
    .unwrap()
}

fn open(path: &Path) -> StateLog<Kv> {
    open_with(path, StateLogOptions::default())
}

fn put(key: &str, value: u64) -> TestOp {
    TestOp::Put(key.to_string(), value)
}

fn dump(log: &StateLog<Kv>) -> BTreeMap<String, u64> {
    log.read(|kv| kv.map.clone())
}

#[test]
fn submitted_appends_are_written_in_order_whoever_waits_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.statelog");
    let log = open(&path);
    assert_eq!(log.submit(vec![]).unwrap(), None);
    let first = log.submit(vec![put("a", 1)]).unwrap().unwrap();
    let second = log.submit(vec![put("a", 2)]).unwrap().unwrap();
    assert!(dump(&log).is_empty(), "nothing is applied before a wait");
    // Waiting for the second writes both, in submission order.
    assert_eq!(log.wait(second).unwrap(), [Some(1)]);
    assert_eq!(log.wait(first).unwrap(), [None]);
    assert!(log.wait(first).is_err(), "an outcome is collected once");
    // flush_submitted writes what is queued and leaves the outcome to its waiter.
    let third = log.submit(vec![put("b", 3)]).unwrap().unwrap();
    log.flush_submitted().unwrap();
    assert_eq!(dump(&log).get("b"), Some(&3));
    assert_eq!(log.wait(third).unwrap(), [None]);
    drop(log);
    let reopened = open(&path);
    assert_eq!(
        dump(&reopened),
        BTreeMap::from([("a".into(), 2), ("b".into(), 3)])
    );
}

#[test]
fn appends_are_applied_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("kv.statelog");
    let log = open(&path);
    assert_eq!(log.append(vec![]).unwrap(), []);
    assert_eq!(log.log_bytes(), 0);
    assert_eq!(
        log.append(vec![put("a", 1), put("b", 2)]).unwrap(),
        [None, None]
    );
    assert_eq!(log.append_one(put("a", 3)).unwrap(), Some(1));
    assert_eq!(log.append_one(TestOp::Delete("b".into())).unwrap(), Some(2));
    assert_eq!(log.append_one(TestOp::Delete("b".into())).unwrap(), None);
    assert_eq!(log.stats().records, 4);
    assert_eq!(log.stats().appends, 4);
    let bytes = log.log_bytes();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes);
    drop(log);

    let log = open(&path);
    assert_eq!(dump(&log), BTreeMap::from([("a".to_string(), 3)]));
    assert_eq!(log.log_bytes(), bytes);
}

#[test]
fn refused_operations_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir.path().join("kv.statelog"));
    let refused = log.append(vec![put("ok", 1), put("", 2)]);
    assert!(
        matches!(refused, Err(Error::InvalidArgument(_))),
        "{refused:?}"
    );
    assert_eq!(log.log_bytes(), 0);
    assert!(dump(&log).is_empty());

    // One call must fit one record.
    let key = "k".repeat(64);
    let per_op = 1 + 2 + 64 + 8;
    let ops: Vec<_> = (0..OPS_BYTES_MAX / per_op + 1)
        .map(|i| put(&key, i as u64))
        .collect();
    let too_large = log.append(ops);
    assert!(
        matches!(too_large, Err(Error::TooLarge { .. })),
        "{too_large:?}"
    );
    assert_eq!(log.log_bytes(), 0);
}

#[test]
fn concurrent_appends_share_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.statelog");
    let log = Arc::new(open(&path));
    let threads: Vec<_> = (0..8u64)
        .map(|thread| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let key = format!("t{thread}");
                    log.append_one(put(&key, i)).unwrap();
                    // A reader never sees a value older than its own acknowledged append.
                    assert!(log.read(|kv| kv.map[&key]) >= i);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let stats = log.stats();
    assert_eq!(stats.appends, 400);
    assert!(stats.records <= 400, "{stats:?}");
    drop(log);
    let log = open(&path);
    for thread in 0..8 {
        assert_eq!(log.read(|kv| kv.map[&format!("t{thread}")]), 49);
    }
}

#[test]
fn read_settled_runs_only_when_nothing_is_pending() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir.path().join("kv.statelog"));
    log.append_one(put("a", 1)).unwrap();
    assert_eq!(log.read_settled(|kv| kv.map.len()).unwrap(), Some(1));
    log.check_writable().unwrap();
}

#[test]
fn compaction_keeps_the_state_and_shrinks_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.statelog");
    let log = open(&path);
    for i in 0..500u64 {
        log.append_one(put(&format!("key-{}", i % 10), i)).unwrap();
    }
    let before = log.log_bytes();
    let state = dump(&log);
    log.compact().unwrap();
    assert!(
        log.log_bytes() < before / 20,
        "{before} -> {}",
        log.log_bytes()
    );
    assert_eq!(log.log_bytes(), std::fs::metadata(&path).unwrap().len());
    assert!(!temp_path(&path).exists());
    assert_eq!(dump(&log), state);
    assert_eq!(log.stats().compactions, 1);
    // Appends go to the new file.
    log.append_one(put("after", 1)).unwrap();
    drop(log);
    let log = open(&path);
    assert_eq!(log.read(|kv| kv.map.get("after").copied()), Some(1));
    // An empty state compacts to an empty file.
    let keys: Vec<String> = log.read(|kv| kv.map.keys().cloned().collect());
    for key in keys {
        log.append_one(TestOp::Delete(key)).unwrap();
    }
    log.compact().unwrap();
    assert_eq!(log.log_bytes(), 0);
}

#[test]
fn log_is_compacted_automatically_past_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.statelog");
    let options = StateLogOptions {
        compact_min_bytes: 4096,
        compact_live_ratio: 4,
    };
    let log = open_with(&path, options);
    let mut largest = 0;
    for i in 0..2000u64 {
        log.append_one(put(&format!("key-{}", i % 5), i)).unwrap();
        largest = largest.max(log.log_bytes());
    }
    assert!(log.stats().compactions > 10, "{:?}", log.stats());
    // Never more than one record past the bound.
    assert!(largest <= 4096 + 64, "the log reached {largest} bytes");
    drop(log);
    let log = open_with(&path, options);
    assert_eq!(log.read(|kv| kv.map["key-4"]), 1999);
}

#[test]
fn crash_between_compaction_tmp_write_and_rename_keeps_old_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.statelog");
    let log = open(&path);
    log.append_one(put("k", 1)).unwrap();
    let tmp = log.compact_crash_before_rename().unwrap();
    assert_eq!(tmp, temp_path(&path));
    // The temporary file is a complete snapshot, just never installed.
    let snapshot = scan_image::<TestOp>(&std::fs::read(&tmp).unwrap(), |_, _| ());
    assert_eq!((snapshot.end, snapshot.records), (ScanEnd::Clean, 1));
    // The log goes on appending to the old file.
    log.append_one(put("k", 2)).unwrap();
    drop(log); // "crash"
    assert!(tmp.exists());

    let log = open(&path);
    assert!(!tmp.exists(), "a stale .tmp is removed at open");
    assert_eq!(log.read(|kv| kv.map["k"]), 2);
    drop(log);
    // Garbage in a stale temporary file is ignored too.
    std::fs::write(&tmp, b"half a snapshot").unwrap();
    let log = open(&path);
    assert!(!tmp.exists());
    assert_eq!(log.read(|kv| kv.map["k"]), 2);
}

#[test]
fn torn_tail_is_cut_and_corruption_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.statelog");
    let log = open(&path);
    log.append_one(put("k", 1)).unwrap();
    let first = log.log_bytes() as usize;
    log.append_one(put("k", 2)).unwrap();
    log.append_one(put("k", 3)).unwrap();
    drop(log);
    let full = std::fs::read(&path).unwrap();

    // Cut into the last record: torn, truncated, and the log appends after it.
    std::fs::write(&path, &full[..full.len() - 3]).unwrap();
    let log = open(&path);
    assert_eq!(log.read(|kv| kv.map["k"]), 2);
    let cut_len = log.log_bytes();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), cut_len);
    log.append_one(put("k", 4)).unwrap();
    drop(log);
    assert_eq!(open(&path).read(|kv| kv.map["k"]), 4);

    // A flipped byte in the second record: corrupt at its start, file untouched.
    let mut damaged = full.clone();
    damaged[first + 10] ^= 0x40;
    std::fs::write(&path, &damaged).unwrap();
    let opened = StateLog::open(
        Arc::new(OsFs),
        &path,
        Kv::default(),
        ManualClock::new(0),
        StateLogOptions::default(),
    );
    match opened {
        Err(Error::Corrupt { file, position, .. }) => {
            assert_eq!(file, path);
            assert_eq!(position, first as u64);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), damaged);
}

/// A whole record (its checksum matched) of an operation kind or record version this
/// build does not know, at the tail or before other records, is what a newer build
/// writes: the open refuses it as written by a newer tidelogd (not as corruption), and
/// leaves the file as it is for that build.
#[test]
fn a_record_of_a_newer_build_is_refused_as_newer_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.statelog");
    let log = open(&path);
    log.append_one(put("k", 1)).unwrap();
    let first = log.log_bytes();
    drop(log);
    let written = std::fs::read(&path).unwrap();
    let record = |version: u8, kind: u8| {
        let mut body = vec![version];
        body.extend_from_slice(&5i64.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&[kind, 1, 0, b'k']);
        super::record::tests::with_valid_header(&body)
    };
    let later = encode_record(&Record {
        written_at_ms: 6,
        ops: vec![put("k", 2)],
    })
    .unwrap();
    for (newer, what) in [
        (record(RECORD_VERSION, 17), "operation kind 17"),
        (record(RECORD_VERSION + 1, 2), "record version"),
    ] {
        for follows in [&[][..], &later[..]] {
            let bytes = [&written[..], &newer[..], follows].concat();
            std::fs::write(&path, &bytes).unwrap();
            let opened = StateLog::open(
                Arc::new(OsFs),
                &path,
                Kv::default(),
                ManualClock::new(0),
                StateLogOptions::default(),
            );
            let error = opened.expect_err("a record of a newer build is refused");
            let message = error.to_string();
            assert!(
                matches!(&error, Error::WrittenByNewer { file, what: text }
                    if *file == path && text.contains(&format!("at byte {first}"))),
                "{error:?}"
            );
            assert!(
                message.contains("written by a newer tidelogd")
                    && message.contains(what)
                    && message.contains("upgrade to read it")
                    && !message.contains("corrupt"),
                "{message}"
            );
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "left as it is");
        }
    }
}
