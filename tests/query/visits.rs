//! Visits (sessions) of a real `pixeld serve` against an independent model: a seeded generator
//! makes a few thousand lines of realistic visitor behaviour on three sites (multi-page visits
//! with heartbeats, single-page visits on both sides of the bounce threshold, returning
//! visitors, visitors on two sites, custom events and hits without a visitor id, events too late
//! for visits, now and then two pageviews of one visitor in the same millisecond) plus a fourth
//! site of hand-built edge cases (visits joined and extended backwards by late arrivals, gaps
//! close to `visit_gap` on both sides, heartbeat-only visits, the bounce threshold, the engaged
//! seconds the parser gives a heartbeat's `inc`; entry and exit pages changed by late
//! pageviews, by a join, by ties in one millisecond, a visit entering in the minute before its
//! first pageview), each with its expected visits (and entry and exit pages) written by hand,
//! which the model must reproduce first.
//!
//! The scenario is written at `visit_gap = 2m`, `visit_late_allowance = 3m` (a compressed
//! time already): every event that takes part in visits is stamped in the 2m30s before it is
//! sent (at most 2m30s late plus the time to send it) and the deliberately late ones 10 to 60
//! minutes before (late by far more than the allowance): no event is near the allowance, no
//! gap between two events of one visitor on one site is within 1 s of `visit_gap`, whatever
//! the speed of the machine (the test fails, saying so, if sending took so long that this no
//! longer holds).
//!
//! The lines go in three batches, each compared with the model of what was sent so far: the
//! bulk, shuffled, in several requests; then late arrivals that join and extend visits; then,
//! after a SIGTERM and a restart, more late arrivals joining and extending visits opened before
//! the restart, followed at once by a SIGKILL (they were acknowledged, so durable) and a restart
//! that must replay them; finally the aggregates are deleted and rebuilt from the log. The
//! summary (whole range, sub-ranges, per site), the time series (1m and 1h, per site) and the
//! top lists of urls (`dim=url`, `dim=entry_page`, `dim=exit_page`, `dim=url&sort=views|
//! entries|exits|engaged_seconds|visitors|avg_engaged_seconds`; whole range and minute by
//! minute, every key and the first three) and the series of three urls (1m and 1h: their
//! distinct visitors as `uniques`), and views and the visit metrics by channel
//! (`/v1/query`, whole and filtered by one channel, a visit by the channel of its entry
//! pageview, which the model takes from the referrer and tags the line was rendered with)
//! are compared field by field: views, hits, uniques and
//! engaged seconds, the visit fields, entries, exits and each url's distinct visitors. All ranges are absolute (epoch seconds); event times are
//! relative to the wall clock at the send, never a fixed date.
//!
//! A fourth test runs the same scenario forty times faster (`visit_gap = 3s`, an allowance of
//! 22 s), sends the three batches one right after the other (after a warm-up request), waits
//! until the server has forgotten every visitor (`pixeld_agg_visitors` 0, about 85 s: the
//! receive clock runs a minute behind the wall clock) and checks again, live, after a SIGKILL
//! and a SIGTERM, and rebuilt from the log.
//!
//! The truth is computed here from what the generator rendered, never by pixeld's code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use crate::common::model::{enc, js, msec, rfc, ts_z};
use crate::common::{self, Server};

const MIN_MS: i64 = 60_000;

// The scenario is written at the scale of these durations ("nominal" milliseconds); a
// [`Timing`] runs it at that scale or compressed by a factor.

/// `visit_gap`: consecutive events at most this far apart are one visit.
const GAP_MS: i64 = 120_000;
/// Events that take part in visits are stamped in [send - SPAN_MS, send - 500 ms] ...
const SPAN_MS: i64 = 150_000;
/// ... that is at these offsets from the start of the span, [0, LAST_OFF].
const LAST_OFF: i64 = SPAN_MS - 500;
/// No two consecutive events of a visitor on a site are within this of `visit_gap`.
const BAND_MS: i64 = 1_000;
/// `bounce_engaged_seconds`.
const BOUNCE_ENGAGED: u64 = 10;
/// Events too late for visits are stamped at least this long (real time) before the send.
const TOO_LATE_MS: i64 = 10 * MIN_MS;
/// How far behind its wall clock a live shard keeps its receive clock (`CLOCK_MARGIN_MS` of
/// `route`): visits close that long after `visit_gap` + `visit_late_allowance`.
const CLOCK_MARGIN_MS: i64 = 60_000;

/// How the scenario's time runs: every nominal offset and duration divided by `div`, and
/// `visit_late_allowance`, with the margin kept below it when checking that a batch arrived
/// in time (real milliseconds).
#[derive(Debug, Clone, Copy)]
struct Timing {
    div: i64,
    allowance_ms: i64,
    arrival_margin_ms: i64,
}

/// The scale the scenario is written at: `visit_gap = 2m`, `visit_late_allowance = 3m`.
const NOMINAL: Timing = Timing {
    div: 1,
    allowance_ms: 180_000,
    arrival_margin_ms: 5_000,
};

/// Forty times faster (`visit_gap = 3s`, events stamped in the 3.75 s before the send), with
/// an allowance of 22 s: the batches must be in within about 16 s of the send, and the visits
/// close about 3 + 22 + 60 s after it (the receive clock runs a minute behind).
const FAST: Timing = Timing {
    div: 40,
    allowance_ms: 22_000,
    arrival_margin_ms: 2_000,
};

impl Timing {
    fn gap(self) -> i64 {
        GAP_MS / self.div
    }

    fn span(self) -> i64 {
        SPAN_MS / self.div
    }

    fn band(self) -> i64 {
        BAND_MS / self.div
    }

    fn config(self) -> String {
        assert!(GAP_MS % (self.div * 1000) == 0 && self.allowance_ms % 1000 == 0);
        format!(
            "[agg]\nminute_window = \"2h\"\nhour_window = \"3h\"\nday_window = \"1d\"\n\
             visit_gap = \"{}s\"\nvisit_late_allowance = \"{}s\"\nbounce_engaged_seconds = {}\n",
            self.gap() / 1000,
            self.allowance_ms / 1000,
            BOUNCE_ENGAGED
        )
    }
}

const SITES: [&str; 3] = ["shop.example.com", "blog.example.org", "news.example.net"];
/// The site of the hand-built edge cases.
const EDGE: &str = "edge.example.dev";

const VISIT_KEYS: [&str; 6] = [
    "visits",
    "bounces",
    "visit_views",
    "bounce_rate",
    "views_per_visit",
    "visit_duration",
];
const PAGE_KEYS: [&str; 2] = ["entries", "exits"];
const FLOAT_KEYS: [&str; 4] = [
    "bounce_rate",
    "views_per_visit",
    "visit_duration",
    "avg_engaged_seconds",
];

// ---------------------------------------------------------------------------------------------
// Events and the model.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pageview,
    Heartbeat,
    /// `a=event`: a hit, no view, no engaged time, no part in visits.
    Custom,
}

/// One event as rendered into a line.
#[derive(Debug, Clone)]
struct Ev {
    /// Event time, ms since the epoch.
    t: i64,
    kind: Kind,
    /// The `inc` field, when the line has one.
    inc: Option<i64>,
    /// The canonical (lower-case) site.
    site: &'static str,
    /// The path of its url (rendered with a query string, a fragment or an upper-case host
    /// now and then, which the normalised url drops).
    path: &'static str,
    vid: Option<String>,
    /// Stamped [`TOO_LATE_MS`] or more before it is sent: too late for visits.
    too_late: bool,
    /// The request it is sent in: 1 the bulk, 2 the late arrivals, 3 after the restart (0:
    /// the warm-up line sent before the others are stamped).
    batch: u8,
    /// The channel of its line, as [`render`] chose its referrer and tags ("" before).
    channel: &'static str,
}

impl Ev {
    /// Engaged seconds as the event spec gives them: a heartbeat's `inc` when it is an integer
    /// in 0..=3600, else `heartbeat_seconds` (10); nothing for a pageview or a custom event
    /// (whatever their `inc`).
    fn engaged(&self) -> u64 {
        match (self.kind, self.inc) {
            (Kind::Heartbeat, Some(i)) if (0..=3600).contains(&i) => i as u64,
            (Kind::Heartbeat, _) => 10,
            _ => 0,
        }
    }

    /// Whether it takes part in visits.
    fn eligible(&self) -> bool {
        self.vid.is_some() && self.kind != Kind::Custom && !self.too_late
    }

    /// The normalised url, as aggregates.rs's model makes it: lower-case scheme and host
    /// (the canonical site), the path as it is, no query string, no fragment.
    fn url(&self) -> String {
        format!("https://{}{}", self.site, self.path)
    }
}

/// One visit of the model.
#[derive(Debug, Clone)]
struct Visit {
    site: &'static str,
    vid: String,
    /// The time of its first event, and its minute.
    first_ms: i64,
    minute: i64,
    pageviews: u64,
    duration_ms: i64,
    engaged: u64,
    /// The urls of its first and last pageviews (by time, then url bytewise), none without.
    entry: Option<String>,
    exit: Option<String>,
    /// The channel of its first pageview (by time, then url, then channel bytewise): the
    /// visit's, in a breakdown by channel.
    entry_channel: Option<&'static str>,
}

impl Visit {
    fn bounce(&self) -> bool {
        self.pageviews == 1 && self.engaged < BOUNCE_ENGAGED
    }
}

