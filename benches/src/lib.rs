//! Shared pieces of tidelog's benchmarks: workloads and the disk-ceiling probe, so
//! every figure is reported next to what the disk itself can do in the same sitting.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidelog_storage::{FsyncPolicy, NewRecord, Partition, Store, StoreOptions, TopicConfig};

/// The clock of [`wire_batch`]'s batches and rules.
pub const WIRE_NOW_MS: i64 = 1_700_000_000_000;

/// The `wire` workload: a published batch of 1,000 records of 100 B, timestamps a few
/// ms apart, with or without 16-byte ids that count up, and the rules the broker checks
/// it by (`client_batch::validate_batch`).
pub fn wire_batch(ids: bool) -> (Bytes, tidelog_storage::client_batch::BatchRules) {
    use tidelog_storage::batch::{Compression, EncodeOptions, encode_batch};
    let rules = tidelog_storage::client_batch::BatchRules {
        now_ms: WIRE_NOW_MS,
        max_message_bytes: 1 << 20,
        priority_levels: 1,
        expiry_required: false,
        relative_times: false,
    };
    let options = EncodeOptions {
        now_ms: WIRE_NOW_MS,
        default_ttl_ms: None,
        compression: Compression::None,
        max_message_bytes: 1 << 20,
        priority_levels: 1,
    };
    let mut batch = records(1000, 100);
    for (n, record) in batch.iter_mut().enumerate() {
        record.timestamp_ms = Some(WIRE_NOW_MS - 1000 + (n as i64 / 100));
        if ids {
            let mut id = [7u8; 16];
            id[8..].copy_from_slice(&(n as u64).to_be_bytes());
            record.id = Some(Bytes::copy_from_slice(&id));
        }
    }
    let bytes = Bytes::from(encode_batch(&batch, &options).expect("encode").bytes);
    (bytes, rules)
}

/// `count` records with values of `size` bytes (distinct, not compressible to nothing).
pub fn records(count: usize, size: usize) -> Vec<NewRecord> {
    let value: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let value = Bytes::from(value);
    (0..count)
        .map(|_| NewRecord::value(value.clone()))
        .collect()
}

/// A fresh store in `dir` with one single-partition topic `bench`.
pub fn store_with_topic(dir: &Path, fsync: FsyncPolicy) -> (Store, Arc<Partition>) {
    let store = Store::open(
        dir,
        StoreOptions {
            retention_interval: None,
            ..StoreOptions::default()
        },
    )
    .expect("open store");
    let config = TopicConfig {
        fsync,
        retention_ms: None,
        segment_ms: None,
        segment_bytes: 256 * 1024 * 1024,
        ..TopicConfig::default()
    };
    let topic = store
        .create_topic("bench", 1, config)
        .expect("create topic");
    let partition = topic.partition(0).expect("partition 0").clone();
    (store, partition)
}

/// `threads` appenders each appending `batches_each` batches, durable or not; returns
/// the wall time.
pub fn run_appenders(
    partition: &Arc<Partition>,
    batch: &[NewRecord],
    threads: usize,
    batches_each: usize,
    durable: bool,
) -> Duration {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for _ in 0..batches_each {
                    if durable {
                        partition.append_durable(batch).expect("durable append");
                    } else {
                        partition.append(batch).expect("append");
                    }
                }
            });
        }
    });
    started.elapsed()
}

