//! Reading a shard's log from outside the writer: segment discovery, batch-by-batch scans with
//! validation, and record iteration by offset or by receive time.
//!
//! Used by `pixeld replay`, `pixeld check`, recovery (before the writer opens) and the HTTP
//! log API (through `fetch`). It only reads: sealed segments through memmap2 (they never change once
//! sealed; retention may unlink one, which is safe while it is mapped), the open (newest)
//! segment through `pread`, up to the last complete batch, because a live writer is still
//! appending to it. Corrupt ranges of sealed segments are skipped with a warning and the rest
//! stays readable; the newest segment ends at its first invalid batch (its torn tail).

use std::fs::File;
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{
    self, decode_batch, decode_header, verify_batch, BatchHeader, BatchScratch, FormatError,
    RecordRef, BATCH_MAGIC, HEADER_LEN,
};
use super::index::{IndexBuilder, SegmentIndex};
use super::Error;
use crate::metrics::ShardStats;

/// One segment file of a shard, as found in its directory.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    pub base_offset: u64,
    pub path: PathBuf,
    pub index_path: PathBuf,
}

/// Lists the segments of a shard directory in offset order. Files that are not segments or
/// indexes are returned separately so callers can warn about them.
pub fn list_segments(dir: &Path) -> Result<(Vec<SegmentFile>, Vec<PathBuf>), Error> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut segments = Vec::new();
    let mut foreign = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = format::parse_file_name(&name, "log") {
            segments.push(SegmentFile {
                base_offset: base,
                path: entry.path(),
                index_path: dir.join(format::index_file_name(base)),
            });
        } else if format::parse_file_name(&name, "idx").is_none()
            && !name.ends_with(".tmp")
            && name != super::segment::CLEAN_MARKER
        {
            foreign.push(entry.path());
        }
    }
    segments.sort_by_key(|s| s.base_offset);
    Ok((segments, foreign))
}

/// Lists `shard-NNN` directories under a data dir, in shard order.
pub fn list_shards(data_dir: &Path) -> Result<Vec<(usize, PathBuf)>, Error> {
    let rd = std::fs::read_dir(data_dir).map_err(|e| Error::io(data_dir, e))?;
    let mut shards = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(data_dir, e))?;
        if let Some(n) = format::parse_shard_dir_name(&entry.file_name().to_string_lossy()) {
            if entry.path().is_dir() {
                shards.push((n, entry.path()));
            }
        }
    }
    shards.sort();
    Ok(shards)
}

/// A range of bytes in a segment that holds no readable batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRange {
    /// Byte position in the segment where the range starts.
    pub position: u64,
    pub len: u64,
    /// The offset the next record was expected to have; records from here up to the next
    /// readable batch's base offset are unreadable.
    pub expected_offset: u64,
    /// The offset the next readable batch starts at (None when none follows).
    pub resumes_at: Option<u64>,
    pub reason: String,
}

/// What a scan of one segment found.
#[derive(Debug, Clone)]
pub struct ScanReport {
    pub index: SegmentIndex,
    pub batches: u64,
    /// End of the last valid batch.
    pub valid_end: u64,
    /// Corrupt ranges in the middle of the segment (each followed by a readable batch).
    pub corrupt: Vec<CorruptRange>,
    /// Bytes after the last valid batch that hold no valid batch (a torn tail or padding).
    pub tail: Option<CorruptRange>,
    /// Whether every byte of `tail` is zero (padding left by an O_DIRECT write).
    pub tail_is_zero: bool,
}

