//! The real thing: Debian's nginx with the shipped `config/nginx/pixel.conf`, pointed at a
//! `pixeld serve` on free loopback ports. 20,000 varied pixel requests (percent-encoded
//! url/ref, UTF-8 and quotes in the User-Agent) go through nginx, which also logs the same
//! format to a file. pixeld's log must hold exactly nginx's file lines (after the syslog
//! header): none missing, none extra; and the counters add up. The HTTP variant
//! (`config/nginx/pixel-http.conf`: each hit mirrored to pixeld's `/p.gif`) the same way, and
//! every shipped upstream closes idle connections before pixeld would.
//!
//! Needs nginx (installed by `scripts/test`); without it the test is skipped with a reason.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use std::time::{Duration, Instant};

use crate::common::nginx::{nginx_bin, Nginx};
use crate::common::{self, Server};

const REQUESTS: usize = 20_000;
const CLIENTS: usize = 4;

/// The shipped snippet, pointed at our ports, plus a file log of the same format.
fn nginx_conf(dir: &Path, http_port: u16, udp_port: u16) -> String {
    let snippet = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/nginx/pixel.conf"
    ))
    .unwrap();
    assert!(snippet.contains("127.0.0.1:8080") && snippet.contains("server=127.0.0.1:5514"));
    let access = dir.join("access.log");
    let snippet = snippet
        .replace(
            "listen 127.0.0.1:8080;",
            &format!("listen 127.0.0.1:{http_port};"),
        )
        .replace(
            "server=127.0.0.1:5514",
            &format!("server=127.0.0.1:{udp_port}"),
        )
        .replace(
            "access_log syslog:",
            &format!(
                "access_log {} pixel;\n        access_log syslog:",
                access.display()
            ),
        );
    snippet
}

/// Sends `paths` over one keep-alive connection, reading each response fully.
fn client(port: u16, reqs: Vec<(String, String)>) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.set_nodelay(true).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    for (path, ua) in reqs {
        // One write per request: with Nagle and delayed ACKs, split writes cost 40 ms each.
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: {ua}\r\n\r\n");
        c.write_all(req.as_bytes()).unwrap();
        let mut len = 0usize;
        let mut line = String::new();
        let mut status = String::new();
        loop {
            line.clear();
            let mut raw = Vec::new();
            r.read_until(b'\n', &mut raw).unwrap();
            line.push_str(&String::from_utf8_lossy(&raw));
            if status.is_empty() {
                status = line.clone();
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        assert!(status.contains(" 200 "), "{status}");
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
    }
}

/// pixeld's log as `replay` prints it, each record by `key` with how often it occurs, read
/// again until it holds `n` records (or 60 s passed).
fn replayed<K: std::hash::Hash + Eq>(
    data: &Path,
    n: usize,
    key: impl Fn(&[u8]) -> K,
) -> HashMap<K, usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(common::pixeld_bin())
            .args(["replay", "--data-dir"])
            .arg(data)
            .output()
            .unwrap();
        let mut got = HashMap::new();
        for l in out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            *got.entry(key(l)).or_insert(0) += 1;
        }
        if got.values().sum::<usize>() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stops the server (it must exit 0) and returns a reader of the `/metrics` it gave just
