//! The cells of one bucket (url, referrer and site counters, uniques) and their bytes: the
//! in-memory tables the hot path updates, the lossless merge that adds two buckets up, and
//! the one byte encoding of a bucket's cells that both checkpoints (`store::format`) and
//! sealed bucket files (`sealed`) use.
//!
//! Decoding never trusts the disk: every read is bounds-checked ([`Cursor`]), counts are
//! checked against the bytes left before anything is reserved, and no input can make it
//! panic. The byte table of the cells is in `store/format.rs` ("Cells of a bucket").

use hashbrown::HashMap;

use super::hll::{Uniques, Visitors, URL_P};

/// A cell key of two ids packed into a `u64` (`(site << 32) | referrer`, `(url << 8) |
/// channel`, `(url << 32) | referrer`), held at 4-byte alignment so that a slot of a
/// `PairKey → u32` table is 12 bytes, not 16: these tables hold more cells than any other
/// (a third of a day's aggregates, `pixeld_agg_memory_part_bytes{part="url_pairs"}`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairKey([u32; 2]);

impl PairKey {
    /// The key of ids `hi` and `lo`: `(hi << 32) | lo`.
    pub fn new(hi: u32, lo: u32) -> Self {
        PairKey([hi, lo])
    }
    /// The key as the `u64` it packs (what the disk holds).
    pub fn get(self) -> u64 {
        (u64::from(self.0[0]) << 32) | u64::from(self.0[1])
    }
    /// Its high and low 32 bits.
    pub fn hi(self) -> u32 {
        self.0[0]
    }
    pub fn lo(self) -> u32 {
        self.0[1]
    }
}

impl From<u64> for PairKey {
    fn from(k: u64) -> Self {
        PairKey([(k >> 32) as u32, k as u32])
    }
}

/// Counters of one url in one bucket (saturating: 4.29 billion per url per bucket), and its
/// distinct visitors.
#[derive(Debug, Default, Clone)]
pub struct UrlCell {
    pub views: u32,
    pub hits: u32,
    pub engaged: u32,
    pub visitors: Visitors,
}

impl UrlCell {
    pub fn add(&mut self, o: &UrlCell) {
        self.views = self.views.saturating_add(o.views);
        self.hits = self.hits.saturating_add(o.hits);
        self.engaged = self.engaged.saturating_add(o.engaged);
        self.visitors.merge(&o.visitors);
    }
}

/// Equal counts and the same visitors (by [`Uniques::canonical`]).
impl PartialEq for UrlCell {
    fn eq(&self, o: &UrlCell) -> bool {
        (self.views, self.hits, self.engaged) == (o.views, o.hits, o.engaged)
            && self.visitors.to_uniques().canonical() == o.visitors.to_uniques().canonical()
    }
}

/// What visits add to a site cell (signed: a change retracts what a visit added before).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VisitCounts {
    pub visits: i64,
    pub bounces: i64,
    /// Pageviews of those visits.
    pub views: i64,
    /// Sum of their durations, in milliseconds.
    pub duration_ms: i64,
}

impl VisitCounts {
    pub fn add(&mut self, o: &VisitCounts) {
        self.visits = self.visits.wrapping_add(o.visits);
        self.bounces = self.bounces.wrapping_add(o.bounces);
        self.views = self.views.wrapping_add(o.views);
        self.duration_ms = self.duration_ms.wrapping_add(o.duration_ms);
    }

    pub fn sub(&mut self, o: &VisitCounts) {
        self.visits = self.visits.wrapping_sub(o.visits);
        self.bounces = self.bounces.wrapping_sub(o.bounces);
        self.views = self.views.wrapping_sub(o.views);
        self.duration_ms = self.duration_ms.wrapping_sub(o.duration_ms);
    }

    pub fn is_zero(&self) -> bool {
        *self == VisitCounts::default()
    }
}

/// Totals and uniques of one site (or of all sites) in one bucket.
#[derive(Debug, Default, Clone)]
pub struct SiteCell {
    pub views: u64,
    pub hits: u64,
    pub engaged: u64,
    /// What the visits starting in the bucket add (`agg::visits`; signed: the late part of a
    /// sealed bucket may retract what its file holds).
    pub visits: VisitCounts,
    pub uniques: Uniques,
}

impl SiteCell {
    /// Adds `o` (counts add up; uniques merge losslessly).
    pub fn merge(&mut self, o: &SiteCell) {
        self.views += o.views;
        self.hits += o.hits;
        self.engaged += o.engaged;
        self.visits.add(&o.visits);
        self.uniques.merge(&o.uniques);
    }
}

/// Entries and exits of one url in one bucket: visits starting in it that entered or left
/// the site on that url (signed, like the visit counts, on the visitor's owner).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PageCell {
    pub entries: i32,
    pub exits: i32,
}

