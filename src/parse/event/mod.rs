//! One logged record turned into one analytics event: time, action, site, url, referrer
//! domain and visitor.
//!
//! This module owns the step after [`syslog`]: it takes the message behind the header (or the
//! whole record when there is none) and reads the few fields analytics needs from it. Two
//! shapes are understood. The main one is the JSON object that `config/nginx/pixel.conf`
//! makes nginx log; it is read by a zero-allocation scanner for nginx's flat `escape=json`
//! objects (`event/scan.rs`) and, for any line that scanner refuses (another shape, invalid
//! JSON), by serde_json through a hand-written `DeserializeSeed`, so that only the configured
//! keys ([`FieldNames`]) are looked at and every other value is skipped as `IgnoredAny`
//! without being built. Both paths feed the same `Scratch::put`, and a property test checks
//! that they agree. The second is an nginx `combined` access line
//! of a pixel request, whose fields come from the request's query string and whose time comes
//! from `[$time_local]`.
//!
//! It runs once per hit on the hot ingest path, so it does not allocate in the steady state:
//! the decoded url, referrer and visitor id are written into scratch buffers that the
//! [`EventParser`] keeps between calls, and the returned [`Event`] borrows them. (Two rare
//! cases still allocate: a wanted JSON string with `\` escapes grows serde_json's own scratch,
//! and the combined format's `form_urlencoded` decoding returns owned strings.) Host
//! extraction is hand-written on purpose: the `url` crate's full WHATWG parse costs about
//! 1 µs per event, several times the whole budget of this parser, and analytics needs only
//! the scheme and the host.
//!
//! Files: this one holds the types, [`EventParser`] and the scratch buffers both readers fill;
//! `fields.rs` the configured key names and their lookup table, `scan.rs` the fast reader of
//! nginx's flat JSON, `json.rs` the serde_json reader, `combined.rs` the access-line reader,
//! `url.rs` decoding and url normalising, `timestamp.rs` event times.
//!
//! Nothing here trusts its input. nginx's `escape=json` passes bytes of 0x80 and above raw, so
//! a message that is not UTF-8 is repaired (invalid sequences become U+FFFD) and the event is
//! flagged rather than dropped. A record that cannot become an event gives an
//! [`EventError`] without data, whose [`EventError::kind`] is a bounded metrics label. It must
//! never panic: every access goes through `get`, `split` or slice patterns.

use std::fmt::Write as _;
use std::ops::Range;

use percent_encoding::percent_decode;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use thiserror::Error;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::syslog;

pub mod agent;
mod bytes;
mod cache;
pub mod channel;
mod combined;
pub mod dims;
mod fields;
mod json;
mod scan;
mod timestamp;
mod url;

pub use cache::Counts as CacheCounts;
use combined::*;
use fields::*;
pub use fields::{FieldNames, PROPS_PREFIX};
use json::*;
use timestamp::*;
pub use url::site_of;
use url::*;

/// How records become events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventConfig {
    pub fields: FieldNames,
    /// Engaged seconds of a heartbeat that carries no valid `inc`.
    pub heartbeat_seconds: u32,
    /// Query parameters kept in the normalized url (in their original order); all others
    /// are dropped, so that `?utm_source=…` does not split one page into many.
    pub url_keep_query: Vec<String>,
    /// The country database (`[geo]`), if any.
    pub geo: crate::parse::geo::Geo,
    /// Networks whose addresses are bots' (`[geo] bot_networks`), if any.
    pub bot_networks: crate::parse::networks::BotNetworks,
    /// Custom dimensions of a pageview (`[agg.dimensions]`): (name, the line's field), in
    /// the order of their names.
    pub custom: Vec<(String, String)>,
}

impl Default for EventConfig {
    fn default() -> Self {
        EventConfig {
            fields: FieldNames::default(),
            heartbeat_seconds: 10,
            url_keep_query: Vec::new(),
            geo: crate::parse::geo::Geo::none(),
            bot_networks: crate::parse::networks::BotNetworks::none(),
            custom: Vec::new(),
        }
    }
}

/// What a hit reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A page was shown.
    Pageview,
    /// A page is still being looked at; counts engaged time.
    Heartbeat,
    /// A custom event (`a=event` with a `name` and `props`, e.g. from the tracking script's
    /// `px('signup', {…})`, outbound links, downloads): a hit, neither a view nor engaged
    /// time; its name is its value of the `event` dimension, its props are read by custom
    /// dimensions whose field is `props.KEY`.
    Event,
}

/// One analytics event. The strings borrow the [`EventParser`]'s buffers, so an event lives
/// until the next call to [`EventParser::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// Event time, ms since the epoch; `None` when the record has none or it is unparseable.
    pub ts_ms: Option<i64>,
    /// A timestamp field was present but unparseable (or absurd: before 1970 or after 9999).
    /// `ts_ms` may still be set when the other timestamp field was usable.
    pub bad_timestamp: bool,
    pub action: Action,
    /// 0 for a pageview; for a heartbeat the record's `inc` when it is an integer 0..=3600,
    /// else [`EventConfig::heartbeat_seconds`].
    pub engaged_seconds: u32,
    /// Lower-case host of `url`, without port and userinfo (`[::1]` for an IPv6 literal).
    pub site: &'a str,
    /// The url as sent, decoded, with scheme and host lower-cased, without fragment and
    /// without query parameters other than [`EventConfig::url_keep_query`].
    pub url: &'a str,
    /// Lower-case host of the referrer without port; `(direct)` when there is none (empty or
    /// `-`), `(invalid)` when it is not an absolute url with a host.
    pub ref_domain: &'a str,
    /// The visitor id as sent; empty when missing.
    pub vid: &'a str,
    /// Some of the record was not UTF-8 (raw, or after percent-decoding) and was repaired with
    /// U+FFFD.
    pub invalid_utf8: bool,
    /// Its user agent is a bot's (`agent`).
    pub bot: bool,
    /// A pageview's or custom event's profile key: the value of each dimension (`dims`, an
    /// event's name among them); empty for a heartbeat.
    pub profile: &'a str,
    /// A custom dimension reads a prop (`props.KEY`) and the props were not a JSON object:
    /// their values are `(none)`.
    pub bad_props: bool,
    /// A pageview's channel as a code (`channel::Channel::code`, the profile's first value);
    /// 0 for other actions.
    pub channel: u8,
}

/// Why a record gave no event. The variants carry no data so that counting one is a single
/// label lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum EventError {
    #[error("record is neither a JSON object nor an nginx combined pixel request")]
    NotAnEvent,
    #[error("record starts with `{{` but is not a valid JSON object")]
    BadJson,
    #[error("event has no url, or an empty one")]
    NoUrl,
    #[error("event url is not an absolute url with a host")]
    BadUrl,
    #[error("event action is neither pageview, heartbeat nor event")]
    UnknownAction,
}

impl EventError {
    /// Every variant, so that each `kind` label can be registered at zero before it first
    /// happens.
    pub const ALL: [EventError; 5] = [
        EventError::NotAnEvent,
        EventError::BadJson,
        EventError::NoUrl,
        EventError::BadUrl,
        EventError::UnknownAction,
    ];

    /// The `kind` label of the event-error counter. These are the only values it takes.
    pub fn kind(self) -> &'static str {
        match self {
            EventError::NotAnEvent => "not_an_event",
            EventError::BadJson => "bad_json",
            EventError::NoUrl => "no_url",
            EventError::BadUrl => "bad_url",
            EventError::UnknownAction => "unknown_action",
        }
    }
}

/// The latest instant accepted as an event time, 9999-12-31T23:59:59.999Z.
const MAX_MS: i64 = 253_402_300_799_999;
const DIRECT: &str = "(direct)";
const INVALID: &str = "(invalid)";
/// No alternative has filled a field yet; any real position is smaller.
const UNSET: usize = usize::MAX;

/// A timestamp field as found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Ts {
    #[default]
    Absent,
    /// Present but unparseable or absurd.
    Bad,
    Ms(i64),
}

/// A field's value and which alternative name gave it.
#[derive(Debug, Clone, Copy)]
struct Slot<T> {
    alt: usize,
    value: T,
}

impl<T: Default> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            alt: UNSET,
            value: T::default(),
        }
    }
}

impl<T> Slot<T> {
    /// Takes the slot for alternative `alt` when no earlier alternative has filled it.
    fn claim(&mut self, alt: usize) -> bool {
        let wins = alt < self.alt;
        if wins {
            self.alt = alt;
        }
        wins
    }

    fn is_set(&self) -> bool {
        self.alt != UNSET
    }
}

/// What one record gave, before it is checked and normalized into an [`Event`].
#[derive(Debug, Default)]
struct Found {
    msec: Slot<Ts>,
    time: Slot<Ts>,
    /// The values of these three are in [`Scratch`]'s buffers.
    url: Slot<()>,
    referrer: Slot<()>,
    vid: Slot<()>,
    ua: Slot<()>,
    ip: Slot<()>,
    name: Slot<()>,
    props: Slot<()>,
    /// `None` for an unknown action.
    action: Slot<Option<Action>>,
    /// `None` when not an integer 0..=3600.
    inc: Slot<Option<u32>>,
    invalid_utf8: bool,
}

/// A JSON scalar (or the query string's text value) handed to [`Scratch::put`].
#[derive(Debug, Clone, Copy)]
enum Scalar<'v> {
    Str(&'v str),
    U64(u64),
    I64(i64),
    F64(f64),
    Null,
    /// A boolean, array or object.
    Other,
}

/// The buffers an event's strings live in, reused from record to record.
#[derive(Debug, Default)]
struct Scratch {
    found: Found,
    url: String,
    referrer: String,
    vid: String,
    ua: String,
    ip: String,
    /// A custom event's name, and its props as sent (JSON text, maybe percent-encoded).
    name: String,
    props: String,
    /// The values of the custom dimensions' fields, by position in `EventConfig::custom`
    /// (first occurrence wins; empty when absent).
    custom: Vec<String>,
    custom_found: Vec<bool>,
    /// A pageview's profile key (`dims`).
    profile: String,
    /// Percent-decoded bytes before their UTF-8 check (the combined format's query).
    bytes: Vec<u8>,
}

impl Scratch {
    fn reset(&mut self) {
        self.found = Found::default();
        self.url.clear();
        self.referrer.clear();
        self.vid.clear();
        self.ua.clear();
        self.ip.clear();
        self.name.clear();
        self.props.clear();
        for c in &mut self.custom {
            c.clear();
        }
        for f in &mut self.custom_found {
            *f = false;
        }
        self.profile.clear();
    }

