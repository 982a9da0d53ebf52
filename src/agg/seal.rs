//! Sealing: how one owner's closed hours and days move from memory into sealed files
//! (`sealed`'s format) and back — what a checkpoint seals ([`Aggregates::checkpoint_snapshot`],
//! [`SealJob`]), mapping the files once the checkpoint that lists them is durable, handing
//! them back to memory when it fails, opening the files a loaded chain lists, and making
//! again what a lost file held (from its hours, or from the log through the catch-up).
//!
//! The invariant it keeps: a sealed bucket is read as its file plus the late increments kept
//! in memory, never one without the other, and a file is used only when the checkpoint chain
//! lists it (see docs/aggregate-store.md, "Sealed hours and days").

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::buckets::Tier;
use super::cells::{Bucket, NameCounts};
use super::sealed::{self, SealedFile};
use super::{Aggregates, Res, Sealed};

/// A bucket a checkpoint seals: its parts (in memory: copied; sealed hours of a day: their
/// files), merged when the checkpoint is encoded, off the shard's executor.
#[derive(Debug)]
pub struct SealJob {
    pub tier: Res,
    pub number: i64,
    parts: Vec<SealPart>,
    /// A day's cells counted straight into the day tier (its hours had left their window,
    /// or the day was recomputed from the log), put back if the seal fails; shared with
    /// `sealed`'s `Writing` entry, so that reads see them while the file is written.
    direct: Option<Arc<Bucket>>,
}

#[derive(Debug)]
enum SealPart {
    Mem(Arc<Bucket>),
    File(Arc<SealedFile>),
}

impl SealJob {
    /// The sealed bucket: its one part as it is (an hour), or every part merged (a day).
    pub fn bucket(&self) -> Cow<'_, Bucket> {
        match (self.parts.as_slice(), &self.direct) {
            ([SealPart::Mem(b)], None) => Cow::Borrowed(&**b),
            _ => Cow::Owned(self.merged()),
        }
    }

    fn merged(&self) -> Bucket {
        let mut b = Bucket::default();
        for p in &self.parts {
            match p {
                SealPart::Mem(m) => b.merge(m),
                SealPart::File(f) => b.merge(&f.to_bucket()),
            }
        }
        if let Some(d) = &self.direct {
            b.merge(d);
        }
        b
    }
}

/// Empties bucket `number` of `tier` (a slot tagged with it, holding nothing, marked dirty so
/// that the next checkpoint writes it empty) and returns what it held, clean; None when the
/// ring holds a newer bucket in its slot.
fn empty_slot(tier: &mut Tier<Bucket>, number: i64) -> Option<Bucket> {
    tier.get_mut(number).map(|slot| {
        // An hour's emptied slot has folded what the old bucket had: the minutes it had not
        // are still read with it.
        let folded_upto = slot.folded_upto;
        let mut old = std::mem::replace(
            slot,
            Bucket {
                dirty: true,
                folded_upto,
                ..Bucket::default()
            },
        );
        old.dirty = false;
        old
    })
}

impl Aggregates {
    /// Whether `tier` bucket `number` is closed at `now_min`: it ended more than the minute
    /// window ago (so its minutes are gone too), and it may be sealed.
    pub(super) fn closed(&self, tier: Res, number: i64, now_min: i64) -> bool {
        (number + 1) * tier.width() + self.cfg.minute_window <= now_min
    }

    /// The hours and days a checkpoint at `now_min` would seal: closed, not sealed yet,
    /// holding something, still inside their window.
    pub(super) fn seal_candidates(&self, now_min: i64) -> (Vec<i64>, Vec<i64>) {
        let hour_floor = self.hour_floor(now_min).div_euclid(60);
        let day_floor = self.day_floor(now_min).div_euclid(1440);
        let mut hours: Vec<i64> = self
            .hours
            .iter()
            .filter(|(h, b)| {
                *h >= hour_floor
                    && self.closed(Res::Hour, *h, now_min)
                    && !b.is_empty()
                    && !self.sealed.contains_key(&(Res::Hour, *h))
            })
            .map(|(h, _)| h)
            .collect();
        hours.sort_unstable();
        let mut days: Vec<i64> = hours.iter().map(|h| h.div_euclid(24)).collect();
        days.extend(
            self.sealed
                .keys()
                .filter(|k| k.0 == Res::Hour)
                .map(|k| k.1.div_euclid(24)),
        );
        days.extend(
            self.days
                .iter()
                .filter(|(_, b)| !b.is_empty())
                .map(|(d, _)| d),
        );
        days.sort_unstable();
        days.dedup();
        days.retain(|&d| {
            d >= day_floor
                && self.closed(Res::Day, d, now_min)
                && !self.sealed.contains_key(&(Res::Day, d))
        });
        (hours, days)
    }

