//! `auth_token` on a real `pixeld serve`: without the token every data endpoint answers 401
//! (JSON, `WWW-Authenticate: Bearer`), counted; with it, 200; the pixel, health and the
//! dashboard's static shell need none. The token never appears on stderr, in `/metrics`, in
//! an error or in `pixeld validate`'s output. A non-loopback HTTP address without a token is
//! refused at start (serve and validate) with a message naming the fix.

use std::process::Command;

use crate::common::{self, http, pixeld_bin, Server};

const TOKEN: &str = "s3cr3t-t0ken-0123456789abcdef";

fn metric(port: u16, name: &str) -> u64 {
    let auth = format!("Bearer {TOKEN}");
    let (_, _, body) = http(port, "GET", "/metrics", &[("Authorization", &auth)], b"");
    String::from_utf8(body)
        .unwrap()
        .lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_else(|| panic!("{name} missing"))
        .parse()
        .unwrap()
}

#[test]
fn token_required_for_data_not_for_pixel_health_or_shell() {
    let tmp = common::tempdir();
    let cfg = tmp.path().join("pixeld.toml");
    std::fs::write(&cfg, format!("auth_token = \"{TOKEN}\"\n")).unwrap();
    let mut s = Server::start(
        &tmp.path().join("data"),
        &["--shards", "1", "--config", cfg.to_str().unwrap()],
    );
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    let port = s.http;
    let good = format!("Bearer {TOKEN}");
    let lower = format!("bearer {TOKEN}");
    let wrong = format!("Bearer {}x", &TOKEN[..TOKEN.len() - 1]);
    let short = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);

    let mut refused = 0;
    for (method, path) in [
        ("GET", "/v1/summary"),
        ("GET", "/v1/top"),
        ("GET", "/v1/timeseries"),
        ("GET", "/v1/realtime"),
        ("GET", "/v1/live"),
        ("GET", "/metrics"),
        ("POST", "/v1/events"),
        ("GET", "/no/such/thing"),
    ] {
        for headers in [
            vec![],
            vec![("Authorization", wrong.as_str())],
            vec![("Authorization", short.as_str())],
            vec![("Authorization", TOKEN)],
            vec![("Authorization", "Basic dXNlcjpwYXNz")],
        ] {
            let (st, head, body) = http(port, method, path, &headers, b"");
            assert_eq!(st, 401, "{method} {path} {headers:?}");
            refused += 1;
            assert!(
                head.to_ascii_lowercase()
                    .contains("www-authenticate: bearer realm=\"pixeld\""),
                "{head}"
            );
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(
                v["error"]
                    .as_str()
                    .unwrap()
                    .contains("Authorization: Bearer"),
                "{v}"
            );
            assert!(!String::from_utf8_lossy(&body).contains(TOKEN));
        }
    }
    // With the token (the scheme is case-insensitive).
    for auth in [&good, &lower] {
        let (st, _, body) = http(port, "GET", "/v1/summary", &[("Authorization", auth)], b"");
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    }
    let (st, _, body) = http(
        port,
        "POST",
        "/v1/events",
        &[("Authorization", &good)],
        b"{\"url\":\"https://ex.com/a\",\"vid\":\"v\"}\n",
    );
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    // No token needed: the pixel and the tracking script (browsers send none), health,
    // the dashboard's shell.
    for path in [
        "/p.gif?url=https%3A%2F%2Fex.com%2Fb&vid=w",
        "/px.js",
        pixeld::http::tracker::versioned_path(),
        "/healthz",
        "/readyz",
        "/",
        "/dashboard/app.js",
        "/dashboard/vendor/uplot.min.js",
    ] {
        let (st, _, _) = http(port, "GET", path, &[], b"");
        assert_eq!(st, 200, "{path}");
    }
    // A path that only looks like the script is not public.
    let (st, _, _) = http(port, "GET", "/px.0123456789abcdef.js", &[], b"");
    assert_eq!(st, 401);
    refused += 1;
    // Both events were taken (the pixel's is written within the batch delay), the refusals
    // counted, and the token is nowhere.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric(port, "pixeld_appended_events_total") < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pixel was not logged"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(metric(port, "pixeld_appended_events_total"), 2);
    assert_eq!(metric(port, "pixeld_http_unauthorized_total"), refused);
    let (_, _, body) = http(port, "GET", "/metrics", &[("Authorization", &good)], b"");
    assert!(!String::from_utf8_lossy(&body).contains(TOKEN));
    s.signal("TERM");
    let (code, stderr) = s.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains(TOKEN), "the token is on stderr");

    // `validate` shows that a token is set, never its value.
    let out = Command::new(pixeld_bin())
        .args(["validate", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}");
    assert!(!printed.contains(TOKEN), "{printed}");
    assert!(
        printed.contains("auth_token = \"<set, not shown>\""),
        "{printed}"
    );
}

#[test]
fn non_loopback_without_token_is_refused_at_start() {
    let tmp = common::tempdir();
    // serve: refused before anything is bound, naming the key and the fix.
    let out = Command::new(pixeld_bin())
        .args(["serve", "--shards", "1", "--data-dir"])
        .arg(tmp.path().join("data"))
        .args([
            "--http",
            "0.0.0.0:1",
            "--udp",
            "127.0.0.1:0",
            "--tcp",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("auth_token") && err.contains("0.0.0.0:1") && err.contains("loopback"),
        "{err}"
    );
    assert!(!tmp.path().join("data").join("shard-000").exists());

    let validate = |text: &str| {
        let cfg = tmp.path().join("v.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new(pixeld_bin())
            .args(["validate", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = validate("[listen]\nhttp = \"[::]:5580\"\n");
    assert_eq!(code, Some(1));
    assert!(
        err.contains("auth_token") && err.contains("not a loopback"),
        "{err}"
    );
    // With a token it is accepted; loopback needs none; a weak token is refused without
    // being echoed.
    let (code, err) = validate(&format!(
        "auth_token = \"{TOKEN}\"\n[listen]\nhttp = \"0.0.0.0:5580\"\n"
    ));
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = validate("[listen]\nhttp = \"127.0.0.2:5580\"\n");
    assert_eq!(code, Some(0), "{err}");
    for weak in ["short-one", "has a space in it 0123"] {
        let (code, err) = validate(&format!("auth_token = \"{weak}\"\n"));
        assert_eq!(code, Some(1), "{weak}");
        assert!(err.contains("auth_token") && !err.contains(weak), "{err}");
    }
}
