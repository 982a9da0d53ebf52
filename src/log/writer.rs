//! The append path of one shard's log, running on that shard's glommio executor.
//!
//! [`Log::append`] is the hot path: it encodes a record into the open batch in memory and
//! returns its offset, with no I/O, no lock and no await. A [`Flusher`] task on the same
//! executor seals batches (at `batch_max_bytes` or after `batch_max_delay`), compresses them,
//! writes them with O_DIRECT through glommio's io_uring `DmaFile`, applies the fsync policy,
//! publishes the durable offset, rolls segments and applies retention. While the flusher waits
//! for the disk, appends go on into the next batch; the queue between them is bounded, and a
//! full queue hands the refusal back to the caller, who counts the drop.
//!
//! O_DIRECT writes must cover whole aligned blocks, but batches are not padded on disk: the
//! writer keeps the last partial block in memory and rewrites it, zero-padded, with the next
//! batch. A crash can therefore leave up to one block of zeros after the last batch, which
//! recovery trims. A failed fdatasync poisons the log for good (no retry: the kernel may have
//! dropped the dirty pages); ENOSPC only pauses it, and the write is retried when space returns.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use super::config::{Fsync, LogConfig};
use super::format::{self, BatchBuilder, BatchEncoder, BatchHeader, Source};
use super::index::SegmentSummary;
use super::retention;
use super::segment::{write_file_durably, OpenSegment, Recovered, SealedSegment, CLEAN_MARKER};
use super::Error;
use crate::metrics::{DropReason, ShardStats};
use crate::sys::{now_ns, os_error};

/// Why an append was refused. The record was not stored; the caller counts the drop under
/// [`AppendError::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("record is larger than max_record_bytes")]
    Oversize,
    #[error("write-behind queue is full (the disk is slower than ingest)")]
    Backpressure,
    #[error("disk is full; appending resumes when space is freed")]
    DiskFull,
    #[error("shard is poisoned by a failed fsync")]
    Poisoned,
    #[error("log is closing")]
    Closing,
}

impl AppendError {
    pub fn reason(self) -> DropReason {
        match self {
            AppendError::Oversize => DropReason::Oversize,
            AppendError::Backpressure => DropReason::Backpressure,
            AppendError::DiskFull => DropReason::DiskFull,
            AppendError::Poisoned => DropReason::Poisoned,
            AppendError::Closing => DropReason::ShuttingDown,
        }
    }
}

/// State shared between appenders and the flusher, all on one executor thread.
struct Shared {
    builder: BatchBuilder,
    batch_opened: Instant,
    next_offset: u64,
    pending: VecDeque<(u64, BatchBuilder)>,
    pending_bytes: usize,
    spare: Vec<BatchBuilder>,
    /// One past the last record written to the file (not necessarily durable).
    written_next: u64,
    /// One past the last durable record.
    durable_next: u64,
    disk_full: bool,
    poisoned: bool,
    closing: bool,
    closed: bool,
    /// Tasks waiting for a durable offset.
    waiters: Vec<Waker>,
    /// Tasks waiting for room in the write-behind queue.
    space_waiters: Vec<Waker>,
}

/// The append side of a shard's log. Shared by the shard's tasks through `Rc`.
pub struct Log {
    shared: RefCell<Shared>,
    cfg: LogConfig,
    stats: Arc<ShardStats>,
    wake: LocalSender<()>,
    /// Corrupt ranges already reported (segment, byte position), so that one found again by
    /// a later read of this shard (the rebuild, an API reader) is not counted twice.
    reported_corrupt: RefCell<std::collections::HashSet<(std::path::PathBuf, u64)>>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("shard", &self.cfg.shard)
            .finish()
    }
}