    /// Moves what a checkpoint at `now_min` seals out of the tiers: an hour's bucket waits in
    /// `sealed` (still read) until its file is written; a day is the merge of its hours'
    /// parts (copied, or their files), made when the job is encoded. The emptied slots are
    /// marked dirty, so that the checkpoint that lists the sealed file also empties them in
    /// the chain. Increments that arrive meanwhile land in those slots (late increments).
    fn take_seals(&mut self, now_min: i64) -> Vec<SealJob> {
        // A closed hour's minutes are out of the window: fold what of them is still here.
        self.fold_minutes(self.minute_floor(now_min), usize::MAX);
        let (hours, days) = self.seal_candidates(now_min);
        let mut jobs = Vec::with_capacity(hours.len() + days.len());
        for h in hours {
            let Some(b) = empty_slot(&mut self.hours, h) else {
                continue;
            };
            let b = Arc::new(b);
            jobs.push(SealJob {
                tier: Res::Hour,
                number: h,
                parts: vec![SealPart::Mem(b.clone())],
                direct: None,
            });
            self.sealed.insert((Res::Hour, h), Sealed::Writing(Some(b)));
        }
        for d in days {
            let mut parts = Vec::new();
            for h in d * 24..(d + 1) * 24 {
                if let Some(b) = self.hours.get(h).filter(|b| !b.is_empty()) {
                    // Late increments of a sealed hour: small, copied.
                    parts.push(SealPart::Mem(Arc::new(b.clone())));
                }
                match self.sealed.get(&(Res::Hour, h)) {
                    Some(Sealed::Writing(Some(b))) => parts.push(SealPart::Mem(b.clone())),
                    Some(Sealed::File(f)) => parts.push(SealPart::File(f.clone())),
                    _ => {}
                }
            }
            let direct = empty_slot(&mut self.days, d)
                .filter(|b| !b.is_empty())
                .map(Arc::new);
            jobs.push(SealJob {
                tier: Res::Day,
                number: d,
                parts,
                direct: direct.clone(),
            });
            self.sealed.insert((Res::Day, d), Sealed::Writing(direct));
        }
        jobs
    }

    /// The files of `jobs` are durable (and the checkpoint that lists them): map them.
    /// A file that cannot be mapped back is unsealed (its bucket returns to memory) and
    /// reported.
    pub fn seals_written(&mut self, jobs: &[(Res, i64, PathBuf)], owner: u32) -> Vec<String> {
        let opened = open_sealed_files(jobs, owner, self.name_counts());
        self.seals_mapped(opened)
    }

    /// [`Aggregates::seals_written`] with the files already opened (by
    /// [`open_sealed_files`], which reads every byte and may run on another thread).
    pub fn seals_mapped(&mut self, opened: Vec<Opened>) -> Vec<String> {
        let mut problems = Vec::new();
        for (tier, number, f) in opened {
            match f {
                Ok(f) => {
                    self.sealed
                        .insert((tier, number), Sealed::File(Arc::new(f)));
                }
                Err(e) => {
                    problems.push(format!("{e}; kept in memory instead"));
                    self.unseal(tier, number, None);
                }
            }
        }
        problems
    }

    /// The checkpoint that would have listed `jobs` failed: their buckets return to memory.
    pub fn seals_failed(&mut self, jobs: Vec<SealJob>) {
        for j in jobs {
            let SealJob {
                tier,
                number,
                parts,
                direct,
            } = j;
            // Drop the job's share of the bucket first, so that unsealing takes it back
            // without a copy.
            drop(parts);
            self.unseal(tier, number, direct);
        }
    }

