//! The page-side tracking script, `assets/tracker/px.js` (served minified), compiled into the binary like the
//! dashboard and served to any origin without a token:
//! - `GET /px.js`: the current script, cached for an hour and revalidated by `ETag`, with
//!   `Content-Location` naming its versioned path;
//! - `GET /px.<hash>.js`: the same bytes under a name that changes with them (a hash of the
//!   script), so a page that pins it can cache it forever (`immutable`).
//!
//! What the script sends is answered by [`super::ingest`] (`/p.gif`); what it does is in its
//! own header comment and in the README ("The tracking script").

use std::sync::OnceLock;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::response::static_file;

/// The script as served: `px.min.js`, made from the source `px.js` by `scripts/build-px`
/// (the browser test checks that it is up to date and within its size budget).
pub const SCRIPT: &[u8] = include_bytes!("../../assets/tracker/px.min.js");

/// The script's hash: 16 hex digits of a fixed-seed hash of its bytes.
fn hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| format!("{:016x}", wyhash::wyhash(SCRIPT, 0x7078)))
}

/// The versioned path, `/px.<hash>.js`.
pub fn versioned_path() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| format!("/px.{}.js", hash()))
}

/// Whether `path` is the script, under either name.
pub fn owns(path: &str) -> bool {
    path == "/px.js" || path == versioned_path()
}

/// Answers `GET`/`HEAD` of either name; 304 when `If-None-Match` names the current bytes.
pub fn serve(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let etag = format!("\"{}\"", hash());
    let mut r = static_file(
        req,
        &etag,
        "text/javascript; charset=utf-8",
        SCRIPT,
        "the script",
    );
    if r.status() == StatusCode::METHOD_NOT_ALLOWED {
        return r;
    }
    let h = r.headers_mut();
    if req.uri().path() == "/px.js" {
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        );
        if let Ok(v) = HeaderValue::from_str(versioned_path()) {
            h.insert(header::CONTENT_LOCATION, v);
        }
    } else {
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        );
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_names_and_nothing_else() {
        assert!(owns("/px.js"));
        assert!(owns(versioned_path()));
        assert!(versioned_path().starts_with("/px.") && versioned_path().len() == 23);
        assert!(!owns("/px.0000000000000000.js"));
        assert!(!owns("/px.js/x"));
        // The script is plain text that loads nothing from anywhere by itself.
        let source = include_str!("../../assets/tracker/px.js");
        let text = std::str::from_utf8(SCRIPT).unwrap();
        assert!(text.starts_with("/*! pixeld px.js"));
        for needle in ["XMLHttpRequest", "eval(", "document.cookie", "console."] {
            assert!(!text.contains(needle), "{needle} in px.min.js");
            assert!(!source.contains(needle), "{needle} in px.js");
        }
    }
}
