//! `pixeld check --aggregates`: proves that the aggregate store is a function of the log. It
//! loads every owner's checkpoint chain exactly as a start would (`agg::store::load`),
//! recomputes each owner's state from the retained logs — every record of source `s` below
//! the owner's applied offset `applied[s]`, through the same `route::increments` as the
//! server — and compares the two bucket by bucket: names, counts and sketch registers. Exit 1
//! names the first difference.
//!
//! Only buckets the retained logs fully determine are compared: when retention has deleted
//! the start of a log, buckets before its first retained receive time (plus the future
//! allowance) are skipped, and the report says from where the comparison starts. Offline: it
//! takes the data dir's lock, so a running server must be stopped first.

use std::fmt::Write as _;
use std::path::Path;

use crate::agg::store;
use crate::agg::{AggConfig, Aggregates, Res};
use crate::route::recompute::recompute;

/// What the comparison found.
#[derive(Debug, Default)]
pub struct AggCheck {
    pub shards: usize,
    /// Per owner: the newest checkpoint loaded and its applied vector.
    pub owners: Vec<(u64, Vec<u64>)>,
    pub records: u64,
    /// Buckets compared: minutes, hours, days.
    pub buckets: [u64; 3],
    /// The first minute compared (earlier buckets were not fully in the retained logs).
    pub from_minute: i64,
    /// What makes the check fail besides a difference (an owner with no usable checkpoint,
    /// a log that cannot be read).
    pub problems: Vec<String>,
    /// What loading found and skipped, as a start would (damaged files outside the loaded
    /// chain): reported, not a failure.
    pub notes: Vec<String>,
    pub first_difference: Option<String>,
}

impl AggCheck {
    pub fn is_ok(&self) -> bool {
        self.first_difference.is_none() && self.problems.is_empty()
    }

    /// The report printed by `pixeld check --aggregates`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (o, (seq, applied)) in self.owners.iter().enumerate() {
            let _ = writeln!(
                s,
                "owner {o:03}: checkpoint {seq}, applied offsets {applied:?}"
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        for p in &self.problems {
            let _ = writeln!(s, "problem: {p}");
        }
        let _ = writeln!(
            s,
            "{} shards: {} records recomputed, {} minute, {} hour and {} day buckets compared from {}: {}",
            self.shards,
            self.records,
            self.buckets[0],
            self.buckets[1],
            self.buckets[2],
            crate::query::params::minute_rfc3339(self.from_minute),
            match &self.first_difference {
                None if self.problems.is_empty() => "OK".to_string(),
                None => "FAILED".to_string(),
                Some(d) => format!("DIFFERENT: {d}"),
            }
        );
        s
    }
}

/// How many owners the store under `data_dir` has (its `agg/shard-NNN` directories).
pub(crate) fn owners(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("agg"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    crate::log::format::parse_shard_dir_name(&e.file_name().to_string_lossy())
                })
                .map(|n| n + 1)
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Loads the store and recomputes it from the logs (see the module doc).
pub fn check_aggregates(data_dir: &Path, cfg: &AggConfig) -> Result<AggCheck, crate::log::Error> {
    let n = owners(data_dir);
    let mut out = AggCheck {
        shards: n,
        ..AggCheck::default()
    };
    if n == 0 {
        out.problems.push(format!(
            "no aggregate store under {} (a server writes one every agg.checkpoint_interval and at stop)",
            data_dir.join("agg").display()
        ));
        return Ok(out);
    }
    let fp = store::fingerprint(cfg);
    let loaded: Vec<store::Loaded> = (0..n)
        .map(|o| store::load(data_dir, o, n, fp, cfg))
        .collect();
    let mut applied = Vec::with_capacity(n);
    for (o, l) in loaded.iter().enumerate() {
        out.notes
            .extend(l.problems.iter().map(|p| format!("owner {o}: {p}")));
        match &l.applied {
            Some(a) => applied.push(a.clone()),
            None => {
                out.problems
                    .push(format!("owner {o}: no usable checkpoint to compare"));
                applied.push(vec![0; n]);
            }
        }
        out.owners.push((l.seq, applied[o].clone()));
    }
    let now = crate::route::now_minute();
    let rc = recompute(data_dir, cfg, &applied, now)?;
    out.records = rc.records;
    out.problems.extend(rc.problems);
    let (expected, from_minute) = (rc.expected, rc.from_minute);
    out.from_minute = from_minute;
    // Compare the url and referrer cells owner by owner, minutes, hours, then days (a sealed
    // day against its hours recomputed from the log); then the site cells of each bucket merged
    // over the owners (after a change of the shard count a site's visitors of an old bucket
    // sit on the owner the re-partition gave them, not on the visitor's owner).
    'owners: for (o, (l, e)) in loaded.iter().zip(&expected).enumerate() {
        for res in [Res::Minute, Res::Hour, Res::Day] {
            let width = res.width();
            let floor = if res == Res::Minute {
                from_minute.max(e.minute_floor(now))
            } else {
                from_minute.div_euclid(width) + i64::from(from_minute.rem_euclid(width) != 0)
            };
            let numbers = l.agg.bucket_numbers_of_both(e, res);
            for b in numbers.into_iter().filter(|&b| b >= floor) {
                out.buckets[res.code() as usize] += 1;
                let (have, want) = (l.agg.key_bucket_lines(res, b), e.key_bucket_lines(res, b));
                if have != want {
                    let missing = want.iter().find(|w| !have.contains(w));
                    let extra = have.iter().find(|h| !want.contains(h));
                    out.first_difference = Some(format!(
                        "owner {o}, {} bucket {}: the log gives {} but the store has {}",
                        res.as_str(),
                        crate::query::params::minute_rfc3339(b * width),
                        missing.map_or("nothing more", |s| s.as_str()),
                        extra.map_or("nothing more", |s| s.as_str()),
                    ));
                    break 'owners;
                }
            }
        }
    }
    if out.first_difference.is_none() {
        out.first_difference = compare_sites(&loaded, &expected, from_minute, now);
    }
    Ok(out)
}