    /// Takes `tier` `number` out of the sealed set and back into memory: an hour's closed
    /// part is merged into its slot; a day's late increments are dropped (its hours hold
    /// them too) and `direct` is put back.
    pub(super) fn unseal(&mut self, tier: Res, number: i64, direct: Option<Arc<Bucket>>) {
        let Some(entry) = self.sealed.remove(&(tier, number)) else {
            return;
        };
        match tier {
            Res::Hour => {
                let closed = match entry {
                    Sealed::Writing(Some(b)) => Some(Arc::unwrap_or_clone(b)),
                    Sealed::File(f) => {
                        self.retired.push(f.path.clone());
                        Some(f.to_bucket())
                    }
                    Sealed::Writing(None) => None,
                };
                if let (Some(c), Some(slot)) = (closed, self.hours.get_mut(number)) {
                    slot.merge(&c);
                    slot.dirty = true;
                }
            }
            _ => {
                if let Sealed::File(f) = &entry {
                    self.retired.push(f.path.clone());
                }
                // The entry's share of `direct` first, so that it comes back without a copy.
                drop(entry);
                if let Some(slot) = self.days.get_mut(number) {
                    *slot = direct.map(Arc::unwrap_or_clone).unwrap_or_default();
                    slot.dirty = true;
                }
            }
        }
    }

    /// Maps the sealed files a loaded chain lists, from `dir`. A listed file that is missing
    /// or damaged is reported (and no longer listed), and what it held is made again where it
    /// can be: a lost day whose hours are all inside the hour window is made again from them
    /// by the next checkpoint (its late increments, which its hours hold too, are dropped); a
    /// lost hour (or a lost day older than the hour window) is emptied and put in
    /// [`Aggregates::repair_hours`] (`repair_days`), so that the catch-up recomputes it from
    /// every record the logs still hold. Files of buckets that left their
    /// window at `now_min` are skipped silently.
    pub fn open_sealed(&mut self, dir: &Path, owner: u32, now_min: i64) -> Vec<String> {
        let mut problems = Vec::new();
        let names = self.name_counts();
        let hour_floor = self.hour_floor(now_min).div_euclid(60);
        let day_floor = self.day_floor(now_min).div_euclid(1440);
        for (tier, number) in std::mem::take(&mut self.listed) {
            let floor = if tier == Res::Day {
                day_floor
            } else {
                hour_floor
            };
            if number < floor {
                continue;
            }
            let path = dir.join(sealed::file_name(tier, number));
            let e = match SealedFile::open(&path, tier, number, owner, names) {
                Ok(f) => {
                    self.sealed
                        .insert((tier, number), Sealed::File(Arc::new(f)));
                    continue;
                }
                Err(e) => e,
            };
            let start = number * tier.width();
            // What the file held is made again from scratch: its slot starts empty.
            empty_slot(self.tier_mut(tier), number);
            let what = if tier == Res::Hour {
                self.repair_hours.push(number);
                "it is recomputed from what the logs still hold (records already deleted by \
                 retention are missing from it)"
            } else if number * 24 >= hour_floor {
                "it is made again from its hours at the next checkpoint"
            } else {
                // Its hours left the window: recomputed from the log into the day itself.
                self.repair_days.push(number);
                "its hours left the hour window, so it is recomputed from what the logs still \
                 hold (records already deleted by retention are missing from it)"
            };
            problems.push(format!(
                "sealed {} {}: {e}; {what}",
                tier.as_str(),
                params_time(start),
            ));
        }
        self.repair_hours.sort_unstable();
        self.repair_days.sort_unstable();
        problems
    }

    /// Lists again the lost sealed buckets nothing recomputed (a tool that writes the store
    /// without a catch-up), so that the next start still sees them lost and repairs them.
    pub fn relist_repairs(&mut self) {
        let hours = std::mem::take(&mut self.repair_hours);
        let days = std::mem::take(&mut self.repair_days);
        self.listed
            .extend(hours.into_iter().map(|h| (Res::Hour, h)));
        self.listed.extend(days.into_iter().map(|d| (Res::Day, d)));
    }

