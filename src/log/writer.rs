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
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::io::{DmaFile, OpenOptions};

use super::format::{self, BatchBuilder, BatchEncoder, BatchHeader, Codec, Source};
use super::index::{IndexBuilder, SegmentSummary};
use super::recovery::{self, RecoveryReport};
use super::retention::{self, Retention, RetentionPin};
use super::{now_ns, os_error, Error};
use crate::metrics::{DropReason, ShardStats};

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
            batch_max_bytes: 256 << 10,
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
    /// Recovers the shard's directory and opens it for appending. Must run on a glommio
    /// executor; spawn [`Flusher::run`] next, or nothing is ever written.
    pub async fn open(
        cfg: LogConfig,
        stats: Arc<ShardStats>,
    ) -> Result<(Rc<Log>, Flusher, RecoveryReport), Error> {
        let (recovered, report) = recovery::recover(&cfg, &stats).await?;
        let next = recovered.next_offset;
        if next > 0 {
            stats.set_durable_offset(next - 1);
        }
        let (wake, wake_rx) = local_channel::new_bounded(1);
        let log = Rc::new(Log {
            shared: RefCell::new(Shared {
                builder: BatchBuilder::default(),
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
            reported_corrupt: RefCell::new(
                report
                    .corrupt
                    .iter()
                    .map(|(p, r)| (p.clone(), r.position))
                    .collect(),
            ),
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
        };
        Ok((log, flusher, report))
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
                    super::recovery::report_corrupt(
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
            seal_open_batch(&mut sh);
        }
        drop(sh);
        if first_in_batch || full {
            // Wake the flusher to arm the batch timer or write the full batch; a full
            // channel means it is already woken.
            let _ = self.wake.try_send(());
        }
        Ok(offset)
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

fn seal_open_batch(sh: &mut Shared) {
    let fresh = sh.spare.pop().unwrap_or_default();
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

/// A sealed segment the flusher knows about (for retention).
#[derive(Debug, Clone)]
pub(crate) struct SealedSegment {
    pub summary: SegmentSummary,
    pub path: PathBuf,
    pub index_path: PathBuf,
}

/// The segment being appended to, owned by the flusher.
pub(crate) struct OpenSegment {
    pub file: DmaFile,
    pub path: PathBuf,
    pub base_offset: u64,
    /// Logical length: the end of the last complete batch.
    pub len: u64,
    /// The bytes from the last aligned block boundary to `len`.
    pub tail: Vec<u8>,
    pub index: IndexBuilder,
    /// Receive time of the segment's first record (for `segment_max_age`).
    pub first_ts: Option<u64>,
}

impl OpenSegment {
    pub(crate) async fn create(dir: &Path, base_offset: u64, interval: u64) -> Result<Self, Error> {
        let path = dir.join(format::segment_file_name(base_offset));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .dma_open(&path)
            .await
            .map_err(|e| Error::io(&path, os_error(e)))?;
        sync_dir(dir).await?;
        Ok(OpenSegment {
            file,
            path,
            base_offset,
            len: 0,
            tail: Vec::new(),
            index: IndexBuilder::new(base_offset, interval),
            first_ts: None,
        })
    }

    /// Writes `bytes` after the logical end with one aligned O_DIRECT write that also
    /// rewrites the partial block before it.
    async fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let align = self.file.alignment().max(512);
        let start = self.len - self.tail.len() as u64;
        let total = self.tail.len() + bytes.len();
        let padded = total.div_ceil(align as usize) * align as usize;
        let mut buf = self.file.alloc_dma_buffer(padded);
        {
            let dst = buf.as_bytes_mut();
            dst[..self.tail.len()].copy_from_slice(&self.tail);
            dst[self.tail.len()..total].copy_from_slice(bytes);
            dst[total..].fill(0);
        }
        let new_len = self.len + bytes.len() as u64;
        let new_tail_start = new_len - new_len % align;
        let keep_from = (new_tail_start - start) as usize;
        let new_tail = buf.as_bytes()[keep_from..total].to_vec();
        let written = self.file.write_at(buf, start).await.map_err(os_error)?;
        if written < padded {
            // A short O_DIRECT write means the device ran out of space.
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.len = new_len;
        self.tail = new_tail;
        Ok(())
    }
}

async fn sync_dir(dir: &Path) -> Result<(), Error> {
    let d = glommio::io::Directory::open(dir)
        .await
        .map_err(|e| Error::io(dir, os_error(e)))?;
    d.sync().await.map_err(|e| Error::io(dir, os_error(e)))?;
    d.close().await.map_err(|e| Error::io(dir, os_error(e)))
}

/// Writes a small file (an index) durably: DMA write to `<path>.tmp`, fdatasync, rename,
/// directory fsync. Readers never see a half-written file.
pub(crate) async fn write_file_durably(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&tmp)
        .await
        .map_err(|e| Error::io(&tmp, os_error(e)))?;
    let align = file.alignment().max(512) as usize;
    let padded = bytes.len().div_ceil(align).max(1) * align;
    let mut buf = file.alloc_dma_buffer(padded);
    buf.as_bytes_mut()[..bytes.len()].copy_from_slice(bytes);
    buf.as_bytes_mut()[bytes.len()..].fill(0);
    let io_err = |e: glommio::GlommioError<()>| Error::io(&tmp, os_error(e));
    let n = file.write_at(buf, 0).await.map_err(io_err)?;
    if n < padded {
        return Err(Error::io(&tmp, io::Error::from_raw_os_error(libc::ENOSPC)));
    }
    file.truncate(bytes.len() as u64).await.map_err(io_err)?;
    file.fdatasync().await.map_err(io_err)?;
    file.close().await.map_err(io_err)?;
    glommio::io::rename(&tmp, path)
        .await
        .map_err(|e| Error::io(path, os_error(e)))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    sync_dir(dir).await
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
}

/// Test-only fault hook: `PIXELD_TEST_FAIL_FSYNC_AFTER=N` (optionally `N@SHARD`) makes the
/// (N+1)-th fdatasync of the open segment fail, as a disk that lost written pages would, so
/// that the suite can check the poisoning path (`tests/log/fsync_failure.rs`). Read once, at
/// open; unset in production.
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
                    seal_open_batch(&mut sh);
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
            log.shared.borrow_mut().spare.push(b);
            if bytes.len() >= GROUP_MAX_BYTES {
                break;
            }
        }
        if batches.is_empty() {
            self.out = bytes;
            return Ok(None);
        }
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
        let marker = self.log.cfg.dir.join(super::recovery::CLEAN_MARKER);
        if let Err(e) = write_file_durably(&marker, &index.encode()).await {
            eprintln!(
                "pixeld: shard {}: no clean-shutdown marker ({e}); the next start scans the newest segment",
                self.log.cfg.shard
            );
        }
        Ok(())
    }
}
