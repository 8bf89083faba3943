//! Switching a topic's fsync policy (`alter_topic`) never takes back what readers saw:
//! a switch to `always` keeps the written end visible and returns once it is durable,
//! at every step of it under a power cut, with an EIO on the fsync it makes and on a
//! full disk. (Readers of `always` topics see only durable data: the switch used to
//! move the visible end back to the durable one, and readers re-read everything.)

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::faulty_store;
use tidelog_storage::fs::{CrashOptions, FaultyFs, SyncFault, SyncKind};
use tidelog_storage::{
    Error, FsyncPolicy, ManualClock, NewRecord, Partition, Store, Topic, TopicConfig,
};

const START_MS: i64 = 1_700_000_000_000;

fn config(fsync: FsyncPolicy) -> TopicConfig {
    TopicConfig {
        retention_ms: None,
        fsync,
        ..TopicConfig::default()
    }
}

fn value(partition: u32, offset: u64) -> Vec<u8> {
    format!("p{partition}/{offset}").into_bytes()
}

/// Appends `count` records to `partition` one batch of 10 at a time (ack written).
fn fill(partition: &Arc<Partition>, count: u64) {
    let id = partition.id();
    let start = partition.info().written_offset;
    for first in (start..start + count).step_by(10) {
        let records: Vec<_> = (first..(first + 10).min(start + count))
            .map(|o| NewRecord::value(value(id, o)))
            .collect();
        partition.append(&records).unwrap();
    }
}

/// Reads `[from, end)` and checks every value is the one written there.
fn assert_reads(partition: &Partition, from: u64, end: u64, context: &str) {
    let mut offset = from;
    while offset < end {
        let read = partition
            .read(offset, 1000, 1 << 20)
            .unwrap_or_else(|e| panic!("{context}: reading at {offset}: {e}"));
        assert!(!read.records.is_empty(), "{context}: nothing at {offset}");
        for record in read.records {
            assert_eq!(record.offset, offset, "{context}");
            assert_eq!(
                record.value,
                value(partition.id(), offset),
                "{context}: offset {offset}"
            );
            offset += 1;
        }
    }
}

/// A store on `fs` with topic `t` (`never`, 2 partitions) holding 300 and 40 records
/// written, none fsynced (no segment rolled). Returns the store and the visible ends.
fn never_topic(fs: &FaultyFs, data: &Path, clock: &Arc<ManualClock>) -> (Arc<Store>, [u64; 2]) {
    let store = faulty_store(fs, data, clock);
    let topic = store
        .create_topic("t", 2, config(FsyncPolicy::Never))
        .unwrap();
    fill(topic.partition(0).unwrap(), 300);
    fill(topic.partition(1).unwrap(), 40);
    let ends = [0, 1].map(|p| topic.partition(p).unwrap().end_offset().unwrap());
    assert_eq!(ends, [300, 40]);
    let durable = topic.partition(0).unwrap().info().durable_offset;
    assert_eq!(
        durable, 0,
        "nothing is fsynced on a never topic before the switch"
    );
    (store, ends)
}

#[test]
fn switching_to_always_keeps_what_readers_saw_and_makes_it_durable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fs = FaultyFs::new(dir.path(), 1).unwrap();
    let clock = ManualClock::new(START_MS);
    let (store, ends) = never_topic(&fs, &data, &clock);
    let topic = store.alter_topic("t", config(FsyncPolicy::Always)).unwrap();
    assert_eq!(topic.config().fsync, FsyncPolicy::Always);
    for (p, end) in ends.into_iter().enumerate() {
        let partition = topic.partition(p as u32).unwrap();
        let info = partition.info();
        assert_eq!(
            (info.end_offset, info.written_offset, info.durable_offset),
            (end, end, end),
            "partition {p}: the visible end stays, and the switch made it durable"
        );
        // A reader at the end is not out of range.
        let at_end = partition.read(end, 10, 1 << 20).unwrap();
        assert!(at_end.records.is_empty());
        assert_reads(partition, 0, end, "after the switch");
    }
    // From now on new data shows once durable (and an append asks for that flush).
    let p0 = topic.partition(0).unwrap().clone();
    fill(&p0, 5);
    assert!(p0.wait_for_data_blocking(304, Duration::from_secs(10)));
    assert_eq!(p0.info().durable_offset, 305);
    // What the switch returned on survives a power cut.
    drop((topic, p0));
    let store = common::power_cut(store, &fs, &data, &clock, CrashOptions::lose_unsynced());
    let topic = store.topic("t").unwrap();
    assert_eq!(topic.config().fsync, FsyncPolicy::Always);
    assert_eq!(topic.partition(0).unwrap().end_offset().unwrap(), 305);
    assert_eq!(topic.partition(1).unwrap().end_offset().unwrap(), 40);
    assert_reads(topic.partition(0).unwrap(), 0, 305, "after the power cut");
}