/// The visits of `evs`: per visitor and site, the eligible events by time, cut wherever two
/// consecutive ones are more than `gap` ms apart.
fn visits_of(evs: &[&Ev], gap: i64) -> Vec<Visit> {
    let mut by: BTreeMap<(&str, &'static str), Vec<&Ev>> = BTreeMap::new();
    for e in evs.iter().filter(|e| e.eligible()) {
        by.entry((e.vid.as_deref().unwrap(), e.site))
            .or_default()
            .push(e);
    }
    let mut out = Vec::new();
    for ((vid, site), mut es) in by {
        es.sort_by_key(|e| e.t);
        let mut run: Vec<&Ev> = Vec::new();
        let mut close = |run: &mut Vec<&Ev>| {
            if let (Some(first), Some(last)) = (run.first(), run.last()) {
                let pages = || {
                    run.iter()
                        .filter(|e| e.kind == Kind::Pageview)
                        .map(|e| (e.t, e.url()))
                };
                out.push(Visit {
                    site,
                    vid: vid.to_string(),
                    first_ms: first.t,
                    minute: first.t.div_euclid(MIN_MS),
                    pageviews: pages().count() as u64,
                    duration_ms: last.t - first.t,
                    engaged: run.iter().map(|e| e.engaged()).sum(),
                    entry: pages().min().map(|(_, u)| u),
                    exit: pages().max().map(|(_, u)| u),
                    entry_channel: run
                        .iter()
                        .filter(|e| e.kind == Kind::Pageview)
                        .map(|e| (e.t, e.url(), e.channel))
                        .min()
                        .map(|(_, _, c)| c),
                });
            }
            run.clear();
        };
        for e in es {
            if run.last().is_some_and(|p| e.t - p.t > gap) {
                close(&mut run);
            }
            run.push(e);
        }
        close(&mut run);
    }
    out
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tot {
    views: u64,
    hits: u64,
    engaged: u64,
    uniques: u64,
    visits: u64,
    bounces: u64,
    visit_views: u64,
    duration_ms: i64,
}

/// What a url has in a range: views, hits and engaged seconds of its events in the range;
/// entries and exits of the visits that start in the range.
#[derive(Debug, Default, Clone, Copy)]
struct UrlRow {
    views: u64,
    hits: u64,
    engaged: u64,
    entries: u64,
    exits: u64,
    /// Distinct visitors of its events in the range (every kind, too late for visits or not).
    visitors: u64,
}

impl UrlRow {
    fn metric(&self, name: &str) -> u64 {
        match name {
            "views" => self.views,
            "hits" => self.hits,
            "engaged_seconds" => self.engaged,
            "entries" => self.entries,
            "exits" => self.exits,
            "visitors" => self.visitors,
            // Ranked in milliseconds per visitor.
            "avg_engaged_seconds" if self.visitors > 0 => self.engaged * 1000 / self.visitors,
            "avg_engaged_seconds" => 0,
            _ => unreachable!("{name}"),
        }
    }

    fn avg_engaged(&self) -> Value {
        if self.visitors == 0 {
            Value::Null
        } else {
            json!(self.engaged as f64 / self.visitors as f64)
        }
    }
}

/// A top list of urls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    /// `dim=url`: `{"key","views"}`.
    Views,
    /// `dim=entry_page`: `{"key","entries"}`.
    Entry,
    /// `dim=exit_page`: `{"key","exits"}`.
    Exit,
    /// `dim=url&sort=…`: every metric per url, ranked by this one.
    Sort(&'static str),
}

impl List {
    const ALL: [List; 9] = [
        List::Views,
        List::Entry,
        List::Exit,
        List::Sort("views"),
        List::Sort("entries"),
        List::Sort("exits"),
        List::Sort("engaged_seconds"),
        List::Sort("visitors"),
        List::Sort("avg_engaged_seconds"),
    ];

    fn params(self) -> String {
        match self {
            List::Views => "dim=url".into(),
            List::Entry => "dim=entry_page".into(),
            List::Exit => "dim=exit_page".into(),
            List::Sort(m) => format!("dim=url&sort={m}"),
        }
    }

    /// The metric it ranks by.
    fn metric(self) -> &'static str {
        match self {
            List::Views => "views",
            List::Entry => "entries",
            List::Exit => "exits",
            List::Sort(m) => m,
        }
    }

    /// Whether it ranks by entries or exits (its differences are counted as theirs).
    fn by_pages(self) -> bool {
        matches!(self.metric(), "entries" | "exits")
    }
}

/// What the server must answer once it has the events of some batches.
struct Model {
    evs: Vec<Ev>,
    visits: Vec<Visit>,
}

impl Model {
    fn new(evs: Vec<Ev>, tm: Timing) -> Model {
        let visits = visits_of(&evs.iter().collect::<Vec<_>>(), tm.gap());
        Model { evs, visits }
    }

    /// Totals of minutes [from, to) (visits by the minute they start).
    fn totals(&self, from: i64, to: i64, site: Option<&str>) -> Tot {
        let mut t = Tot::default();
        let mut vids = BTreeSet::new();
        let in_range = |m: i64, s: &str| (from..to).contains(&m) && site.is_none_or(|x| x == s);
        for e in self
            .evs
            .iter()
            .filter(|e| in_range(e.t.div_euclid(MIN_MS), e.site))
        {
            t.hits += 1;
            t.views += u64::from(e.kind == Kind::Pageview);
            t.engaged += e.engaged();
            if let Some(v) = &e.vid {
                vids.insert(v.as_str());
            }
        }
        t.uniques = vids.len() as u64;
        for v in self.visits.iter().filter(|v| in_range(v.minute, v.site)) {
            t.visits += 1;
            t.bounces += u64::from(v.bounce());
            t.visit_views += v.pageviews;
            t.duration_ms += v.duration_ms;
        }
        t
    }

    /// Every url's row over minutes [from, to).
    fn url_rows(&self, from: i64, to: i64, site: Option<&str>) -> BTreeMap<String, UrlRow> {
        let in_range = |m: i64, s: &str| (from..to).contains(&m) && site.is_none_or(|x| x == s);
        let mut rows: BTreeMap<String, UrlRow> = BTreeMap::new();
        let mut vids: BTreeSet<(String, &str)> = BTreeSet::new();
        for e in self
            .evs
            .iter()
            .filter(|e| in_range(e.t.div_euclid(MIN_MS), e.site))
        {
            let r = rows.entry(e.url()).or_default();
            r.hits += 1;
            r.views += u64::from(e.kind == Kind::Pageview);
            r.engaged += e.engaged();
            if let Some(v) = &e.vid {
                if vids.insert((e.url(), v.as_str())) {
                    r.visitors += 1;
                }
            }
        }
        for v in self.visits.iter().filter(|v| in_range(v.minute, v.site)) {
            if let Some(u) = &v.entry {
                rows.entry(u.clone()).or_default().entries += 1;
            }
            if let Some(u) = &v.exit {
                rows.entry(u.clone()).or_default().exits += 1;
            }
        }
        rows
    }

    /// The urls with `metric` > 0, by it descending then url ascending (bytewise), at most
    /// `limit`.
    fn ranked(
        &self,
        metric: &str,
        from: i64,
        to: i64,
        site: Option<&str>,
        limit: usize,
    ) -> Vec<(String, UrlRow)> {
        let mut v: Vec<(String, UrlRow)> = self
            .url_rows(from, to, site)
            .into_iter()
            .filter(|(_, r)| r.metric(metric) > 0)
            .collect();
        v.sort_by(|a, b| {
            b.1.metric(metric)
                .cmp(&a.1.metric(metric))
                .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
        });
        v.truncate(limit);
        v
    }

    fn top(&self, list: List, from: i64, to: i64, site: Option<&str>, limit: usize) -> Value {
        let items: Vec<Value> = self
            .ranked(list.metric(), from, to, site, limit)
            .into_iter()
            .map(|(k, r)| match list {
                List::Sort(_) => json!({
                    "key": k, "views": r.views, "hits": r.hits, "engaged_seconds": r.engaged,
                    "entries": r.entries, "exits": r.exits, "visitors": r.visitors,
                    "avg_engaged_seconds": r.avg_engaged(), "visitors_sketched": false,
                }),
                _ => json!({"key": k, list.metric(): r.metric(list.metric())}),
            })
            .collect();
        let mut o = json!({
            "dim": match list {
                List::Entry => "entry_page",
                List::Exit => "exit_page",
                _ => "url",
            },
            "from": rfc(from), "to": rfc(to), "site": site, "items": items,
        });
        if let List::Sort(m) = list {
            o["sort"] = json!(m);
        }
        o
    }

    /// The fields of a summary or of a point.
    fn fields(t: &Tot, o: &mut Map<String, Value>) {
        let ratio = |n: f64| {
            if t.visits == 0 {
                Value::Null
            } else {
                json!(n / t.visits as f64)
            }
        };
        o.insert("views".into(), json!(t.views));
        o.insert("hits".into(), json!(t.hits));
        o.insert("uniques".into(), json!(t.uniques));
        o.insert("engaged_seconds".into(), json!(t.engaged));
        o.insert("visits".into(), json!(t.visits));
        o.insert("bounces".into(), json!(t.bounces));
        o.insert("visit_views".into(), json!(t.visit_views));
        o.insert("bounce_rate".into(), ratio(t.bounces as f64));
        o.insert("views_per_visit".into(), ratio(t.visit_views as f64));
        o.insert(
            "visit_duration".into(),
            ratio(t.duration_ms as f64 / 1000.0),
        );
    }

    fn summary(&self, from: i64, to: i64, site: Option<&str>) -> Value {
        let mut o = Map::new();
        o.insert("from".into(), json!(rfc(from)));
        o.insert("to".into(), json!(rfc(to)));
        o.insert("site".into(), json!(site));
        Self::fields(&self.totals(from, to, site), &mut o);
        o.insert(
            "top_urls".into(),
            self.top(List::Views, from, to, site, 10)["items"].clone(),
        );
        Value::Object(o)
    }

    /// A url's series: its views, hits, engaged seconds and distinct visitors (`uniques`)
    /// per point; no visit figures.
    fn url_series(&self, from: i64, to: i64, step: i64, url: &str) -> Value {
        let points: Vec<Value> = (from..to)
            .step_by(step as usize)
            .map(|t| {
                let r = self
                    .url_rows(t, (t + step).min(to), None)
                    .remove(url)
                    .unwrap_or_default();
                let mut o = json!({
                    "t": rfc(t), "views": r.views, "hits": r.hits, "uniques": r.visitors,
                    "engaged_seconds": r.engaged,
                });
                for k in VISIT_KEYS {
                    o[k] = Value::Null;
                }
                o
            })
            .collect();
        json!({
            "step": step_name(step), "from": rfc(from), "to": rfc(to), "site": null,
            "url": url, "points": points,
        })
    }

    /// `POST /v1/query`'s visits by channel, as [`Query::Channels`] reshapes the answer:
    /// per channel of a pageview in the range or of a visit starting in it, its pageviews and
    /// what the visits entering on its pageviews add.
    fn channels(&self, from: i64, to: i64, site: Option<&str>, only: Option<&str>) -> Value {
        let in_range = |m: i64, s: &str| (from..to).contains(&m) && site.is_none_or(|x| x == s);
        let mut rows: BTreeMap<&str, Tot> = BTreeMap::new();
        for e in self
            .evs
            .iter()
            .filter(|e| e.kind == Kind::Pageview && in_range(e.t.div_euclid(MIN_MS), e.site))
        {
            rows.entry(e.channel).or_default().views += 1;
        }
        for v in self.visits.iter().filter(|v| in_range(v.minute, v.site)) {
            if let Some(c) = v.entry_channel {
                let t = rows.entry(c).or_default();
                t.visits += 1;
                t.bounces += u64::from(v.bounce());
                t.visit_views += v.pageviews;
                t.duration_ms += v.duration_ms;
            }
        }
        let rows: Map<String, Value> = rows
            .into_iter()
            .filter(|(c, _)| only.is_none_or(|o| o == *c))
            .map(|(c, t)| {
                let mut o = Map::new();
                Self::fields(&t, &mut o);
                for k in ["hits", "uniques", "engaged_seconds", "visit_views"] {
                    o.remove(k);
                }
                (c.to_string(), Value::Object(o))
            })
            .collect();
        json!({ "channels": rows })
    }

    fn series(&self, from: i64, to: i64, step: i64, site: Option<&str>) -> Value {
        let points: Vec<Value> = (from..to)
            .step_by(step as usize)
            .map(|t| {
                let mut o = Map::new();
                o.insert("t".into(), json!(rfc(t)));
                Self::fields(&self.totals(t, (t + step).min(to), site), &mut o);
                Value::Object(o)
            })
            .collect();
        json!({
            "step": step_name(step), "from": rfc(from), "to": rfc(to), "site": site,
            "url": null, "points": points,
        })
    }
}

fn step_name(step: i64) -> &'static str {
    match step {
        1 => "1m",
        60 => "1h",
        _ => unreachable!("the test asks for 1m and 1h only"),
    }
}

