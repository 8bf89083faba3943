//! Fault injection under the whole engine, through `FaultyFs`:
//!
//! 1. Crash points: a scripted workload (appends with group commit, segment rolls,
//!    checkpoints, consumer-offset commits and compaction, retention deletes, config
//!    rewrites, clean reopens) is cut after its k-th filesystem operation, for every k.
//!    The disk image is then what a power cut leaves (unsynced data lost, or partly kept
//!    with the last write torn), or the process is killed and the page cache survives
//!    (then recovery runs, and a power cut after it must not take back anything recovery
//!    served). Every append acknowledged durable must read back byte for byte, offsets
//!    must stay contiguous and never be reused, and a committed consumer offset must be
//!    the old or the new one. `TIDELOG_FAULT_SEEDS=N` runs N seeds (default 3).
//! 2. A failed fsync fails every pending durable append, poisons only that partition,
//!    and the state after reopening is consistent.
//! 3. A full disk fails appends with a clear error, keeps the log valid, and appends
//!    resume once retention frees space.
//! 4. Short writes never leave a torn batch behind.
//! 5. A run of client batches that fills the disk appends the batches it wrote whole,
//!    and only those.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tidelog_storage::batch::{Compression, EncodeOptions, encode_batch};
use tidelog_storage::client_batch::{BatchRules, validate_batch};
use tidelog_storage::fs::{CrashOptions, FaultyFs, SyncFault, SyncKind};
use tidelog_storage::{
    Clock, Error, FsyncPolicy, ManualClock, NewRecord, Partition, Store, StoreOptions, Topic,
    TopicConfig, TopicId,
};

const START_MS: i64 = 1_700_000_000_000;
const GROUPS: [&str; 2] = ["g0", "g1"];
/// Operations in the crash-point workload (each is an append, a commit, ...).
const WORKLOAD_STEPS: u64 = 40;

/// The topics of the crash-point workload. `t` syncs every append (`fsync = always`)
/// and every append there waits to be durable. `n` leaves syncing to the OS (`never`)
/// and only some of its appends wait, so its segments roll over unsynced data.
const TOPICS: [(&str, u32, FsyncPolicy); 2] =
    [("t", 2, FsyncPolicy::Always), ("n", 1, FsyncPolicy::Never)];
/// Every partition of `TOPICS`: (topic index, partition).
const LOGS: [(usize, u32); 3] = [(0, 0), (0, 1), (1, 0)];
/// Consumer offsets are committed for partitions of this topic.
const COMMIT_TOPIC: &str = "t";

use tidelog_storage::rng::SeededRng as Rng;

/// A directory for one test case. FaultyFs never needs the real disk's durability, so
/// a tmpfs is preferred where there is one: creating and renaming files there is many
/// times faster than on a journaling filesystem.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

/// A store on a fresh FaultyFs (seeded `seed`) in a scratch directory, with one topic.
struct Scene {
    /// Dropped last: it holds the directory.
    dir: tempfile::TempDir,
    data: PathBuf,
    fs: FaultyFs,
    clock: Arc<ManualClock>,
    store: Store,
    topic: Arc<Topic>,
}

fn scene(seed: u64, name: &str, partitions: u32, config: TopicConfig) -> Scene {
    let dir = scratch_dir();
    let data = dir.path().join("data");
    let fs = FaultyFs::new(dir.path(), seed).unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(&data, options(&fs, &clock)).unwrap();
    let topic = store.create_topic(name, partitions, config).unwrap();
    Scene {
        dir,
        data,
        fs,
        clock,
        store,
        topic,
    }
}

fn options(fs: &FaultyFs, clock: &Arc<ManualClock>) -> StoreOptions {
    StoreOptions {
        clock: clock.clone(),
        flush_threads: 1,
        retention_interval: None,
        flush_observer: None,
        fs: Arc::new(fs.clone()),
        ..StoreOptions::default()
    }
}

/// Small segments so the workloads roll often.
fn topic_config(fsync: FsyncPolicy, retention_bytes: u64) -> TopicConfig {
    TopicConfig {
        segment_bytes: 4096,
        retention_ms: None,
        retention_bytes: Some(retention_bytes),
        segment_ms: None,
        fsync,
        ..TopicConfig::default()
    }
}

fn log_partition(store: &Store, log: usize) -> Arc<Partition> {
    let (topic, partition) = LOGS[log];
    store
        .topic(TOPICS[topic].0)
        .unwrap()
        .partition(partition)
        .unwrap()
        .clone()
}

/// A batch of `count` records whose values say where they come from, with filler.
fn batch(rng: &mut Rng, tag: &str, count: u64) -> Vec<NewRecord> {
    (0..count)
        .map(|i| {
            let mut value = format!("{tag}/{i}/").into_bytes();
            let filler = rng.below(400) as usize;
            let byte = b'a' + rng.below(26) as u8;
            value.extend(std::iter::repeat_n(byte, filler));
            NewRecord::value(value)
        })
        .collect()
}

/// A consumer offset as the workload knows it.
#[derive(Debug, Clone, Copy, Default)]
struct Commit {
    /// The last value whose commit returned `Ok`.
    acked: Option<u64>,
    /// A value whose commit was under way when the workload stopped.
    in_flight: Option<u64>,
}

/// What the workload did, and so what must hold after a crash.
#[derive(Debug, Clone, Default)]
struct Ledger {
    /// Per topic: `create_topic` returned `Ok`.
    topics_created: Vec<bool>,
    /// Per log: the value written at every offset an `append` returned.
    values: Vec<BTreeMap<u64, Bytes>>,
    /// Per log: every offset below this was acknowledged durable.
    acked_end: Vec<u64>,
    /// Per log: the log start cannot be past this (the in-memory value, which
    /// retention moves before it deletes files).
    log_start_bound: Vec<u64>,
    /// (group, partition of `COMMIT_TOPIC`) -> offsets.
    commits: BTreeMap<(String, u32), Commit>,
}

impl Ledger {
    fn new() -> Self {
        Ledger {
            topics_created: vec![false; TOPICS.len()],
            values: vec![BTreeMap::new(); LOGS.len()],
            acked_end: vec![0; LOGS.len()],
            log_start_bound: vec![0; LOGS.len()],
            commits: BTreeMap::new(),
        }
    }

    fn note_log_start(&mut self, log: usize, partition: &Partition) {
        let bound = &mut self.log_start_bound[log];
        *bound = (*bound).max(partition.log_start().unwrap());
    }
}

/// Runs the scripted workload until it ends or the filesystem fails (the power went
/// off). The store it used is left in `slot`.
fn run_workload(
    fs: &FaultyFs,
    dir: &Path,
    clock: &Arc<ManualClock>,
    seed: u64,
    ledger: &mut Ledger,
    slot: &mut Option<Store>,
) -> Result<(), Error> {
    let mut rng = Rng::new(seed);
    *slot = Some(Store::open(dir, options(fs, clock))?);
    for (index, (name, partitions, fsync)) in TOPICS.iter().enumerate() {
        slot.as_ref()
            .unwrap()
            .create_topic(name, *partitions, topic_config(*fsync, 12 * 1024))?;
        ledger.topics_created[index] = true;
    }
    for step in 0..WORKLOAD_STEPS {
        let current = slot.as_ref().unwrap();
        let log = rng.below(LOGS.len() as u64) as usize;
        let part = log_partition(current, log);
        match rng.below(100) {
            0..=9 => {
                // A run of client batches: each one written whole is appended, in
                // order; after a failure, none.
                let runs: Vec<Vec<NewRecord>> = (0..2 + rng.below(3))
                    .map(|i| {
                        let count = 1 + rng.below(4);
                        batch(&mut rng, &format!("{seed}/{log}/{step}/{i}"), count)
                    })
                    .collect();
                let mut last = None;
                for (records, result) in runs
                    .iter()
                    .zip(append_client_run(current, log, clock, &runs))
                {
                    let offsets = result?;
                    assert_eq!(
                        offsets.base_offset,
                        last.map_or(offsets.base_offset, |l: u64| l + 1),
                        "a run's batches take consecutive offsets"
                    );
                    last = Some(offsets.last_offset);
                    for (i, record) in records.iter().enumerate() {
                        ledger.values[log]
                            .insert(offsets.base_offset + i as u64, record.value.clone());
                    }
                }
                let always = TOPICS[LOGS[log].0].2 == FsyncPolicy::Always;
                if let Some(last) = last
                    && (always || rng.below(3) == 0)
                {
                    part.wait_durable_blocking(last)?;
                    ledger.acked_end[log] = last + 1;
                }
            }
            10..=59 => {
                let count = 1 + rng.below(6);
                let mut records = batch(&mut rng, &format!("{seed}/{log}/{step}"), count);
                let offsets = if rng.below(4) == 0 {
                    // As a client's batch; a large one (as a request's batch is, a
                    // slice of a larger buffer) is written in two parts.
                    if rng.below(2) == 0 {
                        let mut value = records[0].value.to_vec();
                        value.resize(17 * 1024, b'z');
                        records[0].value = Bytes::from(value);
                    }
                    append_client_batch(&part, clock, &records)?
                } else {
                    part.append(&records)?
                };
                for (i, record) in records.iter().enumerate() {
                    ledger.values[log].insert(offsets.base_offset + i as u64, record.value.clone());
                }
                let always = TOPICS[LOGS[log].0].2 == FsyncPolicy::Always;
                if always || rng.below(3) == 0 {
                    part.wait_durable_blocking(offsets.last_offset)?;
                    ledger.acked_end[log] = offsets.last_offset + 1;
                }
            }
            60..=72 => {
                let partition = rng.below(u64::from(TOPICS[0].1)) as u32;
                let group = GROUPS[rng.below(GROUPS.len() as u64) as usize];
                let offset = rng.below(ledger.acked_end[partition as usize] + 1);
                let key = (group.to_string(), partition);
                ledger.commits.entry(key.clone()).or_default().in_flight = Some(offset);
                current.offsets().commit(
                    group,
                    &[(
                        COMMIT_TOPIC.to_string(),
                        partition,
                        offset,
                        format!("step {step}"),
                    )],
                )?;
                ledger.commits.insert(
                    key,
                    Commit {
                        acked: Some(offset),
                        in_flight: None,
                    },
                );
            }
            73..=81 => {
                let outcome = part.enforce_retention();
                ledger.note_log_start(log, &part);
                outcome?;
            }
            82..=86 => {
                let (name, _, fsync) = TOPICS[LOGS[log].0];
                let retention = 8 * 1024 + rng.below(16 * 1024);
                current.alter_topic(name, topic_config(fsync, retention))?;
            }
            87..=91 => current.offsets().compact()?,
            _ => {
                drop(part);
                let store = slot.take().unwrap();
                for log in 0..LOGS.len() {
                    ledger.note_log_start(log, &log_partition(&store, log));
                }
                let closed = store.close();
                drop(store);
                closed?;
                *slot = Some(Store::open(dir, options(fs, clock))?);
            }
        }
    }
    slot.as_ref().unwrap().close()
}

