//! `pixeld tail` against a real `pixeld serve`: a named consumer killed with -9 resumes from
//! its committed offsets (no gap, re-reading only what followed the last commit) and commits
//! everything it printed when stopped with SIGTERM; raw output is byte-exact for records that
//! are not UTF-8; `--from-end` prints only what becomes durable after it starts.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::log_http::*;
use crate::common::{self, pixeld_bin, Server};

/// A running `pixeld tail`, its stdout split into lines (LF removed) on a channel.
struct Tail {
    child: Child,
    lines: mpsc::Receiver<Vec<u8>>,
}

impl Tail {
    fn start(port: u16, args: &[&str]) -> Tail {
        let mut child = Command::new(pixeld_bin())
            .args(["tail", "--http", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut l = Vec::new();
            match out.read_until(b'\n', &mut l) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    l.pop();
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            }
        });
        Tail { child, lines }
    }

    /// The next `n` lines (each within 30 s).
    fn take(&self, n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                self.lines
                    .recv_timeout(Duration::from_secs(30))
                    .unwrap_or_else(|_| panic!("tail printed only {i} of {n} lines"))
            })
            .collect()
    }

    fn signal(&self, sig: &str) {
        common::signal(&self.child, sig);
    }

    /// Waits for the exit; returns the exit code and whatever else was printed.
    fn wait(mut self) -> (Option<i32>, Vec<Vec<u8>>) {
        let code = self.child.wait().unwrap().code();
        (code, self.lines.iter().collect())
    }
}

impl Drop for Tail {
    /// A failed test does not leave its `tail` running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ndjson(lines: &[Vec<u8>]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

/// A consumer's committed offsets (0 where none, and before its first commit).
fn committed(port: u16, name: &str) -> Vec<u64> {
    let (st, _, v) = get_json(port, &format!("/v1/consumers/{name}"));
    if st == 404 {
        return vec![0; 2];
    }
    assert_eq!(st, 200, "{v}");
    v["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["committed_offset"].as_u64().unwrap_or(0))
        .collect()
}

#[test]
fn a_named_consumer_resumes_where_it_committed() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::start(&data, &["--shards", "2"]);
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    // Batches until every shard has records (a batch goes to the shard that accepts its
    // connection), so that the consumer commits on every shard.
    let mut n = 0;
    while n < 100 || next_offsets(s.http).contains(&0) {
        assert!(n < 2000, "posts never reached every shard");
        post(s.http, &json_lines(&format!("a{n}"), 0..20, 90));
        n += 20;
    }
    let ends = wait_durable_total(s.http, n);

    // First run: everything from the beginning, commits every 7 records; then kill -9.
    let t = Tail::start(
        s.http,
        &[
            "--consumer",
            "job",
            "--from-beginning",
            "--commit-every",
            "7",
            "--format",
            "ndjson",
        ],
    );
    let first = ndjson(&t.take(n as usize));
    let mut per_shard: Vec<Vec<u64>> = vec![Vec::new(); 2];
    for r in &first {
        per_shard[r["shard"].as_u64().unwrap() as usize].push(r["offset"].as_u64().unwrap());
    }
    for (sh, offs) in per_shard.iter().enumerate() {
        assert_eq!(
            *offs,
            (0..ends[sh]).collect::<Vec<_>>(),
            "shard {sh} in order"
        );
    }
    // Every 7 records it commits (after printing): once each shard's commit is within 7 of
    // its end, crash it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let c = loop {
        let c = committed(s.http, "job");
        if (0..2).all(|sh| c[sh] <= ends[sh] && ends[sh] - c[sh] < 7) {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "commits every 7: {c:?} {ends:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    t.signal("KILL");
    let _ = t.wait();
    assert_eq!(committed(s.http, "job"), c, "nothing more after the kill");

    // More records, then a restart: it resumes at the committed offsets (not at the end,
    // although --from-end is given: a commit wins), re-reading only what followed them.
    for b in 5..8 {
        post(s.http, &json_lines(&format!("a{b}"), 0..20, 90));
    }
    let ends2 = wait_durable_total(s.http, n + 60);
    let expect: u64 = (0..2).map(|sh| ends2[sh] - c[sh]).sum();
    let t = Tail::start(
        s.http,
        &["--consumer", "job", "--from-end", "--format", "ndjson"],
    );
    let second = ndjson(&t.take(expect as usize));
    let mut per_shard: Vec<Vec<u64>> = vec![Vec::new(); 2];
    for r in &second {
        per_shard[r["shard"].as_u64().unwrap() as usize].push(r["offset"].as_u64().unwrap());
    }
    for (sh, offs) in per_shard.iter().enumerate() {
        assert_eq!(
            *offs,
            (c[sh]..ends2[sh]).collect::<Vec<_>>(),
            "shard {sh}: no gap, no more"
        );
    }
    // SIGTERM: it exits 0, printed nothing more, and committed everything it printed.
    t.signal("TERM");
    let (code, rest) = t.wait();
    assert_eq!(code, Some(0));
    assert!(rest.is_empty(), "{} extra lines", rest.len());
    assert_eq!(committed(s.http, "job"), ends2);
    s.signal("TERM");
    assert_eq!(s.wait().0, Some(0));
}

#[test]
fn raw_output_is_byte_exact_and_from_end_prints_only_new_records() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::start(&data, &["--shards", "2"]);
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    let mut sent: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    let json = json_lines("r", 0..30, 70);
    for l in &json {
        *sent.entry(l.as_bytes().to_vec()).or_default() += 1;
    }
    post(s.http, &json);
    let raw: Vec<Vec<u8>> = (0..10u8)
        .map(|i| vec![0xff, b'A' + i, 0xfe, 0x00, 0xc3, 0x28, b'\t', 0x80])
        .collect();
    for r in &raw {
        *sent.entry(r.clone()).or_default() += 1;
    }
    send_tcp(s.tcp, &raw);
    wait_durable_total(s.http, 40);

    let t = Tail::start(s.http, &["--from-beginning", "--format", "raw"]);
    let mut got: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    for l in t.take(40) {
        *got.entry(l).or_default() += 1;
    }
    assert_eq!(got, sent, "raw output is the records' bytes, one per line");
    t.signal("INT");
    let (code, rest) = t.wait();
    assert_eq!((code, rest.len()), (Some(0), 0));

    // --from-end: what was there before is not printed, what comes after is.
    let t = Tail::start(s.http, &["--format", "raw"]);
    // When it has read the shards' ends is not observable from outside: post new lines
    // one at a time until one is printed, then check that only new lines ever were.
    let mut new: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    let mut printed = Vec::new();
    for i in 0..100u64 {
        let l = json_lines("new", i..i + 1, 70);
        *new.entry(l[0].as_bytes().to_vec()).or_default() += 1;
        post(s.http, &l);
        if let Ok(line) = t.lines.recv_timeout(Duration::from_millis(100)) {
            printed.push(line);
            break;
        }
    }
    assert!(!printed.is_empty(), "tail --from-end printed nothing");
    std::thread::sleep(Duration::from_millis(300));
    t.signal("TERM");
    let (code, rest) = t.wait();
    assert_eq!(code, Some(0));
    printed.extend(rest);
    for l in &printed {
        assert!(
            new.contains_key(l),
            "only new records: {}",
            String::from_utf8_lossy(l)
        );
    }
    s.signal("TERM");
    assert_eq!(s.wait().0, Some(0));
}
