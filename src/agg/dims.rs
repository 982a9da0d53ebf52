//! Profiles: the owner's side of a pageview's dimensions (`parse::event::dims`). A profile is
//! one site with one value of every dimension; its cell (a [`super::UrlCell`] in
//! [`super::Bucket::profiles`]: pageviews and distinct visitors) lives on the owner of the
//! visitor, like the site cells, so shards add their parts up and never share a visitor.
//!
//! A breakdown by one dimension, filtered by others, sums the cells of the profiles that pass
//! the filter, grouped by that dimension's value, and unites their visitors — exact, whatever
//! the combination asked, because every pageview went to exactly one profile.
//!
//! Memory is bounded per dimension: at most [`VALUE_CAP`] distinct values of one dimension per
//! owner; a new value past it becomes [`OTHER`] (counted in `pixeld_agg_dim_overflow_total`),
//! so a flood of random `utm_campaign`s cannot grow the tables without end. Which values got
//! in first follows arrival order, so only a dimension past its cap can answer differently
//! after a rebuild from the log.

use std::borrow::Cow;

use hashbrown::HashMap;

use super::{visitors_of, Aggregates, Names, PartRef, VisitCounts, VisitorUnion};
use crate::parse::event::dims::{self, DIMS, HUMAN, SEP};

/// Distinct values of one dimension an owner keeps.
pub const VALUE_CAP: usize = 10_000;
/// What a value past the cap counts as.
pub const OTHER: &str = "(other)";

/// An owner's profiles: their names (`site` [`SEP`] the key), and per profile its site and the
/// id of each of its values.
#[derive(Debug, Clone)]
pub struct Profiles {
    pub names: Names,
    site: Vec<u32>,
    /// The custom dimensions (`[agg.dimensions]`), after the built-in ones.
    custom: Vec<String>,
    /// Per profile, the id of each of its values: `stride` ids a profile, the built-in
    /// dimensions' then the custom ones'.
    values: Vec<u32>,
    stride: usize,
    /// Per dimension, its values.
    dim_values: Vec<Names>,
    /// New values that became [`OTHER`].
    pub overflow: u64,
    buf: String,
}

/// What a breakdown adds up for one row.
#[derive(Debug, Default)]
struct Counts {
    views: u64,
    events: u64,
    visits: VisitCounts,
}

/// One value of a breakdown on one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimRow {
    pub key: String,
    pub views: u64,
    /// Custom events (the `event` dimension's values other than `pageview`).
    pub events: u64,
    /// Distinct visitors (this shard's: shards hold disjoint visitors), and whether a sketch
    /// estimated them.
    pub visitors: u64,
    pub sketched: bool,
    /// What the visits entering on a pageview of this value add (visits, bounces, their
    /// pageviews and durations; `agg::visits`).
    pub visits: VisitCounts,
}

/// Which profiles a breakdown counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DimFilter {
    /// `(dimension, value)` pairs a profile must all match.
    pub is: Vec<(usize, String)>,
    /// Whether bots' pageviews count (a `bot` breakdown or filter always sees them).
    pub bots: bool,
    /// Whether custom events count (an `event` breakdown or filter always sees them; else
    /// only pageviews).
    pub events: bool,
    /// A condition over the values a profile must meet as well (`POST /v1/query`'s filters):
    /// positions of its pageview dimensions (built-in, then custom), then url and ref_domain
    /// (which a profile has none of), then its site — as a scan numbers them.
    pub expr: Option<Filter>,
}

impl DimFilter {
    /// The profiles whose visitors a conversion rate over dimension `dim` (the `event`) is a
    /// share of: these without the conditions on `dim`, custom events counted; None when such
    /// a condition is not a conjunct of its own ([`Filter::without`]).
    pub fn conversion_base(&self, dim: usize) -> Option<DimFilter> {
        let expr = match &self.expr {
            None => None,
            Some(f) => f.without(dim)?,
        };
        Some(DimFilter {
            is: self.is.iter().filter(|(d, _)| *d != dim).cloned().collect(),
            bots: self.bots,
            events: true,
            expr,
        })
    }

    /// Whether it says anything about dimension `dim`.
    pub fn mentions(&self, dim: usize) -> bool {
        self.is.iter().any(|(d, _)| *d == dim)
            || self.expr.as_ref().is_some_and(|e| e.mentions(dim))
    }
}

/// A condition over a pageview's dimension values (positions in `DIMS`): the filters of
/// `POST /v1/query`. A leaf holds when the value matches any of its operands.
#[derive(Debug, Clone)]
pub enum Filter {
    Is(usize, Vec<String>),
    IsNot(usize, Vec<String>),
    /// Substrings, case-sensitive.
    Contains(usize, Vec<String>),
    /// Regular expressions, unanchored, compiled with a size limit by the caller.
    Matches(usize, Vec<regex::Regex>),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
}

