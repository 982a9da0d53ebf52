//! Visits: one visitor's runs of events on one site, kept exact by event time however late
//! or shuffled the events arrive, and what each visit adds to the site cell of the minute it
//! starts in.
//!
//! A **visit** is a maximal run of one visitor's pageviews and heartbeats on one site whose
//! consecutive event times are at most `agg.visit_gap` apart; it belongs to the minute of its
//! first event and adds there 1 visit, its pageviews, its duration (last − first event time)
//! and, when it has exactly one pageview and less than `agg.bounce_engaged_seconds` of engaged
//! time, 1 bounce ([`VisitCounts`]).
//!
//! The owner of `hash(vid)` (where the site totals and uniques already live) keeps each
//! active visitor's recent visits, sorted and disjoint ([`Visits`]). An event either starts a
//! visit, extends one (forwards or, late, backwards) or joins two; [`Visits::observe`] then
//! reports the *change* of each affected visit's contribution — minus the old, plus the new,
//! per start minute — and the caller adds those signed changes to its cells. So the cells
//! always hold exactly what in-order arrival would have built, and they never depend on when
//! a visitor is forgotten.
//!
//! An event whose receive time is more than `agg.visit_late_allowance` after its event time is
//! *too late for visits* (decided by the sender, per record, so the log alone decides it): it
//! still counts as a view or hit. Hence a visit can only be touched by an event received
//! before `last + gap + allowance`, and [`Visits::sweep`] forgets the visits past that point
//! of the owner's receive clock (the lowest clock any source may still send below; see
//! `route`). That bounds the state to the visitors active in the last gap + allowance
//! (`pixeld_agg_visitors`, `pixeld_agg_visitor_bytes`).
//!
//! **Memory.** A visitor's latest visit is one 52-byte entry of a dense table
//! (`agg::dense`: a 12-byte key, the visit in 40 bytes with its times in 48 bits, found
//! through a table of 4-byte positions): 58–64 bytes a visitor with the free room, where a
//! slot of a hash map of its own cost 65–130. The few
//! visitors who came back after a gap within the horizon keep their earlier visits in a side
//! table, which an event reads only when it is older than the latest visit's start (an
//! earlier visit ends more than a gap before that, so nothing newer can touch it).
//!
//! A visit's **dimensions** are those of its entry pageview: its profile (`agg::dims`, a
//! site and a value of every pageview dimension, interned on this same owner) is kept with
//! the entry page, and what the visit adds goes to that profile's cell as well
//! ([`Delta::Profile`]), so visits, bounces and durations break down by channel, device,
//! country or any dimension and add up to the site's. A visit of heartbeats alone has no
//! entry pageview, hence no entry page and no profile: it counts in the site's cell only.

use hashbrown::HashMap;
use smallvec::SmallVec;

pub use super::cells::VisitCounts;
use super::cells::{put_u32, put_u64, Cursor, FormatError};
use super::dense::DenseMap;
use super::mem::table_bytes;

/// How visits are cut and judged (validated from `[agg]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisitSettings {
    /// Largest gap between two consecutive events of one visit, in milliseconds.
    pub gap_ms: i64,
    /// How long after its event time an event may be received and still count for visits.
    pub late_allowance_ms: i64,
    /// A one-pageview visit with less engaged time than this is a bounce.
    pub bounce_engaged_seconds: u32,
}

impl Default for VisitSettings {
    fn default() -> Self {
        VisitSettings {
            gap_ms: 30 * 60_000,
            late_allowance_ms: 30 * 60_000,
            bounce_engaged_seconds: 10,
        }
    }
}

/// No url: a visit without a pageview has no entry or exit page.
pub const NO_URL: u32 = u32::MAX;
/// No profile: a visit without a pageview has no entry profile either.
pub const NO_PROFILE: u32 = u32::MAX;

/// One event of a visitor, as visits see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Event time, ms since the epoch.
    pub t_ms: i64,
    pub pageview: bool,
    pub engaged: u32,
    /// A pageview's url id and profile id (ignored for a heartbeat).
    pub url: u32,
    pub profile: u32,
}

/// How two pageviews of the same millisecond are ordered, so that arrival order never
/// matters: by url name, then (for entries) by profile name.
pub struct Order<'a> {
    pub urls: &'a dyn Fn(u32, u32) -> std::cmp::Ordering,
    pub profiles: &'a dyn Fn(u32, u32) -> std::cmp::Ordering,
}

/// One visit of one visitor on one site: 44 bytes, packed to 4-byte alignment (its fields are
/// read by value, never by reference). The table holds a visitor's latest in the 40 bytes of
/// a `Latest`; the side table and a visitor's runs hold it as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(4))]
pub struct Visit {
    pub first_ms: i64,
    pub last_ms: i64,
    pub pageviews: u32,
    /// Engaged seconds of its events.
    pub engaged: u32,
    /// The entry page (the url id of its first pageview, [`NO_URL`] without one) and how
    /// long after `first_ms` it was viewed (ms, saturating).
    pub entry_url: u32,
    pub entry_after: u32,
    /// The profile of that first pageview ([`NO_PROFILE`] without one): the visit's
    /// dimensions.
    pub entry_profile: u32,
    /// The exit page (its last pageview's url id) and how long before `last_ms`.
    pub exit_url: u32,
    pub exit_before: u32,
}

