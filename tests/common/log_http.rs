//! Helpers for the log-over-HTTP scenario tests (`log::http_read`, `tools::consumers`,
//! `tools::tail`): posting lines, sending raw bytes over TCP, reading a shard page by page, and
//! waiting for records to become durable. `common::log_http`, used as
//! `use crate::common::log_http::*;`.
#![allow(dead_code)]

use std::io::Write;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use super::http;

/// Posts JSON lines to `/v1/events` (200 only once durable).
pub fn post(port: u16, lines: &[String]) {
    let body = lines.join("\n");
    let (st, _, b) = http(port, "POST", "/v1/events", &[], body.as_bytes());
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
}

/// Sends LF-terminated raw lines over one TCP connection.
pub fn send_tcp(port: u16, lines: &[Vec<u8>]) {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    for l in lines {
        c.write_all(l).unwrap();
        c.write_all(b"\n").unwrap();
    }
}

/// `GET` returning (status, headers, JSON body).
pub fn get_json(port: u16, path: &str) -> (u16, String, Value) {
    let (st, head, body) = http(port, "GET", path, &[], b"");
    let v = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{path}: {st} not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (st, head, v)
}

/// A header's value (case-insensitive name).
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Every shard's `next_offset` from `/v1/log/shards`.
pub fn next_offsets(port: u16) -> Vec<u64> {
    let (st, _, v) = get_json(port, "/v1/log/shards");
    assert_eq!(st, 200, "{v}");
    v["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["next_offset"].as_u64().unwrap())
        .collect()
}

/// Waits (≤ 30 s) until the shards hold `total` durable records together.
pub fn wait_durable_total(port: u16, total: u64) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = next_offsets(port);
        if n.iter().sum::<u64>() >= total || Instant::now() > deadline {
            assert_eq!(
                n.iter().sum::<u64>(),
                total,
                "durable records per shard: {n:?}"
            );
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A record from the API: (offset, raw bytes).
pub fn record(v: &Value) -> (u64, Vec<u8>) {
    let bytes = match (v["line"].as_str(), v["line_b64"].as_str()) {
        (Some(s), None) => s.as_bytes().to_vec(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
        _ => panic!("a record has exactly one of line and line_b64: {v}"),
    };
    (v["offset"].as_u64().unwrap(), bytes)
}

/// One `GET /v1/log` by offset: (records, X-Next-Offset).
pub fn read_page(port: u16, shard: usize, offset: u64, extra: &str) -> (Vec<Value>, u64) {
    let path = format!("/v1/log?shard={shard}&offset={offset}{extra}");
    let (st, head, body) = http(port, "GET", &path, &[], b"");
    assert_eq!(st, 200, "{path}: {}", String::from_utf8_lossy(&body));
    assert!(head.contains("application/x-ndjson"), "{head}");
    let recs: Vec<Value> = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let next = header(&head, "x-next-offset").unwrap().parse().unwrap();
    assert_eq!(
        header(&head, "x-record-count").unwrap(),
        recs.len().to_string()
    );
    (recs, next)
}

/// Reads a shard from `from` to `to` page by page, checking offsets are contiguous.
pub fn read_range(port: u16, shard: usize, from: u64, to: u64, page: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let (recs, next) = read_page(port, shard, at, &format!("&max_records={page}"));
        assert!(
            !recs.is_empty() && recs.len() as u64 <= page,
            "at {at}: {recs:?}"
        );
        for r in &recs {
            assert_eq!(r["shard"].as_u64(), Some(shard as u64));
            let (o, b) = record(r);
            assert_eq!(o, at, "offsets are contiguous");
            out.push((o, b));
            at += 1;
        }
        assert_eq!(next, at, "X-Next-Offset is one past the last record");
    }
    out
}

/// Distinct JSON lines `{"url":…,"n":i,…}` of `len` ≥ 60 bytes.
pub fn json_lines(tag: &str, range: std::ops::Range<u64>, len: usize) -> Vec<String> {
    range
        .map(|i| {
            let head =
                format!("{{\"url\":\"https://ex.com/{tag}/{i}\",\"vid\":\"v{i}\",\"pad\":\"");
            let pad = "x".repeat(len.saturating_sub(head.len() + 2));
            format!("{head}{pad}\"}}")
        })
        .collect()
}

/// Every durable line of every shard, shard by shard in offset order.
pub fn all_lines(port: u16) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (shard, end) in next_offsets(port).into_iter().enumerate() {
        out.extend(
            read_range(port, shard, 0, end, 1000)
                .into_iter()
                .map(|(_, b)| b),
        );
    }
    out
}