/// Scans every batch of a segment held in memory, validating lengths, CRCs and offset
/// contiguity. After an invalid batch the scan looks for the next valid batch (by magic and
/// CRC) so that corruption in the middle is reported and skipped, not mistaken for the end.
/// With `deep`, every batch is also decompressed and its records validated (for `check`).
pub fn scan_segment(bytes: &[u8], base_offset: u64, index_interval: u64, deep: bool) -> ScanReport {
    let mut scratch = BatchScratch::default();
    let mut builder = IndexBuilder::new(base_offset, index_interval);
    let mut pos = 0usize;
    let mut expected = base_offset;
    let mut batches = 0;
    let mut corrupt = Vec::new();
    let mut tail = None;
    let mut valid_end = 0usize;
    while pos < bytes.len() {
        let checked = check_batch_at(bytes, pos, expected).and_then(|h| {
            if deep {
                decode_batch(&bytes[pos..], &mut scratch).map_err(|e| e.to_string())?;
            }
            Ok(h)
        });
        match checked {
            Ok(h) => {
                builder.add(&h, pos as u64);
                batches += 1;
                expected = h.next_offset();
                pos += h.total_len();
                valid_end = pos;
            }
            Err(reason) => match resync(bytes, pos + 1, expected) {
                Some((next, h)) => {
                    corrupt.push(CorruptRange {
                        position: pos as u64,
                        len: (next - pos) as u64,
                        expected_offset: expected,
                        resumes_at: Some(h.base_offset),
                        reason,
                    });
                    expected = h.base_offset;
                    pos = next;
                }
                None => {
                    tail = Some(CorruptRange {
                        position: pos as u64,
                        len: (bytes.len() - pos) as u64,
                        expected_offset: expected,
                        resumes_at: None,
                        reason,
                    });
                    break;
                }
            },
        }
    }
    let tail_is_zero = tail
        .as_ref()
        .is_some_and(|t| bytes[t.position as usize..].iter().all(|&b| b == 0));
    builder.set_segment_len(valid_end as u64);
    ScanReport {
        index: builder.finish(),
        batches,
        valid_end: valid_end as u64,
        corrupt,
        tail,
        tail_is_zero,
    }
}

fn check_batch_at(bytes: &[u8], pos: usize, expected: u64) -> Result<BatchHeader, String> {
    let rest = bytes.get(pos..).unwrap_or_default();
    let h = verify_batch(rest).map_err(|e| e.to_string())?;
    if h.base_offset != expected {
        return Err(format!(
            "batch base offset {} where {} was expected",
            h.base_offset, expected
        ));
    }
    Ok(h)
}

/// Finds the next position at or after `from` holding a valid batch whose base offset is not
/// below `expected`.
fn resync(bytes: &[u8], from: usize, expected: u64) -> Option<(usize, BatchHeader)> {
    let mut at = from;
    while at + HEADER_LEN <= bytes.len() {
        let window = bytes.get(at..)?;
        let i = window.windows(4).position(|w| w == BATCH_MAGIC)?;
        let cand = at + i;
        if let Ok(h) = verify_batch(&bytes[cand..]) {
            if h.base_offset >= expected {
                return Some((cand, h));
            }
        }
        at = cand + 1;
    }
    None
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Beginning,
    Offset(u64),
    /// The first record received at or after this time (ns since the epoch).
    Time(u64),
}

/// Where a [`ShardReader::read_resumable`] stopped: the segment, the byte position of the
/// batch holding the record it stopped at, and that batch's base offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub segment_base: u64,
    pub pos: u64,
    pub expected: u64,
}

/// Something a reader skipped and wants the caller to report.
#[derive(Debug, Clone)]
pub enum Warning {
    Corrupt {
        segment: PathBuf,
        range: CorruptRange,
    },
    /// An index was unusable; the segment was scanned from its start instead.
    BadIndex { path: PathBuf, reason: String },
    /// A gap in offsets between two segments (records lost to earlier corruption or a crash).
    Gap { from: u64, to: u64 },
}

/// Reads one shard's log. Cheap to create; every read re-lists the directory so that it sees
/// segments rolled and deleted since.
#[derive(Debug, Clone)]
pub struct ShardReader {
    pub dir: PathBuf,
    index_interval: u64,
}

enum SegmentData {
    Mapped(memmap2::Mmap),
    Open { file: File, len: u64, buf: Vec<u8> },
    Empty,
}

impl SegmentData {
    fn len(&self) -> u64 {
        match self {
            SegmentData::Empty => 0,
            SegmentData::Mapped(m) => m.len() as u64,
            SegmentData::Open { len, .. } => *len,
        }
    }

