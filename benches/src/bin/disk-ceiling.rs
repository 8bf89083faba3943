//! Measures this disk's own ceiling: sequential 1 MiB writes each followed by
//! fdatasync, and the median latency of a small fdatasync.
//!
//! `cargo run --release -p tidelog-benches --bin disk-ceiling -- [DIR] [MIB]`

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| ".".into());
    let mib: usize = args.next().and_then(|m| m.parse().ok()).unwrap_or(256);
    let dir = std::path::Path::new(&dir);
    let bandwidth = tidelog_benches::disk_fdatasync_mib_per_s(dir, mib);
    let latency = tidelog_benches::disk_fdatasync_latency_ms(dir, 200);
    println!("sequential 1 MiB write + fdatasync: {bandwidth:.1} MiB/s ({mib} MiB)");
    println!("4 KiB write + fdatasync median latency: {latency:.2} ms");
}
