//! Normalise once per distinct value: the url and referrer of a hit are decoded and normalised
//! only the first time their exact text is seen, and read from a cache afterwards.
//!
//! Decoding a percent-encoded url, dropping its fragment and unkept query parameters,
//! lower-casing scheme and host and finding the host cost about 1 400 instructions per event
//! for the url and referrer together (callgrind, issue 19), the largest part of the parse —
//! for values that repeat: a site has far fewer distinct pages and referrers than hits. Both
//! steps are pure functions of the value's text (and of `url_keep_query`, fixed for a parser),
//! so a cache keyed by that text gives exactly the uncached answer; a property test checks it
//! against a fresh parser on shuffled repeats.
//!
//! The cache is direct-mapped: a fixed table of slots indexed by a 64-bit hash of the text,
//! each holding the text and its result; a miss overwrites the slot, reusing its buffers. So
//! memory is bounded (about 0.6 MiB per shard), a lookup is one hash, one slot and one comparison,
//! and a stream of distinct values costs one normalisation each plus the copy into the slot —
//! no rehash, no eviction scan, no allocation once the slots' buffers have grown. The key is
//! compared in full, so a hash collision is a miss, never a wrong answer.

use std::ops::Range;

use super::agent::{Agent, AgentParser};
use super::channel::{domain_class, utm_of, Channel, Utm};
use super::url::{authority, decode_into, normalize_url};
use super::{DIRECT, INVALID};

/// Slots for distinct urls (a power of two). Small on purpose: with 16 384 url and 4 096
/// referrer slots (≈ 4 MiB) the hit rate on `blast`'s lines was 81 % but the end-to-end CPU per
/// event no better than without a cache, its slots being read from memory rather than from the
/// core's caches; with these (≈ 0.6 MiB, 62 % hits) it was 0.87 × (`benches/e2e.py --split`,
/// README). It also keeps the total small with many shards.
pub(super) const URL_SLOTS: usize = 1 << 11;
/// Slots for distinct referrer values.
pub(super) const REF_SLOTS: usize = 1 << 9;
/// Slots for distinct User-Agent headers.
pub(super) const AGENT_SLOTS: usize = 1 << 9;
/// Values longer than this are normalised every time and not kept (a slot holds at most a few
/// KiB, whatever a client sends).
const MAX_KEY: usize = 2048;

/// A url's text as the record gave it, normalised.
#[derive(Debug, Default)]
pub(super) struct UrlEntry {
    hash: u64,
    key: String,
    /// Decoded and normalised; see [`super::Event::url`].
    pub(super) url: String,
    /// Where the host is in `url`; `None` when it is not an absolute url with a host.
    pub(super) host: Option<Range<usize>>,
    /// Percent-decoding met invalid UTF-8 (repaired with U+FFFD).
    pub(super) invalid_utf8: bool,
    /// Its utm tags, read before the query is cut (`channel`).
    pub(super) utm: Utm,
}

/// A referrer's text as the record gave it, reduced to its domain.
#[derive(Debug, Default)]
pub(super) struct RefEntry {
    hash: u64,
    key: String,
    /// See [`super::Event::ref_domain`].
    pub(super) domain: String,
    pub(super) invalid_utf8: bool,
    /// What the domain alone says of the channel.
    pub(super) class: Option<Channel>,
}

/// A User-Agent header as the record gave it, classified.
#[derive(Debug, Default)]
pub(super) struct AgentEntry {
    hash: u64,
    key: String,
    pub(super) agent: Agent,
}

/// The three caches.
#[derive(Debug)]
pub(super) struct NormCache {
    pub(super) urls: UrlCache,
    pub(super) refs: RefCache,
    pub(super) agents: AgentCache,
}

impl NormCache {
    pub(super) fn new() -> Self {
        Self::with_slots(URL_SLOTS, REF_SLOTS)
    }

    /// A cache of `urls` and `refs` slots (powers of two; tests use tiny ones to force
    /// collisions).
    pub(super) fn with_slots(urls: usize, refs: usize) -> Self {
        NormCache {
            urls: UrlCache {
                table: Table::new(urls),
                bytes: Vec::new(),
                query: String::new(),
            },
            refs: RefCache {
                table: Table::new(refs),
                bytes: Vec::new(),
            },
            agents: AgentCache {
                table: Table::new(AGENT_SLOTS.min(urls.max(1))),
                parser: AgentParser::new(),
            },
        }
    }

    /// Lookups answered from a slot, and normalisations (or classifications) done, over the
    /// three caches.
    pub(super) fn counts(&self) -> Counts {
        let (u, r, a) = (
            self.urls.table.counts,
            self.refs.table.counts,
            self.agents.table.counts,
        );
        Counts {
            hits: u.hits + r.hits + a.hits,
            misses: u.misses + r.misses + a.misses,
        }
    }

    /// Heap bytes held by the slots and their buffers.
    pub(super) fn size_of(&self) -> usize {
        let url = |e: &UrlEntry| e.key.capacity() + e.url.capacity();
        let rf = |e: &RefEntry| e.key.capacity() + e.domain.capacity();
        let ag =
            |e: &AgentEntry| e.key.capacity() + e.agent.browser.capacity() + e.agent.os.capacity();
        self.urls.table.slots.iter().map(url).sum::<usize>()
            + self.refs.table.slots.iter().map(rf).sum::<usize>()
            + std::mem::size_of_val(&*self.urls.table.slots)
            + std::mem::size_of_val(&*self.refs.table.slots)
            + self.agents.table.slots.iter().map(ag).sum::<usize>()
            + std::mem::size_of_val(&*self.agents.table.slots)
    }
}

