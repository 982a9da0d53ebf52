//! The on-disk batch and record format of a shard's log: encoding, decoding and validation.
//!
//! This file owns the bytes. Every other module reads and writes batches only through
//! [`BatchBuilder`] and [`decode_batch`], so a format change happens here, with a new version
//! number and a new checked-in sample (`tests/data/sample-v1.log`, decoded by a test).
//! Decoding never trusts the disk: every length is bounds-checked before it is used, the CRC is
//! verified before the payload is decompressed, and no input can make it panic (proptest).
//!
//! # Segment files
//! A shard directory `<data_dir>/shard-NNN/` holds segments named by the offset of their first
//! record, zero-padded to 20 digits: `00000000000000000000.log`. A segment is nothing but batches
//! laid end to end. A crash may leave zero padding (up to one O_DIRECT block) or a torn batch
//! after the last complete one; recovery truncates both in the newest segment.
//!
//! # Batch, format version 1 (all integers little-endian)
//! | at | size | field            | meaning                                                        |
//! |----|------|------------------|----------------------------------------------------------------|
//! |  0 |  4   | magic            | `PXLB`                                                         |
//! |  4 |  4   | crc32c           | CRC-32C (Castagnoli) of bytes 8..64 and of the payload         |
//! |  8 |  2   | version          | 1                                                              |
//! | 10 |  1   | codec            | 0 = none, 1 = zstd                                             |
//! | 11 |  1   | flags            | reserved, 0                                                    |
//! | 12 |  4   | record_count     | records in the batch, ≥ 1                                      |
//! | 16 |  8   | base_offset      | offset of the first record; record *i* has `base_offset + i`   |
//! | 24 |  8   | base_ts          | receive time of the first record, ns since the Unix epoch      |
//! | 32 |  8   | min_ts           | smallest receive time in the batch (ns)                        |
//! | 40 |  8   | max_ts           | largest receive time in the batch (ns)                         |
//! | 48 |  4   | uncompressed_len | payload length before compression, ≤ 64 MiB                    |
//! | 52 |  4   | stored_len       | payload length on disk (= uncompressed_len for codec 0)        |
//! | 56 |  8   | reserved         | 0                                                              |
//! | 64 |  stored_len | payload   | the records, compressed with `codec`                           |
//!
//! # Record (inside the uncompressed payload)
//! | size     | field   | meaning                                                            |
//! |----------|---------|--------------------------------------------------------------------|
//! | varint   | len     | length of `bytes` (LEB128, ≤ 64 MiB)                               |
//! | varint   | ts      | zigzag(receive time − base_ts) in ns (LEB128)                      |
//! | 1        | flags   | bit 0: the line failed to parse at ingest; other bits reserved     |
//! | 1        | source  | low nibble: transport (0 import, 1 udp, 2 tcp, 3 http); high nibble: peer address kind (0 none, 4 IPv4, 6 IPv6) |
//! | 0/6/18   | peer    | IPv4 (4 bytes) or IPv6 (16 bytes) address, then the port (2 bytes) |
//! | len      | bytes   | the raw bytes exactly as received, after transport framing         |

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The four bytes every batch starts with.
pub const BATCH_MAGIC: [u8; 4] = *b"PXLB";
/// The batch format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Size of the fixed batch header.
pub const HEADER_LEN: usize = 64;
/// Largest uncompressed payload a batch may declare; larger values are corruption.
pub const MAX_PAYLOAD: usize = 64 << 20;
/// Largest single record; config limits are checked against it.
pub const MAX_RECORD: usize = MAX_PAYLOAD / 2;
/// Smallest encoding of one record (len, ts, flags, source).
const MIN_RECORD_LEN: usize = 4;

/// Record flag: the line failed to parse when it was ingested (it is kept all the same).
pub const FLAG_PARSE_ERROR: u8 = 1;

/// Errors found while decoding bytes that claim to be a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("need {need} bytes, only {have} available")]
    Short { need: usize, have: usize },
    #[error("bad magic {0:02x?}")]
    Magic([u8; 4]),
    #[error("unsupported format version {0}")]
    Version(u16),
    #[error("unknown codec {0}")]
    Codec(u8),
    #[error("implausible header: {0}")]
    Header(&'static str),
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("payload does not decompress: {0}")]
    Decompress(String),
    #[error("record {index} is malformed: {what}")]
    Record { index: u32, what: &'static str },
}

