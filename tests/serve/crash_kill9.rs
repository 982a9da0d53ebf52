//! Crash loop of the whole appliance: 20 cycles of `pixeld serve` (2 shards) ingesting over
//! TCP, UDP and acknowledged `POST /v1/events` at once, killed with SIGKILL at a random moment,
//! restarted. Checked:
//! - every record at or below a shard's last `durable_offset` published in `/metrics` before
//!   the kill survives every later recovery unchanged;
//! - every line acknowledged with 200 is in the log exactly once, and no line twice;
//! - a torn tail (a partial batch the test appends after every other kill, as a power cut
//!   would leave it) is truncated at the restart and counted (`pixeld_log_truncated_bytes_total`
//!   equals the bytes the stderr lines report), and the recovered log reads without warnings;
//! - after the last restart the aggregates — loaded from the checkpoints the killed runs wrote
//!   every 200 ms (`agg.checkpoint_interval = "200ms"`) plus the log replayed after them —
//!   (`/v1/summary`, `/v1/top`) equal a reference the test computes from the log records
//!   itself, with its own parser; and after the final clean stop `pixeld check --aggregates`
//!   finds the store equal, bucket by bucket, to a recomputation from the log. A third of the
//!   lines are stamped three days back, one more hour back per cycle, so that closed hours and
//!   days are sealed into files during the cycles (and kills land during sealing too).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pixeld::log::reader::Start;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::common;

/// Checkpoints every 200 ms, so that kills land before, during and after them.
const CONFIG: &str = "[agg]\ncheckpoint_interval = \"200ms\"\n";

