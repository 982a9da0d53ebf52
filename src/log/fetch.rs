//! Bounded reads of durable records from any shard's log, and a shard's summary: what the
//! HTTP log API (`crate::http::log`) and named consumers read through.
//!
//! A request may land on any shard's executor (`SO_REUSEPORT`), so everything here works on a
//! shard's directory from any thread, through [`ShardReader`]; the caller passes the shard's
//! published durable offset, and nothing at or past it is ever returned — a reader never sees
//! a record that a crash could take back. It never writes and takes no lock: the writer keeps
//! appending while it reads. Offsets deleted by retention are an error naming the first
//! retained offset, never a silent jump; `OutOfRange` is re-checked after the read because
//! retention may delete a segment between the listing and the read.

use std::fs::File;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;

use super::format::{decode_header, HEADER_LEN};
use super::index::SegmentIndex;
use super::reader::{list_segments, ShardReader, Start, Warning};
use super::{Error, RecordRef};

/// Why a read returned no records.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "offset {offset} is out of range: shard {shard} retains offsets {first_offset}..{next_offset}"
    )]
    OutOfRange {
        shard: usize,
        offset: u64,
        first_offset: u64,
        next_offset: u64,
    },
    #[error(transparent)]
    Log(#[from] Error),
}

/// How a bounded read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchEnd {
    /// Records delivered.
    pub records: u64,
    /// The offset to ask for next: one past the last delivered record, or, when none was
    /// delivered, the start (an offset start) or the durable end (a time start).
    pub next_offset: u64,
    /// Warnings the reader reported (corrupt ranges skipped, gaps), for the caller to log.
    pub warnings: u64,
}

/// One shard's log, read from outside its shard.
#[derive(Debug, Clone)]
pub struct ShardLog {
    pub shard: usize,
    reader: ShardReader,
}

/// What `GET /v1/log/shards` reports per shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ShardSummary {
    pub shard: usize,
    /// The first retained offset (offsets below it were deleted by retention).
    pub first_offset: u64,
    /// The last record written to disk (possibly not yet durable); None when the log is empty.
    pub last_offset: Option<u64>,
    /// The last durable record; None when nothing is durable.
    pub durable_offset: Option<u64>,
    /// The offset a reader at the end asks for: durable offset + 1.
    pub next_offset: u64,
    /// Receive times (ns since the epoch) of the first retained and the last durable record.
    pub first_recv_ns: Option<u64>,
    pub last_recv_ns: Option<u64>,
    /// Segment and index files.
    pub bytes_on_disk: u64,
    pub segments: u64,
}

impl ShardLog {
    pub fn new(shard: usize, dir: impl Into<std::path::PathBuf>, index_interval: u64) -> Self {
        ShardLog {
            shard,
            reader: ShardReader::new(dir, index_interval),
        }
    }

    /// The first retained offset: the base offset of the oldest segment (0 when there is
    /// none yet).
    pub fn first_offset(&self) -> Result<u64, Error> {
        if !self.reader.dir.exists() {
            return Ok(0);
        }
        let (segments, _) = list_segments(&self.reader.dir)?;
        Ok(segments.first().map_or(0, |s| s.base_offset))
    }

