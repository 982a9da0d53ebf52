//! Answers from the raw log: what no precomputed cell holds (urls by channel, referrers by
//! device, any filter beside any breakdown) is read from every shard's retained log, each
//! record parsed again exactly as ingest parses it, filtered and grouped here.
//!
//! `POST /v1/query` asks for it explicitly (`"include": {"scan": true}`), after an estimate
//! ([`estimate`]: the records whose receive time can hold an event of the range). A scan reads
//! the shards' logs in parallel (one thread per shard, on the HTTP shard's blocking pool, never
//! on an executor), stops at [`MAX_SCAN_RECORDS`], and stops early when its [`Cancel`] is
//! set — the HTTP handler sets it when the client goes away, `DELETE /v1/scans/<id>` when an
//! operator stops it. Every running scan is listed in the process's [`Scans`] with its
//! [`Progress`] (`GET /v1/scans`: records read of the estimate, rate), and one that runs longer
//! than [`REPORT_EVERY`] says how far it got on stderr. Visitors are counted exactly
//! (a set of visitor hashes per row, united across shards: a visitor's hits may sit in any
//! shard's log). Only what the log still retains can be read: the answer says from when.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use crate::agg::dims::Filter;
use crate::agg::AggConfig;
use crate::log::fetch::ShardLog;
use crate::log::reader::Start;
use crate::parse::event::dims::{self, DIMS};
use crate::parse::event::{Action, EventParser};

/// The most records one scan reads; a larger one is refused before it starts.
pub const MAX_SCAN_RECORDS: u64 = 200_000_000;
/// Distinct rows a scan may group into (each holds its visitors): bounded memory.
pub const MAX_SCAN_ROWS: usize = 1_000_000;

/// What a row of a scan groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanDim {
    /// A pageview dimension, built-in or custom (a position as in `AggConfig::dim_index`).
    Profile(usize),
    Url,
    RefDomain,
    Site,
    /// Event time in steps of this many minutes, from the range's start.
    Time(i64),
}

/// A scan's question.
#[derive(Debug, Clone)]
pub struct ScanSpec {
    pub dims: Vec<ScanDim>,
    /// Over positions `0..profile dims` (pageview dimensions) then [`ScanSpec::url_pos`]
    /// (url), +1 (ref_domain), +2 (site).
    pub filter: Option<Filter>,
    /// Event time range, minutes, `from` inclusive.
    pub from_min: i64,
    pub to_min: i64,
    pub site: Option<String>,
    /// Count bots' pageviews too.
    pub bots: bool,
    /// Count custom events (by their dimensions) too.
    pub events: bool,
}

impl ScanSpec {
    /// The filter position of the url (then ref_domain, site) for `cfg`.
    pub fn url_pos(cfg: &AggConfig) -> usize {
        DIMS.len() + cfg.event.custom.len()
    }
}

/// The sums of one row.
#[derive(Debug, Clone, Default)]
pub struct Acc {
    pub views: u64,
    /// Custom events (counted only when the `event` dimension is named).
    pub events: u64,
    pub hits: u64,
    pub engaged: u64,
    /// Hashes of the visitor ids of its pageviews (and custom events, when counted).
    pub visitors: HashSet<u64>,
}

/// A scan's rows, by their dimension values.
#[derive(Debug, Default)]
pub struct Scanned {
    pub rows: HashMap<Vec<String>, Acc>,
    pub records: u64,
    /// The oldest receive time read on a shard, per shard (ns): the log's retained start.
    pub first_recv_ns: Vec<Option<u64>>,
    pub problems: Vec<String>,
}

/// Set to stop a scan (the client went away, or the process stops).
pub type Cancel = Arc<AtomicBool>;

/// How often a long scan says how far it got (stderr).
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The longest query text kept with a running scan (`GET /v1/scans`).
const MAX_QUERY_TEXT: usize = 2048;

/// One running scan: what `GET /v1/scans` shows of it, and how to stop it.
#[derive(Debug)]
pub struct Progress {
    pub id: u64,
    /// The question, as sent (cut at 2 KiB).
    pub query: String,
    /// Wall-clock start, ms since the epoch.
    pub started_ms: i64,
    started: Instant,
    /// Records the estimate expects (every range of the query together).
    pub estimate: u64,
    /// Records read so far, every shard together (updated every 4 096 per shard).
    read: AtomicU64,
    pub cancel: Cancel,
    /// When the last progress line was written, ms after `started`.
    reported_ms: AtomicU64,
}

