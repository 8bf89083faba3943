//! The durable state log under faults, through `FaultyFs`, with a small key-value
//! machine:
//!
//! 1. Crash points: a scripted workload (multi-operation appends, explicit and automatic
//!    compactions, reopens) is cut after its k-th filesystem operation, for every k, and
//!    ended by a power cut (unsynced writes lost, or some kept with the last one torn)
//!    or a process kill (page cache kept; then a power cut after recovery). Every
//!    acknowledged append must survive; the one in flight applies whole or not at all.
//!    The same for every step of one large compaction. `TIDELOG_FAULT_SEEDS=N` runs N
//!    seeds (default 3).
//! 2. EIO on the log's fdatasync poisons it: nothing the failed fsync covered is
//!    acknowledged or shown, later appends are refused, reopening recovers. EIO in a
//!    compaction before its rename only fails the compaction.
//! 3. ENOSPC fails an append (or a compaction) cleanly, leaves no partial record, does
//!    not poison, and appends resume once there is room.
//! 4. Concurrent appenders share fdatasyncs: the syncs are counted.
//! 5. A model test: random appends, compactions, reopens, crashes and kills against a
//!    `BTreeMap`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use tidelog_storage::fs::{
    CrashOptions, DirEntry, FaultyFs, FileSystem, FsFile, Metadata, OpenMode, SeededRng as Rng,
    SyncDirError, SyncFault, SyncKind,
};
use tidelog_storage::statelog::{
    DecodeError, LogOp, OpReader, SnapshotWriter, StateLog, StateLogOptions, StateMachine,
    put_str16,
};
use tidelog_storage::{Error, ManualClock, Result};

const START_MS: i64 = 1_700_000_000_000;
const LOG_NAME: &str = "kv.statelog";
/// Steps of the crash-point workload (each an append, a compaction or a reopen).
const WORKLOAD_STEPS: u64 = 30;

// ---------------------------------------------------------------------------------------
// The test machine
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum KvOp {
    Put(String, u64),
    Delete(String),
}

impl LogOp for KvOp {
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            KvOp::Put(key, value) => {
                check_key(key)?;
                out.push(1);
                put_str16(out, key);
                out.extend_from_slice(&value.to_le_bytes());
            }
            KvOp::Delete(key) => {
                check_key(key)?;
                out.push(2);
                put_str16(out, key);
            }
        }
        Ok(())
    }

    fn decode(reader: &mut OpReader<'_>) -> Result<Self, DecodeError> {
        match reader.u8("kind")? {
            1 => Ok(KvOp::Put(reader.str16("key", 1, 64)?, reader.u64("value")?)),
            2 => Ok(KvOp::Delete(reader.str16("key", 1, 64)?)),
            kind => Err(reader.unknown_kind(kind)),
        }
    }
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 64 {
        return Err(Error::InvalidArgument(format!("bad key {key:?}")));
    }
    Ok(())
}

type Map = BTreeMap<String, u64>;

#[derive(Debug, Default)]
struct Kv(Map);

impl StateMachine for Kv {
    type Op = KvOp;
    type Outcome = ();
    const NAME: &'static str = "test kv";

    fn apply(&mut self, op: KvOp) {
        apply(&mut self.0, op);
    }

    fn snapshot(&self, out: &mut SnapshotWriter<'_>) -> Result<()> {
        for (key, value) in &self.0 {
            out.push(&KvOp::Put(key.clone(), *value))?;
        }
        Ok(())
    }

    fn snapshot_bytes(&self) -> u64 {
        self.0.keys().map(|key| 11 + key.len() as u64).sum()
    }
}

fn apply(map: &mut Map, op: KvOp) {
    match op {
        KvOp::Put(key, value) => {
            map.insert(key, value);
        }
        KvOp::Delete(key) => {
            map.remove(&key);
        }
    }
}

/// Small thresholds, so the workloads compact often.
fn options() -> StateLogOptions {
    StateLogOptions {
        compact_min_bytes: 512,
        compact_live_ratio: 2,
    }
}

fn open(fs: &FaultyFs, path: &Path) -> Result<StateLog<Kv>> {
    StateLog::open(
        Arc::new(fs.clone()),
        path,
        Kv::default(),
        ManualClock::new(START_MS),
        options(),
    )
}

fn reopen(fs: &FaultyFs, path: &Path, context: &str) -> StateLog<Kv> {
    open(fs, path).unwrap_or_else(|e| panic!("{context}: reopening failed: {e}"))
}

