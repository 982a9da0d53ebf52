//! Unique visitors: a mergeable HyperLogLog per bucket, and the one hash of a visitor id that
//! both the sketch and the routing use.
//!
//! [`Uniques`] is exact — a set of visitor hashes — up to [`EXACT_LIMIT`] distinct visitors
//! (most (minute, site) buckets of most sites), and beyond that `cardinality-estimator`
//! (Cloudflare's HyperLogLog++, p = 14 registers of 6 bits, 12 KiB, 0.81 % standard error)
//! rather than a hand-written sketch. The exact set is never larger than the sketch it turns
//! into (1 536 hashes in a table of 2 048 slots ≈ 18 KiB, vs 12 KiB), and both merge losslessly. The hash is `wyhash` with a fixed seed, so that a sketch rebuilt from the
//! log after a restart is bit-for-bit the sketch that was lost, and every query answers exactly
//! what it answered before.
//!
//! Visitors are partitioned over shards by the *top* bits of the same hash
//! (`route::partition::owner_of_visitor`); the sketch takes its register index from the low bits and its rank
//! from the bits above p, so the partition does not bias the registers. Because each visitor
//! lives on exactly one shard, the distinct count over all shards is the sum of the per-shard
//! estimates — no sketch crosses a thread at query time.

use cardinality_estimator::CardinalityEstimator;

/// The HyperLogLog++ sketch with `2^P` registers (item type unused: hashes are inserted
/// directly): p = 14 for a site's uniques, p = 12 for a url's visitors.
pub type Sketch<const P: usize = 14> = CardinalityEstimator<u64, wyhash::WyHash, P, 6>;

/// How many distinct visitors a bucket's [`Uniques<P>`] counts exactly before it turns into a
/// sketch: as many 8-byte hashes as the sketch has bytes (6-bit registers: `0.75 × 2^P`).
pub const fn exact_limit(p: usize) -> usize {
    (3 << p) / 32
}

/// Distinct visitors of a site counted exactly up to this many, then by the sketch.
pub const EXACT_LIMIT: usize = exact_limit(14);

/// The precision of a url's visitors (`Visitors`): 4 096 registers, 3 KiB, 1.6 % standard
/// error; exact up to [`URL_EXACT_LIMIT`].
pub const URL_P: usize = 12;
/// Distinct visitors of a url in one bucket counted exactly up to this many (384).
pub const URL_EXACT_LIMIT: usize = exact_limit(URL_P);

/// The distinct visitors of one bucket: exact while small, a sketch beyond
/// [`exact_limit`]`(P)`.
#[derive(Debug, Clone)]
pub enum Uniques<const P: usize = 14> {
    Exact(hashbrown::HashSet<u64>),
    Sketch(Box<Sketch<P>>),
}

impl<const P: usize> Default for Uniques<P> {
    fn default() -> Self {
        Uniques::Exact(hashbrown::HashSet::new())
    }
}

impl<const P: usize> Uniques<P> {
    pub fn new() -> Self {
        Self::default()
    }

    fn to_sketch(set: &hashbrown::HashSet<u64>) -> Box<Sketch<P>> {
        let mut s = Box::new(Sketch::new());
        for &h in set {
            s.insert_hash(h);
        }
        s
    }

    /// Adds one visitor hash.
    pub fn insert_hash(&mut self, h: u64) {
        match self {
            Uniques::Exact(set) => {
                set.insert(h);
                if set.len() > exact_limit(P) {
                    *self = Uniques::Sketch(Self::to_sketch(set));
                }
            }
            Uniques::Sketch(s) => s.insert_hash(h),
        }
    }

