//! One shard's partition of the aggregates: per-minute and per-hour counters by url, referrer
//! domain and site, and unique visitors — exact counts, by event time, late events included.
//!
//! What a shard holds is decided by [`crate::route`]: the url cells of the urls it owns
//! (`hash(url)`), the referrer cells of the referrer domains it owns (`hash(ref_domain)`), and
//! the site totals and uniques sketches of the *visitors* it owns (`hash(vid)`). Visitors are
//! the partition key of the totals because distinct counts over disjoint sets add up: a query's
//! uniques is the sum of the shards' estimates and no sketch crosses a thread; views, hits and
//! engaged seconds add up the same way. Each (dimension, key) still lives on one shard, so top
//! lists merge exactly (see `topn`).
//!
//! Every increment updates its minute bucket (while inside `minute_window`) — and nothing
//! else while the minute's hour has not folded it: the ticker folds each ended minute into
//! its hour ([`Aggregates::fold_minutes`]), a read of an hour adds the minutes it has not
//! folded yet, and a checkpoint writes an hour with them. A minute with many url cells is
//! folded in slices between ticker passes ([`cells::UrlFold`]), so that folding never holds
//! the shard for long. An increment for a minute its hour has folded already (a late event),
//! or outside the minute window, updates the hour too;
//! counts are commutative, so late events need no watermark. Days are not counted on
//! the hot path: a closed day is the merge of its hours, made when the checkpoint seals it
//! ([`sealed`]); closed hours and days then live in immutable mapped files, and what arrives
//! for them later (late events) in small in-memory buckets of the same number, which every
//! read adds to the file. Reads go through `Aggregates::parts`, which covers a range with
//! whole days, whole hours and minutes. Only this shard's
//! executor touches the state (`Rc<RefCell<…>>` in `route`); queries read it between
//! increments. Nothing here allocates per event in the steady state except a new key's name.

pub mod buckets;
pub mod cells;
pub mod dense;
pub mod dims;
pub mod hll;
pub mod mem;
pub mod seal;
pub mod sealed;
pub mod store;
pub mod topn;
pub mod visits;

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

use hashbrown::HashMap;
use std::hash::BuildHasher;

use buckets::Tier;
pub use cells::{Bucket, NameCounts, PageCell, PairKey, SiteCell, UrlCell, UrlKey};
use hll::{Uniques, Visitors};
use mem::table_bytes;
use sealed::SealedFile;
use topn::Ranked;
use visits::{Delta, IdKind, VisitCounts, VisitSettings, Visits};

/// Minute buckets [`Aggregates::fold_ended`] folds between two looks at the clock.
pub const FOLD_BUDGET: usize = 4;

/// A minute with more cells keyed by a url (url, url × channel, url × referrer, page) than
/// this is folded into its hour in slices by the ticker, in partitions of about this many cells
/// ([`cells::UrlFold`]; ≈ 2 – 3 ms each on the reference VM).
pub const FOLD_PART_CELLS: usize = 16_384;

/// How long one pass of the ticker folds ended minutes at most ([`Aggregates::fold_ended`]),
/// give or take one [`FOLD_BUDGET`] of minute buckets: a rebuild leaves a day or two of
/// minutes to fold, which small buckets fold in a few passes, and a large bucket still costs
/// one pass alone.
pub const FOLD_SLICE: std::time::Duration = std::time::Duration::from_millis(5);

/// A resolution of the aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Res {
    Minute,
    Hour,
    Day,
}

impl Res {
    /// Its code on disk.
    pub fn code(self) -> u8 {
        match self {
            Res::Minute => 0,
            Res::Hour => 1,
            Res::Day => 2,
        }
    }
    pub fn from_code(c: u8) -> Option<Res> {
        match c {
            0 => Some(Res::Minute),
            1 => Some(Res::Hour),
            2 => Some(Res::Day),
            _ => None,
        }
    }
    /// Its width in minutes.
    pub fn width(self) -> i64 {
        match self {
            Res::Minute => 1,
            Res::Hour => 60,
            Res::Day => 1440,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Res::Minute => "minute",
            Res::Hour => "hour",
            Res::Day => "day",
        }
    }
}

/// The closed part of a sealed hour or day.
#[derive(Debug)]
pub enum Sealed {
    /// Being written by a checkpoint: the hour's bucket itself (shared with the job that
    /// encodes it, not copied); for a day, what was counted into it directly, if anything
    /// (the rest is read from its hours until the file is mapped).
    Writing(Option<Arc<Bucket>>),
    /// Mapped from its file.
    File(Arc<SealedFile>),
}

/// One part of a bucket being read: cells in memory (of the bucket itself or, of an hour, a
/// minute of it the hour has not folded yet), or a sealed file read in place.
#[derive(Clone, Copy)]
enum PartRef<'a> {
    Mem(&'a Bucket),
    File(&'a SealedFile),
    /// Of an hour: the minute it is folding in slices, whose cells keyed by a url (url, url ×
    /// channel, url × referrer, page) of the urls still pending count and nothing else
    /// ([`cells::UrlFold`]).
    UrlTail(&'a Bucket),
}

impl<'a> PartRef<'a> {
    /// Url `id`'s cell in this part.
    fn url(self, id: u32) -> Option<Cow<'a, UrlCell>> {
        match self {
            PartRef::Mem(b) => b.urls.get(&id).map(Cow::Borrowed),
            PartRef::File(f) => f.url(id).map(Cow::Owned),
            PartRef::UrlTail(b) => b
                .url_fold
                .0
                .as_ref()
                .filter(|f| f.pending(id))
                .and_then(|_| b.urls.get(&id))
                .map(Cow::Borrowed),
        }
    }

    /// Url `id`'s page cell (entries and exits) in this part.
    fn page(self, id: u32) -> Option<PageCell> {
        match self {
            PartRef::Mem(b) => b.pages.get(&id).copied(),
            PartRef::File(f) => f.page(id),
            PartRef::UrlTail(b) => b
                .url_fold
                .0
                .as_ref()
                .filter(|f| f.pending(id))
                .and_then(|_| b.pages.get(&id))
                .copied(),
        }
    }

    /// The url cells of a part in memory (none of a file's: the caller reads those itself).
    fn mem_urls(self) -> Box<dyn Iterator<Item = (u32, &'a UrlCell)> + 'a> {
        match self {
            PartRef::Mem(b) => Box::new(b.urls.iter().map(|(&id, c)| (id, c))),
            PartRef::File(_) => Box::new(std::iter::empty()),
            PartRef::UrlTail(b) => Box::new(
                url_tail(b)
                    .flat_map(|k| &k.urls)
                    .filter_map(|id| b.urls.get(id).map(|c| (*id, c))),
            ),
        }
    }

    /// The url × referrer (`by_ref`) or url × channel cells of a part in memory (none of a
    /// file's).
    fn mem_url_pairs(self, by_ref: bool) -> Box<dyn Iterator<Item = (u64, u32)> + 'a> {
        let table = move |b: &'a Bucket| {
            if by_ref {
                &b.url_refs
            } else {
                &b.url_channels
            }
        };
        match self {
            PartRef::Mem(b) => Box::new(table(b).iter().map(|(&k, &v)| (k.get(), v))),
            PartRef::File(_) => Box::new(std::iter::empty()),
            PartRef::UrlTail(b) => Box::new(
                url_tail(b)
                    .flat_map(move |k| if by_ref { &k.refs } else { &k.channels })
                    .filter_map(move |k| table(b).get(k).map(|&v| (k.get(), v))),
            ),
        }
    }
}

/// The keys of a minute's url cells its hour has not folded yet (none unless it is folding
/// the minute in slices).
fn url_tail(b: &Bucket) -> impl Iterator<Item = &cells::UrlKeys> {
    b.url_fold
        .0
        .iter()
        .flat_map(|f| f.todo.iter().skip(f.done as usize))
}

/// The minute buckets of hour `h` that an hour folded up to `folded_upto` has not folded
/// (and that hold anything): what a read of the hour adds, and what its checkpoint holds.
pub(crate) fn unfolded_minutes(
    minutes: &Tier<Bucket>,
    h: i64,
    folded_upto: i64,
) -> impl Iterator<Item = &Bucket> {
    ((h * 60).max(folded_upto)..(h + 1) * 60)
        .filter_map(move |m| minutes.get(m).filter(|b| !b.is_empty()))
}

/// Hour bucket `b` (number `h`) with the minutes it has not folded: what it holds once they
/// are (a copy only when there are any).
pub(crate) fn whole_hour<'a>(minutes: &Tier<Bucket>, h: i64, b: &'a Bucket) -> Cow<'a, Bucket> {
    let mut unfolded = unfolded_minutes(minutes, h, b.folded_upto).peekable();
    let folding = folding_minute(minutes, h, b);
    if unfolded.peek().is_none() && folding.is_none() {
        return Cow::Borrowed(b);
    }
    let mut whole = b.clone();
    unfolded.for_each(|m| whole.merge(m));
    if let Some(m) = folding {
        whole.merge_url_tail(m);
    }
    Cow::Owned(whole)
}

/// The minute of hour `h` (bucket `b`) that the hour is folding in slices, if any: the last
/// one it folded, with url cells still to take ([`cells::UrlFold`]).
pub(crate) fn folding_minute<'m>(
    minutes: &'m Tier<Bucket>,
    h: i64,
    b: &Bucket,
) -> Option<&'m Bucket> {
    let m = b.folded_upto - 1;
    (m >= h * 60 && m < (h + 1) * 60)
        .then(|| minutes.get(m))
        .flatten()
        .filter(|mb| mb.url_fold.0.is_some())
}

/// Folds minute `mb`'s url-keyed cells into its hour `hb`, partition by partition, until
/// `deadline` (None: all of them); says whether it did all ([`cells::UrlFold`]). A partition
/// is begun only when the one before, taking as long, would end before the deadline, so a
/// pass overruns its slice by little; `planned`: the caller has just made the plan (and
/// folded the minute's other cells) in this pass, which may then fold no partition —
/// otherwise at least one is folded per call, so a fold always progresses.
fn fold_url_parts(
    hb: &mut Bucket,
    mb: &mut Bucket,
    deadline: Option<std::time::Instant>,
    planned: bool,
    slices: &mut u64,
) -> bool {
    let Some(mut fold) = mb.url_fold.0.take() else {
        return true;
    };
    let mut last: Option<std::time::Duration> = None;
    while let Some(keys) = fold.todo.get_mut(fold.done as usize) {
        if let Some(t) = deadline {
            let room = t.saturating_duration_since(std::time::Instant::now());
            match last {
                Some(d) if d >= room => break,
                None if planned && room.is_zero() => break,
                _ => {}
            }
        }
        let started = std::time::Instant::now();
        let keys = std::mem::take(keys);
        hb.merge_url_keys(mb, &keys);
        fold.done += 1;
        *slices += 1;
        last = Some(started.elapsed());
    }
    if (fold.done as usize) < fold.todo.len() {
        mb.url_fold.0 = Some(fold);
        return false;
    }
    true
}

/// The visitors of a url cell, borrowed or taken.
fn visitors_of(c: Cow<'_, UrlCell>) -> Cow<'_, Visitors> {
    match c {
        Cow::Borrowed(c) => Cow::Borrowed(&c.visitors),
        Cow::Owned(c) => Cow::Owned(c.visitors),
    }
}

/// Aggregate settings (validated from `[agg]`).
#[derive(Debug, Clone)]
pub struct AggConfig {
    /// Whether the shards aggregate at all (`agg.enabled`). Off, pixeld only logs: nothing is
    /// parsed for the aggregates, routed, caught up or checkpointed, the store on disk is left
    /// as it is, and queries of the aggregates answer 503 naming the setting (scans of the raw
    /// log still answer). Turned back on, the next start catches up from the store's
    /// checkpoint on what the logs still hold.
    pub enabled: bool,
    /// Minutes of minute buckets kept.
    pub minute_window: i64,
    /// Hours of hour buckets kept.
    pub hour_window: i64,
    /// Days of day buckets kept.
    pub day_window: i64,
    /// Events more than this many minutes after their receive time are not aggregated.
    pub future_minutes: i64,
    pub event: crate::parse::event::EventConfig,
    /// How often each owner checkpoints its aggregates (`agg::store`).
    pub checkpoint_interval: std::time::Duration,
    /// How visits are cut and judged (`agg::visits`).
    pub visits: VisitSettings,
    /// Whether url cells count their distinct visitors (`agg.url_visitors`).
    pub url_visitors: bool,
    /// Whether url pageviews are counted by channel too (`agg.url_channels`: the url × channel
    /// cells).
    pub url_channels: bool,
    /// Whether url pageviews are counted by referrer domain too (`agg.url_referrers`: the url
    /// × referrer cells).
    pub url_referrers: bool,
    /// Whether bots' hits count in every metric (`agg.bots = "include"`); by default they
    /// count only in the `bot` dimension (`agg::dims`).
    pub bots: bool,
}

impl AggConfig {
    /// The position of pageview dimension `name`: a built-in one (`parse::event::dims::DIMS`)
    /// or, after them, a custom one (`[agg.dimensions]`).
    pub fn dim_index(&self, name: &str) -> Option<usize> {
        crate::parse::event::dims::dim_index(name).or_else(|| {
            self.event
                .custom
                .iter()
                .position(|(n, _)| n == name)
                .map(|i| crate::parse::event::dims::DIMS.len() + i)
        })
    }

    /// The name of pageview dimension `d` ("" for none).
    pub fn dim_name(&self, d: usize) -> &str {
        use crate::parse::event::dims::DIMS;
        match DIMS.get(d) {
            Some(n) => n,
            None => d
                .checked_sub(DIMS.len())
                .and_then(|c| self.event.custom.get(c))
                .map_or("", |(n, _)| n.as_str()),
        }
    }

    /// Every pageview dimension's name, comma-separated (for messages).
    pub fn dim_list(&self) -> String {
        let mut names: Vec<&str> = crate::parse::event::dims::DIMS.to_vec();
        names.extend(self.event.custom.iter().map(|(n, _)| n.as_str()));
        names.join(", ")
    }
}

impl Default for AggConfig {
    fn default() -> Self {
        AggConfig {
            enabled: true,
            minute_window: 48 * 60,
            hour_window: 35 * 24,
            day_window: 400,
            future_minutes: 5,
            event: crate::parse::event::EventConfig::default(),
            checkpoint_interval: std::time::Duration::from_secs(30),
            visits: VisitSettings::default(),
            url_visitors: true,
            url_channels: true,
            url_referrers: true,
            bots: false,
        }
    }
}

/// What an increment counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncKind {
    /// A hit on `key` = url (views, hits, engaged seconds).
    Url,
    /// A pageview referred by `key` = referrer domain.
    Ref,
    /// A hit of a visitor on `site` (totals and uniques; with a pageview's profile key, its
    /// profile's cell too).
    Visitor,
    /// A pageview of a visitor on `site` whose dimensions' values are `key`, a profile key
    /// (`parse::event::dims`), counted alone: a bot's while `agg.bots` excludes bots (anyone
    /// else's rides with the visitor's increment).
    Profile,
}

