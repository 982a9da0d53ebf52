//! Building responses: a body with its content type, a JSON answer, and the 503 with
//! `Retry-After` that every ingest endpoint gives when the log refuses. Errors are JSON
//! objects with an `error` sentence naming the cause (and `param` or `reason` where one
//! applies), so a client can show them as they are.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};

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