/// How a batch payload is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    None,
    Zstd,
}

impl Codec {
    fn to_byte(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Zstd => 1,
        }
    }
    fn from_byte(b: u8) -> Result<Self, FormatError> {
        match b {
            0 => Ok(Codec::None),
            1 => Ok(Codec::Zstd),
            other => Err(FormatError::Codec(other)),
        }
    }
}

pub use crate::transport::Transport;

/// The transport's nibble in a record's source byte (this file's byte table).
impl Transport {
    fn to_nibble(self) -> u8 {
        match self {
            Transport::Import => 0,
            Transport::Udp => 1,
            Transport::Tcp => 2,
            Transport::Http => 3,
        }
    }
    fn from_nibble(n: u8) -> Option<Self> {
        match n {
            0 => Some(Transport::Import),
            1 => Some(Transport::Udp),
            2 => Some(Transport::Tcp),
            3 => Some(Transport::Http),
            _ => None,
        }
    }
}

/// Where a record came from: its transport and, for network transports, the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source {
    pub transport: Transport,
    pub peer: Option<SocketAddr>,
}

impl Source {
    pub const IMPORT: Source = Source {
        transport: Transport::Import,
        peer: None,
    };
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peer {
            Some(peer) => write!(f, "{}:{}", self.transport.as_str(), peer),
            None => f.write_str(self.transport.as_str()),
        }
    }
}

/// One record as decoded from a batch, borrowing its bytes from the decoded payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub offset: u64,
    /// Receive time, ns since the Unix epoch.
    pub recv_ts: u64,
    pub source: Source,
    pub flags: u8,
    pub bytes: &'a [u8],
}

/// The fixed header of a batch, as decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub codec: Codec,
    pub record_count: u32,
    pub base_offset: u64,
    pub base_ts: u64,
    pub min_ts: u64,
    pub max_ts: u64,
    pub uncompressed_len: u32,
    pub stored_len: u32,
}

impl BatchHeader {
    /// Bytes the whole batch (header and payload) occupies on disk.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.stored_len as usize
    }
    /// Offset one past the last record of the batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(a)
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes and sanity-checks the 64-byte header at the start of `buf` without touching the
/// payload or the CRC. Used to learn a batch's length before reading all of it.
pub fn decode_header(buf: &[u8]) -> Result<BatchHeader, FormatError> {
    if buf.len() < HEADER_LEN {
        return Err(FormatError::Short {
            need: HEADER_LEN,
            have: buf.len(),
        });
    }
    let h = &buf[..HEADER_LEN];
    let magic = [h[0], h[1], h[2], h[3]];
    if magic != BATCH_MAGIC {
        return Err(FormatError::Magic(magic));
    }
    let version = le_u16(h, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version(version));
    }
    let codec = Codec::from_byte(h[10])?;
    let header = BatchHeader {
        codec,
        record_count: le_u32(h, 12),
        base_offset: le_u64(h, 16),
        base_ts: le_u64(h, 24),
        min_ts: le_u64(h, 32),
        max_ts: le_u64(h, 40),
        uncompressed_len: le_u32(h, 48),
        stored_len: le_u32(h, 52),
    };
    let ulen = header.uncompressed_len as usize;
    if header.record_count == 0 {
        return Err(FormatError::Header("record_count is 0"));
    }
    if ulen > MAX_PAYLOAD || ulen < header.record_count as usize * MIN_RECORD_LEN {
        return Err(FormatError::Header("uncompressed_len out of range"));
    }
    if header.stored_len as usize > zstd::zstd_safe::compress_bound(MAX_PAYLOAD) {
        return Err(FormatError::Header("stored_len out of range"));
    }
    if codec == Codec::None && header.stored_len != header.uncompressed_len {
        return Err(FormatError::Header(
            "stored_len != uncompressed_len for codec none",
        ));
    }
    if header.min_ts > header.max_ts {
        return Err(FormatError::Header("min_ts > max_ts"));
    }
    if header
        .base_offset
        .checked_add(u64::from(header.record_count))
        .is_none()
    {
        return Err(FormatError::Header("offset overflow"));
    }
    Ok(header)
}

