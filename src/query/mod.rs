//! Queries: the JSON API over every shard's partition of the aggregates.
//!
//! A request is validated (`params`), split into shard operations ([`Op`]), and fanned out:
//! the shard that received the HTTP request computes its own part directly and asks every
//! other shard over a second channel mesh (request and response messages; each shard answers
//! from its own executor, between increments, so no aggregate is ever shared or locked). The
//! parts merge exactly: top lists by `topn::merge` (each key lives on one shard), totals and
//! series by addition (visitors are partitioned, so even uniques add up).
//!
//! Bounded: `limit` ≤ 1000, ≤ 10 080 points, ranges inside the windows, at most
//! `MAX_IN_FLIGHT` fan-outs per shard, and a [`TIMEOUT`] on the answers.

pub mod api;
pub mod params;
pub mod rebuild;
pub mod scan;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::channels::shared_channel::ConnectedReceiver;
use hashbrown::HashMap;
use serde_json::{json, Value};

use crate::agg::dims::{DimFilter, DimRow};
use crate::agg::topn::{self, Ranked};
use crate::agg::{Aggregates, Dim, Totals};
use crate::parse::event::dims::SEP;
use params::{minute_rfc3339, step_name, BadParam, Range, Request};

/// How long a query waits for the other shards.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Fan-outs a shard runs at once; more wait their turn.
pub const MAX_IN_FLIGHT: u64 = 64;

/// One shard's part of a request.
#[derive(Debug, Clone)]
pub enum Op {
    Top {
        dim: Dim,
        range: Range,
        site: Option<String>,
        limit: usize,
    },
    Totals {
        range: Range,
        site: Option<String>,
    },
    Series {
        range: Range,
        step: i64,
        site: Option<String>,
        url: Option<String>,
    },
    /// Everything known of these urls (views, hits, engaged seconds on their owners; entries
    /// and exits on the visitors' owners).
    UrlStats {
        range: Range,
        urls: Vec<String>,
        site: Option<String>,
    },
    /// Pageviews and visitors by value of a pageview dimension (`agg::dims`).
    Breakdown {
        /// One dimension, or two for rows by pair of values.
        dims: Vec<usize>,
        range: Range,
        site: Option<String>,
        filter: DimFilter,
        /// Whether visits are asked (see [`Aggregates::breakdown`]).
        visits: bool,
    },
}

/// One shard's answer to an [`Op`] (or to a step of a live rebuild: see [`rebuild`]).
#[derive(Debug, Clone)]
pub enum Part {
    Top(Vec<Ranked>),
    Totals(Totals),
    Series(Vec<Totals>),
    UrlStats(Vec<crate::agg::UrlStats>),
    Breakdown(Vec<DimRow>),
    /// A shard's log frontier at the start of a rebuild (None: still catching up).
    Frontier(usize, Option<Vec<u64>>),
    /// Minute and hour buckets a shard replaced.
    Rebuilt(u64, u64),
}

impl Op {
    /// Computes this shard's part.
    pub fn run(&self, agg: &Aggregates) -> Part {
        match self {
            Op::Top {
                dim,
                range,
                site,
                limit,
            } => {
                // Site totals, entry and exit pages are partitioned by visitor, not by key:
                // every shard sends all its keys and `merge` adds them up before ranking.
                let limit = if dim.by_visitor() { usize::MAX } else { *limit };
                Part::Top(agg.top(*dim, range.from, range.to, site.as_deref(), limit))
            }
            Op::Totals { range, site } => {
                Part::Totals(agg.totals(range.from, range.to, site.as_deref()))
            }
            Op::UrlStats { range, urls, site } => {
                Part::UrlStats(agg.url_stats(range.from, range.to, urls, site.as_deref()))
            }
            Op::Breakdown {
                dims,
                range,
                site,
                filter,
                visits,
            } => Part::Breakdown(agg.breakdown(
                dims,
                range.from,
                range.to,
                site.as_deref(),
                filter,
                *visits,
            )),
            Op::Series {
                range,
                step,
                site,
                url,
            } => Part::Series(match url {
                Some(u) => agg.url_series(range.from, range.to, *step, u, site.as_deref()),
                None => {
                    let mut points = Vec::with_capacity(((range.to - range.from) / step) as usize);
                    let mut t = range.from;
                    while t < range.to {
                        points.push(agg.totals(t, (t + step).min(range.to), site.as_deref()));
                        t += step;
                    }
                    points
                }
            }),
        }
    }
}

