//! `GET /v1/live?site=&minutes=30`: a server-sent-events stream of the realtime view, the
//! one endpoint the dashboard has beyond the JSON query API.
//!
//! Wire format (`text/event-stream`): first `retry: 3000` and a comment; then
//! - `event: snapshot` with `id: <boot>-<version>-<minute>` and one JSON line of data: the
//!   last `minutes` minutes (totals, current visitors, one point per minute, top urls,
//!   referrer domains and sites; see `Hub::live_snapshot`), sent when the aggregates have
//!   changed or the minute has turned, at most every [`SNAPSHOT_EVERY`], checked every
//!   [`TICK`] — so a burst shows within ≈ 2 s;
//! - `event: health` every [`HEALTH_EVERY`] with the health-strip counters
//!   (`metrics::health`, the numbers of `/metrics`); it doubles as the keep-alive that
//!   reaps dead connections (a write to a closed socket ends the stream);
//! - `event: error` when a snapshot could not be computed (a shard did not answer); the
//!   stream goes on;
//! - with aggregation off (`agg.enabled = false`) no snapshot ever: one `event:
//!   aggregation_off` first (the 503 body of the query endpoints: the error naming the key,
//!   `"reason": "aggregation_off"`), then the health events alone — a log-only pixeld's
//!   dashboard says why it has no numbers and still shows what it receives and drops.
//!
//! Reconnect: a client that sends `Last-Event-ID` with the id of the state it holds gets no
//! snapshot until something changed; any other id (or none) gets one at once. Snapshots are
//! whole, so nothing is lost across a reconnect.
//!
//! Cost: an idle stream is a timer per second and a read of a few atomics; a snapshot is one
//! query fan-out, shared by every stream of the same view on the shard through a small
//! per-thread cache (each shard is one thread, so no lock), so N dashboards of one view cost
//! one fan-out per change, not N. Streams per shard are bounded by
//! `dashboard.live_max_clients`; refusals answer 503 and are counted.

use std::cell::RefCell;
use std::convert::Infallible;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_lite::Stream;
use http_body_util::{Either, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::http::response::{aggregation_off_body, json};
use crate::http::{Body, HttpContext};
use crate::metrics::ShardStats;
use crate::query::params::{parse_live, LiveParams};

/// How often a stream looks for changes.
pub const TICK: Duration = Duration::from_secs(1);
/// The shortest time between two snapshots of one stream, however busy the aggregates are.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(2);
/// How often the health counters are sent (and the connection proven alive).
pub const HEALTH_EVERY: Duration = Duration::from_secs(5);
/// What a client waits before reconnecting (`retry:`), in ms.
pub const RETRY_MS: u64 = 3000;
/// Views kept in a shard's snapshot cache (distinct site × minutes in use at once).
const CACHE_VIEWS: usize = 64;

/// The body of a live stream: frames produced on the shard's executor as they are due.
pub type LiveBody = StreamBody<Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>>>>>;

/// The state a snapshot reflects: the process (boot time), the aggregates (increments
/// applied so far over every shard) and the current minute. Equal states give equal
/// snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    boot: u64,
    version: u64,
    minute: i64,
}

impl State {
    fn id(&self) -> String {
        format!("{}-{}-{}", self.boot, self.version, self.minute)
    }
    fn parse(id: &str) -> Option<State> {
        let mut it = id.trim().splitn(3, '-');
        Some(State {
            boot: it.next()?.parse().ok()?,
            version: it.next()?.parse().ok()?,
            minute: it.next()?.parse().ok()?,
        })
    }
}

/// When this process started (ms): part of every id, so an id from before a restart never
/// matches.
fn boot() -> u64 {
    static BOOT: OnceLock<u64> = OnceLock::new();
    *BOOT.get_or_init(|| crate::sys::now_ns() / 1_000_000)
}

/// Increments applied to the aggregates so far, over every shard: it changes whenever any
/// answer could. Read *before* a snapshot is computed, so a change during the computation
/// makes the next tick send again.
fn version(all: &[Arc<ShardStats>]) -> u64 {
    all.iter()
        .map(|s| ShardStats::get(&s.agg.local_incs) + ShardStats::get(&s.agg.applied_incs))
        .sum()
}

/// A cached snapshot: the view and state it answers, and its JSON.
type Cached = ((LiveParams, State), Rc<str>);

thread_local! {
    /// This shard's latest snapshot per view.
    static CACHE: RefCell<Vec<Cached>> = const { RefCell::new(Vec::new()) };
}

fn cached(view: &LiveParams, state: State) -> Option<Rc<str>> {
    CACHE.with(|c| {
        c.borrow()
            .iter()
            .find(|((v, s), _)| v == view && *s == state)
            .map(|(_, j)| j.clone())
    })
}

fn remember(view: &LiveParams, state: State, snapshot: Rc<str>) {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        c.retain(|((v, _), _)| v != view);
        if c.len() >= CACHE_VIEWS {
            c.remove(0);
        }
        c.push(((view.clone(), state), snapshot));
    });
}