    /// Records an `msec` value already read as a time (the scanner's exact reading of
    /// `seconds.mmm`), as [`Scratch::put`] would from its number.
    fn put_msec(&mut self, alt: usize, ts: Ts) {
        if self.found.msec.claim(alt) {
            self.found.msec.value = ts;
        }
    }

    /// Records the value of `field` under its alternative name number `alt`.
    fn put(&mut self, field: Field, alt: usize, value: Scalar<'_>) {
        // An empty string or null is what nginx writes for an unset variable: absent, so it
        // must not shadow a later alternative that has a value.
        if matches!(value, Scalar::Null | Scalar::Str("")) {
            return;
        }
        let found = &mut self.found;
        match field {
            Field::Msec if found.msec.claim(alt) => found.msec.value = msec_ts(value),
            Field::Time if found.time.claim(alt) => {
                found.time.value = match value {
                    Scalar::Str(s) => rfc3339_ts(s),
                    _ => Ts::Bad,
                }
            }
            Field::Url | Field::Referrer => {
                let Scalar::Str(s) = value else { return };
                let (slot, out) = if field == Field::Url {
                    (&mut found.url, &mut self.url)
                } else {
                    (&mut found.referrer, &mut self.referrer)
                };
                // Kept as sent: `finish` decodes and normalises it through the cache.
                if slot.claim(alt) {
                    out.clear();
                    out.push_str(s);
                }
            }
            Field::Vid => {
                let ok = matches!(
                    value,
                    Scalar::Str(_) | Scalar::U64(_) | Scalar::I64(_) | Scalar::F64(_)
                );
                if ok && found.vid.claim(alt) {
                    self.vid.clear();
                    // Writing into a String cannot fail.
                    let _ = match value {
                        Scalar::Str(s) => self.vid.write_str(s),
                        Scalar::U64(n) => write!(self.vid, "{n}"),
                        Scalar::I64(n) => write!(self.vid, "{n}"),
                        Scalar::F64(n) => write!(self.vid, "{n}"),
                        Scalar::Null | Scalar::Other => Ok(()),
                    };
                }
            }
            Field::Action if found.action.claim(alt) => {
                found.action.value = match value {
                    Scalar::Str(s) => action(s),
                    _ => None,
                }
            }
            Field::Inc if found.inc.claim(alt) => {
                found.inc.value = match value {
                    Scalar::Str(s) => s.parse::<u32>().ok(),
                    Scalar::U64(n) => u32::try_from(n).ok(),
                    Scalar::I64(n) => u32::try_from(n).ok(),
                    Scalar::F64(n) if n.fract() == 0.0 && (0.0..=3600.0).contains(&n) => {
                        Some(n as u32)
                    }
                    _ => None,
                }
                .filter(|&n| n <= 3600)
            }
            Field::Ua | Field::Ip => {
                let Scalar::Str(s) = value else { return };
                let (slot, out) = if field == Field::Ua {
                    (&mut found.ua, &mut self.ua)
                } else {
                    (&mut found.ip, &mut self.ip)
                };
                if slot.claim(alt) {
                    out.clear();
                    out.push_str(s);
                }
            }
            Field::Name | Field::Props => {
                let (slot, out) = if field == Field::Name {
                    (&mut found.name, &mut self.name)
                } else {
                    (&mut found.props, &mut self.props)
                };
                if slot.claim(alt) {
                    out.clear();
                    write_scalar(out, value);
                }
            }
            Field::Custom(i) => {
                let i = usize::from(i);
                let (Some(out), Some(found)) =
                    (self.custom.get_mut(i), self.custom_found.get_mut(i))
                else {
                    return;
                };
                if *found {
                    return;
                }
                *found = true;
                write_scalar(out, value);
            }
            Field::Msec | Field::Time | Field::Action | Field::Inc => {}
        }
    }

    /// Records props that came as a JSON object (the serde path), as their text.
    fn put_props_object(&mut self, alt: usize, props: &serde_json::Map<String, serde_json::Value>) {
        if self.found.props.claim(alt) {
            // A map of strings and values always serialises; rare, so the allocation does not
            // matter.
            self.props = serde_json::to_string(props).unwrap_or_default();
        }
    }
}

/// Appends a scalar as text: a string as it is, a number as JSON writes it, nothing for the
/// rest.
fn write_scalar(out: &mut String, value: Scalar<'_>) {
    // Writing into a String cannot fail.
    let _ = match value {
        Scalar::Str(s) => out.write_str(s),
        Scalar::U64(n) => write!(out, "{n}"),
        Scalar::I64(n) => write!(out, "{n}"),
        Scalar::F64(n) => write!(out, "{n}"),
        Scalar::Null | Scalar::Other => Ok(()),
    };
}

/// The props of a custom event as a JSON object: their text as sent, or percent-decoded
/// (nginx's `$arg_p`, the tracking script's `p`), with invalid UTF-8 replaced (and said by
/// the flag). None when neither is an object.
fn props_object(text: &str) -> Option<(serde_json::Map<String, serde_json::Value>, bool)> {
    let text = text.trim();
    if let Ok(m) = serde_json::from_str(text) {
        return Some((m, false));
    }
    let bytes: Vec<u8> = percent_decode(text.as_bytes()).collect();
    let decoded = String::from_utf8_lossy(&bytes);
    let invalid = matches!(decoded, std::borrow::Cow::Owned(_));
    serde_json::from_str(&decoded).ok().map(|m| (m, invalid))
}

/// Reads records into events, reusing its buffers from one record to the next.
#[derive(Debug)]
pub struct EventParser {
    cfg: EventConfig,
    /// The message after U+FFFD replaced its invalid UTF-8, when it had some.
    lossy: String,
    scratch: Scratch,
    /// `cfg.fields` arranged for matching keys.
    keys: KeyTable,
    /// Whether JSON lines try the [`scan`] fast path first (only tests turn it off, to
    /// compare it with the serde_json visitor).
    fast: bool,
    /// The shape of the JSON lines read so far, for the scanner (see `scan::Template`).
    template: scan::Template,
    /// Urls and referrers normalised once per distinct text.
    cache: cache::NormCache,
    /// Countries of client addresses, and the bot networks they may be in.
    geo: crate::parse::geo::GeoView,
    nets: crate::parse::networks::NetworksView,
    /// Whether a heartbeat gets a profile too ([`EventParser::with_heartbeat_dims`]).
    heartbeat_dims: bool,
}

impl EventParser {
    pub fn new(cfg: EventConfig) -> Self {
        // Without a country database or bot networks nothing reads the client address: its
        // field is skipped like any unknown key instead of being copied out of every line.
        let mut fields = cfg.fields.clone();
        if cfg.geo.db().is_none() && cfg.bot_networks.db().is_none() {
            fields.ip.clear();
        }
        // Likewise a custom event's props, read only by `props.KEY` dimensions.
        if !cfg.custom.iter().any(|(_, f)| f.starts_with(PROPS_PREFIX)) {
            fields.props.clear();
        }
        let scratch = Scratch {
            custom: vec![String::new(); cfg.custom.len()],
            custom_found: vec![false; cfg.custom.len()],
            ..Scratch::default()
        };
        EventParser {
            keys: KeyTable::with_custom(&fields, &cfg.custom),
            geo: crate::parse::geo::GeoView::new(&cfg.geo),
            nets: crate::parse::networks::NetworksView::new(&cfg.bot_networks),
            cfg,
            lossy: String::new(),
            scratch,
            fast: true,
            template: scan::Template::default(),
            cache: cache::NormCache::new(),
            heartbeat_dims: false,
        }
    }

    /// A parser that gives a heartbeat a profile too: the dimensions its own line says
    /// ([`dims::LINE`]: device, browser and OS from its user agent, bot, country and region
    /// from its address — the same reader's as its page's), `(none)` for the ones only a
    /// pageview's referrer and url say (channel, source, utm tags) and no event. What a scan of
    /// the log uses to put engaged time by device or country; ingest leaves a heartbeat
    /// without one (the cells keep engaged time per url and site).
    pub fn with_heartbeat_dims(mut self) -> Self {
        self.heartbeat_dims = true;
        self
    }

    /// Lookups of the url/referrer cache answered from it, and normalisations done.
    pub fn cache_counts(&self) -> CacheCounts {
        self.cache.counts()
    }

    /// Keys of JSON lines whose bytes the learned template foresaw, and keys scanned (see
    /// `scan::Template`).
    pub fn template_counts(&self) -> (u64, u64) {
        (self.template.keys_predicted, self.template.keys_scanned)
    }

    /// Heap bytes of the url/referrer cache.
    pub fn cache_bytes(&self) -> usize {
        self.cache.size_of()
    }

    /// The configuration this parser was made with.
    pub fn config(&self) -> &EventConfig {
        &self.cfg
    }

    /// Reads one event from `record`, the raw logged bytes: possibly with a syslog header
    /// (RFC 3164 or RFC 5424) in front, possibly bare. A header that does not parse is taken
    /// to be part of a bare message.
    pub fn parse(&mut self, record: &[u8]) -> Result<Event<'_>, EventError> {
        let msg = match syslog::parse(record) {
            Ok(s) => s.msg,
            Err(_) => record,
        };
        self.parse_message(msg)
    }

    /// Reads one event from a message whose syslog header (if any) the caller has already
    /// stripped — ingest parses the header anyway, so the live path does not parse it twice.
    pub fn parse_message(&mut self, msg: &[u8]) -> Result<Event<'_>, EventError> {
        let EventParser {
            cfg,
            lossy,
            scratch,
            keys,
            fast,
            template,
            cache,
            geo,
            nets,
            heartbeat_dims,
        } = self;
        let msg = msg.trim_ascii();
        scratch.reset();
        // serde_json would reject raw bytes >= 0x80 that are not UTF-8 inside the strings it
        // reads (and silently skip them in the ones it ignores), so the whole message is
        // checked once here: a valid one is then read as `&str` without a second check, an
        // invalid one is repaired into `lossy` and flagged.
        let text: &str = match simdutf8::basic::from_utf8(msg) {
            Ok(text) => text,
            Err(_) => {
                lossy.clear();
                push_lossy(msg, lossy);
                scratch.found.invalid_utf8 = true;
                lossy
            }
        };
        if text.starts_with('{') {
            // nginx's flat objects take the scanner; anything it refuses (another shape, or
            // invalid JSON) is read again from scratch by serde_json, which decides.
            if !(*fast && scan::scan(text, keys, scratch, template)) {
                let invalid_utf8 = scratch.found.invalid_utf8;
                scratch.reset();
                scratch.found.invalid_utf8 = invalid_utf8;
                let mut de = serde_json::Deserializer::from_str(text);
                ObjectSeed {
                    names: keys,
                    scratch,
                }
                .deserialize(&mut de)
                .and_then(|()| de.end())
                .map_err(|_| EventError::BadJson)?;
            }
        } else {
            read_combined(text, keys, scratch)?;
        }
        finish(cfg, scratch, cache, (geo, nets), *heartbeat_dims)
    }
}