/// One compact increment; its strings live in the [`Batch`] text.
#[derive(Debug, Clone, Copy)]
pub struct Inc {
    pub kind: IncKind,
    pub pageview: bool,
    /// Whether `vid` is a visitor hash (false: the hit had no visitor id).
    pub has_vid: bool,
    /// Event minute since the epoch.
    pub minute: i64,
    pub engaged: u32,
    site: (u32, u32),
    key: (u32, u32),
    /// Its second key (see `route::increments`): a visitor's pageview's profile key, a url's
    /// pageview's referrer domain.
    aux: (u32, u32),
    pub vid: u64,
    /// Whether the hit counts for visits (a visitor's pageview or heartbeat not received
    /// later than `agg.visit_late_allowance`; see `agg::visits`), and its event time.
    pub visit: bool,
    pub ts_ms: i64,
    /// A repair: the record is below what the owner's checkpoint holds, replayed only to
    /// recompute an hour or a day whose sealed file was lost — it counts into that bucket
    /// alone (`Aggregates::repair_hours`, `repair_days`).
    pub repair: bool,
    /// A url increment's pageview channel (`Channel::code`; 0: none), for the url × channel
    /// cells.
    pub channel: u8,
}

impl Inc {
    /// An increment applied where it is made (its strings are passed alongside).
    pub fn new(kind: IncKind, pageview: bool, minute: i64, engaged: u32, vid: Option<u64>) -> Self {
        Inc {
            kind,
            pageview,
            has_vid: vid.is_some(),
            minute,
            engaged,
            site: (0, 0),
            key: (0, 0),
            aux: (0, 0),
            vid: vid.unwrap_or(0),
            visit: false,
            ts_ms: minute.saturating_mul(60_000),
            repair: false,
            channel: 0,
        }
    }

    /// The same increment, of a pageview of channel `code` (`Channel::code`).
    pub fn with_channel(mut self, code: u8) -> Self {
        self.channel = code;
        self
    }

    /// The same increment, counting for visits at event time `ts_ms`.
    pub fn with_visit(mut self, ts_ms: i64) -> Self {
        self.visit = self.has_vid;
        self.ts_ms = ts_ms;
        self
    }
}

/// A batch of increments for one owner shard: what crosses a ring.
#[derive(Debug, Default)]
pub struct Batch {
    text: String,
    pub incs: Vec<Inc>,
    /// The sender's stamp: every record its ingest appended below this log offset has its
    /// increments for this owner in this batch or an earlier one (see `route`).
    pub upto: u64,
    /// The sender's receive clock (ms): every record it routes later was received at or
    /// after it (see `route`; what lets an owner forget visits).
    pub clock_ms: i64,
}

impl Batch {
    fn span(&mut self, s: &str) -> (u32, u32) {
        let start = self.text.len() as u32;
        self.text.push_str(s);
        (start, s.len() as u32)
    }

    /// Adds one increment.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        kind: IncKind,
        pageview: bool,
        minute: i64,
        engaged: u32,
        site: &str,
        key: &str,
        vid: Option<u64>,
    ) {
        self.push_inc(Inc::new(kind, pageview, minute, engaged, vid), site, key);
    }

    /// Adds one increment made elsewhere, with its strings.
    pub fn push_inc(&mut self, inc: Inc, site: &str, key: &str) {
        self.push_inc_with(inc, site, key, "");
    }

    /// Adds one increment made elsewhere, with its strings and its second key (see
    /// `route::increments`).
    pub fn push_inc_with(&mut self, mut inc: Inc, site: &str, key: &str, aux: &str) {
        inc.site = self.span(site);
        inc.key = self.span(key);
        inc.aux = self.span(aux);
        self.incs.push(inc);
    }

    pub fn len(&self) -> usize {
        self.incs.len()
    }

    /// Empties it, keeping its room.
    pub fn clear(&mut self) {
        self.text.clear();
        self.incs.clear();
        self.upto = 0;
        self.clock_ms = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.incs.is_empty()
    }

    fn str(&self, (start, len): (u32, u32)) -> &str {
        self.text
            .get(start as usize..(start + len) as usize)
            .unwrap_or_default()
    }

    /// The site, key and second key of `inc`.
    pub fn strs(&self, inc: &Inc) -> (&str, &str, &str) {
        (self.str(inc.site), self.str(inc.key), self.str(inc.aux))
    }
}

/// How many increments [`Aggregates::apply_batch`] looks up before it applies them.
pub const WARM_CHUNK: usize = 32;

/// Interned key names: dense ids, so that cells are small and queries sum into vectors.
/// Each name is held once, its text appended to blocks that never move (`blocks`, each
/// filled up to the capacity it was made with: the first 256 bytes, each next one twice the
/// last up to `NAME_BLOCK`, a longer name a block of its own); `spans` says where each id's
/// text is, and the lookup table holds only ids, hashed and compared by their text. A name
/// costs its text and a 12-byte span — not a box of its own (16 bytes of pointer and length
/// and the allocator's header and rounding) — and a comparison reads its span and its text,
/// contiguous with the names interned around it.
///
/// The id interned last is remembered (`last`) for [`Names::intern_again`]: where a record's
/// increments name the same url twice (its url's and its visitor's pageview) or the same
/// referrer domain (its url's second key and its referrer's increment), the second costs a
/// compare instead of a hash and a probe.
#[derive(Debug, Default, Clone)]
pub struct Names {
    ids: hashbrown::HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    blocks: Vec<String>,
    spans: Vec<Span>,
    last: Option<u32>,
}

/// The largest block of name text [`Names`] allocates for names of ordinary length.
const NAME_BLOCK: usize = 64 * 1024;

/// Where one name's text is in [`Names::blocks`].
#[derive(Debug, Default, Clone, Copy)]
struct Span {
    block: u32,
    start: u32,
    len: u32,
}

/// The text `s` spans in `blocks` ("" for a span that names nothing).
fn spanned<'a>(blocks: &'a [String], s: &Span) -> &'a str {
    let (start, len) = (s.start as usize, s.len as usize);
    blocks
        .get(s.block as usize)
        .and_then(|b| b.get(start..start + len))
        .unwrap_or("")
}

impl Names {
    /// The id of `name`, and whether it is new.
    pub fn intern(&mut self, name: &str) -> (u32, bool) {
        let hash = self.hasher.hash_one(name);
        if let Some(id) = self.find(hash, name) {
            self.last = Some(id);
            return (id, false);
        }
        let id = self.spans.len() as u32;
        let span = self.append(name);
        self.spans.push(span);
        let (blocks, spans, hasher) = (&self.blocks, &self.spans, &self.hasher);
        self.ids.insert_unique(hash, id, |id| {
            hasher.hash_one(spans.get(*id as usize).map_or("", |s| spanned(blocks, s)))
        });
        self.last = Some(id);
        (id, true)
    }

    /// [`Names::intern`] where `name` is likely the name interned last: then a compare,
    /// otherwise a compare more than `intern` (so only where the last one repeats often —
    /// everywhere, it cost more than it saved in a rebuild).
    pub fn intern_again(&mut self, name: &str) -> (u32, bool) {
        match self.last.filter(|&id| self.bytes(id) == name.as_bytes()) {
            Some(id) => (id, false),
            None => self.intern(name),
        }
    }

    /// The text of `id` as bytes (empty for an id it does not hold): no character-boundary
    /// checks, for comparisons.
    fn bytes(&self, id: u32) -> &[u8] {
        self.spans.get(id as usize).map_or(&[], |s| {
            let (start, len) = (s.start as usize, s.len as usize);
            self.blocks
                .get(s.block as usize)
                .and_then(|b| b.as_bytes().get(start..start + len))
                .unwrap_or(&[])
        })
    }

    /// Appends `name`'s text to the last block, or to a new one when it does not fit (so that
    /// no block ever reallocates and moves the text of the names before).
    fn append(&mut self, name: &str) -> Span {
        let fits = self
            .blocks
            .last()
            .is_some_and(|b| b.capacity() - b.len() >= name.len());
        if !fits {
            let next = self
                .blocks
                .last()
                .map_or(256, |b| (b.capacity() * 2).min(NAME_BLOCK));
            self.blocks
                .push(String::with_capacity(next.max(name.len())));
        }
        let block = self.blocks.len().saturating_sub(1);
        let Some(b) = self.blocks.last_mut() else {
            return Span::default();
        };
        let start = b.len();
        b.push_str(name);
        Span {
            block: block as u32,
            start: start as u32,
            len: name.len() as u32,
        }
    }

    pub fn get(&self, name: &str) -> Option<u32> {
        self.find(self.hasher.hash_one(name), name)
    }
    /// The id of `name`, whose hash is `hash`.
    fn find(&self, hash: u64, name: &str) -> Option<u32> {
        self.ids
            .find(hash, |id| self.bytes(*id) == name.as_bytes())
            .copied()
    }
    pub fn name(&self, id: u32) -> &str {
        self.spans
            .get(id as usize)
            .map_or("", |s| spanned(&self.blocks, s))
    }
    pub fn len(&self) -> usize {
        self.spans.len()
    }
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
    fn memory(&self) -> usize {
        self.blocks.iter().map(String::capacity).sum::<usize>()
            + self.blocks.capacity() * size_of::<String>()
            + table_bytes(self.ids.capacity(), size_of::<u32>())
            + self.spans.capacity() * size_of::<Span>()
    }

    /// A copy for a checkpoint that writes the names from `first` on: the same ids, the
    /// names before `first` empty (no text) and no lookup table.
    fn tail_copy(&self, first: usize) -> Names {
        let mut copy = Names {
            hasher: self.hasher.clone(),
            ..Names::default()
        };
        copy.spans = Vec::with_capacity(self.spans.len());
        copy.spans
            .resize(first.min(self.spans.len()), Span::default());
        for s in self.spans.iter().skip(first) {
            let span = copy.append(spanned(&self.blocks, s));
            copy.spans.push(span);
        }
        copy
    }
}

/// The first `limit` of `(views, id)` in ranking order (views descending, then name
/// ascending). Views are compared first over everything (integers, cheap); names only among
/// the entries tied at the cut-off, which is where the key tie-break matters.
fn rank<'a>(
    mut ids: Vec<(u64, u32)>,
    limit: usize,
    name: impl Fn(u32) -> &'a str,
) -> Vec<(u64, u32)> {
    let by_name = |a: &(u64, u32), b: &(u64, u32)| {
        b.0.cmp(&a.0)
            .then_with(|| name(a.1).as_bytes().cmp(name(b.1).as_bytes()))
    };
    if limit == 0 {
        return Vec::new();
    }
    if ids.len() > limit {
        ids.select_nth_unstable_by(limit - 1, |a, b| b.0.cmp(&a.0));
        let cut = ids.get(limit - 1).map_or(0, |x| x.0);
        let mut winners: Vec<(u64, u32)> = ids.iter().filter(|x| x.0 > cut).copied().collect();
        let mut ties: Vec<(u64, u32)> = ids.iter().filter(|x| x.0 == cut).copied().collect();
        let need = limit - winners.len();
        if ties.len() > need && need > 0 {
            ties.select_nth_unstable_by(need - 1, by_name);
        }
        ties.truncate(need);
        winners.extend(ties);
        ids = winners;
    }
    ids.sort_unstable_by(by_name);
    ids
}

/// Views, hits, engaged seconds and uniques of a range (of a url: its distinct visitors; None
/// from a shard that does not own it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub views: u64,
    pub hits: u64,
    pub engaged: u64,
    pub uniques: Option<u64>,
    /// Visits starting in the range (per site and in all; zero per url).
    pub visits: VisitCounts,
    /// Whether these are one url's (which hold no visits).
    pub per_url: bool,
}

impl Totals {
    /// Adds another shard's totals (uniques add up: visitors are partitioned).
    pub fn add(&mut self, o: &Totals) {
        self.views += o.views;
        self.hits += o.hits;
        self.engaged += o.engaged;
        self.visits.add(&o.visits);
        self.per_url |= o.per_url;
        self.uniques = match (self.uniques, o.uniques) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }
}

/// The dimensions of a top list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Url,
    RefDomain,
    Site,
    /// Urls by the visits that entered on them (`agg::visits`).
    EntryPage,
    /// Urls by the visits that left from them.
    ExitPage,
    /// Urls by engaged seconds (a top list's `sort=engaged_seconds`).
    UrlEngaged,
    /// Urls by distinct visitors (`sort=visitors`).
    UrlVisitors,
    /// Urls by engaged seconds per visitor (`sort=avg_engaged_seconds`; ranked in
    /// milliseconds).
    UrlAvgEngaged,
    /// Pairs of a url and the channel of its pageviews, by pageviews (the url × channel
    /// cells): keys are the url, [`crate::parse::event::dims::SEP`] and the channel.
    UrlChannel,
    /// Pairs of a url and the referrer domain of its pageviews, by pageviews (the url ×
    /// referrer cells): keys are the url, [`crate::parse::event::dims::SEP`] and the domain.
    UrlRef,
}

impl Dim {
    pub fn as_str(self) -> &'static str {
        match self {
            Dim::Url
            | Dim::UrlEngaged
            | Dim::UrlVisitors
            | Dim::UrlAvgEngaged
            | Dim::UrlChannel
            | Dim::UrlRef => "url",
            Dim::RefDomain => "ref_domain",
            Dim::Site => "site",
            Dim::EntryPage => "entry_page",
            Dim::ExitPage => "exit_page",
        }
    }

    /// Whether its cells are partitioned by visitor (site totals, entry and exit pages), so
    /// that every shard holds part of a key's count: the shards then send all their keys,
    /// and the merge adds them up before ranking.
    pub fn by_visitor(self) -> bool {
        matches!(self, Dim::Site | Dim::EntryPage | Dim::ExitPage)
    }

    /// The name of the count a top list of it ranks by.
    pub fn metric(self) -> &'static str {
        match self {
            Dim::EntryPage => "entries",
            Dim::ExitPage => "exits",
            Dim::UrlEngaged => "engaged_seconds",
            Dim::UrlVisitors => "visitors",
            Dim::UrlAvgEngaged => "avg_engaged_seconds",
            _ => "views",
        }
    }
}

/// Everything known of one url over a range on one shard (a top list's items with `sort=`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UrlStats {
    pub views: u64,
    pub hits: u64,
    pub engaged: u64,
    pub entries: i64,
    pub exits: i64,
    /// Distinct visitors (on the url's owner; zero elsewhere; None when `agg.url_visitors`
    /// is off), and whether a sketch counted them.
    pub visitors: Option<u64>,
    pub sketched: bool,
}

impl UrlStats {
    pub fn add(&mut self, o: &UrlStats) {
        self.views += o.views;
        self.hits += o.hits;
        self.engaged += o.engaged;
        self.entries += o.entries;
        self.exits += o.exits;
        self.visitors = match (self.visitors, o.visitors) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.sketched |= o.sketched;
    }

    /// Engaged seconds per visitor (None without visitors).
    pub fn avg_engaged(&self) -> Option<f64> {
        self.visitors
            .filter(|&v| v > 0)
            .map(|v| self.engaged as f64 / v as f64)
    }
}

/// Distinct visitors that merge losslessly: a site's uniques, a url's visitors.
trait Distinct: Clone {
    fn merge_from(&mut self, o: &Self);
    fn count(&self) -> usize;
    fn exact(&self) -> bool;
}

impl<const P: usize> Distinct for Uniques<P> {
    fn merge_from(&mut self, o: &Self) {
        self.merge(o);
    }
    fn count(&self) -> usize {
        self.estimate()
    }
    fn exact(&self) -> bool {
        matches!(self, Uniques::Exact(_))
    }
}

