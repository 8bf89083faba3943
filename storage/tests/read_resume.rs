//! Reading through one large batch a budget at a time: each read goes on where the one
//! before stopped (the partition remembers the place), so the records walked stay about
//! one per record read; without it every read walked (and for zstd, decompressed) the
//! batch from its first record, quadratic in the batch's size. What reads return must
//! be exactly what they returned before: every live (and matching) record once, in
//! order, `next_offset` exact, whatever readers interleave. The property test at the
//! end checks that against a plain model over random batches, budgets and readers.
//! `PROPTEST_CASES=N` runs more cases.

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use tidelog_storage::limits::{READ_RESUME_IDLE_MS, READ_RESUME_POINTS_MAX};
use tidelog_storage::partition::Partition;
use tidelog_storage::{
    Compression, Filter, FsyncPolicy, ManualClock, NewRecord, Store, StoreOptions, TopicConfig,
};

const START_MS: i64 = 1_700_000_000_000;
const TTL_MS: u64 = 1_000;

/// What a record of the test batches is: its value size, whether it expires before the
/// reads, its key ("a" or "b", for the filter), whether it has an id.
#[derive(Debug, Clone, Copy)]
struct Spec {
    bytes: usize,
    expires: bool,
    key_a: bool,
}

fn value(offset: u64, bytes: usize) -> Bytes {
    let mut value = offset.to_le_bytes().to_vec();
    value.resize(bytes.max(8), b'a' + (offset % 26) as u8);
    value.truncate(bytes);
    Bytes::from(value)
}

/// An id that counts up with the offset (the encoder stores most of them as "follows").
fn id(offset: u64) -> Bytes {
    Bytes::copy_from_slice(
        &(0x5eed_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(offset)).to_be_bytes(),
    )
}

struct Log {
    _dir: tempfile::TempDir,
    _store: Store,
    clock: Arc<ManualClock>,
    partition: Arc<Partition>,
    specs: Vec<Spec>,
    /// Where each batch ends (its next offset).
    batch_ends: Vec<u64>,
    ids: bool,
}

/// A partition holding `batches` (each one append, so one stored batch), with ids that
/// count up when `ids`; the clock is moved past the TTL of the records that expire.
fn log(batches: &[Vec<Spec>], compression: Compression, ids: bool) -> Log {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = Store::open(
        dir.path(),
        StoreOptions {
            clock: clock.clone(),
            flush_threads: 1,
            retention_interval: None,
            flush_observer: None,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let config = TopicConfig {
        fsync: FsyncPolicy::Never,
        compression,
        retention_ms: None,
        ..TopicConfig::default()
    };
    let partition = store
        .create_topic("resume", 1, config)
        .unwrap()
        .partition(0)
        .unwrap()
        .clone();
    let mut specs = Vec::new();
    let mut batch_ends = Vec::new();
    for batch in batches {
        let base = specs.len() as u64;
        let records: Vec<NewRecord> = batch
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let offset = base + i as u64;
                NewRecord {
                    key: Some(Bytes::from_static(if spec.key_a { b"a" } else { b"b" })),
                    value: value(offset, spec.bytes),
                    ttl_ms: Some(if spec.expires { TTL_MS } else { 0 }),
                    id: ids.then(|| id(offset)),
                    ..NewRecord::default()
                }
            })
            .collect();
        assert_eq!(partition.append(&records).unwrap().base_offset, base);
        specs.extend_from_slice(batch);
        batch_ends.push(specs.len() as u64);
    }
    clock.advance_ms(TTL_MS as i64 + 1);
    Log {
        _dir: dir,
        _store: store,
        clock,
        partition,
        specs,
        batch_ends,
        ids,
    }
}

impl Log {
    fn end(&self) -> u64 {
        self.specs.len() as u64
    }

    /// The end of the batch holding `offset`.
    fn batch_end(&self, offset: u64) -> u64 {
        self.batch_ends[self.batch_ends.partition_point(|&end| end <= offset)]
    }

    /// The offsets a reader gets, in order: live, and matching the filter if `only_a`.
    fn expected(&self, only_a: bool) -> Vec<u64> {
        (0..self.end())
            .filter(|&o| {
                let spec = self.specs[o as usize];
                !spec.expires && (!only_a || spec.key_a)
            })
            .collect()
    }

    /// Checks a returned record is the one stored at its offset.
    fn check_record(&self, record: &tidelog_storage::Record) {
        let spec = self.specs[record.offset as usize];
        assert_eq!(
            record.value,
            value(record.offset, spec.bytes),
            "value of {}",
            record.offset
        );
        assert_eq!(
            record.id,
            self.ids.then(|| id(record.offset)),
            "id of {}",
            record.offset
        );
        assert!(!spec.expires, "expired record {} returned", record.offset);
    }
}

/// One batch of `n` small records; every 7th expires, every 3rd has key "a".
fn big_batch(n: usize) -> Vec<Spec> {
    (0..n)
        .map(|i| Spec {
            bytes: 8 + i % 5,
            expires: i % 7 == 3,
            key_a: i % 3 == 0,
        })
        .collect()
}

