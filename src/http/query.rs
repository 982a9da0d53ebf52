//! `GET /v1/top`, `/v1/timeseries`, `/v1/summary`, `/v1/realtime`, and `POST /v1/query` (or
//! `GET /v1/query?q=<JSON>`): the query API. The parameters are parsed by `query::params`, a
//! structured query by `query::api` (400 naming the parameter or field), the answer is the
//! shard's query fan-out (`query::Hub`, 503 when a shard does not answer in time). Every
//! answer says whether the aggregates are complete (`query::with_completeness`).

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

use super::response::{aggregation_off, json, response};
use super::HttpContext;
use crate::sys::now_ns;

/// A query of the aggregates (see `query`): 400 naming the parameter for bad input, 503 when
/// a shard does not answer in time.
pub(crate) async fn query(req: &Request<Incoming>, ctx: &HttpContext) -> Response<Full<Bytes>> {
    let started = std::time::Instant::now();
    let now_ms = (now_ns() / 1_000_000) as i64;
    if let Some(r) = aggregation_off(ctx.hub.agg().borrow().cfg.enabled) {
        return r;
    }
    let parsed = {
        let agg = ctx.hub.agg().borrow();
        crate::query::params::parse(req.uri().path(), req.uri().query(), now_ms, &agg.cfg)
    };
    let r = match parsed {
        None => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no such endpoint"}),
        ),
        Some(Err(e)) => bad_param(&e),
        Some(Ok(q)) => answered(ctx.hub.answer(q).await, ctx),
    };
    ctx.ingest
        .stats
        .agg
        .observe_query(started.elapsed().as_secs_f64());
    r
}

/// 400 naming the parameter or field.
fn bad_param(e: &crate::query::params::BadParam) -> Response<Full<Bytes>> {
    json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({"error": e.to_string(), "param": e.param}),
    )
}

/// A query's answer with its completeness; 400 for a question found bad while answering it,
/// 503 when a shard did not answer.
fn answered(
    r: Result<String, crate::query::QueryError>,
    ctx: &HttpContext,
) -> Response<Full<Bytes>> {
    match r {
        Ok(body) => response(
            StatusCode::OK,
            "application/json",
            crate::query::with_completeness(
                body,
                // With aggregation off only scans of the log answer, and they read every
                // durable record: nothing is left to catch up on.
                crate::metrics::aggregates_complete(&ctx.all_stats)
                    || !ctx.hub.agg().borrow().cfg.enabled,
                crate::metrics::catchup_records(&ctx.all_stats),
            ),
        ),
        Err(crate::query::QueryError::BadParam(e)) => bad_param(&e),
        Err(e) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": e.to_string()}),
        ),
    }
}

/// Sets a scan's cancel flag when dropped: hyper drops the handler's future when the client
/// goes away, and the scan threads see it within 4 096 records.
struct CancelOnDrop(crate::query::scan::Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Scans estimated to read at least this many records say so on stderr when they start.
const LONG_SCAN_RECORDS: u64 = 10_000_000;

/// `GET /v1/scans`: the scans running in the process, oldest first, with how far they got.
pub(crate) fn scans(ctx: &HttpContext) -> Response<Full<Bytes>> {
    let list: Vec<_> = ctx
        .scans
        .list()
        .iter()
        .map(|p| {
            let read = p.records_read();
            let secs = p.elapsed().as_secs_f64();
            serde_json::json!({
                "id": p.id,
                "started": humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(p.started_ms.max(0) as u64)
                ).to_string(),
                "elapsed_seconds": (secs * 1000.0).round() / 1000.0,
                "records_read": read,
                "records_estimated": p.estimate,
                "progress": p.fraction(read),
                "records_per_second": p.rate(read).round(),
                "query": p.query,
            })
        })
        .collect();
    json(StatusCode::OK, serde_json::json!({"scans": list}))
}

