//! Which member owns which partition: Kafka's range assignor.
//!
//! The input is the sorted list of live member ids subscribed to one topic and the
//! topic's partition count; the output gives every partition to exactly one member.
//! The first `partitions % members` members (in id order) get one partition more than
//! the others, and each member's partitions are contiguous. The result depends only on
//! the inputs, so a broker restart or a replayed rebalance computes the same thing.

use std::collections::BTreeMap;

/// Splits partitions `0..partition_count` among `members` (deduplicated and sorted
/// here, so the caller's order does not matter). Every member appears in the result,
/// with an empty list when there are more members than partitions.
pub fn range_assign<'a>(
    members: impl IntoIterator<Item = &'a str>,
    partition_count: u32,
) -> BTreeMap<String, Vec<u32>> {
    let mut ids: Vec<&str> = members.into_iter().collect();
    ids.sort_unstable();
    ids.dedup();
    let mut result = BTreeMap::new();
    if ids.is_empty() {
        return result;
    }
    // u32 partition counts and usize member counts: widen both to u64 so neither the
    // division nor the running start can overflow.
    let member_count = ids.len() as u64;
    let base = u64::from(partition_count) / member_count;
    let extra = u64::from(partition_count) % member_count;
    let mut next = 0u64;
    for (index, id) in ids.iter().enumerate() {
        let share = base + u64::from((index as u64) < extra);
        // `next + share <= partition_count` by construction, so the cast is lossless.
        let partitions = (next..next + share).map(|p| p as u32).collect();
        next += share;
        result.insert((*id).to_string(), partitions);
    }
    debug_assert_eq!(next, u64::from(partition_count));
    result
}

#[cfg(test)]
mod tests {
    use super::range_assign;

    fn check_exactly_once(assignment: &std::collections::BTreeMap<String, Vec<u32>>, n: u32) {
        let mut all: Vec<u32> = assignment.values().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..n).collect::<Vec<_>>(),
            "every partition exactly once"
        );
    }

    #[test]
    fn six_partitions_three_members_two_each() {
        let a = range_assign(["m-c", "m-a", "m-b"], 6);
        assert_eq!(a["m-a"], vec![0, 1]);
        assert_eq!(a["m-b"], vec![2, 3]);
        assert_eq!(a["m-c"], vec![4, 5]);
    }

    #[test]
    fn uneven_split_gives_extras_to_the_first_members() {
        let a = range_assign(["a", "b", "c"], 7);
        assert_eq!(a["a"], vec![0, 1, 2]);
        assert_eq!(a["b"], vec![3, 4]);
        assert_eq!(a["c"], vec![5, 6]);
    }

    #[test]
    fn more_members_than_partitions_leaves_some_empty() {
        let a = range_assign(["a", "b", "c", "d"], 2);
        assert_eq!(a.len(), 4);
        assert_eq!(a["a"], vec![0]);
        assert_eq!(a["b"], vec![1]);
        assert!(a["c"].is_empty() && a["d"].is_empty());
    }

    #[test]
    fn no_members_no_assignment() {
        assert!(range_assign(std::iter::empty(), 5).is_empty());
    }

    #[test]
    fn duplicates_are_one_member() {
        let a = range_assign(["a", "a", "b"], 4);
        assert_eq!(a.len(), 2);
        check_exactly_once(&a, 4);
    }

    #[test]
    fn balanced_deterministic_and_complete_for_many_shapes() {
        for members in 1..=12usize {
            let ids: Vec<String> = (0..members).map(|i| format!("member-{i:03}")).collect();
            for n in 0..=40u32 {
                let a = range_assign(ids.iter().map(String::as_str), n);
                check_exactly_once(&a, n);
                let sizes: Vec<usize> = a.values().map(Vec::len).collect();
                let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(max - min <= 1, "balanced: {sizes:?}");
                // Order of the input does not matter.
                let reversed = range_assign(ids.iter().rev().map(String::as_str), n);
                assert_eq!(a, reversed);
                for partitions in a.values() {
                    assert!(partitions.windows(2).all(|w| w[0] < w[1]), "sorted");
                }
            }
        }
    }
}