/// `records` as a client's batch comes: encoded by the client, in a request's buffer.
fn client_batch_bytes(clock: &Arc<ManualClock>, records: &[NewRecord]) -> Bytes {
    let options = EncodeOptions {
        now_ms: clock.now_ms(),
        default_ttl_ms: None,
        compression: Compression::None,
        max_message_bytes: 1 << 20,
        priority_levels: 0,
    };
    let bytes = encode_batch(records, &options).unwrap().bytes;
    let mut request = vec![0xa5; 5];
    request.extend_from_slice(&bytes);
    request.extend_from_slice(&[0x5a; 3]);
    Bytes::from(request).slice(5..5 + bytes.len())
}

/// Appends `records` as a client's batch would come, through validation.
fn append_client_batch(
    part: &Arc<Partition>,
    clock: &Arc<ManualClock>,
    records: &[NewRecord],
) -> Result<tidelog_storage::Appended, Error> {
    let bytes = client_batch_bytes(clock, records);
    let rules = BatchRules {
        now_ms: clock.now_ms(),
        max_message_bytes: 1 << 20,
        priority_levels: 0,
        expiry_required: false,
        relative_times: false,
    };
    let checked = validate_batch(&bytes, &rules).expect("an encoded batch validates");
    part.append_checked(bytes, &checked, clock.now_ms())
}

/// Appends client batches as a run (as a PublishStream's requests to one partition
/// are), through `Topic::append_batches`: one result a batch.
fn append_client_run(
    store: &Store,
    log: usize,
    clock: &Arc<ManualClock>,
    runs: &[Vec<NewRecord>],
) -> Vec<Result<tidelog_storage::Appended, Error>> {
    let (topic, partition) = LOGS[log];
    let batches = runs.iter().map(|r| client_batch_bytes(clock, r)).collect();
    store
        .topic(TOPICS[topic].0)
        .unwrap()
        .append_batches(partition, batches)
        .into_iter()
        .map(|result| result.map(|(placed, _)| placed.appended.expect("no ids: appended")))
        .collect()
}

/// Everything readable in `[from, to)` of a partition.
fn read_range(partition: &Partition, from: u64, to: u64) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    let mut next = from;
    while next < to {
        let read = partition
            .read(next, 1000, u64::MAX)
            .unwrap_or_else(|e| panic!("reading {next} of {}: {e}", partition.id()));
        out.extend(read.records.into_iter().map(|r| (r.offset, r.value)));
        assert!(read.next_offset > next, "read from {next} made no progress");
        next = read.next_offset;
    }
    out
}

/// Checks a store reopened after a crash against the ledger and, if `write`, appends to
/// every partition and commits an offset. Returns the ledger of what must survive from
/// now on: everything this store showed, plus what it acknowledged.
fn check_recovered(
    store: &Store,
    ledger: &Ledger,
    rng: &mut Rng,
    write: bool,
    context: &str,
) -> Ledger {
    let mut next = Ledger::new();
    for (index, (name, partitions, fsync)) in TOPICS.iter().enumerate() {
        if store.topic(name).is_ok() {
            next.topics_created[index] = true;
            continue;
        }
        assert!(
            !ledger.topics_created[index],
            "{context}: topic {name}, whose creation returned Ok, is gone"
        );
        for (log, (topic, _)) in LOGS.iter().enumerate() {
            assert!(*topic != index || ledger.acked_end[log] == 0, "{context}");
        }
        if write {
            store
                .create_topic(name, *partitions, topic_config(*fsync, 12 * 1024))
                .unwrap_or_else(|e| panic!("{context}: creating {name} again: {e}"));
            next.topics_created[index] = true;
        }
    }
    for (log, (topic, p)) in LOGS.iter().enumerate() {
        if !next.topics_created[*topic] {
            continue;
        }
        let name = TOPICS[*topic].0;
        let part = log_partition(store, log);
        let log_start = part.log_start().unwrap();
        let end = part.end_offset().unwrap();
        assert!(
            log_start <= ledger.log_start_bound[log],
            "{context}: {name}/{p} starts at {log_start}, past {}",
            ledger.log_start_bound[log]
        );
        assert!(
            end >= ledger.acked_end[log],
            "{context}: {name}/{p} ends at {end} but offsets below {} were acknowledged durable",
            ledger.acked_end[log]
        );
        let shown = read_range(&part, log_start, end);
        for (n, (offset, value)) in shown.iter().enumerate() {
            assert_eq!(
                *offset,
                log_start + n as u64,
                "{context}: {name}/{p}: offsets are not contiguous"
            );
            match ledger.values[log].get(offset) {
                Some(expected) => assert_eq!(
                    value, expected,
                    "{context}: {name}/{p} offset {offset} holds other bytes than were written"
                ),
                None => panic!(
                    "{context}: {name}/{p} offset {offset} holds a record that was never written"
                ),
            }
        }
        assert_eq!(shown.len() as u64, end - log_start, "{context}: {name}/{p}");
        // A new append takes the next offset: none is reused.
        let records = if write {
            let records = batch(rng, &format!("after/{log}"), 2);
            let appended = part.append_durable(&records).unwrap_or_else(|e| {
                panic!("{context}: appending to {name}/{p} after recovery: {e}")
            });
            assert_eq!(appended.base_offset, end, "{context}: {name}/{p}");
            records
        } else {
            Vec::new()
        };
        // Below the log start the old values may come back (a retention delete that
        // was not synced); from it on, what this store showed, which must all stay.
        next.values[log] = ledger.values[log].clone();
        next.values[log].extend(shown);
        for (n, record) in records.iter().enumerate() {
            next.values[log].insert(end + n as u64, record.value.clone());
        }
        next.acked_end[log] = end + records.len() as u64;
        next.log_start_bound[log] = log_start;
    }
    for (key, commit) in &ledger.commits {
        let fetched = store
            .offsets()
            .fetch(&key.0, COMMIT_TOPIC, key.1)
            .map(|c| c.offset);
        assert!(
            fetched == commit.acked || (commit.in_flight.is_some() && fetched == commit.in_flight),
            "{context}: group {} partition {} has committed offset {fetched:?}, expected {:?} or {:?}",
            key.0,
            key.1,
            commit.acked,
            commit.in_flight
        );
        next.commits.insert(
            key.clone(),
            Commit {
                acked: fetched,
                in_flight: None,
            },
        );
    }
    if write {
        let offset = rng.below(next.acked_end[0] + 1);
        store
            .offsets()
            .commit(
                GROUPS[0],
                &[(COMMIT_TOPIC.to_string(), 0, offset, String::new())],
            )
            .unwrap_or_else(|e| panic!("{context}: committing after recovery: {e}"));
        next.commits.insert(
            (GROUPS[0].to_string(), 0),
            Commit {
                acked: Some(offset),
                in_flight: None,
            },
        );
    }
    next
}

/// How a crash point ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// A power cut: the image keeps only what was synced.
    PowerCut,
    /// A power cut that keeps some unsynced writes, the last one torn.
    TornWrites(u64),
    /// `kill -9`: the page cache survives; recovery runs; then a power cut.
    ProcessKill,
}

fn reopen(fs: &FaultyFs, dir: &Path, clock: &Arc<ManualClock>, context: &str) -> Store {
    Store::open(dir, options(fs, clock))
        .unwrap_or_else(|e| panic!("{context}: recovery failed: {e}"))
}

