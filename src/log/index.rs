//! The sparse index of a sealed segment (`<base>.idx`): offset → file position and
//! receive time → offset, plus a summary of the segment.
//!
//! An index is derived data: it is written when a segment is sealed, and rebuilt from the
//! segment whenever it is missing, damaged or does not match the segment's length. Readers use
//! it to start near an offset or a time without scanning the whole segment, and retention and
//! `check` use its summary. Entries are sparse: one per `index_interval_bytes` of segment.
//!
//! # Index file, version 1 (little-endian)
//! | at | size | field        | meaning                                                        |
//! |----|------|--------------|----------------------------------------------------------------|
//! |  0 |  4   | magic        | `PXLI`                                                         |
//! |  4 |  4   | crc32c       | CRC-32C of every byte after this field                         |
//! |  8 |  2   | version      | 1                                                              |
//! | 10 |  2   | reserved     | 0                                                              |
//! | 12 |  4   | entry_count  | number of 24-byte entries that follow the header               |
//! | 16 |  8   | base_offset  | the segment's base offset (its file name)                      |
//! | 24 |  8   | segment_len  | segment length in bytes the index describes                    |
//! | 32 |  8   | next_offset  | one past the last readable record                              |
//! | 40 |  8   | records      | readable records in the segment                                |
//! | 48 |  8   | min_ts       | smallest receive time (ns), 0 when empty                       |
//! | 56 |  8   | max_ts       | largest receive time (ns), 0 when empty                        |
//! | 64 | 24·n | entries      | `offset` u64, `position` u64, `max_ts_before` u64 — the first record offset of a batch, where that batch starts, and the largest receive time of all records before it |

use super::format::BatchHeader;

pub const INDEX_MAGIC: [u8; 4] = *b"PXLI";
pub const INDEX_VERSION: u16 = 1;
const INDEX_HEADER_LEN: usize = 64;
const ENTRY_LEN: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("index is truncated")]
    Short,
    #[error("not an index file (bad magic)")]
    Magic,
    #[error("unsupported index version {0}")]
    Version(u16),
    #[error("index CRC mismatch")]
    Crc,
    #[error("index entries are not ordered")]
    Order,
}

/// Summary of one segment: what `check`, retention and readers need without scanning it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentSummary {
    pub base_offset: u64,
    pub segment_len: u64,
    pub next_offset: u64,
    pub records: u64,
    pub min_ts: u64,
    pub max_ts: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub position: u64,
    pub max_ts_before: u64,
}

/// A segment's summary and sparse entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentIndex {
    pub summary: SegmentSummary,
    pub entries: Vec<IndexEntry>,
}

impl SegmentIndex {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(INDEX_HEADER_LEN + ENTRY_LEN * self.entries.len());
        let s = &self.summary;
        out.extend_from_slice(&INDEX_MAGIC);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        out.extend_from_slice(&[0; 2]);
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for v in [
            s.base_offset,
            s.segment_len,
            s.next_offset,
            s.records,
            s.min_ts,
            s.max_ts,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for e in &self.entries {
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.position.to_le_bytes());
            out.extend_from_slice(&e.max_ts_before.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out[8..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, IndexError> {
        let u64_at = |at: usize| -> Result<u64, IndexError> {
            let b = buf.get(at..at + 8).ok_or(IndexError::Short)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Ok(u64::from_le_bytes(a))
        };
        if buf.len() < INDEX_HEADER_LEN {
            return Err(IndexError::Short);
        }
        if buf[0..4] != INDEX_MAGIC {
            return Err(IndexError::Magic);
        }
        let version = u16::from_le_bytes([buf[8], buf[9]]);
        if version != INDEX_VERSION {
            return Err(IndexError::Version(version));
        }
        let count = u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]) as usize;
        let end = count
            .checked_mul(ENTRY_LEN)
            .and_then(|n| n.checked_add(INDEX_HEADER_LEN))
            .ok_or(IndexError::Short)?;
        if buf.len() != end {
            return Err(IndexError::Short);
        }
        let stored = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if crc32c::crc32c(&buf[8..]) != stored {
            return Err(IndexError::Crc);
        }
        let summary = SegmentSummary {
            base_offset: u64_at(16)?,
            segment_len: u64_at(24)?,
            next_offset: u64_at(32)?,
            records: u64_at(40)?,
            min_ts: u64_at(48)?,
            max_ts: u64_at(56)?,
        };
        let mut entries = Vec::with_capacity(count);
        for i in 0..count {
            let at = INDEX_HEADER_LEN + i * ENTRY_LEN;
            let e = IndexEntry {
                offset: u64_at(at)?,
                position: u64_at(at + 8)?,
                max_ts_before: u64_at(at + 16)?,
            };
            if let Some(prev) = entries.last() {
                let prev: &IndexEntry = prev;
                if e.offset <= prev.offset || e.position <= prev.position {
                    return Err(IndexError::Order);
                }
            }
            if e.position >= summary.segment_len {
                return Err(IndexError::Order);
            }
            entries.push(e);
        }
        Ok(SegmentIndex { summary, entries })
    }

    /// Position of the batch to start scanning from to find `offset`: the last indexed batch
    /// whose first offset is at or below it (0 when none is).
    pub fn position_for_offset(&self, offset: u64) -> u64 {
        let i = self.entries.partition_point(|e| e.offset <= offset);
        i.checked_sub(1)
            .and_then(|i| self.entries.get(i))
            .map_or(0, |e| e.position)
    }

    /// Position of the batch to start scanning from to find the first record received at or
    /// after `ts`: every record before it was received before `ts`.
    pub fn position_for_time(&self, ts: u64) -> u64 {
        let i = self.entries.partition_point(|e| e.max_ts_before < ts);
        i.checked_sub(1)
            .and_then(|i| self.entries.get(i))
            .map_or(0, |e| e.position)
    }
}

/// Builds a [`SegmentIndex`] batch by batch, as the writer appends or a scan reads.
#[derive(Debug, Clone)]
pub struct IndexBuilder {
    interval: u64,
    index: SegmentIndex,
    last_entry_pos: Option<u64>,
    running_max: u64,
}

impl IndexBuilder {
    pub fn new(base_offset: u64, interval: u64) -> Self {
        IndexBuilder {
            interval: interval.max(1),
            index: SegmentIndex {
                summary: SegmentSummary {
                    base_offset,
                    next_offset: base_offset,
                    ..SegmentSummary::default()
                },
                entries: Vec::new(),
            },
            last_entry_pos: None,
            running_max: 0,
        }
    }