    /// Adds every visitor of `other` (lossless: the union).
    pub fn merge(&mut self, other: &Uniques<P>) {
        match (&mut *self, other) {
            (Uniques::Exact(a), Uniques::Exact(b)) => {
                a.extend(b.iter().copied());
                if a.len() > exact_limit(P) {
                    *self = Uniques::Sketch(Self::to_sketch(a));
                }
            }
            (Uniques::Exact(a), Uniques::Sketch(b)) => {
                let mut s = b.clone();
                for &h in a.iter() {
                    s.insert_hash(h);
                }
                *self = Uniques::Sketch(s);
            }
            (Uniques::Sketch(a), Uniques::Exact(b)) => {
                for &h in b {
                    a.insert_hash(h);
                }
            }
            (Uniques::Sketch(a), Uniques::Sketch(b)) => a.merge(b),
        }
    }

    /// The number of distinct visitors (exact up to [`exact_limit`]`(P)`).
    pub fn estimate(&self) -> usize {
        match self {
            Uniques::Exact(set) => set.len(),
            Uniques::Sketch(s) => s.estimate(),
        }
    }

    /// What two equal sets of visitors have in common however they were inserted: the sorted
    /// hashes of an exact set, or a sketch's registers. A HyperLogLog slice also caches its
    /// harmonic sum as an `f32` summed in insertion order, whose last bits depend on that
    /// order; it is left out, and so is the order of the sparse forms.
    pub fn canonical(&self) -> Vec<u64> {
        match self {
            Uniques::Exact(set) => {
                let mut v: Vec<u64> = set.iter().copied().collect();
                v.sort_unstable();
                v
            }
            Uniques::Sketch(s) => {
                let (data, words): (u64, Option<Vec<u32>>) = serde_json::to_value(&**s)
                    .and_then(serde_json::from_value)
                    .unwrap_or((0, None));
                let mut v: Vec<u64> = match words {
                    // HyperLogLog: [zero registers, harmonic sum, registers…].
                    Some(w) if data & 3 == 3 => w
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != 1)
                        .map(|(_, x)| u64::from(*x))
                        .collect(),
                    Some(w) => {
                        let mut v: Vec<u64> = w.iter().map(|x| u64::from(*x)).collect();
                        v.sort_unstable();
                        v
                    }
                    None => {
                        let mut v = vec![(data >> 2) & 0xffff_ffff, data >> 34];
                        v.sort_unstable();
                        v
                    }
                };
                v.insert(0, u64::MAX);
                v
            }
        }
    }

    /// Heap bytes held.
    pub fn size_of(&self) -> usize {
        match self {
            Uniques::Exact(set) => super::mem::table_bytes(set.capacity(), 8),
            Uniques::Sketch(s) => s.size_of(),
        }
    }
}

/// A sketch from its serialized parts (`cardinality-estimator`'s serde form: the data word and
/// the words of its array or HyperLogLog representation), without a serde format in between:
/// a minimal deserializer hands the crate the tuple it asks for. None when the crate refuses
/// them (damaged bytes).
pub fn sketch_from_parts<const P: usize>(data: u64, words: Option<Vec<u32>>) -> Option<Sketch<P>> {
    use serde::Deserialize as _;
    Sketch::<P>::deserialize(parts::Parts { data, words }).ok()
}

/// Distinct visitors a url's [`Visitors`] keeps in a plain list before a [`Uniques`].
pub const URL_FEW: usize = 32;

/// The distinct visitors of one url in one bucket, in 16 bytes of the url's cell (a cell
/// exists for every url in every minute and hour it was hit, so its size is the aggregates'
/// memory): none; one, inline (most cells of most urls); a few — up to [`URL_FEW`] hashes in
/// a plain list, which an insert scans in contiguous memory where a hash set costs two random
/// cache lines; beyond, a [`Uniques`] at p = [`URL_P`]: exact up to [`URL_EXACT_LIMIT`], then a
/// 3 KiB sketch with 1.6 % standard error. Unlike a site's uniques, a url's visitors live on
/// the url's owner (every visitor of it), so its count over several owners is never needed.
#[derive(Debug, Clone, Default)]
pub enum Visitors {
    #[default]
    None,
    One(u64),
    Few(Box<Vec<u64>>),
    Many(Box<Uniques<URL_P>>),
}