/// Runs the workload with the power cut after `crash_at` operations (`None`: never),
/// ends it as `ending` says and checks what recovery finds. Returns whether the power
/// went off (false: the workload finished first) and how many operations ran.
fn crash_point(seed: u64, crash_at: Option<u64>, ending: Ending) -> (bool, u64) {
    let dir = scratch_dir();
    let root = dir.path().to_path_buf();
    let data: PathBuf = root.join("data");
    let fs = FaultyFs::new(&root, seed).unwrap();
    if seed % 2 == 1 {
        // Odd seeds also cut writes short, so a crash can fall between two parts of
        // one batch.
        fs.set_short_writes(Some(3));
    }
    if let Some(at) = crash_at {
        fs.power_off_after(at);
    }
    let clock = ManualClock::new(START_MS);
    let mut ledger = Ledger::new();
    let mut slot = None;
    let outcome = run_workload(&fs, &data, &clock, seed, &mut ledger, &mut slot);
    let powered_off = fs.is_powered_off();
    if let Err(error) = &outcome {
        assert!(
            powered_off,
            "seed {seed} crash at {crash_at:?}: the workload failed with the power on: {error}"
        );
    }
    if let Some(store) = slot.take() {
        for (log, (topic, _)) in LOGS.iter().enumerate() {
            if store.topic(TOPICS[*topic].0).is_ok() {
                ledger.note_log_start(log, &log_partition(&store, log));
            }
        }
        store.simulate_crash();
    }
    let ops = fs.ops();
    let context = format!("seed {seed} crash after op {crash_at:?} ({ending:?})");
    let mut rng = Rng::new(seed ^ 0xC0FFEE);
    match ending {
        Ending::PowerCut | Ending::TornWrites(_) => {
            let options = match ending {
                Ending::TornWrites(crash_seed) => CrashOptions::keep_some(crash_seed),
                _ => CrashOptions::lose_unsynced(),
            };
            fs.crash(options).unwrap();
            let store = reopen(&fs, &data, &clock, &context);
            check_recovered(&store, &ledger, &mut rng, true, &context);
            store.close().unwrap();
        }
        Ending::ProcessKill => {
            fs.kill_process();
            let store = reopen(&fs, &data, &clock, &context);
            // No writes here: an fsync now would cover for a recovery that served data
            // it had not made durable.
            let shown = check_recovered(&store, &ledger, &mut rng, false, &context);
            store.simulate_crash();
            fs.crash(CrashOptions::lose_unsynced()).unwrap();
            let context = format!("{context}, then a power cut after recovery");
            let store = reopen(&fs, &data, &clock, &context);
            check_recovered(&store, &shown, &mut rng, true, &context);
            store.close().unwrap();
        }
    }
    (powered_off, ops)
}

