//! The durable log: one per shard, append-only, segmented, CRC-checked and zstd-compressed.
//!
//! `format` owns the bytes, `index` the sparse per-segment index, `writer` appends on a
//! glommio shard with O_DIRECT I/O, `recovery` brings a shard's directory back to a clean
//! state at start, `reader` reads it from anywhere (replay, check), `fetch` bounds those reads
//! to durable records for the HTTP log API, and `retention` decides what to delete. Only this module touches segment files.

pub mod fetch;
pub mod format;
pub mod index;
pub mod reader;
pub mod recovery;
pub mod retention;
pub mod writer;

use std::io;
use std::path::{Path, PathBuf};

pub use format::{Codec, RecordRef, Source, Transport};
pub use writer::{AppendError, Fsync, Log, LogConfig};

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