// ---------------------------------------------------------------------------------------------
// Line rendering (the line formats of aggregates.rs; times and escapes from common::model),
// written here rather than borrowed from pixeld.
// ---------------------------------------------------------------------------------------------

/// The paths of the three sites, and how often a page is one of them.
const PATHS: [(&str, u32); 8] = [
    ("/", 30),
    ("/products/1", 16),
    ("/products/2", 9),
    ("/blog/post-3", 12),
    ("/docs/guide/ch4", 5),
    ("/News/Story-5", 10),
    ("/pricing", 14),
    ("/café/menü", 4),
];

fn any_path(rng: &mut SmallRng) -> &'static str {
    let total: u32 = PATHS.iter().map(|p| p.1).sum();
    let mut x = rng.gen_range(0..total);
    for (p, w) in PATHS {
        if x < w {
            return p;
        }
        x -= w;
    }
    unreachable!()
}

/// The line of `e`: an application's JSON line (`msec` or `ts`, `a` or `action`) or the line
/// `/p.gif` stores (encoded url and referrer, string `inc`), as aggregates.rs writes them;
/// sets `e.channel` to the channel its referrer and tags make, by the README's rules: a
/// `utm_source=newsletter` tag is email whatever the referrer, else no referrer is direct,
/// Google search, the page's own host internal and t.co social.
fn render(rng: &mut SmallRng, e: &mut Ev) -> Vec<u8> {
    let pixel = rng.gen_bool(0.25);
    let host = if rng.gen_bool(0.05) {
        e.site.to_ascii_uppercase()
    } else {
        e.site.to_string()
    };
    let suffix = match rng.gen_range(0..10) {
        0 => "?utm_source=newsletter",
        1 => "#top",
        _ => "",
    };
    let scheme = if rng.gen_bool(0.03) { "HTTPS" } else { "https" };
    let url = format!("{scheme}://{host}{}{suffix}", e.path);
    let referrer = match rng.gen_range(0..4) {
        0 => None,
        1 => Some("https://www.google.com/search?q=pixel analytics".to_string()),
        2 => Some(format!("https://{}/", e.site)),
        _ => Some("https://t.co/AbC123".to_string()),
    };
    e.channel = match (suffix, &referrer) {
        ("?utm_source=newsletter", _) => "email",
        (_, None) => "direct",
        (_, Some(r)) if r.contains("google") => "search",
        (_, Some(r)) if r.contains("t.co") => "social",
        (_, Some(_)) => "internal",
    };
    let shown = |s: &str| if pixel { enc(s) } else { s.to_string() };
    let mut f: Vec<(&str, String)> = Vec::new();
    if pixel || rng.gen_bool(0.7) {
        f.push(("msec", msec(e.t)));
    } else {
        f.push(("ts", js(&ts_z(e.t))));
    }
    f.push(("url", js(&shown(&url))));
    if let Some(r) = referrer {
        f.push(("urlref", js(&shown(&r))));
    }
    if let Some(v) = &e.vid {
        f.push(("vid", js(v)));
    }
    let key = if pixel || rng.gen_bool(0.5) {
        "action"
    } else {
        "a"
    };
    match e.kind {
        Kind::Pageview => {
            if let Some(a) = [None, Some(""), Some("pageview"), Some("pv")][rng.gen_range(0..4)] {
                f.push((key, js(a)));
            }
        }
        Kind::Heartbeat => f.push((key, js(["hb", "heartbeat"][rng.gen_range(0..2)]))),
        Kind::Custom => {
            f.push((key, js("event")));
            f.push(("name", js("signup")));
        }
    }
    if let Some(i) = e.inc {
        f.push((
            "inc",
            if pixel {
                js(&i.to_string())
            } else {
                i.to_string()
            },
        ));
    }
    f.push(("ua", js("Mozilla/5.0 (Macintosh) Safari/605.1.15")));
    if pixel {
        f.push(("ip", js("198.51.100.7")));
    }
    let body: Vec<String> = f.iter().map(|(k, v)| format!("{}:{v}", js(k))).collect();
    format!("{{{}}}", body.join(",")).into_bytes()
}

// ---------------------------------------------------------------------------------------------
// The scenario.
// ---------------------------------------------------------------------------------------------

/// Builds events at nominal offsets from the start of the eligible span.
#[derive(Clone, Copy)]
struct At {
    /// The start of the span: send time - the span.
    w: i64,
    tm: Timing,
}

impl At {
    #[allow(clippy::too_many_arguments)]
    fn ev(
        self,
        off: i64,
        kind: Kind,
        inc: Option<i64>,
        site: &'static str,
        path: &'static str,
        vid: Option<&str>,
        batch: u8,
    ) -> Ev {
        assert!((0..=LAST_OFF).contains(&off), "offset {off}");
        Ev {
            t: self.w + off / self.tm.div,
            kind,
            inc,
            site,
            path,
            vid: vid.map(str::to_string),
            too_late: false,
            batch,
            channel: "",
        }
    }

    /// An event `ago_ms` (real time, at least [`TOO_LATE_MS`]) before the send: too late for
    /// visits.
    #[allow(clippy::too_many_arguments)]
    fn late(
        self,
        ago_ms: i64,
        kind: Kind,
        inc: Option<i64>,
        site: &'static str,
        path: &'static str,
        vid: Option<&str>,
        batch: u8,
    ) -> Ev {
        assert!(ago_ms >= TOO_LATE_MS);
        Ev {
            t: self.w + self.tm.span() - ago_ms,
            kind,
            inc,
            site,
            path,
            vid: vid.map(str::to_string),
            too_late: true,
            batch,
            channel: "",
        }
    }
}

