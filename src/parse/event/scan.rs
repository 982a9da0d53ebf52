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
//! checks on generated, mutated and random lines (`tests` in `mod.rs`). Ignored values are
//! validated as serde_json's `IgnoredAny` validates them (`\u` needs four hex digits, control
//! characters are refused inside strings), so that the two paths agree on which lines are
//! valid.
//!
//! Why hand-written: the visitor spent ≈ 6 400 instructions on a 280-byte line (serde_json's
//! byte-at-a-time state machine, key matching through `Visitor` calls), most of the per-event
//! budget; this scanner finds quotes sixteen bytes at a time (SSE2) and matches keys in a
//! table indexed by length — or, where a key's bytes are those of the line before, by one
//! compare of the run between two values ([`Template`], learned from the lines: nginx
//! writes every line of a `log_format` alike). The whole parse of a generated line took
//! 5 926 instructions with the scanner alone, 5 404 with the template, 5 036 with SSE2 too
//! (`valgrind --tool=callgrind`; docs/performance-history.md, "A learned template").
//! It never panics: every access is `get`, and it reads `&str` only at ASCII quote
//! positions, which are character boundaries.

use serde::de::{self, Deserializer, Visitor};

use super::bytes::{below, equal};
use super::{ms_in_range, Field, KeyTable, Scalar, Scratch, Ts};

/// Reads `text` (which starts with `{`) into `scratch` when it is a flat JSON object of the
/// shape described in the module doc. Returns `false` when it is not, or not valid JSON: the
/// caller must then forget whatever was put and read the text with serde_json.
///
/// `template` is the shape of the lines read before (see [`Template`]): it changes how fast
/// a line is read, never what is read from it.
pub(super) fn scan(
    text: &str,
    keys: &KeyTable,
    scratch: &mut Scratch,
    template: &mut Template,
) -> bool {
    let mut walk = Walk::default();
    if template.rest > 0 {
        // Lines of changing shapes: scanned, with no template tried, for a while.
        template.rest -= 1;
        template.learn = template.rest == 0;
        let ok = scan_object(text, keys, scratch, &[], &[], None, &mut walk).is_some();
        template.keys_scanned += u64::from(walk.misses);
        return ok;
    }
    let learn = template.learn;
    let marks = learn.then_some(&mut template.marks);
    let ok = scan_object(
        text,
        keys,
        scratch,
        &template.steps,
        &template.bytes,
        marks,
        &mut walk,
    )
    .is_some();
    template.keys_predicted += u64::from(walk.hits);
    template.keys_scanned += u64::from(walk.misses);
    let fresh = std::mem::replace(&mut template.fresh, false);
    if ok && learn && walk.misses + walk.hits > 0 {
        template.learn_from(text.as_bytes());
    } else if walk.misses > walk.hits && fresh {
        // A template that failed on the very next line: the lines keep changing shape, and
        // learning from each would cost more than it saves. None is tried for a while,
        // twice as long each time this happens again.
        template.rest = template.backoff;
        template.backoff = (template.backoff * 2).min(MAX_REST);
        template.learn = false;
    } else {
        // A line read mostly without the template (another shape of line, or a template that
        // no longer fits) teaches the next line a new one.
        template.learn = walk.misses > walk.hits || template.steps.is_empty();
        if !template.learn {
            template.backoff = 1;
        }
    }
    ok
}

/// What a key stands for: its field, with the position of its name among the field's
/// alternatives ([`KeyTable::lookup`]), or `None` for a key nobody reads.
type Want = Option<(Field, usize)>;

/// Where a line had one of its values: the start of the run of bytes before it, the
/// value's start, and what its key stands for.
type Mark = (u32, u32, Want);

