//! UDP at several times what one shard with a small receive buffer absorbs: every datagram
//! carries a sequence number, and afterwards sent = appended + dropped{reason} + kernel drops
//! exactly — and the log holds exactly the appended sequence numbers, each once. pixeld keeps
//! answering health checks and queries during the flood. A UDP receive that fails is counted,
//! and the shard receives on; one that says the socket is unusable makes pixeld unready.

use std::collections::HashSet;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pixeld::log::reader::Start;

use crate::common;

const SENDERS: u64 = 2;
const PER_SENDER: u64 = 60_000;

#[test]
fn a_udp_flood_is_accounted_for_exactly() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    // A small receive buffer, so that the kernel drops part of the flood.
    let mut s = common::Server::builder()
        .data(&data)
        .shards(1)
        .config("[ingest]\nudp_rcvbuf = \"64KiB\"\n")
        .start();
    assert!(s.wait_for("ready: 1 shard").is_some(), "{:?}", s.seen);
    let port = s.udp;
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..SENDERS)
        .map(|t| {
            let sent = sent.clone();
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                for i in 0..PER_SENDER {
                    let seq = t * PER_SENDER + i;
                    let line = format!(
                        r#"<190>Nov 22 01:39:03 pixel: {{"msec":{},"url":"https://www.example.com/flood/{}","vid":"v{}","seq":{seq}}}"#,
                        common::data_msec(),
                        seq % 100,
                        seq % 1000
                    );
                    // A send the local kernel refuses (ENOBUFS) never left: not counted.
                    if sock.send_to(line.as_bytes(), ("127.0.0.1", port)).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Health and queries answer during the flood.
    let prober = {
        let (done, http) = (done.clone(), s.http);
        std::thread::spawn(move || {
            let mut answered = 0;
            while !done.load(Ordering::Relaxed) {
                let (st, _, _) = common::http(http, "GET", "/healthz", &[], b"");
                assert_eq!(st, 200);
                let (st, _, _) = common::http(http, "GET", "/v1/realtime?minutes=5", &[], b"");
                assert_eq!(st, 200);
                answered += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            answered
        })
    };
    for t in senders {
        t.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let answered = prober.join().unwrap();
    assert!(answered >= 1);
    let sent = sent.load(Ordering::Relaxed);

    // Wait until every datagram is accounted for. The shard reads the kernel's drop count
    // after each time it empties the socket, so no later datagram is needed to bring it
    // (when each datagram carried the count, the drops at the end of a flood waited for one).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (appended, dropped, kernel) = loop {
        std::thread::sleep(Duration::from_millis(300));
        let m = common::metrics(s.http);
        let received = common::metric_sum(&m, "pixeld_received_events_total");
        let appended = common::metric_sum(&m, "pixeld_appended_events_total");
        let dropped = common::metric_sum(&m, "pixeld_dropped_events_total");
        let kernel = common::metric_sum(&m, "pixeld_udp_kernel_drops_total");
        if received == appended + dropped && received + kernel == sent {
            break (appended, dropped, kernel);
        }
        assert!(
            Instant::now() < deadline,
            "sent {sent}; received {received}, appended {appended}, dropped {dropped}, kernel {kernel}"
        );
    };
    s.signal("TERM");
    let (code, log) = s.wait();
    assert_eq!(code, Some(0), "{log}");

    // The log holds exactly the appended records; flood records by sequence number, each once.
    let (recs, _) = common::read_all(&data.join("shard-000"), Start::Beginning);
    assert_eq!(recs.len() as u64, appended);
    let mut seqs = HashSet::new();
    for (_, _, bytes) in &recs {
        let text = String::from_utf8_lossy(bytes);
        let rest = text.split("\"seq\":").nth(1).expect("a flood record");
        let seq: u64 = rest.trim_end_matches('}').parse().unwrap();
        assert!(seq < SENDERS * PER_SENDER && seqs.insert(seq), "seq {seq}");
    }
    let flood_logged = seqs.len() as u64;
    // Nothing unaccounted: every datagram sent is in the log, dropped by pixeld with a
    // reason, or dropped by the kernel and counted.
    assert_eq!(
        flood_logged + dropped + kernel,
        sent,
        "sent {sent}: logged {flood_logged}, dropped {dropped}, kernel drops {kernel}"
    );
    eprintln!(
        "UDP flood: {sent} sent, {flood_logged} logged, {dropped} dropped by pixeld, {kernel} dropped by the kernel (counted)"
    );
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the test-only fault hooks: cargo test --features fault-injection (scripts/test does)"
)]
fn a_failed_udp_receive_is_counted_and_the_shard_receives_on() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    // The first 3 receives of the socket fail (ENOMEM, before the call: nothing is lost).
    let mut s = common::Server::builder()
        .data(&data)
        .shards(1)
        .env("PIXELD_TEST_UDP_RECV_ERRORS", "3")
        .start();
    assert!(s.wait_for("ready: 1 shard").is_some(), "{:?}", s.seen);
    let (sock, port) = (UdpSocket::bind("127.0.0.1:0").unwrap(), s.udp);
    let send = |n: u64| {
        let line = format!(
            r#"<190>Nov 22 01:39:03 pixel: {{"msec":{},"url":"https://www.example.com/after-errors/{n}","vid":"v{n}"}}"#,
            common::data_msec()
        );
        sock.send_to(line.as_bytes(), ("127.0.0.1", port)).unwrap();
    };
    // One datagram meets the three failures; the shard pauses after each and reads on.
    send(0);
    for i in 0..3 {
        let l = s.wait_for("pixeld: udp receive failed: ");
        assert!(
            l.as_deref()
                .is_some_and(|l| l.contains("receiving on in 50 ms")),
            "failure {i}: {:?}",
            s.seen
        );
    }
    for n in 1..20 {
        send(n);
    }
    common::wait_until("all 20 datagrams received and appended", || {
        let m = common::metrics(s.http);
        common::metric_sum(&m, "pixeld_received_events_total") == 20
            && common::metric_sum(&m, "pixeld_appended_events_total") == 20
    });
    let m = common::metrics(s.http);
    assert_eq!(
        m.get("pixeld_receive_errors_total{transport=\"udp\"}"),
        Some(&3.0)
    );
    assert_eq!(
        m.get("pixeld_receive_errors_total{transport=\"tcp\"}"),
        Some(&0.0)
    );
    assert_eq!(common::metric_sum(&m, "pixeld_udp_kernel_drops_total"), 0);
    // Still serving, and ready.
    let (st, _, _) = common::http(s.http, "GET", "/readyz", &[], b"");
    assert_eq!(st, 200);
    s.signal("TERM");
    let (code, log) = s.wait();
    assert_eq!(code, Some(0), "{log}");
    let (recs, _) = common::read_all(&data.join("shard-000"), Start::Beginning);
    assert_eq!(recs.len(), 20);
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the test-only fault hooks: cargo test --features fault-injection (scripts/test does)"
)]
fn a_udp_socket_that_fails_for_good_makes_the_server_unready_and_says_so() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    // The first receive fails with EBADF: the socket is unusable, the task ends.
    let mut s = common::Server::builder()
        .data(&data)
        .shards(1)
        .env("PIXELD_TEST_UDP_RECV_FATAL", "1")
        .start();
    assert!(s.wait_for("ready: 1 shard").is_some(), "{:?}", s.seen);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let line = format!(
        r#"<190>Nov 22 01:39:03 pixel: {{"msec":{},"url":"https://www.example.com/x","vid":"v"}}"#,
        common::data_msec()
    );
    sock.send_to(line.as_bytes(), ("127.0.0.1", s.udp)).unwrap();
    let l = s.wait_for("pixeld: shard 0: UDP receive stopped: ");
    assert!(
        l.as_deref()
            .is_some_and(|l| l.contains("receives no UDP until pixeld restarts")),
        "{:?}",
        s.seen
    );
    let (st, _, body) = common::http(s.http, "GET", "/readyz", &[], b"");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(st, 503, "{body}");
    assert!(
        body.contains("shard 0: its UDP socket failed and receives no more"),
        "{body}"
    );
    let m = common::metrics(s.http);
    assert_eq!(m.get("pixeld_udp_receive_stopped"), Some(&1.0));
    assert_eq!(m.get("pixeld_ready"), Some(&0.0));
    // TCP and HTTP go on.
    let (st, _, _) = common::http(s.http, "GET", "/healthz", &[], b"");
    assert_eq!(st, 200);
    s.signal("TERM");
    let (code, log) = s.wait();
    assert_eq!(code, Some(0), "{log}");
}