/// One change of what visits add to a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta {
    /// To the visitor's site cell.
    Counts(VisitCounts),
    /// To the entries of a url (an id of the caller's url names).
    Entry(u32, i32),
    /// To the exits of a url.
    Exit(u32, i32),
    /// To the visit counts of a profile (the entry pageview's; an id of the caller's
    /// profiles).
    Profile(u32, VisitCounts),
}

impl Visit {
    fn new(e: &Seen) -> Visit {
        let (url, profile) = if e.pageview {
            (e.url, e.profile)
        } else {
            (NO_URL, NO_PROFILE)
        };
        Visit {
            first_ms: e.t_ms,
            last_ms: e.t_ms,
            pageviews: u32::from(e.pageview),
            engaged: e.engaged,
            entry_url: url,
            entry_after: 0,
            entry_profile: profile,
            exit_url: url,
            exit_before: 0,
        }
    }

    /// When its entry page was viewed.
    pub fn entry_ms(&self) -> i64 {
        self.first_ms + i64::from(self.entry_after)
    }

    /// When its exit page was viewed.
    pub fn exit_ms(&self) -> i64 {
        self.last_ms - i64::from(self.exit_before)
    }

    /// The minute since the epoch it belongs to.
    pub fn minute(&self) -> i64 {
        self.first_ms.div_euclid(60_000)
    }

    /// What it adds to the site cell of its minute.
    pub fn counts(&self, s: &VisitSettings) -> VisitCounts {
        VisitCounts {
            visits: 1,
            bounces: i64::from(self.pageviews == 1 && self.engaged < s.bounce_engaged_seconds),
            views: i64::from(self.pageviews),
            duration_ms: self.last_ms - self.first_ms,
        }
    }

    /// Makes it the visit of its events and `o`'s. Entry and exit pages are the earliest and
    /// latest pageviews; `order` orders pageviews of the same millisecond (the smaller url
    /// enters, then the smaller profile; the greater url exits), so that arrival order never
    /// matters.
    fn absorb(&mut self, o: &Visit, order: &Order<'_>) {
        use std::cmp::Ordering::{Greater, Less};
        let mut entry = (self.entry_url, self.entry_ms(), self.entry_profile);
        let mut exit = (self.exit_url, self.exit_ms());
        if o.entry_url != NO_URL {
            let e = (o.entry_url, o.entry_ms(), o.entry_profile);
            if entry.0 == NO_URL
                || e.1
                    .cmp(&entry.1)
                    .then_with(|| (order.urls)(e.0, entry.0))
                    .then_with(|| (order.profiles)(e.2, entry.2))
                    == Less
            {
                entry = e;
            }
            let x = (o.exit_url, o.exit_ms());
            if exit.0 == NO_URL
                || x.1.cmp(&exit.1).then_with(|| (order.urls)(x.0, exit.0)) == Greater
            {
                exit = x;
            }
        }
        self.first_ms = self.first_ms.min(o.first_ms);
        self.last_ms = self.last_ms.max(o.last_ms);
        self.pageviews = self
            .pageviews
            .saturating_add(o.pageviews)
            .min(MAX_PAGEVIEWS);
        self.engaged = self.engaged.saturating_add(o.engaged);
        let span = |d: i64| u32::try_from(d).unwrap_or(u32::MAX);
        self.entry_url = entry.0;
        self.entry_profile = entry.2;
        self.exit_url = exit.0;
        if entry.0 == NO_URL {
            self.entry_after = 0;
            self.exit_before = 0;
        } else {
            self.entry_after = span(entry.1 - self.first_ms);
            self.exit_before = span(self.last_ms - exit.1);
        }
    }
}

/// What an id a visit holds names (see [`Visits::take_from`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Site,
    Url,
    Profile,
}

/// `c` with every count's sign turned.
fn negated(c: &VisitCounts) -> VisitCounts {
    let mut n = VisitCounts::default();
    n.sub(c);
    n
}

/// One visitor's recent visits on one site: sorted by time, each more than the gap apart.
pub type Runs = SmallVec<[Visit; 2]>;

/// A visit's pageviews saturate here: the top bit of a slot's count says "earlier visits
/// in the side table" ([`Latest`]).
const MAX_PAGEVIEWS: u32 = (1 << 31) - 1;
const MORE: u32 = 1 << 31;

/// A table key: site id and visitor hash, in three 4-byte words so that a slot needs no
/// padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    site: u32,
    vid: [u32; 2],
}

impl Key {
    fn new(site: u32, vid: u64) -> Key {
        Key {
            site,
            vid: [(vid >> 32) as u32, vid as u32],
        }
    }

    fn vid(&self) -> u64 {
        (u64::from(self.vid[0]) << 32) | u64::from(self.vid[1])
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64(self.vid() ^ u64::from(self.site).rotate_left(29));
    }
}

/// A visitor's latest visit as the table holds it: 40 bytes, its times in 48 bits (ms since
/// the epoch, exact within ±4 000 years; `fits` keeps the others out), with [`MORE`] set in
/// its pageviews when earlier visits wait in the side table.
#[derive(Debug, Clone, Copy)]
struct Latest {
    first: [u16; 3],
    last: [u16; 3],
    pageviews: u32,
    engaged: u32,
    entry_url: u32,
    entry_after: u32,
    entry_profile: u32,
    exit_url: u32,
    exit_before: u32,
}

