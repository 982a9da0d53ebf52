//! Url and referrer text: percent-decoding into reusable buffers, invalid UTF-8 repaired and
//! flagged, the scheme and host read by hand (the `url` crate's full WHATWG parse costs about
//! 1 µs per event, several times this parser's whole budget), and the url normalised (host
//! lower-cased, fragment and unkept query parameters dropped).

use super::*;

/// Decodes a url or referrer value into `out` (which the caller cleared) and says whether it
/// had invalid UTF-8. A value that contains `://` arrived decoded (a `Referer` header, an
/// NDJSON post) and is used as is; otherwise it is percent-encoded like nginx's `$arg_*`,
/// whose absolute urls show `%3A%2F%2F` instead.
pub(super) fn decode_into(value: &str, bytes: &mut Vec<u8>, out: &mut String) -> bool {
    if !value.contains('%') || contains_scheme_sep(value.as_bytes()) {
        out.push_str(value);
        return false;
    }
    bytes.clear();
    percent_decode_into(value.as_bytes(), bytes);
    push_lossy(bytes, out)
}

/// Percent-decodes `src` onto `out` exactly as `percent_encoding::percent_decode` does (a `%`
/// not followed by two hex digits stays as it is), which a property test checks. That crate's
/// byte-at-a-time iterator measured 150 ns for one 70-byte encoded url here, as much as the
/// rest of this parser; copying the runs between escapes whole took a fraction of that, and
/// one copy compacted in place a little less again (`decode_into` 913 → 851 instructions a
/// call on `blast`'s urls, callgrind of a rebuild).
pub(super) fn percent_decode_into(src: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    // Copied whole (one `memcpy`), then compacted in place from the first escape on: the
    // decoded text is never longer.
    out.extend_from_slice(src);
    let Some(buf) = out.get_mut(start..) else {
        return;
    };
    // An inline search, not memchr: a url is short, and memchr's set-up per call cost more
    // than the scan (callgrind).
    let Some(first) = buf.iter().position(|&b| b == b'%') else {
        return;
    };
    let (mut r, mut w) = (first, first);
    while let Some(&b) = buf.get(r) {
        let mut byte = b;
        r += 1;
        if b == b'%' {
            if let (Some(&h), Some(&l)) = (buf.get(r), buf.get(r + 1)) {
                let (h, l) = (HEX[usize::from(h)], HEX[usize::from(l)]);
                if h | l < 16 {
                    byte = h << 4 | l;
                    r += 2;
                }
            }
        }
        // w < r: every step reads at least one byte and writes one.
        if let Some(slot) = buf.get_mut(w) {
            *slot = byte;
        }
        w += 1;
    }
    out.truncate(start + w);
}

/// A hex digit's value (also the utm values' decoding, `channel::tag_value`).
pub(super) fn hex(b: u8) -> Option<u8> {
    let v = HEX[usize::from(b)];
    (v < 16).then_some(v)
}

/// A hex digit's value, 0xff for any other byte.
const HEX: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut c = 0;
    while c < 10 {
        t[b'0' as usize + c] = c as u8;
        c += 1;
    }
    let mut c = 0;
    while c < 6 {
        t[b'a' as usize + c] = 10 + c as u8;
        t[b'A' as usize + c] = 10 + c as u8;
        c += 1;
    }
    t
};

/// Appends `bytes` to `out` with U+FFFD for each invalid UTF-8 sequence (as
/// `String::from_utf8_lossy` does, without its allocation); says whether there was one.
pub(super) fn push_lossy(bytes: &[u8], out: &mut String) -> bool {
    // Nearly always valid: one fast check and one copy.
    if let Ok(text) = simdutf8::basic::from_utf8(bytes) {
        out.push_str(text);
        return false;
    }
    let mut invalid = false;
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            out.push(char::REPLACEMENT_CHARACTER);
            invalid = true;
        }
    }
    invalid
}

pub(super) fn contains_scheme_sep(s: &[u8]) -> bool {
    memchr::memchr_iter(b':', s).any(|i| s.get(i + 1..i + 3) == Some(b"//"))
}

/// Where scheme and host are in an absolute url `scheme://[userinfo@]host[:port][/…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Authority {
    pub(super) scheme: Range<usize>,
    /// Without userinfo and port; an IPv6 literal keeps its brackets.
    pub(super) host: Range<usize>,
}

