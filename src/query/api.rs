//! `POST /v1/query` (and `GET /v1/query?q=<JSON>`): one query shape for every question the
//! aggregates can answer, after Plausible's Stats API v2 — metrics, a date range, up to two
//! pageview dimensions plus time, filters (`is`, `is_not`, `contains`, `matches`, combined
//! with `and`, `or`, `not`), ordering, paging and a comparison with the previous period or
//! the year before.
//!
//! A query is validated here into a [`Plan`] naming which cells answer it, then run with the
//! same shard operations as the `GET` endpoints ([`Op`]): pageview dimensions and their
//! filters by the *profile* cells (`agg::dims`: pageviews, distinct visitors, and visits by
//! the dimensions of their entry pageview), totals and
//! visits by the site totals, urls, referrers, sites and entry/exit pages by their own cells.
//! What no precomputed cell answers exactly (a visit metric by url, a url filter beside a
//! device breakdown) is refused with a 400 that says so; pixeld never answers it
//! approximately. The answer states its range, whether a sketch counted visitors, and which
//! cells it was computed from.

use std::cmp::Ordering;

use serde_json::{json, Map, Value};

use super::params::{
    bad, minute_rfc3339, parse_time, range_of, step_of, step_range, BadParam, Range, MAX_LIMIT,
    STEPS,
};
use super::{Hub, Op, Part, QueryError};
use crate::agg::cells::VisitCounts;
use crate::agg::dims::{DimFilter, DimRow, Filter};
use crate::agg::{AggConfig, Dim, Totals, UrlStats};
use crate::parse::event::dims::SEP;

/// The longest `matches` pattern.
pub const MAX_PATTERN: usize = 256;
/// The compiled size a pattern may take (regex's `size_limit`): bounded memory and time.
const REGEX_SIZE: usize = 1 << 20;
/// Values, operands and sub-expressions a filter may hold in all.
const MAX_FILTER_TERMS: usize = 1000;
/// The largest `offset`.
pub const MAX_OFFSET: usize = 100_000;
/// Urls whose other metrics (visitors, engaged time, entries, exits) one answer may fetch.
const MAX_URL_STATS: usize = 10_000;
/// Minutes in 365 days, the shift of `year_over_year`.
const YEAR: i64 = 365 * 1440;

/// A metric of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Views,
    Visitors,
    Hits,
    EngagedSeconds,
    Visits,
    Bounces,
    BounceRate,
    VisitDuration,
    ViewsPerVisit,
    Entries,
    Exits,
    AvgEngagedSeconds,
    /// Pageviews and custom events.
    Events,
    /// The share (0–1) of visitors who sent the events a query names (its `event` filter or
    /// dimension) among the visitors of its other filters.
    ConversionRate,
}

const METRICS: [(&str, Metric); 14] = [
    ("views", Metric::Views),
    ("visitors", Metric::Visitors),
    ("hits", Metric::Hits),
    ("engaged_seconds", Metric::EngagedSeconds),
    ("visits", Metric::Visits),
    ("bounces", Metric::Bounces),
    ("bounce_rate", Metric::BounceRate),
    ("visit_duration", Metric::VisitDuration),
    ("views_per_visit", Metric::ViewsPerVisit),
    ("entries", Metric::Entries),
    ("exits", Metric::Exits),
    ("avg_engaged_seconds", Metric::AvgEngagedSeconds),
    ("events", Metric::Events),
    ("conversion_rate", Metric::ConversionRate),
];

impl Metric {
    fn name(self) -> &'static str {
        METRICS
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("?", |(n, _)| n)
    }

    /// A ratio, whose change is a difference, not a percentage.
    fn is_rate(self) -> bool {
        matches!(self, Metric::BounceRate | Metric::ConversionRate)
    }

    /// A ratio or mean: a row with nothing counted has none (`null`), and it is written as
    /// a fraction, not a whole number.
    fn is_ratio(self) -> bool {
        matches!(
            self,
            Metric::BounceRate
                | Metric::VisitDuration
                | Metric::ViewsPerVisit
                | Metric::AvgEngagedSeconds
                | Metric::ConversionRate
        )
    }
}

/// A dimension of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QDim {
    /// A pageview dimension (position in `DIMS`).
    Profile(usize),
    /// Time in steps of this many minutes.
    Time(i64),
    /// url, ref_domain, site, entry_page or exit_page.
    Page(Dim),
}

/// The step in minutes of the time dimension among `dims`, if any.
fn time_step(dims: &[QDim]) -> Option<i64> {
    dims.iter().find_map(|d| match d {
        QDim::Time(s) => Some(*s),
        _ => None,
    })
}

/// The pageview dimensions among `dims`, in order.
fn profile_dims(dims: &[QDim]) -> Vec<usize> {
    dims.iter()
        .filter_map(|d| match d {
            QDim::Profile(i) => Some(*i),
            _ => None,
        })
        .collect()
}

/// Which cells answer a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Pageview dimensions and their filters: `views`, `visitors`.
    Profiles,
    /// Site totals (or one site's), in all or per time step: every total and visit metric.
    Totals,
    /// One page-like dimension, filtered on itself.
    Pages(Dim),
    /// Urls by the channel of their pageviews (and filtered on url and channel): `views`.
    UrlChannels,
    /// Urls by the referrer domain of their pageviews, or referrers by url (and filtered on
    /// url and ref_domain): `views`.
    UrlRefs,
    /// Read from the raw log (`query::scan`): any dimensions and filters.
    Scan,
}

/// A comparison period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    PreviousPeriod,
    YearOverYear,
}

/// A validated query.
#[derive(Debug, Clone)]
pub struct Plan {
    pub metrics: Vec<Metric>,
    pub dims: Vec<QDim>,
    /// The dimensions' names, as answered.
    pub dim_names: Vec<String>,
    pub family: Family,
    pub range: Range,
    pub site: Option<String>,
    /// The profile filter (family [`Family::Profiles`]).
    pub filter: DimFilter,
    /// The filter on a page dimension's keys (family [`Family::Pages`]), or on url (position
    /// 0) and channel (1) (family [`Family::UrlChannels`]) or ref_domain (1) (family
    /// [`Family::UrlRefs`]).
    pub key_filter: Option<Filter>,
    /// (column, descending): a column is a metric's or a dimension's position.
    pub order: Vec<(Column, bool)>,
    pub limit: usize,
    pub offset: usize,
    pub compare: Option<(Compare, Range)>,
    /// With `conversion_rate`: the filter of the visitors a conversion rate is a share of
    /// (the plan's without its `event` conditions, custom events counted).
    pub conversion_base: Option<DimFilter>,
}

/// What a row is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Metric(usize),
    Dim(usize),
}

/// The fields a query may have.
const FIELDS: [&str; 10] = [
    "site",
    "site_id",
    "metrics",
    "date_range",
    "dimensions",
    "filters",
    "order_by",
    "limit",
    "offset",
    "include",
];

