//! The fast path of the event parser: a zero-allocation scanner for the JSON that nginx's
//! `log_format … escape=json` writes — one flat object whose values are strings, numbers,
//! `true`/`false` or `null` — that reads only the configured fields.
//!
//! It does not replace serde_json; it stands in front of it. Whatever it is not sure about it
//! refuses (returns `false`), and the caller then reads the same text with the serde_json
//! visitor, which stays the one definition of what a valid line means and of every error:
//! nested objects or arrays, a key with an escape, a wanted string with an escape, a wanted
//! number that is not a plain integer (or an `msec` of the `1795311543.462` form), and every
//! kind of invalid JSON. What it accepts it reads exactly as the visitor does — the same
//! [`Scratch::put`] calls with the same values, in the same order — which a property test
//! checks on generated, mutated and random lines (`tests` in `event.rs`). Ignored values are
//! validated as serde_json's `IgnoredAny` validates them (`\u` needs four hex digits, control
//! characters are refused inside strings), so that the two paths agree on which lines are
//! valid.
//!
//! Why hand-written: the visitor spent ≈ 6 400 instructions on a 280-byte line (serde_json's
//! byte-at-a-time state machine, key matching through `Visitor` calls), most of the per-event
//! budget; this scanner finds quotes eight bytes at a time and matches keys in a table
//! indexed by length. It never panics: every access is `get`, and it reads `&str` only at
//! ASCII quote positions, which are character boundaries.

use serde::de::{self, Deserializer, Visitor};

use super::{ms_in_range, Field, KeyTable, Scalar, Scratch, Ts};

/// Reads `text` (which starts with `{`) into `scratch` when it is a flat JSON object of the
/// shape described in the module doc. Returns `false` when it is not, or not valid JSON: the
/// caller must then forget whatever was put and read the text with serde_json.
pub(super) fn scan(text: &str, keys: &KeyTable, scratch: &mut Scratch) -> bool {
    scan_object(text, keys, scratch).is_some()
}

fn scan_object(text: &str, keys: &KeyTable, scratch: &mut Scratch) -> Option<()> {
    let b = text.as_bytes();
    let mut i = ws(b, 1);
    match b.get(i)? {
        b'}' => return end(b, i + 1),
        b'"' => {}
        _ => return None,
    }
    loop {
        // `i` is at the opening quote of a key.
        let (key, next) = plain_string(b, i + 1)?;
        i = ws(b, next);
        if *b.get(i)? != b':' {
            return None;
        }
        i = ws(b, i + 1);
        i = match keys.lookup(key) {
            Some((field, alt)) => wanted_value(text, i, field, alt, scratch)?,
            None => skip_value(b, i)?,
        };
        i = ws(b, i);
        match b.get(i)? {
            b',' => {
                i = ws(b, i + 1);
                if *b.get(i)? != b'"' {
                    return None;
                }
            }
            b'}' => return end(b, i + 1),
            _ => return None,
        }
    }
}

/// The first position at or after `i` that is not JSON whitespace.
fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\n' | b'\t' | b'\r')) {
        i += 1;
    }
    i
}

/// Only whitespace may follow the object (serde_json's `Deserializer::end`).
fn end(b: &[u8], i: usize) -> Option<()> {
    b.get(i..)?
        .iter()
        .all(|c| matches!(c, b' ' | b'\n' | b'\t' | b'\r'))
        .then_some(())
}

/// The position of the first byte at or after `i` that ends the plain run of a string: a
/// quote, a backslash or a control character (which JSON forbids raw). Eight bytes at a time
/// with the usual bit tricks (`haszero`/`hasless`): `memchr` was tried first and its set-up
/// cost per call, paid on every key and value of ~20 bytes, outweighed its speed.
fn find_special(b: &[u8], mut i: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_le_bytes(w);
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        // A byte is zero in `quote` (or `backslash`), or below 0x20 in `x`. Each test may
        // flag bytes after a true hit (a borrow runs upwards), never before one, so the
        // lowest flag (little-endian: the first byte) is exact.
        let hit = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (x.wrapping_sub(ONES * 0x20) & !x))
            & HIGH;
        if hit != 0 {
            return Some(i + (hit.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// A string without escapes that starts at `start` (after its opening quote): its bytes and
/// the position after its closing quote. `None` when it has an escape or a control
/// character, or does not end.
fn plain_string(b: &[u8], start: usize) -> Option<(&[u8], usize)> {
    let end = find_special(b, start)?;
    if *b.get(end)? != b'"' {
        return None;
    }
    Some((b.get(start..end)?, end + 1))
}

/// Skips a string starting at `start` (after its opening quote), validating its escapes and
/// refusing control characters as serde_json does for an ignored string.
fn skip_string(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    loop {
        i = find_special(b, i)?;
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => {}
            _ => return None,
        }
        match b.get(i + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
            b'u' => {
                if !b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                i += 6;
            }
            _ => return None,
        }
    }
}

/// A JSON number starting at `i`, by the grammar
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
struct Number {
    end: usize,
    negative: bool,
    /// Digits before the point.
    int: std::ops::Range<usize>,
    /// Digits after the point (empty when there is none).
    frac: std::ops::Range<usize>,
    exponent: bool,
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

fn number(b: &[u8], start: usize) -> Option<Number> {
    let negative = b.get(start) == Some(&b'-');
    let int_start = start + usize::from(negative);
    let int_end = match b.get(int_start)? {
        b'0' => int_start + 1,
        b'1'..=b'9' => digits(b, int_start + 1),
        _ => return None,
    };
    let mut i = int_end;
    let mut frac = i..i;
    if b.get(i) == Some(&b'.') {
        let end = digits(b, i + 1);
        if end == i + 1 {
            return None;
        }
        frac = i + 1..end;
        i = end;
    }
    let mut exponent = false;
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits(b, i);
        if end == i {
            return None;
        }
        i = end;
        exponent = true;
    }
    Some(Number {
        end: i,
        negative,
        int: int_start..int_end,
        frac,
        exponent,
    })
}

/// Skips an ignored value: string, number or literal. Objects and arrays are not this shape.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i + 1),
        b'-' | b'0'..=b'9' => number(b, i).map(|n| n.end),
        b't' => literal(b, i, b"true"),
        b'f' => literal(b, i, b"false"),
        b'n' => literal(b, i, b"null"),
        _ => None,
    }
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
}

