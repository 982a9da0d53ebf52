//! The syslog header in front of every line pixeld receives, and where the message starts.
//!
//! This module owns one job: given the raw bytes of one received line (an nginx
//! `access_log syslog:` datagram in RFC 3164 style, an RFC 5424 record from a relay, or a bare
//! line with no header at all), find the header fields and the message bytes behind them. It
//! borrows everything from the input and returns slices of it, because the raw bytes are
//! stored elsewhere and this parser runs once per request on the hot ingest path: it must not
//! allocate, must not copy, and must stay O(n) in the length of the line. It must never panic
//! and never trust its input: the bytes come straight off the network, so every access goes
//! through `get`, slice patterns or splitting, and every malformed header becomes a
//! [`SyslogError`] whose [`SyslogError::kind`] is a bounded label for
//! `pixeld_parse_errors_total{kind}`. A failure costs only the parsed fields, never the line,
//! which is why the error carries no data and is cheap to count. Nothing here requires UTF-8,
//! because nginx passes bytes of 0x80 and above through raw.

use thiserror::Error;

/// Which header a line carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `<PRI>Mmm dd hh:mm:ss [hostname ]tag: message`, as nginx writes it.
    Rfc3164,
    /// `<PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]`.
    Rfc5424,
    /// No header: the line did not start with `<`, so all of it is the message.
    Bare,
}

/// An RFC 3164 timestamp exactly as it was written: local time of the sender, whole seconds,
/// no year and no zone. It cannot be turned into an instant without outside knowledge, so it
/// is kept as fields rather than guessed into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3164Time {
    /// 1..=12.
    pub month: u8,
    /// 1..=31; without a year, February 30 cannot be told from a real date and is accepted.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub minute: u8,
    /// 0..=60, where 60 is a leap second.
    pub second: u8,
}

/// The header's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamp {
    /// An RFC 3164 `Mmm dd hh:mm:ss`.
    Rfc3164(Rfc3164Time),
    /// An RFC 5424 timestamp as an instant.
    Rfc5424 {
        /// Nanoseconds since the Unix epoch, UTC, with the written offset applied. A leap
        /// second (`:60`) lands on the first second of the next minute.
        epoch_ns: i64,
    },
    /// The RFC 5424 nil value `-`: the sender did not know the time.
    Nil,
}

/// One parsed line. Every slice borrows from the input of [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syslog<'a> {
    pub format: Format,
    /// The PRI value, 0..=191; `None` for [`Format::Bare`].
    pub pri: Option<u8>,
    /// `None` for [`Format::Bare`]; `Some(Timestamp::Nil)` for an RFC 5424 `-`.
    pub timestamp: Option<Timestamp>,
    /// The sender's hostname; `None` when nginx's `nohostname` left it out or RFC 5424 sent `-`.
    pub hostname: Option<&'a [u8]>,
    /// The RFC 3164 tag without `[pid]` and `:`, or the RFC 5424 APP-NAME (`None` when `-`).
    pub app: Option<&'a [u8]>,
    /// The RFC 3164 `[pid]` digits, or the RFC 5424 PROCID (`None` when `-`).
    pub procid: Option<&'a [u8]>,
    /// The RFC 5424 MSGID (`None` when `-`); always `None` for RFC 3164.
    pub msgid: Option<&'a [u8]>,
    /// The raw RFC 5424 STRUCTURED-DATA, every `[...]` element with escapes left in place
    /// (`None` when `-`); always `None` for RFC 3164.
    pub structured_data: Option<&'a [u8]>,
    /// The message: after the header, without an RFC 5424 BOM and without one trailing LF
    /// and one trailing CR. Possibly empty, possibly not UTF-8.
    pub msg: &'a [u8],
}

impl Syslog<'_> {
    /// The facility, `pri / 8` (23 is local7); `None` for a bare line.
    pub fn facility(&self) -> Option<u8> {
        self.pri.map(|pri| pri >> 3)
    }

    /// The severity, `pri % 8` (6 is info); `None` for a bare line.
    pub fn severity(&self) -> Option<u8> {
        self.pri.map(|pri| pri & 7)
    }
}

/// Why a header could not be parsed. The variants carry no data so that counting one is a
/// single label lookup; the line itself is kept by the caller either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum SyslogError {
    #[error("syslog PRI is not <0..=191> with 1-3 digits and no leading zero")]
    Pri,
    #[error("syslog RFC 5424 VERSION is not 1..=999 followed by a space")]
    Version,
    #[error("syslog timestamp is malformed or out of range")]
    Timestamp,
    #[error("syslog hostname is empty, too long or not printable ASCII")]
    Hostname,
    #[error("syslog tag or APP-NAME is missing or malformed")]
    Tag,
    #[error("syslog RFC 5424 PROCID is empty, too long or not printable ASCII")]
    ProcId,
    #[error("syslog RFC 5424 MSGID is empty, too long or not printable ASCII")]
    MsgId,
    #[error("syslog RFC 5424 STRUCTURED-DATA is malformed or unterminated")]
    StructuredData,
    #[error("syslog line ended before its header did")]
    Truncated,
}

impl SyslogError {
    /// Every variant, so that each `kind` label can be registered at zero before it first
    /// happens.
    pub const ALL: [SyslogError; 9] = [
        SyslogError::Pri,
        SyslogError::Version,
        SyslogError::Timestamp,
        SyslogError::Hostname,
        SyslogError::Tag,
        SyslogError::ProcId,
        SyslogError::MsgId,
        SyslogError::StructuredData,
        SyslogError::Truncated,
    ];