impl Distinct for Visitors {
    fn merge_from(&mut self, o: &Self) {
        self.merge(o);
    }
    fn count(&self) -> usize {
        self.estimate()
    }
    fn exact(&self) -> bool {
        self.is_exact()
    }
}

/// The union of distinct visitors over the parts of a range, without copying the first (a
/// sketch is merged only when a second part contributes).
struct VisitorUnion<'a, T: Distinct = Visitors> {
    first: Option<Cow<'a, T>>,
    merged: Option<T>,
}

impl<T: Distinct> Default for VisitorUnion<'_, T> {
    fn default() -> Self {
        VisitorUnion {
            first: None,
            merged: None,
        }
    }
}

impl<'a, T: Distinct> VisitorUnion<'a, T> {
    fn add(&mut self, v: Cow<'a, T>) {
        if let Some(m) = &mut self.merged {
            m.merge_from(&v);
        } else if let Some(f) = self.first.take() {
            let mut m = f.into_owned();
            m.merge_from(&v);
            self.merged = Some(m);
        } else {
            self.first = Some(v);
        }
    }

    /// The count, and whether a sketch made it.
    fn count(&self) -> (u64, bool) {
        self.merged
            .as_ref()
            .or(self.first.as_deref())
            .map_or((0, false), |v| (v.count() as u64, !v.exact()))
    }
}

/// Memory held by one shard's aggregates.
#[derive(Debug, Default, Clone, Copy)]
pub struct Memory {
    /// Live (bucket, key) cells in memory.
    pub cells: u64,
    /// Dimension values that became `(other)` (`agg::dims`): not memory, but published with it.
    pub dim_overflow: u64,
    /// Url cells alone, and the bytes of their tables (for the bytes-per-cell figure).
    pub url_cells: u64,
    pub url_cell_bytes: u64,
    /// Approximate heap bytes: tables, sketches and key names — the sum of `parts`.
    pub bytes: u64,
    /// Those bytes by what they hold, indexed by [`mem::MemPart`].
    pub parts: [u64; mem::MemPart::ALL.len()],
    /// Sealed hours and days mapped from their files, and their bytes (page cache, not heap).
    pub sealed_files: u64,
    pub sealed_bytes: u64,
    /// Visitors whose recent visits are kept, and their bytes (included in `bytes`).
    pub visitors: u64,
    pub visitor_bytes: u64,
}

/// A site cell as one line of text (counts, and the uniques' exact size or sketch with a CRC
/// of its canonical words): what `pixeld check --aggregates` compares.
pub fn site_line(c: &SiteCell) -> String {
    format!(
        "views {} hits {} engaged {} visits {} bounces {} visit_views {} visit_ms {} uniques {}",
        c.views,
        c.hits,
        c.engaged,
        c.visits.visits,
        c.visits.bounces,
        c.visits.views,
        c.visits.duration_ms,
        uniques_line(&c.uniques)
    )
}

/// A set of distinct visitors as text: its exact size or a sketch, with a CRC of its
/// canonical words.
fn uniques_line<const P: usize>(u: &Uniques<P>) -> String {
    let words: Vec<u8> = u.canonical().iter().flat_map(|x| x.to_le_bytes()).collect();
    let size = match u {
        Uniques::Exact(set) => format!("exactly {}", set.len()),
        Uniques::Sketch(_) => "a sketch".to_string(),
    };
    format!(
        "{size} (crc {:08x} of {} words)",
        crc32c::crc32c(&words),
        words.len() / 8
    )
}

/// The name of a channel code of the url × channel cells (`Channel::code`).
pub fn channel_name(code: u8) -> &'static str {
    crate::parse::event::channel::Channel::from_code(code).map_or("(none)", |c| c.as_str())
}

/// The ids of an increment's names that [`Aggregates::apply`] interned (or `warm` found)
/// already.
#[derive(Debug, Clone, Copy)]
enum Interned {
    /// A visitor's site, and its pageview's profile.
    Visitor { site: u32, profile: Option<u32> },
    /// A url's.
    Url(u32),
}

/// The ids of an increment's names that `Aggregates::warm` found (a name not interned yet,
/// or one it does not look up, is `None`): ids are never reused, so they hold until the
/// increment is applied.
#[derive(Debug, Clone, Copy, Default)]
struct Known {
    /// A visitor's site.
    site: Option<u32>,
    /// A url increment's url.
    url: Option<u32>,
}

/// Adds one change of what visits add to bucket `b` (site `s`'s cell and all, or a page).
fn visit_delta(b: &mut Bucket, s: u32, d: &Delta) {
    match *d {
        Delta::Counts(c) => {
            b.sites.entry(s).or_default().visits.add(&c);
            b.all.visits.add(&c);
        }
        Delta::Entry(u, entries) => b
            .pages
            .entry(u)
            .or_default()
            .add(&PageCell { entries, exits: 0 }),
        Delta::Exit(u, exits) => b
            .pages
            .entry(u)
            .or_default()
            .add(&PageCell { entries: 0, exits }),
        Delta::Profile(p, c) => b.profile_visits.entry(p).or_default().add(&c),
    }
}

/// The url-keyed cells an increment updates (`Aggregates::each_bucket_with`).
type Touched = smallvec::SmallVec<[UrlKey; 4]>;

/// The page cells that visit changes `d` update, each once (a visit's entry is often its
/// exit too) (`Aggregates::each_bucket_with`).
fn page_keys<'a>(d: impl IntoIterator<Item = &'a Delta>) -> Touched {
    let mut keys = Touched::new();
    for d in d {
        if let Delta::Entry(u, _) | Delta::Exit(u, _) = *d {
            if !keys.contains(&UrlKey::Page(u)) {
                keys.push(UrlKey::Page(u));
            }
        }
    }
    keys
}

/// How one increment's visitor goes into the url or profile cells of the buckets it updates
/// (minute, then hour, then day; an hour only when it has folded the minute already, see
/// `each_bucket`): a visitor the finest bucket knew already is in the coarser ones (each of
/// them took every insert the finer one took, or folded it, or holds it in its sealed part),
/// which are left alone.
struct MinuteVisitor {
    hash: Option<u64>,
    finest: bool,
}

impl MinuteVisitor {
    fn new(hash: Option<u64>) -> Self {
        MinuteVisitor { hash, finest: true }
    }

    /// Inserts the visitor into `v`, the cell of the next bucket, as the rule above says.
    fn insert(&mut self, v: &mut Visitors) {
        let Some(h) = self.hash else { return };
        if !v.insert_hash(h) && self.finest {
            self.hash = None;
        }
        self.finest = false;
    }
}

/// A profile cell as one line of text (what `pixeld check --aggregates` compares): its name
/// with the separators shown as ` | `.
pub fn profile_line(name: &str, c: &UrlCell) -> String {
    format!(
        "profile {:?}: views {} events {} visitors {}",
        name.replace(crate::parse::event::dims::SEP, " | "),
        c.views,
        c.hits,
        uniques_line(&c.visitors.to_uniques())
    )
}

/// What visits entering on a profile add, as one line of text (what `pixeld check
/// --aggregates` compares).
pub fn profile_visits_line(name: &str, c: &VisitCounts) -> String {
    format!(
        "profile {:?}: visits {} bounces {} visit views {} duration {} ms",
        name.replace(crate::parse::event::dims::SEP, " | "),
        c.visits,
        c.bounces,
        c.views,
        c.duration_ms
    )
}

/// A page cell as one line of text (what `pixeld check --aggregates` compares).
pub fn page_line(url: &str, c: &PageCell) -> String {
    format!("page {url:?}: entries {} exits {}", c.entries, c.exits)
}

/// A bucket's site cells by site name, its all-sites cell, its page cells by url, its
/// profile cells by profile name and its profile visit cells by profile name.
pub type SiteCells = (
    Vec<(String, SiteCell)>,
    SiteCell,
    Vec<(String, PageCell)>,
    Vec<(String, UrlCell)>,
    Vec<(String, VisitCounts)>,
);

/// One shard's aggregates.
#[derive(Debug)]
pub struct Aggregates {
    pub cfg: AggConfig,
    pub sites: Names,
    pub urls: Names,
    pub refs: Names,
    /// Pageviews by combination of dimension values (`agg::dims`).
    pub profiles: dims::Profiles,
    /// Site id of each url id.
    url_site: Vec<u32>,
    minutes: Tier<Bucket>,
    hours: Tier<Bucket>,
    /// Late increments of sealed days, and days counted directly because their hours had
    /// left the hour window.
    days: Tier<Bucket>,
    /// The closed parts of sealed hours and days.
    sealed: HashMap<(Res, i64), Sealed>,
    /// Sealed buckets a checkpoint lists that are not (yet) in `sealed`: a loaded chain's
    /// list before [`Aggregates::open_sealed`], or what a snapshot writes.
    listed: Vec<(Res, i64)>,
    /// Sealed files that left their window: deleted once a checkpoint no longer lists them.
    retired: Vec<PathBuf>,
    /// Hours, and days older than the hour window, whose sealed file was lost at load:
    /// emptied, to be recomputed from the log (sorted).
    pub repair_hours: Vec<i64>,
    pub repair_days: Vec<i64>,
    /// Increments refused because their bucket had already left the window.
    pub stale: u64,
    /// Partitions of url cells folded in slices ([`cells::UrlFold`]), for the metrics.
    pub fold_slices: u64,
    /// How many sites, urls and referrers the last checkpoint held (a delta carries the rest).
    written_names: NameCounts,
    /// Which owner a visitor's increments go to across shard-count changes (the store's
    /// `agg/partitions`, read at load; see `agg::store::repartition`).
    pub epochs: crate::route::partition::Epochs,
    /// While `rebuild-aggregates` runs on a live server: every increment applied since it
    /// took this owner's frontier, added back onto the buckets it recomputes from the logs.
    pub recording: Option<Box<Aggregates>>,
    /// The recent visits of this shard's visitors (`agg::visits`).
    pub visits: Visits,
    /// The visits of records replayed only to repair a lost sealed bucket (kept apart: they
    /// are below what `visits` has already seen).
    repair_visits: Visits,
}

impl Aggregates {
    pub fn new(cfg: AggConfig) -> Self {
        let minutes = Tier::new(1, cfg.minute_window, cfg.future_minutes + 1);
        let hours = Tier::new(60, cfg.hour_window, 1);
        let days = Tier::new(1440, cfg.day_window, 1);
        let cfg_visits = cfg.visits;
        let custom: Vec<String> = cfg.event.custom.iter().map(|(n, _)| n.clone()).collect();
        Aggregates {
            cfg,
            sites: Names::default(),
            urls: Names::default(),
            refs: Names::default(),
            profiles: dims::Profiles::new(&custom),
            url_site: Vec::new(),
            minutes,
            hours,
            days,
            sealed: HashMap::new(),
            listed: Vec::new(),
            retired: Vec::new(),
            repair_hours: Vec::new(),
            repair_days: Vec::new(),
            stale: 0,
            fold_slices: 0,
            written_names: (0, 0, 0, 0),
            epochs: Default::default(),
            recording: None,
            visits: Visits::new(cfg_visits),
            repair_visits: Visits::new(cfg_visits),
        }
    }

    /// The first minute still kept at minute resolution at `now_min`.
    pub fn minute_floor(&self, now_min: i64) -> i64 {
        now_min - self.cfg.minute_window
    }

    /// The first minute still kept at hour resolution at `now_min`.
    pub fn hour_floor(&self, now_min: i64) -> i64 {
        (now_min.div_euclid(60) - self.cfg.hour_window) * 60
    }

    /// The first minute still kept at all (at day resolution) at `now_min`.
    pub fn day_floor(&self, now_min: i64) -> i64 {
        (now_min.div_euclid(1440) - self.cfg.day_window) * 1440
    }

    /// How many sites, urls, referrers and profiles have names.
    pub fn name_counts(&self) -> NameCounts {
        (
            self.sites.len(),
            self.urls.len(),
            self.refs.len(),
            self.profiles.len(),
        )
    }

    fn tier(&self, r: Res) -> &Tier<Bucket> {
        match r {
            Res::Minute => &self.minutes,
            Res::Hour => &self.hours,
            Res::Day => &self.days,
        }
    }

    fn tier_mut(&mut self, r: Res) -> &mut Tier<Bucket> {
        match r {
            Res::Minute => &mut self.minutes,
            Res::Hour => &mut self.hours,
            Res::Day => &mut self.days,
        }
    }

    /// Applies `f` to the minute bucket (when inside the minute window) of `minute`, to its
    /// hour bucket when the minute bucket did not take it or the hour has folded the minute
    /// already (`fold_minutes`), and to its day bucket when the day is sealed (late
    /// increments) or the hour has left its window; counts the increment stale when no
    /// bucket takes it.
    fn each_bucket(&mut self, inc: &Inc, now_min: i64, f: impl FnMut(&mut Bucket, Res)) {
        self.each_bucket_with(inc, now_min, Touched::new, f);
    }

    /// [`Aggregates::each_bucket`] for an increment that updates the cells keyed by a url
    /// that `touch` names, each once (asked only while its minute is being folded in slices:
    /// never on the usual hot path) (url, url × channel, url × referrer, page cells; others
    /// it may update too). While its minute is being folded in slices ([`cells::UrlFold`])
    /// and some of those are still only in the minute, the hour takes everything `f` adds but
    /// those (built apart, then merged: [`Bucket::merge_except`]) — it takes them with the
    /// minute's later — and a cell created in the minute is added to the keys still to fold.
    fn each_bucket_with(
        &mut self,
        inc: &Inc,
        now_min: i64,
        touch: impl FnOnce() -> Touched,
        mut f: impl FnMut(&mut Bucket, Res),
    ) {
        let minute = inc.minute;
        if inc.repair {
            // Only the bucket being recomputed (an hour's minutes left the window long ago,
            // and its day, when sealed, already holds it).
            let (h, d) = (minute.div_euclid(60), minute.div_euclid(1440));
            let b = if self.repair_hours.binary_search(&h).is_ok() {
                self.hours.get_mut(h).map(|b| (b, Res::Hour))
            } else if self.repair_days.binary_search(&d).is_ok() {
                self.days.get_mut(d).map(|b| (b, Res::Day))
            } else {
                None
            };
            match b {
                Some((b, res)) => {
                    b.dirty = true;
                    f(b, res);
                }
                None => self.stale += 1,
            }
            return;
        }
        let mut in_minute = false;
        // The cells `f` updates that the hour must leave alone (still only in the minute).
        let mut pending = Touched::new();
        if minute >= self.minute_floor(now_min) {
            if let Some(old) = self.minutes.displaced_by(minute) {
                // Out of the window long ago, but not yet evicted (the ticker was late): its
                // hour takes it before its slot is cleared.
                self.fold_minutes(old + 1, usize::MAX);
            }
            if let Some(b) = self.minutes.get_mut(minute) {
                b.dirty = true;
                if let Some(fold) = b.url_fold.0.as_deref() {
                    pending = touch();
                    pending.retain(|k| fold.pending(k.url()));
                }
                if pending.is_empty() {
                    f(b, Res::Minute);
                } else {
                    let had: smallvec::SmallVec<[bool; 4]> =
                        pending.iter().map(|k| b.has(*k)).collect();
                    f(b, Res::Minute);
                    let new: smallvec::SmallVec<[UrlKey; 4]> = pending
                        .iter()
                        .zip(had)
                        .filter(|(k, had)| !had && b.has(**k))
                        .map(|(k, _)| *k)
                        .collect();
                    if let Some(fold) = b.url_fold.0.as_deref_mut() {
                        new.into_iter().for_each(|k| fold.created(k));
                    }
                }
                in_minute = true;
            }
        }
        let mut counted = false;
        if minute >= self.hour_floor(now_min) {
            if let Some(b) = self.hours.get_mut(minute.div_euclid(60)) {
                // Dirty either way: its checkpoint holds its unfolded minutes.
                b.dirty = true;
                if !in_minute || minute < b.folded_upto {
                    if pending.is_empty() {
                        f(b, Res::Hour);
                    } else {
                        let mut apart = Bucket::default();
                        f(&mut apart, Res::Hour);
                        b.merge_except(&apart, &pending);
                    }
                }
                counted = true;
            }
        }
        let day = minute.div_euclid(1440);
        // Only a closed day can be sealed: live events (an open day) skip the lookup.
        let late_for_sealed_day =
            self.closed(Res::Day, day, now_min) && self.sealed.contains_key(&(Res::Day, day));
        if (!counted || late_for_sealed_day) && minute >= self.day_floor(now_min) {
            if let Some(b) = self.days.get_mut(day) {
                b.dirty = true;
                f(b, Res::Day);
                counted = true;
            }
        }
        if !counted {
            self.stale += 1;
        }
    }