/// Reads a wanted value into `scratch`; the position after it.
fn wanted_value(
    text: &str,
    i: usize,
    field: Field,
    alt: usize,
    scratch: &mut Scratch,
) -> Option<usize> {
    let b = text.as_bytes();
    let (value, end) = match b.get(i)? {
        b'"' => match plain_string(b, i + 1) {
            // Both ends are at ASCII quotes, so they are character boundaries.
            Some((s, end)) => (Scalar::Str(text.get(i + 1..i + 1 + s.len())?), end),
            // A user agent may hold quotes and backslashes (nginx escapes them): its string,
            // checked by `skip_string`, is unescaped by serde_json (rare, so the allocation
            // does not matter). Other fields keep the whole-line fallback.
            None if field == Field::Ua => {
                let end = skip_string(b, i + 1)?;
                let s: String = serde_json::from_str(text.get(i..end)?).ok()?;
                scratch.put(field, alt, Scalar::Str(&s));
                return Some(end);
            }
            None => return None,
        },
        b'-' | b'0'..=b'9' => {
            let n = number(b, i)?;
            if field == Field::Msec {
                if let Some(ts) = msec_ts(b, &n) {
                    scratch.put_msec(alt, ts);
                    return Some(n.end);
                }
            }
            (number_value(text, b, &n)?, n.end)
        }
        b't' => (Scalar::Other, literal(b, i, b"true")?),
        b'f' => (Scalar::Other, literal(b, i, b"false")?),
        b'n' => (Scalar::Null, literal(b, i, b"null")?),
        _ => return None,
    };
    scratch.put(field, alt, value);
    Some(end)
}

/// The value serde_json gives a number: a `u64` read here when it is a plain non-negative
/// integer of at most 19 digits (which cannot overflow), else serde_json's own reading of the
/// number's text — negative zero, overflow to `f64` and float rounding are its business.
fn number_value<'t>(text: &'t str, b: &[u8], n: &Number) -> Option<Scalar<'t>> {
    if !n.negative && n.frac.is_empty() && !n.exponent && n.int.len() <= 19 {
        let v = b
            .get(n.int.clone())?
            .iter()
            .fold(0u64, |v, &d| v * 10 + u64::from(d - b'0'));
        return Some(Scalar::U64(v));
    }
    let start = n.int.start - usize::from(n.negative);
    let mut de = serde_json::Deserializer::from_str(text.get(start..n.end)?);
    let v = de.deserialize_any(NumberVisitor).ok()?;
    de.end().ok()?;
    Some(v)
}

/// An `msec` number of nginx's form, `seconds.mmm` (1 to 3 decimals, at most 15 integer
/// digits), read exactly. This equals what the visitor computes from serde_json's `f64`
/// (`(secs * 1000).round()`): the f64 is within one rounding of the decimal and its product by
/// 1000 within another, an error below N × 2.3e-16 ms for N ms, far under the 0.5 ms that
/// could change the rounding for any N up to the 9999-12-31 limit; above it both are out of
/// range. Other forms go through [`number_value`].
fn msec_ts(b: &[u8], n: &Number) -> Option<Ts> {
    if n.negative || n.exponent || n.frac.is_empty() || n.frac.len() > 3 || n.int.len() > 15 {
        return None;
    }
    // At most 15 + 3 digits: no overflow in u64.
    let secs = b
        .get(n.int.clone())?
        .iter()
        .fold(0u64, |v, &d| v * 10 + u64::from(d - b'0'));
    let frac = b.get(n.frac.clone())?;
    let ms = frac
        .iter()
        .chain(std::iter::repeat(&b'0'))
        .take(3)
        .fold(0u64, |v, &d| v * 10 + u64::from(d - b'0'));
    Some(ms_in_range(i128::from(secs * 1000 + ms)))
}

/// Turns a number read by serde_json into the visitor's [`Scalar`].
struct NumberVisitor;

impl Visitor<'_> for NumberVisitor {
    type Value = Scalar<'static>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::U64(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::I64(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::F64(v))
    }
}