/// Merges the shards' parts of one op.
fn merge(op: &Op, parts: Vec<Part>) -> Part {
    match op {
        Op::Top { dim, limit, .. } => {
            let lists: Vec<Vec<Ranked>> = parts
                .into_iter()
                .filter_map(|p| match p {
                    Part::Top(l) => Some(l),
                    _ => None,
                })
                .collect();
            if dim.by_visitor() {
                let mut sums: HashMap<String, u64> = HashMap::new();
                for r in lists.into_iter().flatten() {
                    *sums.entry(r.key).or_default() += r.views;
                }
                let all = sums
                    .into_iter()
                    .map(|(key, views)| Ranked { key, views })
                    .collect();
                Part::Top(topn::top(all, *limit))
            } else {
                Part::Top(topn::merge(lists, *limit))
            }
        }
        Op::Breakdown { .. } => {
            // Shards hold disjoint visitors: their rows add up.
            let mut sums: HashMap<String, DimRow> = HashMap::new();
            for r in parts.into_iter().flat_map(|p| match p {
                Part::Breakdown(l) => l,
                _ => Vec::new(),
            }) {
                let e = sums.entry(r.key.clone()).or_insert(DimRow {
                    views: 0,
                    events: 0,
                    visitors: 0,
                    sketched: false,
                    visits: Default::default(),
                    ..r.clone()
                });
                e.views += r.views;
                e.events += r.events;
                e.visitors += r.visitors;
                e.sketched |= r.sketched;
                e.visits.add(&r.visits);
            }
            Part::Breakdown(sums.into_values().collect())
        }
        Op::Totals { .. } => {
            let mut t = Totals::default();
            for p in &parts {
                if let Part::Totals(x) = p {
                    t.add(x);
                }
            }
            Part::Totals(t)
        }
        Op::UrlStats { urls, .. } => {
            let mut acc = vec![crate::agg::UrlStats::default(); urls.len()];
            for p in &parts {
                if let Part::UrlStats(l) = p {
                    for (a, b) in acc.iter_mut().zip(l) {
                        a.add(b);
                    }
                }
            }
            Part::UrlStats(acc)
        }
        Op::Series { .. } => {
            let mut acc: Vec<Totals> = Vec::new();
            for p in parts {
                if let Part::Series(points) = p {
                    if acc.is_empty() {
                        acc = points;
                    } else {
                        for (a, b) in acc.iter_mut().zip(&points) {
                            a.add(b);
                        }
                    }
                }
            }
            Part::Series(acc)
        }
    }
}

/// What crosses the query mesh.
#[derive(Debug)]
pub enum QueryMsg {
    Request {
        id: u64,
        from: usize,
        ops: Vec<Op>,
    },
    Response {
        id: u64,
        parts: Vec<Part>,
    },
    /// A step of a live `rebuild-aggregates` (see [`rebuild`]).
    Rebuild {
        id: u64,
        from: usize,
        step: rebuild::Step,
    },
}

/// The query mesh every shard joins at start.
pub type QueryMesh = MeshBuilder<QueryMsg, Full>;

/// Makes the query mesh for `shards` shards (room for every shard's fan-outs at once).
pub fn mesh(shards: usize) -> QueryMesh {
    MeshBuilder::full(shards, 2 * MAX_IN_FLIGHT as usize)
}

/// Why a query failed on the server side.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    BadParam(#[from] BadParam),
    #[error("shard {0} did not answer within {TIMEOUT:?}")]
    Timeout(usize),
    #[error("shard {0} has stopped")]
    Stopped(usize),
}

