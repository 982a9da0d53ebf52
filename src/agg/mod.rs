//! One shard's partition of the aggregates: per-minute and per-hour counters by url, referrer
//! domain and site, and unique visitors — exact counts, by event time, late events included.
//!
//! What a shard holds is decided by [`crate::route`]: the url cells of the urls it owns
//! (`hash(url)`), the referrer cells of the referrer domains it owns (`hash(ref_domain)`), and
//! the site totals and uniques sketches of the *visitors* it owns (`hash(vid)`). Visitors are
//! the partition key of the totals because distinct counts over disjoint sets add up: a query's
//! uniques is the sum of the shards' estimates and no sketch crosses a thread; views, hits and
//! engaged seconds add up the same way. Each (dimension, key) still lives on one shard, so top
//! lists merge exactly (see `topn`).
//!
//! Every increment updates its minute bucket (while inside `minute_window`) and its hour
//! bucket; counts are commutative, so late events need no watermark. Only this shard's
//! executor touches the state (`Rc<RefCell<…>>` in `route`); queries read it between
//! increments. Nothing here allocates per event in the steady state except a new key's name.

pub mod buckets;
pub mod hll;
pub mod store;
pub mod topn;

use hashbrown::HashMap;

use buckets::{cover, Tier};
use hll::Uniques;
use topn::Ranked;

/// Aggregate settings (validated from `[agg]`).
#[derive(Debug, Clone)]
pub struct AggConfig {
    /// Minutes of minute buckets kept.
    pub minute_window: i64,
    /// Hours of hour buckets kept.
    pub hour_window: i64,
    /// Events more than this many minutes after their receive time are not aggregated.
    pub future_minutes: i64,
    pub event: crate::parse::event::EventConfig,
    /// How often each owner checkpoints its aggregates (`agg::store`).
    pub checkpoint_interval: std::time::Duration,
}

impl Default for AggConfig {
    fn default() -> Self {
        AggConfig {
            minute_window: 48 * 60,
            hour_window: 35 * 24,
            future_minutes: 5,
            event: crate::parse::event::EventConfig::default(),
            checkpoint_interval: std::time::Duration::from_secs(30),
        }
    }
}

/// What an increment counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncKind {
    /// A hit on `key` = url (views, hits, engaged seconds).
    Url,
    /// A pageview referred by `key` = referrer domain.
    Ref,
    /// A hit of a visitor on `site` (totals and uniques).
    Visitor,
}

/// One compact increment; its strings live in the [`Batch`] text.
#[derive(Debug, Clone, Copy)]
pub struct Inc {
    pub kind: IncKind,
    pub pageview: bool,
    /// Whether `vid` is a visitor hash (false: the hit had no visitor id).
    pub has_vid: bool,
    /// Event minute since the epoch.
    pub minute: i64,
    pub engaged: u32,
    site: (u32, u32),
    key: (u32, u32),
    pub vid: u64,
}

impl Inc {
    /// An increment applied where it is made (its strings are passed alongside).
    pub fn new(kind: IncKind, pageview: bool, minute: i64, engaged: u32, vid: Option<u64>) -> Self {
        Inc {
            kind,
            pageview,
            has_vid: vid.is_some(),
            minute,
            engaged,
            site: (0, 0),
            key: (0, 0),
            vid: vid.unwrap_or(0),
        }
    }
}

/// A batch of increments for one owner shard: what crosses a ring.
#[derive(Debug, Default)]
pub struct Batch {
    text: String,
    pub incs: Vec<Inc>,
    /// The sender's stamp: every record its ingest appended below this log offset has its
    /// increments for this owner in this batch or an earlier one (see `route`).
    pub upto: u64,
}

impl Batch {
    fn span(&mut self, s: &str) -> (u32, u32) {
        let start = self.text.len() as u32;
        self.text.push_str(s);
        (start, s.len() as u32)
    }

    /// Adds one increment.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        kind: IncKind,
        pageview: bool,
        minute: i64,
        engaged: u32,
        site: &str,
        key: &str,
        vid: Option<u64>,
    ) {
        self.push_inc(Inc::new(kind, pageview, minute, engaged, vid), site, key);
    }

    /// Adds one increment made elsewhere, with its strings.
    pub fn push_inc(&mut self, mut inc: Inc, site: &str, key: &str) {
        inc.site = self.span(site);
        inc.key = self.span(key);
        self.incs.push(inc);
    }

    pub fn len(&self) -> usize {
        self.incs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.incs.is_empty()
    }

    fn str(&self, (start, len): (u32, u32)) -> &str {
        self.text
            .get(start as usize..(start + len) as usize)
            .unwrap_or_default()
    }

    /// The site and key of `inc`.
    pub fn strs(&self, inc: &Inc) -> (&str, &str) {
        (self.str(inc.site), self.str(inc.key))
    }
}