/// A hand-built edge case: one visitor's events and the visits it must make on [`EDGE`] once
/// batches 1, 1-2 and 1-3 are in: (visits, bounces, pageviews of the visits, sum of their
/// durations in nominal ms), and, when given, each visit's entry and exit page by start
/// (`"/entry>/exit"`, `-` for a visit without pageviews, separated by spaces).
struct Case {
    vid: &'static str,
    evs: Vec<Ev>,
    want: [(u64, u64, u64, i64); 3],
    ends: Option<[&'static str; 3]>,
}

fn edge_cases(at: At) -> Vec<Case> {
    use Kind::{Custom as C, Heartbeat as H, Pageview as P};
    // The visit cases' events take the sites' paths in turn.
    let next_path = std::cell::Cell::new(0);
    let e = |vid: &'static str, v: &[(i64, Kind, Option<i64>, u8)]| -> Vec<Ev> {
        v.iter()
            .map(|&(off, k, inc, b)| {
                let path = PATHS[next_path.get() % PATHS.len()].0;
                next_path.set(next_path.get() + 1);
                at.ev(off, k, inc, EDGE, path, Some(vid), b)
            })
            .collect()
    };
    let same = |w: (u64, u64, u64, i64)| [w, w, w];
    let c = |vid: &'static str, v: &[(i64, Kind, Option<i64>, u8)], want| Case {
        vid,
        evs: e(vid, v),
        want,
        ends: None,
    };
    // The entry and exit page cases: every event with its path.
    let pc =
        |vid: &'static str, v: &[(i64, Kind, Option<i64>, &'static str, u8)], want, ends| Case {
            vid,
            evs: v
                .iter()
                .map(|&(off, k, inc, path, b)| at.ev(off, k, inc, EDGE, path, Some(vid), b))
                .collect(),
            want,
            ends: Some(ends),
        };
    let mut cases = vec![
        // Two bounces 140 s apart, joined by a heartbeat arriving last.
        c(
            "edge-join",
            &[
                (5_000, P, None, 1),
                (145_000, P, None, 1),
                (75_000, H, Some(3), 2),
            ],
            [(2, 2, 2, 0), (1, 0, 2, 140_000), (1, 0, 2, 140_000)],
        ),
        // A bounce extended backwards by an earlier pageview arriving last: the visit now
        // starts a minute earlier and is no bounce.
        c(
            "edge-extend",
            &[
                (100_000, P, None, 1),
                (105_000, H, Some(4), 1),
                (40_000, P, None, 2),
            ],
            [(1, 1, 1, 5_000), (1, 0, 2, 65_000), (1, 0, 2, 65_000)],
        ),
        // Gaps near visit_gap, on both sides.
        c(
            "edge-gap100",
            &[(10_000, P, None, 1), (110_000, P, None, 1)],
            same((1, 0, 2, 100_000)),
        ),
        c(
            "edge-gap140",
            &[(3_000, P, None, 1), (143_000, P, None, 1)],
            same((2, 2, 2, 0)),
        ),
        c(
            "edge-gap118",
            &[(20_000, P, None, 1), (138_000, H, Some(20), 1)],
            same((1, 0, 1, 118_000)),
        ),
        c(
            "edge-gap122",
            &[(21_000, P, None, 1), (143_000, P, None, 1)],
            same((2, 2, 2, 0)),
        ),
        // A heartbeat after the gap is a visit of its own, without pageviews: no bounce.
        c(
            "edge-hbonly",
            &[(1_000, P, None, 1), (130_000, H, Some(15), 1)],
            same((2, 1, 1, 0)),
        ),
        // A custom event (with an `inc`) joins nothing and is engaged for nothing.
        c(
            "edge-custom",
            &[
                (2_000, P, None, 1),
                (70_000, C, Some(25), 1),
                (140_000, P, None, 1),
            ],
            same((2, 2, 2, 0)),
        ),
        // The bounce threshold and the engaged seconds of `inc`.
        c(
            "edge-b9",
            &[(30_000, P, None, 1), (40_000, H, Some(9), 1)],
            same((1, 1, 1, 10_000)),
        ),
        c(
            "edge-b10",
            &[(30_000, P, None, 1), (40_000, H, Some(10), 1)],
            same((1, 0, 1, 10_000)),
        ),
        c(
            "edge-bdefault",
            &[(30_000, P, None, 1), (40_000, H, None, 1)],
            same((1, 0, 1, 10_000)),
        ),
        c(
            "edge-b5x2",
            &[
                (30_000, P, None, 1),
                (40_000, H, Some(5), 1),
                (50_000, H, Some(5), 1),
            ],
            same((1, 0, 1, 20_000)),
        ),
        c(
            "edge-pvinc",
            &[(30_000, P, Some(30), 1)],
            same((1, 1, 1, 0)),
        ),
        c(
            "edge-b3601",
            &[(30_000, P, None, 1), (40_000, H, Some(3601), 1)],
            same((1, 0, 1, 10_000)),
        ),
        c(
            "edge-b0",
            &[(30_000, P, None, 1), (40_000, H, Some(0), 1)],
            same((1, 1, 1, 10_000)),
        ),
        c(
            "edge-2pv",
            &[(30_000, P, None, 1), (40_000, P, None, 1)],
            same((1, 0, 2, 10_000)),
        ),
        // A pageview and a heartbeat at the same millisecond.
        c(
            "edge-dup",
            &[(60_000, P, None, 1), (60_000, H, Some(15), 1)],
            same((1, 0, 1, 0)),
        ),
        // Visits open at the SIGTERM, joined, extended backwards and engaged after the restart
        // by events that arrive just before a SIGKILL.
        c(
            "edge-join-restart",
            &[
                (8_000, P, None, 1),
                (146_000, P, None, 1),
                (77_000, P, None, 3),
            ],
            [(2, 2, 2, 0), (2, 2, 2, 0), (1, 0, 3, 138_000)],
        ),
        c(
            "edge-extend-restart",
            &[
                (125_000, P, None, 1),
                (130_000, H, Some(6), 1),
                (65_000, P, None, 3),
            ],
            [(1, 1, 1, 5_000), (1, 1, 1, 5_000), (1, 0, 2, 65_000)],
        ),
        c(
            "edge-engaged-restart",
            &[(90_000, P, None, 1), (100_000, H, Some(12), 3)],
            [(1, 1, 1, 0), (1, 1, 1, 0), (1, 0, 1, 10_000)],
        ),
        // Entry and exit pages. An earlier pageview arriving late changes the entry page.
        pc(
            "page-entry-late",
            &[
                (60_000, P, None, "/landing", 1),
                (90_000, P, None, "/checkout", 1),
                (100_000, H, Some(5), "/checkout", 1),
                (20_000, P, None, "/Ads", 2),
            ],
            [(1, 0, 2, 40_000), (1, 0, 3, 80_000), (1, 0, 3, 80_000)],
            ["/landing>/checkout", "/Ads>/checkout", "/Ads>/checkout"],
        ),
        // A later pageview arriving late changes the exit page; a heartbeat after the last
        // pageview (on another url) does not.
        pc(
            "page-exit-late",
            &[
                (10_000, P, None, "/a", 1),
                (40_000, P, None, "/b", 1),
                (60_000, H, Some(12), "/heartbeat-page", 1),
                (95_000, P, None, "/thanks", 2),
            ],
            [(1, 0, 2, 50_000), (1, 0, 3, 85_000), (1, 0, 3, 85_000)],
            ["/a>/b", "/a>/thanks", "/a>/thanks"],
        ),
        // Two visits joined by a late heartbeat: two entries (and exits) become one.
        pc(
            "page-join",
            &[
                (5_000, P, None, "/one", 1),
                (145_000, P, None, "/two", 1),
                (75_000, H, Some(3), "/one", 2),
            ],
            [(2, 2, 2, 0), (1, 0, 2, 140_000), (1, 0, 2, 140_000)],
            ["/one>/one /two>/two", "/one>/two", "/one>/two"],
        ),
        // The same by a pageview arriving before a SIGKILL.
        pc(
            "page-join-restart",
            &[
                (8_000, P, None, "/x", 1),
                (146_000, P, None, "/y", 1),
                (77_000, P, None, "/z", 3),
            ],
            [(2, 2, 2, 0), (2, 2, 2, 0), (1, 0, 3, 138_000)],
            ["/x>/x /y>/y", "/x>/x /y>/y", "/x>/y"],
        ),
        // Pageviews of three urls in the same millisecond: the bytewise smallest enters
        // ("/B…" < "/a…" < "/b…"), the greatest leaves.
        pc(
            "page-same-ms",
            &[
                (60_000, P, None, "/b-page", 1),
                (60_000, P, None, "/B-page", 1),
                (60_000, P, None, "/a-page", 1),
            ],
            same((1, 0, 3, 0)),
            ["/B-page>/b-page", "/B-page>/b-page", "/B-page>/b-page"],
        ),
        // Late pageviews in the same millisecond as the entry (smaller: a new entry) and as
        // the exit (greater: a new exit; smaller: no change).
        pc(
            "page-same-ms-late",
            &[
                (30_000, P, None, "/q", 1),
                (90_000, P, None, "/r", 1),
                (30_000, P, None, "/p", 2),
                (90_000, P, None, "/s", 3),
                (90_000, P, None, "/o", 3),
            ],
            [(1, 0, 2, 60_000), (1, 0, 3, 60_000), (1, 0, 5, 60_000)],
            ["/q>/r", "/p>/r", "/p>/s"],
        ),
        // Heartbeats only: neither entry nor exit, until a pageview arrives late.
        pc(
            "page-hb-only",
            &[
                (20_000, H, Some(20), "/h", 1),
                (30_000, H, Some(20), "/h", 1),
                (50_000, P, None, "/late-first", 2),
            ],
            [(1, 0, 0, 10_000), (1, 0, 1, 30_000), (1, 0, 1, 30_000)],
            ["-", "/late-first>/late-first", "/late-first>/late-first"],
        ),
    ];
    // A visit whose heartbeat comes just before a minute boundary and its only pageview just
    // after: the entry and exit count in the minute before (where the visit starts), the view
    // in the minute after (when the span holds such a boundary).
    let boundary = (at.w + 10_000 / at.tm.div).div_euclid(MIN_MS) * MIN_MS + MIN_MS;
    let k = (boundary - at.w) * at.tm.div;
    let k = if k + 1_000 <= LAST_OFF { k } else { 75_000 };
    cases.push(pc(
        "page-across-minute",
        &[
            (k - 1_000, H, Some(3), "/before", 1),
            (k + 1_000, P, None, "/after", 1),
        ],
        same((1, 1, 1, 2_000)),
        ["/after>/after", "/after>/after", "/after>/after"],
    ));
    // The same visitor on two sites: visits are per site (one on shop, two here).
    let mut cross = e("edge-cross", &[(1_000, P, None, 1), (140_000, P, None, 1)]);
    cross.push(at.ev(70_000, P, None, SITES[0], "/", Some("edge-cross"), 1));
    cases.push(Case {
        vid: "edge-cross",
        evs: cross,
        want: same((2, 2, 2, 0)),
        ends: None,
    });
    // Too late for visits: counted as views, never as visits.
    cases.push(Case {
        vid: "edge-late",
        evs: vec![
            at.late(20 * MIN_MS, P, None, EDGE, "/late", Some("edge-late"), 1),
            at.late(
                19 * MIN_MS + 30_000,
                H,
                Some(20),
                EDGE,
                "/late",
                Some("edge-late"),
                3,
            ),
        ],
        want: same((0, 0, 0, 0)),
        ends: Some(["", "", ""]),
    });
    // A pageview too late for visits before a visit's only pageview: no new entry.
    let mut lateplus = e("edge-lateplus", &[(50_000, P, None, 1)]);
    lateplus.push(at.late(
        15 * MIN_MS,
        P,
        None,
        EDGE,
        "/too-late",
        Some("edge-lateplus"),
        2,
    ));
    cases.push(Case {
        vid: "edge-lateplus",
        evs: lateplus,
        want: same((1, 1, 1, 0)),
        ends: None,
    });
    cases
}

