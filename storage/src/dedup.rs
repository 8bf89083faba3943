//! A topic's dedup window: a publish whose message id was stored within the window
//! appends nothing and is answered with where the original went.
//!
//! # What it remembers
//! Every id appended through [`crate::Topic::append`] while the topic's
//! `dedup_window_ms` is on, for the window (to within [`TIME_UNIT_MS`]). Broker-assigned
//! ids go in too, so a producer that republishes with the id it was given is
//! deduplicated as well. Appends that do not go through the topic (dead letters,
//! offline tools) are not deduplicated.
//!
//! # Restarts
//! The window is not written anywhere: the log is its record. At the first publish with
//! an id after the topic is opened (or its window changed), each partition's messages
//! from the window are read back, from the first offset whose timestamp is within the
//! window (found through the time index), and their ids put back, timed by the running
//! maximum of the timestamps read: the append time unless producers set timestamps of
//! their own. A timestamp ahead of the clock counts as now, for its own record only. So a kill -9 or a restart forgets nothing the log kept; an id is forgotten
//! only with its message (a crash losing unsynced data of an `fsync = interval` topic,
//! which never acked it durably, or retention).
//!
//! # Memory: 22 to 44 bytes an id
//! Two structures (in `dedup/table.rs`). The ids' times (in [`TIME_UNIT_MS`] units)
//! and places (partition in 14 bits, offset in 49) are kept in the order they were stored, in two
//! ring buffers (12 bytes an id, the buffers at least half full: 12 to 24 bytes), each
//! id numbered in that order. An open-addressing table finds them: a slot of 8 bytes
//! holds the id's 32-bit tag (a tag also places its slot; 0 = empty) and the low 32
//! bits of its number. Every 1/16 of the window the expired ids leave the front of the
//! buffers (their slots then name nothing), and a sweep takes their slots out in place,
//! in slot order, a step with each claim that follows: 4 slots read for each id claimed,
//! at least 4,096 a claim, so no publish waits for a pass over the whole table (at
//! 2,000,000 ids the longest claim while a sweep runs took 0.13-0.15 ms, against
//! 22-34 ms for the sweep in one pass; the test `window_timing`). When a sweep ends
//! with the table below a load of 0.4, it is rebuilt at 0.6; it doubles at 0.8, so a
//! slot costs 10 to 20 bytes an id: 22 to 44 bytes in all (expired ids not yet swept
//! counted), within the 64. The ids claimed by appends under way
//! are in a second, small table (see Races), 20 to 40 bytes a claim, sized by the most
//! claims under way at once (it does not shrink).
//! The id's bytes are not kept: a hash match is confirmed by reading the original
//! record (a duplicate is the rare path), so ids that share 32 hash bits are still told
//! apart.
//!
//! The tag is a keyed mix (two multiply-xorshift rounds with a secret 128-bit key drawn
//! when the window is made) of the id's 64-bit [`crate::idindex::hash_id`], which the
//! active segment's id index needs anyway: each id is hashed once. Ids crafted to crowd
//! one part of the table would need the secret, or many ids with one 64-bit SipHash
//! value (as for the id index).
//!
//! # Speed: one cache miss an id, overlapped
//! The table (tens of MB for a few million ids) is far larger than the caches, so an
//! id's first probe misses. A probe reads only the slots from the tag's home to the
//! first empty one, 8 to a cache line: one line, or two, even at a load of 0.8; an
//! id's time and place are read only where a tag matches. Each publish request's ids
//! have their home slots read first, all at once, so their misses overlap. A claim goes
//! into the small table of claims under way, not the large one; when the append
//! returns, each id appended is inserted once into the large table, near the slots the
//! claim read (read again at once first, as the append in between may have evicted
//! them), and its time and place are written at the back of the ring buffers, in
//! order. A fresh table's pages are written once each when it is made, so the kernel
//! maps each page once (a read first would map its zero page, then copy it on the
//! first write). Claiming and settling ids in batches of 1,000, up to 2,000,000 in the
//! window, takes about 100-105 ns an id on the 2-core test VM, without the log (the
//! ignored test `window_timing`, against 115-140 ns with 16-byte slots in two arrays,
//! time and place beside each tag; see BENCHMARKS.md).
//!
//! # Runs: a producer's ids in a row, one range each
//! Producers that give their messages ids for retries usually make them in a row: a
//! producer's own prefix and a counter (Kafka's producer id and sequence numbers; the
//! bench's `--ids`), or a ULID-like layout whose last 8 bytes count up (this crate's
//! [`IdGenerator`], so tidelog-client's ids and the broker's assigned ids). The window
//! keeps such ids as ranges, in `dedup/runs.rs`: a 16-byte id is split into a prefix
//! (its first 8 bytes) and a suffix (the last 8, big-endian), and records in a row of
//! one publish whose ids share the prefix and whose suffixes count up by one, at least
//! 8 of them, make a *run* (the one rule, [`crate::idindex::split_ids`], by which the
//! segment's id index lists them as one range too, so a run's ids are never hashed).
//! A run is checked against the stored
//! runs (a B-tree by prefix and first suffix; the stored runs never share an id, so
//! one look at the run starting closest below its last id answers) and against the
//! runs claimed by appends under way, and stored as one entry: its first suffix, its
//! length, its time and the place of its first id (the others follow it, one offset
//! each). No id of a run is hashed, put in the table or read ahead, so a publish of
//! 1,000 ids in a row costs the window a few lookups instead of 1,000 probes.
//!
//! An id can be held only one way. A run is taken whole only when no id of it can be
//! held as a single: no single 16-byte id with its prefix is claimed by an append under
//! way (a count of them), or stored within the window (a filter of 4,096 cells, by a
//! keyed hash of the prefix, holding the latest time a single with a prefix of that
//! cell was claimed or stored), or comes before the run in the same publish. Otherwise
//! its ids are claimed one by one, as singles, as every id that is not 16 bytes long
//! or not in a row is. A single 16-byte id is looked up in the runs too (stored, and
//! claimed under way, where another append's claim makes it wait as for a single's).
//! A stored run's hit is confirmed by reading the record, as a table hit is. Expired
//! runs leave in the order they were stored, up to 1,024 with each claim. Runs cost
//! at most about 27 bytes an id (at 8 ids a run; long runs a fraction of a byte), and
//! a window read back after a restart finds its runs again (rows of records at offsets
//! in a row).
//!
//! # Races
//! Claiming ids and recording where they went are two short critical sections around
//! the append; between them a claimed id is *pending*, in the table of claims under
//! way with its claim's token. A publish that meets another's pending id (by tag)
//! waits for that append to return (microseconds: a `pwrite`) and is then answered
//! with its offset, so of concurrent duplicates one is stored and the others get its
//! offset. A failed append releases its claims and stores none.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::batch::{NewRecord, Record};
use crate::client_batch::CheckedBatch;
use crate::clock::Clock;
use crate::condition::Condition;
use crate::error::{Error, Result};
use crate::idindex::{RUN_IDS_MIN, SplitIds, id_parts};
use crate::limits::DEDUP_WINDOW_MS_MAX;
use crate::msgid::IdGenerator;
use crate::partition::{Appended, Partition, split_record_ids};

