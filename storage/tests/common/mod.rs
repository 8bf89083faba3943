//! Helpers several storage integration tests share (each test file is its own crate:
//! `mod common;` and use what it needs).
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use tidelog_storage::fs::{CrashOptions, FaultyFs};
use tidelog_storage::{ManualClock, Store, StoreOptions};

/// A store in `data` on `fs`, on `clock`, with one flush thread and no background
/// retention (tests drive both).
pub fn faulty_store(fs: &FaultyFs, data: &Path, clock: &Arc<ManualClock>) -> Arc<Store> {
    Arc::new(
        Store::open(
            data,
            StoreOptions {
                fs: Arc::new(fs.clone()),
                ..options(clock)
            },
        )
        .expect("opening the store"),
    )
}

/// [`faulty_store`] on the real file system.
pub fn plain_store(dir: &Path, clock: &Arc<ManualClock>) -> Arc<Store> {
    Arc::new(Store::open(dir, options(clock)).expect("opening the store"))
}

fn options(clock: &Arc<ManualClock>) -> StoreOptions {
    StoreOptions {
        clock: clock.clone(),
        flush_threads: 1,
        retention_interval: None,
        flush_observer: None,
        ..StoreOptions::default()
    }
}

/// The power goes off under `store` (whatever held it, an engine, must be dropped
/// first): the disk keeps what `crash` says, and the store in `data` is opened again,
/// so recovery runs.
pub fn power_cut(
    store: Arc<Store>,
    fs: &FaultyFs,
    data: &Path,
    clock: &Arc<ManualClock>,
    crash: CrashOptions,
) -> Arc<Store> {
    let store = Arc::try_unwrap(store).expect("the engine is gone");
    store.simulate_crash();
    fs.crash(crash).unwrap();
    faulty_store(fs, data, clock)
}

/// Creates queue `work` on topic `jobs` from the earliest message, with the defaults.
pub fn work_queue(store: &Store) {
    tidelog_storage::queue::admin::create_queue(
        store,
        "work",
        "jobs",
        tidelog_storage::queue::StartAt::Earliest,
        tidelog_storage::queue::QueueConfig::defaults_for("jobs"),
    )
    .unwrap();
}