/// Validates a query (the JSON body of `POST /v1/query`) at `now_ms`.
pub fn parse(body: &[u8], now_ms: i64, cfg: &AggConfig) -> Result<Plan, BadParam> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad("body", format!("not JSON: {e}")))?;
    let Value::Object(q) = v else {
        return Err(bad("body", "must be a JSON object"));
    };
    if let Some(k) = q.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(bad(
            k,
            format!("unknown field; a query has {}", FIELDS.join(", ")),
        ));
    }
    let site = match q.get("site").or_else(|| q.get("site_id")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.to_ascii_lowercase()),
        Some(_) => return Err(bad("site", "a non-empty string (a site's host)")),
    };
    let metrics = metrics(q.get("metrics"))?;
    let dims = dimensions(q.get("dimensions"), cfg)?;
    let dim_names: Vec<String> = dims.iter().map(|d| dim_name(*d, cfg)).collect();
    let include = match q.get("include") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(bad("include", "an object")),
    };
    for k in include.keys() {
        if !["comparisons", "total_rows", "bots", "scan"].contains(&k.as_str()) {
            return Err(bad(
                "include",
                format!("`{k}`: include takes comparisons, total_rows, bots and scan"),
            ));
        }
    }
    let scan = match include.get("scan") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("include", "`scan` is true or false")),
    };
    let bots = match include.get("bots") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("include", "`bots` is true or false")),
    };
    if !matches!(
        include.get("total_rows"),
        None | Some(Value::Null | Value::Bool(_))
    ) {
        return Err(bad("include", "`total_rows` is true or false"));
    }
    let compare = match include.get("comparisons") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "previous_period" => Some(Compare::PreviousPeriod),
        Some(Value::String(s)) if s == "year_over_year" => Some(Compare::YearOverYear),
        Some(_) => {
            return Err(bad(
                "include",
                "`comparisons` is \"previous_period\" or \"year_over_year\"",
            ))
        }
    };
    let filter_expr = match q.get("filters") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) if list.is_empty() => None,
        Some(Value::Array(list)) => {
            let mut terms = 0;
            let mut all = list
                .iter()
                .map(|f| filter(f, &mut terms, cfg))
                .collect::<Result<Vec<_>, _>>()?;
            Some(if all.len() == 1 {
                all.remove(0)
            } else {
                QFilter::And(all)
            })
        }
        Some(_) => return Err(bad("filters", "a list of filters")),
    };

    // Which cells answer it.
    let profile_dims = profile_dims(&dims);
    let times = dims.iter().filter(|d| matches!(d, QDim::Time(_))).count();
    let pages: Vec<Dim> = dims
        .iter()
        .filter_map(|d| match d {
            QDim::Page(p) => Some(*p),
            _ => None,
        })
        .collect();
    if times > 1 {
        return Err(bad("dimensions", "at most one time dimension"));
    }
    if scan
        && pages
            .iter()
            .any(|p| matches!(p, Dim::EntryPage | Dim::ExitPage))
    {
        return Err(bad(
            "dimensions",
            "entry and exit pages are a visit's, kept only in their cells: not from a scan",
        ));
    }
    if scan && dims.len() > 4 {
        return Err(bad(
            "dimensions",
            "a scan groups by at most four dimensions",
        ));
    }
    if !scan && profile_dims.len() > 2 {
        return Err(bad(
            "dimensions",
            "at most two pageview dimensions (plus time): a breakdown by three is not precomputed; add \"include\": {\"scan\": true} to read it from the raw log",
        ));
    }
    let not_covered = |what: &str| {
        bad(
            "dimensions",
            format!("{what} is not covered by precomputed cells; add \"include\": {{\"scan\": true}} to read it from the raw log"),
        )
    };
    // Urls by channel (or filtered by it): the url × channel cells.
    let url_channel_filter = filter_expr.as_ref().map(QFilter::on_url_channel);
    let url_channels = !scan
        && !bots
        && times == 0
        && pages == [Dim::Url]
        && profile_dims
            .iter()
            .all(|&d| d == crate::parse::event::dims::CHANNEL)
        && match &url_channel_filter {
            None => !profile_dims.is_empty(),
            Some(None) => false,
            Some(Some(f)) => !profile_dims.is_empty() || f.mentions(1),
        };
    // Urls by referrer domain, referrers of urls (or either filtered by the other): the url ×
    // referrer cells.
    let url_ref_filter = filter_expr.as_ref().map(QFilter::on_url_ref);
    let url_refs = !scan
        && !bots
        && times == 0
        && profile_dims.is_empty()
        && match (pages.as_slice(), &url_ref_filter) {
            (_, Some(None)) => false,
            ([Dim::Url, Dim::RefDomain] | [Dim::RefDomain, Dim::Url], _) => true,
            ([Dim::Url], Some(Some(f))) => f.mentions(1),
            ([Dim::RefDomain], Some(Some(f))) => f.mentions(0),
            _ => false,
        };
    let family = if scan {
        Family::Scan
    } else if url_channels {
        Family::UrlChannels
    } else if url_refs {
        Family::UrlRefs
    } else if let Some(&page) = pages.first() {
        if dims.len() > 1 {
            return Err(not_covered(&format!(
                "`{}` beside another dimension",
                page.as_str()
            )));
        }
        Family::Pages(page)
    } else if !profile_dims.is_empty()
        || filter_expr.as_ref().is_some_and(|f| !f.names_pages())
        || bots
        || metrics.contains(&Metric::Events)
        || metrics.contains(&Metric::ConversionRate)
    {
        Family::Profiles
    } else {
        Family::Totals
    };
    // Asking for events counts the custom events (as naming the `event` dimension does).
    let events = metrics.contains(&Metric::Events);
    if !cfg.url_channels && family == Family::UrlChannels {
        return Err(bad(
            "dimensions",
            "urls by channel are not counted (agg.url_channels = false); add \"include\": {\"scan\": true} to read them from the raw log",
        ));
    }
    if !cfg.url_referrers && family == Family::UrlRefs {
        return Err(bad(
            "dimensions",
            "urls by referrer are not counted (agg.url_referrers = false); add \"include\": {\"scan\": true} to read them from the raw log",
        ));
    }
    let (filter, key_filter) = match (family, filter_expr) {
        (Family::UrlChannels, _) => (DimFilter::default(), url_channel_filter.flatten()),
        (Family::UrlRefs, _) => (DimFilter::default(), url_ref_filter.flatten()),
        (Family::Scan, f) => {
            let expr = match f {
                None => None,
                Some(f) => Some(f.on_scan(cfg).ok_or_else(|| {
                    bad(
                        "filters",
                        "a scan filters on pageview dimensions, url, ref_domain and site (entry and exit pages are a visit's, kept only in cells)",
                    )
                })?),
            };
            (
                DimFilter {
                    bots,
                    events,
                    expr,
                    ..DimFilter::default()
                },
                None,
            )
        }
        (_, None) => (
            DimFilter {
                bots,
                events,
                ..DimFilter::default()
            },
            None,
        ),
        (Family::Pages(page), Some(f)) => {
            let f = f.on_page(page).ok_or_else(|| {
                bad(
                    "filters",
                    format!(
                        "with the `{}` dimension a filter may name only `{}`{}: any other is not covered by precomputed cells (add \"include\": {{\"scan\": true}} to read it from the raw log)",
                        page.as_str(),
                        page.as_str(),
                        match page {
                            Dim::Url => " and `channel` (the url × channel cells) or `ref_domain` (the url × referrer cells)",
                            Dim::RefDomain => " and `url` (the url × referrer cells)",
                            _ => "",
                        }
                    ),
                )
            })?;
            (DimFilter::default(), Some(f))
        }
        (_, Some(f)) => {
            let f = f.on_profiles(cfg).ok_or_else(|| {
                bad(
                    "filters",
                    format!(
                        "a filter on url, ref_domain, site, entry_page or exit_page beside pageview dimensions is not covered by precomputed cells (add \"include\": {{\"scan\": true}} to read it from the raw log); filter on {} or query that dimension alone",
                        cfg.dim_list()
                    ),
                )
            })?;
            (
                DimFilter {
                    bots,
                    events,
                    expr: Some(f),
                    ..DimFilter::default()
                },
                None,
            )
        }
    };
    for m in &metrics {
        let ok = match family {
            Family::Scan => matches!(
                m,
                Metric::Views
                    | Metric::Visitors
                    | Metric::Hits
                    | Metric::EngagedSeconds
                    | Metric::Events
            ),
            Family::Profiles => !matches!(
                m,
                Metric::Hits
                    | Metric::EngagedSeconds
                    | Metric::Entries
                    | Metric::Exits
                    | Metric::AvgEngagedSeconds
            ),
            Family::UrlChannels | Family::UrlRefs => *m == Metric::Views,
            Family::Totals => !matches!(
                m,
                Metric::Entries
                    | Metric::Exits
                    | Metric::AvgEngagedSeconds
                    | Metric::Events
                    | Metric::ConversionRate
            ),
            Family::Pages(Dim::Url) => matches!(
                m,
                Metric::Views
                    | Metric::Visitors
                    | Metric::Hits
                    | Metric::EngagedSeconds
                    | Metric::Entries
                    | Metric::Exits
                    | Metric::AvgEngagedSeconds
            ),
            Family::Pages(Dim::EntryPage) => *m == Metric::Entries,
            Family::Pages(Dim::ExitPage) => *m == Metric::Exits,
            Family::Pages(_) => *m == Metric::Views,
        };
        if !ok {
            let cells = match family {
                Family::Scan => "a scan of the log counts views, visitors, hits, engaged_seconds and events (visits need their cells)",
                Family::Profiles => "by pageview dimension (or filtered by one) the cells hold views, events, visitors, conversion_rate and the visit metrics (visits, bounces, bounce_rate, visit_duration, views_per_visit; a visit by its entry pageview's dimensions)",
                Family::UrlChannels => "the url × channel cells hold views only",
                Family::UrlRefs => "the url × referrer cells hold views only",
                Family::Totals => "entries, exits and avg_engaged_seconds are a url's: add the url dimension",
                Family::Pages(Dim::Url) => "a url has views, visitors, hits, engaged_seconds, entries, exits and avg_engaged_seconds",
                Family::Pages(Dim::EntryPage) => "entry pages have entries",
                Family::Pages(Dim::ExitPage) => "exit pages have exits",
                Family::Pages(_) => "referrers and sites have views",
            };
            return Err(bad(
                "metrics",
                format!(
                    "`{}` is not covered by precomputed cells for this query ({cells}); a scan of the raw log (\"include\": {{\"scan\": true}}) counts views, visitors, hits and events by anything, engaged_seconds by url, ref_domain, site and time",
                    m.name()
                ),
            ));
        }
        if !cfg.url_visitors
            && family == Family::Pages(Dim::Url)
            && matches!(m, Metric::Visitors | Metric::AvgEngagedSeconds)
        {
            return Err(bad(
                "metrics",
                format!(
                    "`{}`: per-url visitors are not counted (agg.url_visitors = false)",
                    m.name()
                ),
            ));
        }
    }

    // The range, whole steps of the time dimension, and the comparison's.
    let step = time_step(&dims);
    let (from, to) = date_range(q.get("date_range"), now_ms)?;
    let as_range = |from: &str, to: &str| -> Result<Range, BadParam> {
        let r = range_of(from, to, now_ms, cfg).map_err(|e| rename(e, "date_range"))?;
        match step {
            Some(s) => step_range(r, s, now_ms, cfg).map_err(|e| rename(e, "dimensions")),
            None => Ok(r),
        }
    };
    let range = as_range(&from, &to)?;
    let compare = match compare {
        None => None,
        Some(c) => {
            let (f, t) = match c {
                Compare::PreviousPeriod => (2 * range.from - range.to, range.from),
                Compare::YearOverYear => (range.from - YEAR, range.to - YEAR),
            };
            let epoch = |m: i64| (m * 60).to_string();
            let r = as_range(&epoch(f), &epoch(t)).map_err(|e| {
                bad(
                    "include",
                    format!(
                        "the comparison period {} – {}: {}",
                        minute_rfc3339(f),
                        minute_rfc3339(t),
                        e.reason
                    ),
                )
            })?;
            Some((c, r))
        }
    };

    let order = order_by(q.get("order_by"), &metrics, &dim_names, &dims)?;
    let number = |name: &str, default: usize, min: usize, max: usize| -> Result<usize, BadParam> {
        match q.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| bad(name, format!("`{v}`: a whole number in {min}..={max}"))),
        }
    };
    // Engaged time comes from heartbeats, and a heartbeat's line says only some of the
    // pageview dimensions (its reader's device, browser, OS, bot, country, region:
    // `dims::LINE`), not its page's channel, source, utm tags, event or custom values (the
    // cells keep engaged time per url and site alone): by one of those a scan would put it
    // all under `(none)`, so that a filter on one would answer a silent 0.
    let profile_dims = super::scan::ScanSpec::url_pos(cfg);
    let line_dim = |d: usize| crate::parse::event::dims::LINE.contains(&d);
    if family == Family::Scan
        && metrics.contains(&Metric::EngagedSeconds)
        && (dims
            .iter()
            .any(|d| matches!(d, QDim::Profile(p) if !line_dim(*p)))
            || (0..profile_dims).any(|d| !line_dim(d) && filter.mentions(d)))
    {
        return Err(bad(
            "metrics",
            "`engaged_seconds` comes from heartbeats, and a heartbeat's line says its reader's device, browser, os, bot, country and region but not its page's channel, source, utm tags, event or custom dimensions: a scan answers it by those six, url, ref_domain, site and time; drop the other dimensions and filters, or ask for views, visitors or hits",
        ));
    }
    let conversion_base = if metrics.contains(&Metric::ConversionRate) {
        let event = crate::parse::event::dims::EVENT;
        if !dims.contains(&QDim::Profile(event)) && !filter.mentions(event) {
            return Err(bad(
                "metrics",
                "`conversion_rate` is the share of visitors who sent an event: name the event with a filter ([\"is\", \"event\", [\"signup\"]]) or the `event` dimension",
            ));
        }
        Some(filter.conversion_base(event).ok_or_else(|| {
            bad(
                "filters",
                "with `conversion_rate` a condition on `event` stands alone at the top level of the filters (e.g. [\"is\", \"event\", [\"signup\"]], not inside an or/not beside another dimension): the other filters choose the visitors it is a share of",
            )
        })?)
    } else {
        None
    };
    Ok(Plan {
        conversion_base,
        limit: number("limit", 100, 1, MAX_LIMIT)?,
        offset: number("offset", 0, 0, MAX_OFFSET)?,
        metrics,
        dims,
        dim_names,
        family,
        range,
        site,
        filter,
        key_filter,
        order,
        compare,
    })
}

