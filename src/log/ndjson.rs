//! Records and reader warnings as text for people and programs: the receive time as RFC 3339
//! with nanoseconds, a record as one NDJSON object (`line`, or `line_b64` when the bytes are
//! not UTF-8, so nothing is mangled), a warning as one line naming shard, segment and range.
//! `pixeld replay`, `pixeld check`, the HTTP log API and the Kafka export all print through
//! here, so a record looks the same wherever it is read.

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;

use super::reader::Warning;
use super::RecordRef;

/// Formats a receive time as RFC 3339 with nanoseconds, UTC.
pub fn format_ts(ns: u64) -> String {
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

/// Parses an RFC 3339 time (UTC or with an offset, as [`format_ts`] writes it) to ns since
/// the epoch; None when it is not one or lies before 1970.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_nanos() as u64)
}

/// Renders one record as an NDJSON line (without the LF).
pub fn ndjson_line(shard: usize, rec: &RecordRef<'_>) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("shard".into(), shard.into());
    obj.insert("offset".into(), rec.offset.into());
    obj.insert("recv_ts".into(), format_ts(rec.recv_ts).into());
    obj.insert("source".into(), rec.source.to_string().into());
    if rec.flags != 0 {
        obj.insert("flags".into(), rec.flags.into());
    }
    match std::str::from_utf8(rec.bytes) {
        Ok(s) => obj.insert("line".into(), s.into()),
        Err(_) => obj.insert(
            "line_b64".into(),
            base64::engine::general_purpose::STANDARD
                .encode(rec.bytes)
                .into(),
        ),
    };
    serde_json::Value::Object(obj).to_string()
}

/// A one-line description of a reader warning, naming shard, segment and range.
pub fn describe_warning(shard: usize, w: &Warning) -> String {
    match w {
        Warning::Corrupt { segment, range } => format!(
            "shard {shard}: skipped corrupt range in {} at byte {} ({} bytes; records from offset {} unreadable{}): {}",
            segment.display(),
            range.position,
            range.len,
            range.expected_offset,
            range.resumes_at.map_or_else(String::new, |o| format!(", resumes at {o}")),
            range.reason
        ),
        Warning::BadIndex { path, reason } => format!(
            "shard {shard}: index {} unusable ({reason}); scanned the segment instead",
            path.display()
        ),
        Warning::Gap { from, to } => {
            format!("shard {shard}: offsets {from}..{to} are missing between segments")
        }
    }
}
