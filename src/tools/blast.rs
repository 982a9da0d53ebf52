//! `pixeld blast`: the load generator. Sends generated pixel hits ([`crate::tools::gen`]) to a
//! running pixeld over UDP (batched `sendmmsg`, one datagram per hit as nginx sends them), TCP
//! (large writes, LF or octet-counted framing; like a relay it peeks for pixeld's FIN before
//! each write and then continues on a new connection, and replaces a connection that breaks,
//! sending the failed write again) or HTTP (`POST /v1/events` NDJSON batches on keep-alive
//! connections, each with an `Idempotency-Key`, retried on 503, 409, refused and broken
//! connections for up to a minute), open loop at a fixed rate or as fast as possible, from
//! several connections (one thread each). Then it reads pixeld's `/metrics` and accounts for
//! every event it sent: received, appended, dropped by reason, kernel UDP drops, and what is
//! left unaccounted; and it reports its retries and reconnects by cause.
//!
//! Accounting is by counter deltas (`/metrics` before and after, once the counters have
//! stopped moving), so it is exact only when nothing else sends to the same pixeld meanwhile.
//! Every line carries `seq`, so a loss can also be located in the log (`pixeld replay`).
//! Kernel UDP drops are counted by pixeld from the socket's own count, which it reads after
//! every drain (`SO_MEMINFO`). Builds before 2026-12-06 read it from `SO_RXQ_OVFL`, which the
//! kernel reports only with the *next* datagram a socket receives; so that blast accounts
//! exactly against those too, after the run each sending socket still sends one empty
//! datagram (a "probe", which pixeld counts as received and dropped as `empty`), and the
//! probes are subtracted again.
//!
//! This module is a client: it never touches a data dir and uses plain std threads and
//! blocking sockets (a load generator must not share pixeld's executors). It only measures;
//! the end-to-end benchmark (`benches/e2e.py`) pins it and pixeld to their CPUs.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::ingest::framing::Framing;
use crate::tools::gen::{GenConfig, HitGenerator};
use crate::transport::Transport;

/// Datagrams handed to the kernel per `sendmmsg` call.
pub const UDP_BATCH: usize = 64;

/// What to send, where, how fast.
#[derive(Debug, Clone)]
pub struct BlastOptions {
    pub transport: Transport,
    /// Where hits go: the UDP, TCP or HTTP listener.
    pub target: SocketAddr,
    pub framing: Framing,
    /// Parallel connections (UDP: sockets), one sender thread each.
    pub connections: usize,
    /// Events per second over all connections, open loop; 0: as fast as possible.
    pub rate: u64,
    /// Stop after this many events (the lines with `seq` 1..=count).
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    pub seed: u64,
    /// Event time of the first line, ms since the epoch.
    pub start_msec: u64,
    pub gen: GenConfig,
    /// Events per write: per `POST` for HTTP, per `write` for TCP (UDP sends `UDP_BATCH` per
    /// `sendmmsg`).
    pub batch: usize,
    /// pixeld's `/metrics` URL; `None`: send only (for other receivers).
    pub metrics: Option<String>,
    /// How long to wait for the counters to take in what was sent.
    pub settle_timeout: Duration,
    /// HTTP: an `Idempotency-Key` per batch (retries store it once).
    pub idempotency_keys: bool,
}

/// Why a blast failed.
#[derive(Debug, Error)]
pub enum BlastError {
    #[error(
        "cannot connect to {addr}: {source} (is `pixeld serve` listening there? see --target)"
    )]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("sending to {addr} failed: {source}")]
    Send { addr: SocketAddr, source: io::Error },
    #[error("nothing receives UDP on {addr} (the kernel answered `connection refused` {tries} times in a row)")]
    UdpRefused { addr: SocketAddr, tries: u32 },
    #[error("cannot read pixeld's metrics at {url}: {reason} (start `pixeld serve`, point --http or --metrics at it, or pass --no-metrics)")]
    Metrics { url: String, reason: String },
    #[error("POST {url} answered {status}: {body}")]
    HttpStatus {
        url: String,
        status: u16,
        body: String,
    },
    #[error("POST {url} failed: {reason}")]
    Http { url: String, reason: String },
    #[error("a sender thread panicked")]
    Thread,
    #[error("blast sends over udp, tcp or http, not {0:?}")]
    NotASender(Transport),
    #[error("blast sends line or octet framing; `auto` is for receivers")]
    AutoFraming,
}

/// Counter deltas read from pixeld's `/metrics` over the run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PixeldCounts {
    /// `pixeld_received_events_total{transport}` of the blast's transport, probes excluded.
    pub received: u64,
    pub appended: u64,
    /// `pixeld_dropped_events_total` by reason (non-zero ones), probes excluded.
    pub dropped: BTreeMap<String, u64>,
    /// `pixeld_udp_kernel_drops_total`, lost probes excluded.
    pub kernel_udp_drops: u64,
    /// sent − appended − dropped − kernel drops: events nobody counted (0 when all is well).
    pub unaccounted: i64,
    /// The counters stopped moving before `settle_timeout`.
    pub settled: bool,
}

