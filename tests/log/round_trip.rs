//! Append records of random sizes (0 B to 64 KiB) across several segment rolls, then read
//! them back: all of them, from random offsets and from random times, after a reopen too.

use std::sync::Arc;
use std::time::Duration;

use pixeld::log::reader::{list_segments, Start};
use pixeld::log::{Fsync, Log, LogConfig, Source};
use pixeld::metrics::ShardStats;
use rand::{Rng, SeedableRng};

use crate::common;

fn config(dir: &std::path::Path) -> LogConfig {
    let mut cfg = LogConfig::new(dir, 0);
    cfg.segment_max_bytes = 512 << 10;
    cfg.batch_max_bytes = 64 << 10;
    cfg.fsync = Fsync::Interval(Duration::from_millis(5));
    cfg.max_record_bytes = 64 << 10;
    cfg
}

#[test]
fn round_trip_across_segment_rolls_by_offset_and_time() {
    let tmp = common::tempdir();
    let dir = tmp.path().join("shard-000");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // Half tiny, half large records; timestamps strictly increasing, 1 µs apart.
    let n = 3000u64;
    let sizes: Vec<usize> = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                rng.gen_range(0..200)
            } else {
                rng.gen_range(0..=65536)
            }
        })
        .collect();
    // Receive times near now: segment age and retention are judged against the clock.
    let t0 = pixeld::sys::now_ns() - 10_000_000_000;
    let (cfg, sz) = (config(&dir), sizes.clone());
    let appended = common::run(move || async move {
        let (log, flusher, report) = Log::open(cfg, Arc::new(ShardStats::default()))
            .await
            .unwrap();
        assert_eq!(report.next_offset, 0);
        let flusher = glommio::spawn_local(flusher.run());
        for (i, len) in sz.iter().enumerate() {
            let bytes = common::record_bytes(0, i as u64, *len);
            loop {
                match log.append(t0 + i as u64 * 1000, Source::IMPORT, 0, &bytes) {
                    Ok(off) => {
                        assert_eq!(off, i as u64);
                        break;
                    }
                    Err(pixeld::log::AppendError::Backpressure) => {
                        glommio::timer::sleep(Duration::from_millis(1)).await
                    }
                    Err(e) => panic!("append: {e}"),
                }
            }
        }
        let last = log.next_offset() - 1;
        log.wait_durable(last).await.unwrap();
        log.close();
        flusher.await.unwrap();
        log.next_offset()
    });
    assert_eq!(appended, n);
    let (segments, foreign) = list_segments(&dir).unwrap();
    assert!(foreign.is_empty());
    assert!(
        segments.len() >= 5,
        "expected several rolls, got {} segments",
        segments.len()
    );
    for s in &segments[..segments.len() - 1] {
        assert!(
            s.index_path.exists(),
            "sealed segment without index: {}",
            s.path.display()
        );
    }

    let expect = |i: u64| common::record_bytes(0, i, sizes[i as usize]);
    let (all, warns) = common::read_all(&dir, Start::Beginning);
    assert!(warns.is_empty(), "{warns:?}");
    assert_eq!(all.len() as u64, n);
    for (i, (off, ts, bytes)) in all.iter().enumerate() {
        assert_eq!(*off, i as u64);
        assert_eq!(*ts, t0 + i as u64 * 1000);
        assert_eq!(*bytes, expect(i as u64), "record {i}");
    }
    for _ in 0..30 {
        let from = rng.gen_range(0..n);
        let (recs, warns) = common::read_all(&dir, Start::Offset(from));
        assert!(warns.is_empty());
        assert_eq!(recs.first().map(|r| r.0), Some(from));
        assert_eq!(recs.len() as u64, n - from);
        // By time: the first record at or after t0 + from µs is `from`.
        let (recs, _) = common::read_all(&dir, Start::Time(t0 + from * 1000));
        assert_eq!(recs.first().map(|r| r.0), Some(from));
        let (recs, _) = common::read_all(&dir, Start::Time(t0 + from * 1000 - 1));
        assert_eq!(recs.first().map(|r| r.0), Some(from));
        assert_eq!(recs.len() as u64, n - from);
    }
    // Read in slices that resume where the last stopped (the aggregates' catch-up does):
    // every record once, in order, whatever the slice size.
    let reader =
        pixeld::log::reader::ShardReader::new(dir.clone(), config(&dir).index_interval_bytes);
    for slice in [1u64, 7, 100, 1001] {
        let (mut next, mut resume, mut seen) = (0u64, None, Vec::new());
        while next < n {
            let mut taken = 0;
            reader
                .read_resumable(
                    Start::Offset(next),
                    &mut resume,
                    |r| {
                        seen.push(r.offset);
                        next = r.offset + 1;
                        taken += 1;
                        if taken == slice {
                            std::ops::ControlFlow::Break(())
                        } else {
                            std::ops::ControlFlow::Continue(())
                        }
                    },
                    |w| panic!("{w:?}"),
                )
                .unwrap();
            assert!(taken > 0, "slice {slice}: stuck at {next}");
        }
        assert_eq!(seen, (0..n).collect::<Vec<_>>(), "slice {slice}");
    }
    let (none, _) = common::read_all(&dir, Start::Offset(n));
    assert!(none.is_empty());
    let (none, _) = common::read_all(&dir, Start::Time(t0 + n * 1000));
    assert!(none.is_empty());

    // Reopen: offsets continue where they ended, and both runs read back.
    let cfg = config(&dir);
    common::run(move || async move {
        let (log, flusher, report) = Log::open(cfg, Arc::new(ShardStats::default()))
            .await
            .unwrap();
        assert_eq!(report.next_offset, n);
        assert_eq!(report.truncated_bytes, 0);
        assert_eq!(report.records, n);
        let flusher = glommio::spawn_local(flusher.run());
        assert_eq!(
            log.append(t0 + n * 1000, Source::IMPORT, 1, b"after reopen"),
            Ok(n)
        );
        log.close();
        flusher.await.unwrap();
    });
    let (all, warns) = common::read_all(&dir, Start::Offset(n - 1));
    assert!(warns.is_empty());
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].2, b"after reopen");
    let check = pixeld::tools::check::check_shard(0, &dir).unwrap();
    assert!(check.is_ok(), "{}", check.render());
    assert_eq!(check.records, n + 1);
}