    /// Applies every increment of a batch, [`WARM_CHUNK`] at a time: first the chunk's
    /// lookups that miss the cache (`Aggregates::warm`), then its increments.
    pub fn apply_batch(&mut self, batch: &Batch, now_min: i64) {
        for chunk in batch.incs.chunks(WARM_CHUNK) {
            let mut known = [Known::default(); WARM_CHUNK];
            // Each increment's names, sliced once (a checked `str` slice each) for both passes.
            let mut strs = [("", "", ""); WARM_CHUNK];
            for (s, inc) in strs.iter_mut().zip(chunk) {
                *s = batch.strs(inc);
            }
            std::hint::black_box(self.warm(chunk, &strs, &mut known));
            for ((inc, known), (site, key, aux)) in chunk.iter().zip(known).zip(strs) {
                self.apply_known(inc, site, key, aux, now_min, known);
            }
        }
    }

    /// Looks up, changing nothing, the table slots the increments of `chunk` will touch
    /// first, table by table: the visitor's visits, the url's name, then its minute cell and
    /// visitor list (a popular url's set: the visitor's slot in it), the site's minute cell.
    /// The tables are far larger than the caches, so each increment applied alone waits for
    /// memory at every one of them; a run of the same lookup for many increments has nothing
    /// depending on the one before, so the processor waits for them all at once, and
    /// [`Aggregates::apply`] then finds its slots in the cache (−6 % CPU per event end to
    /// end, the visitor's slot in a url's set −6 % more; docs/performance-history.md).
    /// Returns what it read, folded into one word for `black_box`, so that the reads are not
    /// left out; the ids it found go into `known`, so that `apply` does not look them up again.
    fn warm(
        &self,
        chunk: &[Inc],
        strs: &[(&str, &str, &str); WARM_CHUNK],
        known: &mut [Known; WARM_CHUNK],
    ) -> u64 {
        let mut seen = 0u64;
        // A visitor's site id, looked up once for its visits and its site cell.
        for ((k, inc), (site, _, _)) in known.iter_mut().zip(chunk).zip(strs) {
            if inc.kind == IncKind::Visitor {
                k.site = self.sites.get(site);
            }
        }
        for (k, inc) in known.iter().zip(chunk) {
            if let (Some(s), true) = (k.site, inc.visit && inc.has_vid) {
                seen ^= u64::from(self.visits.warm(s, inc.vid));
            }
        }
        for ((k, inc), (_, key, _)) in known.iter_mut().zip(chunk).zip(strs) {
            if inc.kind == IncKind::Url {
                k.url = self.urls.get(key);
            }
        }
        for (k, inc) in known.iter().zip(chunk) {
            let minute = self.minutes.get(inc.minute);
            if let Some(c) = k.url.and_then(|id| minute?.urls.get(&id)) {
                seen ^= u64::from(c.hits) ^ c.visitors.warm(inc.vid);
            }
        }
        for (k, inc) in known.iter().zip(chunk) {
            let minute = self.minutes.get(inc.minute);
            if let Some(c) = k.site.and_then(|s| minute?.sites.get(&s)) {
                seen ^= c.hits;
            }
        }
        seen
    }

    /// Applies one increment (`aux`, its second key: see `route::increments`).
    pub fn apply(&mut self, inc: &Inc, site: &str, key: &str, aux: &str, now_min: i64) {
        self.apply_known(inc, site, key, aux, now_min, Known::default());
    }

    /// [`Aggregates::apply`], with the ids of its names that are known already (`warm`).
    fn apply_known(
        &mut self,
        inc: &Inc,
        site: &str,
        key: &str,
        aux: &str,
        now_min: i64,
        known: Known,
    ) {
        if let Some(r) = self.recording.as_deref_mut() {
            r.apply_counts(inc, site, key, aux, now_min, &[], None);
        }
        if !(inc.kind == IncKind::Visitor && inc.visit && inc.has_vid) {
            let interned = match (inc.kind, known.url) {
                (IncKind::Url, Some(url)) => Some(Interned::Url(url)),
                _ => None,
            };
            self.apply_counts(inc, site, key, aux, now_min, &[], interned);
            return;
        }
        let s = match known.site {
            Some(s) => s,
            None => self.sites.intern(site).0,
        };
        // A pageview's key is its url (the visit's entry or exit page, maybe), its second key
        // its profile (its own cell's, and the dimensions of the visit it may enter), interned
        // here once for both.
        let url = if inc.pageview && !key.is_empty() {
            self.intern_url(key, site)
        } else {
            visits::NO_URL
        };
        let profile = (!aux.is_empty()).then(|| self.profiles.intern(s, site, aux));
        let interned = Interned::Visitor { site: s, profile };
        let visits = if inc.repair {
            &mut self.repair_visits
        } else {
            &mut self.visits
        };
        let (urls, profiles) = (&self.urls, &self.profiles.names);
        let order = visits::Order {
            urls: &|a: u32, b: u32| urls.name(a).cmp(urls.name(b)),
            profiles: &|a: u32, b: u32| profiles.name(a).cmp(profiles.name(b)),
        };
        let seen = visits::Seen {
            t_ms: inc.ts_ms,
            pageview: inc.pageview,
            engaged: inc.engaged,
            url,
            profile: profile
                .filter(|_| url != visits::NO_URL)
                .unwrap_or(visits::NO_PROFILE),
        };
        let mut changes: smallvec::SmallVec<[(i64, Delta); 6]> = Default::default();
        visits.observe(s, inc.vid, &seen, &order, |m, d| changes.push((m, d)));
        // The changes of the event's own minute (the usual case) ride along with its counts,
        // in the same pass over its buckets; the others get one pass per minute.
        changes.sort_unstable_by_key(|c| (c.0 != inc.minute, c.0));
        let own = changes.iter().take_while(|c| c.0 == inc.minute).count();
        let (same, other) = changes.split_at(own);
        self.apply_counts(inc, site, key, aux, now_min, same, Some(interned));
        for group in other.chunk_by(|a, b| a.0 == b.0) {
            let at = Inc {
                minute: group[0].0,
                ..*inc
            };
            let touch = || page_keys(group.iter().map(|(_, d)| d));
            self.each_bucket_with(&at, now_min, touch, |b, _| {
                for (_, d) in group {
                    visit_delta(b, s, d);
                }
            });
        }
        if let Some(r) = self.recording.as_deref_mut() {
            for (minute, d) in &changes {
                let at = Inc {
                    minute: *minute,
                    ..*inc
                };
                let page = match *d {
                    Delta::Entry(u, _) | Delta::Exit(u, _) => self.urls.name(u),
                    Delta::Profile(p, _) => self.profiles.split(p).1,
                    Delta::Counts(_) => "",
                };
                r.apply_visit_change(&at, site, d, page, now_min);
            }
        }
    }

    /// The id of url `name` (of `site`), interned if new. (A record's url increment and its
    /// visitor's pageview name the same url: on the shard that owns both the second costs a
    /// compare, see [`Names`].)
    fn intern_url(&mut self, name: &str, site: &str) -> u32 {
        let (id, new) = self.urls.intern_again(name);
        if new {
            let (s, _) = self.sites.intern(site);
            self.url_site.push(s);
        }
        id
    }

    /// Takes the visits in progress of `from` (another state: an old owner before a
    /// re-partition, or a recomputation), translating its site and url ids into this one's.
    pub fn take_visits(&mut self, from: &Aggregates) {
        let (sites, urls, url_site) = (&mut self.sites, &mut self.urls, &mut self.url_site);
        let profiles = &mut self.profiles;
        self.visits.take_from(&from.visits, |kind, id| match kind {
            IdKind::Site => sites.intern(from.sites.name(id)).0,
            IdKind::Url => {
                let (u, new) = urls.intern(from.urls.name(id));
                if new {
                    let s = from.url_site.get(id as usize).copied().unwrap_or(0);
                    url_site.push(sites.intern(from.sites.name(s)).0);
                }
                u
            }
            IdKind::Profile => {
                let (site, key) = from.profiles.split(id);
                let s = sites.intern(site).0;
                profiles.intern(s, site, key)
            }
        });
    }

    /// Replaces the visits in progress with `from`'s (see [`Aggregates::take_visits`]).
    pub fn replace_visits(&mut self, from: &Aggregates) {
        self.visits = Visits::new(self.cfg.visits);
        self.take_visits(from);
    }

    /// Forgets the visits of repair records (once every source's replay has arrived, no
    /// more come).
    pub fn end_repairs(&mut self) {
        if !self.repair_visits.is_empty() {
            self.repair_visits = Visits::new(self.cfg.visits);
        }
    }

    /// Adds a change made by another state (the live one, to a recording) of what visits
    /// starting in `at.minute` add: its page or profile, when it has one, named `page` there
    /// (a profile by its key).
    fn apply_visit_change(&mut self, at: &Inc, site: &str, d: &Delta, page: &str, now_min: i64) {
        let (s, _) = self.sites.intern(site);
        let d = match *d {
            Delta::Counts(_) => *d,
            Delta::Entry(_, n) => Delta::Entry(self.intern_url(page, site), n),
            Delta::Exit(_, n) => Delta::Exit(self.intern_url(page, site), n),
            Delta::Profile(_, c) => Delta::Profile(self.profiles.intern(s, site, page), c),
        };
        self.each_bucket_with(
            at,
            now_min,
            || page_keys([&d]),
            |b, _| visit_delta(b, s, &d),
        );
    }

    /// Applies one increment's counts: for a url's pageview by its referrer domain (`aux`), for
    /// a visitor's its pageview's profile (`aux`, a profile key) and the changes `visits` of its
    /// visit (all of the increment's minute; `interned`: its site's and profile's ids when the
    /// caller has them). An empty `aux` is none.
    #[allow(clippy::too_many_arguments)]
    fn apply_counts(
        &mut self,
        inc: &Inc,
        site: &str,
        key: &str,
        aux: &str,
        now_min: i64,
        visits: &[(i64, Delta)],
        interned: Option<Interned>,
    ) {
        let pv = u32::from(inc.pageview);
        match inc.kind {
            IncKind::Url => {
                let id = match interned {
                    Some(Interned::Url(id)) => id,
                    _ => self.intern_url(key, site),
                };
                let mut visitor =
                    MinuteVisitor::new((inc.has_vid && self.cfg.url_visitors).then_some(inc.vid));
                let by_channel = (self.cfg.url_channels && inc.pageview && inc.channel != 0)
                    .then_some(cells::url_channel_key(id, inc.channel));
                // A url's second key is its pageview's referrer domain.
                let by_ref = (self.cfg.url_referrers && inc.pageview && !aux.is_empty())
                    .then(|| cells::url_ref_key(id, self.refs.intern(aux).0));
                let touch = || {
                    [
                        Some(UrlKey::Url(id)),
                        by_channel.map(UrlKey::Channel),
                        by_ref.map(UrlKey::Ref),
                    ]
                    .into_iter()
                    .flatten()
                    .collect()
                };
                self.each_bucket_with(inc, now_min, touch, |b, _| {
                    let c = b.urls.entry(id).or_default();
                    c.views = c.views.saturating_add(pv);
                    c.hits = c.hits.saturating_add(1);
                    c.engaged = c.engaged.saturating_add(inc.engaged);
                    visitor.insert(&mut c.visitors);
                    if let Some(k) = by_channel {
                        let v = b.url_channels.entry(k).or_default();
                        *v = v.saturating_add(1);
                    }
                    if let Some(k) = by_ref {
                        let v = b.url_refs.entry(k).or_default();
                        *v = v.saturating_add(1);
                    }
                });
            }
            IncKind::Ref => {
                let (s, _) = self.sites.intern(site);
                // Usually the referrer its url's increment just named (`by_ref` above).
                let (r, _) = self.refs.intern_again(key);
                let k = PairKey::new(s, r);
                self.each_bucket(inc, now_min, |b, _| {
                    let c = b.refs.entry(k).or_default();
                    *c = c.saturating_add(pv);
                });
            }
            IncKind::Profile => {
                let (s, _) = self.sites.intern(site);
                let id = self.profiles.intern(s, site, key);
                let mut visitor = MinuteVisitor::new(inc.has_vid.then_some(inc.vid));
                self.each_bucket(inc, now_min, |b, _| {
                    let c = b.profiles.entry(id).or_default();
                    // A pageview's profile counts views, a custom event's hits.
                    c.views = c.views.saturating_add(pv);
                    c.hits = c.hits.saturating_add(1 - pv);
                    visitor.insert(&mut c.visitors);
                });
            }
            IncKind::Visitor => {
                // A pageview's profile, counted in the same pass (see `IncKind::Profile`).
                let (s, profile) = match interned {
                    Some(Interned::Visitor { site: s, profile }) => (s, profile),
                    _ => {
                        let s = self.sites.intern(site).0;
                        (
                            s,
                            (!aux.is_empty()).then(|| self.profiles.intern(s, site, aux)),
                        )
                    }
                };
                let mut visitor = MinuteVisitor::new(inc.has_vid.then_some(inc.vid));
                let touch = || page_keys(visits.iter().map(|(_, d)| d));
                self.each_bucket_with(inc, now_min, touch, |b, _| {
                    if let Some(id) = profile {
                        let c = b.profiles.entry(id).or_default();
                        c.views = c.views.saturating_add(pv);
                        c.hits = c.hits.saturating_add(1 - pv);
                        visitor.insert(&mut c.visitors);
                    }
                    for c in [b.sites.entry(s).or_default(), &mut b.all] {
                        c.views += u64::from(pv);
                        c.hits += 1;
                        c.engaged += u64::from(inc.engaged);
                        if inc.has_vid {
                            c.uniques.insert_hash(inc.vid);
                        }
                        for (_, d) in visits {
                            if let Delta::Counts(v) = d {
                                c.visits.add(v);
                            }
                        }
                    }
                    for (_, d) in visits {
                        if !matches!(d, Delta::Counts(_)) {
                            visit_delta(b, s, d);
                        }
                    }
                });
            }
        }
    }

