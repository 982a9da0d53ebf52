// The bodies of pixeld's fuzz targets, shared by `fuzz/fuzz_targets/*.rs` (libFuzzer, through
// `include!`) and by `tests/fuzz_corpus.rs` (the normal test suite runs every seed of
// `fuzz/corpus/` and proptest's random inputs through the same code). Each body feeds
// untrusted bytes to one parser or reader the way pixeld does and asserts what must hold for
// any input: no panic, outputs are views of the input, nothing grows without bound.
//
// Not a module of its own (no `//!`): `include!` pastes it into each target.

/// The syslog header parser (`parse::syslog::parse`), which every UDP datagram and TCP frame
/// goes through. The message must be a suffix of the input.
pub fn syslog(data: &[u8]) {
    if let Ok(s) = pixeld::parse::syslog::parse(data) {
        let (start, end) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
        let m = s.msg.as_ptr() as usize;
        assert!(m >= start && m + s.msg.len() <= end, "msg outside the input");
        let _ = (s.facility(), s.severity());
    }
}

/// TCP framing (`ingest::framing::FrameDecoder`) fed the way `ingest/tcp.rs` feeds it: the
/// input arrives in reads of varying size, the caller keeps the unconsumed bytes at the front
/// of its buffer, and the stream ends with `finish`. Byte 0 picks the mode, byte 1 the frame
/// limit, byte 2 the read size.
pub fn framing(data: &[u8]) {
    use pixeld::ingest::framing::{Event, FrameDecoder, Framing};
    let [mode, limit, step, rest @ ..] = data else {
        return;
    };
    let mode = match mode % 3 {
        0 => Framing::Auto,
        1 => Framing::Octet,
        _ => Framing::Line,
    };
    let max = 1 + usize::from(*limit) * 4;
    let step = 1 + usize::from(*step);
    let mut decoder = FrameDecoder::new(mode, max);
    let mut buf: Vec<u8> = Vec::new();
    let mut delivered = 0usize;
    for chunk in rest.chunks(step) {
        buf.extend_from_slice(chunk);
        let mut fatal = false;
        let consumed = decoder.decode(&buf, |e| match e {
            Event::Frame(f) => {
                assert!(f.len() <= max, "frame of {} bytes over the limit {max}", f.len());
                delivered += f.len();
            }
            Event::Fatal(_) => fatal = true,
            Event::Empty | Event::Oversize { .. } | Event::Partial { .. } => {}
        });
        assert!(consumed <= buf.len(), "consumed more than it was given");
        buf.drain(..consumed);
        if fatal || decoder.is_failed() {
            return;
        }
        // What the caller must keep between reads is bounded by the frame limit.
        assert!(
            buf.len() <= max + 32,
            "holds {} unconsumed bytes with a limit of {max}",
            buf.len()
        );
    }
    let _ = decoder.finish(&buf);
    assert!(delivered <= rest.len(), "delivered more bytes than arrived");
}

/// Event extraction (`parse::event::EventParser`): nginx JSON, combined pixel requests and
/// NDJSON, with and without a syslog header, through both entry points.
pub fn event(data: &[u8]) {
    use pixeld::parse::event::{EventConfig, EventParser};
    let mut p = EventParser::new(EventConfig::default());
    if let Ok(e) = p.parse(data) {
        assert!(e.url.len() <= data.len() * 3 + 64, "url grew without bound");
        assert!(e.vid.len() <= data.len() * 3 + 64, "vid grew without bound");
        let _ = (e.site, e.ref_domain, e.ts_ms, e.engaged_seconds);
    }
    let _ = p.parse_message(data).map(|e| e.url.len());
}

/// The batch decoder (`log::format`), which reads every byte of every segment at recovery,
/// replay and rebuild. When byte 4's low bit is set, the CRC field is recomputed first, so
/// that the fuzzer reaches decompression and record parsing instead of stopping at the CRC.
pub fn batch(data: &[u8]) {
    use pixeld::log::format::{decode_batch, decode_header, BatchScratch, HEADER_LEN};
    let mut buf = data.to_vec();
    if buf.len() >= HEADER_LEN && buf[4] & 1 == 1 {
        if let Ok(h) = decode_header(&buf) {
            let total = h.total_len().min(buf.len());
            let crc = crc32c::crc32c(&buf[8..total]);
            buf[4..8].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let mut scratch = BatchScratch::default();
    if let Ok(b) = decode_batch(&buf, &mut scratch) {
        let (mut n, mut bytes) = (0u32, 0usize);
        for r in b.records() {
            bytes += r.bytes.len();
            n += 1;
        }
        assert_eq!(n, b.header.record_count, "record count differs from the header");
        assert!(
            bytes <= b.header.uncompressed_len as usize,
            "records hold more bytes than the payload"
        );
    }
}

/// The query parsers of the JSON API: byte 0 picks the endpoint — a query string of
/// `/v1/top`, `/v1/timeseries`, `/v1/summary` or `/v1/realtime` (`query::params::parse`), or
/// (5) the JSON body of `POST /v1/query` (`query::api::parse`).
pub fn query(data: &[u8]) {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    let cfg = pixeld::agg::AggConfig::default();
    // fixed-date: the parser is given its own `now`; it never reads the clock.
    let now_ms = 1_795_311_543_462;
    if usize::from(*which) % 5 == 4 {
        if let Err(e) = pixeld::query::api::parse(rest, now_ms, &cfg) {
            assert!(!e.to_string().is_empty() && !e.param.is_empty());
        }
        return;
    }
    let path = ["/v1/top", "/v1/timeseries", "/v1/summary", "/v1/realtime"][usize::from(*which) % 5];
    let q = String::from_utf8_lossy(rest);
    if let Some(Err(e)) = pixeld::query::params::parse(path, Some(&q), now_ms, &cfg) {
        assert!(!e.to_string().is_empty());
    }
}