impl Progress {
    pub fn records_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Counts `n` more records read; the total.
    fn add(&self, n: u64) -> u64 {
        let all = self.read.fetch_add(n, Ordering::Relaxed) + n;
        let ms = self.started.elapsed().as_millis() as u64;
        let last = self.reported_ms.load(Ordering::Relaxed);
        let every = REPORT_EVERY.as_millis() as u64;
        if ms >= last + every
            && self
                .reported_ms
                .compare_exchange(last, ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            eprintln!("pixeld: scan {}: {}", self.id, self.describe(all));
        }
        all
    }

    /// The share of the estimate `read` records are (at most 1).
    pub fn fraction(&self, read: u64) -> f64 {
        (read as f64 / self.estimate.max(1) as f64).min(1.0)
    }

    /// Records read per second so far.
    pub fn rate(&self, read: u64) -> f64 {
        read as f64 / self.elapsed().as_secs_f64().max(1e-3)
    }

    /// How far it got: `<read> of about <estimate> records (<pct> %) in <s> s, <rate>/s`.
    pub fn describe(&self, read: u64) -> String {
        format!(
            "{read} of about {} records ({:.0} %) in {:.0} s, {:.0} records/s",
            self.estimate,
            100.0 * self.fraction(read),
            self.elapsed().as_secs_f64(),
            self.rate(read)
        )
    }
}

/// The scans running in the process (every HTTP shard's): a registry for `GET /v1/scans` and
/// `DELETE /v1/scans/<id>`. Its lock is taken when a scan starts or ends and by those two
/// requests, never by a scan's threads.
#[derive(Debug, Default)]
pub struct Scans {
    next_id: AtomicU64,
    running: Mutex<Vec<Weak<Progress>>>,
}

impl Scans {
    /// Registers a scan of `query` expected to read `estimate` records; it is listed while the
    /// returned `Arc` lives.
    pub fn start(&self, query: &[u8], estimate: u64, cancel: Cancel) -> Arc<Progress> {
        let text = String::from_utf8_lossy(&query[..query.len().min(MAX_QUERY_TEXT)]).into_owned();
        let p = Arc::new(Progress {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            query: text,
            started_ms: (crate::sys::now_ns() / 1_000_000) as i64,
            started: Instant::now(),
            estimate,
            read: AtomicU64::new(0),
            cancel,
            reported_ms: AtomicU64::new(0),
        });
        let mut r = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        r.retain(|w| w.strong_count() > 0);
        r.push(Arc::downgrade(&p));
        p
    }

    /// The scans running now, oldest first.
    pub fn list(&self) -> Vec<Arc<Progress>> {
        let mut r = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        r.retain(|w| w.strong_count() > 0);
        r.iter().filter_map(Weak::upgrade).collect()
    }

