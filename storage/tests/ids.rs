//! Lookup by message id (`Partition::find_by_id`, `Topic::find_by_id`, the `.idindex`
//! of each sealed segment):
//!
//! 1. Behaviour through the public API: ids found in every segment, after a clean
//!    reopen and after a crash; the newest of duplicates; expired, deleted and unknown
//!    ids not found; bad ids refused; missing and damaged id indexes rebuilt; a corrupt
//!    batch reported rather than "not found"; compressed batches; several partitions.
//! 2. A model test: random appends (ids fresh, repeated or absent; values from 1 byte to
//!    1 MiB), segment rolls, clean reopens, killed processes and retention, against a
//!    plain list of what was appended.
//! 3. Faults through `FaultyFs`: a power cut after every filesystem operation of a
//!    workload that seals segments (so at every step of writing an id index), a failed
//!    fsync of an id index, a full disk while one is written. Afterwards every
//!    acknowledged id is found at its offset and nothing is ever found at a wrong one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use tidelog_storage::fs::{CrashOptions, FaultyFs, SyncFault, SyncKind};
use tidelog_storage::recovery;
use tidelog_storage::segment::{self, ID_INDEX_SUFFIX, LOG_SUFFIX};
use tidelog_storage::{
    Compression, Error, FsyncPolicy, ManualClock, NewRecord, OsFs, Partition, Store, StoreOptions,
    TopicConfig,
};

const START_MS: i64 = 1_700_000_000_000;

/// A directory for one test case, on a tmpfs where there is one (fast to create and
/// fsync files in).
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

fn options(clock: &Arc<ManualClock>) -> StoreOptions {
    StoreOptions {
        clock: clock.clone(),
        flush_threads: 1,
        retention_interval: None,
        flush_observer: None,
        ..StoreOptions::default()
    }
}

fn faulty_options(fs: &FaultyFs, clock: &Arc<ManualClock>) -> StoreOptions {
    StoreOptions {
        fs: Arc::new(fs.clone()),
        ..options(clock)
    }
}

fn config(segment_bytes: u64, fsync: FsyncPolicy) -> TopicConfig {
    TopicConfig {
        segment_bytes,
        retention_ms: None,
        segment_ms: None,
        fsync,
        ..TopicConfig::default()
    }
}

fn id_of(n: u64) -> Bytes {
    Bytes::from(format!("id-{n}"))
}

fn value_of(n: u64) -> Bytes {
    Bytes::from(format!("value {n} {}", "v".repeat((n % 90) as usize)))
}

/// A record with id `id-n` and value `value_of(n)` (and a header, so lookups return
/// headers too).
fn with_id(n: u64) -> NewRecord {
    NewRecord {
        id: Some(id_of(n)),
        headers: vec![tidelog_storage::Header {
            key: "n".into(),
            value: Bytes::from(n.to_string()),
        }],
        timestamp_ms: Some(START_MS + n as i64),
        ..NewRecord::value(value_of(n))
    }
}

fn partition_dir(data: &Path, topic: &str, partition: u32) -> PathBuf {
    data.join("topics").join(topic).join(partition.to_string())
}

/// The base offsets of the segments in `dir`, in order.
fn bases(dir: &Path) -> Vec<u64> {
    let mut bases: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            segment::parse_segment_name(&e.unwrap().file_name().to_string_lossy(), LOG_SUFFIX)
        })
        .collect();
    bases.sort_unstable();
    bases
}

/// Every sealed segment of `dir` has an id index that loads and validates.
fn assert_sealed_id_indexes_valid(dir: &Path, context: &str) {
    let bases = bases(dir);
    for &base in &bases[..bases.len().saturating_sub(1)] {
        let log_bytes = std::fs::metadata(segment::segment_path(dir, base, LOG_SUFFIX))
            .unwrap()
            .len();
        if let Err(reason) = segment::load_id_index(&OsFs, dir, base, log_bytes, None) {
            panic!("{context}: the id index of segment {base} is not usable: {reason}");
        }
    }
}

/// `id-n` is found at `offset` with its value and header.
fn assert_found(partition: &Partition, n: u64, offset: u64, context: &str) {
    let record = partition
        .find_by_id(&id_of(n))
        .unwrap_or_else(|e| panic!("{context}: looking up id-{n} failed: {e}"))
        .unwrap_or_else(|| panic!("{context}: id-{n} (offset {offset}) not found"));
    assert_eq!(record.offset, offset, "{context}: id-{n}");
    assert_eq!(record.id.as_deref(), Some(&id_of(n)[..]), "{context}");
    assert_eq!(record.value, value_of(n), "{context}: id-{n}");
    assert_eq!(record.headers[0].value, n.to_string(), "{context}");
}

/// Appends `count` records `id-from..` (every fifth without an id) in batches of
/// 1 to 4, durably. Returns the offset of each id.
fn append_ids(partition: &Arc<Partition>, from: u64, count: u64) -> BTreeMap<u64, u64> {
    let mut offsets = BTreeMap::new();
    let mut n = from;
    while n < from + count {
        let size = (1 + n % 4).min(from + count - n);
        let records: Vec<NewRecord> = (n..n + size)
            .map(|i| {
                if i % 5 == 4 {
                    NewRecord::value(value_of(i))
                } else {
                    with_id(i)
                }
            })
            .collect();
        let appended = partition.append_durable(&records).unwrap();
        for (k, i) in (n..n + size).enumerate() {
            if i % 5 != 4 {
                offsets.insert(i, appended.base_offset + k as u64);
            }
        }
        n += size;
    }
    offsets
}

