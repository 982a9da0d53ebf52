//! Crash: a child `pixeld import --fsync batch --report-durable` appends records of random
//! sizes and reports each durable offset; it is killed with SIGKILL at a random moment, for
//! several rounds. After each restart every record up to the last reported durable offset is
//! present and intact, everything else that survived is an intact prefix of what was sent,
//! and appending resumes right after it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pixeld::log::reader::Start;
use rand::{Rng, SeedableRng};

use crate::common;

const ROUNDS: u64 = 10;

#[test]
fn kill_9_loses_nothing_that_was_reported_durable() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let shard_dir = data.join("shard-000");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x9111);
    // (round, first offset, last durable offset reported, records sent)
    let mut rounds: Vec<(u64, u64, Option<u64>, u64)> = Vec::new();
    let mut sizes: Vec<Vec<usize>> = Vec::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(common::pixeld_bin())
            .args(["import", "--data-dir"])
            .arg(&data)
            .args(["--fsync", "batch", "--report-durable", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pixeld import");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let durable = Arc::new(AtomicU64::new(u64::MAX));
        let start = Arc::new(AtomicU64::new(u64::MAX));
        let reader = {
            let (durable, start) = (durable.clone(), start.clone());
            std::thread::spawn(move || {
                for line in stdout.lines() {
                    let Ok(line) = line else { break };
                    if let Some(v) = line.strip_prefix("start ") {
                        start.store(v.parse().unwrap(), Ordering::SeqCst);
                    } else if let Some(v) = line.strip_prefix("durable ") {
                        durable.store(v.parse().unwrap(), Ordering::SeqCst);
                    }
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while start.load(Ordering::SeqCst) == u64::MAX {
            assert!(
                Instant::now() < deadline,
                "round {round}: import did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let first = start.load(Ordering::SeqCst);
        // A writer thread streams records while this thread kills the child at a random
        // moment, so the kill lands anywhere in the append / compress / write / fsync cycle.
        let mut stdin = child.stdin.take().unwrap();
        let seed = rng.gen::<u64>();
        let writer = std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut round_sizes = Vec::new();
            for i in 0..200_000u64 {
                let len = if rng.gen_bool(0.05) {
                    rng.gen_range(1..=65536)
                } else {
                    rng.gen_range(1..400)
                };
                let mut line = common::record_bytes(round, i, len);
                line.push(b'\n');
                round_sizes.push(len);
                if stdin.write_all(&line).is_err() {
                    break; // the child is gone: this record may or may not have arrived
                }
            }
            round_sizes
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..400)));
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let round_sizes = writer.join().unwrap();
        let sent = round_sizes.len() as u64;
        reader.join().unwrap();
        let d = durable.load(Ordering::SeqCst);
        let d = (d != u64::MAX).then_some(d);
        rounds.push((round, first, d, sent));
        sizes.push(round_sizes);
        if let Some(d) = d {
            assert!(
                d < first + sent,
                "round {round}: durable {d} beyond what was sent"
            );
        }

        // Check: `pixeld check` passes (a torn tail is allowed until the next start), and the
        // log as read now holds every durable record of every round, intact.
        let (recs, warns) = common::read_all(&shard_dir, Start::Beginning);
        assert!(warns.is_empty(), "round {round}: {warns:?}");
        verify(&recs, &rounds, &sizes);
    }
    let durable_rounds = rounds.iter().filter(|r| r.2.is_some()).count();
    assert!(
        durable_rounds >= 2,
        "too few rounds saw a durable offset: {rounds:?}"
    );
    // A final clean start recovers every tail, and check is clean.
    let out = Command::new(common::pixeld_bin())
        .args(["import", "--data-dir"])
        .arg(&data)
        .arg("/dev/null")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(common::pixeld_bin())
        .args(["check", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!("rounds (round, first offset, durable, sent): {rounds:?}");
}

/// Every record belongs to the round whose range holds its offset and equals what was sent;
/// every offset up to each round's durable offset is present.
fn verify(
    recs: &[(u64, u64, Vec<u8>)],
    rounds: &[(u64, u64, Option<u64>, u64)],
    sizes: &[Vec<usize>],
) {
    let mut by_offset = std::collections::HashMap::new();
    for (o, _, b) in recs {
        by_offset.insert(*o, b);
    }
    for (k, &(round, first, durable, _sent)) in rounds.iter().enumerate() {
        let end = rounds.get(k + 1).map_or(u64::MAX, |r| r.1);
        if let Some(d) = durable {
            for o in first..=d {
                assert!(
                    by_offset.contains_key(&o),
                    "round {round}: durable offset {o} (≤ {d}) is missing"
                );
            }
        }
        for (o, _, b) in recs.iter().filter(|r| r.0 >= first && r.0 < end) {
            let i = o - first;
            let want = common::record_bytes(round, i, sizes[k][i as usize]);
            assert_eq!(
                **b, want,
                "round {round}: record at offset {o} is not what was sent"
            );
        }
    }
}
