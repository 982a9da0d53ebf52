//! Real Chromium for the scenario tests: Debian's `chromium`, driven by playwright-core from a
//! Node script in `tests/browser/` (`npm ci` there; `scripts/test` installs all three). When
//! one is missing a test fails naming it, never a silent pass, unless `PIXELD_SKIP_BROWSER=1`
//! (developers without a browser; CI never sets it) skips it with a printed reason.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Chromium binary (`CHROMIUM` overrides).
pub fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// `tests/browser/`.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Why a browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    if !chromium().exists() {
        return Some(format!(
            "{} not found: install Debian's chromium (`apt-get install chromium`; scripts/test does)",
            chromium().display()
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node not found: install Node.js 20 (scripts/test needs it)".into());
    }
    if !browser_dir().join("node_modules/playwright-core").is_dir() {
        return Some(format!(
            "playwright-core is not installed: run `npm ci` in {} (scripts/test does)",
            browser_dir().display()
        ));
    }
    None
}

/// Whether `test` may run: true, or false after printing why it is skipped
/// (`PIXELD_SKIP_BROWSER=1`); panics naming what is missing otherwise.
pub fn can_run(test: &str) -> bool {
    let Some(why) = missing() else { return true };
    if std::env::var("PIXELD_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test} (PIXELD_SKIP_BROWSER=1): {why}");
        return false;
    }
    panic!("the browser test cannot run: {why}. Set PIXELD_SKIP_BROWSER=1 to skip it on a developer machine.");
}

/// Runs `node tests/browser/<script>` with `env` (and `CHROMIUM`), giving up after `limit`.
/// Returns whether it exited 0, and its stdout and stderr (also printed).
pub fn run_node(script: &str, env: &[(&str, String)], limit: Duration) -> (bool, String, String) {
    let dir = browser_dir();
    let mut cmd = Command::new("node");
    cmd.arg(dir.join(script))
        .current_dir(&dir)
        .env("CHROMIUM", chromium())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut node = cmd.spawn().expect("start node");
    let deadline = Instant::now() + limit;
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
    let (mut out, mut err) = (String::new(), String::new());
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
    if status.is_none() {
        err.push_str(&format!("\n{script} did not finish within {limit:?}"));
    }
    (status.is_some_and(|s| s.success()), out, err)
}