    /// The position and base offset of the next valid batch after an invalid one at `pos`.
    /// For the open segment this reads the rest of the file (up to its length when it was
    /// opened): only when an invalid batch was met, which at the live tail is a few bytes.
    fn resync_after(&mut self, pos: u64, expected: u64) -> io::Result<Option<(u64, u64)>> {
        Ok(match self {
            SegmentData::Empty => None,
            SegmentData::Mapped(m) => {
                resync(m, pos as usize + 1, expected).map(|(p, h)| (p as u64, h.base_offset))
            }
            SegmentData::Open { file, len, .. } => {
                let mut rest = vec![0u8; len.saturating_sub(pos) as usize];
                file.read_exact_at(&mut rest, pos)?;
                resync(&rest, 1, expected).map(|(p, h)| (pos + p as u64, h.base_offset))
            }
        })
    }

    /// The header of the batch at `pos` of an open segment, read alone (64 bytes), when the
    /// whole batch lies within the file. None for mapped segments (their batches are checked
    /// in place at no copying cost) and on any error (the full read then reports it).
    fn open_header_at(&self, pos: u64) -> Option<BatchHeader> {
        let SegmentData::Open { file, len, .. } = self else {
            return None;
        };
        let mut buf = [0u8; HEADER_LEN];
        file.read_exact_at(&mut buf, pos).ok()?;
        let h = decode_header(&buf).ok()?;
        (pos + h.total_len() as u64 <= *len).then_some(h)
    }

    /// The bytes of the batch at `pos`, or None at the end / at an invalid batch.
    fn batch_at(&mut self, pos: u64) -> io::Result<Result<&[u8], FormatError>> {
        match self {
            SegmentData::Empty => Ok(Err(FormatError::Short { need: 1, have: 0 })),
            SegmentData::Mapped(m) => {
                let rest = m.get(pos as usize..).unwrap_or_default();
                Ok(verify_batch(rest).map(|h| &rest[..h.total_len()]))
            }
            SegmentData::Open { file, len, buf } => {
                if pos + HEADER_LEN as u64 > *len {
                    return Ok(Err(FormatError::Short {
                        need: HEADER_LEN,
                        have: len.saturating_sub(pos) as usize,
                    }));
                }
                buf.resize(HEADER_LEN, 0);
                file.read_exact_at(buf, pos)?;
                let h = match decode_header(buf) {
                    Ok(h) => h,
                    Err(e) => return Ok(Err(e)),
                };
                let total = h.total_len();
                if pos + total as u64 > *len {
                    return Ok(Err(FormatError::Short {
                        need: total,
                        have: (*len - pos) as usize,
                    }));
                }
                buf.resize(total, 0);
                file.read_exact_at(&mut buf[HEADER_LEN..], pos + HEADER_LEN as u64)?;
                Ok(verify_batch(buf).map(|_| &buf[..]))
            }
        }
    }
}

impl ShardReader {
    pub fn new(dir: impl Into<PathBuf>, index_interval: u64) -> Self {
        ShardReader {
            dir: dir.into(),
            index_interval,
        }
    }

