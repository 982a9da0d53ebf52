//! The in-process pipeline benchmark: pre-generated nginx lines fed straight into the shard
//! pipeline — no sockets — on one shard (one core) and on two shards (two cores), reporting
//! events/s for each and the ratio (issue 5's target: two shards ≥ 1.8 × one).
//!
//! Each shard is what `pixeld serve` runs, minus the socket: a glommio executor pinned to its
//! own CPU with a real log (batch → zstd → CRC → O_DIRECT write, in a directory under
//! `target/`), its router joined to the real routing mesh (glommio SPSC rings), receiving
//! tasks applying what peers send, and the ticker. The feed is the TCP receive loop's body:
//! an LF-framed stream cut into 64 KiB reads, decoded by `FrameDecoder`, each frame through
//! `Ingest::line` (syslog header, `Log::append_pushback`, `Router::record_message`:
//! event parse, routing, local aggregate updates gathered over the read and applied
//! together, `Router::gather`), then `Router::flush` after each read,
//! waiting while the log is congested — exactly what `ingest::tcp` does after `read`. Every
//! shard gets its own share of the lines, as `SO_REUSEPORT` spreads connections. A run ends
//! when every line is appended, every increment sent across a ring has been applied by its
//! owner, and every log is closed (written and fsynced).
//!
//! It is a benchmark, never a test. Two figures come out: criterion's events/s for
//! `pipeline/1-shard` and `pipeline/2-shards`, and, printed first, a direct comparison over a
//! few runs with the CPU-seconds the shard threads used per million events (getrusage: the
//! stable figure on a shared machine), each shard's on-CPU share, the wall-clock ratio, and
//! (one shard) the time the next start's `route::rebuild` takes to replay the log written.
//!
//! Run: `cargo bench --bench pipeline` (`PIXELD_BENCH_EVENTS=N` changes the 400 000 events
//! per run; `PIXELD_BENCH_SHARDS=1` or `2` runs only that configuration in the direct
//! comparison, for a profiler; `PIXELD_BENCH_REBUILD=0` leaves the rebuild out). Under `cargo test --all-targets` (no `--bench`) it only
//! checks that both configurations run, on 20 000 events.
//!
//! Instructions per event, which this shared VM cannot blur: one shard under
//! `valgrind --tool=callgrind` with `PIXELD_BENCH_SHARDS=1 PIXELD_BENCH_REBUILD=0` and
//! `PIXELD_BENCH_EVENTS=20000`, then `60000`; the difference between the two runs of the
//! shard thread's inclusive count (`callgrind_annotate --inclusive=yes`, the `start_thread`
//! line of the shard's thread; the program's total also counts the lines this benchmark
//! generates, ≈ 1 600 per event) is the work of 5 × 40 000 events. Not for two shards:
//! callgrind runs one thread at a time, and the instructions an idle executor spends polling
//! would count.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glommio::{LocalExecutorBuilder, Placement};
use pixeld::agg::{AggConfig, Aggregates};
use pixeld::ingest::framing::{Event, FrameDecoder, Framing};
use pixeld::ingest::{Ingest, IngestConfig};
use pixeld::log::{LogConfig, Transport};
use pixeld::metrics::ShardStats;
use pixeld::route::{mesh, now_minute, Router, BATCH_INCS};
use pixeld::tools::gen::HitGenerator;

/// The size of one socket read in `ingest::tcp`.
const READ_CHUNK: usize = 64 << 10;

