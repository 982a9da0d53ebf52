//! At start, before the shards: when the aggregate store was written by a run with another
//! `shards`, it is re-partitioned for this one instead of being dropped (which would rebuild
//! only what the logs still hold, losing every hour and day older than `log.retention`).
//!
//! Every old owner's newest chain is loaded under the old count. Their applied-offset vectors
//! may differ (each owner checkpoints on its own), so each is first brought to the common
//! frontier — per source log, the highest offset any owner applied — by reading that log
//! between its own and the frontier and applying its share of the increments (the server's own
//! `route::increments`, under the old count). Then `agg::store::repartition` deals the cells
//! out to the new owners and swaps the new store in; the shards load it as usual and replay the
//! logs from the frontier. When an old owner has no usable checkpoint, or a log needed to reach
//! the frontier cannot be read, nothing is changed and the start rebuilds from the logs, as it
//! always did, saying so.

use crate::agg::store::{self, repartition};
use crate::config::Config;
use crate::log::reader::Start;
use crate::metrics::AggStats;
use crate::parse::event::EventParser;
use crate::route::recompute::Routing;

/// What a start did to the store (lines for stderr); nothing when the count is unchanged.
pub fn run(cfg: &Config) -> Vec<String> {
    let data_dir = &cfg.data_dir;
    let mut said = match repartition::finish_interrupted(data_dir) {
        Ok(s) => s,
        Err(e) => vec![format!("aggregate store: {e}")],
    };
    let Some(old_n) = repartition::stored_shards(data_dir) else {
        return said;
    };
    let n = cfg.shards;
    if old_n == n || old_n == 0 {
        return said;
    }
    let fallback = |why: String| {
        format!(
            "the aggregate store was written with {old_n} shards and is not re-partitioned for {n} ({why}); it is rebuilt from what the logs still hold, and hours and days older than the logs are lost"
        )
    };
    let fp = store::fingerprint(&cfg.agg);
    let now = crate::route::now_minute();
    let mut aggs = Vec::with_capacity(old_n);
    let mut applied: Vec<Vec<u64>> = Vec::with_capacity(old_n);
    for o in 0..old_n {
        let l = store::load(data_dir, o, old_n, fp, &cfg.agg);
        match l.applied {
            Some(a) if a.len() == old_n => {
                applied.push(a);
                aggs.push(l.agg);
            }
            _ => {
                let why = l
                    .problems
                    .last()
                    .cloned()
                    .unwrap_or_else(|| "no checkpoint".into());
                said.push(fallback(format!("old owner {o}: {why}")));
                return said;
            }
        }
    }
    let frontier: Vec<u64> = (0..old_n)
        .map(|s| applied.iter().map(|a| a[s]).max().unwrap_or(0))
        .collect();
    // Bring every old owner to the frontier.
    let window = crate::route::Window::at(&aggs[0], now);
    let stats = AggStats::default();
    let mut parser = EventParser::new(cfg.agg.event.clone());
    let epochs = repartition::read_epochs(data_dir);
    let mut caught_up = 0u64;
    for (src, &upto) in frontier.iter().enumerate() {
        let from = applied.iter().map(|a| a[src]).min().unwrap_or(upto);
        if from >= upto {
            continue;
        }
        let dir = data_dir.join(crate::log::format::shard_dir_name(src));
        let mut routing = Routing {
            parser: &mut parser,
            stats: &stats,
            window,
            shards: old_n,
            epochs: &epochs,
        };
        let read = routing.read_log(
            data_dir,
            src,
            Start::Offset(from),
            upto,
            |rec, owner, inc, site, key, aux| {
                let below = applied.get(owner).and_then(|a: &Vec<u64>| a.get(src));
                if below.is_some_and(|&a| rec.offset >= a) {
                    if let Some(agg) = aggs.get_mut(owner) {
                        agg.apply(&inc, site, key, aux, now);
                    }
                }
            },
        );
        let read = match read {
            Ok(r) => r,
            Err(e) => {
                said.push(fallback(format!("reading {}: {e}", dir.display())));
                return said;
            }
        };
        caught_up += read.records;
        let gone = read.first.is_some_and(|f| f.offset > from);
        if gone || read.next < upto || !read.problems.is_empty() {
            said.push(fallback(format!(
                "{} could not be read from offset {from} to {upto}, which some owners had not applied{}",
                dir.display(),
                read.problems
                    .first()
                    .map(|p| format!(": {p}"))
                    .unwrap_or_default()
            )));
            return said;
        }
    }
    let parts = repartition::split(&aggs, n);
    let sealed: usize = parts.iter().map(|p| p.sealed.len()).sum();
    drop(aggs);
    // A new shard starts at offset 0 of its log, unless a smaller count dropped it before (its
    // records up to the recorded offset are in the store). The logs beyond a smaller count are
    // held by the store up to the frontier: recorded, so that they are never counted twice.
    let mut dropped = repartition::read_dropped(data_dir);
    for (s, &f) in frontier.iter().enumerate().skip(n) {
        if f > 0 {
            dropped.insert(s, f);
        }
    }
    let applied_new: Vec<u64> = (0..n)
        .map(|s| {
            frontier
                .get(s)
                .copied()
                .or_else(|| dropped.get(&s).copied())
                .unwrap_or(0)
        })
        .collect();
    dropped.retain(|&s, _| s >= n);
    // Visitors keep their owner (mapped on) for event minutes before the next UTC midnight, so
    // that none is counted on two owners in a bucket that spans the change.
    let mut epochs = epochs;
    let until = (now.div_euclid(1440) + 1) * 1440;
    epochs.push(until, old_n);
    match repartition::write(data_dir, parts, fp, &applied_new, &dropped, &epochs) {
        Ok(()) => said.push(format!(
            "aggregate store re-partitioned from {old_n} to {n} shards ({sealed} sealed hour and day files rewritten, {caught_up} log records read to bring the old owners to one frontier); every hour and day it held is kept"
        )),
        Err(e) => said.push(fallback(format!("writing the new store: {e}"))),
    }
    said
}
