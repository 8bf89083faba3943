//! Criterion micro-benchmarks of the storage engine.
//!
//! `cargo bench -p tidelog-benches --bench storage -- --quick --noplot`
//! The append matrix is 100 B and 1 KiB records, batches of 1/100/1000, each fsync
//! policy, 1/4/16 appenders; set TIDELOG_BENCH_FULL=1 for the whole matrix (the
//! default runs the corners that matter: it takes minutes, not an hour). The `wire`
//! group times a published batch's check and a returned batch's in-place read, per
//! record (`-- --noplot wire` runs it alone).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tidelog_benches::{WIRE_NOW_MS, records, run_appenders, store_with_topic, wire_batch};
use tidelog_storage::{FsyncPolicy, client_batch};

fn append(c: &mut Criterion) {
    let full = std::env::var_os("TIDELOG_BENCH_FULL").is_some();
    let mut group = c.benchmark_group("append");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_millis(500));
    let policies = [
        ("always", FsyncPolicy::Always),
        ("interval10ms", FsyncPolicy::IntervalMs(10)),
        ("never", FsyncPolicy::Never),
    ];
    for (policy_name, policy) in policies {
        for size in [100usize, 1024] {
            for batch in [1usize, 100, 1000] {
                for threads in [1usize, 4, 16] {
                    let corner = (size == 100 && batch == 1000)
                        || (threads == 16 && policy == FsyncPolicy::Always);
                    if !full && !corner {
                        continue;
                    }
                    let dir = tempfile::tempdir().expect("tempdir");
                    let (_store, partition) = store_with_topic(dir.path(), policy);
                    let batch_records = records(batch, size);
                    let durable = policy == FsyncPolicy::Always;
                    group.throughput(Throughput::Elements((batch * threads) as u64));
                    let id = BenchmarkId::new(
                        format!("{policy_name}/{size}B"),
                        format!("batch{batch}/threads{threads}"),
                    );
                    group.bench_function(id, |b| {
                        b.iter_custom(|iterations| {
                            run_appenders(
                                &partition,
                                &batch_records,
                                threads,
                                iterations as usize,
                                durable,
                            )
                        })
                    });
                }
            }
        }
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, partition) = store_with_topic(dir.path(), FsyncPolicy::Never);
    let batch = records(1000, 100);
    for _ in 0..200 {
        partition.append(&batch).expect("append");
    }
    let end = partition.end_offset().unwrap();
    let mut group = c.benchmark_group("read");
    group.sample_size(20);
    group.throughput(Throughput::Elements(end));
    group.bench_function("sequential_100B_page_cache", |b| {
        b.iter(|| {
            let mut next = 0;
            while next < end {
                let result = partition.read(next, 10_000, 4 << 20).expect("read");
                next = result.next_offset;
                black_box(result.records.len());
            }
        })
    });
    group.throughput(Throughput::Elements(1));
    let mut probe = 0u64;
    group.bench_function("offset_lookup_single_record", |b| {
        b.iter(|| {
            probe = (probe + 7919) % end;
            black_box(
                partition
                    .read(probe, 1, u64::MAX)
                    .expect("read")
                    .records
                    .len(),
            )
        })
    });
    // Records carry their append time; look up the one in the middle of the log.
    let middle = partition.read(end / 2, 1, u64::MAX).expect("read").records[0].timestamp_ms;
    group.bench_function("timestamp_lookup", |b| {
        b.iter(|| black_box(partition.offset_for_timestamp(middle).expect("lookup")))
    });
    group.finish();
}

/// The broker's check of a published batch (`client_batch::validate_batch`) and a
/// consumer's walk of a returned one (`open_returned` + `for_each_delivered_view`), per
/// record: 1,000 records of 100 B, timestamps a few ms apart, with and without 16-byte
/// ids that count up.
fn wire(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");
    group.sample_size(30);
    group.throughput(Throughput::Elements(1000));
    let now_ms = WIRE_NOW_MS;
    for ids in [false, true] {
        let (bytes, rules) = wire_batch(ids);
        let name = if ids { "ids" } else { "plain" };
        group.bench_function(format!("validate_batch_100B/{name}"), |b| {
            b.iter(|| black_box(client_batch::validate_batch(&bytes, &rules).expect("valid")))
        });
        group.bench_function(format!("read_views_100B/{name}"), |b| {
            b.iter(|| {
                let (header, mut iter) = client_batch::open_returned(&bytes).expect("open");
                let mut sum = 0usize;
                client_batch::for_each_delivered_view(
                    &mut iter,
                    header.base_offset,
                    0,
                    &[],
                    now_ms,
                    |_, view| {
                        sum += view.payload_bytes as usize;
                        Ok(())
                    },
                )
                .expect("walk");
                black_box(sum)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, append, read, wire);
criterion_main!(benches);