/// Whether a time in ms fits the 48 bits a [`Latest`] keeps.
fn fits(t_ms: i64) -> bool {
    (-(1 << 47)..(1 << 47)).contains(&t_ms)
}

fn to48(t: i64) -> [u16; 3] {
    [t as u16, (t >> 16) as u16, (t >> 32) as u16]
}

fn from48(t: [u16; 3]) -> i64 {
    let raw = u64::from(t[0]) | (u64::from(t[1]) << 16) | (u64::from(t[2]) << 32);
    // Sign-extended from bit 47.
    ((raw << 16) as i64) >> 16
}

impl Latest {
    fn new(v: Visit, more: bool) -> Latest {
        Latest {
            first: to48(v.first_ms),
            last: to48(v.last_ms),
            pageviews: v.pageviews.min(MAX_PAGEVIEWS) | if more { MORE } else { 0 },
            engaged: v.engaged,
            entry_url: v.entry_url,
            entry_after: v.entry_after,
            entry_profile: v.entry_profile,
            exit_url: v.exit_url,
            exit_before: v.exit_before,
        }
    }

    fn visit(&self) -> Visit {
        Visit {
            first_ms: from48(self.first),
            last_ms: from48(self.last),
            pageviews: self.pageviews & MAX_PAGEVIEWS,
            engaged: self.engaged,
            entry_url: self.entry_url,
            entry_after: self.entry_after,
            entry_profile: self.entry_profile,
            exit_url: self.exit_url,
            exit_before: self.exit_before,
        }
    }

    fn more(&self) -> bool {
        self.pageviews & MORE != 0
    }
}

/// The visits a shard keeps: per (site id, visitor hash), the latest inline and, for a
/// visitor with more than one, the earlier ones apart.
#[derive(Debug, Clone, Default)]
pub struct Visits {
    pub settings: VisitSettings,
    table: DenseMap<Key, Latest>,
    earlier: HashMap<Key, SmallVec<[Visit; 1]>>,
}

/// Bytes of one slot of the side table.
const EARLIER_SLOT_BYTES: usize = std::mem::size_of::<(Key, SmallVec<[Visit; 1]>)>();

impl Visits {
    pub fn new(settings: VisitSettings) -> Self {
        Visits {
            settings,
            table: DenseMap::new(),
            earlier: HashMap::new(),
        }
    }

    /// Looks up visitor `vid`'s slot on site `site` without changing it (see
    /// `Aggregates::warm`): whether it is held.
    pub fn warm(&self, site: u32, vid: u64) -> bool {
        self.table.contains_key(&Key::new(site, vid))
    }

    /// Visitors held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Approximate heap bytes held.
    pub fn memory_bytes(&self) -> u64 {
        let spilled: usize = self
            .earlier
            .values()
            .filter(|r| r.spilled())
            .map(|r| r.capacity() * std::mem::size_of::<Visit>())
            .sum();
        (self.table.memory_bytes()
            + table_bytes(self.earlier.capacity(), EARLIER_SLOT_BYTES)
            + spilled) as u64
    }

    /// Counts one event `e` of visitor `vid` on site `site` (eligible: see the module doc)
    /// and calls `change(minute, delta)` for each change of what visits add to the cells (a
    /// join retracts two visits and adds one; changes that cancel out are left out). `order`
    /// orders url and profile ids by name (see [`Visit`]).
    pub fn observe(
        &mut self,
        site: u32,
        vid: u64,
        e: &Seen,
        order: &Order<'_>,
        change: impl FnMut(i64, Delta),
    ) {
        let s = self.settings;
        let gap = s.gap_ms;
        let t_ms = e.t_ms;
        if !fits(t_ms) {
            // Not a time any event inside the window has (see `Latest`).
            return;
        }
        let ev = Visit::new(e);
        let key = Key::new(site, vid);
        let touches = |v: &Visit| {
            v.first_ms.saturating_sub(gap) <= t_ms && t_ms <= v.last_ms.saturating_add(gap)
        };
        let Some(slot) = self.table.get_mut(&key) else {
            // A visitor not seen within the horizon: a visit of its own.
            self.table.insert_new(key, Latest::new(ev, false));
            report(&s, &[], &ev, change);
            return;
        };
        let latest = *slot;
        let a = latest.visit();
        // The usual case: the event extends the latest visit and touches no earlier one
        // (those end more than a gap before its start), changed in place.
        if touches(&a) && (!latest.more() || t_ms >= a.first_ms) {
            let mut new = ev;
            new.absorb(&a, order);
            *slot = Latest::new(new, latest.more());
            report(&s, &[a], &new, change);
            return;
        }
        // Otherwise (a new visit, or a late event before the latest): all its visits.
        let mut runs = Runs::new();
        if latest.more() {
            runs.extend(self.earlier.remove(&key).unwrap_or_default());
        }
        runs.push(a);
        // The first visit that ends within the gap before `t` or later.
        let i = runs.partition_point(|v| v.last_ms.saturating_add(gap) < t_ms);
        let first = runs.get(i).copied().filter(touches);
        let second = runs
            .get(i + 1)
            .copied()
            .filter(|v| first.is_some() && touches(v));
        let mut new = ev;
        let mut old: SmallVec<[Visit; 2]> = SmallVec::new();
        for v in first.iter().chain(&second) {
            new.absorb(v, order);
            old.push(*v);
        }
        if second.is_some() {
            runs.remove(i + 1);
        }
        match first {
            Some(_) => runs[i] = new,
            None => runs.insert(i, new),
        }
        if let Some(l) = split_runs(&mut self.earlier, key, runs) {
            self.table.insert(key, l);
        }
        report(&s, &old, &new, change);
    }

