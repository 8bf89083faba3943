//! The dedup window's two structures (see the module docs of [`super`]): an
//! open-addressing [`Table`] of slots found by tag, and [`Stored`], the ids' times
//! and places in the order they were stored.

use std::collections::VecDeque;

/// Smallest table, in slots.
pub(super) const SLOTS_MIN: usize = 1024;

/// Bytes of a memory page: a fresh table is written once a page (see
/// [`Table::with_slots`]).
const PAGE_BYTES: usize = 4096;

/// Ids [`Stored`] holds at most: a slot names its id by the low 32 bits of its
/// sequence number, which tell the ids apart while fewer than 2^32 are held (about
/// 100 GB of ids, far past any memory this runs in; an id past it is not
/// deduplicated rather than confused with another).
const STORED_MAX: usize = (u32::MAX - 1) as usize;

/// A slot of a [`Table`]: a tag (0 = empty) and what goes with it.
pub(super) trait Slot: Copy + Default {
    fn tag(&self) -> u32;
}

/// The window's slot: the id's tag in the high 32 bits, the low 32 bits of its
/// sequence number in [`Stored`] below (see [`window_slot`]).
impl Slot for u64 {
    fn tag(&self) -> u32 {
        (*self >> 32) as u32
    }
}

/// The window's slot of the id tagged `tag`, stored as sequence number `seq`.
pub(super) fn window_slot(tag: u32, seq: u64) -> u64 {
    u64::from(tag) << 32 | (seq & u64::from(u32::MAX))
}

/// An id claimed by an append under way: its tag and the claim's token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Claim {
    pub tag: u32,
    pub token: u64,
}

impl Slot for Claim {
    fn tag(&self) -> u32 {
        self.tag
    }
}

/// Where a sweep of a [`Table`] stands (see [`Table::start_sweep`]).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Sweep {
    /// The slot the next step reads first.
    next: usize,
    /// Slots still to read (at least).
    left: usize,
    /// The table's length when the sweep started.
    len: usize,
}

/// Open addressing with linear probing; a tag's home slot is `tag * len >> 32`, so
/// any table length works and deletion shifts the run back (no tombstones). A probe
/// reads the slots from the tag's home to the first empty one.
#[derive(Debug, Default)]
pub(super) struct Table<S> {
    slots: Vec<S>,
    pub used: usize,
}

impl<S: Slot> Table<S> {
    /// A table of `count` (at least [`SLOTS_MIN`]) empty slots. The zeroed memory
    /// comes from the allocator (fresh pages from the kernel for a large table of
    /// integers) without a pass writing every slot; one slot of each page is written
    /// at once, so the kernel maps each page once for writing, rather than first
    /// mapping its shared zero page for a probe's read and then copying it on the first
    /// insert. (Transparent huge pages were tried for the table: the kernel's zeroing
    /// of each new 2 MiB page cost more than the misses saved; see BENCHMARKS.md.)
    pub fn with_slots(count: usize) -> Table<S> {
        let count = count.max(SLOTS_MIN);
        let mut slots = vec![S::default(); count];
        // `black_box`: a store of a zero known to the compiler into zeroed memory
        // could be dropped as a no-op.
        let step = (PAGE_BYTES / std::mem::size_of::<S>().max(1)).max(1);
        for index in (0..count).step_by(step) {
            slots[index] = std::hint::black_box(S::default());
        }
        Table { slots, used: 0 }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn home(&self, tag: u32) -> usize {
        ((u64::from(tag) * self.len() as u64) >> 32) as usize
    }

    fn next(&self, index: usize) -> usize {
        if index + 1 == self.len() {
            0
        } else {
            index + 1
        }
    }

    /// Slot `index` (past the end: empty).
    pub fn get(&self, index: usize) -> S {
        self.slots.get(index).copied().unwrap_or_default()
    }

    fn set(&mut self, index: usize, slot: S) {
        if let Some(here) = self.slots.get_mut(index) {
            *here = slot;
        }
    }

    /// The slots holding `tag`, with their indexes, in probe order.
    pub fn matches(&self, tag: u32) -> impl Iterator<Item = (usize, S)> + '_ {
        let mut index = self.home(tag);
        let mut left = self.len();
        std::iter::from_fn(move || {
            while left > 0 {
                let slot = self.get(index);
                if slot.tag() == 0 {
                    return None;
                }
                let here = index;
                index = self.next(index);
                left -= 1;
                if slot.tag() == tag {
                    return Some((here, slot));
                }
            }
            None
        })
    }