impl PageCell {
    pub fn add(&mut self, o: &PageCell) {
        self.entries = self.entries.wrapping_add(o.entries);
        self.exits = self.exits.wrapping_add(o.exits);
    }
}

/// Every cell of one bucket on one shard.
#[derive(Debug, Default, Clone)]
pub struct Bucket {
    pub urls: HashMap<u32, UrlCell>,
    /// `(site id << 32) | referrer id` → pageviews.
    pub refs: HashMap<PairKey, u32>,
    pub sites: HashMap<u32, SiteCell>,
    /// All sites (of this shard's visitors).
    pub all: SiteCell,
    /// Entry and exit pages of this shard's visitors' visits, by url id.
    pub pages: HashMap<u32, PageCell>,
    /// Pageviews and distinct visitors of this shard's visitors by profile id: one
    /// combination of a site and the values of every dimension (`agg::dims`). A custom
    /// event's profile (its `event` value not `pageview`) counts its events in `hits`
    /// instead; `engaged` stays 0.
    pub profiles: HashMap<u32, UrlCell>,
    /// Pageviews by url and channel: `(url id << 8) | channel code` (`Channel::code`) → views,
    /// on the url's owner (what answers "urls by channel" without a scan).
    pub url_channels: HashMap<PairKey, u32>,
    /// What the visits starting in the bucket add, by the profile of their entry pageview
    /// (`agg::visits`; signed like the site cells'), on the visitor's owner: visits, bounces
    /// and durations by pageview dimension.
    pub profile_visits: HashMap<u32, VisitCounts>,
    /// Pageviews by url and referrer domain: `(url id << 32) | referrer id` (`url_ref_key`) →
    /// views, on the url's owner (what answers "urls by referrer" without a scan).
    pub url_refs: HashMap<PairKey, u32>,
    /// Of a minute its hour is taking in slices: which of its url cells are in the hour
    /// already ([`UrlFold`]). Not stored: a checkpoint writes the hour with the rest; not
    /// copied either ([`FoldState`]).
    pub url_fold: FoldState,
    /// Changed since the last checkpoint (see `store`).
    pub dirty: bool,
    /// Of an hour: its minutes before this one are in its cells; its later minutes still in
    /// memory are only in theirs, and every read adds them (`Aggregates::fold_minutes`).
    /// Not stored: a checkpoint writes an hour with its unfolded minutes, and a loaded hour
    /// has folded every minute loaded with it (`store::format`).
    pub folded_upto: i64,
}

impl Bucket {
    /// Its (key, value) cells, over every table (`pixeld_agg_cells`).
    pub fn cells(&self) -> usize {
        self.urls.len()
            + self.refs.len()
            + self.sites.len()
            + self.profiles.len()
            + self.pages.len()
            + self.url_channels.len()
            + self.profile_visits.len()
            + self.url_refs.len()
    }

    /// Adds every cell of `o`: the bucket two disjoint sets of increments would have built
    /// together (what sealing a day from its hours, and reading a sealed bucket with its
    /// late increments, rely on).
    pub fn merge(&mut self, o: &Bucket) {
        self.merge_except(o, &[]);
    }

    /// Adds every cell of `o` but those keyed by a url — its url, url × channel, url ×
    /// referrer and page (entry and exit) cells: what a large minute's hour takes in slices,
    /// see [`UrlFold`].
    pub fn merge_except_urls(&mut self, o: &Bucket) {
        for (k, v) in &o.refs {
            let c = self.refs.entry(*k).or_default();
            *c = c.saturating_add(*v);
        }
        for (id, c) in &o.sites {
            self.sites.entry(*id).or_default().merge(c);
        }
        self.all.merge(&o.all);
        for (id, c) in &o.profiles {
            self.profiles.entry(*id).or_default().add(c);
        }
        for (id, c) in &o.profile_visits {
            self.profile_visits.entry(*id).or_default().add(c);
        }
    }

    /// The number of cells keyed by a url: url, url × channel, url × referrer and page cells.
    pub fn url_group_len(&self) -> usize {
        self.urls.len() + self.url_channels.len() + self.url_refs.len() + self.pages.len()
    }

    /// Adds the cells keyed by a url of `o` named by `keys` (those it holds).
    pub fn merge_url_keys(&mut self, o: &Bucket, keys: &UrlKeys) {
        merge_keys(&mut self.urls, &o.urls, &keys.urls, UrlCell::add);
        let add = |c: &mut u32, v: &u32| *c = c.saturating_add(*v);
        merge_keys(&mut self.url_channels, &o.url_channels, &keys.channels, add);
        merge_keys(&mut self.url_refs, &o.url_refs, &keys.refs, add);
        merge_keys(&mut self.pages, &o.pages, &keys.pages, PageCell::add);
    }