/// The visible end never goes back while appends run and the policy goes back and
/// forth between `always`, `never` and `interval`; and once the appends stop it gets
/// to the written end by itself (an append that read the old policy still asks for
/// the flush the new one needs).
#[test]
fn the_visible_end_never_goes_back_across_policy_switches_under_appends() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = common::plain_store(dir.path(), &clock);
    let topic = store
        .create_topic("t", 1, config(FsyncPolicy::Never))
        .unwrap();
    let partition = topic.partition(0).unwrap().clone();
    let stop = AtomicBool::new(false);
    /// Stops the threads however its holder ends (a failed assertion too), so a
    /// failure fails the test instead of hanging it.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        let appender = scope.spawn(|| {
            let mut appended = 0;
            while !stop.load(Ordering::Relaxed) {
                fill(&partition, 10);
                appended += 10;
            }
            appended
        });
        let watcher = scope.spawn(|| {
            let _stop = StopOnDrop(&stop);
            let mut last = 0;
            let mut fetched_at_end = 0;
            while !stop.load(Ordering::Relaxed) {
                let end = partition.end_offset().unwrap();
                assert!(
                    end >= last,
                    "the visible end went back from {last} to {end}"
                );
                // A reader at the end it saw is never out of range.
                partition
                    .read(last, 1, 1 << 16)
                    .unwrap_or_else(|e| panic!("reading at {last}, seen visible: {e}"));
                fetched_at_end += 1;
                last = end;
            }
            fetched_at_end
        });
        let policies = [
            FsyncPolicy::Always,
            FsyncPolicy::Never,
            FsyncPolicy::Always,
            FsyncPolicy::IntervalMs(5),
            FsyncPolicy::Always,
        ];
        for round in 0..40 {
            let policy = policies[round % policies.len()];
            let before = partition.end_offset().unwrap();
            store.alter_topic("t", config(policy)).unwrap();
            let after = partition.end_offset().unwrap();
            assert!(
                after >= before,
                "{policy:?}: the end went from {before} to {after}"
            );
            if policy == FsyncPolicy::Always {
                // It returned once what readers saw at the switch was durable.
                assert!(partition.info().durable_offset >= before, "{policy:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(appender.join().unwrap() > 0);
        assert!(watcher.join().unwrap() > 0);
    });
    // The last switch was to `always`: everything written shows without a new append.
    let written = partition.info().written_offset;
    let deadline = Instant::now() + Duration::from_secs(10);
    while partition.end_offset().unwrap() < written {
        assert!(
            Instant::now() < deadline,
            "the end stays at {} below the written {written} with no append to flush it",
            partition.end_offset().unwrap()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(partition.info().durable_offset, written);
    assert_reads(&partition, 0, written, "after the switches");
}

/// The power goes off after every filesystem operation of the switch: recovery finds
/// the old policy or the new, the records in order, and if the switch returned, every
/// record readers saw before it.
#[test]
fn a_power_cut_at_every_step_of_the_switch_to_always_keeps_what_it_returned_on() {
    let run = |crash_after: Option<u64>, seed: u64| -> (bool, u64) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let fs = FaultyFs::new(dir.path(), seed).unwrap();
        let clock = ManualClock::new(START_MS);
        let (store, ends) = never_topic(&fs, &data, &clock);
        let before = fs.ops();
        if let Some(at) = crash_after {
            fs.power_off_after(at);
        }
        let switched = store
            .alter_topic("t", config(FsyncPolicy::Always))
            .map(|_| ());
        let ops = fs.ops() - before;
        let powered_off = fs.is_powered_off();
        let context = format!("seed {seed}, crash after op {crash_after:?}: {switched:?}");
        if !powered_off {
            switched
                .as_ref()
                .unwrap_or_else(|e| panic!("{context}: {e}"));
        }
        let crash = if seed.is_multiple_of(2) {
            CrashOptions::lose_unsynced()
        } else {
            CrashOptions::keep_some(seed)
        };
        let store = common::power_cut(store, &fs, &data, &clock, crash);
        let topic = store.topic("t").unwrap();
        let fsync = topic.config().fsync;
        assert!(
            fsync == FsyncPolicy::Always || fsync == FsyncPolicy::Never,
            "{context}: {fsync:?}"
        );
        for (p, seen) in ends.into_iter().enumerate() {
            let partition = topic.partition(p as u32).unwrap();
            let end = partition.end_offset().unwrap();
            if switched.is_ok() {
                assert_eq!(fsync, FsyncPolicy::Always, "{context}");
                assert_eq!(
                    end, seen,
                    "{context}: partition {p} showed {seen} records before the switch"
                );
            }
            assert!(end <= seen, "{context}");
            assert_reads(partition, 0, end, &context);
        }
        // The switch can be made again, and appends go on where the log ends.
        let topic = store.alter_topic("t", config(FsyncPolicy::Always)).unwrap();
        let p0 = topic.partition(0).unwrap().clone();
        let end = p0.end_offset().unwrap();
        let appended = p0
            .append_durable(&[NewRecord::value(value(0, end))])
            .unwrap();
        assert_eq!(appended.base_offset, end, "{context}");
        drop((topic, p0));
        Arc::try_unwrap(store).unwrap().close().unwrap();
        (powered_off, ops)
    };
    let (powered_off, total) = run(None, 0);
    assert!(!powered_off);
    // The config file's write, rename and fsyncs, then both partitions' flushes.
    assert!(total > 5, "the switch did only {total} operations");
    for seed in 0..2 {
        for at in 0..total {
            run(Some(at), seed);
        }
    }
}

fn is_disk_full(error: &Error) -> bool {
    matches!(error, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
}

/// An EIO on the fsync the switch makes poisons that partition, as any failed fsync
/// does: the switch fails saying so, the new policy is in effect, and what readers saw
/// stays visible (nothing can be synced before a restart; recovery then makes it
/// durable). The other partition switches as usual.
#[test]
fn an_eio_on_the_fsync_of_the_switch_poisons_the_partition_and_takes_nothing_back() {
    for kill_first in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let fs = FaultyFs::new(dir.path(), 3).unwrap();
        let clock = ManualClock::new(START_MS);
        let (store, ends) = never_topic(&fs, &data, &clock);
        fs.fail_sync(
            SyncFault::nth(1)
                .kinds(&[SyncKind::Data])
                .path_contains("/t/0/000"),
        );
        let error = store
            .alter_topic("t", config(FsyncPolicy::Always))
            .unwrap_err();
        assert_eq!(fs.stats().failed_syncs, 1, "the fault did not fire");
        assert!(
            matches!(&error, Error::Poisoned { partition, .. } if partition == "t/0"),
            "{error}"
        );
        let topic: Arc<Topic> = store.topic("t").unwrap();
        assert_eq!(topic.config().fsync, FsyncPolicy::Always);
        let p0 = topic.partition(0).unwrap().clone();
        assert!(p0.info().poisoned.is_some());
        assert_eq!(
            p0.end_offset().unwrap(),
            ends[0],
            "what readers saw stays visible"
        );
        assert_reads(&p0, 0, ends[0], "poisoned");
        assert!(matches!(
            p0.append(&[NewRecord::value("refused")]),
            Err(Error::Poisoned { .. })
        ));
        let p1 = topic.partition(1).unwrap().clone();
        assert_eq!(p1.info().durable_offset, ends[1]);
        // Switching again (to the policy in effect) does not fail on the old poison.
        store.alter_topic("t", config(FsyncPolicy::Always)).unwrap();
        drop((topic, p0, p1));
        let store = Arc::try_unwrap(store).unwrap();
        assert!(store.close().is_err(), "closing reports the poison");
        drop(store);
        if kill_first {
            // A process restart: the page cache holds everything; recovery fsyncs it
            // again, so a power cut after it keeps what it showed.
            fs.kill_process();
            let store = faulty_store(&fs, &data, &clock);
            let p0 = store.topic("t").unwrap().partition(0).unwrap().clone();
            assert_eq!(p0.end_offset().unwrap(), ends[0]);
            assert_reads(&p0, 0, ends[0], "after the restart");
            drop(p0);
            Arc::try_unwrap(store).unwrap().simulate_crash();
        }
        fs.crash(CrashOptions::lose_unsynced()).unwrap();
        let store = faulty_store(&fs, &data, &clock);
        let topic = store.topic("t").unwrap();
        let p0 = topic.partition(0).unwrap();
        let end = p0.end_offset().unwrap();
        if kill_first {
            assert_eq!(end, ends[0]);
        }
        assert_reads(p0, 0, end, "after the power cut");
        // Partition 1's switch returned durable.
        assert_eq!(topic.partition(1).unwrap().end_offset().unwrap(), ends[1]);
    }
}

/// A full disk fails the switch before anything changes (the config file cannot be
/// written): the old policy and visibility stay; once there is room it goes through.
#[test]
fn a_full_disk_fails_the_switch_before_it_changes_anything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fs = FaultyFs::new(dir.path(), 4).unwrap();
    let clock = ManualClock::new(START_MS);
    let (store, ends) = never_topic(&fs, &data, &clock);
    fs.set_disk_full(true);
    let error = store
        .alter_topic("t", config(FsyncPolicy::Always))
        .unwrap_err();
    assert!(is_disk_full(&error), "{error}");
    let topic = store.topic("t").unwrap();
    assert_eq!(topic.config().fsync, FsyncPolicy::Never);
    for (p, end) in ends.into_iter().enumerate() {
        let partition = topic.partition(p as u32).unwrap();
        assert_eq!(partition.end_offset().unwrap(), end);
        assert!(partition.info().poisoned.is_none());
    }
    fs.set_disk_full(false);
    store.alter_topic("t", config(FsyncPolicy::Always)).unwrap();
    for (p, end) in ends.into_iter().enumerate() {
        let info = topic.partition(p as u32).unwrap().info();
        assert_eq!((info.end_offset, info.durable_offset), (end, end));
    }
}
