//! The durable aggregate store (docs/aggregate-store.md) against a real `pixeld serve`:
//! - answers survive a restart from checkpoints, a damaged newest checkpoint (reported,
//!   counted, an older link loaded and the log replayed after it), and log retention deleting
//!   the segments the answers came from; `pixeld check --aggregates` then still agrees;
//! - ingest runs from the first moment of a start while the aggregates catch up on a large
//!   log: every UDP datagram sent right after `ready` is appended and aggregated, and every
//!   answer in between says whether it is complete;
//! - `pixeld rebuild-aggregates` recomputes the store under a changed config (the whole range
//!   the logs hold, or `--from`/`--to`), keeps the rest, and the next start loads it;
//! - closed hours and days are sealed into mapped files and answer exactly what memory
//!   answered (a server that never seals, fed the same hits, is the reference), late events
//!   for a sealed day included, across a restart, `check --aggregates`, damaged sealed files
//!   (an hour recomputed from the log, a day from its hours) and log retention; days older than
//!   the hour window are answered from the day tier;
//! - a busy minute folded into its hour in slices answers the same while it folds, once
//!   folded, after a clean restart and after a kill -9 during the fold;
//! - the shard count can change between runs, 2 → 3 → 1 → 3: the store is re-partitioned
//!   (sealed files included) and every answer stays the same, uniques included; a shrink below
//!   a log that holds records is refused, naming the fix, until that log is moved out (its
//!   records stay in the answers), and a log moved back is not counted twice.

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
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
    s.wait_complete();
    s
}

fn stop(s: Server) -> String {
    s.signal("TERM");
    let (code, log) = s.wait();
    assert_eq!(code, Some(0), "{log}");
    log
}

/// The end of the range every answer of a test started at minute `t0` asks for: the last
/// minute a query may reach at `t0` (`agg.future_minutes`, 5 by default, and the current
/// one), so that the server never cuts it short as the clock turns — an answer read in a
/// later minute states the same range.
fn answers_to(t0: i64) -> i64 {
    (t0 + 6) * 60
}