    /// Forgets every visit no event received at or after `clock_ms` can touch any more (it
    /// ended more than gap + allowance before), and the visitors left without one. Returns
    /// how many visitors it forgot.
    pub fn sweep(&mut self, clock_ms: i64) -> usize {
        let horizon = self.settings.gap_ms + self.settings.late_allowance_ms;
        let live = |v: &Visit| v.last_ms.saturating_add(horizon) >= clock_ms;
        let before = self.table.len();
        // Earlier visits end before the latest starts: they go first.
        self.earlier.retain(|_, runs| {
            runs.retain(|v| live(v));
            !runs.is_empty()
        });
        let earlier = &self.earlier;
        self.table.retain(|k, latest| {
            if latest.more() && !earlier.contains_key(k) {
                *latest = Latest::new(latest.visit(), false);
            }
            live(&latest.visit())
        });
        if self.earlier.capacity() > 64 && self.earlier.len() < self.earlier.capacity() / 4 {
            self.earlier.shrink_to_fit();
        }
        before - self.table.len()
    }

    /// Takes every visitor of `other` (another owner's, before a re-partition), its ids
    /// translated by `map(kind, id)`. Visitors of two owners never collide: each had its own.
    pub fn take_from(&mut self, other: &Visits, mut map: impl FnMut(IdKind, u32) -> u32) {
        for ((s, vid), mut runs) in other.entries() {
            for v in &mut runs {
                if v.entry_url != NO_URL {
                    v.entry_url = map(IdKind::Url, v.entry_url);
                    v.exit_url = map(IdKind::Url, v.exit_url);
                }
                if v.entry_profile != NO_PROFILE {
                    v.entry_profile = map(IdKind::Profile, v.entry_profile);
                }
            }
            self.insert(Key::new(map(IdKind::Site, s), vid), runs);
        }
    }

    /// Puts a visitor's visits (sorted) in place of any it had.
    fn insert(&mut self, key: Key, runs: Runs) {
        if let Some(l) = split_runs(&mut self.earlier, key, runs) {
            self.table.insert(key, l);
        }
    }

    /// Every visitor's visits, sorted by (site, visitor): what a checkpoint writes.
    pub fn entries(&self) -> Vec<((u32, u64), Runs)> {
        let mut v: Vec<((u32, u64), Runs)> = self
            .table
            .iter()
            .map(|(k, latest)| {
                let mut runs = Runs::new();
                if latest.more() {
                    runs.extend(self.earlier.get(k).into_iter().flatten().copied());
                }
                runs.push(latest.visit());
                ((k.site, k.vid()), runs)
            })
            .collect();
        v.sort_unstable_by_key(|(k, _)| *k);
        v
    }

    /// Appends the table (see `store/format.rs`, "Visitors").
    pub fn put(&self, out: &mut Vec<u8>) {
        let entries = self.entries();
        put_u32(out, entries.len() as u32);
        for ((site, vid), runs) in entries {
            put_u32(out, site);
            put_u64(out, vid);
            put_u32(out, runs.len() as u32);
            for v in runs {
                put_u64(out, v.first_ms as u64);
                put_u64(out, v.last_ms as u64);
                put_u32(out, v.pageviews);
                put_u32(out, v.engaged);
                put_u32(out, v.entry_url);
                put_u32(out, v.entry_after);
                put_u32(out, v.entry_profile);
                put_u32(out, v.exit_url);
                put_u32(out, v.exit_before);
            }
        }
    }

