//! The `pixeld` command line: parses arguments, loads the config, calls the library, and maps
//! errors to messages and exit codes. Nothing else lives here.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use pixeld::config::{Config, RawConfig, ShardCount};
use pixeld::log::reader::Start;
use pixeld::tools::blast_args::{self, BlastArgs};
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
    /// Verify every batch of every segment; exit 1 if anything is corrupt. With
    /// --aggregates, recompute the aggregate store from the logs and compare (stop the server
    /// first); exit 1 naming the first difference.
    Check {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        aggregates: bool,
        /// The config the server runs with (its [agg] settings); the embedded default without.
        #[arg(long, short = 'c', requires = "aggregates")]
        config: Option<PathBuf>,
    },
    /// Recompute the aggregate store from the logs under a (new) config, for the range the
    /// logs still hold, keeping older buckets as they were; stop the server first.
    RebuildAggregates {
        /// The data dir of a stopped server (offline rebuild; it takes the data dir's lock).
        #[arg(long, required_unless_present = "server")]
        data_dir: Option<PathBuf>,
        /// Rebuild on this running server instead (e.g. http://127.0.0.1:5580, its
        /// listen.http), through POST /v1/admin/rebuild-aggregates; ingest and queries go on.
        /// Send its auth_token with PIXELD_TOKEN.
        #[arg(long, conflicts_with_all = ["data_dir", "config"])]
        server: Option<String>,
        /// The config the server will run with (its [agg] settings); the embedded default without.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// First minute to rebuild (RFC 3339); default: the first the logs fully hold.
        #[arg(long)]
        from: Option<String>,
        /// End of the range, exclusive (RFC 3339); default: now.
        #[arg(long)]
        to: Option<String>,
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
    /// Load generator: send realistic pixel hits to a running pixeld and account for each.
    Blast(Box<BlastArgs>),
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
    pixeld::log::ndjson::parse_rfc3339(s)
        .with_context(|| format!("{s:?} is not an RFC 3339 time such as 2026-11-22T01:40:00Z"))
}

fn blast(a: BlastArgs) -> Result<ExitCode> {
    let json = a.json;
    match blast_args::run(a)? {
        blast_args::Outcome::Wrote {
            lines,
            bytes,
            seed,
            start_msec,
        } => {
            eprintln!("pixeld blast: wrote {lines} lines ({bytes} bytes), seed {seed}, first event time {start_msec} ms");
            Ok(ExitCode::SUCCESS)
        }
        blast_args::Outcome::Sent(report) => {
            if json {
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
    }
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
            if let Some(db) = cfg.agg.event.geo.db() {
                // Not a configuration error (serve starts and looks again), but worth saying.
                println!("# geo: {}", db.describe());
            }
            if let Some(n) = cfg.agg.event.bot_networks.db() {
                println!("# bot networks: {}", n.describe());
            }
            print!("{}", raw.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            data_dir,
            aggregates,
            config,
        } => {
            if !data_dir.is_dir() {
                anyhow::bail!("no data dir at {}", data_dir.display());
            }
            if aggregates {
                let (raw, origin) = RawConfig::load(config.as_deref())?;
                let cfg = Config::from_raw(&raw, &origin)?;
                let _lock = pixeld::datadir::lock_data_dir(&data_dir)?;
                eprintln!(
                    "pixeld check --aggregates: recomputing the store under {} from its logs",
                    data_dir.display()
                );
                let r = pixeld::tools::check_aggregates::check_aggregates(&data_dir, &cfg.agg)?;
                print!("{}", r.render());
                return Ok(if r.is_ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
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
        Command::RebuildAggregates {
            server: Some(server),
            from,
            to,
            ..
        } => {
            let minute = |t: &str| parse_time(t).map(|ns| ns / 1_000_000_000);
            let mut url = format!(
                "{}/v1/admin/rebuild-aggregates",
                server.trim_end_matches('/')
            );
            let mut sep = '?';
            for (k, v) in [("from", &from), ("to", &to)] {
                if let Some(t) = v {
                    url.push_str(&format!("{sep}{k}={}", minute(t)?));
                    sep = '&';
                }
            }
            eprintln!("pixeld rebuild-aggregates: asking {server} to recompute the aggregates from its logs (ingest and queries go on)");
            let (status, body) = pixeld::tools::rebuild_aggregates::online(&url)?;
            println!("{body}");
            Ok(if status == 200 {
                ExitCode::SUCCESS
            } else {
                eprintln!("pixeld rebuild-aggregates: the server answered {status}");
                ExitCode::from(1)
            })
        }
        Command::RebuildAggregates {
            data_dir,
            config,
            from,
            to,
            ..
        } => {
            let Some(data_dir) = data_dir else {
                anyhow::bail!("give --data-dir (offline) or --server (a running server)");
            };
            if !data_dir.is_dir() {
                anyhow::bail!("no data dir at {}", data_dir.display());
            }
            let (raw, origin) = RawConfig::load(config.as_deref())?;
            let cfg = Config::from_raw(&raw, &origin)?;
            let minute = |t: &str| parse_time(t).map(|ns| (ns / 60_000_000_000) as i64);
            let from = from.as_deref().map(minute).transpose()?;
            let to = to.as_deref().map(minute).transpose()?;
            let _lock = pixeld::datadir::lock_data_dir(&data_dir).map_err(|e| {
                anyhow::anyhow!("{e}; to rebuild on the running server, use --server http://<its listen.http> instead of --data-dir")
            })?;
            eprintln!(
                "pixeld rebuild-aggregates: recomputing the store under {} from its logs",
                data_dir.display()
            );
            let now = pixeld::route::now_minute();
            let r = pixeld::tools::rebuild_aggregates::rebuild_aggregates(
                &data_dir, &cfg.agg, from, to, now,
            )?;
            for n in &r.notes {
                eprintln!("pixeld rebuild-aggregates: note: {n}");
            }
            for p in &r.problems {
                eprintln!("pixeld rebuild-aggregates: problem: {p}");
            }
            let since = pixeld::query::params::minute_rfc3339(r.from_minute);
            println!(
                "{} owners: {} records recomputed; {} minute and {} hour buckets rebuilt; buckets before {since} (no longer in the logs) kept as they were",
                r.owners, r.records, r.minute_buckets, r.hour_buckets
            );
            for w in &r.written {
                println!("wrote {}", w.display());
            }
            Ok(if r.problems.is_empty() {
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