    /// Continues building an index that a scan produced (the open segment after recovery).
    pub fn resume(index: SegmentIndex, interval: u64) -> Self {
        IndexBuilder {
            interval: interval.max(1),
            last_entry_pos: index.entries.last().map(|e| e.position),
            running_max: index.summary.max_ts,
            index,
        }
    }

    /// Adds a valid batch that starts at `position`.
    pub fn add(&mut self, h: &BatchHeader, position: u64) {
        let due = match self.last_entry_pos {
            None => true,
            Some(p) => position >= p + self.interval,
        };
        if due {
            self.index.entries.push(IndexEntry {
                offset: h.base_offset,
                position,
                max_ts_before: self.running_max,
            });
            self.last_entry_pos = Some(position);
        }
        self.running_max = self.running_max.max(h.max_ts);
        let s = &mut self.index.summary;
        if s.records == 0 {
            s.min_ts = h.min_ts;
            s.max_ts = h.max_ts;
        } else {
            s.min_ts = s.min_ts.min(h.min_ts);
            s.max_ts = s.max_ts.max(h.max_ts);
        }
        s.records += u64::from(h.record_count);
        s.next_offset = h.next_offset();
        s.segment_len = position + h.total_len() as u64;
    }

    pub fn summary(&self) -> &SegmentSummary {
        &self.index.summary
    }

    /// Sets the byte length the index describes (it may include a corrupt range at the end).
    pub fn set_segment_len(&mut self, len: u64) {
        self.index.summary.segment_len = len;
    }

    pub fn finish(self) -> SegmentIndex {
        self.index
    }

    pub fn snapshot(&self) -> &SegmentIndex {
        &self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::format::Codec;

    fn header(base: u64, count: u32, min_ts: u64, max_ts: u64, stored: u32) -> BatchHeader {
        BatchHeader {
            codec: Codec::None,
            record_count: count,
            base_offset: base,
            base_ts: min_ts,
            min_ts,
            max_ts,
            uncompressed_len: stored,
            stored_len: stored,
        }
    }

    #[test]
    fn build_encode_decode_lookup() {
        let mut b = IndexBuilder::new(100, 1000);
        let mut pos = 0;
        for i in 0..50u64 {
            let h = header(100 + i * 10, 10, i * 1000, i * 1000 + 999, 436);
            b.add(&h, pos);
            pos += h.total_len() as u64;
        }
        let idx = b.finish();
        assert_eq!(idx.summary.next_offset, 600);
        assert_eq!(idx.summary.records, 500);
        assert_eq!(idx.summary.segment_len, pos);
        assert!(idx.entries.len() > 1 && idx.entries.len() < 50);
        let back = SegmentIndex::decode(&idx.encode()).unwrap();
        assert_eq!(back, idx);
        // Offset 355 lives in the batch at 350; the entry used must start at or before it.
        let p = idx.position_for_offset(355);
        assert!(p <= 25 * 500 && p + 2000 > 25 * 500);
        // Time 25_500 lives in batch 25 too.
        let p = idx.position_for_time(25_500);
        assert!(p <= 25 * 500);
        let mut bytes = idx.encode();
        bytes[70] ^= 1;
        assert_eq!(SegmentIndex::decode(&bytes), Err(IndexError::Crc));
        assert!(SegmentIndex::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
