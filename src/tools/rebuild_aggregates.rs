//! `pixeld rebuild-aggregates`: recomputes a range of the aggregate store from the retained
//! logs under the given config — after a parser fix, a changed `url_keep_query` or field name
//! — and keeps everything the logs no longer hold as it was computed. Without it a start under
//! settings that change how records aggregate drops the whole store (its fingerprint differs)
//! and rebuilds only what the logs still hold, so hours older than `log.retention` would be
//! lost.
//!
//! Offline: it takes the data dir's lock (stop the server first). Per owner it loads the newest
//! chain whatever its fingerprint (`agg::store::load_with`), recomputes every owner's state from
//! the logs below the loaded applied offsets (`check_aggregates::recompute`, the server's own
//! `route::increments`), replaces each minute and hour bucket that lies inside
//! `[--from, --to)` and that the retained logs fully determine, and writes the result as a new
//! base checkpoint carrying the new fingerprint and the same applied offsets — so the next
//! start loads it and replays only what came after, and `pixeld check --aggregates` agrees for
//! every rebuilt bucket. Hour buckets only partly inside the range are left as they were.

use std::path::Path;

use crate::agg::store::{self, format};
use crate::agg::AggConfig;
use crate::route::recompute::recompute;
use crate::tools::check_aggregates::owners;

/// Why nothing was rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("no aggregate store under {0}: nothing to rebuild (a server builds one from the logs at its first start)")]
    NoStore(std::path::PathBuf),
    #[error("owner {owner} has no usable checkpoint ({why}); start pixeld once, which rebuilds the store from the logs, then run this again")]
    NoCheckpoint { owner: usize, why: String },
    #[error("`--from` must be before `--to`")]
    EmptyRange,
    #[error(transparent)]
    Log(#[from] crate::log::Error),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// What was rebuilt.
#[derive(Debug, Default)]
pub struct Rebuilt {
    pub owners: usize,
    pub records: u64,
    /// Minute and hour buckets replaced by their recomputed contents (all owners).
    pub minute_buckets: u64,
    pub hour_buckets: u64,
    /// The first minute the retained logs fully determine; buckets before it were kept.
    pub from_minute: i64,
    /// The checkpoint written per owner.
    pub written: Vec<std::path::PathBuf>,
    /// Loading notes (damaged links skipped, a fingerprint that differed).
    pub notes: Vec<String>,
    /// Parts of logs that could not be read (their records are missing from the rebuild).
    pub problems: Vec<String>,
}

/// Rebuilds the minutes `[from, to)` (None: unbounded) of the store under `data_dir` from its
/// logs, under `cfg`, at minute `now` (see the module doc).
pub fn rebuild_aggregates(
    data_dir: &Path,
    cfg: &AggConfig,
    from: Option<i64>,
    to: Option<i64>,
    now: i64,
) -> Result<Rebuilt, RebuildError> {
    let n = owners(data_dir);
    if n == 0 {
        return Err(RebuildError::NoStore(data_dir.join("agg")));
    }
    let (lo, hi) = (from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX));
    if lo >= hi {
        return Err(RebuildError::EmptyRange);
    }
    let mut out = Rebuilt {
        owners: n,
        ..Rebuilt::default()
    };
    let mut loaded = Vec::with_capacity(n);
    let mut applied = Vec::with_capacity(n);
    for o in 0..n {
        let l = store::load_with(data_dir, o, n, None, cfg);
        out.notes
            .extend(l.problems.iter().map(|p| format!("owner {o}: {p}")));
        match &l.applied {
            Some(a) => applied.push(a.clone()),
            None => {
                return Err(RebuildError::NoCheckpoint {
                    owner: o,
                    why: l
                        .problems
                        .last()
                        .cloned()
                        .unwrap_or_else(|| "none written yet".into()),
                })
            }
        }
        loaded.push(l);
    }
    let rc = recompute(data_dir, cfg, &applied, now)?;
    out.records = rc.records;
    out.problems = rc.problems;
    out.from_minute = rc.from_minute;
    let lo = lo.max(rc.from_minute);
    let fingerprint = store::fingerprint(cfg);
    for (o, (l, e)) in loaded.iter_mut().zip(&rc.expected).enumerate() {
        let agg = &mut l.agg;
        let (minutes, hours) = agg.replace_range(e, (lo, hi), now, None);
        // The visits in progress as the settings now in force cut them (the same events).
        agg.replace_visits(e);
        out.minute_buckets += minutes;
        out.hour_buckets += hours;
        // Lost sealed files outside what was recomputed stay listed: the next start repairs
        // them from the logs.
        agg.relist_repairs();
        let seq = l.max_seq + 1;
        let bytes = format::encode(
            agg,
            &format::Header {
                version: format::VERSION,
                kind: format::Kind::Base,
                shards: n as u32,
                owner: o as u32,
                seq,
                parent: 0,
                fingerprint,
                written_ns: crate::sys::now_ns(),
                applied: applied[o].clone(),
            },
        );
        out.written
            .push(store::write_offline(data_dir, o, seq, &bytes)?);
        // Sealed hours that were recomputed, and days to seal again from their hours: the
        // new base no longer lists their files.
        for path in agg.take_retired() {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(out)
}

/// `pixeld rebuild-aggregates --server URL`: posts to a running server's
/// `POST /v1/admin/rebuild-aggregates` (`url` carries `from`/`to`), with `PIXELD_TOKEN` as its
/// bearer token when set, and returns the status and body of the answer.
pub fn online(url: &str) -> Result<(u16, String), OnlineError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(600)))
        .build()
        .into();
    let mut req = agent.post(url);
    if let Ok(token) = std::env::var("PIXELD_TOKEN") {
        req = req.header("authorization", &format!("Bearer {token}"));
    }
    let err = |reason: String| OnlineError {
        url: url.to_string(),
        reason,
    };
    let mut resp = req.send_empty().map_err(|e| err(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| err(e.to_string()))?;
    Ok((status, body))
}

/// Why a running server could not be asked.
#[derive(Debug, thiserror::Error)]
#[error("cannot ask {url} to rebuild: {reason} (is pixeld serving there? --server takes its listen.http)")]
pub struct OnlineError {
    url: String,
    reason: String,
}
