//! Operations endpoints: `GET /metrics` (every shard's counters, the consumers' lag, the
//! export's counters and the country database's state, in the Prometheus text format), `GET /healthz` (the process answers) and
//! `GET /readyz` (every shard recovered and none poisoned, out of disk or with a UDP socket
//! that failed for good; the export's state is a detail line, never a reason to be unready).

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};

use super::response::response;
use super::HttpContext;
use crate::metrics;

/// `GET /metrics`.
pub(crate) fn metrics(ctx: &HttpContext) -> Response<Full<Bytes>> {
    response(
        StatusCode::OK,
        "text/plain; version=0.0.4",
        metrics::render(&ctx.all_stats)
            + &ctx.log_api.render_metrics()
            + &ctx
                .export
                .as_ref()
                .map_or_else(String::new, |e| e.render(&ctx.log_api.durable_nexts()))
            + &metrics::render_geo(ctx.cfg.geo.as_deref(), ctx.cfg.bot_networks.as_deref()),
    )
}

/// `GET /healthz`.
pub(crate) fn healthz() -> Response<Full<Bytes>> {
    response(StatusCode::OK, "text/plain", "ok\n")
}

/// `GET /readyz`.
pub(crate) fn readyz(ctx: &HttpContext) -> Response<Full<Bytes>> {
    // The export's state is a detail line: a broker that is down never makes pixeld
    // unready, since ingest goes on into the log.
    let detail = ctx.export.as_ref().map_or_else(String::new, |e| {
        e.readiness(&ctx.log_api.durable_nexts()) + "\n"
    });
    match metrics::not_ready(&ctx.all_stats) {
        None => response(StatusCode::OK, "text/plain", format!("ready\n{detail}")),
        Some(why) => response(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("not ready: {why}\n{detail}"),
        ),
    }
}
