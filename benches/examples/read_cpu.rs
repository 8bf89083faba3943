//! CPU time per message of sequential reads (criterion's `read/sequential_100B_page_cache`
//! workload: 200,000 100 B records, reads of up to 10,000), for A/B comparisons on a
//! busy machine where wall-clock rates swing: CPU time moves much less with load.
//!
//! `cargo run --release -p tidelog-benches --example read_cpu -- [ROUNDS]`
//! Build it at two commits and run them alternately; compare the lowest figures.

use std::hint::black_box;
use std::time::Instant;

use tidelog_benches::{records, store_with_topic};
use tidelog_storage::FsyncPolicy;
use tidelog_storage::procstat::cpu_seconds;

fn main() {
    let rounds: u64 = match std::env::args().nth(1) {
        None => 50,
        Some(arg) => match arg.parse() {
            Ok(rounds) if rounds > 0 => rounds,
            _ => {
                eprintln!("error: ROUNDS must be a positive number, not {arg:?}");
                std::process::exit(2);
            }
        },
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, partition) = store_with_topic(dir.path(), FsyncPolicy::Never);
    let batch = records(1000, 100);
    for _ in 0..200 {
        partition.append(&batch).expect("append");
    }
    let end = partition.end_offset().unwrap();
    let cpu_before = cpu_seconds(None).expect("procfs");
    let started = Instant::now();
    for _ in 0..rounds {
        let mut next = 0;
        while next < end {
            let result = partition.read(next, 10_000, 4 << 20).expect("read");
            next = result.next_offset;
            black_box(result.records.len());
        }
    }
    let messages = (rounds * end) as f64;
    let cpu = cpu_seconds(None).expect("procfs") - cpu_before;
    println!(
        "cpu {:.1} ns/msg  wall {:.1} ns/msg  ({messages} messages)",
        cpu * 1e9 / messages,
        started.elapsed().as_secs_f64() * 1e9 / messages
    );
}
