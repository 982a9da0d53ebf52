//! Checkpoints of one owner shard's aggregates, tied to log offsets (the files are
//! `agg::store`'s): every `agg.checkpoint_interval` once the catch-up after a start is
//! complete, and once more at a clean stop.
//!
//! A checkpoint is exact: what it writes is copied on the shard's executor between two
//! increments, together with the applied vector at that instant ([`Router::applied_vector`]),
//! so the state is exactly "every record of source `s` below `applied[s]`"; the copy is
//! encoded on glommio's blocking pool, off the executor. It is written only
//! once each of those offsets is durable in its source's log (the sources publish their
//! durable offsets in `ShardStats`): a crash can lose the tail of a log that was not yet
//! fsynced, and a checkpoint must never hold increments of records the log does not. The
//! write itself is the log's durable small-file write (temp, fdatasync, rename, directory
//! fsync) on this executor; the wait polls and never blocks a peer.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::path::PathBuf;

use super::Router;
use crate::agg::store::{Pending, StoreError, Writer};
use crate::agg::Res;
use crate::metrics::ShardStats;

/// How long a checkpoint waits for the sources' logs to make its offsets durable.
const DURABLE_WAIT: Duration = Duration::from_secs(30);

/// Why a checkpoint was not written (the previous one stays valid).
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "shard {source_shard}'s log did not make offset {offset} durable within {DURABLE_WAIT:?}"
    )]
    NotDurable { source_shard: usize, offset: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Takes one checkpoint now (when anything changed); Ok(false) when there was nothing to
/// write. Hours and days that closed are sealed into their files by it (written before the
/// checkpoint that lists them, mapped once it is durable; handed back to memory if it fails),
/// and sealed files that left their window are deleted once it no longer lists them.
pub async fn checkpoint_once(
    router: &Rc<Router>,
    writer: &mut Writer,
    all_stats: &[Arc<ShardStats>],
    durable_wait: Duration,
) -> Result<bool, CheckpointError> {
    let s = &router.stats.agg;
    let t = Instant::now();
    let now_min = super::now_minute();
    let applied = router.applied_vector();
    let (snapshot, retired) = {
        let mut agg = router.agg.borrow_mut();
        if !agg.is_dirty(now_min) && writer.written_applied() == Some(applied.as_slice()) {
            return Ok(false);
        }
        let snap = writer.snapshot(&mut agg, applied, now_min);
        (snap, agg.take_retired())
    };
    // The executor is held only for the copy; the encode runs on glommio's blocking pool (a
    // thread that is not pinned), so ingest and queries go on meanwhile.
    let held = t.elapsed().as_nanos() as u64;
    s.checkpoint_max_nanos.fetch_max(held, Ordering::Relaxed);
    let mut pending = glommio::executor()
        .spawn_blocking(move || snapshot.encode())
        .await;
    ShardStats::add(&s.checkpoint_nanos, t.elapsed().as_nanos() as u64);
    let written = match write(&pending, writer, all_stats, durable_wait).await {
        Ok(w) => w,
        Err(e) => {
            let mut agg = router.agg.borrow_mut();
            agg.seals_failed(std::mem::take(&mut pending.seals));
            agg.retire(retired);
            return Err(e);
        }
    };
    // Mapping reads every byte of the new files (the CRC): off the executor too.
    let (owner, names) = (router.shard() as u32, router.agg.borrow().name_counts());
    let opened = if written.is_empty() {
        Vec::new()
    } else {
        glommio::executor()
            .spawn_blocking(move || crate::agg::seal::open_sealed_files(&written, owner, names))
            .await
    };
    let problems = router.agg.borrow_mut().seals_mapped(opened);
    for p in &problems {
        eprintln!("pixeld: shard {}: {p}", router.shard());
    }
    ShardStats::add(&s.store_problems, problems.len() as u64);
    for path in retired {
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "pixeld: shard {}: cannot delete {}, which left its window: {e}",
                    router.shard(),
                    path.display()
                );
            }
        }
    }
    ShardStats::add(&s.checkpoints, 1);
    ShardStats::add(&s.checkpoint_bytes, pending.len() as u64);
    s.checkpoint_last_ns
        .store(crate::sys::now_ns(), Ordering::Relaxed);
    Ok(true)
}