fn seeds() -> u64 {
    std::env::var("TIDELOG_FAULT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

#[test]
fn every_crash_point_keeps_what_was_acknowledged() {
    let mut points = 0;
    let started = std::time::Instant::now();
    for seed in 0..seeds() {
        // A run without a crash counts the operations: the crash points.
        let (powered_off, total) = crash_point(seed, None, Ending::PowerCut);
        assert!(!powered_off);
        assert!(
            total > 50,
            "the workload did too little: {total} operations"
        );
        for at in 1..=total {
            let ending = match at % 3 {
                0 => Ending::PowerCut,
                1 => Ending::TornWrites(seed * 1_000_003 + at),
                _ => Ending::ProcessKill,
            };
            crash_point(seed, Some(at), ending);
            points += 1;
        }
    }
    eprintln!("checked {points} crash points in {:?}", started.elapsed());
}

/// A regression test (the crash-point workload reaches this case only rarely): a
/// segment rolled while the previous one had unsynced batches; the power cut kept the
/// new file (and maybe some of its data) but lost whole batches at the end of the
/// previous one. Recovery used to refuse to open ("segment starts at offset X but the
/// previous one ends at Y"); nothing past the gap was ever acknowledged, so it is
/// dropped instead.
#[test]
fn a_roll_over_unsynced_data_recovers_after_a_power_cut() {
    for seed in 0..64 {
        let Scene {
            dir: _dir,
            data,
            fs,
            clock,
            store,
            topic,
        } = scene(seed, "n", 1, topic_config(FsyncPolicy::Never, 1 << 30));
        let part = topic.partition(0).unwrap().clone();
        let mut rng = Rng::new(seed);
        let mut values = BTreeMap::new();
        let acked = append_acked(&part, &mut rng, "acked", 2, &mut values);
        // Unsynced appends until the segment rolls, then one more into the new one.
        let segments = part.info().segment_count;
        while part.info().segment_count == segments {
            append_unacked(&part, &mut rng, "unsynced", &mut values);
        }
        append_unacked(&part, &mut rng, "unsynced", &mut values);
        drop(topic);
        drop(part);
        store.simulate_crash();
        fs.crash(CrashOptions::keep_some(seed)).unwrap();
        let context = format!("seed {seed}");
        let store = reopen(&fs, &data, &clock, &context);
        let part = store.topic("n").unwrap().partition(0).unwrap().clone();
        let end = assert_holds(&part, &values, acked, &context);
        let appended = part.append_durable(&batch(&mut rng, "after", 1)).unwrap();
        assert_eq!(appended.base_offset, end, "{context}");
    }
}

/// Appends `batches` batches and waits for each to be durable; records their values.
/// Returns the end of what was acknowledged.
fn append_acked(
    part: &Arc<Partition>,
    rng: &mut Rng,
    tag: &str,
    batches: u64,
    values: &mut BTreeMap<u64, Bytes>,
) -> u64 {
    let mut end = 0;
    for n in 0..batches {
        let count = 1 + rng.below(5);
        let records = batch(rng, &format!("{tag}/{n}"), count);
        let appended = part.append_durable(&records).unwrap();
        note_values(values, appended.base_offset, &records);
        end = appended.last_offset + 1;
    }
    end
}

/// Appends one batch without waiting for it to be durable; records its values.
fn append_unacked(
    part: &Arc<Partition>,
    rng: &mut Rng,
    tag: &str,
    values: &mut BTreeMap<u64, Bytes>,
) {
    let count = 1 + rng.below(5);
    let records = batch(rng, tag, count);
    let appended = part.append(&records).unwrap();
    note_values(values, appended.base_offset, &records);
}

fn note_values(values: &mut BTreeMap<u64, Bytes>, base: u64, records: &[NewRecord]) {
    for (n, record) in records.iter().enumerate() {
        values.insert(base + n as u64, record.value.clone());
    }
}

/// Checks that the partition holds, from its log start to its end, contiguous offsets
/// whose values are the ones written there, and that it ends at or past `acked_end`.
/// Returns the end.
fn assert_holds(
    part: &Partition,
    values: &BTreeMap<u64, Bytes>,
    acked_end: u64,
    context: &str,
) -> u64 {
    let log_start = part.log_start().unwrap();
    let end = part.end_offset().unwrap();
    assert!(
        end >= acked_end,
        "{context}: the log ends at {end}, but offsets below {acked_end} were acknowledged durable"
    );
    let shown = read_range(part, log_start, end);
    assert_eq!(shown.len() as u64, end - log_start, "{context}");
    for (n, (offset, value)) in shown.iter().enumerate() {
        assert_eq!(
            *offset,
            log_start + n as u64,
            "{context}: offsets are not contiguous"
        );
        assert_eq!(
            Some(value),
            values.get(offset),
            "{context}: offset {offset} is not what was written there"
        );
    }
    end
}

fn is_poisoned_or_io(error: &Error) -> bool {
    matches!(error, Error::Poisoned { .. } | Error::Io { .. })
}

fn is_disk_full(error: &Error) -> bool {
    matches!(error, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
}

/// How a fault test ends before the state is checked again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// The process restarts (the page cache survives), then the power is cut.
    ProcessThenPowerCut,
    /// The power is cut.
    PowerCut,
}

/// Reopens after `restart` and checks partition 0 of topic `t` against `values`, then
/// appends to it. For a process restart, a power cut follows and everything the
/// restarted store showed must still be there.
fn check_after_restart(
    fs: &FaultyFs,
    data: &Path,
    clock: &Arc<ManualClock>,
    restart: Restart,
    values: &BTreeMap<u64, Bytes>,
    acked_end: u64,
    context: &str,
) {
    let context = format!("{context} ({restart:?})");
    let mut values = values.clone();
    let mut acked_end = acked_end;
    if restart == Restart::ProcessThenPowerCut {
        fs.kill_process();
        let store = reopen(fs, data, clock, &context);
        let part = store.topic("t").unwrap().partition(0).unwrap().clone();
        // Whatever recovery shows must survive a power cut: no write here, so no
        // fsync covers for it.
        acked_end = assert_holds(&part, &values, acked_end, &context);
        drop(part);
        store.simulate_crash();
    }
    fs.crash(CrashOptions::lose_unsynced()).unwrap();
    let store = reopen(fs, data, clock, &context);
    let part = store.topic("t").unwrap().partition(0).unwrap().clone();
    let end = assert_holds(&part, &values, acked_end, &context);
    let mut rng = Rng::new(end);
    let records = batch(&mut rng, "after", 3);
    let appended = part
        .append_durable(&records)
        .unwrap_or_else(|e| panic!("{context}: appending after recovery: {e}"));
    assert_eq!(appended.base_offset, end, "{context}: an offset was reused");
    note_values(&mut values, end, &records);
    assert_holds(&part, &values, end + 3, &context);
    store.close().unwrap();
}

#[test]
fn a_failed_fsync_fails_pending_acks_and_poisons_only_its_partition() {
    let faults = [
        (
            "segment fdatasync",
            SyncFault::nth(1)
                .kinds(&[SyncKind::Data])
                .path_contains("/t/0/000"),
        ),
        (
            "partition directory fsync",
            SyncFault::nth(1)
                .kinds(&[SyncKind::Dir])
                .path_contains("/t/0"),
        ),
        (
            "checkpoint fdatasync",
            SyncFault::nth(1)
                .kinds(&[SyncKind::Data])
                .path_contains("/t/0/checkpoint"),
        ),
    ];
    for (name, fault) in faults {
        for restart in [Restart::ProcessThenPowerCut, Restart::PowerCut] {
            let context = format!("EIO on the first {name}");
            let Scene {
                dir: _dir,
                data,
                fs,
                clock,
                store,
                topic,
            } = scene(5, "t", 2, topic_config(FsyncPolicy::Always, 1 << 30));
            let p0 = topic.partition(0).unwrap().clone();
            let p1 = topic.partition(1).unwrap().clone();
            let mut rng = Rng::new(9);
            let mut values = BTreeMap::new();
            let mut acked_end = append_acked(&p0, &mut rng, "before", 4, &mut values);
            fs.fail_sync(fault.clone());

            // Concurrent durable appenders, each until its first failure.
            let outcomes: Vec<_> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..6)
                    .map(|thread| {
                        let p0 = p0.clone();
                        scope.spawn(move || {
                            let mut rng = Rng::new(100 + thread);
                            let mut outcomes = Vec::new();
                            for n in 0..40 {
                                let records = batch(&mut rng, &format!("{thread}/{n}"), 3);
                                let appended = match p0.append(&records) {
                                    Ok(appended) => appended,
                                    Err(error) => {
                                        outcomes.push((None, records, Err(error)));
                                        break;
                                    }
                                };
                                let acked = p0.wait_durable_blocking(appended.last_offset);
                                let failed = acked.is_err();
                                outcomes.push((Some(appended), records, acked));
                                if failed {
                                    break;
                                }
                            }
                            outcomes
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap())
                    .collect()
            });
            assert_eq!(
                fs.stats().failed_syncs,
                1,
                "{context}: the fault did not fire"
            );
            let mut failures = 0;
            for (appended, records, acked) in outcomes {
                if let Some(appended) = appended {
                    note_values(&mut values, appended.base_offset, &records);
                }
                match acked {
                    Ok(()) => {
                        let last = appended.map_or(0, |a| a.last_offset);
                        acked_end = acked_end.max(last + 1);
                    }
                    Err(error) => {
                        assert!(is_poisoned_or_io(&error), "{context}: {error}");
                        failures += 1;
                    }
                }
            }
            assert_eq!(failures, 6, "{context}: every appender ends with a failure");
            // No later append on that partition is accepted before a reopen.
            let refused = p0.append(&batch(&mut rng, "refused", 1)).unwrap_err();
            assert!(
                matches!(refused, Error::Poisoned { .. }),
                "{context}: {refused}"
            );
            assert!(p0.info().poisoned.is_some(), "{context}");
            // The other partition and the offsets store are unaffected.
            p1.append_durable(&batch(&mut rng, "p1", 2)).unwrap();
            store
                .offsets()
                .commit("g", &[("t".to_string(), 1, 1, String::new())])
                .unwrap();
            drop((topic, p0, p1));
            assert!(
                store.close().is_err(),
                "{context}: closing reports the poison"
            );
            drop(store);
            check_after_restart(&fs, &data, &clock, restart, &values, acked_end, &context);
        }
    }
}

#[test]
fn a_full_disk_fails_appends_cleanly_and_they_resume_once_retention_frees_space() {
    let mut failed_at_a_roll = 0;
    for variant in 0..8u64 {
        for restart in [Restart::ProcessThenPowerCut, Restart::PowerCut] {
            let context = format!("full disk, variant {variant}");
            let Scene {
                dir: _dir,
                data,
                fs,
                clock,
                store,
                topic,
            } = scene(variant, "t", 1, topic_config(FsyncPolicy::Always, 8 * 1024));
            let part = topic.partition(0).unwrap().clone();
            let mut rng = Rng::new(variant);
            let mut values = BTreeMap::new();
            let mut acked_end = append_acked(&part, &mut rng, "before", 3, &mut values);
            fs.set_capacity(Some(fs.used_bytes() + 20 * 1024 + variant * 700));

            let error = loop {
                let segments = part.info().segment_count;
                let count = 1 + rng.below(5);
                let records = batch(&mut rng, "fill", count);
                match part.append_durable(&records) {
                    Ok(appended) => {
                        note_values(&mut values, appended.base_offset, &records);
                        acked_end = appended.last_offset + 1;
                    }
                    Err(error) => {
                        if part.info().segment_count > segments {
                            failed_at_a_roll += 1;
                        }
                        break error;
                    }
                }
            };
            assert!(is_disk_full(&error), "{context}: {error}");
            assert!(
                error.to_string().contains("No space left"),
                "{context}: {error}"
            );
            assert!(part.info().poisoned.is_none(), "{context}");
            // The log is intact and ends where it did; the failed batch left nothing.
            assert_eq!(part.info().written_offset, acked_end, "{context}");
            assert_holds(&part, &values, acked_end, &context);
            // Still full: appends keep failing the same way.
            fs.set_disk_full(true);
            let again = part.append(&batch(&mut rng, "again", 1)).unwrap_err();
            assert!(is_disk_full(&again), "{context}: {again}");
            // The offsets store fails cleanly too (or fits), and is not poisoned.
            let commit = store
                .offsets()
                .commit("g", &[("t".to_string(), 0, 1, "x".repeat(3000))]);
            if let Err(error) = &commit {
                assert!(is_disk_full(error), "{context}: {error}");
            }

            // Retention frees whole segments; appends and commits resume.
            let outcome = part.enforce_retention().unwrap();
            assert!(outcome.segments_deleted > 0, "{context}");
            for n in 0..5 {
                let records = batch(&mut rng, &format!("after/{n}"), 2);
                let appended = part
                    .append_durable(&records)
                    .unwrap_or_else(|e| panic!("{context}: append {n} after retention: {e}"));
                assert_eq!(appended.base_offset, acked_end, "{context}");
                note_values(&mut values, appended.base_offset, &records);
                acked_end = appended.last_offset + 1;
            }
            store
                .offsets()
                .commit("g", &[("t".to_string(), 0, 2, String::new())])
                .unwrap();
            assert_holds(&part, &values, acked_end, &context);
            drop((topic, part));
            store.simulate_crash();
            check_after_restart(&fs, &data, &clock, restart, &values, acked_end, &context);
        }
    }
    assert!(
        failed_at_a_roll > 0,
        "no variant ran out of space at a segment roll"
    );
}

/// The bytes of a partition directory's segment files.
fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .map(|path| std::fs::metadata(path).unwrap().len())
        .sum()
}

#[test]
fn a_run_that_fills_the_disk_appends_the_batches_it_wrote_whole() {
    for variant in 0..6u64 {
        for restart in [Restart::ProcessThenPowerCut, Restart::PowerCut] {
            let context = format!("run filling the disk, variant {variant}");
            let Scene {
                dir: _dir,
                data,
                fs,
                clock,
                store,
                topic,
            } = scene(variant, "t", 1, topic_config(FsyncPolicy::Always, 1 << 30));
            let part = topic.partition(0).unwrap().clone();
            let mut rng = Rng::new(variant);
            let mut values = BTreeMap::new();
            let acked_end = append_acked(&part, &mut rng, "before", 3, &mut values);
            let runs: Vec<Vec<NewRecord>> = (0..8)
                .map(|i| {
                    let count = 1 + rng.below(4);
                    batch(&mut rng, &format!("run/{i}"), count)
                })
                .collect();
            // Room for `whole` batches and part of the next (none of it for variant 0).
            let whole = variant as usize;
            let sizes: Vec<u64> = runs
                .iter()
                .map(|r| client_batch_bytes(&clock, r).len() as u64)
                .collect();
            let room = sizes[..whole].iter().sum::<u64>() + sizes[whole] * variant.min(1) / 2;
            fs.set_capacity(Some(fs.used_bytes() + room));
            let length_before = log_bytes(&data.join("topics/t/0"));
            let results = append_client_run(&store, 0, &clock, &runs);
            let mut next = acked_end;
            for (i, (result, records)) in results.iter().zip(&runs).enumerate() {
                match result {
                    Ok(appended) if i < whole => {
                        assert_eq!(appended.base_offset, next, "{context}: batch {i}");
                        note_values(&mut values, next, records);
                        next = appended.last_offset + 1;
                    }
                    Err(error) if i >= whole => {
                        assert!(is_disk_full(error), "{context}: batch {i}: {error}");
                    }
                    other => {
                        panic!("{context}: batch {i} of a run with room for {whole}: {other:?}")
                    }
                }
            }
            // The batches written whole are there; the torn one left nothing.
            // (Segments are 4 KiB: some runs roll in the middle.)
            assert_eq!(
                log_bytes(&data.join("topics/t/0")),
                length_before + sizes[..whole].iter().sum::<u64>(),
                "{context}: a segment keeps a torn batch"
            );
            assert!(part.info().poisoned.is_none(), "{context}");
            assert_eq!(part.info().written_offset, next, "{context}");
            assert_holds(&part, &values, acked_end, &context);
            fs.set_capacity(None);
            let durable = part.wait_durable_blocking(next.saturating_sub(1));
            durable.unwrap_or_else(|e| panic!("{context}: syncing after space came back: {e}"));
            drop(part);
            drop(topic);
            store.simulate_crash();
            check_after_restart(&fs, &data, &clock, restart, &values, next, &context);
        }
    }
}

#[test]
fn short_writes_never_leave_a_torn_batch() {
    for seed in 0..4 {
        let context = format!("short writes, seed {seed}");
        let dir = scratch_dir();
        let data = dir.path().join("data");
        let fs = FaultyFs::new(dir.path(), seed).unwrap();
        fs.set_short_writes(Some(2));
        let clock = ManualClock::new(START_MS);
        let mut store = Store::open(&data, options(&fs, &clock)).unwrap();
        store
            .create_topic("t", 1, topic_config(FsyncPolicy::Always, 1 << 30))
            .unwrap();
        let mut rng = Rng::new(seed);
        let mut values = BTreeMap::new();
        let mut acked_end = 0;
        let mut committed = None;
        for round in 0..3 {
            let part = store.topic("t").unwrap().partition(0).unwrap().clone();
            acked_end = acked_end.max(append_acked(
                &part,
                &mut rng,
                &format!("round {round}"),
                12,
                &mut values,
            ));
            let offset = rng.below(acked_end);
            store
                .offsets()
                .commit("g", &[("t".to_string(), 0, offset, "meta".repeat(50))])
                .unwrap();
            committed = Some(offset);
            store.offsets().compact().unwrap();
            assert_holds(&part, &values, acked_end, &context);
            drop(part);
            store.close().unwrap();
            drop(store);
            store = reopen(&fs, &data, &clock, &context);
            assert_eq!(
                store.offsets().fetch("g", "t", 0).map(|c| c.offset),
                committed,
                "{context}"
            );
        }
        assert!(
            fs.stats().short_writes > 20,
            "{context}: too few short writes"
        );
        // Unsynced appends cut into pieces, then a power cut that keeps some pieces.
        let part = store.topic("t").unwrap().partition(0).unwrap().clone();
        for _ in 0..6 {
            append_unacked(&part, &mut rng, "unsynced", &mut values);
        }
        drop(part);
        store.simulate_crash();
        fs.crash(CrashOptions::keep_some(seed)).unwrap();
        let store = reopen(&fs, &data, &clock, &context);
        let part = store.topic("t").unwrap().partition(0).unwrap().clone();
        assert_holds(&part, &values, acked_end, &context);
        assert_eq!(
            store.offsets().fetch("g", "t", 0).map(|c| c.offset),
            committed,
            "{context}"
        );
    }
}

/// Bug hunt 2026-12-06: size retention deleted sealed segments that were written but
/// not yet durable on an `always` topic, so the log start went above the end readers
/// see (every Fetch out of range, Subscribe streams resetting in a loop). With the
/// disk's syncs held, retention deletes nothing readers cannot see, the log start stays
/// at or below the end; once the syncs complete it deletes what the limit asks.
#[test]
fn retention_never_deletes_past_what_readers_can_see() {
    let Scene {
        dir: _dir,
        fs,
        store,
        topic,
        ..
    } = scene(11, "t", 1, topic_config(FsyncPolicy::Always, 8 * 1024));
    let part = topic.partition(0).unwrap().clone();
    let mut rng = Rng::new(11);
    let mut values = BTreeMap::new();
    let durable_end = append_acked(&part, &mut rng, "durable", 10, &mut values);
    /// Lets the syncs go when the test ends, failed or not: the store's close waits
    /// for its flusher (dropped before the store).
    struct Release(FaultyFs);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.hold_syncs(false);
        }
    }
    let release = Release(fs.clone());
    fs.hold_syncs(true);
    let mut written_end = durable_end;
    // Rolls until the most sealed segments that may wait for their fsync do: the next
    // roll would wait for the held fsync itself.
    let mut n = 0;
    while part.sealed_backlog() < tidelog_storage::partition::SEALED_BACKLOG_MAX {
        let count = 1 + rng.below(5);
        let records = batch(&mut rng, &format!("held {n}"), count);
        written_end = part.append(&records).unwrap().last_offset + 1;
        n += 1;
        assert!(n < 1_000, "the backlog never filled");
    }
    assert!(part.info().segment_count > 5, "too few segments");
    for _ in 0..3 {
        part.enforce_retention().unwrap();
        let (start, end) = (part.log_start().unwrap(), part.end_offset().unwrap());
        assert!(end <= durable_end, "readers see only durable data: {end}");
        assert!(start <= end, "log start {start} above the end {end}");
        let read = part.read(start, 1_000, u64::MAX).unwrap();
        assert_eq!(read.next_offset, end);
    }
    fs.hold_syncs(false);
    part.wait_durable_blocking(written_end - 1).unwrap();
    part.enforce_retention().unwrap();
    let (start, end) = (part.log_start().unwrap(), part.end_offset().unwrap());
    assert_eq!(end, written_end);
    assert!(
        start > durable_end,
        "the limit deletes once visible: {start}"
    );
    assert!(
        part.info().size_bytes < 8 * 1024 + 4096,
        "{:?}",
        part.info()
    );
    drop((topic, part, release));
    store.close().unwrap();
}