    /// Adds every cell of `o` but those `skip` names: what an hour takes of one increment's
    /// cells (built apart in `o`) while its minute is folded in slices and some of them are
    /// still only in the minute.
    pub fn merge_except(&mut self, o: &Bucket, skip: &[UrlKey]) {
        self.merge_except_urls(o);
        for (id, c) in o
            .urls
            .iter()
            .filter(|(id, _)| !skip.contains(&UrlKey::Url(**id)))
        {
            self.urls.entry(*id).or_default().add(c);
        }
        for (k, v) in o
            .url_channels
            .iter()
            .filter(|(k, _)| !skip.contains(&UrlKey::Channel(**k)))
        {
            let c = self.url_channels.entry(*k).or_default();
            *c = c.saturating_add(*v);
        }
        for (k, v) in o
            .url_refs
            .iter()
            .filter(|(k, _)| !skip.contains(&UrlKey::Ref(**k)))
        {
            let c = self.url_refs.entry(*k).or_default();
            *c = c.saturating_add(*v);
        }
        for (id, c) in o
            .pages
            .iter()
            .filter(|(id, _)| !skip.contains(&UrlKey::Page(**id)))
        {
            self.pages.entry(*id).or_default().add(c);
        }
    }

    /// Whether it holds the cell `k` names.
    pub fn has(&self, k: UrlKey) -> bool {
        match k {
            UrlKey::Url(id) => self.urls.contains_key(&id),
            UrlKey::Channel(k) => self.url_channels.contains_key(&k),
            UrlKey::Ref(k) => self.url_refs.contains_key(&k),
            UrlKey::Page(id) => self.pages.contains_key(&id),
        }
    }

    /// Adds the url cells of minute `o` that its hour has not taken yet: all of them unless
    /// the hour is taking them in slices ([`UrlFold`]), then those still to come. Nothing
    /// else of `o`.
    pub fn merge_url_tail(&mut self, o: &Bucket) {
        if let Some(f) = &o.url_fold.0 {
            for keys in f.todo.iter().skip(f.done as usize) {
                self.merge_url_keys(o, keys);
            }
        }
    }

    /// Adds the url and profile visitors of `o` alone (a minute its hour has not folded
    /// yet).
    pub fn merge_visitors(&mut self, o: &Bucket) {
        fn merge(into: &mut HashMap<u32, UrlCell>, from: &HashMap<u32, UrlCell>) {
            for (id, c) in from.iter().filter(|(_, c)| !c.visitors.is_empty()) {
                into.entry(*id).or_default().visitors.merge(&c.visitors);
            }
        }
        merge(&mut self.urls, &o.urls);
        merge(&mut self.profiles, &o.profiles);
    }

    /// Whether it holds no cell at all.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
            && self.refs.is_empty()
            && self.sites.is_empty()
            && self.all.hits == 0
            && self.all.visits.is_zero()
            && self.pages.is_empty()
            && self.profiles.is_empty()
            && self.url_channels.is_empty()
            && self.profile_visits.is_empty()
            && self.url_refs.is_empty()
    }
}

/// How a minute with many url cells goes into its hour in slices, so that folding it never
/// holds the shard for long (`Aggregates::fold_ended`): every other cell of the minute is
/// folded at once, its cells keyed by a url — url, url × channel, url × referrer, and the
/// entry and exit pages of visits: almost all of a busy minute's, and the visitor sets among
/// them most of the work — partition by partition of their url id. The cells of a url whose
/// partition is below `done` are in the hour (and the hot path updates both, as for a folded
/// minute); the others are only in the minute (the hot path updates it alone, and a read of
/// the hour adds them, [`Bucket::merge_url_tail`]). `todo` holds, per partition, the keys of
/// those cells — a cell the hot path creates in the minute meanwhile is added to its
/// partition's keys.
#[derive(Debug, Default, Clone)]
pub struct UrlFold {
    pub parts: u32,
    pub done: u32,
    pub todo: Vec<UrlKeys>,
}

/// A live minute's [`UrlFold`], if its hour is folding it. It belongs to that minute in the
/// tier alone: a copy of the bucket (a checkpoint's snapshot, whose hours are whole) is a
/// plain minute, whose cells a whole hour already holds — so a clone holds none.
#[derive(Debug, Default)]
pub struct FoldState(pub Option<Box<UrlFold>>);

impl Clone for FoldState {
    fn clone(&self) -> Self {
        FoldState(None)
    }
}

/// The keys of one partition's url, url × channel, url × referrer and page cells.
#[derive(Debug, Default, Clone)]
pub struct UrlKeys {
    pub urls: Vec<u32>,
    pub channels: Vec<PairKey>,
    pub refs: Vec<PairKey>,
    pub pages: Vec<u32>,
}

