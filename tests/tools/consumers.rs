//! Named consumers on a real `pixeld serve`: two consumers read the same log independently
//! while ingest continues and each sees every record once, in offset order per shard;
//! committed offsets survive kill -9 and are validated; lag per shard; retention keeps what a
//! pinned consumer has not read up to `retention_bytes_hard`, then deletes it and a reader at
//! a deleted offset gets 416 with the new first offset.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::log_http::*;
use crate::common::{self, http, Server};

fn put(port: u16, name: &str, body: &str) -> (u16, serde_json::Value) {
    let (st, _, b) = http(
        port,
        "PUT",
        &format!("/v1/consumers/{name}/offsets"),
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    (st, serde_json::from_slice(&b).unwrap())
}

/// A consumer that reads every shard from its next offset, commits after each page, and
/// stops once the sender is done and it has reached every shard's end.
fn consume(
    port: u16,
    name: &'static str,
    page: u64,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Vec<(u64, Vec<u8>)>> {
    let shards = next_offsets(port).len();
    let mut seen: Vec<Vec<(u64, Vec<u8>)>> = vec![Vec::new(); shards];
    let mut next = vec![0u64; shards];
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let finished = done.load(std::sync::atomic::Ordering::SeqCst);
        let mut progress = false;
        for sh in 0..shards {
            let (recs, n) = read_page(
                port,
                sh,
                next[sh],
                &format!("&max_records={page}&wait_ms=50"),
            );
            for r in &recs {
                seen[sh].push(record(r));
            }
            progress |= !recs.is_empty();
            next[sh] = n;
            if !recs.is_empty() {
                let (st, v) = put(port, name, &format!("{{\"shard\":{sh},\"offset\":{n}}}"));
                assert_eq!(st, 200, "{v}");
            }
        }
        if finished && !progress && next == next_offsets(port) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not catch up: {next:?}"
        );
    }
}

#[test]
fn two_consumers_see_every_record_once_in_order_while_ingesting() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::start(&data, &["--shards", "2"]);
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    let port = s.http;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = [("alpha", 37), ("beta", 500)]
        .into_iter()
        .map(|(name, page)| {
            let done = done.clone();
            std::thread::spawn(move || consume(port, name, page, done))
        })
        .collect();
    let mut sent: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    for b in 0..40 {
        let lines = json_lines(&format!("b{b}"), 0..50, 100);
        for l in &lines {
            *sent.entry(l.as_bytes().to_vec()).or_default() += 1;
        }
        post(port, &lines);
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let ends = wait_durable_total(port, 2000);
    for (name, r) in ["alpha", "beta"].iter().zip(readers) {
        let seen = r.join().unwrap();
        let mut got: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
        for (sh, recs) in seen.iter().enumerate() {
            let offsets: Vec<u64> = recs.iter().map(|(o, _)| *o).collect();
            assert_eq!(
                offsets,
                (0..ends[sh]).collect::<Vec<_>>(),
                "{name}, shard {sh}: every offset once, in order"
            );
            for (_, b) in recs {
                *got.entry(b.clone()).or_default() += 1;
            }
        }
        assert_eq!(got, sent, "{name} saw every record exactly once");
        // Its committed offsets are the ends: no lag.
        let (st, _, v) = get_json(port, &format!("/v1/consumers/{name}"));
        assert_eq!(st, 200, "{v}");
        for (sh, row) in v["shards"].as_array().unwrap().iter().enumerate() {
            assert_eq!(row["committed_offset"].as_u64(), Some(ends[sh]), "{v}");
            assert_eq!(row["lag_records"].as_u64(), Some(0), "{v}");
            assert_eq!(row["lag_seconds"].as_f64(), Some(0.0), "{v}");
        }
    }
    let (_, _, m) = http(port, "GET", "/metrics", &[], b"");
    let m = String::from_utf8(m).unwrap();
    for name in ["alpha", "beta"] {
        for sh in 0..2 {
            let row =
                format!("pixeld_consumer_lag_records{{consumer=\"{name}\",shard=\"{sh}\"}} 0");
            assert!(m.contains(&row), "{row} in\n{m}");
        }
    }
    let (st, _, v) = get_json(port, "/v1/consumers");
    assert_eq!(st, 200);
    assert_eq!(v["consumers"].as_array().unwrap().len(), 2, "{v}");
    s.signal("TERM");
    assert_eq!(s.wait().0, Some(0));
}

