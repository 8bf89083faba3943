//! The producer's batching: records gather per (topic, partition, ack level) into an
//! open batch, which is sealed when it is full (`batch_bytes`, `batch_records`) or, once
//! the sender has room in its in-flight window, when it has waited `linger`.
//!
//! Each open batch carries a handle `H` (made with `H::default()` when the batch opens,
//! a clone returned with every record pushed): the producer's is the batch's shared
//! outcome, which each record's `DeliveryFuture` waits on.
//!
//! Pure (no I/O, time passed in): the property test below drives it with random
//! sizes, limits and clocks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::record::Ack;

/// Which batch a record joins.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BatchKey {
    pub topic: Arc<str>,
    pub partition: u32,
    pub ack: Ack,
}

/// When a batch is sealed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Seal once the records' bytes reach this; a record that would take a non-empty
    /// batch past it starts the next batch instead. A single larger record travels
    /// alone.
    pub max_bytes: usize,
    /// Seal at this many records.
    pub max_records: usize,
    /// Seal a batch this old (when the sender can send it).
    pub linger: Duration,
}

/// Most records a new batch's vector is sized for up front.
const BATCH_CAPACITY_MAX: usize = 4096;

/// A batch ready to encode and send; items in the order they were pushed.
#[derive(Debug)]
pub(crate) struct Sealed<T, H> {
    pub key: BatchKey,
    pub items: Vec<T>,
    pub bytes: usize,
    pub opened: Instant,
    pub handle: H,
}

#[derive(Debug)]
struct Open<T, H> {
    items: Vec<T>,
    bytes: usize,
    opened: Instant,
    handle: H,
}

#[derive(Debug)]
pub(crate) struct Accumulator<T, H> {
    limits: Limits,
    open: HashMap<BatchKey, Open<T, H>, BuildKeyHasher>,
}

/// The hash of the open-batch map, looked up once per record: a multiply-rotate mix
/// (FxHash's) of the key's bytes, several times cheaper than the default SipHash on a
/// topic name. The keys come from the producer's own callers, not from the network,
/// so a keyed hash buys nothing here.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BuildKeyHasher;