/// One cell keyed by a url: what an increment names of the cells [`UrlFold`] folds in slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlKey {
    Url(u32),
    /// A url × channel key ([`url_channel_key`]).
    Channel(PairKey),
    /// A url × referrer key ([`url_ref_key`]).
    Ref(PairKey),
    /// A url's entries and exits.
    Page(u32),
}

impl UrlKey {
    /// The url id whose partition the cell folds with.
    pub fn url(self) -> u32 {
        match self {
            UrlKey::Url(id) | UrlKey::Page(id) => id,
            UrlKey::Channel(k) => url_channel_of(k).0,
            UrlKey::Ref(k) => url_ref_of(k).0,
        }
    }
}

impl UrlFold {
    /// The plan for minute `b`: the keys of its url-keyed cells in `parts` partitions (at
    /// least one).
    pub fn plan(b: &Bucket, parts: u32) -> UrlFold {
        let parts = parts.max(1);
        let mut todo = vec![UrlKeys::default(); parts as usize];
        let at = |url: u32| part_of(url, parts) as usize;
        for &id in b.urls.keys() {
            if let Some(t) = todo.get_mut(at(id)) {
                t.urls.push(id);
            }
        }
        for &k in b.url_channels.keys() {
            if let Some(t) = todo.get_mut(at(url_channel_of(k).0)) {
                t.channels.push(k);
            }
        }
        for &k in b.url_refs.keys() {
            if let Some(t) = todo.get_mut(at(url_ref_of(k).0)) {
                t.refs.push(k);
            }
        }
        for &id in b.pages.keys() {
            if let Some(t) = todo.get_mut(at(id)) {
                t.pages.push(id);
            }
        }
        UrlFold {
            parts,
            done: 0,
            todo,
        }
    }

    /// Whether url `url`'s cells are still only in the minute.
    pub fn pending(&self, url: u32) -> bool {
        part_of(url, self.parts) >= self.done
    }

    /// Notes a cell the hot path created in the minute, of a url still pending.
    pub fn created(&mut self, k: UrlKey) {
        let Some(keys) = self.todo.get_mut(part_of(k.url(), self.parts) as usize) else {
            return;
        };
        match k {
            UrlKey::Url(id) => keys.urls.push(id),
            UrlKey::Channel(k) => keys.channels.push(k),
            UrlKey::Ref(k) => keys.refs.push(k),
            UrlKey::Page(id) => keys.pages.push(id),
        }
    }

    /// Heap bytes of the keys.
    pub fn size_of(&self) -> usize {
        self.todo
            .iter()
            .map(|k| {
                (k.urls.capacity() + k.pages.capacity()) * 4
                    + (k.channels.capacity() + k.refs.capacity()) * 8
            })
            .sum::<usize>()
            + self.todo.capacity() * std::mem::size_of::<UrlKeys>()
    }
}

/// Adds `from`'s cells named by `keys` (those it holds) into `into` with `add`. The cells are
/// looked up a run at a time, then added: a run of lookups with nothing depending on the one
/// before waits for memory once, not per key.
fn merge_keys<K: std::hash::Hash + Eq + Copy, V: Default>(
    into: &mut HashMap<K, V>,
    from: &HashMap<K, V>,
    keys: &[K],
    add: impl Fn(&mut V, &V),
) {
    const RUN: usize = 32;
    for run in keys.chunks(RUN) {
        let mut cells: [Option<&V>; RUN] = [None; RUN];
        for (c, k) in cells.iter_mut().zip(run) {
            *c = from.get(k);
        }
        for (c, k) in cells.iter().zip(run) {
            if let Some(c) = c {
                add(into.entry(*k).or_default(), c);
            }
        }
    }
}

/// The partition of url id `url` among `parts` (a multiplicative hash: consecutive ids,
/// which interning hands out, spread evenly).
fn part_of(url: u32, parts: u32) -> u32 {
    ((u64::from(url.wrapping_mul(0x9E37_79B1)) * u64::from(parts)) >> 32) as u32
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("too short ({0} bytes)")]
    Short(usize),
    #[error("bad magic: not a file of this kind")]
    Magic,
    #[error("format version {0} is not one this build reads")]
    Version(u16),
    #[error("CRC mismatch: the file is damaged")]
    Crc,
    #[error("damaged: {0}")]
    Damaged(&'static str),
}

/// Bounds-checked reads over bytes from the disk.
pub struct Cursor<'a> {
    pub b: &'a [u8],
    pub at: usize,
    /// Whether site cells carry visit counts (checkpoint version 3, sealed version 2 on).
    pub visits: bool,
    /// Whether url cells carry their visitors (checkpoint version 4, sealed version 3 on).
    pub url_visitors: bool,
    /// Whether buckets end with a profile table (checkpoint version 5, sealed version 4 on).
    pub profiles: bool,
    /// Whether the url × channel table follows (checkpoint version 6, sealed version 5 on).
    pub url_channels: bool,
    /// Whether the profile visit table follows, and visits in progress hold their entry
    /// profile (checkpoint version 7, sealed version 6 on).
    pub profile_visits: bool,
    /// Whether the url × referrer table follows (checkpoint version 8, sealed version 7 on).
    pub url_refs: bool,
}

