//! Bringing a shard's log directory back to a consistent state before it accepts appends.
//!
//! Runs once per shard at start, inside the shard's executor and before the shard reports
//! ready (so its blocking directory listing and memory-mapped scans delay only readiness).
//! Sealed segments are trusted when their index is intact and matches their length; a
//! missing or damaged index is rebuilt by a full scan, which also reports corrupt ranges
//! (they stay in place: only `check` and readers report them, nothing is deleted). The newest
//! segment is scanned batch by batch (lengths, CRC, contiguous offsets) and truncated after
//! its last valid batch: the torn tail of a crash, or zero padding of an O_DIRECT block. The
//! cut is logged with segment, offset and bytes, and counted. A corrupt range followed by
//! valid batches is not a tail: it is reported and counted like one in a sealed segment, and
//! kept (the batches after it may have been acknowledged).
//!
//! A clean shutdown leaves a marker, [`CLEAN_MARKER`]: the newest segment's sparse index with
//! the length it was synced at (written durably after the final fdatasync). When the marker
//! matches the newest segment's base offset and length, that index is trusted and the tail
//! scan is skipped; the marker is removed at every start, so it only ever describes the
//! shutdown that wrote it (and appends only grow a segment, leaving the bytes it describes
//! unchanged, so even a stale one could not mislead).

use std::collections::VecDeque;
use std::path::PathBuf;

use glommio::io::OpenOptions;

use super::config::LogConfig;
use super::index::{IndexBuilder, SegmentIndex};
use super::reader::{self, report_corrupt, CorruptRange};
use super::segment::{write_file_durably, OpenSegment, Recovered, SealedSegment, CLEAN_MARKER};
use super::Error;
use crate::metrics::ShardStats;
use crate::sys::os_error;

/// What recovery found and did, for the startup log and the tests.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub shard: usize,
    pub segments: usize,
    /// Readable records in the shard's log.
    pub records: u64,
    pub next_offset: u64,
    pub bytes: u64,
    /// Bytes cut from the newest segment (torn tail, zero padding excluded).
    pub truncated_bytes: u64,
    /// Bytes of zero padding trimmed from the newest segment.
    pub trimmed_padding: u64,
    pub indexes_rebuilt: usize,
    pub corrupt: Vec<(PathBuf, CorruptRange)>,
    pub foreign_files: Vec<PathBuf>,
    /// The newest segment was trusted from a valid clean-shutdown marker (no tail scan).
    pub clean_start: bool,
}

pub(crate) async fn recover(
    cfg: &LogConfig,
    stats: &ShardStats,
) -> Result<(Recovered, RecoveryReport), Error> {
    let shard = cfg.shard;
    std::fs::create_dir_all(&cfg.dir).map_err(|e| Error::io(&cfg.dir, e))?;
    let marker = take_marker(cfg)?;
    let (segments, foreign) = reader::list_segments(&cfg.dir)?;
    let mut report = RecoveryReport {
        shard,
        foreign_files: foreign,
        ..RecoveryReport::default()
    };
    for f in &report.foreign_files {
        eprintln!(
            "pixeld: shard {shard}: ignoring foreign file {} (not a segment or index)",
            f.display()
        );
    }
    let mut sealed = VecDeque::new();
    let newest = segments.last().cloned();
    for seg in segments.iter().take(segments.len().saturating_sub(1)) {
        sealed.push_back(recover_sealed(seg, cfg, stats, &mut report).await?);
    }
    let sealed_next = sealed.back().map_or(0, |s| s.summary.next_offset);
    let open = match newest {
        None => OpenSegment::create(&cfg.dir, 0, cfg.index_interval_bytes).await?,
        Some(seg) => recover_newest(&seg, marker, cfg, stats, &mut report).await?,
    };
    let next_offset = open.index.summary().next_offset.max(open.base_offset);
    if next_offset < sealed_next {
        return Err(Error::Corrupt {
            segment: open.path.clone(),
            position: 0,
            reason: format!(
                "newest segment starts at offset {next_offset}, below the end of the segment before it ({sealed_next}); move the stray file away"
            ),
        });
    }
    report.segments = sealed.len() + 1;
    report.next_offset = next_offset;
    remove_stray_temp_files(&cfg.dir);
    Ok((
        Recovered {
            sealed,
            open,
            next_offset,
        },
        report,
    ))
}

