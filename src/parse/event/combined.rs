//! The second shape of a record: an nginx `combined` access line of a pixel request
//! (`GET /p.gif?url=…`), whose fields come from the request's query string and whose time comes
//! from `[$time_local]`.

use super::*;

/// nginx `$time_local`, as in `22/Nov/2026:01:39:03 +0000`.
pub(super) const TIME_LOCAL: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]"
);

/// Reads an nginx `combined` line of a pixel request,
/// `IP - user [22/Nov/2026:01:39:03 +0000] "GET /p.gif?url=…&a=pv HTTP/1.1" 200 43 "referer" "ua"`.
/// The fields come from the request's query string and the time from `[$time_local]`; the
/// quoted referer is the page the pixel is on, not that page's referrer, so it is not used.
pub(super) fn read_combined(
    line: &str,
    names: &KeyTable,
    scratch: &mut Scratch,
) -> Result<(), EventError> {
    let (client, rest) = line.split_once(" [").ok_or(EventError::NotAnEvent)?;
    let (time_local, rest) = rest.split_once(']').ok_or(EventError::NotAnEvent)?;
    let rest = rest.strip_prefix(" \"").ok_or(EventError::NotAnEvent)?;
    // nginx writes a `"` inside the request as `\x22`, so the next quote ends it.
    let (request, _) = rest.split_once('"').ok_or(EventError::NotAnEvent)?;
    let (method, rest) = request.split_once(' ').ok_or(EventError::NotAnEvent)?;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(EventError::NotAnEvent);
    }
    let target = rest.split(' ').next().unwrap_or_default();
    let (_, query) = target.split_once('?').ok_or(EventError::NotAnEvent)?;

    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if let Some((field, alt)) = names.lookup(key.as_bytes()) {
            scratch.put(field, alt, Scalar::Str(&value));
        }
    }
    // form_urlencoded replaces invalid UTF-8 silently; decoding the query once more tells
    // whether it had any. Only this slower, rarer format pays for it.
    scratch.bytes.clear();
    scratch.bytes.extend(percent_decode(query.as_bytes()));
    if std::str::from_utf8(&scratch.bytes).is_err() {
        scratch.found.invalid_utf8 = true;
    }

    // The line's first field is `$remote_addr`; an `ip` in the query string wins over it.
    if let Some(addr) = client.split(' ').next() {
        scratch.put(Field::Ip, usize::MAX - 1, Scalar::Str(addr));
    }
    let time = &mut scratch.found.time;
    if time.claim(0) {
        time.value = match OffsetDateTime::parse(time_local, TIME_LOCAL) {
            Ok(t) => ms_in_range(i128::from(t.unix_timestamp()) * 1000),
            Err(_) => Ts::Bad,
        };
    }
    Ok(())
}
