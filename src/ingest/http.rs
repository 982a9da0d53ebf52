//! The HTTP port of one shard (hyper on glommio): the pixel endpoint, the acknowledged batch
//! endpoint, Prometheus metrics and health.
//!
//! Every shard accepts on the same `SO_REUSEPORT` address, so connections spread over shards
//! like UDP flows do; a request's events go to the log of the shard that serves it.
//! - `GET /p.gif?url=…&ref=…&vid=…&a=pv|hb`: stores one JSON line built from the query
//!   parameters (kept percent-encoded, exactly like nginx's `$arg_*`), the `User-Agent`, the
//!   `Referer` and the client address (`X-Forwarded-For` only from a trusted proxy), and
//!   answers a 1×1 transparent GIF with `Cache-Control: no-store`.
//! - `POST /v1/events`: an NDJSON body (≤ `http_max_body`); answers 200
//!   `{"accepted":N,"durable_offset":{"shard":S,"offset":O}}` only after the batch is durable
//!   (fsynced) — the one path with an end-to-end acknowledgement. 413 over the limit, 400 for a
//!   line that is not JSON (nothing of the body is stored), 503 with `Retry-After` when the
//!   shard cannot take it.
//! - `GET /v1/top`, `/v1/timeseries`, `/v1/summary`, `/v1/realtime`: the query API (`query`).
//! - `GET /metrics`, `/healthz`, `/readyz`.
//! - `/v1/log`, `/v1/log/shards`, `/v1/consumers/…`: the log over HTTP (`logapi`).
//! - `GET /` and `/dashboard/*`: the dashboard's static page (`dashboard`); `GET /v1/live`:
//!   its server-sent-events stream (`dashboard::live`).
//!
//! Access: with `auth_token` configured, [`route`] checks `Authorization: Bearer …` (compared
//! in constant time) before anything else, for every path except the pixel (browsers send it
//! without a token), health, and the dashboard's static shell, which holds no data. One
//! central check, so that no endpoint added later can forget it.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use http_body_util::Either;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};

use super::Ingest;
use crate::log::{AppendError, Transport};
use crate::metrics::{self, ShardStats};
use crate::sys::now_ns;

/// A 1×1 transparent GIF (43 bytes), the classic tracking pixel.
pub const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// A response body: a whole body, or the endless stream of `/v1/live`.
pub type Body = Either<Full<Bytes>, crate::dashboard::live::LiveBody>;

/// The API token (`auth_token`). Its `Debug` never shows it.
#[derive(Clone)]
pub struct AuthToken(Vec<u8>);

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

impl AuthToken {
    /// Shortest accepted token: a guessable one would defeat the point.
    pub const MIN_LEN: usize = 16;

    /// Checks that `t` can travel in an `Authorization` header and is long enough; the
    /// reason never contains the token.
    pub fn new(t: &str) -> Result<AuthToken, String> {
        if t.len() < Self::MIN_LEN {
            return Err(format!("shorter than {} characters", Self::MIN_LEN));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "only printable ASCII without spaces can travel in an Authorization header".into(),
            );
        }
        Ok(AuthToken(t.as_bytes().to_vec()))
    }

    /// Whether an `Authorization` header value carries this token. The comparison takes the
    /// same time wherever the first wrong byte is (`subtle`), so timing cannot guess it.
    pub fn accepts(&self, header: Option<&hyper::header::HeaderValue>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(given) = header.map(|h| h.as_bytes()).and_then(|h| {
            let (scheme, rest) = (h.get(..7)?, h.get(7..)?);
            scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
        }) else {
            return false;
        };
        bool::from(given.trim_ascii().ct_eq(&self.0))
    }
}

/// Paths served without a token: the pixel (browsers cannot add one), health probes, and
/// the dashboard's static shell (no data in it; the page asks for the token).
fn is_public(path: &str) -> bool {
    matches!(path, "/p.gif" | "/healthz" | "/readyz") || crate::dashboard::asset(path).is_some()
}

/// What every shard's HTTP server needs.
pub struct HttpContext {
    pub shard: usize,
    pub ingest: Rc<Ingest>,
    /// Every shard's counters, for `/metrics` and `/readyz`.
    pub all_stats: Arc<Vec<Arc<ShardStats>>>,
    /// The query fan-out of this shard.
    pub hub: Rc<crate::query::Hub>,
    /// The log over HTTP and named consumers (shared by every shard).
    pub log_api: Arc<crate::logapi::LogApi>,
}

/// Binds `addr` (glommio sets `SO_REUSEPORT`).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).map_err(crate::sys::os_error)
}

/// Serves connections until the shard stops.
pub async fn run(listener: TcpListener, ctx: Rc<HttpContext>) -> io::Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("pixeld: shard {}: http accept failed: {e}", ctx.shard);
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let stats = ctx.ingest.stats.clone();
        if ShardStats::get(&stats.http_connections) as usize >= ctx.ingest.cfg.http_max_connections
        {
            ShardStats::add(&stats.http_refused, 1);
            drop(stream);
            continue;
        }
        ShardStats::add(&stats.http_connections, 1);
        let peer = stream.peer_addr().ok();
        let ctx = ctx.clone();
        let header_timeout = ctx.ingest.cfg.http_header_timeout;
        glommio::spawn_local(async move {
            let service = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(route(req, peer, ctx).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                // Slowloris: a request whose head is not complete in time is closed.
                .timer(HyperTimer)
                .header_read_timeout(header_timeout)
                // Request heads above this get 431.
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(HyperStream(stream), service)
                .await;
            stats
                .http_connections
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        })
        .detach();
    }
}