/// Counters of one url in one bucket (saturating: 4.29 billion per url per bucket).
#[derive(Debug, Default, Clone, Copy)]
pub struct UrlCell {
    pub views: u32,
    pub hits: u32,
    pub engaged: u32,
}

/// Totals and uniques of one site (or of all sites) in one bucket.
#[derive(Debug, Default, Clone)]
pub struct SiteCell {
    pub views: u64,
    pub hits: u64,
    pub engaged: u64,
    pub uniques: Uniques,
}

/// Every cell of one bucket on one shard.
#[derive(Debug, Default, Clone)]
pub struct Bucket {
    pub urls: HashMap<u32, UrlCell>,
    /// `(site id << 32) | referrer id` → pageviews.
    pub refs: HashMap<u64, u32>,
    pub sites: HashMap<u32, SiteCell>,
    /// All sites (of this shard's visitors).
    pub all: SiteCell,
    /// Changed since the last checkpoint (see `store`).
    pub dirty: bool,
}

/// Interned key names: dense ids, so that cells are small and queries sum into vectors.
#[derive(Debug, Default, Clone)]
pub struct Names {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
    bytes: usize,
}

impl Names {
    /// The id of `name`, and whether it is new.
    pub fn intern(&mut self, name: &str) -> (u32, bool) {
        if let Some(&id) = self.ids.get(name) {
            return (id, false);
        }
        let id = self.names.len() as u32;
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        self.bytes += 2 * name.len();
        (id, true)
    }
    pub fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }
    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |n| n)
    }
    pub fn len(&self) -> usize {
        self.names.len()
    }
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
    fn memory(&self) -> usize {
        self.bytes + self.ids.capacity() * 21 + self.names.capacity() * 16
    }

    /// A copy for a checkpoint that writes the names from `first` on: the same ids, the
    /// names before `first` left empty (no allocation) and no lookup table.
    fn tail_copy(&self, first: usize) -> Names {
        let mut names: Vec<Box<str>> = Vec::with_capacity(self.names.len());
        names.resize(first.min(self.names.len()), Box::default());
        names.extend(self.names.iter().skip(first).cloned());
        Names {
            ids: HashMap::new(),
            names,
            bytes: 0,
        }
    }
}

/// The first `limit` of `(views, id)` in ranking order (views descending, then name
/// ascending). Views are compared first over everything (integers, cheap); names only among
/// the entries tied at the cut-off, which is where the key tie-break matters.
fn rank<'a>(
    mut ids: Vec<(u64, u32)>,
    limit: usize,
    name: impl Fn(u32) -> &'a str,
) -> Vec<(u64, u32)> {
    let by_name = |a: &(u64, u32), b: &(u64, u32)| {
        b.0.cmp(&a.0)
            .then_with(|| name(a.1).as_bytes().cmp(name(b.1).as_bytes()))
    };
    if limit == 0 {
        return Vec::new();
    }
    if ids.len() > limit {
        ids.select_nth_unstable_by(limit - 1, |a, b| b.0.cmp(&a.0));
        let cut = ids.get(limit - 1).map_or(0, |x| x.0);
        let mut winners: Vec<(u64, u32)> = ids.iter().filter(|x| x.0 > cut).copied().collect();
        let mut ties: Vec<(u64, u32)> = ids.iter().filter(|x| x.0 == cut).copied().collect();
        let need = limit - winners.len();
        if ties.len() > need && need > 0 {
            ties.select_nth_unstable_by(need - 1, by_name);
        }
        ties.truncate(need);
        winners.extend(ties);
        ids = winners;
    }
    ids.sort_unstable_by(by_name);
    ids
}

/// Views, hits, engaged seconds and uniques of a range (`uniques` None where not kept: per url).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub views: u64,
    pub hits: u64,
    pub engaged: u64,
    pub uniques: Option<u64>,
}