/// What a blast did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub transport: &'static str,
    pub target: String,
    pub connections: usize,
    pub rate_target: u64,
    /// Events handed to the kernel (UDP, TCP) or in answered POSTs (HTTP).
    pub sent: u64,
    pub bytes: u64,
    /// From the first send to the last.
    pub seconds: f64,
    /// Largest lag behind the open-loop schedule (0 at rate 0).
    pub max_lag_seconds: f64,
    /// HTTP: events in batches still answered 503 or 409 after every retry (a prefix of such
    /// a batch may be stored; its key lets a later retry store exactly the rest).
    pub http_refused_events: u64,
    /// HTTP: batches sent again after a 503, a 409 or a failed connection (same key).
    pub http_retries: u64,
    /// HTTP: those retries by cause (`503`; `503_partial`: a 503 saying a prefix of the batch
    /// is stored; `409`; `refused`: no listener; `broken`: the connection reset or closed
    /// before the answer; `timeout`).
    pub http_retry_causes: BTreeMap<&'static str, u64>,
    /// TCP: connections the server closed (FIN seen before a write, as rsyslog's `omfwd`
    /// checks) that were left cleanly for a new one; nothing written to them is at risk.
    pub tcp_reconnects: u64,
    /// TCP: connections that broke under a write (reset, broken pipe) and were replaced.
    pub tcp_broken: u64,
    /// TCP: lines written again on a new connection because their write failed on a broken
    /// one (whole chunks; a chunk the kernel took in part may arrive twice, or cut).
    pub tcp_resent_lines: u64,
    /// TCP: lines of earlier writes that the server's kernel had not acknowledged at the last
    /// write before a connection broke (`SIOCOUTQ`): what the broken connection may have lost
    /// on the client's side. What the server's kernel had acknowledged but pixeld had not
    /// read or made durable is not visible here.
    pub tcp_unacked_lines_at_break: u64,
    /// UDP: empty probe datagrams sent / seen by pixeld.
    pub probes_sent: u64,
    pub probes_seen: u64,
    pub pixeld: Option<PixeldCounts>,
}

impl Report {
    pub fn events_per_second(&self) -> f64 {
        self.sent as f64 / self.seconds.max(1e-9)
    }

