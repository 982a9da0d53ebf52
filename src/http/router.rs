//! Which code answers a request: the access check first ([`super::auth`]), then the
//! dashboard and its live stream, the log API and consumers, and every other endpoint by
//! method and path. To add an endpoint, add its file beside this one and one arm here.

use std::net::SocketAddr;
use std::rc::Rc;

use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};

use super::response::json;
use super::{auth, consumers, dashboard, ingest, log, ops, query, tracker, Body, HttpContext};
use crate::metrics::ShardStats;

/// The access check, then the dashboard and its live stream, then every other endpoint.
pub(crate) async fn route(
    req: Request<Incoming>,
    peer: Option<SocketAddr>,
    ctx: Rc<HttpContext>,
) -> Response<Body> {
    let path = req.uri().path();
    if let Some(token) = &ctx.cfg.auth_token {
        if !auth::is_public(path) && !token.accepts(req.headers().get(hyper::header::AUTHORIZATION))
        {
            ShardStats::add(&ctx.ingest.stats.http_unauthorized, 1);
            let mut r = json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "this pixeld requires a token: send `Authorization: Bearer <auth_token>` (see auth_token in the config)"}),
            );
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer realm=\"pixeld\""),
            );
            return r.map(Either::Left);
        }
    }
    if path == "/v1/live" {
        if req.method() != Method::GET {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": "method not allowed"}),
            )
            .map(Either::Left);
        }
        return dashboard::live::respond(&req, ctx);
    }
    if let Some(asset) = dashboard::asset(path) {
        return dashboard::serve(&req, asset).map(Either::Left);
    }
    if tracker::owns(path) {
        return tracker::serve(&req).map(Either::Left);
    }
    handle(req, peer, &ctx).await.map(Either::Left)
}

async fn handle(
    req: Request<Incoming>,
    peer: Option<SocketAddr>,
    ctx: &HttpContext,
) -> Response<Full<Bytes>> {
    if log::owns(req.uri().path()) {
        return log::handle(req, &ctx.log_api).await;
    }
    if consumers::owns(req.uri().path()) {
        return consumers::handle(req, &ctx.log_api).await;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::POST, "/p.gif") | (&Method::POST, "/v1/events")
            if !ctx.ingest.cfg.allows(peer) =>
        {
            ShardStats::add(&ctx.ingest.stats.http_source_refused, 1);
            json(
                StatusCode::FORBIDDEN,
                serde_json::json!({"error": "this address may not send hits (ingest.allowed_sources)"}),
            )
        }
        (&Method::GET | &Method::POST, "/p.gif") => ingest::pixel(&req, peer, ctx).await,
        (&Method::OPTIONS, "/p.gif") => ingest::pixel_preflight(),
        (&Method::POST, "/v1/events") => ingest::events(req, peer, ctx).await,
        (&Method::GET, "/metrics") => ops::metrics(ctx),
        (&Method::GET, "/v1/top" | "/v1/timeseries" | "/v1/summary" | "/v1/realtime") => {
            query::query(&req, ctx).await
        }
        (&Method::GET | &Method::POST, "/v1/query") => query::structured(req, ctx).await,
        (&Method::GET, "/v1/scans") => query::scans(ctx),
        (&Method::DELETE, p) if p.starts_with("/v1/scans/") => query::cancel_scan(p, ctx),
        (&Method::POST, "/v1/admin/rebuild-aggregates") => query::rebuild(&req, ctx).await,
        (&Method::GET, "/healthz") => ops::healthz(),
        (&Method::GET, "/readyz") => ops::readyz(ctx),
        (
            _,
            "/p.gif"
            | "/v1/events"
            | "/metrics"
            | "/healthz"
            | "/readyz"
            | "/v1/top"
            | "/v1/timeseries"
            | "/v1/summary"
            | "/v1/realtime"
            | "/v1/query"
            | "/v1/scans"
            | "/v1/admin/rebuild-aggregates",
        ) => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "method not allowed"}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no such endpoint"}),
        ),
    }
}