    /// Visits durable records (offset < `durable_next`) from `start` on, until `visit`
    /// breaks. An offset start below the first retained offset, or past `durable_next`, is
    /// `OutOfRange`.
    pub fn read_durable(
        &self,
        start: Start,
        durable_next: u64,
        mut visit: impl FnMut(RecordRef<'_>) -> ControlFlow<()>,
        mut warn: impl FnMut(Warning),
    ) -> Result<FetchEnd, FetchError> {
        let out_of_range = |offset: u64, first_offset: u64| FetchError::OutOfRange {
            shard: self.shard,
            offset,
            first_offset,
            next_offset: durable_next.max(first_offset),
        };
        let first = self.first_offset()?;
        if let Start::Offset(o) = start {
            if o < first || o > durable_next.max(first) {
                return Err(out_of_range(o, first));
            }
            if o >= durable_next {
                return Ok(FetchEnd {
                    records: 0,
                    next_offset: o,
                    warnings: 0,
                });
            }
        }
        let mut end = FetchEnd {
            records: 0,
            next_offset: match start {
                Start::Offset(o) => o,
                _ => durable_next.max(first),
            },
            warnings: 0,
        };
        let mut first_seen = None;
        if durable_next > 0 && self.reader.dir.exists() {
            self.reader.read(
                start,
                |rec| {
                    if rec.offset >= durable_next {
                        return ControlFlow::Break(());
                    }
                    first_seen.get_or_insert(rec.offset);
                    let offset = rec.offset;
                    let flow = visit(rec);
                    if flow.is_continue() {
                        end.records += 1;
                        end.next_offset = offset + 1;
                    }
                    flow
                },
                |w| {
                    end.warnings += 1;
                    warn(w);
                },
            )?;
        }
        // Retention may have deleted the start's segment between the listing and the read
        // (the reader then moves on to the next segment): that is out of range too.
        if let Start::Offset(o) = start {
            if first_seen.is_none_or(|f| f > o) {
                let now_first = self.first_offset()?;
                if o < now_first {
                    return Err(out_of_range(o, now_first));
                }
            }
        }
        Ok(end)
    }

    /// The receive time of the first durable record at or after `offset` (None when there is
    /// none), for lag in seconds.
    pub fn recv_ns_at(&self, offset: u64, durable_next: u64) -> Result<Option<u64>, Error> {
        let first = self.first_offset()?;
        let mut ts = None;
        let start = Start::Offset(offset.max(first));
        match self.read_durable(
            start,
            durable_next,
            |r| {
                ts = Some(r.recv_ts);
                ControlFlow::Break(())
            },
            |_| {},
        ) {
            Ok(_) | Err(FetchError::OutOfRange { .. }) => Ok(ts),
            Err(FetchError::Log(e)) => Err(e),
        }
    }

    /// The shard's summary. Sealed segments are summarised by their index; the open one by
    /// walking its batch headers (64 bytes each, no payload read).
    pub fn summary(&self, durable_next: u64) -> Result<ShardSummary, Error> {
        let mut s = ShardSummary {
            shard: self.shard,
            durable_offset: durable_next.checked_sub(1),
            next_offset: durable_next,
            ..ShardSummary::default()
        };
        let dir = &self.reader.dir;
        if !dir.exists() {
            return Ok(s);
        }
        let (segments, _) = list_segments(dir)?;
        s.first_offset = segments.first().map_or(0, |g| g.base_offset);
        s.next_offset = durable_next.max(s.first_offset);
        // Batch headers (base offset, records, min/max receive time) of every segment, in
        // offset order; an index stands in for a sealed segment's headers.
        let mut spans: Vec<(u64, u64, u64, u64)> = Vec::new();
        for (i, seg) in segments.iter().enumerate() {
            let len = match std::fs::metadata(&seg.path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&seg.path, e)),
            };
            s.segments += 1;
            s.bytes_on_disk += len;
            s.bytes_on_disk += std::fs::metadata(&seg.index_path).map_or(0, |m| m.len());
            let is_open = i + 1 == segments.len();
            let index = if is_open {
                None
            } else {
                std::fs::read(&seg.index_path)
                    .ok()
                    .and_then(|b| SegmentIndex::decode(&b).ok())
                    .filter(|x| x.summary.base_offset == seg.base_offset)
            };
            match index {
                Some(x) if x.summary.records > 0 => spans.push((
                    x.summary.base_offset,
                    x.summary.next_offset,
                    x.summary.min_ts,
                    x.summary.max_ts,
                )),
                Some(_) => {}
                None => walk_headers(&seg.path, len, &mut spans)?,
            }
        }
        s.last_offset = spans.last().map(|&(_, next, _, _)| next - 1);
        s.first_recv_ns = spans.first().map(|&(_, _, min, _)| min);
        s.last_recv_ns = spans
            .iter()
            .rev()
            .find(|&&(_, next, _, _)| next <= durable_next)
            .map(|&(_, _, _, max)| max);
        Ok(s)
    }
}

/// Appends (base, next, min_ts, max_ts) of each batch of a segment, reading headers only,
/// up to the first one that is not a complete batch (the live or torn tail).
fn walk_headers(
    path: &std::path::Path,
    len: u64,
    out: &mut Vec<(u64, u64, u64, u64)>,
) -> Result<(), Error> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut pos = 0u64;
    let mut buf = [0u8; HEADER_LEN];
    while pos + HEADER_LEN as u64 <= len {
        if file.read_exact_at(&mut buf, pos).is_err() {
            break;
        }
        let Ok(h) = decode_header(&buf) else { break };
        if pos + h.total_len() as u64 > len {
            break;
        }
        out.push((h.base_offset, h.next_offset(), h.min_ts, h.max_ts));
        pos += h.total_len() as u64;
    }
    Ok(())
}