/// Whether no two consecutive eligible events of one visitor on one site (among those of
/// batches up to each of 1, 2, 3) are within [`BAND_MS`] (scaled) of `visit_gap`.
fn band_safe(evs: &[Ev], tm: Timing) -> bool {
    (1..=3).all(|upto| {
        let mut by: BTreeMap<(&str, &str), Vec<i64>> = BTreeMap::new();
        for e in evs.iter().filter(|e| e.batch <= upto && e.eligible()) {
            by.entry((e.vid.as_deref().unwrap(), e.site))
                .or_default()
                .push(e.t);
        }
        by.values_mut().all(|ts| {
            ts.sort_unstable();
            ts.windows(2)
                .all(|w| (w[1] - w[0] - tm.gap()).abs() > tm.band())
        })
    })
}

fn hb_inc(rng: &mut SmallRng) -> Option<i64> {
    if rng.gen_bool(0.2) {
        None
    } else {
        Some(rng.gen_range(5..=30))
    }
}

fn pv_inc(rng: &mut SmallRng) -> Option<i64> {
    rng.gen_bool(0.03).then_some(30)
}

/// One visitor of the three sites: a behaviour, decorations, and the batch of each event.
fn visitor_try(rng: &mut SmallRng, at: At, vid: &str) -> Vec<Ev> {
    use Kind::{Custom as C, Heartbeat as H, Pageview as P};
    let home_i = rng.gen_range(0..SITES.len());
    let home = SITES[home_i];
    let mut v: Vec<Ev> = Vec::new();
    // Paths are given below, once the events are in order.
    let ev = |off: i64, k: Kind, inc: Option<i64>, site: &'static str| {
        at.ev(off, k, inc, site, "", Some(vid), 1)
    };
    match rng.gen_range(0..100) {
        // A visit of several pages, with heartbeats in between.
        0..=44 => {
            let mut t = rng.gen_range(0..40_000);
            v.push(ev(t, P, pv_inc(rng), home));
            for _ in 0..rng.gen_range(1..8) {
                let g = match rng.gen_range(0..20) {
                    0 => 100_000,
                    1..=3 => rng.gen_range(60_000..=110_000),
                    _ => rng.gen_range(2_000..60_000),
                };
                if t + g > LAST_OFF {
                    break;
                }
                t += g;
                if rng.gen_bool(0.45) {
                    v.push(ev(t, H, hb_inc(rng), home));
                } else {
                    v.push(ev(t, P, pv_inc(rng), home));
                }
            }
        }
        // One page, engaged for less or more than the bounce threshold.
        45..=64 => {
            let mut t = rng.gen_range(0..120_000);
            v.push(ev(t, P, pv_inc(rng), home));
            let incs: Vec<Option<i64>> = match rng.gen_range(0..7) {
                0 => vec![],
                1 => vec![Some(rng.gen_range(5..=9))],
                2 => vec![Some(rng.gen_range(10..=30))],
                3 => vec![None],
                4 => vec![Some(rng.gen_range(5..=9)), Some(rng.gen_range(5..=9))],
                5 => vec![Some(rng.gen_range(1..=4)), Some(rng.gen_range(1..=4))],
                _ => vec![Some(0)],
            };
            for inc in incs {
                t += rng.gen_range(3_000..25_000);
                if t > LAST_OFF {
                    break;
                }
                v.push(ev(t, H, inc, home));
            }
        }
        // A short visit, and a second one 125-140 s later.
        65..=79 => {
            let mut t = rng.gen_range(0..5_000);
            v.push(ev(t, P, pv_inc(rng), home));
            if rng.gen_bool(0.5) {
                t += rng.gen_range(2_000..10_000);
                v.push(ev(t, H, hb_inc(rng), home));
            }
            t += rng.gen_range(125_000..=(LAST_OFF - t).min(140_000));
            v.push(ev(t, P, pv_inc(rng), home));
            if LAST_OFF - t >= 1_000 && rng.gen_bool(0.5) {
                t += rng.gen_range(1_000..=(LAST_OFF - t).min(4_000));
                v.push(ev(t, H, hb_inc(rng), home));
            }
        }
        // Two sites, interleaved: visits are per site.
        80..=89 => {
            let other = SITES[(home_i + rng.gen_range(1..SITES.len())) % SITES.len()];
            let mut t = rng.gen_range(0..20_000);
            v.push(ev(t, P, None, home));
            let mut on_other = false;
            for _ in 0..rng.gen_range(2..6) {
                t += rng.gen_range(10_000..50_000);
                if t > LAST_OFF {
                    break;
                }
                let site = if rng.gen_bool(0.4) { other } else { home };
                let first_there = site == other && !on_other;
                on_other |= site == other;
                let k = if first_there || rng.gen_bool(0.5) {
                    P
                } else {
                    H
                };
                v.push(ev(t, k, if k == H { hb_inc(rng) } else { None }, site));
            }
        }
        // Two pageviews with a custom event between them, one visit or two.
        _ => {
            let t = rng.gen_range(0..10_000);
            v.push(ev(t, P, None, home));
            let g = if rng.gen_bool(0.5) {
                rng.gen_range(60_000..=115_000)
            } else {
                rng.gen_range(125_000..=LAST_OFF - t)
            };
            let inc = rng.gen_bool(0.5).then_some(25);
            v.push(ev(t + rng.gen_range(1_000..g), C, inc, home));
            v.push(ev(t + g, P, None, home));
        }
    }
    // Decorations: a custom event during the visits, an event too late for visits.
    if rng.gen_bool(0.12) {
        let nominal = |e: &Ev| (e.t - at.w) * at.tm.div;
        let (a, b) = (nominal(&v[0]), nominal(&v[v.len() - 1]));
        v.push(ev(rng.gen_range(a..=b), C, None, home));
    }
    if rng.gen_bool(0.1) {
        let k = [P, H, C][rng.gen_range(0..3)];
        let inc = if k == H { hb_inc(rng) } else { None };
        let ago = rng.gen_range(TOO_LATE_MS..=60 * MIN_MS);
        v.push(at.late(ago, k, inc, home, "", Some(vid), rng.gen_range(1..=3)));
    }
    // Paths: a pageview's at random, a heartbeat's that of the pageview before it on its
    // site (if any), a custom event's at random; now and then two pageviews share their
    // millisecond.
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by_key(|&i| v[i].t);
    let mut current: BTreeMap<&str, &'static str> = BTreeMap::new();
    for i in order {
        let path = match v[i].kind {
            Kind::Heartbeat if !v[i].too_late && current.contains_key(v[i].site) => {
                current[v[i].site]
            }
            _ => any_path(rng),
        };
        v[i].path = path;
        if v[i].kind == Kind::Pageview && !v[i].too_late {
            current.insert(v[i].site, path);
        }
    }
    if rng.gen_bool(0.05) {
        if let Some(i) = v
            .iter()
            .position(|e| e.kind == Kind::Pageview && !e.too_late)
        {
            let mut twin = v[i].clone();
            twin.path = any_path(rng);
            v.push(twin);
        }
    }
    // Some visitors' later events arrive late: after the bulk, or after the restart.
    let first = v.iter().filter(|e| !e.too_late).map(|e| e.t).min().unwrap();
    let (batch, min_off) = match rng.gen_range(0..100) {
        0..=11 => (2, 40_000),
        12..=23 => (3, 70_000),
        _ => (1, 0),
    };
    for e in v.iter_mut().filter(|e| !e.too_late) {
        if batch > 1 && e.t != first && (e.t - at.w) * at.tm.div >= min_off {
            e.batch = batch;
        }
    }
    v
}