    /// The sealed files that left their window since the last call: the caller deletes them
    /// once a checkpoint that no longer lists them is durable.
    pub fn take_retired(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.retired)
    }

    /// Hands back what [`Aggregates::take_retired`] gave when the checkpoint failed.
    pub fn retire(&mut self, paths: Vec<PathBuf>) {
        self.retired.extend(paths);
    }

    /// Whether a checkpoint at `now_min` has anything to write: a changed bucket, a new name,
    /// something to seal or a sealed file to retire.
    pub fn is_dirty(&self, now_min: i64) -> bool {
        self.written_names != self.name_counts()
            || self.minutes.iter().any(|(_, b)| b.dirty)
            || self.hours.iter().any(|(_, b)| b.dirty)
            || self.days.iter().any(|(_, b)| b.dirty)
            || !self.retired.is_empty()
            || {
                let (h, d) = self.seal_candidates(now_min);
                !h.is_empty() || !d.is_empty()
            }
    }

    /// Marks every bucket clean (a state just loaded from its checkpoints).
    pub fn mark_clean(&mut self) {
        for t in [&mut self.minutes, &mut self.hours, &mut self.days] {
            for (_, b) in t.iter_mut() {
                b.dirty = false;
            }
        }
    }

    /// The numbers of the buckets held at one resolution (in memory or sealed), ascending.
    pub fn bucket_numbers(&self, res: Res) -> Vec<i64> {
        let mut v: Vec<i64> = self.tier(res).iter().map(|(n, _)| n).collect();
        v.extend(self.sealed.keys().filter(|k| k.0 == res).map(|k| k.1));
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The numbers of the buckets either state holds at one resolution, sorted, once each:
    /// what a bucket-by-bucket comparison or replacement walks.
    pub fn bucket_numbers_of_both(&self, other: &Aggregates, res: Res) -> Vec<i64> {
        let mut v = self.bucket_numbers(res);
        v.extend(other.bucket_numbers(res));
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Replaces this state's bucket `number` at `res` (minute or hour) with `other`'s —
    /// empty when `other` has none — translating `other`'s name ids into this state's (new
    /// names are interned). Marks it dirty. A sealed hour is unsealed (its file retired), and
    /// so is its sealed day when every hour of that day is still inside the hour window at
    /// `now_min` (the next checkpoint seals it again from its hours); an older day keeps what
    /// it was computed from. What `pixeld rebuild-aggregates` uses to put buckets recomputed
    /// from the log into a loaded store.
    pub fn replace_bucket(&mut self, other: &Aggregates, res: Res, number: i64, now_min: i64) {
        // Replaced, a half-folded minute would leave its hour with part of its url cells.
        self.finish_folds();
        let b = self.translated(other, res, number);
        if res == Res::Hour {
            if let Some(Sealed::File(f)) = self.sealed.remove(&(Res::Hour, number)) {
                self.retired.push(f.path.clone());
            }
            self.repair_hours.retain(|&h| h != number);
            let day = number.div_euclid(24);
            if day * 24 >= self.hour_floor(now_min).div_euclid(60)
                && self.sealed.contains_key(&(Res::Day, day))
            {
                // Its late increments are dropped with it: its hours hold them too.
                self.unseal(Res::Day, day, None);
            }
        }
        if let Some(slot) = self.tier_mut(res).get_mut(number) {
            *slot = b;
            if res == Res::Hour {
                // Every part of `other`'s hour, its minutes included.
                slot.folded_upto = (number + 1) * 60;
            }
        }
        self.minute_changed(res, number);
    }

    /// A minute bucket's cells changed from outside the hot path. An hour that has not
    /// folded it reads (and writes) it as it now is; one that has keeps the counts it folded
    /// — what a recomputation leaves in an hour it does not replace — and takes its visitors
    /// (a union, which the hot path relies on: a visitor the minute knows is in the hour).
    fn minute_changed(&mut self, res: Res, number: i64) {
        if res != Res::Minute {
            return;
        }
        if let Some(h) = self.hours.get_mut(number.div_euclid(60)) {
            if number < h.folded_upto {
                if let Some(m) = self.minutes.get(number) {
                    h.merge_visitors(m);
                }
            }
            h.dirty = true;
        }
    }

    /// Whether a checkpoint is writing a sealed file (an hour or day in `Sealed::Writing`).
    pub fn is_sealing(&self) -> bool {
        self.sealed
            .values()
            .any(|s| matches!(s, Sealed::Writing(_)))
    }

    /// Replaces every minute bucket inside `[lo, hi)` (and inside the minute window at
    /// `now_min`) and every hour bucket wholly inside it with `expected`'s — each plus
    /// `add_back`'s bucket, when given — and returns how many of each it replaced: what
    /// `pixeld rebuild-aggregates` does to each owner, offline and on a running server (where
    /// `add_back` holds what was applied while the logs were read).
    pub fn replace_range(
        &mut self,
        expected: &Aggregates,
        (lo, hi): (i64, i64),
        now_min: i64,
        add_back: Option<&Aggregates>,
    ) -> (u64, u64) {
        let mut replaced = (0, 0);
        for res in [Res::Minute, Res::Hour] {
            let hour = res == Res::Hour;
            for b in self.bucket_numbers_of_both(expected, res) {
                let inside = if hour {
                    b * 60 >= lo && b.saturating_add(1).saturating_mul(60) <= hi
                } else {
                    b >= lo && b < hi && b >= self.minute_floor(now_min)
                };
                if !inside {
                    continue;
                }
                self.replace_bucket(expected, res, b, now_min);
                if let Some(during) = add_back {
                    self.add_bucket(during, res, b);
                }
                if hour {
                    replaced.1 += 1;
                } else {
                    replaced.0 += 1;
                }
            }
        }
        replaced
    }

    /// `other`'s bucket `number` at `res`, every part merged, in this state's name ids (new
    /// names are interned), marked dirty.
    fn translated(&mut self, other: &Aggregates, res: Res, number: i64) -> Bucket {
        let mut b = Bucket {
            dirty: true,
            ..Bucket::default()
        };
        let o = other.materialize(res, number);
        b.urls.reserve(o.urls.len());
        for (&id, cell) in &o.urls {
            let nid = self.url_from(other, id);
            b.urls.insert(nid, cell.clone());
        }
        for (&k, &v) in &o.refs {
            let (s, _) = self.sites.intern(other.sites.name(k.hi()));
            let (r, _) = self.refs.intern(other.refs.name(k.lo()));
            b.refs.insert(PairKey::new(s, r), v);
        }
        for (&id, cell) in &o.sites {
            let (s, _) = self.sites.intern(other.sites.name(id));
            b.sites.insert(s, cell.clone());
        }
        b.all = o.all.clone();
        for (&id, cell) in &o.pages {
            b.pages.insert(self.url_from(other, id), *cell);
        }
        for (&id, cell) in &o.profiles {
            let nid = self.profile_from(other, id);
            b.profiles.entry(nid).or_default().add(cell);
        }
        for (&k, &v) in &o.url_channels {
            let (id, channel) = cells::url_channel_of(k);
            let nid = self.url_from(other, id);
            b.url_channels
                .insert(cells::url_channel_key(nid, channel), v);
        }
        for (&id, c) in &o.profile_visits {
            let nid = self.profile_from(other, id);
            b.profile_visits.entry(nid).or_default().add(c);
        }
        for (&k, &v) in &o.url_refs {
            let (id, r) = cells::url_ref_of(k);
            let nid = self.url_from(other, id);
            let (nr, _) = self.refs.intern(other.refs.name(r));
            b.url_refs.insert(cells::url_ref_key(nid, nr), v);
        }
        b
    }

    /// The id here of `other`'s url `id` (another state's: an old owner, a recomputation),
    /// interned with its site if new.
    pub(crate) fn url_from(&mut self, other: &Aggregates, id: u32) -> u32 {
        let (nid, new) = self.urls.intern(other.urls.name(id));
        if new {
            let site = other.url_site.get(id as usize).copied().unwrap_or(0);
            let (s, _) = self.sites.intern(other.sites.name(site));
            self.url_site.push(s);
        }
        nid
    }

    /// The id here of `other`'s profile `id`, interned with its site if new.
    pub(crate) fn profile_from(&mut self, other: &Aggregates, id: u32) -> u32 {
        let (site, key) = other.profiles.split(id);
        let (s, _) = self.sites.intern(site);
        self.profiles.intern(s, site, key)
    }

    /// Adds `other`'s bucket `number` at `res` (minute or hour) to this state's, translating
    /// ids: what a live `rebuild-aggregates` adds back onto a recomputed bucket (the
    /// increments applied while it ran).
    pub fn add_bucket(&mut self, other: &Aggregates, res: Res, number: i64) {
        let b = self.translated(other, res, number);
        if b.is_empty() {
            return;
        }
        if let Some(slot) = self.tier_mut(res).get_mut(number) {
            slot.merge(&b);
            slot.dirty = true;
        }
        self.minute_changed(res, number);
    }

    /// The parts of hour `h`: its in-memory bucket, the minutes it has not folded, and its
    /// sealed part.
    fn hour_parts<'a>(&'a self, h: i64, out: &mut Vec<PartRef<'a>>) {
        let mut folded = h * 60;
        if let Some(b) = self.hours.get(h) {
            out.push(PartRef::Mem(b));
            folded = b.folded_upto;
            if let Some(m) = folding_minute(&self.minutes, h, b) {
                out.push(PartRef::UrlTail(m));
            }
        }
        out.extend(unfolded_minutes(&self.minutes, h, folded).map(PartRef::Mem));
        match self.sealed.get(&(Res::Hour, h)) {
            Some(Sealed::Writing(Some(b))) => out.push(PartRef::Mem(b)),
            Some(Sealed::File(f)) => out.push(PartRef::File(f)),
            _ => {}
        }
    }

    /// The parts of day `d`: its sealed file and late increments; or, until it is sealed (or
    /// while its file is being written), its hours and what was counted into the day directly.
    fn day_parts<'a>(&'a self, d: i64, out: &mut Vec<PartRef<'a>>) {
        let sealed = self.sealed.get(&(Res::Day, d));
        match sealed {
            Some(Sealed::File(f)) => out.push(PartRef::File(f)),
            // Being written: what was counted into the day directly (no hour holds it).
            Some(Sealed::Writing(Some(b))) => out.push(PartRef::Mem(b)),
            _ => {}
        }
        // Being written: its hours hold everything (late increments go to both), so the
        // day's own slot is not read until the file is mapped.
        if !matches!(sealed, Some(Sealed::Writing(_))) {
            if let Some(b) = self.days.get(d) {
                out.push(PartRef::Mem(b));
            }
        }
        if !matches!(sealed, Some(Sealed::File(_))) {
            for h in d * 24..(d + 1) * 24 {
                self.hour_parts(h, out);
            }
        }
    }

    /// The parts covering minutes `from..to`: whole days where the range covers them, whole
    /// hours elsewhere where it covers them, minutes in between (the caller widens ranges
    /// older than the minute window to hours, and older than the hour window to days).
    fn parts(&self, from: i64, to: i64) -> Vec<PartRef<'_>> {
        let mut out = Vec::new();
        let mut m = from;
        while m < to {
            if m.rem_euclid(1440) == 0 && m + 1440 <= to {
                self.day_parts(m.div_euclid(1440), &mut out);
                m += 1440;
            } else if m.rem_euclid(60) == 0 && m + 60 <= to {
                self.hour_parts(m.div_euclid(60), &mut out);
                m += 60;
            } else {
                if let Some(b) = self.minutes.get(m) {
                    out.push(PartRef::Mem(b));
                }
                m += 1;
            }
        }
        out
    }

    /// One bucket at `res`, every part merged (what `check --aggregates` compares and
    /// `rebuild-aggregates` copies).
    pub fn materialize(&self, res: Res, number: i64) -> Bucket {
        let mut parts = Vec::new();
        match res {
            Res::Minute => {
                if let Some(b) = self.minutes.get(number) {
                    parts.push(PartRef::Mem(b));
                }
            }
            Res::Hour => self.hour_parts(number, &mut parts),
            Res::Day => self.day_parts(number, &mut parts),
        }
        let mut out = Bucket::default();
        for p in parts {
            match p {
                PartRef::Mem(b) => out.merge(b),
                PartRef::File(f) => out.merge(&f.to_bucket()),
                PartRef::UrlTail(b) => out.merge_url_tail(b),
            }
        }
        out
    }

    /// One bucket's cells as sorted lines of text keyed by name, not id (so that two states
    /// built in different orders compare): what `pixeld check --aggregates` compares.
    pub fn bucket_lines(&self, res: Res, number: i64) -> Vec<String> {
        let b = self.materialize(res, number);
        let mut out = self.key_lines(&b);
        for (id, c) in &b.sites {
            out.push(format!("site {:?}: {}", self.sites.name(*id), site_line(c)));
        }
        if b.all.hits > 0 {
            out.push(format!("all sites: {}", site_line(&b.all)));
        }
        for (id, c) in b.pages.iter().filter(|(_, c)| **c != PageCell::default()) {
            out.push(page_line(self.urls.name(*id), c));
        }
        for (id, c) in &b.profiles {
            out.push(profile_line(self.profiles.names.name(*id), c));
        }
        for (id, c) in b.profile_visits.iter().filter(|(_, c)| !c.is_zero()) {
            out.push(profile_visits_line(self.profiles.names.name(*id), c));
        }
        out.sort_unstable();
        out
    }

    /// [`Aggregates::bucket_lines`] without the site cells: the url and referrer cells, each
    /// of which lives on exactly one owner whatever the history of the shard count.
    pub fn key_bucket_lines(&self, res: Res, number: i64) -> Vec<String> {
        let mut out = self.key_lines(&self.materialize(res, number));
        out.sort_unstable();
        out
    }

    /// One bucket's site cells by site name, every part merged, its all-sites cell and its
    /// page cells (entries and exits, which live with the visitors too): what
    /// `pixeld check --aggregates` merges over the owners (a site's visitors may be spread
    /// over several owners after a change of the shard count; the union is the same).
    pub fn site_cells(&self, res: Res, number: i64) -> SiteCells {
        let b = self.materialize(res, number);
        let sites = b
            .sites
            .iter()
            .map(|(id, c)| (self.sites.name(*id).to_string(), c.clone()))
            .collect();
        let pages = b
            .pages
            .iter()
            .map(|(id, c)| (self.urls.name(*id).to_string(), *c))
            .collect();
        let profiles = b
            .profiles
            .iter()
            .map(|(id, c)| (self.profiles.names.name(*id).to_string(), c.clone()))
            .collect();
        let profile_visits = b
            .profile_visits
            .iter()
            .map(|(id, c)| (self.profiles.names.name(*id).to_string(), *c))
            .collect();
        (sites, b.all, pages, profiles, profile_visits)
    }

    fn key_lines(&self, b: &Bucket) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (id, c) in &b.urls {
            out.push(format!(
                "url {:?}: views {} hits {} engaged {} visitors {}",
                self.urls.name(*id),
                c.views,
                c.hits,
                c.engaged,
                uniques_line(&c.visitors.to_uniques())
            ));
        }
        for (k, v) in &b.refs {
            out.push(format!(
                "referrer {:?} of site {:?}: views {v}",
                self.refs.name(k.lo()),
                self.sites.name(k.hi())
            ));
        }
        for (&k, v) in &b.url_channels {
            let (url, channel) = cells::url_channel_of(k);
            out.push(format!(
                "url {:?} from {}: views {v}",
                self.urls.name(url),
                channel_name(channel)
            ));
        }
        for (&k, v) in &b.url_refs {
            let (url, r) = cells::url_ref_of(k);
            out.push(format!(
                "url {:?} referred by {:?}: views {v}",
                self.urls.name(url),
                self.refs.name(r)
            ));
        }
        out
    }

    /// Folds the minute buckets before `upto` into their hours (every cell: counts add,
    /// visitors unite), at most `budget` minute buckets, the oldest hours first, and ends
    /// any fold left half done by [`Aggregates::fold_ended`]. The hot path updates a minute
    /// alone while its hour has not folded it (one update per event instead of two), every
    /// read of the hour adds its unfolded minutes, and a checkpoint writes the hour with
    /// them; so a minute must be folded exactly once — `folded_upto` says which were. Called
    /// without a budget before minutes leave the window, before hours are sealed and before
    /// buckets are replaced. Returns how many minute buckets it folded (of the budget: empty
    /// ones too).
    pub fn fold_minutes(&mut self, upto: i64, budget: usize) -> usize {
        self.fold_until(upto, budget, None).0
    }

    /// Folds like [`Aggregates::fold_minutes`]; with a `deadline`, a minute with more than
    /// [`FOLD_PART_CELLS`] cells keyed by a url is folded in slices ([`cells::UrlFold`]):
    /// everything else at once, those partition by partition until the deadline, the rest at the
    /// next call. Returns how many minute buckets it began to fold and whether it stopped
    /// at the deadline.
    fn fold_until(
        &mut self,
        upto: i64,
        mut budget: usize,
        deadline: Option<std::time::Instant>,
    ) -> (usize, bool) {
        let mut folded = 0;
        let minutes = &mut self.minutes;
        let slices = &mut self.fold_slices;
        let mut hours: Vec<(i64, &mut Bucket)> = self
            .hours
            .iter_mut()
            .filter(|(h, b)| {
                let half = b.folded_upto - 1;
                (h * 60).max(b.folded_upto) < upto.min((h + 1) * 60)
                    || (half >= h * 60 && half < (h + 1) * 60 && half < upto)
            })
            .collect();
        hours.sort_unstable_by_key(|(h, _)| *h);
        for (h, hb) in hours {
            // A minute left half folded first, whole — when it is one of those asked for
            // (eviction asks only for minutes leaving the window).
            let half = hb.folded_upto - 1;
            if half >= h * 60 && half < upto {
                if let Some(mb) = minutes
                    .get_held_mut(half)
                    .filter(|b| b.url_fold.0.is_some())
                {
                    if !fold_url_parts(hb, mb, deadline, false, slices) {
                        return (folded, true);
                    }
                }
            }
            let end = ((h + 1) * 60).min(upto);
            let mut m = (h * 60).max(hb.folded_upto);
            while m < end {
                if let Some(mb) = minutes.get_held_mut(m) {
                    if budget == 0 {
                        break;
                    }
                    budget -= 1;
                    folded += 1;
                    if deadline.is_some() && mb.url_group_len() > FOLD_PART_CELLS {
                        hb.merge_except_urls(mb);
                        let parts = mb.url_group_len().div_ceil(FOLD_PART_CELLS);
                        mb.url_fold.0 = Some(Box::new(cells::UrlFold::plan(
                            mb,
                            u32::try_from(parts).unwrap_or(u32::MAX),
                        )));
                        hb.folded_upto = m + 1;
                        if !fold_url_parts(hb, mb, deadline, true, slices) {
                            return (folded, true);
                        }
                    } else if !mb.is_empty() {
                        hb.merge(mb);
                    }
                }
                m += 1;
                hb.folded_upto = m;
            }
            hb.folded_upto = hb.folded_upto.max(m);
            if budget == 0 {
                break;
            }
        }
        (folded, false)
    }

    /// Completes every fold left half done ([`Aggregates::fold_ended`]), folding nothing
    /// else: before anything outside the hot path rewrites a minute or an hour.
    pub fn finish_folds(&mut self) {
        let half: Vec<i64> = self
            .hours
            .iter()
            .filter_map(|(h, b)| folding_minute(&self.minutes, h, b).map(|_| b.folded_upto))
            .collect();
        for upto in half {
            self.fold_minutes(upto, 0);
        }
    }

    /// Whether a minute is being folded in slices (the ticker then comes back sooner).
    pub fn folding(&self) -> bool {
        self.hours
            .iter()
            .any(|(h, b)| folding_minute(&self.minutes, h, b).is_some())
    }

    /// What the ticker folds in one pass: the minute buckets before `upto`, [`FOLD_BUDGET`] at
    /// a time, until none is left or `slice` has passed — a large minute's url cells in
    /// slices, left half folded at the end of `slice` ([`cells::UrlFold`]). Returns how many
    /// it began to fold.
    pub fn fold_ended(&mut self, upto: i64, slice: std::time::Duration) -> usize {
        let started = std::time::Instant::now();
        let deadline = started + slice;
        let mut folded = 0;
        loop {
            let (n, stopped) = self.fold_until(upto, FOLD_BUDGET, Some(deadline));
            folded += n;
            if stopped || n < FOLD_BUDGET || started.elapsed() >= slice {
                return folded;
            }
        }
    }

    /// Frees the buckets that left the windows at `now_min` (their minutes folded into
    /// their hours first); sealed files that left go to [`Aggregates::take_retired`].
    pub fn evict(&mut self, now_min: i64) {
        self.fold_minutes(self.minute_floor(now_min), usize::MAX);
        let (hour, day) = (
            self.hour_floor(now_min).div_euclid(60),
            self.day_floor(now_min).div_euclid(1440),
        );
        self.minutes.evict_before(self.minute_floor(now_min));
        self.hours.evict_before(hour);
        self.days.evict_before(day);
        let gone: Vec<(Res, i64)> = self
            .sealed
            .keys()
            .filter(|k| k.1 < if k.0 == Res::Day { day } else { hour })
            .copied()
            .collect();
        for k in gone {
            if let Some(Sealed::File(f)) = self.sealed.remove(&k) {
                self.retired.push(f.path.clone());
            }
        }
    }

    /// This shard's top `limit` keys of `dim` over `from..to`, optionally of one site.
    pub fn top(
        &self,
        dim: Dim,
        from: i64,
        to: i64,
        site: Option<&str>,
        limit: usize,
    ) -> Vec<Ranked> {
        let site_id = match site {
            Some(s) => match self.sites.get(s) {
                Some(id) => Some(id),
                None => return Vec::new(),
            },
            None => None,
        };
        let parts = self.parts(from, to);
        if matches!(dim, Dim::UrlChannel | Dim::UrlRef) {
            return self.top_url_pairs(dim, &parts, site_id, limit);
        }
        let (names, sums) = match dim {
            Dim::EntryPage | Dim::ExitPage => {
                let mut acc = vec![0i64; self.urls.len()];
                let exits = dim == Dim::ExitPage;
                let mut add = |id: u32, c: &PageCell| {
                    let keep = site_id.is_none_or(|s| self.url_site.get(id as usize) == Some(&s));
                    if let Some(a) = acc.get_mut(id as usize).filter(|_| keep) {
                        *a += i64::from(if exits { c.exits } else { c.entries });
                    }
                };
                for p in &parts {
                    match p {
                        PartRef::Mem(b) => b.pages.iter().for_each(|(&id, c)| add(id, c)),
                        PartRef::File(f) => f.pages().for_each(|(id, c)| add(id, &c)),
                        PartRef::UrlTail(b) => url_tail(b)
                            .flat_map(|k| &k.pages)
                            .filter_map(|id| b.pages.get(id).map(|c| (*id, c)))
                            .for_each(|(id, c)| add(id, c)),
                    }
                }
                let acc = acc.into_iter().map(|x| x.max(0) as u64).collect();
                (&self.urls, acc)
            }
            // (The url × channel and url × referrer pairs were answered above.)
            Dim::Url | Dim::UrlEngaged | Dim::UrlChannel | Dim::UrlRef => {
                let engaged = dim == Dim::UrlEngaged;
                let mut acc = vec![0u64; self.urls.len()];
                let mut add = |id: u32, c: &UrlCell| {
                    let views = if engaged { c.engaged } else { c.views };
                    let keep = site_id.is_none_or(|s| self.url_site.get(id as usize) == Some(&s));
                    if keep {
                        if let Some(a) = acc.get_mut(id as usize) {
                            *a += u64::from(views);
                        }
                    }
                };
                for p in &parts {
                    match p {
                        PartRef::File(f) => f.urls().for_each(|(id, c)| add(id, &c)),
                        mem => mem.mem_urls().for_each(|(id, c)| add(id, c)),
                    }
                }
                (&self.urls, acc)
            }
            Dim::UrlVisitors | Dim::UrlAvgEngaged => {
                let n = self.urls.len();
                let mut unions: Vec<VisitorUnion<'_>> = Vec::new();
                unions.resize_with(n, VisitorUnion::default);
                let mut engaged = vec![0u64; n];
                let keep =
                    |id: u32| site_id.is_none_or(|s| self.url_site.get(id as usize) == Some(&s));
                fn slot<'v, 'a>(
                    unions: &'v mut [VisitorUnion<'a>],
                    engaged: &'v mut [u64],
                    id: u32,
                ) -> Option<(&'v mut VisitorUnion<'a>, &'v mut u64)> {
                    let i = id as usize;
                    unions.get_mut(i).zip(engaged.get_mut(i))
                }
                for p in &parts {
                    match *p {
                        PartRef::Mem(_) | PartRef::UrlTail(_) => {
                            for (id, c) in p.mem_urls().filter(|(id, _)| keep(*id)) {
                                if let Some((u, e)) = slot(&mut unions, &mut engaged, id) {
                                    *e += u64::from(c.engaged);
                                    u.add(Cow::Borrowed(&c.visitors));
                                }
                            }
                        }
                        PartRef::File(f) => {
                            for (id, c) in f.urls_with_visitors().filter(|(id, _)| keep(*id)) {
                                if let Some((u, e)) = slot(&mut unions, &mut engaged, id) {
                                    *e += u64::from(c.engaged);
                                    u.add(Cow::Owned(c.visitors));
                                }
                            }
                        }
                    }
                }
                let acc = unions
                    .iter()
                    .zip(&engaged)
                    .map(|(u, &e)| match (dim, u.count().0) {
                        (Dim::UrlVisitors, v) => v,
                        (_, 0) => 0,
                        // Ranked in milliseconds per visitor.
                        (_, v) => e.saturating_mul(1000) / v,
                    })
                    .collect();
                (&self.urls, acc)
            }
            Dim::RefDomain => {
                let mut acc = vec![0u64; self.refs.len()];
                let mut add = |k: u64, v: u32| {
                    if site_id.is_none_or(|s| (k >> 32) as u32 == s) {
                        if let Some(a) = acc.get_mut((k & 0xffff_ffff) as usize) {
                            *a += u64::from(v);
                        }
                    }
                };
                for p in &parts {
                    match p {
                        PartRef::Mem(b) => b.refs.iter().for_each(|(&k, &v)| add(k.get(), v)),
                        PartRef::File(f) => f.refs().for_each(|(k, v)| add(k, v)),
                        PartRef::UrlTail(_) => {}
                    }
                }
                (&self.refs, acc)
            }
            Dim::Site => {
                let mut acc = vec![0u64; self.sites.len()];
                let mut add = |id: u32, views: u64| {
                    if site_id.is_none_or(|s| s == id) {
                        if let Some(a) = acc.get_mut(id as usize) {
                            *a += views;
                        }
                    }
                };
                for p in &parts {
                    match p {
                        PartRef::Mem(b) => b.sites.iter().for_each(|(&id, c)| add(id, c.views)),
                        PartRef::File(f) => f.site_views().for_each(|(id, v)| add(id, v)),
                        PartRef::UrlTail(_) => {}
                    }
                }
                (&self.sites, acc)
            }
        };
        // Rank ids without building a String per key; names only for the winners.
        let ids: Vec<(u64, u32)> = sums
            .iter()
            .enumerate()
            .filter(|(_, &v)| v > 0)
            .map(|(id, &v)| (v, id as u32))
            .collect();
        rank(ids, limit, |id| names.name(id))
            .into_iter()
            .map(|(views, id)| Ranked {
                key: names.name(id).to_string(),
                views,
            })
            .collect()
    }

    /// [`Aggregates::top`] of [`Dim::UrlChannel`] or [`Dim::UrlRef`]: the url × channel or
    /// url × referrer cells of `parts` summed, ranked.
    fn top_url_pairs(
        &self,
        dim: Dim,
        parts: &[PartRef<'_>],
        site_id: Option<u32>,
        limit: usize,
    ) -> Vec<Ranked> {
        let by_ref = dim == Dim::UrlRef;
        let split = |k: u64| {
            if by_ref {
                cells::url_ref_of(k.into())
            } else {
                let (url, channel) = cells::url_channel_of(k.into());
                (url, u32::from(channel))
            }
        };
        let mut acc: HashMap<u64, u64> = HashMap::new();
        let mut add = |k: u64, v: u32| {
            let (url, _) = split(k);
            if site_id.is_none_or(|s| self.url_site.get(url as usize) == Some(&s)) {
                *acc.entry(k).or_default() += u64::from(v);
            }
        };
        for p in parts {
            match (p, by_ref) {
                (PartRef::File(f), false) => f.url_channels().for_each(|(k, v)| add(k, v)),
                (PartRef::File(f), true) => f.url_refs().for_each(|(k, v)| add(k, v)),
                (mem, _) => mem.mem_url_pairs(by_ref).for_each(|(k, v)| add(k, v)),
            }
        }
        let key = |k: u64| {
            let (url, other) = split(k);
            let other = if by_ref {
                self.refs.name(other)
            } else {
                channel_name(other as u8)
            };
            format!(
                "{}{}{}",
                self.urls.name(url),
                crate::parse::event::dims::SEP,
                other
            )
        };
        let mut ranked: Vec<Ranked> = acc
            .into_iter()
            .filter(|&(_, v)| v > 0)
            .map(|(k, views)| Ranked { key: key(k), views })
            .collect();
        ranked.sort_unstable_by(|a, b| b.views.cmp(&a.views).then_with(|| a.key.cmp(&b.key)));
        ranked.truncate(limit);
        ranked
    }

    /// What this shard holds of each of `urls` over `from..to` (its url cells for the urls it
    /// owns, the entries and exits of its visitors' visits for any), optionally of one site.
    pub fn url_stats(
        &self,
        from: i64,
        to: i64,
        urls: &[String],
        site: Option<&str>,
    ) -> Vec<UrlStats> {
        let site_id = site.map(|s| self.sites.get(s));
        let ids: Vec<Option<u32>> =
            urls.iter()
                .map(|u| {
                    let id = self.urls.get(u)?;
                    match site_id {
                        Some(s) => (s.is_some() && self.url_site.get(id as usize) == s.as_ref())
                            .then_some(id),
                        None => Some(id),
                    }
                })
                .collect();
        let mut out = vec![UrlStats::default(); urls.len()];
        let mut unions: Vec<VisitorUnion<'_>> = Vec::new();
        unions.resize_with(urls.len(), VisitorUnion::default);
        for p in self.parts(from, to) {
            for ((o, u), id) in out.iter_mut().zip(&mut unions).zip(&ids) {
                let Some(id) = *id else { continue };
                if let Some(c) = p.url(id) {
                    o.views += u64::from(c.views);
                    o.hits += u64::from(c.hits);
                    o.engaged += u64::from(c.engaged);
                    u.add(visitors_of(c));
                }
                if let Some(pc) = p.page(id) {
                    o.entries += i64::from(pc.entries);
                    o.exits += i64::from(pc.exits);
                }
            }
        }
        if self.cfg.url_visitors {
            for (o, u) in out.iter_mut().zip(&unions) {
                let (v, sketched) = u.count();
                (o.visitors, o.sketched) = (Some(v), sketched);
            }
        }
        out
    }

    /// This shard's totals over `from..to` (its visitors), optionally of one site.
    pub fn totals(&self, from: i64, to: i64, site: Option<&str>) -> Totals {
        let site_id = match site {
            Some(s) => match self.sites.get(s) {
                Some(id) => Some(id),
                None => {
                    return Totals {
                        uniques: Some(0),
                        ..Totals::default()
                    }
                }
            },
            None => None,
        };
        let mut t = Totals::default();
        let mut uniques: VisitorUnion<'_, Uniques> = VisitorUnion::default();
        for p in self.parts(from, to) {
            let cell: Cow<'_, SiteCell> = match (p, site_id) {
                (PartRef::Mem(b), Some(s)) => match b.sites.get(&s) {
                    Some(c) => Cow::Borrowed(c),
                    None => continue,
                },
                (PartRef::Mem(b), None) => Cow::Borrowed(&b.all),
                (PartRef::File(f), Some(s)) => match f.site(s) {
                    Some(c) => Cow::Owned(c),
                    None => continue,
                },
                (PartRef::File(f), None) => Cow::Owned(f.all()),
                (PartRef::UrlTail(_), _) => continue,
            };
            t.views += cell.views;
            t.hits += cell.hits;
            t.engaged += cell.engaged;
            t.visits.add(&cell.visits);
            uniques.add(match cell {
                Cow::Borrowed(c) => Cow::Borrowed(&c.uniques),
                Cow::Owned(c) => Cow::Owned(c.uniques),
            });
        }
        t.uniques = Some(uniques.count().0);
        t
    }

    /// Views, hits, engaged seconds and distinct visitors of one url over `from..to`.
    pub fn url_totals(&self, from: i64, to: i64, url: &str, site: Option<&str>) -> Totals {
        self.url_series(from, to, to - from, url, site)
            .into_iter()
            .next()
            .unwrap_or_default()
    }

    /// One point per `step` minutes over `from..to` of one url (looked up once).
    pub fn url_series(
        &self,
        from: i64,
        to: i64,
        step: i64,
        url: &str,
        site: Option<&str>,
    ) -> Vec<Totals> {
        let step = step.max(1);
        let n = ((to - from).max(0) + step - 1) / step;
        let none = Totals {
            per_url: true,
            uniques: self.cfg.url_visitors.then_some(0),
            ..Totals::default()
        };
        let mut out = vec![none; n as usize];
        let Some(id) = self.urls.get(url) else {
            return out;
        };
        if let Some(s) = site {
            let url_site = self.url_site.get(id as usize).map(|&s| self.sites.name(s));
            if url_site != Some(s) {
                return out;
            }
        }
        for (i, t) in out.iter_mut().enumerate() {
            let start = from + i as i64 * step;
            let mut u = VisitorUnion::default();
            for p in self.parts(start, (start + step).min(to)) {
                if let Some(c) = p.url(id) {
                    t.views += u64::from(c.views);
                    t.hits += u64::from(c.hits);
                    t.engaged += u64::from(c.engaged);
                    u.add(visitors_of(c));
                }
            }
            // The url's owner answers its visitors; the other shards none.
            if self.cfg.url_visitors {
                t.uniques = Some(u.count().0);
            }
        }
        out
    }

    /// Memory held, for the gauges and the bytes-per-cell figure.
    pub fn memory(&self) -> Memory {
        use mem::MemPart as P;
        let mut m = Memory::default();
        let mut add = |p: P, bytes: usize| m.parts[p as usize] += bytes as u64;
        let writing = self.sealed.values().filter_map(|s| match s {
            Sealed::Writing(Some(b)) => Some(&**b),
            _ => None,
        });
        let (mut cells, mut url_cells, mut url_cell_bytes) = (0, 0, 0);
        for b in self
            .minutes
            .iter()
            .chain(self.hours.iter())
            .chain(self.days.iter())
            .map(|(_, b)| b)
            .chain(writing)
        {
            cells += b.cells() as u64;
            let url_table = table_bytes(b.urls.capacity(), size_of::<(u32, UrlCell)>());
            let url_visitors = b.urls.values().map(|c| c.visitors.size_of()).sum::<usize>();
            url_cells += b.urls.len() as u64;
            url_cell_bytes += (url_table + url_visitors) as u64;
            add(P::UrlCells, url_table);
            add(P::UrlVisitors, url_visitors);
            add(
                P::Profiles,
                table_bytes(b.profiles.capacity(), size_of::<(u32, UrlCell)>())
                    + b.profiles
                        .values()
                        .map(|c| c.visitors.size_of())
                        .sum::<usize>(),
            );
            add(
                P::UrlPairs,
                table_bytes(b.url_channels.capacity(), size_of::<(PairKey, u32)>())
                    + table_bytes(b.url_refs.capacity(), size_of::<(PairKey, u32)>()),
            );
            add(
                P::RefsPagesVisits,
                table_bytes(b.refs.capacity(), size_of::<(PairKey, u32)>())
                    + table_bytes(b.pages.capacity(), size_of::<(u32, PageCell)>())
                    + table_bytes(b.profile_visits.capacity(), size_of::<(u32, VisitCounts)>()),
            );
            add(
                P::Sites,
                table_bytes(b.sites.capacity(), size_of::<(u32, SiteCell)>())
                    + b.sites.values().map(|c| c.uniques.size_of()).sum::<usize>()
                    + b.all.uniques.size_of(),
            );
            add(
                P::Other,
                b.url_fold.0.as_ref().map_or(0, |f| f.size_of()) + size_of::<Bucket>(),
            );
        }
        add(
            P::Names,
            self.sites.memory() + self.urls.memory() + self.refs.memory() + self.profiles.memory(),
        );
        add(P::Other, self.url_site.capacity() * 4);
        let visitor_bytes = self.visits.memory_bytes() + self.repair_visits.memory_bytes();
        add(P::Visits, visitor_bytes as usize);
        for s in self.sealed.values() {
            if let Sealed::File(f) = s {
                m.sealed_files += 1;
                m.sealed_bytes += f.len() as u64;
            }
        }
        m.cells = cells;
        m.url_cells = url_cells;
        m.url_cell_bytes = url_cell_bytes;
        m.dim_overflow = self.profiles.overflow;
        m.bytes = m.parts.iter().sum();
        m.visitors = (self.visits.len() + self.repair_visits.len()) as u64;
        m.visitor_bytes = visitor_bytes;
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Row<'a> = (IncKind, bool, i64, &'a str, &'a str, Option<u64>);

    fn batch(incs: &[Row<'_>]) -> Batch {
        let mut b = Batch::default();
        for &(k, pv, m, site, key, vid) in incs {
            b.push(k, pv, m, if pv { 0 } else { 10 }, site, key, vid);
        }
        b
    }

    #[test]
    fn counts_by_minute_and_hour_and_tops() {
        let now = 1_000_000;
        let mut a = Aggregates::new(AggConfig::default());
        let b = batch(&[
            (
                IncKind::Url,
                true,
                now - 1,
                "a.com",
                "https://a.com/1",
                None,
            ),
            (
                IncKind::Url,
                true,
                now - 2,
                "a.com",
                "https://a.com/1",
                None,
            ),
            (
                IncKind::Url,
                false,
                now - 2,
                "a.com",
                "https://a.com/1",
                None,
            ),
            (
                IncKind::Url,
                true,
                now - 61,
                "b.com",
                "https://b.com/x",
                None,
            ),
            (IncKind::Ref, true, now - 1, "a.com", "google.com", None),
            (IncKind::Ref, true, now - 1, "b.com", "t.co", None),
            (IncKind::Visitor, true, now - 1, "a.com", "", Some(1)),
            (IncKind::Visitor, true, now - 2, "a.com", "", Some(1)),
            (IncKind::Visitor, false, now - 2, "b.com", "", Some(2)),
        ]);
        a.apply_batch(&b, now);
        let top = a.top(Dim::Url, now - 120, now + 1, None, 10);
        assert_eq!(top[0].key, "https://a.com/1");
        assert_eq!(top[0].views, 2);
        assert_eq!(top[1].views, 1);
        assert_eq!(
            a.top(Dim::Url, now - 120, now + 1, Some("b.com"), 10).len(),
            1
        );
        assert_eq!(
            a.top(Dim::RefDomain, now - 5, now, Some("b.com"), 10)[0].key,
            "t.co"
        );
        let t = a.totals(now - 10, now, None);
        assert_eq!((t.views, t.hits, t.engaged, t.uniques), (2, 3, 10, Some(2)));
        let t = a.totals(now - 10, now, Some("a.com"));
        assert_eq!((t.views, t.uniques), (2, Some(1)));
        let u = a.url_totals(now - 10, now, "https://a.com/1", None);
        assert_eq!((u.views, u.hits, u.engaged), (2, 3, 10));
        // A range of whole hours reads the hour tier and agrees with the minutes.
        let h0 = (now - 200).div_euclid(60) * 60;
        assert_eq!(
            a.totals(h0, h0 + 240, None).hits,
            a.totals(now - 200, now + 1, None).hits
        );
    }

    /// A url's visitors: distinct per bucket, the union over a range (not the sum), ranked by
    /// `sort=visitors` and `avg_engaged_seconds`; nothing counted with `agg.url_visitors` off.
    #[test]
    fn url_visitors_are_the_union_over_a_range() {
        let now = 1_000_020;
        let u = |m: i64, url: &'static str, vid: u64| -> Row<'static> {
            (IncKind::Url, false, m, "a.com", url, Some(vid))
        };
        let rows = [
            // /1: visitors 1 and 2 in one minute, 1 again in the next hour's minute.
            u(now - 61, "https://a.com/1", 1),
            u(now - 61, "https://a.com/1", 2),
            u(now - 61, "https://a.com/1", 1),
            u(now - 1, "https://a.com/1", 1),
            // /2: three visitors, one minute each; and a hit without a visitor id.
            u(now - 3, "https://a.com/2", 3),
            u(now - 2, "https://a.com/2", 4),
            u(now - 1, "https://a.com/2", 5),
            (
                IncKind::Url,
                true,
                now - 1,
                "a.com",
                "https://a.com/2",
                None,
            ),
        ];
        for on in [true, false] {
            let mut a = Aggregates::new(AggConfig {
                url_visitors: on,
                ..AggConfig::default()
            });
            a.apply_batch(&batch(&rows), now);
            let urls = ["https://a.com/1".to_string(), "https://a.com/2".to_string()];
            let st = a.url_stats(now - 120, now + 1, &urls, None);
            let series = a.url_series(now - 120, now, 60, "https://a.com/1", None);
            let points: Vec<Option<u64>> = series.iter().map(|t| t.uniques).collect();
            if !on {
                assert_eq!((st[0].visitors, st[1].visitors), (None, None));
                assert_eq!(points, vec![None, None]);
                continue;
            }
            // 1 and 2 over the range (1 twice is one), three distinct on /2.
            assert_eq!((st[0].visitors, st[1].visitors), (Some(2), Some(3)));
            assert_eq!(points, vec![Some(2), Some(1)]);
            // Whole hours read the hour tier and agree with the minutes.
            let h0 = (now - 61).div_euclid(60) * 60;
            let hours = a.url_stats(h0, h0 + 120, &urls, None);
            assert_eq!((hours[0].visitors, hours[1].visitors), (Some(2), Some(3)));
            let top = a.top(Dim::UrlVisitors, now - 120, now + 1, None, 10);
            let keys: Vec<(&str, u64)> = top.iter().map(|r| (r.key.as_str(), r.views)).collect();
            assert_eq!(keys, vec![("https://a.com/2", 3), ("https://a.com/1", 2)]);
            // Engaged: 10 per heartbeat (`batch`); /1: 40 / 2, /2: 30 / 3 seconds per visitor.
            let avg = a.top(Dim::UrlAvgEngaged, now - 120, now + 1, None, 10);
            assert_eq!(avg[0].key, "https://a.com/1");
            assert_eq!(avg[0].views, 20_000);
            assert_eq!(st[0].avg_engaged(), Some(20.0));
            assert_eq!(st[1].avg_engaged(), Some(10.0));
        }
        // The default keeps the store's fingerprint; turning them off changes it.
        let off = AggConfig {
            url_visitors: false,
            ..AggConfig::default()
        };
        assert_ne!(
            store::fingerprint(&off),
            store::fingerprint(&AggConfig::default())
        );
    }

    /// Hits as (key index below `keys`, visitor, minutes back), up to 200, in shuffled order.
    fn shuffled_hits(keys: u8) -> impl proptest::strategy::Strategy<Value = Vec<(u8, u64, i64)>> {
        proptest::strategy::Strategy::prop_flat_map(
            proptest::collection::vec((0u8..keys, 0u64..12, 0i64..240), 1..200),
            |v| proptest::strategy::Strategy::prop_shuffle(proptest::strategy::Just(v)),
        )
    }

    /// Applies `rows` (key, minute, visitor) in two batches split at `split` (arbitrary, so that
    /// both orders meet both tiers), each followed by folding some minutes into their hours
    /// (up to an arbitrary minute, an arbitrary number of them: later events of a folded
    /// minute go to both); `push` adds one row's increment with its visitor's hash.
    fn apply_in_two<K>(
        a: &mut Aggregates,
        rows: &[(K, i64, u64)],
        split: usize,
        folds: Vec<(i64, usize)>,
        now: i64,
        push: impl Fn(&mut Batch, &K, i64, u64),
    ) {
        let split = split.min(rows.len());
        for (part, (back, budget)) in [&rows[..split], &rows[split..]].into_iter().zip(folds) {
            let mut b = Batch::default();
            for (k, m, v) in part {
                push(
                    &mut b,
                    k,
                    *m,
                    crate::route::partition::vid_hash(&v.to_string()),
                );
            }
            a.apply_batch(&b, now);
            a.fold_minutes(now - back, budget);
        }
    }

    /// One pass of the ticker folds at least one [`FOLD_BUDGET`] of ended minutes however
    /// short its slice, all of them given time, never the minute before `upto` or later; the
    /// answers stay those of a state that folded nothing.
    #[test]
    fn a_folding_pass_is_bounded_and_keeps_the_answers() {
        // fixed-date: a fixed minute; every increment and read is relative to it.
        let now = 29_000_000;
        let mut a = Aggregates::new(AggConfig::default());
        let mut b = Batch::default();
        for back in 0..200i64 {
            let url = format!("https://a.example/p{}", back % 7);
            b.push(
                IncKind::Url,
                true,
                now - back,
                1,
                "a.example",
                &url,
                Some(back as u64 % 5),
            );
        }
        a.apply_batch(&b, now);
        let mut model = Aggregates::new(AggConfig::default());
        model.apply_batch(&b, now);
        let top = |x: &Aggregates| x.top(Dim::Url, now - 200, now + 1, None, 10);
        assert_eq!(
            a.fold_ended(now - 1, std::time::Duration::ZERO),
            FOLD_BUDGET
        );
        assert_eq!(top(&a), top(&model));
        let rest = a.fold_ended(now - 1, std::time::Duration::from_secs(60));
        assert_eq!(FOLD_BUDGET + rest, 198, "every minute before now - 1");
        assert_eq!(a.fold_ended(now - 1, std::time::Duration::from_secs(60)), 0);
        assert_eq!(top(&a), top(&model));
        assert_eq!(
            a.bucket_lines(Res::Hour, now.div_euclid(60)),
            model.bucket_lines(Res::Hour, now.div_euclid(60))
        );
    }

    /// Names are interned once each, with dense ids that survive the table's growth, found
    /// again by name and by id; each is held once (its bytes counted once).
    #[test]
    fn names_are_dense_stable_and_held_once() {
        let mut n = Names::default();
        let name = |i: usize| format!("https://a.example/p{i}");
        for i in 0..5000 {
            assert_eq!(n.intern(&name(i)), (i as u32, true));
        }
        for i in (0..5000).rev() {
            assert_eq!(n.intern(&name(i)), (i as u32, false));
            assert_eq!(n.get(&name(i)), Some(i as u32));
            assert_eq!(n.name(i as u32), name(i));
        }
        assert_eq!(n.get("https://a.example/none"), None);
        assert_eq!(n.intern(""), (5000, true));
        assert_eq!(n.get(""), Some(5000));
        assert_eq!(n.len(), 5001);
        let bytes: usize = (0..5000).map(|i| name(i).len()).sum();
        assert_eq!(n.blocks.iter().map(String::len).sum::<usize>(), bytes);
        let copy = n.tail_copy(4990);
        assert_eq!((copy.name(3), copy.name(4995)), ("", name(4995).as_str()));
    }

    proptest::proptest! {
        /// Any run of names — repeated at once (what `intern_again`'s remembered id answers),
        /// again later, prefixes of each other, empty — gets the ids a map in order of first
        /// sight gives, and says new exactly when the map had none.
        #[test]
        fn names_intern_like_a_map(
            picks in proptest::collection::vec((0usize..12, proptest::bool::ANY), 1..300),
        ) {
            let pool = ["", "a", "ab", "abc", "b", "site.example", "site.example/",
                "www.site.example", "a\u{e9}", "\u{e9}a", "ba", "abd"];
            let mut n = Names::default();
            let mut model: std::collections::HashMap<&str, u32> = Default::default();
            for (p, again) in picks {
                let name = pool[p];
                let next = model.len() as u32;
                let want_new = !model.contains_key(name);
                let want = *model.entry(name).or_insert(next);
                let got = if again { n.intern_again(name) } else { n.intern(name) };
                proptest::prop_assert_eq!(got, (want, want_new));
                proptest::prop_assert_eq!(n.get(name), Some(want));
                proptest::prop_assert_eq!(n.name(want), name);
            }
        }
    }

    /// Names of every length — empty, a block's worth, longer than a block — keep their
    /// text and ids while later names fill new blocks; no block grows past the capacity it
    /// was made with (a name's text never moves), and a copy keeps the ids.
    #[test]
    fn names_keep_their_text_across_blocks() {
        let mut n = Names::default();
        let name = |i: usize| match i % 7 {
            0 => String::new(),
            3 => "x".repeat(NAME_BLOCK + i),
            _ => format!("https://b.example/{}", "p".repeat(i % 300)),
        };
        let mut want = Vec::new();
        let mut caps: Vec<usize> = Vec::new();
        for i in 0..3000 {
            let (id, new) = n.intern(&name(i));
            if new {
                assert_eq!(id as usize, want.len());
                want.push(name(i));
            } else {
                assert_eq!(n.name(id), name(i));
            }
            let now: Vec<usize> = n.blocks.iter().map(String::capacity).collect();
            assert_eq!(now[..caps.len()], caps[..], "a block grew");
            caps = now;
        }
        for (id, text) in want.iter().enumerate() {
            assert_eq!(n.name(id as u32), text);
            assert_eq!(n.get(text), Some(id as u32));
        }
        assert_eq!(n.name(want.len() as u32), "");
        assert!(n.blocks.len() > 10, "{} blocks", n.blocks.len());
        let copy = n.tail_copy(5);
        for (id, text) in want.iter().enumerate() {
            let got = copy.name(id as u32);
            assert_eq!(got, if id < 5 { "" } else { text.as_str() });
        }
        let text: usize = want.iter().map(String::len).sum();
        assert!(n.memory() >= text + want.len() * size_of::<Span>());
    }

    /// A batch applied in chunks, each looked up first (`warm`), builds the state its
    /// increments applied one at a time build: every minute and hour, and the visits — with
    /// chunks that cut a visitor's events apart, and urls, referrers and visitors new in the
    /// middle of a chunk.
    #[test]
    fn a_batch_applied_in_chunks_equals_its_increments_one_at_a_time() {
        // fixed-date: a fixed minute; every increment and read is relative to it.
        let now = 29_000_000;
        let mut b = Batch::default();
        for n in 0..(5 * WARM_CHUNK as i64 + 3) {
            let minute = now - n % 4;
            let vid = (n % 11) as u64;
            let page = format!("https://a.example/p{}", n % 13);
            let pv = n % 3 != 0;
            let inc = Inc::new(IncKind::Url, pv, minute, 2, Some(vid));
            b.push_inc_with(inc, "a.example", &page, "t.co");
            let ts = minute * 60_000 + n * 7;
            let inc = Inc::new(IncKind::Visitor, pv, minute, 3, Some(vid)).with_visit(ts);
            b.push_inc(inc, "a.example", &page);
            b.push(
                IncKind::Ref,
                pv,
                minute,
                0,
                "a.example",
                &format!("r{}.example", n % 5),
                None,
            );
        }
        let mut chunked = Aggregates::new(AggConfig::default());
        chunked.apply_batch(&b, now);
        let mut single = Aggregates::new(AggConfig::default());
        for inc in &b.incs {
            let (site, key, aux) = b.strs(inc);
            single.apply(inc, site, key, aux, now);
        }
        for m in now - 4..=now {
            assert_eq!(
                chunked.bucket_lines(Res::Minute, m),
                single.bucket_lines(Res::Minute, m)
            );
        }
        assert_eq!(
            chunked.bucket_lines(Res::Hour, now.div_euclid(60)),
            single.bucket_lines(Res::Hour, now.div_euclid(60))
        );
        assert_eq!(chunked.visits.len(), 11);
        assert_eq!(
            chunked.totals(now - 4, now + 1, None),
            single.totals(now - 4, now + 1, None)
        );
    }

    /// The distinct visitors of the `rows` whose key `matches` and whose minute is in
    /// `from..to` (the model of both proptests below).
    fn distinct_of<K>(
        rows: &[(K, i64, u64)],
        matches: impl Fn(&K) -> bool,
        from: i64,
        to: i64,
    ) -> u64 {
        let set: std::collections::BTreeSet<u64> = rows
            .iter()
            .filter(|(k, m, _)| matches(k) && (from..to).contains(m))
            .map(|r| r.2)
            .collect();
        set.len() as u64
    }

    /// A state with 30 minutes and 6 hours: hits up to 4 hours back meet both tiers.
    fn small_windows() -> Aggregates {
        Aggregates::new(AggConfig {
            minute_window: 30,
            hour_window: 6,
            ..AggConfig::default()
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// A site's uniques (and all sites') in any arrival order, with some minutes outside
        /// the minute window and the url visitors' folding run between batches: every
        /// minute, hour and range answers the distinct visitors of a model.
        #[test]
        fn site_uniques_in_any_order_are_the_distinct_ones(
            evs in shuffled_hits(2),
            split in 0usize..200,
            folds in proptest::collection::vec((0i64..240, 0usize..90), 2),
        ) {
            use proptest::prelude::*;
            let (now, mut a) = (1_000_020, small_windows());
            let site = |s: u8| ["a.com", "b.com"][s as usize];
            let rows: Vec<(&str, i64, u64)> =
                evs.iter().map(|&(s, v, back)| (site(s), now - back, v)).collect();
            apply_in_two(&mut a, &rows, split, folds, now, |b, s, m, h| {
                b.push(IncKind::Visitor, true, m, 0, s, "", Some(h))
            });
            let distinct = |s: Option<&str>, from: i64, to: i64| {
                distinct_of(&rows, |x| s.is_none_or(|s| s == *x), from, to)
            };
            let h_from = (now - 240).div_euclid(60) * 60;
            let floor = a.minute_floor(now);
            for s in [Some("a.com"), Some("b.com"), None] {
                for h in (h_from..=now).step_by(60) {
                    prop_assert_eq!(a.totals(h, h + 60, s).uniques, Some(distinct(s, h, h + 60)));
                }
                for m in floor..=now {
                    prop_assert_eq!(a.totals(m, m + 1, s).uniques, Some(distinct(s, m, m + 1)));
                }
                // Whole hours and loose minutes: the union, not the sum.
                prop_assert_eq!(a.totals(h_from, now + 1, s).uniques, Some(distinct(s, h_from, now + 1)));
                let t = a.totals(h_from, now + 1, s);
                prop_assert_eq!(t.views, rows.iter().filter(|r| s.is_none_or(|s| s == r.0)).count() as u64);
            }
        }

        /// Url visitors in any arrival order, with some minutes outside the minute window
        /// (hours only): every minute, hour and range answers the distinct visitors of a
        /// model (the hour's insert skipped for a visitor its minute knew must lose nothing).
        #[test]
        fn url_visitors_in_any_order_are_the_distinct_ones(
            evs in shuffled_hits(3),
            split in 0usize..200,
            folds in proptest::collection::vec((0i64..240, 0usize..90), 2),
        ) {
            use proptest::prelude::*;
            let (now, mut a) = (1_000_020, small_windows());
            let url = |u: u8| format!("https://a.com/{u}");
            let rows: Vec<(String, i64, u64)> = evs
                .iter()
                .map(|&(u, v, back)| (url(u), now - back, v))
                .collect();
            apply_in_two(&mut a, &rows, split, folds, now, |b, u, m, h| {
                b.push(IncKind::Url, false, m, 1, "a.com", u, Some(h))
            });
            let distinct = |u: &str, from: i64, to: i64| distinct_of(&rows, |x| x == u, from, to);
            let h_from = (now - 240).div_euclid(60) * 60;
            let h_to = (now + 60).div_euclid(60) * 60;
            let floor = a.minute_floor(now);
            for u in (0..3).map(url) {
                let hours: Vec<Option<u64>> =
                    a.url_series(h_from, h_to, 60, &u, None).iter().map(|t| t.uniques).collect();
                let want: Vec<Option<u64>> = (h_from..h_to)
                    .step_by(60)
                    .map(|h| Some(distinct(&u, h, h + 60)))
                    .collect();
                prop_assert_eq!(hours, want, "hours of {}", u);
                let minutes: Vec<Option<u64>> =
                    a.url_series(floor, now + 1, 1, &u, None).iter().map(|t| t.uniques).collect();
                let want: Vec<Option<u64>> =
                    (floor..=now).map(|m| Some(distinct(&u, m, m + 1))).collect();
                prop_assert_eq!(minutes, want, "minutes of {}", u);
                // A range of whole hours and loose minutes: the union, not the sum.
                let st = a.url_stats(h_from, now + 1, std::slice::from_ref(&u), None);
                prop_assert_eq!(st[0].visitors, Some(distinct(&u, h_from, now + 1)));
                // Loose minutes before the minute floor are kept nowhere but in their hour,
                // which a range that cuts the hour does not read.
                let st = a.url_stats(floor - 7, now + 1, std::slice::from_ref(&u), None);
                prop_assert_eq!(st[0].visitors, Some(distinct(&u, floor, now + 1)));
            }
        }
    }

    #[test]
    fn rank_matches_a_full_sort() {
        let names: Vec<String> = (0..300)
            .map(|i| format!("k{:03}", (i * 7919) % 300))
            .collect();
        let mut x = 5u64;
        let ids: Vec<(u64, u32)> = (0..300u32)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (1 + x % 4, i)
            })
            .collect();
        let mut full = ids.clone();
        full.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then(names[a.1 as usize].cmp(&names[b.1 as usize]))
        });
        for limit in [1, 2, 10, 77, 299, 300, 1000] {
            let got = rank(ids.clone(), limit, |i| &names[i as usize]);
            assert_eq!(got, full[..limit.min(300)].to_vec(), "limit {limit}");
        }
    }

    /// The memory gauge's parts add up to it, each part holds what it says, and entry and
    /// exit page cells are counted (as cells and as bytes).
    #[test]
    fn memory_parts_add_up_and_pages_count() {
        use mem::MemPart as P;
        // fixed-date: a fixed minute; every increment and read is relative to it.
        let now = 29_000_000;
        let mut a = Aggregates::new(AggConfig::default());
        let empty = a.memory();
        assert_eq!(empty.parts.iter().sum::<u64>(), empty.bytes);
        let mut b = Batch::default();
        for i in 0..50i64 {
            let (minute, vid) = (now - i % 3, Some(1 + (i % 7) as u64));
            let url = format!("https://a.example/p{}", i % 5);
            let url_inc = Inc::new(IncKind::Url, true, minute, 0, vid).with_channel(1);
            b.push_inc_with(url_inc, "a.example", &url, "www.google.com");
            let visit =
                Inc::new(IncKind::Visitor, true, minute, 0, vid).with_visit(minute * 60_000);
            b.push_inc_with(visit, "a.example", &url, "");
        }
        a.apply_batch(&b, now);
        let m = a.memory();
        assert_eq!(m.parts.iter().sum::<u64>(), m.bytes);
        for p in [
            P::UrlCells,
            P::UrlVisitors,
            P::UrlPairs,
            P::RefsPagesVisits,
            P::Sites,
        ] {
            assert!(m.parts[p as usize] > 0, "{}: {m:?}", p.as_str());
        }
        for p in [P::Names, P::Visits, P::Other] {
            assert!(
                m.parts[p as usize] > empty.parts[p as usize],
                "{}",
                p.as_str()
            );
        }
        assert_eq!(m.parts[P::Visits as usize], m.visitor_bytes);
        let pages: usize = a.minutes.iter().map(|(_, b)| b.pages.len()).sum();
        assert!(pages > 0);
        let cells: usize = a
            .minutes
            .iter()
            .chain(a.hours.iter())
            .map(|(_, b)| b.cells())
            .sum();
        assert_eq!(m.cells as usize, cells);
        let mut no_pages = a
            .minutes
            .iter()
            .next()
            .map(|(_, b)| b.clone())
            .unwrap_or_default();
        let with = no_pages.cells();
        no_pages.pages.clear();
        assert!(no_pages.cells() < with, "a bucket's cells count its pages");
    }

    #[test]
    fn old_minutes_only_in_hours_and_eviction() {
        let now = 1_000_000;
        let mut a = Aggregates::new(AggConfig {
            minute_window: 10,
            hour_window: 2,
            ..AggConfig::default()
        });
        let b = batch(&[(IncKind::Visitor, true, now - 30, "a", "", Some(9))]);
        a.apply_batch(&b, now);
        // Not in the minute tier (older than 10 minutes), in its hour.
        let h = (now - 30).div_euclid(60) * 60;
        assert_eq!(a.totals(now - 30, now - 29, None).hits, 0);
        assert_eq!(a.totals(h, h + 60, None).hits, 1);
        a.evict(now + 3 * 60);
        assert_eq!(a.totals(h, h + 60, None).hits, 0);
        assert!(a.memory().bytes > 0);
    }
}
