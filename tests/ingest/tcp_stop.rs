//! A relay on TCP through a clean stop (SIGTERM) of a pixeld that binds its own ports. pixeld
//! stops accepting, sends the relay a FIN and reads and appends until the relay closes; a relay
//! that looks for the FIN before each write (as rsyslog's `omfwd` does, and this test's relay)
//! then closes and loses nothing: every line it wrote is in the log exactly once. And the next
//! pixeld starts on the same ports at once: the connections pixeld closed first (TIME_WAIT,
//! FIN_WAIT2) do not keep it from binding them.

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::log_http::all_lines;
use crate::common::{self, metric_sum, metrics, Server};

/// What a relay that checks for the server's FIN before each write sees.
fn closed_by_server(c: &TcpStream) -> bool {
    c.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let closed = match c.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("the connection broke instead of closing: {e}"),
    };
    c.set_nonblocking(false).unwrap();
    closed
}

#[test]
fn a_relay_that_sees_the_fin_loses_nothing_at_a_stop() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::builder().data(&data).shards(1).start();
    assert!(s.wait_for("ready:").is_some(), "{}", s.seen.join("\n"));
    let (udp, tcp, http) = (s.udp, s.tcp, s.http);
    let relay = std::thread::spawn(move || {
        let mut c = TcpStream::connect(("127.0.0.1", tcp)).unwrap();
        let mut n = 0u64;
        let mut buf = Vec::new();
        while !closed_by_server(&c) {
            buf.clear();
            for i in n..n + 100 {
                writeln!(
                    buf,
                    r#"{{"url":"https://stop.example/p{}","seq":{i}}}"#,
                    i % 50
                )
                .unwrap();
            }
            c.write_all(&buf)
                .expect("a write after pixeld's FIN still reaches pixeld");
            n += 100;
            assert!(n < 100_000_000, "pixeld never closed the connection");
            std::thread::sleep(Duration::from_millis(1));
        }
        c.shutdown(std::net::Shutdown::Write).unwrap();
        n
    });
    // Stop once the relay's lines arrive.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric_sum(&metrics(http), "pixeld_received_events_total") < 1000 {
        assert!(Instant::now() < deadline, "no TCP line arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.signal("TERM");
    let (code, log) = s.wait();
    assert_eq!(code, Some(0), "{log}");
    let written = relay.join().unwrap();

    // The next pixeld, on the same ports, right away.
    let ports: Vec<String> = [
        "--udp",
        &format!("127.0.0.1:{udp}"),
        "--tcp",
        &format!("127.0.0.1:{tcp}"),
        "--http",
        &format!("127.0.0.1:{http}"),
        "--shards",
        "1",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let mut s = Server::start_args(&data, &ports);
    s.http = http;
    assert!(s.wait_for("ready:").is_some(), "{}", s.seen.join("\n"));
    let mut seqs: Vec<u64> = all_lines(http)
        .iter()
        .map(|l| {
            let l = String::from_utf8_lossy(l);
            l.rsplit("\"seq\":")
                .next()
                .and_then(|t| t.trim_end_matches('}').parse().ok())
                .unwrap_or_else(|| panic!("bad line {l}"))
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs.len() as u64,
        written,
        "the relay wrote {written} lines"
    );
    assert!(
        seqs.iter().enumerate().all(|(i, &q)| q == i as u64),
        "every line once"
    );
}