/// One shard's query endpoint: runs fan-outs and answers the other shards.
pub struct Hub {
    me: usize,
    shards: usize,
    agg: Rc<RefCell<Aggregates>>,
    /// What a live rebuild needs (see [`rebuild`]); None in tests and tools.
    rebuild: RefCell<Option<rebuild::Setup>>,
    rebuilding: Cell<bool>,
    senders: Option<Senders<QueryMsg>>,
    waiting: RefCell<HashMap<u64, LocalSender<Vec<Part>>>>,
    next_id: Cell<u64>,
    in_flight: glommio::sync::Semaphore,
}

impl Hub {
    pub fn new(agg: Rc<RefCell<Aggregates>>, senders: Option<Senders<QueryMsg>>) -> Rc<Self> {
        let (me, shards) = senders
            .as_ref()
            .map_or((0, 1), |s| (s.peer_id(), s.nr_consumers()));
        Rc::new(Hub {
            me,
            shards,
            agg,
            rebuild: RefCell::new(None),
            rebuilding: Cell::new(false),
            senders,
            waiting: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            in_flight: glommio::sync::Semaphore::new(MAX_IN_FLIGHT),
        })
    }

    pub fn agg(&self) -> &Rc<RefCell<Aggregates>> {
        &self.agg
    }

    /// Starts one answering task per peer.
    pub fn spawn_responders(self: &Rc<Self>, mut receivers: Receivers<QueryMsg>) {
        for (_, stream) in receivers.streams() {
            glommio::spawn_local(self.clone().respond(stream)).detach();
        }
    }

    async fn respond(self: Rc<Self>, stream: ConnectedReceiver<QueryMsg>) {
        while let Some(msg) = stream.recv().await {
            match msg {
                QueryMsg::Request { id, from, ops } => {
                    let parts = {
                        let agg = self.agg.borrow();
                        ops.iter().map(|op| op.run(&agg)).collect()
                    };
                    // Sent from its own task so that this loop keeps reading: two shards
                    // answering each other can never wait on each other.
                    let hub = self.clone();
                    glommio::spawn_local(async move {
                        if let Some(s) = &hub.senders {
                            let _ = s.send_to(from, QueryMsg::Response { id, parts }).await;
                        }
                    })
                    .detach();
                }
                QueryMsg::Response { id, parts } => {
                    if let Some(tx) = self.waiting.borrow().get(&id) {
                        let _ = tx.try_send(parts);
                    }
                }
                QueryMsg::Rebuild { id, from, step } => {
                    // Its own task: applying may wait for a checkpoint's sealing to finish.
                    let hub = self.clone();
                    glommio::spawn_local(async move {
                        let parts = vec![hub.rebuild_step(step).await];
                        if let Some(s) = &hub.senders {
                            let _ = s.send_to(from, QueryMsg::Response { id, parts }).await;
                        }
                    })
                    .detach();
                }
            }
        }
    }

    /// Runs `ops` on every shard and merges the parts.
    pub async fn run(&self, ops: Vec<Op>) -> Result<Vec<Part>, QueryError> {
        let all = {
            let peer_ops = ops.clone();
            self.fan_out(
                move |id, from| QueryMsg::Request {
                    id,
                    from,
                    ops: peer_ops.clone(),
                },
                || {
                    let agg = self.agg.borrow();
                    ops.iter().map(|op| op.run(&agg)).collect()
                },
                TIMEOUT,
            )
            .await?
        };
        // Transpose: per op, every shard's part.
        let mut per_op: Vec<Vec<Part>> = ops.iter().map(|_| Vec::new()).collect();
        for parts in all {
            for (slot, p) in per_op.iter_mut().zip(parts) {
                slot.push(p);
            }
        }
        Ok(ops
            .iter()
            .zip(per_op)
            .map(|(op, parts)| merge(op, parts))
            .collect())
    }