impl Log {
    /// Opens the log for appending on top of what recovery left (`Log::open`, in `mod.rs`,
    /// runs recovery first: the writer never calls it). `corrupt` lists the ranges recovery
    /// already reported, so that a later read does not count them again.
    pub(crate) fn assemble(
        cfg: LogConfig,
        stats: Arc<ShardStats>,
        recovered: Recovered,
        corrupt: std::collections::HashSet<(PathBuf, u64)>,
    ) -> Result<(Rc<Log>, Flusher), Error> {
        let next = recovered.next_offset;
        if next > 0 {
            stats.set_durable_offset(next - 1);
        }
        let (wake, wake_rx) = local_channel::new_bounded(1);
        let log = Rc::new(Log {
            shared: RefCell::new(Shared {
                builder: BatchBuilder::with_capacity(builder_room(cfg.batch_max_bytes)),
                batch_opened: Instant::now(),
                next_offset: next,
                pending: VecDeque::new(),
                pending_bytes: 0,
                spare: Vec::new(),
                written_next: next,
                durable_next: next,
                disk_full: false,
                poisoned: false,
                closing: false,
                closed: false,
                waiters: Vec::new(),
                space_waiters: Vec::new(),
            }),
            stats: stats.clone(),
            wake,
            cfg: cfg.clone(),
            reported_corrupt: RefCell::new(corrupt),
        });
        let encoder =
            BatchEncoder::new(cfg.codec, cfg.zstd_level).map_err(|e| Error::io(&cfg.dir, e))?;
        let flusher = Flusher {
            log: log.clone(),
            seg: recovered.open,
            sealed: recovered.sealed,
            encoder,
            out: Vec::new(),
            retry: None,
            wake_rx,
            last_sync: Instant::now(),
            last_retention: None,
            fail_fsync_after: fsync_fault_hook(cfg.shard),
            hold_writes: hold_writes_hook(cfg.shard),
        };
        Ok((log, flusher))
    }

    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }

    /// Reports what a read of this shard's log skipped (`during` says which read): a corrupt
    /// range is logged and counted in `pixeld_log_corrupt_ranges_total` once, however many
    /// reads meet it. Recovery trusts a sealed segment whose index matches its length without
    /// reading it, so damage inside one is found by the first read that decodes it.
    pub fn report_read_warning(&self, w: &super::reader::Warning, during: &str) {
        use super::reader::Warning;
        let shard = self.cfg.shard;
        match w {
            Warning::Corrupt { segment, range } => {
                let new = self
                    .reported_corrupt
                    .borrow_mut()
                    .insert((segment.clone(), range.position));
                if new {
                    super::reader::report_corrupt(
                        shard,
                        &self.stats,
                        segment,
                        range,
                        &format!("while {during}"),
                    );
                }
            }
            Warning::BadIndex { path, reason } => eprintln!(
                "pixeld: shard {shard}: index {} unusable while {during} ({reason}); scanned its segment instead",
                path.display()
            ),
            Warning::Gap { from, to } => eprintln!(
                "pixeld: shard {shard}: offsets {from}..{to} missing between segments, found while {during} (lost to earlier damage); run `pixeld check`"
            ),
        }
    }

    pub fn stats(&self) -> &Arc<ShardStats> {
        &self.stats
    }

    /// Appends one record and returns its offset. Never blocks and never awaits: the record
    /// is in the open batch in memory and becomes durable later (see [`Log::wait_durable`]).
    pub fn append(
        &self,
        recv_ts: u64,
        source: Source,
        flags: u8,
        bytes: &[u8],
    ) -> Result<u64, AppendError> {
        self.append_within(self.cfg.max_pending_bytes, recv_ts, source, flags, bytes)
    }

    /// Like [`Log::append`], for sources that push back (TCP, HTTP): they stop reading while
    /// [`Log::is_congested`], so the records of a read already in progress are accepted up to
    /// twice `max_pending_bytes` instead of being dropped.
    pub fn append_pushback(
        &self,
        recv_ts: u64,
        source: Source,
        flags: u8,
        bytes: &[u8],
    ) -> Result<u64, AppendError> {
        self.append_within(
            self.cfg.max_pending_bytes.saturating_mul(2),
            recv_ts,
            source,
            flags,
            bytes,
        )
    }

    /// Whether the write-behind queue is at its bound: a source that can push back should
    /// wait ([`Log::wait_for_space`]) before it reads more.
    pub fn is_congested(&self) -> bool {
        let sh = self.shared.borrow();
        sh.pending_bytes >= self.cfg.max_pending_bytes || sh.disk_full
    }

    fn append_within(
        &self,
        max_pending: usize,
        recv_ts: u64,
        source: Source,
        flags: u8,
        bytes: &[u8],
    ) -> Result<u64, AppendError> {
        let mut sh = self.shared.borrow_mut();
        if sh.poisoned {
            return Err(AppendError::Poisoned);
        }
        if sh.closing {
            return Err(AppendError::Closing);
        }
        if bytes.len() > self.cfg.max_record_bytes {
            return Err(AppendError::Oversize);
        }
        if sh.disk_full {
            return Err(AppendError::DiskFull);
        }
        if sh.pending_bytes >= max_pending {
            return Err(AppendError::Backpressure);
        }
        let first_in_batch = sh.builder.is_empty();
        if first_in_batch {
            sh.batch_opened = Instant::now();
        }
        sh.builder.push(recv_ts, source, flags, bytes);
        let offset = sh.next_offset;
        sh.next_offset += 1;
        let full = sh.builder.payload_len() >= self.cfg.batch_max_bytes;
        if full {
            seal_open_batch(&mut sh, self.cfg.batch_max_bytes);
        }
        drop(sh);
        if first_in_batch || full {
            // Wake the flusher to arm the batch timer or write the full batch; a full
            // channel means it is already woken.
            let _ = self.wake.try_send(());
        }
        Ok(offset)
    }

    /// Heap bytes held by the batch builders (see [`SPARE_BUILDERS`]).
    pub fn buffer_bytes(&self) -> usize {
        buffer_bytes(&self.shared.borrow())
    }

    /// The offset the next appended record will get.
    pub fn next_offset(&self) -> u64 {
        self.shared.borrow().next_offset
    }

    /// The highest durable offset, if any record is durable.
    pub fn durable_offset(&self) -> Option<u64> {
        self.shared.borrow().durable_next.checked_sub(1)
    }

    /// Waits until `offset` is durable. Fails if the log is poisoned or closed first.
    pub fn wait_durable(&self, offset: u64) -> DurableWait<'_> {
        DurableWait { log: self, offset }
    }

    /// Waits until the write-behind queue has room again (for appenders that can push back on
    /// their source, such as a TCP connection, instead of dropping). Fails if the log is
    /// poisoned, full on disk or closing, which waiting would not fix.
    pub fn wait_for_space(&self) -> SpaceWait<'_> {
        SpaceWait { log: self }
    }

    /// Asks the flusher to write everything, fsync and stop; appends are refused from now on.
    pub fn close(&self) {
        self.shared.borrow_mut().closing = true;
        let _ = self.wake.try_send(());
    }

    fn wake_waiters(&self) {
        let (waiters, space) = {
            let mut sh = self.shared.borrow_mut();
            (
                std::mem::take(&mut sh.waiters),
                std::mem::take(&mut sh.space_waiters),
            )
        };
        for w in waiters.into_iter().chain(space) {
            w.wake();
        }
    }

    fn wake_space_waiters(&self) {
        let space = std::mem::take(&mut self.shared.borrow_mut().space_waiters);
        for w in space {
            w.wake();
        }
    }
}