/// Checks and normalizes what a record gave into an event (url and referrer through
/// `cache`).
fn finish<'a>(
    cfg: &EventConfig,
    scratch: &'a mut Scratch,
    cache: &'a mut cache::NormCache,
    (geo, nets): (
        &mut crate::parse::geo::GeoView,
        &mut crate::parse::networks::NetworksView,
    ),
    heartbeat_dims: bool,
) -> Result<Event<'a>, EventError> {
    let found = &scratch.found;
    // Decoding never empties a non-empty value, so this is "no url or an empty one".
    if !found.url.is_set() || scratch.url.is_empty() {
        return Err(EventError::NoUrl);
    }
    let cache::NormCache { urls, refs, agents } = cache;
    let url = urls.get(&scratch.url, &cfg.url_keep_query);
    let host = url.host.clone().ok_or(EventError::BadUrl)?;
    let action = match found.action.value {
        _ if !found.action.is_set() => Action::Pageview,
        Some(action) => action,
        None => return Err(EventError::UnknownAction),
    };
    let engaged_seconds = match action {
        Action::Pageview | Action::Event => 0,
        Action::Heartbeat => found.inc.value.unwrap_or(cfg.heartbeat_seconds),
    };
    let mut invalid_utf8 = found.invalid_utf8 || url.invalid_utf8;
    let (ref_domain, ref_class) = match scratch.referrer.as_str() {
        "" => (DIRECT, None),
        raw => {
            let r = refs.get(raw);
            invalid_utf8 |= r.invalid_utf8;
            (r.domain.as_str(), r.class)
        }
    };
    let agent = agents.get(&scratch.ua);
    // The client address, read when something uses it; in a bot network, a bot's hit.
    let addr = (geo.configured() || nets.configured())
        .then(|| crate::parse::geo::client_addr(&scratch.ip))
        .flatten();
    let bot = match (&agent.bot, addr) {
        (Some(name), _) => Some(name.as_ref()),
        (None, Some((_, key))) => nets.find(key),
        (None, None) => None,
    };
    let site = url.url.get(host).ok_or(EventError::BadUrl)?;
    let mut channel_code = 0;
    let mut bad_props = false;
    // A custom event has the dimensions of a pageview read from its own line, and its name;
    // a heartbeat those of its line alone, when asked (`with_heartbeat_dims`).
    let heartbeat = action == Action::Heartbeat;
    if !heartbeat || heartbeat_dims {
        let utm = &url.utm;
        let p = &mut scratch.profile;
        let (country, region) = geo.place_at(addr);
        // In `dims::DIMS` order; the values of pixeld's own tables need no cleaning.
        if heartbeat {
            dims::push_known(p, dims::NONE);
            for _ in 0..4 {
                dims::push_value(p, "");
            }
        } else {
            let channel = channel::classify(site, ref_domain, ref_class, utm);
            channel_code = channel.code();
            let source = if utm.source.is_empty() {
                ref_domain
            } else {
                &utm.source
            };
            dims::push_known(p, channel.as_str());
            for v in [source, &utm.source, &utm.medium, &utm.campaign] {
                dims::push_value(p, v);
            }
        }
        for v in [agent.device, &agent.browser, &agent.os] {
            dims::push_known(p, v);
        }
        for v in [bot.unwrap_or(dims::HUMAN), country] {
            dims::push_value(p, v);
        }
        if action == Action::Event {
            dims::push_event(p, &scratch.name);
        } else if heartbeat {
            dims::push_event(p, dims::NONE);
        }
        if let Some(region) = region {
            dims::push_region(p, region);
        }
        // Props read by custom dimensions (`props.KEY`), parsed only then (without one the
        // parser skips their field: `EventParser::new`). A heartbeat's custom dimensions are
        // `(none)`, as its page's may be others.
        if !heartbeat && !scratch.props.is_empty() {
            match props_object(&scratch.props) {
                Some((props, invalid)) => {
                    invalid_utf8 |= invalid;
                    for ((_, field), out) in cfg.custom.iter().zip(&mut scratch.custom) {
                        let Some(key) = field.strip_prefix(PROPS_PREFIX) else {
                            continue;
                        };
                        out.clear();
                        match props.get(key) {
                            Some(serde_json::Value::String(s)) => out.push_str(s),
                            Some(
                                v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)),
                            ) => out.push_str(&v.to_string()),
                            _ => {}
                        }
                    }
                }
                None => bad_props = true,
            }
        }
        for ((name, _), v) in cfg.custom.iter().zip(&scratch.custom) {
            dims::push_custom(p, name, if heartbeat { "" } else { v });
        }
    }
    let (msec, time) = (found.msec.value, found.time.value);
    let ts_ms = match (msec, time) {
        (Ts::Ms(ms), _) | (_, Ts::Ms(ms)) => Some(ms),
        _ => None,
    };
    let scratch: &'a Scratch = scratch;
    Ok(Event {
        ts_ms,
        bad_timestamp: msec == Ts::Bad || time == Ts::Bad,
        action,
        engaged_seconds,
        site,
        url: &url.url,
        ref_domain,
        vid: &scratch.vid,
        invalid_utf8,
        bot: bot.is_some(),
        profile: &scratch.profile,
        channel: channel_code,
        bad_props,
    })
}