/// The shape of nginx's lines, learned from one the scanner read: for each of its values, the
/// bytes between the value before (or the start of the line) and this one — `{"`, or `,"`,
/// the key, `":`, with the whitespace the line had — and the field that key stands for (or
/// none: a key nobody reads). nginx writes every line of a `log_format` with the same keys,
/// in the same order, with the same bytes between its values, so the next line's bytes
/// there are compared whole instead of being scanned for a quote and the key looked up by
/// name: this is issue 19's "template" fast path, learned from the lines instead of
/// configured (any log_format, no setting to keep in step with nginx's).
///
/// It is a prediction, never a definition: where the line's bytes differ, the key is read
/// as [`scan`] always reads one (and the following value's bytes are tried against the next
/// key's too, so that one extra or one missing key — a heartbeat's `inc` — costs one scanned
/// key, not the rest of the line). Bytes that equal a learned run are exactly the bytes the
/// scanner would have read there, with the same key, so a line reads the same — the same
/// [`Scratch::put`] calls, the same refusals — whatever template is held (a property test
/// checks it against the scanner without one). A line read mostly by scanning teaches the
/// next line's template; when that template fails at once too, lines are changing shape all
/// the time, and none is tried for a while (a line, then two, four… up to [`MAX_REST`]):
/// such lines cost what the scanner alone costs, not that plus a template learned in vain
/// each time (10 % more instructions before this back-off, on lines whose keys rotate).
#[derive(Debug)]
pub(super) struct Template {
    /// The runs of bytes before each value, one after the other.
    bytes: Vec<u8>,
    /// For each value: where its run ends in `bytes`, and what its key stands for.
    steps: Vec<(u32, Want)>,
    /// Whether the next line is to teach a new template.
    learn: bool,
    /// Where the line being learned from had each value.
    marks: Vec<Mark>,
    /// Whether the template was learned from the line before (see [`scan`]).
    fresh: bool,
    /// Lines still to be read without trying a template, and how many the next such rest
    /// lasts (1, doubled each time a fresh template fails at once, up to [`MAX_REST`]; back
    /// to 1 when a template holds).
    rest: u32,
    backoff: u32,
    /// Templates learned.
    pub(super) learned: u64,
    /// Keys whose bytes the template foresaw, and keys scanned.
    pub(super) keys_predicted: u64,
    pub(super) keys_scanned: u64,
}

impl Default for Template {
    fn default() -> Self {
        Template {
            bytes: Vec::new(),
            steps: Vec::new(),
            learn: true,
            marks: Vec::new(),
            fresh: false,
            rest: 0,
            backoff: 1,
            learned: 0,
            keys_predicted: 0,
            keys_scanned: 0,
        }
    }
}

impl Template {
    /// Makes the marks that reading `b` left the template.
    fn learn_from(&mut self, b: &[u8]) {
        self.bytes.clear();
        self.steps.clear();
        for &(run, value, field) in &self.marks {
            let Some(run) = b.get(run as usize..value as usize) else {
                self.steps.clear();
                break;
            };
            self.bytes.extend_from_slice(run);
            self.steps.push((self.bytes.len() as u32, field));
        }
        self.learn = self.steps.is_empty();
        self.fresh = !self.learn;
        self.learned += u64::from(self.fresh);
    }
}

/// The longest run of lines read without trying a template when lines keep changing shape.
const MAX_REST: u32 = 1024;

/// Step `k` of a template's `steps` over its `bytes` (see [`Template`]).
fn step<'a>(steps: &[(u32, Want)], bytes: &'a [u8], k: usize) -> Option<(&'a [u8], Want)> {
    let &(end, field) = steps.get(k)?;
    let start = match k.checked_sub(1) {
        Some(j) => steps.get(j)?.0,
        None => 0,
    };
    Some((bytes.get(start as usize..end as usize)?, field))
}

/// How much of one line its template foresaw: values whose run of bytes before them matched
/// it, and keys that had to be scanned.
#[derive(Debug, Default)]
struct Walk {
    hits: u32,
    misses: u32,
}

/// Whether `b` holds `run` at `i`.
fn run_at(b: &[u8], i: usize, run: &[u8]) -> bool {
    b.get(i..i + run.len()) == Some(run)
}