/// Topic `t` of `store`, created with one partition (4 KiB segments, fsync always),
/// and that partition: where most tests here append and look up.
fn one_partition(store: &Store) -> Arc<Partition> {
    store
        .create_topic("t", 1, config(4096, FsyncPolicy::Always))
        .unwrap()
        .partition(0)
        .unwrap()
        .clone()
}

#[test]
fn ids_are_found_in_every_segment_after_a_reopen_and_after_a_crash() {
    let dir = scratch_dir();
    let data = dir.path().join("data");
    let clock = ManualClock::new(START_MS);
    let store = Store::open(&data, options(&clock)).unwrap();
    let topic = store
        .create_topic("t", 1, config(4096, FsyncPolicy::Always))
        .unwrap();
    let partition = topic.partition(0).unwrap().clone();
    let mut offsets = append_ids(&partition, 0, 300);
    assert!(
        partition.info().segment_count >= 6,
        "{:?}",
        partition.info()
    );
    let check = |partition: &Partition, offsets: &BTreeMap<u64, u64>, context: &str| {
        for (&n, &offset) in offsets {
            assert_found(partition, n, offset, context);
        }
        for n in [4, 9, 299, 10_000, 20_001] {
            assert_eq!(partition.find_by_id(&id_of(n)).unwrap(), None, "{context}");
        }
    };
    check(&partition, &offsets, "while running");
    let pdir = partition_dir(&data, "t", 0);
    assert_sealed_id_indexes_valid(&pdir, "after the seals");

    // Bad ids are refused, whatever the partition holds.
    for bad in [&b""[..], &[7u8; 129][..]] {
        assert!(matches!(
            partition.find_by_id(bad),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            topic.find_by_id(bad),
            Err(Error::InvalidArgument(_))
        ));
    }

    // A clean close writes the active segment's id index too.
    drop((topic, partition));
    store.close().unwrap();
    drop(store);
    let last = *bases(&pdir).last().unwrap();
    assert!(segment::segment_path(&pdir, last, ID_INDEX_SUFFIX).exists());
    let store = Store::open(&data, options(&clock)).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap().clone();
    check(&partition, &offsets, "after a clean reopen");
    // Appends after the reopen join the ids the active segment opened with.
    offsets.extend(append_ids(&partition, 300, 40));
    check(
        &partition,
        &offsets,
        "after appending to the reopened segment",
    );

    // A killed process: the active segment's ids are read back from its log.
    drop(partition);
    store.simulate_crash();
    let store = Store::open(&data, options(&clock)).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap().clone();
    check(&partition, &offsets, "after a crash");
    offsets.extend(append_ids(&partition, 340, 40));
    check(&partition, &offsets, "after appending past the crash");
    assert_sealed_id_indexes_valid(&pdir, "after the crash");
    drop(partition);
    store.close().unwrap();
}

#[test]
fn the_newest_visible_unexpired_copy_is_found() {
    let dir = scratch_dir();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    let partition = one_partition(&store);
    let dup = |ttl_ms: Option<u64>, filler: usize| NewRecord {
        id: Some(Bytes::from_static(b"dup")),
        ttl_ms,
        ..NewRecord::value(vec![b'x'; filler])
    };
    let first = partition.append_durable(&[dup(None, 3000)]).unwrap();
    let second = partition.append_durable(&[dup(None, 3000)]).unwrap();
    let third = partition.append_durable(&[dup(Some(1_000), 10)]).unwrap();
    assert_eq!(partition.info().segment_count, 2);
    let found = |partition: &Partition| {
        partition
            .find_by_id(b"dup")
            .unwrap()
            .map(|record| record.offset)
    };
    assert_eq!(found(&partition), Some(third.base_offset));
    // The newest expires: the copy before it is the newest one a reader may see.
    clock.advance_ms(1_000);
    assert_eq!(found(&partition), Some(second.base_offset));
    assert_ne!(first.base_offset, second.base_offset);
    // Two copies in one batch: the later one.
    let both = partition
        .append_durable(&[dup(None, 1), dup(None, 2)])
        .unwrap();
    assert_eq!(found(&partition), Some(both.last_offset));
    store.close().unwrap();
}

#[test]
fn messages_not_yet_visible_are_not_found() {
    let dir = scratch_dir();
    let fs = FaultyFs::new(dir.path(), 7).unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(dir.path().join("data"), faulty_options(&fs, &clock)).unwrap();
    let partition = store
        .create_topic("t", 1, config(1 << 20, FsyncPolicy::Always))
        .unwrap()
        .partition(0)
        .unwrap()
        .clone();
    partition.append_durable(&[with_id(1)]).unwrap();
    // The next fsync fails: the next append is written, never durable (the partition
    // is poisoned), so on an `always` topic no reader sees it, nor does a lookup.
    fs.fail_sync(SyncFault::nth(1).kinds(&[SyncKind::Data]));
    let appended = partition.append(&[with_id(2)]).unwrap();
    assert!(
        partition
            .wait_durable_blocking(appended.last_offset)
            .is_err()
    );
    assert_found(&partition, 1, 0, "durable");
    assert_eq!(partition.find_by_id(&id_of(2)).unwrap(), None);
    drop(partition);
    store.simulate_crash();
}

