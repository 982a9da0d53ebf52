//! The query API of real `pixeld serve` processes against an independent model of the event
//! spec: a seeded generator makes ~29 k realistic lines (Zipf urls over six sites, referrers
//! of every kind, heartbeats, late, out-of-order, future and too-old events, every timestamp
//! field, percent-encoded and upper-case urls, invalid UTF-8, unparsable lines) and, for each,
//! what the spec says it must count. The same lines go to a 1-shard and a 3-shard server over
//! HTTP, TCP and UDP; once the metrics show every line appended and aggregated, every query is
//! compared with the model (exact; uniques exact up to 1 536, else within 3 standard errors), the two servers with each other,
//! and each server with itself after a SIGTERM and a restart that rebuilds from the log.
//!
//! The truth is computed by construction here — the generator knows the site, url, referrer
//! domain, minute and counts of what it renders — never by pixeld's parser or aggregates. All
//! compared ranges are absolute (epoch seconds), so that the clock moving on during the test
//! changes nothing; `/v1/realtime` is relative and is checked against the range it reports.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::common::model::{civil, enc, js, msec, rfc, ts_z};
use crate::common::{self, Server};

// Servers fed the same lines at different times agree on visits only if no event is too late
// for them (receive time − event time above the allowance): the allowance covers every
// event this test aggregates. tests/query/visits.rs checks the allowance itself.
const CONFIG: &str = "[agg]\nminute_window = \"2h\"\nhour_window = \"3h\"\nday_window = \"1d\"\nvisit_late_allowance = \"7d\"\n";
const MIN_MS: i64 = 60_000;

// ---------------------------------------------------------------------------------------------
// The model: aggregated events and the counters the metrics must show.
// ---------------------------------------------------------------------------------------------

/// One event the spec says is aggregated, as the aggregates must see it.
#[derive(Debug, Clone)]
struct Ev {
    minute: i64,
    pv: bool,
    engaged: u64,
    site: String,
    url: String,
    ref_domain: String,
    vid: Option<String>,
}

/// What a line must do to the counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Counters {
    aggregated: u64,
    out_of_window: u64,
    no_timestamp: u64,
    invalid_utf8: u64,
    unparsed: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Http,
    Tcp,
    Udp,
}

struct Line {
    wire: Wire,
    bytes: Vec<u8>,
}

struct Generated {
    lines: Vec<Line>,
    /// NDJSON lines without any timestamp, sent in one request at a known minute, and their
    /// events (minute filled in once sent).
    no_ts_lines: Vec<Vec<u8>>,
    no_ts_evs: Vec<Ev>,
    evs: Vec<Ev>,
    counters: Counters,
}

/// The aggregated events, by minute.
struct Truth {
    evs: Vec<Ev>,
    by_min: BTreeMap<i64, Vec<usize>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Tot {
    views: u64,
    hits: u64,
    engaged: u64,
    uniques: u64,
}

impl Truth {
    fn new(evs: Vec<Ev>) -> Truth {
        let mut by_min: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, e) in evs.iter().enumerate() {
            by_min.entry(e.minute).or_default().push(i);
        }
        Truth { evs, by_min }
    }

    fn each(&self, from: i64, to: i64) -> impl Iterator<Item = &Ev> {
        self.by_min
            .range(from..to)
            .flat_map(|(_, v)| v.iter().map(|&i| &self.evs[i]))
    }

    fn totals(&self, from: i64, to: i64, site: Option<&str>) -> Tot {
        let mut t = Tot::default();
        let mut vids = BTreeSet::new();
        for e in self.each(from, to) {
            if site.is_some_and(|s| s != e.site) {
                continue;
            }
            t.views += u64::from(e.pv);
            t.hits += 1;
            t.engaged += e.engaged;
            if let Some(v) = &e.vid {
                vids.insert(v.as_str());
            }
        }
        t.uniques = vids.len() as u64;
        t
    }

    /// A url's totals; its uniques are the distinct visitors of its hits.
    fn url_totals(&self, from: i64, to: i64, url: &str, site: Option<&str>) -> Tot {
        let mut t = Tot::default();
        let mut vids = BTreeSet::new();
        for e in self.each(from, to) {
            if e.url != url || site.is_some_and(|s| s != e.site) {
                continue;
            }
            t.views += u64::from(e.pv);
            t.hits += 1;
            t.engaged += e.engaged;
            if let Some(v) = &e.vid {
                vids.insert(v.as_str());
            }
        }
        t.uniques = vids.len() as u64;
        t
    }