/// Finds scheme and host, or `None` when `url` is not an absolute url with a non-empty host
/// and a numeric (or no) port. Deliberately much less than a WHATWG parse: see the module
/// doc.
pub(super) fn authority(url: &str) -> Option<Authority> {
    let (colon, after) = split_scheme(url.as_bytes())?;
    // One pass over the authority (up to `/`, `?`, `#` or `\`) and one table lookup a byte:
    // where the userinfo ends (the last `@`), where the port starts (the first `:` after it)
    // and whether a byte after it is whitespace or a control, which neither a host nor a
    // port may hold. Four passes before: 641 → 340 instructions a call (callgrind of a
    // rebuild, blast's urls and referrers).
    let mut host_start = 0;
    let mut port_colon = None;
    let mut bad = false;
    let mut auth_len = after.len();
    for (i, &c) in after.iter().enumerate() {
        match AUTHORITY_BYTES[usize::from(c)] {
            PLAIN => {}
            END => {
                auth_len = i;
                break;
            }
            AT => {
                host_start = i + 1;
                port_colon = None;
                bad = false;
            }
            COLON => {
                port_colon.get_or_insert(i);
            }
            _ => bad = true,
        }
    }
    let host_port = after.get(host_start..auth_len)?;
    let host_len = if host_port.first() == Some(&b'[') {
        // An IPv6 literal: its colons are not a port's.
        let len = host_port.iter().position(|&c| c == b']')? + 1;
        bad = host_port[..len]
            .iter()
            .any(|&c| AUTHORITY_BYTES[usize::from(c)] == BAD);
        len
    } else {
        port_colon.map_or(host_port.len(), |i| i - host_start)
    };
    let (host, port) = host_port.split_at_checked(host_len)?;
    match port {
        [] => {}
        [b':', digits @ ..] if digits.iter().all(u8::is_ascii_digit) => {}
        _ => return None,
    }
    if bad || matches!(host, [] | b"[]") {
        return None;
    }
    let start = colon + 3 + host_start;
    Some(Authority {
        scheme: 0..colon,
        host: start..start + host_len,
    })
}

/// Where the scheme of `b` ends (its `:`) and what follows its `://`, when it has a scheme: a
/// letter, then letters, digits, `+`, `-` or `.` (RFC 3986).
fn split_scheme(b: &[u8]) -> Option<(usize, &[u8])> {
    // Inline searches, not memchr: these are a few bytes long (a scheme, a host), where
    // memchr's set-up per call costs more than the scan (callgrind).
    let colon = b.iter().position(|&c| c == b':')?;
    let (scheme, after) = b.split_at_checked(colon)?;
    let after = after.strip_prefix(b"://")?;
    match scheme {
        [first, rest @ ..]
            if first.is_ascii_alphabetic()
                && rest
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')) =>
        {
            Some((colon, after))
        }
        _ => None,
    }
}

// What a byte of an authority is to [`authority`]: nothing special, its end (`/`, `?`, `#`,
// `\`), the end of a userinfo, a port's colon, or one no host or port may hold (ASCII
// whitespace or a control).
const PLAIN: u8 = 0;
const END: u8 = 1;
const AT: u8 = 2;
const COLON: u8 = 3;
const BAD: u8 = 4;
/// Each byte's class for [`authority`] (see the constants above).
const AUTHORITY_BYTES: [u8; 256] = {
    let mut t = [PLAIN; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = BAD;
        c += 1;
    }
    t[b' ' as usize] = BAD;
    t[0x7f] = BAD;
    t[b'/' as usize] = END;
    t[b'?' as usize] = END;
    t[b'#' as usize] = END;
    t[b'\\' as usize] = END;
    t[b'@' as usize] = AT;
    t[b':' as usize] = COLON;
    t
};

