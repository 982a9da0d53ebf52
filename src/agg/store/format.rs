//! The bytes of an aggregate checkpoint: one owner shard's aggregates (or what changed in them
//! since its previous checkpoint) and the log offsets they are the function of.
//!
//! This file owns the format. [`encode`] writes a checkpoint of an [`Aggregates`] (every bucket
//! for a *base*, the dirty ones for a *delta*) and [`decode_into`] applies one to an
//! [`Aggregates`]; nothing else reads or writes these bytes. Decoding never trusts the disk:
//! the CRC is checked before anything else, every length is bounds-checked before it is used,
//! and no input can make it panic (a proptest feeds it damaged files). A format change comes
//! with a new version and a new checked-in sample (`tests/data/sample-v10.agg`; the older
//! `sample-v9.agg` … `sample-v1.agg` are still decoded by tests).
//!
//! # Checkpoint file, format version 10 (all integers little-endian; versions 1 to 9 are still read)
//! | at      | size    | field        | meaning                                                           |
//! |---------|---------|--------------|-------------------------------------------------------------------|
//! |  0      | 8       | magic        | `PXAGGCK1`                                                        |
//! |  8      | 2       | version      | 10 (9: the url and profile visitors' hashes are the visitor hashes as they are, where 10 writes them with their top bit set as `hll::Visitors` holds them — a reader sets it on every hash it reads, and a build before 10, whose inserts would not match them, refuses the file and replays the log instead; 8: an hour holds the url and profile visitors only of the minutes it had folded, see below; 7: no url × referrer cells; 6: no profile visits either; 5: no url × channel cells either; 4: no profiles; 3: no url visitors; 2: no visits; 1: no day tier, no sealed list either) |
//! | 10      | 1       | kind         | 0 = base (the whole state), 1 = delta (what changed since `parent`) |
//! | 11      | 1       | reserved     | 0                                                                 |
//! | 12      | 4       | shards       | shard count of the run that wrote it                              |
//! | 16      | 4       | owner        | the shard whose aggregates these are                              |
//! | 20      | 4       | reserved     | 0                                                                 |
//! | 24      | 8       | seq          | this checkpoint's number (1, 2, …; per owner)                     |
//! | 32      | 8       | parent       | the checkpoint this delta applies on (0 for a base)               |
//! | 40      | 8       | fingerprint  | hash of the settings that decide how a record aggregates          |
//! | 48      | 8       | written_ns   | wall clock when it was taken (ns since the Unix epoch)            |
//! | 56      | 8       | body_len     | bytes of the body                                                 |
//! | 64      | 8 × shards | applied   | per source shard: the next log offset *not* applied (every record of that source's log below it is in the state) |
//! | …       | body_len | body        | names, then buckets (below)                                       |
//! | end − 4 | 4       | crc32c       | CRC-32C of every byte before it                                   |
//!
//! # Body
//! | size             | field     | meaning                                                      |
//! |------------------|-----------|--------------------------------------------------------------|
//! | names × 3        | sites, urls, refs | each: u32 first id, u32 count, then count × (u32 len, len bytes of UTF-8). A base starts at id 0; a delta carries the names interned since its parent |
//! | 4 × url count    | url_site  | the site id of each url of the urls section, in order         |
//! | names            | profiles  | version 5: like the names above; a profile's name is its site, U+001F, and its key (the positional dimension values joined by U+001F — nine before the country, ten since — then a custom event's `event=NAME` and the custom dimensions' `name=value`, `parse::event::dims`) |
//! | 4 + n × 9        | sealed    | version 2: u32 n, then n × (u8 tier, i64 bucket number), ascending: every bucket whose closed part is a sealed file (`agg::sealed`); the newest link's list is the store's |
//! | 4                | buckets   | number of buckets that follow                                 |
//! | per bucket       | bucket    | u8 tier (0 = minute, 1 = hour, 2 = day), i64 bucket number (minutes, hours or days since the epoch), then its cells (for a sealed bucket: what arrived after it was sealed). An hour holds every cell of each of its minute buckets in the file (version 9: the minutes it had not folded yet are merged into it when written; version ≤ 8 held their counts but not their url and profile visitors, which a read added): so a loaded hour has folded every minute loaded with it |
//! | 4 + visitors     | visitors  | version 3: the whole table of recent visits (`agg::visits`), in every link (the newest link's is the state's): u32 n, then n × (u32 site id, u64 visitor hash, u32 k, k × (i64 first event ms, i64 last event ms, u32 pageviews, u32 engaged seconds, u32 entry url id, u32 ms from the first event to the entry pageview, (version 7) u32 entry profile id, u32 exit url id, u32 ms from the exit pageview to the last event; url and profile ids 0xFFFF_FFFF in a visit without a pageview)), sorted by (site, visitor), each visitor's visits ascending and more than `agg.visit_gap` apart |
//!
//! Cells of a bucket, each table sorted by key (so the same state always writes the same bytes):
//! | size                 | field | meaning                                              |
//! |----------------------|-------|------------------------------------------------------|
//! | 4 + n × 20           | urls  | u32 n, then (u32 url id, u32 views, u32 hits, u32 engaged seconds, u32 visitors at: byte offset of its visitors in the blob below, or 0xFFFF_FFFF for none) — version ≤ 3: 16-byte records without the offset |
//! | 4 + len              | url visitors | version 4: u32 len, then the url records' visitors, each a uniques value (below) of p = 12 (version 10: every hash of an exact set with its top bit set) |
//! | 4 + n × 12           | refs  | u32 n, then (u64 site id << 32 \| referrer id, u32 pageviews) |
//! | 4 + n × (4 + cell)   | sites | u32 n, then (u32 site id, site cell)                |
//! | cell                 | all   | the site cell of all sites                           |
//! | 4 + n × 12           | pages | version 3: u32 n, then (u32 url id, i32 entries, i32 exits) |
//! | as urls              | profiles | version 5: a table and blob exactly like the urls' (20-byte records: u32 profile id, u32 pageviews, u32 custom events (0 but in a custom event's profile; written as 0 by builds before events), u32 0, u32 visitors at), then its blob of visitors |
//! | 4 + n × 12           | url_channels | version 6: u32 n, then (u64 url id << 8 \| channel code, u32 pageviews); codes 1 – 7 = search, social, email, paid, internal, referral, direct (`Channel::code`) |
//! | 4 + n × 36           | profile_visits | version 7: u32 n, then (u32 profile id, four i64 visit counts as in a site cell): what the visits starting in the bucket add, by the profile of their entry pageview |
//! | 4 + n × 12           | url_refs | version 8: u32 n, then (u64 url id << 32 \| referrer id, u32 pageviews): a url's pageviews by referrer domain (a referrer id of the refs names) |
//!
//! Site cell: u64 views, u64 hits, u64 engaged seconds, (version 3) four i64 visit counts —
//! visits, bounces, pageviews of those visits, their summed duration in ms (signed: the late
//! part of a sealed bucket may retract what its file holds) — then the uniques.
//!
//! Uniques value: u8 0 = exact set (u32 n, n × u64 visitor hashes, ascending) or u8 1 = sketch
//! (u64 `data` word, u32 n, n × u32 words: `cardinality-estimator`'s own serialized form, at
//! p = 14 for a site and p = 12 for a url; when n > 0 only the word's low two bits, the
//! representation tag, are kept). A bucket in a delta replaces the whole bucket of that number.

pub use super::super::cells::FormatError;
use super::super::cells::{get_cells, put_cells, put_u32, put_u64, Cursor};
use super::super::{unfolded_minutes, whole_hour, Aggregates, Bucket, Res};

/// The eight bytes every checkpoint starts with.
pub const MAGIC: [u8; 8] = *b"PXAGGCK1";
/// The checkpoint format version this build writes and reads.
pub const VERSION: u16 = 10;
/// Size of the fixed header before the applied offsets.
pub const HEADER_LEN: usize = 64;
/// Largest shard count a header may declare; more is corruption.
const MAX_SHARDS: u32 = 4096;

/// Whether a checkpoint holds the whole state or what changed since its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Base,
    Delta,
}

