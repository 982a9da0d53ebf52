//! The log over HTTP: `GET /v1/log/shards` and `GET /v1/log` (records by offset or time, with
//! long polling); named consumers' offsets are `consumers.rs` beside it. Served on the HTTP
//! port by `http::router`, which hands every path [`owns`] claims to [`handle`]. What it reads
//! through is [`crate::readers::LogReaders`].
//!
//! A request lands on whichever shard accepted the connection, and may ask for any shard's
//! log: reads go through `log::fetch` on that shard's directory and stop at the shard's
//! published durable offset. Everything that blocks — mmap and `pread` of segments, the
//! consumer store's fsyncs — runs on glommio's blocking pool (`spawn_blocking`), never on the
//! executor thread that also ingests; and every response is bounded (`max_records` ≤
//! 10 000, `max_bytes` ≤ 8 MiB, `wait_ms` ≤ 30 s), so it is built whole in memory and sent
//! with a `Content-Length`. Bad parameters answer 400 naming the parameter; an offset deleted
//! by retention (or past the end) answers 416 with `first_offset` and `next_offset`.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::blocking;
use super::response::{bad_param, error, json, method_not_allowed, Resp};
use crate::log::fetch::{FetchError, ShardLog};
use crate::log::ndjson::{describe_warning, format_ts, ndjson_line};
use crate::log::reader::Start;
use crate::query::params::{bad, pairs, parse_time, BadParam};
use crate::readers::LogReaders;

/// Largest `max_records` of one `GET /v1/log`.
pub const MAX_RECORDS: u64 = 10_000;
pub const DEFAULT_RECORDS: u64 = 1_000;
/// Largest `max_bytes` (of NDJSON) of one `GET /v1/log`.
pub const MAX_BYTES: u64 = 8 << 20;
pub const DEFAULT_BYTES: u64 = 1 << 20;
/// Longest `wait_ms`.
pub const MAX_WAIT_MS: u64 = 30_000;
/// How often a long poll looks at the durable offset.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// Whether `path` belongs to the log API.
pub fn owns(path: &str) -> bool {
    matches!(path, "/v1/log" | "/v1/log/shards")
}

/// A parameter the query API's rules refused, answered as 400 naming it.
fn refused(b: BadParam) -> Resp {
    bad_param(&b.param, b.reason)
}

/// Answers a request for a path [`owns`] claims.
pub async fn handle(req: Request<Incoming>, api: &Arc<LogReaders>) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match path.as_str() {
        "/v1/log" => match method {
            Method::GET => read_log(req.uri().query(), api).await,
            _ => method_not_allowed("GET"),
        },
        "/v1/log/shards" => match method {
            Method::GET => shards(req.uri().query(), api).await,
            _ => method_not_allowed("GET"),
        },
        _ => error(StatusCode::NOT_FOUND, "no such endpoint".into()),
    }
}

fn get<'a>(p: &'a HashMap<String, String>, k: &str) -> Option<&'a str> {
    p.get(k).map(String::as_str)
}

/// A non-negative integer in `min..=max`.
fn number(param: &str, v: &str, min: u64, max: u64) -> Result<u64, BadParam> {
    let n: u64 = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse()
            .map_err(|_| bad(param, format!("`{v}` is too large")))?
    } else {
        return Err(bad(param, format!("`{v}` is not a non-negative integer")));
    };
    if n < min || n > max {
        return Err(bad(
            param,
            format!("{n} is out of range: it must be between {min} and {max}"),
        ));
    }
    Ok(n)
}

fn shard_param(api: &LogReaders, v: Option<&str>) -> Result<usize, BadParam> {
    let Some(v) = v else {
        return Err(bad("shard", "is required"));
    };
    let n = api.logs.len();
    let s = number("shard", v, 0, u64::MAX)?;
    if s >= n as u64 {
        return Err(bad(
            "shard",
            format!("shard {s} does not exist (shards are 0..{n}; see /v1/log/shards)"),
        ));
    }
    Ok(s as usize)
}

/// A read of one shard's log, ready to run on the blocking pool.
struct Read {
    log: ShardLog,
    start: Start,
    max_records: u64,
    max_bytes: u64,
}

/// What a read produced: the NDJSON body, its record count and the next offset to ask for.
type ReadResult = Result<(Vec<u8>, u64, u64), FetchError>;

impl Read {
    fn run(&self, durable_next: u64) -> ReadResult {
        let shard = self.log.shard;
        let mut body = Vec::new();
        let mut n = 0u64;
        let end = self.log.read_durable(
            self.start,
            durable_next,
            |rec| {
                if n >= self.max_records {
                    return ControlFlow::Break(());
                }
                let line = ndjson_line(shard, &rec);
                // One record always goes out, however large: a consumer is never stuck.
                if n > 0 && (body.len() + line.len() + 1) as u64 > self.max_bytes {
                    return ControlFlow::Break(());
                }
                body.extend_from_slice(line.as_bytes());
                body.push(b'\n');
                n += 1;
                ControlFlow::Continue(())
            },
            |w| eprintln!("pixeld: log API: {}", describe_warning(shard, &w)),
        )?;
        Ok((body, end.records, end.next_offset))
    }
}