fn rename(mut e: BadParam, param: &str) -> BadParam {
    e.reason = format!("{} ({})", e.reason, e.param);
    e.param = param.to_string();
    e
}

fn strings<'a>(v: Option<&'a Value>, field: &str) -> Result<Vec<&'a str>, BadParam> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .ok_or_else(|| bad(field, format!("`{x}` is not a string")))
            })
            .collect(),
        Some(_) => Err(bad(field, "a list of strings")),
    }
}

fn metrics(v: Option<&Value>) -> Result<Vec<Metric>, BadParam> {
    let names = strings(v, "metrics")?;
    if names.is_empty() {
        return Err(bad(
            "metrics",
            "at least one metric, e.g. [\"views\", \"visitors\"]",
        ));
    }
    let mut out = Vec::new();
    for n in names {
        let m = METRICS
            .iter()
            .find(|(name, _)| *name == n)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                bad(
                    "metrics",
                    format!("`{n}`: one of {}", METRICS.map(|(name, _)| name).join(", ")),
                )
            })?;
        if out.contains(&m) {
            return Err(bad("metrics", format!("`{n}` given twice")));
        }
        out.push(m);
    }
    Ok(out)
}

/// A dimension's name as a query writes it.
fn dim_name(d: QDim, cfg: &AggConfig) -> String {
    match d {
        QDim::Profile(i) => cfg.dim_name(i).to_string(),
        QDim::Time(1) => "time:minute".into(),
        QDim::Time(60) => "time:hour".into(),
        QDim::Time(1440) => "time:day".into(),
        QDim::Time(s) => format!("time:{}", super::params::step_name(s)),
        QDim::Page(p) => p.as_str().to_string(),
    }
}

fn page_dim(name: &str) -> Option<Dim> {
    Some(match name {
        "url" => Dim::Url,
        "ref_domain" => Dim::RefDomain,
        "site" => Dim::Site,
        "entry_page" => Dim::EntryPage,
        "exit_page" => Dim::ExitPage,
        _ => return None,
    })
}

fn dimensions(v: Option<&Value>, cfg: &AggConfig) -> Result<Vec<QDim>, BadParam> {
    let mut out = Vec::new();
    for n in strings(v, "dimensions")? {
        let d = if let Some(i) = cfg.dim_index(n) {
            QDim::Profile(i)
        } else if let Some(p) = page_dim(n) {
            QDim::Page(p)
        } else if let Some(t) = n.strip_prefix("time:") {
            QDim::Time(match t {
                "minute" => 1,
                "hour" => 60,
                "day" => 1440,
                other => step_of(other).ok_or_else(|| {
                    bad(
                        "dimensions",
                        format!(
                            "`{n}`: time:minute, time:hour, time:day or time:{}",
                            STEPS.map(|(s, _)| s).join("|time:")
                        ),
                    )
                })?,
            })
        } else {
            return Err(bad(
                "dimensions",
                format!(
                    "`{n}`: one of {}, url, ref_domain, site, entry_page, exit_page, time:minute, time:hour, time:day (or time:5m and the other steps of /v1/timeseries)",
                    cfg.dim_list()
                ),
            ));
        };
        if out.contains(&d) {
            return Err(bad("dimensions", format!("`{n}` given twice")));
        }
        out.push(d);
    }
    Ok(out)
}

/// `date_range`: a name (`day`, `today`, `realtime`, `<n>m|h|d`) or `[from, to]`.
fn date_range(v: Option<&Value>, now_ms: i64) -> Result<(String, String), BadParam> {
    let err = || {
        bad(
            "date_range",
            "\"day\", \"7d\", \"30d\", \"<n>m|h|d\" (the last n minutes, hours or days) or [from, to] (RFC 3339, epoch seconds or relative: \"-2h\", \"now\")",
        )
    };
    match v {
        None | Some(Value::Null) => Ok(("-24h".into(), "now".into())),
        Some(Value::String(s)) => {
            let s = s.trim();
            match s {
                "day" | "today" => {
                    let midnight = now_ms.div_euclid(86_400_000) * 86_400;
                    Ok((midnight.to_string(), "now".into()))
                }
                "realtime" => Ok(("-5m".into(), "now".into())),
                _ => {
                    let rel = format!("-{s}");
                    parse_time("date_range", &rel, now_ms).map_err(|_| err())?;
                    Ok((rel, "now".into()))
                }
            }
        }
        Some(Value::Array(a)) if a.len() == 2 => {
            let text = |x: &Value| match x {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
            match (text(&a[0]), text(&a[1])) {
                (Some(f), Some(t)) => Ok((f, t)),
                _ => Err(err()),
            }
        }
        Some(_) => Err(err()),
    }
}

fn order_by(
    v: Option<&Value>,
    metrics: &[Metric],
    names: &[String],
    dims: &[QDim],
) -> Result<Vec<(Column, bool)>, BadParam> {
    let time = dims.iter().position(|d| matches!(d, QDim::Time(_)));
    let mut out = Vec::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for item in list {
                let pair = item.as_array().filter(|p| p.len() == 2);
                let (Some(name), Some(dir)) = (
                    pair.and_then(|p| p[0].as_str()),
                    pair.and_then(|p| p[1].as_str()),
                ) else {
                    return Err(bad(
                        "order_by",
                        format!("`{item}`: write [name, \"asc\" or \"desc\"]"),
                    ));
                };
                let desc = match dir {
                    "desc" => true,
                    "asc" => false,
                    other => {
                        return Err(bad("order_by", format!("`{other}`: \"asc\" or \"desc\"")))
                    }
                };
                let col = if let Some(i) = metrics.iter().position(|m| m.name() == name) {
                    Column::Metric(i)
                } else if let Some(i) = names.iter().position(|d| d == name) {
                    Column::Dim(i)
                } else {
                    return Err(bad(
                        "order_by",
                        format!("`{name}` is neither a metric nor a dimension of this query"),
                    ));
                };
                out.push((col, desc));
            }
        }
        Some(_) => return Err(bad("order_by", "a list of [name, \"asc\"|\"desc\"]")),
    }
    // Then the defaults: time ascending, the first metric descending, the dimensions'
    // values ascending — so that the same data always lists the same way.
    if let Some(t) = time {
        out.push((Column::Dim(t), false));
    }
    out.push((Column::Metric(0), true));
    out.extend((0..dims.len()).map(|i| (Column::Dim(i), false)));
    Ok(out)
}

