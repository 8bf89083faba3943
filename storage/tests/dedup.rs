//! The dedup window against a model: random publishes with ids drawn from a small pool
//! (so duplicates are common, inside one batch too), a clock moved by random steps
//! across the window, process kills (the window is read back from the log) and a
//! power cut after durable appends. A publish of an id stored within the window must
//! name the original and store nothing; one older than the window (plus the expiry
//! granularity) must be stored again. Concurrent duplicates: one stored, all acks
//! name it. `DEDUP_SEEDS=N` runs more seeds.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tidelog_storage::dedup::TIME_UNIT_MS;
use tidelog_storage::fs::CrashOptions;
use tidelog_storage::rng::SeededRng as Rng;
use tidelog_storage::{
    Clock, FaultyFs, FileSystem, FsyncPolicy, ManualClock, NewRecord, Placed, Placement, Store,
    StoreOptions, TopicConfig,
};

const START_MS: i64 = 1_700_000_000_000;
const WINDOW_MS: u64 = 60_000;
const PARTITIONS: u32 = 3;

fn options(clock: &Arc<ManualClock>, fs: Option<Arc<dyn FileSystem>>) -> StoreOptions {
    let mut options = StoreOptions {
        clock: clock.clone(),
        retention_interval: None,
        ..StoreOptions::default()
    };
    if let Some(fs) = fs {
        options.fs = fs;
    }
    options
}

fn config(fsync: FsyncPolicy) -> TopicConfig {
    TopicConfig {
        dedup_window_ms: Some(WINDOW_MS),
        // Small segments, so the window spans several and reads cross them.
        segment_bytes: 64 * 1024,
        fsync,
        ..TopicConfig::default()
    }
}

fn record(id: Option<&str>, value_bytes: usize) -> NewRecord {
    record_with(id.map(str::as_bytes), value_bytes)
}

fn record_with(id: Option<&[u8]>, value_bytes: usize) -> NewRecord {
    NewRecord {
        id: id.map(Bytes::copy_from_slice),
        ..NewRecord::value(vec![b'v'; value_bytes])
    }
}

/// A 16-byte id of the window's runs: an 8-byte prefix and a big-endian counter.
fn sequenced(prefix: u64, suffix: u64) -> Vec<u8> {
    [prefix.to_be_bytes(), suffix.to_be_bytes()].concat()
}

/// `records` as a client's batch, encoded at the clock's time, uncompressed.
fn encode(records: &[NewRecord], clock: &ManualClock) -> Bytes {
    use tidelog_storage::Compression;
    use tidelog_storage::batch::{EncodeOptions, encode_batch};
    let options = EncodeOptions {
        now_ms: clock.now_ms(),
        default_ttl_ms: None,
        compression: Compression::None,
        max_message_bytes: 1 << 20,
        priority_levels: 0,
    };
    Bytes::from(encode_batch(records, &options).unwrap().bytes)
}

/// The ids of one publish: from a small pool of names, or (half the time) rows of
/// sequenced ids from a small space (two prefixes, 48 suffixes), so that runs overlap
/// stored runs, claimed runs and single ids of the same prefix, in part or whole,
/// inside one publish too.
fn publish_ids(rng: &mut Rng) -> Vec<Option<Vec<u8>>> {
    if rng.below(2) == 0 {
        let count = 1 + rng.below(8) as usize;
        return (0..count)
            .map(|_| (rng.below(6) != 0).then(|| format!("id-{}", rng.below(30)).into_bytes()))
            .collect();
    }
    let mut ids = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let prefix = rng.below(2);
        let start = rng.below(48);
        let len = 1 + rng.below(14);
        for suffix in start..start + len {
            ids.push(Some(sequenced(prefix, suffix)));
            // Now and then a record without an id, or another id, breaks the row.
            match rng.below(40) {
                0 => ids.push(None),
                1 => ids.push(Some(format!("id-{}", rng.below(30)).into_bytes())),
                2 => ids.push(Some(sequenced(rng.below(2), rng.below(48)))),
                _ => {}
            }
        }
    }
    ids
}

fn placements(placed: Placed, partition: u32, count: usize) -> Vec<Placement> {
    match placed {
        Placed::All(appended) => (0..count)
            .map(|i| Placement {
                partition,
                offset: appended.base_offset + i as u64,
                duplicate: false,
                assigned_id: None,
            })
            .collect(),
        Placed::Each { placements, .. } => placements,
    }
}

