//! How long folding one busy minute into its hour holds a shard: the whole minute at once
//! (`Aggregates::fold_minutes`, what every fold was before) against the ticker's passes
//! (`Aggregates::fold_ended` with `agg::FOLD_SLICE`, a minute with many url cells taken in
//! slices: `agg::cells::UrlFold`). The minute is built from generated lines through the
//! shard's real per-event path (`Router::record`, one shard); both states are built alike,
//! round after round, interleaved. Printed per size: the longest single pass (what the
//! shard's other work waits for), the total time and the number of passes, medians and
//! ranges over the rounds.
//!
//! Run: `cargo bench --bench fold` (`PIXELD_BENCH_EVENTS=N` for one size instead of the
//! three: 300 000, 1 000 000 and 3 000 000 events in one minute; `PIXELD_BENCH_ROUNDS`,
//! default 3). Under `cargo test --all-targets` (no `--bench`) it only checks, on 20 000
//! events, that both ways leave the same hour.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pixeld::agg::{AggConfig, Aggregates, Res, FOLD_SLICE};
use pixeld::metrics::ShardStats;
use pixeld::route::{now_minute, Router};
use pixeld::tools::gen::{GenConfig, HitGenerator};

/// A shard's aggregates holding `n` events in the minute three minutes ago, of up to
/// `urls` pages per site and as many visitors as events.
fn busy_minute(n: usize, urls: u64, now_min: i64) -> Aggregates {
    let cfg = GenConfig {
        urls_per_site: urls,
        visitors: n as u64,
        ms_per_event: 55_000.0 / n as f64,
        ..GenConfig::default()
    };
    let mut g = HitGenerator::with_config(7, ((now_min - 3) * 60_000) as u64, cfg);
    let router = Router::new(
        Aggregates::new(AggConfig::default()),
        None,
        Arc::new(ShardStats::default()),
    );
    let recv_ts = (now_min * 60_000) as u64 * 1_000_000;
    let mut body = Vec::new();
    {
        let _gathered = router.gather();
        for _ in 0..n {
            g.next_line(&mut body);
            router.record(recv_ts, &body);
        }
    }
    let agg = std::mem::replace(
        &mut *router.agg.borrow_mut(),
        Aggregates::new(AggConfig::default()),
    );
    agg
}

/// Folds the ended minutes of `agg` whole or as the ticker does; returns the longest
/// pass, the total (ms) and the number of passes.
fn fold(agg: &mut Aggregates, now_min: i64, sliced: Option<Duration>) -> (f64, f64, usize) {
    let started = Instant::now();
    let Some(slice) = sliced else {
        agg.fold_minutes(now_min - 1, usize::MAX);
        let ms = started.elapsed().as_secs_f64() * 1e3;
        return (ms, ms, 1);
    };
    let (mut longest, mut passes) = (0f64, 0);
    loop {
        let pass = Instant::now();
        agg.fold_ended(now_min - 1, slice);
        longest = longest.max(pass.elapsed().as_secs_f64() * 1e3);
        passes += 1;
        if !agg.folding() {
            return (longest, started.elapsed().as_secs_f64() * 1e3, passes);
        }
    }
}

fn median_range(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "{:.1} [{:.1} – {:.1}]",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1]
    )
}

fn main() {
    let now_min = now_minute();
    if !std::env::args().any(|a| a == "--bench") {
        let (mut a, mut b) = (
            busy_minute(20_000, 20_000, now_min),
            busy_minute(20_000, 20_000, now_min),
        );
        // One partition per pass.
        let (_, _, passes) = fold(&mut a, now_min, Some(Duration::ZERO));
        fold(&mut b, now_min, None);
        assert!(passes > 1, "20 000 events fold in slices");
        let h = (now_min - 3).div_euclid(60);
        assert_eq!(a.bucket_lines(Res::Hour, h), b.bucket_lines(Res::Hour, h));
        return;
    }
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
    let sizes = env("PIXELD_BENCH_EVENTS").map_or(vec![300_000, 1_000_000, 3_000_000], |n| vec![n]);
    let rounds = env("PIXELD_BENCH_ROUNDS").unwrap_or(3).max(1);
    println!("events in the minute | url cells | fold | longest pass, ms | total, ms | passes");
    for n in sizes {
        let mut rows: [(Vec<f64>, Vec<f64>, Vec<f64>); 2] = Default::default();
        let mut cells = 0;
        for round in 0..rounds {
            for i in 0..2 {
                // Interleaved, the order alternating by round.
                let sliced = (i + round) % 2 == 0;
                let mut agg = busy_minute(n, (n as u64 / 30).max(1000), now_min);
                cells = agg.memory().url_cells;
                let (longest, total, passes) =
                    fold(&mut agg, now_min, sliced.then_some(FOLD_SLICE));
                let r = &mut rows[usize::from(sliced)];
                r.0.push(longest);
                r.1.push(total);
                r.2.push(passes as f64);
            }
        }
        for (sliced, r) in rows.into_iter().enumerate() {
            let how = if sliced == 1 { "in passes" } else { "whole" };
            println!(
                "{n} | {cells} | {how} | {} | {} | {}",
                median_range(r.0),
                median_range(r.1),
                median_range(r.2)
            );
        }
    }
}