/// Checks the CRC of the complete batch at the start of `buf` and returns its header.
pub fn verify_batch(buf: &[u8]) -> Result<BatchHeader, FormatError> {
    let header = decode_header(buf)?;
    let total = header.total_len();
    if buf.len() < total {
        return Err(FormatError::Short {
            need: total,
            have: buf.len(),
        });
    }
    let stored = le_u32(buf, 4);
    let computed = crc32c::crc32c(&buf[8..total]);
    if stored != computed {
        return Err(FormatError::Crc { stored, computed });
    }
    Ok(header)
}

/// What [`decode_batch`] decodes into, kept by the caller and reused batch after batch (no
/// allocation per batch): the payload, and where each of its records is, found once while
/// validating them.
#[derive(Default)]
pub struct BatchScratch {
    payload: Vec<u8>,
    records: Vec<Located>,
    zstd: Option<zstd::bulk::Decompressor<'static>>,
}

/// A validated record of a decoded payload: its fields, and its bytes as a range of it.
#[derive(Debug, Clone, Copy)]
struct Located {
    recv_ts: u64,
    source: Source,
    flags: u8,
    start: u32,
    len: u32,
}

/// A batch whose CRC has been verified, whose payload has been decompressed and whose records
/// have been validated, in a [`BatchScratch`].
pub struct DecodedBatch<'a> {
    pub header: BatchHeader,
    payload: &'a [u8],
    records: &'a [Located],
}

impl<'a> DecodedBatch<'a> {
    /// Iterates over the records; every record was validated by [`decode_batch`].
    pub fn records(&self) -> Records<'a> {
        Records {
            base_offset: self.header.base_offset,
            payload: self.payload,
            records: self.records.iter().enumerate(),
        }
    }
}

/// Verifies the batch at the start of `buf`, decompresses its payload into `scratch` and
/// validates every record, so that iterating afterwards cannot fail. Each record is read
/// once: where it is goes into `scratch`, which the iterator reads (reading the records
/// again there cost 170 instructions per record, callgrind of a rebuild).
pub fn decode_batch<'s>(
    buf: &[u8],
    scratch: &'s mut BatchScratch,
) -> Result<DecodedBatch<'s>, FormatError> {
    let header = verify_batch(buf)?;
    let stored = &buf[HEADER_LEN..header.total_len()];
    let ulen = header.uncompressed_len as usize;
    let BatchScratch {
        payload,
        records,
        zstd,
    } = scratch;
    payload.clear();
    records.clear();
    match header.codec {
        Codec::None => payload.extend_from_slice(stored),
        Codec::Zstd => {
            // The Vec is empty, so zstd writes from its start into the reserved capacity.
            payload.reserve(ulen);
            let d = match zstd {
                Some(d) => d,
                None => zstd.insert(
                    zstd::bulk::Decompressor::new()
                        .map_err(|e| FormatError::Decompress(e.to_string()))?,
                ),
            };
            let n = d
                .decompress_to_buffer(stored, payload)
                .map_err(|e| FormatError::Decompress(e.to_string()))?;
            if n != ulen {
                return Err(FormatError::Decompress(format!(
                    "got {n} bytes, header says {ulen}"
                )));
            }
        }
    }
    // Validate every record once, so that the iterator can be infallible.
    let total = payload.len();
    let mut rest: &[u8] = payload;
    // Not more than the payload can hold (four bytes a record at least): the count is read
    // from the file.
    records.reserve((header.record_count as usize).min(total / 4));
    for index in 0..header.record_count {
        let (rec, after) = parse_record(&header, index, rest)?;
        // Positions within the payload, whose length (`uncompressed_len`) is a u32.
        let end = total - after.len();
        records.push(Located {
            recv_ts: rec.recv_ts,
            source: rec.source,
            flags: rec.flags,
            start: (end - rec.bytes.len()) as u32,
            len: rec.bytes.len() as u32,
        });
        rest = after;
    }
    if !rest.is_empty() {
        return Err(FormatError::Record {
            index: header.record_count,
            what: "trailing bytes after the last record",
        });
    }
    Ok(DecodedBatch {
        header,
        payload,
        records,
    })
}