impl Totals {
    /// Adds another shard's totals (uniques add up: visitors are partitioned).
    pub fn add(&mut self, o: &Totals) {
        self.views += o.views;
        self.hits += o.hits;
        self.engaged += o.engaged;
        self.uniques = match (self.uniques, o.uniques) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

/// The dimensions of a top list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Url,
    RefDomain,
    Site,
}

impl Dim {
    pub fn as_str(self) -> &'static str {
        match self {
            Dim::Url => "url",
            Dim::RefDomain => "ref_domain",
            Dim::Site => "site",
        }
    }
}

/// Memory held by one shard's aggregates.
#[derive(Debug, Default, Clone, Copy)]
pub struct Memory {
    /// Live (bucket, key) cells.
    pub cells: u64,
    /// Url cells alone, and the bytes of their tables (for the bytes-per-cell figure).
    pub url_cells: u64,
    pub url_cell_bytes: u64,
    /// Approximate heap bytes: tables, sketches and key names.
    pub bytes: u64,
}

/// One shard's aggregates.
#[derive(Debug)]
pub struct Aggregates {
    pub cfg: AggConfig,
    pub sites: Names,
    pub urls: Names,
    pub refs: Names,
    /// Site id of each url id.
    url_site: Vec<u32>,
    minutes: Tier<Bucket>,
    hours: Tier<Bucket>,
    /// Increments refused because their bucket had already left the window.
    pub stale: u64,
    /// How many sites, urls and referrers the last checkpoint held (a delta carries the rest).
    written_names: (usize, usize, usize),
}

impl Aggregates {
    pub fn new(cfg: AggConfig) -> Self {
        let minutes = Tier::new(1, cfg.minute_window, cfg.future_minutes + 1);
        let hours = Tier::new(60, cfg.hour_window, 1);
        Aggregates {
            cfg,
            sites: Names::default(),
            urls: Names::default(),
            refs: Names::default(),
            url_site: Vec::new(),
            minutes,
            hours,
            stale: 0,
            written_names: (0, 0, 0),
        }
    }

    /// The first minute still kept at minute resolution at `now_min`.
    pub fn minute_floor(&self, now_min: i64) -> i64 {
        now_min - self.cfg.minute_window
    }

    /// The first minute still kept at all (at hour resolution) at `now_min`.
    pub fn hour_floor(&self, now_min: i64) -> i64 {
        (now_min.div_euclid(60) - self.cfg.hour_window) * 60
    }

    /// Applies `f` to the minute bucket (when inside the minute window) and the hour bucket of
    /// `minute`; counts the increment stale when the hour bucket has left the window.
    fn each_bucket(&mut self, minute: i64, now_min: i64, mut f: impl FnMut(&mut Bucket)) {
        if minute >= self.minute_floor(now_min) {
            if let Some(b) = self.minutes.get_mut(minute) {
                b.dirty = true;
                f(b);
            }
        }
        match self.hours.get_mut(minute.div_euclid(60)) {
            Some(b) => {
                b.dirty = true;
                f(b)
            }
            None => self.stale += 1,
        }
    }

    /// Applies every increment of a batch.
    pub fn apply_batch(&mut self, batch: &Batch, now_min: i64) {
        for inc in &batch.incs {
            let (site, key) = batch.strs(inc);
            self.apply(inc, site, key, now_min);
        }
    }

    /// Applies one increment.
    pub fn apply(&mut self, inc: &Inc, site: &str, key: &str, now_min: i64) {
        let pv = u32::from(inc.pageview);
        match inc.kind {
            IncKind::Url => {
                let (id, new) = self.urls.intern(key);
                if new {
                    let (s, _) = self.sites.intern(site);
                    self.url_site.push(s);
                }
                self.each_bucket(inc.minute, now_min, |b| {
                    let c = b.urls.entry(id).or_default();
                    c.views = c.views.saturating_add(pv);
                    c.hits = c.hits.saturating_add(1);
                    c.engaged = c.engaged.saturating_add(inc.engaged);
                });
            }
            IncKind::Ref => {
                let (s, _) = self.sites.intern(site);
                let (r, _) = self.refs.intern(key);
                let k = (u64::from(s) << 32) | u64::from(r);
                self.each_bucket(inc.minute, now_min, |b| {
                    let c = b.refs.entry(k).or_default();
                    *c = c.saturating_add(pv);
                });
            }
            IncKind::Visitor => {
                let (s, _) = self.sites.intern(site);
                self.each_bucket(inc.minute, now_min, |b| {
                    for c in [b.sites.entry(s).or_default(), &mut b.all] {
                        c.views += u64::from(pv);
                        c.hits += 1;
                        c.engaged += u64::from(inc.engaged);
                        if inc.has_vid {
                            c.uniques.insert_hash(inc.vid);
                        }
                    }
                });
            }
        }
    }