    /// Sends `msg(id, me)` to every other shard, computes this shard's parts with `local`,
    /// and collects every shard's parts (this one's first, the others' as they arrive) within
    /// `timeout`. At most [`MAX_IN_FLIGHT`] at once.
    async fn fan_out(
        &self,
        msg: impl Fn(u64, usize) -> QueryMsg,
        local: impl FnOnce() -> Vec<Part>,
        timeout: Duration,
    ) -> Result<Vec<Vec<Part>>, QueryError> {
        // A permit, released when dropped (glommio's `acquire` alone would leak the unit).
        let _permit = self
            .in_flight
            .acquire_permit(1)
            .await
            .map_err(|_| QueryError::Stopped(self.me))?;
        let mut all: Vec<Vec<Part>> = Vec::with_capacity(self.shards);
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let peers = self.shards - 1;
        let rx = match &self.senders {
            Some(senders) if peers > 0 => {
                let (tx, rx) = local_channel::new_bounded(peers);
                self.waiting.borrow_mut().insert(id, tx);
                for peer in (0..self.shards).filter(|&p| p != self.me) {
                    if senders.send_to(peer, msg(id, self.me)).await.is_err() {
                        self.waiting.borrow_mut().remove(&id);
                        return Err(QueryError::Stopped(peer));
                    }
                }
                Some(rx)
            }
            _ => None,
        };
        all.push(local());
        if let Some(rx) = rx {
            let deadline = Instant::now() + timeout;
            while all.len() < self.shards {
                let left = deadline.saturating_duration_since(Instant::now());
                let got = glommio::timer::timeout(left, async { Ok(rx.recv().await) }).await;
                match got {
                    Ok(Some(parts)) => all.push(parts),
                    _ => {
                        self.waiting.borrow_mut().remove(&id);
                        return Err(QueryError::Timeout(self.shards - all.len()));
                    }
                }
            }
            self.waiting.borrow_mut().remove(&id);
        }
        Ok(all)
    }