/// Iterator over the records of a [`DecodedBatch`].
pub struct Records<'a> {
    base_offset: u64,
    payload: &'a [u8],
    records: std::iter::Enumerate<std::slice::Iter<'a, Located>>,
}

impl<'a> Iterator for Records<'a> {
    type Item = RecordRef<'a>;
    fn next(&mut self) -> Option<RecordRef<'a>> {
        let (i, r) = self.records.next()?;
        let start = r.start as usize;
        // decode_batch found these bytes in the payload, so this cannot fail; stop rather
        // than panic.
        let bytes = self.payload.get(start..start + r.len as usize)?;
        Some(RecordRef {
            offset: self.base_offset + i as u64,
            recv_ts: r.recv_ts,
            source: r.source,
            flags: r.flags,
            bytes,
        })
    }
}

fn read_varint(buf: &[u8]) -> Option<(u64, &[u8])> {
    let mut value: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, &buf[i + 1..]));
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}
fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn parse_record<'a>(
    header: &BatchHeader,
    index: u32,
    buf: &'a [u8],
) -> Result<(RecordRef<'a>, &'a [u8]), FormatError> {
    let bad = |what| FormatError::Record { index, what };
    let (len, rest) = read_varint(buf).ok_or_else(|| bad("bad length varint"))?;
    let (ts, rest) = read_varint(rest).ok_or_else(|| bad("bad timestamp varint"))?;
    let recv_ts = header
        .base_ts
        .checked_add_signed(unzigzag(ts))
        .ok_or_else(|| bad("timestamp overflows"))?;
    if recv_ts < header.min_ts || recv_ts > header.max_ts {
        return Err(bad("timestamp outside the batch's min/max"));
    }
    let [flags, source, rest @ ..] = rest else {
        return Err(bad("truncated flags/source"));
    };
    let transport =
        Transport::from_nibble(source & 0x0f).ok_or_else(|| bad("unknown transport"))?;
    let (peer, rest) = match source >> 4 {
        0 => (None, rest),
        4 => {
            let [a, b, c, d, p0, p1, rest @ ..] = rest else {
                return Err(bad("truncated IPv4 peer"));
            };
            let ip = IpAddr::V4(Ipv4Addr::new(*a, *b, *c, *d));
            (
                Some(SocketAddr::new(ip, u16::from_le_bytes([*p0, *p1]))),
                rest,
            )
        }
        6 => {
            if rest.len() < 18 {
                return Err(bad("truncated IPv6 peer"));
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&rest[..16]);
            let port = u16::from_le_bytes([rest[16], rest[17]]);
            let ip = IpAddr::V6(Ipv6Addr::from(octets));
            (Some(SocketAddr::new(ip, port)), &rest[18..])
        }
        _ => return Err(bad("unknown peer address kind")),
    };
    let len = usize::try_from(len).map_err(|_| bad("length overflows"))?;
    if len > rest.len() {
        return Err(bad("length runs past the payload"));
    }
    let (bytes, rest) = rest.split_at(len);
    Ok((
        RecordRef {
            offset: header.base_offset + u64::from(index),
            recv_ts,
            source: Source { transport, peer },
            flags: *flags,
            bytes,
        },
        rest,
    ))
}

/// Accumulates records into an uncompressed payload; [`BatchEncoder`] turns it into an
/// on-disk batch. Builders are recycled by the writer, keeping their allocations.
#[derive(Debug)]
pub struct BatchBuilder {
    payload: Vec<u8>,
    count: u32,
    base_ts: u64,
    min_ts: u64,
    max_ts: u64,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder {
            payload: Vec::new(),
            count: 0,
            base_ts: 0,
            min_ts: u64::MAX,
            max_ts: 0,
        }
    }
}

impl BatchBuilder {
    /// An empty builder with room for `bytes` of payload, allocated at once: a builder grown
    /// by doubling copies its payload at each step and ends with up to twice the room it
    /// uses (a batch sealed at 1 MiB in a 2 MiB buffer).
    pub fn with_capacity(bytes: usize) -> Self {
        BatchBuilder {
            payload: Vec::with_capacity(bytes),
            ..Self::default()
        }
    }

