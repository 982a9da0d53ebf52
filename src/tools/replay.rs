//! `pixeld replay`: streams a data dir's records to a writer, shard by shard in offset order.
//!
//! Reads a live data dir safely through [`ShardReader`] (sealed segments mapped, the open one
//! read up to its last complete batch). Raw output is the bytes plus LF, so `pixeld replay |
//! grep` works; NDJSON carries shard, offset, receive time, source and the line, with
//! `line_b64` instead of `line` when the bytes are not valid UTF-8, so nothing is mangled.

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::log::ndjson::{describe_warning, ndjson_line};
use crate::log::reader::{self, ShardReader, Start, Warning};
use crate::log::{Error, RecordRef};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFormat {
    Raw,
    Ndjson,
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub data_dir: PathBuf,
    pub shard: Option<usize>,
    pub start: Start,
    /// Stop a shard at its first record received after this time (ns).
    pub to_time: Option<u64>,
    pub format: ReplayFormat,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub records: u64,
    pub shards: usize,
    pub warnings: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Log(#[from] Error),
    #[error("no shard {shard} in {}", dir.display())]
    NoShard { shard: usize, dir: PathBuf },
    #[error("no data dir at {}", .0.display())]
    NoDataDir(PathBuf),
    #[error("writing output: {0}")]
    Output(io::Error),
}

/// Streams records to `out`; warnings (corrupt ranges skipped, gaps) go to `warn`.
/// A closed pipe on `out` (e.g. `| head`) ends the replay quietly.
pub fn replay(
    opts: &ReplayOptions,
    out: &mut dyn Write,
    warn: &mut dyn FnMut(String),
) -> Result<ReplayStats, ReplayError> {
    if !opts.data_dir.is_dir() {
        return Err(ReplayError::NoDataDir(opts.data_dir.clone()));
    }
    let shards = reader::list_shards(&opts.data_dir)?;
    let selected: Vec<(usize, PathBuf)> = match opts.shard {
        Some(n) => {
            let s: Vec<_> = shards.into_iter().filter(|(i, _)| *i == n).collect();
            if s.is_empty() {
                return Err(ReplayError::NoShard {
                    shard: n,
                    dir: opts.data_dir.clone(),
                });
            }
            s
        }
        None => shards,
    };
    let mut stats = ReplayStats::default();
    for (shard, dir) in selected {
        stats.shards += 1;
        let mut io_error: Option<io::Error> = None;
        replay_shard(
            shard,
            &dir,
            opts,
            &mut |rec| {
                let res = match opts.format {
                    ReplayFormat::Raw => {
                        out.write_all(rec.bytes).and_then(|()| out.write_all(b"\n"))
                    }
                    ReplayFormat::Ndjson => writeln!(out, "{}", ndjson_line(shard, &rec)),
                };
                match res {
                    Ok(()) => {
                        stats.records += 1;
                        ControlFlow::Continue(())
                    }
                    Err(e) => {
                        io_error = Some(e);
                        ControlFlow::Break(())
                    }
                }
            },
            &mut |w| {
                stats.warnings += 1;
                warn(describe_warning(shard, &w));
            },
        )?;
        if let Some(e) = io_error {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return Ok(stats);
            }
            return Err(ReplayError::Output(e));
        }
    }
    out.flush().or_else(|e| {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Ok(())
        } else {
            Err(ReplayError::Output(e))
        }
    })?;
    Ok(stats)
}

fn replay_shard(
    _shard: usize,
    dir: &Path,
    opts: &ReplayOptions,
    visit: &mut dyn FnMut(RecordRef<'_>) -> ControlFlow<()>,
    warn: &mut dyn FnMut(Warning),
) -> Result<(), Error> {
    let reader = ShardReader::new(dir, 4096);
    reader.read(
        opts.start,
        |rec| {
            if opts.to_time.is_some_and(|t| rec.recv_ts > t) {
                return ControlFlow::Break(());
            }
            visit(rec)
        },
        warn,
    )
}
