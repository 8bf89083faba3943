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
//! their own. So a kill -9 or a restart forgets nothing the log kept; an id is forgotten
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
//! # Races
//! Claiming ids and recording where they went are two short critical sections around
//! the append; between them a claimed id is *pending*, in the table of claims under
//! way with its claim's token. A publish that meets another's pending id (by tag)
//! waits for that append to return (microseconds: a `pwrite`) and is then answered
//! with its offset, so of concurrent duplicates one is stored and the others get its
//! offset. A failed append releases its claims and stores none.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;

use crate::batch::{NewRecord, Record};
use crate::client_batch::CheckedBatch;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::limits::DEDUP_WINDOW_MS_MAX;
use crate::msgid::IdGenerator;
use crate::partition::{Appended, Partition, id_hashes};

mod table;
use table::{Claim, Stored, Sweep, Table, window_slot};

/// Slots a step of a sweep reads for each id claimed, and at least.
const SWEEP_SLOTS_PER_ID: usize = 4;
const SWEEP_STEP_SLOTS_MIN: usize = 4096;

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
    /// assigned (the path of messages without ids).
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
    settled: Condvar,
    clock: Arc<dyn Clock>,
    ids: Arc<IdGenerator>,
}

/// What the claim pass decided for one record.
#[derive(Debug, Clone, Copy)]
enum Decision {
    /// To append, as the `index`th appended record; `claim` = (tag, token) of its id.
    Append {
        index: usize,
        claim: Option<(u32, u64)>,
    },
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
                // Before any time a window can reach back to, so no stored time
                // clamps to 0 (which would keep it forever).
                base_ms: now_ms.saturating_sub(2 * DEDUP_WINDOW_MS_MAX as i64),
                swept_ms: now_ms,
                sweep: None,
                next_token: 0,
            }),
            settled: Condvar::new(),
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
        self.lock().stored.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory the window holds.
    pub fn memory_bytes(&self) -> usize {
        let state = self.lock();
        state.table.memory_bytes() + state.stored.memory_bytes() + state.pending.memory_bytes()
    }

    /// Forgets everything (the topic's window was changed): the next publish with an id
    /// reads the window back from the log. Waits for appends under way to settle.
    pub fn reset(&self) {
        let mut state = self.lock();
        while state.pending.used > 0 {
            state = self.settled.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.table = Table::default();
        state.stored = Stored::default();
        state.sweep = None;
        state.rebuilt = false;
    }

    /// Appends `records` to partition `partition` of `partitions` (the topic whose
    /// window this is), giving ids where `assign_ids` asks and deduplicating ids within
    /// `window_ms` (0 = off).
    pub(crate) fn append(
        &self,
        partitions: &[Arc<Partition>],
        partition: u32,
        mut records: Vec<NewRecord>,
        window_ms: u64,
        assign_ids: bool,
    ) -> Result<Placed> {
        let target = partitions.get(partition as usize).ok_or_else(|| {
            Error::invalid(format!(
                "the topic has partitions 0..{}, not {partition}",
                partitions.len()
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
        let hashes = id_hashes(&records);
        let ids: Vec<Option<&[u8]>> = records.iter().map(|r| r.id.as_deref()).collect();
        let decisions = self.claim(partitions, &ids, &hashes, window_ms)?;
        drop(ids);
        // Usually every record is new: append them as they came, without a copy.
        let (kept, hashes): (Vec<NewRecord>, Vec<(u32, u64)>) = if decisions
            .iter()
            .all(|d| matches!(d, Decision::Append { .. }))
        {
            (records, hashes)
        } else {
            let kept: Vec<NewRecord> = records
                .into_iter()
                .zip(&decisions)
                .filter(|(_, d)| matches!(d, Decision::Append { .. }))
                .map(|(record, _)| record)
                .collect();
            let hashes = id_hashes(&kept);
            (kept, hashes)
        };
        let appended = if kept.is_empty() {
            None
        } else {
            match target.append_hashed(&kept, hashes) {
                Ok(appended) => Some(appended),
                Err(error) => {
                    self.finish(&decisions, None);
                    return Err(error);
                }
            }
        };
        let base = appended.as_ref().map_or(0, |a| a.base_offset);
        self.finish(&decisions, Some((partition, base)));
        let placements = decisions
            .iter()
            .enumerate()
            .map(|(i, decision)| {
                let (at_partition, offset, duplicate) = match *decision {
                    Decision::Append { index, .. } => (partition, base + index as u64, false),
                    Decision::Duplicate { partition, offset } => (partition, offset, true),
                    Decision::SameAs { first } => match decisions[first] {
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
        partitions: &[Arc<Partition>],
        partition: u32,
        bytes: Bytes,
        checked: &CheckedBatch,
        now_ms: i64,
        window_ms: u64,
        assign_ids: bool,
    ) -> Result<BatchPlaced> {
        let target = partitions.get(partition as usize).ok_or_else(|| {
            Error::invalid(format!(
                "the topic has partitions 0..{}, not {partition}",
                partitions.len()
            ))
        })?;
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
        if window_ms == 0 || checked.ids.is_empty() {
            let appended = target.append_checked(bytes, checked, now_ms)?;
            return Ok(BatchPlaced {
                appended: Some(appended),
                duplicates: Vec::new(),
            });
        }
        let mut ids: Vec<Option<&[u8]>> = vec![None; checked.header.record_count as usize];
        for id in &checked.ids {
            ids[id.index as usize] = Some(checked.id(&bytes, id));
        }
        let hashes: Vec<(u32, u64)> = checked.ids.iter().map(|id| (id.index, id.hash)).collect();
        let decisions = self.claim(partitions, &ids, &hashes, window_ms)?;
        // Records without an id have no say: the records with ids decide.
        let with_id = |d: &&Decision| !matches!(d, Decision::Append { claim: None, .. });
        let appending = decisions
            .iter()
            .filter(with_id)
            .filter(|d| matches!(d, Decision::Append { .. }))
            .count();
        if appending == checked.ids.len() {
            let result = target.append_checked(bytes, checked, now_ms);
            let base = result.as_ref().ok().map(|a| (partition, a.base_offset));
            self.finish(&decisions, base);
            return Ok(BatchPlaced {
                appended: Some(result?),
                duplicates: Vec::new(),
            });
        }
        // Nothing is appended: release the claims taken.
        self.finish(&decisions, None);
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
        hashes: &[(u32, u64)],
        window_ms: u64,
    ) -> Result<Vec<Decision>> {
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
            match claim_pass(&mut state, partitions, records, hashes, now_ms, window_ms) {
                Some(decisions) => return Ok(decisions),
                None => {
                    state = self.settled.wait(state).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    /// Settles the claims where the append put them (`Some((partition, base offset))`),
    /// or releases them when it failed (`None`): each claim leaves the claims under
    /// way, and the ids appended go into the table.
    fn finish(&self, decisions: &[Decision], appended: Option<(u32, u64)>) {
        let mut state = self.lock();
        let time = time_of(&state, self.clock.now_ms());
        let claims = decisions.iter().filter_map(|decision| match *decision {
            Decision::Append {
                index,
                claim: Some((tag, token)),
            } => Some((index, tag, token)),
            _ => None,
        });
        if appended.is_some() {
            // Where the ids go (claiming read them, but the append in between may
            // have evicted them): read at once, so the misses overlap.
            let tags: Vec<u32> = claims.clone().map(|(_, tag, _)| tag).collect();
            state.table.touch_homes(&tags);
        }
        for (index, tag, token) in claims {
            if let Some(slot) = state.pending.find(Claim { tag, token }) {
                state.pending.remove(slot);
            }
            // Failed, or an offset past 2^49: not deduplicated.
            if let Some(at) =
                appended.and_then(|(partition, base)| pack(partition, base + index as u64))
            {
                store(&mut state, tag, time, at);
            }
        }
        drop(state);
        self.settled.notify_all();
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
/// forward when the times would overflow.
fn sweep(state: &mut State, now_ms: i64, window_ms: i64, budget: usize) {
    if now_ms.saturating_sub(state.swept_ms) >= (window_ms / 16).max(TIME_UNIT_MS) {
        state.swept_ms = now_ms;
        let horizon = horizon(state, now_ms, window_ms);
        // Rebase once the times are past half their range: the window is at most 7
        // days, far less than the other half.
        let shift = if horizon > u32::MAX / 2 { horizon } else { 0 };
        if state.stored.expire(horizon) > 0 {
            state.sweep = Some(state.table.start_sweep());
        }
        if shift > 0 {
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

/// One pass over the records; `None` when another append holds a claim this call
/// needs (this pass's claims are then withdrawn, so two appends never wait on each
/// other).
fn claim_pass(
    state: &mut State,
    partitions: &[Arc<Partition>],
    records: &[Option<&[u8]>],
    hashes: &[(u32, u64)],
    now_ms: i64,
    window_ms: i64,
) -> Option<Vec<Decision>> {
    let horizon = horizon(state, now_ms, window_ms);
    let first_token = state.next_token;
    state.next_token += records.len() as u64;
    let mut decisions = Vec::with_capacity(records.len());
    let mut tags = vec![0u32; records.len()];
    for &(index, hash) in hashes {
        tags[index as usize] = tag_of(state.key, hash);
    }
    state.table.touch_homes(&tags);
    let mut appended = 0;
    let mut blocked = false;
    'records: for (i, record) in records.iter().enumerate() {
        let Some(id) = *record else {
            decisions.push(Decision::Append {
                index: appended,
                claim: None,
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
        decisions.push(Decision::Append {
            index: appended,
            claim: Some((tag, token)),
        });
        appended += 1;
    }
    if blocked {
        for decision in &decisions {
            if let Decision::Append {
                claim: Some((tag, token)),
                ..
            } = *decision
                && let Some(slot) = state.pending.find(Claim { tag, token })
            {
                state.pending.remove(slot);
            }
        }
        return None;
    }
    Some(decisions)
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
    // (time, tag, place) of every id found, put back in time order once all are read
    // (the partitions are read one after the other; `Stored` holds ids in time order).
    let mut found: Vec<(u32, u32, u64)> = Vec::new();
    for partition in partitions {
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
                newest = newest.max(record.timestamp_ms);
                let (Some(id), Some(at)) = (&record.id, pack(partition.id(), record.offset)) else {
                    continue;
                };
                if newest < horizon_ms {
                    continue;
                }
                found.push((
                    time_of(state, newest),
                    tag_of(state.key, crate::idindex::hash_id(id)),
                    at,
                ));
            }
            if read.next_offset <= offset || read.next_offset >= read.end_offset {
                break;
            }
            offset = read.next_offset;
        }
    }
    found.sort_by_key(|&(time, ..)| time);
    state.table = Table::with_slots(found.len() * 5 / 3);
    state.stored = Stored::default();
    for (time, tag, at) in found {
        store(state, tag, time, at);
    }
    state.rebuilt = true;
    state.sweep = None;
    state.swept_ms = now_ms;
    Ok(())
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
    let end = partition.end_offset();
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
                let batch_hashes: Vec<(u32, u64)> = (0..chunk.len())
                    .map(|i| (i as u32, hashes[n * BATCH + i]))
                    .collect();
                let decisions = window.claim(&[], &records, &batch_hashes, 120_000).unwrap();
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
                let batch_hashes: Vec<(u32, u64)> = fresh
                    .iter()
                    .enumerate()
                    .map(|(i, id)| (i as u32, crate::idindex::hash_id(id)))
                    .collect();
                let claim_start = std::time::Instant::now();
                let decisions = window.claim(&[], &records, &batch_hashes, 120_000).unwrap();
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