/// `DELETE /v1/scans/<id>`: stops that scan (its client gets 503 "the scan was cancelled");
/// 404 when no such scan runs.
pub(crate) fn cancel_scan(path: &str, ctx: &HttpContext) -> Response<Full<Bytes>> {
    let id = path
        .strip_prefix("/v1/scans/")
        .and_then(|s| s.parse::<u64>().ok());
    match id {
        Some(id) if ctx.scans.cancel(id) => {
            json(StatusCode::OK, serde_json::json!({"cancelled": id}))
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no such scan is running (GET /v1/scans lists them)"}),
        ),
    }
}

/// A `POST /v1/query` with `"include": {"scan": true}`: the range (and the comparison
/// period) read from every shard's retained log on the blocking pool (`query::scan`), after
/// an estimate that refuses what is over the cap. 400 for too large, 503 for an unreadable
/// log.
async fn scanned(
    plan: crate::query::api::Plan,
    body: &[u8],
    ctx: &HttpContext,
) -> Response<Full<Bytes>> {
    use crate::query::{api, scan};
    let cfg = ctx.hub.agg().borrow().cfg.clone();
    let nexts = ctx.log_api.durable_nexts();
    let ranges: Vec<_> = std::iter::once(plan.range)
        .chain(plan.compare.map(|(_, r)| r))
        .collect();
    // The estimate reads the logs' indexes: on the blocking pool too, never on the executor.
    let froms: Vec<i64> = ranges.iter().map(|r| r.from).collect();
    let (readers, c, n) = (ctx.log_api.clone(), cfg.clone(), nexts.clone());
    let estimate: u64 = super::blocking(move || {
        froms
            .iter()
            .map(|&from| scan::estimate(&readers.logs, &n, &c, from))
            .sum()
    })
    .await;
    if estimate > scan::MAX_SCAN_RECORDS {
        return bad_param(&crate::query::params::bad(
            "include",
            scan::ScanError::TooLarge(estimate).to_string(),
        ));
    }
    let cancel = CancelOnDrop(Default::default());
    let progress = ctx.scans.start(body, estimate, cancel.0.clone());
    if estimate >= LONG_SCAN_RECORDS {
        eprintln!(
            "pixeld: scan {}: reading about {estimate} records of {} shards' logs (GET /v1/scans shows it, DELETE /v1/scans/{} stops it)",
            progress.id,
            ctx.log_api.logs.len(),
            progress.id
        );
    }
    let mut rows = Vec::new();
    for range in ranges {
        let spec = api::scan_spec(&plan, range);
        let (readers, cfg, nexts, p) = (
            ctx.log_api.clone(),
            cfg.clone(),
            nexts.clone(),
            progress.clone(),
        );
        let started = std::time::Instant::now();
        let r = super::blocking(move || scan::scan(&readers.logs, &nexts, &cfg, &spec, &p)).await;
        match r {
            Ok(s) => rows.push(api::scan_rows(
                &plan,
                range,
                s,
                started.elapsed().as_secs_f64(),
                progress.id,
            )),
            Err(e @ (scan::ScanError::TooLarge(_) | scan::ScanError::TooManyRows)) => {
                return bad_param(&crate::query::params::bad("include", e.to_string()))
            }
            Err(e) => {
                return json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"error": e.to_string()}),
                )
            }
        }
    }
    if progress.elapsed() >= scan::REPORT_EVERY {
        eprintln!(
            "pixeld: scan {}: done, {}",
            progress.id,
            progress.describe(progress.records_read())
        );
    }
    let mut rows = rows.into_iter();
    let Some(now) = rows.next() else {
        return answered(Ok(String::new()), ctx);
    };
    answered(Ok(api::compose(&plan, now, rows.next())), ctx)
}

/// The largest `POST /v1/query` body.
const MAX_QUERY_BODY: usize = 64 * 1024;