    /// The `kind` label of `pixeld_parse_errors_total`. These are the only values it takes.
    pub fn kind(self) -> &'static str {
        match self {
            SyslogError::Pri => "pri",
            SyslogError::Version => "version",
            SyslogError::Timestamp => "timestamp",
            SyslogError::Hostname => "hostname",
            SyslogError::Tag => "tag",
            SyslogError::ProcId => "procid",
            SyslogError::MsgId => "msgid",
            SyslogError::StructuredData => "structured_data",
            SyslogError::Truncated => "truncated",
        }
    }
}

/// RFC 3164 tags and RFC 5424 APP-NAMEs are at most 48 bytes.
const MAX_TAG: usize = 48;
/// RFC 5424 field limits; the RFC 3164 hostname gets the same 255 as its successor.
const MAX_HOSTNAME: usize = 255;
const MAX_PROCID: usize = 128;
const MAX_MSGID: usize = 32;
const MAX_SD_NAME: usize = 32;
/// A UTF-8 byte order mark, which RFC 5424 allows before MSG and which is not part of it.
const BOM: &[u8] = b"\xEF\xBB\xBF";
const NS_PER_SEC: i64 = 1_000_000_000;

/// Parses one received line.
///
/// A line that does not start with `<` has no header and is returned whole as a
/// [`Format::Bare`] message, which is not an error. One trailing LF and then one trailing CR
/// are removed first, because TCP relays frame lines with them and they belong to neither the
/// header nor the message.
pub fn parse(line: &[u8]) -> Result<Syslog<'_>, SyslogError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(rest) = line.strip_prefix(b"<") else {
        return Ok(Syslog {
            format: Format::Bare,
            pri: None,
            timestamp: None,
            hostname: None,
            app: None,
            procid: None,
            msgid: None,
            structured_data: None,
            msg: line,
        });
    };
    let (pri, rest) = parse_pri(rest)?;
    // RFC 5424 puts a VERSION digit right after PRI, RFC 3164 a month name, so one byte
    // decides which grammar the rest of the header follows.
    match rest.first() {
        None => Err(SyslogError::Truncated),
        Some(b) if b.is_ascii_digit() => parse_5424(pri, rest),
        Some(_) => parse_3164(pri, rest),
    }
}

/// Parses the PRI digits and the `>` after the `<` already consumed.
fn parse_pri(input: &[u8]) -> Result<(u8, &[u8]), SyslogError> {
    let mut value: u16 = 0;
    // At most three digits and a `>` are looked at, so a long run of digits is rejected
    // without being read.
    for (i, &b) in input.iter().take(4).enumerate() {
        match b {
            b'>' if i > 0 => {
                let rest = input.get(i + 1..).ok_or(SyslogError::Pri)?;
                return u8::try_from(value)
                    .ok()
                    .filter(|&pri| pri <= 191)
                    .map(|pri| (pri, rest))
                    .ok_or(SyslogError::Pri);
            }
            // A leading zero is only allowed for "0" itself, so "<01>" is rejected here
            // when its second digit arrives.
            b'0'..=b'9' if i < 3 && !(i == 1 && value == 0) => {
                value = value * 10 + u16::from(b - b'0');
            }
            _ => return Err(SyslogError::Pri),
        }
    }
    // Fewer than four bytes and no `>`: the line stopped inside PRI.
    Err(SyslogError::Truncated)
}

/// Parses `Mmm dd hh:mm:ss [hostname ]tag[pid]: message` after PRI.
fn parse_3164(pri: u8, input: &[u8]) -> Result<Syslog<'_>, SyslogError> {
    // nginx always writes exactly these 15 bytes, so a fixed slice pattern both validates
    // the layout and keeps every access in bounds.
    let &[m0, m1, m2, b' ', d0, d1, b' ', h0, h1, b':', n0, n1, b':', s0, s1, ref after @ ..] =
        input
    else {
        return Err(SyslogError::Timestamp);
    };
    // The English month abbreviations, spelled and capitalised as nginx writes them (one
    // match: a search of a list of names compared twelve times for December).
    let month = match &[m0, m1, m2] {
        b"Jan" => 1,
        b"Feb" => 2,
        b"Mar" => 3,
        b"Apr" => 4,
        b"May" => 5,
        b"Jun" => 6,
        b"Jul" => 7,
        b"Aug" => 8,
        b"Sep" => 9,
        b"Oct" => 10,
        b"Nov" => 11,
        b"Dec" => 12,
        _ => return Err(SyslogError::Timestamp),
    };
    // nginx pads the day with a space ("Nov  2"); other senders pad with a zero.
    let day = if d0 == b' ' {
        digit(d1)
    } else {
        two_digits(d0, d1)
    };
    let time = Rfc3164Time {
        month,
        day: day
            .filter(|d| (1..=31).contains(d))
            .ok_or(SyslogError::Timestamp)?,
        hour: two_digits(h0, h1)
            .filter(|&h| h < 24)
            .ok_or(SyslogError::Timestamp)?,
        minute: two_digits(n0, n1)
            .filter(|&m| m < 60)
            .ok_or(SyslogError::Timestamp)?,
        second: two_digits(s0, s1)
            .filter(|&s| s <= 60)
            .ok_or(SyslogError::Timestamp)?,
    };
    let rest = match after {
        [] => return Err(SyslogError::Truncated),
        [b' ', rest @ ..] => rest,
        _ => return Err(SyslogError::Timestamp),
    };
    if rest.is_empty() {
        return Err(SyslogError::Truncated);
    }
    // The token after the time is the tag when it is one (`tag:` or `tag[pid]:` ending at a
    // space or the end), which is what nginx's `nohostname` produces; only otherwise is it a
    // hostname with the tag behind it. Trying the tag first is what keeps a lone tag from
    // being taken for a hostname.
    let (hostname, tag) = match parse_tag(rest) {
        Some(tag) => (None, tag),
        None => {
            let (host, after) = split_token(rest).ok_or(SyslogError::Tag)?;
            if host.last() == Some(&b':') {
                // A token ending in a colon was meant as the tag, and it is malformed.
                return Err(SyslogError::Tag);
            }
            // Interior colons are allowed so that an IPv6 literal written by a relay still
            // counts as a hostname.
            if !is_field(host, MAX_HOSTNAME) {
                return Err(SyslogError::Hostname);
            }
            let tag = parse_tag(after).ok_or(if after.is_empty() {
                SyslogError::Truncated
            } else {
                SyslogError::Tag
            })?;
            (Some(host), tag)
        }
    };
    Ok(Syslog {
        format: Format::Rfc3164,
        pri: Some(pri),
        timestamp: Some(Timestamp::Rfc3164(time)),
        hostname,
        app: Some(tag.name),
        procid: tag.pid,
        msgid: None,
        structured_data: None,
        msg: tag.msg,
    })
}

