//! A queue partition's pending messages ([`Pending`], [`Hold`]) and the map that holds
//! them ([`PendingMap`]), compact for delayed messages.
//!
//! Issue 13 allows 128 MiB of broker memory for 1,000,000 pending delayed messages. A
//! full [`Pending`] entry in a `BTreeMap` costs about 140 bytes with the map's nodes;
//! a delayed message that was never delivered carries nothing but its due time and
//! priority level, so [`PendingMap`] keeps those in a second map of 9-byte values
//! (about 30 bytes with the nodes) and builds the full entry when it is asked for,
//! or when the message is leased. The durable form is the same either way (the
//! snapshot writes every pending message as a `Restore` of a full [`Pending`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::btree_map;
use std::iter::Peekable;
use std::ops::RangeBounds;
use std::sync::Arc;

/// Why a pending message is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Delivered to `member`, to be settled by `deadline_ms`. The member's id is
    /// shared (`Arc`) by every message it holds, its leases and their history events.
    Leased { member: Arc<str>, deadline_ms: i64 },
    /// Waiting for a redelivery (nacked, or a delivery given up) until `due_ms`.
    Waiting { due_ms: i64 },
    /// Never delivered yet: waiting for its deliver-at time.
    Delayed { due_ms: i64 },
}

/// A message a queue has taken and not settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its priority level in this queue.
    pub level: u8,
    /// Deliveries so far (0 while delayed).
    pub attempts: u32,
    pub hold: Hold,
    /// When it was first and last delivered (0 before the first delivery).
    pub first_delivery_ms: i64,
    pub last_delivery_ms: i64,
    /// The last reason a member gave (nack), empty if none.
    pub reason: String,
}

impl Pending {
    /// A delayed message never delivered: what the compact form holds.
    pub fn delayed(level: u8, due_ms: i64) -> Pending {
        Pending {
            level,
            attempts: 0,
            hold: Hold::Delayed { due_ms },
            first_delivery_ms: 0,
            last_delivery_ms: 0,
            reason: String::new(),
        }
    }

    /// Its compact form, if it has one (delayed, and nothing else to remember).
    fn compact(&self) -> Option<Delayed> {
        match self.hold {
            Hold::Delayed { due_ms }
                if self.attempts == 0
                    && self.first_delivery_ms == 0
                    && self.last_delivery_ms == 0
                    && self.reason.is_empty() =>
            {
                Some(Delayed::new(self.level, due_ms))
            }
            _ => None,
        }
    }
}

/// A delayed message never delivered, compact: [`Pending::delayed`] of these. The due
/// time is kept as bytes so the value is 9 bytes with an alignment of 1 (an `i64`
/// would pad it to 16): a map's node holds its 11 values in 99 bytes instead of 176.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delayed {
    due_ms: [u8; 8],
    level: u8,
}

impl Delayed {
    fn new(level: u8, due_ms: i64) -> Delayed {
        Delayed {
            due_ms: due_ms.to_le_bytes(),
            level,
        }
    }

    fn expand(self) -> Pending {
        Pending::delayed(self.level, i64::from_le_bytes(self.due_ms))
    }
}

const _: () = assert!(size_of::<Delayed>() == 9);

/// Pending messages by offset. Each offset is in exactly one of the two maps: the
/// compact one when [`Pending::compact`] has a form for it, the full one otherwise; so
/// two maps with the same messages are equal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingMap {
    full: BTreeMap<u64, Pending>,
    delayed: BTreeMap<u64, Delayed>,
}

impl PendingMap {
    pub fn new() -> PendingMap {
        PendingMap::default()
    }

    pub fn len(&self) -> usize {
        self.full.len() + self.delayed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.full.is_empty() && self.delayed.is_empty()
    }

    /// The lowest pending offset.
    pub fn first_offset(&self) -> Option<u64> {
        match (self.full.keys().next(), self.delayed.keys().next()) {
            (Some(&a), Some(&b)) => Some(a.min(b)),
            (a, b) => a.or(b).copied(),
        }
    }

