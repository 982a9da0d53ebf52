//! `GET /v1/top`, `/v1/timeseries`, `/v1/summary`, `/v1/realtime`: the query API. The
//! parameters are parsed by `query::params` (400 naming the parameter), the answer is the
//! shard's query fan-out (`query::Hub`, 503 when a shard does not answer in time). Every
//! answer says whether the aggregates are complete (`query::with_completeness`).

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

use super::response::{json, response};
use super::HttpContext;
use crate::sys::now_ns;

/// A query of the aggregates (see `query`): 400 naming the parameter for bad input, 503 when
/// a shard does not answer in time.
pub(crate) async fn query(req: &Request<Incoming>, ctx: &HttpContext) -> Response<Full<Bytes>> {
    let started = std::time::Instant::now();
    let now_ms = (now_ns() / 1_000_000) as i64;
    let parsed = {
        let agg = ctx.hub.agg().borrow();
        crate::query::params::parse(req.uri().path(), req.uri().query(), now_ms, &agg.cfg)
    };
    let r = match parsed {
        None => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no such endpoint"}),
        ),
        Some(Err(e)) => json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": e.to_string(), "param": e.param}),
        ),
        Some(Ok(q)) => match ctx.hub.answer(q).await {
            Ok(body) => response(
                StatusCode::OK,
                "application/json",
                crate::query::with_completeness(
                    body,
                    crate::metrics::aggregates_complete(&ctx.all_stats),
                    crate::metrics::catchup_records(&ctx.all_stats),
                ),
            ),
            Err(e) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": e.to_string()}),
            ),
        },
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
