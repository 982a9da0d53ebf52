//! The catch-up at shard start: this shard's log replayed from where the owners' loaded
//! checkpoints stop (or from the hour window's start when an owner loaded none) up to the
//! log's end at open, through the same [`Router`] as live records, while ingest already runs
//! beside it. Each owner gets only the increments its checkpoint does not hold; the replay
//! ends with `Rebuilt(end)` to every peer, and this shard's aggregates are complete once every
//! peer's has arrived.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::*;

/// Records replayed between two yields to the executor (so that live ingest, queries and the
/// rings keep running during a long catch-up).
const REPLAY_SLICE: u64 = 8192;

/// Where the replay of this shard's log starts.
#[derive(Debug, Clone, Copy)]
pub enum ReplayFrom {
    /// Every owner loaded a checkpoint: the lowest offset any of them still needs.
    Offset(u64),
    /// Some owner loaded nothing: everything received inside the hour window.
    Window,
}

impl ReplayFrom {
    /// The first offset the replay needs (0 for the window: it is found by time).
    fn offset(self) -> u64 {
        match self {
            ReplayFrom::Offset(o) => o,
            ReplayFrom::Window => 0,
        }
    }
}

/// What a catch-up did.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchUp {
    pub replayed: u64,
    /// Records the replay needed but retention had deleted.
    pub missing: u64,
    pub seconds: f64,
}

/// Replays this shard's log from `from` up to `end` (the log's end at open), routing each
/// record like a live one to the owners that do not hold it yet, then tells every peer and
/// waits until every peer has done the same. Progress goes to stderr every 5 s and to the
/// `catchup_records` gauge. Returns early (incomplete) on `stop`.
pub async fn rebuild(
    router: &Rc<Router>,
    log: &Log,
    from: ReplayFrom,
    end: u64,
    stop: &AtomicBool,
) -> Result<CatchUp, crate::log::Error> {
    let started = Instant::now();
    let cfg = log.config();
    let reader = ShardReader::new(cfg.dir.clone(), cfg.index_interval_bytes);
    let mut start = match from {
        ReplayFrom::Offset(o) => Start::Offset(o),
        ReplayFrom::Window => {
            let (floor_min, future) = {
                let a = router.agg.borrow();
                (a.day_floor(now_minute()), a.cfg.future_minutes)
            };
            Start::Time(((floor_min - future).max(0) as u64) * 60_000_000_000)
        }
    };
    let mut first: Option<u64> = None;
    let mut replayed = 0u64;
    // Where the last slice stopped, so that the next starts there without a search.
    let mut resume = None;
    let mut last_report = Instant::now();
    let gauge = &router.stats.agg.catchup_records;
    let left_from = |next: u64| end.saturating_sub(next);
    gauge.store(left_from(from.offset()), Ordering::Relaxed);
    // One pass over the log in slices; between slices (and when a ring to another shard is
    // full) it yields, so that ingest and queries run beside it.
    loop {
        let mut next = None;
        let mut paused = false;
        let mut in_slice = 0u64;
        // The slice's own increments are applied together, at the latest when it ends.
        let gathered = router.gather();
        let read = reader.read_resumable(
            start,
            &mut resume,
            |rec| {
                if rec.offset >= end {
                    return std::ops::ControlFlow::Break(());
                }
                first.get_or_insert(rec.offset);
                router.replayed(rec.offset, rec.recv_ts, rec.bytes);
                replayed += 1;
                in_slice += 1;
                next = Some(rec.offset + 1);
                if in_slice >= REPLAY_SLICE
                    || (replayed.is_multiple_of(1024) && !router.try_ship())
                    || stop.load(Ordering::Relaxed)
                {
                    paused = true;
                    return std::ops::ControlFlow::Break(());
                }
                std::ops::ControlFlow::Continue(())
            },
            |w| log.report_read_warning(&w, "replaying the log into the aggregates"),
        );
        drop(gathered);
        read?;
        // Only the catch-up counts these.
        router
            .stats
            .agg
            .rebuilt_records
            .store(replayed, Ordering::Relaxed);
        if let Some(n) = next {
            gauge.store(left_from(n), Ordering::Relaxed);
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            let rate = replayed as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let left = next.map_or(0, left_from);
            eprintln!(
                "pixeld: shard {}: catching up the aggregates: {replayed} records replayed ({rate:.0}/s), {left} to go, ETA {:.0} s",
                router.me,
                left as f64 / rate.max(1.0)
            );
        }
        router.flush(BATCH_INCS).await;
        if stop.load(Ordering::Relaxed) {
            return Ok(CatchUp {
                replayed,
                ..CatchUp::default()
            });
        }
        match next {
            Some(o) if paused => {
                start = Start::Offset(o);
                futures_lite::future::yield_now().await;
            }
            _ => break,
        }
    }
    gauge.store(0, Ordering::Relaxed);
    // Records below the first one read that the replay needed were deleted by retention.
    let missing = match (from, first) {
        (ReplayFrom::Offset(o), Some(f)) if f > o => f - o,
        (ReplayFrom::Offset(o), None) if end > o => end - o,
        _ => 0,
    };
    if missing > 0 {
        ShardStats::add(&router.stats.agg.catchup_missing, missing);
        eprintln!(
            "pixeld: shard {}: {missing} records after the newest checkpoint were already deleted by retention \
             (offsets {}..{}); the aggregates miss them. Checkpoints run every agg.checkpoint_interval: \
             keep log.retention well above it",
            router.me,
            from.offset(),
            first.unwrap_or(end)
        );
    }
    router.announce_rebuilt(end).await;
    // Wait for every peer's replay (their increments to us arrive before their marker).
    while router.rebuilt_peers.get() + 1 < router.shards {
        if stop.load(Ordering::Relaxed) {
            return Ok(CatchUp {
                replayed,
                missing,
                ..CatchUp::default()
            });
        }
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
    router.publish_memory();
    let seconds = started.elapsed().as_secs_f64();
    router
        .stats
        .agg
        .rebuild_nanos
        .store((seconds * 1e9) as u64, Ordering::Relaxed);
    Ok(CatchUp {
        replayed,
        missing,
        seconds,
    })
}