/// Where each id was stored and when.
#[derive(Default)]
struct Model {
    stored: HashMap<Vec<u8>, (u32, u64, i64)>,
}

impl Model {
    /// Checks one placement against the model and records what it stored.
    fn check(&mut self, id: Option<&[u8]>, placement: &Placement, now_ms: i64, context: &str) {
        let Some(id) = id else {
            assert!(
                !placement.duplicate,
                "{context}: a message without id deduplicated"
            );
            return;
        };
        match self.stored.get(id) {
            Some(&(partition, offset, at)) if now_ms - at <= WINDOW_MS as i64 => {
                assert!(
                    placement.duplicate,
                    "{context}: {id:?} stored {} ms ago was stored again",
                    now_ms - at
                );
                assert_eq!(
                    (placement.partition, placement.offset),
                    (partition, offset),
                    "{context}: {id:?}"
                );
            }
            Some(&(_, _, at)) if now_ms - at > WINDOW_MS as i64 + TIME_UNIT_MS => {
                assert!(
                    !placement.duplicate,
                    "{context}: {id:?} stored {} ms ago, past the window, was refused",
                    now_ms - at
                );
                self.stored
                    .insert(id.to_vec(), (placement.partition, placement.offset, now_ms));
            }
            Some(_) => {
                // At the edge of the window (its time granularity): either is right.
                if !placement.duplicate {
                    self.stored
                        .insert(id.to_vec(), (placement.partition, placement.offset, now_ms));
                }
            }
            None => {
                assert!(
                    !placement.duplicate,
                    "{context}: {id:?} was never stored but was called a duplicate"
                );
                self.stored
                    .insert(id.to_vec(), (placement.partition, placement.offset, now_ms));
            }
        }
    }
}

fn run_seed(seed: u64, dir: &Path) {
    let clock = ManualClock::new(START_MS);
    let mut rng = Rng::new(seed);
    let mut store = Store::open(dir, options(&clock, None)).unwrap();
    store
        .create_topic("t", PARTITIONS, config(FsyncPolicy::Never))
        .unwrap();
    let mut model = Model::default();
    for step in 0..400 {
        let context = format!("seed {seed} step {step}");
        match rng.below(20) {
            0 => {
                store.simulate_crash();
                store = Store::open(dir, options(&clock, None)).unwrap();
            }
            1..=4 => clock.advance_ms(rng.below(WINDOW_MS / 2) as i64),
            5 => clock.advance_ms(WINDOW_MS as i64 + rng.below(3) as i64 - 1),
            _ => {
                let ids = publish_ids(&mut rng);
                let count = ids.len();
                let records = ids
                    .iter()
                    .map(|id| record_with(id.as_deref(), rng.below(3000) as usize))
                    .collect();
                let partition = rng.below(u64::from(PARTITIONS)) as u32;
                let topic = store.topic("t").unwrap();
                let placed = topic.append(partition, records).unwrap();
                let now = clock.now_ms();
                for (id, placement) in ids.iter().zip(placements(placed, partition, count)) {
                    model.check(id.as_deref(), &placement, now, &context);
                }
            }
        }
    }
    // The log holds every id the model says was stored, where it says.
    let topic = store.topic("t").unwrap();
    for (id, &(partition, offset, _)) in &model.stored {
        let read = topic.partitions()[partition as usize]
            .read(offset, 1, u64::MAX)
            .unwrap();
        assert_eq!(
            read.records[0].id.as_deref(),
            Some(&id[..]),
            "seed {seed}: {id:?}"
        );
    }
}

#[test]
fn the_window_matches_the_model_across_kills() {
    let seeds: u64 = std::env::var("DEDUP_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    for seed in 0..seeds {
        let dir = tempfile::tempdir().unwrap();
        run_seed(seed, dir.path());
    }
}

