//! Aggregate costs per core, on realistic data:
//!
//! - `agg/record`: one shard's whole per-event path after the log — syslog header + JSON
//!   event parse + routing + minute/hour cell updates + HLL insert (`Router::record`, one
//!   shard so every increment is applied locally) — in ns/event;
//! - `agg/record/…-without-visits`: the same with every event too late for visits (a zero
//!   `visit_late_allowance`): the difference is the cost of visits;
//! - `agg/apply`: applying already-routed increments (what an owner does per increment);
//! - `agg/hll_insert`: one uniques-sketch insert;
//! - `agg/query/*`: one shard's part of the two reference queries over 24 h of 100 000 urls
//!   (top-10 of the last hour; a 24 h minute series of one url). The memory per live
//!   (minute, url) cell of that data set is printed once.
//!
//! Run: `cargo bench --bench agg`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pixeld::agg::hll::Uniques;
use pixeld::agg::{AggConfig, Aggregates, Batch, Dim, IncKind};
use pixeld::metrics::ShardStats;
use pixeld::route::partition::vid_hash;
use pixeld::route::{now_minute, Router};
use pixeld::tools::gen::HitGenerator;

fn bench(c: &mut Criterion) {
    let now_ms = (now_minute() * 60_000) as u64;
    let mut g = HitGenerator::new(7, now_ms - 30 * 60_000);
    let mut body = Vec::new();
    let lines: Vec<Vec<u8>> = (0..10_000)
        .map(|_| {
            g.next_line(&mut body);
            let mut l = b"<190>Nov 22 01:39:03 pixel: ".to_vec();
            l.extend_from_slice(&body);
            l
        })
        .collect();
    let recv_ts = now_ms * 1_000_000;

    let mut group = c.benchmark_group("agg");
    group.throughput(Throughput::Elements(lines.len() as u64));
    let router = Router::new(
        Aggregates::new(AggConfig::default()),
        None,
        Arc::new(ShardStats::default()),
    );
    group.bench_function("record/10k-events", |b| {
        b.iter(|| {
            for l in &lines {
                router.record(recv_ts, black_box(l));
            }
        })
    });
    // The same inside a gather scope, as the ingest loops route a receive's records: the
    // increments are applied in chunks, each chunk's lookups first (`Aggregates::apply_batch`).
    group.bench_function("record/10k-events-gathered", |b| {
        b.iter(|| {
            let _gathered = router.gather();
            for l in &lines {
                router.record(recv_ts, black_box(l));
            }
        })
    });
    // The same without visits (every event later than a zero allowance): the difference is
    // what visits cost per event.
    let mut no_visits = AggConfig::default();
    no_visits.visits.late_allowance_ms = 0;
    let router_nv = Router::new(
        Aggregates::new(no_visits),
        None,
        Arc::new(ShardStats::default()),
    );
    group.bench_function("record/10k-events-without-visits", |b| {
        b.iter(|| {
            for l in &lines {
                router_nv.record(recv_ts, black_box(l));
            }
        })
    });

    let now = now_minute();
    let mut batch = Batch::default();
    for i in 0..10_000u64 {
        let url = format!("https://www.example.com/articles/{}", i % 5000);
        let kind = [IncKind::Url, IncKind::Ref, IncKind::Visitor][(i % 3) as usize];
        batch.push(
            kind,
            i % 4 != 0,
            now - (i % 30) as i64,
            0,
            "www.example.com",
            &url,
            Some(vid_hash(&i.to_string())),
        );
    }
    let mut agg = Aggregates::new(AggConfig::default());
    group.bench_function("apply/10k-increments", |b| {
        b.iter(|| agg.apply_batch(black_box(&batch), now))
    });
    let hashes: Vec<u64> = (0..10_000u64).map(|i| vid_hash(&i.to_string())).collect();
    group.bench_function("hll_insert/10k", |b| {
        b.iter(|| {
            let mut u: Uniques = Uniques::new();
            for &h in &hashes {
                u.insert_hash(h);
            }
            u
        })
    });
    group.finish();

    // 24 h of 100 000 urls: every minute holds the 4 000 most popular urls plus 2 000 of the
    // long tail (≈ 8.6 M live (minute, url) cells, the shape of Zipf traffic at ~10 k events/min).
    let mut agg = Aggregates::new(AggConfig::default());
    let urls: Vec<String> = (0..100_000)
        .map(|i| format!("https://site{}.example/articles/{i}", i % 8))
        .collect();
    let mut x = 1u64;
    for m in (now - 24 * 60)..now {
        let mut b = Batch::default();
        for (i, u) in urls.iter().take(4000).enumerate() {
            b.push(IncKind::Url, true, m, 0, "site.example", u, None);
            if i < 100 {
                b.push(IncKind::Url, true, m, 0, "site.example", u, None);
            }
        }
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = &urls[4000 + (x % 96_000) as usize];
            b.push(IncKind::Url, true, m, 0, "site.example", u, None);
        }
        agg.apply_batch(&b, now);
    }
    let mem = agg.memory();
    println!(
        "agg memory: {} live url cells (minute + hour tiers), {:.1} bytes per url cell (tables), {} MiB in all",
        mem.url_cells,
        mem.url_cell_bytes as f64 / mem.url_cells.max(1) as f64,
        mem.bytes >> 20
    );
    let mut group = c.benchmark_group("agg/query");
    group.bench_function("top10_last_hour/100k-urls", |b| {
        b.iter(|| black_box(agg.top(Dim::Url, now - 60, now + 1, None, 10)))
    });
    let one = &urls[17];
    group.bench_function("series_24h_1m_one_url/100k-urls", |b| {
        b.iter(|| {
            let mut v = Vec::with_capacity(1440);
            for m in (now - 1440)..now {
                v.push(agg.url_totals(m, m + 1, black_box(one), None));
            }
            v
        })
    });
    group.bench_function("totals_24h", |b| {
        b.iter(|| black_box(agg.totals(now - 1440, now + 1, None)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