    /// Answers a validated request as JSON.
    pub async fn answer(&self, req: Request) -> Result<String, QueryError> {
        match req {
            Request::Breakdown {
                dims,
                range,
                site,
                limit,
                filter,
                by_visitors,
            } => {
                let parts = self
                    .run(vec![Op::Breakdown {
                        dims: dims.clone(),
                        range,
                        site: site.clone(),
                        filter: filter.clone(),
                        visits: false,
                    }])
                    .await?;
                let mut rows = match parts.into_iter().next() {
                    Some(Part::Breakdown(l)) => l,
                    _ => Vec::new(),
                };
                // With the `event` dimension (or filter) custom events count: rows carry their
                // events (pageviews and custom events) and rank by them.
                let events = dims.contains(&crate::parse::event::dims::EVENT)
                    || filter.mentions(crate::parse::event::dims::EVENT);
                // Largest first; ties by key, so that the same data always lists the same way.
                rows.sort_unstable_by(|a, b| {
                    let (x, y) = if by_visitors {
                        (a.visitors, b.visitors)
                    } else if events {
                        (a.views + a.events, b.views + b.events)
                    } else {
                        (a.views, b.views)
                    };
                    y.cmp(&x).then_with(|| a.key.cmp(&b.key))
                });
                let total_rows = rows.len();
                rows.truncate(limit);
                // With events, each row's conversion rate: its visitors over those of the same
                // other values without the event's condition (as `conversion_rate` in
                // `POST /v1/query`).
                let event = crate::parse::event::dims::EVENT;
                let base = filter.conversion_base(event).filter(|_| events);
                let all_visitors = if let Some(base) = base {
                    let base_dims: Vec<usize> =
                        dims.iter().copied().filter(|d| *d != event).collect();
                    let parts = self
                        .run(vec![Op::Breakdown {
                            dims: base_dims,
                            range,
                            site: site.clone(),
                            filter: base,
                            visits: false,
                        }])
                        .await?;
                    match parts.into_iter().next() {
                        Some(Part::Breakdown(l)) => {
                            l.into_iter().map(|r| (r.key, r.visitors)).collect()
                        }
                        _ => hashbrown::HashMap::new(),
                    }
                } else {
                    hashbrown::HashMap::new()
                };
                let other_values = |key: &str| -> String {
                    let values: Vec<&str> = dims
                        .iter()
                        .zip(key.split(SEP))
                        .filter(|(d, _)| **d != event)
                        .map(|(_, v)| v)
                        .collect();
                    values.join(&SEP.to_string())
                };
                let items: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        // A pair of values as a two-element array.
                        let key = if dims.len() == 2 {
                            json!(r.key.split(SEP).collect::<Vec<&str>>())
                        } else {
                            json!(r.key)
                        };
                        let mut item = json!({
                            "key": key,
                            "views": r.views,
                            "visitors": r.visitors,
                            "visitors_sketched": r.sketched,
                        });
                        if events {
                            item["events"] = json!(r.views + r.events);
                            let all = all_visitors.get(&other_values(&r.key)).copied();
                            item["conversion_rate"] = match all {
                                Some(n) if n > 0 => json!(r.visitors as f64 / n as f64),
                                _ => Value::Null,
                            };
                        }
                        item
                    })
                    .collect();
                let agg = self.agg.borrow();
                let name = |d: &usize| agg.cfg.dim_name(*d).to_string();
                let filters: serde_json::Map<String, Value> =
                    filter.is.iter().map(|(d, v)| (name(d), json!(v))).collect();
                Ok(json!({
                    "dim": dims.iter().map(name).collect::<Vec<String>>().join(","),
                    "from": minute_rfc3339(range.from),
                    "to": minute_rfc3339(range.to),
                    "site": site,
                    "sort": if by_visitors {
                        "visitors"
                    } else if events {
                        "events"
                    } else {
                        "views"
                    },
                    "filter": filters,
                    "bots": if filter.bots { "include" } else { "exclude" },
                    "total_rows": total_rows,
                    "items": items,
                })
                .to_string())
            }
            Request::Top {
                dim,
                range,
                site,
                limit,
                sorted,
            } => {
                let ops = vec![Op::Top {
                    dim,
                    range,
                    site: site.clone(),
                    limit,
                }];
                let parts = self.run(ops).await?;
                let items = if sorted {
                    // Every metric of each url ranked: one more fan-out for those urls.
                    let keys: Vec<String> = match parts.first() {
                        Some(Part::Top(l)) => l.iter().map(|r| r.key.clone()).collect(),
                        _ => Vec::new(),
                    };
                    let stats = self
                        .run(vec![Op::UrlStats {
                            range,
                            urls: keys.clone(),
                            site: site.clone(),
                        }])
                        .await?;
                    let stats = match stats.into_iter().next() {
                        Some(Part::UrlStats(l)) => l,
                        _ => Vec::new(),
                    };
                    keys.iter()
                        .zip(stats)
                        .map(|(k, t)| {
                            json!({
                                "key": k,
                                "views": t.views,
                                "hits": t.hits,
                                "engaged_seconds": t.engaged,
                                "entries": t.entries,
                                "exits": t.exits,
                                "visitors": t.visitors,
                                "avg_engaged_seconds": t.avg_engaged(),
                                "visitors_sketched": t.sketched,
                            })
                        })
                        .collect()
                } else {
                    items_of(dim, parts.first())
                };
                let mut body = json!({
                    "dim": if sorted { "url" } else { dim.as_str() },
                    "from": minute_rfc3339(range.from),
                    "to": minute_rfc3339(range.to),
                    "site": site,
                    "items": items,
                });
                if sorted {
                    if let Some(o) = body.as_object_mut() {
                        o.insert("sort".into(), json!(dim.metric()));
                    }
                }
                Ok(body.to_string())
            }
            Request::Timeseries {
                range,
                step,
                site,
                url,
            } => {
                let ops = vec![Op::Series {
                    range,
                    step,
                    site: site.clone(),
                    url: url.clone(),
                }];
                let parts = self.run(ops).await?;
                // Serialized straight from structs: a day of minutes is 1 440 points.
                #[derive(serde::Serialize)]
                struct Series {
                    step: &'static str,
                    from: String,
                    to: String,
                    site: Option<String>,
                    url: Option<String>,
                    points: Vec<Point>,
                }
                Ok(serde_json::to_string(&Series {
                    step: step_name(step),
                    from: minute_rfc3339(range.from),
                    to: minute_rfc3339(range.to),
                    site,
                    url,
                    points: points(parts.first(), range.from, step),
                })
                .unwrap_or_default())
            }
            Request::Summary { range, site } => {
                let parts = self
                    .run(vec![
                        Op::Totals {
                            range,
                            site: site.clone(),
                        },
                        Op::Top {
                            dim: Dim::Url,
                            range,
                            site: site.clone(),
                            limit: 10,
                        },
                        Op::Top {
                            dim: Dim::RefDomain,
                            range,
                            site: site.clone(),
                            limit: 10,
                        },
                    ])
                    .await?;
                let t = match parts.first() {
                    Some(Part::Totals(t)) => *t,
                    _ => Totals::default(),
                };
                #[derive(serde::Serialize)]
                struct Summary {
                    from: String,
                    to: String,
                    site: Option<String>,
                    #[serde(flatten)]
                    headline: Headline,
                    top_urls: Value,
                    top_ref_domains: Value,
                }
                Ok(serde_json::to_string(&Summary {
                    from: minute_rfc3339(range.from),
                    to: minute_rfc3339(range.to),
                    site,
                    headline: Headline::of(&t),
                    top_urls: items(parts.get(1)),
                    top_ref_domains: items(parts.get(2)),
                })
                .unwrap_or_default())
            }
            Request::Realtime { range, site } => {
                let parts = self
                    .run(vec![
                        Op::Series {
                            range,
                            step: 1,
                            site: site.clone(),
                            url: None,
                        },
                        Op::Top {
                            dim: Dim::Url,
                            range,
                            site: site.clone(),
                            limit: 10,
                        },
                    ])
                    .await?;
                #[derive(serde::Serialize)]
                struct Realtime {
                    minutes: i64,
                    from: String,
                    to: String,
                    site: Option<String>,
                    points: Vec<Point>,
                    top_urls: Value,
                }
                Ok(serde_json::to_string(&Realtime {
                    minutes: range.to - range.from,
                    from: minute_rfc3339(range.from),
                    to: minute_rfc3339(range.to),
                    site,
                    points: points(parts.first(), range.from, 1),
                    top_urls: items(parts.get(1)),
                })
                .unwrap_or_default())
            }
        }
    }
}

