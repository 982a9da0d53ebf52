//! What one shard's log is configured with: where it lives, how batches are sealed,
//! compressed and made durable, when segments roll and what retention keeps. Built from the
//! validated `[log]` section (`config.rs`) or by [`LogConfig::new`] for tests and tools; it
//! holds values only, so every part of `log/` can take it without importing the writer.

use std::path::PathBuf;
use std::time::Duration;

use super::format::Codec;
use super::retention::{Retention, RetentionPin};

/// When appended data is made durable with fdatasync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Never explicitly: the OS writes back when it likes (kill -9 safe, not power-loss safe).
    Never,
    /// Group commit: at most this long after a write (default 50 ms).
    Interval(Duration),
    /// After every write of one or more batches, before anything is reported durable.
    EveryBatch,
}

/// Everything the log of one shard needs to know; built from the validated config.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub shard: usize,
    pub codec: Codec,
    pub zstd_level: i32,
    pub batch_max_bytes: usize,
    pub batch_max_delay: Duration,
    pub fsync: Fsync,
    pub segment_max_bytes: u64,
    pub segment_max_age: Duration,
    pub index_interval_bytes: u64,
    /// Bound on sealed batches waiting for the disk (uncompressed bytes).
    pub max_pending_bytes: usize,
    pub max_record_bytes: usize,
    pub retention: Retention,
    /// The lowest offset a consumer with `retention_pin` still has to read (set by the
    /// consumer store; default: no pin).
    pub retention_pin: RetentionPin,
    /// Pinned segments are deleted anyway while the log is larger than this (None: never).
    pub retention_bytes_hard: Option<u64>,
}

impl LogConfig {
    /// Defaults for tests and tools: the same values as the documented config.
    pub fn new(dir: impl Into<PathBuf>, shard: usize) -> Self {
        LogConfig {
            dir: dir.into(),
            shard,
            codec: Codec::Zstd,
            zstd_level: 1,
            batch_max_bytes: 1 << 20,
            batch_max_delay: Duration::from_millis(10),
            fsync: Fsync::Interval(Duration::from_millis(50)),
            segment_max_bytes: 256 << 20,
            segment_max_age: Duration::from_secs(3600),
            index_interval_bytes: 4096,
            max_pending_bytes: 64 << 20,
            max_record_bytes: 1 << 20,
            retention: Retention {
                max_age: Some(Duration::from_secs(7 * 86400)),
                max_bytes: None,
            },
            retention_pin: RetentionPin::default(),
            retention_bytes_hard: None,
        }
    }
}
