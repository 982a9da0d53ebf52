//! Which shard owns what (Storm's fields grouping): a url and a referrer domain by the hash of
//! their text, a visitor by the hash of its id (which is also what the uniques sketches take).
//! The hashes are `wyhash` with fixed seeds, one per dimension, so that ownership — and every
//! answer — is the same after a restart and a rebuild. Seeds and hashes live together here so
//! that following one hit's routing never leaves this file.

/// Seed of a url's owner hash.
pub const URL_SEED: u64 = 0x0075_726c;
/// Seed of a referrer domain's owner hash.
pub const REF_SEED: u64 = 0x0072_6566;
/// Seed of a visitor id's hash.
pub const VID_SEED: u64 = 0x7069_7865_6c64_5f76; // "pixeld_v"

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
    if shards <= 1 {
        // The formula below gives 0 for one shard; the hash is not needed for it.
        return 0;
    }
    let h = wyhash::wyhash(key.as_bytes(), seed);
    (((h >> 32) * shards as u64) >> 32) as usize
}

/// How visitors map to owners across changes of the shard count: the current count, except
/// for event minutes before the end of a day in which the count changed, which keep the owner
/// the previous count gave them (mapped onto each later count as the re-partition mapped it:
/// old owner `o` to `o mod n`). A visitor's cells of one bucket then stay on one owner, so
/// that uniques add up over the owners (`agg::store::repartition`). Kept in `agg/partitions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Epochs(Vec<(i64, usize)>);

impl Epochs {
    /// Event minutes before `until` are owned as `shards` owned them (then mapped on).
    pub fn push(&mut self, until: i64, shards: usize) {
        self.0.push((until, shards.max(1)));
    }

    /// The owner of visitor `hash` for an event at `minute`, among `shards`.
    pub fn owner_of_visitor(&self, hash: u64, minute: i64, shards: usize) -> usize {
        let mut later = self.0.iter().skip_while(|(until, _)| minute >= *until);
        match later.next() {
            None => owner_of_visitor(hash, shards),
            Some(&(_, then)) => {
                let mut o = owner_of_visitor(hash, then);
                for &(_, n) in later {
                    o %= n;
                }
                o % shards.max(1)
            }
        }
    }

    /// One `until shards` line per epoch.
    pub fn to_text(&self) -> String {
        self.0.iter().map(|(u, n)| format!("{u} {n}\n")).collect()
    }

    /// Parses [`Epochs::to_text`]; unreadable lines are skipped.
    pub fn from_text(text: &str) -> Epochs {
        Epochs(
            text.lines()
                .filter_map(|l| {
                    let (u, n) = l.split_once(' ')?;
                    Some((u.trim().parse().ok()?, n.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_keep_old_owners_before_the_change_and_map_them_on() {
        let mut e = Epochs::default();
        assert_eq!(e.owner_of_visitor(u64::MAX, 0, 3), 2);
        // 4 shards until minute 100, then 3.
        e.push(100, 4);
        let h = u64::MAX; // owner 3 of 4, owner 2 of 3
        assert_eq!(e.owner_of_visitor(h, 99, 3), 0); // 3 mod 3
        assert_eq!(e.owner_of_visitor(h, 100, 3), 2);
        // then 3 until minute 200, then 2: before 100, 3 → 0 → 0; before 200, 2 → 0.
        e.push(200, 3);
        assert_eq!(e.owner_of_visitor(h, 50, 2), 0);
        assert_eq!(e.owner_of_visitor(h, 150, 2), 0);
        assert_eq!(e.owner_of_visitor(h, 250, 2), 1);
        assert_eq!(Epochs::from_text(&e.to_text()), e);
    }
}