/// A filter as written, before it is known which cells answer it.
#[derive(Debug, Clone)]
enum QFilter {
    /// Operator, dimension name, operands.
    Leaf(&'static str, String, Vec<String>),
    And(Vec<QFilter>),
    Or(Vec<QFilter>),
    Not(Box<QFilter>),
}

fn filter(v: &Value, terms: &mut usize, cfg: &AggConfig) -> Result<QFilter, BadParam> {
    *terms += 1;
    if *terms > MAX_FILTER_TERMS {
        return Err(bad(
            "filters",
            format!("more than {MAX_FILTER_TERMS} terms"),
        ));
    }
    let Some(a) = v.as_array() else {
        return Err(bad(
            "filters",
            format!("`{v}`: a filter is [\"is\", dimension, [values]] or [\"and\"|\"or\", [filters]] or [\"not\", filter]"),
        ));
    };
    match (a.first().and_then(Value::as_str), a.len()) {
        (Some(op @ ("and" | "or")), 2) => {
            let subs = a[1]
                .as_array()
                .ok_or_else(|| bad("filters", format!("`{op}` takes a list of filters")))?
                .iter()
                .map(|f| filter(f, terms, cfg))
                .collect::<Result<Vec<_>, _>>()?;
            if subs.is_empty() {
                return Err(bad("filters", format!("`{op}` of no filter")));
            }
            Ok(if op == "and" {
                QFilter::And(subs)
            } else {
                QFilter::Or(subs)
            })
        }
        (Some("not"), 2) => Ok(QFilter::Not(Box::new(filter(&a[1], terms, cfg)?))),
        (Some(op), 3) => {
            let op: &'static str = match op {
                "is" => "is",
                "is_not" => "is_not",
                "contains" => "contains",
                "matches" => "matches",
                other => {
                    return Err(bad(
                        "filters",
                        format!("`{other}`: is, is_not, contains, matches, and, or, not"),
                    ))
                }
            };
            let dim = a[1]
                .as_str()
                .ok_or_else(|| bad("filters", format!("`{}` is not a dimension name", a[1])))?;
            if cfg.dim_index(dim).is_none() && page_dim(dim).is_none() {
                return Err(bad(
                    "filters",
                    format!(
                        "`{dim}`: filter on one of {}, url, ref_domain, site, entry_page, exit_page",
                        cfg.dim_list()
                    ),
                ));
            }
            let values: Vec<String> = strings(Some(&a[2]), "filters")?
                .into_iter()
                .map(str::to_string)
                .collect();
            if values.is_empty() {
                return Err(bad("filters", format!("`{op}` on `{dim}` with no value")));
            }
            *terms += values.len();
            if op == "matches" {
                regexes(&values)?;
            }
            Ok(QFilter::Leaf(op, dim.to_string(), values))
        }
        _ => Err(bad(
            "filters",
            format!("`{v}`: a filter is [\"is\"|\"is_not\"|\"contains\"|\"matches\", dimension, [values]], [\"and\"|\"or\", [filters]] or [\"not\", filter]"),
        )),
    }
}

/// `matches` operands compiled, each bounded.
fn regexes(patterns: &[String]) -> Result<Vec<regex::Regex>, BadParam> {
    patterns
        .iter()
        .map(|p| {
            if p.len() > MAX_PATTERN {
                return Err(bad(
                    "filters",
                    format!("a pattern of {} bytes: at most {MAX_PATTERN}", p.len()),
                ));
            }
            regex::RegexBuilder::new(p)
                .size_limit(REGEX_SIZE)
                .dfa_size_limit(REGEX_SIZE)
                .build()
                .map_err(|e| {
                    bad(
                        "filters",
                        format!("`{p}` is not a usable regular expression: {e}"),
                    )
                })
        })
        .collect()
}

impl QFilter {
    /// Whether a leaf names a page dimension other than the site (which profiles know).
    fn names_pages(&self) -> bool {
        match self {
            QFilter::Leaf(_, d, _) => d != "site" && page_dim(d).is_some(),
            QFilter::And(fs) | QFilter::Or(fs) => fs.iter().any(QFilter::names_pages),
            QFilter::Not(f) => f.names_pages(),
        }
    }

    /// As a filter over pageview dimensions; None when a leaf names something else.
    fn on_profiles(&self, cfg: &AggConfig) -> Option<Filter> {
        let site = super::scan::ScanSpec::url_pos(cfg) + 2;
        self.lower(&|d| cfg.dim_index(d).or((d == "site").then_some(site)))
    }

    /// As a filter over the keys of `page` (position 0); None when a leaf names another.
    /// As a filter of a scan (`query::scan::ScanSpec`): pageview dimensions by position, then
    /// url, ref_domain and site.
    fn on_scan(&self, cfg: &AggConfig) -> Option<Filter> {
        let url = super::scan::ScanSpec::url_pos(cfg);
        self.lower(&|d| {
            cfg.dim_index(d).or(match d {
                "url" => Some(url),
                "ref_domain" => Some(url + 1),
                "site" => Some(url + 2),
                _ => None,
            })
        })
    }

    /// As a filter over url (position 0) and channel (1); None when a leaf names another.
    fn on_url_channel(&self) -> Option<Filter> {
        self.lower(&|d| match d {
            "url" => Some(0),
            "channel" => Some(1),
            _ => None,
        })
    }

    /// As a filter over url (position 0) and ref_domain (1); None when a leaf names another.
    fn on_url_ref(&self) -> Option<Filter> {
        self.lower(&|d| match d {
            "url" => Some(0),
            "ref_domain" => Some(1),
            _ => None,
        })
    }

    fn on_page(&self, page: Dim) -> Option<Filter> {
        self.lower(&|d| (d == page.as_str()).then_some(0))
    }

    fn lower(&self, pos: &impl Fn(&str) -> Option<usize>) -> Option<Filter> {
        Some(match self {
            QFilter::Leaf(op, d, vs) => {
                let i = pos(d)?;
                match *op {
                    "is" => Filter::Is(i, vs.clone()),
                    "is_not" => Filter::IsNot(i, vs.clone()),
                    "contains" => Filter::Contains(i, vs.clone()),
                    // Compiled once already, so this cannot fail.
                    _ => Filter::Matches(i, regexes(vs).ok()?),
                }
            }
            QFilter::And(fs) => {
                Filter::And(fs.iter().map(|f| f.lower(pos)).collect::<Option<_>>()?)
            }
            QFilter::Or(fs) => Filter::Or(fs.iter().map(|f| f.lower(pos)).collect::<Option<_>>()?),
            QFilter::Not(f) => Filter::Not(Box::new(f.lower(pos)?)),
        })
    }
}

/// One row of an answer: its dimension values (as asked) and metric values.
#[derive(Debug, Clone)]
pub struct Row {
    dims: Vec<String>,
    metrics: Vec<Option<f64>>,
}

/// The rows of a plan over one range, whether a sketch counted visitors, and what a scan of
/// the log read for them.
pub struct Rows {
    rows: Vec<Row>,
    sketched: bool,
    scan: Option<Value>,
}

/// A visit metric of visit counts `v` (None: not one, or a ratio without visits).
fn visit_metric(m: Metric, v: &VisitCounts) -> Option<f64> {
    let per_visit = |x: i64, scale: f64| (v.visits > 0).then(|| x as f64 / v.visits as f64 / scale);
    match m {
        Metric::Visits => Some(v.visits as f64),
        Metric::Bounces => Some(v.bounces as f64),
        Metric::BounceRate => per_visit(v.bounces, 1.0),
        Metric::VisitDuration => per_visit(v.duration_ms, 1000.0),
        Metric::ViewsPerVisit => per_visit(v.views, 1.0),
        _ => None,
    }
}

fn totals_metric(m: Metric, t: &Totals) -> Option<f64> {
    match m {
        Metric::Views => Some(t.views as f64),
        Metric::Visitors => t.uniques.map(|u| u as f64),
        Metric::Hits => Some(t.hits as f64),
        Metric::EngagedSeconds => Some(t.engaged as f64),
        _ => visit_metric(m, &t.visits),
    }
}