/// Waits until the sources' logs made `pending`'s offsets durable, then writes it.
async fn write(
    pending: &Pending,
    writer: &mut Writer,
    all_stats: &[Arc<ShardStats>],
    durable_wait: Duration,
) -> Result<Vec<(Res, i64, PathBuf)>, CheckpointError> {
    let deadline = Instant::now() + durable_wait;
    for (src, &offset) in pending.applied.iter().enumerate() {
        let Some(stats) = all_stats.get(src) else {
            continue;
        };
        while offset > 0 && stats.durable_offset().is_none_or(|d| d + 1 < offset) {
            if Instant::now() >= deadline {
                return Err(CheckpointError::NotDurable {
                    source_shard: src,
                    offset: offset - 1,
                });
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(writer.commit(pending).await?)
}

/// Checkpoints as soon as this owner's catch-up is complete, then every `interval`, until
/// `stop`;
/// returns the writer for the last checkpoint at the clean stop. A failure is reported on
/// stderr (once until a checkpoint succeeds again) and counted; the next one is a base.
pub async fn run(
    router: Rc<Router>,
    mut writer: Writer,
    all_stats: Arc<Vec<Arc<ShardStats>>>,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> Writer {
    let mut last: Option<Instant> = None;
    let mut failing = false;
    let tick = (interval / 4).clamp(Duration::from_millis(10), Duration::from_millis(50));
    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(tick).await;
        // The first checkpoint as soon as the catch-up is complete (so that a restart after
        // a long rebuild does not redo it), then every `interval`.
        if !router.complete() || last.is_some_and(|l| l.elapsed() < interval) {
            continue;
        }
        last = Some(Instant::now());
        match checkpoint_once(&router, &mut writer, &all_stats, DURABLE_WAIT).await {
            Ok(_) => {
                if failing {
                    eprintln!(
                        "pixeld: shard {}: checkpoints of the aggregates are written again",
                        router.shard()
                    );
                }
                failing = false;
            }
            Err(e) => {
                ShardStats::add(&router.stats.agg.checkpoint_failures, 1);
                if !failing {
                    eprintln!(
                        "pixeld: shard {}: checkpoint of the aggregates failed: {e}; the previous checkpoint stays \
                         (a restart replays more of the log), retrying every {interval:?}",
                        router.shard()
                    );
                }
                failing = true;
            }
        }
    }
    writer
}

/// The last checkpoint at a clean stop (after the log is closed and synced): skipped when the
/// catch-up had not completed (the previous checkpoint stays, and the next start replays from
/// it). Reports on stderr.
pub async fn at_stop(router: &Rc<Router>, writer: &mut Writer, all_stats: &[Arc<ShardStats>]) {
    if !router.complete() {
        eprintln!(
            "pixeld: shard {}: stopping before the aggregates caught up; no checkpoint (the next start replays from the previous one)",
            router.shard()
        );
        return;
    }
    match checkpoint_once(router, writer, all_stats, Duration::from_secs(10)).await {
        Ok(_) => {}
        Err(e) => {
            ShardStats::add(&router.stats.agg.checkpoint_failures, 1);
            eprintln!(
                "pixeld: shard {}: checkpoint at stop failed: {e}; the next start replays from the previous one",
                router.shard()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::agg::store::format::{decode_into, encode, Header, Kind};
    use crate::agg::{AggConfig, Aggregates, Inc, Res};
    use crate::metrics::AggStats;
    use crate::parse::event::EventParser;
    use crate::route::{increments, Window};
    use crate::tools::gen::{GenConfig, HitGenerator};
    use proptest::prelude::*;

    /// Every owner's increments of `lines`, in log order: (owner, inc, site, key).
    type Incs = Vec<(usize, Inc, String, String, String)>;

    fn increments_of(lines: &[Vec<u8>], shards: usize, window: Window, recv_ns: u64) -> Vec<Incs> {
        let cfg = AggConfig::default();
        let mut parser = EventParser::new(cfg.event.clone());
        let stats = AggStats::default();
        lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let mut out = Vec::new();
                // Source shard: the record was appended round-robin.
                increments(
                    &mut parser,
                    &stats,
                    window,
                    (
                        i % shards,
                        shards,
                        &crate::route::partition::Epochs::default(),
                    ),
                    recv_ns,
                    line,
                    |o, inc, site, key, aux| {
                        out.push((o, inc, site.into(), key.into(), aux.into()))
                    },
                );
                out
            })
            .collect()
    }

    fn apply(agg: &mut Aggregates, owner: usize, incs: &[Incs], now: i64) {
        for (o, inc, site, key, aux) in incs.iter().flatten() {
            if *o == owner {
                agg.apply(inc, site, key, aux, now);
            }
        }
    }

    fn same(a: &Aggregates, b: &Aggregates) -> Result<(), TestCaseError> {
        for res in [Res::Minute, Res::Hour, Res::Day] {
            for n in a.bucket_numbers_of_both(b, res) {
                prop_assert_eq!(
                    a.bucket_lines(res, n),
                    b.bucket_lines(res, n),
                    "{:?} bucket {}",
                    res,
                    n
                );
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// A checkpoint (base at one random point, delta at a later one) plus the replay of
        /// the rest equals a rebuild of the whole log: same names, counts and sketch
        /// registers, for every owner, with late events and 1–4 shards.
        #[test]
        fn checkpoint_plus_replay_equals_a_rebuild(
            seed in any::<u64>(),
            shards in 1usize..=4,
            n in 200usize..5000,
            cut1 in 0.0f64..1.0,
            cut2 in 0.0f64..1.0,
        ) {
            let now_ms = 30_000_000u64 * 60_000; // fixed-date: windows follow `now` below
            let gen_cfg = GenConfig {
                // Mostly distinct visitors: hours of more than 1536 turn into sketches.
                visitors: 100_000,
                urls_per_site: 50,
                late_share: 0.2,
                late_max_ms: 3 * 3_600_000,
                // Two hours of event time over the lines: minute and hour tiers both used.
                ms_per_event: 2.0 * 3_600_000.0 / n as f64,
                ..GenConfig::default()
            };
            let start = now_ms - 2 * 3_600_000;
            let mut g = HitGenerator::with_config(seed, start, gen_cfg);
            let lines: Vec<Vec<u8>> = (0..n).map(|_| { let mut l = Vec::new(); g.next_line(&mut l); l }).collect();
            let cfg = AggConfig::default();
            let now = (now_ms / 60_000) as i64;
            let probe = Aggregates::new(cfg.clone());
            let window = Window::at(&probe, now);
            let incs = increments_of(&lines, shards, window, now_ms * 1_000_000);
            // The generated lines parse and reach both tiers.
            prop_assert!(incs.iter().map(Vec::len).sum::<usize>() >= 2 * n);
            let (a, b) = {
                let (x, y) = ((cut1 * n as f64) as usize, (cut2 * n as f64) as usize);
                (x.min(y), x.max(y))
            };
            for owner in 0..shards {
                let mut full = Aggregates::new(cfg.clone());
                apply(&mut full, owner, &incs, now);

                let mut live = Aggregates::new(cfg.clone());
                apply(&mut live, owner, &incs[..a], now);
                let header = |kind, seq, parent| Header {
                    version: crate::agg::store::format::VERSION,
                    kind, shards: shards as u32, owner: owner as u32, seq, parent,
                    fingerprint: 1, written_ns: 0, applied: vec![0; shards],
                };
                let base = encode(&mut live, &header(Kind::Base, 1, 0));
                apply(&mut live, owner, &incs[a..b], now);
                let delta = encode(&mut live, &header(Kind::Delta, 2, 1));

                let mut restored = Aggregates::new(cfg.clone());
                let loaded = decode_into(&base, &mut restored)
                    .and_then(|_| decode_into(&delta, &mut restored));
                prop_assert!(loaded.is_ok(), "{:?}", loaded);
                apply(&mut restored, owner, &incs[b..], now);
                same(&restored, &full)?;
                // The state that wrote them, going on, agrees too.
                apply(&mut live, owner, &incs[b..], now);
                same(&live, &full)?;
            }
        }
    }
}
