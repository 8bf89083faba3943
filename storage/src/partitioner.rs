//! Kafka's default partitioner for keyed messages: `(murmur2(key) & 0x7fffffff) %
//! partitions`, with murmur2 seeded 0x9747b28c. The broker (`Publish` without a
//! partition) and the client crate (which routes record batches itself) both call
//! [`partition_for_key`], so a key maps to the same partition whoever picks it, and a
//! client using a Kafka library picks the same partitions too. The mapping is stable
//! for as long as the partition count stays the same.

/// Kafka's murmur2 (32-bit, seed 0x9747b28c), as `org.apache.kafka.common.utils.Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len() as u32;
    let mut h: u32 = SEED ^ length;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a non-empty `key` among `partitions` (> 0) partitions.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    debug_assert!(partitions > 0);
    ((murmur2(key) as u32) & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected values are those of Kafka's own murmur2 unit test (UtilsTest).
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), expected, "{:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn keys_map_stably_into_range() {
        for partitions in [1, 2, 3, 7, 10_000] {
            for key in [&b"a"[..], b"customer-42", &[0xff; 33]] {
                let p = partition_for_key(key, partitions);
                assert!(p < partitions);
                assert_eq!(p, partition_for_key(key, partitions));
            }
        }
    }
}