#[test]
fn a_durable_id_survives_a_power_cut() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let fs = FaultyFs::new(dir.path(), 7).unwrap();
    let open = || {
        let fs: Arc<dyn FileSystem> = Arc::new(fs.clone());
        Store::open(dir.path(), options(&clock, Some(fs))).unwrap()
    };
    open()
        .create_topic("t", PARTITIONS, config(FsyncPolicy::Always))
        .unwrap();
    for round in 0..8 {
        let store = open();
        let topic = store.topic("t").unwrap();
        let id = format!("durable-{round}");
        let placed = placements(topic.append(1, vec![record(Some(&id), 100)]).unwrap(), 1, 1);
        assert!(!placed[0].duplicate);
        topic.partitions()[1]
            .wait_durable_blocking(placed[0].offset)
            .unwrap();
        // Not waited for: may be lost by the cut, and then must not count as stored.
        let maybe = format!("unsynced-{round}");
        topic.append(2, vec![record(Some(&maybe), 100)]).unwrap();
        store.simulate_crash();
        let options = if round % 2 == 0 {
            CrashOptions::lose_unsynced()
        } else {
            CrashOptions::keep_some(round)
        };
        fs.crash(options).unwrap();
        let store = open();
        let topic = store.topic("t").unwrap();
        let again = placements(topic.append(0, vec![record(Some(&id), 100)]).unwrap(), 0, 1);
        assert!(
            again[0].duplicate,
            "round {round}: the durable id was forgotten"
        );
        assert_eq!((again[0].partition, again[0].offset), (1, placed[0].offset));
        let retry = placements(
            topic.append(2, vec![record(Some(&maybe), 100)]).unwrap(),
            2,
            1,
        );
        // Kept or lost, the answer names a record that holds the id.
        topic.partitions()[2]
            .wait_durable_blocking(retry[0].offset)
            .unwrap();
        let read = topic.partitions()[retry[0].partition as usize]
            .read(retry[0].offset, 1, u64::MAX)
            .unwrap();
        assert_eq!(read.records[0].id.as_deref(), Some(maybe.as_bytes()));
        store.close().unwrap();
        clock.advance_ms(1);
    }
}

/// Concurrent publishes of runs of sequenced ids (see "Runs" in the window's docs)
/// that share some ids and not others: each thread cuts the same 3,000 ids into rows
/// of its own length and offset, two publishing them in order and two in an order of
/// their own, so rows meet rows claimed by another append under way, whole or in
/// part. Each id is stored exactly once, and every answer names that copy.
#[test]
fn concurrent_runs_that_overlap_store_each_id_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Arc::new(Store::open(dir.path(), options(&clock, None)).unwrap());
    store
        .create_topic("t", 4, config(FsyncPolicy::Never))
        .unwrap();
    let ids = 3000u64;
    let threads: Vec<_> = (0..4u32)
        .map(|thread| {
            let store = store.clone();
            std::thread::spawn(move || {
                let topic = store.topic("t").unwrap();
                let row = [8u64, 12, 20, 9][thread as usize];
                let skew = u64::from(thread) * 3;
                // Cut at skew + a multiple of the row's length.
                let mut cuts: Vec<u64> = std::iter::once(0)
                    .chain((1..).map(|n| n * row - skew))
                    .take_while(|&cut| cut < ids)
                    .collect();
                cuts.push(ids);
                cuts.dedup();
                let mut rows: Vec<(u64, u64)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
                // Two threads in order, so they race on the same ids; two in their
                // own order.
                if thread >= 2 {
                    let mut rng = Rng::new(u64::from(thread) + 10);
                    for i in (1..rows.len()).rev() {
                        rows.swap(i, rng.below(i as u64 + 1) as usize);
                    }
                }
                let mut seen = Vec::new();
                for (start, end) in rows {
                    let records = (start..end)
                        .map(|s| record_with(Some(&sequenced(7, s)), 50))
                        .collect();
                    let placed = placements(
                        topic.append(thread, records).unwrap(),
                        thread,
                        (end - start) as usize,
                    );
                    seen.extend((start..end).zip(placed));
                }
                seen
            })
        })
        .collect();
    let mut answers: HashMap<u64, Vec<Placement>> = HashMap::new();
    for thread in threads {
        for (id, placement) in thread.join().unwrap() {
            answers.entry(id).or_default().push(placement);
        }
    }
    let topic = store.topic("t").unwrap();
    let stored: u64 = topic
        .partitions()
        .iter()
        .map(|p| p.end_offset().unwrap())
        .sum();
    assert_eq!(stored, ids, "each id stored exactly once");
    for (id, placements) in answers {
        assert_eq!(placements.len(), 4);
        let originals: Vec<_> = placements.iter().filter(|p| !p.duplicate).collect();
        assert_eq!(originals.len(), 1, "{id}: {placements:?}");
        let original = (originals[0].partition, originals[0].offset);
        assert!(
            placements
                .iter()
                .all(|p| (p.partition, p.offset) == original),
            "{id}: {placements:?}"
        );
        let read = topic.partitions()[original.0 as usize]
            .read(original.1, 1, u64::MAX)
            .unwrap();
        assert_eq!(read.records[0].id.as_deref(), Some(&sequenced(7, id)[..]));
    }
}

