//! The rebuild at shard start: this shard's share of the aggregates replayed from its own log
//! through the same [`Router`] as live records, then a wait until every peer has done the
//! same, so that the aggregates are complete before the shard reports ready.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::*;

/// Rebuilds this shard's share of the aggregates from its log: replays every record received
/// inside the hour window (plus the future allowance) up to `end`, routing it like a live one,
/// then waits until every peer has done the same, so that the aggregates are complete before
/// the shard reports ready. Progress goes to stderr every 5 s.
pub async fn rebuild(
    router: &Rc<Router>,
    log: &Log,
    stop: &AtomicBool,
) -> Result<u64, crate::log::Error> {
    let started = Instant::now();
    let cfg = log.config();
    let reader = ShardReader::new(cfg.dir.clone(), cfg.index_interval_bytes);
    let end = log.next_offset();
    let (floor_min, future) = {
        let a = router.agg.borrow();
        (a.hour_floor(now_minute()), a.cfg.future_minutes)
    };
    let from_ns = ((floor_min - future).max(0) as u64) * 60_000_000_000;
    let mut start = Start::Time(from_ns);
    let mut first: Option<u64> = None;
    let mut replayed = 0u64;
    let mut last_report = Instant::now();
    // One pass over the log; it pauses (and resumes by offset) only when a ring to another
    // shard is full, to wait for room, or to stop.
    loop {
        let mut next = None;
        let mut paused = false;
        reader.read(
            start,
            |rec| {
                if rec.offset >= end {
                    return std::ops::ControlFlow::Break(());
                }
                first.get_or_insert(rec.offset);
                router.record(rec.recv_ts, rec.bytes);
                replayed += 1;
                next = Some(rec.offset + 1);
                if replayed.is_multiple_of(1024) {
                    if last_report.elapsed() >= Duration::from_secs(5) {
                        last_report = Instant::now();
                        let rate = replayed as f64 / started.elapsed().as_secs_f64().max(1e-9);
                        let left = end.saturating_sub(first.unwrap_or(end) + replayed);
                        eprintln!(
                            "pixeld: shard {}: rebuilding aggregates: {replayed} records replayed ({:.0}/s), {left} to go, ETA {:.0} s",
                            router.me,
                            rate,
                            left as f64 / rate.max(1.0)
                        );
                    }
                    if !router.try_ship() || stop.load(Ordering::Relaxed) {
                        paused = true;
                        return std::ops::ControlFlow::Break(());
                    }
                }
                std::ops::ControlFlow::Continue(())
            },
            |w| log.report_read_warning(&w, "rebuilding the aggregates"),
        )?;
        ShardStats::add(
            &router.stats.agg.rebuilt_records,
            replayed - ShardStats::get(&router.stats.agg.rebuilt_records),
        );
        router.flush(BATCH_INCS).await;
        if stop.load(Ordering::Relaxed) {
            return Ok(replayed);
        }
        match next {
            Some(o) if paused => start = Start::Offset(o),
            _ => break,
        }
    }
    router.announce_rebuilt().await;
    // Wait for every peer's rebuild (their increments to us arrive before their marker).
    while router.rebuilt_peers.get() + 1 < router.shards {
        if stop.load(Ordering::Relaxed) {
            return Ok(replayed);
        }
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
    router.publish_memory();
    let secs = started.elapsed().as_secs_f64();
    router
        .stats
        .agg
        .rebuild_nanos
        .store((secs * 1e9) as u64, Ordering::Relaxed);
    eprintln!(
        "pixeld: shard {}: aggregates rebuilt from {replayed} records in {secs:.2} s ({:.0} records/s)",
        router.me,
        replayed as f64 / secs.max(1e-9)
    );
    Ok(replayed)
}
