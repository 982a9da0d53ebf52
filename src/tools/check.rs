//! `pixeld check`: verifies every batch of every segment of every shard in a data dir.
//!
//! Each segment is mapped and scanned completely: header bounds, CRC, decompression, every
//! record, offset contiguity within and across segments, and whether its index matches. The
//! result per shard lists segments, records, bytes, first/last offset and time, and every
//! corrupt range with its position and the offsets it made unreadable. Corruption anywhere,
//! or a torn tail in a sealed segment, is a failure (exit 1); a torn tail of the newest
//! segment is reported but is what a crash leaves (recovery truncates it at the next start).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::log::index::SegmentIndex;
use crate::log::ndjson::format_ts;
use crate::log::reader::{self, CorruptRange, ShardReader};
use crate::log::Error;

#[derive(Debug, Clone, Default)]
pub struct ShardCheck {
    pub shard: usize,
    pub dir: PathBuf,
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    pub first_offset: Option<u64>,
    pub last_offset: Option<u64>,
    pub first_ts: Option<u64>,
    pub last_ts: Option<u64>,
    pub corrupt: Vec<(PathBuf, CorruptRange)>,
    /// Bytes after the newest segment's last complete batch (not zero padding).
    pub torn_tail: Option<(PathBuf, CorruptRange)>,
    /// Offsets missing between segments.
    pub gaps: Vec<(u64, u64)>,
    pub stale_indexes: Vec<PathBuf>,
    pub foreign_files: Vec<PathBuf>,
}

impl ShardCheck {
    pub fn is_ok(&self) -> bool {
        self.corrupt.is_empty() && self.gaps.is_empty()
    }

    /// The human report printed by `pixeld check`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let range = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => format!("{a}..={b}"),
            _ => "none".into(),
        };
        let _ = writeln!(
            s,
            "shard {:03}: {} segments, {} records, {} bytes, offsets {}, received {} .. {}: {}",
            self.shard,
            self.segments,
            self.records,
            self.bytes,
            range(self.first_offset, self.last_offset),
            self.first_ts.map_or_else(|| "-".into(), format_ts),
            self.last_ts.map_or_else(|| "-".into(), format_ts),
            if self.is_ok() { "OK" } else { "CORRUPT" }
        );
        for (path, r) in &self.corrupt {
            let _ = writeln!(
                s,
                "  CORRUPT {} bytes {}..{}: offsets {}..{} unreadable: {}",
                path.display(),
                r.position,
                r.position + r.len,
                r.expected_offset,
                r.resumes_at.map_or_else(|| "end".into(), |o| o.to_string()),
                r.reason
            );
        }
        for (a, b) in &self.gaps {
            let _ = writeln!(s, "  GAP offsets {a}..{b} missing between segments");
        }
        if let Some((path, r)) = &self.torn_tail {
            let _ = writeln!(
                s,
                "  note: {} has {} bytes after its last complete batch (torn tail of a crash, or a write in progress); the next start truncates it ({})",
                path.display(),
                r.len,
                r.reason
            );
        }
        for p in &self.stale_indexes {
            let _ = writeln!(
                s,
                "  note: index {} is missing or stale; the next start rebuilds it",
                p.display()
            );
        }
        for p in &self.foreign_files {
            let _ = writeln!(s, "  note: foreign file {} ignored", p.display());
        }
        s
    }
}

/// Checks every shard under `data_dir`.
pub fn check(data_dir: &Path) -> Result<Vec<ShardCheck>, Error> {
    let mut out = Vec::new();
    for (shard, dir) in reader::list_shards(data_dir)? {
        out.push(check_shard(shard, &dir)?);
    }
    Ok(out)
}

pub fn check_shard(shard: usize, dir: &Path) -> Result<ShardCheck, Error> {
    let (segments, foreign) = reader::list_segments(dir)?;
    let reader = ShardReader::new(dir, 4096);
    let mut c = ShardCheck {
        shard,
        dir: dir.to_path_buf(),
        segments: segments.len(),
        foreign_files: foreign,
        ..ShardCheck::default()
    };
    let mut next_expected: Option<u64> = None;
    for (i, seg) in segments.iter().enumerate() {
        let newest = i + 1 == segments.len();
        let scan = reader.scan_file(&seg.path, seg.base_offset)?;
        let len = std::fs::metadata(&seg.path).map_or(0, |m| m.len());
        c.bytes += len;
        let s = scan.index.summary;
        if s.records > 0 {
            if let Some(n) = next_expected {
                if seg.base_offset > n {
                    c.gaps.push((n, seg.base_offset));
                }
            }
            c.records += s.records;
            c.first_offset.get_or_insert(seg.base_offset);
            c.last_offset = Some(s.next_offset - 1);
            c.first_ts = Some(c.first_ts.map_or(s.min_ts, |t| t.min(s.min_ts)));
            c.last_ts = Some(c.last_ts.map_or(s.max_ts, |t| t.max(s.max_ts)));
            next_expected = Some(s.next_offset);
        }
        for r in &scan.corrupt {
            c.corrupt.push((seg.path.clone(), r.clone()));
        }
        if let Some(t) = scan.tail {
            if newest {
                if !scan.tail_is_zero {
                    c.torn_tail = Some((seg.path.clone(), t));
                }
            } else {
                c.corrupt.push((seg.path.clone(), t));
            }
        }
        if !newest {
            let ok = std::fs::read(&seg.index_path)
                .ok()
                .and_then(|b| SegmentIndex::decode(&b).ok())
                .is_some_and(|idx| {
                    idx.summary.segment_len == len && idx.summary.next_offset == s.next_offset
                });
            if !ok {
                c.stale_indexes.push(seg.index_path.clone());
            }
        }
    }
    Ok(c)
}
