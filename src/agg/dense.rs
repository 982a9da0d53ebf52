//! A hash map whose entries sit densely, side by side in fixed-size chunks, found through a
//! table of 4-byte positions: for a map of many small entries, where a hash map's free room
//! (a table is 44–87 % full between doublings) would cost more than half an entry again.
//!
//! A `hashbrown::HashMap<K, V>` keeps each entry in its own slot of the table, so every slot
//! it has not filled yet costs a whole entry. Here the table ([`hashbrown::HashTable`]) holds
//! only a `u32` position per slot (and its control byte); the entries live in chunks of
//! [`CHUNK`] that are always full but for the last, and a removal moves the last entry into
//! the hole (a swap-remove) so that they stay dense. An entry of `e` bytes then costs
//! `e + 5 / fill` bytes: 58–64 for the visitor table's 52-byte entries (`agg::visits`),
//! where a slot of its own cost 65–130. `indexmap` is the well-kept crate of this layout,
//! but it keeps a hash beside each entry, `usize` positions and one `Vec` that doubles:
//! about as much free room as before.
//!
//! The price: a lookup reads the position, then the entry (a second memory access where a
//! hash map reads one slot), and a removal looks up the moved entry's position again.

use std::hash::{BuildHasher, Hash};

use hashbrown::{DefaultHashBuilder, HashTable};

/// Entries per chunk (the first one grows up to it by doubling, so that a small map stays
/// small).
pub const CHUNK: usize = 1024;

/// The map (see the module doc).
#[derive(Debug, Clone)]
pub struct DenseMap<K, V> {
    index: HashTable<u32>,
    chunks: Vec<Vec<(K, V)>>,
    len: usize,
    hasher: DefaultHashBuilder,
}

impl<K, V> Default for DenseMap<K, V> {
    fn default() -> Self {
        DenseMap {
            index: HashTable::new(),
            chunks: Vec::new(),
            len: 0,
            hasher: DefaultHashBuilder::default(),
        }
    }
}

/// The entry at position `pos` of `chunks`.
fn entry_at<K, V>(chunks: &[Vec<(K, V)>], pos: usize) -> Option<&(K, V)> {
    chunks.get(pos / CHUNK)?.get(pos % CHUNK)
}

/// The hash of the key at position `pos`: what the table of positions rehashes by.
fn hash_at<K: Hash, V>(chunks: &[Vec<(K, V)>], hasher: &DefaultHashBuilder, pos: u32) -> u64 {
    entry_at(chunks, pos as usize).map_or(0, |e| hasher.hash_one(&e.0))
}

