//! Guard against tests that pass today and fail next month: a fixed instant in a test (an epoch
//! timestamp of 2020–2039 in seconds, milliseconds, microseconds or nanoseconds, or an ISO date
//! such as `2026-11-22`) ages against everything in pixeld that is judged by the clock — log
//! retention, `minute_window` / `hour_window`, `future_allowance`, relative query ranges such as
//! `from=-1h`, the dashboard's 7-day view. A test once wrote records stamped 2026-11-22 into a
//! log with the default 7-day retention and failed by itself a week later.
//!
//! So every such literal in `tests/`, `benches/` and `fuzz/` must either go (stamp data relative
//! to now: `pixeld::sys::now_ns()`, `common::data_ms()`) or say on its own line, or in the
//! comment right above it, why it cannot age: a comment containing `fixed-date:` and the reason (a checked-in
//! sample that is only read, a pure function given its own `now`). `scripts/test` then runs
//! every test binary that carries such a marker, and the library's unit tests, a second and a
//! third time with the clock moved 60 and 400 days ahead (libfaketime), which proves the reason.
//! This file does not link pixeld: it reads the sources as text.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// The marker that excuses a fixed instant on its own line or in the comment right above it.
const MARKER: &str = "fixed-date:";

/// Seconds since the epoch of 2020-01-01 and 2040-01-01: the years a test written now could
/// plausibly stamp its data with.
const FROM_S: u128 = 1_577_836_800;
const TO_S: u128 = 2_208_988_800;

/// Whether `digits` (a whole number written without separators) reads as an instant in
/// [2020, 2040) in seconds, milliseconds, microseconds or nanoseconds.
fn is_epoch(digits: &str) -> bool {
    let scale: u128 = match digits.len() {
        10 => 1,
        13 => 1_000,
        16 => 1_000_000,
        19 => 1_000_000_000,
        _ => return false,
    };
    digits
        .parse::<u128>()
        .is_ok_and(|v| (FROM_S * scale..TO_S * scale).contains(&v))
}

/// Whether `b[i..]` starts an ISO date `20YY-MM-DD` with YY in 20..=39 (not preceded by a digit).
fn is_iso_date(b: &[u8], i: usize) -> bool {
    let Some(s) = b.get(i..i + 10) else {
        return false;
    };
    let d = |k: usize| s[k].is_ascii_digit();
    (i == 0 || !b[i - 1].is_ascii_digit())
        && s.starts_with(b"20")
        && matches!(s[2], b'2' | b'3')
        && d(3)
        && s[4] == b'-'
        && d(5)
        && d(6)
        && s[7] == b'-'
        && d(8)
        && d(9)
}

/// The fixed instants on one line of source, as written.
fn fixed_instants(line: &str) -> Vec<String> {
    let b = line.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if is_iso_date(b, i) {
            found.push(line[i..i + 10].to_string());
            i += 10;
            continue;
        }
        // A number: digits with `_` separators, not part of an identifier or a longer number.
        let starts = b[i].is_ascii_digit()
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'_') {
            j += 1;
        }
        let digits: String = line[i..j].chars().filter(char::is_ascii_digit).collect();
        if is_epoch(&digits) {
            found.push(line[i..j].to_string());
        }
        i = j;
    }
    found
}

/// The Rust sources of the test suite, the benches (run once by `cargo test --all-targets`) and
/// the fuzz targets (whose corpus `tests/fuzz_corpus.rs` replays).
fn sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = ["tests", "benches", "fuzz"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name();
            if p.is_dir() {
                // Generated or third-party trees hold no test of ours.
                if !matches!(
                    name.to_str(),
                    Some("node_modules" | "target" | "corpus" | "artifacts")
                ) {
                    dirs.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The cargo target a source file belongs to, as `scripts/test` names it.
fn target_of(rel: &Path) -> String {
    let stem = rel.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy());
    match parts.next().as_deref() {
        // The fuzz target bodies run in the suite through tests/fuzz_corpus.rs.
        Some("fuzz") => "--test fuzz_corpus".to_string(),
        Some("benches") => format!("--bench {stem}"),
        _ => match parts.next().as_deref() {
            // tests/<name>.rs, or tests/<name>/… for a multi-file test binary.
            Some(f) if f.ends_with(".rs") => format!("--test {stem}"),
            Some(dir) => format!("--test {dir}"),
            None => String::new(),
        },
    }
}

/// The targets `scripts/test` runs again with the clock moved, from its `shifted=(...)` line.
fn shifted_targets() -> Vec<String> {
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test"))
        .expect("scripts/test");
    let line = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("shifted=("))
        .expect("scripts/test has a shifted=(...) line");
    let words: Vec<&str> = line.trim_end_matches(')').split_whitespace().collect();
    words
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| format!("{} {}", c[0], c[1]))
        .collect()
}

