//! Per-shard counters and gauges, shared with the rest of the process without locks.
//!
//! Each shard owns one [`ShardStats`] and is its only writer; other threads (the supervisor,
//! later the HTTP `/metrics` endpoint) read it. Plain relaxed atomics: counters are updated
//! once per batch or per event on the shard's own cache lines, never through a lock. Every
//! drop has a counter with a bounded reason, and the counters add up:
//! received = appended + dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

/// Why an event was not appended. Bounded: these are the only `reason` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The write-behind queue was full: the disk is slower than ingest.
    Backpressure,
    /// The disk is full; appending resumes by itself when space returns.
    DiskFull,
    /// The shard is poisoned by a failed fsync and accepts nothing.
    Poisoned,
    /// The record is larger than `max_record_bytes`.
    Oversize,
    /// The shard is shutting down.
    ShuttingDown,
}

impl DropReason {
    pub const ALL: [DropReason; 5] = [
        DropReason::Backpressure,
        DropReason::DiskFull,
        DropReason::Poisoned,
        DropReason::Oversize,
        DropReason::ShuttingDown,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Backpressure => "backpressure",
            DropReason::DiskFull => "disk_full",
            DropReason::Poisoned => "poisoned",
            DropReason::Oversize => "oversize",
            DropReason::ShuttingDown => "shutting_down",
        }
    }
    fn slot(self) -> usize {
        self as usize
    }
}

/// Counters of one shard's log.
#[derive(Debug, Default)]
pub struct ShardStats {
    pub appended_events: CachePadded<AtomicU64>,
    pub appended_bytes: AtomicU64,
    pub written_bytes: AtomicU64,
    pub batches: AtomicU64,
    pub fsyncs: AtomicU64,
    pub fsync_nanos: AtomicU64,
    /// durable offset + 1; 0 when nothing is durable yet.
    durable_next: AtomicU64,
    pub segments_rolled: AtomicU64,
    pub segments_deleted: AtomicU64,
    pub bytes_deleted: AtomicU64,
    pub truncated_bytes: AtomicU64,
    pub corrupt_ranges: AtomicU64,
    pub indexes_rebuilt: AtomicU64,
    dropped: [AtomicU64; 5],
    pub ready: AtomicBool,
    pub poisoned: AtomicBool,
    pub disk_full: AtomicBool,
}

impl ShardStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn count_drop(&self, reason: DropReason, n: u64) {
        self.dropped[reason.slot()].fetch_add(n, Ordering::Relaxed);
    }
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.slot()].load(Ordering::Relaxed)
    }
    pub fn dropped_total(&self) -> u64 {
        DropReason::ALL.iter().map(|r| self.dropped(*r)).sum()
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
    /// The highest offset that survives kill -9 and power loss, if any.
    pub fn durable_offset(&self) -> Option<u64> {
        self.durable_next.load(Ordering::Acquire).checked_sub(1)
    }
    pub fn set_durable_offset(&self, offset: u64) {
        self.durable_next.store(offset + 1, Ordering::Release);
    }
    pub fn flag(flag: &AtomicBool) -> bool {
        flag.load(Ordering::Relaxed)
    }
    pub fn set_flag(flag: &AtomicBool, v: bool) {
        flag.store(v, Ordering::Relaxed);
    }
}