#[test]
fn a_failed_directory_fsync_in_retention_poisons_the_partition() {
    for restart in [Restart::ProcessThenPowerCut, Restart::PowerCut] {
        let context = "EIO on the retention's directory fsync";
        let dir = scratch_dir();
        let data = dir.path().join("data");
        let fs = FaultyFs::new(dir.path(), 3).unwrap();
        let clock = ManualClock::new(START_MS);
        let store = Store::open(&data, options(&fs, &clock)).unwrap();
        let topic = store
            .create_topic("t", 1, topic_config(FsyncPolicy::Always, 8 * 1024))
            .unwrap();
        let part = topic.partition(0).unwrap().clone();
        let mut rng = Rng::new(3);
        let mut values = BTreeMap::new();
        let acked_end = append_acked(&part, &mut rng, "before", 40, &mut values);
        assert!(part.info().segment_count > 3, "{context}: too few segments");
        fs.fail_sync(
            SyncFault::nth(1)
                .kinds(&[SyncKind::Dir])
                .path_contains("/t/0"),
        );
        let error = part.enforce_retention().unwrap_err();
        assert!(is_poisoned_or_io(&error), "{context}: {error}");
        assert_eq!(fs.stats().failed_syncs, 1, "{context}");
        let refused = part.append(&batch(&mut rng, "refused", 1)).unwrap_err();
        assert!(
            matches!(refused, Error::Poisoned { .. }),
            "{context}: {refused}"
        );
        drop((topic, part));
        store.simulate_crash();
        check_after_restart(&fs, &data, &clock, restart, &values, acked_end, context);
    }
}

#[test]
fn a_failed_fsync_of_the_offsets_log_fails_the_commit_and_refuses_later_ones() {
    for restart in [Restart::ProcessThenPowerCut, Restart::PowerCut] {
        let context = format!("EIO on the offsets log ({restart:?})");
        let dir = scratch_dir();
        let data = dir.path().join("data");
        let fs = FaultyFs::new(dir.path(), 4).unwrap();
        let clock = ManualClock::new(START_MS);
        let store = Store::open(&data, options(&fs, &clock)).unwrap();
        // Offsets on a topic that is gone are removed at open: the topic exists.
        store.create_topic("t", 1, TopicConfig::default()).unwrap();
        let commit = |store: &Store, offset: u64| {
            store
                .offsets()
                .commit("g", &[("t".to_string(), 0, offset, String::new())])
        };
        commit(&store, 10).unwrap();
        fs.fail_sync(
            SyncFault::nth(1)
                .kinds(&[SyncKind::Data])
                .path_contains("offsets.log"),
        );
        let failed = commit(&store, 20).unwrap_err();
        assert!(is_poisoned_or_io(&failed), "{context}: {failed}");
        let refused = commit(&store, 30).unwrap_err();
        assert!(
            matches!(refused, Error::Poisoned { .. }),
            "{context}: {refused}"
        );
        // Readers see only what was acknowledged.
        assert_eq!(
            store.offsets().fetch("g", "t", 0).map(|c| c.offset),
            Some(10)
        );
        store.simulate_crash();
        let fetch_after_restart = |fs: &FaultyFs| {
            let store = reopen(fs, &data, &clock, &context);
            let fetched = store.offsets().fetch("g", "t", 0).map(|c| c.offset);
            store.simulate_crash();
            fetched
        };
        match restart {
            Restart::ProcessThenPowerCut => {
                fs.kill_process();
                let shown = fetch_after_restart(&fs);
                assert!(matches!(shown, Some(10 | 20)), "{context}: {shown:?}");
                fs.crash(CrashOptions::lose_unsynced()).unwrap();
                assert_eq!(fetch_after_restart(&fs), shown, "{context}");
            }
            Restart::PowerCut => {
                fs.crash(CrashOptions::lose_unsynced()).unwrap();
                assert_eq!(fetch_after_restart(&fs), Some(10), "{context}");
            }
        }
        let store = reopen(&fs, &data, &clock, &context);
        commit(&store, 40).unwrap();
        store.close().unwrap();
    }
}

/// `Store::create_partitions` cut by a power cut (or a torn write) after each of its
/// filesystem operations: the topic reopens with its old count or its new one, never
/// anything in between; the old partitions keep their data; a call that returned `Ok`
/// is never taken back; and asking again on the reopened store completes the change.
#[test]
fn create_partitions_is_all_or_nothing_at_every_crash_point() {
    let run = |crash_after: Option<u64>, seed: u64| -> (bool, u64) {
        let dir = scratch_dir();
        let data = dir.path().join("data");
        let fs = FaultyFs::new(dir.path(), seed).unwrap();
        let clock = ManualClock::new(START_MS);
        let store = Store::open(&data, options(&fs, &clock)).unwrap();
        let config = topic_config(FsyncPolicy::Always, 1 << 30);
        store.create_topic("t", 2, config).unwrap();
        let partition = store.topic("t").unwrap().partition(0).unwrap().clone();
        partition
            .append_durable(&[NewRecord::value("before")])
            .unwrap();
        let before = fs.ops();
        if let Some(at) = crash_after {
            fs.power_off_after(at);
        }
        drop(partition);
        let grown = store
            .create_partitions("t", 5)
            .map(|topic| topic.partitions().len());
        let ops = fs.ops() - before;
        let powered_off = fs.is_powered_off();
        let context = format!("seed {seed}, crash after op {crash_after:?}: {grown:?}");
        if !powered_off {
            assert_eq!(grown.as_ref().ok(), Some(&5), "{context}");
        }
        store.simulate_crash();
        let options_for_crash = if seed.is_multiple_of(2) {
            CrashOptions::lose_unsynced()
        } else {
            CrashOptions::keep_some(seed)
        };
        fs.crash(options_for_crash).unwrap();
        let store = reopen(&fs, &data, &clock, &context);
        let count = store.topic("t").unwrap().partitions().len();
        assert!(count == 2 || count == 5, "{context}: {count} partitions");
        // The open removed what the cut attempt made beyond the count.
        let left: Vec<usize> = (count..5)
            .filter(|id| data.join("topics/t").join(id.to_string()).exists())
            .collect();
        assert!(
            left.is_empty(),
            "{context}: partitions {left:?} left on disk"
        );
        if grown.is_ok() {
            assert_eq!(count, 5, "{context}: an acknowledged change was taken back");
        }
        let read = store
            .topic("t")
            .unwrap()
            .partition(0)
            .unwrap()
            .read(0, 10, 1 << 20);
        assert_eq!(read.unwrap().records.len(), 1, "{context}");
        // Asking again completes it (removing what the cut attempt left behind).
        let topic = if count == 2 {
            store
                .create_partitions("t", 5)
                .unwrap_or_else(|e| panic!("{context}: again: {e}"))
        } else {
            store.topic("t").unwrap()
        };
        let added = topic.partition(4).unwrap().clone();
        let appended = added.append_durable(&[NewRecord::value("after")]).unwrap();
        assert_eq!(
            appended.base_offset, 0,
            "{context}: a new partition starts empty"
        );
        assert!(
            store.create_partitions("t", 5).is_err(),
            "the count only grows"
        );
        drop(added);
        drop(topic);
        drop(store);
        let store = reopen(&fs, &data, &clock, &context);
        assert_eq!(store.topic("t").unwrap().partitions().len(), 5, "{context}");
        store.close().unwrap();
        (powered_off, ops)
    };
    let (powered_off, total) = run(None, 0);
    assert!(!powered_off);
    assert!(total > 5, "create_partitions did only {total} operations");
    for seed in 0..2 {
        for at in 0..total {
            run(Some(at), seed);
        }
    }
}

