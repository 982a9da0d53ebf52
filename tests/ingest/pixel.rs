//! The pixel's browser-facing side on a real `pixeld serve` (what the tracking script relies
//! on): `POST /p.gif` as `navigator.sendBeacon` sends it, the CORS preflight, prefetches
//! answered 204 and stored nowhere (counted), custom events as hits, cookieless visitor ids
//! (one per site, address and User-Agent, the same on every shard, none when the config turns
//! them off), and `/px.js` with its versioned, immutable twin, public under a token (tests/serve/http_auth.rs).

use crate::common::log_http::{read_range, wait_durable_total};
use crate::common::{self, http, metrics, Server};

/// Every logged record of every shard, parsed.
fn logged(port: u16, total: u64) -> Vec<serde_json::Value> {
    let ends = wait_durable_total(port, total);
    let mut out = Vec::new();
    for (shard, &end) in ends.iter().enumerate() {
        for (_, b) in read_range(port, shard, 0, end, 100) {
            out.push(serde_json::from_slice(&b).unwrap());
        }
    }
    out
}

fn hit(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let (st, head, _) = http(port, method, path, headers, b"");
    (st, head.to_ascii_lowercase())
}

#[test]
fn beacons_preflight_prefetch_events_and_cookieless_visitors() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let s = &mut Server::builder()
        .data(&data)
        .shards(2)
        .config("[ingest]\ntrusted_proxies = [\"127.0.0.1\"]\n")
        .start();
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    let ua_a = [
        ("User-Agent", "Browser A"),
        ("X-Forwarded-For", "198.51.100.7"),
    ];
    let ua_b = [
        ("User-Agent", "Browser B"),
        ("X-Forwarded-For", "198.51.100.7"),
    ];
    let other_ip = [
        ("User-Agent", "Browser A"),
        ("X-Forwarded-For", "198.51.100.8"),
    ];
    let url = "url=https%3A%2F%2Fa.example%2Fpost";
    // Many connections, so that both shards answer some: their ids must agree.
    let mut stored = 0;
    for _ in 0..6 {
        for (m, h) in [
            ("GET", &ua_a),
            ("POST", &ua_a),
            ("GET", &ua_b),
            ("GET", &other_ip),
        ] {
            let (st, head) = hit(s.http, m, &format!("/p.gif?{url}&a=pv"), h);
            assert_eq!(st, 200, "{m} {head}");
            assert!(head.contains("cache-control: no-store"), "{head}");
            assert!(head.contains("access-control-allow-origin: *"), "{head}");
            stored += 1;
        }
    }
    // Another site: another id for the same reader.
    let (st, _) = hit(
        s.http,
        "GET",
        "/p.gif?url=https%3A%2F%2Fb.example%2F",
        &ua_a,
    );
    assert_eq!(st, 200);
    // A visitor id sent by the page is kept as it is.
    let (st, _) = hit(s.http, "GET", &format!("/p.gif?{url}&vid=mine"), &ua_a);
    assert_eq!(st, 200);
    // A custom event, as the script sends it.
    let (st, _) = hit(
        s.http,
        "POST",
        &format!("/p.gif?a=event&n=signup&{url}&p=%7B%22plan%22%3A%22pro%22%7D"),
        &ua_a,
    );
    assert_eq!(st, 200);
    stored += 3;
    // Prefetch and prerender: 204, nothing stored.
    for h in [
        ("Sec-Purpose", "prefetch"),
        ("Sec-Purpose", "prefetch;prerender"),
        ("Purpose", "prefetch"),
    ] {
        let (st, head) = hit(s.http, "GET", &format!("/p.gif?{url}"), &[h]);
        assert_eq!(st, 204, "{h:?}: {head}");
    }
    // The CORS preflight of a page on another origin.
    let (st, head) = hit(
        s.http,
        "OPTIONS",
        "/p.gif",
        &[
            ("Origin", "https://a.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
    );
    assert_eq!(st, 204, "{head}");
    for h in [
        "access-control-allow-origin: *",
        "access-control-allow-methods: get, post, options",
        "access-control-max-age: 86400",
    ] {
        assert!(head.contains(h), "{h} missing: {head}");
    }

    let recs = logged(s.http, stored);
    let vid_of = |ua: &str, ip: &str, site: &str| -> Vec<String> {
        let mut v: Vec<String> = recs
            .iter()
            .filter(|r| r["ua"] == ua && r["ip"] == ip && r["url"].as_str().unwrap().contains(site))
            .filter(|r| r["action"] != "event")
            .map(|r| r["vid"].as_str().unwrap_or("").to_string())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let a = vid_of("Browser A", "198.51.100.7", "a.example");
    assert_eq!(a.len(), 2, "one derived id and the page's own: {a:?}");
    assert_eq!(a[0].len(), 16, "{a:?}");
    assert!(a.contains(&"mine".to_string()));
    let derived = a.iter().find(|v| *v != "mine").unwrap().clone();
    for other in [
        vid_of("Browser B", "198.51.100.7", "a.example"),
        vid_of("Browser A", "198.51.100.8", "a.example"),
        vid_of("Browser A", "198.51.100.7", "b.example"),
    ] {
        assert_eq!(other.len(), 1, "{other:?}");
        assert_ne!(other[0], derived);
        assert_eq!(other[0].len(), 16);
    }
    let ev: Vec<_> = recs.iter().filter(|r| r["action"] == "event").collect();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["name"], "signup");
    assert_eq!(ev[0]["props"], "%7B%22plan%22%3A%22pro%22%7D");
    assert_eq!(ev[0]["vid"], derived.as_str());
    // The event is a hit, not a view; three distinct derived ids plus `mine` on a.example.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let sum = loop {
        let (st, _, body) = http(
            s.http,
            "GET",
            "/v1/summary?from=-10m&site=a.example",
            &[],
            b"",
        );
        assert_eq!(st, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if v["hits"] == stored - 1 || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(sum["hits"], stored - 1, "{sum}");
    assert_eq!(sum["views"], stored - 2, "{sum}");
    assert_eq!(sum["uniques"], 4, "{sum}");

    let m = metrics(s.http);
    assert_eq!(m.get("pixeld_http_pixel_prefetch_total"), Some(&3.0));
    assert_eq!(m.get("pixeld_http_pixel_no_salt_total"), Some(&0.0));
    // One salt, today's, private to pixeld.
    let salts: Vec<_> = std::fs::read_dir(data.join("tracker"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(salts.len(), 1, "{salts:?}");
    assert!(salts[0].starts_with("salt-20"), "{salts:?}");

    // The script: public under a token, cached for an hour and revalidated, naming its
    // versioned path, which is immutable.
    let (st, head, body) = http(s.http, "GET", "/px.js", &[], b"");
    let head = head.to_ascii_lowercase();
    assert_eq!(st, 200, "{head}");
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(
        head.contains("cache-control: public, max-age=3600"),
        "{head}"
    );
    assert!(body.starts_with(b"/*! pixeld px.js"));
    let versioned = head
        .lines()
        .find_map(|l| l.strip_prefix("content-location: "))
        .unwrap()
        .trim()
        .to_string();
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap()
        .trim()
        .to_string();
    let (st, head2, body2) = http(s.http, "GET", &versioned, &[], b"");
    assert_eq!((st, &body2), (200, &body));
    assert!(
        head2
            .to_ascii_lowercase()
            .contains("cache-control: public, max-age=31536000, immutable"),
        "{head2}"
    );
    let (st, _, body) = http(s.http, "GET", "/px.js", &[("If-None-Match", &etag)], b"");
    assert_eq!((st, body.len()), (304, 0));
    let (st, _, _) = http(s.http, "GET", "/px.0123456789abcdef.js", &[], b"");
    assert_eq!(st, 404, "an unknown version is not the script");
}

#[test]
fn without_derived_ids_a_hit_keeps_no_visitor_and_no_salt_is_made() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::builder()
        .data(&data)
        .shards(1)
        .config("[tracker]\nderive_visitor_ids = false\n")
        .start();
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    let (st, _) = hit(
        s.http,
        "GET",
        "/p.gif?url=https%3A%2F%2Fa.example%2F",
        &[("User-Agent", "A")],
    );
    assert_eq!(st, 200);
    let recs = logged(s.http, 1);
    assert!(recs[0].get("vid").is_none(), "{}", recs[0]);
    assert!(!data.join("tracker").exists());
    let m = metrics(s.http);
    assert_eq!(m.get("pixeld_http_pixel_prefetch_total"), Some(&0.0));
}

/// One pixel hit (its url padded to ~12 KB, so that a few hundred fill the 1 MiB write-behind
/// queue) from its own thread: its status.
fn big_pixel(port: u16, n: usize) -> std::thread::JoinHandle<u16> {
    std::thread::spawn(move || {
        let pad = "x".repeat(12_000);
        let path = format!("/p.gif?url=https%3A%2F%2Fwait.example%2F{n}%2F{pad}&a=pv");
        http(port, "GET", &path, &[], b"").0
    })
}

/// `pixeld_http_pixel_overload_total{outcome=…}`.
fn overload(port: u16, outcome: &str) -> f64 {
    metrics(port)
        .get(&format!(
            "pixeld_http_pixel_overload_total{{outcome=\"{outcome}\"}}"
        ))
        .copied()
        .unwrap_or(-1.0)
}

/// Under real backpressure (the log's writes held by the test-only hook
/// `PIXELD_TEST_HOLD_WRITES` while a file exists, so the 1 MiB write-behind queue fills):
/// with `pixel_overload = "wait"` hits beyond the queue hold their answers until there is
/// room, then every hit is stored; with `"drop"` every hit is answered at once and what the
/// full queue refused is counted as dropped, the rest stored.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the test-only fault hooks: cargo test --features fault-injection (scripts/test does)"
)]
fn pixel_overload_waits_for_room_or_drops_and_counts() {
    // ~2.9 MB of lines: more than the queue takes from HTTP (twice max_pending_bytes, the
    // allowance of the paths that push back; the pixel waits from max_pending_bytes on).
    const HITS: usize = 240;
    for mode in ["wait", "drop"] {
        let tmp = common::tempdir();
        let gate = tmp.path().join("hold-writes");
        std::fs::write(&gate, b"").unwrap();
        let mut server = Server::builder()
            .shards(1)
            .config(&format!(
                "[ingest]\npixel_overload = \"{mode}\"\npixel_max_wait = \"10m\"\n[log]\nmax_pending_bytes = \"1MiB\"\n"
            ))
            .env("PIXELD_TEST_HOLD_WRITES", gate.to_str().unwrap())
            .start();
        let s = &mut server;
        assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
        let hits: Vec<_> = (0..HITS).map(|n| big_pixel(s.http, n)).collect();
        if mode == "wait" {
            // Hits meet the full queue and wait; their answers are held while writes are.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while overload(s.http, "waited") < 1.0 {
                assert!(std::time::Instant::now() < deadline, "no hit waited");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let answered = hits.iter().filter(|h| h.is_finished()).count();
            assert!(answered < HITS, "every hit answered while the log was held");
            std::fs::remove_file(&gate).unwrap();
            let statuses: Vec<u16> = hits.into_iter().map(|h| h.join().unwrap()).collect();
            assert!(statuses.iter().all(|&st| st == 200), "{statuses:?}");
            assert_eq!(overload(s.http, "dropped"), 0.0);
            assert_eq!(logged(s.http, HITS as u64).len(), HITS);
        } else {
            // Every hit is answered while the log's writes are still held.
            let statuses: Vec<u16> = hits.into_iter().map(|h| h.join().unwrap()).collect();
            assert!(statuses.iter().all(|&st| st == 200), "{statuses:?}");
            let dropped = overload(s.http, "dropped") as usize;
            assert!(dropped >= 1, "nothing dropped with the queue full");
            assert_eq!(overload(s.http, "waited"), 0.0);
            std::fs::remove_file(&gate).unwrap();
            assert_eq!(
                logged(s.http, (HITS - dropped) as u64).len(),
                HITS - dropped
            );
            let m = metrics(s.http);
            assert_eq!(
                m.get("pixeld_dropped_events_total{reason=\"backpressure\"}")
                    .copied()
                    .unwrap_or(0.0) as usize,
                dropped,
                "{m:?}"
            );
        }
        server.signal("TERM");
        let (code, log) = server.wait();
        assert_eq!(code, Some(0), "{log}");
    }
}
