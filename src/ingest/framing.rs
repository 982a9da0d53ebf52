//! Splitting a relay's TCP byte stream into frames (log lines), incrementally.
//!
//! This module owns exactly one decision: where each frame in a stream from a log relay begins
//! and ends. It understands RFC 6587 octet-counted framing (`LEN SP MSG`, as rsyslog's omfwd
//! sends) and LF or CRLF delimited lines (as Vector, Fluent Bit and the nginx stream proxy send).
//! It must not parse, validate or copy frame contents, must not own the socket or the receive
//! buffer, and must not panic or allocate: the connection handler owns a buffer, appends what the
//! socket delivers, calls [`FrameDecoder::decode`], and drops the consumed prefix. Frames are
//! handed out as slices of that buffer, so the hot path is zero-copy and allocation-free, and the
//! decoder keeps only a few integers of state between calls. That state includes how far an
//! incomplete line has already been searched for LF, so retained bytes are never rescanned and
//! the total work over a stream is O(n) however the stream is chunked. Memory is bounded: the
//! caller never needs to keep more than `max_frame_bytes + 10` unconsumed bytes, because an
//! oversize line is discarded as it arrives instead of being buffered. Every byte that does not
//! end up in a frame is reported through an [`Event`] (`Oversize`, `Partial`, `Fatal`) so that it
//! can be counted, except the LF or CRLF separators between octet-counted frames, which carry no
//! data.
//!
//! THE DETECTION RULE (`tcp_framing = "auto"`): the decision is made per frame, never per
//! connection, from the first bytes of each frame. A frame is octet-counted if and only if it
//! starts with 1 to 9 ASCII digits, the first of which is not `0`, immediately followed by exactly
//! one SP (0x20), and the number those digits spell is at most `max_frame_bytes`; the frame is
//! then that prefix followed by exactly that many bytes of message. Every other frame is a line
//! frame that ends at the next LF. LF and CRLF between frames are skipped silently. So
//! `57 <190>Nov 22 ...` is octet-counted, while `127.0.0.1 - - [...]` (the digits run into a
//! `.`) and `<190>Nov 22 ...` are lines. Detection from the bytes themselves cannot be
//! perfect: a line that itself starts with a digit run and a space, such as `200 OK` or
//! `42 <13>...`, is taken as an octet count whenever that count is within `max_frame_bytes`, and
//! then swallows the following bytes as its message (or ends as `Partial` at end of stream).
//! Operators whose relay may send such lines force the mode with `tcp_framing = "line"` or
//! `tcp_framing = "octet"`.
//!
//! The modes in detail. In line mode a frame ends at LF, one CR immediately before the LF is
//! removed, and an empty line is reported as [`Event::Empty`]. In octet mode every frame must be
//! `LEN SP MSG` with the LEN syntax above; anything else is a fatal framing error, because once a
//! count is lost there is no way to find the next frame boundary and the connection must be
//! dropped. A line longer than `max_frame_bytes` (excluding its LF or CRLF terminator) is dropped
//! and decoding resynchronises at the next LF; an octet count above `max_frame_bytes` in octet
//! mode is skipped byte for byte, which keeps the stream in sync. At end of stream an incomplete
//! frame, including a final line without LF, is reported as `Partial` rather than delivered:
//! relays always terminate their lines, so an unterminated one means the relay died mid-write and
//! the bytes may be a truncated record.

/// How a TCP connection's byte stream is split into frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Framing {
    /// Per-frame detection between octet-counted and line framing; see the module docs. A
    /// receiver's choice only: `pixeld blast --framing` sends `line` or `octet`.
    #[value(skip)]
    Auto,
    /// RFC 6587 octet counting only: every frame is `LEN SP MSG`.
    Octet,
    /// LF-delimited lines only, with an optional CR before the LF.
    Line,
}

