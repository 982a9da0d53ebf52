//! The ingest endpoints of the HTTP port; a request's events go to the log of the shard that
//! serves it, through the same [`crate::ingest::Ingest::line`] as UDP and TCP.
//! - `GET /p.gif?url=…&ref=…&vid=…&a=pv|hb|event&inc=…&n=…&p=…` (and `POST`, as
//!   `navigator.sendBeacon` sends it; the body is ignored): stores one JSON line built from the
//!   query parameters (kept percent-encoded, exactly like nginx's `$arg_*`), the `User-Agent`,
//!   the `Referer` and the client address (`X-Forwarded-For` only from a trusted proxy), and
//!   answers a 1×1 transparent GIF with `Cache-Control: no-store` and
//!   `Access-Control-Allow-Origin: *` (the tracking script may live on another origin;
//!   `OPTIONS` answers a CORS preflight). A hit without `vid` gets a cookieless id derived
//!   from the day's salt ([`super::visitor`]). A prefetch or prerender request
//!   (`Sec-Purpose: prefetch…`, `Purpose: prefetch`) is answered 204 and stored nowhere: no
//!   reader saw a page; it is counted.
//! - `POST /v1/events`: an NDJSON body (≤ `http_max_body`); answers 200
//!   `{"accepted":N,"durable_offset":{"shard":S,"offset":O}}` only after the batch is durable
//!   (fsynced) — the one path with an end-to-end acknowledgement. 413 over the limit, 400 for a
//!   line that is not JSON (nothing of the body is stored), 503 with `Retry-After` when the
//!   shard cannot take it.

use std::net::{IpAddr, SocketAddr};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

use super::response::{json, response, unavailable};
use super::HttpContext;
use crate::log::Transport;
use crate::metrics::ShardStats;
use crate::sys::now_ns;

/// A 1×1 transparent GIF (43 bytes), the classic tracking pixel.
pub const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// The client address: the peer, or the first `X-Forwarded-For` entry when the peer is a
/// trusted proxy.
fn client_ip(
    req: &Request<Incoming>,
    peer: Option<SocketAddr>,
    trusted: &[IpAddr],
) -> Option<IpAddr> {
    let peer_ip = peer.map(|p| p.ip());
    if peer_ip.is_some_and(|ip| trusted.contains(&ip)) {
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    peer_ip
}

/// Whether the browser sent this request to prefetch or prerender a page nobody looks at
/// yet (`Sec-Purpose: prefetch` and `prefetch;prerender`, or the older `Purpose`/`X-Moz`).
fn is_prefetch(req: &Request<Incoming>) -> bool {
    ["sec-purpose", "purpose", "x-moz"].iter().any(|h| {
        req.headers()
            .get(*h)
            .is_some_and(|v| v.as_bytes().starts_with(b"prefetch"))
    })
}

/// The headers every pixel answer carries: never cached, readable from any origin.
fn pixel_headers(r: &mut Response<Full<Bytes>>) {
    use hyper::header::{HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL};
    let h = r.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
}

/// `OPTIONS /p.gif`: the CORS preflight of a page on another origin.
pub(crate) fn pixel_preflight() -> Response<Full<Bytes>> {
    use hyper::header::{
        HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
        ACCESS_CONTROL_MAX_AGE,
    };
    let mut r = response(StatusCode::NO_CONTENT, "text/plain", Bytes::new());
    pixel_headers(&mut r);
    let h = r.headers_mut();
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type"),
    );
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    r
}