    /// The index of a slot equal to `slot`.
    pub fn find(&self, slot: S) -> Option<usize>
    where
        S: PartialEq,
    {
        self.matches(slot.tag())
            .find(|&(_, here)| here == slot)
            .map(|(index, _)| index)
    }

    /// Puts `slot` (whose tag is not 0) in; the table doubles at a load of 0.8.
    pub fn insert(&mut self, slot: S) {
        if (self.used + 1) * 5 > self.len() * 4 {
            self.resize(self.len() * 2);
        }
        self.place(slot);
        self.used += 1;
    }

    /// Puts `slot` in the first empty slot from its home (there is one: the load is at
    /// most 0.8), without counting it.
    fn place(&mut self, slot: S) {
        let mut index = self.home(slot.tag());
        while self.get(index).tag() != 0 {
            index = self.next(index);
        }
        self.set(index, slot);
    }

    pub fn remove(&mut self, mut hole: usize) {
        let mut index = hole;
        loop {
            index = self.next(index);
            let slot = self.get(index);
            if slot.tag() == 0 {
                break;
            }
            let home = self.home(slot.tag());
            // The slot stays when its home lies cyclically in (hole, index].
            let stays = if hole <= index {
                hole < home && home <= index
            } else {
                hole < home || home <= index
            };
            if !stays {
                self.set(hole, slot);
                hole = index;
            }
        }
        self.set(hole, S::default());
        self.used -= 1;
    }

    /// Rebuilds the table in `count` slots with the slots `keep` keeps.
    pub fn resize_keeping(&mut self, count: usize, keep: impl Fn(&S) -> bool) {
        let old = std::mem::replace(self, Table::with_slots(count));
        for slot in old.slots {
            if slot.tag() != 0 && keep(&slot) {
                self.insert(slot);
            }
        }
    }

    fn resize(&mut self, count: usize) {
        self.resize_keeping(count, |_| true);
    }

    /// Starts a sweep: a pass over every slot, in slot order, in steps
    /// ([`Table::sweep_step`]), that drops the slots its `keep` does not keep.
    pub fn start_sweep(&self) -> Sweep {
        // Start after an empty slot (the load is at most 0.8, so a table with slots has
        // one), so the first run is read from its start.
        let empty = self.slots.iter().position(|slot| slot.tag() == 0);
        Sweep {
            next: empty.map_or(0, |empty| self.next(empty)),
            left: if empty.is_some() { self.len() } else { 0 },
            len: self.len(),
        }
    }

    /// Sweeps on from where `sweep` stands: reads at least `budget` slots (and on to
    /// the end of the run it is in), in place; true once the sweep has read every slot
    /// (or the table was rebuilt since it started: the next sweep reads the rest).
    ///
    /// Each run of occupied slots (up to an empty one) is read in order; where it lost
    /// a slot, its slots are emptied and the kept ones put back in their order, each in
    /// the first empty slot from its home. A slot's home lies before it in its run, and
    /// every slot put back before it sat before it too, so each lands at or before where
    /// it was: the probes still find everything. That holds as well for a run the
    /// step begins in the middle of (slots inserted between two steps may have filled
    /// the empty slot a step ended at): the slots before the step's start stay, and
    /// those put back probe from their homes through them. The table is read and
    /// written in order and nothing is allocated but the run being read (rebuilding
    /// into a fresh table re-inserted every id kept at random and had the kernel map a
    /// new table), so a step costs its budget, not the table.
    pub fn sweep_step(
        &mut self,
        sweep: &mut Sweep,
        budget: usize,
        keep: impl Fn(&S) -> bool,
    ) -> bool {
        if sweep.len != self.len() {
            sweep.left = 0;
        }
        if sweep.left == 0 {
            return true;
        }
        let mut run: Vec<S> = Vec::new();
        let mut run_start = sweep.next;
        let mut dropped = false;
        let mut index = sweep.next;
        let mut read = 0usize;
        // Ends on an empty slot, which ends the last run read.
        loop {
            let slot = self.get(index);
            sweep.left = sweep.left.saturating_sub(1);
            read += 1;
            if slot.tag() != 0 {
                if keep(&slot) {
                    run.push(slot);
                } else {
                    dropped = true;
                    self.used -= 1;
                }
            } else {
                if dropped {
                    let mut at = run_start;
                    while at != index {
                        self.set(at, S::default());
                        at = self.next(at);
                    }
                    for &slot in &run {
                        self.place(slot);
                    }
                }
                run.clear();
                dropped = false;
                run_start = self.next(index);
                if sweep.left == 0 || read >= budget {
                    sweep.next = run_start;
                    return sweep.left == 0;
                }
            }
            index = self.next(index);
        }
    }