impl Visitors {
    /// Adds one visitor hash; false when it was known already (a sketch: always true).
    pub fn insert_hash(&mut self, h: u64) -> bool {
        match self {
            Visitors::None => *self = Visitors::One(h),
            Visitors::One(a) if *a == h => return false,
            Visitors::One(a) => {
                let mut v = Vec::with_capacity(4);
                v.extend([*a, h]);
                *self = Visitors::Few(Box::new(v));
            }
            Visitors::Few(v) if v.contains(&h) => return false,
            Visitors::Few(v) if v.len() < URL_FEW => v.push(h),
            Visitors::Few(v) => {
                let mut u = Box::new(Uniques::new());
                for &x in v.iter() {
                    u.insert_hash(x);
                }
                u.insert_hash(h);
                *self = Visitors::Many(u);
            }
            Visitors::Many(u) => match &mut **u {
                Uniques::Exact(set) if set.contains(&h) => return false,
                u => u.insert_hash(h),
            },
        }
        true
    }

    /// Reads what [`Visitors::insert_hash`] of `h` reads first, changing nothing (see
    /// `Aggregates::warm`): a list's first hash, a set's slot for `h`, a sketch's header.
    pub fn warm(&self, h: u64) -> u64 {
        match self {
            Visitors::Few(v) => v.first().copied().unwrap_or(0),
            Visitors::Many(u) => match &**u {
                Uniques::Exact(set) => u64::from(set.contains(&h)),
                Uniques::Sketch(_) => 1,
            },
            _ => 0,
        }
    }

    /// The hashes of a list form (none, one or a few; nothing for a [`Uniques`]).
    pub fn listed(&self) -> &[u64] {
        match self {
            Visitors::One(h) => std::slice::from_ref(h),
            Visitors::Few(v) => v,
            _ => &[],
        }
    }

    /// Adds every visitor of `o` (the union).
    pub fn merge(&mut self, o: &Visitors) {
        match o {
            Visitors::Many(b) => match self {
                Visitors::Many(a) => a.merge(b),
                _ => {
                    let mut m = b.clone();
                    for &h in self.listed() {
                        m.insert_hash(h);
                    }
                    *self = Visitors::Many(m);
                }
            },
            _ => {
                for &h in o.listed() {
                    let _ = self.insert_hash(h);
                }
            }
        }
    }

    /// The number of distinct visitors.
    pub fn estimate(&self) -> usize {
        match self {
            Visitors::Many(u) => u.estimate(),
            _ => self.listed().len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Visitors::None)
    }

    /// Whether the count is exact (no sketch involved).
    pub fn is_exact(&self) -> bool {
        !matches!(self, Visitors::Many(u) if matches!(**u, Uniques::Sketch(_)))
    }

    /// As a [`Uniques`] (what the bytes of a bucket hold).
    pub fn to_uniques(&self) -> std::borrow::Cow<'_, Uniques<URL_P>> {
        use std::borrow::Cow;
        match self {
            Visitors::Many(u) => Cow::Borrowed(&**u),
            _ => Cow::Owned(Uniques::Exact(self.listed().iter().copied().collect())),
        }
    }

    /// From a [`Uniques`] (read from the bytes of a bucket): the form inserting its visitors
    /// one by one gives (a list in ascending order while few).
    pub fn from_uniques(u: Uniques<URL_P>) -> Visitors {
        match u {
            Uniques::Exact(set) if set.len() <= URL_FEW => {
                let mut v: Vec<u64> = set.into_iter().collect();
                v.sort_unstable();
                match v[..] {
                    [] => Visitors::None,
                    [h] => Visitors::One(h),
                    _ => Visitors::Few(Box::new(v)),
                }
            }
            u => Visitors::Many(Box::new(u)),
        }
    }

    /// Heap bytes held.
    pub fn size_of(&self) -> usize {
        match self {
            Visitors::None | Visitors::One(_) => 0,
            Visitors::Few(v) => size_of::<Vec<u64>>() + v.capacity() * 8,
            Visitors::Many(u) => size_of::<Uniques<URL_P>>() + u.size_of(),
        }
    }
}