#[test]
fn concurrent_duplicates_store_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Arc::new(Store::open(dir.path(), options(&clock, None)).unwrap());
    store
        .create_topic("t", 4, config(FsyncPolicy::Never))
        .unwrap();
    let ids = 500;
    let threads: Vec<_> = (0..4u32)
        .map(|thread| {
            let store = store.clone();
            std::thread::spawn(move || {
                let topic = store.topic("t").unwrap();
                let mut seen = Vec::new();
                // Each thread publishes every id, in batches of 10, in its own order.
                let mut order: Vec<u32> = (0..ids).collect();
                let mut rng = Rng::new(u64::from(thread));
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.below(i as u64 + 1) as usize);
                }
                for chunk in order.chunks(10) {
                    let records = chunk
                        .iter()
                        .map(|i| record(Some(&format!("c-{i}")), 50))
                        .collect();
                    let placed =
                        placements(topic.append(thread, records).unwrap(), thread, chunk.len());
                    seen.extend(chunk.iter().copied().zip(placed));
                }
                seen
            })
        })
        .collect();
    let mut answers: HashMap<u32, Vec<Placement>> = HashMap::new();
    for thread in threads {
        for (id, placement) in thread.join().unwrap() {
            answers.entry(id).or_default().push(placement);
        }
    }
    let topic = store.topic("t").unwrap();
    let stored: u64 = topic
        .partitions()
        .iter()
        .map(|p| p.end_offset().unwrap())
        .sum();
    assert_eq!(stored, u64::from(ids), "each id stored exactly once");
    for (id, placements) in answers {
        let originals = placements.iter().filter(|p| !p.duplicate).count();
        assert_eq!(originals, 1, "c-{id}: {placements:?}");
        let first = (placements[0].partition, placements[0].offset);
        assert!(
            placements.iter().all(|p| (p.partition, p.offset) == first),
            "c-{id}: {placements:?}"
        );
    }
}

#[test]
fn assigned_ids_are_unique_returned_and_deduplicate_when_sent_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(dir.path(), options(&clock, None)).unwrap();
    let config = TopicConfig {
        assign_ids: true,
        ..config(FsyncPolicy::Never)
    };
    let topic = store.create_topic("t", 1, config).unwrap();
    let placed = placements(
        topic
            .append(0, (0..100).map(|_| record(None, 10)).collect())
            .unwrap(),
        0,
        100,
    );
    let ids: Vec<Bytes> = placed
        .iter()
        .map(|p| p.assigned_id.clone().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "assigned ids are ordered"
    );
    let read = topic.partitions()[0].read(0, 100, u64::MAX).unwrap();
    for (record, id) in read.records.iter().zip(&ids) {
        assert_eq!(
            record.id.as_ref(),
            Some(id),
            "the stored id is the one acked"
        );
    }
    let again = placements(
        topic
            .append(
                0,
                vec![NewRecord {
                    id: Some(ids[7].clone()),
                    ..NewRecord::value("x")
                }],
            )
            .unwrap(),
        0,
        1,
    );
    assert!(again[0].duplicate);
    assert_eq!(again[0].offset, 7);
    assert_eq!(
        again[0].assigned_id, None,
        "a message with its own id gets none"
    );
}