#[test]
fn commits_are_validated_durable_and_report_lag() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::start(&data, &["--shards", "1"]);
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    post(s.http, &json_lines("a", 0..10, 80));
    wait_durable_total(s.http, 10);

    let (st, v) = put(
        s.http,
        "etl-1",
        r#"{"shard":0,"offset":4,"retention_pin":true}"#,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["shards"][0]["committed_offset"], 4);
    assert_eq!(v["shards"][0]["lag_records"], 6);
    assert!(v["shards"][0]["lag_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["retention_pin"], true);
    let (st, v) = put(s.http, "etl-2", r#"[{"shard":0,"offset":10}]"#);
    assert_eq!(
        (st, v["shards"][0]["lag_records"].as_u64()),
        (200, Some(0)),
        "{v}"
    );
    let (st, v) = put(s.http, "etl-2", r#"{"offsets":[{"shard":0,"offset":2}]}"#);
    assert_eq!(
        (st, v["shards"][0]["committed_offset"].as_u64()),
        (200, Some(2)),
        "{v}"
    );

    // Refused, with a JSON error, and nothing stored.
    for (name, body, status) in [
        ("bad%20name", r#"{"shard":0,"offset":1}"#, 400),
        (".hidden", r#"{"shard":0,"offset":1}"#, 400),
        (&"x".repeat(65), r#"{"shard":0,"offset":1}"#, 400),
        ("etl-3", r#"{"shard":1,"offset":1}"#, 400),
        ("etl-3", r#"{"shard":0,"offset":11}"#, 400),
        ("etl-3", r#"{"shard":0,"offset":-1}"#, 400),
        ("etl-3", r#"{"shard":0}"#, 400),
        ("etl-3", r#"not json"#, 400),
        (
            "etl-3",
            r#"[{"shard":0,"offset":1},{"shard":0,"offset":2}]"#,
            400,
        ),
        ("etl-3", r#"[]"#, 400),
    ] {
        let (st, v) = put(s.http, name, body);
        assert_eq!(st, status, "{name} {body}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    let (st, _, _) = get_json(s.http, "/v1/consumers/etl-3");
    assert_eq!(st, 404);
    let (st, _, _) = http(s.http, "POST", "/v1/consumers/etl-1/offsets", &[], b"{}");
    assert_eq!(st, 405);

    // Acknowledged commits survive kill -9.
    s.child.kill().unwrap();
    let _ = s.wait();
    let mut s = Server::start(&data, &["--shards", "1"]);
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    let (st, _, v) = get_json(s.http, "/v1/consumers/etl-1");
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (
            v["shards"][0]["committed_offset"].as_u64(),
            v["retention_pin"].as_bool()
        ),
        (Some(4), Some(true))
    );
    let (_, _, v) = get_json(s.http, "/v1/consumers/etl-2");
    assert_eq!(v["shards"][0]["committed_offset"], 2);

    // Unpinning, then deleting.
    let (st, v) = put(s.http, "etl-1", r#"{"offsets":[],"retention_pin":false}"#);
    assert_eq!(
        (st, v["retention_pin"].as_bool()),
        (200, Some(false)),
        "{v}"
    );
    let (st, _, _) = http(s.http, "DELETE", "/v1/consumers/etl-1", &[], b"");
    assert_eq!(st, 200);
    let (st, _, _) = get_json(s.http, "/v1/consumers/etl-1");
    assert_eq!(st, 404);
    let (st, _, _) = http(s.http, "DELETE", "/v1/consumers/etl-1", &[], b"");
    assert_eq!(st, 404);
    s.signal("TERM");
    assert_eq!(s.wait().0, Some(0));
}

fn shard0(port: u16) -> serde_json::Value {
    get_json(port, "/v1/log/shards").2["shards"][0].clone()
}

#[test]
fn retention_keeps_what_a_pinned_consumer_has_not_read_up_to_the_hard_limit() {
    let mut s = Server::builder()
        .shards(1)
        .config(
            "[log]\ncompression = \"none\"\nbatch_max_bytes = \"16KiB\"\nsegment_max_bytes = \"64KiB\"\n\
             retention_bytes = \"1MiB\"\nretention_bytes_hard = \"2MiB\"\n",
        )
        .start();
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    let (st, v) = put(
        s.http,
        "archive",
        r#"{"shard":0,"offset":0,"retention_pin":true}"#,
    );
    assert_eq!(st, 200, "{v}");

    // 1.5 MiB: over retention_bytes, under the hard limit. The pinned consumer has read
    // nothing, so nothing is deleted (retention runs after every segment roll).
    let mut n = 0;
    for b in 0..3 {
        post(s.http, &json_lines(&format!("p{b}"), 0..512, 1024));
        n += 512;
    }
    wait_durable_total(s.http, n);
    let sh = shard0(s.http);
    assert_eq!(sh["first_offset"], 0, "{sh}");
    assert!(sh["bytes_on_disk"].as_u64().unwrap() > 3 << 19, "{sh}");
    let (recs, _) = read_page(s.http, 0, 0, "&max_records=1");
    assert_eq!(recs.len(), 1);

    // 3 MiB: past the hard limit, the oldest unread segments go anyway, counted.
    for b in 3..6 {
        post(s.http, &json_lines(&format!("p{b}"), 0..512, 1024));
        n += 512;
    }
    wait_durable_total(s.http, n);
    let deadline = Instant::now() + Duration::from_secs(30);
    while shard0(s.http)["first_offset"] == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing deleted past retention_bytes_hard"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let sh = shard0(s.http);
    assert!(
        sh["bytes_on_disk"].as_u64().unwrap() <= (2 << 20) + (256 << 10),
        "{sh}"
    );
    let (_, _, m) = http(s.http, "GET", "/metrics", &[], b"");
    let m = String::from_utf8(m).unwrap();
    assert!(
        !m.contains("pixeld_log_pinned_segments_deleted_total 0\n"),
        "{m}"
    );
    assert!(
        m.contains("pixeld_consumer_lag_records{consumer=\"archive\",shard=\"0\"} 3072"),
        "{m}"
    );

    // A reader at a deleted offset: 416 naming the first retained offset, which reads.
    let (st, _, v) = get_json(s.http, "/v1/log?shard=0&offset=0");
    assert_eq!(st, 416, "{v}");
    let first = v["first_offset"].as_u64().unwrap();
    assert!(first > 0 && first < n, "{v}");
    assert_eq!(v["next_offset"].as_u64(), Some(n));
    let (recs, _) = read_page(s.http, 0, first, "&max_records=3");
    assert_eq!(recs[0]["offset"].as_u64(), Some(first));
    assert!(s
        .wait_for("although a consumer with retention_pin has not read it")
        .is_some());
    s.signal("TERM");
    assert_eq!(s.wait().0, Some(0));
}