/// A CreatePartitions that runs out of file descriptors part-way fails with the
/// error and leaves no partition directory behind (they were never counted).
#[test]
fn create_partitions_out_of_descriptors_leaves_no_partition_behind() {
    let dir = scratch_dir();
    let data = dir.path().join("data");
    let fs = FaultyFs::new(dir.path(), 3).unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(&data, options(&fs, &clock)).unwrap();
    store.create_topic("t", 2, TopicConfig::default()).unwrap();
    fs.set_open_fails(Some("topics/t/4"));
    let error = store.create_partitions("t", 6).unwrap_err();
    assert!(is_out_of_fds(&error), "{error}");
    fs.set_open_fails(None);
    assert_eq!(store.topic("t").unwrap().partitions().len(), 2);
    let left: Vec<usize> = (2..6)
        .filter(|id| data.join("topics/t").join(id.to_string()).exists())
        .collect();
    assert!(left.is_empty(), "partitions {left:?} left on disk");
    // And the grow works once descriptors are back.
    assert_eq!(
        store.create_partitions("t", 6).unwrap().partitions().len(),
        6
    );
    store.close().unwrap();
}

#[test]
fn an_owned_topic_is_created_with_its_owner_or_not_at_all_at_every_crash_point() {
    let run = |crash_after: Option<u64>, seed: u64| -> (bool, u64) {
        let dir = scratch_dir();
        let data = dir.path().join("data");
        let fs = FaultyFs::new(dir.path(), seed).unwrap();
        let clock = ManualClock::new(START_MS);
        let store = Store::open(&data, options(&fs, &clock)).unwrap();
        let before = fs.ops();
        if let Some(at) = crash_after {
            fs.power_off_after(at);
        }
        let created = store
            .create_topic_owned(
                "t",
                3,
                topic_config(FsyncPolicy::Always, 1 << 30),
                Some("alice"),
            )
            .map(|topic| (topic.owner().map(str::to_string), topic.id()));
        let ops = fs.ops() - before;
        let powered_off = fs.is_powered_off();
        let context = format!("seed {seed}, crash after op {crash_after:?}: {created:?}");
        if !powered_off {
            assert_eq!(
                created.as_ref().ok().map(|(owner, _)| owner),
                Some(&Some("alice".into())),
                "{context}"
            );
        }
        store.simulate_crash();
        fs.crash(if seed.is_multiple_of(2) {
            CrashOptions::lose_unsynced()
        } else {
            CrashOptions::keep_some(seed)
        })
        .unwrap();
        let store = reopen(&fs, &data, &clock, &context);
        match store.topic("t") {
            Ok(topic) => {
                assert_eq!(topic.owner(), Some("alice"), "{context}");
                assert_eq!(topic.partitions().len(), 3, "{context}");
                // A creation that was acknowledged keeps the id it answered with.
                if let Ok((_, id)) = &created {
                    assert_eq!(topic.id(), *id, "{context}");
                }
                assert_eq!(id_on_disk(&data), Some(topic.id()), "{context}");
            }
            Err(error) => {
                assert!(
                    created.is_err(),
                    "{context}: an acknowledged creation was taken back: {error}"
                );
                // Creating it again works and records the owner.
                let topic = store
                    .create_topic_owned("t", 3, TopicConfig::default(), Some("alice"))
                    .unwrap_or_else(|e| panic!("{context}: again: {e}"));
                assert_eq!(topic.owner(), Some("alice"));
            }
        }
        store.close().unwrap();
        (powered_off, ops)
    };
    let (powered_off, total) = run(None, 0);
    assert!(!powered_off);
    assert!(total > 5, "create_topic_owned did only {total} operations");
    for seed in 0..2 {
        for at in 0..total {
            run(Some(at), seed);
        }
    }
}

/// Bug hunt 5 (2026-12-07): tidelogd could not start on a full disk once a sealed
/// segment's index had to be written at recovery (its write while running had failed
/// for room): `Store::open` failed with ENOSPC, so nothing was readable and no topic
/// could be deleted through the broker to free space. The index is derived data: the
/// open goes on without it (the segment's state is in memory), reads are whole, and
/// the next open with room writes it.
#[test]
fn a_store_opens_on_a_full_disk_without_the_index_it_could_not_write() {
    let Scene {
        dir: _dir,
        data,
        fs,
        clock,
        store,
        topic,
    } = scene(3, "t", 1, topic_config(FsyncPolicy::Always, 1 << 40));
    let part = topic.partition(0).unwrap().clone();
    let part_dir = data.join("topics").join("t").join("0");
    let mut rng = Rng::new(3);
    let mut values = BTreeMap::new();
    let mut end = 0;
    while part.info().segment_count < 4 {
        end = append_acked(&part, &mut rng, "v", 4, &mut values);
    }
    drop((topic, part));
    store.close().unwrap();
    drop(store);
    // Every sealed segment's index must be written again at the next open.
    let pdir = part_dir.clone();
    let mut removed = 0;
    for entry in std::fs::read_dir(&pdir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .extension()
            .is_some_and(|e| e == "index" || e == "timeindex")
        {
            tidelog_storage::fs::FileSystem::remove_file(&fs, &path).unwrap();
            removed += 1;
        }
    }
    assert!(removed >= 2, "{removed} index files in {}", pdir.display());
    fs.set_full_for(Some("index"));
    let store = Store::open(&data, options(&fs, &clock))
        .unwrap_or_else(|e| panic!("the store does not open on a full disk: {e}"));
    let part = store.topic("t").unwrap().partition(0).unwrap().clone();
    assert_holds(&part, &values, end, "opened without its indexes");
    drop(part);
    store.close().unwrap();
    drop(store);
    fs.set_full_for(None);
    let store = Store::open(&data, options(&fs, &clock)).unwrap();
    let part = store.topic("t").unwrap().partition(0).unwrap().clone();
    assert_holds(&part, &values, end, "opened with room");
    let indexes = std::fs::read_dir(&pdir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|e| e == "index")
        })
        .count();
    assert!(indexes >= 2, "the indexes are written once there is room");
}

// ---------------------------------------------------------------------------------
// 6. The record-features line of topic.config (the gate older builds refuse)
// ---------------------------------------------------------------------------------

/// Records appended to each partition of the topic an older build left.
const OLD_TOPIC_RECORDS: u64 = 7;

/// A data directory in `dir`/data with topic `t` (2 partitions, records in each) whose
/// `topic.config` is what a build before `record_features` wrote: the file this build
/// writes without that line. Returns the data path, that old text and the text this
/// build writes for the same config.
fn data_from_before_record_features(dir: &Path) -> (PathBuf, String, String) {
    let data = dir.join("data");
    let clock = ManualClock::new(START_MS);
    let store = Store::open(&data, options(&FaultyFs::new(dir, 0).unwrap(), &clock)).unwrap();
    let topic = store
        .create_topic("t", 2, topic_config(FsyncPolicy::Always, 1 << 30))
        .unwrap();
    for partition in topic.partitions() {
        let records: Vec<NewRecord> = (0..OLD_TOPIC_RECORDS)
            .map(|i| NewRecord::value(Bytes::from(format!("old {i}"))))
            .collect();
        partition.append_durable(&records).unwrap();
    }
    drop(topic);
    store.close().unwrap();
    let path = data.join("topics/t/topic.config");
    let new = std::fs::read_to_string(&path).unwrap();
    assert!(new.contains(&format!(
        "\nrecord_features={}\n",
        tidelog_storage::RECORD_FEATURES
    )));
    let old: String = new
        .lines()
        .filter(|line| !line.starts_with("record_features="))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&path, &old).unwrap();
    (data, old, new)
}

/// Topic `t` of [`data_from_before_record_features`] opened with all its records.
fn assert_old_topic_served(store: &Store, context: &str) {
    let topic = store
        .topic("t")
        .unwrap_or_else(|e| panic!("{context}: {e}"));
    assert_eq!(topic.partitions().len(), 2, "{context}");
    for partition in topic.partitions() {
        assert_eq!(
            partition.end_offset().unwrap(),
            OLD_TOPIC_RECORDS,
            "{context}"
        );
        let read = partition.read(0, 100, 1 << 20).unwrap();
        assert_eq!(read.records.len() as u64, OLD_TOPIC_RECORDS, "{context}");
    }
}

