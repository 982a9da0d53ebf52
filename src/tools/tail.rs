//! `pixeld tail`: follows every shard's log of a running pixeld over its HTTP log API and
//! prints records as they become durable; as a named consumer it commits its offsets and a
//! restart continues where it stopped.
//!
//! A plain blocking client (ureq), not part of the server: one thread per shard long-polls
//! `GET /v1/log` (`wait_ms`), so shards advance independently, each in offset order. Delivery
//! is at-least-once: a shard's offset is committed only after the records before it were
//! written and flushed to stdout, every `commit_every` records and at exit (Ctrl-C, SIGTERM,
//! a closed stdout); after a crash the records since the last commit are printed again.
//! Records deleted by retention before they were read (416) are reported on stderr with the
//! range lost, then reading continues at the first retained offset — never silently. A
//! server that goes away is retried every second, reported once per outage.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

/// Where to start on a shard the consumer has no committed offset for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailStart {
    /// The same offset on every followed shard.
    Offset(u64),
    /// The first record received at or after this time (RFC 3339, epoch seconds, or -15m).
    Time(String),
    /// Only records that become durable from now on.
    End,
    /// The first retained record.
    Beginning,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailFormat {
    /// The record's bytes and a LF (bytes that are not UTF-8 are written as they are).
    Raw,
    /// The API's NDJSON lines (`line_b64` for bytes that are not UTF-8).
    Ndjson,
}

#[derive(Debug, Clone)]
pub struct TailOptions {
    /// e.g. `http://127.0.0.1:5580`.
    pub base_url: String,
    pub consumer: Option<String>,
    pub start: TailStart,
    pub format: TailFormat,
    /// Commit a shard's offset after this many records printed from it.
    pub commit_every: u64,
    /// Only these shards (None: every shard).
    pub shards: Option<Vec<usize>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(
        "cannot reach pixeld at {url}: {reason} (is `pixeld serve` running there? see --http)"
    )]
    Connect { url: String, reason: String },
    #[error("{url}: HTTP {status}: {body}")]
    Http {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{0}")]
    Usage(String),
}

/// How long one long poll waits on the server: short enough that Ctrl-C ends `tail` within
/// about a second.
const WAIT_MS: u64 = 1000;
const RETRY: Duration = Duration::from_secs(1);
/// A response is at most 8 MiB (`max_bytes` cap); leave room.
const BODY_LIMIT: u64 = 16 << 20;

struct Client {
    agent: ureq::Agent,
    base: String,
}

/// A response: status, `X-Next-Offset`, body.
type Answer = (u16, Option<u64>, Vec<u8>);