/// A checkpoint's header: what [`decode_header`] reads and [`encode`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The format version it was written in (1 or 2).
    pub version: u16,
    pub kind: Kind,
    pub shards: u32,
    pub owner: u32,
    pub seq: u64,
    pub parent: u64,
    pub fingerprint: u64,
    pub written_ns: u64,
    /// Per source shard: the next log offset not applied.
    pub applied: Vec<u64>,
}

fn put_names(out: &mut Vec<u8>, names: &super::super::Names, first: usize) {
    let n = names.len().saturating_sub(first);
    put_u32(out, first as u32);
    put_u32(out, n as u32);
    for id in first..names.len() {
        let s = names.name(id as u32);
        put_u32(out, s.len() as u32);
        out.extend_from_slice(s.as_bytes());
    }
}

fn put_bucket(out: &mut Vec<u8>, tier: Res, number: i64, b: &Bucket) {
    out.push(tier.code());
    put_u64(out, number as u64);
    put_cells(out, b);
}

/// Encodes a checkpoint of `agg`: every bucket (base) or the dirty ones (delta), and the
/// names interned since the previous checkpoint (delta) or all of them (base). Marks what it
/// wrote clean. The caller keeps the previous watermarks if the write then fails, and takes
/// a base next time.
pub fn encode(agg: &mut Aggregates, e: &Header) -> Vec<u8> {
    encode_inner(agg, e, false)
}

/// [`encode`] of a state that is dropped afterwards (a checkpoint snapshot): each bucket's
/// memory is freed once written, so the snapshot shrinks as the bytes grow.
pub fn encode_consuming(mut agg: Aggregates, e: &Header) -> Vec<u8> {
    encode_inner(&mut agg, e, true)
}

fn encode_inner(agg: &mut Aggregates, e: &Header, consume: bool) -> Vec<u8> {
    let base = e.kind == Kind::Base;
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(if base { 0 } else { 1 });
    out.push(0);
    put_u32(&mut out, e.shards);
    put_u32(&mut out, e.owner);
    put_u32(&mut out, 0);
    put_u64(&mut out, e.seq);
    put_u64(&mut out, e.parent);
    put_u64(&mut out, e.fingerprint);
    put_u64(&mut out, e.written_ns);
    put_u64(&mut out, 0); // body_len, filled in below
    for &a in &e.applied {
        put_u64(&mut out, a);
    }
    let body_at = out.len();
    let marks = if base {
        (0, 0, 0, 0)
    } else {
        agg.written_names
    };
    put_names(&mut out, &agg.sites, marks.0);
    put_names(&mut out, &agg.urls, marks.1);
    for id in marks.1..agg.urls.len() {
        put_u32(&mut out, agg.url_site.get(id).copied().unwrap_or(0));
    }
    put_names(&mut out, &agg.refs, marks.2);
    put_names(&mut out, &agg.profiles.names, marks.3);
    agg.written_names = agg.name_counts();
    let sealed = agg.sealed_list();
    put_u32(&mut out, sealed.len() as u32);
    for (tier, number) in sealed {
        out.push(tier.code());
        put_u64(&mut out, number as u64);
    }
    let count_at = out.len();
    put_u32(&mut out, 0);
    let mut count = 0u32;
    // An hour is written with the minutes it has not folded (a loaded hour has folded every
    // minute loaded with it), so nothing is consumed or marked clean before all is written.
    for (number, b) in agg.minutes.iter().filter(|(_, b)| base || b.dirty) {
        put_bucket(&mut out, Res::Minute, number, b);
        count += 1;
    }
    for (number, b) in agg.hours.iter().filter(|(_, b)| base || b.dirty) {
        let whole = whole_hour(&agg.minutes, number, b);
        put_bucket(&mut out, Res::Hour, number, &whole);
        count += 1;
    }
    for (number, b) in agg.days.iter().filter(|(_, b)| base || b.dirty) {
        put_bucket(&mut out, Res::Day, number, b);
        count += 1;
    }
    for tier in [&mut agg.minutes, &mut agg.hours, &mut agg.days] {
        for (_, b) in tier.iter_mut() {
            if consume {
                *b = Bucket::default();
            }
            b.dirty = false;
        }
    }
    out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    agg.visits.put(&mut out);
    let body_len = (out.len() - body_at) as u64;
    out[56..64].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    put_u32(&mut out, crc);
    out
}

/// Reads and checks a checkpoint's header and CRC (not its body).
pub fn decode_header(bytes: &[u8]) -> Result<Header, FormatError> {
    if bytes.len() < HEADER_LEN + 4 {
        return Err(FormatError::Short(bytes.len()));
    }
    if bytes[..8] != MAGIC {
        return Err(FormatError::Magic);
    }
    let (data, crc) = bytes.split_at(bytes.len() - 4);
    let mut c = Cursor::new(data, 8);
    let version = u16::from_le_bytes([data[8], data[9]]);
    if !(1..=VERSION).contains(&version) {
        return Err(FormatError::Version(version));
    }
    let mut want = [0u8; 4];
    want.copy_from_slice(crc);
    if crc32c::crc32c(data) != u32::from_le_bytes(want) {
        return Err(FormatError::Crc);
    }
    c.at = 10;
    let kind = match c.u8()? {
        0 => Kind::Base,
        1 => Kind::Delta,
        _ => return Err(FormatError::Damaged("unknown kind")),
    };
    c.at = 12;
    let shards = c.u32()?;
    let owner = c.u32()?;
    if shards == 0 || shards > MAX_SHARDS || owner >= shards {
        return Err(FormatError::Damaged("shard count or owner out of range"));
    }
    c.at = 24;
    let seq = c.u64()?;
    let parent = c.u64()?;
    let fingerprint = c.u64()?;
    let written_ns = c.u64()?;
    let body_len = c.u64()?;
    let applied = (0..shards)
        .map(|_| c.u64())
        .collect::<Result<Vec<_>, _>>()?;
    if (c.at as u64).checked_add(body_len) != Some(data.len() as u64) {
        return Err(FormatError::Damaged(
            "body length disagrees with the file size",
        ));
    }
    Ok(Header {
        version,
        kind,
        shards,
        owner,
        seq,
        parent,
        fingerprint,
        written_ns,
        applied,
    })
}

fn get_names(c: &mut Cursor<'_>, names: &mut super::super::Names) -> Result<usize, FormatError> {
    let first = c.u32()? as usize;
    if first != names.len() {
        return Err(FormatError::Damaged("names do not continue the parent's"));
    }
    let n = c.count(4)?;
    for _ in 0..n {
        let len = c.count(1)?;
        let s = std::str::from_utf8(c.take(len)?)
            .map_err(|_| FormatError::Damaged("a name is not UTF-8"))?;
        let (_, new) = names.intern(s);
        if !new {
            return Err(FormatError::Damaged("a name appears twice"));
        }
    }
    Ok(n)
}

