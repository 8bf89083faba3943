//! Criterion benchmark of durable consumer-offset commits.
//!
//! `cargo bench -p tidelog-benches --bench offsets -- --noplot`
//!
//! Each iteration is one `OffsetStore::commit` of one entry, which returns once the
//! record holding it is fdatasynced. With 1 thread every commit pays one fdatasync; with
//! 8 threads committing at once, group commit lets one fdatasync cover the commits that
//! queued while the previous one ran, so commits/s should be several times higher. The
//! store lives under the system temporary directory: keep that on the disk you measure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tidelog_storage::{OffsetStore, OsFs, SystemClock};

/// Commits `iterations` offsets in total from `threads` threads, each to its own group,
/// and returns the wall time.
fn run_committers(store: &Arc<OffsetStore>, threads: usize, iterations: u64) -> Duration {
    let per_thread = iterations.div_ceil(threads as u64);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let store = Arc::clone(store);
            scope.spawn(move || {
                let group = format!("bench-group-{thread}");
                for i in 0..per_thread {
                    let entry = ("orders".to_string(), thread as u32, i, String::new());
                    store.commit(&group, &[entry]).expect("commit");
                }
            });
        }
    });
    started.elapsed()
}

fn commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("offsets/commit_durable");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(1));
    for threads in [1usize, 8] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(
            OffsetStore::open(
                Arc::new(OsFs),
                &dir.path().join("offsets"),
                Arc::new(SystemClock),
            )
            .expect("open"),
        );
        group.bench_function(BenchmarkId::new("threads", threads), |b| {
            b.iter_custom(|iterations| run_committers(&store, threads, iterations))
        });
    }
    group.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