fn scan_object(
    text: &str,
    keys: &KeyTable,
    scratch: &mut Scratch,
    steps: &[(u32, Want)],
    bytes: &[u8],
    mut marks: Option<&mut Vec<Mark>>,
    walk: &mut Walk,
) -> Option<()> {
    let b = text.as_bytes();
    if let Some(m) = marks.as_deref_mut() {
        m.clear();
    }
    // `i` is at the end of the value before (0: the line's start, before its `{`); `k` the
    // template's next step.
    let mut i = 0;
    let mut k = 0;
    loop {
        // The template's next key, or (one key missing) the one after it. Step 0's run starts
        // with the object's `{` and holds only at the line's start, the others only after a
        // value.
        let predicted = [k, k + 1].into_iter().find_map(|j| {
            let (run, field) = step(steps, bytes, j)?;
            ((j == 0) == (i == 0) && run_at(b, i, run)).then_some((j, run.len(), field))
        });
        let (start, field) = match predicted {
            Some((j, len, field)) => {
                walk.hits += 1;
                k = j + 1;
                // More whitespace before the value than the template has: the scanner
                // skips it too.
                (ws(b, i + len), field)
            }
            None => {
                // Scanned: `{` or `,` (or the object's end), the key, `:`.
                let at = if i == 0 { ws(b, 1) } else { ws(b, i) };
                match (i == 0, b.get(at)?) {
                    (_, b'}') => return end(b, at + 1),
                    (true, b'"') => {}
                    (false, b',') => {
                        if *b.get(ws(b, at + 1))? != b'"' {
                            return None;
                        }
                    }
                    _ => return None,
                }
                let quote = if i == 0 { at } else { ws(b, at + 1) };
                let (key, next) = plain_string(b, quote + 1)?;
                let colon = ws(b, next);
                if *b.get(colon)? != b':' {
                    return None;
                }
                walk.misses += 1;
                (ws(b, colon + 1), keys.lookup(key))
            }
        };
        if let Some(m) = marks.as_deref_mut() {
            m.push((i as u32, start as u32, field));
        }
        i = match field {
            Some((field, alt)) => wanted_value(text, start, field, alt, scratch)?,
            None => skip_value(b, start)?,
        };
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
/// quote, a backslash or a control character (which JSON forbids raw). Sixteen bytes at a
/// time with SSE2 (part of every x86-64 processor), then eight at a time with the usual bit
/// tricks (`haszero`/`hasless`), then byte by byte. `memchr` was tried first and its set-up
/// cost per call, paid on every key and value of ~20 bytes, outweighed its speed; it also
/// looks for at most three bytes, not a range.
#[allow(unsafe_code)]
fn find_special(b: &[u8], mut i: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = b.get(i..i + 16) {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is in the x86-64 baseline, so these instructions exist wherever this
        // code runs; `chunk` is 16 readable bytes, and `_mm_loadu_si128` reads them at any
        // alignment.
        let hits = unsafe {
            let x = _mm_loadu_si128(chunk.as_ptr().cast());
            let quote = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\\' as i8));
            // Below 0x20, unsigned: max(x, 0x1f) is 0x1f.
            let low = _mm_set1_epi8(0x1f);
            let control = _mm_cmpeq_epi8(_mm_max_epu8(x, low), low);
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control))
        };
        if hits != 0 {
            return Some(i + hits.trailing_zeros() as usize);
        }
        i += 16;
    }
    while let Some(chunk) = b.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_le_bytes(w);
        // The lowest flag is exact (`bytes`).
        let hit = equal(x, b'"') | equal(x, b'\\') | below(x, 0x20);
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn find_special_finds_the_first_quote_backslash_or_control_byte(
            bytes in prop::collection::vec(
                prop_oneof![
                    8 => 0x20u8..=0xff,
                    1 => prop::sample::select(vec![b'"', b'\\', 0, 0x1f, 0x20, 0x7f, 0x80, 0xff]),
                ],
                0..80,
            ),
            from in 0usize..90,
        ) {
            let naive = bytes
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, &c)| c == b'"' || c == b'\\' || c < 0x20)
                .map(|(i, _)| i);
            prop_assert_eq!(find_special(&bytes, from), naive);
        }
    }
}
