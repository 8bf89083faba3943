//! Client batches against the per-message paths: random batches built by a client
//! (`encode_batch`, plain and zstd, some with TTLs and ids) go in through
//! `Topic::append_batch` and in runs through `Topic::append_batches` (a malformed one
//! among them), mixed with per-message appends, across small segments, a
//! process kill and a reopen; then every read in batch form (`Partition::read_batches`
//! from random offsets with random budgets, with and without a filter, before and after
//! TTLs pass), decoded with `delivered_records` and followed by `next_offset`, must give
//! exactly what the per-message read (`read_filtered`) gives. `CLIENT_BATCH_SEEDS=N` runs
//! more seeds.

use std::sync::Arc;

use bytes::Bytes;
use tidelog_storage::batch::{EncodeOptions, encode_batch};
use tidelog_storage::client_batch::{ClientBatch, delivered_records};
use tidelog_storage::rng::SeededRng as Rng;
use tidelog_storage::{
    Clock, Compression, Filter, FsyncPolicy, Header, ManualClock, NewRecord, Partition, Record,
    Store, StoreOptions, TopicConfig,
};

const START_MS: i64 = 1_700_000_000_000;

fn options(clock: &Arc<ManualClock>) -> StoreOptions {
    StoreOptions {
        clock: clock.clone(),
        retention_interval: None,
        ..StoreOptions::default()
    }
}

fn random_records(rng: &mut Rng, next_id: &mut u64) -> Vec<NewRecord> {
    (0..1 + rng.below(40))
        .map(|_| {
            *next_id += 1;
            let largest = if rng.below(50) == 0 { 200_000 } else { 300 };
            NewRecord {
                key: (rng.below(3) == 0).then(|| Bytes::from(format!("k{}", rng.below(4)))),
                value: Bytes::from(vec![b'v'; rng.below(largest) as usize]),
                headers: (0..rng.below(3))
                    .map(|h| Header {
                        key: format!("h{h}"),
                        value: Bytes::from_static(b"x"),
                    })
                    .collect(),
                ttl_ms: (rng.below(4) == 0).then(|| 1 + rng.below(20_000)),
                id: (rng.below(2) == 0).then(|| Bytes::from(format!("id-{next_id}"))),
                ..NewRecord::default()
            }
        })
        .collect()
}

/// Everything from the log start through the per-message read.
fn by_message(partition: &Partition, filter: Option<&Filter>) -> Vec<Record> {
    let mut out = Vec::new();
    let mut offset = partition.log_start().unwrap();
    loop {
        let read = partition
            .read_filtered(offset, 10_000, u64::MAX, filter)
            .unwrap();
        out.extend(read.records);
        if read.next_offset == read.end_offset {
            return out;
        }
        offset = read.next_offset;
    }
}

/// From `from` through batch reads of random budgets, decoded as a client does.
fn by_batch(
    partition: &Partition,
    from: u64,
    rng: &mut Rng,
    filter: Option<&Filter>,
) -> Vec<Record> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let read = partition
            .read_batches(
                offset,
                1 + rng.below(200) as u32,
                1 + rng.below(300_000),
                filter,
            )
            .unwrap();
        for batch in &read.batches {
            assert!(batch.bytes.len() as u64 >= 60);
            out.extend(
                delivered_records(&batch.bytes, batch.skip_front, &batch.skip, read.now_ms)
                    .unwrap(),
            );
        }
        assert!(read.next_offset >= offset);
        if read.next_offset == read.end_offset {
            return out;
        }
        offset = read.next_offset;
    }
}

/// `records` as a client sends them: encoded, plain or zstd, in a buffer of their own
/// or (as a request's batch is) a slice of a larger one, which is written without a
/// copy.
fn client_bytes(rng: &mut Rng, clock: &ManualClock, records: &[NewRecord]) -> Bytes {
    let options = EncodeOptions {
        now_ms: clock.now_ms(),
        default_ttl_ms: None,
        compression: if rng.below(2) == 0 {
            Compression::Zstd
        } else {
            Compression::None
        },
        max_message_bytes: 1 << 20,
        priority_levels: 0,
    };
    let bytes = encode_batch(records, &options).unwrap().bytes;
    if rng.below(2) == 0 {
        Bytes::from(bytes)
    } else {
        let mut request = vec![0xa5; 7];
        request.extend_from_slice(&bytes);
        request.extend_from_slice(&[0x5a; 9]);
        Bytes::from(request).slice(7..7 + bytes.len())
    }
}

