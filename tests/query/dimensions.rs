//! Dimensions of a real `pixeld serve`
//! (`/v1/top?dim=channel|source|utm_*|device|browser|os|bot|country|region`, with `filter=` and
//! `bots=`) against an independent model: a few thousand pageviews and heartbeats of the
//! generator in `pageviews`, sent as JSON lines over HTTP, the model's values of each from the
//! labels of the generator's tables, never from pixeld's code, counted by value (pageviews and
//! distinct visitors). Every dimension's list (every key) is compared for the whole range, for one site,
//! with filters of one and two dimensions, with bots included, and the summary's pageviews
//! (bots left out of every metric); for 1 and 3 shards, live, after a restart (SIGTERM), and
//! after a SIGKILL and a replay of the log; `pixeld check --aggregates` then agrees with the
//! log. Event times are relative to the wall clock at the send.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::common::model::{js, msec};
use crate::common::{self, Server};
use crate::pageviews::{agents, generate, View, DIMS, NETWORKS};

const COUNTRY: usize = 9;
const REGION: usize = 10;

/// The model's rows of dimension `d` (key → views, visitors) over `views` passing the filter.
fn model(
    views: &[View],
    d: usize,
    site: Option<&str>,
    filter: &[(usize, &str)],
    bots: bool,
) -> BTreeMap<String, (u64, u64)> {
    model_by(views, &[d], site, filter, bots)
}

/// [`model`] by the values of one or two dimensions (keys joined by " / ").
fn model_by(
    views: &[View],
    ds: &[usize],
    site: Option<&str>,
    filter: &[(usize, &str)],
    bots: bool,
) -> BTreeMap<String, (u64, u64)> {
    let mut acc: BTreeMap<String, (u64, BTreeSet<&str>)> = BTreeMap::new();
    let bot_dim = ds.contains(&8) || filter.iter().any(|(f, _)| *f == 8);
    for v in views {
        if site.is_some_and(|s| s != v.site)
            || (v.bot && !bots && !bot_dim)
            || !filter.iter().all(|(f, val)| v.dims[*f] == *val)
        {
            continue;
        }
        // A bot's device is "bot"; its browser, OS and name are pixeld's reading, not the
        // set's: the model counts bots only where it knows their value.
        let key = ds
            .iter()
            .map(|&d| {
                if v.bot && matches!(d, 6..=8) {
                    "(a bot)".to_string()
                } else {
                    v.dims[d].clone()
                }
            })
            .collect::<Vec<String>>()
            .join(" / ");
        let e = acc.entry(key).or_default();
        e.0 += 1;
        e.1.insert(&v.vid);
    }
    acc.into_iter()
        .map(|(k, (n, vs))| (k, (n, vs.len() as u64)))
        .collect()
}

/// pixeld's rows of `/v1/top?dim=…`, every key; rows the model cannot name (a bot's browser,
/// OS or name) merged under "(a bot)" when `bot_names` lists them.
fn answer(port: u16, query: &str, bot_names: &BTreeSet<String>) -> BTreeMap<String, (u64, u64)> {
    let (st, body) = common::try_get(port, &format!("/v1/top?from=-2h&limit=1000&{query}"));
    assert_eq!(st, 200, "{query}: {}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["total_rows"].as_u64(),
        Some(v["items"].as_array().unwrap().len() as u64),
        "{query}"
    );
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for it in v["items"].as_array().unwrap() {
        assert_eq!(it["visitors_sketched"], false, "{query}");
        // One dimension: a string; two: a pair.
        let key = match &it["key"] {
            Value::Array(pair) => pair
                .iter()
                .map(|k| k.as_str().unwrap())
                .collect::<Vec<&str>>()
                .join(" / "),
            k => k.as_str().unwrap().to_string(),
        };
        let key = if bot_names.contains(&key) {
            "(a bot)".to_string()
        } else {
            key
        };
        let e = out.entry(key).or_default();
        e.0 += it["views"].as_u64().unwrap();
        e.1 += it["visitors"].as_u64().unwrap();
    }
    out
}