fn events() -> usize {
    std::env::var("PIXELD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400_000)
}

/// One LF-framed stream per shard, `n` lines in all, event times inside the last half hour
/// (as live traffic), with nginx's RFC 3164 syslog header.
fn streams(n: usize, shards: usize) -> Vec<Vec<u8>> {
    let now_ms = (now_minute() * 60_000) as u64;
    let mut g = HitGenerator::new(7, now_ms - 30 * 60_000);
    let mut out = vec![Vec::new(); shards];
    let mut line = Vec::new();
    for i in 0..n {
        g.next_line(&mut line);
        let s = &mut out[i % shards];
        s.extend_from_slice(b"<190>Nov 22 01:39:03 pixel: ");
        s.extend_from_slice(&line);
        s.push(b'\n');
    }
    out
}

/// What one run measured.
struct Run {
    wall: Duration,
    /// The shard threads' CPU time during the run, summed.
    cpu: Duration,
    /// The busiest shard thread's CPU time: the wall time the run would take if every shard
    /// had a core to itself and never waited.
    busiest: Duration,
    /// Each shard's share of a core while it ran: its thread's CPU time over its wall time.
    /// Below 100 % the shard waited (for a peer, for the disk) or, on a shared machine, was
    /// descheduled.
    on_cpu: Vec<f64>,
    /// Per shard: (voluntary, involuntary) context switches, and (waits for a full ring,
    /// time spent in them).
    switches: Vec<(i64, i64)>,
    waits: Vec<(u64, Duration)>,
    /// One shard only: the time `route::rebuild` took to replay the log just written into
    /// fresh aggregates, as at the next start, and how many records it replayed.
    rebuild: Option<(Duration, u64)>,
}

/// What getrusage tells of the calling thread: user + system CPU time, and the voluntary
/// (it waited) and involuntary (it was preempted) context switches.
#[allow(unsafe_code)]
fn thread_usage() -> (Duration, i64, i64) {
    // SAFETY: rusage is plain data for which all-zero is valid; getrusage only writes it.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime) + tv(ru.ru_stime), ru.ru_nvcsw, ru.ru_nivcsw)
}

/// Feeds `streams` (one per shard) through `streams.len()` shards; returns the time from the
/// moment every shard is ready to the moment the last one is done.
fn run(streams: &Arc<Vec<Vec<u8>>>) -> Run {
    let shards = streams.len();
    let cpus = pixeld::sys::allowed_cpus();
    let route_mesh = mesh(shards);
    let all_stats: Arc<Vec<Arc<ShardStats>>> = Arc::new(
        (0..shards)
            .map(|_| Arc::new(ShardStats::default()))
            .collect(),
    );
    let fed = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(shards + 1));
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let mut joins = Vec::new();
    for shard in 0..shards {
        let streams = streams.clone();
        let (route_mesh, all_stats, fed, start) = (
            route_mesh.clone(),
            all_stats.clone(),
            fed.clone(),
            start.clone(),
        );
        let tmp_dir = tmp.path().to_path_buf();
        let dir = tmp_dir.join(format!("shard-{shard:03}"));
        let join = LocalExecutorBuilder::new(Placement::Fixed(cpus[shard % cpus.len()]))
            .spawn(move || async move {
                let stats = all_stats[shard].clone();
                let (tx, rx) = route_mesh.join().await.expect("join the mesh");
                let (log, flusher, _) =
                    pixeld::log::Log::open(LogConfig::new(dir, shard), stats.clone())
                        .await
                        .expect("open the log");
                let flusher = glommio::spawn_local(flusher.run());
                let router = Router::new(
                    Aggregates::new(AggConfig::default()),
                    Some(tx),
                    stats.clone(),
                );
                router.spawn_receivers(rx);
                let stop = Arc::new(AtomicBool::new(false));
                let ticker = glommio::spawn_local(router.clone().tick(stop.clone()));
                let ingest = Rc::new(Ingest {
                    log: log.clone(),
                    stats: stats.clone(),
                    cfg: IngestConfig::default(),
                    router: router.clone(),
                });
                let peer = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 5514)));
                let mut decoder = FrameDecoder::new(Framing::Line, ingest.cfg.max_line_bytes);
                let stream = &streams[shard];
                start.wait();
                let t0 = Instant::now();
                let usage0 = thread_usage();
                // `pos..end` is what the decoder has not consumed of what was "read" so far.
                let (mut pos, mut end) = (0, 0);
                while end < stream.len() {
                    // Push back like a TCP connection: read nothing while the log is congested.
                    while log.is_congested() {
                        log.wait_for_space().await.expect("log space");
                    }
                    end = (end + READ_CHUNK).min(stream.len());
                    let now = pixeld::sys::now_ns();
                    // The frames' own increments are applied together, as in `ingest::tcp`.
                    let gathered = ingest.router.gather();
                    pos += decoder.decode(&stream[pos..end], |ev| {
                        if let Event::Frame(f) = ev {
                            stats.count_received(Transport::Tcp, 1, 0);
                            // A refusal is counted by `line`, as in `ingest::tcp`.
                            let _ = ingest.line(Transport::Tcp, peer, f, now);
                        }
                    });
                    drop(gathered);
                    ingest.router.flush(BATCH_INCS).await;
                    // A socket read awaits its io_uring completion, which lets the shard's
                    // other tasks run: the receivers that drain the rings from its peers and
                    // the log's flusher. Without a socket, this is that cooperation point
                    // (glommio yields when I/O completions or timers are pending).
                    glommio::yield_if_needed().await;
                }
                router.flush(1).await;
                fed.fetch_add(1, Ordering::SeqCst);
                // Done when every shard has fed its lines and every increment sent over a
                // ring has been applied by its owner.
                loop {
                    let sent: u64 = all_stats
                        .iter()
                        .map(|s| ShardStats::get(&s.agg.sent_incs))
                        .sum();
                    let applied: u64 = all_stats
                        .iter()
                        .map(|s| ShardStats::get(&s.agg.applied_incs))
                        .sum();
                    if fed.load(Ordering::SeqCst) == shards && sent == applied {
                        break;
                    }
                    glommio::timer::sleep(Duration::from_micros(200)).await;
                }
                log.close();
                flusher.await.expect("flusher");
                let elapsed = t0.elapsed();
                let usage = thread_usage();
                let cpu = usage.0 - usage0.0;
                let switches = (usage.1 - usage0.1, usage.2 - usage0.2);
                let waits = (
                    ShardStats::get(&stats.agg.ring_full_waits),
                    Duration::from_nanos(ShardStats::get(&stats.agg.ring_wait_nanos)),
                );
                stop.store(true, Ordering::Relaxed);
                ticker.await;
                assert_eq!(ShardStats::get(&stats.agg.lost_incs), 0);
                // The next start's rebuild of this log (one shard: no peers to wait for;
                // `PIXELD_BENCH_REBUILD=0` leaves it out, for a profile of the run alone).
                let mut rebuild = None;
                if shards == 1 && std::env::var("PIXELD_BENCH_REBUILD").as_deref() != Ok("0") {
                    let stats = Arc::new(ShardStats::default());
                    let cfg = LogConfig::new(tmp_dir.join(format!("shard-{shard:03}")), shard);
                    let (log, flusher, _) = pixeld::log::Log::open(cfg, stats.clone())
                        .await
                        .expect("reopen the log");
                    let flusher = glommio::spawn_local(flusher.run());
                    let router = Router::new(Aggregates::new(AggConfig::default()), None, stats);
                    let t = Instant::now();
                    let end = log.next_offset();
                    let replayed = pixeld::route::rebuild(
                        &router,
                        &log,
                        pixeld::route::ReplayFrom::Window,
                        end,
                        &AtomicBool::new(false),
                    )
                    .await
                    .expect("rebuild")
                    .replayed;
                    rebuild = Some((t.elapsed(), replayed));
                    log.close();
                    flusher.await.expect("flusher");
                }
                (elapsed, cpu, rebuild, switches, waits)
            })
            .expect("spawn a shard");
        joins.push(join);
    }
    start.wait();
    let done: Vec<_> = joins
        .into_iter()
        .map(|j| j.join().expect("shard thread"))
        .collect();
    Run {
        wall: done.iter().map(|d| d.0).max().unwrap_or_default(),
        cpu: done.iter().map(|d| d.1).sum(),
        busiest: done.iter().map(|d| d.1).max().unwrap_or_default(),
        on_cpu: done
            .iter()
            .map(|d| d.1.as_secs_f64() / d.0.as_secs_f64().max(1e-9))
            .collect(),
        switches: done.iter().map(|d| d.3).collect(),
        waits: done.iter().map(|d| d.4).collect(),
        rebuild: done.iter().find_map(|d| d.2),
    }
}