mod runs;
mod table;
use runs::{RunClaim, Runs, key};
use table::{Claim, Stored, Sweep, Table, window_slot};

/// Slots a step of a sweep reads for each id claimed, and at least.
const SWEEP_SLOTS_PER_ID: usize = 4;
const SWEEP_STEP_SLOTS_MIN: usize = 4096;

/// Cells of the filter of the prefixes of single 16-byte ids (see "Runs" in the
/// module docs): 4,096 times of 4 bytes, 16 KiB.
const PREFIX_CELLS: usize = 4096;
/// Expired runs dropped at most with each claim.
const RUN_EXPIRE_BUDGET: usize = 1024;

/// Granularity of the stored times, in ms.
pub const TIME_UNIT_MS: i64 = 8;
/// Records read per call while rebuilding a window from the log.
const REBUILD_READ_RECORDS: u32 = 8192;
/// Bytes read per call while rebuilding.
const REBUILD_READ_BYTES: u64 = 16 << 20;
/// Offsets a slot can hold: 49 bits (17 years of a million messages a second); the
/// partition takes the 14 bits above.
const OFFSET_BITS: u32 = 49;
const _: () = assert!(crate::limits::TOPIC_PARTITIONS_MAX <= 1 << (63 - OFFSET_BITS));

/// The words of the refusal of a batch that mixes ids stored within the window with
/// new ones (or repeats one): clients that batch records with ids of their callers
/// (tidelog-client's producer) look for them, and send the batch's records again one
/// per batch.
pub const BATCH_DEDUPLICATED_WHOLE: &str = "a batch is deduplicated whole";

/// Where a message of an append went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub partition: u32,
    pub offset: u64,
    /// The id was stored within the window before: nothing was appended for it and
    /// `partition` / `offset` are the original's.
    pub duplicate: bool,
    /// The id the broker gave the message (topics with `assign_ids`).
    pub assigned_id: Option<Bytes>,
}

/// What [`crate::Topic::append`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// Every record appended, in order, from `base_offset`: nothing was deduplicated or
    /// assigned (messages without ids, or with ids all new).
    All(Appended),
    /// Per record, in order. `appended` covers the records stored (none when every one
    /// was a duplicate).
    Each {
        appended: Option<Appended>,
        placements: Vec<Placement>,
    },
}

impl Placed {
    /// The records appended (duplicates are not).
    pub fn appended(&self) -> Option<&Appended> {
        match self {
            Placed::All(appended) => Some(appended),
            Placed::Each { appended, .. } => appended.as_ref(),
        }
    }
}

/// What [`crate::Topic::append_batch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlaced {
    /// The batch as appended; `None` when every record was a duplicate.
    pub appended: Option<Appended>,
    /// When the batch was a duplicate: where the original of each record with an id
    /// is, in record order.
    pub duplicates: Vec<Placement>,
}

fn pack(partition: u32, offset: u64) -> Option<u64> {
    (partition < 1 << (63 - OFFSET_BITS) && offset < 1 << OFFSET_BITS)
        .then(|| (u64::from(partition) << OFFSET_BITS) | offset)
}

fn unpack(at: u64) -> (u32, u64) {
    ((at >> OFFSET_BITS) as u32, at & ((1 << OFFSET_BITS) - 1))
}

#[derive(Debug)]
struct State {
    /// False until the window was read back from the log (see the module docs).
    rebuilt: bool,
    /// The secret of [`tag_of`].
    key: (u64, u64),
    /// The ids stored, by tag: each slot names its id in `stored`.
    table: Table<u64>,
    /// The ids stored: their times and places, in the order they were stored.
    stored: Stored,
    /// The ids claimed by appends under way, with their claims' tokens (a few
    /// batches' worth: cache-resident).
    pending: Table<Claim>,
    /// The runs stored (see "Runs" in the module docs).
    runs: Runs,
    /// The runs claimed by appends under way.
    pending_runs: Vec<RunClaim>,
    /// Single 16-byte ids claimed by appends under way (in `pending`).
    pending_singles: usize,
    /// By a keyed hash of the prefix, the latest time a single 16-byte id with a
    /// prefix of that hash was claimed or stored (0: never).
    prefix_cells: Box<[u32]>,
    /// Stored time 0 is this time.
    base_ms: i64,
    /// When the expired ids were last dropped.
    swept_ms: i64,
    /// The sweep of the table under way: the slots of dropped ids are taken out a
    /// step at a time, a step with each claim.
    sweep: Option<Sweep>,
    /// The next claim token.
    next_token: u64,
}

/// The topic-wide state; see the module docs.
#[derive(Debug)]
pub struct DedupWindow {
    state: Mutex<State>,
    /// Signalled whenever pending claims are settled or released.
    settled: Condition,
    clock: Arc<dyn Clock>,
    ids: Arc<IdGenerator>,
}

/// How a record to append holds its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdClaim {
    /// It has none.
    NoId,
    /// Claimed alone: its tag and the claim's token, and for a 16-byte id the cell of
    /// its prefix in `State::prefix_cells`.
    Single {
        tag: u32,
        token: u64,
        cell: Option<u16>,
    },
    /// In one of the call's run claims.
    InRun,
}

/// What the claim pass decided for one record.
#[derive(Debug, Clone, Copy)]
enum Decision {
    /// To append, as the `index`th appended record.
    Append { index: usize, claim: IdClaim },
    /// Stored before, there.
    Duplicate { partition: u32, offset: u64 },
    /// The same id as the earlier record `first` of this call, which is appended.
    SameAs { first: usize },
}

