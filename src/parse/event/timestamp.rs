//! Event times as found in a line: nginx's `$msec` (a number or a string of seconds with a
//! decimal fraction, read exactly), RFC 3339 (`$time_iso8601`), and the range an instant must
//! fall in to be believed.

use super::*;

pub(super) fn ms_in_range(ms: i128) -> Ts {
    match i64::try_from(ms) {
        Ok(ms) if (0..=MAX_MS).contains(&ms) => Ts::Ms(ms),
        _ => Ts::Bad,
    }
}

/// An `msec` value: epoch seconds, possibly with a fraction, as a number or a string.
pub(super) fn msec_ts(value: Scalar<'_>) -> Ts {
    match value {
        Scalar::U64(s) => ms_in_range(i128::from(s) * 1000),
        Scalar::I64(s) => ms_in_range(i128::from(s) * 1000),
        Scalar::F64(s) => f64_secs_ts(s),
        Scalar::Str(s) => match decimal_secs_ms(s) {
            Some(ms) => ms_in_range(ms),
            // Exponents and the like: rare enough to go through a float.
            None => s.parse::<f64>().map_or(Ts::Bad, f64_secs_ts),
        },
        Scalar::Null | Scalar::Other => Ts::Bad,
    }
}

/// Seconds as a float to ms. The float only approximates the decimal text nginx wrote
/// (1795311543.462 is stored as 1795311543.4619998…), so the ms are rounded, not truncated;
/// below year 9999 an f64 is exact to far better than a ms.
pub(super) fn f64_secs_ts(secs: f64) -> Ts {
    let ms = (secs * 1000.0).round();
    if ms.is_finite() && (0.0..=MAX_MS as f64).contains(&ms) {
        Ts::Ms(ms as i64)
    } else {
        Ts::Bad
    }
}

/// Exact ms of a plain decimal `digits[.digits]`, rounded to the nearest ms; `None` for
/// anything else.
pub(super) fn decimal_secs_ms(s: &str) -> Option<i128> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || int.len() > 15 || !digits(int) || !digits(frac) {
        return None;
    }
    let mut ms = int.parse::<i128>().ok()? * 1000;
    let mut fb = frac.bytes();
    for scale in [100, 10, 1] {
        ms += i128::from(fb.next().map_or(0, |b| b - b'0')) * scale;
    }
    if fb.next().is_some_and(|b| b >= b'5') {
        ms += 1;
    }
    Some(ms)
}

pub(super) fn rfc3339_ts(s: &str) -> Ts {
    match OffsetDateTime::parse(s, &Rfc3339) {
        Ok(t) => ms_in_range(t.unix_timestamp_nanos().div_euclid(1_000_000)),
        Err(_) => Ts::Bad,
    }
}
