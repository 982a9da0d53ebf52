//! Exact top-N: the order every list uses (views descending, then key ascending bytewise) and
//! the selection and merge built on it.
//!
//! Each key lives on exactly one shard, so the global top N is contained in the union of the
//! per-shard top N lists *under the same total order* — which is why the order includes the
//! key as tie-breaker and why [`merge`] only needs the shards' lists, not their full tables.

use std::cmp::Ordering;

/// One ranked key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranked {
    pub key: String,
    pub views: u64,
}

/// The ranking order: more views first, then the smaller key (bytewise).
pub fn order(a: &Ranked, b: &Ranked) -> Ordering {
    b.views
        .cmp(&a.views)
        .then_with(|| a.key.as_bytes().cmp(b.key.as_bytes()))
}

/// The first `limit` of `items` in ranking order (`O(n)` selection, then a sort of `limit`).
pub fn top(mut items: Vec<Ranked>, limit: usize) -> Vec<Ranked> {
    if limit == 0 {
        return Vec::new();
    }
    if items.len() > limit {
        items.select_nth_unstable_by(limit - 1, order);
        items.truncate(limit);
    }
    items.sort_unstable_by(order);
    items
}

/// Merges per-shard top lists whose keys are disjoint into the global top `limit`.
pub fn merge(lists: Vec<Vec<Ranked>>, limit: usize) -> Vec<Ranked> {
    top(lists.into_iter().flatten().collect(), limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(k: &str, v: u64) -> Ranked {
        Ranked {
            key: k.to_string(),
            views: v,
        }
    }

    #[test]
    fn ties_break_by_key() {
        let t = top(vec![r("b", 5), r("a", 5), r("c", 9), r("d", 1)], 3);
        assert_eq!(t, vec![r("c", 9), r("a", 5), r("b", 5)]);
    }

    proptest! {
        #[test]
        fn merged_partition_equals_global(
            counts in proptest::collection::hash_map("[a-e]{1,3}", 0u64..20, 0..60),
            parts in 1usize..5,
            limit in 1usize..12,
        ) {
            let all: Vec<Ranked> = counts.iter().map(|(k, v)| r(k, *v)).collect();
            let mut lists = vec![Vec::new(); parts];
            for (i, item) in all.iter().enumerate() {
                lists[i % parts].push(item.clone());
            }
            let lists = lists.into_iter().map(|l| top(l, limit)).collect();
            prop_assert_eq!(merge(lists, limit), top(all, limit));
        }
    }
}
