//! Shards: one glommio `LocalExecutor` per CPU, each owning its log, its sockets, its
//! partition of the aggregates and its ends of the routing and query meshes.
//!
//! A shard never shares mutable state with another: its log lives in `Rc`s on its own
//! thread, and the only things that cross threads are its [`ShardStats`] (atomics, written by
//! the shard alone), a shutdown flag it polls, and the events it reports to the supervisor
//! over a channel. The supervisor (`serve`) waits for every shard to report `Ready` after
//! recovery before it reports the process ready.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

use crate::config::Config;
use crate::log::recovery::RecoveryReport;
use crate::log::Log;
use crate::metrics::ShardStats;

/// What a shard tells the supervisor.
#[derive(Debug)]
pub enum ShardEvent {
    /// Recovery is done and the shard accepts appends.
    Ready {
        shard: usize,
        report: Box<RecoveryReport>,
    },
    /// The shard failed and stopped; the error names the cause.
    Failed { shard: usize, error: ShardFailure },
    /// The shard's aggregates hold every record of every log up to its end at start: the
    /// catch-up (replay of the logs after the loaded checkpoints) is over.
    CaughtUp {
        shard: usize,
        catchup: crate::route::rebuild::CatchUp,
    },
    /// The shard stopped cleanly after a shutdown request.
    Stopped { shard: usize },
}