/// Reads and removes the clean-shutdown marker: it is trusted for this start only (a crash
/// after this point must not find it again).
fn take_marker(cfg: &LogConfig) -> Result<Option<SegmentIndex>, Error> {
    let marker_path = cfg.dir.join(CLEAN_MARKER);
    let marker = std::fs::read(&marker_path)
        .ok()
        .and_then(|b| SegmentIndex::decode(&b).ok());
    match std::fs::remove_file(&marker_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&marker_path, e)),
    }
    Ok(marker)
}

/// A sealed segment: trusted when its index matches its length, else scanned (corrupt ranges
/// reported, never cut) and its index rewritten.
async fn recover_sealed(
    seg: &reader::SegmentFile,
    cfg: &LogConfig,
    stats: &ShardStats,
    report: &mut RecoveryReport,
) -> Result<SealedSegment, Error> {
    let (shard, interval) = (cfg.shard, cfg.index_interval_bytes);
    let len = std::fs::metadata(&seg.path)
        .map_err(|e| Error::io(&seg.path, e))?
        .len();
    let index = match std::fs::read(&seg.index_path)
        .ok()
        .and_then(|b| SegmentIndex::decode(&b).ok())
    {
        Some(idx)
            if idx.summary.segment_len == len && idx.summary.base_offset == seg.base_offset =>
        {
            idx
        }
        _ => {
            let scan = match reader::map_segment(&seg.path)? {
                Some(m) => reader::scan_segment(&m, seg.base_offset, interval, false),
                None => reader::scan_segment(&[], seg.base_offset, interval, false),
            };
            for range in scan.corrupt.iter().chain(scan.tail.iter()) {
                report_corrupt(
                    shard,
                    stats,
                    &seg.path,
                    range,
                    "by recovery (sealed segment)",
                );
                report.corrupt.push((seg.path.clone(), range.clone()));
            }
            let mut idx = scan.index;
            // The index describes the whole file, corrupt ranges included, so that it
            // matches the file's length next time.
            idx.summary.segment_len = len;
            write_file_durably(&seg.index_path, &idx.encode()).await?;
            eprintln!(
                "pixeld: shard {shard}: rebuilt index {}",
                seg.index_path.display()
            );
            report.indexes_rebuilt += 1;
            ShardStats::add(&stats.indexes_rebuilt, 1);
            idx
        }
    };
    report.records += index.summary.records;
    report.bytes += len;
    Ok(SealedSegment {
        summary: index.summary,
        path: seg.path.clone(),
        index_path: seg.index_path.clone(),
    })
}