/// Room a new builder is given: a batch is sealed once its payload reaches
/// `batch_max_bytes`, so it holds that less one byte plus its last record; a record longer
/// than the margin grows it.
fn builder_room(batch_max_bytes: usize) -> usize {
    batch_max_bytes.saturating_add(64 << 10)
}

/// Emptied builders kept for the next batches. A batch in flight needs one, so a steady flow
/// rarely needs more than a few; a burst that filled `max_pending_bytes` with sealed batches
/// leaves many more behind (64 of ≈ 1 MiB at the defaults), and those beyond this many are
/// freed instead of being held for good.
pub const SPARE_BUILDERS: usize = 4;

/// Heap bytes held by the batch builders: the open one, the sealed ones waiting for the
/// disk, and the spares.
fn buffer_bytes(sh: &Shared) -> usize {
    sh.builder.capacity()
        + sh.pending.iter().map(|(_, b)| b.capacity()).sum::<usize>()
        + sh.spare.iter().map(BatchBuilder::capacity).sum::<usize>()
}

fn seal_open_batch(sh: &mut Shared, batch_max_bytes: usize) {
    let fresh = sh
        .spare
        .pop()
        .unwrap_or_else(|| BatchBuilder::with_capacity(builder_room(batch_max_bytes)));
    let full = std::mem::replace(&mut sh.builder, fresh);
    let base = sh.next_offset - u64::from(full.len());
    sh.pending_bytes += full.payload_len();
    sh.pending.push_back((base, full));
}

/// Future returned by [`Log::wait_durable`].
pub struct DurableWait<'a> {
    log: &'a Log,
    offset: u64,
}