/// Reads the whole log from `from` in reads of `max_records`, with the filter when
/// `only_a`: the offsets returned, and how many reads it took.
fn read_through(log: &Log, from: u64, max_records: u32, only_a: bool) -> (Vec<u64>, u64) {
    let filter = Filter::parse(r#"key == "a""#).unwrap();
    let filter = only_a.then_some(&filter);
    let mut next = from;
    let mut offsets = Vec::new();
    let mut reads = 0;
    while next < log.end() {
        let read = log
            .partition
            .read_filtered(next, max_records, u64::MAX, filter)
            .unwrap();
        reads += 1;
        assert!(read.records.len() <= max_records as usize);
        for record in &read.records {
            log.check_record(record);
            offsets.push(record.offset);
        }
        assert!(read.next_offset > next, "no progress from {next}");
        next = read.next_offset;
    }
    (offsets, reads)
}

const BIG: usize = 200_000;

/// Reading one batch of 200,000 records 500 at a time yields every live record once, in
/// order, and walks fewer than two records per record in the batch (before: about
/// 40 million walked, 200 per record).
fn reads_through_one_big_batch(compression: Compression, ids: bool, only_a: bool) {
    let log = log(&[big_batch(BIG)], compression, ids);
    let before = log.partition.records_walked();
    let (offsets, reads) = read_through(&log, 0, 500, only_a);
    let walked = log.partition.records_walked() - before;
    assert_eq!(offsets, log.expected(only_a));
    assert!(
        reads > 100,
        "only {reads} reads: the budget did not divide the batch"
    );
    assert!(
        walked < 2 * BIG as u64,
        "{walked} records walked in {reads} reads of a batch of {BIG} ({compression:?}, ids {ids}, filter {only_a})"
    );
}

#[test]
fn reading_a_big_uncompressed_batch_walks_each_record_about_once() {
    reads_through_one_big_batch(Compression::None, false, false);
}

#[test]
fn reading_a_big_zstd_batch_walks_each_record_about_once() {
    reads_through_one_big_batch(Compression::Zstd, false, false);
}

#[test]
fn reading_a_big_batch_of_ids_that_count_up_walks_each_record_about_once() {
    reads_through_one_big_batch(Compression::None, true, false);
    reads_through_one_big_batch(Compression::Zstd, true, false);
}

#[test]
fn a_filtered_read_of_a_big_batch_walks_each_record_about_once() {
    reads_through_one_big_batch(Compression::None, true, true);
    reads_through_one_big_batch(Compression::Zstd, false, true);
}

#[test]
fn the_skip_limits_leave_a_place_too() {
    // Nothing matches: every read ends on the filter's skip limits, inside the batch,
    // and the next goes on from there.
    let specs: Vec<Spec> = (0..BIG)
        .map(|_| Spec {
            bytes: 8,
            expires: false,
            key_a: false,
        })
        .collect();
    let log = log(&[specs], Compression::Zstd, false);
    let before = log.partition.records_walked();
    let (offsets, reads) = read_through(&log, 0, 500, true);
    assert!(offsets.is_empty());
    assert!(reads > 1, "the skip limits never ended a read");
    let walked = log.partition.records_walked() - before;
    assert!(
        walked < 2 * BIG as u64,
        "{walked} records walked in {reads} reads"
    );
}

#[test]
fn readers_at_several_places_in_a_batch_each_read_everything_once() {
    for compression in [Compression::None, Compression::Zstd] {
        let log = log(
            &[big_batch(20_000), big_batch(3), big_batch(20_000)],
            compression,
            true,
        );
        let expected = log.expected(false);
        // More readers than places kept: those past the limit read from the batch's
        // first record, and still read right.
        let readers = READ_RESUME_POINTS_MAX + 2;
        let mut next: Vec<u64> = (0..readers as u64).map(|r| r * 1_234).collect();
        let mut got: Vec<Vec<u64>> = vec![Vec::new(); readers];
        let mut round = 0;
        while next.iter().any(|&n| n < log.end()) {
            round += 1;
            assert!(round < 10_000, "readers stalled at {next:?}");
            for r in 0..readers {
                if next[r] >= log.end() {
                    continue;
                }
                let budget = 97 + 13 * r as u32;
                let read = log.partition.read(next[r], budget, u64::MAX).unwrap();
                for record in &read.records {
                    log.check_record(record);
                    got[r].push(record.offset);
                }
                next[r] = read.next_offset;
            }
        }
        for (r, got) in got.iter().enumerate() {
            let from = r as u64 * 1_234;
            let want: Vec<u64> = expected.iter().copied().filter(|&o| o >= from).collect();
            assert_eq!(got, &want, "reader {r} ({compression:?})");
        }
        assert!(log.partition.resume_places() <= READ_RESUME_POINTS_MAX);
    }
}

#[test]
fn a_place_is_forgotten_after_a_while() {
    let log = log(&[big_batch(10_000)], Compression::Zstd, false);
    let read = log.partition.read(0, 10, u64::MAX).unwrap();
    assert_eq!(log.partition.resume_places(), 1);
    // Used within the idle time: kept.
    log.clock.advance_ms(READ_RESUME_IDLE_MS - 1);
    log.partition.enforce_retention().unwrap();
    assert_eq!(log.partition.resume_places(), 1);
    let read = log.partition.read(read.next_offset, 10, u64::MAX).unwrap();
    log.clock.advance_ms(READ_RESUME_IDLE_MS);
    log.partition.enforce_retention().unwrap();
    assert_eq!(log.partition.resume_places(), 0);
    // A read from there still reads right, from the batch's first record.
    let again = log.partition.read(read.next_offset, 10, u64::MAX).unwrap();
    let want: Vec<u64> = log
        .expected(false)
        .into_iter()
        .filter(|&o| o >= read.next_offset)
        .take(10)
        .collect();
    let got: Vec<u64> = again.records.iter().map(|r| r.offset).collect();
    assert_eq!(got, want);
}

/// A read of the model: what `read(from, max_records, max_bytes)` must return (the live
/// records from `from` the budget admits) and its `next_offset`: the first live record
/// the budget refused; or, once the budget is spent (the count, or a first record over
/// the bytes), the first live record after the last one returned if it is in the same
/// batch, else that batch's end (the read does not go on into the next batch); or the
/// end of the log.
fn model_read(
    log: &Log,
    live: &[u64],
    from: u64,
    max_records: u32,
    max_bytes: u64,
) -> (Vec<u64>, u64) {
    let start = live.partition_point(|&o| o < from);
    let mut taken: Vec<u64> = Vec::new();
    let mut bytes_left = max_bytes;
    let mut spent = false;
    let spent_at = |last: u64, next: u64| next.min(log.batch_end(last));
    for &offset in &live[start..] {
        if spent {
            return (taken.clone(), spent_at(*taken.last().unwrap(), offset));
        }
        // Value, the one-byte key and the id.
        let size = log.specs[offset as usize].bytes as u64 + 1 + if log.ids { 16 } else { 0 };
        if !taken.is_empty() && size > bytes_left {
            return (taken, offset);
        }
        taken.push(offset);
        spent = taken.len() as u32 == max_records || size > bytes_left;
        bytes_left = bytes_left.saturating_sub(size);
    }
    let next = match taken.last() {
        Some(&last) if spent => spent_at(last, log.end()),
        _ => log.end(),
    };
    (taken, next)
}

#[derive(Debug, Clone)]
enum Op {
    /// Reader `r` reads on from where it is, with this budget.
    Read(usize, u32, u64),
    /// Reader `r` jumps to this share of the log (a fresh position).
    Jump(usize, f64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let read = (
        0usize..3,
        prop_oneof![1 => Just(1u32), 4 => 1u32..700],
        prop_oneof![1 => Just(0u64), 2 => 1u64..200, 3 => 200u64..20_000, 1 => Just(u64::MAX)],
    )
        .prop_map(|(r, n, b)| Op::Read(r, n, b));
    let jump = (0usize..3, 0.0f64..1.0).prop_map(|(r, at)| Op::Jump(r, at));
    prop::collection::vec(prop_oneof![12 => read, 1 => jump], 1..400)
}

fn spec() -> impl Strategy<Value = Spec> {
    (0usize..40, prop::bool::weighted(0.15), any::<bool>()).prop_map(|(bytes, expires, key_a)| {
        Spec {
            bytes,
            expires,
            key_a,
        }
    })
}

fn batches() -> impl Strategy<Value = Vec<Vec<Spec>>> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::collection::vec(spec(), 1..20),
            2 => prop::collection::vec(spec(), 200..6_000),
        ],
        1..5,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random batches, budgets and readers (reading on, or jumping to fresh places):
    /// every read returns exactly the model's records and `next_offset`.
    #[test]
    fn interleaved_reads_match_the_model(
        batches in batches(),
        zstd in any::<bool>(),
        ids in any::<bool>(),
        ops in ops(),
    ) {
        let compression = if zstd { Compression::Zstd } else { Compression::None };
        let log = log(&batches, compression, ids);
        let live = log.expected(false);
        let mut at = [0u64; 3];
        for op in ops {
            match op {
                Op::Jump(r, share) => at[r] = (share * log.end() as f64) as u64,
                Op::Read(r, max_records, max_bytes) => {
                    if at[r] >= log.end() {
                        at[r] = 0;
                    }
                    let read = log.partition.read(at[r], max_records, max_bytes).unwrap();
                    let got: Vec<u64> = read.records.iter().map(|r| r.offset).collect();
                    let (want, next) = model_read(&log, &live, at[r], max_records, max_bytes);
                    prop_assert_eq!(&got, &want, "read from {} of ({}, {})", at[r], max_records, max_bytes);
                    prop_assert_eq!(read.next_offset, next, "next offset of the read from {}", at[r]);
                    for record in &read.records {
                        log.check_record(record);
                    }
                    at[r] = read.next_offset;
                }
            }
        }
    }
}