    /// Records added since the last encode.
    pub fn len(&self) -> u32 {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Uncompressed bytes added since the last encode.
    pub fn payload_len(&self) -> usize {
        self.payload.len()
    }

    /// Heap bytes it holds.
    pub fn capacity(&self) -> usize {
        self.payload.capacity()
    }

    /// Bytes that a record of `len` bytes adds to the payload at most.
    pub fn encoded_len_bound(len: usize) -> usize {
        len + 10 + 10 + 2 + 18
    }

    /// Appends one record. The caller keeps the payload under [`MAX_PAYLOAD`].
    pub fn push(&mut self, recv_ts: u64, source: Source, flags: u8, bytes: &[u8]) {
        if self.count == 0 {
            self.base_ts = recv_ts;
        }
        self.min_ts = self.min_ts.min(recv_ts);
        self.max_ts = self.max_ts.max(recv_ts);
        let out = &mut self.payload;
        put_varint(out, bytes.len() as u64);
        put_varint(out, zigzag(recv_ts.wrapping_sub(self.base_ts) as i64));
        let kind = match source.peer {
            None => 0u8,
            Some(SocketAddr::V4(_)) => 4,
            Some(SocketAddr::V6(_)) => 6,
        };
        out.push(flags);
        out.push(source.transport.to_nibble() | (kind << 4));
        match source.peer {
            None => {}
            Some(SocketAddr::V4(a)) => {
                out.extend_from_slice(&a.ip().octets());
                out.extend_from_slice(&a.port().to_le_bytes());
            }
            Some(SocketAddr::V6(a)) => {
                out.extend_from_slice(&a.ip().octets());
                out.extend_from_slice(&a.port().to_le_bytes());
            }
        }
        out.extend_from_slice(bytes);
        self.count += 1;
    }

    fn clear(&mut self) {
        self.payload.clear();
        self.count = 0;
        self.min_ts = u64::MAX;
        self.max_ts = 0;
    }
}

/// Compresses builders into batches: header, CRC and payload. Owns the zstd context, which
/// is reused for every batch of a shard.
pub struct BatchEncoder {
    codec: Codec,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    zbuf: Vec<u8>,
}

impl fmt::Debug for BatchEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchEncoder")
            .field("codec", &self.codec)
            .finish()
    }
}

impl BatchEncoder {
    /// An encoder for `codec`; `level` is the zstd level (ignored for `Codec::None`).
    pub fn new(codec: Codec, level: i32) -> std::io::Result<Self> {
        let compressor = match codec {
            Codec::Zstd => Some(zstd::bulk::Compressor::new(level)?),
            Codec::None => None,
        };
        Ok(BatchEncoder {
            codec,
            compressor,
            zbuf: Vec::new(),
        })
    }

    /// Encodes the records of `b` as a batch starting at `base_offset`, appends it to `out`
    /// and returns its header. `b` is empty afterwards. Call only with a non-empty builder.
    pub fn encode(
        &mut self,
        b: &mut BatchBuilder,
        base_offset: u64,
        out: &mut Vec<u8>,
    ) -> std::io::Result<BatchHeader> {
        let start = out.len();
        out.resize(start + HEADER_LEN, 0);
        let stored_len = match &mut self.compressor {
            Some(c) => {
                // zstd writes a Vec from its start, so compress into the reused `zbuf`.
                self.zbuf.clear();
                self.zbuf
                    .reserve(zstd::zstd_safe::compress_bound(b.payload.len()));
                let n = c.compress_to_buffer(&b.payload, &mut self.zbuf)?;
                out.extend_from_slice(&self.zbuf);
                n
            }
            None => {
                out.extend_from_slice(&b.payload);
                b.payload.len()
            }
        };
        let header = BatchHeader {
            codec: self.codec,
            record_count: b.count,
            base_offset,
            base_ts: b.base_ts,
            min_ts: b.min_ts,
            max_ts: b.max_ts,
            uncompressed_len: b.payload.len() as u32,
            stored_len: stored_len as u32,
        };
        let h = &mut out[start..start + HEADER_LEN];
        h[0..4].copy_from_slice(&BATCH_MAGIC);
        h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[10] = header.codec.to_byte();
        h[11] = 0;
        h[12..16].copy_from_slice(&header.record_count.to_le_bytes());
        h[16..24].copy_from_slice(&header.base_offset.to_le_bytes());
        h[24..32].copy_from_slice(&header.base_ts.to_le_bytes());
        h[32..40].copy_from_slice(&header.min_ts.to_le_bytes());
        h[40..48].copy_from_slice(&header.max_ts.to_le_bytes());
        h[48..52].copy_from_slice(&header.uncompressed_len.to_le_bytes());
        h[52..56].copy_from_slice(&header.stored_len.to_le_bytes());
        h[56..64].fill(0);
        let crc = crc32c::crc32c(&out[start + 8..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        b.clear();
        Ok(header)
    }
}

/// File name of the segment whose first record has `base_offset`.
pub fn segment_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}

/// File name of the sparse index of the segment with `base_offset`.
pub fn index_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.idx")
}

