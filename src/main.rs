//! The `pixeld` command line: parses arguments, loads the config, calls the library, and maps
//! errors to messages and exit codes. Nothing else lives here.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use pixeld::config::{Config, RawConfig, ShardCount};
use pixeld::log::reader::Start;
use pixeld::tools::replay::{ReplayFormat, ReplayOptions};

#[derive(Parser)]
#[command(
    name = "pixeld",
    version,
    about = "Single-box real-time web analytics: ingest, durable log, aggregates"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Config file (TOML); without it the embedded defaults are used.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance: start every shard, recover, serve until SIGTERM/SIGINT.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Number of shards (overrides `shards`).
        #[arg(long)]
        shards: Option<u64>,
        /// UDP syslog listener address (overrides `listen.udp`).
        #[arg(long)]
        udp: Option<String>,
        /// TCP listener address (overrides `listen.tcp`).
        #[arg(long)]
        tcp: Option<String>,
        /// HTTP listener address (overrides `listen.http`).
        #[arg(long)]
        http: Option<String>,
    },
    /// Check a config file and print the effective config; exit 1 naming the bad field.
    Validate {
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// Verify every batch of every segment; exit 1 if anything is corrupt.
    Check {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Stream records to stdout in offset order per shard.
    Replay {
        #[arg(long)]
        data_dir: PathBuf,
        /// Only this shard.
        #[arg(long)]
        shard: Option<usize>,
        /// Start at this offset (needs --shard).
        #[arg(long, conflicts_with = "from_time", requires = "shard")]
        from_offset: Option<u64>,
        /// Start at the first record received at or after this time (RFC 3339, e.g. 2026-11-22T01:40:00Z).
        #[arg(long)]
        from_time: Option<String>,
        /// Stop at the first record received after this time (RFC 3339).
        #[arg(long)]
        to_time: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Raw)]
        format: Format,
    },
    /// Append lines from files or stdin to one shard's log (offline; takes the data-dir lock).
    Import {
        #[command(flatten)]
        common: Common,
        /// The shard whose log receives the lines.
        #[arg(long, default_value_t = 0)]
        shard: usize,
        /// Override the fsync policy: interval, batch or never.
        #[arg(long)]
        fsync: Option<String>,
        /// Print `start N`, then `durable N` on stdout each time the durable offset advances.
        #[arg(long)]
        report_durable: bool,
        /// Files to import ("-" or none: stdin).
        inputs: Vec<PathBuf>,
    },
    /// Load generator: send realistic pixel hits to a running pixeld and account for each.
    /// Follow a running pixeld's log over HTTP, printing records as they become durable.
    Tail {
        /// Config file: its `listen.http` is where pixeld is asked (see --http).
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// pixeld's HTTP address (overrides the config's `listen.http`).
        #[arg(long)]
        http: Option<String>,
        /// Read as this named consumer: resume from its committed offsets, commit as it goes.
        #[arg(long)]
        consumer: Option<String>,
        /// Start at this offset on every followed shard (where the consumer has no commit).
        #[arg(long, conflicts_with_all = ["from_time", "from_end", "from_beginning"])]
        from_offset: Option<u64>,
        /// Start at the first record received at or after this time (RFC 3339, epoch seconds, -15m).
        #[arg(long, conflicts_with_all = ["from_end", "from_beginning"])]
        from_time: Option<String>,
        /// Start with the records that become durable from now on (the default).
        #[arg(long, conflicts_with = "from_beginning")]
        from_end: bool,
        /// Start at the first retained record.
        #[arg(long)]
        from_beginning: bool,
        /// Only this shard (repeatable; default: every shard).
        #[arg(long)]
        shard: Vec<usize>,
        /// Commit a shard's offset every N records printed from it (and at exit).
        #[arg(long, default_value_t = 1000)]
        commit_every: u64,
        #[arg(long, value_enum, default_value_t = Format::Raw)]
        format: Format,
    },
    Blast(Box<BlastArgs>),
}

