//! The tracking script in a real headless Chromium (driven by playwright-core from
//! `tests/browser/tracker.mjs`): test pages served by Debian's nginx with the shipped
//! first-party snippet (`config/nginx/tracker.conf`: `/px.js` and `/p.gif` proxied to pixeld on
//! the site's own origin), against a real `pixeld serve` with two shards. The Node script
//! checks, against pixeld's log and query API: pageviews on load and on SPA navigations with
//! their referrers, engaged time while active and none while hidden, the final beacon on
//! close, cookieless visitors (one per browser per day, no storage) and `data-vid="local"`,
//! Do Not Track, custom events, outbound links and downloads, old browsers without
//! `sendBeacon`/`fetch`/`history`, a broken endpoint (nothing on the console), a page on
//! another origin, the dashboard's CSP, and the size budget and freshness of `px.min.js`.
//!
//! Needs nginx, Node.js, `npm ci` in `tests/browser/` and `/usr/bin/chromium` (`scripts/test`
//! installs them); see `common::browser` for what happens when one is missing.

use std::time::Duration;

use crate::common::nginx::{self, nginx_bin, Nginx};
use crate::common::{self, browser, free_tcp_port, Server};

#[test]
fn tracking_script_in_headless_chromium() {
    if !browser::can_run("tracking_script_in_headless_chromium") {
        return;
    }
    let nginx = nginx_bin().expect("nginx is not installed (scripts/test installs nginx-light)");
    let tmp = common::tempdir();
    let mut s = Server::builder()
        .shards(2)
        .config("[ingest]\ntrusted_proxies = [\"127.0.0.1\"]\n")
        .start();
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));

    // The shipped snippet, pointed at our ports and a page directory the script fills.
    let root = tmp.path().join("site");
    std::fs::create_dir_all(&root).unwrap();
    let snippet = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/nginx/tracker.conf"
    ))
    .unwrap();
    let port = free_tcp_port();
    for needle in [
        "listen 127.0.0.1:8081;",
        "server 127.0.0.1:5580;",
        "root /var/www/example;",
    ] {
        assert!(snippet.contains(needle), "{needle} not in tracker.conf");
    }
    // Every hit in nginx's access log with its upstream's status, for a failure's message.
    assert!(snippet.contains("        access_log off;\n"));
    let snippet = snippet
        .replace("        access_log off;\n", "")
        .replace(
            "listen 127.0.0.1:8081;",
            &format!("listen 127.0.0.1:{port};"),
        )
        .replace(
            "server 127.0.0.1:5580;",
            &format!("server 127.0.0.1:{};", s.http),
        )
        .replace(
            "root /var/www/example;",
            &format!("root {};", root.display()),
        );
    let ngx = Nginx::start(&nginx, tmp.path(), &snippet, port);

    let (passed, out, err) = browser::run_node(
        "tracker.mjs",
        &[
            ("PIXELD_URL", format!("http://127.0.0.1:{}", s.http)),
            ("SITE_PORT", port.to_string()),
            ("SITE_ROOT", root.display().to_string()),
            // A port nothing listens on: the endpoint of the broken-endpoint page.
            ("BROKEN_PORT", free_tcp_port().to_string()),
        ],
        Duration::from_secs(240),
    );
    drop(ngx);
    s.signal("TERM");
    let (code, stderr) = s.wait();
    assert!(
        passed,
        "browser checks failed:\n{out}\n{err}\n{}\npixeld's stderr:\n{stderr}",
        nginx::logs(tmp.path())
    );
    assert_eq!(code, Some(0), "{stderr}");
}