/// A damaged batch in the window does not stop the window: publishes with ids go on
/// (to every partition, the damaged one too), ids before and after the damage are
/// still deduplicated, and only the damaged batch's own ids (which cannot be read)
/// are stored again. Before, rebuilding the window failed on the damage and every
/// publish with an id to the topic was refused until the partition was repaired.
#[test]
fn a_damaged_batch_leaves_the_rest_of_the_window_deduplicating() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(dir.path(), options(&clock, None)).unwrap();
    let topic = store
        .create_topic("t", PARTITIONS, config(FsyncPolicy::Always))
        .unwrap();
    // 40 batches of 10 records with ids in partition 0 (some of 3 KB, so they span
    // several segments), 5 in partition 1.
    let mut offsets: HashMap<String, (u32, u64)> = HashMap::new();
    for (partition, batches) in [(0u32, 40usize), (1, 5)] {
        for b in 0..batches {
            let ids: Vec<String> = (0..10).map(|i| format!("p{partition}-{b}-{i}")).collect();
            let records = ids
                .iter()
                .enumerate()
                .map(|(i, id)| record(Some(id), if i % 3 == 0 { 3000 } else { 100 }))
                .collect();
            let placed = placements(topic.append(partition, records).unwrap(), partition, 10);
            for (id, p) in ids.iter().zip(&placed) {
                assert!(!p.duplicate);
                offsets.insert(id.clone(), (p.partition, p.offset));
            }
        }
    }
    drop(topic);
    store.close().unwrap();
    drop(store);

    // Batch 17 of partition 0 loses one value bit.
    let (_, damaged_base) = offsets["p0-17-0"];
    let pdir = dir.path().join("topics").join("t").join("0");
    let mut logs: Vec<_> = std::fs::read_dir(&pdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let mut flipped = false;
    'files: for log in &logs {
        let mut bytes = std::fs::read(log).unwrap();
        let mut at = 0usize;
        while at < bytes.len() {
            let Ok(header) = tidelog_storage::batch::BatchHeader::parse(&bytes[at..]) else {
                break;
            };
            let length = header.batch_length as usize;
            if header.base_offset == damaged_base {
                bytes[at + length - 1] ^= 0x10;
                std::fs::write(log, &bytes).unwrap();
                flipped = true;
                break 'files;
            }
            at += length;
        }
    }
    assert!(flipped, "no batch at offset {damaged_base}");

    let store = Store::open(dir.path(), options(&clock, None)).unwrap();
    let topic = store.topic("t").unwrap();
    // A new id goes in, on each partition.
    for partition in 0..PARTITIONS {
        let id = format!("new-{partition}");
        let placed = placements(
            topic
                .append(partition, vec![record(Some(&id), 100)])
                .unwrap_or_else(|e| panic!("publish with an id to partition {partition}: {e}")),
            partition,
            1,
        );
        assert!(!placed[0].duplicate);
    }
    // Every stored id is a duplicate of its original, except the damaged batch's.
    for b in [0usize, 16, 18, 39] {
        for i in [0, 5, 9] {
            let id = format!("p0-{b}-{i}");
            let again = placements(topic.append(2, vec![record(Some(&id), 100)]).unwrap(), 2, 1);
            assert!(again[0].duplicate, "{id} was forgotten");
            assert_eq!((again[0].partition, again[0].offset), offsets[&id], "{id}");
        }
    }
    let again = placements(
        topic.append(2, vec![record(Some("p1-4-9"), 100)]).unwrap(),
        2,
        1,
    );
    assert!(again[0].duplicate);
    let lost = placements(
        topic.append(2, vec![record(Some("p0-17-3"), 100)]).unwrap(),
        2,
        1,
    );
    assert!(
        !lost[0].duplicate,
        "the damaged batch's id cannot be read back, so it is stored again"
    );
    drop(topic);
    store.close().unwrap();
}