impl std::hash::BuildHasher for BuildKeyHasher {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl KeyHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().unwrap_or_default()));
        }
        let mut tail = [0u8; 8];
        let rest = chunks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(tail));
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl<T, H: Default + Clone> Accumulator<T, H> {
    pub fn new(limits: Limits) -> Accumulator<T, H> {
        Accumulator {
            limits: Limits {
                max_bytes: limits.max_bytes.max(1),
                max_records: limits.max_records.max(1),
                linger: limits.linger,
            },
            open: HashMap::with_hasher(BuildKeyHasher),
        }
    }

    /// Adds `item` (of `size` bytes) to its batch; batches it fills are appended to
    /// `sealed`, oldest first. Returns the item's index in its batch and the batch's
    /// handle, and whether the item opened the batch. `now` is asked only when a batch
    /// opens (a clock read per batch, not per record).
    pub fn push(
        &mut self,
        key: &BatchKey,
        item: T,
        size: usize,
        now: impl FnOnce() -> Instant,
        sealed: &mut Vec<Sealed<T, H>>,
    ) -> Pushed<H> {
        let limits = self.limits;
        let full = |open: &Open<T, H>| {
            open.items.len() >= limits.max_records || open.bytes >= limits.max_bytes
        };
        // One lookup per record: the open batch takes it unless it would overflow.
        if let Some(open) = self.open.get_mut(key) {
            if open.items.is_empty() || open.bytes.saturating_add(size) <= limits.max_bytes {
                let index = open.items.len();
                let handle = open.handle.clone();
                open.items.push(item);
                open.bytes = open.bytes.saturating_add(size);
                if full(open)
                    && let Some(done) = self.open.remove(key)
                {
                    sealed.push(seal(key.clone(), done));
                }
                return Pushed {
                    index,
                    handle,
                    opened: false,
                };
            }
            if let Some(done) = self.open.remove(key) {
                sealed.push(seal(key.clone(), done));
            }
        }
        // A new batch, sized for as many records like this one as it may hold (no
        // regrowing the vector as it fills).
        let expected = (limits.max_bytes / size.max(1))
            .saturating_add(1)
            .min(limits.max_records)
            .min(BATCH_CAPACITY_MAX);
        let mut open = Open {
            items: Vec::with_capacity(expected),
            bytes: size,
            opened: now(),
            handle: H::default(),
        };
        let handle = open.handle.clone();
        open.items.push(item);
        if full(&open) {
            sealed.push(seal(key.clone(), open));
        } else {
            self.open.insert(key.clone(), open);
        }
        Pushed {
            index: 0,
            handle,
            opened: true,
        }
    }

    /// Seals the batches that have waited `linger` by `now`, oldest first.
    pub fn expire(&mut self, now: Instant, sealed: &mut Vec<Sealed<T, H>>) {
        let linger = self.limits.linger;
        let mut due: Vec<BatchKey> = self
            .open
            .iter()
            .filter(|(_, open)| open.opened + linger <= now)
            .map(|(key, _)| key.clone())
            .collect();
        due.sort_by_key(|key| self.open.get(key).map(|o| o.opened));
        for key in due {
            if let Some(open) = self.open.remove(&key) {
                sealed.push(seal(key, open));
            }
        }
    }

    /// Seals the open batch of `key`, if there is one.
    pub fn seal(&mut self, key: &BatchKey, sealed: &mut Vec<Sealed<T, H>>) {
        if let Some(open) = self.open.remove(key) {
            sealed.push(seal(key.clone(), open));
        }
    }

    /// Seals every open batch, oldest first (flush, close).
    pub fn drain(&mut self, sealed: &mut Vec<Sealed<T, H>>) {
        let mut all: Vec<(BatchKey, Open<T, H>)> = self.open.drain().collect();
        all.sort_by_key(|(_, open)| open.opened);
        sealed.extend(all.into_iter().map(|(key, open)| seal(key, open)));
    }

    /// When the oldest open batch's linger ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open
            .values()
            .map(|open| open.opened + self.limits.linger)
            .min()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// Where [`Accumulator::push`] put an item.
#[derive(Debug)]
pub(crate) struct Pushed<H> {
    pub index: usize,
    pub handle: H,
    /// The item opened its batch (the first since the last seal).
    pub opened: bool,
}

fn seal<T, H>(key: BatchKey, open: Open<T, H>) -> Sealed<T, H> {
    Sealed {
        key,
        items: open.items,
        bytes: open.bytes,
        opened: open.opened,
        handle: open.handle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// A record of `size` bytes for partition `partition`.
        Push {
            partition: u32,
            size: usize,
        },
        /// The clock moves on by `ms`, then the sender (with room) expires batches.
        Tick {
            ms: u64,
        },
        Drain,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u32..4, prop_oneof![0usize..64, 0usize..5000, Just(1 << 20)])
                .prop_map(|(partition, size)| Op::Push { partition, size }),
            2 => (0u64..20).prop_map(|ms| Op::Tick { ms }),
            1 => Just(Op::Drain),
        ]
    }

    proptest! {
        /// Every record comes out in exactly one batch, in push order per partition,
        /// within the limits, and no batch stays open past its linger once expired.
        /// The fake broker then gives each batch consecutive offsets, and the acks the
        /// producer derives (base + index) name every record once, increasing per
        /// partition.
        #[test]
        fn every_record_is_batched_once_in_order_within_limits(
            ops in proptest::collection::vec(op(), 1..300),
            max_bytes in 1usize..20_000,
            max_records in 1usize..50,
            linger_ms in 0u64..15,
        ) {
            let limits = Limits { max_bytes, max_records, linger: Duration::from_millis(linger_ms) };
            let mut acc: Accumulator<(u32, u64, usize), std::rc::Rc<()>> = Accumulator::new(limits);
            let start = Instant::now();
            let mut now = start;
            let mut sealed = Vec::new();
            let mut pushed = 0u64;
            let mut sizes = Vec::new();
            let mut handles = Vec::new();
            let mut positions = Vec::new();
            let topic: Arc<str> = Arc::from("t");
            for op in ops {
                match op {
                    Op::Push { partition, size } => {
                        let key = BatchKey { topic: topic.clone(), partition, ack: Ack::Durable };
                        let pushed_at = acc.push(&key, (partition, pushed, size), size, || now, &mut sealed);
                        handles.push(pushed_at.handle);
                        positions.push(pushed_at.index);
                        sizes.push(size);
                        pushed += 1;
                    }
                    Op::Tick { ms } => {
                        now += Duration::from_millis(ms);
                        acc.expire(now, &mut sealed);
                        if let Some(deadline) = acc.next_deadline() {
                            prop_assert!(deadline > now, "a lingered batch stayed open");
                        }
                    }
                    Op::Drain => {
                        acc.drain(&mut sealed);
                        prop_assert!(acc.is_empty());
                    }
                }
            }
            acc.drain(&mut sealed);
            // The broker: consecutive offsets per partition, in the order batches come.
            let mut next_offset = [0u64; 4];
            let mut acked = vec![None; pushed as usize];
            let mut last_seq = [None::<u64>; 4];
            for batch in &sealed {
                prop_assert!(!batch.items.is_empty());
                prop_assert!(batch.items.len() <= max_records);
                let bytes: usize = batch.items.iter().map(|i| i.2).sum();
                prop_assert_eq!(bytes, batch.bytes);
                prop_assert!(bytes <= max_bytes || batch.items.len() == 1,
                    "{} bytes in {} records over {}", bytes, batch.items.len(), max_bytes);
                let partition = batch.key.partition;
                let base = next_offset[partition as usize];
                next_offset[partition as usize] += batch.items.len() as u64;
                for (index, &(p, seq, _)) in batch.items.iter().enumerate() {
                    prop_assert_eq!(p, partition);
                    prop_assert!(last_seq[p as usize].is_none_or(|last| seq > last), "out of order");
                    last_seq[p as usize] = Some(seq);
                    prop_assert!(acked[seq as usize].is_none(), "record {} twice", seq);
                    acked[seq as usize] = Some(base + index as u64);
                    prop_assert_eq!(positions[seq as usize], index, "push reported another index");
                    // The handle push returned is the batch's own (a new one per batch).
                    prop_assert!(std::rc::Rc::ptr_eq(&handles[seq as usize], &batch.handle));
                }
            }
            prop_assert!(acked.iter().all(Option::is_some), "a record was never batched");
        }
    }

    #[test]
    fn a_record_over_the_limit_travels_alone_and_the_next_starts_a_batch() {
        let limits = Limits {
            max_bytes: 100,
            max_records: 10,
            linger: Duration::from_secs(1),
        };
        let mut acc: Accumulator<i32, ()> = Accumulator::new(limits);
        let key = BatchKey {
            topic: Arc::from("t"),
            partition: 0,
            ack: Ack::Durable,
        };
        let now = Instant::now();
        let mut sealed = Vec::new();
        assert!(acc.push(&key, 1, 60, || now, &mut sealed).opened);
        assert!(sealed.is_empty());
        let second = acc.push(&key, 2, 500, || now, &mut sealed);
        assert!(second.opened && second.index == 0);
        // [1] sealed because 2 would overflow it; [2] alone is over the limit: sealed.
        assert_eq!(
            sealed.iter().map(|s| s.items.clone()).collect::<Vec<_>>(),
            [vec![1], vec![2]]
        );
        assert!(acc.push(&key, 3, 10, || now, &mut sealed).opened);
        assert_eq!(acc.next_deadline(), Some(now + Duration::from_secs(1)));
    }
}
