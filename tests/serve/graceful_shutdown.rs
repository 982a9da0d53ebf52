//! SIGTERM under TCP load: pixeld stops accepting, writes and fsyncs everything it appended,
//! exits 0, and accounts for every line it received (received = appended + dropped). The log
//! then holds exactly an in-order prefix of what the sender wrote — nothing lost in the middle,
//! nothing twice — and the next start rebuilds aggregates that count every appended hit.

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::common::{self, http, Server};

#[test]
fn sigterm_under_tcp_load_loses_nothing_it_took() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::start(&data, &["--shards", "1"]);
    assert!(s.wait_for("ready:").is_some(), "{}", s.seen.join("\n"));
    let tcp = s.tcp;
    let now_ms = pixeld::route::now_minute() * 60_000 + 1;
    // The sender writes numbered hits as fast as it can until the connection breaks.
    let sender = std::thread::spawn(move || {
        let mut c = TcpStream::connect(("127.0.0.1", tcp)).unwrap();
        let mut sent = 0u64;
        let mut buf = Vec::new();
        while sent < 2_000_000 {
            buf.clear();
            for i in sent..sent + 500 {
                writeln!(
                    buf,
                    r#"{{"msec":{}.{:03},"url":"https://shut.example/p{}","vid":"v{}","seq":{i}}}"#,
                    now_ms / 1000,
                    now_ms % 1000,
                    i % 50,
                    i % 977
                )
                .unwrap();
            }
            if c.write_all(&buf).is_err() {
                break;
            }
            sent += 500;
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(700));
    s.signal("TERM");
    let (code, log) = s.wait();
    let sent = sender.join().unwrap();
    assert_eq!(code, Some(0), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("shard 0 stopped: "))
        .unwrap_or_else(|| panic!("{log}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let (received, appended, dropped) = (nums[1], nums[2], nums[3]);
    assert_eq!(received, appended + dropped, "{line}");
    assert!(appended > 1000, "too little load to mean anything: {line}");

    // The log: seq 0, 1, 2, … appended-1 in order.
    let out = Command::new(common::pixeld_bin())
        .args(["replay", "--format", "raw", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut n = 0u64;
    for l in text.lines() {
        let seq: u64 = l
            .rsplit("\"seq\":")
            .next()
            .and_then(|t| t.trim_end_matches('}').parse().ok())
            .unwrap_or_else(|| panic!("bad line {l}"));
        assert_eq!(seq, n, "gap or duplicate at record {n}");
        n += 1;
    }
    assert_eq!(
        n, appended,
        "log holds {n}, pixeld reported {appended} appended (sent {sent})"
    );

    // The next start rebuilds aggregates from that log: every appended hit counted.
    let mut s = Server::start(&data, &["--shards", "1"]);
    assert!(s.wait_for("ready:").is_some(), "{}", s.seen.join("\n"));
    let (st, _, body) = http(s.http, "GET", "/v1/summary?from=-1h", &[], b"");
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["hits"].as_u64(), Some(appended), "{v}");
    s.signal("TERM");
    assert_eq!(s.wait().0, Some(0));
}
