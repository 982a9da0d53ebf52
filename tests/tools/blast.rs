//! `pixeld blast` against a real `pixeld serve` (two shards, free loopback ports): every
//! transport's JSON report accounts for every event it sent (TCP and HTTP: all appended; UDP:
//! appended + dropped + kernel drops = sent), the aggregates count what the generator made
//! (views, hits and engaged seconds computed here from `--out` of the same seed, read with
//! serde_json, not with pixeld's parser), and the log holds exactly those lines byte for byte.
//! Also: `--out` is deterministic for a seed, and a refused target is one clear error.
//!
//! Counts are small (≤ 20 000 per transport) so the file runs in seconds; UDP is paced
//! (20 000/s) so that loss is unlikely, and where the kernel did drop datagrams the test
//! still requires exact accounting but compares the aggregates as an upper bound.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::common::{self, http, pixeld_bin, Server};

fn blast(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(pixeld_bin())
        .arg("blast")
        .args(args)
        .arg("--json")
        .output()
        .expect("run pixeld blast");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v, stderr)
}

/// The lines `--out` writes for these generator arguments.
fn out_lines(dir: &Path, name: &str, args: &[&str]) -> Vec<Vec<u8>> {
    let f = dir.join(name);
    let st = Command::new(pixeld_bin())
        .arg("blast")
        .args(args)
        .arg("--out")
        .arg(&f)
        .output()
        .expect("run pixeld blast --out");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let bytes = std::fs::read(&f).unwrap();
    assert!(bytes.ends_with(b"\n"));
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Views, hits and engaged seconds of JSON lines (with or without a syslog header).
fn totals(lines: &[Vec<u8>]) -> (u64, u64, u64) {
    let (mut views, mut hits, mut engaged) = (0, 0, 0);
    for l in lines {
        let json = &l[l.iter().position(|&b| b == b'{').unwrap()..];
        let v: Value = serde_json::from_slice(json).unwrap();
        hits += 1;
        match v["action"].as_str().unwrap() {
            "pageview" => views += 1,
            "heartbeat" => engaged += v["inc"].as_u64().unwrap(),
            a => panic!("unexpected action {a}"),
        }
    }
    (views, hits, engaged)
}

#[test]
fn out_is_deterministic_for_a_seed() {
    let dir = common::tempdir();
    // A whole minute near now (the output is a pure function of seed and start; the date only
    // shows in the syslog header checked below).
    let start_ms = common::data_ms() / 60_000 * 60_000;
    let start = start_ms.to_string();
    let args = [
        "--count", "3000", "--seed", "7", "--start", &start, "--late", "0.1",
    ];
    let a = out_lines(dir.path(), "a", &args);
    let b = out_lines(dir.path(), "b", &args);
    assert_eq!(a.len(), 3000);
    assert_eq!(a, b, "same seed, same lines");
    let mut other = args;
    other[3] = "8";
    assert_ne!(
        a,
        out_lines(dir.path(), "c", &other),
        "another seed, other lines"
    );
    for (i, l) in a.iter().enumerate() {
        let v: Value = serde_json::from_slice(l).unwrap();
        assert_eq!(v["seq"], i as u64 + 1);
    }
    let mut with_header = args.to_vec();
    with_header.extend(["--header", "syslog"]);
    let h = out_lines(dir.path(), "d", &with_header);
    let start_utc = time::OffsetDateTime::from_unix_timestamp((start_ms / 1000) as i64).unwrap();
    let stamp = start_utc
        .format(time::macros::format_description!(
            "[month repr:short] [day padding:space] [hour]:[minute]:[second]"
        ))
        .unwrap();
    let want = format!("<190>{stamp} pixel: {{");
    assert!(
        h[0].starts_with(want.as_bytes()),
        "{want:?} vs {:?}",
        String::from_utf8_lossy(&h[0])
    );
    assert!(
        h.iter().zip(&a).all(|(h, a)| h.ends_with(a)),
        "same events behind the header"
    );
}

#[test]
fn every_transport_accounts_for_every_event_and_aggregates_what_was_generated() {
    let dir = common::tempdir();
    let data = dir.path().join("data");
    let mut s = Server::start(&data, &["--shards", "2"]);
    s.wait_for("ready").expect("server ready");
    let http_addr = format!("127.0.0.1:{}", s.http);
    let tcp_addr = format!("127.0.0.1:{}", s.tcp);
    let udp_addr = format!("127.0.0.1:{}", s.udp);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let start = (now_ms - 10 * 60_000).to_string();

    // (transport, target, count, seed, extra arguments, header the lines carry)
    type Run<'a> = (&'a str, &'a str, u64, &'a str, &'a [&'a str], &'a str);
    let runs: [Run; 4] = [
        (
            "tcp",
            &tcp_addr,
            20_000,
            "11",
            &["--connections", "2"],
            "syslog",
        ),
        (
            "tcp",
            &tcp_addr,
            5_000,
            "12",
            &["--framing", "octet", "--late", "0.2"],
            "syslog",
        ),
        (
            "udp",
            &udp_addr,
            10_000,
            "13",
            &["--rate", "20000"],
            "syslog",
        ),
        (
            "http",
            &http_addr,
            10_000,
            "14",
            &["--connections", "2", "--batch", "700"],
            "none",
        ),
    ];
    let mut expected_lines: Vec<Vec<u8>> = Vec::new();
    let mut lossy = false;
    for (transport, target, count, seed, extra, header) in runs {
        let count_s = count.to_string();
        let gen = ["--count", &count_s, "--seed", seed, "--start", &start];
        let mut args = vec![
            "--transport",
            transport,
            "--target",
            target,
            "--http",
            &http_addr,
        ];
        args.extend(gen);
        args.extend(extra);
        let (code, r, err) = blast(&args);
        assert_eq!(code, 0, "{transport}: {r} {err}");
        assert_eq!(r["transport"], transport);
        assert_eq!(r["sent"], count, "{r}");
        let p = &r["pixeld"];
        assert_eq!(p["settled"], true, "{r}");
        assert_eq!(p["unaccounted"], 0, "{r}");
        let dropped: u64 = p["dropped"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        let kernel = p["kernel_udp_drops"].as_u64().unwrap();
        let appended = p["appended"].as_u64().unwrap();
        assert_eq!(appended + dropped + kernel, count, "{r}");
        assert_eq!(p["received"].as_u64().unwrap(), appended + dropped, "{r}");
        if transport == "udp" {
            assert!(r["probes_seen"].as_u64().unwrap() >= 1, "{r}");
            lossy = appended < count;
        } else {
            assert_eq!(appended, count, "{transport}: nothing lost: {r}");
        }
        // The same lines, as --out writes them (extra generator flags included).
        let mut out_args = gen.to_vec();
        out_args.extend(["--header", header]);
        if extra.contains(&"--late") {
            out_args.extend(["--late", "0.2"]);
        }
        if extra.contains(&"--rate") {
            out_args.extend(["--event-rate", "20000"]);
        }
        expected_lines.extend(out_lines(dir.path(), &format!("out-{seed}"), &out_args));
    }

    // Aggregates: summary over the last day counts what the generator made.
    let (views, hits, engaged) = totals(&expected_lines);
    let (st, _, body) = http(s.http, "GET", "/v1/summary?from=-24h&to=now", &[], b"");
    assert_eq!(st, 200);
    let sum: Value = serde_json::from_slice(&body).unwrap();
    let got = |k: &str| sum[k].as_u64().unwrap();
    if lossy {
        assert!(got("views") <= views && got("hits") <= hits && got("engaged_seconds") <= engaged);
    } else {
        assert_eq!(
            (got("views"), got("hits"), got("engaged_seconds")),
            (views, hits, engaged),
            "{sum}"
        );
    }
    assert!(
        sum["top_urls"][0]["key"]
            .as_str()
            .unwrap()
            .starts_with("https://www.example.com/"),
        "{sum}"
    );

    // The log holds exactly the generated lines.
    s.signal("TERM");
    let (code, _) = s.wait();
    assert_eq!(code, Some(0));
    let replay = Command::new(pixeld_bin())
        .args(["replay", "--format", "raw", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(replay.status.success());
    let mut logged: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for l in replay
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
    {
        *logged.entry(l.to_vec()).or_default() += 1;
    }
    let mut want: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for l in expected_lines {
        *want.entry(l).or_default() += 1;
    }
    if lossy {
        assert!(logged
            .iter()
            .all(|(l, n)| want.get(l).is_some_and(|w| n <= w)));
    } else {
        assert_eq!(logged.len(), want.len());
        assert!(logged == want, "the log holds exactly the generated lines");
    }
}

#[test]
fn nothing_listening_is_a_clear_error() {
    let port = common::free_tcp_port();
    let (code, _, err) = blast(&[
        "--transport",
        "tcp",
        "--target",
        &format!("127.0.0.1:{port}"),
        "--http",
        &format!("127.0.0.1:{port}"),
        "--count",
        "10",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read pixeld's metrics") && err.contains("--no-metrics"),
        "{err}"
    );
    let (code, _, err) = blast(&[
        "--transport",
        "tcp",
        "--target",
        &format!("127.0.0.1:{port}"),
        "--no-metrics",
        "--count",
        "10",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect to"), "{err}");
}