impl DedupWindow {
    pub fn new(clock: Arc<dyn Clock>, ids: Arc<IdGenerator>) -> Self {
        let now_ms = clock.now_ms();
        DedupWindow {
            state: Mutex::new(State {
                rebuilt: false,
                key: {
                    let random = RandomState::new();
                    (random.hash_one(1u64), random.hash_one(2u64))
                },
                table: Table::default(),
                stored: Stored::default(),
                pending: Table::default(),
                runs: Runs::default(),
                pending_runs: Vec::new(),
                pending_singles: 0,
                prefix_cells: vec![0; PREFIX_CELLS].into_boxed_slice(),
                // Before any time a window can reach back to, so no stored time
                // clamps to 0 (which would keep it forever).
                base_ms: now_ms.saturating_sub(2 * DEDUP_WINDOW_MS_MAX as i64),
                swept_ms: now_ms,
                sweep: None,
                next_token: 0,
            }),
            settled: Condition::default(),
            clock,
            ids,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The clock's time: the append time of a batch appended through the window.
    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Ids stored (some may have expired since the expired ones were last dropped,
    /// every 1/16 of the window).
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.stored.len() + state.runs.ids()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory the window holds.
    pub fn memory_bytes(&self) -> usize {
        let state = self.lock();
        state.table.memory_bytes()
            + state.stored.memory_bytes()
            + state.pending.memory_bytes()
            + state.runs.memory_bytes()
            + state.pending_runs.capacity() * std::mem::size_of::<RunClaim>()
            + state.prefix_cells.len() * 4
    }

    /// Forgets everything (the topic's window was changed): the next publish with an id
    /// reads the window back from the log. Waits for appends under way to settle.
    pub fn reset(&self) {
        let mut state = self.lock();
        while state.pending.used > 0 || !state.pending_runs.is_empty() {
            state = self.settled.wait(state);
        }
        state.table = Table::default();
        state.stored = Stored::default();
        state.runs = Runs::default();
        state.prefix_cells.fill(0);
        state.sweep = None;
        state.rebuilt = false;
    }

    /// Appends `records` to partition `partition` of `partitions` (topic `topic`, whose
    /// window this is), giving ids where `assign_ids` asks and deduplicating ids within
    /// `window_ms` (0 = off).
    pub(crate) fn append(
        &self,
        topic: &str,
        partitions: &[Arc<Partition>],
        partition: u32,
        mut records: Vec<NewRecord>,
        window_ms: u64,
        assign_ids: bool,
    ) -> Result<Placed> {
        let target = partitions.get(partition as usize).ok_or_else(|| {
            Error::invalid(crate::topic::no_such_partition(
                topic,
                partitions.len(),
                partition,
            ))
        })?;
        let mut assigned = Vec::new();
        if assign_ids {
            let now_ms = self.clock.now_ms();
            assigned = records
                .iter_mut()
                .map(|record| {
                    record.id.is_none().then(|| {
                        let id = Bytes::copy_from_slice(&self.ids.next(now_ms));
                        record.id = Some(id.clone());
                        id
                    })
                })
                .collect();
        }
        if window_ms == 0 || !records.iter().any(|r| r.id.is_some()) {
            let appended = target.append(&records)?;
            if assigned.is_empty() {
                return Ok(Placed::All(appended));
            }
            let placements = assigned
                .into_iter()
                .enumerate()
                .map(|(delta, assigned_id)| Placement {
                    partition,
                    offset: appended.base_offset + delta as u64,
                    duplicate: false,
                    assigned_id,
                })
                .collect();
            return Ok(Placed::Each {
                appended: Some(appended),
                placements,
            });
        }
        let split = split_record_ids(&records);
        let records_len = records.len();
        let ids: Vec<Option<&[u8]>> = records.iter().map(|r| r.id.as_deref()).collect();
        let claimed = self.claim(partitions, &ids, &split, window_ms)?;
        let decisions = &claimed.decisions;
        drop(ids);
        // Usually every record is new: append them as they came, without a copy.
        let all_new = claimed.all_appended
            || decisions
                .iter()
                .all(|d| matches!(d, Decision::Append { .. }));
        let (kept, split): (Vec<NewRecord>, SplitIds) = if all_new {
            (records, split)
        } else {
            let kept: Vec<NewRecord> = records
                .into_iter()
                .zip(decisions)
                .filter(|(_, d)| matches!(d, Decision::Append { .. }))
                .map(|(record, _)| record)
                .collect();
            let split = split_record_ids(&kept);
            (kept, split)
        };
        let appended = if kept.is_empty() {
            None
        } else {
            match target.append_split(&kept, split) {
                Ok(appended) => Some(appended),
                Err(error) => {
                    self.finish(&claimed, None);
                    return Err(error);
                }
            }
        };
        let base = appended.as_ref().map_or(0, |a| a.base_offset);
        self.finish(&claimed, Some((partition, base)));
        // Every record appended as it came and none given an id: nothing to say per
        // record (the common case, and the cheap answer).
        if assigned.is_empty()
            && all_new
            && let Some(appended) = appended
        {
            return Ok(Placed::All(appended));
        }
        let placements = (0..records_len)
            .map(|i| {
                let (at_partition, offset, duplicate) = match claimed.decision(i) {
                    Decision::Append { index, .. } => (partition, base + index as u64, false),
                    Decision::Duplicate { partition, offset } => (partition, offset, true),
                    Decision::SameAs { first } => match claimed.decision(first) {
                        Decision::Append { index, .. } => (partition, base + index as u64, true),
                        _ => unreachable!("SameAs names an appended record"),
                    },
                };
                Placement {
                    partition: at_partition,
                    offset,
                    duplicate,
                    assigned_id: assigned.get(i).cloned().flatten(),
                }
            })
            .collect();
        Ok(Placed::Each {
            appended,
            placements,
        })
    }

    /// Appends a client's batch (see [`crate::client_batch`]) to partition `partition`
    /// under the topic's id rules, without re-encoding it:
    /// - with `assign_ids`, every record must carry an id (giving one would mean
    ///   rewriting the records), else `InvalidArgument`;
    /// - with a window on, the batch is deduplicated whole, by the records that carry
    ///   ids (records without one have no say): when every id was stored within the
    ///   window, nothing is appended (the batch is a retry) and the placements name the
    ///   originals of the records with ids, in order; when none was, the batch is
    ///   appended as it came; when some were and some not (or an id repeats inside the
    ///   batch), nothing is appended and the call fails
    ///   with `InvalidArgument` naming the first duplicate (the client republishes the new
    ///   records in a batch of their own). A retried batch is thus stored once.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append_batch(
        &self,
        topic: &str,
        partitions: &[Arc<Partition>],
        partition: u32,
        bytes: Bytes,
        checked: &CheckedBatch,
        now_ms: i64,
        window_ms: u64,
        assign_ids: bool,
    ) -> Result<BatchPlaced> {
        let target = partitions.get(partition as usize).ok_or_else(|| {
            Error::invalid(crate::topic::no_such_partition(
                topic,
                partitions.len(),
                partition,
            ))
        })?;
        if !window_decides(checked, window_ms, assign_ids)? {
            let appended = target.append_checked(bytes, checked, now_ms)?;
            return Ok(BatchPlaced {
                appended: Some(appended),
                duplicates: Vec::new(),
            });
        }
        let split = checked.split_ids(&bytes);
        let mut ids: Vec<Option<&[u8]>> = vec![None; checked.header.record_count as usize];
        for id in &checked.ids {
            ids[id.index as usize] = Some(checked.id(&bytes, id));
        }
        let claimed = self.claim(partitions, &ids, &split, window_ms)?;
        let decisions = &claimed.decisions;
        // Records without an id have no say: the records with ids decide.
        let with_id = |d: &&Decision| {
            !matches!(
                d,
                Decision::Append {
                    claim: IdClaim::NoId,
                    ..
                }
            )
        };
        let appending = if claimed.all_appended {
            checked.ids.len()
        } else {
            decisions
                .iter()
                .filter(with_id)
                .filter(|d| matches!(d, Decision::Append { .. }))
                .count()
        };
        if appending == checked.ids.len() {
            let result = target.append_checked_split(bytes, checked, &split, now_ms);
            let base = result.as_ref().ok().map(|a| (partition, a.base_offset));
            self.finish(&claimed, base);
            return Ok(BatchPlaced {
                appended: Some(result?),
                duplicates: Vec::new(),
            });
        }
        // Nothing is appended: release the claims taken.
        self.finish(&claimed, None);
        if appending > 0 {
            let (index, at) = decisions
                .iter()
                .enumerate()
                .find_map(|(i, d)| match *d {
                    Decision::Duplicate { partition, offset } => Some((
                        i,
                        format!("stored at partition {partition} offset {offset}"),
                    )),
                    Decision::SameAs { first } => {
                        Some((i, format!("the same id as record {first} of the batch")))
                    }
                    Decision::Append { .. } => None,
                })
                .unwrap_or((0, String::new()));
            return Err(Error::invalid(format!(
                "record {index} of the batch has an id within the topic's dedup window ({at}) while {appending} record(s) with ids are new: {BATCH_DEDUPLICATED_WHOLE}, so nothing was appended; publish the new records in a batch of their own"
            )));
        }
        // Every id is a duplicate (a repeat inside the batch names an appended record,
        // so there is none here): the batch is a retry, and records without ids went
        // with it.
        let duplicates = decisions
            .iter()
            .filter_map(|decision| match *decision {
                Decision::Duplicate { partition, offset } => Some(Placement {
                    partition,
                    offset,
                    duplicate: true,
                    assigned_id: None,
                }),
                _ => None,
            })
            .collect();
        Ok(BatchPlaced {
            appended: None,
            duplicates,
        })
    }

    /// Decides each record's fate, claiming the ids to append; waits while another
    /// append holds a claim on one of them.
    fn claim(
        &self,
        partitions: &[Arc<Partition>],
        records: &[Option<&[u8]>],
        split: &SplitIds,
        window_ms: u64,
    ) -> Result<Claimed> {
        let window_ms = i64::try_from(window_ms).unwrap_or(i64::MAX);
        let mut state = self.lock();
        loop {
            let now_ms = self.clock.now_ms();
            if !state.rebuilt {
                rebuild(&mut state, partitions, now_ms, window_ms)?;
            }
            // A step of the sweep under way reads a few slots for each id claimed, so
            // it ends long before the next one starts, at no stall of its own.
            let budget = (records.len() * SWEEP_SLOTS_PER_ID).max(SWEEP_STEP_SLOTS_MIN);
            sweep(&mut state, now_ms, window_ms, budget);
            match claim_pass(&mut state, partitions, records, split, now_ms, window_ms) {
                Some(claimed) => return Ok(claimed),
                None => {
                    state = self.settled.wait(state);
                }
            }
        }
    }

    /// Settles the claims where the append put them (`Some((partition, base offset))`),
    /// or releases them when it failed (`None`): each claim leaves the claims under
    /// way, and the ids appended go into the table or, a run at a time, the runs.
    fn finish(&self, claimed: &Claimed, appended: Option<(u32, u64)>) {
        let mut state = self.lock();
        let time = time_of(&state, self.clock.now_ms());
        let claims = claimed
            .decisions
            .iter()
            .filter_map(|decision| match *decision {
                Decision::Append {
                    index,
                    claim: IdClaim::Single { tag, token, cell },
                } => Some((index, tag, token, cell)),
                _ => None,
            });
        if appended.is_some() {
            // Where the ids go (claiming read them, but the append in between may
            // have evicted them): read at once, so the misses overlap.
            let tags: Vec<u32> = claims.clone().map(|(_, tag, ..)| tag).collect();
            state.table.touch_homes(&tags);
        }
        for (index, tag, token, cell) in claims {
            if let Some(slot) = state.pending.find(Claim { tag, token }) {
                state.pending.remove(slot);
            }
            // Failed, or an offset past 2^49: not deduplicated.
            let at = appended.and_then(|(partition, base)| pack(partition, base + index as u64));
            if let Some(cell) = cell {
                state.pending_singles -= 1;
                if at.is_some() {
                    mark_prefix_cell(&mut state, cell, time);
                }
            }
            if let Some(at) = at {
                store(&mut state, tag, time, at);
            }
        }
        for run in &claimed.runs {
            if let Some(at) = state.pending_runs.iter().position(|c| c.token == run.token) {
                state.pending_runs.swap_remove(at);
            }
            let Some((partition, base)) = appended else {
                continue;
            };
            let first = base + run.index as u64;
            // Past 2^49: not deduplicated.
            if let (Some(at), Some(_)) = (
                pack(partition, first),
                pack(partition, first + u64::from(run.len) - 1),
            ) {
                state.runs.insert(run.key, run.len, time, at);
            }
        }
        drop(state);
        self.settled.notify_all();
    }
}

/// What [`DedupWindow::claim`] decided: one decision a record, and the runs claimed.
#[derive(Debug)]
struct Claimed {
    /// One decision a record; empty when `all_appended`.
    decisions: Vec<Decision>,
    /// Every record is appended as it came: each id lies in a run claimed whole, and no
    /// record was claimed alone (the usual batch of ids in a row, decided without a
    /// decision a record).
    all_appended: bool,
    runs: Vec<RunClaim>,
}

impl Claimed {
    /// What was decided for record `i` of the call.
    fn decision(&self, i: usize) -> Decision {
        if self.all_appended {
            // Records without an id are appended too; which claim they hold does not
            // matter to a caller of this.
            return Decision::Append {
                index: i,
                claim: IdClaim::InRun,
            };
        }
        self.decisions[i]
    }
}

fn time_of(state: &State, ms: i64) -> u32 {
    u32::try_from(ms.saturating_sub(state.base_ms).max(0) / TIME_UNIT_MS).unwrap_or(u32::MAX)
}

/// The oldest stored time still within the window.
fn horizon(state: &State, now_ms: i64, window_ms: i64) -> u32 {
    time_of(state, now_ms.saturating_sub(window_ms))
}

/// Every 1/16 of the window, drops the expired ids from the front of `Stored` (their
/// slots then name nothing) and starts a sweep of the table that takes those slots out
/// in place, `budget` slots a call (see [`Table::sweep_step`]); moves the base time
/// forward when the times would overflow. Drops expired runs, up to
/// [`RUN_EXPIRE_BUDGET`] a call.
fn sweep(state: &mut State, now_ms: i64, window_ms: i64, budget: usize) {
    let horizon = horizon(state, now_ms, window_ms);
    state.runs.expire(horizon, RUN_EXPIRE_BUDGET);
    if now_ms.saturating_sub(state.swept_ms) >= (window_ms / 16).max(TIME_UNIT_MS) {
        state.swept_ms = now_ms;
        // Rebase once the times are past half their range: the window is at most 7
        // days, far less than the other half.
        let shift = if horizon > u32::MAX / 2 { horizon } else { 0 };
        if state.stored.expire(horizon) > 0 {
            state.sweep = Some(state.table.start_sweep());
        }
        if shift > 0 {
            // Every expired run out first: shifted, its time would look current.
            state.runs.expire(horizon, usize::MAX);
            state.runs.shift_times(shift);
            for cell in state.prefix_cells.iter_mut() {
                *cell = cell.saturating_sub(shift);
            }
            state.stored.shift_times(shift);
            state.base_ms += i64::from(shift) * TIME_UNIT_MS;
        }
    }
    let State {
        table,
        stored,
        sweep,
        ..
    } = state;
    if let Some(under_way) = sweep
        && table.sweep_step(under_way, budget, |slot| stored.holds(*slot))
    {
        *sweep = None;
        table.shrink_after_sweep();
    }
}

/// Puts an id in the window: stored at `time`, in place `at`.
fn store(state: &mut State, tag: u32, time: u32, at: u64) {
    // Past `Stored`'s bound (billions of ids): not deduplicated.
    if let Some(seq) = state.stored.push(time, at) {
        state.table.insert(window_slot(tag, seq));
    }
}

/// The cell of `prefix` in `State::prefix_cells`: a keyed mix, so ids crafted to
/// share cells with another producer's need the secret.
fn prefix_cell(key: (u64, u64), prefix: u64) -> u16 {
    (tag_of((key.1, key.0), prefix) as usize % PREFIX_CELLS) as u16
}

/// Notes that a single 16-byte id whose prefix is in `cell` was claimed or stored at
/// `time` (never 0: 0 is "never").
fn mark_prefix_cell(state: &mut State, cell: u16, time: u32) {
    let cell = &mut state.prefix_cells[usize::from(cell)];
    *cell = (*cell).max(time.max(1));
}

/// Claims the call's runs (`split`'s, [`crate::idindex::split_ids`]) that can be
/// claimed whole (see "Runs" in the module docs), marking their records in `in_run`.
/// A run is claimed whole only when no id of it can be held anywhere else: no stored
/// or claimed run shares an id with it, no single 16-byte id with its prefix is claimed
/// by another append, or stored within the window as far as the prefix filter can
/// tell, or comes before it in this call. The others' ids are claimed one by one, as
/// singles: their hashes are returned (the split hashes only the singles).
fn claim_runs(
    state: &mut State,
    records: &[Option<&[u8]>],
    split: &SplitIds,
    horizon: u32,
    first_token: u64,
    in_run: &mut [bool],
) -> (Vec<RunClaim>, Vec<(u32, u64)>) {
    let mut claims = Vec::new();
    let mut hashed = Vec::new();
    // The prefix cells of this call's singles so far.
    let mut singles = [0u64; PREFIX_CELLS / 64];
    let mut rows = split.runs.iter().peekable();
    let mut i = 0;
    while i < records.len() {
        let Some(row) = rows.next_if(|row| row.index as usize == i) else {
            if let Some((prefix, _)) = records[i].and_then(id_parts) {
                let cell = usize::from(prefix_cell(state.key, prefix));
                singles[cell / 64] |= 1 << (cell % 64);
            }
            i += 1;
            continue;
        };
        let (len, cell) = (
            row.count as usize,
            usize::from(prefix_cell(state.key, row.prefix)),
        );
        let start = key(row.prefix, row.first);
        let whole = len >= RUN_IDS_MIN
            && state.pending_singles == 0
            && singles[cell / 64] & (1 << (cell % 64)) == 0
            && state.prefix_cells[cell] < horizon.max(1)
            && state.runs.overlapping(start, row.count).is_none()
            && !state
                .pending_runs
                .iter()
                .any(|c| c.overlaps(start, row.count));
        if whole {
            let claim = RunClaim {
                key: start,
                len: row.count,
                token: first_token + i as u64,
                record: i,
                index: 0,
            };
            state.pending_runs.push(claim);
            claims.push(claim);
            in_run[i..i + len].fill(true);
        } else {
            singles[cell / 64] |= 1 << (cell % 64);
            for k in 0..row.count {
                let id = crate::idindex::id_of_parts(row.prefix, row.first + u64::from(k));
                hashed.push((row.index + k, crate::idindex::hash_id(&id)));
            }
        }
        i += len;
    }
    (claims, hashed)
}

/// One pass over the records; `None` when another append holds a claim this call
/// needs (this pass's claims are then withdrawn, so two appends never wait on each
/// other).
fn claim_pass(
    state: &mut State,
    partitions: &[Arc<Partition>],
    records: &[Option<&[u8]>],
    split: &SplitIds,
    now_ms: i64,
    window_ms: i64,
) -> Option<Claimed> {
    let horizon = horizon(state, now_ms, window_ms);
    let now = time_of(state, now_ms);
    let first_token = state.next_token;
    state.next_token += records.len() as u64;
    let tokens = first_token..state.next_token;
    let mut in_run = vec![false; records.len()];
    let (mut runs, hashed) = claim_runs(state, records, split, horizon, first_token, &mut in_run);
    if split.singles.is_empty() && hashed.is_empty() {
        // Every id lies in a run claimed whole (an id outside one would be a single):
        // nothing can block, and each record is appended as it came.
        for run in &mut runs {
            run.index = run.record;
        }
        return Some(Claimed {
            decisions: Vec::new(),
            all_appended: true,
            runs,
        });
    }
    let mut decisions = Vec::with_capacity(records.len());
    let mut tags = vec![0u32; records.len()];
    let mut singles = Vec::new();
    for &(index, hash) in split.singles.iter().chain(&hashed) {
        let tag = tag_of(state.key, hash);
        tags[index as usize] = tag;
        singles.push(tag);
    }
    state.table.touch_homes(&singles);
    let mut appended = 0;
    let mut next_run = 0;
    let mut blocked = false;
    'records: for (i, record) in records.iter().enumerate() {
        if in_run[i] {
            if let Some(run) = runs.get_mut(next_run)
                && run.record == i
            {
                run.index = appended;
                next_run += 1;
            }
            decisions.push(Decision::Append {
                index: appended,
                claim: IdClaim::InRun,
            });
            appended += 1;
            continue;
        }
        let Some(id) = *record else {
            decisions.push(Decision::Append {
                index: appended,
                claim: IdClaim::NoId,
            });
            appended += 1;
            continue;
        };
        let tag = tags[i];
        for (_, claim) in state.pending.matches(tag) {
            let token = claim.token;
            match token.checked_sub(first_token) {
                Some(first) if (first as usize) < i => {
                    if records[first as usize] == Some(id) {
                        decisions.push(Decision::SameAs {
                            first: first as usize,
                        });
                        continue 'records;
                    }
                }
                // Another append's claim: it may be this id.
                _ => {
                    blocked = true;
                    break 'records;
                }
            }
        }
        let parts = id_parts(id);
        if let Some((prefix, suffix)) = parts {
            let id_key = key(prefix, suffix);
            if let Some(run) = state.pending_runs.iter().find(|c| c.overlaps(id_key, 1)) {
                if !tokens.contains(&run.token) {
                    // Another append's run holds it.
                    blocked = true;
                    break 'records;
                }
                // One of this call's runs, which come before any single of their
                // prefix (see `claim_runs`).
                decisions.push(Decision::SameAs {
                    first: run.record + (id_key - run.key) as usize,
                });
                continue 'records;
            }
            if let Some((time, at)) = state.runs.find(id_key)
                && time >= horizon
            {
                let (partition, offset) = unpack(at);
                if stored_id_is(partitions, partition, offset, id) {
                    decisions.push(Decision::Duplicate { partition, offset });
                    continue 'records;
                }
            }
        }
        for (_, slot) in state.table.matches(tag) {
            let Some((time, at)) = state.stored.get(slot) else {
                continue;
            };
            if time >= horizon {
                let (partition, offset) = unpack(at);
                if stored_id_is(partitions, partition, offset, id) {
                    decisions.push(Decision::Duplicate { partition, offset });
                    continue 'records;
                }
            }
        }
        let token = first_token + i as u64;
        state.pending.insert(Claim { tag, token });
        let cell = parts.map(|(prefix, _)| {
            let cell = prefix_cell(state.key, prefix);
            mark_prefix_cell(state, cell, now);
            state.pending_singles += 1;
            cell
        });
        decisions.push(Decision::Append {
            index: appended,
            claim: IdClaim::Single { tag, token, cell },
        });
        appended += 1;
    }
    if blocked {
        for decision in &decisions {
            if let Decision::Append {
                claim: IdClaim::Single { tag, token, cell },
                ..
            } = *decision
            {
                if let Some(slot) = state.pending.find(Claim { tag, token }) {
                    state.pending.remove(slot);
                }
                if cell.is_some() {
                    state.pending_singles -= 1;
                }
            }
        }
        state.pending_runs.retain(|c| !tokens.contains(&c.token));
        return None;
    }
    debug_assert_eq!(next_run, runs.len());
    Some(Claimed {
        decisions,
        all_appended: false,
        runs,
    })
}

/// The table tag of an id whose [`crate::idindex::hash_id`] is `hash` (never 0, the
/// empty slot's): two keyed multiply-xorshift rounds, so where an id lands depends on
/// the secret `key` (see the module docs).
fn tag_of(key: (u64, u64), hash: u64) -> u32 {
    const MUL: u64 = 0xd6e8_feb8_6659_fd93;
    let mut x = hash ^ key.0;
    x = (x ^ (x >> 32)).wrapping_mul(MUL);
    x ^= key.1;
    x = (x ^ (x >> 32)).wrapping_mul(MUL);
    ((x ^ (x >> 29)) >> 32).max(1) as u32
}

/// Whether the record at `partition` / `offset` is there and carries `id`.
fn stored_id_is(partitions: &[Arc<Partition>], partition: u32, offset: u64, id: &[u8]) -> bool {
    partitions
        .get(partition as usize)
        .and_then(|p| p.written_record(offset).ok().flatten())
        .is_some_and(|record: Record| record.id.as_deref() == Some(id))
}

/// Puts back the ids of the messages stored within the window (see the module docs).
fn rebuild(
    state: &mut State,
    partitions: &[Arc<Partition>],
    now_ms: i64,
    window_ms: i64,
) -> Result<()> {
    let horizon_ms = now_ms.saturating_sub(window_ms);
    // (time, tag, place, prefix of a 16-byte id) of every single id found, and the
    // runs found (see "Runs" in the module docs), put back in time order once all are
    // read (the partitions are read one after the other; `Stored` and `Runs` hold ids
    // in time order).
    let mut found: Vec<(u32, u32, u64, Option<u64>)> = Vec::new();
    let mut rows = Rows::default();
    for partition in partitions {
        rows.close(&mut found);
        let start = match partition.offset_for_timestamp(horizon_ms) {
            Ok(start) => start,
            // Served as unavailable until repaired: nothing can be appended to it, and
            // its ids are not known. The others still deduplicate.
            Err(Error::PartitionUnavailable { .. }) => continue,
            Err(error) => return Err(error),
        };
        let Some(mut offset) = start else {
            continue;
        };
        let mut newest = i64::MIN;
        loop {
            let read = match partition.read(offset, REBUILD_READ_RECORDS, REBUILD_READ_BYTES) {
                Ok(read) => read,
                // Retention moved the start past it: go on from the new start.
                Err(Error::OffsetOutOfRange { log_start, .. }) if log_start > offset => {
                    offset = log_start;
                    continue;
                }
                // A damaged batch (never served): its ids cannot be read, so they are
                // not deduplicated; the rest of the window still is. Failing here
                // instead would refuse every publish with an id to the whole topic
                // until an operator repaired the one partition.
                Err(error @ Error::Corrupt { .. }) => {
                    let Some(after) = offset_after_damage(partition, offset)? else {
                        break;
                    };
                    tracing::warn!(
                        partition = partition.id(),
                        from = offset,
                        to = after,
                        %error,
                        "dedup window: a damaged batch's ids are not deduplicated; `tidelog segment verify` finds it, `tidelog segment repair` mends it"
                    );
                    offset = after;
                    continue;
                }
                Err(error) => return Err(error),
            };
            for record in &read.records {
                // A timestamp ahead of the clock was not its append time (nothing is
                // appended in the future): the record is timed now, so it is kept one
                // window from here, and the running maximum of the records after it
                // is left alone (one clock ahead must not keep them all for ever).
                let stamped = if record.timestamp_ms > now_ms {
                    now_ms
                } else {
                    newest = newest.max(record.timestamp_ms);
                    newest
                };
                let (Some(id), Some(at)) = (&record.id, pack(partition.id(), record.offset)) else {
                    rows.close(&mut found);
                    continue;
                };
                if stamped < horizon_ms {
                    continue;
                }
                let time = time_of(state, stamped);
                let parts = id_parts(id);
                rows.add(parts, at, time, &mut found);
                found.push((
                    time,
                    tag_of(state.key, crate::idindex::hash_id(id)),
                    at,
                    parts.map(|(prefix, _)| prefix),
                ));
            }
            if read.next_offset <= offset || read.next_offset >= read.end_offset {
                break;
            }
            offset = read.next_offset;
        }
    }
    rows.close(&mut found);
    // Runs that share ids (stored again after the window) go in as singles.
    rows.runs.sort_by_key(|&(time, ..)| time);
    state.runs = Runs::default();
    for (time, start, len, at) in rows.runs {
        if state.runs.overlapping(start, len).is_none() {
            state.runs.insert(start, len, time, at);
            continue;
        }
        for i in 0..len {
            let id = (start + u128::from(i)).to_be_bytes();
            let tag = tag_of(state.key, crate::idindex::hash_id(&id));
            found.push((time, tag, at + u64::from(i), Some((start >> 64) as u64)));
        }
    }
    found.sort_by_key(|&(time, ..)| time);
    state.table = Table::with_slots(found.len() * 5 / 3);
    state.stored = Stored::default();
    state.prefix_cells.fill(0);
    for (time, tag, at, prefix) in found {
        if let Some(prefix) = prefix {
            mark_prefix_cell(state, prefix_cell(state.key, prefix), time);
        }
        store(state, tag, time, at);
    }
    state.rebuilt = true;
    state.sweep = None;
    state.swept_ms = now_ms;
    Ok(())
}

/// The runs of ids found while a window is read back: records in a row, at offsets in
/// a row, whose 16-byte ids make a run (see "Runs" in the module docs).
#[derive(Default)]
struct Rows {
    /// The row being read.
    open: Option<Row>,
    /// (time, first key, ids, first place) of each run found.
    runs: Vec<(u32, u128, u32, u64)>,
}

struct Row {
    prefix: u64,
    /// The suffix the next id needs to go on the row.
    next_suffix: u64,
    start: u128,
    len: u32,
    /// The first id's place, and the place the next id needs.
    at: u64,
    next_at: u64,
    /// The time of its newest id.
    time: u32,
    /// Where its ids start in `found`.
    from: usize,
}

impl Rows {
    /// The id with `parts` at place `at`, stored at `time`, about to be pushed to
    /// `found`: it goes on the open row or starts another.
    fn add(
        &mut self,
        parts: Option<(u64, u64)>,
        at: u64,
        time: u32,
        found: &mut Vec<(u32, u32, u64, Option<u64>)>,
    ) {
        // (The last suffix is left to singles: the next would wrap.)
        if let (Some((prefix, suffix)), Some(open)) = (parts, &mut self.open)
            && open.prefix == prefix
            && open.next_suffix == suffix
            && suffix < u64::MAX
            && open.next_at == at
            && open.len < u32::MAX
        {
            open.next_suffix = suffix + 1;
            open.len += 1;
            open.next_at = at + 1;
            open.time = time;
            return;
        }
        self.close(found);
        if let Some((prefix, suffix)) = parts
            && suffix < u64::MAX
        {
            self.open = Some(Row {
                prefix,
                next_suffix: suffix + 1,
                start: key(prefix, suffix),
                len: 1,
                at,
                next_at: at + 1,
                time,
                from: found.len(),
            });
        }
    }

