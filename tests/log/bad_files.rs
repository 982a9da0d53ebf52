//! Foreign, truncated, zero-filled and random files in a data dir: never a panic; the shard
//! starts, `check` reports what is wrong, replay serves everything readable.

use std::process::Command;
use std::sync::Arc;

use pixeld::log::format::Codec;
use pixeld::log::reader::{list_segments, Start};
use pixeld::log::{Fsync, Log, LogConfig, Source};
use pixeld::metrics::ShardStats;
use pixeld::sys::now_ns;
use rand::{Rng, SeedableRng};

use crate::common;

fn config(dir: &std::path::Path) -> LogConfig {
    let mut cfg = LogConfig::new(dir, 0);
    cfg.codec = Codec::Zstd;
    cfg.batch_max_bytes = 4 << 10;
    cfg.segment_max_bytes = 16 << 10;
    cfg.fsync = Fsync::EveryBatch;
    cfg
}

fn write(dir: &std::path::Path, n: u64) {
    let cfg = config(dir);
    common::run(move || async move {
        let (log, flusher, _) = Log::open(cfg, Arc::new(ShardStats::default()))
            .await
            .unwrap();
        let f = glommio::spawn_local(flusher.run());
        for i in 0..n {
            log.append(
                now_ns(),
                Source::IMPORT,
                0,
                &common::record_bytes(3, i, 3000),
            )
            .unwrap();
            if i % 2 == 1 {
                log.wait_durable(i).await.unwrap();
            }
        }
        log.close();
        f.await.unwrap();
    });
}

#[test]
fn damaged_files_never_panic_and_are_reported() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let dir = data.join("shard-000");
    write(&dir, 60);
    let (segs, _) = list_segments(&dir).unwrap();
    assert!(segs.len() >= 5, "{} segments", segs.len());
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    // Sealed segment 1: zero-filled. Segment 2: its index truncated. Segment 3: random bytes
    // over its middle. Plus foreign files.
    let len1 = std::fs::metadata(&segs[1].path).unwrap().len() as usize;
    std::fs::write(&segs[1].path, vec![0u8; len1]).unwrap();
    let idx = std::fs::read(&segs[2].index_path).unwrap();
    std::fs::write(&segs[2].index_path, &idx[..10]).unwrap();
    let mut b3 = std::fs::read(&segs[3].path).unwrap();
    let mid = b3.len() / 3;
    for x in &mut b3[mid..mid + 500] {
        *x = rng.gen();
    }
    std::fs::write(&segs[3].path, &b3).unwrap();
    std::fs::write(dir.join("README.txt"), b"not a segment").unwrap();
    std::fs::write(dir.join("00000000000000000abc.log"), b"bad name").unwrap();
    std::fs::create_dir_all(data.join("shard-zzz")).unwrap();
    std::fs::write(data.join("notes"), b"x").unwrap();

    // check: reports, exit 1, no panic.
    let out = Command::new(common::pixeld_bin())
        .args(["check", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.matches("CORRUPT ").count() >= 2, "{text}");
    assert!(text.contains("foreign file"), "{text}");

    // The shard starts and appends continue. Sealed segments with an intact index are trusted
    // at start (they were fsynced when sealed; a crash cannot tear them), so only the one
    // with the damaged index is rescanned; `check` and readers find the rest.
    let d = dir.clone();
    let report = common::run(move || async move {
        let (log, flusher, report) = Log::open(config(&d), Arc::new(ShardStats::default()))
            .await
            .unwrap();
        let f = glommio::spawn_local(flusher.run());
        assert_eq!(
            log.append(now_ns(), Source::IMPORT, 0, b"still alive"),
            Ok(60)
        );
        log.close();
        f.await.unwrap();
        report
    });
    assert_eq!(report.indexes_rebuilt, 1);
    assert_eq!(report.foreign_files.len(), 2, "{:?}", report.foreign_files);

    // Replay serves every readable record, in order, and warns about the rest.
    let (recs, warns) = common::read_all(&dir, Start::Beginning);
    assert!(!warns.is_empty());
    assert_eq!(recs.last().unwrap().2, b"still alive");
    assert!(recs.windows(2).all(|w| w[0].0 < w[1].0));
    for (o, _, b) in &recs[..recs.len() - 1] {
        assert_eq!(*b, common::record_bytes(3, *o, 3000), "record {o}");
    }
    assert!(
        recs.len() > 30 && recs.len() < 61,
        "{} readable",
        recs.len()
    );
    let out = Command::new(common::pixeld_bin())
        .args(["replay", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
}