impl<K: Hash + Eq + Copy, V: Copy> DenseMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at(&self, pos: usize) -> Option<&(K, V)> {
        entry_at(&self.chunks, pos)
    }

    fn at_mut(&mut self, pos: usize) -> Option<&mut (K, V)> {
        self.chunks.get_mut(pos / CHUNK)?.get_mut(pos % CHUNK)
    }

    /// The position of `key`'s entry.
    fn position(&self, key: &K) -> Option<usize> {
        let chunks = &self.chunks;
        let eq = |p: &u32| entry_at(chunks, *p as usize).is_some_and(|e| e.0 == *key);
        self.index
            .find(self.hasher.hash_one(key), eq)
            .map(|&p| p as usize)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.position(key).is_some()
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.at(self.position(key)?).map(|e| &e.1)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let pos = self.position(key)?;
        self.at_mut(pos).map(|e| &mut e.1)
    }

    /// Puts `value` under `key`, in place of the value it had.
    pub fn insert(&mut self, key: K, value: V) {
        if let Some(v) = self.get_mut(&key) {
            *v = value;
            return;
        }
        self.insert_new(key, value);
    }

    /// Adds an entry for `key`, which the caller has just looked up and not found (one
    /// lookup fewer than [`DenseMap::insert`]).
    pub fn insert_new(&mut self, key: K, value: V) {
        debug_assert!(!self.contains_key(&key), "insert_new of a key held already");
        let pos = self.len as u32;
        let hash = self.hasher.hash_one(key);
        let (chunks, hasher) = (&self.chunks, &self.hasher);
        self.index
            .insert_unique(hash, pos, |p| hash_at(chunks, hasher, *p));
        self.push((key, value));
    }

    /// Appends an entry at the end of the chunks.
    fn push(&mut self, e: (K, V)) {
        let room = self.chunks.last().is_some_and(|c| c.len() < CHUNK);
        if !room {
            // A first chunk starts small; the next ones whole (the one before is full).
            let cap = if self.chunks.is_empty() { 8 } else { CHUNK };
            self.chunks.push(Vec::with_capacity(cap));
        }
        if let Some(c) = self.chunks.last_mut() {
            if c.len() == c.capacity() {
                // Only the first chunk grows: double, up to a whole chunk.
                c.reserve_exact((c.capacity() * 2).min(CHUNK) - c.len());
            }
            c.push(e);
            self.len += 1;
        }
    }

    /// Removes the entry at `pos`, moving the last one into its place.
    fn remove_at(&mut self, pos: usize) {
        let Some(&(key, _)) = self.at(pos) else {
            return;
        };
        let hash = self.hasher.hash_one(key);
        if let Ok(e) = self.index.find_entry(hash, |p| *p as usize == pos) {
            e.remove();
        }
        let last = self.len - 1;
        if pos != last {
            if let Some(&moved) = self.at(last) {
                let hash = self.hasher.hash_one(moved.0);
                if let Some(p) = self.index.find_mut(hash, |p| *p as usize == last) {
                    *p = pos as u32;
                }
                if let Some(e) = self.at_mut(pos) {
                    *e = moved;
                }
            }
        }
        if let Some(c) = self.chunks.last_mut() {
            c.pop();
            if c.is_empty() {
                self.chunks.pop();
            }
        }
        self.len -= 1;
    }

    /// Removes `key`'s entry; whether it had one.
    pub fn remove(&mut self, key: &K) -> bool {
        match self.position(key) {
            Some(pos) => {
                self.remove_at(pos);
                true
            }
            None => false,
        }
    }

    /// Keeps the entries for which `keep` says so (it may change their values), then gives
    /// back the table's room when a quarter or less of it is used.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        let mut pos = 0;
        while pos < self.len {
            let kept = match self.at_mut(pos) {
                Some((k, v)) => keep(k, v),
                None => true,
            };
            if kept {
                pos += 1;
            } else {
                // The last entry moves here, and is looked at next.
                self.remove_at(pos);
            }
        }
        if self.index.capacity() > 64 && self.len < self.index.capacity() / 4 {
            let (chunks, hasher) = (&self.chunks, &self.hasher);
            self.index.shrink_to_fit(|p| hash_at(chunks, hasher, *p));
        }
    }

    /// Makes room for `more` entries in the table.
    pub fn reserve(&mut self, more: usize) {
        let (chunks, hasher) = (&self.chunks, &self.hasher);
        self.index.reserve(more, |p| hash_at(chunks, hasher, *p));
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &(K, V)> {
        self.chunks.iter().flatten()
    }

    /// Heap bytes held: the table of positions with its control bytes, and the chunks.
    pub fn memory_bytes(&self) -> usize {
        super::mem::table_bytes(self.index.capacity(), size_of::<u32>())
            + self.chunks.capacity() * size_of::<Vec<(K, V)>>()
            + self
                .chunks
                .iter()
                .map(|c| c.capacity() * size_of::<(K, V)>())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The map and a model agree on every key, and its entries are dense.
    fn agrees(m: &DenseMap<u64, u32>, model: &BTreeMap<u64, u32>) {
        assert_eq!(m.len(), model.len());
        for (k, v) in model {
            assert_eq!(m.get(k), Some(v), "key {k}");
        }
        let mut all: Vec<(u64, u32)> = m.iter().copied().collect();
        all.sort_unstable();
        assert_eq!(all, model.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>());
        let full = m.chunks.iter().rev().skip(1).all(|c| c.len() == CHUNK);
        assert!(full, "every chunk but the last is full");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u32),
        Remove(u64),
        /// Keeps the keys whose value is not divisible by the number, adding 1 to them.
        Retain(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..3000u64, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            2 => (0..3000u64).prop_map(Op::Remove),
            1 => (2..5u32).prop_map(Op::Retain),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(op(), 1..4000)) {
            let mut m = DenseMap::new();
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        // A key not held goes in by either way, half the time each.
                        if model.contains_key(&k) || v % 2 == 0 {
                            m.insert(k, v);
                        } else {
                            m.insert_new(k, v);
                        }
                        model.insert(k, v);
                    }
                    Op::Remove(k) => {
                        prop_assert_eq!(m.remove(&k), model.remove(&k).is_some());
                    }
                    Op::Retain(d) => {
                        let keep = |v: &mut u32| {
                            let k = !v.is_multiple_of(d);
                            if k {
                                *v = v.wrapping_add(1);
                            }
                            k
                        };
                        m.retain(|_, v| keep(v));
                        model.retain(|_, v| keep(v));
                    }
                }
            }
            agrees(&m, &model);
        }
    }

    #[test]
    fn an_entry_costs_its_bytes_and_five_per_table_slot() {
        let mut m: DenseMap<u64, u32> = DenseMap::new();
        for k in 0..10 * CHUNK as u64 {
            m.insert(k, 1);
        }
        let entries = 10 * CHUNK * size_of::<(u64, u32)>();
        // 10 240 entries: a table of 16 384 slots.
        let table = super::super::mem::table_bytes(m.index.capacity(), 4);
        let chunk_list = m.chunks.capacity() * size_of::<Vec<(u64, u32)>>();
        assert_eq!(m.memory_bytes(), entries + table + chunk_list);
        assert!(chunk_list <= 16 * 24);
        // Emptied, it gives its room back.
        m.retain(|_, _| false);
        assert!(m.is_empty());
        assert!(m.memory_bytes() < 1024, "{}", m.memory_bytes());
    }
}