/// A metric of one breakdown row of the profile cells.
fn profile_metric(m: Metric, r: &DimRow) -> Option<f64> {
    match m {
        Metric::Views => Some(r.views as f64),
        // A conversion rate's visitors, divided by its base's in `Hub::rows`.
        Metric::Visitors | Metric::ConversionRate => Some(r.visitors as f64),
        Metric::Events => Some((r.views + r.events) as f64),
        _ => visit_metric(m, &r.visits),
    }
}

fn url_metric(m: Metric, s: &UrlStats) -> Option<f64> {
    match m {
        Metric::Views => Some(s.views as f64),
        Metric::Visitors => s.visitors.map(|v| v as f64),
        Metric::Hits => Some(s.hits as f64),
        Metric::EngagedSeconds => Some(s.engaged as f64),
        Metric::Entries => Some(s.entries as f64),
        Metric::Exits => Some(s.exits as f64),
        Metric::AvgEngagedSeconds => s.avg_engaged(),
        _ => None,
    }
}

impl Hub {
    /// The rows of `plan` over `range` (before ordering and paging).
    async fn rows(&self, plan: &Plan, range: Range) -> Result<Rows, QueryError> {
        let step = time_step(&plan.dims);
        let buckets: Vec<Range> = match step {
            Some(s) => (0..(range.to - range.from) / s)
                .map(|i| Range {
                    from: range.from + i * s,
                    to: range.from + (i + 1) * s,
                })
                .collect(),
            None => vec![range],
        };
        let time_of = |b: &Range| minute_rfc3339(b.from);
        match plan.family {
            // Scans read the logs, which the HTTP layer holds (`scan_spec`, `scan_rows`).
            Family::Scan => Err(QueryError::BadParam(bad(
                "include",
                "a scan is answered by the HTTP layer",
            ))),
            Family::Profiles => {
                let profile_dims = profile_dims(&plan.dims);
                let visits = plan.metrics.iter().any(|m| {
                    !matches!(
                        m,
                        Metric::Views | Metric::Visitors | Metric::Events | Metric::ConversionRate
                    )
                });
                let ops = buckets
                    .iter()
                    .map(|b| Op::Breakdown {
                        dims: profile_dims.clone(),
                        range: *b,
                        site: plan.site.clone(),
                        filter: plan.filter.clone(),
                        visits,
                    })
                    .collect();
                let parts = self.run(ops).await?;
                let mut rows = Vec::new();
                let mut sketched = false;
                for (b, part) in buckets.iter().zip(parts) {
                    let Part::Breakdown(list) = part else {
                        continue;
                    };
                    // Without other dimensions every step is a row, zeros included.
                    if list.is_empty() && profile_dims.is_empty() {
                        let none = DimRow {
                            key: String::new(),
                            views: 0,
                            events: 0,
                            visitors: 0,
                            sketched: false,
                            visits: VisitCounts::default(),
                        };
                        rows.push(Row {
                            dims: plan.dims.iter().map(|_| time_of(b)).collect(),
                            metrics: plan
                                .metrics
                                .iter()
                                .map(|m| profile_metric(*m, &none))
                                .collect(),
                        });
                    }
                    for r in list {
                        sketched |= r.sketched;
                        let mut values = r.key.split(SEP);
                        let mut dims = Vec::with_capacity(plan.dims.len());
                        for d in &plan.dims {
                            dims.push(match d {
                                QDim::Time(_) => time_of(b),
                                _ => values.next().unwrap_or_default().to_string(),
                            });
                        }
                        let metrics: Vec<Option<f64>> = plan
                            .metrics
                            .iter()
                            .map(|m| profile_metric(*m, &r))
                            .collect();
                        rows.push(Row { dims, metrics });
                    }
                }
                if let Some(base) = &plan.conversion_base {
                    sketched |= self
                        .convert(plan, base, &buckets, &profile_dims, &mut rows)
                        .await?;
                }
                Ok(Rows {
                    rows,
                    sketched,
                    scan: None,
                })
            }
            Family::Totals => {
                let ops = vec![match step {
                    Some(step) => Op::Series {
                        range,
                        step,
                        site: plan.site.clone(),
                        url: None,
                    },
                    None => Op::Totals {
                        range,
                        site: plan.site.clone(),
                    },
                }];
                let parts = self.run(ops).await?;
                let points: Vec<Totals> = match parts.into_iter().next() {
                    Some(Part::Series(p)) => p,
                    Some(Part::Totals(t)) => vec![t],
                    _ => Vec::new(),
                };
                let rows = buckets
                    .iter()
                    .zip(points)
                    .map(|(b, t)| Row {
                        dims: plan.dims.iter().map(|_| time_of(b)).collect(),
                        metrics: plan.metrics.iter().map(|m| totals_metric(*m, &t)).collect(),
                    })
                    .collect();
                Ok(Rows {
                    rows,
                    sketched: false,
                    scan: None,
                })
            }
            Family::UrlChannels | Family::UrlRefs => {
                let parts = self
                    .run(vec![Op::Top {
                        dim: if plan.family == Family::UrlRefs {
                            Dim::UrlRef
                        } else {
                            Dim::UrlChannel
                        },
                        range,
                        site: plan.site.clone(),
                        limit: usize::MAX,
                    }])
                    .await?;
                let pairs = match parts.into_iter().next() {
                    Some(Part::Top(l)) => l,
                    _ => Vec::new(),
                };
                let mut sums: hashbrown::HashMap<Vec<String>, u64> = Default::default();
                for r in pairs {
                    // (A channel's name or a domain has no separator; a url might.)
                    let Some((url, other)) = r.key.rsplit_once(crate::parse::event::dims::SEP)
                    else {
                        continue;
                    };
                    let value = |i: usize| if i == 0 { url } else { other };
                    if plan.key_filter.as_ref().is_some_and(|f| !f.test(&value)) {
                        continue;
                    }
                    let dims: Vec<String> = plan
                        .dims
                        .iter()
                        .map(|d| match d {
                            QDim::Page(Dim::Url) => url.to_string(),
                            _ => other.to_string(),
                        })
                        .collect();
                    *sums.entry(dims).or_default() += r.views;
                }
                let rows = sums
                    .into_iter()
                    .map(|(dims, n)| Row {
                        dims,
                        metrics: plan.metrics.iter().map(|_| Some(n as f64)).collect(),
                    })
                    .collect();
                Ok(Rows {
                    rows,
                    sketched: false,
                    scan: None,
                })
            }
            Family::Pages(dim) => {
                let parts = self
                    .run(vec![Op::Top {
                        dim,
                        range,
                        site: plan.site.clone(),
                        limit: usize::MAX,
                    }])
                    .await?;
                let mut keys: Vec<(String, u64)> = match parts.into_iter().next() {
                    Some(Part::Top(l)) => l.into_iter().map(|r| (r.key, r.views)).collect(),
                    _ => Vec::new(),
                };
                if let Some(f) = &plan.key_filter {
                    keys.retain(|(k, _)| f.test(&|_| k.as_str()));
                }
                let base = |n: u64| Some(n as f64);
                let simple = plan.metrics.iter().all(|m| match dim {
                    Dim::Url => *m == Metric::Views,
                    _ => true,
                });
                if simple {
                    let rows = keys
                        .into_iter()
                        .map(|(k, n)| Row {
                            dims: vec![k],
                            metrics: plan.metrics.iter().map(|_| base(n)).collect(),
                        })
                        .collect();
                    return Ok(Rows {
                        rows,
                        sketched: false,
                        scan: None,
                    });
                }
                if keys.len() > MAX_URL_STATS {
                    return Err(QueryError::BadParam(bad(
                        "filters",
                        format!(
                            "{} urls match: metrics other than views are fetched for at most {MAX_URL_STATS}; narrow the range or the filter",
                            keys.len()
                        ),
                    )));
                }
                let urls: Vec<String> = keys.into_iter().map(|(k, _)| k).collect();
                let stats = self
                    .run(vec![Op::UrlStats {
                        range,
                        urls: urls.clone(),
                        site: plan.site.clone(),
                    }])
                    .await?;
                let stats = match stats.into_iter().next() {
                    Some(Part::UrlStats(l)) => l,
                    _ => Vec::new(),
                };
                let sketched = stats.iter().any(|s| s.sketched);
                let rows = urls
                    .into_iter()
                    .zip(stats)
                    .map(|(k, s)| Row {
                        dims: vec![k],
                        metrics: plan.metrics.iter().map(|m| url_metric(*m, &s)).collect(),
                    })
                    .collect();
                Ok(Rows {
                    rows,
                    sketched,
                    scan: None,
                })
            }
        }
    }