/// Applies one checkpoint to `agg` (a base onto an empty state, a delta onto its parent's)
/// and returns its header. On error `agg` may hold part of it: the caller discards it.
pub fn decode_into(bytes: &[u8], agg: &mut Aggregates) -> Result<Header, FormatError> {
    let h = decode_header(bytes)?;
    let mut c = Cursor::new(
        &bytes[..bytes.len() - 4],
        HEADER_LEN + 8 * h.shards as usize,
    );
    c.visits = h.version >= 3;
    c.url_visitors = h.version >= 4;
    c.profiles = h.version >= 5;
    c.url_channels = h.version >= 6;
    c.profile_visits = h.version >= 7;
    c.url_refs = h.version >= 8;
    get_names(&mut c, &mut agg.sites)?;
    let new_urls = get_names(&mut c, &mut agg.urls)?;
    for _ in 0..new_urls {
        let s = c.u32()?;
        if s as usize >= agg.sites.len() {
            return Err(FormatError::Damaged("a url's site without a name"));
        }
        agg.url_site.push(s);
    }
    get_names(&mut c, &mut agg.refs)?;
    if c.profiles {
        let first = agg.profiles.len();
        get_names(&mut c, &mut agg.profiles.names)?;
        agg.profiles.index_from(first, &mut agg.sites);
    }
    let names = agg.name_counts();
    if h.version >= 2 {
        let n = c.count(9)?;
        let mut listed = Vec::with_capacity(n);
        for _ in 0..n {
            let tier = Res::from_code(c.u8()?).ok_or(FormatError::Damaged("unknown tier"))?;
            listed.push((tier, c.u64()? as i64));
        }
        // Each link lists every sealed bucket: the newest one's list is the store's.
        agg.listed = listed;
    }
    let n = c.count(9)?;
    for _ in 0..n {
        let tier = Res::from_code(c.u8()?).ok_or(FormatError::Damaged("unknown tier"))?;
        let number = c.u64()? as i64;
        let b = get_cells(&mut c, names)?;
        let slot = match tier {
            Res::Minute => agg.minutes.get_mut(number),
            Res::Hour => agg.hours.get_mut(number),
            Res::Day => agg.days.get_mut(number),
        };
        // A bucket the window no longer holds (a newer one took its slot) is dropped.
        if let Some(s) = slot {
            *s = b;
        }
    }
    if h.version < 9 {
        // An hour then held its minutes' counts but only the visitors of those it had folded
        // (its reads added the others'): it takes them all, a union.
        for (number, hb) in agg.hours.iter_mut() {
            for m in unfolded_minutes(&agg.minutes, number, number * 60) {
                hb.merge_visitors(m);
            }
        }
    }
    // Every hour holds the minutes loaded with it (written so: see `encode`).
    for (number, hb) in agg.hours.iter_mut() {
        hb.folded_upto = (number * 60..(number + 1) * 60)
            .rev()
            .find(|&m| agg.minutes.get(m).is_some_and(|b| !b.is_empty()))
            .map_or(number * 60, |m| m + 1);
    }
    if h.version >= 3 {
        // Every link carries the whole table: the newest one's is the state's.
        agg.visits.get(&mut c, (names.0, names.1, names.3))?;
    }
    if c.at != c.b.len() {
        return Err(FormatError::Damaged("bytes after the last bucket"));
    }
    agg.written_names = names;
    Ok(h)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::agg::{AggConfig, Batch, Dim, Inc, IncKind, Res};
    use crate::parse::event::channel::Channel;

    /// A state with every kind of cell: urls, referrers, sites, exact and sketch uniques.
    pub(crate) fn sample_state(now: i64) -> Aggregates {
        let mut a = Aggregates::new(AggConfig::default());
        let mut b = Batch::default();
        for i in 0..40u64 {
            let m = now - (i as i64 % 7) * 50;
            let site = if i % 3 == 0 { "b.example" } else { "a.example" };
            let url = format!("https://{site}/p{}", i % 5);
            b.push(IncKind::Url, i % 4 != 0, m, 10, site, &url, None);
            b.push(IncKind::Ref, true, m, 0, site, "google.com", None);
            b.push(IncKind::Visitor, i % 4 != 0, m, 10, site, "", Some(i % 9));
        }
        // One bucket whose uniques turned into a sketch.
        for v in 0..3000u64 {
            b.push(
                IncKind::Visitor,
                true,
                now,
                0,
                "a.example",
                "",
                Some(v * 7919),
            );
        }
        a.apply_batch(&b, now);
        a
    }

    fn header(kind: Kind, seq: u64, parent: u64) -> Header {
        Header {
            version: VERSION,
            kind,
            shards: 2,
            owner: 1,
            seq,
            parent,
            fingerprint: 42,
            written_ns: 7,
            applied: vec![10, 20],
        }
    }

    fn answers(a: &Aggregates, now: i64) -> String {
        let mut channels = a.breakdown(
            &[0],
            now - 400,
            now + 1,
            None,
            &crate::agg::dims::DimFilter {
                bots: true,
                ..Default::default()
            },
            true,
        );
        channels.sort_by(|x, y| x.key.cmp(&y.key));
        format!(
            "{channels:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            a.top(Dim::Url, now - 400, now + 1, None, 100),
            a.top(Dim::UrlVisitors, now - 400, now + 1, None, 100),
            a.top(Dim::RefDomain, now - 400, now + 1, None, 100),
            a.top(Dim::Site, now - 400, now + 1, None, 100),
            a.totals(now - 400, now + 1, None),
            a.totals(now - 400, now + 1, Some("b.example")),
        )
    }

    #[test]
    fn base_then_delta_round_trips_and_is_deterministic() {
        let now = 29_000_000;
        let mut a = sample_state(now);
        let base = encode(&mut a, &header(Kind::Base, 1, 0));
        assert!(!a.is_dirty(now));
        // Later increments: one old bucket changes, a new url appears.
        let mut b = Batch::default();
        b.push(
            IncKind::Url,
            true,
            now - 300,
            5,
            "a.example",
            "https://a.example/new",
            None,
        );
        b.push(
            IncKind::Visitor,
            true,
            now - 300,
            5,
            "c.example",
            "",
            Some(99),
        );
        let k = key([
            "paid", "x", "x", "cpc", "spring", "desktop", "Firefox", "Linux", "human",
        ]);
        b.push(
            IncKind::Profile,
            true,
            now - 300,
            0,
            "c.example",
            &k,
            Some(99),
        );
        a.apply_batch(&b, now);
        assert!(a.is_dirty(now));
        let delta = encode(&mut a, &header(Kind::Delta, 2, 1));
        assert!(delta.len() < base.len() / 2, "a delta carries what changed");

        let mut r = Aggregates::new(AggConfig::default());
        let h = decode_into(&base, &mut r).unwrap();
        assert_eq!(
            (h.kind, h.seq, h.applied.clone()),
            (Kind::Base, 1, vec![10, 20])
        );
        let h = decode_into(&delta, &mut r).unwrap();
        assert_eq!((h.kind, h.parent), (Kind::Delta, 1));
        assert_eq!(answers(&r, now), answers(&a, now));
        // The same state writes the same bytes.
        let mut again = Aggregates::new(AggConfig::default());
        decode_into(&base, &mut again).unwrap();
        decode_into(&delta, &mut again).unwrap();
        let x = encode(&mut again, &header(Kind::Base, 3, 0));
        let y = encode(&mut a, &header(Kind::Base, 3, 0));
        let first_diff = x.iter().zip(&y).position(|(p, q)| p != q);
        assert_eq!(
            (first_diff, x.len()),
            (None, y.len()),
            "the same state writes the same bytes"
        );
    }

    /// A checkpoint encoded from a snapshot (off the executor) has the bytes encoding the
    /// state itself gives, base and delta, and leaves the state clean the same way.
    #[test]
    fn a_snapshot_encodes_like_the_state() {
        let now = 29_000_000;
        // (Not the v5 sample: its url visitors are folded into hours by a snapshot only.)
        let (mut a, mut b) = (sample_state(now), sample_state(now));
        let mut profiles = Batch::default();
        for (i, v) in ["direct", "search", "social"].iter().enumerate() {
            let k = key([v, "x", "", "", "", "mobile", "Chrome", "Android", "human"]);
            profiles.push(
                IncKind::Profile,
                true,
                now - 5,
                0,
                "a.example",
                &k,
                Some(i as u64),
            );
        }
        a.apply_batch(&profiles, now);
        b.apply_batch(&profiles, now);
        let direct = encode(&mut a, &header(Kind::Base, 1, 0));
        let (snap, _) = b.checkpoint_snapshot(true, now);
        assert!(!b.is_dirty(now));
        assert!(encode_consuming(snap, &header(Kind::Base, 1, 0)) == direct);
        let mut later = Batch::default();
        later.push(
            IncKind::Url,
            true,
            now - 30,
            5,
            "z.example",
            "https://z.example/",
            None,
        );
        later.push(
            IncKind::Visitor,
            true,
            now - 300,
            5,
            "a.example",
            "",
            Some(4242),
        );
        let k = key([
            "social", "t.co", "", "", "", "mobile", "Chrome", "Android", "human",
        ]);
        later.push(
            IncKind::Profile,
            true,
            now - 30,
            0,
            "z.example",
            &k,
            Some(4242),
        );
        a.apply_batch(&later, now);
        b.apply_batch(&later, now);
        let direct = encode(&mut a, &header(Kind::Delta, 2, 1));
        let (snap, _) = b.checkpoint_snapshot(false, now);
        assert!(!b.is_dirty(now));
        assert!(encode_consuming(snap, &header(Kind::Delta, 2, 1)) == direct);
    }

    #[test]
    fn every_damage_is_refused_without_panic() {
        let now = 29_000_000;
        let mut a = sample_state(now);
        let bytes = encode(&mut a, &header(Kind::Base, 1, 0));
        for (i, d) in crate::agg::cells::tests::damaged_copies(&bytes, 400)
            .into_iter()
            .enumerate()
        {
            let mut r = Aggregates::new(AggConfig::default());
            assert!(decode_into(&d, &mut r).is_err(), "damage {i} accepted");
        }
    }

    /// [`sample_state`] with a day counted directly (its hour had left the window) and two
    /// sealed buckets listed: what format version 2 adds.
    fn sample_state_v2(now: i64) -> Aggregates {
        let mut a = sample_state(now);
        let mut b = Batch::default();
        let old = now - 40 * 1440;
        b.push(
            IncKind::Url,
            true,
            old,
            3,
            "a.example",
            "https://a.example/p0",
            None,
        );
        b.push(IncKind::Visitor, true, old, 3, "a.example", "", Some(5));
        a.apply_batch(&b, now);
        a.listed = vec![(Res::Hour, now / 60 - 100), (Res::Day, now / 1440 - 30)];
        a
    }

    /// [`sample_state_v2`] with visits: two visitors on two sites, one of them with a late
    /// event that joins two visits, one still open.
    fn sample_state_v3(now: i64) -> Aggregates {
        let mut a = sample_state_v2(now);
        let mut b = Batch::default();
        let t0 = (now - 120) * 60_000;
        for (site, vid, dt_min, pv, engaged, page) in [
            ("a.example", 11u64, 0i64, true, 0u32, "https://a.example/in"),
            ("a.example", 11, 50, true, 0, "https://a.example/out"),
            ("a.example", 11, 25, false, 30, ""),
            ("b.example", 12, 100, true, 3, "https://b.example/"),
        ] {
            let ts = t0 + dt_min * 60_000;
            let inc = crate::agg::Inc::new(IncKind::Visitor, pv, ts / 60_000, engaged, Some(vid))
                .with_visit(ts);
            b.push_inc(inc, site, page);
        }
        a.apply_batch(&b, now);
        a
    }

    /// Decodes the checked-in sample `tests/data/<name>` into an empty state.
    fn read_sample(name: &str) -> (Header, Aggregates) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name);
        let bytes = std::fs::read(&path).unwrap();
        let mut r = Aggregates::new(AggConfig::default());
        let h = decode_into(&bytes, &mut r).unwrap();
        (h, r)
    }

    /// [`sample_state_v3`] with url visitors: one url seen by one visitor, one by three, one
    /// by 1 000 (a sketch), one hit without a visitor id.
    fn sample_state_v4(now: i64) -> Aggregates {
        let mut a = sample_state_v3(now);
        let mut b = Batch::default();
        for (url, n) in [("/one", 1u64), ("/three", 3), ("/many", 1000)] {
            for v in 0..n {
                let url = format!("https://a.example{url}");
                let h = Some(crate::route::partition::vid_hash(&v.to_string()));
                b.push(IncKind::Url, true, now - 3, 2, "a.example", &url, h);
                // The same visitor again: not one more.
                b.push(IncKind::Url, false, now - 3, 1, "a.example", &url, h);
            }
        }
        b.push(
            IncKind::Url,
            true,
            now - 3,
            0,
            "a.example",
            "https://a.example/anon",
            None,
        );
        a.apply_batch(&b, now);
        a
    }

    /// The profile key of `values` (in `dims::DIMS` order).
    pub(crate) fn key(values: [&str; 9]) -> String {
        let mut k = String::new();
        for v in values {
            crate::parse::event::dims::push_value(&mut k, v);
        }
        k
    }

    /// The profile key of a direct desktop Chrome reader.
    fn direct_key() -> String {
        key([
            "direct", "(direct)", "", "", "", "desktop", "Chrome", "Windows", "human",
        ])
    }

    /// The profile key of a mobile Safari reader from Google.
    fn search_key() -> String {
        key([
            "search",
            "www.google.com",
            "",
            "",
            "",
            "mobile",
            "Safari",
            "iOS",
            "human",
        ])
    }

    /// [`sample_state_v4`] with profiles: direct desktop Chrome readers of a.example (five
    /// visitors, six pageviews), mobile readers from a search engine (three), a bot, and a
    /// tablet reader of b.example from a social network.
    pub(crate) fn sample_state_v5(now: i64) -> Aggregates {
        let mut a = sample_state_v4(now);
        let (direct, search) = (direct_key(), search_key());
        let bot = key([
            "direct",
            "(direct)",
            "",
            "",
            "",
            "bot",
            "(unknown)",
            "(unknown)",
            "Googlebot",
        ]);
        let social = key([
            "social", "t.co", "", "", "", "tablet", "Safari", "iOS", "human",
        ]);
        let mut b = Batch::default();
        for v in [1u64, 2, 3, 4, 5, 5] {
            b.push(
                IncKind::Profile,
                true,
                now - 2,
                0,
                "a.example",
                &direct,
                Some(v),
            );
        }
        for v in [6u64, 7, 8] {
            b.push(
                IncKind::Profile,
                true,
                now - 70,
                0,
                "a.example",
                &search,
                Some(v),
            );
        }
        b.push(
            IncKind::Profile,
            true,
            now - 2,
            0,
            "a.example",
            &bot,
            Some(9),
        );
        b.push(
            IncKind::Profile,
            true,
            now - 2,
            0,
            "b.example",
            &social,
            Some(10),
        );
        a.apply_batch(&b, now);
        a
    }

    /// [`sample_state_v5`] with url × channel cells: `/news` from search three times (one an
    /// hour earlier) and direct twice, `/sport` from social once; a heartbeat has no channel.
    pub(crate) fn sample_state_v6(now: i64) -> Aggregates {
        let mut a = sample_state_v5(now);
        let mut b = Batch::default();
        let url = |p: &str| format!("https://a.example/{p}");
        for (page, channel, minute, pv) in [
            ("news", Channel::Search, now - 2, true),
            ("news", Channel::Search, now - 2, true),
            ("news", Channel::Search, now - 70, true),
            ("news", Channel::Direct, now - 2, true),
            ("news", Channel::Direct, now - 3, true),
            ("sport", Channel::Social, now - 2, true),
            ("sport", Channel::Social, now - 2, false),
        ] {
            let code = if pv { channel.code() } else { 0 };
            let inc = Inc::new(IncKind::Url, pv, minute, 0, Some(11)).with_channel(code);
            b.push_inc(inc, "a.example", &url(page));
        }
        a.apply_batch(&b, now);
        a
    }

    /// [`sample_state_v6`] with visits by entry profile on a.example: visitor 21 enters from
    /// search and reads two pages (not a bounce), visitor 22 enters directly and bounces,
    /// visitor 23 first came directly, then a late pageview a minute earlier from search
    /// moves its visit's entry (and so its profile) to search, and visitor 24 sends a
    /// heartbeat alone (a visit of no profile).
    pub(crate) fn sample_state_v7(now: i64) -> Aggregates {
        let mut a = sample_state_v6(now);
        let (direct, search) = (direct_key(), search_key());
        let t0 = (now - 30) * 60_000;
        let mut b = Batch::default();
        for (vid, dt_s, pv, profile, page) in [
            (21u64, 0i64, true, &search, "/in"),
            (21, 90, true, &direct, "/next"),
            (22, 10, true, &direct, "/in"),
            (23, 120, true, &direct, "/in"),
            (23, 60, true, &search, "/early"),
            (24, 30, false, &direct, ""),
        ] {
            let ts = t0 + dt_s * 1000;
            let page = if pv {
                format!("https://a.example{page}")
            } else {
                String::new()
            };
            // A pageview's profile rides with its visitor's increment.
            let profile = if pv { profile.as_str() } else { "" };
            let inc = Inc::new(IncKind::Visitor, pv, ts / 60_000, 0, Some(vid)).with_visit(ts);
            b.push_inc_with(inc, "a.example", &page, profile);
        }
        a.apply_batch(&b, now);
        a
    }

    /// [`sample_state_v7`] with url × referrer cells: `/news` from www.google.com twice (one
    /// an hour earlier) and from t.co once, `/sport` from (direct) once; a heartbeat has no
    /// referrer.
    pub(crate) fn sample_state_v8(now: i64) -> Aggregates {
        let mut a = sample_state_v7(now);
        let mut b = Batch::default();
        for (page, referrer, minute, pv) in [
            ("news", "www.google.com", now - 2, true),
            ("news", "www.google.com", now - 70, true),
            ("news", "t.co", now - 2, true),
            ("sport", "(direct)", now - 3, true),
            ("sport", "t.co", now - 3, false),
        ] {
            let inc = Inc::new(IncKind::Url, pv, minute, 0, Some(11));
            let referrer = if pv { referrer } else { "" };
            b.push_inc_with(
                inc,
                "a.example",
                &format!("https://a.example/{page}"),
                referrer,
            );
        }
        a.apply_batch(&b, now);
        a
    }

    /// The url × referrer pairs of a state by pageviews.
    fn url_ref_rows(a: &Aggregates, now: i64) -> Vec<(String, u64)> {
        pair_rows(a, Dim::UrlRef, now)
    }

    /// A minute with more url cells than `FOLD_PART_CELLS` is folded into its hour in slices
    /// (`cells::UrlFold`): between two slices every answer — tops of urls and url pairs, url
    /// stats and series, totals, every cell of the hour and of the minute — is that of a
    /// state that folded nothing; increments meanwhile to the half-folded minute (cells of
    /// urls folded and still pending, new ones among them) count exactly once; a checkpoint
    /// written half way decodes to the same answers; and the hour ends as if folded whole.
    #[test]
    fn a_large_minute_folds_in_slices_and_every_answer_stays() {
        // fixed-date: a fixed minute; every increment and read is relative to it. The busy
        // minute is the last of its hour: where a checkpoint's copy of a whole hour would
        // look for a fold in progress.
        let now: i64 = 28_999_981;
        let minute = now - 2;
        assert_eq!(minute.rem_euclid(60), 59);
        let h = minute.div_euclid(60);
        let url = |i: usize| format!("https://a.example/p{i}");
        let batch = |urls: std::ops::Range<usize>, salt: usize| {
            let mut b = Batch::default();
            for i in urls {
                let vid = ((i * 7 + salt) % 900) as u64;
                let inc = Inc::new(IncKind::Url, true, minute, 1, Some(vid))
                    .with_channel(1 + ((i + salt) % 3) as u8);
                let referrer = format!("r{}.example", (i + salt) % 5);
                b.push_inc_with(inc, "a.example", &url(i), &referrer);
                if i % 50 == salt % 50 {
                    let ts = minute * 60_000 + (i % 60_000) as i64;
                    let v = Inc::new(IncKind::Visitor, true, minute, 1, Some(vid)).with_visit(ts);
                    b.push_inc(v, "a.example", &url(i));
                    b.push(IncKind::Ref, true, minute, 0, "a.example", &referrer, None);
                }
            }
            b
        };
        let mut a = Aggregates::new(AggConfig::default());
        let mut model = Aggregates::new(AggConfig::default());
        let first = batch(0..20_000, 0);
        a.apply_batch(&first, now);
        model.apply_batch(&first, now);
        let some: Vec<String> = (0..20_200).step_by(331).map(url).collect();
        let check = |a: &Aggregates, model: &Aggregates| {
            assert_eq!(answers(a, now), answers(model, now));
            for dim in [
                Dim::Url,
                Dim::UrlVisitors,
                Dim::UrlChannel,
                Dim::UrlRef,
                Dim::EntryPage,
                Dim::ExitPage,
            ] {
                let top = |x: &Aggregates| x.top(dim, now - 400, now + 1, None, 100_000);
                assert_eq!(top(a), top(model), "{dim:?}");
            }
            assert_eq!(
                a.url_stats(now - 120, now + 1, &some, None),
                model.url_stats(now - 120, now + 1, &some, None)
            );
            for u in some.iter().step_by(7) {
                assert_eq!(
                    a.url_series(h * 60, now + 1, 1, u, None),
                    model.url_series(h * 60, now + 1, 1, u, None)
                );
            }
            assert_eq!(
                a.bucket_lines(Res::Hour, h),
                model.bucket_lines(Res::Hour, h)
            );
            assert_eq!(
                a.bucket_lines(Res::Minute, minute),
                model.bucket_lines(Res::Minute, minute)
            );
        };
        let mut slices = 0;
        loop {
            a.fold_ended(now - 1, std::time::Duration::ZERO);
            // What the ticker does every 2 s: evicting folds only minutes leaving the window.
            a.evict(now);
            if !a.folding() {
                break;
            }
            slices += 1;
            check(&a, &model);
            // Meanwhile: urls folded or not, a new channel or referrer for some, new urls.
            let more = batch(slices * 97..slices * 97 + 300, slices);
            let new = batch(20_000 + slices * 20..20_000 + slices * 20 + 20, 0);
            // Visits that began in the busy minute go on in the next one: their start
            // minute's counts and entry and exit pages change, folded partitions or not.
            let mut next = Batch::default();
            for i in (0..20_000).step_by(50).skip(slices * 7).take(60) {
                let vid = ((i * 7) % 900) as u64;
                let ts = (minute + 1) * 60_000 + i as i64;
                let v = Inc::new(IncKind::Visitor, true, minute + 1, 1, Some(vid)).with_visit(ts);
                next.push_inc(v, "a.example", &url(20_000 + i % 997));
            }
            for b in [&more, &new, &next] {
                a.apply_batch(b, now);
                model.apply_batch(b, now);
            }
            check(&a, &model);
            if slices == 2 {
                // Encoded in place, and as the checkpointer does it: from a copy.
                let (snap, _) = a.checkpoint_snapshot(true, now);
                for bytes in [
                    encode(&mut a, &header(Kind::Base, 1, 0)),
                    encode_consuming(snap, &header(Kind::Base, 1, 0)),
                ] {
                    let mut r = Aggregates::new(AggConfig::default());
                    decode_into(&bytes, &mut r).unwrap();
                    assert!(!r.folding());
                    check(&r, &model);
                }
            }
        }
        assert!(slices >= 3, "folded in {slices} slices");
        assert!(a.hours.get(h).is_some_and(|b| b.folded_upto == minute + 1));
        model.fold_minutes(now - 1, usize::MAX);
        check(&a, &model);
        // The hour holds the minute whole: no part of it is read from the minute any more.
        let hour = |x: &Aggregates| {
            let mut lines = x.key_lines(x.hours.get(h).unwrap());
            lines.sort();
            lines
        };
        assert_eq!(hour(&a), hour(&model));
    }

    /// The checked-in sample of version 10 (tests/data/sample-v10.agg); see
    /// [`sample_v9_or_later`]. Regenerate with `PIXELD_WRITE_SAMPLE=1 cargo test --lib
    /// sample_v10`.
    #[test]
    fn sample_v10_decodes() {
        sample_v9_or_later(10, std::env::var_os("PIXELD_WRITE_SAMPLE").is_some());
    }

    /// The checked-in sample of version 9 (tests/data/sample-v9.agg, written by an earlier
    /// build, its url and profile visitors' hashes without their top bit; see
    /// [`sample_v9_or_later`]): the visitors of the file and the new ones count once each.
    #[test]
    fn sample_v9_decodes() {
        sample_v9_or_later(9, false);
    }

    /// The checked-in sample of `version` (9 on) decodes to the state it was written from,
    /// whose hours had folded none of their minutes (written with them); the decoded hours
    /// have folded every minute, and more increments — in those minutes, in a later minute of
    /// the same hour, and after a fold — leave both states giving the same answers. With
    /// `write`, the sample is written first from that state.
    fn sample_v9_or_later(version: u16, write: bool) {
        let name = format!("sample-v{version}.agg");
        // fixed-date: the sample's buckets sit at a fixed minute; it is only decoded.
        let now = 29_000_000;
        let mut a = sample_state_v8(now);
        assert!(a.hours.iter().any(|(h, b)| b.folded_upto <= h * 60
            && super::super::super::unfolded_minutes(&a.minutes, h, b.folded_upto)
                .next()
                .is_some()));
        if write {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
            std::fs::write(path.join(&name), encode(&mut a, &header(Kind::Base, 1, 0))).unwrap();
        }
        let (h, mut r) = read_sample(&name);
        assert_eq!((h.version, h.kind), (version, Kind::Base));
        for (n, b) in r.hours.iter() {
            let unfolded = super::super::super::unfolded_minutes(&r.minutes, n, b.folded_upto);
            assert_eq!(unfolded.count(), 0, "hour {n} holds its minutes");
        }
        assert_eq!(answers(&r, now), answers(&a, now));
        assert_eq!(breakdowns(&r, now), breakdowns(&a, now));
        assert_eq!(url_ref_rows(&r, now), url_ref_rows(&a, now));
        for (minute, url) in [(now - 2, "news"), (now, "later"), (now - 70, "old")] {
            let mut b = Batch::default();
            let inc = Inc::new(IncKind::Url, true, minute, 3, Some(11)).with_channel(1);
            b.push_inc_with(
                inc,
                "a.example",
                &format!("https://a.example/{url}"),
                "t.co",
            );
            a.apply_batch(&b, now);
            r.apply_batch(&b, now);
            assert_eq!(answers(&r, now), answers(&a, now));
            assert_eq!(url_ref_rows(&r, now), url_ref_rows(&a, now));
        }
        for x in [&mut a, &mut r] {
            x.fold_minutes(now + 1, usize::MAX);
        }
        assert_eq!(answers(&r, now), answers(&a, now));
        assert_eq!(breakdowns(&r, now), breakdowns(&a, now));
    }

    /// The checked-in sample of version 8 (tests/data/sample-v8.agg, written by an earlier
    /// build) decodes to the state it was written from, url × referrer cells included.
    #[test]
    fn sample_v8_decodes() {
        // fixed-date: the sample's buckets sit at a fixed minute; it is only decoded.
        let now = 29_000_000;
        let a = sample_state_v8(now);
        let (h, r) = read_sample("sample-v8.agg");
        assert_eq!((h.version, h.kind), (8, Kind::Base));
        assert_eq!(answers(&r, now), answers(&a, now));
        assert_eq!(breakdowns(&r, now), breakdowns(&a, now));
        assert_eq!(visits_by_channel(&r, now), visits_by_channel(&a, now));
        let s = |k: &str| k.to_string();
        let want = [
            (s("https://a.example/news from www.google.com"), 2),
            (s("https://a.example/news from t.co"), 1),
            (s("https://a.example/sport from (direct)"), 1),
        ];
        assert_eq!(url_ref_rows(&a, now), want);
        assert_eq!(url_ref_rows(&r, now), want);
        let last_hour = a.top(Dim::UrlRef, now - 10, now + 1, None, 100);
        assert_eq!(
            (last_hour.len(), last_hour[0].views),
            (3, 1),
            "google's second view is an hour earlier"
        );
    }

    /// Visits, bounces and visit pageviews by channel, over the last 400 minutes.
    fn visits_by_channel(a: &Aggregates, now: i64) -> Vec<(String, i64, i64, i64)> {
        let mut rows: Vec<_> = a
            .breakdown(&[0], now - 400, now + 1, None, &Default::default(), true)
            .into_iter()
            .filter(|r| !r.visits.is_zero())
            .map(|r| (r.key, r.visits.visits, r.visits.bounces, r.visits.views))
            .collect();
        rows.sort();
        rows
    }

    /// The checked-in sample of version 7 (tests/data/sample-v7.agg, written by an earlier
    /// build) decodes to the state it was written from, visits by entry profile included (and
    /// the visits in progress with their entry profiles: a later pageview still moves a
    /// visit's entry after decoding), and no url × referrer cells (version 7 had none).
    #[test]
    fn sample_v7_decodes() {
        // fixed-date: the sample's buckets sit at a fixed minute; it is only decoded.
        let now = 29_000_000;
        let mut a = sample_state_v7(now);
        let (h, mut r) = read_sample("sample-v7.agg");
        assert!(url_ref_rows(&r, now).is_empty());
        assert_eq!((h.version, h.kind), (7, Kind::Base));
        assert_eq!(answers(&r, now), answers(&a, now));
        assert_eq!(breakdowns(&r, now), breakdowns(&a, now));
        let s = |k: &str| k.to_string();
        let want = vec![(s("direct"), 1, 1, 1), (s("search"), 2, 0, 4)];
        assert_eq!(visits_by_channel(&a, now), want);
        assert_eq!(visits_by_channel(&r, now), want);
        // The profiles' visits add up to the site's, but for the heartbeat's visit.
        let t = r.totals(now - 400, now + 1, Some("a.example"));
        assert_eq!(
            t.visits.visits,
            1 + 4,
            "one from version 3's sample, four here"
        );
        // Visitor 21's visit, decoded, still moves: a pageview before it, directly.
        let mut b = Batch::default();
        let ts = (now - 30) * 60_000 - 5_000;
        let direct = direct_key();
        for agg in [&mut a, &mut r] {
            let inc = Inc::new(IncKind::Visitor, true, ts / 60_000, 0, Some(21)).with_visit(ts);
            b.push_inc_with(inc, "a.example", "https://a.example/first", &direct);
            agg.apply_batch(&b, now);
            b = Batch::default();
        }
        let want = vec![(s("direct"), 2, 1, 4), (s("search"), 1, 0, 2)];
        assert_eq!(visits_by_channel(&a, now), want);
        assert_eq!(visits_by_channel(&r, now), want);
    }

    /// The url × channel pairs of a state by pageviews.
    fn url_channel_rows(a: &Aggregates, now: i64) -> Vec<(String, u64)> {
        pair_rows(a, Dim::UrlChannel, now)
    }

    /// The pairs of `dim` (url × channel or url × referrer) of a state by pageviews, as "url
    /// from other".
    fn pair_rows(a: &Aggregates, dim: Dim, now: i64) -> Vec<(String, u64)> {
        a.top(dim, now - 400, now + 1, None, 100)
            .into_iter()
            .map(|r| {
                (
                    r.key.replace(crate::parse::event::dims::SEP, " from "),
                    r.views,
                )
            })
            .collect()
    }

    /// The checked-in sample of version 6 (tests/data/sample-v6.agg, written by an earlier
    /// build) decodes to the state it was written from, url × channel cells included (and no
    /// visits by profile: version 6 had none).
    #[test]
    fn sample_v6_decodes() {
        // fixed-date: the sample's buckets sit at a fixed minute; it is only decoded.
        let now = 29_000_000;
        let a = sample_state_v6(now);
        let (h, r) = read_sample("sample-v6.agg");
        assert!(visits_by_channel(&r, now).is_empty());
        assert_eq!((h.version, h.kind), (6, Kind::Base));
        assert_eq!(answers(&r, now), answers(&a, now));
        assert_eq!(breakdowns(&r, now), breakdowns(&a, now));
        let s = |k: &str| k.to_string();
        let want = [
            (s("https://a.example/news from search"), 3),
            (s("https://a.example/news from direct"), 2),
            (s("https://a.example/sport from social"), 1),
        ];
        assert_eq!(url_channel_rows(&a, now), want);
        assert_eq!(url_channel_rows(&r, now), want);
        // The cells of the minute and of its hour alike.
        let only_last_hour = a.top(Dim::UrlChannel, now - 10, now + 1, None, 100);
        assert_eq!(only_last_hour.len(), 3);
        assert_eq!(
            only_last_hour[0].views, 2,
            "search's third view is an hour earlier"
        );
    }

    /// One step of [`folding_and_checkpoints_never_change_an_answer`].
    #[derive(Debug, Clone)]
    enum Step {
        /// An increment `back` minutes ago: of url `url` (kind 0), of visitor `vid` (1, a
        /// visit's event), or of referrer `url` (2).
        Apply {
            back: i64,
            kind: u8,
            url: u8,
            vid: u64,
            pv: bool,
        },
        /// The ticker's fold of the minutes before `back` minutes ago, at most `budget`.
        Fold { back: i64, budget: usize },
        /// A checkpoint link (a base first, deltas after).
        Checkpoint,
        /// A restart: a last link, then the chain decoded into a new state, which goes on.
        Reload,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0i64..150, 0u8..3, 0u8..6, 0u64..12, any::<bool>())
                .prop_map(|(back, kind, url, vid, pv)| Step::Apply { back, kind, url, vid, pv }),
            2 => (0i64..150, 1usize..40).prop_map(|(back, budget)| Step::Fold { back, budget }),
            1 => Just(Step::Checkpoint),
            1 => Just(Step::Reload),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// However minutes are folded into their hours, checkpointed and reloaded in between
        /// increments — on time or late, into folded minutes or not — every answer (hours
        /// read whole, minutes, totals, uniques, visits, breakdowns) equals that of a state
        /// that only took the increments.
        #[test]
        fn folding_and_checkpoints_never_change_an_answer(
            steps in proptest::collection::vec(step(), 1..60)
        ) {
            // fixed-date: a fixed minute; every increment and read is relative to it.
            let now = 29_000_000;
            let mut model = Aggregates::new(AggConfig::default());
            let mut a = Aggregates::new(AggConfig::default());
            let mut chain: Vec<Vec<u8>> = Vec::new();
            for s in steps {
                match s {
                    Step::Apply { back, kind, url, vid, pv } => {
                        let minute = now - back;
                        let site = if url % 2 == 0 { "a.example" } else { "b.example" };
                        let mut b = Batch::default();
                        match kind {
                            0 => {
                                let inc = Inc::new(IncKind::Url, pv, minute, 3, Some(vid))
                                    .with_channel(1);
                                let page = format!("https://{site}/p{url}");
                                b.push_inc_with(inc, site, &page, "t.co");
                            }
                            1 => {
                                let ts = minute * 60_000 + (vid as i64) * 1000;
                                let inc = Inc::new(IncKind::Visitor, pv, minute, 2, Some(vid))
                                    .with_visit(ts);
                                let page = if pv { format!("https://{site}/p{url}") } else { String::new() };
                                b.push_inc(inc, site, &page);
                            }
                            _ => b.push(IncKind::Ref, pv, minute, 0, site, &format!("r{url}.example"), None),
                        }
                        model.apply_batch(&b, now);
                        a.apply_batch(&b, now);
                    }
                    Step::Fold { back, budget } => {
                        a.fold_minutes(now - back, budget);
                    }
                    Step::Checkpoint => {
                        let kind = if chain.is_empty() { Kind::Base } else { Kind::Delta };
                        let n = chain.len() as u64;
                        chain.push(encode(&mut a, &header(kind, n + 1, n)));
                    }
                    Step::Reload => {
                        // A last link, then the whole chain decoded into a new state.
                        let kind = if chain.is_empty() { Kind::Base } else { Kind::Delta };
                        let n = chain.len() as u64;
                        chain.push(encode(&mut a, &header(kind, n + 1, n)));
                        let mut r = Aggregates::new(AggConfig::default());
                        for link in &chain {
                            decode_into(link, &mut r).unwrap();
                        }
                        a = r;
                    }
                }
                proptest::prop_assert_eq!(answers(&a, now), answers(&model, now));
            }
            proptest::prop_assert_eq!(breakdowns(&a, now), breakdowns(&model, now));
            for h in (now - 150).div_euclid(60)..=now.div_euclid(60) {
                proptest::prop_assert_eq!(
                    a.bucket_lines(Res::Hour, h),
                    model.bucket_lines(Res::Hour, h),
                    "hour {}", h
                );
            }
        }
    }

    /// Pageviews and visitors by channel, device and bot, with and without a filter.
    fn breakdowns(a: &Aggregates, now: i64) -> String {
        use crate::agg::dims::DimFilter;
        let mut out = String::new();
        for (dim, site, filter) in [
            (0, None, DimFilter::default()),
            (5, Some("a.example"), DimFilter::default()),
            (
                5,
                None,
                DimFilter {
                    bots: true,
                    ..DimFilter::default()
                },
            ),
            (8, None, DimFilter::default()),
            (
                7,
                None,
                DimFilter {
                    is: vec![(0, "search".into())],
                    bots: false,
                    expr: None,
                    ..Default::default()
                },
            ),
        ] {
            let mut rows = a.breakdown(&[dim], now - 400, now + 1, site, &filter, true);
            rows.sort_by(|x, y| x.key.cmp(&y.key));
            out.push_str(&format!("{dim} {site:?} {filter:?}: {rows:?}\n"));
        }
        out
    }

    /// Custom dimensions (`[agg.dimensions]`): counted like the built-in ones, found by name
    /// in a profile's key (so a checkpoint read under another list of them answers each by
    /// its own values), capped at `VALUE_CAP` values with the rest `(other)`.
    #[test]
    fn custom_dimensions_count_and_survive_a_checkpoint_and_a_config_change() {
        use crate::agg::dims::{DimFilter, OTHER, VALUE_CAP};
        use crate::parse::event::{dims::DIMS, EventConfig, EventParser};
        let custom = |names: &[&str]| -> AggConfig {
            let mut cfg = AggConfig::default();
            cfg.event.custom = names
                .iter()
                .map(|n| (n.to_string(), n.to_string()))
                .collect();
            cfg
        };
        let cfg = custom(&["author", "section"]);
        let mut parser = EventParser::new(EventConfig {
            custom: cfg.event.custom.clone(),
            ..EventConfig::default()
        });
        // fixed-date: aggregation only, at a fixed minute.
        let now = 29_000_000;
        let mut a = Aggregates::new(cfg.clone());
        let mut b = Batch::default();
        for (i, line) in [
            r#"{"url":"https://a.example/1","section":"sport","author":"Ann","vid":"1"}"#,
            r#"{"url":"https://a.example/2","section":"sport","author":"Bob","vid":"2"}"#,
            r#"{"url":"https://a.example/3","section":"news","author":7,"vid":"2"}"#,
            r#"{"url":"https://a.example/4","vid":"3"}"#,
        ]
        .iter()
        .enumerate()
        {
            let e = parser.parse(line.as_bytes()).unwrap();
            assert!(e.profile.contains("section="), "{}", e.profile);
            b.push(
                IncKind::Profile,
                true,
                now - 2,
                0,
                e.site,
                e.profile,
                Some(i as u64 % 3),
            );
        }
        a.apply_batch(&b, now);
        let rows = |agg: &Aggregates, dims: &[usize]| {
            let mut rows: Vec<(String, u64)> = agg
                .breakdown(dims, now - 10, now + 1, None, &DimFilter::default(), true)
                .into_iter()
                .map(|r| (r.key, r.views))
                .collect();
            rows.sort();
            rows
        };
        let s = |k: &str| k.to_string();
        let (author, section) = (DIMS.len(), DIMS.len() + 1);
        let want_sections = [(s("(none)"), 1), (s("news"), 1), (s("sport"), 2)];
        assert_eq!(rows(&a, &[section]), want_sections);
        assert_eq!(
            rows(&a, &[author]),
            [(s("(none)"), 1), (s("7"), 1), (s("Ann"), 1), (s("Bob"), 1)]
        );
        let sport_by_author = DimFilter {
            is: vec![(section, s("sport"))],
            ..DimFilter::default()
        };
        assert_eq!(
            a.breakdown(&[author], now - 10, now + 1, None, &sport_by_author, true)
                .len(),
            2
        );
        // Through a checkpoint: the same, and under a list without `author` (or with more),
        // `section` keeps its values.
        let bytes = encode(&mut a, &header(Kind::Base, 1, 0));
        for names in [
            &["author", "section"][..],
            &["section"],
            &["a_new_one", "section"],
        ] {
            let cfg = custom(names);
            let mut r = Aggregates::new(cfg.clone());
            decode_into(&bytes, &mut r).unwrap();
            let section = cfg.dim_index("section").unwrap();
            assert_eq!(rows(&r, &[section]), want_sections, "{names:?}");
            if let Some(new) = cfg.dim_index("a_new_one") {
                assert_eq!(rows(&r, &[new]), [(s("(none)"), 4)], "not configured then");
            }
        }
        // Capped: values past VALUE_CAP count as (other), each counted once.
        let mut b = Batch::default();
        for i in 0..VALUE_CAP + 5 {
            let line = format!(r#"{{"url":"https://a.example/","section":"s{i}","vid":"9"}}"#);
            let e = parser.parse(line.as_bytes()).unwrap();
            b.push(
                IncKind::Profile,
                true,
                now - 1,
                0,
                e.site,
                e.profile,
                Some(9),
            );
        }
        a.apply_batch(&b, now);
        let listed = rows(&a, &[section]);
        assert_eq!(listed.len(), VALUE_CAP + 1, "the cap, and (other)");
        assert!(listed.contains(&(s(OTHER), 8)), "3 known values came first");
        assert_eq!(a.profiles.overflow, 8);
    }

    /// The checked-in sample of version 5 (tests/data/sample-v5.agg, written by an earlier
    /// build) decodes to the state it was written from, profiles included (and no url ×
    /// channel cells: version 5 had none).
    #[test]
    fn sample_v5_decodes() {
        // fixed-date: the sample's buckets sit at a fixed minute; it is only decoded.
        let now = 29_000_000;
        let a = sample_state_v5(now);
        let (h, r) = read_sample("sample-v5.agg");
        assert_eq!((h.version, h.kind), (5, Kind::Base));
        assert_eq!(answers(&r, now), answers(&a, now));
        assert!(url_channel_rows(&r, now).is_empty());
        assert_eq!(breakdowns(&r, now), breakdowns(&a, now));
        let rows = |agg: &Aggregates, dim, f: &crate::agg::dims::DimFilter| {
            let mut rows: Vec<(String, u64, u64)> = agg
                .breakdown(&[dim], now - 400, now + 1, None, f, true)
                .into_iter()
                .map(|r| (r.key, r.views, r.visitors))
                .collect();
            rows.sort();
            rows
        };
        let none = crate::agg::dims::DimFilter::default();
        let s = |k: &str| k.to_string();
        for agg in [&a, &r] {
            // Bots left out by default; every dimension adds up to the same 10 pageviews.
            assert_eq!(
                rows(agg, 0, &none),
                [
                    (s("direct"), 6, 5),
                    (s("search"), 3, 3),
                    (s("social"), 1, 1)
                ]
            );
            assert_eq!(
                rows(agg, 5, &none),
                [
                    (s("desktop"), 6, 5),
                    (s("mobile"), 3, 3),
                    (s("tablet"), 1, 1)
                ]
            );
            assert_eq!(
                rows(agg, 8, &none),
                [(s("Googlebot"), 1, 1), (s("human"), 10, 9)]
            );
            let with_bots = crate::agg::dims::DimFilter {
                bots: true,
                ..none.clone()
            };
            assert_eq!(rows(agg, 0, &with_bots)[0], (s("direct"), 7, 6));
            let search_os = crate::agg::dims::DimFilter {
                is: vec![(0, s("search"))],
                bots: false,
                expr: None,
                ..Default::default()
            };
            assert_eq!(rows(agg, 7, &search_os), [(s("iOS"), 3, 3)]);
            let nothing = crate::agg::dims::DimFilter {
                is: vec![(0, s("paid"))],
                bots: false,
                expr: None,
                ..Default::default()
            };
            assert!(rows(agg, 7, &nothing).is_empty());
            // By pair of values: channel and device.
            let mut pairs: Vec<(String, u64, u64)> = agg
                .breakdown(&[0, 5], now - 400, now + 1, None, &none, true)
                .into_iter()
                .map(|r| {
                    (
                        r.key.replace(crate::parse::event::dims::SEP, "/"),
                        r.views,
                        r.visitors,
                    )
                })
                .collect();
            pairs.sort();
            assert_eq!(
                pairs,
                [
                    (s("direct/desktop"), 6, 5),
                    (s("search/mobile"), 3, 3),
                    (s("social/tablet"), 1, 1)
                ]
            );
        }
    }

    /// The checked-in sample of version 4 (tests/data/sample-v4.agg, written by an earlier
    /// build) decodes to the state it was written from, url visitors included.
    #[test]
    fn sample_v4_decodes() {
        // fixed-date: the sample's buckets sit at a fixed minute; it is only decoded.
        let now = 29_000_000;
        let a = sample_state_v4(now);
        let (h, r) = read_sample("sample-v4.agg");
        assert_eq!((h.version, h.kind), (4, Kind::Base));
        assert_eq!(answers(&r, now), answers(&a, now));
        let urls: Vec<String> = ["/one", "/three", "/many", "/anon"]
            .iter()
            .map(|u| format!("https://a.example{u}"))
            .collect();
        for agg in [&a, &r] {
            let st = agg.url_stats(now - 60, now, &urls, None);
            let got: Vec<(u64, bool, u64)> = st
                .iter()
                .map(|s| (s.visitors.unwrap_or(u64::MAX), s.sketched, s.views))
                .collect();
            assert_eq!(got[..2], [(1, false, 1), (3, false, 3)]);
            assert_eq!(got[3], (0, false, 1));
            let (many, sketched, views) = got[2];
            assert!(sketched && views == 1000);
            assert!((many as f64 - 1000.0).abs() < 50.0, "{many}");
            // The hour and the minute agree; the minute series answers them as uniques.
            let series = agg.url_series(now - 3, now - 2, 1, &urls[1], None);
            assert_eq!(series[0].uniques, Some(3));
        }
    }

    /// The checked-in sample of version 3 (tests/data/sample-v3.agg, written by an earlier
    /// build) still decodes to the state it was written from, visits and the visitor table
    /// included.
    #[test]
    fn sample_v3_decodes() {
        // fixed-date: the sample's buckets sit at a fixed minute; it is only decoded.
        let now = 29_000_000;
        let a = sample_state_v3(now);
        let (h, r) = read_sample("sample-v3.agg");
        assert_eq!((h.version, h.kind), (3, Kind::Base));
        assert_eq!(answers(&r, now), answers(&a, now));
        assert_eq!(r.visits.entries(), a.visits.entries());
        assert_eq!(r.visits.len(), 2);
        let v = r.totals(now - 200, now + 1, None).visits;
        // The late event joined a's two visits: one visit of 50 minutes, and b's bounce.
        assert_eq!(
            (v.visits, v.bounces, v.views, v.duration_ms),
            (2, 1, 3, 50 * 60_000)
        );
        let m = (now - 120, now - 20);
        for (agg, what) in [(&a, "written"), (&r, "read")] {
            let b = agg.materialize(Res::Minute, m.0);
            let mut pages: Vec<(String, i32, i32)> = b
                .pages
                .iter()
                .map(|(id, c)| (agg.urls.name(*id).to_string(), c.entries, c.exits))
                .collect();
            pages.sort();
            assert_eq!(
                pages,
                vec![
                    ("https://a.example/in".to_string(), 1, 0),
                    ("https://a.example/out".to_string(), 0, 1)
                ],
                "{what}"
            );
            assert_eq!(agg.materialize(Res::Minute, m.1).pages.len(), 1, "{what}");
        }
    }

    /// The checked-in sample of version 2 (tests/data/sample-v2.agg, written by an earlier
    /// build) still decodes to the state it was written from, without visits.
    #[test]
    fn sample_v2_decodes() {
        // fixed-date: the sample's buckets sit at a fixed minute; it is only decoded.
        let now = 29_000_000;
        let a = sample_state_v2(now);
        let (h, r) = read_sample("sample-v2.agg");
        assert_eq!(
            (h.version, h.kind, h.applied),
            (2, Kind::Base, vec![10, 20])
        );
        assert_eq!(answers(&r, now), answers(&a, now));
        assert_eq!(r.sealed_list(), a.sealed_list());
        let d = (now - 40 * 1440).div_euclid(1440) * 1440;
        assert_eq!(r.totals(d, d + 1440, None).hits, 1);
    }

    /// The checked-in sample of version 1 (tests/data/sample-v1.agg, written by an earlier
    /// build) still decodes to the state it was written from.
    #[test]
    fn sample_v1_decodes() {
        // fixed-date: the sample's buckets sit at a fixed minute; it is only decoded.
        let now = 29_000_000;
        let a = sample_state(now);
        let (h, r) = read_sample("sample-v1.agg");
        assert_eq!(
            h,
            Header {
                version: 1,
                kind: Kind::Base,
                shards: 2,
                owner: 1,
                seq: 1,
                parent: 0,
                fingerprint: 42,
                written_ns: 7,
                applied: vec![10, 20],
            }
        );
        assert_eq!(answers(&r, now), answers(&a, now));
        assert_eq!(
            r.totals(now, now + 1, Some("a.example"))
                .uniques
                .map(|u| u > 2900),
            Some(true)
        );
    }
}
