//! `POST /v1/query` (and `GET /v1/query?q=`) of a real `pixeld serve` against an independent
//! model and against the thin endpoints it generalises, fed by the generator in `pageviews`
//! (pageviews and heartbeats on two sites from 400 visitors with real User-Agents, referrers,
//! utm tags and addresses in a country database the test writes).
//!
//! The model reads each query's JSON itself — dimensions, `time:*` buckets, filter
//! expressions (`is`, `is_not`, `contains`, `matches`, `and`, `or`, `not`), `site`,
//! `include.bots` — and counts pageviews and distinct visitors from the generated data,
//! never with pixeld's code. Where a metric has no model here (visits, engaged time, referrer
//! domains, entry and exit pages) the answer must equal `/v1/summary`, `/v1/timeseries` or
//! `/v1/top` over the same range: the query API is the general form of those. Comparisons
//! (`previous_period`, `year_over_year`) are checked against the model over the ranges the
//! answer states, the GET form against the POST form, and bad input gets 400 naming the field
//! while the server keeps serving. Event times are relative to the wall clock at the send.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::common::model::{enc, rfc};
use crate::common::{self, Server};
use crate::pageviews::{agents, generate, View, DIMS, NETWORKS};

const MINUTE: i64 = 60_000;

/// A running server holding generated data, and the model's pageviews of it.
struct Fixture {
    s: Server,
    views: Vec<View>,
    _geo: tempfile::TempDir,
}

/// Starts a server of `shards` shards with a country database, sends `n` generated lines
/// stamped in `windows` (minutes before now: from, to) and waits until all are aggregated.
fn fixture(shards: usize, seed: u64, n: usize, windows: &[(i64, i64)]) -> Fixture {
    let agents = agents();
    let geo = common::tempdir();
    let db = geo.path().join("countries.mmdb");
    common::write_country_db(&db, &NETWORKS);
    let config = format!("[geo]\ndatabase = {:?}\n", db.display().to_string());
    let now = common::now_ms() as i64;
    let windows: Vec<(i64, i64)> = windows
        .iter()
        .map(|(a, b)| (a * MINUTE, b * MINUTE))
        .collect();
    let (lines, views) = generate(seed, n, now, &windows, &agents);
    assert!(views.iter().any(|v| v.bot) && views.iter().any(|v| !v.bot));
    let mut s = Server::builder().shards(shards).config(&config).start();
    s.wait_complete();
    for chunk in lines.chunks(500) {
        common::post_ndjson(s.http, chunk.iter().map(|l| l.as_bytes()));
    }
    common::wait_aggregated(s.http, lines.len() as u64, "query api");
    Fixture {
        s,
        views,
        _geo: geo,
    }
}

impl Fixture {
    fn stop(self) {
        self.s.signal("TERM");
        let (code, err) = self.s.wait();
        assert_eq!(code, Some(0), "{err}");
    }
}

// ---------------------------------------------------------------------------------------
// The model.

/// Minutes of a `time:*` dimension's buckets; None for any other dimension.
fn step_of(dim: &str) -> Option<i64> {
    Some(match dim.strip_prefix("time:")? {
        "minute" | "1m" => 1,
        "5m" => 5,
        "10m" => 10,
        "15m" => 15,
        "30m" => 30,
        "hour" | "1h" => 60,
        "day" | "1d" => 1440,
        other => panic!("the model knows no time dimension {other}"),
    })
}

/// A pageview's value of dimension `dim`; None where the model cannot know it (a bot's
/// browser, OS and bot name).
fn value<'a>(v: &'a View, dim: &str) -> Option<&'a str> {
    match dim {
        "url" => Some(&v.url),
        "site" => Some(v.site),
        "ref_domain" => Some(&v.ref_domain),
        _ => {
            let d = DIMS
                .iter()
                .position(|n| *n == dim)
                .unwrap_or_else(|| panic!("the model knows no dimension {dim}"));
            (!(v.bot && (6..=8).contains(&d))).then(|| v.dims[d].as_str())
        }
    }
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect()
}

/// Whether filter expression `e` holds for `v`.
fn holds(e: &Value, v: &View) -> bool {
    let a = e.as_array().unwrap();
    let op = a[0].as_str().unwrap();
    match op {
        "and" => a[1].as_array().unwrap().iter().all(|x| holds(x, v)),
        "or" => a[1].as_array().unwrap().iter().any(|x| holds(x, v)),
        "not" => !holds(&a[1], v),
        _ => {
            let dim = a[1].as_str().unwrap();
            let vals = strs(&a[2]);
            let Some(x) = value(v, dim) else {
                // All the model knows of a bot's name is that it is not "human".
                assert!(
                    dim == "bot" && matches!(op, "is" | "is_not") && vals == ["human"],
                    "the model cannot evaluate {e} for a bot"
                );
                return op == "is_not";
            };
            match op {
                "is" => vals.contains(&x),
                "is_not" => !vals.contains(&x),
                "contains" => vals.iter().any(|s| x.contains(s)),
                "matches" => vals
                    .iter()
                    .any(|p| regex::Regex::new(p).unwrap().is_match(x)),
                _ => panic!("the model knows no operator {op}"),
            }
        }
    }
}

/// Whether expression `e` names dimension `dim` anywhere.
fn names(e: &Value, dim: &str) -> bool {
    let a = e.as_array().unwrap();
    match a[0].as_str().unwrap() {
        "and" | "or" => a[1].as_array().unwrap().iter().any(|x| names(x, dim)),
        "not" => names(&a[1], dim),
        _ => a[1] == dim,
    }
}

