//! The dedup window's runs (see "Runs" in the module docs of [`super`]): ids of 16
//! bytes that share their first 8 bytes (the *prefix*) and whose last 8 bytes (the
//! *suffix*, big-endian) count up by one from record to record, kept as one range each.

use std::collections::{BTreeMap, VecDeque};

/// The key of a range: prefix in the high 64 bits, first suffix in the low.
pub(super) fn key(prefix: u64, suffix: u64) -> u128 {
    u128::from(prefix) << 64 | u128::from(suffix)
}

/// A stored run: `len` ids from its key's suffix, stored at window time `time`, the
/// first at place `at` (partition and offset packed as in [`super`]), the others at
/// the offsets after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub len: u32,
    pub time: u32,
    pub at: u64,
    /// Tells this run from a later one stored under the same key (see [`Runs::expire`]).
    seq: u64,
}

/// A run claimed by an append under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RunClaim {
    pub key: u128,
    pub len: u32,
    /// The claim's token (as a single id's: the call's first token plus `record`).
    pub token: u64,
    /// The run's first record, in the call.
    pub record: usize,
    /// The index, among the records the append stores, of the run's first record.
    pub index: usize,
}

impl RunClaim {
    /// Whether this claim's ids and `len` ids from `key` share one.
    pub fn overlaps(&self, key: u128, len: u32) -> bool {
        overlap(self.key, self.len, key, len)
    }
}

fn overlap(a: u128, a_len: u32, b: u128, b_len: u32) -> bool {
    // Keys of one prefix only: the prefix is part of both.
    a >> 64 == b >> 64 && a <= last(b, b_len) && b <= last(a, a_len)
}

/// The key of the last id of the `len` ids from `key` (a run never crosses a prefix:
/// [`super`] makes runs only of suffixes that do not wrap).
fn last(key: u128, len: u32) -> u128 {
    key + u128::from(len.max(1) - 1)
}

/// The stored runs, by key, and the order they were stored in (for expiry). Runs
/// stored are disjoint: a run is stored only when it shares no id with one stored or
/// claimed (see [`super`]).
#[derive(Debug, Default)]
pub(super) struct Runs {
    by_key: BTreeMap<u128, Run>,
    /// (time, seq, key) of each run, in the order stored (times do not go down).
    order: VecDeque<(u32, u64, u128)>,
    next_seq: u64,
    /// Ids in the runs held.
    ids: usize,
}

impl Runs {
    pub fn ids(&self) -> usize {
        self.ids
    }

    /// The stored run that shares an id with the `len` ids from `key`, if any (at
    /// most one can start at or before the last of them and reach the range: the
    /// runs are disjoint, so checking the one starting closest below the last id
    /// suffices).
    pub fn overlapping(&self, key: u128, len: u32) -> Option<(u128, Run)> {
        let (&start, &run) = self.by_key.range(..=last(key, len)).next_back()?;
        overlap(start, run.len, key, len).then_some((start, run))
    }

    /// The time and place of the id `key` if a stored run holds it.
    pub fn find(&self, key: u128) -> Option<(u32, u64)> {
        let (start, run) = self.overlapping(key, 1)?;
        Some((run.time, run.at + (key - start) as u64))
    }

    /// Stores `len` ids from `key`, at `time`, the first at `at`. The caller has
    /// checked that no stored run shares an id with them.
    pub fn insert(&mut self, key: u128, len: u32, time: u32, at: u64) {
        debug_assert!(self.overlapping(key, len).is_none());
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_key.insert(key, Run { len, time, at, seq });
        self.order.push_back((time, seq, key));
        self.ids += len as usize;
    }

    /// Drops up to `budget` runs stored before `horizon`, oldest first; returns how
    /// many. A run left past its time until then is still held, but a lookup checks
    /// the time.
    pub fn expire(&mut self, horizon: u32, budget: usize) -> usize {
        let mut dropped = 0;
        while dropped < budget {
            match self.order.front() {
                Some(&(time, seq, key)) if time < horizon => {
                    self.order.pop_front();
                    if let Some(run) = self.by_key.get(&key)
                        && run.seq == seq
                    {
                        self.ids -= run.len as usize;
                        self.by_key.remove(&key);
                    }
                    dropped += 1;
                }
                _ => break,
            }
        }
        if self.order.capacity() > 64 && self.order.len() < self.order.capacity() / 4 {
            self.order.shrink_to(self.order.len() * 2);
        }
        dropped
    }

