//! Retention deletes only sealed segments past the limits; `check` and readers detect and
//! skip a corrupted sealed segment; recovery rebuilds a missing index and reports corruption.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use pixeld::log::format::Codec;
use pixeld::log::reader::{list_segments, Start, Warning};
use pixeld::log::retention::Retention;
use pixeld::log::{Fsync, Log, LogConfig, Source};
use pixeld::metrics::ShardStats;
use pixeld::sys::now_ns;

use crate::common;

fn config(dir: &Path, retention: Retention) -> LogConfig {
    let mut cfg = LogConfig::new(dir, 0);
    cfg.codec = Codec::None;
    cfg.batch_max_bytes = 4 << 10;
    cfg.segment_max_bytes = 16 << 10;
    cfg.fsync = Fsync::EveryBatch;
    cfg.retention = retention;
    cfg
}

/// Appends `(recv_ts, len)` records in order, one batch per 4 records, and closes.
fn write(cfg: LogConfig, records: Vec<(u64, usize)>) -> Arc<ShardStats> {
    let stats = Arc::new(ShardStats::default());
    let st = stats.clone();
    common::run(move || async move {
        let (log, flusher, _) = Log::open(cfg, st).await.unwrap();
        let flusher = glommio::spawn_local(flusher.run());
        for (i, (ts, len)) in records.into_iter().enumerate() {
            log.append(
                ts,
                Source::IMPORT,
                0,
                &common::record_bytes(2, i as u64, len),
            )
            .unwrap();
            if i % 4 == 3 {
                log.wait_durable(log.next_offset() - 1).await.unwrap();
            }
        }
        log.close();
        flusher.await.unwrap();
    });
    stats
}

fn sealed_and_open(dir: &Path) -> (Vec<PathBuf>, PathBuf) {
    let (mut segs, _) = list_segments(dir).unwrap();
    let open = segs.pop().unwrap().path;
    (segs.into_iter().map(|s| s.path).collect(), open)
}

#[test]
fn retention_by_age_deletes_only_old_sealed_segments() {
    let tmp = common::tempdir();
    let dir = tmp.path().join("shard-000");
    let now = now_ns();
    let hour = 3_600_000_000_000u64;
    let mut recs: Vec<(u64, usize)> = (0..120).map(|i| (now - 3 * hour + i, 1000)).collect();
    recs.extend((0..120).map(|i| (now - 60_000_000_000 + i, 1000)));
    let policy = Retention {
        max_age: Some(Duration::from_secs(3600)),
        max_bytes: None,
    };
    let stats = write(config(&dir, policy), recs);
    assert!(
        ShardStats::get(&stats.segments_deleted) > 0,
        "nothing was deleted"
    );
    let (recs, warns) = common::read_all(&dir, Start::Beginning);
    // Everything recent is still there, contiguous to the end.
    let recent_first = recs.iter().position(|r| r.1 >= now - hour).unwrap();
    assert_eq!(recs.len() - recent_first, 120);
    assert_eq!(recs.last().unwrap().0, 239);
    // What is left of the old records sits in the oldest kept segment, never in a deleted one.
    assert!(recent_first < 8, "{recent_first} old records kept");
    assert!(
        warns.iter().all(|w| matches!(w, Warning::Gap { .. })) && warns.is_empty(),
        "{warns:?}"
    );
    let (_, open) = sealed_and_open(&dir);
    assert!(open.exists());
}

#[test]
fn retention_by_bytes_keeps_the_newest_segments_under_the_limit() {
    let tmp = common::tempdir();
    let dir = tmp.path().join("shard-000");
    let now = now_ns();
    let recs: Vec<(u64, usize)> = (0..400).map(|i| (now + i, 1000)).collect();
    let max = 48u64 << 10;
    let policy = Retention {
        max_age: None,
        max_bytes: Some(max),
    };
    write(config(&dir, policy), recs);
    let (sealed, open) = sealed_and_open(&dir);
    let total: u64 = sealed
        .iter()
        .chain([&open])
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(total <= max, "{total} bytes kept over a {max} limit");
    let (recs, warns) = common::read_all(&dir, Start::Beginning);
    assert!(warns.is_empty(), "{warns:?}");
    let first = recs[0].0;
    assert!(first > 0, "nothing deleted");
    assert_eq!(
        recs.len() as u64,
        400 - first,
        "kept records are not the newest, contiguous"
    );
}

#[test]
fn corrupt_sealed_segment_is_detected_reported_and_skipped() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let dir = data.join("shard-000");
    let now = now_ns();
    let recs: Vec<(u64, usize)> = (0..200).map(|i| (now + i, 900)).collect();
    let policy = Retention {
        max_age: None,
        max_bytes: None,
    };
    write(config(&dir, policy), recs);
    let (sealed, _) = sealed_and_open(&dir);
    assert!(sealed.len() >= 3);
    let victim = &sealed[1];
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(victim, &bytes).unwrap();

    // check: corrupt, with the segment named; exit 1 from the CLI.
    let c = pixeld::tools::check::check_shard(0, &dir).unwrap();
    assert!(!c.is_ok());
    assert_eq!(c.corrupt.len(), 1, "{}", c.render());
    assert_eq!(&c.corrupt[0].0, victim);
    let out = Command::new(common::pixeld_bin())
        .args(["check", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("CORRUPT")
            && text.contains(&victim.file_name().unwrap().to_string_lossy().to_string()),
        "{text}"
    );

    // Readers skip the corrupt batch with a warning; everything else is readable.
    let (read, warns) = common::read_all(&dir, Start::Beginning);
    assert_eq!(warns.len(), 1, "{warns:#?}");
    let lost = match &warns[0] {
        Warning::Corrupt { range, .. } => range.resumes_at.unwrap() - range.expected_offset,
        w => panic!("unexpected {w:?}"),
    };
    assert!(lost > 0 && lost <= 8);
    assert_eq!(read.len() as u64, 200 - lost);
    let out = Command::new(common::pixeld_bin())
        .args(["replay", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        out.stdout.iter().filter(|&&b| b == b'\n').count() as u64,
        200 - lost
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt"));

    // Recovery: with the index gone, it is rebuilt, the corrupt range reported, the shard
    // opens and appends after the last offset.
    std::fs::remove_file(victim.with_extension("idx")).unwrap();
    let d = dir.clone();
    let report = common::run(move || async move {
        let policy = Retention {
            max_age: None,
            max_bytes: None,
        };
        let (log, flusher, report) = Log::open(config(&d, policy), Arc::new(ShardStats::default()))
            .await
            .unwrap();
        let f = glommio::spawn_local(flusher.run());
        assert_eq!(log.append(now_ns(), Source::IMPORT, 0, b"x"), Ok(200));
        log.close();
        f.await.unwrap();
        report
    });
    assert_eq!(report.indexes_rebuilt, 1);
    assert_eq!(report.corrupt.len(), 1);
    assert!(victim.with_extension("idx").exists());
}