    /// Reads a table written by [`Visits::put`] in place of this one, refusing site ids at or
    /// above `sites`, url and profile ids at or above `urls` and `profiles`, and visits out of
    /// order. Before checkpoint version 7 (`c.profile_visits` false) a visit has no entry
    /// profile: it goes on counting in its site's cell alone.
    pub fn get(
        &mut self,
        c: &mut Cursor<'_>,
        (sites, urls, profiles): (usize, usize, usize),
    ) -> Result<(), FormatError> {
        let with_profile = c.profile_visits;
        let n = c.count(16)?;
        let mut back = Visits::new(self.settings);
        back.table.reserve(n);
        for _ in 0..n {
            let site = c.u32()?;
            if site as usize >= sites {
                return Err(FormatError::Damaged("a visitor's site id without a name"));
            }
            let vid = c.u64()?;
            let k = c.count(if with_profile { 44 } else { 40 })?;
            let mut runs = Runs::with_capacity(k);
            for _ in 0..k {
                let v = Visit {
                    first_ms: c.u64()? as i64,
                    last_ms: c.u64()? as i64,
                    pageviews: c.u32()?.min(MAX_PAGEVIEWS),
                    engaged: c.u32()?,
                    entry_url: c.u32()?,
                    entry_after: c.u32()?,
                    entry_profile: if with_profile { c.u32()? } else { NO_PROFILE },
                    exit_url: c.u32()?,
                    exit_before: c.u32()?,
                };
                let url_ok = |u: u32| u == NO_URL || (u as usize) < urls;
                if !url_ok(v.entry_url) || !url_ok(v.exit_url) {
                    return Err(FormatError::Damaged("a visit's page without a name"));
                }
                if v.entry_profile != NO_PROFILE
                    && (v.entry_profile as usize >= profiles || v.entry_url == NO_URL)
                {
                    return Err(FormatError::Damaged("a visit's profile without a name"));
                }
                let ordered = runs.last().is_none_or(|p: &Visit| {
                    p.last_ms.saturating_add(self.settings.gap_ms) < v.first_ms
                });
                if v.last_ms < v.first_ms || !ordered {
                    return Err(FormatError::Damaged("a visitor's visits out of order"));
                }
                if !fits(v.first_ms) || !fits(v.last_ms) {
                    return Err(FormatError::Damaged("a visit's time out of range"));
                }
                runs.push(v);
            }
            back.insert(Key::new(site, vid), runs);
        }
        *self = back;
        Ok(())
    }
}

/// Splits a visitor's visits (sorted) into what the table holds — the latest, flagged when
/// there are more — and the earlier ones, put in `earlier` in place of any it had. None
/// without a visit.
fn split_runs(
    earlier: &mut HashMap<Key, SmallVec<[Visit; 1]>>,
    key: Key,
    mut runs: Runs,
) -> Option<Latest> {
    let last = runs.pop()?;
    let more = !runs.is_empty();
    if more {
        earlier.insert(key, runs.into_iter().collect());
    } else {
        earlier.remove(&key);
    }
    Some(Latest::new(last, more))
}