impl<'a> Cursor<'a> {
    pub fn new(b: &'a [u8], at: usize) -> Self {
        Cursor {
            b,
            at,
            visits: true,
            url_visitors: true,
            profiles: true,
            url_channels: true,
            profile_visits: true,
            url_refs: true,
        }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(FormatError::Damaged("length overflows"))?;
        let s = self
            .b
            .get(self.at..end)
            .ok_or(FormatError::Damaged("a length points past the end"))?;
        self.at = end;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, FormatError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    pub fn u64(&mut self) -> Result<u64, FormatError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    /// A count of items of at least `min_size` bytes each, refused when the rest cannot hold
    /// them (so that a damaged count cannot make a huge allocation).
    pub fn count(&mut self, min_size: usize) -> Result<usize, FormatError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_size) > self.b.len().saturating_sub(self.at) {
            return Err(FormatError::Damaged("a count exceeds the file"));
        }
        Ok(n)
    }
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// An exact uniques value: its hashes, ascending.
fn put_exact(out: &mut Vec<u8>, mut v: Vec<u64>) {
    out.push(0);
    v.sort_unstable();
    put_u32(out, v.len() as u32);
    for h in v {
        put_u64(out, h);
    }
}

fn put_uniques<const P: usize>(out: &mut Vec<u8>, u: &Uniques<P>) {
    match u {
        Uniques::Exact(set) => put_exact(out, set.iter().copied().collect()),
        Uniques::Sketch(s) => {
            out.push(1);
            // The estimator's own serde form: (data word, optional words).
            let (data, words): (u64, Option<Vec<u32>>) = serde_json::to_value(&**s)
                .and_then(serde_json::from_value)
                .unwrap_or((0, None));
            // With words, `data` is a tagged heap pointer: only its tag (low 2 bits) means
            // anything on disk. Without, it holds the small representation's values.
            put_u64(out, if words.is_some() { data & 3 } else { data });
            let words = words.unwrap_or_default();
            put_u32(out, words.len() as u32);
            for w in words {
                put_u32(out, w);
            }
        }
    }
}

fn put_site_cell(out: &mut Vec<u8>, c: &SiteCell) {
    put_u64(out, c.views);
    put_u64(out, c.hits);
    put_u64(out, c.engaged);
    let v = &c.visits;
    for x in [v.visits, v.bounces, v.views, v.duration_ms] {
        put_u64(out, x as u64);
    }
    put_uniques(out, &c.uniques);
}

/// The bytes of one url record in the url table (see "Cells of a bucket").
pub const URL_RECORD: usize = 20;
/// A url record's visitors offset when it has none.
pub const NO_VISITORS: u32 = u32::MAX;

/// Appends the cells of `b`, each table sorted by key (the same bucket always writes the
/// same bytes).
pub fn put_cells(out: &mut Vec<u8>, b: &Bucket) {
    put_url_table(out, &b.urls);
    // The referrer cells: a pair table like the url × channel ones, `(site, referrer)`.
    put_pairs(out, &b.refs);
    let mut sites: Vec<(&u32, &SiteCell)> = b.sites.iter().collect();
    sites.sort_unstable_by_key(|(k, _)| **k);
    put_u32(out, sites.len() as u32);
    for (id, c) in sites {
        put_u32(out, *id);
        put_site_cell(out, c);
    }
    put_site_cell(out, &b.all);
    // Cells whose changes cancelled out are left out.
    let mut pages: Vec<(&u32, &PageCell)> = b
        .pages
        .iter()
        .filter(|(_, c)| **c != PageCell::default())
        .collect();
    pages.sort_unstable_by_key(|(k, _)| **k);
    put_u32(out, pages.len() as u32);
    for (id, c) in pages {
        put_u32(out, *id);
        put_u32(out, c.entries as u32);
        put_u32(out, c.exits as u32);
    }
    put_url_table(out, &b.profiles);
    put_pairs(out, &b.url_channels);
    put_profile_visits(out, b);
    put_pairs(out, &b.url_refs);
}

/// Appends the profile visit table: u32 n, then n × (u32 profile id, four i64 visit counts),
/// sorted by id; cells whose changes cancelled out are left out.
pub fn put_profile_visits(out: &mut Vec<u8>, b: &Bucket) {
    let mut cells: Vec<(&u32, &VisitCounts)> = b
        .profile_visits
        .iter()
        .filter(|(_, c)| !c.is_zero())
        .collect();
    cells.sort_unstable_by_key(|(k, _)| **k);
    put_u32(out, cells.len() as u32);
    for (id, v) in cells {
        put_u32(out, *id);
        for x in [v.visits, v.bounces, v.views, v.duration_ms] {
            put_u64(out, x as u64);
        }
    }
}