/// `POST /v1/query` with the query as its JSON body, or `GET /v1/query?q=<the same JSON>`
/// (`query::api`): 400 naming the field for bad input or a question no precomputed cell
/// answers, 413 for a body over 64 KiB, 503 when a shard does not answer in time.
pub(crate) async fn structured(req: Request<Incoming>, ctx: &HttpContext) -> Response<Full<Bytes>> {
    let started = std::time::Instant::now();
    let now_ms = (now_ns() / 1_000_000) as i64;
    let body: Result<Vec<u8>, Response<Full<Bytes>>> = if req.method() == hyper::Method::GET {
        let mut q = None;
        for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
            if k != "q" || q.is_some() {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": format!("parameter `{k}`: GET /v1/query takes one parameter, q=<the query as JSON>"), "param": k}),
                );
            }
            q = Some(v.into_owned().into_bytes());
        }
        q.ok_or_else(|| {
            json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "GET /v1/query needs q=<the query as JSON> (or POST it as the body)", "param": "q"}),
            )
        })
    } else {
        match Limited::new(req.into_body(), MAX_QUERY_BODY)
            .collect()
            .await
        {
            Ok(b) => Ok(b.to_bytes().to_vec()),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                Err(json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    serde_json::json!({"error": format!("a query is at most {MAX_QUERY_BODY} bytes")}),
                ))
            }
            Err(e) => Err(json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": format!("cannot read body: {e}")}),
            )),
        }
    };
    let body = match body {
        Ok(b) => b,
        Err(r) => return r,
    };
    let plan = {
        let agg = ctx.hub.agg().borrow();
        crate::query::api::parse(&body, now_ms, &agg.cfg)
    };
    let r = match plan {
        Err(e) => bad_param(&e),
        Ok(plan) if plan.family == crate::query::api::Family::Scan => {
            scanned(plan, &body, ctx).await
        }
        Ok(plan) => {
            let enabled = ctx.hub.agg().borrow().cfg.enabled;
            match aggregation_off(enabled) {
                Some(off) => off,
                None => answered(ctx.hub.query(plan).await, ctx),
            }
        }
    };
    ctx.ingest
        .stats
        .agg
        .observe_query(started.elapsed().as_secs_f64());
    r
}

/// `POST /v1/admin/rebuild-aggregates?from=T&to=T` (both optional; `parse_time`'s forms):
/// recomputes that range of the aggregates from the retained logs on the running server
/// (`query::rebuild`). 200 with what was rebuilt; 400 for a bad time, 409 while another
/// rebuild runs here or a shard is still catching up, 503 when a shard does not answer.
pub(crate) async fn rebuild(req: &Request<Incoming>, ctx: &HttpContext) -> Response<Full<Bytes>> {
    use crate::query::rebuild::RebuildError;
    if let Some(r) = aggregation_off(ctx.hub.agg().borrow().cfg.enabled) {
        return r;
    }
    let now_ms = (now_ns() / 1_000_000) as i64;
    let mut bounds = [None, None];
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        let slot = match k.as_ref() {
            "from" => 0,
            "to" => 1,
            other => {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": format!("unknown parameter `{other}`; this endpoint takes from and to"), "param": other}),
                )
            }
        };
        match crate::query::params::parse_time(&k, &v, now_ms) {
            Ok(ms) => bounds[slot] = Some(ms.div_euclid(60_000)),
            Err(e) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": e.to_string(), "param": e.param}),
                )
            }
        }
    }
    match ctx.hub.rebuild(bounds[0], bounds[1]).await {
        Ok(report) => json(StatusCode::OK, serde_json::json!({ "rebuilt": report })),
        Err(e) => {
            let status = match e {
                RebuildError::Busy | RebuildError::CatchingUp(_) => StatusCode::CONFLICT,
                RebuildError::EmptyRange => StatusCode::BAD_REQUEST,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            json(status, serde_json::json!({"error": e.to_string()}))
        }
    }
}
