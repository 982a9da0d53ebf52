//! The systemd notify protocol of a real `pixeld serve`, read from a test `NOTIFY_SOCKET`:
//! STATUS while recovering, READY=1 only once every shard has recovered its log and rebuilt
//! its aggregates, WATCHDOG=1 while every shard is responsive and not once a shard stalls
//! (test-only fault hook `PIXELD_TEST_STALL_SHARD`), STOPPING=1 on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, http};

fn start(
    data: &std::path::Path,
    sock: &std::path::Path,
    shards: &str,
    stall: Option<&str>,
) -> (Child, u16) {
    let http_port = common::free_tcp_port();
    let mut cmd = Command::new(common::pixeld_bin());
    cmd.args(["serve", "--shards", shards, "--data-dir"])
        .arg(data)
        .args(["--udp", &format!("127.0.0.1:{}", common::free_udp_port())])
        .args(["--tcp", &format!("127.0.0.1:{}", common::free_tcp_port())])
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .env("NOTIFY_SOCKET", sock)
        .env("WATCHDOG_USEC", "400000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(s) = stall {
        cmd.env("PIXELD_TEST_STALL_SHARD", s);
    }
    (cmd.spawn().unwrap(), http_port)
}

/// The next notification (its `KEY=value` lines), or None after `wait`.
fn next(sock: &UnixDatagram, wait: Duration) -> Option<Vec<String>> {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Some(
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

/// Collects notifications until one contains `what` (or `limit` passes).
fn until(sock: &UnixDatagram, what: &str, limit: Duration) -> Vec<String> {
    let end = Instant::now() + limit;
    let mut all = Vec::new();
    while Instant::now() < end {
        if let Some(msg) = next(sock, Duration::from_millis(200)) {
            let hit = msg.iter().any(|l| l == what);
            all.extend(msg);
            if hit {
                return all;
            }
        }
    }
    panic!("no {what} within {limit:?}; got {all:?}");
}

fn metric(port: u16, name: &str) -> u64 {
    let (_, _, body) = http(port, "GET", "/metrics", &[], b"");
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_else(|| panic!("{name} missing"))
        .parse()
        .unwrap()
}

#[test]
fn ready_then_aggregates_complete_watchdog_and_stopping() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    // A log to rebuild from: 30 000 hits in shard 0.
    let mut g = pixeld::tools::gen::HitGenerator::new(
        5,
        (pixeld::route::now_minute() as u64 - 30) * 60_000,
    );
    let mut lines = Vec::new();
    let mut l = Vec::new();
    for _ in 0..30_000 {
        g.next_line(&mut l);
        lines.extend_from_slice(&l);
        lines.push(b'\n');
    }
    let src = tmp.path().join("hits");
    std::fs::write(&src, &lines).unwrap();
    common::import_file(&data, 0, &src);

    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let (mut child, port) = start(&data, &sock_path, "2", None);
    let before = until(&sock, "READY=1", Duration::from_secs(60));
    // Ready means ingest is up; the aggregates catch up on the log beside it, and a status
    // line says when they are complete.
    let (st, _, _) = http(port, "GET", "/readyz", &[], b"");
    assert_eq!(st, 200);
    assert!(
        before.iter().any(|l| l.starts_with("STATUS=ready")),
        "{before:?}"
    );
    let complete = until(
        &sock,
        "STATUS=ready; aggregates complete",
        Duration::from_secs(60),
    );
    assert!(!complete.is_empty());
    assert_eq!(metric(port, "pixeld_agg_rebuilt_records_total"), 30_000);
    assert_eq!(metric(port, "pixeld_agg_complete"), 1);
    // WATCHDOG_USEC=400000: a keep-alive every 200 ms while every shard beats.
    let mut pings = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1500) {
        if let Some(m) = next(&sock, Duration::from_millis(300)) {
            pings += m.iter().filter(|l| *l == "WATCHDOG=1").count();
        }
    }
    assert!(pings >= 4, "{pings} watchdog pings in 1.5 s");
    // SIGTERM: STOPPING=1, then a clean exit.
    common::signal(&child, "TERM");
    until(&sock, "STOPPING=1", Duration::from_secs(10));
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the test-only fault hooks: cargo test --features fault-injection (scripts/test does)"
)]
fn a_stalled_shard_starves_the_watchdog() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let (mut child, _) = start(&data, &sock_path, "2", Some("1"));
    until(&sock, "READY=1", Duration::from_secs(60));
    until(&sock, "WATCHDOG=1", Duration::from_secs(5));
    // Shard 1 blocks its thread 1 s after ready; from then on no keep-alive may arrive.
    let status = until(
        &sock,
        "STATUS=shard(s) [1] unresponsive for more than 1s; watchdog not fed",
        Duration::from_secs(10),
    );
    assert!(!status.is_empty());
    let t = Instant::now();
    let mut late = Vec::new();
    while t.elapsed() < Duration::from_millis(1500) {
        if let Some(m) = next(&sock, Duration::from_millis(300)) {
            late.extend(m);
        }
    }
    assert!(
        !late.iter().any(|l| l == "WATCHDOG=1"),
        "watchdog fed while a shard is stalled: {late:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
