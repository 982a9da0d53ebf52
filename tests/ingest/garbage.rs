//! Network garbage on every ingest port of a running pixeld (2 shards): random bytes, empty and
//! maximum-size datagrams, a 10 MB line, octet counts of 0 / `99999999999` / non-digits,
//! half-open and abandoned TCP connections, random bytes on the HTTP port. Each is either
//! kept (the log keeps every line, even one that fails to parse) or counted under a bounded
//! `reason`; the counters add up (received = appended + dropped); and afterwards every shard
//! still ingests and answers queries.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::common;

const REASONS: [&str; 8] = [
    "empty",
    "partial_frame",
    "backpressure",
    "disk_full",
    "poisoned",
    "oversize",
    "shutting_down",
    "source_not_allowed",
];

fn tcp(port: u16) -> TcpStream {
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    c
}

/// Waits until received = appended + dropped holds and the totals stop moving.
fn settled(port: u16) -> std::collections::BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        let m = common::metrics(port);
        let received = common::metric_sum(&m, "pixeld_received_events_total");
        let appended = common::metric_sum(&m, "pixeld_appended_events_total");
        let dropped = common::metric_sum(&m, "pixeld_dropped_events_total");
        let now = (received, appended, dropped);
        if received == appended + dropped && last == Some(now) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "counters never added up: received {received}, appended {appended}, dropped {dropped}"
        );
        last = Some(now);
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn garbage_on_every_port_is_kept_or_counted_and_serving_goes_on() {
    let mut s = common::Server::builder()
        .shards(2)
        .config("[ingest]\ntcp_framing = \"octet\"\n")
        .start();
    assert!(s.wait_for("ready: 2 shards").is_some(), "{:?}", s.seen);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6a7b);

    // UDP: random datagrams, empty ones, and the largest one UDP carries.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut udp_sent = 0u64;
    for i in 0..300 {
        let len = match i % 3 {
            0 => 0,
            1 => rng.gen_range(1..200),
            _ => rng.gen_range(200..4000),
        };
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        udp.send_to(&bytes, ("127.0.0.1", s.udp)).unwrap();
        udp_sent += 1;
    }
    udp.send_to(&vec![b'x'; 65_507], ("127.0.0.1", s.udp))
        .unwrap();
    udp_sent += 1;

    // TCP in octet framing: a zero count, a count of 99999999999, non-digits — each ends its
    // connection as a framing error; a frame cut off by the end of its connection is counted
    // as partial; a connection that sends nothing and goes away costs nothing.
    for bad in [&b"0 abc"[..], b"99999999999 abc", b"12a3 abc", b"-5 abc"] {
        let mut c = tcp(s.tcp);
        c.write_all(bad).unwrap();
        let _ = c.shutdown(Shutdown::Write);
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink);
    }
    {
        let mut c = tcp(s.tcp);
        c.write_all(b"500 only a part of it").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink);
    }
    // Half-open: connected, some bytes, then dropped without a FIN from this side's reader.
    let half_open: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut c = tcp(s.tcp);
            if i % 2 == 0 {
                c.write_all(b"27 <190>Nov").unwrap();
            }
            c
        })
        .collect();
    // A 10 MB frame is oversize (limit 64 KiB): dropped and counted as it streams through,
    // while the connection goes on and its next frame is kept. (Line framing's oversize line is
    // covered by tests/ingest/udp_tcp.rs; any size takes the same path.)
    {
        let mut c = tcp(s.tcp);
        let big = 10 * 1024 * 1024;
        c.write_all(format!("{big} ").as_bytes()).unwrap();
        let chunk = vec![b'y'; 1 << 20];
        for _ in 0..10 {
            c.write_all(&chunk).unwrap();
        }
        let ok = format!(
            r#"{{"msec":{},"url":"https://www.example.com/after-oversize","vid":"v1"}}"#,
            common::data_msec()
        );
        let ok = ok.as_bytes();
        c.write_all(format!("{} ", ok.len()).as_bytes()).unwrap();
        c.write_all(ok).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink);
    }
    // Random bytes on the HTTP port: an error answer or a closed connection, never a crash.
    for _ in 0..20 {
        let mut c = tcp(s.http);
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let len = rng.gen_range(1..3000);
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let _ = c.write_all(&bytes);
        let _ = c.write_all(b"\r\n\r\n");
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink);
        if !sink.is_empty() {
            assert!(
                sink.starts_with(b"HTTP/1.1 4"),
                "{:?}",
                String::from_utf8_lossy(&sink)
            );
        }
    }
    drop(half_open);

    let m = settled(s.http);
    // Every drop carries one of the documented reasons.
    for k in m
        .keys()
        .filter(|k| k.starts_with("pixeld_dropped_events_total{"))
    {
        assert!(
            REASONS
                .iter()
                .any(|r| k.contains(&format!("reason=\"{r}\""))),
            "unbounded reason label: {k}"
        );
    }
    let udp_received = m
        .get("pixeld_received_events_total{transport=\"udp\"}")
        .copied()
        .unwrap_or(0.0) as u64;
    let kernel = common::metric_sum(&m, "pixeld_udp_kernel_drops_total");
    assert_eq!(udp_received + kernel, udp_sent, "{m:?}");
    assert!(
        m.get("pixeld_dropped_events_total{reason=\"empty\"}")
            .copied()
            .unwrap_or(0.0)
            >= 100.0,
        "{m:?}"
    );
    assert!(
        common::metric_sum(&m, "pixeld_tcp_framing_errors_total") >= 4,
        "{m:?}"
    );
    assert!(
        m.get("pixeld_dropped_events_total{reason=\"oversize\"}")
            .copied()
            .unwrap_or(0.0)
            >= 1.0,
        "{m:?}"
    );
    assert!(
        m.get("pixeld_dropped_events_total{reason=\"partial_frame\"}")
            .copied()
            .unwrap_or(0.0)
            >= 2.0,
        "{m:?}"
    );

    // Both shards still ingest (a datagram each way) and answer.
    let before = common::metric_sum(&m, "pixeld_appended_events_total");
    let line = format!(
        r#"<190>Nov 22 01:39:03 pixel: {{"msec":{},"url":"https://www.example.com/still","vid":"v2"}}"#,
        common::data_msec()
    );
    let line = line.as_bytes();
    for _ in 0..50 {
        udp.send_to(line, ("127.0.0.1", s.udp)).unwrap();
    }
    let m = settled(s.http);
    assert!(common::metric_sum(&m, "pixeld_appended_events_total") >= before + 50);
    let (st, _, body) = common::http(s.http, "GET", "/v1/summary?from=-1h", &[], b"");
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    let (st, _, _) = common::http(s.http, "GET", "/readyz", &[], b"");
    assert_eq!(st, 200);
    s.signal("TERM");
    let (code, log) = s.wait();
    assert_eq!(code, Some(0), "{log}");
}