    /// Moves every time down by `shift` (the window's base time moved forward).
    pub fn shift_times(&mut self, shift: u32) {
        for run in self.by_key.values_mut() {
            run.time = run.time.saturating_sub(shift);
        }
        for (time, ..) in &mut self.order {
            *time = time.saturating_sub(shift);
        }
    }

    /// Bytes of memory held, estimated: a B-tree entry of 16 + 24 bytes in nodes at
    /// least half full (a node holds 11, in about 460 bytes), and 32 bytes of the
    /// order's buffer, at least a quarter used. So a run costs at most about 212
    /// bytes, and a run of `RUN_IDS_MIN` ids or more at most 27 bytes an id; the
    /// usual runs (hundreds of ids) a fraction of a byte.
    pub fn memory_bytes(&self) -> usize {
        const NODE_BYTES: usize = 460;
        const NODE_ENTRIES: usize = 11;
        self.by_key.len().div_ceil(NODE_ENTRIES / 2 + 1) * NODE_BYTES
            + self.order.capacity() * std::mem::size_of::<(u32, u64, u128)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_key_is_prefix_then_suffix() {
        assert_eq!(key(1, 2), 1 << 64 | 2);
    }

    proptest! {
        /// Against a model (a map of every id held to its time and place): finds,
        /// overlaps and expiry, with runs of two prefixes stored wherever they do not
        /// overlap one held.
        #[test]
        fn runs_match_a_model_of_ids(
            steps in proptest::collection::vec((0u64..2, 0u64..200, 1u32..20, 0u32..3), 1..200),
        ) {
            let mut runs = Runs::default();
            let mut model: std::collections::BTreeMap<u128, (u32, u64)> = Default::default();
            let mut time = 0u32;
            for (n, &(prefix, suffix, len, action)) in steps.iter().enumerate() {
                let start = key(prefix, suffix);
                let held = (0..len).any(|i| model.contains_key(&(start + u128::from(i))));
                prop_assert_eq!(runs.overlapping(start, len).is_some(), held);
                match action {
                    0 | 1 if !held => {
                        let at = n as u64 * 1000;
                        runs.insert(start, len, time, at);
                        for i in 0..len {
                            model.insert(start + u128::from(i), (time, at + u64::from(i)));
                        }
                    }
                    2 => {
                        time += 1;
                        let horizon = time.saturating_sub(5);
                        // Drop in small steps: a step may stop anywhere.
                        while runs.expire(horizon, 2) > 0 {}
                        model.retain(|_, &mut (t, _)| t >= horizon);
                    }
                    _ => {}
                }
                prop_assert_eq!(runs.ids(), model.len());
                for probe in 0..220u64 {
                    let k = key(prefix, probe);
                    prop_assert_eq!(runs.find(k), model.get(&k).copied());
                }
            }
        }
    }

    use crate::idindex::RUN_IDS_MIN;

    #[test]
    fn a_run_of_eight_ids_costs_at_most_27_bytes_an_id() {
        let mut runs = Runs::default();
        let mut worst = 0f64;
        for n in 0..100_000u64 {
            // Each run its own prefix: the most entries for the ids.
            runs.insert(key(n, 0), RUN_IDS_MIN as u32, 0, n * 8);
            if n >= 64 {
                worst = worst.max(runs.memory_bytes() as f64 / runs.ids() as f64);
            }
        }
        assert!(worst <= 27.0, "{worst:.1} bytes an id");
        // Expired, the buffer gives its memory back.
        while runs.expire(1, 1000) > 0 {}
        assert_eq!(runs.ids(), 0);
        assert!(runs.memory_bytes() < 64 * 32 + 8);
    }
}
