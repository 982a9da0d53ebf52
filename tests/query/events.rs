//! Custom events as a dimension, against an independent model: pageviews, heartbeats and
//! custom events (`a=event`, a name, props as nginx logs `$arg_p`: percent-encoded JSON; as
//! an object; broken) of 150 visitors from search, direct and internal referrers, plus a
//! bot's, sent as JSON lines to a real `pixeld serve` of 3 shards, and one event through its
//! `/p.gif`. Checked: events by name (`event` dimension, `events` metric, visitors who sent
//! them), a prop read by a `props.plan` custom dimension, signups by channel, the scan of the
//! raw log by event and url, `/v1/top?dim=event`, that every pageview question answers as if
//! there were no events, the bad props counted — live, after a restart, and by `pixeld check
//! --aggregates`. Event times are relative to the wall clock at the send.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::common::model::msec;
use crate::common::{self, Server};

const CONFIG: &str = "[agg.dimensions]\nplan = \"props.plan\"\n";
const FIREFOX: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";
const BOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

/// One hit as the model sees it.
struct Hit {
    /// "pageview", a custom event's name, or None for a heartbeat.
    event: Option<String>,
    plan: String,
    channel: &'static str,
    url: String,
    vid: String,
}

/// The lines sent, the model's hits (a bot's left out), and how many had bad props.
fn generate(now: i64) -> (Vec<String>, Vec<Hit>, u64) {
    let mut lines = Vec::new();
    let mut hits = Vec::new();
    let mut bad = 0;
    for i in 0..900u32 {
        let vid = format!("v{}", i % 150);
        let (referrer, channel) = match (i % 150) % 3 {
            0 => ("https://www.google.com/", "search"),
            1 => ("", "direct"),
            _ => ("https://a.example/home", "internal"),
        };
        let url = format!("https://a.example/p{}", i % 4);
        let (action, name, props, event, plan) = match i % 9 {
            0..=5 => ("pageview", "", String::new(), Some("pageview"), "(none)"),
            6 => match i % 4 {
                // The pixel's and nginx's form of the tracking script's props.
                0 => (
                    "event",
                    "signup",
                    r#","props":"%7B%22plan%22%3A%22pro%22%2C%22seats%22%3A3%7D""#.to_string(),
                    Some("signup"),
                    "pro",
                ),
                1 => (
                    "event",
                    "signup",
                    r#","props":{"plan":"team"}"#.to_string(),
                    Some("signup"),
                    "team",
                ),
                2 => {
                    bad += 1;
                    (
                        "event",
                        "signup",
                        r#","props":"%7Bplan"#.to_string() + "\"",
                        Some("signup"),
                        "(none)",
                    )
                }
                _ => ("event", "signup", String::new(), Some("signup"), "(none)"),
            },
            7 => (
                "event",
                "download",
                String::new(),
                Some("download"),
                "(none)",
            ),
            _ => ("heartbeat", "", String::new(), None, "(none)"),
        };
        let name = if name.is_empty() {
            String::new()
        } else {
            format!(r#","name":"{name}""#)
        };
        lines.push(format!(
            r#"{{"msec":{},"url":"{url}","urlref":"{referrer}","vid":"{vid}","action":"{action}","ua":"{FIREFOX}"{name}{props}}}"#,
            msec(now - 90_000 - i64::from(i) * 500),
        ));
        hits.push(Hit {
            event: event.map(str::to_string),
            plan: plan.to_string(),
            channel,
            url,
            vid,
        });
    }
    // A crawler's pageview and event: in no answer unless bots are asked for.
    for action in ["pageview", "event"] {
        lines.push(format!(
            r#"{{"msec":{},"url":"https://a.example/p0","vid":"crawler","action":"{action}","name":"signup","ua":"{BOT}"}}"#,
            msec(now - 60_000),
        ));
    }
    (lines, hits, bad)
}

/// The model's rows: key (the values of `key`) → (pageviews, pageviews and custom events,
/// distinct visitors), over the hits `with` keeps.
fn model(
    hits: &[Hit],
    with: impl Fn(&Hit) -> bool,
    key: impl Fn(&Hit) -> Vec<String>,
) -> BTreeMap<Vec<String>, Vec<u64>> {
    let mut acc: BTreeMap<Vec<String>, (u64, u64, BTreeSet<&str>)> = BTreeMap::new();
    for h in hits.iter().filter(|h| h.event.is_some() && with(h)) {
        let e = acc.entry(key(h)).or_default();
        e.0 += u64::from(h.event.as_deref() == Some("pageview"));
        e.1 += 1;
        e.2.insert(&h.vid);
    }
    acc.into_iter()
        .map(|(k, (v, e, vs))| (k, vec![v, e, vs.len() as u64]))
        .collect()
}

/// The rows of a `/v1/query` (it answers 200): dimension values → `metric` of its metrics.
fn rows_of<M>(
    port: u16,
    q: &Value,
    metric: impl Fn(&Value) -> M,
) -> (BTreeMap<Vec<String>, M>, Value) {
    let (st, v) = common::post_query(port, q);
    assert_eq!(st, 200, "{q}: {v}");
    let rows = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let dims = r["dimensions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_string())
                .collect();
            (dims, metric(&r["metrics"]))
        })
        .collect();
    (rows, v)
}

