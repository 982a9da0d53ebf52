//! `ingest.allowed_sources`: hits from outside the allow-list are refused on every ingest
//! port and counted (UDP datagrams as `dropped{reason="source_not_allowed"}`, TCP connections
//! and HTTP ingest requests in `pixeld_source_refused_total{transport}`), nothing of them is
//! logged, queries still answer; the same hits from inside the list are kept; a bad entry is
//! a config error naming the key.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::common;

/// The hit every path sends, stamped now.
fn line() -> String {
    format!(
        r#"{{"msec":{},"url":"https://www.example.com/allow","vid":"v1"}}"#,
        common::data_msec()
    )
}

/// Sends 10 datagrams, 10 TCP lines, one /p.gif and one POST; returns the HTTP statuses.
fn send_all(s: &common::Server) -> (u16, u16) {
    let line = line();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..10 {
        udp.send_to(line.as_bytes(), ("127.0.0.1", s.udp)).unwrap();
    }
    if let Ok(mut c) = TcpStream::connect(("127.0.0.1", s.tcp)) {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body: String = (0..10).map(|_| format!("{line}\n")).collect();
        let _ = c.write_all(body.as_bytes());
        let _ = c.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink);
    }
    let (pixel, _, _) = common::http(
        s.http,
        "GET",
        "/p.gif?url=https%3A%2F%2Fwww.example.com%2Fp&vid=v2",
        &[],
        b"",
    );
    let (post, _, _) = common::http(
        s.http,
        "POST",
        "/v1/events",
        &[],
        format!("{line}\n").as_bytes(),
    );
    (pixel, post)
}

fn server(tmp: &std::path::Path, name: &str, allowed: &str) -> common::Server {
    let mut s = common::Server::builder()
        .data(&tmp.join(name))
        .shards(1)
        .config(&format!("[ingest]\nallowed_sources = {allowed}\n"))
        .start();
    assert!(s.wait_for("ready: 1 shard").is_some(), "{:?}", s.seen);
    s
}

#[test]
fn hits_from_outside_the_allow_list_are_refused_and_counted() {
    let tmp = common::tempdir();
    // Loopback is not in the list: everything the test sends is refused.
    let s = server(tmp.path(), "outside", r#"["10.0.0.0/8", "192.0.2.7"]"#);
    let (pixel, post) = send_all(&s);
    assert_eq!((pixel, post), (403, 403));
    let deadline = Instant::now() + Duration::from_secs(20);
    let m = loop {
        let m = common::metrics(s.http);
        if common::metric_sum(
            &m,
            "pixeld_dropped_events_total{reason=\"source_not_allowed\"}",
        ) == 10
            && common::metric_sum(&m, "pixeld_source_refused_total{transport=\"tcp\"}") == 1
        {
            break m;
        }
        assert!(Instant::now() < deadline, "{m:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        common::metric_sum(&m, "pixeld_source_refused_total{transport=\"http\"}"),
        2
    );
    assert_eq!(common::metric_sum(&m, "pixeld_appended_events_total"), 0);
    assert_eq!(
        common::metric_sum(&m, "pixeld_received_events_total"),
        common::metric_sum(&m, "pixeld_dropped_events_total")
    );
    // Queries are not ingest: they answer.
    let (st, _, _) = common::http(s.http, "GET", "/v1/summary?from=-1h", &[], b"");
    assert_eq!(st, 200);
    s.signal("TERM");
    assert_eq!(s.wait().0, Some(0));

    // Loopback in the list: the same hits are kept (10 + 10 + 1 + 1).
    let s = server(tmp.path(), "inside", r#"["127.0.0.0/8"]"#);
    let (pixel, post) = send_all(&s);
    assert_eq!((pixel, post), (200, 200));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = common::metrics(s.http);
        if common::metric_sum(&m, "pixeld_appended_events_total") == 22 {
            break;
        }
        assert!(Instant::now() < deadline, "{m:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.signal("TERM");
    assert_eq!(s.wait().0, Some(0));

    // A bad entry is a config error naming the key.
    let config = tmp.path().join("bad.toml");
    std::fs::write(&config, "[ingest]\nallowed_sources = [\"10.0.0.0/33\"]\n").unwrap();
    let out = std::process::Command::new(common::pixeld_bin())
        .args(["validate", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("ingest.allowed_sources") && err.contains("10.0.0.0/33"),
        "{err}"
    );
}