/// A client batch whose ids all lie in runs (with records without ids among them): the
/// window decides it without a decision a record, and must still store it once, answer
/// its retry with every original, refuse a batch that repeats one of its ids among new
/// ones, and do all of that again after a kill.
#[test]
fn a_batch_of_ids_in_a_row_is_stored_once_and_its_retry_names_the_originals() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    // No id, 40 ids in a row, no id, 12 more of another prefix in a row.
    let mut records = vec![record(None, 10)];
    records.extend((0..40).map(|k| record_with(Some(&sequenced(7, 1_000 + k)), 100)));
    records.push(record(None, 10));
    records.extend((0..12).map(|k| record_with(Some(&sequenced(8, k)), 3_000)));
    let with_ids: Vec<u64> = (1..41).chain(42..54).collect();

    let mut store = Store::open(dir.path(), options(&clock, None)).unwrap();
    store
        .create_topic("t", 1, config(FsyncPolicy::Never))
        .unwrap();
    let first = encode(&records, &clock);
    let (placed, _) = store.topic("t").unwrap().append_batch(0, first).unwrap();
    assert_eq!(placed.appended.expect("all new").base_offset, 0);
    assert!(placed.duplicates.is_empty());

    for round in ["retry", "retry after a kill"] {
        clock.advance_ms(1_000);
        let topic = store.topic("t").unwrap();
        let end = topic.partition(0).unwrap().end_offset().unwrap();
        let (placed, _) = topic.append_batch(0, encode(&records, &clock)).unwrap();
        assert!(placed.appended.is_none(), "{round}: nothing appended");
        let originals: Vec<(u32, u64, bool)> = placed
            .duplicates
            .iter()
            .map(|p| (p.partition, p.offset, p.duplicate))
            .collect();
        let expected: Vec<(u32, u64, bool)> = with_ids.iter().map(|&o| (0, o, true)).collect();
        assert_eq!(originals, expected, "{round}");

        // New ids in a row with one of the stored ones among them: refused whole.
        let mut mixed: Vec<NewRecord> = (0..20)
            .map(|k| record_with(Some(&sequenced(9, k)), 100))
            .collect();
        mixed.push(record_with(Some(&sequenced(7, 1_020)), 100));
        let refused = topic.append_batch(0, encode(&mixed, &clock));
        assert!(refused.is_err(), "{round}: a batch repeating a stored id");
        assert_eq!(
            topic.partition(0).unwrap().end_offset().unwrap(),
            end,
            "{round}"
        );

        store.simulate_crash();
        store = Store::open(dir.path(), options(&clock, None)).unwrap();
    }
    // New ids in a row right after the stored ones: appended after them.
    let next: Vec<NewRecord> = (40..60)
        .map(|k| record_with(Some(&sequenced(7, 1_000 + k)), 100))
        .collect();
    let (placed, _) = store
        .topic("t")
        .unwrap()
        .append_batch(0, encode(&next, &clock))
        .unwrap();
    assert_eq!(placed.appended.expect("new").base_offset, 54);
}

/// A run of client batches (as a PublishStream's requests to one partition come):
/// batches without ids are written together, batches with ids go through the window
/// one at a time, in order, so every batch lands after the ones before it; a retry
/// inside the run names its originals, and a batch the window refuses fails alone.
#[test]
fn a_run_of_batches_with_and_without_ids_keeps_its_order_through_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let plain =
        |n: usize, size: usize| -> Vec<NewRecord> { (0..n).map(|_| record(None, size)).collect() };
    let ids = |prefix: u64, n: u64| -> Vec<NewRecord> {
        (0..n)
            .map(|k| record_with(Some(&sequenced(prefix, k)), 300))
            .collect()
    };
    let mut refused = ids(3, 4);
    refused.extend(ids(1, 1));
    /// What becomes of a batch of the run.
    #[derive(Debug)]
    enum Fate {
        /// Appended at this base offset.
        Appended(u64),
        /// A retry: its placements name the originals, from this offset on.
        Retry(u64),
        /// Refused by the window.
        Refused,
    }
    let run = vec![
        (plain(3, 2_000), Fate::Appended(0)),
        (ids(1, 5), Fate::Appended(3)),
        (plain(2, 9_000), Fate::Appended(8)),
        (ids(1, 5), Fate::Retry(3)),
        (ids(2, 4), Fate::Appended(10)),
        (refused, Fate::Refused),
        (plain(1, 10), Fate::Appended(14)),
    ];
    let store = Store::open(dir.path(), options(&clock, None)).unwrap();
    store
        .create_topic("t", 1, config(FsyncPolicy::Never))
        .unwrap();
    let topic = store.topic("t").unwrap();
    let results = topic.append_batches(0, run.iter().map(|(r, _)| encode(r, &clock)).collect());
    assert_eq!(results.len(), run.len());
    for (i, (result, (records, expected))) in results.into_iter().zip(&run).enumerate() {
        match (result, expected) {
            (Ok((placed, _)), Fate::Appended(base)) => {
                assert_eq!(
                    placed.appended.map(|a| a.base_offset),
                    Some(*base),
                    "batch {i}"
                );
            }
            (Ok((placed, _)), Fate::Retry(first)) => {
                assert!(placed.appended.is_none(), "batch {i}");
                let offsets: Vec<u64> = placed.duplicates.iter().map(|p| p.offset).collect();
                let want: Vec<u64> = (*first..*first + records.len() as u64).collect();
                assert_eq!(offsets, want, "batch {i}");
            }
            (Err(error), Fate::Refused) => {
                assert!(
                    error.to_string().contains("dedup window"),
                    "batch {i}: {error}"
                );
            }
            (other, _) => panic!("batch {i}: {other:?}, expected {expected:?}"),
        }
    }
    let partition = topic.partition(0).unwrap();
    assert_eq!(partition.end_offset().unwrap(), 15);
    // Every record where its batch was placed.
    let read = partition.read(0, 100, u64::MAX).unwrap();
    let ids_read: Vec<Option<Bytes>> = read.records.iter().map(|r| r.id.clone()).collect();
    let ids_written: Vec<Option<Bytes>> = run
        .iter()
        .filter(|(_, expected)| matches!(expected, Fate::Appended(_)))
        .flat_map(|(records, _)| records.iter().map(|r| r.id.clone()))
        .collect();
    assert_eq!(ids_read, ids_written);
    drop(topic);
    store.close().unwrap();
}