fn run_seed(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let mut rng = Rng::new(seed);
    let mut store = Store::open(dir.path(), options(&clock)).unwrap();
    let config = TopicConfig {
        segment_bytes: 256 * 1024,
        fsync: FsyncPolicy::Never,
        ..TopicConfig::default()
    };
    store.create_topic("t", 1, config).unwrap();
    let mut next_id = 0;
    let mut expected = 0u64;
    for step in 0..60 {
        let records = random_records(&mut rng, &mut next_id);
        let topic = store.topic("t").unwrap();
        let count = records.len() as u64;
        match rng.below(4) {
            0 => {
                topic.append(0, records).unwrap();
            }
            1 => {
                // A run of batches, as a PublishStream's requests are appended: the
                // valid ones in order (rolling segments between them), a malformed
                // one failing alone.
                let mut runs = vec![records];
                for _ in 0..rng.below(6) {
                    runs.push(random_records(&mut rng, &mut next_id));
                }
                let torn = (rng.below(2) == 0).then(|| rng.below(runs.len() as u64) as usize);
                let batches = runs
                    .iter()
                    .enumerate()
                    .map(|(i, records)| {
                        let bytes = client_bytes(&mut rng, &clock, records);
                        if torn == Some(i) {
                            let mut broken = bytes.to_vec();
                            let last = broken.len() - 1;
                            broken[last] ^= 0x40;
                            Bytes::from(broken)
                        } else {
                            bytes
                        }
                    })
                    .collect();
                let results = topic.append_batches(0, batches);
                assert_eq!(results.len(), runs.len());
                for (i, (result, records)) in results.into_iter().zip(&runs).enumerate() {
                    if torn == Some(i) {
                        let error = result.unwrap_err();
                        assert!(
                            error.to_string().contains("malformed"),
                            "seed {seed} step {step}: {error}"
                        );
                        continue;
                    }
                    let (placed, checked) = result.unwrap();
                    let appended = placed.appended.expect("new ids are appended");
                    assert_eq!(
                        appended.base_offset, expected,
                        "seed {seed} step {step} batch {i}"
                    );
                    assert_eq!(checked.header.record_count as usize, records.len());
                    expected += records.len() as u64;
                }
                continue;
            }
            _ => {
                let bytes = client_bytes(&mut rng, &clock, &records);
                let (placed, checked) = topic.append_batch(0, bytes).unwrap();
                let appended = placed.appended.expect("new ids are appended");
                assert_eq!(appended.base_offset, expected, "seed {seed} step {step}");
                assert_eq!(u64::from(checked.header.record_count), count);
            }
        }
        expected += count;
        if step == 30 {
            // The batches as written must pass recovery's checks too.
            store.simulate_crash();
            store = Store::open(dir.path(), options(&clock)).unwrap();
        }
    }
    let filter = Filter::parse("key == \"k1\"").unwrap();
    for round in 0..3 {
        let topic = store.topic("t").unwrap();
        let partition = topic.partition(0).unwrap();
        assert_eq!(partition.end_offset().unwrap(), expected);
        for filter in [None, Some(&filter)] {
            let all = by_message(partition, filter);
            let from = rng.below(expected);
            let want: Vec<_> = all.iter().filter(|r| r.offset >= from).cloned().collect();
            let got = by_batch(partition, from, &mut rng, filter);
            assert_eq!(
                got, want,
                "seed {seed} round {round} from {from} filter {filter:?}"
            );
        }
        clock.advance_ms(8_000);
    }
}