    /// Stops scan `id`; false when no such scan runs.
    pub fn cancel(&self, id: u64) -> bool {
        match self.list().into_iter().find(|p| p.id == id) {
            Some(p) => {
                p.cancel.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

/// Why a scan gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("the scan would read about {0} records, more than the {MAX_SCAN_RECORDS} one scan may; narrow the date range")]
    TooLarge(u64),
    #[error(
        "the scan grouped into more than {MAX_SCAN_ROWS} rows; ask for fewer or coarser dimensions"
    )]
    TooManyRows,
    #[error("the scan was cancelled (its client went away, or DELETE /v1/scans/<id> stopped it)")]
    Cancelled,
    #[error("cannot read shard {0}'s log: {1}")]
    Log(usize, crate::log::Error),
}

/// Where reading must start for events of minutes from `from_min`: a record received up to
/// the future allowance before its event time counts there.
fn start_ns(cfg: &AggConfig, from_min: i64) -> u64 {
    let ms = (from_min - cfg.future_minutes - 1).max(0) * 60_000;
    u64::try_from(ms).unwrap_or(0) * 1_000_000
}

/// About how many records a scan from `from_min` reads: per shard, the retained durable
/// records received since then, by the log's summary (its records spread evenly over their
/// receive times).
pub fn estimate(logs: &[ShardLog], durable_next: &[u64], cfg: &AggConfig, from_min: i64) -> u64 {
    let start = start_ns(cfg, from_min);
    logs.iter()
        .zip(durable_next)
        .filter_map(|(log, &next)| log.summary(next).ok())
        .map(|s| {
            let records = s.next_offset.saturating_sub(s.first_offset);
            match (s.first_recv_ns, s.last_recv_ns) {
                (Some(a), Some(b)) if b > a && start > a => {
                    let share = (b.saturating_sub(start)) as f64 / (b - a) as f64;
                    (records as f64 * share.clamp(0.0, 1.0)).ceil() as u64
                }
                (Some(_), Some(b)) if start > b => 0,
                _ => records,
            }
        })
        .sum()
}

/// Reads every shard's log in parallel and groups what passes. Blocking: run it off the
/// executors.
pub fn scan(
    logs: &[ShardLog],
    durable_next: &[u64],
    cfg: &AggConfig,
    spec: &ScanSpec,
    progress: &Progress,
) -> Result<Scanned, ScanError> {
    let parts: Vec<Result<Scanned, ScanError>> = std::thread::scope(|s| {
        let handles: Vec<_> = logs
            .iter()
            .zip(durable_next)
            .enumerate()
            .map(|(shard, (log, &next))| {
                s.spawn(move || scan_shard(shard, log, next, cfg, spec, progress))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(ScanError::Cancelled)))
            .collect()
    });
    let mut out = Scanned::default();
    for p in parts {
        let p = p?;
        out.records += p.records;
        out.first_recv_ns.extend(p.first_recv_ns);
        out.problems.extend(p.problems);
        for (k, a) in p.rows {
            let e = out.rows.entry(k).or_default();
            e.views += a.views;
            e.events += a.events;
            e.hits += a.hits;
            e.engaged += a.engaged;
            e.visitors.extend(a.visitors);
        }
        if out.rows.len() > MAX_SCAN_ROWS {
            return Err(ScanError::TooManyRows);
        }
    }
    Ok(out)
}

fn scan_shard(
    shard: usize,
    log: &ShardLog,
    durable_next: u64,
    cfg: &AggConfig,
    spec: &ScanSpec,
    progress: &Progress,
) -> Result<Scanned, ScanError> {
    // A heartbeat has the dimensions of its own line (device, country…: `dims::LINE`).
    let mut parser = EventParser::new(cfg.event.clone()).with_heartbeat_dims();
    let mut out = Scanned {
        first_recv_ns: vec![None],
        ..Scanned::default()
    };
    let url_pos = ScanSpec::url_pos(cfg);
    let custom: Vec<&str> = cfg.event.custom.iter().map(|(n, _)| n.as_str()).collect();
    // The row key of a record, built in place: a record of an existing row allocates nothing
    // for it.
    let mut key: Vec<String> = vec![String::new(); spec.dims.len()];
    let named = |d: usize| {
        spec.dims.contains(&ScanDim::Profile(d))
            || spec.filter.as_ref().is_some_and(|f| f.mentions(d))
    };
    let count_bots = spec.bots || named(dims::BOT) || cfg.bots;
    // Custom events are rows of their own only when the `event` dimension is named (as in
    // the cells); otherwise they are hits without dimensions, like heartbeats.
    let with_events = spec.events || named(dims::EVENT);
    let mut failed = None;
    let r = log.read_durable(
        Start::Time(start_ns(cfg, spec.from_min)),
        durable_next,
        |rec| {
            out.records += 1;
            if out.records.is_multiple_of(4096) {
                let all = progress.add(4096);
                hold_hook(&progress.cancel);
                if progress.cancel.load(Ordering::Relaxed) {
                    failed = Some(ScanError::Cancelled);
                    return ControlFlow::Break(());
                }
                if all > MAX_SCAN_RECORDS {
                    failed = Some(ScanError::TooLarge(all));
                    return ControlFlow::Break(());
                }
                if out.rows.len() > MAX_SCAN_ROWS {
                    failed = Some(ScanError::TooManyRows);
                    return ControlFlow::Break(());
                }
            }
            if out.first_recv_ns[0].is_none() {
                out.first_recv_ns[0] = Some(rec.recv_ts);
            }
            let Ok(e) = parser.parse(rec.bytes) else {
                return ControlFlow::Continue(());
            };
            // The event time, or the receive time of an event without one (as ingest does).
            let ts = e.ts_ms.unwrap_or((rec.recv_ts / 1_000_000) as i64);
            let minute = ts.div_euclid(60_000);
            if minute < spec.from_min || minute >= spec.to_min {
                return ControlFlow::Continue(());
            }
            if spec.site.as_deref().is_some_and(|s| s != e.site) || (e.bot && !count_bots) {
                return ControlFlow::Continue(());
            }
            // Every value a dimension or the filter may name: the profile's (a heartbeat's
            // has only its line's own, `(none)` for the rest; a custom event's pageview
            // dimensions are `(none)` unless `event` is named), then url, referrer domain and
            // site.
            let event = e.action == Action::Event && with_events;
            let mut values: Vec<&str> = Vec::with_capacity(url_pos + 3);
            if e.profile.is_empty() || (e.action == Action::Event && !with_events) {
                values.extend((0..url_pos).map(|_| dims::NONE));
            } else {
                values.extend(dims::all_values(e.profile, &custom));
            }
            values.extend([e.url, e.ref_domain, e.site]);
            let value = |d: usize| values.get(d).copied().unwrap_or("");
            if spec.filter.as_ref().is_some_and(|f| !f.test(&value)) {
                return ControlFlow::Continue(());
            }
            for (k, d) in key.iter_mut().zip(&spec.dims) {
                k.clear();
                match d {
                    ScanDim::Profile(i) => k.push_str(value(*i)),
                    ScanDim::Url => k.push_str(e.url),
                    ScanDim::RefDomain => k.push_str(e.ref_domain),
                    ScanDim::Site => k.push_str(e.site),
                    ScanDim::Time(step) => {
                        let b = spec.from_min + (minute - spec.from_min) / step * step;
                        k.push_str(&crate::sys::minute_rfc3339(b));
                    }
                }
            }
            if !out.rows.contains_key(&key) {
                out.rows.insert(key.clone(), Acc::default());
            }
            let Some(a) = out.rows.get_mut(&key) else {
                return ControlFlow::Continue(());
            };
            a.hits += 1;
            a.engaged += u64::from(e.engaged_seconds);
            if event {
                a.events += 1;
            }
            if e.action == Action::Pageview || event {
                a.views += u64::from(!event);
                if !e.vid.is_empty() {
                    a.visitors.insert(crate::route::partition::vid_hash(e.vid));
                }
            }
            ControlFlow::Continue(())
        },
        |w| out.problems.push(format!("shard {shard}'s log: {w:?}")),
    );
    progress.add(out.records % 4096);
    if let Some(f) = failed {
        return Err(f);
    }
    match r {
        Ok(_) => Ok(out),
        Err(crate::log::fetch::FetchError::OutOfRange { .. }) => Ok(out),
        Err(crate::log::fetch::FetchError::Log(e)) => Err(ScanError::Log(shard, e)),
    }
}

/// Test-only fault hook: `PIXELD_TEST_HOLD_SCANS=PATH` holds every scan thread after each
/// 4 096 records while PATH exists (until its scan is cancelled), as a scan of a long log
/// would run, so that the suite can watch and stop a running scan (`tests/query/query_api.rs`).
#[cfg(feature = "fault-injection")]
fn hold_hook(cancel: &Cancel) {
    let Some(path) = std::env::var_os("PIXELD_TEST_HOLD_SCANS") else {
        return;
    };
    while std::path::Path::new(&path).exists() && !cancel.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Without the `fault-injection` feature no scan is ever held.
#[cfg(not(feature = "fault-injection"))]
fn hold_hook(_cancel: &Cancel) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_scans_are_listed_until_they_end_and_can_be_stopped() {
        let scans = Scans::default();
        assert!(scans.list().is_empty());
        let a = scans.start(br#"{"metrics":["views"]}"#, 10_000, Cancel::default());
        let b = scans.start(&[b'x'; 5000], 0, Cancel::default());
        assert_eq!((a.id, b.id), (1, 2));
        assert_eq!(b.query.len(), MAX_QUERY_TEXT);
        assert_eq!(a.add(4096), 4096);
        assert_eq!(a.add(4), 4100);
        assert!(a
            .describe(a.records_read())
            .starts_with("4100 of about 10000 records (41 %)"));
        let ids: Vec<u64> = scans.list().iter().map(|p| p.id).collect();
        assert_eq!(ids, [1, 2]);
        assert!(scans.cancel(2));
        assert!(b.cancel.load(Ordering::Relaxed) && !a.cancel.load(Ordering::Relaxed));
        assert!(!scans.cancel(3));
        drop(b);
        let ids: Vec<u64> = scans.list().iter().map(|p| p.id).collect();
        assert_eq!(ids, [1]);
        assert!(!scans.cancel(2), "an ended scan cannot be stopped");
        drop(a);
        assert!(scans.list().is_empty());
        assert_eq!(scans.start(b"", 0, Cancel::default()).id, 3);
    }
}
