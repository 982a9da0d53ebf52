//! Helpers shared by the scenario tests, a module of every test binary that links pixeld
//! (`#[path = "../common/mod.rs"] mod common;` in each `tests/<area>/main.rs`): a glommio
//! executor to run log code on, temp dirs on a real filesystem (O_DIRECT needs one),
//! deterministic record contents, a running `pixeld serve` ([`Server`], started directly or
//! with [`Server::builder`]) and HTTP requests to it; [`log_http`] holds the log-over-HTTP
//! helpers, [`nginx`] a real nginx, [`browser`] a real Chromium.
#![allow(dead_code)]

pub mod browser;
pub mod log_http;
pub mod model;
pub mod nginx;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use pixeld::log::reader::{ShardReader, Start, Warning};

/// Runs `f` to completion on a fresh glommio executor thread.
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(f)
        .expect("spawn executor")
        .join()
        .expect("executor thread")
}

/// A temp dir under the target dir (a real disk, unlike a tmpfs /tmp).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir")
}

/// Now in milliseconds since the epoch. Test data is stamped relative to this, never with a
/// fixed date: retention, the aggregate windows and relative query ranges all age against the
/// clock (tests/fixed_dates.rs enforces it).
pub fn now_ms() -> u64 {
    pixeld::sys::now_ns() / 1_000_000
}

/// The time test events are stamped with, in milliseconds since the epoch: now, as first asked
/// for in this test process, and the same for every later call, so that a test can build the
/// same line again to compare it with what was stored.
pub fn data_ms() -> u64 {
    static T: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *T.get_or_init(now_ms)
}

/// [`data_ms`] as nginx's `$msec` writes it: seconds with three decimals of milliseconds.
pub fn data_msec() -> String {
    let ms = data_ms();
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// Deterministic contents for record `i` of round `round`, `len` bytes, no LF.
pub fn record_bytes(round: u64, i: u64, len: usize) -> Vec<u8> {
    let head = format!("r{round}-i{i}-");
    let mut v = Vec::with_capacity(len);
    let mut x = round.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i;
    while v.len() < len {
        if v.len() < head.len() {
            v.push(head.as_bytes()[v.len()]);
        } else {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(b'a' + (x % 26) as u8);
        }
    }
    v
}

/// A record as tests compare it: (offset, recv_ts, bytes).
pub type Rec = (u64, u64, Vec<u8>);

/// Every readable record, and the warnings.
pub fn read_all(dir: &Path, start: Start) -> (Vec<Rec>, Vec<Warning>) {
    let mut recs = Vec::new();
    let mut warns = Vec::new();
    ShardReader::new(dir, 4096)
        .read(
            start,
            |r| {
                recs.push((r.offset, r.recv_ts, r.bytes.to_vec()));
                ControlFlow::Continue(())
            },
            |w| warns.push(w),
        )
        .expect("read");
    (recs, warns)
}

/// Path of the pixeld binary built for these tests.
pub fn pixeld_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pixeld")
}

