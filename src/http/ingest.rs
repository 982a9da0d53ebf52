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

use std::ops::ControlFlow;
use std::sync::Arc;

use super::faults::Fault;
use super::idempotency::{Entry, KeyStore, PrefixMatch};
use super::response::{json, response, retry_soon, unavailable};
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
pub(crate) async fn pixel(
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
    let stats = &ctx.ingest.stats;
    if let (crate::ingest::PixelOverload::Wait(bound), true) =
        (ctx.ingest.cfg.pixel_overload, ctx.ingest.log.is_congested())
    {
        ShardStats::add(&stats.http_pixel_waited, 1);
        let room = async { ctx.ingest.log.wait_for_space().await.is_ok() };
        let late = async {
            glommio::timer::sleep(bound).await;
            false
        };
        let _ = futures_lite::future::or(room, late).await;
    }
    // A refusal is counted by `line` (and here, as the pixel's); the browser gets its pixel
    // either way: it would not retry.
    if ctx
        .ingest
        .line(Transport::Http, peer, line.as_bytes(), recv)
        .is_err()
    {
        ShardStats::add(&stats.http_pixel_dropped, 1);
    }
    let mut r = response(StatusCode::OK, "image/gif", Bytes::from_static(&PIXEL_GIF));
    pixel_headers(&mut r);
    r
}

/// How a batch's lines went into the log: the last offset appended, or the refusal and how
/// many lines (a prefix) were appended before it.
type Appended = Result<Option<u64>, (usize, crate::log::AppendError)>;

/// Appends `lines` to this shard's log without yielding (so that they are contiguous).
fn append(lines: &[&[u8]], peer: Option<SocketAddr>, ctx: &HttpContext) -> Appended {
    let stats = &ctx.ingest.stats;
    let recv = now_ns();
    let mut last = None;
    // The lines' own increments are applied together, at the latest on return.
    let _gathered = ctx.ingest.router.gather();
    for (i, l) in lines.iter().enumerate() {
        match ctx.ingest.line(Transport::Http, peer, l, recv) {
            Ok(o) => last = o.or(last),
            Err(e) => {
                // Lines after a refusal are not offered to the log; count them too.
                stats.count_drop(e.reason(), (lines.len() - i - 1) as u64);
                return Err((i, e));
            }
        }
    }
    Ok(last)
}

/// A 503 that says how many leading lines of the batch were stored (appended; with an
/// `Idempotency-Key`, also waited durable), so that a client without a key can resend just
/// the rest.
fn refused(e: crate::log::AppendError, stored: usize, lines: usize) -> Response<Full<Bytes>> {
    retry_soon(json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"error": e.to_string(), "reason": e.reason().as_str(), "stored": stored, "lines": lines}),
    ))
}

fn error(status: StatusCode, msg: String) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "error": msg }))
}

pub(crate) async fn events(
    req: Request<Incoming>,
    peer: Option<SocketAddr>,
    ctx: &HttpContext,
) -> Response<Full<Bytes>> {
    let key = match req.headers().get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if super::idempotency::valid_key(k) => Some(k.to_string()),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces".into(),
            )
        }
    };
    let limit = ctx.ingest.cfg.http_max_body;
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body larger than http_max_body ({limit} bytes)"),
                );
            }
            return error(StatusCode::BAD_REQUEST, format!("cannot read body: {e}"));
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
    ctx.ingest
        .stats
        .count_received(Transport::Http, lines.len() as u64, body.len() as u64);
    if let (Some(key), Some(store)) = (key, &ctx.keys) {
        return keyed(key, store, &body, &lines, peer, ctx).await;
    }
    let last = match append(&lines, peer, ctx) {
        Ok(last) => last,
        Err((stored, e)) => return refused(e, stored, lines.len()),
    };
    match durable_answer(last, lines.len(), ctx).await {
        Ok(v) => json(StatusCode::OK, v),
        Err(e) => unavailable(e),
    }
}

/// Waits until `last` (this shard's) is durable; the 200 answer of a batch of `n` lines.
async fn durable_answer(
    last: Option<u64>,
    n: usize,
    ctx: &HttpContext,
) -> Result<serde_json::Value, crate::log::AppendError> {
    ctx.ingest.router.flush(crate::route::BATCH_INCS).await;
    let durable = match last {
        Some(o) => Some(ctx.ingest.log.wait_durable(o).await?),
        None => ctx.ingest.log.durable_offset(),
    };
    Ok(
        serde_json::json!({"accepted": n, "durable_offset": {"shard": ctx.shard, "offset": durable}}),
    )
}