impl Filter {
    /// Whether the values (`value(dim)`) meet it.
    pub fn test<'a>(&self, value: &impl Fn(usize) -> &'a str) -> bool {
        match self {
            Filter::Is(d, vs) => vs.iter().any(|v| v == value(*d)),
            Filter::IsNot(d, vs) => !vs.iter().any(|v| v == value(*d)),
            Filter::Contains(d, vs) => vs.iter().any(|v| value(*d).contains(v.as_str())),
            Filter::Matches(d, rs) => rs.iter().any(|r| r.is_match(value(*d))),
            Filter::And(fs) => fs.iter().all(|f| f.test(value)),
            Filter::Or(fs) => fs.iter().any(|f| f.test(value)),
            Filter::Not(f) => !f.test(value),
        }
    }

    /// Itself without its conditions on dimension `dim` (None inside: nothing left), or None
    /// when such a condition is not a conjunct of its own (inside an `or` or `not` naming
    /// another dimension too).
    pub fn without(&self, dim: usize) -> Option<Option<Filter>> {
        /// Whether every leaf of `f` names `dim`.
        fn only(f: &Filter, dim: usize) -> bool {
            match f {
                Filter::Is(d, _)
                | Filter::IsNot(d, _)
                | Filter::Contains(d, _)
                | Filter::Matches(d, _) => *d == dim,
                Filter::And(fs) | Filter::Or(fs) => fs.iter().all(|f| only(f, dim)),
                Filter::Not(f) => only(f, dim),
            }
        }
        match self {
            Filter::And(fs) => {
                let mut kept = Vec::new();
                for c in fs {
                    kept.extend(c.without(dim)?);
                }
                Some(match kept.len() {
                    0 => None,
                    1 => kept.pop(),
                    _ => Some(Filter::And(kept)),
                })
            }
            f if !f.mentions(dim) => Some(Some(f.clone())),
            f if only(f, dim) => Some(None),
            _ => None,
        }
    }

    /// Whether a leaf names dimension `dim`.
    pub fn mentions(&self, dim: usize) -> bool {
        match self {
            Filter::Is(d, _)
            | Filter::IsNot(d, _)
            | Filter::Contains(d, _)
            | Filter::Matches(d, _) => *d == dim,
            Filter::And(fs) | Filter::Or(fs) => fs.iter().any(|f| f.mentions(dim)),
            Filter::Not(f) => f.mentions(dim),
        }
    }
}

/// Two filters are equal when they say the same (regular expressions by their text).
impl PartialEq for Filter {
    fn eq(&self, other: &Filter) -> bool {
        use Filter::*;
        match (self, other) {
            (Is(a, x), Is(b, y))
            | (IsNot(a, x), IsNot(b, y))
            | (Contains(a, x), Contains(b, y)) => a == b && x == y,
            (Matches(a, x), Matches(b, y)) => {
                a == b
                    && x.iter()
                        .map(regex::Regex::as_str)
                        .eq(y.iter().map(regex::Regex::as_str))
            }
            (And(x), And(y)) | (Or(x), Or(y)) => x == y,
            (Not(x), Not(y)) => x == y,
            _ => false,
        }
    }
}
impl Eq for Filter {}

/// The values of `key`: the built-in dimensions', then those of the custom ones `custom`
/// (found by name), collected so that the tables can be updated while they are read.
fn key_values<'k>(custom: &[String], key: &'k str) -> Vec<&'k str> {
    dims::all_values(key, custom).collect()
}

impl Default for Profiles {
    fn default() -> Self {
        Profiles::new(&[])
    }
}

impl Profiles {
    /// No profiles yet, with these custom dimensions after the built-in ones.
    pub fn new(custom: &[String]) -> Self {
        let stride = DIMS.len() + custom.len();
        Profiles {
            names: Names::default(),
            site: Vec::new(),
            custom: custom.to_vec(),
            values: Vec::new(),
            stride,
            dim_values: vec![Names::default(); stride],
            overflow: 0,
            buf: String::new(),
        }
    }

    /// The value ids of profile `id`.
    fn values_of(&self, id: u32) -> Option<&[u32]> {
        let start = (id as usize).checked_mul(self.stride)?;
        self.values.get(start..start + self.stride)
    }