    /// One JSON object with every field.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "transport": self.transport,
            "target": self.target,
            "connections": self.connections,
            "rate_target": self.rate_target,
            "sent": self.sent,
            "bytes": self.bytes,
            "seconds": round3(self.seconds),
            "events_per_second": self.events_per_second().round(),
            "max_lag_seconds": round3(self.max_lag_seconds),
        });
        if self.transport == "http" {
            v["http_refused_events"] = self.http_refused_events.into();
            v["http_retries"] = self.http_retries.into();
            v["http_retry_causes"] = serde_json::json!(self.http_retry_causes);
        }
        if self.transport == "tcp" {
            v["tcp_reconnects"] = self.tcp_reconnects.into();
            v["tcp_broken"] = self.tcp_broken.into();
            v["tcp_resent_lines"] = self.tcp_resent_lines.into();
            v["tcp_unacked_lines_at_break"] = self.tcp_unacked_lines_at_break.into();
        }
        if self.transport == "udp" {
            v["probes_sent"] = self.probes_sent.into();
            v["probes_seen"] = self.probes_seen.into();
        }
        v["pixeld"] = match &self.pixeld {
            None => serde_json::Value::Null,
            Some(p) => serde_json::json!({
                "received": p.received,
                "appended": p.appended,
                "dropped": p.dropped,
                "kernel_udp_drops": p.kernel_udp_drops,
                "unaccounted": p.unaccounted,
                "settled": p.settled,
            }),
        };
        v
    }

    /// A few human lines.
    pub fn render(&self) -> String {
        let mut s = format!(
            "sent {} events ({:.1} MB) over {} to {} on {} connection(s) in {:.3} s: {:.0} events/s",
            self.sent,
            self.bytes as f64 / 1e6,
            self.transport,
            self.target,
            self.connections,
            self.seconds,
            self.events_per_second()
        );
        if self.rate_target > 0 {
            s += &format!(
                " (target {}/s, max lag {:.3} s)",
                self.rate_target, self.max_lag_seconds
            );
        }
        s.push('\n');
        if self.http_retries > 0 {
            let causes: Vec<String> = self
                .http_retry_causes
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            s += &format!(
                "HTTP: {} batches retried with their Idempotency-Key ({})\n",
                self.http_retries,
                causes.join(", ")
            );
        }
        if self.http_refused_events > 0 {
            s += &format!(
                "HTTP 503 for {} events after retrying for {} s (pixeld could not take them)\n",
                self.http_refused_events,
                RETRY_FOR.as_secs()
            );
        }
        if self.tcp_reconnects + self.tcp_broken > 0 {
            s += &format!(
                "TCP: {} connections closed by pixeld and replaced, {} broke under a write ({} lines re-sent; {} lines unacknowledged by pixeld's kernel at the last write before a break)\n",
                self.tcp_reconnects,
                self.tcp_broken,
                self.tcp_resent_lines,
                self.tcp_unacked_lines_at_break
            );
        }
        match &self.pixeld {
            None => s += "pixeld counters: not read (--no-metrics)\n",
            Some(p) => {
                let dropped: u64 = p.dropped.values().sum();
                s += &format!(
                    "pixeld: received {}, appended {}, dropped {}{}, kernel UDP drops {}; unaccounted {}{}\n",
                    p.received,
                    p.appended,
                    dropped,
                    if p.dropped.is_empty() {
                        String::new()
                    } else {
                        format!(" {:?}", p.dropped)
                    },
                    p.kernel_udp_drops,
                    p.unaccounted,
                    if p.settled {
                        ""
                    } else {
                        " (counters still moving at the settle timeout)"
                    }
                );
            }
        }
        s
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The event time a blast should start at so that its events are stamped near now: now for
/// an open-loop rate (events are sent as they are stamped), else so that the last of `count`
/// events is stamped about now.
pub fn default_start_msec(now_ms: u64, count: Option<u64>, ms_per_event: f64) -> u64 {
    match count {
        Some(n) => now_ms.saturating_sub((n as f64 * ms_per_event) as u64),
        None => now_ms,
    }
}

/// Writes `count` lines (LF-terminated) to `out`: exactly the lines a blast with the same
/// seed, start and generator config sends. Returns the bytes written.
pub fn write_lines(
    seed: u64,
    start_msec: u64,
    gen: &GenConfig,
    count: u64,
    out: &mut dyn Write,
) -> io::Result<u64> {
    let mut g = HitGenerator::with_config(seed, start_msec, gen.clone());
    let mut buf = Vec::with_capacity(1 << 20);
    let mut bytes = 0u64;
    for i in 0..count {
        g.append_line(i, &mut buf);
        buf.push(b'\n');
        if buf.len() >= 1 << 20 {
            out.write_all(&buf)?;
            bytes += buf.len() as u64;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    bytes += buf.len() as u64;
    out.flush()?;
    Ok(bytes)
}

/// What one sender thread did.
#[derive(Debug, Default)]
struct ThreadResult {
    sent: u64,
    bytes: u64,
    max_lag: f64,
    http_refused: u64,
    http_retries: u64,
    http_retry_causes: BTreeMap<&'static str, u64>,
    tcp_reconnects: u64,
    tcp_broken: u64,
    tcp_resent_lines: u64,
    tcp_unacked_lines_at_break: u64,
    /// The UDP socket, kept for the probes.
    udp: Option<UdpSocket>,
}

/// Runs a blast and accounts for it.
pub fn run(opts: &BlastOptions) -> Result<Report, BlastError> {
    if opts.transport == Transport::Import {
        return Err(BlastError::NotASender(opts.transport));
    }
    if opts.framing == Framing::Auto {
        return Err(BlastError::AutoFraming);
    }
    let agent = http_agent();
    let before = match &opts.metrics {
        Some(url) => Some(scrape(&agent, url)?),
        None => None,
    };
    let connections = opts.connections.max(1);
    let count = match (opts.count, opts.duration) {
        (None, None) => Some(1_000_000),
        (c, _) => c,
    };
    // A chunk is the unit of work and of pacing: about a millisecond of events at the target
    // rate, at most one write's worth; for HTTP exactly one batch (`--batch` events per POST,
    // whatever the rate). Chunk j goes to thread j mod connections.
    let max_chunk = match opts.transport {
        Transport::Udp => UDP_BATCH,
        _ => opts.batch.max(1),
    } as u64;
    let chunk = if opts.rate == 0 || opts.transport == Transport::Http {
        max_chunk
    } else {
        (opts.rate / connections as u64 / 1000).clamp(1, max_chunk)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(connections);
    for k in 0..connections {
        let opts = opts.clone();
        let stop = stop.clone();
        let failed = failed.clone();
        let rate_k = opts.rate as f64 / connections as f64;
        handles.push(std::thread::spawn(move || {
            let plan = Plan {
                k: k as u64,
                n: connections as u64,
                chunk,
                count,
                rate: rate_k,
                deadline: opts.duration.map(|d| started + d),
                stop: &stop,
            };
            let r = sender(&opts, &plan);
            if r.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
                stop.store(true, Ordering::Relaxed);
            }
            r
        }));
    }
    let mut results = Vec::with_capacity(connections);
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(BlastError::Thread);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(e) = first_err {
        return Err(e);
    }
    let mut report = Report {
        transport: opts.transport.as_str(),
        target: opts.target.to_string(),
        connections,
        rate_target: opts.rate,
        seconds,
        ..Report::default()
    };
    for r in &results {
        report.sent += r.sent;
        report.bytes += r.bytes;
        report.max_lag_seconds = report.max_lag_seconds.max(r.max_lag);
        report.http_refused_events += r.http_refused;
        report.http_retries += r.http_retries;
        for (k, v) in &r.http_retry_causes {
            *report.http_retry_causes.entry(k).or_default() += v;
        }
        report.tcp_reconnects += r.tcp_reconnects;
        report.tcp_broken += r.tcp_broken;
        report.tcp_resent_lines += r.tcp_resent_lines;
        report.tcp_unacked_lines_at_break += r.tcp_unacked_lines_at_break;
    }
    if let (Some(url), Some(before)) = (&opts.metrics, before) {
        // TCP and HTTP deliver everything (or the sender saw an error), so their counters are
        // waited for until complete; lost datagrams never show up, so UDP waits for quiet.
        let udp = opts.transport == Transport::Udp;
        let expected = report.sent - report.http_refused_events;
        let mut after = settle(&agent, url, &before, opts, expected, udp)?;
        if opts.transport == Transport::Udp {
            // Bring the kernel-drop counts up to date (see the module doc): one empty datagram
            // per sending socket, again if one of them was itself dropped.
            for _round in 0..3 {
                for r in &results {
                    if let Some(s) = &r.udp {
                        if s.send(&[]).is_ok() {
                            report.probes_sent += 1;
                        }
                    }
                }
                after = settle(
                    &agent,
                    url,
                    &before,
                    opts,
                    expected + report.probes_sent,
                    true,
                )?;
                report.probes_seen = delta(
                    &before,
                    &after.0,
                    r#"pixeld_dropped_events_total{reason="empty"}"#,
                );
                if report.probes_seen >= report.probes_sent {
                    break;
                }
            }
        }
        report.pixeld = Some(account(&before, &after.0, after.1, &report, opts.transport));
    }
    Ok(report)
}

/// Which events a sender thread sends, and when.
struct Plan<'a> {
    /// This thread's number and the number of threads.
    k: u64,
    n: u64,
    chunk: u64,
    count: Option<u64>,
    /// This thread's events per second (0: unpaced).
    rate: f64,
    deadline: Option<Instant>,
    stop: &'a AtomicBool,
}

impl Plan<'_> {
    /// The index range of this thread's `nth` chunk, or None when done.
    fn chunk(&self, nth: u64) -> Option<std::ops::Range<u64>> {
        if self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let first = (nth * self.n + self.k).checked_mul(self.chunk)?;
        let end = first.checked_add(self.chunk)?;
        match self.count {
            Some(c) if first >= c => None,
            Some(c) => Some(first..end.min(c)),
            None => Some(first..end),
        }
    }

    /// Waits until `sent` events are due; returns how far behind schedule the thread is.
    fn pace(&self, started: Instant, sent: u64) -> f64 {
        if self.rate <= 0.0 {
            return 0.0;
        }
        let due = started + Duration::from_secs_f64(sent as f64 / self.rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
            0.0
        } else {
            (now - due).as_secs_f64()
        }
    }
}

fn sender(opts: &BlastOptions, plan: &Plan) -> Result<ThreadResult, BlastError> {
    let mut g = HitGenerator::with_config(opts.seed, opts.start_msec, opts.gen.clone());
    let mut res = ThreadResult::default();
    let started = Instant::now();
    match opts.transport {
        // Refused by `run` before any sender starts.
        Transport::Import => return Err(BlastError::NotASender(opts.transport)),
        Transport::Udp => {
            let bind: SocketAddr = if opts.target.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let sock = UdpSocket::bind(bind).map_err(|source| BlastError::Connect {
                addr: opts.target,
                source,
            })?;
            sock.connect(opts.target)
                .map_err(|source| BlastError::Connect {
                    addr: opts.target,
                    source,
                })?;
            let mut buf = Vec::with_capacity(UDP_BATCH * 512);
            let mut ends = Vec::with_capacity(UDP_BATCH);
            let mut nth = 0;
            while let Some(range) = plan.chunk(nth) {
                nth += 1;
                res.max_lag = res.max_lag.max(plan.pace(started, res.sent));
                buf.clear();
                ends.clear();
                let n = range.end - range.start;
                for i in range {
                    g.append_line(i, &mut buf);
                    ends.push(buf.len());
                }
                send_datagrams(&sock, opts.target, &buf, &ends)?;
                res.sent += n;
                res.bytes += buf.len() as u64;
            }
            res.udp = Some(sock);
        }
        Transport::Tcp => {
            let mut conn = TcpConn::connect(opts.target)?;
            let mut buf = Vec::with_capacity(opts.batch.max(1) * 320);
            let mut line = Vec::with_capacity(512);
            let mut nth = 0;
            while let Some(range) = plan.chunk(nth) {
                nth += 1;
                res.max_lag = res.max_lag.max(plan.pace(started, res.sent));
                buf.clear();
                let n = range.end - range.start;
                for i in range {
                    match opts.framing {
                        // `Auto` is refused by `run`: a sender picks one framing.
                        Framing::Line | Framing::Auto => {
                            g.append_line(i, &mut buf);
                            buf.push(b'\n');
                        }
                        Framing::Octet => {
                            line.clear();
                            g.append_line(i, &mut line);
                            let _ = write!(buf, "{} ", line.len());
                            buf.extend_from_slice(&line);
                        }
                    }
                }
                conn.send(opts.target, &buf, n, &mut res)?;
                res.sent += n;
                res.bytes += buf.len() as u64;
            }
            // Everything written reaches pixeld before the FIN; nothing is read back, so the
            // close never turns into a reset that would discard unsent data.
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        }
        Transport::Http => {
            let agent = http_agent();
            let url = format!("http://{}/v1/events", opts.target);
            // Keys unique to this run: another blast never meets them.
            let run: u64 = rand::random();
            let mut body = Vec::with_capacity(opts.batch.max(1) * 320);
            let mut nth = 0;
            while let Some(range) = plan.chunk(nth) {
                nth += 1;
                res.max_lag = res.max_lag.max(plan.pace(started, res.sent));
                body.clear();
                let n = range.end - range.start;
                for i in range {
                    g.append_line(i, &mut body);
                    body.push(b'\n');
                }
                let len = body.len() as u64;
                // Each batch carries its own Idempotency-Key, so that a retry after a 503, a
                // 409, a timeout or a broken connection is stored once (pixeld stores only what
                // the first attempt had not).
                let key = format!("blast-{run:016x}-{}-{nth}", plan.k);
                // Without a key, a 503 that says a prefix was stored is answered by sending
                // only the rest (`skip` lines of the body are stored).
                let mut skip = 0usize;
                let first_try = Instant::now();
                let mut attempt = 0u32;
                loop {
                    attempt += 1;
                    let mut post = agent
                        .post(&url)
                        .header("content-type", "application/x-ndjson");
                    if opts.idempotency_keys {
                        post = post.header("idempotency-key", &key);
                    }
                    let sent = post.send(after_lines(&body, skip));
                    let retry = match sent {
                        Ok(mut resp) => {
                            let status = resp.status().as_u16();
                            let text = resp.body_mut().read_to_string().unwrap_or_default();
                            match status {
                                200 => break,
                                503 | 409 => {
                                    let stored = stored_lines(&text);
                                    if !opts.idempotency_keys {
                                        skip += stored;
                                    }
                                    if first_try.elapsed() >= RETRY_FOR {
                                        res.http_refused += n;
                                        break;
                                    }
                                    match (status, stored) {
                                        (409, _) => "409",
                                        (_, 0) => "503",
                                        _ => "503_partial",
                                    }
                                }
                                _ => {
                                    return Err(BlastError::HttpStatus {
                                        url,
                                        status,
                                        body: format!(
                                            "{} (a batch of {n} events, {len} bytes; see --batch)",
                                            text.trim()
                                        ),
                                    })
                                }
                            }
                        }
                        Err(e) if first_try.elapsed() < RETRY_FOR => http_failure(&e),
                        Err(e) => {
                            return Err(BlastError::Http {
                                url: url.clone(),
                                reason: format!(
                                    "{e} (after {attempt} attempts in {} s)",
                                    first_try.elapsed().as_secs()
                                ),
                            })
                        }
                    };
                    res.http_retries += 1;
                    *res.http_retry_causes.entry(retry).or_default() += 1;
                    std::thread::sleep(backoff(attempt));
                }
                res.sent += n;
                res.bytes += len;
            }
        }
    }
    Ok(res)
}

/// Sends one datagram per `buf[ends[i-1]..ends[i]]` with as few `sendmmsg` calls as the kernel
/// allows.
fn send_datagrams(
    sock: &UdpSocket,
    addr: SocketAddr,
    buf: &[u8],
    ends: &[usize],
) -> Result<(), BlastError> {
    let mut done = 0;
    let mut refused = 0u32;
    while done < ends.len() {
        match sendmmsg(sock, buf, ends, done) {
            Ok(n) => {
                done += n;
                refused = 0;
            }
            // A connected UDP socket reports an earlier ICMP "port unreachable" on a later
            // send; nothing of this call was sent. Persistent refusals mean no receiver.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                refused += 1;
                if refused >= 100 {
                    return Err(BlastError::UdpRefused {
                        addr,
                        tries: refused,
                    });
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) || e.raw_os_error() == Some(libc::ENOBUFS) =>
            {
                std::thread::yield_now();
            }
            Err(source) => return Err(BlastError::Send { addr, source }),
        }
    }
    Ok(())
}

/// One `sendmmsg` call for datagrams `from..` (at most [`UDP_BATCH`]); returns how many the
/// kernel took. Datagram `i` is `buf[ends[i-1]..ends[i]]` (from 0 for the first).
#[allow(unsafe_code)]
fn sendmmsg(sock: &UdpSocket, buf: &[u8], ends: &[usize], from: usize) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(UDP_BATCH);
    let mut start = if from == 0 {
        0
    } else {
        ends.get(from - 1).copied().unwrap_or(buf.len())
    };
    for &end in ends.iter().skip(from).take(UDP_BATCH) {
        let d = buf.get(start..end).unwrap_or_default();
        iovs.push(libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        });
        start = end;
    }
    let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(iovs.len());
    for iov in iovs.iter_mut() {
        // SAFETY: mmsghdr is a plain C struct; all-zero is a valid value (no address: the
        // socket is connected), filled in below.
        let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
        hdrs.push(h);
    }
    // SAFETY: every header points at one iovec in `iovs`, and every iovec at bytes of `buf`;
    // both outlive the call and are not moved during it. The kernel only reads the datagram
    // bytes (the `*mut` in iovec is C's lack of const) and writes `msg_len` into `hdrs`.
    let n = unsafe {
        libc::sendmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr(),
            hdrs.len() as libc::c_uint,
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// How long an HTTP batch is retried (503, 409, a refused or broken connection), and how long
/// a TCP sender tries to connect again, before giving up: long enough for a pixeld to be
/// restarted (`Restart=on-failure`) and recover.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// The wait before retry number `attempt` (1, 2, …): 25 ms doubling up to 1 s. (pixeld's
/// `Retry-After: 1` is a hint for clients at large; a load generator retries sooner.)
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(25u64 << attempt.saturating_sub(1).min(6)).min(Duration::from_secs(1))
}