#[test]
fn a_topic_config_without_record_features_is_rewritten_with_them_on_open() {
    let dir = scratch_dir();
    let (data, old, new) = data_from_before_record_features(dir.path());
    let path = data.join("topics/t/topic.config");
    let clock = ManualClock::new(START_MS);
    let fs = FaultyFs::new(dir.path(), 0).unwrap();
    let store = Store::open(&data, options(&fs, &clock)).unwrap();
    assert_old_topic_served(&store, "after the upgrade");
    // Durably: a power cut right after the open keeps it.
    store.simulate_crash();
    fs.crash(CrashOptions::lose_unsynced()).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), new);
    assert_ne!(old, new);
    let store = Store::open(&data, options(&fs, &clock)).unwrap();
    assert_old_topic_served(&store, "after a power cut");
    store.close().unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), new);
}

#[test]
fn a_topic_config_stating_newer_record_features_refuses_the_store_as_newer_not_corrupt() {
    let dir = scratch_dir();
    let (data, _, new) = data_from_before_record_features(dir.path());
    let path = data.join("topics/t/topic.config");
    let newer = new.replace(
        &format!("record_features={}", tidelog_storage::RECORD_FEATURES),
        &format!("record_features={}", tidelog_storage::RECORD_FEATURES + 1),
    );
    // With a setting this build does not know as well: still "newer".
    for text in [newer.clone(), format!("{newer}a_newer_setting=1\n")] {
        std::fs::write(&path, &text).unwrap();
        let clock = ManualClock::new(START_MS);
        let fs = FaultyFs::new(dir.path(), 0).unwrap();
        let error = Store::open(&data, options(&fs, &clock)).unwrap_err();
        assert!(
            matches!(&error, Error::WrittenByNewer { file, .. } if *file == path),
            "{error}"
        );
        let message = error.to_string();
        assert!(
            message.contains("was written by a newer tidelogd")
                && message.contains("upgrade to read it")
                && !message.contains("corrupt"),
            "{message}"
        );
        // Left as it was, for the newer build.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}

/// The file-system operations one `Store::open` of the data directory `setup` makes
/// (in a scratch directory) takes: where a power cut at every step of an open stops.
fn ops_of_an_open(setup: impl FnOnce(&Path) -> PathBuf) -> u64 {
    let dir = scratch_dir();
    let data = setup(dir.path());
    let fs = FaultyFs::new(dir.path(), 0).unwrap();
    let store = Store::open(&data, options(&fs, &ManualClock::new(START_MS))).unwrap();
    let ops = fs.ops();
    store.close().unwrap();
    ops
}

#[test]
fn a_power_cut_at_every_step_of_the_record_features_rewrite_leaves_the_old_or_the_new_config() {
    let count_ops = ops_of_an_open(|dir| data_from_before_record_features(dir).0);
    let (mut saw_old, mut saw_new) = (false, false);
    for crash_at in 0..=count_ops {
        let dir = scratch_dir();
        let (data, old, new) = data_from_before_record_features(dir.path());
        let path = data.join("topics/t/topic.config");
        let clock = ManualClock::new(START_MS);
        let fs = FaultyFs::new(dir.path(), crash_at).unwrap();
        fs.power_off_after(crash_at);
        if let Ok(store) = Store::open(&data, options(&fs, &clock)) {
            store.simulate_crash();
        }
        let crash = if crash_at % 2 == 0 {
            CrashOptions::lose_unsynced()
        } else {
            CrashOptions::keep_some(crash_at)
        };
        fs.crash(crash).unwrap();
        let context = format!("power cut after op {crash_at} of {count_ops} ({crash:?})");
        let left = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{context}: no topic.config: {e}"));
        assert!(
            left == old || left == new,
            "{context}: topic.config is {left:?}"
        );
        saw_old |= left == old;
        saw_new |= left == new;
        let store = Store::open(&data, options(&fs, &clock))
            .unwrap_or_else(|e| panic!("{context}: reopening failed: {e}"));
        assert_old_topic_served(&store, &context);
        store.close().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), new, "{context}");
    }
    assert!(
        saw_old && saw_new,
        "the cuts fell before and after the rewrite"
    );
}

/// Opens the store at `data` with `fault` ("fsync": the first fsync of `file` fails;
/// "full disk": writes to it fail for room) while the open writes `file`: the open
/// fails with an I/O error naming it. Returns the file system with the process that
/// saw the fault gone (a failed fsync is never retried in it) and the disk healthy
/// again, for the next open.
fn open_fails_writing(
    dir: &Path,
    data: &Path,
    file: &str,
    fault: &str,
    clock: &Arc<ManualClock>,
) -> FaultyFs {
    let fs = FaultyFs::new(dir, 0).unwrap();
    match fault {
        "fsync" => fs.fail_sync(SyncFault::nth(1).path_contains(file)),
        _ => fs.set_full_for(Some(file)),
    }
    let error = Store::open(data, options(&fs, clock)).unwrap_err();
    assert!(
        matches!(&error, Error::Io { context, .. } if context.contains(file)),
        "{fault}: {error}"
    );
    fs.kill_process();
    fs.set_full_for(None);
    fs
}

#[test]
fn a_failed_fsync_or_a_full_disk_during_the_record_features_rewrite_fails_the_open_and_keeps_the_old_config()
 {
    for fault in ["fsync", "full disk"] {
        let dir = scratch_dir();
        let (data, old, new) = data_from_before_record_features(dir.path());
        let path = data.join("topics/t/topic.config");
        let clock = ManualClock::new(START_MS);
        let fs = open_fails_writing(dir.path(), &data, "topic.config", fault, &clock);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), old, "{fault}");
        // Not retried in that process; the next open, on a healthy disk, upgrades it.
        let store = Store::open(&data, options(&fs, &clock)).unwrap();
        assert_old_topic_served(&store, fault);
        store.close().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), new, "{fault}");
    }
}

/// A data directory in `dir`/data with topic `t` as [`data_from_before_record_features`]
/// makes it, but without its `topic.id` file, as a build before topic ids left it.
/// Returns the data path.
fn data_from_before_topic_ids(dir: &Path) -> PathBuf {
    let (data, _, _) = data_from_before_record_features(dir);
    std::fs::remove_file(data.join("topics/t/topic.id")).unwrap();
    data
}

/// The id in topic `t`'s `topic.id` file, if the file is there.
fn id_on_disk(data: &Path) -> Option<TopicId> {
    let bytes = std::fs::read(data.join("topics/t/topic.id")).ok()?;
    Some(TopicId::parse_file(&bytes).expect("topic.id holds an id"))
}

#[test]
fn a_topic_keeps_its_id_through_restarts_power_cuts_and_new_partitions_and_a_recreated_one_gets_another()
 {
    let dir = scratch_dir();
    let data = dir.path().join("data");
    let clock = ManualClock::new(START_MS);
    let fs = FaultyFs::new(dir.path(), 0).unwrap();
    let store = Store::open(&data, options(&fs, &clock)).unwrap();
    let id = store
        .create_topic("t", 1, TopicConfig::default())
        .unwrap()
        .id();
    assert_eq!(id_on_disk(&data), Some(id));
    let grown = store.create_partitions("t", 3).unwrap();
    assert_eq!(grown.id(), id);
    assert!(grown.partitions().iter().all(|p| p.topic_id() == id));
    store.simulate_crash();
    fs.crash(CrashOptions::lose_unsynced()).unwrap();
    let store = reopen(&fs, &data, &clock, "after a power cut");
    let topic = store.topic("t").unwrap();
    assert_eq!(topic.id(), id);
    assert!(topic.partitions().iter().all(|p| p.topic_id() == id));
    drop(topic);
    store.delete_topic("t").unwrap();
    let again = store
        .create_topic("t", 3, TopicConfig::default())
        .unwrap()
        .id();
    assert_ne!(
        again, id,
        "a topic created again under the name is another topic"
    );
    assert_eq!(id_on_disk(&data), Some(again));
    store.close().unwrap();
}

#[test]
fn a_topic_from_before_ids_gets_one_at_its_first_open_that_stays() {
    let dir = scratch_dir();
    let data = data_from_before_topic_ids(dir.path());
    let clock = ManualClock::new(START_MS);
    let fs = FaultyFs::new(dir.path(), 0).unwrap();
    let store = Store::open(&data, options(&fs, &clock)).unwrap();
    assert_old_topic_served(&store, "after the upgrade");
    let id = store.topic("t").unwrap().id();
    // Durably, before it was served: a power cut right after the open keeps it.
    store.simulate_crash();
    fs.crash(CrashOptions::lose_unsynced()).unwrap();
    assert_eq!(id_on_disk(&data), Some(id));
    let store = reopen(&fs, &data, &clock, "after a power cut");
    assert_eq!(store.topic("t").unwrap().id(), id);
    store.close().unwrap();
}