#[test]
fn the_scanner_finds_fixed_instants_and_only_those() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"let t0 = 1_795_311_543_000_000_000;"#,
            &["1_795_311_543_000_000_000"],
        ),
        (r#"{"msec":1795311543.462,"url":"x"}"#, &["1795311543"]),
        (
            r#"HitGenerator::new(7, 1_795_311_543_462)"#,
            &["1_795_311_543_462"],
        ),
        (r#""--start", "2026-11-22T00:00:00Z""#, &["2026-11-22"]),
        (r#"<190>1 2031-02-03T00:00:00Z h"#, &["2031-02-03"]),
        // Not instants: durations, sizes, ports, hashes, older or far-future dates.
        (
            r#"let window = 60_000_000_000; let big = 1_000_000_000;"#,
            &[],
        ),
        (r#"ts=1409188200 x=4_000_000_000 id=v1795311543a"#, &[]),
        (r#"time=2099-01-01T00:00:00Z 2019-12-31 12026-11-22"#, &[]),
        (r#"0x1795311543 abc_1795311543"#, &[]),
    ];
    for (line, want) in cases {
        assert_eq!(fixed_instants(line), *want, "{line}");
    }
}

#[test]
fn every_fixed_instant_in_the_tests_says_why_it_cannot_age() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = sources();
    assert!(
        files.iter().any(|p| p.ends_with("tests/fixed_dates.rs")),
        "the scan found this file: {files:?}"
    );
    let shifted = shifted_targets();
    let mut unexplained = Vec::new();
    let mut not_shifted = Vec::new();
    let mut excused = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            // This file's own examples are the scanner's test data, not test data.
            if path.ends_with("tests/fixed_dates.rs") {
                break;
            }
            let found = fixed_instants(line);
            if found.is_empty() {
                continue;
            }
            // The reason stands on the line itself or in the comment lines right above it.
            let marked = line.contains(MARKER)
                || lines[..n]
                    .iter()
                    .rev()
                    .take_while(|l| l.trim_start().starts_with("//"))
                    .any(|l| l.contains(MARKER));
            if marked {
                excused += 1;
                let target = target_of(path.strip_prefix(root).unwrap_or(path));
                if !shifted.contains(&target) && !not_shifted.contains(&target) {
                    not_shifted.push(target);
                }
            } else {
                unexplained.push(format!(
                    "{}:{}: {}",
                    path.strip_prefix(root).unwrap_or(path).display(),
                    n + 1,
                    found.join(", ")
                ));
            }
        }
    }
    assert!(
        unexplained.is_empty(),
        "fixed instants in test data age against retention, the aggregate windows and relative \
         query ranges, and break the suite by themselves weeks later. Stamp the data relative to \
         now (pixeld::sys::now_ns(), common::data_ms()), or, where a fixed date is the point \
         (a checked-in sample that is only read, a pure function given its own `now`), add a \
         `// {MARKER} <why it cannot age>` comment on the line or in the comment right above it: \
         scripts/test then also runs that test binary with the clock 60 and 400 days ahead.\n{}",
        unexplained.join("\n")
    );
    assert!(
        not_shifted.is_empty(),
        "these test targets keep fixed dates but scripts/test does not run them with the clock \
         moved: add them to its `shifted=(...)` line: {not_shifted:?}"
    );
    eprintln!("{excused} fixed instants, each with a reason; run shifted: {shifted:?}");
}