/// Counts an open stream on its shard for as long as the stream lives.
struct ClientGuard(Arc<ShardStats>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.live_clients.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Live {
    ctx: Rc<HttpContext>,
    view: LiveParams,
    /// The state of the last snapshot sent (or the client's `Last-Event-ID`).
    sent: Option<State>,
    last_snapshot: Option<Instant>,
    next_health: Instant,
    opened: bool,
    /// Aggregation is on (`agg.enabled`): snapshots are sent; off, the opening says so once.
    aggregating: bool,
    _guard: ClientGuard,
}

fn event(name: &str, id: Option<&str>, data: &str) -> Bytes {
    let mut s = String::with_capacity(data.len() + 64);
    s.push_str("event: ");
    s.push_str(name);
    s.push('\n');
    if let Some(id) = id {
        s.push_str("id: ");
        s.push_str(id);
        s.push('\n');
    }
    // JSON from serde_json has no raw newline; split anyway so the framing can never break.
    for line in data.split('\n') {
        s.push_str("data: ");
        s.push_str(line);
        s.push('\n');
    }
    s.push('\n');
    Bytes::from(s)
}

impl Live {
    /// The next frame of the stream; never ends by itself (the connection ends it).
    async fn next(&mut self) -> Bytes {
        if !self.opened {
            self.opened = true;
            let mut open = format!(
                "retry: {RETRY_MS}\n: pixeld live stream; events: snapshot, health, error, aggregation_off\n\n"
            )
            .into_bytes();
            if !self.aggregating {
                open.extend_from_slice(&event(
                    "aggregation_off",
                    None,
                    &aggregation_off_body().to_string(),
                ));
            }
            return Bytes::from(open);
        }
        loop {
            let now = Instant::now();
            let state = State {
                boot: boot(),
                version: version(&self.ctx.all_stats),
                minute: (crate::sys::now_ns() / 60_000_000_000) as i64,
            };
            let due = self
                .last_snapshot
                .is_none_or(|t| now.duration_since(t) >= SNAPSHOT_EVERY);
            if self.aggregating && self.sent != Some(state) && due {
                self.sent = Some(state);
                self.last_snapshot = Some(now);
                let snapshot = match cached(&self.view, state) {
                    Some(s) => Ok(s),
                    None => self
                        .ctx
                        .hub
                        .live_snapshot(state.minute, self.view.minutes, self.view.site.clone())
                        .await
                        .map(|s| {
                            let s: Rc<str> = s.into();
                            remember(&self.view, state, s.clone());
                            s
                        }),
                };
                return match snapshot {
                    Ok(s) => event("snapshot", Some(&state.id()), &s),
                    Err(e) => {
                        // Try again at the next tick.
                        self.sent = None;
                        event(
                            "error",
                            None,
                            &serde_json::json!({"error": e.to_string()}).to_string(),
                        )
                    }
                };
            }
            if now >= self.next_health {
                self.next_health = now + HEALTH_EVERY;
                return event(
                    "health",
                    None,
                    &crate::metrics::health(
                        &self.ctx.all_stats,
                        &self.ctx.ingest.cfg.pixel_overload.describe(),
                    )
                    .to_string(),
                );
            }
            glommio::timer::sleep(TICK).await;
        }
    }
}

/// Answers `GET /v1/live`: 400 naming a bad parameter, 503 when the shard has its
/// `live_max_clients` streams already, else the stream (of health alone when aggregation is
/// off).
pub fn respond(req: &Request<Incoming>, ctx: Rc<HttpContext>) -> Response<Body> {
    let aggregating = ctx.hub.agg().borrow().cfg.enabled;
    let view = match parse_live(req.uri().query()) {
        Ok(v) => v,
        Err(e) => {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": e.to_string(), "param": e.param}),
            )
            .map(Either::Left)
        }
    };
    let stats = ctx.ingest.stats.clone();
    let max = ctx.cfg.live_max_clients as u64;
    // Only this shard's thread changes its gauge, so check-then-add cannot overshoot.
    if ShardStats::get(&stats.live_clients) >= max {
        ShardStats::add(&stats.live_refused, 1);
        let mut r = json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "error": format!("this shard already serves {max} live streams (dashboard.live_max_clients); retry later"),
                "reason": "live_clients",
            }),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r.map(Either::Left);
    }
    ShardStats::add(&stats.live_clients, 1);
    let sent = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(State::parse);
    let live = Live {
        ctx,
        view,
        sent,
        last_snapshot: None,
        next_health: Instant::now(),
        opened: false,
        aggregating,
        _guard: ClientGuard(stats),
    };
    let stream = futures_lite::stream::unfold(live, |mut live| async move {
        let frame = live.next().await;
        Some((Ok(Frame::data(frame)), live))
    });
    let mut r = Response::new(Either::Right(StreamBody::new(
        Box::pin(stream) as Pin<Box<dyn Stream<Item = _>>>
    )));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx in front must pass events on as they come, not buffer them.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_events_are_framed() {
        let s = State {
            boot: 1_795_311_543_462,
            version: 42,
            minute: 29_921_859,
        };
        assert_eq!(State::parse(&s.id()), Some(s));
        assert_eq!(State::parse("garbage"), None);
        assert_eq!(State::parse("1-2"), None);
        let e = event("snapshot", Some("1-2-3"), "{\"a\":1}\n{\"b\":2}");
        assert_eq!(
            &e[..],
            b"event: snapshot\nid: 1-2-3\ndata: {\"a\":1}\ndata: {\"b\":2}\n\n"
        );
    }
}