/// The cause of a failed `POST` as the report counts it.
fn http_failure(e: &ureq::Error) -> &'static str {
    match e {
        ureq::Error::Timeout(_) => "timeout",
        ureq::Error::ConnectionFailed => "refused",
        ureq::Error::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused => "refused",
        _ => "broken",
    }
}

/// `body` without its first `skip` lines.
fn after_lines(body: &[u8], skip: usize) -> &[u8] {
    let mut at = 0;
    for _ in 0..skip {
        match memchr::memchr(b'\n', &body[at..]) {
            Some(i) => at += i + 1,
            None => return &[],
        }
    }
    &body[at..]
}

/// The `stored` count of a 503's JSON answer (0 when absent).
fn stored_lines(answer: &str) -> usize {
    serde_json::from_str::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| v.get("stored")?.as_u64())
        .unwrap_or(0) as usize
}

/// A TCP sender's connection, replaced when pixeld closes it or it breaks (a relay's
/// behaviour: rsyslog's `omfwd` peeks for the server's FIN before each send and reconnects).
struct TcpConn {
    stream: TcpStream,
    /// Bytes and lines of the most recent writes (newest last), to tell how many lines the
    /// unacknowledged bytes of a broken connection held.
    recent: std::collections::VecDeque<(u64, u64)>,
    recent_bytes: u64,
    /// `SIOCOUTQ` after the last write: bytes the peer's kernel had not acknowledged.
    unacked: u64,
}

