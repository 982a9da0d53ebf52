//! Named consumers over HTTP: `GET /v1/consumers` (the list), `GET` and `DELETE
//! /v1/consumers/{name}` (offsets, lag per shard), `PUT /v1/consumers/{name}/offsets` (a
//! commit, acknowledged only once durable). The store is `crate::consumers`; its fsyncs run
//! on glommio's blocking pool. The Kafka export's consumer, while the export is configured,
//! moves only with the broker's confirmations: changing it here answers 409.

use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};

use super::blocking;
use super::response::{bad_param, error, json, method_not_allowed, Resp};
use crate::consumers::{validate_name, Consumer, ConsumerError};
use crate::log::ndjson::format_ts;
use crate::readers::LogReaders;

/// Largest body of `PUT /v1/consumers/{name}/offsets`.
const MAX_COMMIT_BODY: usize = 64 << 10;

/// Whether `path` belongs to the consumers API.
pub fn owns(path: &str) -> bool {
    path == "/v1/consumers" || path.starts_with("/v1/consumers/")
}

/// Answers a request for a path [`owns`] claims.
pub async fn handle(req: Request<Incoming>, api: &Arc<LogReaders>) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path == "/v1/consumers" {
        return match method {
            Method::GET => list_consumers(api),
            _ => method_not_allowed("GET"),
        };
    }
    let rest = path.strip_prefix("/v1/consumers/").unwrap_or_default();
    match rest.split_once('/') {
        None => match method {
            Method::GET => get_consumer(rest, api).await,
            Method::DELETE if reserved(rest, api) => reserved_resp(rest),
            Method::DELETE => delete_consumer(rest, api).await,
            _ => method_not_allowed("GET, DELETE"),
        },
        Some((name, "offsets")) => match method {
            Method::PUT if reserved(name, api) => reserved_resp(name),
            Method::PUT => commit(name, req, api).await,
            _ => method_not_allowed("PUT"),
        },
        Some(_) => error(StatusCode::NOT_FOUND, "no such endpoint".into()),
    }
}

/// Whether `name` is the Kafka export's own consumer while the export runs: its offsets
/// move only with the broker's confirmations.
fn reserved(name: &str, api: &LogReaders) -> bool {
    api.reserved_consumer == Some(name)
}

fn reserved_resp(name: &str) -> Resp {
    error(
        StatusCode::CONFLICT,
        format!(
            "consumer {name:?} belongs to the Kafka export ([export.kafka]) and moves only when the broker confirms delivery; to move or delete it, stop pixeld, remove [export.kafka] from the config, start it, then change it here"
        ),
    )
}

fn consumer_error(e: ConsumerError) -> Resp {
    match e {
        ConsumerError::InvalidName { .. } => bad_param("name", e.to_string()),
        ConsumerError::UnknownShard { .. } => bad_param("shard", e.to_string()),
        ConsumerError::NotFound(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        ConsumerError::Io { .. } | ConsumerError::Corrupt { .. } => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the consumer store failed: {e}"),
        ),
    }
}

fn list_consumers(api: &LogReaders) -> Resp {
    let list: Vec<Value> = api
        .consumers
        .list()
        .iter()
        .map(|c| json!({"name": c.name, "retention_pin": c.retention_pin, "updated": format_ts(c.updated_ns)}))
        .collect();
    json(StatusCode::OK, json!({ "consumers": list }))
}

/// A consumer with its lag on every shard: records (durable records from its committed
/// offset on) and seconds (the age of the oldest of those; 0 when caught up).
async fn describe(c: Consumer, api: &Arc<LogReaders>) -> Value {
    let logs = api.logs.clone();
    let durable: Vec<u64> = (0..logs.len()).map(|s| api.durable_next(s)).collect();
    let offsets = c.offsets.clone();
    let now = crate::sys::now_ns();
    let shards = blocking(move || {
        logs.iter()
            .zip(durable)
            .map(|(log, next)| match offsets.get(&log.shard) {
                None => json!({"shard": log.shard, "committed_offset": null, "next_offset": next, "lag_records": null, "lag_seconds": null}),
                Some(&o) => {
                    let oldest = log.recv_ns_at(o, next).ok().flatten();
                    let lag_s = oldest.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1e9);
                    json!({"shard": log.shard, "committed_offset": o, "next_offset": next, "lag_records": next.saturating_sub(o), "lag_seconds": (lag_s * 1000.0).round() / 1000.0})
                }
            })
            .collect::<Vec<Value>>()
    })
    .await;
    json!({
        "name": c.name,
        "retention_pin": c.retention_pin,
        "updated": format_ts(c.updated_ns),
        "shards": shards,
    })
}

async fn get_consumer(name: &str, api: &Arc<LogReaders>) -> Resp {
    if let Err(e) = validate_name(name) {
        return consumer_error(e);
    }
    match api.consumers.get(name) {
        Some(c) => json(StatusCode::OK, describe(c, api).await),
        None => consumer_error(ConsumerError::NotFound(name.to_string())),
    }
}

async fn delete_consumer(name: &str, api: &Arc<LogReaders>) -> Resp {
    if let Err(e) = validate_name(name) {
        return consumer_error(e);
    }
    let store = api.consumers.clone();
    let n = name.to_string();
    match blocking(move || store.delete(&n)).await {
        Ok(()) => json(StatusCode::OK, json!({ "deleted": name })),
        Err(e) => consumer_error(e),
    }
}

/// A commit: (shard, offset) pairs and the `retention_pin` to set, if given.
type Commit = (Vec<(usize, u64)>, Option<bool>);