/// A query and what the model is asked for it: dimension, site, filter, bots included.
type Case = (
    String,
    usize,
    Option<&'static str>,
    Vec<(usize, &'static str)>,
    bool,
);

/// Every case compared; `phase` names the moment.
fn check_all(port: u16, views: &[View], phase: &str) {
    // What pixeld calls the bots' browsers, OSs and names: whatever it answers for bots only.
    let bot_only = |d: usize| -> BTreeSet<String> {
        let (_, body) = common::try_get(
            port,
            &format!(
                "/v1/top?from=-2h&limit=1000&dim={}&filter=device:bot",
                DIMS[d]
            ),
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|it| it["key"].as_str().unwrap().to_string())
            .collect()
    };
    let humans_only =
        |d: usize| -> BTreeSet<String> { model(views, d, None, &[], false).into_keys().collect() };
    let mut cases: Vec<Case> = Vec::new();
    for (d, name) in DIMS.iter().enumerate() {
        cases.push((format!("dim={name}"), d, None, vec![], false));
        cases.push((
            format!("dim={name}&site=shop.example&sort=visitors"),
            d,
            Some("shop.example"),
            vec![],
            false,
        ));
    }
    cases.push((
        "dim=device&filter=channel:search".into(),
        5,
        None,
        vec![(0, "search")],
        false,
    ));
    cases.push((
        "dim=browser&filter=device:mobile,channel:social".into(),
        6,
        None,
        vec![(5, "mobile"), (0, "social")],
        false,
    ));
    cases.push((
        "dim=utm_campaign&filter=utm_medium:email&site=news.example".into(),
        4,
        Some("news.example"),
        vec![(3, "email")],
        false,
    ));
    cases.push(("dim=channel&bots=include".into(), 0, None, vec![], true));
    cases.push(("dim=device&bots=include".into(), 5, None, vec![], true));
    cases.push((
        "dim=device&filter=country:DE".into(),
        5,
        None,
        vec![(COUNTRY, "DE")],
        false,
    ));
    cases.push((
        "dim=country&filter=device:mobile&bots=include".into(),
        COUNTRY,
        None,
        vec![(5, "mobile")],
        true,
    ));
    cases.push((
        "dim=region&filter=country:AT&site=news.example".into(),
        REGION,
        Some("news.example"),
        vec![(COUNTRY, "AT")],
        false,
    ));
    cases.push((
        "dim=device&filter=region:DE-BY".into(),
        5,
        None,
        vec![(REGION, "DE-BY")],
        false,
    ));
    cases.push((
        "dim=os&filter=channel:paid".into(),
        7,
        None,
        vec![(0, "paid")],
        false,
    ));
    // By pairs of values.
    for (q, ds, site, filter) in [
        ("dim=channel,device", vec![0, 5], None, vec![]),
        (
            "dim=device,browser&filter=channel:search&site=news.example&sort=visitors",
            vec![5, 6],
            Some("news.example"),
            vec![(0, "search")],
        ),
        ("dim=utm_medium,os", vec![3, 7], None, vec![]),
        ("dim=country,channel", vec![COUNTRY, 0], None, vec![]),
        ("dim=country,region", vec![COUNTRY, REGION], None, vec![]),
    ] {
        let want = model_by(views, &ds, site, &filter, false);
        let got = answer(port, q, &BTreeSet::new());
        assert!(!want.is_empty());
        assert_eq!(got, want, "{phase}: /v1/top?{q}");
    }
    for (q, d, site, filter, bots) in &cases {
        // The names pixeld gives bots (never a human's value: checked by the labelled set).
        let names: BTreeSet<String> = if matches!(d, 6..=8) {
            let human = humans_only(*d);
            bot_only(*d).difference(&human).cloned().collect()
        } else {
            BTreeSet::new()
        };
        let want = model(views, *d, *site, filter, *bots);
        let got = answer(port, q, &names);
        assert_eq!(got, want, "{phase}: /v1/top?{q}");
    }
    // Bots are left out of every metric: the summary's pageviews are the humans'.
    let (_, body) = common::try_get(port, "/v1/summary?from=-2h");
    let v: Value = serde_json::from_slice(&body).unwrap();
    let humans = views.iter().filter(|v| !v.bot).count() as u64;
    assert_eq!(v["views"].as_u64(), Some(humans), "{phase}: summary views");
    // Every dimension adds up to the same pageviews.
    for d in (0..DIMS.len()).filter(|&d| d != 8) {
        let total: u64 = model(views, d, None, &[], false)
            .values()
            .map(|x| x.0)
            .sum();
        assert_eq!(total, humans);
    }
}

fn scenario(shards: usize, seed: u64) {
    let agents = agents();
    let data = common::tempdir();
    let geo = common::tempdir();
    let db = geo.path().join("countries.mmdb");
    common::write_country_db(&db, &NETWORKS);
    let config = format!("[geo]\ndatabase = {:?}\n", db.display().to_string());
    let now = common::now_ms() as i64;
    let (lines, views) = generate(seed, 3000, now, &[(1_000, 50 * 60_000)], &agents);
    // The model counts pageviews; heartbeats only keep their visitors around.
    let views: Vec<View> = views.into_iter().filter(|v| v.pageview).collect();
    assert!(views.iter().any(|v| v.bot) && views.iter().any(|v| !v.bot));
    let mut s = Server::builder()
        .data(data.path())
        .shards(shards)
        .config(&config)
        .start();
    s.wait_complete();
    for chunk in lines.chunks(500) {
        common::post_ndjson(s.http, chunk.iter().map(|l| l.as_bytes()));
    }
    let m = common::wait_aggregated(s.http, lines.len() as u64, "dimensions");
    let bots = lines
        .iter()
        .filter(|l| {
            agents
                .iter()
                .any(|a| a.bot && l.contains(&format!("\"ua\":{}", js(&a.ua))))
        })
        .count() as u64;
    assert_eq!(
        common::metric_sum(&m, "pixeld_agg_records_total{outcome=\"bot\"}"),
        bots,
        "every bot's hit counted as such"
    );
    check_all(s.http, &views, "live");
    // A clean restart: the checkpoint holds everything.
    s.signal("TERM");
    let (code, err) = s.wait();
    assert_eq!(code, Some(0), "{err}");
    let mut s = Server::builder()
        .data(data.path())
        .shards(shards)
        .config(&config)
        .start();
    s.wait_complete();
    check_all(s.http, &views, "after a restart");
    // A kill: whatever the last checkpoint missed is replayed from the log.
    s.signal("KILL");
    let _ = s.wait();
    let mut s = Server::builder()
        .data(data.path())
        .shards(shards)
        .config(&config)
        .start();
    s.wait_complete();
    check_all(s.http, &views, "after kill -9");
    s.signal("TERM");
    let (code, err) = s.wait();
    assert_eq!(code, Some(0), "{err}");
    let (ok, report) = common::check_aggregates(data.path(), Some(&config));
    assert!(ok, "{report}");
}

#[test]
fn dimensions_one_shard() {
    scenario(1, 11);
}

#[test]
fn dimensions_three_shards() {
    scenario(3, 12);
}

/// `/v1/top?from=-2h&dim=<dim>`: views by value.
fn views_by(port: u16, dim: &str) -> BTreeMap<String, u64> {
    let (_, body) = common::try_get(port, &format!("/v1/top?from=-2h&dim={dim}"));
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| {
            (
                it["key"].as_str().unwrap().to_string(),
                it["views"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A metric of `/metrics` (-1 when absent).
fn gauge(port: u16, name: &str) -> f64 {
    common::metrics(port).get(name).copied().unwrap_or(-1.0)
}

/// Waits until `<family>{result="<result>"}` (a watched file's reloads) reaches `n`.
fn wait_loads(port: u16, family: &str, result: &str, n: f64) {
    let name = format!("{family}{{result=\"{result}\"}}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while gauge(port, &name) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never reached {n}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The country database follows its file: missing at start (pixeld says why, serves, counts
/// `(unknown)`), written later (used from the next look), replaced by a damaged file (refused,
/// reported, the previous one kept), replaced by a new version (used).
#[test]
fn countries_follow_the_database_file() {
    let geo = common::tempdir();
    let db = geo.path().join("countries.mmdb");
    let config = format!(
        "[geo]\ndatabase = {:?}\nreload_interval = \"100ms\"\n",
        db.display().to_string()
    );
    let mut s = Server::builder().config(&config).start();
    let said = s.wait_for("pixeld: geo:").unwrap_or_default();
    assert!(
        said.contains("cannot read the geo database") && said.contains("(unknown)"),
        "{said}"
    );
    s.wait_complete();
    assert_eq!(gauge(s.http, "pixeld_geo_database_loaded"), 0.0);
    let now = common::now_ms() as i64;
    let mut sent = 0u64;
    // Sends one pageview from `ip` and answers the countries counted so far.
    let mut hit = |port: u16, ip: &str| -> BTreeMap<String, u64> {
        sent += 1;
        let line = format!(
            r#"{{"msec":{},"url":"https://a.example/","vid":"v{sent}","ip":"{ip}"}}"#,
            msec(now - 60_000)
        );
        common::post_ndjson(port, [line.as_bytes()]);
        common::wait_aggregated(port, sent, "countries");
        views_by(port, "country")
    };
    assert_eq!(
        hit(s.http, "192.0.2.1"),
        BTreeMap::from([("(unknown)".into(), 1)])
    );
    common::write_country_db(&db, &[("192.0.2.0/24", "DE")]);
    wait_loads(s.http, "pixeld_geo_reloads_total", "ok", 1.0);
    assert_eq!(gauge(s.http, "pixeld_geo_database_loaded"), 1.0);
    assert!(gauge(s.http, "pixeld_geo_database_build_timestamp_seconds") > 0.0);
    assert_eq!(
        hit(s.http, "192.0.2.1"),
        BTreeMap::from([("(unknown)".into(), 1), ("DE".into(), 1)])
    );
    // A damaged file: refused, said, and the loaded database stays in use.
    let errors = gauge(s.http, "pixeld_geo_reloads_total{result=\"error\"}");
    std::fs::write(&db, b"not a database").unwrap();
    wait_loads(s.http, "pixeld_geo_reloads_total", "error", errors + 1.0);
    assert!(s.wait_for("not a valid MaxMind DB file").is_some());
    assert_eq!(gauge(s.http, "pixeld_geo_database_loaded"), 1.0);
    assert_eq!(hit(s.http, "192.0.2.1")["DE"], 2);
    // A new version maps the network elsewhere.
    common::write_country_db(&db, &[("192.0.2.0/24", "NL")]);
    wait_loads(s.http, "pixeld_geo_reloads_total", "ok", 2.0);
    assert_eq!(hit(s.http, "192.0.2.1")["NL"], 1);
    s.signal("TERM");
    let (code, err) = s.wait();
    assert_eq!(code, Some(0), "{err}");
}

/// Bot networks (`[geo] bot_networks`) of a real server: a pageview from a listed address is
/// a bot's whatever its User-Agent — in the `bot` dimension under the network's name, in no
/// other metric; a bad version of the file is refused (said, counted, the list before kept), a
/// good one applies from the next look.
#[test]
fn bot_networks_follow_their_file() {
    let dir = common::tempdir();
    let list = dir.path().join("networks.txt");
    std::fs::write(&list, "# test ranges\n192.0.2.0/24 ExampleCloud\n").unwrap();
    let config = format!(
        "[geo]\nbot_networks = {:?}\nreload_interval = \"100ms\"\n",
        list.display().to_string()
    );
    let mut s = Server::builder().config(&config).start();
    let said = s.wait_for("pixeld: bot networks:").unwrap_or_default();
    assert!(said.contains("using 1 networks"), "{said}");
    s.wait_complete();
    assert_eq!(gauge(s.http, "pixeld_bot_networks_loaded"), 1.0);
    let now = common::now_ms() as i64;
    let mut sent = 0u64;
    let browser =
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";
    // Sends one pageview from `ip`; answers the `bot` dimension and the views of every
    // device (bots left out) counted so far.
    let mut hit = |port: u16, ip: &str| -> (BTreeMap<String, u64>, u64) {
        sent += 1;
        let line = format!(
            r#"{{"msec":{},"url":"https://a.example/","vid":"v{sent}","ip":"{ip}","ua":"{browser}"}}"#,
            msec(now - 60_000)
        );
        common::post_ndjson(port, [line.as_bytes()]);
        common::wait_aggregated(port, sent, "bot networks");
        (
            views_by(port, "bot"),
            views_by(port, "device").values().sum(),
        )
    };
    assert_eq!(
        hit(s.http, "192.0.2.1"),
        (BTreeMap::from([("ExampleCloud".into(), 1)]), 0)
    );
    assert_eq!(
        hit(s.http, "198.51.100.1"),
        (
            BTreeMap::from([("ExampleCloud".into(), 1), ("human".into(), 1)]),
            1
        )
    );
    // A bad line: the file is refused, the line named, the list before kept.
    std::fs::write(
        &list,
        "198.51.100.0/24\n192.0.2.0/24 ExampleCloud\n10.0.0.0/40\n",
    )
    .unwrap();
    wait_loads(s.http, "pixeld_bot_networks_reloads_total", "error", 1.0);
    let said = s.wait_for("line 3").unwrap_or_default();
    assert!(
        said.contains("10.0.0.0/40") && said.contains("stays in use"),
        "{said}"
    );
    assert_eq!(hit(s.http, "198.51.100.1").0["human"], 2);
    // Fixed: applies from the next look on (what was counted before stays as it was).
    std::fs::write(&list, "198.51.100.0/24\n192.0.2.0/24 ExampleCloud\n").unwrap();
    wait_loads(s.http, "pixeld_bot_networks_reloads_total", "ok", 2.0);
    assert_eq!(gauge(s.http, "pixeld_bot_networks_loaded"), 2.0);
    assert_eq!(
        hit(s.http, "198.51.100.1"),
        (
            BTreeMap::from([
                ("ExampleCloud".into(), 1),
                ("datacenter".into(), 1),
                ("human".into(), 2)
            ]),
            2
        )
    );
    s.signal("TERM");
    let (code, err) = s.wait();
    assert_eq!(code, Some(0), "{err}");
}

/// Custom dimensions (`[agg.dimensions]`) of a real server: counted by value like the
/// built-in ones in `/v1/top?dim=` and `POST /v1/query` (alone, in pairs, filtered), against
/// a model of the lines sent, and the same after a restart.
#[test]
fn custom_dimensions() {
    let config = "[agg.dimensions]\nsection = \"section\"\nauthor = \"writer\"\n";
    let data = common::tempdir();
    let mut s = Server::builder().data(data.path()).config(config).start();
    s.wait_complete();
    let now = common::now_ms() as i64;
    let sections = ["sport", "news", "culture"];
    let authors = ["Ann", "Bob"];
    let mut lines = Vec::new();
    // section → (views, visitors); (section, author) → views.
    let mut by_section: BTreeMap<String, (u64, BTreeSet<u32>)> = BTreeMap::new();
    let mut pairs: BTreeMap<(String, String), u64> = BTreeMap::new();
    for i in 0..600u32 {
        let vid = i % 97;
        let (section, author) = match i % 7 {
            // No section: `(none)`.
            0 => (None, authors[(i % 2) as usize]),
            k => (Some(sections[(k % 3) as usize]), authors[(i % 2) as usize]),
        };
        let field = section.map_or(String::new(), |s| format!(r#","section":"{s}""#));
        lines.push(format!(
            r#"{{"msec":{},"url":"https://a.example/p{}","vid":"v{vid}","writer":"{author}"{field}}}"#,
            msec(now - 60_000 - i64::from(i) * 1000),
            i % 5
        ));
        let section = section.unwrap_or("(none)").to_string();
        let e = by_section.entry(section.clone()).or_default();
        e.0 += 1;
        e.1.insert(vid);
        *pairs.entry((section, author.to_string())).or_default() += 1;
    }
    common::post_ndjson(s.http, lines.iter().map(|l| l.as_bytes()));
    common::wait_aggregated(s.http, lines.len() as u64, "custom dimensions");
    let want: BTreeMap<String, (u64, u64)> = by_section
        .iter()
        .map(|(k, (n, vs))| (k.clone(), (*n, vs.len() as u64)))
        .collect();
    let check = |port: u16, phase: &str| {
        assert_eq!(
            answer(port, "dim=section", &BTreeSet::new()),
            want,
            "{phase}: /v1/top?dim=section"
        );
        let q = serde_json::json!({"metrics": ["views"], "dimensions": ["section", "author"],
                                   "date_range": ["-2h", "now"], "limit": 1000});
        let (st, v) = common::post_query(port, &q);
        assert_eq!(st, 200, "{phase}: {v}");
        let got: BTreeMap<(String, String), u64> = v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let d = r["dimensions"].as_array().unwrap();
                (
                    (
                        d[0].as_str().unwrap().to_string(),
                        d[1].as_str().unwrap().to_string(),
                    ),
                    r["metrics"][0].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, pairs, "{phase}: section × author");
        // Filtered by a custom dimension, broken down by another.
        let q = serde_json::json!({"metrics": ["views"], "dimensions": ["author"],
                                   "filters": [["matches", "section", ["^(sport|news)$"]]],
                                   "date_range": ["-2h", "now"]});
        let (_, v) = common::post_query(port, &q);
        let total: u64 = v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["metrics"][0].as_u64().unwrap())
            .sum();
        assert_eq!(total, want["sport"].0 + want["news"].0, "{phase}: {v}");
    };
    check(s.http, "live");
    s.signal("TERM");
    let (code, err) = s.wait();
    assert_eq!(code, Some(0), "{err}");
    let mut s = Server::builder().data(data.path()).config(config).start();
    s.wait_complete();
    check(s.http, "after a restart");
    // An unknown dimension is named in the error, with the custom ones listed.
    let (st, body) = common::try_get(s.http, "/v1/top?dim=colour");
    assert_eq!(st, 400);
    assert!(String::from_utf8_lossy(&body).contains("section"));
}
