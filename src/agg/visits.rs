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
//! (≈ 48 bytes each, `pixeld_agg_visitors`, `pixeld_agg_visitor_bytes`).

use hashbrown::HashMap;
use smallvec::SmallVec;

use super::cells::{put_u32, put_u64, Cursor, FormatError};

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

/// One visit of one visitor on one site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visit {
    pub first_ms: i64,
    pub last_ms: i64,
    pub pageviews: u32,
    /// Engaged seconds of its events.
    pub engaged: u32,
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

    fn sub(&mut self, o: &VisitCounts) {
        self.visits = self.visits.wrapping_sub(o.visits);
        self.bounces = self.bounces.wrapping_sub(o.bounces);
        self.views = self.views.wrapping_sub(o.views);
        self.duration_ms = self.duration_ms.wrapping_sub(o.duration_ms);
    }

    pub fn is_zero(&self) -> bool {
        *self == VisitCounts::default()
    }
}

impl Visit {
    fn new(t_ms: i64, pageview: bool, engaged: u32) -> Visit {
        Visit {
            first_ms: t_ms,
            last_ms: t_ms,
            pageviews: u32::from(pageview),
            engaged,
        }
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

    fn absorb(&mut self, o: &Visit) {
        self.first_ms = self.first_ms.min(o.first_ms);
        self.last_ms = self.last_ms.max(o.last_ms);
        self.pageviews = self.pageviews.saturating_add(o.pageviews);
        self.engaged = self.engaged.saturating_add(o.engaged);
    }
}

/// One visitor's recent visits on one site: sorted by time, each more than the gap apart.
type Runs = SmallVec<[Visit; 1]>;

/// The visits a shard keeps: per (site id, visitor hash), the recent ones.
#[derive(Debug, Clone, Default)]
pub struct Visits {
    pub settings: VisitSettings,
    table: HashMap<(u32, u64), Runs>,
}

/// Bytes one visitor costs in the table (key, inline visit, control byte), for the gauge.
const VISITOR_BYTES: usize =
    std::mem::size_of::<((u32, u64), Runs)>() + 1 + std::mem::size_of::<usize>();

impl Visits {
    pub fn new(settings: VisitSettings) -> Self {
        Visits {
            settings,
            table: HashMap::new(),
        }
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
            .table
            .values()
            .filter(|r| r.spilled())
            .map(|r| r.capacity() * std::mem::size_of::<Visit>())
            .sum();
        (self.table.capacity() * VISITOR_BYTES + spilled) as u64
    }

    /// Counts one event of visitor `vid` on site `site` at event time `t_ms` (eligible: see
    /// the module doc) and calls `change(minute, counts)` for each change of what visits add
    /// to the cells (at most three: a join retracts two visits and adds one).
    pub fn observe(
        &mut self,
        site: u32,
        vid: u64,
        t_ms: i64,
        pageview: bool,
        engaged: u32,
        mut change: impl FnMut(i64, VisitCounts),
    ) {
        let s = self.settings;
        let gap = s.gap_ms;
        let ev = Visit::new(t_ms, pageview, engaged);
        let runs = self.table.entry((site, vid)).or_default();
        // The first visit that ends within the gap before `t` or later.
        let i = runs.partition_point(|v| v.last_ms.saturating_add(gap) < t_ms);
        let touches = |v: &Visit| v.first_ms.saturating_sub(gap) <= t_ms;
        let first = runs.get(i).copied().filter(touches);
        let second = runs
            .get(i + 1)
            .copied()
            .filter(|v| first.is_some() && touches(v));
        let mut old: SmallVec<[Visit; 2]> = SmallVec::new();
        let mut new = ev;
        if let Some(a) = first {
            old.push(a);
            new.absorb(&a);
        }
        if let Some(b) = second {
            old.push(b);
            new.absorb(&b);
            runs.remove(i + 1);
        }
        match first {
            Some(_) => runs[i] = new,
            None => runs.insert(i, new),
        }
        // Retract the old contributions and add the new, one change per minute.
        let mut by_minute: SmallVec<[(i64, VisitCounts); 3]> = SmallVec::new();
        let mut put = |minute: i64, f: &dyn Fn(&mut VisitCounts)| match by_minute
            .iter_mut()
            .find(|(m, _)| *m == minute)
        {
            Some((_, c)) => f(c),
            None => {
                let mut c = VisitCounts::default();
                f(&mut c);
                by_minute.push((minute, c));
            }
        };
        for v in &old {
            let c = v.counts(&s);
            put(v.minute(), &|x| x.sub(&c));
        }
        let c = new.counts(&s);
        put(new.minute(), &|x| x.add(&c));
        for (m, c) in by_minute {
            if !c.is_zero() {
                change(m, c);
            }
        }
    }

