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
    let h = wyhash::wyhash(key.as_bytes(), seed);
    (((h >> 32) * shards as u64) >> 32) as usize
}