    /// Calls `visit` for every readable record from `start` on, in offset order, until it
    /// returns `Break`. `warn` hears about everything skipped.
    pub fn read(
        &self,
        start: Start,
        visit: impl FnMut(RecordRef<'_>) -> ControlFlow<()>,
        warn: impl FnMut(Warning),
    ) -> Result<(), Error> {
        self.read_resumable(start, &mut None, visit, warn)
    }

    /// [`Self::read`], resumable without searching again: when `visit` stops the read,
    /// `resume` is set to the batch holding the record it stopped at, and a later call with
    /// that `resume` (and `Start::Offset` of the next record wanted) starts right there instead
    /// of walking an index-less open segment from its beginning. A stale `resume` (its segment
    /// deleted meanwhile) falls back to the search by `start`.
    pub fn read_resumable(
        &self,
        start: Start,
        resume: &mut Option<Resume>,
        mut visit: impl FnMut(RecordRef<'_>) -> ControlFlow<()>,
        mut warn: impl FnMut(Warning),
    ) -> Result<(), Error> {
        let (segments, _) = list_segments(&self.dir)?;
        let hint = resume.take();
        let first = match (start, hint) {
            (_, Some(r)) => segments
                .partition_point(|s| s.base_offset <= r.segment_base)
                .saturating_sub(1),
            (Start::Offset(o), None) => segments
                .partition_point(|s| s.base_offset <= o)
                .saturating_sub(1),
            _ => 0,
        };
        let mut scratch = BatchScratch::default();
        // Whether records are being emitted yet: from the first record at or after the start
        // on, every later record is emitted (Kafka's semantics for a time lookup).
        let mut started = start == Start::Beginning;
        // One past the last offset read so far, across segments.
        let mut last_next: Option<u64> = None;
        for (i, seg) in segments.iter().enumerate().skip(first) {
            let is_open = i + 1 == segments.len();
            if let Some(n) = last_next {
                if seg.base_offset > n {
                    warn(Warning::Gap {
                        from: n,
                        to: seg.base_offset,
                    });
                }
            }
            let index = if is_open {
                None
            } else {
                load_index(seg, &mut warn)
            };
            if let (Start::Time(t), Some(idx), false) = (start, &index, started) {
                if idx.summary.max_ts < t {
                    last_next = Some(idx.summary.next_offset);
                    continue;
                }
            }
            let mut data = open_segment(seg, is_open)?;
            let resumed = hint.filter(|r| r.segment_base == seg.base_offset && !started);
            let mut pos = match (start, &index, started) {
                _ if resumed.is_some() => resumed.map_or(0, |r| r.pos),
                (Start::Offset(o), Some(idx), false) => idx.position_for_offset(o),
                (Start::Time(t), Some(idx), false) => idx.position_for_time(t),
                _ => 0,
            };
            // The base offset the next batch must have (0 = unknown: we started mid-segment).
            let mut expected = match resumed {
                Some(r) => r.expected,
                None if pos == 0 => seg.base_offset.max(last_next.unwrap_or(0)),
                None => 0,
            };
            loop {
                // The open segment has no index: skip its batches before the start by their
                // header alone. Reading and checking each whole batch made every read near
                // the end of a large open segment (a consumer following the log) copy and
                // checksum the whole segment.
                if let (false, Some(h)) = (started, data.open_header_at(pos)) {
                    let before = match start {
                        Start::Offset(o) => h.next_offset() <= o,
                        Start::Time(t) => h.max_ts < t,
                        Start::Beginning => false,
                    };
                    if before && h.base_offset >= expected {
                        pos += h.total_len() as u64;
                        expected = h.next_offset();
                        last_next = Some(expected);
                        continue;
                    }
                }
                let batch = match data.batch_at(pos).map_err(|e| Error::io(&seg.path, e))? {
                    Ok(b) => b,
                    Err(e) => {
                        let end = data.len();
                        if pos >= end {
                            break;
                        }
                        let found = data
                            .resync_after(pos, expected)
                            .map_err(|e| Error::io(&seg.path, e))?;
                        // Nothing valid after it in the open segment: its live tail (a write
                        // in progress, or a torn tail recovery will cut) — the end, no warning.
                        // Something valid after it: damage in the middle, skipped with a
                        // warning as in a sealed segment.
                        if found.is_none() && is_open {
                            break;
                        }
                        let next = found.map_or(end, |(p, _)| p);
                        warn(Warning::Corrupt {
                            segment: seg.path.clone(),
                            range: CorruptRange {
                                position: pos,
                                len: next - pos,
                                expected_offset: expected,
                                resumes_at: found.map(|(_, base)| base),
                                reason: e.to_string(),
                            },
                        });
                        pos = next;
                        continue;
                    }
                };
                let total = batch.len() as u64;
                // Skip whole batches before the start from their header alone: decompressing
                // them only to drop their records made every resumed read of an index-less
                // (open) segment re-decompress it from its beginning.
                if let (false, Ok(h)) = (started, decode_header(batch)) {
                    let before = match start {
                        Start::Offset(o) => h.next_offset() <= o,
                        Start::Time(t) => h.max_ts < t,
                        Start::Beginning => false,
                    };
                    if before && h.base_offset >= expected {
                        pos += total;
                        expected = h.next_offset();
                        last_next = Some(expected);
                        continue;
                    }
                }
                let decoded = match decode_batch(batch, &mut scratch) {
                    Ok(d) => d,
                    Err(e) => {
                        // The CRC matched but the content does not decode: skip the batch.
                        warn(Warning::Corrupt {
                            segment: seg.path.clone(),
                            range: CorruptRange {
                                position: pos,
                                len: total,
                                expected_offset: expected,
                                resumes_at: None,
                                reason: e.to_string(),
                            },
                        });
                        pos += total;
                        continue;
                    }
                };
                let h = decoded.header;
                let at = pos;
                pos += total;
                if h.base_offset < expected {
                    continue; // a batch that goes backwards is not trusted
                }
                expected = h.next_offset();
                last_next = Some(expected);
                if !started && matches!(start, Start::Offset(o) if h.next_offset() <= o) {
                    continue;
                }
                for rec in decoded.records() {
                    if !started {
                        started = match start {
                            Start::Offset(o) => rec.offset >= o,
                            Start::Time(t) => rec.recv_ts >= t,
                            Start::Beginning => true,
                        };
                        if !started {
                            continue;
                        }
                    }
                    if visit(rec).is_break() {
                        *resume = Some(Resume {
                            segment_base: seg.base_offset,
                            pos: at,
                            expected: h.base_offset,
                        });
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

fn open_segment(seg: &SegmentFile, is_open: bool) -> Result<SegmentData, Error> {
    let file = match File::open(&seg.path) {
        Ok(f) => f,
        // Retention may delete a segment between listing and opening it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SegmentData::Empty),
        Err(e) => return Err(Error::io(&seg.path, e)),
    };
    let len = file.metadata().map_err(|e| Error::io(&seg.path, e))?.len();
    if len == 0 {
        return Ok(SegmentData::Empty);
    }
    if is_open {
        return Ok(SegmentData::Open {
            file,
            len,
            buf: Vec::new(),
        });
    }
    // SAFETY: sealed segments are never written or truncated again (the writer finishes a
    // segment before it creates the next one, and only the newest is ever truncated, at
    // recovery, under the data-dir lock); deletion by retention keeps the mapping valid.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&seg.path, e))?;
    Ok(SegmentData::Mapped(map))
}

/// Loads and checks a sealed segment's index; None (with a warning) when it is unusable.
fn load_index(seg: &SegmentFile, warn: &mut impl FnMut(Warning)) -> Option<SegmentIndex> {
    let bytes = match std::fs::read(&seg.index_path) {
        Ok(b) => b,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                warn(Warning::BadIndex {
                    path: seg.index_path.clone(),
                    reason: e.to_string(),
                });
            }
            return None;
        }
    };
    let len = std::fs::metadata(&seg.path).map(|m| m.len()).ok()?;
    match SegmentIndex::decode(&bytes) {
        Ok(idx) if idx.summary.base_offset == seg.base_offset && idx.summary.segment_len <= len => {
            Some(idx)
        }
        Ok(_) => {
            warn(Warning::BadIndex {
                path: seg.index_path.clone(),
                reason: "index does not match its segment".into(),
            });
            None
        }
        Err(e) => {
            warn(Warning::BadIndex {
                path: seg.index_path.clone(),
                reason: e.to_string(),
            });
            None
        }
    }
}

/// Maps a whole segment for a scan (check, recovery). The caller guarantees the file is not
/// truncated while mapped (it holds the data-dir lock, or only reads sealed segments).
pub fn map_segment(path: &Path) -> Result<Option<memmap2::Mmap>, Error> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: see the function doc: the file is not truncated while the map lives.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Some(map))
}

impl ShardReader {
    /// Scans a segment file completely (see [`scan_segment`]).
    pub fn scan_file(&self, path: &Path, base_offset: u64) -> Result<ScanReport, Error> {
        Ok(match map_segment(path)? {
            Some(m) => scan_segment(&m, base_offset, self.index_interval, true),
            None => scan_segment(&[], base_offset, self.index_interval, true),
        })
    }
}

/// Logs a corrupt range (segment, byte, the offsets it made unreadable, who found it) and
/// counts it in `pixeld_log_corrupt_ranges_total`: the one report for recovery and readers.
pub(crate) fn report_corrupt(
    shard: usize,
    stats: &ShardStats,
    segment: &std::path::Path,
    range: &CorruptRange,
    found: &str,
) {
    ShardStats::add(&stats.corrupt_ranges, 1);
    eprintln!(
        "pixeld: shard {shard}: CORRUPT range in segment {} at byte {} ({} bytes, offsets {}..{} unreadable), found {found}: {}; the rest stays readable, run `pixeld check`",
        segment.display(),
        range.position,
        range.len,
        range.expected_offset,
        range.resumes_at.map_or_else(|| "end".into(), |o| o.to_string()),
        range.reason
    );
}