    /// Every sealed bucket this state lists, ascending.
    pub fn sealed_list(&self) -> Vec<(Res, i64)> {
        let mut v: Vec<(Res, i64)> = self.sealed.keys().copied().collect();
        v.extend(self.listed.iter().copied());
        v.sort_unstable();
        v.dedup();
        v
    }

    /// What the next checkpoint writes, copied out so that it can be encoded off the shard's
    /// executor: the names it writes (at their ids), the names' checkpoint marks, and every bucket
    /// (`base`) or the dirty ones, each marked dirty in the copy and clean here; and the hours
    /// and days it seals at `now_min` ([`SealJob`]). Encoding the copy gives the bytes
    /// encoding this state would have. Copying is a few memcpys per bucket (cells are plain
    /// data); the encode — sorting, sketches, merging a sealed day — is the slow part.
    pub fn checkpoint_snapshot(&mut self, base: bool, now_min: i64) -> (Aggregates, Vec<SealJob>) {
        let jobs = self.take_seals(now_min);
        let mut snap = Aggregates::new(self.cfg.clone());
        let marks = if base {
            (0, 0, 0, 0)
        } else {
            self.written_names
        };
        snap.sites = self.sites.tail_copy(marks.0);
        snap.urls = self.urls.tail_copy(marks.1);
        snap.refs = self.refs.tail_copy(marks.2);
        snap.profiles.names = self.profiles.names.tail_copy(marks.3);
        snap.url_site = self.url_site.clone();
        snap.written_names = marks;
        snap.listed = self.sealed_list();
        // Every link carries the whole visitor table (see `store/format.rs`).
        snap.visits = self.visits.clone();
        self.written_names = self.name_counts();
        // An hour goes with the minutes it has not folded (what its file holds, see
        // `store::format`), taken before any minute is marked clean.
        for (number, b) in self.hours.iter_mut() {
            if base || b.dirty {
                if let Some(slot) = snap.hours.get_mut(number) {
                    *slot = super::whole_hour(&self.minutes, number, b).into_owned();
                    slot.folded_upto = (number + 1) * 60;
                    slot.dirty = true;
                }
            }
            b.dirty = false;
        }
        for (from, to) in [
            (&mut self.minutes, &mut snap.minutes),
            (&mut self.days, &mut snap.days),
        ] {
            for (number, b) in from.iter_mut() {
                if base || b.dirty {
                    if let Some(slot) = to.get_mut(number) {
                        *slot = b.clone();
                        slot.dirty = true;
                    }
                }
                b.dirty = false;
            }
        }
        (snap, jobs)
    }
}

/// A sealed file opened (or why not), by tier and number.
pub type Opened = (Res, i64, Result<SealedFile, sealed::SealedError>);

/// Maps and checks the sealed files just written (`jobs`: tier, number, path) of `owner`,
/// whose ids have names below `names`: CPU and reads only, no shared state.
pub fn open_sealed_files(
    jobs: &[(Res, i64, PathBuf)],
    owner: u32,
    names: NameCounts,
) -> Vec<Opened> {
    jobs.iter()
        .map(|(t, n, p)| (*t, *n, SealedFile::open(p, *t, *n, owner, names)))
        .collect()
}

