//! Re-partitioning the aggregate store when `shards` changes between runs, so that the
//! aggregates (and the history the logs no longer hold) survive a new shard count.
//!
//! Every (dimension, key) lives on exactly one owner: urls and referrer domains on the owner
//! their key hashes to among `shards`, site totals and uniques on the owner of the visitor.
//! A new count moves keys. [`split`] takes every old owner's state — each brought first to the
//! same applied-offset vector by its caller (`server::repartition`), so that the states
//! together hold exactly the records below one frontier — and deals its cells out: url (and
//! url × channel) and referrer cells to the new owner of their key, keeping their bucket (a minute, hour or day
//! slot in memory, or a sealed hour or day, which stays sealed); site cells whole, old owner
//! `o`'s to new owner `o mod n`, since a site cell cannot be split by visitor (its sketch
//! mixes them) and query answers add the owners' totals and uniques up: every count stays
//! what it was, and every estimate too when the count grows (an old owner's sketch stays its
//! own summand); when it shrinks, two old owners' sketches of one bucket merge into one, whose
//! estimate is the union's. So that a visitor is never counted on two owners in one bucket,
//! increments for event minutes before the end of the day of the change keep going where the
//! old count sent them, mapped the same way (`route::partition::Epochs`, kept in
//! `agg/partitions`); later minutes go to the visitor's owner under the new count.
//!
//! [`write()`] puts the new owners' stores in place durably: each new owner's sealed buckets as
//! sealed files and its state as a base checkpoint (sequence 1, the common frontier as its
//! applied vector, widened with zeros for new shards), all in `agg.repartition/`, then swaps
//! that directory for `agg/` (renames and directory fsyncs); [`finish_interrupted`] completes
//! or discards an interrupted swap at the next start. A smaller count also records, in
//! `agg/dropped-sources`, up to which offset the store holds the logs of the shards it
//! dropped ([`read_dropped`]): should those logs come back with a larger count, they are
//! replayed from there, not counted twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::format::{self, Header, Kind};
use super::StoreError;
use crate::agg::cells::{Bucket, PairKey};
use crate::agg::sealed::{self, SealedHeader};
use crate::agg::{Aggregates, Res, Sealed};
use crate::route::partition::{owner_of_key, REF_SEED, URL_SEED};

/// Where the new store is written before it replaces `agg/`.
const STAGING: &str = "agg.repartition";
/// Where the old store waits while the new one is renamed into place.
const OLD: &str = "agg.pre-repartition";
/// Under `agg/`: the log offsets up to which shards dropped by a smaller count are held by the
/// store (one `shard offset` line each), so that a later larger count does not replay them.
const DROPPED: &str = "dropped-sources";

/// Under `agg/`: visitor ownership across shard-count changes (`route::partition::Epochs`).
const PARTITIONS: &str = "partitions";

/// The store's visitor-ownership epochs (none when the shard count never changed).
pub fn read_epochs(data_dir: &Path) -> crate::route::partition::Epochs {
    crate::route::partition::Epochs::from_text(
        &std::fs::read_to_string(data_dir.join("agg").join(PARTITIONS)).unwrap_or_default(),
    )
}

/// The shards a smaller count dropped and the offset of each one's log the store holds.
pub fn read_dropped(data_dir: &Path) -> std::collections::BTreeMap<usize, u64> {
    std::fs::read_to_string(data_dir.join("agg").join(DROPPED))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (s, o) = l.split_once(' ')?;
            Some((s.trim().parse().ok()?, o.trim().parse().ok()?))
        })
        .collect()
}

/// One new owner's store: its state (tier slots in memory) and its sealed buckets.
pub struct Part {
    pub agg: Aggregates,
    pub sealed: Vec<(Res, i64, Bucket)>,
}