/// Cycles per run; `PIXELD_SOAK_CYCLES=500 cargo test --release --test serve crash_kill9`
/// is the long soak (docs/reliability.md).
fn cycles() -> u32 {
    std::env::var("PIXELD_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}
const SHARDS: usize = 2;
const URLS: u32 = 40;
const VISITORS: u32 = 300;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A line of `cycle`: a third stamped in a closed hour three days back (a new one each cycle,
/// so that each cycle's checkpoints seal one), the rest now.
fn line(id: &str, n: u64, cycle: u32) -> String {
    let back = if n.is_multiple_of(3) {
        (72 + u64::from(cycle)) * 3_600_000 + (n % 60) * 1000
    } else {
        0
    };
    let ms = now_ms() - back;
    format!(
        r#"{{"msec":{}.{:03},"url":"https://www.example.com/crash/{}","vid":"v{}","action":"pageview","id":"{id}"}}"#,
        ms / 1000,
        ms % 1000,
        n % u64::from(URLS),
        (n * 7) % u64::from(VISITORS)
    )
}

/// `pixeld_durable_offset{shard="N"}` values, when the server answers.
fn durable_offsets(port: u16) -> Option<Vec<Option<u64>>> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    let mut v = vec![None; SHARDS];
    let mut found = 0;
    for l in out.lines() {
        if let Some(rest) = l.strip_prefix("pixeld_durable_offset{shard=\"") {
            let (shard, val) = rest.split_once("\"} ")?;
            let shard: usize = shard.parse().ok()?;
            let val: i64 = val.trim().parse().ok()?;
            *v.get_mut(shard)? = u64::try_from(val).ok();
            found += 1;
        }
    }
    (found == SHARDS).then_some(v)
}

/// The id and (url, vid) of a logged line, read by the test's own parser.
fn parse(bytes: &[u8]) -> (String, String, String) {
    let text = std::str::from_utf8(bytes).unwrap();
    // UDP lines carry nginx's syslog header in front of the JSON.
    let json = &text[text.find('{').unwrap()..];
    let v: Value = serde_json::from_str(json).unwrap();
    let s = |k: &str| v[k].as_str().unwrap().to_string();
    (s("id"), s("url"), s("vid"))
}

/// What a start's recovery cut, as its stderr lines report it; checks that the metric counts
/// exactly that, and that it is the `torn` bytes appended after the kill plus at most the zero
/// padding of the last O_DIRECT block.
fn recovery_cut(s: &common::Server, torn: u64, what: &str) -> u64 {
    let cut: u64 = s
        .seen
        .iter()
        .filter(|l| l.contains("truncated torn tail"))
        .filter_map(|l| {
            l.split(" bytes cut")
                .next()?
                .rsplit(": ")
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(
        common::metric_sum(&common::metrics(s.http), "pixeld_log_truncated_bytes_total"),
        cut,
        "{what}: {:?}",
        s.seen
    );
    assert!(
        cut >= torn && cut < torn + 4096,
        "{what}: {torn} torn bytes appended, {cut} cut: {:?}",
        s.seen
    );
    cut
}

#[test]
fn kill_9_in_a_loop_loses_nothing_acknowledged_or_durable() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b39);
    // Offset → bytes of every record that was at or below a published durable offset.
    let mut durable: Vec<BTreeMap<u64, Vec<u8>>> = vec![BTreeMap::new(); SHARDS];
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let mut truncated_reported = 0u64;
    let mut truncations = 0u32;
    // Bytes of a torn write appended to a newest segment after the previous kill.
    let mut torn: u64 = 0;
    let shards = SHARDS.to_string();
    let config = tmp.path().join("pixeld.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let config = config.display().to_string();
    let cycles = cycles();
    for cycle in 0..cycles {
        let mut s = common::Server::start(&data, &["--shards", &shards, "--config", &config]);
        let ready = s.wait_for(&format!("ready: {SHARDS} shards"));
        assert!(ready.is_some(), "cycle {cycle}: {:?}", s.seen);
        let cut = recovery_cut(&s, torn, &format!("cycle {cycle}"));
        truncated_reported += cut;
        truncations += u32::from(cut > 0);

        let stop = Arc::new(AtomicBool::new(false));
        let published: Arc<Mutex<Vec<Option<u64>>>> = Arc::new(Mutex::new(vec![None; SHARDS]));
        let mut threads = Vec::new();
        // TCP: line framing, 50 lines per write.
        {
            let (stop, port) = (stop.clone(), s.tcp);
            threads.push(std::thread::spawn(move || {
                let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
                    return;
                };
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let chunk: String = (0..50)
                        .map(|_| {
                            n += 1;
                            line(&format!("c{cycle}-tcp-{n}"), n, cycle) + "\n"
                        })
                        .collect();
                    if c.write_all(chunk.as_bytes()).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }));
        }
        // UDP: one datagram per line, nginx's syslog header in front.
        {
            let (stop, port) = (stop.clone(), s.udp);
            threads.push(std::thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..20 {
                        n += 1;
                        let l = format!(
                            "<190>Nov 22 01:39:03 pixel: {}",
                            line(&format!("c{cycle}-udp-{n}"), n, cycle)
                        );
                        let _ = sock.send_to(l.as_bytes(), ("127.0.0.1", port));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }));
        }
        // HTTP: acknowledged batches of 20 lines.
        {
            let (stop, port, acked) = (stop.clone(), s.http, acked.clone());
            threads.push(std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let ids: Vec<String> = (0..20)
                        .map(|_| {
                            n += 1;
                            format!("c{cycle}-http-{n}")
                        })
                        .collect();
                    let body: String = ids
                        .iter()
                        .enumerate()
                        .map(|(i, id)| line(id, n + i as u64, cycle) + "\n")
                        .collect();
                    match common::try_post_events(port, body.as_bytes()) {
                        Some(200) => acked.lock().unwrap().extend(ids),
                        Some(_) => {}
                        None => return,
                    }
                }
            }));
        }
        // The durable offsets published while ingesting; the last answer before the kill counts.
        {
            let (stop, port, published) = (stop.clone(), s.http, published.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(v) = durable_offsets(port) {
                        *published.lock().unwrap() = v;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..700)));
        s.signal("KILL");
        let published = published.lock().unwrap().clone();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        let _ = s.wait();
        // SIGKILL does not tear a write the kernel has taken; a power cut does. Every other
        // cycle, leave what a torn batch write looks like at the end of a newest segment.
        torn = 0;
        if cycle % 2 == 1 {
            let shard = rng.gen_range(0..SHARDS);
            let dir = data.join(format!("shard-{shard:03}"));
            let newest = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .max()
                .unwrap();
            let mut bytes: Vec<u8> = b"PXLB".to_vec();
            let len = rng.gen_range(1..3000);
            bytes.extend((0..len).map(|_| rng.gen_range(1..=255u8)));
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&newest)
                .unwrap();
            f.write_all(&bytes).unwrap();
            torn = bytes.len() as u64;
        }
        // Everything published durable is on disk now (the reader skips a torn tail).
        for (shard, d) in published.iter().enumerate() {
            let Some(d) = *d else { continue };
            let dir = data.join(format!("shard-{shard:03}"));
            let (recs, _) = common::read_all(&dir, Start::Beginning);
            let have = recs.last().map(|r| r.0);
            assert!(
                have.is_some_and(|h| h >= d),
                "cycle {cycle} shard {shard}: durable offset {d} published, log ends at {have:?}"
            );
            for (off, _, bytes) in recs.into_iter().filter(|r| r.0 <= d) {
                if let Some(prev) = durable[shard].get(&off) {
                    assert_eq!(
                        prev, &bytes,
                        "cycle {cycle} shard {shard}: offset {off} changed"
                    );
                }
                durable[shard].insert(off, bytes);
            }
        }
    }

    // A last start: recovery of the last kill, then a clean stop.
    let mut s = common::Server::start(&data, &["--shards", &shards, "--config", &config]);
    assert!(
        s.wait_for(&format!("ready: {SHARDS} shards")).is_some(),
        "{:?}",
        s.seen
    );
    assert!(s.wait_for("aggregates complete").is_some(), "{:?}", s.seen);
    let cut = recovery_cut(&s, torn, "last start");
    truncated_reported += cut;
    truncations += u32::from(cut > 0);
    // Back to the oldest stamp (widened to whole days): days, hours and minutes, sealed or not.
    let from = format!("-{}h", 72 + cycles + 2);
    let (st, _, summary) = common::http(
        s.http,
        "GET",
        &format!("/v1/summary?from={from}&to=now"),
        &[],
        b"",
    );
    assert_eq!(st, 200);
    let summary: Value = serde_json::from_slice(&summary).unwrap();
    let (st, _, top) = common::http(
        s.http,
        "GET",
        &format!("/v1/top?dim=url&from={from}&to=now&limit=1000"),
        &[],
        b"",
    );
    assert_eq!(st, 200);
    let top: Value = serde_json::from_slice(&top).unwrap();
    s.signal("TERM");
    let (code, log) = s.wait();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("aggregates loaded from checkpoint"),
        "no checkpoint survived the kills: {log}"
    );
    let (ok, report) = common::check_aggregates(&data, Some(CONFIG));
    assert!(ok, "check --aggregates: {report}");
    let sealed = (0..SHARDS)
        .filter_map(|o| std::fs::read_dir(data.join(format!("agg/shard-{o:03}/sealed"))).ok())
        .flat_map(|d| d.flatten())
        .filter(|e| e.path().extension().is_some_and(|x| x == "agb"))
        .count();
    assert!(sealed > 0, "no hour or day was sealed during the cycles");

    // The reference, from the log itself.
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut views: BTreeMap<String, u64> = BTreeMap::new();
    let mut visitors: BTreeSet<String> = BTreeSet::new();
    let mut total = 0u64;
    for (shard, durable) in durable.iter().enumerate() {
        let dir = data.join(format!("shard-{shard:03}"));
        let (recs, warnings) = common::read_all(&dir, Start::Beginning);
        assert!(warnings.is_empty(), "shard {shard}: {warnings:?}");
        let by_offset: HashMap<u64, &Vec<u8>> = recs.iter().map(|r| (r.0, &r.2)).collect();
        for (off, bytes) in durable {
            assert_eq!(
                by_offset.get(off),
                Some(&bytes),
                "shard {shard}: durable offset {off} lost or changed"
            );
        }
        for (_, _, bytes) in &recs {
            let (id, url, vid) = parse(bytes);
            *ids.entry(id).or_default() += 1;
            *views.entry(url).or_default() += 1;
            visitors.insert(vid);
            total += 1;
        }
    }
    let dupes: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "lines logged twice: {dupes:?}");
    let acked = acked.lock().unwrap();
    assert!(acked.len() > 100, "only {} lines acknowledged", acked.len());
    for id in acked.iter() {
        assert_eq!(ids.get(id), Some(&1), "acknowledged line {id} missing");
    }
    assert_eq!(summary["views"].as_u64(), Some(total), "{summary}");
    assert_eq!(
        summary["uniques"].as_u64(),
        Some(visitors.len() as u64),
        "{summary}"
    );
    let served: BTreeMap<String, u64> = top["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["key"].as_str().unwrap().to_string(),
                i["views"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(served, views);
    eprintln!(
        "{cycles} kill -9 cycles: {total} records logged, {} acknowledged lines all present once, \
         {truncations} restarts truncated a torn tail ({truncated_reported} bytes, all counted)",
        acked.len()
    );
}
