//! Every owner's aggregates recomputed from the retained logs, through the server's own
//! [`super::increments`]: what `pixeld check --aggregates` compares the store with, and what
//! `pixeld rebuild-aggregates` (offline, and on a running server through
//! `POST /v1/admin/rebuild-aggregates`) puts in its place.

use std::ops::ControlFlow;
use std::path::Path;

use crate::agg::{AggConfig, Aggregates};
use crate::log::reader::{ShardReader, Start};
use crate::metrics::AggStats;
use crate::parse::event::EventParser;

/// Each owner's state recomputed from the retained logs: every record of source `s` below
/// `applied[owner][s]`, through the same `route::increments` as the server, at minute `now`.
pub struct Recomputed {
    pub expected: Vec<Aggregates>,
    /// The first minute the retained logs fully determine (records before it were deleted by
    /// retention, or never existed).
    pub from_minute: i64,
    pub records: u64,
    /// Logs or parts of logs that could not be read.
    pub problems: Vec<String>,
}

/// Recomputes every owner's state from the logs under `data_dir` (see [`Recomputed`]).
pub fn recompute(
    data_dir: &Path,
    cfg: &AggConfig,
    applied: &[Vec<u64>],
    now: i64,
) -> Result<Recomputed, crate::log::Error> {
    let n = applied.len();
    let mut rc = Recomputed {
        expected: Vec::new(),
        from_minute: 0,
        records: 0,
        problems: Vec::new(),
    };
    let mut expected: Vec<Aggregates> = (0..n).map(|_| Aggregates::new(cfg.clone())).collect();
    let window = crate::route::Window {
        floor: expected[0].day_floor(now),
        future: cfg.future_minutes,
    };
    let stats = AggStats::default();
    let mut parser = EventParser::new(cfg.event.clone());
    let epochs = crate::agg::store::repartition::read_epochs(data_dir);
    let mut from_minute = window.floor;
    for src in 0..n {
        let upto = applied
            .iter()
            .map(|a| a.get(src).copied().unwrap_or(0))
            .max();
        let Some(upto) = upto.filter(|&u| u > 0) else {
            continue;
        };
        let log_cfg =
            crate::log::LogConfig::new(data_dir.join(crate::log::format::shard_dir_name(src)), src);
        let reader = ShardReader::new(log_cfg.dir.clone(), log_cfg.index_interval_bytes);
        let mut first = true;
        reader.read(
            Start::Beginning,
            |rec| {
                if rec.offset >= upto {
                    return ControlFlow::Break(());
                }
                if first {
                    first = false;
                    // Records before this one are gone: buckets they could reach are skipped.
                    if rec.offset > 0 {
                        let m = (rec.recv_ts / 60_000_000_000) as i64 + cfg.future_minutes + 1;
                        from_minute = from_minute.max(m);
                    }
                }
                rc.records += 1;
                let msg = match crate::parse::syslog::parse(rec.bytes) {
                    Ok(s) => s.msg,
                    Err(_) => rec.bytes,
                };
                crate::route::increments(
                    &mut parser,
                    &stats,
                    window,
                    (src, n, &epochs),
                    rec.recv_ts,
                    msg,
                    |owner, inc, site, key| {
                        let holds = applied
                            .get(owner)
                            .and_then(|a: &Vec<u64>| a.get(src))
                            .is_some_and(|&a| rec.offset < a);
                        if let Some(e) = expected.get_mut(owner).filter(|_| holds) {
                            e.apply(&inc, site, key, now);
                        }
                    },
                );
                ControlFlow::Continue(())
            },
            |w| {
                rc.problems.push(format!(
                    "shard {src}'s log: {w:?} (records there cannot be compared)"
                ))
            },
        )?;
    }
    rc.expected = expected;
    rc.from_minute = from_minute;
    Ok(rc)
}