/// The rows of a `/v1/query` asking views, events and visitors (dimension values → metrics).
fn ask(port: u16, q: &Value) -> (BTreeMap<Vec<String>, Vec<u64>>, Value) {
    rows_of(port, q, |m| {
        m.as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_u64().unwrap())
            .collect()
    })
}

/// The rows of a `/v1/query` asking visitors and conversion_rate.
fn conversions(port: u16, q: &Value) -> BTreeMap<Vec<String>, (u64, f64)> {
    // Rounded to 12 places: serde_json reads floats to within one unit in the last place,
    // not always to the very double written.
    rows_of(port, q, |m| {
        let rate = (m[1].as_f64().unwrap() * 1e12).round() / 1e12;
        (m[0].as_u64().unwrap(), rate)
    })
    .0
}

/// `n / of`, rounded as [`conversions`] rounds.
fn share(n: u64, of: u64) -> f64 {
    (n as f64 / of as f64 * 1e12).round() / 1e12
}

fn query(dims: &[&str], filters: Value, scan: bool) -> Value {
    let mut q = json!({"metrics": ["views", "events", "visitors"], "dimensions": dims,
                       "date_range": ["-2h", "now"], "limit": 1000});
    if filters != json!([]) {
        q["filters"] = filters;
    }
    if scan {
        q["include"] = json!({"scan": true});
    }
    q
}