    /// Drops the slots `keep` does not keep, in place: a whole sweep at once.
    #[cfg(test)]
    pub fn retain(&mut self, keep: impl Fn(&S) -> bool) {
        let mut sweep = self.start_sweep();
        while !self.sweep_step(&mut sweep, usize::MAX, &keep) {}
    }

    /// After a sweep: rebuilds the table at a load of 0.6 if the sweep left it below
    /// 0.4, so a slot in use costs at most 2.5 slots of memory (with the expired ids
    /// not yet swept).
    pub fn shrink_after_sweep(&mut self) {
        if self.len() > SLOTS_MIN && self.used * 5 < self.len() * 2 {
            self.resize(self.used * 5 / 3);
        }
    }

    /// Bytes of memory the slots take.
    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<S>()
    }

    /// Reads the home slot of every tag (0: none) before probes or inserts use them.
    /// The table is far larger than the caches, so each first probe misses; these
    /// reads do not depend on each other, so the processor overlaps their misses
    /// instead of waiting for one probe after another.
    pub fn touch_homes(&self, tags: &[u32]) {
        if self.len() == 0 {
            return;
        }
        let mut seen = 0u32;
        for &tag in tags {
            if tag != 0 {
                seen ^= self.get(self.home(tag)).tag();
            }
        }
        std::hint::black_box(seen);
    }
}

/// The ids in the window, in the order they were stored: each one's time (in the
/// window's time units) and place (partition and offset, packed), in two ring
/// buffers written in order. A table slot names its id here by sequence number; the
/// oldest ids leave from the front when they expire.
#[derive(Debug, Default)]
pub(super) struct Stored {
    /// The sequence number of the front id.
    first: u64,
    times: VecDeque<u32>,
    places: VecDeque<u64>,
}

impl Stored {
    /// The next id's sequence number.
    pub fn end(&self) -> u64 {
        self.first + self.times.len() as u64
    }

    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// Stores an id's time and place; its sequence number, or `None` when
    /// [`STORED_MAX`] ids are held already.
    pub fn push(&mut self, time: u32, place: u64) -> Option<u64> {
        if self.times.len() >= STORED_MAX {
            return None;
        }
        let seq = self.end();
        self.times.push_back(time);
        self.places.push_back(place);
        Some(seq)
    }

    /// The position in the buffers of the id a window slot names, if it is held.
    fn position(&self, slot: u64) -> Option<usize> {
        // Every slot names an id in first..end, fewer than 2^32 of them, or one dropped
        // since the sweep under way started (it takes their slots out within a few
        // slots read per id claimed, so far fewer than 2^32 ids come meanwhile): the
        // low 32 bits tell which, and whether it is still held.
        let back = (self.end() as u32).wrapping_sub(slot as u32) as usize;
        (back != 0 && back <= self.times.len()).then(|| self.times.len() - back)
    }

    /// The time and place of the id a window slot names.
    pub fn get(&self, slot: u64) -> Option<(u32, u64)> {
        let position = self.position(slot)?;
        Some((*self.times.get(position)?, *self.places.get(position)?))
    }

    /// Whether the id a window slot names is held.
    pub fn holds(&self, slot: u64) -> bool {
        self.position(slot).is_some()
    }

    /// Drops the ids at the front stored before `horizon` (then any later id stored
    /// before it, out of order, stays until an earlier one expires past it; a match
    /// checks its time too); returns how many. The buffers shrink to 1.5 times what
    /// they hold when that is under half their capacity.
    pub fn expire(&mut self, horizon: u32) -> usize {
        let count = self.times.iter().take_while(|&&t| t < horizon).count();
        self.times.drain(..count);
        self.places.drain(..count);
        self.first += count as u64;
        if self.times.capacity() > 2 * self.times.len().max(SLOTS_MIN) {
            let keep = self.times.len() + self.times.len() / 2;
            self.times.shrink_to(keep);
            self.places.shrink_to(keep);
        }
        count
    }

