//! The `pixeld` binary end to end: serve starts every shard, reports ready, stops cleanly on
//! SIGTERM; a failing shard makes the process exit non-zero naming the shard; the data dir
//! is locked; shard directories beyond `--shards` that hold records refuse the start and
//! stay readable by `replay` and `check`; validate names bad fields.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{self, Server};

fn import(data: &Path, shard: usize, lines: &str) {
    let mut child = Command::new(common::pixeld_bin())
        .args(["import", "--data-dir"])
        .arg(data)
        .args(["--shard", &shard.to_string(), "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_reports_ready_and_stops_cleanly_on_sigterm() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::start(&data, &["--shards", "2"]);
    assert!(
        s.wait_for("ready: 2 shards").is_some(),
        "no ready line:\n{}",
        s.seen.join("\n")
    );
    // A second process on the same data dir is refused, naming the holder.
    let out = Command::new(common::pixeld_bin())
        .args(["serve", "--shards", "1", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by another pixeld") && err.contains(&s.child.id().to_string()),
        "{err}"
    );
    // SIGHUP is refused out loud and the process keeps serving.
    s.signal("HUP");
    assert!(
        s.wait_for("SIGHUP received: reloading the configuration is not supported")
            .is_some(),
        "{}",
        s.seen.join("\n")
    );
    let (st, _, _) = common::http(s.http, "GET", "/readyz", &[], b"");
    assert_eq!(st, 200);
    s.signal("TERM");
    let (code, log) = s.wait();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("shard 0 stopped") && log.contains("shard 1 stopped"),
        "{log}"
    );
    assert!(data.join("shard-000").is_dir() && data.join("shard-001").is_dir());
    // Everything pixeld created is private to its user (the log holds visitors' addresses).
    let mut seen = 0;
    let mut stack = vec![data.clone()];
    while let Some(p) = stack.pop() {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o077,
            0,
            "{} is group/other accessible",
            p.display()
        );
        seen += 1;
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(seen >= 5, "only {seen} paths checked");
}

#[test]
fn a_failing_shard_fails_the_process_with_its_number() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // shard-001 is a file, so shard 1 cannot create its log directory.
    std::fs::write(data.join("shard-001"), b"not a directory").unwrap();
    let s = Server::start(&data, &["--shards", "2"]);
    let (code, log) = s.wait();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("shard 1 failed"), "{log}");
    assert!(log.contains("shard-001"), "{log}");
}

#[test]
fn shard_dirs_beyond_the_shard_count_refuse_the_start_and_stay_readable() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    import(&data, 0, "zero-a\nzero-b\n");
    import(&data, 2, "two-a\n");
    // Shard 2's record would be read by nobody: the start is refused, naming the fix.
    let s = Server::start(&data, &["--shards", "1"]);
    let (code, log) = s.wait();
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("holds the logs of shards [2]") && log.contains("`shards = 3` or more"),
        "{log}"
    );
    let out = Command::new(common::pixeld_bin())
        .args(["replay", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "zero-a\nzero-b\ntwo-a\n"
    );
    let out = Command::new(common::pixeld_bin())
        .args(["replay", "--shard", "2", "--format", "ndjson", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["shard"], 2);
    assert_eq!(v["offset"], 0);
    assert_eq!(v["line"], "two-a");
    assert_eq!(v["source"], "import");
    let out = Command::new(common::pixeld_bin())
        .args(["check", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("shard 000: 1 segments, 2 records")
            && text.contains("shard 002: 1 segments, 1 records"),
        "{text}"
    );
}

#[test]
fn validate_prints_the_effective_config_or_names_the_bad_field() {
    let tmp = common::tempdir();
    let out = Command::new(common::pixeld_bin())
        .arg("validate")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("embedded defaults: valid") && text.contains("batch_max_bytes"),
        "{text}"
    );
    let good = tmp.path().join("good.toml");
    std::fs::write(&good, "shards = 2\n[log]\nfsync = \"batch\"\n").unwrap();
    let out = Command::new(common::pixeld_bin())
        .args(["validate", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("fsync = \"batch\""));
    for (body, field) in [
        ("[log]\nfsync = \"sometimes\"\n", "log.fsync"),
        (
            "[log]\nsegment_max_bytes = \"12 parsecs\"\n",
            "log.segment_max_bytes",
        ),
        ("[logg]\nfsync = \"batch\"\n", "logg"),
        ("shards = 0\n", "shards"),
    ] {
        let bad = tmp.path().join("bad.toml");
        std::fs::write(&bad, body).unwrap();
        let out = Command::new(common::pixeld_bin())
            .args(["validate", "--config"])
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{body}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{body}: {err}");
    }
}

#[test]
fn too_low_memlock_limit_is_one_clear_line() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -l 16 && exec {} serve --data-dir {} --udp 127.0.0.1:{} --tcp 127.0.0.1:{} --http 127.0.0.1:{}",
            common::pixeld_bin(),
            data.display(),
            common::free_udp_port(),
            common::free_tcp_port(),
            common::free_tcp_port()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("locked-memory limit is 16 KiB") && err.contains("LimitMEMLOCK="),
        "{err}"
    );
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the test-only fault hooks: cargo test --features fault-injection (scripts/test does)"
)]
fn a_shard_stuck_at_shutdown_is_given_up_after_shutdown_timeout() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let cfg = tmp.path().join("pixeld.toml");
    std::fs::write(&cfg, "shutdown_timeout = \"2s\"\n").unwrap();
    let mut child = Command::new(common::pixeld_bin())
        .args(["serve", "--shards", "2", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .args(["--udp", &format!("127.0.0.1:{}", common::free_udp_port())])
        .args(["--tcp", &format!("127.0.0.1:{}", common::free_tcp_port())])
        .args(["--http", &format!("127.0.0.1:{}", common::free_tcp_port())])
        // Test-only fault hook: shard 1 blocks its thread 1 s after it is ready.
        .env("PIXELD_TEST_STALL_SHARD", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let mut seen = Vec::new();
    while let Ok(l) = rx.recv_timeout(std::time::Duration::from_secs(30)) {
        let stalling = l.contains("stalling this shard");
        seen.push(l);
        if stalling {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    common::signal(&child, "TERM");
    let status = child.wait().unwrap();
    while let Ok(l) = rx.recv_timeout(std::time::Duration::from_secs(2)) {
        seen.push(l);
    }
    let log = seen.join("\n");
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("shard(s) [1] did not stop within shutdown_timeout (2s)"),
        "{log}"
    );
}