    /// What the next checkpoint writes, copied out so that it can be encoded off the shard's
    /// executor: the names it writes (at their ids), the names' checkpoint marks, and every bucket
    /// (`base`) or the dirty ones, each marked dirty in the copy and clean here. Encoding the
    /// copy gives the bytes encoding this state would have. Copying is a few memcpys per
    /// bucket (cells are plain data); the encode — sorting, sketches — is the slow part.
    pub fn checkpoint_snapshot(&mut self, base: bool) -> Aggregates {
        let mut snap = Aggregates::new(self.cfg.clone());
        let marks = if base { (0, 0, 0) } else { self.written_names };
        snap.sites = self.sites.tail_copy(marks.0);
        snap.urls = self.urls.tail_copy(marks.1);
        snap.refs = self.refs.tail_copy(marks.2);
        snap.url_site = self.url_site.clone();
        snap.written_names = marks;
        self.written_names = (self.sites.len(), self.urls.len(), self.refs.len());
        for (from, to) in [
            (&mut self.minutes, &mut snap.minutes),
            (&mut self.hours, &mut snap.hours),
        ] {
            for (number, b) in from.iter_mut() {
                if base || b.dirty {
                    if let Some(slot) = to.get_mut(number) {
                        *slot = b.clone();
                        slot.dirty = true;
                    }
                }
                b.dirty = false;
            }
        }
        snap
    }

    /// Whether anything changed since the last checkpoint (a bucket or a new name).
    pub fn is_dirty(&self) -> bool {
        self.written_names != (self.sites.len(), self.urls.len(), self.refs.len())
            || self.minutes.iter().any(|(_, b)| b.dirty)
            || self.hours.iter().any(|(_, b)| b.dirty)
    }

    /// The numbers of the buckets held at minute (`hour` false) or hour resolution.
    pub fn bucket_numbers(&self, hour: bool) -> Vec<i64> {
        let tier = if hour { &self.hours } else { &self.minutes };
        let mut v: Vec<i64> = tier.iter().map(|(n, _)| n).collect();
        v.sort_unstable();
        v
    }

    /// Replaces this state's bucket `number` (minute tier, or hour tier when `hour`) with
    /// `other`'s — empty when `other` has none — translating `other`'s name ids into this
    /// state's (new names are interned). Marks it dirty. What `pixeld rebuild-aggregates` uses
    /// to put buckets recomputed from the log into a loaded store.
    pub fn replace_bucket(&mut self, other: &Aggregates, hour: bool, number: i64) {
        let mut b = Bucket {
            dirty: true,
            ..Bucket::default()
        };
        let src = if hour { &other.hours } else { &other.minutes };
        if let Some(o) = src.get(number) {
            b.urls.reserve(o.urls.len());
            for (&id, cell) in &o.urls {
                let (nid, new) = self.urls.intern(other.urls.name(id));
                if new {
                    let site = other.url_site.get(id as usize).copied().unwrap_or(0);
                    let (s, _) = self.sites.intern(other.sites.name(site));
                    self.url_site.push(s);
                }
                b.urls.insert(nid, *cell);
            }
            for (&k, &v) in &o.refs {
                let (s, _) = self.sites.intern(other.sites.name((k >> 32) as u32));
                let (r, _) = self.refs.intern(other.refs.name(k as u32));
                b.refs.insert((u64::from(s) << 32) | u64::from(r), v);
            }
            for (&id, cell) in &o.sites {
                let (s, _) = self.sites.intern(other.sites.name(id));
                b.sites.insert(s, cell.clone());
            }
            b.all = o.all.clone();
        }
        let tier = if hour {
            &mut self.hours
        } else {
            &mut self.minutes
        };
        if let Some(slot) = tier.get_mut(number) {
            *slot = b;
        }
    }

