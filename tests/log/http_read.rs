//! Reading a real `pixeld serve`'s log over HTTP: every record of every shard by offset,
//! contiguous, with `X-Next-Offset`; raw bytes that are not UTF-8 round-trip byte-exact; reads
//! by time; bounds (`max_records`, `max_bytes`); 416 past the end; 400 for bad parameters; a
//! long poll that answers when a record becomes durable.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::log_http::*;
use crate::common::{self, http, Server};

#[test]
fn records_by_offset_and_time_bounds_and_bad_parameters() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::start(&data, &["--shards", "2"]);
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 2;

    // JSON lines over HTTP (several connections, so both shards get some) and raw lines
    // that are not UTF-8 over TCP.
    let mut sent: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    for b in 0..6 {
        let lines = json_lines(&format!("b{b}"), 0..40, 120);
        for l in &lines {
            *sent.entry(l.as_bytes().to_vec()).or_default() += 1;
        }
        post(s.http, &lines);
    }
    let mut raw: Vec<Vec<u8>> = (0..20u8)
        .map(|i| {
            vec![
                b'r',
                b'a',
                b'w',
                b'A' + i,
                0xff,
                0xfe,
                0x00,
                b' ',
                0xc3,
                0x28,
                b'!',
            ]
        })
        .collect();
    raw.push("caf\u{e9} \u{1F600} utf-8 survives too".as_bytes().to_vec());
    raw.push(b"\x80".to_vec());
    for r in &raw {
        *sent.entry(r.clone()).or_default() += 1;
    }
    send_tcp(s.tcp, &raw);
    let total = 240 + raw.len() as u64;
    let ends = wait_durable_total(s.http, total);

    // Every record of every shard, page by page: contiguous offsets from 0, exactly the
    // bytes that were sent.
    let mut got: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    let mut b64 = 0;
    for (shard, &end) in ends.iter().enumerate() {
        let recs = read_range(s.http, shard, 0, end, 7);
        assert_eq!(recs.len() as u64, end);
        for (_, b) in recs {
            b64 += usize::from(std::str::from_utf8(&b).is_err());
            *got.entry(b).or_default() += 1;
        }
    }
    assert_eq!(got, sent, "every record, byte for byte, exactly once");
    assert_eq!(b64, 21, "the non-UTF-8 records came as line_b64");

    let shard = ends.iter().position(|&e| e >= 10).unwrap();
    let end = ends[shard];
    // max_bytes: at least one record always; the body stays within the bound otherwise.
    let (recs, next) = read_page(s.http, shard, 0, "&max_bytes=1");
    assert_eq!((recs.len(), next), (1, 1));
    // Which records fit depends on which lines this shard got (short raw ones or long JSON
    // ones), so the expected count comes from the sizes of the NDJSON lines themselves.
    let (_, _, body) = http(
        s.http,
        "GET",
        &format!("/v1/log?shard={shard}&offset=1&max_records=50"),
        &[],
        b"",
    );
    let sizes: Vec<usize> = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.len() + 1)
        .collect();
    let bound = sizes[0] + sizes[1] + sizes[1] / 2;
    let (mut fit, mut used) = (0, 0);
    for z in &sizes {
        if fit > 0 && used + z > bound {
            break;
        }
        used += z;
        fit += 1;
    }
    assert!(fit >= 2 && fit < sizes.len(), "{sizes:?} {bound}");
    let (recs, next) = read_page(s.http, shard, 1, &format!("&max_bytes={bound}"));
    assert_eq!(recs.len(), fit, "{sizes:?} {bound}");
    assert_eq!(next, 1 + recs.len() as u64);
    // At the end: empty, X-Next-Offset = the offset asked for.
    let (recs, next) = read_page(s.http, shard, end, "");
    assert_eq!((recs.len(), next), (0, end));

    // By time: from before the first record, the shard's first record; after the last,
    // nothing and the end offset.
    let (st, head, body) = http(
        s.http,
        "GET",
        &format!("/v1/log?shard={shard}&time={before}&max_records=2"),
        &[],
        b"",
    );
    assert_eq!(st, 200);
    let first: serde_json::Value =
        serde_json::from_slice(body.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["offset"], 0);
    assert_eq!(header(&head, "x-next-offset").as_deref(), Some("2"));
    let (st, head, body) = http(
        s.http,
        "GET",
        &format!("/v1/log?shard={shard}&time=2099-01-01T00:00:00Z"),
        &[],
        b"",
    );
    assert_eq!((st, body.len()), (200, 0));
    assert_eq!(header(&head, "x-next-offset"), Some(end.to_string()));

    // Past the end: 416 naming the retained range.
    let (st, _, v) = get_json(s.http, &format!("/v1/log?shard={shard}&offset={}", end + 1));
    assert_eq!(st, 416, "{v}");
    assert_eq!(
        (v["first_offset"].as_u64(), v["next_offset"].as_u64()),
        (Some(0), Some(end))
    );

    // Bad parameters: 400 with a JSON error naming the parameter.
    for (q, param) in [
        ("shard=2&offset=0", "shard"),
        ("shard=-1&offset=0", "shard"),
        ("offset=0", "shard"),
        ("shard=0&offset=-1", "offset"),
        ("shard=0&offset=abc", "offset"),
        ("shard=0&offset=99999999999999999999999", "offset"),
        ("shard=0", "offset"),
        ("shard=0&offset=0&time=now", "time"),
        ("shard=0&time=yesterday", "time"),
        ("shard=0&offset=0&max_records=10001", "max_records"),
        ("shard=0&offset=0&max_records=0", "max_records"),
        ("shard=0&offset=0&max_bytes=8388609", "max_bytes"),
        ("shard=0&offset=0&wait_ms=30001", "wait_ms"),
        ("shard=0&offset=0&limit=5", "limit"),
        ("shard=0&shard=1&offset=0", "shard"),
    ] {
        let (st, _, v) = get_json(s.http, &format!("/v1/log?{q}"));
        assert_eq!(st, 400, "{q}: {v}");
        assert_eq!(v["param"], param, "{q}: {v}");
        assert!(v["error"].as_str().unwrap().contains(param), "{q}: {v}");
    }
    let (st, _, v) = get_json(s.http, "/v1/log/shards?x=1");
    assert_eq!((st, v["param"].as_str()), (400, Some("x")));
    let (st, _, _) = http(s.http, "POST", "/v1/log?shard=0&offset=0", &[], b"");
    assert_eq!(st, 405);
    let (st, _, _) = http(s.http, "GET", "/v1/log/nope", &[], b"");
    assert_eq!(st, 404);

    // A long poll without news answers empty once its wait is over ...
    let (recs, next) = read_page(s.http, shard, end, "&wait_ms=200");
    assert_eq!((recs.len(), next), (0, end));
    // ... and with news as soon as a record is durable: poll every shard at its end while
    // posting (a post lands on whichever shard accepts its connection).
    let port = s.http;
    let polls: Vec<_> = ends
        .iter()
        .enumerate()
        .map(|(sh, &e)| std::thread::spawn(move || read_page(port, sh, e, "&wait_ms=30000")))
        .collect();
    let mut i = 0;
    while !polls.iter().all(|p| p.is_finished()) && i < 200 {
        post(s.http, &json_lines("late", i..i + 1, 80));
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    for (sh, p) in polls.into_iter().enumerate() {
        let (recs, next) = p.join().unwrap();
        assert!(
            !recs.is_empty(),
            "shard {sh}: the long poll got the new record"
        );
        assert_eq!(recs[0]["offset"].as_u64(), Some(ends[sh]));
        assert_eq!(next, ends[sh] + recs.len() as u64);
    }

    s.signal("TERM");
    let (code, out) = s.wait();
    assert_eq!(code, Some(0), "{out}");
}