/// `GET` or `POST /p.gif`.
pub(crate) fn pixel(
    req: &Request<Incoming>,
    peer: Option<SocketAddr>,
    ctx: &HttpContext,
) -> Response<Full<Bytes>> {
    if is_prefetch(req) {
        ShardStats::add(&ctx.ingest.stats.http_pixel_prefetch, 1);
        let mut r = response(StatusCode::NO_CONTENT, "image/gif", Bytes::new());
        pixel_headers(&mut r);
        return r;
    }
    let recv = now_ns();
    let mut obj = serde_json::Map::new();
    obj.insert(
        "msec".into(),
        serde_json::json!((recv / 1_000_000) as f64 / 1000.0),
    );
    for pair in req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = match k {
            "url" => "url",
            "ref" => "urlref",
            "vid" => "vid",
            "a" => "action",
            "inc" => "inc",
            "n" => "name",
            "p" => "props",
            _ => continue,
        };
        obj.insert(key.into(), v.into());
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let ua = header("user-agent");
    let ip = client_ip(req, peer, &ctx.ingest.cfg.trusted_proxies).map(|ip| ip.to_string());
    let has_vid = obj
        .get("vid")
        .and_then(|v| v.as_str())
        .is_some_and(|v| !v.is_empty());
    if let (false, Some(ids)) = (has_vid, &ctx.visitor_ids) {
        let site = obj
            .get("url")
            .and_then(|v| v.as_str())
            .and_then(crate::parse::event::site_of);
        if let Some(site) = site {
            let (ip, ua) = (ip.as_deref().unwrap_or(""), ua.as_deref().unwrap_or(""));
            match ids.derive(recv, &site, ip, ua) {
                Some(vid) => {
                    obj.insert("vid".into(), vid.into());
                }
                None => ShardStats::add(&ctx.ingest.stats.http_pixel_no_salt, 1),
            }
        }
    }
    if let Some(ua) = ua {
        obj.insert("ua".into(), ua.into());
    }
    if let Some(r) = header("referer") {
        obj.insert("referer".into(), r.into());
    }
    if let Some(ip) = ip {
        obj.insert("ip".into(), ip.into());
    }
    let line = serde_json::Value::Object(obj).to_string();
    ctx.ingest
        .stats
        .count_received(Transport::Http, 1, line.len() as u64);
    // A refusal is counted by `line`; the browser gets its pixel either way.
    let _ = ctx
        .ingest
        .line(Transport::Http, peer, line.as_bytes(), recv);
    let mut r = response(StatusCode::OK, "image/gif", Bytes::from_static(&PIXEL_GIF));
    pixel_headers(&mut r);
    r
}

pub(crate) async fn events(
    req: Request<Incoming>,
    peer: Option<SocketAddr>,
    ctx: &HttpContext,
) -> Response<Full<Bytes>> {
    let limit = ctx.ingest.cfg.http_max_body;
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    serde_json::json!({"error": format!("body larger than http_max_body ({limit} bytes)")}),
                );
            }
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": format!("cannot read body: {e}")}),
            );
        }
    };
    // Validate the whole body before storing any of it, so a 400 stores nothing.
    let lines: Vec<&[u8]> = body
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .collect();
    for (i, l) in lines.iter().enumerate() {
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(l) {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": format!("line {} is not JSON: {e}", i + 1), "line": i + 1}),
            );
        }
    }
    // Push back on the client while the log's queue is full, instead of refusing.
    while ctx.ingest.log.is_congested() {
        if let Err(e) = ctx.ingest.log.wait_for_space().await {
            return unavailable(e);
        }
    }
    let stats = &ctx.ingest.stats;
    stats.count_received(Transport::Http, lines.len() as u64, body.len() as u64);
    let recv = now_ns();
    let mut last = None;
    for (i, l) in lines.iter().enumerate() {
        match ctx.ingest.line(Transport::Http, peer, l, recv) {
            Ok(o) => last = o.or(last),
            Err(e) => {
                // Lines after a refusal are not offered to the log; count them too.
                stats.count_drop(e.reason(), (lines.len() - i - 1) as u64);
                return unavailable(e);
            }
        }
    }
    ctx.ingest.router.flush(crate::route::BATCH_INCS).await;
    let durable = match last {
        Some(o) => match ctx.ingest.log.wait_durable(o).await {
            Ok(d) => Some(d),
            Err(e) => return unavailable(e),
        },
        None => ctx.ingest.log.durable_offset(),
    };
    json(
        StatusCode::OK,
        serde_json::json!({"accepted": lines.len(), "durable_offset": {"shard": ctx.shard, "offset": durable}}),
    )
}
