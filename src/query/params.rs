//! Query parameters: parsing and validating what a user may put in a query string, so that
//! the executors only ever see bounded, well-formed requests.
//!
//! Times accept RFC 3339, epoch seconds, or relative (`now`, `-15m`, `-2h`, `-7d`); `from` is
//! rounded down and `to` up to whole minutes (`to=now` includes the current minute). Parts of a
//! range older than the minute window exist only as hour buckets, so such a range is widened
//! to whole hours; the answer reports the range it covers. Every error names its parameter.

use std::collections::HashMap;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::agg::dims::DimFilter;
use crate::agg::{AggConfig, Dim};

/// A parameter the user got wrong; answered with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter `{param}`: {reason}")]
pub struct BadParam {
    pub param: String,
    pub reason: String,
}

/// A [`BadParam`] for `param`.
pub fn bad(param: &str, reason: impl Into<String>) -> BadParam {
    BadParam {
        param: param.to_string(),
        reason: reason.into(),
    }
}

/// The largest `limit`.
pub const MAX_LIMIT: usize = 1000;
/// The most points a time series may have.
pub const MAX_POINTS: i64 = 10_080;
/// The most minutes `/v1/realtime` looks back.
pub const MAX_REALTIME_MINUTES: i64 = 60;

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Top {
        /// What the list ranks by (`sort=` turns `url` into the dimension of that metric).
        dim: Dim,
        range: Range,
        site: Option<String>,
        limit: usize,
        /// `sort=` given: each item carries every metric of its url.
        sorted: bool,
    },
    /// A top list of a pageview dimension (`agg::dims`): `/v1/top?dim=channel` and the like.
    Breakdown {
        /// Positions in `parse::event::dims::DIMS`: one, or two for rows by pair of values.
        dims: Vec<usize>,
        range: Range,
        site: Option<String>,
        limit: usize,
        filter: crate::agg::dims::DimFilter,
        /// Ranked by distinct visitors instead of pageviews.
        by_visitors: bool,
    },
    Timeseries {
        range: Range,
        step: i64,
        site: Option<String>,
        url: Option<String>,
    },
    Summary {
        range: Range,
        site: Option<String>,
    },
    Realtime {
        range: Range,
        site: Option<String>,
    },
}

/// Minutes since the epoch, `from` inclusive, `to` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from: i64,
    pub to: i64,
}

pub use crate::sys::minute_rfc3339;

/// Parses a time parameter into ms since the epoch.
pub fn parse_time(param: &str, v: &str, now_ms: i64) -> Result<i64, BadParam> {
    let v = v.trim();
    if v == "now" {
        return Ok(now_ms);
    }
    if let Some(rel) = v.strip_prefix('-') {
        if !rel.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(bad(param, format!("`{v}` is not a time")));
        }
        if rel.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(
                param,
                format!("`{v}`: a relative time needs a unit, e.g. -15m, -2h, -7d"),
            ));
        }
        let d = humantime::parse_duration(rel)
            .map_err(|e| bad(param, format!("`{v}` is not a relative time: {e}")))?;
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        return Ok(now_ms.saturating_sub(ms));
    }
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = v
            .parse()
            .map_err(|_| bad(param, format!("`{v}` is not epoch seconds")))?;
        if !(0.0..=253_402_300_799.0).contains(&secs) {
            return Err(bad(param, format!("`{v}` is out of range")));
        }
        return Ok((secs * 1000.0).round() as i64);
    }
    let t = OffsetDateTime::parse(v, &Rfc3339).map_err(|e| {
        bad(
            param,
            format!(
                "`{v}` is neither RFC 3339, epoch seconds nor relative (-15m, -2h, -7d, now): {e}"
            ),
        )
    })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// The query string as a map; repeated or unknown parameters are errors. Every JSON endpoint
/// (the query API, the log API) reads its parameters through here.
pub fn pairs(query: Option<&str>, allowed: &[&str]) -> Result<HashMap<String, String>, BadParam> {
    let mut m = HashMap::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            return Err(bad(
                &k,
                format!(
                    "unknown parameter; this endpoint takes {}",
                    allowed.join(", ")
                ),
            ));
        }
        if m.insert(k.to_string(), v.to_string()).is_some() {
            return Err(bad(&k, "given more than once"));
        }
    }
    Ok(m)
}

/// The range of `from`/`to`, rounded to minutes, checked against the windows at `now_ms`.
fn range(
    p: &HashMap<String, String>,
    now_ms: i64,
    cfg: &AggConfig,
    default_from: &str,
) -> Result<Range, BadParam> {
    range_of(
        p.get("from").map_or(default_from, |s| s),
        p.get("to").map_or("now", |s| s),
        now_ms,
        cfg,
    )
}