struct Scenario {
    tm: Timing,
    /// Every event and its line.
    lines: Vec<(Ev, Vec<u8>)>,
    cases: Vec<Case>,
}

impl Scenario {
    /// The lines of batch `b`, in the order they are sent.
    fn batch(&self, b: u8) -> Vec<&[u8]> {
        self.lines
            .iter()
            .filter(|(e, _)| e.batch == b)
            .map(|(_, l)| l.as_slice())
            .collect()
    }

    /// The model once batches 1..=upto are in.
    fn model(&self, upto: u8) -> Model {
        Model::new(
            self.lines
                .iter()
                .filter(|(e, _)| e.batch <= upto)
                .map(|(e, _)| e.clone())
                .collect(),
            self.tm,
        )
    }

    /// The earliest time of an event of batch `b` that takes part in visits.
    fn earliest_eligible(&self, b: u8) -> Option<i64> {
        self.lines
            .iter()
            .filter(|(e, _)| e.batch == b && e.eligible())
            .map(|(e, _)| e.t)
            .min()
    }
}

/// The whole scenario, for a send at `send_ms`, after the warm-up line `warm` (batch 0).
fn scenario(seed: u64, send_ms: i64, tm: Timing, warm: (Ev, Vec<u8>)) -> Scenario {
    use Kind::{Custom as C, Heartbeat as H, Pageview as P};
    let mut rng = SmallRng::seed_from_u64(seed);
    let at = At {
        w: send_ms - tm.span(),
        tm,
    };
    let cases = edge_cases(at);
    let mut evs: Vec<Ev> = cases.iter().flat_map(|c| c.evs.iter().cloned()).collect();
    // Hits without a visitor id, on the edge site too.
    evs.push(at.ev(80_000, P, None, EDGE, "/anonymous", None, 1));
    evs.push(at.ev(81_000, H, None, EDGE, "/anonymous", None, 3));
    for i in 0..80 {
        let site = SITES[rng.gen_range(0..SITES.len())];
        let k = [P, P, H, C][i % 4];
        let inc = if k == H { hb_inc(&mut rng) } else { None };
        let path = any_path(&mut rng);
        evs.push(if i % 8 == 7 {
            at.late(
                rng.gen_range(TOO_LATE_MS..=60 * MIN_MS),
                k,
                inc,
                site,
                path,
                None,
                1,
            )
        } else {
            let off = rng.gen_range(0..=LAST_OFF);
            at.ev(off, k, inc, site, path, None, rng.gen_range(1..=3))
        });
    }
    // The visitors of the three sites.
    for i in 0..480u32 {
        let vid = format!("v{:08x}", i.wrapping_mul(2_654_435_761));
        let v = loop {
            let v = visitor_try(&mut rng, at, &vid);
            if band_safe(&v, tm) {
                break v;
            }
        };
        evs.extend(v);
    }
    // What the model and the timing rely on.
    assert!(
        band_safe(&evs, tm),
        "a gap within the band around visit_gap"
    );
    for e in &evs {
        let ago = send_ms - e.t;
        assert!(
            if e.too_late {
                (TOO_LATE_MS..=60 * MIN_MS).contains(&ago)
            } else {
                (500 / tm.div..=tm.span()).contains(&ago)
            },
            "{e:?}"
        );
    }
    let vids: BTreeSet<&str> = evs.iter().filter_map(|e| e.vid.as_deref()).collect();
    assert!(vids.len() < 1000, "uniques stay exact");
    evs.shuffle(&mut rng);
    let lines = std::iter::once(warm)
        .chain(evs.into_iter().map(|mut e| {
            let l = render(&mut rng, &mut e);
            (e, l)
        }))
        .collect();
    Scenario { tm, lines, cases }
}