/// The bytes of one record of the profile visit table.
pub const PROFILE_VISITS_RECORD: usize = 36;

/// Reads the visit counts of one record of the profile visit table (after its id).
pub fn get_visit_counts(c: &mut Cursor<'_>) -> Result<VisitCounts, FormatError> {
    Ok(VisitCounts {
        visits: c.u64()? as i64,
        bounces: c.u64()? as i64,
        views: c.u64()? as i64,
        duration_ms: c.u64()? as i64,
    })
}

/// Reads the profile visit table ([`put_profile_visits`]), refusing profile ids at or above
/// `profiles`.
pub fn get_profile_visits(
    c: &mut Cursor<'_>,
    profiles: usize,
) -> Result<HashMap<u32, VisitCounts>, FormatError> {
    let n = c.count(PROFILE_VISITS_RECORD)?;
    let mut m = HashMap::with_capacity(n);
    for _ in 0..n {
        let id = c.u32()?;
        if id as usize >= profiles {
            return Err(FormatError::Damaged(
                "a profile's visits without a profile name",
            ));
        }
        m.insert(id, get_visit_counts(c)?);
    }
    Ok(m)
}

/// The key of the url × channel cell of url `url` and channel code `channel`
/// (`Channel::code`).
pub fn url_channel_key(url: u32, channel: u8) -> PairKey {
    PairKey::from((u64::from(url) << 8) | u64::from(channel))
}

/// The url id and channel code of a url × channel cell's key ([`url_channel_key`]).
pub fn url_channel_of(key: PairKey) -> (u32, u8) {
    let key = key.get();
    ((key >> 8) as u32, (key & 0xff) as u8)
}

/// Whether a url × channel key read from the disk names a url below `urls` and a channel.
pub fn url_channel_valid(key: PairKey, urls: usize) -> bool {
    let (url, channel) = url_channel_of(key);
    (url as usize) < urls && crate::parse::event::channel::Channel::from_code(channel).is_some()
}

/// The key of the url × referrer cell of url `url` and referrer domain `referrer` (ids).
pub fn url_ref_key(url: u32, referrer: u32) -> PairKey {
    PairKey::new(url, referrer)
}

/// The url and referrer ids of a url × referrer cell's key ([`url_ref_key`]).
pub fn url_ref_of(key: PairKey) -> (u32, u32) {
    (key.hi(), key.lo())
}

/// Whether a url × referrer key read from the disk names a url below `urls` and a referrer
/// below `refs`.
pub fn url_ref_valid(key: PairKey, urls: usize, refs: usize) -> bool {
    let (url, referrer) = url_ref_of(key);
    (url as usize) < urls && (referrer as usize) < refs
}

/// Appends a table of pair cells (url × channel, url × referrer): u32 n, then n × (u64 key,
/// u32 views), sorted by key.
pub fn put_pairs(out: &mut Vec<u8>, cells: &HashMap<PairKey, u32>) {
    let mut cells: Vec<(&PairKey, &u32)> = cells.iter().collect();
    cells.sort_unstable_by_key(|(k, _)| **k);
    put_u32(out, cells.len() as u32);
    for (k, v) in cells {
        put_u64(out, k.get());
        put_u32(out, *v);
    }
}

/// Reads a table of pair cells ([`put_pairs`]), refusing a key `valid` refuses (`what` says
/// which table).
pub fn get_pairs(
    c: &mut Cursor<'_>,
    valid: impl Fn(PairKey) -> bool,
    what: &'static str,
) -> Result<HashMap<PairKey, u32>, FormatError> {
    let n = c.count(12)?;
    let mut m = HashMap::with_capacity(n);
    for _ in 0..n {
        let k = PairKey::from(c.u64()?);
        if !valid(k) {
            return Err(FormatError::Damaged(what));
        }
        m.insert(k, c.u32()?);
    }
    Ok(m)
}

/// Appends a table of url cells (urls, or profiles) and its blob of visitors, sorted by id.
fn put_url_table(out: &mut Vec<u8>, cells: &HashMap<u32, UrlCell>) {
    let mut urls: Vec<(&u32, &UrlCell)> = cells.iter().collect();
    urls.sort_unstable_by_key(|(k, _)| **k);
    put_u32(out, urls.len() as u32);
    // Fixed-size records (a sealed file binary-searches them in place), each pointing into
    // the blob of visitors that follows the table.
    let mut blob = Vec::new();
    for (id, c) in urls {
        put_u32(out, *id);
        put_u32(out, c.views);
        put_u32(out, c.hits);
        put_u32(out, c.engaged);
        if c.visitors.is_empty() {
            put_u32(out, NO_VISITORS);
        } else {
            put_u32(out, blob.len() as u32);
            // The same bytes as the `Uniques` the list would be, without building one.
            match c.visitors.many() {
                Some(u) => put_uniques(&mut blob, u),
                None => put_exact(&mut blob, c.visitors.listed().collect()),
            }
        }
    }
    put_u32(out, blob.len() as u32);
    out.extend_from_slice(&blob);
}