impl TcpConn {
    fn connect(addr: SocketAddr) -> Result<TcpConn, BlastError> {
        let first = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match TcpStream::connect(addr) {
                Ok(stream) => {
                    return Ok(TcpConn {
                        stream,
                        recent: Default::default(),
                        recent_bytes: 0,
                        unacked: 0,
                    })
                }
                Err(_) if first.elapsed() < RETRY_FOR => std::thread::sleep(backoff(attempt)),
                Err(source) => return Err(BlastError::Connect { addr, source }),
            }
        }
    }

    /// Writes `buf` (`lines` lines), on a new connection when pixeld closed this one or it
    /// breaks; counts what that cost in `res`.
    fn send(
        &mut self,
        addr: SocketAddr,
        buf: &[u8],
        lines: u64,
        res: &mut ThreadResult,
    ) -> Result<(), BlastError> {
        loop {
            match peer_state(&self.stream) {
                Peer::Open => {}
                Peer::Closed => {
                    // pixeld reads until we close: everything written so far is taken.
                    let _ = self.stream.shutdown(std::net::Shutdown::Write);
                    res.tcp_reconnects += 1;
                    *self = TcpConn::connect(addr)?;
                    continue;
                }
                Peer::Broken => {
                    self.broken(res);
                    *self = TcpConn::connect(addr)?;
                    continue;
                }
            }
            match self.stream.write_all(buf) {
                Ok(()) => {
                    self.unacked = outq(&self.stream);
                    self.recent.push_back((buf.len() as u64, lines));
                    self.recent_bytes += buf.len() as u64;
                    // Enough recent writes to cover any send queue (a few MiB).
                    while self.recent_bytes > (16 << 20) {
                        match self.recent.pop_front() {
                            Some((b, _)) => self.recent_bytes -= b,
                            None => break,
                        }
                    }
                    return Ok(());
                }
                Err(source) if is_broken(&source) => {
                    self.broken(res);
                    res.tcp_resent_lines += lines;
                    *self = TcpConn::connect(addr)?;
                }
                Err(source) => return Err(BlastError::Send { addr, source }),
            }
        }
    }

    /// Counts a broken connection and the lines its unacknowledged bytes held.
    fn broken(&mut self, res: &mut ThreadResult) {
        res.tcp_broken += 1;
        let mut left = self.unacked;
        for (bytes, lines) in self.recent.iter().rev() {
            if left == 0 {
                break;
            }
            let part = left.min(*bytes);
            // Lines touched by the last `unacked` bytes (rounded up).
            res.tcp_unacked_lines_at_break += (part * lines).div_ceil((*bytes).max(1));
            left -= part;
        }
    }
}

