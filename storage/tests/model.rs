//! The log against a plain in-memory model: random appends (durable and not), reads,
//! clean reopens, simulated crashes (a killed process, and a machine crash that loses
//! everything not fsynced and may tear the last write), and retention, from seeds.
//! `TIDELOG_MODEL_SEEDS=N` runs more seeds.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tidelog_storage::segment::{self, LOG_SUFFIX, SegmentState};
use tidelog_storage::{
    FsyncPolicy, ManualClock, NewRecord, OsFs, Partition, Store, StoreOptions, TopicConfig,
};

use tidelog_storage::rng::SeededRng as Rng;

struct Model {
    /// Every value at its offset; `None` below the log start.
    values: Vec<Bytes>,
    log_start: u64,
    /// Appends up to here were acknowledged durable.
    durable: u64,
}

fn open(dir: &Path, clock: &Arc<ManualClock>) -> Store {
    Store::open(
        dir,
        StoreOptions {
            clock: clock.clone(),
            flush_threads: 2,
            retention_interval: None,
            flush_observer: None,
            ..StoreOptions::default()
        },
    )
    .expect("open store")
}

fn partition(store: &Store) -> Arc<Partition> {
    store.topic("m").unwrap().partition(0).unwrap().clone()
}

/// Cuts the partition's files back to the `durable` offset, as a machine crash may,
/// optionally leaving the start of the next batch behind as a torn write.
fn lose_unsynced_writes(partition_dir: &Path, durable: u64, torn_bytes: usize) {
    let mut bases: Vec<u64> = fs::read_dir(partition_dir)
        .unwrap()
        .filter_map(|e| {
            segment::parse_segment_name(&e.unwrap().file_name().to_string_lossy(), LOG_SUFFIX)
        })
        .collect();
    bases.sort_unstable();
    for base in bases {
        let path = segment::segment_path(partition_dir, base, LOG_SUFFIX);
        if base > durable {
            segment::remove_files(&OsFs, partition_dir, base).unwrap();
            continue;
        }
        let bytes = fs::read(&path).unwrap();
        // Find the first batch at or past `durable`.
        let mut state = SegmentState::new(base);
        let mut cut = bytes.len();
        let mut position = 0usize;
        while position < bytes.len() {
            let header = tidelog_storage::batch::BatchHeader::parse(&bytes[position..]).unwrap();
            if header.base_offset >= durable {
                cut = position;
                break;
            }
            state.observe(position as u64, &header);
            position += header.batch_length as usize;
        }
        if cut < bytes.len() {
            let keep = (cut + torn_bytes).min(bytes.len() - 1);
            fs::write(&path, &bytes[..keep]).unwrap();
        }
    }
}

fn check_reads(partition: &Partition, model: &Model, rng: &mut Rng) {
    let end = model.values.len() as u64;
    // Under fsync = always readers see only durable data: wait for the group commit.
    if end > 0 {
        assert!(partition.wait_for_data_blocking(end - 1, std::time::Duration::from_secs(10)));
    }
    assert_eq!(partition.log_start().unwrap(), model.log_start, "log start");
    assert_eq!(partition.end_offset().unwrap(), end, "end offset");
    if end == model.log_start {
        return;
    }
    let from = model.log_start + rng.below(end - model.log_start);
    let max = 1 + rng.below(40) as u32;
    let read = partition.read(from, max, 1 << 20).unwrap();
    assert!(!read.records.is_empty());
    for (i, record) in read.records.iter().enumerate() {
        assert_eq!(record.offset, from + i as u64);
        assert_eq!(
            record.value, model.values[record.offset as usize],
            "value at {}",
            record.offset
        );
    }
}

fn run(seed: u64) {
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let config = TopicConfig {
        segment_bytes: 4096 + rng.below(8192),
        retention_ms: None,
        segment_ms: None,
        fsync: FsyncPolicy::Always,
        ..TopicConfig::default()
    };
    let mut store = open(dir.path(), &clock);
    store.create_topic("m", 1, config.clone()).unwrap();
    let partition_dir = dir.path().join("topics/m/0");
    let mut model = Model {
        values: Vec::new(),
        log_start: 0,
        durable: 0,
    };
    for step in 0..80 {
        let p = partition(&store);
        match rng.below(100) {
            0..=54 => {
                let count = 1 + rng.below(30);
                let records: Vec<_> = (0..count)
                    .map(|_| {
                        let len = rng.below(300) as usize;
                        let byte = rng.below(256) as u8;
                        NewRecord::value(vec![byte; len])
                    })
                    .collect();
                let durable = rng.below(3) > 0;
                let appended = if durable {
                    p.append_durable(&records).unwrap()
                } else {
                    p.append(&records).unwrap()
                };
                assert_eq!(
                    appended.base_offset,
                    model.values.len() as u64,
                    "seed {seed} step {step}"
                );
                model.values.extend(records.into_iter().map(|r| r.value));
                if durable {
                    model.durable = model.values.len() as u64;
                }
            }
            55..=74 => check_reads(&p, &model, &mut rng),
            75..=81 => {
                store.close().unwrap();
                drop(store);
                store = open(dir.path(), &clock);
            }
            82..=91 => {
                // A machine crash: everything not durable is gone, maybe a torn write.
                drop(p);
                let p = partition(&store);
                store.simulate_crash();
                // Read after the flushers stopped: nothing moves it any more.
                let durable = p.info().durable_offset;
                assert!(
                    durable >= model.durable,
                    "an acknowledged durable append was not durable"
                );
                drop(p);
                let torn = if rng.below(2) == 0 {
                    0
                } else {
                    1 + rng.below(200) as usize
                };
                lose_unsynced_writes(&partition_dir, durable, torn);
                store = open(dir.path(), &clock);
                model.values.truncate(durable as usize);
                model.durable = durable;
            }
            _ => {
                let limit = 2048 + rng.below(8192);
                let altered = TopicConfig {
                    retention_bytes: Some(limit),
                    ..config.clone()
                };
                store.alter_topic("m", altered).unwrap();
                let outcome = p.enforce_retention().unwrap();
                assert!(outcome.log_start >= model.log_start);
                model.log_start = outcome.log_start;
                store.alter_topic("m", config.clone()).unwrap();
            }
        }
        check_reads(&partition(&store), &model, &mut rng);
    }
}

#[test]
fn log_matches_the_model_under_random_operations_and_crashes() {
    let seeds: u64 = std::env::var("TIDELOG_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    for seed in 0..seeds {
        run(seed);
    }
}