/// Batches to several partitions, as one PublishStream's requests come
/// (`Topic::append_batches_across`): of two batches with the same ids the first is
/// kept whatever partitions they go to, though plain batches are grouped a partition at
/// a time; a batch to a partition the topic lacks fails alone.
#[test]
fn across_partitions_the_first_batch_with_an_id_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let plain = |n: usize| -> Vec<NewRecord> { (0..n).map(|_| record(None, 3_000)).collect() };
    let ids = |prefix: u64, n: u64| -> Vec<NewRecord> {
        (0..n)
            .map(|k| record_with(Some(&sequenced(prefix, k)), 300))
            .collect()
    };
    let store = Store::open(dir.path(), options(&clock, None)).unwrap();
    store
        .create_topic("t", 3, config(FsyncPolicy::Never))
        .unwrap();
    let topic = store.topic("t").unwrap();
    let sent = [
        (0, plain(2)),
        (2, ids(1, 3)),
        (0, ids(1, 3)),
        (7, plain(1)),
        (0, plain(1)),
        (1, ids(2, 2)),
        (2, ids(2, 2)),
    ];
    let results = topic.append_batches_across(
        sent.iter()
            .map(|(partition, records)| (*partition, encode(records, &clock)))
            .collect(),
    );
    /// A batch's base offset if appended, and the (partition, offset)s it duplicates.
    type Outcome = Result<(Option<u64>, Vec<(u32, u64)>), String>;
    let outcome: Vec<Outcome> = results
        .into_iter()
        .map(|result| {
            result
                .map(|(placed, _)| {
                    let duplicates = placed
                        .duplicates
                        .iter()
                        .map(|p| (p.partition, p.offset))
                        .collect();
                    (placed.appended.map(|a| a.base_offset), duplicates)
                })
                .map_err(|e| e.to_string())
        })
        .collect();
    assert_eq!(outcome[0], Ok((Some(0), vec![])));
    assert_eq!(outcome[1], Ok((Some(0), vec![])));
    assert_eq!(outcome[2], Ok((None, vec![(2, 0), (2, 1), (2, 2)])));
    assert!(outcome[3].is_err(), "{outcome:?}");
    assert_eq!(outcome[4], Ok((Some(2), vec![])));
    assert_eq!(outcome[5], Ok((Some(0), vec![])));
    assert_eq!(outcome[6], Ok((None, vec![(1, 0), (1, 1)])));
    let ends: Vec<u64> = (0..3)
        .map(|p| topic.partition(p).unwrap().end_offset().unwrap())
        .collect();
    assert_eq!(ends, [3, 2, 3]);
    drop(topic);
    store.close().unwrap();
}