    /// Divides the visitors standing in `rows` for `conversion_rate` by those of the same
    /// row's values but the event's under the `base` filter (the same buckets, the plan's
    /// dimensions without `event`): a share of 0–1, `None` when the base has no visitor.
    /// Whether a sketch estimated the base.
    async fn convert(
        &self,
        plan: &Plan,
        base: &DimFilter,
        buckets: &[Range],
        profile_dims: &[usize],
        rows: &mut [Row],
    ) -> Result<bool, QueryError> {
        let event = crate::parse::event::dims::EVENT;
        let base_dims: Vec<usize> = profile_dims
            .iter()
            .copied()
            .filter(|d| *d != event)
            .collect();
        let ops = buckets
            .iter()
            .map(|b| Op::Breakdown {
                dims: base_dims.clone(),
                range: *b,
                site: plan.site.clone(),
                filter: base.clone(),
                visits: false,
            })
            .collect();
        let parts = self.run(ops).await?;
        // A row's key: its values in the plan's order, the event's left out.
        let is_event = |d: &QDim| *d == QDim::Profile(event);
        let mut visitors: hashbrown::HashMap<Vec<String>, u64> = hashbrown::HashMap::new();
        let mut sketched = false;
        for (b, part) in buckets.iter().zip(parts) {
            let Part::Breakdown(list) = part else {
                continue;
            };
            for r in list {
                sketched |= r.sketched;
                let mut values = r.key.split(SEP);
                let key: Vec<String> = plan
                    .dims
                    .iter()
                    .filter(|d| !is_event(d))
                    .map(|d| match d {
                        QDim::Time(_) => minute_rfc3339(b.from),
                        _ => values.next().unwrap_or_default().to_string(),
                    })
                    .collect();
                *visitors.entry(key).or_default() += r.visitors;
            }
        }
        for row in rows.iter_mut() {
            let key: Vec<String> = plan
                .dims
                .iter()
                .zip(&row.dims)
                .filter(|(d, _)| !is_event(d))
                .map(|(_, v)| v.clone())
                .collect();
            let all = visitors.get(&key).copied().unwrap_or(0);
            for (m, x) in plan.metrics.iter().zip(row.metrics.iter_mut()) {
                if *m == Metric::ConversionRate {
                    *x = x.filter(|_| all > 0).map(|v| v / all as f64);
                }
            }
        }
        Ok(sketched)
    }

    /// Answers a validated `POST /v1/query` as JSON.
    pub async fn query(&self, plan: Plan) -> Result<String, QueryError> {
        let now = self.rows(&plan, plan.range).await?;
        let earlier = match plan.compare {
            Some((_, r)) => Some(self.rows(&plan, r).await?),
            None => None,
        };
        Ok(compose(&plan, now, earlier))
    }
}