/// Parses `NNNNNNNNNNNNNNNNNNNN.log` (or `.idx` with `ext = "idx"`) into its base offset.
pub fn parse_file_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Directory name of shard `n`.
pub fn shard_dir_name(n: usize) -> String {
    format!("shard-{n:03}")
}

/// Parses `shard-NNN` into the shard number.
pub fn parse_shard_dir_name(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("shard-")?;
    if digits.len() < 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sources() -> impl Strategy<Value = Source> {
        prop_oneof![
            Just(Source::IMPORT),
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| Source {
                transport: Transport::Udp,
                peer: Some(SocketAddr::new(IpAddr::V4(ip.into()), port)),
            }),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| Source {
                transport: Transport::Tcp,
                peer: Some(SocketAddr::new(IpAddr::V6(ip.into()), port)),
            }),
        ]
    }

    type Rec = (u64, Source, u8, Vec<u8>);

    fn encode(codec: Codec, base: u64, recs: &[Rec]) -> Vec<u8> {
        let mut b = BatchBuilder::default();
        for (ts, src, flags, bytes) in recs {
            b.push(*ts, *src, *flags, bytes);
        }
        let mut out = Vec::new();
        BatchEncoder::new(codec, 1)
            .unwrap()
            .encode(&mut b, base, &mut out)
            .unwrap();
        assert!(b.is_empty());
        out
    }

    proptest! {
        #[test]
        fn round_trip(
            base in 0u64..u64::MAX / 2,
            zstd in any::<bool>(),
            recs in prop::collection::vec(
                (1u64 << 60..(1u64 << 60) + (1 << 40), sources(), any::<u8>(),
                 prop::collection::vec(any::<u8>(), 0..300)),
                1..40),
        ) {
            let codec = if zstd { Codec::Zstd } else { Codec::None };
            let bytes = encode(codec, base, &recs);
            let mut scratch = BatchScratch::default();
            let batch = decode_batch(&bytes, &mut scratch).unwrap();
            prop_assert_eq!(batch.header.record_count as usize, recs.len());
            let got: Vec<Rec> = batch.records().map(|r| (r.recv_ts, r.source, r.flags, r.bytes.to_vec())).collect();
            prop_assert_eq!(&got, &recs);
            let offsets: Vec<u64> = batch.records().map(|r| r.offset).collect();
            let want: Vec<u64> = (0..recs.len() as u64).map(|i| base + i).collect();
            prop_assert_eq!(offsets, want);
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut scratch = BatchScratch::default();
            let _ = decode_batch(&bytes, &mut scratch);
        }

        #[test]
        fn any_flip_is_detected(
            recs in prop::collection::vec((1u64 << 50..(1u64 << 50) + 1000, Just(Source::IMPORT), Just(0u8),
                prop::collection::vec(any::<u8>(), 0..100)), 1..10),
            pos in any::<prop::sample::Index>(), bit in 0u8..8,
        ) {
            let mut bytes = encode(Codec::Zstd, 7, &recs);
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let mut scratch = BatchScratch::default();
            prop_assert!(decode_batch(&bytes, &mut scratch).is_err());
        }
    }

    #[test]
    fn file_names() {
        assert_eq!(segment_file_name(42), "00000000000000000042.log");
        assert_eq!(parse_file_name("00000000000000000042.log", "log"), Some(42));
        assert_eq!(parse_file_name("00000000000000000042.idx", "log"), None);
        assert_eq!(parse_file_name("42.log", "log"), None);
        assert_eq!(parse_shard_dir_name("shard-007"), Some(7));
        assert_eq!(parse_shard_dir_name("shard-x"), None);
    }
}