fn bench(c: &mut Criterion) {
    // `cargo test --all-targets` runs benches without `--bench` (criterion's test mode, every
    // function once): there a small feed checks that the pipeline runs, and the direct
    // comparison is skipped.
    let measuring = std::env::args().any(|a| a == "--bench");
    let n = if measuring { events() } else { 20_000 };
    let one = Arc::new(streams(n, 1));
    let two = Arc::new(streams(n, 2));
    // The direct comparison, with CPU time (criterion reports wall-clock only).
    // PIXELD_BENCH_SHARDS=1 or 2 runs only that configuration (for profiling it).
    let only: Option<usize> = std::env::var("PIXELD_BENCH_SHARDS")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut rates = [vec![f64::NAN], vec![f64::NAN]];
    let mut capacities = [vec![f64::NAN], vec![f64::NAN]];
    for _ in 0..if measuring { 5 } else { 0 } {
        for (k, s) in [&one, &two].into_iter().enumerate() {
            if only.is_some_and(|o| o != k + 1) {
                continue;
            }
            let r = run(s);
            let rate = n as f64 / r.wall.as_secs_f64();
            let cpu_per_m = r.cpu.as_secs_f64() * 1e6 / n as f64;
            let on_cpu: Vec<String> = r
                .on_cpu
                .iter()
                .map(|s| format!("{:.0} %", s * 100.0))
                .collect();
            eprintln!(
                "pipeline: {} shard(s): {n} events in {:.3} s = {:.0} events/s, {cpu_per_m:.2} CPU-s per million events, each shard on CPU {}",
                k + 1,
                r.wall.as_secs_f64(),
                rate,
                on_cpu.join(" / ")
            );
            for (shard, (sw, w)) in r.switches.iter().zip(&r.waits).enumerate() {
                eprintln!(
                    "pipeline:   shard {shard}: {} voluntary / {} involuntary context switches, {} waits for a full ring ({:.3} s)",
                    sw.0,
                    sw.1,
                    w.0,
                    w.1.as_secs_f64()
                );
            }
            if let Some((t, replayed)) = r.rebuild {
                eprintln!(
                    "pipeline: rebuild of that log: {replayed} records in {:.3} s = {:.0} records/s",
                    t.as_secs_f64(),
                    replayed as f64 / t.as_secs_f64()
                );
            }
            rates[k].retain(|r| !r.is_nan());
            rates[k].push(rate);
            capacities[k].retain(|r| !r.is_nan());
            capacities[k].push(n as f64 / r.busiest.as_secs_f64().max(1e-9));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    if measuring {
        let (r1, r2) = (median(&mut rates[0]), median(&mut rates[1]));
        eprintln!(
            "pipeline: median 1 shard {r1:.0} events/s, 2 shards {r2:.0} events/s, ratio {:.2}",
            r2 / r1
        );
        // On a shared machine the shards are descheduled (see "on CPU"); events per
        // CPU-second of the busiest shard is the rate each shard on a core of its own would
        // reach.
        let (c1, c2) = (median(&mut capacities[0]), median(&mut capacities[1]));
        eprintln!(
            "pipeline: median events per CPU-second of the busiest shard: 1 shard {c1:.0}, 2 shards {c2:.0}, ratio {:.2}",
            c2 / c1
        );
    } else {
        eprintln!("pipeline: test mode (no --bench): {n} events per run, no direct comparison");
    }

    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    group.throughput(Throughput::Elements(n as u64));
    for (name, s) in [("1-shard", &one), ("2-shards", &two)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run(s).wall).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