/// The answer of `plan` from its rows over its range (and over the comparison period):
/// ordered, paged, each matched with its comparison row.
pub fn compose(plan: &Plan, now: Rows, earlier: Option<Rows>) -> String {
    {
        let Rows {
            mut rows,
            sketched,
            scan,
        } = now;
        let cmp = |a: &Row, b: &Row| {
            for (col, desc) in &plan.order {
                let o = match col {
                    Column::Metric(i) => {
                        let (x, y) = (
                            a.metrics.get(*i).copied().flatten(),
                            b.metrics.get(*i).copied().flatten(),
                        );
                        // Nulls last either way.
                        match (x, y) {
                            (Some(x), Some(y)) => {
                                let o = x.partial_cmp(&y).unwrap_or(Ordering::Equal);
                                if *desc {
                                    o.reverse()
                                } else {
                                    o
                                }
                            }
                            (Some(_), None) => Ordering::Less,
                            (None, Some(_)) => Ordering::Greater,
                            (None, None) => Ordering::Equal,
                        }
                    }
                    Column::Dim(i) => {
                        let o = a.dims.get(*i).cmp(&b.dims.get(*i));
                        if *desc {
                            o.reverse()
                        } else {
                            o
                        }
                    }
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        };
        rows.sort_by(cmp);
        let total_rows = rows.len();
        let page: Vec<Row> = rows
            .into_iter()
            .skip(plan.offset)
            .take(plan.limit)
            .collect();

        // The same query over the comparison period, matched by the other dimensions' values
        // (and a time dimension's step number).
        let time = plan.dims.iter().position(|d| matches!(d, QDim::Time(_)));
        let step = time_step(&plan.dims);
        if let (Some((_, crange)), Some(earlier)) = (plan.compare, earlier) {
            let earlier_sketched = earlier.sketched;
            let same_length = crange.to - crange.from == plan.range.to - plan.range.from;
            let key = |r: &Row, from: i64| -> Vec<String> {
                r.dims
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match (Some(i) == time, step) {
                        // A time value as its step number from the range's start.
                        (true, Some(s)) => super::params::parse_time("t", v, 0)
                            .map(|ms| ((ms.div_euclid(60_000) - from) / s).to_string())
                            .unwrap_or_default(),
                        _ => v.clone(),
                    })
                    .collect()
            };
            let map: hashbrown::HashMap<Vec<String>, Row> = earlier
                .rows
                .into_iter()
                .map(|r| (key(&r, crange.from), r))
                .collect();
            let results: Vec<Value> = page
                .iter()
                .map(|r| {
                    let mut item =
                        json!({"dimensions": r.dims, "metrics": values(&plan.metrics, &r.metrics)});
                    {
                        let k = key(r, plan.range.from);
                        let earlier = map.get(&k);
                        let dims: Vec<String> = match (time, step) {
                            (Some(t), Some(s)) => r
                                .dims
                                .iter()
                                .enumerate()
                                .map(|(i, v)| {
                                    if i == t {
                                        let n: i64 =
                                            k.get(i).and_then(|x| x.parse().ok()).unwrap_or(0);
                                        minute_rfc3339(crange.from + n * s)
                                    } else {
                                        v.clone()
                                    }
                                })
                                .collect(),
                            _ => r.dims.clone(),
                        };
                        let before: Vec<Option<f64>> = plan
                            .metrics
                            .iter()
                            .enumerate()
                            .map(|(i, m)| match earlier {
                                Some(e) => e.metrics.get(i).copied().flatten(),
                                // No row then: counts were zero, ratios undefined.
                                None if m.is_ratio() => None,
                                None => Some(0.0),
                            })
                            .collect();
                        let change: Vec<Option<f64>> = plan
                            .metrics
                            .iter()
                            .zip(r.metrics.iter().zip(&before))
                            .map(|(m, (now, then))| match (now, then) {
                                // Periods of different lengths (the earlier one widened
                                // to whole hours or days): no change is stated.
                                _ if !same_length => None,
                                (Some(n), Some(t)) if m.is_rate() => {
                                    Some(((n - t) * 1000.0).round() / 10.0)
                                }
                                (Some(n), Some(t)) if *t != 0.0 => {
                                    Some(((n - t) / t * 1000.0).round() / 10.0)
                                }
                                _ => None,
                            })
                            .collect();
                        if let Some(o) = item.as_object_mut() {
                            o.insert(
                                "comparison".into(),
                                json!({"dimensions": dims, "metrics": values(&plan.metrics, &before), "change": change}),
                            );
                        }
                    }
                    item
                })
                .collect();
            return answer(
                plan,
                results,
                total_rows,
                sketched || earlier_sketched,
                Some(crange),
                scan,
            );
        }
        let results: Vec<Value> = page
            .iter()
            .map(|r| json!({"dimensions": r.dims, "metrics": values(&plan.metrics, &r.metrics)}))
            .collect();
        answer(plan, results, total_rows, sketched, None, scan)
    }
}

/// The scan of `plan` over `range` (a plan of [`Family::Scan`]).
pub fn scan_spec(plan: &Plan, range: Range) -> super::scan::ScanSpec {
    use super::scan::ScanDim;
    super::scan::ScanSpec {
        dims: plan
            .dims
            .iter()
            .map(|d| match d {
                QDim::Profile(i) => ScanDim::Profile(*i),
                QDim::Time(s) => ScanDim::Time(*s),
                QDim::Page(Dim::RefDomain) => ScanDim::RefDomain,
                QDim::Page(Dim::Site) => ScanDim::Site,
                QDim::Page(_) => ScanDim::Url,
            })
            .collect(),
        filter: plan.filter.expr.clone(),
        from_min: range.from,
        to_min: range.to,
        site: plan.site.clone(),
        bots: plan.filter.bots,
        events: plan.filter.events,
    }
}

/// The rows of a scan of `plan` over `range`, which took `seconds`.
pub fn scan_rows(
    plan: &Plan,
    range: Range,
    s: super::scan::Scanned,
    seconds: f64,
    id: u64,
) -> Rows {
    // By a dimension a heartbeat's line does not say, heartbeats are under `(none)`.
    let by_page_only = plan
        .dims
        .iter()
        .any(|d| matches!(d, QDim::Profile(p) if !crate::parse::event::dims::LINE.contains(p)));
    let metric = |m: &Metric, a: &super::scan::Acc| -> Option<f64> {
        Some(match m {
            Metric::Views => a.views as f64,
            Metric::Visitors => a.visitors.len() as f64,
            Metric::Hits => a.hits as f64,
            Metric::EngagedSeconds => a.engaged as f64,
            Metric::Events => (a.views + a.events) as f64,
            _ => return None,
        })
    };
    let mut rows: Vec<Row> = s
        .rows
        .iter()
        // By a dimension only pageviews say (channel…), heartbeats (whose value is `(none)`)
        // are not rows; nor is a group of which nothing asked was counted (the pairs of url
        // and referrer only heartbeats had, asked for views), as from the cells.
        .filter(|(_, a)| !by_page_only || a.views > 0 || a.events > 0)
        .filter(|(_, a)| {
            plan.metrics
                .iter()
                .any(|m| metric(m, a).is_some_and(|x| x != 0.0))
        })
        .map(|(k, a)| Row {
            dims: k.clone(),
            metrics: plan.metrics.iter().map(|m| metric(m, a)).collect(),
        })
        .collect();
    // With time alone, every step is a row, as from the cells.
    if let [QDim::Time(step)] = plan.dims[..] {
        let mut t = range.from;
        while t < range.to {
            let k = vec![minute_rfc3339(t)];
            if !s.rows.contains_key(&k) {
                rows.push(Row {
                    dims: k,
                    metrics: plan.metrics.iter().map(|_| Some(0.0)).collect(),
                });
            }
            t += step;
        }
    }
    let oldest = s.first_recv_ns.iter().flatten().min().copied();
    Rows {
        rows,
        sketched: false,
        scan: Some(json!({
            "id": id,
            "records": s.records,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "records_per_second": if seconds > 0.0 { (s.records as f64 / seconds).round() } else { 0.0 },
            "log_from": oldest.map(|ns| minute_rfc3339((ns / 60_000_000_000) as i64)),
            "problems": s.problems,
        })),
    }
}

/// Metric values as JSON: counts as integers, ratios and means as numbers, null where
/// undefined (a ratio without visits).
fn values(metrics: &[Metric], v: &[Option<f64>]) -> Vec<Value> {
    metrics
        .iter()
        .zip(v)
        .map(|(m, x)| match x {
            None => Value::Null,
            Some(x) if m.is_ratio() => json!(x),
            Some(x) => json!(*x as i64),
        })
        .collect()
}

/// The answer's JSON.
fn answer(
    plan: &Plan,
    results: Vec<Value>,
    total_rows: usize,
    sketched: bool,
    compared: Option<Range>,
    scan: Option<Value>,
) -> String {
    let computed_from = match plan.family {
        Family::Scan => "a scan of the raw log",
        Family::Profiles => "profile cells",
        Family::Totals => "site totals",
        Family::UrlChannels => "url × channel cells",
        Family::UrlRefs => "url × referrer cells",
        Family::Pages(Dim::RefDomain) => "referrer cells",
        Family::Pages(Dim::Site) => "site totals",
        Family::Pages(Dim::EntryPage | Dim::ExitPage) => "visit entry and exit cells",
        Family::Pages(_) => "url cells",
    };
    let mut meta = json!({
        "metrics": plan.metrics.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "dimensions": plan.dim_names,
        "site": plan.site,
        "date_range": [minute_rfc3339(plan.range.from), minute_rfc3339(plan.range.to)],
        "total_rows": total_rows,
        "sketched": sketched,
        "computed_from": computed_from,
        "bots": if plan.filter.bots { "include" } else { "exclude" },
    });
    if let (Some(r), Some(o)) = (compared, meta.as_object_mut()) {
        o.insert(
            "comparison_date_range".into(),
            json!([minute_rfc3339(r.from), minute_rfc3339(r.to)]),
        );
    }
    if let (Some(s), Some(o)) = (scan, meta.as_object_mut()) {
        o.insert("scan".into(), s);
    }
    json!({"results": results, "meta": meta}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_311_543_462; // fixed-date: parsing only; ranges are relative to it.

    fn plan(q: &str) -> Result<Plan, BadParam> {
        parse(q.as_bytes(), NOW, &AggConfig::default())
    }

    fn refused(q: &str) -> BadParam {
        match plan(q) {
            Err(e) => e,
            Ok(p) => panic!("{q} was accepted: {p:?}"),
        }
    }

    /// `conversion_rate` needs the event it counts, at the top level of the filters; its
    /// base is the same filter without it, custom events counted.
    #[test]
    fn a_conversion_rate_names_its_event() {
        let event = crate::parse::event::dims::EVENT;
        let p = plan(
            r#"{"metrics":["conversion_rate"],"dimensions":["channel"],"filters":[["is","event",["signup"]],["is_not","device",["bot"]],["is","country",["DE"]]]}"#,
        )
        .unwrap();
        assert_eq!(p.family, Family::Profiles);
        let base = p.conversion_base.unwrap();
        assert!(base.events && !base.mentions(event), "{base:?}");
        assert_eq!(
            base.expr,
            Some(Filter::And(vec![
                Filter::IsNot(5, vec!["bot".into()]),
                Filter::Is(9, vec!["DE".into()]),
            ]))
        );
        // An event filter alone leaves every visitor; the event dimension alone too.
        for q in [
            r#"{"metrics":["conversion_rate"],"filters":[["or",[["is","event",["a"]],["contains","event",["b"]]]]]}"#,
            r#"{"metrics":["visitors","conversion_rate"],"dimensions":["event","time:hour"]}"#,
        ] {
            let base = plan(q).unwrap().conversion_base.unwrap();
            assert_eq!(base.expr, None, "{q}");
        }
        for (q, says) in [
            (r#"{"metrics":["conversion_rate"]}"#, "name the event"),
            (
                r#"{"metrics":["conversion_rate"],"dimensions":["channel"]}"#,
                "name the event",
            ),
            (
                r#"{"metrics":["conversion_rate"],"filters":[["or",[["is","event",["a"]],["is","channel",["search"]]]]]}"#,
                "alone at the top level",
            ),
            (
                r#"{"metrics":["conversion_rate"],"dimensions":["url"]}"#,
                "`conversion_rate` is not covered",
            ),
            (
                r#"{"metrics":["conversion_rate"],"dimensions":["event"],"include":{"scan":true}}"#,
                "`conversion_rate` is not covered",
            ),
        ] {
            let e = refused(q);
            assert!(e.to_string().contains(says), "{q}: {e}");
        }
    }

    #[test]
    fn each_query_goes_to_the_cells_that_answer_it() {
        for q in [
            r#"{"metrics":["views"],"dimensions":["url","channel"]}"#,
            r#"{"metrics":["views"],"dimensions":["channel","url"],"filters":[["contains","url",["/a"]]]}"#,
            r#"{"metrics":["views"],"dimensions":["url"],"filters":[["is","channel",["search"]]]}"#,
        ] {
            assert_eq!(plan(q).unwrap().family, Family::UrlChannels, "{q}");
        }
        // Not counted: refused, pointing to the scan.
        let off = AggConfig {
            url_channels: false,
            ..AggConfig::default()
        };
        let e = parse(
            br#"{"metrics":["views"],"dimensions":["url","channel"]}"#,
            NOW,
            &off,
        )
        .unwrap_err();
        assert!(e.to_string().contains("agg.url_channels = false"), "{e}");
        // Urls by referrer, referrers of a url: the url × referrer cells (off: refused).
        for q in [
            r#"{"metrics":["views"],"dimensions":["url","ref_domain"]}"#,
            r#"{"metrics":["views"],"dimensions":["ref_domain","url"],"filters":[["contains","url",["/a"]]]}"#,
            r#"{"metrics":["views"],"dimensions":["url"],"filters":[["is","ref_domain",["t.co"]]]}"#,
            r#"{"metrics":["views"],"dimensions":["ref_domain"],"filters":[["is","url",["https://a.example/"]]]}"#,
        ] {
            assert_eq!(plan(q).unwrap().family, Family::UrlRefs, "{q}");
            let off = AggConfig {
                url_referrers: false,
                ..AggConfig::default()
            };
            let e = parse(q.as_bytes(), NOW, &off).unwrap_err();
            assert!(e.to_string().contains("agg.url_referrers = false"), "{e}");
        }
        let p = plan(r#"{"metrics":["views"],"dimensions":["ref_domain"],"filters":[["contains","ref_domain",["google"]]]}"#).unwrap();
        assert_eq!(
            p.family,
            Family::Pages(Dim::RefDomain),
            "a referrer filter alone"
        );
        // A url filter alone stays with the url cells (every url metric).
        let p = plan(
            r#"{"metrics":["views"],"dimensions":["url"],"filters":[["contains","url",["/a"]]]}"#,
        )
        .unwrap();
        assert_eq!(p.family, Family::Pages(Dim::Url));
        // Bots counted: not in those cells (bots' pageviews count there only with agg.bots).
        let q = r#"{"metrics":["views"],"dimensions":["url","channel"],"include":{"bots":true}}"#;
        assert_ne!(plan(q).map(|p| p.family).ok(), Some(Family::UrlChannels));
        let p = plan(r#"{"metrics":["views","visitors"],"dimensions":["channel","time:hour"],"filters":[["is","country",["DE"]],["not",["matches","browser",["^Saf"]]]]}"#).unwrap();
        assert_eq!(p.family, Family::Profiles);
        assert_eq!(p.dims, [QDim::Profile(0), QDim::Time(60)]);
        assert_eq!(p.range.from % 60, 0, "whole hours");
        let f = p.filter.expr.as_ref().unwrap();
        let value = |d: usize| match d {
            9 => "DE",
            6 => "Chrome",
            _ => "x",
        };
        assert!(f.test(&value));
        assert!(!f.test(&|d| if d == 6 { "Safari" } else { value(d) }));
        assert_eq!(
            p.order,
            [
                (Column::Dim(1), false),
                (Column::Metric(0), true),
                (Column::Dim(0), false),
                (Column::Dim(1), false)
            ]
        );

        let p = plan(r#"{"metrics":["visits","bounce_rate","views"],"dimensions":["time:day"],"date_range":"30d"}"#).unwrap();
        assert_eq!(p.family, Family::Totals);
        // Visits by a pageview dimension, or filtered by one: by their entry pageview's.
        for q in [
            r#"{"metrics":["visits","bounce_rate","visit_duration","views_per_visit"],"dimensions":["channel"]}"#,
            r#"{"metrics":["visits"],"dimensions":["time:hour"],"filters":[["is","country",["DE"]]]}"#,
        ] {
            assert_eq!(plan(q).unwrap().family, Family::Profiles, "{q}");
        }
        let p = plan(r#"{"metrics":["views"],"include":{"bots":true}}"#).unwrap();
        assert_eq!(
            p.family,
            Family::Profiles,
            "bots are counted in profiles only"
        );
        let p = plan(r#"{"metrics":["views","entries"],"dimensions":["url"],"filters":[["contains","url",["/news/"]]],"limit":5,"offset":10}"#).unwrap();
        assert_eq!(p.family, Family::Pages(Dim::Url));
        assert_eq!((p.limit, p.offset), (5, 10));
        assert!(p.key_filter.unwrap().test(&|_| "https://a.example/news/1"));

        let p = plan(r#"{"metrics":["views"],"date_range":["-2h","now"],"include":{"comparisons":"previous_period"}}"#).unwrap();
        let (_, c) = p.compare.unwrap();
        assert_eq!(
            (c.to, c.to - c.from),
            (p.range.from, p.range.to - p.range.from)
        );
        let p = plan(
            r#"{"metrics":["views"],"date_range":"7d","include":{"comparisons":"year_over_year"}}"#,
        )
        .unwrap();
        // A year ago only days exist: the period widens to whole days around it.
        let c = p.compare.unwrap().1;
        assert!(c.from <= p.range.from - YEAR && c.to >= p.range.to - YEAR);
        assert_eq!((c.from % 1440, c.to % 1440), (0, 0));
        let p = plan(r#"{"metrics":["views","hits"],"dimensions":["url","device","time:hour"],"filters":[["contains","ref_domain",["google"]]],"include":{"scan":true}}"#).unwrap();
        assert_eq!(p.family, Family::Scan);
        let spec = scan_spec(&p, p.range);
        let url = super::super::scan::ScanSpec::url_pos(&AggConfig::default());
        assert!(spec
            .filter
            .unwrap()
            .test(&|d| if d == url + 1 { "www.google.com" } else { "x" }));
        let p = plan(r#"{"metrics":["views"],"date_range":"day"}"#).unwrap();
        assert_eq!(p.range.from % 1440, 0, "since midnight");
    }

    /// A scan would put every heartbeat, hence all engaged time, under `(none)` by a
    /// dimension its line does not say (channel, utm tags, event, custom): by one, or filtered
    /// by one, engaged_seconds is refused, not a silent 0. By the line's own (device,
    /// country…) it is answered.
    #[test]
    fn engaged_seconds_of_a_scan_goes_by_page_time_and_the_lines_own_dimensions() {
        for q in [
            r#"{"metrics":["engaged_seconds"],"filters":[["is","channel",["search"]]],"include":{"scan":true}}"#,
            r#"{"metrics":["views","engaged_seconds"],"dimensions":["channel"],"include":{"scan":true}}"#,
            r#"{"metrics":["engaged_seconds"],"dimensions":["url"],"filters":[["not",["is","utm_source",["news"]]]],"include":{"scan":true}}"#,
            r#"{"metrics":["engaged_seconds"],"dimensions":["device","event"],"include":{"scan":true}}"#,
        ] {
            let e = refused(q);
            assert_eq!(e.param, "metrics", "{q}");
            assert!(e.reason.contains("heartbeat"), "{q}: {}", e.reason);
        }
        for q in [
            r#"{"metrics":["engaged_seconds","hits"],"dimensions":["url","time:hour"],"filters":[["contains","ref_domain",["google"]]],"include":{"scan":true}}"#,
            r#"{"metrics":["views"],"filters":[["is","device",["mobile"]]],"include":{"scan":true}}"#,
            r#"{"metrics":["engaged_seconds"],"filters":[["is","device",["mobile"]]],"include":{"scan":true}}"#,
            r#"{"metrics":["engaged_seconds"],"dimensions":["url"],"filters":[["not",["is","country",["DE"]]]],"include":{"scan":true}}"#,
            r#"{"metrics":["engaged_seconds","hits"],"dimensions":["browser","os","region"],"filters":[["is","bot",["human"]]],"include":{"scan":true}}"#,
        ] {
            assert!(plan(q).is_ok(), "{q}");
        }
    }

    #[test]
    fn what_no_cell_answers_is_refused_by_name() {
        for (q, param, says) in [
            (
                r#"{"metrics":["engaged_seconds"],"dimensions":["channel"]}"#,
                "metrics",
                "not covered",
            ),
            (
                r#"{"metrics":["views"],"dimensions":["channel"],"filters":[["contains","url",["/a"]]]}"#,
                "filters",
                "not covered",
            ),
            (
                r#"{"metrics":["views"],"dimensions":["url","device"]}"#,
                "dimensions",
                "not covered",
            ),
            (
                r#"{"metrics":["visitors"],"dimensions":["url","channel"]}"#,
                "metrics",
                "url × channel cells hold views only",
            ),
            (
                r#"{"metrics":["views"],"dimensions":["url"],"filters":[["is","channel",["search"]],["is","device",["mobile"]]]}"#,
                "filters",
                "only `url` and `channel`",
            ),
            (
                r#"{"metrics":["views"],"dimensions":["channel","device","os"]}"#,
                "dimensions",
                "at most two",
            ),
            (
                r#"{"metrics":["views"],"dimensions":["ref_domain"],"filters":[["is","channel",["x"]]]}"#,
                "filters",
                "only `ref_domain`",
            ),
            (r#"{"metrics":["nope"]}"#, "metrics", "one of"),
            (r#"{"metrics":[]}"#, "metrics", "at least one"),
            (
                r#"{"metrics":["views"],"dimensions":["planet"]}"#,
                "dimensions",
                "one of",
            ),
            (
                r#"{"metrics":["views"],"filters":[["like","channel",["x"]]]}"#,
                "filters",
                "is, is_not",
            ),
            (
                r#"{"metrics":["views"],"filters":[["matches","channel",["("]]]}"#,
                "filters",
                "regular expression",
            ),
            (
                r#"{"metrics":["views"],"date_range":"forever"}"#,
                "date_range",
                "7d",
            ),
            (
                r#"{"metrics":["views"],"date_range":["-2h","-3h"]}"#,
                "date_range",
                "after",
            ),
            (r#"{"metrics":["views"],"limit":0}"#, "limit", "1..=1000"),
            (
                r#"{"metrics":["views"],"order_by":[["hits","desc"]]}"#,
                "order_by",
                "neither",
            ),
            (
                r#"{"metrics":["views"],"colour":"red"}"#,
                "colour",
                "unknown field",
            ),
            (
                r#"{"metrics":["views"],"include":{"comparisons":"last_week"}}"#,
                "include",
                "previous_period",
            ),
            (
                r#"{"metrics":["views"],"date_range":"390d","include":{"comparisons":"year_over_year"}}"#,
                "include",
                "comparison period",
            ),
            (
                r#"{"metrics":["views"],"dimensions":["time:minute"],"date_range":"30d"}"#,
                "dimensions",
                "minute window",
            ),
            ("[1,2]", "body", "object"),
            ("{", "body", "not JSON"),
        ] {
            let e = refused(q);
            assert_eq!(e.param, param, "{q}: {e}");
            assert!(e.reason.contains(says), "{q}: {e}");
        }
        let big = format!(
            r#"{{"metrics":["views"],"filters":[["matches","os",["{}"]]]}}"#,
            "a".repeat(MAX_PATTERN + 1)
        );
        assert!(refused(&big).reason.contains("at most 256"));
        // A pattern whose compiled program would be huge is refused by its size limit.
        let huge = r#"{"metrics":["views"],"filters":[["matches","os",["\\w{1000}\\w{1000}"]]]}"#;
        assert!(
            refused(huge).reason.contains("regular expression"),
            "{}",
            refused(huge)
        );
    }

    #[test]
    fn metric_values_are_integers_or_ratios() {
        let v = values(
            &[Metric::Views, Metric::BounceRate, Metric::Visitors],
            &[Some(3.0), Some(0.5), None],
        );
        assert_eq!(serde_json::to_string(&v).unwrap(), "[3,0.5,null]");
    }
}
