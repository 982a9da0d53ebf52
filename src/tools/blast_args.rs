//! `pixeld blast` from the command line: its options (clap) and their validation into a
//! [`BlastOptions`] run or a `--out` file of lines. `main.rs` only prints what comes back and
//! picks the exit code; every refusal here names the option and what it takes.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{ConfigError, RawConfig};
use crate::ingest::framing::Framing;
use crate::tools::blast::{self, BlastError, BlastOptions, Report};
use crate::tools::gen::{GenConfig, Header};
use crate::transport::Transport;

/// `pixeld blast`'s options, as clap reads them.
#[derive(Debug, clap::Args)]
pub struct BlastArgs {
    /// Config whose `listen` addresses are the default targets (else the embedded defaults).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    pub transport: Transport,
    /// Where hits go (default: the config's listen address of the transport).
    #[arg(long)]
    pub target: Option<String>,
    /// pixeld's HTTP address: the target of `--transport http` and where `/metrics` is read.
    #[arg(long)]
    pub http: Option<String>,
    /// Full URL of pixeld's metrics (default: http://<--http>/metrics).
    #[arg(long, conflicts_with = "no_metrics")]
    pub metrics: Option<String>,
    /// Do not read pixeld's counters (when sending to another receiver).
    #[arg(long)]
    pub no_metrics: bool,
    /// Events per second over all connections, open loop; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Events to send (default 1000000 unless --duration is given).
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long (e.g. 30s, 5m).
    #[arg(long)]
    pub duration: Option<humantime::Duration>,
    /// Parallel connections (UDP: sockets), one thread each.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// TCP framing.
    #[arg(long, value_enum, default_value_t = Framing::Line)]
    pub framing: Framing,
    /// Events per TCP write or per HTTP POST.
    #[arg(long)]
    pub batch: Option<usize>,
    /// HTTP: send batches without an `Idempotency-Key` (a retry may then store a batch twice;
    /// for measuring the plain path).
    #[arg(long)]
    pub no_idempotency_keys: bool,
    /// nginx's syslog header in front of each line (default: syslog for udp/tcp, none for
    /// http and --out).
    #[arg(long, value_enum)]
    pub header: Option<Header>,
    /// Same seed, same lines.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Event time of the first line: RFC 3339 or epoch milliseconds (default: so that events
    /// are stamped near now).
    #[arg(long)]
    pub start: Option<String>,
    /// Events per second of event time (default: --rate, else 100000).
    #[arg(long)]
    pub event_rate: Option<f64>,
    /// Distinct sites.
    #[arg(long, default_value_t = 6)]
    pub sites: usize,
    /// Distinct pages per site.
    #[arg(long, default_value_t = 5000)]
    pub urls: u64,
    /// Distinct visitors.
    #[arg(long, default_value_t = 200_000)]
    pub visitors: u64,
    /// Share of heartbeats.
    #[arg(long, default_value_t = 0.25)]
    pub heartbeats: f64,
    /// Share of late events (stamped 1 minute to --late-max early).
    #[arg(long, default_value_t = 0.0)]
    pub late: f64,
    /// Share of the other events sent as custom events (downloads, outbound clicks, signups
    /// with a plan in their props) instead of pageviews.
    #[arg(long, default_value_t = 0.0)]
    pub custom_events: f64,
    #[arg(long, default_value = "1h")]
    pub late_max: humantime::Duration,
    /// Write the lines to FILE ("-": stdout) instead of sending them.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for pixeld's counters to take in what was sent.
    #[arg(long, default_value = "30s")]
    pub settle_timeout: humantime::Duration,
}