/// Adds one old bucket's cells to the new owners' buckets `out` (in their ids), dealt out
/// as the module doc says.
fn deal(
    from: &Aggregates,
    b: &Bucket,
    old_owner: usize,
    to: &mut [Aggregates],
    out: &mut [Bucket],
) {
    let n = to.len();
    for (&id, cell) in &b.urls {
        let t = owner_of_key(URL_SEED, from.urls.name(id), n);
        let nid = to[t].url_from(from, id);
        out[t].urls.entry(nid).or_default().add(cell);
    }
    // A url's pageviews by channel live with the url.
    for (&k, &v) in &b.url_channels {
        let (id, channel) = crate::agg::cells::url_channel_of(k);
        let t = owner_of_key(URL_SEED, from.urls.name(id), n);
        let nid = to[t].url_from(from, id);
        let c = out[t]
            .url_channels
            .entry(crate::agg::cells::url_channel_key(nid, channel))
            .or_default();
        *c = c.saturating_add(v);
    }
    // And by referrer.
    for (&k, &v) in &b.url_refs {
        let (id, r) = crate::agg::cells::url_ref_of(k);
        let t = owner_of_key(URL_SEED, from.urls.name(id), n);
        let nid = to[t].url_from(from, id);
        let (nr, _) = to[t].refs.intern(from.refs.name(r));
        let c = out[t]
            .url_refs
            .entry(crate::agg::cells::url_ref_key(nid, nr))
            .or_default();
        *c = c.saturating_add(v);
    }
    for (&k, &v) in &b.refs {
        let name = from.refs.name(k.lo());
        let t = owner_of_key(REF_SEED, name, n);
        let agg = &mut to[t];
        let (s, _) = agg.sites.intern(from.sites.name(k.hi()));
        let (r, _) = agg.refs.intern(name);
        let c = out[t].refs.entry(PairKey::new(s, r)).or_default();
        *c = c.saturating_add(v);
    }
    let t = old_owner % n;
    for (&id, cell) in &b.sites {
        let (s, _) = to[t].sites.intern(from.sites.name(id));
        out[t].sites.entry(s).or_default().merge(cell);
    }
    out[t].all.merge(&b.all);
    // Entry and exit pages live with the visitors, like the site cells.
    for (&id, cell) in &b.pages {
        let nid = to[t].url_from(from, id);
        out[t].pages.entry(nid).or_default().add(cell);
    }
    // Profiles too, and the visits by entry profile.
    for (&id, cell) in &b.profiles {
        let nid = to[t].profile_from(from, id);
        out[t].profiles.entry(nid).or_default().add(cell);
    }
    for (&id, c) in &b.profile_visits {
        let nid = to[t].profile_from(from, id);
        out[t].profile_visits.entry(nid).or_default().add(c);
    }
}