/// The range from `from` to `to` (in [`parse_time`]'s forms), rounded to minutes, checked
/// against the windows at `now_ms` and widened where only coarser buckets exist.
pub fn range_of(from: &str, to: &str, now_ms: i64, cfg: &AggConfig) -> Result<Range, BadParam> {
    let from_ms = parse_time("from", from, now_ms)?;
    let to_ms = parse_time("to", to, now_ms)?;
    let now_min = now_ms.div_euclid(60_000);
    let mut from = from_ms.div_euclid(60_000);
    let mut to = (to_ms + 59_999).div_euclid(60_000);
    to = to.min(now_min + cfg.future_minutes + 1);
    if to <= from {
        return Err(bad(
            "to",
            "must be after `from` (and not in the future beyond the allowance)",
        ));
    }
    let day_floor = (now_min.div_euclid(1440) - cfg.day_window) * 1440;
    if from < day_floor {
        return Err(bad(
            "from",
            format!(
                "older than the aggregates keep (day_window {} d): the earliest is {}",
                cfg.day_window,
                minute_rfc3339(day_floor)
            ),
        ));
    }
    // Older parts exist only as coarser buckets: widen to whole days before the hour
    // window, to whole hours before the minute window (UTC).
    let hour_floor = (now_min.div_euclid(60) - cfg.hour_window) * 60;
    let minute_floor = now_min - cfg.minute_window;
    for (floor, width) in [(hour_floor, 1440), (minute_floor, 60)] {
        if from < floor {
            from = from.div_euclid(width) * width;
        }
        if to < floor {
            to = (to + width - 1).div_euclid(width) * width;
        }
    }
    Ok(Range { from, to })
}

fn site(p: &HashMap<String, String>) -> Result<Option<String>, BadParam> {
    match p.get("site") {
        None => Ok(None),
        Some(s) if s.is_empty() => Err(bad("site", "is empty")),
        Some(s) => Ok(Some(s.to_ascii_lowercase())),
    }
}

fn number(
    p: &HashMap<String, String>,
    name: &str,
    default: i64,
    max: i64,
) -> Result<i64, BadParam> {
    match p.get(name) {
        None => Ok(default),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(bad(
                name,
                format!("`{v}` is not a whole number in 1..={max}"),
            )),
        },
    }
}

/// Validates the query string of `path` at `now_ms`; None for a path that is not a query.
pub fn parse(
    path: &str,
    query: Option<&str>,
    now_ms: i64,
    cfg: &AggConfig,
) -> Option<Result<Request, BadParam>> {
    let r = match path {
        "/v1/top" => parse_top(query, now_ms, cfg),
        "/v1/timeseries" => parse_series(query, now_ms, cfg),
        "/v1/summary" => (|| {
            let p = pairs(query, &["from", "to", "site"])?;
            Ok(Request::Summary {
                range: range(&p, now_ms, cfg, "-24h")?,
                site: site(&p)?,
            })
        })(),
        "/v1/realtime" => (|| {
            let p = pairs(query, &["minutes", "site"])?;
            let minutes = number(&p, "minutes", 5, MAX_REALTIME_MINUTES)?;
            let now_min = now_ms.div_euclid(60_000);
            Ok(Request::Realtime {
                range: Range {
                    from: now_min - minutes + 1,
                    to: now_min + 1,
                },
                site: site(&p)?,
            })
        })(),
        _ => return None,
    };
    Some(r)
}