/// A loopback UDP port that is free now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback TCP port that is free now.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `sig` (e.g. `TERM`, `KILL`) to a child process by its PID.
pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Runs `pixeld check --aggregates` on a stopped server's data dir (with the config text the
/// server ran with); whether it passed, and its report.
pub fn check_aggregates(data: &Path, config: Option<&str>) -> (bool, String) {
    let dir = tempdir();
    let mut cmd = Command::new(pixeld_bin());
    cmd.args(["check", "--aggregates", "--data-dir"]).arg(data);
    if let Some(text) = config {
        let path = dir.path().join("pixeld.toml");
        std::fs::write(&path, text).unwrap();
        cmd.arg("--config").arg(path);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Writes a MaxMind-format country database to `path` (a temp file renamed over it, as
/// geoipupdate does), each network mapped to `{"country": {"iso_code": code}}` as GeoLite2
/// does; a code `CC/SUB` adds a region as GeoLite2-City does (`{"subdivisions":
/// [{"iso_code": SUB}]}`). A `[geo] database` of pixeld can name it.
pub fn write_country_db(path: &Path, nets: &[(&str, &str)]) {
    let mut w = mmdb_writer::Writer::builder("Test-Country")
        .description(&[("en", "a country database of pixeld's tests")])
        .build();
    for (net, code) in nets {
        let net: ipnet::IpNet = net.parse().expect("a test network");
        let record = match code.split_once('/') {
            Some((code, sub)) => serde_json::json!({
                "country": {"iso_code": code},
                "subdivisions": [{"iso_code": sub}],
            }),
            None => serde_json::json!({"country": {"iso_code": code}}),
        };
        w.insert(net, &record).expect("insert a network");
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, w.to_bytes().expect("mmdb bytes")).expect("write the database");
    std::fs::rename(&tmp, path).expect("rename the database");
}

/// Appends the lines of `file` to shard `shard`'s log under `data` with `pixeld import`
/// (offline; each record's receive time is the import's).
pub fn import_file(data: &Path, shard: usize, file: &Path) {
    let out = Command::new(pixeld_bin())
        .args(["import", "--shard", &shard.to_string(), "--data-dir"])
        .arg(data)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pixeld import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `pixeld serve`, stopped by its PID.
pub struct Server {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
    pub udp: u16,
    pub tcp: u16,
    pub http: u16,
    /// What [`ServerBuilder`] made for this server (its config file, a data dir it was not
    /// given), removed once the server is stopped.
    scratch: Option<tempfile::TempDir>,
}

impl Server {
    /// A [`ServerBuilder`]: `Server::builder().data(&data).shards(2).config("...").start()`.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Starts `pixeld serve` on free loopback ports (plus `extra` arguments).
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        Server::start_env(data, extra, &[])
    }

    pub fn start_args(data: &Path, extra: &[String]) -> Server {
        Server::start_bin(pixeld_bin(), data, extra)
    }

    /// Like [`Server::start_args`] with another pixeld binary (e.g. an installed one).
    pub fn start_bin(bin: &str, data: &Path, extra: &[String]) -> Server {
        Server::spawn(Command::new(bin), data, extra)
    }

    /// Like [`Server::start`] with extra environment variables (e.g. a test-only fault hook).
    pub fn start_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let (udp, tcp, http_port) = (free_udp_port(), free_tcp_port(), free_tcp_port());
        let mut args: Vec<String> = vec![
            "--udp".into(),
            format!("127.0.0.1:{udp}"),
            "--tcp".into(),
            format!("127.0.0.1:{tcp}"),
            "--http".into(),
            format!("127.0.0.1:{http_port}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = Command::new(pixeld_bin());
        cmd.envs(env.iter().copied());
        let mut s = Server::spawn(cmd, data, &args);
        s.udp = udp;
        s.tcp = tcp;
        s.http = http_port;
        s
    }

    /// Starts `cmd serve --data-dir DATA EXTRA…` (ports as `extra` names them; set the
    /// fields for the helpers that use them).
    pub fn spawn(mut cmd: Command, data: &Path, extra: &[String]) -> Server {
        let mut child = cmd
            .args(["serve", "--data-dir"])
            .arg(data)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pixeld serve");
        let (tx, lines) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Server {
            child,
            lines,
            seen: Vec::new(),
            udp: 0,
            tcp: 0,
            http: 0,
            scratch: None,
        }
    }

    /// Waits for a stderr line containing `what`; None if the process ended first.
    pub fn wait_for(&mut self, what: &str) -> Option<String> {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(what) {
                        return Some(l);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits until it reports ready and its aggregates complete; fails with its stderr.
    pub fn wait_complete(&mut self) {
        for what in ["pixeld: ready", "pixeld: aggregates complete"] {
            assert!(self.wait_for(what).is_some(), "{}", self.seen.join("\n"));
        }
    }

    pub fn signal(&self, sig: &str) {
        signal(&self.child, sig);
    }

    pub fn wait(mut self) -> (Option<i32>, String) {
        let status = self.child.wait().unwrap();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        (status.code(), self.seen.join("\n"))
    }
}

/// How to start a `pixeld serve` on free loopback ports ([`Server::start_env`] underneath):
/// the data dir, config text, shard count, extra arguments and environment, each optional.
#[derive(Default)]
pub struct ServerBuilder {
    data: Option<PathBuf>,
    config: Option<String>,
    shards: Option<usize>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl ServerBuilder {
    /// The data dir (`--data-dir`); without it, a fresh temp dir removed with the server.
    pub fn data(mut self, dir: &Path) -> Self {
        self.data = Some(dir.to_path_buf());
        self
    }

    /// TOML config text, written to a temp file (removed with the server) passed as
    /// `--config`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    /// `--shards n`.
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = Some(n);
        self
    }

    /// More arguments after the others (may be called again: they add up).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An environment variable of the server process only (e.g. a test-only fault hook).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts the server; wait for its `ready` line with [`Server::wait_for`].
    pub fn start(self) -> Server {
        let scratch = tempdir();
        let data = self.data.unwrap_or_else(|| scratch.path().join("data"));
        let mut args: Vec<String> = Vec::new();
        if let Some(n) = self.shards {
            args.extend(["--shards".to_string(), n.to_string()]);
        }
        if let Some(text) = &self.config {
            let path = scratch.path().join("pixeld.toml");
            std::fs::write(&path, text).expect("write the config file");
            args.extend(["--config".to_string(), path.display().to_string()]);
        }
        args.extend(self.args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut s = Server::start_env(&data, &args, &env);
        s.scratch = Some(scratch);
        s
    }
}

/// A test that panics must not leave its server running (it would hold ports and CPU, and
/// keep retrying whatever it was connected to): the child is killed by its PID on drop.
impl Drop for Server {
    fn drop(&mut self) {
        let exited = self.child.try_wait();
        if let Ok(None) = exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            // A failing test shows how its server was doing: alive or not, and its last words.
            let mut tail: Vec<String> = self.seen.clone();
            while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                tail.push(l);
            }
            let from = tail.len().saturating_sub(40);
            eprintln!(
                "pixeld on port {} (before the test stopped it: {exited:?}), last stderr lines:\n{}",
                self.http,
                tail[from..].join("\n")
            );
        }
    }
}

/// One HTTP/1.1 request on a fresh connection; returns (status, headers, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.write_all(req.as_bytes()).unwrap();
    c.write_all(body).unwrap();
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    let read = c.read_to_end(&mut out);
    let Some(split) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        // Say how it ended (a reset, a close, or the 30 s timeout) and what came.
        panic!(
            "no complete response to {method} {path} on port {port}: {read:?} after {:?}, {} bytes: {:?}",
            started.elapsed(),
            out.len(),
            String::from_utf8_lossy(&out[..out.len().min(200)])
        );
    };
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, out[split + 4..].to_vec())
}

/// `POST /v1/query` of `q`: (status, the answer as JSON).
pub fn post_query(port: u16, q: &serde_json::Value) -> (u16, serde_json::Value) {
    let (st, _, b) = http(
        port,
        "POST",
        "/v1/query",
        &[("Content-Type", "application/json")],
        q.to_string().as_bytes(),
    );
    let v = serde_json::from_slice(&b)
        .unwrap_or_else(|e| panic!("{st}: not JSON ({e}): {}", String::from_utf8_lossy(&b)));
    (st, v)
}

/// One `GET` on a fresh connection: (status, body), status 0 when the connection closed
/// without a complete response (a server being killed).
pub fn try_get(port: u16, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let Some(split) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, out);
    };
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    (status, out[split + 4..].to_vec())
}