#[test]
fn batch_reads_give_what_message_reads_give() {
    let seeds = std::env::var("CLIENT_BATCH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4u64);
    for seed in 0..seeds {
        run_seed(seed);
    }
}

/// The segments' base offsets of partition 0 of topic `t` under `dir`, from the file
/// names.
fn segment_bases(dir: &std::path::Path) -> Vec<u64> {
    let mut bases: Vec<u64> = std::fs::read_dir(dir.join("topics/t/0"))
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    bases
}

/// A run of batches rolls segments exactly where the same batches appended one at a
/// time do: each segment fills up to `segment_bytes`, whether its batches came in a
/// run or not, and a run that spans several rolls counts each segment from its own
/// start.
#[test]
fn a_run_rolls_segments_where_single_appends_do() {
    for seed in 0..8 {
        let mut rng = Rng::new(1000 + seed);
        let clock = ManualClock::new(START_MS);
        // Without ids, so the dedup window leaves every run whole; 3 to 40 KB a batch.
        let batches: Vec<Bytes> = (0..60)
            .map(|_| {
                let records: Vec<NewRecord> = (0..1 + rng.below(20))
                    .map(|_| NewRecord {
                        value: Bytes::from(vec![b'v'; 100 + rng.below(2_000) as usize]),
                        ..NewRecord::default()
                    })
                    .collect();
                client_bytes(&mut rng, &clock, &records)
            })
            .collect();
        let config = TopicConfig {
            segment_bytes: 64 * 1024,
            fsync: FsyncPolicy::Never,
            ..TopicConfig::default()
        };
        let one_at_a_time = tempfile::tempdir().unwrap();
        let in_runs = tempfile::tempdir().unwrap();
        for (dir, run) in [(&one_at_a_time, 1), (&in_runs, 1 + rng.below(20) as usize)] {
            let store = Store::open(dir.path(), options(&clock)).unwrap();
            store.create_topic("t", 1, config.clone()).unwrap();
            let topic = store.topic("t").unwrap();
            for chunk in batches.chunks(run) {
                for result in topic.append_batches(0, chunk.to_vec()) {
                    result.unwrap();
                }
            }
        }
        let bases = segment_bases(one_at_a_time.path());
        assert!(bases.len() > 3, "seed {seed}: {bases:?}");
        assert_eq!(segment_bases(in_runs.path()), bases, "seed {seed}");
    }
}

/// `Topic::append_batches_admitted` asks before each valid batch with what it would
/// add on top of the batches before it not written yet; a batch refused fails alone
/// with the refusal, and the batches around it are appended.
#[test]
fn admission_sees_the_batches_before_it_and_refuses_one_alone() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let store = Store::open(dir.path(), options(&clock)).unwrap();
    let config = TopicConfig {
        fsync: FsyncPolicy::Never,
        ..TopicConfig::default()
    };
    store.create_topic("t", 2, config).unwrap();
    let topic = store.topic("t").unwrap();
    let mut rng = Rng::new(7);
    let batch = |count: usize, rng: &mut Rng| {
        let records: Vec<NewRecord> = (0..count)
            .map(|n| NewRecord {
                value: Bytes::from(vec![b'v'; 10 + n]),
                ..NewRecord::default()
            })
            .collect();
        client_bytes(rng, &clock, &records)
    };
    let batches = vec![
        ClientBatch::new(0, batch(2, &mut rng)),
        ClientBatch::new(1, batch(3, &mut rng)),
        ClientBatch::new(1, batch(4, &mut rng)),
        ClientBatch::new(0, batch(1, &mut rng)),
    ];
    let mut asked = Vec::new();
    let results = topic.append_batches_admitted(batches, &mut |messages, bytes| {
        asked.push((messages, bytes));
        if messages == 9 {
            return Err(tidelog_storage::Error::invalid("full"));
        }
        Ok(())
    });
    // Payload bytes: a record's value is 10 + n bytes.
    let payload = |count: u64| (0..count).map(|n| 10 + n).sum::<u64>();
    assert_eq!(
        asked,
        [
            (2, payload(2)),
            (5, payload(2) + payload(3)),
            (9, payload(2) + payload(3) + payload(4)),
            // A batch that fails has what went before it written first.
            (1, payload(1)),
        ]
    );
    let outcome: Vec<Result<u32, String>> = results
        .into_iter()
        .map(|r| {
            r.map(|(_, c)| c.header.record_count)
                .map_err(|e| e.to_string())
        })
        .collect();
    assert_eq!(outcome[0], Ok(2));
    assert_eq!(outcome[1], Ok(3));
    assert!(
        outcome[2].as_ref().unwrap_err().contains("full"),
        "{outcome:?}"
    );
    assert_eq!(outcome[3], Ok(1));
    assert_eq!(topic.partition(0).unwrap().end_offset().unwrap(), 3);
    assert_eq!(topic.partition(1).unwrap().end_offset().unwrap(), 3);
}