    /// The pending message at `offset` (built from its compact form if delayed).
    pub fn get(&self, offset: u64) -> Option<Cow<'_, Pending>> {
        if let Some(pending) = self.full.get(&offset) {
            return Some(Cow::Borrowed(pending));
        }
        self.delayed
            .get(&offset)
            .map(|delayed| Cow::Owned(delayed.expand()))
    }

    /// Inserts or replaces the message at `offset`; true if it was not pending.
    pub fn insert(&mut self, offset: u64, pending: Pending) -> bool {
        let was = self.remove(offset);
        match pending.compact() {
            Some(delayed) => {
                self.delayed.insert(offset, delayed);
            }
            None => {
                self.full.insert(offset, pending);
            }
        }
        !was
    }

    /// Removes the message at `offset`; true if it was pending.
    pub fn remove(&mut self, offset: u64) -> bool {
        self.full.remove(&offset).is_some() || self.delayed.remove(&offset).is_some()
    }

    /// Changes the message at `offset` with `change` (None if it is not pending),
    /// keeping it in the map its new form belongs in.
    pub fn update<R>(&mut self, offset: u64, change: impl FnOnce(&mut Pending) -> R) -> Option<R> {
        if let Some(pending) = self.full.get_mut(&offset) {
            let outcome = change(pending);
            if let Some(delayed) = pending.compact() {
                self.full.remove(&offset);
                self.delayed.insert(offset, delayed);
            }
            return Some(outcome);
        }
        let mut pending = self.delayed.get(&offset)?.expand();
        let outcome = change(&mut pending);
        match pending.compact() {
            Some(delayed) => {
                self.delayed.insert(offset, delayed);
            }
            None => {
                self.delayed.remove(&offset);
                self.full.insert(offset, pending);
            }
        }
        Some(outcome)
    }

    /// Removes every message in `range`; returns how many.
    pub fn remove_range(&mut self, range: impl RangeBounds<u64> + Clone) -> u64 {
        let full: Vec<u64> = self.full.range(range.clone()).map(|(&o, _)| o).collect();
        let delayed: Vec<u64> = self.delayed.range(range).map(|(&o, _)| o).collect();
        for offset in &full {
            self.full.remove(offset);
        }
        for offset in &delayed {
            self.delayed.remove(offset);
        }
        (full.len() + delayed.len()) as u64
    }

    /// Every pending message, by offset.
    pub fn iter(&self) -> Iter<'_> {
        self.range(..)
    }

    /// The pending messages in `range`, by offset.
    pub fn range(&self, range: impl RangeBounds<u64> + Clone) -> Iter<'_> {
        Iter {
            full: self.full.range(range.clone()).peekable(),
            delayed: self.delayed.range(range).peekable(),
        }
    }

    /// The pending messages that are not delayed-and-never-delivered (every leased or
    /// waiting one), by offset: what a walk for leases needs, without building the
    /// delayed ones.
    pub fn iter_undelayed(&self) -> impl Iterator<Item = (u64, &Pending)> {
        self.full.iter().map(|(&offset, pending)| (offset, pending))
    }
}