/// An RFC 3164 tag and the message behind it.
struct Tagged<'a> {
    name: &'a [u8],
    pid: Option<&'a [u8]>,
    msg: &'a [u8],
}

/// Parses `tag[pid]: message` or `tag: message`, where the colon ends the token: it is
/// followed by one space (not part of the message) or by the end of the line. Returns `None`
/// when `input` does not start with that structure.
fn parse_tag(input: &[u8]) -> Option<Tagged<'_>> {
    // Looking at no more than one byte past the longest tag keeps a long token cheap.
    let head = input.get(..MAX_TAG + 1).unwrap_or(input);
    let len = head
        .iter()
        .position(|&b| !TAG_BYTES[usize::from(b)])
        .unwrap_or(head.len());
    if len == 0 || len > MAX_TAG {
        return None;
    }
    let (name, rest) = input.split_at_checked(len)?;
    let (pid, rest) = match rest.strip_prefix(b"[") {
        Some(rest) => {
            let digits = rest
                .iter()
                .take(MAX_PROCID + 1)
                .position(|b| !b.is_ascii_digit())?;
            if digits == 0 || digits > MAX_PROCID {
                return None;
            }
            let (pid, rest) = rest.split_at_checked(digits)?;
            (Some(pid), rest.strip_prefix(b"]")?)
        }
        None => (None, rest),
    };
    let rest = rest.strip_prefix(b":")?;
    let msg = match rest {
        [] => rest,
        [b' ', msg @ ..] => msg,
        _ => return None,
    };
    Some(Tagged { name, pid, msg })
}

/// Parses the RFC 5424 header after PRI, from VERSION on.
fn parse_5424(pri: u8, input: &[u8]) -> Result<Syslog<'_>, SyslogError> {
    let (version, rest) = split_token(input).ok_or(SyslogError::Truncated)?;
    let version_ok = matches!(version, [b'1'..=b'9', ..])
        && version.len() <= 3
        && version.iter().all(u8::is_ascii_digit);
    if !version_ok {
        return Err(SyslogError::Version);
    }

    let (timestamp, rest) = split_token(rest).ok_or(SyslogError::Truncated)?;
    let timestamp = if timestamp == b"-" {
        Timestamp::Nil
    } else {
        let epoch_ns = parse_rfc3339(timestamp).ok_or(SyslogError::Timestamp)?;
        Timestamp::Rfc5424 { epoch_ns }
    };

    let (hostname, rest) = split_token(rest).ok_or(SyslogError::Truncated)?;
    let hostname = nil_or_field(hostname, MAX_HOSTNAME, SyslogError::Hostname)?;
    let (app, rest) = split_token(rest).ok_or(SyslogError::Truncated)?;
    let app = nil_or_field(app, MAX_TAG, SyslogError::Tag)?;
    let (procid, rest) = split_token(rest).ok_or(SyslogError::Truncated)?;
    let procid = nil_or_field(procid, MAX_PROCID, SyslogError::ProcId)?;
    let (msgid, rest) = split_token(rest).ok_or(SyslogError::Truncated)?;
    let msgid = nil_or_field(msgid, MAX_MSGID, SyslogError::MsgId)?;

    let (structured_data, after) = match rest {
        [] => return Err(SyslogError::Truncated),
        [b'-', after @ ..] => (None, after),
        [b'[', ..] => {
            let len = structured_data_len(rest).ok_or(SyslogError::StructuredData)?;
            let (sd, after) = rest
                .split_at_checked(len)
                .ok_or(SyslogError::StructuredData)?;
            (Some(sd), after)
        }
        _ => return Err(SyslogError::StructuredData),
    };
    // STRUCTURED-DATA is the last header field: MSG, when present, follows one space.
    let msg = match after {
        [] => after,
        [b' ', msg @ ..] => msg.strip_prefix(BOM).unwrap_or(msg),
        _ => return Err(SyslogError::StructuredData),
    };
    Ok(Syslog {
        format: Format::Rfc5424,
        pri: Some(pri),
        timestamp: Some(timestamp),
        hostname,
        app,
        procid,
        msgid,
        structured_data,
        msg,
    })
}

