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