/// before: a counter's value by its name with labels.
fn metrics_then_stop(s: Server) -> impl Fn(&str) -> u64 {
    let (_, _, metrics) = common::http(s.http, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8(metrics).unwrap();
    s.signal("TERM");
    let (code, log) = s.wait();
    assert_eq!(code, Some(0), "{log}");
    move |name: &str| -> u64 {
        if let Some(family) = name.strip_suffix("{*}") {
            // Every series of the family, summed.
            return metrics
                .lines()
                .filter(|l| l.starts_with(&format!("{family}{{")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum();
        }
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{metrics}"))
    }
}

/// `got` holds exactly what `want` holds, as often.
fn same_records<K: std::fmt::Debug + std::hash::Hash + Eq>(
    got: &HashMap<K, usize>,
    want: &HashMap<K, usize>,
) {
    let missing: Vec<_> = want
        .iter()
        .filter(|(k, n)| got.get(*k) != Some(n))
        .take(3)
        .collect();
    assert!(
        missing.is_empty(),
        "sent but not (as often) in pixeld's log: {missing:?}"
    );
    assert_eq!(got, want, "pixeld's log holds records nobody sent");
}

#[test]
fn nginx_syslog_to_pixeld_loses_nothing() {
    let Some(nginx) = nginx_bin() else {
        eprintln!("SKIPPED nginx test: nginx is not installed (scripts/test installs nginx-light)");
        return;
    };
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::start(&data, &["--shards", "2"]);
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    let port = common::free_tcp_port();
    let conf = nginx_conf(tmp.path(), port, s.udp);
    let ngx = Nginx::start(&nginx, tmp.path(), &conf, port);

    // Varied hits: percent-encoded urls and referrers, UTF-8 and quotes in the UA.
    let agents = [
        "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0",
        "Mozilla/5.0 \"quoted\" \\backslash\\ (Ünïcødé; 日本語)",
        "curl/8.0",
    ];
    let mut per_client: Vec<Vec<(String, String)>> = vec![Vec::new(); CLIENTS];
    for i in 0..REQUESTS {
        let path =
            format!(
            "/p.gif?url=https%3A%2F%2Fsite{}.example%2Fa%2F{}%3Fq%3D%C3%A9&ref={}&vid=v{:x}&a={}",
            i % 7,
            i,
            if i % 3 == 0 { "" } else { "https%3A%2F%2Fwww.google.com%2F" },
            i % 1013,
            if i % 4 == 0 { "hb" } else { "pv" },
        );
        per_client[i % CLIENTS].push((path, agents[i % agents.len()].to_string()));
    }
    let t0 = Instant::now();
    let threads: Vec<_> = per_client
        .into_iter()
        .map(|reqs| std::thread::spawn(move || client(port, reqs)))
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    eprintln!("{REQUESTS} requests through nginx in {:.2?}", t0.elapsed());
    drop(ngx); // graceful stop: every log line is written
    eprintln!("nginx stopped after {:.2?}", t0.elapsed());

    // The file log: what nginx logged; pixeld's log: the same lines after the syslog header.
    let file = std::fs::read(tmp.path().join("access.log")).unwrap();
    let mut want: HashMap<Vec<u8>, usize> = HashMap::new();
    for l in file.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        *want.entry(l.to_vec()).or_insert(0) += 1;
    }
    assert_eq!(want.values().sum::<usize>(), REQUESTS);
    let strip = |rec: &[u8]| -> Vec<u8> {
        let i = rec
            .windows(8)
            .position(|w| w == b" pixel: ")
            .expect("syslog header with tag pixel");
        assert!(rec.starts_with(b"<190>"));
        rec[i + 8..].to_vec()
    };
    let got = replayed(&data, REQUESTS, strip);
    eprintln!("pixeld holds them after {:.2?}", t0.elapsed());
    let value = metrics_then_stop(s);
    assert_eq!(
        (
            value("pixeld_received_events_total{transport=\"udp\"}"),
            value("pixeld_appended_events_total"),
            value("pixeld_dropped_events_total{*}"),
            value("pixeld_udp_kernel_drops_total")
        ),
        (REQUESTS as u64, REQUESTS as u64, 0, 0),
    );
    same_records(&got, &want);
}

/// The HTTP variant, `config/nginx/pixel-http.conf`: nginx mirrors every hit to pixeld's own
/// `/p.gif` over kept-alive upstream connections. Every request reaches pixeld's log exactly
/// once, with its url, referrer, visitor, action and user agent as sent and nginx's address
/// for the reader (X-Forwarded-For, trusted from 127.0.0.1), and the counters add up.
#[test]
fn nginx_http_mirror_to_pixeld_loses_nothing() {
    let Some(nginx) = nginx_bin() else {
        eprintln!("SKIPPED nginx test: nginx is not installed (scripts/test installs nginx-light)");
        return;
    };
    const N: usize = 8_000;
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::start(&data, &["--shards", "2"]);
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    let port = common::free_tcp_port();
    let snippet = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/nginx/pixel-http.conf"
    ))
    .unwrap();
    for needle in ["listen 127.0.0.1:8080;", "server 127.0.0.1:5580;"] {
        assert!(snippet.contains(needle), "{needle} not in pixel-http.conf");
    }
    let conf = snippet
        .replace(
            "listen 127.0.0.1:8080;",
            &format!("listen 127.0.0.1:{port};"),
        )
        .replace(
            "server 127.0.0.1:5580;",
            &format!("server 127.0.0.1:{};", s.http),
        );
    let ngx = Nginx::start(&nginx, tmp.path(), &conf, port);

    let agents = [
        "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0",
        "Mozilla/5.0 \"quoted\" (Ünïcødé; 日本語)",
        "curl/8.0",
    ];
    // What each request says (url, ref, vid, action, ua, percent-encoded as sent) and
    // the reader's address pixeld is told (nginx's own, the client of this test).
    let mut sent: HashMap<[String; 6], usize> = HashMap::new();
    let mut per_client: Vec<Vec<(String, String)>> = vec![Vec::new(); CLIENTS];
    for i in 0..N {
        let url = format!("https%3A%2F%2Fsite{}.example%2Fa%2F{i}%3Fq%3D%C3%A9", i % 7);
        let rf = if i % 3 == 0 {
            ""
        } else {
            "https%3A%2F%2Fwww.google.com%2F"
        };
        let vid = format!("v{:x}", i % 1013);
        let a = if i % 4 == 0 { "hb" } else { "pv" };
        let ua = agents[i % agents.len()];
        let path = format!("/p.gif?url={url}&ref={rf}&vid={vid}&a={a}");
        *sent
            .entry([url, rf.into(), vid, a.into(), ua.into(), "127.0.0.1".into()])
            .or_insert(0) += 1;
        per_client[i % CLIENTS].push((path, ua.to_string()));
    }
    let threads: Vec<_> = per_client
        .into_iter()
        .map(|reqs| std::thread::spawn(move || client(port, reqs)))
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(ngx); // graceful stop: every mirror subrequest finished

    // pixeld's log: one record per request, as sent, with nginx's address for the reader.
    let got = replayed(&data, N, |l| {
        let v: serde_json::Value = serde_json::from_slice(l)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(l)));
        let f = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        [
            f("url"),
            f("urlref"),
            f("vid"),
            f("action"),
            f("ua"),
            f("ip"),
        ]
    });
    let value = metrics_then_stop(s);
    same_records(&got, &sent);
    assert_eq!(
        (
            value("pixeld_received_events_total{transport=\"http\"}"),
            value("pixeld_appended_events_total"),
            value("pixeld_dropped_events_total{*}")
        ),
        (N as u64, N as u64, 0),
    );
}