/// The newest segment: trusted without a scan when the clean-shutdown marker describes it and
/// its tail still verifies, else scanned; its torn tail (only the bytes after the last valid
/// batch) is cut, and what is left is synced before anything in it is reported durable.
async fn recover_newest(
    seg: &reader::SegmentFile,
    marker: Option<SegmentIndex>,
    cfg: &LogConfig,
    stats: &ShardStats,
    report: &mut RecoveryReport,
) -> Result<OpenSegment, Error> {
    let (shard, interval) = (cfg.shard, cfg.index_interval_bytes);
    let map = reader::map_segment(&seg.path)?;
    let bytes: &[u8] = map.as_deref().unwrap_or_default();
    let trusted = marker.filter(|m| {
        m.summary.base_offset == seg.base_offset
            && m.summary.segment_len == bytes.len() as u64
            && tail_matches_marker(bytes, m)
    });
    report.clean_start = trusted.is_some();
    let scan = match trusted {
        // A clean shutdown described this very segment: no scan.
        Some(index) => reader::ScanReport {
            valid_end: index.summary.segment_len,
            index,
            batches: 0,
            corrupt: Vec::new(),
            tail: None,
            tail_is_zero: false,
        },
        None => reader::scan_segment(bytes, seg.base_offset, interval, false),
    };
    // Only a torn tail is cut: the bytes after the last valid batch. A corrupt range
    // followed by valid batches is damage in the middle (bit rot, a lost block of a
    // group write), reported and skipped as in a sealed segment — never a reason to
    // drop the valid, possibly acknowledged, batches after it. (Kafka cuts at the
    // first invalid batch instead, and so loses them.)
    for range in &scan.corrupt {
        report_corrupt(
            shard,
            stats,
            &seg.path,
            range,
            "by recovery (newest segment)",
        );
        report.corrupt.push((seg.path.clone(), range.clone()));
    }
    let (index, valid_end) = (scan.index, scan.valid_end);
    let file_len = bytes.len() as u64;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(&seg.path)
        .await
        .map_err(|e| Error::io(&seg.path, os_error(e)))?;
    let align = file.alignment().max(512);
    // Keep the partial last block in memory: the next write rewrites it whole.
    let tail = bytes[(valid_end - valid_end % align) as usize..valid_end as usize].to_vec();
    drop(map);
    let io_err = |e: glommio::GlommioError<()>| Error::io(&seg.path, os_error(e));
    if file_len > valid_end {
        let cut = file_len - valid_end;
        let padding = scan.tail_is_zero && cut < 4096;
        file.truncate(valid_end).await.map_err(io_err)?;
        if padding {
            report.trimmed_padding = cut;
        } else {
            let reason = scan
                .tail
                .as_ref()
                .map_or_else(String::new, |r| r.reason.clone());
            eprintln!(
                "pixeld: shard {shard}: truncated torn tail of {} at byte {valid_end} (next offset {}): {cut} bytes cut ({reason})",
                seg.path.display(),
                index.summary.next_offset
            );
            report.truncated_bytes = cut;
            ShardStats::add(&stats.truncated_bytes, cut);
        }
    }
    // What survived in the page cache after a kill -9 was perhaps never fsynced: sync
    // it before it is reported durable.
    file.fdatasync().await.map_err(io_err)?;
    let mut summary = index.summary;
    if index.summary.records == 0 {
        summary.next_offset = seg.base_offset;
    }
    report.records += summary.records;
    report.bytes += valid_end;
    let first_ts = (summary.records > 0).then_some(summary.min_ts);
    Ok(OpenSegment {
        file,
        path: seg.path.clone(),
        base_offset: seg.base_offset,
        len: valid_end,
        tail,
        index: IndexBuilder::resume(index, interval),
        first_ts,
    })
}

/// Stray temporary files of an interrupted index write.
fn remove_stray_temp_files(dir: &std::path::Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Whether the batches from the marker's last index entry to the end of `bytes` are all valid
/// and end where the marker says: a cheap check (one index interval and a batch or so) that
/// the segment was not damaged at its tail since the clean shutdown wrote the marker. Damage
/// further back is found, reported and skipped by the first read (the rebuild).
fn tail_matches_marker(bytes: &[u8], m: &SegmentIndex) -> bool {
    let (mut pos, mut expected) = m.entries.last().map_or((0, m.summary.base_offset), |e| {
        (e.position as usize, e.offset)
    });
    while pos < bytes.len() {
        match crate::log::format::verify_batch(bytes.get(pos..).unwrap_or_default()) {
            Ok(h) if h.base_offset == expected => {
                pos += h.total_len();
                expected = h.next_offset();
            }
            _ => return false,
        }
    }
    pos == bytes.len() && expected == m.summary.next_offset
}