/// The first bucket whose site cells, merged over the owners, differ between the store and
/// the logs (see [`check_aggregates`]).
fn compare_sites(
    loaded: &[store::Loaded],
    expected: &[Aggregates],
    from_minute: i64,
    now: i64,
) -> Option<String> {
    let merged = |states: &mut dyn Iterator<Item = &Aggregates>, res: Res, b: i64| {
        let mut sites: std::collections::BTreeMap<String, crate::agg::cells::SiteCell> =
            std::collections::BTreeMap::new();
        let mut all = crate::agg::cells::SiteCell::default();
        let mut pages: std::collections::BTreeMap<String, crate::agg::PageCell> =
            std::collections::BTreeMap::new();
        let mut profiles: std::collections::BTreeMap<String, crate::agg::UrlCell> =
            std::collections::BTreeMap::new();
        let mut profile_visits: std::collections::BTreeMap<String, crate::agg::cells::VisitCounts> =
            std::collections::BTreeMap::new();
        for a in states {
            let (s, al, p, pr, pv) = a.site_cells(res, b);
            for (name, c) in pr {
                profiles.entry(name).or_default().add(&c);
            }
            for (name, c) in pv {
                profile_visits.entry(name).or_default().add(&c);
            }
            for (name, c) in s {
                sites.entry(name).or_default().merge(&c);
            }
            all.merge(&al);
            for (url, c) in p {
                pages.entry(url).or_default().add(&c);
            }
        }
        let mut lines: Vec<String> = sites
            .iter()
            .map(|(n, c)| format!("site {n:?}: {}", crate::agg::site_line(c)))
            .collect();
        if all.hits > 0 {
            lines.push(format!("all sites: {}", crate::agg::site_line(&all)));
        }
        lines.extend(
            pages
                .iter()
                .filter(|(_, c)| **c != crate::agg::PageCell::default())
                .map(|(u, c)| crate::agg::page_line(u, c)),
        );
        lines.extend(profiles.iter().map(|(n, c)| crate::agg::profile_line(n, c)));
        lines.extend(
            profile_visits
                .iter()
                .filter(|(_, c)| !c.is_zero())
                .map(|(n, c)| crate::agg::profile_visits_line(n, c)),
        );
        lines
    };
    let first = expected.first()?;
    for res in [Res::Minute, Res::Hour, Res::Day] {
        let width = res.width();
        let floor = if res == Res::Minute {
            from_minute.max(first.minute_floor(now))
        } else {
            from_minute.div_euclid(width) + i64::from(from_minute.rem_euclid(width) != 0)
        };
        let mut numbers: Vec<i64> = loaded
            .iter()
            .map(|l| &l.agg)
            .chain(expected.iter())
            .flat_map(|a| a.bucket_numbers(res))
            .filter(|&b| b >= floor)
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        for b in numbers {
            let have = merged(&mut loaded.iter().map(|l| &l.agg), res, b);
            let want = merged(&mut expected.iter(), res, b);
            if have != want {
                let missing = want.iter().find(|w| !have.contains(w));
                let extra = have.iter().find(|h| !want.contains(h));
                return Some(format!(
                    "{} bucket {} (site and page cells over all owners): the log gives {} but the store has {}",
                    res.as_str(),
                    crate::query::params::minute_rfc3339(b * width),
                    missing.map_or("nothing more", |s| s.as_str()),
                    extra.map_or("nothing more", |s| s.as_str()),
                ));
            }
        }
    }
    None
}
