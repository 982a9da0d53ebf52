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

/// Set in every hash a [`Visitors`] holds (see its word).
const ONE: u64 = 1 << 63;
/// Set in a word that points to a [`Uniques`] (clear: to a list).
const MANY: u64 = 1;

/// A visitor hash as a [`Visitors`] holds it: with its top bit set. Two hashes that differ
/// only there count as one visitor (two distinct visitors in 2⁶³ pairs); a sketch takes its
/// register from the low bits and its rank from the lowest set bit above p, so it almost
/// never sees the difference either (a rank reaches bit 63 once in 2⁵¹ hashes).
fn norm(h: u64) -> u64 {
    h | ONE
}

/// The distinct visitors of one url (or profile) in one bucket, in 8 bytes of its cell (a
/// cell exists for every url in every minute and hour it was hit, so its size is the
/// aggregates' memory; at 4-byte alignment, so that a cell with its key is 24 bytes): none;
/// one, inline (most cells of most urls); a few — up to [`URL_FEW`] hashes in a plain list,
/// which an insert scans in contiguous memory where a hash set costs two random cache lines;
/// beyond, a [`Uniques`] at p = [`URL_P`]: exact up to [`URL_EXACT_LIMIT`], then a 3 KiB
/// sketch with 1.6 % standard error. Unlike a site's uniques, a url's visitors live on the
/// url's owner (every visitor of it), so its count over several owners is never needed.
///
/// The word: 0 is none; with its top bit set, the one visitor's hash (every hash held has it
/// set: `norm`); otherwise a pointer this value owns, from `Box::into_raw` — to the list
/// (`Box<Vec<u64>>`) when its low bit is clear, to the [`Uniques`] with the low bit set (a
/// box is 8-byte aligned, and a user-space address on the 64-bit targets pixeld runs on has
/// its top bit clear; `Visitors::boxed` checks both).
pub struct Visitors {
    word: [u32; 2],
    _owns: std::marker::PhantomData<Owned>,
}

/// What a [`Visitors`] word stands for, owned: how it is built and dropped. The list is a
/// boxed `Vec` so that one thin pointer, the word, holds it.
#[allow(clippy::box_collection)]
enum Owned {
    None,
    One(u64),
    Few(Box<Vec<u64>>),
    Many(Box<Uniques<URL_P>>),
}

/// What a [`Visitors`] word stands for, borrowed.
enum Form<'a> {
    None,
    One(u64),
    Few(&'a Vec<u64>),
    Many(&'a Uniques<URL_P>),
}

/// The hashes of a list form, a [`Visitors::listed`].
pub enum Listed<'a> {
    One(std::iter::Once<u64>),
    Few(std::iter::Copied<std::slice::Iter<'a, u64>>),
    None,
}

impl Iterator for Listed<'_> {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        match self {
            Listed::One(i) => i.next(),
            Listed::Few(i) => i.next(),
            Listed::None => None,
        }
    }
}

impl Default for Visitors {
    fn default() -> Self {
        Visitors::from_word(0)
    }
}

impl Drop for Visitors {
    fn drop(&mut self) {
        drop(self.take());
    }
}

impl Clone for Visitors {
    fn clone(&self) -> Self {
        match self.form() {
            Form::Few(v) => Visitors::boxed(Owned::Few(Box::new(v.clone()))),
            Form::Many(u) => Visitors::boxed(Owned::Many(Box::new(u.clone()))),
            Form::None | Form::One(_) => Visitors::from_word(self.word()),
        }
    }
}

impl std::fmt::Debug for Visitors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.form() {
            Form::None => f.write_str("None"),
            Form::One(h) => f.debug_tuple("One").field(&h).finish(),
            Form::Few(v) => f.debug_tuple("Few").field(v).finish(),
            Form::Many(u) => f.debug_tuple("Many").field(u).finish(),
        }
    }
}

impl Visitors {
    fn word(&self) -> u64 {
        u64::from(self.word[0]) | (u64::from(self.word[1]) << 32)
    }