/// Lookups answered from a slot, and normalisations done.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub hits: u64,
    pub misses: u64,
}

/// An entry's key: the hash and the text it was filled from.
trait Keyed: Default {
    fn key(&mut self) -> (&mut u64, &mut String);
}

impl Keyed for UrlEntry {
    fn key(&mut self) -> (&mut u64, &mut String) {
        (&mut self.hash, &mut self.key)
    }
}

impl Keyed for AgentEntry {
    fn key(&mut self) -> (&mut u64, &mut String) {
        (&mut self.hash, &mut self.key)
    }
}

impl Keyed for RefEntry {
    fn key(&mut self) -> (&mut u64, &mut String) {
        (&mut self.hash, &mut self.key)
    }
}

/// The direct-mapped slots of one cache.
#[derive(Debug)]
struct Table<E> {
    slots: Box<[E]>,
    /// The slot of a value too long to keep (refilled every time).
    long: E,
    counts: Counts,
}

impl<E: Keyed> Table<E> {
    fn new(n: usize) -> Self {
        debug_assert!(n.is_power_of_two());
        Table {
            slots: (0..n.max(1)).map(|_| E::default()).collect(),
            long: E::default(),
            counts: Counts::default(),
        }
    }

    /// The slot of `raw`, and whether it holds `raw`'s result. On a miss the slot is keyed to
    /// `raw` and the caller fills in the rest.
    fn slot(&mut self, raw: &str) -> (&mut E, bool) {
        let h = hash(raw);
        let i = (h as usize) & (self.slots.len() - 1);
        let e = match self.slots.get_mut(i) {
            Some(e) if raw.len() <= MAX_KEY => e,
            _ => &mut self.long,
        };
        let (hash, key) = e.key();
        let hit = *hash == h && key == raw;
        if hit {
            self.counts.hits += 1;
        } else {
            self.counts.misses += 1;
            *hash = h;
            key.clear();
            key.push_str(raw);
        }
        (e, hit)
    }
}

/// Distinct url texts, normalised.
#[derive(Debug)]
pub(super) struct UrlCache {
    table: Table<UrlEntry>,
    /// Percent-decoded bytes before their UTF-8 check; kept query parameters.
    bytes: Vec<u8>,
    query: String,
}

impl UrlCache {
    /// The normalised form of url text `raw` (non-empty; as [`super::Scratch::put`] received
    /// it), with `keep` the query parameters kept.
    pub(super) fn get(&mut self, raw: &str, keep: &[String]) -> &UrlEntry {
        let (e, hit) = self.table.slot(raw);
        if !hit {
            e.url.clear();
            e.invalid_utf8 = decode_into(raw, &mut self.bytes, &mut e.url);
            e.utm = utm_of(&e.url);
            e.host = normalize_url(&mut e.url, &mut self.query, keep);
        }
        e
    }
}

/// Distinct referrer texts, reduced to their domains.
#[derive(Debug)]
pub(super) struct RefCache {
    table: Table<RefEntry>,
    bytes: Vec<u8>,
}

impl RefCache {
    /// The domain of referrer text `raw` (non-empty).
    pub(super) fn get(&mut self, raw: &str) -> &RefEntry {
        let (e, hit) = self.table.slot(raw);
        if !hit {
            fill_referrer(e, raw, &mut self.bytes);
            e.class = domain_class(&e.domain);
        }
        e
    }
}

/// Distinct User-Agent headers, classified.
#[derive(Debug)]
pub(super) struct AgentCache {
    table: Table<AgentEntry>,
    parser: AgentParser,
}

impl AgentCache {
    /// What header `raw` says.
    pub(super) fn get(&mut self, raw: &str) -> &Agent {
        let (e, hit) = self.table.slot(raw);
        if !hit {
            self.parser.classify(raw, &mut e.agent);
        }
        &e.agent
    }
}

/// Decodes `raw` into `e.domain`, then cuts it down to the lower-case host, or replaces it by
/// a marker: `(direct)` for `-`, `(invalid)` when it is not an absolute url with a host.
fn fill_referrer(e: &mut RefEntry, raw: &str, bytes: &mut Vec<u8>) {
    e.domain.clear();
    e.invalid_utf8 = decode_into(raw, bytes, &mut e.domain);
    if e.domain == "-" {
        e.domain.clear();
        e.domain.push_str(DIRECT);
        return;
    }
    let host = authority(&e.domain)
        .map(|a| a.host)
        .filter(|h| e.domain.get(h.clone()).is_some());
    match host {
        Some(h) => {
            if let Some(part) = e.domain.get_mut(h.clone()) {
                part.make_ascii_lowercase();
            }
            // Both ends are character boundaries (checked above).
            e.domain.truncate(h.end);
            e.domain.drain(..h.start);
        }
        None => {
            e.domain.clear();
            e.domain.push_str(INVALID);
        }
    }
}

/// A value's slot hash: foldhash with a fixed seed, 206 instructions per line fewer than
/// wyhash over the three caches (callgrind, `benches/parse.rs`: 5 530 → 5 324). In memory
/// only, so free to change; what is routed or stored hashes with wyhash.
fn hash(s: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(0x6e6f_726d_6361_6368).build_hasher();
    h.write(s.as_bytes());
    h.finish()
}