impl Future for DurableWait<'_> {
    type Output = Result<u64, AppendError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut sh = self.log.shared.borrow_mut();
        if sh.durable_next > self.offset {
            return Poll::Ready(Ok(sh.durable_next - 1));
        }
        if sh.poisoned {
            return Poll::Ready(Err(AppendError::Poisoned));
        }
        if sh.closed {
            return Poll::Ready(Err(AppendError::Closing));
        }
        sh.waiters.push(cx.waker().clone());
        Poll::Pending
    }
}

/// Future returned by [`Log::wait_for_space`].
pub struct SpaceWait<'a> {
    log: &'a Log,
}

impl Future for SpaceWait<'_> {
    type Output = Result<(), AppendError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut sh = self.log.shared.borrow_mut();
        if sh.poisoned || sh.closed {
            return Poll::Ready(Err(AppendError::Poisoned));
        }
        if sh.closing {
            return Poll::Ready(Err(AppendError::Closing));
        }
        if sh.pending_bytes < self.log.cfg.max_pending_bytes && !sh.disk_full {
            return Poll::Ready(Ok(()));
        }
        sh.space_waiters.push(cx.waker().clone());
        Poll::Pending
    }
}

fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// The task that turns sealed batches into durable bytes. Owns the open segment.
pub struct Flusher {
    log: Rc<Log>,
    pub(crate) seg: OpenSegment,
    pub(crate) sealed: VecDeque<SealedSegment>,
    encoder: BatchEncoder,
    out: Vec<u8>,
    /// A write group that failed for lack of space, retried when space returns.
    retry: Option<Group>,
    wake_rx: LocalReceiver<()>,
    last_sync: Instant,
    last_retention: Option<Instant>,
    /// Test-only fault hook: fdatasyncs left before one fails (`PIXELD_TEST_FAIL_FSYNC_AFTER`).
    fail_fsync_after: Option<u64>,
    /// Test-only fault hook: no write while this file exists (`PIXELD_TEST_HOLD_WRITES`).
    hold_writes: Option<std::path::PathBuf>,
}

/// Test-only fault hook: `PIXELD_TEST_HOLD_WRITES=PATH` holds every write of the log (not the
/// appends to its memory) while PATH exists, as a disk that stalls would, so that the suite
/// can fill the write-behind queue and check what the ingest paths do under backpressure
/// (`tests/ingest/pixel.rs`, the pixel's overload modes). A closing log is never held.
#[cfg(feature = "fault-injection")]
fn hold_writes_hook(shard: usize) -> Option<std::path::PathBuf> {
    let path = std::path::PathBuf::from(std::env::var_os("PIXELD_TEST_HOLD_WRITES")?);
    eprintln!(
        "pixeld: shard {shard}: PIXELD_TEST_HOLD_WRITES set: no log write while {} exists",
        path.display()
    );
    Some(path)
}

/// Without the `fault-injection` feature no write is ever held.
#[cfg(not(feature = "fault-injection"))]
fn hold_writes_hook(_shard: usize) -> Option<std::path::PathBuf> {
    None
}

/// Test-only fault hook: `PIXELD_TEST_FAIL_FSYNC_AFTER=N` (optionally `N@SHARD`) makes the
/// (N+1)-th fdatasync of the open segment fail, as a disk that lost written pages would, so
/// that the suite can check the poisoning path (`tests/log/fsync_failure.rs`). Read once, at
/// open; unset in production.
#[cfg(feature = "fault-injection")]
fn fsync_fault_hook(shard: usize) -> Option<u64> {
    let v = std::env::var("PIXELD_TEST_FAIL_FSYNC_AFTER").ok()?;
    let (n, only) = match v.split_once('@') {
        Some((n, s)) => (n, s.parse::<usize>().ok()),
        None => (v.as_str(), None),
    };
    if only.is_some_and(|s| s != shard) {
        return None;
    }
    let n = n.parse().ok()?;
    eprintln!(
        "pixeld: shard {shard}: PIXELD_TEST_FAIL_FSYNC_AFTER set: fdatasync number {} will fail",
        n + 1
    );
    Some(n)
}

/// Without the `fault-injection` feature no fdatasync is ever made to fail.
#[cfg(not(feature = "fault-injection"))]
fn fsync_fault_hook(_shard: usize) -> Option<u64> {
    None
}

/// Encoded batches written with one O_DIRECT write: under load several pending batches are
/// written together, which divides the per-write kernel cost; at low load a group is one batch.
pub(crate) struct Group {
    /// Each batch's header and its start within `bytes`.
    batches: Vec<(BatchHeader, usize)>,
    bytes: Vec<u8>,
}