/// A minute since the epoch as the RFC 3339 time `--from`/`--to` take.
fn params_time(minute: i64) -> String {
    crate::sys::minute_rfc3339(minute)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::agg::{store, AggConfig, Batch, Dim, IncKind};

    /// Seals what a checkpoint at `now` seals, writing the files under `dir` as the store
    /// does (without an executor), and maps them.
    fn seal(a: &mut Aggregates, now: i64, dir: &Path) -> usize {
        let (_, jobs) = a.checkpoint_snapshot(false, now);
        std::fs::create_dir_all(dir).unwrap();
        let mut written = Vec::new();
        for j in &jobs {
            let h = sealed::SealedHeader {
                tier: j.tier,
                shards: 1,
                owner: 0,
                number: j.number,
                written_ns: 1,
            };
            let path = dir.join(sealed::file_name(j.tier, j.number));
            std::fs::write(&path, sealed::encode(&h, &j.bucket())).unwrap();
            written.push((j.tier, j.number, path));
        }
        assert!(a.seals_written(&written, 0).is_empty());
        jobs.len()
    }

    fn answers(a: &Aggregates, ranges: &[(i64, i64)]) -> Vec<String> {
        let mut out = Vec::new();
        for &(f, t) in ranges {
            for dim in [Dim::Url, Dim::RefDomain, Dim::Site] {
                out.push(format!("{f} {t} {:?}", a.top(dim, f, t, None, 50)));
                out.push(format!("{:?}", a.top(dim, f, t, Some("s1"), 50)));
            }
            out.push(format!(
                "{:?} {:?}",
                a.totals(f, t, None),
                a.totals(f, t, Some("s0"))
            ));
            out.push(format!(
                "{:?}",
                a.url_series(f, t, 60, "https://s1/u3", None)
            ));
        }
        out
    }

    /// While a day's file is being written, what was counted into the day directly (its
    /// hours had left their window) is still read: answers do not dip during a checkpoint,
    /// nor after the write failed.
    #[test]
    fn a_day_being_written_still_answers_its_direct_cells() {
        let now: i64 = 29_000_000 / 1440 * 1440 + 600; // fixed-date: windows follow `now`
        let cfg = AggConfig {
            minute_window: 60,
            hour_window: 96,
            day_window: 10,
            ..AggConfig::default()
        };
        let day = now.div_euclid(1440) * 1440;
        let mut b = Batch::default();
        for i in 0..50u64 {
            // Six days back: older than the hour window, so counted into the day alone.
            let m = day - 6 * 1440 + i as i64 * 7;
            let url = format!("https://s1/u{}", i % 4);
            b.push(IncKind::Url, true, m, 3, "s1", &url, None);
            b.push(IncKind::Visitor, true, m, 3, "s1", "", Some(i % 9));
        }
        let (mut live, mut reference) =
            (Aggregates::new(cfg.clone()), Aggregates::new(cfg.clone()));
        live.apply_batch(&b, now);
        reference.apply_batch(&b, now);
        let ranges = [(day - 7 * 1440, day), (day - 6 * 1440, day - 5 * 1440)];
        let want = answers(&reference, &ranges);
        let (_copy, jobs) = live.checkpoint_snapshot(true, now);
        assert!(
            jobs.iter().any(|j| j.tier == Res::Day),
            "this checkpoint seals the day"
        );
        assert_eq!(answers(&live, &ranges), want, "while its file is written");
        live.seals_failed(jobs);
        assert_eq!(answers(&live, &ranges), want, "after the write failed");
    }

    /// Sealing closed hours and days into mapped files (and a day from its hours) changes no
    /// answer, before and after late events, and a restart from a checkpoint that lists the
    /// files answers the same.
    #[test]
    fn sealed_files_answer_like_memory() {
        let now = 29_000_000 / 1440 * 1440 + 600; // fixed-date: windows follow `now`
        let cfg = AggConfig {
            minute_window: 60,
            hour_window: 96,
            day_window: 10,
            ..AggConfig::default()
        };
        let mut b = Batch::default();
        let mut x = 7u64;
        for i in 0..30_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Three days back; one busy hour with thousands of visitors (a sketch).
            let m = if i % 3 == 0 {
                now - 1500
            } else {
                now - (x % (3 * 1440)) as i64
            };
            let site = format!("s{}", x % 3);
            b.push(
                IncKind::Url,
                i % 5 != 0,
                m,
                4,
                &site,
                &format!("https://{site}/u{}", x % 40),
                None,
            );
            b.push(
                IncKind::Ref,
                true,
                m,
                0,
                &site,
                &format!("r{}.example", x % 7),
                None,
            );
            b.push(
                IncKind::Visitor,
                i % 5 != 0,
                m,
                4,
                &site,
                "",
                Some(x % 20_000),
            );
        }
        let (mut live, mut reference) =
            (Aggregates::new(cfg.clone()), Aggregates::new(cfg.clone()));
        live.apply_batch(&b, now);
        reference.apply_batch(&b, now);
        let day = now.div_euclid(1440) * 1440;
        let ranges = [
            (day - 3 * 1440, day),
            (day - 2 * 1440, day - 1440),
            (day - 1500, now + 1),
            (day - 1440 - 120, day - 1440 + 180),
            (now - 30, now + 1),
        ];
        let want = answers(&reference, &ranges);
        let dir = tempfile::tempdir().unwrap();
        let n = seal(&mut live, now, dir.path());
        assert!(n > 24, "hours and days sealed: {n}");
        assert!(live.memory().sealed_files as usize == n);
        assert_eq!(answers(&live, &ranges), want);
        assert_eq!(seal(&mut live, now, dir.path()), 0, "sealed once");
        // Late events for a sealed hour and day, and for an open one.
        let mut late = Batch::default();
        for m in [day - 2 * 1440 + 5, day - 1440 + 61, now - 2] {
            late.push(IncKind::Url, true, m, 1, "s1", "https://s1/u3", None);
            late.push(IncKind::Visitor, true, m, 1, "s1", "", Some(99_999));
            late.push(IncKind::Ref, true, m, 0, "s1", "late.example", None);
        }
        live.apply_batch(&late, now);
        reference.apply_batch(&late, now);
        let want = answers(&reference, &ranges);
        assert_eq!(answers(&live, &ranges), want);
        for res in [Res::Hour, Res::Day] {
            for n in live.bucket_numbers_of_both(&reference, res) {
                assert_eq!(
                    live.bucket_lines(res, n),
                    reference.bucket_lines(res, n),
                    "{res:?} {n}"
                );
            }
        }
        // A restart: the checkpoint lists the files, the late increments ride in the chain.
        let bytes = store::format::encode(
            &mut live,
            &store::format::Header {
                version: store::format::VERSION,
                kind: store::format::Kind::Base,
                shards: 1,
                owner: 0,
                seq: 1,
                parent: 0,
                fingerprint: 0,
                written_ns: 0,
                applied: vec![0],
            },
        );
        let mut back = Aggregates::new(cfg.clone());
        store::format::decode_into(&bytes, &mut back).unwrap();
        assert!(back.open_sealed(dir.path(), 0, now).is_empty());
        assert_eq!(answers(&back, &ranges), want);
        // Damaged files are reported, not trusted. A day whose hours are all inside the hour
        // window is made again from them by the next checkpoint: the same answers.
        let damage = |tier, number| {
            let victim = dir.path().join(sealed::file_name(tier, number));
            let mut d = std::fs::read(&victim).unwrap();
            d[60] ^= 1;
            std::fs::write(&victim, d).unwrap();
        };
        damage(Res::Day, day / 1440 - 2);
        let mut back = Aggregates::new(cfg.clone());
        store::format::decode_into(&bytes, &mut back).unwrap();
        let problems = back.open_sealed(dir.path(), 0, now);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("made again from its hours"),
            "{problems:?}"
        );
        assert!(back.repair_hours.is_empty());
        assert!(
            seal(&mut back, now, dir.path()) == 1,
            "the day sealed again"
        );
        assert_eq!(answers(&back, &ranges), want);
        // A lost hour is emptied and left to the catch-up to recompute from the log.
        let hour = (day - 1440) / 60 + 5;
        damage(Res::Hour, hour);
        let mut back = Aggregates::new(cfg);
        store::format::decode_into(&bytes, &mut back).unwrap();
        let problems = back.open_sealed(dir.path(), 0, now);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("recomputed from what the logs"),
            "{problems:?}"
        );
        assert_eq!(back.repair_hours, vec![hour]);
        assert!(back.materialize(Res::Hour, hour).is_empty());
        // A tool that writes the store without a catch-up keeps it listed, lost.
        back.relist_repairs();
        assert!(back.sealed_list().contains(&(Res::Hour, hour)));
        // Eviction retires the files that left the windows.
        live.evict(now + 20 * 1440);
        assert_eq!(live.memory().sealed_files, 0);
        assert_eq!(live.take_retired().len(), n);
    }
}