    /// The numbers of the buckets either state holds at one resolution, sorted, once each:
    /// what a bucket-by-bucket comparison or replacement walks.
    pub fn bucket_numbers_of_both(&self, other: &Aggregates, hour: bool) -> Vec<i64> {
        let mut v = self.bucket_numbers(hour);
        v.extend(other.bucket_numbers(hour));
        v.sort_unstable();
        v.dedup();
        v
    }

    /// One bucket's cells as sorted lines of text keyed by name, not id (so that two states
    /// built in different orders compare): what `pixeld check --aggregates` compares.
    pub fn bucket_lines(&self, hour: bool, number: i64) -> Vec<String> {
        let tier = if hour { &self.hours } else { &self.minutes };
        let Some(b) = tier.get(number) else {
            return Vec::new();
        };
        let site_line = |c: &SiteCell| {
            let u: Vec<u8> = c
                .uniques
                .canonical()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            format!(
                "views {} hits {} engaged {} uniques {} (crc {:08x} of {} words)",
                c.views,
                c.hits,
                c.engaged,
                match &c.uniques {
                    Uniques::Exact(set) => format!("exactly {}", set.len()),
                    Uniques::Sketch(_) => "a sketch".to_string(),
                },
                crc32c::crc32c(&u),
                u.len() / 8
            )
        };
        let mut out: Vec<String> = Vec::new();
        for (id, c) in &b.urls {
            out.push(format!(
                "url {:?}: views {} hits {} engaged {}",
                self.urls.name(*id),
                c.views,
                c.hits,
                c.engaged
            ));
        }
        for (k, v) in &b.refs {
            out.push(format!(
                "referrer {:?} of site {:?}: views {v}",
                self.refs.name((k & 0xffff_ffff) as u32),
                self.sites.name((k >> 32) as u32)
            ));
        }
        for (id, c) in &b.sites {
            out.push(format!("site {:?}: {}", self.sites.name(*id), site_line(c)));
        }
        if b.all.hits > 0 {
            out.push(format!("all sites: {}", site_line(&b.all)));
        }
        out.sort_unstable();
        out
    }

    /// Frees the buckets that left the windows at `now_min`.
    pub fn evict(&mut self, now_min: i64) {
        self.minutes.evict_before(self.minute_floor(now_min));
        self.hours
            .evict_before(self.hour_floor(now_min).div_euclid(60));
    }

    /// The buckets covering minutes `from..to`: whole hours where the range covers them,
    /// minutes elsewhere (the caller widens ranges older than the minute window to hours).
    fn buckets(&self, from: i64, to: i64) -> impl Iterator<Item = &Bucket> {
        cover(from, to, 60, |_| true)
            .into_iter()
            .filter_map(move |(w, b)| {
                if w == 60 {
                    self.hours.get(b)
                } else {
                    self.minutes.get(b)
                }
            })
    }

    /// This shard's top `limit` keys of `dim` over `from..to`, optionally of one site.
    pub fn top(
        &self,
        dim: Dim,
        from: i64,
        to: i64,
        site: Option<&str>,
        limit: usize,
    ) -> Vec<Ranked> {
        let site_id = match site {
            Some(s) => match self.sites.get(s) {
                Some(id) => Some(id),
                None => return Vec::new(),
            },
            None => None,
        };
        let (names, sums) = match dim {
            Dim::Url => {
                let mut acc = vec![0u64; self.urls.len()];
                for b in self.buckets(from, to) {
                    for (&id, c) in &b.urls {
                        let keep =
                            site_id.is_none_or(|s| self.url_site.get(id as usize) == Some(&s));
                        if keep {
                            if let Some(a) = acc.get_mut(id as usize) {
                                *a += u64::from(c.views);
                            }
                        }
                    }
                }
                (&self.urls, acc)
            }
            Dim::RefDomain => {
                let mut acc = vec![0u64; self.refs.len()];
                for b in self.buckets(from, to) {
                    for (&k, &v) in &b.refs {
                        if site_id.is_none_or(|s| (k >> 32) as u32 == s) {
                            if let Some(a) = acc.get_mut((k & 0xffff_ffff) as usize) {
                                *a += u64::from(v);
                            }
                        }
                    }
                }
                (&self.refs, acc)
            }
            Dim::Site => {
                let mut acc = vec![0u64; self.sites.len()];
                for b in self.buckets(from, to) {
                    for (&id, c) in &b.sites {
                        if site_id.is_none_or(|s| s == id) {
                            if let Some(a) = acc.get_mut(id as usize) {
                                *a += c.views;
                            }
                        }
                    }
                }
                (&self.sites, acc)
            }
        };
        // Rank ids without building a String per key; names only for the winners.
        let ids: Vec<(u64, u32)> = sums
            .iter()
            .enumerate()
            .filter(|(_, &v)| v > 0)
            .map(|(id, &v)| (v, id as u32))
            .collect();
        rank(ids, limit, |id| names.name(id))
            .into_iter()
            .map(|(views, id)| Ranked {
                key: names.name(id).to_string(),
                views,
            })
            .collect()
    }

