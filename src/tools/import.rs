//! `pixeld import`: appends lines from files or stdin to one shard's log, offline.
//!
//! For backfilling nginx access-log files, for benchmarks, and for crash tests: it recovers
//! the shard exactly as `serve` does, appends every LF-terminated line as one record (the LF
//! removed, every other byte kept; empty lines are skipped and counted), waits for the final
//! fsync, and can report each new durable offset on stdout as it is published
//! (`durable <offset>`), after a first line `start <offset>` naming the first offset it
//! appends at. It takes the data-dir lock, so it never runs beside a `serve` on the same dir.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use crate::config::Config;
use crate::datadir::{lock_data_dir, DataDirError};
use crate::log::{AppendError, Log, Source};
use crate::metrics::ShardStats;
use crate::sys::now_ns;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Lock(#[from] DataDirError),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(#[from] crate::log::Error),
    #[error("cannot start the executor: {0}")]
    Executor(String),
    #[error("append refused: {0}")]
    Append(AppendError),
    #[error("cannot open the consumer store: {0}")]
    Consumers(#[from] crate::consumers::ConsumerError),
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub shard: usize,
    /// Files to read in order; "-" is stdin. Empty means stdin.
    pub inputs: Vec<PathBuf>,
    /// Print `start N` and then `durable N` lines on stdout.
    pub report_durable: bool,
    /// Print progress on stderr every second.
    pub progress: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ImportSummary {
    pub records: u64,
    pub bytes: u64,
    pub empty_lines: u64,
    pub first_offset: u64,
    pub durable_offset: Option<u64>,
    pub elapsed: Duration,
}

const CHUNK: usize = 1 << 20;

/// Runs the import to the end of its inputs.
pub fn import(cfg: &Config, opts: &ImportOptions) -> Result<ImportSummary, ImportError> {
    if opts.shard >= cfg.shards {
        eprintln!(
            "pixeld import: shard {} is beyond shards = {}: `serve` will not append to it, \
             but `replay` and `check` read it",
            opts.shard, cfg.shards
        );
    }
    let _lock = lock_data_dir(&cfg.data_dir)?;
    let mut log_cfg = cfg.log.for_shard(&cfg.data_dir, opts.shard);
    // Retention runs during an import too: it must respect pinned consumers as `serve` does.
    let consumers =
        crate::consumers::ConsumerStore::open(&cfg.data_dir, cfg.shards.max(opts.shard + 1))?;
    log_cfg.retention_pin = consumers.pin(opts.shard);
    let opts = opts.clone();
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("pixeld-import")
        .spawn(move || async move { run(log_cfg, opts).await })
        .map_err(|e| ImportError::Executor(e.to_string()))?
        .join()
        .map_err(|e| ImportError::Executor(e.to_string()))?
}

type Input = Box<dyn Read + Send>;

async fn run(
    log_cfg: crate::log::LogConfig,
    opts: ImportOptions,
) -> Result<ImportSummary, ImportError> {
    let started = Instant::now();
    let stats = Arc::new(ShardStats::default());
    let (log, flusher, _report) = Log::open(log_cfg, stats).await?;
    let flusher = glommio::spawn_local(flusher.run());
    let first_offset = log.next_offset();
    let mut summary = ImportSummary {
        first_offset,
        ..ImportSummary::default()
    };
    if opts.report_durable {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "start {first_offset}");
        let _ = out.flush();
    }
    let reporter = opts.report_durable.then(|| {
        let log = log.clone();
        glommio::spawn_local(report_durable(log, first_offset))
    });
    let inputs = if opts.inputs.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        opts.inputs.clone()
    };
    let mut last_progress = Instant::now();
    for path in inputs {
        let input: Input = if path.as_os_str() == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(std::fs::File::open(&path).map_err(|e| ImportError::Read {
                path: path.clone(),
                source: e,
            })?)
        };
        let mut reader = Some(input);
        let mut carry: Vec<u8> = Vec::new();
        loop {
            // Blocking reads run on glommio's blocking pool, so the flusher keeps its timers.
            let Some(r) = reader.take() else { break };
            let (r, chunk) = glommio::executor()
                .spawn_blocking(move || {
                    let mut r = r;
                    let mut buf = vec![0u8; CHUNK];
                    let res = r.read(&mut buf).map(|n| {
                        buf.truncate(n);
                        buf
                    });
                    (r, res)
                })
                .await;
            let chunk = chunk.map_err(|e| ImportError::Read {
                path: path.clone(),
                source: e,
            })?;
            if chunk.is_empty() {
                break;
            }
            reader = Some(r);
            carry.extend_from_slice(&chunk);
            let mut start = 0;
            while let Some(i) = carry[start..].iter().position(|&b| b == b'\n') {
                let line = &carry[start..start + i];
                append_line(&log, line, &mut summary).await?;
                start += i + 1;
            }
            carry.drain(..start);
            if opts.progress && last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                eprintln!(
                    "pixeld import: {} records, {} MiB, {:.0} records/s",
                    summary.records,
                    summary.bytes >> 20,
                    summary.records as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        if !carry.is_empty() {
            // A last line without its LF is still a line.
            append_line(&log, &carry, &mut summary).await?;
        }
    }
    log.close();
    flusher.await?;
    if let Some(r) = reporter {
        r.await;
    }
    summary.durable_offset = log.durable_offset();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

async fn append_line(log: &Rc<Log>, line: &[u8], s: &mut ImportSummary) -> Result<(), ImportError> {
    if line.is_empty() {
        s.empty_lines += 1;
        return Ok(());
    }
    loop {
        match log.append(now_ns(), Source::IMPORT, 0, line) {
            Ok(_) => break,
            // An offline import waits for the disk instead of dropping.
            Err(AppendError::Backpressure) => {
                log.wait_for_space().await.map_err(ImportError::Append)?;
            }
            Err(AppendError::DiskFull) => glommio::timer::sleep(Duration::from_millis(100)).await,
            Err(e) => return Err(ImportError::Append(e)),
        }
    }
    s.records += 1;
    s.bytes += line.len() as u64;
    glommio::yield_if_needed().await;
    Ok(())
}

async fn report_durable(log: Rc<Log>, first: u64) {
    let mut next = first;
    while let Ok(durable) = log.wait_durable(next).await {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "durable {durable}");
        let _ = out.flush();
        next = durable + 1;
    }
}