#[test]
fn missing_and_damaged_id_indexes_are_rebuilt_and_lookups_stay_exact() {
    let dir = scratch_dir();
    let data = dir.path().join("data");
    let clock = ManualClock::new(START_MS);
    let store = Store::open(&data, options(&clock)).unwrap();
    let partition = one_partition(&store);
    let offsets = append_ids(&partition, 0, 300);
    drop(partition);
    store.close().unwrap();
    drop(store);
    let pdir = partition_dir(&data, "t", 0);
    let bases = bases(&pdir);
    assert!(bases.len() >= 5);
    let idindex = |i: usize| segment::segment_path(&pdir, bases[i], ID_INDEX_SUFFIX);
    let flip = |path: &Path, at: usize| {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at] ^= 0x01;
        std::fs::write(path, bytes).unwrap();
    };
    // Missing; a damaged header; a damaged entry (only its CRC over the entries
    // notices: recovery checks headers, the first lookup the rest); cut short.
    std::fs::remove_file(idindex(0)).unwrap();
    flip(&idindex(1), 20);
    let entry_byte = std::fs::metadata(idindex(2)).unwrap().len() as usize - 3;
    flip(&idindex(2), entry_byte);
    let path = idindex(3);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 16)
        .unwrap();

    let store = Store::open(&data, options(&clock)).unwrap();
    // The plan wrote the ones whose header or length is wrong again.
    for i in [0, 1, 3] {
        let log_bytes = std::fs::metadata(segment::segment_path(&pdir, bases[i], LOG_SUFFIX))
            .unwrap()
            .len();
        segment::load_id_index(&OsFs, &pdir, bases[i], log_bytes, None)
            .unwrap_or_else(|e| panic!("segment {i} not rebuilt on open: {e}"));
    }
    let partition = store.topic("t").unwrap().partition(0).unwrap().clone();
    for (&n, &offset) in &offsets {
        assert_found(&partition, n, offset, "after the damage");
    }
    // The lookup found the damaged entries and wrote that file again.
    assert_sealed_id_indexes_valid(&pdir, "after the lookups");
    drop(partition);
    store.close().unwrap();
}

#[test]
fn retention_deletes_id_indexes_with_their_segments() {
    let dir = scratch_dir();
    let data = dir.path().join("data");
    let clock = ManualClock::new(START_MS);
    let store = Store::open(&data, options(&clock)).unwrap();
    let partition = store
        .create_topic(
            "t",
            1,
            TopicConfig {
                retention_bytes: Some(8 * 1024),
                ..config(4096, FsyncPolicy::Always)
            },
        )
        .unwrap()
        .partition(0)
        .unwrap()
        .clone();
    let offsets = append_ids(&partition, 0, 200);
    let pdir = partition_dir(&data, "t", 0);
    let before = bases(&pdir);
    let outcome = partition.enforce_retention().unwrap();
    assert!(outcome.segments_deleted > 0);
    let active = *before.last().unwrap();
    for base in &before {
        // Every sealed segment kept has its id index (the active one gets it when it is
        // sealed); every deleted one lost it.
        let kept = *base >= outcome.log_start && *base != active;
        assert_eq!(
            segment::segment_path(&pdir, *base, ID_INDEX_SUFFIX).exists(),
            kept,
            "segment {base}"
        );
    }
    for (&n, &offset) in &offsets {
        if offset >= outcome.log_start {
            assert_found(&partition, n, offset, "after retention");
        } else {
            assert_eq!(partition.find_by_id(&id_of(n)).unwrap(), None, "id-{n}");
        }
    }
    drop(partition);
    store.close().unwrap();
}

#[test]
fn compressed_batches_and_several_partitions() {
    let dir = scratch_dir();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    let topic = store
        .create_topic(
            "z",
            3,
            TopicConfig {
                compression: Compression::Zstd,
                ..config(4096, FsyncPolicy::Always)
            },
        )
        .unwrap();
    let mut placed = BTreeMap::new();
    for n in 0..150u64 {
        let partition = topic.partition((n % 3) as u32).unwrap();
        let appended = partition.append_durable(&[with_id(n)]).unwrap();
        placed.insert(n, ((n % 3) as u32, appended.base_offset));
    }
    for (&n, &(partition, offset)) in &placed {
        let found = topic.find_by_id(&id_of(n)).unwrap().unwrap();
        assert_eq!((found.partition, found.record.offset), (partition, offset));
        assert_eq!(found.record.value, value_of(n));
    }
    // The same id in two partitions: the later timestamp wins.
    let copy = |timestamp_ms| NewRecord {
        id: Some(Bytes::from_static(b"twice")),
        timestamp_ms: Some(timestamp_ms),
        ..NewRecord::value("copy")
    };
    topic
        .partition(2)
        .unwrap()
        .append_durable(&[copy(START_MS + 10)])
        .unwrap();
    let newer = topic
        .partition(0)
        .unwrap()
        .append_durable(&[copy(START_MS + 20)])
        .unwrap();
    let found = topic.find_by_id(b"twice").unwrap().unwrap();
    assert_eq!(
        (found.partition, found.record.offset),
        (0, newer.base_offset)
    );
    assert_eq!(topic.find_by_id(b"nowhere").unwrap(), None);
    drop(topic);
    store.close().unwrap();
}