    fn from_word(w: u64) -> Self {
        Visitors {
            word: [w as u32, (w >> 32) as u32],
            _owns: std::marker::PhantomData,
        }
    }

    /// `o` as a word (its box handed over to the word).
    fn boxed(o: Owned) -> Self {
        /// A box's address, checked to leave the word's two marks free.
        fn address(p: u64) -> u64 {
            assert!(
                p != 0 && p & (ONE | MANY) == 0,
                "a heap address {p:#x} with its top or low bit set: url visitors cannot be kept on this target"
            );
            p
        }
        let w = match o {
            Owned::None => 0,
            Owned::One(h) => norm(h),
            Owned::Few(v) => address(Box::into_raw(v) as u64),
            Owned::Many(u) => address(Box::into_raw(u) as u64) | MANY,
        };
        Visitors::from_word(w)
    }

    #[allow(unsafe_code)]
    fn form(&self) -> Form<'_> {
        let w = self.word();
        if w == 0 {
            Form::None
        } else if w & ONE != 0 {
            Form::One(w)
        } else if w & MANY != 0 {
            // SAFETY: a word with the top bit clear and the low bit set was made by `boxed`
            // from `Box::into_raw` of a `Box<Uniques<URL_P>>` with that bit set; this value
            // owns the box until `take` hands it back, and `&self` lends it shared.
            Form::Many(unsafe { &*((w & !MANY) as *const Uniques<URL_P>) })
        } else {
            // SAFETY: as above, a `Box<Vec<u64>>` (low bit clear).
            Form::Few(unsafe { &*(w as *const Vec<u64>) })
        }
    }

    /// The list or the [`Uniques`], mutably (none for the inline forms).
    #[allow(unsafe_code)]
    fn boxes_mut(&mut self) -> (Option<&mut Vec<u64>>, Option<&mut Uniques<URL_P>>) {
        let w = self.word();
        if w == 0 || w & ONE != 0 {
            (None, None)
        } else if w & MANY != 0 {
            // SAFETY: see `form`; `&mut self` lends the box exclusively.
            (
                None,
                Some(unsafe { &mut *((w & !MANY) as *mut Uniques<URL_P>) }),
            )
        } else {
            // SAFETY: see `form`.
            (Some(unsafe { &mut *(w as *mut Vec<u64>) }), None)
        }
    }

    /// What the word stands for, owned, leaving none.
    #[allow(unsafe_code)]
    fn take(&mut self) -> Owned {
        let w = self.word();
        self.word = [0, 0];
        if w == 0 {
            Owned::None
        } else if w & ONE != 0 {
            Owned::One(w)
        } else if w & MANY != 0 {
            // SAFETY: see `form`; the word was just cleared, so the box is taken back once.
            Owned::Many(unsafe { Box::from_raw((w & !MANY) as *mut Uniques<URL_P>) })
        } else {
            // SAFETY: as above.
            Owned::Few(unsafe { Box::from_raw(w as *mut Vec<u64>) })
        }
    }

    /// Adds one visitor hash; false when it was known already (a sketch: always true).
    pub fn insert_hash(&mut self, h: u64) -> bool {
        let h = norm(h);
        match self.form() {
            Form::None => {
                *self = Visitors::boxed(Owned::One(h));
                return true;
            }
            Form::One(a) if a == h => return false,
            Form::One(a) => {
                let mut v = Vec::with_capacity(4);
                v.extend([a, h]);
                *self = Visitors::boxed(Owned::Few(Box::new(v)));
                return true;
            }
            Form::Few(v) if v.contains(&h) => return false,
            Form::Few(v) if v.len() >= URL_FEW => {
                let mut u = Box::new(Uniques::new());
                for &x in v.iter() {
                    u.insert_hash(x);
                }
                u.insert_hash(h);
                *self = Visitors::boxed(Owned::Many(u));
                return true;
            }
            Form::Many(Uniques::Exact(set)) if set.contains(&h) => return false,
            Form::Few(_) | Form::Many(_) => {}
        }
        match self.boxes_mut() {
            (Some(v), _) => v.push(h),
            (_, Some(u)) => u.insert_hash(h),
            (None, None) => {}
        }
        true
    }

    /// Reads what [`Visitors::insert_hash`] of `h` reads first, changing nothing (see
    /// `Aggregates::warm`): a list's first hash, a set's slot for `h`, a sketch's header.
    pub fn warm(&self, h: u64) -> u64 {
        match self.form() {
            Form::Few(v) => v.first().copied().unwrap_or(0),
            Form::Many(Uniques::Exact(set)) => u64::from(set.contains(&norm(h))),
            Form::Many(Uniques::Sketch(_)) => 1,
            Form::None | Form::One(_) => 0,
        }
    }

    /// The hashes of a list form (none, one or a few; nothing for a [`Uniques`]).
    pub fn listed(&self) -> Listed<'_> {
        match self.form() {
            Form::One(h) => Listed::One(std::iter::once(h)),
            Form::Few(v) => Listed::Few(v.iter().copied()),
            Form::None | Form::Many(_) => Listed::None,
        }
    }

    /// Adds every visitor of `o` (the union).
    pub fn merge(&mut self, o: &Visitors) {
        match o.form() {
            Form::Many(b) => {
                if let (_, Some(a)) = self.boxes_mut() {
                    a.merge(b);
                } else {
                    let mut m = Box::new(b.clone());
                    for h in self.listed() {
                        m.insert_hash(h);
                    }
                    *self = Visitors::boxed(Owned::Many(m));
                }
            }
            _ => {
                for h in o.listed() {
                    let _ = self.insert_hash(h);
                }
            }
        }
    }

    /// The number of distinct visitors.
    pub fn estimate(&self) -> usize {
        match self.form() {
            Form::None => 0,
            Form::One(_) => 1,
            Form::Few(v) => v.len(),
            Form::Many(u) => u.estimate(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.word() == 0
    }

    /// Whether the count is exact (no sketch involved).
    pub fn is_exact(&self) -> bool {
        !matches!(self.form(), Form::Many(Uniques::Sketch(_)))
    }

    /// As a [`Uniques`] (what the bytes of a bucket hold).
    pub fn to_uniques(&self) -> std::borrow::Cow<'_, Uniques<URL_P>> {
        use std::borrow::Cow;
        match self.form() {
            Form::Many(u) => Cow::Borrowed(u),
            _ => Cow::Owned(Uniques::Exact(self.listed().collect())),
        }
    }

    /// The [`Uniques`] of a large form, for writing its bytes as they are (None for a list).
    pub fn many(&self) -> Option<&Uniques<URL_P>> {
        match self.form() {
            Form::Many(u) => Some(u),
            _ => None,
        }
    }

    /// From a [`Uniques`] (read from the bytes of a bucket): the form inserting its visitors
    /// one by one gives (a list in ascending order while few). Hashes written by a build
    /// before hashes were held with their top bit set (`norm`) get it here.
    pub fn from_uniques(u: Uniques<URL_P>) -> Visitors {
        let u = match u {
            Uniques::Exact(set) if set.iter().any(|&h| h & ONE == 0) => {
                Uniques::Exact(set.into_iter().map(norm).collect())
            }
            u => u,
        };
        match u {
            Uniques::Exact(set) if set.len() <= URL_FEW => {
                let mut v: Vec<u64> = set.into_iter().collect();
                v.sort_unstable();
                match v[..] {
                    [] => Visitors::default(),
                    [h] => Visitors::boxed(Owned::One(h)),
                    _ => Visitors::boxed(Owned::Few(Box::new(v))),
                }
            }
            u => Visitors::boxed(Owned::Many(Box::new(u))),
        }
    }

    /// Heap bytes held.
    pub fn size_of(&self) -> usize {
        match self.form() {
            Form::None | Form::One(_) => 0,
            Form::Few(v) => size_of::<Vec<u64>>() + v.capacity() * 8,
            Form::Many(u) => size_of::<Uniques<URL_P>>() + u.size_of(),
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

    /// A url's visitors in 8 bytes of a 20-byte cell (24 with its key), and every form —
    /// none, one, a few, a set, a sketch — counting, merging, cloning and round-tripping
    /// through `Uniques` exactly like a plain set of the hashes; hashes stored by a build
    /// before they were held with their top bit set read back as the same visitors.
    #[test]
    fn visitors_count_like_a_set_in_every_form() {
        use crate::agg::cells::UrlCell;
        assert_eq!(size_of::<Visitors>(), 8);
        assert_eq!(size_of::<(u32, UrlCell)>(), 24);
        let hashes: Vec<u64> = (0..2000u64).map(|i| vid_hash(&i.to_string())).collect();
        // Hashes with the top bit clear and set, and the ones `norm` maps onto each other
        // are never both drawn (distinct visitors).
        for n in [
            0usize,
            1,
            2,
            URL_FEW,
            URL_FEW + 1,
            300,
            URL_EXACT_LIMIT + 1,
            2000,
        ] {
            let mut v = Visitors::default();
            let mut model = std::collections::HashSet::new();
            for (i, &h) in hashes.iter().take(n).enumerate() {
                assert_eq!(
                    v.insert_hash(h),
                    model.insert(h) || !v.is_exact(),
                    "n={n} i={i}"
                );
                // Again: known (a sketch says true).
                assert_eq!(v.insert_hash(h), !v.is_exact(), "n={n} i={i}");
            }
            let exact = v.is_exact();
            assert_eq!(exact, n <= URL_EXACT_LIMIT, "n={n}");
            if exact {
                assert_eq!(v.estimate(), n, "n={n}");
            } else {
                let e = v.estimate() as f64;
                assert!((e - n as f64).abs() / (n as f64) < 0.05, "n={n} e={e}");
            }
            assert_eq!(v.is_empty(), n == 0);
            let c = v.clone();
            assert_eq!(c.estimate(), v.estimate());
            assert_eq!(c.to_uniques().canonical(), v.to_uniques().canonical());
            let back = Visitors::from_uniques(v.to_uniques().into_owned());
            assert_eq!(back.to_uniques().canonical(), v.to_uniques().canonical());
            assert_eq!(back.size_of() > 0, n > 1, "n={n}");
            // Merging two halves (in both orders, into every form) gives the whole.
            for split in [0, 1.min(n), n / 2, n.saturating_sub(1)] {
                let part = |r: &[u64]| {
                    let mut p = Visitors::default();
                    for &h in r {
                        p.insert_hash(h);
                    }
                    p
                };
                let (a, b) = hashes[..n].split_at(split);
                let (mut ab, mut ba) = (part(a), part(b));
                ab.merge(&part(b));
                ba.merge(&part(a));
                for m in [&ab, &ba] {
                    if exact {
                        assert_eq!(m.estimate(), n, "n={n} split={split}");
                        assert_eq!(m.to_uniques().canonical(), v.to_uniques().canonical());
                    } else {
                        assert!(m.estimate().abs_diff(v.estimate()) * 50 <= n, "n={n}");
                    }
                }
            }
        }
        // Stored by a build before `norm`: the same visitors, none counted twice.
        let old = Uniques::Exact(hashes[..40].iter().map(|h| h & !ONE).collect());
        let mut v = Visitors::from_uniques(old);
        for &h in &hashes[..40] {
            assert!(!v.insert_hash(h));
        }
        assert_eq!(v.estimate(), 40);
        let mut one = Visitors::from_uniques(Uniques::Exact([hashes[7] & !ONE].into()));
        assert!(!one.insert_hash(hashes[7]));
        assert_eq!(one.estimate(), 1);
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
