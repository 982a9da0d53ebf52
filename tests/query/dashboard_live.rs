//! `GET /v1/live` and the dashboard's static files on a real `pixeld serve`: the SSE wire
//! format (retry, ids, snapshot and health events whose numbers equal `/v1/summary` and
//! `/metrics`), a new snapshot after new events, resuming with `Last-Event-ID`, 100 idle
//! clients that all get their events while queries are still answered (CPU and memory of
//! the idle period are printed, not asserted), the per-shard cap (503, counted, freed when a
//! client leaves), bad parameters, and the assets' content types, ETag/304 and CSP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{http, Server};

/// Stops the server by PID when the test ends, even on a failed assertion.
struct Running(Option<Server>);

impl Running {
    fn s(&self) -> &Server {
        self.0.as_ref().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.signal("TERM");
            let _ = s.wait();
        }
    }
}

fn start(shards: usize, config: &str) -> Running {
    let mut s = Server::builder().shards(shards).config(config).start();
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    Running(Some(s))
}

fn get_json(port: u16, path: &str) -> Value {
    let (st, _, body) = http(port, "GET", path, &[], b"");
    assert_eq!(st, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn metric(port: u16, name: &str) -> u64 {
    let (_, _, body) = http(port, "GET", "/metrics", &[], b"");
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_else(|| panic!("{name} missing"))
        .parse()
        .unwrap()
}

/// `n` pageviews of `url` stamped now, acknowledged (durable) by `POST /v1/events`.
fn post_views(port: u16, url: &str, n: usize) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let body: String = (0..n)
        .map(|i| {
            format!("{{\"msec\":{now:.3},\"url\":\"{url}\",\"vid\":\"v{i}\",\"action\":\"pv\"}}\n")
        })
        .collect();
    let (st, _, b) = http(port, "POST", "/v1/events", &[], body.as_bytes());
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
}

/// Waits until every increment has reached its owner shard (sent = applied).
fn settle(port: u16, views: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let v = get_json(port, "/v1/summary?from=-30m");
        if v["views"].as_u64() == Some(views) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("views never reached {views}");
}

/// One SSE event as received.
#[derive(Debug, Default, Clone)]
struct Event {
    event: String,
    id: Option<String>,
    data: String,
    retry: Option<u64>,
}

/// A raw HTTP/1.1 client of `/v1/live` reading the chunked event stream.
struct Sse {
    r: BufReader<TcpStream>,
    status: u16,
    head: String,
    /// Decoded body bytes not yet split into events.
    buf: String,
}

impl Sse {
    fn open(port: u16, path: &str, last_id: Option<&str>) -> Sse {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        c.write_all(req.as_bytes()).unwrap();
        let mut r = BufReader::new(c);
        let mut head = String::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            if l == "\r\n" || l.is_empty() {
                break;
            }
            head.push_str(&l);
        }
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        Sse {
            r,
            status,
            head,
            buf: String::new(),
        }
    }

    /// The rest of a non-stream answer (Content-Length body).
    fn body(&mut self) -> String {
        let len: usize = self
            .head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap();
        let mut b = vec![0; len];
        self.r.read_exact(&mut b).unwrap();
        String::from_utf8(b).unwrap()
    }

    fn chunk(&mut self) {
        let mut size = String::new();
        self.r.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size:?}"));
        assert!(n > 0, "the stream ended");
        let mut b = vec![0; n + 2];
        self.r.read_exact(&mut b).unwrap();
        self.buf.push_str(std::str::from_utf8(&b[..n]).unwrap());
    }

    /// The next event (blocks; the read timeout bounds it).
    fn next(&mut self) -> Event {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let mut e = Event::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    if line.starts_with(':') || line.is_empty() {
                        continue;
                    }
                    let (k, v) = line.split_once(": ").unwrap_or((line, ""));
                    match k {
                        "event" => e.event = v.to_string(),
                        "id" => e.id = Some(v.to_string()),
                        "data" => data.push(v),
                        "retry" => e.retry = Some(v.parse().unwrap()),
                        other => panic!("unknown field {other:?} in {block:?}"),
                    }
                }
                e.data = data.join("\n");
                return e;
            }
            self.chunk();
        }
    }

    /// The next event named `name`, skipping others (at most `max`).
    fn next_named(&mut self, name: &str, max: usize) -> Event {
        for _ in 0..max {
            let e = self.next();
            if e.event == name {
                return e;
            }
        }
        panic!("no {name} event within {max} events");
    }
}