#[test]
fn a_burst_leaves_only_a_few_batch_buffers_behind() {
    // Appends without yielding fill the write-behind queue with sealed batches (the flusher
    // runs only when the appender waits); once they are written, the log keeps a few
    // emptied buffers for the next batches and frees the rest, and says what it holds.
    let tmp = common::tempdir();
    let mut cfg = config(&tmp.path().join("shard-000"));
    cfg.batch_max_bytes = 16 << 10;
    cfg.max_pending_bytes = 4 << 20;
    let room = (16 << 10) + (64 << 10);
    let stats = Arc::new(ShardStats::default());
    let st = stats.clone();
    let (peak, after) = common::run(move || async move {
        let (log, flusher, _) = Log::open(cfg, st).await.unwrap();
        let flusher = glommio::spawn_local(flusher.run());
        let bytes = vec![b'x'; 1000];
        let mut last = 0;
        // About 3 MiB: some 190 sealed batches of 16 KiB, under max_pending_bytes.
        for i in 0..3000u64 {
            last = log.append(i, Source::IMPORT, 0, &bytes).unwrap();
        }
        let peak = log.buffer_bytes();
        log.wait_durable(last).await.unwrap();
        let after = log.buffer_bytes();
        log.close();
        flusher.await.unwrap();
        (peak, after)
    });
    assert!(peak > 100 * room, "{peak} bytes at the peak");
    assert!(
        after <= (1 + pixeld::log::SPARE_BUILDERS) * room,
        "{after} bytes after the burst"
    );
    let gauge = ShardStats::get(&stats.log_buffer_bytes) as usize;
    assert!(
        gauge > 0 && gauge <= (1 + pixeld::log::SPARE_BUILDERS) * room,
        "{gauge} bytes in the gauge"
    );
}