    /// Keys with views > 0, by views descending then key ascending bytewise.
    fn top(
        &self,
        dim: &str,
        from: i64,
        to: i64,
        site: Option<&str>,
        limit: usize,
    ) -> Vec<(String, u64)> {
        let mut m: BTreeMap<&str, u64> = BTreeMap::new();
        for e in self.each(from, to) {
            if !e.pv || site.is_some_and(|s| s != e.site) {
                continue;
            }
            let k = match dim {
                "url" => &e.url,
                "ref_domain" => &e.ref_domain,
                _ => &e.site,
            };
            *m.entry(k.as_str()).or_default() += 1;
        }
        let mut v: Vec<(String, u64)> = m.into_iter().map(|(k, n)| (k.to_string(), n)).collect();
        v.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
        });
        v.truncate(limit);
        v
    }

    // The JSON answers the spec asks for (shapes as in `query::Hub::answer`).

    fn items(v: Vec<(String, u64)>) -> Value {
        v.into_iter()
            .map(|(k, n)| json!({"key": k, "views": n}))
            .collect()
    }

    fn top_json(&self, dim: &str, from: i64, to: i64, site: Option<&str>, limit: usize) -> Value {
        json!({
            "dim": dim, "from": rfc(from), "to": rfc(to), "site": site,
            "items": Self::items(self.top(dim, from, to, site, limit)),
        })
    }

    fn points(
        &self,
        from: i64,
        to: i64,
        step: i64,
        site: Option<&str>,
        url: Option<&str>,
    ) -> Value {
        let mut pts = Vec::new();
        let mut t = from;
        while t < to {
            let end = (t + step).min(to);
            pts.push(match url {
                Some(u) => {
                    let x = self.url_totals(t, end, u, site);
                    json!({"t": rfc(t), "views": x.views, "hits": x.hits, "uniques": x.uniques, "engaged_seconds": x.engaged})
                }
                None => {
                    let x = self.totals(t, end, site);
                    json!({"t": rfc(t), "views": x.views, "hits": x.hits, "uniques": x.uniques, "engaged_seconds": x.engaged})
                }
            });
            t += step;
        }
        Value::Array(pts)
    }

    fn series_json(
        &self,
        from: i64,
        to: i64,
        step: i64,
        site: Option<&str>,
        url: Option<&str>,
    ) -> Value {
        let name = match step {
            1 => "1m",
            5 => "5m",
            60 => "1h",
            _ => "?",
        };
        json!({
            "step": name, "from": rfc(from), "to": rfc(to), "site": site, "url": url,
            "points": self.points(from, to, step, site, url),
        })
    }

    fn summary_json(&self, from: i64, to: i64, site: Option<&str>) -> Value {
        let t = self.totals(from, to, site);
        json!({
            "from": rfc(from), "to": rfc(to), "site": site,
            "views": t.views, "hits": t.hits, "uniques": t.uniques, "engaged_seconds": t.engaged,
            "top_urls": Self::items(self.top("url", from, to, site, 10)),
            "top_ref_domains": Self::items(self.top("ref_domain", from, to, site, 10)),
        })
    }

    fn realtime_json(&self, from: i64, to: i64, site: Option<&str>) -> Value {
        json!({
            "minutes": to - from, "from": rfc(from), "to": rfc(to), "site": site,
            "points": self.points(from, to, 1, site, None),
            "top_urls": Self::items(self.top("url", from, to, site, 10)),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Time parsing (formatting: common::model), written here rather than borrowed from pixeld.
// ---------------------------------------------------------------------------------------------

fn parse_rfc_minute(s: &str) -> i64 {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap();
    t.unix_timestamp().div_euclid(60)
}

/// nginx `$time_iso8601` at +01:00, whole seconds (so the event time is the second's start).
fn iso_plus1(ms: i64) -> String {
    let t = civil(ms.div_euclid(1000) + 3600);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+01:00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// nginx `$time_local` at +0000.
fn time_local(ms: i64) -> String {
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t = civil(ms.div_euclid(1000));
    format!(
        "{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000",
        t.day(),
        MON[u8::from(t.month()) as usize - 1],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

// ---------------------------------------------------------------------------------------------
// The generator.
// ---------------------------------------------------------------------------------------------

const SITES: [&str; 6] = [
    "shop.example.com",
    "blog.example.org",
    "news.example.net",
    "docs.example.io",
    "www.example.co.uk",
    "app.example.dev",
];

/// A url of the catalog: the canonical form the spec makes of it, and its parts.
struct Page {
    site: usize,
    port: Option<u16>,
    path: String,
}

impl Page {
    fn canonical(&self) -> String {
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        format!("https://{}{port}{}", SITES[self.site], self.path)
    }
}

fn catalog() -> Vec<Page> {
    let mut pages = Vec::new();
    for (s, _) in SITES.iter().enumerate() {
        pages.push(Page {
            site: s,
            port: None,
            path: "/".into(),
        });
        for n in 0..54 {
            let path = match (s + n) % 4 {
                0 => format!("/products/{n}"),
                1 => format!("/blog/post-{n}"),
                2 => format!("/docs/guide/ch{n}"),
                _ => format!("/News/Story-{n}"),
            };
            pages.push(Page {
                site: s,
                port: None,
                path,
            });
        }
        // Non-ASCII (rendered literally or percent-encoded) and a path that is itself
        // percent-encoded (kept as is unless the whole value is encoded, then decoded once).
        pages.push(Page {
            site: s,
            port: None,
            path: "/café/menü".into(),
        });
        pages.push(Page {
            site: s,
            port: None,
            path: "/a%20b".into(),
        });
    }
    for n in 0..6 {
        pages.push(Page {
            site: 3,
            port: Some(8080),
            path: format!("/internal/{n}"),
        });
    }
    pages
}

fn mixed_case(rng: &mut SmallRng, host: &str) -> String {
    if rng.gen_bool(0.5) {
        return host.to_ascii_uppercase();
    }
    host.chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// A raw url of `page` (query string, fragment, upper-case scheme and host) and whether the
/// whole value is percent-encoded.
fn render_url(rng: &mut SmallRng, page: &Page, encode: bool) -> String {
    let scheme = if rng.gen_bool(0.05) { "HTTPS" } else { "https" };
    let host = if rng.gen_bool(0.15) {
        mixed_case(rng, SITES[page.site])
    } else {
        SITES[page.site].to_string()
    };
    let port = page.port.map(|p| format!(":{p}")).unwrap_or_default();
    let suffix = match rng.gen_range(0..20) {
        0..=3 => format!("?utm_source=newsletter&id={}", rng.gen_range(0..50)),
        4..=5 => "#comments".to_string(),
        6 => "?q=1#top".to_string(),
        _ => String::new(),
    };
    let raw = format!("{scheme}://{host}{port}{}{suffix}", page.path);
    if encode {
        enc(&raw)
    } else {
        raw
    }
}

/// A raw referrer (None: no field) and the referrer domain the spec makes of it.
fn render_ref(
    rng: &mut SmallRng,
    pages: &[Page],
    page: &Page,
    encode: bool,
) -> (Option<String>, String) {
    const TERMS: [&str; 5] = [
        "rust async",
        "café au lait",
        "pixel analytics",
        "a+b",
        "100%",
    ];
    let direct = "(direct)".to_string();
    let (raw, domain) = match rng.gen_range(0..100) {
        0..=11 => return (None, direct),
        12..=17 => return (Some(String::new()), direct),
        18..=23 => return (Some("-".into()), direct),
        24..=48 => {
            let (host, path) = [
                ("www.google.com", "/search?q="),
                ("www.bing.com", "/search?q="),
                ("duckduckgo.com", "/?q="),
                ("search.yahoo.com", "/search?p="),
            ][rng.gen_range(0..4)];
            // Referer-style: already decoded, spaces and all.
            let term = TERMS[rng.gen_range(0..TERMS.len())];
            let shown = if rng.gen_bool(0.2) {
                mixed_case(rng, host)
            } else {
                host.to_string()
            };
            (format!("https://{shown}{path}{term}"), host.to_string())
        }
        49..=63 => {
            let (host, rest) = [
                ("t.co", "/AbC123"),
                ("www.facebook.com", "/"),
                (
                    "l.facebook.com",
                    "/l.php?u=https%3A%2F%2Fshop.example.com%2F",
                ),
                ("www.reddit.com", "/r/rust/comments/abc/"),
                ("news.ycombinator.com", "/item?id=1"),
                ("lnkd.in", "/xyz"),
            ][rng.gen_range(0..6)];
            (format!("https://{host}{rest}"), host.to_string())
        }
        64..=89 => {
            // Internal: another page of the same site (and port).
            let other = pages
                .iter()
                .filter(|p| p.site == page.site)
                .nth(rng.gen_range(0..20))
                .unwrap();
            let host = if rng.gen_bool(0.1) {
                mixed_case(rng, SITES[page.site])
            } else {
                SITES[page.site].to_string()
            };
            let port = page.port.map(|p| format!(":{p}")).unwrap_or_default();
            (
                format!("https://{host}{port}{}#x", other.path),
                SITES[page.site].to_string(),
            )
        }
        90..=93 => (
            "http://intranet.local:8080/wiki/Start".into(),
            "intranet.local".into(),
        ),
        94..=95 => (
            "android-app://com.google.android.gm/".into(),
            "com.google.android.gm".into(),
        ),
        _ => {
            let bad = ["not a url", "www.google.com", "javascript:void(0)"][rng.gen_range(0..3)];
            (bad.to_string(), "(invalid)".into())
        }
    };
    let raw = if encode { enc(&raw) } else { raw };
    (Some(raw), domain)
}

/// How an event is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// An application's JSON line (any field names and time fields).
    App,
    /// The line `/p.gif` stores: encoded url and referrer, string `inc`, numeric `msec`.
    Pixel,
    /// An nginx combined access-log line of the pixel request.
    Combined,
}

/// The fields of one line before rendering.
struct Draft {
    /// JSON `(key, value-as-JSON-text)` pairs, in order (App and Pixel).
    fields: Vec<(String, String)>,
    /// Query-string pairs (Combined), already encoded.
    qs: Vec<(String, String)>,
    /// Event time in the line (for the combined line's `[time_local]`).
    t_ms: i64,
}

impl Draft {
    fn render(&self, style: Style, rng: &mut SmallRng) -> Vec<u8> {
        match style {
            Style::App | Style::Pixel => {
                let body: Vec<String> = self
                    .fields
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", js(k)))
                    .collect();
                format!("{{{}}}", body.join(",")).into_bytes()
            }
            Style::Combined => {
                let qs: Vec<String> = self.qs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!(
                    "203.0.113.{} - - [{}] \"GET /p.gif?{} HTTP/1.1\" 200 43 \"https://{}/\" \"Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0\"",
                    rng.gen_range(1..255),
                    time_local(self.t_ms),
                    qs.join("&"),
                    SITES[rng.gen_range(0..SITES.len())],
                )
                .into_bytes()
            }
        }
    }
}

/// What the time fields of an App line look like.
#[derive(Debug, Clone, Copy)]
enum TimeField {
    Msec,
    MsecString,
    Ts,
    Iso,
    MsecOverTs,
    TsOverIso,
    None,
}

/// The generator's state.
struct Gen {
    rng: SmallRng,
    pages: Vec<Page>,
    zipf_cdf: Vec<f64>,
    now_ms: i64,
    visitors: Vec<String>,
}

/// What one drafted event must do.
enum Fate {
    Aggregated(Ev),
    OutOfWindow,
    Unparsed(&'static str),
}

impl Gen {
    fn new(seed: u64, now_ms: i64) -> Gen {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut pages = catalog();
        pages.shuffle(&mut rng);
        let mut acc = 0.0;
        let zipf_cdf = (0..pages.len())
            .map(|i| {
                acc += 1.0 / (i as f64 + 1.0).powf(1.05);
                acc
            })
            .collect();
        let visitors = (0..3000u32)
            .map(|i| format!("v{:08x}", i.wrapping_mul(2_654_435_761)))
            .collect();
        Gen {
            rng,
            pages,
            zipf_cdf,
            now_ms,
            visitors,
        }
    }

    fn page(&mut self) -> usize {
        let total = *self.zipf_cdf.last().unwrap();
        let x = self.rng.gen_range(0.0..total);
        self.zipf_cdf
            .partition_point(|&c| c < x)
            .min(self.pages.len() - 1)
    }

    fn vid(&mut self) -> Option<String> {
        if self.rng.gen_bool(0.02) {
            return None;
        }
        // A third of the hits come from 100 regulars.
        let n = if self.rng.gen_bool(0.3) {
            100
        } else {
            self.visitors.len()
        };
        Some(self.visitors[self.rng.gen_range(0..n)].clone())
    }

    /// A time inside the windows: the last 90 minutes, a few up to 4 minutes ahead.
    fn time_in(&mut self) -> i64 {
        if self.rng.gen_bool(0.03) {
            self.now_ms + self.rng.gen_range(0..4 * MIN_MS)
        } else {
            self.now_ms - self.rng.gen_range(0..90 * MIN_MS)
        }
    }

    /// A valid event drafted in `style` with event time `t` (None: no timestamp field).
    fn event(&mut self, style: Style, t: Option<i64>, tf: TimeField) -> (Draft, Ev) {
        let pi = self.page();
        let encode = style != Style::App || self.rng.gen_bool(0.3);
        let (site, url, raw_url) = {
            let rng = &mut self.rng;
            let p = &self.pages[pi];
            (
                SITES[p.site].to_string(),
                p.canonical(),
                render_url(rng, p, encode),
            )
        };
        let (raw_ref, ref_domain) = {
            let encode_ref = style != Style::App || self.rng.gen_bool(0.3);
            render_ref(&mut self.rng, &self.pages, &self.pages[pi], encode_ref)
        };
        let vid = self.vid();
        let hb = self.rng.gen_bool(0.25);
        let action: Option<&str> = if hb {
            Some(["hb", "heartbeat"][self.rng.gen_range(0..2)])
        } else {
            [None, Some(""), Some("pageview"), Some("pv")][self.rng.gen_range(0..4)]
        };
        // inc: a heartbeat's engaged seconds in 0..=3600, else heartbeat_seconds (10).
        let (inc, engaged): (Option<i64>, u64) = if hb {
            match self.rng.gen_range(0..100) {
                0..=44 => (None, 10),
                45..=47 => (Some(0), 0),
                48..=49 => (Some(3600), 3600),
                50..=51 => (Some(7200), 10),
                _ => {
                    let s = self.rng.gen_range(1..600);
                    (Some(s), s as u64)
                }
            }
        } else if self.rng.gen_bool(0.03) {
            (Some(30), 0)
        } else {
            (None, 0)
        };
        let t_ms = t.unwrap_or(self.now_ms);
        let mut d = Draft {
            fields: Vec::new(),
            qs: Vec::new(),
            t_ms,
        };
        let mut minute = t.map(|t| t.div_euclid(MIN_MS));
        match style {
            Style::App => {
                let r = &mut self.rng;
                let f = &mut d.fields;
                match (t, tf) {
                    (None, _) | (_, TimeField::None) => {}
                    (Some(t), TimeField::Msec) => f.push(("msec".into(), msec(t))),
                    (Some(t), TimeField::MsecString) => f.push(("msec".into(), js(&msec(t)))),
                    (Some(t), TimeField::Ts) => f.push(("ts".into(), js(&ts_z(t)))),
                    (Some(t), TimeField::Iso) => {
                        f.push(("time_iso8601".into(), js(&iso_plus1(t))));
                        minute = Some((t.div_euclid(1000) * 1000).div_euclid(MIN_MS));
                    }
                    (Some(t), TimeField::MsecOverTs) => {
                        f.push(("ts".into(), js(&ts_z(t - 7 * MIN_MS))));
                        f.push(("msec".into(), msec(t)));
                    }
                    (Some(t), TimeField::TsOverIso) => {
                        f.push(("time_iso8601".into(), js(&iso_plus1(t + 13 * MIN_MS))));
                        f.push(("ts".into(), js(&ts_z(t))));
                    }
                }
                f.push(("url".into(), js(&raw_url)));
                if let Some(r0) = &raw_ref {
                    // `urlref` is the first alternative: when both are present it wins.
                    if r.gen_bool(0.05) && !r0.is_empty() {
                        f.push(("ref".into(), js("https://decoy.example/")));
                        f.push(("urlref".into(), js(r0)));
                    } else {
                        let k = if r.gen_bool(0.6) { "urlref" } else { "ref" };
                        f.push((k.into(), js(r0)));
                    }
                }
                if let Some(v) = &vid {
                    f.push(("vid".into(), js(v)));
                }
                if let Some(a) = action {
                    let k = if r.gen_bool(0.5) { "action" } else { "a" };
                    f.push((k.into(), js(a)));
                }
                if let Some(i) = inc {
                    f.push(("inc".into(), i.to_string()));
                }
                f.push(("ua".into(), js("Mozilla/5.0 (Macintosh) Safari/605.1.15")));
            }
            Style::Pixel => {
                let f = &mut d.fields;
                if let Some(t) = t {
                    f.push(("msec".into(), msec(t)));
                }
                f.push(("url".into(), js(&raw_url)));
                if let Some(r0) = &raw_ref {
                    f.push(("urlref".into(), js(r0)));
                }
                if let Some(v) = &vid {
                    f.push(("vid".into(), js(v)));
                }
                if let Some(a) = action {
                    f.push(("action".into(), js(a)));
                }
                if let Some(i) = inc {
                    f.push(("inc".into(), js(&i.to_string())));
                }
                f.push(("ua".into(), js("Mozilla/5.0 (iPhone) Mobile/15E148")));
                f.push(("referer".into(), js(&url)));
                f.push(("ip".into(), js("198.51.100.7")));
            }
            Style::Combined => {
                let q = &mut d.qs;
                q.push(("url".into(), raw_url.clone()));
                if let Some(r0) = &raw_ref {
                    q.push(("ref".into(), r0.clone()));
                }
                if let Some(v) = &vid {
                    q.push(("vid".into(), v.clone()));
                }
                if let Some(a) = action {
                    q.push(("a".into(), a.into()));
                }
                if let Some(i) = inc {
                    q.push(("inc".into(), i.to_string()));
                }
                if let Some(t) = t {
                    q.push(("msec".into(), msec(t)));
                }
            }
        }
        let ev = Ev {
            minute: minute.unwrap_or(i64::MIN),
            pv: !hb,
            engaged,
            site,
            url,
            ref_domain: if hb { String::new() } else { ref_domain },
            vid,
        };
        (d, ev)
    }

    fn time_field(&mut self) -> TimeField {
        match self.rng.gen_range(0..100) {
            0..=69 => TimeField::Msec,
            70..=71 => TimeField::MsecString,
            72..=83 => TimeField::Ts,
            84..=89 => TimeField::Iso,
            90..=94 => TimeField::MsecOverTs,
            _ => TimeField::TsOverIso,
        }
    }

    /// One line of `style`, mostly an aggregated event, sometimes an edge case.
    fn line(&mut self, style: Style) -> (Vec<u8>, Fate) {
        let tf = if style == Style::App {
            self.time_field()
        } else {
            TimeField::Msec
        };
        let roll = self.rng.gen_range(0..1000);
        let t = match roll {
            // Before the day window (yesterday and today, UTC).
            0..=5 => self.now_ms - self.rng.gen_range(3 * 1440 * MIN_MS..4 * 1440 * MIN_MS),
            6..=11 => self.now_ms + self.rng.gen_range(10 * MIN_MS..120 * MIN_MS),
            _ => self.time_in(),
        };
        let tf = match (roll, tf) {
            // Out-of-window times only in unambiguous fields.
            (0..=11, TimeField::Iso | TimeField::TsOverIso | TimeField::MsecString) => {
                TimeField::Msec
            }
            (_, tf) => tf,
        };
        let (mut d, ev) = self.event(style, Some(t), tf);
        let fate = match roll {
            0..=11 => Fate::OutOfWindow,
            12..=15 => {
                // No url at all.
                d.fields.retain(|(k, _)| k != "url");
                d.qs.retain(|(k, _)| k != "url");
                Fate::Unparsed("no_url")
            }
            16..=19 => {
                let bad = [
                    "/just/a/path",
                    "www.example.com/page",
                    "%2Frelative%2Fpath",
                    "not a url",
                ][self.rng.gen_range(0..4)];
                for (k, v) in d.fields.iter_mut().chain(d.qs.iter_mut()) {
                    if k == "url" {
                        *v = if style == Style::Combined {
                            enc(bad)
                        } else {
                            js(bad)
                        };
                    }
                }
                Fate::Unparsed("bad_url")
            }
            20..=24 => {
                let a = ["click", "scroll", "download"][self.rng.gen_range(0..3)];
                d.fields.retain(|(k, _)| k != "action" && k != "a");
                d.qs.retain(|(k, _)| k != "a");
                if style == Style::Combined {
                    d.qs.push(("a".into(), a.into()));
                } else {
                    d.fields.push(("action".into(), js(a)));
                }
                Fate::Unparsed("unknown_action")
            }
            _ => Fate::Aggregated(ev),
        };
        (d.render(style, &mut self.rng), fate)
    }
}

/// The whole data set: ~29 k lines over three transports and what each must do.
fn generate(now_ms: i64) -> Generated {
    let mut g = Gen::new(0x5EED_F91C_5E1D, now_ms);
    let mut out = Generated {
        lines: Vec::new(),
        no_ts_lines: Vec::new(),
        no_ts_evs: Vec::new(),
        evs: Vec::new(),
        counters: Counters::default(),
    };
    let push = |out: &mut Generated, wire: Wire, bytes: Vec<u8>, fate: Fate| {
        match fate {
            Fate::Aggregated(ev) => {
                out.counters.aggregated += 1;
                out.evs.push(ev);
            }
            Fate::OutOfWindow => out.counters.out_of_window += 1,
            Fate::Unparsed(k) => *out.counters.unparsed.entry(k).or_default() += 1,
        }
        out.lines.push(Line { wire, bytes });
    };
    // NDJSON over HTTP: application and pixel lines.
    for i in 0..24_000 {
        let style = if i % 3 == 0 { Style::Pixel } else { Style::App };
        let (b, f) = g.line(style);
        push(&mut out, Wire::Http, b, f);
    }
    // JSON that is not an event object, and objects without a url.
    for (i, junk) in [
        "[1,2,3]",
        "null",
        "\"just text\"",
        "42",
        "{}",
        "{\"foo\":1}",
    ]
    .iter()
    .cycle()
    .take(60)
    .enumerate()
    {
        let kind = if i % 6 >= 4 { "no_url" } else { "not_an_event" };
        push(
            &mut out,
            Wire::Http,
            junk.as_bytes().to_vec(),
            Fate::Unparsed(kind),
        );
    }
    // Combined access-log lines over TCP, and over UDP with nginx's syslog header.
    for i in 0..2300 {
        let (b, f) = g.line(Style::Combined);
        if i % 6 == 0 {
            let mut l = b"<190>Nov 22 01:39:03 web1 nginx: ".to_vec();
            l.extend_from_slice(&b);
            push(&mut out, Wire::Udp, l, f);
        } else {
            push(&mut out, Wire::Tcp, b, f);
        }
    }
    // JSON lines with a syslog header over UDP and TCP.
    for i in 0..1800 {
        let (b, f) = g.line(Style::App);
        let mut l = b"<190>Nov 22 01:39:03 pixel: ".to_vec();
        l.extend_from_slice(&b);
        push(
            &mut out,
            if i % 3 == 0 { Wire::Tcp } else { Wire::Udp },
            l,
            f,
        );
    }
    // Invalid UTF-8 in the user agent, the url, or both: replaced, counted, aggregated.
    const FF: &str = "@XFF@";
    for i in 0..300 {
        let t = g.now_ms - g.rng.gen_range(0..60 * MIN_MS);
        let (d, mut ev) = g.event(Style::App, Some(t), TimeField::Msec);
        let mut text = String::from_utf8(d.render(Style::App, &mut g.rng)).unwrap();
        if i % 3 != 1 {
            text = text.replace("Safari/605.1.15", &format!("Safari/605.1.15 {FF}"));
        }
        if i % 3 != 0 {
            let n = i % 7;
            let start = text.find("\"url\":\"").unwrap() + 7;
            let end = start + text[start..].find('"').unwrap();
            text.replace_range(start..end, &format!("https://{}/caf{FF}/{n}", ev.site));
            ev.url = format!("https://{}/caf\u{FFFD}/{n}", ev.site);
        }
        let bytes = text.replace(FF, "\u{1}").into_bytes();
        let bytes: Vec<u8> = bytes
            .into_iter()
            .map(|b| if b == 1 { 0xff } else { b })
            .collect();
        assert!(std::str::from_utf8(&bytes).is_err());
        out.counters.invalid_utf8 += 1;
        push(&mut out, Wire::Tcp, bytes, Fate::Aggregated(ev));
    }
    // Lines that are not events at all.
    for junk in [
        "hello world",
        "{\"broken\": ",
        "GET / HTTP/1.1",
        "<13>Nov 22 01:39:03 host app: free text message",
        "<190>Nov 22 01:39:03 web1 nginx: 2026/11/22 01:39:03 [error] 12#12: upstream timed out",
    ]
    .iter()
    .cycle()
    .take(100)
    {
        // An object that does not parse is told apart from a line that is no object at all.
        let kind = if junk.starts_with('{') {
            "bad_json"
        } else {
            "not_an_event"
        };
        push(
            &mut out,
            Wire::Tcp,
            junk.as_bytes().to_vec(),
            Fate::Unparsed(kind),
        );
    }
    // Events without any timestamp: aggregated at their receive time.
    for _ in 0..150 {
        let style = if g.rng.gen_bool(0.5) {
            Style::Pixel
        } else {
            Style::App
        };
        let (d, ev) = g.event(style, None, TimeField::None);
        out.no_ts_lines.push(d.render(style, &mut g.rng));
        out.no_ts_evs.push(ev);
        out.counters.no_timestamp += 1;
        out.counters.aggregated += 1;
    }
    out.lines.shuffle(&mut g.rng);
    out
}

// ---------------------------------------------------------------------------------------------
// Talking to the servers.
// ---------------------------------------------------------------------------------------------

fn start(data: &std::path::Path, shards: usize) -> Server {
    let mut s = Server::builder()
        .data(data)
        .shards(shards)
        .config(CONFIG)
        .start();
    s.wait_complete();
    s
}

fn post(s: &Server, lines: &[&[u8]]) {
    common::post_ndjson(s.http, lines.iter().copied());
}

fn send_tcp(s: &Server, lines: &[&[u8]]) {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.tcp)).unwrap();
    let mut buf = Vec::new();
    for l in lines {
        buf.extend_from_slice(l);
        buf.push(b'\n');
    }
    c.write_all(&buf).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.read_to_end(&mut Vec::new());
}

fn send_udp(s: &Server, lines: &[&[u8]]) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for (i, l) in lines.iter().enumerate() {
        sock.send_to(l, ("127.0.0.1", s.udp)).unwrap();
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(3));
        }
    }
}

/// One GET; status 0 when the connection closed without a complete response.
fn get(s: &Server, path: &str) -> (u16, Vec<u8>) {
    common::try_get(s.http, path)
}

fn metrics(s: &Server) -> BTreeMap<String, f64> {
    common::metrics(s.http)
}

fn m(mx: &BTreeMap<String, f64>, k: &str) -> u64 {
    mx.get(k).copied().unwrap_or(-1.0) as u64
}

fn outcome(mx: &BTreeMap<String, f64>, o: &str) -> u64 {
    m(mx, &format!("pixeld_agg_records_total{{outcome=\"{o}\"}}"))
}

fn dump(mx: &BTreeMap<String, f64>) -> String {
    mx.iter()
        .filter(|(k, _)| {
            [
                "appended",
                "agg_records",
                "route_",
                "received",
                "dropped",
                "unparsed",
                "kernel",
            ]
            .iter()
            .any(|n| k.contains(n))
        })
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn wait_aggregated(s: &Server, lines: u64, what: &str) -> BTreeMap<String, f64> {
    common::wait_aggregated(s.http, lines, what)
}

fn check_counters(what: &str, mx: &BTreeMap<String, f64>, want: &Counters, errs: &mut Vec<String>) {
    let mut got = Counters {
        aggregated: outcome(mx, "aggregated"),
        out_of_window: outcome(mx, "out_of_window"),
        no_timestamp: m(mx, "pixeld_agg_no_timestamp_total"),
        invalid_utf8: m(mx, "pixeld_agg_invalid_utf8_total"),
        unparsed: BTreeMap::new(),
    };
    for k in [
        "not_an_event",
        "bad_json",
        "no_url",
        "bad_url",
        "unknown_action",
    ] {
        let n = m(mx, &format!("pixeld_agg_unparsed_total{{kind=\"{k}\"}}"));
        if n > 0 || want.unparsed.contains_key(k) {
            got.unparsed.insert(k, n);
        }
    }
    if &got != want {
        errs.push(format!(
            "{what}: metrics counters\n  expected {want:?}\n  got      {got:?}"
        ));
    }
    if outcome(mx, "unparsed") != want.unparsed.values().sum::<u64>() {
        errs.push(format!(
            "{what}: pixeld_agg_records_total{{outcome=\"unparsed\"}} = {}, expected {}",
            outcome(mx, "unparsed"),
            want.unparsed.values().sum::<u64>()
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing answers.
// ---------------------------------------------------------------------------------------------

/// Uniques are exact up to `EXACT_LIMIT` distinct visitors (per bucket and shard, so
/// certainly when the whole answer is that small); beyond, the HyperLogLog++ sketch has a
/// 0.81 % standard error, and three of them (2.5 %) bound every point of every run. A url's
/// visitors (`url`) are exact up to `URL_EXACT_LIMIT`, then a sketch of 1.6 % (5 %).
fn uniques_ok(got: u64, want: u64, url: bool) -> bool {
    use pixeld::agg::hll::{EXACT_LIMIT, URL_EXACT_LIMIT};
    let (exact, tolerance) = if url {
        (URL_EXACT_LIMIT, 0.05)
    } else {
        (EXACT_LIMIT, 0.025)
    };
    if want <= exact as u64 {
        return got == want;
    }
    (got as f64 - want as f64).abs() <= want as f64 * tolerance
}

/// The visit fields of summaries and series points.
const VISIT_KEYS: [&str; 6] = [
    "visits",
    "bounces",
    "bounce_rate",
    "visit_views",
    "views_per_visit",
    "visit_duration",
];

/// Differences of `got` from `want`: exact, except numbers under "uniques" (tolerance; `url`:
/// of a url's series).
fn diff(path: &str, got: &Value, want: &Value, url: bool, out: &mut Vec<String>) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            for (k, wv) in w {
                let p = format!("{path}.{k}");
                match (g.get(k), wv.as_u64()) {
                    (None, _) => out.push(format!("{p}: missing (expected {wv})")),
                    (Some(gv), Some(wn)) if k == "uniques" && gv.is_u64() => {
                        if !uniques_ok(gv.as_u64().unwrap(), wn, url) {
                            out.push(format!("{p}: got {gv}, expected {wn} (±1 % or ±1)"));
                        }
                    }
                    (Some(gv), _) => diff(&p, gv, wv, url, out),
                }
            }
            // Visits are modelled by tests/query/visits.rs, not here.
            for k in g
                .keys()
                .filter(|k| !w.contains_key(*k) && !VISIT_KEYS.contains(&k.as_str()))
            {
                out.push(format!("{path}.{k}: not expected"));
            }
        }
        (Value::Array(g), Value::Array(w)) => {
            if g.len() != w.len() {
                out.push(format!("{path}: {} entries, expected {}", g.len(), w.len()));
            }
            for (i, (gv, wv)) in g.iter().zip(w).enumerate() {
                diff(&format!("{path}[{i}]"), gv, wv, url, out);
            }
        }
        _ => {
            if got != want {
                out.push(format!("{path}: got {got}, expected {want}"));
            }
        }
    }
}

/// Records the differences of one answer, a few lines of them.
fn compare(query: &str, st: u16, body: &[u8], want: &Value, errs: &mut Vec<String>) {
    if st != 200 {
        errs.push(format!(
            "{query}: status {st}: {}",
            String::from_utf8_lossy(body)
        ));
        return;
    }
    let mut got: Value = serde_json::from_slice(body).unwrap();
    // Every answer says whether the aggregates are complete; here they always are.
    if let Some(o) = got.as_object_mut() {
        let complete = (o.remove("complete"), o.remove("catchup_records"));
        if complete != (Some(Value::Bool(true)), Some(Value::from(0u64))) {
            errs.push(format!("{query}: not complete: {complete:?}"));
        }
    }
    let mut d = Vec::new();
    let url = want.get("url").is_some_and(Value::is_string);
    diff("", &got, want, url, &mut d);
    if !d.is_empty() {
        let n = d.len();
        d.truncate(6);
        errs.push(format!(
            "{query}: {n} differences, e.g.\n    {}",
            d.join("\n    ")
        ));
    }
}

fn without_uniques(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if k == "uniques" {
                    *x = Value::Null;
                } else {
                    without_uniques(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(without_uniques),
        _ => {}
    }
}

fn without_key(v: &mut Value, key: &str) {
    match v {
        Value::Object(o) => {
            o.remove(key);
            o.values_mut().for_each(|x| without_key(x, key));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| without_key(x, key)),
        _ => {}
    }
}

fn q(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Every absolute query and the answer the model gives.
fn queries(t: &Truth, g_min: i64) -> Vec<(String, Value)> {
    let from = g_min - 95;
    let to = g_min + 6;
    let (h_from, h_to) = (from.div_euclid(60) * 60, g_min.div_euclid(60) * 60);
    let sites = t.top("site", from, to, None, 1000);
    let (big, small) = (sites[0].0.clone(), sites.last().unwrap().0.clone());
    let top_url = t.top("url", from, to, None, 1)[0].0.clone();
    let top_site = t
        .evs
        .iter()
        .find(|e| e.url == top_url)
        .unwrap()
        .site
        .clone();
    let other_site = if top_site == big {
        small.clone()
    } else {
        big.clone()
    };
    let mut out = Vec::new();
    let r = |a: i64, b: i64| format!("from={}&to={}", a * 60, b * 60);
    for (a, b) in [(from, to), (g_min - 30, g_min - 10), (h_from, h_to)] {
        for dim in ["url", "ref_domain", "site"] {
            for limit in [1000, 10] {
                for site in [
                    None,
                    Some(big.as_str()),
                    Some(small.as_str()),
                    Some("nonexistent.example"),
                ] {
                    let sq = site.map(|s| format!("&site={s}")).unwrap_or_default();
                    out.push((
                        format!("/v1/top?dim={dim}&{}&limit={limit}{sq}", r(a, b)),
                        t.top_json(dim, a, b, site, limit),
                    ));
                }
            }
        }
        for site in [None, Some(big.as_str()), Some(small.as_str())] {
            let sq = site.map(|s| format!("&site={s}")).unwrap_or_default();
            out.push((
                format!("/v1/summary?{}{sq}", r(a, b)),
                t.summary_json(a, b, site),
            ));
        }
    }
    // The site parameter is case-insensitive.
    out.push((
        format!(
            "/v1/top?dim=url&{}&limit=10&site={}",
            r(from, to),
            big.to_ascii_uppercase()
        ),
        t.top_json("url", from, to, Some(&big), 10),
    ));
    for (step, a, b) in [
        (1, from, to),
        (5, from.div_euclid(5) * 5, (to + 4).div_euclid(5) * 5),
        (60, h_from, h_to + 60),
    ] {
        let sn = match step {
            1 => "1m",
            5 => "5m",
            _ => "1h",
        };
        let base = format!("/v1/timeseries?{}&step={sn}", r(a, b));
        out.push((base.clone(), t.series_json(a, b, step, None, None)));
        for site in [&big, &small] {
            out.push((
                format!("{base}&site={site}"),
                t.series_json(a, b, step, Some(site), None),
            ));
        }
        out.push((
            format!("{base}&url={}", q(&top_url)),
            t.series_json(a, b, step, None, Some(&top_url)),
        ));
        out.push((
            format!("{base}&url={}&site={top_site}", q(&top_url)),
            t.series_json(a, b, step, Some(&top_site), Some(&top_url)),
        ));
        out.push((
            format!("{base}&url={}&site={other_site}", q(&top_url)),
            t.series_json(a, b, step, Some(&other_site), Some(&top_url)),
        ));
    }
    // Urls that only the spec's decoding and normalisation make: encoded, non-ASCII, U+FFFD.
    for u in [
        format!("https://{}/café/menü", SITES[0]),
        format!("https://{}/a%20b", SITES[1]),
        format!("https://{}:8080/internal/0", SITES[3]),
        format!("https://{}/caf\u{FFFD}/3", SITES[2]),
    ] {
        out.push((
            format!(
                "/v1/timeseries?{}&step=5m&url={}",
                r(from.div_euclid(5) * 5, (to + 4).div_euclid(5) * 5),
                q(&u)
            ),
            t.series_json(
                from.div_euclid(5) * 5,
                (to + 4).div_euclid(5) * 5,
                5,
                None,
                Some(&u),
            ),
        ));
    }
    out
}

/// Checks the relative `/v1/realtime` answers against the range each reports.
fn check_realtime(what: &str, s: &Server, t: &Truth, site: &str, errs: &mut Vec<String>) {
    for (minutes, site) in [(5, None), (60, None), (15, Some(site))] {
        let sq = site.map(|s| format!("&site={s}")).unwrap_or_default();
        let query = format!("/v1/realtime?minutes={minutes}{sq}");
        let (st, b) = get(s, &query);
        if st != 200 {
            errs.push(format!("{what} {query}: status {st}"));
            continue;
        }
        let v: Value = serde_json::from_slice(&b).unwrap();
        let (a, z) = (
            parse_rfc_minute(v["from"].as_str().unwrap()),
            parse_rfc_minute(v["to"].as_str().unwrap()),
        );
        if z - a != minutes {
            errs.push(format!("{what} {query}: covers {a}..{z}"));
        }
        compare(
            &format!("{what} {query}"),
            st,
            &b,
            &t.realtime_json(a, z, site),
            errs,
        );
    }
}

/// Sends every generated line to `servers` (the no-timestamp batch first, inside one minute).
fn feed(servers: &[&Server], gen: &Generated) -> i64 {
    // The no-timestamp events are stamped with their receive time: send them well inside a
    // minute so that the model knows which.
    loop {
        let s = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64)
            % MIN_MS;
        if (2_000..45_000).contains(&s) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let before = now_ms().div_euclid(MIN_MS);
    let no_ts: Vec<&[u8]> = gen.no_ts_lines.iter().map(|l| l.as_slice()).collect();
    for s in servers {
        post(s, &no_ts);
    }
    let after = now_ms().div_euclid(MIN_MS);
    assert_eq!(
        before, after,
        "the no-timestamp batch straddled a minute boundary"
    );

    let by = |w: Wire| -> Vec<&[u8]> {
        gen.lines
            .iter()
            .filter(|l| l.wire == w)
            .map(|l| l.bytes.as_slice())
            .collect()
    };
    let (h, tcp, udp) = (by(Wire::Http), by(Wire::Tcp), by(Wire::Udp));
    for chunk in h.chunks(2000) {
        for s in servers {
            post(s, chunk);
        }
    }
    for chunk in tcp.chunks(700) {
        for s in servers {
            send_tcp(s, chunk);
        }
    }
    for chunk in udp.chunks(250) {
        for s in servers {
            send_udp(s, chunk);
        }
    }
    before
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Runs every absolute query on `s`, compares with the model, returns the bodies.
fn ask_all(what: &str, s: &Server, qs: &[(String, Value)], errs: &mut Vec<String>) -> Vec<Vec<u8>> {
    qs.iter()
        .map(|(query, want)| {
            let (st, b) = get(s, query);
            compare(&format!("{what} {query}"), st, &b, want, errs);
            b
        })
        .collect()
}

/// Kills the servers a failing test leaves behind (by their PIDs).
struct KillOnPanic(Vec<u32>);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for pid in &self.0 {
                let _ = std::process::Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
    }
}

#[test]
fn answers_match_an_independent_model_across_shards_and_restart() {
    let started = Instant::now();
    let tmp = common::tempdir();
    let dirs = [tmp.path().join("one"), tmp.path().join("three")];
    let shard_counts = [1, 3];
    let mut servers: Vec<Server> = dirs
        .iter()
        .zip(shard_counts)
        .map(|(d, n)| start(d, n))
        .collect();
    let mut guard = KillOnPanic(servers.iter().map(|s| s.child.id()).collect());

    let gen_ms = now_ms();
    let gen = generate(gen_ms);
    let lines = (gen.lines.len() + gen.no_ts_lines.len()) as u64;
    let no_ts_min = feed(&servers.iter().collect::<Vec<_>>(), &gen);
    let mut evs = gen.evs.clone();
    evs.extend(gen.no_ts_evs.iter().cloned().map(|mut e| {
        e.minute = no_ts_min;
        e
    }));
    let truth = Truth::new(evs);
    let g_min = gen_ms.div_euclid(MIN_MS);
    let qs = queries(&truth, g_min);
    let big_site = truth.top("site", g_min - 95, g_min + 6, None, 1)[0]
        .0
        .clone();

    // Differences from the model, and differences between answers that must be the same
    // (across shard counts, across the restart).
    let mut errs = Vec::new();
    let mut same = Vec::new();
    let mut before: Vec<Vec<Vec<u8>>> = Vec::new();
    for (s, n) in servers.iter().zip(shard_counts) {
        let what = format!("[{n} shard(s)]");
        let mx = wait_aggregated(s, lines, &what);
        assert_eq!(
            m(&mx, "pixeld_appended_events_total"),
            lines,
            "{}",
            dump(&mx)
        );
        check_counters(&what, &mx, &gen.counters, &mut errs);
        before.push(ask_all(&what, s, &qs, &mut errs));
        check_realtime(&what, s, &truth, &big_site, &mut errs);
    }
    // The shard count changes nothing but the uniques' estimation error — and the visits'
    // durations, since the lines without a timestamp take their receive time, which differs
    // by milliseconds between the two servers (their visits are the same visits).
    for (i, (query, _)) in qs.iter().enumerate() {
        let parse = |b: &[u8]| -> Value {
            let mut v = serde_json::from_slice(b).unwrap_or(Value::Null);
            without_uniques(&mut v);
            without_key(&mut v, "visit_duration");
            v
        };
        let (a, b) = (parse(&before[0][i]), parse(&before[1][i]));
        if a != b {
            let mut d = Vec::new();
            diff(
                "",
                &b,
                &a,
                a.get("url").is_some_and(Value::is_string),
                &mut d,
            );
            d.truncate(4);
            same.push(format!(
                "{query}: 3 shards differ from 1 shard:\n    {}",
                d.join("\n    ")
            ));
        }
    }
    let queried = started.elapsed();

    // SIGTERM, restart on the same data, twice: first from the checkpoint written at the stop
    // (nothing to replay), then with the store deleted (everything rebuilt from the log).
    // Both answer byte for byte as before, and `check --aggregates` agrees with the store.
    for i in 0..servers.len() {
        let s = servers.remove(0);
        s.signal("TERM");
        let (code, log) = s.wait();
        assert_eq!(code, Some(0), "{log}");
        let (ok, report) = common::check_aggregates(&dirs[i], Some(CONFIG));
        if !ok {
            errs.push(format!(
                "[{} shard(s)] check --aggregates: {report}",
                shard_counts[i]
            ));
        }
        let mut s = start(&dirs[i], shard_counts[i]);
        for from_log in [false, true] {
            if from_log {
                s.signal("TERM");
                let (code, log) = s.wait();
                assert_eq!(code, Some(0), "{log}");
                std::fs::remove_dir_all(dirs[i].join("agg")).unwrap();
                s = start(&dirs[i], shard_counts[i]);
            }
            guard.0.push(s.child.id());
            let what = format!(
                "[{} shard(s), restarted {}]",
                shard_counts[i],
                if from_log {
                    "from the log"
                } else {
                    "from the checkpoint"
                }
            );
            let mx = metrics(&s);
            let want = if from_log { lines } else { 0 };
            if m(&mx, "pixeld_agg_rebuilt_records_total") != want {
                errs.push(format!(
                    "{what}: replayed {} records, expected {want}",
                    m(&mx, "pixeld_agg_rebuilt_records_total")
                ));
            }
            if from_log {
                check_counters(&what, &mx, &gen.counters, &mut errs);
            }
            for (j, (query, _)) in qs.iter().enumerate() {
                let (st, b) = get(&s, query);
                if st != 200 || b != before[i][j] {
                    same.push(format!(
                        "{what} {query}: answer changed\n    before {}\n    after  {}",
                        String::from_utf8_lossy(&before[i][j])
                            .chars()
                            .take(300)
                            .collect::<String>(),
                        String::from_utf8_lossy(&b)
                            .chars()
                            .take(300)
                            .collect::<String>()
                    ));
                }
            }
        }
        let what = format!("[{} shard(s), restarted]", shard_counts[i]);
        check_realtime(&what, &s, &truth, &big_site, &mut errs);
        servers.push(s);
    }
    for s in servers {
        s.signal("TERM");
        let _ = s.wait();
    }
    eprintln!(
        "{lines} lines, {} queries per server; queried after {queried:.1?}, done in {:.1?}",
        qs.len(),
        started.elapsed()
    );
    let head = |v: &[String], n: usize| v.iter().take(n).cloned().collect::<Vec<_>>().join("\n");
    assert!(
        errs.is_empty() && same.is_empty(),
        "{} answers differ between shard counts or across the restart:\n{}\n\n{} differences from the model:\n{}",
        same.len(),
        head(&same, 30),
        errs.len(),
        head(&errs, 60)
    );
}

#[test]
fn bad_parameters_are_400_naming_the_parameter() {
    let tmp = common::tempdir();
    let s = start(&tmp.path().join("data"), 1);
    let _guard = KillOnPanic(vec![s.child.id()]);
    for (query, param) in [
        ("/v1/top?limit=0", "limit"),
        ("/v1/top?limit=1001", "limit"),
        ("/v1/top?limit=ten", "limit"),
        ("/v1/top?limit=-1", "limit"),
        ("/v1/top?dim=planet", "dim"),
        ("/v1/top?dim=channel,url", "dim"),
        ("/v1/top?dim=channel,channel", "dim"),
        ("/v1/top?dim=channel,device,os", "dim"),
        ("/v1/top?dim=channel&filter=planet:mars", "filter"),
        ("/v1/top?dim=channel&filter=device", "filter"),
        ("/v1/top?dim=channel&bots=maybe", "bots"),
        ("/v1/top?dim=channel&sort=entries", "sort"),
        ("/v1/top?dim=url&filter=device:mobile", "filter"),
        ("/v1/top?from=yesterday", "from"),
        ("/v1/top?from=-15", "from"),
        ("/v1/top?from=1e99", "from"),
        ("/v1/top?from=99999999999999999999", "from"),
        ("/v1/top?from=-999999999999999d", "from"),
        ("/v1/top?from=-401d", "from"),
        ("/v1/timeseries?step=1h&from=-4h", "step"),
        ("/v1/top?from=now&to=-1h", "to"),
        ("/v1/top?site=", "site"),
        ("/v1/top?bogus=1", "bogus"),
        ("/v1/top?limit=1&limit=2", "limit"),
        ("/v1/timeseries?step=2m", "step"),
        ("/v1/timeseries?step=1m&from=-150m", "step"),
        ("/v1/timeseries?url=", "url"),
        ("/v1/summary?to=2100-13-01T00:00:00Z", "to"),
        ("/v1/summary?dim=url", "dim"),
        ("/v1/realtime?minutes=61", "minutes"),
        ("/v1/realtime?minutes=0", "minutes"),
        ("/v1/realtime?from=-5m", "from"),
    ] {
        let (st, b) = get(&s, query);
        assert_eq!(st, 400, "{query}: {}", String::from_utf8_lossy(&b));
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["param"], param, "{query}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(param)),
            "{query}: {v}"
        );
    }
    // Odd but valid input is answered, never with a 500.
    for query in [
        "/v1/top?site=%FF",
        "/v1/top?site=%00",
        "/v1/timeseries?url=%FF%FE",
        "/v1/top?from=0.5e",
        "/v1/top?from=-1ns&to=now",
        "/v1/summary?from=now&to=now",
        "/v1/top?from=now-1h",
    ] {
        let (st, b) = get(&s, query);
        assert!(
            st == 200 || st == 400,
            "{query}: {st} {}",
            String::from_utf8_lossy(&b)
        );
    }
    s.signal("TERM");
    let (code, log) = s.wait();
    assert_eq!(code, Some(0), "{log}");
}
