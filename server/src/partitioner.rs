//! Which partition a published message goes to: the explicit `partition` if given,
//! else a stable hash of the key, else round robin.
//!
//! The key hash is Kafka's default partitioner, defined once in
//! `tidelog_storage::partitioner` (the client crate routes its record batches with the
//! same function).

use std::sync::atomic::{AtomicU64, Ordering};

pub use tidelog_storage::partitioner::{murmur2, partition_for_key};

/// Spreads keyless messages over partitions. One counter serves every topic: each
/// topic still sees consecutive values modulo its partition count, so its keyless
/// messages spread evenly.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicU64,
}

impl RoundRobin {
    /// The partition for the next keyless message of a topic with `partitions` (> 0).
    pub fn next(&self, partitions: u32) -> u32 {
        (self.next.fetch_add(1, Ordering::Relaxed) % u64::from(partitions.max(1))) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles() {
        let rr = RoundRobin::default();
        let got: Vec<u32> = (0..6).map(|_| rr.next(3)).collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2]);
        assert_eq!(rr.next(1), 0);
    }
}