    /// Profiles with names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Indexes names `first..` (interned by a checkpoint's decoding): their sites (interned in
    /// `sites`) and values.
    pub fn index_from(&mut self, first: usize, sites: &mut Names) {
        for id in first..self.names.len() {
            let name = self.names.name(id as u32).to_string();
            let (site, key) = name.split_once(SEP).unwrap_or((name.as_str(), ""));
            self.site.push(sites.intern(site).0);
            let values = key_values(&self.custom, key);
            for (d, v) in values.into_iter().enumerate() {
                let id = self.dim_values.get_mut(d).map_or(0, |n| n.intern(v).0);
                self.values.push(id);
            }
        }
    }

    /// The id of the profile of `key` on site `site` (id `s`), interned if new; a value new to
    /// a dimension already holding [`VALUE_CAP`] becomes [`OTHER`] (counted in `overflow`).
    pub fn intern(&mut self, s: u32, site: &str, key: &str) -> u32 {
        self.buf.clear();
        self.buf.push_str(site);
        self.buf.push(SEP);
        self.buf.push_str(key);
        match self.names.get(&self.buf) {
            Some(id) => id,
            None => self.intern_new(s, site, key),
        }
    }

    /// [`Profiles::intern`] of a key its exact lookup missed.
    fn intern_new(&mut self, s: u32, site: &str, key: &str) -> u32 {
        let mut name = String::with_capacity(self.buf.len());
        name.push_str(site);
        let mut ids = Vec::with_capacity(self.stride);
        let mut overflow = 0;
        let values = key_values(&self.custom, key);
        for (d, v) in values.into_iter().enumerate() {
            let Some(names) = self.dim_values.get_mut(d) else {
                continue;
            };
            let v = if names.get(v).is_some() || names.len() < VALUE_CAP {
                v
            } else {
                overflow += 1;
                OTHER
            };
            ids.push(names.intern(v).0);
            // As the parser writes a key (`parse::event::dims`): the positional values, then
            // the named built-ins that have a value (an event's name, a region), then the
            // custom values by name.
            if dims::is_named_builtin(d) {
                if v == dims::missing_value(d) {
                    continue;
                }
                name.push(SEP);
                name.push_str(DIMS[d]);
                name.push('=');
            } else {
                name.push(SEP);
                if let Some(custom) = d.checked_sub(DIMS.len()).and_then(|c| self.custom.get(c)) {
                    name.push_str(custom);
                    name.push('=');
                }
            }
            name.push_str(v);
        }
        self.overflow += overflow;
        let (id, new) = self.names.intern(&name);
        if new {
            self.site.push(s);
            self.values.extend(ids);
        }
        id
    }

    /// The site and key of profile `id` (what [`Profiles::intern`] takes).
    pub fn split(&self, id: u32) -> (&str, &str) {
        let name = self.names.name(id);
        name.split_once(SEP).unwrap_or((name, ""))
    }

    /// Heap bytes, roughly.
    pub fn memory(&self) -> usize {
        self.names.memory()
            + self.site.capacity() * 4
            + self.values.capacity() * 4
            + self.dim_values.iter().map(Names::memory).sum::<usize>()
    }

    /// Whether profile `id` is of site `site` (any when None) and has the values `is` (ids;
    /// None: a value never seen, which nothing matches).
    fn passes(&self, id: u32, site: Option<u32>, is: &[(usize, Option<u32>)]) -> bool {
        let i = id as usize;
        let (Some(&s), Some(vals)) = (self.site.get(i), self.values_of(id)) else {
            return false;
        };
        site.is_none_or(|want| want == s)
            && is
                .iter()
                .all(|&(d, v)| v.is_some() && vals.get(d).copied() == v)
    }
}