#[derive(clap::Args)]
struct BlastArgs {
    /// Config whose `listen` addresses are the default targets (else the embedded defaults).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = BlastTransport::Udp)]
    transport: BlastTransport,
    /// Where hits go (default: the config's listen address of the transport).
    #[arg(long)]
    target: Option<String>,
    /// pixeld's HTTP address: the target of `--transport http` and where `/metrics` is read.
    #[arg(long)]
    http: Option<String>,
    /// Full URL of pixeld's metrics (default: http://<--http>/metrics).
    #[arg(long, conflicts_with = "no_metrics")]
    metrics: Option<String>,
    /// Do not read pixeld's counters (when sending to another receiver).
    #[arg(long)]
    no_metrics: bool,
    /// Events per second over all connections, open loop; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Events to send (default 1000000 unless --duration is given).
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long (e.g. 30s, 5m).
    #[arg(long)]
    duration: Option<humantime::Duration>,
    /// Parallel connections (UDP: sockets), one thread each.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// TCP framing.
    #[arg(long, value_enum, default_value_t = BlastFraming::Line)]
    framing: BlastFraming,
    /// Events per TCP write or per HTTP POST.
    #[arg(long)]
    batch: Option<usize>,
    /// nginx's syslog header in front of each line (default: syslog for udp/tcp, none for
    /// http and --out).
    #[arg(long, value_enum)]
    header: Option<BlastHeader>,
    /// Same seed, same lines.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Event time of the first line: RFC 3339 or epoch milliseconds (default: so that events
    /// are stamped near now).
    #[arg(long)]
    start: Option<String>,
    /// Events per second of event time (default: --rate, else 100000).
    #[arg(long)]
    event_rate: Option<f64>,
    /// Distinct sites.
    #[arg(long, default_value_t = 6)]
    sites: usize,
    /// Distinct pages per site.
    #[arg(long, default_value_t = 5000)]
    urls: u64,
    /// Distinct visitors.
    #[arg(long, default_value_t = 200_000)]
    visitors: u64,
    /// Share of heartbeats.
    #[arg(long, default_value_t = 0.25)]
    heartbeats: f64,
    /// Share of late events (stamped 1 minute to --late-max early).
    #[arg(long, default_value_t = 0.0)]
    late: f64,
    #[arg(long, default_value = "1h")]
    late_max: humantime::Duration,
    /// Write the lines to FILE ("-": stdout) instead of sending them.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// How long to wait for pixeld's counters to take in what was sent.
    #[arg(long, default_value = "30s")]
    settle_timeout: humantime::Duration,
}

#[derive(Clone, Copy, ValueEnum)]
enum BlastTransport {
    Udp,
    Tcp,
    Http,
}