/// Calls `change` for what replacing the visits `old` (none, one, or two a join merged) by
/// `new` changes in the cells: minus the old, plus the new, netted per minute, profile and
/// page.
fn report(s: &VisitSettings, old: &[Visit], new: &Visit, mut change: impl FnMut(i64, Delta)) {
    let s = *s;
    if let [a] = *old {
        if a.minute() == new.minute() {
            // The usual case, one visit extended within its minute: the differences.
            let m = new.minute();
            let (was, now) = (a.counts(&s), new.counts(&s));
            let mut c = now;
            c.sub(&was);
            if !c.is_zero() {
                change(m, Delta::Counts(c));
            }
            if a.entry_profile == new.entry_profile {
                if new.entry_profile != NO_PROFILE && !c.is_zero() {
                    change(m, Delta::Profile(new.entry_profile, c));
                }
            } else {
                if a.entry_profile != NO_PROFILE {
                    change(m, Delta::Profile(a.entry_profile, negated(&was)));
                }
                change(m, Delta::Profile(new.entry_profile, now));
            }
            if a.entry_url != new.entry_url {
                if a.entry_url != NO_URL {
                    change(m, Delta::Entry(a.entry_url, -1));
                }
                change(m, Delta::Entry(new.entry_url, 1));
            }
            if a.exit_url != new.exit_url {
                if a.exit_url != NO_URL {
                    change(m, Delta::Exit(a.exit_url, -1));
                }
                change(m, Delta::Exit(new.exit_url, 1));
            }
            return;
        }
    }
    // Retract the old contributions and add the new, netted per minute, profile and page.
    let mut counts: SmallVec<[(i64, u32, VisitCounts); 6]> = SmallVec::new();
    let mut pages: SmallVec<[(i64, bool, u32, i32); 6]> = SmallVec::new();
    let mut add = |v: &Visit, sign: i32| {
        let m = v.minute();
        let mut c = v.counts(&s);
        if sign < 0 {
            c = negated(&c);
        }
        // The site's cell (NO_PROFILE), and the entry profile's.
        let with_profile = usize::from(v.entry_profile != NO_PROFILE);
        for p in [NO_PROFILE, v.entry_profile]
            .into_iter()
            .take(1 + with_profile)
        {
            match counts.iter_mut().find(|(x, q, _)| *x == m && *q == p) {
                Some((_, _, t)) => t.add(&c),
                None => counts.push((m, p, c)),
            }
        }
        if v.entry_url != NO_URL {
            for (exit, url) in [(false, v.entry_url), (true, v.exit_url)] {
                match pages
                    .iter_mut()
                    .find(|p| p.0 == m && p.1 == exit && p.2 == url)
                {
                    Some(p) => p.3 += sign,
                    None => pages.push((m, exit, url, sign)),
                }
            }
        }
    };
    for v in old {
        add(v, -1);
    }
    add(new, 1);
    // By reference: moving a SmallVec into its iterator copies its whole inline buffer.
    for &(m, p, c) in &counts {
        if !c.is_zero() {
            change(
                m,
                if p == NO_PROFILE {
                    Delta::Counts(c)
                } else {
                    Delta::Profile(p, c)
                },
            );
        }
    }
    for &(m, exit, url, d) in &pages {
        if d != 0 {
            change(
                m,
                if exit {
                    Delta::Exit(url, d)
                } else {
                    Delta::Entry(url, d)
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const MIN: i64 = 60_000;

    fn settings() -> VisitSettings {
        VisitSettings {
            gap_ms: 30 * MIN,
            late_allowance_ms: 30 * MIN,
            bounce_engaged_seconds: 10,
        }
    }

    /// (site, vid, t_ms, pageview, engaged, url); a pageview's profile is `url % 3 + 10 *
    /// (t_ms % 2)` (two pageviews of one url may differ in profile, as in referrer).
    type Ev = (u32, u64, i64, bool, u32, u32);
    /// (t_ms, pageview, engaged, url, profile)
    type Hit = (i64, bool, u32, u32, u32);

    fn profile_of(e: &Ev) -> u32 {
        if e.3 {
            e.5 % 3 + 10 * (e.2 % 2) as u32
        } else {
            NO_PROFILE
        }
    }

    /// Site cells, profile cells (profile, minute) and page cells (minute, exit?, url) →
    /// count.
    #[derive(Debug, Default, PartialEq, Eq, Clone)]
    struct Cells {
        sites: BTreeMap<(u32, i64), VisitCounts>,
        profiles: BTreeMap<(u32, i64), VisitCounts>,
        pages: BTreeMap<(i64, bool, u32), i32>,
    }

    impl Cells {
        fn add(&mut self, site: u32, m: i64, d: Delta) {
            match d {
                Delta::Counts(c) => self.sites.entry((site, m)).or_default().add(&c),
                Delta::Profile(p, c) => self.profiles.entry((p, m)).or_default().add(&c),
                Delta::Entry(u, n) => *self.pages.entry((m, false, u)).or_default() += n,
                Delta::Exit(u, n) => *self.pages.entry((m, true, u)).or_default() += n,
            }
        }

        fn tidy(mut self) -> Self {
            self.sites.retain(|_, c| !c.is_zero());
            self.profiles.retain(|_, c| !c.is_zero());
            self.pages.retain(|_, n| *n != 0);
            self
        }
    }

    fn by_id(a: u32, b: u32) -> std::cmp::Ordering {
        a.cmp(&b)
    }

    const ORDER: Order<'static> = Order {
        urls: &by_id,
        profiles: &by_id,
    };

    fn observe(v: &mut Visits, out: &mut Cells, e: &Ev) {
        let &(site, vid, t_ms, pageview, engaged, url) = e;
        let seen = Seen {
            t_ms,
            pageview,
            engaged,
            url,
            profile: profile_of(e),
        };
        v.observe(site, vid, &seen, &ORDER, |m, d| out.add(site, m, d));
    }

    /// Cells built by observing `evs` in the given order.
    fn cells(evs: &[Ev]) -> Cells {
        let mut v = Visits::new(settings());
        let mut out = Cells::default();
        for e in evs {
            observe(&mut v, &mut out, e);
        }
        out.tidy()
    }

    /// The definition, computed directly: sort each visitor's events, cut at gaps.
    fn model(evs: &[Ev]) -> Cells {
        let s = settings();
        let mut by: BTreeMap<(u32, u64), Vec<Hit>> = BTreeMap::new();
        for ev in evs {
            let &(site, vid, t, pv, e, url) = ev;
            let hit = (t, pv, e, url, profile_of(ev));
            by.entry((site, vid)).or_default().push(hit);
        }
        let mut out = Cells::default();
        for ((site, _), mut list) in by {
            list.sort();
            let mut runs: Vec<Vec<Hit>> = Vec::new();
            for e in list {
                match runs.last_mut() {
                    Some(r) if e.0 - r.last().unwrap().0 <= s.gap_ms => r.push(e),
                    _ => runs.push(vec![e]),
                }
            }
            for r in runs {
                let m = r[0].0.div_euclid(MIN);
                let pvs: Vec<(i64, u32, u32)> =
                    r.iter().filter(|e| e.1).map(|e| (e.0, e.3, e.4)).collect();
                let engaged: u32 = r.iter().map(|e| e.2).sum();
                let c = VisitCounts {
                    visits: 1,
                    views: pvs.len() as i64,
                    duration_ms: r.last().unwrap().0 - r[0].0,
                    bounces: i64::from(pvs.len() == 1 && engaged < s.bounce_engaged_seconds),
                };
                out.sites.entry((site, m)).or_default().add(&c);
                // Entry: the earliest pageview, then the smaller url, then the smaller
                // profile; exit: the latest, then the greater url.
                let entry = pvs.iter().min();
                let exit = pvs.iter().map(|p| (p.0, p.1)).max();
                if let (Some(entry), Some(exit)) = (entry, exit) {
                    *out.pages.entry((m, false, entry.1)).or_default() += 1;
                    *out.pages.entry((m, true, exit.1)).or_default() += 1;
                    out.profiles.entry((entry.2, m)).or_default().add(&c);
                }
            }
        }
        out.tidy()
    }

    #[test]
    fn a_late_event_joins_two_visits() {
        let a = (1, 7, 0, true, 0, 1);
        let b = (1, 7, 50 * MIN, true, 0, 2);
        let join = (1, 7, 25 * MIN, false, 30, NO_URL);
        let before = cells(&[a, b]);
        assert_eq!(before.sites.len(), 2, "{before:?}");
        assert_eq!(before.sites[&(1, 0)].bounces, 1);
        let after = cells(&[a, b, join]);
        assert_eq!(after.sites.len(), 1, "{after:?}");
        let c = after.sites[&(1, 0)];
        assert_eq!((c.visits, c.views, c.bounces), (1, 2, 0));
        assert_eq!(c.duration_ms, 50 * MIN);
        // One visit entering on page 1, leaving on page 2.
        let pages: Vec<_> = after.pages.into_iter().collect();
        assert_eq!(pages, vec![((0, false, 1), 1), ((0, true, 2), 1)]);
        // And it counts, whole, under its entry pageview's profile alone (page 1's: 1).
        let profiles: Vec<_> = after.profiles.into_iter().collect();
        assert_eq!(profiles, vec![((1, 0), c)]);
        assert_eq!(before.profiles.len(), 2, "two visits, two entry profiles");
    }

    #[test]
    fn a_late_earlier_pageview_moves_the_visit_to_its_profile() {
        let first = (1, 7, 10 * MIN, true, 0, 2);
        let late = (1, 7, 5 * MIN, true, 0, 4);
        let before = cells(&[first]);
        assert_eq!(before.profiles.keys().collect::<Vec<_>>(), [&(2, 10)]);
        let after = cells(&[first, late]);
        assert_eq!(after.profiles.keys().collect::<Vec<_>>(), [&(1, 5)]);
        assert_eq!(after.profiles[&(1, 5)].views, 2);
        // A visit of a heartbeat alone has no profile.
        let hb = cells(&[(1, 9, 0, false, 5, NO_URL)]);
        assert_eq!((hb.sites.len(), hb.profiles.len()), (1, 0));
    }

    #[test]
    fn a_late_earlier_event_moves_the_visit_and_its_entry() {
        let late = (1, 7, 5 * MIN, true, 0, 9);
        let evs = [(1, 7, 20 * MIN, true, 0, 3), late];
        let got = cells(&evs);
        assert_eq!(got.sites.len(), 1);
        assert_eq!(got.sites[&(1, 5)].duration_ms, 15 * MIN);
        assert_eq!(got.pages.get(&(5, false, 9)), Some(&1));
        assert_eq!(got.pages.get(&(5, true, 3)), Some(&1));
        assert_eq!(got, model(&evs));
    }

    #[test]
    fn engaged_time_keeps_a_one_page_visit_from_bouncing() {
        let got = cells(&[(1, 7, 0, true, 0, 1), (1, 7, MIN, false, 15, NO_URL)]);
        assert_eq!(got.sites[&(1, 0)].bounces, 0);
        let got = cells(&[(1, 7, 0, true, 0, 1), (1, 7, MIN, false, 5, NO_URL)]);
        assert_eq!(got.sites[&(1, 0)].bounces, 1);
    }

    #[test]
    fn a_visitor_is_one_52_byte_entry() {
        assert_eq!(std::mem::size_of::<Visit>(), 44);
        // And 5 bytes per slot of the table of positions (`agg::dense`).
        assert_eq!(std::mem::size_of::<(Key, Latest)>(), 52);
    }

    #[test]
    fn an_active_visitor_costs_at_most_64_bytes() {
        // 114 689 visitors: one more than a table of 131 072 slots takes, so the table of
        // positions has just doubled (262 144 slots, 44 % full) — the most a visitor costs.
        let mut v = Visits::new(settings());
        let mut out = Cells::default();
        let n = 7 * (1 << 17) / 8 + 1;
        for vid in 0..n as u64 {
            observe(&mut v, &mut out, &(1, vid, 0, true, 0, 1));
        }
        assert_eq!(v.len(), n);
        let per = v.memory_bytes() as f64 / n as f64;
        assert!((63.0..=64.0).contains(&per), "{per} bytes per visitor");
        // One fewer: the table 87 % full, the least.
        v.sweep(i64::MAX / 4);
        for vid in 0..n as u64 - 1 {
            observe(&mut v, &mut out, &(1, vid, 0, true, 0, 1));
        }
        let per = v.memory_bytes() as f64 / (n - 1) as f64;
        assert!(per < 58.5, "{per} bytes per visitor");
    }

    #[test]
    fn times_keep_48_bits_exactly() {
        for t in [
            0,
            1,
            -1,
            1_796_000_000_000,
            -(1 << 47),
            (1 << 47) - 1,
            65_535,
            65_536,
        ] {
            assert!(fits(t));
            assert_eq!(from48(to48(t)), t, "{t}");
        }
        assert!(!fits(1 << 47) && !fits(-(1 << 47) - 1) && !fits(i64::MAX));
        // An event at a time a slot cannot keep changes nothing.
        let mut v = Visits::new(settings());
        let mut out = Cells::default();
        observe(&mut v, &mut out, &(1, 7, i64::MAX / 2, true, 0, 1));
        assert!(v.is_empty());
        assert_eq!(out.tidy(), Cells::default());
    }

    #[test]
    fn earlier_visits_wait_apart_and_go_when_swept() {
        let mut v = Visits::new(settings());
        let mut out = Cells::default();
        let evs = [
            (1, 7, 0, true, 0, 1),
            (1, 7, 40 * MIN, true, 0, 2),
            (1, 7, 80 * MIN, true, 0, 3),
        ];
        for e in &evs {
            observe(&mut v, &mut out, e);
        }
        let runs = |v: &Visits| {
            v.entries()
                .into_iter()
                .map(|(_, r)| r.len())
                .collect::<Vec<_>>()
        };
        assert_eq!(runs(&v), [3]);
        assert_eq!(
            (v.len(), v.earlier.len()),
            (1, 1),
            "one visitor, two visits apart"
        );
        // A late event joins the first two; the latest stays inline.
        let join = (1, 7, 20 * MIN, false, 1, NO_URL);
        observe(&mut v, &mut out, &join);
        assert_eq!(runs(&v), [2]);
        let mut all = evs.to_vec();
        all.push(join);
        assert_eq!(out.clone().tidy(), model(&all));
        // The joined visit ends at 40 min: gone at 40 + 60 min, and the flag with it.
        assert_eq!(v.sweep(100 * MIN + 1), 0);
        assert_eq!(runs(&v), [1]);
        assert!(v.earlier.is_empty());
        assert!(!v.table.iter().any(|(_, l)| l.more()));
        let first_ms = v.entries()[0].1[0].first_ms;
        assert_eq!(first_ms, 80 * MIN);
        assert_eq!(v.sweep(140 * MIN + 1), 1);
        assert!(v.is_empty());
    }

    #[test]
    fn sweep_forgets_only_what_nothing_can_touch() {
        let mut v = Visits::new(settings());
        let mut out = Cells::default();
        observe(&mut v, &mut out, &(1, 7, 0, true, 0, 1));
        observe(&mut v, &mut out, &(1, 8, 10 * MIN, true, 0, 1));
        assert_eq!(v.sweep(60 * MIN), 0, "0 + 60 min is still reachable");
        assert_eq!(v.sweep(60 * MIN + 1), 1);
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn the_table_round_trips_and_damage_is_refused() {
        let mut v = Visits::new(settings());
        let mut out = Cells::default();
        for i in 0..50u64 {
            let site = (i % 3) as u32;
            observe(
                &mut v,
                &mut out,
                &(site, i, i as i64 * MIN, i % 2 == 0, 3, 4),
            );
            observe(
                &mut v,
                &mut out,
                &(site, i, i as i64 * MIN + 45 * MIN, true, 3, 5),
            );
        }
        let mut bytes = Vec::new();
        v.put(&mut bytes);
        let mut back = Visits::new(settings());
        back.get(&mut Cursor::new(&bytes, 0), (3, 6, 20)).unwrap();
        assert_eq!(back.entries(), v.entries());
        assert!(back.get(&mut Cursor::new(&bytes, 0), (2, 6, 20)).is_err());
        assert!(back.get(&mut Cursor::new(&bytes, 0), (3, 5, 20)).is_err());
        assert!(
            back.get(&mut Cursor::new(&bytes, 0), (3, 6, 2)).is_err(),
            "profile 2 (page 5's) has no name"
        );
        for d in crate::agg::cells::tests::damaged_copies(&bytes, 60) {
            let _ = back.get(&mut Cursor::new(&d, 0), (3, 6, 20));
        }
        // A visit whose times a slot cannot keep in 48 bits: refused, not wrapped.
        let mut one = Visits::new(settings());
        observe(&mut one, &mut out, &(0, 1, 0, true, 3, 4));
        let mut bytes = Vec::new();
        one.put(&mut bytes);
        // count, site, visitor, runs: then the first and last event times.
        for at in [20, 28] {
            bytes[at..at + 8].copy_from_slice(&(1u64 << 50).to_le_bytes());
        }
        assert!(matches!(
            back.get(&mut Cursor::new(&bytes, 0), (3, 6, 20)),
            Err(FormatError::Damaged("a visit's time out of range"))
        ));
    }

    fn events() -> impl Strategy<Value = Vec<Ev>> {
        // Two sites, a few visitors and pages, times over three hours in steps that land on
        // both sides of the gap (and some in the same millisecond).
        prop::collection::vec(
            (
                0u32..2,
                0u64..4,
                (0i64..180).prop_map(|m| m * MIN / 2 + (m % 7) * 1000),
                any::<bool>(),
                0u32..20,
                0u32..5,
            )
                .prop_map(|(s, v, t, pv, e, u)| (s, v, t, pv, e, if pv { u } else { NO_URL })),
            0..60,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any arrival order gives the cells of the definition.
        #[test]
        fn any_order_gives_the_definition(evs in events(), seed in any::<u64>()) {
            let want = model(&evs);
            prop_assert_eq!(cells(&evs), want.clone());
            let mut shuffled = evs.clone();
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(cells(&shuffled), want);
        }

        /// Sweeping at a clock no later event can precede changes nothing.
        #[test]
        fn sweeping_behind_the_clock_changes_nothing(evs in events()) {
            let mut sorted = evs.clone();
            sorted.sort_by_key(|e| e.2);
            let mut v = Visits::new(settings());
            let mut out = Cells::default();
            for e in &sorted {
                // Events arrive in time order, each received at its own time: the receive
                // clock stands at `t`.
                v.sweep(e.2);
                observe(&mut v, &mut out, e);
            }
            prop_assert_eq!(out.tidy(), model(&evs));
        }
    }
}