/// The offsets of a commit body: `{"shard":N,"offset":O}`, a list of those, or
/// `{"offsets":[…], "retention_pin": bool}` (the single form takes `retention_pin` too).
fn parse_commit(v: &Value) -> Result<Commit, String> {
    fn pair(v: &Value) -> Result<(usize, u64), String> {
        let Some(o) = v.as_object() else {
            return Err(format!("{v} is not an object {{\"shard\":N,\"offset\":O}}"));
        };
        if let Some(k) = o.keys().find(|k| !matches!(k.as_str(), "shard" | "offset")) {
            return Err(format!("unknown field `{k}` in an offset"));
        }
        let field = |k: &str| {
            o.get(k)
                .ok_or_else(|| format!("`{k}` is missing"))?
                .as_u64()
                .ok_or_else(|| format!("`{k}` must be a non-negative integer, not {}", o[k]))
        };
        let shard = usize::try_from(field("shard")?).map_err(|e| e.to_string())?;
        Ok((shard, field("offset")?))
    }
    let pin = |o: &serde_json::Map<String, Value>| match o.get("retention_pin") {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(x) => Err(format!("`retention_pin` must be true or false, not {x}")),
    };
    match v {
        Value::Array(a) => Ok((a.iter().map(pair).collect::<Result<_, _>>()?, None)),
        Value::Object(o) if o.contains_key("offsets") => {
            if let Some(k) = o
                .keys()
                .find(|k| !matches!(k.as_str(), "offsets" | "retention_pin"))
            {
                return Err(format!("unknown field `{k}`"));
            }
            let Some(list) = o.get("offsets").and_then(Value::as_array) else {
                return Err("`offsets` must be a list".into());
            };
            Ok((list.iter().map(pair).collect::<Result<_, _>>()?, pin(o)?))
        }
        Value::Object(o) => {
            let mut rest = o.clone();
            let p = pin(o)?;
            rest.remove("retention_pin");
            Ok((vec![pair(&Value::Object(rest))?], p))
        }
        _ => Err("the body must be a JSON object or list".into()),
    }
}

/// `PUT /v1/consumers/{name}/offsets`: answers 200 with the consumer only once the commit is
/// durable.
async fn commit(name: &str, req: Request<Incoming>, api: &Arc<LogReaders>) -> Resp {
    if let Err(e) = validate_name(name) {
        return consumer_error(e);
    }
    let body = match Limited::new(req.into_body(), MAX_COMMIT_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body larger than {MAX_COMMIT_BODY} bytes"),
                );
            }
            return error(StatusCode::BAD_REQUEST, format!("cannot read body: {e}"));
        }
    };
    let parsed = serde_json::from_slice::<Value>(&body)
        .map_err(|e| format!("the body is not JSON: {e}"))
        .and_then(|v| parse_commit(&v));
    let (offsets, retention_pin) = match parsed {
        Ok(x) => x,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if offsets.is_empty() && retention_pin.is_none() {
        return error(StatusCode::BAD_REQUEST, "nothing to commit".into());
    }
    for (i, &(shard, offset)) in offsets.iter().enumerate() {
        if shard >= api.logs.len() {
            return consumer_error(ConsumerError::UnknownShard {
                shard,
                shards: api.logs.len(),
            });
        }
        if offsets[..i].iter().any(|(s, _)| *s == shard) {
            return bad_param("shard", format!("shard {shard} is given more than once"));
        }
        let next = api.durable_next(shard);
        if offset > next {
            return bad_param(
                "offset",
                format!("offset {offset} is past the end of shard {shard}'s durable log (next offset {next})"),
            );
        }
    }
    let store = api.consumers.clone();
    let n = name.to_string();
    match blocking(move || store.commit(&n, &offsets, retention_pin)).await {
        Ok(c) => json(StatusCode::OK, describe(c, api).await),
        Err(e) => consumer_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_bodies() {
        let p = |s: &str| parse_commit(&serde_json::from_str(s).unwrap());
        assert_eq!(p(r#"{"shard":1,"offset":5}"#), Ok((vec![(1, 5)], None)));
        assert_eq!(
            p(r#"{"shard":1,"offset":5,"retention_pin":true}"#),
            Ok((vec![(1, 5)], Some(true)))
        );
        assert_eq!(
            p(r#"[{"shard":0,"offset":1},{"shard":1,"offset":2}]"#),
            Ok((vec![(0, 1), (1, 2)], None))
        );
        assert_eq!(
            p(r#"{"offsets":[],"retention_pin":false}"#),
            Ok((vec![], Some(false)))
        );
        for bad in [
            r#"{"shard":-1,"offset":5}"#,
            r#"{"shard":0,"offset":-5}"#,
            r#"{"shard":0}"#,
            r#"{"shard":0,"offset":1,"x":1}"#,
            r#"{"shard":0,"offset":1.5}"#,
            r#"{"offsets":{}}"#,
            r#"{"shard":0,"offset":1,"retention_pin":"yes"}"#,
            r#"3"#,
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn routes() {
        for p in [
            "/v1/consumers",
            "/v1/consumers/x",
            "/v1/consumers/x/offsets",
        ] {
            assert!(owns(p), "{p}");
            assert!(!crate::http::log::owns(p), "{p}");
        }
        for p in ["/v1/log", "/v1/log/shards"] {
            assert!(crate::http::log::owns(p) && !owns(p), "{p}");
        }
        for p in ["/v1/logs", "/v1/log/x", "/v1/consumersx"] {
            assert!(!owns(p) && !crate::http::log::owns(p), "{p}");
        }
    }
}
