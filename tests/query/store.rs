//! The durable aggregate store (docs/aggregate-store.md) against a real `pixeld serve`:
//! - answers survive a restart from checkpoints, a damaged newest checkpoint (reported,
//!   counted, an older link loaded and the log replayed after it), and log retention deleting
//!   the segments the answers came from; `pixeld check --aggregates` then still agrees;
//! - ingest runs from the first moment of a start while the aggregates catch up on a large
//!   log: every UDP datagram sent right after `ready` is appended and aggregated, and every
//!   answer in between says whether it is complete;
//! - the shard count can grow between runs (the store is rebuilt from every log, said on
//!   stderr, answers unchanged) and is refused, naming the fix, when it would shrink below a
//!   log that holds records.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{self, Server};

/// Small uncompressed segments (so that 1 MiB of retention deletes some) and checkpoints
/// every 200 ms.
const CONFIG: &str = "[log]\ncompression = \"none\"\nsegment_max_bytes = \"64KiB\"\n\
                      [agg]\ncheckpoint_interval = \"200ms\"\n";

fn start(data: &Path, config: &str) -> Server {
    start_with(data, config, 2)
}

fn start_with(data: &Path, config: &str, shards: usize) -> Server {
    let mut s = Server::builder()
        .data(data)
        .shards(shards)
        .config(config)
        .start();
    assert!(s.wait_for("pixeld: ready").is_some(), "{:?}", s.seen);
    assert!(
        s.wait_for("pixeld: aggregates complete").is_some(),
        "{:?}",
        s.seen
    );
    s
}

fn stop(s: Server) -> String {
    s.signal("TERM");
    let (code, log) = s.wait();
    assert_eq!(code, Some(0), "{log}");
    log
}

/// The answers compared across restarts: over a fixed range (epoch seconds) from three hours
/// before `t0` (a minute) to ten minutes after it.
fn answers(s: &Server, t0: i64) -> Vec<String> {
    let (from, to) = ((t0 - 180) * 60, (t0 + 10) * 60);
    [
        format!("/v1/summary?from={from}&to={to}"),
        format!("/v1/timeseries?from={from}&to={to}&step=1h"),
        format!("/v1/timeseries?from={from}&to={to}&step=1m"),
        format!("/v1/top?dim=url&from={from}&to={to}&limit=500"),
        format!("/v1/top?dim=site&from={from}&to={to}"),
    ]
    .iter()
    .map(|q| {
        let (st, _, body) = common::http(s.http, "GET", q, &[], b"");
        assert_eq!(st, 200, "{q}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["complete"], Value::Bool(true), "{q}");
        String::from_utf8(body).unwrap()
    })
    .collect()
}

/// `n` generated hits from `seed`, stamped over the last two hours.
fn hits(seed: u64, n: usize) -> Vec<u8> {
    let start = (pixeld::route::now_minute() as u64 - 120) * 60_000;
    let mut g = pixeld::tools::gen::HitGenerator::new(seed, start);
    let mut out = Vec::new();
    let mut l = Vec::new();
    for _ in 0..n {
        g.next_line(&mut l);
        out.extend_from_slice(&l);
        out.push(b'\n');
    }
    out
}

fn post_all(s: &Server, body: &[u8]) {
    for chunk in body
        .split_inclusive(|b| *b == b'\n')
        .collect::<Vec<_>>()
        .chunks(500)
    {
        let body: Vec<u8> = chunk.concat();
        assert_eq!(common::try_post_events(s.http, &body), Some(200));
    }
}

fn newest_checkpoint(data: &Path, owner: usize) -> std::path::PathBuf {
    let dir = data.join("agg").join(format!("shard-{owner:03}"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ckpt"))
        .collect();
    files.sort();
    files.pop().expect("a checkpoint")
}

#[test]
fn answers_survive_restarts_damaged_checkpoints_and_log_retention() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let t0 = pixeld::route::now_minute();
    let s = start(&data, CONFIG);
    // Two rounds, so that the chain has a base and deltas.
    post_all(&s, &hits(1, 6000));
    std::thread::sleep(Duration::from_millis(600));
    post_all(&s, &hits(2, 6000));
    std::thread::sleep(Duration::from_millis(600));
    let before = answers(&s, t0);
    let m = common::metrics(s.http);
    assert!(common::metric_sum(&m, "pixeld_agg_checkpoints_total") >= 2);
    stop(s);

    // A flipped byte in owner 0's newest checkpoint: reported, counted, an older link loaded
    // and the log replayed after it.
    let newest = newest_checkpoint(&data, 0);
    let mut bytes = std::fs::read(&newest).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&newest, &bytes).unwrap();
    let mut s = start(&data, CONFIG);
    assert!(
        s.seen.iter().any(|l| l.contains("CRC mismatch")),
        "{:?}",
        s.seen
    );
    let m = common::metrics(s.http);
    assert!(common::metric_sum(&m, "pixeld_agg_store_problems_total") >= 1);
    assert!(
        answers(&s, t0) == before,
        "after falling back to an older checkpoint"
    );
    s.seen.clear();
    stop(s);

    // Retention deletes most of the logs at the next start; the answers stay.
    let retained = CONFIG.replace("[agg]", "retention_bytes = \"1MiB\"\n[agg]");
    let s = start(&data, &retained);
    std::thread::sleep(Duration::from_millis(300));
    let m = common::metrics(s.http);
    assert!(
        common::metric_sum(&m, "pixeld_log_segments_deleted_total") > 0,
        "retention deleted nothing: {m:?}"
    );
    assert!(answers(&s, t0) == before, "after retention");
    stop(s);
    let s = start(&data, &retained);
    assert!(
        answers(&s, t0) == before,
        "restarted without the deleted segments"
    );
    stop(s);
    let (ok, report) = common::check_aggregates(&data, Some(&retained));
    assert!(ok, "{report}");
}

#[test]
fn ingest_runs_while_the_aggregates_catch_up() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    // A log of 200 000 hits and no store: the start replays all of it.
    let src = tmp.path().join("hits");
    std::fs::write(&src, hits(3, 200_000)).unwrap();
    let st = Command::new(common::pixeld_bin())
        .args(["import", "--shard", "0", "--data-dir"])
        .arg(&data)
        .arg(&src)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let mut s = Server::builder().data(&data).shards(2).start();
    assert!(s.wait_for("pixeld: ready").is_some(), "{:?}", s.seen);
    // From the first moment: datagrams go in, and answers say how complete they are.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp = hits(4, 2000);
    let mut answers = Vec::new();
    for (i, line) in udp
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        sock.send_to(line, ("127.0.0.1", s.udp)).unwrap();
        if i % 200 == 0 {
            let (st, _, body) =
                common::http(s.http, "GET", "/v1/summary?from=-3h&to=now", &[], b"");
            assert_eq!(st, 200);
            answers.push(serde_json::from_slice::<Value>(&body).unwrap());
        }
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for a in &answers {
        let left = a["catchup_records"].as_u64().unwrap();
        match a["complete"].as_bool().unwrap() {
            true => assert_eq!(left, 0, "{a}"),
            false => assert!(a["views"].as_u64().unwrap() <= 202_000, "{a}"),
        }
    }
    assert!(
        s.wait_for("pixeld: aggregates complete").is_some(),
        "{:?}",
        s.seen
    );
    // Every datagram appended and aggregated, beside the whole log.
    let mut hits_total = 0;
    for _ in 0..200 {
        let (_, _, body) = common::http(s.http, "GET", "/v1/summary?from=-3h&to=now", &[], b"");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["complete"], Value::Bool(true));
        hits_total = v["hits"].as_u64().unwrap();
        if hits_total == 202_000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = common::metrics(s.http);
    assert_eq!(
        common::metric_sum(&m, "pixeld_udp_kernel_drops_total"),
        0,
        "kernel drops make this test meaningless"
    );
    assert_eq!(hits_total, 202_000, "log + UDP hits aggregated");
    assert_eq!(
        common::metric_sum(&m, "pixeld_agg_rebuilt_records_total"),
        200_000
    );
    stop(s);
}