fn dims_of(q: &Value) -> Vec<String> {
    q["dimensions"]
        .as_array()
        .map(|a| a.iter().map(|d| d.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn filters_of(q: &Value) -> Vec<Value> {
    q["filters"].as_array().cloned().unwrap_or_default()
}

/// The model's rows of query `q` over `[from, to)` (ms): the values of its dimensions (a
/// time bucket as its start, RFC 3339; buckets counted from `from`) → (pageviews, distinct
/// visitors). Without dimensions, one row; with only a time dimension, every bucket. The
/// visitors of the site totals (no filter, no dimension but time) are its uniques: of any
/// hit; elsewhere of the pageviews.
fn model(views: &[View], q: &Value, from: i64, to: i64) -> BTreeMap<Vec<String>, (u64, u64)> {
    let dims = dims_of(q);
    let filters = filters_of(q);
    let site = q["site"].as_str().or(q["site_id"].as_str());
    let pages = dims.iter().any(|d| {
        matches!(
            d.as_str(),
            "url" | "site" | "ref_domain" | "entry_page" | "exit_page"
        )
    });
    let bots = !pages
        && (q["include"]["bots"] == true
            || dims.iter().any(|d| d == "bot")
            || filters.iter().any(|f| names(f, "bot")));
    let totals = filters.is_empty() && dims.iter().all(|d| step_of(d).is_some());
    let from_min = from.div_euclid(MINUTE);
    let bucket = |ts: i64, step: i64| {
        let m = ts.div_euclid(MINUTE);
        rfc(from_min + (m - from_min).div_euclid(step) * step)
    };
    let mut acc: BTreeMap<Vec<String>, (u64, BTreeSet<&str>)> = BTreeMap::new();
    if dims.is_empty() {
        acc.entry(vec![]).or_default();
    }
    if let [d] = dims.as_slice() {
        if let Some(step) = step_of(d) {
            let mut t = from_min;
            while t * MINUTE < to {
                acc.entry(vec![rfc(t)]).or_default();
                t += step;
            }
        }
    }
    for v in views {
        if (!v.pageview && !totals)
            || v.ts < from
            || v.ts >= to
            || site.is_some_and(|s| s != v.site)
            || (v.bot && !bots)
            || !filters.iter().all(|f| holds(f, v))
        {
            continue;
        }
        let key = dims
            .iter()
            .map(|d| match step_of(d) {
                Some(step) => bucket(v.ts, step),
                None => value(v, d)
                    .unwrap_or_else(|| panic!("the model cannot name a bot's {d}"))
                    .to_string(),
            })
            .collect();
        let e = acc.entry(key).or_default();
        e.0 += u64::from(v.pageview);
        e.1.insert(&v.vid);
    }
    acc.into_iter()
        .map(|(k, (n, vs))| (k, (n, vs.len() as u64)))
        .collect()
}

/// The model's rows as the query's metrics (`views`, `visitors`) in the order asked.
fn as_metrics(
    rows: BTreeMap<Vec<String>, (u64, u64)>,
    q: &Value,
) -> BTreeMap<Vec<String>, Vec<u64>> {
    let ms = strs(&q["metrics"]);
    rows.into_iter()
        .map(|(k, (views, visitors))| {
            let m = ms
                .iter()
                .map(|m| match *m {
                    "views" => views,
                    "visitors" => visitors,
                    other => panic!("the model has no metric {other}"),
                })
                .collect();
            (k, m)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Asking pixeld.

/// Milliseconds since the epoch of an RFC 3339 time.
fn ms_of(t: &Value) -> i64 {
    let s = t.as_str().unwrap_or_else(|| panic!("a time: {t}"));
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s}: {e}"));
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// `POST /v1/query` of `body`: (status, parsed answer).
fn post(port: u16, body: &[u8]) -> (u16, Value) {
    let (st, _, b) = common::http(
        port,
        "POST",
        "/v1/query",
        &[("Content-Type", "application/json")],
        body,
    );
    let v = serde_json::from_slice(&b)
        .unwrap_or_else(|e| panic!("{st}: not JSON ({e}): {}", String::from_utf8_lossy(&b)));
    (st, v)
}

/// An answer of `/v1/query`, checked for its shape.
struct Answer {
    v: Value,
    /// Each result's dimension values and metrics, in the answer's order.
    rows: Vec<(Vec<String>, Vec<Value>)>,
    from: i64,
    to: i64,
}

impl Answer {
    /// The rows' metrics as counts, by dimension values (which must not repeat).
    fn counts(&self) -> BTreeMap<Vec<String>, Vec<u64>> {
        let mut out = BTreeMap::new();
        for (k, m) in &self.rows {
            let m = m
                .iter()
                .map(|x| x.as_u64().unwrap_or_else(|| panic!("a count: {x}")))
                .collect();
            assert!(out.insert(k.clone(), m).is_none(), "{k:?} twice");
        }
        out
    }
}

/// Checks an answer of `q` for the contract's shape: complete, `meta` echoing the query,
/// rows of the asked widths, `total_rows` and `computed_from` given.
fn shaped(q: &Value, v: Value) -> Answer {
    assert_eq!(v["complete"], true, "{q}: {v}");
    assert_eq!(v["catchup_records"], 0, "{q}: {v}");
    let meta = &v["meta"];
    assert_eq!(meta["metrics"], q["metrics"], "{q}: {v}");
    // The dimensions as asked (a time dimension under any of its names: `time:1h` may be
    // said `time:hour`).
    let said: Vec<String> = strs(&meta["dimensions"])
        .into_iter()
        .map(String::from)
        .collect();
    let asked = dims_of(q);
    assert!(
        said.len() == asked.len()
            && said.iter().zip(&asked).all(|(x, y)| {
                x == y
                    || (x.starts_with("time:")
                        && y.starts_with("time:")
                        && step_of(x) == step_of(y))
            }),
        "{q}: {v}"
    );
    assert!(
        meta["computed_from"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{q}: {v}"
    );
    assert!(meta["sketched"].is_boolean(), "{q}: {v}");
    let total = meta["total_rows"]
        .as_u64()
        .unwrap_or_else(|| panic!("{q}: {v}"));
    let range = meta["date_range"].as_array().unwrap();
    assert_eq!(range.len(), 2, "{q}: {v}");
    let (from, to) = (ms_of(&range[0]), ms_of(&range[1]));
    assert!(
        from < to && from % MINUTE == 0 && to % MINUTE == 0,
        "{q}: {v}"
    );
    let nm = q["metrics"].as_array().unwrap().len();
    let nd = dims_of(q).len();
    let rows: Vec<(Vec<String>, Vec<Value>)> = v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{q}: {v}"))
        .iter()
        .map(|r| {
            let d: Vec<String> = strs(&r["dimensions"])
                .into_iter()
                .map(String::from)
                .collect();
            let m = r["metrics"].as_array().unwrap().clone();
            assert_eq!((d.len(), m.len()), (nd, nm), "{q}: {r}");
            (d, m)
        })
        .collect();
    let limit = q["limit"].as_u64().unwrap_or(100) as usize;
    let offset = q["offset"].as_u64().unwrap_or(0) as usize;
    assert_eq!(
        rows.len(),
        (total as usize).saturating_sub(offset).min(limit),
        "{q}: {v}"
    );
    Answer { v, rows, from, to }
}

/// `POST /v1/query` of `q`, which must answer 200.
fn ask(port: u16, q: &Value) -> Answer {
    let (st, v) = post(port, q.to_string().as_bytes());
    assert_eq!(st, 200, "{q}: {v}");
    shaped(q, v)
}

/// Asks `q` and compares every row with the model (pageviews and distinct visitors).
fn against_model(port: u16, views: &[View], q: &Value, what: &str) -> Answer {
    let a = ask(port, q);
    let want = as_metrics(model(views, q, a.from, a.to), q);
    assert_eq!(a.v["meta"]["sketched"], false, "{what}: {q}");
    assert_eq!(a.counts(), want, "{what}: {q}");
    assert_eq!(
        a.v["meta"]["total_rows"].as_u64(),
        Some(want.len() as u64),
        "{what}: {q}"
    );
    a
}

/// Whether the rows are in the default order: the first metric descending, then the
/// dimension values ascending (bytewise).
fn default_order(a: &Answer) -> bool {
    a.rows.windows(2).all(|w| {
        let (x, y) = (w[0].1[0].as_f64(), w[1].1[0].as_f64());
        x > y || (x == y && w[0].0 <= w[1].0)
    })
}

/// Whether two JSON numbers (or nulls) are the same figure.
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
        _ => a.is_null() && b.is_null(),
    }
}

/// `GET path` of the API, which must answer 200 and be complete.
fn get(port: u16, path: &str) -> Value {
    let (st, body) = common::try_get(port, path);
    assert_eq!(st, 200, "{path}: {}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["complete"], true, "{path}: {v}");
    v
}

/// Asks `q` and `GET path` until both cover the same range (a minute may turn between two
/// requests), then returns both.
fn with_thin(port: u16, q: &Value, path: &str) -> (Answer, Value) {
    for _ in 0..3 {
        let a = ask(port, q);
        let t = get(port, path);
        let range = &a.v["meta"]["date_range"];
        if range[0] == t["from"] && range[1] == t["to"] {
            return (a, t);
        }
    }
    panic!("{q} and {path} never covered the same range")
}

// ---------------------------------------------------------------------------------------
// The tests.

/// The pageview-dimension queries compared with the model.
fn model_cases(shards: usize, seed: u64) {
    let f = fixture(shards, seed, 3000, &[(0, 50)]);
    let (port, views) = (f.s.http, &f.views);
    let cases = [
        json!({"metrics": ["views", "visitors"], "dimensions": ["channel"]}),
        json!({"metrics": ["views", "visitors"], "dimensions": ["country", "device"]}),
        json!({"metrics": ["visitors", "views"], "dimensions": ["device"],
               "filters": [["is", "channel", ["search", "social"]]]}),
        json!({"metrics": ["views", "visitors"], "dimensions": ["channel"],
               "filters": [["is_not", "country", ["DE", "(unknown)"]]]}),
        json!({"metrics": ["views"], "dimensions": ["source"],
               "filters": [["contains", "source", ["google", ".co"]]]}),
        json!({"metrics": ["views", "visitors"], "dimensions": ["utm_campaign"],
               "filters": [["matches", "utm_campaign", ["^Spring"]]]}),
        json!({"metrics": ["views", "visitors"], "dimensions": ["browser"],
               "filters": [["matches", "os", ["^(iOS|Android)$", "^mac"]]]}),
        json!({"metrics": ["views", "visitors"], "dimensions": ["os"],
               "filters": [["or", [["is", "channel", ["email"]], ["is", "device", ["tablet"]]]]]}),
        json!({"metrics": ["views", "visitors"], "dimensions": ["country"],
               "filters": [["not", ["is", "device", ["mobile"]]]]}),
        json!({"metrics": ["views", "visitors"], "dimensions": ["channel", "device"],
               "filters": [
                   ["and", [
                       ["or", [["is", "country", ["DE", "FR"]], ["contains", "utm_medium", ["mail"]]]],
                       ["not", ["is", "channel", ["direct"]]]]],
                   ["is_not", "device", ["tablet"]]]}),
        json!({"site": "shop.example", "metrics": ["views", "visitors"], "dimensions": ["utm_medium"]}),
        json!({"site_id": "news.example", "metrics": ["views"], "dimensions": ["browser"],
               "filters": [["is", "utm_source", ["(none)"]]]}),
        json!({"metrics": ["views", "visitors"], "dimensions": ["device"], "include": {"bots": true}}),
        json!({"metrics": ["views", "visitors"], "dimensions": ["channel", "country"],
               "include": {"bots": true, "total_rows": true}}),
        json!({"metrics": ["views", "visitors"], "dimensions": ["device", "country"],
               "filters": [["is_not", "bot", ["human"]]]}),
        json!({"metrics": ["views"], "dimensions": ["channel"], "filters": [["is", "bot", ["human"]]]}),
        json!({"metrics": ["views", "visitors"], "filters": [["is", "device", ["mobile"]]]}),
        json!({"metrics": ["visitors"], "site": "news.example",
               "filters": [["is", "channel", ["search"]], ["is_not", "country", ["AT"]]]}),
        json!({"metrics": ["views", "visitors"], "dimensions": ["utm_source", "utm_campaign"],
               "date_range": ["-2h", "now"]}),
        json!({"metrics": ["views", "visitors"], "dimensions": ["region", "channel"],
               "filters": [["is_not", "region", ["(unknown)"]], ["is_not", "country", ["US"]]]}),
        json!({"metrics": ["views", "visitors"], "dimensions": ["country"],
               "filters": [["matches", "region", ["^(DE|AT)-"]]]}),
    ];
    for q in &cases {
        let a = against_model(port, views, q, &format!("{shards} shards"));
        assert!(!a.rows.is_empty(), "{q}");
        assert!(default_order(&a), "{q}: not in the default order: {}", a.v);
    }
    // A filter that names `bot` brings the bots in: the bots-only list is all "bot" devices.
    let a = ask(port, &cases[14]);
    assert!(!a.rows.is_empty());
    assert!(a.rows.iter().all(|(k, _)| k[0] == "bot"), "{}", a.v);
    // Without dimensions: one row, no values.
    let a = ask(port, &cases[16]);
    assert_eq!(a.rows.len(), 1);
    assert_eq!(a.rows[0].0, Vec::<String>::new());
    // Bots are left out by default: with them, more views.
    let sum = |a: &Answer| -> u64 { a.counts().values().map(|m| m[0]).sum() };
    let all = ask(port, &cases[12]);
    let humans = ask(
        port,
        &json!({"metrics": ["views"], "dimensions": ["device"]}),
    );
    let pageviews = |bots: bool| {
        views
            .iter()
            .filter(|v| v.pageview && (bots || !v.bot))
            .count()
    };
    assert_eq!(sum(&all), pageviews(true) as u64);
    assert_eq!(sum(&humans), pageviews(false) as u64);

    // Orders asked for.
    let q = json!({"metrics": ["views", "visitors"], "dimensions": ["source"],
                   "order_by": [["views", "asc"]]});
    let a = against_model(port, views, &q, "views ascending");
    assert!(
        a.rows
            .windows(2)
            .all(|w| w[0].1[0].as_u64() <= w[1].1[0].as_u64()),
        "{}",
        a.v
    );
    let q = json!({"metrics": ["views"], "dimensions": ["device", "channel"],
                   "order_by": [["device", "asc"], ["views", "desc"]]});
    let a = against_model(port, views, &q, "by device, then views");
    assert!(
        a.rows.windows(2).all(|w| w[0].0[0] < w[1].0[0]
            || (w[0].0[0] == w[1].0[0] && w[0].1[0].as_u64() >= w[1].1[0].as_u64())),
        "{}",
        a.v
    );
    let q = json!({"metrics": ["views", "visitors"], "dimensions": ["country"],
                   "order_by": [["visitors", "desc"]]});
    let a = against_model(port, views, &q, "by visitors");
    assert!(
        a.rows
            .windows(2)
            .all(|w| w[0].1[1].as_u64() >= w[1].1[1].as_u64()),
        "{}",
        a.v
    );

    // Pages: limit and offset cut the same list; the pages put together are the whole.
    let whole = json!({"metrics": ["views", "visitors"], "dimensions": ["country", "source"],
                       "limit": 1000});
    let full = against_model(port, views, &whole, "the whole list");
    assert!(full.rows.len() > 15, "{}", full.v);
    let mut paged = Vec::new();
    let mut offset = 0;
    loop {
        let mut q = whole.clone();
        q["limit"] = json!(7);
        q["offset"] = json!(offset);
        let a = ask(port, &q);
        assert_eq!(
            a.v["meta"]["total_rows"], full.v["meta"]["total_rows"],
            "{q}"
        );
        if a.rows.is_empty() {
            break;
        }
        paged.extend(a.rows);
        offset += 7;
    }
    assert_eq!(paged, full.rows);
    // The default limit is 100.
    let mut q = whole.clone();
    q.as_object_mut().unwrap().remove("limit");
    let a = ask(port, &q);
    assert_eq!(a.rows, full.rows[..full.rows.len().min(100)]);
    f.stop();
}

#[test]
fn query_model_cases_one_shard() {
    model_cases(1, 21);
}

#[test]
fn query_model_cases_three_shards() {
    model_cases(3, 22);
}

/// Time dimensions: buckets of pageviews by value against the model; every bucket a row
/// without other dimensions; site totals by hour and by 5 minutes equal `/v1/timeseries`.
#[test]
fn query_time_dimensions() {
    let f = fixture(1, 23, 1500, &[(0, 50)]);
    let (port, views) = (f.s.http, &f.views);
    let q = json!({"metrics": ["views"], "dimensions": ["time:minute", "channel"],
                   "date_range": ["-60m", "now"], "limit": 1000});
    let a = against_model(port, views, &q, "by minute and channel");
    assert!(a.rows.len() > 50, "{}", a.v);
    assert_eq!(a.to - a.from, 61 * MINUTE, "{}", a.v["meta"]);
    // Only rows with pageviews, time ascending.
    assert!(a.rows.iter().all(|(_, m)| m[0].as_u64() > Some(0)));
    assert!(a.rows.windows(2).all(|w| w[0].0[0] <= w[1].0[0]), "{}", a.v);

    // A time dimension alone: every bucket, zeros included, in order.
    for q in [
        json!({"metrics": ["views", "visitors"], "dimensions": ["time:minute"],
               "date_range": ["-60m", "now"], "limit": 1000}),
        json!({"metrics": ["visitors", "views"], "dimensions": ["time:10m"],
               "filters": [["is", "device", ["mobile"]]], "date_range": ["-60m", "now"]}),
        json!({"metrics": ["views"], "dimensions": ["time:15m"],
               "filters": [["contains", "source", ["google"]]], "date_range": ["-2h", "now"]}),
    ] {
        let step = step_of(q["dimensions"][0].as_str().unwrap()).unwrap() * MINUTE;
        let a = against_model(port, views, &q, "by time");
        assert_eq!((a.to - a.from) % step, 0, "{}", a.v["meta"]);
        let times: Vec<String> = (0..(a.to - a.from) / step)
            .map(|i| rfc((a.from + i * step) / MINUTE))
            .collect();
        let got: Vec<String> = a.rows.iter().map(|(k, _)| k[0].clone()).collect();
        assert_eq!(got, times, "{q}");
        assert!(a.rows.iter().any(|(_, m)| m[0] == 0), "{q}: zeros left out");
    }

    // Site totals per bucket: the same figures as /v1/timeseries over the same range.
    for (q, path, fields) in [
        (
            json!({"metrics": ["views", "visits", "bounce_rate"], "dimensions": ["time:hour"],
                   "date_range": ["-3h", "now"]}),
            "/v1/timeseries?from=-3h&to=now&step=1h",
            vec!["views", "visits", "bounce_rate"],
        ),
        (
            json!({"metrics": ["views", "hits", "visitors", "engaged_seconds", "visits",
                               "bounces", "bounce_rate", "visit_duration", "views_per_visit"],
                   "dimensions": ["time:5m"], "date_range": ["-60m", "now"]}),
            "/v1/timeseries?from=-60m&to=now&step=5m",
            vec![
                "views",
                "hits",
                "uniques",
                "engaged_seconds",
                "visits",
                "bounces",
                "bounce_rate",
                "visit_duration",
                "views_per_visit",
            ],
        ),
    ] {
        let (a, t) = with_thin(port, &q, path);
        let points = t["points"].as_array().unwrap();
        assert_eq!(a.rows.len(), points.len(), "{q}: {} vs {t}", a.v);
        for ((k, m), p) in a.rows.iter().zip(points) {
            assert_eq!(k, &vec![p["t"].as_str().unwrap().to_string()], "{q}");
            for (x, name) in m.iter().zip(&fields) {
                assert!(
                    same(x, &p[*name]),
                    "{q}: {name} at {}: {x} vs {}",
                    p["t"],
                    p[*name]
                );
            }
        }
        assert!(
            a.rows.iter().any(|(_, m)| m[0].as_u64() > Some(0)),
            "{}",
            a.v
        );
    }
    // `time:1h` is `time:hour`.
    let hour =
        json!({"metrics": ["views"], "dimensions": ["time:hour"], "date_range": ["-3h", "now"]});
    let one_h =
        json!({"metrics": ["views"], "dimensions": ["time:1h"], "date_range": ["-3h", "now"]});
    assert_eq!(ask(port, &hour).rows, ask(port, &one_h).rows);
    f.stop();
}

/// Every site-total metric without dimensions equals `/v1/summary` over the same range, for
/// each form of `date_range`.
#[test]
fn query_totals_equal_the_summary() {
    let f = fixture(1, 24, 1500, &[(0, 50), (70, 200)]);
    let port = f.s.http;
    let metrics = [
        "views",
        "visitors",
        "hits",
        "visits",
        "bounce_rate",
        "visit_duration",
        "views_per_visit",
        "engaged_seconds",
    ];
    let fields = [
        "views",
        "uniques",
        "hits",
        "visits",
        "bounce_rate",
        "visit_duration",
        "views_per_visit",
        "engaged_seconds",
    ];
    let now_min = common::now_ms() as i64 / MINUTE;
    let two_hours_ago = (now_min - 120) * 60;
    for (extra, path) in [
        (json!({}), "/v1/summary?from=-24h".to_string()),
        (
            json!({"site": "news.example"}),
            "/v1/summary?from=-24h&site=news.example".to_string(),
        ),
        (
            json!({"date_range": "7d"}),
            "/v1/summary?from=-7d&to=now".to_string(),
        ),
        (
            json!({"date_range": "90m"}),
            "/v1/summary?from=-90m&to=now".to_string(),
        ),
        (
            json!({"date_range": "3h"}),
            "/v1/summary?from=-3h&to=now".to_string(),
        ),
        (
            json!({"date_range": [two_hours_ago.to_string(), "now"]}),
            format!("/v1/summary?from={two_hours_ago}&to=now"),
        ),
        (
            json!({"date_range": [rfc(now_min - 100), rfc(now_min - 40)]}),
            format!(
                "/v1/summary?from={}&to={}",
                rfc(now_min - 100),
                rfc(now_min - 40)
            ),
        ),
        (
            json!({"date_range": "day"}),
            format!("/v1/summary?from={}&to=now", rfc(now_min - now_min % 1440)),
        ),
    ] {
        let mut q = json!({"metrics": metrics});
        for (k, v) in extra.as_object().unwrap() {
            q[k] = v.clone();
        }
        let (a, s) = with_thin(port, &q, &path);
        assert_eq!(a.rows.len(), 1, "{}", a.v);
        assert_eq!(a.rows[0].0, Vec::<String>::new());
        for ((x, m), field) in a.rows[0].1.iter().zip(metrics).zip(fields) {
            assert!(same(x, &s[field]), "{q}: {m} {x} vs {path}: {}", s[field]);
        }
    }
    // Data in the range, and the model's pageviews of the humans.
    let q = json!({"metrics": ["views"]});
    let a = ask(port, &q);
    assert_eq!(
        a.rows[0].1[0].as_u64(),
        Some(f.views.iter().filter(|v| v.pageview && !v.bot).count() as u64)
    );
    f.stop();
}

/// The page dimensions: urls (filtered on the url) against the model and `/v1/top?dim=url`,
/// referrer domains, sites, entry and exit pages against `/v1/top`.
#[test]
fn query_page_dimensions() {
    let f = fixture(1, 25, 1500, &[(0, 50)]);
    let (port, views) = (f.s.http, &f.views);
    for q in [
        json!({"metrics": ["views"], "dimensions": ["url"],
               "filters": [["contains", "url", ["/p1"]]], "limit": 1000}),
        json!({"metrics": ["views"], "dimensions": ["url"],
               "filters": [["is", "url", ["https://news.example/p3", "https://shop.example/p14"]]]}),
        json!({"metrics": ["views"], "dimensions": ["url"],
               "filters": [["matches", "url", ["/p[0-4]$"]], ["not", ["contains", "url", ["shop."]]]]}),
        json!({"metrics": ["views"], "dimensions": ["url"], "site": "shop.example", "limit": 1000}),
        json!({"metrics": ["views"], "dimensions": ["site"]}),
    ] {
        let a = against_model(port, views, &q, "pages");
        assert!(!a.rows.is_empty(), "{q}");
        assert!(default_order(&a), "{}", a.v);
    }
    // Every url metric, as /v1/top?dim=url&sort=… lists them.
    let metrics = [
        "views",
        "visitors",
        "hits",
        "engaged_seconds",
        "entries",
        "exits",
        "avg_engaged_seconds",
    ];
    let q = json!({"metrics": metrics, "dimensions": ["url"], "limit": 1000});
    let (a, t) = with_thin(
        port,
        &q,
        "/v1/top?dim=url&sort=views&from=-24h&to=now&limit=1000",
    );
    let items = t["items"].as_array().unwrap();
    assert_eq!(a.rows.len(), items.len(), "{} vs {t}", a.v);
    let by_url: BTreeMap<&str, &Value> = items
        .iter()
        .map(|it| (it["key"].as_str().unwrap(), it))
        .collect();
    for (k, m) in &a.rows {
        let it = by_url[k[0].as_str()];
        for (x, name) in m.iter().zip(metrics) {
            assert!(same(x, &it[name]), "{}: {name} {x} vs {}", k[0], it[name]);
        }
    }
    assert!(default_order(&a), "{}", a.v);
    // Ranked by visitors.
    let q = json!({"metrics": ["visitors", "views"], "dimensions": ["url"], "limit": 5});
    let (a, t) = with_thin(
        port,
        &q,
        "/v1/top?dim=url&sort=visitors&from=-24h&to=now&limit=5",
    );
    let got: Vec<Value> = a.rows.iter().map(|(_, m)| m[0].clone()).collect();
    let want: Vec<Value> = t["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| it["visitors"].clone())
        .collect();
    assert_eq!(got, want);
    // The other page lists: the same keys and counts in the same order as /v1/top.
    for (dim, metric) in [
        ("ref_domain", "views"),
        ("site", "views"),
        ("entry_page", "entries"),
        ("exit_page", "exits"),
    ] {
        let q = json!({"metrics": [metric], "dimensions": [dim], "limit": 1000});
        let (a, t) = with_thin(
            port,
            &q,
            &format!("/v1/top?dim={dim}&from=-24h&to=now&limit=1000"),
        );
        let got: Vec<(String, Value)> = a
            .rows
            .iter()
            .map(|(k, m)| (k[0].clone(), m[0].clone()))
            .collect();
        let want: Vec<(String, Value)> = t["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|it| (it["key"].as_str().unwrap().to_string(), it[metric].clone()))
            .collect();
        assert!(!want.is_empty(), "{dim}");
        assert_eq!(got, want, "{dim}");
    }
    // A ref_domain filter on its own dimension.
    let q = json!({"metrics": ["views"], "dimensions": ["ref_domain"],
                   "filters": [["contains", "ref_domain", ["google"]]]});
    let a = ask(port, &q);
    assert!(!a.rows.is_empty(), "{}", a.v);
    assert!(
        a.rows.iter().all(|(k, _)| k[0].contains("google")),
        "{}",
        a.v
    );
    f.stop();
}

/// Checks one row's `comparison` against the model's previous counts (`prev`, zeros when
/// None) and its `change`.
fn check_comparison(row: &Value, dims: &Value, cur: &[u64], prev: Option<&Vec<u64>>, what: &str) {
    let c = &row["comparison"];
    assert_eq!(&c["dimensions"], dims, "{what}: {row}");
    let zeros = vec![0; cur.len()];
    let prev = prev.unwrap_or(&zeros);
    let got: Vec<u64> = c["metrics"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {row}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(&got, prev, "{what}: {row}");
    let change = c["change"].as_array().unwrap();
    assert_eq!(change.len(), cur.len(), "{what}: {row}");
    for ((x, p), ch) in cur.iter().zip(prev).zip(change) {
        if *p == 0 {
            assert!(ch.is_null(), "{what}: {row}");
        } else {
            let exact = (*x as f64 - *p as f64) / *p as f64 * 100.0;
            let got = ch.as_f64().unwrap_or_else(|| panic!("{what}: {row}"));
            assert!(
                (got - exact).abs() <= 0.05 + 1e-9
                    && ((got * 10.0).round() - got * 10.0).abs() < 1e-6,
                "{what}: change {got} for {x} after {p}: {row}"
            );
        }
    }
}

/// Comparisons with the previous period and the year before, against the model over the
/// ranges the answer states.
#[test]
fn query_comparisons() {
    // Three stretches: 5–30, 35–55 and 65–90 minutes ago.
    let f = fixture(1, 26, 2000, &[(5, 30), (35, 55), (65, 90)]);
    let (port, views) = (f.s.http, &f.views);
    for q in [
        json!({"metrics": ["views", "visitors"], "dimensions": ["channel"],
               "date_range": ["-30m", "now"], "include": {"comparisons": "previous_period"}}),
        json!({"metrics": ["visitors", "views"], "dimensions": ["channel"],
               "date_range": ["-60m", "now"], "include": {"comparisons": "previous_period"}}),
        json!({"metrics": ["views"], "dimensions": ["device", "country"],
               "filters": [["is_not", "channel", ["internal"]]],
               "date_range": ["-30m", "now"], "include": {"comparisons": "previous_period"}}),
        json!({"metrics": ["views", "visitors"], "filters": [["is", "device", ["desktop"]]],
               "date_range": ["-30m", "now"], "include": {"comparisons": "previous_period"}}),
        json!({"metrics": ["views", "visitors"],
               "date_range": ["-60m", "now"], "include": {"comparisons": "previous_period"}}),
    ] {
        let a = against_model(port, views, &q, "this period");
        let meta = &a.v["meta"];
        let cr = meta["comparison_date_range"]
            .as_array()
            .unwrap_or_else(|| panic!("{q}: {meta}"));
        let (cfrom, cto) = (ms_of(&cr[0]), ms_of(&cr[1]));
        assert_eq!(cto, a.from, "{q}: {meta}");
        assert_eq!(cto - cfrom, a.to - a.from, "{q}: {meta}");
        let prev = as_metrics(model(views, &q, cfrom, cto), &q);
        assert!(prev.values().any(|m| m[0] > 0), "{q}: nothing before");
        let counts = a.counts();
        for row in a.v["results"].as_array().unwrap() {
            let k: Vec<String> = strs(&row["dimensions"])
                .into_iter()
                .map(String::from)
                .collect();
            check_comparison(row, &json!(k), &counts[&k], prev.get(&k), &q.to_string());
        }
    }
    // A time dimension: each bucket compared with the bucket one period earlier.
    let q = json!({"metrics": ["views"], "dimensions": ["time:10m"],
                   "date_range": ["-60m", "now"], "include": {"comparisons": "previous_period"}});
    let a = against_model(port, views, &q, "by 10 minutes");
    let meta = &a.v["meta"];
    let cr = meta["comparison_date_range"].as_array().unwrap();
    let (cfrom, cto) = (ms_of(&cr[0]), ms_of(&cr[1]));
    assert_eq!((cto, cto - cfrom), (a.from, a.to - a.from), "{meta}");
    let prev = as_metrics(model(views, &q, cfrom, cto), &q);
    let len = a.to - a.from;
    for row in a.v["results"].as_array().unwrap() {
        let t = ms_of(&row["dimensions"][0]);
        let earlier = vec![rfc((t - len) / MINUTE)];
        let cur = vec![row["metrics"][0].as_u64().unwrap()];
        check_comparison(
            row,
            &json!(earlier),
            &cur,
            prev.get(&earlier),
            "by 10 minutes",
        );
    }
    // A year before: no data, zeros and no change.
    let q = json!({"metrics": ["views", "visitors"], "dimensions": ["channel"],
                   "date_range": ["-30m", "now"], "include": {"comparisons": "year_over_year"}});
    let a = against_model(port, views, &q, "year over year");
    let meta = &a.v["meta"];
    let cr = meta["comparison_date_range"]
        .as_array()
        .unwrap_or_else(|| panic!("{meta}"));
    let year = 365 * 1440 * MINUTE;
    assert!(
        ms_of(&cr[0]) <= a.from - year && ms_of(&cr[1]) >= a.to - year,
        "{meta}"
    );
    let counts = a.counts();
    for row in a.v["results"].as_array().unwrap() {
        let k: Vec<String> = strs(&row["dimensions"])
            .into_iter()
            .map(String::from)
            .collect();
        check_comparison(row, &json!(k), &counts[&k], None, "year over year");
    }
    // Without comparisons, none.
    let a = ask(
        port,
        &json!({"metrics": ["views"], "dimensions": ["channel"]}),
    );
    assert!(a.v["meta"]
        .get("comparison_date_range")
        .is_none_or(Value::is_null));
    assert!(a.v["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r.get("comparison").is_none_or(Value::is_null)));
    f.stop();
}

/// `GET /v1/query?q=` answers what the POST of the same JSON answers, byte for byte.
#[test]
fn query_get_form_equals_post() {
    let f = fixture(1, 27, 1000, &[(0, 50)]);
    let port = f.s.http;
    for q in [
        json!({"metrics": ["views", "visitors"], "dimensions": ["channel", "device"],
               "filters": [["or", [["matches", "utm_campaign", ["^Spring"]], ["is_not", "country", ["DE"]]]]],
               "order_by": [["visitors", "desc"]], "limit": 5, "offset": 1}),
        json!({"metrics": ["views", "bounce_rate"], "dimensions": ["time:hour"], "date_range": ["-3h", "now"]}),
        json!({"metrics": ["views"], "dimensions": ["url"], "filters": [["contains", "url", ["/p1"]]],
               "include": {"comparisons": "previous_period"}, "date_range": "30m"}),
    ] {
        let text = q.to_string();
        let mut same_body = false;
        for _ in 0..3 {
            let (st, _, post) = common::http(
                port,
                "POST",
                "/v1/query",
                &[("Content-Type", "application/json")],
                text.as_bytes(),
            );
            assert_eq!(st, 200, "{q}: {}", String::from_utf8_lossy(&post));
            let (st, get) = common::try_get(port, &format!("/v1/query?q={}", enc(&text)));
            assert_eq!(st, 200, "{q}: {}", String::from_utf8_lossy(&get));
            let v: Value = serde_json::from_slice(&get).unwrap();
            shaped(&q, v);
            if post == get {
                same_body = true;
                break;
            }
            // Only a turn of the minute between the two may tell them apart.
            let (p, g): (Value, Value) = (
                serde_json::from_slice(&post).unwrap(),
                serde_json::from_slice(&get).unwrap(),
            );
            assert_ne!(
                p["meta"]["date_range"], g["meta"]["date_range"],
                "{q}: POST {p} vs GET {g}"
            );
        }
        assert!(same_body, "{q}: the minute kept turning");
    }
    f.stop();
}

/// Bad input answers 400 naming the field (and, for what cells cannot answer, saying so);
/// the server keeps serving.
#[test]
fn query_bad_input() {
    let f = fixture(1, 28, 200, &[(0, 50)]);
    let port = f.s.http;
    let big = "a".repeat(300);
    // (body, the field named (any of these), whether the error says the cells do not cover it)
    let cases: Vec<(String, Option<&str>, bool)> = vec![
        (r#"{"metrics": ["nope"]}"#.into(), Some("metrics"), false),
        (r#"{"metrics": []}"#.into(), Some("metrics"), false),
        (r#"{"dimensions": ["channel"]}"#.into(), Some("metrics"), false),
        (
            r#"{"metrics": ["views"], "dimensions": ["colour"]}"#.into(),
            Some("dimensions"),
            false,
        ),
        (
            r#"{"metrics": ["views"], "dimensions": ["channel", "device", "country"]}"#.into(),
            Some("dimensions"),
            true,
        ),
        (
            json!({"metrics": ["views"], "dimensions": ["channel"],
                   "filters": [["matches", "utm_campaign", [big]]]})
            .to_string(),
            Some("filters"),
            false,
        ),
        (
            r#"{"metrics": ["views"], "filters": [["matches", "source", ["["]]]}"#.into(),
            Some("filters"),
            false,
        ),
        (
            r#"{"metrics": ["views"], "filters": [["is", "colour", ["red"]]]}"#.into(),
            Some("filters"),
            false,
        ),
        (
            r#"{"metrics": ["views"], "filters": [["resembles", "device", ["mobile"]]]}"#.into(),
            Some("filters"),
            false,
        ),
        (
            r#"{"metrics": ["views", "engaged_seconds"], "dimensions": ["channel"]}"#.into(),
            Some("metrics"),
            true,
        ),
        (
            r#"{"metrics": ["hits"], "filters": [["is", "device", ["mobile"]]]}"#.into(),
            Some("metrics"),
            true,
        ),
        (
            r#"{"metrics": ["visits"], "dimensions": ["url"]}"#.into(),
            Some("metrics"),
            true,
        ),
        (
            r#"{"metrics": ["views"], "dimensions": ["channel"], "filters": [["contains", "url", ["/p1"]]]}"#.into(),
            Some("filters"),
            true,
        ),
        (
            r#"{"metrics": ["entries"], "dimensions": ["ref_domain"]}"#.into(),
            Some("metrics"),
            true,
        ),
        (
            r#"{"metrics": ["views"], "dimensions": ["url", "time:hour"]}"#.into(),
            Some("dimensions"),
            true,
        ),
        (r#"{"metrics": ["views"]"#.into(), None, false),
        (r#"not json"#.into(), None, false),
        (
            r#"{"metrics": ["views"], "limit": 0}"#.into(),
            Some("limit"),
            false,
        ),
        (
            r#"{"metrics": ["views"], "limit": 1001}"#.into(),
            Some("limit"),
            false,
        ),
        (
            r#"{"metrics": ["views"], "colour": "red"}"#.into(),
            Some("colour"),
            false,
        ),
        (
            r#"{"metrics": ["views"], "date_range": "last tuesday"}"#.into(),
            Some("date_range"),
            false,
        ),
        (
            r#"{"metrics": ["views"], "date_range": ["-2h"]}"#.into(),
            Some("date_range"),
            false,
        ),
        (
            r#"{"metrics": ["views"], "dimensions": ["channel"], "order_by": [["colour", "asc"]]}"#.into(),
            Some("order_by"),
            false,
        ),
        (
            r#"{"metrics": ["views"], "include": {"comparisons": "last_week"}}"#.into(),
            Some("include|include.comparisons|comparisons"),
            false,
        ),
    ];
    let fine = json!({"metrics": ["views"], "dimensions": ["channel"]});
    for (body, param, uncovered) in &cases {
        let (st, v) = post(port, body.as_bytes());
        assert_eq!(st, 400, "{body}: {v}");
        let error = v["error"].as_str().unwrap_or_else(|| panic!("{body}: {v}"));
        assert!(!error.is_empty(), "{body}");
        if let Some(p) = param {
            let named = v["param"].as_str().unwrap_or_else(|| panic!("{body}: {v}"));
            assert!(p.split('|').any(|p| p == named), "{body}: {v}");
        }
        if *uncovered {
            assert!(error.contains("precomputed"), "{body}: {v}");
        }
        // And the server still answers.
        let a = ask(port, &fine);
        assert!(!a.rows.is_empty());
    }
    // The GET form: bad JSON in q, and no q.
    let (st, _) = common::try_get(port, &format!("/v1/query?q={}", enc("{\"metrics\":")));
    assert_eq!(st, 400);
    let (st, _) = common::try_get(port, "/v1/query");
    assert_eq!(st, 400);
    let (st, _) = common::try_get(
        port,
        &format!("/v1/query?q={}", enc(r#"{"metrics":["nope"]}"#)),
    );
    assert_eq!(st, 400);
    ask(port, &fine);
    f.stop();
}

/// `"include": {"scan": true}`: the raw logs of every shard read again. Questions no cell
/// answers (urls by channel, sites by country with a url filter, devices of some urls) equal
/// the model; questions the cells answer come out the same both ways; what a scan cannot
/// count (visits, entry pages) is refused by name.
#[test]
fn query_scans_of_the_log() {
    let f = fixture(3, 31, 2500, &[(1, 50)]);
    let (port, views) = (f.s.http, &f.views);
    let scan = json!({"scan": true});
    for q in [
        json!({"metrics": ["views", "visitors"], "dimensions": ["url", "channel"],
               "date_range": ["-2h", "now"], "limit": 1000, "include": scan}),
        json!({"metrics": ["views", "visitors"], "dimensions": ["site", "country"],
               "filters": [["contains", "url", ["/p1"]]],
               "date_range": ["-2h", "now"], "limit": 1000, "include": scan}),
        json!({"metrics": ["views"], "dimensions": ["device"],
               "filters": [["or", [["is", "url", ["https://news.example/p3"]],
                                   ["matches", "url", ["shop\\.example/p1[0-9]$"]]]]],
               "date_range": ["-2h", "now"], "include": scan}),
        json!({"metrics": ["views", "visitors"], "dimensions": ["url", "time:10m"],
               "filters": [["is", "channel", ["search"]]], "site": "shop.example",
               "date_range": ["-60m", "now"], "limit": 1000, "include": scan}),
    ] {
        let a = against_model(port, views, &q, "scan");
        assert_eq!(a.v["meta"]["computed_from"], "a scan of the raw log", "{q}");
        assert!(a.v["meta"]["scan"]["records"].as_u64() > Some(0), "{}", a.v);
    }
    // Engaged time and hits by what a heartbeat's own line says (its reader's device,
    // country…), as the model sums them: every heartbeat 10 s (no `inc`: `heartbeat_seconds`),
    // every hit one.
    for q in [
        json!({"metrics": ["engaged_seconds", "hits"], "dimensions": ["device", "country"],
               "filters": [["is_not", "browser", ["Safari"]]],
               "date_range": ["-2h", "now"], "limit": 1000, "include": scan}),
        json!({"metrics": ["engaged_seconds"], "dimensions": ["url"], "site": "news.example",
               "filters": [["is", "device", ["mobile"]]],
               "date_range": ["-2h", "now"], "limit": 1000, "include": scan}),
    ] {
        let a = ask(port, &q);
        let (dims, filters, site) = (dims_of(&q), filters_of(&q), q["site"].as_str());
        let metrics = strs(&q["metrics"]);
        let mut want: BTreeMap<Vec<String>, Vec<u64>> = BTreeMap::new();
        for v in views.iter().filter(|v| {
            !v.bot
                && (a.from..a.to).contains(&v.ts)
                && site.is_none_or(|s| s == v.site)
                && filters.iter().all(|f| holds(f, v))
        }) {
            let key = dims.iter().map(|d| value(v, d).unwrap().to_string());
            let row = want
                .entry(key.collect())
                .or_insert_with(|| vec![0; metrics.len()]);
            for (x, m) in row.iter_mut().zip(&metrics) {
                *x += match *m {
                    "engaged_seconds" => 10 * u64::from(!v.pageview),
                    _ => 1,
                };
            }
        }
        want.retain(|_, m| m.iter().any(|x| *x > 0));
        assert!(want.values().any(|m| m[0] > 0), "{q}: some engaged time");
        assert_eq!(a.counts(), want, "{q}");
    }
    // Urls by channel (or filtered by it) come from the url × channel cells: the same rows
    // as the model and as a scan; their visitors are the scan's alone.
    for q in [
        json!({"metrics": ["views"], "dimensions": ["url", "channel"],
               "date_range": ["-2h", "now"], "limit": 1000}),
        json!({"metrics": ["views"], "dimensions": ["url"], "filters": [["is", "channel", ["search"]]],
               "date_range": ["-2h", "now"], "limit": 1000}),
        json!({"metrics": ["views"], "dimensions": ["channel", "url"], "site": "shop.example",
               "filters": [["and", [["contains", "url", ["/p1"]], ["is_not", "channel", ["direct"]]]]],
               "date_range": ["-60m", "now"], "limit": 1000}),
    ] {
        let cells = against_model(port, views, &q, "url × channel cells");
        assert_eq!(
            cells.v["meta"]["computed_from"], "url × channel cells",
            "{q}"
        );
        let mut s = q.clone();
        s["include"] = json!({"scan": true});
        assert_eq!(cells.counts(), ask(port, &s).counts(), "{q}");
    }
    // Urls by referrer domain and referrers of urls come from the url × referrer cells, the
    // same way.
    for q in [
        json!({"metrics": ["views"], "dimensions": ["url", "ref_domain"],
               "date_range": ["-2h", "now"], "limit": 1000}),
        json!({"metrics": ["views"], "dimensions": ["url"], "filters": [["is", "ref_domain", ["www.google.de"]]],
               "date_range": ["-2h", "now"], "limit": 1000}),
        json!({"metrics": ["views"], "dimensions": ["ref_domain"], "site": "shop.example",
               "filters": [["contains", "url", ["/p1"]]],
               "date_range": ["-60m", "now"], "limit": 1000}),
    ] {
        let cells = against_model(port, views, &q, "url × referrer cells");
        assert_eq!(
            cells.v["meta"]["computed_from"], "url × referrer cells",
            "{q}"
        );
        assert!(!cells.counts().is_empty(), "{q}: some rows");
        let mut s = q.clone();
        s["include"] = json!({"scan": true});
        // (A scan lists no pair only heartbeats had: nothing asked was counted for it.)
        assert_eq!(cells.counts(), ask(port, &s).counts(), "{q}");
    }
    let (st, v) = post(
        port,
        json!({"metrics": ["visitors"], "dimensions": ["url", "channel"]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!((st, v["param"].as_str()), (400, Some("metrics")), "{v}");
    // The same question from the cells and from the log: the same rows.
    for q in [
        json!({"metrics": ["views", "visitors"], "dimensions": ["channel"], "date_range": ["-2h", "now"]}),
        json!({"metrics": ["views", "visitors"], "dimensions": ["country", "device"],
               "filters": [["is_not", "browser", ["Safari"]]], "date_range": ["-2h", "now"], "limit": 1000}),
        json!({"metrics": ["views"], "dimensions": ["channel"], "date_range": ["-2h", "now"],
               "include": {"bots": true}}),
        // A site filter: profiles know their site.
        json!({"metrics": ["views", "visitors"], "dimensions": ["device"], "date_range": ["-2h", "now"],
               "filters": [["or", [["is", "site", ["shop.example"]], ["is", "country", ["DE"]]]]]}),
    ] {
        against_model(port, views, &q, "cells");
        let cells = ask(port, &q);
        let mut s = q.clone();
        let include = s["include"].as_object().cloned().unwrap_or_default();
        s["include"] = json!(include
            .into_iter()
            .chain([("scan".to_string(), json!(true))])
            .collect::<serde_json::Map<_, _>>());
        let log = ask(port, &s);
        assert_eq!(cells.counts(), log.counts(), "{q}");
        assert_eq!(cells.v["meta"]["computed_from"], "profile cells");
    }
    // Refused: what only cells keep, and a scan's own bounds.
    for (q, param) in [
        (
            json!({"metrics": ["visits"], "dimensions": ["channel"], "include": scan}),
            "metrics",
        ),
        (
            json!({"metrics": ["views"], "dimensions": ["entry_page"], "include": scan}),
            "dimensions",
        ),
        (
            json!({"metrics": ["views"], "filters": [["is", "entry_page", ["x"]]], "include": scan}),
            "filters",
        ),
        (
            json!({"metrics": ["views"], "include": {"scan": "yes"}}),
            "include",
        ),
    ] {
        let (st, v) = post(port, q.to_string().as_bytes());
        assert_eq!((st, v["param"].as_str()), (400, Some(param)), "{q}: {v}");
    }
    // A question the cells cannot answer names the way to the log.
    let (st, v) = post(
        port,
        json!({"metrics": ["views"], "dimensions": ["url", "device"]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(st, 400);
    assert!(
        v["error"].as_str().unwrap().contains("\"scan\": true"),
        "{v}"
    );
    f.stop();
}

/// A running scan is listed by `GET /v1/scans` with how far it got, and `DELETE
/// /v1/scans/<id>` stops it: its client gets 503 saying so, and the list empties. (The
/// test-only hook `PIXELD_TEST_HOLD_SCANS` holds scans after each 4 096 records while a file
/// exists, so the scan is surely running when it is looked at.)
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the test-only fault hooks: cargo test --features fault-injection (scripts/test does)"
)]
fn running_scans_are_listed_and_can_be_stopped() {
    let hold = common::tempdir();
    let flag = hold.path().join("hold");
    // One shard, so that its log holds more than 4 096 records.
    let mut s = Server::builder()
        .shards(1)
        .env("PIXELD_TEST_HOLD_SCANS", flag.to_str().unwrap())
        .start();
    s.wait_complete();
    let now = common::now_ms() as i64;
    let lines: Vec<String> = (0..6000)
        .map(|i| {
            format!(
                r#"{{"msec":{}.000,"url":"https://a.example/p{}","vid":"v{i}"}}"#,
                (now - 60_000) / 1000,
                i % 7
            )
        })
        .collect();
    for chunk in lines.chunks(1000) {
        common::post_ndjson(s.http, chunk.iter().map(|l| l.as_bytes()));
    }
    common::wait_aggregated(s.http, lines.len() as u64, "scans");
    let q = json!({"metrics": ["views"], "dimensions": ["url"], "date_range": ["-2h", "now"],
                   "include": {"scan": true}})
    .to_string();
    let scans = |port: u16| {
        let (st, body) = common::try_get(port, "/v1/scans");
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).unwrap();
        v["scans"].as_array().unwrap().clone()
    };
    assert!(scans(s.http).is_empty());
    // Held: listed with its progress, then stopped.
    std::fs::write(&flag, b"").unwrap();
    let port = s.http;
    let body = q.clone();
    let asking = std::thread::spawn(move || post(port, body.as_bytes()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let running = loop {
        match scans(port).first() {
            Some(r) if r["records_read"].as_u64() >= Some(4096) => break r.clone(),
            _ => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the scan never showed"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    };
    assert_eq!(running["query"].as_str(), Some(q.as_str()), "{running}");
    assert!(
        running["records_estimated"].as_u64() >= Some(6000),
        "{running}"
    );
    assert!(running["progress"].as_f64() > Some(0.0), "{running}");
    let id = running["id"].as_u64().unwrap();
    let (st, _, b) = common::http(port, "DELETE", &format!("/v1/scans/{id}"), &[], b"");
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    let (st, v) = asking.join().unwrap();
    assert_eq!(st, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("cancelled"), "{v}");
    assert!(scans(port).is_empty());
    let (st, _, _) = common::http(port, "DELETE", &format!("/v1/scans/{id}"), &[], b"");
    assert_eq!(st, 404);
    // Released: it runs to the end, and its answer names it.
    std::fs::remove_file(&flag).unwrap();
    let (st, v) = post(port, q.as_bytes());
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["meta"]["scan"]["id"].as_u64(), Some(id + 1), "{v}");
    assert_eq!(v["meta"]["scan"]["records"].as_u64(), Some(6000), "{v}");
    let views: u64 = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metrics"][0].as_u64().unwrap())
        .sum();
    assert_eq!(views, 6000);
    assert!(scans(port).is_empty());
    s.signal("TERM");
    let (code, err) = s.wait();
    assert_eq!(code, Some(0), "{err}");
}