/// The disk's own ceiling: sequential 1 MiB writes each followed by fdatasync, into a
/// growing file (what appending to a new segment does). Returns MiB/s.
pub fn disk_fdatasync_mib_per_s(dir: &Path, total_mib: usize) -> f64 {
    let path = dir.join("disk-ceiling.tmp");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .expect("create probe file");
    let block = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    for _ in 0..total_mib {
        file.write_all(&block).expect("write");
        file.sync_data().expect("fdatasync");
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    total_mib as f64 / seconds
}

/// Median fdatasync latency of small (4 KiB) appends, in milliseconds.
pub fn disk_fdatasync_latency_ms(dir: &Path, samples: usize) -> f64 {
    let path = dir.join("disk-latency.tmp");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .expect("create probe file");
    let block = vec![0x5au8; 4096];
    let mut latencies: Vec<f64> = (0..samples)
        .map(|_| {
            file.write_all(&block).expect("write");
            let started = Instant::now();
            file.sync_data().expect("fdatasync");
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    latencies.sort_by(f64::total_cmp);
    latencies[latencies.len() / 2]
}

/// Latencies in milliseconds of `samples` small (4 KiB) appends each followed by
/// fdatasync, sorted ascending (for percentiles).
pub fn disk_fdatasync_latencies_ms(dir: &Path, samples: usize) -> Vec<f64> {
    let path = dir.join("disk-latencies.tmp");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .expect("create probe file");
    let block = vec![0x5au8; 4096];
    let mut latencies: Vec<f64> = (0..samples.max(1))
        .map(|_| {
            file.write_all(&block).expect("write");
            let started = Instant::now();
            file.sync_data().expect("fdatasync");
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    latencies.sort_by(f64::total_cmp);
    latencies
}

/// The id of message `n` in the lookup-by-id benchmark: 16 bytes, the length of a
/// broker-assigned id.
pub fn lookup_id(n: u64) -> Bytes {
    Bytes::from(format!("id-{n:013}"))
}

/// A store whose single partition holds `messages` messages with ids
/// ([`lookup_id`]`(offset)`) and `value_bytes`-byte values in `segments` segments (the
/// last one active), closed cleanly and opened again as a restarted broker has it.
pub struct IdLookupFixture {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub partition: Arc<Partition>,
    pub messages: u64,
    pub segments: u32,
    pub log_bytes: u64,
    /// Writing the log (appends, seals with their id indexes, the close).
    pub build: Duration,
}

/// Builds an [`IdLookupFixture`] under `parent` (a tmpfs keeps the build fast; the
/// files are in the page cache either way).
pub fn id_lookup_fixture(
    parent: &Path,
    messages: u64,
    segments: u64,
    value_bytes: usize,
) -> IdLookupFixture {
    const BATCH: u64 = 1000;
    let value = Bytes::from(vec![b'v'; value_bytes]);
    let batch_of = |first: u64| -> Vec<NewRecord> {
        (first..first + BATCH)
            .map(|n| NewRecord {
                id: Some(lookup_id(n)),
                ..NewRecord::value(value.clone())
            })
            .collect()
    };
    let options = tidelog_storage::batch::EncodeOptions {
        now_ms: 0,
        default_ttl_ms: None,
        compression: tidelog_storage::Compression::None,
        max_message_bytes: 1 << 20,
        priority_levels: 0,
    };
    let batch_bytes = tidelog_storage::batch::encode_batch(&batch_of(0), &options)
        .expect("encode")
        .bytes
        .len() as u64;
    let batches = messages.div_ceil(BATCH);
    let segment_bytes = batches.div_ceil(segments).max(1) * batch_bytes;
    let dir = tempfile::tempdir_in(parent).expect("tempdir");
    let open = || {
        Store::open(
            dir.path(),
            StoreOptions {
                retention_interval: None,
                ..StoreOptions::default()
            },
        )
        .expect("open store")
    };
    let started = Instant::now();
    {
        let store = open();
        let config = TopicConfig {
            fsync: FsyncPolicy::Never,
            retention_ms: None,
            segment_ms: None,
            segment_bytes: segment_bytes.max(tidelog_storage::limits::SEGMENT_BYTES_MIN),
            ..TopicConfig::default()
        };
        let topic = store.create_topic("ids", 1, config).expect("create topic");
        let partition = topic.partition(0).expect("partition 0").clone();
        for batch in 0..batches {
            partition.append(&batch_of(batch * BATCH)).expect("append");
        }
        drop((topic, partition));
        store.close().expect("close");
    }
    let build = started.elapsed();
    let store = open();
    let partition = store
        .topic("ids")
        .expect("topic")
        .partition(0)
        .expect("partition 0")
        .clone();
    let info = partition.info();
    IdLookupFixture {
        messages: batches * BATCH,
        segments: info.segment_count,
        log_bytes: info.size_bytes,
        dir,
        store,
        partition,
        build,
    }
}

/// The value at quantile `q` (0..=1) of ascending `sorted` values (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Bytes of all regular files under `path` (their lengths), 0 if it is missing.
pub fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// CPU time (user + system) of process `pid` so far, in seconds; `None` without
/// procfs or once it exited.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    tidelog_storage::procstat::cpu_seconds(Some(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), 50.0);
        assert_eq!(quantile(&values, 0.99), 99.0);
        assert_eq!(quantile(&values, 1.0), 100.0);
        assert_eq!(quantile(&values, 0.0), 1.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn directory_sizes_add_up_recursively() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 10]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), [0u8; 5]).unwrap();
        assert_eq!(dir_bytes(dir.path()), 15);
        assert_eq!(dir_bytes(&dir.path().join("missing")), 0);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        let cpu = process_cpu_seconds(std::process::id());
        assert!(cpu.is_none_or(|s| s >= 0.0));
    }
}
