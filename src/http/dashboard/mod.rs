//! The dashboard: a static page (HTML, CSS, vanilla JS and the vendored uPlot chart library)
//! compiled into the binary and served on the HTTP port, plus its live stream (`live`).
//!
//! The page reads only the public JSON API (`/v1/summary`, `/v1/top`, `/v1/timeseries`,
//! `/v1/live`), so it is also a working example of it; this module holds no data and makes no
//! query. It must never load anything from another origin: the assets are embedded with
//! `include_bytes!` (no build step, works offline, one binary to ship) and every answer carries
//! a Content-Security-Policy that allows only this origin. Assets are revalidated with an
//! `ETag` (a hash of the embedded bytes) so that an upgraded binary is never shadowed by a
//! browser cache, while an unchanged page costs a 304.

pub mod live;

use std::sync::OnceLock;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

/// One embedded file and the path it is served at.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// Every file of the dashboard. uPlot's version and licence: `assets/dashboard/vendor/`.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../../assets/dashboard/index.html"),
    },
    Asset {
        path: "/dashboard/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../assets/dashboard/app.js"),
    },
    Asset {
        path: "/dashboard/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../assets/dashboard/style.css"),
    },
    Asset {
        path: "/dashboard/icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../../assets/dashboard/icon.svg"),
    },
    Asset {
        path: "/dashboard/vendor/uplot.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../assets/dashboard/vendor/uplot.min.js"),
    },
    Asset {
        path: "/dashboard/vendor/uplot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../assets/dashboard/vendor/uplot.min.css"),
    },
    Asset {
        path: "/dashboard/vendor/LICENSE-uplot",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../../../assets/dashboard/vendor/LICENSE-uplot"),
    },
];

/// Only this origin, for everything; no inline script or style (uPlot styles elements
/// through the CSSOM, which a CSP does not restrict). `connect-src 'self'` keeps the page's
/// API calls on this pixeld.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; font-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// The embedded file served at `path`, if any.
pub fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// The strong ETag of each asset (a fixed-seed hash of its bytes), computed once.
fn etag(asset: &Asset) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                format!(
                    "\"{:016x}-{:x}\"",
                    wyhash::wyhash(a.body, 0x9e37),
                    a.body.len()
                )
            })
            .collect()
    });
    ASSETS
        .iter()
        .position(|a| a.path == asset.path)
        .and_then(|i| tags.get(i))
        .map_or("\"0\"", String::as_str)
}

/// Answers a GET or HEAD of an asset: 200 with the bytes, or 304 when `If-None-Match`
/// names the current ETag. Other methods get 405.
pub fn serve(req: &Request<Incoming>, asset: &Asset) -> Response<Full<Bytes>> {
    let mut r = crate::http::response::static_file(
        req,
        etag(asset),
        asset.content_type,
        asset.body,
        "the dashboard",
    );
    if r.status() == StatusCode::METHOD_NOT_ALLOWED {
        return r;
    }
    let h = r.headers_mut();
    // Revalidate every time: one round trip, and never a stale page after an upgrade.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_embedded_and_references_only_this_origin() {
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{}", a.path);
            assert!(etag(a).starts_with('"'), "{}", a.path);
        }
        let index = std::str::from_utf8(asset("/").unwrap().body).unwrap();
        let app = std::str::from_utf8(asset("/dashboard/app.js").unwrap().body).unwrap();
        for text in [index, app] {
            // No other origin: no absolute URL anywhere but the SVG namespace name, which is
            // an identifier, never fetched. (The browser test also watches the requests.)
            let text = text.replace("'http://www.w3.org/2000/svg'", "");
            for needle in [
                "http://",
                "https://",
                "//cdn",
                "fonts.googleapis",
                "@import",
            ] {
                assert!(!text.contains(needle), "{needle} in an asset");
            }
        }
        for src in [
            "/dashboard/app.js",
            "/dashboard/vendor/uplot.min.js",
            "/dashboard/style.css",
        ] {
            assert!(index.contains(src), "index.html loads {src}");
        }
        assert!(asset("/nope").is_none());
    }
}