fn is_broken(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
    )
}

enum Peer {
    Open,
    /// The server sent its FIN.
    Closed,
    /// The connection was reset.
    Broken,
}

/// What a non-blocking one-byte `MSG_PEEK` says of the connection (rsyslog's
/// `CheckConnection`): nothing to read is an open connection, EOF a closed one.
fn peer_state(s: &TcpStream) -> Peer {
    let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(s).recv_with_flags(&mut b, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        Ok(0) => Peer::Closed,
        // pixeld never writes on its TCP port; a byte would be someone else's business.
        Ok(_) => Peer::Open,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Peer::Open
        }
        Err(_) => Peer::Broken,
    }
}

/// Bytes in the socket's send queue not yet acknowledged by the peer (`SIOCOUTQ`); 0 when the
/// kernel does not say.
#[allow(unsafe_code)]
fn outq(s: &TcpStream) -> u64 {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: the descriptor is the open socket `s` borrows; SIOCOUTQ (TIOCOUTQ) writes one
    // c_int through the pointer, which points at `n`, alive for the call.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if rc == 0 {
        n.max(0) as u64
    } else {
        0
    }
}

/// A small HTTP client for `/metrics` and `POST /v1/events`: no TLS, answers of any status
/// returned as answers, a bounded wait.
fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Prometheus text as series → value (`name{labels}` as written).
type Scrape = BTreeMap<String, f64>;

