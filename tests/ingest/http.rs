//! The HTTP port of a real `pixeld serve`: the pixel GIF, the acknowledged batch endpoint
//! (200 only once durable; acked lines survive a kill -9 right after), 413 and 400, and
//! /metrics, /healthz, /readyz with counters that add up.

use std::process::Command;

use crate::common::{self, http, Server};

#[test]
fn pixel_events_metrics_and_health() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::builder()
        .data(&data)
        .shards(1)
        .config("[ingest]\nhttp_max_body = \"4KiB\"\n[log]\nfsync = \"batch\"\n")
        .start();
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));

    let (st, head, body) = http(s.http, "GET", "/healthz", &[], b"");
    assert_eq!((st, body.as_slice()), (200, &b"ok\n"[..]), "{head}");
    let (st, _, body) = http(s.http, "GET", "/readyz", &[], b"");
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));

    // The pixel: a GIF, no-store, and a JSON line with the query, UA, referer, client IP.
    let (st, head, body) = http(
        s.http,
        "GET",
        "/p.gif?url=https%3A%2F%2Fex.com%2Fa%3Fb%3D1&ref=https%3A%2F%2Fgoogle.com%2F&vid=v42&a=pv&junk=1",
        &[("User-Agent", "Mozilla/5.0 \"quoted\""), ("Referer", "https://ex.com/a?b=1"), ("X-Forwarded-For", "203.0.113.9, 10.0.0.1")],
        b"",
    );
    assert_eq!(st, 200);
    assert!(
        head.to_lowercase().contains("cache-control: no-store") && head.contains("image/gif"),
        "{head}"
    );
    assert_eq!(body.len(), 43);
    assert!(body.starts_with(b"GIF89a"));

    // The acknowledged batch: 200 only after durable, with the offset.
    let batch = b"{\"url\":\"https://ex.com/1\",\"vid\":\"a\"}\n{\"url\":\"https://ex.com/2\",\"vid\":\"b\"}\r\n\n{\"url\":\"https://ex.com/3\"}";
    let (st, _, body) = http(
        s.http,
        "POST",
        "/v1/events",
        &[("Content-Type", "application/x-ndjson")],
        batch,
    );
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["accepted"], 3);
    assert_eq!(v["durable_offset"]["shard"], 0);
    assert_eq!(v["durable_offset"]["offset"], 3);
    // Too large, and not JSON: refused, nothing stored.
    let (st, _, _) = http(s.http, "POST", "/v1/events", &[], &[b'x'; 5000]);
    assert_eq!(st, 413);
    let (st, _, body) = http(s.http, "POST", "/v1/events", &[], b"{\"ok\":1}\nnot json\n");
    assert_eq!(st, 400);
    assert!(String::from_utf8_lossy(&body).contains("line 2"));
    let (st, _, _) = http(s.http, "GET", "/nope", &[], b"");
    assert_eq!(st, 404);

    let (st, _, body) = http(s.http, "GET", "/metrics", &[], b"");
    assert_eq!(st, 200);
    let m = String::from_utf8(body).unwrap();
    for needle in [
        "pixeld_received_events_total{transport=\"http\"} 4",
        "pixeld_appended_events_total 4",
        "pixeld_dropped_events_total{reason=\"oversize\"} 0",
        "pixeld_durable_offset{shard=\"0\"} 3",
        "pixeld_fsync_duration_seconds_count",
        "pixeld_build_info{version=",
        "pixeld_parse_errors_total{kind=\"pri\"}",
        "pixeld_ready 1",
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }

    // Acked lines survive a kill -9 right after the 200.
    let (st, _, _) = http(s.http, "POST", "/v1/events", &[], b"{\"last\":true}\n");
    assert_eq!(st, 200);
    s.signal("KILL");
    let _ = s.wait();
    let out = Command::new(common::pixeld_bin())
        .args(["replay", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    let pixel: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(pixel["url"], "https%3A%2F%2Fex.com%2Fa%3Fb%3D1");
    assert_eq!(pixel["urlref"], "https%3A%2F%2Fgoogle.com%2F");
    assert_eq!(pixel["vid"], "v42");
    assert_eq!(pixel["action"], "pv");
    assert_eq!(pixel["ua"], "Mozilla/5.0 \"quoted\"");
    assert_eq!(pixel["referer"], "https://ex.com/a?b=1");
    assert_eq!(
        pixel["ip"], "203.0.113.9",
        "X-Forwarded-For from a trusted proxy"
    );
    assert!(pixel.get("junk").is_none());
    assert_eq!(lines[1], "{\"url\":\"https://ex.com/1\",\"vid\":\"a\"}");
    assert_eq!(lines[3], "{\"url\":\"https://ex.com/3\"}");
    assert_eq!(lines[4], "{\"last\":true}");
}