fn check(port: u16, hits: &[Hit], phase: &str) {
    let all = |_: &Hit| true;
    let by = |f: fn(&Hit) -> String| move |h: &Hit| vec![f(h)];
    let event = |h: &Hit| h.event.clone().unwrap_or_default();
    let is_pageview = |h: &Hit| h.event.as_deref() == Some("pageview");
    // Events by name, from the cells and from a scan of the raw log.
    let want = model(hits, all, by(event));
    for scan in [false, true] {
        let (got, v) = ask(port, &query(&["event"], json!([]), scan));
        assert_eq!(got, want, "{phase}: by event (scan {scan}): {v}");
    }
    // Signups by plan (a prop) and by channel (of the event's own line).
    let signup = json!([["is", "event", ["signup"]]]);
    let is_signup = |h: &Hit| h.event.as_deref() == Some("signup");
    let (got, v) = ask(port, &query(&["plan"], signup.clone(), false));
    assert_eq!(
        got,
        model(hits, is_signup, by(|h| h.plan.clone())),
        "{phase}: {v}"
    );
    let (got, v) = ask(port, &query(&["channel"], signup, false));
    assert_eq!(
        got,
        model(hits, is_signup, by(|h| h.channel.to_string())),
        "{phase}: {v}"
    );
    // Events by name and url: no cell holds the pair; the scan reads the log.
    let (got, v) = ask(port, &query(&["event", "url"], json!([]), true));
    assert_eq!(
        got,
        model(hits, all, |h| vec![event(h), h.url.clone()]),
        "{phase}: {v}"
    );
    // Pageview questions answer as if there were no custom events: by channel, by plan
    // (pageviews have none), and the site's views.
    let pageviews = |dim: &str| {
        let q = json!({"metrics": ["views", "visitors"], "dimensions": [dim],
                       "date_range": ["-2h", "now"], "limit": 1000});
        ask(port, &q).0
    };
    let want: BTreeMap<Vec<String>, Vec<u64>> = model(hits, is_pageview, by(|h| h.channel.into()))
        .into_iter()
        .map(|(k, m)| (k, vec![m[0], m[2]]))
        .collect();
    assert_eq!(pageviews("channel"), want, "{phase}: pageviews by channel");
    let views: u64 = want.values().map(|m| m[0]).sum();
    assert_eq!(
        pageviews("plan").values().map(|m| m[0]).sum::<u64>(),
        views,
        "{phase}: pageviews by plan"
    );
    // Asking for events counts them everywhere, by any dimension.
    let (got, v) = ask(port, &query(&["channel"], json!([]), false));
    assert_eq!(
        got,
        model(hits, all, by(|h| h.channel.into())),
        "{phase}: {v}"
    );
    // The GET form: rows ranked by events, each with its events.
    let (st, body) = common::try_get(port, "/v1/top?dim=event&from=-2h");
    assert_eq!(st, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["sort"], "events", "{v}");
    let items = v["items"].as_array().unwrap();
    let got: Vec<(String, u64)> = items
        .iter()
        .map(|i| {
            (
                i["key"].as_str().unwrap().into(),
                i["events"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut want: Vec<(String, u64)> = model(hits, all, by(event))
        .into_iter()
        .map(|(k, m)| (k[0].clone(), m[1]))
        .collect();
    want.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    assert_eq!(got, want, "{phase}: /v1/top?dim=event");
    // Conversion rates: the visitors who sent the event over all visitors (pageviews or
    // custom events) of the same values of the other dimensions and filters.
    let visitors = |with: &dyn Fn(&Hit) -> bool, key: &dyn Fn(&Hit) -> String| {
        let mut acc: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for h in hits.iter().filter(|h| h.event.is_some() && with(h)) {
            acc.entry(key(h)).or_default().insert(&h.vid);
        }
        acc.into_iter()
            .map(|(k, vs)| (k, vs.len() as u64))
            .collect::<BTreeMap<String, u64>>()
    };
    let channel = |h: &Hit| h.channel.to_string();
    let (signed, everyone) = (visitors(&is_signup, &channel), visitors(&all, &channel));
    let want: BTreeMap<Vec<String>, (u64, f64)> = signed
        .iter()
        .map(|(k, n)| (vec![k.clone()], (*n, share(*n, everyone[k]))))
        .collect();
    let q = json!({"metrics": ["visitors", "conversion_rate"], "dimensions": ["channel"],
                   "filters": [["is", "event", ["signup"]]], "date_range": ["-2h", "now"]});
    assert_eq!(
        conversions(port, &q),
        want,
        "{phase}: signups' conversion rate by channel"
    );
    assert!(want.values().any(|(_, r)| *r > 0.0 && *r < 1.0), "{want:?}");
    // By event name: each over every visitor.
    let total = visitors(&all, &|_| String::new())[""];
    let want: BTreeMap<Vec<String>, (u64, f64)> = visitors(&all, &event)
        .into_iter()
        .map(|(k, n)| (vec![k], (n, share(n, total))))
        .collect();
    let q = json!({"metrics": ["visitors", "conversion_rate"], "dimensions": ["event"],
                   "date_range": ["-2h", "now"]});
    assert_eq!(
        conversions(port, &q),
        want,
        "{phase}: conversion rate by event"
    );
    // Against the previous period (before any of these events): no rate then, no change.
    let mut q = q;
    q["include"] = json!({"comparisons": "previous_period"});
    let (st, v) = common::post_query(port, &q);
    assert_eq!(st, 200, "{v}");
    for r in v["results"].as_array().unwrap() {
        assert_eq!(r["comparison"]["metrics"], json!([0, null]), "{phase}: {r}");
        assert_eq!(
            r["comparison"]["change"],
            json!([null, null]),
            "{phase}: {r}"
        );
    }
    // No dimension, another filter beside the event's: direct visitors' downloads.
    let search = |h: &Hit| h.channel == "direct";
    let n = visitors(&|h| search(h) && event(h) == "download", &|_| String::new())[""];
    let of = visitors(&search, &|_| String::new())[""];
    let q = json!({"metrics": ["visitors", "conversion_rate"],
                   "filters": [["is", "channel", ["direct"]], ["is", "event", ["download"]]],
                   "date_range": ["-2h", "now"]});
    assert_eq!(
        conversions(port, &q),
        BTreeMap::from([(vec![], (n, share(n, of)))]),
        "{phase}: downloads of direct visitors"
    );
    assert!(n > 0 && n < of, "{n} of {of}");
    // The GET form gives each event's rate too, and by channel under an event filter.
    let rates = |path: &str| -> BTreeMap<String, f64> {
        let (st, body) = common::try_get(port, path);
        assert_eq!(st, 200, "{path}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let rate = i["conversion_rate"].as_f64().unwrap();
                (
                    i["key"].as_str().unwrap().to_string(),
                    (rate * 1e12).round() / 1e12,
                )
            })
            .collect()
    };
    let want: BTreeMap<String, f64> = visitors(&all, &event)
        .into_iter()
        .map(|(k, n)| (k, share(n, total)))
        .collect();
    assert_eq!(
        rates("/v1/top?dim=event&from=-2h"),
        want,
        "{phase}: GET by event"
    );
    let want: BTreeMap<String, f64> = signed
        .iter()
        .map(|(k, n)| (k.clone(), share(*n, everyone[k])))
        .collect();
    assert_eq!(
        rates("/v1/top?dim=channel&filter=event:signup&from=-2h"),
        want,
        "{phase}: GET signups by channel"
    );
    // The crawler's event is there when bots are asked for.
    let (got, _) = ask(
        port,
        &query(&["event"], json!([["is", "bot", ["Googlebot"]]]), false),
    );
    assert_eq!(got[&vec!["signup".to_string()]], vec![0, 1, 1], "{phase}");
}

#[test]
fn custom_events_are_a_dimension() {
    let data = common::tempdir();
    let start = || {
        let mut s = Server::builder()
            .data(data.path())
            .config(CONFIG)
            .shards(3)
            .start();
        s.wait_complete();
        s
    };
    let s = start();
    let now = common::now_ms() as i64;
    let (lines, mut hits, bad) = generate(now);
    common::post_ndjson(s.http, lines.iter().map(|l| l.as_bytes()));
    // One event through the pixel, as the tracking script sends it.
    let (st, _, _) = common::http(
        s.http,
        "GET",
        "/p.gif?url=https%3A%2F%2Fa.example%2Fp1&vid=pixel&a=event&n=signup&p=%7B%22plan%22%3A%22pro%22%7D",
        &[("User-Agent", FIREFOX)],
        b"",
    );
    assert_eq!(st, 200);
    hits.push(Hit {
        event: Some("signup".into()),
        plan: "pro".into(),
        channel: "direct",
        url: "https://a.example/p1".into(),
        vid: "pixel".into(),
    });
    let mx = common::wait_aggregated(s.http, lines.len() as u64 + 1, "custom events");
    assert_eq!(
        mx.get("pixeld_agg_bad_props_total").copied(),
        Some(bad as f64)
    );
    check(s.http, &hits, "live");
    s.signal("TERM");
    let (code, err) = s.wait();
    assert_eq!(code, Some(0), "{err}");
    let (ok, report) = common::check_aggregates(data.path(), Some(CONFIG));
    assert!(ok, "{report}");
    let s = start();
    check(s.http, &hits, "after a restart");
}