    /// Moves every time `shift` units earlier (the window's base time moved on).
    pub fn shift_times(&mut self, shift: u32) {
        for time in &mut self.times {
            *time = time.saturating_sub(shift);
        }
    }

    /// Bytes of memory the buffers take.
    pub fn memory_bytes(&self) -> usize {
        self.times.capacity() * std::mem::size_of::<u32>()
            + self.places.capacity() * std::mem::size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// The table against a map: inserts, removals (by position found through
        /// `find`), growth, rebuilds and sweeps in place keep every slot findable, and
        /// nothing else.
        #[test]
        fn the_table_finds_what_it_holds(
            ops in proptest::collection::vec((0u8..3, 1u32..40, any::<u32>()), 1..3000),
        ) {
            let mut table: Table<u64> = Table::with_slots(4);
            let mut model: HashMap<u64, usize> = HashMap::new();
            for (op, tag, low) in ops {
                // Few tags, so runs collide and wrap; few values, so they repeat.
                let tag = tag.wrapping_mul(0x9E37_79B9) | 1;
                let slot = window_slot(tag, u64::from(low % 7) << 29 | u64::from(low % 5));
                if op > 0 {
                    table.insert(slot);
                    *model.entry(slot).or_default() += 1;
                } else if let Some(index) = table.find(slot) {
                    table.remove(index);
                    *model.get_mut(&slot).unwrap() -= 1;
                } else {
                    prop_assert_eq!(model.get(&slot).copied().unwrap_or(0), 0);
                }
                prop_assert_eq!(table.used, model.values().sum::<usize>());
                prop_assert!(table.used * 5 <= table.len() * 4);
            }
            let check = |table: &Table<u64>,
                         model: &HashMap<u64, usize>|
             -> std::result::Result<(), TestCaseError> {
                let mut found: HashMap<u64, usize> = HashMap::new();
                for index in 0..table.len() {
                    let slot = table.get(index);
                    if slot.tag() != 0 {
                        prop_assert!(table.matches(slot.tag()).any(|(i, _)| i == index));
                        *found.entry(slot).or_default() += 1;
                    }
                }
                let mut expected = model.clone();
                expected.retain(|_, count| *count > 0);
                prop_assert_eq!(found, expected);
                Ok(())
            };
            check(&table, &model)?;
            table.resize_keeping(table.used * 2, |_| true);
            check(&table, &model)?;
            // A sweep in place keeps exactly what it is told to, findable.
            let kept = |slot: &u64| !slot.is_multiple_of(3);
            table.retain(kept);
            model.retain(|slot, _| kept(slot));
            prop_assert_eq!(table.used, model.values().sum::<usize>());
            check(&table, &model)?;
        }

        /// A sweep in steps of random sizes, with slots inserted between the steps (in
        /// runs it has read, is in the middle of, or has yet to read): every slot kept
        /// is findable after every step, and when the sweep ends exactly the slots it
        /// was to drop are gone (unless the table grew meanwhile, which ends a sweep
        /// early: then nothing kept is lost).
        #[test]
        fn a_sweep_in_steps_with_inserts_between_drops_what_it_should(
            before in proptest::collection::vec((1u32..60, any::<u32>()), 1..500),
            steps in proptest::collection::vec(
                (1usize..80, proptest::collection::vec((1u32..60, any::<u32>()), 0..6)),
                1..120,
            ),
            roomy in any::<bool>(),
        ) {
            // Few tags, so runs are long and wrap. Slots inserted before the sweep have
            // values below 2^31 (a third of them to drop), those inserted during it
            // above (kept).
            let slot = |tag: u32, value: u32| window_slot(tag.wrapping_mul(0x9E37_79B9) | 1, u64::from(value));
            let keep = |slot: &u64| (*slot as u32) >= 1 << 31 || !(*slot as u32).is_multiple_of(3);
            let inserts = before.len() + steps.iter().map(|(_, i)| i.len()).sum::<usize>();
            let mut table: Table<u64> = Table::with_slots(if roomy { inserts * 2 } else { 4 });
            let mut model: HashMap<u64, usize> = HashMap::new();
            for &(tag, value) in &before {
                let s = slot(tag, value & !(1 << 31));
                table.insert(s);
                *model.entry(s).or_default() += 1;
            }
            let len = table.len();
            let mut sweep = table.start_sweep();
            let mut done = false;
            let findable = |table: &Table<u64>, model: &HashMap<u64, usize>| {
                model.iter().filter(|(s, _)| keep(s)).all(|(&s, &count)| {
                    table.matches(s.tag()).filter(|&(_, here)| here == s).count() >= count
                })
            };
            for (budget, inserted) in steps {
                if !done {
                    done = table.sweep_step(&mut sweep, budget, keep);
                }
                prop_assert!(findable(&table, &model));
                for (tag, value) in inserted {
                    let s = slot(tag, value | 1 << 31);
                    table.insert(s);
                    *model.entry(s).or_default() += 1;
                }
            }
            while !done {
                done = table.sweep_step(&mut sweep, 7, keep);
            }
            prop_assert!(findable(&table, &model));
            let mut found: HashMap<u64, usize> = HashMap::new();
            for index in 0..table.len() {
                let s = table.get(index);
                if s.tag() != 0 {
                    *found.entry(s).or_default() += 1;
                }
            }
            prop_assert_eq!(found.values().sum::<usize>(), table.used);
            if table.len() == len {
                let mut expected = model.clone();
                expected.retain(|s, _| keep(s));
                prop_assert_eq!(found, expected);
            }
        }

        /// `Stored` against a list of what it holds: pushes, expiries and time shifts;
        /// a slot finds its own id's time and place while it is held and nothing
        /// after, across the 32-bit wrap of the sequence numbers.
        #[test]
        fn stored_ids_are_found_by_their_slots(
            start in prop_oneof![Just(0u64), Just(u64::from(u32::MAX) - 300), any::<u32>().prop_map(u64::from)],
            ops in proptest::collection::vec((0u8..4, 0u32..50), 1..600),
        ) {
            let mut stored = Stored { first: start, ..Stored::default() };
            // (seq, time, place) of what it holds, and the seqs it dropped.
            let mut held: VecDeque<(u64, u32, u64)> = VecDeque::new();
            let mut dropped: Vec<u64> = Vec::new();
            let mut now = 100u32;
            for (op, n) in ops {
                match op {
                    0 => {
                        let horizon = now.saturating_sub(n);
                        let count = held.iter().take_while(|h| h.1 < horizon).count();
                        prop_assert_eq!(stored.expire(horizon), count);
                        dropped.extend(held.drain(..count).map(|h| h.0));
                    }
                    1 => {
                        let shift = n.min(now);
                        stored.shift_times(shift);
                        now -= shift;
                        for h in &mut held {
                            h.1 = h.1.saturating_sub(shift);
                        }
                    }
                    _ => {
                        now += n % 3;
                        let place = u64::from(n) * 1_000_003;
                        let seq = stored.push(now, place).unwrap();
                        prop_assert_eq!(seq, held.back().map_or(stored.first, |h| h.0 + 1));
                        held.push_back((seq, now, place));
                    }
                }
                prop_assert_eq!(stored.len(), held.len());
                for &(seq, time, place) in &held {
                    prop_assert_eq!(stored.get(window_slot(7, seq)), Some((time, place)));
                }
                for &seq in dropped.iter().rev().take(50) {
                    prop_assert!(!stored.holds(window_slot(7, seq)));
                }
                prop_assert!(!stored.holds(window_slot(7, stored.end())));
            }
        }
    }

    /// A fresh table reads as empty everywhere, whichever slots were written to map
    /// its pages.
    #[test]
    fn a_fresh_table_is_empty() {
        for count in [0, 1, 1023, 1024, 1025, 4096 / 8 * 3 + 1, 100_000] {
            let table: Table<u64> = Table::with_slots(count);
            assert_eq!(table.len(), count.max(SLOTS_MIN));
            assert!((0..table.len()).all(|i| table.get(i) == 0));
            assert_eq!(table.matches(7).count(), 0);
            let claims: Table<Claim> = Table::with_slots(count);
            assert!((0..claims.len()).all(|i| claims.get(i) == Claim::default()));
        }
    }
}
