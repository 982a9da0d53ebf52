//! The dashboard in a real headless Chromium (Debian's `chromium`, driven by playwright-core
//! from `tests/browser/dashboard.mjs`) against a real `pixeld serve` with a token, fed with
//! realistic hits over the last 12 minutes (a spike in one of them). The Node script does the
//! browser-side checks against the JSON API (see its header) and posts the live burst
//! itself; screenshots land in `target/test-output/`.
//!
//! Needs Node.js, `npm ci` in `tests/browser/` and `/usr/bin/chromium`: `scripts/test`
//! installs them. When one is missing the test fails naming it — never a silent pass —
//! unless `PIXELD_SKIP_BROWSER=1` is set, which skips it with a printed reason (for
//! developers without a browser; CI never sets it).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{browser, http, Server};

const TOKEN: &str = "dashboard-test-token-0123456789";

/// `target/test-output/`, where the screenshots go (made if missing).
fn test_output() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-output");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn dashboard_in_headless_chromium() {
    if !browser::can_run("dashboard_in_headless_chromium") {
        return;
    }
    let out_dir = test_output();

    // A city database for the generator's addresses (203.0.113.1–250), so that the
    // Countries card has several rows, and regions for two of its countries.
    let geo = crate::common::tempdir();
    let db = geo.path().join("countries.mmdb");
    crate::common::write_country_db(
        &db,
        &[
            ("203.0.113.0/26", "US/CA"),
            ("203.0.113.64/26", "US"),
            ("203.0.113.128/26", "DE/BY"),
            ("203.0.113.192/27", "FR"),
            ("203.0.113.224/28", "BR"),
        ],
    );
    let mut s = Server::builder()
        .shards(2)
        .config(&format!(
            "auth_token = \"{TOKEN}\"\n[geo]\ndatabase = {:?}\n",
            db.display().to_string()
        ))
        .start();
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    let auth = format!("Bearer {TOKEN}");

    // Feed: realistic nginx JSON lines from the generator, minute by minute over the last
    // 12 minutes (none older, so that nothing leaves the 30-minute view during the test),
    // a spike 4 minutes ago; all stamped in the past.
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut total = 0;
    let mut line = Vec::new();
    for m in 1..=12u64 {
        let start = (now_ms / 60_000 - m) * 60_000 + 500;
        let n = if m == 4 {
            1500
        } else {
            150 + 40 * (12 - m) as usize
        };
        let mut g = pixeld::tools::gen::HitGenerator::new(m, start);
        let mut body = Vec::new();
        for _ in 0..n {
            g.next_line(&mut line);
            body.extend_from_slice(&line);
            body.push(b'\n');
        }
        // Custom events for the Events card: more signups than downloads.
        let events: Vec<&str> = std::iter::repeat_n("signup", 3)
            .chain(std::iter::once("download"))
            .collect();
        for (i, name) in events.iter().enumerate() {
            let t = start + 1000 * i as u64;
            body.extend_from_slice(
                format!(
                    r#"{{"msec":{}.{:03},"url":"https://news.example/e","vid":"e{m}-{i}","action":"event","name":"{name}","ua":"Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"}}"#,
                    t / 1000,
                    t % 1000
                )
                .as_bytes(),
            );
            body.push(b'\n');
        }
        let (st, _, b) = http(
            s.http,
            "POST",
            "/v1/events",
            &[("Authorization", &auth)],
            &body,
        );
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
        total += (n + events.len()) as u64;
    }
    // Every line aggregated and every increment applied before the page looks.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, body) = http(
            s.http,
            "GET",
            "/v1/summary?from=-30m",
            &[("Authorization", &auth)],
            b"",
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if v["hits"].as_u64() == Some(total) {
            break;
        }
        assert!(Instant::now() < deadline, "not aggregated: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Bounded: the script's own waits are ≤ 15 s each; give up on it after 3 minutes.
    let (passed, out, err) = browser::run_node(
        "dashboard.mjs",
        &[
            ("PIXELD_URL", format!("http://127.0.0.1:{}", s.http)),
            ("PIXELD_TOKEN", TOKEN.to_string()),
            ("PIXELD_OUT", out_dir.display().to_string()),
        ],
        Duration::from_secs(180),
    );
    s.signal("TERM");
    let (code, stderr) = s.wait();
    assert!(passed, "browser checks failed:\n{out}\n{err}");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains(TOKEN));
    assert!(out_dir.join("dashboard.png").is_file());
    assert!(out_dir.join("dashboard-phone.png").is_file());
}

/// A log-only pixeld (`agg.enabled = false`): the dashboard shows one notice naming the key
/// instead of empty panels and errors, and its health strip stays live
/// (`tests/browser/dashboard_off.mjs`).
#[test]
fn dashboard_of_a_log_only_server_says_so_and_shows_health() {
    if !browser::can_run("dashboard_of_a_log_only_server_says_so_and_shows_health") {
        return;
    }
    let out_dir = test_output();
    let mut s = Server::builder()
        .shards(2)
        .config("[agg]\nenabled = false\n")
        .start();
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    let (passed, out, err) = browser::run_node(
        "dashboard_off.mjs",
        &[
            ("PIXELD_URL", format!("http://127.0.0.1:{}", s.http)),
            ("PIXELD_OUT", out_dir.display().to_string()),
        ],
        Duration::from_secs(120),
    );
    assert!(passed, "browser checks failed:\n{out}\n{err}");
    // The server logged every hit the script posted (12 × 200) and aggregated none.
    crate::common::wait_until("the script's hits logged, none aggregated", || {
        let m = crate::common::metrics(s.http);
        crate::common::metric_sum(&m, "pixeld_appended_events_total") == 2400
            && m.get("pixeld_agg_records_total{outcome=\"aggregation_off\"}") == Some(&2400.0)
    });
    s.signal("TERM");
    let (code, stderr) = s.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(out_dir.join("dashboard-log-only.png").is_file());
}
