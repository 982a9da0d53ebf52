//! Unique visitors: a mergeable HyperLogLog per bucket, and the one hash of a visitor id that
//! both the sketch and the routing use.
//!
//! The sketch is `cardinality-estimator` (Cloudflare's HyperLogLog++: exact up to a small
//! cardinality, then p = 14 registers of 6 bits, 12 KiB, ≈ 0.8 % standard error) rather than a
//! hand-written one. The hash is `wyhash` with a fixed seed, so that a sketch rebuilt from the
//! log after a restart is bit-for-bit the sketch that was lost, and every query answers exactly
//! what it answered before.
//!
//! Visitors are partitioned over shards by the *top* bits of the same hash
//! ([`owner_of_visitor`]); the sketch takes its register index from the low bits and its rank
//! from the bits above p, so the partition does not bias the registers. Because each visitor
//! lives on exactly one shard, the distinct count over all shards is the sum of the per-shard
//! estimates — no sketch crosses a thread at query time.

use cardinality_estimator::CardinalityEstimator;

/// The uniques sketch of one bucket (item type unused: hashes are inserted directly).
pub type Uniques = CardinalityEstimator<u64, wyhash::WyHash, 14, 6>;

const VID_SEED: u64 = 0x7069_7865_6c64_5f76; // "pixeld_v"

/// The 64-bit hash of a visitor id.
pub fn vid_hash(vid: &str) -> u64 {
    wyhash::wyhash(vid.as_bytes(), VID_SEED)
}

/// The shard that owns a visitor: the top 32 bits of its hash, scaled onto `shards`.
pub fn owner_of_visitor(hash: u64, shards: usize) -> usize {
    (((hash >> 32) * shards as u64) >> 32) as usize
}

/// The shard that owns `key` of a dimension (`seed` differs per dimension so that a url and a
/// referrer domain with the same text need not share a shard).
pub fn owner_of_key(seed: u64, key: &str, shards: usize) -> usize {
    let h = wyhash::wyhash(key.as_bytes(), seed);
    (((h >> 32) * shards as u64) >> 32) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_within_one_percent_and_partition_sums() {
        for n in [10usize, 1000, 50_000, 300_000] {
            let mut all = Uniques::new();
            let mut parts = [Uniques::new(), Uniques::new(), Uniques::new()];
            for i in 0..n {
                let h = vid_hash(&format!("{i:016x}"));
                all.insert_hash(h);
                parts[owner_of_visitor(h, 3)].insert_hash(h);
            }
            let est = all.estimate() as f64;
            let sum: usize = parts.iter().map(|p| p.estimate()).sum();
            for (name, v) in [("whole", est), ("partitioned", sum as f64)] {
                let err = (v - n as f64).abs() / n as f64;
                assert!(err <= 0.02, "{name}: n={n} estimate={v} err={err}");
            }
            if n <= 100 {
                assert_eq!(all.estimate(), n, "exact at small cardinality");
            }
        }
    }

    #[test]
    fn owners_cover_every_shard() {
        let mut seen = [0u32; 4];
        for i in 0..10_000 {
            seen[owner_of_visitor(vid_hash(&i.to_string()), 4)] += 1;
            assert!(owner_of_key(1, &i.to_string(), 4) < 4);
        }
        assert!(seen.iter().all(|&c| c > 2000), "{seen:?}");
    }
}