/// A framing violation after which the stream cannot be resynchronised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The frame does not start with a digit from 1 to 9: it is non-numeric, zero, or has a
    /// leading zero.
    #[error("octet count is not a number from 1 without leading zeros")]
    BadOctetCount,
    /// The count has more than nine digits, which no sane relay sends.
    #[error("octet count has more than 9 digits")]
    CountOverflow,
    /// The digits of the count are followed by something other than a single space.
    #[error("octet count is not followed by a space")]
    MissingSpace,
}

impl FramingError {
    /// A short, fixed label for metrics, so that label cardinality stays bounded.
    pub fn kind(self) -> &'static str {
        match self {
            FramingError::BadOctetCount => "bad_octet_count",
            FramingError::CountOverflow => "count_overflow",
            FramingError::MissingSpace => "missing_space",
        }
    }
}

/// One outcome of decoding. Frames borrow from the buffer passed to [`FrameDecoder::decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete frame: the message of an octet-counted frame, or a line without its LF or
    /// CRLF terminator.
    Frame(&'a [u8]),
    /// An empty line in line mode. It carries no data and is not an error.
    Empty,
    /// A frame longer than `max_frame_bytes` was dropped. `len` counts the dropped bytes: for a
    /// line every byte before the LF (a CR included), for an octet-counted frame the LEN bytes
    /// of its message.
    Oversize { len: usize },
    /// The stream violates octet framing. The connection must be closed; the decoder consumes
    /// nothing more, and the bytes the caller still holds are the connection's dropped bytes.
    Fatal(FramingError),
    /// The stream ended inside a frame; `len` bytes were received but not delivered.
    Partial { len: usize },
}

/// What the decoder knows about the bytes at the front of the caller's buffer between calls.
/// Every position is relative to the first unconsumed byte, which is why the caller must keep
/// the unconsumed bytes, in order, at the front of the buffer it passes next time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The next byte starts a frame (or, in octet and auto mode, a separator between frames).
    Boundary,
    /// A line frame starts at the front; its first `scanned` bytes contain no LF.
    Line { scanned: usize },
    /// An octet-counted frame starts at the front: a `header`-byte prefix, then `len` bytes of
    /// message. The prefix stays unconsumed until the whole frame has arrived, so that a frame
    /// cut off by end of stream is reported as `Partial` with all of its bytes.
    Octet { header: usize, len: usize },
    /// An oversize line is being discarded up to its LF; `dropped` bytes of it are gone.
    SkipLine { dropped: usize },
    /// The message of an oversize octet-counted frame is being discarded; `remaining` of its
    /// `total` bytes have not arrived yet.
    SkipOctet { remaining: usize, total: usize },
    /// A fatal framing error was reported; nothing more is decoded.
    Failed(FramingError),
}

/// The outcome of reading an octet-count prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    /// A valid prefix of `header` bytes (digits and the space) announcing `len` bytes.
    Count { header: usize, len: usize },
    /// The bytes so far are a valid beginning of a prefix; more are needed to decide.
    Incomplete,
    /// The bytes cannot start a valid prefix.
    Invalid(FramingError),
}

/// The most digits an octet count may have. Nine digits keep every count below 10^9, which fits
/// a `usize` even on 32-bit targets, so parsing needs no overflow checks.
const MAX_COUNT_DIGITS: usize = 9;

/// Reads an octet-count prefix from the start of `bytes`. It looks at no more than
/// `MAX_COUNT_DIGITS + 1` bytes, so calling it again on retained bytes costs O(1).
fn parse_header(bytes: &[u8]) -> Header {
    let mut len = 0usize;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'0' if i == 0 => return Header::Invalid(FramingError::BadOctetCount),
            b'0'..=b'9' if i == MAX_COUNT_DIGITS => {
                return Header::Invalid(FramingError::CountOverflow)
            }
            b'0'..=b'9' => len = len * 10 + usize::from(b - b'0'),
            _ if i == 0 => return Header::Invalid(FramingError::BadOctetCount),
            b' ' => return Header::Count { header: i + 1, len },
            _ => return Header::Invalid(FramingError::MissingSpace),
        }
    }
    Header::Incomplete
}