fn parse_top(query: Option<&str>, now_ms: i64, cfg: &AggConfig) -> Result<Request, BadParam> {
    let p = pairs(
        query,
        &[
            "dim", "from", "to", "limit", "site", "sort", "filter", "bots",
        ],
    )?;
    if let Some(dims) = p.get("dim").and_then(|d| dims_of(d, cfg)) {
        return parse_breakdown(dims?, &p, now_ms, cfg);
    }
    for k in ["filter", "bots"] {
        if p.contains_key(k) {
            return Err(bad(
                k,
                format!(
                    "only with a pageview dimension: dim= one of {}",
                    cfg.dim_list()
                ),
            ));
        }
    }
    let mut dim = match p.get("dim").map(String::as_str) {
        Some("url") | None => Dim::Url,
        Some("ref_domain") => Dim::RefDomain,
        Some("site") => Dim::Site,
        Some("entry_page") => Dim::EntryPage,
        Some("exit_page") => Dim::ExitPage,
        Some(other) => {
            return Err(bad(
                "dim",
                format!(
                    "`{other}`: one of url, ref_domain, site, entry_page, exit_page, {}",
                    cfg.dim_list()
                ),
            ))
        }
    };
    let sorted = match p.get("sort").map(String::as_str) {
        None => false,
        Some(_) if dim != Dim::Url => {
            return Err(bad("sort", "only with dim=url".to_string()));
        }
        Some(by @ ("visitors" | "avg_engaged_seconds")) if !cfg.url_visitors => {
            return Err(bad(
                "sort",
                format!("`{by}`: per-url visitors are not counted (agg.url_visitors = false; set it to true, and the next start rebuilds the aggregates from the log)"),
            ));
        }
        Some(by) => {
            dim = match by {
                "views" => Dim::Url,
                "entries" => Dim::EntryPage,
                "exits" => Dim::ExitPage,
                "engaged_seconds" => Dim::UrlEngaged,
                "visitors" => Dim::UrlVisitors,
                "avg_engaged_seconds" => Dim::UrlAvgEngaged,
                other => {
                    return Err(bad(
                        "sort",
                        format!("`{other}`: one of views, visitors, engaged_seconds, avg_engaged_seconds, entries, exits"),
                    ))
                }
            };
            true
        }
    };
    Ok(Request::Top {
        dim,
        range: range(&p, now_ms, cfg, "-1h")?,
        site: site(&p)?,
        limit: number(&p, "limit", 10, MAX_LIMIT as i64)? as usize,
        sorted,
    })
}

/// `/v1/top` of a pageview dimension: `filter=dim:value,dim:value` (every pair must match),
/// `bots=include|exclude` (default exclude; a `bot` breakdown or filter sees them anyway),
/// `sort=views|visitors`.
/// `dim=` naming one pageview dimension or two (`channel,device`): their positions, an error
/// naming the trouble for a list that is not one or two of them; None when it names none (a
/// url, referrer or site list).
fn dims_of(text: &str, cfg: &AggConfig) -> Option<Result<Vec<usize>, BadParam>> {
    let names: Vec<&str> = text.split(',').map(str::trim).collect();
    let found: Vec<Option<usize>> = names.iter().map(|n| cfg.dim_index(n)).collect();
    if found.iter().all(Option::is_none) {
        return None;
    }
    let dims: Vec<usize> = found.iter().flatten().copied().collect();
    Some(
        if dims.len() != names.len() || dims.len() > 2 || dims.first() == dims.get(1) {
            Err(bad(
                "dim",
                format!(
                "`{text}`: one or two different pageview dimensions (e.g. channel,device) of {}",
                cfg.dim_list()
            ),
            ))
        } else {
            Ok(dims)
        },
    )
}

fn parse_breakdown(
    dims: Vec<usize>,
    p: &HashMap<String, String>,
    now_ms: i64,
    cfg: &AggConfig,
) -> Result<Request, BadParam> {
    let mut filter = DimFilter::default();
    if let Some(f) = p.get("filter") {
        for pair in f.split(',').filter(|s| !s.trim().is_empty()) {
            let (d, v) = pair.split_once(':').ok_or_else(|| {
                bad(
                    "filter",
                    format!("`{pair}`: write dimension:value, e.g. channel:search"),
                )
            })?;
            let d = cfg.dim_index(d.trim()).ok_or_else(|| {
                bad(
                    "filter",
                    format!("`{d}`: a dimension, one of {}", cfg.dim_list()),
                )
            })?;
            filter.is.push((d, v.trim().to_string()));
        }
    }
    filter.bots = match p.get("bots").map(String::as_str) {
        None | Some("exclude") => false,
        Some("include") => true,
        Some(other) => return Err(bad("bots", format!("`{other}`: include or exclude"))),
    };
    let by_visitors = match p.get("sort").map(String::as_str) {
        None | Some("views") => false,
        Some("visitors") => true,
        Some(other) => {
            return Err(bad(
                "sort",
                format!("`{other}`: views or visitors for a pageview dimension"),
            ))
        }
    };
    Ok(Request::Breakdown {
        dims,
        range: range(p, now_ms, cfg, "-1h")?,
        site: site(p)?,
        limit: number(p, "limit", 10, MAX_LIMIT as i64)? as usize,
        filter,
        by_visitors,
    })
}

/// Step names and their minutes.
pub const STEPS: [(&str, i64); 7] = [
    ("1m", 1),
    ("5m", 5),
    ("10m", 10),
    ("15m", 15),
    ("30m", 30),
    ("1h", 60),
    ("1d", 1440),
];