/// Answers without the uniques, which a different shard count estimates differently (each
/// owner's sketch covers its slice of the visitors).
fn without_uniques(answers: &[String]) -> Vec<Value> {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("uniques");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    answers
        .iter()
        .map(|a| {
            let mut v: Value = serde_json::from_str(a).unwrap();
            strip(&mut v);
            v
        })
        .collect()
}

#[test]
fn shard_count_grows_with_a_rebuild_and_refuses_to_shrink() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let t0 = pixeld::route::now_minute();
    let s = start_with(&data, CONFIG, 2);
    post_all(&s, &hits(7, 4000));
    std::thread::sleep(Duration::from_millis(600));
    let two = answers(&s, t0);
    stop(s);

    // 2 → 3: the checkpoints were written for 2 shards; the store is rebuilt from the logs.
    let s = start_with(&data, CONFIG, 3);
    assert!(
        s.seen
            .iter()
            .any(|l| l.contains("written by a run with 2 shards")),
        "{:?}",
        s.seen
    );
    let three = answers(&s, t0);
    assert_eq!(without_uniques(&three), without_uniques(&two));
    stop(s);
    let (ok, report) = common::check_aggregates(&data, Some(CONFIG));
    assert!(ok, "{report}");

    // 3 → 1: shard 1's log holds records (shard 2's does not): refused, naming the fix.
    let s = Server::builder()
        .data(&data)
        .shards(1)
        .config(CONFIG)
        .start();
    let (code, log) = s.wait();
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("holds the logs of shards [1]") && log.contains("`shards = 2` or more"),
        "{log}"
    );

    // 3 → 2 is fine (shard 2 never appended): answers as with 2 and 3 shards.
    let s = start_with(&data, CONFIG, 2);
    assert!(
        s.seen
            .iter()
            .any(|l| l.contains("holds no records; it is left alone")),
        "{:?}",
        s.seen
    );
    assert_eq!(without_uniques(&answers(&s, t0)), without_uniques(&two));
    stop(s);
}