/// Topic `t` in `data` with 120 ids over 4 KiB segments, closed, and the last byte of
/// the second segment's first batch flipped (a value byte; an intact batch follows, so
/// it is corruption recovery keeps). Returns the ids' offsets, the partition's
/// directory and its segments' bases.
fn ids_with_a_damaged_second_segment(
    data: &Path,
    clock: &Arc<ManualClock>,
) -> (BTreeMap<u64, u64>, PathBuf, Vec<u64>) {
    let store = Store::open(data, options(clock)).unwrap();
    let partition = one_partition(&store);
    let offsets = append_ids(&partition, 0, 120);
    drop(partition);
    store.close().unwrap();
    drop(store);
    let pdir = partition_dir(data, "t", 0);
    let bases = bases(&pdir);
    let log = segment::segment_path(&pdir, bases[1], LOG_SUFFIX);
    let mut bytes = std::fs::read(&log).unwrap();
    let first = tidelog_storage::batch::BatchHeader::parse(&bytes)
        .unwrap()
        .batch_length as usize;
    bytes[first - 1] ^= 0x10;
    std::fs::write(&log, bytes).unwrap();
    (offsets, pdir, bases)
}

#[test]
fn a_corrupt_batch_makes_a_miss_an_error_not_a_not_found() {
    let dir = scratch_dir();
    let data = dir.path().join("data");
    let clock = ManualClock::new(START_MS);
    let (offsets, pdir, bases) = ids_with_a_damaged_second_segment(&data, &clock);
    // Its id index gone.
    std::fs::remove_file(segment::segment_path(&pdir, bases[1], ID_INDEX_SUFFIX)).unwrap();

    let store = Store::open(&data, options(&clock)).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap().clone();
    // Ids elsewhere are found; a miss cannot say "not found".
    let (&n, &offset) = offsets.iter().next().unwrap();
    assert_found(&partition, n, offset, "in an intact segment");
    let last = offsets.iter().next_back().unwrap();
    assert_found(&partition, *last.0, *last.1, "in the active segment");
    assert!(matches!(
        partition.find_by_id(b"never published"),
        Err(Error::Corrupt { .. })
    ));
    drop(partition);
    store.close().unwrap();
}

/// Replaces the `.idindex` of segment `base` in `pdir` with one that lists no ids and
/// says some batch's ids could not be read: what a build that cannot decode every
/// batch of the log (an older one, after a rollback) writes for it.
fn write_incomplete_id_index(pdir: &Path, base: u64) {
    let path = segment::segment_path(pdir, base, ID_INDEX_SUFFIX);
    let header = tidelog_storage::idindex::decode_header(&std::fs::read(&path).unwrap()).unwrap();
    let bytes = tidelog_storage::idindex::encode(
        base,
        header.log_bytes,
        header.next_offset,
        true,
        &mut [],
        &mut [],
    );
    std::fs::write(&path, bytes).unwrap();
}

fn id_index_incomplete(pdir: &Path, base: u64) -> bool {
    let path = segment::segment_path(pdir, base, ID_INDEX_SUFFIX);
    tidelog_storage::idindex::decode_header(&std::fs::read(path).unwrap())
        .unwrap()
        .incomplete()
}

#[test]
fn an_id_index_that_wrongly_says_incomplete_is_checked_against_the_log_and_rewritten() {
    let dir = scratch_dir();
    let data = dir.path().join("data");
    let clock = ManualClock::new(START_MS);
    let store = Store::open(&data, options(&clock)).unwrap();
    let partition = one_partition(&store);
    let offsets = append_ids(&partition, 0, 300);
    drop(partition);
    store.close().unwrap();
    drop(store);
    let pdir = partition_dir(&data, "t", 0);
    let bases = bases(&pdir);
    assert!(bases.len() >= 5);
    let sealed = &bases[..bases.len() - 1];
    for &base in sealed {
        write_incomplete_id_index(&pdir, base);
    }

    // Twice: the files the first lookups rewrote are believed by the next process.
    for round in ["first open", "second open"] {
        let store = Store::open(&data, options(&clock)).unwrap();
        let partition = store.topic("t").unwrap().partition(0).unwrap().clone();
        for (&n, &offset) in &offsets {
            assert_found(&partition, n, offset, round);
        }
        assert_eq!(
            partition.find_by_id(b"never published").unwrap(),
            None,
            "{round}"
        );
        drop(partition);
        store.close().unwrap();
        for &base in sealed {
            assert!(
                !id_index_incomplete(&pdir, base),
                "{round}: segment {base}'s id index still says incomplete"
            );
        }
        assert_sealed_id_indexes_valid(&pdir, round);
    }
}

#[test]
fn an_id_index_that_rightly_says_incomplete_still_makes_a_miss_data_loss() {
    let dir = scratch_dir();
    let data = dir.path().join("data");
    let clock = ManualClock::new(START_MS);
    let (offsets, pdir, bases) = ids_with_a_damaged_second_segment(&data, &clock);
    // An index that says so.
    write_incomplete_id_index(&pdir, bases[1]);

    for round in ["first lookups", "after a reopen"] {
        let store = Store::open(&data, options(&clock)).unwrap();
        let partition = store.topic("t").unwrap().partition(0).unwrap().clone();
        // Ids in the segment's intact batches are found (the log was read again).
        let in_segment = offsets
            .iter()
            .rfind(|&(_, &offset)| offset >= bases[1] && offset < bases[2])
            .unwrap();
        assert_found(&partition, *in_segment.0, *in_segment.1, round);
        for _ in 0..2 {
            let error = partition.find_by_id(b"never published").unwrap_err();
            assert!(
                matches!(&error, Error::Corrupt { reason, .. } if reason.contains("fails its CRC")),
                "{round}: {error}"
            );
        }
        drop(partition);
        store.close().unwrap();
        assert!(id_index_incomplete(&pdir, bases[1]), "{round}");
    }
}

