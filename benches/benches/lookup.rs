//! Lookup by message id: `Partition::find_by_id` over 10,000,000 messages in 40
//! segments (39 sealed, with their `.idindex` files, and the active one), as a broker
//! has them after a restart. Target: p99 <= 5 ms.
//!
//! `cargo bench -p tidelog-benches --bench lookup -- --noplot`
//!
//! Criterion measures the mean of a hit (an id anywhere in the log) and of a miss (an
//! id no message has: every segment is searched). Then the bench prints percentiles
//! from individually timed lookups, and the first lookup after the restart (which maps
//! and validates every id index). `TIDELOG_LOOKUP_MESSAGES` and
//! `TIDELOG_LOOKUP_SEGMENTS` change the size; `TIDELOG_BENCH_DIR` where it is built
//! (default /dev/shm when present: the log is ~750 MB and the build then takes
//! seconds, not a minute; lookups read from the page cache either way).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::Criterion;
use tidelog_benches::{IdLookupFixture, id_lookup_fixture, lookup_id, quantile};
use tidelog_storage::rng::SeededRng;

const VALUE_BYTES: usize = 48;
const TIMED_LOOKUPS: usize = 20_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TIDELOG_BENCH_DIR") {
        return dir.into();
    }
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

fn hit(fixture: &IdLookupFixture, n: u64) {
    let record = fixture
        .partition
        .find_by_id(&lookup_id(n))
        .expect("lookup")
        .expect("found");
    assert_eq!(record.offset, n);
}

fn miss(fixture: &IdLookupFixture, n: u64) {
    let id = format!("no-such-id-{n}");
    assert!(
        fixture
            .partition
            .find_by_id(id.as_bytes())
            .expect("lookup")
            .is_none()
    );
}

/// `count` lookups of `lookup`, each timed, in microseconds, sorted.
fn timed(count: usize, mut lookup: impl FnMut(usize)) -> Vec<f64> {
    let mut micros: Vec<f64> = (0..count)
        .map(|i| {
            let started = Instant::now();
            lookup(i);
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    micros.sort_by(f64::total_cmp);
    micros
}

fn summary(name: &str, micros: &[f64]) -> String {
    format!(
        "{name}: p50 {:.1} us, p90 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us ({} lookups)",
        quantile(micros, 0.5),
        quantile(micros, 0.9),
        quantile(micros, 0.99),
        quantile(micros, 0.999),
        quantile(micros, 1.0),
        micros.len()
    )
}

fn main() {
    let messages = env_u64("TIDELOG_LOOKUP_MESSAGES", 10_000_000);
    let segments = env_u64("TIDELOG_LOOKUP_SEGMENTS", 40);
    let fixture = id_lookup_fixture(&bench_dir(), messages, segments, VALUE_BYTES);
    println!(
        "lookup by id: {} messages ({VALUE_BYTES}-byte values, 16-byte ids) in {} segments, {:.0} MiB of log, built in {:.1} s",
        fixture.messages,
        fixture.segments,
        fixture.log_bytes as f64 / (1 << 20) as f64,
        fixture.build.as_secs_f64()
    );
    // The first lookup after the restart maps and validates every id index.
    let started = Instant::now();
    hit(&fixture, 0);
    let first = started.elapsed();

    let mut rng = SeededRng::new(0x1D1D);
    let mut criterion = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(5));
    let mut group = criterion.benchmark_group("lookup_by_id");
    group.bench_function(
        format!(
            "hit_{}M_messages_{}_segments",
            messages / 1_000_000,
            segments
        ),
        |b| b.iter(|| hit(&fixture, rng.below(fixture.messages))),
    );
    group.bench_function(
        format!(
            "miss_{}M_messages_{}_segments",
            messages / 1_000_000,
            segments
        ),
        |b| b.iter(|| miss(&fixture, rng.below(u64::MAX))),
    );
    group.finish();
    criterion.final_summary();

    let hits = timed(TIMED_LOOKUPS, |_| {
        hit(&fixture, rng.below(fixture.messages))
    });
    let misses = timed(TIMED_LOOKUPS / 4, |i| miss(&fixture, i as u64));
    println!(
        "first lookup after the restart (maps and checks {} id indexes): {:.1} ms",
        fixture.segments - 1,
        first.as_secs_f64() * 1e3
    );
    println!("{}", summary("hit (random id)", &hits));
    println!("{}", summary("miss (every segment searched)", &misses));
    let p99_ms = quantile(&hits, 0.99).max(quantile(&misses, 0.99)) / 1e3;
    println!(
        "p99 {p99_ms:.3} ms against the 5 ms target: {}",
        if p99_ms <= 5.0 { "met" } else { "MISSED" }
    );
}