    /// Ends the open row: a run if long enough (its ids then leave `found`).
    fn close(&mut self, found: &mut Vec<(u32, u32, u64, Option<u64>)>) {
        if let Some(row) = self.open.take()
            && row.len as usize >= RUN_IDS_MIN
        {
            found.truncate(row.from);
            self.runs.push((row.time, row.start, row.len, row.at));
        }
    }
}

/// The first offset after the damaged batch a read at `damaged` failed on (`None`: no
/// readable offset follows it). A read at an offset inside a damaged batch fails and a
/// read past it does not, so a gallop from `damaged` finds a readable offset and a
/// binary search the boundary: about 2 log2(batch size) reads. (Past a second
/// damaged batch close behind the first, the boundary found may lie past both; their
/// ids are then all left out.)
fn offset_after_damage(partition: &Partition, damaged: u64) -> Result<Option<u64>> {
    let readable = |offset: u64| -> Result<Option<bool>> {
        match partition.read(offset, 1, 1) {
            Ok(_) => Ok(Some(true)),
            Err(Error::Corrupt { .. }) => Ok(Some(false)),
            Err(Error::OffsetOutOfRange { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    };
    let end = partition.end_offset()?;
    let (mut bad, mut step) = (damaged, 1u64);
    let good = loop {
        let probe = bad.saturating_add(step).min(end);
        if probe <= bad {
            return Ok(None);
        }
        match readable(probe)? {
            Some(true) => break probe,
            Some(false) => {
                bad = probe;
                step = step.saturating_mul(2);
            }
            // At (or past) the end: nothing readable follows.
            None => return Ok(None),
        }
    };
    let mut good = good;
    while good - bad > 1 {
        let middle = bad + (good - bad) / 2;
        match readable(middle)? {
            Some(true) => good = middle,
            Some(false) => bad = middle,
            None => return Ok(None),
        }
    }
    Ok(Some(good))
}

/// Whether the dedup window decides a client batch's fate (see
/// [`DedupWindow::append_batch`]): only with a window on and ids in the batch. A batch
/// it has no say on is appended as it came. `InvalidArgument` for a batch the topic
/// cannot take: with `assign_ids`, every record must carry an id.
pub(crate) fn window_decides(
    checked: &CheckedBatch,
    window_ms: u64,
    assign_ids: bool,
) -> Result<bool> {
    if assign_ids && checked.records_without_id() > 0 {
        let index = (0..checked.header.record_count)
            .zip(
                checked
                    .ids
                    .iter()
                    .map(|id| id.index)
                    .chain(std::iter::repeat(u32::MAX)),
            )
            .find(|(i, with)| i != with)
            .map_or(0, |(i, _)| i);
        return Err(Error::invalid(format!(
            "record {index} of the batch has no id, but the topic assigns ids (assign_ids), which a batch cannot take without re-encoding: give every record of the batch an id, or publish it with Publish"
        )));
    }
    Ok(window_ms > 0 && !checked.ids.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bound: at most 64 bytes of memory an id, 1,000,000 ids in at most
    /// 64 MiB. The window stays within 44 bytes an id at every size it passes through
    /// (a slot of 8 bytes at a load of 0.4 to 0.8, 12 bytes of time and place in
    /// buffers at least half full), and within it after sweeps.
    #[test]
    fn an_id_costs_at_most_44_bytes() {
        let clock = crate::clock::ManualClock::new(1_000_000_000);
        let window = DedupWindow::new(clock.clone(), Arc::new(IdGenerator::new(1)));
        let mut state = window.lock();
        let bytes = |state: &State| {
            state.table.memory_bytes() + state.stored.memory_bytes() + state.pending.memory_bytes()
        };
        let mut rng = crate::rng::SeededRng::new(1);
        let mut worst = 0.0f64;
        for used in 1..=1_000_000u64 {
            // A time unit every 1,000 ids.
            let time = time_of(&state, 1_000_000_000 + (used / 1000) as i64 * TIME_UNIT_MS);
            store(&mut state, (rng.next() >> 32).max(1) as u32, time, used);
            if used >= 1024 {
                worst = worst.max(bytes(&state) as f64 / used as f64);
            }
        }
        assert!(worst <= 44.01, "{worst:.2} bytes an id");
        assert!(
            worst > 38.0,
            "{worst:.2} bytes an id: the bound is not approached"
        );
        assert!(bytes(&state) <= 64 << 20);
        // A sweep that drops the oldest 10% works in place (the load stays above 0.4)...
        let window_ms = 1_000_000;
        let len = state.table.len();
        let now = 1_000_000_000 + window_ms + 100 * TIME_UNIT_MS;
        state.swept_ms = 0;
        sweep(&mut state, now, window_ms, usize::MAX);
        assert_eq!((state.table.used, state.table.len()), (900_001, len));
        assert_eq!(state.stored.len(), 900_001);
        assert!(bytes(&state) / state.table.used <= 44);
        // ... and one that drops most rebuilds the table at a load of 0.6, and shrinks
        // the buffers.
        state.swept_ms = 0;
        sweep(&mut state, now + 800 * TIME_UNIT_MS, window_ms, usize::MAX);
        assert_eq!(state.table.used, 100_001);
        assert_eq!(state.stored.len(), 100_001);
        let bytes = bytes(&state);
        assert!(
            bytes / state.table.used <= 36,
            "{} bytes an id after a sweep",
            bytes / state.table.used
        );
        // Every id left is still found, with its place.
        let mut rng = crate::rng::SeededRng::new(1);
        for used in 1..=1_000_000u64 {
            let tag = (rng.next() >> 32).max(1) as u32;
            let found = state
                .table
                .matches(tag)
                .filter_map(|(_, slot)| state.stored.get(slot))
                .any(|(_, at)| at == used);
            assert_eq!(found, used >= 900_000, "id {used}");
        }
    }

    /// Not a test: the window's own cost per id, without the log (the claims of 2,000
    /// batches of 1,000 new ids, each settled as if appended, the table growing from
    /// empty to 2,000,000 ids, or `WINDOW_IDS`; three rounds, each on a fresh window). Run with
    /// `cargo test --release -p tidelog-storage --lib window_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn window_timing() {
        // `WINDOW_IDS=N` for another size (e.g. 50000: a table within the caches).
        let total = std::env::var("WINDOW_IDS")
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n >= 20_000)
            .unwrap_or(2_000_000);
        const BATCH: usize = 1000;
        let ids: Vec<[u8; 16]> = (0..total as u64)
            .map(|i| {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&i.to_le_bytes());
                id[8..].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
                id
            })
            .collect();
        let hashes: Vec<u64> = ids.iter().map(|id| crate::idindex::hash_id(id)).collect();
        for round in 0..3 {
            let clock = crate::clock::ManualClock::new(1_000_000_000);
            let window = DedupWindow::new(clock.clone(), Arc::new(IdGenerator::new(1)));
            let start = std::time::Instant::now();
            for (n, chunk) in ids.chunks(BATCH).enumerate() {
                let records: Vec<Option<&[u8]>> = chunk.iter().map(|id| Some(&id[..])).collect();
                // No two ids share a prefix: every one a single, hashed beforehand.
                let split = SplitIds {
                    singles: (0..chunk.len())
                        .map(|i| (i as u32, hashes[n * BATCH + i]))
                        .collect(),
                    runs: Vec::new(),
                };
                let decisions = window.claim(&[], &records, &split, 120_000).unwrap();
                window.finish(&decisions, Some((0, (n * BATCH) as u64)));
                clock.advance_ms(1);
            }
            let elapsed = start.elapsed();
            assert_eq!(window.len(), total);
            let bytes_an_id = window.memory_bytes() as f64 / total as f64;
            // A sweep: the window moves past the first 1/16 of the ids, and the next
            // claims drop them, a step each, under the window's lock. The longest claim
            // of a fresh batch (1,000 new ids) while the sweep runs is its stall.
            clock.advance_ms(120_000 - (total / BATCH) as i64 * 15 / 16);
            let mut longest = std::time::Duration::ZERO;
            let mut claims = 0u64;
            loop {
                let fresh: Vec<[u8; 16]> = (0..BATCH as u64)
                    .map(|i| {
                        let mut id = [0xa5u8; 16];
                        id[..8].copy_from_slice(&i.to_le_bytes());
                        id[8..].copy_from_slice(&claims.to_le_bytes());
                        id
                    })
                    .collect();
                let records: Vec<Option<&[u8]>> = fresh.iter().map(|id| Some(&id[..])).collect();
                let split = crate::idindex::split_ids(
                    fresh.iter().enumerate().map(|(i, id)| (i as u32, &id[..])),
                );
                let claim_start = std::time::Instant::now();
                let decisions = window.claim(&[], &records, &split, 120_000).unwrap();
                longest = longest.max(claim_start.elapsed());
                window.finish(&decisions, Some((1, claims * BATCH as u64)));
                claims += 1;
                if window.lock().sweep.is_none() {
                    break;
                }
            }
            let left = window.lock().table.used - claims as usize * BATCH;
            // To within the stored times' unit (8 ms: 8 batches).
            assert!(
                (total * 15 / 16 - 10 * BATCH..total * 15 / 16 + 10 * BATCH).contains(&left),
                "{left} ids left after the sweep"
            );
            let sweep = longest;
            println!(
                "round {round}: {:.0} ns an id, {:.1} bytes an id; sweeping 1/16 out took {claims} claims, the longest {:.2} ms",
                elapsed.as_nanos() as f64 / total as f64,
                bytes_an_id,
                sweep.as_secs_f64() * 1000.0
            );
        }
    }

    #[test]
    fn locations_pack_into_63_bits() {
        assert_eq!(
            unpack(pack(9_999, (1 << 49) - 1).unwrap()),
            (9_999, (1 << 49) - 1)
        );
        assert_eq!(pack(0, 1 << 49), None);
        assert_eq!(pack(1 << 14, 0), None);
        assert_eq!(pack((1 << 14) - 1, (1 << 49) - 1).unwrap() >> 63, 0);
    }
}
