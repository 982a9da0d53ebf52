//! Every owner's aggregates recomputed from the retained logs, through the server's own
//! [`super::increments`]: what `pixeld check --aggregates` compares the store with, and what
//! `pixeld rebuild-aggregates` (offline, and on a running server through
//! `POST /v1/admin/rebuild-aggregates`) puts in its place.

use std::ops::ControlFlow;
use std::path::Path;

use crate::agg::{AggConfig, Aggregates, Inc};
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
    let window = crate::route::Window::at(&expected[0], now);
    let stats = AggStats::default();
    let mut parser = EventParser::new(cfg.event.clone());
    let epochs = crate::agg::store::repartition::read_epochs(data_dir);
    let mut from_minute = window.floor;
    // Per owner and source: the latest receive time applied (ms). Records the owner has not
    // applied yet come later in that log, so visits that ended more than gap + allowance
    // before the lowest of them are out of any event's reach: forgotten, as a server would.
    let mut clocks: Vec<Vec<i64>> = vec![vec![0; n]; n];
    for src in 0..n {
        let upto = applied
            .iter()
            .map(|a| a.get(src).copied().unwrap_or(0))
            .max();
        let Some(upto) = upto.filter(|&u| u > 0) else {
            continue;
        };
        let mut router = Routing {
            parser: &mut parser,
            stats: &stats,
            window,
            shards: n,
            epochs: &epochs,
        };
        let read = router.read_log(
            data_dir,
            src,
            Start::Beginning,
            upto,
            |rec, owner, inc, site, key, aux| {
                let holds = applied
                    .get(owner)
                    .and_then(|a: &Vec<u64>| a.get(src))
                    .is_some_and(|&a| rec.offset < a);
                if let Some(e) = expected.get_mut(owner).filter(|_| holds) {
                    e.apply(&inc, site, key, aux, now);
                    if let Some(c) = clocks.get_mut(owner).and_then(|c| c.get_mut(src)) {
                        *c = (*c).max((rec.recv_ts / 1_000_000) as i64);
                    }
                }
            },
        )?;
        // Records before the first one read are gone: buckets they could reach are skipped.
        if let Some(first) = read.first.filter(|f| f.offset > 0) {
            // A visit whose first events were deleted starts later here than it did: one
            // may start up to a gap (plus the late allowance) after the first record kept.
            let v = &cfg.visits;
            let visit_minutes = (v.gap_ms + v.late_allowance_ms + 59_999) / 60_000;
            let m =
                (first.recv_ts / 60_000_000_000) as i64 + cfg.future_minutes + 1 + visit_minutes;
            from_minute = from_minute.max(m);
        }
        rc.records += read.records;
        rc.problems.extend(
            read.problems
                .into_iter()
                .map(|w| format!("shard {src}'s log: {w} (records there cannot be compared)")),
        );
    }
    for (e, c) in expected.iter_mut().zip(&clocks) {
        let clock = c.iter().copied().min().unwrap_or(0) - crate::route::CLOCK_MARGIN_MS;
        if c.iter().all(|&x| x > 0) {
            e.visits.sweep(clock);
        }
    }
    rc.expected = expected;
    rc.from_minute = from_minute;
    Ok(rc)
}

/// How records become increments when a log is read outside the server (the same
/// `route::increments`, routed among `shards` with `epochs`).
pub struct Routing<'a> {
    pub parser: &'a mut EventParser,
    pub stats: &'a AggStats,
    pub window: crate::route::Window,
    pub shards: usize,
    pub epochs: &'a crate::route::partition::Epochs,
}

/// What [`Routing::read_log`] read.
pub struct LogRead {
    pub records: u64,
    /// The first record read.
    pub first: Option<Rec>,
    /// The offset after the last record read.
    pub next: u64,
    /// What could not be read.
    pub problems: Vec<String>,
}

/// One record as [`Routing::read_log`] hands it on.
#[derive(Debug, Clone, Copy)]
pub struct Rec {
    pub offset: u64,
    pub recv_ts: u64,
}

impl Routing<'_> {
    /// Reads source `src`'s log under `data_dir` from `start` up to offset `upto`
    /// (exclusive) and hands every increment of every record to `f` (the record, its owner,
    /// the increment, its site and key). A record with no increments (unparsed, out of the
    /// window) is counted in `records` all the same.
    pub fn read_log(
        &mut self,
        data_dir: &Path,
        src: usize,
        start: Start,
        upto: u64,
        mut f: impl FnMut(&Rec, usize, Inc, &str, &str, &str),
    ) -> Result<LogRead, crate::log::Error> {
        let log_cfg =
            crate::log::LogConfig::new(data_dir.join(crate::log::format::shard_dir_name(src)), src);
        let reader = ShardReader::new(log_cfg.dir.clone(), log_cfg.index_interval_bytes);
        let mut out = LogRead {
            records: 0,
            first: None,
            next: 0,
            problems: Vec::new(),
        };
        reader.read(
            start,
            |rec| {
                if rec.offset >= upto {
                    return ControlFlow::Break(());
                }
                out.records += 1;
                out.next = rec.offset + 1;
                let msg = match crate::parse::syslog::parse(rec.bytes) {
                    Ok(s) => s.msg,
                    Err(_) => rec.bytes,
                };
                let r = Rec {
                    offset: rec.offset,
                    recv_ts: rec.recv_ts,
                };
                out.first.get_or_insert(r);
                crate::route::increments(
                    self.parser,
                    self.stats,
                    self.window,
                    (src, self.shards, self.epochs),
                    rec.recv_ts,
                    msg,
                    |owner, inc, site, key, aux| f(&r, owner, inc, site, key, aux),
                );
                ControlFlow::Continue(())
            },
            |w| out.problems.push(format!("{w:?}")),
        )?;
        Ok(out)
    }
}