/// The answers compared across restarts: over a fixed range (epoch seconds) from three hours
/// before `t0` (a minute) to [`answers_to`].
fn answers(s: &Server, t0: i64) -> Vec<String> {
    let (from, to) = ((t0 - 180) * 60, answers_to(t0));
    [
        format!("/v1/summary?from={from}&to={to}"),
        format!("/v1/timeseries?from={from}&to={to}&step=1h"),
        format!("/v1/timeseries?from={from}&to={to}&step=1m"),
        format!("/v1/top?dim=url&from={from}&to={to}&limit=500"),
        format!("/v1/top?dim=site&from={from}&to={to}"),
        format!("/v1/top?dim=channel&from={from}&to={to}&sort=visitors"),
        format!("/v1/top?dim=device&from={from}&to={to}&filter=channel:search"),
        format!("/v1/top?dim=source&from={from}&to={to}&limit=100&bots=include"),
        format!("/v1/top?dim=entry_page&from={from}&to={to}&limit=500"),
        format!("/v1/top?dim=exit_page&from={from}&to={to}&limit=500"),
    ]
    .iter()
    .map(|q| {
        let (st, _, body) = common::http(s.http, "GET", q, &[], b"");
        assert_eq!(st, 200, "{q}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["complete"], Value::Bool(true), "{q}");
        if q.contains("filter=") || q.contains("dim=channel") {
            assert!(v["total_rows"].as_u64() > Some(0), "{q}: no rows");
        }
        String::from_utf8(body).unwrap()
    })
    .collect()
}

/// `n` generated hits from `seed`, stamped from two hours ago on (1 ms apart by default).
fn hits(seed: u64, n: usize) -> Vec<u8> {
    hits_with(seed, n, pixeld::tools::gen::GenConfig::default())
}

fn hits_with(seed: u64, n: usize, cfg: pixeld::tools::gen::GenConfig) -> Vec<u8> {
    let start = (pixeld::route::now_minute() as u64 - 120) * 60_000;
    hits_from(seed, n, start, cfg)
}

/// `n` generated hits from `seed`, stamped from `start` (ms since the epoch) on.
fn hits_from(seed: u64, n: usize, start: u64, cfg: pixeld::tools::gen::GenConfig) -> Vec<u8> {
    let mut g = pixeld::tools::gen::HitGenerator::with_config(seed, start, cfg);
    let mut out = Vec::new();
    let mut l = Vec::new();
    for _ in 0..n {
        g.next_line(&mut l);
        out.extend_from_slice(&l);
        out.push(b'\n');
    }
    out
}

/// `body`'s lines in batches of `n` lines, each batch one POST body.
fn batches(body: &[u8], n: usize) -> Vec<Vec<u8>> {
    body.split_inclusive(|b| *b == b'\n')
        .collect::<Vec<_>>()
        .chunks(n)
        .map(|c| c.concat())
        .collect()
}

fn post_all(s: &Server, body: &[u8]) {
    for batch in batches(body, 500) {
        assert_eq!(common::try_post_events(s.http, &batch), Some(200));
    }
}

/// `body` to two servers, batch by batch, so that each line reaches both within
/// milliseconds: whether a hit is too late for visits depends on its receive time, and two
/// servers that received a line seconds apart could judge it differently.
fn post_both(a: &Server, b: &Server, body: &[u8]) {
    for batch in batches(body, 500) {
        assert_eq!(common::try_post_events(a.http, &batch), Some(200));
        assert_eq!(common::try_post_events(b.http, &batch), Some(200));
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
    let checkpoints = |s: &Server, n: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while common::metric_sum(&common::metrics(s.http), "pixeld_agg_checkpoints_total") < n {
            assert!(
                std::time::Instant::now() < deadline,
                "fewer than {n} checkpoints"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    post_all(&s, &hits(1, 6000));
    common::wait_settled(s.http, "posted");
    checkpoints(&s, 1);
    post_all(&s, &hits(2, 6000));
    common::wait_settled(s.http, "posted");
    checkpoints(&s, 2);
    // The hits' minute ended long ago: the ticker folds it into its hour, and the answers
    // below read the hour.
    common::wait_until("the hits' minute folded into its hour", || {
        common::metric_sum(&common::metrics(s.http), "pixeld_agg_minutes_folded_total") > 0
    });
    let before = answers(&s, t0);
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
    common::wait_until("retention deletes segments", || {
        common::metric_sum(
            &common::metrics(s.http),
            "pixeld_log_segments_deleted_total",
        ) > 0
    });
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
    common::import_file(&data, 0, &src);
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

/// Every log directory of `data` moved under `to` (shards `from..`), by name.
fn move_logs(data: &Path, to: &Path, from: usize) -> Vec<String> {
    std::fs::create_dir_all(to).unwrap();
    let mut moved = Vec::new();
    for shard in from..8 {
        let name = format!("shard-{shard:03}");
        if data.join(&name).exists() {
            std::fs::rename(data.join(&name), to.join(&name)).unwrap();
            moved.push(name);
        }
    }
    moved
}

#[test]
fn shard_count_changes_keep_the_store_2_3_1_3() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let t0 = pixeld::route::now_minute();
    // Four days up to now, sealed hours and days included; few enough visitors that every
    // uniques cell stays exact, so that the answers must equal the reference's to the unit.
    let gen = |ms_per_event: f64| pixeld::tools::gen::GenConfig {
        visitors: 800,
        urls_per_site: 60,
        late_share: 0.1,
        late_max_ms: 6 * 3_600_000,
        ms_per_event,
        ..pixeld::tools::gen::GenConfig::default()
    };
    let start = ((t0.div_euclid(1440) - 4) * 1440) as u64 * 60_000;
    let span = (t0 as u64 * 60_000 - start) as f64;
    // The reference keeps 2 shards throughout and is fed the same hits.
    let reference = start_with(&tmp.path().join("reference"), TIERS, 2);
    let s = start_with(&data, TIERS, 2);
    let body = hits_from(5, 8000, start, gen(span / 8000.0));
    post_all(&s, &body);
    post_all(&reference, &body);
    // The kernel picks the shard of each connection (SO_REUSEPORT): post more, one line a
    // connection, until shard 1's log holds records too.
    let more = hits(8, 200);
    let mut lines = more.split_inclusive(|b| *b == b'\n');
    while common::log_http::next_offsets(s.http)[1] == 0 {
        let line = lines.next().expect("200 connections all landed on shard 0");
        assert_eq!(common::try_post_events(s.http, line), Some(200));
        assert_eq!(common::try_post_events(reference.http, line), Some(200));
    }
    let sealed_by = std::time::Instant::now() + Duration::from_secs(20);
    while common::metric_sum(&common::metrics(s.http), "pixeld_agg_sealed_files") < 10 {
        assert!(std::time::Instant::now() < sealed_by, "nothing sealed");
        std::thread::sleep(Duration::from_millis(100));
    }
    common::wait_settled(s.http, "sealed");
    common::wait_settled(reference.http, "reference");
    let two = tier_answers(&s, t0);
    same_answers(
        &two,
        &tier_answers(&reference, t0),
        "2 shards, beside the reference",
    );
    stop(s);
    // After each change, hits of the same visitors in the last hours (buckets that span the
    // change): counted once, as by the reference, not once per owner.
    let recent = |seed: u64| {
        let from = (pixeld::route::now_minute() as u64 - 150) * 60_000;
        hits_from(seed, 1500, from, gen(120.0 * 60_000.0 / 1500.0))
    };
    let same = |s: &Server, what: &str| {
        common::wait_settled(s.http, what);
        common::wait_settled(reference.http, what);
        let (got, want) = (tier_answers(s, t0), tier_answers(&reference, t0));
        let diff: Vec<String> = got
            .iter()
            .zip(&want)
            .filter(|(g, w)| g != w)
            .map(|(g, w)| format!("got  {g}\nwant {w}"))
            .collect();
        assert!(
            diff.is_empty(),
            "answers differ from the reference's {what}:\n{}",
            diff.join("\n")
        );
    };

    // 2 → 3: re-partitioned, not rebuilt; every answer the same, uniques included.
    let s = start_with(&data, TIERS, 3);
    let said = s.seen.join("\n");
    assert!(
        said.contains("re-partitioned from 2 to 3 shards")
            && !said.contains("written by a run with"),
        "{said}"
    );
    assert!(tier_answers(&s, t0) == two, "answers changed with 3 shards");
    let body = recent(11);
    post_all(&s, &body);
    post_all(&reference, &body);
    same(&s, "with 3 shards");
    stop(s);
    let (ok, report) = common::check_aggregates(&data, Some(TIERS));
    assert!(ok, "{report}");

    // 3 → 1: the store is re-partitioned first, then the start is refused while the logs of
    // shards 1 (and 2) still hold records, naming the fix.
    let s = Server::builder()
        .data(&data)
        .shards(1)
        .config(TIERS)
        .start();
    let (code, log) = s.wait();
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("re-partitioned from 3 to 1 shards")
            && log.contains("holds the logs of shards [1")
            && log.contains("stays in the aggregates"),
        "{log}"
    );
    // Moved out, as the message says: what they held stays in every answer.
    let aside = tmp.path().join("aside");
    let moved = move_logs(&data, &aside, 1);
    assert!(moved.contains(&"shard-001".to_string()), "{moved:?}");
    let s = start_with(&data, TIERS, 1);
    same(&s, "with 1 shard");
    let body = recent(12);
    post_all(&s, &body);
    post_all(&reference, &body);
    same(&s, "with 1 shard, after more hits");
    stop(s);

    // 1 → 3 with the logs back: the store knows up to where it holds them
    // (agg/dropped-sources) and replays nothing of them twice.
    for name in &moved {
        std::fs::rename(aside.join(name), data.join(name)).unwrap();
    }
    let s = start_with(&data, TIERS, 3);
    assert!(
        s.seen
            .iter()
            .any(|l| l.contains("re-partitioned from 1 to 3 shards")),
        "{:?}",
        s.seen
    );
    same(&s, "with 3 shards again");
    let body = recent(13);
    post_all(&s, &body);
    post_all(&reference, &body);
    same(&s, "with 3 shards again, after more hits");
    stop(s);
    stop(reference);
    let (ok, report) = common::check_aggregates(&data, Some(TIERS));
    assert!(ok, "{report}");
}

/// A crash while hits arrive leaves the owners' checkpoints at different log offsets; the
/// re-partition brings each to one frontier from the logs first. `check --aggregates` (which
/// recomputes every bucket the logs hold) then agrees with the re-partitioned store.
#[test]
fn a_store_left_by_a_crash_is_re_partitioned_from_one_frontier() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let s = start_with(&data, CONFIG, 2);
    let body = hits(21, 6000);
    let chunks = batches(&body, 100);
    // Posts from two connections at a time until the kill, with checkpoints every 200 ms.
    for (i, pair) in chunks.chunks(2).enumerate() {
        let posts: Vec<_> = pair
            .iter()
            .map(|c| {
                let (port, c) = (s.http, c.clone());
                std::thread::spawn(move || common::try_post_events(port, &c))
            })
            .collect();
        for p in posts {
            let _ = p.join();
        }
        if i == 20 {
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    s.signal("KILL");
    let _ = s.wait();
    let s = start_with(&data, CONFIG, 3);
    let said = s.seen.join("\n");
    assert!(said.contains("re-partitioned from 2 to 3 shards"), "{said}");
    eprintln!(
        "{}",
        s.seen
            .iter()
            .find(|l| l.contains("re-partitioned"))
            .unwrap()
    );
    stop(s);
    let (ok, report) = common::check_aggregates(&data, Some(CONFIG));
    assert!(ok, "{report}");
}

/// A minute with more url cells than the ticker folds at once (`agg::FOLD_PART_CELLS`) is
/// folded into its hour in slices between other work: every answer read while it folds equals
/// the answer once it is folded, and after a clean stop, after a kill -9 (the checkpoint may
/// hold the hour half way: it is written whole), and `pixeld check --aggregates` agrees with
/// the store.
#[test]
fn a_busy_minute_folded_in_slices_answers_the_same_throughout() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let t0 = pixeld::route::now_minute();
    let s = start_with(&data, CONFIG, 1);
    // 60 000 hits of many urls inside one minute 20 minutes ago.
    let minute_at = |m: i64| (m * 60_000) as u64;
    post_all(&s, &hits_from(3, 60_000, minute_at(t0 - 20), busy_minute()));
    common::wait_settled(s.http, "posted");
    // Read while the ticker folds (it takes up the ended minute within 2 s), until it has
    // folded it in more than one slice and no pass is left half done.
    let mut during = Vec::new();
    common::wait_until("the busy minute folded in slices", || {
        during.push(answers(&s, t0));
        let m = common::metrics(s.http);
        common::metric_sum(&m, "pixeld_agg_minutes_folded_total") > 0
            && common::metric_sum(&m, "pixeld_agg_fold_slices_total") > 1
    });
    // The last slices: a pass every 20 ms, 5 ms each.
    std::thread::sleep(Duration::from_millis(1500));
    let folded = answers(&s, t0);
    // The minute's visits' entry and exit pages are among the cells folded in slices.
    for page in folded
        .iter()
        .filter(|a| a.contains("\"dim\":\"entry_page\"") || a.contains("\"dim\":\"exit_page\""))
    {
        let v: Value = serde_json::from_str(page).unwrap();
        let items = v["items"].as_array().map_or(0, Vec::len);
        assert_eq!(items, 500, "{}: a full page of pages", v["dim"]);
    }
    assert_eq!(folded.iter().filter(|a| a.contains("_page\"")).count(), 2);
    for (i, a) in during.iter().enumerate() {
        same_answers(a, &folded, &format!("read {i} while folding"));
    }
    let m = common::metrics(s.http);
    assert!(m
        .get("pixeld_agg_fold_pass_max_seconds")
        .is_some_and(|v| *v > 0.0));
    // The memory gauge's parts add up to it (read again if a scrape fell between the
    // ticker's stores), and the busy minute's url cells are among them.
    common::wait_until("memory parts that add up", || {
        let m = common::metrics(s.http);
        let part = |p: &str| m.get(&format!("pixeld_agg_memory_part_bytes{{part=\"{p}\"}}"));
        common::metric_sum(&m, "pixeld_agg_memory_part_bytes")
            == common::metric_sum(&m, "pixeld_agg_memory_bytes")
            && part("url_cells").is_some_and(|v| *v > 0.0)
            && part("url_pairs").is_some_and(|v| *v > 0.0)
    });
    stop(s);
    let s = start_with(&data, CONFIG, 1);
    same_answers(&answers(&s, t0), &folded, "after a clean restart");
    // Another busy minute, and a kill -9 as soon as its fold has begun.
    post_all(&s, &hits_from(4, 60_000, minute_at(t0 - 15), busy_minute()));
    common::wait_settled(s.http, "posted again");
    let more = answers(&s, t0);
    common::wait_until("folding the second minute", || {
        common::metric_sum(&common::metrics(s.http), "pixeld_agg_fold_slices_total") > 0
    });
    s.signal("KILL");
    let _ = s.wait();
    let s = start_with(&data, CONFIG, 1);
    same_answers(&answers(&s, t0), &more, "after a kill -9 while folding");
    stop(s);
    let (ok, report) = common::check_aggregates(&data, Some(CONFIG));
    assert!(ok, "{report}");
}

/// The traffic of [`a_busy_minute_folded_in_slices_answers_the_same_throughout`]: many urls
/// (url, url × channel and url × referrer cells: more than one fold slice takes).
fn busy_minute() -> pixeld::tools::gen::GenConfig {
    pixeld::tools::gen::GenConfig {
        urls_per_site: 60_000,
        visitors: 60_000,
        ms_per_event: 0.9,
        ..Default::default()
    }
}

/// `pixeld rebuild-aggregates --server` on a running server while hits keep arriving: the
/// range the logs hold is recomputed and replaced, the hits applied meanwhile are added back,
/// and every answer equals a reference server's that was never rebuilt; the store then agrees
/// with the logs. A second offline rebuild is refused while the server holds the data dir,
/// naming `--server`.
#[test]
fn rebuild_aggregates_runs_on_a_live_server() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let t0 = pixeld::route::now_minute();
    let s = start_with(&data, CONFIG, 2);
    let reference = start_with(&tmp.path().join("reference"), CONFIG, 2);
    let body = hits(41, 20_000);
    post_all(&s, &body);
    post_all(&reference, &body);
    // Hits keep coming while the rebuild runs: one batch to each server in turn.
    let stop_posting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poster = {
        let (a, b, stop) = (s.http, reference.http, stop_posting.clone());
        std::thread::spawn(move || {
            let more = hits(42, 20_000);
            let mut sent = 0;
            for chunk in batches(&more, 50) {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                assert_eq!(common::try_post_events(a, &chunk), Some(200));
                assert_eq!(common::try_post_events(b, &chunk), Some(200));
                sent += 1;
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let out = std::process::Command::new(common::pixeld_bin())
        .args(["rebuild-aggregates", "--server"])
        .arg(format!("http://127.0.0.1:{}", s.http))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{answer}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert!(v["rebuilt"]["records"].as_u64().unwrap() >= 20_000, "{v}");
    assert!(v["rebuilt"]["minute_buckets"].as_u64().unwrap() > 0, "{v}");
    std::thread::sleep(Duration::from_millis(200));
    stop_posting.store(true, std::sync::atomic::Ordering::Relaxed);
    let batches = poster.join().unwrap();
    assert!(batches > 0);
    common::wait_settled(s.http, "live rebuild");
    common::wait_settled(reference.http, "reference");
    assert!(
        answers(&s, t0) == answers(&reference, t0),
        "a live rebuild changed the answers"
    );
    // Offline while the server runs: refused, naming --server.
    let out = std::process::Command::new(common::pixeld_bin())
        .args(["rebuild-aggregates", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--server"), "{err}");
    stop(reference);
    stop(s);
    let (ok, report) = common::check_aggregates(&data, Some(CONFIG));
    assert!(ok, "{report}");
}

fn rebuild(data: &Path, config: &str, range: &[String]) -> String {
    let dir = common::tempdir();
    let path = dir.path().join("pixeld.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(common::pixeld_bin())
        .args(["rebuild-aggregates", "--data-dir"])
        .arg(data)
        .arg("--config")
        .arg(&path)
        .args(range)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

/// The top urls of minutes `[from, to)`.
fn top_urls(s: &Server, from: i64, to: i64) -> String {
    let q = format!(
        "/v1/top?dim=url&from={}&to={}&limit=1000",
        from * 60,
        to * 60
    );
    let (st, _, body) = common::http(s.http, "GET", &q, &[], b"");
    assert_eq!(st, 200, "{q}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["items"].to_string()
}

#[test]
fn rebuild_aggregates_recomputes_under_a_new_config_and_keeps_the_rest() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let t0 = pixeld::route::now_minute();
    // Config B keeps `utm_source` in urls: the 5 % of generated urls that carry one become
    // urls of their own.
    let config_b = CONFIG.replace("[agg]\n", "[agg]\nurl_keep_query = [\"utm_source\"]\n");
    let split = (t0 / 60 - 1) * 60; // an hour boundary inside the two hours of hits
    let (old, new) = ((t0 - 180, split), (split, t0 + 10));

    let s = start(&data, CONFIG);
    // Few urls, many with a `utm_source`: they rank in the top lists.
    let cfg = pixeld::tools::gen::GenConfig {
        urls_per_site: 20,
        utm_share: 0.3,
        ms_per_event: 1_200.0, // two hours of event time
        ..Default::default()
    };
    post_all(&s, &hits_with(11, 6000, cfg));
    common::wait_settled(s.http, "posted");
    let a_old = top_urls(&s, old.0, old.1);
    let a_new = top_urls(&s, new.0, new.1);
    stop(s);

    // What config B gives: a copy of the logs without the store, rebuilt at its start.
    let fresh = tmp.path().join("fresh");
    copy_dir(&data, &fresh);
    std::fs::remove_dir_all(fresh.join("agg")).unwrap();
    let s = start(&fresh, &config_b);
    let b_answers = answers(&s, t0);
    let (b_old, b_new) = (top_urls(&s, old.0, old.1), top_urls(&s, new.0, new.1));
    stop(s);
    assert!(b_old != a_old && b_new != a_new, "config B changes nothing");

    // Rebuilt offline under B, the store loads at the next start under B (no fingerprint
    // complaint, nothing replayed) and answers what a rebuild from the logs gives.
    let report = rebuild(&data, &config_b, &[]);
    assert!(report.contains("hour buckets rebuilt"), "{report}");
    let s = start(&data, &config_b);
    assert!(
        !s.seen
            .iter()
            .any(|l| l.contains("other [agg] event settings")),
        "{:?}",
        s.seen
    );
    assert!(
        s.seen.iter().any(|l| l.contains("0 log records replayed")),
        "{:?}",
        s.seen
    );
    assert!(
        answers(&s, t0) == b_answers,
        "rebuilt store differs from the logs under B"
    );
    stop(s);
    let (ok, report) = common::check_aggregates(&data, Some(&config_b));
    assert!(ok, "{report}");

    // Back to config A for the last hour only: the hours before keep B's answers.
    let rfc = |m: i64| pixeld::query::params::minute_rfc3339(m);
    rebuild(
        &data,
        CONFIG,
        &["--from".into(), rfc(split), "--to".into(), rfc(t0 + 10)],
    );
    let s = start(&data, CONFIG);
    assert_eq!(top_urls(&s, old.0, old.1), b_old, "outside --from/--to");
    assert_eq!(top_urls(&s, new.0, new.1), a_new, "inside --from/--to");
    stop(s);
}

/// A changed `visit_gap` cuts visits anew: the offline rebuild recomputes the visit counts of
/// the retained range *and* the visits still in progress, so that hits after the restart
/// continue them as a server that always had the new gap would.
#[test]
fn rebuild_aggregates_recuts_visits_in_progress_under_a_new_gap() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let t0 = pixeld::route::now_minute();
    // An allowance covering every generated hit (two hours old at most), so that all count
    // for visits; gap 30 min (A) against 90 s (C).
    let config_a = CONFIG.replace("[agg]\n", "[agg]\nvisit_late_allowance = \"1d\"\n");
    let config_c = config_a.replace("[agg]\n", "[agg]\nvisit_gap = \"90s\"\n");
    let cfg = pixeld::tools::gen::GenConfig {
        ms_per_event: 1_200.0, // two hours of event time, up to now
        ..Default::default()
    };
    let s = start(&data, &config_a);
    post_all(&s, &hits_with(21, 6000, cfg.clone()));
    common::wait_settled(s.http, "posted");
    let a_answers = answers(&s, t0);
    stop(s);

    // What C gives: a copy of the logs without the store, rebuilt at its start.
    let fresh = tmp.path().join("fresh");
    copy_dir(&data, &fresh);
    std::fs::remove_dir_all(fresh.join("agg")).unwrap();
    let s = start(&fresh, &config_c);
    let c_answers = answers(&s, t0);
    assert!(c_answers != a_answers, "the gap changes nothing");
    // More hits of the same visitors, right after the last ones: they extend (or not) the
    // visits in progress.
    let more = hits_from(
        21,
        3000,
        (pixeld::route::now_minute() as u64 - 1) * 60_000,
        pixeld::tools::gen::GenConfig {
            ms_per_event: 15.0,
            ..Default::default()
        },
    );
    post_all(&s, &more);
    common::wait_settled(s.http, "posted");
    let c_after = answers(&s, t0);
    stop(s);

    rebuild(&data, &config_c, &[]);
    let s = start(&data, &config_c);
    assert!(
        answers(&s, t0) == c_answers,
        "rebuilt store differs from the logs under the new gap"
    );
    post_all(&s, &more);
    common::wait_settled(s.http, "posted");
    assert!(
        answers(&s, t0) == c_after,
        "visits in progress were not re-cut: later hits continue them differently"
    );
    stop(s);
    let (ok, report) = common::check_aggregates(&data, Some(&config_c));
    assert!(ok, "{report}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else if e.file_name() != ".lock" {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// Minute window 1 h, hour window 48 h, day window 30 d, checkpoints (which seal) every 200 ms.
const TIERS: &str = "[log]\ncompression = \"none\"\nsegment_max_bytes = \"64KiB\"\n\
                     [agg]\nminute_window = \"1h\"\nhour_window = \"48h\"\nday_window = \"30d\"\n\
                     checkpoint_interval = \"200ms\"\n";

/// Answers over the last four whole days (days, hours, tops) at `t0` (a minute).
fn tier_answers(s: &Server, t0: i64) -> Vec<String> {
    let d0 = (t0.div_euclid(1440) - 4) * 1440 * 60;
    let h0 = (t0.div_euclid(60) - 40) * 3600;
    let to = answers_to(t0);
    [
        format!("/v1/summary?from={d0}&to={to}"),
        format!("/v1/timeseries?from={d0}&to={to}&step=1d"),
        format!("/v1/timeseries?from={h0}&to={to}&step=1h"),
        format!("/v1/top?dim=url&from={d0}&to={to}&limit=300"),
        format!("/v1/top?dim=ref_domain&from={d0}&to={to}&limit=300"),
        format!("/v1/top?dim=site&from={d0}&to={to}"),
        format!("/v1/summary?from={h0}&to={to}"),
        // Dimensions: the profile cells of sealed hours and days, memory and re-partitions.
        // Filtered to rows of fewer than 384 visitors, which stay exact: a busier row is a
        // sketch, whose estimate with one shard differs from the exact sum of two shards'.
        format!("/v1/top?dim=browser&from={d0}&to={to}&filter=channel:social&sort=visitors"),
        format!("/v1/top?dim=source&from={d0}&to={to}&filter=channel:social"),
        format!("/v1/top?dim=device&from={d0}&to={to}&filter=channel:email"),
        format!("/v1/top?dim=os&from={h0}&to={to}&filter=channel:internal"),
    ]
    .iter()
    .map(|q| {
        let (st, _, body) = common::http(s.http, "GET", q, &[], b"");
        assert_eq!(st, 200, "{q}: {}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["complete"], Value::Bool(true), "{q}");
        if q.contains("filter=") || q.contains("dim=channel") {
            assert!(v["total_rows"].as_u64() > Some(0), "{q}: no rows");
        }
        String::from_utf8(body).unwrap()
    })
    .collect()
}

/// Fails naming the first answer that differs, with both bodies.
fn same_answers(got: &[String], want: &[String], what: &str) {
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g, w, "{what}");
    }
    assert_eq!(got.len(), want.len(), "{what}");
}

fn sealed_files(data: &Path) -> Vec<String> {
    let mut v: Vec<String> = (0..2)
        .flat_map(|o| {
            std::fs::read_dir(data.join(format!("agg/shard-{o:03}/sealed")))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn closed_hours_and_days_are_sealed_and_answer_as_memory_did() {
    let tmp = common::tempdir();
    let (data, plain) = (tmp.path().join("sealed"), tmp.path().join("plain"));
    let t0 = pixeld::route::now_minute();
    let gen = |ms_per_event: f64| pixeld::tools::gen::GenConfig {
        visitors: 3000,
        urls_per_site: 60,
        late_share: 0.1,
        late_max_ms: 6 * 3_600_000,
        ms_per_event,
        ..pixeld::tools::gen::GenConfig::default()
    };
    // Four days of hits up to now: the oldest two are older than the hour window.
    let start = ((t0.div_euclid(1440) - 4) * 1440) as u64 * 60_000;
    let span = (t0 as u64 * 60_000 - start) as f64;
    let body = hits_from(3, 16_000, start, gen(span / 16_000.0));
    let s = start_with(&data, TIERS, 2);
    // The reference never checkpoints after its first (empty) one, so it never seals.
    let p = start_with(&plain, &TIERS.replace("200ms", "24h"), 2);
    // Its first checkpoint (one per owner) is written before any hit arrives.
    let first_by = std::time::Instant::now() + Duration::from_secs(20);
    while common::metric_sum(&common::metrics(p.http), "pixeld_agg_checkpoints_total") < 2 {
        assert!(std::time::Instant::now() < first_by, "no first checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }
    post_both(&s, &p, &body);
    // Both have aggregated every line before anything is compared (not a fixed sleep: a
    // loaded 2-core runner may take longer).
    let lines = |b: &[u8]| b.iter().filter(|&&c| c == b'\n').count() as u64;
    let n = lines(&body);
    common::wait_aggregated(s.http, n, "sealed");
    common::wait_aggregated(p.http, n, "memory");
    common::wait_until("ten sealed files", || {
        common::metric_sum(&common::metrics(s.http), "pixeld_agg_sealed_files") >= 10
    });
    common::wait_until("a sealed day and a sealed hour on disk", || {
        let files = sealed_files(&data);
        files.iter().any(|f| f.starts_with("day-")) && files.iter().any(|f| f.starts_with("hour-"))
    });
    assert!(sealed_files(&plain).is_empty());
    assert_eq!(
        common::metric_sum(&common::metrics(p.http), "pixeld_agg_sealed_files"),
        0
    );
    let want = tier_answers(&p, t0);
    same_answers(
        &tier_answers(&s, t0),
        &want,
        "sealed answers differ from memory's",
    );
    // Late hits for sealed days and hours (two and three days ago), after they were sealed.
    let late = hits_from(
        4,
        2000,
        start + 86_400_000,
        gen(2.0 * 86_400_000.0 / 2000.0),
    );
    post_both(&s, &p, &late);
    let n = n + lines(&late);
    common::wait_aggregated(s.http, n, "sealed, late hits");
    common::wait_aggregated(p.http, n, "memory, late hits");
    let want = tier_answers(&p, t0);
    same_answers(&tier_answers(&s, t0), &want, "late hits for sealed buckets");
    stop(p);
    stop(s);
    // A restart maps the files; the late hits come back from the checkpoint chain.
    let s = start_with(&data, TIERS, 2);
    assert!(tier_answers(&s, t0) == want, "after a restart");
    stop(s);
    let (ok, report) = common::check_aggregates(&data, Some(TIERS));
    assert!(ok, "{report}");
    assert!(!report.contains(" 0 day buckets"), "{report}");
    // A damaged hour file and a damaged day file: reported; the hour recomputed from the log
    // by the catch-up, the day made again from its hours — the same answers.
    let sealed_dir = data.join("agg/shard-000/sealed");
    let pick = |prefix: &str| {
        let mut v: Vec<_> = std::fs::read_dir(&sealed_dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .collect();
        v.sort();
        v.into_iter().nth(1).expect("a sealed file")
    };
    for victim in [pick("hour-"), pick("day-")] {
        let mut bytes = std::fs::read(&victim).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x10;
        std::fs::write(&victim, &bytes).unwrap();
    }
    let s = start_with(&data, TIERS, 2);
    for what in ["sealed hour ", "sealed day "] {
        assert!(
            s.seen
                .iter()
                .any(|l| l.contains(what) && l.contains("recomputed from what the logs")),
            "{what}: {:?}",
            s.seen
        );
    }
    let lost = "1 sealed hour(s) and 1 day(s) lost";
    assert!(s.seen.iter().any(|l| l.contains(lost)), "{:?}", s.seen);
    assert!(
        tier_answers(&s, t0) == want,
        "after losing two sealed files"
    );
    std::thread::sleep(Duration::from_millis(600));
    stop(s);
    let (ok, report) = common::check_aggregates(&data, Some(TIERS));
    assert!(ok, "after the repair: {report}");
    // Retention deletes most of the logs; the days and hours stay.
    let retained = TIERS.replace("[agg]", "retention_bytes = \"1MiB\"\n[agg]");
    let s = start_with(&data, &retained, 2);
    common::wait_until("retention deletes segments", || {
        common::metric_sum(
            &common::metrics(s.http),
            "pixeld_log_segments_deleted_total",
        ) > 0
    });
    same_answers(&tier_answers(&s, t0), &want, "after retention");
    stop(s);
}

/// `agg.enabled = false`: a log only. Every line is logged and counted
/// (`outcome="aggregation_off"`), nothing is aggregated or checkpointed, questions of the
/// aggregates answer 503 naming the setting and a scan of the log answers. Turned back on,
/// the next start aggregates what the logs hold — from nothing the first time, from the
/// store's checkpoint after a second spell off (only the lines logged meanwhile replayed) —
/// and answers exactly what a server that aggregated all along, fed the same lines, answers.
#[test]
fn a_log_only_server_keeps_every_line_and_aggregates_them_when_turned_back_on() {
    let tmp = common::tempdir();
    let (data, reference) = (tmp.path().join("data"), tmp.path().join("reference"));
    let t0 = pixeld::route::now_minute();
    let off = format!("{CONFIG}enabled = false\n");
    let r = start(&reference, CONFIG);
    let start_off = || {
        let mut s = Server::builder().data(&data).shards(2).config(&off).start();
        assert!(s.wait_for("pixeld: ready").is_some(), "{:?}", s.seen);
        assert!(
            s.seen.iter().any(|l| l.contains("aggregation is off")),
            "{:?}",
            s.seen
        );
        s
    };
    let logged = |s: &Server, n: u64| {
        common::wait_until("every line logged and counted", || {
            let m = common::metrics(s.http);
            common::metric_sum(&m, "pixeld_appended_events_total") == n
                && m.get("pixeld_agg_records_total{outcome=\"aggregation_off\"}")
                    == Some(&(n as f64))
        });
    };
    let s = start_off();
    post_both(&r, &s, &hits(21, 3000));
    logged(&s, 3000);
    let m = common::metrics(s.http);
    assert_eq!(
        m.get("pixeld_agg_records_total{outcome=\"aggregated\"}"),
        Some(&0.0)
    );
    assert_eq!(m.get("pixeld_agg_enabled"), Some(&0.0));
    assert_eq!(
        common::metrics(r.http).get("pixeld_agg_enabled"),
        Some(&1.0)
    );
    // Questions of the aggregates: 503 naming the setting and the way out.
    for (method, path) in [
        ("GET", "/v1/summary?from=-3h&to=now"),
        ("GET", "/v1/top?dim=url&from=-3h&to=now"),
        ("POST", "/v1/admin/rebuild-aggregates"),
    ] {
        let (st, _, body) = common::http(s.http, method, path, &[], b"");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (st, &v["reason"]),
            (503, &Value::from("aggregation_off")),
            "{path}: {v}"
        );
        assert!(
            v["error"].as_str().unwrap().contains("agg.enabled = true"),
            "{v}"
        );
    }
    let q = serde_json::json!({"metrics": ["views"], "date_range": ["-3h", "now"]});
    let (st, v) = common::post_query(s.http, &q);
    assert_eq!(
        (st, &v["reason"]),
        (503, &Value::from("aggregation_off")),
        "{v}"
    );
    // A scan of the raw log answers, complete, what the reference's aggregates hold.
    common::wait_settled(r.http, "reference");
    let mut scan = q.clone();
    scan["include"] = serde_json::json!({"scan": true});
    let (st, from_log) = common::post_query(s.http, &scan);
    assert_eq!(st, 200, "{from_log}");
    assert_eq!(from_log["complete"], Value::Bool(true), "{from_log}");
    assert_eq!(from_log["meta"]["computed_from"], "a scan of the raw log");
    let (_, from_cells) = common::post_query(r.http, &q);
    assert_eq!(
        from_log["results"], from_cells["results"],
        "{from_log}\n{from_cells}"
    );
    assert!(
        from_cells["results"][0]["metrics"][0].as_u64() > Some(0),
        "{from_cells}"
    );
    let log = stop(s);
    assert!(!log.contains("aggregates complete"), "{log}");
    let checkpoints = walkdir(&data.join("agg"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "ckpt" || e == "agb"))
        .count();
    assert_eq!(
        checkpoints, 0,
        "a log-only server writes no aggregate files"
    );
    // On: the aggregates are made from the whole log.
    let s = start(&data, CONFIG);
    common::wait_settled(s.http, "turned on");
    same_answers(&answers(&s, t0), &answers(&r, t0), "turned on");
    stop(s);
    // Off again, more lines; on: only those are replayed after the checkpoint.
    let s = start_off();
    post_both(&r, &s, &hits(22, 2000));
    logged(&s, 2000);
    stop(s);
    let mut s = Server::builder()
        .data(&data)
        .shards(2)
        .config(CONFIG)
        .start();
    assert!(s.wait_for("pixeld: ready").is_some(), "{:?}", s.seen);
    let done = s
        .wait_for("pixeld: aggregates complete")
        .unwrap_or_default();
    assert!(done.contains(" 2000 log records replayed"), "{done}");
    common::wait_settled(s.http, "on again");
    common::wait_settled(r.http, "reference");
    same_answers(&answers(&s, t0), &answers(&r, t0), "on again");
    stop(s);
    stop(r);
}

/// Every file under `dir` (none when it does not exist).
fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}