/// A batch with relative times (`ClientBatch::relative`) from a client 3 minutes
/// behind the store's clock is stored at the append time: each record's timestamp,
/// expiry and deliver-at as read back keep their distance from it, the time index finds
/// it by the append time, its CRC holds on disk (a kill and reopen reads it back), and
/// after the reopen the dedup window, read back from the records' timestamps, still
/// holds its ids: a resend within the window is a duplicate.
#[test]
fn a_batch_with_relative_times_is_stored_at_the_append_time_and_deduplicated_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let mut store = Store::open(dir.path(), options(&clock)).unwrap();
    let config = TopicConfig {
        fsync: FsyncPolicy::Never,
        dedup_window_ms: Some(120_000),
        ..TopicConfig::default()
    };
    store.create_topic("t", 1, config).unwrap();
    let behind = ManualClock::new(START_MS - 180_000);
    let records = vec![
        NewRecord {
            id: Some(Bytes::from_static(b"invoice-1")),
            ttl_ms: Some(300_000),
            ..NewRecord::value("a")
        },
        NewRecord {
            id: Some(Bytes::from_static(b"invoice-2")),
            delay_ms: Some(10_000),
            ..NewRecord::value("b")
        },
    ];
    let mut rng = Rng::new(3);
    let bytes = client_bytes(&mut rng, &behind, &records);
    let append = |store: &Store| {
        let topic = store.topic("t").unwrap();
        topic
            .append_batches_admitted(
                vec![ClientBatch::relative(0, bytes.clone())],
                &mut |_, _| Ok(()),
            )
            .pop()
            .unwrap()
            .unwrap()
            .0
    };
    let placed = append(&store);
    assert_eq!(placed.appended.expect("new").base_offset, 0);
    // The clock moves on; a plain batch at the store's time follows.
    clock.advance_ms(1_000);
    let later = client_bytes(&mut rng, &clock, &[NewRecord::value("c")]);
    store.topic("t").unwrap().append_batch(0, later).unwrap();

    let check = |store: &Store, round: &str| {
        let partition = store.topic("t").unwrap().partition(0).unwrap().clone();
        let read = by_message(&partition, None);
        let times: Vec<_> = read
            .iter()
            .map(|r| (r.timestamp_ms, r.expires_at_ms, r.deliver_at_ms))
            .collect();
        assert_eq!(
            times,
            [
                (START_MS, Some(START_MS + 300_000), None),
                (START_MS, None, Some(START_MS + 10_000)),
                (START_MS + 1_000, None, None),
            ],
            "{round}"
        );
        // The time index has the append times: the moved batch is at START_MS, the
        // next one a second later.
        assert_eq!(
            partition.offset_for_timestamp(START_MS).unwrap(),
            Some(0),
            "{round}"
        );
        assert_eq!(
            partition.offset_for_timestamp(START_MS + 1).unwrap(),
            Some(2),
            "{round}"
        );
        // Read in batch form, the stored batch's CRC holds.
        let stored = partition.read_batches(0, 1 << 20, u64::MAX, None).unwrap();
        let first = stored.batches.first().expect("a batch");
        let decoded = delivered_records(&first.bytes, 0, &[], START_MS).unwrap();
        assert_eq!(decoded[0].timestamp_ms, START_MS, "{round}");
    };
    check(&store, "before the kill");
    store.simulate_crash();
    clock.advance_ms(1_000);
    store = Store::open(dir.path(), options(&clock)).unwrap();
    check(&store, "after the kill");
    // The resend, 2 s after the first copy: within the window, a duplicate.
    let placed = append(&store);
    assert!(placed.appended.is_none(), "the resend was stored again");
    let offsets: Vec<u64> = placed.duplicates.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [0, 1]);
}
