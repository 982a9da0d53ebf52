//! Keyed `POST /v1/events` batches through random failures (the test-only hook
//! `PIXELD_TEST_HTTP_FAULTS`, cargo feature `fault-injection`): 200 batches of 5 lines, each
//! with its own `Idempotency-Key`, against a 2-shard pixeld that answers a keyed batch 503
//! before storing it (10 %), 503 after storing and syncing a prefix of it (10 %), resets the
//! connection instead of answering a stored batch (10 %), or aborts between the fsync and the
//! answer (5 %). The client retries every failure with the same key and body, starting pixeld
//! again (same data dir) when it died. Every line is then in the log exactly once.
//!
//! Behaviour only: the faults are random, so the test asserts each kind happened at least once
//! (with these rates and at least 200 draws, missing one is a chance below 1 in 10 000) and
//! never asserts a time or a count of faults.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::log_http::all_lines;
use crate::common::Server;

const FAULTS: &str = "503:0.1,503-prefix:0.1,reset:0.1,abort:0.05";
const BATCHES: usize = 200;
const LINES: usize = 5;

fn line(b: usize, i: usize) -> String {
    format!("{{\"url\":\"https://faults.example/b{b}/l{i}\",\"vid\":\"v{b}-{i}\"}}")
}

fn batch(b: usize) -> Vec<u8> {
    (0..LINES)
        .map(|i| line(b, i) + "\n")
        .collect::<String>()
        .into_bytes()
}

/// `POST /v1/events` with `key` on a fresh connection: (status, JSON answer), or None when the
/// connection broke or was refused before an answer.
fn post(port: u16, key: &str, body: &[u8]) -> Option<(u16, serde_json::Value)> {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nIdempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).ok()?;
    c.write_all(body).ok()?;
    let mut out = Vec::new();
    c.read_to_end(&mut out).ok()?;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = String::from_utf8_lossy(&out[..split])
        .split(' ')
        .nth(1)?
        .parse()
        .ok()?;
    let v = serde_json::from_slice(&out[split + 4..]).unwrap_or(serde_json::Value::Null);
    Some((status, v))
}

/// Whether the server answers `/healthz`.
fn answers(port: u16) -> bool {
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let req = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let mut out = Vec::new();
    c.write_all(req).is_ok() && c.read_to_end(&mut out).is_ok() && out.starts_with(b"HTTP/1.1 200")
}

/// After a broken connection: whether the server died (the `abort` fault) rather than reset
/// that connection (`reset`).
fn died(s: &mut Server) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if s.child.try_wait().ok().flatten().is_some() {
            return true;
        }
        if answers(s.http) {
            return false;
        }
        assert!(Instant::now() < deadline, "pixeld neither died nor answers");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[derive(Debug, Default)]
struct Seen {
    refused: u32,
    refused_after_prefix: u32,
    resets: u32,
    aborts: u32,
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the test-only fault hooks: cargo test --features fault-injection (scripts/test does)"
)]
fn keyed_batches_through_random_failures_are_stored_exactly_once() {
    let tmp = crate::common::tempdir();
    let data = tmp.path().join("data");
    let start = || {
        let mut s = Server::builder()
            .data(&data)
            .shards(2)
            .env("PIXELD_TEST_HTTP_FAULTS", FAULTS)
            .start();
        assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
        s
    };
    let mut s = start();
    let mut seen = Seen::default();
    for b in 0..BATCHES {
        let (key, body) = (format!("faults-{b}"), batch(b));
        let mut attempts = 0;
        loop {
            attempts += 1;
            assert!(
                attempts <= 100,
                "batch {b} not stored after 100 attempts: {seen:?}"
            );
            match post(s.http, &key, &body) {
                Some((200, v)) => {
                    assert_eq!(v["accepted"], LINES as u64, "{v}");
                    break;
                }
                Some((503, v)) => {
                    assert_eq!(v["lines"], LINES as u64, "{v}");
                    let stored = v["stored"].as_u64().unwrap_or_else(|| panic!("{v}"));
                    assert!(stored < LINES as u64, "{v}");
                    if stored > 0 {
                        seen.refused_after_prefix += 1;
                    } else {
                        seen.refused += 1;
                    }
                }
                Some((st, v)) => panic!("batch {b}: unexpected {st}: {v}"),
                None if died(&mut s) => {
                    seen.aborts += 1;
                    let (code, log) = std::mem::replace(&mut s, start()).wait();
                    assert_ne!(code, Some(0), "{log}");
                    assert!(
                        log.contains("PIXELD_TEST_HTTP_FAULTS: aborting after the fsync"),
                        "died of something else than the abort fault:\n{log}"
                    );
                }
                None => seen.resets += 1,
            }
        }
    }
    // Every line of every batch, once; nothing else.
    let mut logged: Vec<String> = all_lines(s.http)
        .into_iter()
        .map(|l| String::from_utf8(l).unwrap())
        .collect();
    logged.sort();
    let mut want: Vec<String> = (0..BATCHES)
        .flat_map(|b| (0..LINES).map(move |i| line(b, i)))
        .collect();
    want.sort();
    let doubled: Vec<&String> = logged
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| &w[0])
        .collect();
    assert!(doubled.is_empty(), "stored twice: {doubled:?} ({seen:?})");
    assert_eq!(logged.len(), want.len(), "{seen:?}");
    assert_eq!(logged, want, "{seen:?}");
    // Every kind of fault happened (see the module doc for the odds).
    assert!(
        seen.refused > 0 && seen.refused_after_prefix > 0 && seen.resets > 0 && seen.aborts > 0,
        "{seen:?}"
    );
    eprintln!("faults seen: {seen:?}");
}