/// Minutes the "current visitors" of a live snapshot look back (the current one included).
pub const CURRENT_VISITORS_MINUTES: i64 = 5;

impl Hub {
    /// One `/v1/live` snapshot of the last `minutes` minutes ending with minute `now_min`
    /// (included): totals, current visitors (uniques of the last
    /// [`CURRENT_VISITORS_MINUTES`]), one point per minute and the top urls, referrer domains
    /// and sites — one fan-out for everything the dashboard's realtime view shows, so that a
    /// live client costs one query per change, not six.
    pub async fn live_snapshot(
        &self,
        now_min: i64,
        minutes: i64,
        site: Option<String>,
    ) -> Result<String, QueryError> {
        let range = Range {
            from: now_min - minutes + 1,
            to: now_min + 1,
        };
        let current = Range {
            from: now_min - CURRENT_VISITORS_MINUTES + 1,
            to: now_min + 1,
        };
        let top = |dim| Op::Top {
            dim,
            range,
            site: site.clone(),
            limit: 10,
        };
        let parts = self
            .run(vec![
                Op::Totals {
                    range,
                    site: site.clone(),
                },
                Op::Totals {
                    range: current,
                    site: site.clone(),
                },
                Op::Series {
                    range,
                    step: 1,
                    site: site.clone(),
                    url: None,
                },
                top(Dim::Url),
                top(Dim::RefDomain),
                top(Dim::Site),
            ])
            .await?;
        let totals = |i: usize| match parts.get(i) {
            Some(Part::Totals(t)) => *t,
            _ => Totals::default(),
        };
        let (t, cur) = (totals(0), totals(1));
        #[derive(serde::Serialize)]
        struct Live {
            minutes: i64,
            from: String,
            to: String,
            site: Option<String>,
            #[serde(flatten)]
            headline: Headline,
            current_visitors: u64,
            points: Vec<Point>,
            top_urls: Value,
            top_ref_domains: Value,
            top_sites: Value,
        }
        Ok(serde_json::to_string(&Live {
            minutes,
            from: minute_rfc3339(range.from),
            to: minute_rfc3339(range.to),
            site,
            headline: Headline::of(&t),
            current_visitors: cur.uniques.unwrap_or(0),
            points: points(parts.get(2), range.from, 1),
            top_urls: items(parts.get(3)),
            top_ref_domains: items(parts.get(4)),
            top_sites: items(parts.get(5)),
        })
        .unwrap_or_default())
    }
}