// ---------------------------------------------------------------------------------
// The model test
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// A batch: per record, which id (`None`: none; `Some(k)`: id `m-k`, so repeated
    /// ids happen) and the value's size.
    Append(Vec<(Option<u8>, usize)>),
    Reopen,
    /// The process dies: no flush, no index files, no checkpoint.
    Kill,
    Retention,
    Find(u8),
}

fn value_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        20 => 1usize..300,
        3 => 300usize..20_000,
        1 => (1usize << 20) - 200..=(1usize << 20) - 128,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => prop::collection::vec((prop::option::weighted(0.8, 0u8..60), value_size()), 1..6)
            .prop_map(Op::Append),
        // A row of sequenced ids (a run in the id index when 8 or more), sometimes
        // with a record without id or another id breaking it.
        6 => (0u8..40, 1u8..20, 1usize..3000, prop::option::of((0u8..20, prop::option::of(0u8..60))))
            .prop_map(|(start, len, size, cut)| {
                let mut records: Vec<(Option<u8>, usize)> =
                    (start..start + len).map(|s| (Some(SEQUENCED + s), size)).collect();
                if let Some((at, id)) = cut {
                    records.insert(usize::from(at).min(records.len()), (id, size));
                }
                Op::Append(records)
            }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Kill),
        1 => Just(Op::Retention),
        3 => prop_oneof![0u8..70, SEQUENCED..SEQUENCED + 60].prop_map(Op::Find),
    ]
}

/// Model ids from here up are 16-byte sequenced ids (an 8-byte prefix and a counter:
/// a producer's ids, which the id index keeps as runs).
const SEQUENCED: u8 = 100;

fn model_id(k: u8) -> Bytes {
    if k >= SEQUENCED {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&0x7469_6465_6c6f_6721u64.to_be_bytes());
        id[8..].copy_from_slice(&u64::from(k - SEQUENCED).to_be_bytes());
        Bytes::copy_from_slice(&id)
    } else {
        Bytes::from(format!("m-{k}"))
    }
}

/// What was appended: the id and value of every offset, and the log start.
#[derive(Default)]
struct Appended {
    records: Vec<(Option<u8>, Bytes)>,
    log_start: u64,
}

impl Appended {
    /// The newest offset below the end that carries `k`.
    fn newest(&self, k: u8) -> Option<u64> {
        (self.log_start..self.records.len() as u64)
            .rev()
            .find(|&offset| self.records[offset as usize].0 == Some(k))
    }
}

fn check_every_id(partition: &Partition, model: &Appended) -> Result<(), TestCaseError> {
    for k in (0..70u8).chain(SEQUENCED..SEQUENCED + 60) {
        let found = partition.find_by_id(&model_id(k)).unwrap();
        let expected = model.newest(k);
        prop_assert_eq!(found.as_ref().map(|r| r.offset), expected, "id m-{}", k);
        if let (Some(record), Some(offset)) = (found, expected) {
            prop_assert_eq!(&record.value, &model.records[offset as usize].1);
        }
    }
    Ok(())
}