mod parts {
    //! The deserializer behind [`super::sketch_from_parts`]: a 2-tuple of a `u64` and an
    //! optional sequence of `u32`.
    use serde::de::value::{Error, SeqDeserializer, U64Deserializer};
    use serde::de::{DeserializeSeed, Deserializer, IntoDeserializer, SeqAccess, Visitor};
    use serde::forward_to_deserialize_any;

    pub struct Parts {
        pub data: u64,
        pub words: Option<Vec<u32>>,
    }

    impl<'de> Deserializer<'de> for Parts {
        type Error = Error;
        fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            v.visit_seq(Seq {
                data: Some(self.data),
                words: Some(self.words),
            })
        }
        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
            identifier ignored_any
        }
    }

    struct Seq {
        data: Option<u64>,
        words: Option<Option<Vec<u32>>>,
    }

    impl<'de> SeqAccess<'de> for Seq {
        type Error = Error;
        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, Error> {
            if let Some(d) = self.data.take() {
                let de: U64Deserializer<Error> = d.into_deserializer();
                return seed.deserialize(de).map(Some);
            }
            match self.words.take() {
                Some(w) => seed.deserialize(Words(w)).map(Some),
                None => Ok(None),
            }
        }
    }

    struct Words(Option<Vec<u32>>);

    impl<'de> Deserializer<'de> for Words {
        type Error = Error;
        fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            match self.0 {
                None => v.visit_none(),
                Some(w) => v.visit_some(SeqDeserializer::<_, Error>::new(w.into_iter())),
            }
        }
        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
            identifier ignored_any
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::partition::{owner_of_key, owner_of_visitor, vid_hash};

    #[test]
    fn merge_is_the_union_in_every_representation() {
        let set = |r: std::ops::Range<u64>| {
            let mut u: Uniques = Uniques::new();
            for i in r {
                u.insert_hash(vid_hash(&i.to_string()));
            }
            u
        };
        // exact + exact stays exact; exact + exact past the limit turns into a sketch.
        let mut a = set(0..1000);
        a.merge(&set(500..1200));
        assert_eq!(a.estimate(), 1200);
        a.merge(&set(1200..5000));
        let e = a.estimate() as f64;
        assert!((e - 5000.0).abs() / 5000.0 < 0.03, "{e}");
        assert!(matches!(a, Uniques::Sketch(_)));
        // sketch + exact and exact + sketch agree.
        let mut b = set(4000..4100);
        b.merge(&a);
        let mut c = a.clone();
        c.merge(&set(4000..4100));
        assert_eq!(b.estimate(), c.estimate());
    }

    #[test]
    fn estimate_within_one_percent_and_partition_sums() {
        for n in [10usize, 1000, 50_000, 300_000] {
            let mut all: Uniques = Uniques::new();
            let mut parts: [Uniques; 3] = Default::default();
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
            if n <= EXACT_LIMIT {
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

    /// The direct decode gives the sketch a round trip through JSON gives, in every
    /// representation (small, array, HyperLogLog).
    #[test]
    fn sketch_from_parts_matches_serde_json() {
        for n in [1u64, 2, 50, 1000, 40_000] {
            let mut s: Sketch = Sketch::new();
            for i in 0..n {
                s.insert_hash(vid_hash(&i.to_string()));
            }
            let (data, words): (u64, Option<Vec<u32>>) =
                serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
            let data = if words.is_some() { data & 3 } else { data };
            let json: Sketch =
                serde_json::from_value(serde_json::json!([data, words.clone()])).unwrap();
            let direct: Sketch = sketch_from_parts(data, words).unwrap();
            assert_eq!(direct.estimate(), json.estimate(), "n={n}");
            assert_eq!(
                Uniques::Sketch(Box::new(direct)).canonical(),
                Uniques::Sketch(Box::new(json)).canonical(),
                "n={n}"
            );
        }
    }
}