fn dump(log: &StateLog<Kv>) -> Map {
    log.read(|kv| kv.0.clone())
}

/// A directory for one case; a tmpfs where there is one (FaultyFs never needs the real
/// disk's durability, and creating files there is much faster).
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

fn random_op(rng: &mut Rng, tag: u64) -> KvOp {
    // Keys of different lengths, so records differ in size.
    let key = format!(
        "key-{}-{}",
        rng.below(8),
        "x".repeat(rng.below(40) as usize)
    );
    match rng.below(5) {
        0 => KvOp::Delete(key),
        _ => KvOp::Put(key, tag * 1000 + rng.below(1000)),
    }
}

fn seeds() -> u64 {
    std::env::var("TIDELOG_FAULT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

// ---------------------------------------------------------------------------------------
// 1. Crash points
// ---------------------------------------------------------------------------------------

/// What must hold after a crash.
#[derive(Debug, Default)]
struct Ledger {
    /// The state every acknowledged append leads to.
    acked: Map,
    /// The operations of the append under way when the workload stopped.
    in_flight: Option<Vec<KvOp>>,
}

impl Ledger {
    /// The states a recovery may show: without the append in flight, or with all of it.
    fn allowed(&self) -> Vec<Map> {
        let mut allowed = vec![self.acked.clone()];
        if let Some(ops) = &self.in_flight {
            let mut with = self.acked.clone();
            for op in ops.iter().cloned() {
                apply(&mut with, op);
            }
            allowed.push(with);
        }
        allowed
    }
}

fn run_workload(
    fs: &FaultyFs,
    path: &Path,
    seed: u64,
    ledger: &mut Ledger,
    slot: &mut Option<StateLog<Kv>>,
) -> Result<()> {
    let mut rng = Rng::new(seed);
    *slot = Some(open(fs, path)?);
    for step in 0..WORKLOAD_STEPS {
        let log = slot.as_ref().expect("open");
        match rng.below(100) {
            0..=74 => {
                let ops: Vec<_> = (0..1 + rng.below(3))
                    .map(|_| random_op(&mut rng, step))
                    .collect();
                ledger.in_flight = Some(ops.clone());
                log.append(ops.clone())?;
                ledger.in_flight = None;
                for op in ops {
                    apply(&mut ledger.acked, op);
                }
            }
            75..=86 => log.compact()?,
            _ => {
                drop(slot.take());
                *slot = Some(open(fs, path)?);
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Ending {
    PowerCut,
    TornWrites(u64),
    ProcessKill,
}

/// Runs the workload with the power cut after `crash_at` operations (`None`: never),
/// ends it as `ending` says and checks the recovered state. Returns whether the power
/// went off and the operations that ran.
fn crash_point(seed: u64, crash_at: Option<u64>, ending: Ending) -> (bool, u64) {
    let dir = scratch_dir();
    let path = dir.path().join("state").join("kv").join(LOG_NAME);
    let fs = FaultyFs::new(dir.path(), seed).unwrap();
    if seed % 2 == 1 {
        // Odd seeds also cut writes short, so a crash can fall inside one record.
        fs.set_short_writes(Some(3));
    }
    if let Some(at) = crash_at {
        fs.power_off_after(at);
    }
    let mut ledger = Ledger::default();
    let mut slot = None;
    let outcome = run_workload(&fs, &path, seed, &mut ledger, &mut slot);
    let powered_off = fs.is_powered_off();
    if let Err(error) = &outcome {
        assert!(
            powered_off,
            "seed {seed} crash at {crash_at:?}: the workload failed with the power on: {error}"
        );
    }
    drop(slot);
    let ops = fs.ops();
    let context = format!("seed {seed}, crash after op {crash_at:?} ({ending:?})");
    let check = |log: &StateLog<Kv>, allowed: &[Map], context: &str| -> Map {
        let state = dump(log);
        assert!(
            allowed.contains(&state),
            "{context}: recovered {state:?}, expected one of {allowed:?}"
        );
        state
    };
    match ending {
        Ending::PowerCut | Ending::TornWrites(_) => {
            let options = match ending {
                Ending::TornWrites(crash_seed) => CrashOptions::keep_some(crash_seed),
                _ => CrashOptions::lose_unsynced(),
            };
            fs.crash(options).unwrap();
            let log = reopen(&fs, &path, &context);
            let mut state = check(&log, &ledger.allowed(), &context);
            // The recovered log takes appends and keeps them.
            let op = KvOp::Put("after".to_string(), seed);
            log.append(vec![op.clone()])
                .unwrap_or_else(|e| panic!("{context}: appending after recovery: {e}"));
            apply(&mut state, op);
            drop(log);
            fs.crash(CrashOptions::lose_unsynced()).unwrap();
            assert_eq!(dump(&reopen(&fs, &path, &context)), state, "{context}");
        }
        Ending::ProcessKill => {
            fs.kill_process();
            let log = reopen(&fs, &path, &context);
            // What recovery shows must survive a power cut right after it.
            let shown = check(&log, &ledger.allowed(), &context);
            drop(log);
            fs.crash(CrashOptions::lose_unsynced()).unwrap();
            let context = format!("{context}, then a power cut after recovery");
            let log = reopen(&fs, &path, &context);
            check(&log, &[shown], &context);
        }
    }
    (powered_off, ops)
}

#[test]
fn every_crash_point_keeps_what_was_acknowledged() {
    let mut points = 0;
    for seed in 0..seeds() {
        let (powered_off, total) = crash_point(seed, None, Ending::PowerCut);
        assert!(!powered_off);
        assert!(
            total > 60,
            "the workload did too little: {total} operations"
        );
        for at in 1..=total {
            let ending = match at % 3 {
                0 => Ending::PowerCut,
                1 => Ending::TornWrites(seed * 1_000_003 + at),
                _ => Ending::ProcessKill,
            };
            let (powered_off, _) = crash_point(seed, Some(at), ending);
            assert!(powered_off, "seed {seed}: op {at} of {total} never ran");
            points += 1;
        }
    }
    eprintln!("state log: {points} crash points checked");
}

/// A log of 60,000 keys (its snapshot spans several records) whose next compaction
/// is cut after its `cut_at`-th filesystem operation (`None`: not cut) and ended by a
/// crash as `options` says. Returns the operations the compaction took.
fn large_compaction_case(cut_at: Option<u64>, options: CrashOptions) -> u64 {
    let dir = scratch_dir();
    let path = dir.path().join(LOG_NAME);
    let fs = FaultyFs::new(dir.path(), cut_at.unwrap_or(0)).unwrap();
    let log = StateLog::open(
        Arc::new(fs.clone()),
        &path,
        Kv::default(),
        ManualClock::new(START_MS),
        // No automatic compaction: the test starts the one it cuts.
        StateLogOptions {
            compact_min_bytes: u64::MAX,
            compact_live_ratio: 1,
        },
    )
    .unwrap();
    let ops: Vec<_> = (0..60_000u64)
        .map(|i| KvOp::Put(format!("{i:032}"), i))
        .collect();
    log.append(ops).unwrap();
    log.append(vec![KvOp::Delete(format!("{:032}", 7))])
        .unwrap();
    let state = dump(&log);
    let before = log.log_bytes();
    let start = fs.ops();
    let context = format!("compaction cut after its op {cut_at:?} ({options:?})");
    match cut_at {
        None => {
            log.compact().unwrap();
            assert!(log.log_bytes() < before, "{context}");
        }
        Some(at) => {
            fs.power_off_after(at);
            assert!(log.compact().is_err(), "{context}");
        }
    }
    let steps = fs.ops() - start;
    drop(log);
    fs.crash(options).unwrap();
    let log = reopen(&fs, &path, &context);
    assert!(dump(&log) == state, "{context}: the state changed");
    assert!(!fsutil_tmp(&path).exists(), "{context}");
    steps
}

#[test]
fn a_crash_at_every_step_of_a_large_compaction_keeps_the_state() {
    let steps = large_compaction_case(None, CrashOptions::lose_unsynced());
    // Create, three records or more, fsync, rename, directory fsync.
    assert!(steps >= 7, "{steps} operations");
    for at in 1..=steps {
        large_compaction_case(Some(at), CrashOptions::lose_unsynced());
        large_compaction_case(Some(at), CrashOptions::keep_some(at));
    }
    eprintln!("large compaction: {steps} crash points, two endings each");
}

fn fsutil_tmp(path: &Path) -> PathBuf {
    tidelog_storage::fsutil::temp_path(path)
}

// ---------------------------------------------------------------------------------------
// 2. EIO
// ---------------------------------------------------------------------------------------

fn put(key: &str, value: u64) -> KvOp {
    KvOp::Put(key.to_string(), value)
}

#[test]
fn a_failed_fdatasync_poisons_and_nothing_it_covered_is_acknowledged() {
    for kill_first in [true, false] {
        let context = format!("EIO on fdatasync (kill first: {kill_first})");
        let dir = scratch_dir();
        let path = dir.path().join(LOG_NAME);
        let fs = FaultyFs::new(dir.path(), 1).unwrap();
        let log = open(&fs, &path).unwrap();
        log.append(vec![put("a", 1)]).unwrap();
        fs.fail_sync(
            SyncFault::nth(1)
                .kinds(&[SyncKind::Data])
                .path_contains(LOG_NAME),
        );
        let failed = log.append(vec![put("a", 2), put("b", 2)]).unwrap_err();
        assert!(
            matches!(failed, Error::Poisoned { .. }),
            "{context}: {failed}"
        );
        for refused in [
            log.append(vec![put("c", 3)]).unwrap_err(),
            log.compact().unwrap_err(),
            log.check_writable().unwrap_err(),
            log.read_settled(|_| ()).unwrap_err(),
        ] {
            assert!(
                matches!(refused, Error::Poisoned { .. }),
                "{context}: {refused}"
            );
        }
        // Readers see only what was acknowledged.
        assert_eq!(dump(&log), Map::from([("a".into(), 1)]), "{context}");
        assert_eq!(fs.stats().failed_syncs, 1);
        drop(log);

        if kill_first {
            // The page cache may still hold the failed record: recovery may show it,
            // but then must make it durable.
            fs.kill_process();
            let log = reopen(&fs, &path, &context);
            let shown = dump(&log);
            assert!(
                shown == Map::from([("a".into(), 1)])
                    || shown == Map::from([("a".into(), 2), ("b".into(), 2)]),
                "{context}: {shown:?}"
            );
            drop(log);
            fs.crash(CrashOptions::lose_unsynced()).unwrap();
            assert_eq!(dump(&reopen(&fs, &path, &context)), shown, "{context}");
        } else {
            fs.crash(CrashOptions::lose_unsynced()).unwrap();
            let log = reopen(&fs, &path, &context);
            assert_eq!(dump(&log), Map::from([("a".into(), 1)]), "{context}");
        }
        let log = reopen(&fs, &path, &context);
        log.append(vec![put("z", 9)]).unwrap();
    }
}

#[test]
fn eio_in_a_compaction_before_its_rename_fails_only_the_compaction() {
    let dir = scratch_dir();
    let path = dir.path().join(LOG_NAME);
    let fs = FaultyFs::new(dir.path(), 2).unwrap();
    let log = open(&fs, &path).unwrap();
    for i in 0..5 {
        log.append(vec![put("k", i)]).unwrap();
    }
    let bytes = log.log_bytes();
    fs.fail_sync(
        SyncFault::nth(1)
            .kinds(&[SyncKind::All])
            .path_contains(".tmp"),
    );
    let error = log.compact().unwrap_err();
    assert!(matches!(error, Error::Io { .. }), "{error}");
    assert!(!fsutil_tmp(&path).exists());
    assert_eq!(log.log_bytes(), bytes);
    log.check_writable().unwrap();
    log.append(vec![put("k", 10)]).unwrap();
    log.compact().unwrap();
    drop(log);
    fs.crash(CrashOptions::lose_unsynced()).unwrap();
    assert_eq!(
        dump(&reopen(&fs, &path, "after")),
        Map::from([("k".into(), 10)])
    );
}

#[test]
fn eio_on_the_directory_fsync_after_the_rename_poisons() {
    let dir = scratch_dir();
    let path = dir.path().join(LOG_NAME);
    let fs = FaultyFs::new(dir.path(), 3).unwrap();
    let log = open(&fs, &path).unwrap();
    log.append(vec![put("k", 1), put("j", 2)]).unwrap();
    log.append(vec![put("k", 3)]).unwrap();
    fs.fail_sync(SyncFault::nth(1).kinds(&[SyncKind::Dir]));
    let error = log.compact().unwrap_err();
    assert!(matches!(error, Error::Poisoned { .. }), "{error}");
    assert!(matches!(
        log.append(vec![put("k", 4)]),
        Err(Error::Poisoned { .. })
    ));
    drop(log);
    for options in [CrashOptions::lose_unsynced(), CrashOptions::keep_some(3)] {
        fs.crash(options).unwrap();
        let expected = Map::from([("k".into(), 3), ("j".into(), 2)]);
        assert_eq!(dump(&reopen(&fs, &path, "after")), expected, "{options:?}");
    }
}

#[test]
fn eio_while_recovery_rewrites_the_log_fails_the_open() {
    let dir = scratch_dir();
    let path = dir.path().join(LOG_NAME);
    let fs = FaultyFs::new(dir.path(), 4).unwrap();
    let log = open(&fs, &path).unwrap();
    log.append(vec![put("k", 1)]).unwrap();
    drop(log);
    fs.fail_sync(
        SyncFault::nth(1)
            .kinds(&[SyncKind::All])
            .path_contains(LOG_NAME),
    );
    let error = open(&fs, &path).unwrap_err();
    assert!(matches!(error, Error::Io { .. }), "{error}");
    assert_eq!(
        dump(&reopen(&fs, &path, "second open")),
        Map::from([("k".into(), 1)])
    );
}

// ---------------------------------------------------------------------------------------
// 3. ENOSPC
// ---------------------------------------------------------------------------------------

#[test]
fn a_full_disk_fails_appends_cleanly_and_they_resume_with_room() {
    for seed in 0..4u64 {
        let context = format!("ENOSPC, seed {seed}");
        let dir = scratch_dir();
        let path = dir.path().join(LOG_NAME);
        let fs = FaultyFs::new(dir.path(), seed).unwrap();
        let log = open(&fs, &path).unwrap();
        let mut model = Map::new();
        let mut rng = Rng::new(seed);
        for step in 0..10 {
            let op = random_op(&mut rng, step);
            log.append(vec![op.clone()]).unwrap();
            apply(&mut model, op);
        }
        let bytes = log.log_bytes();
        // Room for part of the next record at most: the write is cut short, then fails.
        fs.set_capacity(Some(fs.used_bytes() + rng.below(30)));
        let ops = vec![put(&"big".repeat(20), 1), put("other", 2)];
        let error = log.append(ops.clone()).unwrap_err();
        assert!(matches!(error, Error::Io { .. }), "{context}: {error}");
        assert_eq!(log.log_bytes(), bytes, "{context}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes, "{context}");
        assert_eq!(dump(&log), model, "{context}");
        log.check_writable()
            .unwrap_or_else(|e| panic!("{context}: ENOSPC poisoned the log: {e}"));
        // A compaction cannot write its snapshot either: it fails and changes nothing.
        fs.set_disk_full(true);
        assert!(log.compact().is_err(), "{context}");
        assert!(!fsutil_tmp(&path).exists(), "{context}");
        assert_eq!(log.log_bytes(), bytes, "{context}");
        // Room again: appends resume.
        fs.set_capacity(None);
        log.append(ops.clone()).unwrap();
        for op in ops {
            apply(&mut model, op);
        }
        drop(log);
        fs.crash(CrashOptions::keep_some(seed)).unwrap();
        assert_eq!(dump(&reopen(&fs, &path, &context)), model, "{context}");
    }
}

// ---------------------------------------------------------------------------------------
// 4. Group commit
// ---------------------------------------------------------------------------------------

/// A filesystem whose fdatasync takes `delay` (as a disk's does) and is counted.
#[derive(Debug, Clone)]
struct SlowSync {
    inner: FaultyFs,
    delay: Duration,
    data_syncs: Arc<AtomicU64>,
}

#[derive(Debug)]
struct SlowFile {
    inner: Arc<dyn FsFile>,
    fs: SlowSync,
}

impl FsFile for SlowFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.inner.write_at(buf, offset)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        std::thread::sleep(self.fs.delay);
        self.fs.data_syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.inner.sync_all()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn try_lock(&self) -> io::Result<bool> {
        self.inner.try_lock()
    }
}

impl FileSystem for SlowSync {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        Ok(Arc::new(SlowFile {
            inner: self.inner.open(path, mode)?,
            fs: self.clone(),
        }))
    }
    fn read_file(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        self.inner.read_file(path, limit)
    }
    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        self.inner.metadata(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        self.inner.read_dir(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> Result<(), SyncDirError> {
        self.inner.sync_dir(path)
    }
    fn map(&self, path: &Path, len: usize) -> io::Result<Bytes> {
        self.inner.map(path, len)
    }
}

#[test]
fn concurrent_appenders_share_fdatasyncs() {
    const THREADS: u64 = 8;
    const APPENDS: u64 = 40;
    let dir = scratch_dir();
    let path = dir.path().join(LOG_NAME);
    let faulty = FaultyFs::new(dir.path(), 5).unwrap();
    let fs = SlowSync {
        inner: faulty.clone(),
        delay: Duration::from_millis(3),
        data_syncs: Arc::new(AtomicU64::new(0)),
    };
    let log = Arc::new(
        StateLog::open(
            Arc::new(fs.clone()),
            &path,
            Kv::default(),
            ManualClock::new(START_MS),
            StateLogOptions::default(),
        )
        .unwrap(),
    );
    let barrier = Arc::new(std::sync::Barrier::new(THREADS as usize));
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let log = Arc::clone(&log);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..APPENDS {
                    let key = format!("t{thread}");
                    log.append(vec![KvOp::Put(key.clone(), i)]).unwrap();
                    assert_eq!(log.read(|kv| kv.0[&key]), i);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let stats = log.stats();
    let syncs = fs.data_syncs.load(Ordering::SeqCst);
    eprintln!(
        "group commit: {} appends from {THREADS} threads in {} records, {syncs} fdatasyncs",
        stats.appends, stats.records
    );
    assert_eq!(stats.appends, THREADS * APPENDS);
    // One fdatasync per record, and one record per flush, whatever it carried.
    assert_eq!(syncs, stats.records);
    // While one fdatasync runs, the other threads queue: the next one covers them all.
    assert!(
        stats.records * 3 <= stats.appends,
        "{} records for {} appends: fdatasyncs are not shared",
        stats.records,
        stats.appends
    );
    drop(log);
    faulty.crash(CrashOptions::lose_unsynced()).unwrap();
    let log = reopen(&faulty, &path, "group commit");
    for thread in 0..THREADS {
        assert_eq!(log.read(|kv| kv.0[&format!("t{thread}")]), APPENDS - 1);
    }
}

// ---------------------------------------------------------------------------------------
// 5. Model
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Append(Vec<(u8, Option<u64>)>),
    Compact,
    Reopen,
    PowerCut(Option<u64>),
    Kill,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => proptest::collection::vec((0u8..6, proptest::option::of(any::<u64>())), 1..4)
            .prop_map(Step::Append),
        1 => Just(Step::Compact),
        1 => Just(Step::Reopen),
        1 => proptest::option::of(any::<u64>()).prop_map(Step::PowerCut),
        1 => Just(Step::Kill),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Appends, compactions (explicit and automatic), reopens, power cuts and kills
    /// against a `BTreeMap`: every completed append is acknowledged, so after any of
    /// them the state is exactly the model's.
    #[test]
    fn state_log_matches_a_model(steps in proptest::collection::vec(step(), 1..60)) {
        let dir = scratch_dir();
        let path = dir.path().join("state").join("kv").join(LOG_NAME);
        let fs = FaultyFs::new(dir.path(), 9).unwrap();
        let mut log = Some(open(&fs, &path).unwrap());
        let mut model = Map::new();
        for step in steps {
            match step {
                Step::Append(changes) => {
                    let ops: Vec<_> = changes
                        .into_iter()
                        .map(|(key, value)| {
                            let key = format!("k{key}");
                            match value {
                                Some(value) => KvOp::Put(key, value),
                                None => KvOp::Delete(key),
                            }
                        })
                        .collect();
                    log.as_ref().unwrap().append(ops.clone()).unwrap();
                    for op in ops {
                        apply(&mut model, op);
                    }
                }
                Step::Compact => log.as_ref().unwrap().compact().unwrap(),
                Step::Reopen => {
                    drop(log.take());
                    log = Some(open(&fs, &path).unwrap());
                }
                Step::PowerCut(seed) => {
                    drop(log.take());
                    let options = seed.map_or(CrashOptions::lose_unsynced(), CrashOptions::keep_some);
                    fs.crash(options).unwrap();
                    log = Some(open(&fs, &path).unwrap());
                }
                Step::Kill => {
                    drop(log.take());
                    fs.kill_process();
                    log = Some(open(&fs, &path).unwrap());
                }
            }
            let current = log.as_ref().unwrap();
            prop_assert_eq!(&dump(current), &model);
            prop_assert_eq!(current.log_bytes(), std::fs::metadata(&path).unwrap().len());
        }
    }
}