/// The name of a step in minutes.
pub fn step_name(step: i64) -> &'static str {
    STEPS
        .iter()
        .find(|(_, m)| *m == step)
        .map_or("?", |(n, _)| n)
}

fn parse_series(query: Option<&str>, now_ms: i64, cfg: &AggConfig) -> Result<Request, BadParam> {
    let p = pairs(query, &["from", "to", "step", "site", "url"])?;
    let step = match p.get("step") {
        None => 1,
        Some(s) => STEPS
            .iter()
            .find(|(n, _)| n == s)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                bad(
                    "step",
                    format!("`{s}`: one of {}", STEPS.map(|(n, _)| n).join(", ")),
                )
            })?,
    };
    let r = step_range(range(&p, now_ms, cfg, "-1h")?, step, now_ms, cfg)?;
    let url = match p.get("url") {
        Some(u) if u.is_empty() => return Err(bad("url", "is empty")),
        u => u.cloned(),
    };
    Ok(Request::Timeseries {
        range: r,
        step,
        site: site(&p)?,
        url,
    })
}

/// The step of minutes named `name` (`1m` … `1d`).
pub fn step_of(name: &str) -> Option<i64> {
    STEPS.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
}

/// `r` aligned to whole steps of `step` minutes, checked: the buckets that fine must exist
/// for the whole range, and at most [`MAX_POINTS`] steps.
pub fn step_range(
    mut r: Range,
    step: i64,
    now_ms: i64,
    cfg: &AggConfig,
) -> Result<Range, BadParam> {
    let now_min = now_ms.div_euclid(60_000);
    let hour_floor = (now_min.div_euclid(60) - cfg.hour_window) * 60;
    if step < 1440 && r.from < hour_floor {
        return Err(bad(
            "step",
            format!(
                "{} is finer than a day, but the range starts before the hour window ({} d); use step=1d",
                step_name(step),
                cfg.hour_window / 24
            ),
        ));
    }
    if step < 60 && r.from < now_min - cfg.minute_window {
        return Err(bad(
            "step",
            format!(
                "{} is finer than an hour, but the range starts before the minute window ({} h); use step=1h",
                step_name(step),
                cfg.minute_window / 60
            ),
        ));
    }
    r.from = r.from.div_euclid(step) * step;
    r.to = (r.to + step - 1).div_euclid(step) * step;
    if (r.to - r.from) / step > MAX_POINTS {
        return Err(bad(
            "step",
            format!(
                "{} points: at most {MAX_POINTS}; use a coarser step",
                (r.to - r.from) / step
            ),
        ));
    }
    Ok(r)
}

/// The parameters of `GET /v1/live`: the last `minutes` (1..=60, default 30) minutes, the
/// current one included, of one site or all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveParams {
    pub minutes: i64,
    pub site: Option<String>,
}

