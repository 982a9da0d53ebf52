//! Building responses: a body with its content type, a JSON answer, and the 503 with
//! `Retry-After` that every ingest endpoint gives when the log refuses, the 503 of every
//! question of the aggregates when aggregation is off, and the error answers
//! of the log and consumer APIs (400 naming the parameter, 405 with `Allow`). Errors are JSON
//! objects with an `error` sentence naming the cause (and `param` or `reason` where one
//! applies), so a client can show them as they are.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::log::AppendError;

pub(crate) fn response(
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

pub(crate) fn unavailable(why: AppendError) -> Response<Full<Bytes>> {
    retry_soon(json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"error": why.to_string(), "reason": why.reason().as_str()}),
    ))
}

/// The answer to a question of the aggregates when aggregation is off (`enabled` false:
/// `agg.enabled = false`); None when it is on.
pub(crate) fn aggregation_off(enabled: bool) -> Option<Response<Full<Bytes>>> {
    (!enabled).then(|| json(StatusCode::SERVICE_UNAVAILABLE, aggregation_off_body()))
}

/// What [`aggregation_off`] answers (and `/v1/live` sends as its `aggregation_off` event):
/// the error naming the key and the two ways out, and `"reason": "aggregation_off"`.
pub(crate) fn aggregation_off_body() -> serde_json::Value {
    serde_json::json!({
        "error": "aggregation is off (agg.enabled = false in the config): this pixeld only logs. \
                  Set agg.enabled = true and restart to answer from the aggregates (they catch up on what the logs hold), \
                  or POST /v1/query with \"include\": {\"scan\": true} to answer from the raw log",
        "reason": "aggregation_off",
    })
}

/// `r` with `Retry-After: 1`: the client should try again in a second.
pub(crate) fn retry_soon(mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    r.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("1"),
    );
    r
}

/// A whole response, as the JSON endpoints build it.
pub(crate) type Resp = Response<Full<Bytes>>;

/// 400 naming the parameter.
pub(crate) fn bad_param(param: &str, error: String) -> Resp {
    json(
        StatusCode::BAD_REQUEST,
        json!({"error": format!("parameter `{param}`: {error}"), "param": param}),
    )
}

/// `{"error": …}` with `status`.
pub(crate) fn error(status: StatusCode, error: String) -> Resp {
    json(status, json!({ "error": error }))
}

/// 405 with the `Allow` header.
pub(crate) fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed (allowed: {allow})"),
    );
    r.headers_mut().insert(
        hyper::header::ALLOW,
        hyper::header::HeaderValue::from_static(allow),
    );
    r
}

/// An embedded file's answer to a `GET`/`HEAD`: 304 when `If-None-Match` names `etag` (a
/// quoted strong tag), else 200 with `body`; the `ETag` header either way; 405 for another
/// method (`what` names the file in the error). The caller adds its caching headers.
pub(crate) fn static_file(
    req: &hyper::Request<hyper::body::Incoming>,
    etag: &str,
    content_type: &str,
    body: &'static [u8],
    what: &str,
) -> Response<Full<Bytes>> {
    use hyper::header::{HeaderValue, ETAG, IF_NONE_MATCH};
    use hyper::Method;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": format!("method not allowed: {what} is read with GET")}),
        );
    }
    let fresh = req
        .headers()
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if fresh {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        response(StatusCode::OK, content_type, Bytes::from_static(body))
    };
    if let Ok(v) = HeaderValue::from_str(etag) {
        r.headers_mut().insert(ETAG, v);
    }
    r
}