/// The model reproduces the visits (and, where given, the entry and exit pages) written by
/// hand for every edge case.
fn check_cases(sc: &Scenario) {
    let div = sc.tm.div;
    let prefix = format!("https://{EDGE}");
    let page = |u: &Option<String>| match u {
        Some(u) => u.strip_prefix(&prefix).unwrap().to_string(),
        None => "-".to_string(),
    };
    for upto in 1..=3u8 {
        let m = sc.model(upto);
        for c in &sc.cases {
            let mut got = (0, 0, 0, 0);
            let mut vs: Vec<&Visit> = m
                .visits
                .iter()
                .filter(|v| v.vid == c.vid && v.site == EDGE)
                .collect();
            vs.sort_by_key(|v| v.first_ms);
            for v in &vs {
                got.0 += 1;
                got.1 += u64::from(v.bounce());
                got.2 += v.pageviews;
                got.3 += v.duration_ms;
            }
            let w = c.want[usize::from(upto) - 1];
            assert_eq!(
                got,
                (w.0, w.1, w.2, w.3 / div),
                "the model's visits of {} after batch {upto}",
                c.vid
            );
            if let Some(ends) = c.ends {
                let got: Vec<String> = vs
                    .iter()
                    .map(|v| match (&v.entry, &v.exit) {
                        (None, None) => "-".to_string(),
                        (a, b) => format!("{}>{}", page(a), page(b)),
                    })
                    .collect();
                assert_eq!(
                    got.join(" "),
                    ends[usize::from(upto) - 1],
                    "the model's entry and exit pages of {} after batch {upto}",
                    c.vid
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Queries and comparing answers.
// ---------------------------------------------------------------------------------------------

enum Query {
    Summary {
        from: i64,
        to: i64,
        site: Option<&'static str>,
    },
    Series {
        from: i64,
        to: i64,
        step: i64,
        site: Option<&'static str>,
    },
    Top {
        list: List,
        from: i64,
        to: i64,
        site: Option<&'static str>,
        limit: usize,
    },
    UrlSeries {
        from: i64,
        to: i64,
        step: i64,
        url: String,
    },
    /// `GET /v1/query?q=` of views and the visit metrics by channel (`only`: filtered by
    /// one channel).
    Channels {
        from: i64,
        to: i64,
        site: Option<&'static str>,
        only: Option<&'static str>,
    },
}

/// The metrics [`Query::Channels`] asks for, in order.
const CHANNEL_METRICS: [&str; 6] = [
    "views",
    "visits",
    "bounces",
    "bounce_rate",
    "visit_duration",
    "views_per_visit",
];

impl Query {
    fn path(&self) -> String {
        let sq = |s: &Option<&str>| s.map(|s| format!("&site={s}")).unwrap_or_default();
        match self {
            Query::Summary { from, to, site } => {
                format!("/v1/summary?from={}&to={}{}", from * 60, to * 60, sq(site))
            }
            Query::Series {
                from,
                to,
                step,
                site,
            } => format!(
                "/v1/timeseries?from={}&to={}&step={}{}",
                from * 60,
                to * 60,
                step_name(*step),
                sq(site)
            ),
            Query::Top {
                list,
                from,
                to,
                site,
                limit,
            } => format!(
                "/v1/top?{}&from={}&to={}&limit={limit}{}",
                list.params(),
                from * 60,
                to * 60,
                sq(site)
            ),
            Query::UrlSeries {
                from,
                to,
                step,
                url,
            } => {
                let q: String = url
                    .bytes()
                    .map(|b| match b {
                        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                format!(
                    "/v1/timeseries?from={}&to={}&step={}&url={q}",
                    from * 60,
                    to * 60,
                    step_name(*step)
                )
            }
            Query::Channels {
                from,
                to,
                site,
                only,
            } => {
                let mut q = json!({
                    "metrics": CHANNEL_METRICS, "dimensions": ["channel"],
                    "date_range": [from * 60, to * 60], "site": site,
                });
                if let Some(c) = only {
                    q["filters"] = json!([["is", "channel", [c]]]);
                }
                format!("/v1/query?q={}", enc(&q.to_string()))
            }
        }
    }

    /// The answer as the model's shape: for [`Query::Channels`], `{"channels": {channel:
    /// {metric: value}}}` and its completeness.
    fn reshape(&self, got: Value) -> Value {
        if !matches!(self, Query::Channels { .. }) {
            return got;
        }
        let mut rows = Map::new();
        for r in got["results"].as_array().into_iter().flatten() {
            let key = r["dimensions"][0].as_str().unwrap_or_default().to_string();
            let o: Map<String, Value> = CHANNEL_METRICS
                .iter()
                .zip(r["metrics"].as_array().into_iter().flatten())
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            rows.insert(key, Value::Object(o));
        }
        json!({
            "channels": rows, "complete": got["complete"],
            "catchup_records": got["catchup_records"],
        })
    }

    /// The list it asks for, if a top list.
    fn list(&self) -> Option<List> {
        match self {
            Query::Top { list, .. } => Some(*list),
            _ => None,
        }
    }

    fn want(&self, m: &Model) -> Value {
        match *self {
            Query::Summary { from, to, site } => m.summary(from, to, site),
            Query::Series {
                from,
                to,
                step,
                site,
            } => m.series(from, to, step, site),
            Query::Top {
                list,
                from,
                to,
                site,
                limit,
            } => m.top(list, from, to, site, limit),
            Query::UrlSeries {
                from,
                to,
                step,
                ref url,
            } => m.url_series(from, to, step, url),
            Query::Channels {
                from,
                to,
                site,
                only,
            } => m.channels(from, to, site, only),
        }
    }
}

/// The queries, for a send at `send_ms`.
fn queries(send_ms: i64, tm: Timing) -> Vec<Query> {
    let send_min = send_ms.div_euclid(MIN_MS);
    let (from, to) = (send_min - 62, send_min + 2);
    // The minute of the earliest event that may take part in visits.
    let span_min = (send_ms - tm.span()).div_euclid(MIN_MS);
    let mut sites: Vec<Option<&'static str>> = vec![None, Some(EDGE)];
    sites.extend(SITES.iter().map(|s| Some(*s)));
    let mut qs = Vec::new();
    for &site in &sites {
        for only in [None, Some("search"), Some("internal")] {
            qs.push(Query::Channels {
                from,
                to,
                site,
                only,
            });
        }
        qs.push(Query::Summary { from, to, site });
        qs.push(Query::Series {
            from,
            to,
            step: 1,
            site,
        });
    }
    qs.push(Query::Summary {
        from,
        to,
        site: Some("nonexistent.example"),
    });
    // Parts of the range: visits count in the minute they start only; a range with nothing
    // but events too late for visits has views and no visits.
    for (a, b) in [
        (span_min, span_min + 1),
        (span_min + 1, send_min + 1),
        (send_min - 1, send_min + 1),
        (from, send_min - 5),
    ]
    .into_iter()
    .filter(|(a, b)| a < b)
    {
        for site in [None, Some(EDGE), Some(SITES[1])] {
            qs.push(Query::Summary {
                from: a,
                to: b,
                site,
            });
        }
    }
    let (h_from, h_to) = (from.div_euclid(60) * 60, (to + 59).div_euclid(60) * 60);
    for site in [None, Some(EDGE), Some(SITES[0])] {
        qs.push(Query::Series {
            from: h_from,
            to: h_to,
            step: 60,
            site,
        });
    }
    // A url's series: its distinct visitors per minute and per hour.
    for (site, path) in [(SITES[0], "/"), (SITES[1], "/products/1"), (EDGE, "/")] {
        for (a, b, step) in [(from, to, 1), (h_from, h_to, 60)] {
            qs.push(Query::UrlSeries {
                from: a,
                to: b,
                step,
                url: format!("https://{site}{path}"),
            });
        }
    }
    // Top lists of urls, entry and exit pages: every key, and the first three (the ranking's
    // cut); and by minute (entries and exits count in the minute a visit starts, views in
    // their own), the span in two parts, a range of events too late for visits only.
    for &site in &sites {
        for list in List::ALL {
            for limit in [1000, 3] {
                qs.push(Query::Top {
                    list,
                    from,
                    to,
                    site,
                    limit,
                });
            }
        }
    }
    let mut parts: Vec<(i64, i64)> = (span_min..=send_min).map(|m| (m, m + 1)).collect();
    parts.extend([(span_min + 1, send_min + 1), (from, send_min - 5)]);
    for (a, b) in parts.into_iter().filter(|(a, b)| a < b) {
        for site in [None, Some(EDGE)] {
            for list in List::ALL {
                qs.push(Query::Top {
                    list,
                    from: a,
                    to: b,
                    site,
                    limit: 1000,
                });
            }
            qs.push(Query::Channels {
                from: a,
                to: b,
                site,
                only: None,
            });
        }
    }
    qs
}

/// Differences from the model: those of the fields the server has without visits, those of
/// the visit fields, and those of entry and exit pages (`entries`, `exits`, and every
/// difference of a list ranked by them: a wrong ranking shows in its other metrics too).
#[derive(Default)]
struct Errs {
    base: Vec<String>,
    visit: Vec<String>,
    page: Vec<String>,
    /// The answer compared is a list ranked by entries or exits.
    by_pages: bool,
}

impl Errs {
    fn push(&mut self, key: &str, msg: String) {
        if VISIT_KEYS.contains(&key) {
            self.visit.push(msg);
        } else if PAGE_KEYS.contains(&key) || self.by_pages {
            self.page.push(msg);
        } else {
            self.base.push(msg);
        }
    }
}

/// Whether the keys of the object `got` (but the completeness fields) are those of `want`,
/// for a top list and its items; the differences go to `out`.
fn same_keys(path: &str, got: &Value, want: &Value, out: &mut Errs) {
    let keys = |v: &Value| -> BTreeSet<String> {
        v.as_object()
            .map(|o| {
                o.keys()
                    .filter(|k| !["complete", "catchup_records"].contains(&k.as_str()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let (g, w) = (keys(got), keys(want));
    if g != w {
        out.push(
            "key",
            format!("{path}: fields {g:?}, expected {w:?} (got {got})"),
        );
    }
    if let (Some(gi), Some(wi)) = (got["items"].as_array(), want["items"].as_array()) {
        for (i, (gv, wv)) in gi.iter().zip(wi).enumerate() {
            let (g, w) = (keys(gv), keys(wv));
            if g != w {
                out.push(
                    "key",
                    format!("{path}.items[{i}]: fields {g:?}, expected {w:?}"),
                );
            }
        }
    }
}

/// Differences of `got` from `want`, in the fields `want` has; the visit ratios within 1e-6
/// (relative above 1), null when there are no visits.
fn diff(path: &str, key: &str, got: &Value, want: &Value, out: &mut Errs) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            for (k, wv) in w {
                let p = format!("{path}.{k}");
                match g.get(k) {
                    None => out.push(k, format!("{p}: missing (expected {wv})")),
                    Some(gv) => diff(&p, k, gv, wv, out),
                }
            }
        }
        (Value::Array(g), Value::Array(w)) => {
            if g.len() != w.len() {
                out.push(
                    key,
                    format!("{path}: {} entries, expected {}", g.len(), w.len()),
                );
            }
            for (i, (gv, wv)) in g.iter().zip(w).enumerate() {
                diff(&format!("{path}[{i}]"), key, gv, wv, out);
            }
        }
        _ if FLOAT_KEYS.contains(&key) => {
            let ok = match (got.as_f64(), want.as_f64()) {
                (Some(g), Some(w)) => (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                _ => got.is_null() && want.is_null(),
            };
            if !ok {
                out.push(key, format!("{path}: got {got}, expected {want}"));
            }
        }
        _ => {
            if got != want {
                out.push(key, format!("{path}: got {got}, expected {want}"));
            }
        }
    }
}

/// Runs every query on `s` and records the differences from `m` (a few per query).
fn check(what: &str, s: &Server, m: &Model, qs: &[Query], errs: &mut Errs) {
    for q in qs {
        let query = q.path();
        let (st, body) = get(s, &query);
        let new_list = q.list().is_some_and(|l| l != List::Views);
        if st != 200 {
            let all = if new_list {
                &mut errs.page
            } else {
                &mut errs.base
            };
            all.push(format!(
                "{what} {query}: status {st}: {}",
                String::from_utf8_lossy(&body)
            ));
            continue;
        }
        let got: Value = q.reshape(serde_json::from_slice(&body).unwrap());
        let want = q.want(m);
        let mut d = Errs {
            by_pages: q.list().is_some_and(List::by_pages),
            ..Errs::default()
        };
        if (got.get("complete"), got.get("catchup_records"))
            != (Some(&Value::Bool(true)), Some(&Value::from(0u64)))
        {
            d.base.push(format!(
                "not complete: {:?} {:?}",
                got.get("complete"),
                got.get("catchup_records")
            ));
        }
        if q.list().is_some() {
            same_keys("", &got, &want, &mut d);
        }
        if matches!(q, Query::Channels { .. }) {
            // Every row the model has, and no other.
            same_keys(".channels", &got["channels"], &want["channels"], &mut d);
        }
        diff("", "", &got, &want, &mut d);
        for (all, mine) in [
            (&mut errs.base, d.base),
            (&mut errs.visit, d.visit),
            (&mut errs.page, d.page),
        ] {
            if !mine.is_empty() {
                let n = mine.len();
                all.push(format!(
                    "{what} {query}: {n} differences, e.g.\n    {}",
                    mine[..n.min(6)].join("\n    ")
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Talking to the server.
// ---------------------------------------------------------------------------------------------

fn now_ms() -> i64 {
    common::now_ms() as i64
}

fn start(data: &Path, shards: usize, tm: Timing) -> Server {
    let mut s = Server::builder()
        .data(data)
        .shards(shards)
        .config(&tm.config())
        .start();
    s.wait_complete();
    s
}

/// Posts `lines` in requests of at most `chunk` lines (200: durable), then checks that every
/// event of the batch that takes part in visits (the earliest stamped `earliest_eligible`)
/// arrived within the allowance (with a margin): otherwise the machine was too slow for the
/// scenario's arithmetic.
fn send(
    s: &Server,
    lines: &[&[u8]],
    chunk: usize,
    earliest_eligible: Option<i64>,
    tm: Timing,
    what: &str,
) {
    for c in lines.chunks(chunk) {
        common::post_ndjson(s.http, c.iter().copied());
    }
    let Some(earliest) = earliest_eligible else {
        return;
    };
    let late = now_ms() - earliest;
    assert!(
        late <= tm.allowance_ms - tm.arrival_margin_ms,
        "{what}: sent too slowly: an event meant to take part in visits arrived {late} ms \
         after its time, near or beyond the allowance ({} ms)",
        tm.allowance_ms
    );
}

/// One GET; status 0 when the connection closed without a complete response.
fn get(s: &Server, path: &str) -> (u16, Vec<u8>) {
    common::try_get(s.http, path)
}

fn m(mx: &BTreeMap<String, f64>, k: &str) -> u64 {
    mx.get(k).copied().unwrap_or(-1.0) as u64
}

/// Waits until `lines` lines are appended and aggregated (every one of this test's lines is)
/// and every shipped increment is applied.
fn wait_aggregated(s: &Server, lines: u64, what: &str) {
    let mx = common::wait_aggregated(s.http, lines, what);
    assert_eq!(
        m(&mx, "pixeld_agg_records_total{outcome=\"aggregated\"}"),
        lines,
        "{what}: lines not aggregated"
    );
}

fn stop(s: Server, sig: &str) {
    s.signal(sig);
    let (code, log) = s.wait();
    let want = if sig == "KILL" { None } else { Some(0) };
    assert_eq!(code, want, "pixeld after SIG{sig}:\n{log}");
}

/// Waits until no shard keeps a visitor any more (`pixeld_agg_visitors` 0: every visit
/// closed and forgotten), which the server does once the lowest receive clock (wall clock
/// less [`CLOCK_MARGIN_MS`]) passes `visit_gap` + `visit_late_allowance` after a visitor's
/// last event; fails after a generous minute more than that.
fn wait_closed(s: &Server, last_event_ms: i64, tm: Timing, what: &str) {
    let due = last_event_ms + tm.gap() + tm.allowance_ms + CLOCK_MARGIN_MS;
    let deadline = due + 60_000;
    loop {
        let kept = common::metric_sum(&common::metrics(s.http), "pixeld_agg_visitors");
        if kept == 0 {
            eprintln!(
                "{what}: every visitor forgotten {:.1} s after the last event ({:.1} s expected)",
                (now_ms() - last_event_ms) as f64 / 1000.0,
                (due - last_event_ms) as f64 / 1000.0
            );
            return;
        }
        assert!(
            now_ms() < deadline,
            "{what}: {kept} visitors still kept {} s after the last event, {} s after they were \
             due to be forgotten",
            (now_ms() - last_event_ms) / 1000,
            (now_ms() - due) / 1000
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario run.
// ---------------------------------------------------------------------------------------------

/// Runs the whole scenario against a `shards`-shard server at the nominal timing: the bulk,
/// the late arrivals, a restart, more late arrivals and a SIGKILL, a rebuild from the log.
///
/// With `linger`, at the [`FAST`] timing instead: the three batches at once, then waits
/// until every visit is closed and forgotten, and checks again live, after a SIGKILL and a
/// SIGTERM (restarts long after the allowance), and rebuilt from the log.
fn run(shards: usize, linger: bool) {
    let started = Instant::now();
    let tm = if linger { FAST } else { NOMINAL };
    let tag = format!(
        "[{shards} shard(s){}]",
        if linger { ", linger" } else { "" }
    );
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = start(&data, shards, tm);

    // A first request can be slow (a new log segment, a busy machine): one line (a view
    // without a visitor, half an hour ago) goes before the events are stamped.
    let warm_ev = Ev {
        t: now_ms() - 30 * MIN_MS,
        kind: Kind::Pageview,
        inc: None,
        site: EDGE,
        path: "/warm-up",
        vid: None,
        too_late: true,
        batch: 0,
        channel: "",
    };
    let mut warm_ev = warm_ev;
    let warm_line = render(&mut SmallRng::seed_from_u64(0), &mut warm_ev);
    send(&s, &[warm_line.as_slice()], 1, None, tm, &tag);
    wait_aggregated(&s, 1, &tag);

    let send_ms = now_ms();
    let sc = scenario(
        0x5EED_7157_0000 + shards as u64,
        send_ms,
        tm,
        (warm_ev, warm_line),
    );
    check_cases(&sc);
    let models = [sc.model(1), sc.model(2), sc.model(3)];
    let qs = queries(send_ms, tm);
    let n = |b: u8| sc.batch(b).len() as u64;
    let mut errs = Errs::default();
    let sent_all;

    if !linger {
        // The bulk, shuffled, in several requests.
        send(&s, &sc.batch(1), 400, sc.earliest_eligible(1), tm, &tag);
        wait_aggregated(&s, n(0) + n(1), &tag);
        check(&format!("{tag} bulk"), &s, &models[0], &qs, &mut errs);

        // Late arrivals that join and extend visits.
        send(&s, &sc.batch(2), 1000, sc.earliest_eligible(2), tm, &tag);
        wait_aggregated(&s, n(0) + n(1) + n(2), &tag);
        check(
            &format!("{tag} late arrivals"),
            &s,
            &models[1],
            &qs,
            &mut errs,
        );

        // SIGTERM and a restart: the same answers.
        stop(s, "TERM");
        s = start(&data, shards, tm);
        check(
            &format!("{tag} restarted after SIGTERM"),
            &s,
            &models[1],
            &qs,
            &mut errs,
        );

        // More late arrivals for visits open before the restart; SIGKILL as soon as they are
        // acknowledged (durable), so that the restart replays them.
        send(&s, &sc.batch(3), 1000, sc.earliest_eligible(3), tm, &tag);
        sent_all = Instant::now();
        stop(s, "KILL");
        s = start(&data, shards, tm);
        check(
            &format!("{tag} restarted after SIGKILL"),
            &s,
            &models[2],
            &qs,
            &mut errs,
        );
    } else {
        // The batches one right after the other (the allowance is short), each acknowledged
        // before the next: the late arrivals still join and extend visits.
        for b in 1..=3 {
            send(&s, &sc.batch(b), 400, sc.earliest_eligible(b), tm, &tag);
        }
        sent_all = Instant::now();
        wait_aggregated(&s, sc.lines.len() as u64, &tag);
        // The gauge is published now and then: wait until it shows the visitors kept.
        let deadline = Instant::now() + Duration::from_secs(30);
        while common::metric_sum(&common::metrics(s.http), "pixeld_agg_visitors") == 0 {
            assert!(
                Instant::now() < deadline,
                "{tag}: no visitor kept 30 s after the batches"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        check(&format!("{tag} all sent"), &s, &models[2], &qs, &mut errs);

        let last = sc
            .lines
            .iter()
            .filter(|(e, _)| e.eligible())
            .map(|(e, _)| e.t)
            .max()
            .unwrap();
        wait_closed(&s, last, tm, &tag);
        check(
            &format!("{tag} visits closed"),
            &s,
            &models[2],
            &qs,
            &mut errs,
        );
        stop(s, "KILL");
        s = start(&data, shards, tm);
        check(
            &format!("{tag} visits closed, restarted after SIGKILL"),
            &s,
            &models[2],
            &qs,
            &mut errs,
        );
        stop(s, "TERM");
        s = start(&data, shards, tm);
        check(
            &format!("{tag} visits closed, restarted after SIGTERM"),
            &s,
            &models[2],
            &qs,
            &mut errs,
        );
    }

    // The aggregates deleted and rebuilt from the log (its receive times judge lateness).
    stop(s, "TERM");
    std::fs::remove_dir_all(data.join("agg")).unwrap();
    let s = start(&data, shards, tm);
    check(
        &format!("{tag} rebuilt from the log"),
        &s,
        &models[2],
        &qs,
        &mut errs,
    );
    stop(s, "TERM");
    let (ok, report) = common::check_aggregates(&data, Some(&tm.config()));
    if !ok {
        errs.base
            .push(format!("{tag} pixeld check --aggregates failed:\n{report}"));
    }

    let all = &models[2];
    let t = all.totals(i64::MIN, i64::MAX, None);
    let rows = all.url_rows(i64::MIN, i64::MAX, None);
    eprintln!(
        "{tag} {} lines ({}+{}+{}), {} visits, {} bounces, {} urls ({} entered on, {} left \
         on), {} queries per check; the last batch acknowledged {:.1?} after the start, done \
         in {:.1?}",
        sc.lines.len() - 1,
        n(1),
        n(2),
        n(3),
        t.visits,
        t.bounces,
        rows.len(),
        rows.values().filter(|r| r.entries > 0).count(),
        rows.values().filter(|r| r.exits > 0).count(),
        qs.len(),
        sent_all.duration_since(started),
        started.elapsed()
    );
    let head = |v: &[String]| v.iter().take(40).cloned().collect::<Vec<_>>().join("\n");
    assert!(
        errs.base.is_empty() && errs.visit.is_empty() && errs.page.is_empty(),
        "{tag}: {} answers differ from the model in views, hits, uniques or engaged seconds:\n\
         {}\n\n{} answers differ from the model in the visit fields:\n{}\n\n{} answers differ \
         from the model in entry and exit pages:\n{}",
        errs.base.len(),
        head(&errs.base),
        errs.visit.len(),
        head(&errs.visit),
        errs.page.len(),
        head(&errs.page)
    );
}

#[test]
fn visits_match_the_model_1_shard() {
    run(1, false);
}

#[test]
fn visits_match_the_model_2_shards() {
    run(2, false);
}

#[test]
fn visits_match_the_model_3_shards() {
    run(3, false);
}

/// The same at twenty times the pace, waiting until every visit is closed and forgotten
/// (about 90 s: the receive clock runs a minute behind the wall clock), so that closing them
/// and restarts long after the allowance change nothing.
#[test]
fn visits_match_the_model_after_they_close() {
    run(2, true);
}