    /// This shard's totals over `from..to` (its visitors), optionally of one site.
    pub fn totals(&self, from: i64, to: i64, site: Option<&str>) -> Totals {
        let site_id = match site {
            Some(s) => match self.sites.get(s) {
                Some(id) => Some(id),
                None => {
                    return Totals {
                        uniques: Some(0),
                        ..Totals::default()
                    }
                }
            },
            None => None,
        };
        let mut t = Totals::default();
        let mut merged: Option<Uniques> = None;
        let mut first: Option<&Uniques> = None;
        for b in self.buckets(from, to) {
            let cell = match site_id {
                Some(s) => match b.sites.get(&s) {
                    Some(c) => c,
                    None => continue,
                },
                None => &b.all,
            };
            t.views += cell.views;
            t.hits += cell.hits;
            t.engaged += cell.engaged;
            // Merge sketches only when a second bucket contributes.
            match (&mut merged, first) {
                (Some(m), _) => m.merge(&cell.uniques),
                (None, None) => first = Some(&cell.uniques),
                (None, Some(f)) => {
                    let mut m = f.clone();
                    m.merge(&cell.uniques);
                    merged = Some(m);
                }
            }
        }
        let uniques = match (merged, first) {
            (Some(m), _) => m.estimate(),
            (None, Some(f)) => f.estimate(),
            (None, None) => 0,
        };
        t.uniques = Some(uniques as u64);
        t
    }

    /// Views, hits and engaged seconds of one url over `from..to` (uniques are not kept per url).
    pub fn url_totals(&self, from: i64, to: i64, url: &str, site: Option<&str>) -> Totals {
        self.url_series(from, to, to - from, url, site)
            .into_iter()
            .next()
            .unwrap_or_default()
    }

    /// One point per `step` minutes over `from..to` of one url (looked up once).
    pub fn url_series(
        &self,
        from: i64,
        to: i64,
        step: i64,
        url: &str,
        site: Option<&str>,
    ) -> Vec<Totals> {
        let step = step.max(1);
        let n = ((to - from).max(0) + step - 1) / step;
        let mut out = vec![Totals::default(); n as usize];
        let Some(id) = self.urls.get(url) else {
            return out;
        };
        if let Some(s) = site {
            let url_site = self.url_site.get(id as usize).map(|&s| self.sites.name(s));
            if url_site != Some(s) {
                return out;
            }
        }
        for (i, t) in out.iter_mut().enumerate() {
            let start = from + i as i64 * step;
            for b in self.buckets(start, (start + step).min(to)) {
                if let Some(c) = b.urls.get(&id) {
                    t.views += u64::from(c.views);
                    t.hits += u64::from(c.hits);
                    t.engaged += u64::from(c.engaged);
                }
            }
        }
        out
    }