/// The shipped snippets' upstreams close an idle keep-alive connection before pixeld does
/// (after `ingest.http_header_timeout`): otherwise a hit nginx sends on a connection at the
/// moment pixeld closes it fails with 502 — seen with a 1 s timeout: a beacon (a POST) lost,
/// not retried.
#[test]
fn shipped_upstreams_close_idle_connections_before_pixeld() {
    let secs = |v: &str| -> u64 {
        v.strip_suffix('s')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{v:?}: expected whole seconds such as \"5s\""))
    };
    let defaults = pixeld::config::RawConfig::defaults();
    let pixeld_idle = secs(&defaults.ingest.http_header_timeout);
    for (file, upstream) in [
        ("tracker.conf", "upstream pixeld {"),
        ("pixel-http.conf", "upstream pixeld_http {"),
    ] {
        let path = format!("{}/config/nginx/{file}", env!("CARGO_MANIFEST_DIR"));
        let snippet = std::fs::read_to_string(&path).unwrap();
        let block = snippet
            .split(upstream)
            .nth(1)
            .and_then(|s| s.split('}').next())
            .unwrap_or_else(|| panic!("no `{upstream} … }}` in {file}"));
        let keepalive = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("keepalive_timeout "))
            .unwrap_or_else(|| panic!("no keepalive_timeout in {file}'s upstream"));
        let nginx_idle = secs(keepalive.trim_end_matches(';').trim());
        assert!(
            nginx_idle < pixeld_idle,
            "{file} keeps idle upstream connections {nginx_idle} s, pixeld closes them at {pixeld_idle} s"
        );
    }
}