/// The largest request head (request line and headers) read; hyper answers 431 above it.
const MAX_HEAD_BYTES: usize = 16 << 10;

/// hyper's timer (for `header_read_timeout`), on `futures-timer`'s global timer thread:
/// hyper requires `Send + Sync` sleeps, which glommio's executor-local timers are not. One
/// timer per connection waiting for a request head; nothing on the ingest path.
#[derive(Clone, Copy)]
struct HyperTimer;

struct HyperSleep(futures_timer::Delay);

impl std::future::Future for HyperSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl hyper::rt::Sleep for HyperSleep {}

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: std::time::Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep(futures_timer::Delay::new(duration)))
    }
    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(std::time::Instant::now()))
    }
}

fn response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

pub(crate) fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    response(status, "application/json", v.to_string())
}

fn unavailable(why: AppendError) -> Response<Full<Bytes>> {
    let mut r = json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"error": why.to_string(), "reason": why.reason().as_str()}),
    );
    r.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("1"),
    );
    r
}

/// The access check, then the dashboard and its live stream, then every other endpoint.
async fn route(
    req: Request<Incoming>,
    peer: Option<SocketAddr>,
    ctx: Rc<HttpContext>,
) -> Response<Body> {
    let path = req.uri().path();
    if let Some(token) = &ctx.ingest.cfg.auth_token {
        if !is_public(path) && !token.accepts(req.headers().get(hyper::header::AUTHORIZATION)) {
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
        return crate::dashboard::live::respond(&req, ctx);
    }
    if let Some(asset) = crate::dashboard::asset(path) {
        return crate::dashboard::serve(&req, asset).map(Either::Left);
    }
    handle(req, peer, &ctx).await.map(Either::Left)
}

async fn handle(
    req: Request<Incoming>,
    peer: Option<SocketAddr>,
    ctx: &HttpContext,
) -> Response<Full<Bytes>> {
    if crate::logapi::owns(req.uri().path()) {
        return crate::logapi::handle(req, &ctx.log_api).await;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/p.gif") | (&Method::POST, "/v1/events")
            if !ctx.ingest.cfg.allows(peer) =>
        {
            ShardStats::add(&ctx.ingest.stats.http_source_refused, 1);
            json(
                StatusCode::FORBIDDEN,
                serde_json::json!({"error": "this address may not send hits (ingest.allowed_sources)"}),
            )
        }
        (&Method::GET, "/p.gif") => pixel(&req, peer, ctx),
        (&Method::POST, "/v1/events") => events(req, peer, ctx).await,
        (&Method::GET, "/metrics") => response(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics::render(&ctx.all_stats) + &ctx.log_api.render_metrics(),
        ),
        (&Method::GET, "/v1/top" | "/v1/timeseries" | "/v1/summary" | "/v1/realtime") => {
            query(&req, ctx).await
        }
        (&Method::GET, "/healthz") => response(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => {
            // The export's state is a detail line: a broker that is down never makes pixeld
            // unready, since ingest goes on into the log.
            let detail = ctx
                .log_api
                .export_readiness()
                .map_or_else(String::new, |d| d + "\n");
            match metrics::not_ready(&ctx.all_stats) {
                None => response(StatusCode::OK, "text/plain", format!("ready\n{detail}")),
                Some(why) => response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {why}\n{detail}"),
                ),
            }
        }
        (
            _,
            "/p.gif" | "/v1/events" | "/metrics" | "/healthz" | "/readyz" | "/v1/top"
            | "/v1/timeseries" | "/v1/summary" | "/v1/realtime",
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

fn pixel(
    req: &Request<Incoming>,
    peer: Option<SocketAddr>,
    ctx: &HttpContext,
) -> Response<Full<Bytes>> {
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
            _ => continue,
        };
        obj.insert(key.into(), v.into());
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    if let Some(ua) = header("user-agent") {
        obj.insert("ua".into(), ua.into());
    }
    if let Some(r) = header("referer") {
        obj.insert("referer".into(), r.into());
    }
    if let Some(ip) = client_ip(req, peer, &ctx.ingest.cfg.trusted_proxies) {
        obj.insert("ip".into(), ip.to_string().into());
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
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

async fn events(
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

/// A query of the aggregates (see `query`): 400 naming the parameter for bad input, 503 when
/// a shard does not answer in time.
async fn query(req: &Request<Incoming>, ctx: &HttpContext) -> Response<Full<Bytes>> {
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
            Ok(body) => response(StatusCode::OK, "application/json", body),
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

/// glommio's `TcpStream` seen through hyper's I/O traits.
struct HyperStream(TcpStream);

impl hyper::rt::Read for HyperStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // Read into a stack buffer and copy: no unsafe needed to expose hyper's
        // uninitialised buffer as a slice.
        let mut tmp = [0u8; 8192];
        let want = tmp.len().min(buf.remaining());
        match Pin::new(&mut self.0).poll_read(cx, &mut tmp[..want]) {
            Poll::Ready(Ok(n)) => {
                buf.put_slice(&tmp[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for HyperStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}