/// Normalizes a decoded url in place: drops the fragment and every query parameter not in
/// `keep`, lower-cases scheme and host. Returns where the host is, or `None` when the url is
/// not an absolute url with a host.
pub(super) fn normalize_url(
    url: &mut String,
    query: &mut String,
    keep: &[String],
) -> Option<Range<usize>> {
    if let Some(hash) = memchr::memchr(b'#', url.as_bytes()) {
        url.truncate(hash);
    }
    if let Some(q) = memchr::memchr(b'?', url.as_bytes()) {
        if !keep.is_empty() {
            query.clear();
            for pair in url.get(q + 1..).unwrap_or_default().split('&') {
                let key = pair.split_once('=').map_or(pair, |(key, _)| key);
                if !pair.is_empty() && keep.iter().any(|k| k == key) {
                    if !query.is_empty() {
                        query.push('&');
                    }
                    query.push_str(pair);
                }
            }
        }
        url.truncate(q);
        if !keep.is_empty() && !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
    }
    let Authority { scheme, host } = authority(url)?;
    for range in [scheme, host.clone()] {
        if let Some(part) = url.get_mut(range) {
            part.make_ascii_lowercase();
        }
    }
    Some(host)
}

/// The site (lower-case host, no port or userinfo) of a url value as a hit carries it,
/// percent-encoded or not: the same site the aggregates count the hit under. `None` when it
/// is not an absolute url with a host.
pub fn site_of(value: &str) -> Option<String> {
    let (mut bytes, mut url) = (Vec::new(), String::new());
    decode_into(value, &mut bytes, &mut url);
    let a = authority(&url)?;
    url.get(a.host).map(str::to_ascii_lowercase)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// [`authority`] as it was written first, four passes over the authority: the model (the
    /// scheme's part, which did not change, shared).
    fn authority_model(url: &str) -> Option<Authority> {
        let (colon, after) = split_scheme(url.as_bytes())?;
        let auth_len = after
            .iter()
            .position(|c| matches!(c, b'/' | b'?' | b'#' | b'\\'))
            .unwrap_or(after.len());
        let auth = after.get(..auth_len)?;
        let host_start = auth.iter().rposition(|&c| c == b'@').map_or(0, |i| i + 1);
        let host_port = auth.get(host_start..)?;
        let host_len = if host_port.first() == Some(&b'[') {
            host_port.iter().position(|&c| c == b']')? + 1
        } else {
            host_port
                .iter()
                .position(|&c| c == b':')
                .unwrap_or(host_port.len())
        };
        let (host, port) = host_port.split_at_checked(host_len)?;
        match port {
            [] => {}
            [b':', digits @ ..] if digits.iter().all(u8::is_ascii_digit) => {}
            _ => return None,
        }
        let bad_host = matches!(host, [] | b"[]")
            || host
                .iter()
                .any(|c| c.is_ascii_whitespace() || c.is_ascii_control());
        if bad_host {
            return None;
        }
        let start = colon + 3 + host_start;
        Some(Authority {
            scheme: 0..colon,
            host: start..start + host_len,
        })
    }

    fn pair(a: Option<Authority>) -> Option<(Range<usize>, Range<usize>)> {
        a.map(|a| (a.scheme, a.host))
    }

    #[test]
    fn authority_cases() {
        let cases: &[(&str, Option<&str>)] = &[
            ("https://www.example.com/a?b#c", Some("www.example.com")),
            ("http://user:pw@Example.org:8080/", Some("Example.org")),
            ("http://a@b@host/", Some("host")),
            ("http://[::1]:80/x", Some("[::1]")),
            ("http://[::1]x/", None),
            ("http://[]/", None),
            ("http://host:8o/", None),
            ("http://ho st/", None),
            ("http://us er@host/", Some("host")),
            ("http://host:80 /", None),
            ("http://host\\path", Some("host")),
            ("http:///path", None),
            ("1http://host/", None),
            ("mailto:someone@example.com", None),
            (
                "android-app://com.google.android.gm/",
                Some("com.google.android.gm"),
            ),
        ];
        for &(url, want) in cases {
            let got = authority(url).and_then(|a| url.get(a.host));
            assert_eq!(got, want, "{url:?}");
            assert_eq!(pair(authority(url)), pair(authority_model(url)), "{url:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn authority_agrees_with_its_model(
            scheme in "[a-z0-9+.:-]{0,5}",
            rest in "[a-zA-Z0-9.:@\\[\\]/?#\\\\ \t\x01\x7fé%-]{0,24}",
        ) {
            let url = format!("{scheme}://{rest}");
            prop_assert_eq!(pair(authority(&url)), pair(authority_model(&url)));
            prop_assert_eq!(pair(authority(&rest)), pair(authority_model(&rest)));
        }
    }
}