/// Why `pixeld blast` could not start, or failed.
#[derive(Debug, thiserror::Error)]
pub enum BlastArgsError {
    #[error(
        "--header syslog cannot be used with --transport http: POST /v1/events takes JSON lines"
    )]
    SyslogOverHttp,
    #[error("--connections must be at least 1")]
    NoConnections,
    #[error("{name} is a share between 0 and 1, not {value}")]
    Share { name: &'static str, value: f64 },
    #[error("--event-rate must be positive")]
    EventRate,
    #[error("{0:?} is not epoch milliseconds or an RFC 3339 time such as 2026-11-22T01:40:00Z")]
    Start(String),
    #[error("--out needs --count (how many lines to write)")]
    OutNeedsCount,
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{addr:?} is not a usable host:port address: {reason}")]
    Address { addr: String, reason: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Blast(#[from] BlastError),
}

/// What a `pixeld blast` did.
#[derive(Debug)]
pub enum Outcome {
    /// `--out`: the lines were written.
    Wrote {
        lines: u64,
        bytes: u64,
        seed: u64,
        start_msec: u64,
    },
    /// The hits were sent; the report says what pixeld took in.
    Sent(Box<Report>),
}

/// Validates `a`, then writes the lines (`--out`) or sends them.
pub fn run(a: BlastArgs) -> Result<Outcome, BlastArgsError> {
    let transport = a.transport;
    let header = match a.header {
        Some(Header::Syslog) if a.out.is_none() && transport == Transport::Http => {
            return Err(BlastArgsError::SyslogOverHttp)
        }
        Some(h) => h,
        None if a.out.is_some() || transport == Transport::Http => Header::None,
        None => Header::Syslog,
    };
    if a.connections == 0 {
        return Err(BlastArgsError::NoConnections);
    }
    for (name, value) in [
        ("--heartbeats", a.heartbeats),
        ("--late", a.late),
        ("--custom-events", a.custom_events),
    ] {
        if !(0.0..=1.0).contains(&value) {
            return Err(BlastArgsError::Share { name, value });
        }
    }
    let event_rate = a
        .event_rate
        .unwrap_or(if a.rate > 0 { a.rate as f64 } else { 100_000.0 });
    if !event_rate.is_finite() || event_rate <= 0.0 {
        return Err(BlastArgsError::EventRate);
    }
    let gen = GenConfig {
        sites: a.sites.max(1),
        urls_per_site: a.urls.max(1),
        visitors: a.visitors.max(1),
        heartbeat_share: a.heartbeats,
        late_share: a.late,
        event_share: a.custom_events,
        late_max_ms: a.late_max.as_millis() as u64,
        ms_per_event: 1000.0 / event_rate,
        header,
        ..GenConfig::default()
    };
    let count = match (a.count, a.duration) {
        (None, None) => Some(1_000_000),
        (c, _) => c,
    };
    let start_msec = match &a.start {
        Some(t) => match t.parse::<u64>() {
            Ok(ms) => ms,
            Err(_) => {
                crate::log::ndjson::parse_rfc3339(t)
                    .ok_or_else(|| BlastArgsError::Start(t.clone()))?
                    / 1_000_000
            }
        },
        None => {
            let now_ms = crate::sys::now_ns() / 1_000_000;
            let ahead = if a.rate > 0 { None } else { count };
            blast::default_start_msec(now_ms, ahead, gen.ms_per_event)
        }
    };
    if let Some(path) = &a.out {
        let n = a.count.ok_or(BlastArgsError::OutNeedsCount)?;
        let stdout = std::io::stdout();
        let mut w: Box<dyn Write> = if path.as_os_str() == "-" {
            Box::new(std::io::BufWriter::with_capacity(1 << 20, stdout.lock()))
        } else {
            let file = std::fs::File::create(path).map_err(|source| BlastArgsError::Create {
                path: path.clone(),
                source,
            })?;
            Box::new(std::io::BufWriter::with_capacity(1 << 20, file))
        };
        let bytes = blast::write_lines(a.seed, start_msec, &gen, n, &mut w).map_err(|source| {
            BlastArgsError::Write {
                path: path.clone(),
                source,
            }
        })?;
        return Ok(Outcome::Wrote {
            lines: n,
            bytes,
            seed: a.seed,
            start_msec,
        });
    }
    let (raw, _) = RawConfig::load(a.config.as_deref())?;
    let http = a.http.unwrap_or(raw.listen.http);
    let target = match (a.target, transport) {
        (Some(t), _) => t,
        (None, Transport::Udp) => raw.listen.udp,
        (None, Transport::Tcp) => raw.listen.tcp,
        (None, Transport::Http | Transport::Import) => http.clone(),
    };
    let metrics = match (a.no_metrics, a.metrics) {
        (true, _) => None,
        (false, Some(m)) => Some(m),
        (false, None) => Some(format!("http://{http}/metrics")),
    };
    let opts = BlastOptions {
        transport,
        target: resolve(&target)?,
        framing: a.framing,
        connections: a.connections,
        rate: a.rate,
        count,
        duration: a.duration.map(Into::into),
        seed: a.seed,
        start_msec,
        gen,
        batch: a.batch.unwrap_or(match transport {
            Transport::Http => 1000,
            _ => 1024,
        }),
        metrics,
        settle_timeout: a.settle_timeout.into(),
        idempotency_keys: !a.no_idempotency_keys,
    };
    Ok(Outcome::Sent(Box::new(blast::run(&opts)?)))
}

/// The first address `addr` (host:port) resolves to.
fn resolve(addr: &str) -> Result<SocketAddr, BlastArgsError> {
    use std::net::ToSocketAddrs;
    let bad = |reason: String| BlastArgsError::Address {
        addr: addr.to_string(),
        reason,
    };
    addr.to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("it resolves to no address".into()))
}