/// `POST /v1/events` of `lines` (one per line, newline-terminated) as NDJSON; fails unless
/// answered 200.
pub fn post_ndjson<'a>(port: u16, lines: impl IntoIterator<Item = &'a [u8]>) {
    let mut body = Vec::new();
    for l in lines {
        body.extend_from_slice(l);
        body.push(b'\n');
    }
    let (st, _, b) = http(
        port,
        "POST",
        "/v1/events",
        &[("Content-Type", "application/x-ndjson")],
        &body,
    );
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
}

/// Waits until `cond` holds (looked at every 50 ms), up to 30 s; `what` names it when it never
/// does.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not after 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every increment a server's shards made for another shard has been shipped and
/// applied by its owner (and no new one came between two looks): after a request that appended lines answered, what they
/// add is then in the aggregates. For a server whose count of lines is not known (a restart
/// after a rebuild); up to 30 s.
pub fn wait_settled(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        let mx = metrics(port);
        let m = |k: &str| mx.get(k).copied().unwrap_or(-1.0) as u64;
        // Every increment made for another shard shipped (none waiting in a pending batch,
        // which a starved ticker may hold past two readings) and applied.
        let queued = m("pixeld_route_queued_increments_total");
        let sent = m("pixeld_route_sent_increments_total");
        let applied = m("pixeld_route_applied_increments_total");
        // Every outcome: aggregated, out_of_window, unparsed, bot, aggregation_off.
        let outcomes = metric_sum(&mx, "pixeld_agg_records_total");
        let now = (sent, outcomes);
        let drained = queued == sent && sent == applied;
        if drained && last == Some(now) {
            return;
        }
        last = drained.then_some(now);
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: increments still in flight after 30 s ({queued} queued, {sent} sent, {applied} applied)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `lines` lines are appended, every record has an outcome and every shipped
/// increment is applied (twice in a row, so that no batch was still pending), then returns
/// the metrics; fails after 30 s with the counters that explain why.
pub fn wait_aggregated(
    port: u16,
    lines: u64,
    what: &str,
) -> std::collections::BTreeMap<String, f64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut stable = None;
    loop {
        let mx = metrics(port);
        let m = |k: &str| mx.get(k).copied().unwrap_or(-1.0) as u64;
        let appended = m("pixeld_appended_events_total");
        // Every outcome: aggregated, out_of_window, unparsed, bot, aggregation_off.
        let outcomes = metric_sum(&mx, "pixeld_agg_records_total");
        let queued = m("pixeld_route_queued_increments_total");
        let sent = m("pixeld_route_sent_increments_total");
        let applied = m("pixeld_route_applied_increments_total");
        let done = appended == lines && outcomes == lines && queued == sent && sent == applied;
        if done && stable == Some(sent) {
            return mx;
        }
        stable = if done { Some(sent) } else { None };
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not everything aggregated after 30 s ({lines} lines sent):\n{}",
            mx.iter()
                .filter(
                    |(k, _)| ["appended", "agg_", "route_", "received", "dropped", "kernel"]
                        .iter()
                        .any(|n| k.contains(n))
                )
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(60));
    }
}

/// `POST /v1/events` on a fresh connection: the status, or None when the server is gone or
/// the connection broke (for tests that kill it).
pub fn try_post_events(port: u16, body: &[u8]) -> Option<u16> {
    try_post_events_with(port, &[], body)
}

/// [`try_post_events`] with extra headers.
pub fn try_post_events_with(port: u16, headers: &[(&str, &str)], body: &[u8]) -> Option<u16> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let mut head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    c.write_all(head.as_bytes()).ok()?;
    c.write_all(body).ok()?;
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// Whether the tests run as root (some scenarios need another user or a mount).
#[allow(unsafe_code)]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Every sample of `/metrics`: `name{labels}` → value.
pub fn metrics(port: u16) -> std::collections::BTreeMap<String, f64> {
    let (status, _, body) = http(port, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The sum of every sample of metric `name` (all label sets).
pub fn metric_sum(m: &std::collections::BTreeMap<String, f64>, name: &str) -> u64 {
    m.iter()
        .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| *v as u64)
        .sum()
}