/// The new owners' stores for `n` shards, from every old owner's state (`old[o]` is old owner
/// `o`'s, all at one applied vector): see the module doc.
pub fn split(old: &[Aggregates], n: usize) -> Vec<Part> {
    let n = n.max(1);
    let cfg = old.first().map(|a| a.cfg.clone()).unwrap_or_default();
    let mut to: Vec<Aggregates> = (0..n).map(|_| Aggregates::new(cfg.clone())).collect();
    let mut sealed: Vec<HashMap<(Res, i64), Bucket>> = (0..n).map(|_| HashMap::new()).collect();
    for (o, from) in old.iter().enumerate() {
        for res in [Res::Minute, Res::Hour, Res::Day] {
            for (number, b) in from.tier(res).iter() {
                // An hour with its unfolded minutes; the new hours hold all of theirs.
                let b = match res {
                    Res::Hour => crate::agg::whole_hour(&from.minutes, number, b),
                    _ => std::borrow::Cow::Borrowed(b),
                };
                let mut out: Vec<Bucket> = (0..n).map(|_| Bucket::default()).collect();
                deal(from, &b, o, &mut to, &mut out);
                for (t, part) in out.into_iter().enumerate() {
                    if part.is_empty() {
                        continue;
                    }
                    if let Some(slot) = to[t].tier_mut(res).get_mut(number) {
                        slot.merge(&part);
                        slot.dirty = true;
                        if res == Res::Hour {
                            slot.folded_upto = (number + 1) * 60;
                        }
                    }
                }
            }
        }
        for (&(res, number), s) in &from.sealed {
            let b = match s {
                Sealed::File(f) => f.to_bucket(),
                Sealed::Writing(Some(b)) if res == Res::Hour => Bucket::clone(b),
                // (A day being written is read from its hours; a loaded store has none.)
                Sealed::Writing(_) => continue,
            };
            let mut out: Vec<Bucket> = (0..n).map(|_| Bucket::default()).collect();
            deal(from, &b, o, &mut to, &mut out);
            for (t, part) in out.into_iter().enumerate() {
                if !part.is_empty() {
                    sealed[t].entry((res, number)).or_default().merge(&part);
                }
            }
        }
        // Visits in progress go where the old owner's site cells went, as its visitors'
        // increments do until the next UTC midnight (`route::partition::Epochs`).
        to[o % n].take_visits(from);
        // Lost sealed files still to be recomputed from the logs: every new owner recomputes
        // its keys of them.
        for a in &mut to {
            a.repair_hours.extend(&from.repair_hours);
            a.repair_days.extend(&from.repair_days);
        }
    }
    to.into_iter()
        .zip(sealed)
        .map(|(mut agg, s)| {
            agg.repair_hours.sort_unstable();
            agg.repair_hours.dedup();
            agg.repair_days.sort_unstable();
            agg.repair_days.dedup();
            let mut sealed: Vec<(Res, i64, Bucket)> =
                s.into_iter().map(|((r, k), b)| (r, k, b)).collect();
            sealed.sort_by_key(|(r, k, _)| (r.code(), *k));
            // A bucket listed as sealed and also lost cannot be both: the file wins.
            agg.listed = sealed.iter().map(|(r, k, _)| (*r, *k)).collect();
            Part { agg, sealed }
        })
        .collect()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `dir/name` durably (temp, fsync, rename; the caller fsyncs `dir`).
fn put(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write as _;
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Puts the new owners' stores in place of `agg/` (see the module doc): `applied` is the
/// frontier every part holds, one offset per new shard.
/// `dropped` goes to `agg/dropped-sources` ([`read_dropped`]).
pub fn write(
    data_dir: &Path,
    parts: Vec<Part>,
    fingerprint: u64,
    applied: &[u64],
    dropped: &std::collections::BTreeMap<usize, u64>,
    epochs: &crate::route::partition::Epochs,
) -> Result<(), StoreError> {
    let staging = data_dir.join(STAGING);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    if !dropped.is_empty() {
        let text: String = dropped.iter().map(|(s, o)| format!("{s} {o}\n")).collect();
        put(&staging, DROPPED, text.as_bytes())?;
    }
    if !epochs.is_empty() {
        put(&staging, PARTITIONS, epochs.to_text().as_bytes())?;
    }
    let n = parts.len();
    for (owner, mut part) in parts.into_iter().enumerate() {
        let dir = staging.join(crate::log::format::shard_dir_name(owner));
        let sealed_dir = dir.join("sealed");
        std::fs::create_dir_all(&sealed_dir).map_err(io(&sealed_dir))?;
        for (tier, number, b) in &part.sealed {
            let h = SealedHeader {
                tier: *tier,
                shards: n as u32,
                owner: owner as u32,
                number: *number,
                written_ns: crate::sys::now_ns(),
            };
            put(
                &sealed_dir,
                &sealed::file_name(*tier, *number),
                &sealed::encode(&h, b),
            )?;
        }
        sync_dir(&sealed_dir)?;
        let bytes = format::encode(
            &mut part.agg,
            &Header {
                version: format::VERSION,
                kind: Kind::Base,
                shards: n as u32,
                owner: owner as u32,
                seq: 1,
                parent: 0,
                fingerprint,
                written_ns: crate::sys::now_ns(),
                applied: applied.to_vec(),
            },
        );
        put(&dir, &super::file_name(1), &bytes)?;
        sync_dir(&dir)?;
    }
    sync_dir(&staging)?;
    sync_dir(data_dir)?;
    // The swap: the old store aside, the new one in, then the old one gone.
    let agg = data_dir.join("agg");
    let old = data_dir.join(OLD);
    if agg.exists() {
        std::fs::rename(&agg, &old).map_err(io(&agg))?;
    }
    std::fs::rename(&staging, &agg).map_err(io(&staging))?;
    sync_dir(data_dir)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

/// Completes or discards a re-partition a crash interrupted (see [`write()`]'s order): a
/// staging directory beside a store is incomplete and removed; one without a store (the old
/// one was already set aside) is complete and renamed into place; an old store set aside
/// beside the new one is removed. Returns what it did, for stderr.
pub fn finish_interrupted(data_dir: &Path) -> Result<Vec<String>, StoreError> {
    let (agg, staging, old) = (
        data_dir.join("agg"),
        data_dir.join(STAGING),
        data_dir.join(OLD),
    );
    let mut done = Vec::new();
    if staging.exists() {
        if agg.exists() {
            std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
            done.push(format!(
                "{}: an interrupted re-partition of the aggregate store, removed (the store it would have replaced is intact)",
                staging.display()
            ));
        } else {
            std::fs::rename(&staging, &agg).map_err(io(&staging))?;
            sync_dir(data_dir)?;
            done.push(format!(
                "{}: a re-partitioned aggregate store written completely before a crash, put in place",
                staging.display()
            ));
        }
    }
    if old.exists() && agg.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
        done.push(format!(
            "{}: the store a completed re-partition replaced, removed",
            old.display()
        ));
    }
    Ok(done)
}

/// The shard count the store under `data_dir` was written with (its owner 0's newest
/// readable checkpoint), or None without one.
pub fn stored_shards(data_dir: &Path) -> Option<usize> {
    let files = super::list(&super::owner_dir(data_dir, 0)).ok()?;
    files
        .iter()
        .rev()
        .find_map(|(_, path)| super::read_header(path).ok())
        .map(|h| h.shards as usize)
}

/// The store directory the old owners are read from (for messages).
pub fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agg")
}