    /// Forgets every visit no event received at or after `clock_ms` can touch any more (it
    /// ended more than gap + allowance before), and the visitors left without one. Returns
    /// how many visitors it forgot.
    pub fn sweep(&mut self, clock_ms: i64) -> usize {
        let horizon = self.settings.gap_ms + self.settings.late_allowance_ms;
        let before = self.table.len();
        self.table.retain(|_, runs| {
            runs.retain(|v| v.last_ms.saturating_add(horizon) >= clock_ms);
            !runs.is_empty()
        });
        if self.table.capacity() > 64 && self.table.len() < self.table.capacity() / 4 {
            self.table.shrink_to_fit();
        }
        before - self.table.len()
    }

    /// Takes every visitor of `other` (another owner's, before a re-partition), its site ids
    /// translated by `site`. Visitors of two owners never collide: each had its own.
    pub fn take_from(&mut self, other: &Visits, mut site: impl FnMut(u32) -> u32) {
        for (&(s, vid), runs) in &other.table {
            self.table.insert((site(s), vid), runs.clone());
        }
    }

    /// Every visitor's visits, sorted by (site, visitor): what a checkpoint writes.
    pub fn entries(&self) -> Vec<((u32, u64), &[Visit])> {
        let mut v: Vec<((u32, u64), &[Visit])> =
            self.table.iter().map(|(k, r)| (*k, r.as_slice())).collect();
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
            }
        }
    }

    /// Reads a table written by [`Visits::put`] in place of this one, refusing site ids at or
    /// above `sites` and visits out of order.
    pub fn get(&mut self, c: &mut Cursor<'_>, sites: usize) -> Result<(), FormatError> {
        let n = c.count(16)?;
        let mut table = HashMap::with_capacity(n);
        for _ in 0..n {
            let site = c.u32()?;
            if site as usize >= sites {
                return Err(FormatError::Damaged("a visitor's site id without a name"));
            }
            let vid = c.u64()?;
            let k = c.count(24)?;
            let mut runs = Runs::with_capacity(k);
            for _ in 0..k {
                let v = Visit {
                    first_ms: c.u64()? as i64,
                    last_ms: c.u64()? as i64,
                    pageviews: c.u32()?,
                    engaged: c.u32()?,
                };
                let ordered = runs.last().is_none_or(|p: &Visit| {
                    p.last_ms.saturating_add(self.settings.gap_ms) < v.first_ms
                });
                if v.last_ms < v.first_ms || !ordered {
                    return Err(FormatError::Damaged("a visitor's visits out of order"));
                }
                runs.push(v);
            }
            if !runs.is_empty() {
                table.insert((site, vid), runs);
            }
        }
        self.table = table;
        Ok(())
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

    /// (site, vid, t_ms, pageview, engaged)
    type Ev = (u32, u64, i64, bool, u32);
    /// (t_ms, pageview, engaged)
    type Hit = (i64, bool, u32);

    /// Cells built by observing `evs` in the given order.
    fn cells(evs: &[Ev]) -> BTreeMap<(u32, i64), VisitCounts> {
        let mut v = Visits::new(settings());
        let mut out: BTreeMap<(u32, i64), VisitCounts> = BTreeMap::new();
        for &(site, vid, t, pv, e) in evs {
            v.observe(site, vid, t, pv, e, |m, c| {
                out.entry((site, m)).or_default().add(&c);
            });
        }
        out.retain(|_, c| !c.is_zero());
        out
    }

    /// The definition, computed directly: sort each visitor's events, cut at gaps.
    fn model(evs: &[Ev]) -> BTreeMap<(u32, i64), VisitCounts> {
        let s = settings();
        let mut by: BTreeMap<(u32, u64), Vec<Hit>> = BTreeMap::new();
        for &(site, vid, t, pv, e) in evs {
            by.entry((site, vid)).or_default().push((t, pv, e));
        }
        let mut out: BTreeMap<(u32, i64), VisitCounts> = BTreeMap::new();
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
                let pvs = r.iter().filter(|e| e.1).count() as i64;
                let engaged: u32 = r.iter().map(|e| e.2).sum();
                let c = out.entry((site, r[0].0.div_euclid(MIN))).or_default();
                c.visits += 1;
                c.views += pvs;
                c.duration_ms += r.last().unwrap().0 - r[0].0;
                c.bounces += i64::from(pvs == 1 && engaged < s.bounce_engaged_seconds);
            }
        }
        out
    }

    #[test]
    fn a_late_event_joins_two_visits() {
        let a = (1, 7, 0, true, 0);
        let b = (1, 7, 50 * MIN, true, 0);
        let join = (1, 7, 25 * MIN, false, 30);
        let before = cells(&[a, b]);
        assert_eq!(before.len(), 2, "{before:?}");
        assert_eq!(before[&(1, 0)].bounces, 1);
        let after = cells(&[a, b, join]);
        assert_eq!(after.len(), 1, "{after:?}");
        let c = after[&(1, 0)];
        assert_eq!((c.visits, c.views, c.bounces), (1, 2, 0));
        assert_eq!(c.duration_ms, 50 * MIN);
    }

    #[test]
    fn a_late_earlier_event_moves_the_visit_to_its_minute() {
        let late = (1, 7, 5 * MIN, true, 0);
        let got = cells(&[(1, 7, 20 * MIN, true, 0), late]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[&(1, 5)].duration_ms, 15 * MIN);
        assert_eq!(got, model(&[(1, 7, 20 * MIN, true, 0), late]));
    }

    #[test]
    fn engaged_time_keeps_a_one_page_visit_from_bouncing() {
        let got = cells(&[(1, 7, 0, true, 0), (1, 7, MIN, false, 15)]);
        assert_eq!(got[&(1, 0)].bounces, 0);
        let got = cells(&[(1, 7, 0, true, 0), (1, 7, MIN, false, 5)]);
        assert_eq!(got[&(1, 0)].bounces, 1);
    }

    #[test]
    fn sweep_forgets_only_what_nothing_can_touch() {
        let mut v = Visits::new(settings());
        v.observe(1, 7, 0, true, 0, |_, _| {});
        v.observe(1, 8, 10 * MIN, true, 0, |_, _| {});
        assert_eq!(v.sweep(60 * MIN), 0, "0 + 60 min is still reachable");
        assert_eq!(v.sweep(60 * MIN + 1), 1);
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn the_table_round_trips_and_damage_is_refused() {
        let mut v = Visits::new(settings());
        for i in 0..50u64 {
            v.observe((i % 3) as u32, i, i as i64 * MIN, i % 2 == 0, 3, |_, _| {});
            v.observe(
                (i % 3) as u32,
                i,
                i as i64 * MIN + 45 * MIN,
                true,
                3,
                |_, _| {},
            );
        }
        let mut bytes = Vec::new();
        v.put(&mut bytes);
        let mut back = Visits::new(settings());
        back.get(&mut Cursor::new(&bytes, 0), 3).unwrap();
        assert_eq!(back.entries(), v.entries());
        assert!(back.get(&mut Cursor::new(&bytes, 0), 2).is_err());
        for d in crate::agg::cells::tests::damaged_copies(&bytes, 60) {
            let _ = back.get(&mut Cursor::new(&d, 0), 3);
        }
    }

    fn events() -> impl Strategy<Value = Vec<Ev>> {
        // Two sites, a few visitors, times over three hours in steps that land on both sides
        // of the gap.
        prop::collection::vec(
            (
                0u32..2,
                0u64..4,
                (0i64..180).prop_map(|m| m * MIN / 2 + (m % 7) * 1000),
                any::<bool>(),
                0u32..20,
            ),
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
            let s = settings();
            let mut sorted = evs.clone();
            sorted.sort_by_key(|e| e.2);
            let mut v = Visits::new(s);
            let mut out: BTreeMap<(u32, i64), VisitCounts> = BTreeMap::new();
            for &(site, vid, t, pv, e) in &sorted {
                // Events arrive in time order, each received at its own time: the receive
                // clock stands at `t`.
                v.sweep(t);
                v.observe(site, vid, t, pv, e, |m, c| out.entry((site, m)).or_default().add(&c));
            }
            out.retain(|_, c| !c.is_zero());
            prop_assert_eq!(out, model(&evs));
        }
    }
}