/// An incremental frame splitter for one TCP connection.
///
/// The caller keeps a receive buffer. After each read it appends the new bytes, calls
/// [`decode`](Self::decode) on the whole buffer, and removes the returned number of bytes from
/// the front. At end of stream it calls [`finish`](Self::finish) with what is left.
#[derive(Debug)]
pub struct FrameDecoder {
    mode: Framing,
    max_frame_bytes: usize,
    state: State,
}

impl FrameDecoder {
    /// A decoder for a fresh connection. `max_frame_bytes` bounds the length of a delivered
    /// frame (the message without prefix or terminator) and hence the caller's buffer.
    pub fn new(mode: Framing, max_frame_bytes: usize) -> Self {
        FrameDecoder {
            mode,
            max_frame_bytes,
            state: State::Boundary,
        }
    }

    /// The framing mode this decoder was built with.
    pub fn mode(&self) -> Framing {
        self.mode
    }

    /// Whether a fatal framing error has been reported, after which the connection must close.
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed(_))
    }

    /// Decodes as many events as possible from `buf`, the bytes received and not yet consumed,
    /// oldest first, and calls `on_event` for each in stream order. Returns how many bytes of
    /// `buf` were consumed: the caller drops them and keeps the rest (the start of an incomplete
    /// frame, never more than `max_frame_bytes + 10` bytes) for the next call, after appending
    /// newly received bytes. Bytes of an oversize frame are consumed as soon as they arrive.
    /// After a [`Event::Fatal`] it consumes nothing more and the caller closes the connection.
    pub fn decode<'a>(&mut self, buf: &'a [u8], mut on_event: impl FnMut(Event<'a>)) -> usize {
        let max = self.max_frame_bytes;
        let mut pos = 0usize;
        loop {
            // `pos` never exceeds `buf.len()`, but an empty fallback keeps this panic-free even
            // if that reasoning were ever broken.
            let rest = buf.get(pos..).unwrap_or_default();
            match self.state {
                State::Failed(_) => return pos,
                State::Boundary => {
                    if self.mode == Framing::Line {
                        self.state = State::Line { scanned: 0 };
                        continue;
                    }
                    // Octet and auto mode: relays often terminate octet-counted frames with LF
                    // or CRLF anyway, so separators between frames are skipped. A CR at the end
                    // of the buffer may be the first half of a CRLF, so it waits for one more
                    // byte.
                    match rest {
                        [] | [b'\r'] => return pos,
                        [b'\n', ..] => {
                            pos += 1;
                            continue;
                        }
                        [b'\r', b'\n', ..] => {
                            pos += 2;
                            continue;
                        }
                        _ => {}
                    }
                    match (parse_header(rest), self.mode) {
                        (Header::Incomplete, _) => return pos,
                        (Header::Count { header, len }, _) if len <= max => {
                            self.state = State::Octet { header, len };
                        }
                        (Header::Count { header, len }, Framing::Octet) => {
                            // The count is trustworthy even though it is too large, so the
                            // message is skipped exactly and the stream stays in sync. The
                            // prefix is consumed now; only message bytes are counted.
                            pos += header;
                            self.state = State::SkipOctet {
                                remaining: len,
                                total: len,
                            };
                        }
                        (Header::Invalid(err), Framing::Octet) => {
                            self.state = State::Failed(err);
                            on_event(Event::Fatal(err));
                            return pos;
                        }
                        // In auto mode anything that is not a valid count within the limit is
                        // a line; see THE DETECTION RULE in the module docs.
                        _ => self.state = State::Line { scanned: 0 },
                    }
                }
                State::Line { scanned } => {
                    let scanned = scanned.min(rest.len());
                    let unscanned = rest.get(scanned..).unwrap_or_default();
                    match memchr::memchr(b'\n', unscanned) {
                        Some(i) => {
                            let lf = scanned + i;
                            let line = rest.get(..lf).unwrap_or_default();
                            let content = line.strip_suffix(b"\r").unwrap_or(line);
                            if content.len() > max {
                                on_event(Event::Oversize { len: lf });
                            } else if content.is_empty() {
                                on_event(Event::Empty);
                            } else {
                                on_event(Event::Frame(content));
                            }
                            pos += lf + 1;
                            self.state = State::Boundary;
                        }
                        None => {
                            // A trailing CR may yet turn out to be part of the terminator, so
                            // it does not count towards the limit until the next byte arrives.
                            // Once the line is certainly too long, its bytes are discarded at
                            // once instead of being kept in the caller's buffer.
                            let certain = match rest.last() {
                                Some(b'\r') => rest.len() - 1,
                                _ => rest.len(),
                            };
                            if certain > max {
                                pos += rest.len();
                                self.state = State::SkipLine {
                                    dropped: rest.len(),
                                };
                            } else {
                                self.state = State::Line {
                                    scanned: rest.len(),
                                };
                            }
                            return pos;
                        }
                    }
                }
                State::Octet { header, len } => {
                    let end = header + len;
                    match rest.get(header..end) {
                        Some(message) => {
                            on_event(Event::Frame(message));
                            pos += end;
                            self.state = State::Boundary;
                        }
                        None => return pos,
                    }
                }
                State::SkipLine { dropped } => match memchr::memchr(b'\n', rest) {
                    Some(i) => {
                        on_event(Event::Oversize {
                            len: dropped.saturating_add(i),
                        });
                        pos += i + 1;
                        self.state = State::Boundary;
                    }
                    None => {
                        pos += rest.len();
                        self.state = State::SkipLine {
                            dropped: dropped.saturating_add(rest.len()),
                        };
                        return pos;
                    }
                },
                State::SkipOctet { remaining, total } => {
                    let n = remaining.min(rest.len());
                    pos += n;
                    let remaining = remaining - n;
                    if remaining == 0 {
                        on_event(Event::Oversize { len: total });
                        self.state = State::Boundary;
                    } else {
                        self.state = State::SkipOctet { remaining, total };
                        return pos;
                    }
                }
            }
        }
    }

    /// End of stream: reports what is left in `buf` (the unconsumed bytes, after a final
    /// [`decode`](Self::decode) on everything received) as [`Event::Partial`], if anything is
    /// left. An oversize frame that was being discarded when the stream ended is reported as
    /// [`Event::Oversize`] with the bytes that did arrive, because it was already dropped for
    /// its size. After a fatal error it reports nothing: the error was the report. The decoder
    /// is then ready for a new stream (unless it failed).
    pub fn finish(&mut self, buf: &[u8]) -> Option<Event<'static>> {
        let event = match self.state {
            State::Failed(_) => return None,
            State::SkipLine { dropped } => Some(Event::Oversize {
                len: dropped.saturating_add(buf.len()),
            }),
            State::SkipOctet { remaining, total } => Some(Event::Oversize {
                len: (total - remaining).saturating_add(buf.len()),
            }),
            State::Boundary | State::Line { .. } | State::Octet { .. } => {
                (!buf.is_empty()).then_some(Event::Partial { len: buf.len() })
            }
        };
        self.state = State::Boundary;
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An owned copy of an [`Event`], so events can be collected across buffer drains.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Frame(Vec<u8>),
        Empty,
        Oversize(usize),
        Fatal(FramingError),
        Partial(usize),
    }

    impl From<Event<'_>> for Ev {
        fn from(e: Event<'_>) -> Self {
            match e {
                Event::Frame(f) => Ev::Frame(f.to_vec()),
                Event::Empty => Ev::Empty,
                Event::Oversize { len } => Ev::Oversize(len),
                Event::Fatal(err) => Ev::Fatal(err),
                Event::Partial { len } => Ev::Partial(len),
            }
        }
    }

    fn frame(bytes: &[u8]) -> Ev {
        Ev::Frame(bytes.to_vec())
    }

    struct Fed {
        events: Vec<Ev>,
        /// The largest the caller's buffer got, right after appending a chunk.
        peak_buffer: usize,
        /// The most bytes left unconsumed after any decode call.
        peak_retained: usize,
    }

    /// Emulates a connection handler: appends each chunk to a Vec, decodes, drains the consumed
    /// prefix, stops at a fatal error (the connection closes), and calls `finish` at the end.
    fn feed_chunks<'c>(
        mode: Framing,
        max: usize,
        chunks: impl IntoIterator<Item = &'c [u8]>,
    ) -> Fed {
        let mut dec = FrameDecoder::new(mode, max);
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = Fed {
            events: Vec::new(),
            peak_buffer: 0,
            peak_retained: 0,
        };
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            fed.peak_buffer = fed.peak_buffer.max(buf.len());
            let mut fatal = false;
            let consumed = dec.decode(&buf, |e| {
                fatal |= matches!(e, Event::Fatal(_));
                fed.events.push(e.into());
            });
            assert!(
                consumed <= buf.len(),
                "consumed {consumed} of {}",
                buf.len()
            );
            buf.drain(..consumed);
            if !fatal {
                fed.peak_retained = fed.peak_retained.max(buf.len());
            } else {
                assert!(dec.is_failed());
                assert_eq!(dec.decode(&buf, |e| panic!("event after fatal: {e:?}")), 0);
                assert_eq!(dec.finish(&buf), None);
                return fed;
            }
        }
        if let Some(e) = dec.finish(&buf) {
            fed.events.push(e.into());
        }
        fed
    }

    /// Feeds `stream` in chunks whose sizes cycle through `sizes` (a zero size counts as one).
    fn feed(mode: Framing, max: usize, stream: &[u8], sizes: &[usize]) -> Fed {
        let mut chunks = Vec::new();
        let mut rest = stream;
        let mut sizes = sizes.iter().copied().cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
            let (chunk, tail) = rest.split_at(n);
            chunks.push(chunk);
            rest = tail;
        }
        feed_chunks(mode, max, chunks)
    }

    fn events(mode: Framing, max: usize, stream: &[u8]) -> Vec<Ev> {
        feed(mode, max, stream, &[stream.len().max(1)]).events
    }

    /// Checks that `stream` yields `expected` in one piece, split in two at every byte boundary,
    /// and one byte at a time.
    fn assert_every_split(mode: Framing, max: usize, stream: &[u8], expected: &[Ev]) {
        assert_eq!(events(mode, max, stream), expected, "whole stream");
        for k in 0..=stream.len() {
            let (a, b) = stream.split_at(k);
            let got = feed_chunks(mode, max, [a, b]).events;
            assert_eq!(got, expected, "split at {k}");
        }
        assert_eq!(
            feed(mode, max, stream, &[1]).events,
            expected,
            "byte by byte"
        );
    }

    fn octet(msg: &[u8]) -> Vec<u8> {
        let mut v = format!("{} ", msg.len()).into_bytes();
        v.extend_from_slice(msg);
        v
    }

    // ---- Line mode ----

    #[test]
    fn line_lf_and_crlf() {
        assert_every_split(
            Framing::Line,
            64,
            b"alpha\nbeta\r\ngamma\r\r\n delta \n",
            &[
                frame(b"alpha"),
                frame(b"beta"),
                frame(b"gamma\r"),
                frame(b" delta "),
            ],
        );
    }

    #[test]
    fn line_empty_lines_are_counted_not_errors() {
        assert_every_split(
            Framing::Line,
            64,
            b"\n\r\na\n\n\r\nb\n",
            &[
                Ev::Empty,
                Ev::Empty,
                frame(b"a"),
                Ev::Empty,
                Ev::Empty,
                frame(b"b"),
            ],
        );
    }

    #[test]
    fn line_oversize_dropped_then_next_line_intact() {
        let mut stream = b"short\n".to_vec();
        stream.extend(std::iter::repeat_n(b'x', 20));
        stream.extend_from_slice(b"\nnext\n");
        stream.extend(std::iter::repeat_n(b'y', 9));
        stream.extend_from_slice(b"\r\nlast\n");
        assert_every_split(
            Framing::Line,
            8,
            &stream,
            &[
                frame(b"short"),
                Ev::Oversize(20),
                frame(b"next"),
                Ev::Oversize(10),
                frame(b"last"),
            ],
        );
    }

    #[test]
    fn line_exactly_at_limit_is_delivered_with_either_terminator() {
        assert_every_split(
            Framing::Line,
            8,
            b"12345678\r\n12345678\n",
            &[frame(b"12345678"), frame(b"12345678")],
        );
    }

    #[test]
    fn long_oversize_line_in_small_chunks_is_not_buffered() {
        let max = 64;
        let mut stream = vec![b'z'; 10_000];
        stream.extend_from_slice(b"\r\nafter\n");
        let fed = feed(Framing::Line, max, &stream, &[7, 3, 11, 1]);
        assert_eq!(fed.events, [Ev::Oversize(10_001), frame(b"after")]);
        assert!(
            fed.peak_buffer <= max + 16,
            "buffer grew to {}",
            fed.peak_buffer
        );
        assert!(fed.peak_retained <= max + 1, "kept {}", fed.peak_retained);
    }

    #[test]
    fn line_partial_at_eof() {
        assert_every_split(Framing::Line, 64, b"a\nabc", &[frame(b"a"), Ev::Partial(3)]);
        assert_eq!(
            events(Framing::Line, 64, b"a\nb\r"),
            [frame(b"a"), Ev::Partial(2)]
        );
    }

    #[test]
    fn unterminated_oversize_line_at_eof_is_oversize() {
        let fed = feed(Framing::Line, 4, b"ok\n0123456789", &[3]);
        assert_eq!(fed.events, [frame(b"ok"), Ev::Oversize(10)]);
    }

    // ---- Octet mode ----

    #[test]
    fn octet_frames_may_contain_lf() {
        let mut stream = octet(b"ab\ncd");
        stream.extend(octet(b"\n"));
        stream.extend(octet(b"<190>Nov 22 01:40:00 pixel: {\"a\":1}\r\n"));
        assert_every_split(
            Framing::Octet,
            64,
            &stream,
            &[
                frame(b"ab\ncd"),
                frame(b"\n"),
                frame(b"<190>Nov 22 01:40:00 pixel: {\"a\":1}\r\n"),
            ],
        );
    }

    #[test]
    fn octet_trailing_lf_and_crlf_between_frames_are_skipped() {
        assert_every_split(
            Framing::Octet,
            64,
            b"\n3 abc\n3 def\r\n\n\r\n10 0123456789\n",
            &[frame(b"abc"), frame(b"def"), frame(b"0123456789")],
        );
    }

    #[test]
    fn octet_count_over_limit_skips_exactly_len_bytes() {
        let mut stream = b"10 0123456789".to_vec();
        stream.extend(octet(b"abc"));
        stream.extend_from_slice(b"\n12 0123\n\n567890\n");
        stream.extend(octet(b"wxyz"));
        assert_every_split(
            Framing::Octet,
            4,
            &stream,
            &[
                Ev::Oversize(10),
                frame(b"abc"),
                Ev::Oversize(12),
                frame(b"wxyz"),
            ],
        );
    }

    #[test]
    fn octet_oversize_cut_by_eof_counts_what_arrived() {
        assert_eq!(events(Framing::Octet, 4, b"10 01234"), [Ev::Oversize(5)]);
    }

    #[test]
    fn octet_bad_prefixes_are_fatal() {
        let cases: [(&[u8], FramingError); 9] = [
            (b"0 x", FramingError::BadOctetCount),
            (b"01 x", FramingError::BadOctetCount),
            (b"abc", FramingError::BadOctetCount),
            (b" 1 x", FramingError::BadOctetCount),
            (b"\rx", FramingError::BadOctetCount),
            (b"1234567890 x", FramingError::CountOverflow),
            (b"12x", FramingError::MissingSpace),
            (b"3\tabc", FramingError::MissingSpace),
            (b"123456789x", FramingError::MissingSpace),
        ];
        for (stream, err) in cases {
            assert_every_split(Framing::Octet, 64, stream, &[Ev::Fatal(err)]);
        }
        assert_eq!(FramingError::BadOctetCount.kind(), "bad_octet_count");
        assert_eq!(FramingError::CountOverflow.kind(), "count_overflow");
        assert_eq!(FramingError::MissingSpace.kind(), "missing_space");
    }

    #[test]
    fn octet_fatal_after_good_frame_consumes_only_the_good_frame() {
        let mut dec = FrameDecoder::new(Framing::Octet, 64);
        let buf = b"3 abc\n01 x";
        let mut got = Vec::new();
        let consumed = dec.decode(buf, |e| got.push(Ev::from(e)));
        assert_eq!(got, [frame(b"abc"), Ev::Fatal(FramingError::BadOctetCount)]);
        assert_eq!(consumed, 6);
        assert!(dec.is_failed());
        assert_eq!(dec.decode(&buf[consumed..], |_| panic!("after fatal")), 0);
    }

    #[test]
    fn octet_partial_at_eof() {
        assert_every_split(
            Framing::Octet,
            64,
            b"3 abc10 abc",
            &[frame(b"abc"), Ev::Partial(6)],
        );
        assert_eq!(events(Framing::Octet, 64, b"12"), [Ev::Partial(2)]);
        assert_eq!(
            events(Framing::Octet, 64, b"3 abc\r"),
            [frame(b"abc"), Ev::Partial(1)]
        );
    }

    // ---- Auto mode ----

    const NGINX: &[u8] =
        b"127.0.0.1 - - [22/Nov/2025:01:40:00 +0000] \"GET /p.gif?u=1 HTTP/1.1\" 200 43";
    const SYSLOG: &[u8] = b"<190>Nov 22 01:40:00 pixel: {\"path\":\"/pricing\"}";

    #[test]
    fn auto_mixes_octet_frames_and_lines_per_frame() {
        let msg = b"<190>Nov 22 01:40:00 pixel: {\"ref\":\"x\"}";
        let mut stream = octet(msg);
        stream.push(b'\n');
        stream.extend_from_slice(NGINX);
        stream.push(b'\n');
        stream.extend_from_slice(SYSLOG);
        stream.extend_from_slice(b"\r\n");
        stream.extend(octet(b"two\nlines"));
        stream.extend(octet(b"back to back"));
        stream.extend_from_slice(b"\r\n\n");
        stream.extend_from_slice(b"\x00\xff garbage \x80\n");
        stream.extend_from_slice(b"0 zero count is a line\n");
        stream.extend_from_slice(b"01 leading zero is a line\n");
        stream.extend_from_slice(b"1234567890 ten digits is a line\n");
        stream.extend_from_slice(b"12x is a line\r\n");
        stream.extend_from_slice(b"\rcr first\n");
        assert_every_split(
            Framing::Auto,
            128,
            &stream,
            &[
                frame(msg),
                frame(NGINX),
                frame(SYSLOG),
                frame(b"two\nlines"),
                frame(b"back to back"),
                frame(b"\x00\xff garbage \x80"),
                frame(b"0 zero count is a line"),
                frame(b"01 leading zero is a line"),
                frame(b"1234567890 ten digits is a line"),
                frame(b"12x is a line"),
                frame(b"\rcr first"),
            ],
        );
    }

    /// The limit of auto-detection: `200 OK` is digits and a space, so it is read as an octet
    /// count of 200 and the following bytes become its message. With fewer than 200 bytes
    /// after it, the whole remainder ends as `Partial` at end of stream.
    #[test]
    fn auto_status_line_is_misread_as_octet_count() {
        let mut stream = b"200 OK\n".to_vec();
        stream.extend_from_slice(NGINX);
        stream.push(b'\n');
        let expected = [Ev::Partial(stream.len())];
        assert_every_split(Framing::Auto, 1024, &stream, &expected);
        // Forcing line mode reads the same bytes correctly.
        assert_eq!(
            events(Framing::Line, 1024, &stream),
            [frame(b"200 OK"), frame(NGINX)]
        );
    }

    #[test]
    fn auto_count_over_limit_is_a_line() {
        assert_every_split(
            Framing::Auto,
            16,
            b"99 not a count\n17 long line here xx\n3 abc",
            &[frame(b"99 not a count"), Ev::Oversize(20), frame(b"abc")],
        );
    }

    #[test]
    fn auto_oversize_line_resynchronises() {
        let mut stream = NGINX.to_vec();
        stream.push(b'\n');
        stream.extend(octet(b"ok"));
        let fed = feed(Framing::Auto, 32, &stream, &[5]);
        assert_eq!(fed.events, [Ev::Oversize(NGINX.len()), frame(b"ok")]);
        assert!(fed.peak_retained <= 32 + 10);
    }

    // ---- Properties ----

    fn any_mode() -> impl Strategy<Value = Framing> {
        prop_oneof![
            Just(Framing::Auto),
            Just(Framing::Octet),
            Just(Framing::Line)
        ]
    }

    fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(1usize..64, 1..8)
    }

    /// Bytes that look like octet framing often enough to reach every state.
    fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            4 => any::<u8>(),
            3 => prop::sample::select(b"0123456789 \r\n".to_vec()),
        ];
        prop::collection::vec(byte, 0..2000)
    }

    fn line_message() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            any::<u8>().prop_filter("no LF or CR", |b| *b != b'\n' && *b != b'\r'),
            1..200,
        )
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_stays_bounded(
            mode in any_mode(),
            max in 0usize..300,
            stream in stream_bytes(),
            sizes in chunk_sizes(),
        ) {
            // `feed` asserts consumed <= buf.len() on every call.
            let fed = feed(mode, max, &stream, &sizes);
            prop_assert!(fed.peak_retained <= max + 10, "kept {} with max {max}", fed.peak_retained);
            for e in &fed.events {
                if let Ev::Frame(f) = e {
                    prop_assert!(f.len() <= max);
                }
            }
        }

        #[test]
        fn lines_round_trip(
            auto in any::<bool>(),
            msgs in prop::collection::vec((line_message(), any::<bool>()), 0..20),
            sizes in chunk_sizes(),
        ) {
            let mode = if auto { Framing::Auto } else { Framing::Line };
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (mut msg, crlf) in msgs {
                // In auto mode a line that starts like an octet count is, by design, read as
                // one; such messages get a prefix that makes them unambiguous.
                if auto && matches!(parse_header(&msg), Header::Count { .. }) {
                    msg.insert(0, b'<');
                }
                stream.extend_from_slice(&msg);
                stream.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
                expected.push(Ev::Frame(msg));
            }
            prop_assert_eq!(feed(mode, 256, &stream, &sizes).events, expected);
        }

        #[test]
        fn octet_frames_round_trip(
            auto in any::<bool>(),
            msgs in prop::collection::vec(
                (prop::collection::vec(any::<u8>(), 1..200), 0usize..3),
                0..20,
            ),
            sizes in chunk_sizes(),
        ) {
            let mode = if auto { Framing::Auto } else { Framing::Octet };
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (msg, sep) in msgs {
                stream.extend(octet(&msg));
                stream.extend_from_slice([&b""[..], b"\n", b"\r\n"][sep]);
                expected.push(Ev::Frame(msg));
            }
            prop_assert_eq!(feed(mode, 256, &stream, &sizes).events, expected);
        }
    }
}
