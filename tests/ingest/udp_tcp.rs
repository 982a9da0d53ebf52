//! Ingest end to end through a real `pixeld serve` on free loopback ports: UDP syslog
//! datagrams (valid, garbage, invalid UTF-8, empty, oversize) and TCP streams (line and
//! octet framing, CRLF, byte-by-byte writes, oversize, a partial frame at EOF, 1,000
//! concurrent connections). Every sent line is in the log or counted as dropped, and the
//! counters add up: received = appended + dropped.

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{self, Server};

/// Sums "shard N stopped: R received, A appended, D dropped [...], K kernel UDP drops".
fn totals(log: &str) -> (u64, u64, u64, u64, String) {
    let (mut r, mut a, mut d, mut k) = (0, 0, 0, 0);
    let mut reasons = String::new();
    for line in log.lines().filter(|l| l.contains(" stopped: ")) {
        let nums: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        // shard, received, appended, dropped, <reason counts...>, kernel, durable
        r += nums[1];
        a += nums[2];
        d += nums[3];
        let kernel = line
            .split(" kernel UDP drops")
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap();
        k += kernel.parse::<u64>().unwrap();
        reasons.push_str(line.split('[').nth(1).unwrap().split(']').next().unwrap());
        reasons.push(' ');
    }
    (r, a, d, k, reasons)
}

fn replayed(data: &Path) -> HashMap<Vec<u8>, usize> {
    let out = Command::new(common::pixeld_bin())
        .args(["replay", "--format", "ndjson", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut m = HashMap::new();
    for l in out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(l).unwrap();
        let bytes = match v.get("line") {
            Some(s) => s.as_str().unwrap().as_bytes().to_vec(),
            None => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(v["line_b64"].as_str().unwrap())
                    .unwrap()
            }
        };
        *m.entry(bytes).or_insert(0) += 1;
    }
    m
}

/// Waits until the live log holds `n` records (replay reads a running data dir), or gives
/// up after a bound, so the test stops pixeld only when everything sent has arrived.
fn wait_records(data: &Path, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if replayed(data).values().sum::<usize>() >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lines over 1 KiB are oversize.
const CONFIG: &str = "[ingest]\nmax_line_bytes = \"1KiB\"\n";

#[test]
fn udp_datagrams_are_logged_or_counted() {
    udp_datagrams(CONFIG);
}

/// The same without `ingest.receive_coalesce`: each wake-up reads at once.
#[test]
fn udp_datagrams_are_logged_or_counted_without_coalescing() {
    udp_datagrams(&format!("{CONFIG}receive_coalesce = \"0s\"\n"));
}

fn udp_datagrams(config: &str) {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::builder()
        .data(&data)
        .shards(2)
        .config(config)
        .start();
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = format!("127.0.0.1:{}", s.udp);
    let mut expected: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut sent = 0u64;
    for i in 0..5000u32 {
        let mut d = format!(
            r#"<190>Nov 22 01:39:03 pixel: {{"msec":{}.{i:03},"url":"https%3A%2F%2Fex.com%2Fp{i}","ua":"Mozilla \"q\" \\b","vid":"v{}"}}"#,
            common::data_ms() / 1000,
            i % 97
        )
        .into_bytes();
        if i % 100 == 7 {
            d.extend_from_slice(b" \xff\xfe raw");
        }
        sock.send_to(&d, &to).unwrap();
        *expected.entry(d).or_insert(0) += 1;
        sent += 1;
        if i % 200 == 199 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    for g in [
        &b"garbage"[..],
        b"\xff\x00\x01",
        b"<999>bad pri",
        b"1.2.3.4 - - bare line",
    ] {
        sock.send_to(g, &to).unwrap();
        *expected.entry(g.to_vec()).or_insert(0) += 1;
        sent += 1;
    }
    for _ in 0..3 {
        sock.send_to(b"", &to).unwrap();
        sock.send_to(&[b'x'; 2000], &to).unwrap();
        sent += 2;
    }
    wait_records(&data, expected.values().sum());
    s.signal("TERM");
    let (code, log) = s.wait();
    assert_eq!(code, Some(0), "{log}");
    let (received, appended, dropped, kernel, reasons) = totals(&log);
    assert_eq!(received + kernel, sent, "{log}");
    assert_eq!(received, appended + dropped, "{log}");
    assert!(
        reasons.contains("empty=") && reasons.contains("oversize="),
        "{reasons}"
    );
    let got = replayed(&data);
    let missing: usize = expected
        .iter()
        .map(|(k, n)| n.saturating_sub(*got.get(k).unwrap_or(&0)))
        .sum();
    assert_eq!(
        missing as u64, kernel,
        "lines missing beyond the kernel's counted drops"
    );
    assert!(
        got.keys().all(|k| expected.contains_key(k)),
        "extra lines in the log"
    );
}

#[test]
fn tcp_framings_and_many_connections() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::builder()
        .data(&data)
        .shards(2)
        .config(CONFIG)
        .start();
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    let addr = format!("127.0.0.1:{}", s.tcp);
    let mut expected: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut want = |l: &[u8]| *expected.entry(l.to_vec()).or_insert(0) += 1;

    // Lines, LF and CRLF, with an oversize line in between and a partial line at EOF.
    let mut c = TcpStream::connect(&addr).unwrap();
    c.write_all(b"line-a\nline-b\r\n").unwrap();
    c.write_all(&[b'o'; 2000]).unwrap();
    c.write_all(b"\nline-c\n127.0.0.1 - - [22/Nov/2026] \"GET /p.gif\" 200\npartial-at-eof")
        .unwrap();
    drop(c);
    for l in [
        &b"line-a"[..],
        b"line-b",
        b"line-c",
        b"127.0.0.1 - - [22/Nov/2026] \"GET /p.gif\" 200",
    ] {
        want(l);
    }

    // Octet counting as rsyslog sends it, with a trailing LF, one byte per write.
    let msg = b"<190>Nov 22 01:40:00 pixel: {\"url\":\"a\nb\"}";
    let mut stream = format!("{} ", msg.len()).into_bytes();
    stream.extend_from_slice(msg);
    stream.extend_from_slice(b"\n");
    stream.extend_from_slice(b"5 hello");
    let mut c = TcpStream::connect(&addr).unwrap();
    c.set_nodelay(true).unwrap();
    for b in &stream {
        c.write_all(std::slice::from_ref(b)).unwrap();
    }
    drop(c);
    want(msg);
    want(b"hello");

    // 1,000 connections open at once, one line each.
    let mut conns: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let l = format!("conn-{i}");
        c.write_all(format!("{l}\n").as_bytes()).unwrap();
        want(l.as_bytes());
    }
    drop(conns);
    wait_records(&data, expected.values().sum());
    s.signal("TERM");
    let (code, log) = s.wait();
    assert_eq!(code, Some(0), "{log}");
    let (received, appended, dropped, _, reasons) = totals(&log);
    assert_eq!(received, appended + dropped, "{log}");
    assert_eq!(appended as usize, expected.values().sum::<usize>(), "{log}");
    assert!(
        reasons.contains("oversize=1") && reasons.contains("partial_frame=1"),
        "{reasons}"
    );
    assert_eq!(replayed(&data), expected);
}