/// Where the structured-data scanner is inside `[id name="value" ...]...`.
#[derive(Clone, Copy)]
enum Sd {
    /// Inside SD-ID, `n` bytes read.
    Id(usize),
    /// After a space inside an element: a PARAM-NAME must start.
    ParamStart,
    /// Inside PARAM-NAME, `n` bytes read.
    ParamName(usize),
    /// After `=`: the opening quote must follow.
    Equals,
    /// Inside a quoted PARAM-VALUE.
    Value,
    /// After a backslash inside a PARAM-VALUE: the next byte is taken literally, which is
    /// how `\"`, `\\` and `\]` are skipped without ending the value or the element.
    Escape,
    /// After a closing quote: a space or `]` must follow.
    AfterValue,
    /// After `]`: another element or the end of STRUCTURED-DATA.
    Closed,
}

/// Returns the length of the STRUCTURED-DATA at the start of `input`, which starts with `[`,
/// or `None` when it is malformed or the line ends inside it. One pass over the bytes, so a
/// value full of escapes costs no more than any other.
fn structured_data_len(input: &[u8]) -> Option<usize> {
    let mut state = Sd::Closed;
    for (i, &b) in input.iter().enumerate() {
        state = match (state, b) {
            (Sd::Closed, b'[') => Sd::Id(0),
            (Sd::Closed, _) => return Some(i),
            (Sd::Id(0), b' ' | b']') => return None,
            (Sd::Id(_), b' ') => Sd::ParamStart,
            (Sd::Id(_), b']') => Sd::Closed,
            (Sd::Id(n), _) if is_sd_name_byte(b) && n < MAX_SD_NAME => Sd::Id(n + 1),
            (Sd::ParamStart, _) if is_sd_name_byte(b) => Sd::ParamName(1),
            (Sd::ParamName(n), b'=') if n > 0 => Sd::Equals,
            (Sd::ParamName(n), _) if is_sd_name_byte(b) && n < MAX_SD_NAME => Sd::ParamName(n + 1),
            (Sd::Equals, b'"') => Sd::Value,
            (Sd::Value, b'\\') => Sd::Escape,
            (Sd::Value, b'"') => Sd::AfterValue,
            (Sd::Value, _) | (Sd::Escape, _) => Sd::Value,
            (Sd::AfterValue, b' ') => Sd::ParamStart,
            (Sd::AfterValue, b']') => Sd::Closed,
            _ => return None,
        };
    }
    // The input ended: that is only well-formed right after a closing `]`.
    matches!(state, Sd::Closed).then_some(input.len())
}

/// Parses an RFC 3339 timestamp (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|+hh:mm|-hh:mm)`) into
/// nanoseconds since the Unix epoch, UTC. More than nine fraction digits are accepted and
/// truncated; an instant outside the `i64` nanosecond range (years 1677..=2262) is rejected.
fn parse_rfc3339(token: &[u8]) -> Option<i64> {
    let &[y0, y1, y2, y3, b'-', mo0, mo1, b'-', d0, d1, b'T' | b't', h0, h1, b':', mi0, mi1, b':', s0, s1, ref rest @ ..] =
        token
    else {
        return None;
    };
    let year = i64::from(two_digits(y0, y1)?) * 100 + i64::from(two_digits(y2, y3)?);
    let month = two_digits(mo0, mo1).filter(|m| (1..=12).contains(m))?;
    let day = two_digits(d0, d1).filter(|&d| d >= 1 && d <= days_in_month(year, month))?;
    let hour = two_digits(h0, h1).filter(|&h| h < 24)?;
    let minute = two_digits(mi0, mi1).filter(|&m| m < 60)?;
    let second = two_digits(s0, s1).filter(|&s| s <= 60)?;

    let (fraction_ns, rest) = match rest.strip_prefix(b".") {
        Some(rest) => {
            let digits = rest
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(rest.len());
            let (fraction, rest) = rest.split_at_checked(digits)?;
            if fraction.is_empty() {
                return None;
            }
            // Pad or truncate to exactly nine digits: ".003" is 3_000_000 ns.
            let mut ns: i64 = 0;
            for i in 0..9 {
                ns = ns * 10 + i64::from(fraction.get(i).map_or(0, |&b| b - b'0'));
            }
            (ns, rest)
        }
        None => (0, rest),
    };
    let offset_seconds = match *rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), oh0, oh1, b':', om0, om1] => {
            let hours = two_digits(oh0, oh1).filter(|&h| h < 24)?;
            let minutes = two_digits(om0, om1).filter(|&m| m < 60)?;
            let seconds = i64::from(hours) * 3600 + i64::from(minutes) * 60;
            if sign == b'-' {
                -seconds
            } else {
                seconds
            }
        }
        _ => return None,
    };
    // The written time is local to the offset, so the offset is subtracted to reach UTC.
    // Years 0..=9999 keep this within i64 seconds; only the nanosecond scaling can overflow.
    let seconds = days_from_civil(year, month, day) * 86_400
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second)
        - offset_seconds;
    seconds.checked_mul(NS_PER_SEC)?.checked_add(fraction_ns)
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`): the year is shifted to start in March so that the leap day is the
/// last day of its year, which turns the month lengths into a closed formula.
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let month = i64::from(month);
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Splits at the first space: the token before it and everything after it. `None` when
/// there is no space, which for a header field means the line ended inside the header.
fn split_token(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut parts = input.splitn(2, |&b| b == b' ');
    let token = parts.next()?;
    let rest = parts.next()?;
    Some((token, rest))
}

/// An RFC 5424 header field: `-` is nil, anything else must be a valid field.
fn nil_or_field(
    token: &[u8],
    max: usize,
    error: SyslogError,
) -> Result<Option<&[u8]>, SyslogError> {
    if token == b"-" {
        Ok(None)
    } else if is_field(token, max) {
        Ok(Some(token))
    } else {
        Err(error)
    }
}

/// A header field is 1..=`max` bytes of printable US-ASCII (RFC 5424 PRINTUSASCII).
fn is_field(token: &[u8], max: usize) -> bool {
    !token.is_empty() && token.len() <= max && token.iter().all(u8::is_ascii_graphic)
}

/// Bytes of an RFC 3164 tag name: printable ASCII except the `[`, `]` and `:` that end it
/// (a table: one load a byte).
const TAG_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_graphic() && !matches!(c, b'[' | b']' | b':');
        b += 1;
    }
    t
};

/// Bytes of an SD-ID or PARAM-NAME: printable ASCII except `=`, `]` and `"`.
fn is_sd_name_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'=' | b']' | b'"')
}

