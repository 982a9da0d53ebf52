//! `pixeld serve`: the supervisor on the main thread.
//!
//! It locks the data dir, starts the shards, waits until every one has recovered its log,
//! reports ready, then waits for SIGTERM/SIGINT or a failing shard. On a signal it asks every
//! shard to write and fsync what it holds and waits for them; on a shard failure it stops the
//! others the same way and returns the failure (the process exits non-zero with its cause).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::config::Config;
use crate::datadir::{lock_data_dir, restrict_file_modes};
use crate::log::reader;
use crate::metrics::ShardStats;
use crate::server::shard::{self, ShardEvent};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
    #[error(transparent)]
    Shard(#[from] shard::ShardError),
    #[error("shard {shard} failed: {error}")]
    ShardFailed {
        shard: usize,
        #[source]
        error: shard::ShardFailure,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start the country database's watcher thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Preflight(#[from] crate::server::preflight::PreflightError),
    #[error(transparent)]
    Activation(#[from] crate::server::activation::ActivationError),
    #[cfg(feature = "kafka")]
    #[error(transparent)]
    Export(#[from] crate::export::kafka::ExportError),
    #[error("data dir {} holds the logs of shards {extra:?} ({bytes} bytes of segments) beyond the {shards} shards of this run, and nobody would read them (the log API, consumers, a repair of the aggregates). Start with `shards = {need}` or more, or move those directories out of the data dir: what they hold stays in the aggregates (the aggregate store is re-partitioned for {shards} shards at start, see above), and `pixeld replay --data-dir` still reads them there", data_dir.display())]
    ShardsShrunk {
        data_dir: std::path::PathBuf,
        extra: Vec<usize>,
        bytes: u64,
        shards: usize,
        need: usize,
    },
    #[error("shard(s) {shards:?} did not stop within shutdown_timeout ({timeout:?}); exiting without them (their unsynced tail is recovered at the next start)")]
    ShutdownTimeout {
        shards: Vec<usize>,
        timeout: Duration,
    },
}

/// The systemd notification socket (`NOTIFY_SOCKET`), when pixeld runs under `Type=notify`;
/// every call is a no-op otherwise. A failed send is reported once, never fatal.
struct Notifier {
    enabled: bool,
    /// `WATCHDOG_USEC` for this process, when systemd asks for keep-alives.
    watchdog: Option<Duration>,
    warned: std::cell::Cell<bool>,
}

impl Notifier {
    fn from_env() -> Self {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled(),
            warned: std::cell::Cell::new(false),
        }
    }

    fn send(&self, state: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(state) {
            if !self.warned.replace(true) {
                eprintln!("pixeld: cannot notify systemd (NOTIFY_SOCKET): {e}");
            }
        }
    }
}

/// Refuses a run with fewer shards than the data dir has logs holding records: every shard's
/// log is a source of the answers, and a shard beyond the count would be read by nobody. Empty
/// shard directories beyond the count (a run that never appended there) are only reported.
fn check_shard_count(cfg: &Config) -> Result<(), ServeError> {
    let Ok(existing) = reader::list_shards(&cfg.data_dir) else {
        return Ok(());
    };
    let mut extra = Vec::new();
    let mut bytes = 0;
    for (n, dir) in existing.iter().filter(|(n, _)| *n >= cfg.shards) {
        // Holds records when its first one reads (segments may be preallocated while empty).
        let mut first = None;
        let _ = reader::ShardReader::new(
            dir,
            cfg.log.for_shard(&cfg.data_dir, *n).index_interval_bytes,
        )
        .read(
            reader::Start::Beginning,
            |rec| {
                first = Some(rec.offset);
                std::ops::ControlFlow::Break(())
            },
            |_| {},
        );
        let held: u64 = match first {
            None => 0,
            Some(_) => reader::list_segments(dir)
                .map(|(segs, _)| {
                    segs.iter()
                        .filter_map(|s| std::fs::metadata(&s.path).ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0)
                .max(1),
        };
        if held > 0 {
            extra.push(*n);
            bytes += held;
        } else {
            eprintln!(
                "pixeld: {} is beyond the {} shards of this run and holds no records; it is left alone",
                dir.display(),
                cfg.shards
            );
        }
    }
    match extra.last() {
        None => Ok(()),
        Some(&last) => Err(ServeError::ShardsShrunk {
            data_dir: cfg.data_dir.clone(),
            extra,
            bytes,
            shards: cfg.shards,
            need: last + 1,
        }),
    }
}

/// Runs the appliance until a signal or a failure.
pub fn serve(cfg: &Config) -> Result<(), ServeError> {
    let started = Instant::now();
    restrict_file_modes();
    crate::server::preflight::check_system(cfg)?;
    let _lock = lock_data_dir(&cfg.data_dir)?;
    // Sockets passed by systemd (pixeld.socket) are served as they are; otherwise the
    // configured addresses must be free.
    let activated = crate::server::activation::take(cfg)?;
    let mut served = cfg.clone();
    match &activated {
        Some(a) => {
            for (kind, configured, got) in [
                ("udp", cfg.udp, a.udp),
                ("tcp", cfg.tcp, a.tcp),
                ("http", cfg.http, a.http),
            ] {
                if configured != got {
                    eprintln!("pixeld: listen.{kind} ({configured}) is not used: systemd passed a socket on {got}");
                }
            }
            let stored = a.stored_counts();
            if stored.iter().any(|&n| n > 0) {
                eprintln!(
                    "pixeld: serving the sockets systemd kept in its file descriptor store (udp, tcp, http: {stored:?} sockets; a kind without any is bound and stored) and {:?} from a socket unit",
                    a.counts()
                );
            } else {
                eprintln!(
                    "pixeld: socket activation: serving the sockets systemd passed (udp, tcp, http: {:?} sockets)",
                    a.counts()
                );
            }
            (served.udp, served.tcp, served.http) = (a.udp, a.tcp, a.http);
        }
        None => crate::server::preflight::check_ports(cfg)?,
    }
    let cfg = &served;
    #[cfg(feature = "kafka")]
    if let Some(k) = &cfg.export {
        if let Some(warning) = crate::export::kafka::check_topic(k)? {
            eprintln!("pixeld: export: {warning}");
        }
    }
    // A changed shard count: the aggregate store is re-partitioned before the shards load it
    // (and before a shrink is refused, so that it reads the logs it may need while they are
    // still in place).
    // With aggregation off the store is left as it is: it is re-partitioned at the first
    // start that aggregates again.
    if cfg.agg.enabled {
        for line in crate::server::repartition::run(cfg) {
            eprintln!("pixeld: {line}");
        }
    } else {
        eprintln!(
            "pixeld: aggregation is off (agg.enabled = false): every line is logged and counted, nothing is aggregated; \
             queries of the aggregates answer 503, scans of the log (\"include\": {{\"scan\": true}}) answer. \
             The aggregate store is left as it is and catches up on what the logs hold at the first start with agg.enabled = true"
        );
    }
    check_shard_count(cfg)?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let (tx, rx) = crossbeam_channel::unbounded();
    let (sig_tx, sig_rx) = crossbeam_channel::bounded(4);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(ServeError::Signals)?;
    let sig_handle = signals.handle();
    std::thread::spawn(move || {
        for s in signals.forever() {
            if s == signal_hook::consts::SIGHUP {
                // Nothing pixeld holds can be swapped under running shards safely (sockets,
                // shard count, windows, log settings), so a reload is refused out loud instead
                // of SIGHUP's default of ending the process.
                eprintln!(
                    "pixeld: SIGHUP received: reloading the configuration is not supported; \
                     restart to apply changes (systemctl restart pixeld). Still running."
                );
                continue;
            }
            let _ = sig_tx.send(s);
        }
    });
    eprintln!("pixeld {}: starting {cfg}", env!("CARGO_PKG_VERSION"));
    if let Some(db) = cfg.agg.event.geo.db() {
        eprintln!("pixeld: geo: {}", db.describe());
        crate::parse::watched::watch(db, "geo", cfg.geo_reload_interval)
            .map_err(ServeError::Thread)?;
    }
    if let Some(n) = cfg.agg.event.bot_networks.db() {
        eprintln!("pixeld: bot networks: {}", n.describe());
        crate::parse::watched::watch(n, "bot networks", cfg.geo_reload_interval)
            .map_err(ServeError::Thread)?;
    }
    let shard::Started {
        handles,
        readers: log_api,
        export,
    } = shard::spawn_shards(cfg, activated, shutdown.clone(), tx)?;
    // The shards hold the readers too; only the export takes them from here.
    #[cfg(not(feature = "kafka"))]
    drop((log_api, export));
    // The export thread waits for every shard to recover, then reads their logs.
    #[cfg(feature = "kafka")]
    let exporter = match (&cfg.export, &export) {
        (Some(k), Some(stats)) => Some(crate::export::kafka::Exporter::spawn(
            k.clone(),
            cfg.agg.event.clone(),
            log_api.clone(),
            stats.clone(),
            shutdown.clone(),
        )?),
        _ => None,
    };
    let all_stats: Vec<Arc<ShardStats>> = handles.iter().map(|h| h.stats.clone()).collect();
    let notify = Notifier::from_env();
    let mut tally = Tally::new(handles.len());
    // Phase 1: recovery.
    wait_recovered(&rx, &sig_rx, &mut tally, &all_stats, &notify);
    if tally.failure.is_none() && tally.ready == handles.len() {
        eprintln!(
            "pixeld: ready: {} shards recovered in {:.2?}; listening on udp {}, tcp {}, http {}",
            handles.len(),
            started.elapsed(),
            cfg.udp,
            cfg.tcp,
            cfg.http
        );
        notify.send(&[
            NotifyState::Ready,
            NotifyState::Status(&format!(
                "ready: {} shards; udp {}, tcp {}, http {}",
                handles.len(),
                cfg.udp,
                cfg.tcp,
                cfg.http
            )),
        ]);
        tally.say_complete(&notify);
        // Phase 2: running.
        run_until_stop(&rx, &sig_rx, &mut tally, &all_stats, &notify);
    }
    // Phase 3: stop every shard; each seals, writes and fsyncs what it holds.
    notify.send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: writing and syncing every shard"),
    ]);
    shutdown.store(true, Ordering::Relaxed);
    stop_all(&rx, &mut tally, cfg.shutdown_timeout)?;
    let stats: Vec<Arc<ShardStats>> = handles.iter().map(|h| h.stats.clone()).collect();
    // The exporter saw the shutdown flag with the shards; it waits at most a few seconds for
    // the broker to confirm what is in flight, then commits.
    #[cfg(feature = "kafka")]
    if let Some(x) = exporter {
        x.join();
    }
    for h in handles {
        let shard = h.shard;
        if let Err(e) = h.join() {
            tally
                .failure
                .get_or_insert(ServeError::ShardFailed { shard, error: e });
        }
    }
    sig_handle.close();
    report_stopped(&stats);
    match tally.failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// One line per shard at exit: what it received, appended and dropped, and where its log ends.
fn report_stopped(stats: &[Arc<ShardStats>]) {
    for (i, s) in stats.iter().enumerate() {
        let drops: Vec<String> = crate::metrics::DropReason::ALL
            .iter()
            .filter(|r| s.dropped(**r) > 0)
            .map(|r| format!("{}={}", r.as_str(), s.dropped(*r)))
            .collect();
        eprintln!(
            "pixeld: shard {i} stopped: {} received, {} appended, {} dropped [{}], {} kernel UDP drops, durable offset {}",
            s.received_total(),
            ShardStats::get(&s.appended_events),
            s.dropped_total(),
            drops.join(" "),
            ShardStats::get(&s.udp_kernel_drops),
            s.durable_offset()
                .map_or_else(|| "none".to_string(), |o| o.to_string())
        );
    }
}

/// What the supervisor knows of its shards: how many recovered, which have ended, and the
/// first failure.
struct Tally {
    ready: usize,
    /// Shards whose aggregates caught up, what they replayed, and whether that was said.
    caught_up: usize,
    replayed: u64,
    missing: u64,
    catchup_seconds: f64,
    complete_said: bool,
    /// Which shards have ended (each reports `Failed` or `Stopped` once); the stuck ones are
    /// named at a shutdown timeout.
    ended: Vec<bool>,
    failure: Option<ServeError>,
}

impl Tally {
    fn new(shards: usize) -> Self {
        Tally {
            ready: 0,
            caught_up: 0,
            replayed: 0,
            missing: 0,
            catchup_seconds: 0.0,
            complete_said: false,
            ended: vec![false; shards],
            failure: None,
        }
    }

    /// Takes in one shard event; logs a recovery, keeps the first failure.
    fn record(&mut self, ev: ShardEvent) {
        match ev {
            ShardEvent::Ready { shard, report } => {
                self.ready += 1;
                eprintln!(
                    "pixeld: shard {shard} recovered: {} segments, {} records, next offset {}, {} bytes{}{}{}",
                    report.segments, report.records, report.next_offset, report.bytes,
                    if report.clean_start { " (clean shutdown: newest segment trusted without a scan)" } else { "" },
                    if report.truncated_bytes > 0 { format!(", torn tail of {} bytes truncated", report.truncated_bytes) } else { String::new() },
                    if report.corrupt.is_empty() { String::new() } else { format!(", {} CORRUPT ranges (see above)", report.corrupt.len()) },
                );
            }
            ShardEvent::Failed { shard, error } => {
                self.ended(shard);
                self.failure
                    .get_or_insert(ServeError::ShardFailed { shard, error });
            }
            ShardEvent::CaughtUp { catchup, .. } => {
                self.caught_up += 1;
                self.replayed += catchup.replayed;
                self.missing += catchup.missing;
                self.catchup_seconds = self.catchup_seconds.max(catchup.seconds);
            }
            ShardEvent::Stopped { shard } => self.ended(shard),
        }
    }

    /// Says once, after the ready line, that every shard's aggregates have caught up.
    fn say_complete(&mut self, notify: &Notifier) {
        if self.complete_said || self.caught_up < self.ended.len() {
            return;
        }
        self.complete_said = true;
        eprintln!(
            "pixeld: aggregates complete: {} shards; {} log records replayed after the checkpoints in {:.2} s{}",
            self.ended.len(),
            self.replayed,
            self.catchup_seconds,
            if self.missing > 0 {
                format!("; {} records already deleted by retention could not be replayed", self.missing)
            } else {
                String::new()
            }
        );
        notify.send(&[NotifyState::Status("ready; aggregates complete")]);
    }

    fn ended(&mut self, shard: usize) {
        if let Some(s) = self.ended.get_mut(shard) {
            *s = true;
        }
    }

    /// How many shards have ended.
    fn stopped(&self) -> usize {
        self.ended.iter().filter(|e| **e).count()
    }
}

/// Phase 1: waits until every shard has recovered its log and rebuilt its aggregates (or one
/// failed, or a signal came), telling systemd how the rebuild goes and extending its start
/// timeout while it makes progress.
fn wait_recovered(
    rx: &crossbeam_channel::Receiver<ShardEvent>,
    sig_rx: &crossbeam_channel::Receiver<i32>,
    tally: &mut Tally,
    all_stats: &[Arc<ShardStats>],
    notify: &Notifier,
) {
    let progress = crossbeam_channel::tick(Duration::from_secs(1));
    let mut last_replayed = 0u64;
    let shards = tally.ended.len();
    while tally.ready + tally.stopped() < shards && tally.failure.is_none() {
        crossbeam_channel::select! {
            recv(rx) -> ev => match ev {
                Ok(ev) => tally.record(ev),
                Err(_) => break,
            },
            recv(sig_rx) -> _ => break,
            recv(progress) -> _ => {
                let replayed: u64 = all_stats.iter().map(|s| ShardStats::get(&s.agg.rebuilt_records)).sum();
                let rate = replayed.saturating_sub(last_replayed);
                last_replayed = replayed;
                notify.send(&[
                    NotifyState::Status(&format!(
                        "recovering: {}/{shards} shards ready, {replayed} records replayed into the aggregates ({rate}/s)",
                        tally.ready
                    )),
                    NotifyState::ExtendTimeoutUsec(if rate > 0 { 30_000_000 } else { 0 }),
                ]);
            },
        }
    }
}

/// Phase 2: waits for a signal or a failing shard; feeds systemd's watchdog only while every
/// shard's loop is responsive.
fn run_until_stop(
    rx: &crossbeam_channel::Receiver<ShardEvent>,
    sig_rx: &crossbeam_channel::Receiver<i32>,
    tally: &mut Tally,
    all_stats: &[Arc<ShardStats>],
    notify: &Notifier,
) {
    let period = notify.watchdog.map_or(Duration::from_secs(1), |w| w / 2);
    let watchdog = crossbeam_channel::tick(period);
    // A shard is stalled when its ticker (every 2 ms) has not run for half the watchdog
    // period (at least a second: a loaded machine delays timers).
    let limit = notify
        .watchdog
        .map_or(Duration::from_secs(5), |w| w / 2)
        .max(Duration::from_secs(1));
    let mut stalled_before = false;
    loop {
        crossbeam_channel::select! {
            recv(watchdog) -> _ => {
                let stalled = stalled_shards(all_stats, limit);
                if stalled.is_empty() {
                    notify.send(&[NotifyState::Watchdog]);
                    if stalled_before {
                        eprintln!("pixeld: every shard is responsive again");
                        notify.send(&[NotifyState::Status("ready")]);
                    }
                } else if !stalled_before {
                    let msg = format!("shard(s) {stalled:?} unresponsive for more than {limit:?}; watchdog not fed");
                    eprintln!("pixeld: {msg}");
                    notify.send(&[NotifyState::Status(&msg)]);
                }
                stalled_before = !stalled.is_empty();
            },
            recv(rx) -> ev => match ev {
                Ok(ev) => {
                    tally.record(ev);
                    if tally.failure.is_some() {
                        break;
                    }
                    tally.say_complete(notify);
                }
                Err(_) => break,
            },
            recv(sig_rx) -> s => {
                eprintln!("pixeld: signal {} received; writing and syncing every shard", s.unwrap_or(0));
                break;
            }
        }
    }
}

/// The shards whose heartbeat is older than `limit`.
fn stalled_shards(all_stats: &[Arc<ShardStats>], limit: Duration) -> Vec<usize> {
    let now = crate::sys::now_ns();
    all_stats
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            now.saturating_sub(ShardStats::get(&s.heartbeat_ns)) > limit.as_nanos() as u64
        })
        .map(|(i, _)| i)
        .collect()
}

/// Phase 3: waits until every shard has ended, up to `timeout`; a shard still running then
/// cannot be joined, so the process ends without it, naming it.
fn stop_all(
    rx: &crossbeam_channel::Receiver<ShardEvent>,
    tally: &mut Tally,
    timeout: Duration,
) -> Result<(), ServeError> {
    let deadline = Instant::now() + timeout;
    while tally.stopped() < tally.ended.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ev) => tally.record(ev),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                let shards = (0..tally.ended.len())
                    .filter(|&i| !tally.ended[i])
                    .collect();
                return Err(ServeError::ShutdownTimeout { shards, timeout });
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
    }
    Ok(())
}