/// Reads a bucket's page cells (after its all-sites cell), refusing url ids at or above
/// `urls`.
pub fn get_pages(c: &mut Cursor<'_>, urls: usize) -> Result<HashMap<u32, PageCell>, FormatError> {
    let n = c.count(12)?;
    let mut pages = HashMap::with_capacity(n);
    for _ in 0..n {
        let id = c.u32()?;
        if id as usize >= urls {
            return Err(FormatError::Damaged("a page cell without a name"));
        }
        let cell = PageCell {
            entries: c.u32()? as i32,
            exits: c.u32()? as i32,
        };
        pages.insert(id, cell);
    }
    Ok(pages)
}

/// Reads one uniques value.
pub fn get_uniques<const P: usize>(c: &mut Cursor<'_>) -> Result<Uniques<P>, FormatError> {
    match c.u8()? {
        0 => {
            let n = c.count(8)?;
            let mut set = hashbrown::HashSet::with_capacity(n);
            for _ in 0..n {
                set.insert(c.u64()?);
            }
            Ok(Uniques::Exact(set))
        }
        1 => {
            let data = c.u64()?;
            let n = c.count(4)?;
            let words = (0..n).map(|_| c.u32()).collect::<Result<Vec<_>, _>>()?;
            let words = if n == 0 && data & 3 == 0 {
                None
            } else {
                Some(words)
            };
            let s = super::hll::sketch_from_parts::<P>(data, words)
                .ok_or(FormatError::Damaged("an invalid sketch"))?;
            Ok(Uniques::Sketch(Box::new(s)))
        }
        _ => Err(FormatError::Damaged("unknown uniques kind")),
    }
}

/// Steps over one uniques value without decoding it (its structure checked).
pub fn skip_uniques(c: &mut Cursor<'_>) -> Result<(), FormatError> {
    match c.u8()? {
        0 => {
            let n = c.count(8)?;
            c.take(n * 8)?;
        }
        1 => {
            c.u64()?;
            let n = c.count(4)?;
            c.take(n * 4)?;
        }
        _ => return Err(FormatError::Damaged("unknown uniques kind")),
    }
    Ok(())
}

/// Reads one site cell.
pub fn get_site_cell(c: &mut Cursor<'_>) -> Result<SiteCell, FormatError> {
    let (views, hits, engaged) = (c.u64()?, c.u64()?, c.u64()?);
    let visits = if c.visits {
        get_visit_counts(c)?
    } else {
        VisitCounts::default()
    };
    Ok(SiteCell {
        views,
        hits,
        engaged,
        visits,
        uniques: get_uniques(c)?,
    })
}

/// Reads the visitors of a url record at `at` in a blob of visitors.
pub fn get_visitors(blob: &[u8], at: u32) -> Result<Visitors, FormatError> {
    if at == NO_VISITORS {
        return Ok(Visitors::default());
    }
    let mut c = Cursor::new(blob, at as usize);
    Ok(Visitors::from_uniques(get_uniques::<URL_P>(&mut c)?))
}

/// Reads a url table's blob of visitors (after its records), checking that every record's
/// offset in it starts a valid value.
pub fn get_url_blob<'a>(c: &mut Cursor<'a>, offsets: &[u32]) -> Result<&'a [u8], FormatError> {
    let n = c.count(1)?;
    let blob = c.take(n)?;
    for &at in offsets.iter().filter(|&&at| at != NO_VISITORS) {
        let mut v = Cursor::new(blob, at as usize);
        skip_uniques(&mut v)?;
    }
    Ok(blob)
}

/// Steps over a site cell's counts (not its uniques).
pub fn skip_site_counts(c: &mut Cursor<'_>) -> Result<(), FormatError> {
    c.take(if c.visits { 56 } else { 24 })?;
    Ok(())
}

/// How many sites, urls, referrers and profiles have names: ids at or above are refused.
pub type NameCounts = (usize, usize, usize, usize);

