//! The HTTP port under abuse: slowloris connections (a header byte now and then) are closed by
//! the header read timeout while normal queries keep answering; request heads over 16 KiB get
//! 431, bodies over `http_max_body` 413, a malformed query parameter 400 JSON; connections
//! beyond `http_max_connections` are closed at once and counted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common;

fn raw(port: u16, request: &[u8]) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = c.write_all(request);
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn slowloris_big_heads_big_bodies_and_too_many_connections() {
    let mut s = common::Server::builder()
        .shards(1)
        .config(
            "[ingest]\nhttp_header_timeout = \"1s\"\nhttp_max_connections = 200\nhttp_max_body = \"4KiB\"\n",
        )
        .start();
    assert!(s.wait_for("ready: 1 shard").is_some(), "{:?}", s.seen);

    // 100 slowloris connections, one header byte every 200 ms.
    let mut slow: Vec<TcpStream> = (0..100)
        .map(|_| {
            let c = TcpStream::connect(("127.0.0.1", s.http)).unwrap();
            c.set_nonblocking(true).unwrap();
            c
        })
        .collect();
    let head = b"GET /v1/summary HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    let started = Instant::now();
    let mut closed = vec![false; slow.len()];
    let mut queries = 0;
    let mut i = 0usize;
    while closed.iter().any(|c| !c) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} slowloris connections still open",
            closed.iter().filter(|c| !**c).count()
        );
        let byte = [head[i % head.len()]];
        for (c, done) in slow.iter_mut().zip(closed.iter_mut()) {
            if *done {
                continue;
            }
            let mut buf = [0u8; 512];
            match c.read(&mut buf) {
                // Closed by the server (after an error answer, or at once).
                Ok(0) => *done = true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if c.write(&byte).is_err() {
                        *done = true;
                    }
                }
                Err(_) => *done = true,
            }
        }
        i += 1;
        // Normal queries answer meanwhile.
        let (st, _, _) = common::http(s.http, "GET", "/v1/summary?from=-1h", &[], b"");
        assert_eq!(st, 200);
        queries += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(queries >= 2);

    // A 20 KiB header: 431.
    let big = format!(
        "GET /v1/summary HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(20 << 10)
    );
    let r = raw(s.http, big.as_bytes());
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");

    // A body over http_max_body: 413, nothing stored.
    let line = format!(
        r#"{{"msec":{},"url":"https://www.example.com/big","vid":"v1"}}"#,
        common::data_msec()
    );
    let body: String = (0..100).map(|_| format!("{line}\n")).collect();
    let (st, _, b) = common::http(s.http, "POST", "/v1/events", &[], body.as_bytes());
    assert_eq!(st, 413, "{}", String::from_utf8_lossy(&b));

    // A malformed query parameter: 400 JSON naming it.
    let (st, _, b) = common::http(s.http, "GET", "/v1/top?dim=url&limit=abc", &[], b"");
    assert_eq!(st, 400);
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["param"], "limit", "{v}");

    // Connections beyond the limit are closed at once and counted.
    let before = common::metric_sum(&common::metrics(s.http), "pixeld_http_refused_total");
    let held: Vec<TcpStream> = (0..230)
        .map(|_| TcpStream::connect(("127.0.0.1", s.http)).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        // The metrics request itself needs a free slot: close one held connection first.
        let m = loop {
            let mut c = match TcpStream::connect(("127.0.0.1", s.http)) {
                Ok(c) => c,
                Err(_) => continue,
            };
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = c.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                break out;
            }
            assert!(Instant::now() < deadline, "no metrics answer");
            std::thread::sleep(Duration::from_millis(100));
        };
        let n: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("pixeld_http_refused_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if n >= before + 30 {
            break n - before;
        }
        assert!(Instant::now() < deadline, "only {} refused", n - before);
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(refused >= 30, "{refused}");
    drop(held);
    // Once they are gone, the port serves again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (st, _, _) = common::http(s.http, "GET", "/healthz", &[], b"");
        if st == 200 {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    s.signal("TERM");
    let (code, log) = s.wait();
    assert_eq!(code, Some(0), "{log}");
}