/// Why a running shard stopped. Typed, so that the supervisor (and a test) can tell a
/// poisoned log (`Log(log::Error::Poisoned { .. })`) from a port in use.
#[derive(Debug, thiserror::Error)]
pub enum ShardFailure {
    #[error("stopped before every shard joined the routing mesh")]
    MeshNotJoined,
    #[error(transparent)]
    Log(#[from] crate::log::Error),
    #[error("rebuilding the aggregates from the log failed: {0}")]
    Rebuild(#[source] crate::log::Error),
    #[error("cannot bind {transport} {addr}: {source} (is another process on that port?)")]
    Bind {
        /// `UDP`, `TCP` or `HTTP`.
        transport: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The shard's thread ended abnormally (a panic); glommio's error is not `Sync`, so its
    /// text is kept.
    #[error("thread failed: {0}")]
    Thread(String),
}

/// Why the shards could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard {shard}: cannot start its executor on CPU {cpu}: {reason}")]
    Spawn {
        shard: usize,
        cpu: usize,
        reason: String,
    },
    #[error("cannot open the consumer store: {0}")]
    Consumers(#[from] crate::consumers::ConsumerError),
    #[error("{0}; pixeld needs a writable data_dir")]
    Keys(#[from] crate::http::idempotency::KeyError),
    #[error("cannot duplicate a socket systemd passed: {0}")]
    Activated(std::io::Error),
    #[error("{0} (or set tracker.derive_visitor_ids = false)")]
    Salts(#[from] crate::http::visitor::SaltError),
}

/// What [`spawn_shards`] started: the shards, the readers' view of their logs, and the
/// export's counters when the export is configured.
pub struct Started {
    pub handles: Vec<ShardHandle>,
    pub readers: Arc<crate::readers::LogReaders>,
    pub export: Option<Arc<crate::export::ExportStats>>,
}

/// A running shard, as the supervisor sees it.
pub struct ShardHandle {
    pub shard: usize,
    pub cpu: usize,
    pub stats: Arc<ShardStats>,
    join: glommio::ExecutorJoinHandle<()>,
}

impl ShardHandle {
    /// Waits for the shard's thread to end.
    pub fn join(self) -> Result<(), ShardFailure> {
        self.join
            .join()
            .map_err(|e| ShardFailure::Thread(e.to_string()))
    }
}

/// Starts every shard. Each joins the meshes, recovers its log, rebuilds its aggregates
/// (with every other shard: see `route::rebuild`), binds its sockets, reports `Ready` (or `Failed`) on `events`, then
/// runs until `shutdown` is set, when it writes and fsyncs everything and reports `Stopped`.
pub fn spawn_shards(
    cfg: &Config,
    activated: Option<crate::server::activation::Activated>,
    shutdown: Arc<AtomicBool>,
    events: crossbeam_channel::Sender<ShardEvent>,
) -> Result<Started, ShardError> {
    let cpus = crate::sys::allowed_cpus();
    let fd_store = crate::server::activation::store_enabled(cfg);
    if fd_store {
        eprintln!(
            "pixeld: listen.fd_store: the sockets pixeld binds go to systemd's file descriptor store (FDSTORE=1, named stored-udp/-tcp/-http), so that a restart keeps them"
        );
    }
    let mut handles = Vec::with_capacity(cfg.shards);
    let all_stats: Arc<Vec<Arc<ShardStats>>> = Arc::new(
        (0..cfg.shards)
            .map(|_| Arc::new(ShardStats::default()))
            .collect(),
    );
    // Consumer offsets are loaded before any shard starts, so that the first retention pass
    // already sees every pin.
    let consumers = Arc::new(crate::consumers::ConsumerStore::open(
        &cfg.data_dir,
        cfg.shards,
    )?);
    // The Kafka export's consumer pins retention from the first start on (a shard it has not
    // committed on yet keeps everything until the exporter records where it starts).
    let export_consumer = consumers.get(crate::export::CONSUMER_NAME);
    if cfg.export.is_some() {
        if export_consumer.as_ref().is_none_or(|c| !c.retention_pin) {
            consumers.commit(crate::export::CONSUMER_NAME, &[], Some(true))?;
        }
    } else if export_consumer.is_some_and(|c| c.retention_pin) {
        eprintln!(
            "pixeld: consumer {:?} of a former Kafka export still pins retention, but [export.kafka] is not configured; \
             its unexported segments are kept up to log.retention_bytes_hard. Delete it (DELETE /v1/consumers/{}) if the export is gone for good",
            crate::export::CONSUMER_NAME,
            crate::export::CONSUMER_NAME
        );
    }
    let log_api = Arc::new(crate::readers::LogReaders {
        logs: (0..cfg.shards)
            .map(|s| {
                let c = cfg.log.for_shard(&cfg.data_dir, s);
                crate::log::fetch::ShardLog::new(s, c.dir, c.index_interval_bytes)
            })
            .collect(),
        all_stats: all_stats.clone(),
        consumers: consumers.clone(),
        shutdown: shutdown.clone(),
        reserved_consumer: cfg.export.as_ref().map(|_| crate::export::CONSUMER_NAME),
    });
    let export = cfg
        .export
        .as_ref()
        .map(|k| Arc::new(crate::export::ExportStats::new(&k.topic, cfg.shards)));
    // Directories every shard shares, under the data dir (absolute: glommio threads resolve
    // no relative path).
    let data_dir = std::path::absolute(&cfg.data_dir).unwrap_or_else(|_| cfg.data_dir.clone());
    // One salt directory for every shard, so that they all derive the same ids.
    let salts = if cfg.http_server.derive_visitor_ids {
        let today = crate::http::visitor::day_of(crate::sys::now_ns());
        Some(Arc::new(crate::http::visitor::SaltDir::open(
            &data_dir.join("tracker"),
            today,
        )?))
    } else {
        None
    };
    // One Idempotency-Key store for every shard: a retry may reach any of them.
    let keys = Arc::new(crate::http::idempotency::KeyStore::open(
        &data_dir.join("idempotency"),
        cfg.ingest.idempotency_horizon,
    )?);
    let mut stores = load_stores(cfg, &all_stats);
    let scans = Arc::new(crate::query::scan::Scans::default());
    let route_mesh = crate::route::mesh(cfg.shards);
    let query_mesh = crate::query::mesh(cfg.shards);
    for shard in 0..cfg.shards {
        let cpu = cpus[shard % cpus.len()];
        let stats = all_stats[shard].clone();
        let mut log_cfg = cfg.log.for_shard(&cfg.data_dir, shard);
        log_cfg.retention_pin = consumers.pin(shard);
        let store = stores.remove(0);
        let net = Listeners {
            udp: cfg.udp,
            tcp: cfg.tcp,
            http: cfg.http,
            ingest: cfg.ingest.clone(),
            http_cfg: cfg.http_server.clone(),
            all_stats: all_stats.clone(),
            route_mesh: route_mesh.clone(),
            query_mesh: query_mesh.clone(),
            log_api: log_api.clone(),
            export: export.clone(),
            store,
            salts: salts.clone(),
            keys: keys.clone(),
            scans: scans.clone(),
            sockets: match &activated {
                Some(a) => a.for_shard(shard).map_err(ShardError::Activated)?,
                None => Default::default(),
            },
            fd_store,
            data_dir: data_dir.clone(),
        };
        let (st, sd, ev) = (stats.clone(), shutdown.clone(), events.clone());
        let join = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("pixeld-shard-{shard}"))
            .spawn(move || async move {
                let outcome = run_shard(shard, log_cfg, net, st, sd, &ev).await;
                let _ = ev.send(match outcome {
                    Ok(()) => ShardEvent::Stopped { shard },
                    Err(error) => ShardEvent::Failed { shard, error },
                });
            })
            .map_err(|e| ShardError::Spawn {
                shard,
                cpu,
                reason: e.to_string(),
            })?;
        handles.push(ShardHandle {
            shard,
            cpu,
            stats,
            join,
        });
    }
    Ok(Started {
        handles,
        readers: log_api,
        export,
    })
}

/// What a shard listens on.
struct Listeners {
    udp: std::net::SocketAddr,
    tcp: std::net::SocketAddr,
    http: std::net::SocketAddr,
    ingest: crate::ingest::IngestConfig,
    http_cfg: crate::http::HttpConfig,
    all_stats: Arc<Vec<Arc<ShardStats>>>,
    route_mesh: crate::route::Mesh,
    query_mesh: crate::query::QueryMesh,
    log_api: Arc<crate::readers::LogReaders>,
    export: Option<Arc<crate::export::ExportStats>>,
    store: ShardStore,
    salts: Option<Arc<crate::http::visitor::SaltDir>>,
    keys: Arc<crate::http::idempotency::KeyStore>,
    scans: Arc<crate::query::scan::Scans>,
    /// The shard's listeners systemd holds (socket activation, the file descriptor store);
    /// it binds each kind it got none of.
    sockets: crate::server::activation::ShardSockets,
    /// Hand the sockets it binds to systemd's file descriptor store.
    fd_store: bool,
    /// The data dir, absolute (live `rebuild-aggregates` reads every log under it).
    data_dir: std::path::PathBuf,
}

/// What a shard starts its aggregates from: its loaded checkpoint chain and what its log's
/// replay must send to whom.
struct ShardStore {
    agg: crate::agg::Aggregates,
    /// None when aggregation is off (`agg.enabled = false`): nothing is loaded, caught up or
    /// checkpointed, and the store on disk is left as it is.
    writer: Option<crate::agg::store::Writer>,
    /// Per owner: the offset of this shard's log that owner's checkpoint already holds.
    floors: Vec<u64>,
    /// Per source: this owner's loaded applied vector.
    applied: Vec<u64>,
    /// Per owner: the hours and days whose sealed file was lost, recomputed by this log's
    /// replay.
    repairs: Vec<crate::route::Repairs>,
    from: crate::route::ReplayFrom,
}

/// Loads every owner's checkpoint chain (before any shard starts, since each source's replay
/// depends on every owner's), reporting what it found on stderr.
fn load_stores(cfg: &Config, all_stats: &[Arc<ShardStats>]) -> Vec<ShardStore> {
    use crate::agg::store;
    if !cfg.agg.enabled {
        return (0..cfg.shards)
            .map(|_| ShardStore {
                agg: crate::agg::Aggregates::new(cfg.agg.clone()),
                writer: None,
                floors: vec![0; cfg.shards],
                applied: vec![0; cfg.shards],
                repairs: vec![crate::route::Repairs::default(); cfg.shards],
                from: crate::route::ReplayFrom::Window,
            })
            .collect();
    }
    let fp = store::fingerprint(&cfg.agg);
    let n = cfg.shards;
    // One thread per owner: reading and decoding the chains is most of a start's time. A
    // panic while decoding is a bug (damage is reported as a problem, not a panic): it is
    // re-raised rather than hidden behind an empty store that would overwrite good links.
    let loaded: Vec<store::Loaded> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|o| scope.spawn(move || store::load(&cfg.data_dir, o, n, fp, &cfg.agg)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    for (o, l) in loaded.iter().enumerate() {
        for p in &l.problems {
            eprintln!("pixeld: shard {o}: aggregate store: {p}");
        }
        if let Some(s) = all_stats.get(o) {
            ShardStats::add(&s.agg.store_problems, l.problems.len() as u64);
        }
        match &l.applied {
            Some(a) => eprintln!(
                "pixeld: shard {o}: aggregates loaded from checkpoint {} (base {} + {} deltas, {} bytes, taken {:.0} s ago); \
                 the logs are replayed from offsets {a:?}",
                l.seq,
                l.base_seq,
                l.links.saturating_sub(1),
                l.base_bytes + l.delta_bytes,
                crate::sys::now_ns().saturating_sub(l.written_ns) as f64 / 1e9
            ),
            None => eprintln!(
                "pixeld: shard {o}: no usable checkpoint of the aggregates; they are rebuilt from what the logs hold"
            ),
        }
    }
    // Per source, per owner: the offset of the source's log the owner's state holds (None:
    // that owner loaded nothing, so the source replays its whole window).
    let holds: Vec<Vec<Option<u64>>> = (0..n)
        .map(|src| {
            loaded
                .iter()
                .map(|l| l.applied.as_ref().and_then(|a| a.get(src).copied()))
                .collect()
        })
        .collect();
    // Hours whose sealed file was lost: every log is replayed from its window's start, and
    // what lies below an owner's checkpoint is sent to it for those hours only.
    let repairs: Vec<crate::route::Repairs> = loaded
        .iter()
        .map(|l| crate::route::Repairs {
            hours: l.agg.repair_hours.clone(),
            days: l.agg.repair_days.clone(),
        })
        .collect();
    let repairing = repairs.iter().any(|r| !r.is_empty());
    for (o, r) in repairs.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
        eprintln!(
            "pixeld: shard {o}: {} sealed hour(s) and {} day(s) lost; every log is replayed from its start to recompute them",
            r.hours.len(),
            r.days.len()
        );
    }
    loaded
        .into_iter()
        .zip(holds)
        .enumerate()
        .map(|(o, (l, holds))| {
            let from = match holds.iter().copied().collect::<Option<Vec<u64>>>() {
                Some(_) if repairing => crate::route::ReplayFrom::Window,
                Some(f) => f.into_iter().min().map_or(
                    crate::route::ReplayFrom::Window,
                    crate::route::ReplayFrom::Offset,
                ),
                None => crate::route::ReplayFrom::Window,
            };
            ShardStore {
                writer: Some(store::Writer::new(&cfg.data_dir, o, n, fp, &l)),
                applied: l.applied.unwrap_or_else(|| vec![0; n]),
                agg: l.agg,
                floors: holds.iter().map(|h| h.unwrap_or(0)).collect(),
                repairs: repairs.clone(),
                from,
            }
        })
        .collect()
}

/// A shard's listeners: its UDP sockets (and the smallest receive buffer the kernel granted
/// any of them), TCP and HTTP listeners. One of each, unless systemd's file descriptor store
/// passed more (a restart with fewer shards than the stored sockets).
struct Bound {
    udp: Vec<glommio::net::UdpSocket>,
    granted: usize,
    tcp: Vec<glommio::net::TcpListener>,
    http: Vec<glommio::net::TcpListener>,
}

/// This shard's listeners: those systemd holds for it (socket activation, the file
/// descriptor store), and for each kind it holds none of, the configured address bound here
/// with SO_REUSEPORT (every shard its own socket), then handed to systemd's file descriptor
/// store when `store` is set, so that it outlives this process.
fn listeners(
    shard: usize,
    held: crate::server::activation::ShardSockets,
    addrs: [std::net::SocketAddr; 3],
    rcvbuf: usize,
    store: bool,
) -> Result<Bound, ShardFailure> {
    use crate::server::activation;
    let [udp, tcp, http] = addrs;
    let failed = |transport, addr| {
        move |source| ShardFailure::Bind {
            transport,
            addr,
            source,
        }
    };
    let keep = |kind: usize, fd: std::os::fd::BorrowedFd<'_>| {
        if store {
            if let Err(e) = activation::store(kind, fd) {
                eprintln!(
                    "pixeld: shard {shard}: cannot put the {} socket in systemd's file descriptor store ({e}); a restart will not keep what is queued in it",
                    activation::STORED_NAMES[kind]
                );
            }
        }
    };
    let mut bound = Bound {
        udp: Vec::new(),
        granted: usize::MAX,
        tcp: Vec::new(),
        http: Vec::new(),
    };
    if held.udp.is_empty() {
        let (s, granted) = crate::ingest::udp::bind(udp, rcvbuf).map_err(failed("UDP", udp))?;
        let s = std::net::UdpSocket::from(s);
        keep(0, std::os::fd::AsFd::as_fd(&s));
        bound
            .udp
            .push(glommio::net::UdpSocket::from(socket2::Socket::from(s)));
        bound.granted = granted;
    }
    for fd in held.udp {
        let s = socket2::Socket::from(std::net::UdpSocket::from(fd));
        let (s, granted) =
            crate::ingest::udp::adopt(s, rcvbuf).map_err(failed("activated UDP", udp))?;
        bound.udp.push(s);
        bound.granted = bound.granted.min(granted);
    }
    for (kind, addr, transport, held, out) in [
        (1, tcp, "TCP", held.tcp, &mut bound.tcp),
        (2, http, "HTTP", held.http, &mut bound.http),
    ] {
        let fds = if held.is_empty() {
            let fd = crate::ingest::tcp::bind(addr).map_err(failed(transport, addr))?;
            keep(kind, std::os::fd::AsFd::as_fd(&fd));
            vec![fd]
        } else {
            held
        };
        for fd in fds {
            out.push(crate::ingest::tcp::adopt(fd).map_err(failed(
                if kind == 1 {
                    "activated TCP"
                } else {
                    "activated HTTP"
                },
                addr,
            ))?);
        }
    }
    Ok(bound)
}

/// Waits until `shutdown` is set.
async fn stopped(shutdown: &AtomicBool) {
    while !shutdown.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_shard(
    shard: usize,
    log_cfg: crate::log::LogConfig,
    net: Listeners,
    stats: Arc<ShardStats>,
    shutdown: Arc<AtomicBool>,
    events: &crossbeam_channel::Sender<ShardEvent>,
) -> Result<(), ShardFailure> {
    // Join both meshes first: a shard that failed before joining would leave the others
    // waiting, so the joins give up on shutdown.
    let meshes = futures_lite::future::or(
        async {
            let route = net.route_mesh.join().await.ok()?;
            let query = net.query_mesh.join().await.ok()?;
            Some((route, query))
        },
        async {
            stopped(&shutdown).await;
            None
        },
    )
    .await;
    let Some(((route_tx, route_rx), (query_tx, query_rx))) = meshes else {
        return Err(ShardFailure::MeshNotJoined);
    };
    let (log, flusher, report) = Log::open(log_cfg, stats.clone()).await?;
    let flusher = glommio::spawn_local(flusher.run());
    // Ingest first: the aggregates start from the loaded checkpoint and catch up on the log
    // beside live ingest (see `route::rebuild`).
    let end = log.next_offset();
    let ShardStore {
        agg,
        writer,
        floors,
        applied,
        repairs,
        from,
    } = net.store;
    stats
        .agg
        .enabled
        .store(u64::from(agg.cfg.enabled), Ordering::Relaxed);
    let router = crate::route::Router::new(agg, Some(route_tx), stats.clone());
    router.start_catchup(end, floors, applied, repairs);
    router.spawn_receivers(route_rx);
    let hub = crate::query::Hub::new(router.agg.clone(), Some(query_tx));
    hub.set_rebuild(crate::query::rebuild::Setup {
        data_dir: net.data_dir.clone(),
        frontier: {
            let router = router.clone();
            Box::new(move || router.complete().then(|| router.applied_vector()))
        },
        all_stats: net.all_stats.clone(),
    });
    hub.spawn_responders(query_rx);
    if shutdown.load(Ordering::Relaxed) {
        log.close();
        return Ok(flusher.await?);
    }
    let ticker = glommio::spawn_local(router.clone().tick(shutdown.clone()));
    // Bind after recovery: nothing is accepted before the log is consistent. Sockets systemd
    // passed are already bound (and may have queued hits meanwhile).
    let Bound {
        udp,
        granted,
        tcp,
        http,
    } = listeners(
        shard,
        net.sockets,
        [net.udp, net.tcp, net.http],
        net.ingest.udp_rcvbuf,
        net.fd_store,
    )?;
    // Linux reports twice the size it was set to (it counts its bookkeeping) and caps the
    // setting at net.core.rmem_max.
    let usable = granted / 2;
    if usable < net.ingest.udp_rcvbuf {
        eprintln!(
            "pixeld: shard {shard}: UDP receive buffer: kernel granted {usable} of {} bytes asked (net.core.rmem_max caps it); install systemd/pixeld.sysctl.conf to avoid kernel drops in bursts",
            net.ingest.udp_rcvbuf
        );
    } else {
        eprintln!("pixeld: shard {shard}: UDP receive buffer: {usable} bytes");
    }
    let ingest = std::rc::Rc::new(crate::ingest::Ingest {
        log: log.clone(),
        stats: stats.clone(),
        cfg: net.ingest,
        router: router.clone(),
    });
    // One task per socket (more than one only from systemd's file descriptor store).
    let mut receivers = Vec::with_capacity(udp.len() + tcp.len() + http.len());
    for udp in udp {
        let ingest = ingest.clone();
        receivers.push(glommio::spawn_local(async move {
            // Other errors are retried (`ingest::udp`): this one says the socket itself is
            // unusable, and `run` has marked the shard unready.
            if let Err(e) = crate::ingest::udp::run(udp, ingest, usable).await {
                eprintln!(
                    "pixeld: shard {shard}: UDP receive stopped: {e}; this shard receives no UDP until pixeld restarts (/readyz says so)"
                );
            }
        }));
    }
    let http_ctx = std::rc::Rc::new(crate::http::HttpContext {
        shard,
        cfg: net.http_cfg,
        ingest: ingest.clone(),
        all_stats: net.all_stats.clone(),
        hub,
        log_api: net.log_api,
        export: net.export,
        visitor_ids: net.salts.map(crate::http::visitor::VisitorIds::new),
        keys: Some(net.keys),
        scans: net.scans,
    });
    for http in http {
        let http_ctx = http_ctx.clone();
        receivers.push(glommio::spawn_local(async move {
            if let Err(e) = crate::http::run(http, http_ctx).await {
                eprintln!("pixeld: shard {shard}: HTTP accept stopped: {e}");
            }
        }));
    }
    // TCP tasks stop by themselves on the shutdown flag (they drain open connections first).
    let mut tcp_tasks = Vec::with_capacity(tcp.len());
    for tcp in tcp {
        let (ingest, tcp_stop) = (ingest.clone(), shutdown.clone());
        tcp_tasks.push(glommio::spawn_local(async move {
            if let Err(e) = crate::ingest::tcp::run(tcp, ingest, tcp_stop).await {
                eprintln!("pixeld: shard {shard}: TCP accept stopped: {e}");
            }
        }));
    }
    stall_fault_hook(shard);
    stats
        .heartbeat_ns
        .store(crate::sys::now_ns(), Ordering::Relaxed);
    ShardStats::set_flag(&stats.ready, true);
    let _ = events.send(ShardEvent::Ready {
        shard,
        report: Box::new(report),
    });
    // Aggregation off: nothing to catch up on (the aggregates stay empty and incomplete).
    let catchup = writer.is_some().then(|| {
        let (router, log, stop, events, stats) = (
            router.clone(),
            log.clone(),
            shutdown.clone(),
            events.clone(),
            stats.clone(),
        );
        glommio::spawn_local(async move {
            match crate::route::rebuild(&router, &log, from, end, &stop).await {
                Ok(catchup) if router.complete() => {
                    stats.agg.complete.store(1, Ordering::Relaxed);
                    let _ = events.send(ShardEvent::CaughtUp { shard, catchup });
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = events.send(ShardEvent::Failed {
                        shard,
                        error: ShardFailure::Rebuild(e),
                    });
                }
            }
        })
    });
    // The checkpointer stops when the log does (a clean stop, or a failure of the log).
    let log_ended = Arc::new(AtomicBool::new(false));
    let checkpointer = writer.map(|writer| {
        glommio::spawn_local(crate::route::checkpoint::run(
            router.clone(),
            writer,
            net.all_stats.clone(),
            router.agg.borrow().cfg.checkpoint_interval,
            log_ended.clone(),
        ))
    });
    let watcher = {
        let log = log.clone();
        let shutdown = shutdown.clone();
        glommio::spawn_local(async move {
            while !shutdown.load(Ordering::Relaxed) {
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
            // Stop reading before the log stops taking lines: what the sockets still hold
            // stays in the kernel's queues, for the next process when systemd holds the
            // sockets (socket activation), instead of being read and refused as
            // `shutting_down`. (Each task waits at an await point, never inside a receive.)
            drop(receivers);
            // TCP stops by itself on the flag: it reads each open connection until its relay
            // closes it (bounded, `ingest::tcp::DRAIN_MAX`), since what an accepted
            // connection holds dies with this process.
            for t in tcp_tasks {
                t.await;
            }
            log.close();
        })
    };
    let result = flusher.await.map_err(ShardFailure::from);
    log_ended.store(true, Ordering::Relaxed);
    drop((watcher, ticker, catchup));
    // The last checkpoint, once this shard's log is synced (a failed log keeps the previous).
    if let Some(checkpointer) = checkpointer {
        let mut writer = checkpointer.await;
        if result.is_ok() {
            crate::route::checkpoint::at_stop(&router, &mut writer, &net.all_stats).await;
        }
    }
    result
}

/// Test-only fault hook (cargo feature `fault-injection`): `PIXELD_TEST_STALL_SHARD=N` blocks
/// shard N's thread one second after it is ready, as a stuck loop would (tests/serve/notify.rs
/// checks that pixeld then stops feeding the systemd watchdog).
#[cfg(feature = "fault-injection")]
fn stall_fault_hook(shard: usize) {
    let stall = std::env::var("PIXELD_TEST_STALL_SHARD").ok();
    if stall.and_then(|v| v.parse::<usize>().ok()) == Some(shard) {
        eprintln!("pixeld: shard {shard}: PIXELD_TEST_STALL_SHARD set: stalling this shard in 1 s");
        glommio::spawn_local(async {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            std::thread::sleep(Duration::from_secs(3600));
        })
        .detach();
    }
}

#[cfg(not(feature = "fault-injection"))]
fn stall_fault_hook(_shard: usize) {}