/// Reads the cells of one bucket, refusing ids at or above the name counts `names` (sites,
/// urls, referrers, profiles).
pub fn get_cells(c: &mut Cursor<'_>, names: NameCounts) -> Result<Bucket, FormatError> {
    let mut b = Bucket::default();
    let url_visitors = c.url_visitors;
    b.urls = get_url_table(c, names.1, url_visitors)?;
    b.refs = get_pairs(
        c,
        |k| (k.hi() as usize) < names.0 && (k.lo() as usize) < names.2,
        "a referrer cell without a name",
    )?;
    let n = c.count(if c.visits { 61 } else { 29 })?;
    b.sites.reserve(n);
    for _ in 0..n {
        let id = c.u32()?;
        if id as usize >= names.0 {
            return Err(FormatError::Damaged("a site id without a name"));
        }
        b.sites.insert(id, get_site_cell(c)?);
    }
    b.all = get_site_cell(c)?;
    if c.visits {
        b.pages = get_pages(c, names.1)?;
    }
    if c.profiles {
        b.profiles = get_url_table(c, names.3, true)?;
    }
    if c.url_channels {
        b.url_channels = get_pairs(
            c,
            |k| url_channel_valid(k, names.1),
            "a url × channel cell without a url name or of no channel",
        )?;
    }
    if c.profile_visits {
        b.profile_visits = get_profile_visits(c, names.3)?;
    }
    if c.url_refs {
        b.url_refs = get_pairs(
            c,
            |k| url_ref_valid(k, names.1, names.2),
            "a url × referrer cell without a url or referrer name",
        )?;
    }
    Ok(b)
}

/// Reads a table of url cells (urls, or profiles: ids below `names`), with its blob of
/// visitors when `visitors` (url tables of checkpoint version 4 and sealed version 3 on).
fn get_url_table(
    c: &mut Cursor<'_>,
    names: usize,
    visitors: bool,
) -> Result<HashMap<u32, UrlCell>, FormatError> {
    // Counts are bounded by the bytes left (`count`), so reserving them is safe.
    let n = c.count(if visitors { URL_RECORD } else { 16 })?;
    let mut cells = HashMap::with_capacity(n);
    let mut offsets = Vec::new();
    for _ in 0..n {
        let id = c.u32()?;
        if id as usize >= names {
            return Err(FormatError::Damaged("a url or profile id without a name"));
        }
        let cell = UrlCell {
            views: c.u32()?,
            hits: c.u32()?,
            engaged: c.u32()?,
            visitors: Visitors::default(),
        };
        if visitors {
            offsets.push((id, c.u32()?));
        }
        cells.insert(id, cell);
    }
    if visitors {
        let blob = get_url_blob(c, &[])?;
        for (id, at) in offsets {
            if let Some(cell) = cells.get_mut(&id) {
                cell.visitors = get_visitors(blob, at)?;
            }
        }
    }
    Ok(cells)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` damaged copies of `bytes`, in turn: one flipped bit, truncated, 4 KiB zeroed (a
    /// fixed xorshift sequence, so a failure repeats).
    pub(crate) fn damaged_copies(bytes: &[u8], n: usize) -> Vec<Vec<u8>> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let mut d = bytes.to_vec();
                match i % 3 {
                    0 => {
                        let at = (x as usize) % d.len();
                        d[at] ^= 1 << (x % 8);
                    }
                    1 => d.truncate((x as usize) % d.len()),
                    _ => {
                        let at = (x as usize) % d.len();
                        let end = (at + 4096).min(d.len());
                        d[at..end].fill(0);
                    }
                }
                d
            })
            .collect()
    }

    /// A url cell is what the aggregates hold most of: counts and the visitors' inline form,
    /// 24 bytes with its key in a table slot.
    #[test]
    fn a_url_cell_is_20_bytes() {
        assert_eq!(size_of::<UrlCell>(), 20);
        assert_eq!(size_of::<(u32, UrlCell)>(), 24);
        // And a slot of the pair tables (url × channel, url × referrer, referrers).
        assert_eq!(size_of::<(PairKey, u32)>(), 12);
    }

    #[test]
    fn merge_adds_every_cell() {
        let mut a = Bucket::default();
        a.urls.insert(
            1,
            UrlCell {
                views: 1,
                hits: 2,
                engaged: 3,
                ..UrlCell::default()
            },
        );
        a.all.uniques.insert_hash(7);
        a.all.hits = 2;
        let mut b = a.clone();
        b.refs.insert(PairKey::from(5), 4);
        b.all.uniques.insert_hash(8);
        a.merge(&b);
        assert_eq!(a.urls[&1].hits, 4);
        assert_eq!(a.refs[&PairKey::from(5)], 4);
        assert_eq!((a.all.hits, a.all.uniques.estimate()), (4, 2));
        let mut bytes = Vec::new();
        put_cells(&mut bytes, &a);
        let back = get_cells(&mut Cursor::new(&bytes, 0), (1, 2, 6, 0)).unwrap();
        assert_eq!(back.urls[&1], a.urls[&1]);
        assert!(get_cells(&mut Cursor::new(&bytes, 0), (1, 1, 6, 0)).is_err());
    }
}