/// Validates the query string of `/v1/live`.
pub fn parse_live(query: Option<&str>) -> Result<LiveParams, BadParam> {
    let p = pairs(query, &["minutes", "site"])?;
    Ok(LiveParams {
        minutes: number(&p, "minutes", 30, MAX_REALTIME_MINUTES)?,
        site: site(&p)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_311_543_462; // 2026-11-22T01:39:03.462Z

    fn cfg() -> AggConfig {
        AggConfig::default()
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("from", "now", NOW), Ok(NOW));
        assert_eq!(parse_time("from", "-15m", NOW), Ok(NOW - 900_000));
        assert_eq!(parse_time("from", "-7d", NOW), Ok(NOW - 7 * 86_400_000));
        assert_eq!(parse_time("from", "1795311543", NOW), Ok(1_795_311_543_000));
        assert_eq!(
            parse_time("from", "2026-11-22T01:39:03Z", NOW),
            Ok(1_795_311_543_000)
        );
        assert_eq!(
            parse_time("from", "2026-11-22T02:39:03+01:00", NOW),
            Ok(1_795_311_543_000)
        );
        for bad in ["yesterday", "-15", "-x", "", "2026-13-01T00:00:00Z", "1e99"] {
            let e = parse_time("from", bad, NOW).unwrap_err();
            assert_eq!(e.param, "from", "{bad}");
        }
    }

    #[test]
    fn top_defaults_and_errors() {
        let r = parse("/v1/top", None, NOW, &cfg()).unwrap().unwrap();
        let now_min = NOW / 60_000;
        assert_eq!(
            r,
            Request::Top {
                dim: Dim::Url,
                range: Range {
                    from: now_min - 60,
                    to: now_min + 1
                },
                site: None,
                limit: 10,
                sorted: false,
            }
        );
        let sorted = parse("/v1/top", Some("sort=exits"), NOW, &cfg())
            .unwrap()
            .unwrap();
        assert!(
            matches!(
                sorted,
                Request::Top {
                    dim: Dim::ExitPage,
                    sorted: true,
                    ..
                }
            ),
            "{sorted:?}"
        );
        for (q, param) in [
            ("dim=foo", "dim"),
            ("sort=uniques", "sort"),
            ("dim=site&sort=views", "sort"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=x", "limit"),
            ("from=-401d", "from"),
            ("from=now&to=-1h", "to"),
            ("bogus=1", "bogus"),
            ("limit=1&limit=2", "limit"),
            ("site=", "site"),
        ] {
            let e = parse("/v1/top", Some(q), NOW, &cfg()).unwrap().unwrap_err();
            assert_eq!(e.param, param, "{q}");
        }
        assert!(parse("/v1/nope", None, NOW, &cfg()).is_none());
        // Per-url visitors off: sorting by them is refused, naming the setting.
        let off = AggConfig {
            url_visitors: false,
            ..cfg()
        };
        for q in ["sort=visitors", "sort=avg_engaged_seconds"] {
            assert!(parse("/v1/top", Some(q), NOW, &cfg()).unwrap().is_ok());
            let e = parse("/v1/top", Some(q), NOW, &off).unwrap().unwrap_err();
            assert_eq!(e.param, "sort", "{q}");
            assert!(e.to_string().contains("agg.url_visitors"), "{e}");
        }
    }

    #[test]
    fn live_parameters() {
        assert_eq!(
            parse_live(None),
            Ok(LiveParams {
                minutes: 30,
                site: None
            })
        );
        assert_eq!(
            parse_live(Some("minutes=5&site=Shop.Example")),
            Ok(LiveParams {
                minutes: 5,
                site: Some("shop.example".into())
            })
        );
        for (q, param) in [
            ("minutes=0", "minutes"),
            ("minutes=61", "minutes"),
            ("site=", "site"),
            ("from=-1h", "from"),
        ] {
            assert_eq!(parse_live(Some(q)).unwrap_err().param, param, "{q}");
        }
    }

    #[test]
    fn old_ranges_widen_to_hours_and_steps_check() {
        let r = parse("/v1/summary", Some("from=-3d"), NOW, &cfg())
            .unwrap()
            .unwrap();
        let Request::Summary { range, .. } = r else {
            panic!()
        };
        assert_eq!(range.from % 60, 0);
        let e = parse("/v1/timeseries", Some("from=-3d&step=1m"), NOW, &cfg())
            .unwrap()
            .unwrap_err();
        assert_eq!(e.param, "step");
        let r = parse("/v1/timeseries", Some("from=-3d&step=1h"), NOW, &cfg())
            .unwrap()
            .unwrap();
        let Request::Timeseries { range, step, .. } = r else {
            panic!()
        };
        assert_eq!((step, range.from % 60, range.to % 60), (60, 0, 0));
        // Before the hour window (35 d): whole days, steps of a day, back to day_window.
        let r = parse("/v1/summary", Some("from=-60d&to=-50d"), NOW, &cfg())
            .unwrap()
            .unwrap();
        let Request::Summary { range, .. } = r else {
            panic!()
        };
        assert_eq!((range.from % 1440, range.to % 1440), (0, 0));
        assert_eq!(
            (range.to - range.from) / 1440,
            11,
            "-60d..-50d rounded out to whole days"
        );
        let e = parse("/v1/timeseries", Some("from=-60d&step=1h"), NOW, &cfg())
            .unwrap()
            .unwrap_err();
        assert!(e.reason.contains("step=1d"), "{e:?}");
        assert!(
            parse("/v1/timeseries", Some("from=-60d&step=1d"), NOW, &cfg())
                .unwrap()
                .is_ok()
        );
        let e = parse("/v1/summary", Some("from=-500d"), NOW, &cfg())
            .unwrap()
            .unwrap_err();
        assert!(
            e.param == "from" && e.reason.contains("day_window"),
            "{e:?}"
        );
        let e = parse("/v1/timeseries", Some("step=2m"), NOW, &cfg())
            .unwrap()
            .unwrap_err();
        assert_eq!(e.param, "step");
        assert_eq!(minute_rfc3339(NOW / 60_000), "2026-11-22T01:39:00Z");
    }
}