/// The messages of a [`PendingMap`] in offset order (both maps merged).
pub struct Iter<'a> {
    full: Peekable<btree_map::Range<'a, u64, Pending>>,
    delayed: Peekable<btree_map::Range<'a, u64, Delayed>>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (u64, Cow<'a, Pending>);

    fn next(&mut self) -> Option<Self::Item> {
        let full_first = match (self.full.peek(), self.delayed.peek()) {
            (Some((a, _)), Some((b, _))) => a < b,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        if full_first {
            let (&offset, pending) = self.full.next()?;
            Some((offset, Cow::Borrowed(pending)))
        } else {
            let (&offset, delayed) = self.delayed.next()?;
            Some((offset, Cow::Owned(delayed.expand())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leased(level: u8) -> Pending {
        Pending {
            level,
            attempts: 1,
            hold: Hold::Leased {
                member: "m".into(),
                deadline_ms: 9,
            },
            first_delivery_ms: 5,
            last_delivery_ms: 5,
            reason: String::new(),
        }
    }

    #[test]
    fn a_delayed_message_is_compact_until_it_is_leased() {
        let mut map = PendingMap::new();
        assert!(map.insert(7, Pending::delayed(2, 100)));
        assert!(!map.insert(7, Pending::delayed(3, 200)), "replaced");
        assert_eq!((map.full.len(), map.delayed.len()), (0, 1));
        assert_eq!(map.get(7).unwrap().into_owned(), Pending::delayed(3, 200));
        map.update(7, |p| {
            p.attempts = 1;
            p.hold = Hold::Leased {
                member: "m".into(),
                deadline_ms: 300,
            };
        });
        assert_eq!((map.full.len(), map.delayed.len()), (1, 0));
        assert_eq!(map.get(7).unwrap().attempts, 1);
        // A delayed entry that remembers a delivery is not compact.
        let mut odd = Pending::delayed(0, 5);
        odd.attempts = 2;
        map.insert(3, odd.clone());
        assert_eq!(map.get(3).unwrap().into_owned(), odd);
        assert_eq!(map.full.len(), 2);
        assert_eq!(map.first_offset(), Some(3));
        assert_eq!(map.remove_range(..=7), 2);
        assert!(map.is_empty());
    }

    fn arb_pending() -> impl Strategy<Value = Pending> {
        prop_oneof![
            (0u8..3, -5i64..5).prop_map(|(level, due)| Pending::delayed(level, due)),
            (0u8..3).prop_map(leased),
            (0u8..3, 0u32..3).prop_map(|(level, attempts)| {
                let mut p = Pending::delayed(level, 1);
                p.attempts = attempts;
                p
            }),
        ]
    }

    #[derive(Debug, Clone)]
    enum Step {
        Insert(u64, Pending),
        Remove(u64),
        Lease(u64),
        Nack(u64),
        RemoveRange(u64, u64),
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..20, arb_pending()).prop_map(|(o, p)| Step::Insert(o, p)),
            (0u64..20).prop_map(Step::Remove),
            (0u64..20).prop_map(Step::Lease),
            (0u64..20).prop_map(Step::Nack),
            (0u64..20, 0u64..20).prop_map(|(a, b)| Step::RemoveRange(a, b)),
        ]
    }

    proptest! {
        /// The two-map form behaves as one `BTreeMap<u64, Pending>`.
        #[test]
        fn it_behaves_as_one_map(steps in prop::collection::vec(arb_step(), 0..80)) {
            let mut map = PendingMap::new();
            let mut model: BTreeMap<u64, Pending> = BTreeMap::new();
            for step in steps {
                match step {
                    Step::Insert(o, p) => {
                        prop_assert_eq!(map.insert(o, p.clone()), model.insert(o, p).is_none());
                    }
                    Step::Remove(o) => prop_assert_eq!(map.remove(o), model.remove(&o).is_some()),
                    Step::Lease(o) => {
                        let change = |p: &mut Pending| {
                            p.attempts += 1;
                            p.hold = Hold::Leased { member: "x".into(), deadline_ms: 1 };
                            p.attempts
                        };
                        prop_assert_eq!(map.update(o, change), model.get_mut(&o).map(change));
                    }
                    Step::Nack(o) => {
                        let change = |p: &mut Pending| {
                            p.hold = Hold::Waiting { due_ms: 4 };
                            p.reason = "r".into();
                        };
                        prop_assert_eq!(map.update(o, change), model.get_mut(&o).map(change));
                    }
                    Step::RemoveRange(a, b) => {
                        let gone: Vec<u64> = model.range(a..=b.max(a)).map(|(o, _)| *o).collect();
                        for o in &gone {
                            model.remove(o);
                        }
                        prop_assert_eq!(map.remove_range(a..=b.max(a)), gone.len() as u64);
                    }
                }
                let listed: Vec<(u64, Pending)> =
                    map.iter().map(|(o, p)| (o, p.into_owned())).collect();
                let expected: Vec<(u64, Pending)> =
                    model.iter().map(|(o, p)| (*o, p.clone())).collect();
                prop_assert_eq!(listed, expected);
                prop_assert_eq!(map.len(), model.len());
                prop_assert_eq!(map.first_offset(), model.keys().next().copied());
                for o in 0..20 {
                    prop_assert_eq!(map.get(o).map(Cow::into_owned), model.get(&o).cloned());
                }
                let ranged: Vec<u64> = map.range(5..12).map(|(o, _)| o).collect();
                let expected: Vec<u64> = model.range(5..12).map(|(o, _)| *o).collect();
                prop_assert_eq!(ranged, expected);
            }
        }
    }
}