fn run_model(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = scratch_dir();
    let clock = ManualClock::new(START_MS);
    let topic_config = TopicConfig {
        retention_bytes: Some(256 * 1024),
        ..config(64 * 1024, FsyncPolicy::Never)
    };
    let open = || Store::open(dir.path(), options(&clock)).unwrap();
    let mut store = open();
    store.create_topic("m", 1, topic_config).unwrap();
    let partition_of = |store: &Store| store.topic("m").unwrap().partition(0).unwrap().clone();
    let mut partition = partition_of(&store);
    let mut model = Appended::default();
    for op in ops {
        match op {
            Op::Append(records) => {
                let batch: Vec<NewRecord> = records
                    .iter()
                    .enumerate()
                    .map(|(i, &(k, size))| {
                        let mut value = vec![b'a' + (i as u8 % 26); size];
                        value[..8.min(size)].copy_from_slice(
                            &(model.records.len() as u64 + i as u64).to_le_bytes()[..8.min(size)],
                        );
                        NewRecord {
                            id: k.map(model_id),
                            ..NewRecord::value(value)
                        }
                    })
                    .collect();
                let appended = partition.append(&batch).unwrap();
                prop_assert_eq!(appended.base_offset, model.records.len() as u64);
                for (record, &(k, _)) in batch.iter().zip(&records) {
                    model.records.push((k, record.value.clone()));
                }
            }
            Op::Reopen => {
                drop(partition);
                store.close().unwrap();
                drop(store);
                store = open();
                partition = partition_of(&store);
            }
            Op::Kill => {
                // `never` topics: what was written stays in the page cache, so the
                // model keeps all of it.
                drop(partition);
                store.simulate_crash();
                store = open();
                partition = partition_of(&store);
            }
            Op::Retention => {
                let outcome = partition.enforce_retention().unwrap();
                model.log_start = outcome.log_start;
            }
            Op::Find(k) => {
                let found = partition.find_by_id(&model_id(k)).unwrap();
                prop_assert_eq!(found.map(|r| r.offset), model.newest(k), "id m-{}", k);
            }
        }
    }
    check_every_id(&partition, &model)?;
    drop(partition);
    store.close().unwrap();
    drop(store);
    // What `tidelog segment verify` checks: every id index lists exactly the ids its
    // log holds, entries and runs.
    let observation = recovery::observe(
        &OsFs,
        &partition_dir(dir.path(), "m", 0),
        None,
        recovery::Depth::Full,
        None,
    )
    .unwrap();
    for segment in &observation.segments {
        prop_assert!(
            !matches!(segment.id_index, recovery::IdIndexState::Invalid(_)),
            "segment {}: {:?}",
            segment.base,
            segment.id_index
        );
    }
    let store = open();
    check_every_id(&partition_of(&store), &model)?;
    store.close().unwrap();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("TIDELOG_ID_MODEL_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]

    #[test]
    fn lookups_match_a_model_through_rolls_reopens_kills_and_retention(
        ops in prop::collection::vec(op(), 1..60)
    ) {
        run_model(ops)?;
    }
}

// ---------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------

/// The id of record `n` of the fault workload: 16 bytes, an 8-byte prefix and `n`, so
/// the records appended eight at a time are a run in the id index.
fn fault_id(n: u64) -> Bytes {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(b"faultid!");
    id[8..].copy_from_slice(&n.to_be_bytes());
    Bytes::copy_from_slice(&id)
}

/// The fault workload: durable appends of ids `fault_id(0..)` to a topic whose
/// segments roll every few appends (each roll seals a segment: its log, index files
/// and id index are written by the flusher), then a clean close: alternately eight
/// appends of one record (entries in the id index) and one of eight (a run). Records
/// in `acked` the ids whose durable append returned, and in `tried` every id it
/// appended or tried to.
fn fault_workload(
    fs: &FaultyFs,
    data: &Path,
    clock: &Arc<ManualClock>,
    acked: &mut BTreeMap<u64, u64>,
    tried: &mut Vec<u64>,
) -> tidelog_storage::Result<()> {
    let store = Store::open(data, faulty_options(fs, clock))?;
    let topic = match store.topic("f") {
        Ok(topic) => topic,
        Err(_) => store.create_topic("f", 1, config(4096, FsyncPolicy::Always))?,
    };
    let partition = topic.partition(0)?.clone();
    let from = tried.len() as u64;
    let mut n = from;
    while n < from + 48 {
        let row = if (n / 8) % 2 == 1 { 8 } else { 1 };
        // A padding header makes segments roll every few appends.
        let records: Vec<NewRecord> = (n..n + row)
            .map(|n| {
                let mut record = with_id(n);
                record.id = Some(fault_id(n));
                record.headers.push(tidelog_storage::Header {
                    key: "pad".into(),
                    value: Bytes::from(vec![b'p'; 900 / row as usize]),
                });
                record
            })
            .collect();
        tried.extend(n..n + row);
        let appended = partition.append_durable(&records);
        n += row;
        match appended {
            Ok(appended) => {
                for (i, n) in (n - row..n).enumerate() {
                    acked.insert(n, appended.base_offset + i as u64);
                }
            }
            Err(error) => {
                drop(partition);
                store.simulate_crash();
                return Err(error);
            }
        }
    }
    drop(partition);
    store.close()
}

/// After a recovery: every acked id at its offset, every other tried id either absent
/// or at an offset whose record is that id's, nothing else found, and every sealed
/// segment's id index usable.
fn check_ids_after_recovery(
    data: &Path,
    clock: &Arc<ManualClock>,
    fs: &FaultyFs,
    acked: &BTreeMap<u64, u64>,
    tried: &[u64],
    id_of: fn(u64) -> Bytes,
    context: &str,
) {
    let store = Store::open(data, faulty_options(fs, clock))
        .unwrap_or_else(|e| panic!("{context}: reopening failed: {e}"));
    let Ok(topic) = store.topic("f") else {
        assert!(acked.is_empty(), "{context}: the topic is gone");
        store.close().unwrap();
        return;
    };
    let partition = topic.partition(0).unwrap().clone();
    for &n in tried {
        let found = partition
            .find_by_id(&id_of(n))
            .unwrap_or_else(|e| panic!("{context}: looking up id-{n}: {e}"));
        match (found, acked.get(&n)) {
            (Some(record), Some(&offset)) => {
                assert_eq!(record.offset, offset, "{context}: id-{n}");
                assert_eq!(record.value, value_of(n), "{context}: id-{n}");
            }
            (None, Some(offset)) => {
                panic!("{context}: id-{n}, acknowledged durable at {offset}, not found")
            }
            (Some(record), None) => {
                // Written but not acknowledged: it may survive, but only as itself.
                assert_eq!(record.id.as_deref(), Some(&id_of(n)[..]), "{context}");
                assert_eq!(record.value, value_of(n), "{context}: id-{n}");
            }
            (None, None) => {}
        }
    }
    assert_eq!(partition.find_by_id(b"id-none").unwrap(), None, "{context}");
    drop((topic, partition));
    store.close().unwrap();
    assert_sealed_id_indexes_valid(&partition_dir(data, "f", 0), context);
}

#[test]
fn a_power_cut_at_every_step_of_sealing_keeps_every_acknowledged_id_findable() {
    // How many operations the workload takes, with the power on throughout.
    let count_ops = {
        let dir = scratch_dir();
        let fs = FaultyFs::new(dir.path(), 1).unwrap();
        let clock = ManualClock::new(START_MS);
        let (mut acked, mut tried) = (BTreeMap::new(), Vec::new());
        let data = dir.path().join("data");
        fault_workload(&fs, &data, &clock, &mut acked, &mut tried).unwrap();
        assert_eq!(acked.len(), 48);
        // Every segment but the active one was sealed while the workload ran.
        let segments = bases(&partition_dir(&data, "f", 0)).len();
        assert!(segments >= 8, "{segments} segments");
        fs.ops()
    };
    for crash_at in 0..count_ops {
        let dir = scratch_dir();
        let data = dir.path().join("data");
        let fs = FaultyFs::new(dir.path(), crash_at).unwrap();
        let clock = ManualClock::new(START_MS);
        let (mut acked, mut tried) = (BTreeMap::new(), Vec::new());
        fs.power_off_after(crash_at);
        let outcome = fault_workload(&fs, &data, &clock, &mut acked, &mut tried);
        assert!(outcome.is_err() || !fs.is_powered_off() || acked.len() == 48);
        let options = if crash_at % 2 == 0 {
            CrashOptions::lose_unsynced()
        } else {
            CrashOptions::keep_some(crash_at)
        };
        fs.crash(options).unwrap();
        let context = format!("power cut after op {crash_at} of {count_ops} ({options:?})");
        check_ids_after_recovery(&data, &clock, &fs, &acked, &tried, fault_id, &context);
        // And the partition goes on: more appends and seals, then all of it again.
        fault_workload(&fs, &data, &clock, &mut acked, &mut tried)
            .unwrap_or_else(|e| panic!("{context}: the workload after recovery failed: {e}"));
        check_ids_after_recovery(&data, &clock, &fs, &acked, &tried, fault_id, &context);
    }
}

#[test]
fn a_failed_fsync_of_an_id_index_keeps_lookups_exact_and_is_not_retried() {
    let dir = scratch_dir();
    let data = dir.path().join("data");
    let fs = FaultyFs::new(dir.path(), 3).unwrap();
    let clock = ManualClock::new(START_MS);
    // The first id index to be written (the first seal) fails its fsync.
    fs.fail_sync(
        SyncFault::nth(1)
            .kinds(&[SyncKind::All])
            .path_contains(".idindex"),
    );
    let (mut acked, mut tried) = (BTreeMap::new(), Vec::new());
    let store = Store::open(&data, faulty_options(&fs, &clock)).unwrap();
    let partition = store
        .create_topic("f", 1, config(4096, FsyncPolicy::Always))
        .unwrap()
        .partition(0)
        .unwrap()
        .clone();
    for n in 0..48 {
        tried.push(n);
        acked.insert(
            n,
            partition.append_durable(&[with_id(n)]).unwrap().base_offset,
        );
    }
    assert_eq!(fs.stats().failed_syncs, 1);
    // Not the log's fsync: nothing was poisoned, every append acknowledged.
    assert_eq!(partition.poisoned(), None);
    let pdir = partition_dir(&data, "f", 0);
    let first = bases(&pdir)[0];
    assert!(
        !segment::segment_path(&pdir, first, ID_INDEX_SUFFIX).exists(),
        "the failed id index was renamed in (or retried)"
    );
    // Its ids are still found: from memory.
    for (&n, &offset) in &acked {
        assert_found(&partition, n, offset, "after the failed fsync");
    }
    drop(partition);
    store.simulate_crash();
    fs.crash(CrashOptions::lose_unsynced()).unwrap();
    check_ids_after_recovery(
        &data,
        &clock,
        &fs,
        &acked,
        &tried,
        id_of,
        "after the power cut",
    );
}

#[test]
fn a_full_disk_while_an_id_index_is_written_keeps_lookups_exact() {
    let dir = scratch_dir();
    let data = dir.path().join("data");
    let fs = FaultyFs::new(dir.path(), 5).unwrap();
    let clock = ManualClock::new(START_MS);
    let (mut acked, mut tried) = (BTreeMap::new(), Vec::new());
    let store = Store::open(&data, faulty_options(&fs, &clock)).unwrap();
    let partition = store
        .create_topic("f", 1, config(4096, FsyncPolicy::Always))
        .unwrap()
        .partition(0)
        .unwrap()
        .clone();
    let append = |n: u64, acked: &mut BTreeMap<u64, u64>, tried: &mut Vec<u64>| {
        tried.push(n);
        let appended = partition.append_durable(&[with_id(n)]).unwrap();
        acked.insert(n, appended.base_offset);
    };
    // Several seals first, so the checkpoint has both slots and overwrites in place.
    let mut n = 0;
    while partition.info().segment_count < 4 {
        append(n, &mut acked, &mut tried);
        n += 1;
    }
    // Fill the active segment up to the next roll, then leave room for one more batch
    // and too little for any index file: the roll's seal cannot write them.
    let segments = partition.info().segment_count;
    let batch_bytes = |n: u64| {
        tidelog_storage::batch::encode_batch(
            &[with_id(n)],
            &tidelog_storage::batch::EncodeOptions {
                now_ms: START_MS,
                default_ttl_ms: None,
                compression: Compression::None,
                max_message_bytes: 1 << 20,
                priority_levels: 0,
            },
        )
        .unwrap()
        .bytes
        .len() as u64
    };
    // The largest batch an id of this length makes (values grow with n % 90).
    let batch = batch_bytes(89);
    let pdir = partition_dir(&data, "f", 0);
    loop {
        // The next append rolls when the active segment cannot take one more batch.
        let last = *bases(&pdir).last().unwrap();
        let active_bytes = std::fs::metadata(segment::segment_path(&pdir, last, LOG_SUFFIX))
            .unwrap()
            .len();
        if active_bytes + 2 * batch > 4096 {
            break;
        }
        append(n, &mut acked, &mut tried);
        n += 1;
    }
    // One more fits in this segment; the one after rolls.
    append(n, &mut acked, &mut tried);
    n += 1;
    fs.set_capacity(Some(fs.used_bytes() + batch_bytes(n) + 20));
    append(n, &mut acked, &mut tried);
    assert!(fs.stats().enospc > 0, "{:?}", fs.stats());
    let sealed_last = bases(&pdir)[bases(&pdir).len() - 2];
    assert!(
        !segment::segment_path(&pdir, sealed_last, ID_INDEX_SUFFIX).exists(),
        "the id index of the segment sealed on the full disk was written"
    );
    assert_eq!(partition.poisoned(), None);
    assert!(partition.info().segment_count > segments);
    for (&k, &offset) in &acked {
        assert_found(&partition, k, offset, "with the disk full");
    }
    // Space comes back; a clean close and a reopen write what is missing.
    fs.set_capacity(None);
    drop(partition);
    store.close().unwrap();
    drop(store);
    check_ids_after_recovery(
        &data,
        &clock,
        &fs,
        &acked,
        &tried,
        id_of,
        "after the disk full",
    );
}

/// Id indexes of version 1 (what builds before runs wrote; storage/FORMAT.md says they
/// are still read) are used as they are after an upgrade, and recovery's full check
/// (the one `tidelog segment verify` renders) finds them valid: a segment without ids
/// (a file of a bare 48-byte header) and one whose 16-byte ids count up (listed as an
/// entry each where version 2 lists runs).
#[test]
fn version_1_id_indexes_are_read_and_pass_the_full_check() {
    let dir = scratch_dir();
    let data = dir.path().join("data");
    let clock = ManualClock::new(START_MS);
    let store = Store::open(&data, options(&clock)).unwrap();
    let partition = one_partition(&store);
    let counting = |n: u64| Bytes::from([b"PREFIX00".as_slice(), &n.to_be_bytes()].concat());
    let mut offsets = BTreeMap::new();
    for batch in 0..12u64 {
        let records: Vec<NewRecord> = (0..20u64)
            .map(|k| NewRecord {
                // The first batches have no ids: their segment's index lists none.
                id: (batch >= 4).then(|| counting(batch * 20 + k)),
                ..NewRecord::value(vec![b'x'; 40])
            })
            .collect();
        let appended = partition.append_durable(&records).unwrap();
        if batch >= 4 {
            for k in 0..20 {
                offsets.insert(batch * 20 + k, appended.base_offset + k);
            }
        }
    }
    drop(partition);
    store.close().unwrap();
    drop(store);

    // Every sealed segment's index written again as version 1 of the same ids.
    let pdir = partition_dir(&data, "t", 0);
    let bases = bases(&pdir);
    let sealed = &bases[..bases.len() - 1];
    assert!(sealed.len() >= 2, "{bases:?}");
    let mut empty = 0;
    for &base in sealed {
        let path = segment::segment_path(&pdir, base, ID_INDEX_SUFFIX);
        let (header, table) =
            tidelog_storage::idindex::decode(&Bytes::from(std::fs::read(&path).unwrap())).unwrap();
        let mut entries = segment::IdLists {
            entries: table.iter().collect(),
            runs: table.runs().collect(),
        }
        .as_entries();
        empty += usize::from(entries.is_empty());
        let v1 = tidelog_storage::idindex::encode_v1(
            base,
            header.log_bytes,
            header.next_offset,
            false,
            &mut entries,
        );
        std::fs::write(&path, v1).unwrap();
    }
    assert!(
        empty >= 1 && empty < sealed.len(),
        "segments with and without ids"
    );

    assert_sealed_id_indexes_valid(&pdir, "version 1 files");
    let observation = recovery::observe(&OsFs, &pdir, None, recovery::Depth::Full, None).unwrap();
    for observed in &observation.segments[..sealed.len()] {
        assert_eq!(
            observed.id_index,
            recovery::IdIndexState::Valid,
            "segment {}",
            observed.base
        );
    }

    // The broker finds every id through them and leaves them as they are.
    let before: Vec<Vec<u8>> = sealed
        .iter()
        .map(|&base| std::fs::read(segment::segment_path(&pdir, base, ID_INDEX_SUFFIX)).unwrap())
        .collect();
    let store = Store::open(&data, options(&clock)).unwrap();
    let partition = store.topic("t").unwrap().partition(0).unwrap().clone();
    for (&n, &offset) in &offsets {
        let found = partition.find_by_id(&counting(n)).unwrap();
        assert_eq!(found.map(|r| r.offset), Some(offset), "id {n}");
    }
    assert_eq!(partition.find_by_id(&counting(5)).unwrap(), None);
    drop(partition);
    store.close().unwrap();
    for (&base, before) in sealed.iter().zip(&before) {
        let path = segment::segment_path(&pdir, base, ID_INDEX_SUFFIX);
        assert_eq!(&std::fs::read(&path).unwrap(), before, "segment {base}");
    }
}