impl Aggregates {
    /// This shard's pageviews, visitors and visits by value of dimension `dims[0]` (by pair
    /// of values when `dims` names two: the row's key is the two joined by [`SEP`]; one row
    /// keyed "" when it names none) over `from..to`, optionally of one site, counting the
    /// profiles that pass `filter` (a visit by the profile of its entry pageview). Visits are
    /// counted only when `visits` asks for them: without, a row's [`DimRow::visits`] is zero and
    /// a value that only visits entered on (their first event in this range, the entry pageview
    /// before it) is no row.
    pub fn breakdown(
        &self,
        dims: &[usize],
        from: i64,
        to: i64,
        site: Option<&str>,
        filter: &DimFilter,
        visits: bool,
    ) -> Vec<DimRow> {
        let p = &self.profiles;
        let first = match dims.first() {
            Some(d) => match p.dim_values.get(*d) {
                Some(names) => Some((*d, names)),
                None => return Vec::new(),
            },
            None => None,
        };
        let second = match dims.get(1) {
            Some(d) => match p.dim_values.get(*d) {
                Some(names) => Some((*d, names)),
                None => return Vec::new(),
            },
            None => None,
        };
        let site_id = match site {
            Some(s) => match self.sites.get(s) {
                Some(id) => Some(id),
                None => return Vec::new(),
            },
            None => None,
        };
        let mut is: Vec<(usize, Option<u32>)> = filter
            .is
            .iter()
            .map(|(d, v)| (*d, p.dim_values.get(*d).and_then(|n| n.get(v))))
            .collect();
        // Bots' pageviews count only when asked for (`filter.bots`, or a `bot` breakdown or
        // filter), custom events only when the `event` dimension is named.
        let named = |d: usize| dims.contains(&d) || filter.mentions(d);
        for (d, value, asked) in [
            (dims::BOT, HUMAN, filter.bots || named(dims::BOT)),
            (
                dims::EVENT,
                dims::PAGEVIEW,
                filter.events || named(dims::EVENT),
            ),
        ] {
            if !asked {
                match p.dim_values.get(d).and_then(|n| n.get(value)) {
                    Some(id) => is.push((d, Some(id))),
                    // No human pageview at all: nothing to count.
                    None => return Vec::new(),
                }
            }
        }
        // The expression, judged once per profile rather than once per cell.
        // Positions past the dimensions: url, ref_domain (never a profile's: ""), then the
        // profile's site (see `DimFilter::expr`).
        let site_pos = p.stride + 2;
        let allowed: Option<Vec<bool>> = filter.expr.as_ref().map(|e| {
            p.values
                .chunks_exact(p.stride)
                .zip(&p.site)
                .map(|(ids, &s)| {
                    e.test(&|d| match (ids.get(d), p.dim_values.get(d)) {
                        (Some(&id), Some(names)) => names.name(id),
                        _ if d == site_pos => self.sites.name(s),
                        _ => "",
                    })
                })
                .collect()
        });
        // Rows by value id (and the second dimension's value id, or 0).
        let mut views: HashMap<(u32, u32), Counts> = HashMap::new();
        let mut unions: HashMap<(u32, u32), VisitorUnion<'_>> = HashMap::new();
        // The row of profile `id`, when it passes the filter.
        let row_of = |id: u32| -> Option<(u32, u32)> {
            if !p.passes(id, site_id, &is)
                || allowed
                    .as_ref()
                    .is_some_and(|a| a.get(id as usize) != Some(&true))
            {
                return None;
            }
            let vals = p.values_of(id)?;
            let value = |d: Option<(usize, &Names)>| match d {
                Some((d, _)) => vals.get(d).copied(),
                None => Some(0),
            };
            Some((value(first)?, value(second)?))
        };
        for part in self.parts(from, to) {
            if visits {
                let visits: Box<dyn Iterator<Item = (u32, VisitCounts)>> = match part {
                    PartRef::Mem(b) => Box::new(b.profile_visits.iter().map(|(&id, c)| (id, *c))),
                    PartRef::File(f) => Box::new(f.profile_visits()),
                    PartRef::UrlTail(_) => Box::new(std::iter::empty()),
                };
                for (id, c) in visits {
                    if let Some(v) = row_of(id) {
                        views.entry(v).or_default().visits.add(&c);
                    }
                }
            }
            let cells: Box<dyn Iterator<Item = (u32, Cow<'_, super::UrlCell>)>> = match part {
                PartRef::Mem(b) => {
                    Box::new(b.profiles.iter().map(|(&id, c)| (id, Cow::Borrowed(c))))
                }
                PartRef::File(f) => Box::new(f.profiles().map(|(id, c)| (id, Cow::Owned(c)))),
                PartRef::UrlTail(_) => Box::new(std::iter::empty()),
            };
            for (id, c) in cells {
                let Some(v) = row_of(id) else {
                    continue;
                };
                let n = views.entry(v).or_default();
                n.views += u64::from(c.views);
                // A custom event's profile counts its events as hits.
                n.events += u64::from(c.hits);
                unions.entry(v).or_default().add(visitors_of(c));
            }
        }
        views
            .into_iter()
            .filter(|(v, n)| {
                n.views > 0 || n.events > 0 || !n.visits.is_zero() || unions.contains_key(v)
            })
            .map(|(v, n)| {
                let (visitors, sketched) = unions.get(&v).map_or((0, false), |u| u.count());
                let mut key = first.map_or("", |(_, names)| names.name(v.0)).to_string();
                if let Some((_, names)) = second {
                    key.push(SEP);
                    key.push_str(names.name(v.1));
                }
                DimRow {
                    key,
                    views: n.views,
                    events: n.events,
                    visitors,
                    sketched,
                    visits: n.visits,
                }
            })
            .collect()
    }
}