fn scrape(agent: &ureq::Agent, url: &str) -> Result<Scrape, BlastError> {
    let err = |reason: String| BlastError::Metrics {
        url: url.to_owned(),
        reason,
    };
    let mut resp = agent.get(url).call().map_err(|e| err(e.to_string()))?;
    if resp.status() != 200 {
        return Err(err(format!("HTTP {}", resp.status())));
    }
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| err(e.to_string()))?;
    let mut m = Scrape::new();
    for l in text.lines() {
        if l.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = l.rsplit_once(' ') {
            if let Ok(v) = v.parse::<f64>() {
                m.insert(k.to_owned(), v);
            }
        }
    }
    if !m.contains_key("pixeld_appended_events_total") {
        return Err(err(
            "not pixeld's metrics (no pixeld_appended_events_total)".into(),
        ));
    }
    Ok(m)
}

fn delta(before: &Scrape, after: &Scrape, series: &str) -> u64 {
    let a = after.get(series).copied().unwrap_or(0.0);
    let b = before.get(series).copied().unwrap_or(0.0);
    (a - b).max(0.0) as u64
}

/// The counters the accounting reads, as deltas since `before`.
fn tracked(before: &Scrape, after: &Scrape) -> Vec<u64> {
    after
        .keys()
        .filter(|k| {
            k.starts_with("pixeld_received_events_total")
                || k.starts_with("pixeld_dropped_events_total")
                || *k == "pixeld_appended_events_total"
                || *k == "pixeld_udp_kernel_drops_total"
        })
        .map(|k| delta(before, after, k))
        .collect()
}