/// The totals of a range as a summary and a live snapshot answer them.
#[derive(serde::Serialize)]
struct Headline {
    views: u64,
    hits: u64,
    uniques: u64,
    engaged_seconds: u64,
    #[serde(flatten)]
    visits: VisitFields,
}

impl Headline {
    fn of(t: &Totals) -> Self {
        Headline {
            views: t.views,
            hits: t.hits,
            uniques: t.uniques.unwrap_or(0),
            engaged_seconds: t.engaged,
            visits: VisitFields::of(t, true),
        }
    }
}

fn items(p: Option<&Part>) -> Value {
    items_of(Dim::Url, p)
}

/// A top list's items, each with the count it is ranked by (`views`, `entries`, …).
fn items_of(dim: Dim, p: Option<&Part>) -> Value {
    match p {
        Some(Part::Top(l)) => l
            .iter()
            .map(|r| {
                let mut m = serde_json::Map::new();
                m.insert("key".into(), json!(r.key));
                m.insert(dim.metric().into(), json!(r.views));
                Value::Object(m)
            })
            .collect(),
        _ => json!([]),
    }
}

/// One point of a series as JSON (of a url: `uniques` are its distinct visitors, and the
/// visit figures are null).
#[derive(serde::Serialize)]
struct Point {
    t: String,
    views: u64,
    hits: u64,
    uniques: Option<u64>,
    engaged_seconds: u64,
    #[serde(flatten)]
    visits: VisitFields,
}

/// The visit figures of an answer (README, "Visits"): counts, and the ratios (null without
/// visits). All null where visits are not kept (a url's series).
#[derive(serde::Serialize, Default)]
pub struct VisitFields {
    visits: Option<i64>,
    bounces: Option<i64>,
    bounce_rate: Option<f64>,
    /// Pageviews of those visits.
    visit_views: Option<i64>,
    views_per_visit: Option<f64>,
    /// Mean visit duration, in seconds.
    visit_duration: Option<f64>,
}

impl VisitFields {
    /// The figures of `t` (`kept`: false for a url, whose totals hold no visits).
    pub fn of(t: &Totals, kept: bool) -> Self {
        if !kept {
            return VisitFields::default();
        }
        let v = &t.visits;
        let n = v.visits;
        let ratio = |x: i64, scale: f64| (n > 0).then(|| x as f64 / n as f64 / scale);
        VisitFields {
            visits: Some(n),
            bounces: Some(v.bounces),
            bounce_rate: ratio(v.bounces, 1.0),
            visit_views: Some(v.views),
            views_per_visit: ratio(v.views, 1.0),
            visit_duration: ratio(v.duration_ms, 1000.0),
        }
    }
}

fn points(p: Option<&Part>, from: i64, step: i64) -> Vec<Point> {
    let Some(Part::Series(s)) = p else {
        return Vec::new();
    };
    s.iter()
        .enumerate()
        .map(|(i, t)| Point {
            t: minute_rfc3339(from + i as i64 * step),
            views: t.views,
            hits: t.hits,
            uniques: t.uniques,
            engaged_seconds: t.engaged,
            visits: VisitFields::of(t, !t.per_url),
        })
        .collect()
}

/// Adds `"complete"` and `"catchup_records"` in front of an answer's fields. During the
/// catch-up after a start (see `route::rebuild`) the aggregates hold the loaded checkpoints,
/// everything ingested since the start, and the part of the logs replayed so far: an answer
/// then is a lower bound, and says so (`"complete": false`, with the log records still to
/// replay) instead of passing for the final figure.
pub fn with_completeness(body: String, complete: bool, catchup_records: u64) -> String {
    match body.strip_prefix('{') {
        Some(rest) => {
            let sep = if rest.starts_with('}') { "" } else { "," };
            format!("{{\"complete\":{complete},\"catchup_records\":{catchup_records}{sep}{rest}")
        }
        None => body,
    }
}
