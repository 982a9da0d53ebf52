//! Formatting for the tests' independent models (times as pixeld answers them, lines as
//! nginx writes them), written here rather than borrowed from pixeld, so that a mistake in
//! pixeld's own formatting cannot hide in both the answer and the expectation.

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

pub fn civil(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap()
}

/// RFC 3339 in UTC (`YYYY-MM-DDTHH:MM:00Z`) of a minute since the epoch.
pub fn rfc(minute: i64) -> String {
    let t = civil(minute * 60);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:00Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// RFC 3339 with milliseconds, UTC (`ts`).
pub fn ts_z(ms: i64) -> String {
    let t = civil(ms.div_euclid(1000));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        ms.rem_euclid(1000)
    )
}

/// nginx `$msec`: seconds with three decimals.
pub fn msec(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

pub fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

pub fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}