    /// Memory held, for the gauges and the bytes-per-cell figure.
    pub fn memory(&self) -> Memory {
        let mut m = Memory::default();
        for (_, b) in self.minutes.iter().chain(self.hours.iter()) {
            m.cells += (b.urls.len() + b.refs.len() + b.sites.len()) as u64;
            m.url_cells += b.urls.len() as u64;
            let url_bytes = b.urls.capacity() * (size_of::<(u32, UrlCell)>() + 1);
            m.url_cell_bytes += url_bytes as u64;
            m.bytes += (url_bytes
                + b.refs.capacity() * (size_of::<(u64, u32)>() + 1)
                + b.sites.capacity() * (size_of::<(u32, SiteCell)>() + 1)
                + b.sites.values().map(|c| c.uniques.size_of()).sum::<usize>()
                + b.all.uniques.size_of()
                + size_of::<Bucket>()) as u64;
        }
        m.bytes += (self.sites.memory() + self.urls.memory() + self.refs.memory()) as u64
            + (self.url_site.capacity() * 4) as u64;
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Row<'a> = (IncKind, bool, i64, &'a str, &'a str, Option<u64>);

    fn batch(incs: &[Row<'_>]) -> Batch {
        let mut b = Batch::default();
        for &(k, pv, m, site, key, vid) in incs {
            b.push(k, pv, m, if pv { 0 } else { 10 }, site, key, vid);
        }
        b
    }

    #[test]
    fn counts_by_minute_and_hour_and_tops() {
        let now = 1_000_000;
        let mut a = Aggregates::new(AggConfig::default());
        let b = batch(&[
            (
                IncKind::Url,
                true,
                now - 1,
                "a.com",
                "https://a.com/1",
                None,
            ),
            (
                IncKind::Url,
                true,
                now - 2,
                "a.com",
                "https://a.com/1",
                None,
            ),
            (
                IncKind::Url,
                false,
                now - 2,
                "a.com",
                "https://a.com/1",
                None,
            ),
            (
                IncKind::Url,
                true,
                now - 61,
                "b.com",
                "https://b.com/x",
                None,
            ),
            (IncKind::Ref, true, now - 1, "a.com", "google.com", None),
            (IncKind::Ref, true, now - 1, "b.com", "t.co", None),
            (IncKind::Visitor, true, now - 1, "a.com", "", Some(1)),
            (IncKind::Visitor, true, now - 2, "a.com", "", Some(1)),
            (IncKind::Visitor, false, now - 2, "b.com", "", Some(2)),
        ]);
        a.apply_batch(&b, now);
        let top = a.top(Dim::Url, now - 120, now + 1, None, 10);
        assert_eq!(top[0].key, "https://a.com/1");
        assert_eq!(top[0].views, 2);
        assert_eq!(top[1].views, 1);
        assert_eq!(
            a.top(Dim::Url, now - 120, now + 1, Some("b.com"), 10).len(),
            1
        );
        assert_eq!(
            a.top(Dim::RefDomain, now - 5, now, Some("b.com"), 10)[0].key,
            "t.co"
        );
        let t = a.totals(now - 10, now, None);
        assert_eq!((t.views, t.hits, t.engaged, t.uniques), (2, 3, 10, Some(2)));
        let t = a.totals(now - 10, now, Some("a.com"));
        assert_eq!((t.views, t.uniques), (2, Some(1)));
        let u = a.url_totals(now - 10, now, "https://a.com/1", None);
        assert_eq!((u.views, u.hits, u.engaged), (2, 3, 10));
        // A range of whole hours reads the hour tier and agrees with the minutes.
        let h0 = (now - 200).div_euclid(60) * 60;
        assert_eq!(
            a.totals(h0, h0 + 240, None).hits,
            a.totals(now - 200, now + 1, None).hits
        );
    }

    #[test]
    fn rank_matches_a_full_sort() {
        let names: Vec<String> = (0..300)
            .map(|i| format!("k{:03}", (i * 7919) % 300))
            .collect();
        let mut x = 5u64;
        let ids: Vec<(u64, u32)> = (0..300u32)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (1 + x % 4, i)
            })
            .collect();
        let mut full = ids.clone();
        full.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then(names[a.1 as usize].cmp(&names[b.1 as usize]))
        });
        for limit in [1, 2, 10, 77, 299, 300, 1000] {
            let got = rank(ids.clone(), limit, |i| &names[i as usize]);
            assert_eq!(got, full[..limit.min(300)].to_vec(), "limit {limit}");
        }
    }

    #[test]
    fn old_minutes_only_in_hours_and_eviction() {
        let now = 1_000_000;
        let mut a = Aggregates::new(AggConfig {
            minute_window: 10,
            hour_window: 2,
            ..AggConfig::default()
        });
        let b = batch(&[(IncKind::Visitor, true, now - 30, "a", "", Some(9))]);
        a.apply_batch(&b, now);
        // Not in the minute tier (older than 10 minutes), in its hour.
        let h = (now - 30).div_euclid(60) * 60;
        assert_eq!(a.totals(now - 30, now - 29, None).hits, 0);
        assert_eq!(a.totals(h, h + 60, None).hits, 1);
        a.evict(now + 3 * 60);
        assert_eq!(a.totals(h, h + 60, None).hits, 0);
        assert!(a.memory().bytes > 0);
    }
}
