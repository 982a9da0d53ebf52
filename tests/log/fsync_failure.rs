//! A failed fdatasync (injected with the test-only hook `PIXELD_TEST_FAIL_FSYNC_AFTER`) while
//! clients post acknowledged batches: the shard is poisoned, no batch is acknowledged after
//! the failure, the process exits non-zero naming the cause, and after a restart every batch
//! that was acknowledged with 200 is in the log exactly once.

use std::collections::HashMap;

use pixeld::log::reader::Start;

use crate::common;

fn line(batch: u64, i: u64) -> String {
    format!(
        r#"{{"msec":{},"url":"https://www.example.com/fsync/{batch}","vid":"v{i}","action":"pageview","id":"b{batch}-{i}"}}"#,
        common::data_msec()
    )
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the test-only fault hooks: cargo test --features fault-injection (scripts/test does)"
)]
fn a_failed_fdatasync_poisons_the_shard_and_loses_no_acknowledged_batch() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    // Every batch is made durable by its own fdatasync: the 9th fails.
    let mut s = common::Server::builder()
        .data(&data)
        .shards(1)
        .config("[log]\nfsync = \"batch\"\n")
        .env("PIXELD_TEST_FAIL_FSYNC_AFTER", "8")
        .start();
    assert!(s.wait_for("ready: 1 shard").is_some(), "{:?}", s.seen);
    let mut acked: Vec<u64> = Vec::new();
    let mut refused = 0;
    let mut answers: HashMap<u16, u32> = HashMap::new();
    let mut batch = 0u64;
    // Sequential posts: each waits for its fdatasync, so the failure comes within ~9 posts.
    // Keep going until the server is gone (bounded).
    while batch < 200 {
        batch += 1;
        let body: String = (0..10).map(|i| line(batch, i) + "\n").collect();
        match common::try_post_events(s.http, body.as_bytes()) {
            Some(200) => {
                assert_eq!(refused, 0, "batch {batch} acknowledged after a refusal");
                acked.push(batch);
            }
            Some(code) => {
                *answers.entry(code).or_default() += 1;
                refused += 1;
            }
            None => break,
        }
    }
    let (code, log) = s.wait();
    eprintln!(
        "{} batches acknowledged, then {answers:?} refused, then the server exited",
        acked.len()
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("fdatasync failed")
            && log.contains("PIXELD_TEST_FAIL_FSYNC_AFTER")
            && log.contains("poisoned"),
        "{log}"
    );
    assert!(
        acked.len() >= 3,
        "only {} batches acknowledged before the failure",
        acked.len()
    );
    assert!(acked.len() < 200, "the failure never happened: {answers:?}");
    // Every non-200 answer is the documented refusal (503).
    assert!(answers.keys().all(|c| *c == 503), "{answers:?}");

    // Restart without the hook: recovery keeps every acknowledged batch, each once.
    let mut s = common::Server::start(&data, &["--shards", "1"]);
    assert!(s.wait_for("ready: 1 shard").is_some(), "{:?}", s.seen);
    s.signal("TERM");
    let (code, log) = s.wait();
    assert_eq!(code, Some(0), "{log}");
    let (recs, _) = common::read_all(&data.join("shard-000"), Start::Beginning);
    let mut seen: HashMap<String, u32> = HashMap::new();
    for (_, _, bytes) in &recs {
        *seen
            .entry(String::from_utf8_lossy(bytes).into_owned())
            .or_default() += 1;
    }
    for b in &acked {
        for i in 0..10 {
            let l = line(*b, i);
            assert_eq!(seen.get(&l).copied(), Some(1), "acknowledged line {l}");
        }
    }
}