fn digit(b: u8) -> Option<u8> {
    b.is_ascii_digit().then(|| b - b'0')
}

fn two_digits(tens: u8, ones: u8) -> Option<u8> {
    Some(digit(tens)? * 10 + digit(ones)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NGINX_JSON: &[u8] = br#"{"ts":"2026-11-22T01:39:03.462+00:00","msec":1795311543.462,"url":"https%3A%2F%2Fm.sportsline.example%2Fnews","vid":"2bcc3ed32675a41e","ua":"Mozilla/5.0 \"quoted\" \\backslash\\ tab\there","ip":"127.0.0.1","action":"pageview"}"#;

    fn line(prefix: &[u8], msg: &[u8]) -> Vec<u8> {
        [prefix, msg].concat()
    }

    fn time(month: u8, day: u8, hour: u8, minute: u8, second: u8) -> Option<Timestamp> {
        Some(Timestamp::Rfc3164(Rfc3164Time {
            month,
            day,
            hour,
            minute,
            second,
        }))
    }

    fn kind(input: &[u8]) -> &'static str {
        parse(input).unwrap_err().kind()
    }

    #[test]
    fn nginx_nohostname() {
        let input = line(b"<190>Nov 22 01:39:03 pixel: ", NGINX_JSON);
        let s = parse(&input).unwrap();
        assert_eq!(s.format, Format::Rfc3164);
        assert_eq!(s.pri, Some(190));
        assert_eq!(s.facility(), Some(23));
        assert_eq!(s.severity(), Some(6));
        assert_eq!(s.timestamp, time(11, 22, 1, 39, 3));
        assert_eq!(s.hostname, None);
        assert_eq!(s.app, Some(&b"pixel"[..]));
        assert_eq!(s.procid, None);
        assert_eq!(s.msgid, None);
        assert_eq!(s.structured_data, None);
        assert_eq!(s.msg, NGINX_JSON);
    }

    #[test]
    fn nginx_with_hostname() {
        let input = line(b"<190>Nov 22 01:39:03 web-1 pixel: ", NGINX_JSON);
        let s = parse(&input).unwrap();
        assert_eq!(s.hostname, Some(&b"web-1"[..]));
        assert_eq!(s.app, Some(&b"pixel"[..]));
        assert_eq!(s.msg, NGINX_JSON);
    }

    #[test]
    fn tag_with_pid() {
        let s = parse(b"<190>Nov 22 01:39:03 web-1 nginx[4242]: hello world").unwrap();
        assert_eq!(s.hostname, Some(&b"web-1"[..]));
        assert_eq!(s.app, Some(&b"nginx"[..]));
        assert_eq!(s.procid, Some(&b"4242"[..]));
        assert_eq!(s.msg, b"hello world");
        let s = parse(b"<190>Nov 22 01:39:03 nginx[4242]: x").unwrap();
        assert_eq!((s.hostname, s.app), (None, Some(&b"nginx"[..])));
        assert_eq!(s.procid, Some(&b"4242"[..]));
    }

    #[test]
    fn space_and_zero_padded_days() {
        let s = parse(b"<190>Nov  2 01:02:03 pixel: m").unwrap();
        assert_eq!(s.timestamp, time(11, 2, 1, 2, 3));
        assert_eq!(s.msg, b"m");
        let s = parse(b"<190>Nov 02 01:02:03 pixel: m").unwrap();
        assert_eq!(s.timestamp, time(11, 2, 1, 2, 3));
        assert_eq!(kind(b"<190>Nov  0 01:02:03 pixel: m"), "timestamp");
        assert_eq!(kind(b"<190>Nov 32 01:02:03 pixel: m"), "timestamp");
        assert_eq!(kind(b"<190>nov 22 01:02:03 pixel: m"), "timestamp");
        assert_eq!(kind(b"<190>Nov 22 24:02:03 pixel: m"), "timestamp");
    }

    #[test]
    fn message_bytes_are_opaque() {
        let s = parse(b"<190>Nov 22 01:39:03 pixel: a\xff\xfe\tb\x80 c").unwrap();
        assert_eq!(s.msg, b"a\xff\xfe\tb\x80 c");
        // Spaces after the one that ends the tag belong to the message.
        let s = parse(b"<190>Nov 22 01:39:03 pixel:   x ").unwrap();
        assert_eq!(s.msg, b"  x ");
        let s = parse(b"<190>Nov 22 01:39:03 pixel:").unwrap();
        assert_eq!(s.msg, b"");
    }

    #[test]
    fn trailing_line_ends_are_stripped_once() {
        let s = parse(b"<190>Nov 22 01:39:03 pixel: msg\r\n").unwrap();
        assert_eq!(s.msg, b"msg");
        let s = parse(b"<190>Nov 22 01:39:03 pixel: msg\n").unwrap();
        assert_eq!(s.msg, b"msg");
        let s = parse(b"<190>Nov 22 01:39:03 pixel: msg\n\n").unwrap();
        assert_eq!(s.msg, b"msg\n");
        let s = parse(b"<14>1 - - - - - -\r\n").unwrap();
        assert_eq!(s.msg, b"");
        assert_eq!(parse(b"bare\r\n").unwrap().msg, b"bare");
    }

    #[test]
    fn rfc5424_simple() {
        let s = parse(b"<190>1 2026-11-22T01:40:00.123Z host app - - - msg").unwrap();
        assert_eq!(s.format, Format::Rfc5424);
        assert_eq!(s.pri, Some(190));
        assert_eq!(
            s.timestamp,
            Some(Timestamp::Rfc5424 {
                epoch_ns: 1_795_311_600_123_000_000
            })
        );
        assert_eq!(s.hostname, Some(&b"host"[..]));
        assert_eq!(s.app, Some(&b"app"[..]));
        assert_eq!((s.procid, s.msgid, s.structured_data), (None, None, None));
        assert_eq!(s.msg, b"msg");
    }

    #[test]
    fn rfc5424_structured_data_and_bom() {
        let input = b"<165>1 2003-10-11T22:14:15.003000-07:00 mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\"][second@1 a=\"x\\]y\"] \xEF\xBB\xBFAn application event";
        let s = parse(input).unwrap();
        assert_eq!(s.format, Format::Rfc5424);
        assert_eq!((s.facility(), s.severity()), (Some(20), Some(5)));
        assert_eq!(
            s.timestamp,
            Some(Timestamp::Rfc5424 {
                epoch_ns: 1_065_935_655_003_000_000
            })
        );
        assert_eq!(s.hostname, Some(&b"mymachine.example.com"[..]));
        assert_eq!(s.app, Some(&b"evntslog"[..]));
        assert_eq!(s.procid, None);
        assert_eq!(s.msgid, Some(&b"ID47"[..]));
        assert_eq!(
            s.structured_data,
            Some(
                &br#"[exampleSDID@32473 iut="3" eventSource="Application"][second@1 a="x\]y"]"#[..]
            )
        );
        assert_eq!(s.msg, b"An application event");
    }

    #[test]
    fn rfc5424_nil_and_missing_msg() {
        let s = parse(b"<14>1 - - - - - -").unwrap();
        assert_eq!(s.timestamp, Some(Timestamp::Nil));
        assert_eq!((s.hostname, s.app, s.procid), (None, None, None));
        assert_eq!((s.msgid, s.structured_data), (None, None));
        assert_eq!(s.msg, b"");
        let s = parse(b"<14>1 - h a 12 m [x@1 k=\"v\"]").unwrap();
        assert_eq!(s.procid, Some(&b"12"[..]));
        assert_eq!(s.structured_data, Some(&b"[x@1 k=\"v\"]"[..]));
        assert_eq!(s.msg, b"");
        let s = parse(b"<14>1 - - - - - [x] ").unwrap();
        assert_eq!(s.structured_data, Some(&b"[x]"[..]));
        assert_eq!(s.msg, b"");
    }

    #[test]
    fn rfc5424_timestamps() {
        let ns = |t: &[u8]| parse_rfc3339(t);
        assert_eq!(ns(b"1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(ns(b"1969-12-31T23:59:59.5Z"), Some(-500_000_000));
        assert_eq!(
            ns(b"2024-02-29T12:00:00+05:30"),
            Some(1_709_188_200 * NS_PER_SEC)
        );
        assert_eq!(ns(b"1970-01-01T00:00:00.1234567899Z"), Some(123_456_789));
        assert_eq!(ns(b"1970-01-01T00:00:60Z"), Some(60 * NS_PER_SEC));
        assert_eq!(ns(b"2023-02-29T00:00:00Z"), None);
        assert_eq!(ns(b"1970-01-01T00:00:00."), None);
        assert_eq!(ns(b"1970-01-01T00:00:00"), None);
        assert_eq!(ns(b"1970-01-01T00:00:00+24:00"), None);
        assert_eq!(ns(b"1970-01-01T00:00:00Zx"), None);
        assert_eq!(ns(b"9999-12-31T23:59:59Z"), None);
    }

    #[test]
    fn bare_line() {
        let input = br#"127.0.0.1 - - [22/Nov/2026:01:40:00 +0000] "GET /p.gif HTTP/1.1" 200"#;
        let s = parse(input).unwrap();
        assert_eq!(s.format, Format::Bare);
        assert_eq!((s.pri, s.timestamp), (None, None));
        assert_eq!((s.facility(), s.severity()), (None, None));
        assert_eq!(s.msg, input);
        assert_eq!(parse(b"").unwrap().msg, b"");
    }

    #[test]
    fn pri_errors() {
        assert_eq!(kind(b"<999>Nov 22 01:39:03 x: y"), "pri");
        assert_eq!(kind(b"<192>Nov 22 01:39:03 x: y"), "pri");
        assert_eq!(kind(b"<1900>Nov 22 01:39:03 x: y"), "pri");
        assert_eq!(kind(b"<01>Nov 22 01:39:03 x: y"), "pri");
        assert_eq!(kind(b"<>Nov 22 01:39:03 x: y"), "pri");
        assert_eq!(kind(b"<1a>"), "pri");
        assert_eq!(kind(b"<19"), "truncated");
        assert_eq!(kind(b"<"), "truncated");
        assert_eq!(kind(b"<190>"), "truncated");
        assert_eq!(parse(b"<0>1 - - - - - -").unwrap().pri, Some(0));
        assert_eq!(parse(b"<191>1 - - - - - -").unwrap().pri, Some(191));
    }

    #[test]
    fn header_errors() {
        assert_eq!(kind(b"<190>Foo 22 01:39:03 x: y"), "timestamp");
        assert_eq!(kind(b"<190>Nov 22 01:39:03 "), "truncated");
        assert_eq!(kind(b"<190>Nov 22 01:39:03"), "truncated");
        assert_eq!(kind(b"<190>Nov 22 01:39:03 web-1 "), "truncated");
        assert_eq!(kind(b"<190>Nov 22 01:39:03 pixel"), "tag");
        assert_eq!(kind(b"<190>Nov 22 01:39:03 web-1 pixel no colon"), "tag");
        assert_eq!(kind(b"<190>Nov 22 01:39:03 pixel[12x]: m"), "tag");
        assert_eq!(kind(b"<190>Nov 22 01:39:03 h\xffst pixel: m"), "hostname");
        let long_tag = line(b"<190>Nov 22 01:39:03 ", &[b'a'; 49]);
        assert_eq!(kind(&line(&long_tag, b": m")), "tag");
        let max_tag = line(b"<190>Nov 22 01:39:03 ", &[b'a'; 48]);
        assert_eq!(parse(&line(&max_tag, b": m")).unwrap().msg, b"m");
    }

    #[test]
    fn rfc5424_errors() {
        assert_eq!(
            kind(b"<190>1 2026-13-01T00:00:00Z h a - - - m"),
            "timestamp"
        );
        assert_eq!(kind(b"<190>0 - - - - - -"), "version");
        assert_eq!(kind(b"<190>01 - - - - - -"), "version");
        assert_eq!(kind(b"<190>1000 - - - - - -"), "version");
        assert_eq!(kind(b"<190>1"), "truncated");
        assert_eq!(kind(b"<190>1 - - - - -"), "truncated");
        assert_eq!(kind(b"<190>1 - - - - - "), "truncated");
        assert_eq!(kind(b"<190>1 - h a - - [a b=\"c\""), "structured_data");
        assert_eq!(kind(b"<190>1 - h a - - [a b=\"c\\\"]"), "structured_data");
        assert_eq!(kind(b"<190>1 - h a - - [a b=c] m"), "structured_data");
        assert_eq!(kind(b"<190>1 - h a - - [] m"), "structured_data");
        assert_eq!(kind(b"<190>1 - h a - - [a]x m"), "structured_data");
        assert_eq!(kind(b"<190>1 - h a - - -x m"), "structured_data");
        assert_eq!(kind(b"<190>1 - h a - - x m"), "structured_data");
        assert_eq!(kind(b"<190>1 -  a - - - m"), "hostname");
        assert_eq!(kind(b"<190>1 - h a\xff - - - m"), "tag");
        assert_eq!(kind(b"<190>1 - h a p\x01 - - m"), "procid");
        let long_msgid = line(b"<190>1 - h a - ", &[b'm'; 33]);
        assert_eq!(kind(&line(&long_msgid, b" - m")), "msgid");
    }

    #[test]
    fn error_kinds_are_distinct() {
        let kinds: std::collections::HashSet<_> =
            SyslogError::ALL.iter().map(|e| e.kind()).collect();
        assert_eq!(kinds.len(), SyslogError::ALL.len());
    }

    /// Hinnant's `civil_from_days`, the inverse of `days_from_civil`, so the round trip
    /// checks the conversion against an independent formula rather than against itself.
    fn civil_from_days(days: i64) -> (i64, u32, u32) {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        (year, month as u32, day as u32)
    }

    fn no_line_end() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            any::<u8>().prop_map(|b| if b == b'\n' || b == b'\r' { b'x' } else { b }),
            0..200,
        )
    }

    fn field(max: usize) -> impl Strategy<Value = Option<String>> {
        prop::option::of(
            proptest::string::string_regex(&format!("[!-~]{{1,{max}}}"))
                .unwrap()
                .prop_filter("the nil value", |s| s != "-"),
        )
    }

    type SdElement = (String, Vec<(String, Vec<u8>)>);

    fn structured_data() -> impl Strategy<Value = Option<Vec<SdElement>>> {
        let name = "[a-zA-Z0-9@._-]{1,32}";
        let param = (name, prop::collection::vec(any::<u8>(), 0..20));
        prop::option::of(prop::collection::vec(
            (name, prop::collection::vec(param, 0..4)),
            1..4,
        ))
    }

    fn format_sd(elements: &[SdElement]) -> Vec<u8> {
        let mut out = Vec::new();
        for (id, params) in elements {
            out.push(b'[');
            out.extend_from_slice(id.as_bytes());
            for (name, value) in params {
                out.push(b' ');
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"=\"");
                for &b in value {
                    if matches!(b, b'"' | b'\\' | b']') {
                        out.push(b'\\');
                    }
                    out.push(b);
                }
                out.push(b'"');
            }
            out.push(b']');
        }
        out
    }

    fn nil(field: &Option<String>) -> &[u8] {
        field.as_deref().unwrap_or("-").as_bytes()
    }

    proptest! {
        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_after_pri(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&line(b"<190>", &bytes));
            let _ = parse(&line(b"<190>1 ", &bytes));
            let _ = parse(&line(b"<190>Nov 22 01:39:03 ", &bytes));
            let _ = parse(&line(b"<190>1 - - - - - [", &bytes));
        }

        #[test]
        fn msg_borrows_the_end_of_the_line(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            // The message is always the tail of the input, short of at most the stripped
            // CR and LF: the parser only ever narrows the slice it was given.
            if let Ok(s) = parse(&bytes) {
                let line = bytes.as_ptr_range();
                let msg = s.msg.as_ptr_range();
                prop_assert!(line.start <= msg.start && msg.end <= line.end);
                prop_assert!(line.end as usize - msg.end as usize <= 2);
            }
        }

        #[test]
        fn rfc3164_round_trip(
            pri in 0u8..=191,
            month in 1u8..=12,
            day in 1u8..=28,
            hour in 0u8..24,
            minute in 0u8..60,
            second in 0u8..=60,
            hostname in prop::option::of("[a-z0-9.-]{1,20}"),
            tag in "[a-zA-Z0-9_]{1,20}",
            pid in prop::option::of(0u32..1_000_000),
            msg in no_line_end(),
            line_end in prop::sample::select(vec!["", "\n", "\r\n"]),
        ) {
            const MONTHS: [&[u8; 3]; 12] = [
                b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct",
                b"Nov", b"Dec",
            ];
            let month_name = std::str::from_utf8(MONTHS[usize::from(month - 1)]).unwrap();
            let mut input = format!("<{pri}>{month_name} {day:>2} {hour:02}:{minute:02}:{second:02} ");
            if let Some(host) = &hostname {
                input.push_str(host);
                input.push(' ');
            }
            input.push_str(&tag);
            if let Some(pid) = pid {
                input.push_str(&format!("[{pid}]"));
            }
            input.push_str(": ");
            let input = [input.as_bytes(), &msg, line_end.as_bytes()].concat();

            let s = parse(&input).unwrap();
            prop_assert_eq!(s.format, Format::Rfc3164);
            prop_assert_eq!(s.pri, Some(pri));
            prop_assert_eq!(s.timestamp, time(month, day, hour, minute, second));
            prop_assert_eq!(s.hostname, hostname.as_deref().map(str::as_bytes));
            prop_assert_eq!(s.app, Some(tag.as_bytes()));
            let pid = pid.map(|p| p.to_string());
            prop_assert_eq!(s.procid, pid.as_deref().map(str::as_bytes));
            prop_assert_eq!((s.msgid, s.structured_data), (None, None));
            prop_assert_eq!(s.msg, &msg[..]);
        }

        #[test]
        fn rfc5424_round_trip(
            pri in 0u8..=191,
            version in 1u16..=999,
            time in prop::option::of((
                // 1900-01-01 to 2200-01-01, inside the i64 nanosecond range.
                -2_208_988_800i64..7_258_118_400,
                0i64..NS_PER_SEC,
                0usize..=9,
                prop::option::of(-1439i64..=1439),
            )),
            hostname in field(255),
            app in field(48),
            procid in field(128),
            msgid in field(32),
            sd in structured_data(),
            msg in prop::option::of((any::<bool>(), no_line_end())),
        ) {
            let mut input = format!("<{pri}>{version} ").into_bytes();
            let mut want_ts = Timestamp::Nil;
            match time {
                None => input.push(b'-'),
                Some((utc, ns, digits, offset_minutes)) => {
                    let local = utc + offset_minutes.unwrap_or(0) * 60;
                    let (y, mo, d) = civil_from_days(local.div_euclid(86_400));
                    let tod = local.rem_euclid(86_400);
                    let mut ts = format!(
                        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
                        tod / 3600,
                        tod / 60 % 60,
                        tod % 60
                    );
                    let truncated = if digits == 0 {
                        0
                    } else {
                        let scale = 10i64.pow(9 - digits as u32);
                        ts.push_str(&format!(".{:0digits$}", ns / scale));
                        ns / scale * scale
                    };
                    match offset_minutes {
                        None => ts.push('Z'),
                        Some(m) => {
                            let sign = if m < 0 { '-' } else { '+' };
                            ts.push_str(&format!("{sign}{:02}:{:02}", m.abs() / 60, m.abs() % 60));
                        }
                    }
                    input.extend_from_slice(ts.as_bytes());
                    want_ts = Timestamp::Rfc5424 { epoch_ns: utc * NS_PER_SEC + truncated };
                }
            }
            for f in [&hostname, &app, &procid, &msgid] {
                input.push(b' ');
                input.extend_from_slice(nil(f));
            }
            input.push(b' ');
            let sd_bytes = sd.as_deref().map(format_sd);
            input.extend_from_slice(sd_bytes.as_deref().unwrap_or(b"-"));
            let mut want_msg: &[u8] = b"";
            if let Some((bom, msg)) = &msg {
                input.push(b' ');
                if *bom {
                    input.extend_from_slice(BOM);
                    want_msg = msg;
                } else {
                    want_msg = msg.strip_prefix(BOM).unwrap_or(msg);
                }
                input.extend_from_slice(msg);
            }

            let s = parse(&input).unwrap();
            prop_assert_eq!(s.format, Format::Rfc5424);
            prop_assert_eq!(s.pri, Some(pri));
            prop_assert_eq!(s.timestamp, Some(want_ts));
            prop_assert_eq!(s.hostname, hostname.as_deref().map(str::as_bytes));
            prop_assert_eq!(s.app, app.as_deref().map(str::as_bytes));
            prop_assert_eq!(s.procid, procid.as_deref().map(str::as_bytes));
            prop_assert_eq!(s.msgid, msgid.as_deref().map(str::as_bytes));
            prop_assert_eq!(s.structured_data, sd_bytes.as_deref());
            prop_assert_eq!(s.msg, want_msg);
        }
    }
}