/// `GET /v1/log?shard=N&(offset=O|time=T)[&max_records=M][&max_bytes=B][&wait_ms=W]`.
async fn read_log(query: Option<&str>, api: &Arc<LogReaders>) -> Resp {
    let p = match pairs(
        query,
        &[
            "shard",
            "offset",
            "time",
            "max_records",
            "max_bytes",
            "wait_ms",
        ],
    ) {
        Ok(p) => p,
        Err(b) => return refused(b),
    };
    let parsed = (|| {
        let shard = shard_param(api, get(&p, "shard"))?;
        let start = match (get(&p, "offset"), get(&p, "time")) {
            (Some(o), None) => Start::Offset(number("offset", o, 0, u64::MAX)?),
            (None, Some(t)) => {
                let now_ms = (crate::sys::now_ns() / 1_000_000) as i64;
                let ms = parse_time("time", t, now_ms)?;
                Start::Time((ms.max(0) as u64).saturating_mul(1_000_000))
            }
            (Some(_), Some(_)) => return Err(bad("time", "give `offset` or `time`, not both")),
            (None, None) => {
                return Err(bad(
                    "offset",
                    "is required (or `time`); the first offsets are in /v1/log/shards",
                ))
            }
        };
        let max_records = get(&p, "max_records").map_or(Ok(DEFAULT_RECORDS), |v| {
            number("max_records", v, 1, MAX_RECORDS)
        })?;
        let max_bytes = get(&p, "max_bytes")
            .map_or(Ok(DEFAULT_BYTES), |v| number("max_bytes", v, 1, MAX_BYTES))?;
        let wait_ms = get(&p, "wait_ms").map_or(Ok(0), |v| number("wait_ms", v, 0, MAX_WAIT_MS))?;
        Ok((shard, start, max_records, max_bytes, wait_ms))
    })();
    let (shard, start, max_records, max_bytes, wait_ms) = match parsed {
        Ok(v) => v,
        Err(b) => return refused(b),
    };
    let Some(log) = api.logs.get(shard) else {
        return bad_param("shard", format!("shard {shard} does not exist"));
    };
    let read = Arc::new(Read {
        log: log.clone(),
        start,
        max_records,
        max_bytes,
    });
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    loop {
        let durable_next = api.durable_next(shard);
        // At the end: nothing to read until the durable offset moves.
        let at_end = matches!(start, Start::Offset(o) if o == durable_next);
        let result = if at_end {
            Ok((Vec::new(), 0, durable_next))
        } else {
            let r = read.clone();
            blocking(move || r.run(durable_next)).await
        };
        match result {
            Ok((body, n, next)) => {
                let waiting =
                    n == 0 && Instant::now() < deadline && !api.shutdown.load(Ordering::Relaxed);
                if !waiting {
                    return records_response(body, n, next);
                }
            }
            Err(FetchError::OutOfRange {
                shard,
                offset,
                first_offset,
                next_offset,
            }) => {
                let why = if offset < first_offset {
                    "is below the first retained offset (older records were deleted by retention)"
                } else {
                    "is past the end of the durable log"
                };
                return json(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    json!({
                        "error": format!("offset {offset} of shard {shard} {why}; retained offsets are {first_offset}..{next_offset}"),
                        "shard": shard,
                        "offset": offset,
                        "first_offset": first_offset,
                        "next_offset": next_offset,
                    }),
                );
            }
            Err(FetchError::Log(e)) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reading shard {shard}'s log failed: {e}"),
                )
            }
        }
        // Long poll: wait for the durable offset to move (or the deadline, or shutdown).
        while api.durable_next(shard) == durable_next
            && Instant::now() < deadline
            && !api.shutdown.load(Ordering::Relaxed)
        {
            glommio::timer::sleep(POLL_EVERY).await;
        }
    }
}

fn records_response(body: Vec<u8>, n: u64, next: u64) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert("x-next-offset", next.into());
    h.insert("x-record-count", n.into());
    r
}

fn ts(ns: Option<u64>) -> Value {
    ns.map_or(Value::Null, |t| format_ts(t).into())
}

/// `GET /v1/log/shards`.
async fn shards(query: Option<&str>, api: &Arc<LogReaders>) -> Resp {
    if let Err(b) = pairs(query, &[]) {
        return refused(b);
    }
    let logs = api.logs.clone();
    let durable: Vec<u64> = (0..logs.len()).map(|s| api.durable_next(s)).collect();
    let result = blocking(move || {
        logs.iter()
            .zip(durable)
            .map(|(l, d)| l.summary(d))
            .collect::<Result<Vec<_>, _>>()
    })
    .await;
    match result {
        Ok(summaries) => {
            let shards: Vec<Value> = summaries
                .iter()
                .map(|s| {
                    json!({
                        "shard": s.shard,
                        "first_offset": s.first_offset,
                        "last_offset": s.last_offset,
                        "durable_offset": s.durable_offset,
                        "next_offset": s.next_offset,
                        "first_recv_ts": ts(s.first_recv_ns),
                        "last_recv_ts": ts(s.last_recv_ns),
                        "bytes_on_disk": s.bytes_on_disk,
                        "segments": s.segments,
                    })
                })
                .collect();
            json(StatusCode::OK, json!({ "shards": shards }))
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the logs failed: {e}"),
        ),
    }
}