impl Client {
    fn new(base: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(WAIT_MS / 1000 + 30)))
            .build()
            .into();
        Client {
            agent,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    fn send(&self, method: &str, path: &str, body: Option<String>) -> Result<Answer, TailError> {
        let url = format!("{}{path}", self.base);
        let result = match (method, body) {
            ("PUT", Some(b)) => self
                .agent
                .put(&url)
                .header("content-type", "application/json")
                .send(b),
            _ => self.agent.get(&url).call(),
        };
        let mut resp = result.map_err(|e| TailError::Connect {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let next = resp
            .headers()
            .get("x-next-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = resp
            .body_mut()
            .with_config()
            .limit(BODY_LIMIT)
            .read_to_vec()
            .map_err(|e| TailError::Connect {
                url,
                reason: e.to_string(),
            })?;
        Ok((status, next, body))
    }

    /// A GET that must answer 200 with JSON.
    fn json(&self, path: &str) -> Result<(u16, Value), TailError> {
        let (status, _, body) = self.send("GET", path, None)?;
        let v = serde_json::from_slice(&body).map_err(|e| TailError::Http {
            url: format!("{}{path}", self.base),
            status,
            body: format!("not JSON ({e})"),
        })?;
        Ok((status, v))
    }

    fn http_error(&self, path: &str, status: u16, body: &[u8]) -> TailError {
        TailError::Http {
            url: format!("{}{path}", self.base),
            status,
            body: String::from_utf8_lossy(body).trim().to_string(),
        }
    }

    fn commit(&self, consumer: &str, shard: usize, offset: u64) -> Result<(), TailError> {
        let path = format!("/v1/consumers/{consumer}/offsets");
        let body = format!("{{\"shard\":{shard},\"offset\":{offset}}}");
        let (status, _, b) = self.send("PUT", &path, Some(body))?;
        if status != 200 {
            return Err(self.http_error(&path, status, &b));
        }
        Ok(())
    }
}

/// What one shard's follower starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    Offset(u64),
    Time(String),
}

/// Follows the log until `stop` is set (or stdout closes); returns the records printed.
pub fn tail(opts: &TailOptions, stop: Arc<AtomicBool>) -> Result<u64, TailError> {
    if let Some(name) = &opts.consumer {
        crate::consumers::validate_name(name).map_err(|e| TailError::Usage(e.to_string()))?;
    }
    if opts.commit_every == 0 {
        return Err(TailError::Usage("--commit-every must be at least 1".into()));
    }
    let client = Client::new(&opts.base_url);
    let (status, shards) = client.json("/v1/log/shards")?;
    if status != 200 {
        return Err(client.http_error("/v1/log/shards", status, shards.to_string().as_bytes()));
    }
    let shards: Vec<(usize, u64, u64)> = shards["shards"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    Some((
                        s["shard"].as_u64()? as usize,
                        s["first_offset"].as_u64()?,
                        s["next_offset"].as_u64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut committed: HashMap<usize, u64> = HashMap::new();
    if let Some(name) = &opts.consumer {
        let path = format!("/v1/consumers/{name}");
        let (status, c) = client.json(&path)?;
        match status {
            200 => {
                for s in c["shards"].as_array().into_iter().flatten() {
                    if let (Some(shard), Some(o)) =
                        (s["shard"].as_u64(), s["committed_offset"].as_u64())
                    {
                        committed.insert(shard as usize, o);
                    }
                }
            }
            404 => {}
            _ => return Err(client.http_error(&path, status, c.to_string().as_bytes())),
        }
    }
    let selected: Vec<(usize, u64, u64)> = match &opts.shards {
        None => shards,
        Some(want) => {
            if let Some(bad) = want.iter().find(|w| !shards.iter().any(|s| s.0 == **w)) {
                return Err(TailError::Usage(format!(
                    "--shard {bad}: pixeld has shards 0..{}",
                    shards.len()
                )));
            }
            shards.into_iter().filter(|s| want.contains(&s.0)).collect()
        }
    };
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let client = Arc::new(client);
    let mut threads = Vec::new();
    for (shard, first, next) in selected {
        let pos = match (committed.get(&shard), &opts.start) {
            (Some(&o), _) => Position::Offset(o),
            (None, TailStart::Offset(o)) => Position::Offset(*o),
            (None, TailStart::Time(t)) => Position::Time(t.clone()),
            (None, TailStart::End) => Position::Offset(next),
            (None, TailStart::Beginning) => Position::Offset(first),
        };
        let f = Follower {
            shard,
            client: client.clone(),
            out: out.clone(),
            stop: stop.clone(),
            consumer: opts.consumer.clone(),
            format: opts.format,
            commit_every: opts.commit_every,
        };
        threads.push(std::thread::spawn(move || f.run(pos)));
    }
    let mut total = 0;
    let mut first_error = None;
    for t in threads {
        match t.join() {
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) => {
                stop.store(true, Ordering::Relaxed);
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(TailError::Usage("a follower thread panicked".into()));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

struct Follower {
    shard: usize,
    client: Arc<Client>,
    out: Arc<Mutex<std::io::Stdout>>,
    stop: Arc<AtomicBool>,
    consumer: Option<String>,
    format: TailFormat,
    commit_every: u64,
}

impl Follower {
    /// Follows one shard until `stop`; commits what was printed at the end.
    fn run(&self, mut pos: Position) -> Result<u64, TailError> {
        let shard = self.shard;
        let mut printed = 0u64;
        let mut since_commit = 0u64;
        // The next offset to read, once known (after the first answer of a time start).
        let mut next: Option<u64> = match pos {
            Position::Offset(o) => Some(o),
            Position::Time(_) => None,
        };
        let mut down = false;
        let result = loop {
            if self.stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            let path = match &pos {
                Position::Offset(o) => {
                    format!("/v1/log?shard={shard}&offset={o}&wait_ms={WAIT_MS}")
                }
                Position::Time(t) => {
                    let t: String = form_urlencoded::byte_serialize(t.as_bytes()).collect();
                    format!("/v1/log?shard={shard}&time={t}&wait_ms={WAIT_MS}")
                }
            };
            let (status, next_hdr, body) = match self.client.send("GET", &path, None) {
                Ok(a) => a,
                Err(e) => {
                    if !down {
                        eprintln!("pixeld tail: shard {shard}: {e}; retrying every second");
                        down = true;
                    }
                    std::thread::sleep(RETRY);
                    continue;
                }
            };
            if down {
                eprintln!("pixeld tail: shard {shard}: reconnected");
                down = false;
            }
            match status {
                200 => {
                    let Some(n) = next_hdr else {
                        break Err(self.client.http_error(&path, status, b"no X-Next-Offset"));
                    };
                    let count = match self.print(&body) {
                        Ok(c) => c,
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                            break Err(self.client.http_error(
                                &path,
                                status,
                                e.to_string().as_bytes(),
                            ));
                        }
                        // stdout closed (`| head`): stop everything, commit what was printed.
                        Err(_) => {
                            self.stop.store(true, Ordering::Relaxed);
                            break Ok(());
                        }
                    };
                    printed += count;
                    since_commit += count;
                    next = Some(n);
                    pos = Position::Offset(n);
                    if since_commit >= self.commit_every {
                        if let Some(c) = &self.consumer {
                            self.client.commit(c, shard, n)?;
                        }
                        since_commit = 0;
                    }
                }
                416 => {
                    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let (Some(first), Some(end)) =
                        (v["first_offset"].as_u64(), v["next_offset"].as_u64())
                    else {
                        break Err(self.client.http_error(&path, status, &body));
                    };
                    let at = next.unwrap_or(0);
                    let resume = if at < first { first } else { end };
                    eprintln!(
                        "pixeld tail: shard {shard}: offsets {}..{} are no longer in the log ({}); continuing at {resume}",
                        at.min(resume),
                        at.max(resume),
                        v["error"].as_str().unwrap_or("out of range")
                    );
                    next = Some(resume);
                    pos = Position::Offset(resume);
                    since_commit = self.commit_every; // record the jump at the next commit
                }
                s if s >= 500 => {
                    eprintln!(
                        "pixeld tail: shard {shard}: {}; retrying in a second",
                        self.client.http_error(&path, status, &body)
                    );
                    std::thread::sleep(RETRY);
                }
                _ => break Err(self.client.http_error(&path, status, &body)),
            }
        };
        // The final commit: everything printed so far.
        if let (Some(c), Some(n), true) = (&self.consumer, next, since_commit > 0) {
            if let Err(e) = self.client.commit(c, shard, n) {
                eprintln!("pixeld tail: shard {shard}: final commit of offset {n} failed: {e}");
            }
        }
        result.map(|()| printed)
    }

    /// Writes a response's records to stdout in one piece and flushes; returns how many.
    fn print(&self, body: &[u8]) -> std::io::Result<u64> {
        let mut buf = Vec::with_capacity(body.len());
        let mut n = 0;
        for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            n += 1;
            match self.format {
                TailFormat::Ndjson => {
                    buf.extend_from_slice(line);
                    buf.push(b'\n');
                }
                TailFormat::Raw => {
                    let invalid =
                        |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
                    let v: Value =
                        serde_json::from_slice(line).map_err(|e| invalid(e.to_string()))?;
                    if let Some(s) = v["line"].as_str() {
                        buf.extend_from_slice(s.as_bytes());
                    } else if let Some(b) = v["line_b64"].as_str() {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .map_err(|e| invalid(e.to_string()))?;
                        buf.extend_from_slice(&bytes);
                    }
                    buf.push(b'\n');
                }
            }
        }
        if n > 0 {
            let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
            out.write_all(&buf)?;
            out.flush()?;
        }
        Ok(n)
    }
}