/// A batch with an `Idempotency-Key` (see [`super::idempotency`]): answered once, stored once.
async fn keyed(
    key: String,
    store: &Arc<KeyStore>,
    body: &[u8],
    lines: &[&[u8]],
    peer: Option<SocketAddr>,
    ctx: &HttpContext,
) -> Response<Full<Bytes>> {
    let Some(_held) = store.hold(&key) else {
        return retry_soon(error(
            StatusCode::CONFLICT,
            format!(
                "a request with Idempotency-Key {key:?} is in progress; retry once it is answered"
            ),
        ));
    };
    let fp = super::idempotency::fingerprint(body);
    let (st, k) = (store.clone(), key.clone());
    let known = match super::blocking(move || {
        st.prune_now_and_then()?;
        st.get(&k)
    })
    .await
    {
        Ok(e) => e,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    // What earlier attempts stored.
    let prior = match &known {
        None => 0,
        Some(e) if e.fingerprint != fp => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("Idempotency-Key {key:?} was used for a different body within ingest.idempotency_horizon; send a new batch with a new key"),
            )
        }
        Some(Entry {
            answer: Some(a), ..
        }) => {
            let mut r = json(StatusCode::OK, a.clone());
            r.headers_mut().insert(
                "idempotent-replayed",
                hyper::header::HeaderValue::from_static("true"),
            );
            return r;
        }
        Some(e) => match stored_before(e, lines, ctx).await {
            Ok(n) => n,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
        },
    };
    let mut entry = Entry {
        key,
        fingerprint: fp,
        shard: ctx.shard,
        floor: ctx.ingest.log.next_offset(),
        lines: lines.len() as u64,
        prior: prior as u64,
        answer: None,
        created_ms: known.as_ref().map_or(0, |e| e.created_ms),
    };
    let (st, e) = (store.clone(), entry.clone());
    if let Err(e) = super::blocking(move || st.put(&e, true)).await {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    let rest = lines.get(prior..).unwrap_or_default();
    // Test-only (`PIXELD_TEST_HTTP_FAULTS`; without the feature always `Fault::None`).
    let fault = super::faults::draw(ctx.shard, rest.len());
    let appended = match fault {
        Fault::Refuse { at } => {
            let taken = rest.get(..at).unwrap_or_default();
            append(taken, peer, ctx).and_then(|_| {
                // As if the log had refused line `at` under backpressure.
                let e = crate::log::AppendError::Backpressure;
                ctx.ingest
                    .stats
                    .count_drop(e.reason(), (rest.len() - taken.len()) as u64);
                Err((taken.len(), e))
            })
        }
        _ => append(rest, peer, ctx),
    };
    let last = match appended {
        Ok(last) => last,
        Err((stored, e)) => {
            // Made durable before answering, so that a retry reading the log sees them.
            if stored > 0 {
                ctx.ingest.router.flush(crate::route::BATCH_INCS).await;
                let _ = ctx
                    .ingest
                    .log
                    .wait_durable(ctx.ingest.log.next_offset().saturating_sub(1))
                    .await;
            }
            return refused(e, prior + stored, lines.len());
        }
    };
    let answer = match durable_answer(last, lines.len(), ctx).await {
        Ok(v) => v,
        Err(e) => return unavailable(e),
    };
    abort_fault_hook(fault == Fault::Abort);
    entry.answer = Some(answer.clone());
    let st = store.clone();
    if let Err(e) = super::blocking(move || st.put(&entry, false)).await {
        // The batch is stored; a retry resolves the pending entry from the log.
        eprintln!("pixeld: {e}");
    }
    if fault == Fault::Reset {
        return super::faults::mark_reset(json(StatusCode::OK, answer));
    }
    json(StatusCode::OK, answer)
}

/// How many leading lines of a pending entry's batch its attempts stored: `prior`, plus the
/// run found in its shard's durable log from its floor.
async fn stored_before(e: &Entry, lines: &[&[u8]], ctx: &HttpContext) -> Result<usize, String> {
    let prior = (e.prior as usize).min(lines.len());
    let rest: Vec<Vec<u8>> = lines
        .get(prior..)
        .unwrap_or_default()
        .iter()
        .map(|l| l.to_vec())
        .collect();
    let Some(log) = ctx.log_api.logs.get(e.shard).cloned() else {
        return Ok(prior);
    };
    let durable_next = ctx.log_api.durable_next(e.shard);
    let (floor, shard) = (e.floor, e.shard);
    let found = super::blocking(move || {
        let refs: Vec<&[u8]> = rest.iter().map(Vec::as_slice).collect();
        let mut m = PrefixMatch::new(&refs);
        log.read_durable(
            crate::log::reader::Start::Offset(floor),
            durable_next,
            |rec| {
                if m.push(rec.bytes) {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            },
            |_| {},
        )
        .map(|_| m.stored())
    })
    .await;
    match found {
        Ok(n) => Ok(prior + n),
        // The floor left the log (retention): nothing of this attempt can be found.
        Err(crate::log::fetch::FetchError::OutOfRange { .. }) => Ok(prior),
        Err(e) => Err(format!(
            "cannot read shard {shard}'s log to resolve the earlier attempt: {e}"
        )),
    }
}

/// Test-only fault hook (cargo feature `fault-injection`): `PIXELD_TEST_ABORT_AFTER_DURABLE=1`
/// kills the process once a keyed batch is durable, before it is answered or its key
/// completed, as a crash there would (tests/ingest/idempotency.rs retries it); so does an
/// `abort` drawn by `PIXELD_TEST_HTTP_FAULTS` (`drawn`, see [`super::faults`]).
#[cfg(feature = "fault-injection")]
fn abort_fault_hook(drawn: bool) {
    if std::env::var_os("PIXELD_TEST_ABORT_AFTER_DURABLE").is_some() {
        eprintln!("pixeld: PIXELD_TEST_ABORT_AFTER_DURABLE set: aborting before the answer");
        std::process::abort();
    }
    if drawn {
        eprintln!(
            "pixeld: PIXELD_TEST_HTTP_FAULTS: aborting after the fsync, before the answer (keyed batch {} of this shard)",
            super::faults::draws()
        );
        std::process::abort();
    }
}

#[cfg(not(feature = "fault-injection"))]
fn abort_fault_hook(_drawn: bool) {}
