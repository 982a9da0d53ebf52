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

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{http, Server};

const TOKEN: &str = "dashboard-test-token-0123456789";

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Why the browser test cannot run here, if it cannot.
fn missing(browser_dir: &Path) -> Option<String> {
    if !chromium().exists() {
        return Some(format!(
            "{} not found: install Debian's chromium (`apt-get install chromium`; scripts/test does)",
            chromium().display()
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node not found: install Node.js 20 (scripts/test needs it)".into());
    }
    if !browser_dir.join("node_modules/playwright-core").is_dir() {
        return Some(format!(
            "playwright-core is not installed: run `npm ci` in {} (scripts/test does)",
            browser_dir.display()
        ));
    }
    None
}

#[test]
fn dashboard_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    if let Some(why) = missing(&browser_dir) {
        if std::env::var("PIXELD_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!("SKIPPED dashboard_in_headless_chromium (PIXELD_SKIP_BROWSER=1): {why}");
            return;
        }
        panic!("the browser test cannot run: {why}. Set PIXELD_SKIP_BROWSER=1 to skip it on a developer machine.");
    }
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-output");
    std::fs::create_dir_all(&out_dir).unwrap();

    let mut s = Server::builder()
        .shards(2)
        .config(&format!("auth_token = \"{TOKEN}\"\n"))
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
        let (st, _, b) = http(
            s.http,
            "POST",
            "/v1/events",
            &[("Authorization", &auth)],
            &body,
        );
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
        total += n as u64;
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

    let mut node = Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .current_dir(&browser_dir)
        .env("PIXELD_URL", format!("http://127.0.0.1:{}", s.http))
        .env("PIXELD_TOKEN", TOKEN)
        .env("PIXELD_OUT", &out_dir)
        .env("CHROMIUM", chromium())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    // Bounded: the script's own waits are ≤ 15 s each; give up on it after 3 minutes.
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(st) = node.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            let _ = node.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    let mut err = String::new();
    node.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    node.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    eprintln!("{out}{err}");
    s.signal("TERM");
    let (code, stderr) = s.wait();
    assert!(
        status.is_some(),
        "the browser script did not finish within 3 minutes"
    );
    assert!(
        status.is_some_and(|st| st.success()),
        "browser checks failed:\n{out}\n{err}"
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains(TOKEN));
    assert!(out_dir.join("dashboard.png").is_file());
    assert!(out_dir.join("dashboard-phone.png").is_file());
}