/// Polls `/metrics` until the counters have taken in the `expected` datagrams or events (as
/// received or kernel-dropped) and stopped moving — or, when `quiet_is_enough`, have not
/// moved for 2 s — or `settle_timeout` passes. Returns the last scrape and whether it settled.
fn settle(
    agent: &ureq::Agent,
    url: &str,
    before: &Scrape,
    opts: &BlastOptions,
    expected: u64,
    quiet_is_enough: bool,
) -> Result<(Scrape, bool), BlastError> {
    let deadline = Instant::now() + opts.settle_timeout;
    let mut last = scrape(agent, url)?;
    let mut still = 0;
    let mut last_change = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = scrape(agent, url)?;
        if tracked(before, &now) == tracked(before, &last) {
            still += 1;
        } else {
            still = 0;
            last_change = Instant::now();
        }
        last = now;
        let received = delta(before, &last, &received_series(opts.transport))
            + delta(before, &last, "pixeld_udp_kernel_drops_total");
        // Complete and quiet for 150 ms; or, for UDP, quiet for 2 s (datagrams lost before
        // pixeld's socket never show up).
        let complete = received >= expected;
        if (complete && still >= 3)
            || (quiet_is_enough && last_change.elapsed() >= Duration::from_secs(2))
        {
            return Ok((last, true));
        }
        if Instant::now() >= deadline {
            return Ok((last, false));
        }
    }
}

fn received_series(t: Transport) -> String {
    format!(
        r#"pixeld_received_events_total{{transport="{}"}}"#,
        t.as_str()
    )
}

fn account(
    before: &Scrape,
    after: &Scrape,
    settled: bool,
    report: &Report,
    transport: Transport,
) -> PixeldCounts {
    let mut dropped = BTreeMap::new();
    for k in after.keys() {
        if let Some(reason) = k
            .strip_prefix(r#"pixeld_dropped_events_total{reason=""#)
            .and_then(|r| r.strip_suffix(r#""}"#))
        {
            let mut d = delta(before, after, k);
            if reason == "empty" {
                d = d.saturating_sub(report.probes_seen);
            }
            if d > 0 {
                dropped.insert(reason.to_owned(), d);
            }
        }
    }
    let lost_probes = report.probes_sent.saturating_sub(report.probes_seen);
    let kernel = delta(before, after, "pixeld_udp_kernel_drops_total").saturating_sub(lost_probes);
    let appended = delta(before, after, "pixeld_appended_events_total");
    let received =
        delta(before, after, &received_series(transport)).saturating_sub(report.probes_seen);
    let counted = appended + dropped.values().sum::<u64>() + kernel;
    PixeldCounts {
        received,
        appended,
        dropped,
        kernel_udp_drops: kernel,
        unaccounted: report.sent as i64 - counted as i64,
        settled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_partition_the_indices() {
        let stop = AtomicBool::new(false);
        let mut seen = Vec::new();
        for k in 0..3 {
            let plan = Plan {
                k,
                n: 3,
                chunk: 7,
                count: Some(100),
                rate: 0.0,
                deadline: None,
                stop: &stop,
            };
            let mut nth = 0;
            while let Some(r) = plan.chunk(nth) {
                seen.extend(r);
                nth += 1;
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn retries_back_off_and_resend_the_rest() {
        assert_eq!(backoff(1), Duration::from_millis(25));
        assert_eq!(backoff(2), Duration::from_millis(50));
        assert_eq!(backoff(6), Duration::from_millis(800));
        assert_eq!(backoff(7), Duration::from_secs(1));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(1));
        let body = b"a\nbb\nccc\n";
        assert_eq!(after_lines(body, 0), body);
        assert_eq!(after_lines(body, 1), b"bb\nccc\n");
        assert_eq!(after_lines(body, 3), b"");
        assert_eq!(after_lines(body, 9), b"");
        assert_eq!(stored_lines(r#"{"error":"x","stored":2,"lines":3}"#), 2);
        assert_eq!(stored_lines(r#"{"error":"x"}"#), 0);
        assert_eq!(stored_lines("not json"), 0);
    }

    #[test]
    fn accounting_subtracts_probes() {
        let before: Scrape = [
            ("pixeld_appended_events_total".to_owned(), 10.0),
            (
                r#"pixeld_dropped_events_total{reason="empty"}"#.to_owned(),
                1.0,
            ),
        ]
        .into_iter()
        .collect();
        let after: Scrape = [
            ("pixeld_appended_events_total".to_owned(), 100.0),
            (
                r#"pixeld_received_events_total{transport="udp"}"#.to_owned(),
                92.0,
            ),
            (
                r#"pixeld_dropped_events_total{reason="empty"}"#.to_owned(),
                3.0,
            ),
            (
                r#"pixeld_dropped_events_total{reason="oversize"}"#.to_owned(),
                0.0,
            ),
            ("pixeld_udp_kernel_drops_total".to_owned(), 6.0),
        ]
        .into_iter()
        .collect();
        let report = Report {
            sent: 96,
            probes_sent: 3,
            probes_seen: 2,
            ..Report::default()
        };
        let p = account(&before, &after, true, &report, Transport::Udp);
        assert_eq!(p.appended, 90);
        assert_eq!(p.received, 90);
        assert!(p.dropped.is_empty());
        assert_eq!(p.kernel_udp_drops, 5);
        assert_eq!(p.unaccounted, 1);
    }
}