#[derive(Clone, Copy, ValueEnum)]
enum BlastFraming {
    Line,
    Octet,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BlastHeader {
    Syslog,
    None,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Raw,
    Ndjson,
}

fn load(common: &Common, tweak: impl FnOnce(&mut RawConfig)) -> Result<Config> {
    let (mut raw, origin) = RawConfig::load(common.config.as_deref())?;
    if let Some(d) = &common.data_dir {
        raw.data_dir = d.clone();
    }
    tweak(&mut raw);
    Ok(Config::from_raw(&raw, &origin)?)
}

fn parse_time(s: &str) -> Result<u64> {
    let t = humantime::parse_rfc3339_weak(s)
        .with_context(|| format!("{s:?} is not an RFC 3339 time such as 2026-11-22T01:40:00Z"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .context("time before 1970")?
        .as_nanos() as u64)
}

fn resolve(addr: &str) -> Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .with_context(|| format!("{addr:?} is not a host:port address"))?
        .next()
        .with_context(|| format!("{addr:?} resolves to no address"))
}

fn blast(a: BlastArgs) -> Result<ExitCode> {
    use pixeld::tools::blast::{self, BlastOptions, Framing, Transport};
    use pixeld::tools::gen::{GenConfig, Header};
    let transport = match a.transport {
        BlastTransport::Udp => Transport::Udp,
        BlastTransport::Tcp => Transport::Tcp,
        BlastTransport::Http => Transport::Http,
    };
    let header = match a.header {
        Some(BlastHeader::Syslog) if a.out.is_none() && transport == Transport::Http => {
            anyhow::bail!("--header syslog cannot be used with --transport http: POST /v1/events takes JSON lines")
        }
        Some(BlastHeader::Syslog) => Header::Syslog,
        Some(BlastHeader::None) => Header::None,
        None if a.out.is_some() || transport == Transport::Http => Header::None,
        None => Header::Syslog,
    };
    if a.connections == 0 {
        anyhow::bail!("--connections must be at least 1");
    }
    for (name, v) in [("--heartbeats", a.heartbeats), ("--late", a.late)] {
        if !(0.0..=1.0).contains(&v) {
            anyhow::bail!("{name} is a share between 0 and 1, not {v}");
        }
    }
    let event_rate = a
        .event_rate
        .unwrap_or(if a.rate > 0 { a.rate as f64 } else { 100_000.0 });
    if !event_rate.is_finite() || event_rate <= 0.0 {
        anyhow::bail!("--event-rate must be positive");
    }
    let gen = GenConfig {
        sites: a.sites.max(1),
        urls_per_site: a.urls.max(1),
        visitors: a.visitors.max(1),
        heartbeat_share: a.heartbeats,
        late_share: a.late,
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
            Err(_) => parse_time(t)? / 1_000_000,
        },
        None => {
            let now_ms = (pixeld::sys::now_ns() / 1_000_000) as u64;
            let ahead = if a.rate > 0 { None } else { count };
            blast::default_start_msec(now_ms, ahead, gen.ms_per_event)
        }
    };
    if let Some(path) = &a.out {
        let n = a
            .count
            .context("--out needs --count (how many lines to write)")?;
        let stdout = std::io::stdout();
        let mut w: Box<dyn Write> = if path.as_os_str() == "-" {
            Box::new(std::io::BufWriter::with_capacity(1 << 20, stdout.lock()))
        } else {
            Box::new(std::io::BufWriter::with_capacity(
                1 << 20,
                std::fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?,
            ))
        };
        let bytes = blast::write_lines(a.seed, start_msec, &gen, n, &mut w)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("pixeld blast: wrote {n} lines ({bytes} bytes), seed {}, first event time {start_msec} ms", a.seed);
        return Ok(ExitCode::SUCCESS);
    }
    let (raw, _) = RawConfig::load(a.config.as_deref())?;
    let http = a.http.unwrap_or(raw.listen.http);
    let target = match (a.target, transport) {
        (Some(t), _) => t,
        (None, Transport::Udp) => raw.listen.udp,
        (None, Transport::Tcp) => raw.listen.tcp,
        (None, Transport::Http) => http.clone(),
    };
    let metrics = match (a.no_metrics, a.metrics) {
        (true, _) => None,
        (false, Some(m)) => Some(m),
        (false, None) => Some(format!("http://{http}/metrics")),
    };
    let opts = BlastOptions {
        transport,
        target: resolve(&target)?,
        framing: match a.framing {
            BlastFraming::Line => Framing::Line,
            BlastFraming::Octet => Framing::Octet,
        },
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
    };
    let report = blast::run(&opts)?;
    if a.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render());
    }
    let ok = report
        .pixeld
        .as_ref()
        .is_none_or(|p| p.settled && p.unaccounted == 0);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Blast(a) => blast(*a),
        Command::Serve {
            common,
            shards,
            udp,
            tcp,
            http,
        } => {
            let cfg = load(&common, |raw| {
                if let Some(n) = shards {
                    raw.shards = ShardCount::Count(n);
                }
                if let Some(a) = udp {
                    raw.listen.udp = a;
                }
                if let Some(a) = tcp {
                    raw.listen.tcp = a;
                }
                if let Some(a) = http {
                    raw.listen.http = a;
                }
            })?;
            pixeld::server::supervisor::serve(&cfg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { config } => {
            let (raw, origin) = RawConfig::load(config.as_deref())?;
            let cfg = Config::from_raw(&raw, &origin)?;
            println!("# {origin}: valid ({cfg})");
            print!("{}", raw.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { data_dir } => {
            if !data_dir.is_dir() {
                anyhow::bail!("no data dir at {}", data_dir.display());
            }
            let shards = pixeld::tools::check::check(&data_dir)?;
            let mut ok = true;
            for s in &shards {
                print!("{}", s.render());
                ok &= s.is_ok();
            }
            if shards.is_empty() {
                println!("no shard directories under {}", data_dir.display());
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Replay {
            data_dir,
            shard,
            from_offset,
            from_time,
            to_time,
            format,
        } => {
            let start = match (from_offset, from_time) {
                (Some(o), _) => Start::Offset(o),
                (None, Some(t)) => Start::Time(parse_time(&t)?),
                (None, None) => Start::Beginning,
            };
            let opts = ReplayOptions {
                data_dir,
                shard,
                start,
                to_time: to_time.as_deref().map(parse_time).transpose()?,
                format: match format {
                    Format::Raw => ReplayFormat::Raw,
                    Format::Ndjson => ReplayFormat::Ndjson,
                },
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
            let stats = pixeld::tools::replay::replay(&opts, &mut out, &mut |w| {
                eprintln!("pixeld replay: warning: {w}")
            })?;
            let _ = out.flush();
            if stats.warnings > 0 {
                eprintln!("pixeld replay: {} records, {} warnings (see above; `pixeld check` gives details)", stats.records, stats.warnings);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Import {
            common,
            shard,
            fsync,
            report_durable,
            inputs,
        } => {
            let cfg = load(&common, |raw| {
                if let Some(f) = fsync {
                    raw.log.fsync = f;
                }
            })?;
            let opts = pixeld::tools::import::ImportOptions {
                shard,
                inputs,
                report_durable,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            let s = pixeld::tools::import::import(&cfg, &opts)?;
            eprintln!(
                "pixeld import: {} records ({} bytes, {} empty lines skipped) appended to shard {shard} from offset {}, durable offset {}, in {:.2?} ({:.0} records/s)",
                s.records,
                s.bytes,
                s.empty_lines,
                s.first_offset,
                s.durable_offset.map_or_else(|| "none".into(), |o| o.to_string()),
                s.elapsed,
                s.records as f64 / s.elapsed.as_secs_f64().max(1e-9)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Tail {
            config,
            http,
            consumer,
            from_offset,
            from_time,
            from_end: _,
            from_beginning,
            shard,
            commit_every,
            format,
        } => {
            let addr = match http {
                Some(a) => a,
                None => RawConfig::load(config.as_deref())?.0.listen.http,
            };
            let opts = pixeld::tools::tail::TailOptions {
                base_url: if addr.contains("://") {
                    addr
                } else {
                    format!("http://{addr}")
                },
                consumer,
                start: match (from_offset, from_time, from_beginning) {
                    (Some(o), _, _) => pixeld::tools::tail::TailStart::Offset(o),
                    (None, Some(t), _) => pixeld::tools::tail::TailStart::Time(t),
                    (None, None, true) => pixeld::tools::tail::TailStart::Beginning,
                    (None, None, false) => pixeld::tools::tail::TailStart::End,
                },
                format: match format {
                    Format::Raw => pixeld::tools::tail::TailFormat::Raw,
                    Format::Ndjson => pixeld::tools::tail::TailFormat::Ndjson,
                },
                commit_every,
                shards: (!shard.is_empty()).then_some(shard),
            };
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone())
                    .context("cannot install the signal handler")?;
            }
            pixeld::tools::tail::tail(&opts, stop)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pixeld: error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes on one line, leaving out a cause whose text the message already
/// quotes (subsystem errors embed their `io::Error`, which is also their `source`).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !line.contains(&c) {
            line.push_str(": ");
            line.push_str(&c);
        }
    }
    line
}
