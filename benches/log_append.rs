//! Log append throughput per shard: records/s and MB/s for ~250-byte nginx JSON lines.
//!
//! - `encode/zstd-N`: batch building + zstd level N + CRC, in memory (the CPU cost);
//! - `append/zstd-N`: the whole path on a glommio executor — `Log::append`, sealing,
//!   compression, CRC, O_DIRECT write through io_uring, fsync every 50 ms — into a directory
//!   under target/ (a real disk).
//!
//! Levels 1 and 3, and -3 (zstd "fast" mode, for boxes where compression is the bottleneck).
//! The compression ratio is printed once per level. Run: `cargo bench --bench log_append`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glommio::{LocalExecutorBuilder, Placement};
use pixeld::log::format::{BatchBuilder, BatchEncoder, Codec};
use pixeld::log::{AppendError, Log, LogConfig, Source};
use pixeld::metrics::ShardStats;
use pixeld::sys::now_ns;
use pixeld::tools::gen::HitGenerator;

fn lines(n: usize) -> Vec<Vec<u8>> {
    // Event times near now, like the receive times the records get.
    let mut g = HitGenerator::new(42, now_ns() / 1_000_000);
    (0..n)
        .map(|_| {
            let mut v = Vec::new();
            g.next_line(&mut v);
            v
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let data = lines(4096);
    let avg = data.iter().map(Vec::len).sum::<usize>() / data.len();
    eprintln!("average line: {avg} bytes");
    let mut group = c.benchmark_group("log");
    for level in [1, 3, -3] {
        // Compression ratio on a full 256 KiB batch.
        let mut b = BatchBuilder::default();
        let mut enc = BatchEncoder::new(Codec::Zstd, level).unwrap();
        let mut out = Vec::new();
        let mut raw = 0;
        for l in data.iter().cycle().take(1000) {
            b.push(now_ns(), Source::IMPORT, 0, l);
            raw += l.len();
        }
        enc.encode(&mut b, 0, &mut out).unwrap();
        eprintln!(
            "zstd level {level}: {raw} line bytes -> {} bytes on disk, ratio {:.1}",
            out.len(),
            raw as f64 / out.len() as f64
        );

        group.throughput(Throughput::Elements(1000));
        group.bench_function(format!("encode/zstd-{level}/1000-records"), |bch| {
            let mut b = BatchBuilder::default();
            let mut enc = BatchEncoder::new(Codec::Zstd, level).unwrap();
            let mut out = Vec::with_capacity(1 << 20);
            let ts = now_ns();
            bch.iter(|| {
                out.clear();
                for l in data.iter().take(1000) {
                    b.push(ts, Source::IMPORT, 0, l);
                }
                enc.encode(&mut b, 0, &mut out).unwrap();
            });
        });

        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("append/zstd-{level}/record"), |bch| {
            bch.iter_custom(|iters| append_run(&data, level, iters));
        });
    }
    group.finish();
}

/// Appends `iters` records through the real log on a fresh executor; returns the time from
/// the first append until everything is written and fsynced.
fn append_run(data: &[Vec<u8>], level: i32, iters: u64) -> Duration {
    let data = data.to_vec();
    LocalExecutorBuilder::new(Placement::Fixed(0))
        .spawn(move || async move {
            let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
            let mut cfg = LogConfig::new(tmp.path().join("shard-000"), 0);
            cfg.zstd_level = level;
            let (log, flusher, _) = Log::open(cfg, Arc::new(ShardStats::default()))
                .await
                .unwrap();
            let flusher = glommio::spawn_local(flusher.run());
            let t0 = Instant::now();
            let ts = now_ns();
            let mut i = 0u64;
            while i < iters {
                let line = &data[(i % data.len() as u64) as usize];
                match log.append(ts, Source::IMPORT, 0, line) {
                    Ok(_) => i += 1,
                    // Let the flusher drain the queue, as a socket read would.
                    Err(AppendError::Backpressure) => log.wait_for_space().await.unwrap(),
                    Err(e) => panic!("{e}"),
                }
                // An ingest task yields after each receive batch (it awaits its socket), which
                // lets the flusher compress batches while they are still in cache.
                if i.is_multiple_of(256) {
                    futures_lite::future::yield_now().await;
                }
            }
            log.close();
            flusher.await.unwrap();
            t0.elapsed()
        })
        .unwrap()
        .join()
        .unwrap()
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(8));
    targets = bench
}
criterion_main!(benches);