fn json(e: &Event) -> Value {
    serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("{err}: {:?}", e.data))
}

/// A log-only pixeld (`agg.enabled = false`): the stream says so once, then carries the
/// health events alone (what the dashboard's health strip shows), never a snapshot.
#[test]
fn a_log_only_server_streams_health_and_says_why_it_has_no_snapshot() {
    let s = start(1, "[agg]\nenabled = false\n");
    let port = s.s().http;
    post_views(port, "https://shop.example/a", 30);
    let mut sse = Sse::open(port, "/v1/live?minutes=5", None);
    assert_eq!(sse.status, 200, "{}", sse.head);
    assert_eq!(sse.next().retry, Some(3000));
    let off = sse.next();
    assert_eq!(off.event, "aggregation_off", "{off:?}");
    let v = json(&off);
    assert_eq!(v["reason"], "aggregation_off", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("agg.enabled = true"),
        "{v}"
    );
    // Two health events (5 s apart), nothing else between them.
    for _ in 0..2 {
        let e = sse.next();
        assert_eq!(e.event, "health", "{e:?}");
        let h = json(&e);
        assert_eq!(h["received_events_total"], 30, "{h}");
    }
}

#[test]
fn live_stream_format_updates_and_resume() {
    let s = start(2, "");
    let port = s.s().http;
    post_views(port, "https://shop.example/a", 40);
    post_views(port, "https://blog.example/b", 25);
    settle(port, 65);

    let mut sse = Sse::open(port, "/v1/live?minutes=5", None);
    assert_eq!(sse.status, 200, "{}", sse.head);
    let head = sse.head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let first = sse.next();
    assert_eq!(first.retry, Some(3000), "{first:?}");
    let snap = sse.next_named("snapshot", 3);
    assert!(
        snap.id
            .as_deref()
            .is_some_and(|i| i.split('-').count() == 3),
        "{snap:?}"
    );
    let v = json(&snap);
    assert_eq!(v["minutes"], 5);
    assert_eq!(v["points"].as_array().unwrap().len(), 5);
    // Its numbers are the query API's for the range it states.
    let range = |v: &Value| {
        let secs = |k: &str| {
            time::OffsetDateTime::parse(
                v[k].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
            .unix_timestamp()
        };
        format!("from={}&to={}", secs("from"), secs("to"))
    };
    let sum = get_json(port, &format!("/v1/summary?{}", range(&v)));
    assert_eq!(v["views"], 65);
    for k in ["views", "hits", "uniques", "engaged_seconds", "top_urls"] {
        assert_eq!(v[k], sum[k], "{k}");
    }
    assert_eq!(
        v["current_visitors"], sum["uniques"],
        "all visitors are of the last minute"
    );
    let top = get_json(port, &format!("/v1/top?dim=site&{}", range(&v)));
    assert_eq!(v["top_sites"], top["items"]);
    let top = get_json(port, &format!("/v1/top?dim=ref_domain&{}", range(&v)));
    assert_eq!(v["top_ref_domains"], top["items"]);
    let points: u64 = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["views"].as_u64().unwrap())
        .sum();
    assert_eq!(points, 65);
    // Health: the numbers of /metrics.
    let h = json(&sse.next_named("health", 3));
    assert_eq!(h["shards"], 2);
    assert_eq!(h["ready"], true);
    assert_eq!(
        h["received_events_total"].as_u64(),
        Some(metric(
            port,
            "pixeld_received_events_total{transport=\"http\"}"
        ))
    );
    assert_eq!(
        h["appended_events_total"].as_u64(),
        Some(metric(port, "pixeld_appended_events_total"))
    );
    assert_eq!(h["pending_events"], 0);
    assert_eq!(h["live_clients"], 1);

    // New events: a new snapshot with them, under a new id.
    post_views(port, "https://shop.example/a", 7);
    let snap2 = sse.next_named("snapshot", 10);
    assert_ne!(snap2.id, snap.id);
    let v2 = json(&snap2);
    // Increments may still be on a ring for one snapshot; the next one has them all.
    let views = if v2["views"] == 72 {
        72
    } else {
        json(&sse.next_named("snapshot", 10))["views"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(views, 72);
    drop(sse);

    // Resume with the id of the state held: nothing is resent until something changes
    // (unless the minute turned meanwhile, which is a change).
    let last = get_json(port, "/v1/summary?from=-30m");
    assert_eq!(last["views"], 72);
    let mut sse = Sse::open(port, "/v1/live?minutes=5", None);
    let held = sse.next_named("snapshot", 3).id.unwrap();
    drop(sse);
    let mut resumed = Sse::open(port, "/v1/live?minutes=5", Some(&held));
    assert_eq!(resumed.next().retry, Some(3000));
    let e = resumed.next();
    if e.event == "snapshot" {
        let minute = |id: &str| id.rsplit('-').next().unwrap().to_string();
        assert_ne!(
            minute(e.id.as_deref().unwrap()),
            minute(&held),
            "resent an unchanged state"
        );
    } else {
        assert_eq!(e.event, "health");
    }
    // A stale or foreign id gets a snapshot at once.
    let mut fresh = Sse::open(port, "/v1/live?minutes=5", Some("1-2-3"));
    assert_eq!(fresh.next().retry, Some(3000));
    assert_eq!(fresh.next().event, "snapshot");
    // One site.
    let mut one = Sse::open(port, "/v1/live?minutes=2&site=blog.example", None);
    let v = json(&one.next_named("snapshot", 3));
    assert_eq!(
        (v["site"].as_str(), v["views"].as_u64()),
        (Some("blog.example"), Some(25))
    );

    // Bad requests.
    let mut bad = Sse::open(port, "/v1/live?minutes=0", None);
    assert_eq!(bad.status, 400);
    let b: Value = serde_json::from_str(&bad.body()).unwrap();
    assert_eq!(b["param"], "minutes");
    let (st, _, _) = http(port, "POST", "/v1/live", &[], b"");
    assert_eq!(st, 405);
}

/// Resident memory (kB) and CPU time (clock ticks) of a process.
fn usage(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = after.split(' ').filter_map(|x| x.parse().ok()).collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the state field.
    (rss, f[10] + f[11])
}

#[test]
fn hundred_idle_clients() {
    let s = start(2, "");
    let port = s.s().http;
    let pid = s.s().child.id();
    post_views(port, "https://shop.example/a", 10);
    settle(port, 10);
    // The idle server's own cost first, for comparison (5 s without clients).
    let (rss0, base0) = usage(pid);
    std::thread::sleep(Duration::from_secs(5));
    let (_, cpu0) = usage(pid);

    // 100 dashboards, spread over both shards by the kernel (SO_REUSEPORT): every one gets
    // its snapshot and its health event.
    let mut clients: Vec<Sse> = (0..100)
        .map(|_| Sse::open(port, "/v1/live?minutes=30", None))
        .collect();
    for c in &mut clients {
        assert_eq!(c.status, 200, "{}", c.head);
        let v = json(&c.next_named("snapshot", 3));
        assert_eq!(v["views"], 10);
        c.next_named("health", 3);
    }
    assert_eq!(metric(port, "pixeld_live_clients"), 100);
    assert_eq!(metric(port, "pixeld_live_refused_total"), 0);
    // The server still answers queries and ingests.
    post_views(port, "https://shop.example/b", 5);
    settle(port, 15);
    for c in clients.iter_mut().take(10) {
        let mut views = 0;
        for _ in 0..10 {
            let e = c.next();
            if e.event == "snapshot" {
                views = json(&e)["views"].as_u64().unwrap();
                if views == 15 {
                    break;
                }
            }
        }
        assert_eq!(views, 15, "a live client missed the new events");
    }
    // Idle cost: no new events for 5 s with 100 streams open (printed for the README; the
    // machine is shared, so this is information, never an assertion).
    let (rss1, cpu1) = usage(pid);
    std::thread::sleep(Duration::from_secs(5));
    let (rss2, cpu2) = usage(pid);
    let pct = |ticks: u64| ticks as f64 / 100.0 / 5.0 * 100.0; // USER_HZ = 100
    eprintln!(
        "live: RSS {rss0} kB without clients, {rss1} kB with 100 ({:.1} kB per client); CPU over 5 s idle: {:.1} % of one core without clients, {:.1} % with 100 idle clients",
        (rss1 as f64 - rss0 as f64) / 100.0,
        pct(cpu0 - base0),
        pct(cpu2 - cpu1),
    );
    assert!(rss2 > 0);
    // Everyone is still served after the idle period.
    for c in &mut clients {
        c.next_named("health", 10);
    }
    assert_eq!(metric(port, "pixeld_live_clients"), 100);
}

#[test]
fn the_cap_refuses_counts_and_frees() {
    let s = start(1, "[dashboard]\nlive_max_clients = 3\n");
    let port = s.s().http;
    let mut clients: Vec<Sse> = (0..3).map(|_| Sse::open(port, "/v1/live", None)).collect();
    for c in &mut clients {
        assert_eq!(c.status, 200);
        c.next_named("snapshot", 3);
    }
    let mut over = Sse::open(port, "/v1/live", None);
    assert_eq!(over.status, 503);
    assert!(
        over.head.to_ascii_lowercase().contains("retry-after: 5"),
        "{}",
        over.head
    );
    let b: Value = serde_json::from_str(&over.body()).unwrap();
    assert_eq!(b["reason"], "live_clients");
    assert!(
        b["error"].as_str().unwrap().contains("live_max_clients"),
        "{b}"
    );
    assert_eq!(metric(port, "pixeld_live_refused_total"), 1);
    assert_eq!(metric(port, "pixeld_live_clients"), 3);
    // Queries are not live streams: still answered.
    get_json(port, "/v1/summary");
    // A client that leaves frees its place (noticed at the next write, within 5 s).
    drop(clients.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(port, "pixeld_live_clients") > 2 {
        assert!(
            Instant::now() < deadline,
            "a closed stream is still counted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut again = Sse::open(port, "/v1/live", None);
    assert_eq!(again.status, 200);
    again.next_named("snapshot", 3);
}

#[test]
fn assets_types_etag_and_csp() {
    let s = start(1, "");
    let port = s.s().http;
    for (path, ty) in [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
        ("/dashboard/vendor/uplot.min.js", "text/javascript"),
        ("/dashboard/vendor/uplot.min.css", "text/css"),
        ("/dashboard/icon.svg", "image/svg+xml"),
        ("/dashboard/vendor/LICENSE-uplot", "text/plain"),
    ] {
        let (st, head, body) = http(port, "GET", path, &[], b"");
        let h = head.to_ascii_lowercase();
        assert_eq!(st, 200, "{path}");
        assert!(h.contains(&format!("content-type: {ty}")), "{path}: {head}");
        assert!(
            h.contains("content-security-policy: default-src 'none'; script-src 'self'"),
            "{path}"
        );
        assert!(h.contains("x-content-type-options: nosniff"), "{path}");
        assert!(!body.is_empty());
        let etag = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("etag:")
                    .then(|| l[5..].trim().to_string())
            })
            .unwrap_or_else(|| panic!("{path}: no ETag"));
        let (st, _, body) = http(port, "GET", path, &[("If-None-Match", &etag)], b"");
        assert_eq!((st, body.len()), (304, 0), "{path}");
        let (st, _, _) = http(port, "GET", path, &[("If-None-Match", "\"other\"")], b"");
        assert_eq!(st, 200, "{path}");
    }
    let (st, _, _) = http(port, "POST", "/", &[], b"");
    assert_eq!(st, 405);
    let (st, _, _) = http(port, "GET", "/dashboard/nope.js", &[], b"");
    assert_eq!(st, 404);
}