impl Group {
    fn records(&self) -> u64 {
        self.batches
            .iter()
            .map(|(h, _)| u64::from(h.record_count))
            .sum()
    }
}

/// Compressed bytes after which a write group is closed.
const GROUP_MAX_BYTES: usize = 1 << 20;
const RETENTION_EVERY: Duration = Duration::from_secs(10);
const DISK_FULL_RETRY: Duration = Duration::from_millis(500);

impl Flusher {
    /// Runs until the log is closed (Ok, after a final fsync) or fails (the error says why;
    /// the log is poisoned and refuses appends).
    pub async fn run(mut self) -> Result<(), Error> {
        let result = self.run_inner().await;
        {
            let mut sh = self.log.shared.borrow_mut();
            sh.closed = true;
            if result.is_err() {
                sh.poisoned = true;
                ShardStats::set_flag(&self.log.stats.poisoned, true);
            }
        }
        ShardStats::set_flag(&self.log.stats.ready, false);
        self.log.wake_waiters();
        result
    }

    async fn run_inner(&mut self) -> Result<(), Error> {
        let log = self.log.clone();
        let cfg = &log.cfg;
        loop {
            if let Some(gate) = &self.hold_writes {
                if gate.exists() && !log.shared.borrow().closing {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
            if let Some(group) = self.retry.take() {
                if !self.write_group(group).await? {
                    if log.shared.borrow().closing {
                        // Shutting down on a full disk: what cannot be written is counted.
                        self.drop_unwritable();
                        return self.finish().await;
                    }
                    glommio::timer::sleep(DISK_FULL_RETRY).await;
                }
                continue;
            }
            if let Some(group) = self.take_group()? {
                if !self.write_group(group).await? {
                    glommio::timer::sleep(DISK_FULL_RETRY).await;
                }
                continue;
            }
            let (written, durable, closing) = {
                let sh = log.shared.borrow();
                (sh.written_next, sh.durable_next, sh.closing)
            };
            if written > durable {
                let due = match cfg.fsync {
                    Fsync::EveryBatch => true,
                    Fsync::Interval(i) => closing || self.last_sync.elapsed() >= i,
                    Fsync::Never => closing,
                };
                if due {
                    self.sync().await?;
                    continue;
                }
            }
            if self
                .last_retention
                .is_none_or(|t| t.elapsed() >= RETENTION_EVERY)
            {
                self.apply_retention().await?;
                self.last_retention = Some(Instant::now());
            }
            if closing {
                return self.finish().await;
            }
            // Sleep until the open batch or an fsync is due, or an appender wakes us.
            let mut wait = RETENTION_EVERY;
            {
                let sh = log.shared.borrow();
                if !sh.builder.is_empty() {
                    wait = wait.min(
                        cfg.batch_max_delay
                            .saturating_sub(sh.batch_opened.elapsed()),
                    );
                }
                if let (Fsync::Interval(i), true) = (cfg.fsync, written > durable) {
                    wait = wait.min(i.saturating_sub(self.last_sync.elapsed()));
                }
            }
            if !wait.is_zero() {
                let rx = &self.wake_rx;
                let _ = glommio::timer::timeout(wait, async {
                    rx.recv().await;
                    Ok(())
                })
                .await;
            }
        }
    }

    /// Seals the open batch when it is due, then encodes pending batches into one write
    /// group (up to [`GROUP_MAX_BYTES`]). None when there is nothing to write.
    fn take_group(&mut self) -> Result<Option<Group>, Error> {
        let log = self.log.clone();
        let cfg = &log.cfg;
        let mut bytes = std::mem::take(&mut self.out);
        bytes.clear();
        let mut batches = Vec::new();
        loop {
            let work = {
                let mut sh = log.shared.borrow_mut();
                if sh.pending.is_empty()
                    && !sh.builder.is_empty()
                    && (sh.closing || sh.batch_opened.elapsed() >= cfg.batch_max_delay)
                {
                    seal_open_batch(&mut sh, cfg.batch_max_bytes);
                }
                let work = sh.pending.pop_front();
                if let Some((_, b)) = &work {
                    sh.pending_bytes -= b.payload_len();
                }
                work
            };
            let Some((base, mut b)) = work else { break };
            let start = bytes.len();
            let h = self
                .encoder
                .encode(&mut b, base, &mut bytes)
                .map_err(|e| Error::io(&self.seg.path, e))?;
            batches.push((h, start));
            let mut sh = log.shared.borrow_mut();
            if sh.spare.len() < SPARE_BUILDERS {
                sh.spare.push(b);
            }
            if bytes.len() >= GROUP_MAX_BYTES {
                break;
            }
        }
        if batches.is_empty() {
            self.out = bytes;
            return Ok(None);
        }
        log.stats
            .log_buffer_bytes
            .store(buffer_bytes(&log.shared.borrow()) as u64, Ordering::Relaxed);
        log.wake_space_waiters();
        Ok(Some(Group { batches, bytes }))
    }

    /// Writes a group of encoded batches, rolling the segment first when it is due. Returns
    /// false when the disk is full (the group is kept for a retry).
    async fn write_group(&mut self, group: Group) -> Result<bool, Error> {
        let cfg = self.log.cfg.clone();
        let Some(&(first, _)) = group.batches.first() else {
            return Ok(true);
        };
        let aged = self
            .seg
            .first_ts
            .is_some_and(|t| now_ns().saturating_sub(t) >= cfg.segment_max_age.as_nanos() as u64);
        if self.seg.len > 0
            && (self.seg.len + group.bytes.len() as u64 > cfg.segment_max_bytes || aged)
        {
            self.roll(first.base_offset).await?;
        }
        let position = self.seg.len;
        match self.seg.append(&group.bytes).await {
            Ok(()) => {}
            Err(e) if is_disk_full(&e) => {
                if !self.log.shared.borrow().disk_full {
                    eprintln!(
                        "pixeld: shard {}: disk full writing {} ({e}); refusing appends until space is freed",
                        cfg.shard,
                        self.seg.path.display()
                    );
                }
                self.log.shared.borrow_mut().disk_full = true;
                ShardStats::set_flag(&self.log.stats.disk_full, true);
                self.retry = Some(group);
                return Ok(false);
            }
            Err(e) => return Err(Error::io(&self.seg.path, e)),
        }
        let stats = &self.log.stats;
        let mut next = first.base_offset;
        for (h, start) in &group.batches {
            self.seg.index.add(h, position + *start as u64);
            self.seg.first_ts.get_or_insert(h.min_ts);
            ShardStats::add(&stats.appended_bytes, u64::from(h.uncompressed_len));
            next = h.next_offset();
        }
        ShardStats::add(&stats.appended_events, group.records());
        ShardStats::add(&stats.written_bytes, group.bytes.len() as u64);
        ShardStats::add(&stats.batches, group.batches.len() as u64);
        {
            let mut sh = self.log.shared.borrow_mut();
            sh.written_next = next;
            if sh.disk_full {
                sh.disk_full = false;
                ShardStats::set_flag(&stats.disk_full, false);
                eprintln!(
                    "pixeld: shard {}: disk space is back; appending again",
                    cfg.shard
                );
                drop(sh);
                self.log.wake_space_waiters();
            }
        }
        self.out = group.bytes;
        Ok(true)
    }

    /// fdatasync of the open segment; publishes the durable offset. An error poisons.
    async fn sync(&mut self) -> Result<(), Error> {
        let written = self.log.shared.borrow().written_next;
        let t0 = Instant::now();
        let result = match &mut self.fail_fsync_after {
            Some(0) => Err(std::io::Error::other(
                "injected by the test-only fault hook PIXELD_TEST_FAIL_FSYNC_AFTER",
            )),
            left => {
                if let Some(n) = left {
                    *n -= 1;
                }
                self.seg.file.fdatasync().await.map_err(os_error)
            }
        };
        if let Err(source) = result {
            return Err(Error::Poisoned {
                path: self.seg.path.clone(),
                source,
            });
        }
        self.last_sync = Instant::now();
        let stats = &self.log.stats;
        ShardStats::add(&stats.fsyncs, 1);
        ShardStats::add(&stats.fsync_nanos, t0.elapsed().as_nanos() as u64);
        stats.observe_fsync(t0.elapsed().as_secs_f64());
        self.publish_durable(written);
        Ok(())
    }

    fn publish_durable(&self, next: u64) {
        {
            let mut sh = self.log.shared.borrow_mut();
            if next <= sh.durable_next {
                return;
            }
            sh.durable_next = next;
        }
        self.log.stats.set_durable_offset(next - 1);
        self.log.wake_waiters();
    }

    /// Seals the open segment (exact length, fsync, index) and starts a new one at `next_base`.
    async fn roll(&mut self, next_base: u64) -> Result<(), Error> {
        let cfg = self.log.cfg.clone();
        self.finish().await?;
        let new = OpenSegment::create(&cfg.dir, next_base, cfg.index_interval_bytes).await?;
        let old = std::mem::replace(&mut self.seg, new);
        // The index is written after the next segment exists: a crash in between leaves a
        // sealed segment without an index, which recovery rebuilds.
        let index_path = cfg.dir.join(format::index_file_name(old.base_offset));
        let index = old.index.finish();
        write_file_durably(&index_path, &index.encode()).await?;
        let _ = old.file.close().await;
        ShardStats::add(&self.log.stats.segments_rolled, 1);
        self.sealed.push_back(SealedSegment {
            summary: index.summary,
            path: old.path,
            index_path,
        });
        self.last_retention = None;
        Ok(())
    }

    async fn apply_retention(&mut self) -> Result<(), Error> {
        let cfg = &self.log.cfg;
        let summaries: Vec<SegmentSummary> = self.sealed.iter().map(|s| s.summary).collect();
        let pin = cfg.retention_pin.get();
        let d = retention::segments_to_delete_pinned(
            &cfg.retention,
            &summaries,
            self.seg.len,
            now_ns(),
            pin,
            cfg.retention_bytes_hard,
        );
        for _ in 0..d.segments {
            let Some(s) = self.sealed.pop_front() else {
                break;
            };
            if pin.is_some_and(|p| s.summary.next_offset > p) {
                eprintln!(
                    "pixeld: shard {}: retention_bytes_hard: deleting {} (offsets {}..{}) although a consumer with retention_pin has not read it",
                    cfg.shard,
                    s.path.display(),
                    s.summary.base_offset,
                    s.summary.next_offset
                );
                ShardStats::add(&self.log.stats.pinned_segments_deleted, 1);
            }
            glommio::io::remove(&s.path)
                .await
                .map_err(|e| Error::io(&s.path, os_error(e)))?;
            let _ = glommio::io::remove(&s.index_path).await;
            eprintln!(
                "pixeld: shard {}: retention deleted {} (offsets {}..{}, {} bytes)",
                cfg.shard,
                s.path.display(),
                s.summary.base_offset,
                s.summary.next_offset,
                s.summary.segment_len
            );
            ShardStats::add(&self.log.stats.segments_deleted, 1);
            ShardStats::add(&self.log.stats.bytes_deleted, s.summary.segment_len);
        }
        Ok(())
    }

    /// Counts everything not yet written as dropped for lack of space (shutdown on a full disk).
    fn drop_unwritable(&mut self) {
        let mut n = self.retry.take().map_or(0, |g| g.records());
        let mut sh = self.log.shared.borrow_mut();
        n += sh
            .pending
            .iter()
            .map(|(_, b)| u64::from(b.len()))
            .sum::<u64>();
        n += u64::from(sh.builder.len());
        sh.pending.clear();
        sh.pending_bytes = 0;
        sh.builder = BatchBuilder::default();
        self.log.stats.count_drop(DropReason::DiskFull, n);
        eprintln!(
            "pixeld: shard {}: shutting down on a full disk: {n} records could not be written",
            self.log.cfg.shard
        );
    }

    /// Makes the open segment exact (no padding) and durable: truncate, fdatasync, publish.
    /// Used at a clean close and before a roll.
    async fn finish(&mut self) -> Result<(), Error> {
        let written = self.log.shared.borrow().written_next;
        let seg = &self.seg;
        let poison = |e: glommio::GlommioError<()>| Error::Poisoned {
            path: seg.path.clone(),
            source: os_error(e),
        };
        seg.file.truncate(seg.len).await.map_err(poison)?;
        seg.file.fdatasync().await.map_err(poison)?;
        self.publish_durable(written);
        // The clean-shutdown marker: the open segment's index at the length just synced, so
        // that the next start can skip scanning it (see `recovery`). Not fatal when it
        // cannot be written: the next start scans instead.
        let mut index = seg.index.snapshot().clone();
        index.summary.segment_len = seg.len;
        let marker = self.log.cfg.dir.join(CLEAN_MARKER);
        if let Err(e) = write_file_durably(&marker, &index.encode()).await {
            eprintln!(
                "pixeld: shard {}: no clean-shutdown marker ({e}); the next start scans the newest segment",
                self.log.cfg.shard
            );
        }
        Ok(())
    }
}
