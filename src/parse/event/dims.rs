//! The dimensions of a pageview — where it came from (channel, source, utm tags) and on what
//! (device, browser, operating system, bot, country, region) — and the one string that carries their values
//! from the parser to the aggregates: the *profile key*. A custom event (the tracking script's
//! `px('signup', {…})`) has a profile too, the same values read from its own line plus its
//! name in the `event` dimension, whose value for a pageview is [`PAGEVIEW`].
//!
//! Every pageview has a value for every dimension (`(none)` when a utm tag is absent,
//! `(unknown)` when the user agent says nothing), so that each dimension's values add up to
//! the same pageviews. The key joins the values in [`DIMS`] order with [`SEP`]; the owner of
//! the visitor interns it once per distinct combination (`agg::dims`), so a pageview costs
//! one lookup there, not one per dimension, and any breakdown or filter over these dimensions
//! (one or two at a time) is a sum over the combinations. The order is stored (profile names
//! in checkpoints): a dimension is only ever appended.
//!
//! The first [`POSITIONAL`] values stand in order; the *named* built-ins follow as
//! `name=value`, found by name like a custom dimension's value and written only when they
//! differ from their [`missing_value`]: `event` (absent from a pageview's key) and `region`
//! (absent without a region from a city database) — so every key of a pageview without a
//! region (and every profile stored before these existed) stays as it was.

use super::bytes::{below, equal};

/// The dimensions: the positional ones in key order, then the named built-ins.
pub const DIMS: [&str; 12] = [
    "channel",
    "source",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "device",
    "browser",
    "os",
    "bot",
    "country",
    "event",
    "region",
];

/// The dimensions every line of a reader says by itself, a heartbeat's as much as a
/// pageview's: device, browser and OS from its user agent, bot, country and region from its
/// address. The others come from a pageview's referrer and url (channel, source, utm tags),
/// from a custom event (event) or from configured fields.
pub const LINE: [usize; 6] = [DEVICE, DEVICE + 1, DEVICE + 2, BOT, COUNTRY, REGION];

/// How many of [`DIMS`] stand by position in a key.
pub const POSITIONAL: usize = 10;

/// Positions in [`DIMS`].
pub const CHANNEL: usize = 0;
pub const DEVICE: usize = 5;
pub const BOT: usize = 8;
pub const COUNTRY: usize = 9;
pub const EVENT: usize = 10;
pub const REGION: usize = 11;

/// Separates the values of a key (a control character no value keeps: see [`push_value`]).
pub const SEP: char = '\u{1f}';
/// The value of an absent utm tag.
pub const NONE: &str = "(none)";
/// The `bot` value of a pageview that is not a bot's.
pub const HUMAN: &str = "human";
/// The `event` value of a pageview.
pub const PAGEVIEW: &str = "pageview";
/// What a custom event named [`PAGEVIEW`] counts as, so that no event's row is taken for the
/// pageviews'.
pub const PAGEVIEW_EVENT: &str = "pageview (event)";

/// The position of dimension `name` in [`DIMS`].
pub fn dim_index(name: &str) -> Option<usize> {
    DIMS.iter().position(|d| *d == name)
}

/// Appends one value to a key being built: [`SEP`] before every value but the first, control
/// characters replaced by spaces, [`NONE`] for an empty value.
#[inline]
pub fn push_value(key: &mut String, value: &str) {
    if !key.is_empty() {
        key.push(SEP);
    }
    push_clean(key, value);
}

/// Appends a value of pixeld's own tables (a channel's name; a device, browser or OS as
/// `parse::event::agent` names them): trimmed and without a control character, so appended
/// as it is ([`NONE`] if empty, like [`push_value`]).
#[inline]
pub fn push_known(key: &mut String, value: &str) {
    debug_assert!(value.trim() == value && !value.chars().any(char::is_control));
    if !key.is_empty() {
        key.push(SEP);
    }
    key.push_str(if value.is_empty() { NONE } else { value });
}