/// One message stamped a day ahead of the clock must not keep the ids after it in the
/// window for ever once the window is read back: each later id is timed by its own
/// timestamp (it leaves one window after it was stored), the future-stamped one by the
/// time of the read-back (nothing is appended in the future).
#[test]
fn a_timestamp_ahead_of_the_clock_does_not_hold_the_window_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    // As a broker started with `--max-timestamp-ahead off` (or a log written before
    // the bound) has it.
    let open = || {
        let options = StoreOptions {
            max_timestamp_ahead_ms: None,
            ..options(&clock, None)
        };
        Store::open(dir.path(), options).unwrap()
    };
    let store = open();
    store
        .create_topic("t", 1, config(FsyncPolicy::Never))
        .unwrap();
    let topic = store.topic("t").unwrap();
    let ahead = NewRecord {
        timestamp_ms: Some(START_MS + 86_400_000),
        ..record(Some("from-the-future"), 100)
    };
    topic.append(0, vec![ahead]).unwrap();
    let later: Vec<String> = (0..200).map(|i| format!("job-{i}")).collect();
    for id in &later {
        topic.append(0, vec![record(Some(id), 100)]).unwrap();
    }
    drop(topic);
    store.close().unwrap();
    drop(store);

    // Read back within the window: everything is still a duplicate.
    clock.advance_ms(WINDOW_MS as i64 / 2);
    let store = open();
    let topic = store.topic("t").unwrap();
    for id in [&later[0], &later[199]] {
        let placed = placements(topic.append(0, vec![record(Some(id), 100)]).unwrap(), 0, 1);
        assert!(placed[0].duplicate, "{id} was forgotten within the window");
    }
    drop(topic);
    store.close().unwrap();
    drop(store);

    // Read back two windows later: the later ids are stored again; the future-stamped
    // one is still held (timed at the read-back) until one window after it.
    clock.advance_ms(2 * WINDOW_MS as i64);
    let store = open();
    let topic = store.topic("t").unwrap();
    for id in [&later[0], &later[100], &later[199]] {
        let placed = placements(topic.append(0, vec![record(Some(id), 100)]).unwrap(), 0, 1);
        assert!(
            !placed[0].duplicate,
            "{id} is still deduplicated two windows after it was stored"
        );
    }
    let held = placements(
        topic
            .append(0, vec![record(Some("from-the-future"), 100)])
            .unwrap(),
        0,
        1,
    );
    assert!(held[0].duplicate);
    drop(topic);
    store.close().unwrap();
    drop(store);
}

/// A publish of a message stamped further ahead of the clock than the store allows is
/// refused whole, per message and as a client's batch (its times moved or not), and
/// nothing is stored; up to the bound, and with no bound, it is stored.
#[test]
fn a_timestamp_too_far_ahead_of_the_clock_is_refused() {
    use tidelog_storage::client_batch::ClientBatch;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let open = |max_ahead: Option<u64>| {
        let options = StoreOptions {
            max_timestamp_ahead_ms: max_ahead,
            ..options(&clock, None)
        };
        Store::open(dir.path(), options).unwrap()
    };
    let at = |ms: i64| NewRecord {
        timestamp_ms: Some(ms),
        ..record(None, 10)
    };
    let store = open(Some(60_000));
    store
        .create_topic("t", 1, config(FsyncPolicy::Never))
        .unwrap();
    let topic = store.topic("t").unwrap();
    let error = topic
        .append(0, vec![at(START_MS), at(START_MS + 60_001)])
        .unwrap_err();
    assert!(
        error.to_string().contains("ahead of the broker's clock")
            && error.to_string().contains("--max-timestamp-ahead"),
        "{error}"
    );
    topic.append(0, vec![at(START_MS + 60_000)]).unwrap();
    let batch = |records: &[NewRecord], relative_times| ClientBatch {
        partition: 0,
        bytes: encode(records, &clock),
        relative_times,
    };
    let far = [at(START_MS + 3_600_000)];
    let results = topic.append_batches_admitted(
        vec![batch(&far, false), batch(&[at(START_MS + 1)], false)],
        &mut |_, _| Ok(()),
    );
    assert!(
        matches!(&results[0], Err(e) if e.to_string().contains("ahead of the broker's clock")),
        "{:?}",
        results[0].as_ref().err()
    );
    assert!(results[1].is_ok());
    // Moved to the append time, the same batch is on time.
    let moved = topic.append_batches_admitted(vec![batch(&far, true)], &mut |_, _| Ok(()));
    assert!(moved[0].is_ok(), "{:?}", moved[0].as_ref().err());
    let end = topic.partition(0).unwrap().end_offset().unwrap();
    assert_eq!(end, 3, "only what was on time is stored");
    drop(topic);
    store.close().unwrap();
    drop(store);
    // No bound: stored.
    let store = open(None);
    store.topic("t").unwrap().append(0, far.to_vec()).unwrap();
    store.close().unwrap();
}
