//! The durable log: one per shard, append-only, segmented, CRC-checked and zstd-compressed.
//!
//! `config` holds a shard log's settings, `format` owns the bytes, `index` the sparse
//! per-segment index, `segment` the files of a shard directory (open and sealed segments, the
//! clean-shutdown marker, durable small writes), `writer` appends on a glommio shard with
//! O_DIRECT I/O, `recovery` brings a shard's directory back to a clean state at start (wired
//! in [`Log::open`] here, so the writer never calls it), `reader` reads it from anywhere (replay, check), `fetch` bounds those reads
//! to durable records for the HTTP log API, and `retention` decides what to delete. Only this module touches segment files.

pub mod config;
pub mod fetch;
pub mod format;
pub mod index;
pub mod ndjson;
pub mod reader;
pub mod recovery;
pub mod retention;
pub mod segment;
pub mod writer;

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

pub use config::{Fsync, LogConfig};
pub use format::{Codec, RecordRef, Source, Transport};
use recovery::RecoveryReport;
pub use writer::{AppendError, Flusher, Log, SPARE_BUILDERS};

use crate::metrics::ShardStats;

/// Errors of the log subsystem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{}: fdatasync failed: {source}; the shard is poisoned and accepts nothing more \
         (a failed fsync may have lost written pages: check the disk, then restart pixeld)",
        path.display()
    )]
    Poisoned { path: PathBuf, source: io::Error },
    #[error("{}: corrupt batch at byte {position}: {reason}", segment.display())]
    Corrupt {
        segment: PathBuf,
        position: u64,
        reason: String,
    },
}

impl Error {
    pub fn io(path: &Path, source: io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl Log {
    /// Recovers the shard's directory and opens it for appending. Must run on a glommio
    /// executor; spawn [`Flusher::run`] next, or nothing is ever written. Recovery is wired
    /// here, not in the writer, so that the writer never imports it.
    pub async fn open(
        cfg: LogConfig,
        stats: Arc<ShardStats>,
    ) -> Result<(Rc<Log>, Flusher, RecoveryReport), Error> {
        let (recovered, report) = recovery::recover(&cfg, &stats).await?;
        let corrupt = report
            .corrupt
            .iter()
            .map(|(p, r)| (p.clone(), r.position))
            .collect();
        let (log, flusher) = Log::assemble(cfg, stats, recovered, corrupt)?;
        Ok((log, flusher, report))
    }
}