/// Appends `value` trimmed, control characters replaced by spaces, [`NONE`] when empty.
fn push_clean(key: &mut String, value: &str) {
    // The usual value goes in as it is: printable ASCII at both ends, so trimming changes
    // nothing (ASCII whitespace is below 0x21, any other whitespace character starts and ends
    // with a byte above 0x7f), and no control byte (`has_control`) inside.
    let printable = |b: &u8| *b > b' ' && *b < 0x7f;
    let b = value.as_bytes();
    if b.first().is_some_and(printable) && b.last().is_some_and(printable) && !has_control(b) {
        key.push_str(value);
        return;
    }
    let value = value.trim();
    // Control characters: C0 and DEL in ASCII, C1 (U+0080–U+009F) behind a 0xC2 byte.
    if value.is_empty() {
        key.push_str(NONE);
    } else if has_control(value.as_bytes()) && value.chars().any(char::is_control) {
        key.extend(value.chars().map(|c| if c.is_control() { ' ' } else { c }));
    } else {
        key.push_str(value);
    }
}

/// Whether `b` holds a control byte (below 0x20, 0x7f, or the 0xC2 that starts a C1
/// character), eight bytes at a time (`super::bytes`), the rest byte by byte: with the
/// printable-ends check above, 5 324 → 5 162 instructions per line of the parse benchmark
/// (`benches/parse.rs`).
fn has_control(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let x = u64::from_le_bytes(w);
        if below(x, 0x20) | equal(x, 0x7f) | equal(x, 0xc2) != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&c| c < 0x20 || c == 0x7f || c == 0xc2)
}

/// The longest value of a custom dimension kept (longer ones are cut at a character
/// boundary): a key stays small whatever a line carries.
pub const CUSTOM_VALUE_BYTES: usize = 100;

/// Appends a custom event's name to a key being built (after the positional values, before
/// the custom ones), as `event=NAME`, cut like a custom value; [`PAGEVIEW_EVENT`] for the
/// name [`PAGEVIEW`].
pub fn push_event(key: &mut String, name: &str) {
    let name = name.trim();
    push_custom(
        key,
        DIMS[EVENT],
        if name == PAGEVIEW {
            PAGEVIEW_EVENT
        } else {
            name
        },
    );
}

/// Appends custom dimension `name`'s value to a key being built, as `name=value` after the
/// built-in values: found by its name, not its position, so that adding, removing or
/// reordering `[agg.dimensions]` never reads one dimension's value as another's.
pub fn push_custom(key: &mut String, name: &str, value: &str) {
    key.push(SEP);
    key.push_str(name);
    key.push('=');
    let mut v = value.trim();
    if v.len() > CUSTOM_VALUE_BYTES {
        let mut end = CUSTOM_VALUE_BYTES;
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        v = &v[..end];
    }
    push_clean(key, v);
}

/// The value of custom dimension `name` in a key, [`NONE`] when the key has none (a pageview
/// aggregated before the dimension was configured, or without its field).
pub fn custom_value<'a>(key: &'a str, name: &str) -> &'a str {
    named_value(key, name).unwrap_or(NONE)
}

/// The `name=value` entry of `name` after a key's positional values.
fn named_value<'a>(key: &'a str, name: &str) -> Option<&'a str> {
    key.split(SEP)
        .skip(POSITIONAL)
        .find_map(|e| e.strip_prefix(name)?.strip_prefix('='))
}

/// Appends a pageview's region (ISO 3166-2, e.g. `DE-BY`) to a key being built, after its
/// event's name and before the custom values, as `region=CODE`.
pub fn push_region(key: &mut String, region: &str) {
    push_custom(key, DIMS[REGION], region);
}

/// The value a key of an older build, written before dimension `dim` existed, stands for (and
/// what a named built-in's absence from a key means).
pub fn missing_value(dim: usize) -> &'static str {
    match dim {
        COUNTRY | REGION => crate::parse::geo::UNKNOWN,
        EVENT => PAGEVIEW,
        _ => NONE,
    }
}

