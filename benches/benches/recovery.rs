//! Recovery time per GiB of log that the checkpoint does not cover.
//!
//! `cargo bench -p tidelog-benches --bench recovery -- --quick --noplot`
//! Writes a log under `fsync = never`, removes the checkpoint (as after a crash before
//! any checkpoint), and measures reopening, which must validate every batch.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tidelog_benches::{records, store_with_topic};
use tidelog_storage::{FsyncPolicy, Store, StoreOptions};

const LOG_MIB: u64 = 256;

fn recovery(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (store, partition) = store_with_topic(dir.path(), FsyncPolicy::Never);
        let batch = records(1000, 1024);
        while partition.info().size_bytes < LOG_MIB << 20 {
            partition.append(&batch).expect("append");
        }
        store.close().expect("close");
    }
    let checkpoint = dir.path().join("topics/bench/0/checkpoint");
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Bytes(LOG_MIB << 20));
    group.bench_function(format!("scan_{LOG_MIB}MiB_unscanned_tail"), |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                std::fs::remove_file(&checkpoint).expect("remove checkpoint");
                let options = StoreOptions {
                    retention_interval: None,
                    ..StoreOptions::default()
                };
                let started = Instant::now();
                let store = Store::open(dir.path(), options).expect("reopen");
                total += started.elapsed();
                drop(store);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, recovery);
criterion_main!(benches);