/// Classifies an action value, case-insensitively; `None` when unknown.
fn action(s: &str) -> Option<Action> {
    // As the tracker and the shipped nginx config send them: one compare of the whole value.
    match s {
        "pageview" => return Some(Action::Pageview),
        "heartbeat" => return Some(Action::Heartbeat),
        _ => {}
    }
    if s.eq_ignore_ascii_case("pageview") || s.eq_ignore_ascii_case("pv") {
        Some(Action::Pageview)
    } else if s.eq_ignore_ascii_case("heartbeat") || s.eq_ignore_ascii_case("hb") {
        Some(Action::Heartbeat)
    } else if s.eq_ignore_ascii_case("event") {
        Some(Action::Event)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The REFERENCE.md byte-exact example line nginx sends.
    const NGINX_LINE: &[u8] = br#"<190>Nov 22 01:39:03 pixel: {"ts":"2026-11-22T01:39:03.462+00:00","msec":1795311543.462,"url":"https%3A%2F%2Fm.sportsline.example%2Fnews%2F2026%2F11%2F22%2Fstory-4","urlref":"https%3A%2F%2Fwww.google.com%2F","vid":"2bcc3ed32675a41e","ua":"Mozilla/5.0 \"quoted\" \\backslash\\ tab\there","ip":"127.0.0.1","action":"pageview"}"#;
    const MS: i64 = 1_795_311_543_462;

    fn parser() -> Core {
        Core(EventParser::new(EventConfig::default()))
    }

    /// A parser whose events leave out the dimensions (`profile`, `bot`, `channel`: see
    /// `dimensions_of_a_pageview`): the tests here are about the other fields.
    struct Core(EventParser);

    impl std::ops::Deref for Core {
        type Target = EventParser;
        fn deref(&self) -> &EventParser {
            &self.0
        }
    }

    impl std::ops::DerefMut for Core {
        fn deref_mut(&mut self) -> &mut EventParser {
            &mut self.0
        }
    }

    impl Core {
        fn parse(&mut self, record: &[u8]) -> Result<Event<'_>, EventError> {
            self.0.parse(record).map(|e| Event {
                bot: false,
                profile: "",
                channel: 0,
                ..e
            })
        }
    }

    /// A pageview of `url` on `site` with nothing else set, to update in each test.
    fn pageview<'a>(url: &'a str, site: &'a str) -> Event<'a> {
        Event {
            ts_ms: None,
            bad_timestamp: false,
            action: Action::Pageview,
            engaged_seconds: 0,
            site,
            url,
            ref_domain: DIRECT,
            vid: "",
            invalid_utf8: false,
            bot: false,
            profile: "",
            channel: 0,
            bad_props: false,
        }
    }

    fn json(fields: &str) -> Vec<u8> {
        format!("{{{fields}}}").into_bytes()
    }

    #[test]
    fn reference_nginx_line() {
        let mut p = parser();
        let e = p.parse(NGINX_LINE).unwrap();
        assert_eq!(
            e,
            Event {
                ts_ms: Some(MS),
                ref_domain: "www.google.com",
                vid: "2bcc3ed32675a41e",
                ..pageview(
                    "https://m.sportsline.example/news/2026/11/22/story-4",
                    "m.sportsline.example"
                )
            }
        );
    }

    /// A pageview's profile key: its channel, source and utm tags (read before the url drops
    /// them), its device, browser, OS and bot; a heartbeat has none.
    #[test]
    fn dimensions_of_a_pageview() {
        let mut p = EventParser::new(EventConfig::default());
        let ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1";
        let line = format!(
            r#"{{"url":"https%3A%2F%2Fa.example%2Fp%3Futm_source%3DNews%2520letter%26utm_medium%3Demail%26x%3D1","urlref":"https://mail.google.com/","ua":"{ua}"}}"#
        );
        let e = p.parse(line.as_bytes()).unwrap();
        assert_eq!(e.url, "https://a.example/p");
        let key: Vec<&str> = dims::values(e.profile).collect();
        assert_eq!(
            key,
            [
                "email",
                "News letter",
                "News letter",
                "email",
                dims::NONE,
                "mobile",
                "Safari",
                "iOS",
                dims::HUMAN,
                crate::parse::geo::UNKNOWN,
                dims::PAGEVIEW,
                crate::parse::geo::UNKNOWN,
            ]
        );
        assert!(!e.bot);
        // The channel also as a code (what the url × channel cells count).
        assert_eq!(e.channel, channel::Channel::Email.code());
        let e = p
            .parse(br#"{"url":"https://a.example/q","urlref":"https://a.example/p","ua":"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"}"#)
            .unwrap();
        let key: Vec<&str> = dims::values(e.profile).collect();
        assert_eq!(key[0], "internal");
        assert_eq!(e.channel, channel::Channel::Internal.code());
        assert_eq!(key[1], "a.example");
        assert_eq!((key[5], key[8]), ("bot", "Googlebot"));
        assert!(e.bot);
        // No referrer, no tags, no user agent.
        let e = p.parse(br#"{"url":"https://a.example/"}"#).unwrap();
        let key: Vec<&str> = dims::values(e.profile).collect();
        assert_eq!(
            key,
            [
                "direct",
                "(direct)",
                dims::NONE,
                dims::NONE,
                dims::NONE,
                "(unknown)",
                "(unknown)",
                "(unknown)",
                dims::HUMAN,
                "(unknown)",
                dims::PAGEVIEW,
                "(unknown)",
            ]
        );
        let e = p
            .parse(br#"{"url":"https://a.example/","a":"hb","ua":"curl/8.0"}"#)
            .unwrap();
        assert_eq!((e.profile, e.bot), ("", true));
    }

    /// The country comes from the client address through the configured database: the `ip`
    /// field (or `remote_addr`, or an `X-Forwarded-For` list's first entry) of a JSON line, a
    /// combined line's first field; `(unknown)` without a database or an address in it.
    #[test]
    fn country_of_a_pageview() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.mmdb");
        crate::parse::geo::tests::write_db(
            &path,
            &[("192.0.2.0/24", "DE"), ("2001:db8::/32", "FR")],
        );
        let geo = crate::parse::geo::Geo::new(crate::parse::geo::GeoDb::open(&path));
        let mut p = EventParser::new(EventConfig {
            geo,
            ..EventConfig::default()
        });
        let mut country = |line: &str| {
            let e = p.parse(line.as_bytes()).unwrap();
            dims::values(e.profile)
                .nth(dims::COUNTRY)
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            country(r#"{"url":"https://a.example/","ip":"192.0.2.9"}"#),
            "DE"
        );
        assert_eq!(
            country(r#"{"url":"https://a.example/","remote_addr":"2001:db8::7"}"#),
            "FR"
        );
        assert_eq!(
            country(r#"{"url":"https://a.example/","ip":"2001:db8::7, 192.0.2.1"}"#),
            "FR"
        );
        assert_eq!(
            country(r#"{"url":"https://a.example/","ip":"203.0.113.1"}"#),
            "(unknown)"
        );
        assert_eq!(
            country(r#"{"url":"https://a.example/","ip":"nonsense"}"#),
            "(unknown)"
        );
        assert_eq!(country(r#"{"url":"https://a.example/"}"#), "(unknown)");
        let combined = |ip: &str, query: &str| {
            format!(
                r#"{ip} - - [22/Nov/2026:01:39:03 +0000] "GET /p.gif?url=https%3A%2F%2Fa.example%2F{query} HTTP/1.1" 200 43 "-" "Mozilla/5.0""#
            )
        };
        assert_eq!(country(&combined("192.0.2.3", "")), "DE");
        assert_eq!(country(&combined("192.0.2.3", "&ip=2001:db8::1")), "FR");
        // The address is read for the country only.
        let e = p
            .parse(br#"{"url":"https://a.example/","ip":"192.0.2.9"}"#)
            .unwrap();
        assert!(!e.profile.contains("192.0.2.9"));
        // Without a database nothing is looked up.
        let mut p = EventParser::new(EventConfig::default());
        assert_eq!(country_of_a_pageview_from(&mut p, "192.0.2.9"), "(unknown)");
    }

    /// A city database adds the `region` (ISO 3166-2), written by name after an event's name
    /// and before the custom values; a pageview without one keeps the key it had before.
    #[test]
    fn region_of_a_pageview_and_an_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.mmdb");
        crate::parse::geo::tests::write_db(
            &path,
            &[("192.0.2.0/24", "DE/BY"), ("2001:db8::/32", "FR")],
        );
        let geo = crate::parse::geo::Geo::new(crate::parse::geo::GeoDb::open(&path));
        let mut p = EventParser::new(EventConfig {
            geo,
            custom: vec![("plan".into(), "props.plan".into())],
            ..EventConfig::default()
        });
        let mut place = |line: &str| {
            let e = p.parse(line.as_bytes()).unwrap();
            let all: Vec<String> = dims::all_values(e.profile, &["plan"])
                .map(str::to_owned)
                .collect();
            (
                all[dims::COUNTRY..].to_vec(),
                e.profile
                    .split(dims::SEP)
                    .skip(dims::POSITIONAL)
                    .collect::<Vec<_>>()
                    .join("|"),
            )
        };
        let (got, named) = place(r#"{"url":"https://a.example/","ip":"192.0.2.9"}"#);
        assert_eq!(got, ["DE", "pageview", "DE-BY", "(none)"]);
        assert_eq!(named, "region=DE-BY|plan=(none)");
        let (got, named) = place(
            r#"{"url":"https://a.example/","ip":"192.0.2.9","action":"event","name":"signup","props":{"plan":"pro"}}"#,
        );
        assert_eq!(got, ["DE", "signup", "DE-BY", "pro"]);
        assert_eq!(named, "event=signup|region=DE-BY|plan=pro");
        // A country without regions, and no country: no region entry.
        let (got, named) = place(r#"{"url":"https://a.example/","ip":"2001:db8::1"}"#);
        assert_eq!(got, ["FR", "pageview", "(unknown)", "(none)"]);
        assert_eq!(named, "plan=(none)");
        let (got, _) = place(r#"{"url":"https://a.example/","ip":"203.0.113.1"}"#);
        assert_eq!(got, ["(unknown)", "pageview", "(unknown)", "(none)"]);
    }

    /// The `country` of a pageview from `ip`.
    fn country_of_a_pageview_from(p: &mut EventParser, ip: &str) -> String {
        let line = format!(r#"{{"url":"https://a.example/","ip":"{ip}"}}"#);
        let e = p.parse(line.as_bytes()).unwrap();
        dims::values(e.profile)
            .nth(dims::COUNTRY)
            .unwrap()
            .to_owned()
    }

    /// A hit from an address in a bot network is a bot's, named after the network, whatever
    /// its User-Agent; a bot's User-Agent keeps its own name. Without a country database the
    /// address is read for the networks alone.
    #[test]
    fn bot_networks_make_bots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nets.txt");
        std::fs::write(&path, "192.0.2.0/24 ExampleCloud\n2001:db8::/32\n").unwrap();
        let nets = crate::parse::networks::BotNetworks::new(
            crate::parse::networks::NetworksFile::open(&path),
        );
        let mut p = EventParser::new(EventConfig {
            bot_networks: nets,
            ..EventConfig::default()
        });
        let browser =
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";
        let mut bot = |ip: &str, ua: &str, action: &str| {
            let line = format!(
                r#"{{"url":"https://a.example/","ip":"{ip}","ua":"{ua}","action":"{action}"}}"#
            );
            let e = p.parse(line.as_bytes()).unwrap();
            let values = || dims::values(e.profile).filter(|_| !e.profile.is_empty());
            let name = values().nth(dims::BOT).map(str::to_owned);
            let device = values().nth(dims::DEVICE).map(str::to_owned);
            (e.bot, name, device)
        };
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            bot("192.0.2.7", browser, "pageview"),
            (true, some("ExampleCloud"), some("desktop"))
        );
        assert_eq!(
            bot("2001:db8::1, 192.0.2.1", browser, "pageview"),
            (
                true,
                some(crate::parse::networks::DEFAULT_NAME),
                some("desktop")
            )
        );
        assert_eq!(
            bot("198.51.100.1", browser, "pageview"),
            (false, some(dims::HUMAN), some("desktop"))
        );
        assert_eq!(
            bot("", browser, "pageview"),
            (false, some(dims::HUMAN), some("desktop"))
        );
        assert_eq!(
            bot("192.0.2.7", "curl/8.0", "pageview"),
            (true, some("curl"), some("bot"))
        );
        // A heartbeat has no dimensions, and is a bot's all the same.
        assert_eq!(bot("192.0.2.7", browser, "heartbeat"), (true, None, None));
        // The country stays unknown (no database).
        assert_eq!(country_of_a_pageview_from(&mut p, "192.0.2.9"), "(unknown)");
    }

    /// Custom dimensions: the configured fields' values after the built-in ones, as
    /// `name=value` (found by name), from JSON (strings or numbers) and from a combined
    /// line's query string; `(none)` when absent, cut at 100 bytes, control characters gone.
    #[test]
    fn custom_dimensions_of_a_pageview() {
        let mut p = EventParser::new(EventConfig {
            custom: vec![
                ("author".into(), "writer".into()),
                ("section".into(), "section".into()),
            ],
            ..EventConfig::default()
        });
        let mut custom = |line: &str| {
            let e = p.parse(line.as_bytes()).unwrap();
            (
                dims::custom_value(e.profile, "author").to_owned(),
                dims::custom_value(e.profile, "section").to_owned(),
            )
        };
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            custom(r#"{"url":"https://a.example/","writer":"Ann","section":"sport"}"#),
            s("Ann", "sport")
        );
        assert_eq!(
            custom(r#"{"url":"https://a.example/","section":42,"section":"later"}"#),
            s("(none)", "42")
        );
        assert_eq!(
            custom(r#"{"url":"https://a.example/","writer":"A \"quoted\"\nname"}"#),
            s("A \"quoted\" name", "(none)")
        );
        let long = "é".repeat(80);
        let (_, cut) = custom(&format!(
            r#"{{"url":"https://a.example/","section":"{long}"}}"#
        ));
        assert_eq!(cut, "é".repeat(50));
        assert_eq!(
            custom(
                r#"1.2.3.4 - - [22/Nov/2026:01:39:03 +0000] "GET /p.gif?url=https%3A%2F%2Fa.example%2F&section=tech&writer=Bo%20b HTTP/1.1" 200 43 "-" "-""#
            ),
            s("Bo b", "tech")
        );
        // A heartbeat has no profile.
        let e = p
            .parse(br#"{"url":"https://a.example/","a":"hb","section":"x"}"#)
            .unwrap();
        assert_eq!(e.profile, "");
    }

    /// A scan's parser gives a heartbeat the dimensions of its own line (user agent, bot,
    /// address) and `(none)` for those of a pageview's referrer and url.
    #[test]
    fn a_heartbeat_has_its_lines_dimensions_when_asked() {
        let line = |a: &str| {
            format!(
                r#"{{"url":"https://a.example/x?utm_source=news","urlref":"https://www.google.com/","a":"{a}","ua":"Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"}}"#
            )
        };
        let mut p = EventParser::new(EventConfig::default()).with_heartbeat_dims();
        let pv: Vec<String> = dims::values(p.parse(line("pv").as_bytes()).unwrap().profile)
            .map(str::to_owned)
            .collect();
        let e = p.parse(line("hb").as_bytes()).unwrap();
        assert_eq!((e.action, e.channel), (Action::Heartbeat, 0));
        let hb: Vec<&str> = dims::values(e.profile).collect();
        assert_eq!(hb.len(), pv.len());
        for (i, (h, v)) in hb.iter().zip(&pv).enumerate() {
            if dims::LINE.contains(&i) {
                assert_eq!(h, v, "{}", dims::DIMS[i]);
            } else {
                assert_eq!(*h, dims::NONE, "{}", dims::DIMS[i]);
            }
        }
        assert_eq!(hb[dims::DEVICE], "mobile");
        assert_eq!(pv[dims::CHANNEL], "search");
        // Ingest's parser leaves it without one.
        let mut p = EventParser::new(EventConfig::default());
        assert_eq!(p.parse(line("hb").as_bytes()).unwrap().profile, "");
    }

    /// A custom event has a profile: the dimensions of its own line, its name in `event`,
    /// and the props that `props.KEY` dimensions read, whatever form the props came in (the
    /// pixel's and nginx's percent-encoded `$arg_p`, a JSON string, an object, a combined
    /// line's query); bad props are flagged and read as `(none)`.
    #[test]
    fn custom_events_have_a_name_and_props() {
        let mut p = EventParser::new(EventConfig {
            custom: vec![
                ("plan".into(), "props.plan".into()),
                ("section".into(), "section".into()),
                ("seats".into(), "props.seats".into()),
            ],
            ..EventConfig::default()
        });
        let ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0";
        let mut event = |line: &str| {
            let e = p.parse(line.as_bytes()).unwrap();
            let all: Vec<String> = dims::all_values(e.profile, &["plan", "section", "seats"])
                .skip(dims::CHANNEL)
                .map(str::to_owned)
                .collect();
            (e.action, all, e.bad_props, e.invalid_utf8)
        };
        // The event's name and the custom values (no region without a city database).
        let tail = |all: &[String]| {
            assert_eq!(all[dims::REGION], crate::parse::geo::UNKNOWN);
            let mut t = vec![all[dims::EVENT].clone()];
            t.extend_from_slice(&all[dims::REGION + 1..]);
            t
        };
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (action, all, bad, _) = event(&format!(
            r#"{{"url":"https://a.example/pricing","urlref":"https://www.google.com/","a":"event","name":"signup","props":"%7B%22plan%22%3A%22pro%22%2C%22seats%22%3A5%7D","ua":"{ua}","section":"biz"}}"#
        ));
        assert_eq!(action, Action::Event);
        assert!(!bad);
        assert_eq!(all[dims::CHANNEL], "search");
        assert_eq!(all[dims::DEVICE], "desktop");
        assert_eq!(tail(&all), v(&["signup", "pro", "biz", "5"]));
        // A JSON string, an object, and a combined line.
        let (_, all, bad, _) = event(
            r#"{"url":"https://a.example/","a":"event","n":"signup","p":"{\"plan\":\"team\",\"seats\":true}"}"#,
        );
        assert!(!bad);
        assert_eq!(tail(&all), v(&["signup", "team", "(none)", "true"]));
        let (_, all, _, _) = event(
            r#"{"url":"https://a.example/","a":"event","name":"download","props":{"plan":"free","x":[1]}}"#,
        );
        assert_eq!(tail(&all), v(&["download", "free", "(none)", "(none)"]));
        let (_, all, _, _) = event(
            r#"1.2.3.4 - - [22/Nov/2026:01:39:03 +0000] "GET /p.gif?url=https%3A%2F%2Fa.example%2F&a=event&n=outbound&p=%7B%22plan%22%3A%22pro%22%7D HTTP/1.1" 200 43 "-" "-""#,
        );
        assert_eq!(tail(&all), v(&["outbound", "pro", "(none)", "(none)"]));
        // Bad props: flagged, their dimensions `(none)`; invalid UTF-8 in them repaired.
        let (_, all, bad, _) =
            event(r#"{"url":"https://a.example/","a":"event","name":"x","props":"%7Bnot json"}"#);
        assert!(bad);
        assert_eq!(tail(&all), v(&["x", "(none)", "(none)", "(none)"]));
        let (_, all, bad, invalid) = event(
            r#"{"url":"https://a.example/","a":"event","name":"x","props":"%7B%22plan%22%3A%22%FF%22%7D"}"#,
        );
        assert!(!bad && invalid);
        assert_eq!(tail(&all), v(&["x", "\u{fffd}", "(none)", "(none)"]));
        // No name; the name `pageview`; a pageview has the event `pageview` and its props
        // are read too.
        let (_, all, _, _) = event(r#"{"url":"https://a.example/","a":"event"}"#);
        assert_eq!(all[dims::EVENT], "(none)");
        let (_, all, _, _) =
            event(r#"{"url":"https://a.example/","a":"event","name":" pageview "}"#);
        assert_eq!(all[dims::EVENT], dims::PAGEVIEW_EVENT);
        let (action, all, _, _) =
            event(r#"{"url":"https://a.example/","props":"{\"plan\":\"pro\"}"}"#);
        assert_eq!(action, Action::Pageview);
        assert_eq!(tail(&all), v(&[dims::PAGEVIEW, "pro", "(none)", "(none)"]));
        // A pageview's key holds no event entry: keys stored before events existed match.
        let e = p.parse(br#"{"url":"https://a.example/"}"#).unwrap();
        assert!(!e.profile.contains("event="));
    }

    #[test]
    fn parser_is_reusable_and_forgets_the_previous_record() {
        let mut p = parser();
        assert!(p.parse(NGINX_LINE).is_ok());
        let e = p.parse(br#"{"url":"https://a.example/"}"#).unwrap();
        assert_eq!(e, pageview("https://a.example/", "a.example"));
        assert!(p.parse(NGINX_LINE).is_ok());
    }

    #[test]
    fn time_sources() {
        let mut p = parser();
        let url = r#""url":"https://a.example/""#;
        let cases: [(&str, Option<i64>, bool); 12] = [
            // `ts` only, with and without fraction, another offset, the second alternative.
            (r#""ts":"2026-11-22T01:39:03.462+00:00""#, Some(MS), false),
            (r#""ts":"2026-11-22T01:39:03+00:00""#, Some(MS - 462), false),
            (r#""ts":"2026-11-22T02:39:03.462+01:00""#, Some(MS), false),
            (
                r#""time_iso8601":"2026-11-22T01:39:03Z""#,
                Some(MS - 462),
                false,
            ),
            // No timestamp at all.
            ("", None, false),
            // msec as a string, as an integer, and winning over ts in either order.
            (r#""msec":"1795311543.462""#, Some(MS), false),
            (r#""msec":1795311543"#, Some(MS - 462), false),
            (
                r#""ts":"2026-11-22T00:00:00Z","msec":1795311543.462"#,
                Some(MS),
                false,
            ),
            // Unparseable and absurd values.
            (r#""msec":"soon""#, None, true),
            (r#""msec":-1.5"#, None, true),
            (r#""msec":1e13"#, None, true),
            // A bad msec still lets a good ts through, flagged.
            (
                r#""msec":"x","ts":"2026-11-22T01:39:03.462Z""#,
                Some(MS),
                true,
            ),
        ];
        for (fields, ts_ms, bad) in cases {
            let sep = if fields.is_empty() { "" } else { "," };
            let line = json(&format!("{fields}{sep}{url}"));
            let e = p.parse(&line).unwrap();
            assert_eq!((e.ts_ms, e.bad_timestamp), (ts_ms, bad), "{fields}");
        }
    }

    #[test]
    fn msec_float_has_no_rounding_error() {
        let mut p = parser();
        for ms in [
            MS,
            1_000,
            1_795_311_543_001,
            1_795_311_543_999,
            253_402_300_799_999,
        ] {
            let line = json(&format!(
                r#""msec":{}.{:03},"url":"https://a.example/""#,
                ms / 1000,
                ms % 1000
            ));
            assert_eq!(p.parse(&line).unwrap().ts_ms, Some(ms));
        }
        assert_eq!(decimal_secs_ms("1.4625"), Some(1463));
        assert_eq!(decimal_secs_ms("12"), Some(12_000));
        assert_eq!(decimal_secs_ms(".5"), None);
    }

    #[test]
    fn rfc5424_header_and_bare_json() {
        let body =
            br#"{"msec":1795311543.462,"url":"https%3A%2F%2Fwww.example.com%2Fa","vid":"v1"}"#;
        let want = Event {
            ts_ms: Some(MS),
            vid: "v1",
            ..pageview("https://www.example.com/a", "www.example.com")
        };
        let mut p = parser();
        let line = [
            b"<190>1 2026-11-22T01:40:00.123Z web-1 nginx - - - ".as_slice(),
            body,
        ]
        .concat();
        assert_eq!(p.parse(&line).unwrap(), want);
        assert_eq!(p.parse(body).unwrap(), want);
        let line = [b"  ".as_slice(), body, b"\r\n"].concat();
        assert_eq!(p.parse(&line).unwrap(), want);
        // A header that does not parse leaves the whole record, which is then no event.
        assert_eq!(
            p.parse(&[b"<999>x ".as_slice(), body].concat()),
            Err(EventError::NotAnEvent)
        );
    }

    #[test]
    fn combined_line() {
        let mut p = parser();
        let line = br#"<190>Nov 22 01:39:03 web-1 nginx: 203.0.113.9 - - [22/Nov/2026:02:39:03 +0100] "GET /p.gif?url=https%3A%2F%2FWWW.Example.com%2Fa%3Fx%3D1&ref=https%3A%2F%2Fwww.bing.com%2Fsearch%3Fq%3Da%2Bb&vid=abc&a=hb&inc=15 HTTP/1.1" 200 43 "https://www.example.com/a" "Mozilla/5.0""#;
        let e = p.parse(line).unwrap();
        assert_eq!(
            e,
            Event {
                ts_ms: Some(MS - 462),
                action: Action::Heartbeat,
                engaged_seconds: 15,
                ref_domain: "www.bing.com",
                vid: "abc",
                ..pageview("https://www.example.com/a", "www.example.com")
            }
        );
        // msec in the query string wins over the bracket time; a bare line; a referrer
        // sent decoded (form_urlencoded decoded it once, so it now contains `://`).
        let line = br#"10.0.0.1 - - [22/Nov/2026:01:39:03 +0000] "GET /p.gif?msec=1795311543.462&url=https://a.example/%7Efoo&ref=https://t.co/x HTTP/1.1" 200 43 "-" "-""#;
        let e = p.parse(line).unwrap();
        assert_eq!(
            e,
            Event {
                ts_ms: Some(MS),
                ref_domain: "t.co",
                ..pageview("https://a.example/~foo", "a.example")
            }
        );
        // A bad bracket time is a bad timestamp, not a lost event.
        let line = br#"10.0.0.1 - - [99/Nov/2026:01:39:03 +0000] "GET /p.gif?url=https%3A%2F%2Fa.example%2F HTTP/1.1" 200 43 "-" "-""#;
        let e = p.parse(line).unwrap();
        assert_eq!((e.ts_ms, e.bad_timestamp), (None, true));
        // Percent-encoded invalid UTF-8 in the query.
        let line = br#"10.0.0.1 - - [22/Nov/2026:01:39:03 +0000] "GET /p.gif?url=https%3A%2F%2Fa.example%2F%FF HTTP/1.1" 200 43 "-" "-""#;
        let e = p.parse(line).unwrap();
        assert_eq!(
            (e.url, e.invalid_utf8),
            ("https://a.example/\u{FFFD}", true)
        );
    }

    #[test]
    fn combined_lines_that_are_no_pixel_event() {
        let mut p = parser();
        for line in [
            r#"10.0.0.1 - - [22/Nov/2026:01:39:03 +0000] "GET /index.html HTTP/1.1" 200 43 "-" "-""#,
            r#"10.0.0.1 - - [22/Nov/2026:01:39:03 +0000] "-" 400 0 "-" "-""#,
            r#"10.0.0.1 - - [22/Nov/2026:01:39:03 +0000] 200"#,
            r#"10.0.0.1 - - [22/Nov/2026:01:39:03 +0000"#,
        ] {
            assert_eq!(
                p.parse(line.as_bytes()),
                Err(EventError::NotAnEvent),
                "{line}"
            );
        }
        let line = br#"10.0.0.1 - - [22/Nov/2026:01:39:03 +0000] "GET /p.gif?vid=1 HTTP/1.1" 200 43 "-" "-""#;
        assert_eq!(p.parse(line), Err(EventError::NoUrl));
    }

    #[test]
    fn url_normalization() {
        let mut p = parser();
        let cases = [
            (
                "https%3A%2F%2Fa.example%2Fp%3Futm_source%3Dx%23top",
                "https://a.example/p",
                "a.example",
            ),
            (
                "https://a.example/p?utm_source=x#top",
                "https://a.example/p",
                "a.example",
            ),
            ("https://a.example?x=1", "https://a.example", "a.example"),
            (
                "https://a.example/p#frag?x",
                "https://a.example/p",
                "a.example",
            ),
            (
                "HTTPS://WWW.Example.com/A",
                "https://www.example.com/A",
                "www.example.com",
            ),
            (
                "http://User:PW@Example.com:8080/X",
                "http://User:PW@example.com:8080/X",
                "example.com",
            ),
            ("http://[::1]:80/", "http://[::1]:80/", "[::1]"),
            (
                "http://[2001:DB8::1]/",
                "http://[2001:db8::1]/",
                "[2001:db8::1]",
            ),
            (
                "https://a.example:443",
                "https://a.example:443",
                "a.example",
            ),
            ("android-app://com.x/", "android-app://com.x/", "com.x"),
            // Already decoded: `%2F` stays as sent.
            (
                "https://a.example/a%2Fb",
                "https://a.example/a%2Fb",
                "a.example",
            ),
        ];
        for (raw, url, site) in cases {
            let line = json(&format!(r#""url":"{raw}""#));
            assert_eq!(p.parse(&line).unwrap(), pageview(url, site), "{raw}");
        }
    }

    #[test]
    fn url_keep_query() {
        let mut p = Core(EventParser::new(EventConfig {
            url_keep_query: vec!["id".into(), "page".into()],
            ..EventConfig::default()
        }));
        let cases = [
            (
                "https://a.example/p?utm=1&page=2&x&id=5#f",
                "https://a.example/p?page=2&id=5",
            ),
            ("https://a.example/p?utm=1", "https://a.example/p"),
            ("https://a.example/p?id", "https://a.example/p?id"),
            ("https://a.example/p?&&id=&", "https://a.example/p?id="),
            (
                "https%3A%2F%2Fa.example%2Fp%3Fid%3D7%26b%3D1",
                "https://a.example/p?id=7",
            ),
        ];
        for (raw, url) in cases {
            let line = json(&format!(r#""url":"{raw}""#));
            assert_eq!(p.parse(&line).unwrap().url, url, "{raw}");
        }
    }

    #[test]
    fn bad_urls() {
        let mut p = parser();
        for raw in [
            "garbage",
            "/relative/path",
            "//a.example/x",
            "https://",
            "https:///path",
            "file:///etc/passwd",
            "1http://a.example/",
            "https://a.example:80x/",
            "https://[::1/",
            "https://a b.example/",
            "mailto:x@a.example",
        ] {
            let line = json(&format!(r#""url":"{raw}""#));
            assert_eq!(p.parse(&line), Err(EventError::BadUrl), "{raw}");
        }
        for line in [
            r#"{"vid":"x"}"#,
            r#"{"url":""}"#,
            r#"{"url":null}"#,
            r#"{"url":5}"#,
        ] {
            assert_eq!(p.parse(line.as_bytes()), Err(EventError::NoUrl), "{line}");
        }
    }

    #[test]
    fn invalid_utf8() {
        let mut p = parser();
        // A percent-encoded byte that is not UTF-8.
        let e = p
            .parse(&json(r#""url":"https%3A%2F%2Fa.example%2F%FFx""#))
            .unwrap();
        assert_eq!(
            e,
            Event {
                invalid_utf8: true,
                ..pageview("https://a.example/\u{FFFD}x", "a.example")
            }
        );
        // A raw byte in an ignored field.
        let line = [
            br#"{"url":"https://a.example/","ua":"Mozilla "#.as_slice(),
            b"\xC3\x28",
            br#""}"#,
        ]
        .concat();
        let e = p.parse(&line).unwrap();
        assert_eq!(
            e,
            Event {
                invalid_utf8: true,
                ..pageview("https://a.example/", "a.example")
            }
        );
        // A raw byte in the url, behind a syslog header.
        let line = [
            br#"<190>Nov 22 01:39:03 pixel: {"url":"https://a.example/caf"#.as_slice(),
            b"\xE9",
            br#"","vid":"v"}"#,
        ]
        .concat();
        let e = p.parse(&line).unwrap();
        assert_eq!(
            (e.url, e.vid, e.invalid_utf8),
            ("https://a.example/caf\u{FFFD}", "v", true)
        );
        // Valid UTF-8, raw and percent-encoded, is not flagged.
        let e = p
            .parse(&json(r#""url":"https%3A%2F%2Fa.example%2Fcaf%C3%A9""#))
            .unwrap();
        assert_eq!((e.url, e.invalid_utf8), ("https://a.example/café", false));
    }

    #[test]
    fn referrers() {
        let mut p = parser();
        let cases = [
            (r#""#, DIRECT),
            (r#","urlref":"""#, DIRECT),
            (r#","urlref":"-""#, DIRECT),
            (r#","ref":"-""#, DIRECT),
            (r#","urlref":"garbage""#, INVALID),
            (
                r#","urlref":"https%3A%2F%2FWWW.Google.COM%3A443%2F""#,
                "www.google.com",
            ),
            (
                r#","urlref":"https://www.bing.com/search?q=a%20b""#,
                "www.bing.com",
            ),
            (r#","urlref":"android-app://com.x/""#, "com.x"),
            // The earlier alternative wins wherever it stands.
            (
                r#","ref":"https://b.example/","urlref":"https://a.example/""#,
                "a.example",
            ),
            (
                r#","urlref":"https://a.example/","ref":"https://b.example/""#,
                "a.example",
            ),
            (r#","urlref":"","ref":"https://b.example/""#, "b.example"),
        ];
        for (fields, domain) in cases {
            let line = json(&format!(r#""url":"https://s.example/"{fields}"#));
            assert_eq!(p.parse(&line).unwrap().ref_domain, domain, "{fields}");
        }
    }

    /// Every spelling of each action, the usual ones (compared whole) and the rest (compared
    /// case-insensitively), and near misses.
    #[test]
    fn action_names() {
        use Action::*;
        for (s, want) in [
            ("pageview", Some(Pageview)),
            ("PAGEVIEW", Some(Pageview)),
            ("pv", Some(Pageview)),
            ("Pv", Some(Pageview)),
            ("heartbeat", Some(Heartbeat)),
            ("HeartBeat", Some(Heartbeat)),
            ("hb", Some(Heartbeat)),
            ("event", Some(Event)),
            ("EVENT", Some(Event)),
            ("pageviews", None),
            ("pagevie", None),
            ("heart", None),
            (" pageview", None),
            ("", None),
        ] {
            assert_eq!(action(s), want, "{s:?}");
        }
    }

    #[test]
    fn actions_and_heartbeats() {
        let mut p = parser();
        let cases = [
            ("", Ok((Action::Pageview, 0))),
            (r#","action":"""#, Ok((Action::Pageview, 0))),
            (r#","action":"PageView""#, Ok((Action::Pageview, 0))),
            (r#","a":"pv""#, Ok((Action::Pageview, 0))),
            (r#","action":"heartbeat""#, Ok((Action::Heartbeat, 10))),
            (r#","action":"HB","inc":25"#, Ok((Action::Heartbeat, 25))),
            (r#","action":"hb","inc":"30""#, Ok((Action::Heartbeat, 30))),
            (r#","action":"hb","inc":0"#, Ok((Action::Heartbeat, 0))),
            (r#","action":"hb","inc":3601"#, Ok((Action::Heartbeat, 10))),
            (r#","action":"hb","inc":-5"#, Ok((Action::Heartbeat, 10))),
            (
                r#","action":"hb","inc":"soon""#,
                Ok((Action::Heartbeat, 10)),
            ),
            (r#","action":"pv","inc":25"#, Ok((Action::Pageview, 0))),
            (
                r#","action":"event","name":"signup""#,
                Ok((Action::Event, 0)),
            ),
            (r#","a":"EVENT","inc":25"#, Ok((Action::Event, 0))),
            (r#","action":"click""#, Err(EventError::UnknownAction)),
            (r#","action":7"#, Err(EventError::UnknownAction)),
        ];
        for (fields, want) in cases {
            let line = json(&format!(r#""url":"https://s.example/"{fields}"#));
            let got = p.parse(&line).map(|e| (e.action, e.engaged_seconds));
            assert_eq!(got, want, "{fields}");
        }
        let mut p = Core(EventParser::new(EventConfig {
            heartbeat_seconds: 5,
            ..EventConfig::default()
        }));
        let e = p
            .parse(br#"{"url":"https://s.example/","a":"hb"}"#)
            .unwrap();
        assert_eq!(e.engaged_seconds, 5);
    }

    #[test]
    fn custom_field_names() {
        let fields: FieldNames = toml::from_str(
            r#"
            url = ["page", "u"]
            referrer = ["r"]
            vid = ["visitor"]
            msec = ["t"]
            "#,
        )
        .unwrap();
        assert_eq!(fields.action, FieldNames::default().action);
        let mut p = Core(EventParser::new(EventConfig {
            fields,
            ..EventConfig::default()
        }));
        let line = br#"{"u":"https://b.example/","page":"https://a.example/x","url":"https://c.example/","r":"https://r.example/","visitor":42,"t":"1795311543.462"}"#;
        let e = p.parse(line).unwrap();
        assert_eq!(
            e,
            Event {
                ts_ms: Some(MS),
                ref_domain: "r.example",
                vid: "42",
                ..pageview("https://a.example/x", "a.example")
            }
        );
        let unknown = toml::from_str::<FieldNames>(r#"uri = ["x"]"#);
        assert!(unknown.is_err());
    }

    #[test]
    fn json_edge_cases() {
        let mut p = parser();
        // Escapes in wanted values, nested ignored values, wanted keys with odd types.
        let line = br#"{"x":{"url":"no"},"y":[1,{"a":"b"}],"url":"https:\/\/a.example\/\u0041","vid":"a\"b","msec":true}"#;
        let e = p.parse(line).unwrap();
        assert_eq!(
            e,
            Event {
                vid: "a\"b",
                bad_timestamp: true,
                ..pageview("https://a.example/A", "a.example")
            }
        );
        // A duplicate key: the first one counts.
        let e = p
            .parse(br#"{"url":"https://a.example/","url":"https://b.example/"}"#)
            .unwrap();
        assert_eq!(e.site, "a.example");
        for line in [
            r#"{"url":"https://a.example/""#,
            r#"{"url":"https://a.example/"} trailing"#,
            r#"{url:1}"#,
            "{",
        ] {
            assert_eq!(p.parse(line.as_bytes()), Err(EventError::BadJson), "{line}");
        }
    }

    #[test]
    fn garbage() {
        let mut p = parser();
        for line in [
            &b""[..],
            b"   ",
            b"hello world",
            b"<190>Nov 22 01:39:03 pixel: ",
            b"<190>Nov 22 01:39:03 pixel: [1,2,3]",
            b"\xFF\xFE\x00",
            b"[",
            b"]\"",
        ] {
            assert_eq!(p.parse(line), Err(EventError::NotAnEvent), "{line:?}");
        }
    }

    #[test]
    fn error_kinds_are_distinct() {
        let kinds: std::collections::HashSet<_> =
            EventError::ALL.iter().map(|e| e.kind()).collect();
        assert_eq!(kinds.len(), EventError::ALL.len());
    }

    /// Percent-encodes everything but unreserved characters, like `encodeURIComponent`.
    fn encode(s: &str) -> String {
        const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'_')
            .remove(b'.')
            .remove(b'~');
        percent_encoding::utf8_percent_encode(s, SET).to_string()
    }

    /// Parses `line` with and without the scanner: both paths must give the same result.
    fn same_both_ways(line: &[u8]) -> Result<(), TestCaseError> {
        same_after(&[], line)
    }

    /// Parses `line` with the scanner after `teach` (which leave it a template), and without
    /// the scanner: both must give the same result.
    fn same_after(teach: &[&[u8]], line: &[u8]) -> Result<(), TestCaseError> {
        let mut fast = parser();
        for t in teach {
            let _ = fast.0.parse(t);
        }
        let mut slow = parser();
        slow.fast = false;
        prop_assert_eq!(
            fast.0.parse(line),
            slow.0.parse(line),
            "{:?} after {:?}",
            String::from_utf8_lossy(line),
            teach
                .iter()
                .map(|t| String::from_utf8_lossy(t))
                .collect::<Vec<_>>()
        );
        Ok(())
    }

    #[test]
    fn scanner_reads_generated_and_reference_lines_itself() {
        // The equivalence tests below would pass vacuously if the scanner refused everything
        // (the fallback then answers both ways): it must accept what nginx and gen.rs write.
        let keys = KeyTable::new(&FieldNames::default());
        let mut g = crate::tools::gen::HitGenerator::new(3, 1_795_311_543_462);
        let mut line = Vec::new();
        let reference = NGINX_LINE.splitn(2, |&b| b == b'{').nth(1).unwrap();
        let reference = [b"{".as_slice(), reference].concat();
        for i in 0..500 {
            g.next_line(&mut line);
            let text = if i == 0 { &reference } else { &line };
            let mut scratch = Scratch::default();
            assert!(
                scan::scan(
                    std::str::from_utf8(text).unwrap(),
                    &keys,
                    &mut scratch,
                    &mut scan::Template::default()
                ),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        let mut scratch = Scratch::default();
        for refused in [
            r#"{"url":{"a":1}}"#,
            r#"{"url":"a\/b"}"#,
            r#"{"u\u0072l":1}"#,
        ] {
            let mut template = scan::Template::default();
            assert!(
                !scan::scan(refused, &keys, &mut scratch, &mut template),
                "{refused}"
            );
        }
    }

    #[test]
    fn lines_of_changing_shapes_back_off_from_the_template() {
        // Each line's keys rotated by its number: no template holds for two lines, so after
        // two failed at once none is tried for a while; lines read the same all along, and
        // once they keep one shape again a template holds again.
        let mut g = crate::tools::gen::HitGenerator::new(9, 1_795_311_543_462);
        let mut line = Vec::new();
        let mut shaped = |rotate: usize| {
            g.next_line(&mut line);
            let v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&line).unwrap();
            let mut kv: Vec<_> = v.into_iter().collect();
            let n = kv.len();
            kv.rotate_left(rotate % n);
            serde_json::to_vec(&kv.into_iter().collect::<serde_json::Map<_, _>>()).unwrap()
        };
        let (mut fast, mut slow) = (parser(), parser());
        slow.fast = false;
        for i in 0..300 {
            let l = shaped(i);
            assert_eq!(fast.0.parse(&l), slow.0.parse(&l), "line {i}");
        }
        let (predicted, scanned) = fast.template_counts();
        // 28 templates learned here; 140 without the back-off.
        let learned = fast.0.template.learned;
        assert!(learned < 40, "{learned} templates learned");
        assert!(
            predicted * 10 < scanned,
            "{predicted} foreseen, {scanned} scanned"
        );
        let mut before = (0, 0);
        for i in 0..1100 + 1000 {
            let l = shaped(0);
            assert_eq!(fast.0.parse(&l), slow.0.parse(&l), "line {i}");
            if i == 1100 - 1 {
                before = fast.template_counts();
            }
        }
        // The last 1 000 lines: every key foreseen but a heartbeat's `inc`.
        let after = fast.template_counts();
        let (predicted, scanned) = (after.0 - before.0, after.1 - before.1);
        assert!(
            predicted >= 8 * 1000,
            "{predicted} foreseen, {scanned} scanned"
        );
        assert!(scanned < 1000, "{predicted} foreseen, {scanned} scanned");
    }

    #[test]
    fn the_template_keeps_json_rules() {
        // Runs of bytes the template knows, where JSON does not allow them: the first run
        // (with the object's `{`) after a value, a run after a value with no comma.
        let teach = br#"{"url":"https://a.example/","vid":"v1"}"#;
        for line in [
            br#"{"x":1{"url":"https://a.example/","vid":"v1"}"#.as_slice(),
            br#"{"url":"https://a.example/"{"url":"https://b.example/"}"#,
            br#"{"url":"https://a.example/""vid":"v1"}"#,
            br#"{"url":"https://a.example/","vid":"v1",}"#,
            br#"{"url":"https://a.example/","vid":"v1"} x"#,
            br#"{"url":"https://a.example/","vid":"v1""#,
            br#"{"url":"https://a.example/","vid":"#,
        ] {
            same_after(&[teach], line).unwrap();
            let mut p = parser();
            p.0.parse(teach).unwrap();
            assert_eq!(p.0.parse(line), Err(EventError::BadJson), "{line:?}");
        }
    }

    #[test]
    fn the_template_foresees_the_keys_of_generated_lines() {
        // The template tests below would pass vacuously if no key were ever foreseen: after
        // the first line, only a heartbeat's extra `inc` is scanned (gen.rs writes it only
        // for heartbeats; nginx's log_format writes every key on every line).
        let mut p = parser();
        let mut g = crate::tools::gen::HitGenerator::new(5, 1_795_311_543_462);
        let mut line = Vec::new();
        let mut heartbeats = 0;
        for _ in 0..500 {
            g.next_line(&mut line);
            heartbeats += u64::from(line.windows(6).any(|w| w == b"\"inc\":"));
            p.0.parse(&line).unwrap();
        }
        let (predicted, scanned) = p.template_counts();
        assert!(heartbeats > 0);
        assert_eq!(predicted + scanned, 500 * 8 + heartbeats);
        // The first line's 8 or 9 keys, and at most each heartbeat's `inc`.
        assert!(scanned <= 9 + heartbeats, "{scanned} scanned");
        // A line of another shape is read by scanning (but its `url` key, whose bytes are
        // where the template has them, is foreseen); it teaches the next line a template,
        // which the third foresees whole.
        for _ in 0..3 {
            p.0.parse(br#"{"a":"pv","url":"https://b.example/","x":1}"#)
                .unwrap();
        }
        let (predicted2, scanned2) = p.template_counts();
        assert_eq!(
            (predicted2 - predicted, scanned2 - scanned),
            (1 + 1 + 3, 2 + 2)
        );
    }

    #[test]
    fn key_table_matches_field_names_lookup() {
        let fields: FieldNames = toml::from_str(
            r#"
            url = ["page", "u", "page", "a"]
            referrer = ["u", "r"]
            vid = ["", "visitor"]
            "#,
        )
        .unwrap();
        let table = KeyTable::new(&fields);
        for key in [
            "page", "u", "a", "r", "", "visitor", "msec", "ts", "x", "pag", "pagex",
        ] {
            assert_eq!(table.lookup(key.as_bytes()), fields.lookup(key), "{key}");
        }
    }

    /// A JSON value of any kind the scanner meets or refuses, valid or slightly not.
    fn json_value() -> impl Strategy<Value = String> {
        prop_oneof![
            r#""([a-zA-Z0-9%:/.?=&_ -]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4}){0,24}""#,
            r#""(https?(%3A%2F%2F|://)[a-zA-Z.]{1,12}(%2F|/)[a-z0-9]{0,8}|-|pageview|HB|pv|click|[0-9]{1,4})""#,
            r#"-?(0|[1-9][0-9]{0,21})(\.[0-9]{1,5})?([eE][+-]?[0-9]{1,3})?"#,
            r#"1795311543\.[0-9]{0,4}"#,
            r#"(null|true|false)"#,
            r#"(null|true|false|\{\}|\[1\]|\{"url":"x"\}|nul|tru|01|1\.|-|\.5|1e|"\\u12|"a\\x|"\t"|"\x01")"#,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn scanner_agrees_with_serde_on_random_objects(
            fields in prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "msec", "ts", "time_iso8601", "url", "urlref", "ref", "vid", "action",
                        "a", "inc", "ua", "ip", "", "u\\rl",
                    ]),
                    json_value(),
                    prop::sample::select(vec!["", " ", "\n", "\t ", "\r"]),
                ),
                0..9,
            ),
            tail in prop::sample::select(vec!["}", "}", "}", "} ", "}x", "", ",}", "}}"]),
            url_first in any::<bool>(),
        ) {
            // A valid url first makes most lines events, so that every other field's reading
            // shows in the result instead of ending in `NoUrl`.
            let mut body: Vec<String> = Vec::new();
            if url_first {
                body.push(r#""url":"https%3A%2F%2Fa.example%2F""#.to_owned());
            }
            body.extend(fields.iter().map(|(k, v, sp)| format!(r#"{sp}"{k}"{sp}:{sp}{v}{sp}"#)));
            let line = format!("{{{}{tail}", body.join(","));
            same_both_ways(line.as_bytes())?;
            same_both_ways(format!("<190>Nov 22 01:39:03 pixel: {line}").as_bytes())?;
        }

        #[test]
        fn scanner_agrees_with_serde_on_mutated_generated_lines(
            seed in any::<u64>(),
            edits in prop::collection::vec(
                (
                    any::<prop::sample::Index>(),
                    prop::sample::select(b"\"\\{}[],:-.e0123456789u ntf\t\x01\xff\xc3/%".to_vec()),
                    0u8..3,
                ),
                0..4,
            ),
        ) {
            let mut g = crate::tools::gen::HitGenerator::new(seed, 1_795_311_543_462);
            let mut line = Vec::new();
            g.next_line(&mut line);
            let (original, mut other) = (line.clone(), Vec::new());
            g.next_line(&mut other);
            for (at, byte, op) in edits {
                let i = at.index(line.len());
                match op {
                    0 => line[i] = byte,
                    1 => line.insert(i, byte),
                    _ => {
                        line.remove(i);
                    }
                }
            }
            same_both_ways(&line)?;
            // With the template the line before it left (its own shape, or the next line's).
            same_after(&[&original], &line)?;
            same_after(&[&other], &line)?;
        }

        #[test]
        fn the_template_changes_nothing_read(
            fields in prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "msec", "ts", "url", "urlref", "vid", "action", "a", "inc", "ua", "ip",
                        "x", "",
                    ]),
                    json_value(),
                    prop::sample::select(vec!["", " ", "\t "]),
                    json_value(),
                    0u8..6,
                ),
                0..9,
            ),
            extra in (0usize..10, prop::sample::select(vec!["url", "vid", "y"]), json_value()),
            tail in prop::sample::select(vec!["}", "}", " }", "} ", ",}"]),
        ) {
            // A line teaches the template; the next has the same keys, but each value may
            // differ, or its key go missing, or its whitespace change, and one key may come
            // in between: whatever the template foresees or not, the line reads as serde_json
            // reads it.
            let url = r#""url":"https%3A%2F%2Fa.example%2F""#.to_owned();
            let teach: Vec<String> = std::iter::once(url.clone())
                .chain(fields.iter().map(|(k, v, sp, _, _)| format!(r#"{sp}"{k}"{sp}:{sp}{v}"#)))
                .collect();
            let mut body: Vec<String> = std::iter::once(url)
                .chain(fields.iter().filter_map(|(k, v, sp, w, op)| match op {
                    0 | 1 => Some(format!(r#"{sp}"{k}"{sp}:{sp}{v}"#)),
                    2 => Some(format!(r#"{sp}"{k}"{sp}:{sp}{w}"#)),
                    3 => None,
                    4 => Some(format!(r#""{k}": {v}"#)),
                    _ => Some(format!(r#"{sp}"{k}"{sp}:{sp}{w} "#)),
                }))
                .collect();
            let (at, k, v) = extra;
            body.insert(at.min(body.len()), format!(r#""{k}":{v}"#));
            let teach = format!("{{{}}}", teach.join(","));
            let line = format!("{{{}{tail}", body.join(","));
            same_after(&[teach.as_bytes()], line.as_bytes())?;
            same_after(&[teach.as_bytes()], teach.as_bytes())?;
            same_after(&[line.as_bytes()], teach.as_bytes())?;
        }

        #[test]
        fn the_url_cache_answers_what_a_fresh_parser_does(
            pool in prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "https%3A%2F%2FA.example%2Fp%3Fid%3D1%26utm_source%3Dx%23top",
                        "https://a.example/p?id=1&utm_source=x",
                        "https%3A%2F%2Fa.example%2F%C3%A9t%C3%A9",
                        "https%3A%2F%2Fa.example%2F%FF%FE",
                        "https://B.example:8080/x#y",
                        "https%3A%2F%2Fb.example%2Fx",
                        "not a url",
                        "%2D",
                        "-",
                        "https://[::1]:80/v6",
                        "mailto:someone",
                        "https://u@C.example/",
                    ]),
                    prop::sample::select(vec![
                        "", "-", "%2D", "https%3A%2F%2Fwww.Google.com%2F", "https://t.co/x",
                        "https%3A%2F%2Fa.example%2F%FF", "garbage", "https://a.example/p",
                    ]),
                    0usize..3,
                ),
                1..12,
            ),
            order in prop::collection::vec(any::<prop::sample::Index>(), 1..60),
            keep_id in any::<bool>(),
        ) {
            let cfg = EventConfig {
                url_keep_query: if keep_id { vec!["id".to_owned()] } else { Vec::new() },
                ..EventConfig::default()
            };
            let long = format!("https://long.example/{}", "x".repeat(3000));
            let lines: Vec<String> = pool
                .iter()
                .map(|(url, referrer, variant)| {
                    let url = if *variant == 2 { long.as_str() } else { url };
                    let action = ["pv", "hb", "event"][*variant];
                    serde_json::json!({"url": url, "urlref": referrer, "a": action}).to_string()
                })
                .collect();
            // One slot each (every other value evicts it) and the shipped size.
            let mut warm = [EventParser::new(cfg.clone()), EventParser::new(cfg.clone())];
            warm[0].cache = cache::NormCache::with_slots(1, 1);
            for i in order {
                let line = lines[i.index(lines.len())].as_bytes();
                let fresh = EventParser::new(cfg.clone()).parse(line).map(|e| format!("{e:?}"));
                for w in &mut warm {
                    prop_assert_eq!(w.parse(line).map(|e| format!("{e:?}")), fresh.clone());
                }
            }
            let c = warm[1].cache_counts();
            prop_assert!(c.hits + c.misses > 0);
        }

        #[test]
        fn scanner_agrees_with_serde_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
            same_both_ways(&[b"{".as_slice(), &bytes].concat())?;
            same_both_ways(&[br#"{"url":"https://a.example/","#.as_slice(), &bytes].concat())?;
        }

    }

    proptest! {
        #[test]
        fn never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let mut p = parser();
            let _ = p.parse(&bytes);
            let _ = p.parse(&[b"<190>Nov 22 01:39:03 pixel: {".as_slice(), &bytes].concat());
        }

        #[test]
        fn never_panics_on_json_ish(
            s in r#"[{}\[\]",:\\ a-z0-9%.\-/?#&=@\[\]]{0,200}"#,
            keys in prop::collection::vec(
                prop::sample::select(vec!["msec", "ts", "url", "urlref", "ref", "vid", "action", "a", "inc", "ua"]),
                0..6,
            ),
            values in prop::collection::vec(r#"("[^"\\]{0,40}"|-?[0-9.e+]{1,20}|null|true|\[\]|\{\})"#, 0..6),
        ) {
            let mut p = parser();
            let _ = p.parse(s.as_bytes());
            let body: Vec<String> =
                keys.iter().zip(&values).map(|(k, v)| format!(r#""{k}":{v}"#)).collect();
            let line = format!("{{{}}}", body.join(","));
            let _ = p.parse(line.as_bytes());
            let line = format!(r#"1.2.3.4 - - [{s}] "GET /p.gif?{s} HTTP/1.1" 200 1 "-" "-""#);
            let _ = p.parse(line.as_bytes());
        }

        #[test]
        fn percent_decoding_agrees_with_the_crate(s in "[%0-9a-fA-Fg-z\\x00-\\x7f]{0,40}") {
            // Appended after what `out` held already.
            let mut ours = b"pre".to_vec();
            percent_decode_into(s.as_bytes(), &mut ours);
            let theirs: Vec<u8> = b"pre".iter().copied().chain(percent_decode(s.as_bytes())).collect();
            prop_assert_eq!(ours, theirs);
        }

        #[test]
        fn encoded_url_round_trips(
            host in "[a-z][a-z0-9-]{0,20}(\\.[a-z]{2,6}){1,2}",
            segments in prop::collection::vec("[^#?/\\\\%]{0,12}", 0..6),
        ) {
            let url = format!("https://{host}/{}", segments.join("/"));
            prop_assume!(!url[8..].contains("://"));
            let mut p = parser();
            let line = serde_json::json!({"url": encode(&url), "urlref": encode(&url)}).to_string();
            let e = p.parse(line.as_bytes()).unwrap();
            prop_assert_eq!(e.url, url.as_str());
            prop_assert_eq!(e.site, host.as_str());
            prop_assert_eq!(e.ref_domain, host.as_str());
            prop_assert!(!e.invalid_utf8);
            // The same url sent decoded is used as is.
            let line = serde_json::json!({"url": url}).to_string();
            let e = p.parse(line.as_bytes()).unwrap();
            prop_assert_eq!(e.url, url.as_str());
        }
    }
}