/// The values of a key in [`DIMS`] order: the positional ones, those missing at its end (a
/// key of an older build) as [`missing_value`] says, then the named built-ins (its event's
/// name, [`PAGEVIEW`] without one; its region).
pub fn values(key: &str) -> impl Iterator<Item = &str> {
    let mut given = key.split(SEP);
    (0..POSITIONAL)
        .map(move |d| given.next().unwrap_or(missing_value(d)))
        .chain(
            (POSITIONAL..DIMS.len())
                .map(move |d| named_value(key, DIMS[d]).unwrap_or(missing_value(d))),
        )
}

/// Whether dimension `d` is a named built-in (written `name=value` when it has a value).
pub fn is_named_builtin(d: usize) -> bool {
    (POSITIONAL..DIMS.len()).contains(&d)
}

/// The values of a key for every pageview dimension: the built-in ones ([`values`]), then
/// those of the custom dimensions named `custom`, in that order ([`custom_value`]).
pub fn all_values<'k, 'c, S: AsRef<str>>(
    key: &'k str,
    custom: &'c [S],
) -> impl Iterator<Item = &'k str> + use<'k, 'c, S> {
    values(key).chain(custom.iter().map(move |n| custom_value(key, n.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn has_control_finds_what_a_byte_loop_finds(
            bytes in prop::collection::vec(
                prop_oneof![
                    6 => 0x20u8..=0x7e,
                    1 => prop::sample::select(vec![0, 0x1f, 0x20, 0x7f, 0x80, 0xc1, 0xc2, 0xc3, 0xff]),
                ],
                0..40,
            ),
        ) {
            let naive = bytes.iter().any(|&c| c < 0x20 || c == 0x7f || c == 0xc2);
            prop_assert_eq!(has_control(&bytes), naive);
        }

        #[test]
        fn push_clean_trims_and_replaces_control_characters(
            v in r"[ \t\n\x{1f}\x{7f}\x{85}\x{a0}\x{3000}a-z.é]{0,24}",
        ) {
            let mut got = String::from("k");
            push_clean(&mut got, &v);
            let clean: String =
                v.trim().chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
            let want = if v.trim().is_empty() { NONE.to_owned() } else { clean };
            prop_assert_eq!(got, format!("k{want}"));
        }
    }

    #[test]
    fn a_key_round_trips_and_keeps_no_control_character() {
        let mut k = String::new();
        for v in ["search", "www.google.com", "", " news\u{1f}letter\n", "x"] {
            push_value(&mut k, v);
        }
        let got: Vec<&str> = values(&k).collect();
        assert_eq!(
            got,
            [
                "search",
                "www.google.com",
                NONE,
                "news letter",
                "x",
                NONE,
                NONE,
                NONE,
                NONE,
                crate::parse::geo::UNKNOWN,
                PAGEVIEW,
                crate::parse::geo::UNKNOWN,
            ]
        );
        // An event's name follows the positional values, found by name like a custom one.
        let mut full = String::new();
        for d in &DIMS[..POSITIONAL] {
            push_value(&mut full, d);
        }
        let mut e = full.clone();
        push_event(&mut e, " signup ");
        push_region(&mut e, "DE-BY");
        push_custom(&mut e, "plan", "pro");
        let got: Vec<&str> = all_values(&e, &["plan", "tier"]).skip(EVENT).collect();
        assert_eq!(got, ["signup", "DE-BY", "pro", NONE]);
        // A pageview's region alone.
        let mut r = full.clone();
        push_region(&mut r, "AT-9");
        let got: Vec<&str> = values(&r).skip(EVENT).collect();
        assert_eq!(got, [PAGEVIEW, "AT-9"]);
        assert!(is_named_builtin(EVENT) && is_named_builtin(REGION) && !is_named_builtin(COUNTRY));
        assert_eq!(values(&full).nth(EVENT), Some(PAGEVIEW));
        push_event(&mut full, "pageview");
        assert_eq!(values(&full).nth(EVENT), Some(PAGEVIEW_EVENT));
        assert_eq!(dim_index("os"), Some(7));
        assert_eq!(dim_index("bot"), Some(BOT));
        assert_eq!(dim_index("nope"), None);
    }
}