#[test]
fn a_power_cut_at_every_step_of_giving_an_old_topic_its_id_leaves_none_or_the_one_served() {
    let count_ops = ops_of_an_open(data_from_before_topic_ids);
    let (mut saw_none, mut saw_served) = (false, false);
    for crash_at in 0..=count_ops {
        let dir = scratch_dir();
        let data = data_from_before_topic_ids(dir.path());
        let clock = ManualClock::new(START_MS);
        let fs = FaultyFs::new(dir.path(), crash_at).unwrap();
        fs.power_off_after(crash_at);
        let served = match Store::open(&data, options(&fs, &clock)) {
            Ok(store) => {
                let id = store.topic("t").ok().map(|t| t.id());
                store.simulate_crash();
                id
            }
            Err(_) => None,
        };
        let crash = if crash_at % 2 == 0 {
            CrashOptions::lose_unsynced()
        } else {
            CrashOptions::keep_some(crash_at)
        };
        fs.crash(crash).unwrap();
        let context = format!("power cut after op {crash_at} of {count_ops} ({crash:?})");
        let left = id_on_disk(&data);
        if let Some(served) = served {
            assert_eq!(left, Some(served), "{context}: the id served was lost");
        }
        saw_none |= left.is_none();
        saw_served |= served.is_some();
        let store = Store::open(&data, options(&fs, &clock))
            .unwrap_or_else(|e| panic!("{context}: reopening failed: {e}"));
        assert_old_topic_served(&store, &context);
        let id = store.topic("t").unwrap().id();
        if let Some(left) = left {
            assert_eq!(id, left, "{context}");
        }
        store.close().unwrap();
        assert_eq!(id_on_disk(&data), Some(id), "{context}");
    }
    assert!(
        saw_none && saw_served,
        "the cuts fell before and after the write"
    );
}

#[test]
fn a_failed_fsync_or_a_full_disk_while_giving_an_old_topic_its_id_fails_the_open() {
    for fault in ["fsync", "full disk"] {
        let dir = scratch_dir();
        let data = data_from_before_topic_ids(dir.path());
        let clock = ManualClock::new(START_MS);
        let fs = open_fails_writing(dir.path(), &data, "topic.id", fault, &clock);
        assert_eq!(id_on_disk(&data), None, "{fault}");
        // Not retried in that process; the next open, on a healthy disk, gives one.
        let store = Store::open(&data, options(&fs, &clock)).unwrap();
        assert_old_topic_served(&store, fault);
        let id = store.topic("t").unwrap().id();
        store.close().unwrap();
        assert_eq!(id_on_disk(&data), Some(id), "{fault}");
    }
}

#[test]
fn a_damaged_topic_id_file_refuses_the_store_naming_it() {
    for damage in [&b""[..], b"not an id", b"0000000000000000", b"\x00\x01"] {
        let dir = scratch_dir();
        let (data, _, _) = data_from_before_record_features(dir.path());
        let path = data.join("topics/t/topic.id");
        std::fs::write(&path, damage).unwrap();
        let clock = ManualClock::new(START_MS);
        let fs = FaultyFs::new(dir.path(), 0).unwrap();
        let error = Store::open(&data, options(&fs, &clock)).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(&error, Error::Corrupt { .. })
                && message.contains("topic.id")
                && message.contains("remove it"),
            "{damage:?}: {message}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), damage, "left as it was");
    }
}

/// Rolls as fast as appends go while the disk holds every fsync (the flusher is stuck
/// in one): the sealed segments waiting for their fsync, each holding its file open,
/// never pass the bound, because the roll past it syncs the oldest itself and that
/// partition's appender waits. Once the disk lets go, everything lands; a durable
/// append then survives a power cut with everything before it. With `fail`, the
/// held fsync fails instead: the partition is poisoned, as a failed fsync always does.
fn rolls_under_a_stalled_flush(fail: bool) {
    let context = format!("rolls under a stalled flush (fsync fails: {fail})");
    let Scene {
        dir: _dir,
        data,
        fs,
        clock,
        store,
        topic,
    } = scene(11, "t", 1, topic_config(FsyncPolicy::Never, 1 << 30));
    let part = topic.partition(0).unwrap().clone();
    let bound = tidelog_storage::partition::SEALED_BACKLOG_MAX;
    /// Lets the syncs go however the test ends: the store's close waits for its
    /// flusher.
    struct Release(FaultyFs);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.hold_syncs(false);
        }
    }
    let release = Release(fs.clone());
    fs.hold_syncs(true);
    const APPENDS: u64 = 120;
    let done = std::sync::atomic::AtomicU64::new(0);
    let (max_backlog, results) = std::thread::scope(|scope| {
        let appender = scope.spawn(|| {
            let mut rng = Rng::new(7);
            let mut results = Vec::new();
            for n in 0..APPENDS {
                // About 2 KiB: a 4 KiB segment rolls every other append.
                let mut records = batch(&mut rng, &format!("a/{n}"), 1);
                records[0].value = Bytes::from(format!("a/{n}/{}", "x".repeat(2000)));
                let result = part.append(&records).map(|a| (a, records));
                let failed = result.is_err();
                results.push(result);
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if failed {
                    break;
                }
            }
            results
        });
        let mut max_backlog = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        while std::time::Instant::now() < deadline {
            max_backlog = max_backlog.max(part.sealed_backlog());
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let blocked_at = done.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            blocked_at < APPENDS,
            "{context}: the appender rolled {blocked_at} of {APPENDS} times while no fsync could finish: nothing held it back"
        );
        if fail {
            fs.fail_sync(SyncFault::nth(1).kinds(&[SyncKind::Data]));
        }
        drop(release);
        let results = appender.join().unwrap();
        (max_backlog.max(part.sealed_backlog()), results)
    });
    assert!(
        max_backlog <= bound,
        "{context}: {max_backlog} sealed segments waited for their fsync, over the bound of {bound}"
    );
    if fail {
        assert_eq!(
            fs.stats().failed_syncs,
            1,
            "{context}: the fault did not fire"
        );
        let refused = part
            .append(&batch(&mut Rng::new(1), "refused", 1))
            .unwrap_err();
        assert!(
            matches!(refused, Error::Poisoned { .. }),
            "{context}: {refused}"
        );
        drop((topic, part));
        store.simulate_crash();
        return;
    }
    let mut values = BTreeMap::new();
    for result in results {
        let (appended, records) = result.unwrap_or_else(|e| panic!("{context}: {e}"));
        note_values(&mut values, appended.base_offset, &records);
    }
    assert!(part.info().segment_count > 50, "{context}: too few rolls");
    let mut rng = Rng::new(8);
    let acked_end = append_acked(&part, &mut rng, "durable", 1, &mut values);
    assert!(part.info().poisoned.is_none(), "{context}");
    drop((topic, part));
    store.simulate_crash();
    check_after_restart(
        &fs,
        &data,
        &clock,
        Restart::PowerCut,
        &values,
        acked_end,
        &context,
    );
}

#[test]
fn rolling_faster_than_the_flusher_syncs_keeps_the_sealed_backlog_bounded() {
    rolls_under_a_stalled_flush(false);
}

#[test]
fn a_failed_fsync_of_a_segment_the_roll_syncs_itself_poisons_the_partition() {
    rolls_under_a_stalled_flush(true);
}

fn is_out_of_fds(error: &Error) -> bool {
    matches!(error, Error::Io { source, .. } if source.raw_os_error() == Some(24))
}

/// Out of file descriptors when a flush opens the partition directory to fsync it
/// (EMFILE): no fsync ran, so the partition is not poisoned. The durable waits that
/// flush was for fail with the error, as appends do on a full disk; once descriptors
/// are back, the retried flush makes everything durable, publishing goes on, and all
/// that was acknowledged survives a power cut. Retention's directory fsync the same.
#[test]
fn a_directory_that_cannot_be_opened_for_its_fsync_fails_the_flush_without_poisoning() {
    for restart in [Restart::ProcessThenPowerCut, Restart::PowerCut] {
        let context = format!("EMFILE opening the partition directory ({restart:?})");
        let Scene {
            dir: _dir,
            data,
            fs,
            clock,
            store,
            topic,
        } = scene(12, "t", 1, topic_config(FsyncPolicy::Always, 4096));
        let part = topic.partition(0).unwrap().clone();
        let mut rng = Rng::new(12);
        let mut values = BTreeMap::new();
        let mut acked_end = append_acked(&part, &mut rng, "before", 30, &mut values);
        assert!(part.info().segment_count > 3, "{context}: too few segments");
        fs.set_open_fails(Some("topics/t/0"));
        // Appends until one rolls: its flush syncs the directory, and fails opening it.
        let mut failure = None;
        for n in 0..40 {
            let records = batch(&mut rng, &format!("short/{n}"), 4);
            let appended = part
                .append(&records)
                .unwrap_or_else(|e| panic!("{context}: append {n}: {e}"));
            note_values(&mut values, appended.base_offset, &records);
            match part.wait_durable_blocking(appended.last_offset) {
                Ok(()) => acked_end = appended.last_offset + 1,
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        let error = failure.unwrap_or_else(|| panic!("{context}: no flush synced the directory"));
        assert!(is_out_of_fds(&error), "{context}: {error}");
        assert!(
            error.to_string().contains("opening directory"),
            "{context}: {error}"
        );
        assert!(fs.open_failures() > 0, "{context}");
        assert_eq!(fs.stats().failed_syncs, 0, "{context}");
        assert!(part.info().poisoned.is_none(), "{context}: poisoned");
        // Retention's directory fsync meets it too: the deletion stands, no poison.
        let outcome = part.enforce_retention().unwrap();
        assert!(outcome.segments_deleted > 0, "{context}: nothing deleted");
        assert!(part.info().poisoned.is_none(), "{context}: poisoned");

        fs.set_open_fails(None);
        // The retry makes what the failed flush covered durable without a new append.
        let pending = part.info().written_offset;
        let waited = std::time::Instant::now();
        while part.info().durable_offset < pending {
            assert!(
                waited.elapsed() < std::time::Duration::from_secs(10),
                "{context}: the failed flush was not tried again"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        acked_end = acked_end.max(pending);
        acked_end = acked_end.max(append_acked(&part, &mut rng, "after", 3, &mut values));
        assert!(part.info().poisoned.is_none(), "{context}");
        drop((topic, part));
        store.close().unwrap();
        drop(store);
        check_after_restart(&fs, &data, &clock, restart, &values, acked_end, &context);
    }
}
